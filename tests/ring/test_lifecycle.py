"""Closing, misuse and buffer lifetimes: clear exceptions and no leaks, never a crash."""

from __future__ import annotations

import errno
import gc
import os
import socket
import sys
import warnings
import weakref
from typing import Any

import pytest

from uringws.ring import Ring, RingClosedError, RingError
from uringws.ring.io_uring import IOSQE_IO_LINK, POLLIN

from .conftest import reap_until, submit


def _fds() -> set[str]:
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            out.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
        except FileNotFoundError:  # the fd of the listdir itself
            pass
    return out


def _uring_maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "io_uring" in line]


class Buf(bytearray):
    """A bytearray that can be weakly referenced (to watch when the ring lets go of it)."""


# ------------------------------------------------------------------------------------------------ close
def test_close_with_ops_in_flight_cancels_them_and_leaks_nothing(ring_cls: type[Ring]) -> None:
    gc.collect()
    fds_before, maps_before = _fds(), _uring_maps()
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        ring = ring_cls(16)
        assert len(_uring_maps()) > len(maps_before)
        results: list[int] = []
        for _a, b in pairs:
            ring.recv(b.fileno(), bytearray(100), lambda res, f: results.append(res))
            ring.poll_add(b.fileno(), POLLIN, lambda res, f: results.append(res), multishot=True)
        ring.accept(pairs[0][0].fileno(), lambda res, f: results.append(res))  # invalid on a connected socket
        ring.timeout(30.0, lambda res, f: results.append(res))
        ring.wait(0)
        early = len(results)  # the ACCEPT failed at once (-EINVAL)
        for _ in range(3):  # and a few that were never submitted
            ring.recv(pairs[1][1].fileno(), bytearray(10), lambda res, f: results.append(res))
        n = ring.in_flight
        assert n >= 40 and ring.unsubmitted == 3
        ring.close()
        assert ring.closed and ring.in_flight == 0
        assert len(results) - early == n  # every op in flight reported exactly once
        assert results[early:] == [-errno.ECANCELED] * n
        assert n == 20 * 2 + 1 + 3  # recvs, multishot polls, the timeout, the unsubmitted recvs
        assert results[:early] == [-errno.EINVAL]
        ring.close()  # idempotent
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    del ring
    gc.collect()
    assert _fds() == fds_before
    assert _uring_maps() == maps_before


def test_close_when_a_link_chain_fills_the_sq(ring_cls: type[Ring]) -> None:
    a, b = socket.socketpair()
    with a, b:
        ring = ring_cls(4)
        results: list[int] = []
        for _ in range(4):
            ring.recv(b.fileno(), bytearray(8), lambda res, f: results.append(res), sqe_flags=IOSQE_IO_LINK)
        with pytest.raises(RingError, match="link chain"):
            ring.nop(None)  # a fifth SQE cannot be added without breaking the chain
        assert ring.in_flight == 4  # the refused op left nothing behind
        ring.close()
        assert len(results) == 4
        # A chain head that a worker thread was running is interrupted (-EINTR) rather than cancelled.
        assert results[1:] == [-errno.ECANCELED] * 3 and results[0] in (-errno.ECANCELED, -errno.EINTR)


def test_close_from_a_callback_is_refused(ring_cls: type[Ring]) -> None:
    errors: list[BaseException] = []
    with ring_cls(4, on_callback_error=lambda exc, ud: errors.append(exc)) as ring:
        ring.nop(lambda res, f: ring.close())
        reap_until(ring, lambda: ring.in_flight == 0)
        assert len(errors) == 1 and isinstance(errors[0], RingError)
        assert not ring.closed
        assert ring.wait(0) == 0  # still usable
    assert ring.closed


def test_unclosed_ring_warns_and_cleans_up(ring_cls: type[Ring]) -> None:
    gc.collect()
    fds_before = _fds()
    ring = ring_cls(4)
    ring.nop(None)
    with pytest.warns(ResourceWarning, match="unclosed io_uring"):
        del ring
        gc.collect()
    assert _fds() == fds_before


def test_both_rings_share_one_lifecycle(ring_cls: type[Ring]) -> None:
    """The context manager and the finalizer are written once (ring._RingLifecycle), not once per ring."""
    from uringws.ring.ring import _RingLifecycle

    assert issubclass(ring_cls, _RingLifecycle)
    for name in ("__enter__", "__exit__", "__del__"):
        assert getattr(ring_cls, name) is getattr(_RingLifecycle, name), name


def test_with_block_closes_on_an_exception(ring_cls: type[Ring]) -> None:
    got: list[int] = []
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(KeyError), ring_cls(4) as ring:
            ring.recv(b.fileno(), bytearray(4), lambda res, f: got.append(res))
            ring.submit()
            raise KeyError
        assert ring.closed and ring.fd == -1
        assert got == [-errno.ECANCELED]  # close() cancelled and reaped what was in flight


