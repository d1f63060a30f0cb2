"""The benchmark's load client: picows on uvloop, one process, pinned to its own CPU by the harness.

picows (Cython frame parser, aiofastnet's Cython TLS) on uvloop is the fastest Python WebSocket client we have,
so the client is cheaper per message than any server under test; its own CPU time over the measured window is
reported next to the server's so a client-bound result is visible, not hidden.

One run = one scenario against one server: connect, warm up, then sample the server's user+sys CPU time
(``/proc/PID/stat``), the client's own CPU time (``getrusage``) and the counters at the start and end of the
measured window. Prints one JSON object on stdout and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MAX_FRAME = 16 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """user+sys seconds of process ``pid`` (all threads) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5): utime, stime


def proc_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class State:
    """Counters shared by all connections of one run (callbacks only increment; no locking on one thread)."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.running = True
        self.recording = False
        self.latencies: list[int] = []


class Echoer(WSListener):
    """Keeps ``inflight`` messages outstanding; each echo received sends the next (from the callback, no task)."""

    def __init__(self, st: State, payload: bytes, inflight: int, pingpong: bool = False) -> None:
        self.st, self.payload, self.inflight, self.pingpong = st, payload, inflight, pingpong
        self.transport: WSTransport | None = None
        self.sent_at = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter_ns()
        for _ in range(self.inflight):
            self.transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            st = self.st
            st.messages += 1
            st.bytes += frame.payload_size
            if self.pingpong:
                now = time.perf_counter_ns()
                if st.recording:
                    st.latencies.append(now - self.sent_at)
                self.sent_at = now
            if st.running:
                transport.send(WSMsgType.BINARY, self.payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class Receiver(WSListener):
    """Counts broadcast deliveries; the trigger connection keeps ``window`` fan-outs outstanding."""

    def __init__(self, st: State) -> None:
        self.st = st
        self.on_delivery: Callable[[], None] | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.st.messages += 1
            if self.on_delivery is not None:
                self.on_delivery()
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class Closer(WSListener):
    """Connection-rate client: close as soon as the upgrade is done, drop TCP when the server's close arrives."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send_close()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url
        self.ctx: ssl.SSLContext | None = None
        if self.url.startswith("wss:"):
            # No certificate check: the same cost for every server, and not the thing measured.
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self.st = State()
        self.tls: dict[str, Any] = {}

    async def connect(self, factory: Callable[[], WSListener]) -> tuple[WSTransport, Any]:
        transport, listener = await ws_connect(factory, self.url, ssl_context=self.ctx, max_frame_size=MAX_FRAME,
                                               websocket_handshake_timeout=30)
        if self.ctx is not None and not self.tls:
            ssl_object = transport.underlying_transport.get_extra_info("ssl_object")
            cipher = transport.underlying_transport.get_extra_info("cipher")
            if cipher is None and ssl_object is not None:
                cipher = ssl_object.cipher()
            if cipher:
                self.tls = {"cipher": cipher[0], "version": cipher[1]}
        return transport, listener

    async def connect_many(self, n: int, factory: Callable[[], WSListener], concurrency: int = 64) -> list[Any]:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> Any:
            async with sem:
                return await self.connect(factory)

        return await asyncio.gather(*(one() for _ in range(n)))

    def snapshot(self) -> dict[str, float]:
        server_cpu = sum(map(proc_cpu, self.args.server_pid))
        return {"t": time.perf_counter(), "server_cpu": server_cpu, "client_cpu": self_cpu(),
                "messages": self.st.messages, "bytes": self.st.bytes}

    async def window(self, on_start: Callable[[], None] | None = None) -> dict[str, float]:
        """Warm up, then measure for ``--duration`` seconds; return the deltas."""
        await asyncio.sleep(self.args.warmup)
        s0 = self.snapshot()
        self.st.recording = True
        if on_start is not None:
            on_start()
        await asyncio.sleep(self.args.duration)
        self.st.recording = False
        s1 = self.snapshot()
        self.st.running = False
        return {k: s1[k] - s0[k] for k in s0}

    # --- scenarios -----------------------------------------------------------------------------------------------
    async def echo(self, connections: int, inflight: int, pingpong: bool = False) -> dict[str, Any]:
        payload = os.urandom(self.args.size)
        pairs = await self.connect_many(connections, lambda: Echoer(self.st, payload, inflight, pingpong))
        for _, listener in pairs:
            listener.start()
        d = await self.window()
        out: dict[str, Any] = {
            "messages_per_s": d["messages"] / d["t"],
            "mb_per_s": d["bytes"] / d["t"] / 1e6,
            "server_cpu_us_per_msg": d["server_cpu"] / max(d["messages"], 1) * 1e6,
            "server_cpu_ns_per_byte": d["server_cpu"] / max(d["bytes"], 1) * 1e9,
            "messages": d["messages"],
        }
        if pingpong:
            lat = sorted(self.st.latencies)
            if lat:
                out["p50_us"] = lat[len(lat) // 2] / 1e3
                out["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3
        return self.finish(out, d)

    async def broadcast(self, connections: int, window: int) -> dict[str, Any]:
        payload = os.urandom(self.args.size)
        pairs = await self.connect_many(connections, lambda: Receiver(self.st))
        trigger = pairs[0][0]
        st = self.st
        # A server's handler joins its room after the client has seen the 101; one delivery lost to a member
        # that had not joined yet would stall the window below for good.
        await asyncio.sleep(self.args.warmup)
        sent = 0

        def top_up() -> None:
            # Keep at most `window` fan-outs of `connections` deliveries outstanding.
            nonlocal sent
            while st.running and sent * connections - st.messages < window * connections:
                trigger.send(WSMsgType.BINARY, payload)
                sent += 1

        # Every member tops up, not only the trigger: the trigger's own copies can all arrive before the
        # other members' (with several workers, its worker serves it first), and a top-up that ran only then
        # would find the window full and never run again.
        for _, listener in pairs:
            listener.on_delivery = top_up
        top_up()
        d = await self.window()
        out = {"deliveries_per_s": d["messages"] / d["t"],
               "server_cpu_us_per_delivery": d["server_cpu"] / max(d["messages"], 1) * 1e6,
               "messages": d["messages"]}
        return self.finish(out, d)

    async def connrate(self, concurrency: int) -> dict[str, Any]:
        st = self.st

        async def worker() -> None:
            while st.running:
                transport, _ = await self.connect(Closer)
                await asyncio.wait_for(transport.wait_disconnected(), 10)
                st.messages += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        d = await self.window()
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        out = {"connections_per_s": d["messages"] / d["t"],
               "server_cpu_us_per_conn": d["server_cpu"] / max(d["messages"], 1) * 1e6,
               "messages": d["messages"]}
        return self.finish(out, d)

    async def rss(self, connections: int) -> dict[str, Any]:
        pid = self.args.server_pid[0]
        # One connection and one echo first, so lazily built state (TLS, imports, caches) is in the baseline.
        payload = b"x" * 64
        _probe, listener = await self.connect(lambda: Echoer(self.st, payload, 1))
        self.st.running = False
        listener.start()
        while self.st.messages < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        rss0, cpu0, t0 = proc_rss(pid), proc_cpu(pid), time.perf_counter()
        await self.connect_many(connections, WSListener)
        t1, cpu1 = time.perf_counter(), proc_cpu(pid)
        await asyncio.sleep(self.args.idle)  # idle: let the server settle (pending buffers freed)
        rss1 = proc_rss(pid)
        return {"rss_kib_per_conn": (rss1 - rss0) / connections / 1024, "server_rss_base_mib": rss0 / 2**20,
                "server_rss_mib": rss1 / 2**20, "connections": connections,
                "connect_per_s": connections / (t1 - t0),
                "server_cpu_us_per_conn": (cpu1 - cpu0) / connections * 1e6, "tls": self.tls}

    def finish(self, out: dict[str, Any], d: dict[str, float]) -> dict[str, Any]:
        out["window_s"] = d["t"]
        out["server_cpu_pct"] = d["server_cpu"] / d["t"] * 100
        out["client_cpu_pct"] = d["client_cpu"] / d["t"] * 100
        out["tls"] = self.tls
        return out


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    r = Runner(args)
    s = args.scenario
    if s == "pingpong":
        return await r.echo(1, 1, pingpong=True)
    if s == "echo":
        return await r.echo(args.connections, args.inflight)
    if s == "broadcast":
        return await r.broadcast(args.connections, args.inflight)
    if s == "connrate":
        return await r.connrate(args.connections)
    if s == "rss":
        return await r.rss(args.connections)
    raise SystemExit(f"unknown scenario {s}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--server-pid", type=int, action="append", required=True,
                   help="a server process; repeat for one with several (workers): their CPU times add up")
    p.add_argument("--scenario", choices=["pingpong", "echo", "broadcast", "connrate", "rss"], required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--idle", type=float, default=1.0)
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        result = uvloop.run(amain(args))
    except Exception as exc:  # noqa: BLE001 - reported to the harness as data, not a traceback on a terminal
        result = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # thousands of open connections: skip the orderly teardown, the kernel closes them


if __name__ == "__main__":
    main()
