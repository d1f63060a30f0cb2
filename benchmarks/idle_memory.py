"""RSS per idle TLS WebSocket connection, split into Python objects and native memory (OpenSSL and the rest).

For each stack, N idle connections are opened (a TLS handshake, a WebSocket upgrade for the WebSocket stacks, then
nothing) and the server process is measured twice, in two runs:

- **total**: the growth of the server's RSS (VmRSS) from one warm connection to N + 1, divided by N;
- **python**: with ``tracemalloc`` on in the server, the growth of the memory it traces (every allocation made
  through Python's allocators: objects, dicts, bytes, frames of suspended coroutines), divided by N, with the top
  allocation sites (file:line) per connection. tracemalloc costs memory of its own, so this run's RSS is not used.

**native** = total − python: memory Python's allocators never see, i.e. OpenSSL's per-SSL state (``SSL``,
record layer, session), the C engine's own buffers and malloc's overhead. **trimmed**: the total again, taken
after glibc's ``malloc_trim(0)`` at the end of the untraced run: the part of the total that is free memory the
allocator kept resident (slack left by the handshakes' temporary allocations) shows up as the difference.
**malloc**: the growth of glibc's in-use malloc chunks (``mallinfo2()``, chunk headers included), divided by N, in
the untraced run: OpenSSL's and the engine's memory plus Python's objects over 512 bytes (the smaller ones live in
pymalloc's arenas, outside malloc). Stacks:

- ``uringws``: ``uringws.server.serve`` on ``uringws.new_event_loop`` (as ``uringws serve`` runs; the compiled pieces
  in use where built, none with ``URINGWS_PURE=1``), echo handler, compression and keepalive pings off;
- ``asyncio``: a bare asyncio TLS server (the stdlib ``SSLObject`` + memory BIOs, a protocol that ignores its data,
  no WebSocket). Its *python* part is asyncio's own (a 256 KiB receive buffer per connection); its *native* part is
  what OpenSSL alone keeps per idle connection made from the same ``ssl.SSLContext``: the floor of the native side.

The server is pinned to CPU 0 and the client (asyncio + uvloop, raw sockets, one upgrade request per connection)
to CPU 1 where the machine has two. Prints a table, or JSON with ``--json``::

    PYTHONPATH=$PWD python benchmarks/idle_memory.py --connections 5000 --stacks uringws,asyncio

The native part per allocation site: the server under heaptrack (``--server-wrapper``; it then exits with the
connections open, so heaptrack's leaks are what they hold; the RSS figures of such a run include heaptrack's),
with N and with 1 connection, the difference per stack (divide by N - 1)::

    python benchmarks/idle_memory.py --connections 1000 --stacks uringws --server-wrapper 'heaptrack -o ht1000'
    python benchmarks/idle_memory.py --connections 1 --stacks uringws --server-wrapper 'heaptrack -o ht1'
    heaptrack_print -f ht1000.zst -d ht1.zst --print-leaks 1 --print-peaks 0 --print-allocators 0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import json
import os
import resource
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

STACKS = ("uringws", "asyncio")
UPGRADE = (
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_in_use() -> int | None:
    """Bytes of malloc'd chunks in use (glibc's ``mallinfo2()``: uordblks + hblkhd, chunk headers included), or None
    without glibc >= 2.33. Python's objects of up to 512 bytes are not in it (they live in pymalloc's arenas); what
    is: OpenSSL's, the compiled engine's and the ring's allocations, and Python's larger objects."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd)


def _rss_after_malloc_trim() -> int | None:
    """RSS in KiB after glibc's ``malloc_trim(0)`` returned free heap pages to the kernel; None without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return _rss_kib()


# --- the server process -----------------------------------------------------------------------------------------
class _Ignore(asyncio.Protocol):
    """The bare asyncio server's protocol: keeps the connection, ignores what arrives."""

    __slots__ = ()


