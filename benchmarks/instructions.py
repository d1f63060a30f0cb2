"""Server instructions per message under callgrind: a deterministic A/B for changes too small for CPU time.

Usage (from the repository root, in the benchmark environment; needs Debian's ``valgrind``)::

    .venv/bin/python benchmarks/instructions.py [--scenarios pingpong,echo64,echo64k,echo1m]
        [--servers uringws,picows,...] [--tree LABEL=PATH ...] [--tcp] [--json PATH] [--keep DIR]

On these 2-core shared machines a server's CPU time per message moves by 10-20 % between identical runs
(neighbours, memory bandwidth, the load client on the other core), so an effect of a few per cent cannot be
seen in ``uringws bench``. The number of instructions the server executes for a fixed amount of work does
not depend on any of that. Each measurement runs one server script of ``benchmarks/servers`` under
``valgrind --tool=callgrind``; a fixed-count client (picows on uvloop, in this process) connects, warms up,
zeroes the counters (``callgrind_control -z``), echoes exactly ``count`` messages per connection, and dumps
them (``callgrind_control -d``): Ir of the dump / messages = user-space instructions per message.

What it does not see: the kernel (syscalls, TCP, page faults) and the cost of an instruction (a cache miss,
a 1 MiB memcpy that streams from memory). It ranks code changes, not stacks against CPU time: keep using
``uringws bench`` for that. With one message in flight (``pingpong``, ``echo64k``, ``echo1m``) a run repeats
to about 0.1 %; with many in flight (``echo64``) batching depends on timing and runs vary by about 2 %.

``--tree LABEL=PATH`` measures the uringws server from another source tree (a ``git archive`` snapshot with
its C speedup built), so that two commits are compared in one run; without it, the installed uringws.

``--keep DIR`` keeps the callgrind dumps there (``cg.<label>.<scenario>.<ns>.<pid>.1`` is the measured part) for
``callgrind_annotate``: ``--inclusive=yes`` for a function with all it calls, ``--tree=caller`` for who calls
``memcpy`` (under callgrind a large copy counts about one instruction per byte: glibc copies with ``rep movsb``).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trustme
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

HERE = Path(__file__).resolve().parent
SCENARIOS: dict[str, tuple[int, int, int, int]] = {  # name: (size, connections, in flight, messages per conn)
    "pingpong": (64, 1, 1, 3000),
    "echo64": (64, 50, 8, 200),
    "echo64k": (64 * 1024, 1, 1, 300),
    "echo1m": (1 << 20, 1, 1, 30),
}
SCRIPTS = {
    "uringws": ("uringws_server.py", "uring"),
    "uringws-dispatch": ("uringws_dispatch_server.py", "uring"),
    "websockets": ("websockets_server.py", "asyncio"),
    "websockets-uvloop": ("websockets_server.py", "uvloop"),
    "picows": ("picows_server.py", "uvloop"),
    "aiohttp": ("aiohttp_server.py", "uvloop"),
}


class Echoer(WSListener):
    """Sends exactly ``quota`` messages with ``inflight`` outstanding; ``done`` resolves when all came back."""

    def __init__(self, payload: bytes, inflight: int) -> None:
        self.payload, self.inflight = payload, inflight
        self.transport: WSTransport | None = None
        self.quota = self.sent = self.got = 0
        self.done: asyncio.Future[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def run(self, quota: int) -> asyncio.Future[None]:
        assert self.transport is not None
        self.quota, self.sent, self.got = quota, 0, 0
        self.done = asyncio.get_running_loop().create_future()
        for _ in range(min(self.inflight, quota)):
            self.sent += 1
            self.transport.send(WSMsgType.BINARY, self.payload)
        return self.done

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        if frame.payload_size != len(self.payload):
            raise RuntimeError(f"echo of {frame.payload_size} bytes, sent {len(self.payload)}")
        self.got += 1
        if self.sent < self.quota:
            self.sent += 1
            transport.send(WSMsgType.BINARY, self.payload)
        elif self.got == self.quota and self.done is not None and not self.done.done():
            self.done.set_result(None)


async def drive(url: str, pid: int, size: int, conns: int, inflight: int, count: int, warmup: int) -> None:
    ctx = None
    if url.startswith("wss:"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    echoers: list[Echoer] = []
    for _ in range(conns):
        _, listener = await ws_connect(
            lambda: Echoer(payload, inflight),
            url,
            ssl_context=ctx,
            max_frame_size=64 << 20,
            websocket_handshake_timeout=600,
        )
        assert isinstance(listener, Echoer)
        echoers.append(listener)
    await asyncio.gather(*(e.run(warmup) for e in echoers))
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    await asyncio.gather(*(e.run(count) for e in echoers))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)


def measure(
    server: str, tree: str | None, scenario: str, tls: bool, cert: str, out_dir: str, label: str | None = None
) -> float:
    """Instructions per message of one server for one scenario."""
    size, conns, inflight, count = SCENARIOS[scenario]
    script, loop = SCRIPTS[server]
    env = dict(os.environ)
    servers_dir = HERE / "servers"
    if tree is not None:
        env["PYTHONPATH"] = tree
        servers_dir = Path(tree) / "benchmarks" / "servers"
    prefix = f"{out_dir}/cg.{label or server}.{scenario}.{time.monotonic_ns()}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={prefix}.%p",
        sys.executable,
        str(servers_dir / script),
        "--loop",
        loop,
    ]
    if tls:
        cmd += ["--certfile", cert, "--keyfile", cert]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise RuntimeError(f"{server} did not start under valgrind: {line!r}")
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{int(line.split()[1])}/"
        warmup = max(count // 10, 5)
        uvloop.run(asyncio.wait_for(drive(url, proc.pid, size, conns, inflight, count, warmup), 1800))
    finally:
        proc.kill()  # the counters were dumped above; a server blocked in io_uring_enter under valgrind can
        proc.wait(60)  # miss SIGTERM
    dumps = sorted(glob.glob(f"{prefix}.{proc.pid}.*"))
    if not dumps:
        raise RuntimeError(f"no callgrind dump for {server} {scenario}")
    with open(dumps[0]) as f:
        for row in f:
            if row.startswith(("summary:", "totals:")):
                return int(row.split()[1]) / (conns * count)
    raise RuntimeError(f"no totals in {dumps[0]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="pingpong,echo64,echo64k,echo1m")
    p.add_argument("--servers", default="uringws,picows")
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="measure the uringws server of this source tree (repeatable)",
    )
    p.add_argument("--tcp", action="store_true", help="plain ws:// instead of wss://")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in this directory")
    args = p.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("needs valgrind (Debian: apt-get install valgrind)")
    scenarios = args.scenarios.split(",")
    for s in scenarios:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    runs: list[tuple[str, str, str | None]] = []  # (label, server, tree)
    for server in args.servers.split(","):
        if server not in SCRIPTS:
            sys.exit(f"unknown server {server!r}; choose from {', '.join(SCRIPTS)}")
        if server == "uringws" and args.tree:
            for spec in args.tree:
                label, _, path = spec.partition("=")
                runs.append((label, server, str(Path(path).resolve())))
        else:
            runs.append((server, server, None))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="uringws-instr-") as scratch:
        tmp = scratch
        if args.keep:
            tmp = str(Path(args.keep).resolve())
            os.makedirs(tmp, exist_ok=True)
        cert = f"{scratch}/cert.pem"
        trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
        for scenario in scenarios:
            base = None
            for label, server, tree in runs:
                ir = measure(server, tree, scenario, not args.tcp, cert, tmp, label)
                results.setdefault(scenario, {})[label] = ir
                base = ir if base is None else base
                print(
                    f"{scenario:9s} {label:20s} {ir:14,.0f} instructions/message  ({ir / base:.3f}x the first)",
                    flush=True,
                )
    if args.json:
        out: dict[str, Any] = {
            "tls": not args.tcp,
            "scenarios": {s: SCENARIOS[s] for s in scenarios},
            "instructions_per_message": results,
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
