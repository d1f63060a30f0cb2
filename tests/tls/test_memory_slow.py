"""Idle-connection memory guard (slow): server RSS per idle TLS connection stays under 32 KiB, on both loops."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import trustme

from .bench_tls_memory import run_one

GOAL = 32 * 1024


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ours", "ring"], ids=["selector-loop", "ring-loop"])
def test_idle_tls_connection_rss_below_goal(impl: str) -> None:
    """``ours`` = stdlib selector loop + uringws TLS; ``ring`` = uringws.EventLoop (io_uring + uringws TLS)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory() as d:
        cert, key, cafile = Path(d, "cert.pem"), Path(d, "key.pem"), Path(d, "ca.pem")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        ca.cert_pem.write_to_path(str(cafile))
        ours = run_one(impl, 1000, str(cert), str(key), str(cafile))
        stdlib = run_one("asyncio", 300, str(cert), str(key), str(cafile))
    assert ours["per_conn"] < GOAL, ours
    assert stdlib["per_conn"] > 4 * ours["per_conn"], (stdlib, ours)  # the comparison still measures something
