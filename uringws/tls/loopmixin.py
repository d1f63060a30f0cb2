"""Plug uringws TLS into an asyncio event loop class without the loop importing this layer.

The loop sits below TLS (imports point down), so the loop cannot import :mod:`uringws.tls`.  Whoever
composes them (the server/client API, tests, benchmarks) mixes this in front of the loop class::

    class Loop(TLSLoopMixin, uringws.loop.EventLoop): ...
    class TLSSelectorEventLoop(TLSLoopMixin, asyncio.SelectorEventLoop): ...

Then ``create_server(ssl=...)``, ``create_connection(ssl=...)`` and ``start_tls()`` use
:class:`~uringws.tls.protocol.TLSProtocol` instead of ``asyncio.sslproto``.  Requires the loop to have
``_make_socket_transport(sock, protocol, extra=..., server=...)`` as asyncio's selector loop does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

from ..loop import EventLoop
from ..loop import new_event_loop as _new_loop
from .protocol import TLSTransport, make_ssl_transport
from .protocol import start_tls as _start_tls

__all__ = ["TLSEventLoop", "TLSLoopMixin", "TLSSelectorEventLoop", "new_event_loop"]


class TLSLoopMixin:
    """Overrides ``_make_ssl_transport`` and ``start_tls`` of an asyncio loop class."""

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        call_connection_made: bool = True,
    ) -> TLSTransport:
        return make_ssl_transport(
            self,
            rawsock,
            protocol,
            sslcontext,
            waiter,
            server_side=server_side,
            server_hostname=server_hostname,
            extra=extra,
            server=server,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=call_connection_made,
        )

    async def start_tls(
        self,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> TLSTransport:
        return await _start_tls(
            self,  # type: ignore[arg-type]
            transport,
            protocol,
            sslcontext,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )


class TLSSelectorEventLoop(TLSLoopMixin, asyncio.SelectorEventLoop):
    """The stdlib selector loop with uringws TLS: the reference for tests, benchmarks and the epoll fallback."""


class TLSEventLoop(TLSLoopMixin, EventLoop):
    """uringws's event loop (io_uring, or the epoll fallback) with uringws TLS: what ``uringws.EventLoop`` is."""


def new_event_loop(**kwargs: Any) -> TLSEventLoop:
    """Like :func:`uringws.loop.new_event_loop` (io_uring where usable, else epoll), with uringws TLS."""
    loop = _new_loop(loop_class=TLSEventLoop, **kwargs)
    assert isinstance(loop, TLSEventLoop)
    return loop
