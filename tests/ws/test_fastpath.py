"""The per-message shortcuts of the core: ``message_sink``, ``receive_data``'s answer, ``frame_message``.

Each shortcut must give exactly what the general path gives: the same messages in the same order, the same
bytes on the wire, the same failures.
"""

from __future__ import annotations

import collections
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringws.ws.deflate import DeflateParams, PerMessageDeflate
from uringws.ws.frames import apply_mask_py, parse_frame, parse_messages_py, serialize_frame, serialize_header
from uringws.ws.protocol import Message, Ping, Protocol, Side, State

_speedups: ModuleType | None
try:
    from uringws.ws import _speedups
except ImportError:  # built without a compiler: only the pure twin is tested
    _speedups = None
needs_c = pytest.mark.skipif(
    _speedups is None or not hasattr(_speedups, "parse_messages"), reason="compiled parse_messages not built"
)


def cframe(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A frame as a client sends it (masked)."""
    return serialize_frame(opcode, payload, fin, False, os.urandom(4))


def sink_server(**kwargs: object) -> tuple[Protocol, collections.deque[str | bytes]]:
    sink: collections.deque[str | bytes] = collections.deque()
    return Protocol(Side.SERVER, message_sink=sink.append, **kwargs), sink  # type: ignore[arg-type]


# -- message_sink and receive_data's answer --------------------------------------------------------------------


def test_sink_gets_messages_and_receive_data_says_when_nothing_else_happened() -> None:
    s, sink = sink_server()
    assert s.receive_data(cframe(0x2, b"a") + cframe(0x1, "é".encode())) is False
    assert list(sink) == [b"a", "é"]
    assert s.events_received() == [] and s.data_to_send() == []


def test_receive_data_answers_true_for_a_ping_and_keeps_messages_in_order() -> None:
    s, sink = sink_server()
    assert s.receive_data(cframe(0x2, b"1") + cframe(0x9, b"p") + cframe(0x2, b"2")) is True
    assert list(sink) == [b"1", b"2"]
    assert s.events_received() == [Ping(b"p")]
    out = b"".join(s.data_to_send())
    assert out == serialize_frame(0xA, b"p")


def test_receive_data_answers_true_for_a_close_and_a_failure() -> None:
    s, _ = sink_server()
    assert s.receive_data(cframe(0x8, b"\x03\xe8")) is True
    assert s.close_expected
    f, _ = sink_server()
    assert f.receive_data(b"\x83\x80" + os.urandom(4)) is True  # reserved opcode
    assert f.failure is not None and f.failure.code == 1002 and f.close_expected


def test_incomplete_frame_is_kept_and_answer_is_false() -> None:
    s, sink = sink_server()
    wire = cframe(0x2, b"x" * 300)
    assert s.receive_data(wire[:5]) is False
    assert not sink
    assert s.receive_data(wire[5:]) is False
    assert list(sink) == [b"x" * 300]


def test_without_sink_messages_are_events_as_before() -> None:
    s = Protocol(Side.SERVER)
    assert s.receive_data(cframe(0x2, b"a")) is True  # a Message event is waiting
    assert s.events_received() == [Message(b"a")]


def test_deferred_failure_counts_messages_given_to_the_sink() -> None:
    s, sink = sink_server(defer_failure=True)
    assert s.receive_data(cframe(0x2, b"before") + b"\x83\x80" + os.urandom(4)) is True
    assert list(sink) == [b"before"]
    assert s.pending_failure is not None and s.failure is None  # the application answers first
    s.fail_pending()
    assert s.failure is not None and s.failure.code == 1002


def test_deferred_failure_without_messages_fails_at_once() -> None:
    s, sink = sink_server(defer_failure=True)
    assert s.receive_data(b"\x83\x80" + os.urandom(4)) is True
    assert not sink and s.pending_failure is None and s.failure is not None


def test_invalid_utf8_in_a_small_text_frame_fails_with_1007() -> None:
    s, sink = sink_server()
    assert s.receive_data(cframe(0x1, b"\xff")) is True
    assert not sink and s.failure is not None and s.failure.code == 1007


_payloads = st.one_of(
    st.binary(max_size=300).map(lambda b: (0x2, b)),
    st.text(max_size=100).map(lambda t: (0x1, t.encode("utf-8"))),
    st.sampled_from([(0x2, b"z" * 70000), (0x1, "ü".encode() * 2000)]),
)


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(_payloads, min_size=1, max_size=12),
    fragment=st.lists(st.booleans(), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=2000), max_size=40),
)
def test_sink_and_events_agree_on_any_split(
    messages: list[tuple[int, bytes]], fragment: list[bool], cuts: list[int]
) -> None:
    """The same stream, cut anywhere, gives the same messages with and without a sink."""
    wire = b""
    for (opcode, payload), split in zip(messages, fragment, strict=False):
        if split and len(payload) > 1:
            half = len(payload) // 2
            wire += cframe(opcode, payload[:half], fin=False) + cframe(0x0, payload[half:])
        else:
            wire += cframe(opcode, payload)
    plain = Protocol(Side.SERVER, max_size=None)
    sinked, sink = sink_server(max_size=None)
    pos = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[pos : pos + cut]
        pos += len(chunk)
        plain.receive_data(chunk)
        sinked.receive_data(chunk)
    expected = [p.decode("utf-8") if op == 0x1 else p for op, p in messages]
    assert [e.data for e in plain.events_received() if isinstance(e, Message)] == expected
    assert list(sink) == expected
    assert plain.failure is None and sinked.failure is None


# -- frame_message ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 64, 125, 126, 127, 1000, 4095])
def test_frame_message_is_the_frame_send_would_write(size: int) -> None:
    payload = os.urandom(size)
    fast = Protocol(Side.SERVER)
    slow = Protocol(Side.SERVER)
    slow.send_binary(payload)
    assert fast.frame_message(payload) == b"".join(slow.data_to_send())
    text = ("é" * size)[: max(size // 2, 0)]
    slow.send_text(text)
    assert fast.frame_message(text) == b"".join(slow.data_to_send())
    parsed = parse_frame(fast.frame_message(payload) or b"", masked=False)
    assert parsed is not None and parsed[0].payload == payload and parsed[0].opcode == 0x2 and parsed[0].fin


def test_frame_message_declines_what_needs_the_general_path() -> None:
    assert Protocol(Side.CLIENT).frame_message(b"x") is None  # must be masked
    deflate = PerMessageDeflate(DeflateParams(), True)
    assert Protocol(Side.SERVER, deflate=deflate).frame_message(b"x") is None  # must be compressed
    s = Protocol(Side.SERVER)
    assert s.frame_message(b"x" * 4096) is None  # big: header and payload go as two buffers
    assert s.frame_message("x" * 4096) is None
    assert s.frame_message("é" * 3000) is None  # 6000 bytes once encoded
    assert s.frame_message(bytearray(b"x")) is None
    assert s.frame_message(memoryview(b"x")) is None
    s.send_binary(b"a", fin=False)
    s.data_to_send()
    assert s.frame_message(b"x") is None  # fragmented message in progress
    p = Protocol(Side.SERVER)
    p.send_ping(b"p")  # output not taken yet: a shortcut would overtake it
    assert p.frame_message(b"x") is None
    c = Protocol(Side.SERVER)
    c.send_close()
    c.data_to_send()
    assert c.state is State.CLOSING and c.frame_message(b"x") is None


# -- parse_messages: the compiled twin against the pure one ----------------------------------------------------

PARSERS: list[object] = [pytest.param(parse_messages_py, id="pure")]
if _speedups is not None and hasattr(_speedups, "parse_messages"):
    PARSERS.append(pytest.param(_speedups.parse_messages, id="c"))
Parser = Callable[[bytes | bytearray, int, bool, Callable[[str | bytes], object]], int]


def frame(opcode: int, payload: bytes, masked: bool, *, fin: bool = True, rsv: int = 0, wide: bool = False) -> bytes:
    """A frame; ``wide`` forces the 64-bit length encoding (never taken by the shortcut)."""
    b0 = opcode | (0x80 if fin else 0) | rsv
    mbit = 0x80 if masked else 0
    if wide:
        header = struct.pack("!BBQ", b0, mbit | 127, len(payload))
    else:
        header = serialize_header(opcode, len(payload), fin, False, masked)
        header = bytes((b0,)) + header[1:]
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + apply_mask_py(payload, mask)


_taken = st.one_of(
    st.binary(max_size=200).map(lambda p: (0x2, p)),
    st.text(max_size=60).map(lambda t: (0x1, t.encode("utf-8"))),
    st.sampled_from([126, 1000, 65535, 65536]).map(lambda n: (0x2, b"\x5a" * n)),
)
_stopper = st.sampled_from(["ping", "nofin", "rsv1", "rsv2", "wide", "badutf8", "cont", "wrongmask", "reserved"])


def stopper_frame(kind: str, masked: bool) -> bytes:
    return {
        "ping": lambda: frame(0x9, b"p", masked),
        "nofin": lambda: frame(0x2, b"ab", masked, fin=False),
        "rsv1": lambda: frame(0x2, b"ab", masked, rsv=0x40),
        "rsv2": lambda: frame(0x1, b"ab", masked, rsv=0x20),
        "wide": lambda: frame(0x2, b"ab", masked, wide=True),
        "badutf8": lambda: frame(0x1, b"ok\xc3(", masked),
        "cont": lambda: frame(0x0, b"ab", masked),
        "wrongmask": lambda: frame(0x2, b"ab", not masked),
        "reserved": lambda: frame(0x3, b"ab", masked),
    }[kind]()


@pytest.mark.parametrize("parser", PARSERS)
@settings(max_examples=80, deadline=None)
@given(
    messages=st.lists(_taken, max_size=8),
    stopper=st.one_of(st.none(), _stopper),
    masked=st.booleans(),
    prefix=st.binary(max_size=5),
    cut=st.one_of(st.just(0), st.integers(min_value=1, max_value=20)),  # 0: the whole stream
)
def test_parse_messages_takes_exactly_the_run(
    parser: Parser,
    messages: list[tuple[int, bytes]],
    stopper: str | None,
    masked: bool,
    prefix: bytes,
    cut: int,
) -> None:
    """Every whole small message up to the first other frame, nothing after it; an incomplete tail stays."""
    run = [frame(op, p, masked) for op, p in messages]
    tail = b"" if stopper is None else stopper_frame(stopper, masked)
    wire = prefix + b"".join(run) + tail
    truncated = wire[: len(wire) - min(cut, len(wire) - len(prefix))] if cut else wire
    got: list[str | bytes] = []
    end = parser(truncated, len(prefix), masked, got.append)
    # The reference: the complete frames of the run that fit in what was given.
    expected: list[str | bytes] = []
    pos = len(prefix)
    for (op, p), raw in zip(messages, run, strict=True):
        if pos + len(raw) > len(truncated) or len(p) >= 65536:  # incomplete, or a 64-bit length
            break
        expected.append(p.decode("utf-8") if op == 0x1 else p)
        pos += len(raw)
    assert got == expected
    assert end == pos
    assert parser(bytearray(truncated), len(prefix), masked, got.append) == pos  # bytearray too


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("kind", ["ping", "nofin", "rsv1", "rsv2", "wide", "badutf8", "cont", "wrongmask", "reserved"])
def test_parse_messages_stops_at_each_other_kind_of_frame(parser: Parser, masked: bool, kind: str) -> None:
    before = frame(0x2, b"one", masked) + frame(0x1, "twö".encode(), masked)
    wire = before + stopper_frame(kind, masked) + frame(0x2, b"after", masked)
    got: list[str | bytes] = []
    assert parser(wire, 0, masked, got.append) == len(before)
    assert got == [b"one", "twö"]


@pytest.mark.parametrize("parser", PARSERS)
def test_parse_messages_lets_sink_errors_through(parser: Parser) -> None:
    def sink(_: str | bytes) -> None:
        raise RuntimeError("sink")

    with pytest.raises(RuntimeError, match="sink"):
        parser(frame(0x2, b"x", True), 0, True, sink)


@needs_c
def test_parse_messages_rejects_a_bad_position() -> None:
    assert _speedups is not None
    with pytest.raises(ValueError):
        _speedups.parse_messages(b"ab", 3, True, print)
    with pytest.raises(TypeError):
        _speedups.parse_messages("not bytes", 0, True, print)


def test_no_speedups_switch_selects_the_pure_parser() -> None:
    code = "from uringws.ws import frames; print(frames.parse_messages is frames.parse_messages_py)"
    env = {**os.environ, "URINGWS_NO_SPEEDUPS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    if _speedups is not None:
        env["URINGWS_NO_SPEEDUPS"] = ""
        env.pop("URINGWS_PURE", None)  # the suite's second CI run sets it; this subprocess wants the build as is
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"


# -- parse_messages' limit and 64-bit lengths ---------------------------------------------------------------------


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("size", [65536, 70001])
def test_parse_messages_takes_64_bit_lengths_up_to_the_limit(parser: Parser, masked: bool, size: int) -> None:
    wire = frame(0x2, b"\x01" * size, masked) + frame(0x1, b"next", masked)
    for limit, taken in ((size, 2), (size + 1, 2), (size - 1, 0), (65535, 0), (None, 0)):
        got: list[str | bytes] = []
        args = (wire, 0, masked, got.append) if limit is None else (wire, 0, masked, got.append, limit)
        end = parser(*args)  # type: ignore[call-arg]
        assert got == [b"\x01" * size, "next"][:taken], limit
        assert end == (len(wire) if taken else 0)


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("length", [100, 125, 126, 1000])
def test_parse_messages_stops_at_a_frame_longer_than_a_small_limit(parser: Parser, length: int) -> None:
    wire = frame(0x2, b"x" * length, True)
    got: list[str | bytes] = []
    assert parser(wire, 0, True, got.append, length - 1) == 0  # type: ignore[call-arg]
    assert parser(wire, 0, True, got.append, length) == len(wire)  # type: ignore[call-arg]
    assert got == [b"x" * length]


# Length fields a 64-bit header can carry that no buffer holds: the top bit set (a protocol error), past 4 GiB
# (where a 32-bit sum would wrap), and near 2**63 (where a signed 64-bit sum would).
_HUGE = [2**32 - 1, 2**32, 2**32 + 5, 2**62, 2**63 - 1, 2**63, 2**63 + 10, 2**64 - 1]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("length", _HUGE)
@pytest.mark.parametrize("limit", [1 << 20, 2**63 - 1])
def test_parse_messages_never_takes_a_huge_length(parser: Parser, masked: bool, length: int, limit: int) -> None:
    # A real frame first, then the huge header with some payload bytes: the run stops at the huge one.
    first = frame(0x2, b"ok", masked)
    header = struct.pack("!BBQ", 0x82, (0x80 if masked else 0) | 127, length) + (os.urandom(4) if masked else b"")
    wire = first + header + os.urandom(3000)
    got: list[str | bytes] = []
    assert parser(wire, 0, masked, got.append, limit) == len(first)  # type: ignore[call-arg]
    assert got == [b"ok"]


@pytest.mark.parametrize("length", _HUGE)
def test_a_huge_length_fails_the_connection_not_the_parser(length: int) -> None:
    for max_size in (1 << 20, None):
        s, sink = sink_server(max_size=max_size)
        header = struct.pack("!BBQ", 0x82, 0x80 | 127, length) + os.urandom(4)
        s.receive_data(cframe(0x2, b"ok") + header + b"\x00" * 100)
        assert list(sink) == [b"ok"]
        if length >> 63:
            assert s.state is State.CLOSING  # 1002: the top bit must be 0
        elif max_size is not None:
            assert s.state is State.CLOSING  # 1009: above max_size
        else:
            assert s.state is State.OPEN  # waiting for the payload


@pytest.mark.parametrize("parser", PARSERS)
def test_parse_messages_refuses_a_negative_limit(parser: Parser) -> None:
    with pytest.raises(ValueError, match="limit"):
        parser(b"", 0, True, print, -1)  # type: ignore[call-arg]


@needs_c
@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 65537, 100_000]), max_size=5),
    wide=st.lists(st.booleans(), min_size=5, max_size=5),
    limit=st.one_of(st.integers(0, 200_000), st.just(2**63 - 1)),
    masked=st.booleans(),
    cut=st.integers(0, 300_000),
)
def test_compiled_and_pure_parse_messages_agree_on_any_limit(
    sizes: list[int], wide: list[bool], limit: int, masked: bool, cut: int
) -> None:
    assert _speedups is not None
    wire = b"".join(
        frame(0x2, bytes([i]) * n, masked, wide=w)
        for i, (n, w) in enumerate(zip(sizes, wide[: len(sizes)], strict=True))
    )
    wire = wire[: min(cut, len(wire))] if cut else wire
    results = []
    for parser in (parse_messages_py, _speedups.parse_messages):
        got: list[str | bytes] = []
        results.append((parser(wire, 0, masked, got.append, limit), got))
    assert results[0] == results[1]


@pytest.mark.parametrize("max_size", [69_999, 70_000])
def test_a_whole_large_frame_in_one_read_is_bounded_by_max_size(max_size: int) -> None:
    s, sink = sink_server(max_size=max_size)
    s.receive_data(cframe(0x2, b"z" * 70_000) + cframe(0x2, b"after"))
    if max_size >= 70_000:
        assert list(sink) == [b"z" * 70_000, b"after"]
        assert s.state is State.OPEN
    else:
        assert list(sink) == []
        assert s.state is State.CLOSING
