"""The ring transport's asyncio surface: BufferedProtocol, flow-control knobs, pause/resume reading,
set_protocol, start_tls, loop.sendfile, connect_accepted_socket (on both backends where it applies)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from typing import Any

import pytest

from uringws.loop import EventLoop, RingSocketTransport


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return False


class BufCollect(asyncio.BufferedProtocol):
    """Receives straight into its own small buffer (no copy by the transport)."""

    def __init__(self) -> None:
        self.buf = bytearray(1000)
        self.data = bytearray()
        self.calls = 0
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.calls += 1
        self.data += self.buf[:nbytes]

    def eof_received(self) -> bool:
        self.eof.set_result(None)
        return False


async def _pair(proto_factory: Any) -> tuple[Any, Any, socket.socket]:
    """A server-side transport of our loop with `proto_factory`, and the raw peer socket."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    transport, proto = await loop.connect_accepted_socket(proto_factory, a)
    b.setblocking(False)
    return transport, proto, b


def test_buffered_protocol_and_connect_accepted_socket(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, proto, peer = await _pair(BufCollect)
        if backend_loop.backend == "io_uring":
            assert isinstance(transport, RingSocketTransport)
        payload = os.urandom(50_000)
        await loop.sock_sendall(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.eof, 5)
        assert bytes(proto.data) == payload
        assert proto.calls >= 50  # at most 1000 bytes per call: it really used our buffer
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_flow_control_knobs_and_reading(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, proto, peer = await _pair(Collect)
        assert transport.get_write_buffer_limits() == (16384, 65536)
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=1, low=2)
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        await loop.sock_sendall(peer, b"held")
        await asyncio.sleep(0.05)
        assert proto.data == b""  # paused: nothing delivered
        transport.resume_reading()
        for _ in range(100):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert proto.data == b"held"
        other = Collect()
        transport.set_protocol(other)
        assert transport.get_protocol() is other
        await loop.sock_sendall(peer, b"to other")
        for _ in range(100):
            if other.data:
                break
            await asyncio.sleep(0.01)
        assert other.data == b"to other"
        transport.write(b"bye")
        transport.close()
        assert transport.is_closing() and not transport.is_reading()
        got = b""
        while chunk := await loop.sock_recv(peer, 100):
            got += chunk
        assert got == b"bye"  # close() flushed before closing
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))


def test_write_eof_after_queued_writes_shuts_down_once_they_are_sent(backend_loop: EventLoop) -> None:
    """write_eof() with small writes still queued (they leave just before the loop waits): the peer gets every
    byte, then the EOF, and the transport stays open for reading."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, proto, peer = await _pair(Collect)
        transport.write(b"first ")
        transport.write(b"second")
        transport.write_eof()
        got = b""
        while chunk := await asyncio.wait_for(loop.sock_recv(peer, 100), 5):
            got += chunk
        assert got == b"first second"
        assert not transport.is_closing()
        await loop.sock_sendall(peer, b"still reading")
        for _ in range(100):
            if proto.data:
                break
            await asyncio.sleep(0.01)
        assert proto.data == b"still reading"
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 10))


class FlowCollect(Collect):
    def __init__(self) -> None:
        super().__init__()
        self.flow: list[str] = []

    def pause_writing(self) -> None:
        self.flow.append("pause")

    def resume_writing(self) -> None:
        self.flow.append("resume")


def test_write_above_high_water_pauses_within_write(backend_loop: EventLoop) -> None:
    """pause_writing() comes from the write() that crosses the high-water mark, so the writer stops before its
    next write; resume_writing() once the peer has read it all."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, proto, peer = await _pair(FlowCollect)
        transport.set_write_buffer_limits(high=4096)
        payload = os.urandom(4 << 20)  # far more than the socket pair's buffers hold
        transport.write(payload)
        assert proto.flow == ["pause"]
        assert transport.get_write_buffer_size() > 4096
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(peer, 1 << 16)
        assert got == payload
        for _ in range(100):
            if len(proto.flow) > 1:
                break
            await asyncio.sleep(0.01)
        assert proto.flow == ["pause", "resume"]
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 20))


def test_ring_send_that_fails_ends_the_connection(ring_loop: EventLoop) -> None:
    """A send waiting in the ring for room fails when the peer goes (EPIPE): connection_lost(exc) follows.

    Reading is paused, so no receive can notice the peer's close first: only the failed send can end it.
    """

    class Lost(asyncio.Protocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        transport, proto, peer = await _pair(Lost)
        assert isinstance(transport, RingSocketTransport)
        transport.pause_reading()
        transport.write(os.urandom(4 << 20))  # more than the socket takes: the rest waits as a ring send
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ring_loop.send_stats.sends:
                break
        assert ring_loop.send_stats.sends >= 1 and transport.get_write_buffer_size() > 0
        peer.close()
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, (BrokenPipeError, ConnectionResetError)), exc

    ring_loop.run_until_complete(asyncio.wait_for(main(), 20))


def test_loop_sendfile_over_transport(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _proto, peer = await _pair(Collect)
        content = os.urandom(3 * 1024 * 1024 + 5)
        with tempfile.TemporaryFile() as f:
            f.write(content)
            f.seek(0)

            async def read_all() -> bytes:
                out = bytearray()
                while len(out) < len(content):
                    out += await loop.sock_recv(peer, 65536)
                return bytes(out)

            reader = asyncio.ensure_future(read_all())
            sent = await loop.sendfile(transport, f)
            assert sent == len(content)
            assert await reader == content
        transport.close()
        peer.close()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 20))


