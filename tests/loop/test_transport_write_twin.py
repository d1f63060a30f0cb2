"""``RingSocketTransport.write`` and ``_flush`` in C (``_ringc.TransportWrite`` and ``TransportFlush``, the class's
``write`` and ``_flush`` when compiled) against the Python functions (``transports.write_py``, ``flush_py``): one
script of writes (small and large, from the loop and from a
before-wait hook, bytes and other buffers), peer reads, write-buffer limits and loop iterations, run on a transport
with each, over a socketpair whose small buffers make sends short, must leave the same trace step by step and
deliver the same bytes in order."""

from __future__ import annotations

import asyncio
import socket
import types
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from uringws.loop import transports
from uringws.loop.events import EventLoop
from uringws.ring import fast

needs_c = pytest.mark.skipif(fast.TransportWrite is None, reason="compiled transport write not in use")


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__))


Op = tuple[str, int]


def payload(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


def run_script(script: list[Op], compiled: bool) -> tuple[list[Any], bytes, bytes]:
    loop = EventLoop(read_mode="poll")
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    b.setblocking(False)
    trace: list[Any] = []
    sent = bytearray()
    got = bytearray()
    try:
        proto = Recorder()
        transport: Any = loop._make_socket_transport(a, proto)  # type: ignore[attr-defined]
        assert type(transport) is transports.RingSocketTransport
        if compiled:
            assert type(type(transport).write) is fast.TransportWrite
            assert type(type(transport)._flush) is fast.TransportFlush
        else:
            transport.write = types.MethodType(transports.write_py, transport)
            transport._flush = types.MethodType(transports.flush_py, transport)

        def settle() -> None:
            for _ in range(3):
                loop.call_soon(loop.stop)
                loop.run_forever()

        def drain(limit: int) -> None:
            while limit > 0:
                try:
                    chunk = b.recv(min(limit, 65536))
                except BlockingIOError:
                    return
                if not chunk:
                    return
                got.extend(chunk)
                limit -= len(chunk)

        settle()
        for i, (op, n) in enumerate(script):
            if op == "write":
                data = payload(i, n)
                sent.extend(data)
                transport.write(data)
            elif op == "write-view":
                data = payload(i, n)
                sent.extend(data)
                transport.write(memoryview(bytearray(data)))
            elif op == "hook-write":  # a TLS layer's records: written from a before-wait hook
                selector = loop._hook_selector
                assert selector is not None

                def hook(data: bytes = payload(i, n)) -> None:
                    sent.extend(data)  # in the order the writes are made
                    transport.write(data)

                selector.before_wait.append(hook)
            elif op == "fill" and not transport.get_write_buffer_size() and transport._send_state == 0:
                # the socket's buffer filled behind the transport's back (nothing of its own waiting): its next
                # direct send finds no room (EAGAIN)
                while True:
                    try:
                        sent.extend(b"z" * a.send(b"z" * 4096, socket.MSG_DONTWAIT))
                    except BlockingIOError:
                        break
            elif op == "empty":
                transport.write(b"")
            elif op == "limits":
                transport.set_write_buffer_limits(high=n)
            elif op == "drain":
                drain(n)
            elif op == "settle":
                settle()
            trace.append((i, op, transport.get_write_buffer_size(), transport._send_state, list(proto.events),
                          loop.send_stats.as_dict()))
        for _ in range(200):  # the rest arrives, in order
            settle()
            drain(1 << 20)
            if not transport.get_write_buffer_size() and transport._send_state == 0:
                break
        drain(1 << 20)
        trace.append(("end", transport.get_write_buffer_size(), list(proto.events), loop.send_stats.as_dict()))
        transport.close()
        settle()
    finally:
        b.close()
        loop.close()
    return trace, bytes(sent), bytes(got)


ops = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["write", "hook-write", "write-view"]),
                  st.sampled_from([1, 100, 5000, 16 * 1024 - 1, 16 * 1024, 40_000, 200_000])),
        st.tuples(st.just("drain"), st.sampled_from([1000, 20_000, 1 << 20])),
        st.tuples(st.just("limits"), st.sampled_from([0, 1024, 64 * 1024])),
        st.tuples(st.sampled_from(["settle", "settle", "empty", "fill"]), st.just(0)),
    ),
    max_size=25,
)


@needs_c
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=ops)
@example(script=[("write", 40_000), ("hook-write", 100), ("settle", 0), ("drain", 1 << 20), ("settle", 0),
                 ("hook-write", 100), ("write", 200_000), ("write", 16 * 1024), ("drain", 20_000), ("settle", 0)])
@example(script=[("fill", 0), ("hook-write", 100), ("settle", 0), ("drain", 1 << 20), ("settle", 0), ("fill", 0),
                 ("write", 40_000), ("drain", 1 << 20), ("settle", 0), ("settle", 0)])
@example(script=[("limits", 1024), ("write", 200_000), ("hook-write", 5000), ("settle", 0), ("drain", 1 << 20),
                 ("settle", 0), ("settle", 0), ("write", 16 * 1024)])
@example(script=[("write", 100), ("settle", 0), ("write", 100), ("write", 5000), ("settle", 0), ("fill", 0),
                 ("write", 1), ("settle", 0), ("drain", 1 << 20), ("settle", 0), ("limits", 1024), ("write", 5000),
                 ("settle", 0)])
def test_same_trace_and_bytes_as_the_python_function(script: list[Op]) -> None:
    compiled, sent, got = run_script(script, True)
    assert got == sent  # everything, in order
    python, sent_py, got_py = run_script(script, False)
    assert got_py == sent_py
    assert compiled == python


