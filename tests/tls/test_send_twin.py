"""``TLSProtocol.write_if_open``: the compiled ``Send`` object against the Python methods it stands for.

The WebSocket layer sends each message through ``write_if_open``; on a loop with before-wait hooks small writes
are coalesced and encrypted by the hook right before the loop waits. Here the "loop" is this test: it runs the
hooks when the script says so, moves bytes to the client and pauses the server's "TCP transport" at random. The
compiled object and the Python methods, given the same script, must hand down the same plaintext in the same
order, in the same number of transport writes, with the same backpressure on the application.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from uringws.tls import engine as engine_mod
from uringws.tls.protocol import TLSProtocol

from .test_inmemory import _CA, _CERT, MemTransport, Sink, deliver

pytestmark = pytest.mark.skipif(engine_mod.send_type is None, reason="compiled TLS engine not in use")


def run_hooks(selector: Any) -> None:
    """What the ring loop does before it waits: run the before-wait hooks, and the hooks they add."""
    hooks = selector.before_wait
    while hooks:
        selector.before_wait = []
        for hook in hooks:
            hook()
        hooks = selector.before_wait


class Pair:
    """A client and a server TLSProtocol over in-memory transports, handshaken; the "loop" is the test."""

    def __init__(self, high: int = 1 << 30) -> None:
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _CERT.configure_cert(sctx)
        cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _CA.configure_trust(cctx)
        self.loop = loop = asyncio.new_event_loop()  # only for timers; never run
        # What TLSProtocol looks for on a loop (uringws's RingSelector has it): a list of before-wait hooks.
        self.selector = selector = loop._selector  # type: ignore[attr-defined]
        selector.before_wait = []
        self.capp, self.sapp = capp, sapp = Sink(), Sink()
        self.client = client = TLSProtocol(loop, capp, cctx, None, False, "localhost")
        self.server = server = TLSProtocol(loop, sapp, sctx, None, True)
        self.ct, self.st = ct, st_ = MemTransport(), MemTransport(high)
        st_.protocol = server
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        for _ in range(1000):
            if capp.transport is not None and sapp.transport is not None and not ct.buf and not st_.buf:
                break
            deliver(ct, server, 1 << 20)
            deliver(st_, client, 1 << 20)
            run_hooks(selector)
        assert sapp.transport is not None

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.close()

    def received(self) -> bytes:
        """What the client has read once the hooks ran and the server's bytes were delivered."""
        run_hooks(self.selector)
        deliver(self.st, self.client, 1 << 20)
        return bytes(self.capp.data)


def run_script(
    script: list[tuple[str, int]],
    compiled: bool,
    high: int,
    app_high: int,
    split_pairs: bool = False,
    calls: list[str] | None = None,
) -> tuple[bytes, int, list[tuple[bool, int]]]:
    p = Pair(high)
    loop, selector, capp, sapp, client, server, st_ = p.loop, p.selector, p.capp, p.sapp, p.client, p.server, p.st
    try:
        assert sapp.transport is not None
        sapp.transport.set_write_buffer_limits(high=app_high)  # the TLS layer's own high-water mark
        write = server.write_if_open
        assert type(write) is engine_mod.send_type  # on the compiled engine, the C object
        if not compiled:
            write = server._write_if_open

        def pair(header: bytes, payload: bytes) -> None:
            if split_pairs:  # what _write_pair_if_open stands for
                write(header)
                write(payload)
            elif calls is not None:  # the Python functions that run for it
                sys.setprofile(lambda frame, event, _: calls.append(frame.f_code.co_name) if event == "call" else None)
                try:
                    write(header, payload)
                finally:
                    sys.setprofile(None)
            else:
                write(header, payload)

        sent = bytearray()
        paused: list[tuple[bool, int]] = []
        writes_before = st_.writes
        for i, (op, n) in enumerate(script):
            if op == "write":
                msg = bytes([i % 251]) * n
                write(msg)
                sent += msg
            elif op == "pair":  # a frame header (2-10 bytes) and a large payload, as the WebSocket layer sends
                header, payload = bytes([i % 251, 1]) * (1 + i % 5), bytes([(i + 1) % 251]) * n
                pair(header, payload)
                sent += header + payload
            elif op == "hooks":
                run_hooks(selector)
            else:
                deliver(st_, client, n)
            # the app's pause, and what the TCP transport holds (the backpressure it was given)
            paused.append((sapp.paused, len(st_.buf)))
        run_hooks(selector)
        deliver(st_, client, 1 << 30)
        run_hooks(selector)
        deliver(st_, client, 1 << 30)
        assert capp.data == sent
        return bytes(capp.data), st_.writes - writes_before, paused
    finally:
        loop.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 300)),
        st.tuples(st.just("write"), st.integers(10_000, 70_000)),  # around COALESCE_LIMIT and a record
        # around a record, and WRITE_CHUNK
        st.tuples(st.just("pair"), st.sampled_from([1, 4000, 16_373, 16_374, 16_383, 16_384, 262_144, 262_145])),
        st.tuples(st.just("pair"), st.integers(1, 300_000)),
        st.tuples(st.just("hooks"), st.just(0)),
        st.tuples(st.just("s2c"), st.integers(1, 40_000)),
    ),
    max_size=40,
)


