"""Micro-benchmarks of uringws.ring: µs per batched NOP and per SEND+RECV pair, against plain socket calls.

Run: ``.venv/bin/python benchmarks/ring_micro.py [--rounds 7] [--ops 200000] [--clock cpu|wall]
[--ring pure|compiled|both]`` (``--ring`` picks the pure `Ring`, the compiled `CompiledRing`, or both side by side;
the default is the one the event loop uses).
Everything is measured in the same process, interleaved round by round, and reported as the median over rounds
(the machines are noisy: compare the ratios, not the absolute numbers). Each ring operation includes its share of
the submit + reap + callback. The default clock is process CPU time, which other jobs on the machine disturb far
less than wall time.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import socket
import statistics
import time
from collections.abc import Callable

from uringws.ring import Ring
from uringws.ring.fast import RING_CLASS, RING_CLASSES

PAYLOAD = b"x" * 64
#: the clock of every measurement: process CPU time by default (user + sys of all our threads, io_uring's
#: in-kernel work included), which a loaded machine disturbs far less than wall time; --clock wall for wall time
CLOCK: Callable[[], float] = time.process_time


def bench_nop(batch: int, ops: int, cls: type = Ring) -> Callable[[], float]:
    ring = cls(batch)
    done = [0]

    def cb(res: int, flags: int) -> None:
        done[0] += 1

    nop, wait = ring.nop, ring.wait
    batches = max(1, ops // batch)

    def run() -> float:
        done[0] = 0
        t0 = CLOCK()
        for _ in range(batches):
            for _ in range(batch):
                nop(cb)
            wait(0)
        dt = CLOCK() - t0
        assert done[0] == batches * batch, done[0]
        return dt / (batches * batch)

    return run


def bench_python_floor(batch: int, ops: int) -> Callable[[], float]:
    """What any callback-per-operation API costs in Python, without a ring: register the callback under a fresh
    id, later pop it and call it. The NOP figure minus this one is the ring's own overhead."""
    pending: dict[int, Callable[[int, int], None]] = {}
    ids = itertools.count(1)
    done = [0]

    def cb(res: int, flags: int) -> None:
        done[0] += 1

    def submit(callback: Callable[[int, int], None]) -> int:
        ud = next(ids)
        pending[ud] = callback
        return ud

    batches = max(1, ops // batch)

    def run() -> float:
        done[0] = 0
        t0 = CLOCK()
        for _ in range(batches):
            for _ in range(batch):
                submit(cb)
            for ud, res, flags in [(ud, 0, 0) for ud in pending]:
                callback = pending.pop(ud, None)
                if callback is not None:
                    callback(res, flags)
        dt = CLOCK() - t0
        assert done[0] == batches * batch
        return dt / (batches * batch)

    return run


def bench_ring_pairs(batch: int, ops: int, cls: type = Ring) -> Callable[[], float]:
    """``batch`` socketpairs; per round each gets one SEND (a->b) and one RECV (b); one wait() per batch."""
    ring = cls(2 * batch)
    pairs = [socket.socketpair() for _ in range(batch)]
    fds = [(a.fileno(), b.fileno()) for a, b in pairs]
    bufs = [bytearray(len(PAYLOAD)) for _ in range(batch)]
    got = [0]

    def cb(res: int, flags: int) -> None:
        got[0] += res

    send, recv, wait = ring.send, ring.recv, ring.wait
    rounds = max(1, ops // batch)

    def run() -> float:
        assert pairs  # the sockets must live as long as the benchmark (their fds are used below)
        got[0] = 0
        t0 = CLOCK()
        for _ in range(rounds):
            for (a, b), buf in zip(fds, bufs, strict=True):
                send(a, PAYLOAD, cb)
                recv(b, buf, cb)
            while ring.in_flight:
                wait(0)
        dt = CLOCK() - t0
        assert got[0] == 2 * len(PAYLOAD) * rounds * batch, got[0]
        return dt / (rounds * batch)

    return run


def bench_plain_pairs(ops: int) -> Callable[[], float]:
    a, b = socket.socketpair()
    buf = bytearray(len(PAYLOAD))
    send, recv_into = a.send, b.recv_into

    def run() -> float:
        assert a and b
        t0 = CLOCK()
        for _ in range(ops):
            send(PAYLOAD)
            recv_into(buf)
        return (CLOCK() - t0) / ops

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ops", type=int, default=200_000, help="operations per round and case")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: process CPU time (default; robust on a shared machine); wall: perf_counter")
    ap.add_argument("--ring", choices=["pure", "compiled", "both"], default=None,
                    help="which ring class (default: the one the loop uses; compiled needs the built extension)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    compiled = [c for c in RING_CLASSES if c is not Ring]
    if args.ring in ("compiled", "both") and not compiled:
        ap.error("the compiled ring is not available (not built, or URINGWS_PURE=1); see `uringws doctor`")
    if args.ring == "both":
        classes: list[tuple[str, type]] = [("pure ", Ring), ("compiled ", compiled[0])]
    elif args.ring == "pure":
        classes = [("", Ring)]
    elif args.ring == "compiled":
        classes = [("", compiled[0])]
    else:
        classes = [("", RING_CLASS)]
    cases: dict[str, Callable[[], float]] = {}
    for prefix, cls in classes:
        cases[f"{prefix}NOP, batch 64"] = bench_nop(64, args.ops, cls)
        cases[f"{prefix}NOP, batch 256"] = bench_nop(256, args.ops, cls)
    cases["python floor (dict + callback), batch 256"] = bench_python_floor(256, args.ops)
    for prefix, cls in classes:
        cases[f"{prefix}ring SEND+RECV pair, 64 pairs/wait"] = bench_ring_pairs(64, args.ops // 4, cls)
        cases[f"{prefix}ring SEND+RECV pair, 1 pair/wait"] = bench_ring_pairs(1, args.ops // 8, cls)
    cases["plain send+recv_into pair"] = bench_plain_pairs(args.ops // 4)
    results: dict[str, list[float]] = {name: [] for name in cases}
    gc.disable()  # a collection in the middle of one round is noise, not the ring's cost
    try:
        for run in cases.values():
            run()  # warm-up
        for _ in range(args.rounds):
            for name, run in cases.items():
                results[name].append(run())
    finally:
        gc.enable()
    plain = statistics.median(results["plain send+recv_into pair"])
    print(f"clock: {args.clock}, {args.rounds} rounds, medians; ring: {', '.join(c.__name__ for _, c in classes)}")
    print(f"{'case':53} {'median µs/op':>13} {'min':>8} {'max':>8} {'vs plain':>9}")
    for name, xs in results.items():
        med = statistics.median(xs)
        ratio = f"{med / plain:8.2f}x" if "pair" in name else ""
        print(f"{name:53} {med * 1e6:13.3f} {min(xs) * 1e6:8.3f} {max(xs) * 1e6:8.3f} {ratio:>9}")


if __name__ == "__main__":
    main()
