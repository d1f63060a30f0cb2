"""WebSocket server on any asyncio event loop: ``serve`` and ``broadcast`` (routing by path: ``uringws.routing``).

::

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 8765) as server:
        await server.serve_forever()
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any

from .metrics import ServerStats, broadcast_stats
from .tls.protocol import TLSProtocol
from .ws.budget import MemoryBudget
from .ws.config import WSConfig
from .ws.connection import Connection, Data, LoggerLike, ProcessRequest, ProcessResponse
from .ws.frames import serialize_header
from .ws.handshake import Request, ServerHandshake
from .ws.options import make_config, split_options
from .ws.protocol import Side, State

__all__ = ["Server", "ServerConnection", "broadcast", "serve"]


ServerConnection = Connection
Handler = Callable[[Connection], Awaitable[Any]]


class Server:
    """A listening WebSocket server; use ``async with serve(...) as server`` or ``server = await serve(...)``."""

    def __init__(
        self,
        handler: Handler,
        host: str | Sequence[str] | None,
        port: int | None,
        *,
        config: WSConfig,
        ssl: ssl_module.SSLContext | None = None,
        process_request: ProcessRequest | None = None,
        process_response: ProcessResponse | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Request, list[str]], str | None] | None = None,
        origins: Sequence[str | None] | None = None,
        server_header: str | None = "uringws",
        create_server_kwargs: dict[str, Any] | None = None,
        sndbuf: int | None = None,
        logger: LoggerLike | None = None,
        max_memory: int | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.config = config
        self.ssl = ssl
        self.process_request = process_request
        self.process_response = process_response
        self.subprotocols = subprotocols
        self.select_subprotocol = select_subprotocol
        self.origins = origins
        self.server_header = server_header
        kwargs = dict(create_server_kwargs or {})
        # TLS is wrapped here, not by create_server(ssl=...): these two belong to that wrapping.
        self._ssl_handshake_timeout: float | None = kwargs.pop("ssl_handshake_timeout", None)
        self._ssl_shutdown_timeout: float | None = kwargs.pop("ssl_shutdown_timeout", None)
        self._create_server_kwargs = kwargs
        self.sndbuf = sndbuf
        #: The server's logger, also each connection's (``logger=``; default ``logging.getLogger("uringws.server")``).
        self.logger: LoggerLike = logger if logger is not None else logging.getLogger("uringws.server")
        #: Connections whose application protocol is connected (plain TCP at once, TLS once its handshake is
        #: done), opening handshake done or not; use with ``broadcast``.
        self.connections: set[Connection] = set()
        #: Accepted TLS connections whose TLS handshake is not done yet; aborted by close().
        self._tls_handshaking: set[TLSProtocol] = set()
        self.server: asyncio.Server | None = None
        self._closed = False
        #: Totals of ended connections and failed handshakes (``uringws.metrics`` adds the live ones).
        self.stats = ServerStats()
        #: Bytes the messages being received may hold, all connections together (``max_memory``); None when
        #: unlimited (nothing is counted then).
        self.budget: MemoryBudget | None = None if max_memory is None else MemoryBudget(max_memory)
        if max_memory is not None:
            return_freed_memory()

    def _make_protocol(self) -> asyncio.BaseProtocol:
        """Protocol factory for each accepted TCP connection (runs right after accept)."""
        conn = self._make_connection()
        if self.ssl is None:
            self.connections.add(conn)
            return conn
        # The TLS layer is wrapped here rather than by create_server(ssl=...), on any event loop, so that the
        # server sees how the TLS handshake ends: a connection whose handshake fails never reaches the
        # application protocol, and asyncio's TLS layers (ours and sslproto) then never call its
        # connection_lost, so a Connection added to `connections` at accept would stay there (and keep
        # wait_closed() waiting) forever.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timeout = self._ssl_handshake_timeout
        if timeout is None:
            timeout = self.config.open_timeout  # one deadline from accept for TLS + HTTP upgrade (see _run_server)
        tls = TLSProtocol(
            loop,
            conn,
            self.ssl,
            waiter,
            server_side=True,
            ssl_handshake_timeout=timeout,
            ssl_shutdown_timeout=self._ssl_shutdown_timeout,
        )
        self._tls_handshaking.add(tls)
        waiter.add_done_callback(functools.partial(self._tls_handshake_done, tls, conn))
        return tls

    def _tls_handshake_done(self, tls: TLSProtocol, conn: Connection, waiter: asyncio.Future[None]) -> None:
        self._tls_handshaking.discard(tls)
        if waiter.cancelled() or waiter.exception() is not None:  # exception() also marks it retrieved
            timed_out = not waiter.cancelled() and isinstance(waiter.exception(), TimeoutError)
            self.stats.handshake_failed("tls_timeout" if timed_out else "tls")
            return  # already logged by the TLS layer; the connection is closing
        if conn.lost.done():
            return
        self.connections.add(conn)
        if self._closed:
            conn._close_transport()  # accepted before close(), handshake finished after: nothing to serve

    def _make_connection(self) -> Connection:
        handshake = ServerHandshake(
            self.config,
            subprotocols=self.subprotocols,
            select_subprotocol=self.select_subprotocol,
            origins=self.origins,
            server_header=self.server_header,
        )
        conn = Connection(
            Side.SERVER,
            self.config,
            server_handshake=handshake,
            handler=self.handler,
            process_request=self.process_request,
            process_response=self.process_response,
            on_lost=self._connection_lost,
            sndbuf=self.sndbuf,
            logger=self.logger,
            budget=self.budget,
        )
        return conn

    def _connection_lost(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.stats.connection_lost(conn)

    async def start(self) -> Server:
        """Start listening (called by ``async with`` / ``await``)."""
        if self.server is None:
            loop = asyncio.get_running_loop()
            self.server = await loop.create_server(
                self._make_protocol, self.host, self.port, **self._create_server_kwargs
            )
        return self

    def __await__(self) -> Generator[Any, None, Server]:
        return self.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    @property
    def sockets(self) -> tuple[Any, ...]:
        return () if self.server is None else tuple(self.server.sockets)

    @property
    def port_bound(self) -> int:
        """The port of the first listening socket (handy with port=0)."""
        return int(self.sockets[0].getsockname()[1])

    def close(self, close_connections: bool = True, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop accepting connections and start closing open ones with ``code`` (1001, going away).

        Connections still in the TLS handshake are aborted even with ``close_connections=False``: no
        application code has seen them yet.
        """
        self._closed = True
        if self.server is not None:
            self.server.close()
        for tls in list(self._tls_handshaking):
            tls.app_transport.abort()
        if close_connections:
            for conn in list(self.connections):
                if conn.proto is not None:
                    if conn.proto.state is State.OPEN:
                        conn._start_close(code, reason)
                else:
                    conn._close_transport()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection are closed."""
        if self.server is not None:
            self.server.close()
        pending = [conn.lost for conn in list(self.connections)]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    def is_serving(self) -> bool:
        """True while the server accepts connections (started, not closed)."""
        return self.server is not None and self.server.is_serving()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on (it must be started)."""
        if self.server is None:
            raise RuntimeError("the server is not started: use `async with serve(...)` or `await serve(...)`")
        return self.server.get_loop()

    async def start_serving(self) -> None:
        """Start accepting connections; the server already does once started, as websockets' does."""
        await self.start()

    async def serve_forever(self) -> None:
        await self.start()
        assert self.server is not None
        await self.server.serve_forever()


