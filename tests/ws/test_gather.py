"""Large frames gathered as they arrive (``FrameBuffer``): the compiled twin against the pure one, and the
receive path that uses them against the general path, on any split, from bytes or from views lent for one call.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringws import _compiled
from uringws.ws import frames, protocol
from uringws.ws.deflate import DeflateParams, PerMessageDeflate
from uringws.ws.exceptions import PayloadTooBig
from uringws.ws.frames import FrameBufferPy, apply_mask_py, serialize_frame
from uringws.ws.protocol import Message, Ping, Protocol, Side

try:
    from uringws.ws import _speedups
except ImportError:  # built without a compiler: only the pure twin is tested
    _speedups = None  # type: ignore[assignment]

IMPLS: list[object] = [pytest.param(FrameBufferPy, id="pure")]
if _speedups is not None and hasattr(_speedups, "FrameBuffer"):
    IMPLS.append(pytest.param(_speedups.FrameBuffer, id="c"))

Factory = Callable[[int, bytes | None], FrameBufferPy]
GATHER_MIN = protocol._GATHER_MIN


def cframe(opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """A frame as a client sends it (masked)."""
    return serialize_frame(opcode, payload, fin, rsv1, os.urandom(4))


# -- FrameBuffer, both twins ------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=80, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    masked=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=30),
    lead=st.integers(min_value=0, max_value=9),
)
def test_gathers_and_unmasks_on_any_split(impl: Factory, data: bytes, masked: bool, cuts: list[int], lead: int) -> None:
    """Chunks of any size (empty ones too), each behind `lead` foreign bytes skipped with `start`, as bytes or
    views: take() gives exactly the unmasked payload, and feed() never takes more than is missing."""
    mask = os.urandom(4) if masked else None
    wire = apply_mask_py(data, mask) if mask is not None else data
    fb = impl(len(data), mask)
    pos = 0
    for i, cut in enumerate([*cuts, len(wire)]):
        chunk = b"\xee" * lead + wire[pos : pos + cut]
        if pos + cut >= len(wire):
            chunk += b"\xff" * 3  # the next frame's bytes: not taken
        taken = fb.feed(memoryview(chunk) if i % 2 else chunk, lead)
        assert taken == min(cut, len(wire) - pos)
        pos += taken
        assert fb.remaining == len(wire) - pos
    out = fb.take()
    assert type(out) is bytes
    assert out == data


@pytest.mark.parametrize("impl", IMPLS)
def test_errors(impl: Factory) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        impl(10, b"abc")
    with pytest.raises(ValueError):
        impl(-1, None)
    fb = impl(10, b"abcd")
    with pytest.raises(ValueError, match="start"):
        fb.feed(b"xyz", 4)
    with pytest.raises(TypeError):
        fb.feed("text")  # type: ignore[arg-type]
    assert fb.feed(b"12345") == 5
    with pytest.raises(ValueError, match="incomplete"):
        fb.take()
    assert fb.feed(b"678901234") == 5
    assert fb.take() == apply_mask_py(b"1234567890", b"abcd")
    with pytest.raises(ValueError):
        fb.take()
    with pytest.raises(ValueError):
        fb.feed(b"more")


@pytest.mark.parametrize("impl", IMPLS)
def test_feed_does_not_keep_the_buffer(impl: Factory) -> None:
    """A bytearray fed to it stays resizable: no export outlives the call (the receive path lends views)."""
    fb = impl(8, None)
    data = bytearray(b"abcd")
    fb.feed(data)
    data += b"efgh"  # BufferError if an export were still held
    fb.feed(memoryview(data), 4)
    assert fb.take() == b"abcdefgh"


def test_protocol_uses_the_selected_twin() -> None:
    assert protocol.FrameBuffer is frames.FrameBuffer
    switched_off = _compiled.PURE or os.environ.get("URINGWS_NO_SPEEDUPS", "") not in ("", "0")
    expected = FrameBufferPy if _speedups is None or switched_off else None
    if expected is not None:
        assert frames.FrameBuffer is expected
    else:
        assert frames.FrameBuffer is _speedups.FrameBuffer


# -- the receive path ---------------------------------------------------------------------------------------------


def feed_lent(p: Protocol, wire: bytes, cuts: list[int]) -> None:
    """Feed `wire` cut at `cuts` as views of one buffer that is overwritten after every call, the way the TLS
    layer lends its plaintext buffer: anything the parser kept instead of copying turns into garbage."""
    scratch = bytearray(max([*cuts, 1]) + len(wire))
    pos = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[pos : pos + cut]
        pos += len(chunk)
        if not chunk:
            continue
        scratch[: len(chunk)] = chunk
        view = memoryview(scratch)[: len(chunk)]
        p.receive_data(view)
        view.release()
        scratch[: len(chunk)] = b"\xa5" * len(chunk)


_messages = st.one_of(
    st.binary(max_size=200).map(lambda b: (0x2, b)),
    st.integers(min_value=GATHER_MIN - 2, max_value=3 * GATHER_MIN).map(lambda n: (0x2, os.urandom(n))),
    st.integers(min_value=GATHER_MIN, max_value=2 * GATHER_MIN).map(lambda n: (0x1, b"\xc3\xbc" * (n // 2))),
    st.just((0x2, os.urandom(70000))),
)


@pytest.mark.parametrize("twin", ["selected", "pure"])
@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(_messages, min_size=1, max_size=6),
    fragment=st.lists(st.booleans(), min_size=6, max_size=6),
    # Small cuts land on header boundaries (a header alone in a read), large ones inside payloads.
    cuts=st.lists(
        st.one_of(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=40000)), max_size=25
    ),
    ping=st.booleans(),
)
def test_large_frames_on_any_split_match_the_whole_stream(
    twin: str, messages: list[tuple[int, bytes]], fragment: list[bool], cuts: list[int], ping: bool
) -> None:
    """Large and small frames, fragmented messages with a ping between the fragments, text and binary, cut
    anywhere and lent as views: the same messages, in order, as the same stream in one piece."""
    with pytest.MonkeyPatch.context() as mp:
        if twin == "pure":
            mp.setattr(protocol, "FrameBuffer", FrameBufferPy)
        check_split(messages, fragment, cuts, ping)


def check_split(messages: list[tuple[int, bytes]], fragment: list[bool], cuts: list[int], ping: bool) -> None:
    wire = b""
    pings = 0
    for (opcode, payload), split in zip(messages, fragment, strict=False):
        if split and len(payload) > 1:
            half = len(payload) // 2
            wire += cframe(opcode, payload[:half], fin=False)
            if ping:
                wire += cframe(0x9, b"p")
                pings += 1
            wire += cframe(0x0, payload[half:])
        else:
            wire += cframe(opcode, payload)
    whole = Protocol(Side.SERVER, max_size=None)
    whole.receive_data(wire)
    split_p = Protocol(Side.SERVER, max_size=None)
    feed_lent(split_p, wire, cuts)
    expected = [p.decode("utf-8") if op == 0x1 else p for op, p in messages]
    for p in (whole, split_p):
        events = p.events_received()
        assert [e.data for e in events if isinstance(e, Message)] == expected
        assert sum(isinstance(e, Ping) for e in events) == pings
        assert p.failure is None
        assert not p._buf and p._gather is None and p._hdr is None


def test_a_large_frame_is_gathered_not_buffered() -> None:
    """Pins the path: while a large binary frame is incomplete, its bytes are in the FrameBuffer, not in _buf;
    a large text frame still takes the general path (its UTF-8 is checked as it arrives)."""
    payload = os.urandom(5 * GATHER_MIN)
    wire = cframe(0x2, payload) + cframe(0x2, b"next")
    p = Protocol(Side.SERVER, max_size=None)
    p.receive_data(wire[:GATHER_MIN])
    assert p._gather is not None and not p._buf
    assert p._gather.remaining == len(payload) - (GATHER_MIN - 14)  # 64-bit length header + mask = 14 bytes
    p.receive_data(memoryview(wire)[GATHER_MIN:])
    assert [e.data for e in p.events_received()] == [payload, b"next"]

    text = cframe(0x1, b"a" * (2 * GATHER_MIN))
    t = Protocol(Side.SERVER, max_size=None)
    t.receive_data(text[:GATHER_MIN])
    assert t._gather is None and t._buf
    t.receive_data(text[GATHER_MIN:] + cframe(0x1, b"\xff" * (2 * GATHER_MIN))[:GATHER_MIN])
    assert t.failure is not None and t.failure.code == 1007  # invalid UTF-8 fails before the frame is complete


def test_gathered_frame_still_bounded_by_max_size() -> None:
    """The header is checked before anything is allocated for the payload."""
    p = Protocol(Side.SERVER, max_size=GATHER_MIN * 2)
    p.receive_data(cframe(0x2, b"x" * (GATHER_MIN * 2 + 1))[:100])
    assert p.failure is not None and isinstance(p.failure, PayloadTooBig) and p._gather is None


def test_gathered_compressed_message_is_inflated() -> None:
    """A compressed large frame is gathered like any other, then inflated whole."""
    params = DeflateParams()
    payload = os.urandom(GATHER_MIN) * 4  # compresses to about GATHER_MIN: still gathered
    sender = PerMessageDeflate(params, is_server=False)
    body = sender.compress(payload, True)
    assert len(body) >= GATHER_MIN
    wire = cframe(0x2, body, rsv1=True)
    p = Protocol(Side.SERVER, max_size=None, deflate=PerMessageDeflate(params, is_server=True))
    feed_lent(p, wire, [GATHER_MIN // 2, GATHER_MIN])
    assert [e.data for e in p.events_received()] == [payload]
    assert p.failure is None


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
@pytest.mark.parametrize("size", [126, 5000, GATHER_MIN, 70000])
def test_text_frame_whose_header_arrives_alone_then_another_message(side: Side, size: int) -> None:
    """A text frame's header in one read, its payload in the next, then another message: found by the split test
    above. The empty first feed started a message that the completed frame never ended, so the next data frame
    failed the connection with 1002 ("new data frame while a fragmented message is in progress")."""
    masked = side is Side.SERVER  # frames from a client are masked

    def frame(opcode: int, payload: bytes) -> bytes:
        return serialize_frame(opcode, payload, True, False, os.urandom(4) if masked else None)

    header = 2 + (2 if size < 65536 else 8) + (4 if masked else 0)
    wire = frame(0x1, b"a" * size) + frame(0x2, b"after")
    p = Protocol(side, max_size=None)
    p.receive_data(wire[:header])
    p.receive_data(wire[header:])
    assert p.failure is None
    assert [e.data for e in p.events_received()] == ["a" * size, b"after"]
