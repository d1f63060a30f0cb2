"""uringws.metrics: what a library user scrapes from a server of their own (no `uringws serve`)."""

from __future__ import annotations

import asyncio

import pytest

import uringws
from uringws import metrics, new_event_loop
from uringws.client import connect
from uringws.server import Server, broadcast, serve


def samples(server: Server, loop: asyncio.AbstractEventLoop) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.render(server, loop).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_messages_bytes_close_codes_and_broadcast(compression: str | None) -> None:
    room: set[object] = set()

    async def handler(ws: object) -> None:
        room.add(ws)
        async for message in ws:  # type: ignore[attr-defined]
            if message == "all":
                broadcast(room, "to everyone")
            else:
                await ws.send(message)  # type: ignore[attr-defined]

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
            uri = f"ws://127.0.0.1:{server.port_bound}/"
            sent_before = metrics.broadcast_stats.messages
            a = await connect(uri, compression=compression)
            b = await connect(uri, compression=compression)
            for i in range(3):
                await a.send(f"hello {i}")
                assert await a.recv() == f"hello {i}"
            await b.send(b"x" * 100_000)
            assert await b.recv() == b"x" * 100_000
            await a.send("all")
            assert await a.recv() == await b.recv() == "to everyone"
            live = samples(server, asyncio.get_running_loop())
            assert live["uringws_connections_open"] == 2
            assert live["uringws_messages_received_total"] == 5
            # Uncompressed, broadcast() writes one shared frame itself (counted process-wide); with a compressor
            # that keeps its context, each connection frames the message and counts it.
            direct = metrics.broadcast_stats.messages - sent_before
            assert direct == (0 if compression else 2)
            assert live["uringws_messages_sent_total"] - metrics.broadcast_stats.messages == 4 + 2 - direct
            assert live["uringws_received_bytes_total"] > (100_000 if compression is None else 5 * 6)
            await a.close(4001, "bye")
            await b.close()
            for _ in range(100):
                if not server.connections:
                    break
                await asyncio.sleep(0.02)
            done = samples(server, asyncio.get_running_loop())
            assert done["uringws_connections_open"] == 0
            assert done["uringws_connections_opened_total"] == 2
            assert done['uringws_connections_closed_total{code="4001"}'] == 1
            assert done['uringws_connections_closed_total{code="1000"}'] == 1
            # Totals survive the connections: what was counted live is still there after they closed.
            assert done["uringws_messages_received_total"] == 5
            assert done["uringws_received_bytes_total"] >= live["uringws_received_bytes_total"]

    loop = new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_handshake_failures_by_reason() -> None:
    async def handler(ws: object) -> None:
        pass

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, open_timeout=0.3) as server:
            port = server.port_bound
            # A plain GET, no upgrade asked for: an HTTP answer (426), not a failed WebSocket handshake.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 426")
            writer.close()
            # An upgrade in a WebSocket version we do not speak: a failed handshake, 426.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 426")
            writer.close()
            # Garbage: 400.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01 not http\r\n\r\n")
            await reader.read()
            writer.close()
            # Silence: the opening handshake times out.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.read()
            writer.close()
            await asyncio.sleep(0.05)
            m = samples(server, asyncio.get_running_loop())
            assert m['uringws_http_responses_total{code="426"}'] == 1, m
            assert m['uringws_handshake_failures_total{reason="http_426"}'] == 1, m
            assert m['uringws_handshake_failures_total{reason="http_400"}'] == 1, m
            assert m['uringws_handshake_failures_total{reason="timeout"}'] == 1, m
            assert m["uringws_connections_opened_total"] == 0, m

    loop = new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_epoll_backend_reports_no_send_path() -> None:
    """On epoll the transports are asyncio's: no uringws_send_* at all, rather than zeros that look healthy."""

    async def main() -> dict[str, float]:
        async with serve(lambda ws: asyncio.sleep(0), "127.0.0.1", 0) as server:
            return samples(server, asyncio.get_running_loop())

    loop = new_event_loop(backend="epoll")
    try:
        m = loop.run_until_complete(main())
    finally:
        loop.close()
    assert 'uringws_info{version="' + uringws.__version__ + '",backend="epoll"}' in m, m
    assert not [k for k in m if k.startswith("uringws_send_")], m


def test_memory_budget_gauges_only_with_a_budget() -> None:
    async def hold(ws: object) -> None:
        await ws.wait_closed()  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with serve(hold, "127.0.0.1", 0) as plain:
            assert not any(name.startswith("uringws_memory_budget") for name in samples(plain, loop))
        async with serve(hold, "127.0.0.1", 0, max_memory=1 << 20, max_size=4 << 20, compression=None) as server:
            uri = f"ws://127.0.0.1:{server.port_bound}/"
            async with connect(uri, compression=None, max_size=4 << 20) as ws:
                await ws.send(b"x" * 600_000)  # queued unread: 600,000 bytes of the budget
                for _ in range(200):
                    if samples(server, loop)["uringws_memory_budget_used_bytes"] == 600_000:
                        break
                    await asyncio.sleep(0.02)
                other = await connect(uri, compression=None, max_size=4 << 20)
                await other.send(b"y" * 600_000)  # over what is left
                with pytest.raises(uringws.ConnectionClosed):
                    await other.recv()
                now = samples(server, loop)
            assert now["uringws_memory_budget_limit_bytes"] == 1 << 20
            assert now["uringws_memory_budget_used_bytes"] == 600_000
            assert now["uringws_memory_budget_peak_bytes"] == 600_000
            assert now["uringws_memory_budget_refused_total"] == 1
            assert metrics.summary(server, loop)["memory_budget_refused"] == 1

    loop = new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()
