"""``broadcast()``'s skip policy: who gets the frame, who is skipped, and what the return value counts.

Two halves. The first drives real ``Connection``/``Protocol`` objects over a recording transport with asyncio's
flow-control contract, so every skip rule (not open, transport closing, mid-fragment, slow consumer above the
high-water mark, and the drained-below-it case that must NOT be skipped) is checked exactly and fast. The second
runs the benchmark's configuration end to end — TLS, uringws' loops (io_uring, epoll) and the stdlib one — with a
peer that stops reading and a connection whose transport was aborted, and checks the bytes each peer receives.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import trustme

from uringws import new_event_loop
from uringws.client import connect
from uringws.server import broadcast, serve
from uringws.ws.config import WSConfig
from uringws.ws.connection import Connection
from uringws.ws.frames import parse_frame, serialize_frame
from uringws.ws.protocol import Protocol, Side, State

T = TypeVar("T")

HIGH, LOW = 1000, 250


def run_on(factory: Callable[[], asyncio.AbstractEventLoop] | None, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh loop from ``factory`` (None: the stdlib loop), bounded to 30 s."""

    async def bounded() -> T:
        async with asyncio.timeout(30):
            return await coro

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bounded())


# -- the policy, exactly, over a recording transport ------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    """Records writes; pretends ``queued`` bytes wait in it, with asyncio's pause/resume contract."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self.conn = conn
        self.writes: list[bytes] = []
        self.queued = 0
        self.closing = False
        self.paused = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))  # as if the kernel took it at once: `queued` stays what the test set

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.queued

    def pause_reading(self) -> None:
        self.reading = False  # the connection stops reading while our buffer is above the high-water mark

    def resume_reading(self) -> None:
        self.reading = True

    def set_queued(self, n: int) -> None:
        """Like a real transport: pause_writing() above the high-water mark, resume_writing() at the low one."""
        self.queued = n
        if n > HIGH and not self.paused:
            self.paused = True
            self.conn.pause_writing()
        elif n <= LOW and self.paused:
            self.paused = False
            self.conn.resume_writing()


def make_conn(side: Side = Side.SERVER, opened: bool = True) -> tuple[Connection, RecordingTransport]:
    """An open connection (handshake done) on a recording transport; ``opened=False``: handshake pending."""
    config = WSConfig(write_limit_high=HIGH, write_limit_low=LOW, compression=None)
    conn = Connection(side, config)
    transport = RecordingTransport(conn)
    conn.transport = transport
    if opened:
        conn.proto = Protocol(side)
    return conn, transport


def received(transport: RecordingTransport) -> list[tuple[int, bytes]]:
    """The (opcode, unmasked payload) of every frame written, parsed back from the bytes."""
    data = b"".join(transport.writes)
    masked = transport.conn.side is Side.CLIENT  # what the peer's parser demands: clients mask, servers don't
    frames = []
    pos = 0
    while pos < len(data):
        parsed = parse_frame(data, pos, masked=masked)
        assert parsed is not None, "a partial frame was written"
        frame, pos = parsed
        assert frame.fin
        frames.append((frame.opcode, frame.payload))
    return frames


def test_skip_rules_and_return_value() -> None:
    async def body() -> None:
        ok1, t_ok1 = make_conn()
        ok2, t_ok2 = make_conn()
        pending, t_pending = make_conn(opened=False)
        closing_state, t_closing_state = make_conn()
        assert closing_state.proto is not None
        closing_state.proto.send_close(1000)
        closing_state.proto.data_to_send()  # the close frame is not what this test looks at
        closing_transport, t_closing_transport = make_conn()  # still OPEN: connection_lost() has not run yet
        t_closing_transport.closing = True
        fragmenting, t_fragmenting = make_conn()
        assert fragmenting.proto is not None
        fragmenting.proto.send_binary(b"first half", fin=False)
        fragmenting.proto.data_to_send()
        slow, t_slow = make_conn()
        t_slow.set_queued(HIGH + 1)
        # Paused above HIGH, then drained to between the marks: still paused, but no longer above HIGH, so the
        # documented policy ("buffers more than write_limit_high") writes to it.
        draining, t_draining = make_conn()
        t_draining.set_queued(HIGH * 4)
        t_draining.set_queued(HIGH)
        assert draining._write_paused

        conns = [ok1, pending, closing_state, closing_transport, fragmenting, slow, draining, ok2]
        assert broadcast(conns, "news") == 3
        assert broadcast(iter(conns), b"\x00\xff") == 3  # any iterable, iterated once
        for t in (t_ok1, t_ok2, t_draining):
            assert received(t) == [(0x1, b"news"), (0x2, b"\x00\xff")]
        for t in (t_pending, t_closing_state, t_closing_transport, t_fragmenting, t_slow):
            assert t.writes == [], "a connection the policy skips was written to"

        # Once the reason is gone, the connection is written to again.
        t_slow.set_queued(LOW)
        fragmenting.proto.send_continuation(b"second half", fin=True)
        fragmenting.proto.data_to_send()
        assert broadcast(conns, b"again") == 5
        assert received(t_slow) == [(0x2, b"again")]
        assert received(t_fragmenting) == [(0x2, b"again")]

    run_on(None, body())


