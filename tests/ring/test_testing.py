"""The fault-injecting ring double: its faults are real, and they catch a naive sender but not a correct one."""

from __future__ import annotations

import collections
import errno
import hashlib
import random
import socket
from typing import Any

import pytest

from uringws.ring import Ring, RingClosedError, RingError
from uringws.ring.io_uring import IORING_CQE_F_MORE, POLLIN
from uringws.ring.testing import Completion, Faults, FaultyRing, plan_batch

from .conftest import reap_until, submit, tcp_pair

CHUNK = 16 * 1024
#: errors a correct sender retries; -ECANCELED (also injected by default) must abort it instead
RETRYABLE = Faults(send_errors=(errno.EAGAIN, errno.EINTR))


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class CorrectSender:
    """One send in flight; advance by exactly ``res``; resubmit the remainder; retry EAGAIN/EINTR."""

    def __init__(self, ring: Any, sock: socket.socket, data: bytes) -> None:
        self.ring, self.sock, self.view = ring, sock, memoryview(data)
        self.off = 0
        self.error: int | None = None
        self.done = False
        self.sends = 0

    def start(self) -> None:
        self.ring.send(self.sock.fileno(), self.view[self.off:self.off + CHUNK], self.on_sent)
        self.sends += 1

    def on_sent(self, res: int, flags: int) -> None:
        if res in (-errno.EAGAIN, -errno.EINTR):
            self.start()
        elif res < 0:
            self.error = res
            self.done = True
        else:
            self.off += res
            if self.off < len(self.view):
                self.start()
            else:
                self.sock.shutdown(socket.SHUT_WR)
                self.done = True


class NaiveDropSender(CorrectSender):
    """Bug: moves on to the next chunk whatever the kernel took (the remainder of a short send is lost)."""

    def start(self) -> None:
        self.ring.send(self.sock.fileno(), self.view[self.off:self.off + CHUNK], self.on_sent)

    def on_sent(self, res: int, flags: int) -> None:
        if res in (-errno.EAGAIN, -errno.EINTR):
            self.start()
            return
        self.off += CHUNK
        if self.off < len(self.view):
            self.start()
        else:
            self.sock.shutdown(socket.SHUT_WR)
            self.done = True


class NaiveConcurrentSender(CorrectSender):
    """Bug: every chunk in flight at once; each resubmits its own remainder (correct alone, reorders together)."""

    def start(self) -> None:
        self.left = 0
        for off in range(0, len(self.view), CHUNK):
            self.left += 1
            self._send(off, min(off + CHUNK, len(self.view)))

    def _send(self, start: int, end: int) -> None:
        def on_sent(res: int, flags: int) -> None:
            if res in (-errno.EAGAIN, -errno.EINTR, -errno.ECANCELED):
                self._send(start, end)
            elif res < 0:
                self.error = res
            elif start + res < end:
                self._send(start + res, end)
            else:
                self.left -= 1
                if not self.left:
                    self.sock.shutdown(socket.SHUT_WR)
                    self.done = True

        self.ring.send(self.sock.fileno(), self.view[start:end], on_sent)


class Receiver:
    """Reads until EOF; retries EAGAIN/EINTR; keeps exactly the ``res`` bytes of each completion."""

    def __init__(self, ring: Any, sock: socket.socket) -> None:
        self.ring, self.sock = ring, sock
        self.buf = bytearray(32 * 1024)
        self.chunks: list[bytes] = []
        self.eof = False
        self.error: int | None = None

    def start(self) -> None:
        self.ring.recv(self.sock.fileno(), self.buf, self.on_recv)

    def on_recv(self, res: int, flags: int) -> None:
        if res in (-errno.EAGAIN, -errno.EINTR):
            self.start()
        elif res < 0:
            self.error = res
        elif res == 0:
            self.eof = True
        else:
            self.chunks.append(bytes(self.buf[:res]))
            self.start()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


