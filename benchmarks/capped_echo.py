"""Server CPU per message with the server as the bottleneck: each server under a CPU quota (cgroup v1 ``cpu``).

In ``uringws bench``'s (b), 64 B × 50 connections × 8 in flight, the load client is ~99 % busy: the servers are not
the bottleneck, and a server that is faster only takes smaller batches (more system calls per message), so its CPU
per message says as much about the client as about itself. Here each server runs in a cgroup with
``cpu.cfs_quota_us`` set to a share of one CPU (default 40 %), pinned to CPU 0, and the load client
(``loadclient.py``, pinned to CPU 1) has time to spare: the server's CPU per message is what it costs at its
capacity. Servers alternate within each run; the medians and the ratio to the last server listed are printed.

    python benchmarks/capped_echo.py                       # uringws, uringws-dispatch, picows; 3 runs each
    python benchmarks/capped_echo.py --quota 0.4 --runs 5 --json capped.json
    python benchmarks/capped_echo.py --tree before=../old-checkout \
        --servers uringws-dispatch@before,uringws-dispatch,picows   # A/B of a change, in one run

``NAME@LABEL`` runs server NAME from the source tree given as ``--tree LABEL=PATH`` (its ``benchmarks/servers``
script, with ``PYTHONPATH=PATH``; build its extensions in place first).

Needs root and the cgroup v1 ``cpu`` controller at /sys/fs/cgroup/cpu (or cgroup v2's ``cpu.max``).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from uringws.tls import devcert  # noqa: E402
from uringws.tools.bench import SERVERS  # noqa: E402


class Cgroup:
    """A cgroup with a CPU quota (v1 ``cpu`` controller, or v2 ``cpu.max``); removed on close."""

    def __init__(self, quota: float, period_us: int = 100_000) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.path = v1 / f"uringws-capped-{os.getpid()}"
            self.path.mkdir()
            (self.path / "cpu.cfs_period_us").write_text(str(period_us))
            (self.path / "cpu.cfs_quota_us").write_text(str(int(quota * period_us)))
            self.procs = self.path / "tasks"
        elif (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
            self.path = v2 / f"uringws-capped-{os.getpid()}"
            self.path.mkdir()
            (self.path / "cpu.max").write_text(f"{int(quota * period_us)} {period_us}")
            self.procs = self.path / "cgroup.procs"
        else:
            raise SystemExit("no cgroup cpu controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max) to cap the server with")

    def add(self, pid: int) -> None:
        self.procs.write_text(str(pid))

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)  # its processes are still exiting


def server_command(name: str, cert: tuple[str, str], trees: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment of server ``name``: a key of SERVERS, or ``NAME@LABEL`` for NAME from the source
    tree ``trees[LABEL]``."""
    base, _, label = name.partition("@")
    if base not in SERVERS:
        raise SystemExit(f"unknown server {base!r}: one of {', '.join(SERVERS)}")
    env = dict(os.environ)
    servers = HERE / "servers"
    if label:
        if label not in trees:
            raise SystemExit(f"{name}: no --tree {label}=PATH")
        tree = Path(trees[label]).resolve()
        servers = tree / "benchmarks" / "servers"
        env["PYTHONPATH"] = str(tree)
    spec = SERVERS[base]
    cmd = ["taskset", "-c", "0", sys.executable, str(servers / spec.script), "--loop", spec.loop,
           "--mode", "echo", "--certfile", cert[0], "--keyfile", cert[1]]
    return cmd, env


def start_server(name: str, cert: tuple[str, str], cgroup: Cgroup,
                 trees: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    cmd, env = server_command(name, cert, trees)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    cgroup.add(proc.pid)
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            if line.startswith(b"READY "):
                return proc, int(line.split()[1])
            if not line:
                break
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def cpu_times(pid: int) -> tuple[int, int]:
    """utime and stime of a process, in clock ticks (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def run_one(name: str, cert: tuple[str, str], cgroup: Cgroup, args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_server(name, cert, cgroup, args.trees)
    try:
        cmd = ["taskset", "-c", "1", sys.executable, str(HERE / "loadclient.py"), "--url", f"wss://127.0.0.1:{port}/",
               "--server-pid", str(proc.pid), "--scenario", "echo", "--size", str(args.size),
               "--connections", str(args.connections), "--inflight", str(args.inflight),
               "--warmup", str(args.warmup), "--duration", str(args.duration)]
        before = cpu_times(proc.pid)
        done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        after = cpu_times(proc.pid)
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
        # The user/system split of the server's CPU over the whole client run (warm-up included), applied to the
        # measured window's CPU per message.
        user, system = after[0] - before[0], after[1] - before[1]
        if user + system > 0 and "server_cpu_us_per_msg" in result:
            result["server_sys_share"] = system / (user + system)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="uringws,uringws-dispatch,picows",
                        help="comma-separated, from " + ", ".join(SERVERS) + "; the last is the reference")
    parser.add_argument("--quota", type=float, default=0.4, help="the server's share of one CPU (default 0.4)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--json", dest="json_path", help="write every run here")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="a source tree whose servers are named NAME@LABEL in --servers (repeatable)")
    args = parser.parse_args()
    args.trees = dict(t.split("=", 1) for t in args.tree)
    if shutil.which("taskset") is None:
        raise SystemExit("needs taskset (util-linux)")
    names = args.servers.split(",")
    for name in names:
        server_command(name, ("", ""), args.trees)  # unknown names and labels stop here, before any run
    cgroup = Cgroup(args.quota)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            certs = devcert.ensure_devcert(Path(tmp))
            cert = (str(certs.cert_path), str(certs.key_path))
            for i in range(args.runs):
                for name in names:
                    r = run_one(name, cert, cgroup, args)
                    runs[name].append(r)
                    print(f"run {i + 1} {name:24s} {r.get('server_cpu_us_per_msg', float('nan')):7.2f} µs/msg  "
                          f"({r.get('server_sys_share', float('nan')):.0%} system)  "
                          f"server {r.get('server_cpu_pct', 0):5.1f} %  client {r.get('client_cpu_pct', 0):5.1f} %",
                          flush=True)
    finally:
        cgroup.close()
    ref = statistics.median(r["server_cpu_us_per_msg"] for r in runs[names[-1]])
    print(f"\nserver CPU µs per message at {args.quota:.0%} of a CPU ({args.size} B × {args.connections} connections "
          f"× {args.inflight} in flight, {args.runs} runs, medians):")
    for name in names:
        vals = [r["server_cpu_us_per_msg"] for r in runs[name]]
        med = statistics.median(vals)
        share = statistics.median(r.get("server_sys_share", float("nan")) for r in runs[name])
        print(f"  {name:24s} {' '.join(f'{v:.2f}' for v in vals):30s} median {med:.2f}  ÷ {names[-1]} {med / ref:.2f}"
              f"  (user {med * (1 - share):.2f}, system {med * share:.2f})")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
