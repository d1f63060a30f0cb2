"""The ``uringws`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2, like every other error a user can fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="uringws",
        description="WebSockets over TLS on Linux io_uring.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="serve HTTPS + WSS (no arguments: 127.0.0.1:8443, dev certificate, demo app)",
                           description="Serve WebSockets over TLS. With no arguments: https://127.0.0.1:8443/ with a "
                           "self-signed development certificate (generated on first run, cached) and the demo app.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=None, help="port (default 8443, or 8080 with --no-tls)")
    serve.add_argument("--certfile", help="PEM certificate chain (default: a cached self-signed dev certificate)")
    serve.add_argument("--keyfile", help="PEM private key (default: inside --certfile)")
    serve.add_argument("--app", default="demo", help="demo (page, /echo, /broadcast), echo, or MODULE:HANDLER")
    serve.add_argument("--app-dir", default=".",
                       help="directory MODULE of --app MODULE:HANDLER is imported from first (default: the "
                       "working directory)")
    serve.add_argument("--no-tls", dest="tls", action="store_false", help="plain HTTP and ws:// (insecure)")
    serve.add_argument("--backend", choices=["auto", "uring", "epoll"], default="auto",
                       help="event loop backend (default auto: io_uring when usable)")
    serve.add_argument("--batch-wait-us", type=float, default=0.0, metavar="US",
                       help="completion batching: after a busy loop iteration, wait up to US microseconds for 16 "
                       "completions before going on (less CPU per message under load, up to US more latency; "
                       "Linux 6.1+; default 0: off; see docs/deployment.md)")
    serve.add_argument("--max-size", type=_opt_size, default=16 << 20,
                       help="largest message accepted, e.g. 1M, or 'none' (default 16M, for the demo's and "
                            "torture's large messages; the library's serve() and connect() default to 1M)")
    serve.add_argument("--max-memory", type=_opt_size, default=256 << 20,
                       help="memory that messages being received (64K and larger, until the app takes them) may "
                            "hold across all connections of a process, e.g. 1G, or 'none'; a message over it "
                            "closes only its connection with 1009 (default 256M; the library's serve() defaults "
                            "to none)")
    serve.add_argument("--max-queue", type=_opt_positive_int, default=16,
                       help="messages buffered per connection (default 16)")
    serve.add_argument("--ping-interval", type=_opt_positive_float, default=20.0,
                       help="seconds between keepalive pings, 'none' to disable (default 20)")
    serve.add_argument("--ping-timeout", type=_opt_positive_float, default=20.0,
                       help="seconds to wait for a pong before closing with 1011 (default 20)")
    serve.add_argument("--no-compression", dest="compression", action="store_false",
                       help="disable permessage-deflate")
    serve.add_argument("--write-limit", type=_size, default=64 << 10,
                       help="per-connection write buffer high-water mark (default 64K)")
    serve.add_argument("--close-timeout", type=_positive_float, default=10.0,
                       help="seconds for closing handshakes (default 10)")
    serve.add_argument("--sndbuf", type=_size, default=None,
                       help="SO_SNDBUF of accepted sockets (testing: a tiny value forces short writes)")
    serve.add_argument("--workers", type=_workers, default=1,
                       help="worker processes on the port (SO_REUSEPORT), restarted if they die; 'auto' = usable "
                       "CPUs (default 1: one process)")
    serve.add_argument("--pubsub", metavar="URL",
                       help="redis://HOST:PORT/DB or rediss://...: the demo's /broadcast room goes through this Redis, "
                       "so every worker and node shares it (default: shared by this server's workers only)")
    serve.add_argument("--pubsub-mode", choices=["pubsub", "streams"], default="pubsub",
                       help="Redis pub/sub (at-most-once) or Streams (resumes after a reconnect) (default pubsub)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="logging level (default info)")
    doctor = sub.add_parser("doctor", help="report what this machine offers (kernel, io_uring, backend)",
                            description="Report the kernel, whether io_uring is usable (and why not), the "
                            "supported operations and the backend uringws would choose.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    t = sub.add_parser("torture", help="prove that a ws:// or wss:// echo server keeps every byte",
                       description="Open N connections with tiny receive windows and slow, bursty reads (forcing "
                       "the server into short writes), send messages from a seeded PRNG and check every echo by "
                       "length and SHA-256. Exit 1 on any lost, reordered or corrupt byte or TLS error.")
    t.add_argument("url", help="ws:// or wss:// URL of an echo endpoint")
    t.add_argument("-c", "--connections", type=_positive_int, default=20, help="concurrent connections (default 20)")
    t.add_argument("-n", "--messages", type=_positive_int, default=20, help="messages per connection (default 20)")
    t.add_argument("--min-size", type=_size, default=1, help="smallest message (default 1)")
    t.add_argument("--max-size", type=_positive_size, default=16 << 20, help="largest message, e.g. 16M (default 16M)")
    t.add_argument("--seed", type=int, default=1, help="PRNG seed for sizes, payloads and read pacing")
    t.add_argument("--rcvbuf", type=_size, default=4096, help="client SO_RCVBUF (default 4096)")
    t.add_argument("--read-chunk", type=_positive_size, default=4096, help="largest single read (default 4096)")
    t.add_argument("--window", type=_positive_int, default=2, help="messages in flight per connection (default 2)")
    t.add_argument("--tls-version", choices=["1.2", "1.3"], help="pin the TLS version (wss://)")
    t.add_argument("--cafile", help="CA bundle to verify the server certificate (wss://)")
    t.add_argument("--insecure", action="store_true", help="do not verify the server certificate (wss://)")
    t.add_argument("--server-hostname", help="SNI / certificate name if it differs from the URL host")
    t.add_argument("--timeout", type=_positive_float, default=600.0,
                   help="give up after this many seconds (default 600)")
    t.add_argument("--idle-timeout", type=_opt_positive_float, default=10.0,
                   help="fail when no byte moves either way for this many seconds while echoes are outstanding "
                   "(a server that does not echo), 'none' to wait for --timeout (default 10)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    bench = sub.add_parser("bench", help="benchmark uringws against websockets, picows and aiohttp (same run)",
                           description="Run each stack's echo server in its own process (pinned to CPU 0) under a "
                           "load client (CPU 1); report server CPU per message/byte, rates, latency and idle memory, "
                           "medians over rounds and ratios to uringws, plus the TLS floor. Needs the source checkout "
                           "and the [bench] extra.")
    from .tools import bench as bench_mod

    bench_mod.add_arguments(bench)
    return parser


class _VersionAction(argparse.Action):
    """``--version``; reads the installed metadata only when asked (importlib.metadata costs ~10 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"uringws {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The version pip installed; the source tree's own when it runs uninstalled (a checkout on PYTHONPATH)."""
    from importlib import metadata

    try:
        return metadata.version("uringws")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_int(text: str) -> int:
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _port(text: str) -> int:
    n = _int(text)
    if not 1 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{n} is not a TCP port: use 1-65535")
    return n


def _workers(text: str) -> int:
    from .workers import parse_workers

    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {text}")
    return x


def _opt_positive_int(text: str) -> int | None:
    return None if text.lower() == "none" else _positive_int(text)


def _opt_positive_float(text: str) -> float | None:
    return None if text.lower() == "none" else _positive_float(text)


def _positive_size(text: str) -> int:
    n = _size(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, not {text}")
    return n


def _opt_size(text: str) -> int | None:
    return None if text.lower() == "none" else _size(text)


def _size(text: str) -> int:
    """Parse 4096, 64K, 16M, 1G."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if text and text[-1] in units:
            n = int(float(text[:-1]) * units[text[-1]])
        else:
            n = int(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 64K, 16M)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "doctor", "bench"):
        from .ring.probe import availability

        try:
            availability()  # cached: the backend choice below reuses it
        except ValueError as exc:  # URINGWS_BACKEND names no backend
            print(f"uringws {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        import logging

        from .tools import serve

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        port = args.port if args.port is not None else (8443 if args.tls else 8080)
        opts = serve.ServeOptions(
            host=args.host, port=port, certfile=args.certfile, keyfile=args.keyfile, app=args.app,
            app_dir=args.app_dir, tls=args.tls, backend=args.backend, batch_wait=args.batch_wait_us / 1e6,
            max_size=args.max_size, max_queue=args.max_queue,
            max_memory=args.max_memory,
            ping_interval=args.ping_interval, ping_timeout=args.ping_timeout, compression=args.compression,
            write_limit=args.write_limit, close_timeout=args.close_timeout, sndbuf=args.sndbuf, workers=args.workers,
            pubsub=args.pubsub, pubsub_mode=args.pubsub_mode)
        return serve.main(opts)
    if args.command == "bench":
        from .tools import bench as bench_mod

        return bench_mod.main(args)
    if args.command == "doctor":
        from .tools import doctor

        return doctor.main(as_json=args.json)
    if args.command == "torture":
        from .tools import torture

        if args.min_size > args.max_size:
            print(f"uringws torture: --min-size ({args.min_size}) is larger than --max-size ({args.max_size})",
                  file=sys.stderr)
            return 2
        cfg = torture.TortureConfig(
            url=args.url, connections=args.connections, messages=args.messages, min_size=args.min_size,
            max_size=args.max_size, seed=args.seed, rcvbuf=args.rcvbuf, read_chunk=args.read_chunk,
            window=args.window, tls_version=args.tls_version, cafile=args.cafile, insecure=args.insecure,
            server_hostname=args.server_hostname, timeout=args.timeout,
            idle_timeout=args.idle_timeout)
        try:
            torture.parse_uri(args.url)
        except torture.WebSocketError as exc:
            print(f"uringws torture: {exc}", file=sys.stderr)
            return 2
        return torture.main(cfg, progress=args.progress)
    parser.print_help()
    return 2


def run() -> None:
    """Console-script entry point: a closed stdout (``uringws doctor | head``) is not an error."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    run()
