"""Attack harness: a uringws server (one column per source tree) and the websockets server, attacked side by side.

Each server is its own process on 127.0.0.1 with the same throwaway certificate (trustme, written to a temporary
directory and deleted afterwards), so its RSS and fds are read from /proc/PID. Every row starts a fresh server.
The attackers speak raw TCP/TLS/WebSocket bytes from this process (asyncio); a canary process does 1 KiB echoes
on its own connection throughout a row, so its latency is what a well-behaved client sees during the attack.

    python benchmarks/attack.py --quick --tree before=/work/base --tree after=. --json out.json
    python benchmarks/attack.py --quick --tree after=. --no-websockets --update docs/attacks.json

``--update`` merges the new columns into an earlier JSON file and prints the table of all its columns. Every
loop is bounded in count and time; method and results: docs/attacks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import platform
import random
import resource
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
HERE = Path(__file__).resolve()
ECHO_TIMEOUT = 5.0  # a canary echo slower than this counts as a timeout and the canary reconnects
EXIT_CAP = 30.0  # SIGTERM: wait this long for the server to exit, then kill it and report ">30"


# --- WebSocket wire format (client side: masked frames) ----------------------------------------------------------
def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True,
             length: int | None = None) -> bytes:
    """One frame; ``length`` overrides the length field (to lie about it), ``mask=False`` breaks RFC 6455 5.1."""
    n = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head.append(mbit | n)
    elif n < 1 << 16:
        head.append(mbit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(mbit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    keyed = (key * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(keyed, "big")).to_bytes(len(payload), "big")
    return bytes(head) + key + masked


def upgrade_request(port: int, path: str = "/echo", extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n").encode() + extra + b"\r\n"


def close_code(payload: bytes) -> str:
    return str(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else "1005"


def client_context(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = False  # the certificate names 127.0.0.1 and localhost; we dial the address
    return ctx


# --- blocking client: the canary process -------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("EOF")
        buf += chunk
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    return b0 & 0x0F, _recv_exact(sock, n)


def _blocking_open(port: int, ctx: ssl.SSLContext) -> socket.socket:
    raw = socket.create_connection((HOST, port), timeout=ECHO_TIMEOUT)
    sock = ctx.wrap_socket(raw)
    sock.sendall(upgrade_request(port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("EOF during the opening handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def canary_main(args: argparse.Namespace) -> int:
    """1 KiB binary echoes one at a time every ``interval`` until SIGINT; prints a JSON summary."""
    # A harness started in the background by a shell inherits SIGINT ignored, and so would we: then the
    # harness's SIGINT never stops us and every canary column comes out empty.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ctx = client_context(args.cafile)
    payload = os.urandom(1024)
    frame = ws_frame(0x2, payload)
    lat: list[float] = []
    timeouts = errors = 0
    sock: socket.socket | None = None
    announced = False
    try:
        while True:
            try:
                if sock is None:
                    sock = _blocking_open(args.port, ctx)
                if not announced:
                    print("OPEN", flush=True)
                    announced = True
                t0 = time.perf_counter()
                sock.sendall(frame)
                while True:
                    op, data = _recv_frame(sock)
                    if op == 0x9:
                        sock.sendall(ws_frame(0xA, data))
                    elif op == 0x8:
                        raise ConnectionError(f"closed by the server ({close_code(data)})")
                    elif op == 0x2:
                        break
                lat.append(time.perf_counter() - t0)
                if data != payload:
                    errors += 1
            except TimeoutError:
                timeouts += 1
                _drop(sock)
                sock = None
            except (OSError, ConnectionError):
                errors += 1
                _drop(sock)
                sock = None
                time.sleep(0.1)
            if not announced:  # could not connect at all: say so, keep trying
                print("OPEN", flush=True)
                announced = True
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"n": len(lat), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
                      "max_ms": max(lat) * 1000 if lat else None, "timeouts": timeouts, "errors": errors}),
          flush=True)
    return 0


def _drop(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * p / 100))] * 1000


# --- the websockets reference server -----------------------------------------------------------------------------
def websockets_main(args: argparse.Namespace) -> int:
    """websockets' asyncio server with its defaults (max_size raised to uringws serve's 16 MiB); SIGTERM closes
    every connection with 1001 as its documentation's deployment example does."""
    import logging

    from websockets.asyncio.server import ServerConnection, serve

    logging.disable(logging.CRITICAL)

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.certfile, args.keyfile)
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        async with serve(echo, HOST, args.port, ssl=ctx, max_size=16 << 20):
            print("READY", flush=True)
            await stop

    asyncio.run(main())
    return 0


