"""One "node" for the multi-process tests: a uringws server whose connections share channels through a Hub.

``python -m tests.pubsub.node REDIS_URL MODE`` prints its port, then serves until stdin closes:
``/room`` joins the connection to "room" and publishes every message it sends there; ``/healthz`` answers 200
while the hub reaches Redis and 503 (with the state) otherwise.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Literal, cast

import uringws
from uringws.pubsub import BackendUnavailable, Hub, RedisBackend
from uringws.ws.connection import Connection
from uringws.ws.handshake import Request, Response


async def main(url: str, mode: str) -> None:
    backend = RedisBackend(url, mode=cast(Literal["pubsub", "streams"], mode), backoff_min=0.05, backoff_max=0.5)
    async with Hub(backend) as hub:

        async def handler(ws: Connection) -> None:
            await hub.join(ws, "room")
            async for message in ws:
                try:
                    await hub.publish("room", message)
                except BackendUnavailable:
                    pass  # delivered to this node's members only: what the test checks

        def healthz(ws: Connection, request: Request) -> Response | None:
            if request.path != "/healthz":
                return None
            return ws.respond(200 if hub.healthy else 503, body=hub.state + "\n")

        async with uringws.serve(handler, "127.0.0.1", 0, process_request=healthz, compression=None) as server:
            print(server.port_bound, flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)  # the test closes stdin to stop us


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(main(sys.argv[1], sys.argv[2]))
