"""The fallbacks for older kernels, exercised on this one: fewer setup flags, and waiting without EXT_ARG."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from uringws.ring import Ring
from uringws.ring.io_uring import IORING_SETUP_COOP_TASKRUN, IORING_SETUP_SUBMIT_ALL, IORING_SETUP_TASKRUN_FLAG

from .conftest import reap_until, submit


@pytest.mark.parametrize("flags", [0, IORING_SETUP_SUBMIT_ALL,
                                   IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG])
def test_operations_work_with_each_setup_flag_set(ring_cls: type[Ring], flags: int) -> None:
    a, b = socket.socketpair()
    with a, b, ring_cls(8, setup_flags=flags) as ring:
        assert ring.setup_flags & flags == flags
        bufs = [bytearray(4) for _ in range(20)]
        results: list[int] = []
        for i, buf in enumerate(bufs):  # more than the SQ holds: submitted early, in order
            ring.send(a.fileno(), b"%04d" % i, lambda res, f: results.append(res))
            ring.recv(b.fileno(), buf, lambda res, f: results.append(res))
        reap_until(ring, lambda: ring.in_flight == 0)
        assert results == [4] * 40
        assert b"".join(bufs) == b"".join(b"%04d" % i for i in range(20))
        # A bad SQE in the middle of a batch (without SUBMIT_ALL the kernel stops there and the rest follows
        # with the next enter): everything still completes once.
        done: list[int] = []
        ring.nop(lambda res, f: done.append(res))
        ring._prep(250, 0, 0, -1, 0, 0, 0, 0, lambda res, f: done.append(res), None)
        ring.nop(lambda res, f: done.append(res))
        reap_until(ring, lambda: len(done) == 3)
        assert sorted(done) == [-errno.EINVAL, 0, 0]


def test_wait_without_ext_arg_uses_a_timeout_sqe(ring_cls: type[Ring]) -> None:
    a, b = socket.socketpair()
    with a, b, ring_cls(8) as ring:
        ring._ext_arg = False  # as on kernels before 5.11
        t0 = time.monotonic()
        assert ring.wait(0.05) == 1  # only the internal TIMEOUT completed (-ETIME); no callback of ours
        assert 0.04 <= time.monotonic() - t0 < 2
        _, got = submit(ring, "recv", b.fileno(), bytearray(8))
        a.send(b"data")
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 4
        reap_until(ring, lambda: ring.in_flight == 0)  # the internal timeouts are reaped too


def test_wait_timeout_is_bounded(ring_cls: type[Ring]) -> None:
    with ring_cls(4) as ring:
        t0 = time.monotonic()
        assert ring.wait(0.05) == 0
        assert 0.04 <= time.monotonic() - t0 < 2
        assert ring.wait(-1) == 0  # a negative timeout means "don't wait", not an error
