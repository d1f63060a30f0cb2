"""Completion batching (``Ring.batch_wait``): a busy DEFER_TASKRUN ring's wait() holds out for a batch.

The kernel wakes the waiter of a ``IORING_SETUP_DEFER_TASKRUN`` ring only once the completions it asked for are
pending (for socket operations, whose completions it queues lazily), so a wait for ``batch_count`` of them sleeps
through the ones before: these tests time a wait against RECVs on a socket pair whose data a thread sends at
known moments. Both ring classes (pure and compiled) run each test.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from uringws.ring import Ring
from uringws.ring.io_uring import IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER


@pytest.fixture
def defer_ring(ring_cls: type[Ring]) -> Iterator[Ring]:
    flags = ring_cls.PREFERRED_SETUP_FLAGS | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
    try:
        r = ring_cls(64, setup_flags=flags)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip(f"no IORING_SETUP_DEFER_TASKRUN here (Linux 6.1+): {exc}")
        raise
    try:
        yield r
    finally:
        r.close()


def _busy(ring: Ring) -> None:
    """One wait() that dispatches two CQEs: the ring counts as busy for its next wait."""
    got: list[int] = []
    ring.nop(lambda res, flags: got.append(res))
    ring.nop(lambda res, flags: got.append(res))
    assert ring.wait(1.0) == 2
    assert got == [0, 0]


def _recv_later(ring: Ring, delays: list[float]) -> tuple[list[int], threading.Thread, list[socket.socket]]:
    """A RECV per delay, each on its own socket pair, whose peer a thread writes to ``delay`` seconds from now."""
    got: list[int] = []
    pairs = [socket.socketpair() for _ in delays]
    bufs = [bytearray(8) for _ in delays]
    for (a, _b), buf in zip(pairs, bufs):
        ring.recv(a.fileno(), buf, lambda res, flags: got.append(res))
    ring.submit()

    def send() -> None:
        t0 = time.monotonic()
        for (_a, b), delay in sorted(zip(pairs, delays), key=lambda p: p[1]):
            time.sleep(max(0.0, t0 + delay - time.monotonic()))
            b.send(b"x")

    thread = threading.Thread(target=send)
    thread.start()
    return got, thread, [s for p in pairs for s in p]


def _timed_wait(ring: Ring, after: float, timeout: float | None = None) -> tuple[float, list[int]]:
    """Queue a RECV whose data comes after ``after`` seconds, then time one wait(timeout) (and reap the RECV)."""
    got, thread, socks = _recv_later(ring, [after])
    try:
        t0 = time.monotonic()
        ring.wait(timeout)
        took = time.monotonic() - t0
        thread.join()
        while not got:
            ring.wait(1.0)
    finally:
        for s in socks:
            s.close()
    return took, got


def test_off_by_default(ring: Ring) -> None:
    assert ring.batch_wait == 0.0
    assert ring.batch_count == 16
    assert ring.batched_waits == 0


def test_needs_a_defer_taskrun_ring(ring: Ring) -> None:
    if ring.setup_flags & IORING_SETUP_DEFER_TASKRUN:
        pytest.skip("this ring has DEFER_TASKRUN")
    with pytest.raises(ValueError, match="DEFER_TASKRUN"):
        ring.batch_wait = 0.001
    assert ring.batch_wait == 0.0


def test_limits(defer_ring: Ring) -> None:
    for bad in (-0.001, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            defer_ring.batch_wait = bad
    for bad_count in (0, defer_ring.cq_entries + 1):
        with pytest.raises(ValueError, match="batch_count"):
            defer_ring.batch_count = bad_count
    defer_ring.batch_count = defer_ring.cq_entries
    assert defer_ring.batch_count == defer_ring.cq_entries


def test_busy_wait_holds_out_for_the_batch(defer_ring: Ring) -> None:
    """After a busy wait, one completion does not end the next wait: batch_wait does."""
    defer_ring.batch_wait = 0.3
    _busy(defer_ring)
    took, got = _timed_wait(defer_ring, 0.02)
    assert got == [1]
    assert took >= 0.25, took
    assert defer_ring.batched_waits == 1


def test_unbatched_control(defer_ring: Ring) -> None:
    """The same ring and the same steps without batch_wait: the completion ends the wait at once."""
    _busy(defer_ring)
    took, got = _timed_wait(defer_ring, 0.02)
    assert got == [1]
    assert took < 0.2, took
    assert defer_ring.batched_waits == 0


def test_one_completion_before_is_not_busy(defer_ring: Ring) -> None:
    """A wait after one that dispatched a single CQE (a ping-pong) is not batched."""
    defer_ring.batch_wait = 0.3
    took, got = _timed_wait(defer_ring, 0.02)  # the first wait: nothing dispatched before
    assert got == [1] and took < 0.2, took
    took, got = _timed_wait(defer_ring, 0.02)  # after a wait that dispatched one
    assert got == [1] and took < 0.2, took
    assert defer_ring.batched_waits == 0


def test_the_batch_ends_the_wait(defer_ring: Ring) -> None:
    """batch_count completions end a batched wait before batch_wait."""
    defer_ring.batch_wait = 0.5
    defer_ring.batch_count = 2
    _busy(defer_ring)
    got, thread, socks = _recv_later(defer_ring, [0.01, 0.03])
    try:
        t0 = time.monotonic()
        defer_ring.wait()
        took = time.monotonic() - t0
        thread.join()
    finally:
        for s in socks:
            s.close()
    assert got == [1, 1]  # both, from the one wait
    assert took < 0.3, took
    assert defer_ring.batched_waits >= 1


def test_the_callers_timeout_is_kept(defer_ring: Ring) -> None:
    """A batched wait never outlasts the caller's own timeout."""
    defer_ring.batch_wait = 0.5
    _busy(defer_ring)
    t0 = time.monotonic()
    assert defer_ring.wait(0.05) == 0
    took = time.monotonic() - t0
    assert 0.04 <= took < 0.3, took
    assert defer_ring.batched_waits == 1


def test_one_busy_operation_is_not_busy(defer_ring: Ring) -> None:
    """Several CQEs of one operation (a multishot ACCEPT's connections) count once: a wait after them is not
    batched, since the kernel would queue one wake-up item for that operation and the batch could never fill."""
    import os

    defer_ring.batch_wait = 0.3
    fds: list[int] = []
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        clients = [socket.create_connection(lsock.getsockname()) for _ in range(3)]
        try:
            defer_ring.accept(lsock.fileno(), lambda res, flags: fds.append(res), multishot=True)
            deadline = time.monotonic() + 5
            while len(fds) < 3 and time.monotonic() < deadline:
                defer_ring.wait(0.5)
            assert len(fds) == 3 and min(fds) >= 0, fds
            if defer_ring._last_dispatched < 2:
                pytest.skip("the kernel posted the three accepts in separate waits")
            assert defer_ring._last_sources == 1
            took, got = _timed_wait(defer_ring, 0.02)
            assert got == [1] and took < 0.2, took
            assert defer_ring.batched_waits == 0
        finally:
            for c in clients:
                c.close()
            for fd in fds:
                os.close(fd)
