"""Incremental UTF-8 validation fails as soon as the bytes can no longer become valid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uringws.ws.exceptions import InvalidUTF8
from uringws.ws.utf8 import IncrementalUTF8Decoder


@pytest.mark.parametrize("prefix", [b"\xed\xa0", b"\xed\xbf", b"\xf4\x90", b"\xe0\x80", b"\xc0", b"\xf5", b"\xff"])
def test_impossible_prefixes_fail_immediately(prefix: bytes) -> None:
    decoder = IncrementalUTF8Decoder()
    with pytest.raises(InvalidUTF8):
        decoder.decode(b"valid \xce\xba" + prefix, False)


@pytest.mark.parametrize("prefix", [b"\xed\x9f", b"\xf4\x8f", b"\xe0\xa0", b"\xf0\x90\x80", b"\xce"])
def test_possible_prefixes_are_kept(prefix: bytes) -> None:
    decoder = IncrementalUTF8Decoder()
    assert decoder.decode(prefix, False) == ""
    with pytest.raises(InvalidUTF8):
        decoder.decode(b"", True)  # truncated at the end of the message


def test_surrogate_split_byte_by_byte() -> None:
    decoder = IncrementalUTF8Decoder()
    decoder.decode(b"\xed", False)
    with pytest.raises(InvalidUTF8):
        decoder.decode(b"\xa0", False)


@given(st.text(), st.lists(st.integers(min_value=0, max_value=64), max_size=10))
def test_any_split_decodes_like_whole(text: str, cuts: list[int]) -> None:
    data = text.encode("utf-8")
    decoder = IncrementalUTF8Decoder()
    out, pos = [], 0
    for cut in cuts:
        out.append(decoder.decode(data[pos : pos + cut], False))
        pos += cut
    out.append(decoder.decode(data[pos:], True))
    assert "".join(out) == text


@given(st.binary(max_size=40), st.integers(min_value=0, max_value=40))
def test_agrees_with_strict_decode(data: bytes, cut: int) -> None:
    decoder = IncrementalUTF8Decoder()
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    try:
        decoder.decode(data[:cut], False)
        decoder.decode(data[cut:], True)
        ok = True
    except InvalidUTF8:
        ok = False
    assert ok == valid
