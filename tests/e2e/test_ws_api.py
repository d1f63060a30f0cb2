"""The asyncio API end to end on the stdlib loop: echo, TLS, interop with `websockets`, HTTP answers,
subprotocols, keepalive, bad input and broadcast."""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions

from uringws.client import connect
from uringws.routing import Router
from uringws.server import Server, broadcast, serve
from uringws.ws.config import WSConfig
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConcurrencyError, ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from uringws.ws.frames import parse_frame, serialize_frame
from uringws.ws.handshake import ClientHandshake, parse_uri

T = TypeVar("T")


#: URINGWS_TEST_LOOP=io_uring (or epoll) runs these tests on the team's loop instead of the stdlib one.
TEST_LOOP = os.environ.get("URINGWS_TEST_LOOP", "asyncio")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if TEST_LOOP == "asyncio":
        return None
    from uringws import new_event_loop  # the public loop: ring (or epoll) transports + uringws TLS

    return functools.partial(new_event_loop, backend=TEST_LOOP)


def run(coro_fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async test on a fresh event loop, with a hard 30 s bound."""

    @functools.wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(30):
                return await coro_fn(*args, **kwargs)

        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(bounded())

    return wrapper


async def echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


def url(server: Server, path: str = "/", scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port_bound}{path}"


# -- round trips -----------------------------------------------------------------------------------------------


@run
async def test_async_for_waits_like_recv_one_reader_at_a_time() -> None:
    """``async for`` waits for the next message itself (not through recv()), with recv()'s rules: a second
    reader gets ConcurrencyError whichever of the two came first, a cancelled wait leaves nothing behind, and
    every message goes to exactly one reader, in order."""
    async with serve(echo, "127.0.0.1", 0, compression=None) as server, connect(url(server)) as ws:
        iterator = ws.__aiter__()
        first = asyncio.create_task(iterator.__anext__())
        await asyncio.sleep(0.01)
        with pytest.raises(ConcurrencyError):
            await ws.recv()
        with pytest.raises(ConcurrencyError):
            await iterator.__anext__()
        await ws.send("one")
        assert await first == "one"
        second = asyncio.create_task(ws.recv())
        await asyncio.sleep(0.01)
        with pytest.raises(ConcurrencyError):
            await iterator.__anext__()
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        waiting = asyncio.create_task(iterator.__anext__())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await ws.send("two")
        await ws.send("three")
        assert [await iterator.__anext__(), await ws.recv()] == ["two", "three"]


@run
async def test_async_for_during_recv_streaming_is_a_concurrency_error() -> None:
    async with serve(echo, "127.0.0.1", 0, compression=None) as server, connect(url(server)) as ws:
        stream = ws.recv_streaming()
        started = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0.01)
        with pytest.raises(ConcurrencyError):
            await ws.__anext__()
        await ws.send("whole")
        assert await started == "whole"
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        await ws.send("next")
        assert await ws.__anext__() == "next"


@pytest.mark.parametrize("compression", ["deflate", None])
@run
async def test_echo_sizes_text_binary_fragments(compression: str | None) -> None:
    async with serve(echo, "127.0.0.1", 0, max_size=4 << 20, compression=compression) as server:
        async with connect(url(server), max_size=4 << 20, compression=compression) as ws:
            for size in [1, 125, 126, 65535, 65536, 1 << 20, 2 << 20]:
                payload = os.urandom(size)
                await ws.send(payload)
                assert await ws.recv() == payload
                text = "é" * (size // 2) or "x"
                await ws.send(text)
                assert await ws.recv() == text
            await ws.send([b"frag", b"", b"ments"])
            assert await ws.recv() == b"fragments"

            async def agen() -> AsyncIterator[str]:
                for piece in ["as", "ync"]:
                    await asyncio.sleep(0)
                    yield piece

            await ws.send(agen())
            assert await ws.recv() == "async"
            assert 0 <= await (await ws.ping()) < 5
            assert (ws.proto is not None and ws.proto.deflate is not None) == (compression is not None)
        assert (ws.close_code, ws.close_reason) == (1000, "")
        with pytest.raises(ConnectionClosedOK):
            await ws.send("after close")
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()


def test_echo_over_tls(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    @run
    async def body() -> None:
        async with serve(echo, "127.0.0.1", 0, ssl=tls[0], max_size=4 << 20) as server:
            async with connect(url(server, scheme="wss"), ssl=tls[1], max_size=4 << 20) as ws:
                for size in [1, 70_000, 2 << 20]:
                    payload = os.urandom(size)
                    await ws.send(payload)
                    assert await ws.recv() == payload
                assert ws.transport is not None and ws.transport.get_extra_info("ssl_object") is not None

    body()


def test_large_binary_echo_over_tls_on_the_ring_loop(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The server's large-message send path (header and payload written as two buffers through the TLS layer's
    write_if_open, without the generic dispatch) at each header size and around the join limit."""
    import uringws

    sizes = [4095, 4096, 65535, 65536, 70_000, 1 << 20]

    async def body() -> None:
        async with serve(echo, "127.0.0.1", 0, ssl=tls[0], max_size=4 << 20, compression=None) as server:
            async with connect(url(server, scheme="wss"), ssl=tls[1], max_size=4 << 20, compression=None) as ws:
                for size in sizes:
                    payload = os.urandom(size)
                    await ws.send(payload)
                    assert await ws.recv() == payload
                (conn,) = server.connections
                assert conn._write_if_open is not None  # the path under test was available
                assert conn.proto is not None and conn.proto.messages_out == len(sizes)

    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(asyncio.wait_for(body(), 30))


def test_connection_state_lives_in_slots(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """On uringws's loop the per-connection objects keep their state in __slots__ (an instance dict of 30+
    attributes costs ~1.5 KiB per connection): after an echo their __dict__ is still empty, the server has dropped
    its handshake parser and the TLS layers their empty write backlogs. Fails when someone adds an attribute
    without adding it to __slots__."""
    import uringws
    from uringws.loop import RingSocketTransport
    from uringws.ring import probe

    if not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    conns: list[Connection] = []

    async def handler(ws: Connection) -> None:
        conns.append(ws)
        await echo(ws)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server, scheme="wss"), ssl=tls[1]) as ws:
                for size in (10, 100_000):
                    await ws.send(b"x" * size)
                    assert await ws.recv() == b"x" * size
                sconn = conns[0]
                assert sconn._server_hs is None
                raw = [c.transport._tls._transport for c in (sconn, ws)]  # type: ignore[union-attr]
                assert all(isinstance(t, RingSocketTransport) for t in raw)
                for obj in (sconn, sconn.proto, ws, ws.proto, *raw):
                    assert obj.__dict__ == {}, (type(obj).__name__, obj.__dict__)
                # The TLS layers gave back their emptied write backlog (a deque is ~760 B per idle connection).
                assert [c.transport._tls._backlog for c in (sconn, ws)] == [None, None]  # type: ignore[union-attr]

    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(asyncio.wait_for(body(), 30))


