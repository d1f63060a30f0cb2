"""RedisBackend against a real redis-server: two hubs ("nodes") in one process, outages, Streams resume, errors."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
import redis.asyncio.client
import redis.exceptions

from uringws.pubsub import BackendUnavailable, Hub, RedisBackend, Subscription

from .conftest import RedisServer
from .helpers import run, run_in_thread, until


async def drain(sub: Subscription, idle: float = 0.3) -> list[object]:
    """Every message the subscription gets until none arrives for ``idle`` seconds."""
    got: list[object] = []
    while True:
        try:
            got.append(await asyncio.wait_for(sub.get(), idle))
        except TimeoutError:
            return got


def backend(server: RedisServer, **kwargs: object) -> RedisBackend:
    return RedisBackend(server.url, backoff_min=0.05, backoff_max=0.5, connect_timeout=3, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_two_nodes_each_message_once_in_publish_order(redis_server: RedisServer, mode: str) -> None:
    async def main() -> None:
        async with Hub(backend(redis_server, mode=mode)) as a, Hub(backend(redis_server, mode=mode)) as b:
            async with a.subscribe("room") as a1, a.subscribe("room") as a2, b.subscribe("room") as b1:

                async def publisher(hub: Hub, name: str) -> None:
                    for i in range(200):
                        await hub.publish("room", f"{name}{i}" if i % 2 else f"{name}{i}".encode())

                await asyncio.gather(publisher(a, "a"), publisher(b, "b"))
                for sub in (a1, a2, b1):
                    got = await drain(sub)
                    for name in ("a", "b"):
                        mine = [m for m in got if (m if isinstance(m, str) else m.decode()).startswith(name)]
                        assert mine == [f"{name}{i}" if i % 2 else f"{name}{i}".encode() for i in range(200)]
                    assert len(got) == 400

    run(main())


def test_redis_carries_one_copy_per_node_not_per_member(redis_server: RedisServer) -> None:
    async def main() -> None:
        async with Hub(backend(redis_server)) as a, Hub(backend(redis_server)) as b:
            async with a.subscribe("c") as _, a.subscribe("c") as _, b.subscribe("c") as _, b.subscribe("c") as _:
                assert redis_server.command(b"PUBSUB", b"NUMSUB", b"uringws:c").endswith(b":2\r\n")
            await until(lambda: redis_server.command(b"PUBSUB", b"NUMSUB", b"uringws:c").endswith(b":0\r\n"))

    run(main())


def test_pubsub_outage_loses_exactly_what_was_published_while_redis_was_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Hub(backend(redis_server)) as a, Hub(backend(redis_server)) as b:
            async with a.subscribe("c") as sa, b.subscribe("c") as sb:
                with caplog.at_level(logging.WARNING, "uringws.pubsub"):
                    for i in range(10):
                        await a.publish("c", f"before{i}")
                    await until(lambda: len(sb._messages) == 10, what="before")
                    redis_server.kill()
                    await until(lambda: a.state == "down" and b.state == "down", what="both down")
                    for i in range(10):
                        with pytest.raises(BackendUnavailable, match="reached this node only"):
                            await a.publish("c", f"during{i}")
                    await asyncio.sleep(1.0)  # several reconnect attempts fail meanwhile
                    redis_server.start()
                    await until(lambda: a.healthy and b.healthy, what="both back")
                    for i in range(10):
                        await b.publish("c", f"after{i}")
                got_a, got_b = await drain(sa), await drain(sb)
        before = [f"before{i}" for i in range(10)]
        during = [f"during{i}" for i in range(10)]
        after = [f"after{i}" for i in range(10)]
        assert got_a == before + during + after  # local delivery went on
        assert got_b == before + after  # only the outage's messages are lost to the other node
        assert a.backend.outages == b.backend.outages == 1  # type: ignore[attr-defined]
        lost = [r for r in caplog.records if "lost Redis" in r.getMessage()]
        back = [r for r in caplog.records if "is back" in r.getMessage()]
        assert len(lost) == 2 and len(back) == 2  # once per node per outage, not per retry

    run(main())


def client_id(server: RedisServer, name_prefix: str) -> bytes:
    listing = server.command(b"CLIENT", b"LIST")
    for line in listing.split(b"\n"):
        fields = dict(f.split(b"=", 1) for f in line.split() if b"=" in f)
        if fields.get(b"name", b"").startswith(name_prefix.encode()):
            return fields[b"id"]
    raise AssertionError(f"no client named {name_prefix}* in {listing!r}")


def test_streams_node_cut_off_resumes_from_its_last_id(redis_server: RedisServer) -> None:
    async def main() -> None:
        slow_back = RedisBackend(redis_server.url, mode="streams", backoff_min=1.0, backoff_max=1.0)
        async with Hub(backend(redis_server, mode="streams")) as a, Hub(slow_back) as b:
            async with b.subscribe("c") as sb:
                for i in range(20):
                    await a.publish("c", f"m{i}")
                await until(lambda: len(sb._messages) == 20, what="first 20")
                reader = f"uringws-reader-{slow_back.node_id.hex()[:12]}"
                assert redis_server.command(b"CLIENT", b"KILL", b"ID", client_id(redis_server, reader)) == b":1\r\n"
                await until(lambda: b.state == "down", what="b down")
                for i in range(20, 100):  # b is away for at least 0.5 s (its backoff)
                    await a.publish("c", f"m{i}")
                assert b.state == "down"
                await until(lambda: b.healthy, what="b back")
                got = await drain(sb)
        assert got == [f"m{i}" for i in range(100)]
        assert slow_back.outages == 1

    run(main())


def test_streams_with_persistence_a_redis_restart_loses_nothing_acknowledged(persistent_redis: RedisServer) -> None:
    async def main() -> None:
        a, b = Hub(backend(persistent_redis, mode="streams")), Hub(backend(persistent_redis, mode="streams"))
        async with a, b:
            async with b.subscribe("c") as sb:
                acked: list[str] = []
                for i in range(50):
                    await a.publish("c", f"m{i}")
                    acked.append(f"m{i}")
                persistent_redis.kill()  # SIGKILL: whatever b had not read yet must come from the AOF
                for i in range(50, 55):
                    with pytest.raises(BackendUnavailable):
                        await a.publish("c", f"m{i}")  # not acknowledged: may be lost
                persistent_redis.start()
                await until(lambda: a.healthy and b.healthy, what="both back")
                for i in range(55, 80):
                    await a.publish("c", f"m{i}")
                    acked.append(f"m{i}")
                got = await drain(sb)
        assert got == acked

    run(main())


@pytest.fixture
def garbage_server() -> Iterator[tuple[int, str]]:
    """A TCP server that answers anything with non-RESP bytes (``garbage``) or never answers (``silent``)."""
    listeners: dict[str, socket.socket] = {}
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve(sock: socket.socket, reply: bytes | None) -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            if reply is not None:
                conn.sendall(reply)

    threads = []
    ports = {}
    for name, reply in (("garbage", b"HTTP/1.1 400 Bad Request\r\n\r\n"), ("silent", None)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        listeners[name] = s
        ports[name] = s.getsockname()[1]
        t = threading.Thread(target=serve, args=(s, reply), daemon=True)
        t.start()
        threads.append(t)
    yield ports  # type: ignore[misc]
    stop.set()
    for t in threads:
        t.join()
    for s in [*listeners.values(), *conns]:
        s.close()


def test_start_errors_are_clear_and_do_not_hang(garbage_server: dict[str, int]) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]  # nothing listens once closed
        with pytest.raises(
            BackendUnavailable, match=rf"cannot use Redis at redis://127.0.0.1:{closed_port}/0.*running"
        ):
            await Hub(RedisBackend(f"redis://127.0.0.1:{closed_port}/0", connect_timeout=2)).start()
        with pytest.raises(ValueError, match="not a Redis URL"):
            RedisBackend("http://127.0.0.1:6379/0")
        for kind in ("garbage", "silent"):
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(BackendUnavailable, match="cannot use Redis"):
                await Hub(RedisBackend(f"redis://127.0.0.1:{garbage_server[kind]}/0", connect_timeout=1)).start()
            assert loop.time() - began < 10, kind

    run(main())


def test_wrong_database_number_is_refused_at_start(redis_server: RedisServer) -> None:
    async def main() -> None:
        with pytest.raises(BackendUnavailable, match="DB index"):
            await Hub(RedisBackend(f"redis://127.0.0.1:{redis_server.port}/999", connect_timeout=2)).start()

    run(main())


def _absorb_cancellation(method: Any, then_sleep: float = 0.0) -> Any:
    """Wrap a redis-py coroutine method so that a cancellation comes out as a ConnectionError (after sleeping
    ``then_sleep`` seconds, through further cancellations), as a library call that absorbs a cancel may do."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except asyncio.CancelledError:
            deadline = asyncio.get_running_loop().time() + then_sleep
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    await asyncio.sleep(left)
                except asyncio.CancelledError:
                    pass
            raise redis.exceptions.ConnectionError("connection closed while reading") from None

    return wrapper


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_close_ends_the_reader_even_if_a_call_absorbs_the_cancellation(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # The reader loop must not take the ConnectionError for an outage and reconnect forever: close() would hang.
    monkeypatch.setattr(redis.asyncio.Redis, "xread", _absorb_cancellation(redis.asyncio.Redis.xread))
    monkeypatch.setattr(
        redis.asyncio.client.PubSub, "get_message", _absorb_cancellation(redis.asyncio.client.PubSub.get_message)
    )

    async def main() -> None:
        b = backend(redis_server, mode=mode)
        hub = Hub(b)
        await hub.start()
        async with hub.subscribe("c") as sub:
            await hub.publish("c", "x")
            assert await sub.get() == "x"
            await asyncio.sleep(0.2)  # the reader is waiting in XREAD BLOCK / get_message
            task = b._task
            assert task is not None
            async with asyncio.timeout(3):
                await hub.close()
            assert task.done() and b.state == "closed"
            assert b.outages == 0  # closing is not an outage

    run_in_thread(main(), timeout=20)


def test_close_is_bounded_when_the_reader_ignores_cancellation(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redis.asyncio.Redis, "xread", _absorb_cancellation(redis.asyncio.Redis.xread, then_sleep=3))

    async def main() -> None:
        b = backend(redis_server, mode="streams", close_timeout=0.5)
        async with Hub(b) as hub, hub.subscribe("c"):
            await asyncio.sleep(0.2)
            task = b._task
            assert task is not None
            loop = asyncio.get_running_loop()
            began = loop.time()
            with caplog.at_level(logging.WARNING, "uringws.pubsub"):
                await hub.close()
            assert loop.time() - began < 2
            assert any("did not end within" in r.getMessage() for r in caplog.records)
            await asyncio.wait({task}, timeout=5)  # it ends on its own, without reconnecting
            assert task.done() and b.state == "closed"

    run_in_thread(main(), timeout=20)


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_close_during_an_outage_returns_at_once(redis_server: RedisServer, mode: str, outage: str) -> None:
    # Killed: the reader is reconnecting with backoff. Paused (SIGSTOP): connections are open but nothing answers.
    async def main() -> float:
        b = backend(redis_server, mode=mode)
        hub = Hub(b)
        await hub.start()
        async with hub.subscribe("c"):
            if outage == "killed":
                redis_server.kill()
                await until(lambda: b.state == "down", what="down")
                await asyncio.sleep(0.3)  # a reconnect attempt or two
            else:
                assert redis_server.proc is not None
                redis_server.proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                await hub.close()
            finally:
                if outage == "paused":
                    redis_server.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            return loop.time() - began

    took = run_in_thread(main(), timeout=20)
    assert took < 1.0, f"close() took {took:.2f} s"
