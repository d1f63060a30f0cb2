"""The send path over the fault-injecting ring double: short sends, -EAGAIN/-EINTR/-ECANCELED, completions
reordered across sockets and delayed. The echoed stream must still equal the written one, byte for byte."""

from __future__ import annotations

import pytest

import uringws.loop
from uringws.ring import probe

from .echo_harness import run_echo_torture
from .naive import NaiveSendTransport

testing = pytest.importorskip("uringws.ring.testing")
pytestmark = pytest.mark.skipif(not probe.availability().usable, reason="io_uring unusable here")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_echo_over_faulty_ring(seed: int) -> None:
    ring = testing.FaultyRing(seed=seed, entries=1024)
    loop = uringws.loop.EventLoop(ring=ring, direct_send=False)  # every byte through the (faulty) ring
    try:
        results = run_echo_torture(loop, connections=12, msgs=10, max_msg=512 * 1024, seed=seed)
        assert len(results) == 12
        bad = [r for r in results if not r.ok]
        assert not bad, f"{len(bad)} corrupted, e.g. {bad[0]}"
        c = ring.counters
        # The faults really happened, on the send path and in the completion order.
        assert c["send_short"] + c["sendmsg_short"] > 10, c
        assert c["send_error"] + c["sendmsg_error"] > 3, c
        assert c["reordered"] > 0 and c["delayed"] > 0, c
        s = loop.send_stats
        assert s.eagain > 0 and s.retries > 0 and s.short_sends > 0, s
    finally:
        loop.close()


def test_asyncio_streams_over_faulty_ring() -> None:
    """Loop plumbing (polls, wake-ups, timers) survives delayed and reordered completions too."""
    import asyncio
    import os

    ring = testing.FaultyRing(seed=9, entries=256)
    loop = uringws.loop.EventLoop(ring=ring, direct_send=False)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        payload = os.urandom(2 * 1024 * 1024)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read() == payload
        writer.close()
        fut = loop.create_future()
        loop.call_later(0.01, loop.call_soon_threadsafe, fut.set_result, 1)
        assert await fut == 1
        server.close()
        await server.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()


def test_naive_sender_caught_over_faulty_ring() -> None:
    ring = testing.FaultyRing(seed=4, entries=1024)
    loop = uringws.loop.EventLoop(ring=ring, transport_class=NaiveSendTransport)
    try:
        results = run_echo_torture(loop, connections=8, msgs=8, max_msg=256 * 1024, seed=4)
        assert len(results) == 8
        assert any(not r.ok for r in results), "naive sender survived the fault-injecting ring"
    finally:
        loop.close()