# -- interop with the websockets library ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
@run
async def test_websockets_client_against_our_server(compression: str | None) -> None:
    async with serve(echo, "127.0.0.1", 0, max_size=4 << 20, subprotocols=["chat"]) as server:
        async with websockets.asyncio.client.connect(
            url(server, "/interop"),
            compression=compression,
            max_size=4 << 20,
            subprotocols=[websockets.Subprotocol("chat")],
        ) as ws:
            assert ws.subprotocol == "chat"
            messages: list[str | bytes] = ["hello", b"\x00" * 100_000, os.urandom(1 << 20), "κόσμε" * 1000]
            for message in messages:
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send(["frag", "mented"])
            assert await ws.recv() == "fragmented"
            assert await (await ws.ping()) >= 0  # websockets answers our ping
        assert ws.close_code == 1000


@pytest.mark.parametrize("compression", ["deflate", None])
@run
async def test_our_client_against_websockets_server(compression: str | None) -> None:
    async def ws_echo(ws: websockets.asyncio.server.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets.asyncio.server.serve(
        ws_echo, "127.0.0.1", 0, max_size=4 << 20, compression="deflate", subprotocols=[websockets.Subprotocol("v2")]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}/", compression=compression, max_size=4 << 20, subprotocols=["v1", "v2"]
        ) as ws:
            assert ws.subprotocol == "v2"
            assert ws.response is not None and ws.response.status == 101
            to_send: list[Any] = ["hello", b"\x00" * 100_000, os.urandom(1 << 20), [b"a", b"b"]]
            for message in to_send:
                await ws.send(message)
                expected = b"ab" if isinstance(message, list) else message
                assert await ws.recv() == expected
            assert await (await ws.ping()) >= 0
        assert ws.close_code == 1000


# -- HTTP answers, routing, subprotocols -----------------------------------------------------------------------


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    data = await reader.read()  # the server closes after answering
    writer.close()
    return data


