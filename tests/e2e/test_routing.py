"""Routing by path: parameters and their converters, the not-found hook, ``route()``; interop with websockets."""

from __future__ import annotations

from typing import Any

import pytest
import websockets.asyncio.client
import websockets.exceptions

from uringws.client import connect
from uringws.routing import Router, route
from uringws.server import Server
from uringws.ws.connection import Connection
from uringws.ws.exceptions import InvalidStatus
from uringws.ws.handshake import Request

from .test_ws_api import run


def url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port_bound}{path}"


async def report(ws: Connection, **params: Any) -> None:
    """Send back the parameters the handler got, with their types, and what ws.path_params holds."""
    got = sorted((k, type(v).__name__, v) for k, v in params.items())
    await ws.send(f"{got} {ws.path_params == params}")


async def plain(ws: Connection) -> None:
    await ws.send("plain")


def test_matching_and_converters() -> None:
    router = Router(
        {
            "/": plain,
            "/rooms/{name}": report,
            "/users/{id:int}": report,
            "/files/{rest:path}": report,
            "/a/{x}/b/{y:int}": report,
            "/dots.{ext}": report,
        }
    )
    assert router.match("/") == (plain, {})
    assert router.match("/rooms/lobby?x=1") == (report, {"name": "lobby"})
    assert router.match("/rooms/lobby/more") is None  # {name} is one segment
    assert router.match("/rooms/") is None
    assert router.match("/users/42") == (report, {"id": 42})
    assert router.match("/users/4x2") is None
    assert router.match("/files/a/b/c.txt") == (report, {"rest": "a/b/c.txt"})
    assert router.match("/a/p/b/7") == (report, {"x": "p", "y": 7})
    assert router.match("/dots.json") == (report, {"ext": "json"})
    assert router.match("/dotsxjson") is None  # the literal part is escaped, not a regex


@pytest.mark.parametrize("bad", ["rooms/{name}", "/a/{x}/{x}", "/a/{x:float}", "/a/{x", "/a/{1x}"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="route"):
        Router({bad: plain})


@run
async def test_route_serves_parameters_and_404() -> None:
    async with route({"/rooms/{name}": report, "/users/{id:int}": report, "/": plain}, "127.0.0.1", 0) as server:
        async with connect(url(server, "/rooms/lobby")) as ws:
            assert await ws.recv() == "[('name', 'str', 'lobby')] True"
        async with connect(url(server, "/users/7?tab=x")) as ws:
            assert await ws.recv() == "[('id', 'int', 7)] True"
        async with connect(url(server, "/")) as ws:
            assert await ws.recv() == "plain"
        for missing in ("/users/x", "/rooms/a/b", "/nope"):
            with pytest.raises(InvalidStatus) as info:
                await connect(url(server, missing))
            assert info.value.status == 404
        # A websockets client sees the same 404.
        with pytest.raises(websockets.exceptions.InvalidStatus) as ws_info:
            await websockets.asyncio.client.connect(url(server, "/nope"))
        assert ws_info.value.response.status_code == 404


@run
async def test_not_found_hook() -> None:
    seen: list[str] = []

    async def gone(ws: Connection, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        seen.append(request.path)
        return 410, [("X-Why", "moved")], b"gone\n"

    async with route({"/here": plain}, "127.0.0.1", 0, not_found=gone) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(url(server, "/there?q=1"))
        assert info.value.status == 410 and ("x-why", "moved") in info.value.headers
        async with connect(url(server, "/here")) as ws:
            assert await ws.recv() == "plain"
    assert seen == ["/there?q=1"]


def test_route_refuses_its_own_process_request() -> None:
    with pytest.raises(TypeError, match="process_request"):
        route({"/": plain}, process_request=lambda ws, request: None)
