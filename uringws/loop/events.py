"""The asyncio event loop on io_uring, with an epoll fallback.

`EventLoop` is asyncio's own unix selector loop driven by a `RingSelector`: add_reader/add_writer, signals,
subprocesses, pipes, UDP, executors and the sock_* methods all come from asyncio and run over io_uring polls.
TCP and Unix stream connections get the ring-native `RingSocketTransport` (its send path is the reason this
project exists). `call_soon_threadsafe` wakes the ring through an eventfd READ instead of the self-pipe; the
self-pipe stays because ``signal.set_wakeup_fd`` writes signal numbers into it.

`new_event_loop()` returns the ring loop when io_uring is usable here, else the same class over
`selectors.EpollSelector` (``backend == "epoll"``, stdlib transports), logging once why.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import selectors
import socket
import threading
import time as _time
from asyncio import base_events, constants, exceptions, sslproto
from asyncio.events import Handle, TimerHandle
from collections.abc import Callable
from contextvars import copy_context
from typing import TYPE_CHECKING, Any

from ..ring import bufring as _bufring
from ..ring.fast import RING_CLASS, RING_CLASSES
from ..ring.fast import CallSoon as _CallSoon
from ..ring.fast import RunOnce as _RunOnce
from ..ring.io_uring import IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER
from ..ring.probe import availability, kernel_version
from . import compat
from .selector import RingSelector
from .transports import ReadStats, RingSocketTransport, SendStats

__all__ = ["DEFAULT_RING_ENTRIES", "EventLoop", "new_event_loop"]

log = logging.getLogger("uringws.loop")

#: SQ entries of the loop's ring (the CQ gets 4x as many)
DEFAULT_RING_ENTRIES = 1024
#: the loop's provided receive buffers (ring reads): count x size bytes, shared by all its connections. Where
#: the kernel consumes buffers incrementally (6.12+) a receive takes only what it needs from a large buffer;
#: before that every CQE takes a whole buffer, so they stay small.
DEFAULT_RECV_BUFFERS = 256
DEFAULT_RECV_BUFFER_SIZE = 16384
# 4 MiB in all: the kernel fills buffers for every ready socket before the loop gets to the CQEs (one task-work
# run drains a socket), and a ring that runs dry ends each multishot RECV with -ENOBUFS. In the 1 MiB echo with two
# messages in flight 8 x 128 KiB ran dry about once per message (plain TCP 2.1-3.5 ns/B instead of 1.3-1.8),
# 8 x 256 KiB 64 times in 3 s, 16 x 256 KiB never. All of an incremental ring gets touched: ~0.8 KiB per
# connection at 5000 idle connections.
DEFAULT_RECV_BUFFERS_INCREMENTAL = 16
DEFAULT_RECV_BUFFER_SIZE_INCREMENTAL = 256 * 1024
#: multishot RECV with provided buffers (IORING_RECV_MULTISHOT) came with Linux 6.0
_MULTISHOT_RECV_KERNEL = (6, 0)
_READ_MODES = ("auto", "ring", "poll")

_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
_SENDFILE_BLOCK = 16384  # asyncio's fallback block size

# accept(2) failing with these means the process or system is out of something, not that one connection failed:
# the listening socket stays readable, so every retry before some fd frees fails the same way.
_ACCEPT_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
#: seconds between accept() retries while out of fds (asyncio's own pause)
ACCEPT_RETRY_DELAY: float = constants.ACCEPT_RETRY_DELAY
#: at most one warning per this many seconds about running out of fds: near the limit, each freed fd ends a
#: spell and the next connection starts another
ACCEPT_WARN_INTERVAL = 60.0

# asyncio's _run_once is the same algorithm in 3.11-3.13 (3.13 only reshaped the timeout clamp); EventLoop
# replaces it with a leaner copy there and leaves any other version's own.
_LEAN_RUN_ONCE = compat.LEAN_RUN_ONCE
_MIN_SCHEDULED_TIMER_HANDLES = compat.MIN_SCHEDULED_TIMER_HANDLES
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = compat.MIN_CANCELLED_TIMER_HANDLES_FRACTION
_MAXIMUM_SELECT_TIMEOUT = compat.MAXIMUM_SELECT_TIMEOUT
_SendfileFallbackProtocol = compat.SendfileFallbackProtocol
_format_callback_source = compat.format_callback_source
_new_handle = Handle.__new__


if TYPE_CHECKING:
    # typeshed does not describe asyncio's private hooks that this class overrides and calls.
    _UnixSelectorEventLoop = Any
    _StdSocketTransport = Any
else:
    _UnixSelectorEventLoop = compat.UnixSelectorEventLoop
    _StdSocketTransport = compat.SelectorSocketTransport


class _SelectorSocketTransport(_StdSocketTransport):
    """asyncio's selector stream transport (the epoll backend's), minus its self-reference once closed."""

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            super()._call_connection_lost(exc)
        finally:
            # Bound methods of self (3.11-3.12 never drop them; 3.13 does in close() but not abort()): each closed
            # connection's transport would wait for the cycle collector. _write_ready is one on 3.12+ only (the
            # write method chosen per socket); on 3.11 it is the class's method and stays.
            self._read_ready_cb = None
            if "_write_ready" in self.__dict__:
                self._write_ready = None


class _IterationFields:
    """The fields the loop's iteration reads (asyncio's, set by BaseEventLoop.__init__, and ours), as slots of a
    base of `EventLoop` rather than entries of the instance's __dict__, which stays for the rest.

    The compiled iteration and call_soon (ring._ringc.RunOnce, CallSoon) read a slot in place, a dozen times per
    iteration, where a __dict__ entry costs a type lookup and a dict lookup each time; Python code reads a slot
    faster too. (A base rather than EventLoop's own __slots__: type checkers would take those for all of its
    attributes.)
    """

    __slots__ = ("_clock_resolution", "_closed", "_debug", "_hook_selector", "_ready", "_scheduled", "_stock_time",
                 "_stopping", "_timer_cancelled_count", "in_before_wait")


class EventLoop(_IterationFields, _UnixSelectorEventLoop):
    """asyncio's unix selector event loop over io_uring (``backend="io_uring"``) or epoll (``"epoll"``).

    ``ring`` (an object with `Ring`'s interface, e.g. a fault-injecting double) or ``ring_factory(entries)``
    replaces the real ring; ``transport_class`` replaces the stream transport (tests); ``direct_send`` lets
    write() try one non-blocking send(2) while nothing is queued or in flight (False: every byte goes through
    the ring). Constructing it with the io_uring backend raises OSError where io_uring is unusable; use
    `new_event_loop()` to fall back automatically.

    ``read_mode`` picks how stream transports read: ``"ring"`` (a multishot RECV per connection over a
    `BufferRing` of ``recv_buffers`` x ``recv_buffer_size`` bytes shared by the loop; Linux 6.0+, raises
    OSError where unsupported; ``recv_incremental`` None uses incrementally consumed buffers where the kernel
    has them (6.12+; default 16 x 256 KiB, else 256 x 16 KiB), True insists (OSError without), False never),
    ``"poll"`` (a POLLIN poll, then recv(2): no shared buffers) or ``"auto"``
    (``"ring"`` where supported on a real `Ring` with the stock transport, else ``"poll"``: ring doubles such as
    FaultyRing and a ``transport_class`` replacement get ``"poll"``; the environment variable
    ``URINGWS_READ_MODE=poll`` turns ``"auto"`` into ``"poll"``). The mode in use is in ``loop.read_mode``.

    ``batch_wait`` (seconds, default 0: off) turns on completion batching: after an iteration in which two or more
    operations completed, the loop waits until ``batch_count`` (default 16) completions are pending or
    ``batch_wait`` has passed (never past its next timer). Less CPU per message under streaming load, up to
    ``batch_wait`` more latency where a few clients wait for each answer (docs/deployment.md, "Completion
    batching"). It needs Linux 6.1 (``IORING_SETUP_DEFER_TASKRUN``; ValueError without), and the loop must then
    run and close in the thread that created it (``IORING_SETUP_SINGLE_ISSUER``; RuntimeError otherwise).
    """

    # BaseEventLoop's own state, which _run_once() uses and typeshed does not declare (annotations only).
    _scheduled: list[Any]
    _timer_cancelled_count: int

    def __init__(self, *, backend: str = "io_uring", ring: Any = None,
                 ring_factory: Callable[[int], Any] | None = None, ring_entries: int = DEFAULT_RING_ENTRIES,
                 direct_send: bool = True, transport_class: type[RingSocketTransport] | None = None,
                 read_mode: str = "auto", recv_buffers: int | None = None, recv_buffer_size: int | None = None,
                 recv_incremental: bool | None = None, batch_wait: float = 0.0, batch_count: int = 16) -> None:
        if backend not in ("io_uring", "epoll"):
            raise ValueError(f"backend must be 'io_uring' or 'epoll', not {backend!r}")
        self._bufring: Any = None
        self.read_mode = "poll"
        self.read_stats = ReadStats()
        self._closed = True  # until asyncio's __init__ ran: lets __del__ cope with a failed construction
        if not 0.0 <= batch_wait <= 1.0:
            raise ValueError("batch_wait must be between 0 and 1 second")
        if batch_wait and backend == "epoll":
            raise ValueError("batch_wait needs the io_uring backend")
        # batch_wait's ring is bound to this thread (IORING_SETUP_SINGLE_ISSUER): its ident, else None
        self._ring_thread: int | None = None
        if read_mode not in _READ_MODES:
            raise ValueError(f"read_mode must be one of {_READ_MODES}, not {read_mode!r}")
        self.backend = backend
        self.send_stats = SendStats()
        self.direct_send = direct_send
        self._stream_transport_class = transport_class or RingSocketTransport
        self._efd: int | None = None
        self._efd_lock = threading.Lock()
        self._efd_buf = bytearray(8)
        self._ring: Any = None
        # The RingSelector whose before_wait hooks _run_once() runs itself (None on epoll), and whether it is
        # running them now: a transport's write() from a hook (a TLS layer handing down the records of this
        # iteration) is the last write before the wait, so it sends at once instead of adding a hook of its own.
        self._hook_selector: RingSelector | None = None
        self.in_before_wait = False
        # BaseEventLoop.time() is `return time.monotonic()`: a Python frame for a C call, up to twice per
        # iteration in _run_once(). It reads the clock itself (looked up per call, so a patched time.monotonic
        # is still seen) unless a subclass has a time() of its own.
        self._stock_time = type(self).time is base_events.BaseEventLoop.time
        # listening socket -> its accept pause (out of fds), until an accept() works again
        self._accept_paused: dict[socket.socket, _AcceptPause] = {}
        self._accept_warned_at: float | None = None
        self._accept_spells_unreported = 0
        selector: selectors.BaseSelector
        if backend == "epoll":
            if ring is not None or ring_factory is not None:
                raise ValueError("ring/ring_factory make no sense with the epoll backend")
            selector = selectors.EpollSelector()
        else:
            if ring is None and batch_wait and ring_factory is None:
                ring = _batching_ring(ring_entries)
            elif ring is None:
                ring = (ring_factory or RING_CLASS)(ring_entries)
            if batch_wait:
                if not getattr(ring, "setup_flags", 0) & IORING_SETUP_DEFER_TASKRUN:
                    if ring_factory is not None:
                        ring.close()  # ours (a ring passed in stays the caller's)
                    raise ValueError("batch_wait needs a ring set up with IORING_SETUP_DEFER_TASKRUN; the ring "
                                     "given (ring or ring_factory) was not")
                ring.batch_wait = batch_wait
                ring.batch_count = batch_count
                self._ring_thread = threading.get_ident()
            self._ring = ring
            ring.on_callback_error = self._on_ring_callback_error
            selector = RingSelector(ring)
        try:
            super().__init__(selector)
            if isinstance(selector, RingSelector):
                selector.loop_ready = self._ready  # BaseEventLoop's deque of ready handles
                self._hook_selector = selector
            if _CallSoon is not None and _LEAN_RUN_ONCE and type(self).call_soon is EventLoop.call_soon:
                # call_soon()'s lean path in C, as this instance's call_soon: asyncio's C Future and Task schedule
                # through it (a task's wake-up, once per message) without a Python frame. Debug mode and a closed
                # loop still take the method below (the C object calls it). Dropped by close().
                self.call_soon = _CallSoon(self, Handle, EventLoop.call_soon)  # type: ignore[method-assign]
            if _RunOnce is not None and _LEAN_RUN_ONCE and type(self)._run_once is EventLoop._run_once:
                # The iteration below in C, as this instance's _run_once (run_forever() calls it once per
                # iteration, once per message in a ping-pong). Debug mode and a heap to rebuild still take the
                # method (the C object calls it). Dropped by close().
                self._run_once = _RunOnce(  # type: ignore[method-assign]
                    self, EventLoop._run_once, Handle, TimerHandle, heapq.heappop, _time,
                    _MIN_SCHEDULED_TIMER_HANDLES, _MIN_CANCELLED_TIMER_HANDLES_FRACTION, _MAXIMUM_SELECT_TIMEOUT,
                )
            if self._ring is not None:
                self._efd = os.eventfd(0, os.EFD_CLOEXEC)
                self._arm_wakeup()
                self._setup_ring_reads(read_mode, recv_buffers, recv_buffer_size, recv_incremental)
        except BaseException:
            selector.close()
            if self._bufring is not None:
                self._bufring.close(ring_clean=not getattr(self._ring, "leaked", False))
                self._bufring = None
            raise

    def _setup_ring_reads(self, read_mode: str, count: int | None, size: int | None,
                          incremental: bool | None) -> None:
        if read_mode == "auto" and os.environ.get("URINGWS_READ_MODE", "").strip().lower() == "poll":
            return  # for comparisons (benchmarks) without changing code
        if read_mode == "poll":
            return
        why = ""
        if read_mode == "auto" and not isinstance(self._ring, RING_CLASSES):
            why = "the ring is not a uringws Ring (a test double)"
        elif read_mode == "auto" and self._stream_transport_class is not RingSocketTransport:
            # A replacement transport may hook the poll-based read path (_read_cb, _on_readable); it opts in
            # with read_mode="ring". (The naive-sender fixtures of the integrity tests are such subclasses.)
            why = "a custom transport_class"
        elif kernel_version()[:2] < _MULTISHOT_RECV_KERNEL:
            why = "multishot RECV needs Linux 6.0"
        elif not _bufring.supported():
            why = "provided buffer rings need ordered stores (x86-64) from pure Python"
        if not why:
            if incremental is not False:
                try:
                    self._bufring = _bufring.BufferRing(
                        self._ring, count=count or DEFAULT_RECV_BUFFERS_INCREMENTAL,
                        size=size or DEFAULT_RECV_BUFFER_SIZE_INCREMENTAL, incremental=True)
                except OSError as exc:  # EINVAL before Linux 6.12
                    if incremental:
                        raise OSError(f"recv_incremental=True is not available: {exc}") from exc
                    log.debug("uringws: receives take whole buffers: %s", exc)
            if self._bufring is None:
                try:
                    self._bufring = _bufring.BufferRing(self._ring, count=count or DEFAULT_RECV_BUFFERS,
                                                        size=size or DEFAULT_RECV_BUFFER_SIZE)
                except OSError as exc:
                    why = f"registering a provided buffer ring failed: {exc}"
        if why:
            if read_mode == "ring":
                raise OSError(f"read_mode='ring' is not available: {why}")
            log.debug("uringws: poll-based reads: %s", why)
            return
        self.read_mode = "ring"

    # -- one iteration ------------------------------------------------------------------------------------
    def _run_once(self) -> None:
        """asyncio's iteration (timers, select, ready callbacks) minus the work an idle timer heap and an empty
        event list do not need: no clock read without timers, no _process_events() call for no events.

        It runs once per message in a ping-pong, so its fixed cost is a per-message cost. Same order and same
        semantics as asyncio's: cancelled timers dropped from the heap head (or the heap rebuilt when most are
        cancelled), timeout 0 when callbacks are ready, due timers moved to the ready queue after select(), and
        only the callbacks ready at that point run (those they schedule wait for the next iteration). Debug
        mode (slow-callback warnings) uses asyncio's own.
        """
        if self._debug or not _LEAN_RUN_ONCE:
            super()._run_once()
            return
        scheduled = self._scheduled
        ready = self._ready
        if scheduled:
            sched_count = len(scheduled)
            if (sched_count > _MIN_SCHEDULED_TIMER_HANDLES
                    and self._timer_cancelled_count / sched_count > _MIN_CANCELLED_TIMER_HANDLES_FRACTION):
                new_scheduled = []
                for handle in scheduled:
                    if handle._cancelled:
                        handle._scheduled = False
                    else:
                        new_scheduled.append(handle)
                heapq.heapify(new_scheduled)
                self._scheduled = scheduled = new_scheduled
                self._timer_cancelled_count = 0
            else:
                while scheduled and scheduled[0]._cancelled:
                    self._timer_cancelled_count -= 1
                    handle = heapq.heappop(scheduled)
                    handle._scheduled = False
        # The selector's before_wait hooks (deferred sends), run here rather than in select() so that writes made
        # by them can tell (in_before_wait); first, so that a callback they schedule makes the wait non-blocking.
        selector = self._hook_selector
        if selector is not None and selector.before_wait:
            self.in_before_wait = True
            try:
                hooks = selector.before_wait
                while hooks:
                    # A hook may add hooks (a TLS layer's flush writes to its socket): run them all before waiting.
                    selector.before_wait = []
                    for hook in hooks:
                        hook()
                    hooks = selector.before_wait
            finally:
                self.in_before_wait = False
        timeout: float | None
        if ready or self._stopping:
            timeout = 0
        elif scheduled:
            timeout = scheduled[0]._when - (_time.monotonic() if self._stock_time else self.time())
            if timeout > _MAXIMUM_SELECT_TIMEOUT:
                timeout = _MAXIMUM_SELECT_TIMEOUT
            elif timeout < 0:
                timeout = 0
        else:
            timeout = None
        if selector is not None and not selector._dirty and not selector._ready:
            # RingSelector.select(), inline for its common case (once per iteration): the hooks ran above, no poll
            # to arm, no readiness left over; the wait runs the ring's completion callbacks. Readiness reported by
            # them (add_reader/add_writer polls) is taken the way select() takes it.
            selector.ring.wait(timeout)
            if selector._ready:
                self._process_events(selector.take_ready())
        else:
            event_list = self._selector.select(timeout)
            if event_list:
                self._process_events(event_list)
        event_list = None  # asyncio does this too: it breaks reference cycles when an exception occurs
        if scheduled:
            end_time = (_time.monotonic() if self._stock_time else self.time()) + self._clock_resolution
            while scheduled:
                handle = scheduled[0]
                if handle._when >= end_time:
                    break
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
        # Only what is ready now runs (a callback's call_soon waits for the next iteration); popleft rather than
        # iterating, as asyncio does, so that a callback that raises leaves the rest queued.
        # Handle._run(), inlined for asyncio's own handles (one Python call fewer per callback; the same error
        # report): a task's wake-up runs once per message.
        popleft = ready.popleft
        for _ in range(len(ready)):
            handle = popleft()
            if handle._cancelled:
                continue
            if type(handle) is not Handle and type(handle) is not TimerHandle:
                handle._run()
                continue
            try:
                handle._context.run(handle._callback, *handle._args)  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # noqa: BLE001  (asyncio's contract: CancelledError included)
                self._callback_failed(handle, exc)
        handle = None  # see event_list above

    def _callback_failed(self, handle: Handle, exc: BaseException) -> None:
        """What Handle._run() reports when its callback raises, word for word."""
        cb = _format_callback_source(handle._callback, handle._args)  # type: ignore[attr-defined]
        context: dict[str, Any] = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        if handle._source_traceback:  # type: ignore[attr-defined]
            context["source_traceback"] = handle._source_traceback  # type: ignore[attr-defined]
        self.call_exception_handler(context)

    def set_debug(self, enabled: bool) -> None:
        super().set_debug(enabled)
        # Every asyncio Future's constructor calls loop.get_debug() (a task's wake-up makes one per message): outside
        # debug mode it is the C callable bool() (False), not a Python method. Debug mode gets the method back.
        if enabled:
            self.__dict__.pop("get_debug", None)
        else:
            self.get_debug = bool

    def call_soon(self, callback: Callable[..., object], *args: Any, context: Any = None) -> Handle:
        """asyncio's call_soon(); outside debug mode without its three inner Python calls (_check_closed(),
        _call_soon(), Handle.__init__() with its get_debug()): a task's wake-up goes through here once per
        message. Debug mode and a closed loop take asyncio's own (its checks, its errors)."""
        if self._debug or self._closed or not _LEAN_RUN_ONCE:
            return super().call_soon(callback, *args, context=context)
        # Handle.__init__() with get_debug() False, inlined: every slot it sets (compat.HANDLE_SLOTS).
        handle = _new_handle(Handle)
        handle._context = copy_context() if context is None else context  # type: ignore[attr-defined]
        handle._loop = self  # type: ignore[attr-defined]
        handle._callback = callback  # type: ignore[attr-defined]
        handle._args = args
        handle._cancelled = False
        handle._repr = None  # type: ignore[attr-defined]
        handle._source_traceback = None  # type: ignore[attr-defined]
        self._ready.append(handle)
        return handle

    @property
    def ring(self) -> Any:
        """The loop's ring (None on the epoll backend). Only for use from the loop's thread."""
        return self._ring

    def __repr__(self) -> str:
        return (f"<{self.__class__.__name__} backend={self.backend} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    # -- wake-up ------------------------------------------------------------------------------------------
    def _arm_wakeup(self) -> None:
        assert self._efd is not None
        self._ring.read(self._efd, self._efd_buf, self._on_wakeup)

    def _on_wakeup(self, res: int, flags: int) -> None:
        # Reading resets the eventfd counter; re-arm so the next call_soon_threadsafe() wakes us again.
        if self._selector is None or self._selector.closing or self._efd is None:
            return
        if res < 0 and res not in (-errno.EINTR, -errno.ECANCELED, -errno.EAGAIN):
            # Broken (re-arming would spin): say so loudly, cross-thread wake-ups now wait for other events.
            log.error("eventfd wake-up read failed: %s; call_soon_threadsafe() may not wake the loop",
                      os.strerror(-res))
            return
        self._arm_wakeup()

    def _write_to_self(self) -> None:
        if self._efd is None and self._ring is None:
            super()._write_to_self()
            return
        # The lock keeps a thread from writing into an fd number that close() just freed (and that may be
        # reused by then).
        with self._efd_lock:
            efd = self._efd
            if efd is None:
                return
            try:
                os.eventfd_write(efd, 1)
            except OSError:
                if self._debug:
                    log.debug("Fail to write to the wake-up eventfd", exc_info=True)

    def _on_ring_callback_error(self, exc: BaseException, user_data: int) -> None:
        self.call_exception_handler({
            "message": f"Exception in an io_uring completion callback (user_data={user_data})",
            "exception": exc,
        })

    # -- transports ---------------------------------------------------------------------------------------
    def _ring_stream(self, sock: socket.socket) -> bool:
        return self._ring is not None and sock.type == socket.SOCK_STREAM and sock.family in _STREAM_FAMILIES

    def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None, *,
                               extra: Any = None, server: Any = None) -> Any:
        if not self._ring_stream(sock):
            self._ensure_fd_no_transport(sock)
            return _SelectorSocketTransport(self, sock, protocol, waiter, extra, server)
        self._ensure_fd_no_transport(sock)
        return self._stream_transport_class(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: Any, sslcontext: Any, waiter: Any = None,
                            *, server_side: bool = False, server_hostname: str | None = None,
                            extra: Any = None, server: Any = None,
                            ssl_handshake_timeout: Any = constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout: Any = constants.SSL_SHUTDOWN_TIMEOUT) -> Any:
        if not self._ring_stream(rawsock):
            return super()._make_ssl_transport(
                rawsock, protocol, sslcontext, waiter, server_side=server_side, server_hostname=server_hostname,
                extra=extra, server=server, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        # asyncio's TLS-over-memory-BIO protocol, on top of the ring transport.
        self._ensure_fd_no_transport(rawsock)
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._stream_transport_class(self, rawsock, ssl_protocol, extra=extra, server=server)
        return compat.ssl_protocol_app_transport(ssl_protocol)

    # -- sendfile -----------------------------------------------------------------------------------------
    async def _sendfile_native(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        if not isinstance(transp, RingSocketTransport):
            return int(await super()._sendfile_native(transp, file, offset, count))
        # asyncio's native path hands the socket to os.sendfile() outside the transport, which would bypass (and
        # could reorder with) the ring's send queue; there is no ordered native path yet.
        raise exceptions.SendfileNotAvailableError(
            f"no native sendfile on the io_uring transport {transp!r}; call sendfile() with fallback=True "
            f"(the default) to read the file and write it through the transport")

    async def _sendfile_fallback(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        """asyncio's fallback (read a block in the executor, write it, wait for the buffer to drain), except that
        the transport's write() raises meanwhile, as it does during asyncio's native sendfile: a write from
        elsewhere would land in the middle of the file's bytes."""
        if not isinstance(transp, RingSocketTransport):
            return int(await super()._sendfile_fallback(transp, file, offset, count))
        if offset:
            file.seek(offset)
        blocksize = min(count, _SENDFILE_BLOCK) if count else _SENDFILE_BLOCK
        buf = bytearray(blocksize)
        total_sent = 0
        proto = _SendfileFallbackProtocol(transp)
        # The instance attribute shadows the method on this transport only: write() itself stays as fast.
        # (A write() someone already put on the instance -- tests wrap it -- is what our blocks go through.)
        shadowed = transp.__dict__.get("write")
        write = shadowed or transp.__class__.write.__get__(transp)
        transp.__dict__["write"] = _write_during_sendfile
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent  # EOF
                await proto.drain()
                write(view[:read])  # copied by the send queue: buf is reused
                total_sent += read
        finally:
            if shadowed is None:
                del transp.__dict__["write"]
            else:
                transp.__dict__["write"] = shadowed
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
            await proto.restore()

    # -- accepting ----------------------------------------------------------------------------------------
    def _accept_connection(self, protocol_factory: Any, sock: socket.socket, sslcontext: Any = None,
                           server: Any = None, backlog: int = 100,
                           ssl_handshake_timeout: Any = constants.SSL_HANDSHAKE_TIMEOUT,
                           ssl_shutdown_timeout: Any = constants.SSL_SHUTDOWN_TIMEOUT) -> None:
        """asyncio's accept loop, except when accept() runs out of fds: it stops there, logs once per episode
        and retries every ACCEPT_RETRY_DELAY seconds.

        asyncio's own (3.11-3.13) goes on calling accept() up to ``backlog`` times per wake-up after EMFILE,
        logging a traceback and scheduling another retry for each: ~100 tracebacks a second for as long as fds
        stay short. With stderr on a pipe nobody drains fast enough, the write blocks and every open connection
        stalls with it.
        """
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                    raise  # the loop logs it; the listener stays registered, as with asyncio
                self._pause_accepting(sock, exc, (protocol_factory, sock, sslcontext, server, backlog,
                                                  ssl_handshake_timeout, ssl_shutdown_timeout))
                return
            if self._accept_paused:
                self._end_accept_pause(sock)
            self.create_task(self._accept_connection2(protocol_factory, conn, {"peername": addr}, sslcontext,
                                                      server, ssl_handshake_timeout, ssl_shutdown_timeout))

    def _pause_accepting(self, sock: socket.socket, exc: OSError, args: tuple[Any, ...]) -> None:
        self._remove_reader(sock.fileno())
        pause = self._accept_paused.get(sock)
        if pause is None:
            now = self.time()
            pause = self._accept_paused[sock] = _AcceptPause(now)
            if self._accept_warned_at is not None and now - self._accept_warned_at < ACCEPT_WARN_INTERVAL:
                self._accept_spells_unreported += 1
            else:
                more = self._accept_spells_unreported
                self._accept_warned_at = now
                self._accept_spells_unreported = 0
                log.warning("uringws: accept() on %s failed: %s; not accepting new connections until it works "
                            "again (retrying every %g s; open connections are still served)%s. Raise the fd "
                            "limit (ulimit -n, systemd LimitNOFILE=) or spread the load", _sockname(sock), exc,
                            ACCEPT_RETRY_DELAY, f"; {more} more such spells since the last warning" if more else "")
        pause.retries += 1
        pause.timer = self.call_later(ACCEPT_RETRY_DELAY, self._retry_accepting, *args)

    def _retry_accepting(self, *args: Any) -> None:
        sock = args[1]
        if sock.fileno() < 0:  # closed without _stop_serving (asyncio's retry then raised "Invalid fd: -1")
            self._accept_paused.pop(sock, None)
            return
        self._start_serving(*args)

    def _end_accept_pause(self, sock: socket.socket) -> None:
        pause = self._accept_paused.pop(sock, None)
        if pause is not None:
            log.info("uringws: accepting on %s again after %.1f s (%d retries)", _sockname(sock),
                     self.time() - pause.since, pause.retries)

    def _stop_serving(self, sock: socket.socket) -> None:
        pause = self._accept_paused.pop(sock, None)
        if pause is not None and pause.timer is not None:
            pause.timer.cancel()
        super()._stop_serving(sock)

    def _check_ring_thread(self, what: str) -> None:
        if self._ring_thread is not None and self._ring_thread != threading.get_ident():
            raise RuntimeError(
                f"cannot {what} this loop in another thread than the one that created it: with batch_wait its "
                "io_uring ring is set up with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, which "
                "only the creating thread may enter (create the loop in the thread that runs it)")

    def _check_running(self) -> None:
        # asyncio's check at the top of run_forever() and run_until_complete() (3.11-3.13): refusing there, before
        # run_until_complete() wraps its argument in a task, leaves nothing behind.
        super()._check_running()
        self._check_ring_thread("run")

    # -- closing ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the loop; on the ring backend, cancel and reap every ring operation, then close the ring."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        self._check_ring_thread("close")
        try:
            super().close()
        finally:
            self.__dict__.pop("call_soon", None)  # the C call_soon refers to the loop: no cycle left behind
            self.__dict__.pop("_run_once", None)  # as does the C _run_once
            if self._bufring is not None:
                # After the ring: every RECV that could write into these buffers has been reaped by then.
                self._bufring.close(ring_clean=not getattr(self._ring, "leaked", False))
                self._bufring = None
            with self._efd_lock:
                efd, self._efd = self._efd, None
            if efd is not None:
                os.close(efd)  # after the ring: its READ held the eventfd until it was cancelled and reaped


def _write_during_sendfile(data: Any) -> None:
    raise RuntimeError("unable to write; sendfile is in progress")


class _AcceptPause:
    """A listening socket's spell out of fds: since when, how many retries, the pending retry."""

    __slots__ = ("retries", "since", "timer")

    def __init__(self, since: float) -> None:
        self.since = since
        self.retries = 0
        self.timer: Any = None


def _sockname(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else repr(name)


def _batching_ring(entries: int) -> Any:
    """A ring on which ``batch_wait`` works: the preferred flags plus SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1)."""
    flags = RING_CLASS.PREFERRED_SETUP_FLAGS | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
    try:
        return RING_CLASS(entries, setup_flags=flags)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        raise ValueError(f"batch_wait needs IORING_SETUP_DEFER_TASKRUN (Linux 6.1), which this kernel refused: "
                         f"{exc}") from None


_fallback_logged = False


def new_event_loop(*, loop_class: type[EventLoop] | None = None, **kwargs: Any) -> EventLoop:
    """A new `EventLoop`: on io_uring when usable here, else on epoll (and log once why).

    Usable as ``asyncio.run(main(), loop_factory=new_event_loop)`` (3.12+) or
    ``asyncio.Runner(loop_factory=new_event_loop)`` (3.11+). Keyword arguments go to `EventLoop`;
    ``loop_class`` lets a layer above compose its own subclass (uringws.tls adds its TLS) without repeating
    the backend choice.
    """
    cls = EventLoop if loop_class is None else loop_class
    global _fallback_logged
    if kwargs.get("backend") == "epoll":
        return cls(**kwargs)  # asked for: no probe, nothing to explain
    avail = availability()
    if avail.usable:
        try:
            return cls(**kwargs)
        except OSError as exc:
            reason = f"creating an io_uring instance failed: {exc}"
    else:
        reason = avail.reason
    if not _fallback_logged:
        _fallback_logged = True
        log.warning("uringws: using the epoll backend: %s", reason)
    kwargs.pop("ring", None)
    kwargs.pop("ring_factory", None)
    kwargs.pop("ring_entries", None)
    if kwargs.pop("batch_wait", 0.0):
        log.warning("uringws: batch_wait has no effect on the epoll backend")
    kwargs.pop("batch_count", None)
    kwargs["backend"] = "epoll"  # also when the caller asked for io_uring (URINGWS_BACKEND=epoll overrides it)
    return cls(**kwargs)
