"""Received heads keep their headers packed in one str (Headers._packed_from); every read and change must behave
as on a Headers built from the same list of pairs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uringws.ws.handshake import Headers, ServerHandshake

REQUEST = (
    b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Empty: \r\n"
    b"x-dup: a\r\nX-Dup: b, c\r\n\r\n"
)
PAIRS = [  # h11 gives the names in lower case
    ("host", "example.com:8443"),
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
    ("x-empty", ""),
    ("x-dup", "a"),
    ("x-dup", "b, c"),
]


def received() -> Headers:
    request = ServerHandshake().receive_data(REQUEST)
    assert request is not None
    return request.headers


def test_a_received_request_keeps_its_headers_packed_and_reads_them_as_pairs() -> None:
    headers = received()
    assert headers._items is None  # one str, not a tuple and two str per header
    assert list(headers) == headers.items() == PAIRS
    assert len(headers) == len(PAIRS)
    assert headers["HOST"] == "example.com:8443"  # a value's own colons stay in it
    assert headers.get_all("x-DUP") == ["a", "b, c"]
    assert headers.get("x-empty") == "" and headers.get("Missing") is None
    assert "upgrade" in headers and "Missing" not in headers and 3 not in headers
    assert repr(headers) == repr(Headers(PAIRS))
    with pytest.raises(KeyError):
        headers["Missing"]


def test_changes_to_received_headers_apply_as_to_a_list() -> None:
    headers, expected = received(), Headers(PAIRS)
    for h in (headers, expected):
        h.add("X-New", "1")
        h["X-New"] = "2"
        del h["X-Dup"]
    assert headers.items() == expected.items()
    assert headers.get_all("x-new") == ["1", "2"] and "X-Dup" not in headers
    with pytest.raises(KeyError):
        del headers["X-Dup"]
    assert len(headers) == len(expected)


_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=12)


@given(st.lists(st.tuples(_text, _text), max_size=6))
def test_packed_pairs_read_back_unchanged_whatever_they_contain(pairs: list[tuple[str, str]]) -> None:
    # Names with ":" or "\n", or values with "\n", cannot be packed unambiguously: those stay a list.
    headers = Headers._packed_from(list(pairs))
    assert headers.items() == pairs and list(headers) == pairs and len(headers) == len(pairs)
    for name, _ in pairs:
        assert headers.get_all(name) == Headers(pairs).get_all(name)
