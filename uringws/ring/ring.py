"""An io_uring instance: mmap'ed SQ/CQ rings, batched submission, completion dispatch by user_data.

Every operation takes a ``callback(res, flags)`` that runs when its CQE arrives (``res`` is the kernel's result:
a byte count, an fd, or ``-errno``). Operations are queued in the SQ and handed to the kernel in one
``io_uring_enter`` per :meth:`Ring.wait` (or earlier if the SQ fills). The ring keeps a reference to every buffer,
address and timespec until the operation's last CQE (one without ``IORING_CQE_F_MORE``), so the kernel never
touches freed memory.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import socket
import struct
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Self

from . import _sys
from .io_uring import (
    CQE_SIZE,
    CQE_STRUCT,
    IORING_ACCEPT_MULTISHOT,
    IORING_ASYNC_CANCEL_ALL,
    IORING_ASYNC_CANCEL_ANY,
    IORING_CQE_F_MORE,
    IORING_ENTER_EXT_ARG,
    IORING_ENTER_GETEVENTS,
    IORING_FEAT_EXT_ARG,
    IORING_FEAT_NODROP,
    IORING_FEAT_SINGLE_MMAP,
    IORING_OFF_CQ_RING,
    IORING_OFF_SQ_RING,
    IORING_OFF_SQES,
    IORING_OP_ACCEPT,
    IORING_OP_ASYNC_CANCEL,
    IORING_OP_CLOSE,
    IORING_OP_CONNECT,
    IORING_OP_LINK_TIMEOUT,
    IORING_OP_NOP,
    IORING_OP_POLL_ADD,
    IORING_OP_POLL_REMOVE,
    IORING_OP_READ,
    IORING_OP_RECV,
    IORING_OP_SEND,
    IORING_OP_SENDMSG,
    IORING_OP_SHUTDOWN,
    IORING_OP_TIMEOUT,
    IORING_POLL_ADD_MULTI,
    IORING_RECV_MULTISHOT,
    IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_CQSIZE,
    IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_TASKRUN_FLAG,
    IORING_SQ_CQ_OVERFLOW,
    IORING_SQ_TASKRUN,
    IOSQE_BUFFER_SELECT,
    IOSQE_IO_HARDLINK,
    IOSQE_IO_LINK,
    OP_NAMES,
    SQE_SIZE,
    io_uring_getevents_arg,
    io_uring_params,
    iovec,
    kernel_timespec,
    msghdr,
)
from .probe import cpu_refusal

log = logging.getLogger("uringws.ring")

Callback = Callable[[int, int], Any]

_U32 = 0xFFFFFFFF
# Every prep writes the whole 64-byte SQE: the 40 bytes up to user_data from its arguments, and the rest
# (buf_index/buf_group, personality, splice_fd_in, addr3, pad) as pad bytes, which pack_into zeroes. A slot is
# reused every sq_entries SQEs, and a field left over from its last operation is read by the next one (a RECV's
# buf_group makes a later POLL_ADD fail with -EINVAL). Pad bytes cost no argument conversion: ~free.
_PACK = struct.Struct("<BBHiQQIIQ24x").pack_into
# The same 64 bytes with fewer fields (opcode|flags|ioprio as one u32, fd, off, addr, len|op_flags, user_data) for
# NOP, where all but user_data are constants: fewer arguments to convert, all of them small ints.
_PACK_NOP = struct.Struct("<IiQQQQ24x").pack_into
_PACK_U16 = struct.Struct("<H").pack_into
# One CQE read in place (the common case: one completion per wake-up); a slice + iter_unpack + list costs 4x more.
_UNPACK_CQE = CQE_STRUCT.unpack_from
_ENTER_GIL = _sys.enter_gil
_ENTER_NOGIL = _sys.enter_nogil
_NR_ENTER = _sys.NR_ENTER
_SIZE_0 = _sys.SIZE_0
_get_errno = _sys.get_errno
_LINKS = IOSQE_IO_LINK | IOSQE_IO_HARDLINK
_buffer_address = _sys.buffer_address
_BYTES_DATA_OFFSET = _sys.BYTES_DATA_OFFSET or 0


_OPEN_CHAIN_WAIT = ("wait() with a timeout on a kernel without IORING_FEAT_EXT_ARG adds a TIMEOUT SQE, which would "
                    "join the open link chain: close the chain (an SQE without IOSQE_IO_LINK) first")


class _NeverAnInstance:
    pass


# send() takes the address of a bytes object inline when the data offset was found (see _sys.buffer_address).
_FAST_BYTES: type = bytes if _sys.BYTES_DATA_OFFSET is not None else _NeverAnInstance

# Buffers of operations the kernel never completed before the ring had to go (should not happen; see close()).
# Kept forever: leaking memory is better than letting the kernel write into freed memory.
_ORPHANED: list[Any] = []


class RingError(RuntimeError):
    """Misuse of a ring, or a ring that cannot do what was asked."""


class RingClosedError(RingError):
    """The ring was closed; no more operations can be submitted."""


def _timespec(seconds: float) -> kernel_timespec:
    if seconds < 0:
        seconds = 0.0
    sec = int(seconds)
    return kernel_timespec(sec, int((seconds - sec) * 1e9))


def setup_ring(
    entries: int, cq_entries: int | None, setup_flags: int | None, preferred: int
) -> tuple[int, io_uring_params]:
    """io_uring_setup() with ``setup_flags``, or else ``preferred`` and fewer flags each time the kernel refuses one.

    Returns the ring's fd and the params the kernel filled in. The CQ has ``cq_entries`` (default ``4 * entries``).
    An explicit ``setup_flags`` is tried alone; any error other than EINVAL is raised at once.
    """
    cq_entries = cq_entries if cq_entries is not None else entries * 4
    wanted = preferred if setup_flags is None else setup_flags
    candidates = [wanted] if setup_flags is not None else [
        wanted, IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SUBMIT_ALL, 0]
    last_exc: OSError | None = None
    for flags in candidates:
        params = io_uring_params()
        params.flags = flags | IORING_SETUP_CQSIZE
        params.cq_entries = cq_entries
        try:
            return _sys.io_uring_setup(entries, ctypes.addressof(params)), params
        except OSError as exc:
            last_exc = exc
            if exc.errno != errno.EINVAL:
                raise
    assert last_exc is not None
    raise last_exc


class _RingLifecycle:
    """What `Ring` and `fast.CompiledRing` share around their own ``close()``: the context manager, and a
    finalizer that warns about an unclosed ring and closes it (cancelling what is in flight)."""

    # Provided by the ring classes (a property of Ring, a getter of the C type); declared for type checkers
    # only, so that nothing of this mixin shadows them in the MRO.
    fd: int
    if TYPE_CHECKING:
        @property
        def closed(self) -> bool: ...

        def close(self, timeout: float = 2.0) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # getattr: a ring whose __init__ failed early may not have the state `closed` reads.
        if not getattr(self, "closed", True):
            warnings.warn(f"unclosed io_uring {self.fd}", ResourceWarning, stacklevel=1)
            try:
                self.close(timeout=0.5)
            except Exception:  # a finalizer must not raise; log why instead
                log.debug("closing an unclosed io_uring from __del__ failed", exc_info=True)


class Ring(_RingLifecycle):
    """One io_uring instance. Not thread-safe: use it from the thread that runs the loop."""

    #: setup flags tried first; dropped one by one on kernels that refuse them (EINVAL)
    PREFERRED_SETUP_FLAGS = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG

    def __init__(self, entries: int = 256, *, cq_entries: int | None = None, setup_flags: int | None = None,
                 on_callback_error: Callable[[BaseException, int], Any] | None = None) -> None:
        if entries < 1 or entries > 32768:
            raise ValueError("entries must be between 1 and 32768")
        refusal = cpu_refusal()
        if refusal is not None:
            # Not just the backend choice (probe.availability): a ring built directly would be unsafe too. An
            # OSError like any other "io_uring unusable here", which callers already fall back to epoll on.
            raise OSError(errno.ENOTSUP, refusal)
        self._closed = True  # until fully set up
        self.on_callback_error = on_callback_error
        fd, params = setup_ring(entries, cq_entries, setup_flags, self.PREFERRED_SETUP_FLAGS)
        self.fd: int = fd
        self.params = params
        self.setup_flags: int = params.flags
        self.features: int = params.features
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        try:
            self._map_rings(params)
        except BaseException:
            self._release_maps()
            os.close(fd)
            raise
        self._pending: dict[int, Callback | None] = {}
        self._keep: dict[int, Any] = {}  # buffers/addresses the kernel may still touch, by user_data
        # _sq_tail counts every SQE ever queued and is never masked (a Python int does not wrap), so it doubles
        # as the user_data source: an SQE queued at tail t gets user_data t + 1, unique for the ring's life.
        self._submitted = self._sq_tail  # SQ tail value (mod 2**32) already handed to the kernel
        # SQ slots are free while _sq_tail < _limit. The hot operations compare against _fast instead, which is
        # _limit when they may take the short path and -1 when they must not (an open link chain, a closed ring).
        self._limit = self._sq_tail + self.sq_entries
        self._fast = self._limit
        self._chain = 0  # trailing unsubmitted SQEs that belong to an open link chain
        self._backlog: list[tuple[int, int, int]] = []
        self._in_dispatch = False
        #: set by close() when some operation never completed (its memory is kept: the kernel may still use it)
        self.leaked = False
        self._ext_arg = bool(self.features & IORING_FEAT_EXT_ARG)
        # Built once: a wait with a timeout only rewrites the timespec (no ctypes object per call).
        self._wait_ts = kernel_timespec()
        self._wait_arg = io_uring_getevents_arg()
        self._wait_arg.ts = ctypes.addressof(self._wait_ts)
        self._wait_argp = ctypes.c_void_p(ctypes.addressof(self._wait_arg))
        self._wait_argsz = ctypes.c_size_t(ctypes.sizeof(io_uring_getevents_arg))
        self._batch_wait = 0.0
        self._batch_count = 16
        self._last_dispatched = 0  # CQEs the last wait() dispatched, counted only when batching
        self._last_sources = 0  # operations among them (see _count_sources)
        self._batch_cqes: list[tuple[int, int, int]] = []  # the last batch _dispatch() delivered
        #: waits that asked the kernel for a batch (see `batch_wait`)
        self.batched_waits = 0
        self._closed = False

    # ------------------------------------------------------------------------------------------------ set-up
    def _mmap(self, size: int, offset: int) -> mmap.mmap:
        # 3.13+: don't let mmap keep a dup() of the ring fd (it would outlive close() until the map is freed).
        kw: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
        m = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                      prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset, **kw)
        self._maps.append(m)
        return m

    def _u32(self, mm: mmap.mmap, off: int) -> memoryview:
        v = memoryview(mm)[off:off + 4].cast("I")
        self._views.append(v)
        return v

    def _map_rings(self, p: io_uring_params) -> None:
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * CQE_SIZE
        if p.features & IORING_FEAT_SINGLE_MMAP:
            sq_mm = cq_mm = self._mmap(max(sq_size, cq_size), IORING_OFF_SQ_RING)
        else:
            sq_mm = self._mmap(sq_size, IORING_OFF_SQ_RING)
            cq_mm = self._mmap(cq_size, IORING_OFF_CQ_RING)
        self._sqes = self._mmap(p.sq_entries * SQE_SIZE, IORING_OFF_SQES)
        self.sq_entries = p.sq_entries
        self.cq_entries = p.cq_entries
        self._sq_mask = self._u32(sq_mm, p.sq_off.ring_mask)[0]
        self._sq_khead = self._u32(sq_mm, p.sq_off.head)
        self._sq_ktail = self._u32(sq_mm, p.sq_off.tail)
        self._sq_kflags = self._u32(sq_mm, p.sq_off.flags)
        self._sq_dropped = self._u32(sq_mm, p.sq_off.dropped)
        # The SQ index array maps ring slots to SQEs; an identity map set once means we never write it again.
        array = memoryview(sq_mm)[p.sq_off.array:p.sq_off.array + p.sq_entries * 4].cast("I")
        for i in range(p.sq_entries):
            array[i] = i
        array.release()
        self._sq_tail = self._sq_ktail[0]
        self._cq_mask = self._u32(cq_mm, p.cq_off.ring_mask)[0]
        self._cq_khead = self._u32(cq_mm, p.cq_off.head)
        self._cq_ktail = self._u32(cq_mm, p.cq_off.tail)
        self._cq_overflow = self._u32(cq_mm, p.cq_off.overflow)
        self._cqes_off = p.cq_off.cqes
        self._cq_mm = cq_mm
        self._cq_view = memoryview(cq_mm)
        self._views.append(self._cq_view)

    # ------------------------------------------------------------------------------------------------ info
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        """Operations submitted or queued whose final CQE has not been dispatched yet."""
        return len(self._pending)

    @property
    def unsubmitted(self) -> int:
        return (self._sq_tail - self._submitted) & _U32

    def has_feature(self, feat: int) -> bool:
        return bool(self.features & feat)

    def fileno(self) -> int:
        return self.fd

    @property
    def batch_wait(self) -> float:
        """Seconds a busy ring's ``wait()`` may hold out for `batch_count` completions; 0 (the default): never.

        After a ``wait()`` that dispatched completions of two operations or more, the next blocking wait asks
        the kernel for `batch_count` of them and gives up after ``batch_wait`` (or the caller's timeout, if
        shorter), dispatching whatever came. Only a ring set up with ``IORING_SETUP_DEFER_TASKRUN`` can do this:
        elsewhere every completion wakes the waiter. It trades up to ``batch_wait`` of latency (plus the kernel's
        timer slack) for fewer wake-ups and larger batches under load.
        """
        return self._batch_wait

    @batch_wait.setter
    def batch_wait(self, value: float) -> None:
        t = float(value)
        if not 0.0 <= t <= 1.0:
            raise ValueError("batch_wait must be between 0 and 1 second")
        if t > 0.0 and not self.setup_flags & IORING_SETUP_DEFER_TASKRUN:
            raise ValueError("batch_wait needs a ring set up with IORING_SETUP_DEFER_TASKRUN "
                             "(elsewhere every completion wakes the waiter)")
        if t > 0.0 and not self._ext_arg:
            raise ValueError("batch_wait needs IORING_FEAT_EXT_ARG (Linux 5.11)")
        self._batch_wait = t

    @property
    def batch_count(self) -> int:
        """Completions a batched ``wait()`` asks for (see `batch_wait`); 16 by default."""
        return self._batch_count

    @batch_count.setter
    def batch_count(self, value: int) -> None:
        n = int(value)
        if not 1 <= n <= self.cq_entries:
            raise ValueError(f"batch_count must be between 1 and the CQ's {self.cq_entries} entries")
        self._batch_count = n

    # ------------------------------------------------------------------------------------------------ SQEs
    # The hot operations (nop, send, recv) inline the slot claim: a Python method call costs as much as the
    # SQE store itself. Each one writes all 64 bytes of its slot (see _PACK): nothing of the slot's previous
    # SQE may survive into the next.
    #
    # Order matters everywhere below: the SQE is packed into the free slot *before* the tail, the room and the
    # pending/keep tables change. If packing fails (a value out of range), nothing was committed: a slot whose
    # tail was advanced but not rewritten would hand the kernel a stale SQE (an old user_data, an old buffer
    # address that may since have been freed).
    def _make_room(self) -> None:
        """No free SQ slot: hand the kernel everything but an unfinished link chain (chains must stay whole)."""
        if self._closed:
            raise RingClosedError("the ring is closed")
        to_submit = self.unsubmitted - self._chain
        if to_submit <= 0:
            raise RingError(f"a link chain of {self._chain} SQEs fills the whole SQ ({self.sq_entries} entries)")
        self._enter(to_submit, 0, 0, block=False)
        if self._sq_tail >= self._limit:
            raise RingError("the kernel did not consume any SQE from a full SQ")

    def _prep(self, opcode: int, sqe_flags: int, ioprio: int, fd: int, off: int, addr: int, length: int,
              op_flags: int, callback: Callback | None, keep: Any) -> int:
        if self._sq_tail >= self._limit:
            self._make_room()
        tail = self._sq_tail
        ud = tail + 1
        try:
            _PACK(self._sqes, (tail & self._sq_mask) << 6, opcode, sqe_flags, ioprio, fd, off, addr, length,
                  op_flags, ud)
        except struct.error as exc:
            raise ValueError(f"{OP_NAMES.get(opcode, opcode)}: an argument is out of range ({exc})") from None
        self._sq_tail = ud
        if sqe_flags & _LINKS:
            self._chain += 1
            self._fast = -1
        elif self._chain:
            self._chain = 0
            self._fast = self._limit
        self._pending[ud] = callback
        if keep is not None:
            self._keep[ud] = keep
        return ud

    def nop(self, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        tail = self._sq_tail
        if sqe_flags or tail >= self._fast:
            return self._prep(IORING_OP_NOP, sqe_flags, 0, -1, 0, 0, 0, 0, callback, None)
        ud = tail + 1
        _PACK_NOP(self._sqes, (tail & self._sq_mask) << 6, IORING_OP_NOP, -1, 0, 0, 0, ud)
        self._sq_tail = ud
        self._pending[ud] = callback
        return ud

    def send(self, fd: int, data: Any, callback: Callback | None, *, flags: int = 0, sqe_flags: int = 0) -> int:
        """SEND: completes with the number of bytes the kernel took, which may be fewer than ``len(data)``."""
        if type(data) is _FAST_BYTES:  # inlined fast path of buffer_address(): a Python call costs ~0.1 µs
            addr, n, keep = id(data) + _BYTES_DATA_OFFSET, len(data), data  # type: ignore[arg-type]
        else:
            addr, n, keep = _buffer_address(data)
        tail = self._sq_tail
        if sqe_flags or tail >= self._fast:
            return self._prep(IORING_OP_SEND, sqe_flags, 0, fd, 0, addr, n, flags, callback, keep)
        ud = tail + 1
        try:
            _PACK(self._sqes, (tail & self._sq_mask) << 6, IORING_OP_SEND, 0, 0, fd, 0, addr, n, flags, ud)
        except struct.error:
            return self._prep(IORING_OP_SEND, sqe_flags, 0, fd, 0, addr, n, flags, callback, keep)  # raises
        self._sq_tail = ud
        self._pending[ud] = callback
        self._keep[ud] = keep
        return ud

    def recv(self, fd: int, buf: Any, callback: Callback | None, *, flags: int = 0, sqe_flags: int = 0) -> int:
        """RECV into a writable buffer; completes with the byte count (0 at EOF)."""
        addr, n, keep = _buffer_address(buf, writable=True)
        tail = self._sq_tail
        if sqe_flags or tail >= self._fast:
            return self._prep(IORING_OP_RECV, sqe_flags, 0, fd, 0, addr, n, flags, callback, keep)
        ud = tail + 1
        try:
            _PACK(self._sqes, (tail & self._sq_mask) << 6, IORING_OP_RECV, 0, 0, fd, 0, addr, n, flags, ud)
        except struct.error:
            return self._prep(IORING_OP_RECV, sqe_flags, 0, fd, 0, addr, n, flags, callback, keep)  # raises
        self._sq_tail = ud
        self._pending[ud] = callback
        self._keep[ud] = keep
        return ud

    def recv_select(self, fd: int, bgid: int, callback: Callback | None, *, multishot: bool = True,
                    flags: int = 0, sqe_flags: int = 0) -> int:
        """RECV into a buffer the kernel picks from provided buffer group ``bgid`` (see `BufferRing`).

        Each data CQE has ``IORING_CQE_F_BUFFER`` and the buffer id in ``flags >> IORING_CQE_BUFFER_SHIFT``.
        With ``multishot`` (6.0+) one request posts a CQE per arrival with ``IORING_CQE_F_MORE``; it ends with a
        CQE without F_MORE: ``res == 0`` at EOF, ``-ENOBUFS`` when the group ran dry (the data stays in the
        socket), ``-ECANCELED`` when cancelled, or any CQE at all when the kernel decides to stop it.
        """
        if not 0 <= bgid <= 0xFFFF:
            raise ValueError("bgid must fit in 16 bits")
        ud = self._prep(IORING_OP_RECV, sqe_flags | IOSQE_BUFFER_SELECT, IORING_RECV_MULTISHOT if multishot else 0,
                        fd, 0, 0, 0, flags, callback, None)
        # buf_group is not among _prep's arguments (it zeroed it); the slot is not handed to the kernel before the
        # next enter, and this store cannot fail (bgid was checked above).
        _PACK_U16(self._sqes, (((ud - 1) & self._sq_mask) << 6) + 40, bgid)
        return ud

    def sendmsg(self, fd: int, buffers: Sequence[Any], callback: Callback | None, *, flags: int = 0,
                sqe_flags: int = 0) -> int:
        """SENDMSG with an iovec of ``buffers`` (gather write); completes with the total bytes taken."""
        count = len(buffers)
        if count == 0:
            raise ValueError("sendmsg() needs at least one buffer")
        iov = (iovec * count)()
        keeps: list[Any] = []
        for i, b in enumerate(buffers):
            addr, n, keep = _sys.buffer_address(b)
            iov[i].iov_base = addr
            iov[i].iov_len = n
            keeps.append(keep)
        msg = msghdr()
        msg.msg_iov = ctypes.addressof(iov)
        msg.msg_iovlen = count
        return self._prep(IORING_OP_SENDMSG, sqe_flags, 0, fd, 0, ctypes.addressof(msg), 1, flags, callback,
                          (iov, msg, keeps))

    def read(self, fd: int, buf: Any, callback: Callback | None, *, offset: int = -1, sqe_flags: int = 0) -> int:
        """READ (for an eventfd, a pipe); ``offset=-1`` reads at the current position."""
        addr, n, keep = _sys.buffer_address(buf, writable=True)
        return self._prep(IORING_OP_READ, sqe_flags, 0, fd, offset & 0xFFFFFFFFFFFFFFFF, addr, n, 0, callback,
                          keep)

    def accept(self, fd: int, callback: Callback | None, *, multishot: bool = False,
               flags: int = socket.SOCK_CLOEXEC, sqe_flags: int = 0) -> int:
        """ACCEPT; completes with the new fd. With ``multishot`` one request yields a CQE per connection."""
        return self._prep(IORING_OP_ACCEPT, sqe_flags, IORING_ACCEPT_MULTISHOT if multishot else 0, fd, 0, 0, 0,
                          flags, callback, None)

    def connect(self, fd: int, address: bytes, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        """CONNECT to an encoded ``struct sockaddr`` (see :func:`uringws.ring.sockaddr`)."""
        if not isinstance(address, bytes):
            raise TypeError("connect() needs an encoded sockaddr (bytes); use uringws.ring.sockaddr()")
        addr, n, keep = _sys.buffer_address(address)
        return self._prep(IORING_OP_CONNECT, sqe_flags, 0, fd, n, addr, 0, 0, callback, keep)

    def shutdown(self, fd: int, how: int, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        return self._prep(IORING_OP_SHUTDOWN, sqe_flags, 0, fd, 0, 0, how, 0, callback, None)

    def close_fd(self, fd: int, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        """CLOSE an fd asynchronously (the caller must not use or close it afterwards)."""
        return self._prep(IORING_OP_CLOSE, sqe_flags, 0, fd, 0, 0, 0, 0, callback, None)

    def poll_add(self, fd: int, events: int, callback: Callback | None, *, multishot: bool = False,
                 sqe_flags: int = 0) -> int:
        """POLL_ADD; completes with the ready ``poll(2)`` mask. Multishot posts a CQE per wake-up (F_MORE)."""
        tail = self._sq_tail
        if not multishot and not sqe_flags and tail < self._fast and 0 <= events <= _U32:
            # Inlined like send(): the selector and the poll-based reads arm one-shot polls all the time.
            ud = tail + 1
            try:
                _PACK(self._sqes, (tail & self._sq_mask) << 6, IORING_OP_POLL_ADD, 0, 0, fd, 0, 0, 0, events, ud)
            except struct.error:
                return self._prep(IORING_OP_POLL_ADD, 0, 0, fd, 0, 0, 0, events, callback, None)  # raises
            self._sq_tail = ud
            self._pending[ud] = callback
            return ud
        return self._prep(IORING_OP_POLL_ADD, sqe_flags, 0, fd, 0, 0, IORING_POLL_ADD_MULTI if multishot else 0,
                          events & _U32, callback, None)

    def poll_remove(self, target: int, callback: Callback | None = None, *, sqe_flags: int = 0) -> int:
        """Remove the poll request whose user_data is ``target``; it then completes with -ECANCELED."""
        return self._prep(IORING_OP_POLL_REMOVE, sqe_flags, 0, -1, 0, target, 0, 0, callback, None)

    def cancel(self, target: int, callback: Callback | None = None, *, cancel_flags: int = 0,
               sqe_flags: int = 0) -> int:
        """ASYNC_CANCEL the request whose user_data is ``target`` (0 with CANCEL_ANY|ALL: everything)."""
        return self._prep(IORING_OP_ASYNC_CANCEL, sqe_flags, 0, -1, 0, target, 0, cancel_flags, callback, None)

    def timeout(self, seconds: float, callback: Callback | None, *, count: int = 0, sqe_flags: int = 0) -> int:
        """TIMEOUT: completes with -ETIME after ``seconds``, or with 0 once ``count`` other CQEs were posted."""
        ts = _timespec(seconds)
        return self._prep(IORING_OP_TIMEOUT, sqe_flags, 0, -1, count, ctypes.addressof(ts), 1, 0, callback, ts)

    def link_timeout(self, seconds: float, callback: Callback | None = None) -> int:
        """LINK_TIMEOUT for the operation prepared just before (which must have been given IOSQE_IO_LINK).

        If the timer fires first, that operation completes with -ECANCELED and this one with -ETIME.
        """
        if self._chain == 0 or self.unsubmitted == 0:
            raise RingError("link_timeout() must directly follow an operation prepared with IOSQE_IO_LINK")
        ts = _timespec(seconds)
        return self._prep(IORING_OP_LINK_TIMEOUT, 0, 0, -1, 0, ctypes.addressof(ts), 1, 0, callback, ts)

    # ------------------------------------------------------------------------------------------------ ordering
    # Memory ordering of the head/tail protocol, and why it holds on x86-64 only.
    #
    # The kernel side: it reads the SQ tail with an acquire load (inside io_uring_enter: we use no SQPOLL thread)
    # and publishes the SQ head with a release store; it writes each CQE and then publishes the CQ tail with a
    # release store (smp_store_release), possibly from another CPU while we run (task work, io-wq workers,
    # softirq completions); it reads our CQ head to know which CQEs it may overwrite. Our side needs the
    # matching pair, as liburing does with io_uring_smp_load_acquire/store_release:
    #   * SQEs stored before the SQ tail that publishes them (_prep/_PACK, then _enter): store -> store;
    #   * the CQ tail loaded before the CQEs below it (_dispatch, _read_cqes): load -> load;
    #   * every CQE below the new head read before the CQ head store that frees its slot: load -> store.
    # We issue no barrier at all: pure Python cannot. Each access is a separate C call (memoryview item,
    # struct.pack_into / unpack_from) that CPython runs in bytecode order, so the compiler keeps program order,
    # and x86-64 (TSO) keeps all three orders in hardware: it reorders only a store with a *later* load, which
    # matters only for SQPOLL's NEED_WAKEUP check (a full fence), and we don't use SQPOLL. On a weakly ordered
    # CPU (aarch64, POWER, RISC-V) each of the three may be reordered: the kernel could run a half-written SQE,
    # we could read a CQE before the kernel's write of it lands, or the kernel could reuse a CQ slot we are
    # still reading. Hence probe.cpu_refusal(): anything but x86-64 gets the epoll backend. The compiled twin
    # (fast.CompiledRing, _ringc.c) does these head/tail accesses with real acquire loads and release stores
    # (__atomic_load_n(..., __ATOMIC_ACQUIRE) / __atomic_store_n(..., __ATOMIC_RELEASE)), and bufring.py
    # publishes its tail through _ringc.RingIndex (a release store) when compiled; the refusal still covers
    # both, because this pure ring is the silent fallback (URINGWS_PURE=1, no build) and neither was tested on
    # a weakly ordered CPU.

    # ------------------------------------------------------------------------------------------------ enter
    def _enter(self, to_submit: int, min_complete: int, flags: int, *, block: bool,
               arg: Any = None, argsz: Any = _SIZE_0) -> int:
        """io_uring_enter; ``arg`` is None or a ctypes c_void_p, ``argsz`` a ctypes c_size_t (see _sys)."""
        if to_submit:
            # The release store of the SQ tail: plain, after the SQE stores (see "ordering" above).
            self._sq_ktail[0] = (self._submitted + to_submit) & _U32
        busy = 0
        # Called directly rather than through _sys.io_uring_enter: this runs once per loop iteration.
        fn = _ENTER_NOGIL if block else _ENTER_GIL
        fd = self.fd
        while True:
            ret = fn(_NR_ENTER, fd, to_submit, min_complete, flags, arg, argsz)
            if ret < 0:
                ret = -_get_errno()
            if ret >= 0:
                if to_submit and not self._closed:
                    # Without SUBMIT_ALL the kernel may stop early at an SQE it could not even prepare (it
                    # posted a CQE for it); the rest stays below the kernel's tail and goes with the next enter.
                    self._submitted = (self._submitted + ret) & _U32
                    tail = self._sq_tail
                    self._limit = tail + self.sq_entries - ((tail - self._sq_khead[0]) & _U32)
                    if self._chain:
                        # Only close() hands an open chain to the kernel, which ends it with this enter
                        # (chains never span two enters); only what is still unsubmitted can belong to a chain.
                        self._chain = min(self._chain, self.unsubmitted)
                    self._fast = -1 if self._chain else self._limit
                return ret
            err = -ret
            if err == errno.EINTR:
                if to_submit:
                    continue
                return 0
            if err in (errno.EAGAIN, errno.EBUSY):
                # The CQ is full (overflow backlog) or the kernel is short of memory: make room by moving CQEs
                # into our own backlog, then try again -- for a bounded time, not forever.
                if self._drain_cq_to_backlog():
                    if min_complete:
                        # A waiting enter now has completions to dispatch: the retry must not wait for one
                        # more (which may never come) while those sit in the backlog. It only submits, and
                        # GETEVENTS still flushes the kernel's overflow list into the CQ.
                        if not to_submit:
                            return 0
                        min_complete, flags, arg, argsz = 0, IORING_ENTER_GETEVENTS, None, _SIZE_0
                        fn = _ENTER_GIL
                else:
                    busy += 1
                    if busy > 2000:
                        raise OSError(err, f"io_uring_enter: {os.strerror(err)} for more than a second")
                    time.sleep(0.0005)
                continue
            if err == errno.ETIME:
                return 0
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")

    def submit(self) -> int:
        """Hand the queued SQEs to the kernel (no waiting). Returns how many it took.

        The SQEs of a link chain still open (the last one queued has IOSQE_IO_LINK) stay queued until an SQE
        without the flag closes the chain: the kernel ends a chain at the end of each submission, so handing it
        half a chain would silently split it in two. ``wait()`` holds them back the same way.
        """
        if self._closed:
            raise RingClosedError("the ring is closed")
        n = self.unsubmitted - self._chain
        if n <= 0:
            return 0
        return self._enter(n, 0, 0, block=False)

    def wait(self, timeout: float | None = None) -> int:
        """Submit queued SQEs, wait up to ``timeout`` seconds (None: forever, 0: don't) for a completion, and
        run the callbacks of the completions available then (not of those posted while they run: they wait for
        the next wait()). Returns the number of CQEs dispatched.

        An open link chain is not submitted (see `submit`); with a timeout on a kernel without
        IORING_FEAT_EXT_ARG (before 5.11), wait() raises RingError while a chain is open."""
        if self._closed:
            raise RingClosedError("the ring is closed")
        if self._in_dispatch:
            raise RingError("Ring.wait() called from a completion callback")
        to_submit = ((self._sq_tail - self._submitted) & _U32) - self._chain
        if self._backlog or self._cq_ktail[0] != self._cq_khead[0] or (timeout is not None and timeout <= 0):
            flags = 0
            if self._sq_kflags[0] & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW):
                flags = IORING_ENTER_GETEVENTS  # run deferred task work / flush overflowed CQEs
            if to_submit or flags:
                self._enter(to_submit, 0, flags, block=False)
        elif self._batch_wait and self._last_sources >= 2 and self._ext_arg:
            # Busy: wait for a batch (the kernel wakes a DEFER_TASKRUN ring's waiter only once batch_count
            # completions are pending), for batch_wait at most; on ETIME, whatever came is dispatched.
            self.batched_waits += 1
            t = self._batch_wait if timeout is None or timeout > self._batch_wait else timeout
            sec = int(t)
            ts = self._wait_ts
            ts.tv_sec = sec
            ts.tv_nsec = int((t - sec) * 1e9)
            self._enter(to_submit, self._batch_count, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, block=True,
                        arg=self._wait_argp, argsz=self._wait_argsz)
        elif timeout is None:
            # No timeout needs no EXT_ARG (its ts would be NULL): the plain wait, the idle loop's usual one.
            self._enter(to_submit, 1, IORING_ENTER_GETEVENTS, block=True)
        elif self._ext_arg:
            sec = int(timeout)
            ts = self._wait_ts
            ts.tv_sec = sec
            ts.tv_nsec = int((timeout - sec) * 1e9)
            self._enter(to_submit, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, block=True,
                        arg=self._wait_argp, argsz=self._wait_argsz)
        else:
            if timeout is not None:
                # Old kernels: a TIMEOUT that also completes as soon as one other CQE is posted. It would join
                # (and close) an open link chain, so that must be closed first.
                if self._chain:
                    raise RingError(_OPEN_CHAIN_WAIT)
                self.timeout(timeout, None, count=1)
                to_submit = self.unsubmitted
            self._enter(to_submit, 1, IORING_ENTER_GETEVENTS, block=True)
        n = self._dispatch()
        if self._batch_wait:  # nothing more per iteration while batching is off
            self._last_dispatched = n
            self._last_sources = self._count_sources(n)
        return n

    def _count_sources(self, n: int) -> int:
        """The operations among the CQEs the last wait() dispatched: runs of one user_data in its last batch (a
        socket's multishot RECV posting several CQEs is one), or the count itself below two. A wait for more
        completions pays only with several operations completing: the kernel queues one wake-up item per
        operation, not per CQE, so one busy socket alone never fills a batch."""
        cqes = self._batch_cqes
        if n < 2 or not cqes:
            return n
        runs = 1
        prev = cqes[0][0]
        for ud, _res, _flags in cqes:
            if ud != prev:
                runs += 1
                prev = ud
        return runs

    # ------------------------------------------------------------------------------------------------ CQEs
    def _read_cqes(self) -> list[tuple[int, int, int]]:
        head = self._cq_khead[0]
        tail = self._cq_ktail[0]
        count = (tail - head) & _U32
        if not count:
            return []
        mask = self._cq_mask
        start = head & mask
        base = self._cqes_off
        end = start + count
        view = self._cq_view
        if end <= mask + 1:
            out = list(CQE_STRUCT.iter_unpack(view[base + start * CQE_SIZE:base + end * CQE_SIZE]))
        else:
            out = list(CQE_STRUCT.iter_unpack(view[base + start * CQE_SIZE:base + (mask + 1) * CQE_SIZE]))
            out += CQE_STRUCT.iter_unpack(view[base:base + (end - mask - 1) * CQE_SIZE])
        self._cq_khead[0] = tail
        return out

    def _drain_cq_to_backlog(self) -> bool:
        cqes = self._read_cqes()
        self._backlog.extend(cqes)
        return bool(cqes)

    def _dispatch(self) -> int:
        total = 0
        khead = self._cq_khead
        ktail = self._cq_ktail
        pending = self._pending
        keep = self._keep
        while True:
            head = khead[0]
            # The tail is read before the CQEs it publishes: CPython issues these loads in program order and
            # x86-64 (TSO) does not reorder loads, so a CQE below the tail we read is complete (see "ordering").
            tail = ktail[0]
            if head != tail:
                if (tail - head) & _U32 == 1:
                    # One CQE (the usual wake-up): unpacked in place, then the slot is released by the head
                    # store, which comes after the load (TSO does not move a store before an earlier load).
                    cqes = [_UNPACK_CQE(self._cq_view, self._cqes_off + ((head & self._cq_mask) << 4))]
                    khead[0] = tail
                else:
                    cqes = self._read_cqes()
                if self._backlog:
                    cqes = self._backlog + cqes  # older than anything still in the CQ
                    self._backlog = []
            elif self._backlog:
                cqes = self._backlog
                self._backlog = []
            elif self._sq_kflags[0] & IORING_SQ_CQ_OVERFLOW:
                # IORING_FEAT_NODROP kept the CQEs that did not fit; GETEVENTS flushes them into the CQ.
                self._enter(0, 0, IORING_ENTER_GETEVENTS, block=False)
                continue
            else:
                return total
            total += len(cqes)
            self._batch_cqes = cqes
            self._in_dispatch = True
            it = iter(cqes)
            try:
                for ud, res, flags in it:
                    if flags and flags & IORING_CQE_F_MORE:  # most CQEs have no flags: skip the AND
                        cb = pending.get(ud)
                    else:
                        cb = pending.pop(ud, None)
                        if keep:
                            keep.pop(ud, None)
                    if cb is not None:
                        try:
                            cb(res, flags)
                        except Exception as exc:  # noqa: BLE001 -- one callback's bug must not stop the others
                            self._callback_failed(exc, ud)
            except BaseException:
                # KeyboardInterrupt/SystemExit (or an on_callback_error that raised): the CQEs of this batch
                # are already consumed from the CQ, so keep the rest for the next wait() -- each must still
                # be delivered exactly once. The iterator knows where we stopped (no per-CQE counter).
                self._backlog[:0] = it
                raise
            finally:
                self._in_dispatch = False
            # One batch per wait(): what callbacks made complete meanwhile (a flooding socket's multishot RECV
            # posts a CQE per chunk as fast as it arrives) waits for the next wait(), so that the loop's timers,
            # ready callbacks and before-wait sends get their turn in between. Only CQEs the kernel kept on its
            # overflow list (older than anything posted since) are still taken now.
            if not self._sq_kflags[0] & IORING_SQ_CQ_OVERFLOW:
                return total

    def _callback_failed(self, exc: Exception, ud: int) -> None:
        if self.on_callback_error is not None:
            self.on_callback_error(exc, ud)
        else:
            log.exception("io_uring completion callback failed (user_data=%d)", ud, exc_info=exc)

    # ------------------------------------------------------------------------------------------------ close
    def close(self, timeout: float = 2.0) -> None:
        """Cancel everything in flight, reap every CQE, unmap and close the fd.

        Callbacks see -ECANCELED (or -EINTR for a request a kernel worker thread was running). Operations that
        were queued but not submitted yet are submitted first so that they are cancelled the same way.
        """
        if self._closed:
            return
        if self._in_dispatch:
            # The dispatch loop still reads the CQ we would unmap; close after wait() has returned.
            raise RingError("Ring.close() called from a completion callback")
        try:
            if self._pending:
                self._cancel_all(time.monotonic() + timeout)
        finally:
            self._closed = True
            # Every later operation goes through _make_room(), which raises RingClosedError.
            self._limit = self._fast = -1
            self.leaked = bool(self._pending or self._keep)
            if self._pending or self._keep:
                log.warning("io_uring: %d operations did not complete before close; their buffers are kept",
                            len(self._pending))
                _ORPHANED.extend(self._keep.values())
                self._pending.clear()
                self._keep.clear()
            self._backlog.clear()
            try:
                self._release_maps()
            finally:
                os.close(self.fd)
                self.fd = -1

    def _cancel_all(self, deadline: float) -> None:
        """Cancel every request and reap until none is left (or the deadline passes)."""
        # SQEs still queued (maybe an open link chain that fills the SQ) go first, so that they can be cancelled.
        self._chain = 0
        self.submit()
        ours: set[int] = set()  # the cancel requests themselves
        answer: list[int] = []
        ours.add(self.cancel(0, lambda res, _f: answer.append(res),
                             cancel_flags=IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL))
        self.submit()
        done: set[int] = set(ours)
        while self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.wait(min(left, 0.05))
            # Kernels before 5.19 reject CANCEL_ANY (-EINVAL); callbacks may also have queued new requests
            # while we reaped: cancel whatever is left by user_data, once each.
            if answer and (answer[0] < 0 or len(self._pending) > len(ours)):
                for ud in [u for u in self._pending if u not in done]:
                    done.add(ud)
                    c = self.cancel(ud, None)
                    ours.add(c)
                    done.add(c)
                self.submit()
            ours.intersection_update(self._pending)

    def _release_maps(self) -> None:
        # Release every view and unmap every region even if one of them refuses (exported pointers).
        errors: list[BaseException] = []
        for v in self._views:
            try:
                v.release()
            except BufferError as exc:
                errors.append(exc)
        self._views.clear()
        for m in self._maps:
            try:
                m.close()
            except BufferError as exc:
                errors.append(exc)
        self._maps.clear()
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd} sq={self.sq_entries} in_flight={len(self._pending)}"
        return f"<Ring {state}>"


def cqe_flags_more(flags: int) -> bool:
    return bool(flags & IORING_CQE_F_MORE)


__all__ = ["IORING_FEAT_NODROP", "Callback", "Ring", "RingClosedError", "RingError"]
