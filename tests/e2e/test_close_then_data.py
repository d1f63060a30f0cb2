"""End to end: a peer that sends data after its close frame; the server's handler never sees that data."""

from __future__ import annotations

import asyncio
import struct

from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed

from .test_ws_api import RawClient, masked, run


@run
async def test_data_after_close_in_the_same_write_never_reaches_the_handler() -> None:
    received: list[str | bytes] = []
    done = asyncio.Event()

    async def record(ws: Connection) -> None:
        try:
            async for message in ws:
                received.append(message)
        except ConnectionClosed:
            pass
        finally:
            done.set()

    async with serve(record, "127.0.0.1", 0) as server:
        raw = await RawClient.open(server.port_bound)
        # One write, so the server parses all three frames in one read.
        raw.send(masked(0x1, b"before") + masked(0x8, struct.pack("!H", 1000)) + masked(0x1, b"after"))
        assert await raw.close_code() == 1000  # echoed, then the server closes TCP
        raw.close()
        await asyncio.wait_for(done.wait(), 10)
    assert received == ["before"]
