"""``uringws serve``: the embedded defaults work, torture passes against it, and every user error is one line
with exit status 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_torture import free_port, wait_port


def serve_cmd(*args: str) -> list[str]:
    # -P: no working directory on sys.path, as for the installed `uringws` script
    return [sys.executable, "-P", "-m", "uringws", "serve", *args]


@pytest.fixture
def data_home(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))


def start(args: list[str], env: dict[str, str], port: int, cwd: Path | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(serve_cmd(*args), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        wait_port(port)
    except BaseException:
        proc.kill()
        print(proc.communicate()[0])
        raise
    return proc


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    return out


@pytest.fixture
def echo_proc(data_home: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port()
    proc = start(["--port", str(port), "--app", "echo", "--sndbuf", "4096", "--no-compression"], data_home, port)
    yield port, proc
    out = stop(proc)
    assert proc.returncode == 0, out


@pytest.fixture
def echo_server(echo_proc: tuple[int, subprocess.Popen[str]]) -> int:
    return echo_proc[0]


def test_defaults_print_certificate_and_backend(data_home: dict[str, str]) -> None:
    port = free_port()
    proc = start(["--port", str(port)], data_home, port)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/info", context=ctx, timeout=10) as r:
        info = json.load(r)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=ctx, timeout=10) as r:
        page = r.read()
    out = stop(proc, signal.SIGINT)
    assert proc.returncode == 0, out
    assert b"Integrity self-test" in page
    assert info["backend"] in ("io_uring", "epoll")
    assert f"https://127.0.0.1:{port}/" in out
    assert "SHA-256 fingerprint" in out
    assert "backend:" in out
    cert = Path(data_home["XDG_DATA_HOME"]) / "uringws" / "devcert.pem"
    assert cert.exists() and str(cert) in out


def test_torture_passes_against_our_server(echo_server: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "uringws", "torture", f"wss://127.0.0.1:{echo_server}/",
                           "--insecure", "-c", "6", "-n", "6", "--max-size", "2M", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "6 passed, 0 failed"


def test_torture_with_ws_url_on_our_tls_port(echo_server: int) -> None:
    # uringws closes a plain-text request on its TLS port without a byte: torture asks the port what it speaks.
    proc = subprocess.run([sys.executable, "-m", "uringws", "torture", f"ws://127.0.0.1:{echo_server}/", "-c", "3",
                           "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == ("uringws torture: the server speaks TLS on this port: use wss:// (with --cafile "
                                   "or --insecure for a self-signed certificate)")


PICOWS_ECHO = """
import asyncio, ssl, sys
import uvloop
from picows import ws_create_server, WSListener, WSMsgType, WSFrame, WSTransport

class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        else:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2])
    server = await ws_create_server(lambda r: Echo(), "127.0.0.1", int(sys.argv[1]), ssl=ctx,
                                    max_frame_size=64 << 20)
    await server.serve_forever()
