"""The opening handshake (RFC 6455 §4), server and client, sans-I/O; HTTP/1.1 is parsed with h11.

Server: ``ServerHandshake.receive_data(bytes)`` returns the ``Request`` once complete (or raises
``InvalidHandshake`` with the HTTP status to answer: 431 for a head over ``max_header_bytes``, 414 for a request
line over it, however the bytes arrive); ``accept(request)`` validates it and returns the 101
``Response`` plus what was negotiated; ``reject(status, ...)`` builds an error or plain HTTP response.

Subprotocol selection: the server picks the first of *its own* ``subprotocols`` list (its preference order)
that the client offered; pass ``select_subprotocol`` to decide differently. If none matches, the connection
proceeds without a subprotocol (the client may then close it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import NamedTuple

import h11

from .config import DEFAULT_CONFIG, DeflateConfig, WSConfig
from .deflate import (
    DeflateParams,
    PerMessageDeflate,
    client_accept,
    client_offer,
    parse_extensions,
    serialize_extensions,
    server_accept,
)
from .exceptions import InvalidHandshake, InvalidStatus, InvalidURI, NegotiationError

__all__ = [
    "GUID",
    "WSURI",
    "ClientHandshake",
    "Headers",
    "Negotiated",
    "Request",
    "Response",
    "ServerHandshake",
    "accept_key",
    "parse_uri",
    "serialize_response",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
USER_AGENT = "uringws"


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


class Headers:
    """HTTP headers: ordered (name, value) pairs with case-insensitive lookup."""

    __slots__ = ("_items", "_packed")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] | None = list(items)
        # Received heads (see _packed_from) keep their pairs as one str, "name:value" lines joined by "\n": a
        # connection keeps its request for its whole life, and a tuple and two str per header cost about six
        # times the text. Read as it is; turned into _items by the first change (add, __setitem__, __delitem__).
        self._packed = ""

    @classmethod
    def _packed_from(cls, pairs: list[tuple[str, str]]) -> Headers:
        """Headers holding ``pairs`` packed into one str (as a list if some name or value would be ambiguous)."""
        headers = cls(())
        if pairs and not any(":" in k or "\n" in k or "\n" in v for k, v in pairs):
            headers._items = None
            headers._packed = "\n".join([f"{k}:{v}" for k, v in pairs])
        else:
            headers._items = pairs
        return headers

    def _pairs(self) -> list[tuple[str, str]]:
        """The pairs: the list itself, or a new one unpacked from the packed text (not kept)."""
        items = self._items
        if items is not None:
            return items
        return [(k, v) for k, _, v in (line.partition(":") for line in self._packed.split("\n"))]

    def _own(self) -> list[tuple[str, str]]:
        """The pairs as a list kept for changes."""
        items = self._items
        if items is None:
            items = self._items = self._pairs()
            self._packed = ""
        return items

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._pairs() if k.lower() == lname]

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.get_all(name)
        return values[0] if values else default

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs())

    def __len__(self) -> int:
        items = self._items
        return len(items) if items is not None else self._packed.count("\n") + 1

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs())

    def add(self, name: str, value: str) -> None:
        self._own().append((name, value))

    def __setitem__(self, name: str, value: str) -> None:
        """Add a header, as websockets' ``Headers`` does (a second value for a name adds a line)."""
        self._own().append((name, value))

    def __delitem__(self, name: str) -> None:
        """Remove every value of ``name``; KeyError when there is none."""
        lname = name.lower()
        items = self._own()
        kept = [(k, v) for k, v in items if k.lower() != lname]
        if len(kept) == len(items):
            raise KeyError(name)
        self._items = kept

    def __repr__(self) -> str:
        return f"Headers({self._pairs()!r})"


@dataclass
class Request:
    """An HTTP request of the opening handshake. ``path`` includes the query string."""

    method: str
    path: str
    headers: Headers
    http_version: str = "1.1"