def test_a_ring_that_failed_to_start_finalizes_quietly(ring_cls: type[Ring],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        for bad in (0, 40000):
            with pytest.raises(ValueError):
                ring_cls(bad)
        gc.collect()
    assert unraisable == []


def test_many_rings_open_and_close(ring_cls: type[Ring]) -> None:
    gc.collect()
    fds_before, maps_before = _fds(), _uring_maps()
    for _ in range(50):
        with ring_cls(8) as r:
            r.nop(None)
            r.wait(1)
    gc.collect()
    assert _fds() == fds_before and _uring_maps() == maps_before


# ------------------------------------------------------------------------------------------------ misuse
def test_closed_ring_raises_ring_closed_error(ring_cls: type[Ring]) -> None:
    ring = ring_cls(4)
    ring.close()
    a, b = socket.socketpair()
    with a, b:
        for call in (lambda: ring.nop(None), lambda: ring.send(a.fileno(), b"x", None),
                     lambda: ring.recv(a.fileno(), bytearray(1), None), lambda: ring.wait(0),
                     lambda: ring.submit(), lambda: ring.timeout(1, None), lambda: ring.cancel(1)):
            with pytest.raises(RingClosedError, match="closed"):
                call()
    assert "closed" in repr(ring)


def test_wait_from_a_callback_raises_ring_error(ring_cls: type[Ring]) -> None:
    errors: list[tuple[BaseException, int]] = []
    with ring_cls(4, on_callback_error=lambda exc, ud: errors.append((exc, ud))) as ring:
        ud = ring.nop(lambda res, f: ring.wait(0))
        assert ring.wait(1) == 1
        assert len(errors) == 1
        exc, bad_ud = errors[0]
        assert isinstance(exc, RingError) and "callback" in str(exc) and bad_ud == ud


def test_failing_callback_does_not_stop_the_others(ring_cls: type[Ring], caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    with ring_cls(8) as ring:
        ring.nop(lambda res, f: seen.append(1))
        ring.nop(lambda res, f: 1 / 0)
        ring.nop(lambda res, f: seen.append(3))
        with caplog.at_level("ERROR", logger="uringws.ring"):
            assert ring.wait(1) == 3
        assert seen == [1, 3]
        assert "ZeroDivisionError" in caplog.text


def test_base_exception_in_callback_keeps_the_rest_of_the_batch(ring_cls: type[Ring]) -> None:
    seen: list[int] = []

    def boom(res: int, flags: int) -> None:
        raise KeyboardInterrupt

    with ring_cls(8) as ring:
        ring.nop(lambda res, f: seen.append(1))
        ring.nop(boom)
        ring.nop(lambda res, f: seen.append(3))
        ring.nop(lambda res, f: seen.append(4))
        with pytest.raises(KeyboardInterrupt):
            ring.wait(1)
        assert seen == [1]
        assert ring.in_flight == 2
        assert ring.wait(0) == 2  # delivered on the next wait(), once each
        assert seen == [1, 3, 4] and ring.in_flight == 0


def test_bad_fd_and_unsupported_op_complete_with_negative_res(ring: Ring) -> None:
    r = 999_999  # far above any fd this process has open
    _, got_send = submit(ring, "send", r, b"x")
    _, got_recv = submit(ring, "recv", -5, bytearray(4))
    efd = os.eventfd(0)
    try:
        _, got_nosock = submit(ring, "recv", efd, bytearray(8))
        ud_bad = ring._prep(250, 0, 0, -1, 0, 0, 0, 0, None, None)  # an opcode no kernel has
        reap_until(ring, lambda: bool(got_send and got_recv and got_nosock) and ring.in_flight == 0)
    finally:
        os.close(efd)
    assert got_send[0][0] == -errno.EBADF
    assert got_recv[0][0] == -errno.EBADF
    assert got_nosock[0][0] == -errno.ENOTSOCK
    assert ud_bad > 0
    got_op: list[int] = []
    ring._prep(250, 0, 0, -1, 0, 0, 0, 0, lambda res, f: got_op.append(res), None)
    reap_until(ring, lambda: bool(got_op))
    assert got_op[0] == -errno.EINVAL


@pytest.mark.parametrize("bad", [123, "text", None, object()])
def test_send_needs_a_bytes_like_object(ring: Ring, bad: Any) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        ring.send(0, bad, None)
    with pytest.raises(TypeError, match="bytes-like"):
        ring.sendmsg(0, [b"ok", bad], None)
    assert ring.in_flight == 0 and ring.unsubmitted == 0


@pytest.mark.parametrize("readonly", [b"immutable", memoryview(bytearray(4)).toreadonly()])
def test_recv_refuses_a_read_only_buffer(ring: Ring, readonly: Any) -> None:
    with pytest.raises(TypeError, match="writable"):
        ring.recv(0, readonly, None)
    with pytest.raises(TypeError, match="writable"):
        ring.read(0, readonly, None)
    assert ring.in_flight == 0 and ring.unsubmitted == 0


def test_non_contiguous_buffer_refused(ring: Ring) -> None:
    with pytest.raises(BufferError):
        ring.recv(0, memoryview(bytearray(8))[::2], None)
    assert ring.in_flight == 0


def test_out_of_range_argument_commits_nothing(ring: Ring) -> None:
    """A value that does not fit the SQE must leave no half-written slot for the kernel to run."""
    a, b = socket.socketpair()
    with a, b:
        ring.nop(None)
        tail = ring._sq_tail
        for call in (lambda: ring.send(2**40, b"x", None), lambda: ring.recv(a.fileno(), bytearray(1), None,
                                                                            flags=-1),
                     lambda: ring.poll_add(a.fileno(), POLLIN, None, sqe_flags=999),
                     lambda: ring.send(a.fileno(), b"x", None, sqe_flags=IOSQE_IO_LINK, flags=2**33)):
            with pytest.raises(ValueError, match="out of range"):
                call()
        assert ring._sq_tail == tail and ring.unsubmitted == 1 and ring.in_flight == 1
        reap_until(ring, lambda: ring.in_flight == 0)


# ------------------------------------------------------------------------------------------------ buffers
def test_ring_keeps_recv_buffer_alive_until_its_cqe(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        buf = Buf(64)
        ref = weakref.ref(buf)
        got: list[int] = []
        ring.recv(b.fileno(), buf, lambda res, f: got.append(res))
        ring.wait(0)
        del buf
        gc.collect()
        assert ref() is not None  # the kernel may still write into it
        a.send(b"late data")
        reap_until(ring, lambda: bool(got))
        assert got == [9]
        gc.collect()
        assert ref() is None  # released once the CQE was dispatched


def test_ring_keeps_send_buffers_alive_until_their_cqe(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        one, two = Buf(b"first"), Buf(b"second")
        refs = [weakref.ref(one), weakref.ref(two)]
        got: list[int] = []
        ring.sendmsg(a.fileno(), [one, two], lambda res, f: got.append(res))
        ring.send(a.fileno(), memoryview(Buf(b"third")), lambda res, f: got.append(res))
        del one, two
        gc.collect()
        assert all(r() is not None for r in refs)
        reap_until(ring, lambda: len(got) == 2)
        gc.collect()
        assert all(r() is None for r in refs)
        assert b.recv(100) == b"firstsecondthird"


def test_bytearray_cannot_be_resized_while_in_flight(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(16)
        got: list[int] = []
        ring.recv(b.fileno(), buf, lambda res, f: got.append(res))
        with pytest.raises(BufferError):
            buf.extend(b"would move the memory the kernel writes to")
        a.send(b"ok")
        reap_until(ring, lambda: bool(got))
        buf.extend(b"fine now")  # released with the CQE
        assert bytes(buf[:2]) == b"ok"


def test_multishot_poll_keeps_callback_until_final_cqe(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        class Cb:
            def __init__(self) -> None:
                self.seen: list[int] = []

            def __call__(self, res: int, flags: int) -> None:
                self.seen.append(res)

        cb = Cb()
        ref = weakref.ref(cb)
        ud = ring.poll_add(b.fileno(), POLLIN, cb, multishot=True)
        del cb
        a.send(b"1")
        reap_until(ring, lambda: bool(ref() and ref().seen))  # type: ignore[union-attr]
        gc.collect()
        assert ref() is not None
        ring.poll_remove(ud)
        reap_until(ring, lambda: ring.in_flight == 0)
        gc.collect()
        assert ref() is None


def test_completions_posted_by_callbacks_wait_for_the_next_wait(ring_cls: type[Ring]) -> None:
    """A callback that makes another operation complete at once (a NOP submitted from it; in the loop, a flooding
    socket's multishot RECV) must not keep one wait() dispatching: the event loop runs nothing else meanwhile."""
    calls: list[int] = []
    with ring_cls(8) as ring:

        def again(res: int, flags: int) -> None:
            calls.append(res)
            if len(calls) < 1000:
                ring.nop(again)
                ring.submit()  # the NOP completes during this enter: its CQE is posted before wait() returns

        ring.nop(again)
        assert ring.wait(1) == 1
        assert calls == [0]
        assert ring.wait(0) == 1  # the one posted meanwhile
        assert len(calls) == 2
