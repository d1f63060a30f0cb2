"""``uringws torture URL``: prove that a ws:// or wss:// echo server keeps every byte.

Each connection shrinks its receive window (``SO_RCVBUF``) and reads slowly and in bursts, so the server's
large echoes meet a full TCP send buffer and complete short — the situation that lost 444 bytes in the bug this
project exists for. Payloads come from a seeded PRNG; every echo is checked by length and SHA-256 against the
message expected next, so a lost, duplicated, reordered or corrupted byte is caught and named. TLS runs on
``ssl.SSLObject`` over memory BIOs, so a broken record stream surfaces as the exact OpenSSL error
(``BadRecordMac``) with the connection and message number.

The client deliberately runs on the standard asyncio loop and its own socket handling: a checker should not
share the transport code of the server it checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import socket
import ssl
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..ws.config import WSConfig
from ..ws.exceptions import WebSocketError
from ..ws.handshake import ClientHandshake, parse_uri
from ..ws.protocol import Close, Message, Ping, Pong, Protocol, Side

MiB = 1 << 20
BAD_RECORD_MAC_REASONS = frozenset({"DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC", "BAD_DECRYPT"})


@dataclass
class TortureConfig:
    url: str
    connections: int = 20
    messages: int = 20
    min_size: int = 1
    max_size: int = 16 * MiB
    seed: int = 1
    rcvbuf: int = 4096
    read_chunk: int = 4096
    window: int = 2
    stall_every: int = 64  # on average one pause per this many reads
    stall_ms: float = 5.0
    tls_version: str | None = None  # "1.2" / "1.3" / None (negotiate)
    cafile: str | None = None
    insecure: bool = False
    server_hostname: str | None = None
    timeout: float = 600.0
    connect_timeout: float = 15.0
    #: Give up when no byte moved either way for this long while echoes are outstanding (a server that does
    #: not echo); None waits for ``timeout``. A working server under load still moves bytes every few ms.
    idle_timeout: float | None = 10.0

    def __post_init__(self) -> None:
        for name in ("connections", "messages", "window", "read_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.min_size <= self.max_size:
            raise ValueError(f"need 0 <= min_size <= max_size, not min_size={self.min_size}, "
                             f"max_size={self.max_size}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be above 0, not {self.timeout}")
        if self.idle_timeout is not None and not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be above 0 or None, not {self.idle_timeout}")


@dataclass
class Failure:
    # BadRecordMac, tls, corrupt, reordered, truncated, closed, handshake, connect, timeout, no-echo, and the
    # setup errors certificate (not trusted) and not-tls (wss:// to a plain port)
    kind: str
    connection: int
    message: int | None
    detail: str

    def __str__(self) -> str:
        where = f"connection {self.connection}" + (f", message {self.message}" if self.message is not None else "")
        return f"{self.kind}: {where}: {self.detail}"


@dataclass
class Result:
    connections: int = 0
    passed: int = 0
    failures: list[Failure] = field(default_factory=list)
    messages_ok: int = 0
    bytes_ok: int = 0
    seconds: float = 0.0
    #: Why nothing could be tested, when every connection failed the same way before its first echo (untrusted
    #: certificate, ws:// to a TLS port, wss:// to a plain one, nothing listening): one line that says what to do.
    setup_error: str | None = None

    @property
    def failed(self) -> int:
        return self.connections - self.passed


class _Fail(Exception):
    def __init__(self, kind: str, message: int | None, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.message = message
        self.detail = detail


def message_sizes(cfg: TortureConfig, conn: int) -> list[int]:
    """Log-uniform sizes in [min_size, max_size]; connection 0 starts with the largest message."""
    rng = random.Random(f"{cfg.seed}:sizes:{conn}")
    lo, hi = math.log(max(cfg.min_size, 1)), math.log(cfg.max_size + 1)
    sizes = [min(cfg.max_size, max(cfg.min_size, int(math.exp(rng.uniform(lo, hi))))) for _ in range(cfg.messages)]
    if conn == 0 and sizes:
        sizes[0] = cfg.max_size
    return sizes


def make_ssl_context(cfg: TortureConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.cafile)
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.tls_version == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif cfg.tls_version == "1.3":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    elif cfg.tls_version is not None:
        raise ValueError(f"--tls-version must be 1.2 or 1.3, not {cfg.tls_version!r}")
    return ctx


def _classify_ssl(exc: ssl.SSLError) -> str:
    reason = getattr(exc, "reason", None) or ""
    if reason in BAD_RECORD_MAC_REASONS or "bad record mac" in str(exc).lower():
        return "BadRecordMac"
    return "tls"


class _TLSClosed(ConnectionError):
    """The server closed the connection before the TLS handshake was done."""


class _Activity:
    """When the run last made progress: bytes sent, a handshake answer, echo data received (not pings: a server
    that pings but does not echo is still stuck). The no-echo watchdog reads it."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


