"""uringws echo server for the Autobahn fuzzing client (``wstest -m fuzzingclient``).

Echoes every message back unchanged. ``max_size`` is 32 MiB because Autobahn's 9.x cases send messages of up
to 16 MiB; keepalive is off so that no ping of ours interferes with a case. Runs on the stdlib asyncio loop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed

MAX_SIZE = 2**25


async def echo(ws: Connection) -> None:
    """Send every received message back as is."""
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    context: ssl.SSLContext | None = None
    certfile, keyfile = args.certfile, args.keyfile
    if args.tls:
        certfile, keyfile = args.tls
    if certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    async with serve(echo, args.host, args.port, ssl=context, max_size=MAX_SIZE, ping_interval=None, max_queue=64):
        print(f"uringws echo server on {args.host}:{args.port}{' (TLS)' if context else ''}", flush=True)
        await stop


def parse_args() -> argparse.Namespace:
    """Command line: address and optional TLS certificate."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument("--certfile", help="PEM certificate chain; enables TLS")
    parser.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="same as --certfile CERT --keyfile KEY")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
