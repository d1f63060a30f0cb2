"""The ``uringws`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uringws",
        description="WebSockets over TLS on Linux io_uring.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="report what this machine offers (kernel, io_uring, backend)",
                            description="Report the kernel, whether io_uring is usable (and why not), the "
                            "supported operations and the backend uringws would choose.")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .tools import doctor

        return doctor.main(as_json=args.json)
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
