"""Opening handshake: happy paths, every rejection with its HTTP status, garbage never crashes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringws.ws.config import DeflateConfig, WSConfig
from uringws.ws.exceptions import InvalidHandshake, InvalidStatus, InvalidURI, NegotiationError
from uringws.ws.handshake import (
    ClientHandshake,
    Headers,
    Response,
    ServerHandshake,
    accept_key,
    parse_uri,
    serialize_response,
)

GOOD = (
    b"GET /chat?room=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Upgrade: WebSocket\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)


def request(extra: bytes = b"", base: bytes = GOOD) -> bytes:
    return base + extra + b"\r\n"


def server_accept(raw: bytes, **kwargs: object) -> Response:
    hs = ServerHandshake(**kwargs)  # type: ignore[arg-type]
    req = hs.receive_data(raw)
    assert req is not None
    response, _ = hs.accept(req)
    return response


def test_rfc_example_accept_key() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_server_happy_path_and_pipelined_bytes() -> None:
    hs = ServerHandshake()
    assert hs.receive_data(request()[:30]) is None
    req = hs.receive_data(request()[30:] + b"\x81\x80abcd")
    assert req is not None and req.path == "/chat?room=1" and req.headers["host"] == "example.com"
    assert hs.trailing_data == b"\x81\x80abcd"
    response, negotiated = hs.accept(req)
    raw = serialize_response(response)
    assert raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in raw
    assert negotiated.subprotocol is None and negotiated.deflate is None


def status_of(raw: bytes, **kwargs: object) -> int:
    with pytest.raises(InvalidHandshake) as info:
        server_accept(raw, **kwargs)
    return info.value.status


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request(base=GOOD.replace(b"GET", b"POST")), 405),
        (request(base=GOOD.replace(b"HTTP/1.1", b"HTTP/1.0")), 505),
        (request(base=GOOD.replace(b"Upgrade: WebSocket\r\n", b"")), 426),
        (request(base=GOOD.replace(b"keep-alive, Upgrade", b"keep-alive")), 400),
        (request(base=GOOD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8")), 426),
        (request(base=GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"dG9vc2hvcnQ=")), 400),
        (request(base=GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64 at all!!!")), 400),
        (request(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 400),
        (request(b"Content-Length: 3\r\n"), 400),
    ],
)
def test_rejections(raw: bytes, status: int) -> None:
    assert status_of(raw) == status


def test_wrong_version_answer_names_version_13() -> None:
    hs = ServerHandshake()
    req = hs.receive_data(request(base=GOOD.replace(b"Version: 13", b"Version: 7")))
    assert req is not None
    with pytest.raises(InvalidHandshake) as info:
        hs.accept(req)
    raw = serialize_response(hs.reject_exception(info.value))
    assert raw.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"Sec-WebSocket-Version: 13\r\n" in raw and b"Content-Length: " in raw


def test_host_required_by_http11() -> None:
    hs = ServerHandshake()
    with pytest.raises(InvalidHandshake) as info:
        hs.receive_data(request(base=GOOD.replace(b"Host: example.com\r\n", b"")))
    assert info.value.status == 400


def test_header_limits() -> None:
    config = WSConfig(max_header_count=10, max_header_bytes=1024)
    many = b"".join(b"X-%d: y\r\n" % i for i in range(10))
    with pytest.raises(InvalidHandshake) as info:
        ServerHandshake(config).receive_data(request(many))
    assert info.value.status == 431
    with pytest.raises(InvalidHandshake) as info:
        ServerHandshake(config).receive_data(GOOD + b"X-Big: " + b"a" * 2000)
    assert info.value.status == 431


def test_origin_check() -> None:
    assert status_of(request(b"Origin: https://evil.example\r\n"), origins=["https://good.example"]) == 403
    assert server_accept(request(b"Origin: https://good.example\r\n"), origins=["https://good.example"])
    assert server_accept(request(), origins=[None])
    assert status_of(request(), origins=["https://good.example"]) == 403


def test_subprotocol_server_preference_order() -> None:
    raw = request(b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v3\r\n")
    hs = ServerHandshake(subprotocols=["v3", "superchat"])
    req = hs.receive_data(raw)
    assert req is not None
    response, negotiated = hs.accept(req)
    assert negotiated.subprotocol == "v3" and response.headers["Sec-WebSocket-Protocol"] == "v3"
    hs = ServerHandshake(select_subprotocol=lambda r, offered: offered[0])
    req = hs.receive_data(raw)
    assert req is not None and hs.accept(req)[1].subprotocol == "chat"
    hs = ServerHandshake(subprotocols=["other"])
    req = hs.receive_data(raw)
    assert req is not None and hs.accept(req)[1].subprotocol is None


def test_deflate_negotiated_only_when_enabled() -> None:
    raw = request(b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
    hs = ServerHandshake()
    req = hs.receive_data(raw)
    assert req is not None
    response, negotiated = hs.accept(req)
    assert negotiated.deflate is not None and response.headers["Sec-WebSocket-Extensions"] == "permessage-deflate"
    hs = ServerHandshake(WSConfig(compression=None))
    req = hs.receive_data(raw)
    assert req is not None
    response, negotiated = hs.accept(req)
    assert negotiated.deflate is None and "Sec-WebSocket-Extensions" not in response.headers


def test_reject_builds_plain_http() -> None:
    hs = ServerHandshake()
    raw = serialize_response(hs.reject(404, "no such path", [("X-Test", "1")]))
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert raw.endswith(b"\r\n\r\nno such path") and b"Content-Length: 12\r\n" in raw
    with pytest.raises(ValueError):
        serialize_response(hs.reject(200, "", [("X-Evil", "a\r\nInjected: 1")]))


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_garbage_requests_raise_invalid_handshake_or_wait(data: bytes) -> None:
    hs = ServerHandshake(WSConfig(max_header_bytes=512))
    try:
        req = hs.receive_data(data)
        if req is not None:
            hs.accept(req)
    except InvalidHandshake as exc:
        assert 400 <= exc.status < 600
        serialize_response(hs.reject_exception(exc))


@given(
    st.lists(
        st.sampled_from(
            [
                b"GET",
                b" ",
                b"/",
                b"HTTP/1.1",
                b"\r\n",
                b"Host: a",
                b"Upgrade: websocket",
                b"Connection: upgrade",
                b"Sec-WebSocket-Version: 13",
                b":",
                b"\x00",
                b"\xff",
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ]
        ),
        max_size=30,
    )
)
@settings(max_examples=300)
def test_structured_garbage_never_crashes(parts: list[bytes]) -> None:
    test_garbage_requests_raise_invalid_handshake_or_wait.hypothesis.inner_test(b"".join(parts))  # type: ignore[attr-defined]


def client_for(uri: str = "ws://example.com:8080/path?q=1", **kwargs: object) -> ClientHandshake:
    return ClientHandshake(parse_uri(uri), **kwargs)  # type: ignore[arg-type]


def test_client_server_round_trip_with_everything() -> None:
    client = client_for(
        subprotocols=["a", "b"], config=WSConfig(compression=DeflateConfig(client_no_context_takeover=True))
    )
    raw = client.data_to_send()
    assert b"Host: example.com:8080\r\n" in raw and raw.startswith(b"GET /path?q=1 HTTP/1.1\r\n")
    hs = ServerHandshake(subprotocols=["b"])
    req = hs.receive_data(raw)
    assert req is not None
    response, server_neg = hs.accept(req)
    resp = client.receive_data(serialize_response(response) + b"\x81\x00")
    assert resp is not None and client.trailing_data == b"\x81\x00"
    negotiated = client.accept(resp)
    assert negotiated.subprotocol == "b" == server_neg.subprotocol
    assert negotiated.deflate is not None and negotiated.deflate.local_no_context_takeover


def test_client_rejects_bad_responses() -> None:
    client = client_for()
    client.data_to_send()
    resp = client.receive_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
    assert resp is not None
    with pytest.raises(InvalidStatus) as info:
        client.accept(resp)
    assert info.value.status == 404 and info.value.body == b"nope"

    client = client_for()
    client.data_to_send()
    bad = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: x\r\n\r\n"
    )
    resp = client.receive_data(bad)
    assert resp is not None
    with pytest.raises(InvalidHandshake, match="Accept"):
        client.accept(resp)


def test_client_rejects_unoffered_subprotocol() -> None:
    client = client_for(subprotocols=["a"])
    hs = ServerHandshake(select_subprotocol=lambda r, o: "a")
    req = hs.receive_data(client.data_to_send())
    assert req is not None
    response, _ = hs.accept(req)
    response.headers = Headers([(k, "zzz" if k == "Sec-WebSocket-Protocol" else v) for k, v in response.headers])
    resp = client.receive_data(serialize_response(response))
    assert resp is not None
    with pytest.raises(NegotiationError):
        client.accept(resp)


def test_parse_uri() -> None:
    assert parse_uri("wss://h/").port == 443 and parse_uri("wss://h/").secure
    assert parse_uri("ws://[::1]:9000").host_header == "[::1]:9000"
    assert parse_uri("ws://u:p@h/x?y").user_info == ("u", "p")
    for bad in ["http://h/", "ws:///nohost", "ws://h/#frag", "ws://h:99999/"]:
        with pytest.raises(InvalidURI):
            parse_uri(bad)


# -- head size limits (max_header_bytes), however the head arrives ----------------------------------------------


def head_of_size(size: int, base: bytes = GOOD) -> bytes:
    """A valid upgrade request whose head (request line through the empty line) is exactly ``size`` bytes."""
    head = request(b"X-Pad: \r\n", base)
    assert size >= len(head)
    return request(b"X-Pad: " + b"p" * (size - len(head)) + b"\r\n", base)


def feed_server(hs: ServerHandshake, data: bytes, cuts: list[int]) -> object:
    """Feed ``data`` cut at ``cuts``; the Request, None, or the InvalidHandshake raised."""
    bounds = sorted({0, *cuts, len(data)})  # no empty piece: b"" would tell h11 the peer closed
    result: object = None
    try:
        for a, b in itertools.pairwise(bounds):
            result = hs.receive_data(data[a:b])
    except InvalidHandshake as exc:
        return exc
    return result


@pytest.mark.parametrize("trailing", [b"", b"\x81\x80abcd" * 300], ids=["alone", "with-frames"])
@pytest.mark.parametrize("delta", [-1, 0, 1, 100, 48 * 1024, 84 * 1024])
def test_request_head_limit_when_the_head_arrives_whole(delta: int, trailing: bytes) -> None:
    limit = WSConfig().max_header_bytes
    raw = head_of_size(limit + delta)
    assert len(raw) == limit + delta
    hs = ServerHandshake()
    result = feed_server(hs, raw + trailing, [])
    if delta <= 0:
        assert not isinstance(result, InvalidHandshake), result
        assert result is not None and hs.trailing_data == trailing
        response, _ = hs.accept(result)  # type: ignore[arg-type]
        assert response.status == 101
    else:
        assert isinstance(result, InvalidHandshake) and result.status == 431, result
        assert str(limit) in result.reason and "max_header_bytes" in result.reason
        raw_response = serialize_response(hs.reject_exception(result))
        assert raw_response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


@given(
    size=st.integers(min_value=900, max_value=1200) | st.integers(min_value=1200, max_value=4000),
    cuts=st.lists(st.integers(min_value=0, max_value=4100), max_size=8),
    trailing=st.sampled_from([b"", b"\x81\x80abcd", b"x" * 700]),
)
@settings(max_examples=400, deadline=None)
def test_request_head_limit_however_the_head_is_split(size: int, cuts: list[int], trailing: bytes) -> None:
    limit = 1024
    raw = head_of_size(size) + trailing
    hs = ServerHandshake(WSConfig(max_header_bytes=limit))
    result = feed_server(hs, raw, [c for c in cuts if c < len(raw)])
    if size <= limit:
        assert not isinstance(result, InvalidHandshake), result
        assert result is not None and hs.trailing_data == trailing
    else:
        assert isinstance(result, InvalidHandshake) and result.status == 431, result


@given(cuts=st.lists(st.integers(min_value=0, max_value=1100), max_size=6),
       extra=st.integers(min_value=-2, max_value=60))
@settings(max_examples=200, deadline=None)
def test_request_line_over_the_limit_gets_414(cuts: list[int], extra: int) -> None:
    """The request line with its CRLF over the limit: 414, seen whole or not; at the limit it is the head's 431."""
    limit = 1024
    prefix, suffix = b"GET /", b" HTTP/1.1\r\n"
    line = prefix + b"a" * (limit + extra - len(prefix) - len(suffix)) + suffix
    assert len(line) == limit + extra
    raw = line + GOOD.split(b"\r\n", 1)[1] + b"\r\n"
    hs = ServerHandshake(WSConfig(max_header_bytes=limit))
    result = feed_server(hs, raw, [c for c in cuts if c < len(raw)])
    assert isinstance(result, InvalidHandshake), result
    assert result.status == (414 if extra > 0 else 431), result
    if extra > 0:
        assert "request line" in result.reason and "max_header_bytes" in result.reason


