"""Tests of the sans-I/O send queue (docs/design.md §3).

The heart is a hypothesis state machine that plays writer and kernel at once: random writes (0 B .. 1 MiB;
bytes, bytearray, memoryview, array, strided views), random short completions, EAGAIN/EINTR/ECANCELED, writes
while a send is in flight and limit changes. The "kernel" holds only weak references to the buffers it was
given and reads them when the send *completes*, so a queue that drops a buffer early or keeps a caller's
mutable buffer (which the writer scribbles over right after write()) is caught. The concatenation of what the
kernel accepted must equal the concatenation of everything written, byte for byte.

The same machine is run against deliberately broken queues to show that it can fail.
"""

from __future__ import annotations

import array
import errno
import gc
import random
import sys
import weakref
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from uringws.loop.sendqueue import (
    RETRYABLE_ERRNOS,
    SendQueue,
    SendQueueClosedError,
    SendQueueUsageError,
)

MiB = 1 << 20
# Payloads are slices of one random blob, so every write has distinct, checkable content without paying for
# hypothesis to generate megabytes.
BLOB = random.Random(20261125).randbytes(3 * MiB)

# Written out, not taken from the module, so that shrinking the module's set is caught.
RETRY = [errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECANCELED]
FATAL = [errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN, errno.EFAULT, errno.ETIMEDOUT]
KINDS = ["bytes", "bytearray", "mv_bytearray", "mv_bytes", "mv_bytes_slice", "array", "strided"]
# Kinds whose bytes object the queue must keep by reference (and release after its completion).
BY_REFERENCE = {"bytes", "mv_bytes", "mv_bytes_slice"}
MUTABLE = {"bytearray", "mv_bytearray", "array"}


class StreamMismatch(AssertionError):
    """The kernel accepted bytes that differ from the written stream at the same offset."""


def _raw_refs(holder: list[bytes]) -> int:
    return sys.getrefcount(holder[0])


# References to an object held only by a one-element list, seen from _raw_refs (calibrated, not guessed).
_BASE_REFS = _raw_refs([bytes(bytearray(b"calibrate"))])


def extra_refs(holder: list[bytes]) -> int:
    """References to holder[0] beyond the test's own: what the queue (or its views) still hold."""
    return _raw_refs(holder) - _BASE_REFS


def make_payload(kind: str, size: int, start: int) -> tuple[Any, bytes, bytes | None]:
    """(object to pass to write(), the bytes it stands for, the underlying bytes object if immutable)."""
    if kind == "strided":
        raw = BLOB[start : start + 2 * size]
        view = memoryview(raw)[::2]
        return view, view.tobytes(), None
    if kind == "mv_bytes_slice":
        raw = BLOB[start : start + size + 3]
        return memoryview(raw)[3:], raw[3:], raw
    raw = BLOB[start : start + size]
    if kind == "bytes":
        return raw, raw, raw
    if kind == "mv_bytes":
        return memoryview(raw), raw, raw
    if kind == "bytearray":
        return bytearray(raw), raw, None
    if kind == "mv_bytearray":
        return memoryview(bytearray(raw)), raw, None
    if kind == "array":
        return array.array("B", raw), raw, None
    raise AssertionError(kind)


def scribble(obj: Any) -> None:
    """What a caller may do after write() returns: reuse its buffer for something else."""
    if isinstance(obj, bytearray):
        obj[:] = b"\xee" * len(obj)
    elif isinstance(obj, array.array):
        obj[:] = array.array("B", b"\xee" * len(obj))
    elif isinstance(obj, memoryview) and not obj.readonly:
        obj[:] = b"\xee" * obj.nbytes


def read_views(refs: list[weakref.ReferenceType[memoryview]]) -> bytes:
    """The kernel reads its buffers at completion time; each must still be alive (the queue holds it)."""
    parts = []
    for r in refs:
        view = r()
        assert view is not None, "the queue released a buffer before its send completed"
        parts.append(view.tobytes())
    return b"".join(parts)


sizes = st.one_of(
    st.integers(0, 128),  # WebSocket-frame-sized writes
    st.integers(0, 40 * 1024),  # around join_below
    st.integers(0, MiB),  # big ones, bigger than a batch
)


