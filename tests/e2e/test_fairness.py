"""One abusive peer must not stall the others, nor make the server buffer without bound.

First over a recording transport (exact, fast): a large received chunk is parsed within a frame budget and the
rest waits for a later loop turn with reading paused; reading also pauses while the write buffer is above its
high-water mark. Then end to end over TLS on uringws's loops: a ping flood that never reads its pongs keeps the
server's write buffer near the limit (TCP pushes back on the flooder), and a ping flood that does read cannot delay
another connection's echo by more than a fraction of a second.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import trustme

import uringws
from uringws.ws import connection as connection_module
from uringws.ws.config import WSConfig
from uringws.ws.connection import Connection
from uringws.ws.frames import parse_frame
from uringws.ws.protocol import Protocol, Side

T = TypeVar("T")

HIGH, LOW = 1000, 250


class Transport(asyncio.Transport):
    """Records writes and reading pauses; ``set_queued`` plays the flow-control part of a real transport."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn
        self.writes: list[bytes] = []
        self.reading = True
        self.queued = 0
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.queued

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def set_queued(self, n: int) -> None:
        self.queued = n
        if n > HIGH and not self.paused:
            self.paused = True
            self.conn.pause_writing()
        elif n <= LOW and self.paused:
            self.paused = False
            self.conn.resume_writing()


def make_conn(max_queue: int | None = 16) -> tuple[Connection, Transport]:
    config = WSConfig(write_limit_high=HIGH, write_limit_low=LOW, compression=None, max_queue=max_queue)
    conn = Connection(Side.SERVER, config)
    transport = Transport(conn)
    conn.transport = transport
    conn.proto = Protocol(Side.SERVER, message_sink=conn._first_message)  # as the opening handshake wires it
    conn.proto.frame_budget = connection_module.TURN_FRAMES  # as the opening handshake sets it up
    return conn, transport


def ping(i: int) -> bytes:
    """A client's (masked) ping frame whose payload is ``i``; the zero mask leaves it as is."""
    return b"\x89\x84\x00\x00\x00\x00" + struct.pack("!I", i)


def pongs(transport: Transport) -> list[int]:
    data = b"".join(transport.writes)
    out = []
    pos = 0
    while pos < len(data):
        parsed = parse_frame(data, pos, masked=False)
        assert parsed is not None
        frame, pos = parsed
        assert frame.opcode == 0xA
        out.append(struct.unpack("!I", frame.payload)[0])
    return out


