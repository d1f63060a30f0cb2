"""The Hub without Redis: members and subscribers, exactly-once delivery between hubs, limits, cleanup on close."""

from __future__ import annotations

import asyncio
import logging

import pytest

from uringws import connect, serve
from uringws.pubsub import Hub, MemoryBackend, MemoryBroker, MessageTooBig, PubSubError
from uringws.ws.config import DEFAULT_CONFIG
from uringws.ws.connection import Connection

from .helpers import run, until


def callbacks_of(ws: Connection) -> int:
    """Done-callbacks on the connection's ``lost`` future (the C future reports none as None)."""
    return len(ws.lost._callbacks or ())  # type: ignore[attr-defined]


def test_subscribers_get_each_message_once_across_hubs_in_order() -> None:
    async def main() -> None:
        broker = MemoryBroker()
        async with Hub(MemoryBackend(broker)) as a, Hub(MemoryBackend(broker)) as b:
            async with a.subscribe("room") as sa, b.subscribe("room") as sb, b.subscribe("other") as so:
                for i in range(5):
                    await a.publish("room", f"a{i}")
                    await b.publish("room", b"b%d" % i)
                expected = [m for i in range(5) for m in (f"a{i}", b"b%d" % i)]
                assert [await sa.get() for _ in expected] == expected
                assert [await sb.get() for _ in expected] == expected
                # Nothing more: no echo of a node's own message through the broker, no other channel.
                await asyncio.sleep(0.05)
                assert not sa._messages and not sb._messages and not so._messages

    run(main())


def test_publish_refuses_a_message_over_max_size_and_delivers_nothing() -> None:
    async def main() -> None:
        async with Hub() as hub, hub.subscribe("c") as sub:
            assert hub.max_size == DEFAULT_CONFIG.max_size == 1 << 20
            with pytest.raises(MessageTooBig, match="max_size"):
                await hub.publish("c", b"x" * ((1 << 20) + 1))
            with pytest.raises(MessageTooBig):
                await hub.publish("c", "é" * ((1 << 19) + 1))  # 2 bytes each in UTF-8
            await hub.publish("c", b"x" * (1 << 20))  # exactly the limit passes
            await hub.publish("c", "é" * (1 << 19))
            assert len(await sub.get()) == 1 << 20
            assert len(await sub.get()) == 1 << 19
            assert not sub._messages

    run(main())


def test_message_over_max_size_from_another_node_is_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        broker = MemoryBroker()
        async with Hub(MemoryBackend(broker)) as big, Hub(MemoryBackend(broker), max_size=10) as small:
            async with small.subscribe("c") as sub:
                with caplog.at_level(logging.WARNING, "uringws.pubsub"):
                    await big.publish("c", b"x" * 11)
                    await big.publish("c", b"y" * 12)
                    await big.publish("c", b"ok")
                assert await sub.get() == b"ok"
                assert not sub._messages
        assert sum("over max_size" in r.getMessage() for r in caplog.records) == 1

    run(main())


def test_subscription_queue_is_bounded_new_messages_dropped_and_counted() -> None:
    async def main() -> None:
        async with Hub() as hub, hub.subscribe("c", maxsize=3) as sub:
            for i in range(5):
                await hub.publish("c", str(i))
            assert sub.dropped == 2
            assert [await sub.get() for _ in range(3)] == ["0", "1", "2"]
            await hub.publish("c", "5")
            assert await sub.get() == "5"

    run(main())


def test_subscription_iteration_ends_when_the_hub_closes() -> None:
    async def main() -> None:
        hub = Hub()
        await hub.start()
        got: list[object] = []

        async def reader() -> None:
            async with hub.subscribe("c") as sub:
                async for message in sub:
                    got.append(message)

        task = asyncio.create_task(reader())
        await until(lambda: "c" in hub._subscribers)
        await hub.publish("c", "one")
        await hub.close()
        await asyncio.wait_for(task, 5)
        assert got == ["one"]
        with pytest.raises(PubSubError, match="not running"):
            await hub.publish("c", "two")

    run(main())


