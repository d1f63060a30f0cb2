"""Shared by the pub/sub tests: run a coroutine on uringws's loop, with a bound."""

from __future__ import annotations

import asyncio
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