@run
async def test_process_request_answers_http() -> None:
    def process_request(ws: Connection, request: Any) -> Any:
        if ws.path == "/healthz":
            return ws.respond(200, [("Content-Type", "text/plain")], b"ok\n")
        if ws.path == "/missing":
            return 404, [], "not here\n"
        return None

    async with serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        health = await http_get(server.port_bound, "/healthz")
        assert health.startswith(b"HTTP/1.1 200 OK\r\n") and health.endswith(b"\r\n\r\nok\n")
        missing = await http_get(server.port_bound, "/missing")
        assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n") and missing.endswith(b"not here\n")
        plain = await http_get(server.port_bound, "/ws")  # no Upgrade header
        assert plain.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
        with pytest.raises(InvalidStatus) as info:
            await connect(url(server, "/missing"))
        assert info.value.status == 404
        async with connect(url(server, "/ws")) as ws:
            await ws.send("still works")
            assert await ws.recv() == "still works"


@run
async def test_router() -> None:
    async def hello(ws: Connection) -> None:
        await ws.send("hello from " + ws.path)

    router = Router({"/a": hello, "/b": echo})
    async with serve(router.handler, "127.0.0.1", 0, process_request=router.process_request) as server:
        async with connect(url(server, "/a?x=1")) as ws:
            assert await ws.recv() == "hello from /a"
        with pytest.raises(InvalidStatus):
            await connect(url(server, "/c"))


@run
async def test_subprotocol_negotiation() -> None:
    async def report(ws: Connection) -> None:
        await ws.send(str(ws.subprotocol))

    async with serve(report, "127.0.0.1", 0, subprotocols=["mqtt", "wamp"]) as server:
        async with connect(url(server), subprotocols=["wamp", "mqtt"]) as ws:
            assert ws.subprotocol == "mqtt"  # the server's preference order
            assert await ws.recv() == "mqtt"
        async with connect(url(server), subprotocols=["other"]) as ws:
            assert ws.subprotocol is None and await ws.recv() == "None"


# -- raw peers for keepalive and bad input ---------------------------------------------------------------------


