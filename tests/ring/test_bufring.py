"""Provided buffer ring + multishot RECV on the real kernel: buffer ids, recycling, ENOBUFS without data loss, EOF,
and incremental consumption (one buffer in pieces, shared by several sockets)."""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import Iterator

import pytest

from uringws.ring import Ring, bufring
from uringws.ring.bufring import BufferRing
from uringws.ring.io_uring import (
    IORING_CQE_BUFFER_SHIFT,
    IORING_CQE_F_BUF_MORE,
    IORING_CQE_F_BUFFER,
    IORING_CQE_F_MORE,
    IORING_CQE_F_SOCK_NONEMPTY,
)
from uringws.ring.probe import kernel_version

from .conftest import reap_until, submit, tcp_pair

pytestmark = pytest.mark.skipif(kernel_version()[:2] < (6, 0) or not bufring.supported(),
                                reason="multishot RECV with provided buffer rings needs Linux 6.0 on x86-64")
needs_incremental = pytest.mark.skipif(kernel_version()[:2] < (6, 12),
                                       reason="incremental buffer consumption (IOU_PBUF_RING_INC) needs Linux 6.12")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    c, s = tcp_pair()
    try:
        yield c, s
    finally:
        c.close()
        s.close()


def _payload(cqes: list[tuple[int, int]], br: BufferRing, *, recycle: bool = True) -> bytes:
    """The bytes the data CQEs name, in order (and give their buffers back)."""
    out = bytearray()
    for res, flags in cqes:
        if res > 0:
            assert flags & IORING_CQE_F_BUFFER
            bid = flags >> IORING_CQE_BUFFER_SHIFT
            assert 0 <= bid < br.count
            out += br.view[bid * br.size:bid * br.size + res]
            if recycle:
                br.recycle(bid)
    return bytes(out)


def test_argument_checks(ring: Ring) -> None:
    with pytest.raises(ValueError):
        BufferRing(ring, count=3)
    with pytest.raises(ValueError):
        BufferRing(ring, count=4, size=0)
    with pytest.raises(ValueError):
        ring.recv_select(0, 70000, None)


