"""uringws echo client for the Autobahn fuzzing server (``wstest -m fuzzingserver``).

Asks the server for its case count (``/getCaseCount``), runs each case (``/runCase?case=N&agent=...``) by
echoing every message until the server closes, then asks for the reports (``/updateReports?agent=...``).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import urllib.parse

from uringws.client import connect
from uringws.ws.exceptions import WebSocketError

MAX_SIZE = 2**25


def ssl_context(url: str, cafile: str | None) -> ssl.SSLContext | None:
    """A client context trusting ``cafile`` for wss:// URLs, None for ws://."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=cafile)


async def case_count(base: str, context: ssl.SSLContext | None) -> int:
    """Ask the fuzzing server how many cases it will run."""
    async with connect(f"{base}/getCaseCount", ssl=context) as ws:
        return int(await ws.recv())


async def run_case(base: str, case: int, agent: str, context: ssl.SSLContext | None) -> None:
    """Echo messages of one case until the server ends it; protocol errors are the point of the test."""
    query = urllib.parse.urlencode({"case": case, "agent": agent})
    try:
        async with connect(
            f"{base}/runCase?{query}", ssl=context, max_size=MAX_SIZE, ping_interval=None, max_queue=64
        ) as ws:
            async for message in ws:
                await ws.send(message)
    except (WebSocketError, OSError, TimeoutError):
        pass


async def update_reports(base: str, agent: str, context: ssl.SSLContext | None) -> None:
    """Tell the fuzzing server to write the reports for ``agent``."""
    query = urllib.parse.urlencode({"agent": agent})
    async with connect(f"{base}/updateReports?{query}", ssl=context) as ws:
        try:
            await ws.recv()
        except WebSocketError:
            pass


async def main(args: argparse.Namespace) -> int:
    """Run every case in order (or those given with --cases), then write reports."""
    base = args.url.rstrip("/")
    context = ssl_context(base, args.cafile)
    count = await case_count(base, context)
    print(f"{count} cases", flush=True)
    cases = args.cases or range(1, count + 1)
    for case in cases:
        await run_case(base, case, args.agent, context)
    await update_reports(base, args.agent, context)
    return 0


def parse_args() -> argparse.Namespace:
    """Command line: fuzzing server URL, agent name, CA file for wss://."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:9001")
    parser.add_argument("--agent", default="uringws")
    parser.add_argument("--cafile", help="CA certificate (PEM) to trust for wss://")
    parser.add_argument("--cases", type=int, nargs="*", help="run only these case numbers")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