async def _serve(stack: str, certfile: str, keyfile: str, trace: bool, exit_held: bool = False) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    loop = asyncio.get_running_loop()
    if stack == "asyncio":
        server: Any = await loop.create_server(_Ignore, "127.0.0.1", 0, ssl=ctx, backlog=1024)
        port = server.sockets[0].getsockname()[1]
    else:
        from uringws.server import ServerConnection, serve

        async def echo(ws: ServerConnection) -> None:
            async for message in ws:
                await ws.send(message)

        server = await serve(echo, "127.0.0.1", 0, ssl=ctx, compression=None, ping_interval=None, backlog=1024)
        port = server.port_bound
    if trace:
        tracemalloc.start(1)
    print(f"READY {port}", flush=True)
    snapshots: list[tracemalloc.Snapshot] = []
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        # "measure": settle, then report RSS (and the traced memory with the sites that grew since the last one).
        await asyncio.sleep(1.0)
        out: dict[str, Any] = {"rss_kib": _rss_kib(), "malloc": _malloc_in_use()}
        if trace:
            snapshots.append(tracemalloc.take_snapshot())
            out["traced"] = tracemalloc.get_traced_memory()[0]
            if len(snapshots) == 2:
                diff = snapshots[1].compare_to(snapshots[0], "lineno")
                out["sites"] = [
                    (f"{'/'.join(s.traceback[0].filename.rsplit('/', 2)[-2:])}:{s.traceback[0].lineno}", s.size_diff)
                    for s in diff[:12]
                ]
        if line == "quit":
            # And once more after glibc's malloc_trim(0): what the allocator held free but resident (slack).
            out["rss_trimmed_kib"] = _rss_after_malloc_trim()
        print(json.dumps(out), flush=True)
        if line == "quit":
            if exit_held:
                # Leave through the C library's exit(): its atexit handlers run (a heap profiler's among them)
                # with every connection still open, so what they hold is what the profiler reports as not freed.
                sys.stderr.flush()
                ctypes.CDLL("libc.so.6").exit(0)
            break


def server_main(stack: str, certfile: str, keyfile: str, trace: bool, exit_held: bool = False) -> None:
    """Entry point of the server process (``--serve``)."""
    _raise_fd_limit()
    if stack == "asyncio":
        factory: Any = asyncio.new_event_loop
    else:
        import uringws

        factory = uringws.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_serve(stack, certfile, keyfile, trace, exit_held))


# --- the client process -----------------------------------------------------------------------------------------
async def _client(port: int, n: int, websocket: bool) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    gate = asyncio.Semaphore(64)
    keep: list[Any] = []

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
            if websocket:
                writer.write(UPGRADE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(f"upgrade refused: {head[:80]!r}")
            keep.append((reader, writer))

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"OPEN {len(keep)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    os._exit(0)  # the kernel closes them all at once


def client_main(port: int, n: int, websocket: bool) -> None:
    """Entry point of the client process (``--connect``)."""
    _raise_fd_limit()
    import uvloop

    uvloop.run(_client(port, n, websocket))


# --- the harness ------------------------------------------------------------------------------------------------
def _pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) >= 2 else []


