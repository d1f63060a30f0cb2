"""Writes made in one loop iteration leave together: one send(2) for a burst, in order, nothing lost.

The direct-send path defers the syscall to just before the loop waits, so a burst of small writes (eight echoes
answered from one received segment, a TLS layer's records) costs one syscall instead of one each.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

import uringws.loop


class Sink(asyncio.Protocol):
    def __init__(self, expect: int) -> None:
        self.data = bytearray()
        self.expect = expect
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expect and not self.done.done():
            self.done.set_result(None)


async def _burst(count: int, size: int, *, close: bool = False, eof: bool = False) -> tuple[bytes, bytes, object]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    pieces = [bytes([i % 251]) * size for i in range(count)]
    sink = Sink(count * size)
    await loop.connect_accepted_socket(lambda: sink, b)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
    await asyncio.sleep(0)
    before = loop.send_stats.direct_sends  # type: ignore[attr-defined]
    for p in pieces:
        transport.write(p)
    if size < 16 * 1024:
        assert transport.get_write_buffer_size() == count * size  # queued until the loop is about to wait
    else:
        # A large write into an empty queue goes at once (no pause for bytes the kernel takes); the rest queue
        # behind what remains of it.
        assert transport.get_write_buffer_size() <= (count - 1) * size
    if eof:
        transport.write_eof()
    if close:
        transport.close()
    await asyncio.wait_for(sink.done, 10)
    sends = loop.send_stats.direct_sends - before  # type: ignore[attr-defined]
    if not close:
        transport.close()
    return bytes(sink.data), b"".join(pieces), sends


def _run(coro_factory: object) -> object:
    loop = uringws.loop.EventLoop()
    try:
        return loop.run_until_complete(coro_factory())  # type: ignore[operator]
    finally:
        loop.close()


def test_burst_of_small_writes_is_one_send() -> None:
    got, want, sends = _run(lambda: _burst(64, 100))  # type: ignore[misc]
    assert got == want
    assert sends == 1


@pytest.mark.parametrize("how", ["close", "eof"])
def test_close_or_eof_right_after_writes_delivers_everything(how: str) -> None:
    got, want, _ = _run(lambda: _burst(10, 3000, close=how == "close", eof=how == "eof"))  # type: ignore[misc]
    assert got == want


def test_burst_with_large_pieces_arrives_in_order() -> None:
    # The first piece goes at once, the others by reference as iovec entries of one sendmsg(2).
    got, want, sends = _run(lambda: _burst(6, 40_000))  # type: ignore[misc]
    assert got == want
    assert sends >= 1
