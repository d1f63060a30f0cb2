"""Record tracking and the write backlog, step by step over in-memory transports.

The TLS layer follows record boundaries in what it receives so it skips SSL_read while only part of a record
has arrived (each such read could only raise SSLWantReadError, ~2 us), but never skips when it cannot follow
the framing (the error must come at once). Plaintext that OpenSSL refuses during a renegotiation step keeps its
place, and coalesced plaintext is encrypted as soon as a record's worth waits.
"""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from uringws.tls import engine as engine_mod
from uringws.tls.protocol import COALESCE_LIMIT

from .test_inmemory import deliver
from .test_tls_coalesce import Pair


class WantReadCounter(ssl.SSLObject):
    """Counts the reads that found no complete record (the ones the layer means to skip)."""

    wasted = 0

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        try:
            return super().read(len, buffer)
        except ssl.SSLWantReadError:
            WantReadCounter.wasted += 1
            raise


class Renegotiating(ssl.SSLObject):
    """While ``refuse`` is set, write() asks for the peer first, as OpenSSL does during a TLS 1.2 renegotiation."""

    refuse = False
    refused = 0

    def write(self, data: Any) -> int:
        if Renegotiating.refuse:
            Renegotiating.refused += 1
            raise ssl.SSLWantReadError("renegotiation step")
        return super().write(data)


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
def test_no_read_while_only_part_of_a_record_has_arrived(tls13: bool) -> None:
    p = Pair(tls13=tls13, sslobject_class=WantReadCounter)
    try:
        message = bytes(range(256)) * 40
        p.capp.transport.write(message)
        p.selector.run_hooks()  # the client's loop coalesces too
        record = len(p.ct.buf)
        assert p.ct.buf[0] == 23 and record == 5 + ((p.ct.buf[3] << 8) | p.ct.buf[4])  # one record
        WantReadCounter.wasted = 0
        deliver(p.ct, p.server, 105)  # the header and the first 100 bytes of the body
        assert WantReadCounter.wasted == 0
        deliver(p.ct, p.server, 1000)  # more of the body only (the inline tracking path)
        assert WantReadCounter.wasted == 0
        assert p.sapp.data == b""
        deliver(p.ct, p.server, record)
        assert p.sapp.data == message
        assert WantReadCounter.wasted == 0
    finally:
        p.close()


def test_input_that_is_not_tls_framing_fails_at_once() -> None:
    """A header OpenSSL rejects (length above the record limit) is read at once, not held as a partial record."""
    p = Pair()
    try:
        p.server.data_received(bytes([23, 3, 3, 0xFF, 0xFF]) + bytes(10))
        assert p.st.closed
        assert p.sapp.transport.is_closing()
    finally:
        p.close()


def test_plaintext_refused_by_a_renegotiation_step_keeps_its_place() -> None:
    p = Pair(sslobject_class=Renegotiating)
    try:
        first, second = b"1" * 10_000, b"2" * 10_000  # each coalesced; too large to share a record
        Renegotiating.refuse, Renegotiating.refused = True, 0
        p.writer.write(first)
        p.writer.write(second)  # a record's worth waits: encryption starts, the first write is refused
        assert Renegotiating.refused == 1
        Renegotiating.refuse = False
        p.selector.run_hooks()
        p.to_client()
        assert p.capp.data == first + second
    finally:
        Renegotiating.refuse = False
        p.close()


def test_plaintext_refused_at_the_hook_waits_for_the_peer_and_keeps_its_place() -> None:
    """The hook's one-record path (the common case) refused by a renegotiation step: nothing is lost or reordered;
    the backlog goes once the peer has been heard from."""
    p = Pair(sslobject_class=Renegotiating)
    try:
        Renegotiating.refuse, Renegotiating.refused = True, 0
        p.writer.write(b"one")
        p.writer.write(b"two")
        p.selector.run_hooks()
        assert Renegotiating.refused == 1
        assert p.writer.get_write_buffer_size() == 6  # still waiting, as plaintext
        Renegotiating.refuse = False
        p.writer.write(b"three")  # behind them
        p.capp.transport.write(b"hello")  # the peer speaks: the server reads, then encrypts what waits
        p.selector.run_hooks()
        deliver(p.ct, p.server, 1 << 30)
        p.selector.run_hooks()
        p.to_client()
        assert p.sapp.data == b"hello"
        assert p.capp.data == b"onetwothree"
    finally:
        Renegotiating.refuse = False
        p.close()


def test_coalesced_plaintext_is_encrypted_once_a_record_is_waiting() -> None:
    """Small writes wait for the loop's hook only until a record's worth (COALESCE_LIMIT) has gathered."""
    p = Pair()
    try:
        part = b"a" * (COALESCE_LIMIT // 2)
        p.writer.write(part)
        assert p.st.writes == 0
        p.writer.write(part)
        assert p.st.writes == 1  # encrypted within write(), not at the hook
        p.to_client()
        assert p.capp.data == part * 2
        assert p.writer.get_write_buffer_size() == 0
        p.selector.run_hooks()
    finally:
        p.close()


@pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")
@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
@pytest.mark.parametrize("part", [1000, 3000])
def test_a_large_part_of_a_record_goes_to_openssl_not_aside(tls13: bool, part: int) -> None:
    """Compiled engine: the incomplete record after a complete one; more than 2 KiB of it are read into OpenSSL's
    record buffer at once (no incoming.keep() copy), less waits in the engine, unread (no read that must fail)."""
    p = Pair(tls13=tls13)
    try:
        assert p.server._lend_in is not None  # the compiled engine serves this connection
        messages = [bytes(range(256)) * 60, bytes(range(255, -1, -1)) * 60]
        records = []
        for m in messages:
            p.capp.transport.write(m)
            p.selector.run_hooks()
            records.append(len(p.ct.buf) - sum(records))
        assert records[0] == 5 + ((p.ct.buf[3] << 8) | p.ct.buf[4])  # one record each
        # One chunk, whatever buffer get_buffer() would lend (a private one is smaller than these bytes).
        chunk = bytes(p.ct.buf[: records[0] + part])
        del p.ct.buf[: len(chunk)]
        p.server.data_received(chunk)
        assert p.sapp.data == messages[0]
        # (A TLS 1.3 engine that opens its own records keeps the part: it is joined with its rest, not absorbed.)
        own = tls13 and engine_mod.OWN_RECORDS
        assert p.server._incoming.pending == (0 if part > 2048 and not own else part)
        deliver(p.ct, p.server, records[1])
        assert p.sapp.data == b"".join(messages)
    finally:
        p.close()
