"""``EventLoop._run_once`` in C (``_ringc.RunOnce``, the loop instance's ``_run_once`` when compiled) against the
Python method: one script of callbacks, timers (due, future, cancelled, a heap mostly cancelled), before-wait hooks
(that add hooks and schedule callbacks), failing callbacks and stop(), run on a loop with each, must leave the same
trace, iteration by iteration."""

from __future__ import annotations

import asyncio
import collections
import contextvars
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.loop import compat
from uringws.loop.events import EventLoop, _IterationFields
from uringws.ring import fast

needs_c = pytest.mark.skipif(fast.RunOnce is None or not compat.LEAN_RUN_ONCE, reason="compiled _run_once not in use")

var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=-1)


class FakeClock(EventLoop):
    """A loop whose clock the script moves (a time() of its own: the twins read it instead of time.monotonic)."""

    now = 1000.0

    def time(self) -> float:
        return self.now


Op = tuple[str, int]


def run_script(script: list[Op], compiled: bool) -> list[Any]:
    loop = FakeClock()
    trace: list[Any] = []
    handles: list[asyncio.TimerHandle] = []
    try:
        assert (type(loop.__dict__.get("_run_once")) is fast.RunOnce) is True
        if not compiled:
            del loop._run_once  # the class's method: the Python twin
        loop.set_exception_handler(lambda _, ctx: trace.append(("failed", str(ctx["exception"]), ctx["message"][:21])))
        selector = loop._hook_selector
        assert selector is not None

        def cb(tag: int) -> None:
            trace.append(("cb", tag, var.get(), loop.in_before_wait))

        def boom(tag: int) -> None:
            raise ValueError(f"boom {tag}")

        def hook(tag: int, depth: int) -> None:
            trace.append(("hook", tag, depth, loop.in_before_wait))
            if depth:
                selector.before_wait.append(lambda: hook(tag, depth - 1))  # a hook that adds a hook
            loop.call_soon(cb, 1000 + tag)

        for i, (op, n) in enumerate(script):
            if op == "soon":
                ctx = contextvars.copy_context()
                ctx.run(var.set, i)
                loop.call_soon(cb, i, context=ctx)
            elif op == "later":
                handles.append(loop.call_later(n / 10, cb, i))
            elif op == "cancel" and handles:
                handles[n % len(handles)].cancel()
            elif op == "soon-cancelled":
                loop.call_soon(cb, i).cancel()
            elif op == "boom":
                loop.call_soon(boom, i)
            elif op == "hook":
                selector.before_wait.append(lambda i=i, n=n: hook(i, n % 3))
            elif op == "many":  # a large heap, mostly cancelled: asyncio rebuilds it (the C twin hands over)
                many = [loop.call_later(100 + k, cb, -k) for k in range(150)]
                for h in many[:120]:
                    h.cancel()
            elif op == "tick":
                loop.now += n / 10
            elif op == "stop":
                loop.call_soon(loop.stop)
            elif op == "run":
                loop.call_soon(loop.stop)
                loop.run_forever()
                trace.append(("iteration", len(loop._scheduled), len(loop._ready), loop._timer_cancelled_count))
        loop.call_soon(loop.stop)
        loop.run_forever()
        trace.append(("end", len(loop._scheduled), len(loop._ready), loop._timer_cancelled_count))
    finally:
        loop.close()
    return trace


ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["soon", "soon-cancelled", "boom", "stop", "run", "run"]), st.just(0)),
        st.tuples(st.sampled_from(["later", "cancel", "hook", "tick"]), st.integers(0, 30)),
        st.tuples(st.just("many"), st.just(0)),
    ),
    max_size=30,
)


@needs_c
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
def test_same_trace_as_the_python_method(script: list[Op]) -> None:
    assert run_script(script, True) == run_script(script, False)


