"""The reconnecting client: ``async for ws in connect(uri)`` against a server that is down, then up, then gone."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Iterator

import pytest

import uringws.client
from uringws.client import backoff, connect, retry_transient
from uringws.server import serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ConnectionClosed, InvalidStatus
from uringws.ws.handshake import Request

from .test_ws_api import run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FastBackoff:
    """Stands in for uringws.client.backoff: no waiting, and it counts the retries."""

    def __init__(self) -> None:
        self.retries = 0

    def __call__(self) -> Iterator[float]:
        while True:
            self.retries += 1
            yield 0.02


async def echo_once(ws: Connection) -> None:
    await ws.send(await ws.recv())  # then the handler returns: the server closes with 1000


def test_backoff_grows_to_the_cap_with_a_random_start() -> None:
    delays = backoff(initial=5.0, minimum=3.1, maximum=90.0, factor=1.618)
    first = next(delays)
    assert 0.0 <= first <= 5.0
    rest = [next(delays) for _ in range(12)]
    assert rest[0] == 3.1
    growing = rest[:9]  # 3.1 * 1.618**8 > 90: capped from the tenth on
    assert all(b > a for a, b in itertools.pairwise(growing))
    assert rest[-1] == 90.0 and max(rest) == 90.0


def test_retry_transient_decides_what_is_fatal() -> None:
    assert retry_transient(ConnectionRefusedError()) is None
    assert retry_transient(TimeoutError()) is None
    assert retry_transient(InvalidStatus(503, [])) is None
    assert isinstance(retry_transient(InvalidStatus(404, [])), InvalidStatus)
    assert isinstance(retry_transient(ValueError("bad")), ValueError)


@run
async def test_reconnects_until_the_server_is_up_then_after_each_close(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = FastBackoff()
    monkeypatch.setattr(uringws.client, "backoff", fast)
    port = _free_port()
    served: list[Connection] = []

    async def client() -> list[str]:
        answers: list[str] = []
        async for ws in connect(f"ws://127.0.0.1:{port}/", open_timeout=2):
            try:
                await ws.send(f"hello {len(answers)}")
                answers.append(str(await ws.recv()))
                await ws.recv()  # the server closes after one echo
            except ConnectionClosed:
                if len(answers) == 3:
                    return answers
                continue
        raise AssertionError("the reconnecting iterator ended")

    task = asyncio.create_task(client())
    while fast.retries < 3:  # the server is down: the client keeps trying
        await asyncio.sleep(0.01)
    assert not task.done()

    async def handler(ws: Connection) -> None:
        served.append(ws)
        await echo_once(ws)

    async with serve(handler, "127.0.0.1", port):
        answers = await asyncio.wait_for(task, 10)
    assert answers == ["hello 0", "hello 1", "hello 2"]
    assert len(served) == 3


@pytest.mark.parametrize(("status", "retried"), [(404, False), (403, False), (503, True)])
@run
async def test_http_errors_retried_only_when_transient(
    monkeypatch: pytest.MonkeyPatch, status: int, retried: bool
) -> None:
    fast = FastBackoff()
    monkeypatch.setattr(uringws.client, "backoff", fast)
    answered = 0

    def refuse(ws: Connection, request: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        nonlocal answered
        answered += 1
        return status, [], b"no\n"

    async with serve(echo_once, "127.0.0.1", 0, process_request=refuse) as server:
        uri = f"ws://127.0.0.1:{server.port_bound}/"
        if retried:

            async def until_three() -> None:
                async for _ws in connect(uri):
                    raise AssertionError("a refused handshake yielded a connection")

            task = asyncio.create_task(until_three())
            while answered < 3:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            with pytest.raises(InvalidStatus) as info:
                async for _ws in connect(uri):
                    raise AssertionError("a refused handshake yielded a connection")
            assert info.value.status == status
            assert answered == 1 and fast.retries == 0


@run
async def test_process_exception_can_make_any_error_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uringws.client, "backoff", FastBackoff())
    seen: list[Exception] = []

    def give_up(exc: Exception) -> Exception | None:
        seen.append(exc)
        return RuntimeError("gave up") if len(seen) >= 2 else None

    with pytest.raises(RuntimeError, match="gave up") as info:
        async for _ws in connect(f"ws://127.0.0.1:{_free_port()}/", process_exception=give_up):
            raise AssertionError("nothing listens there")
    assert len(seen) == 2 and all(isinstance(e, OSError) for e in seen)
    assert isinstance(info.value.__cause__, OSError)
