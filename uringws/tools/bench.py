"""``uringws bench``: uringws against websockets, picows and aiohttp, measured the same way in the same run.

Every (scenario, server) measurement starts a fresh echo/broadcast server process pinned to CPU 0 and the load
client (picows on uvloop, ``benchmarks/loadclient.py``) pinned to CPU 1. The client samples the server's user+sys
CPU time from ``/proc/PID/stat`` and its own from ``getrusage`` at both ends of the measured window. Servers
alternate within each round (the order rotates every round); each round also measures the TLS floor
(``benchmarks/tls_floor.py``: ``SSLObject`` write + read over memory BIOs) pinned to the servers' CPU. The
report gives medians over rounds and ratios to uringws in one table, JSON and a PNG plot.

The server scripts, the client and the floor live in the source tree's ``benchmarks/`` directory and need the
benchmark environment (``pip install uringws[bench]``: websockets, picows, aiohttp, uvloop, matplotlib); none of
them is a runtime dependency of uringws.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import select
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KiB, MiB = 1 << 10, 1 << 20
SERVER_CPU, CLIENT_CPU = 0, 1
Floor = dict[str, Any]


# --- what is measured -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    key: str  # key in the load client's JSON
    label: str
    higher_is_better: bool | None  # None: informational (client CPU), no ratio plotted
    floor: Callable[[Floor], float | None] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    client: str  # loadclient --scenario
    size: int = 64
    connections: int = 1
    inflight: int = 1
    mode: str = "echo"  # server --mode
    tls: bool = True
    metrics: tuple[Metric, ...] = ()
    first_round_only: bool = False  # RSS growth is not a rate: one measurement per server is enough


@dataclass(frozen=True)
class ServerSpec:
    script: str
    loop: str
    modules: tuple[str, ...]  # needed in the benchmark interpreter
    note: str


SERVERS: dict[str, ServerSpec] = {
    "uringws": ServerSpec("uringws_server.py", "uring", ("uringws.server",), "uringws on its io_uring loop"),
    "uringws-dispatch": ServerSpec("uringws_dispatch_server.py", "uring", ("uringws.server",),
                                   "uringws, messages to a callback (ws.dispatch), on its io_uring loop"),
    "uringws-batch": ServerSpec("uringws_server.py", "uring-batch", ("uringws.server",),
                                "uringws on its io_uring loop with completion batching (batch_wait=50 us)"),
    "uringws-dispatch-batch": ServerSpec("uringws_dispatch_server.py", "uring-batch", ("uringws.server",),
                                         "uringws, ws.dispatch, with completion batching (batch_wait=50 us)"),
    "websockets": ServerSpec("websockets_server.py", "asyncio", ("websockets",), "websockets 17 asyncio, stdlib loop"),
    "websockets-uvloop": ServerSpec("websockets_server.py", "uvloop", ("websockets", "uvloop"),
                                    "websockets 17 asyncio on uvloop"),
    "picows": ServerSpec("picows_server.py", "uvloop", ("picows", "uvloop"), "picows 2.3 on uvloop (aiofastnet TLS)"),
    "aiohttp": ServerSpec("aiohttp_server.py", "uvloop", ("aiohttp", "uvloop"), "aiohttp 3.14 on uvloop"),
}


def _leg(size: int) -> Callable[[Floor], float | None]:
    return lambda f: f["frames"][str(size)]["leg_us"]


def _leg_rate(size: int) -> Callable[[Floor], float | None]:
    return lambda f: 1e6 / f["frames"][str(size)]["leg_us"]


def _leg_mbs(size: int) -> Callable[[Floor], float | None]:
    return lambda f: f["frames"][str(size)]["leg_mb_per_s"]


def _leg_ns_per_byte(size: int) -> Callable[[Floor], float | None]:
    return lambda f: f["frames"][str(size)]["leg_us"] * 1e3 / size


CLIENT_PCT = Metric("client_cpu_pct", "load client CPU %", None)


def scenarios(broadcast_connections: int = 1000, rss_connections: int = 5000) -> dict[str, Scenario]:
    """All scenarios by name; ``-tcp`` ones are the same without TLS (no floor)."""
    out: dict[str, Scenario] = {}
    for tls in (True, False):
        suffix = "" if tls else "-tcp"
        over = "" if tls else ", plain TCP"

        def fl(f: Callable[[Floor], float | None], tls: bool = tls) -> Callable[[Floor], float | None] | None:
            return f if tls else None

        out["pingpong" + suffix] = Scenario(
            "pingpong" + suffix, "(a) ping-pong 64 B, 1 conn" + over, "pingpong", 64, tls=tls, metrics=(
                Metric("p50_us", "p50 latency µs", False), Metric("p99_us", "p99 latency µs", False),
                Metric("messages_per_s", "round trips/s", True),
                Metric("server_cpu_us_per_msg", "server CPU µs/msg", False, fl(_leg(64))), CLIENT_PCT))
        out["echo64" + suffix] = Scenario(
            "echo64" + suffix, "(b) echo 64 B, 50 conn × 8 in flight" + over, "echo", 64, 50, 8, tls=tls, metrics=(
                Metric("messages_per_s", "messages/s", True, fl(_leg_rate(64))),
                Metric("server_cpu_us_per_msg", "server CPU µs/msg", False, fl(_leg(64))), CLIENT_PCT))
        for size, name in ((64 * KiB, "echo64k"), (MiB, "echo1m")):
            label = "64 KiB" if size == 64 * KiB else "1 MiB"
            inflight = 4 if size == 64 * KiB else 2
            out[name + suffix] = Scenario(
                name + suffix, f"(c) echo {label}, 1 conn × {inflight} in flight{over}", "echo", size, 1, inflight,
                tls=tls, metrics=(
                    Metric("mb_per_s", "MB/s (echoed payload)", True, fl(_leg_mbs(size))),
                    Metric("server_cpu_ns_per_byte", "server CPU ns/B", False, fl(_leg_ns_per_byte(size))),
                    CLIENT_PCT))
    out["broadcast"] = Scenario(
        "broadcast", f"(d) broadcast 256 B to {broadcast_connections} conn", "broadcast", 256,
        broadcast_connections, 4, mode="broadcast", metrics=(
            Metric("deliveries_per_s", "deliveries/s", True, lambda f: 1e6 / f["frames"]["256"]["encrypt_us"]),
            Metric("server_cpu_us_per_delivery", "server CPU µs/delivery", False,
                   lambda f: f["frames"]["256"]["encrypt_us"]), CLIENT_PCT))
    out["connrate"] = Scenario(
        "connrate", "(e) TLS handshake + upgrade + close, 8 concurrent", "connrate", connections=8, metrics=(
            Metric("connections_per_s", "connections/s", True, lambda f: 1e6 / f["handshake_us"]),
            Metric("server_cpu_us_per_conn", "server CPU µs/conn", False, lambda f: f["handshake_us"]),
            CLIENT_PCT))
    out["rss"] = Scenario(
        "rss", f"(f) idle TLS connections: {rss_connections}", "rss", connections=rss_connections,
        first_round_only=True, metrics=(
            Metric("rss_kib_per_conn", "server RSS KiB/conn", False),
            Metric("server_cpu_us_per_conn", "server CPU µs/conn (mass connect)", False,
                   lambda f: f["handshake_us"])))
    return out


DEFAULT_SCENARIOS = ["pingpong", "echo64", "echo64k", "echo1m", "broadcast", "connrate", "rss"]
TCP_SCENARIOS = ["pingpong-tcp", "echo64-tcp", "echo64k-tcp", "echo1m-tcp"]
FLOOR_SIZES = (64, 256, 64 * KiB, MiB)


# --- arguments ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``uringws bench`` (the defaults are the quick run: about two minutes)."""
    parser.add_argument("--scenarios", help="comma-separated: " + ", ".join(DEFAULT_SCENARIOS + TCP_SCENARIOS)
                        + " (default: the TLS ones; --tcp adds the plain-TCP ones)")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated, from " + ", ".join(SERVERS) + " (default: all)")
    parser.add_argument("--full", action="store_true",
                        help="the full run: 3 rounds, 1.5 s windows, TLS + plain TCP, 5000 idle connections "
                        "(about 15 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds; servers alternate within each (default 1, --full 3)")
    parser.add_argument("--duration", type=float, help="measured window per run, seconds (default 1, --full 1.5)")
    parser.add_argument("--warmup", type=float, help="warm-up before each window, seconds (default 0.3, --full 0.5)")
    parser.add_argument("--tcp", action="store_true", help="also run (a)-(c) over plain TCP")
    parser.add_argument("--rss-connections", type=int, help="idle connections of (f) (default 1000, --full 5000)")
    parser.add_argument("--broadcast-connections", type=int, default=1000,
                        help="connections of (d) (default 1000)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write all results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG plot of the ratios (needs matplotlib)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for the servers and the client (default: this one)")
    parser.add_argument("--benchmarks-dir", help="the source tree's benchmarks/ directory (default: found "
                        "next to the uringws package)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the server to CPU 0 and the client to CPU 1")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when stderr is a terminal)")