def transfer(ring: Any, sender_cls: type[CorrectSender], data: bytes) -> tuple[bytes, CorrectSender]:
    client, server = tcp_pair(sndbuf=16 * 1024, rcvbuf=16 * 1024)
    with client, server:
        sender = sender_cls(ring, client, data)
        receiver = Receiver(ring, server)
        receiver.start()
        sender.start()
        reap_until(ring, lambda: receiver.eof or receiver.error is not None or sender.error is not None,
                   timeout=20)
        assert sender.error is None and receiver.error is None
        return receiver.data, sender


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_correct_sender_delivers_an_intact_stream_under_faults(seed: int) -> None:
    data = payload(seed, 1 << 20)
    with FaultyRing(Ring(64), seed=seed, faults=RETRYABLE) as ring:
        got, sender = transfer(ring, CorrectSender, data)
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        c = ring.counters
        # The faults really happened (and often): otherwise this test would prove nothing.
        assert c["send_short"] > 0 and c["send_error"] > 0 and c["recv_short"] > 0 and c["recv_error"] > 0
        assert c["reordered"] > 0 and c["delayed"] > 0
        assert sender.sends > 10


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_faults_catch_a_sender_that_drops_the_remainder(seed: int) -> None:
    data = payload(seed, 1 << 20)
    with FaultyRing(Ring(64), seed=seed, faults=RETRYABLE) as ring:
        got, _ = transfer(ring, NaiveDropSender, data)
        assert ring.counters["send_short"] > 0
        assert got != data and len(got) < len(data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_faults_catch_several_sends_in_flight(seed: int) -> None:
    data = payload(seed, 1 << 20)
    with FaultyRing(Ring(64), seed=seed) as ring:
        got, _ = transfer(ring, NaiveConcurrentSender, data)
        assert ring.counters["send_error"] > 0
        assert len(got) == len(data)  # every byte arrived ...
        assert got != data  # ... but not in order: a TLS peer would fail the next record's MAC


def test_injected_ecanceled_aborts_a_correct_sender_without_corrupting_the_stream() -> None:
    data = payload(4, 1 << 20)
    faults = Faults(send_error=0.2, send_errors=(errno.ECANCELED,))
    with FaultyRing(Ring(64), seed=4, faults=faults) as ring:
        client, server = tcp_pair(sndbuf=16 * 1024, rcvbuf=16 * 1024)
        with client, server:
            sender = CorrectSender(ring, client, data)
            receiver = Receiver(ring, server)
            receiver.start()
            sender.start()
            reap_until(ring, lambda: sender.done, timeout=20)
            assert sender.error == -errno.ECANCELED and ring.counters["send_error"] > 0
            client.shutdown(socket.SHUT_WR)  # the connection is given up: the peer sees EOF
            reap_until(ring, lambda: receiver.eof, timeout=20)
            got = receiver.data
            assert len(got) == sender.off < len(data)
            assert got == data[: len(got)]  # a clean prefix, no gap


def test_without_faults_the_double_behaves_like_the_ring() -> None:
    data = payload(9, 256 * 1024)
    with FaultyRing(Ring(64), seed=9, faults=Faults.none()) as ring:
        got, _ = transfer(ring, CorrectSender, data)
        assert got == data
        assert sum(ring.counters.values()) == 0


# ------------------------------------------------------------------------------------------------ each fault
def test_injected_send_error_completes_at_next_wait_and_sends_nothing() -> None:
    a, b = socket.socketpair()
    with a, b, FaultyRing(Ring(8), seed=0, faults=Faults(send_error=1.0, send_short=0, recv_short=0,
                                                          recv_error=0, reorder=0, delay=0)) as ring:
        ud, got = submit(ring, "send", a.fileno(), b"never sent")
        assert not got and ring.in_flight == 1  # not synchronous
        assert ring.wait(0) == 1
        assert got[0][0] in (-errno.EAGAIN, -errno.EINTR, -errno.ECANCELED)
        assert ring.counters["send_error"] == 1 and ring.in_flight == 0
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)
        _, cgot = submit(ring, "cancel", ud)  # it is over: nothing to cancel
        reap_until(ring, lambda: bool(cgot))
        assert cgot[0][0] == -errno.ENOENT


def test_injected_short_send_really_sends_only_the_prefix() -> None:
    a, b = socket.socketpair()
    faults = Faults(send_short=1.0, send_error=0, recv_short=0, recv_error=0, reorder=0, delay=0)
    with a, b, FaultyRing(Ring(8), seed=5, faults=faults) as ring:
        data = payload(5, 1000)
        _, got = submit(ring, "send", a.fileno(), data)
        _, got2 = submit(ring, "sendmsg", a.fileno(), [data[:10], data[10:]])
        reap_until(ring, lambda: bool(got and got2))
        n, n2 = got[0][0], got2[0][0]
        assert 0 < n < len(data) and 0 < n2 < len(data)
        assert ring.counters["send_short"] == 1 and ring.counters["sendmsg_short"] == 1
        b.setblocking(False)
        assert b.recv(4000) == data[:n] + data[:n2]


def test_injected_short_and_failed_recv() -> None:
    a, b = socket.socketpair()
    faults = Faults(send_short=0, send_error=0, recv_short=1.0, recv_error=0, reorder=0, delay=0)
    with a, b, FaultyRing(Ring(8), seed=3, faults=faults) as ring:
        a.sendall(b"0123456789")
        buf = bytearray(10)
        _, got = submit(ring, "recv", b.fileno(), buf)
        reap_until(ring, lambda: bool(got))
        n = got[0][0]
        assert 0 < n < 10 and bytes(buf[:n]) == b"0123456789"[:n]
        ring.faults = Faults(send_short=0, send_error=0, recv_short=0, recv_error=1.0, reorder=0, delay=0)
        _, got = submit(ring, "recv", b.fileno(), buf)
        ring.wait(0)
        assert got[0][0] in (-errno.EAGAIN, -errno.EINTR)
        assert b.recv(100) == b"0123456789"[n:]  # the failed recv consumed nothing