# Sends go in pieces so that a large message counts as progress while it leaves; a multiple of the 16 KiB TLS
# record, so the records are the same as for one write.
_SEND_CHUNK = 256 * 1024


class _Stream:
    """One TCP (+ TLS) connection driven by hand: small receive window, bursty reads."""

    def __init__(self, sock: socket.socket, sslobj: ssl.SSLObject | None, activity: _Activity | None = None) -> None:
        self.sock = sock
        self.sslobj = sslobj
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.loop = asyncio.get_running_loop()
        self.activity = activity or _Activity()

    @classmethod
    async def open(cls, cfg: TortureConfig, host: str, port: int, ctx: ssl.SSLContext | None,
                   activity: _Activity | None = None) -> _Stream:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            # Before connect(), so the window scale is negotiated small: the peer really sees a tiny window.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.rcvbuf)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, addr), cfg.connect_timeout)
            stream = cls(sock, None, activity)
            if ctx is not None:
                stream.sslobj = ctx.wrap_bio(stream.incoming, stream.outgoing,
                                             server_hostname=cfg.server_hostname or host)
                await asyncio.wait_for(stream._tls_handshake(), cfg.connect_timeout)
            return stream
        except BaseException:
            sock.close()
            raise

    async def _tls_handshake(self) -> None:
        assert self.sslobj is not None
        while True:
            try:
                self.sslobj.do_handshake()
                await self._flush()
                return
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.loop.sock_recv(self.sock, 65536)
                if not data:
                    raise _TLSClosed("connection closed during the TLS handshake") from None
                self.incoming.write(data)

    async def _flush(self) -> None:
        if self.outgoing.pending:
            await self.loop.sock_sendall(self.sock, self.outgoing.read())

    async def send(self, data: bytes, progress: bool = True) -> None:
        """Send all of ``data``; ``progress=False`` for pongs, which do not move the test on."""
        view = memoryview(data)
        for i in range(0, len(view), _SEND_CHUNK):
            if self.sslobj is None:
                await self.loop.sock_sendall(self.sock, view[i:i + _SEND_CHUNK])
            else:
                self.sslobj.write(view[i:i + _SEND_CHUNK])
                await self._flush()
            if progress:
                self.activity.touch()

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` plaintext bytes (b"" at EOF)."""
        if self.sslobj is None:
            return await self.loop.sock_recv(self.sock, n)
        while True:
            try:
                data = self.sslobj.read(n)
                if self.outgoing.pending:  # e.g. a TLS 1.3 key update answer
                    await self._flush()
                return data
            except ssl.SSLWantReadError:
                raw = await self.loop.sock_recv(self.sock, n)
                if not raw:
                    self.incoming.write_eof()
                    return b""
                self.incoming.write(raw)
            except ssl.SSLZeroReturnError:
                return b""

    def close(self) -> None:
        self.sock.close()


async def _handshake(stream: _Stream, cfg: TortureConfig) -> tuple[Protocol, bytes]:
    uri = parse_uri(cfg.url)
    max_size = cfg.max_size + 1024
    config = WSConfig(max_size=max_size, compression=None)
    hs = ClientHandshake(uri, config)
    await stream.send(hs.data_to_send())
    first = True
    while True:
        data = await stream.recv(65536)
        if not data:
            raise _Fail("handshake", None, "connection closed during the WebSocket handshake")
        if first and not uri.secure and _looks_like_tls(data):
            raise _Fail("tls-port", None, "the server answered the WebSocket handshake in TLS")
        first = False
        stream.activity.touch()
        response = hs.receive_data(data)
        if response is not None:
            hs.accept(response)
            return Protocol(Side.CLIENT, max_size=max_size), hs.trailing_data


def _looks_like_tls(data: bytes) -> bool:
    """A TLS record header: handshake (22) or alert (21), protocol version 3.x."""
    return len(data) >= 2 and data[0] in (21, 22) and data[1] == 3


async def _run_connection(cfg: TortureConfig, conn: int, ctx: ssl.SSLContext | None, result: Result,
                          progress: _Progress, activity: _Activity | None = None,
                          expected: deque[tuple[int, int, bytes]] | None = None) -> None:
    uri = parse_uri(cfg.url)
    sizes = message_sizes(cfg, conn)
    payload_rng = random.Random(f"{cfg.seed}:payload:{conn}")
    read_rng = random.Random(f"{cfg.seed}:reads:{conn}")
    if expected is None:
        expected = deque()  # (message number, length, sha256) in send order
    try:
        stream = await _Stream.open(cfg, uri.host, uri.port, ctx, activity)
    except _TLSClosed as exc:
        raise _Fail("tls", None, f"TLS handshake failed: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise _Fail("certificate", None, f"TLS handshake failed: {exc.verify_message or exc}") from None
    except ssl.SSLError as exc:
        if exc.reason == "WRONG_VERSION_NUMBER":  # what OpenSSL makes of a plain-text answer to its hello
            raise _Fail("not-tls", None, f"TLS handshake failed: {exc}") from None
        raise _Fail(_classify_ssl(exc), None, f"TLS handshake failed: {exc}") from None
    except (TimeoutError, OSError) as exc:
        raise _Fail("connect", None, f"cannot connect to {uri.host}:{uri.port}: {exc!r}") from None
    try:
        try:
            proto, trailing = await _handshake(stream, cfg)
        except WebSocketError as exc:
            raise _Fail("handshake", None, str(exc)) from None
        window = asyncio.Semaphore(cfg.window)

        async def writer() -> None:
            for i, size in enumerate(sizes):
                await window.acquire()
                payload = payload_rng.randbytes(size)
                expected.append((i, size, hashlib.sha256(payload).digest()))
                proto.send_binary(payload)
                for chunk in proto.data_to_send():
                    await stream.send(chunk)

        async def reader() -> None:
            pending = trailing
            done = 0
            while done < len(sizes):
                if pending:
                    data, pending = pending, b""
                else:
                    if cfg.stall_every and read_rng.randrange(cfg.stall_every) == 0:
                        await asyncio.sleep(read_rng.uniform(0, cfg.stall_ms) / 1000)
                    data = await stream.recv(read_rng.randint(1, cfg.read_chunk))
                if not data:
                    proto.receive_eof()
                    n = expected[0][0] if expected else done
                    raise _Fail("closed", n, f"server closed the connection after {done} of {len(sizes)} echoes")
                proto.receive_data(data)
                events = proto.events_received()
                if not events or any(not isinstance(event, Ping | Pong) for event in events):  # none: part of a frame
                    stream.activity.touch()
                for event in events:
                    if isinstance(event, Close):
                        n = expected[0][0] if expected else done
                        raise _Fail("closed", n, f"server sent close {event.code} {event.reason!r} after "
                                    f"{done} of {len(sizes)} echoes")
                    if not isinstance(event, Message):
                        continue
                    _check_echo(event, expected)
                    result.messages_ok += 1
                    result.bytes_ok += len(event.data)
                    progress.add(len(event.data))
                    done += 1
                    window.release()
                if proto.failure is not None:
                    raise _Fail("protocol", expected[0][0] if expected else done, str(proto.failure))
                for chunk in proto.data_to_send():  # pongs, close replies
                    await stream.send(chunk, progress=False)

        writer_task = asyncio.ensure_future(writer())
        try:
            await reader()
            await writer_task
        finally:
            writer_task.cancel()
        proto.send_close(1000, "")
        for chunk in proto.data_to_send():
            await stream.send(chunk)
    except ssl.SSLError as exc:
        raise _Fail(_classify_ssl(exc), expected[0][0] if expected else None, f"{exc.reason or exc}: {exc}") from None
    except (ConnectionError, OSError) as exc:
        raise _Fail("closed", None, f"connection error: {exc!r}") from None
    finally:
        stream.close()


def _check_echo(event: Message, expected: deque[tuple[int, int, bytes]]) -> None:
    data = event.data if isinstance(event.data, bytes) else event.data.encode()
    if not expected:
        raise _Fail("duplicated", None, f"an echo of {len(data)} bytes arrived with no message outstanding")
    n, size, digest = expected.popleft()
    if len(data) == size and hashlib.sha256(data).digest() == digest:
        return
    for other, osize, odigest in expected:
        if len(data) == osize and hashlib.sha256(data).digest() == odigest:
            raise _Fail("reordered", n, f"the echo of message {other} arrived before the echo of message {n}")
    if len(data) != size:
        kind = "truncated" if len(data) < size else "corrupt"
        raise _Fail(kind, n, f"echo has {len(data)} bytes, sent {size} ({len(data) - size:+d})")
    raise _Fail("corrupt", n, f"echo of {size} bytes differs from what was sent (SHA-256 mismatch)")


def progress_columns() -> list[Any]:
    """The progress bar's columns (rich): bytes and speed in MiB, the unit of the summary line."""
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, Task
    from rich.text import Text

    class MiBPerSecond(ProgressColumn):  # rich's TransferSpeedColumn has decimal units only (MB/s)
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{speed / MiB:.1f} MiB/s", style="progress.data.speed")

    return ["[progress.description]{task.description}", BarColumn(), DownloadColumn(binary_units=True),
            MiBPerSecond()]


class _Progress:
    """A progress bar on a terminal (rich), nothing otherwise."""

    def __init__(self, total_bytes: int, enabled: bool) -> None:
        self._bar = None
        if not enabled:
            return
        try:
            from rich.progress import Progress

            columns = progress_columns()
        except ImportError:  # pragma: no cover - rich is a dependency, but a checker should still run without it
            return
        self._bar = Progress(*columns, transient=True)
        self._bar.start()
        self._task = self._bar.add_task("echoes verified", total=total_bytes)

    def add(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def speaks_tls(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether ``host:port`` answers a TLS ClientHello with TLS (a ws:// URL pointed at a wss:// server)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sslobj = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        sslobj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(outgoing.read())
        answer = await asyncio.wait_for(reader.read(5), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    return _looks_like_tls(answer)


def _closed_in_handshake(f: Failure) -> bool:
    return f.kind in ("tls", "handshake") and f.detail.endswith(("connection closed during the TLS handshake",
                                                                  "connection closed during the WebSocket handshake"))


def _setup_error(cfg: TortureConfig, result: Result) -> str | None:
    """One line saying what to do when every connection failed the same way before testing anything."""
    if result.passed or not result.failures or result.messages_ok:
        return None
    kinds = {f.kind for f in result.failures}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    detail = result.failures[0].detail
    if kind == "connect":
        return f"{detail}; is the server running?"
    if kind == "certificate":
        return (f"the server's certificate is not trusted ({detail.removeprefix('TLS handshake failed: ')}): pass "
                "--cafile with the CA certificate that signed it, or --insecure to skip verification (a "
                "self-signed development certificate, as `uringws serve` makes)")
    if kind == "not-tls":
        return "the server does not speak TLS on this port: use ws://"
    if kind == "tls-port":
        return ("the server speaks TLS on this port: use wss:// (with --cafile or --insecure for a self-signed "
                "certificate)")
    return None


async def run(cfg: TortureConfig, *, progress: bool = False) -> Result:
    uri = parse_uri(cfg.url)
    ctx = make_ssl_context(cfg) if uri.secure else None
    result = Result(connections=cfg.connections)
    total = sum(sum(message_sizes(cfg, c)) for c in range(cfg.connections))
    bar = _Progress(total, progress)
    activity = _Activity()
    outstanding: list[deque[tuple[int, int, bytes]]] = [deque() for _ in range(cfg.connections)]
    started = time.monotonic()

    async def one(conn: int) -> None:
        try:
            await _run_connection(cfg, conn, ctx, result, bar, activity, outstanding[conn])
            result.passed += 1
        except _Fail as f:
            result.failures.append(Failure(f.kind, conn, f.message, f.detail))
        except WebSocketError as exc:
            result.failures.append(Failure("protocol", conn, None, str(exc)))

    try:
        tasks = [asyncio.ensure_future(one(c)) for c in range(cfg.connections)]
        not_done: set[asyncio.Future[None]] = set(tasks)
        idle = False
        while not_done:
            # Wakes at least once a second for the watchdog; returns at once when the last task ends.
            _, not_done = await asyncio.wait(not_done, timeout=min(1.0, cfg.timeout))
            now = time.monotonic()
            if cfg.idle_timeout is not None and now - activity.last >= cfg.idle_timeout:
                idle = True
                break
            if now - started >= cfg.timeout:
                break
        for t in not_done:
            t.cancel()
        if not_done:
            await asyncio.wait(not_done)
            finished = {f.connection for f in result.failures}
            for c, t in enumerate(tasks):
                if t not in not_done or c in finished:
                    continue
                if idle and outstanding[c]:
                    result.failures.append(Failure(
                        "no-echo", c, outstanding[c][0][0], f"nothing came back for {cfg.idle_timeout:g} s with "
                        "messages outstanding: does the server at this URL echo?"))
                elif idle:
                    result.failures.append(Failure("timeout", c, None, f"no progress for {cfg.idle_timeout:g} s"))
                else:
                    result.failures.append(Failure("timeout", c, None, f"not finished after {cfg.timeout:g} s"))
    finally:
        bar.stop()
    if result.failures and not result.passed and not result.messages_ok:
        # A server may close a connection that speaks the wrong protocol without a byte of explanation (uringws
        # on its TLS port, websockets on a plain one): ask the port directly which one it speaks.
        if (all(_closed_in_handshake(f) for f in result.failures)
                and (tls := await speaks_tls(uri.host, uri.port)) != uri.secure):
            for f in result.failures:
                f.kind = "tls-port" if tls else "not-tls"
    result.seconds = time.monotonic() - started
    result.failures.sort(key=lambda f: (f.connection, f.message or 0))
    result.setup_error = _setup_error(cfg, result)
    return result


def report(result: Result, out: TextIO = sys.stdout) -> None:
    """One FAIL line per failure; connections that failed alike (same kind and detail) share one line."""
    groups: dict[tuple[str, str], list[Failure]] = {}
    for f in result.failures:
        groups.setdefault((f.kind, f.detail), []).append(f)
    for same in groups.values():
        more = f" (and {len(same) - 1} more connections alike)" if len(same) > 1 else ""
        print(f"FAIL {same[0]}{more}", file=out)
    mib = result.bytes_ok / MiB
    print(f"{result.messages_ok} messages ({mib:.1f} MiB) echoed intact over {result.connections} connections "
          f"in {result.seconds:.1f} s", file=out)
    print(f"{result.passed} passed, {result.failed} failed", file=out)


def main(cfg: TortureConfig, *, progress: bool | None = None) -> int:
    if progress is None:
        progress = sys.stderr.isatty()
    result = asyncio.run(run(cfg, progress=progress))
    if result.setup_error is not None:  # nothing was tested: a user error, said once
        print(f"uringws torture: {result.setup_error}", file=sys.stderr)
        return 2
    report(result)
    return 0 if not result.failures else 1
