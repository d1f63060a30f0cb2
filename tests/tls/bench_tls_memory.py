"""Server RSS per idle TLS connection: uringws TLSProtocol vs asyncio's sslproto, same stdlib selector loop.

Usage (from the repository root)::

    .venv/bin/python tests/tls/bench_tls_memory.py [-n 2000] [--impl ours asyncio plain] [--rounds 1]

For each implementation a fresh server process listens on 127.0.0.1; a client process opens N TLS connections
(blocking ssl sockets), exchanges one 100-byte echo on each, and leaves them idle.  The server reports
(RSS with N idle connections - RSS before them) / N, read from /proc/self/statm.  ``plain`` is TCP without
TLS, to show what the loop's own transport costs.  Not collected by pytest (not a test_*.py file).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Idle(asyncio.Protocol):
    """Echo once, then sit idle (what a WebSocket connection does between messages)."""

    count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]
        Idle.count += 1


def loop_factory(impl: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The server loop of ``impl``: ``ours`` = stdlib selector loop + uringws TLS, ``ring`` = uringws.EventLoop
    (io_uring + uringws TLS; ``ring-poll`` reading by poll + recv), ``uvloop`` = uvloop + its stdlib-ssl TLS,
    ``asyncio``/``plain`` = stdlib loop."""
    if impl == "ours":
        from uringws.tls import TLSSelectorEventLoop

        return TLSSelectorEventLoop
    if impl in ("ring", "ring-poll"):
        import uringws

        def ring() -> asyncio.AbstractEventLoop:
            # ring-poll: the same loop reading through POLL + recv(2) instead of multishot RECV (A/B of reads)
            loop = uringws.new_event_loop(**({"read_mode": "poll"} if impl == "ring-poll" else {}))
            if loop.backend != "io_uring":
                raise SystemExit(f"ring: io_uring unusable here (got backend {loop.backend})")
            return loop

        return ring
    if impl == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop


def serve(impl: str, n: int, certfile: str, keyfile: str) -> None:
    """Server process: print the port, wait for n echoes, print the measurement as JSON."""
    ctx: ssl.SSLContext | None = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ctx is not None
    ctx.load_cert_chain(certfile, keyfile)
    if impl == "plain":
        ctx = None
    loop_cls = loop_factory(impl)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Idle, "127.0.0.1", 0, ssl=ctx, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        # Warm-up connections (shared buffers, caches, code paths), then the baseline.
        warm = int(sys.stdin.readline())
        while Idle.count < warm:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        gc.collect()
        base = rss()
        print("base", flush=True)
        while Idle.count < warm + n:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        gc.collect()
        now = rss()
        print(json.dumps({"impl": impl, "n": n, "per_conn": (now - base) / n, "base": base, "now": now}), flush=True)
        sys.stdin.readline()
        server.close()

    runner = asyncio.Runner(loop_factory=loop_cls)
    runner.run(main())


def client(port: int, n: int, tls: bool, cafile: str, warm: int, server: subprocess.Popen[str]) -> list[socket.socket]:
    """Open connections in this process (the parent), keep them open; returns them."""
    ctx = ssl.create_default_context(cafile=cafile)
    socks: list[socket.socket] = []

    def one() -> None:
        raw = socket.create_connection(("127.0.0.1", port))
        s: socket.socket = ctx.wrap_socket(raw, server_hostname="localhost") if tls else raw
        s.sendall(b"x" * 100)
        got = b""
        while len(got) < 100:
            got += s.recv(100)
        socks.append(s)

    for _ in range(warm):
        one()
    for s in socks:
        s.close()
    socks.clear()
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "base"
    for _ in range(n):
        one()
    return socks


def run_one(impl: str, n: int, certfile: str, keyfile: str, cafile: str) -> dict[str, float]:
    warm = 50
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", impl, "-n", str(n), "--cert", certfile, "--key", keyfile],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    port = int(proc.stdout.readline())
    proc.stdin.write(f"{warm}\n")
    proc.stdin.flush()
    t0 = time.perf_counter()
    socks = client(port, n, impl != "plain", cafile, warm, proc)
    result: dict[str, float] = json.loads(proc.stdout.readline())
    result["seconds"] = time.perf_counter() - t0
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)
    for s in socks:
        s.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--impl", nargs="+", default=["ours", "asyncio", "plain"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--serve")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.n, args.cert, args.key)
        return
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory() as d:
        cert, key, cafile = Path(d, "cert.pem"), Path(d, "key.pem"), Path(d, "ca.pem")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(cafile))
        for r in range(args.rounds):
            for impl in args.impl:
                res = run_one(impl, args.n, str(cert), str(key), str(cafile))
                print(
                    f"round {r} {impl:8s} n={args.n} RSS/conn = {res['per_conn'] / 1024:7.1f} KiB"
                    f"  (server RSS {res['base'] / 2**20:.1f} -> {res['now'] / 2**20:.1f} MiB, {res['seconds']:.1f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
