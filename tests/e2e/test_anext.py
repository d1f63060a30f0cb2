"""``async for message in ws`` end to end over TLS on uringws's ring loop, with the compiled ``__anext__``
(``_speedups.Anext``, whose awaitable runs the coroutine's common cases without a coroutine) and its pure twin
(``connection.anext_py``) alike: every message in order and the loop's end at a close; a wait cancelled, closed,
thrown into or dropped (the connection's ``_recv_waiter`` cleared each time, nothing lost); the memory budget's
shares released; fragments queued for a cancelled ``recv_streaming()``; the awaitable as a coroutine."""

from __future__ import annotations

import asyncio
import gc
import os
import ssl
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.client import connect
from uringws.server import Server, serve
from uringws.ws.connection import PENDING_FAILURE_DELAY, Connection, anext_py
from uringws.ws.exceptions import ConcurrencyError, ConnectionClosedError
from uringws.ws.frames import Anext as CAnext

from .test_dispatch import on_ring
from .test_ws_api import url as wss_url

TWINS = ["python"] + (["compiled"] if CAnext is not None else [])
#: what Connection.__anext__ is at import: the C one when it was built
COMPILED_ANEXT = Connection.__dict__["__anext__"]


def use(kind: str) -> None:
    """Make the twin of this kind Connection.__anext__ (tests restore it with restore())."""
    Connection.__anext__ = COMPILED_ANEXT if kind == "compiled" else anext_py  # type: ignore[method-assign]


def restore() -> None:
    Connection.__anext__ = COMPILED_ANEXT  # type: ignore[method-assign]


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> Any:
    kind: str = request.param
    use(kind)
    yield kind
    restore()


def url(server: Server) -> str:
    return wss_url(server, scheme="wss")


def test_the_compiled_one_is_in_use() -> None:
    if CAnext is None:
        pytest.skip("the C extension is not built (or URINGWS_PURE=1)")
    assert type(COMPILED_ANEXT) is CAnext
    assert Connection.__anext__ is COMPILED_ANEXT