uvloop.run(main())
"""


def test_torture_passes_against_picows(tmp_path: Path) -> None:
    pytest.importorskip("picows")
    pytest.importorskip("uvloop")
    import trustme

    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", PICOWS_ECHO, str(port), str(pem)])
    try:
        wait_port(port)
        # picows echoes frame by frame: fragmented messages come back fragmented, which torture reassembles.
        proc = subprocess.run([sys.executable, "-m", "uringws", "torture", f"wss://127.0.0.1:{port}/",
                               "--cafile", str(tmp_path / "ca.pem"), "-c", "4", "-n", "5", "--max-size", "2M",
                               "--no-progress"], capture_output=True, text=True, timeout=300)
    finally:
        server.kill()
        server.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "4 passed, 0 failed"


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("uringws serve: ")
    return lines[0]


def test_port_in_use(data_home: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(serve_cmd("--port", str(port)), env=data_home, capture_output=True, text=True,
                              timeout=60)
    line = one_line_error(proc)
    assert f"port {port}" in line and "--port" in line


def test_unreadable_certificate(data_home: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    proc = subprocess.run(serve_cmd("--port", str(free_port()), "--certfile", str(bad)), env=data_home,
                          capture_output=True, text=True, timeout=60)
    assert str(bad) in one_line_error(proc)
    missing = tmp_path / "nope.pem"
    proc = subprocess.run(serve_cmd("--port", str(free_port()), "--certfile", str(missing)), env=data_home,
                          capture_output=True, text=True, timeout=60)
    assert str(missing) in one_line_error(proc)


@pytest.mark.parametrize("spec, words", [
    ("no_such_module_xyz:handler", "cannot import"),
    ("json:no_such_handler", "no attribute"),
    ("just_a_name", "MODULE:HANDLER"),
])
def test_handler_that_cannot_be_imported(data_home: dict[str, str], spec: str, words: str) -> None:
    proc = subprocess.run(serve_cmd("--port", str(free_port()), "--app", spec), env=data_home,
                          capture_output=True, text=True, timeout=60)
    assert words in one_line_error(proc)


SHOUT = "async def shout(ws):\n    async for m in ws:\n        await ws.send(m.upper())\n"


@pytest.mark.parametrize("where", ["working directory", "--app-dir"])
def test_custom_handler_module_and_plain_ws(data_home: dict[str, str], tmp_path: Path, where: str) -> None:
    # -P keeps the working directory off sys.path, as it is for the installed `uringws` script: the module is
    # found only because serve looks in --app-dir (default: the working directory).
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "myapp.py").write_text(SHOUT)
    port = free_port()
    args = ["--port", str(port), "--app", "myapp:shout", "--no-tls"]
    if where == "--app-dir":
        args += ["--app-dir", str(app_dir)]
    proc = start(args, data_home, port, cwd=app_dir if where == "working directory" else tmp_path)
    try:
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/x") as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "HELLO"
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "WARNING: --no-tls" in out


def test_max_memory_reaches_the_server(data_home: dict[str, str]) -> None:
    """--max-memory is the server's budget: a message over it gets 1009, a smaller one on another connection is
    echoed (the default 256M, and the one-line error for a bad size, are in test_cli)."""
    from websockets.exceptions import ConnectionClosedError
    from websockets.sync.client import connect

    port = free_port()
    proc = start(["--port", str(port), "--app", "echo", "--no-tls", "--max-size", "4M", "--max-memory", "1M"],
                 data_home, port)
    try:
        with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            ws.send(b"x" * (2 << 20))
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009, info.value
        assert "memory budget" in info.value.rcvd.reason
        with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            ws.send(b"y" * (512 << 10))
            assert ws.recv(timeout=10) == b"y" * (512 << 10)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out


def test_app_dir_errors(data_home: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(serve_cmd("--app", "myapp:shout", "--app-dir", str(tmp_path / "nope")), env=data_home,
                          capture_output=True, text=True, timeout=60)
    assert "--app-dir" in one_line_error(proc)
    proc = subprocess.run(serve_cmd("--app", "myapp:shout", "--app-dir", str(tmp_path)), env=data_home,
                          capture_output=True, text=True, timeout=60)
    line = one_line_error(proc)
    assert "cannot import 'myapp'" in line and "--app-dir" in line


def test_sigterm_closes_connections_with_1001(echo_proc: tuple[int, subprocess.Popen[str]]) -> None:
    # The fixture's teardown asserts exit status 0; here, a client sees close code 1001 on shutdown.
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    port, server = echo_proc
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with connect(f"wss://127.0.0.1:{port}/", ssl=ctx) as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        server.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=20)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    server.wait(timeout=20)  # a second SIGTERM (the fixture's) while it exits would kill it


def test_sigterm_right_after_failed_tls_handshakes(echo_proc: tuple[int, subprocess.Popen[str]]) -> None:
    # Scanners and health checks: TCP connect + close, plain HTTP to the TLS port, random bytes. None of them may
    # hold up shutdown (before: 15 s, "did not close in time").
    port, server = echo_proc
    socket.create_connection(("127.0.0.1", port), timeout=10).close()
    for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(64)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(junk)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    out, _ = server.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert server.returncode == 0, out
    assert "did not close in time" not in out
    assert elapsed < 5, (elapsed, out)  # about 0.1 s; the margin is for a loaded machine


def scrape(port: int) -> dict[str, float]:
    """GET /metrics -> {'name{labels}': value}; fails unless it is the Prometheus text format."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=ctx, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_after_torture_with_short_sends(echo_proc: tuple[int, subprocess.Popen[str]]) -> None:
    port = echo_proc[0]
    before = scrape(port)
    assert before["uringws_connections_opened_total"] == 0
    with socket.create_connection(("127.0.0.1", port)) as sock:  # not TLS: a failed TLS handshake
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        sock.recv(100)
    proc = subprocess.run([sys.executable, "-m", "uringws", "torture", f"wss://127.0.0.1:{port}/",
                           "--insecure", "-c", "4", "-n", "4", "--max-size", "1M", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deadline = time.monotonic() + 10
    while True:  # the server counts a connection once its close completed
        m = scrape(port)
        if m["uringws_connections_open"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert m["uringws_connections_opened_total"] == 4, m
    assert m["uringws_connections_open"] == 0, m
    assert sum(v for k, v in m.items() if k.startswith("uringws_connections_closed_total{")) == 4, m
    assert m['uringws_handshake_failures_total{reason="tls"}'] >= 1, m
    assert m["uringws_messages_received_total"] >= 16, m  # 4 connections x 4 messages, each echoed
    assert m["uringws_messages_sent_total"] == m["uringws_messages_received_total"], m
    assert m["uringws_sent_bytes_total"] > 4 * 4 * 1024, m
    if any(k.startswith("uringws_info{") and 'backend="io_uring"' in k for k in m):
        # SO_SNDBUF 4 KiB: the echoes of large messages completed short, and their rest went again.
        short = m['uringws_send_short_total{path="ring"}'] + m['uringws_send_short_total{path="direct"}']
        assert short > 0, m
        assert m["uringws_send_resent_bytes_total"] > 0, m
        assert m["uringws_send_queue_max_bytes"] > 4096, m


def test_batch_wait_reaches_the_loop(data_home: dict[str, str]) -> None:
    """--batch-wait-us turns on the loop's completion batching: the banner says so and echoes stay intact."""
    from websockets.sync.client import connect

    port = free_port()
    proc = start(["--port", str(port), "--app", "echo", "--no-tls", "--batch-wait-us", "50"], data_home, port)
    try:
        with connect(f"ws://127.0.0.1:{port}/") as ws:
            for i in range(50):
                ws.send(f"m{i}")
            assert [ws.recv(timeout=10) for _ in range(50)] == [f"m{i}" for i in range(50)]
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert "completion batching up to 50 us" in out, out


@pytest.mark.parametrize(("args", "words"), [
    (["--batch-wait-us", "-5"], "between 0 and 1 second"),
    (["--batch-wait-us", "50", "--backend", "epoll"], "needs the io_uring backend"),
])
def test_batch_wait_errors(data_home: dict[str, str], args: list[str], words: str) -> None:
    r = subprocess.run(serve_cmd("--port", str(free_port()), "--no-tls", *args), env=data_home,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
