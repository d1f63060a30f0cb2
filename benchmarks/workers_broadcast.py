"""Broadcast 256 B through the demo's /broadcast room of ``uringws serve --workers N`` to many TLS connections.

    python benchmarks/workers_broadcast.py --workers 2 --connections 10000

Starts the server (any checkout via PYTHONPATH), runs benchmarks/loadclient.py's broadcast scenario against it
with the supervisor's and every worker's pid (their CPU times add up) and prints its JSON line. The client is
one process; with N workers the connections spread over them and every message crosses the supervisor's relay.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import free_port, start_serve

HERE = Path(__file__).resolve().parent


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--inflight", type=int, default=4)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    port = free_port()
    server = start_serve(port, "--workers", str(args.workers))
    try:
        pids = [server.pid, *children(server.pid)] if args.workers > 1 else [server.pid]
        if len(pids) != args.workers + (args.workers > 1):
            raise SystemExit(f"expected {args.workers} workers, found pids {pids}")
        cmd = [sys.executable, str(HERE / "loadclient.py"), "--url", f"wss://127.0.0.1:{port}/broadcast",
               "--scenario", "broadcast", "--size", "256", "--connections", str(args.connections), "--inflight",
               str(args.inflight), "--duration", str(args.duration), "--warmup", "1"]
        for pid in pids:
            cmd += ["--server-pid", str(pid)]
        started = time.monotonic()
        result = subprocess.run(cmd, capture_output=True, text=True)
        print(result.stdout.strip() or result.stderr, flush=True)
        print(f"# {args.workers} worker(s), {args.connections} connections, run took "
              f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
