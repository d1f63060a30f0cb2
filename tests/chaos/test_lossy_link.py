"""Integrity torture across a lossy link: server and client in network namespaces of their own, joined by a veth
pair, nftables dropping packets at random on both sides. TCP retransmits; every echoed byte must still arrive
intact (``uringws torture`` checks each message by length and SHA-256, and names a BadRecordMac)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import SERVER_IP, NetnsPair, child_env, namespaces_left, serve_cmd, start_server, stop_server

PORT = 8443


def torture_across(netns: NetnsPair, certs: dict[str, str], drop: int, tls: str, *args: str,
                   timeout: float) -> dict[str, int]:
    """Serve echo in the server namespace, torture it from the client namespace; the measured numbers."""
    netns.drop(netns.server, drop)
    netns.drop(netns.client, drop)
    server = start_server(netns.exec_cmd(netns.server, serve_cmd(PORT, certs["server"], SERVER_IP,
                                                                  "--sndbuf", "4096")), env=child_env())
    try:
        cmd = [sys.executable, "-m", "uringws", "torture", f"wss://{SERVER_IP}:{PORT}/", "--cafile", certs["ca"],
               "--tls-version", tls, "--no-progress", "--timeout", str(timeout), *args]
        proc = subprocess.run(netns.exec_cmd(netns.client, cmd), capture_output=True, text=True,
                              timeout=timeout + 60)
    finally:
        out = stop_server(server)
    assert server.returncode == 0, out
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a FAIL line (e.g. 1011 keepalive) fails it
    lines = proc.stdout.strip().splitlines()
    m = re.fullmatch(r"(\d+) messages \(([\d.]+) MiB\) echoed intact over (\d+) connections in ([\d.]+) s", lines[-2])
    assert m, proc.stdout
    passed = re.fullmatch(r"(\d+) passed, (\d+) failed", lines[-1])
    assert passed and passed.group(2) == "0", proc.stdout
    numbers = {
        "messages": int(m.group(1)), "mib": int(float(m.group(2))), "connections": int(passed.group(1)),
        "dropped": netns.dropped(netns.server) + netns.dropped(netns.client),
        "retransmits": netns.tcp_counter(netns.server, "RetransSegs") + netns.tcp_counter(netns.client,
                                                                                            "RetransSegs"),
    }
    print(f"\nlossy link {drop}% TLS {tls}: {lines[-2]}; {numbers['dropped']} packets dropped, "
          f"{numbers['retransmits']} TCP segments retransmitted, 0 corrupt")
    return numbers


@pytest.mark.parametrize("tls, drop", [("1.2", 2), ("1.3", 3)])
def test_torture_over_lossy_link(netns: NetnsPair, chaos_certs: dict[str, str], tls: str, drop: int) -> None:
    n = torture_across(netns, chaos_certs, drop, tls, "-c", "6", "-n", "8", "--max-size", "1M", "--seed", "7",
                       timeout=120)
    assert n["connections"] == 6 and n["messages"] == 6 * 8
    # The link really was lossy and TCP really did repair it: otherwise this test proved nothing.
    assert n["dropped"] > 0 and n["retransmits"] > 0, n


@pytest.mark.slow
@pytest.mark.parametrize("tls, drop", [("1.2", 1), ("1.3", 3)])
def test_full_torture_over_lossy_link(netns: NetnsPair, chaos_certs: dict[str, str], tls: str, drop: int) -> None:
    # The tool's defaults: 20 connections x 20 messages of 1 B - 16 MiB, 4 KiB receive windows, bursty reads.
    n = torture_across(netns, chaos_certs, drop, tls, "--min-size", "1", "--max-size", "16M", timeout=1500)
    assert n["connections"] == 20 and n["messages"] == 20 * 20
    assert n["dropped"] > 0 and n["retransmits"] > 0, n


def test_namespaces_are_removed_even_on_failure() -> None:
    from .conftest import netns_pair, netns_unavailable

    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="boom"), netns_pair() as pair:
        assert namespaces_left(pair) == [pair.server, pair.client]
        raise RuntimeError("boom")
    assert namespaces_left(pair) == []
