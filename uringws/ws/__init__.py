"""WebSocket protocol (RFC 6455, RFC 7692 permessage-deflate), sans-I/O.

``protocol.Protocol`` is the connection state machine, ``handshake`` the opening handshake, ``frames`` and
``deflate`` plain functions and objects below them, ``config`` every default. ``connection`` is the asyncio
front-end used by ``uringws.server`` and ``uringws.client`` (the only module here that imports asyncio).
"""

from .config import DEFAULT_CONFIG, DeflateConfig, WSConfig
from .exceptions import (
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
    WebSocketError,
    WebSocketException,
)
from .handshake import ClientHandshake, Headers, Request, Response, ServerHandshake
from .protocol import Close, Fragment, Message, Ping, Pong, Protocol, Side, State

__all__ = [
    "DEFAULT_CONFIG",
    "ClientHandshake",
    "Close",
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DeflateConfig",
    "Fragment",
    "Headers",
    "InvalidHandshake",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "InvalidUTF8",
    "Message",
    "NegotiationError",
    "PayloadTooBig",
    "Ping",
    "Pong",
    "Protocol",
    "ProtocolError",
    "Request",
    "Response",
    "ServerHandshake",
    "Side",
    "State",
    "WSConfig",
    "WebSocketError",
    "WebSocketException",
]
