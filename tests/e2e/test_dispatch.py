"""``ws.dispatch(callback)`` and ``ws.send_nowait()``, the callback-level API, end to end over TLS on uringws's
ring loop: every message to the callback in order (those queued before the call first), the compiled delivery
(``_speedups.Dispatch``) and its pure twin (``connection._PyDispatch``) alike; the ends of a dispatch (normal
close, error close, a failing callback); what it excludes (recv() meanwhile); the memory budget's shares released;
a protocol error after good messages."""

from __future__ import annotations

import asyncio
import os
import ssl
import types
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uringws
from uringws.client import connect
from uringws.server import Server, serve
from uringws.ws import connection as connection_module
from uringws.ws.connection import PENDING_FAILURE_DELAY, Connection, send_nowait_py
from uringws.ws.exceptions import ConcurrencyError, ConnectionClosedError, ConnectionClosedOK
from uringws.ws.frames import Dispatch as CDispatch
from uringws.ws.frames import SendNowait as send_nowait_c
from uringws.ws.protocol import _JOIN_LIMIT, _OPEN

TWINS = ["python"] + (["compiled"] if CDispatch is not None else [])


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    kind: str = request.param
    twin_type = CDispatch if kind == "compiled" else connection_module._PyDispatch
    monkeypatch.setattr(connection_module, "_Dispatch", twin_type)
    return kind


def url(server: Server) -> str:
    return f"wss://127.0.0.1:{server.port_bound}/"


