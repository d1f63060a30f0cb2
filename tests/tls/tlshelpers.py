"""Helpers for the TLS tests and benchmarks: servers/clients built on TLSProtocol over the stdlib loop."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from uringws.tls.loopmixin import TLSSelectorEventLoop
from uringws.tls.protocol import TLSProtocol, TLSTransport

__all__ = ["TLSSelectorEventLoop"]  # re-exported for the tests and benchmarks


class Recorder(asyncio.Protocol):
    """Application protocol that records everything and can echo."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.made = asyncio.get_running_loop().create_future()
        self.paused = 0
        self.resumed = 0
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)
        for n, fut in self.waiters:
            if len(self.data) >= n and not fut.done():
                fut.set_result(None)

    async def wait_bytes(self, n: int, timeout: float = 10.0) -> bytes:
        if len(self.data) < n:
            fut = asyncio.get_running_loop().create_future()
            self.waiters.append((n, fut))
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        return bytes(self.data)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def tls_server(
    ctx: ssl.SSLContext,
    factory: Callable[[], Any],
    host: str = "127.0.0.1",
    **kw: Any,
) -> tuple[asyncio.Server, int, list[TLSProtocol]]:
    """Start a server whose connections use TLSProtocol directly over the stdlib loop's TCP transport."""
    loop = asyncio.get_running_loop()
    protos: list[TLSProtocol] = []

    def make() -> TLSProtocol:
        p = TLSProtocol(loop, factory(), ctx, None, server_side=True, **kw)
        protos.append(p)
        return p

    server = await loop.create_server(make, host, 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, protos


async def tls_client(
    ctx: ssl.SSLContext,
    app: asyncio.BaseProtocol,
    port: int,
    host: str = "127.0.0.1",
    server_hostname: str | None = "localhost",
    sock: socket.socket | None = None,
    **kw: Any,
) -> tuple[TLSTransport, TLSProtocol]:
    """Connect with TLSProtocol as client; returns once the handshake completed (raises if it failed)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    tls = TLSProtocol(loop, app, ctx, waiter, False, server_hostname, **kw)
    if sock is not None:
        await loop.create_connection(lambda: tls, sock=sock)
    else:
        await loop.create_connection(lambda: tls, host, port)
    await waiter
    return tls.app_transport, tls


R = TypeVar("R", bound=asyncio.BaseProtocol)


def collecting(apps: list[R], make: Callable[[], R]) -> Callable[[], R]:
    """A protocol factory that also appends each protocol it makes to ``apps``."""

    def factory() -> R:
        app = make()
        apps.append(app)
        return app

    return factory


def payload(n: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random bytes (seeded PRNG, as docs/design.md §5 asks)."""
    return random.Random(seed).randbytes(n)


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class ThreadPeer:
    """A blocking-socket peer running ``target(sock)`` in a thread; exceptions are re-raised by join()."""

    def __init__(self, target: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = target(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the test via join()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    async def join(self, timeout: float = 20.0) -> Any:
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, timeout)
        if self.thread.is_alive():
            raise TimeoutError("peer thread did not finish")
        if self.error is not None:
            raise self.error
        return self.result


class ManualClient:
    """A TLS client driven by hand (SSLObject + memory BIOs over a raw socket) so a test can forge bytes."""

    def __init__(self, ctx: ssl.SSLContext, sock: socket.socket) -> None:
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, ctx: ssl.SSLContext, port: int) -> ManualClient:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        self = cls(ctx, sock)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.loop.sock_sendall(sock, self.out.read())
                data = await asyncio.wait_for(self.loop.sock_recv(sock, 65536), 10)
                assert data, "server closed during handshake"
                self.inc.write(data)
        await self.loop.sock_sendall(sock, self.out.read())
        return self

    def record(self, data: bytes) -> bytes:
        """The encrypted record(s) for ``data``, not sent."""
        self.obj.write(data)
        return self.out.read()

    async def send_raw(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def read_until_closed(self, timeout: float = 10.0) -> bytes:
        """Raw bytes from the server until it closes TCP (or resets)."""
        got = bytearray()
        while True:
            try:
                data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 65536), timeout)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
        return bytes(got)
