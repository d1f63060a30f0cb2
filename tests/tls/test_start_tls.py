"""start_tls() with uringws TLS against the stdlib loop's (asyncio.sslproto): same argument checks, same errors,
the connection left as it was when the call is refused; TLS over a TLS transport works as on asyncio."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import pytest

import uringws
from uringws.ring import probe
from uringws.tls.loopmixin import TLSSelectorEventLoop
from uringws.tls.protocol import TLSTransport

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stdlib": asyncio.SelectorEventLoop,
    "selector": TLSSelectorEventLoop,
    "ring": uringws.new_event_loop,
}


def _run(kind: str, coro: Any) -> Any:
    if kind == "ring" and not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
        return runner.run(asyncio.wait_for(coro, 20))


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if not self.got.done():
            self.got.set_result(None)


class NotUpgradable(asyncio.Transport):
    """A transport that does not say it can be upgraded (no _start_tls_compatible)."""


def _args(case: str, tr: Any, ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[Any, ...]:
    if case == "not-a-context":
        return tr, ctx.wrap_bio
    if case == "no-context":
        return tr, None
    if case == "server-context-on-client-side":
        return tr, server_ctx
    if case == "unknown-transport":
        return NotUpgradable(), ctx
    raise AssertionError(case)


CASES = ["not-a-context", "no-context", "server-context-on-client-side", "unknown-transport", "datagram"]


async def _refused(case: str, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> tuple[str, str, bytes]:
    """start_tls() with a bad argument: the error's type and message (transport reprs cut), and whether the
    plain connection still works afterwards (it must: nothing was touched)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tr, proto = await loop.create_connection(Collect, "127.0.0.1", port)
    udp = None
    try:
        if case == "datagram":
            udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            args: tuple[Any, ...] = (udp, client_ctx)
        else:
            args = _args(case, tr, client_ctx, server_ctx)
        try:
            await loop.start_tls(args[0], proto, args[1], server_hostname="localhost")
        except (TypeError, ValueError, ssl.SSLError) as exc:
            err = (type(exc).__name__, str(exc).split(" <")[0].split(" object at")[0])
        else:
            err = ("no error", "")
        tr.write(b"still plain")
        await asyncio.wait_for(proto.got, 5)
        return err[0], err[1], bytes(proto.data)
    finally:
        if udp is not None:
            udp.close()
        tr.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["selector", "ring"])
def test_start_tls_refuses_like_asyncio(
    kind: str, case: str, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    ref = _run("stdlib", _refused(case, client_ctx, server_ctx))
    ours = _run(kind, _refused(case, client_ctx, server_ctx))
    assert ref[0] != "no error"
    assert ours == ref


def test_start_tls_over_tls(run: Any, loop_kind: str, client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext) -> None:
    """TLS inside TLS (a TLS transport is upgradable, as asyncio's is): the inner session echoes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inner_ready: asyncio.Future[None] = loop.create_future()

        class Upgrader(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                assert data == b"STARTTLS"
                self.transport.write(b"OK")
                self.task = loop.create_task(self.upgrade())

            async def upgrade(self) -> None:
                echo = Echo()
                inner = await loop.start_tls(self.transport, echo, server_ctx, server_side=True)
                echo.connection_made(inner)
                inner_ready.set_result(None)

        server = await loop.create_server(Upgrader, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        tr, proto = await loop.create_connection(
            Collect, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert isinstance(tr, TLSTransport)
        tr.write(b"STARTTLS")
        await proto.got
        inner = await loop.start_tls(tr, proto, client_ctx, server_hostname="localhost")
        assert inner.get_extra_info("ssl_object") is not tr.get_extra_info("ssl_object")
        await inner_ready
        proto.data.clear()
        proto.got = loop.create_future()
        inner.write(b"inside two layers")
        while len(proto.data) < 17:
            await asyncio.wait_for(proto.got, 5)
            proto.got = loop.create_future()
        assert bytes(proto.data) == b"inside two layers"
        inner.close()
        server.close()
        await server.wait_closed()

    run(main())

