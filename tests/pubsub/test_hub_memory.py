"""What joining a channel costs per connection in the hub's own bookkeeping (benchmarks/hub_memory.py measures
the server's RSS per idle TLS connection with and without a hub; this bounds the part the hub adds)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any, Literal, cast

import pytest

from uringws.pubsub import Hub, MemoryBackend, RedisBackend
from uringws.ws.connection import Connection

from .conftest import RedisServer
from .helpers import run

N = 2000
#: Bytes the hub may add per joined connection (measured about 750 B with one channel: a set entry, the
#: connection's record and the callback on its `lost` future); an idle TLS connection is about 28 KiB.
PER_JOIN_LIMIT = 1024
#: What may stay once the connections are gone: the hub's dict and set tables keep the size they grew to (CPython
#: does not shrink them on deletion), about 110 B per connection at the peak; a leaked record is over 700 B.
LEFT_LIMIT = 200


class FakeConnection:
    """Just what Hub.join uses of a Connection: a hashable object with a ``lost`` future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.lost: asyncio.Future[None] = loop.create_future()


async def per_join_bytes(hub: Hub, channels: int = 1) -> tuple[float, float]:
    """Bytes traced per connection after N connections join, and after they are lost again."""
    loop = asyncio.get_running_loop()
    conns = [FakeConnection(loop) for _ in range(N)]
    await hub.join(cast(Connection, conns[0]), "room0")  # the channel itself is not a per-connection cost
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, conn in enumerate(conns[1:], 1):
            await hub.join(cast(Connection, conn), f"room{i % channels}")
        joined = tracemalloc.get_traced_memory()[0]
        for conn in conns[1:]:
            conn.lost.set_result(None)
        await asyncio.sleep(0)  # the lost callbacks run
        await asyncio.sleep(0.1)
        gc.collect()
        left = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(hub.members("room0")) == 1
    return (joined - before) / (N - 1), (left - before) / (N - 1)


def test_join_costs_under_a_kib_per_connection_and_is_freed_on_close() -> None:
    async def main() -> None:
        async with Hub(MemoryBackend()) as hub:
            per_join, after = await per_join_bytes(hub)
        assert per_join < PER_JOIN_LIMIT, f"{per_join:.0f} B per joined connection"
        assert after < LEFT_LIMIT, f"{after:.0f} B per connection still held after they closed"

    run(main())


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_a_redis_hub_adds_nothing_per_connection(redis_server: RedisServer, mode: Literal["pubsub", "streams"]) -> None:
    # One Redis subscription per channel per node: more members of a channel cost Redis and the backend nothing.
    async def main() -> None:
        backend: Any = RedisBackend(redis_server.url, mode=mode, connect_timeout=3)
        async with Hub(backend) as hub:
            per_join, after = await per_join_bytes(hub)
        assert per_join < PER_JOIN_LIMIT, f"{per_join:.0f} B per joined connection"
        assert after < LEFT_LIMIT, f"{after:.0f} B per connection still held after they closed"

    run(main())