@dataclass
class Response:
    """An HTTP response: the 101 of a successful handshake, an error, or a plain answer of process_request."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    reason: str = ""

    @property
    def status_code(self) -> int:
        """``status``, under websockets' name."""
        return self.status

    @property
    def reason_phrase(self) -> str:
        """The reason phrase: the one received, else the standard one for ``status`` (websockets' name)."""
        if self.reason:
            return self.reason
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return ""


class Negotiated(NamedTuple):
    """What the opening handshake agreed on."""

    subprotocol: str | None
    deflate: PerMessageDeflate | None


def _tokens(values: Iterable[str]) -> list[str]:
    """Comma-separated token lists from several header values, lower-cased, empty items dropped."""
    return [t.strip().lower() for v in values for t in v.split(",") if t.strip()]


def _check_header_text(text: str) -> None:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"invalid character in HTTP header: {text!r}")


def serialize_response(response: Response) -> bytes:
    """HTTP/1.1 response bytes; adds Content-Length for bodies of non-101 responses."""
    reason = response.reason
    if not reason:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
    _check_header_text(reason)
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    has_length = False
    for name, value in response.headers:
        _check_header_text(name)
        _check_header_text(value)
        if not name or ":" in name:
            raise ValueError(f"invalid HTTP header name {name!r}")
        if name.lower() == "content-length":
            has_length = True
        lines.append(f"{name}: {value}")
    if response.status != 101 and not has_length:
        lines.append(f"Content-Length: {len(response.body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + response.body if response.status != 101 else head


def _decode_headers(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    return Headers._packed_from([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw])


def _head_too_large(what: str, size: int, limit: int, incomplete: bool) -> str:
    return (
        f"HTTP {what} head too large: {'at least ' if incomplete else ''}{size} bytes, over the limit of "
        f"{limit} (WSConfig.max_header_bytes)"
    )


class ServerHandshake:
    """Parses one opening-handshake request and builds the response."""

    def __init__(
        self,
        config: WSConfig = DEFAULT_CONFIG,
        *,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Request, list[str]], str | None] | None = None,
        origins: Sequence[str | None] | None = None,
        server_header: str | None = USER_AGENT,
    ) -> None:
        self.config = config
        self.subprotocols = list(subprotocols or [])
        self.select_subprotocol = select_subprotocol
        self.origins = None if origins is None else list(origins)
        self.server_header = server_header
        # h11 bounds only an *incomplete* head (its buffer while it waits for more); a head that arrives whole
        # in one read is parsed at any size. So the limit is enforced here, on every head, by counting bytes.
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self._received = 0  # bytes fed so far (all of them belong to the head until the request is complete)
        self._line_end = -1  # stream offset of the "\n" ending the request line, once seen
        self.request: Request | None = None
        self.trailing_data = b""

    def receive_data(self, data: bytes) -> Request | None:
        """Feed bytes; return the Request once its head is complete. Raises InvalidHandshake on bad HTTP."""
        if self.request is not None:
            self.trailing_data += data
            return self.request
        conn = self._h11
        limit = self.config.max_header_bytes
        start = self._received
        self._received += len(data)
        if self._line_end < 0:
            i = data.find(b"\n")
            if i >= 0:
                self._line_end = start + i
        # 414 when the request line with its line end cannot fit in the limit (seen whole or not).
        line = self._line_end if self._line_end >= 0 else self._received
        if line + 1 > limit:
            raise InvalidHandshake(
                f"request line too long: {'' if self._line_end >= 0 else 'at least '}{line + 1} bytes, over the "
                f"limit of {limit} (WSConfig.max_header_bytes)",
                414,
            )
        try:
            conn.receive_data(data)
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            if status == 431:  # h11's own limit on an incomplete head: not malformed, too long
                raise InvalidHandshake(_head_too_large("request", self._received, limit, True), 431) from None
            raise InvalidHandshake(f"malformed HTTP request: {exc}", status) from None
        if event is h11.NEED_DATA:
            if self._received > limit:  # h11 checks this too; here the limit does not depend on it
                raise InvalidHandshake(_head_too_large("request", self._received, limit, True), 431)
            return None
        if isinstance(event, h11.ConnectionClosed):
            raise InvalidHandshake("connection closed during the opening handshake")
        if not isinstance(event, h11.Request):
            raise InvalidHandshake(f"unexpected HTTP event {type(event).__name__}")
        # Bytes after the request head (a client may pipeline its first frames). A WebSocket GET has no
        # body; if one was declared the request is rejected in accept(), so what h11 buffered is enough.
        trailing = bytes(conn.trailing_data[0])
        head = self._received - len(trailing)
        if head > limit:
            raise InvalidHandshake(_head_too_large("request", head, limit, False), 431)
        if len(event.headers) > self.config.max_header_count:
            raise InvalidHandshake(
                f"too many HTTP headers ({len(event.headers)} > {self.config.max_header_count})", 431
            )
        request = Request(
            method=event.method.decode("ascii", "replace"),
            path=event.target.decode("ascii", "replace"),
            headers=_decode_headers(event.headers),
            http_version=event.http_version.decode("ascii", "replace"),
        )
        self.request = request
        self.trailing_data = trailing
        return request

    def accept(self, request: Request) -> tuple[Response, Negotiated]:
        """Validate an upgrade request; return the 101 response. Raises InvalidHandshake (status, reason)."""
        headers = request.headers
        if request.method != "GET":
            raise InvalidHandshake(f"WebSocket handshake needs GET, not {request.method}", 405, [("Allow", "GET")])
        if request.http_version not in ("1.1",):
            raise InvalidHandshake(f"WebSocket handshake needs HTTP/1.1, not HTTP/{request.http_version}", 505)
        upgrade_tokens = _tokens(headers.get_all("Upgrade"))
        if "websocket" not in upgrade_tokens:
            raise InvalidHandshake(
                "missing 'Upgrade: websocket' header: this is a WebSocket endpoint",
                426,
                [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")],
            )
        if "upgrade" not in _tokens(headers.get_all("Connection")):
            raise InvalidHandshake("missing 'Connection: Upgrade' header")
        if len(headers.get_all("Host")) != 1:
            raise InvalidHandshake("exactly one Host header is required")
        if headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers:
            raise InvalidHandshake("a WebSocket handshake request has no body")
        versions = headers.get_all("Sec-WebSocket-Version")
        if [v.strip() for v in versions] != ["13"]:
            raise InvalidHandshake(
                f"unsupported Sec-WebSocket-Version {', '.join(versions) or '(missing)'}: only 13 is supported",
                426,
                [("Sec-WebSocket-Version", "13")],
            )
        keys = headers.get_all("Sec-WebSocket-Key")
        if len(keys) != 1:
            raise InvalidHandshake("exactly one Sec-WebSocket-Key header is required")
        key = keys[0].strip()
        try:
            raw_key = base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raw_key = b""
        if len(raw_key) != 16:
            raise InvalidHandshake("Sec-WebSocket-Key is not 16 bytes in base64")
        if self.origins is not None:
            origin_values = headers.get_all("Origin")
            if len(origin_values) > 1:
                raise InvalidHandshake("more than one Origin header", 403)
            origin = origin_values[0] if origin_values else None
            if origin not in self.origins:
                raise InvalidHandshake(f"origin {origin!r} is not allowed", 403)

        response_headers = Headers(
            [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
        )
        deflate: PerMessageDeflate | None = None
        compression = self.config.compression
        ext_values = headers.get_all("Sec-WebSocket-Extensions")
        if compression is not None and ext_values:
            try:
                offers = parse_extensions(ext_values)
            except NegotiationError as exc:
                raise InvalidHandshake(str(exc)) from None
            accepted = server_accept(offers, compression)
            if accepted is not None:
                extension, params = accepted
                response_headers.add("Sec-WebSocket-Extensions", serialize_extensions([extension]))
                deflate = PerMessageDeflate(params, True, compression.mem_level, compression.compress_level)

        offered = [t.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for t in v.split(",") if t.strip()]
        subprotocol: str | None = None
        if offered:
            if self.select_subprotocol is not None:
                subprotocol = self.select_subprotocol(request, offered)
                if subprotocol is not None and subprotocol not in offered:
                    raise NegotiationError(f"selected subprotocol {subprotocol!r} was not offered", 500)
            else:
                subprotocol = next((p for p in self.subprotocols if p in offered), None)
            if subprotocol is not None:
                response_headers.add("Sec-WebSocket-Protocol", subprotocol)
        if self.server_header:
            response_headers.add("Server", self.server_header)
        return Response(101, response_headers), Negotiated(subprotocol, deflate)

    def reject(
        self,
        status: int,
        body: bytes | str = b"",
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """A plain HTTP response (error, or a process_request answer); the connection closes after it."""
        if isinstance(body, str):
            body = body.encode("utf-8")
        hdrs = Headers(headers)
        if "Content-Type" not in hdrs and body:
            hdrs.add("Content-Type", "text/plain; charset=utf-8")
        if "Connection" not in hdrs:
            hdrs.add("Connection", "close")
        if self.server_header and "Server" not in hdrs:
            hdrs.add("Server", self.server_header)
        return Response(status, hdrs, body)

    def reject_exception(self, exc: InvalidHandshake) -> Response:
        """The HTTP response for a failed handshake: status from the exception, reason as the body."""
        return self.reject(exc.status, f"Failed to open a WebSocket connection: {exc.reason}.\n", exc.headers)


class WSURI(NamedTuple):
    """A parsed ws:// or wss:// URI."""

    secure: bool
    host: str
    port: int
    path: str  # path and query, at least "/"
    user_info: tuple[str, str] | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_uri(uri: str) -> WSURI:
    """Parse a ws:// or wss:// URI; raises InvalidURI."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("ws", "wss"):
        raise InvalidURI(f"{uri!r} is not a ws:// or wss:// URI")
    if parsed.fragment:
        raise InvalidURI(f"{uri!r} has a fragment, which WebSocket URIs may not have")
    if not parsed.hostname:
        raise InvalidURI(f"{uri!r} has no host")
    secure = parsed.scheme == "wss"
    try:
        port = parsed.port or (443 if secure else 80)
    except ValueError:
        raise InvalidURI(f"{uri!r} has an invalid port") from None
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    user_info = None
    if parsed.username is not None:
        user_info = (urllib.parse.unquote(parsed.username), urllib.parse.unquote(parsed.password or ""))
    return WSURI(secure, parsed.hostname, port, path, user_info)


class ClientHandshake:
    """Builds the upgrade request and validates the server's answer."""

    def __init__(
        self,
        uri: WSURI,
        config: WSConfig = DEFAULT_CONFIG,
        *,
        subprotocols: Sequence[str] | None = None,
        origin: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        user_agent: str | None = USER_AGENT,
    ) -> None:
        self.uri = uri
        self.config = config
        self.subprotocols = list(subprotocols or [])
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        headers = Headers(
            [
                ("Host", uri.host_header),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", self.key),
                ("Sec-WebSocket-Version", "13"),
            ]
        )
        if origin is not None:
            headers.add("Origin", origin)
        if uri.user_info is not None:
            token = base64.b64encode(":".join(uri.user_info).encode("utf-8")).decode("ascii")
            headers.add("Authorization", f"Basic {token}")
        if config.compression is not None:
            headers.add("Sec-WebSocket-Extensions", serialize_extensions([client_offer(config.compression)]))
        if self.subprotocols:
            headers.add("Sec-WebSocket-Protocol", ", ".join(self.subprotocols))
        if user_agent:
            headers.add("User-Agent", user_agent)
        for name, value in extra_headers:
            headers.add(name, value)
        self.request = Request("GET", uri.path, headers)
        # As on the server: h11 bounds only an incomplete head, so each response head is measured here too.
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=config.max_header_bytes)
        self._received = 0  # bytes fed so far
        self._head_start = 0  # stream offset where the response head being read starts (after any 1xx)
        self.response: Response | None = None
        self.trailing_data = b""

    def data_to_send(self) -> bytes:
        """The request bytes."""
        return (
            self._h11.send(
                h11.Request(
                    method="GET",
                    target=self.request.path.encode("ascii"),
                    headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.request.headers],
                )
            )
            or b""
        )

    def receive_data(self, data: bytes) -> Response | None:
        """Feed response bytes; return the Response once its head is complete (non-101 bodies included
        as far as they arrived). Raises InvalidHandshake on malformed HTTP."""
        conn = self._h11
        self._received += len(data)
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return None  # on EOF the caller feeds b"", which ends a body read until close
                if isinstance(event, h11.InformationalResponse | h11.Response):
                    self._check_head_size()
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code != 101:
                        continue  # 1xx other than 101: keep waiting (RFC 9110 §15.2)
                    self.response = Response(101, _decode_headers(event.headers), reason=event.reason.decode("latin-1"))
                    self.trailing_data = bytes(conn.trailing_data[0])
                    return self.response
                if isinstance(event, h11.Response):
                    self.response = Response(
                        event.status_code, _decode_headers(event.headers), reason=event.reason.decode("latin-1")
                    )
                    continue
                if isinstance(event, h11.Data) and self.response is not None:
                    if len(self.response.body) < 65536:
                        self.response.body += bytes(event.data)
                    continue
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) and self.response is not None:
                    return self.response
                if isinstance(event, h11.ConnectionClosed):
                    raise InvalidHandshake("connection closed during the opening handshake")
                if event is h11.PAUSED:
                    return self.response
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's limit on an incomplete head
                limit = self.config.max_header_bytes
                raise InvalidHandshake(
                    _head_too_large("response", self._received - self._head_start, limit, True)
                ) from None
            raise InvalidHandshake(f"malformed HTTP response: {exc}") from None

    def _check_head_size(self) -> None:
        """Raise InvalidHandshake if the response head h11 just parsed is longer than max_header_bytes."""
        end = self._received - len(self._h11.trailing_data[0])
        size, self._head_start = end - self._head_start, end
        limit = self.config.max_header_bytes
        if size > limit:
            raise InvalidHandshake(_head_too_large("response", size, limit, False))

    def accept(self, response: Response) -> Negotiated:
        """Validate the server's response; raises InvalidStatus for non-101, InvalidHandshake otherwise."""
        if response.status != 101:
            raise InvalidStatus(response.status, response.headers.items(), response.body, response)
        headers = response.headers
        if "websocket" not in _tokens(headers.get_all("Upgrade")):
            raise InvalidHandshake("response lacks 'Upgrade: websocket'")
        if "upgrade" not in _tokens(headers.get_all("Connection")):
            raise InvalidHandshake("response lacks 'Connection: Upgrade'")
        accepts = headers.get_all("Sec-WebSocket-Accept")
        if len(accepts) != 1 or accepts[0].strip() != accept_key(self.key):
            raise InvalidHandshake("wrong or missing Sec-WebSocket-Accept")
        deflate: PerMessageDeflate | None = None
        ext_values = headers.get_all("Sec-WebSocket-Extensions")
        if ext_values:
            params: DeflateParams | None = client_accept(parse_extensions(ext_values), self.config.compression)
            if params is not None:
                comp: DeflateConfig = self.config.compression  # type: ignore[assignment]
                deflate = PerMessageDeflate(params, False, comp.mem_level, comp.compress_level)
        protocols = [t.strip() for v in headers.get_all("Sec-WebSocket-Protocol") for t in v.split(",") if t.strip()]
        subprotocol: str | None = None
        if protocols:
            if len(protocols) > 1:
                raise NegotiationError("server selected more than one subprotocol")
            if protocols[0] not in self.subprotocols:
                raise NegotiationError(f"server selected subprotocol {protocols[0]!r}, which was not offered")
            subprotocol = protocols[0]
        return Negotiated(subprotocol, deflate)
