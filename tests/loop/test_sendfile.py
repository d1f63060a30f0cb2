"""loop.sendfile() on plain stream transports, against asyncio's contract, on both backends.

The epoll backend runs asyncio's own transport (native os.sendfile); the io_uring backend has no native path
(it would bypass the ring's send queue), so it must look like asyncio does where sendfile(2) is unavailable:
SendfileNotAvailableError with fallback=False, the fallback otherwise; and as during asyncio's native
sendfile, the transport's write() raises while the file is being sent.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import pytest

from uringws.loop import EventLoop, RingSocketTransport

SIZE = 4 * 1024 * 1024 + 7  # far more than a socketpair buffers: sendfile() is in progress until the peer reads


class Quiet(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


@pytest.fixture(scope="module")
def content() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def blob(content: bytes) -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as f:
        f.write(content)
        f.seek(0)
        yield f


async def _pair() -> tuple[Any, socket.socket]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(Quiet, a)
    b.setblocking(False)
    return transport, b


async def _read(peer: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_no_fallback_raises_sendfile_not_available(backend_loop: EventLoop, blob: IO[bytes], content: bytes) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, peer = await _pair()
        if backend_loop.backend == "io_uring":
            assert isinstance(transport, RingSocketTransport)
            with pytest.raises(asyncio.SendfileNotAvailableError, match="fallback=True"):
                await loop.sendfile(transport, blob, fallback=False)
            assert blob.tell() == 0
            assert not transport.is_closing()
            transport.write(b"usable")
            assert await _read(peer, 6) == b"usable"
        else:  # asyncio's transport: os.sendfile()
            reader = asyncio.ensure_future(_read(peer, SIZE))
            assert await loop.sendfile(transport, blob, fallback=False) == SIZE
            assert await reader == content
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_write_during_sendfile_raises(backend_loop: EventLoop, blob: IO[bytes], content: bytes) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, peer = await _pair()
        transport.write(b"before")
        task = asyncio.ensure_future(loop.sendfile(transport, blob))
        for _ in range(50):  # until the send buffers are full and sendfile() waits for the peer
            await asyncio.sleep(0.01)
        assert not task.done()
        with pytest.raises(RuntimeError, match="sendfile is in progress"):
            transport.write(b"in the middle")
        with pytest.raises(RuntimeError, match="sendfile is in progress"):
            transport.writelines([b"in the middle"])
        reader = asyncio.ensure_future(_read(peer, 6 + SIZE + 5))
        assert await task == SIZE
        transport.write(b"after")
        assert await reader == b"before" + content + b"after"
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize(
    ("offset", "count"), [(0, 1), (100_003, None), (100_003, 1_000_000), (SIZE - 3, 100), (SIZE, None)]
)
def test_ranges(backend_loop: EventLoop, blob: IO[bytes], content: bytes, offset: int, count: int | None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, peer = await _pair()
        end = SIZE if count is None else min(SIZE, offset + count)
        reader = asyncio.ensure_future(_read(peer, end - offset + 1))
        assert await loop.sendfile(transport, blob, offset, count) == end - offset
        transport.write(b"!")
        assert await reader == content[offset:end] + b"!"
        if end > offset:  # nothing sent: asyncio's native path leaves the position alone, its fallback seeks
            assert blob.tell() == end
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))


def test_peer_closes_midway(backend_loop: EventLoop, blob: IO[bytes]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, peer = await _pair()
        task = asyncio.ensure_future(loop.sendfile(transport, blob))
        await _read(peer, 100_000)
        peer.close()
        with pytest.raises(ConnectionError):
            await task
        assert 0 < blob.tell() < SIZE
        transport.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))
