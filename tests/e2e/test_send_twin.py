"""``await ws.send(message)`` end to end over TLS on uringws's ring loop, with the compiled ``send``
(``_speedups.Send``, whose awaitable runs the coroutine's fast path without a coroutine) and its pure twin
(``connection.send_py``) alike: messages in order; nothing sent before the await (an awaitable made in another
thread sends on the loop's); the wait while writing is paused; a fragmented message in progress waited for; the
errors of a closed connection raised at the await; the warning of a send never awaited."""

from __future__ import annotations

import asyncio
import gc
import ssl
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.client import connect
from uringws.server import Server, serve
from uringws.ws.connection import Connection, send_py
from uringws.ws.exceptions import ConnectionClosedOK
from uringws.ws.frames import Send as CSend

from .test_dispatch import on_ring
from .test_ws_api import url as wss_url

TWINS = ["python"] + (["compiled"] if CSend is not None else [])
#: what Connection.send is at import: the C one when it was built
COMPILED_SEND = Connection.__dict__["send"]


def use(kind: str) -> None:
    Connection.send = COMPILED_SEND if kind == "compiled" else send_py  # type: ignore[method-assign]


def restore() -> None:
    Connection.send = COMPILED_SEND  # type: ignore[method-assign]


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> Any:
    kind: str = request.param
    use(kind)
    yield kind
    restore()


def url(server: Server) -> str:
    return wss_url(server, scheme="wss")


def test_the_compiled_one_is_in_use() -> None:
    if CSend is None:
        pytest.skip("the C extension is not built (or URINGWS_PURE=1)")
    assert type(COMPILED_SEND) is CSend
    assert Connection.send is COMPILED_SEND


@pytest.mark.parametrize("kind", TWINS)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(script=st.lists(st.one_of(st.binary(max_size=300), st.text(max_size=100),
                                 st.sampled_from([b"w" * 70_000, "t" * 70_000])), min_size=1, max_size=20))
def test_messages_in_order(kind: str, script: list[str | bytes], tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def handler(ws: Connection) -> None:
        for m in script:
            await ws.send(m)
        await ws.send(m, None)  # text=None, positional and by keyword: the common case too
        await ws.send(m, text=None)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], compression=None) as server:
            async with connect(url(server), ssl=tls[1], compression=None) as ws:
                got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(len(script) + 2)]
        assert got == [*script, script[-1], script[-1]]

    use(kind)
    try:
        on_ring(body)
    finally:
        restore()


def test_nothing_is_sent_before_the_await(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """send() only makes the awaitable: made first and awaited last, its message goes last; made in another thread
    (as uringws.sync does), nothing happens there, and the loop sends it when it awaits it."""
    counts: list[int] = []

    async def handler(ws: Connection) -> None:
        assert ws.proto is not None
        first = ws.send("made first")
        made: list[Any] = []
        thread = threading.Thread(target=lambda: made.append(ws.send(b"made in a thread")))
        thread.start()
        thread.join()
        counts.append(ws.proto.messages_out)
        await ws.send("sent first")
        await first
        await made[0]
        counts.append(ws.proto.messages_out)

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(3)]
        assert got == ["sent first", "made first", b"made in a thread"]

    on_ring(body)
    assert counts[1] - counts[0] == 3


def test_waits_while_writing_is_paused(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """A message larger than the socket buffers, to a client that does not read: the send waits (in _drain()) and
    ends once the client reads."""
    big = b"x" * (12 << 20)
    states: list[Any] = []
    reading = asyncio.Event()

    async def handler(ws: Connection) -> None:
        sending = asyncio.ensure_future(ws.send(big))
        await asyncio.sleep(0.3)
        states.append((sending.done(), ws.write_paused))
        reading.set()
        await asyncio.wait_for(sending, 10)
        states.append(sending.done())

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0], max_size=16 << 20, compression=None) as server:
            async with connect(url(server), ssl=tls[1], max_size=16 << 20, compression=None) as ws:
                assert ws.transport is not None
                ws.transport.pause_reading()  # loopback's socket buffers take a few MiB; the rest must wait
                await asyncio.wait_for(reading.wait(), 5)
                ws.transport.resume_reading()
                assert await asyncio.wait_for(ws.recv(), 10) == big
            await asyncio.sleep(0.05)
            assert server is not None

    on_ring(body)
    assert states == [(False, True), True]


def test_a_fragmented_message_in_progress_is_waited_for(
    twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """While an async iterable's fragments are being sent, a whole message waits for its end (not interleaved)."""

    async def fragments() -> AsyncIterator[str]:
        for part in ("frag", "men", "ted"):
            yield part
            await asyncio.sleep(0.05)

    async def handler(ws: Connection) -> None:
        streaming = asyncio.ensure_future(ws.send(fragments()))
        await asyncio.sleep(0.01)  # its first fragment is out: the send lock is held
        await ws.send("after")
        await streaming

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
        assert got == ["fragmented", "after"]

    on_ring(body)


def test_errors_are_raised_at_the_await(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """On a closed connection the call itself does not raise; the await raises ConnectionClosedOK. Messages that are
    not the common case (text=, fragments, a bad type) take the Python coroutine, with its errors."""
    outcome: list[Any] = []

    async def handler(ws: Connection) -> None:
        await ws.send(b"bin", text=True)
        await ws.send(["a", "b"])
        with pytest.raises(TypeError):
            await ws.send(42)  # type: ignore[arg-type]
        await ws.wait_closed()
        pending = ws.send("late")
        outcome.append("made")
        try:
            await pending
        except ConnectionClosedOK:
            outcome.append("raised at the await")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == "bin"
                assert await asyncio.wait_for(ws.recv(), 5) == "ab"
            await asyncio.sleep(0.1)
            assert server is not None

    on_ring(body)
    assert outcome == ["made", "raised at the await"]


def test_a_send_never_awaited_warns(twin: str, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    async def handler(ws: Connection) -> None:
        with pytest.warns(RuntimeWarning, match="never awaited"):
            ws.send("forgotten")
            gc.collect()
        await ws.send("awaited")

    async def body() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=tls[0]) as server:
            async with connect(url(server), ssl=tls[1]) as ws:
                assert await asyncio.wait_for(ws.recv(), 5) == "awaited"
            assert server is not None

    on_ring(body)