class SendQueueMachine(RuleBasedStateMachine):
    """Writer + fake kernel around one queue; checks the stream, the in-flight rule, refs and flow control."""

    queue_cls: ClassVar[type[SendQueue]] = SendQueue
    # The naive-queue test turns the bookkeeping checks off, to show the stream check alone catches the bug.
    check_bookkeeping: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.q: SendQueue = self.queue_cls()
        self.written = bytearray()
        self.accepted = 0
        self.batch: list[weakref.ReferenceType[memoryview]] | None = None
        self.batch_len = 0
        self.paused = False
        self.low, self.high = 16 * 1024, 64 * 1024
        self.tracked: list[tuple[list[bytes], int]] = []  # (holder of a by-reference bytes, its stream end)
        self.dead_batches: list[weakref.ReferenceType[memoryview]] = []
        self.step_pending = False

    @initialize(
        max_batch_bytes=st.sampled_from([1, 100, 4096, 256 * 1024]),
        max_iov=st.sampled_from([1, 2, 3, 64, 64]),
        join_below=st.sampled_from([0, 1, 64, 16 * 1024]),
        high=st.integers(0, 2 * MiB),
        low_frac=st.floats(0, 1),
    )
    def setup(self, max_batch_bytes: int, max_iov: int, join_below: int, high: int, low_frac: float) -> None:
        low = int(high * low_frac)
        self.q = self.queue_cls(
            max_batch_bytes=max_batch_bytes, max_iov=max_iov, join_below=join_below, high_water=high, low_water=low
        )
        self.low, self.high = low, high
        self.max_batch_bytes, self.max_iov = max_batch_bytes, max_iov
        assert self.q.get_limits() == (low, high)

    # -- writer --------------------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(KINDS), size=sizes)
    def write(self, kind: str, size: int) -> None:
        self._begin()
        start = len(self.written) % (len(BLOB) - 2 * MiB - 8)
        obj, content, immutable = make_payload(kind, size, start)
        pause = self.q.write(obj)
        scribble(obj)  # the queue must have copied anything mutable
        del obj
        self.written += content
        expected_pause = not self.paused and len(self.written) - self.accepted > self.high
        if self.check_bookkeeping:
            assert pause == expected_pause, "pause must be reported exactly once, when buffered crosses high"
        self.paused = self.paused or expected_pause
        if kind in BY_REFERENCE and immutable is not None and len(immutable) >= 2:
            # Size >= 2: CPython caches the 0- and 1-byte bytes objects, whose refcounts mean nothing.
            self.tracked.append(([immutable], len(self.written)))

    @rule(items=st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 40 * 1024)), min_size=2, max_size=20))
    def write_burst(self, items: list[tuple[str, int]]) -> None:
        """Many writes between two completions (a broadcast): exercises joining and iovec batches."""
        self._begin()
        for kind, size in items:
            self.write(kind, size)

    @rule(high=st.integers(0, 2 * MiB), low_frac=st.floats(0, 1))
    def set_limits(self, high: int, low_frac: float) -> None:
        self._begin()
        low = int(high * low_frac)
        pause = self.q.set_limits(high, low)
        self.low, self.high = low, high
        expected = not self.paused and len(self.written) - self.accepted > high
        if self.check_bookkeeping:
            assert pause == expected
        self.paused = self.paused or expected

    # -- kernel --------------------------------------------------------------------------------------------

    @rule()
    def submit(self) -> None:
        self._begin()
        chunks_before, head_offset = self.q.chunk_count, self.q._offset
        views = self.q.next_send()
        if self.batch is not None:
            assert views is None, "a second send was handed out while one is in flight"
            return
        if len(self.written) == self.accepted:
            assert views is None
            return
        if not views:
            # With bookkeeping off (naive-queue test), a lost tail is left for teardown's stream check.
            assert not self.check_bookkeeping, "bytes are queued and nothing is in flight, yet nothing to send"
            return
        total = 0
        for v in views:
            assert isinstance(v, memoryview) and v.ndim == 1 and v.format == "B" and v.c_contiguous
            assert v.nbytes > 0
            total += v.nbytes
        assert len(views) <= self.max_iov
        assert total <= self.max_batch_bytes or len(views) == 1
        assert total <= len(self.written) - self.accepted
        assert self.q.next_send() is None, "next_send() twice without a completion: a second send in flight"
        self.batch = [weakref.ref(v) for v in views]
        self.batch_len = total
        event(f"send of {min(len(views), 4)}{'+' if len(views) >= 4 else ''} buffers")
        if chunks_before > 1 and self.q.chunk_count < chunks_before:
            event("joined after a short send" if head_offset else "joined")
        del views, v

    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self._begin()
        if self.batch is None:
            with pytest.raises(SendQueueUsageError):
                self.q.completed(0)
            return
        n = data.draw(st.one_of(st.just(self.batch_len), st.integers(0, self.batch_len)), label="n")
        event("short completion" if n < self.batch_len else "full completion")
        if self.paused:
            event("completed while paused")
        sent = read_views(self.batch)[:n]
        pos = self.accepted
        if sent != self.written[pos : pos + n]:
            raise StreamMismatch(f"kernel got different bytes at stream offset {pos} (+{n})")
        resume = self.q.completed(n)
        self.accepted += n
        expected_resume = self.paused and len(self.written) - self.accepted <= self.low
        if self.check_bookkeeping:
            assert resume == expected_resume, "resume must be reported exactly once, when buffered falls to low"
        self.paused = self.paused and not expected_resume
        self.dead_batches.extend(self.batch)
        self.batch = None
        self.check_released()

    @rule(err=st.sampled_from(RETRY))
    def fail_retry(self, err: int) -> None:
        self._begin()
        if self.batch is None:
            with pytest.raises(SendQueueUsageError):
                self.q.failed(err)
            return
        assert self.q.failed(err) is True
        self.dead_batches.extend(self.batch)
        self.batch = None

    @rule(data=st.data(), steps=st.integers(1, 8))
    def kernel_runs(self, data: st.DataObject, steps: int) -> None:
        """Several send/complete rounds in a row, as a busy ring would produce them."""
        self._begin()
        for _ in range(steps):
            if self.batch is None:
                self.submit()
                if self.batch is None:
                    return
            elif data.draw(st.integers(0, 9), label="retry?") == 0:
                self.fail_retry(data.draw(st.sampled_from(RETRY), label="errno"))
            else:
                self.complete(data)

    @rule(extra=st.integers(1, 10))
    def complete_too_much(self, extra: int) -> None:
        """A count beyond what was submitted is a caller bug: it raises and changes nothing."""
        self._begin()
        if self.batch is None:
            return
        with pytest.raises(SendQueueUsageError):
            self.q.completed(self.batch_len + extra)
        with pytest.raises(SendQueueUsageError):
            self.q.completed(-1)
        assert self.q.in_flight

    # -- checks --------------------------------------------------------------------------------------------

    def _begin(self) -> None:
        # Cleared by the invariant after every step that finished; teardown uses it to stay quiet after a
        # failed step, so the failure that hypothesis reports is the first one, not a consequence of it.
        self.step_pending = True

    def check_released(self) -> None:
        if not self.check_bookkeeping:
            return
        # No gc.collect(): the queue must release by refcount alone, the moment the completion arrives.
        for r in self.dead_batches:
            assert r() is None, "a completed send's buffer is still referenced"
        self.dead_batches.clear()
        still = []
        for holder, end in self.tracked:
            if end <= self.accepted:
                assert extra_refs(holder) == 0, "a fully sent write is still referenced by the queue"
            else:
                still.append((holder, end))
        self.tracked = still

    @invariant()
    def bookkeeping(self) -> None:
        self.step_pending = False
        if not self.check_bookkeeping:
            return
        q = self.q
        buffered = len(self.written) - self.accepted
        assert q.buffered == buffered
        assert q.in_flight == (self.batch is not None)
        assert q.drained == (buffered == 0 and self.batch is None)
        assert q.paused == self.paused
        assert not q.closed
        if buffered == 0:
            assert q.chunk_count == 0

    def teardown(self) -> None:
        """Let the kernel take everything: the accepted stream must be the written stream."""
        if self.step_pending:
            return
        for _ in range(100_000):
            if self.batch is None:
                views = self.q.next_send()
                if views is None:
                    break
                self.batch = [weakref.ref(v) for v in views]
                self.batch_len = sum(v.nbytes for v in views)
                del views
            sent = read_views(self.batch)
            if sent != self.written[self.accepted : self.accepted + len(sent)]:
                raise StreamMismatch(f"kernel got different bytes at stream offset {self.accepted}")
            self.q.completed(self.batch_len)
            self.accepted += self.batch_len
            self.dead_batches.extend(self.batch)
            self.batch = None
        if self.accepted != len(self.written):
            raise StreamMismatch(f"the kernel accepted {self.accepted} bytes of {len(self.written)} written")
        self.check_released()
        for holder, _ in self.tracked:
            assert extra_refs(holder) == 0


