"""picows echo/broadcast server for the benchmark (on uvloop; picows uses aiofastnet's TLS when installed)."""

from __future__ import annotations

import asyncio
import logging

from _common import MAX_SIZE, parse_args, ready, run, server_ssl_context
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

args = parse_args()
logging.disable(logging.CRITICAL)
connections: set[WSTransport] = set()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        # The load client never fragments, so a frame is a message.
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


class Fanout(Echo):
    def on_ws_connected(self, transport: WSTransport) -> None:
        connections.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        connections.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT):
            payload = frame.get_payload_as_bytes()
            for t in connections:  # picows has no broadcast helper: a loop of sends
                t.send(frame.msg_type, payload)
        else:
            super().on_ws_frame(transport, frame)


async def main() -> None:
    cls = Fanout if args.mode == "broadcast" else Echo

    def factory(request: WSUpgradeRequest) -> WSListener:
        return cls()

    server = await ws_create_server(factory, args.host, args.port, ssl=server_ssl_context(args),
                                    max_frame_size=MAX_SIZE, backlog=1024)
    ready(server.sockets[0].getsockname()[1])
    await asyncio.Future()


run(main, args.loop)
