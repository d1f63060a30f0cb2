"""Two processes, each a uringws server with a Hub on one redis-server, and WebSocket clients on both."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from uringws import connect
from uringws.ws.connection import Connection

from .conftest import RedisServer
from .helpers import run

ROOT = Path(__file__).resolve().parents[2]


class Node:
    def __init__(self, url: str, mode: str = "pubsub") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.pubsub.node", url, mode],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node exited with {self.proc.wait()} before printing its port")
        self.port = int(line)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def health(self) -> int:
        """The status code of GET /healthz (0 if the node does not answer)."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return 0
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        status = await reader.readline()
        writer.close()
        return int(status.split()[1]) if status else 0


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[tuple[Node, Node]]:
    a = Node(redis_server.url)
    try:
        b = Node(redis_server.url)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


async def wait_health(nodes: tuple[Node, ...], status: int) -> None:
    for _ in range(2000):
        if [await n.health() for n in nodes] == [status] * len(nodes):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"nodes did not all report /healthz {status}")


async def drain(ws: Connection, idle: float = 0.5) -> list[object]:
    got: list[object] = []
    while True:
        try:
            got.append(await asyncio.wait_for(ws.recv(), idle))
        except TimeoutError:
            return got


def test_every_member_on_every_node_once_in_order_and_only_the_outage_is_lost(
    redis_server: RedisServer, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes

    async def main() -> None:
        await wait_health(nodes, 200)
        on_a = [await connect(f"ws://127.0.0.1:{a.port}/room", compression=None) for _ in range(3)]
        on_b = [await connect(f"ws://127.0.0.1:{b.port}/room", compression=None) for _ in range(3)]
        # A member joins in its handler; wait until each node's channel carries a message from the other.
        probe_ok = False
        for _ in range(500):
            await on_a[0].send("probe")
            try:
                if await asyncio.wait_for(on_b[0].recv(), 0.05) == "probe":
                    probe_ok = True
                    break
            except TimeoutError:
                pass
        assert probe_ok
        await asyncio.sleep(0.5)
        for ws in on_a + on_b:
            await drain(ws, 0.2)

        async def send(ws: Connection, name: str) -> None:
            for i in range(50):
                await ws.send(f"{name}{i}" if i % 2 else f"{name}{i}".encode())

        await asyncio.gather(send(on_a[0], "a"), send(on_b[1], "b"))
        first = [await drain(ws) for ws in on_a + on_b]

        redis_server.kill()
        await wait_health(nodes, 503)
        for i in range(10):
            await on_a[0].send(f"during{i}")
        for ws in on_a:  # still delivered on the publisher's node
            for i in range(10):
                assert await asyncio.wait_for(ws.recv(), 10) == f"during{i}"
        redis_server.start()
        await wait_health(nodes, 200)  # each node recovers by itself
        for i in range(10):
            await on_b[2].send(f"after{i}")
        last = [await drain(ws) for ws in on_a + on_b]
        for ws in on_a + on_b:
            await ws.close()

        for got in first:
            assert len(got) == 100
            for name in ("a", "b"):
                mine = [m for m in got if (m if isinstance(m, str) else m.decode()).startswith(name)]
                assert mine == [f"{name}{i}" if i % 2 else f"{name}{i}".encode() for i in range(50)]
        for got in last:  # B's members missed exactly the messages published during the outage
            assert got == [f"after{i}" for i in range(10)]

    run(main(), timeout=120)
