"""Exceptions of the WebSocket layer. Each says what happened and carries what the peer should be told."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .handshake import Response

__all__ = [
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "InvalidHandshake",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "InvalidUTF8",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "ProxyError",
    "SecurityError",
    "WebSocketError",
    "WebSocketException",
]


class WebSocketError(Exception):
    """Base class of every uringws WebSocket error."""


#: websockets' name for the base class: ``except WebSocketException`` in ported code catches every uringws error.
WebSocketException = WebSocketError


class ConcurrencyError(WebSocketError, RuntimeError):
    """Two coroutines did what only one may do at a time: wait in ``recv()``/``recv_streaming()`` together, read
    after ``recv_streaming()`` was left in the middle of a message, or ping with a payload still waiting for its
    pong. A RuntimeError too, as websockets' ConcurrencyError is."""


class InvalidHandshake(WebSocketError):
    """The opening handshake failed; a server answers with ``status`` (400 unless said otherwise)."""

    def __init__(self, reason: str, status: int = 400, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers: list[tuple[str, str]] = headers or []


class NegotiationError(InvalidHandshake):
    """An extension or subprotocol could not be agreed on."""


class InvalidStatus(InvalidHandshake):
    """The server answered the opening handshake with something other than 101 Switching Protocols."""

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: bytes = b"", response: Response | None = None
    ) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status}", status, headers)
        self.body = body
        self._response = response

    @property
    def response(self) -> Response:
        """The server's answer, as websockets' ``InvalidStatus.response``: ``.status_code``, ``.reason_phrase``,
        ``.headers``, ``.body``."""
        if self._response is None:
            from .handshake import Headers, Response  # handshake imports this module

            self._response = Response(self.status, Headers(self.headers), self.body)
        return self._response


class SecurityError(InvalidHandshake):
    """The client refused to follow the server: a redirect from wss:// to ws://, or too many redirects."""


class ProxyError(InvalidHandshake):
    """The proxy refused to open the tunnel (bad credentials, destination not allowed, an unusable proxy URL)."""


class InvalidURI(WebSocketError):
    """The URI given to ``connect`` is not a ws:// or wss:// URI."""


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455/7692; the connection is failed with ``code`` (1002 unless said otherwise)."""

    def __init__(self, reason: str, code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class PayloadTooBig(ProtocolError):
    """A message exceeded ``max_size``; the connection is failed with 1009."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, 1009)


class InvalidUTF8(ProtocolError):
    """A text message or close reason is not valid UTF-8; the connection is failed with 1007."""

    def __init__(self, reason: str = "invalid UTF-8 in text message") -> None:
        super().__init__(reason, 1007)


class InvalidState(WebSocketError):
    """An operation is not allowed in the connection's current state (e.g. sending after close)."""


class ConnectionClosed(WebSocketError):
    """The connection is closed; ``code``/``reason`` are the peer's close frame (1006 if none came).

    As in websockets, ``rcvd`` and ``sent`` are the close frames received and sent (each with ``.code`` and
    ``.reason``; None if there was none) and ``rcvd_then_sent`` says which came first (None unless both).
    """

    def __init__(
        self,
        code: int,
        reason: str,
        sent_code: int | None = None,
        *,
        rcvd: Any = None,
        sent: Any = None,
        rcvd_then_sent: bool | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        self.rcvd = rcvd
        self.sent = sent
        self.rcvd_then_sent = rcvd_then_sent
        detail = f"{code} ({reason})" if reason else f"{code}"
        super().__init__(f"WebSocket connection closed: {detail}")


class ConnectionClosedOK(ConnectionClosed):
    """Closed cleanly (1000 or 1001, or no status in the close frame)."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or without a closing handshake (1006)."""
