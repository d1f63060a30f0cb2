"""Peers that reset mid-send, half-close, or stall forever: a clean error for that connection only, bounded
memory, and no leaked fd (the fd of a transport is closed only once no ring operation names it)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from typing import Any

import pytest

from uringws.loop import EventLoop

from .conftest import open_fds


class Producer(asyncio.Protocol):
    """Writes `chunk`-sized blocks while not paused, like a well-behaved application."""

    def __init__(self, total: int, chunk: int = 64 * 1024) -> None:
        self.total = total
        self.chunk = chunk
        self.written = 0
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.max_buffered = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self._produce()

    def _produce(self) -> None:
        while not self.paused and self.written < self.total and not self.transport.is_closing():
            n = min(self.chunk, self.total - self.written)
            self.transport.write(bytes([self.written // self.chunk % 251]) * n)
            self.written += n
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        self.resumes += 1
        self._produce()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _connect_raw(addr: tuple[str, int], rcvbuf: int = 4096) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    return sock


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _healthy_roundtrip(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = os.urandom(300_000)
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()
    await writer.wait_closed()


def test_reset_mid_send_and_stalled_peer(backend_loop: EventLoop) -> None:
    """One peer resets (RST via SO_LINGER 0) while the server sends, one stalls forever; another echoes fine."""
    before = open_fds()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        producers: list[Producer] = []

        def factory() -> Producer:
            producers.append(Producer(total=64 * 1024 * 1024))
            return producers[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        echo = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]

        resetter = await _connect_raw(addr)
        staller = await _connect_raw(addr)
        while len(producers) < 2:
            await asyncio.sleep(0.005)
        # Let the server fill the socket buffers and get paused by the queue's high-water mark.
        while not all(p.paused for p in producers):
            await asyncio.sleep(0.005)
        await loop.sock_recv(resetter, 1000)  # read a little, then reset mid-stream
        resetter.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resetter.close()
        exc = await asyncio.wait_for(producers[0].lost, 5)
        assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), exc

        # The stalled peer: the writer is paused and memory stays bounded (high water + one chunk).
        stalled = producers[1]
        assert stalled.paused and stalled.pauses == 1
        _low, high = stalled.transport.get_write_buffer_limits()
        assert stalled.max_buffered <= high + stalled.chunk
        assert stalled.written < 4 * 1024 * 1024
        await _healthy_roundtrip(echo_port)  # other connections are unaffected
        assert not stalled.lost.done()

        stalled.transport.abort()  # a send may be in flight: the fd must wait for its completion
        assert await asyncio.wait_for(stalled.lost, 5) is None
        staller.close()
        server.close()
        echo.close()
        await server.wait_closed()
        await echo.wait_closed()
        await asyncio.sleep(0.05)

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))
    assert open_fds() == before


def test_pause_resume_writing_delivers_everything(backend_loop: EventLoop) -> None:
    """A slow reader pauses the writer above high water and resumes it at low water; every byte arrives."""
    total = 8 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        holder: list[Producer] = []
        def factory() -> Producer:
            holder.append(Producer(total))
            return holder[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        sock = await _connect_raw(server.sockets[0].getsockname())
        got = 0
        expect_block = 0
        while got < total:
            data = await loop.sock_recv(sock, 32 * 1024)
            assert data
            # Verify content: block k is 64 KiB of byte k % 251.
            pos = got
            while data:
                block = pos // (64 * 1024)
                take = min(len(data), (block + 1) * 64 * 1024 - pos)
                assert data[:take] == bytes([block % 251]) * take
                data = data[take:]
                pos += take
            got = pos
            expect_block += 1
            if expect_block % 64 == 0:
                await asyncio.sleep(0.002)
        p = holder[0]
        assert p.pauses >= 1 and p.resumes >= 1
        assert p.max_buffered <= p.transport.get_write_buffer_limits()[1] + p.chunk
        p.transport.close()
        assert await asyncio.wait_for(p.lost, 5) is None
        assert await loop.sock_recv(sock, 10) == b""
        sock.close()
        server.close()
        await server.wait_closed()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 60))


def test_half_close_both_ways(backend_loop: EventLoop) -> None:
    made: list[Any] = []

    class HalfCloser(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            made.append(self)
            self.data = b""

        def data_received(self, data: bytes) -> None:
            self.data += data

        def eof_received(self) -> bool:
            # The peer is done sending; we still answer, then half-close our side too.
            self.transport.write(b"got:" + self.data)
            self.transport.write_eof()
            return True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(HalfCloser, "127.0.0.1", 0)
        sock = await _connect_raw(server.sockets[0].getsockname(), rcvbuf=65536)
        await loop.sock_sendall(sock, b"question")
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := await loop.sock_recv(sock, 100):
            answer += chunk
        assert answer == b"got:question"
        sock.close()
        made[0].transport.close()  # both directions are shut; 3.12+ wait_closed() waits for the transport
        server.close()
        await server.wait_closed()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_many_connections_no_fd_leak(backend_loop: EventLoop) -> None:
    before = open_fds()

    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x" * (i * 997))
            if i % 3 == 0:
                writer.transport.abort()  # with data possibly still in flight
                return
            await reader.readexactly(i * 997)
            if i % 3 == 1:
                writer.write_eof()
                assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(one(i) for i in range(60)))
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    backend_loop.run_until_complete(asyncio.wait_for(main(), 30))
    assert open_fds() == before


def test_write_after_close_is_ignored(backend_loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        transport = writer.transport
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write(b"x")  # write() after write_eof() is an error, as in asyncio
        transport.abort()
        _reader2, writer2 = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer2.transport.abort()
        await asyncio.sleep(0.01)
        for _ in range(10):
            writer2.transport.write(b"ignored")  # asyncio semantics: no exception, a warning after a few
        server.close()
        await server.wait_closed()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))
    if backend_loop.backend == "epoll":
        assert "socket.send() raised exception." in caplog.text  # asyncio's own transport, warning per write


def test_writes_after_loss_log_once_at_debug(backend_loop: EventLoop, caplog: pytest.LogCaptureFixture) -> None:
    """A broadcast keeps writing to a peer that just went away: the ring transport says so once, at debug."""
    if backend_loop.backend != "io_uring":
        pytest.skip("the epoll backend uses asyncio's transport, which warns per write")
    caplog.set_level(logging.DEBUG, logger="uringws.loop")

    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.transport.abort()
        await asyncio.sleep(0.01)
        for _ in range(200):
            writer.transport.write(b"dropped")
        server.close()
        await server.wait_closed()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))
    lost = [r for r in caplog.records if "after the connection was lost" in r.getMessage()
            or "socket.send() raised" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in lost]
    assert lost[0].levelno == logging.DEBUG
