"""A server-wide memory budget for received messages (sans-I/O, no threads, no locks).

``max_size`` bounds one message; nothing in it bounds the sum over connections: a few hundred clients each
sending one ``max_size`` message can hold many times the memory the machine has. One ``MemoryBudget`` per server
(per worker process) bounds that sum. Each connection's frame parser reserves bytes for a large or multi-frame
message from the moment its first frame header arrives (when the payload buffer is allocated) until the
application takes the message with ``recv()``; a message whose reservation would take the total above the limit
fails that connection alone with 1009 (message too big). A connection's output that waits to be written while a
``send()`` or ``drain()`` waits for it (an echo of a large message, a client that reads slowly) is counted too,
from the wait's start until the buffer drains: it is held whatever the limit, and it makes the reservations after
it fail instead. The deployment guide's "Memory budget" section says
what is counted and what is not.
"""

from __future__ import annotations

__all__ = ["BUDGET_MIN", "MemoryBudget"]

#: Messages smaller than this are not counted (most take the parser's compiled fast path, which handles whole
#: frames of < 64 KiB, and cost nothing extra): each connection holds at most ``max_queue`` of them and one being
#: received, so they are bounded per connection (17 x 64 KiB with the default ``max_queue``).
BUDGET_MIN = 64 * 1024


class MemoryBudget:
    """Bytes reserved by the messages being received by one server's connections, and held by their output waiting
    to be written (:meth:`hold`), against ``limit``.

    ``limit`` None counts without limiting. Used from the event loop thread only.
    """

    __slots__ = ("limit", "peak", "refused", "used")

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"max_memory must be >= 0 bytes or None, got {limit!r}")
        #: Largest total of reservations, bytes; None: unlimited.
        self.limit = limit
        #: Bytes reserved now, and the most ever reserved at once.
        self.used = 0
        self.peak = 0
        #: Reservations refused (each failed one connection with 1009).
        self.refused = 0

    def reserve(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) if that would exceed the limit."""
        used = self.used + n
        limit = self.limit
        if limit is not None and used > limit:
            self.refused += 1
            return False
        self.hold(n)
        return True

    def hold(self, n: int) -> None:
        """Count ``n`` bytes that are in use whatever the limit (a connection's output waiting to be written while
        its writing is paused): never refused; ``used`` may go over the limit, and reservations are then refused
        until the bytes are given back with :meth:`release`."""
        used = self.used + n
        self.used = used
        if used > self.peak:
            self.peak = used

    def release(self, n: int) -> None:
        """Give back ``n`` bytes reserved earlier."""
        used = self.used - n
        if used < 0:
            raise RuntimeError(f"memory budget released {n} bytes more than reserved ({self.used} in use)")
        self.used = used

    def __repr__(self) -> str:
        limit = "unlimited" if self.limit is None else f"{self.limit} bytes"
        return f"<MemoryBudget {self.used} of {limit} used, peak {self.peak}, {self.refused} refused>"
