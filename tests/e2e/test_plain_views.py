"""A plain-TCP WebSocket connection on uringws's ring loop takes its reads as lent views of the loop's receive
buffer (``Connection.received_view``), as a TLS connection's plaintext does: no bytes object per read and no join of
the reads a busy socket held back. Messages of every size, split anywhere by TCP, arrive whole and in order."""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest

import uringws
from uringws.client import connect
from uringws.server import ServerConnection, serve


def on_ring(coro: Any) -> None:
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro(), 60))


def test_plain_tcp_reads_reach_the_connection_as_views_and_echo_intact() -> None:
    sizes = [0, 1, 125, 126, 65_535, 65_536, 200_000, 3 << 20]
    seen: dict[str, Any] = {}

    async def echo(ws: ServerConnection) -> None:
        transport = ws.transport
        seen["view_sink"] = getattr(transport, "_view_sink", None)
        seen["read_mode"] = getattr(asyncio.get_running_loop(), "read_mode", None)
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None) as server:
            async with connect(f"ws://127.0.0.1:{server.port_bound}/", compression=None, max_size=None) as ws:
                payloads = [os.urandom(n) for n in sizes]
                sender = asyncio.ensure_future(asyncio.gather(*(ws.send(p) for p in payloads)))
                for p in payloads:
                    got = await ws.recv()
                    assert hashlib.sha256(got).digest() == hashlib.sha256(p).digest() and len(got) == len(p)
                await sender

    on_ring(main)
    if seen["read_mode"] != "ring":
        pytest.skip("this loop reads by poll + recv(2) (no multishot RECV or buffer rings here)")
    assert seen["view_sink"] is not None
