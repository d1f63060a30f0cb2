"""FastAPI WebSocket echo under uvicorn on three loops: uringws's, uvloop, stdlib asyncio; server CPU per message.

    python benchmarks/asgi_echo.py [--rounds 3] [--duration 3] [--tls]

The same FastAPI app (tests/e2e/asgi_app.py) runs under ``uvicorn --loop X`` pinned to CPU 0, with uvicorn's
``websockets-sansio`` WebSocket protocol; the load client (benchmarks/loadclient.py: picows on uvloop) is pinned to
CPU 1. Rounds alternate the loops; the table gives medians of server CPU time (user+sys from /proc) per message
and the ratio to uvloop. Needs fastapi, uvicorn, uvloop and picows (``pip install -e '.[test]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOOPS = {"uringws": "uringws:new_event_loop", "uvloop": "uvloop", "asyncio": "asyncio"}
SCENARIOS = {  # name -> loadclient arguments
    "ping-pong 64 B": ["--scenario", "pingpong", "--size", "64"],
    "64 B x 50 conns x 8": ["--scenario", "echo", "--size", "64", "--connections", "50", "--inflight", "8"],
    "64 KiB echo": ["--scenario", "echo", "--size", "65536", "--connections", "4", "--inflight", "2"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if os.cpu_count() and os.cpu_count() > 1 else []  # type: ignore[operator]


def start_uvicorn(loop: str, port: int, certfile: str | None) -> subprocess.Popen[bytes]:
    args = [*_pin(0), sys.executable, "-m", "uvicorn", "--loop", LOOPS[loop], "--ws", "websockets-sansio"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--ws-max-size", str(16 << 20)]
    args += ["--ws-ping-interval", "0", "tests.e2e.asgi_app:app"]
    if certfile:
        args += ["--ssl-keyfile", certfile, "--ssl-certfile", certfile]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"uvicorn --loop {LOOPS[loop]} did not start") from None
            time.sleep(0.1)


def measure(loop: str, scenario: str, args: argparse.Namespace, certfile: str | None) -> dict[str, float]:
    port = _free_port()
    server = start_uvicorn(loop, port, certfile)
    try:
        scheme = "wss" if certfile else "ws"
        cmd = [*_pin(1), sys.executable, str(ROOT / "benchmarks" / "loadclient.py")]
        cmd += ["--url", f"{scheme}://127.0.0.1:{port}/ws", "--server-pid", str(server.pid)]
        cmd += [*SCENARIOS[scenario], "--duration", str(args.duration), "--warmup", "1"]
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
        result: dict[str, float] = json.loads(out)
        if "error" in result:
            raise SystemExit(f"{loop} {scenario}: {result['error']}")
        return result
    finally:
        server.kill()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--tls", action="store_true", help="wss:// (a throwaway trustme certificate)")
    p.add_argument("--json", help="write every round's raw results here")
    args = p.parse_args()
    certfile = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.tls:
            import trustme

            certfile = str(Path(tmp) / "server.pem")
            trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(certfile)
        raw: dict[str, dict[str, list[float]]] = {s: {loop: [] for loop in LOOPS} for s in SCENARIOS}
        for r in range(args.rounds):
            order = list(LOOPS) if r % 2 == 0 else list(reversed(LOOPS))
            for scenario in SCENARIOS:
                for loop in order:
                    result = measure(loop, scenario, args, certfile)
                    raw[scenario][loop].append(result["server_cpu_us_per_msg"])
                    print(f"round {r + 1} {scenario:22} {loop:8} {result['server_cpu_us_per_msg']:8.2f} us/msg "
                          f"({result['messages_per_s']:,.0f} msg/s)", file=sys.stderr)
    print(f"\nServer CPU per message, median of {args.rounds} rounds ({'wss' if args.tls else 'ws'}://):\n")
    print("| scenario | uringws loop | uvloop | asyncio | uringws / uvloop | asyncio / uvloop |")
    print("|---|---|---|---|---|---|")
    for scenario, by_loop in raw.items():
        med = {loop: statistics.median(v) for loop, v in by_loop.items()}
        print(f"| {scenario} | {med['uringws']:.1f} µs | {med['uvloop']:.1f} µs | {med['asyncio']:.1f} µs | "
              f"{med['uringws'] / med['uvloop']:.2f}× | {med['asyncio'] / med['uvloop']:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
