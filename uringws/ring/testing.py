"""A fault-injecting test double for :class:`~uringws.ring.Ring`.

:class:`FaultyRing` wraps a real ring and has the same interface, so code written for a ``Ring`` can be driven
through it unchanged. From a seed it makes the completions every correct ring user must survive happen often
instead of rarely:

- ``send``/``sendmsg``: only a random prefix is handed to the kernel, so the completion is genuinely short (the
  kernel really sent only those bytes); or nothing is submitted and the operation fails at the next
  :meth:`~FaultyRing.wait` with ``-EAGAIN``, ``-EINTR`` or ``-ECANCELED`` (nothing sent);
- ``recv``: a shorter buffer; or ``-EAGAIN``/``-EINTR`` without reading;
- completions of *different* fds within one dispatch batch are reordered, and some are delayed to a later
  ``wait()``; the order of completions of one fd, and of one user_data, is never changed.

Operations given ``sqe_flags`` (links, drains) pass through unfaulted: faking them would break the chain's
semantics rather than test the caller. Injected faults are counted in :attr:`FaultyRing.counters`, so a test can
assert that they really happened.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import random
import socket
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

from . import _sys
from .fast import RING_CLASS
from .io_uring import IORING_ASYNC_CANCEL_ANY, IORING_CQE_F_MORE
from .ring import Callback, Ring, RingClosedError, RingError

log = logging.getLogger("uringws.ring.testing")


@dataclass(frozen=True)
class Faults:
    """Probabilities (0..1) of each injected fault. The defaults are aggressive on purpose."""

    send_short: float = 0.3  #: send/sendmsg: submit only a random prefix
    send_error: float = 0.1  #: send/sendmsg: submit nothing, fail with one of ``send_errors``
    recv_short: float = 0.3  #: recv: submit a shorter buffer
    recv_error: float = 0.1  #: recv: submit nothing, fail with one of ``recv_errors``
    reorder: float = 0.5  #: per wait(): interleave the completions of different fds at random
    delay: float = 0.2  #: per fd and wait(): hold back a suffix of its completions until the next wait()
    send_errors: tuple[int, ...] = (errno.EAGAIN, errno.EINTR, errno.ECANCELED)
    recv_errors: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)

    @classmethod
    def none(cls) -> Faults:
        """No faults at all: a FaultyRing that behaves like its Ring (for control runs)."""
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Completion(NamedTuple):
    key: Hashable  #: ordering key: the fd, or a per-operation key for ops without one
    ud: int  #: the FaultyRing's user_data
    res: int
    flags: int


def plan_batch(entries: Sequence[Completion], n_old: int, rng: random.Random,
               faults: Faults) -> tuple[list[Completion], list[Completion], bool]:
    """Split a batch into (delivered now, in this order; held for the next wait(); whether it was reordered).

    ``entries[:n_old]`` were held once already and are always delivered (so every completion is delayed at most
    once). Per key, the original order is kept both within what is delivered and across the hold-back.
    """
    groups: dict[Hashable, list[int]] = {}
    old_per_key: collections.Counter[Hashable] = collections.Counter()
    for i, e in enumerate(entries):
        groups.setdefault(e.key, []).append(i)
        if i < n_old:
            old_per_key[e.key] += 1
    held: set[int] = set()
    if faults.delay:
        for key, idx in groups.items():
            old = old_per_key[key]
            if len(idx) > old and rng.random() < faults.delay:
                cut = rng.randint(old, len(idx) - 1)  # hold idx[cut:]: a suffix of this key's new completions
                held.update(idx[cut:])
    keep_order = [e for i, e in enumerate(entries) if i not in held]
    hold = [e for i, e in enumerate(entries) if i in held]
    if len(groups) > 1 and faults.reorder and rng.random() < faults.reorder:
        queues = [collections.deque(e for e in keep_order if e.key == key) for key in groups]
        queues = [q for q in queues if q]
        out: list[Completion] = []
        while queues:
            j = rng.randrange(len(queues))
            out.append(queues[j].popleft())
            if not queues[j]:
                queues.pop(j)
        return out, hold, any(a is not b for a, b in zip(out, keep_order, strict=True))
    return keep_order, hold, False


class FaultyRing:
    """A real ring (`Ring` or `CompiledRing`, wrapped) that injects short sends/recvs, errors, reordering, delays."""

    def __init__(self, ring: Ring | None = None, *, seed: int = 0, faults: Faults | None = None,
                 **ring_kwargs: Any) -> None:
        # The ring the loop would use (the compiled one when it is built), so the fault tests exercise it.
        self.ring: Ring = ring if ring is not None else RING_CLASS(**ring_kwargs)
        self.rng = random.Random(seed)
        self.faults = faults if faults is not None else Faults()
        #: injected faults by kind: send_short, send_error, sendmsg_short, sendmsg_error, recv_short,
        #: recv_error, reordered (batches), delayed (completions)
        self.counters: collections.Counter[str] = collections.Counter()
        self.on_callback_error: Callable[[BaseException, int], Any] | None = self.ring.on_callback_error
        self._ud = itertools.count(1)
        self._pending: dict[int, Callback | None] = {}
        self._inner: dict[int, int] = {}  # our user_data -> the real ring's, until its final CQE
        self._arrived: list[Completion] = []  # real completions collected during the inner wait()
        self._synthetic: list[Completion] = []  # injected failures, delivered at the next wait()
        self._held: list[Completion] = []  # delayed from an earlier wait()
        self._in_dispatch = False

    # ------------------------------------------------------------------------------------------------ plumbing
    def _collector(self, ud: int, key: Hashable) -> Callback:
        def on_cqe(res: int, flags: int) -> None:
            # self._arrived is replaced at every wait(): look it up now, not when the op was queued.
            self._arrived.append(Completion(key, ud, res, flags))
            if not flags & IORING_CQE_F_MORE:
                self._inner.pop(ud, None)

        return on_cqe

    def _real(self, key: Hashable | None, method: str, args: tuple[Any, ...], callback: Callback | None,
              kw: dict[str, Any]) -> int:
        ud = next(self._ud)
        inner_ud = getattr(self.ring, method)(*args, self._collector(ud, ud if key is None else (0, key)), **kw)
        self._pending[ud] = callback
        self._inner[ud] = inner_ud
        return ud

    def _fake(self, key: Hashable, res: int, callback: Callback | None, kind: str | None) -> int:
        if self.ring.closed:
            raise RingClosedError("the ring is closed")
        ud = next(self._ud)
        self._pending[ud] = callback
        self._synthetic.append(Completion((0, key), ud, res, 0))
        if kind:
            self.counters[kind] += 1
        return ud

    def _roll(self, p_error: float, p_short: float) -> str:
        r = self.rng.random()
        if r < p_error:
            return "error"
        if r < p_error + p_short:
            return "short"
        return ""

    # ------------------------------------------------------------------------------------------------ faulted
    def send(self, fd: int, data: Any, callback: Callback | None, *, flags: int = 0, sqe_flags: int = 0) -> int:
        if not sqe_flags:
            f = self.faults
            what = self._roll(f.send_error, f.send_short)
            if what:
                _sys.buffer_address(data)  # the same TypeError as the real ring for something not bytes-like
                if what == "error":
                    return self._fake(fd, -self.rng.choice(f.send_errors), callback, "send_error")
                view = memoryview(data).cast("B")
                if len(view) >= 2:
                    self.counters["send_short"] += 1
                    data = view[: self.rng.randint(1, len(view) - 1)]
        return self._real(fd, "send", (fd, data), callback, {"flags": flags, "sqe_flags": sqe_flags})

    def sendmsg(self, fd: int, buffers: Sequence[Any], callback: Callback | None, *, flags: int = 0,
                sqe_flags: int = 0) -> int:
        if not sqe_flags and buffers:
            f = self.faults
            what = self._roll(f.send_error, f.send_short)
            if what:
                views = [memoryview(b).cast("B") for b in buffers]
                for b in buffers:
                    _sys.buffer_address(b)
                if what == "error":
                    return self._fake(fd, -self.rng.choice(f.send_errors), callback, "sendmsg_error")
                total = sum(len(v) for v in views)
                if total >= 2:
                    self.counters["sendmsg_short"] += 1
                    left = self.rng.randint(1, total - 1)
                    cut: list[Any] = []
                    for v in views:
                        if left <= 0:
                            break
                        cut.append(v[:left])
                        left -= len(cut[-1])
                    buffers = cut
        return self._real(fd, "sendmsg", (fd, buffers), callback, {"flags": flags, "sqe_flags": sqe_flags})

    def recv(self, fd: int, buf: Any, callback: Callback | None, *, flags: int = 0, sqe_flags: int = 0) -> int:
        if not sqe_flags:
            f = self.faults
            what = self._roll(f.recv_error, f.recv_short)
            if what:
                _sys.buffer_address(buf, writable=True)  # the real ring's TypeError for read-only buffers
                if what == "error":
                    return self._fake(fd, -self.rng.choice(f.recv_errors), callback, "recv_error")
                view = memoryview(buf).cast("B")
                if len(view) >= 2:
                    self.counters["recv_short"] += 1
                    buf = view[: self.rng.randint(1, len(view) - 1)]
        return self._real(fd, "recv", (fd, buf), callback, {"flags": flags, "sqe_flags": sqe_flags})

    # ------------------------------------------------------------------------------------------------ pass-through
    def nop(self, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        return self._real(None, "nop", (), callback, {"sqe_flags": sqe_flags})

    def read(self, fd: int, buf: Any, callback: Callback | None, *, offset: int = -1, sqe_flags: int = 0) -> int:
        return self._real(fd, "read", (fd, buf), callback, {"offset": offset, "sqe_flags": sqe_flags})

    def accept(self, fd: int, callback: Callback | None, *, multishot: bool = False,
               flags: int = socket.SOCK_CLOEXEC, sqe_flags: int = 0) -> int:
        return self._real(fd, "accept", (fd,), callback,
                          {"multishot": multishot, "flags": flags, "sqe_flags": sqe_flags})

    def connect(self, fd: int, address: bytes, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        return self._real(fd, "connect", (fd, address), callback, {"sqe_flags": sqe_flags})

    def shutdown(self, fd: int, how: int, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        return self._real(fd, "shutdown", (fd, how), callback, {"sqe_flags": sqe_flags})

    def close_fd(self, fd: int, callback: Callback | None, *, sqe_flags: int = 0) -> int:
        return self._real(fd, "close_fd", (fd,), callback, {"sqe_flags": sqe_flags})

    def poll_add(self, fd: int, events: int, callback: Callback | None, *, multishot: bool = False,
                 sqe_flags: int = 0) -> int:
        return self._real(fd, "poll_add", (fd, events), callback, {"multishot": multishot, "sqe_flags": sqe_flags})

    def poll_remove(self, target: int, callback: Callback | None = None, *, sqe_flags: int = 0) -> int:
        inner = self._inner.get(target)
        if inner is None:
            # Injected failures and completions already posted (maybe held back) are done: nothing to find.
            return self._fake(("target", target), -errno.ENOENT, callback, None)
        return self._real(None, "poll_remove", (inner,), callback, {"sqe_flags": sqe_flags})

    def cancel(self, target: int, callback: Callback | None = None, *, cancel_flags: int = 0,
               sqe_flags: int = 0) -> int:
        kw = {"cancel_flags": cancel_flags, "sqe_flags": sqe_flags}
        if target == 0 or cancel_flags & IORING_ASYNC_CANCEL_ANY:
            return self._real(None, "cancel", (target,), callback, kw)
        inner = self._inner.get(target)
        if inner is None:
            return self._fake(("target", target), -errno.ENOENT, callback, None)
        return self._real(None, "cancel", (inner,), callback, kw)

    def timeout(self, seconds: float, callback: Callback | None, *, count: int = 0, sqe_flags: int = 0) -> int:
        """TIMEOUT; ``count`` counts the real ring's CQEs (injected failures are not posted by the kernel)."""
        return self._real(None, "timeout", (seconds,), callback, {"count": count, "sqe_flags": sqe_flags})

    def link_timeout(self, seconds: float, callback: Callback | None = None) -> int:
        return self._real(None, "link_timeout", (seconds,), callback, {})

    # ------------------------------------------------------------------------------------------------ reaping
    def submit(self) -> int:
        return self.ring.submit()

    def wait(self, timeout: float | None = None) -> int:
        """Like :meth:`Ring.wait`, with the batch reordered and partly delayed. Returns completions delivered."""
        if self._in_dispatch:
            raise RingError("FaultyRing.wait() called from a completion callback")
        if self.ring.closed:
            raise RingClosedError("the ring is closed")
        if self._synthetic or self._held:
            timeout = 0  # something is due already: don't block in the kernel
        self.ring.wait(timeout)
        old, new = self._held, self._arrived + self._synthetic
        self._held, self._arrived, self._synthetic = [], [], []
        deliver, hold, reordered = plan_batch(old + new, len(old), self.rng, self.faults)
        if hold:
            self.counters["delayed"] += len(hold)
        if reordered:
            self.counters["reordered"] += 1
        self._held = hold
        return self._deliver(deliver)

    def _deliver(self, entries: list[Completion]) -> int:
        pending = self._pending
        self._in_dispatch = True
        i = 0
        try:
            for e in entries:
                i += 1
                cb = pending.get(e.ud) if e.flags & IORING_CQE_F_MORE else pending.pop(e.ud, None)
                if cb is None:
                    continue
                try:
                    cb(e.res, e.flags)
                except Exception as exc:  # like Ring: one callback's bug must not stop the others
                    if self.on_callback_error is not None:
                        self.on_callback_error(exc, e.ud)
                    else:
                        log.exception("completion callback failed (user_data=%d)", e.ud)
        except BaseException:
            self._held[:0] = entries[i:]  # delivered at the next wait(), exactly once
            raise
        finally:
            self._in_dispatch = False
        return len(entries)

    def close(self, timeout: float = 2.0) -> None:
        """Close the real ring (its in-flight ops complete, cancelled) and deliver everything still due, in order."""
        if self._in_dispatch:
            raise RingError("FaultyRing.close() called from a completion callback")
        if self.ring.closed and not (self._held or self._arrived or self._synthetic):
            return
        try:
            self.ring.close(timeout)
        finally:
            due = self._held + self._arrived + self._synthetic
            self._held, self._arrived, self._synthetic = [], [], []
            try:
                self._deliver(due)
            finally:
                self._pending.clear()
                self._inner.clear()

    # ------------------------------------------------------------------------------------------------ info
    @property
    def closed(self) -> bool:
        return self.ring.closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def unsubmitted(self) -> int:
        return self.ring.unsubmitted

    @property
    def fd(self) -> int:
        return self.ring.fd

    def fileno(self) -> int:
        return self.ring.fileno()

    def has_feature(self, feat: int) -> bool:
        return self.ring.has_feature(feat)

    def __getattr__(self, name: str) -> Any:
        # Read-only facts of the real ring (features, setup_flags, sq_entries, cq_entries, params, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.ring, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaultyRing {self.ring!r} faults={dict(self.counters)}>"


__all__ = ["Completion", "Faults", "FaultyRing", "plan_batch"]
