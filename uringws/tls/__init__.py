"""TLS layer: TLS over any asyncio stream transport via memory BIOs (stdlib ssl / OpenSSL).

Public API:

- :class:`TLSProtocol` / :class:`TLSTransport` — the TLS endpoint, same loop contract as asyncio's sslproto.
- :func:`make_ssl_transport` / :func:`start_tls` — bodies for an event loop's ``_make_ssl_transport`` and
  ``start_tls``.
- :class:`TLSLoopMixin` — mix in front of a loop class so its ``ssl=`` paths and ``start_tls`` use this layer
  (the loop itself must not import upwards); :class:`TLSSelectorEventLoop` is the stdlib selector loop so mixed,
  :class:`TLSEventLoop` / :func:`new_event_loop` uringws's own loop so mixed (exported as ``uringws.EventLoop``).
- :func:`server_context` / :func:`client_context` — SSLContext factories (TLS 1.2 minimum).
- :mod:`uringws.tls.devcert` — cached self-signed development certificate (needs ``cryptography``).
"""

from .context import client_context, server_context
from .loopmixin import TLSEventLoop, TLSLoopMixin, TLSSelectorEventLoop, new_event_loop
from .protocol import (
    HANDSHAKE_TIMEOUT,
    SHUTDOWN_TIMEOUT,
    WRITE_HIGH_WATER,
    TLSProtocol,
    TLSTransport,
    TLSTruncatedError,
    make_ssl_transport,
    start_tls,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "WRITE_HIGH_WATER",
    "TLSEventLoop",
    "TLSLoopMixin",
    "TLSProtocol",
    "TLSSelectorEventLoop",
    "TLSTransport",
    "TLSTruncatedError",
    "client_context",
    "make_ssl_transport",
    "new_event_loop",
    "server_context",
    "start_tls",
]
