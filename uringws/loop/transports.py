"""The ring-native stream transport (TCP v4/v6, Unix stream sockets): the ordered, loss-free send path.

Writes go through a `SendQueue` (docs/design.md §3): exactly one SEND (one buffer) or SENDMSG (iovec) is in flight
per socket; its completion advances the stream by exactly ``res`` bytes and the remainder goes out before
anything newer. ``-EAGAIN`` waits for POLLOUT before the resubmit (resubmitting at once would spin), ``-EINTR``
and ``-ECANCELED`` resubmit, any other error aborts the connection: a stream with a gap is worse than a closed one.

When nothing is in flight, bytes leave through a plain ``send(2)``/``sendmsg(2)`` with MSG_DONTWAIT (the
"direct send"; it cannot overtake anything) and only a remainder becomes the ring send. Writes under
`_DEFER_BELOW` bytes are not sent from write() but just before the loop next waits in the kernel (a
``RingSelector.before_wait`` hook), so that everything written in one loop iteration -- a burst of replies to
one received segment, a TLS layer's records, a broadcast -- costs one syscall per socket, not one per write.
A write made while the loop runs those hooks (``loop.in_before_wait``: a TLS layer handing down the records it
coalesced) is the last one before the wait, and goes at once when nothing is queued or in flight.

Reads keep an idle connection cheap: a one-shot POLLIN poll, then one non-blocking ``recv_into`` straight into the
protocol's buffer (BufferedProtocol), or one ``recv`` of up to `READ_SIZE` bytes (Protocol: the kernel copies
straight into the bytes object handed to data_received; a loop-wide scratch buffer plus a copy measured ~40%
more server CPU per MiB). No memory is reserved per idle connection. (A multishot poll was tried and dropped: a
short read does not prove the socket empty, since a FIN that came in the same wake-up shows only at the next
recv, so every wake-up would need a read until EAGAIN.) Provided buffer rings could replace the poll + recv
later (probe-gated); `_arm_read` is the place.

Ring reads (the loop's ``read_mode == "ring"``, Linux 6.0+): one multishot RECV per connection picks buffers from
the loop's shared `BufferRing` only when data arrives, so idle connections still hold no receive buffer. Where the
ring is incremental (6.12+) a CQE covers as many bytes as the socket had ready (up to what is left of a 256 KiB
buffer) and small messages share a buffer, instead of one 16 KiB buffer per CQE. Each
CQE is delivered straight from the completion callback (``data_received(bytes)``, or copied into the
BufferedProtocol's ``get_buffer()``, or lent as a view valid during the call to a BufferedProtocol that has
``received_view(view)``), and the buffer goes back to the ring at once (an incremental ring's buffer once the
kernel has filled it to its end). pause_reading() cancels the
RECV; whatever still arrives is copied aside (the shared buffer is recycled) and delivered, in order, after
resume_reading(). The request ends on EOF (``res == 0``), on ``-ENOBUFS`` (the ring ran dry; the bytes stay in the
socket) or whenever the kernel stops it: it is re-armed while reading.

The fd is closed only after every ring operation that names it has completed: an SQE still queued or in flight
when the fd number is reused by a new socket would otherwise read from, or send into, the wrong connection.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import warnings
from asyncio import constants, futures, protocols, transports, trsock
from typing import TYPE_CHECKING, Any

from ..ring import fast as _fast
from . import compat
from .sendqueue import SendQueue

__all__ = ["READ_SIZE", "ReadStats", "RingSocketTransport", "SendStats"]

log = logging.getLogger("uringws.loop")

#: most bytes one read hands to Protocol.data_received() (asyncio's selector transport reads 256 KiB too)
READ_SIZE = 256 * 1024

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_SEND_FLAGS = socket.MSG_NOSIGNAL  # never SIGPIPE; io_uring itself tries non-blocking first
_DIRECT_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL  # the socket is blocking (O_NONBLOCK cleared)
# write()s shorter than this wait for the end of the loop iteration so that they share one send(2); longer
# ones go at once when nothing is queued (a full TLS record is 16 KiB of plaintext plus its overhead).
_DEFER_BELOW = 16 * 1024
_ECANCELED = errno.ECANCELED
_ENOBUFS = errno.ENOBUFS
_EINTR = errno.EINTR
_F_BUFFER = 1  # IORING_CQE_F_BUFFER
_F_MORE = 2  # IORING_CQE_F_MORE
_F_SOCK_NONEMPTY = 4  # IORING_CQE_F_SOCK_NONEMPTY: more bytes were already waiting (another CQE follows)
_F_BUF_MORE = 16  # IORING_CQE_F_BUF_MORE: an incremental ring's buffer that the kernel goes on filling
_BUFFER_SHIFT = 16  # IORING_CQE_BUFFER_SHIFT
_EAGAIN = errno.EAGAIN
_SERVER_ATTACH_TAKES_TRANSPORT = compat.SERVER_ATTACH_TAKES_TRANSPORT
_set_nodelay = compat.set_nodelay
_set_result_unless_cancelled = compat.set_result_unless_cancelled
# The compiled twin of RingSocketTransport._on_recv (uringws/ring/_ringc.c), and the ring type it is made for:
# both None where the compiled ring core is off (URINGWS_PURE=1, not built).
_RecvHook: Any = _fast.RecvHook
_CompiledRingCore: Any = _fast.CoreRing

# The compiled twins of RingSocketTransport.write's direct send and queueing, and of _flush's direct send (None
# where the compiled ring core is off).
_TransportWrite: Any = _fast.TransportWrite
_TransportFlush: Any = _fast.TransportFlush

# States of the send side. At most one operation of the send side is outstanding at any time.
_IDLE = 0  # nothing in flight
_SENDING = 1  # a SEND/SENDMSG is in flight
_WAIT_WRITABLE = 2  # the last send failed with EAGAIN; a POLLOUT poll is in flight, the resubmit follows it


class SendStats:
    """Counters of the send path, per loop (tests use them to prove they exercised short completions)."""

    __slots__ = ("direct_sends", "direct_short", "eagain", "max_queued", "resent_bytes", "retries", "send_bytes",
                 "sends", "short_sends")

    def __init__(self) -> None:
        self.sends = 0  # SEND/SENDMSG submitted to the ring
        self.send_bytes = 0  # bytes confirmed by their completions
        self.short_sends = 0  # completions with 0 <= res < submitted
        self.eagain = 0  # completions with -EAGAIN (followed by a POLLOUT wait)
        self.retries = 0  # completions with -EINTR / -ECANCELED, resubmitted
        self.direct_sends = 0  # write() fast path: send(2) with MSG_DONTWAIT while nothing was queued
        self.direct_short = 0  # ... that took only part of the data
        self.resent_bytes = 0  # bytes a short send (ring or direct) left behind, submitted again after it
        self.max_queued = 0  # the most bytes one transport had waiting for the kernel when it sent (high-water)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"SendStats({self.as_dict()})"


class ReadStats:
    """Counters of the ring read path, per loop (tests use them to prove what they exercised)."""

    __slots__ = ("arms", "enobufs", "held", "poll_reads", "restarts")

    def __init__(self) -> None:
        self.arms = 0  # multishot RECVs submitted
        self.enobufs = 0  # RECVs ended by -ENOBUFS (buffer ring dry), re-armed
        self.restarts = 0  # RECVs that ended for another reason while reading (data, EINTR, ...), re-armed
        self.held = 0  # chunks copied aside: arrived while paused, or joined with the next (F_SOCK_NONEMPTY)
        self.poll_reads = 0  # polls armed instead of a RECV after -ENOBUFS (then one recv(2) of our own)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return f"ReadStats({self.as_dict()})"


if TYPE_CHECKING:
    _FlowControlMixin = Any  # typeshed does not describe asyncio's private transport internals used here
else:
    _FlowControlMixin = compat.FlowControlMixin


class RingSocketTransport(_FlowControlMixin, transports.Transport):
    """asyncio stream transport whose sends are io_uring operations with exactly one in flight per socket.

    A `_FlowControlMixin` only because asyncio's sendfile fallback insists on one; the flow control itself
    (limits, pause/resume crossings) is the SendQueue's.
    """

    # Slots for its own attributes: with more than ~30 of them every instance would carry its own dict (about 1.5 KiB
    # per connection, measured with tracemalloc at 1000 idle TLS connections). __dict__ stays, made only when used,
    # for attributes others add (tests wrap write()); __weakref__: loop._transports is a WeakValueDictionary.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_buffered",
        "_bufring",
        "_cancel_sent",
        "_closing",
        "_conn_lost",
        "_direct_send",
        "_drain_scheduled",
        "_eof",
        "_flush_scheduled",
        "_held",
        "_ops",
        "_paused",
        "_protocol",
        "_protocol_connected",
        "_queue",
        "_read_cancelling",
        "_read_cb",
        "_read_eof",
        "_read_stats",
        "_read_ud",
        "_recv_hook",
        "_release_wanted",
        "_ring",
        "_selector",
        "_send_len",
        "_send_state",
        "_send_ud",
        "_server",
        "_sock",
        "_sock_fd",
        "_stats",
        "_view_sink",
    )

    _start_tls_compatible = True
    # loop.sendfile() asks the loop's _sendfile_native() first, as for asyncio's socket transport: without a native
    # path it raises SendfileNotAvailableError, which fallback=False passes on (FALLBACK would make it RuntimeError)
    _sendfile_compatible = compat.SendfileMode.TRY_NATIVE

    def __init__(self, loop: Any, sock: socket.socket, protocol: protocols.BaseProtocol,
                 waiter: futures.Future[Any] | None = None, extra: dict[str, Any] | None = None,
                 server: Any = None, *, direct_send: bool | None = None) -> None:
        super().__init__(extra, loop)  # type: ignore[call-arg]  # (_FlowControlMixin's signature)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._loop = loop
        self._ring = loop._ring
        self._selector = loop._selector
        self._stats: SendStats = loop.send_stats
        self._sock: socket.socket | None = sock  # None once closed
        self._sock_fd = sock.fileno()
        self._direct_send = loop.direct_send if direct_send is None else direct_send
        self._queue = SendQueue()
        self._send_state = _IDLE
        self._send_ud = 0
        self._send_len = 0
        self._flush_scheduled = False
        self._read_ud: int | None = None
        # Ring reads: the loop's BufferRing (None: poll + recv), data held while paused (bytes; an int ends it:
        # 0 = EOF, -errno = error), whether a cancel of the RECV is on its way, a scheduled delivery of _held.
        self._bufring: Any = getattr(loop, "_bufring", None)
        # The RECV's completion callback: _on_recv in C (a RecvHook per arm) on the compiled ring, unless a
        # subclass replaced _on_recv; else the Python method, its pure twin.
        self._recv_hook: Any = (_RecvHook if _RecvHook is not None and isinstance(self._ring, _CompiledRingCore)
                                and type(self)._on_recv is RingSocketTransport._on_recv else None)
        self._read_stats: ReadStats | None = getattr(loop, "read_stats", None)
        self._held: list[bytes | int] = []
        self._read_cancelling = False
        self._drain_scheduled = False
        self._buffered = False
        self._view_sink: Any = None
        self._ops = 0  # ring operations naming our fd that have not completed yet
        self._release_wanted = False  # close the fd as soon as _ops drops to 0
        self._cancel_sent = False
        self._paused = False  # pause_reading()
        self._read_eof = False  # EOF received and eof_received() asked to keep the connection half-open
        self._closing = False
        self._conn_lost = 0
        self._eof = False  # write_eof() called
        self._protocol_paused = False  # pause_writing() told to the protocol (read by asyncio's sendfile)
        self._protocol: Any = None
        self._protocol_connected = False
        self._read_cb: Any = None
        self.set_protocol(protocol)
        self._server = server
        # asyncio sets O_NONBLOCK; a SENDMSG punted to io-wq would then fail with EAGAIN (docs/design.md §2). Our
        # direct syscalls pass MSG_DONTWAIT instead.
        sock.setblocking(True)
        _set_nodelay(sock)
        if server is not None:
            if _SERVER_ATTACH_TAKES_TRANSPORT:
                server._attach(self)
            else:
                server._attach()
        loop._transports[self._sock_fd] = self
        loop.call_soon(protocol.connection_made, self)
        loop.call_soon(self._start_reading)  # only once connection_made() ran
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        info.append(f"read={('idle' if self._read_ud is None else 'recv' if self._bufring is not None else 'polling')}")
        info.append(f"write=<{('idle', 'sending', 'wait-writable')[self._send_state]}, "
                    f"bufsize={self._queue.buffered}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Any = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)  # unset if __init__ failed early
        if sock is not None and not self._ops:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()
            self._sock = None
            if self._server is not None:
                self._server._detach(self) if _SERVER_ATTACH_TAKES_TRANSPORT else self._server._detach()

    # -- protocol / state ---------------------------------------------------------------------------------
    def set_protocol(self, protocol: protocols.BaseProtocol) -> None:
        if isinstance(protocol, protocols.BufferedProtocol):
            self._read_cb = self._read_into_protocol
            self._buffered = True
            # Optional extension of BufferedProtocol (uringws's TLSProtocol has it): received_view(view) takes
            # ring reads as a view of the loop's receive buffer, valid only during the call -- one copy fewer
            # than get_buffer() + buffer_updated().
            self._view_sink = getattr(protocol, "received_view", None)
        else:
            self._read_cb = self._read_data_received
            # A plain Protocol may have received_view(view) too (uringws's WebSocket connection does): then ring
            # reads go to it as views of the receive buffer, as for a BufferedProtocol, instead of a bytes copy
            # per read (and a join of the reads a busy socket held back). Poll-based reads keep data_received().
            self._view_sink = getattr(protocol, "received_view", None)
            self._buffered = self._view_sink is not None
        self._protocol = protocol
        self._protocol_connected = True

    def get_protocol(self) -> protocols.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def get_write_buffer_size(self) -> int:
        return self._queue.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._queue.get_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._queue.set_limits(high, low):
            self._pause_protocol()

    def can_write_eof(self) -> bool:
        return True

    # -- reading ------------------------------------------------------------------------------------------
    def _start_reading(self) -> None:
        if self.is_reading() and not self._read_eof:
            self._arm_read()

    def _arm_read(self) -> None:
        if self._read_ud is None and not self._release_wanted and not self._selector.closing:
            bufring = self._bufring
            if bufring is not None:
                hook = self._recv_hook
                self._read_ud = self._ring.recv_select(self._sock_fd, bufring.bgid,
                                                       self._on_recv if hook is None else hook(self, bufring))
                self._read_stats.arms += 1  # type: ignore[union-attr]
            else:
                self._read_ud = self._ring.poll_add(self._sock_fd, _POLLIN, self._on_readable)
            self._ops += 1

    def _arm_poll_read(self) -> None:
        """One POLLIN poll, then one recv(2) into our own buffer, then back to the ring RECV (`_on_readable`)."""
        if self._read_ud is None and not self._release_wanted and not self._selector.closing:
            self._read_ud = self._ring.poll_add(self._sock_fd, _POLLIN, self._on_readable)
            self._ops += 1
            self._read_stats.poll_reads += 1  # type: ignore[union-attr]

    # -- ring reads (multishot RECV from the loop's BufferRing) -------------------------------------------
    def _on_recv(self, res: int, flags: int) -> None:
        # The pure twin of the compiled RecvHook (uringws/ring/_ringc.c), which the compiled ring calls instead:
        # change both together (tests/loop/test_recv_hook.py runs the same cases through each).
        if (res > 0 and (self._buffered or not flags & _F_SOCK_NONEMPTY) and not self._closing and not self._paused
                and not self._held):
            # The hot path: data for a reading connection with nothing held back. (More bytes already in the
            # socket only matter to a data_received() protocol, whose chunks are joined; a buffered protocol
            # takes each one straight from the ring buffer, without the copy aside.)
            bufring = self._bufring
            # bufring.take(res, flags), inlined (once per message): where the bytes are; an incremental ring's
            # buffer comes back in several CQEs, each starting where the last one ended.
            bid = flags >> _BUFFER_SHIFT
            offsets = bufring.offsets
            start = offsets[bid]
            if flags & _F_BUF_MORE:
                offsets[bid] = start + res
            elif start:
                offsets[bid] = 0
            start += bid * bufring.size
            if self._buffered:
                view = bufring.view[start:start + res]
                try:
                    # self._feed_view(view), inline (once per received chunk)
                    sink = self._view_sink
                    if sink is None:
                        self._feed_buffered(view)
                    else:
                        try:
                            sink(view)
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                            self._fatal_error(exc, "Fatal error: protocol.received_view() call failed.")
                finally:
                    # Released at once: a traceback that keeps this frame alive must not pin the loop's mmap.
                    view.release()
                    if not flags & _F_BUF_MORE:  # the kernel is done with it: bufring.release(bid, flags)
                        bufring.recycle(bid)
            else:
                data = bufring.mm[start:start + res]  # one copy, straight into a new bytes object
                if not flags & _F_BUF_MORE:
                    # bufring.recycle(bid), inlined: publish the entry, then the tail.
                    tail = bufring._tail
                    off = (tail & bufring._mask) << 4
                    bufring._ring_view[off:off + 14] = bufring._entries[bid]
                    bufring._tail = tail = tail + 1
                    bufring._tail_view[0] = tail & 0xFFFF
                try:
                    self._protocol.data_received(data)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            if not flags & _F_MORE:
                self._recv_ended()
                if not self._closing and not self._paused and not self._read_eof:
                    self._read_stats.restarts += 1  # type: ignore[union-attr]
                    self._arm_read()
            return
        self._on_recv_slow(res, flags)

    def _recv_ended(self) -> None:
        self._ops -= 1
        self._read_ud = None
        self._read_cancelling = False

    def _on_recv_slow(self, res: int, flags: int) -> None:
        final = not flags & _F_MORE
        data: bytes | None = None
        if flags & _F_BUFFER:
            bufring = self._bufring
            bid, start = bufring.take(res, flags)
            if res > 0:
                data = bytes(bufring.view[start:start + res])
            bufring.release(bid, flags)
        if final:
            self._recv_ended()
        if self._release_wanted:
            if final:
                self._maybe_release()
            return
        if self._closing or self._selector.closing or self._read_eof:
            return  # close() stops reading (like asyncio's transports): later bytes are discarded
        if data is not None:
            self._held.append(data)
            self._read_stats.held += 1  # type: ignore[union-attr]
        elif final and res <= 0 and res not in (-_ECANCELED, -_ENOBUFS, -_EINTR, -_EAGAIN):
            self._held.append(res)  # EOF (0) or an error, in stream order after the held data
        if res == -_ENOBUFS:
            self._read_stats.enobufs += 1  # type: ignore[union-attr]
        if not self._paused:
            # Bytes followed by more bytes already in the socket (F_SOCK_NONEMPTY) wait for them, so that
            # data_received() sees one larger chunk, as from one large recv(2) -- but never past this loop
            # iteration (call_soon). Otherwise deliver now. An EOF/error while paused waits behind held bytes.
            if data is not None and flags & _F_SOCK_NONEMPTY and not final and not self._buffered:
                if not self._drain_scheduled:
                    self._drain_scheduled = True
                    self._loop.call_soon(self._resume_held)
            else:
                self._drain_held()
        if final and not self._paused and not self._closing and not self._read_eof and not self._read_ud:
            if res == -_ENOBUFS and not self._held:
                # The shared ring ran dry (many busy connections). Re-arming the RECV would retry in submission
                # order, and whoever is late in that order finds the buffers taken again and again (a canary
                # among 300 pushing clients waited seconds): one poll + recv(2) of our own reads this socket
                # as soon as it is readable, whatever the others do.
                self._arm_poll_read()
                return
            if res != -_ECANCELED and res != -_ENOBUFS:
                self._read_stats.restarts += 1  # type: ignore[union-attr]
            self._arm_read()

    def _drain_held(self) -> None:
        """Deliver held chunks (and a held EOF/error) in order while reading is not paused."""
        self._drain_scheduled = False
        held = self._held
        while held and not self._paused and not self._closing and self._sock is not None:
            item: Any = held.pop(0)
            if type(item) is int:
                held.clear()
                if item == 0:
                    self._on_eof()
                else:
                    self._fatal_error(OSError(-item, os.strerror(-item)), "Fatal read error on socket transport")
                return
            if self._buffered:
                with memoryview(item) as view:  # released after the call, like a view of the ring's buffers
                    self._feed_view(view)
            else:
                # Consecutive chunks go to data_received() as one, like a recv(2) of everything queued.
                n = 1
                while n < len(held) and type(held[n]) is bytes:
                    n += 1
                chunk = item if n == 1 else b"".join([item, *held[:n - 1]])  # type: ignore[list-item]
                del held[:n - 1]
                try:
                    self._protocol.data_received(chunk)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                    self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                    return

    def _feed_view(self, view: memoryview) -> None:
        """Hand ``view`` (valid only during this call) to a BufferedProtocol: lent to its received_view(), or
        copied into its get_buffer() buffers."""
        sink = self._view_sink
        if sink is None:
            self._feed_buffered(view)
            return
        try:
            sink(view)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal error: protocol.received_view() call failed.")

    def _feed_buffered(self, view: memoryview) -> None:
        """Copy ``view`` into the BufferedProtocol's buffers; what is left when it pauses (or fails) is held."""
        protocol = self._protocol
        total = len(view)
        done = 0
        while done < total:
            if self._paused or self._closing:
                if not self._closing:
                    self._held.insert(0, bytes(view[done:]))  # goes before anything held later
                return
            try:
                buf = protocol.get_buffer(total - done)
                size = len(buf)
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
                return
            n = total - done
            if n > size:
                n = size
            buf[:n] = view[done:done + n]
            done += n
            try:
                protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
                return

    def _on_readable(self, res: int, flags: int) -> None:
        self._ops -= 1
        self._read_ud = None
        if self._release_wanted:
            self._maybe_release()
            return
        if self._closing or self._paused or self._read_eof or self._selector.closing:
            return
        if res == -_ECANCELED:
            self._arm_read()  # not ours (we only cancel when releasing): poll again
            return
        # res < 0 otherwise: let recv() report the error.
        self._read_cb()
        if not self._closing and not self._paused and not self._read_eof:
            self._arm_read()

    def pause_reading(self) -> None:
        # The outstanding poll, if any, stays: when it fires while paused it is ignored, and resume re-arms.
        # A multishot RECV is cancelled; bytes it still delivers are held for resume_reading().
        if not self.is_reading():
            return
        self._paused = True
        if (self._bufring is not None and self._read_ud is not None and not self._read_cancelling
                and not self._selector.closing):
            self._read_cancelling = True
            self._ring.cancel(self._read_ud)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if self._held:
            # Not from inside resume_reading(): the protocol may be in the middle of something.
            if not self._drain_scheduled:
                self._drain_scheduled = True
                self._loop.call_soon(self._resume_held)
        elif not self._read_eof:
            self._arm_read()

    def _resume_held(self) -> None:
        self._drain_held()
        if not self._held and not self._paused and not self._closing and not self._read_eof:
            self._arm_read()

    def _read_into_protocol(self) -> None:
        protocol = self._protocol
        try:
            buf = protocol.get_buffer(-1)
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        try:
            n = self._sock.recv_into(buf, 0, socket.MSG_DONTWAIT)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not n:
            self._on_eof()
            return
        try:
            protocol.buffer_updated(n)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    def _read_data_received(self) -> None:
        try:
            data = self._sock.recv(READ_SIZE, socket.MSG_DONTWAIT)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal read error on socket transport")
            return
        if not data:
            self._on_eof()
            return
        try:
            self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")

    def _on_eof(self) -> None:
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if keep_open:
            self._read_eof = True  # half-closed: keep writing, stop polling for input
        else:
            self.close()

    # -- writing ------------------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if type(data) is not bytes:
            # Count and slice in bytes: a memoryview of wider items (array('I'), a 2-D view) measures len() and
            # slices in items, which would make a complete direct send look short and resend the wrong bytes.
            view = memoryview(data)
            data = view.cast("B") if view.c_contiguous else view.tobytes()
        if not data:
            return
        queue = self._queue
        # The queue's fields are read directly (its `closed`/`drained` properties, inlined): write() runs once
        # per message and a property call costs as much as the rest of this test.
        if self._conn_lost or queue._closed:
            # Once per transport and at debug, unlike asyncio's warning per write: a broadcast goes on writing to
            # a connection that just went away until its close reaches the application, and one line per
            # message per lost peer flooded the log of a busy /broadcast room.
            if self._conn_lost == constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                log.debug("%r: write() after the connection was lost; this and later writes are dropped", self)
            self._conn_lost += 1
            return
        if ((len(data) >= _DEFER_BELOW or self._loop.in_before_wait) and self._direct_send
                and self._send_state == _IDLE and not queue._buffered and queue._inflight is None):
            # A large write with nothing queued or in flight goes now (it cannot overtake anything): coalescing
            # saves nothing at this size, and queueing it first would cross the high-water mark and pause the
            # protocol for bytes the kernel takes at once. So does any write from a before_wait hook (a TLS
            # layer's records of this iteration): the loop is about to wait, nothing else would join it.
            try:
                n = self._sock.send(data, _DIRECT_FLAGS)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                self._fatal_error(exc, "Fatal write error on socket transport")
                return
            if n == len(data):
                self._stats.direct_sends += 1
                return
            self._write_rest(data, n)
            return
        if queue.write(data):
            self._pause_protocol()
        if self._send_state == _IDLE and not self._flush_scheduled:
            # Small writes are sent just before the loop waits in the kernel, not now: every write of this loop
            # iteration (a burst of echoes, a broadcast's frames, a TLS layer's records) leaves in one send(2).
            self._flush_scheduled = True
            self._selector.before_wait.append(self._flush)

    def _write_rest(self, data: bytes | memoryview, n: int) -> None:
        """write() after a direct send of ``data`` that took ``n`` bytes (0 <= n < len(data)): the rest is queued,
        to go as the one ring send in flight. (Also called by the compiled write, `_ringc.TransportWrite`.)"""
        stats = self._stats
        stats.direct_sends += 1
        stats.direct_short += 1
        stats.resent_bytes += len(data) - n
        if n:
            data = memoryview(data)[n:]
        if self._queue.write(data):
            self._pause_protocol()
        if self._send_state == _IDLE and not self._flush_scheduled:
            self._flush_scheduled = True
            self._selector.before_wait.append(self._flush)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._send_state != _IDLE or self._release_wanted or self._selector.closing:
            return
        if not self._direct_send:
            self._submit_send()
            return
        # The direct send, inline (this hook runs once per message): the queue's next batch with one
        # sendmsg(2) (MSG_DONTWAIT); a remainder goes to the ring. Nothing is in flight (checked above), so this
        # send cannot overtake anything. Most sends on a healthy connection complete here, without a ring
        # operation and its completion callback.
        queue = self._queue
        bufs = queue.next_send()
        if bufs is None:
            return
        try:
            if len(bufs) == 1:
                n = self._sock.send(bufs[0], _DIRECT_FLAGS)  # type: ignore[union-attr]
            else:
                n = self._sock.sendmsg(bufs, (), _DIRECT_FLAGS)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            n = 0
        except (SystemExit, KeyboardInterrupt):
            queue.completed(0)
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            queue.completed(0)
            self._fatal_error(exc, "Fatal write error on socket transport")
            return
        stats = self._stats
        stats.direct_sends += 1
        if queue._buffered > stats.max_queued:  # before completed(): what waited when this send left
            stats.max_queued = queue._buffered
        if queue.completed(n):
            self._resume_protocol()
        if queue._buffered:
            self._flush_short(bufs, n)
        elif self._release_wanted or self._closing or self._eof:
            # Drained (all of it went): _after_send() has something to do only for these. Its call is skipped
            # in the common case, once per message.
            self._after_send()

    def _flush_short(self, bufs: list[memoryview], n: int) -> None:
        """_flush's direct send of ``bufs`` took only ``n`` bytes (the socket buffer is full): the rest goes as the
        one ring send in flight, which waits for room in the kernel instead of us polling."""
        stats = self._stats
        stats.direct_short += 1
        stats.resent_bytes += sum(map(len, bufs)) - n  # of this batch; bytes queued behind it were never sent
        if not self._queue._closed:
            self._submit_send()

    def _flush_rest(self, n: int) -> None:
        """The compiled _flush (`_ringc.TransportFlush`) sent the queue's one chunk directly and the kernel took
        ``n`` bytes of it (0 <= n < its size): on as _flush goes on after a short send. It takes its path only
        with the queue unpaused, so there is nothing to resume."""
        queue = self._queue
        bufs = queue.next_send()  # the chunk it sent from, in flight now as _flush has it
        assert bufs is not None
        stats = self._stats
        stats.direct_sends += 1
        if queue._buffered > stats.max_queued:
            stats.max_queued = queue._buffered
        queue.completed(n)
        self._flush_short(bufs, n)

    def _submit_send(self) -> None:
        """Submit the queue's next batch as the one send in flight (the remainder of a short send comes first)."""
        bufs = self._queue.next_send()
        if bufs is None:
            return
        if len(bufs) == 1:
            buf = bufs[0]
            self._send_len = len(buf)
            self._send_ud = self._ring.send(self._sock_fd, buf, self._on_sent, flags=_SEND_FLAGS)
        else:
            self._send_len = sum(map(len, bufs))
            self._send_ud = self._ring.sendmsg(self._sock_fd, bufs, self._on_sent, flags=_SEND_FLAGS)
        self._send_state = _SENDING
        self._ops += 1
        stats = self._stats
        stats.sends += 1
        # Once per send, not per write(): the queue is deepest when a send leaves, since writes only add to it.
        if self._queue._buffered > stats.max_queued:
            stats.max_queued = self._queue._buffered

    def _on_sent(self, res: int, flags: int) -> None:
        self._ops -= 1
        self._send_state = _IDLE
        if self._selector.closing:
            # The ring is being torn down with the loop: nothing may be scheduled or submitted any more.
            if self._release_wanted:
                self._maybe_release()
            return
        queue = self._queue
        stats = self._stats
        if res >= 0:
            stats.send_bytes += res
            if res < self._send_len:
                stats.short_sends += 1
                stats.resent_bytes += self._send_len - res
            if queue.completed(res):
                self._resume_protocol()
        else:
            err = -res
            if queue.failed(err):
                if err == _EAGAIN:
                    stats.eagain += 1
                    if not self._release_wanted and not self._selector.closing:
                        self._send_ud = self._ring.poll_add(self._sock_fd, _POLLOUT, self._on_writable)
                        self._send_state = _WAIT_WRITABLE
                        self._ops += 1
                        return
                else:
                    stats.retries += 1
            elif not queue.closed or queue.error is not None:
                self._fatal_error(OSError(err, os.strerror(err)), "Fatal write error on socket transport")
        self._after_send()

    def _on_writable(self, res: int, flags: int) -> None:
        self._ops -= 1
        self._send_state = _IDLE
        self._after_send()  # whatever the poll said, the resubmitted send reports the socket's state

    def _after_send(self) -> None:
        if self._release_wanted:
            self._maybe_release()
            return
        if self._selector.closing:
            return
        queue = self._queue
        if queue.drained:
            if self._closing and not self._conn_lost:
                self._conn_lost += 1
                self._loop.call_soon(self._call_connection_lost, None)
            elif self._eof:
                self._shutdown_write()
        elif not queue.closed and not self._flush_scheduled:
            self._flush_scheduled = True
            self._selector.before_wait.append(self._flush)

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError as exc:
            self._fatal_error(exc, "Fatal error on socket shutdown")

    def write_eof(self) -> None:
        if self._closing or self._eof:
            return
        self._eof = True
        if self._queue.drained and self._send_state == _IDLE:
            self._shutdown_write()

    def _pause_protocol(self) -> None:
        self._protocol_paused = True
        self._call_flow_control("pause_writing")

    def _resume_protocol(self) -> None:
        self._protocol_paused = False
        self._call_flow_control("resume_writing")

    def _call_flow_control(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })

    # -- closing ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop reading, send what is queued, then close the socket and call connection_lost(None)."""
        if self._closing:
            return
        self._closing = True
        if self._queue.drained and self._send_state == _IDLE and not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Drop what is queued and close now (an in-flight send is cancelled; the fd waits for its CQE)."""
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                log.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._queue.abort()
        self._closing = True
        self._conn_lost += 1
        if self._loop.is_closed():
            # The ring is gone with the loop (it reaped every operation): no callback can run any more, but
            # the socket can still be released.
            self._release_wanted = True
            self._ops = 0
            self._maybe_release()
            return
        self._cancel_ops()
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._queue.abort()
            self._release_wanted = True
            self._maybe_release()
            self._protocol = None
            # Bound methods of self and of the protocol: a cycle through us (freed only by the cycle collector),
            # and a link that would keep the protocol alive as long as we are.
            self._read_cb = None
            self._view_sink = None
            server = self._server
            if server is not None:
                server._detach(self) if _SERVER_ATTACH_TAKES_TRANSPORT else server._detach()
                self._server = None

    def _cancel_ops(self) -> None:
        """Ask the kernel to finish our outstanding operations early (their CQEs still arrive)."""
        if self._cancel_sent or self._selector.closing or not self._ops:
            return
        self._cancel_sent = True
        ring = self._ring
        if self._read_ud is not None:
            if self._bufring is not None:
                ring.cancel(self._read_ud)
            else:
                ring.poll_remove(self._read_ud)
        if self._send_state == _SENDING:
            ring.cancel(self._send_ud)
        elif self._send_state == _WAIT_WRITABLE:
            ring.poll_remove(self._send_ud)

    def _maybe_release(self) -> None:
        """Close the socket once no ring operation names its fd any more (see the module docstring)."""
        if self._sock is None:
            return
        if self._ops:
            self._cancel_ops()
            return
        self._sock.close()
        self._sock = None


#: RingSocketTransport.write, the Python function: the pure twin of the compiled write, which calls it for
#: everything but the direct send of bytes (and which tests compare it with).
write_py = RingSocketTransport.write
if _TransportWrite is not None:
    # write() in C for RingSocketTransport itself (a subclass's instances call write_py through it): its direct
    # send, once per message, without a Python frame or socket.send()'s argument parsing. A method descriptor, so
    # transport.write(data) makes no bound method.
    RingSocketTransport.write = _TransportWrite(  # type: ignore[method-assign]
        RingSocketTransport, write_py, _DEFER_BELOW, _DIRECT_FLAGS
    )

#: RingSocketTransport._flush, the Python function: the pure twin of the compiled flush.
flush_py = RingSocketTransport._flush
if _TransportFlush is not None:
    # _flush() in C for RingSocketTransport itself: the before-wait hook that sends what write() queued, once per
    # message of a small-message echo, without its four Python calls (next_send, socket.send, completed).
    RingSocketTransport._flush = _TransportFlush(  # type: ignore[method-assign]
        RingSocketTransport, flush_py, _DIRECT_FLAGS
    )