# --- servers under test ------------------------------------------------------------------------------------------
@dataclass
class Column:
    name: str
    kind: str  # "uringws" or "websockets"
    tree: str | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """One server process; ``rss()``/``fds()`` read /proc; ``terminate()`` times SIGTERM to exit."""

    def __init__(self, col: Column, cert: tuple[str, str], logdir: Path) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if col.kind == "uringws":
            assert col.tree is not None
            env["PYTHONPATH"] = col.tree
            cmd = [sys.executable, "-m", "uringws", "serve", "--app", "echo", "--host", HOST, "--port",
                   str(self.port), "--certfile", cert[0], "--keyfile", cert[1]]
            ready = b"Ctrl-C to stop"
        else:
            cmd = [sys.executable, str(HERE), "serve-websockets", "--port", str(self.port), "--certfile", cert[0],
                   "--keyfile", cert[1]]
            ready = b"READY"
        self.log = open(logdir / f"{col.name}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=col.tree or None, stdout=subprocess.PIPE, stderr=self.log)
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if ready in line:
                break
            if not line:
                self.stop()
                raise RuntimeError(f"{col.name}: server did not start (see {self.log.name})")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its stdout pipe drained

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> float | str:
        """SIGTERM; seconds until the process exited, or '>30' if it had to be killed."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(EXIT_CAP)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return f">{EXIT_CAP:g}"
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Sampler:
    """The server's RSS every 50 ms on a thread (the attack's own loop may be too busy to sample)."""

    def __init__(self, srv: Server) -> None:
        self.srv, self.peak, self._stop = srv, srv.rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, self.srv.rss())

    def reset(self) -> None:
        self.peak = self.srv.rss()

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@contextlib.asynccontextmanager
async def canary(srv: Server, cafile: str, out: dict[str, Any]) -> AsyncIterator[None]:
    """A canary process echoing 1 KiB every 20 ms for the duration of the block; its summary lands in ``out``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "canary", "--port", str(srv.port), "--cafile", cafile, "--interval", "0.02",
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 20)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            line = await asyncio.wait_for(proc.stdout.read(), 20)
            out.update(json.loads(line.decode().strip().splitlines()[-1]))
        except (TimeoutError, ValueError, IndexError):
            proc.kill()
            out["error"] = "canary gave no summary"
        await proc.wait()


def canary_metrics(c: dict[str, Any]) -> dict[str, Any]:
    return {"canary p50 ms": c.get("p50_ms"), "canary p99 ms": c.get("p99_ms"), "canary max ms": c.get("max_ms"),
            "canary timeouts (>5 s) / errors": f"{c.get('timeouts')} / {c.get('errors')}"
                                               if "error" not in c else c["error"]}


# --- asyncio attackers -------------------------------------------------------------------------------------------
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def ws_open(port: int, ctx: ssl.SSLContext, extra: bytes = b"") -> tuple[Reader, Writer]:
    reader, writer = await asyncio.open_connection(HOST, port, ssl=ctx, limit=1 << 16)
    writer.write(upgrade_request(port, extra=extra))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return reader, writer


