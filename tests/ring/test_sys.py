"""Buffer addresses: the fast paths agree with PyObject_GetBuffer for every kind of buffer."""

from __future__ import annotations

import array
import ctypes
import mmap
from typing import Any

import pytest

from uringws.ring import _sys


class BytesSub(bytes):
    pass


def _cases() -> list[Any]:
    ba = bytearray(range(200))
    m = mmap.mmap(-1, 4096)
    return [
        b"plain bytes",
        BytesSub(b"a bytes subclass"),
        ba,
        memoryview(ba)[17:91],
        memoryview(b"read-only bytes, sliced")[5:],
        memoryview(ba).toreadonly()[3:],
        array.array("I", range(10)),
        memoryview(array.array("Q", range(8)))[2:5],
        m,
        memoryview(m)[100:200],
        (ctypes.c_char * 32)(),
    ]


@pytest.mark.needs_no_ring
@pytest.mark.parametrize("obj", _cases(), ids=lambda o: type(o).__name__)
def test_buffer_address_matches_getbuffer(obj: Any) -> None:
    addr, n, keep = _sys.buffer_address(obj)
    view = memoryview(obj)
    assert n == view.nbytes
    assert addr == _sys._getbuffer_address(view, False)
    assert ctypes.string_at(addr, n) == view.tobytes()  # the bytes at that address are the buffer's
    assert keep is not None


@pytest.mark.needs_no_ring
def test_fast_offsets_were_found() -> None:
    # If CPython ever moves these fields the checks at import fall back to the slow path; this test says so.
    assert _sys.BYTES_DATA_OFFSET is not None
    assert _sys.MEMORYVIEW_BUF_OFFSET is not None


@pytest.mark.needs_no_ring
def test_empty_and_writable_buffers() -> None:
    assert _sys.buffer_address(bytearray())[:2] == (0, 0)
    ba = bytearray(b"abc")
    addr, n, keep = _sys.buffer_address(ba, writable=True)
    ctypes.memmove(addr, b"XYZ", 3)
    assert ba == b"XYZ" and n == 3
    with pytest.raises(BufferError):
        ba.append(1)  # the keepalive view pins the memory
    del keep
    ba.append(1)


@pytest.mark.needs_no_ring
def test_slow_path_is_used_without_the_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sys, "MEMORYVIEW_BUF_OFFSET", None)
    ba = bytearray(b"0123456789")
    addr, n, _ = _sys.buffer_address(memoryview(ba)[4:])
    assert ctypes.string_at(addr, n) == b"456789"
