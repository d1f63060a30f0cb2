"""What a websockets 17 user writes, run against uringws: ``ping()`` waiters, ``process_response``, ``logger=``
and close logging, ``recv_streaming()``; each against the websockets library as the peer where one is involved."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
from typing import Any

import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions

from uringws.client import connect
from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed
from uringws.ws.handshake import Request, Response

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


# -- process_response ------------------------------------------------------------------------------------------


def _status_of(exc_info: pytest.ExceptionInfo[websockets.exceptions.InvalidStatus]) -> int:
    return int(exc_info.value.response.status_code)


@run
async def test_process_response_adds_headers_to_the_101() -> None:
    seen: list[tuple[str, int]] = []

    def process_response(ws: Connection, request: Request, response: Response) -> None:
        seen.append((request.path, response.status))
        response.headers["X-Session"] = "abc"
        response.headers["Set-Cookie"] = "a=1"
        response.headers["Set-Cookie"] = "b=2"

    async with serve(_echo, "127.0.0.1", 0, process_response=process_response) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/chat?x=1") as client:
            assert client.response.headers["X-Session"] == "abc"
            assert client.response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
            await client.send("still a WebSocket")
            assert await client.recv() == "still a WebSocket"
    assert seen == [("/chat?x=1", 101)]


@run
async def test_async_process_response_replaces_the_response() -> None:
    async def process_response(ws: Connection, request: Request, response: Response) -> Response | None:
        await asyncio.sleep(0.01)
        if request.headers.get("Authorization") != "Bearer ok":
            refusal = ws.respond(401, [("WWW-Authenticate", "Bearer")], "who are you?\n")
            return refusal
        return None

    async with serve(_echo, "127.0.0.1", 0, process_response=process_response) as server:
        port = server.sockets[0].getsockname()[1]
        uri = f"ws://127.0.0.1:{port}/"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            await websockets.asyncio.client.connect(uri)
        assert _status_of(refused) == 401
        assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
        assert refused.value.response.body == b"who are you?\n"
        async with websockets.asyncio.client.connect(uri, additional_headers={"Authorization": "Bearer ok"}) as ok:
            await ok.send(b"in")
            assert await ok.recv() == b"in"


@run
async def test_process_response_sees_process_request_answers_and_refusals() -> None:
    statuses: list[int] = []

    def process_request(ws: Connection, request: Request) -> Response | None:
        return ws.respond(404, body="no such path\n") if request.path == "/missing" else None

    def process_response(ws: Connection, request: Request, response: Response) -> None:
        statuses.append(response.status)
        response.headers["X-Served-By"] = "test"

    async with serve(
        _echo, "127.0.0.1", 0, process_request=process_request, process_response=process_response
    ) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(websockets.exceptions.InvalidStatus) as missing:
            await websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/missing")
        assert _status_of(missing) == 404
        assert missing.value.response.headers["X-Served-By"] == "test"
        # Not an upgrade at all (plain GET): the 426 refusal goes through process_response too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        assert b"X-Served-By: test" in head
    assert statuses[0] == 404 and statuses[1] >= 400


@pytest.mark.parametrize("failure", ["raises", "bad type", "101 without upgrade"])
@run
async def test_process_response_failures_answer_500_and_are_logged(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    def process_response(ws: Connection, request: Request, response: Response) -> Any:
        if failure == "raises":
            raise LookupError("session store down")
        if failure == "bad type":
            return (200, [], b"")
        if response.status != 101:
            return Response(101)
        return None

    async with serve(_echo, "127.0.0.1", 0, process_response=process_response) as server:
        port = server.sockets[0].getsockname()[1]
        with caplog.at_level(logging.ERROR):
            if failure == "101 without upgrade":
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head = await asyncio.wait_for(reader.read(4096), 5)
                writer.close()
                assert head.startswith(b"HTTP/1.1 500 ")
            else:
                with pytest.raises(websockets.exceptions.InvalidStatus) as failed:
                    await websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/")
                assert _status_of(failed) == 500
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert errors, "the failure of process_response must be logged with its traceback"
    expected = {"raises": LookupError, "bad type": TypeError, "101 without upgrade": ValueError}[failure]
    assert any(r.exc_info and r.exc_info[0] is expected for r in errors)