MACHINE_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TestSendQueueStateful = SendQueueMachine.TestCase
TestSendQueueStateful.settings = MACHINE_SETTINGS


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sendqueue_stateful_long() -> None:
    """The same machine, longer runs and many more of them (run with -m slow; a few minutes on a busy box)."""
    run_state_machine_as_test(
        SendQueueMachine, settings=settings(MACHINE_SETTINGS, max_examples=1500, stateful_step_count=100)
    )


# -- the property can fail: deliberately naive queues ------------------------------------------------------


class ForgetsRemainderQueue(SendQueue):
    """The bug of rustls #1762: treats every completion as if the whole submitted batch went out."""

    def completed(self, n: int) -> bool:
        if self._inflight is not None and 0 <= n <= self._inflight_n:
            n = self._inflight_n  # "it was all sent" -- the short count is ignored
        return super().completed(n)


class ManyInFlightQueue(SendQueue):
    """Hands out the next queued bytes even while a send is in flight (unordered concurrent sends)."""

    def next_send(self) -> list[memoryview] | None:
        self._inflight = None
        return super().next_send()


def _run_against(queue_cls: type[SendQueue], *, bookkeeping: bool) -> None:
    machine = type(
        f"MachineFor{queue_cls.__name__}",
        (SendQueueMachine,),
        {"queue_cls": queue_cls, "check_bookkeeping": bookkeeping},
    )
    run_state_machine_as_test(
        machine,
        settings=settings(
            MACHINE_SETTINGS,
            max_examples=300,
            derandomize=True,
            database=None,
            print_blob=False,
            report_multiple_bugs=False,
            # No shrinking: we only need to know that it fails, and shrinking a stateful run is slow.
            phases=[Phase.explicit, Phase.generate],
        ),
    )


