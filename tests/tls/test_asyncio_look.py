"""A uringws TLS transport looks like asyncio's to code that inspects it: get_extra_info() answers and the
handshake timeout's exception, compared with the stdlib loop's own TLS (asyncio.sslproto)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

import uringws
from uringws.ring import probe
from uringws.tls.loopmixin import TLSSelectorEventLoop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stdlib": asyncio.SelectorEventLoop,
    "selector": TLSSelectorEventLoop,
    "ring": uringws.new_event_loop,
}
KEYS = ["ssl_object", "sslcontext", "peercert", "cipher", "compression", "socket", "peername", "sockname", "nope"]


def _run(kind: str, coro: Any) -> Any:
    if kind == "ring" and not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
        return runner.run(asyncio.wait_for(coro, 20))


def _describe(transport: asyncio.BaseTransport, ctxs: tuple[ssl.SSLContext, ...]) -> dict[str, Any]:
    """Each key's answer, reduced to what does not vary between connections (types, identities)."""
    out: dict[str, Any] = {}
    for key in KEYS:
        value = transport.get_extra_info(key, "default")
        if key == "ssl_object":
            # An ssl.SSLObject (the compiled engine's is a subclass), of the right side.
            out[key] = (isinstance(value, ssl.SSLObject), getattr(value, "server_side", None))
        elif key == "sslcontext":
            out[key] = ctxs.index(value) if value in ctxs else value
        elif key == "socket":
            out[key] = (type(value).__name__, getattr(value, "family", None))
        elif key in ("peername", "sockname"):
            out[key] = (type(value).__name__, len(value))
        elif key == "peercert":
            out[key] = sorted(value) if isinstance(value, dict) else value
        else:
            out[key] = value
    return out


async def _extras(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[dict[str, Any], dict[str, Any]]:
    loop = asyncio.get_running_loop()
    ctxs = (server_ctx, client_ctx)
    seen: asyncio.Future[dict[str, Any]] = loop.create_future()

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            seen.set_result(_describe(transport, ctxs))

    server = await loop.create_server(Server, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    tr, _ = await loop.create_connection(
        asyncio.Protocol, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
    )
    client = _describe(tr, ctxs)
    srv = await seen
    tr.close()
    server.close()
    await server.wait_closed()
    return client, srv


@pytest.mark.parametrize("kind", ["selector", "ring"])
def test_get_extra_info_matches_asyncio(kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    ref = _run("stdlib", _extras(server_ctx, client_ctx))
    ours = _run(kind, _extras(server_ctx, client_ctx))
    assert ref[0]["ssl_object"] == (True, False)  # the comparison compares something
    assert ref[0]["peercert"] and ref[0]["cipher"]
    assert ours == ref


async def _handshake_timeout() -> BaseException:
    """A client against a server that accepts and never answers."""
    loop = asyncio.get_running_loop()
    lsock = socket.create_server(("127.0.0.1", 0))
    ctx = ssl.create_default_context()
    try:
        await loop.create_connection(
            asyncio.Protocol, "127.0.0.1", lsock.getsockname()[1], ssl=ctx, server_hostname="localhost",
            ssl_handshake_timeout=0.3,
        )
    except BaseException as exc:  # noqa: BLE001 - compared by the test
        return exc
    finally:
        lsock.close()
    raise AssertionError("the handshake with a silent server succeeded")


@pytest.mark.parametrize("kind", ["selector", "ring"])
def test_handshake_timeout_reads_like_asyncio(kind: str) -> None:
    ref = _run("stdlib", _handshake_timeout())
    ours = _run(kind, _handshake_timeout())
    assert "0.3 seconds" in str(ref)
    assert (type(ours), str(ours)) == (type(ref), str(ref))
