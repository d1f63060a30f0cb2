"""uringws echo/broadcast server with the callback-level reader, ``ws.dispatch(callback)``, on its io_uring loop.

The same server as ``uringws_server.py`` except that messages reach a callback instead of ``async for``: no
coroutine is resumed per message (the handler waits in ``dispatch()`` for the whole connection).
"""

from __future__ import annotations

import asyncio
import logging

from _common import MAX_SIZE, parse_args, ready, run, server_ssl_context

from uringws.server import Server, ServerConnection, broadcast, serve

args = parse_args()
logging.disable(logging.CRITICAL)  # a closed peer mid-benchmark is not news
server: Server | None = None


async def echo(ws: ServerConnection) -> None:
    await ws.dispatch(ws.send_nowait)


async def fanout(ws: ServerConnection) -> None:
    assert server is not None
    connections = server.connections
    await ws.dispatch(lambda message: broadcast(connections, message))


async def main() -> None:
    global server
    handler = fanout if args.mode == "broadcast" else echo
    async with serve(handler, args.host, args.port, ssl=server_ssl_context(args), compression=None,
                     max_size=MAX_SIZE, ping_interval=None, backlog=1024) as srv:
        server = srv
        ready(srv.port_bound)
        await asyncio.Future()


run(main, args.loop)