def test_property_catches_forgotten_remainder() -> None:
    # Only the stream comparison is left on: it alone must catch a dropped remainder.
    with pytest.raises(StreamMismatch):
        _run_against(ForgetsRemainderQueue, bookkeeping=False)


def test_property_catches_second_send_in_flight() -> None:
    with pytest.raises(AssertionError, match="second send"):
        _run_against(ManyInFlightQueue, bookkeeping=True)


# -- seeded random workloads: many thousands of steps, cheaper than hypothesis per step ---------------------


def simulate(queue: SendQueue, rng: random.Random, steps: int, *, max_write: int) -> None:
    """Drive `queue` as a writer and a kernel with random choices; raise StreamMismatch on any stream damage.

    Writes (mostly small, sometimes large, every kind), short completions, retries, and bursts of writes while a
    send is in flight. The kernel reads its buffers only at completion time, after the writer has scribbled
    over its mutable ones.
    """
    written = bytearray()
    accepted = 0
    batch: list[memoryview] | None = None
    for _ in range(steps):
        action = rng.random()
        if action < 0.45:
            size = rng.randrange(max_write) if rng.random() < 0.1 else rng.randrange(min(max_write, 200))
            kind = rng.choice(KINDS)
            obj, content, _ = make_payload(kind, size, rng.randrange(MiB))
            queue.write(obj)
            scribble(obj)
            written += content
        elif batch is None:
            batch = queue.next_send()
        elif action < 0.5:
            assert queue.failed(rng.choice(RETRY)) is True
            batch = None
        else:
            total = sum(v.nbytes for v in batch)
            n = total if rng.random() < 0.5 else rng.randint(0, total)
            sent = b"".join(v.tobytes() for v in batch)[:n]
            if sent != written[accepted : accepted + n]:
                raise StreamMismatch(f"kernel got different bytes at stream offset {accepted} (+{n})")
            queue.completed(n)
            accepted += n
            batch = None
            if accepted > MiB:  # forget the confirmed prefix: long runs stay small in memory
                del written[:accepted]
                accepted = 0
        if queue.buffered != len(written) - accepted:
            raise StreamMismatch(f"queue holds {queue.buffered} bytes, {len(written) - accepted} are unsent")
    while True:
        if batch is None:
            batch = queue.next_send()
            if batch is None:
                break
        total = sum(v.nbytes for v in batch)
        if b"".join(v.tobytes() for v in batch) != written[accepted : accepted + total]:
            raise StreamMismatch(f"kernel got different bytes at stream offset {accepted}")
        queue.completed(total)
        accepted += total
        batch = None
    if accepted != len(written):
        raise StreamMismatch(f"the kernel accepted {accepted} bytes of {len(written)} written")