@needs_c
def test_the_direct_send_runs_no_python() -> None:
    """The compiled write and flush are really taken for the common cases: a large write, a small one from a hook,
    and a small one from the loop (queued, then sent by the flush before the loop waits)."""
    script: list[Op] = [("write", 40_000), ("settle", 0), ("drain", 1 << 20), ("settle", 0), ("drain", 1 << 20),
                        ("settle", 0), ("hook-write", 100), ("settle", 0)]
    small: list[Op] = [("write", 100), ("settle", 0)]
    calls: list[str] = []
    original_write, original_flush = transports.write_py, transports.flush_py

    def spy_write(self: Any, data: Any) -> None:
        calls.append("write_py")
        original_write(self, data)

    def spy_flush(self: Any) -> None:
        calls.append("flush_py")
        original_flush(self)

    cls = transports.RingSocketTransport
    compiled_write, compiled_flush = cls.write, cls._flush
    cls.write = fast.TransportWrite(cls, spy_write, transports._DEFER_BELOW,  # type: ignore[method-assign]
                                    transports._DIRECT_FLAGS)
    cls._flush = fast.TransportFlush(cls, spy_flush, transports._DIRECT_FLAGS)  # type: ignore[method-assign]
    try:
        trace, sent, got = run_script(script, True)
        # the large write's direct send (the rest of it, a memoryview, queued by _write_rest: flush_py sends it),
        # the hook's write
        assert "write_py" not in calls
        calls.clear()
        trace_small, sent_small, got_small = run_script(small, True)
    finally:
        cls.write, cls._flush = compiled_write, compiled_flush  # type: ignore[method-assign]
    assert got == sent and got_small == sent_small
    before, after = trace[-3][-1], trace[-2][-1]
    assert trace[-3][2] == 0  # nothing queued when the hook wrote
    assert after["direct_sends"] == before["direct_sends"] + 1 and after["sends"] == before["sends"]
    assert calls == []  # the small write queued, and its flush's direct send
    assert trace_small[0][2] == 100  # it waits in the queue until the loop is about to wait
    after = trace_small[1][-1]
    assert trace_small[1][2] == 0 and after["direct_sends"] == 1 and after["sends"] == 0
    assert after["max_queued"] == 100


@needs_c
@pytest.mark.parametrize("size", [40_000, 100], ids=["write", "flush"])
@pytest.mark.parametrize("compiled", [True, False])
def test_a_failed_direct_send_is_a_fatal_write_error(compiled: bool, size: int) -> None:
    """The peer is gone: the direct send (write()'s, or the flush's of a small write) fails (EPIPE), the transport
    reports it and closes, as the Python functions do."""
    loop = EventLoop(read_mode="poll")
    a, b = socket.socketpair()
    try:
        proto = Recorder()
        transport: Any = loop._make_socket_transport(a, proto)  # type: ignore[attr-defined]
        if not compiled:
            transport.write = types.MethodType(transports.write_py, transport)
            transport._flush = types.MethodType(transports.flush_py, transport)
        loop.call_soon(loop.stop)
        loop.run_forever()
        b.close()
        errors: list[Any] = []
        loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
        transport.write(b"x" * size)
        for _ in range(3):
            loop.call_soon(loop.stop)
            loop.run_forever()
        assert proto.events == [("lost", "BrokenPipeError")]
        assert loop.send_stats.direct_sends == 0
        assert transport.is_closing()
        transport.write(b"y" * 40_000)  # after the loss: dropped, counted
        assert transport._conn_lost >= 1
    finally:
        loop.close()


@needs_c
def test_other_buffers_and_subclasses_take_the_python_function() -> None:
    class Sub(transports.RingSocketTransport):
        pass

    loop = EventLoop(read_mode="poll", transport_class=Sub)
    a, b = socket.socketpair()
    try:
        transport: Any = loop._make_socket_transport(a, Recorder())  # type: ignore[attr-defined]
        assert type(transport) is Sub
        loop.call_soon(loop.stop)
        loop.run_forever()
        transport.write(b"abc" * 10_000)  # through write_py, which sends it at once
        assert loop.send_stats.direct_sends == 1
        with pytest.raises(TypeError, match="bytes-like"):
            transport.write("text")
        transport.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            transport.write(b"more")
        assert b.recv(1 << 20)[:3] == b"abc"
    finally:
        b.close()
        loop.close()


@pytest.mark.parametrize("how", ["small", "short"])
def test_writes_past_the_high_water_mark_pause_the_protocol(how: str) -> None:
    """Queued small writes, or the rest of a short direct send, above the high-water mark pause the protocol; it
    resumes once the peer has read them."""
    loop = EventLoop(read_mode="poll")
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    b.setblocking(False)
    try:
        proto = Recorder()
        transport: Any = loop._make_socket_transport(a, proto)  # type: ignore[attr-defined]
        loop.call_soon(loop.stop)
        loop.run_forever()
        transport.set_write_buffer_limits(high=4096)
        if how == "small":
            for _ in range(5):
                transport.write(b"s" * 1000)  # queued until the loop waits
        else:
            transport.write(b"L" * 200_000)  # a direct send that the socket takes only part of
        assert proto.events == ["pause"]
        got = bytearray()
        for _ in range(500):
            loop.call_soon(loop.stop)
            loop.run_forever()
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                pass
            if len(got) == (5000 if how == "small" else 200_000):
                break
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert proto.events == ["pause", "resume"]
    finally:
        b.close()
        loop.close()
