"""RSS that `uringws serve` keeps after large messages, with and without its glibc mmap-threshold setting.

Usage (from the repository root)::

    PYTHONPATH=$PWD python benchmarks/malloc_rss.py [--clients 8] [--rounds 3] [--runs 1]

Starts ``uringws serve --app echo --no-tls --max-size 16M`` (so with the CLI's default ``--max-memory 256M``, which
sets glibc's ``M_MMAP_THRESHOLD`` to 1 MiB), echoes ``rounds`` messages of a random 1-15 MiB on each of
``clients`` connections at once, waits a second and reads the server's VmRSS; then the same with the setting
replaced by a no-op. Prints idle and after RSS, in MiB, for both.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import time

from _common import free_port, rss_bytes

import uringws


def rss_mib(pid: int) -> int:
    return rss_bytes(pid) // 2**20


async def push(port: int, clients: int, rounds: int, seed: int) -> None:
    async def one(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        url = f"ws://127.0.0.1:{port}/"
        async with uringws.connect(url, compression=None, max_size=32 << 20, ping_interval=None) as ws:
            for _ in range(rounds):
                data = rng.randbytes(rng.randint(1 << 20, 15 << 20))
                await ws.send(data)
                if await ws.recv() != data:
                    raise RuntimeError("corrupt echo")

    await asyncio.gather(*(one(i) for i in range(clients)))


def measure(tuned: bool, clients: int, rounds: int, seed: int) -> tuple[int, int]:
    """(idle, after) RSS in MiB of one server."""
    port = free_port()
    code = "import uringws.server as s\n"
    if not tuned:
        code += "s.return_freed_memory = lambda: None\n"
    code += "import sys\nfrom uringws.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ["serve", "--app", "echo", "--no-tls", "--port", str(port), "--max-size", "16M", "--ping-interval", "none"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        idle = rss_mib(proc.pid)
        asyncio.run(push(port, clients, rounds, seed))
        time.sleep(1)
        return idle, rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    for run in range(args.runs):
        for tuned in (True, False):
            idle, after = measure(tuned, args.clients, args.rounds, run)
            label = "with the mmap threshold" if tuned else "glibc's default"
            print(f"run {run + 1}, {label:24s}: idle {idle} MiB, after the echoes {after} MiB", flush=True)


if __name__ == "__main__":
    main()
