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


def test_callback_scheduled_by_a_before_wait_hook_runs_without_waiting() -> None:
    """The loop computes its timeout before select() runs the hooks: a callback a hook schedules must make the
    wait non-blocking, or it sits until some unrelated completion or timer."""

    async def main() -> float:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_later(5, lambda: done.done() or done.set_result(None))  # the only other wake-up: far away
        await asyncio.sleep(0)
        start = loop.time()
        loop._selector.before_wait.append(lambda: loop.call_soon(done.set_result, None))  # type: ignore[attr-defined]
        await done
        return loop.time() - start

    elapsed = _run(main)
    assert elapsed < 1.0, elapsed  # type: ignore[operator]


def test_deferred_send_that_fails_reports_connection_lost_at_once() -> None:
    """A small write leaves from the before_wait hook; if that send(2) fails (peer gone), connection_lost()
    comes in the same iteration, not at the next unrelated wake-up."""

    class Lost(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> tuple[float, BaseException | None]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        proto = Lost()
        transport, _ = await loop.connect_accepted_socket(lambda: proto, a)
        transport.pause_reading()  # no RECV armed: nothing else can wake the loop
        await asyncio.sleep(0)
        b.close()
        loop.call_later(5, lambda: None)
        start = loop.time()
        transport.write(b"x" * 100)  # deferred to the hook; its send(2) fails with EPIPE
        exc = await proto.lost
        return loop.time() - start, exc

    elapsed, exc = _run(main)  # type: ignore[misc]
    assert isinstance(exc, (BrokenPipeError, ConnectionResetError)), exc
    assert elapsed < 1.0, elapsed