CONFIGS = [
    {},
    {"join_below": 0},
    {"join_below": 64, "max_iov": 4},
    {"max_batch_bytes": 1000, "max_iov": 2},
    {"max_batch_bytes": 1, "max_iov": 1},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
@pytest.mark.parametrize("seed", range(3))
def test_random_workload_keeps_the_stream(config: dict[str, int], seed: int) -> None:
    simulate(SendQueue(**config), random.Random(seed), 10_000, max_write=70_000)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_random_workload_keeps_the_stream_long(config: dict[str, int]) -> None:
    for seed in range(10):
        simulate(SendQueue(**config), random.Random(1000 + seed), 30_000, max_write=512 * 1024)


@pytest.mark.parametrize("queue_cls", [ForgetsRemainderQueue])
def test_random_workload_catches_naive_queue(queue_cls: type[SendQueue]) -> None:
    with pytest.raises(StreamMismatch):
        simulate(queue_cls(), random.Random(0), 3000, max_write=70_000)


# -- fatal errors ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    writes=st.lists(st.tuples(st.sampled_from(KINDS), sizes), min_size=1, max_size=8),
    fracs=st.lists(st.floats(0, 1), max_size=6),
    err=st.sampled_from(FATAL),
)
def test_fatal_errno_drops_everything(writes: list[tuple[str, int]], fracs: list[float], err: int) -> None:
    q = SendQueue()
    holders = []
    for kind, size in writes:
        obj, content, immutable = make_payload(kind, size, 0)
        q.write(obj)
        if immutable is not None and len(immutable) >= 2:
            holders.append([immutable])
        del obj, content, immutable
    for frac in fracs:
        views = q.next_send()
        if views is None:
            break
        q.completed(int(sum(v.nbytes for v in views) * frac))
        del views
    views = q.next_send()
    if views is None:  # everything happened to be sent; queue one more byte string to fail on
        q.write(b"tail")
        views = q.next_send()
        assert views is not None
    del views
    assert q.failed(err) is False
    assert q.closed and q.error == err
    assert q.buffered == 0 and q.drained and not q.in_flight and q.chunk_count == 0
    assert not q.paused
    assert q.next_send() is None
    with pytest.raises(SendQueueClosedError, match=errno.errorcode[err]):
        q.write(b"more")
    with pytest.raises(SendQueueUsageError):
        q.completed(0)
    for holder in holders:
        assert extra_refs(holder) == 0


@pytest.mark.parametrize("err", FATAL)
def test_fatal_errno_is_not_retryable(err: int) -> None:
    assert err not in RETRYABLE_ERRNOS


# -- deterministic cases -----------------------------------------------------------------------------------


def test_single_write_goes_whole_without_copy() -> None:
    q = SendQueue()
    data = b"x" * 100_000
    assert q.write(data) is True  # 100 kB > 64 KiB high water
    views = q.next_send()
    assert views is not None and len(views) == 1
    assert views[0].obj is data  # kept by reference
    assert q.in_flight and q.next_send() is None
    assert q.completed(100_000) is True  # buffered 0 <= low: resume
    assert q.drained and q.chunk_count == 0


def test_short_completion_remainder_goes_first() -> None:
    q = SendQueue(join_below=0)
    q.write(b"abcdef")
    assert [bytes(v) for v in q.next_send() or []] == [b"abcdef"]
    q.write(b"ghi")  # arrives while the first send is in flight
    q.completed(4)
    assert q.buffered == 5
    assert [bytes(v) for v in q.next_send() or []] == [b"ef", b"ghi"]
    q.completed(1)
    assert [bytes(v) for v in q.next_send() or []] == [b"f", b"ghi"]
    q.completed(4)
    assert q.drained


