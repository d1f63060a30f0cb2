"""Porting a websockets 17 program: every Python example of docs/websockets.md runs, and each name that page calls
"same" works as a websockets user writes it, against the websockets library as the peer where one is involved."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions
import websockets.http11
import websockets.sync.server

import uringws
import uringws.sync
from uringws import (
    ConcurrencyError,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
    Request,
    Response,
    WebSocketException,
    broadcast,
    connect,
    serve,
)
from uringws.ws.connection import Connection
from uringws.ws.exceptions import InvalidState

from .test_ws_api import run

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "websockets.md"


async def _echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


def _port(server: object) -> int:
    return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]


# -- the page ----------------------------------------------------------------------------------------------------


def _examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_the_page_has_examples() -> None:
    assert len(_examples()) >= 5


@pytest.mark.parametrize("index", range(len(_examples())))
def test_page_example_runs(index: int, tmp_path: Path) -> None:
    """Each ```python block of the page, run on its own as a user would paste it (so the page cannot rot)."""
    script = tmp_path / f"example_{index}.py"
    script.write_text(_examples()[index])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, f"example {index} failed:\n{_examples()[index]}\n{result.stderr}"


def test_exceptions_have_websockets_names_and_bases() -> None:
    """``from uringws import X`` for each exception of the page, with the class relations websockets has."""
    for name in [
        "ConcurrencyError",
        "ConnectionClosed",
        "ConnectionClosedError",
        "ConnectionClosedOK",
        "InvalidHandshake",
        "InvalidState",
        "InvalidStatus",
        "InvalidURI",
        "NegotiationError",
        "PayloadTooBig",
        "ProtocolError",
        "ProxyError",
        "SecurityError",
        "WebSocketException",
    ]:
        ours, theirs = getattr(uringws, name), getattr(websockets.exceptions, name)
        assert name in uringws.__all__
        for base in ("WebSocketException", "InvalidHandshake", "ConnectionClosed"):
            assert issubclass(ours, getattr(uringws, base)) == issubclass(
                theirs, getattr(websockets.exceptions, base)
            ), (name, base)
        assert issubclass(ours, RuntimeError) == issubclass(theirs, RuntimeError), name
    assert WebSocketException is uringws.WebSocketError


# -- server ------------------------------------------------------------------------------------------------------


@run
async def test_respond_with_text_answers_a_websockets_client() -> None:
    refused: list[Exception] = []

    async def process_request(connection: Connection, request: Request) -> Response:
        try:
            connection.respond(403, "text", b"body")  # a text and a body: which one was meant?
        except TypeError as exc:
            refused.append(exc)
        return connection.respond(403, "not for you\n")

    async with serve(_echo, "127.0.0.1", 0, process_request=process_request) as server:
        with pytest.raises(websockets.exceptions.InvalidStatus) as caught:
            await websockets.asyncio.client.connect(f"ws://127.0.0.1:{_port(server)}/")
        response = caught.value.response
        assert response.status_code == 403
        assert response.body == b"not for you\n"
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert len(refused) == 1


@run
async def test_invalid_status_response_from_a_websockets_server() -> None:
    def process_request(
        connection: websockets.asyncio.server.ServerConnection, request: websockets.http11.Request
    ) -> websockets.http11.Response:
        return connection.respond(404, "no such room\n")

    async def wait(ws: websockets.asyncio.server.ServerConnection) -> None:
        await ws.wait_closed()

    async with websockets.asyncio.server.serve(wait, "127.0.0.1", 0, process_request=process_request) as wserver:
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{_port(wserver)}/")
        response = caught.value.response
        assert (response.status_code, response.reason_phrase) == (404, "Not Found")
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.body == b"no such room\n"
        assert caught.value.status == 404  # uringws's own spelling stays


@run
async def test_server_is_serving_get_loop_start_serving() -> None:
    server = serve(_echo, "127.0.0.1", 0)
    assert not server.is_serving()
    with pytest.raises(RuntimeError):
        server.get_loop()
    await server.start_serving()
    assert server.is_serving()
    assert server.get_loop() is asyncio.get_running_loop()
    server.close()
    assert not server.is_serving()
    await server.wait_closed()


@run
async def test_broadcast_text_forces_the_frame_type_for_websockets_clients() -> None:
    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as server:
        uri = f"ws://127.0.0.1:{_port(server)}/"
        async with (
            websockets.asyncio.client.connect(uri, compression=None) as plain,
            websockets.asyncio.client.connect(uri) as deflated,
        ):
            while len(server.connections) < 2 or any(c.proto is None for c in server.connections):
                await asyncio.sleep(0.01)
            assert broadcast(server.connections, b'{"a": 1}', text=True) == 2
            assert broadcast(server.connections, "raw", text=False) == 2
            assert broadcast(server.connections, "as usual") == 2
            for client in (plain, deflated):
                assert await client.recv() == '{"a": 1}'
                assert await client.recv() == b"raw"
                assert await client.recv() == "as usual"


# -- client ------------------------------------------------------------------------------------------------------


@run
async def test_user_agent_header_and_additional_headers_dict_reach_a_websockets_server() -> None:
    seen: list[object] = []

    async def handler(ws: websockets.asyncio.server.ServerConnection) -> None:
        seen.append(ws.request.headers)  # type: ignore[union-attr]
        await ws.wait_closed()

    async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0) as wserver:
        uri = f"ws://127.0.0.1:{_port(wserver)}/"
        headers = {"X-Token": "abc", "X-Trace": "1"}
        async with connect(uri, user_agent_header="ported/1.0", additional_headers=headers):
            pass
        async with connect(uri, user_agent_header=None, additional_headers=None):
            pass
    first, second = seen
    assert first["User-Agent"] == "ported/1.0"  # type: ignore[index]
    assert (first["X-Token"], first["X-Trace"]) == ("abc", "1")  # type: ignore[index]
    assert "User-Agent" not in second  # type: ignore[operator]


@run
async def test_reconnect_delays_come_from_the_given_generator() -> None:
    with socket.socket() as probe:  # a free port, nothing listening on it yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    asked: list[float] = []
    server: uringws.Server | None = None

    def delays() -> Iterator[float]:
        while True:
            asked.append(0.01)
            yield 0.01

    async def start_after_two_failures() -> None:
        nonlocal server
        while len(asked) < 2:
            await asyncio.sleep(0.005)
        server = await serve(_echo, "127.0.0.1", port)

    starter = asyncio.create_task(start_after_two_failures())
    try:
        client = connect(f"ws://127.0.0.1:{port}/", reconnect_delays=delays, open_timeout=1)
        async for ws in client:
            await ws.send("back")
            assert await ws.recv() == "back"
            break
        assert len(asked) >= 2
    finally:
        starter.cancel()  # still waiting if the delays were not asked for
        if server is not None:
            server.close()
            await server.wait_closed()


# -- connection --------------------------------------------------------------------------------------------------


@run
async def test_send_text_forces_the_frame_type_for_a_websockets_server() -> None:
    received: list[object] = []

    async def handler(ws: websockets.asyncio.server.ServerConnection) -> None:
        async for message in ws:
            received.append(message)

    async def chunks() -> AsyncIterator[str]:
        for part in ("as", "ync"):
            yield part

    async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0) as wserver:
        async with connect(f"ws://127.0.0.1:{_port(wserver)}/") as ws:
            await ws.send(json.dumps({"k": "é"}).encode(), text=True)
            await ws.send("é", text=False)
            await ws.send([b"fr", "ag"], text=True)
            await ws.send(["fr", b"ag"], text=False)
            await ws.send(chunks(), text=False)
            await ws.send(b"bin", text=None)
            await ws.send("text")
    assert received == ['{"k": "\\u00e9"}', "é".encode(), "frag", b"frag", b"async", b"bin", "text"]


@run
async def test_our_server_send_text_reaches_a_websockets_client() -> None:
    async def handler(ws: Connection) -> None:
        await ws.send("é".encode(), text=True)
        await ws.send("é", text=False)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        async with websockets.asyncio.client.connect(f"ws://127.0.0.1:{_port(server)}/") as client:
            assert await client.recv() == "é"
            assert await client.recv() == "é".encode()


@run
async def test_concurrency_error_on_two_receivers_and_a_repeated_ping() -> None:
    async with websockets.asyncio.server.serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as wserver:
        async with connect(f"ws://127.0.0.1:{_port(wserver)}/") as ws:
            first = asyncio.create_task(ws.recv())
            await asyncio.sleep(0)
            with pytest.raises(ConcurrencyError):
                await ws.recv()
            with pytest.raises(RuntimeError):  # what code written before ConcurrencyError catches
                await ws.recv()
            first.cancel()
            waiter = await ws.ping(b"same")
            with pytest.raises(ConcurrencyError):
                await ws.ping(b"same")
            await waiter


@run
async def test_id_and_latency() -> None:
    async with websockets.asyncio.server.serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as wserver:
        uri = f"ws://127.0.0.1:{_port(wserver)}/"
        async with connect(uri) as ws, connect(uri, ping_interval=0.05) as keepalive:
            assert isinstance(ws.id, uuid.UUID) and ws.id.version == 4
            assert ws.id == ws.id != keepalive.id
            assert ws.latency == 0
            latency = await (await ws.ping())
            assert ws.latency == latency > 0
            while keepalive.latency == 0:  # the keepalive's pings measure it too
                await asyncio.sleep(0.01)


@run
async def test_close_exc_and_closed_frames_match_websockets() -> None:
    """Closed by us, then by the peer: ``rcvd``, ``sent`` and ``rcvd_then_sent`` as websockets reports them."""

    async def close_first(ws: websockets.asyncio.server.ServerConnection) -> None:
        await ws.close(4000, "server first")

    async with websockets.asyncio.server.serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0) as wserver:
        async with connect(f"ws://127.0.0.1:{_port(wserver)}/") as ws:
            with pytest.raises(InvalidState):
                ws.close_exc  # noqa: B018 - the property raises while open
            await ws.close(1000, "bye")
        exc = ws.close_exc
        assert isinstance(exc, ConnectionClosedOK)
        assert (exc.sent.code, exc.sent.reason, exc.rcvd.code, exc.rcvd_then_sent) == (1000, "bye", 1000, False)

    async with websockets.asyncio.server.serve(close_first, "127.0.0.1", 0) as wserver:
        async with connect(f"ws://127.0.0.1:{_port(wserver)}/") as ws:
            with pytest.raises(ConnectionClosedError) as caught:
                await ws.recv()
        exc = caught.value
        assert (exc.rcvd.code, exc.rcvd.reason, exc.rcvd_then_sent) == (4000, "server first", True)
        assert exc.sent.code == 4000
        assert (exc.code, exc.reason) == (4000, "server first")  # the older spelling stays


def test_sync_client_send_text_against_websockets_threading_server() -> None:
    """``uringws.sync.connect`` takes ``send(..., text=)`` as websockets' threading client does."""
    received: list[object] = []

    def handler(ws: websockets.sync.server.ServerConnection) -> None:
        for message in ws:
            received.append(message)

    with websockets.sync.server.serve(handler, "127.0.0.1", 0) as wserver:
        thread = threading.Thread(target=wserver.serve_forever, daemon=True)
        thread.start()
        with uringws.sync.connect(f"ws://127.0.0.1:{wserver.socket.getsockname()[1]}/") as ws:
            ws.send(b'{"k": 1}', text=True)
            ws.send("raw", text=False)
        while len(received) < 2:
            time.sleep(0.01)
        wserver.shutdown()
        thread.join(10)
    assert received == ['{"k": 1}', b"raw"]
