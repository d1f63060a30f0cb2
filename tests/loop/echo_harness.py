"""A byte-exact echo torture for stream transports: real short writes, every byte checked by hash.

The server (the loop under test, in this thread) echoes with backpressure (pause_reading while its writes are
paused) through a socket with a tiny SO_SNDBUF. The clients run on a stdlib selector loop in another thread, with
a tiny SO_RCVBUF, reading slowly and in bursts while they write PRNG payloads of 1 byte to `max_msg` bytes; then
they half-close, the server closes after its queue drained, and each client compares the SHA-256 and length of
what it sent with what came back.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ConnResult:
    index: int
    sent_len: int
    sent_hash: str
    recv_len: int
    recv_hash: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.sent_len == self.recv_len and self.sent_hash == self.recv_hash


class EchoServerProtocol(asyncio.Protocol):
    """Echo with asyncio backpressure: stop reading while the transport's write buffer is above high water."""

    def __init__(self, sndbuf: int) -> None:
        self.sndbuf = sndbuf
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if self.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.transport.close()  # flushes what is queued first, then closes
        return True


def message_sizes(rng: random.Random, count: int, max_msg: int) -> list[int]:
    """Log-uniform sizes from 1 byte to max_msg, with both ends always present."""
    sizes = [int(math.exp(rng.uniform(0, math.log(max_msg)))) for _ in range(max(count - 2, 0))]
    return [1, max_msg, *sizes][:count]


async def _client(index: int, port: int, family: int, seed: int, msgs: int, max_msg: int, rcvbuf: int,
                  stall: float) -> ConnResult:
    rng = random.Random(seed * 1_000_003 + index)
    sizes = message_sizes(rng, msgs, max_msg)
    rng.shuffle(sizes)
    sock = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # Loopback's MSS (~64 KiB) dwarfs a 4 KiB window: silly-window avoidance then leaves the sender to
        # zero-window probes with exponential backoff (stalls of a minute, with any event loop). An Ethernet-
        # sized MSS keeps the tiny window moving, and many more, smaller segments = more short sends.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1400)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    await loop.sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    sent = hashlib.sha256()
    sent_len = 0
    total = sum(sizes)

    async def send_all() -> None:
        nonlocal sent_len
        for size in sizes:
            data = rng.randbytes(size)
            sent.update(data)
            sent_len += size
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    recv = hashlib.sha256()
    recv_len = 0
    brng = random.Random(seed + index)
    sender = asyncio.ensure_future(send_all())
    error = None
    try:
        while True:
            chunk = await reader.read(brng.randint(1, 64 * 1024))
            if not chunk:
                break
            recv.update(chunk)
            recv_len += len(chunk)
            if stall and brng.random() < 0.05:
                await asyncio.sleep(brng.uniform(0, stall))  # a slow reader, in bursts
        await sender
    except Exception as exc:  # noqa: BLE001  (a reset or a broken echo: report it, the test decides)
        error = f"{type(exc).__name__}: {exc}"
        sender.cancel()
    finally:
        writer.close()
    assert total == sent_len or error is not None
    return ConnResult(index, sent_len, sent.hexdigest(), recv_len, recv.hexdigest(), error)


def _run_clients(port: int, family: int, connections: int, seed: int, msgs: int, max_msg: int, rcvbuf: int,
                 stall: float, out: list[ConnResult], errors: list[BaseException]) -> None:
    async def main() -> None:
        results = await asyncio.gather(*(
            _client(i, port, family, seed, msgs, max_msg, rcvbuf, stall) for i in range(connections)))
        out.extend(results)

    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main())
    except BaseException as exc:  # noqa: BLE001  (handed to the test's thread, re-raised there)
        errors.append(exc)
    finally:
        loop.close()


def run_echo_torture(loop: asyncio.AbstractEventLoop, *, connections: int, msgs: int, max_msg: int,
                     seed: int = 1, sndbuf: int = 4096, rcvbuf: int = 4096, stall: float = 0.003,
                     family: int = socket.AF_INET, timeout: float = 120.0,
                     protocol_factory: Callable[[int], asyncio.Protocol] | None = None) -> list[ConnResult]:
    """Run the torture with `loop` as the server; returns one result per client connection."""
    results: list[ConnResult] = []
    errors: list[BaseException] = []

    async def serve() -> None:
        factory = protocol_factory or EchoServerProtocol
        lsock = socket.socket(family, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sndbuf:
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # inherited by accepted sockets
        lsock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        server = await asyncio.get_running_loop().create_server(lambda: factory(sndbuf), sock=lsock,
                                                                 backlog=max(connections, 128))
        port = lsock.getsockname()[1]
        t = threading.Thread(target=_run_clients, daemon=True,
                             args=(port, family, connections, seed, msgs, max_msg, rcvbuf, stall, results, errors))
        t.start()
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while t.is_alive():
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"echo torture did not finish in {timeout} s")
                await asyncio.sleep(0.01)
        finally:
            server.close()
            await server.wait_closed()

    loop.run_until_complete(serve())
    if errors:
        raise errors[0]
    return results
