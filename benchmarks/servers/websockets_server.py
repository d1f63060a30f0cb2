"""websockets (asyncio implementation) echo/broadcast server for the benchmark; ``--loop uvloop`` for uvloop."""

from __future__ import annotations

import asyncio
import logging

from _common import MAX_SIZE, parse_args, ready, run, server_ssl_context
from websockets.asyncio.server import ServerConnection, broadcast, serve

args = parse_args()
logging.disable(logging.CRITICAL)  # a closed peer mid-benchmark is not news


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main() -> None:
    connections: set[ServerConnection] = set()

    async def fanout(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            async for message in ws:
                broadcast(connections, message)  # websockets' own facility: synchronous, no backpressure
        finally:
            connections.discard(ws)

    handler = fanout if args.mode == "broadcast" else echo
    async with serve(handler, args.host, args.port, ssl=server_ssl_context(args), compression=None,
                     max_size=MAX_SIZE, ping_interval=None, backlog=1024) as server:
        ready(server.sockets[0].getsockname()[1])
        await asyncio.Future()


run(main, args.loop)
