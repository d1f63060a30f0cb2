"""The connection state machine, driven with bytes: messages, fragments, control frames, closing, failures."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringws.ws.exceptions import InvalidState
from uringws.ws.frames import parse_frame, serialize_frame
from uringws.ws.protocol import Close, Fragment, Message, Ping, Pong, Protocol, Side, State


def cframe(opcode: int, payload: bytes = b"", fin: bool = True, rsv1: bool = False) -> bytes:
    """A frame as a client sends it (masked)."""
    return serialize_frame(opcode, payload, fin, rsv1, os.urandom(4))


def sent_frames(proto: Protocol, masked: bool = False) -> list[tuple[int, bytes, bool]]:
    data = b"".join(proto.data_to_send())
    frames, pos = [], 0
    while pos < len(data):
        parsed = parse_frame(data, pos, masked=masked, allow_rsv1=True)
        assert parsed is not None
        frame, pos = parsed
        frames.append((frame.opcode, frame.payload, frame.fin))
    return frames


def close_code_sent(proto: Protocol) -> int:
    frames = [f for f in sent_frames(proto) if f[0] == 0x8]
    assert len(frames) == 1, frames
    return struct.unpack("!H", frames[0][1][:2])[0]


def server() -> Protocol:
    return Protocol(Side.SERVER, max_size=1 << 16)


def test_messages_and_byte_by_byte_delivery() -> None:
    s = server()
    wire = cframe(0x1, "héllo".encode()) + cframe(0x2, b"\x00\x01") + cframe(0x2, b"x" * 70000, True)
    for i in range(len(wire) - 70006):  # everything but the big frame, one byte at a time
        s.receive_data(wire[i : i + 1])
    assert s.events_received() == [Message("héllo"), Message(b"\x00\x01")]
    s.receive_data(wire[len(wire) - 70006 :])
    assert s.failure is not None and s.failure.code == 1009  # 70000 > max_size 65536


def test_message_of_exactly_max_size_is_accepted() -> None:
    """The limit is inclusive, for a whole frame and for a fragmented message's total; one byte more fails."""
    s = Protocol(Side.SERVER, max_size=100)
    s.receive_data(cframe(0x2, b"a" * 100) + cframe(0x1, b"b" * 60, fin=False) + cframe(0x0, b"c" * 40))
    assert s.failure is None
    assert s.events_received() == [Message(b"a" * 100), Message("b" * 60 + "c" * 40)]
    s.receive_data(cframe(0x1, b"d" * 60, fin=False) + cframe(0x0, b"e" * 41))
    assert s.failure is not None and s.failure.code == 1009


def test_fragmented_message_with_interleaved_control_frames() -> None:
    s = server()
    wire = (
        cframe(0x1, b"fra", fin=False)
        + cframe(0x9, b"ping!")
        + cframe(0x0, b"g\xc3", fin=False)  # a 2-byte character split across frames
        + cframe(0xA, b"pong")
        + cframe(0x0, b"\xa9ment", fin=True)
    )
    s.receive_data(wire)
    assert s.events_received() == [Ping(b"ping!"), Pong(b"pong"), Message("fragément")]
    assert sent_frames(s) == [(0xA, b"ping!", True)]  # automatic pong


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.integers(min_value=1, max_value=50))
@settings(max_examples=60)
def test_fragments_any_chunking(fragments: list[bytes], chunk: int) -> None:
    c = Protocol(Side.CLIENT, max_size=None)
    s = Protocol(Side.SERVER, max_size=None)
    c.send_fragments(fragments)
    wire = b"".join(c.data_to_send())
    for i in range(0, len(wire), chunk):
        s.receive_data(wire[i : i + chunk])
    assert s.events_received() == [Message(b"".join(fragments))]


