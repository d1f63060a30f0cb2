"""What a websockets 17 user writes, run against uringws: ``ping()`` waiters, ``process_response``, ``logger=``
and close logging, ``recv_streaming()``; each against the websockets library as the peer where one is involved."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import ssl
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
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

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        """Listen on a free port (yielded); on exit close our side too. Since Python 3.12 a server's
        wait_closed() waits for every connection, and a StreamWriter left open after the client's close keeps
        its half-closed connection forever."""
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            if self.writer is not None:
                self.writer.close()
            server.close()
            await server.wait_closed()

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        assert self.writer is not None and len(payload) < 126
        self.writer.write(struct.pack("!BB", (0x80 if fin else 0) | opcode, len(payload)) + payload)


# -- ping() ----------------------------------------------------------------------------------------------------


@run
async def test_ping_returns_a_waiter_before_the_pong_arrives() -> None:
    peer = SilentPeer()
    async with peer.serving() as port:
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


# -- logger= and close logging ---------------------------------------------------------------------------------


class Records(logging.Handler):
    """Keeps the records of one logger (which does not propagate, so pytest's capture does not interfere)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def __enter__(self) -> Records:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = True


async def _wait_for_message(records: Records, part: str) -> str:
    """The first DEBUG message containing ``part`` (connection_lost may run a moment after the client returns)."""
    for _ in range(500):
        found = [m for m in records.messages() if part in m]
        if found:
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no DEBUG record with {part!r} in {records.messages()}")


@run
async def test_server_logger_gets_each_close_with_codes_and_who_closed() -> None:
    async def handler(ws: Connection) -> None:
        message = await ws.recv()
        if message == "close me":
            await ws.close(4001, "you asked")
        elif message == "crash":
            raise KeyError("handler bug")
        else:
            await ws.wait_closed()

    with Records("test.wsapi.server") as records:
        async with serve(handler, "127.0.0.1", 0, logger=records.logger, max_size=1000) as server:
            uri = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("wait")
                await client.close(1000, "bye")
            logged = await _wait_for_message(records, "'bye'")
            assert "closed by the peer" in logged and "received: 1000 'bye'" in logged, logged

            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("close me")
                with pytest.raises(websockets.exceptions.ConnectionClosed):
                    await client.recv()
            logged = await _wait_for_message(records, "you asked")
            assert "closed by us" in logged and "sent: 4001 'you asked'" in logged, logged

            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("crash")
                with pytest.raises(websockets.exceptions.ConnectionClosedError):
                    await client.recv()
            logged = await _wait_for_message(records, "1011")
            assert "closed by us" in logged, logged
            crash = [r for r in records.records if r.levelno == logging.ERROR]
            assert crash and crash[0].exc_info is not None and crash[0].exc_info[0] is KeyError

            # A failure on our side: the message is over max_size, and the log says why, with the exception.
            async with websockets.asyncio.client.connect(uri) as client:
                await client.send("x" * 2000)
                with pytest.raises(websockets.exceptions.ConnectionClosedError):
                    await client.recv()
            logged = await _wait_for_message(records, "failed")
            assert "1009" in logged, logged
            failed = [r for r in records.records if r.levelno == logging.DEBUG and "failed" in r.getMessage()]
            assert failed[0].exc_info is not None and failed[0].exc_info[0] is not None


@run
async def test_client_logger_adapter_and_default_logger_names(caplog: pytest.LogCaptureFixture) -> None:
    async def closes(ws: websockets.asyncio.server.ServerConnection) -> None:
        await ws.recv()
        await ws.close(4000, "go away")

    with Records("test.wsapi.client") as records:
        adapter = logging.LoggerAdapter(records.logger, {"session": "s-42"})
        async with websockets.asyncio.server.serve(closes, "127.0.0.1", 0) as wserver:
            uri = f"ws://127.0.0.1:{wserver.sockets[0].getsockname()[1]}/"
            async with connect(uri, logger=adapter) as ws:
                await ws.send("hi")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            logged = await _wait_for_message(records, "go away")
            assert "closed by the peer" in logged and "4000" in logged, logged
            assert all(getattr(r, "session", None) == "s-42" for r in records.records)

            caplog.set_level(logging.DEBUG, "uringws")
            async with connect(uri) as ws:
                await ws.close(1001, "leaving")
            assert ws.logger is logging.getLogger("uringws.client")
    closing = [r for r in caplog.records if "leaving" in r.getMessage()]
    assert closing and closing[0].name == "uringws.client" and "closed by us" in closing[0].getMessage()


def test_failed_tls_handshakes_log_at_info_with_the_peer(caplog: pytest.LogCaptureFixture) -> None:
    """Port scans and load balancer checks that do not speak TLS must not flood the log with warnings."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)

    @run
    async def body() -> None:
        caplog.set_level(logging.DEBUG, "uringws")
        async with serve(_echo, "127.0.0.1", 0, ssl=server_ctx) as server:
            port = server.sockets[0].getsockname()[1]
            ports = []
            for probe in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello"]:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                ports.append(writer.get_extra_info("sockname")[1])
                writer.write(probe)
                await asyncio.wait_for(reader.read(), 5)  # the server closes
                writer.close()
            for _ in range(200):
                if sum("TLS handshake" in r.getMessage() for r in caplog.records) >= 2:
                    break
                await asyncio.sleep(0.01)
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("uringws")]
        assert not noisy, [r.getMessage() for r in noisy]
        failed = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
        for client_port in ports:
            assert any(str(client_port) in m for m in failed), failed

    body()


# -- recv_streaming() ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
@run
async def test_recv_streaming_yields_fragments_as_they_arrive_from_websockets(compression: str | None) -> None:
    first_seen = asyncio.Event()

    async def pieces() -> AsyncIterator[str]:
        yield "hello "
        await first_seen.wait()  # the rest is sent only once the client has the first fragment
        yield "wörld"
        yield "!"

    async def handler(ws: websockets.asyncio.server.ServerConnection) -> None:
        await ws.send(pieces())
        await ws.send(b"whole")
        await ws.send([b"bin", b"ary"])
        await ws.wait_closed()

    async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0, compression="deflate") as wserver:
        uri = f"ws://127.0.0.1:{wserver.sockets[0].getsockname()[1]}/"
        async with connect(uri, compression=compression) as ws:
            fragments = []
            async for fragment in ws.recv_streaming():
                fragments.append(fragment)
                first_seen.set()
            # websockets ends a message sent from an async iterator with an empty final frame: one more fragment.
            assert fragments == ["hello ", "wörld", "!", ""]
            assert [f async for f in ws.recv_streaming()] == [b"whole"]
            assert await ws.recv() == b"binary"  # recv() after recv_streaming(): whole messages again
            assert ws.proto is not None and not ws.proto.stream_fragments


@run
async def test_recv_streaming_utf8_split_between_frames_and_limits() -> None:
    peer = SilentPeer()
    async with peer.serving() as port:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, max_size=100, close_timeout=1) as ws:
            await peer.connected.wait()
            # "é" is c3 a9: its two bytes are in different frames.
            peer.send_frame(0x1, b"caf\xc3", fin=False)
            peer.send_frame(0x0, b"\xa9!", fin=True)
            peer.send_frame(0x2, b"\x00\x01", fin=False)
            peer.send_frame(0x0, b"\x02", fin=True)
            assert [f async for f in ws.recv_streaming()] == ["caf", "é!"]
            assert [f async for f in ws.recv_streaming()] == [b"\x00\x01", b"\x02"]
            # recv_streaming() called when the message is half received (assembled so far by the parser).
            peer.send_frame(0x1, b"first half, ", fin=False)
            for _ in range(100):
                if ws.proto is not None and ws.proto._msg_opcode:
                    break
                await asyncio.sleep(0.01)
            stream = ws.recv_streaming()
            assert await stream.__anext__() == "first half, "
            peer.send_frame(0x0, b"second", fin=True)
            assert [f async for f in stream] == ["second"]
            # max_size bounds the whole message, not each fragment.
            peer.send_frame(0x2, b"x" * 60, fin=False)
            peer.send_frame(0x0, b"y" * 60, fin=True)
            got = []
            with pytest.raises(ConnectionClosed) as closed:
                async for fragment in ws.recv_streaming():
                    got.append(fragment)
            assert got == [b"x" * 60]
            assert closed.value.sent_code == 1009


@run
async def test_recv_streaming_invalid_utf8_across_frames_fails_1007() -> None:
    peer = SilentPeer()
    async with peer.serving() as port:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1) as ws:
            await peer.connected.wait()
            peer.send_frame(0x1, b"ok\xc3", fin=False)
            peer.send_frame(0x0, b"\x28", fin=True)  # c3 28: not UTF-8
            with pytest.raises(ConnectionClosed) as closed:
                async for _ in ws.recv_streaming():
                    pass
            assert closed.value.sent_code == 1007


@run
async def test_recv_streaming_concurrency_cancellation_and_abandon() -> None:
    peer = SilentPeer()
    async with peer.serving() as port:
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, close_timeout=1) as ws:
            await peer.connected.wait()
            # Cancelled before its first fragment: the message is not lost, recv() gets it whole.
            waiting = asyncio.ensure_future(ws.recv_streaming().__anext__())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            peer.send_frame(0x1, b"one ", fin=False)
            peer.send_frame(0x0, b"two", fin=True)
            assert await asyncio.wait_for(ws.recv(), 5) == "one two"

            # recv() cancelled half way through a message parsed as fragments loses nothing either.
            waiting = asyncio.ensure_future(ws.recv_streaming().__anext__())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            peer.send_frame(0x2, b"a", fin=False)
            receiving = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0.05)
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiving
            peer.send_frame(0x0, b"b", fin=True)
            assert await asyncio.wait_for(ws.recv(), 5) == b"ab"

            # No recv() while recv_streaming() is in a message; leaving it half way makes reading fail.
            peer.send_frame(0x1, b"x", fin=False)
            stream = ws.recv_streaming()
            assert await stream.__anext__() == "x"
            with pytest.raises(RuntimeError):
                await ws.recv()
            with pytest.raises(RuntimeError):
                await ws.recv_streaming().__anext__()
            await stream.aclose()
            with pytest.raises(RuntimeError, match="middle of a message"):
                await ws.recv()


@run
async def test_websockets_client_streams_from_our_server() -> None:
    """The other direction: websockets' recv_streaming() on what our server sends in fragments."""

    async def handler(ws: Connection) -> None:
        await ws.send(["fra", "gmé", "nts"])
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{port}/") as client:
            assert [f async for f in client.recv_streaming()] == ["fra", "gmé", "nts"]