def test_same_errors_as_the_ring_for_bad_buffers() -> None:
    with FaultyRing(Ring(8), seed=1, faults=Faults(send_error=1.0, recv_error=1.0)) as ring:
        with pytest.raises(TypeError, match="bytes-like"):
            ring.send(0, "text", None)
        with pytest.raises(TypeError, match="writable"):
            ring.recv(0, b"read-only", None)
        assert ring.in_flight == 0


def test_wait_from_callback_and_closed_ring() -> None:
    errors: list[BaseException] = []
    ring = FaultyRing(Ring(8, on_callback_error=lambda exc, ud: errors.append(exc)), seed=1)
    ring.nop(lambda res, f: ring.wait(0))
    reap_until(ring, lambda: ring.in_flight == 0)
    assert len(errors) == 1 and isinstance(errors[0], RingError)
    ring.close()
    with pytest.raises(RingClosedError):
        ring.send(0, b"x", None)
    with pytest.raises(RingClosedError):
        ring.wait(0)


def test_close_delivers_every_callback_exactly_once() -> None:
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        calls: collections.Counter[int] = collections.Counter()
        ring = FaultyRing(Ring(16), seed=11)
        uds = []
        def track(box: list[int]) -> Any:
            return lambda res, flags: calls.update(box)

        for a, b in pairs:
            for sock in (a, b):
                box: list[int] = []
                uds.append(ring.recv(sock.fileno(), bytearray(10), track(box)))
                box.append(uds[-1])
                box2: list[int] = []
                uds.append(ring.poll_add(sock.fileno(), POLLIN, track(box2), multishot=True))
                box2.append(uds[-1])
        ring.wait(0)
        ring.close()
        assert sorted(calls) == sorted(uds) and set(calls.values()) == {1}
        assert ring.in_flight == 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_many_ops_complete_exactly_once_under_faults() -> None:
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        # No injected send failures here: a send that sends nothing would leave its peer's recv waiting forever.
        with FaultyRing(Ring(32), seed=4, faults=Faults(send_error=0.0)) as ring:
            calls: collections.Counter[int] = collections.Counter()
            uds: list[int] = []

            def track(ud_box: list[int]) -> Any:
                return lambda res, flags: calls.update(ud_box)

            for a, b in pairs:
                for method, args in (("recv", (b.fileno(), bytearray(64))), ("poll_add", (b.fileno(), POLLIN)),
                                     ("send", (a.fileno(), b"ping")), ("nop", ())):
                    box: list[int] = []
                    uds.append(getattr(ring, method)(*args, track(box)))
                    box.append(uds[-1])
            reap_until(ring, lambda: ring.in_flight == 0)
            assert sorted(calls) == sorted(uds) and set(calls.values()) == {1}
            assert ring.counters["reordered"] > 0 and ring.counters["delayed"] > 0
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# ------------------------------------------------------------------------------------------------ plan_batch
@pytest.mark.parametrize("seed", range(20))
def test_plan_batch_keeps_per_key_order_and_loses_nothing(seed: int) -> None:
    rng = random.Random(seed)
    faults = Faults(reorder=1.0, delay=0.5)
    entries = [Completion(rng.randrange(5), ud, ud, IORING_CQE_F_MORE) for ud in range(60)]
    n_old = 7
    out, hold, _ = plan_batch(entries, n_old, rng, faults)
    assert sorted(out + hold, key=lambda e: e.ud) == entries  # nothing lost, nothing duplicated
    assert not set(e.ud for e in entries[:n_old]) & set(e.ud for e in hold)  # held at most once
    for key in range(5):
        delivered = [e.ud for e in out if e.key == key]
        held = [e.ud for e in hold if e.key == key]
        assert delivered == sorted(delivered) and held == sorted(held)
        if delivered and held:
            assert max(delivered) < min(held)  # what is held is a suffix of that key


def test_plan_batch_does_reorder_different_keys() -> None:
    rng = random.Random(0)
    entries = [Completion(ud % 4, ud, 0, 0) for ud in range(40)]
    out, hold, reordered = plan_batch(entries, 0, rng, Faults(reorder=1.0, delay=0))
    assert not hold and reordered and out != entries
    out, hold, reordered = plan_batch(entries, 0, rng, Faults.none())
    assert out == entries and not hold and not reordered
