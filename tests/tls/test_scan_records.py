"""TLS record boundary tracking: the C ``scan_records`` against ``TLSProtocol._track_records``, chunk by chunk."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uringws.tls import engine as engine_mod
from uringws.tls.protocol import _MAX_RECORD_BODY, TLSProtocol

needs_c = pytest.mark.skipif(engine_mod.scan_records is None, reason="compiled TLS engine not in use")

# Records as (type, body length): mostly valid, some with a type or a length OpenSSL refuses.
_record = st.tuples(
    st.one_of(st.sampled_from([20, 21, 22, 23, 24]), st.integers(0, 255)),
    st.one_of(st.integers(0, 300), st.integers(0, 0xFFFF), st.sampled_from([_MAX_RECORD_BODY, _MAX_RECORD_BODY + 1])),
)


def _stream(records: list[tuple[int, int]]) -> bytes:
    return b"".join(bytes([t, 3, 3, n >> 8, n & 0xFF]) + b"\x17" * n for t, n in records)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # only for the protocol's construction; never run
    yield loop
    loop.close()


_CLIENT_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # one for all trackers: loading CA certs per call is slow


def _tracker(loop: asyncio.AbstractEventLoop) -> TLSProtocol:
    return TLSProtocol(loop, asyncio.Protocol(), _CLIENT_CTX, server_hostname="x")


def _scan_records_py(
    loop: asyncio.AbstractEventLoop, data: bytes | memoryview, rec_left: int, partial: int, hdr: bytes
) -> tuple[int, int, bytes, bool]:
    """The pure tracker, from a given state, as a function."""
    p = _tracker(loop)
    p._rec_left, p._partial, p._hdr = rec_left, partial, hdr
    p._track_records(data)
    return p._rec_left, p._partial, p._hdr, p._framed


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@needs_c
@settings(max_examples=300, deadline=None)
@given(records=st.lists(_record, max_size=12), cuts=st.lists(st.integers(0, 1 << 20), max_size=16))
def test_c_and_pure_agree_after_every_chunk(
    loop: asyncio.AbstractEventLoop, records: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Same (rec_left, partial, hdr, framed) after each chunk of any split, empty chunks included."""
    c_scan = engine_mod.scan_records
    pure_state: tuple[int, int, bytes] = (0, 0, b"")
    c_state: tuple[int, int, bytes] = (0, 0, b"")
    for chunk in _chunks(_stream(records), cuts):
        p_left, p_partial, p_hdr, p_framed = _scan_records_py(loop, memoryview(chunk), *pure_state)
        c_left, c_partial, c_hdr, c_framed = c_scan(memoryview(chunk), *c_state, _MAX_RECORD_BODY)
        assert (c_left, c_partial, c_hdr, c_framed) == (p_left, p_partial, p_hdr, p_framed)
        pure_state = (p_left, p_partial, p_hdr)
        c_state = (c_left, c_partial, c_hdr)


@given(records=st.lists(_record, min_size=1, max_size=12), cut=st.integers(0, 1 << 20))
def test_pure_tracker_knows_where_the_records_end(
    loop: asyncio.AbstractEventLoop, records: list[tuple[int, int]], cut: int
) -> None:
    """The reference: the state says how much of the last record is missing and how much of it has arrived."""
    data = _stream(records)
    cut %= len(data) + 1
    rec_left, partial, hdr, framed = _scan_records_py(loop, data[:cut], 0, 0, b"")
    pos = 0
    for _, n in records:
        if pos + 5 + n > cut:  # the record cut
            got = cut - pos
            assert partial == got
            assert hdr == (data[pos:cut] if got < 5 else b"")
            assert rec_left == (0 if got < 5 else 5 + n - got)
            break
        pos += 5 + n
    else:
        assert (rec_left, partial, hdr) == (0, 0, b"")
    seen = [r for r, end in zip(records, _ends(records), strict=True) if end - r[1] <= cut]
    assert framed == all(20 <= t <= 24 and n <= _MAX_RECORD_BODY for t, n in seen)


def _ends(records: list[tuple[int, int]]) -> list[int]:
    out, pos = [], 0
    for _, n in records:
        pos += 5 + n
        out.append(pos)
    return out


@needs_c
def test_c_refuses_bad_arguments() -> None:
    scan = engine_mod.scan_records
    with pytest.raises(ValueError):
        scan(b"", 0, 0, b"12345", _MAX_RECORD_BODY)
    with pytest.raises(ValueError):
        scan(b"", -1, 0, b"", _MAX_RECORD_BODY)
    with pytest.raises(TypeError):
        scan("text", 0, 0, b"", _MAX_RECORD_BODY)


def test_the_tls_layer_uses_the_compiled_twin_when_built() -> None:
    built = engine_mod.scan_records is not None
    assert TLSProtocol._track is (TLSProtocol._track_records_c if built else TLSProtocol._track_records)
