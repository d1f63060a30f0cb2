"""Server memory per idle TLS connection with no hub, an in-process hub, and a Redis hub, before and after join.

    python benchmarks/hub_memory.py --connections 5000 [--redis redis://127.0.0.1:6379/0]

For each mode a server process (this script with ``--serve MODE``, on uringws's loop, TLS with the development
certificate, no compression) accepts ``--connections`` clients (picows on uvloop, in this process). Each
connection's handler waits for one message: "join" makes it join channel "room" of the server's hub (mode
"none" has no hub and only answers) and answer "ok". The server's VmRSS is read after one warm-up connection
(the baseline), after every connection is open and idle, and after every connection has joined; the differences
divided by the number of connections are the KiB per connection printed as "idle -> joined". Without --redis, a
redis-server is started on a free port (without persistence) for the "redis" mode, if one is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import FrameCounter, free_port, rss_bytes

HERE = Path(__file__).resolve().parent
MODES = ("none", "memory", "redis")


# -- the server (a child process) --------------------------------------------------------------------------------


async def serve(mode: str, port: int, redis_url: str | None) -> None:
    import uringws
    from uringws.pubsub import Hub, RedisBackend
    from uringws.tls.context import server_context
    from uringws.tls.devcert import ensure_devcert

    dev = ensure_devcert()
    ctx = server_context(str(dev.cert_path), str(dev.key_path))
    hub: Hub | None = None
    if mode == "memory":
        hub = Hub()
    elif mode == "redis":
        assert redis_url is not None
        hub = Hub(RedisBackend(redis_url))
    if hub is not None:
        await hub.start()

    async def handler(ws: Any) -> None:
        async for message in ws:
            if message == "join" and hub is not None:
                await hub.join(ws, "room")
            await ws.send("ok")

    server = await uringws.serve(handler, "127.0.0.1", port, ssl=ctx, compression=None, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


# -- the client and the measurement (this process) ---------------------------------------------------------------


async def join(clients: FrameCounter, transports: list[Any], timeout: float = 120) -> None:
    """Send "join" on each of ``transports`` and wait for as many "ok" answers."""
    want = clients.received + len(transports)
    clients.send_each(transports, b"join")
    await clients.wait_for(want, timeout, poll=0.01)


async def measure(mode: str, connections: int, idle: float, redis_url: str | None) -> dict[str, Any]:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", mode, "--port", str(port)]
    if redis_url is not None:
        cmd += ["--redis", redis_url]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {mode} server exited with {server.wait()}")
        clients = FrameCounter(f"wss://127.0.0.1:{port}/")
        await clients.open(1)  # warm-up: TLS, imports, the hub's channel, in the baseline
        await join(clients, clients.transports)
        await asyncio.sleep(idle)
        rss0 = rss_bytes(server.pid)
        await clients.open(connections)
        await asyncio.sleep(idle)
        rss1 = rss_bytes(server.pid)
        await join(clients, clients.transports[1:])
        await asyncio.sleep(idle)
        rss2 = rss_bytes(server.pid)
        clients.close()
        return {
            "mode": mode,
            "connections": connections,
            "base_mib": round(rss0 / 2**20, 1),
            "idle_kib_per_conn": round((rss1 - rss0) / connections / 1024, 2),
            "joined_kib_per_conn": round((rss2 - rss0) / connections / 1024, 2),
        }
    finally:
        server.terminate()
        server.wait()


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("no redis-server: install it or pass --redis URL")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--idle", type=float, default=1.0, help="seconds to let the server settle before each reading")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--redis", help="a Redis URL for the 'redis' mode (default: start a redis-server)")
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        import uringws

        with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
            runner.run(serve(args.serve, args.port, args.redis))
        return 0

    import uvloop

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    modes = [m for m in args.modes.split(",") if m]
    redis_proc = None
    redis_url = args.redis
    if "redis" in modes and redis_url is None:
        redis_proc, redis_url = start_redis()
    try:
        for mode in modes:
            result = uvloop.run(measure(mode, args.connections, args.idle, redis_url if mode == "redis" else None))
            print(json.dumps(result), flush=True)
            print(
                f"{mode:>6}: {result['idle_kib_per_conn']:.2f} -> {result['joined_kib_per_conn']:.2f} KiB per "
                f"connection (idle -> joined), base {result['base_mib']} MiB",
                file=sys.stderr,
            )
    finally:
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
