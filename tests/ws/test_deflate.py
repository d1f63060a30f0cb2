"""permessage-deflate: negotiation rules, round trips for every parameter combination, the bomb."""

from __future__ import annotations

import itertools
import os
import time
import tracemalloc
import zlib

import pytest

from uringws.ws.config import DeflateConfig
from uringws.ws.deflate import (
    DeflateParams,
    PerMessageDeflate,
    client_accept,
    client_offer,
    parse_extensions,
    serialize_extensions,
    server_accept,
)
from uringws.ws.exceptions import NegotiationError, PayloadTooBig
from uringws.ws.protocol import Close, Message, Protocol, Side


def accept(header: str, config: DeflateConfig | None = None) -> tuple[str, DeflateParams] | None:
    result = server_accept(parse_extensions([header]), config or DeflateConfig())
    if result is None:
        return None
    extension, params = result
    return serialize_extensions([extension]), params


def test_parse_extensions_syntax() -> None:
    parsed = parse_extensions(['permessage-deflate; client_max_window_bits; server_max_window_bits="10", x-foo', "bar"])
    assert parsed == [
        ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
        ("x-foo", []),
        ("bar", []),
    ]
    for bad in ["permessage-deflate; a b", 'x; y="unterminated', "bad name"]:
        with pytest.raises(NegotiationError):
            parse_extensions([bad])


def test_server_accepts_plain_offer() -> None:
    assert accept("permessage-deflate") == ("permessage-deflate", DeflateParams())


def test_server_accepts_all_parameters() -> None:
    header = (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12"
    )
    response, params = accept(header)  # type: ignore[misc]
    assert params == DeflateParams(True, True, 10, 12)
    assert "server_max_window_bits=10" in response and "client_max_window_bits=12" in response


def test_valueless_client_max_window_bits_uses_server_preference() -> None:
    assert accept("permessage-deflate; client_max_window_bits") == ("permessage-deflate", DeflateParams())
    response, params = accept(  # type: ignore[misc]
        "permessage-deflate; client_max_window_bits", DeflateConfig(client_max_window_bits=9)
    )
    assert params.client_max_window_bits == 9 and "client_max_window_bits=9" in response


def test_server_limits_window_to_its_own_config() -> None:
    _, params = accept(  # type: ignore[misc]
        "permessage-deflate; server_max_window_bits=14", DeflateConfig(server_max_window_bits=11)
    )
    assert params.server_max_window_bits == 11


@pytest.mark.parametrize(
    "bad",
    [
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; unknown_param",
    ],
)
def test_invalid_offers_declined(bad: str) -> None:
    assert accept(bad) is None
    # ... but a later valid offer is still taken.
    result = accept(bad + ", permessage-deflate; client_no_context_takeover")
    assert result is not None and result[1].client_no_context_takeover


def test_first_acceptable_offer_wins() -> None:
    header = "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, permessage-deflate"
    result = accept(header)
    assert result is not None and result[1].server_max_window_bits == 8


def test_client_accept_validation() -> None:
    config = DeflateConfig(server_max_window_bits=10)
    assert client_offer(config) == (
        "permessage-deflate",
        [("server_max_window_bits", "10"), ("client_max_window_bits", None)],
    )
    ok = client_accept(parse_extensions(["permessage-deflate; server_max_window_bits=9"]), config)
    assert ok == DeflateParams(False, False, 9, None)
    for bad in [
        "permessage-deflate",  # server ignored our window limit
        "permessage-deflate; server_max_window_bits=12",
        "permessage-deflate; server_max_window_bits=9; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=9, permessage-deflate",
        "x-other",
    ]:
        with pytest.raises(NegotiationError):
            client_accept(parse_extensions([bad]), config)
    with pytest.raises(NegotiationError):
        client_accept(parse_extensions(["permessage-deflate"]), None)


def pair(params: DeflateParams) -> tuple[Protocol, Protocol]:
    client = Protocol(Side.CLIENT, deflate=PerMessageDeflate(params, False), max_size=None)
    server = Protocol(Side.SERVER, deflate=PerMessageDeflate(params, True), max_size=None)
    return client, server


def pump(src: Protocol, dst: Protocol) -> list[object]:
    for chunk in src.data_to_send():
        dst.receive_data(chunk)
    return list(dst.events_received())


ALL_PARAMS = [
    DeflateParams(snct, cnct, smwb, cmwb)
    for snct, cnct in itertools.product([False, True], repeat=2)
    for smwb, cmwb in [(None, None), (8, 8), (9, 15), (15, 9), (12, None)]
]


