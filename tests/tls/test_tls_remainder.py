"""A large write that the TCP transport takes only part of: its unencrypted rest stays ahead of later writes.

The TLS layer encrypts writes above WRITE_CHUNK piece by piece and stops when the transport pauses it; the rest is
queued in front of the plaintext backlog, since it precedes anything written after it. Deterministic, in memory:
the transport pauses above ``high`` bytes, so each large write is cut after its first piece, twice in a row
(once when written, once when the backlog is drained).
"""

from __future__ import annotations

import pytest

from uringws.tls.protocol import WRITE_CHUNK

from .test_tls_coalesce import Pair


def pattern(tag: int, n: int) -> bytes:
    return bytes((tag * 7 + i) % 251 for i in range(997)) * (n // 997) + bytes(n % 997)


def first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
@pytest.mark.parametrize("hook", [False, True], ids=["plain-loop", "coalescing-loop"])
def test_rest_of_a_partly_encrypted_write_goes_before_later_writes(tls13: bool, hook: bool) -> None:
    p = Pair(tls13=tls13, hook=hook, high=WRITE_CHUNK // 2)
    try:
        big = pattern(1, 2 * WRITE_CHUNK + 90_000)  # three pieces: the transport pauses after each
        later = [pattern(2, 500), pattern(3, 20_000), pattern(4, WRITE_CHUNK + 1)]
        p.writer.write(big)
        assert p.st.paused, "the first piece should have paused the transport"
        for data in later:
            p.writer.write(data)
        # The client takes everything the server hands down; each drain resumes the server, which encrypts
        # the next piece of the backlog and pauses again.
        for _ in range(100):
            if not (p.st.buf or p.selector.before_wait):
                break
            p.to_client()
            p.selector.run_hooks()
        expected = big + b"".join(later)
        got = bytes(p.capp.data)
        assert len(got) == len(expected)
        assert got == expected, f"stream differs from byte {first_difference(got, expected)}"
        assert p.writer.get_write_buffer_size() == 0
    finally:
        p.close()
