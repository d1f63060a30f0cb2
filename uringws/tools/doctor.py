"""``uringws doctor``: what this machine offers uringws, and which backend it would run on."""

from __future__ import annotations

import json
import os
import platform
import ssl
import sys
from typing import Any

from .. import _compiled
from ..ring.io_uring import IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_SENDMSG
from ..ring.probe import availability, kernel_version, probe
from ..ws import frames

# The operations the loop cannot do without; everything else is an optional fast path.
REQUIRED_OPS = {IORING_OP_SEND: "SEND", IORING_OP_RECV: "RECV", IORING_OP_SENDMSG: "SENDMSG",
                IORING_OP_ACCEPT: "ACCEPT"}


def inspect() -> dict[str, Any]:
    avail = availability()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "openssl": ssl.OPENSSL_VERSION,
        "tls_1_3": ssl.HAS_TLSv1_3,
        "kernel": avail.kernel,
        "kernel_version": ".".join(map(str, kernel_version(avail.kernel))),
        "machine": platform.machine(),
        "sysctl_io_uring_disabled": avail.sysctl_io_uring_disabled,
        "io_uring_usable": avail.usable,
        "io_uring_reason": avail.reason,
        "backend_env": os.environ.get("URINGWS_BACKEND") or None,
        # Whether the optional C mask is in use (False: not built, or URINGWS_NO_SPEEDUPS=1).
        "speedups": frames.apply_mask is not frames.apply_mask_py,
    }
    pieces = _compiled.status()
    # Each compiled piece: in use or not (False: not built, switched off by URINGWS_PURE=1, or unusable here).
    report["compiled"] = {name: in_use for name, (in_use, _) in pieces.items()}
    report["compiled_reasons"] = {name: reason for name, (_, reason) in pieces.items()}
    p = probe() if avail.usable else None
    missing: list[str] = []
    if p is not None:
        report["probe"] = p.as_dict()
        missing = [name for op, name in REQUIRED_OPS.items() if not p.supports(op)]
        report["missing_required_ops"] = missing
    usable = avail.usable and not missing
    report["backend"] = "io_uring" if usable else "epoll"
    if avail.usable and missing:
        report["backend_reason"] = f"io_uring lacks required operations: {', '.join(missing)}"
    else:
        report["backend_reason"] = avail.reason
    return report


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Python      {report['python']} ({report['implementation']})",
        f"OpenSSL     {report['openssl']} (TLS 1.3: {'yes' if report['tls_1_3'] else 'no'})",
        f"Kernel      {report['kernel']} ({report['machine']})",
        f"io_uring    {'usable' if report['io_uring_usable'] else 'NOT usable'}: {report['io_uring_reason']}",
    ]
    if report["sysctl_io_uring_disabled"] is not None:
        lines.append(f"sysctl      kernel.io_uring_disabled = {report['sysctl_io_uring_disabled']}")
    p = report.get("probe")
    if p:
        lines.append(f"Operations  {len(p['ops'])} supported: {' '.join(p['ops'])}")
        lines.append(f"Features    {' '.join(p['features'])}")
        lines.append(f"Setup flags {' '.join(p['setup_flags']) or '(none)'} (as a default ring is created)")
        fast = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in p["fast_paths"].items())
        lines.append(f"Fast paths  {fast}")
    lines.append(f"Speedups    {'C mask (uringws.ws._speedups)' if report['speedups'] else 'pure Python'}")
    for name, in_use in report["compiled"].items():
        reason = report["compiled_reasons"][name]
        lines.append(f"Compiled    {name}: {'in use' if in_use else 'not in use'}" + (f" ({reason})" if reason else ""))
    lines.append(f"Backend     uringws would run on {report['backend']}: {report['backend_reason']}")
    if report["backend_env"]:
        lines.append(f"            (URINGWS_BACKEND={report['backend_env']})")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    report = inspect()
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return 0
