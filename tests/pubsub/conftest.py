"""A real redis-server per test, on a free port, that a test can SIGKILL and restart on the same port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``; ``persistent`` keeps an fsync'ed append-only file in ``dir``."""

    def __init__(self, port: int, dir: Path, persistent: bool = False) -> None:
        self.port = port
        self.dir = dir
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            [*args, *persistence], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} on port {self.port}")
            if self.command(b"PING") == b"+PONG\r\n":
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within 20 s")

    def command(self, *args: bytes) -> bytes:
        """One RESP command over a fresh socket; the raw reply (b"" if not reachable)."""
        payload = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(payload)
                return s.recv(65536)
        except OSError:
            return b""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; connections are reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()


def _missing_redis() -> None:
    reason = "redis-server is not installed (apt-get install redis-server)"
    if os.environ.get("URINGWS_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason}, and URINGWS_REQUIRE_REDIS=1 requires it")
    pytest.skip(reason)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        _missing_redis()
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        _missing_redis()
    server = RedisServer(free_port(), tmp_path, persistent=True)
    server.start()
    yield server
    server.stop()
