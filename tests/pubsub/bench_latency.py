"""Publish -> deliver latency through a local Redis across two processes (not a test; run it by hand).

``python -m tests.pubsub.bench_latency REDIS_URL [COUNT]``: a child process subscribes; this one publishes COUNT
messages carrying time.monotonic_ns() (one clock for both processes) 1 ms apart; prints p50/p99 in microseconds.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time

import uringws
from uringws.pubsub import Hub, RedisBackend


async def subscriber(url: str, count: int) -> None:
    async with Hub(RedisBackend(url)) as hub, hub.subscribe("lat", maxsize=count + 10) as sub:
        print("ready", flush=True)
        lat = []
        for _ in range(count):
            sent = int(await sub.get())
            lat.append((time.monotonic_ns() - sent) / 1000)
        q = statistics.quantiles(lat, n=100)
        print(f"n={count} p50={q[49]:.0f} us p99={q[98]:.0f} us", flush=True)


async def publisher(url: str, count: int) -> None:
    async with Hub(RedisBackend(url)) as hub:
        for _ in range(count):
            await hub.publish("lat", str(time.monotonic_ns()))
            await asyncio.sleep(0.001)


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    if len(sys.argv) > 3:
        with asyncio.Runner(loop_factory=uringws.new_event_loop) as r:
            r.run(subscriber(url, count))
        return
    child = subprocess.Popen([sys.executable, "-m", __spec__.name, url, str(count), "sub"], stdout=subprocess.PIPE)
    assert child.stdout is not None
    child.stdout.readline()
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as r:
        r.run(publisher(url, count))
    print(child.stdout.read().decode(), end="")
    child.wait()


if __name__ == "__main__":
    main()
