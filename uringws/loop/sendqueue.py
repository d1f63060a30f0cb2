"""The send path of one stream socket, as a sans-I/O object (docs/design.md §3).

`SendQueue` owns the ordered bytes that a transport still has to get into the kernel. It never touches a
socket or a ring; the transport drives it with three calls::

    pause = q.write(data)          # any time; True -> call protocol.pause_writing() now
    bufs = q.next_send()           # None, or the buffers of the ONE send to submit now
    ...submit SEND (one buffer) or SENDMSG (iovec of several); wait for its CQE...
    resume = q.completed(res)      # res >= 0; True -> call protocol.resume_writing() now
    retry = q.failed(-res)         # res < 0;  True -> call next_send() again, False -> abort the connection

Invariants it keeps, because TLS cannot survive a lost, duplicated or reordered byte:

* at most one send is in flight; `next_send()` returns None until `completed()` or `failed()` is called;
* `completed(n)` advances the stream by exactly `n` bytes; a short completion leaves the remainder at the head,
  so it goes out first, before anything written later;
* every buffer handed out stays referenced by the queue until the completion of its send arrives, even if the
  queue is closed or aborted meanwhile (the kernel may still read it);
* `bytes` are kept by reference; mutable buffers are copied in `write()` because asyncio lets the caller reuse
  its buffer as soon as `write()` returns.

Flow control follows asyncio's ``_FlowControlMixin``: limits default to high = 64 KiB, low = high // 4;
`write()` reports the moment `buffered` rises above high (and the queue was not already paused);
`completed()` reports the moment it falls to low or below after a pause; `set_limits()` reports a pause caused
by lowering the limits. Each crossing is reported exactly once, so the transport needs no state of its own.
`buffered` counts every byte not yet confirmed by the kernel, including the bytes of the send in flight.
"""

from __future__ import annotations

import errno
from typing import Final

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_JOIN_BELOW",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_IOV",
    "RETRYABLE_ERRNOS",
    "SendQueue",
    "SendQueueClosedError",
    "SendQueueError",
    "SendQueueUsageError",
]

# Defaults, in one place. High water matches asyncio's transports.
DEFAULT_HIGH_WATER: Final = 64 * 1024
DEFAULT_MAX_BATCH_BYTES: Final = 256 * 1024
DEFAULT_MAX_IOV: Final = 64
DEFAULT_JOIN_BELOW: Final = 16 * 1024
# The kernel refuses a msghdr with more iovecs than UIO_MAXIOV.
_UIO_MAXIOV: Final = 1024

# Failures with nothing sent after which the same bytes can simply go again. ECANCELED is here because the
# queue cannot know why the send was cancelled (an ASYNC_CANCEL, a linked timeout, ring teardown): the bytes
# are intact at the head, so retrying is always *safe*; a transport that cancelled on purpose because it is
# closing calls abort() instead of next_send().
RETRYABLE_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECANCELED})


class SendQueueError(Exception):
    """Base class of the errors raised by `SendQueue`."""


class SendQueueClosedError(SendQueueError):
    """`write()` on a queue that was closed, aborted or killed by a send error; the data was not queued."""


class SendQueueUsageError(SendQueueError):
    """The transport broke the protocol (e.g. a completion with no send in flight); a bug, never ignored."""


# A chunk is an immutable, C-contiguous, 1-D byte buffer: bytes, or a format-"B" memoryview over bytes.
_Chunk = bytes | memoryview


