"""HTTP Basic authentication of the opening handshake: our client and websockets' client against basic_auth."""

from __future__ import annotations

import asyncio
import base64

import pytest
import websockets.asyncio.client
import websockets.exceptions

from uringws.auth import basic_auth, parse_basic_authorization
from uringws.client import connect
from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import InvalidStatus

from .test_ws_api import run


async def whoami(ws: Connection) -> None:
    await ws.send(ws.username)  # type: ignore[attr-defined]


def header(raw: str) -> str:
    return "Basic " + base64.b64encode(raw.encode()).decode()


def test_parse_basic_authorization() -> None:
    assert parse_basic_authorization(header("alice:pa:ss")) == ("alice", "pa:ss")
    assert parse_basic_authorization("basic " + base64.b64encode(b"\xc3\xa9:x").decode()) == ("é", "x")
    for bad in (
        "Bearer abc",
        "Basic",
        "Basic !!!",
        header("no-colon"),
        "Basic " + base64.b64encode(b"\xff:x").decode(),
    ):
        with pytest.raises(ValueError):
            parse_basic_authorization(bad)


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        basic_auth()
    with pytest.raises(TypeError):
        basic_auth(credentials=("a", "b"), check_credentials=lambda u, p: True)
    with pytest.raises(TypeError):
        basic_auth(credentials=[("a", "b", "c")])  # type: ignore[list-item]


@run
async def test_credentials_table() -> None:
    auth = basic_auth(realm='my "room"', credentials=[("alice", "s3cret"), ("bob", "hunter2")])
    async with serve(whoami, "127.0.0.1", 0, process_request=auth) as server:
        port = server.port_bound
        async with connect(f"ws://alice:s3cret@127.0.0.1:{port}/") as ws:
            assert await ws.recv() == "alice"
        async with connect(f"ws://bob:hunter2@127.0.0.1:{port}/") as ws:
            assert await ws.recv() == "bob"
        for uri in (
            f"ws://127.0.0.1:{port}/",  # no credentials
            f"ws://alice:wrong@127.0.0.1:{port}/",
            f"ws://carol:s3cret@127.0.0.1:{port}/",  # unknown user with someone's password
            f"ws://alice:s3cret2@127.0.0.1:{port}/",
        ):
            with pytest.raises(InvalidStatus) as info:
                await connect(uri)
            assert info.value.status == 401
            assert ("www-authenticate", 'Basic realm="my \\"room\\"", charset="UTF-8"') in info.value.headers
        # websockets' client, the same answers.
        async with websockets.asyncio.client.connect(f"ws://alice:s3cret@127.0.0.1:{port}/") as peer:
            assert await peer.recv() == "alice"
        with pytest.raises(websockets.exceptions.InvalidStatus) as ws_info:
            await websockets.asyncio.client.connect(f"ws://alice:nope@127.0.0.1:{port}/")
        assert ws_info.value.response.status_code == 401


@run
async def test_check_credentials_may_be_async() -> None:
    async def check(username: str, password: str) -> bool:
        await asyncio.sleep(0)
        return password == username[::-1]

    async with serve(whoami, "127.0.0.1", 0, process_request=basic_auth(check_credentials=check)) as server:
        async with connect(f"ws://abc:cba@127.0.0.1:{server.port_bound}/") as ws:
            assert await ws.recv() == "abc"
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://abc:abc@127.0.0.1:{server.port_bound}/")
        assert info.value.status == 401
