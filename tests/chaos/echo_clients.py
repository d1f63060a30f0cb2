"""Echo clients run as a separate process (so they can live in a network namespace of their own).

``python echo_clients.py URL CAFILE N [--ping-interval S ...]``: N uringws clients on uringws's loop echo random
64 KiB - 4 MiB messages without pause and check each by SHA-256. After every client has done two echoes the
script prints ``warm``; a line on stdin marks the moment the fault is injected. It then waits for every client
to fail and prints one JSON line: each client's exception type, close code, and seconds since the mark.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import ssl
import sys
import time
from typing import Any

import uringws


async def main(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=args.cafile)
    rounds = [0] * args.n
    warm = asyncio.Event()
    ends: list[dict[str, Any]] = [{} for _ in range(args.n)]
    marked: list[float] = []

    async def client(i: int) -> None:
        rng = random.Random(i)
        try:
            async with uringws.connect(args.url, ssl=ctx, compression=None, max_size=8 << 20,
                                       ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
                                       close_timeout=args.close_timeout) as ws:
                while True:
                    payload = rng.randbytes(rng.randint(64 << 10, 4 << 20))
                    await ws.send(payload)
                    echo = await ws.recv()
                    if hashlib.sha256(echo).digest() != hashlib.sha256(payload).digest():
                        ends[i] = {"error": "corrupt", "size": len(payload)}
                        return
                    rounds[i] += 1
                    if min(rounds) >= 2:
                        warm.set()
        except Exception as exc:  # noqa: BLE001 - reported to the test, which judges it
            ends[i] = {"error": type(exc).__name__, "code": getattr(exc, "code", None), "detail": str(exc),
                       "after": time.monotonic() - marked[0] if marked else None}

    tasks = [asyncio.ensure_future(client(i)) for i in range(args.n)]
    await asyncio.wait_for(warm.wait(), 120)
    print("warm", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    marked.append(time.monotonic())
    _, pending = await asyncio.wait(tasks, timeout=args.give_up)
    for t in pending:
        t.cancel()
    return {"ends": ends, "hung": len(pending), "rounds": rounds}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("cafile")
    p.add_argument("n", type=int)
    p.add_argument("--ping-interval", type=float, default=None)
    p.add_argument("--ping-timeout", type=float, default=None)
    p.add_argument("--close-timeout", type=float, default=10.0)
    p.add_argument("--give-up", type=float, default=60.0)
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        print(json.dumps(runner.run(main(p.parse_args()))), flush=True)
