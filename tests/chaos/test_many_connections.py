"""10,000 idle TLS connections to one ``uringws serve``: a canary still echoes promptly; RSS per connection."""

from __future__ import annotations

import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

import uringws

from .conftest import (
    child_env,
    client_tls,
    free_port,
    run_async,
    serve_cmd,
    server_fds,
    server_rss_kib,
    start_server,
    stop_server,
)

CONNECTIONS = 10_000
CLIENT_PROCESSES = 4
SERVER_NOFILE = CONNECTIONS + 1024
CANARY_ECHOES = 200
IDLE_CLIENTS = str(Path(__file__).with_name("idle_clients.py"))


def _raise_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVER_NOFILE, SERVER_NOFILE))


@pytest.mark.slow
def test_ten_thousand_idle_tls_connections(chaos_certs: dict[str, str]) -> None:
    port = free_port()
    server = start_server(serve_cmd(port, chaos_certs["server"], "127.0.0.1", "--ping-interval", "none"),
                          env=child_env(), preexec_fn=_raise_fds)
    clients: list[subprocess.Popen[str]] = []
    try:
        idle_kib = server_rss_kib(server.pid)
        url = f"wss://127.0.0.1:{port}/"
        t0 = time.monotonic()
        per = CONNECTIONS // CLIENT_PROCESSES
        for _ in range(CLIENT_PROCESSES):
            clients.append(subprocess.Popen([sys.executable, IDLE_CLIENTS, url, chaos_certs["ca"], str(per)],
                                            env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            text=True))
        reports = []
        for c in clients:
            assert c.stdout is not None
            line = c.stdout.readline()
            assert line, f"a client process died (exit {c.wait(timeout=10)})"
            reports.append(json.loads(line))
        opened_in = time.monotonic() - t0
        opened = sum(r["opened"] for r in reports)
        fds = server_fds(server.pid)
        loaded_kib = server_rss_kib(server.pid)
        assert server.poll() is None, "the server died"
        ctx = client_tls(chaos_certs)

        async def canary() -> list[float]:
            rng = random.Random(7)
            latencies = []
            async with uringws.connect(url, ssl=ctx, compression=None, ping_interval=None, open_timeout=60) as ws:
                for _ in range(CANARY_ECHOES):
                    payload = rng.randbytes(100)
                    t = time.perf_counter()
                    async with asyncio.timeout(30):
                        await ws.send(payload)
                        assert await ws.recv() == payload
                    latencies.append(time.perf_counter() - t)
                    await asyncio.sleep(0.005)
            return sorted(latencies)

        latencies = run_async(canary())
        p50, p99 = latencies[len(latencies) // 2] * 1e3, latencies[len(latencies) * 99 // 100] * 1e3
        per_conn = (loaded_kib - idle_kib) / max(opened, 1)
        print(f"\n{opened} of {CONNECTIONS} TLS connections opened in {opened_in:.1f} s ({reports}); server fds "
              f"{fds}, RSS {idle_kib / 1024:.1f} MiB idle -> {loaded_kib / 1024:.1f} MiB = {per_conn:.1f} KiB per "
              f"connection; canary {CANARY_ECHOES} echoes p50 {p50:.2f} ms, p99 {p99:.2f} ms, max "
              f"{latencies[-1] * 1e3:.2f} ms")
        assert opened == CONNECTIONS, reports
        # Idle connections cost the canary nothing but a bigger ring: a wide margin for a shared 2-core machine.
        assert p99 < 500, f"canary p99 {p99:.1f} ms with {opened} idle connections"
    finally:
        for c in clients:
            if c.poll() is None:
                assert c.stdin is not None
                c.stdin.write("\n")
                c.stdin.flush()
        for c in clients:
            try:
                c.wait(timeout=30)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
        out = stop_server(server, timeout=60)
    assert server.returncode == 0, out[-3000:]
