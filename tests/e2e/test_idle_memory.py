"""What an idle server connection costs in Python objects made by uringws.ws and uringws.server
(benchmarks/idle_memory.py measures the whole RSS per idle TLS connection; this bounds the part those modules
allocate, so that a per-connection object made eagerly again shows up here)."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import tracemalloc

import pytest

from uringws.server import serve
from uringws.ws.config import WSConfig
from uringws.ws.connection import Connection
from uringws.ws.protocol import Side

from .test_ws_api import run

N = 300
#: Bytes per idle connection allocated at lines of uringws/ws/ and uringws/server.py, or one call below them (what
#: asyncio makes for them: futures, tasks), traced by tracemalloc over plain TCP, compression and keepalive off.
#: Measured about 4,130 B. Over the bound: an eager empty collections.deque for the message queue (+760 B), the
#: request's headers as a tuple and two str per header instead of packed (+820 B), the handshake futures made
#: for every server connection and kept (+280 B).
IDLE_LIMIT = 4300
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
    # all_frames: what asyncio makes for us (futures, tasks) counts too, one frame deeper.
    filters = [tracemalloc.Filter(True, "*" + pattern.lstrip("*"), all_frames=True) for pattern in OURS]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


@run
async def test_an_idle_connection_allocates_little_in_uringws_ws_and_server() -> None:
    async with serve(_echo, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        clients = [await _open(server.port_bound)]  # the first one warms up caches and lazily made objects
        await _settled(server.connections, 1)
        gc.collect()
        tracemalloc.start(2)
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


@run
async def test_handshake_done_is_made_on_first_use_and_tells_how_the_handshake_ended() -> None:
    opened, failed, waiting = (Connection(Side.SERVER, WSConfig()) for _ in range(3))
    assert opened._handshake_done is None and opened._request_ready is None  # made on first use / server's only
    opened._settle_handshake(None)
    assert opened.handshake_done.done() and opened.handshake_done.result() is None
    failed._settle_handshake(ConnectionError("closed during the opening handshake"))
    failed._settle_handshake(None)  # the first outcome stays
    with pytest.raises(ConnectionError):
        await failed.handshake_done
    waiter = waiting.handshake_done  # asked before the end (as connect() does)
    assert not waiter.done()
    waiting._settle_handshake(None)
    assert waiter.done() and waiter.result() is None and waiting.handshake_done is waiter


@run
async def test_a_server_connection_is_open_in_its_handler_and_drops_its_request_future() -> None:
    seen: list[tuple[bool, object]] = []

    async def handler(ws: Connection) -> None:
        seen.append((ws.handshake_done.done() and ws.handshake_done.result() is None, ws._request_ready))

    async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        _, writer = await _open(server.port_bound)
        async with asyncio.timeout(10):
            while not seen:
                await asyncio.sleep(0.01)
        writer.close()
    assert seen == [(True, None)]
