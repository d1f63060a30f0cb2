"""Two TLSProtocols wired by in-memory transports: random chunking, random TCP backpressure, exact bytes.

No sockets and no running loop: the test decides how many bytes each side receives per call and when the
"TCP transport" pauses and resumes writing, so hypothesis can search for an ordering bug in our layer.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import trustme
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from uringws.tls.protocol import TLSProtocol


class MemTransport:
    """Stream transport double: write() appends to ``buf``; the test moves bytes to the peer.

    Like asyncio's transports it calls ``pause_writing()`` synchronously from write() above ``high`` bytes and
    ``resume_writing()`` once drained to ``high // 4``.
    """

    def __init__(self, high: int = 1 << 62) -> None:
        self.buf = bytearray()
        self.closed = False
        self.reading = True
        self.writes = 0
        self.high = high
        self.paused = False
        self.protocol: TLSProtocol | None = None
        self.plain = False  # deliver this transport's bytes to the peer with data_received()
        self.lend = False  # ... or lend them as a view to its received_view() (as uringws's ring transport does)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.buf += data
        self.writes += 1
        if len(self.buf) > self.high and not self.paused and self.protocol is not None:
            self.paused = True
            self.protocol.pause_writing()

    def drained(self) -> None:
        if self.paused and len(self.buf) <= self.high // 4 and self.protocol is not None:
            self.paused = False
            self.protocol.resume_writing()

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return len(self.buf)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.transport: Any = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> None:
        self.eof = True

    def pause_writing(self) -> None:
        assert not self.paused
        self.paused = True

    def resume_writing(self) -> None:
        assert self.paused
        self.paused = False


class ViewSink(Sink):
    """An app that takes decrypted bytes as lent views (received_view) and keeps them, to check they are dead."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[memoryview] = []

    def data_received(self, data: bytes) -> None:
        raise AssertionError("a received_view() app must get views, not data_received()")

    def received_view(self, view: memoryview) -> None:
        assert isinstance(view, memoryview)
        self.data += view
        self.kept.append(view)


def deliver(src: MemTransport, dst: TLSProtocol, n: int) -> None:
    """Move up to ``n`` bytes from ``src`` into ``dst``: get_buffer()/buffer_updated(), or data_received()
    when ``src.plain`` (a transport without buffered-protocol support)."""
    while n > 0 and src.buf:
        if src.lend:
            # A view of a scratch buffer, valid only during the call (scribbled over after it), like the ring
            # transport's view of the loop's receive buffers.
            k = min(n, 70_000, len(src.buf))
            scratch = bytearray(src.buf[:k])
            del src.buf[:k]
            with memoryview(scratch) as view:
                dst.received_view(view)
            scratch[:] = b"\xee" * k
        elif src.plain:
            k = min(n, 70_000, len(src.buf))
            data = bytes(src.buf[:k])
            del src.buf[:k]
            dst.data_received(data)
        else:
            buf = dst.get_buffer(-1)
            k = min(n, len(buf), len(src.buf))
            buf[:k] = src.buf[:k]
            del src.buf[:k]
            dst.buffer_updated(k)
        n -= k
        src.drained()


_CA = trustme.CA()
_CERT = _CA.issue_cert("localhost")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(1, 70_000)),
        st.tuples(st.just("write"), st.integers(250_000, 600_000)),  # > WRITE_CHUNK: split, may pause midway
        st.tuples(st.just("c2s"), st.integers(1, 40_000)),
        st.tuples(st.just("s2c"), st.integers(1, 40_000)),
    ),
    max_size=40,
)