def test_multishot_recv_then_eof(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    c, s = pair
    br = BufferRing(ring, count=8, size=64)
    try:
        _, got = submit(ring, "recv_select", s.fileno(), br.bgid)
        for i in range(20):  # more arrivals than buffers: recycling keeps the one request going
            chunk = bytes([i]) * (i + 1)
            c.sendall(chunk)
            want = len(chunk)
            reap_until(ring, lambda: len(_payload(got, br, recycle=False)) >= want)  # noqa: B023 (used at once)
            # The request is still armed (every data CQE so far had F_MORE).
            assert all(flags & IORING_CQE_F_MORE for _res, flags in got)
            assert _payload(got, br) == chunk
            got.clear()
        c.shutdown(socket.SHUT_WR)
        reap_until(ring, lambda: any(not flags & IORING_CQE_F_MORE for _r, flags in got))
        assert got[-1][0] == 0  # EOF ends the multishot request
        assert ring.in_flight == 0
    finally:
        br.close()


def test_enobufs_loses_nothing(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    """With one 16-byte buffer and no recycling, the request ends with -ENOBUFS; the bytes stay in the socket."""
    c, s = pair
    br = BufferRing(ring, count=1, size=16)
    try:
        data = bytes(range(200))
        c.sendall(data)
        received = bytearray()
        ends = []
        got: list[tuple[int, int]] = []

        def ended() -> bool:
            return any(not flags & IORING_CQE_F_MORE for _res, flags in got)

        def ended_or_all_read() -> bool:
            return ended() or len(received) + len(_payload(got, br, recycle=False)) == len(data)

        while len(received) < len(data):
            got.clear()
            ud = ring.recv_select(s.fileno(), br.bgid, lambda res, flags: got.append((res, flags)))
            reap_until(ring, ended_or_all_read)
            received += _payload(got, br)  # recycles: the next request has a buffer again
            if not ended():  # all read, still armed
                ring.cancel(ud)
                reap_until(ring, ended)
            ends.append(got[-1][0])
        assert bytes(received) == data
        assert ends.count(-errno.ENOBUFS) >= 2  # ran dry more than once, and each time nothing was lost
    finally:
        br.close()


def test_cancel_multishot(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    _c, s = pair
    br = BufferRing(ring, count=2, size=64)
    try:
        ud, got = submit(ring, "recv_select", s.fileno(), br.bgid)
        ring.submit()
        ring.cancel(ud)
        reap_until(ring, lambda: bool(got))
        assert got == [(-errno.ECANCELED, 0)]
    finally:
        br.close()


def test_close_unregisters_and_unmaps(ring: Ring) -> None:
    br = BufferRing(ring, count=4, size=32)
    assert br.registered
    br.close()
    assert not br.registered
    # The group id is free again: a new ring can register under it.
    br2 = BufferRing(ring, count=4, size=32)
    br2.close()
    with pytest.raises(ValueError):
        br.view[0]  # released


def _take_all(cqes: list[tuple[int, int]], br: BufferRing) -> list[tuple[int, int, int, bytes]]:
    """(bid, start, flags, bytes) of each data CQE, through take()/release() as the transport does it."""
    out = []
    for res, flags in cqes:
        if res > 0:
            assert flags & IORING_CQE_F_BUFFER
            bid, start = br.take(res, flags)
            out.append((bid, start, flags, bytes(br.view[start:start + res])))
            br.release(bid, flags)
    return out


def test_whole_buffer_ring_offsets_stay_zero(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    c, s = pair
    br = BufferRing(ring, count=4, size=64)
    try:
        assert not br.incremental
        _, got = submit(ring, "recv_select", s.fileno(), br.bgid)
        for i in range(6):
            c.sendall(bytes([i]) * 10)
            reap_until(ring, lambda: bool(got))
            pieces = _take_all(got, br)
            got.clear()
            # A 10-byte receive takes a whole buffer: every piece starts at its buffer's beginning.
            assert [(start, data) for _bid, start, _f, data in pieces] == [(pieces[0][0] * 64, bytes([i]) * 10)]
        assert br.offsets == [0] * 4
    finally:
        br.close()


@needs_incremental
def test_incremental_buffer_is_filled_in_pieces(ring: Ring, pair: tuple[socket.socket, socket.socket]) -> None:
    """Ten 100-byte arrivals share buffer 0 at consecutive offsets (F_BUF_MORE); the one that reaches its end
    finishes it (no F_BUF_MORE) and the rest of that arrival continues in buffer 1."""
    c, s = pair
    br = BufferRing(ring, count=2, size=1024, incremental=True)
    try:
        assert br.incremental and "incremental" in repr(br)
        _, got = submit(ring, "recv_select", s.fileno(), br.bgid)
        seen = []
        for i in range(10):
            c.sendall(bytes([i]) * 100)
            reap_until(ring, lambda: bool(got))
            seen += _take_all(got, br)
            got.clear()
        assert [(bid, start, bool(f & IORING_CQE_F_BUF_MORE), data) for bid, start, f, data in seen] == [
            (0, 100 * i, True, bytes([i]) * 100) for i in range(10)]
        c.sendall(b"x" * 100)
        reap_until(ring, lambda: sum(res for res, _f in got) == 100)
        last = _take_all(got, br)
        assert [(bid, start, len(data)) for bid, start, _f, data in last] == [(0, 1000, 24), (1, 1024, 76)]
        assert not last[0][2] & IORING_CQE_F_BUF_MORE  # buffer 0 is finished: release() gave it back
        assert last[0][2] & IORING_CQE_F_SOCK_NONEMPTY
        assert last[1][2] & IORING_CQE_F_BUF_MORE
        assert br.offsets == [0, 76]
        assert all(flags & IORING_CQE_F_MORE for _res, flags in got)  # still armed: buffer 0 came back
    finally:
        br.close()


@needs_incremental
def test_incremental_ring_shared_by_many_sockets(ring: Ring) -> None:
    """Eight connections receive interleaved random-sized chunks through one small incremental ring (so buffers
    are finished, given back and reused, and one buffer holds bytes of several sockets): every stream comes out
    exactly as sent, which holds only if the offsets tracked here match where the kernel put the bytes."""
    rng = random.Random(7)
    pairs = [tcp_pair() for _ in range(8)]
    br = BufferRing(ring, count=16, size=4096, incremental=True)
    try:
        cqes: list[tuple[int, int, int]] = []  # (connection, res, flags) in the order the ring posted them
        for i, (_c, s) in enumerate(pairs):
            ring.recv_select(s.fileno(), br.bgid, lambda res, flags, i=i: cqes.append((i, res, flags)))
        sent = [bytearray() for _ in pairs]
        received = [bytearray() for _ in pairs]
        owners: dict[int, set[int]] = {}
        for _round in range(60):
            for i in rng.sample(range(8), 5):
                chunk = rng.randbytes(rng.choice((1, 7, 100, 999, 3000, 5000)))
                pairs[i][0].sendall(chunk)
                sent[i] += chunk
            total = sum(map(len, sent))
            reap_until(ring, lambda: sum(map(len, received)) + sum(r for _i, r, _f in cqes) >= total)  # noqa: B023
            for i, res, flags in cqes:  # in ring order: a buffer's pieces must be taken in the order filled
                assert flags & IORING_CQE_F_MORE, f"a request ended: {res}"
                bid, start = br.take(res, flags)
                received[i] += br.view[start:start + res]
                br.release(bid, flags)
                owners.setdefault(bid, set()).add(i)
            cqes.clear()
        assert received == sent
        assert any(len(who) > 1 for who in owners.values())  # buffers really were shared between sockets
    finally:
        br.close()
        for c, s in pairs:
            c.close()
            s.close()


def test_tail_is_published_by_a_release_store_when_compiled(ring: Ring) -> None:
    """The compiled core's RingIndex stores the tail (a release store on any CPU); the pure path keeps a plain
    memoryview store, valid on x86-64 only (bufring.supported())."""
    from uringws.ring import fast

    br = BufferRing(ring, count=4, size=64)
    try:
        if fast.available():
            assert type(br._tail_view) is fast.RingIndex
        else:
            assert type(br._tail_view) is memoryview
        before = br._tail_view[0]
        br.recycle(1)
        assert br._tail_view[0] == (before + 1) & 0xFFFF == br._tail & 0xFFFF
        assert bytes(br._ring_mm[14:16]) == struct.pack("<H", br._tail & 0xFFFF)
    finally:
        br.close()