@dataclass
class Plan:
    scenarios: list[Scenario]
    servers: list[str]
    rounds: int
    duration: float
    warmup: float
    bench_dir: Path
    python: str
    pin: bool
    skipped: dict[str, str] = field(default_factory=dict)  # server -> why


class BenchError(Exception):
    """A setup problem the user can fix; the message says how."""


def make_plan(args: argparse.Namespace) -> Plan:
    full = bool(args.full)
    rss_n = args.rss_connections or (5000 if full else 1000)
    table = scenarios(args.broadcast_connections, rss_n)
    if args.scenarios:
        names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    else:
        names = DEFAULT_SCENARIOS + (TCP_SCENARIOS if (args.tcp or full) else [])
    unknown = [n for n in names if n not in table]
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in servers if s not in SERVERS]
    if bad:
        raise BenchError(f"unknown server(s) {', '.join(bad)}; choose from {', '.join(SERVERS)}")
    bench_dir = Path(args.benchmarks_dir) if args.benchmarks_dir else Path(__file__).resolve().parents[2] / "benchmarks"
    if not (bench_dir / "loadclient.py").is_file():
        raise BenchError(f"{bench_dir} has no loadclient.py: `uringws bench` runs from a source checkout "
                         "(pass --benchmarks-dir PATH/benchmarks)")
    missing = [m for m in ("picows", "uvloop") if importlib.util.find_spec(m) is None]
    if missing and args.python == sys.executable:
        raise BenchError(f"the load client needs {' and '.join(missing)}: pip install 'uringws[bench]'")
    plan = Plan([table[n] for n in names], [], args.rounds or (3 if full else 1),
                args.duration or (1.5 if full else 1.0), args.warmup or (0.5 if full else 0.3), bench_dir,
                args.python, bool(args.pin) and (os.cpu_count() or 1) >= 2)
    for s in servers:
        absent = [m for m in SERVERS[s].modules if _find_spec(m) is None]
        if absent and args.python == sys.executable:
            plan.skipped[s] = f"not installed: {', '.join(absent)}"
        else:
            plan.servers.append(s)
    if not plan.servers:
        raise BenchError("no server to measure: " + "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()))
    return plan


def _find_spec(module: str) -> Any:
    try:
        return importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package is missing
        return None


# --- processes ------------------------------------------------------------------------------------------------------
def _pinned(cmd: list[str], cpu: int, pin: bool) -> list[str]:
    if pin and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


class ServerProcess:
    """One benchmark server: started, pinned, waited for until it prints READY, killed at the end."""

    def __init__(self, plan: Plan, name: str, scenario: Scenario, cert: tuple[str, str], logdir: Path) -> None:
        spec = SERVERS[name]
        cmd = [plan.python, str(plan.bench_dir / "servers" / spec.script), "--loop", spec.loop,
               "--mode", scenario.mode]
        if scenario.tls:
            cmd += ["--certfile", cert[0], "--keyfile", cert[1]]
        self.log_path = logdir / f"{name}-{scenario.name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(_pinned(cmd, SERVER_CPU, plan.pin), stdout=subprocess.PIPE, stderr=self._log)
        if plan.pin and not shutil.which("taskset"):
            os.sched_setaffinity(self.proc.pid, {SERVER_CPU})
        self.port = self._wait_ready(30.0)

    def _wait_ready(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if r:
                line = self.proc.stdout.readline()
                if line.startswith(b"READY "):
                    return int(line.split()[1])
                if not line:
                    break
            elif self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server did not start: {self.tail()}")

    def tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "?"
        return " | ".join(lines[-3:]) or f"exit status {self.proc.returncode}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def run_client(plan: Plan, scenario: Scenario, server: ServerProcess) -> dict[str, Any]:
    scheme = "wss" if scenario.tls else "ws"
    cmd = [plan.python, str(plan.bench_dir / "loadclient.py"), "--url", f"{scheme}://127.0.0.1:{server.port}/",
           "--server-pid", str(server.proc.pid), "--scenario", scenario.client, "--size", str(scenario.size),
           "--connections", str(scenario.connections), "--inflight", str(scenario.inflight),
           "--warmup", str(plan.warmup), "--duration", str(plan.duration)]
    # Generous: thousands of TLS handshakes on a loaded 2-core machine can take a minute.
    timeout = 60 + plan.warmup + plan.duration + scenario.connections / 20
    try:
        done = subprocess.run(_pinned(cmd, CLIENT_CPU, plan.pin), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"load client timed out after {timeout:.0f} s"}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        err = done.stderr.decode(errors="replace").strip().splitlines()
        return {"error": "load client failed: " + (" | ".join(err[-3:]) or f"exit status {done.returncode}")}
    if "error" not in result and result.get("messages", 1) == 0:
        result["error"] = "no messages in the measured window"
    if "error" in result and server.proc.poll() is not None:
        result["error"] += f" (server exited: {server.tail()})"
    return result


def run_floor(plan: Plan, cert: tuple[str, str]) -> Floor:
    cmd = [plan.python, str(plan.bench_dir / "tls_floor.py"), "--certfile", cert[0], "--keyfile", cert[1],
           "--sizes", ",".join(map(str, FLOOR_SIZES)), "--seconds", str(min(0.5, max(0.1, plan.duration / 4)))]
    done = subprocess.run(_pinned(cmd, SERVER_CPU, plan.pin), capture_output=True, timeout=120, check=True)
    floor: Floor = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return floor


# --- running --------------------------------------------------------------------------------------------------------
def execute(plan: Plan, progress: bool) -> dict[str, Any]:
    """Run every round; return the raw runs and floors."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..tls import devcert

    runs: list[dict[str, Any]] = []
    floors: list[Floor] = []
    total = sum(1 + sum(len(plan.servers) for sc in plan.scenarios if rnd == 0 or not sc.first_round_only)
                for rnd in range(plan.rounds))
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="uringws-bench-") as tmp:
        certs = devcert.ensure_devcert(tmp)  # a fresh self-signed ECDSA P-256 certificate, deleted afterwards
        cert = (str(certs.cert_path), str(certs.key_path))
        logdir = Path(tmp)
        with Progress(TextColumn("{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=not progress, refresh_per_second=2) as bar:
            task = bar.add_task("starting", total=total)
            for rnd in range(plan.rounds):
                bar.update(task, description=f"round {rnd + 1}/{plan.rounds} TLS floor")
                floors.append(run_floor(plan, cert))
                bar.advance(task)
                k = rnd % len(plan.servers)
                order = plan.servers[k:] + plan.servers[:k]  # alternate: a different server goes first each round
                for sc in plan.scenarios:
                    if rnd > 0 and sc.first_round_only:
                        continue
                    for name in order:
                        bar.update(task, description=f"round {rnd + 1}/{plan.rounds} {sc.name} {name}")
                        try:
                            server = ServerProcess(plan, name, sc, cert, logdir)
                        except RuntimeError as exc:
                            result: dict[str, Any] = {"error": str(exc)}
                        else:
                            try:
                                result = run_client(plan, sc, server)
                            finally:
                                server.stop()
                        if "error" in result:
                            bar.console.print(f"[yellow]round {rnd + 1} {sc.name} {name}: {result['error']}")
                        runs.append({"round": rnd + 1, "scenario": sc.name, "server": name, "result": result})
                        bar.advance(task)
    return {"runs": runs, "floors": floors}


def summarize(plan: Plan, raw: dict[str, Any]) -> dict[str, Any]:
    """Medians over rounds per (scenario, server, metric), the median floor, and ratios to uringws."""
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for sc in plan.scenarios:
        medians[sc.name] = {}
        for name in plan.servers:
            ok = [r["result"] for r in raw["runs"]
                  if r["scenario"] == sc.name and r["server"] == name and "error" not in r["result"]]
            medians[sc.name][name] = {m.key: statistics.median(r[m.key] for r in ok)
                                      for m in sc.metrics if ok and all(m.key in r for r in ok)}
    floor: dict[str, dict[str, float]] = {}
    if raw["floors"]:
        for sc in plan.scenarios:
            floor[sc.name] = {}
            for m in sc.metrics:
                if m.floor is not None:
                    floor[sc.name][m.key] = statistics.median(v for f in raw["floors"]
                                                              if (v := m.floor(f)) is not None)
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for sc in plan.scenarios:
        ours = medians[sc.name].get("uringws", {})
        ratios[sc.name] = {name: {k: v / ours[k] for k, v in vals.items() if ours.get(k)}
                           for name, vals in medians[sc.name].items() if name != "uringws"}
    return {"medians": medians, "floor": floor, "ratios": ratios}


# --- output ---------------------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    if v is None:
        return "—"
    a = abs(v)
    if a >= 10000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table_rows(plan: Plan, summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the one table: medians, peer/uringws ratios in parentheses, and the TLS floor."""
    header = ["scenario", "metric", *plan.servers, "TLS floor"]
    rows: list[list[str]] = []
    for sc in plan.scenarios:
        for i, m in enumerate(sc.metrics):
            arrow = "" if m.higher_is_better is None else (" ↑" if m.higher_is_better else " ↓")
            row = [sc.title if i == 0 else "", m.label + arrow]
            ours = summary["medians"][sc.name].get("uringws", {}).get(m.key)
            for name in plan.servers:
                v = summary["medians"][sc.name].get(name, {}).get(m.key)
                cell = _fmt(v)
                if name != "uringws" and v is not None and ours and m.higher_is_better is not None:
                    cell += f" ({v / ours:.2f}×)"
                row.append(cell)
            row.append(_fmt(summary["floor"].get(sc.name, {}).get(m.key)))
            rows.append(row)
    return header, rows


def print_table(plan: Plan, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(plan, summary)
    t = Table(title="median of rounds; (×) = peer ÷ uringws; ↑ higher is better, ↓ lower is better",
              title_justify="left")
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i < 2 else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    Console(width=max(120, 40 + 22 * len(header))).print(t)


def markdown_table(plan: Plan, summary: dict[str, Any]) -> str:
    header, rows = table_rows(plan, summary)
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_plot(plan: Plan, summary: dict[str, Any], path: str) -> None:
    """Horizontal bars per metric and peer: uringws's performance relative to the peer (> 1: uringws better)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [s for s in plan.servers if s != "uringws"]
    labels: list[str] = []
    values: dict[str, list[float]] = {p: [] for p in peers}
    for sc in plan.scenarios:
        for m in sc.metrics:
            if m.higher_is_better is None:
                continue
            labels.append(f"{sc.name}: {m.label}")
            ours = summary["medians"][sc.name].get("uringws", {}).get(m.key)
            for p in peers:
                theirs = summary["medians"][sc.name].get(p, {}).get(m.key)
                if not ours or not theirs:
                    values[p].append(float("nan"))
                else:
                    values[p].append(ours / theirs if m.higher_is_better else theirs / ours)
    height = max(3.0, 0.25 * len(labels) * max(1, len(peers)) + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    bar_h = 0.8 / max(1, len(peers))
    for i, p in enumerate(peers):
        ys = [j + i * bar_h for j in range(len(labels))]
        ax.barh(ys, values[p], height=bar_h, label=p)
    ax.set_yticks([j + bar_h * (len(peers) - 1) / 2 for j in range(len(labels))], labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    finite = [v for vs in values.values() for v in vs if v == v and v > 0]
    lo = min([*finite, 0.5]) / 1.2
    hi = max([*finite, 2.0]) * 1.2
    ax.set_xlim(lo, hi)
    ticks = [t for t in (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32, 64) if lo <= t <= hi]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([f"{t:g}×" if t >= 1 else f"1/{1 / t:g}×"
                                                                   for t in ticks]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("uringws relative to peer (> 1: uringws better; latency, CPU and memory inverted)")
    ax.set_title("uringws vs peers, medians of the same run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def client_bound(raw: dict[str, Any], threshold: float = 90.0) -> list[str]:
    """Runs whose load client was busy for at least ``threshold`` % of the window: they measure the client."""
    return [f"round {r['round']} {r['scenario']} {r['server']} ({r['result']['client_cpu_pct']:.0f}%)"
            for r in raw["runs"] if r["result"].get("client_cpu_pct", 0.0) >= threshold]


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("uringws", "websockets", "picows", "aiofastnet", "aiohttp", "uvloop"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION, "versions": versions,
            "loadavg": os.getloadavg()}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark; print the table; write JSON/plot if asked. Exit 1 if any run failed, 2 on bad usage."""
    try:
        plan = make_plan(args)
    except BenchError as exc:
        print(f"uringws bench: {exc}", file=sys.stderr)
        return 2
    for name, why in plan.skipped.items():
        print(f"uringws bench: skipping {name} ({why})", file=sys.stderr)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    started = datetime.datetime.now(datetime.UTC)
    info = machine()
    t0 = time.monotonic()
    raw = execute(plan, progress)
    summary = summarize(plan, raw)
    info["loadavg_end"] = os.getloadavg()
    print_table(plan, summary)
    floor = raw["floors"][0] if raw["floors"] else {}
    print(f"TLS floor: {floor.get('version')} {floor.get('cipher')}, {floor.get('openssl')}; servers pinned to CPU "
          f"{SERVER_CPU}, load client to CPU {CLIENT_CPU}; {plan.rounds} round(s) × {plan.duration:g} s windows; "
          f"compression off on every server; {time.monotonic() - t0:.0f} s")
    busy = client_bound(raw)
    if busy:
        print("load client ≥ 90% busy (the result may be client-bound): " + ", ".join(busy))
    doc = {"date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv), "machine": info,
           "config": {"rounds": plan.rounds, "duration_s": plan.duration, "warmup_s": plan.warmup,
                      "pinned": plan.pin, "servers": {s: SERVERS[s].note for s in plan.servers},
                      "skipped": plan.skipped,
                      "scenarios": {s.name: {"title": s.title, "size": s.size, "connections": s.connections,
                                             "inflight": s.inflight, "tls": s.tls} for s in plan.scenarios}},
           **summary, "client_bound": busy, "markdown": markdown_table(plan, summary), **raw}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        try:
            write_plot(plan, summary, args.plot)
        except ImportError:
            print("uringws bench: --plot needs matplotlib (pip install 'uringws[bench]')", file=sys.stderr)
            return 2
    failed = [r for r in raw["runs"] if "error" in r["result"]]
    return 1 if failed else 0


def run(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m uringws.tools.bench``) until the CLI wires the subcommand."""
    parser = argparse.ArgumentParser(prog="uringws bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
