"""What every benchmark server script shares: arguments, TLS context, fd limit, the READY line.

Each server is its own process, started by ``uringws bench`` and pinned to one CPU. It prints
``READY <port>`` on stdout once it accepts connections and runs until killed. Two modes:

- ``echo``: send every received message back on its connection.
- ``broadcast``: every received message is sent to every open connection (including the sender) through the
  stack's own broadcast facility — the load client uses one connection to trigger fan-outs to all.

Settings are the same for all stacks: compression off, keepalive pings off, messages up to 16 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

MAX_SIZE = 16 << 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments shared by all server scripts."""
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--certfile", help="PEM certificate chain; without it the server speaks plain ws://")
    p.add_argument("--keyfile")
    p.add_argument("--mode", choices=["echo", "broadcast"], default="echo")
    p.add_argument("--loop", choices=["asyncio", "uvloop", "uring", "uring-batch"], default="asyncio")
    return p.parse_args(argv)


def server_ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The one TLS configuration every stack gets: stdlib defaults (TLS 1.3 negotiated) with our cert."""
    if not args.certfile:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.certfile, args.keyfile)
    return ctx


def raise_fd_limit() -> None:
    """Scenario (f) keeps thousands of sockets open: lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready(port: int) -> None:
    """Tell the harness the server accepts connections (it reads this line from our stdout)."""
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()


BATCH_WAIT = 50e-6  # seconds: the "uring-batch" loop's batch_wait


def run(main: Callable[[], Coroutine[Any, Any, None]], loop_name: str) -> None:
    """Run ``main`` forever on the requested event loop."""
    raise_fd_limit()
    if loop_name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    elif loop_name == "uring":
        # The public loop: the io_uring loop with uringws' own TLS layer (what ``uringws serve`` runs on).
        from uringws import new_event_loop

        factory = new_event_loop
    elif loop_name == "uring-batch":
        # The same loop with completion batching (new_event_loop(batch_wait=...)): under load a wait may hold
        # out up to 50 us for 16 completions.
        from uringws import new_event_loop

        def factory() -> asyncio.AbstractEventLoop:
            return new_event_loop(batch_wait=BATCH_WAIT)
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