class RawClient:
    """A hand-driven client: performs the handshake, then sends arbitrary bytes and reads raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(cls, port: int, extensions: str | None = None) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        hs = ClientHandshake(parse_uri(f"ws://127.0.0.1:{port}/"), WSConfig(compression=None))
        request = hs.data_to_send()
        if extensions:
            request = request[:-2] + f"Sec-WebSocket-Extensions: {extensions}\r\n\r\n".encode()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """The next frame (opcode, payload), or None at EOF."""
        async with asyncio.timeout(timeout):
            while True:
                parsed = parse_frame(self.buffer, masked=False, allow_rsv1=True)
                if parsed is not None:
                    frame, end = parsed
                    self.buffer = self.buffer[end:]
                    return frame.opcode, frame.payload
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.buffer += data

    async def close_code(self) -> int:
        """Skip data frames until the close frame; return its code, and check the server then closes TCP."""
        while True:
            frame = await self.frame()
            assert frame is not None, "connection closed without a close frame"
            if frame[0] == 0x8:
                code = struct.unpack("!H", frame[1][:2])[0]
                assert await self.frame() is None  # server closes the TCP connection after failing
                return code

    def close(self) -> None:
        self.writer.close()


def masked(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    return serialize_frame(opcode, payload, fin, rsv1, os.urandom(4))


@run
async def test_keepalive_closes_silent_peer_with_1011() -> None:
    async with serve(echo, "127.0.0.1", 0, ping_interval=0.2, ping_timeout=0.3) as server:
        raw = await RawClient.open(server.port_bound)
        loop = asyncio.get_running_loop()
        start = loop.time()
        frame = await raw.frame()
        assert frame is not None and frame[0] == 0x9  # a ping, which we never answer
        assert await raw.close_code() == 1011
        assert 0.4 <= loop.time() - start < 3.0
        raw.close()


@run
async def test_keepalive_answered_pings_keep_connection() -> None:
    async with serve(echo, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.2) as server:
        async with connect(url(server), ping_interval=None) as ws:
            await asyncio.sleep(0.8)  # several ping rounds, answered automatically by our client
            await ws.send("alive")
            assert await ws.recv() == "alive"


@run
async def test_no_pings_when_keepalive_disabled() -> None:
    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        raw = await RawClient.open(server.port_bound)
        with pytest.raises(TimeoutError):
            await raw.frame(timeout=0.6)
        raw.close()


def deflate_bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = b"".join(c.compress(bytes(1 << 20)) for _ in range(size >> 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


BAD_INPUTS: list[tuple[str, bytes, int, str | None]] = [
    ("unmasked", serialize_frame(0x1, b"hello"), 1002, None),
    ("reserved opcode", masked(0x3, b""), 1002, None),
    ("invalid utf-8", masked(0x1, b"\xce\xba\xed\xa0\x80"), 1007, None),
    ("too big", masked(0x2, b"x" * 70_000), 1009, None),
    ("deflate bomb", masked(0x2, deflate_bomb(64 << 20), rsv1=True), 1009, "permessage-deflate"),
    ("bad close code", masked(0x8, struct.pack("!H", 1005)), 1002, None),
]


@pytest.mark.parametrize(("name", "wire", "code", "extensions"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@run
async def test_bad_input_gets_close_code_and_others_keep_working(
    name: str, wire: bytes, code: int, extensions: str | None
) -> None:
    async with serve(echo, "127.0.0.1", 0, max_size=65536) as server:
        async with connect(url(server)) as good:
            raw = await RawClient.open(server.port_bound, extensions)
            raw.send(wire)
            assert await raw.close_code() == code
            raw.close()
            await good.send("still here")
            assert await good.recv() == "still here"


@run
async def test_messages_before_a_protocol_error_are_answered_first() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        raw = await RawClient.open(server.port_bound)
        raw.send(masked(0x1, b"before") + masked(0xB, b"") + masked(0x1, b"after"))
        assert await raw.frame() == (0x1, b"before")  # the echo goes out before the close frame
        assert await raw.close_code() == 1002
        raw.close()


@run
async def test_server_close_code_reaches_client() -> None:
    async def closer(ws: Connection) -> None:
        await ws.close(4001, "custom")

    async with serve(closer, "127.0.0.1", 0) as server:
        async with connect(url(server)) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert (info.value.code, info.value.reason) == (4001, "custom")
        assert ws.close_code == 4001


@run
async def test_handler_exception_closes_with_1011() -> None:
    async def broken(ws: Connection) -> None:
        raise RuntimeError("boom")

    async with serve(broken, "127.0.0.1", 0) as server:
        async with connect(url(server)) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.code == 1011


@run
async def test_server_send_after_the_peer_closed_raises() -> None:
    """A small bytes message (the send fast path, which builds the frame itself) on a server connection that the
    peer closed raises ConnectionClosedOK, as every other send does; it is not framed and written."""
    outcome: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(ws: Connection) -> None:
        async for _ in ws:
            pass  # until the peer's close
        try:
            await ws.send(b"after close")
        except BaseException as exc:  # noqa: BLE001 -- reported to the test
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:  # uncompressed: the fast path
        async with connect(url(server)) as ws:
            await ws.send(b"hello")
        assert isinstance(await outcome, ConnectionClosedOK)


@run
async def test_server_shutdown_sends_1001() -> None:
    started = asyncio.Event()

    async def wait(ws: Connection) -> None:
        started.set()
        await ws.wait_closed()

    server = await serve(wait, "127.0.0.1", 0)
    ws = await connect(url(server))
    await started.wait()
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionClosedOK):
        await ws.recv()
    assert ws.close_code == 1001


# -- flow control and broadcast --------------------------------------------------------------------------------


@run
async def test_max_queue_pauses_reading() -> None:
    release = asyncio.Event()
    paused: list[bool] = []

    async def slow(ws: Connection) -> None:
        await release.wait()
        paused.append(ws._reading_paused)
        count = 0
        async for _ in ws:
            count += 1
            if count == 50:
                await ws.send(str(count))

    async with serve(slow, "127.0.0.1", 0, max_queue=4) as server:
        async with connect(url(server)) as ws:
            for i in range(50):
                await ws.send(str(i))
            await asyncio.sleep(0.3)
            release.set()
            assert await ws.recv() == "50"
    assert paused == [True]


@run
async def test_send_waits_for_drain_when_peer_does_not_read() -> None:
    blocked = asyncio.Event()

    async def flood(ws: Connection) -> None:
        try:
            for _ in range(10_000):
                await ws.send(b"x" * 65536)  # must block once buffers fill up
        finally:
            blocked.set()

    async with serve(flood, "127.0.0.1", 0, sndbuf=16384, write_limit=65536) as server:
        raw = await RawClient.open(server.port_bound)
        await asyncio.sleep(0.5)
        # The peer reads nothing: the handler must be parked in send(), with bounded buffering.
        assert not blocked.is_set()
        conns = list(server.connections)
        assert len(conns) == 1 and conns[0].transport is not None
        assert conns[0].transport.get_write_buffer_size() < 65536 + 70000
        raw.close()


@run
async def test_broadcast_skips_slow_consumers() -> None:
    ready = asyncio.Event()
    conns: list[Connection] = []

    async def register(ws: Connection) -> None:
        conns.append(ws)
        if len(conns) == 3:
            ready.set()
        await ws.wait_closed()

    # A small SO_SNDBUF so the kernel cannot absorb the slow consumer's backlog (loopback buffers are MiBs).
    async with serve(register, "127.0.0.1", 0, sndbuf=16384) as server:
        clients = [await connect(url(server), compression=c) for c in ("deflate", None)]
        raw = await RawClient.open(server.port_bound)  # the slow consumer: never reads
        await ready.wait()
        slow = next(c for c in conns if c.proto is not None and c.proto.deflate is None and c is not conns[1])
        assert slow.transport is not None
        # Fill the slow consumer's transport buffer above its high-water mark.
        slow.transport.pause_reading()
        sock_buffer_filler = b"y" * (16 << 20)
        slow.transport.write(serialize_frame(0x2, sock_buffer_filler))
        assert slow.transport.get_write_buffer_size() > slow.config.write_limit_high
        written = broadcast(conns, "news")
        assert written == 2
        for client in clients:
            assert await client.recv() == "news"
        assert broadcast(conns, b"\x01\x02") == 2
        for client in clients:
            assert await client.recv() == b"\x01\x02"
        for client in clients:
            await client.close()
        raw.close()


@run
async def test_broadcast_shares_compressed_frame_with_no_context_takeover() -> None:
    from uringws.ws.config import DeflateConfig

    conns: list[Connection] = []
    ready = asyncio.Event()

    async def register(ws: Connection) -> None:
        conns.append(ws)
        if len(conns) == 2:
            ready.set()
        await ws.wait_closed()

    config = DeflateConfig(server_no_context_takeover=True)
    async with serve(register, "127.0.0.1", 0, compression=config) as server:
        clients = [await connect(url(server)) for _ in range(2)]
        await ready.wait()
        assert all(c.proto is not None and c.proto.deflate is not None for c in conns)
        message = "broadcast " * 100
        assert broadcast(conns, message) == 2
        for _ in range(3):
            assert broadcast(conns, message) == 2
        for client in clients:
            for _ in range(4):
                assert await client.recv() == message
            await client.close()


@run
async def test_connect_errors() -> None:
    with pytest.raises(OSError):
        await connect("ws://127.0.0.1:1/")
    with pytest.raises(ValueError):
        connect("ws://127.0.0.1:1/", ssl=ssl.create_default_context())

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    srv = await asyncio.start_server(never, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    with pytest.raises(TimeoutError):
        await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.3)
    srv.close()


@run
async def test_open_timeout_drops_silent_clients() -> None:
    async with serve(echo, "127.0.0.1", 0, open_timeout=0.3) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port_bound)
        writer.write(b"GET / HTTP/1.1\r\n")  # an incomplete request, then silence
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            assert await reader.read() == b""
        except ConnectionResetError:
            pass  # aborted: fine too
        assert 0.25 <= loop.time() - start < 3.0
        writer.close()


@run
async def test_close_timeout_when_peer_never_answers_close() -> None:
    async def mute_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from uringws.ws.handshake import ServerHandshake, serialize_response

        hs = ServerHandshake(WSConfig(compression=None))
        request = None
        while request is None:
            request = hs.receive_data(await reader.read(4096))
        writer.write(serialize_response(hs.accept(request)[0]))
        await asyncio.sleep(10)  # never reads, never answers the close frame

    srv = await asyncio.start_server(mute_server, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    ws = await connect(f"ws://127.0.0.1:{port}/", close_timeout=0.3, ping_interval=None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await ws.close()
    assert 0.25 <= loop.time() - start < 3.0
    assert ws.close_code == 1006
    srv.close()


@run
async def test_connection_attributes() -> None:
    async def describe(ws: Connection) -> None:
        assert ws.request is not None and ws.response is not None
        await ws.send(f"{ws.path}|{ws.request.headers['User-Agent']}|{ws.remote_address[0]}|{ws.response.status}")
        await ws.wait_closed()  # stay open until the client closes

    async with serve(describe, "127.0.0.1", 0) as server:
        async with connect(url(server, "/p?q=1"), user_agent="probe/1") as ws:
            assert await ws.recv() == "/p|probe/1|127.0.0.1|101"
            assert ws.request is not None and ws.request.path == "/p?q=1"
            assert ws.remote_address[1] == server.port_bound
            assert ws.close_code is None
