"""Server RSS over failed TLS handshakes, and how fast SIGTERM stops it afterwards.

What port scanners and health checks send to a TLS port, in turn: TCP connect + close, a plain HTTP request,
64 random bytes (the last two read until the server closes). ``--warm`` of them first, RSS (VmRSS) read, then
``--count`` more, RSS read again: a server that frees what a failed handshake left grows by little once warm.
Then SIGTERM, timed until the process exits (``uringws serve`` only: the websockets script has no handler).

Usage::

    PYTHONPATH=. python benchmarks/failed_handshakes.py [--server uringws|websockets] [--warm 6000] [--count 9000]

``--server uringws`` runs ``python -m uringws serve --app echo`` from the ``uringws`` found on PYTHONPATH (pass
another checkout's path to measure it); ``--server websockets`` runs benchmarks/servers/websockets_server.py.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBES = ("connect-close", "http", "random")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def probe(port: int, kind: str, rng: random.Random) -> bool:
    """One probe; False if the server had not closed the connection after 2 s (we close it then)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        if kind == "connect-close":
            return True
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if kind == "http" else rng.randbytes(64))
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
    return True


def run(port: int, n: int, rng: random.Random) -> int:
    """``n`` probes in turn; returns how many the server left open for 2 s."""
    return sum(not probe(port, PROBES[i % len(PROBES)], rng) for i in range(n))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str, tmp: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if kind == "uringws":
        cmd = [sys.executable, "-m", "uringws", "serve", "--app", "echo", "--host", "127.0.0.1", "--port", str(port)]
        env = dict(os.environ, XDG_DATA_HOME=tmp)
    else:
        import trustme  # the websockets script needs a certificate file

        cert = trustme.CA().issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(f"{tmp}/cert.pem")
        cmd = [sys.executable, str(HERE / "servers" / "websockets_server.py"), "--port", str(port),
               "--certfile", f"{tmp}/cert.pem"]
        env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=["uringws", "websockets"], default="uringws")
    ap.add_argument("--warm", type=int, default=6000)
    ap.add_argument("--count", type=int, default=9000)
    args = ap.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start(args.server, tmp)
        try:
            start_rss = rss_kib(proc.pid)
            held = run(port, args.warm, rng)
            time.sleep(1)
            warm_rss = rss_kib(proc.pid)
            t0 = time.monotonic()
            held += run(port, args.count, rng)
            took = time.monotonic() - t0
            time.sleep(1)
            end_rss = rss_kib(proc.pid)
            print(f"server={args.server} rss_start={start_rss / 1024:.1f}MiB after_warm({args.warm})="
                  f"{warm_rss / 1024:.1f}MiB after_{args.count}_more={end_rss / 1024:.1f}MiB "
                  f"growth={(end_rss - warm_rss) / 1024:+.1f}MiB ({took:.1f} s for the {args.count}; "
                  f"left open 2 s: {held})",
                  flush=True)
            if args.server == "uringws":
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=60)
                late = "did not close in time" in out.decode(errors="replace")
                print(f"sigterm_exit={time.monotonic() - t0:.2f}s status={proc.returncode} "
                      f"'did not close in time' logged: {late}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
