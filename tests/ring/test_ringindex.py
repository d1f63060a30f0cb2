"""`RingIndex`: the compiled acquire-load / release-store index the buffer ring publishes its tail with."""

from __future__ import annotations

import mmap
import struct

import pytest

from uringws.ring import fast

pytestmark = [
    pytest.mark.needs_no_ring,
    pytest.mark.skipif(fast.RingIndex is None, reason="the compiled ring core is off (URINGWS_PURE=1 or not built)"),
]


@pytest.mark.parametrize("width,fmt,top", [(2, "<H", 0xFFFF), (4, "<I", 0xFFFFFFFF)])
def test_store_and_load_are_the_memory_value(width: int, fmt: str, top: int) -> None:
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    mm[:] = b"\xaa" * mmap.PAGESIZE  # neighbours that a too-wide store would overwrite
    idx = fast.RingIndex(mm, 16, width)
    try:
        for v in (0, 1, 0x1234, top):
            idx[0] = v
            assert struct.unpack_from(fmt, mm, 16)[0] == v  # the store lands at offset 16, in width bytes
            assert idx[0] == v and idx.load() == v and idx[-1] == v
        idx.store(7)
        assert struct.unpack_from(fmt, mm, 16)[0] == 7
        struct.pack_into(fmt, mm, 16, 42)  # a store by someone else (the kernel) is what the next load sees
        assert idx[0] == 42
        assert mm[:16] == b"\xaa" * 16 and mm[16 + width:32] == b"\xaa" * (16 - width)  # no neighbour touched
        assert len(idx) == 1
    finally:
        idx.release()
        mm.close()


def test_refuses_what_it_cannot_store() -> None:
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    idx = fast.RingIndex(mm, 0, 2)
    try:
        for bad in (0x10000, -1, 2**70):
            with pytest.raises(ValueError, match="out of range"):
                idx[0] = bad
        with pytest.raises(TypeError):
            idx[0] = "1"  # type: ignore[assignment]
        with pytest.raises(IndexError):
            idx[1] = 0
        with pytest.raises(IndexError):
            idx[1]
        with pytest.raises(TypeError):
            del idx[0]
        assert mm[0:2] == b"\0\0"  # nothing refused was stored
    finally:
        idx.release()
        mm.close()


def test_placement_is_checked() -> None:
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        with pytest.raises(ValueError, match="aligned"):
            fast.RingIndex(mm, 13, 2)
        with pytest.raises(ValueError, match="aligned"):
            fast.RingIndex(mm, 6, 4)
        with pytest.raises(ValueError, match="out of the buffer"):
            fast.RingIndex(mm, mmap.PAGESIZE - 2, 4)
        with pytest.raises(ValueError, match="out of the buffer"):
            fast.RingIndex(mm, -2, 2)
        with pytest.raises(ValueError, match="width"):
            fast.RingIndex(mm, 0, 8)
        with pytest.raises(BufferError, match="not writable"):
            fast.RingIndex(b"read-only", 0, 2)
    finally:
        mm.close()  # no failed constructor left an export behind


def test_holds_the_mapping_until_released() -> None:
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    idx = fast.RingIndex(mm, 0, 4)
    with pytest.raises(BufferError):
        mm.close()  # the kernel's view of this memory must not be unmapped under the index
    idx.release()
    assert idx.released
    idx.release()  # twice is fine
    mm.close()
    with pytest.raises(ValueError, match="released"):
        idx[0]
    with pytest.raises(ValueError, match="released"):
        idx.store(1)


def test_dealloc_drops_the_export() -> None:
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    idx = fast.RingIndex(mm, 0, 2)
    del idx
    mm.close()