async def read_frame(reader: Reader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return b0 & 0x0F, await reader.readexactly(n)


async def await_close(reader: Reader, timeout: float) -> str:
    """What the server answers: its close code, 'EOF' (no close frame), 'RST', or 'open at Ns'."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                op, data = await read_frame(reader)
                if op == 0x8:
                    return close_code(data)
    except TimeoutError:
        return f"open at {timeout:g} s"
    except asyncio.IncompleteReadError:
        return "EOF"
    except (ConnectionError, ssl.SSLError, OSError) as exc:
        return "RST" if isinstance(exc, ConnectionResetError) else type(exc).__name__


async def time_to_eof(reader: Reader, cap: float) -> float | str:
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(cap):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return f">{cap:g}"
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return time.monotonic() - t0


def abort(writer: Writer) -> None:
    """Close with RST (SO_LINGER 0): what a crashed or hostile peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def bounded(n: int, concurrency: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with sem:
            try:
                return await fn(i)
            except (OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                return exc

    return await asyncio.gather(*(one(i) for i in range(n)))


# --- rows --------------------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    quick: bool
    cafile: str
    client: ssl.SSLContext = field(init=False)

    def __post_init__(self) -> None:
        self.client = client_context(self.cafile)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


MB = 1 << 20


def mb(b: float) -> float:
    return b / MB


async def row_tls_fail(srv: Server, c: Ctx) -> dict[str, Any]:
    """Failed TLS handshakes: TCP connect+close, a plain HTTP request, random bytes, in turn."""
    warm, more = c.n(6000, 600), c.n(9000, 900)
    fds0 = srv.fds()
    closed_by_server = Counter[str]()

    async def attempt(i: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        kind = ("tcp", "http", "random")[i % 3]
        if kind == "http":
            writer.write(b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n")
        elif kind == "random":
            writer.write(random.randbytes(512))
        if kind != "tcp":
            if isinstance(await time_to_eof(reader, 0.5), float):
                closed_by_server[kind] += 1
        writer.transport.close()

    t0 = time.monotonic()
    await bounded(warm, 32, attempt)
    await asyncio.sleep(1)
    rss_warm = srv.rss()
    sampler = Sampler(srv)
    await bounded(more, 32, lambda i: attempt(i + warm))
    await asyncio.sleep(1)
    peak, rss_after, fds1 = sampler.close(), srv.rss(), srv.fds()
    elapsed = time.monotonic() - t0
    exit_s = await asyncio.to_thread(srv.terminate)
    garbage = (warm + more) * 2 // 3
    return {"connections": f"warm-up {warm}, then {more} more, in {elapsed:.0f} s",
            "RSS after warm-up MB": mb(rss_warm), "RSS peak over the rest MB": mb(peak),
            "RSS after the rest MB": mb(rss_after), "RSS growth over the rest MB": mb(rss_after - rss_warm),
            "RSS growth per connection KiB": (rss_after - rss_warm) / 1024 / more,
            "fds before / after": f"{fds0} / {fds1}",
            "HTTP/random conns the server closed within 0.5 s": f"{sum(closed_by_server.values())} / {garbage}",
            "SIGTERM to exit s": exit_s}


async def row_ping_flood(srv: Server, c: Ctx) -> dict[str, Any]:
    """One connection writes 125-byte pings as fast as the socket takes them and never reads."""
    duration = c.n(20, 8)
    can: dict[str, Any] = {}
    rss0 = srv.rss()
    sampler = Sampler(srv)
    sent = 0
    closed_at: float | str = f"open at {duration} s"
    batch = b"".join(ws_frame(0x9, os.urandom(125)) for _ in range(64))
    async with canary(srv, c.cafile, can):
        _reader, writer = await ws_open(srv.port, c.client)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < duration:
                writer.write(batch)
                sent += 64
                async with asyncio.timeout(max(0.1, duration - (time.monotonic() - t0))):
                    await writer.drain()
                if writer.is_closing():
                    closed_at = round(time.monotonic() - t0, 2)
                    break
        except TimeoutError:
            pass
        except (ConnectionError, ssl.SSLError, OSError):
            closed_at = round(time.monotonic() - t0, 2)
        abort(writer)
    return {**canary_metrics(can), "RSS before MB": mb(rss0), "RSS peak MB": mb(sampler.close()),
            "pings written": sent, "flooder closed by the server at s": closed_at}


async def row_push64k(srv: Server, c: Ctx) -> dict[str, Any]:
    """Clients each push 64 KiB binary messages as fast as they can and never read the echoes."""
    clients, duration = c.n(300, 100), c.n(20, 8)
    can: dict[str, Any] = {}
    rss0 = srv.rss()
    sampler = Sampler(srv)
    frame = ws_frame(0x2, os.urandom(64 << 10))
    pushed = 0
    outcomes = Counter[str]()

    async def pusher(i: int) -> None:
        nonlocal pushed
        try:
            async with asyncio.timeout(15):
                _reader, writer = await ws_open(srv.port, c.client)
        except TimeoutError:
            outcomes["open timeout"] += 1
            return
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < duration:
                writer.write(frame)
                async with asyncio.timeout(max(0.1, duration - (time.monotonic() - t0))):
                    await writer.drain()
                pushed += 1
            outcomes["open at end"] += 1
        except TimeoutError:
            outcomes["open at end"] += 1
        except (ConnectionError, ssl.SSLError, OSError):
            outcomes["closed by server"] += 1
        abort(writer)

    async with canary(srv, c.cafile, can):
        res = await bounded(clients, clients, pusher)
    outcomes.update(f"open failed: {type(r).__name__}" for r in res if isinstance(r, BaseException))
    return {**canary_metrics(can), "RSS before MB": mb(rss0), "RSS peak MB": mb(sampler.close()),
            "clients": f"{clients} x {duration} s", "messages pushed": pushed,
            "client outcomes": ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))}


async def row_slowloris(srv: Server, c: Ctx) -> dict[str, Any]:
    """TLS connections that send the upgrade request one byte a second (it would take minutes to complete)."""
    conns, window = c.n(200, 50), c.n(30, 15)
    can: dict[str, Any] = {}
    rss0 = srv.rss()
    sampler = Sampler(srv)
    head = upgrade_request(srv.port)

    async def loris(i: int) -> float | str:
        reader, writer = await asyncio.open_connection(HOST, srv.port, ssl=c.client)
        t0 = time.monotonic()
        eof = asyncio.ensure_future(time_to_eof(reader, window))
        for b in head:
            if eof.done() or time.monotonic() - t0 >= window:
                break
            with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, RuntimeError):
                writer.write(bytes([b]))
            await asyncio.wait([eof], timeout=1.0)
        result = await eof
        abort(writer)
        return result if isinstance(result, str) else time.monotonic() - t0

    async with canary(srv, c.cafile, can):
        res = await bounded(conns, conns, loris)
    times = [r for r in res if isinstance(r, float)]
    failed = sum(isinstance(r, BaseException) for r in res)
    return {**canary_metrics(can), "RSS before MB": mb(rss0), "RSS peak MB": mb(sampler.close()),
            "closed by the server": f"{len(times)} / {conns} within {window} s" + (f" ({failed} failed TLS)"
                                                                                  if failed else ""),
            "closed after s (min / median / max)": (f"{min(times):.1f} / {statistics.median(times):.1f} / "
                                                    f"{max(times):.1f}" if times else "-")}


async def row_idle(srv: Server, c: Ctx) -> dict[str, Any]:
    """Idle WebSocket connections over TLS: the server's RSS per connection."""
    n = c.n(5000, 1000)
    await asyncio.sleep(1)
    rss0 = srv.rss()
    t0 = time.monotonic()
    res = await bounded(n, 50, lambda i: ws_open(srv.port, c.client))
    opened = [r for r in res if isinstance(r, tuple)]
    elapsed = time.monotonic() - t0
    await asyncio.sleep(2)
    rss1 = srv.rss()
    for _, writer in opened:
        abort(writer)
    return {"connections open": f"{len(opened)} / {n} in {elapsed:.0f} s", "RSS before MB": mb(rss0),
            "RSS with them open MB": mb(rss1),
            "RSS per connection KiB": (rss1 - rss0) / 1024 / len(opened) if opened else None}


async def row_churn(srv: Server, c: Ctx) -> dict[str, Any]:
    """Open a WebSocket over TLS, close it cleanly (1000), repeat, from 8 workers, for a fixed time."""
    duration = c.n(20, 8)
    await asyncio.sleep(1)
    rss0, fds0 = srv.rss(), srv.fds()
    done = 0
    outcomes = Counter[str]()

    async def worker(i: int) -> None:
        nonlocal done
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            try:
                async with asyncio.timeout(10):
                    reader, writer = await ws_open(srv.port, c.client)
                    writer.write(ws_frame(0x8, struct.pack("!H", 1000)))
                    outcomes[await await_close(reader, 5)] += 1
                    writer.close()
                    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
                        await writer.wait_closed()
                done += 1
            except (ConnectionError, ssl.SSLError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(worker(i) for i in range(8)))
    await asyncio.sleep(2)
    return {"handshakes per s": done / duration, "server's answer to close": ", ".join(
                f"{k} x{v}" for k, v in outcomes.most_common()),
            "RSS before / after MB": f"{mb(rss0):.1f} / {mb(srv.rss()):.1f}",
            "fds before / after": f"{fds0} / {srv.fds()}"}


async def row_malformed(srv: Server, c: Ctx) -> dict[str, Any]:
    """Protocol violations one connection each; the server's answer; the canary must not notice."""
    can: dict[str, Any] = {}
    out: dict[str, Any] = {}

    async def frame_case(data: bytes) -> str:
        reader, writer = await ws_open(srv.port, c.client)
        writer.write(data)
        answer = await await_close(reader, 5)
        abort(writer)
        return answer

    async def head_case(size: int) -> str:
        reader, writer = await asyncio.open_connection(HOST, srv.port, ssl=c.client)
        head = upgrade_request(srv.port)
        pad = size - len(head) - len(b"X-Pad: \r\n")
        writer.write(upgrade_request(srv.port, extra=b"X-Pad: " + b"a" * pad + b"\r\n"))
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
        except TimeoutError:
            line = b"(no answer in 5 s)"
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            line = type(exc).__name__.encode()
        abort(writer)
        return line.decode(errors="replace").strip() or "EOF"

    async def garbage_before_tls() -> str:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(random.randbytes(1024))
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(5):
                got = await reader.read(4096)
                while (more := await reader.read(4096)):
                    got += more
            kind = "TLS alert" if got[:1] == b"\x15" else f"{len(got)} bytes" if got else "nothing"
            answer = f"{kind}, closed after {time.monotonic() - t0:.2f} s"
        except TimeoutError:
            answer = "open at 5 s"
        except (ConnectionError, OSError) as exc:
            answer = type(exc).__name__
        abort(writer)
        return answer

    async def rst_mid_receive() -> str:
        _reader, writer = await ws_open(srv.port, c.client)
        body = os.urandom(1 << 20)
        writer.write(ws_frame(0x2, body)[: 512 << 10])
        await writer.drain()
        abort(writer)
        return "sent"

    async def rst_mid_send() -> str:
        reader, writer = await ws_open(srv.port, c.client)
        writer.write(ws_frame(0x2, os.urandom(4 << 20)))
        await writer.drain()
        await reader.readexactly(64 << 10)  # the echo has started coming back
        abort(writer)
        return "sent"

    cases: dict[str, Callable[[], Awaitable[str]]] = {
        "unmasked frame": lambda: frame_case(ws_frame(0x2, b"x" * 10, mask=False)),
        "RSV1 set, no extension": lambda: frame_case(ws_frame(0x2, b"x" * 10, rsv=4)),
        "opcode 0x3": lambda: frame_case(ws_frame(0x3, b"x" * 10)),
        "text not UTF-8": lambda: frame_case(ws_frame(0x1, b"\xff\xfe\xc0")),
        "ping of 126 bytes": lambda: frame_case(ws_frame(0x9, b"x" * 126)),
        "length 2^63-1": lambda: frame_case(ws_frame(0x2, b"", length=(1 << 63) - 1)),
        "garbage before TLS": garbage_before_tls,
        "17 KB head in one write": lambda: head_case(17_000),
        "64 KB head in one write": lambda: head_case(64_000),
        "100 KB head in one write": lambda: head_case(100_000),
        "RST mid-receive (512 KiB of a 1 MiB frame)": rst_mid_receive,
        "RST mid-send (4 MiB echo)": rst_mid_send,
    }
    fds0 = srv.fds()
    async with canary(srv, c.cafile, can):
        for name, case in cases.items():
            try:
                async with asyncio.timeout(20):
                    out[name] = await case()
            except (OSError, ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                out[name] = f"harness: {type(exc).__name__}"
        await asyncio.sleep(3)  # the canary keeps going: anything the cases left behind shows up here
    del out["RST mid-receive (512 KiB of a 1 MiB frame)"], out["RST mid-send (4 MiB echo)"]
    out["after RST mid-receive and mid-send: server alive"] = "yes" if srv.alive() else "NO"
    out["fds before / after"] = f"{fds0} / {srv.fds()}"
    return {**out, **canary_metrics(can)}


async def row_silent(srv: Server, c: Ctx) -> dict[str, Any]:
    """Connections that stop talking: how long until the server closes each."""
    cap = c.n(75, 15)

    async def silent_tcp() -> float | str:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        try:
            return await time_to_eof(reader, cap)
        finally:
            abort(writer)

    async def truncated_hello() -> float | str:
        outgoing = ssl.MemoryBIO()
        obj = c.client.wrap_bio(ssl.MemoryBIO(), outgoing)
        with contextlib.suppress(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = outgoing.read()
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(hello[: len(hello) // 2])
        try:
            return await time_to_eof(reader, cap)
        finally:
            abort(writer)

    async def tls_no_request() -> float | str:
        reader, writer = await asyncio.open_connection(HOST, srv.port, ssl=c.client)
        try:
            return await time_to_eof(reader, cap)
        finally:
            abort(writer)

    res = await asyncio.gather(silent_tcp(), truncated_hello(), tls_no_request(), return_exceptions=True)
    fmt = [r if not isinstance(r, BaseException) else type(r).__name__ for r in res]
    return {"silent TCP: closed after s": fmt[0], "half a ClientHello: closed after s": fmt[1],
            "TLS done, no HTTP request: closed after s": fmt[2]}


async def row_sigterm_load(srv: Server, c: Ctx) -> dict[str, Any]:
    """Connections echoing 1 KiB in a loop; SIGTERM after 3 s: time to exit, the close codes clients get."""
    n = c.n(200, 50)
    frame = ws_frame(0x2, os.urandom(1024))
    codes = Counter[str]()
    echoes = 0

    async def client(reader: Reader, writer: Writer) -> None:
        nonlocal echoes
        try:
            async with asyncio.timeout(3 + EXIT_CAP + 5):
                while True:
                    writer.write(frame)
                    while True:
                        op, data = await read_frame(reader)
                        if op == 0x8:
                            codes[close_code(data)] += 1
                            writer.write(ws_frame(0x8, data[:2]))
                            return
                        if op == 0x9:
                            writer.write(ws_frame(0xA, data))
                        elif op == 0x2:
                            echoes += 1
                            break
        except asyncio.IncompleteReadError:
            codes["EOF, no close frame"] += 1
        except TimeoutError:
            codes["no close in time"] += 1
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            codes[type(exc).__name__] += 1
        finally:
            writer.transport.close()

    # All of them open before any starts echoing, so all n are connected when the signal comes.
    opened = await bounded(n, 50, lambda i: ws_open(srv.port, c.client))
    codes.update(f"open failed: {type(r).__name__}" for r in opened if isinstance(r, BaseException))
    tasks = asyncio.gather(*(client(*r) for r in opened if isinstance(r, tuple)))
    await asyncio.sleep(3)
    before_signal = echoes
    exit_s = await asyncio.to_thread(srv.terminate)
    await tasks
    return {"connections": f"{n} ({before_signal} echoes in the 3 s before SIGTERM)", "SIGTERM to exit s": exit_s,
            "exit status": srv.proc.returncode,
            "close codes clients got": ", ".join(f"{k} x{v}" for k, v in codes.most_common())}


ROWS: dict[str, tuple[str, Callable[[Server, Ctx], Awaitable[dict[str, Any]]]]] = {
    "tls_fail": ("failed TLS handshakes (TCP close / plain HTTP / random bytes)", row_tls_fail),
    "ping_flood": ("ping flood, never reading (canary: 1 KiB echoes)", row_ping_flood),
    "push64k": ("clients pushing 64 KiB messages, never reading", row_push64k),
    "slowloris": ("slowloris: upgrade request 1 byte/s over TLS", row_slowloris),
    "idle": ("idle WebSocket connections over TLS", row_idle),
    "churn": ("handshake churn: open + close over TLS, 8 workers", row_churn),
    "malformed": ("malformed input (answer: close code / status)", row_malformed),
    "silent": ("silent and stalled connections", row_silent),
    "sigterm_load": ("SIGTERM under load (1 KiB echoes)", row_sigterm_load),
}

# Targets the fixes aim at (from the outside tester's report); shown next to the results.
TARGETS: dict[tuple[str, str], str] = {
    ("tls_fail", "RSS growth over the rest MB"): "<= 3 for 9000",
    ("tls_fail", "SIGTERM to exit s"): "<= 1",
    ("ping_flood", "canary max ms"): "<= 100",
    ("slowloris", "closed after s (min / median / max)"): "~10 (open_timeout)",
    ("silent", "silent TCP: closed after s"): "~10 (open_timeout)",
    ("silent", "half a ClientHello: closed after s"): "~10 (open_timeout)",
    ("silent", "TLS done, no HTTP request: closed after s"): "~10 (open_timeout)",
    ("malformed", "17 KB head in one write"): "431",
    ("malformed", "64 KB head in one write"): "431",
    ("malformed", "100 KB head in one write"): "431",
    ("sigterm_load", "close codes clients got"): "1001 for all",
}


# --- running and reporting ---------------------------------------------------------------------------------------
async def run_column(col: Column, rows: list[str], c: Ctx, cert: tuple[str, str], logdir: Path,
                     budget: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for row in rows:
        _title, fn = ROWS[row]
        print(f"[{time.strftime('%H:%M:%S')}] {col.name}: {row}", file=sys.stderr, flush=True)
        srv = Server(col, cert, logdir)
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                results[row] = await fn(srv, c)
        except TimeoutError:
            results[row] = {"harness": f"row did not finish in {budget:g} s"}
        except (OSError, ssl.SSLError, ConnectionError, RuntimeError) as exc:
            results[row] = {"harness": f"{type(exc).__name__}: {exc}"}
        finally:
            srv.stop()
        results[row]["_seconds"] = round(time.monotonic() - t0, 1)
        print(f"    {json.dumps(results[row])}", file=sys.stderr, flush=True)
    return results


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown(report: dict[str, Any]) -> str:
    cols = [n for n in report["columns"] if n != "websockets"] + (["websockets"] if "websockets" in
                                                                   report["columns"] else [])
    heads = [n + (" (quick)" if report["columns"][n].get("quick") else "") for n in cols]
    lines = ["| attack | measure | " + " | ".join(heads) + " | target |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for row, (title, _) in ROWS.items():
        metrics: list[str] = []
        for name in cols:
            for m in report["columns"][name].get("results", {}).get(row, {}):
                if m not in metrics and not m.startswith("_"):
                    metrics.append(m)
        for i, m in enumerate(metrics):
            cells = [fmt(report["columns"][name].get("results", {}).get(row, {}).get(m)) for name in cols]
            lines.append(f"| {title if i == 0 else ''} | {m} | " + " | ".join(cells)
                         + f" | {TARGETS.get((row, m), '')} |")
    lines.append("")
    for name in cols:
        col = report["columns"][name]
        m = col.get("machine", {})
        what = f"tree {col['tree']} at {col['commit']}" if col.get("tree") else f"websockets {col.get('websockets')}"
        load = "/".join(f"{x:.1f}" for x in m.get("loadavg", ()))
        lines.append(f"- {name}: {what}, {'quick' if col.get('quick') else 'full'}, started {col.get('started')}, "
                     f"{m.get('nproc')} CPUs, Linux {m.get('kernel')}, Python {m.get('python')}, "
                     f"load average at the end {load}")
    return "\n".join(lines) + "\n"


def splice(doc: Path, key: str, table: str) -> bool:
    """Replace the block between ``<!-- table KEY -->`` and the next ``<!-- end table -->`` in ``doc``."""
    text = doc.read_text()
    start = f"<!-- table {key} -->\n"
    i = text.find(start)
    j = text.find("<!-- end table -->", i)
    if i < 0 or j < 0:
        return False
    doc.write_text(text[: i + len(start)] + table + text[j:])
    return True


def make_cert(tmp: Path) -> tuple[str, str, str]:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(HOST, "localhost")
    cert, key, cafile = tmp / "cert.pem", tmp / "key.pem", tmp / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    return str(cert), str(key), str(cafile)


def git_head(tree: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg": os.getloadavg()}


def attack_main(args: argparse.Namespace) -> int:
    rows = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        print(f"attack.py: unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}", file=sys.stderr)
        return 2
    cols: list[Column] = []
    for spec in args.tree:
        name, sep, tree = spec.partition("=")
        if not sep or not (Path(tree) / "uringws" / "__init__.py").is_file():
            print(f"attack.py: --tree {spec!r}: use NAME=DIR with DIR a uringws checkout", file=sys.stderr)
            return 2
        cols.append(Column(name, "uringws", str(Path(tree).resolve())))
    if not args.no_websockets:
        cols.append(Column("websockets", "websockets"))
    if args.doc and not (args.update or args.json):
        print("attack.py: --doc needs --update or --json (the table block is named after that file)", file=sys.stderr)
        return 2
    if not cols:
        print("attack.py: nothing to attack: give --tree NAME=DIR and/or drop --no-websockets", file=sys.stderr)
        return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 5000 idle connections; the servers inherit it
    report: dict[str, Any] = {"columns": {}}
    if args.update and Path(args.update).exists():
        report = json.loads(Path(args.update).read_text())
    budget = 240.0 if args.quick else 600.0
    with tempfile.TemporaryDirectory(prefix="uringws-attack-") as tmp:
        certfile, keyfile, cafile = make_cert(Path(tmp))
        c = Ctx(args.quick, cafile)
        for col in cols:
            started = datetime.datetime.now(datetime.UTC)
            results = asyncio.run(run_column(col, rows, c, (certfile, keyfile), Path(tmp), budget))
            old = report["columns"].get(col.name, {}).get("results", {}) if args.update else {}
            report["columns"][col.name] = {
                "kind": col.kind, "tree": col.tree, "commit": git_head(col.tree) if col.tree else None,
                "websockets": _version("websockets") if col.kind == "websockets" else None,
                "quick": args.quick, "started": started.isoformat(timespec="seconds"), "machine": machine(),
                "results": {**old, **results}}
    text = markdown(report)
    print(text)
    for path in filter(None, (args.json, args.update)):
        Path(path).write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.doc:
        key = Path(args.update or args.json or "").name
        if not splice(Path(args.doc), key, text):
            print(f"attack.py: --doc {args.doc}: no '<!-- table {key} -->' ... '<!-- end table -->' block to replace",
                  file=sys.stderr)
            return 2
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    can = sub.add_parser("canary", help="(internal) the canary client process")
    can.add_argument("--port", type=int, required=True)
    can.add_argument("--cafile", required=True)
    can.add_argument("--interval", type=float, default=0.02)
    ws = sub.add_parser("serve-websockets", help="(internal) the websockets reference echo server")
    ws.add_argument("--port", type=int, required=True)
    ws.add_argument("--certfile", required=True)
    ws.add_argument("--keyfile", required=True)
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="a uringws source tree to attack (run with PYTHONPATH=DIR); repeatable")
    p.add_argument("--no-websockets", action="store_true", help="skip the websockets reference column")
    p.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ROWS)}")
    p.add_argument("--quick", action="store_true", help="smaller counts and shorter windows (a few minutes)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--update", metavar="JSON", help="merge into this earlier results file (and write it back)")
    p.add_argument("--doc", metavar="MD", help="replace the table block named after the --update/--json file here")
    args = p.parse_args(argv)
    if args.cmd == "canary":
        return canary_main(args)
    if args.cmd == "serve-websockets":
        return websockets_main(args)
    return attack_main(args)


if __name__ == "__main__":
    sys.exit(main())