def test_request_line_never_ended_gets_414() -> None:
    hs = ServerHandshake(WSConfig(max_header_bytes=1024))
    assert hs.receive_data(b"GET /" + b"a" * 1000) is None
    with pytest.raises(InvalidHandshake) as info:
        hs.receive_data(b"a" * 100)
    assert info.value.status == 414


def response_head_of_size(client: ClientHandshake, size: int) -> bytes:
    hs = ServerHandshake()
    req = hs.receive_data(client.data_to_send())
    assert req is not None
    response, _ = hs.accept(req)
    head = serialize_response(response)
    pad = b"X-Pad: " + b"p" * (size - len(head) - len(b"X-Pad: \r\n")) + b"\r\n"
    raw = head[:-2] + pad + b"\r\n"
    assert len(raw) == size
    return raw


@given(
    size=st.integers(min_value=900, max_value=1200) | st.integers(min_value=1200, max_value=4000),
    cuts=st.lists(st.integers(min_value=0, max_value=4100), max_size=6),
    informational=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_client_response_head_limit(size: int, cuts: list[int], informational: bool) -> None:
    """The same limit on the server's answer, whole or split, also after a 1xx head that counts separately."""
    limit = 1024
    client = client_for(config=WSConfig(max_header_bytes=limit))
    early = b"HTTP/1.1 100 Continue\r\nX-A: " + b"b" * 900 + b"\r\n\r\n" if informational else b""
    raw = early + response_head_of_size(client, size) + b"\x81\x00"
    bounds = sorted({0, *(c for c in cuts if c < len(raw)), len(raw)})
    result: object = None
    try:
        for a, b in itertools.pairwise(bounds):
            result = client.receive_data(raw[a:b])
            if result is not None:
                break
    except InvalidHandshake as exc:
        result = exc
    if size <= limit:
        assert isinstance(result, Response) and result.status == 101, result
        client.accept(result)
    else:
        assert isinstance(result, InvalidHandshake), result
        assert "response head too large" in result.reason and str(limit) in result.reason
