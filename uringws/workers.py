"""``uringws serve --workers N``: N worker processes on one port under a small supervisor.

Each worker is a fresh Python process (not a fork: no inherited ring, loop or threads) running ``uringws serve``
with its own event loop, ring and SO_REUSEPORT listening socket; the kernel spreads new connections over them.
The supervisor holds no client connection. It

- starts the workers and reports ready once every one listens (one that fails at start stops them all: exit 2
  for what the user can fix, as a single process does);
- restarts a worker that dies (exit status or signal logged, backoff 0.2 s doubling to 10 s, reset once the
  replacement has run 30 s); the other workers and their clients are untouched;
- on SIGTERM/SIGINT sends SIGTERM to every worker (each closes its connections with 1001 after their queued
  data) and exits 0 once they are done; a second signal SIGKILLs them and exits 1;
- relays the demo hub's messages between workers over one unix socketpair per worker
  (``uringws.pubsub.workersbackend``) when no ``--pubsub`` service is given.

Workers run in their own process group, so a terminal's Ctrl-C reaches only the supervisor, which drains them
once. A worker whose supervisor disappears (its socketpair closes) drains and exits by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from .pubsub.workersbackend import PUBLISH, READY, SUBSCRIBE, UNSUBSCRIBE, FrameReader, encode

__all__ = ["WorkerInfo", "parse_workers", "run_supervisor", "usable_cpus", "worker_main"]

log = logging.getLogger("uringws.workers")

_ENV = "URINGWS_WORKER"
BACKOFF_MIN, BACKOFF_MAX, BACKOFF_RESET = 0.2, 10.0, 30.0
#: Bytes the supervisor queues for one worker before it drops that worker's relayed messages (a stalled
#: worker must not grow the supervisor without bound; the same policy as broadcast() for a slow connection).
RELAY_LIMIT = 64 << 20


@dataclass
class WorkerInfo:
    """Who this worker is: ``id`` 0..count-1 (a replacement keeps the id), its end of the socketpair."""

    id: int
    count: int
    fd: int


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def parse_workers(text: str) -> int:
    """``auto`` (the CPUs this process may run on) or a positive integer."""
    if text == "auto":
        return usable_cpus()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--workers {text!r}: use a positive number or 'auto'")
    return value


def describe_exit(status: int) -> str:
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


# --- worker side -------------------------------------------------------------------------------------------------
def worker_main() -> int:
    """Entry point of a worker process (started by the supervisor, never by hand)."""
    from .tools import serve

    spec = json.loads(os.environ.pop(_ENV))
    info = WorkerInfo(spec["id"], spec["count"], spec["fd"])
    logging.basicConfig(level=spec["log_level"],
                        format=f"%(asctime)s %(levelname)s [worker {info.id}] %(name)s: %(message)s")
    opts = serve.ServeOptions(**spec["opts"])
    return serve.main(opts, worker=info)


# --- supervisor side ---------------------------------------------------------------------------------------------
class _Pipe(asyncio.Protocol):
    def __init__(self, sup: Supervisor, worker: _Worker) -> None:
        self.sup = sup
        self.worker = worker
        self.reader = FrameReader()

    def data_received(self, data: bytes) -> None:
        for kind, channel, _, raw in self.reader.feed(data):
            self.sup._on_frame(self.worker, kind, channel, raw)


class _Worker:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.transport: asyncio.Transport | None = None
        self.channels: set[str] = set()
        self.ready = False
        self.started = 0.0
        self.backoff = BACKOFF_MIN
        self.dropped = 0
        self.exited: asyncio.Future[int] | None = None
        self.attach: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, opts: Any, count: int, log_level: str, out: Any) -> None:
        self.opts = opts
        self.count = count
        self.log_level = log_level
        self.out = out
        self.workers = [_Worker(slot) for slot in range(count)]
        self.stopping = False
        self.restarts = 0
        self.serving = False  # every worker has been ready once: from now on a dead one is restarted
        self._stop: asyncio.Future[Any] | None = None
        self._abort: asyncio.Future[Any] | None = None
        self._failed: asyncio.Future[Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def run(self, banner: Any) -> int:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        self._abort = loop.create_future()
        self._failed = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        for worker in self.workers:
            self._spawn(worker)
        all_ready: asyncio.Future[Any] = loop.create_task(self._all_ready())
        await asyncio.wait([all_ready, self._stop, self._failed], return_when=asyncio.FIRST_COMPLETED)
        if self._failed.done():
            all_ready.cancel()
            await self._kill_all()
            return int(self._failed.result())
        if all_ready.done():
            self.serving = True
            banner()
            await self._stop
        else:
            all_ready.cancel()
        return await self._drain()

    async def _all_ready(self) -> None:
        while not all(w.ready for w in self.workers):
            await asyncio.sleep(0.02)

    def _on_signal(self) -> None:
        assert self._stop is not None and self._abort is not None
        if not self._stop.done():
            self._stop.set_result(None)
        elif not self._abort.done():
            self._abort.set_result(None)

    async def _drain(self) -> int:
        assert self._abort is not None
        self.stopping = True
        print(f"uringws: shutting down {self.count} workers: closing connections with 1001 after their queued "
              "data (a second Ctrl-C aborts)", file=self.out, flush=True)
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        exits = [w.exited for w in self.workers if w.exited is not None]
        # Each worker bounds its own drain (close_timeout + 5 s); this is the backstop for a stuck one.
        done: asyncio.Future[Any] = asyncio.gather(*exits)
        await asyncio.wait([done, self._abort], timeout=self.opts.close_timeout + 15,
                           return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            why = "a second signal" if self._abort.done() else "workers did not finish draining in time"
            print(f"uringws: {why}: killing the workers", file=self.out, flush=True)
            await self._kill_all()
            return 1
        statuses = done.result()
        # A worker still starting has no signal handler yet: SIGTERM ends it at once, with nothing to drain.
        bad = [(w.slot, s) for w, s in zip(self.workers, statuses, strict=False)
               if s != 0 and not (s == -signal.SIGTERM and not w.ready)]
        for slot, status in bad:
            log.warning("worker %d %s while draining", slot, describe_exit(status))
        return 1 if bad else 0

    async def _kill_all(self) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
        exits = [w.exited for w in self.workers if w.exited is not None and not w.exited.done()]
        if exits:
            await asyncio.wait(exits, timeout=10)

    # -- workers -------------------------------------------------------------------------------------------
    def _spawn(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {"id": worker.slot, "count": self.count, "fd": theirs.fileno(), "log_level": self.log_level,
                "opts": dataclasses.asdict(self.opts)}
        env = dict(os.environ, **{_ENV: json.dumps(spec)})
        cmd = [sys.executable, "-c", "from uringws.workers import worker_main; raise SystemExit(worker_main())"]
        try:
            # A process group of its own: a terminal's Ctrl-C goes to the supervisor only, which drains once.
            worker.proc = subprocess.Popen(cmd, env=env, pass_fds=(theirs.fileno(),), process_group=0)
        finally:
            theirs.close()
        worker.pidfd = os.pidfd_open(worker.proc.pid)
        worker.exited = loop.create_future()
        worker.ready = False
        worker.started = loop.time()
        worker.channels.clear()
        worker.dropped = 0
        loop.add_reader(worker.pidfd, self._on_exit, worker)
        worker.attach = loop.create_task(self._attach(worker, ours, worker.exited))
        log.debug("worker %d started: pid %d", worker.slot, worker.proc.pid)

    async def _attach(self, worker: _Worker, sock: socket.socket, exited: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(lambda: _Pipe(self, worker), sock)
        if exited.done():  # the worker died before its pipe was set up
            transport.abort()
        else:
            worker.transport = transport

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        assert worker.proc is not None and worker.exited is not None
        status = worker.proc.wait()
        if worker.transport is not None:
            worker.transport.abort()
            worker.transport = None
        worker.channels.clear()
        worker.exited.set_result(status)
        if self.stopping:
            return
        if not self.serving:
            # Failed before the server ever came up (its one-line error is on stderr): give up, as one process does.
            assert self._failed is not None
            if not self._failed.done():
                self._failed.set_result(2 if status == 2 else 1)
            return
        uptime = loop.time() - worker.started
        if uptime > BACKOFF_RESET:
            worker.backoff = BACKOFF_MIN
        delay = worker.backoff
        worker.backoff = min(worker.backoff * 2, BACKOFF_MAX)
        log.warning("worker %d (pid %d) %s after %.1f s; restarting it in %.1f s", worker.slot, worker.proc.pid,
                    describe_exit(status), uptime, delay)
        self.restarts += 1
        loop.call_later(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        if not self.stopping:
            self._spawn(worker)

    # -- relay ---------------------------------------------------------------------------------------------
    def _on_frame(self, worker: _Worker, kind: bytes, channel: str, raw: bytes) -> None:
        if kind == PUBLISH:
            for other in self.workers:
                if other is worker or channel not in other.channels or other.transport is None:
                    continue
                if other.transport.get_write_buffer_size() > RELAY_LIMIT:
                    if not other.dropped:
                        log.warning("worker %d is %d bytes behind on relayed messages: dropping them until it "
                                    "catches up", other.slot, RELAY_LIMIT)
                    other.dropped += 1
                    continue
                other.dropped = 0
                other.transport.write(raw)
        elif kind == SUBSCRIBE:
            worker.channels.add(channel)
            if worker.transport is not None:
                worker.transport.write(encode(SUBSCRIBE))
        elif kind == UNSUBSCRIBE:
            worker.channels.discard(channel)
        elif kind == READY:
            worker.ready = True
            if self.restarts and all(w.ready for w in self.workers):
                log.info("worker %d is serving again", worker.slot)


def check_port(host: str, port: int) -> None:
    """Raise OSError if host:port cannot be bound with SO_REUSEPORT (another server holds it without it)."""
    for family, type_, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE):
        with socket.socket(family, type_, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
        return


def run_supervisor(opts: Any, count: int, banner: Any, out: Any = sys.stdout) -> int:
    """Run ``count`` workers of ``uringws serve`` (``opts``: its ServeOptions) until a signal; the exit status."""
    if opts.port == 0:
        raise ValueError("--port 0 with --workers: each worker would get a port of its own; pick a port")
    try:
        check_port(opts.host, opts.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, f"port {opts.port} on {opts.host} is in use") from None
        raise
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    supervisor = Supervisor(opts, count, level, out)
    return asyncio.run(supervisor.run(banner))
