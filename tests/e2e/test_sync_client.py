"""The blocking client, ``uringws.sync.connect``, against websockets' threading server (a real peer) and ours."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
import trustme
import websockets.sync.server
from websockets.sync.server import ServerConnection as WSServerConnection

from uringws.server import serve
from uringws.sync import connect
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from uringws.ws.protocol import State


def _sync_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "uringws-sync")


@pytest.fixture
def websockets_server() -> Iterator[str]:
    """websockets' threading server: echoes, except 'close' (closes 1000) and 'abort' (drops TCP), 'slow'."""

    def handler(ws: WSServerConnection) -> None:
        for message in ws:
            if message == "close":
                ws.close(1000, "bye")
                return
            if message == "abort":
                ws.socket.close()
                return
            if message == "slow":
                time.sleep(0.5)
                ws.send("late")
                continue
            ws.send(message)

    with websockets.sync.server.serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        server.shutdown()
        thread.join(5)


def test_echo_text_binary_fragments_and_iteration(websockets_server: str) -> None:
    before = _sync_threads()
    with connect(websockets_server) as ws:
        assert _sync_threads() == before + 1
        assert ws.state is State.OPEN
        ws.send("héllo")
        assert ws.recv(timeout=5) == "héllo"
        ws.send(b"\x00\x01" * 70_000)
        assert ws.recv(timeout=5) == b"\x00\x01" * 70_000
        ws.send(["frag", "ments"])
        assert ws.recv(timeout=5) == "fragments"
        ws.send("close")
        assert list(ws) == []  # the peer closed with 1000: iteration ends quietly
        assert ws.close_code == 1000 and ws.close_reason == "bye"
    assert _sync_threads() == before  # the connection's loop thread is gone


def test_recv_timeout_loses_nothing(websockets_server: str) -> None:
    with connect(websockets_server) as ws:
        ws.send("slow")
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)
        assert ws.recv(timeout=5) == "late"


def test_ping_event_is_set_by_the_pong(websockets_server: str) -> None:
    with connect(websockets_server) as ws:
        pong = ws.ping()
        assert pong.wait(5)


def test_abnormal_close_raises_from_recv_and_iteration(websockets_server: str) -> None:
    with connect(websockets_server) as ws:
        ws.send("abort")
        with pytest.raises(ConnectionClosedError) as info:
            for _ in ws:
                pass
        assert info.value.code == 1006
        with pytest.raises(ConnectionClosedError):
            ws.send("after")
    ws.close()  # a second close is a no-op


def test_handshake_errors_raise_and_leave_no_thread() -> None:
    before = _sync_threads()
    with socket_that_refuses() as uri, pytest.raises(OSError):
        connect(uri, open_timeout=2)
    assert _sync_threads() == before


class socket_that_refuses:
    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    def __exit__(self, *exc: object) -> None:
        pass


def test_against_our_tls_server_with_a_rejection() -> None:
    """Our own server, over TLS, in a thread of its own: a 403 raises InvalidStatus; a good path echoes."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    port: list[int] = []

    async def handler(ws: Connection) -> None:
        async for message in ws:
            await ws.send(message)

    def forbid(ws: Connection, request: object) -> tuple[int, list[tuple[str, str]], bytes] | None:
        return (403, [], b"no\n") if ws.request is not None and ws.path == "/private" else None

    async def main() -> None:
        stop.append(asyncio.Event())
        async with serve(handler, "127.0.0.1", 0, ssl=server_ctx, process_request=forbid) as server:
            port.append(server.port_bound)
            ready.set()
            await stop[0].wait()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        with pytest.raises(InvalidStatus) as info:
            connect(f"wss://localhost:{port[0]}/private", ssl=client_ctx)
        assert info.value.status == 403
        with connect(f"wss://localhost:{port[0]}/", ssl=client_ctx) as ws:
            ws.send("over tls")
            assert ws.recv(timeout=5) == "over tls"
        with pytest.raises(ConnectionClosedOK):
            ws.recv()
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()
