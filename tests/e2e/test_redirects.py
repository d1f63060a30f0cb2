"""Redirects of the opening handshake: followed within a limit, never from wss:// to ws://."""

from __future__ import annotations

import ssl

import pytest
import trustme

from uringws.client import connect
from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import InvalidStatus, SecurityError
from uringws.ws.handshake import Request

from .test_ws_api import run

Answer = tuple[int, list[tuple[str, str]], bytes] | None


async def where(ws: Connection) -> None:
    await ws.send(f"{ws.local_address[1]} {ws.path} {ws.request.headers.get('Authorization') if ws.request else ''}")


@run
async def test_relative_and_cross_server_redirects() -> None:
    seen: list[str] = []

    async with serve(where, "127.0.0.1", 0) as target:
        final = target.port_bound

        def redirect(ws: Connection, request: Request) -> Answer:
            seen.append(request.path)
            if request.path == "/old":
                return 301, [("Location", "/moved?x=1")], b""
            if request.path == "/moved?x=1":
                return 307, [("Location", f"ws://127.0.0.1:{final}/there")], b""
            if request.path == "/http":
                return 302, [("Location", f"http://127.0.0.1:{final}/from-http")], b""
            if request.path == "/nolocation":
                return 302, [], b""
            return None

        async with serve(where, "127.0.0.1", 0, process_request=redirect) as first:
            start = first.port_bound
            async with connect(f"ws://u:p@127.0.0.1:{start}/old") as ws:
                port, path, auth = str(await ws.recv()).split(" ", 2)
            assert (int(port), path) == (final, "/there")
            assert auth == "None"  # credentials are not carried to another server
            assert seen == ["/old", "/moved?x=1"]
            async with connect(f"ws://127.0.0.1:{start}/http") as ws:
                assert str(await ws.recv()).startswith(f"{final} /from-http")
            with pytest.raises(InvalidStatus) as info:
                await connect(f"ws://127.0.0.1:{start}/nolocation")
            assert info.value.status == 302


@run
async def test_same_server_redirect_keeps_credentials() -> None:
    def redirect(ws: Connection, request: Request) -> Answer:
        return (308, [("Location", "/b")], b"") if request.path == "/a" else None

    async with serve(where, "127.0.0.1", 0, process_request=redirect) as server:
        async with connect(f"ws://u:p@127.0.0.1:{server.port_bound}/a") as ws:
            assert str(await ws.recv()).endswith(" /b Basic dTpw")


@run
async def test_redirect_loop_stops_at_the_limit() -> None:
    count = 0

    def loop_forever(ws: Connection, request: Request) -> Answer:
        nonlocal count
        count += 1
        return 302, [("Location", request.path)], b""

    async with serve(where, "127.0.0.1", 0, process_request=loop_forever) as server:
        with pytest.raises(SecurityError, match="more than 3 redirects"):
            await connect(f"ws://127.0.0.1:{server.port_bound}/loop", max_redirects=3)
    assert count == 4


@run
async def test_no_downgrade_from_wss_to_ws() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with serve(where, "127.0.0.1", 0) as plain:

        def downgrade(ws: Connection, request: Request) -> Answer:
            return 302, [("Location", f"ws://localhost:{plain.port_bound}/")], b""

        async with serve(where, "127.0.0.1", 0, ssl=server_ctx, process_request=downgrade) as secure:
            with pytest.raises(SecurityError, match="wss:// to ws://"):
                await connect(f"wss://localhost:{secure.port_bound}/", ssl=client_ctx)
