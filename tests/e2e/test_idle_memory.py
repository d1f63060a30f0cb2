"""What an idle server connection costs in Python objects made by uringws.ws and uringws.server
(benchmarks/idle_memory.py measures the whole RSS per idle TLS connection; this bounds the part those modules
allocate, so that a per-connection object made eagerly again shows up here)."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import tracemalloc

from uringws.server import serve
from uringws.ws.connection import Connection

from .test_ws_api import run

N = 300
#: Bytes per idle connection allocated at lines of uringws/ws/ and uringws/server.py (traced by tracemalloc, plain
#: TCP, compression and keepalive off). Measured about 3,330 B; an eager empty collections.deque for the message
#: queue adds 760 B, the request's headers kept as a tuple and two str per header instead of packed 820 B.
IDLE_LIMIT = 3700
UPGRADE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
OURS = (f"{os.sep}uringws{os.sep}ws{os.sep}*", f"*{os.sep}uringws{os.sep}server.py")


async def _echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _settled(server_connections: set[Connection], n: int) -> None:
    async with asyncio.timeout(10):
        while len(server_connections) < n or any(c.proto is None for c in server_connections):
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the handlers reach their first wait


def _ours(snapshot: tracemalloc.Snapshot) -> int:
    filters = [tracemalloc.Filter(True, "*" + pattern.lstrip("*")) for pattern in OURS]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


@run
async def test_an_idle_connection_allocates_little_in_uringws_ws_and_server() -> None:
    async with serve(_echo, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        clients = [await _open(server.port_bound)]  # the first one warms up caches and lazily made objects
        await _settled(server.connections, 1)
        gc.collect()
        tracemalloc.start(1)
        try:
            before = _ours(tracemalloc.take_snapshot())
            clients += [await _open(server.port_bound) for _ in range(N)]
            await _settled(server.connections, N + 1)
            gc.collect()
            after = _ours(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        per_connection = (after - before) / N
        for _, writer in clients:
            writer.close()
    assert per_connection < IDLE_LIMIT, f"{per_connection:.0f} B per idle connection"
    print(f"{per_connection:.0f} B per idle connection")
