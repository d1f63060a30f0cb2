"""uringws: WebSockets over TLS on Linux io_uring, with a send path that cannot lose or reorder a byte.

    asyncio.run(main(), loop_factory=uringws.new_event_loop)     # any asyncio code, on the ring

    async with uringws.serve(handler, "127.0.0.1", 8443, ssl=ctx) as server: ...
    async with uringws.connect("wss://host/path") as ws: ...
"""

__version__ = "0.1.0.dev0"

from .auth import basic_auth
from .client import ClientConnection, connect
from .routing import Router, route
from .server import Server, ServerConnection, broadcast, serve
from .tls import TLSEventLoop as EventLoop
from .tls import new_event_loop
from .ws.config import DEFAULT_CONFIG, DeflateConfig, WSConfig
from .ws.exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidState,
    InvalidStatus,
    InvalidURI,
    InvalidUTF8,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    ProxyError,
    SecurityError,
    WebSocketError,
    WebSocketException,
)
from .ws.handshake import Headers, Request, Response

__all__ = [
    "DEFAULT_CONFIG",
    "ClientConnection",
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateConfig",
    "EventLoop",
    "Headers",
    "InvalidHandshake",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "InvalidUTF8",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "ProxyError",
    "Request",
    "Response",
    "Router",
    "SecurityError",
    "Server",
    "ServerConnection",
    "WSConfig",
    "WebSocketError",
    "WebSocketException",
    "__version__",
    "basic_auth",
    "broadcast",
    "connect",
    "new_event_loop",
    "route",
    "serve",
]
