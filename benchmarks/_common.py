"""Pieces the benchmark scripts share: a free port, a `uringws serve` child, picows clients that count frames.

The scripts run as ``python benchmarks/NAME.py``, so this module is found next to them (``import _common``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def insecure_client_context() -> ssl.SSLContext:
    """A client context that accepts the development certificate (the benchmarks measure, they do not verify)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start_serve(port: int, *extra: str) -> subprocess.Popen[str]:
    """Start ``uringws serve --port PORT --no-compression --log-level warning EXTRA...`` and wait until it listens.

    Raises SystemExit with the exit status if the server ends before it prints its "Ctrl-C to stop" line.
    """
    cmd = [sys.executable, "-m", "uringws", "serve", "--port", str(port), "--no-compression", "--log-level",
           "warning", *extra]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    for line in server.stdout:
        if "Ctrl-C to stop" in line:
            return server
    raise SystemExit(f"server exited with {server.wait()}")


class FrameCounter:
    """Picows connections to ``url`` (on the running loop) that count the frames they receive in ``received``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ctx = insecure_client_context()
        self.transports: list[Any] = []
        self.received = 0

    async def open(self, n: int, concurrency: int = 64) -> None:
        """Open ``n`` more connections, ``concurrency`` handshakes at a time."""
        from picows import WSFrame, WSListener, WSTransport, ws_connect

        counter = self

        class Listener(WSListener):
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                counter.received += 1

        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                transport, _ = await ws_connect(Listener, self.url, ssl_context=self.ctx)
                self.transports.append(transport)

        await asyncio.gather(*(one() for _ in range(n)))

    async def wait_for(self, total: int, timeout: float = 60, poll: float = 0.001) -> None:
        """Wait until ``received`` reaches ``total``; SystemExit after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.received < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.received} of {total} frames arrived")
            await asyncio.sleep(poll)

    def send_each(self, transports: Sequence[Any], payload: bytes) -> None:
        """Send ``payload`` as one text frame on each of ``transports``."""
        from picows import WSMsgType

        for t in transports:
            t.send(WSMsgType.TEXT, payload)

    def close(self) -> None:
        for t in self.transports:
            t.disconnect()
