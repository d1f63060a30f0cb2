"""The compiled ring (`CompiledRing`) against its pure twin (`Ring`): the same operations, the same completions.

Most of tests/ring already runs against both classes (the ``ring``/``ring_cls`` fixtures); here are what only a
side-by-side run shows, and what is particular to the compiled core (its exported SQE array, its choice by the loop).
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import subprocess
import sys
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.ring import Ring
from uringws.ring.fast import RING_CLASS, RING_CLASSES
from uringws.ring.io_uring import IORING_CQE_F_MORE, IOSQE_IO_LINK, POLLIN, POLLOUT
from uringws.ring.testing import FaultyRing

from .conftest import reap_until

COMPILED = [c for c in RING_CLASSES if c is not Ring]
needs_compiled = pytest.mark.skipif(not COMPILED, reason="the compiled ring is not built (or URINGWS_PURE=1)")

# One operation of a scripted run: (name, argument). The script is replayed on a fresh ring of each class.
_OPS = st.one_of(
    st.tuples(st.just("nop"), st.just(0)),
    st.tuples(st.just("send"), st.integers(1, 300)),
    st.tuples(st.just("sendmsg"), st.integers(2, 300)),
    st.tuples(st.just("recv"), st.integers(1, 300)),
    st.tuples(st.just("poll_out"), st.just(0)),
    st.tuples(st.just("poll_in_multi"), st.just(0)),
    st.tuples(st.just("timeout0"), st.just(0)),
    st.tuples(st.just("bad_opcode"), st.just(0)),
    st.tuples(st.just("bad_fd"), st.just(0)),
    st.tuples(st.just("linked_nops"), st.integers(2, 4)),
    st.tuples(st.just("cancel_last"), st.just(0)),
    st.tuples(st.just("wait"), st.just(0)),
)


def _one(ring: Any, i: int, op: str, n: int, a: socket.socket, b: socket.socket, cb: Any,
         bufs: dict[int, bytearray], last_ud: int | None) -> int | None:
    """Queue script step ``i``; returns the user_data a later ``cancel_last`` targets."""
    if op == "nop":
        return int(ring.nop(cb(i)))
    if op == "send":
        return int(ring.send(a.fileno(), bytes([i & 0xFF]) * n, cb(i)))
    if op == "sendmsg":
        return int(ring.sendmsg(a.fileno(), [bytes([i & 0xFF]) * (n // 2), bytearray(n - n // 2)], cb(i)))
    if op == "recv":
        bufs[i] = bytearray(n)
        return int(ring.recv(b.fileno(), bufs[i], cb(i)))
    if op == "poll_out":
        return int(ring.poll_add(a.fileno(), POLLOUT, cb(i)))
    if op == "poll_in_multi":
        return int(ring.poll_add(b.fileno(), POLLIN, cb(i), multishot=True))
    if op == "timeout0":
        return int(ring.timeout(0, cb(i)))
    if op == "bad_opcode":
        return int(ring._prep(250, 0, 0, -1, 0, 0, 0, 0, cb(i), None))
    if op == "bad_fd":
        return int(ring.send(999_999, b"x", cb(i)))
    if op == "linked_nops":
        callback = cb(i)
        for _ in range(n - 1):
            ring.nop(callback, sqe_flags=IOSQE_IO_LINK)
        return int(ring.nop(callback))
    if op == "cancel_last" and last_ud is not None:
        ring.cancel(last_ud, cb(i))
    elif op == "wait":
        ring.wait(0)
    return last_ud


def _replay(cls: type, script: list[tuple[str, int]], entries: int) -> dict[str, Any]:
    """Run ``script`` on a fresh ring of ``cls``: per operation, every (res, flags) it got, and the bytes read."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    results: dict[int, list[tuple[int, int]]] = {}
    bufs: dict[int, bytearray] = {}
    errors: dict[int, str] = {}  # steps that raised (a link chain longer than the SQ): the same ones, the same way
    last_ud: int | None = None
    sent = 0

    def cb(i: int) -> Any:
        results[i] = []
        return lambda res, flags: results[i].append((res, flags))

    with a, b, cls(entries) as ring:
        for i, (op, n) in enumerate(script):
            try:
                last_ud = _one(ring, i, op, n, a, b, cb, bufs, last_ud)
            except Exception as exc:  # noqa: BLE001 -- compared between the two classes
                errors[i] = f"{type(exc).__name__}: {exc}"
                ring._chain = 0  # the open chain's SQEs go with the next enter (both classes allow this reset)
                continue
            if op in ("send", "sendmsg"):
                sent += n
        # Whatever is still waiting for data gets EOF and completes; what is left (multishot polls) is cancelled.
        ring.submit()
        a.shutdown(socket.SHUT_WR)
        multishot = sum(1 for i, (op, _n) in enumerate(script) if op == "poll_in_multi" and i not in errors)
        reap_until(ring, lambda: ring.in_flight <= multishot)
        ring.close()
        assert ring.in_flight == 0
    for i in errors:
        # A chain cut short by the error: whether the kernel runs its queued part or cancels it is timing.
        results.pop(i, None)
    for i, (op, _n) in enumerate(script):
        if op == "poll_in_multi" and i in results:
            # How many wake-ups a multishot poll sees before close() cancels it, and whether it ends by itself
            # (EOF) first, is the kernel's timing, not the ring's: only that it got a final CQE is compared.
            res = results[i]
            results[i] = [(1, 0)] if res and not res[-1][1] & IORING_CQE_F_MORE else res
    received = {i: bytes(buf[: results[i][0][0]]) for i, buf in bufs.items()
                if results.get(i) and results[i][0][0] > 0}
    return {"results": results, "received": received, "sent": sent, "errors": errors}