def serve(
    handler: Handler,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    ssl: ssl_module.SSLContext | None = None,
    process_request: ProcessRequest | None = None,
    process_response: ProcessResponse | None = None,
    subprotocols: Sequence[str] | None = None,
    select_subprotocol: Callable[[Request, list[str]], str | None] | None = None,
    origins: Sequence[str | None] | None = None,
    compression: Any = "deflate",
    config: WSConfig | None = None,
    server_header: str | None = "uringws",
    sndbuf: int | None = None,
    logger: LoggerLike | None = None,
    max_memory: int | None = None,
    **kwargs: Any,
) -> Server:
    """Create a WebSocket server; ``handler(ws)`` runs for each connection after the handshake.

    Keyword arguments named like ``WSConfig`` fields (``max_size``, ``max_queue``, ``ping_interval``,
    ``ping_timeout``, ``open_timeout``, ``close_timeout``, ``write_limit_high``, ...) set those limits; the
    rest go to ``loop.create_server`` (e.g. ``reuse_port``, ``backlog``, ``sock``). ``compression``:
    "deflate" (default), a ``DeflateConfig``, or None. ``subprotocols`` are picked in the server's order.
    ``write_limit``: int high-water mark (low = high // 4) or (high, low). ``sndbuf``: SO_SNDBUF of each
    accepted socket (small values force short writes, for tests). ``process_request(ws, request)`` may
    return ``ws.respond(status, headers, body)`` (or a (status, headers, body) tuple) to answer plain HTTP.
    ``process_response(ws, request, response)`` sees every response of a received request before it is sent
    (the 101, a refusal, process_request's answer): change it in place or return another one. Both may be
    coroutine functions; an exception in either is logged and answered with a 500. ``logger``: a Logger or
    LoggerAdapter for the server and its connections (default ``logging.getLogger("uringws.server")``); how each
    connection closed is logged at DEBUG. ``max_memory``: bytes that messages being received (64 KiB and larger,
    from their first frame until the handler's ``recv()`` takes them) may hold across all connections; a message
    that would exceed it fails its own connection with 1009 (default None: unlimited; see "Memory budget" in the
    deployment guide).
    """
    ws_options, rest = split_options(kwargs)
    return Server(
        handler,
        host,
        port,
        config=make_config(config, compression, ws_options),
        ssl=ssl,
        process_request=process_request,
        process_response=process_response,
        subprotocols=subprotocols,
        select_subprotocol=select_subprotocol,
        origins=origins,
        server_header=server_header,
        create_server_kwargs=rest,
        sndbuf=sndbuf,
        logger=logger,
        max_memory=max_memory,
    )


