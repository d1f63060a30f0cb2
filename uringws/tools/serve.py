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

#: The hub channel of the demo's /broadcast room.
BROADCAST_CHANNEL = "broadcast"


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
    batch_wait: float = 0.0  # seconds a busy io_uring loop may wait for a batch of completions (0: never)
    max_size: int | None = 16 << 20
    max_queue: int | None = 16
    max_memory: int | None = 256 << 20  # server-wide budget for messages being received (per worker process)
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    compression: bool = True
    write_limit: int = 64 * 1024
    close_timeout: float = 10.0
    sndbuf: int | None = None  # SO_SNDBUF of accepted sockets (tests force short writes with a tiny one)
    workers: int = 1  # >1: that many processes on one port under a supervisor (uringws.workers)
    pubsub: str | None = None  # redis:// or rediss:// URL the demo's /broadcast hub goes through
    pubsub_mode: str = "pubsub"  # pubsub | streams


# --- apps --------------------------------------------------------------------------------------------------------
async def echo_handler(ws: Any) -> None:
    """Echo every message, on any path."""
    async for message in ws:
        await ws.send(message)
        del message  # not kept while waiting for the next one: a large message would be held twice


class DemoApp:
    """``/`` the page, ``/info`` JSON, ``/healthz``, ``/echo`` echo, ``/broadcast`` a chat room.

    The room goes through ``hub`` when given (every worker and node sharing its backend is one room), else it
    is this process's connections.
    """

    def __init__(self, info: dict[str, Any], stats: Callable[[], dict[str, int]] | None = None,
                 hub: Any = None) -> None:
        self.info = info
        self.stats = stats
        #: The server's counters for the page's live panel (``uringws.metrics.summary``), once it listens.
        self.live: Callable[[], dict[str, float]] | None = None
        self.hub = hub
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
            return self.healthz()
        if route in ("/echo", "/broadcast"):
            return None  # upgrade to WebSocket
        return 404, [("Content-Type", "text/plain")], b"not found\n"

    async def handler(self, ws: Any) -> None:
        route = ws.request.path.split("?", 1)[0]
        if route == "/echo":
            await echo_handler(ws)
            return
        self.room.add(ws)
        try:
            if self.hub is None:
                from ..server import broadcast

                async for message in ws:
                    broadcast(self.room, message)
            else:
                await self._chat_through_hub(ws)
        finally:
            self.room.discard(ws)

    async def _chat_through_hub(self, ws: Any) -> None:
        from ..pubsub import BackendUnavailable

        await self.hub.join(ws, BROADCAST_CHANNEL)
        async for message in ws:
            try:
                await self.hub.publish(BROADCAST_CHANNEL, message)
            except BackendUnavailable:
                pass  # reached this process's members only; /healthz says degraded and the backend logged it

    def healthz(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """200 while the room reaches every worker/node, 503 (degraded: local delivery only) otherwise."""
        hub = self.hub
        body: dict[str, Any] = {"status": "ok"}
        if hub is not None:
            body.update(hub=hub.state, backend=type(hub.backend).__name__)
            if not hub.healthy:
                body["status"] = "degraded"
        status = 200 if body["status"] == "ok" else 503
        return status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], \
            json.dumps(body).encode()


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
def loop_factory(backend: str, batch_wait: float = 0.0) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    from ..ring.probe import availability

    avail = availability()
    if backend == "uring" and not avail.usable:
        raise UsageError(f"--backend uring: io_uring is not usable here: {avail.reason}")
    from ..tls import new_event_loop

    if batch_wait:
        if backend == "epoll" or not avail.usable:
            why = "--backend epoll" if backend == "epoll" else avail.reason
            raise UsageError(f"--batch-wait-us needs the io_uring backend ({why})")
        try:
            new_event_loop(backend="io_uring", batch_wait=batch_wait).close()  # fail here, not in every worker
        except (OSError, ValueError) as exc:
            raise UsageError(f"--batch-wait-us: {exc}") from None
        return ((lambda: new_event_loop(backend="io_uring", batch_wait=batch_wait)),
                f"io_uring, completion batching up to {batch_wait * 1e6:g} us")
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


