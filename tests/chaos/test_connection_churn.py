"""No leak per connection: 10,000 TLS connections opened and closed, then 10,000 more; RSS flat on the second batch.

The first batch warms everything that grows once and then stays (allocator arenas, free lists, the ring's tables,
OpenSSL's caches); the second batch does the same work again, so whatever a connection leaves behind shows up as
RSS growth over it. Each connection does a full TLS + WebSocket handshake, one small echo and a clean close, so the
receive path, the send queue and the close path all run. Run with ``-m slow``, once as is (compiled pieces in use
where built) and once with ``URINGWS_PURE=1`` (the parameter below does both in one run).
"""

from __future__ import annotations

import asyncio
import ssl
import time

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

BATCH = 10_000
CONCURRENCY = 48
# RSS growth allowed over the whole second batch: 1 MiB is about 100 bytes per connection. A leak of one small
# Python object per connection (a few hundred bytes with its dict or buffers) or of one SSL (~15 KiB) exceeds it;
# a server that is really flat measures tens of KiB here (docs/benchmarks.md, "Idle memory and churn").
MAX_GROWTH_KIB = 1024


async def _churn(url: str, ctx: ssl.SSLContext, n: int) -> int:
    """Open, echo once over, and close ``n`` connections, ``CONCURRENCY`` at a time; the number that worked."""
    gate = asyncio.Semaphore(CONCURRENCY)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        payload = i.to_bytes(4, "big") * 8
        async with gate:
            async with uringws.connect(url, ssl=ctx, compression=None, ping_interval=None, open_timeout=60) as ws:
                async with asyncio.timeout(60):
                    await ws.send(payload)
                    assert await ws.recv() == payload
            done += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return done


def _settle(pid: int, fds_idle: int, timeout: float = 60.0) -> int:
    """Wait until the server has closed every connection (its fd count is back to idle); its RSS then, in KiB."""
    deadline = time.monotonic() + timeout
    while server_fds(pid) > fds_idle and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server_fds(pid) <= fds_idle, f"the server still holds {server_fds(pid) - fds_idle} fds after closing"
    time.sleep(0.5)  # let the loop finish its callbacks for the last closes
    return server_rss_kib(pid)


@pytest.mark.slow
@pytest.mark.parametrize("pure", [False, True], ids=["as-built", "pure"])
def test_rss_flat_over_a_second_batch_of_connections(chaos_certs: dict[str, str], pure: bool) -> None:
    env = child_env(URINGWS_PURE="1") if pure else child_env()
    port = free_port()
    server = start_server(serve_cmd(port, chaos_certs["server"], "127.0.0.1", "--ping-interval", "none"), env=env)
    try:
        url = f"wss://127.0.0.1:{port}/"
        ctx = client_tls(chaos_certs)
        fds_idle = server_fds(server.pid)
        rss_idle = server_rss_kib(server.pid)
        t0 = time.monotonic()
        assert run_async(_churn(url, ctx, BATCH)) == BATCH
        rss_first = _settle(server.pid, fds_idle)
        t1 = time.monotonic()
        assert run_async(_churn(url, ctx, BATCH)) == BATCH
        rss_second = _settle(server.pid, fds_idle)
        t2 = time.monotonic()
        assert server.poll() is None, "the server died"
        growth = rss_second - rss_first
        print(
            f"\n{'URINGWS_PURE=1' if pure else 'as built'}: RSS {rss_idle} KiB idle, {rss_first} KiB after "
            f"{BATCH} connections ({t1 - t0:.0f} s), {rss_second} KiB after {BATCH} more ({t2 - t1:.0f} s): "
            f"{growth:+d} KiB over the second batch"
        )
        assert growth <= MAX_GROWTH_KIB, (
            f"RSS grew {growth} KiB over the second {BATCH} connections ({growth * 1024 / BATCH:.0f} bytes each): "
            "something per connection is not freed"
        )
    finally:
        out = stop_server(server, timeout=60)
    assert server.returncode == 0, out[-3000:]
