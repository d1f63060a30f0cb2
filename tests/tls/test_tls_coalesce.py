"""Plaintext coalescing: small writes of one loop iteration leave as one TLS record, in order, exactly once.

On a loop whose selector runs ``before_wait`` hooks (uringws's ring loop), :class:`TLSProtocol` keeps small
application writes as plaintext until the loop is about to wait, then encrypts them with one SSL_write. These tests
drive that with a loop double (a stdlib selector loop whose selector has the same hook list) and in-memory
transports, so every step is visible: nothing is written before the hook runs, one record after it; close()
sends the pending data before close_notify; abort() drops it; flow control and ordering hold (hashes).
"""

from __future__ import annotations

import array
import asyncio
import hashlib
import selectors
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from uringws.tls.protocol import COALESCE_LIMIT, TLSProtocol

from .test_inmemory import MemTransport, Sink, deliver

_CA = trustme.CA()
_CERT = _CA.issue_cert("localhost")

_APPLICATION_DATA = 23  # TLS record content type (TLS 1.3 wraps everything after the handshake in it)


class HookSelector(selectors.DefaultSelector):
    """A stdlib selector with the ring selector's ``before_wait`` contract: hooks run until none are left."""

    def __init__(self) -> None:
        super().__init__()
        self.before_wait: list[Callable[[], Any]] = []

    def run_hooks(self) -> int:
        """What the ring selector does before each wait; returns how many hooks ran."""
        ran = 0
        hooks = self.before_wait
        while hooks:
            self.before_wait = []
            for hook in hooks:
                hook()
                ran += 1
            hooks = self.before_wait
        return ran

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.run_hooks()
        return super().select(timeout)


