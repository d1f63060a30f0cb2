"""``uringws serve``: HTTPS + WSS on embedded defaults, the demo app, a clean shutdown.

With no arguments: 127.0.0.1:8443, a self-signed development certificate generated on first run and cached in
the user's data directory, and the demo app (a page at ``/``, an echo endpoint at ``/echo``, a broadcast room at
``/broadcast``). Every failure a user can fix (port in use, unreadable certificate, handler that cannot be
imported, io_uring asked for but unusable) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .. import __version__

log = logging.getLogger("uringws.serve")

Handler = Callable[[Any], Awaitable[None]]


class UsageError(Exception):
    """Something the user can fix; the message says what. Exit status 2."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    certfile: str | None = None
    keyfile: str | None = None
    app: str = "demo"
    app_dir: str = "."  # where MODULE of --app MODULE:HANDLER is looked up first
    tls: bool = True
    backend: str = "auto"  # auto | uring | epoll
    max_size: int | None = 16 << 20
    max_queue: int | None = 16
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    compression: bool = True
    write_limit: int = 64 * 1024
    close_timeout: float = 10.0
    sndbuf: int | None = None  # SO_SNDBUF of accepted sockets (tests force short writes with a tiny one)


# --- apps --------------------------------------------------------------------------------------------------------
async def echo_handler(ws: Any) -> None:
    """Echo every message, on any path."""
    async for message in ws:
        await ws.send(message)


class DemoApp:
    """``/`` the page, ``/info`` JSON, ``/healthz``, ``/echo`` echo, ``/broadcast`` a chat room."""

    def __init__(self, info: dict[str, Any], stats: Callable[[], dict[str, int]] | None = None) -> None:
        self.info = info
        self.stats = stats
        #: The server's counters for the page's live panel (``uringws.metrics.summary``), once it listens.
        self.live: Callable[[], dict[str, float]] | None = None
        self.room: set[Any] = set()
        self.page = resources.files("uringws.tools").joinpath("static/demo.html").read_bytes()

    def process_request(self, path: str) -> tuple[int, list[tuple[str, str]], bytes] | None:
        route = path.split("?", 1)[0]
        if route in ("/", "/index.html"):
            return 200, [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")], self.page
        if route == "/info":
            info = dict(self.info, connections=len(self.room), send_stats=self.stats() if self.stats else None,
                        live=self.live() if self.live else None)
            return 200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], json.dumps(info).encode()
        if route == "/healthz":
            return 200, [("Content-Type", "text/plain")], b"ok\n"
        if route in ("/echo", "/broadcast"):
            return None  # upgrade to WebSocket
        return 404, [("Content-Type", "text/plain")], b"not found\n"

    async def handler(self, ws: Any) -> None:
        route = ws.request.path.split("?", 1)[0]
        if route == "/echo":
            await echo_handler(ws)
            return
        from ..server import broadcast

        self.room.add(ws)
        try:
            async for message in ws:
                broadcast(self.room, message)
        finally:
            self.room.discard(ws)


def load_handler(spec: str, app_dir: str | None = None) -> Handler:
    """``MODULE:HANDLER`` -> the coroutine function; ``app_dir`` goes first on ``sys.path`` (as in uvicorn)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--app {spec!r}: use demo, echo or MODULE:HANDLER (e.g. myapp.ws:handler)")
    if app_dir is not None:
        # The console script's sys.path starts with its bin/ directory, not the working directory, so without
        # this `uringws serve --app myapp:handler` next to myapp.py would only work with PYTHONPATH=.
        path = os.path.abspath(app_dir)
        if not os.path.isdir(path):
            raise UsageError(f"--app-dir {app_dir!r} is not a directory")
        if path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or any error the module raises at import
        where = f" (looked in {app_dir!r} first; see --app-dir)" if app_dir is not None else ""
        raise UsageError(f"--app {spec!r}: cannot import {module_name!r}: {exc}{where}") from None
    handler = module
    for part in attr.split("."):
        handler = getattr(handler, part, None)  # type: ignore[assignment]
        if handler is None:
            raise UsageError(f"--app {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(handler):
        raise UsageError(f"--app {spec!r}: {attr!r} is not callable")
    return handler


# --- TLS ---------------------------------------------------------------------------------------------------------
def make_tls(opts: ServeOptions) -> tuple[ssl.SSLContext, str]:
    """The server context and a line that says where the certificate came from."""
    from ..tls.context import server_context

    if opts.certfile:
        keyfile = opts.keyfile or opts.certfile
        try:
            ctx = server_context(opts.certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load certificate {opts.certfile!r} / key {keyfile!r}: {exc}; check the paths "
                             "and that the key matches the certificate") from None
        return ctx, f"certificate {opts.certfile}"
    if opts.keyfile:
        raise UsageError("--keyfile needs --certfile")
    from ..tls.devcert import ensure_devcert

    try:
        dev = ensure_devcert()
    except OSError as exc:
        raise UsageError(f"cannot create the development certificate: {exc}") from None
    ctx = server_context(str(dev.cert_path), str(dev.key_path))
    return ctx, (f"self-signed development certificate {dev.cert_path}\n"
                 f"  SHA-256 fingerprint {dev.fingerprint}")


# --- backend -----------------------------------------------------------------------------------------------------
def loop_factory(backend: str) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    from ..ring.probe import availability

    avail = availability()
    if backend == "uring" and not avail.usable:
        raise UsageError(f"--backend uring: io_uring is not usable here: {avail.reason}")
    from ..tls import new_event_loop

    if backend == "epoll":
        return (lambda: new_event_loop(backend="epoll")), "epoll (asked for with --backend epoll)"
    if avail.usable:
        return (lambda: new_event_loop(backend="io_uring")), "io_uring"
    return (lambda: new_event_loop(backend="epoll")), f"epoll, because {avail.reason}"


# --- metrics -----------------------------------------------------------------------------------------------------
def compiled_pieces() -> dict[str, bool]:
    """Which of the WebSocket layer's optional C twins are in use (False: not built, or URINGWS_NO_SPEEDUPS=1)."""
    from ..ws import frames

    return {"apply_mask": frames.apply_mask is not frames.apply_mask_py,
            "parse_messages": frames.parse_messages is not frames.parse_messages_py,
            "FrameBuffer": frames.FrameBuffer is not frames.FrameBufferPy}


