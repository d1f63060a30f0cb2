"""The receive-completion callback of ring reads, in both twins: the compiled RecvHook (uringws/ring/_ringc.c) that
the compiled ring calls, and RingSocketTransport._on_recv, its pure twin.

Most cases feed both the same synthetic CQEs, whose bytes are written into a spare buffer ring registered on a
ring of its own (nothing reads from it, so recycling a buffer there cannot confuse a kernel receive): the same
bytes must reach the protocol, the same buffers must go back, in the same order. The last tests use real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from uringws.loop import EventLoop, transports
from uringws.ring import bufring, fast, probe

_F_BUFFER = 1
_F_MORE = 2
_F_SOCK_NONEMPTY = 4
_F_BUF_MORE = 16

pytestmark = pytest.mark.skipif(
    not (probe.availability().usable and probe.kernel_version()[:2] >= (6, 0) and bufring.supported()),
    reason="ring reads need io_uring, Linux 6.0 and x86-64")

_INCREMENTAL = probe.kernel_version()[:2] >= (6, 12)


@pytest.fixture(params=["compiled", "pure"])
def twin(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and transports._RecvHook is None:
        pytest.skip(f"the compiled ring core is off ({fast._reason})")
    return str(request.param)


class Harness:
    """A transport on a poll-reading loop (no RECV of its own) whose ring reads are fed by hand from ``spare``."""

    def __init__(self, twin: str, protocol: asyncio.BaseProtocol, *, incremental: bool = False) -> None:
        self.loop = EventLoop(read_mode="poll")
        self.spare_ring = fast.RING_CLASS(8)
        self.spare = bufring.BufferRing(self.spare_ring, count=4, size=64, incremental=incremental)
        self.sock, self.peer = socket.socketpair()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda lp, ctx: self.errors.append(ctx))
        self.protocol = protocol
        self.base = struct.unpack("<QIH", self.spare._entries[0])[0]  # where buffer 0 is mapped
        self.tr = transports.RingSocketTransport(self.loop, self.sock, protocol)
        self.run()  # connection_made, then the (poll) read is armed
        self.tr._bufring = self.spare
        self.tr._read_stats = self.loop.read_stats
        self.cb: Callable[[int, int], Any] = (transports._RecvHook(self.tr, self.spare) if twin == "compiled"
                                              else self.tr._on_recv)

    def run(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0.01))

    def cqe(self, bid: int, offset: int, data: bytes, flags: int = _F_MORE) -> None:
        """Put ``data`` where the kernel would have (buffer ``bid`` at ``offset``), then complete with it."""
        start = bid * self.spare.size + offset
        self.spare.mm[start:start + len(data)] = data
        self.cb(len(data), flags | _F_BUFFER | bid << 16)

    def entry(self, tail: int) -> tuple[int, int, int]:
        """(addr, len, bid) of the ring entry published as number ``tail`` (0-based)."""
        off = (tail & self.spare._mask) << 4
        return struct.unpack_from("<QIH", self.spare._ring_mm, off)  # type: ignore[return-value]

    def close(self) -> None:
        self.tr._bufring = None
        self.tr.abort()
        self.run()
        self.peer.close()
        self.loop.close()
        self.spare.close()
        self.spare_ring.close()


class Recorder(asyncio.Protocol):
    def __init__(self, *, fail: BaseException | None = None, pause_on_first: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.fail = fail
        self.pause_on_first = pause_on_first
        self.transport: Any = None
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.pause_on_first and len(self.chunks) == 1:
            self.transport.pause_reading()
        if self.fail is not None:
            raise self.fail

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class Views(asyncio.BufferedProtocol):
    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.views: list[memoryview] = []
        self.got: list[bytes] = []
        self.fail = fail
        self.lost: list[BaseException | None] = []

    def get_buffer(self, sizehint: int) -> bytearray:
        raise AssertionError("ring reads lend views to received_view()")

    def buffer_updated(self, nbytes: int) -> None:
        raise AssertionError("ring reads lend views to received_view()")

    def received_view(self, view: memoryview) -> None:
        self.views.append(view)
        self.got.append(bytes(view))
        if self.fail is not None:
            raise self.fail

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


@pytest.fixture
def harness_factory(twin: str) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(protocol: asyncio.BaseProtocol, **kw: Any) -> Harness:
        h = Harness(twin, protocol, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_incremental_buffer_continues_at_its_offset(harness_factory: Callable[..., Harness]) -> None:
    """IORING_CQE_F_BUF_MORE: one buffer, three CQEs, each continuing where the last ended; only the last one
    (the kernel is done with the buffer) gives it back, as the entry of the same buffer."""
    p = Recorder()
    h = harness_factory(p, incremental=True)
    tail = h.spare._tail
    h.cqe(3, 0, b"hello", _F_MORE | _F_BUF_MORE)
    assert h.spare.offsets[3] == 5 and h.spare._tail == tail
    h.cqe(3, 5, b" world", _F_MORE | _F_BUF_MORE)
    assert h.spare.offsets[3] == 11 and h.spare._tail == tail
    h.cqe(3, 11, b"!", _F_MORE)  # fills the buffer: the kernel hands it back
    assert p.chunks == [b"hello", b" world", b"!"]
    assert h.spare.offsets[3] == 0
    assert h.spare._tail == tail + 1
    assert h.spare._tail_view[0] == (tail + 1) & 0xFFFF
    addr, length, bid = h.entry(tail)
    assert (addr, length, bid) == (h.base + 3 * 64, 64, 3)
    assert not h.errors


def test_whole_buffers_are_recycled_in_order(harness_factory: Callable[..., Harness]) -> None:
    p = Recorder()
    h = harness_factory(p)
    tail = h.spare._tail
    for i, bid in enumerate([2, 0, 3, 1, 2]):
        h.cqe(bid, 0, bytes([65 + i]) * (i + 1))
    assert p.chunks == [b"A", b"BB", b"CCC", b"DDDD", b"EEEEE"]
    assert h.spare._tail == tail + 5
    assert [h.entry(tail + i)[1:] for i in range(5)][-4:] == [(64, 0), (64, 3), (64, 1), (64, 2)]
    assert [h.entry(tail + i)[0] for i in range(5)] == [h.base + bid * 64 for bid in [2, 0, 3, 1, 2]]
    assert h.spare.offsets == [0, 0, 0, 0]


def test_data_received_error_is_fatal(harness_factory: Callable[..., Harness]) -> None:
    p = Recorder(fail=RuntimeError("protocol bug"))
    h = harness_factory(p)
    tail = h.spare._tail
    h.cqe(1, 0, b"boom")
    assert h.spare._tail == tail + 1  # the buffer went back before the call
    assert h.tr.is_closing()
    h.run()
    assert [ctx["message"] for ctx in h.errors] == ["Fatal error: protocol.data_received() call failed."]
    assert isinstance(h.errors[0]["exception"], RuntimeError) and h.errors[0]["transport"] is h.tr
    assert len(p.lost) == 1 and isinstance(p.lost[0], RuntimeError)
    h.cqe(2, 0, b"after")  # closing: discarded
    assert p.chunks == [b"boom"]


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt()])
def test_system_exit_propagates(harness_factory: Callable[..., Harness], exc: BaseException) -> None:
    p = Recorder(fail=exc)
    h = harness_factory(p)
    with pytest.raises(type(exc)):
        h.cqe(0, 0, b"x")
    assert not h.errors and not h.tr.is_closing()


def test_pause_in_data_received_holds_later_bytes(harness_factory: Callable[..., Harness]) -> None:
    p = Recorder(pause_on_first=True)
    h = harness_factory(p)
    h.cqe(0, 0, b"one")
    assert p.chunks == [b"one"] and not h.tr.is_reading()
    h.cqe(1, 0, b"two")  # still in flight when the pause came: held, not delivered
    h.cqe(2, 0, b"three")
    assert p.chunks == [b"one"]
    assert h.tr._held == [b"two", b"three"]
    h.tr.resume_reading()
    h.run()
    assert p.chunks == [b"one", b"two", b"three"]


def test_held_bytes_keep_their_order(harness_factory: Callable[..., Harness]) -> None:
    """Something held (bytes that came while paused) must go first: the hot path is not for them."""
    p = Recorder()
    h = harness_factory(p)
    h.tr._held.append(b"first")
    h.cqe(0, 0, b"second")
    assert p.chunks == [b"first", b"second"]


def test_sock_nonempty_waits_for_the_rest(harness_factory: Callable[..., Harness]) -> None:
    """Bytes with more already waiting in the socket (F_SOCK_NONEMPTY) wait for them (a data_received()
    protocol): not the hot path."""
    p = Recorder()
    h = harness_factory(p)
    h.cqe(0, 0, b"ab", _F_MORE | _F_SOCK_NONEMPTY)
    assert p.chunks == [] and h.tr._held == [b"ab"]
    h.cqe(1, 0, b"cd")
    h.run()
    assert b"".join(p.chunks) == b"abcd"


def test_received_view_is_lent_and_released(harness_factory: Callable[..., Harness]) -> None:
    p = Views()
    h = harness_factory(p, incremental=True)
    tail = h.spare._tail
    h.cqe(1, 0, b"abc", _F_MORE | _F_BUF_MORE)
    h.cqe(1, 3, b"defg", _F_MORE)
    assert p.got == [b"abc", b"defg"]
    for view in p.views:
        with pytest.raises(ValueError):
            view[0]  # released once the call returned
    assert h.spare._tail == tail + 1 and h.spare.offsets[1] == 0


def test_received_view_error_is_fatal(harness_factory: Callable[..., Harness]) -> None:
    p = Views(fail=ValueError("bad frame"))
    h = harness_factory(p)
    tail = h.spare._tail
    h.cqe(2, 0, b"xyz")
    assert h.spare._tail == tail + 1  # given back even though the call failed
    with pytest.raises(ValueError):
        p.views[0][0]
    h.run()
    assert [ctx["message"] for ctx in h.errors] == ["Fatal error: protocol.received_view() call failed."]
    assert len(p.lost) == 1 and isinstance(p.lost[0], ValueError)


class PlainViews(asyncio.Protocol):
    """A plain Protocol with received_view() (as uringws's WebSocket connection): ring reads come as lent views;
    data_received() only for poll-based reads."""

    def __init__(self, *, pause_on_first: bool = False) -> None:
        self.got: list[bytes] = []
        self.data: list[bytes] = []
        self.transport: Any = None
        self.pause_on_first = pause_on_first

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def received_view(self, view: memoryview) -> None:
        assert type(view) is memoryview
        self.got.append(bytes(view))
        if self.pause_on_first and len(self.got) == 1:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.data.append(data)


def test_plain_protocol_with_received_view_gets_ring_reads_as_views(harness_factory: Callable[..., Harness]) -> None:
    p = PlainViews(pause_on_first=True)
    h = harness_factory(p)
    tail = h.spare._tail
    h.cqe(0, 0, b"ab", _F_MORE | _F_SOCK_NONEMPTY)  # taken at once: no copy aside to join with the rest
    assert p.got == [b"ab"] and h.tr._held == [] and h.spare._tail == tail + 1
    h.cqe(1, 0, b"cd")  # paused by the first call: held, in order, then lent once reading resumes
    assert p.got == [b"ab"] and h.tr._held == [b"cd"]
    h.tr.resume_reading()
    h.run()
    assert p.got == [b"ab", b"cd"] and p.data == []


def test_poll_reads_still_use_data_received() -> None:
    loop = EventLoop(read_mode="poll")
    sock, peer = socket.socketpair()
    p = PlainViews()
    try:
        tr = transports.RingSocketTransport(loop, sock, p)
        peer.sendall(b"hello")
        loop.run_until_complete(asyncio.sleep(0.05))
        assert b"".join(p.data) == b"hello" and p.got == []
        tr.abort()
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        peer.close()
        loop.close()


def test_buffered_protocol_without_view_sink(harness_factory: Callable[..., Harness]) -> None:
    class Small(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(2)
            self.data = bytearray()

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.data += self.buf[:nbytes]

    p = Small()
    h = harness_factory(p)
    h.cqe(0, 0, b"hello", _F_MORE | _F_SOCK_NONEMPTY)  # a buffered protocol takes it at once anyway
    assert bytes(p.data) == b"hello"


def test_end_of_multishot_rearms(harness_factory: Callable[..., Harness]) -> None:
    p = Recorder()
    h = harness_factory(p)
    armed: list[int] = []
    h.tr._arm_read = lambda: armed.append(1)  # type: ignore[method-assign]
    h.tr._read_ud = 99
    ops = h.tr._ops
    restarts = h.loop.read_stats.restarts
    h.cqe(0, 0, b"last", 0)  # no F_MORE: the kernel ended the RECV
    assert p.chunks == [b"last"]
    assert h.tr._read_ud is None and h.tr._ops == ops - 1
    assert armed == [1] and h.loop.read_stats.restarts == restarts + 1
    h.tr._paused = True
    h.tr._ops += 1
    h.cqe(1, 0, b"", 0)  # EOF while paused: the slow path, held
    assert armed == [1] and h.tr._held == [0]
    h.tr._arm_read = transports.RingSocketTransport._arm_read.__get__(h.tr)  # type: ignore[method-assign]


# -- real sockets -----------------------------------------------------------------------------------------------
def _pending_callback(loop: EventLoop) -> Any:
    (tr,) = list(loop._transports.values())
    assert tr._read_ud is not None
    return loop._ring._pending[tr._read_ud]


async def _one_connection(loop: EventLoop, protocol: Recorder) -> tuple[asyncio.Server, socket.socket]:
    server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
    c = socket.create_connection(server.sockets[0].getsockname()[:2])
    while protocol.transport is None:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)
    return server, c


def test_compiled_ring_reads_through_the_hook() -> None:
    """With the compiled ring the RECV's callback is the C hook (else the pure twin silently took over); a
    subclass that replaces _on_recv keeps its own."""
    loop = EventLoop(read_mode="ring")
    try:
        p = Recorder()

        async def main() -> None:
            server, c = await _one_connection(loop, p)
            cb = _pending_callback(loop)
            if fast.available():
                assert type(cb) is fast._core.RecvHook and cb.transport is p.transport
                assert all(cb._direct)  # every state read is a slot read
            else:
                assert cb == p.transport._on_recv
            c.sendall(b"ping")
            while not p.chunks:
                await asyncio.sleep(0.005)
            assert p.chunks == [b"ping"]
            c.close()
            server.close()

        loop.run_until_complete(main())
    finally:
        loop.close()

    class Own(transports.RingSocketTransport):
        def _on_recv(self, res: int, flags: int) -> None:
            super()._on_recv(res, flags)

    loop = EventLoop(read_mode="ring", transport_class=Own)
    try:
        p = Recorder()

        async def main2() -> None:
            server, c = await _one_connection(loop, p)
            assert _pending_callback(loop) == p.transport._on_recv
            c.close()
            server.close()

        loop.run_until_complete(main2())
    finally:
        loop.close()


@pytest.mark.skipif(not _INCREMENTAL, reason="incremental buffer consumption needs Linux 6.12")
def test_many_messages_through_small_incremental_buffers() -> None:
    """Real CQEs: 300 messages, one at a time, through two 1 KiB incremental buffers (each filled and given back
    many times): every byte in order, the ring never dry."""
    loop = EventLoop(read_mode="ring", recv_incremental=True, recv_buffers=2, recv_buffer_size=1024)
    try:
        p = Recorder()

        async def main() -> None:
            server, c = await _one_connection(loop, p)
            sent = bytearray()
            for i in range(300):
                msg = bytes([i % 251]) * (1 + i * 7 % 90)
                c.sendall(msg)
                sent += msg
                while sum(map(len, p.chunks)) < len(sent):
                    await asyncio.sleep(0)
            assert b"".join(p.chunks) == bytes(sent)
            assert loop.read_stats.enobufs == 0 and loop.read_stats.poll_reads == 0
            assert loop._bufring._tail >= 2 + len(sent) // 1024
            c.close()
            server.close()

        loop.run_until_complete(main())
    finally:
        loop.close()
