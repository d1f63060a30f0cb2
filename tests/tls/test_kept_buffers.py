"""Busy connections on the compiled TLS engine keep OpenSSL's record buffers; idle ones give them back.

CPython's SSLContext sets ``SSL_MODE_RELEASE_BUFFERS``: OpenSSL frees a connection's read buffer after each record
and its write buffer after each write, and allocates them again for the next one. The engine clears the mode on a
connection that makes ``KEEP_MIN_OPS`` reads or writes within ``KEEP_WINDOW`` seconds (at most ``KEEP_MAX`` of
them at once), and sets it again, freeing the buffers, once that connection has been idle for ``KEEP_WINDOW``
(checked when another connection reads or writes). These tests drive real engine pairs in memory, on TLS 1.2
unless they say otherwise: a TLS 1.3 connection whose engine opens and seals its own records leaves OpenSSL's
record buffers unused and keeps none.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType

import pytest

from uringws.tls import engine as engine_mod

from .test_engine_memory import _malloc_in_use
from .test_engine_parity import Client, Server, client_ctx, connect, server_ctx

pytestmark = pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")

MESSAGE = b"m" * 64


def _engine_module() -> ModuleType:
    return importlib.import_module("uringws.tls._engine")


def _exchange(client: Client, server: Server, rounds: int) -> None:
    """``rounds`` echoes of one small record: a read and a write on the server engine each."""
    for _ in range(rounds):
        client.obj.write(MESSAGE)
        assert server.deliver(client.outgoing.read()) == (MESSAGE, "want-read")
        server.obj.write(MESSAGE)
        client.incoming.write(server.take())
        assert client.obj.read(len(MESSAGE)) == MESSAGE


def _releasers(engine_module: ModuleType) -> list[tuple[Client, Server]]:
    """Fresh connections enough to give back the buffers of every connection that keeps them now, each by
    reads and writes too few to keep buffers itself (made before a measurement: a handshake allocates)."""
    per = (engine_module.KEEP_MIN_OPS - 1) // 2  # echoes, two operations each
    count = engine_module.kept_buffers() // (2 * per) + 1
    return [connect("compiled", server_ctx(), client_ctx()) for _ in range(count)]


def _release_idle(engine_module: ModuleType, releasers: list[tuple[Client, Server]]) -> None:
    """Wait out the window; then each read and write of the releasers gives back the buffers of the least
    recently used idle connection (this test's, and any an earlier test left alive)."""
    time.sleep(engine_module.KEEP_WINDOW + 0.2)
    for pair in releasers:
        _exchange(*pair, (engine_module.KEEP_MIN_OPS - 1) // 2)
        assert not pair[1].obj._engine.buffers_kept


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_a_busy_connection_keeps_its_buffers_until_it_is_idle(version: str) -> None:
    if version == "TLSv1_3" and engine_mod.OWN_RECORDS:
        pytest.skip("own records: nothing to keep (test_own_records_keep_no_buffers)")
    eng_mod = _engine_module()
    client, server = connect("compiled", server_ctx(version), client_ctx())
    engine = server.obj._engine
    # A handshake and an upgrade's request and response: a few operations, not busy.
    _exchange(client, server, 1)
    assert not engine.buffers_kept
    _exchange(client, server, eng_mod.KEEP_MIN_OPS)
    assert engine.buffers_kept
    # Kept buffers work as before, and freeing them gives the memory back: two buffers of about 17 KB (measured
    # about 48 KB with the rest of the releasers' work; 14 KB when the release left the buffers to OpenSSL).
    _exchange(client, server, 3)
    releasers = _releasers(eng_mod)
    held = _malloc_in_use()
    _release_idle(eng_mod, releasers)
    assert not engine.buffers_kept
    freed = held - _malloc_in_use()
    if held:  # 0 under valgrind, whose malloc keeps no glibc statistics
        assert freed > 32 * 1024, f"{freed} B given back"
    # Released, the connection still carries data, and becomes busy again like any other.
    _exchange(client, server, eng_mod.KEEP_MIN_OPS)
    assert engine.buffers_kept


def test_at_most_keep_max_connections_keep_buffers() -> None:
    eng_mod = _engine_module()
    before = eng_mod.kept_buffers()
    pairs = [connect("compiled", server_ctx("TLSv1_2"), client_ctx()) for _ in range(eng_mod.KEEP_MAX + 4)]
    for pair in pairs:
        _exchange(*pair, eng_mod.KEEP_MIN_OPS)
    kept = [server.obj._engine.buffers_kept for _, server in pairs]
    assert eng_mod.kept_buffers() == eng_mod.KEEP_MAX
    assert sum(kept) == eng_mod.KEEP_MAX - before
    assert not any(kept[eng_mod.KEEP_MAX:])  # the last ones found the list full
    # A connection that goes away leaves the list (its engine is freed with it).
    del pairs, kept
    assert eng_mod.kept_buffers() == before


def test_small_output_of_a_busy_connection_is_copied_out_and_stays_intact() -> None:
    # A busy connection's small output is copied out of a buffer the engine writes the next records into: what
    # outgoing.read() returned must not change when it does, and every record must still decrypt in order.
    eng_mod = _engine_module()
    client, server = connect("compiled", server_ctx("TLSv1_2"), client_ctx())
    _exchange(client, server, eng_mod.KEEP_MIN_OPS)
    assert server.obj._engine.buffers_kept
    taken = []
    for i in range(4):
        server.obj.write(bytes([65 + i]) * 50)
        out = server.take()
        taken.append((out, bytes(bytearray(out))))  # the object handed out, and what it held then
    big = b"L" * 5000  # over the copy limit: handed over as before
    server.obj.write(big)
    taken.append((server.take(), b""))
    for out, then in taken[:4]:
        assert out == then
    for out, _ in taken:
        client.incoming.write(out)
    got = b"".join(client.obj.read(6000) for _ in range(5))
    assert got == b"A" * 50 + b"B" * 50 + b"C" * 50 + b"D" * 50 + big


@pytest.mark.skipif(not engine_mod.OWN_RECORDS, reason="URINGWS_OWN_RECORDS=0")
def test_own_records_keep_no_buffers_and_still_release_others() -> None:
    eng_mod = _engine_module()
    client, server = connect("compiled", server_ctx(), client_ctx())
    assert server.obj._engine._own_writes()
    _exchange(client, server, 2 * eng_mod.KEEP_MIN_OPS)
    assert not server.obj._engine.buffers_kept
    # A busy TLS 1.2 connection keeps its buffers; the TLS 1.3 one's traffic gives them back once it is idle.
    old_client, old_server = connect("compiled", server_ctx("TLSv1_2"), client_ctx())
    _exchange(old_client, old_server, eng_mod.KEEP_MIN_OPS)
    assert old_server.obj._engine.buffers_kept
    time.sleep(eng_mod.KEEP_WINDOW + 0.2)
    for _ in range(eng_mod.kept_buffers() + 1):
        _exchange(client, server, 1)
    assert not old_server.obj._engine.buffers_kept
