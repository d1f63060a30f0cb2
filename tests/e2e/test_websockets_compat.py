"""What a websockets 17 user writes, run against uringws: ``ping()`` waiters, ``process_response``, ``logger=``
and close logging, ``recv_streaming()``; each against the websockets library as the peer where one is involved."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server

from uringws.client import connect
from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed

from .test_ws_api import run

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


class SilentPeer:
    """A raw server that accepts the WebSocket upgrade and then sends only what the test tells it to."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.connected = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.reader, self.writer = reader, writer
        self.connected.set()

    async def read_frame(self) -> tuple[int, bytes]:
        """One masked client frame (payload < 126 bytes): (opcode, unmasked payload)."""
        assert self.reader is not None
        first, second = await self.reader.readexactly(2)
        mask = await self.reader.readexactly(4)
        payload = await self.reader.readexactly(second & 0x7F)
        return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        assert self.writer is not None and len(payload) < 126
        self.writer.write(struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload)


# -- ping() ----------------------------------------------------------------------------------------------------


@run
async def test_ping_returns_a_waiter_before_the_pong_arrives() -> None:
    peer = SilentPeer()
    server = await asyncio.start_server(peer.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1) as ws:
            await peer.connected.wait()
            # The peer never answers by itself: await ping() must still return (it only sends).
            pong_waiter = await asyncio.wait_for(ws.ping(b"abc"), 5)
            opcode, payload = await peer.read_frame()
            assert (opcode, payload) == (0x9, b"abc")
            await asyncio.sleep(0.05)
            assert not pong_waiter.done()  # type: ignore[attr-defined]
            with pytest.raises(RuntimeError):
                await ws.ping(b"abc")  # same payload still waiting: websockets raises ConcurrencyError
            peer.send_frame(0xA, b"abc")
            latency = await asyncio.wait_for(pong_waiter, 5)
            assert isinstance(latency, float) and latency >= 0.05
            # A waiter still pending when the connection is lost raises ConnectionClosed, as in websockets.
            pending = await ws.ping()
            assert peer.writer is not None
            peer.writer.transport.abort()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(pending, 5)


@run
async def test_ping_pong_waiter_against_websockets() -> None:
    """Our client pinging websockets' server, and websockets' client pinging ours: the same two-step code."""
    async with websockets.asyncio.server.serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as wserver:
        port = wserver.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            pong_waiter = await ws.ping()
            latency = await pong_waiter
            assert 0 <= latency < 5
            waiters = [await ws.ping(f"p{i}") for i in range(3)]
            assert all(0 <= latency < 5 for latency in await asyncio.gather(*waiters))

    async with serve(_echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/") as client:
            assert 0 <= await (await client.ping()) < 5
