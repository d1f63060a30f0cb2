"""Each operation of Ring against real sockets, eventfds and timers (one behaviour per test)."""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import tempfile
import time

import pytest

from uringws.ring import Ring, sockaddr
from uringws.ring.io_uring import IORING_CQE_F_MORE, IOSQE_IO_LINK, POLLIN, POLLOUT

from .conftest import has_ipv6, reap_until, submit, tcp_pair


def _drain(sock: socket.socket, expected: int, timeout: float = 5.0) -> bytes:
    """Read exactly ``expected`` bytes, then check that nothing more arrives for a short while."""
    sock.setblocking(False)
    chunks: list[bytes] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < expected and time.monotonic() < deadline:
        select.select([sock], [], [], 0.05)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    # Loopback TCP may still hold bytes in the sender's queue until the window opens: give them a chance.
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        select.select([sock], [], [], 0.05)
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_nop(ring: Ring) -> None:
    ud, got = submit(ring, "nop")
    assert ring.in_flight == 1 and ring.unsubmitted == 1
    reap_until(ring, lambda: bool(got))
    assert got == [(0, 0)]
    assert ring.in_flight == 0 and ud > 0


def test_send_completes_short_and_reports_exactly_what_the_kernel_took(ring: Ring) -> None:
    client, server = tcp_pair(sndbuf=4096, rcvbuf=4096)
    with client, server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = os.urandom(4 << 20)
        _, got = submit(ring, "send", client.fileno(), payload)
        reap_until(ring, lambda: bool(got))  # the reader is idle: the kernel takes what fits and completes
        (res, _flags), = got
        assert 0 < res < len(payload), res
        received = _drain(server, res)
        assert len(received) == res
        assert received == payload[:res]


