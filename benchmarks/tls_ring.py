"""TLS on the io_uring loop: idle memory per connection and server CPU per echoed message, against the peers.

Usage (from the repository root)::

    .venv/bin/python benchmarks/tls_ring.py [--conns 2000] [--rounds 5] [--small 20000] [--large 200]
                                            [--skip-memory] [--skip-cpu] [--json out.json]

Wraps ``tests/tls/bench_tls_memory.py`` and ``tests/tls/bench_tls_cpu.py`` (one server process per measurement,
a blocking Python ssl client in this process) so that everything is measured in ONE run, alternating:

- memory: server RSS per idle TLS connection at ``--conns`` connections, ``ring`` (uringws.EventLoop: io_uring +
  uringws TLS) and ``asyncio`` (stdlib selector loop + asyncio's sslproto) as the control; goal <= 32 KiB.
- CPU: server user+sys (/proc/PID/stat) per ping-pong echo of 64 B and of 1 MiB, TLS 1.3 (AES-256-GCM) for
  ``ring``, ``asyncio`` (stdlib ssl), ``uvloop`` (stdlib ssl over uvloop) and the TLS floor (SSLObject
  decrypt + encrypt over memory BIOs, same payloads) in every round; medians over rounds and ratios.

The machine is shared and noisy (docs/design.md §7): trust the ratios of one run, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tls import bench_tls_cpu, bench_tls_memory  # after the path set-up

KiB = 1024


def memory(conns: int, rounds: int, impls: list[str], cert: str, key: str, cafile: str) -> dict[str, list[float]]:
    per_conn: dict[str, list[float]] = {impl: [] for impl in impls}
    for r in range(rounds):
        for impl in impls:
            res = bench_tls_memory.run_one(impl, conns, cert, key, cafile)
            per_conn[impl].append(res["per_conn"])
            print(
                f"memory round {r} {impl:8s} n={conns}: {res['per_conn'] / KiB:7.1f} KiB/conn "
                f"(server RSS {res['base'] / 2**20:.1f} -> {res['now'] / 2**20:.1f} MiB)",
                flush=True,
            )
    return per_conn


def cpu(
    rounds: int, small: int, large: int, impls: list[str], cert: str, key: str, cafile: str
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {impl: [] for impl in [*impls, "floor"]}
    for r in range(rounds):
        # Rotate the order each round so no implementation always runs first (or right after another).
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for impl in order:
            res = bench_tls_cpu.measure_server(impl, cert, key, cafile, small, large)
            results[impl].append(res)
            print(
                f"cpu round {r} {impl:8s} server CPU/msg: 64B {res['cpu_64B'] * 1e6:7.2f} us   "
                f"1MiB {res['cpu_1MiB'] * 1e3:7.3f} ms",
                flush=True,
            )
        floor = {
            "cpu_64B": bench_tls_cpu.tls_floor(cert, key, cafile, bench_tls_cpu.SMALL, small),
            "cpu_1MiB": bench_tls_cpu.tls_floor(cert, key, cafile, bench_tls_cpu.LARGE, large),
        }
        results["floor"].append(floor)
        print(
            f"cpu round {r} floor    CPU/msg: 64B {floor['cpu_64B'] * 1e6:7.2f} us   "
            f"1MiB {floor['cpu_1MiB'] * 1e3:7.3f} ms",
            flush=True,
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--mem-rounds", type=int, default=1)
    ap.add_argument("--mem-impl", nargs="+", default=["ring", "asyncio"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--large", type=int, default=200)
    ap.add_argument("--cpu-impl", nargs="+", default=["ring", "asyncio", "uvloop"])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--json", help="also write the raw and median results here")
    args = ap.parse_args()
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    out: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as d:
        cert, key, cafile = (str(Path(d, n)) for n in ("cert.pem", "key.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(cafile)
        if not args.skip_memory:
            mem = memory(args.conns, args.mem_rounds, args.mem_impl, cert, key, cafile)
            out["memory_per_conn"] = mem
        if not args.skip_cpu:
            res = cpu(args.rounds, args.small, args.large, args.cpu_impl, cert, key, cafile)
            out["cpu"] = res

    if not args.skip_memory:
        print(f"\nidle RSS per TLS connection at {args.conns} connections (median of {args.mem_rounds}):")
        for impl, vals in out["memory_per_conn"].items():
            print(f"  {impl:8s} {statistics.median(vals) / KiB:7.1f} KiB")
    if not args.skip_cpu:
        med = {
            impl: {k: statistics.median(r[k] for r in rs) for k in ("cpu_64B", "cpu_1MiB")}
            for impl, rs in out["cpu"].items()
        }
        out["cpu_median"] = med
        floor = med["floor"]
        print(f"\nserver CPU per echoed message, median of {args.rounds} rounds (x = ratio to the TLS floor):")
        print(f"  {'impl':8s} {'64 B':>10s} {'x':>6s} {'1 MiB':>10s} {'x':>6s}")
        for impl, m in med.items():
            print(
                f"  {impl:8s} {m['cpu_64B'] * 1e6:7.2f} us {m['cpu_64B'] / floor['cpu_64B']:5.1f}x "
                f"{m['cpu_1MiB'] * 1e3:7.3f} ms {m['cpu_1MiB'] / floor['cpu_1MiB']:5.2f}x"
            )
        if "ring" in med:
            for peer in ("asyncio", "uvloop"):
                if peer in med:
                    print(
                        f"  ring/{peer}: 64B {med['ring']['cpu_64B'] / med[peer]['cpu_64B']:.2f}  "
                        f"1MiB {med['ring']['cpu_1MiB'] / med[peer]['cpu_1MiB']:.2f}"
                    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
