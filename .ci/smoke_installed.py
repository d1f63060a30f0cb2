"""Smoke test of an installed uringws (a wheel or sdist in a fresh venv), run from outside the checkout.

Checks that the import is the installed copy, the console script runs (--version, doctor --json), the demo page
ships, and a WebSocket echo works over the loopback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import uringws
from uringws.client import connect
from uringws.server import serve

checkout = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else None
where = Path(uringws.__file__).resolve()
if checkout is not None and where.parent == checkout / "uringws":
    sys.exit(f"smoke: imported uringws from the checkout ({where}), not the installed package")
script = Path(sys.executable).with_name("uringws")
version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True).stdout.split()
if version[-1] != metadata.version("uringws"):
    sys.exit(f"smoke: 'uringws --version' says {version}, the installed metadata {metadata.version('uringws')}")
doctor = json.loads(subprocess.run([script, "doctor", "--json"], capture_output=True, text=True).stdout)
if doctor.get("backend") not in ("io_uring", "epoll"):
    sys.exit(f"smoke: 'uringws doctor --json' gave no backend: {doctor}")
if b"uringws" not in resources.files("uringws.tools").joinpath("static/demo.html").read_bytes():
    sys.exit("smoke: the demo page is missing from the package")


async def echo(ws: object) -> None:
    async for message in ws:  # type: ignore[attr-defined]
        await ws.send(message)  # type: ignore[attr-defined]


async def main() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        ws = await connect(f"ws://127.0.0.1:{server.port_bound}/")
        for message in ("hello", b"\x00" * 100_000):
            await ws.send(message)
            if await ws.recv() != message:
                sys.exit("smoke: the echo came back different")
        await ws.close()


with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
    runner.run(asyncio.wait_for(main(), 30))
print(f"smoke: uringws {metadata.version('uringws')} from {where.parent}: --version, doctor ({doctor['backend']}, "
      f"speedups {doctor.get('speedups')}), demo page, echo: ok")