@needs_compiled
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(_OPS, min_size=1, max_size=40), entries=st.sampled_from([1, 2, 4, 64]))
def test_the_same_script_gives_the_same_completions(script: list[tuple[str, int]], entries: int) -> None:
    pure = _replay(Ring, script, entries)
    compiled = _replay(COMPILED[0], script, entries)
    assert compiled == pure


@needs_compiled
def test_parity_covers_every_kind_of_result() -> None:
    """The replay above really sees successes, errors, cancellations and data (not only NOPs)."""
    script = [("send", 10), ("recv", 4), ("recv", 100), ("bad_opcode", 0), ("bad_fd", 0), ("timeout0", 0),
              ("recv", 8), ("cancel_last", 0), ("poll_out", 0), ("linked_nops", 3), ("sendmsg", 6), ("wait", 0)]
    for cls in (Ring, COMPILED[0]):
        out = _replay(cls, script, 4)
        res = {i: r[0][0] for i, r in out["results"].items()}
        assert res[0] == 10 and res[1] == 4 and res[2] == 6
        assert res[3] == -errno.EINVAL and res[4] == -errno.EBADF and res[5] == -errno.ETIME
        assert res[6] == -errno.ECANCELED and res[7] == 0
        assert res[8] & POLLOUT
        assert out["received"] == {1: bytes([0]) * 4, 2: bytes([0]) * 6}


@needs_compiled
def test_the_loop_and_faulty_ring_use_the_compiled_ring() -> None:
    from uringws.loop import EventLoop

    assert RING_CLASS is COMPILED[0]
    loop = EventLoop()
    try:
        assert type(loop._ring) is RING_CLASS
        assert loop.read_mode in ("ring", "poll")
    finally:
        loop.close()
    with FaultyRing(seed=1, entries=8) as faulty:
        assert type(faulty.ring) is RING_CLASS


def test_pure_switch_gives_the_pure_ring() -> None:
    env = {k: v for k, v in os.environ.items() if k != "URINGWS_PURE"}
    env["URINGWS_PURE"] = "1"
    code = "from uringws.ring import fast; print(fast.RING_CLASS.__name__, fast.available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Ring", "False"]


