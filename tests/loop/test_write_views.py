"""write() with buffers whose items are not bytes: what arrives must be exactly the buffer's bytes, once."""

from __future__ import annotations

import array
import asyncio
import socket

import pytest

import uringws


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.done.set_result(None)


def payloads() -> list[object]:
    words = array.array("I", range(100_000))  # 400,000 bytes in 100,000 items
    grid = memoryview(bytes(range(256)) * 16).cast("B", (64, 64))  # 2-D, 4096 bytes
    strided = memoryview(bytes(range(200)))[::2]  # not contiguous
    return [memoryview(words), grid, strided, bytearray(b"x" * 70_000), memoryview(b"plain")]


def expected(obj: object) -> bytes:
    view = memoryview(obj)  # type: ignore[arg-type]
    return view.tobytes()


@pytest.mark.parametrize("direct_send", [True, False])
def test_non_byte_views_arrive_exactly(direct_send: bool) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        sink = Sink()
        await loop.connect_accepted_socket(lambda: sink, b)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        for p in payloads():
            transport.write(p)  # type: ignore[arg-type]
        transport.write_eof()
        await asyncio.wait_for(sink.done, 30)
        transport.close()
        return bytes(sink.data)

    loop = uringws.new_event_loop(direct_send=direct_send)
    try:
        got = loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == b"".join(expected(p) for p in payloads())
