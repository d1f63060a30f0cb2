"""asyncio's contract on our loop, on both backends: streams, threads, timers, cancellation, signals,
subprocesses, Unix sockets, UDP, sock_* methods, TLS (asyncio's sslproto over the ring transport)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import uringws.loop
from uringws.loop import EventLoop, RingSocketTransport


def run(loop: EventLoop, coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


async def _echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_streams_echo(backend_loop: EventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if backend_loop.backend == "io_uring":
            assert isinstance(writer.transport, RingSocketTransport)
        else:
            assert not isinstance(writer.transport, RingSocketTransport)
        assert writer.get_extra_info("peername")[1] == port
        assert isinstance(writer.get_extra_info("socket").fileno(), int)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        assert got == payload
        writer.write(b"line\n")
        assert await reader.readline() == b"line\n"
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(backend_loop, main())


def test_call_soon_threadsafe_from_threads(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[int] = []
        done = loop.create_future()

        def finish() -> None:
            if len(got) == 200 and not done.done():
                done.set_result(None)

        def worker(k: int) -> None:
            for i in range(50):
                loop.call_soon_threadsafe(got.append, k * 1000 + i)
                if i % 10 == 0:
                    time.sleep(0.001)
            loop.call_soon_threadsafe(finish)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        await done
        for t in threads:
            t.join()
        assert time.monotonic() - t0 < 5
        assert sorted(got) == sorted(k * 1000 + i for k in range(4) for i in range(50))
        # A sleeping loop (no timers, no I/O) must wake for a single cross-thread call.
        fut = loop.create_future()
        threading.Timer(0.05, loop.call_soon_threadsafe, (fut.set_result, 42)).start()
        assert await fut == 42
        assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6

    run(backend_loop, main())


def test_timer_ordering(backend_loop: EventLoop) -> None:
    order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for name, delay in [("c", 0.03), ("a", 0.01), ("b", 0.02), ("a2", 0.01)]:
            loop.call_at(now + delay, order.append, name)
        loop.call_soon(order.append, "soon")
        t0 = time.monotonic()
        await asyncio.sleep(0.06)
        assert time.monotonic() - t0 >= 0.05

    run(backend_loop, main())
    assert order == ["soon", "a", "a2", "b", "c"]


def test_cancellation(backend_loop: EventLoop) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        task = asyncio.ensure_future(reader.read(100))  # waits on ring polls
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.02)
        writer.write(b"still works")
        assert await reader.readexactly(11) == b"still works"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(backend_loop, main())


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals need the main thread")
def test_signals(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        def on_signal() -> None:
            if not got.done():
                got.set_result("usr1")

        loop.add_signal_handler(signal.SIGUSR1, on_signal)
        try:
            threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            assert await got == "usr1"
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    run(backend_loop, main())


def test_subprocess(backend_loop: EventLoop) -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); "
            "sys.stderr.write('err'); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(b"x" * 100_000 + b"end")
        assert out == (b"x" * 100_000 + b"end")[::-1]
        assert err == b"err"
        assert proc.returncode == 3
        proc2 = await asyncio.create_subprocess_exec("true")
        assert await proc2.wait() == 0

    # No watcher set-up: 3.11's default ThreadedChildWatcher wakes the loop with call_soon_threadsafe (our
    # eventfd), 3.12+ use a pidfd watched with add_reader (a ring poll) where the kernel has pidfds.
    run(backend_loop, main())


def test_unix_sockets(backend_loop: EventLoop, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        server = await asyncio.start_unix_server(_echo_handler, path)
        reader, writer = await asyncio.open_unix_connection(path)
        if backend_loop.backend == "io_uring":
            assert isinstance(writer.transport, RingSocketTransport)
        payload = os.urandom(1024 * 1024)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(backend_loop, main())


def test_udp_echo(backend_loop: EventLoop) -> None:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.transport.sendto(data.upper(), addr)

    class Client(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: asyncio.Queue[bytes] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.put_nowait(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        addr = st.get_extra_info("sockname")
        ct, cp = await loop.create_datagram_endpoint(Client, remote_addr=addr)
        for i in range(20):
            ct.sendto(b"ping %d" % i)
        got = sorted([await cp.got.get() for _ in range(20)])
        assert got == sorted(b"PING %d" % i for i in range(20))
        ct.close()
        st.close()

    run(backend_loop, main())


def test_sock_methods(backend_loop: EventLoop) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        acc = asyncio.ensure_future(loop.sock_accept(lsock))
        await loop.sock_connect(csock, lsock.getsockname())
        ssock, _ = await acc
        ssock.setblocking(False)
        data = os.urandom(2 * 1024 * 1024)
        send = asyncio.ensure_future(loop.sock_sendall(csock, data))
        got = bytearray()
        while len(got) < len(data):
            got += await loop.sock_recv(ssock, 65536)
        await send
        assert bytes(got) == data
        buf = bytearray(10)
        await loop.sock_sendall(ssock, b"0123456789")
        n = 0
        while n < 10:
            n += await loop.sock_recv_into(csock, memoryview(buf)[n:])
        assert buf == b"0123456789"
        for s in (lsock, csock, ssock):
            s.close()

    run(backend_loop, main())


def test_add_reader_is_level_triggered(backend_loop: EventLoop) -> None:
    """A reader that does not drain must be called again (asyncio semantics; multishot poll would not)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = 0

    def on_readable() -> None:
        nonlocal calls
        calls += 1
        a.recv(1)  # only one byte of five
        if calls == 5:
            backend_loop.remove_reader(a)
            backend_loop.stop()

    b.send(b"12345")
    backend_loop.add_reader(a, on_readable)
    backend_loop.call_later(5, backend_loop.stop)
    backend_loop.run_forever()
    assert calls == 5
    a.close()
    b.close()


def test_tls_over_ring_transport(backend_loop: EventLoop) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        server = await asyncio.start_server(_echo_handler, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="localhost")
        raw = writer.transport._ssl_protocol._transport  # type: ignore[attr-defined]
        assert isinstance(raw, RingSocketTransport) == (backend_loop.backend == "io_uring")
        payload = os.urandom(2 * 1024 * 1024)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(backend_loop, main())


def test_asyncio_run_with_loop_factory() -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        return asyncio.get_running_loop().backend  # type: ignore[attr-defined]

    with asyncio.Runner(loop_factory=uringws.loop.new_event_loop) as runner:
        assert runner.run(main()) in ("io_uring", "epoll")
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=uringws.loop.new_event_loop) in ("io_uring", "epoll")


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server.close_clients()/abort_clients() are 3.13+")
def test_server_close_and_abort_clients(backend_loop: EventLoop) -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        server = await asyncio.start_server(idle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.02)
        server.close()
        server.close_clients()  # type: ignore[attr-defined]
        for reader, _writer in conns[:2]:
            assert await reader.read() == b""
        server.abort_clients()  # type: ignore[attr-defined]
        await asyncio.wait_for(server.wait_closed(), 5)
        for _reader, writer in conns:
            writer.close()

    run(backend_loop, main())
