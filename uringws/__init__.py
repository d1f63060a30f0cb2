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
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
    WebSocketError,
)

__all__ = [
    "DEFAULT_CONFIG",
    "ClientConnection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateConfig",
    "EventLoop",
    "InvalidHandshake",
    "InvalidStatus",
    "InvalidURI",
    "PayloadTooBig",
    "ProtocolError",
    "Router",
    "Server",
    "ServerConnection",
    "WSConfig",
    "WebSocketError",
    "__version__",
    "basic_auth",
    "broadcast",
    "connect",
    "new_event_loop",
    "route",
    "serve",
]
