"""Echo server on the `websockets` library: the reference peer that validates the Autobahn harness.

Run by ``conformance/run.sh server --server-cmd ...``; it echoes every message back unchanged so the
Autobahn fuzzing client can judge the library's protocol handling. Not part of uringws.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# Autobahn's 9.x cases send messages up to 16 MiB; the default 1 MiB limit would fail them for a reason that
# has nothing to do with conformance.
MAX_SIZE = 2**25


async def echo(websocket: ServerConnection) -> None:
    """Send every received message back as is."""
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosed:
        pass


async def main(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    context: ssl.SSLContext | None = None
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(echo, args.host, args.port, ssl=context, max_size=MAX_SIZE):
        print(f"websockets echo server on {args.host}:{args.port}{' (TLS)' if context else ''}", flush=True)
        await stop


def parse_args() -> argparse.Namespace:
    """Command line: address and optional TLS certificate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--certfile", help="PEM certificate chain; enables TLS")
    parser.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
