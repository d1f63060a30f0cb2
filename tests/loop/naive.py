"""A deliberately naive sender (docs/design.md §5): the bug this project exists to avoid, kept as a test fixture only.

Every write() becomes its own SEND, submitted at once, so several are in flight per socket (optionally chained
with IOSQE_IO_LINK / IOSQE_IO_HARDLINK, which does not order a stream either), and the remainder of a short
completion is dropped, exactly like a proactor-style transport that ignores the byte count. Plugged into the
integrity tests in place of `RingSocketTransport`, it must make them fail.
"""

from __future__ import annotations

import socket
from typing import Any

from uringws.loop.transports import RingSocketTransport
from uringws.ring.io_uring import IOSQE_IO_HARDLINK, IOSQE_IO_LINK


class NaiveSendTransport(RingSocketTransport):
    """Several sends in flight per socket, remainders dropped."""

    sqe_flags = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._naive_inflight = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._conn_lost or self._sock is None:
            return
        data = bytes(data)
        if not data:
            return
        self._naive_inflight += 1
        self._ops += 1
        self._stats.sends += 1
        size = len(data)
        self._ring.send(self._sock_fd, data, lambda res, flags: self._naive_done(res, size),
                        flags=socket.MSG_NOSIGNAL, sqe_flags=self.sqe_flags)

    def _naive_done(self, res: int, size: int) -> None:
        self._ops -= 1
        self._naive_inflight -= 1
        if 0 <= res < size:
            self._stats.short_sends += 1  # ...and the rest of the buffer is silently forgotten
        if self._release_wanted:
            self._maybe_release()
            return
        if not self._naive_inflight and self._closing and not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if not self._naive_inflight and not self._conn_lost:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)


class LinkedNaiveSendTransport(NaiveSendTransport):
    """The same, with every send soft-linked to the next (links do not survive a short send's remainder)."""

    sqe_flags = IOSQE_IO_LINK


class HardlinkedNaiveSendTransport(NaiveSendTransport):
    sqe_flags = IOSQE_IO_HARDLINK