def contexts(tls13: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _CERT.configure_cert(sctx)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls13 else ssl.TLSVersion.TLSv1_2
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _CA.configure_trust(cctx)
    return sctx, cctx


class Pair:
    """A connected client/server TLSProtocol pair over MemTransports; the server's loop has the hook."""

    def __init__(self, tls13: bool = True, hook: bool = True, high: int = 1 << 62,
                 sslobject_class: type[ssl.SSLObject] | None = None) -> None:
        self.selector = HookSelector()
        self.loop = asyncio.SelectorEventLoop(self.selector if hook else None)  # never run: timers only
        sctx, cctx = contexts(tls13)
        if sslobject_class is not None:
            sctx.sslobject_class = sslobject_class
        self.capp, self.sapp = Sink(), Sink()
        self.client = TLSProtocol(self.loop, self.capp, cctx, None, False, "localhost")
        self.server = TLSProtocol(self.loop, self.sapp, sctx, None, True)
        self.ct, self.st = MemTransport(), MemTransport(high)
        self.st.protocol = self.server
        self.client.connection_made(self.ct)  # type: ignore[arg-type]
        self.server.connection_made(self.st)  # type: ignore[arg-type]
        for _ in range(100):
            if self.capp.transport is not None and self.sapp.transport is not None and not self.ct.buf:
                if not self.st.buf:
                    break
            deliver(self.ct, self.server, 1 << 30)
            deliver(self.st, self.client, 1 << 30)
        assert self.capp.transport is not None and self.sapp.transport is not None
        self.selector.run_hooks()
        deliver(self.st, self.client, 1 << 30)  # TLS 1.3 session tickets
        self.st.writes = 0

    @property
    def writer(self) -> Any:
        """The server application's transport (a TLSTransport)."""
        return self.sapp.transport

    def to_client(self) -> None:
        deliver(self.st, self.client, 1 << 30)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture(params=[False, True], ids=["tls12", "tls13"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(tls13=request.param)
    try:
        yield p
    finally:
        p.close()


def record_types(stream: bytes | bytearray) -> list[int]:
    """Content types of the complete TLS records in ``stream`` (asserts it holds whole records only)."""
    types = []
    i = 0
    while i < len(stream):
        assert i + 5 <= len(stream), "partial record header"
        length = (stream[i + 3] << 8) | stream[i + 4]
        types.append(stream[i])
        i += 5 + length
    assert i == len(stream), "partial record"
    return types


def messages(n: int, size: int = 64) -> list[bytes]:
    return [hashlib.sha256(b"%d" % i).digest() * (size // 32) for i in range(n)]


def test_small_writes_of_one_iteration_leave_as_one_record_and_one_transport_write(pair: Pair) -> None:
    msgs = messages(8)
    for m in msgs:
        pair.writer.write(m)
    assert pair.st.writes == 0 and not pair.st.buf  # nothing encrypted before the loop would wait
    assert pair.writer.get_write_buffer_size() == sum(map(len, msgs))
    assert pair.selector.run_hooks() == 1
    assert pair.st.writes == 1
    assert record_types(pair.st.buf) == [_APPLICATION_DATA]
    assert pair.writer.get_write_buffer_size() == len(pair.st.buf)
    pair.to_client()
    assert pair.capp.data == b"".join(msgs)
    pair.writer.write(b"z" * COALESCE_LIMIT)  # not small: encrypted and handed down at once
    assert pair.st.writes == 2
    pair.to_client()
    assert pair.capp.data == b"".join(msgs) + b"z" * COALESCE_LIMIT


def test_coalesced_plaintext_is_cut_into_full_records(pair: Pair) -> None:
    msgs = messages(300, 100)  # 30000 bytes, below the immediate-drain threshold only for the first 16 KiB
    for m in msgs:
        pair.writer.write(m)
    pair.selector.run_hooks()
    # 30000 bytes of 100-byte writes: at most one record per 16 KiB of plaintext (plus one partial each time the
    # coalescing threshold forces an early encrypt), never one record per write.
    assert len(record_types(pair.st.buf)) <= 4
    assert pair.st.writes <= 3
    pair.to_client()
    assert pair.capp.data == b"".join(msgs)


def test_large_write_after_small_ones_keeps_order(pair: Pair) -> None:
    small = messages(3)
    big = bytes(range(256)) * 1024  # 256 KiB: encrypted at once, behind the pending small writes
    for m in small:
        pair.writer.write(m)
    pair.writer.write(big)
    assert pair.st.writes >= 1  # the large write did not wait for the hook, and took the small ones along
    pair.writer.write(b"tail")
    pair.selector.run_hooks()
    pair.to_client()
    assert hashlib.sha256(pair.capp.data).digest() == hashlib.sha256(b"".join(small) + big + b"tail").digest()


def test_close_right_after_writes_sends_them_then_close_notify(pair: Pair) -> None:
    msgs = messages(5)
    for m in msgs:
        pair.writer.write(m)
    pair.writer.close()  # no hook has run: the pending plaintext must still go first
    types = record_types(pair.st.buf)
    assert len(types) == 2  # the coalesced data, then close_notify (an alert; in TLS 1.3 an encrypted one)
    pair.to_client()
    assert pair.capp.data == b"".join(msgs)
    assert pair.capp.eof  # close_notify came after the data
    pair.selector.run_hooks()  # the scheduled hook finds nothing left to send
    assert pair.capp.data == b"".join(msgs)


def test_writes_after_close_are_dropped(pair: Pair) -> None:
    pair.writer.write(b"before")
    pair.writer.close()
    pair.writer.write(b"after")
    pair.selector.run_hooks()
    pair.to_client()
    assert pair.capp.data == b"before"
    assert pair.capp.eof


def test_write_if_open_is_write_unless_closing(pair: Pair) -> None:
    """_write_if_open() (one call per WebSocket message) does what ``if not is_closing(): write()`` does: coalesced
    in order with write()s, and dropped without counting as a write after close once the transport is closing."""
    pair.server._write_if_open(b"one")
    pair.writer.write(b"two")
    pair.server._write_if_open(b"three")
    assert pair.st.writes == 0
    assert pair.writer.get_write_buffer_size() == 11
    assert pair.selector.run_hooks() == 1
    assert pair.st.writes == 1
    pair.server._write_if_open(b"x" * COALESCE_LIMIT)  # not small: encrypted and handed down at once
    assert pair.st.writes == 2
    pair.to_client()
    assert pair.capp.data == b"onetwothree" + b"x" * COALESCE_LIMIT
    pair.writer.close()
    assert pair.writer.is_closing()
    for _ in range(10):
        pair.server._write_if_open(b"after")
    assert pair.server._writes_after_close == 0
    pair.selector.run_hooks()
    pair.to_client()
    assert pair.capp.data == b"onetwothree" + b"x" * COALESCE_LIMIT
    assert pair.capp.eof


def test_write_if_open_during_the_handshake_queues_like_write() -> None:
    sel = HookSelector()
    loop = asyncio.SelectorEventLoop(sel)
    try:
        sctx, cctx = contexts(True)
        capp, sapp = Sink(), Sink()
        client = TLSProtocol(loop, capp, cctx, None, False, "localhost")
        server = TLSProtocol(loop, sapp, sctx, None, True)
        ct, st_ = MemTransport(), MemTransport()
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        client._write_if_open(b"early")  # before the handshake: queued, sent once it is done
        deliver(ct, server, 1 << 30)
        deliver(st_, client, 1 << 30)
        client._write_if_open(b"late")
        sel.run_hooks()
        deliver(ct, server, 1 << 30)
        assert sapp.data == b"earlylate"
    finally:
        loop.close()


def test_abort_drops_pending_plaintext(pair: Pair) -> None:
    for m in messages(4):
        pair.writer.write(m)
    pair.writer.abort()
    pair.selector.run_hooks()
    assert pair.st.closed
    assert pair.st.writes == 0 and not pair.st.buf  # nothing of the pending writes was encrypted


def test_connection_lost_drops_pending_plaintext(pair: Pair) -> None:
    pair.writer.write(b"x" * 100)
    pair.server.connection_lost(None)
    pair.selector.run_hooks()
    assert pair.st.writes == 0
    assert pair.writer.get_write_buffer_size() == 0


def test_pending_plaintext_counts_for_flow_control(pair: Pair) -> None:
    pair.writer.set_write_buffer_limits(high=1000)
    pair.writer.write(b"a" * 600)
    assert pair.writer.get_write_buffer_size() == 600 and pair.st.writes == 0
    pair.writer.write(b"b" * 600)  # pending would pass the high-water mark: encrypted now instead
    assert pair.st.writes == 1
    assert not pair.sapp.paused
    pair.writer.write(b"c" * 2000)  # above the high-water mark on its own: never coalesced
    assert pair.st.writes == 2
    pair.to_client()
    assert pair.capp.data == b"a" * 600 + b"b" * 600 + b"c" * 2000


def test_tcp_backpressure_with_pending_plaintext() -> None:
    p = Pair(high=30_000)
    try:
        sent = bytearray()
        for i in range(20):
            m = bytes([i]) * 10_000
            p.writer.write(m)
            sent += m
        p.selector.run_hooks()
        assert p.st.paused and p.sapp.paused  # TCP paused us; the app was told
        while p.st.buf or p.selector.before_wait:
            p.to_client()
            p.selector.run_hooks()
        assert not p.sapp.paused
        assert p.capp.data == sent
    finally:
        p.close()


def test_mutable_buffers_are_copied_when_coalesced(pair: Pair) -> None:
    buf = bytearray(b"first")
    pair.writer.write(buf)
    buf[:] = b"XXXXX"  # the app may reuse its buffer as soon as write() returns
    pair.writer.write(memoryview(array.array("I", [1, 2])))  # wider items: counted and sent in bytes
    pair.selector.run_hooks()
    pair.to_client()
    assert pair.capp.data == b"first" + array.array("I", [1, 2]).tobytes()


def test_writes_during_handshake_then_coalesced_writes_keep_order() -> None:
    sel = HookSelector()
    loop = asyncio.SelectorEventLoop(sel)
    try:
        sctx, cctx = contexts(True)
        capp, sapp = Sink(), Sink()
        client = TLSProtocol(loop, capp, cctx, None, False, "localhost")
        server = TLSProtocol(loop, sapp, sctx, None, True)
        ct, st_ = MemTransport(), MemTransport()
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        deliver(ct, server, 1 << 30)  # ClientHello; server answers with its flight
        deliver(st_, client, 1 << 30)  # client done: its app may write before the server has its Finished
        assert capp.transport is not None and sapp.transport is None
        capp.transport.write(b"one")
        capp.transport.write(b"two")
        sel.run_hooks()
        deliver(ct, server, 1 << 30)
        capp.transport.write(b"three")
        sel.run_hooks()
        deliver(ct, server, 1 << 30)
        assert sapp.data == b"onetwothree"
    finally:
        loop.close()


def test_loop_without_hook_writes_at_once() -> None:
    p = Pair(hook=False)
    try:
        p.writer.write(b"now")
        assert p.st.writes == 1  # no before_wait hook to wait for: never leave bytes for an unrelated event
        p.writer.write(b"again")
        assert p.st.writes == 2
        p.to_client()
        assert p.capp.data == b"nowagain"
    finally:
        p.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 300)),
        st.tuples(st.just("write"), st.integers(1, 20_000)),
        st.tuples(st.just("write"), st.integers(200_000, 400_000)),
        st.tuples(st.just("frame"), st.integers(1, 300)),  # the WebSocket layer's _write_if_open(bytes)
        st.tuples(st.just("frame"), st.integers(1, 20_000)),
        st.tuples(st.just("hook"), st.just(0)),
        st.tuples(st.just("s2c"), st.integers(1, 50_000)),
        st.tuples(st.just("limits"), st.integers(0, 40_000)),
    ),
    max_size=60,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(tls13=st.booleans(), high=st.integers(1000, 200_000), script=ops, close_at_end=st.booleans())
def test_random_writes_hooks_and_backpressure_keep_the_stream_exact(
    tls13: bool, high: int, script: list[tuple[str, int]], close_at_end: bool
) -> None:
    p = Pair(tls13=tls13, high=high)
    try:
        sent = bytearray()
        counter = 0
        for op, n in script:
            if op in ("write", "frame"):
                msg = bytearray((counter + i) % 251 for i in range(min(n, 997))) * (n // 997 + 1)
                del msg[n:]
                counter += 1
                if op == "frame":
                    p.server._write_if_open(bytes(msg))
                else:
                    p.writer.write(msg)
                sent += msg
                msg[:1] = b"\xff"  # mutating after write() must not change what is sent
            elif op == "hook":
                p.selector.run_hooks()
            elif op == "s2c":
                deliver(p.st, p.client, n)
            else:
                p.writer.set_write_buffer_limits(high=n)
            assert p.capp.data == sent[: len(p.capp.data)]
            if p.st.paused:
                assert p.sapp.paused
        if close_at_end:
            p.writer.close()
        for _ in range(1000):
            if not p.st.buf and not p.selector.before_wait:
                break
            p.selector.run_hooks()
            p.to_client()
        assert p.capp.data == sent
        assert p.capp.eof == close_at_end
        if not close_at_end:
            assert p.writer.get_write_buffer_size() == 0
    finally:
        p.close()


def test_ring_loop_end_to_end_many_small_writes_then_close(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> None:
    """On the real io_uring loop: 500 small writes in one callback, then close(); the client gets all, then EOF."""
    import uringws
    from uringws.ring import probe

    if not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    msgs = messages(500, 96)
    expected = hashlib.sha256(b"".join(msgs)).hexdigest()

    class Burst(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            tls = transport._tls  # type: ignore[attr-defined]
            inner = tls._transport
            self.inner_writes = 0
            write = inner.write

            def counting(data: Any) -> None:
                self.inner_writes += 1
                write(data)

            inner.write = counting
            for m in msgs:
                transport.write(m)  # type: ignore[attr-defined]
            transport.close()
            apps.append(self)

    apps: list[Burst] = []

    async def main() -> str:
        server = await asyncio.get_running_loop().create_server(Burst, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        data = await asyncio.wait_for(reader.read(), 10)  # until EOF (close_notify)
        writer.close()
        server.close()
        await server.wait_closed()
        return hashlib.sha256(data).hexdigest()

    loop = uringws.new_event_loop()
    try:
        assert loop.backend == "io_uring"
        assert loop.run_until_complete(main()) == expected
    finally:
        loop.close()
    # 48000 bytes of 96-byte writes: a few coalesced hand-downs (16 KiB each) and close_notify, not 500 writes.
    assert apps and apps[0].inner_writes <= 6


class CountingSSLObject(ssl.SSLObject):
    """An ``SSLContext.sslobject_class`` of the application's: its methods must keep being called."""

    reads = 0
    writes = 0

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        CountingSSLObject.reads += 1
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        CountingSSLObject.writes += 1
        return super().write(data)


def test_a_contexts_own_sslobject_class_is_called() -> None:
    """The TLS layer calls ssl.SSLObject's _ssl object directly (one Python frame less per record), but only for
    ssl.SSLObject itself: a subclass set as the context's sslobject_class keeps its read() and write()."""
    p = Pair(sslobject_class=CountingSSLObject)
    try:
        reads, writes = CountingSSLObject.reads, CountingSSLObject.writes
        p.capp.transport.write(b"x" * 100_000)
        deliver(p.ct, p.server, 1 << 30)
        assert p.sapp.data == b"x" * 100_000
        assert CountingSSLObject.reads - reads >= 7  # one per 16 KiB record at least
        p.writer.write(b"y" * 1000)  # coalesced: encrypted by the before_wait hook
        p.selector.run_hooks()
        p.to_client()
        assert p.capp.data == b"y" * 1000
        assert CountingSSLObject.writes - writes >= 1
    finally:
        p.close()
