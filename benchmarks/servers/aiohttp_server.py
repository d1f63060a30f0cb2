"""aiohttp echo/broadcast server for the benchmark (run it with ``--loop uvloop``)."""

from __future__ import annotations

import asyncio
import logging

from _common import MAX_SIZE, parse_args, ready, run, server_ssl_context
from aiohttp import WSMsgType, web

args = parse_args()
logging.disable(logging.CRITICAL)
connections: set[web.WebSocketResponse] = set()


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE, heartbeat=None)
    await ws.prepare(request)
    connections.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if args.mode == "broadcast":
                    for peer in list(connections):  # aiohttp has no broadcast helper: a loop of sends
                        if not peer.closed:
                            await peer.send_bytes(msg.data)
                else:
                    await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
    finally:
        connections.discard(ws)
    return ws


async def main() -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=server_ssl_context(args), backlog=1024)
    await site.start()
    ready(runner.addresses[0][1])
    await asyncio.Future()


run(main, args.loop)