@pytest.mark.parametrize("params", ALL_PARAMS, ids=str)
def test_round_trip_each_parameter_combination(params: DeflateParams) -> None:
    client, server = pair(params)
    messages: list[str | bytes] = ["hello " * 50, b"", "", os.urandom(3000), b"abc" * 20000, "é☃" * 1000]
    for message in messages * 2:  # twice: the second round exercises the kept (or reset) context
        if isinstance(message, str):
            client.send_text(message)
            server.send_text(message)
        else:
            client.send_binary(message)
            server.send_binary(message)
        assert pump(client, server) == [Message(message)]
        assert pump(server, client) == [Message(message)]
    client.send_fragments([b"frag1", b"", b"frag3" * 1000])
    assert pump(client, server) == [Message(b"frag1" + b"frag3" * 1000)]


def test_compression_actually_compresses_and_context_takeover_helps() -> None:
    for nct, expect_smaller_second in [(False, True), (True, False)]:
        deflate = PerMessageDeflate(DeflateParams(server_no_context_takeover=nct), True)
        message = b"the same sentence over and over " * 4
        first = deflate.compress(message)
        second = deflate.compress(message)
        assert len(first) < len(message)
        assert (len(second) < len(first)) is expect_smaller_second


def test_window_bits_8_uses_9_and_peer_with_8_bit_window_inflates_it() -> None:
    deflate = PerMessageDeflate(DeflateParams(server_max_window_bits=8), True)
    data = os.urandom(200) * 50  # repeats at distance 200: within an 8-bit window
    compressed = deflate.compress(data)
    strict_peer = zlib.decompressobj(-8)
    assert strict_peer.decompress(compressed + b"\x00\x00\xff\xff") == data


def deflate_bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    parts = [c.compress(chunk) for _ in range(size >> 20)]
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


def test_deflate_bomb_refused_fast_and_small() -> None:
    bomb = deflate_bomb(100 << 20)
    assert len(bomb) < 200_000
    server = Protocol(Side.SERVER, deflate=PerMessageDeflate(DeflateParams(), True), max_size=1 << 20)
    mask = os.urandom(4)
    from uringws.ws.frames import serialize_frame

    wire = serialize_frame(0x2, bomb, True, True, mask)
    tracemalloc.start()
    t0 = time.perf_counter()
    server.receive_data(wire)
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert server.failure is not None and server.failure.code == 1009
    assert server.close_expected
    close_frame = server.data_to_send()[0]
    assert close_frame[0] == 0x88 and close_frame[2:4] == b"\x03\xf1"  # close frame with code 1009
    assert elapsed < 1.0
    assert peak < 8 << 20  # wire copy (~200 KB) + at most max_size of output, never 100 MiB


def test_protocol_bounds_a_compressed_fragmented_message_as_a_whole() -> None:
    """Each fragment inflates within max_size, the message does not: 1009 (the sum of the fragments counts)."""
    from uringws.ws.frames import serialize_frame

    def message(size: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        first = c.compress(bytes(size)) + c.flush(zlib.Z_SYNC_FLUSH)
        last = (c.compress(bytes(size)) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
        mask = os.urandom(4)
        return serialize_frame(0x2, first, False, True, mask) + serialize_frame(0x0, last, True, False, mask)

    server = Protocol(Side.SERVER, deflate=PerMessageDeflate(DeflateParams(), True), max_size=1 << 20)
    server.receive_data(message(500_000))
    assert server.failure is None
    assert server.events_received() == [Message(bytes(1_000_000))]
    server.receive_data(message(600_000))
    assert server.failure is not None and server.failure.code == 1009
    assert server.events_received() == []


def test_bomb_in_fragments_counts_the_whole_message() -> None:
    deflate = PerMessageDeflate(DeflateParams(), True)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(bytes(600_000)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert len(deflate.decompress(piece, False, 1 << 20)) == 600_000
    with pytest.raises(PayloadTooBig):
        deflate.decompress(piece, False, (1 << 20) - 600_000)


def test_uncompressed_message_allowed_on_deflate_connection() -> None:
    client, server = pair(DeflateParams())
    client.deflate = None  # a peer may send messages without RSV1
    client.send_text("plain")
    assert pump(client, server) == [Message("plain")]


def test_corrupt_deflate_data_fails_connection() -> None:
    _, server = pair(DeflateParams())
    from uringws.ws.frames import serialize_frame

    server.receive_data(serialize_frame(0x1, b"\xff\xff\xff\xff", True, True, os.urandom(4)))
    assert server.failure is not None and server.close_expected
    assert not any(isinstance(e, Message) for e in server.events_received())
    assert not isinstance(server.close_rcvd, Close)