def on_ring(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        runner.run(asyncio.wait_for(coro(), 30))


messages = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100),
        st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 4095, b"w" * 4096, b"v" * 70_000]),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("kind", TWINS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(script=messages)
def test_echo_delivers_every_message_in_order(kind: str, script: list[str | bytes],
                                              tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    saved = connection_module._Dispatch
    connection_module._Dispatch = CDispatch if kind == "compiled" else connection_module._PyDispatch
    seen: list[Any] = []
    kinds: list[type] = []

    def make_handler() -> Callable[[Connection], Coroutine[Any, Any, None]]:
        async def handler(ws: Connection) -> None:
            def cb(message: str | bytes) -> None:
                seen.append(message)
                ws.send_nowait(message)

            assert ws._recv_waiter is None
            dispatch = ws.dispatch(cb)
            await dispatch
        return handler

    async def body() -> None:
        async with serve(make_handler(), "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                for m in script:  # all at once: several arrive in one read, several in one TLS record
                    await ws.send(m)
                echoed = [await ws.recv() for _ in script]
                (conn,) = server.connections
                kinds.append(type(conn._recv_waiter))
        assert echoed == script

    try:
        on_ring(body)
    finally:
        connection_module._Dispatch = saved
    assert seen == script
    assert kinds == [CDispatch if kind == "compiled" else connection_module._PyDispatch]


def test_queued_messages_first_then_close_ends_it(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    seen: list[Any] = []
    ended: list[Any] = []

    async def handler(ws: Connection) -> None:
        await asyncio.sleep(0.2)  # three messages queue up meanwhile
        assert len(ws._messages) == 3
        await ws.dispatch(seen.append)
        ended.append("returned")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                for m in (b"one", "two", b"three"):
                    await ws.send(m)
                await asyncio.sleep(0.4)
                await ws.send("four")
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.1)

    on_ring(body)
    assert seen == [b"one", "two", b"three", "four"]
    assert ended == ["returned"]  # a normal close: dispatch() returns


def test_a_failing_callback_ends_the_dispatch_and_leaves_the_rest_queued(
    twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    outcome: list[Any] = []

    async def handler(ws: Connection) -> None:
        def cb(message: Any) -> None:
            outcome.append(message)
            if message == b"bad":
                raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            await ws.dispatch(cb)
        outcome.append(await ws.recv())  # the connection goes on; the next message was kept
        with pytest.raises(ConcurrencyError):
            await asyncio.gather(ws.dispatch(outcome.append), ws.recv())
        ws.send_nowait("done")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                await ws.send(b"ok")
                await ws.send(b"bad")
                await ws.send(b"after")
                await ws.send(b"more")
                assert await asyncio.wait_for(ws.recv(), 5) == "done"

    on_ring(body)
    assert outcome[:4] == [b"ok", b"bad", b"after", b"more"]


@pytest.mark.parametrize("late", [False, True])
def test_an_error_close_raises_and_pending_failure_delivers_first(
    twin: str, late: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Good messages, then invalid UTF-8 in the same read: the good ones reach the callback, then the connection
    fails (1007) at once and dispatch() raises ConnectionClosedError; ``late``: all of it arrived before dispatch()
    was called (the good messages waited, queued, for the application)."""
    seen: list[Any] = []
    raised: list[BaseException] = []

    async def handler(ws: Connection) -> None:
        if late:
            await asyncio.sleep(0.2)
        try:
            await ws.dispatch(seen.append)
        except ConnectionClosedError as exc:
            raised.append(exc)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                await asyncio.sleep(0.1)
                assert ws.transport is not None
                mask = os.urandom(4)
                frames = b""
                for payload, opcode in ((b"good", 2), (b"fine", 1), (b"\xff\xfe", 1)):
                    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    frames += bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked
                ws.transport.write(frames)  # in one write: one read on the server
                with pytest.raises(ConnectionClosedError) as info:
                    # at once: not after the delay that waits for an application which does not read
                    await asyncio.wait_for(ws.recv(), PENDING_FAILURE_DELAY / 2)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1007

    on_ring(body)
    assert seen == [b"good", "fine"]
    assert len(raised) == 1 and raised[0].sent is not None and raised[0].sent.code == 1007  # type: ignore[attr-defined]


def test_budget_shares_are_released(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """With a memory budget, large messages hold shares until the application has them: dispatch releases each
    (the compiled delivery hands these to the Python method)."""
    sizes = [70_000, 200_000, 5, 300_000]
    seen: list[int] = []

    async def handler(ws: Connection) -> None:
        await ws.dispatch(lambda m: (seen.append(len(m)), ws.send_nowait(m)))

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], max_size=1 << 20, max_memory=4 << 20,
                         compression=None) as server:
            async with connect(url(server), ssl=tls[1], max_size=1 << 20, compression=None) as ws:
                for n in sizes:
                    await ws.send(os.urandom(n))
                for n in sizes:
                    assert len(await ws.recv()) == n
                assert server.budget is not None
                for _ in range(50):
                    if server.budget.used == 0:
                        break
                    await asyncio.sleep(0.01)
                assert server.budget.used == 0

    on_ring(body)
    assert seen == sizes


def test_send_nowait_kinds_and_errors(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    results: list[Any] = []

    async def handler(ws: Connection) -> None:
        ws.send_nowait(b"bin")
        ws.send_nowait("text")
        ws.send_nowait(bytearray(b"ba"))
        ws.send_nowait(memoryview(b"mv"))
        ws.send_nowait("as binary", text=False)
        ws.send_nowait(b"as text", text=True)
        ws.send_nowait(b"L" * 70_000)
        with pytest.raises(TypeError, match="fragments"):
            ws.send_nowait([b"a", b"b"])  # type: ignore[arg-type]
        assert ws.write_paused is False
        await ws.drain()
        await ws.close()
        with pytest.raises(ConnectionClosedOK):
            ws.send_nowait(b"late")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                async for m in ws:
                    results.append(m)

    on_ring(body)
    assert results == [b"bin", "text", b"ba", b"mv", b"as binary", "as text", b"L" * 70_000]


SIZES = [0, 1, 125, 126, 4095, 4096, 65535, 65536, 70_000, 300_000]


@pytest.mark.parametrize("kind", ["python"] + (["compiled"] if send_nowait_c is not None else []))
def test_send_nowait_twins_write_the_same(kind: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """The compiled send_nowait (``_speedups.SendNowait``) and the Python function: the same frames at every header
    size and around the join limit, the same counters."""
    counters: list[tuple[int, int]] = []
    calls: list[int] = []

    def spy(ws: Connection, message: Any, text: bool | None = None) -> None:
        calls.append(len(message))
        send_nowait_py(ws, message, text)

    async def handler(ws: Connection) -> None:
        if kind == "python":
            ws.send_nowait = types.MethodType(send_nowait_py, ws)  # type: ignore[method-assign]
        before = (ws.proto.messages_out, ws._written)  # type: ignore[union-attr]
        for n in SIZES:
            ws.send_nowait(bytes([n % 251]) * n)
        after = (ws.proto.messages_out, ws._written)  # type: ignore[union-attr]
        counters.append((after[0] - before[0], after[1] - before[1]))
        await ws.close()

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], max_size=1 << 20, compression=None) as server:
            async with connect(url(server), ssl=tls[1], max_size=1 << 20, compression=None) as ws:
                got = [m async for m in ws]
        assert got == [bytes([n % 251]) * n for n in SIZES]

    saved = Connection.send_nowait
    if kind == "compiled":  # the compiled one, calling a spy for what it does not do itself
        Connection.send_nowait = send_nowait_c(spy, _OPEN, _JOIN_LIMIT)  # type: ignore[method-assign]
    try:
        on_ring(body)
    finally:
        Connection.send_nowait = saved  # type: ignore[method-assign]
    header_bytes = sum(2 if n < 126 else 4 if n < 65536 else 10 for n in SIZES)
    assert counters == [(len(SIZES), sum(SIZES) + header_bytes)]
    assert calls == []  # the compiled one did all of it


def test_send_nowait_refuses_to_interleave_with_a_fragmented_message(
    tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    refused: list[str] = []

    async def handler(ws: Connection) -> None:
        go_on = asyncio.Event()

        async def fragments() -> Any:
            yield b"first "
            await go_on.wait()
            yield b"last"

        task = asyncio.create_task(ws.send(fragments()))
        await asyncio.sleep(0.05)  # the first fragment is out, the lock held
        try:
            ws.send_nowait(b"between")
        except ConcurrencyError as exc:
            refused.append(str(exc))
        go_on.set()
        await task
        ws.send_nowait(b"after")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                got.append(await ws.recv())
                got.append(await ws.recv())

    got: list[Any] = []
    try:
        on_ring(body)
    except (ConnectionClosedError, TimeoutError) as exc:
        got.append(type(exc).__name__)
    assert len(refused) == 1
    assert got == [b"first last", b"after"]
