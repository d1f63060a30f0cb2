"""One loop iteration: EventLoop's lean `_run_once` keeps asyncio's order, and a ping-pong costs one iteration.

The iteration's fixed cost is paid once per message in a ping-pong, which is why EventLoop replaces asyncio's
`_run_once` with a leaner copy; these tests hold the copy to asyncio's behaviour (run against asyncio's own loop
in the same test) and hold the transport to one iteration per echoed message.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

import uringws.loop
from uringws.loop import compat
from uringws.loop import events as loop_events


def _timer_script(loop: asyncio.AbstractEventLoop) -> list[tuple[str, int]]:
    """Callbacks, due timers (most of them cancelled, enough to make asyncio rebuild its heap) and callbacks
    scheduled by callbacks; returns what ran, in order, each with the number of the iteration it ran in."""
    order: list[tuple[str, int]] = []
    selects = 0  # iterations: one select (or the ring loop's inline wait) each
    real_run_once = loop._run_once  # type: ignore[attr-defined]

    def counting_run_once() -> None:
        nonlocal selects
        selects += 1
        real_run_once()

    loop._run_once = counting_run_once  # type: ignore[attr-defined]

    def rec(name: str) -> None:
        order.append((name, selects))

    def first() -> None:
        rec("soon0")
        loop.call_soon(rec, "soon-from-callback")  # must wait for the next iteration
        loop.call_later(0, rec, "later0-from-callback")

    now = loop.time()
    handles = [loop.call_at(now - 1 + i * 1e-6, rec, f"t{i:03d}") for i in range(300)]
    for i, h in enumerate(handles):
        if i % 3:
            h.cancel()  # 200 of 300 cancelled: more than half, so the heap is rebuilt, not just popped
    loop.call_soon(first)
    loop.call_soon(rec, "soon1")
    done = loop.create_future()
    loop.call_later(0.02, done.set_result, None)
    loop.run_until_complete(done)
    loop.run_until_complete(asyncio.sleep(0))
    del loop._run_once  # type: ignore[attr-defined]
    return order


def test_lean_run_once_is_in_use_on_supported_versions() -> None:
    """The override is what runs on 3.11-3.13 (otherwise the other tests here would prove nothing)."""
    loop = uringws.loop.new_event_loop()
    try:
        calls = 0
        real = loop_events.EventLoop._run_once

        def counting(self: Any) -> None:
            nonlocal calls
            calls += 1
            real(self)

        assert loop_events.EventLoop._run_once is not asyncio.BaseEventLoop._run_once  # type: ignore[attr-defined]
        loop._run_once = counting.__get__(loop)  # type: ignore[method-assign]
        loop.run_until_complete(asyncio.sleep(0))
        assert calls >= 1
    finally:
        loop.close()


def test_run_once_runs_callbacks_and_timers_in_asyncios_order(backend_loop: uringws.loop.EventLoop) -> None:
    stock = asyncio.SelectorEventLoop()
    try:
        expected = _timer_script(stock)
    finally:
        stock.close()
    got = _timer_script(backend_loop)
    assert got == expected
    # The sanity of the script itself: 100 live timers in deadline order, all in the first iteration with the
    # first callbacks; what a callback schedules runs in the next one.
    names = [n for n, _ in got]
    assert [n for n in names if n.startswith("t")] == [f"t{i:03d}" for i in range(0, 300, 3)]
    first = dict(got)
    assert first["t000"] == first["soon0"] == first["soon1"]
    assert first["soon-from-callback"] == first["soon0"] + 1
    assert not backend_loop._scheduled  # type: ignore[attr-defined]
    assert backend_loop._timer_cancelled_count == 0  # type: ignore[attr-defined]


def test_run_once_keeps_the_rest_of_the_ready_queue_after_a_base_exception(
        backend_loop: uringws.loop.EventLoop) -> None:
    order: list[str] = []

    def boom() -> None:
        raise KeyboardInterrupt

    backend_loop.call_soon(order.append, "a")
    backend_loop.call_soon(boom)
    backend_loop.call_soon(order.append, "b")
    with pytest.raises(KeyboardInterrupt):
        backend_loop.run_forever()
    assert order == ["a"]
    backend_loop.call_soon(backend_loop.stop)
    backend_loop.run_forever()
    assert order == ["a", "b"]  # "b" stayed queued and ran, once


def _handle_state(handle: asyncio.Handle) -> dict[str, Any]:
    return {name: getattr(handle, name) for name in compat.HANDLE_SLOTS if name != "_loop"}


def test_call_soon_builds_the_handle_asyncio_builds(backend_loop: uringws.loop.EventLoop) -> None:
    """The lean call_soon() sets every slot of Handle, to what Handle.__init__() sets (context given or not)."""
    assert set(compat.HANDLE_SLOTS) == set(asyncio.Handle.__slots__) - {"__weakref__"}
    ctx = contextvars.copy_context()
    for kwargs in ({}, {"context": ctx}):
        stock = asyncio.SelectorEventLoop()
        try:
            expected = stock.call_soon(print, 1, 2, **kwargs)
        finally:
            stock.close()
        got = backend_loop.call_soon(print, 1, 2, **kwargs)
        assert type(got) is asyncio.Handle
        assert got._loop is backend_loop  # type: ignore[attr-defined]
        want, have = _handle_state(expected), _handle_state(got)
        if not kwargs:  # a fresh copy of the current context each
            assert isinstance(have.pop("_context"), contextvars.Context)
            want.pop("_context")
        assert have == want
        assert list(backend_loop._ready)[-1] is got  # type: ignore[attr-defined]
        got.cancel()
    backend_loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        backend_loop.call_soon(print)


def test_a_failing_callback_is_reported_as_asyncio_reports_it(backend_loop: uringws.loop.EventLoop) -> None:
    def boom(arg: int) -> None:
        raise ValueError(arg)

    reports: list[tuple[dict[str, Any], asyncio.Handle]] = []
    for loop in (asyncio.SelectorEventLoop(), backend_loop):
        try:
            loop.set_exception_handler(lambda _loop, context: reports.append(context))
            loop.call_soon(boom, 7)
            loop.call_later(0, boom, 8)
            loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            if loop is not backend_loop:
                loop.close()
    assert len(reports) == 4
    stock, ours = reports[:2], reports[2:]
    for a, b in zip(stock, ours, strict=True):
        assert a.keys() == b.keys() == {"message", "exception", "handle"}
        assert a["message"] == b["message"]
        assert type(a["handle"]) is type(b["handle"])
        assert repr(a["exception"]) == repr(b["exception"])
    assert ours[0]["message"].startswith("Exception in callback test_a_failing_callback_is_reported")


def test_debug_mode_uses_asyncios_iteration(ring_loop: uringws.loop.EventLoop,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Debug mode keeps asyncio's slow-callback warning (the lean copy leaves it out)."""
    import time

    ring_loop.set_debug(True)
    ring_loop.slow_callback_duration = 0.001
    ring_loop.call_soon(time.sleep, 0.01)
    with caplog.at_level("WARNING", logger="asyncio"):
        ring_loop.run_until_complete(asyncio.sleep(0.001))
    assert any("Executing" in r.getMessage() for r in caplog.records)


