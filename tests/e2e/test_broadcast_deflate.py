"""``broadcast()`` shares one compressed frame only between connections that would compress it identically.

Receivers negotiate different permessage-deflate windows (the `websockets` library as the peer, which decodes
with the window it negotiated); a frame compressed for a 15-bit window may point further back than a 9-bit
window holds, so sharing it across window sizes corrupts the message for the small-window receiver.
"""

from __future__ import annotations

import asyncio
import os

import websockets
import websockets.asyncio.client
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from uringws.server import broadcast, serve
from uringws.ws.config import DeflateConfig
from uringws.ws.connection import Connection

from .test_ws_api import run, url


def far_repeats(blocks: int, size: int = 1000) -> bytes:
    """Each random block twice in a row: deflate refers back ``size`` bytes, beyond a 9-bit (512 B) window.

    Large enough (200 KB) that the receiver's inflate works through several output buffers, where a too-far
    distance is detected (within one buffer zlib does not check it).
    """
    return b"".join((b := os.urandom(size)) + b for _ in range(blocks))


@run
async def test_receivers_with_different_windows_each_decode_the_broadcast() -> None:
    conns: dict[str, Connection] = {}
    ready = asyncio.Event()

    async def register(ws: Connection) -> None:
        conns[ws.request.path] = ws  # type: ignore[union-attr]
        if len(conns) == 3:
            ready.set()
        await ws.wait_closed()

    # No context takeover on our side: broadcast compresses once per group of equal compressor settings.
    config = DeflateConfig(server_no_context_takeover=True)
    async with serve(register, "127.0.0.1", 0, compression=config, max_size=1 << 20) as server:
        clients = {
            bits: await websockets.asyncio.client.connect(
                url(server, f"/w{bits}"),
                compression=None,
                extensions=[ClientPerMessageDeflateFactory(server_max_window_bits=bits)],
                max_size=1 << 20,
            )
            for bits in (15, 9, 12)
        }
        await asyncio.wait_for(ready.wait(), 10)
        for bits, client in clients.items():
            assert f"server_max_window_bits={bits}" in client.response.headers["Sec-WebSocket-Extensions"]
        big, small = conns["/w15"], conns["/w9"]
        sent: list[bytes | str] = []
        # Both orders: whichever receiver comes first fills the cache.
        for order in ([big, small, conns["/w12"]], [small, big, conns["/w12"]]):
            for message in (far_repeats(100), far_repeats(100).hex()[:150_000]):
                assert broadcast(order, message) == 3
                sent.append(message)
        for bits, client in clients.items():
            for message in sent:
                assert await asyncio.wait_for(client.recv(), 10) == message, f"{bits}-bit receiver"
            await client.close()
            assert client.close_code == 1000


@run
async def test_context_keeping_receiver_decodes_messages_around_a_broadcast() -> None:
    """With context takeover the receiver's window holds every message: the broadcast must go through it too.

    A frame compressed standalone would leave our compressor's history without the broadcast while the peer's
    has it, so the next message's back-references would point into the broadcast and decode as its bytes.
    """
    conns: list[Connection] = []
    ready = asyncio.Event()

    async def register(ws: Connection) -> None:
        conns.append(ws)
        ready.set()
        await ws.wait_closed()

    async with serve(register, "127.0.0.1", 0, compression=DeflateConfig(), max_size=1 << 20) as server:
        async with websockets.asyncio.client.connect(url(server), compression="deflate") as client:
            await asyncio.wait_for(ready.wait(), 10)
            (conn,) = conns
            assert conn.proto is not None and conn.proto.deflate is not None
            assert not conn.proto.deflate.local_no_context_takeover
            first, other = os.urandom(2000), os.urandom(2000)
            await conn.send(first)
            assert broadcast(conns, other) == 1
            await conn.send(first)  # compressed as a reference back into our history
            for expected in (first, other, first):
                assert await asyncio.wait_for(client.recv(), 10) == expected