def return_freed_memory() -> None:
    """Make glibc's malloc give large freed buffers back to the operating system (once per process).

    glibc serves allocations of at least ``M_MMAP_THRESHOLD`` bytes with their own mmap(), unmapped on free, but
    it raises that threshold (up to 32 MiB on 64-bit) each time such a block is freed: after a few large messages
    their buffers come from the heap and stay in the process when freed, so RSS stays at its peak and a memory
    budget bounds what is in use but not what the process holds. Setting the threshold explicitly (1 MiB) turns
    that adjustment off. Not glibc (musl, or no libc found): nothing to do.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    import ctypes
    import os

    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    except (ValueError, OSError, AttributeError):  # no such confstr name (not glibc), no libc symbols
        pass


_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_malloc_tuned = False


def broadcast(connections: Iterable[Connection], message: Data, *, text: bool | None = None) -> int:
    """Send ``message`` to every open connection without waiting; return how many it was written to.

    ``text`` forces the frame type as in ``send()``: True sends bytes (UTF-8) as text, False a str as binary.

    The frame is built once (and compressed once per group of connections whose compressor keeps no
    context); connections with a context-keeping compressor compress it themselves. Policy for slow
    consumers: a connection whose transport already buffers more than ``write_limit_high`` bytes is
    SKIPPED — it misses this message rather than blocking the others or growing memory without bound.
    Connections that are not open (handshake pending, closing, closed, transport closing) and connections
    in the middle of sending a fragmented message (a frame cannot be inserted) are skipped too.
    ``connections`` is iterated once and not copied: pass ``server.connections`` as it is.
    """
    if isinstance(message, str):
        opcode, payload = 0x2 if text is False else 0x1, message.encode("utf-8")
    elif isinstance(message, bytes | bytearray | memoryview):
        opcode, payload = 0x1 if text else 0x2, bytes(message)
    else:
        raise TypeError(f"cannot broadcast {type(message).__name__}: use str or bytes")
    plain: bytes | None = None
    compressed: dict[tuple[int, int, int], bytes] = {}
    written = 0
    # Frames written here, bypassing each connection's core (which counts the general path's itself).
    direct = direct_bytes = 0
    # This loop runs once per connection per message (1000s of times per broadcast), so it is written for
    # cost: constants in locals, the cheapest tests first, and no property or method call where a plain
    # attribute gives the same answer (each call costs about as much as all the attribute tests together).
    OPEN = State.OPEN
    SERVER = Side.SERVER
    for conn in connections:
        proto = conn.proto
        # `_send_opcode` is what the `fragmenting` property reads; the property call would cost as much as the
        # rest of these tests (tests/e2e/test_broadcast_policy.py fails if the two ever part).
        if proto is None or proto.state is not OPEN or proto._send_opcode:
            continue
        transport = conn.transport
        if transport is None or transport.is_closing():
            continue
        # Slow consumer. The transport calls pause_writing() as soon as its buffer goes above the high-water
        # mark (Connection sets the transport's limits from its config), so an unpaused connection is below
        # it: only a paused one pays for get_write_buffer_size(), which on TLS asks two transports. A paused
        # one that has drained to between the marks is still written to, as the policy says.
        if conn._write_paused and transport.get_write_buffer_size() > conn.config.write_limit_high:
            continue
        deflate = proto.deflate
        if deflate is None and conn.side is SERVER:
            if plain is None:
                plain = serialize_header(opcode, len(payload)) + payload
            transport.write(plain)
            direct += 1
            direct_bytes += len(plain)
        elif deflate is not None and deflate.local_no_context_takeover and conn.side is SERVER:
            key = deflate.settings_key
            frame = compressed.get(key)
            if frame is None:
                data = deflate.compress_standalone(payload)
                frame = compressed[key] = serialize_header(opcode, len(data), True, True) + data
            transport.write(frame)
            direct += 1
            direct_bytes += len(frame)
        else:
            # Masked (client) or context-keeping compression: this connection needs its own frame.
            if opcode == 0x1:
                proto.send_text(payload)
            else:
                proto.send_binary(payload)
            conn._flush()
        written += 1
    if direct:
        # Once per call, not per connection: the loop above is the hot path of a broadcast.
        broadcast_stats.messages += direct
        broadcast_stats.bytes += direct_bytes
    return written
