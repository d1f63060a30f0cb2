"""Many operations at once: every one completes exactly once, whatever the SQ and CQ sizes."""

from __future__ import annotations

import collections
import socket
from typing import Any

from uringws.ring import Ring
from uringws.ring.io_uring import IORING_FEAT_NODROP, IORING_SQ_CQ_OVERFLOW, POLLIN, POLLOUT

from .conftest import reap_until


class Counter:
    """Counts callbacks per user_data; the user_data is filled in after the op is queued."""

    def __init__(self) -> None:
        self.calls: collections.Counter[int] = collections.Counter()
        self.results: dict[int, int] = {}

    def make(self) -> tuple[list[int], Any]:
        box: list[int] = []

        def cb(res: int, flags: int) -> None:
            self.calls[box[0]] += 1
            self.results[box[0]] = res

        return box, cb

    def add(self, ring: Ring, method: str, *args: Any, **kw: Any) -> int:
        box, cb = self.make()
        ud = getattr(ring, method)(*args, cb, **kw)
        box.append(ud)
        return ud


def test_10000_ops_across_1000_sockets_complete_exactly_once(ring_cls: type[Ring]) -> None:
    pairs = [socket.socketpair() for _ in range(1000)]  # 2,000 sockets
    try:
        with ring_cls(256, cq_entries=1024) as ring:
            counter = Counter()
            uds: list[int] = []
            bufs: dict[int, bytearray] = {}
            expect: dict[int, bytes] = {}
            for i, (a, b) in enumerate(pairs):
                msg_ab = f"a->b {i:05d}".encode()
                msg_ba = f"b->a {i:05d}!".encode()
                for sock, peer, msg in ((b, a, msg_ab), (a, b, msg_ba)):
                    buf = bytearray(64)
                    ud = counter.add(ring, "recv", sock.fileno(), buf)
                    bufs[ud] = buf
                    expect[ud] = msg
                    uds.append(ud)
                    uds.append(counter.add(ring, "poll_add", sock.fileno(), POLLIN))
                    uds.append(counter.add(ring, "poll_add", sock.fileno(), POLLOUT))
                    uds.append(counter.add(ring, "send", peer.fileno(), msg))
                    uds.append(counter.add(ring, "nop"))
            assert len(uds) == 10_000 == len(set(uds))
            # 10,000 SQEs through a 256-entry SQ: _make_room() submitted all but the last few already.
            assert ring.unsubmitted <= ring.sq_entries
            assert ring.in_flight == len(uds)
            reap_until(ring, lambda: ring.in_flight == 0, timeout=20)
            assert set(counter.calls) == set(uds)
            assert all(n == 1 for n in counter.calls.values())
            for ud, msg in expect.items():
                assert counter.results[ud] == len(msg)
                assert bytes(bufs[ud][: len(msg)]) == msg
            assert all(counter.results[ud] >= 0 for ud in uds)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_sq_full_submits_early_and_keeps_order_of_a_socket(ring_cls: type[Ring]) -> None:
    a, b = socket.socketpair()
    with a, b, ring_cls(8) as ring:
        counter = Counter()
        # 100 sends on one socket queued before any wait(): the 8-entry SQ fills many times over.
        for i in range(100):
            counter.add(ring, "send", a.fileno(), b"%03d," % i)
            assert ring.unsubmitted <= 8
        reap_until(ring, lambda: ring.in_flight == 0)
        assert sum(counter.calls.values()) == 100
        b.setblocking(False)
        # Small sends on an uncongested socket each go through in one piece, in submission order.
        assert b.recv(1000) == b"".join(b"%03d," % i for i in range(100))


def test_cq_overflow_loses_nothing() -> None:
    with Ring(8, cq_entries=16) as ring:
        assert ring.has_feature(IORING_FEAT_NODROP)
        assert ring.cq_entries == 16
        counter = Counter()
        uds = [counter.add(ring, "nop") for _ in range(1000)]
        ring.submit()
        # 1,000 completions are waiting for a 16-entry CQ: the kernel kept the rest on its overflow list.
        assert ring._sq_kflags[0] & IORING_SQ_CQ_OVERFLOW
        dispatched = ring.wait(0)  # one wait() drains the CQ and flushes the overflow list
        assert dispatched == 1000
        assert ring.in_flight == 0
        assert sorted(counter.calls) == uds and set(counter.calls.values()) == {1}
        assert ring._cq_overflow[0] == 0  # nothing dropped
        assert not ring._sq_kflags[0] & IORING_SQ_CQ_OVERFLOW


def test_cq_overflow_while_callbacks_submit_more(ring_cls: type[Ring]) -> None:
    """Callbacks that queue new work while the CQ overflows: every op still completes exactly once."""
    with ring_cls(4, cq_entries=8) as ring:
        counter = Counter()
        total = 0

        def spawn(depth: int) -> None:
            nonlocal total
            box, inner = counter.make()

            def cb(res: int, flags: int) -> None:
                inner(res, flags)
                if depth < 3:
                    spawn(depth + 1)
                    spawn(depth + 1)

            box.append(ring.nop(cb))
            total += 1

        for _ in range(50):
            spawn(0)
        reap_until(ring, lambda: ring.in_flight == 0)
        assert total == 50 * 15
        assert len(counter.calls) == total and set(counter.calls.values()) == {1}
