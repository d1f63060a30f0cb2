"""uringws echo/broadcast server for the benchmark, on ``uringws.new_event_loop`` (io_uring + uringws TLS)."""

from __future__ import annotations

import asyncio
import logging

from _common import MAX_SIZE, parse_args, ready, run, server_ssl_context

from uringws.server import Server, ServerConnection, broadcast, serve

args = parse_args()
logging.disable(logging.CRITICAL)  # a closed peer mid-benchmark is not news
server: Server | None = None


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def fanout(ws: ServerConnection) -> None:
    assert server is not None
    async for message in ws:
        broadcast(server.connections, message)  # uringws' own facility: one frame built, written to all


async def main() -> None:
    global server
    handler = fanout if args.mode == "broadcast" else echo
    async with serve(handler, args.host, args.port, ssl=server_ssl_context(args), compression=None,
                     max_size=MAX_SIZE, ping_interval=None, backlog=1024) as srv:
        server = srv
        ready(srv.port_bound)
        await asyncio.Future()


run(main, args.loop)
