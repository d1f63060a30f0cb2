"""Helpers for the chaos tests: real faults from outside the process (network namespaces joined by a veth pair
with nftables dropping packets, SIGKILL, lowered rlimits, cgroup memory limits) against ``uringws serve``.

Everything the tests create outside the process (namespaces, nftables tables, cgroups) is named after this
process's pid, so parallel runs on one machine do not collide, and is removed on teardown even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme

NS_PREFIX = "uwchaos"
_counter = itertools.count()
T = TypeVar("T")

# RFC 2544's benchmarking range: never routed, so a mistake here cannot reach a real network.
SERVER_IP = "198.18.0.1"
CLIENT_IP = "198.18.0.2"


def run(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


# --- certificates ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chaos_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA and a server certificate for 127.0.0.1, localhost and the namespace server address."""
    d = tmp_path_factory.mktemp("chaos-certs")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost", SERVER_IP).private_key_and_cert_chain_pem.write_to_path(
        str(d / "server.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    return {"server": str(d / "server.pem"), "ca": str(d / "ca.pem")}


# --- the server under test --------------------------------------------------------------------------------------
def serve_cmd(port: int, certfile: str | None, host: str = "127.0.0.1", *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "uringws", "serve", "--host", host, "--port", str(port), "--app", "echo",
           "--no-compression", "--log-level", "warning"]
    cmd += ["--certfile", certfile] if certfile else ["--no-tls"]
    return cmd + list(extra)


def wait_serving(proc: subprocess.Popen[str], timeout: float = 60.0) -> list[str]:
    """Read the server's stdout until it says it is listening; its lines so far."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if " serving " in line:
            return lines
    proc.kill()
    rest = proc.communicate(timeout=10)[0] or ""
    raise RuntimeError(f"the server did not start (exit {proc.returncode}):\n{''.join(lines)}{rest}")


def start_server(cmd: list[str], env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)  # type: ignore[call-overload]
    wait_serving(proc)
    return proc


def stop_server(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """SIGTERM, then SIGKILL if it does not exit in time; everything it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out or ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env.setdefault("XDG_DATA_HOME", "/nonexistent-uringws-chaos")  # never touch the user's dev certificate
    return env


# --- network namespaces -----------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_namespaces() -> None:
    """Delete namespaces a killed earlier run left behind (their pid is gone); live runs' are left alone."""
    out = run("ip", "netns", "list", check=False).stdout
    for name in re.findall(rf"^({NS_PREFIX}(\d+)x\d+[sc])\b", out, re.M):
        if not _pid_alive(int(name[1])):
            run("ip", "netns", "del", name[0], check=False)


def netns_unavailable() -> str | None:
    """Why namespaces and nftables cannot be used here, or None."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create network namespaces"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"{tool!r} is missing: apt-get install {package}"
    probe = f"{NS_PREFIX}{os.getpid()}x{next(_counter)}s"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        nft = run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False)
        if nft.returncode != 0:
            return f"nftables does not work in a namespace: {nft.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class NetnsPair:
    """Two namespaces joined by a veth pair: the server at SERVER_IP, the client at CLIENT_IP."""

    server: str
    client: str
    drop_percent: dict[str, int] = field(default_factory=dict)

    def exec_cmd(self, ns: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *cmd]

    def drop(self, ns: str, percent: int) -> None:
        """Drop ``percent`` % of the packets arriving in ``ns``, at random, and count them."""
        match = "" if percent >= 100 else f"numgen random mod 100 < {percent} "
        rules = (f"add table inet chaos\n"
                 f"add chain inet chaos input {{ type filter hook input priority 0; policy accept; }}\n"
                 f"flush chain inet chaos input\n"
                 f"add rule inet chaos input {match}counter drop\n")
        proc = subprocess.run(self.exec_cmd(ns, ["nft", "-f", "-"]), input=rules, text=True, capture_output=True,
                              timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"nft in {ns} refused the drop rule: {proc.stderr.strip()}")
        self.drop_percent[ns] = percent

    def dropped(self, ns: str) -> int:
        """Packets the drop rule in ``ns`` has dropped so far."""
        out = run(*self.exec_cmd(ns, ["nft", "list", "table", "inet", "chaos"])).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def tcp_counter(self, ns: str, name: str) -> int:
        """A counter of the namespace's own TCP MIB (/proc/net/snmp is per namespace), e.g. RetransSegs."""
        text = run(*self.exec_cmd(ns, ["cat", "/proc/net/snmp"])).stdout
        head, values = [line.split() for line in text.splitlines() if line.startswith("Tcp:")][:2]
        return int(values[head.index(name)])


@contextlib.contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    sweep_stale_namespaces()
    tag = f"{NS_PREFIX}{os.getpid()}x{next(_counter)}"
    pair = NetnsPair(server=tag + "s", client=tag + "c")
    # Interface names are at most 15 bytes; the namespace is enough to keep them apart.
    try:
        run("ip", "netns", "add", pair.server)
        run("ip", "netns", "add", pair.client)
        run("ip", "link", "add", "uwc_s", "netns", pair.server, "type", "veth", "peer", "name", "uwc_c",
            "netns", pair.client)
        for ns, dev, ip in ((pair.server, "uwc_s", SERVER_IP), (pair.client, "uwc_c", CLIENT_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        # Deleting a namespace also deletes its end of the veth pair, and the other end with it.
        for ns in (pair.server, pair.client):
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def netns() -> Iterator[NetnsPair]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with netns_pair() as pair:
        yield pair


def namespaces_left(pair: NetnsPair) -> list[str]:
    out = run("ip", "netns", "list", check=False).stdout
    return [ns for ns in (pair.server, pair.client) if re.search(rf"^{ns}\b", out, re.M)]


def server_rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def server_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- clients ----------------------------------------------------------------------------------------------------
def client_tls(certs: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certs["ca"])


def run_async(coro: Coroutine[Any, Any, T], backend: str = "auto") -> T:
    """Run ``coro`` on uringws's own loop (``backend``: auto, io_uring or epoll), as a user would."""
    import uringws

    factory = uringws.new_event_loop if backend == "auto" else (lambda: uringws.new_event_loop(backend=backend))
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


async def echo_once(ws: Any, size: int, rng: random.Random, timeout: float = 60.0) -> None:
    """Send ``size`` random bytes and check that the echo is the same bytes (SHA-256)."""
    payload = rng.randbytes(size)
    async with asyncio.timeout(timeout):
        await ws.send(payload)
        echo = await ws.recv()
    assert isinstance(echo, bytes) and len(echo) == size, f"echo of {len(echo)} bytes for {size} sent"
    assert hashlib.sha256(echo).digest() == hashlib.sha256(payload).digest(), f"echo of {size} bytes corrupt"
