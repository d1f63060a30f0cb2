"""Bytes and packets on the wire per delivered broadcast message (TLS), paced and in bursts.

    python benchmarks/wire_bytes.py --connections 100 --messages 200 --size 256

Starts ``uringws serve`` (TLS with the development certificate, no compression), opens ``--connections``
clients (picows on uvloop) to the demo's ``/broadcast`` room and has one of them send ``--messages`` messages of
``--size`` bytes, which the server delivers to every member, the sender included. Two ways:

- ``paced``: one message, then wait until every member has it and 20 ms more (a chat, a live feed: each
  delivery is a TLS record in a segment of its own, and the client's ACK is a packet of its own);
- ``burst``: every message at once (TLS records and ACKs coalesce: the lower bound).

The counters are the kernel's per-socket TCP counters of the server's sockets (``ss -ti``: bytes_sent,
bytes_received, segs_out, segs_in; both directions, ACKs included), read before and after with the
connections otherwise idle. Wire bytes = TCP payload + 52 bytes per segment (IPv4 20 + TCP 20 + the timestamp
option 12, as Linux sends by default; Ethernet framing, 38 bytes per packet with preamble and gap, is not
included). On loopback a segment may carry up to 64 KiB, so bursts coalesce more than on a 1500-byte MTU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import socket
import ssl
import subprocess
import sys
import time
from typing import Any

HEADERS = 52  # IPv4 + TCP + timestamps option, per segment
COUNTERS = ("bytes_sent", "bytes_received", "segs_out", "segs_in")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_counters(port: int) -> dict[str, int]:
    """The sum of each counter over the established TCP sockets whose local port is ``port``."""
    out = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    totals = dict.fromkeys(COUNTERS, 0)
    totals["sockets"] = 0
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            totals["sockets"] += 1
            continue
        for name in COUNTERS:
            m = re.search(rf"\b{name}:(\d+)", line)
            if m:
                totals[name] += int(m.group(1))
    return totals


class Room:
    """``n`` picows connections to /broadcast counting what they receive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE
        self.transports: list[Any] = []
        self.received = 0

    async def open(self, n: int) -> None:
        from picows import WSFrame, WSListener, WSTransport, ws_connect

        room = self

        class Listener(WSListener):
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                room.received += 1

        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                transport, _ = await ws_connect(Listener, self.url, ssl_context=self.ctx)
                self.transports.append(transport)

        await asyncio.gather(*(one() for _ in range(n)))

    async def wait_for(self, total: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.received < total:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {self.received} of {total} deliveries arrived")
            await asyncio.sleep(0.001)


async def run(port: int, connections: int, messages: int, size: int) -> list[dict[str, Any]]:
    from picows import WSMsgType

    room = Room(f"wss://127.0.0.1:{port}/broadcast")
    await room.open(connections)
    sender = room.transports[0]
    payload = b"x" * size
    # Warm up: every member is in the room and every connection has sent and acknowledged something.
    sender.send(WSMsgType.BINARY, payload)
    await room.wait_for(connections)
    await asyncio.sleep(0.5)
    results = []
    for how in ("paced", "burst"):
        start_received = room.received
        before = server_counters(port)
        if how == "paced":
            for i in range(messages):
                sender.send(WSMsgType.BINARY, payload)
                await room.wait_for(start_received + (i + 1) * connections)
                await asyncio.sleep(0.02)
        else:
            for _ in range(messages):
                sender.send(WSMsgType.BINARY, payload)
            await room.wait_for(start_received + messages * connections)
        await asyncio.sleep(0.5)  # the last ACKs (delayed ACK is up to 40 ms; more under load)
        after = server_counters(port)
        d = {name: after[name] - before[name] for name in COUNTERS}
        deliveries = room.received - start_received
        segments = d["segs_out"] + d["segs_in"]
        wire = d["bytes_sent"] + d["bytes_received"] + HEADERS * segments
        results.append(
            {
                "mode": how,
                "size": size,
                "connections": connections,
                "deliveries": deliveries,
                "sockets": after["sockets"],
                "wire_bytes_per_delivery": round(wire / deliveries, 1),
                "tcp_payload_per_delivery": round((d["bytes_sent"] + d["bytes_received"]) / deliveries, 1),
                "packets_per_delivery": round(segments / deliveries, 2),
                "segs_out_per_delivery": round(d["segs_out"] / deliveries, 2),
                "segs_in_per_delivery": round(d["segs_in"] / deliveries, 2),
            }
        )
    for t in room.transports:
        t.disconnect()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    import uvloop

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uringws", "serve", "--port", str(port), "--no-compression", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if "Ctrl-C to stop" in line:
                break
        else:
            raise SystemExit(f"server exited with {server.wait()}")
        for result in uvloop.run(run(port, args.connections, args.messages, args.size)):
            print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
