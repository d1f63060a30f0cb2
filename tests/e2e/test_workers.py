"""``uringws serve --workers N`` with real processes: one port, a supervisor that replaces a dead worker without
disturbing the others, a drain on SIGTERM, and the demo's /broadcast room across workers."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import uringws
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed

from ..tools.test_torture import free_port


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Served:
    """``uringws serve --workers N ...`` in a subprocess, started once its banner is printed."""

    def __init__(self, env: dict[str, str], *args: str, tls: bool = True) -> None:
        self.port = free_port()
        self.tls = tls
        cmd = [sys.executable, "-P", "-m", "uringws", "serve", "--port", str(self.port), *args]
        if not tls:
            cmd.append("--no-tls")
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""
        self._read_until(b"Ctrl-C to stop", 60)

    def _read_until(self, marker: bytes, timeout: float) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.kill()
                raise AssertionError(f"no {marker!r} within {timeout} s:\n{self.output.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"serve exited with {self.proc.wait()}:\n{self.output.decode()}")
            self.output += chunk

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """A fresh connection (so SO_REUSEPORT may pick another worker each time): status and JSON body."""
        try:
            with urllib.request.urlopen(self.base + path, context=insecure() if self.tls else None,
                                        timeout=10) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def infos(self, want_workers: int, timeout: float = 30) -> dict[int, dict[str, Any]]:
        """/info of every worker: ask on new connections until each worker has answered."""
        seen: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < want_workers and time.monotonic() < deadline:
            _, info = self.get("/info")
            seen[info["worker"]] = info
        return seen

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self.output += out
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.output += self.proc.communicate()[0]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))


@pytest.fixture
def two_workers(env: dict[str, str]) -> Iterator[Served]:
    served = Served(env, "--workers", "2")
    yield served
    served.kill()


def run(coro: Any, timeout: float = 120) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        return runner.run(bounded())


async def connect(served: Served, path: str) -> Connection:
    return await uringws.connect(served.ws_base + path, ssl=insecure() if served.tls else None, compression=None)


def test_two_workers_share_one_port(two_workers: Served) -> None:
    infos = two_workers.infos(2)
    assert sorted(infos) == [0, 1], two_workers.output.decode()
    assert {info["workers"] for info in infos.values()} == {2}
    assert infos[0]["pid"] != infos[1]["pid"]
    assert two_workers.stop() == 0, two_workers.output.decode()


async def echo_round(ws: Connection, text: str) -> bool:
    """True if ``text`` comes back; False if the connection is gone."""
    try:
        await ws.send(text)
        return await asyncio.wait_for(ws.recv(), 20) == text
    except ConnectionClosed:
        return False


def test_sigkill_of_a_worker_replaces_it_and_spares_the_others(two_workers: Served) -> None:
    victim = two_workers.infos(2)[0]["pid"]

    async def main() -> tuple[int, int]:
        clients = [await connect(two_workers, "/echo") for _ in range(16)]
        assert all([await echo_round(ws, "before") for ws in clients])
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        # Every connection either died with the killed worker or still echoes every message, in order.
        alive = [ws for ws in clients if await echo_round(ws, "after 0")]
        for i in range(1, 20):
            assert all([await echo_round(ws, f"after {i}") for ws in alive])
        for ws in alive:
            await ws.close()
        return len(alive), len(clients) - len(alive)

    survivors, lost = run(main())
    # 16 connections over 2 workers by 4-tuple hash: both sides are non-empty unless the hash is very unlucky.
    assert survivors and lost, (survivors, lost)
    start = time.monotonic()
    infos = two_workers.infos(2, timeout=20)
    assert sorted(infos) == [0, 1] and infos[0]["pid"] != victim
    took = time.monotonic() - start
    assert took < 20
    out = two_workers.output
    assert two_workers.stop() == 0
    assert b"worker 0 (pid %d) killed by SIGKILL" % victim in two_workers.output, out.decode()


def test_sigterm_drains_every_worker_with_1001_and_exits_0(two_workers: Served) -> None:
    async def main() -> list[int | None]:
        clients = [await connect(two_workers, "/echo") for _ in range(8)]
        assert all([await echo_round(ws, "hello") for ws in clients])
        two_workers.proc.send_signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 30)
            codes.append(ws.close_code)
        return codes

    assert run(main()) == [1001] * 8
    assert two_workers.proc.wait(30) == 0, two_workers.output.decode()


def test_broadcast_reaches_every_member_on_every_worker_once_in_order(two_workers: Served) -> None:
    per_publisher = 30

    async def main() -> None:
        clients: list[Connection] = []
        # Connect until both workers hold members (the kernel picks the worker; /info counts each one's room).
        while len(clients) < 4 or not all(i["connections"] for i in two_workers.infos(2).values()):
            clients.append(await connect(two_workers, "/broadcast"))
            assert len(clients) < 40, "every connection landed on one worker"
        total = len(clients) * per_publisher
        # Wait for every member to be in its worker's room and subscribed (a join is not acknowledged).
        await asyncio.sleep(0.5)

        async def publish(n: int, ws: Connection) -> None:
            for i in range(per_publisher):
                await ws.send(f"{n}:{i}")

        async def collect(ws: Connection) -> list[str]:
            got = []
            while len(got) < total:
                got.append(await asyncio.wait_for(ws.recv(), 30))
            return got

        collectors = [asyncio.ensure_future(collect(ws)) for ws in clients]
        await asyncio.gather(*(publish(n, ws) for n, ws in enumerate(clients)))
        results = await asyncio.gather(*collectors)
        for got in results:
            assert sorted(got) == sorted(f"{n}:{i}" for n in range(len(clients)) for i in range(per_publisher))
            for n in range(len(clients)):
                mine = [int(m.split(":")[1]) for m in got if m.split(":")[0] == str(n)]
                assert mine == list(range(per_publisher))
        # Exactly once: nothing more arrives.
        for ws in clients:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await ws.close()

    run(main())
    assert two_workers.stop() == 0


def test_sigkill_of_a_worker_its_broadcast_clients_reconnect_and_rejoin(two_workers: Served) -> None:
    async def members_on_both_workers(clients: list[Connection]) -> None:
        """Connect more /broadcast clients until each worker's room has members."""
        while len(clients) < 4 or not all(i["connections"] for i in two_workers.infos(2).values()):
            clients.append(await connect(two_workers, "/broadcast"))
            assert len(clients) < 40, "every connection landed on one worker"
        await asyncio.sleep(0.5)  # every member joined (the handler joins after the handshake)

    async def everyone_gets(clients: list[Connection], sender: Connection, text: str) -> None:
        await sender.send(text)
        for ws in clients:
            assert await asyncio.wait_for(ws.recv(), 20) == text

    async def main() -> float:
        clients: list[Connection] = []
        await members_on_both_workers(clients)
        await everyone_gets(clients, clients[0], "before")
        victim = two_workers.infos(2)[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(1.0)  # the kernel closed the dead worker's connections at once
        dead = [ws for ws in clients if ws.lost.done()]
        alive = [ws for ws in clients if not ws.lost.done()]
        assert dead and alive, (len(dead), len(alive))
        # The dead worker's clients reconnect (as a browser's chat page does) and the worker is replaced.
        infos = two_workers.infos(2, timeout=20)
        replaced = time.monotonic() - killed
        assert sorted(infos) == [0, 1] and infos[0]["pid"] != victim, infos
        clients = alive + [await connect(two_workers, "/broadcast") for _ in dead]
        await members_on_both_workers(clients)
        # Messages flow between every member again, from an old member and from one that reconnected.
        await everyone_gets(clients, alive[0], "after from a survivor")
        await everyone_gets(clients, clients[-1], "after from a new member")
        for ws in clients:
            with pytest.raises(TimeoutError):  # exactly once
                await asyncio.wait_for(ws.recv(), 0.3)
            await ws.close()
        return replaced

    replaced = run(main())
    assert replaced < 10, f"the worker was replaced after {replaced:.1f} s"
    assert two_workers.stop() == 0


def test_port_in_use_is_one_line_and_exit_2(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-P", "-m", "uringws", "serve", "--port", str(port), "--workers",
                               "2"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"uringws serve: port {port} on 127.0.0.1 is in use: stop the other server or pick another with --port"]


def test_workers_must_be_positive_or_auto(env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-P", "-m", "uringws", "serve", "--workers", "0"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("uringws serve: argument --workers: --workers '0': use a positive number or "
                                   "'auto' (see uringws serve --help)")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_second_signal_aborts_a_drain_that_waits_for_a_silent_client(env: dict[str, str], workers: str) -> None:
    import base64
    import socket

    served = Served(env, "--workers", workers, "--close-timeout", "20", tls=False)
    try:
        # A client that upgrades and then never reads or answers the close handshake: a drain waits for it.
        silent = socket.create_connection(("127.0.0.1", served.port))
        key = base64.b64encode(os.urandom(16)).decode()
        silent.sendall(f"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert silent.recv(4096).startswith(b"HTTP/1.1 101")
        served.proc.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            served.proc.wait(2)  # still draining: the silent client has 20 s to answer
        start = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(10) == 1
        assert time.monotonic() - start < 10
        silent.close()
    finally:
        served.kill()
    out = served.output + (served.proc.stdout.read() if served.proc.stdout else b"")
    assert b"a second signal" in out, out.decode()


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except FileNotFoundError:
        return True


def test_workers_exit_when_the_supervisor_is_killed(two_workers: Served) -> None:
    pids = [info["pid"] for info in two_workers.infos(2).values()]
    two_workers.proc.kill()
    two_workers.proc.wait()
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)


def test_sigterm_while_workers_start_exits_0(env: dict[str, str], tmp_path: Path) -> None:
    # A handler module that takes seconds to import keeps the workers starting while the signal comes.
    (tmp_path / "slowapp.py").write_text("import time\ntime.sleep(3)\n\nasync def handler(ws):\n    pass\n")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "uringws", "serve", "--port", str(free_port()), "--no-tls",
                             "--workers", "2", "--app", "slowapp:handler", "--app-dir", str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        children = b""
        while len(children.split()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the supervisor started no workers"
            time.sleep(0.05)
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children", "rb") as f:
                    children = f.read()
            except FileNotFoundError:
                pass
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()
