"""Plain-TCP echo benchmark: the stdlib asyncio loop, uvloop and uringws' loop as servers, alternated.

Each server runs in its own process (pinned to CPU 0 when there are 2+ CPUs; the client gets CPU 1), echoing
with an ``asyncio.Protocol`` (``data_received`` -> ``transport.write``). The client is uvloop (when installed)
in this process. Two scenarios per round, rounds alternate between servers (docs/design.md §7: ratios from the same
run mean more than absolute numbers on a shared machine):

* ``small``: N connections (default 100) doing 64-byte ping-pong; reports messages/s and the server's CPU time
  (user+sys from /proc/PID/stat) per message, in µs;
* ``bulk``: one connection echoing 1 MiB blocks (one in flight); reports MiB/s and server CPU ms per MiB.

Usage: ``.venv/bin/python benchmarks/tcp_echo.py [--rounds 5] [--seconds 3] [--connections 100]``
(``uvloop`` is a benchmark-only dependency: ``.venv/bin/pip install uvloop``.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("stdlib", "uvloop", "uringws", "uringws-ring", "uringws-batch")


def proc_cpu(pid: int) -> float:
    """user+sys seconds of process ``pid`` (fields 14 and 15 of proc(5))."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# ------------------------------------------------------------------------------------------------ server
class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def serve(kind: str) -> None:
    """Run an echo server on 127.0.0.1; print its port, serve until stdin closes."""
    if kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    elif kind.startswith("uringws"):
        import uringws.loop

        # "uringws-ring": every send goes through the ring (no direct send(2) fast path in write());
        # "uringws-batch": completion batching (batch_wait=50 us).
        loop = uringws.loop.new_event_loop(direct_send=kind != "uringws-ring",
                                           batch_wait=50e-6 if kind == "uringws-batch" else 0.0)
        if loop.backend != "io_uring":  # type: ignore[attr-defined]
            print("uringws fell back to epoll; this benchmark would not measure io_uring", file=sys.stderr)
    else:
        loop = asyncio.SelectorEventLoop()

    async def main() -> None:
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        done = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
        await done
        server.close()

    loop.run_until_complete(main())
    loop.close()


# ------------------------------------------------------------------------------------------------ client
class PingPong(asyncio.Protocol):
    """Send `size` bytes, wait for all of them to come back, repeat; counts round trips."""

    def __init__(self, counter: list[int], size: int) -> None:
        self.counter = counter
        self.size = size
        self.payload = b"x" * size
        self.pending = 0
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.connected.set_result(None)

    def start(self) -> None:
        self.pending = self.size
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0:
            self.counter[0] += 1
            self.start()


async def measure(port: int, pid: int, connections: int, size: int, seconds: float) -> tuple[float, float]:
    """Returns (round trips per second, server CPU seconds per round trip)."""
    loop = asyncio.get_running_loop()
    counter = [0]
    conns = []
    for _ in range(connections):
        _, proto = await loop.create_connection(lambda: PingPong(counter, size), "127.0.0.1", port)
        conns.append(proto)
    for p in conns:
        p.start()
    await asyncio.sleep(min(0.5, seconds / 4))  # warm-up
    n0, c0, t0 = counter[0], proc_cpu(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    n1, c1, t1 = counter[0], proc_cpu(pid), time.perf_counter()
    for p in conns:
        p.transport.abort()
    await asyncio.sleep(0.05)
    n = max(n1 - n0, 1)
    return n / (t1 - t0), (c1 - c0) / n


def client_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()  # the cheapest client we have
    except ImportError:
        return asyncio.SelectorEventLoop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=100)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--json", action="store_true", help="print the raw samples as JSON at the end")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    kinds = args.servers.split(",")
    pin = os.cpu_count() is not None and (os.cpu_count() or 1) >= 2
    procs: dict[str, subprocess.Popen[str]] = {}
    ports: dict[str, int] = {}
    for kind in kinds:
        p = subprocess.Popen([sys.executable, __file__, "--serve", kind], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        ports[kind] = int(p.stdout.readline())
        procs[kind] = p
        if pin:
            os.sched_setaffinity(p.pid, {0})
    if pin:
        os.sched_setaffinity(0, {1})
    samples: dict[str, dict[str, list[float]]] = {k: {"msg_s": [], "us_msg": [], "mib_s": [], "ms_mib": []}
                                                  for k in kinds}
    loop = client_loop()
    try:
        for r in range(args.rounds):
            order = kinds if r % 2 == 0 else kinds[::-1]  # alternate, so drift hits everyone alike
            for kind in order:
                pid = procs[kind].pid
                rate, cpu = loop.run_until_complete(measure(ports[kind], pid, args.connections, 64, args.seconds))
                samples[kind]["msg_s"].append(rate)
                samples[kind]["us_msg"].append(cpu * 1e6)
                rate, cpu = loop.run_until_complete(measure(ports[kind], pid, 1, 1 << 20, args.seconds))
                samples[kind]["mib_s"].append(rate)
                samples[kind]["ms_mib"].append(cpu * 1e3)
                print(f"round {r + 1} {kind:8s} 64B: {samples[kind]['msg_s'][-1]:9.0f} msg/s "
                      f"{samples[kind]['us_msg'][-1]:6.2f} us/msg | 1MiB: {samples[kind]['mib_s'][-1]:7.1f} MiB/s "
                      f"{samples[kind]['ms_mib'][-1]:6.2f} ms/MiB", flush=True)
    finally:
        loop.close()
        for p in procs.values():
            assert p.stdin is not None
            p.stdin.close()
            p.wait(5)
    med = {k: {m: statistics.median(v) for m, v in s.items()} for k, s in samples.items()}
    print(f"\nmedians over {args.rounds} rounds ({args.connections} connections x 64 B ping-pong; 1 conn x 1 MiB)")
    print(f"{'server':8s} {'msg/s':>9s} {'us/msg':>7s} {'MiB/s':>8s} {'ms/MiB':>7s}")
    for k in kinds:
        m = med[k]
        print(f"{k:8s} {m['msg_s']:9.0f} {m['us_msg']:7.2f} {m['mib_s']:8.1f} {m['ms_mib']:7.2f}")
    for ours in ("uringws", "uringws-ring", "uringws-batch"):
        if ours not in med:
            continue
        for ref in ("stdlib", "uvloop"):
            if ref not in med:
                continue
            a, b = med[ours], med[ref]
            print(f"{ours}/{ref}: server CPU per 64 B msg x{a['us_msg'] / b['us_msg']:.2f}, "
                  f"msg/s x{a['msg_s'] / b['msg_s']:.2f}, CPU per MiB x{a['ms_mib'] / b['ms_mib']:.2f}, "
                  f"MiB/s x{a['mib_s'] / b['mib_s']:.2f}")
    if args.json:
        print(json.dumps(samples))


if __name__ == "__main__":
    main()
