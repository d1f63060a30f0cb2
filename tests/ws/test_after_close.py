"""Nothing after the peer's close frame reaches the application (RFC 6455 §5.5.1: the close frame is the last).

A data frame that follows a close frame, in the same read or a later one, on either side, with or without a
message sink, is dropped; so is a ping (no pong is sent after the close was answered).
"""

from __future__ import annotations

import collections
import os
import struct

import pytest

from uringws.ws.frames import parse_frame, serialize_frame
from uringws.ws.protocol import Close, Message, Protocol, Side


def frame(side: Side, opcode: int, payload: bytes = b"") -> bytes:
    """A frame as the peer of ``side`` sends it (masked towards a server)."""
    return serialize_frame(opcode, payload, True, False, os.urandom(4) if side is Side.SERVER else None)


def close_payload(code: int) -> bytes:
    return struct.pack("!H", code)


def opcodes_sent(proto: Protocol) -> list[int]:
    data = b"".join(proto.data_to_send())
    masked = proto.side is Side.CLIENT
    out, pos = [], 0
    while pos < len(data):
        parsed = parse_frame(data, pos, masked=masked)
        assert parsed is not None
        f, pos = parsed
        out.append(f.opcode)
    return out


def make(side: Side, sink: bool) -> tuple[Protocol, collections.deque[str | bytes]]:
    got: collections.deque[str | bytes] = collections.deque()
    proto = Protocol(side, message_sink=got.append if sink else None)
    return proto, got


def messages(proto: Protocol, got: collections.deque[str | bytes]) -> list[str | bytes]:
    events = proto.events_received()
    return [*got, *(e.data for e in events if isinstance(e, Message))]


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
@pytest.mark.parametrize("sink", [False, True], ids=["events", "sink"])
@pytest.mark.parametrize("after", [0x1, 0x2], ids=["text", "binary"])
def test_data_frame_in_the_same_read_after_close_is_dropped(side: Side, sink: bool, after: int) -> None:
    proto, got = make(side, sink)
    proto.receive_data(
        frame(side, 0x1, b"before") + frame(side, 0x8, close_payload(1000)) + frame(side, after, b"after")
    )
    assert proto.close_rcvd == Close(1000, "")
    assert messages(proto, got) == ["before"]
    assert opcodes_sent(proto) == [0x8]  # the close echo, nothing for what followed


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
@pytest.mark.parametrize("sink", [False, True], ids=["events", "sink"])
def test_frames_in_later_reads_after_close_are_dropped(side: Side, sink: bool) -> None:
    proto, got = make(side, sink)
    proto.receive_data(frame(side, 0x8, close_payload(1001)))
    assert opcodes_sent(proto) == [0x8]
    proto.receive_data(frame(side, 0x2, b"late") + frame(side, 0x9, b"ping"))
    proto.receive_data(frame(side, 0x1, b"later"))
    assert messages(proto, got) == []
    assert opcodes_sent(proto) == []  # no pong either


def test_data_after_the_answer_to_our_own_close_is_dropped() -> None:
    proto, got = make(Side.SERVER, True)
    proto.send_close(1000)
    proto.receive_data(frame(Side.SERVER, 0x1, b"still allowed"))  # the peer had not seen our close yet
    proto.receive_data(frame(Side.SERVER, 0x8, close_payload(1000)) + frame(Side.SERVER, 0x1, b"not allowed"))
    assert list(got) == ["still allowed"]
    assert proto.closing_handshake_done and proto.close_expected


def test_a_large_frame_after_close_is_not_gathered() -> None:
    """A frame big enough for the gathering path, cut across reads, after the close: dropped too."""
    proto, got = make(Side.SERVER, True)
    big = frame(Side.SERVER, 0x2, b"x" * 100_000)
    proto.receive_data(frame(Side.SERVER, 0x8, close_payload(1000)) + big[:30_000])
    proto.receive_data(big[30_000:])
    assert messages(proto, got) == []
