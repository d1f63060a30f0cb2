"""FastAPI under uvicorn on uringws's loop (``uvicorn --loop uringws:new_event_loop``), plain and TLS: HTTP,
streaming responses, WebSocket echo of 1 B - 8 MiB, many concurrent clients, lifespan at both ends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
trustme = pytest.importorskip("trustme")

from uringws.client import connect  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Uvicorn:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, lifespan_log: Path, ca: trustme.CA | None) -> None:
        self.proc, self.base, self.lifespan_log, self.ca = proc, base, lifespan_log, ca

    def client_ssl(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(params=["plain", "tls"])
def uvicorn_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Uvicorn]:
    port = _free_port()
    args = [sys.executable, "-m", "uvicorn", "--loop", "uringws:new_event_loop", "--port", str(port)]
    args += ["--host", "127.0.0.1", "--ws", "websockets-sansio", "--ws-max-size", str(16 * 1024 * 1024)]
    args += ["--log-level", "warning", "tests.e2e.asgi_app:app"]
    ca = None
    if request.param == "tls":
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        args += ["--ssl-keyfile", str(tmp_path / "server.pem"), "--ssl-certfile", str(tmp_path / "server.pem")]
    log = tmp_path / "lifespan.log"
    env = dict(os.environ, ASGI_TEST_LIFESPAN_LOG=str(log), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    scheme = "https" if ca else "http"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                stderr = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"uvicorn did not start: {stderr}") from None
            time.sleep(0.1)
    server = Uvicorn(proc, f"{scheme}://127.0.0.1:{port}", log, ca)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _http(server: Uvicorn) -> httpx.Client:
    return httpx.Client(base_url=server.base, verify=server.client_ssl() or False, timeout=30)


def test_http_streaming_and_the_loop(uvicorn_server: Uvicorn) -> None:
    with _http(uvicorn_server) as http:
        info = http.get("/loop").json()
        assert info == {"class": "uringws.tls.loopmixin.TLSEventLoop", "backend": "io_uring"}
        body = http.get("/stream", params={"chunks": 300, "size": 7000}).content
        assert body == b"".join(bytes([i % 256]) * 7000 for i in range(300))
    assert uvicorn_server.lifespan_log.read_text().startswith("started TLSEventLoop")


def test_websocket_echo_sizes_and_concurrency(uvicorn_server: Uvicorn) -> None:
    ws_base = uvicorn_server.base.replace("http", "ws", 1) + "/ws"
    client_ssl = uvicorn_server.client_ssl()
    sizes = [1, 125, 126, 65535, 65536, 1 << 20, 8 << 20]

    async def one_client(seed: int, count: int) -> int:
        rng = random.Random(seed)
        async with connect(ws_base, ssl=client_ssl, max_size=16 << 20) as ws:
            for i in range(count):
                size = sizes[i % len(sizes)] if seed == 0 else rng.randrange(1, 70_000)
                payload = rng.randbytes(size)
                await ws.send(payload if i % 2 else payload.hex()[:size])
                echoed = await ws.recv()
                expected = payload if i % 2 else payload.hex()[:size]
                assert hashlib.sha256(echoed if isinstance(echoed, bytes) else echoed.encode()).digest() == (
                    hashlib.sha256(expected if isinstance(expected, bytes) else expected.encode()).digest()
                ), f"client {seed} message {i} ({size} B) corrupted"
        return count

    async def main() -> int:
        big = one_client(0, 2 * len(sizes))  # every size, as text and as binary
        many = [one_client(seed, 20) for seed in range(1, 41)]  # 40 concurrent connections
        return sum(await asyncio.gather(big, *many))

    assert asyncio.run(main()) == 2 * len(sizes) + 40 * 20


def test_lifespan_shutdown_on_sigterm(uvicorn_server: Uvicorn) -> None:
    with _http(uvicorn_server) as http:
        assert http.get("/loop").status_code == 200
    uvicorn_server.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises the signal it caught so the exit status tells what stopped it.
    assert uvicorn_server.proc.wait(20) in (0, -signal.SIGTERM)
    assert uvicorn_server.lifespan_log.read_text().splitlines() == ["started TLSEventLoop", "stopped"]


def test_gunicorn_with_uvicorn_workers_on_the_ring(tmp_path: Path) -> None:
    """``gunicorn -k`` a UvicornWorker whose CONFIG_KWARGS name uringws's loop: two workers, both on the ring."""
    pytest.importorskip("gunicorn")
    port = _free_port()
    args = [sys.executable, "-m", "gunicorn", "-k", "tests.e2e.asgi_app.UringWorker", "-w", "2"]
    args += ["-b", f"127.0.0.1:{port}", "--log-level", "warning", "tests.e2e.asgi_app:app"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), ASGI_TEST_LIFESPAN_LOG=str(tmp_path / "lifespan.log"))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while time.monotonic() < deadline:
                try:
                    info = http.get("/loop").json()
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                    time.sleep(0.2)
                    continue
                assert info == {"class": "uringws.tls.loopmixin.TLSEventLoop", "backend": "io_uring"}
                seen.add(info["class"])
                break
        assert seen, "gunicorn never answered"
        # Both workers ran the lifespan on uringws's loop.
        deadline = time.monotonic() + 30
        while (tmp_path / "lifespan.log").read_text().count("started TLSEventLoop") < 2:
            assert time.monotonic() < deadline, (tmp_path / "lifespan.log").read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
