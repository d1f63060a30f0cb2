"""Frame parsing/serialization: round trips, every malformed header, masking and close payloads."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uringws.ws.exceptions import InvalidUTF8, PayloadTooBig, ProtocolError
from uringws.ws.frames import (
    Frame,
    apply_mask,
    is_valid_close_code,
    parse_close,
    parse_frame,
    parse_header,
    parse_messages_py,
    serialize_close,
    serialize_frame,
)


def naive_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=10000), st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_naive(data: bytes, mask: bytes) -> None:
    assert apply_mask(data, mask) == naive_mask(data, mask)


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 4095, 4096, 4097, 70001])
def test_apply_mask_sizes_and_involution(n: int) -> None:
    data, mask = os.urandom(n), os.urandom(4)
    masked = apply_mask(data, mask)
    assert masked == naive_mask(data, mask)
    assert apply_mask(masked, mask) == data


data_opcodes = st.sampled_from([0x0, 0x1, 0x2])
control_opcodes = st.sampled_from([0x8, 0x9, 0xA])


@given(
    st.one_of(
        st.tuples(data_opcodes, st.binary(max_size=70000), st.booleans()),
        st.tuples(control_opcodes, st.binary(max_size=125), st.just(True)),
    ),
    st.booleans(),
    st.integers(min_value=0, max_value=7),
)
def test_round_trip(frame: tuple[int, bytes, bool], masked: bool, split: int) -> None:
    opcode, payload, fin = frame
    mask = os.urandom(4) if masked else None
    wire = serialize_frame(opcode, payload, fin, False, mask)
    # Any proper prefix is incomplete, never an error.
    cut = min(split, len(wire) - 1)
    assert parse_frame(wire[:cut], masked=masked) is None
    parsed = parse_frame(b"xx" + wire + b"tail", 2, masked=masked)
    assert parsed is not None
    assert parsed == (Frame(opcode, payload, fin, False), 2 + len(wire))


@pytest.mark.parametrize(("length", "header_len"), [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_length_encodings_are_minimal(length: int, header_len: int) -> None:
    wire = serialize_frame(0x2, b"\0" * length)
    assert len(wire) == header_len + length


def test_non_minimal_length_accepted() -> None:
    # Length 5 encoded in the 64-bit form is legal on input.
    wire = bytes([0x82, 127]) + struct.pack("!Q", 5) + b"hello"
    assert parse_frame(wire, masked=False) == (Frame(2, b"hello"), len(wire))


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (bytes([0x83, 0]), "reserved opcode"),
        (bytes([0x87, 0]), "reserved opcode"),
        (bytes([0x8B, 0]), "reserved opcode"),
        (bytes([0x8F, 0]), "reserved opcode"),
        (bytes([0xA1, 0]), "RSV2/RSV3"),
        (bytes([0x91, 0]), "RSV2/RSV3"),
        (bytes([0xC1, 0]), "RSV1"),
        (bytes([0x09, 0]), "fragmented control"),
        (bytes([0x89, 126, 0, 126]), "longer than 125"),
        (bytes([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]), "most significant bit"),
        (bytes([0x82, 0x80, 1, 2, 3, 4]), "must not be masked"),
    ],
)
def test_invalid_headers_client_side(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        parse_header(wire, masked=False)
    assert info.value.code == 1002


def test_unmasked_frame_rejected_by_server() -> None:
    with pytest.raises(ProtocolError, match="must be masked") as info:
        parse_header(bytes([0x81, 0x00]), masked=True)
    assert info.value.code == 1002


def test_rsv1_allowed_with_deflate_but_not_on_control() -> None:
    hdr = parse_header(bytes([0xC1, 0x00]), masked=False, allow_rsv1=True)
    assert hdr is not None and hdr.rsv1
    with pytest.raises(ProtocolError, match="control"):
        parse_header(bytes([0xC9, 0x00]), masked=False, allow_rsv1=True)


def test_max_length_refused_before_payload() -> None:
    wire = bytes([0x82, 127]) + struct.pack("!Q", 1 << 40)
    with pytest.raises(PayloadTooBig) as info:
        parse_header(wire, masked=False, max_length=1 << 20)
    assert info.value.code == 1009
    # Control frames are bounded by 125 bytes, not by the message budget.
    assert parse_header(bytes([0x89, 100]), masked=False, max_length=10) is not None


def test_frame_of_exactly_max_length_accepted() -> None:
    hdr = parse_header(bytes([0x82, 126]) + struct.pack("!H", 1000), masked=False, max_length=1000)
    assert hdr is not None and hdr.length == 1000
    with pytest.raises(PayloadTooBig):
        parse_header(bytes([0x82, 126]) + struct.pack("!H", 1001), masked=False, max_length=1000)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_valid_close_codes(code: int) -> None:
    assert is_valid_close_code(code)
    assert parse_close(serialize_close(code, "ok")) == (code, "ok")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code: int) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError) as info:
        parse_close(struct.pack("!H", code))
    assert info.value.code == 1002
    if code != 1005:
        with pytest.raises(ValueError):
            serialize_close(code)


def test_close_payload_edge_cases() -> None:
    assert parse_close(b"") == (1005, "")
    assert serialize_close(None) == b""
    with pytest.raises(ProtocolError, match="1 byte"):
        parse_close(b"\x03")
    with pytest.raises(InvalidUTF8) as info:
        parse_close(b"\x03\xe8\xed\xa0\x80")
    assert info.value.code == 1007
    with pytest.raises(ValueError):
        serialize_close(1000, "x" * 124)


# -- the mask key must be there in full before a masked frame is taken (parse_header and both parse_messages) ---

try:
    from uringws.ws import _speedups as _speedups_mod
except ImportError:  # built without a compiler: only the pure twin is tested
    _speedups_mod = None
_PARSE_MESSAGES = [pytest.param(parse_messages_py, id="py")]
if _speedups_mod is not None and hasattr(_speedups_mod, "parse_messages"):
    _PARSE_MESSAGES.append(pytest.param(_speedups_mod.parse_messages, id="c"))


@pytest.mark.parametrize("length", [0, 5, 125, 126, 300, 65536])
def test_parse_header_waits_for_all_four_mask_bytes(length: int) -> None:
    mask = b"\x11\x22\x33\x44"
    wire = serialize_frame(0x2, b"\x00" * length, mask=mask)
    header_len = len(serialize_frame(0x2, b"\x00" * length)) - length + 4
    for cut in range(header_len):  # every prefix that ends inside the header, mask key included
        assert parse_header(b"xy" + wire[:cut], 2, masked=True) is None, cut
    hdr = parse_header(b"xy" + wire[:header_len], 2, masked=True)
    assert hdr is not None and hdr.mask == mask and hdr.header_end == 2 + header_len and hdr.length == length


@pytest.mark.parametrize("parser", _PARSE_MESSAGES)
@pytest.mark.parametrize("length", [0, 1, 3, 125, 126, 1000])
@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_parse_messages_takes_no_masked_frame_before_its_last_byte(
    parser: Callable[..., int], length: int, opcode: int
) -> None:
    first = serialize_frame(0x2, b"first", mask=b"\x01\x02\x03\x04")
    wire = first + serialize_frame(opcode, b"a" * length, mask=b"\x05\x06\x07\x08")
    for cut in range(len(first), len(wire)):  # the second frame is missing 1 .. all of its bytes
        got: list[str | bytes] = []
        assert parser(wire[:cut], 0, True, got.append) == len(first), cut
        assert got == [b"first"]
    got = []
    assert parser(wire, 0, True, got.append) == len(wire)
    assert got == [b"first", "a" * length if opcode == 0x1 else b"a" * length]