messages = st.lists(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100),
        st.sampled_from([b"x" * 125, b"y" * 126, b"z" * 4095, b"w" * 70_000]),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("kind", TWINS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(script=messages, pause=st.booleans())
def test_echo_delivers_every_message_in_order(kind: str, script: list[str | bytes], pause: bool,
                                              tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """``pause``: the handler starts late, so that messages are queued (the awaitable's first step returns one)
    rather than waited for (its wait on the Future, then the message)."""
    seen: list[Any] = []
    waiters: list[type] = []
    ended: list[str] = []

    async def handler(ws: Connection) -> None:
        if pause:
            await asyncio.sleep(0.05)
        async for message in ws:
            seen.append(message)
            await ws.send(message)
        ended.append("normal close")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                for m in script:
                    await ws.send(m)
                echoed = [await ws.recv() for _ in script]
                (conn,) = server.connections
                await asyncio.sleep(0.01)
                waiters.append(type(conn._recv_waiter))  # the handler waits for the next message
            await asyncio.sleep(0.05)
        assert echoed == script

    use(kind)
    try:
        on_ring(body)
    finally:
        restore()
    assert seen == script
    assert waiters == [asyncio.Future]
    assert ended == ["normal close"]


@pytest.mark.parametrize("late", [False, True])
def test_an_error_close_raises(twin: str, late: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Invalid UTF-8 after a good message, in one read: ``async for`` yields the good one, then raises
    ConnectionClosedError (1007) at once, not after PENDING_FAILURE_DELAY; ``late``: all of it arrived before the
    handler read (the good message waited in the queue, the failure pending behind it)."""
    seen: list[Any] = []
    raised: list[BaseException] = []

    async def handler(ws: Connection) -> None:
        if late:
            await asyncio.sleep(0.2)
        try:
            async for message in ws:
                seen.append(message)
        except ConnectionClosedError as exc:
            raised.append(exc)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                await asyncio.sleep(0.1)
                assert ws.transport is not None
                mask = os.urandom(4)
                frames = b""
                for payload, opcode in ((b"good", 2), (b"\xff\xfe", 1)):
                    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                    frames += bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked
                ws.transport.write(frames)
                with pytest.raises(ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), PENDING_FAILURE_DELAY / 2)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1007
            await asyncio.sleep(0.05)
            assert server is not None

    on_ring(body)
    assert seen == [b"good"]
    assert len(raised) == 1 and raised[0].sent is not None and raised[0].sent.code == 1007  # type: ignore[attr-defined]


def test_leaving_a_wait_clears_the_waiter_and_loses_nothing(
    twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Each way out of a wait for the next message (the task cancelled; close(); throw(); the awaitable dropped)
    leaves ``_recv_waiter`` None, as the coroutine's ``finally`` does; the messages sent afterwards all arrive."""
    log: list[Any] = []
    go = asyncio.Event()

    async def handler(ws: Connection) -> None:
        # cancelled in its task
        task = asyncio.ensure_future(ws.__anext__())
        await asyncio.sleep(0.02)
        assert isinstance(ws._recv_waiter, asyncio.Future)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        log.append(("cancelled", ws._recv_waiter))
        # closed, thrown into, dropped: driven by hand, as a task would
        aw = ws.__anext__()
        fut = aw.send(None)
        assert fut is ws._recv_waiter and fut._asyncio_future_blocking
        aw.close()
        log.append(("closed", ws._recv_waiter))
        with pytest.raises(RuntimeError):
            aw.send(None)  # finished: cannot be resumed
        aw = ws.__anext__()
        aw.send(None)
        with pytest.raises(KeyError):
            aw.throw(KeyError("thrown"))
        log.append(("thrown", ws._recv_waiter))
        aw = ws.__anext__()
        aw.send(None)
        del aw
        gc.collect()
        log.append(("dropped", ws._recv_waiter))
        # a concurrent reader is refused while one waits
        aw = ws.__anext__()
        aw.send(None)
        with pytest.raises(ConcurrencyError):
            await ws.recv()
        aw.close()
        go.set()
        async for message in ws:
            log.append(message)
            if message == "last":
                break
        await ws.send("done")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                await asyncio.wait_for(go.wait(), 5)
                for m in (b"one", "two", "last"):
                    await ws.send(m)
                assert await asyncio.wait_for(ws.recv(), 5) == "done"
            assert server is not None

    on_ring(body)
    assert log == [("cancelled", None), ("closed", None), ("thrown", None), ("dropped", None), b"one", "two", "last"]


def test_budget_shares_are_released(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """With a memory budget, large messages hold shares until the application has them: ``async for`` releases
    each, whether it took the message from the queue or after a wait."""
    sizes = [70_000, 200_000, 5, 300_000]
    seen: list[int] = []

    async def handler(ws: Connection) -> None:
        await asyncio.sleep(0.1)  # the first ones queue up
        async for message in ws:
            seen.append(len(message))
            await ws.send(message)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], max_size=1 << 20, max_memory=4 << 20,
                         compression=None) as server:
            async with connect(url(server), ssl=tls[1], max_size=1 << 20, compression=None) as ws:
                for n in sizes[:2]:
                    await ws.send(os.urandom(n))
                await asyncio.sleep(0.2)
                for n in sizes[2:]:
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


def test_fragments_of_a_cancelled_recv_streaming_are_assembled(
    twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """A recv_streaming() that waited while the first fragments of a message arrived, then was cancelled before it
    took them: ``async for`` finds Fragments queued and gets the whole message (through recv())."""
    got: list[Any] = []

    async def handler(ws: Connection) -> None:
        stream = ws.recv_streaming()
        step = stream.__anext__()
        step.send(None)  # waiting, with the parser handing out fragments
        while not ws._messages:
            await asyncio.sleep(0.01)
        with pytest.raises(asyncio.CancelledError):
            step.throw(asyncio.CancelledError())
        await stream.aclose()
        async for message in ws:
            got.append(message)
            break
        await ws.send("done")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                await asyncio.sleep(0.1)
                await ws.send([b"ab", b"cd", b"ef"])
                assert await asyncio.wait_for(ws.recv(), 5) == "done"
            assert server is not None

    on_ring(body)
    assert got == [b"abcdef"]


def test_the_awaitable_is_a_coroutine(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """What ``__anext__()`` returns passes asyncio.iscoroutine(), so create_task() takes it; anext() works."""
    got: list[Any] = []

    async def handler(ws: Connection) -> None:
        aw = ws.__anext__()
        assert asyncio.iscoroutine(aw)
        got.append(await asyncio.create_task(aw))
        got.append(await anext(ws))
        await ws.send("done")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                await ws.send("a")
                await ws.send(b"b")
                assert await asyncio.wait_for(ws.recv(), 5) == "done"
            assert server is not None

    on_ring(body)
    assert got == ["a", b"b"]


def test_throw_checks_its_arguments() -> None:
    if CAnext is None:
        pytest.skip("the C extension is not built (or URINGWS_PURE=1)")
    aw = COMPILED_ANEXT(object())  # never started: nothing is read from the connection
    with pytest.raises(TypeError):
        aw.throw()
    with pytest.raises(TypeError):
        aw.throw(42)
    with pytest.raises(TypeError):
        aw.throw(ValueError("x"), "value")
    with pytest.raises(ValueError, match="made"):
        aw.throw(ValueError, "made")
    with pytest.raises(RuntimeError):
        aw.send(None)  # thrown into before it started: finished, as a coroutine is


def test_nothing_is_kept_after_the_connection(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """500 messages through ``async for`` and ``send()``: afterwards no awaitable is alive and the connection is
    freed (an awaitable that kept a reference too many would keep it, its parser and its buffers)."""
    refs: list[weakref.ref[Connection]] = []

    async def handler(ws: Connection) -> None:
        refs.append(weakref.ref(ws))
        async for message in ws:
            await ws.send(message)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                for i in range(500):
                    await ws.send(str(i))
                    assert await ws.recv() == str(i)

    on_ring(body)
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None
    assert not [o for o in gc.get_objects() if type(o).__name__ == "StepAwait"]
