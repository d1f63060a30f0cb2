"""``uringws serve --workers 2 --pubsub redis://...``: two nodes on one redis-server are one /broadcast room;
/healthz follows Redis; an unreachable Redis at start is one line and exit status 2."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from uringws.ws.connection import Connection

from ..e2e.test_workers import Served, connect, run
from .conftest import RedisServer, free_port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))


@pytest.fixture
def two_nodes(redis_server: RedisServer, env: dict[str, str]) -> Iterator[tuple[Served, Served]]:
    nodes: list[Served] = []
    try:
        for _ in range(2):
            nodes.append(Served(env, "--workers", "2", "--pubsub", redis_server.url, tls=False))
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.kill()


def test_two_nodes_of_two_workers_are_one_room_exactly_once(two_nodes: tuple[Served, Served]) -> None:
    per_publisher = 20

    async def main() -> None:
        clients: list[Connection] = []
        for node in two_nodes:
            # Members on both workers of each node: four processes, all subscribed to Redis.
            mine: list[Connection] = []
            while len(mine) < 3 or not all(i["connections"] for i in node.infos(2).values()):
                mine.append(await connect(node, "/broadcast"))
                assert len(mine) < 40, "every connection landed on one worker"
            clients += mine
        await asyncio.sleep(0.5)  # the last joins' SUBSCRIBEs are confirmed before join() returns; margin
        total = len(clients) * per_publisher

        async def publish(n: int, ws: Connection) -> None:
            for i in range(per_publisher):
                await ws.send(f"{n}:{i}")

        async def collect(ws: Connection) -> list[str]:
            return [await asyncio.wait_for(ws.recv(), 30) for _ in range(total)]

        collectors = [asyncio.ensure_future(collect(ws)) for ws in clients]
        await asyncio.gather(*(publish(n, ws) for n, ws in enumerate(clients)))
        expected = sorted(f"{n}:{i}" for n in range(len(clients)) for i in range(per_publisher))
        for got in await asyncio.gather(*collectors):
            assert sorted(got) == expected
            for n in range(len(clients)):
                assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(per_publisher)]
        for ws in clients:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await ws.close()

    run(main())
    for node in two_nodes:
        assert node.stop() == 0, node.output.decode()


def test_healthz_is_503_while_redis_is_down(two_nodes: tuple[Served, Served], redis_server: RedisServer) -> None:
    node = two_nodes[0]
    assert node.get("/healthz") == (200, {"status": "ok", "hub": "up", "backend": "RedisBackend"})
    redis_server.kill()
    deadline = time.monotonic() + 30
    while node.get("/healthz")[0] != 503:
        assert time.monotonic() < deadline, "/healthz stayed 200 with Redis down"
        time.sleep(0.1)
    assert node.get("/healthz")[1]["status"] == "degraded"
    redis_server.start()
    deadline = time.monotonic() + 30
    # Every worker reconnects by itself: ten answers in a row, on new connections spread over both, are 200.
    streak = 0
    while streak < 10:
        assert time.monotonic() < deadline, "/healthz did not return to 200 on every worker"
        streak = streak + 1 if node.get("/healthz")[0] == 200 else 0
        time.sleep(0.05)


def test_unreachable_redis_at_start_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for workers in ("1", "2"):
        proc = subprocess.run([sys.executable, "-P", "-m", "uringws", "serve", "--port", str(free_port()),
                               "--no-tls", "--workers", workers, "--pubsub", dead],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("uringws serve: --pubsub: cannot use Redis at"), lines


def test_a_server_that_is_not_redis_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    # Something else listens on the --pubsub port (here a web server answering 400 to anything).
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def answer_garbage() -> None:
        listener.settimeout(0.1)
        conns = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conns.append(conn)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        for workers in ("1", "2"):
            began = time.monotonic()
            cmd = [sys.executable, "-P", "-m", "uringws", "serve", "--port", str(free_port()), "--no-tls"]
            cmd += ["--workers", workers, "--pubsub", f"redis://127.0.0.1:{port}/0"]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 2, proc.stdout + proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith(f"uringws serve: --pubsub: cannot use Redis at redis://127.0.0.1:{port}/0")
            assert time.monotonic() - began < 30
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_not_a_redis_url_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-P", "-m", "uringws", "serve", "--port", str(free_port()), "--no-tls",
                           "--pubsub", "http://127.0.0.1/"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("uringws serve: --pubsub: not a Redis URL: 'http://127.0.0.1/'; use "
                                   "redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