def test_reader_runs_in_the_iteration_after_its_fd_became_readable(backend_loop: uringws.loop.EventLoop) -> None:
    """A poll armed in an earlier iteration that fires during a later wait (the ring loop takes that readiness
    inline, without select()) calls its reader in that same iteration, as epoll and asyncio's selector do."""
    loop = backend_loop
    iteration = 0
    real_run_once = loop._run_once  # type: ignore[attr-defined]

    def counting_run_once() -> None:
        nonlocal iteration
        iteration += 1
        real_run_once()

    a, b = socket.socketpair()
    got: list[int] = []
    wrote: list[int] = []

    async def main() -> None:
        done = loop.create_future()

        def readable() -> None:
            got.append(iteration)
            a.recv(100)
            loop.remove_reader(a.fileno())
            done.set_result(None)

        loop.add_reader(a.fileno(), readable)
        for _ in range(3):
            await asyncio.sleep(0)  # the poll is armed, nothing to read yet

        def write() -> None:
            wrote.append(iteration)
            b.send(b"x")

        loop.call_later(0.01, write)
        await asyncio.wait_for(done, 5)

    loop._run_once = counting_run_once  # type: ignore[attr-defined]
    try:
        loop.run_until_complete(main())
    finally:
        del loop._run_once  # type: ignore[attr-defined]
        a.close()
        b.close()
    assert got[0] - wrote[0] == 1, (wrote, got)


def test_get_debug_follows_set_debug(ring_loop: uringws.loop.EventLoop) -> None:
    """Outside debug mode get_debug() is a C callable (every Future's constructor calls it); it must still answer
    what set_debug() said, and debug mode must still give futures their creation traceback."""
    assert ring_loop.get_debug() is False
    ring_loop.set_debug(True)
    assert ring_loop.get_debug() is True
    assert ring_loop.create_future()._source_traceback  # type: ignore[attr-defined]
    ring_loop.set_debug(False)
    assert ring_loop.get_debug() is False
    assert not ring_loop.create_future()._source_traceback  # type: ignore[attr-defined]


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def _ping_pong(sock: socket.socket, count: int, errors: list[BaseException]) -> None:
    try:
        sock.settimeout(10)
        for i in range(count):
            msg = bytes([i % 256]) * 64
            sock.sendall(msg)
            got = b""
            while len(got) < len(msg):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("echo closed early")
                got += chunk
            if got != msg:
                raise AssertionError(f"message {i}: echoed {got!r}")
    except BaseException as exc:  # noqa: BLE001 -- reported to the test thread
        errors.append(exc)
    finally:
        sock.close()


@pytest.mark.parametrize("read_mode", ["ring", "poll"])
def test_ping_pong_costs_one_iteration_per_message(read_mode: str) -> None:
    """Receive, echo and send of one message fit in one iteration: no extra wake-up for the send's completion,
    no call_soon hop. (Every extra iteration is a whole _run_once + io_uring_enter per message.)"""
    try:
        loop = uringws.loop.EventLoop(read_mode=read_mode)
    except OSError as exc:
        pytest.skip(f"read_mode={read_mode!r} unavailable: {exc}")
    iterations = 0
    real: Callable[[], None] = loop._run_once  # type: ignore[attr-defined]

    def counting() -> None:
        nonlocal iterations
        iterations += 1
        real()

    count = 300
    errors: list[BaseException] = []
    a, b = socket.socketpair()
    try:
        loop.run_until_complete(loop.connect_accepted_socket(_Echo, a))
        loop.run_until_complete(asyncio.sleep(0.01))
        loop._run_once = counting  # type: ignore[method-assign]
        client = threading.Thread(target=_ping_pong, args=(b, count, errors))
        client.start()

        async def until_done() -> None:
            while client.is_alive():
                await asyncio.sleep(0.05)

        loop.run_until_complete(until_done())
        client.join(10)
    finally:
        loop.close()
    assert not errors, errors
    # One per message, plus the few of the polling coroutine (a 0.05 s timer) and start/stop.
    assert iterations <= count + 40, f"{iterations} iterations for {count} messages"
    assert iterations >= count  # each message needs its own wake-up: the test measures what it claims
