"""Echo client on the `websockets` library: the reference peer that validates the Autobahn harness.

Talks to ``wstest -m fuzzingserver``: asks for the number of cases, runs each one by echoing every message
until the server closes, then asks the server to write its reports. Not part of uringws.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import urllib.parse

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

# Autobahn's 9.x cases send messages up to 16 MiB; see websockets_echo_server.py.
MAX_SIZE = 2**25


def ssl_context(url: str, cafile: str | None) -> ssl.SSLContext | None:
    """A client context trusting ``cafile`` for wss:// URLs, None for ws://."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=cafile)


async def case_count(base: str, context: ssl.SSLContext | None) -> int:
    """Ask the fuzzing server how many cases it will run."""
    async with connect(f"{base}/getCaseCount", ssl=context) as websocket:
        return int(await websocket.recv())


async def run_case(base: str, case: int, agent: str, context: ssl.SSLContext | None) -> None:
    """Echo messages of one case until the server ends it; protocol errors are the point of the test."""
    query = urllib.parse.urlencode({"case": case, "agent": agent})
    try:
        async with connect(f"{base}/runCase?{query}", ssl=context, max_size=MAX_SIZE) as websocket:
            async for message in websocket:
                await websocket.send(message)
    except (WebSocketException, OSError):
        pass


async def update_reports(base: str, agent: str, context: ssl.SSLContext | None) -> None:
    """Tell the fuzzing server to write the reports for ``agent``."""
    query = urllib.parse.urlencode({"agent": agent})
    async with connect(f"{base}/updateReports?{query}", ssl=context) as websocket:
        try:
            await websocket.recv()
        except WebSocketException:
            pass


async def main(args: argparse.Namespace) -> int:
    """Run every case in order, then write reports."""
    base = args.url.rstrip("/")
    context = ssl_context(base, args.cafile)
    count = await case_count(base, context)
    print(f"{count} cases", flush=True)
    for case in range(1, count + 1):
        await run_case(base, case, args.agent, context)
    await update_reports(base, args.agent, context)
    return 0


def parse_args() -> argparse.Namespace:
    """Command line: fuzzing server URL, agent name, CA file for wss://."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:9001")
    parser.add_argument("--agent", default="websockets")
    parser.add_argument("--cafile", help="CA certificate (PEM) to trust for wss://")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