@example(script=[("write", 10), ("pair", 65_536)], high=1 << 20, app_high=1 << 20)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, high=st.integers(100, 300_000), app_high=st.integers(50, 100_000))
def test_same_plaintext_writes_and_backpressure_as_the_python_methods(
    script: list[Any], high: int, app_high: int
) -> None:
    assert run_script(script, True, high, app_high) == run_script(script, False, high, app_high)


# A small write still queued when a pair comes: the pair must go behind it.
@example(script=[("write", 10), ("pair", 65_536)], high=1 << 20, app_high=1 << 20)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops, high=st.integers(100, 300_000), app_high=st.integers(50, 100_000))
def test_a_pair_is_its_two_writes(script: list[Any], high: int, app_high: int) -> None:
    """``_write_pair_if_open(header, payload)`` (compiled and Python) against ``_write_if_open(header)`` then
    ``_write_if_open(payload)``: the same plaintext, transport writes and backpressure."""
    split = run_script(script, False, high, app_high, split_pairs=True)
    assert run_script(script, False, high, app_high) == split
    assert run_script(script, True, high, app_high) == split


def test_a_large_pair_is_one_transport_write_without_the_backlog() -> None:
    """The common case, a header and a 64 KiB payload with nothing queued: one transport write, and none of the
    backlog's Python methods; compiled, no Python at all but the transport's write()."""
    for compiled in (True, False):
        calls: list[str] = []
        data, writes, paused = run_script([("pair", 65_536)], compiled, 1 << 30, 1 << 20, calls=calls)
        assert len(data) == 65_536 + 2 and writes == 1 and [p for p, _ in paused] == [False]
        if compiled:
            assert calls == ["write"]
        else:
            assert "_app_write" not in calls and "_drain_backlog" not in calls and "write" in calls
        # Past WRITE_CHUNK (256 KiB): in pieces, the header's record with the first, one transport write each.
        calls = []
        data, writes, paused = run_script([("pair", 600_000)], compiled, 1 << 30, 1 << 20, calls=calls)
        assert len(data) == 600_000 + 2 and writes == 3 and [p for p, _ in paused] == [False]
        if compiled:
            assert calls == ["write"] * 3
        else:
            assert "_app_write" not in calls and "_drain_backlog" not in calls and "_encrypt" in calls


def test_the_written_backlog_is_kept_for_the_next_write_not_freed() -> None:
    """A coalesced write's deque, once the hook has written it, is emptied and kept for the next write (of any
    connection) instead of one new deque per message; the plaintext is unchanged."""
    with Pair() as p:
        write = p.server.write_if_open
        assert type(write) is engine_mod.send_type
        write(b"one")
        backlog = weakref.ref(p.server._backlog)
        run_hooks(p.selector)
        assert p.server._backlog is None  # an idle connection holds no deque
        kept = backlog()
        assert kept is not None and len(kept) == 0 and engine_mod._engine.spare_backlogs() >= 1
        del kept
        write(b"two")
        assert p.server._backlog is backlog()
        assert p.received() == b"onetwo"


def test_a_backlog_referenced_elsewhere_is_not_reused() -> None:
    """A deque that someone else still holds is left alone (not emptied, not handed to another write)."""
    with Pair() as p:
        write = p.server.write_if_open
        write(b"held")
        held = p.server._backlog
        run_hooks(p.selector)
        assert list(held) == [b"held"]  # what the hook wrote, still in the deque the test holds
        write(b"next")
        assert p.server._backlog is not held
        assert p.received() == b"heldnext"


def test_at_most_spare_max_deques_are_kept() -> None:
    pairs = [Pair() for _ in range(engine_mod._engine.SPARE_MAX + 8)]
    try:
        for p in pairs:
            p.server.write_if_open(b"x")
        for p in pairs:
            run_hooks(p.selector)
        assert engine_mod._engine.spare_backlogs() == engine_mod._engine.SPARE_MAX
        for p in pairs:
            assert p.received() == b"x"
    finally:
        for p in pairs:
            p.loop.close()
