"""The loop's accept path when accept() runs out of fds: one warning, a paced retry, recovery, clean close."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Any

import pytest

import uringws.loop.events
from uringws.loop import EventLoop


class FlakyListener(socket.socket):
    """A listening socket whose accept() fails with EMFILE while ``failing`` is set, counting the calls."""

    failing = False
    calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().accept()


def test_out_of_fds_pauses_once_and_recovers(backend_loop: EventLoop, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(uringws.loop.events, "ACCEPT_RETRY_DELAY", 0.05)
    loop = backend_loop
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    made: list[asyncio.BaseTransport] = []

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    listener = FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    addr = listener.getsockname()

    async def connect() -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, addr)  # the kernel completes it from the backlog; no accept() needed
        return s

    async def main() -> tuple[int, int]:
        server = await loop.create_server(Proto, sock=listener)
        listener.failing = True
        clients = [await connect() for _ in range(3)]
        await asyncio.sleep(0.5)  # ~10 retry periods
        calls_while_failing = listener.calls
        listener.failing = False
        async with asyncio.timeout(10):
            while len(made) < 3:
                await asyncio.sleep(0.01)
        # A second spell, then the server closes while its retry is pending.
        listener.failing = True
        clients.append(await connect())
        await asyncio.sleep(0.1)
        server.close()
        for t in made:  # since 3.12 wait_closed() also waits for the server's connections to end
            t.close()
        await server.wait_closed()
        await asyncio.sleep(0.2)  # past the retry that was pending
        for s in clients:
            s.close()
        return calls_while_failing, len(made)

    with caplog.at_level(logging.INFO, logger="uringws.loop"):
        calls_while_failing, accepted = loop.run_until_complete(main())
    # asyncio's loop calls accept() up to `backlog` times per wake-up once it fails: hundreds in 0.5 s.
    assert 1 <= calls_while_failing <= 30, calls_while_failing
    assert accepted == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "accept() on" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Too many open files" in warnings[0].getMessage()
    assert any("accepting on" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
    assert errors == [], errors  # no traceback per failure, no retry on the closed listener (fd -1)
