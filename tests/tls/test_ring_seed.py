"""The seed failure of docs/design.md §1, replayed on the io_uring loop with our TLS, and shown to be caught.

A server (``uringws.new_event_loop()``, backend io_uring, ``create_server(ssl=...)``, 16 KiB ``SO_SNDBUF``)
pushes messages of 64 KiB and up to clients with tiny receive windows (``SO_RCVBUF`` 4 KiB, set before connect)
that read slowly: Python ssl clients on blocking sockets, one thread each (``SSLSocket.recv`` releases the GIL).
The server yields to its loop between 1 MiB writes, as a producer would, so writes span many io_uring_enter
batches (within one batch an IO_LINK chain happened to keep a naive sender's stream in order).
Every client decrypts everything and compares the sha256 of each message with that of the seeded PRNG stream it
should be. The correct send path must deliver every byte while the server's ``loop.send_stats`` shows that the
kernel really completed sends short. The same scenario with `NaiveSendTransport` (several SENDs in flight, plain,
IO_LINK or IO_HARDLINK, remainders dropped) as the server's stream transport must make the clients fail the way
the browser of rustls #1762 did (a bad record MAC or another record-layer decrypt error) or see a damaged stream.
Over `FaultyRing` (short completions, -EAGAIN/-EINTR/-ECANCELED, reordered and delayed completions) it must
stay intact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import random
import socket
import ssl
import threading
import time

import pytest

import uringws
from uringws.loop.transports import RingSocketTransport
from uringws.ring import probe

from ..loop.naive import HardlinkedNaiveSendTransport, LinkedNaiveSendTransport, NaiveSendTransport

testing = pytest.importorskip("uringws.ring.testing")
pytestmark = pytest.mark.skipif(not probe.availability().usable, reason="io_uring unusable here")

KiB = 1024
MiB = 1024 * KiB
WRITE_CHUNK = 1 * MiB  # the server's write() size: far above the 64 KiB that triggered the original bug
CLIENT_RCVBUF = 4 * KiB
SERVER_SNDBUF = 16 * KiB  # the kernel doubles it
READ_SIZE = 4 * KiB

#: OpenSSL reasons a client may report when the record stream it receives lost or reordered bytes. The first
#: two are the MAC failure itself; the others are what a record header read from the wrong offset looks like.
RECORD_DAMAGE_REASONS = frozenset(
    {
        "DECRYPTION_FAILED_OR_BAD_RECORD_MAC",
        "BAD_RECORD_MAC",
        "DECRYPTION_FAILED",
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "ENCRYPTED_LENGTH_TOO_LONG",
        "DATA_LENGTH_TOO_LONG",
        "RECORD_TOO_LARGE",
        "UNEXPECTED_RECORD",
        "UNEXPECTED_MESSAGE",
        "BAD_LENGTH",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)
MAC_REASONS = frozenset({"DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC", "DECRYPTION_FAILED"})


def message(client: int, index: int, size: int) -> bytes:
    """Message ``index`` for ``client``: seeded PRNG bytes, reproducible on both sides."""
    return random.Random(client * 1_000_003 + index).randbytes(size)


def plan(clients: int, per_client: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    """Message sizes per client, log-uniform in [lo, hi]; every tenth client gets one message of exactly ``hi``."""
    rng = random.Random(seed)
    sizes = [
        [int(math.exp(rng.uniform(math.log(lo), math.log(hi)))) for _ in range(per_client)] for _ in range(clients)
    ]
    for i in range(0, clients, 10):
        sizes[i][rng.randrange(per_client)] = hi
    return sizes


@dataclasses.dataclass
class Outcome:
    """What one client saw."""

    kind: str  # "ok", "ssl" (SSLError), "eof" (stream ended early), "timeout", "oserror", "extra" (bytes past the end)
    hashes: list[str] = dataclasses.field(default_factory=list)
    received: int = 0
    reason: str | None = None
    detail: str = ""


def slow_client(port: int, ctx: ssl.SSLContext, cid: int, sizes: list[int], timeout: float) -> Outcome:
    """Tiny receive window, 4 KiB reads, a pause every 64 KiB; hashes each message as it arrives."""
    out = Outcome("ok")
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)  # before connect: sets the window
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", port))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"{cid}\n".encode())
            reads = 0
            for n in sizes:
                h = hashlib.sha256()
                got = 0
                while got < n:
                    part = tls.recv(min(READ_SIZE, n - got))
                    if not part:
                        out.kind = "eof"
                        out.hashes.append(h.hexdigest())
                        return out
                    h.update(part)
                    got += len(part)
                    out.received += len(part)
                    reads += 1
                    if reads % 16 == 0:
                        time.sleep(0.001)  # a slow reader: the server's socket buffer fills up
                out.hashes.append(h.hexdigest())
            tail = tls.recv(READ_SIZE)  # the server closes after its last message: close_notify -> b""
            if tail:
                out.kind, out.detail = "extra", f"{len(tail)} bytes after the last message"
    except ssl.SSLError as exc:
        out.kind, out.reason, out.detail = "ssl", exc.reason, str(exc)
    except TimeoutError as exc:
        out.kind, out.detail = "timeout", str(exc)
    except OSError as exc:
        out.kind, out.detail = "oserror", repr(exc)
    finally:
        raw.close()
    return out


class Pusher(asyncio.Protocol):
    """Server application: reads the client's id, pushes its messages in 1 MiB writes under flow control, closes."""

    def __init__(self, sizes: list[list[int]], tasks: set[asyncio.Task[None]]) -> None:
        self.sizes = sizes
        self.tasks = tasks
        self.transport: asyncio.WriteTransport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.lost = False
        self.request = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.request += data
        if b"\n" in self.request and self.request[-1:] == b"\n":
            cid = int(self.request)
            task = asyncio.get_running_loop().create_task(self.push(cid))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def push(self, cid: int) -> None:
        assert self.transport is not None
        for k, n in enumerate(self.sizes[cid]):
            view = memoryview(message(cid, k, n))
            for off in range(0, n, WRITE_CHUNK):
                await self.can_write.wait()
                if self.lost:
                    return
                self.transport.write(view[off : off + WRITE_CHUNK])
                # Yield as an application producing data would: the next write lands in another loop iteration,
                # hence another io_uring_enter, so IO_LINK cannot order it after this one.
                await asyncio.sleep(0)
        if not self.lost:
            self.transport.close()  # after every queued byte: close_notify, then FIN

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.can_write.set()