def test_frames_by_side_and_type() -> None:
    async def body() -> None:
        server_conn, t_server = make_conn(Side.SERVER)
        client_conn, t_client = make_conn(Side.CLIENT)
        assert broadcast([server_conn, client_conn], "é" * 200) == 2  # 400 bytes: a 16-bit length
        assert broadcast([server_conn, client_conn], b"raw") == 2
        expected = [(0x1, ("é" * 200).encode()), (0x2, b"raw")]
        assert received(t_server) == expected
        assert received(t_client) == expected
        assert t_server.writes[0] == serialize_frame(0x1, ("é" * 200).encode())
        assert all(w[1] & 0x80 == 0 for w in t_server.writes), "a server must not mask"
        assert all(w[1] & 0x80 for w in t_client.writes), "a client must mask"
        with pytest.raises(TypeError):
            broadcast([server_conn], 42)  # type: ignore[arg-type]

    run_on(None, body())


# -- end to end over TLS, with a peer that stops reading ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {
    "asyncio": None,
    "io_uring": functools.partial(new_event_loop, backend="io_uring"),
    "epoll": functools.partial(new_event_loop, backend="epoll"),
}

FILLER = 1 << 20  # the kernel takes a few 100 KiB of it at once (16 KiB SO_SNDBUF); the rest must queue


# The server wraps TLS itself (uringws.tls, on any loop), so the policy sees the TCP transport's buffer on the
# stdlib loop too; its own TLS layer (asyncio.sslproto) leaves that buffer out of get_write_buffer_size().
@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_tls_slow_consumer_and_aborted_connection_are_skipped(
    loop_name: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    async def body() -> None:
        conns: list[Connection] = []
        all_in = asyncio.Event()

        async def register(ws: Connection) -> None:
            conns.append(ws)
            if len(conns) == 5:
                all_in.set()
            await ws.wait_closed()

        async with serve(
            register, "127.0.0.1", 0, ssl=tls[0], compression=None, sndbuf=16384, close_timeout=1
        ) as server:
            uri = f"wss://127.0.0.1:{server.port_bound}/"
            clients = [await connect(uri, ssl=tls[1], compression=None, max_size=2 * FILLER) for _ in range(5)]
            readers, slow_client, doomed_client = clients[:3], clients[3], clients[4]
            await all_in.wait()
            by_peer = {c.remote_address[1]: c for c in conns}
            slow = by_peer[slow_client.local_address[1]]
            doomed = by_peer[doomed_client.local_address[1]]
            assert slow.transport is not None and doomed.transport is not None

            # The slow consumer stops reading; a big frame then fills its transport above the high-water mark.
            assert slow_client.transport is not None
            slow_client.transport.pause_reading()
            slow.transport.write(serialize_frame(0x2, b"y" * FILLER))
            assert slow._write_paused
            # The doomed connection's transport is closing, but connection_lost() (which ends the protocol's
            # OPEN state) has not run yet: only the transport check can skip it.
            doomed.transport.abort()
            assert doomed.state is State.OPEN and doomed.transport.is_closing()

            assert broadcast(server.connections, "m1") == 3
            assert broadcast(server.connections, b"m2") == 3
            for client in readers:
                assert await client.recv() == "m1"
                assert await client.recv() == b"m2"

            # The slow peer reads again: it gets the filler, and after the server side drains, the next
            # broadcast — never m1 or m2, which it missed rather than queued.
            slow_client.transport.resume_reading()
            assert await slow_client.recv() == b"y" * FILLER
            while slow.transport.get_write_buffer_size() > slow.config.write_limit_high:
                await asyncio.sleep(0.01)
            await doomed.lost
            assert broadcast(server.connections, "m3") == 4  # the aborted one has left server.connections
            for client in [*readers, slow_client]:
                assert await client.recv() == "m3"
            for client in [*readers, slow_client]:
                await client.close()
            await doomed_client.wait_closed()

    run_on(LOOPS[loop_name], body())