@needs_c
def test_an_example_of_every_kind_of_step() -> None:
    script: list[Op] = [("soon", 0), ("later", 0), ("later", 5), ("cancel", 1), ("boom", 0), ("hook", 2), ("run", 0),
                        ("tick", 10), ("many", 0), ("run", 0), ("tick", 9999), ("run", 0), ("soon-cancelled", 0),
                        # due together, the second cancelled: it reaches the ready queue (not the heap's head), and
                        # is skipped there
                        ("later", 1), ("later", 2), ("cancel", 3), ("tick", 3), ("run", 0)]
    compiled = run_script(script, True)
    assert compiled == run_script(script, False)
    kinds = {entry[0] for entry in compiled}
    assert kinds == {"cb", "failed", "hook", "iteration", "end"}
    assert ("cb", 12, -1, False) not in compiled and ("cb", 14, -1, False) not in compiled  # cancelled
    assert ("cb", 13, -1, False) in compiled
    assert ("hook", 5, 2, True) in compiled and ("hook", 5, 0, True) in compiled  # hooks that add hooks, all run
    assert ("cb", 0, 0, False) in compiled  # in its context, outside the hooks


@needs_c
def test_debug_mode_and_keyboard_interrupt(caplog: pytest.LogCaptureFixture) -> None:
    """In debug mode the C twin hands the iteration to asyncio's own (slow-callback warnings); a KeyboardInterrupt
    from a callback leaves the callbacks behind it queued, as the Python method does."""
    loop = EventLoop()
    try:
        assert type(loop.__dict__["_run_once"]) is fast.RunOnce
        loop.set_debug(True)
        loop.slow_callback_duration = 0.0
        seen: list[str] = []

        def slow() -> None:
            seen.append("slow")

        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        with caplog.at_level("WARNING", logger="asyncio"):
            loop.run_forever()
        assert seen == ["slow"]
        assert any("Executing" in r.getMessage() and "slow" in r.getMessage() for r in caplog.records)
        loop.set_debug(False)

        def interrupt() -> None:
            raise KeyboardInterrupt

        loop.call_soon(interrupt)
        loop.call_soon(seen.append, "after")
        with pytest.raises(KeyboardInterrupt):
            loop.run_forever()
        assert seen == ["slow"] and len(loop._ready) == 1
    finally:
        loop.close()
    assert "_run_once" not in loop.__dict__  # no cycle left behind


class PropertyFields(FakeClock):
    """A loop whose ``_stopping`` and ``_ready`` are properties of a subclass, not EventLoop's slots: the C twins
    (which read the slots in place) must see that and read them through the properties."""

    reads = 0

    @property
    def _stopping(self) -> bool:
        type(self).reads += 1
        return bool(self.__dict__.get("stop_flag", False))

    @_stopping.setter
    def _stopping(self, value: bool) -> None:
        self.__dict__["stop_flag"] = value

    @property
    def _ready(self) -> Any:
        type(self).reads += 1
        return self.__dict__["ready_queue"]

    @_ready.setter
    def _ready(self, value: Any) -> None:
        self.__dict__["ready_queue"] = value


@needs_c
@pytest.mark.parametrize("compiled", [True, False])
def test_fields_a_subclass_turned_into_properties_are_read_through_them(compiled: bool) -> None:
    from types import MemberDescriptorType

    # The fast path's precondition: the loop's and the selector's fields that the iteration reads are slots.
    for name in ("_ready", "_scheduled", "_stopping", "_debug", "in_before_wait", "_hook_selector"):
        assert type(getattr(EventLoop, name)) is MemberDescriptorType, name
    warm = EventLoop()  # the twins meet EventLoop's slots first (they remember the last type seen)
    try:
        warm.call_soon(warm.stop)
        warm.run_forever()
    finally:
        warm.close()
    PropertyFields.reads = 0
    loop = PropertyFields()
    # Decoys in the EventLoop slots the properties hide: reading a slot where the property is meant shows.
    vars(_IterationFields)["_ready"].__set__(loop, collections.deque())
    vars(_IterationFields)["_stopping"].__set__(loop, False)
    seen: list[int] = []
    try:
        if compiled:
            assert type(loop.__dict__["_run_once"]) is fast.RunOnce
            assert type(loop.__dict__["call_soon"]) is fast.CallSoon
        else:
            del loop._run_once
            del loop.call_soon
        reads = PropertyFields.reads
        for i in range(5):
            loop.call_soon(seen.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()  # returns only if the iteration saw _stopping through the property
        assert seen == [0, 1, 2, 3, 4]
        assert PropertyFields.reads > reads + 6  # call_soon's _ready, the iteration's _ready and _stopping
        assert len(loop.__dict__["ready_queue"]) == 0
    finally:
        loop.close()