# No shrink phase: with multi-megabyte writes shrinking can take minutes; the unshrunk example is printed.
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    tls13=st.booleans(),
    handshake_chunk=st.integers(7, 3000),
    script=ops,
    seed=st.integers(0, 255),
    high=st.integers(100, 300_000),
    receiver=st.sampled_from(["buffer", "plain", "lend"]),
    view_app=st.booleans(),
)
def test_random_chunking_and_backpressure(
    tls13: bool, handshake_chunk: int, script: list[Any], seed: int, high: int, receiver: str, view_app: bool
) -> None:
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _CERT.configure_cert(sctx)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_3 if tls13 else ssl.TLSVersion.TLSv1_2
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _CA.configure_trust(cctx)
    loop = asyncio.new_event_loop()  # only for timers; never run
    try:
        capp, sapp = Sink(), (ViewSink() if view_app else Sink())
        client = TLSProtocol(loop, capp, cctx, None, False, "localhost")
        server = TLSProtocol(loop, sapp, sctx, None, True)
        ct, st_ = MemTransport(high), MemTransport()
        ct.protocol = client
        ct.plain = receiver == "plain"
        ct.lend = receiver == "lend"
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        for _ in range(10_000):
            if capp.transport is not None and sapp.transport is not None and not ct.buf and not st_.buf:
                break
            deliver(ct, server, handshake_chunk)
            deliver(st_, client, handshake_chunk)
        assert capp.transport is not None and sapp.transport is not None

        sent = bytearray()
        counter = seed
        for op, n in script:
            if op == "write":
                msg = bytes((counter + i) % 251 for i in range(n % 997)) * (n // 997 + 1)
                msg = msg[:n]
                counter += 1
                capp.transport.write(msg)
                sent += msg
            elif op == "c2s":
                deliver(ct, server, n)
            elif op == "s2c":
                deliver(st_, client, n)
            # Whatever happened, the server never has more than what was sent, and always a prefix of it.
            assert sapp.data == sent[: len(sapp.data)]
            if ct.paused:
                assert capp.paused  # TCP backpressure reaches the app
        deliver(ct, server, 1 << 30)  # drains the backlog through resume_writing() as the buffer empties
        assert not ct.paused and not capp.paused
        assert capp.transport.get_write_buffer_size() == 0
        assert sapp.data == sent
        if isinstance(sapp, ViewSink):
            assert bool(sent) == bool(sapp.kept)
            for view in sapp.kept:  # released after each call: a kept view cannot show later bytes
                try:
                    view[0]
                except ValueError:
                    continue
                raise AssertionError("a lent plaintext view outlived its received_view() call")
        # close(): close_notify goes out after everything, the server app sees EOF and answers.
        capp.transport.close()
        deliver(ct, server, 1 << 30)
        assert sapp.eof
        assert st_.closed
        deliver(st_, client, 1 << 30)
        assert ct.closed
    finally:
        loop.close()


def test_bytes_arriving_while_the_app_paused_reading_wait_for_its_resume() -> None:
    """A receive can still complete after pause_reading() (it was in flight): its data is not delivered until
    resume_reading(), with the compiled engine (bytes fed in place) as with the stdlib one."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _CERT.configure_cert(sctx)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _CA.configure_trust(cctx)
    loop = asyncio.new_event_loop()
    try:
        capp, sapp = Sink(), Sink()
        client = TLSProtocol(loop, capp, cctx, None, False, "localhost")
        server = TLSProtocol(loop, sapp, sctx, None, True)
        ct, st_ = MemTransport(), MemTransport()
        ct.plain = True  # the server gets data_received(), the ring transport's path
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        for _ in range(100):
            if capp.transport is not None and sapp.transport is not None and not ct.buf and not st_.buf:
                break
            deliver(ct, server, 1 << 20)
            deliver(st_, client, 1 << 20)
        assert capp.transport is not None and sapp.transport is not None
        sapp.transport.pause_reading()
        assert not st_.reading
        capp.transport.write(b"held back")
        deliver(ct, server, 1 << 20)
        assert sapp.data == b""
        sapp.transport.resume_reading()
        loop.run_until_complete(asyncio.sleep(0))  # the resumed read runs from the loop
        assert sapp.data == b"held back"
    finally:
        loop.close()
