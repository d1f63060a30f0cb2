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
import subprocess
import sys
from typing import Any

from _common import FrameCounter, free_port, start_serve

HEADERS = 52  # IPv4 + TCP + timestamps option, per segment
COUNTERS = ("bytes_sent", "bytes_received", "segs_out", "segs_in")


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


async def run(port: int, connections: int, messages: int, size: int) -> list[dict[str, Any]]:
    from picows import WSMsgType

    room = FrameCounter(f"wss://127.0.0.1:{port}/broadcast")
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
    room.close()
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
    server = start_serve(port)
    try:
        for result in uvloop.run(run(port, args.connections, args.messages, args.size)):
            print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
