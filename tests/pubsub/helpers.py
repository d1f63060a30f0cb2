"""Shared by the pub/sub tests: run a coroutine on uringws's loop, with a bound."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uringws

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    with asyncio.Runner(loop_factory=uringws.new_event_loop) as runner:
        return runner.run(bounded())


async def until(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    """Poll ``predicate()`` every 10 ms until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def run_in_thread(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    """Like ``run``, on a daemon thread joined with ``timeout``: bounds code that may swallow the cancellation
    ``run``'s timeout relies on (a hang then fails the test instead of blocking the run)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(run(coro, timeout))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="bounded-test-loop", daemon=True)
    thread.start()
    thread.join(timeout + 5)
    if thread.is_alive():
        raise AssertionError(f"still running {timeout + 5:.0f} s later: it ignored its cancellation (a hang)")
    if error:
        raise error[0]
    return result[0]