# --- hub (the demo's /broadcast room across workers and nodes) ------------------------------------------------
def make_backend(opts: ServeOptions, link: Any = None) -> Any:
    """The hub backend ``opts`` asks for: Redis with --pubsub, the supervisor relay in a worker, else None."""
    if opts.pubsub:
        from ..pubsub import RedisBackend

        if opts.pubsub_mode not in ("pubsub", "streams"):
            raise UsageError(f"--pubsub-mode {opts.pubsub_mode!r}: use pubsub or streams")
        try:
            return RedisBackend(opts.pubsub, mode=opts.pubsub_mode)  # type: ignore[arg-type]
        except ImportError:
            raise UsageError("--pubsub needs redis-py: pip install 'uringws[redis]'") from None
        except ValueError as exc:
            raise UsageError(f"--pubsub: {exc}") from None
    if link is not None:
        from ..pubsub.workersbackend import WorkersBackend

        return WorkersBackend(link)
    return None


async def start_hub(opts: ServeOptions, backend: Any) -> Any:
    """A started Hub over ``backend``; an unreachable --pubsub service is a UsageError (exit 2, one line)."""
    from ..pubsub import BackendUnavailable, Hub

    hub = Hub(backend, max_size=opts.max_size)
    try:
        await hub.start()
    except BackendUnavailable as exc:
        raise UsageError(f"--pubsub: {exc}") from None
    return hub


async def check_pubsub(opts: ServeOptions) -> None:
    """Connect to the --pubsub service once and leave (the supervisor does it before starting workers)."""
    backend = make_backend(opts)
    if backend is not None:
        hub = await start_hub(opts, backend)
        await hub.close()


# --- workers -----------------------------------------------------------------------------------------------------
def supervise(opts: ServeOptions, backend_line: str, tls: tuple[ssl.SSLContext, str] | None, out: Any) -> int:
    """``--workers N`` (N > 1): the supervisor of uringws.workers, with the same banner as one process."""
    from .. import workers

    if opts.pubsub:
        asyncio.run(check_pubsub(opts))

    def banner() -> None:
        print_banner(opts, backend_line, tls, out, f"{opts.workers} workers")

    try:
        return workers.run_supervisor(opts, opts.workers, banner, out)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise listen_error(opts, exc) from None


def worker_fields(worker: Any) -> dict[str, Any]:
    """What /info says about the process that answered."""
    return {"worker": worker.id if worker else 0, "workers": worker.count if worker else 1, "pid": os.getpid()}


# --- serving -----------------------------------------------------------------------------------------------------
def listen_error(opts: ServeOptions, exc: OSError) -> UsageError:
    if exc.errno == errno.EADDRINUSE:
        return UsageError(f"port {opts.port} on {opts.host} is in use: stop the other server or pick another "
                          "with --port")
    if exc.errno == errno.EACCES:
        return UsageError(f"no permission to listen on {opts.host}:{opts.port}: use a port above 1023")
    return UsageError(f"cannot listen on {opts.host}:{opts.port}: {exc.strerror or exc}")


def print_banner(opts: ServeOptions, backend_line: str, tls: tuple[ssl.SSLContext, str] | None, out: Any,
                 extra: str = "") -> None:
    scheme = "https" if tls else "http"
    host = f"[{opts.host}]" if ":" in opts.host else opts.host
    app = f"app: {opts.app}, {extra}" if extra else f"app: {opts.app}"
    print(f"uringws {__version__} serving {scheme}://{host}:{opts.port}/ ({app})", file=out)
    print(f"  backend: {backend_line}", file=out)
    if tls:
        print(f"  {tls[1]}", file=out)
    else:
        print("  WARNING: --no-tls: plain HTTP and ws://, readable and alterable by anyone on the path", file=out)
    if opts.pubsub:
        print(f"  /broadcast hub: {opts.pubsub_mode} on {redact(opts.pubsub)}", file=out)
    print("  Ctrl-C to stop", file=out, flush=True)


def redact(url: str) -> str:
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


