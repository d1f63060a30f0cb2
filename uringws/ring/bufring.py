"""A provided buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19+): receive buffers shared by every connection.

The kernel picks a buffer from the ring only when data arrives (RECV with IOSQE_BUFFER_SELECT, multishot on
6.0+), so an idle connection holds no receive buffer at all; the CQE names the buffer it filled
(``flags >> IORING_CQE_BUFFER_SHIFT``) and the consumer hands it back with :meth:`BufferRing.recycle` once it has
copied the bytes out.

Incremental consumption (``incremental=True``, ``IOU_PBUF_RING_INC``, Linux 6.12+): a receive takes only the bytes
it needs from the current buffer instead of a whole buffer, so the buffers can be large (a bulk stream arrives in
chunks as big as the socket has ready, not one CQE per 16 KiB) without a 64-byte message costing a whole one.
The same buffer id then comes back in several CQEs, each continuing where the last one ended; the kernel sets
``IORING_CQE_F_BUF_MORE`` on every CQE but the one that finishes the buffer, and only that one gives it back to
us. The kernel and the consumer both track the offset (the kernel in the ring entry, :attr:`BufferRing.offsets`
here), which works because CQEs of one ring are posted in the order the buffer was consumed: every receive of a
socket runs inline or from task work on the submitting thread, never from an io-wq worker (no IOSQE_ASYNC).
:meth:`BufferRing.take` and :meth:`BufferRing.release` are the reference for what the transport inlines.

Layout (include/uapi/linux/io_uring.h): the ring is a page-aligned array of ``struct io_uring_buf {u64 addr;
u32 len; u16 bid; u16 resv}``; the ``resv`` field of entry 0 (byte offset 14) doubles as the ring's tail, which
only we write and the kernel reads with an acquire load. The head lives in the kernel. Registration takes
``struct io_uring_buf_reg {u64 ring_addr; u32 ring_entries; u16 bgid; u16 flags; u64 resv[3]}``.

Memory ordering: an entry must be visible before the tail that publishes it (the kernel reads the tail with an
acquire load, then the entries below it). With the compiled ring core (:data:`uringws.ring.fast.RingIndex`, unless
``URINGWS_PURE=1``) the tail is a release store, which orders every earlier store of this thread before it on any
CPU. The pure path stores the tail through a plain ``memoryview``: CPython makes the entry store and the tail store
in program order, through separate C calls the compiler cannot merge or reorder, and x86-64 (TSO) never reorders
a store with an earlier store, so the kernel cannot see the new tail before the entry -- on x86-64 only. A weakly
ordered CPU (aarch64, POWER, RISC-V) may make the tail visible first, and the kernel would pick a stale entry.
That is why :func:`supported` (like :func:`uringws.ring.probe.availability` and both rings' constructors, through
:func:`uringws.ring.probe.cpu_refusal`) says no on anything but x86-64 -- today even with the compiled core, whose
release store would be correct there: the pure fallback is silent (``URINGWS_PURE=1``, a missing build), and
nothing has been tested on such a CPU.

The tail is ``self._tail_view``, and ``uringws.loop.transports`` inlines :meth:`BufferRing.recycle` by storing
``bufring._tail_view[0]``: whichever object that is (``RingIndex`` or ``memoryview``), the inlined store gets the
same ordering as :meth:`recycle`.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import Any

from . import _sys
from .fast import RingIndex
from .io_uring import (
    IORING_CQE_BUFFER_SHIFT,
    IORING_CQE_F_BUF_MORE,
    IORING_REGISTER_PBUF_RING,
    IORING_UNREGISTER_PBUF_RING,
    IOU_PBUF_RING_INC,
    io_uring_buf_reg,
)
from .probe import cpu_refusal

__all__ = ["BufferRing", "supported"]

_ENTRY = struct.Struct("<QIH")  # addr, len, bid (the trailing u16 resv is the tail in entry 0: never written here)

# Maps the kernel may still have pinned when their ring could not be torn down cleanly: never unmapped.
_ORPHANED: list[Any] = []


def supported() -> bool:
    """True where the tail protocol is known to be ordered: x86-64, where even the pure path's plain stores are
    (see the module docstring)."""
    return cpu_refusal() is None


class BufferRing:
    """``count`` buffers of ``size`` bytes in one anonymous mapping, provided to ``ring`` as group ``bgid``.

    With ``incremental`` the kernel consumes each buffer piece by piece (see the module docstring). Raises
    OSError if the kernel refuses the registration (older than 5.19, or ``incremental`` before 6.12: EINVAL).
    Not thread-safe.
    """

    def __init__(self, ring: Any, *, count: int = 256, size: int = 16384, bgid: int = 0,
                 incremental: bool = False) -> None:
        if count < 1 or count > 32768 or count & (count - 1):
            raise ValueError("count must be a power of two between 1 and 32768")
        if size < 1 or size > 0xFFFFFFFF:
            raise ValueError("size must be between 1 and 2**32 - 1")
        if not 0 <= bgid <= 0xFFFF:
            raise ValueError("bgid must fit in 16 bits")
        self.count = count
        self.size = size
        self.bgid = bgid
        self.incremental = incremental
        #: per buffer id, where its next bytes start (always 0 unless ``incremental``)
        self.offsets = [0] * count
        self._ring = ring
        self._registered = False
        self._mask = count - 1
        self._tail = 0
        # Anonymous mmaps are page-aligned (the kernel requires it) and untouched pages cost no RSS.
        self._ring_mm = mmap.mmap(-1, max(count * 16, mmap.PAGESIZE))
        self._data_mm = mmap.mmap(-1, count * size)
        self._ring_view = memoryview(self._ring_mm)
        # Entry 0's resv field is the tail: a release store with the compiled core, else a plain one (x86-64 only;
        # see the module docstring). Both are indexed [0] and released by release().
        self._tail_view: Any = (RingIndex(self._ring_mm, 14, 2) if RingIndex is not None
                                else self._ring_view[14:16].cast("H"))
        #: the buffers' bytes, indexed by ``bid * size`` (``mm[a:b]`` copies into bytes; ``view[a:b]`` does not)
        self.mm = self._data_mm
        self.view = memoryview(self._data_mm)
        ring_addr, _, self._ring_keep = _sys.buffer_address(self._ring_mm, writable=True)
        data_addr, _, self._data_keep = _sys.buffer_address(self._data_mm, writable=True)
        # Each buffer's entry never changes (same address, length and id): pack them once.
        self._entries = [_ENTRY.pack(data_addr + bid * size, size, bid) for bid in range(count)]
        for bid in range(count):
            off = bid << 4
            self._ring_view[off:off + 14] = self._entries[bid]
        self._tail = count
        self._tail_view[0] = count & 0xFFFF
        reg = io_uring_buf_reg()
        reg.ring_addr = ring_addr
        reg.ring_entries = count
        reg.bgid = bgid
        reg.flags = IOU_PBUF_RING_INC if incremental else 0
        try:
            _sys.io_uring_register(ring.fd, IORING_REGISTER_PBUF_RING, ctypes.addressof(reg), 1)
        except BaseException:
            self._unmap()
            raise
        self._registered = True

    @property
    def registered(self) -> bool:
        return self._registered

    def take(self, res: int, flags: int) -> tuple[int, int]:
        """For a CQE with ``IORING_CQE_F_BUFFER`` and ``res`` bytes: ``(bid, start)``, its bytes being
        ``mm[start:start + res]``. Pass the CQE to :meth:`release` once they have been copied out or consumed.

        uringws.loop.transports inlines this (with `release`) in its per-message path: change them together.
        """
        bid = flags >> IORING_CQE_BUFFER_SHIFT
        offset = self.offsets[bid]
        if flags & IORING_CQE_F_BUF_MORE:
            if res > 0:
                self.offsets[bid] = offset + res
        else:
            self.offsets[bid] = 0
        return bid, bid * self.size + offset

    def release(self, bid: int, flags: int) -> None:
        """Give ``bid`` back after :meth:`take` unless the kernel still fills it (``IORING_CQE_F_BUF_MORE``)."""
        if not flags & IORING_CQE_F_BUF_MORE:
            self.recycle(bid)

    def recycle(self, bid: int) -> None:
        """Give buffer ``bid`` back to the kernel (its bytes must have been copied out already).

        uringws.loop.transports inlines this in its per-message path: change both together.
        """
        tail = self._tail
        off = (tail & self._mask) << 4
        # Straight into the mmap: slicing the memoryview would build a view object first (~20% slower).
        self._ring_mm[off:off + 14] = self._entries[bid]
        self._tail = tail = tail + 1
        self._tail_view[0] = tail & 0xFFFF  # publishes the entry just written: a release store (module docstring)

    def close(self, *, ring_clean: bool = True) -> None:
        """Unregister (if the ring is still open) and unmap; with ``ring_clean=False`` (operations of the ring
        were never reaped, so the kernel may still write into a buffer) the memory is kept forever instead."""
        if self._registered:
            self._registered = False
            ring_fd = getattr(self._ring, "fd", -1)
            if ring_fd is not None and ring_fd >= 0 and not getattr(self._ring, "closed", False):
                reg = io_uring_buf_reg()
                reg.bgid = self.bgid
                try:
                    _sys.io_uring_register(ring_fd, IORING_UNREGISTER_PBUF_RING, ctypes.addressof(reg), 1)
                except OSError:
                    ring_clean = False
        if not ring_clean:
            _ORPHANED.append(self)
            return
        self._unmap()

    def _unmap(self) -> None:
        try:
            self._tail_view.release()
            self._ring_view.release()
            self.view.release()
            for keep in (self._ring_keep, self._data_keep):
                if isinstance(keep, memoryview):
                    keep.release()
            self._ring_keep = self._data_keep = None
            self._ring_mm.close()
            self._data_mm.close()
        except BufferError:
            # Someone still holds a view of a buffer (say, a traceback's frame): leave the maps to the garbage
            # collector, which unmaps them once the last view goes, rather than fail the loop's close().
            pass

    def __repr__(self) -> str:
        inc = " incremental" if self.incremental else ""
        return f"<BufferRing bgid={self.bgid} {self.count}x{self.size}{inc} registered={self._registered}>"
