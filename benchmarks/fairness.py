"""Fairness under abusive peers: how long a well-behaved connection waits while others flood the server.

Usage (from the repository root; the server runs the uringws found on PYTHONPATH, so two trees compare by
running this script twice with a different PYTHONPATH)::

    PYTHONPATH=$PWD python benchmarks/fairness.py [--scenario pings|pushers] [--seconds 5]
        [--pushers 300] [--server websockets]

A uringws TLS echo server (``uringws.serve`` on ``uringws.new_event_loop``; ``URINGWS_BACKEND=epoll`` picks
the epoll backend) runs in a subprocess. One canary connection echoes 1 KiB messages one at a time and
records each round trip, while either

* ``pings``: one connection (its own process, a blocking socket) sends ping frames as fast as it can and
  never reads,
* ``reading-pings``: the same, but it reads (and discards) the pongs, so the write limit never stops it, or
* ``pushers``: ``--pushers`` connections (another process) each send 64 KiB messages and never read.

It prints the canary's round trips (count, p50, p99, worst; seconds) and, for ``pings``, how much the
server process grew (VmRSS before and after), since pongs that are never read must not pile up.
The clients speak WebSocket themselves (no uringws on the client side): only the server differs between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = r"""
import asyncio, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
kind = sys.argv[3]

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    if kind == "websockets":
        import websockets
        async with websockets.serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            print(port, flush=True)
            await asyncio.Future()
    import uringws
    async with uringws.serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, asyncio.get_running_loop().backend, flush=True)
        await asyncio.Future()

if kind == "websockets":
    asyncio.run(main())
else:
    import uringws
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(main())
"""


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked (client) frame; the zero mask keeps the payload as is."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def handshake_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    return ctx


def blocking_open(port: int, ca: str) -> ssl.SSLSocket:
    sock = client_context(ca).wrap_socket(socket.create_connection(("127.0.0.1", port)),
                                          server_hostname="localhost")
    sock.sendall(handshake_request())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return sock


def flood_pings(port: int, ca: str, seconds: float, read: bool) -> None:
    """Send pings as fast as possible, reading the pongs (``read``) or never reading, until the deadline."""
    sock = blocking_open(port, ca)
    if read:
        # A second socket object on the same TLS connection is not possible: the reader runs in a thread, and
        # SSLSocket allows one concurrent reader and one writer.
        threading.Thread(target=drain, args=(sock,), daemon=True).start()
    burst = frame(0x9, b"x" * 16) * 4096
    deadline = time.monotonic() + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            sock.sendall(burst)
        except TimeoutError:
            continue
        except OSError:
            return


def drain(sock: ssl.SSLSocket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


async def open_async(port: int, ca: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca),
                                                   server_hostname="localhost")
    writer.write(handshake_request())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return reader, writer


async def push(port: int, ca: str, count: int, seconds: float) -> None:
    """``count`` connections sending 64 KiB messages and never reading."""
    message = frame(0x2, b"p" * 65536)

    async def one() -> None:
        _, writer = await open_async(port, ca)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            writer.write(message)
            try:
                await asyncio.wait_for(writer.drain(), max(0.01, deadline - time.monotonic()))
            except (TimeoutError, OSError):
                break
        writer.transport.abort()

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        print(f"pushers: {len(failed)} failed, e.g. {failed[0]!r}", file=sys.stderr)


async def canary(port: int, ca: str, seconds: float, start_after: float) -> list[float]:
    reader, writer = await open_async(port, ca)
    payload = os.urandom(1024)
    message = frame(0x2, payload)
    await asyncio.sleep(start_after)
    rtts: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        writer.write(message)
        head = await asyncio.wait_for(reader.readexactly(4), 10)
        assert head[:2] == b"\x82\x7e" and head[2:] == b"\x04\x00", head
        assert await reader.readexactly(1024) == payload
        rtts.append(time.perf_counter() - t0)
        await asyncio.sleep(0.002)
    writer.transport.abort()
    return rtts


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("pings", "reading-pings", "pushers"), default="pings")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pushers", type=int, default=300)
    parser.add_argument("--server", choices=("uringws", "websockets"), default="uringws")
    args = parser.parse_args()
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key, ca_file = (os.path.join(tmp, name) for name in ("cert.pem", "key.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(ca_file)
        server = subprocess.Popen([sys.executable, "-c", SERVER, cert, key, args.server], stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline().split()
            port = int(line[0])
            backend = line[1] if len(line) > 1 else "asyncio"
            rss0 = rss_kib(server.pid)
            attack = (
                [sys.executable, __file__, "--attack-pings", str(port), ca_file, str(args.seconds + 1),
                 str(int(args.scenario == "reading-pings"))]
                if args.scenario != "pushers"
                else [sys.executable, __file__, "--attack-push", str(port), ca_file, str(args.seconds + 1),
                      str(args.pushers)]
            )
            attacker = subprocess.Popen(attack)
            # The pushers need a moment to connect; the canary starts measuring once the attack runs.
            rtts = asyncio.run(canary(port, ca_file, args.seconds, 3.0 if args.scenario == "pushers" else 1.0))
            rss1 = rss_kib(server.pid)
            attacker.wait(timeout=120)
        finally:
            server.kill()
            server.wait()
    rtts.sort()
    n = len(rtts)
    print(f"server={args.server} backend={backend} scenario={args.scenario}"
          + (f" pushers={args.pushers}" if args.scenario == "pushers" else ""))
    print(f"canary echoes={n} p50={rtts[n // 2]:.4f} p99={rtts[min(n - 1, n * 99 // 100)]:.4f} "
          f"worst={rtts[-1]:.4f} s")
    print(f"server VmRSS {rss0} -> {rss1} KiB")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--attack-pings":
        flood_pings(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5] == "1")
    elif len(sys.argv) > 1 and sys.argv[1] == "--attack-push":
        asyncio.run(push(int(sys.argv[2]), sys.argv[3], int(sys.argv[5]), float(sys.argv[4])))
    else:
        main()
