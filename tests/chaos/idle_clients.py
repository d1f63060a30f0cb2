"""Idle TLS WebSocket clients, run as a process of their own (so several can share a 10,000-connection load).

``python idle_clients.py URL CAFILE N``: opens N uringws connections (at most 32 handshakes at a time), prints
one JSON line (``opened``, ``failed``, the first error, seconds taken), then holds them open without traffic
until stdin closes or gets a line, then exits at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import sys
import time
from typing import Any

import uringws


async def main(url: str, cafile: str, n: int) -> None:
    ctx = ssl.create_default_context(cafile=cafile)
    gate = asyncio.Semaphore(32)
    conns: list[Any] = []
    errors: list[str] = []

    async def open_one() -> None:
        async with gate:
            try:
                conns.append(await uringws.connect(url, ssl=ctx, compression=None, ping_interval=None,
                                                   open_timeout=120))
            except (OSError, TimeoutError, uringws.ConnectionClosed, uringws.InvalidHandshake) as exc:
                errors.append(repr(exc))

    t0 = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(n)))
    print(json.dumps({"opened": len(conns), "failed": len(errors), "error": errors[0] if errors else None,
                      "seconds": round(time.monotonic() - t0, 1)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    os._exit(0)  # the kernel resets them all at once; closing 2,500 handshakes politely only costs time


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = int(sys.argv[3]) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
