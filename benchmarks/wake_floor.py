"""The kernel's floor under a ping-pong round trip: server CPU per round trip of a C echo server (no Python, no TLS,
no WebSocket) that waits with epoll (as uvloop does) or with io_uring (as uringws's loop does).

Run: ``python benchmarks/wake_floor.py [--rounds 5] [--seconds 3] [--spin-us 40] [--json PATH]``. It compiles
``wake_floor.c`` with the system's C compiler into a temporary directory, then for each round runs every mode once
(in turn, so that a noisy minute hits all of them): the server pinned to CPU 0, the client to CPU 1 (when the machine
has two CPUs or more), 100-byte messages on one TCP connection over loopback, the client spinning ``--spin-us``
between round trips as the Python load client's own work does, so that the server sleeps between messages. The
server's CPU time comes from ``/proc/PID/schedstat`` (user + system, nanoseconds), read while the client runs.

What it answers: how much of `uringws bench` (a)'s server CPU per message is the kernel's (TCP over loopback, the
sleep and the wake-up) and would be there with no user-space work at all, and whether waiting on io_uring costs
the kernel more or less than epoll_wait + recv. The io_uring modes need Linux 6.1 (multishot RECV, provided buffer
rings, DEFER_TASKRUN).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import free_port

HERE = Path(__file__).resolve().parent
MODES = ("epoll", "uring", "uring-defer")


def build(directory: str) -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("wake_floor: no C compiler (cc or gcc) found")
    exe = os.path.join(directory, "wake_floor")
    subprocess.run([cc, "-O2", "-Wall", "-o", exe, str(HERE / "wake_floor.c")], check=True)
    return exe


def cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def pin(pid: int, cpu: int) -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(pid, {cpu})


def one(exe: str, mode: str, seconds: float, spin_us: float) -> dict[str, float]:
    """Server CPU µs per round trip and round trips per second of one run of ``mode``."""
    port = free_port()
    srv = subprocess.Popen([exe, "server", mode, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        pin(srv.pid, 0)
        assert srv.stdout is not None
        if srv.stdout.readline().strip() != "READY":
            raise RuntimeError(f"the {mode} server did not start")
        cli = subprocess.Popen([exe, "client", str(port), str(seconds), str(spin_us)], stdout=subprocess.PIPE,
                               text=True)
        pin(cli.pid, 1)
        before = cpu_ns(srv.pid)  # the client's first round trip is under way: nothing of the accept is counted
        try:
            out, _ = cli.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.communicate()
            raise RuntimeError(f"the client hung against the {mode} server") from None
        after = cpu_ns(srv.pid)
        if cli.returncode != 0:
            raise RuntimeError(f"the client failed against the {mode} server")
        n = int(out)
    finally:
        srv.kill()
        srv.wait()
        if srv.stdout is not None:
            srv.stdout.close()
    return {"server_cpu_us_per_rt": (after - before) / 1000 / n, "round_trips_per_s": n / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0, help="client time per run")
    p.add_argument("--spin-us", type=float, default=40.0, help="client work between round trips, µs")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--json", help="write the runs and medians here")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {', '.join(sorted(unknown))}")
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        exe = build(d)
        for r in range(args.rounds):
            for m in modes:
                res = one(exe, m, args.seconds, args.spin_us)
                runs[m].append(res)
                print(f"round {r + 1} {m:12} {res['server_cpu_us_per_rt']:7.2f} µs/round trip "
                      f"{res['round_trips_per_s']:9,.0f} round trips/s", file=sys.stderr)
    medians = {m: statistics.median(x["server_cpu_us_per_rt"] for x in runs[m]) for m in modes}
    first = medians[modes[0]]
    for m in modes:
        print(f"{m:12} server CPU {medians[m]:7.2f} µs per round trip (median of {args.rounds}), "
              f"{medians[m] / first:.3f}x {modes[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "medians": medians}, indent=1))


if __name__ == "__main__":
    main()