def test_send_recv_roundtrip(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(100)
        _, rgot = submit(ring, "recv", b.fileno(), buf)
        _, sgot = submit(ring, "send", a.fileno(), b"hello ring")
        reap_until(ring, lambda: bool(rgot and sgot))
        assert sgot == [(10, 0)]
        assert rgot[0][0] == 10 and bytes(buf[:10]) == b"hello ring"


def test_recv_into_memoryview_slice_and_eof(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        buf = bytearray(b"." * 16)
        _, got = submit(ring, "recv", b.fileno(), memoryview(buf)[4:8])
        a.sendall(b"abcdefgh")
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 4 and bytes(buf) == b"....abcd........"
        a.close()
        _, got2 = submit(ring, "recv", b.fileno(), bytearray(16))
        reap_until(ring, lambda: bool(got2))
        assert got2[0][0] == 4  # the rest of the data first
        _, got3 = submit(ring, "recv", b.fileno(), bytearray(16))
        reap_until(ring, lambda: bool(got3))
        assert got3[0][0] == 0  # then EOF


def test_sendmsg_gathers_buffers_in_order(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        parts = [b"first-", bytearray(b"second-"), memoryview(b"xxthird-xx")[2:-2], b"", b"fourth"]
        _, got = submit(ring, "sendmsg", a.fileno(), parts)
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == len(b"first-second-third-fourth")
        assert b.recv(100) == b"first-second-third-fourth"


def test_sendmsg_needs_a_buffer(ring: Ring) -> None:
    with pytest.raises(ValueError, match="at least one"):
        ring.sendmsg(0, [], None)
    assert ring.in_flight == 0


def _listener(family: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    s.listen(16)
    return s


def test_accept_single(ring: Ring) -> None:
    with _listener(socket.AF_INET) as lsock:
        _, got = submit(ring, "accept", lsock.fileno())
        ring.submit()
        with socket.create_connection(lsock.getsockname()) as c:
            reap_until(ring, lambda: bool(got))
            fd, flags = got[0]
            assert fd >= 0 and not flags & IORING_CQE_F_MORE
            with socket.socket(fileno=fd) as s:
                assert s.getpeername() == c.getsockname()
                assert os.get_inheritable(fd) is False  # SOCK_CLOEXEC by default
                c.sendall(b"x")
                assert s.recv(1) == b"x"


def test_accept_multishot(ring: Ring) -> None:
    with _listener(socket.AF_INET) as lsock:
        ud, got = submit(ring, "accept", lsock.fileno(), multishot=True)
        ring.submit()
        clients = [socket.create_connection(lsock.getsockname()) for _ in range(3)]
        try:
            reap_until(ring, lambda: len(got) >= 3)
            assert all(res >= 0 and flags & IORING_CQE_F_MORE for res, flags in got)
            peers = set()
            for fd, _ in got:
                with socket.socket(fileno=fd) as s:
                    peers.add(s.getpeername())
            assert peers == {c.getsockname() for c in clients}
            assert ring.in_flight == 1  # still armed
            _, cgot = submit(ring, "cancel", ud)
            reap_until(ring, lambda: bool(cgot) and len(got) == 4)
            assert cgot[0][0] == 0
            assert got[-1] == (-errno.ECANCELED, 0)
            assert ring.in_flight == 0
        finally:
            for c in clients:
                c.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_connect_inet(ring: Ring, family: int) -> None:
    if family == socket.AF_INET6 and not has_ipv6():
        pytest.skip("no IPv6 loopback")
    with _listener(family) as lsock, socket.socket(family, socket.SOCK_STREAM) as c:
        _, got = submit(ring, "connect", c.fileno(), sockaddr(family, lsock.getsockname()))
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 0
        s, peer = lsock.accept()
        with s:
            assert peer[:2] == c.getsockname()[:2]


def test_connect_unix_and_refused(ring: Ring) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lsock, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            lsock.bind(path)
            lsock.listen(1)
            _, got = submit(ring, "connect", c.fileno(), sockaddr(socket.AF_UNIX, path))
            reap_until(ring, lambda: bool(got))
            assert got[0][0] == 0
            s, _ = lsock.accept()
            with s:
                c.sendall(b"u")
                assert s.recv(1) == b"u"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c2:
            _, got2 = submit(ring, "connect", c2.fileno(), sockaddr(socket.AF_UNIX, path))  # nobody listens
            reap_until(ring, lambda: bool(got2))
            assert got2[0][0] == -errno.ECONNREFUSED
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c3:
            _, got3 = submit(ring, "connect", c3.fileno(), sockaddr(socket.AF_UNIX, path))
            reap_until(ring, lambda: bool(got3))
            assert got3[0][0] == -errno.ENOENT


def test_connect_wants_encoded_address(ring: Ring) -> None:
    with pytest.raises(TypeError, match="sockaddr"):
        ring.connect(0, ("127.0.0.1", 80), None)  # type: ignore[arg-type]
    assert ring.in_flight == 0


def test_sockaddr_encodings() -> None:
    v4 = sockaddr(socket.AF_INET, ("127.0.0.1", 0x1234))
    assert len(v4) == 16 and v4[2:4] == b"\x12\x34" and v4[4:8] == bytes([127, 0, 0, 1])
    v6 = sockaddr(socket.AF_INET6, ("::1", 80, 0, 0))
    assert len(v6) == 28 and v6[8:24] == socket.inet_pton(socket.AF_INET6, "::1")
    assert sockaddr(socket.AF_UNIX, "/x").endswith(b"/x\0")
    assert sockaddr(socket.AF_UNIX, b"\0abstract").endswith(b"\0abstract")  # abstract: no terminator
    with pytest.raises(OSError):
        sockaddr(socket.AF_UNIX, "x" * 200)
    with pytest.raises(ValueError):
        sockaddr(socket.AF_PACKET, ("lo", 0))


def test_shutdown_write_side(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        _, got = submit(ring, "shutdown", a.fileno(), socket.SHUT_WR)
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 0
        assert b.recv(10) == b""  # EOF seen by the peer
        a.setblocking(False)
        b.sendall(b"still open the other way")
        assert a.recv(100) == b"still open the other way"


def test_close_fd(ring: Ring) -> None:
    a, b = socket.socketpair()
    with b:
        fd = a.detach()
        _, got = submit(ring, "close_fd", fd)
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 0
        with pytest.raises(OSError) as exc:
            os.fstat(fd)
        assert exc.value.errno == errno.EBADF
        assert b.recv(1) == b""


def test_async_cancel_pending_recv(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        ud, rgot = submit(ring, "recv", b.fileno(), bytearray(10))
        ring.wait(0)
        assert not rgot
        _, cgot = submit(ring, "cancel", ud)
        reap_until(ring, lambda: bool(rgot and cgot))
        assert rgot == [(-errno.ECANCELED, 0)]
        assert cgot[0][0] == 0
        _, missing = submit(ring, "cancel", ud)  # nothing left to cancel
        reap_until(ring, lambda: bool(missing))
        assert missing[0][0] == -errno.ENOENT


def test_timeout_expires(ring: Ring) -> None:
    t0 = time.monotonic()
    _, got = submit(ring, "timeout", 0.05)
    reap_until(ring, lambda: bool(got))
    assert got[0][0] == -errno.ETIME
    assert time.monotonic() - t0 >= 0.04


def test_timeout_count_based(ring: Ring) -> None:
    _, tgot = submit(ring, "timeout", 10.0, count=2)
    nops = [submit(ring, "nop")[1] for _ in range(2)]
    t0 = time.monotonic()
    reap_until(ring, lambda: bool(tgot), timeout=3)
    assert tgot[0][0] == 0  # completed by the count, long before 10 s
    assert time.monotonic() - t0 < 3
    reap_until(ring, lambda: all(nops))


def test_link_timeout_cancels_a_recv_that_never_gets_data(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        _, rgot = submit(ring, "recv", b.fileno(), bytearray(10), sqe_flags=IOSQE_IO_LINK)
        _, lgot = submit(ring, "link_timeout", 0.05)
        reap_until(ring, lambda: bool(rgot and lgot))
        assert rgot == [(-errno.ECANCELED, 0)]
        assert lgot[0][0] == -errno.ETIME


def test_link_timeout_not_fired_when_linked_op_completes(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"data")
        _, rgot = submit(ring, "recv", b.fileno(), bytearray(10), sqe_flags=IOSQE_IO_LINK)
        _, lgot = submit(ring, "link_timeout", 5.0)
        reap_until(ring, lambda: bool(rgot and lgot))
        assert rgot[0][0] == 4
        assert lgot[0][0] == -errno.ECANCELED


def test_link_timeout_needs_a_linked_op(ring: Ring) -> None:
    from uringws.ring import RingError

    with pytest.raises(RingError):
        ring.link_timeout(1.0)
    ring.nop(None)
    with pytest.raises(RingError):
        ring.link_timeout(1.0)


# ------------------------------------------------------------------------------------------------ link chains
# The kernel ends a link chain at the end of each submission: half a chain handed over would run as a chain of
# its own, and the rest, queued later, would no longer wait for it. Both rings hold an open chain back instead.
def test_submit_and_wait_hold_back_an_open_link_chain(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        order: list[tuple[str, int]] = []
        ring.nop(lambda res, f: order.append(("before", res)))  # queued before the chain: goes at once
        ring.recv(b.fileno(), bytearray(10), lambda res, f: order.append(("recv", res)), sqe_flags=IOSQE_IO_LINK)
        assert ring.submit() == 1
        assert ring.unsubmitted == 1  # the chain's RECV is still queued
        reap_until(ring, lambda: bool(order))
        assert ring.wait(0.02) == 0 and ring.unsubmitted == 1
        ring.nop(lambda res, f: order.append(("nop", res)))  # closes the chain: RECV -> NOP
        ring.wait(0.02)
        assert ring.unsubmitted == 0
        assert order == [("before", 0)]  # the NOP waits for the RECV it is linked to, which waits for data
        a.sendall(b"data")
        reap_until(ring, lambda: len(order) == 3)
        assert order == [("before", 0), ("recv", 4), ("nop", 0)]


def test_a_chain_cut_by_a_failing_link_cancels_its_rest(ring: Ring) -> None:
    """The chain closed after a submit() is still one chain: a failed head cancels the SQE that closed it."""
    _, bad = submit(ring, "send", 999_999, b"x", sqe_flags=IOSQE_IO_LINK)  # -EBADF
    ring.submit()
    ring.wait(0.01)
    assert not bad  # not submitted yet: the chain is open
    _, tail = submit(ring, "nop")
    reap_until(ring, lambda: bool(bad and tail))
    assert bad[0][0] == -errno.EBADF
    assert tail[0][0] == -errno.ECANCELED


def test_wait_with_a_timeout_sqe_refuses_an_open_chain(ring: Ring) -> None:
    """Kernels without EXT_ARG bound a wait with a TIMEOUT SQE, which would join the open chain: refused."""
    from uringws.ring import RingError

    a, b = socket.socketpair()
    with a, b:
        ring._ext_arg = False
        _, rgot = submit(ring, "recv", b.fileno(), bytearray(10), sqe_flags=IOSQE_IO_LINK)
        tail = ring._sq_tail
        with pytest.raises(RingError, match="link chain"):
            ring.wait(0.01)
        assert ring._sq_tail == tail  # no TIMEOUT was added to the chain
        assert ring.wait(0) == 0  # without a timeout: no TIMEOUT SQE, nothing to refuse
        ring.nop(None)
        a.sendall(b"x")
        reap_until(ring, lambda: bool(rgot))
        assert rgot[0][0] == 1


def test_poll_add_oneshot(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        _, out = submit(ring, "poll_add", a.fileno(), POLLOUT)
        _, inp = submit(ring, "poll_add", b.fileno(), POLLIN)
        reap_until(ring, lambda: bool(out))
        assert out[0][0] & POLLOUT and not out[0][1] & IORING_CQE_F_MORE
        ring.wait(0.02)
        assert not inp  # nothing to read yet
        a.send(b"!")
        reap_until(ring, lambda: bool(inp))
        assert inp[0][0] & POLLIN
        assert ring.in_flight == 0


def test_poll_add_multishot_and_poll_remove(ring: Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        ud, got = submit(ring, "poll_add", b.fileno(), POLLIN, multishot=True)
        ring.wait(0)
        for i in range(3):
            a.send(b"x")
            reap_until(ring, lambda i=i: len(got) > i)  # type: ignore[misc]
            assert got[i][0] & POLLIN and got[i][1] & IORING_CQE_F_MORE
            b.recv(10)  # consume, so the next send is a new wake-up
        assert ring.in_flight == 1
        _, rgot = submit(ring, "poll_remove", ud)
        reap_until(ring, lambda: bool(rgot) and not got[-1][1] & IORING_CQE_F_MORE)
        assert rgot[0][0] == 0
        assert got[-1] == (-errno.ECANCELED, 0)
        assert ring.in_flight == 0


def test_read_eventfd(ring: Ring) -> None:
    efd = os.eventfd(0)
    try:
        buf = bytearray(8)
        _, got = submit(ring, "read", efd, buf)
        ring.wait(0)
        assert not got
        os.eventfd_write(efd, 5)
        reap_until(ring, lambda: bool(got))
        assert got[0][0] == 8
        assert struct.unpack("=Q", buf)[0] == 5
    finally:
        os.close(efd)


def test_callbacks_may_be_none_and_ops_still_complete(ring: Ring) -> None:
    for _ in range(5):
        ring.nop(None)
    assert ring.in_flight == 5
    reap_until(ring, lambda: ring.in_flight == 0)


def test_a_reused_sq_slot_keeps_no_field_of_its_last_sqe(ring_cls: type[Ring]) -> None:
    """POLL_ADD in the SQ slot a buffer-select RECV used: a stale buf_group there made the kernel answer -EINVAL."""
    with ring_cls(1) as ring:  # one SQ slot: every SQE reuses it
        assert ring.sq_entries == 1
        client, server = tcp_pair()
        with client, server:
            ud, got = submit(ring, "recv_select", server.fileno(), 5, multishot=False)
            ring.submit()
            ring.wait(0.05)  # no buffer group 5: -ENOBUFS at once, or a wait for data that we cancel
            if not got:
                ring.cancel(ud, None)
            reap_until(ring, lambda: bool(got))
            _, polled = submit(ring, "poll_add", client.fileno(), POLLOUT)
            reap_until(ring, lambda: bool(polled))
            res = polled[0][0]
            assert res > 0 and res & POLLOUT, f"POLL_ADD in a reused slot completed with {res}"


@pytest.mark.parametrize("prep", ["nop", "send", "recv", "poll_add", "poll_add_multishot", "recv_select", "shutdown",
                                  "timeout", "cancel", "read"])
def test_every_prep_writes_the_whole_sqe(ring: Ring, prep: str) -> None:
    """Whatever an operation does not set is zero in its SQE, however dirty the slot was (bytes 40-63 included)."""
    client, server = tcp_pair()
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        slot = (ring._sq_tail & ring._sq_mask) * 64
        ring._sqes[slot:slot + 64] = b"\xff" * 64
        calls = {
            "nop": lambda: ring.nop(None),
            "send": lambda: ring.send(client.fileno(), b"x", None),
            "recv": lambda: ring.recv(server.fileno(), bytearray(1), None),
            "poll_add": lambda: ring.poll_add(client.fileno(), POLLOUT, None),
            "poll_add_multishot": lambda: ring.poll_add(client.fileno(), POLLOUT, None, multishot=True),
            "recv_select": lambda: ring.recv_select(server.fileno(), 0, None, multishot=False),
            "shutdown": lambda: ring.shutdown(client.fileno(), socket.SHUT_WR, None),
            "timeout": lambda: ring.timeout(0.001, None),
            "cancel": lambda: ring.cancel(12345, None),
            "read": lambda: ring.read(efd, bytearray(8), None),
        }
        calls[prep]()
        assert bytes(ring._sqes[slot + 40:slot + 64]) == bytes(24)
        ring.close()
    finally:
        client.close()
        server.close()
        os.close(efd)