def test_stream_fragments_mode() -> None:
    s = Protocol(Side.SERVER, stream_fragments=True)
    s.receive_data(cframe(0x1, b"ab", fin=False) + cframe(0x0, b"cd", fin=True) + cframe(0x2, b"z"))
    assert s.events_received() == [Fragment("ab", False, True), Fragment("cd", True, True), Fragment(b"z", True, False)]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (serialize_frame(0x1, b"unmasked"), 1002),
        (cframe(0x3), 1002),
        (cframe(0xB), 1002),
        (cframe(0x1, b"x", rsv1=True), 1002),
        (cframe(0x0, b"orphan continuation"), 1002),
        (cframe(0x1, b"a", fin=False) + cframe(0x1, b"b"), 1002),
        (cframe(0x1, b"a", fin=False) + cframe(0x2, b"b"), 1002),
        (bytes([0x09 | 0x80 & 0, 0x80]) + os.urandom(4), 1002),  # fragmented ping
        (bytes([0x89, 0x80 | 126, 0, 126]) + os.urandom(4) + b"x" * 126, 1002),
        (cframe(0x8, b"\x03"), 1002),  # close payload of 1 byte
        (cframe(0x8, struct.pack("!H", 1005)), 1002),
        (cframe(0x8, struct.pack("!H", 999)), 1002),
        (cframe(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
        (cframe(0x1, b"\xce\xba\xed\xa0\x80"), 1007),
        (cframe(0x1, b"ok", fin=False) + cframe(0x0, b"\xf4\x90\x80\x80"), 1007),
        (cframe(0x1, b"\xc3", fin=True), 1007),  # truncated character at the end of the message
        (cframe(0x2, b"x" * 70000), 1009),
        (cframe(0x2, b"x" * 40000, fin=False) + cframe(0x0, b"x" * 30000), 1009),
    ],
)
def test_invalid_input_fails_with_code(wire: bytes, code: int) -> None:
    s = server()
    s.receive_data(wire)
    assert s.failure is not None and s.failure.code == code
    assert close_code_sent(s) == code
    assert s.close_expected
    assert s.state is State.CLOSING
    # Further input is ignored, nothing more is sent.
    s.receive_data(cframe(0x1, b"late"))
    assert not any(isinstance(e, Message) and e.data == "late" for e in s.events_received())
    assert s.data_to_send() == []


def test_masked_frame_from_server_rejected_by_client() -> None:
    c = Protocol(Side.CLIENT)
    c.receive_data(cframe(0x1, b"masked"))
    assert c.failure is not None and c.failure.code == 1002 and c.close_expected


def test_invalid_utf8_fails_fast_inside_an_incomplete_frame() -> None:
    s = server()
    mask = os.urandom(4)
    wire = serialize_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited" * 100, mask=mask)
    s.receive_data(wire[:20])  # 8 header bytes + the valid part + b"\xf4", which may still be valid
    assert s.failure is None
    s.receive_data(wire[20:22])  # b"\x90\x80": now impossible, though the frame is far from complete
    assert s.failure is not None and s.failure.code == 1007


def test_valid_text_split_mid_frame_and_mid_character() -> None:
    s = server()
    text = "κόσμε" * 300
    wire = cframe(0x1, text[:100].encode(), fin=False) + cframe(0x0, text[100:].encode())
    for i in range(0, len(wire), 7):
        s.receive_data(wire[i : i + 7])
    assert s.events_received() == [Message(text)]
    assert s.failure is None


def test_close_handshake_initiated_by_client() -> None:
    s = server()
    s.receive_data(cframe(0x8, struct.pack("!H", 1001) + b"going"))
    assert s.events_received() == [Close(1001, "going")]
    assert close_code_sent(s) == 1001  # echoed
    assert s.close_expected  # the server closes TCP first
    assert (s.close_code, s.close_reason) == (1001, "going")
    with pytest.raises(InvalidState):
        s.send_text("too late")
    s.receive_eof()
    assert s.state is State.CLOSED


def test_empty_close_is_echoed_empty() -> None:
    s = server()
    s.receive_data(cframe(0x8))
    assert s.events_received() == [Close(1005, "")]
    assert sent_frames(s) == [(0x8, b"", True)]


def test_close_handshake_initiated_by_server() -> None:
    s = server()
    s.send_close(4000, "bye")
    assert close_code_sent(s) == 4000 and not s.close_expected
    s.receive_data(cframe(0x1, b"data still arriving"))  # allowed until the peer's close arrives
    assert s.events_received() == [Message("data still arriving")]
    s.receive_data(cframe(0x8, struct.pack("!H", 4000)))
    assert s.close_expected and s.data_to_send() == []  # no second close frame
    assert s.closing_handshake_done


def test_client_waits_for_server_to_close_tcp() -> None:
    c = Protocol(Side.CLIENT)
    c.send_close()
    c.data_to_send()
    c.receive_data(serialize_frame(0x8, struct.pack("!H", 1000)))
    assert c.closing_handshake_done and not c.close_expected


def test_send_side_fragmentation_rules() -> None:
    s = server()
    s.send_binary(b"a", fin=False)
    with pytest.raises(InvalidState):
        s.send_text("interleaved data message")
    s.send_ping(b"in between is fine")
    s.send_continuation(b"b", fin=True)
    with pytest.raises(InvalidState):
        s.send_continuation(b"c", fin=True)
    assert sent_frames(s) == [(0x2, b"a", False), (0x9, b"in between is fine", True), (0x0, b"b", True)]
    with pytest.raises(ValueError):
        s.send_ping(b"x" * 126)
    with pytest.raises(ValueError):
        s.send_close(1006)