def run_seed(
    loop: uringws.EventLoop,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    sizes: list[list[int]],
    timeout: float,
) -> list[Outcome]:
    """Serve ``sizes`` from ``loop`` to one slow client thread per entry; returns each client's outcome."""
    outcomes: list[Outcome | None] = [None] * len(sizes)

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        lsock = socket.create_server(("127.0.0.1", 0), backlog=len(sizes))
        # Inherited by accepted sockets. Without it loopback autotunes the send buffer to megabytes, which swallow
        # whole messages, so the kernel would rarely have to complete a send short.
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SERVER_SNDBUF)
        server = await loop.create_server(lambda: Pusher(sizes, tasks), sock=lsock, ssl=server_ctx)
        port = lsock.getsockname()[1]

        def client(cid: int) -> None:
            outcomes[cid] = slow_client(port, client_ctx, cid, sizes[cid], timeout)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(sizes))]
        for t in threads:
            t.start()
        deadline = loop.time() + timeout * 3
        while any(t.is_alive() for t in threads):
            assert loop.time() < deadline, "clients did not finish"
            await asyncio.sleep(0.05)
        server.close()
        for task in list(tasks):
            task.cancel()
        await server.wait_closed()

    asyncio.Runner(loop_factory=lambda: loop).run(main())
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def expected_hashes(sizes: list[list[int]]) -> list[list[str]]:
    return [[hashlib.sha256(message(cid, k, n)).hexdigest() for k, n in enumerate(s)] for cid, s in enumerate(sizes)]


def assert_intact(outcomes: list[Outcome], sizes: list[list[int]]) -> None:
    expected = expected_hashes(sizes)
    bad = [(cid, o) for cid, o in enumerate(outcomes) if o.kind != "ok" or o.hashes != expected[cid]]
    assert not bad, f"{len(bad)} of {len(outcomes)} clients got a damaged stream, e.g. {bad[:3]}"


def ring_loop(transport_class: type[RingSocketTransport] | None = None, **kwargs: object) -> uringws.EventLoop:
    loop = uringws.new_event_loop(transport_class=transport_class, **kwargs)
    assert loop.backend == "io_uring"
    return loop


SMALL = dict(clients=20, per_client=3, lo=64 * KiB, hi=2 * MiB)


