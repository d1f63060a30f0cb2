"""End to end: the server-wide memory budget (``serve(max_memory=...)``). A message bigger than what is left of
the budget closes its own connection with 1009 while the others go on; the bookkeeping returns to 0 however the
connections end."""

from __future__ import annotations

import asyncio
import os

import pytest

from uringws.client import connect
from uringws.server import Server, serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed, ConnectionClosedError

from .test_ws_api import RawClient, masked, run, url

MIB = 1 << 20


async def handler(ws: Connection) -> None:
    """/hold: never reads (what arrives stays queued, on the budget); anything else: echo."""
    try:
        if ws.path == "/hold":
            await ws.wait_closed()
        else:
            async for message in ws:
                await ws.send(message)
    except ConnectionClosed:
        pass


async def used_becomes(server: Server, expected: int, timeout: float = 10.0) -> None:
    assert server.budget is not None
    async with asyncio.timeout(timeout):
        while server.budget.used != expected:
            await asyncio.sleep(0.01)


@run
async def test_a_message_over_the_remaining_budget_closes_only_its_connection() -> None:
    async with serve(handler, "127.0.0.1", 0, max_size=4 * MIB, max_memory=3 * MIB, compression=None) as server:
        assert server.budget is not None and server.budget.limit == 3 * MIB
        async with connect(url(server), max_size=4 * MIB) as canary, connect(url(server, "/hold")) as holder:
            await holder.send(os.urandom(2 * MIB))
            await used_becomes(server, 2 * MIB)  # queued unread on the server
            async with connect(url(server), max_size=4 * MIB) as greedy:
                await greedy.send(os.urandom(1536 * 1024))  # 1.5 MiB: more than the 1 MiB left
                with pytest.raises(ConnectionClosedError) as info:
                    await greedy.recv()
            assert info.value.code == 1009 and "memory budget" in info.value.reason, info.value
            assert server.budget.refused == 1
            for size in (100, 512 * 1024, 100):  # the others go on, within what is left
                payload = os.urandom(size)
                await canary.send(payload)
                assert await canary.recv() == payload
            await used_becomes(server, 2 * MIB)
        await used_becomes(server, 0)  # the held message went with its connection
        async with connect(url(server), max_size=4 * MIB) as ws:  # and the whole budget is there again
            payload = os.urandom(int(2.5 * MIB))
            await ws.send(payload)
            assert await ws.recv() == payload
        await used_becomes(server, 0)
        assert server.budget.peak >= int(2.5 * MIB)


@run
async def test_output_waiting_for_a_slow_reader_is_counted() -> None:
    """An echo that waits for its reader holds its bytes: counted on the budget until they are written, so another
    connection's large message is refused meanwhile (found by the 128 MiB cgroup test: echoes waiting for their
    clients, uncounted, took the server past its limit and got it OOM-killed)."""
    # Loopback's socket buffers take a few MiB of an unread echo (measured: all of 2 MiB, about half of 6 MiB):
    # what stays here is the rest.
    async with serve(handler, "127.0.0.1", 0, max_size=16 * MIB, max_memory=10 * MIB, compression=None) as server:
        assert server.budget is not None
        slow = await RawClient.open(server.port_bound)
        payload = os.urandom(8 * MIB)
        slow.send(masked(0x2, payload))
        # The echo's header: the server has taken the message (its reservation given back) and is sending it.
        head = await asyncio.wait_for(slow.reader.readexactly(10), 10)
        assert head[:2] == b"\x82\x7f", head
        await asyncio.sleep(0.2)
        held = server.budget.used
        assert 3 * MIB <= held <= 8 * MIB + 10, f"the waiting echo is not on the budget: {server.budget}"
        async with connect(url(server), max_size=16 * MIB) as greedy:
            await greedy.send(os.urandom(8 * MIB))  # fits the budget, not what the waiting echo leaves of it
            with pytest.raises(ConnectionClosedError) as info:
                await greedy.recv()
        assert info.value.code == 1009 and "memory budget" in info.value.reason, info.value
        assert server.budget.used == held
        echoed = await asyncio.wait_for(slow.reader.readexactly(8 * MIB), 10)  # read: written, given back
        assert echoed == payload
        await used_becomes(server, 0)
        assert server.budget.peak >= held
        slow.writer.close()