def test_small_chunks_are_joined_into_one_buffer() -> None:
    q = SendQueue()
    for i in range(100):
        q.write(bytes([i]) * 64)
    views = q.next_send()
    assert views is not None and len(views) == 1
    assert bytes(views[0]) == b"".join(bytes([i]) * 64 for i in range(100))
    assert q.chunk_count == 1  # the queue holds the joined object, not the 100 parts
    assert views[0].obj is q._chunks[0]


def test_remainder_is_joined_with_later_small_writes() -> None:
    q = SendQueue()
    q.write(b"abcdef")
    q.next_send()
    q.write(b"gh")
    q.write(bytearray(b"ij"))
    q.completed(2)
    views = q.next_send()
    assert views is not None and [bytes(v) for v in views] == [b"cdefghij"]
    assert q.chunk_count == 1
    q.completed(3)
    q.write(b"k")
    views = q.next_send()
    assert views is not None and [bytes(v) for v in views] == [b"fghijk"]


def test_large_chunks_go_by_reference_as_iovec() -> None:
    q = SendQueue(max_iov=3, max_batch_bytes=1 << 30)
    parts = [bytes([i]) * 20_000 for i in range(5)]
    for p in parts:
        q.write(p)
    views = q.next_send()
    assert views is not None
    assert [v.obj for v in views] == parts[:3]  # no copies, at most max_iov
    assert all(v.obj is p for v, p in zip(views, parts, strict=False))


def test_batch_respects_max_batch_bytes() -> None:
    q = SendQueue(max_batch_bytes=50_000, join_below=0)
    for i in range(4):
        q.write(bytes([i]) * 20_000)
    views = q.next_send()
    assert views is not None and sum(v.nbytes for v in views) == 40_000
    q.completed(40_000)
    views = q.next_send()
    assert views is not None and sum(v.nbytes for v in views) == 40_000


def test_mixed_small_and_large() -> None:
    q = SendQueue()
    big = b"B" * 20_000
    for chunk in (b"a", b"b", big, b"c", b"d"):
        q.write(chunk)
    views = q.next_send()
    assert views is not None
    assert [bytes(v) for v in views] == [b"ab", big, b"cd"]
    assert views[1].obj is big


def test_mutable_buffers_are_copied() -> None:
    q = SendQueue()
    buf = bytearray(b"hello")
    q.write(buf)
    buf[:] = b"HELLO"
    mv = memoryview(bytearray(b"world"))
    q.write(mv)
    mv[:] = b"WORLD"
    views = q.next_send()
    assert views is not None and b"".join(bytes(v) for v in views) == b"helloworld"


def test_memoryview_of_bytes_not_copied_and_survives_release() -> None:
    q = SendQueue()
    data = b"y" * 30_000
    mv = memoryview(data)[10:]
    q.write(mv)
    mv.release()  # the caller is done with its view; ours must be independent
    views = q.next_send()
    assert views is not None and views[0].obj is data and views[0].nbytes == 29_990