def test_seed_scenario_intact(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """20 slow clients, 64 KiB - 2 MiB messages: every byte arrives, and the kernel did complete sends short."""
    sizes = plan(SMALL["clients"], SMALL["per_client"], SMALL["lo"], SMALL["hi"], seed=1762)
    loop = ring_loop()
    try:
        outcomes = run_seed(loop, server_ctx, client_ctx, sizes, timeout=30)
        assert_intact(outcomes, sizes)
        stats = loop.send_stats
        assert stats.short_sends > 0, stats  # the path under test really met short completions
    finally:
        loop.close()


@pytest.mark.slow
def test_seed_scenario_intact_100_clients_16mib(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """The full scenario: 100 slow clients, 64 KiB - 16 MiB messages (every tenth client gets a 16 MiB one)."""
    sizes = plan(100, 3, 64 * KiB, 16 * MiB, seed=1710)
    loop = ring_loop()
    try:
        outcomes = run_seed(loop, server_ctx, client_ctx, sizes, timeout=300)
        assert_intact(outcomes, sizes)
        assert loop.send_stats.short_sends >= 100, loop.send_stats
    finally:
        loop.close()


@pytest.mark.parametrize(
    "transport_class",
    [NaiveSendTransport, LinkedNaiveSendTransport, HardlinkedNaiveSendTransport],
    ids=["naive", "naive-io-link", "naive-io-hardlink"],
)
def test_seed_scenario_catches_naive_sender(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, transport_class: type[RingSocketTransport]
) -> None:
    """Mutation proof: the same scenario over a sender that drops short-send remainders fails at the clients."""
    sizes = plan(SMALL["clients"], SMALL["per_client"], SMALL["lo"], SMALL["hi"], seed=1762)
    loop = ring_loop(transport_class)
    try:
        # A short timeout: some connections lose their handshake bytes and would otherwise wait for them.
        outcomes = run_seed(loop, server_ctx, client_ctx, sizes, timeout=5)
        assert loop.send_stats.short_sends > 0, loop.send_stats  # it met short completions...
        expected = expected_hashes(sizes)
        failed = [o for cid, o in enumerate(outcomes) if o.kind != "ok" or o.hashes != expected[cid]]
        # ...and the clients noticed: most connections break, each in a way a damaged record stream explains.
        assert len(failed) >= len(outcomes) // 2, [o.kind for o in outcomes]
        total = [sum(s) for s in sizes]
        for cid, o in enumerate(outcomes):
            if o not in failed:
                continue
            # A record-layer error, or a stream that ended or stalled short, or one whose bytes differ.
            assert o.kind in ("ssl", "eof", "timeout", "ok"), o
            assert o.kind != "timeout" or o.received < total[cid], o
            if o.kind == "ssl":
                assert o.reason in RECORD_DAMAGE_REASONS, o
        reasons = {o.reason for o in failed if o.kind == "ssl"}
        if transport_class is NaiveSendTransport:
            assert reasons & MAC_REASONS, f"no client failed its MAC check: {[(o.kind, o.reason) for o in failed]}"
        else:
            # A linked naive sender never closes its chain: the ring holds an open chain back until an SQE
            # without the link flag closes it, so its connections stall as well as lose bytes. Either is caught.
            stalled = [o for o in failed if o.kind == "timeout"]
            assert reasons & MAC_REASONS or stalled, f"no MAC failure, no stall: {[(o.kind, o.reason) for o in failed]}"
    finally:
        loop.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_seed_scenario_over_faulty_ring(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, seed: int) -> None:
    """Short completions, -EAGAIN/-EINTR/-ECANCELED, reordered and delayed completions: still intact."""
    sizes = plan(12, 3, 64 * KiB, 1 * MiB, seed=seed)
    ring = testing.FaultyRing(seed=seed, entries=1024)
    loop = ring_loop(ring=ring, direct_send=False)  # every byte through the (faulty) ring
    try:
        outcomes = run_seed(loop, server_ctx, client_ctx, sizes, timeout=60)
        assert_intact(outcomes, sizes)
        c = ring.counters
        assert c["send_short"] + c["sendmsg_short"] > 10, c  # the faults really hit the TLS records' sends
        assert c["send_error"] + c["sendmsg_error"] > 3, c
        assert c["reordered"] > 0 and c["delayed"] > 0, c
        s = loop.send_stats
        assert s.eagain > 0 and s.retries > 0 and s.short_sends > 0, s
    finally:
        loop.close()