@run
async def test_bookkeeping_returns_to_zero_after_abnormal_closes() -> None:
    async with serve(handler, "127.0.0.1", 0, max_size=8 * MIB, max_memory=64 * MIB) as server:
        assert server.budget is not None
        # A large frame cut off by a reset: its payload buffer was reserved when its header arrived.
        raw = await RawClient.open(server.port_bound)
        raw.send(masked(0x2, os.urandom(4 * MIB))[:MIB])
        await used_becomes(server, 4 * MIB)
        raw.writer.transport.abort()
        await used_becomes(server, 0)
        # A fragmented message half sent, then the peer closes TCP without a close frame.
        raw = await RawClient.open(server.port_bound)
        raw.send(masked(0x1, b"a" * MIB, fin=False) + masked(0x0, b"b" * MIB, fin=False))
        await used_becomes(server, 2 * MIB)
        raw.close()
        await used_becomes(server, 0)
        # Messages queued unread when the connection ends.
        holder = await connect(url(server, "/hold"), max_size=8 * MIB, compression=None)
        for _ in range(3):
            await holder.send(os.urandom(MIB))
        await used_becomes(server, 3 * MIB)
        assert holder.transport is not None
        holder.transport.abort()
        await used_becomes(server, 0)
        # A compressed message (the client's default), echoed.
        async with connect(url(server), max_size=8 * MIB) as ws:
            await ws.send(b"c" * (3 * MIB))
            assert await ws.recv() == b"c" * (3 * MIB)
        await used_becomes(server, 0)
        assert server.budget.peak >= 3 * MIB
        # The server closing (close(): a close frame) while a message is half received; the peer then drops TCP.
        raw = await RawClient.open(server.port_bound)
        raw.send(masked(0x2, os.urandom(2 * MIB))[:1000])
        await used_becomes(server, 2 * MIB)
        server.close()
        assert await raw.frame() == (0x8, b"\x03\xe9server shutting down")
        assert server.budget.used == 2 * MIB  # the peer may still send the rest: the message is not dropped yet
        raw.close()
        await used_becomes(server, 0)


@run
async def test_no_budget_by_default() -> None:
    async with serve(handler, "127.0.0.1", 0) as server:
        assert server.budget is None
        async with connect(url(server)) as ws:
            await ws.send(os.urandom(MIB))
            assert len(await ws.recv()) == MIB


@pytest.mark.parametrize("use_recv", [True, False], ids=["recv", "async-for"])
def test_queued_messages_are_given_back_when_taken(use_recv: bool) -> None:
    """Messages already queued when the application asks are taken without waiting, and given back too."""

    @run
    async def body() -> None:
        go = asyncio.Event()

        async def late_echo(ws: Connection) -> None:
            await go.wait()
            if use_recv:
                for _ in range(3):
                    await ws.send(await ws.recv())
                await ws.wait_closed()  # open until the client closes: its end would give everything back
            else:
                async for message in ws:
                    await ws.send(message)

        async with serve(late_echo, "127.0.0.1", 0, max_size=4 * MIB, max_memory=64 * MIB) as server:
            assert server.budget is not None
            async with connect(url(server), compression=None) as ws:
                payloads = [os.urandom(100_000) for _ in range(3)]
                for payload in payloads:
                    await ws.send(payload)
                await used_becomes(server, 300_000)  # queued while the handler waits
                go.set()
                for payload in payloads:
                    assert await ws.recv() == payload
                await used_becomes(server, 0)  # the connection is still open

    body()
