"""The server runs out of file descriptors (RLIMIT_NOFILE lowered) with more clients than fds.

It must not crash, must keep serving the connections it has, must accept new ones once fds free up, and must say
so in one log line rather than a flood. On both backends.

The flood was the stall: asyncio's accept loop logs a traceback for every accept() that fails with EMFILE, ~100
per retry, once a second; the server's stdout is a pipe this test reads only at the end, so after 64 KiB the
server blocked in write() and no open connection got an echo (found on eafb8cb, both backends).
"""

from __future__ import annotations

import asyncio
import random
import resource
from typing import Any

import pytest

import uringws

from .conftest import (
    child_env,
    client_tls,
    echo_once,
    free_port,
    run_async,
    serve_cmd,
    server_fds,
    start_server,
    stop_server,
)

NOFILE = 64


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.mark.parametrize("backend", ["auto", "epoll"])
def test_server_out_of_fds_keeps_serving_and_recovers(chaos_certs: dict[str, str], backend: str) -> None:
    port = free_port()
    server = start_server(serve_cmd(port, chaos_certs["server"], "127.0.0.1", "--ping-interval", "none",
                                    "--backend", backend), env=child_env(), preexec_fn=_limit_fds)
    idle_fds = server_fds(server.pid)
    capacity = NOFILE - idle_fds
    ctx = client_tls(chaos_certs)
    url = f"wss://127.0.0.1:{port}/"
    rng = random.Random(1)

    async def open_one(timeout: float) -> Any:
        return await uringws.connect(url, ssl=ctx, compression=None, open_timeout=timeout, ping_interval=None)

    async def main() -> dict[str, int]:
        attempts = capacity + 20
        results = await asyncio.gather(*(open_one(5) for _ in range(attempts)), return_exceptions=True)
        opened = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        for r in refused:  # an open that could not get an fd times out; nothing else is acceptable
            assert isinstance(r, TimeoutError | ConnectionError | uringws.ConnectionClosed), repr(r)
        assert refused, f"all {attempts} opens succeeded with {capacity} fds free: the limit did not bite"
        assert server.poll() is None, "the server died when it ran out of fds"
        # Every connection it has keeps working while the accept loop is starved.
        await asyncio.gather(*(echo_once(ws, rng.randint(1, 256 << 10), rng, timeout=30) for ws in opened))
        # Free fds: close half of them; new clients must get in once asyncio's accept retry comes round.
        keep, leave = opened[: len(opened) // 2], opened[len(opened) // 2:]
        for ws in leave:
            await ws.close()
        newcomers = await asyncio.gather(*(open_one(30) for _ in range(len(leave) // 2)))
        await asyncio.gather(*(echo_once(ws, rng.randint(1, 256 << 10), rng, timeout=30) for ws in newcomers + keep))
        for ws in newcomers + keep:
            await ws.close()
        return {"attempts": attempts, "opened": len(opened), "refused": len(refused), "newcomers": len(newcomers)}

    try:
        numbers = run_async(main())
    finally:
        out = stop_server(server)
    warnings = [line for line in out.splitlines() if "accept() on" in line and "failed" in line]
    print(f"\nfd exhaustion ({backend}, RLIMIT_NOFILE {NOFILE}, {idle_fds} fds at idle): {numbers}, "
          f"{len(warnings)} warning(s), {len(out)} bytes of server output")
    assert server.returncode == 0, out
    assert warnings and "Too many open files" in warnings[0], f"no EMFILE warning:\n{out[-3000:]}"
    # One line per spell (and at most one a minute), not one traceback per failed accept().
    assert len(warnings) == 1, "\n".join(warnings)
    assert "out of system resource" not in out, out[-3000:]


def test_backend_env_var_serves(chaos_certs: dict[str, str]) -> None:
    # The README: URINGWS_BACKEND=epoll forces the epoll backend everywhere, `uringws serve` included.
    port = free_port()
    server = start_server(serve_cmd(port, chaos_certs["server"]), env=child_env(URINGWS_BACKEND="epoll"))
    out = stop_server(server)
    assert server.returncode == 0, out