def run(coro: Coroutine[Any, Any, T], factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(60):
            return await coro

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


def test_a_large_chunk_is_parsed_one_turn_budget_at_a_time() -> None:
    async def body() -> None:
        conn, transport = make_conn()
        count = 20_000
        flood = b"".join(ping(i) for i in range(count))  # 200 KB: one TLS delivery can hold this much
        conn.data_received(flood)
        # One turn answered its budget, and reading waits for the next turn.
        assert len(pongs(transport)) == connection_module.TURN_FRAMES
        assert not transport.reading
        turns = 1
        while transport.reading is False:
            await asyncio.sleep(0)
            turns += 1
            assert turns < 100
        assert turns == -(-count // connection_module.TURN_FRAMES)
        assert pongs(transport) == list(range(count))  # every ping answered, in order
        # Bytes that a lower layer still delivers after the pause wait behind the kept rest, in order.
        conn.data_received(flood)
        conn.data_received(ping(count))
        while transport.reading is False:
            await asyncio.sleep(0)
        assert pongs(transport) == list(range(count)) * 2 + [count]

    run(body())


def test_reading_pauses_while_the_write_buffer_is_above_the_limit() -> None:
    async def body() -> None:
        conn, transport = make_conn(max_queue=2)
        transport.set_queued(HIGH + 1)
        assert not transport.reading  # a peer that does not read what we send gets no more of its input read
        conn.data_received(ping(1))  # what was on its way is still handled
        transport.set_queued(LOW)
        assert transport.reading
        # Both reasons at once: reading resumes only when neither holds.
        conn.data_received(b"\x82\x81\x00\x00\x00\x00x" * 2)  # two messages: max_queue reached
        assert not transport.reading
        transport.set_queued(HIGH + 1)
        transport.set_queued(LOW)
        assert not transport.reading
        await conn.recv()
        await conn.recv()
        assert transport.reading
        transport.set_queued(HIGH + 1)
        conn.data_received(b"\x82\x81\x00\x00\x00\x00x" * 2)
        await conn.recv()
        await conn.recv()
        assert not transport.reading
        transport.set_queued(0)
        assert transport.reading

    run(body())


# -- end to end -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ssl.SSLContext, str]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    yield ctx, str(ca_file)


def ring_loop() -> asyncio.AbstractEventLoop:
    from uringws.ring import probe

    if not probe.availability().usable:
        pytest.skip("io_uring is not usable here")
    return uringws.new_event_loop()


def epoll_loop() -> asyncio.AbstractEventLoop:
    return uringws.EventLoop(backend="epoll")


LOOPS = [pytest.param(ring_loop, id="io_uring"), pytest.param(epoll_loop, id="epoll")]


def client_socket(port: int, ca_file: str, rcvbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", port))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca_file)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.mark.parametrize("factory", LOOPS)
def test_unread_pongs_stay_within_the_write_limit(factory: Any, certs: tuple[ssl.SSLContext, str]) -> None:
    """A client flooding pings and never reading: the server stops reading it once its pongs fill the write
    buffer, so the buffer stays near the limit and the flooder's sends block (TCP pushes back)."""
    ctx, ca_file = certs
    high = 16 * 1024
    burst = b"".join(ping(i) for i in range(4096))
    # 48 MB of pings, more than the kernel buffers on both sides take in (~10 MB on loopback): the flooder must
    # block. Were every pong kept, a byte would pile up in the server for every byte of pings received.
    total = 1200 * len(burst)

    async def body() -> tuple[int, int]:
        async with uringws.serve(echo, "127.0.0.1", 0, ssl=ctx, sndbuf=4096, write_limit=high,
                                 ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            sent = 0
            done = threading.Event()

            def flood() -> None:
                nonlocal sent
                sock = client_socket(port, ca_file, rcvbuf=4096)
                sock.settimeout(1.0)  # blocked this long: the server no longer reads us
                try:
                    while sent < total:
                        sock.sendall(burst)
                        sent += len(burst)
                except (TimeoutError, OSError):
                    pass
                finally:
                    done.set()
                    sock.close()

            thread = threading.Thread(target=flood, daemon=True)
            thread.start()
            peak = 0
            while not done.is_set():
                for conn in server.connections:
                    if conn.transport is not None:
                        peak = max(peak, conn.transport.get_write_buffer_size())
                await asyncio.sleep(0.01)
            thread.join()
            return sent, peak

    sent, peak = run(body(), factory)
    assert sent < total, "the server kept reading a peer that reads nothing"
    # The limit, plus what one turn may add (its budget of pongs) before the pause takes effect.
    assert peak <= high + connection_module.TURN_FRAMES * 8 + 64 * 1024, peak


FLOODER = r"""
import socket, ssl, struct, sys, threading, time
port, ca_file, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(ca_file)
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += sock.recv(4096)

def drain():
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass

threading.Thread(target=drain, daemon=True).start()  # it reads its pongs: the write limit never stops it
print("flooding", flush=True)
burst = b"\x89\x80\x00\x00\x00\x00" * 8192
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    sock.sendall(burst)
"""


@pytest.mark.parametrize("factory", LOOPS)
def test_ping_flood_does_not_stall_another_connection(factory: Any, certs: tuple[ssl.SSLContext, str]) -> None:
    """A client (its own process) flooding empty pings and reading the pongs; meanwhile another connection's
    1 KiB echoes must keep coming back (they took 1.6-5 s while the whole flood was handled in one go)."""
    ctx, ca_file = certs
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(ca_file)
    seconds = 3.0

    async def body() -> list[float]:
        async with uringws.serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None, ping_interval=None) as server:
            port = server.sockets[0].getsockname()[1]
            flooder = await asyncio.create_subprocess_exec(
                sys.executable, "-c", FLOODER, str(port), ca_file, str(seconds), stdout=subprocess.PIPE)
            try:
                assert flooder.stdout is not None
                async with uringws.connect(f"wss://localhost:{port}/", ssl=client_ctx, compression=None,
                                           ping_interval=None) as ws:
                    assert await asyncio.wait_for(flooder.stdout.readline(), 30) == b"flooding\n"
                    await asyncio.sleep(0.3)
                    payload = os.urandom(1024)
                    rtts = []
                    deadline = time.monotonic() + seconds - 0.8
                    while time.monotonic() < deadline:
                        t0 = time.monotonic()
                        await ws.send(payload)
                        assert await ws.recv() == payload
                        rtts.append(time.monotonic() - t0)
                        await asyncio.sleep(0.005)
                    return rtts
            finally:
                if flooder.returncode is None:
                    flooder.kill()
                await flooder.wait()

    rtts = run(body(), factory)
    assert rtts
    # Typically tens of ms on a loaded 2-core machine; the bound leaves a wide margin.
    assert max(rtts) < 1.0, (max(rtts), len(rtts))


@pytest.mark.parametrize("sending", [True, False], ids=["slow-upload", "silent"])
def test_keepalive_keeps_a_peer_that_is_sending_us_a_large_frame(sending: bool) -> None:
    """The peer's pong waits behind a large frame it is still sending (a control frame cannot interrupt a frame): as
    long as more of that frame arrives within each ping_timeout the connection stays open; a peer that sends
    nothing more is closed with 1011 after ping_timeout, the frame half-received."""

    async def body() -> None:
        config = WSConfig(compression=None, ping_interval=0.05, ping_timeout=0.1)
        conn = Connection(Side.SERVER, config)
        transport = Transport(conn)
        conn.transport = transport
        conn.proto = Protocol(Side.SERVER, message_sink=conn._first_message)  # as the opening handshake wires it
        size = 1 << 20
        mask = os.urandom(4)
        conn.data_received(b"\x82" + bytes([0x80 | 127]) + struct.pack("!Q", size) + mask)  # header only
        conn._keepalive_task = asyncio.get_running_loop().create_task(conn._keepalive())
        for _ in range(30):  # 0.6 s: six timeouts
            await asyncio.sleep(0.02)
            if any(frame[:1] == b"\x88" for frame in transport.writes):
                break  # closed (the transport double cannot be closed: nothing more to feed)
            if sending:
                conn.data_received(os.urandom(1000))  # more of the frame's payload, a little all the time
        closed = [frame for frame in transport.writes if frame[:1] == b"\x88"]
        if sending:
            assert not closed, transport.writes[-3:]
            assert conn.proto.bytes_in > 20_000
        else:
            assert closed and struct.unpack("!H", closed[0][2:4])[0] == 1011, transport.writes[-3:]
        conn._keepalive_task.cancel()

    run(body())


@pytest.mark.parametrize("reading", [True, False], ids=["slow-reader", "dead"])
def test_keepalive_keeps_a_peer_that_reads_our_queued_data(reading: bool) -> None:
    """The pong waits behind our data at a slow reader: as long as it takes more of that data within each
    ping_timeout the connection stays open; a peer that takes nothing is closed with 1011 after ping_timeout."""

    async def body() -> None:
        config = WSConfig(write_limit_high=HIGH, write_limit_low=LOW, compression=None, ping_interval=0.05,
                          ping_timeout=0.1)
        conn = Connection(Side.SERVER, config)
        transport = Transport(conn)
        conn.transport = transport
        conn.proto = Protocol(Side.SERVER, message_sink=conn._first_message)  # as the opening handshake wires it
        transport.queued = 10**6  # a lot queued ahead of the ping
        conn._keepalive_task = asyncio.get_running_loop().create_task(conn._keepalive())
        for _ in range(30):  # 0.6 s: six timeouts
            await asyncio.sleep(0.02)
            if reading:
                transport.queued -= 1000  # the peer reads a little all the time
        closed = any(frame[:1] == b"\x88" for frame in transport.writes)
        assert closed is not reading, transport.writes[-3:]
        conn._keepalive_task.cancel()

    run(body())
