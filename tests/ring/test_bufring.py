"""Provided buffer ring + multishot RECV on the real kernel: buffer ids, recycling, ENOBUFS without data loss, EOF."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from uringws.ring import Ring, bufring
from uringws.ring.bufring import BufferRing
from uringws.ring.io_uring import IORING_CQE_BUFFER_SHIFT, IORING_CQE_F_BUFFER, IORING_CQE_F_MORE
from uringws.ring.probe import kernel_version

from .conftest import reap_until, submit, tcp_pair

pytestmark = pytest.mark.skipif(kernel_version()[:2] < (6, 0) or not bufring.supported(),
                                reason="multishot RECV with provided buffer rings needs Linux 6.0 on x86-64")


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
