"""``uringws torture`` passes against a correct echo server and names the failure of a broken stream."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from uringws.tools import torture

from .faultproxy import FaultProxy

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"server": str(d / "server.pem"), "ca": str(d / "ca.pem")}


WEBSOCKETS_ECHO = """
import asyncio, ssl, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    ctx = None
    if len(sys.argv) > 2:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2])
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), ssl=ctx, max_size=None, compression=None) as s:
        await s.serve_forever()
asyncio.run(main())
"""


def start_server(code: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, str(port), *args])
    try:
        wait_port(port)
    except BaseException:
        proc.kill()
        raise
    return proc, port


@pytest.fixture(scope="module")
def websockets_tls_server(certs: dict[str, str]) -> Iterator[int]:
    proc, port = start_server(WEBSOCKETS_ECHO, certs["server"])
    yield port
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def websockets_plain_server() -> Iterator[int]:
    proc, port = start_server(WEBSOCKETS_ECHO)
    yield port
    proc.kill()
    proc.wait()


def cfg(url: str, **kw: object) -> torture.TortureConfig:
    base: dict[str, object] = {"connections": 4, "messages": 6, "max_size": 1 << 20, "timeout": 120.0}
    base.update(kw)
    return torture.TortureConfig(url=url, **base)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_passes_against_websockets_over_tls(websockets_tls_server: int, certs: dict[str, str],
                                            version: str) -> None:
    import asyncio

    c = cfg(f"wss://127.0.0.1:{websockets_tls_server}/", cafile=certs["ca"], tls_version=version)
    result = asyncio.run(torture.run(c))
    assert result.failures == []
    assert result.passed == 4
    assert result.messages_ok == 4 * 6
    assert result.bytes_ok == sum(sum(torture.message_sizes(c, i)) for i in range(4))


def test_dropped_bytes_are_reported_as_bad_record_mac(websockets_tls_server: int, certs: dict[str, str]) -> None:
    """The seed bug, replayed by a proxy: 444 bytes of the server's output vanish after the first 64 KiB."""
    import asyncio

    proxy = FaultProxy(("127.0.0.1", websockets_tls_server), drop=(65536, 444))
    with proxy.running():
        c = cfg(f"wss://127.0.0.1:{proxy.port}/", cafile=certs["ca"], connections=2, messages=3,
                min_size=200_000, max_size=400_000)
        result = asyncio.run(torture.run(c))
    assert result.passed == 0
    assert len(result.failures) == 2
    for f in result.failures:
        assert f.kind == "BadRecordMac", f
        assert f.message == 0  # the first echo is the one that crosses offset 64 KiB


def test_cli_exit_status_and_final_line(websockets_tls_server: int, certs: dict[str, str]) -> None:
    proxy = FaultProxy(("127.0.0.1", websockets_tls_server), drop=(65536, 444))
    with proxy.running():
        proc = subprocess.run(
            [sys.executable, "-m", "uringws", "torture", f"wss://127.0.0.1:{proxy.port}/", "--cafile", certs["ca"],
             "-c", "2", "-n", "2", "--min-size", "100K", "--max-size", "200K", "--no-progress"],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "0 passed, 2 failed"
    assert any("BadRecordMac: connection 0, message 0" in line for line in lines)

    ok = subprocess.run(
        [sys.executable, "-m", "uringws", "torture", f"wss://127.0.0.1:{websockets_tls_server}/",
         "--cafile", certs["ca"], "-c", "2", "-n", "3", "--max-size", "256K", "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "2 passed, 0 failed"


def test_flipped_byte_on_plain_ws_is_corrupt(websockets_plain_server: int) -> None:
    import asyncio

    # Offset 100_000 lies inside the payload of the first (large) echo, past the frame header.
    proxy = FaultProxy(("127.0.0.1", websockets_plain_server), flip=100_000)
    with proxy.running():
        c = cfg(f"ws://127.0.0.1:{proxy.port}/", connections=1, messages=2, min_size=300_000, max_size=300_000)
        result = asyncio.run(torture.run(c))
    assert [f.kind for f in result.failures] == ["corrupt"]


def test_unreachable_server_exits_2() -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "uringws", "torture", f"ws://127.0.0.1:{port}/", "-c", "1",
                           "--no-progress"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot connect" in proc.stderr


def test_bad_url_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "uringws", "torture", "http://example.invalid/"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 2
    assert "ws://" in proc.stderr


def torture_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uringws", "torture", *args, "-c", "3", "-n", "2", "--max-size",
                           "64K", "--no-progress"], capture_output=True, text=True, timeout=timeout)


def setup_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Nothing could be tested: one line on stderr, exit status 2, and not one FAIL line per connection."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("uringws torture: "), proc.stderr
    assert "FAIL" not in proc.stdout
    return lines[0]


def test_untrusted_certificate_says_once_what_to_do(websockets_tls_server: int) -> None:
    line = setup_error(torture_cli(f"wss://127.0.0.1:{websockets_tls_server}/"))
    assert "not trusted" in line and "--cafile" in line and "--insecure" in line


def test_ws_url_on_a_tls_port(websockets_tls_server: int) -> None:
    assert "use wss://" in setup_error(torture_cli(f"ws://127.0.0.1:{websockets_tls_server}/"))


def test_wss_url_on_a_plain_port(websockets_plain_server: int) -> None:
    assert "use ws://" in setup_error(torture_cli(f"wss://127.0.0.1:{websockets_plain_server}/", "--insecure"))


WEBSOCKETS_SINK = """
import asyncio, sys
from websockets.asyncio.server import serve
async def sink(ws):
    async for m in ws:
        pass
async def main():
    async with serve(sink, "127.0.0.1", int(sys.argv[1]), max_size=None, compression=None, ping_interval=0.5) as s:
        await s.serve_forever()
asyncio.run(main())
"""


def test_server_that_does_not_echo_fails_fast() -> None:
    """Even though it pings (twice a second, more often than --idle-timeout): pings are not echoes."""
    proc, port = start_server(WEBSOCKETS_SINK)
    try:
        started = time.monotonic()
        # --timeout 90: without the idle watchdog the run would last that long; with it, ~2 s.
        run = torture_cli(f"ws://127.0.0.1:{port}/", "--idle-timeout", "2", "--timeout", "90")
        elapsed = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert run.returncode == 1, run.stdout + run.stderr
    fails = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, run.stdout  # three connections alike, one line
    assert "no-echo" in fails[0] and "does the server at this URL echo?" in fails[0]
    assert "(and 2 more connections alike)" in fails[0]
    assert run.stdout.strip().splitlines()[-1] == "0 passed, 3 failed"
    assert elapsed < 60, elapsed


def test_progress_bar_counts_in_mib() -> None:
    import io
    from types import SimpleNamespace

    from rich.console import Console
    from rich.progress import Progress

    columns = torture.progress_columns()
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    bar = Progress(*columns, console=console, auto_refresh=False)
    task = bar.add_task("echoes verified", total=3 << 20)
    bar.update(task, advance=3 << 19)
    console.print(bar.get_renderable())
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "1.5/3.0 MiB" in shown, shown
    assert columns[-1].render(SimpleNamespace(finished_speed=None, speed=5 << 20)).plain == "5.0 MiB/s"