async def _serve(opts: ServeOptions, backend_line: str, tls: tuple[ssl.SSLContext, str] | None,
                 out: Any, worker: Any = None) -> int:
    from ..server import serve

    loop = asyncio.get_running_loop()
    backend = getattr(loop, "backend", "asyncio")
    info = {"version": __version__, "backend": backend, "tls": "TLS" if tls else None, "compiled": compiled_pieces(),
            **worker_fields(worker)}
    link = None
    if worker is not None:
        from ..pubsub.workersbackend import SupervisorLink

        link = await SupervisorLink.connect(worker.fd)
    hub = None
    process_request = None
    if opts.app == "demo":
        hub_backend = make_backend(opts, link)
        if hub_backend is not None:
            hub = await start_hub(opts, hub_backend)
        send_stats = getattr(loop, "send_stats", None)  # the ring loop's send-path counters (short sends...)
        app = DemoApp(info, send_stats.as_dict if send_stats is not None else None, hub)
        handler: Handler = app.handler

        def process_request(connection: Any, request: Any) -> Any:
            answer = app.process_request(request.path)
            return None if answer is None else connection.respond(*answer)
    elif opts.app == "echo":
        handler = echo_handler
    else:
        handler = load_handler(opts.app, opts.app_dir)

    servers: list[Any] = []  # filled once listening; /metrics reads it
    signals = asyncio.Queue[int]()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    kwargs: dict[str, Any] = {
        "ssl": tls[0] if tls else None, "process_request": process_request, "max_size": opts.max_size,
        "max_queue": opts.max_queue, "ping_interval": opts.ping_interval, "ping_timeout": opts.ping_timeout,
        "compression": "deflate" if opts.compression else None, "write_limit": opts.write_limit,
        "close_timeout": opts.close_timeout, "max_memory": opts.max_memory}
    if opts.sndbuf:
        kwargs["sndbuf"] = opts.sndbuf
    kwargs["process_request"] = with_metrics(process_request, servers)
    if worker is not None:
        kwargs["reuse_port"] = True  # every worker listens on the port; the kernel spreads connections
    try:
        server = await serve(handler, opts.host, opts.port, **kwargs)
    except OSError as exc:
        raise listen_error(opts, exc) from None
    servers.append(server)
    if opts.app == "demo":
        from .. import metrics

        app.live = lambda: metrics.summary(servers, loop)
    if link is None:
        print_banner(opts, backend_line, tls, out)
    else:
        from ..pubsub.workersbackend import READY, encode

        link.send(encode(READY))
    try:
        return await _run_until_stopped(opts, server, signals, link, out, worker)
    finally:
        if hub is not None:
            await hub.close()


async def _run_until_stopped(opts: ServeOptions, server: Any, signals: asyncio.Queue[int], link: Any, out: Any,
                             worker: Any) -> int:
    """Serve until a signal (or the supervisor is gone), then drain; a second signal aborts."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(signals.get())]
    if link is not None:
        waits.append(link.lost)
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    waits[0].cancel()
    who = f"[worker {worker.id}] " if worker is not None else ""
    if link is not None and link.lost.done():
        log.warning("the supervisor is gone: shutting down")
    elif worker is None:
        print(f"{who}uringws: shutting down: closing connections with 1001 after their queued data (a second "
              "Ctrl-C aborts)", file=out, flush=True)
    server.close()  # stop accepting; open connections get close code 1001 (going away)
    closed = asyncio.ensure_future(server.wait_closed())
    again = asyncio.ensure_future(signals.get())
    try:
        done, _ = await asyncio.wait([closed, again], timeout=opts.close_timeout + 5,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        again.cancel()
    if closed in done:
        return 0
    closed.cancel()
    why = "a second signal" if again in done else "some connections did not close in time"
    print(f"{who}uringws: {why}: aborted the remaining connections", file=out, flush=True)
    for conn in list(server.connections):
        if conn.transport is not None:
            conn.transport.abort()
    return 0 if again not in done else 1


def main(opts: ServeOptions, out: Any = sys.stdout, worker: Any = None) -> int:
    """Run ``uringws serve``: one process, or (``opts.workers`` > 1) a supervisor of workers; the exit status.

    ``worker`` (a uringws.workers.WorkerInfo) is given in a worker process started by the supervisor.
    """
    try:
        if opts.app not in ("demo", "echo"):
            load_handler(opts.app, opts.app_dir)  # fail before binding anything
        factory, backend_line = loop_factory(opts.backend, opts.batch_wait)
        tls = make_tls(opts) if opts.tls else None
        if opts.workers > 1 and worker is None:
            return supervise(opts, backend_line, tls, out)
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(opts, backend_line, tls, out, worker))
    except UsageError as exc:
        where = f"worker {worker.id}: " if worker is not None else ""
        print(f"uringws serve: {where}{exc}", file=sys.stderr)
        return 2