def with_metrics(process_request: Callable[[Any, Any], Any] | None,
                 servers: list[Any]) -> Callable[[Any, Any], Any]:
    """``process_request`` that answers ``GET /metrics`` (Prometheus text) for ``servers`` and passes on the rest."""
    from .. import metrics

    def answer(connection: Any, request: Any) -> Any:
        if request.path.split("?", 1)[0] == "/metrics":
            return connection.respond(200, [("Content-Type", metrics.CONTENT_TYPE), ("Cache-Control", "no-store")],
                                      metrics.render(servers))
        return None if process_request is None else process_request(connection, request)

    return answer


# --- serving -----------------------------------------------------------------------------------------------------
async def _serve(opts: ServeOptions, backend_line: str, tls: tuple[ssl.SSLContext, str] | None,
                 out: Any) -> int:
    from ..server import serve

    loop = asyncio.get_running_loop()
    backend = getattr(loop, "backend", "asyncio")
    info = {"version": __version__, "backend": backend, "tls": "TLS" if tls else None, "compiled": compiled_pieces()}
    process_request = None
    if opts.app == "demo":
        send_stats = getattr(loop, "send_stats", None)  # the ring loop's send-path counters (short sends...)
        app = DemoApp(info, send_stats.as_dict if send_stats is not None else None)
        handler: Handler = app.handler

        def process_request(connection: Any, request: Any) -> Any:
            answer = app.process_request(request.path)
            return None if answer is None else connection.respond(*answer)
    elif opts.app == "echo":
        handler = echo_handler
    else:
        handler = load_handler(opts.app, opts.app_dir)

    servers: list[Any] = []  # filled once listening; /metrics reads it
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    kwargs: dict[str, Any] = {
        "ssl": tls[0] if tls else None, "process_request": process_request, "max_size": opts.max_size,
        "max_queue": opts.max_queue, "ping_interval": opts.ping_interval, "ping_timeout": opts.ping_timeout,
        "compression": "deflate" if opts.compression else None, "write_limit": opts.write_limit,
        "close_timeout": opts.close_timeout}
    if opts.sndbuf:
        kwargs["sndbuf"] = opts.sndbuf
    kwargs["process_request"] = with_metrics(process_request, servers)
    try:
        server = await serve(handler, opts.host, opts.port, **kwargs)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {opts.port} on {opts.host} is in use: stop the other server or pick another "
                             "with --port") from None
        if exc.errno == errno.EACCES:
            raise UsageError(f"no permission to listen on {opts.host}:{opts.port}: use a port above 1023") from None
        raise UsageError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}") from None
    servers.append(server)
    if opts.app == "demo":
        from .. import metrics

        app.live = lambda: metrics.summary(servers, loop)
    scheme = "https" if tls else "http"
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    print(f"uringws {__version__} serving {scheme}://{host}:{opts.port}/ (app: {opts.app})", file=out)
    print(f"  backend: {backend_line}", file=out)
    if tls:
        print(f"  {tls[1]}", file=out)
    else:
        print("  WARNING: --no-tls: plain HTTP and ws://, readable and alterable by anyone on the path", file=out)
    print("  Ctrl-C to stop", file=out, flush=True)
    await stop.wait()
    print("uringws: shutting down: closing connections with 1001 after their queued data", file=out, flush=True)
    server.close()  # stop accepting; open connections get close code 1001 (going away)
    try:
        await asyncio.wait_for(server.wait_closed(), opts.close_timeout + 5)
    except TimeoutError:
        print("uringws: some connections did not close in time; aborted them", file=out)
    return 0


def main(opts: ServeOptions, out: Any = sys.stdout) -> int:
    try:
        if opts.app not in ("demo", "echo"):
            load_handler(opts.app, opts.app_dir)  # fail before binding anything
        factory, backend_line = loop_factory(opts.backend)
        tls = make_tls(opts) if opts.tls else None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(opts, backend_line, tls, out))
    except UsageError as exc:
        print(f"uringws serve: {exc}", file=sys.stderr)
        return 2