def test_start_tls_upgrade(backend_loop: EventLoop) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        assert writer.get_extra_info("ssl_object") is not None
        payload = os.urandom(500_000)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    backend_loop.run_until_complete(asyncio.wait_for(main(), 20))


def test_idle_connection_memory(ring_loop: EventLoop) -> None:
    """An idle ring connection holds no read buffer: its Python heap stays small (TLS needs <= 32 KiB total)."""
    import gc
    import tracemalloc

    n = 200

    async def main() -> float:
        loop = asyncio.get_running_loop()
        transports: list[Any] = []

        class Idle(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                transports.append(transport)

        server = await loop.create_server(Idle, "127.0.0.1", 0, backlog=n)
        addr = server.sockets[0].getsockname()
        clients: list[socket.socket] = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(n):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, addr)
                clients.append(s)
            while len(transports) < n:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            gc.collect()
            per_conn = (tracemalloc.get_traced_memory()[0] - before) / n
        finally:
            tracemalloc.stop()
        assert all(isinstance(t, RingSocketTransport) for t in transports)
        for t in transports:
            t.close()
        for s in clients:
            s.close()
        server.close()
        await server.wait_closed()
        return per_conn

    per_conn = ring_loop.run_until_complete(asyncio.wait_for(main(), 30))
    # Both ends' Python objects are counted (client socket + server transport, protocol, queue, handles).
    assert per_conn < 8 * 1024, per_conn


def test_callback_errors_reach_the_exception_handler(ring_loop: EventLoop) -> None:
    """A failing completion callback, or a protocol that raises inside one, is reported, not swallowed."""
    seen: list[dict[str, Any]] = []
    ring_loop.set_exception_handler(lambda loop, ctx: seen.append(ctx))

    class Boom(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            raise ValueError("protocol bug")

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        def bad(res: int, flags: int) -> None:
            raise KeyError("callback bug")

        ring_loop.ring.nop(bad)
        await asyncio.sleep(0.01)
        _transport, proto, peer = await _pair(Boom)
        peer.send(b"x")
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, ValueError)
        peer.close()

    ring_loop.run_until_complete(asyncio.wait_for(main(), 10))
    assert any(isinstance(c.get("exception"), KeyError) and "io_uring" in c["message"] for c in seen), seen
    assert any(isinstance(c.get("exception"), ValueError) and "data_received" in c["message"] for c in seen), seen


def test_loop_close_with_sends_in_flight() -> None:
    """Closing the loop under a connection with a send parked in the kernel cancels and reaps it, promptly."""
    import time

    from uringws.ring import probe

    if not probe.availability().usable:
        pytest.skip("io_uring unusable here")
    loop = EventLoop()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    holder: list[Any] = []

    async def main() -> socket.socket:
        transport, _proto, peer = await _pair(Collect)
        holder.append(transport)
        transport.write(os.urandom(8 * 1024 * 1024))  # far more than the socket buffers take: a send parks
        await asyncio.sleep(0.05)
        assert transport.get_write_buffer_size() > 0
        return peer

    peer = loop.run_until_complete(main())
    ring = loop.ring
    assert ring.in_flight > 0
    t0 = time.monotonic()
    loop.close()
    assert time.monotonic() - t0 < 2
    assert ring.closed
    assert not seen, seen
    holder[0].abort()  # after the loop: must not raise
    peer.close()


class _HoldSendsRing:
    """A real ring whose SEND/SENDMSG are never submitted: the test completes them by hand, when it wants."""

    def __init__(self, ring: Any) -> None:
        self._ring = ring
        self.held: dict[int, Any] = {}
        self.cancelled: list[int] = []
        self._next = 1 << 60

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ring, name)

    def send(self, fd: int, data: Any, callback: Any, **kw: Any) -> int:
        self._next += 1
        self.held[self._next] = callback
        return self._next

    sendmsg = send

    def cancel(self, target: int, callback: Any = None, **kw: Any) -> int:
        if target in self.held:
            self.cancelled.append(target)  # acknowledged; the completion comes when the test says so
            return 0
        return self._ring.cancel(target, callback, **kw)


def test_fd_outlives_an_in_flight_send() -> None:
    """abort() with a SEND in flight: connection_lost runs, but the fd is closed only after the send's CQE
    (an fd number reused while the kernel still sends on it would leak data into another connection)."""
    import errno

    from uringws.ring import Ring, probe

    if not probe.availability().usable:
        pytest.skip("io_uring unusable here")
    ring = _HoldSendsRing(Ring(64))
    loop = EventLoop(ring=ring, direct_send=False)

    async def main() -> None:
        transport, proto, peer = await _pair(Collect)
        lost = asyncio.get_running_loop().create_future()
        proto.connection_lost = lambda exc: lost.set_result(exc)
        fd = transport.get_extra_info("socket").fileno()
        transport.write(b"x" * 1000)
        await asyncio.sleep(0.01)
        (ud, callback), = ring.held.items()
        transport.abort()
        assert await asyncio.wait_for(lost, 5) is None
        assert ring.cancelled == [ud]
        os.fstat(fd)  # still open: the kernel may still be reading the buffer for this fd
        assert transport._sock is not None
        callback(-errno.ECANCELED, 0)  # the cancelled send's completion arrives
        assert transport._sock is None
        with pytest.raises(OSError):
            os.fstat(fd)
        peer.close()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        loop.close()
