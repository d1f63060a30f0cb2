"""Server CPU per echo message: uringws TLSProtocol vs asyncio's sslproto (same stdlib selector loop) vs the
TLS floor (SSLObject.write + read over memory BIOs of the same payload, measured in the same run).

Usage (from the repository root)::

    .venv/bin/python tests/tls/bench_tls_cpu.py [--rounds 3] [--small 30000] [--large 100]

``plain`` is the same echo over TCP without TLS (the loop's own cost).  Each round starts one server
process per implementation (alternating), warms it up, then a blocking
Python ssl client in this process does ping-pong echoes (one message in flight): ``--small`` messages of
64 B, then ``--large`` messages of 1 MiB.  The server's own CPU (utime+stime from /proc/PID/stat) is divided
by the message count.  TLS 1.3, TLS_AES_256_GCM_SHA384 (OpenSSL's default).  Medians over rounds.
Not collected by pytest (not a test_*.py file).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TICK = os.sysconf("SC_CLK_TCK")
SMALL = 64
LARGE = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def loop_factory(impl: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The server loop of ``impl``: ``ours`` = stdlib selector loop + uringws TLS, ``ring`` = uringws.EventLoop
    (io_uring + uringws TLS; ``ring-poll`` reading by poll + recv), ``uvloop`` = uvloop + its stdlib-ssl TLS,
    ``asyncio``/``plain`` = stdlib loop."""
    if impl == "ours":
        from uringws.tls import TLSSelectorEventLoop

        return TLSSelectorEventLoop
    if impl in ("ring", "ring-poll"):
        import uringws

        def ring() -> asyncio.AbstractEventLoop:
            # ring-poll: the same loop reading through POLL + recv(2) instead of multishot RECV (A/B of reads)
            loop = uringws.new_event_loop(**({"read_mode": "poll"} if impl == "ring-poll" else {}))
            if loop.backend != "io_uring":
                raise SystemExit(f"ring: io_uring unusable here (got backend {loop.backend})")
            return loop

        return ring
    if impl == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.SelectorEventLoop


def serve(impl: str, certfile: str, keyfile: str) -> None:
    ctx: ssl.SSLContext | None = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ctx is not None
    ctx.load_cert_chain(certfile, keyfile)
    if impl == "plain":
        ctx = None  # TCP echo without TLS: what the loop itself costs
    loop_cls = loop_factory(impl)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx)
        print(server.sockets[0].getsockname()[1], flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        server.close()

    asyncio.Runner(loop_factory=loop_cls).run(main())


def pingpong(sock: socket.socket, msg: bytes, count: int) -> None:
    n = len(msg)
    for _ in range(count):
        sock.sendall(msg)
        got = 0
        while got < n:
            part = sock.recv(min(n - got, 1 << 20))
            if not part:
                raise EOFError
            got += len(part)


def measure_server(impl: str, cert: str, key: str, cafile: str, small: int, large: int) -> dict[str, float]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", impl, "--cert", cert, "--key", key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        port = int(proc.stdout.readline())
        ctx = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", port))
        with raw if impl == "plain" else ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pingpong(s, b"w" * SMALL, 2000)  # warm-up
            pingpong(s, b"w" * LARGE, 5)
            res: dict[str, float] = {}
            for name, size, count in (("64B", SMALL, small), ("1MiB", LARGE, large)):
                msg = os.urandom(size)
                c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                pingpong(s, msg, count)
                c1, t1 = cpu_seconds(proc.pid), time.perf_counter()
                res[f"cpu_{name}"] = (c1 - c0) / count
                res[f"wall_{name}"] = (t1 - t0) / count
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return res


def tls_floor(cert: str, key: str, cafile: str, size: int, count: int) -> float:
    """CPU seconds for one message's server work: decrypt one copy and encrypt one copy, memory BIOs only."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=cafile)
    ci, co, si, so = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = cctx.wrap_bio(ci, co, server_hostname="localhost")
    s = sctx.wrap_bio(si, so, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        si.write(co.read())
        ci.write(so.read())
    msg = os.urandom(size)
    buf = bytearray(size + 65536)
    # Pre-encrypt the client's records outside the timing: the server only decrypts and encrypts.
    records = []
    for _ in range(count):
        c.write(msg)
        records.append(co.read())
    t0 = time.process_time()
    for rec in records:
        si.write(rec)
        got = 0
        while got < size:
            got += s.read(len(buf), buf)  # type: ignore[operator]  # returns a count with a buffer
        s.write(msg)
        so.read()
    return (time.process_time() - t0) / count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", type=int, default=30000)
    ap.add_argument("--large", type=int, default=100)
    ap.add_argument("--impl", nargs="+", default=["ours", "asyncio", "plain"])
    ap.add_argument("--serve")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.cert, args.key)
        return
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    results: dict[str, list[dict[str, float]]] = {impl: [] for impl in [*args.impl, "floor"]}
    with tempfile.TemporaryDirectory() as d:
        cert, key, cafile = (str(Path(d, n)) for n in ("cert.pem", "key.pem", "ca.pem"))
        leaf.cert_chain_pems[0].write_to_path(cert)
        leaf.private_key_pem.write_to_path(key)
        ca.cert_pem.write_to_path(cafile)
        for r in range(args.rounds):
            for impl in args.impl:
                res = measure_server(impl, cert, key, cafile, args.small, args.large)
                results[impl].append(res)
                print(
                    f"round {r} {impl:8s} server CPU/msg: 64B {res['cpu_64B'] * 1e6:7.2f} us   "
                    f"1MiB {res['cpu_1MiB'] * 1e3:7.3f} ms   (wall/msg 64B {res['wall_64B'] * 1e6:.1f} us, "
                    f"1MiB {res['wall_1MiB'] * 1e3:.2f} ms)",
                    flush=True,
                )
            floor = {
                "cpu_64B": tls_floor(cert, key, cafile, SMALL, args.small),
                "cpu_1MiB": tls_floor(cert, key, cafile, LARGE, args.large),
            }
            results["floor"].append(floor)
            print(
                f"round {r} floor    CPU/msg: 64B {floor['cpu_64B'] * 1e6:7.2f} us   "
                f"1MiB {floor['cpu_1MiB'] * 1e3:7.3f} ms",
                flush=True,
            )
    med = {
        impl: {k: statistics.median(r[k] for r in rs) for k in ("cpu_64B", "cpu_1MiB")} for impl, rs in results.items()
    }
    print("\nmedians (server CPU per echoed message; ratio to the TLS floor):")
    for impl, m in med.items():
        print(
            f"  {impl:8s} 64B {m['cpu_64B'] * 1e6:7.2f} us ({m['cpu_64B'] / med['floor']['cpu_64B']:5.1f}x)   "
            f"1MiB {m['cpu_1MiB'] * 1e3:7.3f} ms ({m['cpu_1MiB'] / med['floor']['cpu_1MiB']:5.2f}x)"
        )
    if "ours" in med and "asyncio" in med:
        print(
            f"  ours/asyncio: 64B {med['ours']['cpu_64B'] / med['asyncio']['cpu_64B']:.2f}  "
            f"1MiB {med['ours']['cpu_1MiB'] / med['asyncio']['cpu_1MiB']:.2f}"
        )


if __name__ == "__main__":
    main()
