"""SIGKILL the server in the middle of transfers, then start it again on the same port.

The clients (uringws's own client on uringws's loop) must fail cleanly and promptly: ConnectionClosedError (or
a connection reset surfacing as one), never a hang and never a wrong byte. The restarted server must bind the
same port (no lingering TIME_WAIT refusal) and serve new clients."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import uringws

from .conftest import (
    SERVER_IP,
    NetnsPair,
    child_env,
    client_tls,
    echo_once,
    free_port,
    run_async,
    serve_cmd,
    start_server,
    stop_server,
)

CLIENTS = 6
FAIL_WITHIN = 20.0  # seconds from the kill to every client's error; a hang is the bug this guards against


@pytest.mark.parametrize("backend", ["auto", "epoll"])
def test_sigkill_mid_transfer_then_restart(chaos_certs: dict[str, str], backend: str) -> None:
    port = free_port()
    cmd = serve_cmd(port, chaos_certs["server"])
    server = start_server(cmd, env=child_env())
    ctx = client_tls(chaos_certs)
    url = f"wss://127.0.0.1:{port}/"

    async def main() -> tuple[list[BaseException], list[float]]:
        warm = asyncio.Event()
        rounds = [0] * CLIENTS

        async def client(i: int) -> None:
            rng = random.Random(i)
            async with uringws.connect(url, ssl=ctx, compression=None, max_size=8 << 20, ping_interval=None) as ws:
                while True:  # echo without pause, so the kill lands mid-send or mid-receive
                    await echo_once(ws, rng.randint(256 << 10, 4 << 20), rng)
                    rounds[i] += 1
                    if min(rounds) >= 2:
                        warm.set()

        tasks = [asyncio.ensure_future(client(i)) for i in range(CLIENTS)]
        await asyncio.wait_for(warm.wait(), 120)
        server.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, pending = await asyncio.wait(tasks, timeout=FAIL_WITHIN)
        for t in pending:
            t.cancel()
        assert not pending, f"{len(pending)} of {CLIENTS} clients still hang {FAIL_WITHIN:g} s after the kill"
        errors = [t.exception() for t in tasks]
        return [e for e in errors if e is not None], [time.monotonic() - killed]

    try:
        errors, (took,) = run_async(main(), backend)
    finally:
        stop_server(server)
    assert server.returncode == -signal.SIGKILL
    assert len(errors) == CLIENTS
    for exc in errors:
        # The public error for a connection that died without a closing handshake: ConnectionClosedError 1006.
        assert isinstance(exc, uringws.ConnectionClosedError), repr(exc)
        assert exc.code == 1006, repr(exc)
    print(f"\n{CLIENTS} clients failed with ConnectionClosedError 1006 within {took:.2f} s of the SIGKILL")

    restarted = start_server(cmd, env=child_env())
    try:
        async def after() -> None:
            rng = random.Random(99)
            async with uringws.connect(url, ssl=ctx, compression=None, max_size=8 << 20) as ws:
                for size in (1, 1000, 1 << 20, 4 << 20):
                    await echo_once(ws, size, rng)

        run_async(asyncio.wait_for(after(), 60), backend)
    finally:
        out = stop_server(restarted)
    assert restarted.returncode == 0, out


def test_sigkill_behind_a_dark_link_keepalive_ends_clients(netns: NetnsPair, chaos_certs: dict[str, str]) -> None:
    """The server's host vanishes: SIGKILL while the link drops every packet, so no RST ever reaches the
    clients. Only the clients' keepalive (ping every 1 s, 2 s timeout, then 2 s for the closing handshake) can
    end them; they must not hang."""
    port = 8443
    server = start_server(netns.exec_cmd(netns.server, serve_cmd(port, chaos_certs["server"], SERVER_IP)),
                          env=child_env())
    clients = subprocess.Popen(
        netns.exec_cmd(netns.client, [sys.executable, str(Path(__file__).with_name("echo_clients.py")),
                                      f"wss://{SERVER_IP}:{port}/", chaos_certs["ca"], str(CLIENTS),
                                      "--ping-interval", "1", "--ping-timeout", "2", "--close-timeout", "2",
                                      "--give-up", "40"]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        assert clients.stdout is not None and clients.stdin is not None
        assert clients.stdout.readline().strip() == "warm", clients.communicate(timeout=30)
        netns.drop(netns.client, 100)
        netns.drop(netns.server, 100)
        server.send_signal(signal.SIGKILL)
        clients.stdin.write("go\n")
        clients.stdin.flush()
        out, err = clients.communicate(timeout=120)
    finally:
        if clients.poll() is None:
            clients.kill()
            clients.communicate()
        stop_server(server)
    assert clients.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["hung"] == 0, result
    took = [end["after"] for end in result["ends"]]
    print(f"\nlink dark + SIGKILL: {CLIENTS} clients ended by keepalive within {max(took):.2f} s: "
          f"{sorted({(e['error'], e['code']) for e in result['ends']})}")
    for end in result["ends"]:
        assert end["error"] == "ConnectionClosedError", result
        # 1 + 2 + 2 s nominal; a wide margin for a loaded 2-core machine
        assert end["after"] is not None and end["after"] < 20, result