@needs_compiled
def test_a_live_view_of_the_sqes_keeps_them_mapped_after_close() -> None:
    """close() with an exported _sqes view: the fd is closed, the SQE array stays mapped (no dangling view)."""
    ring = COMPILED[0](4)
    view = ring._sqes
    with pytest.raises(BufferError):
        ring.close()
    assert ring.closed and ring.fd == -1
    assert view[0:64] is not None and len(bytes(view[:64])) == 64  # still readable: nothing was unmapped under it
    view.release()


class _Buf(bytearray):
    """A bytearray that can be weakly referenced."""


@needs_compiled
def test_dropping_an_unclosed_ring_with_buffers_in_flight_keeps_them() -> None:
    """Collected while a RECV is in flight (its close cancels it): the buffer lives until its CQE, then goes."""
    a, b = socket.socketpair()
    with a, b:
        buf = _Buf(16)
        ref = weakref.ref(buf)
        ring = COMPILED[0](4)
        got: list[int] = []
        ring.recv(b.fileno(), buf, lambda res, f: got.append(res))
        ring.wait(0)
        with pytest.warns(ResourceWarning, match="unclosed io_uring"):
            del ring
            gc.collect()
        assert got == [-errno.ECANCELED]
        del buf
        gc.collect()
        assert ref() is None


@needs_compiled
def test_keyboard_interrupt_in_a_callback_keeps_the_rest_for_the_next_wait() -> None:
    with COMPILED[0](8) as ring:
        seen: list[int] = []

        def boom(res: int, flags: int) -> None:
            raise KeyboardInterrupt

        ring.nop(lambda res, f: seen.append(1))
        ring.nop(boom)
        ring.nop(lambda res, f: seen.append(3))
        ring.nop(lambda res, f: seen.append(4))
        with pytest.raises(KeyboardInterrupt):
            ring.wait(0)
        assert seen == [1]
        reap_until(ring, lambda: ring.in_flight == 0)
        assert seen == [1, 3, 4]


@needs_compiled
def test_long_lived_operations_survive_heavy_churn_around_them() -> None:
    """The in-flight table: recvs that stay pending while 20,000 NOPs come and go around them (growth, reuse of
    removed slots, rebuilds) are each still found exactly once, by their own user_data."""
    pairs = [socket.socketpair() for _ in range(300)]
    try:
        with COMPILED[0](64) as ring:
            got: dict[int, list[int]] = {}
            uds = {}
            for i, (_a, b) in enumerate(pairs):
                got[i] = []
                uds[i] = ring.recv(b.fileno(), bytearray(8), lambda res, f, i=i: got[i].append(res))
            nops: list[int] = []
            for _ in range(20_000 // 50):
                for _ in range(50):
                    ring.nop(lambda res, f: nops.append(res))
                ring.wait(0)
                assert ring.in_flight >= len(pairs)
            reap_until(ring, lambda: len(nops) == 20_000)
            assert ring.in_flight == len(pairs) and set(ring._pending) == set(uds.values())
            for i, (a, _b) in enumerate(pairs):
                a.send(b"%03d" % i)
            reap_until(ring, lambda: ring.in_flight == 0)
            assert got == {i: [3] for i in range(len(pairs))}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_refused_or_finished_operation_lets_go_of_its_bytearray(ring: Ring) -> None:
    """The bytearray a RECV/SEND pins (it cannot be resized while the kernel may use it) is let go when the
    operation is refused before it was queued, and when its CQE arrives, including the -ECANCELED of close()."""
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(8)
        with pytest.raises(ValueError, match="out of range"):
            ring.recv(b.fileno(), buf, None, flags=-1)
        with pytest.raises(ValueError, match="out of range"):
            ring.send(a.fileno(), buf, None, flags=2**33)
        buf.extend(b"resizable")  # nothing holds it
        ring.send(a.fileno(), buf, None)
        ring.recv(b.fileno(), buf, None)
        with pytest.raises(BufferError):
            buf.extend(b"pinned")
        reap_until(ring, lambda: ring.in_flight == 0)
        buf.extend(b"free again")
        ring.recv(b.fileno(), buf, None)
        ring.wait(0)
        ring.close()
        assert ring.in_flight == 0 and not ring.leaked
        buf.extend(b"free after close")