def test_client_frames_are_masked_server_frames_are_not() -> None:
    c = Protocol(Side.CLIENT)
    c.send_text("hi")
    assert c.data_to_send()[0][1] & 0x80
    s = server()
    s.send_text("hi")
    assert s.data_to_send() == [b"\x81\x02hi"]


def test_large_frames_are_not_copied_into_header() -> None:
    s = Protocol(Side.SERVER, max_size=None)
    payload = b"z" * 100_000
    s.send_binary(payload)
    out = s.data_to_send()
    assert len(out) == 2 and out[1] == payload


def test_eof_without_close_is_1006() -> None:
    s = server()
    s.receive_data(cframe(0x1, b"partial", fin=False))
    s.receive_eof()
    assert s.close_code == 1006 and s.state is State.CLOSED


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_garbage_never_raises(data: bytes) -> None:
    for side in (Side.SERVER, Side.CLIENT):
        p = Protocol(side, max_size=1000)
        p.receive_data(data)
        p.events_received()
        p.data_to_send()


def test_deferred_failure_delivers_earlier_messages_first() -> None:
    s = Protocol(Side.SERVER, defer_failure=True)
    s.receive_data(cframe(0x1, b"first") + cframe(0x3) + cframe(0x1, b"never"))
    assert s.events_received() == [Message("first")]
    assert s.pending_failure is not None and not s.close_expected
    s.send_text("echo of first")  # the application may still answer
    s.receive_data(cframe(0x1, b"ignored"))
    assert s.events_received() == []
    s.fail_pending()
    assert [f[0] for f in sent_frames(s)] == [0x1, 0x8]
    assert s.failure is not None and s.failure.code == 1002 and s.close_expected


def test_deferred_failure_without_messages_fails_at_once() -> None:
    s = Protocol(Side.SERVER, defer_failure=True)
    s.receive_data(cframe(0x3))
    assert s.pending_failure is None and s.close_expected


@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 5), st.integers(1, 64))
@settings(max_examples=60, deadline=None)
def test_frame_budget_stops_at_a_frame_boundary_and_resumes_in_order(kinds: list[int], budget: int,
                                                                      chunk: int) -> None:
    """frame_budget counts frames of the general path (control frames, fragments; here pings and a fragmented
    message among small messages): at 0 parsing stops, the rest is kept (after what arrives later) and
    ``input_pending`` says so; refilled, receive_data(b"") goes on. Nothing is lost, reordered or answered twice."""
    wire = b""
    expected: list[object] = []
    for i, kind in enumerate(kinds):
        if kind <= 1:
            wire += cframe(0x9, b"%d" % i)
            expected.append(("pong", b"%d" % i))
        elif kind == 2:
            wire += cframe(0x1, b"part", fin=False) + cframe(0x0, b"-%d" % i)
            expected.append(("msg", f"part-{i}"))
        else:
            wire += cframe(0x2, b"m%d" % i)
            expected.append(("msg", b"m%d" % i))
    p = server()
    got: list[object] = []

    def collect() -> None:
        for event in p.events_received():
            if isinstance(event, Message):
                got.append(("msg", event.data))
        got.extend(("pong", payload) for opcode, payload, _ in sent_frames(p) if opcode == 0xA)

    p.frame_budget = budget
    for start in range(0, len(wire), chunk):
        p.receive_data(wire[start:start + chunk])  # delivered even while the budget is spent: kept in order
        collect()
        assert p.frame_budget >= 0
    rounds = 0
    while p.input_pending:
        rounds += 1
        assert rounds <= len(kinds) * 2
        p.frame_budget = budget
        assert p.receive_data(b"") or not p.input_pending
        collect()
    # Pongs may come before messages parsed in the same call; each kind keeps its own order.
    assert [g for g in got if g[0] == "pong"] == [e for e in expected if e[0] == "pong"]
    assert [g for g in got if g[0] == "msg"] == [e for e in expected if e[0] == "msg"]
    assert p.state is State.OPEN


def test_frame_budget_limits_pings_answered_per_call() -> None:
    p = server()
    p.frame_budget = 3
    assert p.receive_data(b"".join(cframe(0x9, b"%d" % i) for i in range(10)))
    assert [payload for opcode, payload, _ in sent_frames(p)] == [b"0", b"1", b"2"]
    assert p.input_pending and p.frame_budget == 0
    assert not p.receive_data(b"") or p.input_pending  # nothing parsed without a refill
    assert sent_frames(p) == []
    p.frame_budget = 100
    assert p.receive_data(b"")
    assert [payload for opcode, payload, _ in sent_frames(p)] == [b"%d" % i for i in range(3, 10)]
    assert not p.input_pending and p.frame_budget == 93