def test_members_receive_and_leave_automatically_when_they_close() -> None:
    """A joined connection that closes leaves every channel: no member, no callback, no backend subscription."""

    async def main() -> None:
        broker = MemoryBroker()
        async with Hub(MemoryBackend(broker)) as hub, Hub(MemoryBackend(broker)) as other:
            joined: list[Connection] = []

            async def handler(ws: Connection) -> None:
                await hub.join(ws, "a")
                await hub.join(ws, "b")
                joined.append(ws)
                await ws.wait_closed()

            async with serve(handler, "127.0.0.1", 0) as server:
                port = server.port_bound
                clients = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
                await until(lambda: len(joined) == 3, what="3 members")
                assert set(broker.channels) == {"a", "b"}
                await other.publish("a", "to a")
                await other.publish("b", b"to b")
                for c in clients:
                    assert await c.recv() == "to a"
                    assert await c.recv() == b"to b"
                await hub.leave(joined[0], "a")
                assert hub.channels_of(joined[0]) == {"b"}
                for c in clients:
                    await c.close()
                await until(lambda: not hub._members and not hub._joined, what="members gone")
                await until(lambda: not broker.channels, what="backend unsubscribed")
                assert hub._backend_channels == set()
                # A closed connection joins nothing.
                await hub.join(joined[0], "a")
                assert not hub._members and not hub._joined

    run(main())


def test_leave_removes_the_lost_callback_so_nothing_stays_behind() -> None:
    async def main() -> None:
        async with Hub() as hub:
            done = asyncio.Event()
            conns: list[Connection] = []

            async def handler(ws: Connection) -> None:
                conns.append(ws)
                await done.wait()

            async with serve(handler, "127.0.0.1", 0) as server:
                client = await connect(f"ws://127.0.0.1:{server.port_bound}/")
                await until(lambda: conns, what="connection")
                ws = conns[0]
                before = callbacks_of(ws)
                await hub.join(ws, "x")
                await hub.join(ws, "y")
                assert callbacks_of(ws) == before + 1
                await hub.leave(ws, "x")
                await hub.leave(ws, "y")
                await hub.leave(ws, "y")  # not a member: no error
                assert callbacks_of(ws) == before
                assert not hub._members and not hub._joined and not hub._backend_channels
                done.set()
                await client.close()

    run(main())


def test_slow_member_is_skipped_and_does_not_block_the_others() -> None:
    """One client stops reading; the hub keeps publishing and the reading clients get every message."""

    async def main() -> None:
        count, size = 120, 64 * 1024
        async with Hub() as hub:
            members: list[Connection] = []

            async def handler(ws: Connection) -> None:
                await hub.join(ws, "feed")
                members.append(ws)
                await ws.wait_closed()

            async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
                url = f"ws://127.0.0.1:{server.port_bound}/"
                fast = [await connect(url, compression=None, max_size=None) for _ in range(2)]
                slow = await connect(url, compression=None, max_size=None, max_queue=1)
                await until(lambda: len(members) == 3, what="3 members")

                received = {id(c): 0 for c in fast}

                async def read(c: Connection) -> None:
                    for _ in range(count):
                        assert len(await c.recv()) == size
                        received[id(c)] += 1

                readers = [asyncio.create_task(read(c)) for c in fast]
                for i in range(count):
                    await hub.publish("feed", bytes([i % 256]) * size)
                    await asyncio.sleep(0)  # let the readers run, as a server under load would
                await asyncio.wait_for(asyncio.gather(*readers), 30)
                assert all(n == count for n in received.values())
                # The slow client now drains what reached it: fewer than all (at least one was skipped).
                got = 0
                while True:
                    try:
                        await asyncio.wait_for(slow.recv(), 1.0)
                    except TimeoutError:
                        break
                    got += 1
                assert got < count
                for c in [*fast, slow]:
                    await c.close()

    run(main())