@contextlib.contextmanager
def _process(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _ask(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    if line:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    answer = proc.stdout.readline()
    if not answer:
        raise RuntimeError(f"{proc.args!r} exited ({proc.wait()}) before answering")
    return answer.strip()


def _ready(proc: subprocess.Popen[str]) -> int:
    """The server's port, from its READY line (a wrapper such as heaptrack may print lines of its own first)."""
    while not (line := _ask(proc, "")).startswith("READY "):
        pass
    return int(line.split()[1])


def measure(stack: str, n: int, certfile: str, keyfile: str, trace: bool, wrapper: list[str] | None = None) -> dict[
        str, Any]:
    """One run: one warm connection, measure, N more, measure; the growth per connection. ``wrapper``: a command
    the server runs under (``heaptrack -o FILE``); the server then exits with the connections open."""
    me = [sys.executable, os.path.abspath(__file__)]
    serve = [*_pin(0), *(wrapper or []), *me, "--serve", stack, "--certfile", certfile, "--keyfile", keyfile]
    with _process(serve + (["--trace"] if trace else []) + (["--exit-held"] if wrapper else [])) as server:
        port = _ready(server)
        websocket = stack != "asyncio"
        with _process([*_pin(1), *me, "--connect", str(port), "1", *(["--ws"] if websocket else [])]) as warm:
            _ask(warm, "")
            before = json.loads(_ask(server, "measure"))
            with _process([*_pin(1), *me, "--connect", str(port), str(n), *(["--ws"] if websocket else [])]) as c:
                opened = int(_ask(c, "").split()[1])
                after = json.loads(_ask(server, "quit"))
    out: dict[str, Any] = {"stack": stack, "connections": opened}
    out["rss_kib_per_conn"] = (after["rss_kib"] - before["rss_kib"]) / opened
    if after.get("malloc") is not None and before.get("malloc") is not None:
        out["malloc_kib_per_conn"] = (after["malloc"] - before["malloc"]) / 1024 / opened
    if after.get("rss_trimmed_kib") is not None:
        out["trimmed_kib_per_conn"] = (after["rss_trimmed_kib"] - before["rss_kib"]) / opened
    if trace:
        out["python_kib_per_conn"] = (after["traced"] - before["traced"]) / 1024 / opened
        out["sites_bytes_per_conn"] = [(site, size / opened) for site, size in after.get("sites", [])]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=5000, help="idle connections per run (default 5000)")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated, from {', '.join(STACKS)}")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--certfile", help="server certificate (default: a fresh self-signed one)")
    p.add_argument("--keyfile")
    p.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--exit-held", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--server-wrapper", metavar="CMD",
        help="run the untraced server under this command, e.g. 'heaptrack -o /tmp/ht5000'; the server then exits "
             "through libc's exit() with its connections open, so the profile's leaks are what they hold",
    )
    p.add_argument("--connect", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    p.add_argument("--ws", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        server_main(args.serve, args.certfile, args.keyfile, args.trace, args.exit_held)
        return 0
    if args.connect:
        client_main(args.connect[0], args.connect[1], args.ws)
        return 0
    stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = set(stacks) - set(STACKS)
    if unknown:
        p.error(f"unknown stacks: {', '.join(sorted(unknown))}; choose from {', '.join(STACKS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="uringws-idle-") as tmp:
        certfile, keyfile = args.certfile, args.keyfile
        if not certfile:
            from uringws.tls import devcert

            cert = devcert.ensure_devcert(tmp)  # a fresh self-signed ECDSA P-256 certificate, deleted afterwards
            certfile, keyfile = str(cert.cert_path), str(cert.key_path)
        for stack in stacks:
            t0 = time.monotonic()
            wrapper = shlex.split(args.server_wrapper) if args.server_wrapper else None
            total = measure(stack, args.connections, certfile, keyfile, trace=False, wrapper=wrapper)
            traced = measure(stack, args.connections, certfile, keyfile, trace=True)
            total.update({k: v for k, v in traced.items() if k not in total})
            total["native_kib_per_conn"] = total["rss_kib_per_conn"] - total["python_kib_per_conn"]
            total.setdefault("trimmed_kib_per_conn", float("nan"))
            total.setdefault("malloc_kib_per_conn", float("nan"))
            total["seconds"] = round(time.monotonic() - t0, 1)
            results.append(total)
    if args.json:
        print(json.dumps({"pure": os.environ.get("URINGWS_PURE") == "1", "results": results}, indent=1))
        return 0
    print(f"RSS per idle TLS connection, {args.connections} connections (KiB; 1 KiB = 1024 bytes)")
    print(f"{'stack':<10} {'total':>7} {'python':>7} {'native':>7} {'trimmed':>8} {'malloc':>7}")
    for r in results:
        print(
            f"{r['stack']:<10} {r['rss_kib_per_conn']:>7.1f} {r['python_kib_per_conn']:>7.1f} "
            f"{r['native_kib_per_conn']:>7.1f} {r['trimmed_kib_per_conn']:>8.1f} {r['malloc_kib_per_conn']:>7.1f}"
        )
    for r in results:
        print(f"\n{r['stack']}: top Python allocation sites, bytes per connection")
        for site, size in r["sites_bytes_per_conn"]:
            print(f"  {size:>8.0f}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