class SendQueue:
    """Ordered bytes waiting for the kernel, with exactly one send in flight. See the module docstring."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed",
        "_error",
        "_high",
        "_inflight",
        "_inflight_n",
        "_join_below",
        "_low",
        "_max_batch_bytes",
        "_max_iov",
        "_offset",
        "_paused",
    )

    def __init__(
        self,
        *,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        max_iov: int = DEFAULT_MAX_IOV,
        join_below: int = DEFAULT_JOIN_BELOW,
        high_water: int = DEFAULT_HIGH_WATER,
        low_water: int | None = None,
    ) -> None:
        if max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be >= 1, got {max_batch_bytes!r}")
        if not 1 <= max_iov <= _UIO_MAXIOV:
            raise ValueError(f"max_iov must be in 1..{_UIO_MAXIOV} (the kernel's UIO_MAXIOV), got {max_iov!r}")
        if join_below < 0:
            raise ValueError(f"join_below must be >= 0, got {join_below!r}")
        # Unsent bytes in stream order; the first `_offset` bytes of the head chunk are already confirmed. A list,
        # not a deque: an idle connection's empty list is 56 bytes where an empty deque is 760 (its first
        # block), and the queue is short (usually one chunk) and consumed from the front in one slice deletion.
        self._chunks: list[_Chunk] = []
        self._offset = 0
        self._buffered = 0
        # The buffers of the send in flight (None: no send in flight) and how many bytes it covers.
        self._inflight: list[memoryview] | None = None
        self._inflight_n = 0
        self._max_batch_bytes = max_batch_bytes
        self._max_iov = max_iov
        self._join_below = join_below
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._paused = False
        self._closed = False
        self._error: int | None = None
        self.set_limits(high_water, low_water)

    # -- writing ------------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Append `data` to the stream; return True if the caller must pause writing now.

        Empty data is a no-op. Raises `SendQueueClosedError` after close(), abort() or a fatal send error,
        and TypeError for objects that are not bytes-like.
        """
        if self._closed:
            raise self._closed_error()
        # Fast path: plain bytes are immutable, keep them by reference.
        if type(data) is bytes:
            chunk: _Chunk = data
        else:
            chunk = _own(data)
        n = len(chunk)
        if not n:
            return False
        self._chunks.append(chunk)
        self._buffered = buffered = self._buffered + n
        if buffered > self._high and not self._paused:
            self._paused = True
            return True
        return False

    # -- sending ------------------------------------------------------------------------------------------

    def next_send(self) -> list[memoryview] | None:
        """Start the next send: the buffers to submit, in stream order, or None.

        None means a send is already in flight or nothing is queued. One buffer -> submit SEND, several ->
        SENDMSG with one iovec entry per buffer. The queue keeps every buffer referenced until `completed()` or
        `failed()`. Each run of consecutive chunks smaller than `join_below` becomes one bytes object (a copy;
        the queue then holds the joined object instead of the parts), because a memcpy of a few KiB costs less
        than an iovec entry; chunks of `join_below` bytes or more go by reference. At most `max_iov` buffers;
        at most `max_batch_bytes`, except that the first chunk always goes whole (the kernel takes what fits
        and the rest is resubmitted). So bytes are copied at most once, except a small mutable write (copied
        in write()) that is later joined: that is a second copy of fewer than `join_below` bytes.
        """
        if self._inflight is not None or not self._buffered:
            return None
        chunks = self._chunks
        if len(chunks) == 1:
            # The common case on a fast connection: one write, one send, no copy.
            off = self._offset
            head = chunks[0]
            views = [memoryview(head)[off:] if off else memoryview(head)]
            self._inflight = views
            self._inflight_n = self._buffered
            return views
        return self._gather()

    def _gather(self) -> list[memoryview]:
        """next_send() for two or more queued chunks: pick, join and mark in flight."""
        chunks = self._chunks
        off = self._offset
        buffered = self._buffered
        if buffered <= self._max_batch_bytes and max(map(len, chunks)) < self._join_below:
            # The usual burst (many small messages written while a send was in flight): everything fits one
            # batch and all of it is to be joined, so do it in one C-level join instead of the loop below.
            if off:
                chunks[0] = memoryview(chunks[0])[off:]
                self._offset = 0
            whole = b"".join(chunks)
            chunks.clear()
            chunks.append(whole)
            views = [memoryview(whole)]
            self._inflight = views
            self._inflight_n = buffered
            return views
        max_bytes = self._max_batch_bytes
        max_iov = self._max_iov
        join_below = self._join_below
        out: list[_Chunk] = []  # the buffers of this send, in order
        run: list[_Chunk] = []  # consecutive small chunks not yet flushed into `out`
        total = 0
        taken = 0  # chunks of the queue covered by this send
        joined = False
        for chunk in chunks:
            piece: _Chunk = memoryview(chunk)[off:] if (off and not taken) else chunk
            size = len(piece)
            if taken and total + size > max_bytes:
                break
            if size < join_below:
                if not run and len(out) >= max_iov:
                    break
                run.append(piece)
            else:
                if len(out) + (1 if run else 0) >= max_iov:
                    break
                if run:
                    if len(run) == 1:
                        out.append(run[0])
                    else:
                        out.append(b"".join(run))
                        joined = True
                    run = []
                out.append(piece)
            total += size
            taken += 1
        if run:
            if len(run) == 1:
                out.append(run[0])
            else:
                out.append(b"".join(run))
                joined = True
        if joined:
            # Hold the joined objects instead of their parts: the parts are released now (their bytes were
            # copied) and `completed()` walks the same byte sequence over fewer, larger chunks.
            chunks[:taken] = out
            self._offset = 0
        views = [memoryview(p) for p in out]
        self._inflight = views
        self._inflight_n = total
        return views

    def completed(self, n: int) -> bool:
        """The send in flight completed with `n` bytes (0 <= n <= submitted); return True to resume writing.

        Advances the stream by exactly `n`; a remainder goes out first on the next `next_send()`.
        Raises `SendQueueUsageError` if no send is in flight or `n` is out of range.
        """
        if self._inflight is None:
            raise SendQueueUsageError(f"completed({n!r}) with no send in flight")
        if not 0 <= n <= self._inflight_n:
            raise SendQueueUsageError(
                f"completed({n!r}) for a send of {self._inflight_n} bytes: the count must be 0..{self._inflight_n}"
            )
        # Dropping the views here is what releases a finished send's buffers.
        self._inflight = None
        if self._closed:
            return False
        if n:
            self._buffered -= n
            chunks = self._chunks
            off = self._offset + n
            size = len(chunks[0])
            if off < size:
                self._offset = off
            else:
                # Count the chunks the send finished, then drop them in one deletion (not one pop(0) each).
                done = 1
                off -= size
                # n <= bytes queued, so the list cannot run dry while off > 0.
                while off:
                    size = len(chunks[done])
                    if off < size:
                        break
                    done += 1
                    off -= size
                del chunks[:done]
                self._offset = off
        if self._paused and self._buffered <= self._low:
            self._paused = False
            return True
        return False

    def failed(self, errno_: int) -> bool:
        """The send in flight failed with nothing sent (`errno_` > 0, i.e. ``-cqe.res``).

        Returns True if the same bytes can go again (EAGAIN, EWOULDBLOCK, EINTR, ECANCELED: see
        `RETRYABLE_ERRNOS`); the in-flight mark is cleared and the next `next_send()` resubmits them.
        Any other errno kills the queue: everything is dropped, `error` is set, later writes raise, and the
        transport must abort the connection (a stream with a gap is worse than a closed one). Returns False
        then, and also for any failure arriving after close()/abort().
        """
        if self._inflight is None:
            raise SendQueueUsageError(f"failed({errno_!r}) with no send in flight")
        if errno_ <= 0:
            raise SendQueueUsageError(f"failed() takes a positive errno (-cqe.res), got {errno_!r}")
        self._inflight = None
        if self._closed:
            return False
        if errno_ in RETRYABLE_ERRNOS:
            return True
        self._error = errno_
        self._drop()
        return False

    # -- state --------------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> bool:
        """True between `next_send()` returning buffers and their `completed()`/`failed()`."""
        return self._inflight is not None

    @property
    def buffered(self) -> int:
        """Bytes written but not yet confirmed sent, including those of the send in flight."""
        return self._buffered

    @property
    def drained(self) -> bool:
        """Nothing queued and nothing in flight: a graceful close can proceed."""
        return not self._buffered and self._inflight is None

    @property
    def closed(self) -> bool:
        """True after close(), abort() or a fatal send error; writes raise from then on."""
        return self._closed

    @property
    def error(self) -> int | None:
        """The errno of the fatal send error that killed the queue, if any."""
        return self._error

    @property
    def paused(self) -> bool:
        """True between a reported pause and the matching reported resume."""
        return self._paused

    @property
    def chunk_count(self) -> int:
        """Number of buffers the queue currently holds (diagnostics and tests)."""
        return len(self._chunks)

    # -- flow control (asyncio semantics) -----------------------------------------------------------------

    def set_limits(self, high: int | None = None, low: int | None = None) -> bool:
        """Set the write buffer limits like asyncio's ``set_write_buffer_limits()``.

        high defaults to 64 KiB (or 4 * low if only low is given), low to high // 4; ValueError unless
        high >= low >= 0. Returns True if the new limits require pausing now. Like asyncio, raising the limits
        while paused does not resume at once: the next completion that brings `buffered` to low or below does.
        """
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low
        if self._buffered > high and not self._paused and not self._closed:
            self._paused = True
            return True
        return False

    def get_limits(self) -> tuple[int, int]:
        """(low, high), in the order of asyncio's ``get_write_buffer_limits()``."""
        return self._low, self._high

    # -- the end ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Orderly end, normally once `drained`: refuse writes and drop whatever is left.

        A send still in flight keeps its buffers referenced until its completion arrives (the kernel may
        still read them); that completion is then accepted and ignored.
        """
        self._drop()

    def abort(self) -> None:
        """Abrupt end: like close(), whatever is queued is dropped (in-flight buffers live until their CQE)."""
        self._drop()

    def _drop(self) -> None:
        self._closed = True
        self._chunks.clear()
        self._offset = 0
        self._buffered = 0
        # A dead queue never resumes the protocol; connection_lost() ends it instead.
        self._paused = False

    def _closed_error(self) -> SendQueueClosedError:
        if self._error is not None:
            name = errno.errorcode.get(self._error, str(self._error))
            return SendQueueClosedError(f"write() after a fatal send error ({name}); the connection is dead")
        return SendQueueClosedError("write() after close() or abort(); open a new connection to send more")

    def __repr__(self) -> str:
        state = "failed" if self._error is not None else "closed" if self._closed else "open"
        return (
            f"<SendQueue {state} buffered={self._buffered} chunks={len(self._chunks)} "
            f"in_flight={self._inflight_n if self._inflight is not None else None} paused={self._paused}>"
        )


def _own(data: object) -> _Chunk:
    """Turn a bytes-like object into a chunk the caller cannot change: by reference if immutable, else a copy."""
    if isinstance(data, bytes):
        return data  # a bytes subclass: still immutable
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like object, not str (encode it first)")
    view = memoryview(data)  # type: ignore[arg-type]  # TypeError for anything that is not a buffer
    if view.readonly and isinstance(view.obj, bytes) and view.c_contiguous:
        # A view of bytes cannot change under us: keep it, without a copy.
        if view.ndim == 1 and view.format == "B":
            return view
        return view.cast("B")
    # bytearray, a view of one, array.array, mmap, or a strided view: the caller may reuse it after write().
    return view.tobytes()
