"""``EventLoop.call_soon`` in C (``_ringc.CallSoon``, the loop instance's ``call_soon`` when compiled) against the
Python method: the same Handle, the same order, the same errors, and asyncio's own path in debug mode."""

from __future__ import annotations

import asyncio
import contextvars
from asyncio.events import Handle
from typing import Any

import pytest

from uringws.loop import compat
from uringws.loop.events import EventLoop
from uringws.ring import fast

needs_c = pytest.mark.skipif(fast.CallSoon is None or not compat.LEAN_RUN_ONCE, reason="compiled call_soon not in use")

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def fields(h: Handle) -> dict[str, Any]:
    return {name: getattr(h, name) for name in compat.HANDLE_SLOTS if name != "_context"}


@needs_c
def test_the_loop_uses_the_c_call_soon_and_it_makes_the_same_handle() -> None:
    loop = EventLoop()
    try:
        assert type(loop.call_soon) is fast.CallSoon

        def cb(*args: Any) -> None:
            pass

        var.set("here")
        c = loop.call_soon(cb, 1, "two")
        py = EventLoop.call_soon(loop, cb, 1, "two")
        assert type(c) is type(py) is Handle
        assert fields(c) == fields(py)
        assert c._context.run(var.get) == py._context.run(var.get) == "here"  # type: ignore[attr-defined]
        ctx = contextvars.Context()
        assert loop.call_soon(cb, context=ctx)._context is ctx  # type: ignore[attr-defined]
        assert list(loop._ready)[:2] == [c, py]  # type: ignore[attr-defined]
        with pytest.raises(TypeError):
            loop.call_soon(cb, bogus=1)  # what the Python method says about a keyword it does not take
    finally:
        loop.close()
    assert "call_soon" not in loop.__dict__  # no cycle left behind
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)


@needs_c
def test_callbacks_run_in_order_and_debug_mode_takes_asyncios_path() -> None:
    loop = EventLoop()
    try:
        seen: list[int] = []

        async def main() -> None:
            for i in range(5):
                asyncio.get_running_loop().call_soon(seen.append, i)
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, None)  # a Future's own callbacks too
            await fut

        loop.run_until_complete(main())
        assert seen == [0, 1, 2, 3, 4]
        loop.set_debug(True)
        h = loop.call_soon(seen.append, 9)
        assert h._source_traceback  # type: ignore[attr-defined]  # Handle.__init__ in debug mode
    finally:
        loop.close()


def test_a_subclass_with_its_own_call_soon_keeps_it() -> None:
    class Mine(EventLoop):
        def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Handle:
            return super().call_soon(callback, *args, context=context)

    loop = Mine()
    try:
        assert "call_soon" not in loop.__dict__
        assert loop.call_soon.__func__ is Mine.call_soon  # type: ignore[attr-defined]
    finally:
        loop.close()