def test_empty_and_bad_writes() -> None:
    q = SendQueue()
    assert q.write(b"") is False
    assert q.write(bytearray()) is False
    assert q.write(memoryview(b"")) is False
    assert q.next_send() is None and q.drained
    with pytest.raises(TypeError):
        q.write("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        q.write(12)  # type: ignore[arg-type]


def test_non_byte_formats_are_sent_as_raw_bytes() -> None:
    q = SendQueue()
    a = array.array("i", [1, 2, 3])
    q.write(a)  # type: ignore[arg-type]  # asyncio's annotation is narrower than what works
    q.write(memoryview(b"abcdefgh").cast("I"))
    views = q.next_send()
    assert views is not None
    assert b"".join(bytes(v) for v in views) == a.tobytes() + b"abcdefgh"


def test_retryable_errors_resend_the_same_bytes() -> None:
    for err in RETRY:
        q = SendQueue()
        q.write(b"payload")
        first = q.next_send()
        assert first is not None
        assert q.failed(err) is True
        assert not q.in_flight and q.buffered == 7
        again = q.next_send()
        assert again is not None and [bytes(v) for v in again] == [b"payload"]


def test_usage_errors() -> None:
    q = SendQueue()
    with pytest.raises(SendQueueUsageError):
        q.completed(0)
    with pytest.raises(SendQueueUsageError):
        q.failed(errno.EAGAIN)
    q.write(b"abc")
    q.next_send()
    with pytest.raises(SendQueueUsageError):
        q.completed(4)
    with pytest.raises(SendQueueUsageError):
        q.failed(-errno.EAGAIN)  # the CQE's res must be negated by the caller
    assert q.in_flight and q.buffered == 3  # nothing changed
    q.completed(3)
    assert q.drained
    for parts in ([b"ab", b"cd"], [b"ab", b"x" * 20_000]):  # a joined batch, an iovec batch
        for p in parts:
            q.write(p)
        views = q.next_send()
        assert views is not None
        total = sum(v.nbytes for v in views)
        with pytest.raises(SendQueueUsageError):
            q.completed(total + 1)
        q.completed(total)
        assert q.drained


def test_abort_while_in_flight_keeps_buffers_until_completion() -> None:
    q = SendQueue()
    data = bytes(range(256)) * 400
    holder = [data]
    q.write(data)
    del data
    views = q.next_send()
    assert views is not None
    ref = weakref.ref(views[0])
    del views
    q.abort()
    assert q.closed and q.buffered == 0 and q.in_flight and not q.drained
    gc.collect()
    assert ref() is not None, "the kernel may still read this buffer"
    with pytest.raises(SendQueueClosedError):
        q.write(b"late")
    assert q.completed(100) is False  # accepted and ignored
    assert ref() is None and extra_refs(holder) == 0
    assert q.drained and q.next_send() is None


def test_close_drops_and_refuses_writes() -> None:
    q = SendQueue()
    q.write(b"a" * 10)
    q.close()
    assert q.closed and q.error is None and q.drained and q.chunk_count == 0
    with pytest.raises(SendQueueClosedError, match="close"):
        q.write(b"b")
    q2 = SendQueue()
    q2.write(b"x")
    q2.next_send()
    q2.close()
    assert q2.failed(errno.EAGAIN) is False  # nothing to retry on a closed queue
    assert q2.drained


# -- flow control ------------------------------------------------------------------------------------------


def test_limits_follow_asyncio() -> None:
    q = SendQueue()
    assert q.get_limits() == (16 * 1024, 64 * 1024)
    q.set_limits(high=1000)
    assert q.get_limits() == (250, 1000)
    q.set_limits(low=100)
    assert q.get_limits() == (100, 400)
    q.set_limits()
    assert q.get_limits() == (16 * 1024, 64 * 1024)
    q.set_limits(0, 0)
    assert q.get_limits() == (0, 0)
    for high, low in ((10, 11), (-1, None), (10, -1)):
        with pytest.raises(ValueError, match="must be >= low"):
            q.set_limits(high, low)
    with pytest.raises(ValueError):
        SendQueue(high_water=10, low_water=20)
    assert SendQueue(high_water=1000).get_limits() == (250, 1000)


def test_pause_and_resume_reported_once_per_crossing() -> None:
    q = SendQueue(high_water=100, low_water=20)
    assert q.write(b"a" * 100) is False  # == high is not above it
    assert q.write(b"b") is True  # crossed
    assert q.write(b"c" * 50) is False  # still above: no second pause
    views = q.next_send()
    assert views is not None
    assert q.completed(100) is False  # 51 left > low
    assert q.paused
    q.next_send()
    assert q.completed(31) is True  # 20 left == low: resume
    assert q.write(b"d") is False and not q.paused
    q.next_send()
    assert q.completed(21) is False  # not paused: nothing to report
    assert q.write(b"e" * 101) is True  # and it can pause again


def test_set_limits_can_pause_but_not_resume() -> None:
    q = SendQueue()
    q.write(b"z" * 1000)
    assert q.set_limits(high=500) is True
    assert q.set_limits(high=10_000) is False  # asyncio resumes only on progress
    assert q.paused
    q.next_send()
    assert q.completed(1) is True


# -- speed (the hot path; generous bound so a noisy shared box does not flake) ------------------------------


def test_hot_path_is_cheap() -> None:
    import timeit

    q = SendQueue()
    data = b"m" * 64

    def one(w: Any = q.write, ns: Any = q.next_send, c: Any = q.completed, d: bytes = data) -> None:
        w(d)
        ns()
        c(64)

    per_op = min(timeit.repeat(one, number=20_000, repeat=3)) / 20_000
    assert per_op < 20e-6, f"write+next_send+completed of 64 B took {per_op * 1e6:.2f} µs"
