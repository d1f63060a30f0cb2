"""Own TLS 1.3 records are sealed and opened through the provider's functions directly, or through EVP: the same.

The compiled engine protects its records with the AEAD implementation that ``EVP_CIPHER_fetch`` chose, calling the
provider's functions directly where it can (``_engine._aead_paths()`` says "provider"), and through EVP otherwise
(``_engine._set_aead_direct(False)`` forces it). Both must produce the records that the RFC's construction does (the
``cryptography`` AEADs of ``test_ssl_freed.Direction``), open the peer's, reject a forged tag, follow a KeyUpdate,
and keep each connection's key apart while the process-wide contexts are shared by many connections.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from uringws.tls import engine as engine_mod

from .test_ssl_freed import KINDS, SCRIPTS, SUITES, Peer

pytestmark = pytest.mark.skipif(
    not engine_mod.available() or not engine_mod.OWN_RECORDS, reason="compiled TLS engine or own records not in use"
)

_engine = engine_mod._engine if engine_mod.available() else None


@contextmanager
def aead_direct(flag: bool) -> Iterator[None]:
    """Own records through the provider directly (True) or through EVP (False) inside the block."""
    assert _engine is not None
    was = _engine._set_aead_direct(flag)
    try:
        yield
    finally:
        _engine._set_aead_direct(was)


@pytest.fixture(params=["provider", "evp"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    with aead_direct(request.param == "provider"):
        yield request.param


def sizes(seed: int, count: int) -> list[int]:
    rng = random.Random(seed)
    edge = [0, 1, 15, 16, 17, 255, 256, 4095, 16383, 16384]
    return edge + [rng.choice([rng.randrange(0, 64), rng.randrange(0, 16385)]) for _ in range(count - len(edge))]


@pytest.mark.parametrize("suite", SUITES)
def test_records_both_ways_match_the_rfc(suite: str, path: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    assert _engine is not None
    peer = Peer("freed", suite, tmp_path, monkeypatch)
    assert _engine._aead_paths()[suite] == path
    rng = random.Random(suite)
    for round_, n in enumerate(sizes(len(suite), 60)):
        sent = rng.randbytes(n)
        pad = rng.choice([0, 0, 1, 200])
        assert peer.server.deliver(peer.send.seal(23, sent, pad)) == (sent, "want-read")
        written = rng.randbytes(n)
        peer.server.obj.write(written)
        # A KeyUpdate now and then, each way: the next records are under the next key.
        if round_ % 17 == 5:
            peer.server.deliver(peer.send.seal(22, b"\x18\x00\x00\x01\x01"))
            peer.send.update()
        records = peer.recv.open_all(peer.server.take())
        got = b"".join(content for ctype, content in records if ctype == 23)
        assert got == written
        if round_ % 17 == 5:
            assert (22, b"\x18\x00\x00\x01\x00") in records  # our answer, sealed under the old key


@pytest.mark.parametrize("suite", SUITES)
def test_a_forged_tag_is_bad_record_mac(suite: str, path: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    peer = Peer("freed", suite, tmp_path, monkeypatch)
    assert peer.server.deliver(peer.send.seal(23, b"first")) == (b"first", "want-read")
    record = bytearray(peer.send.seal(23, b"forged"))
    record[-1] ^= 1
    assert peer.server.deliver(bytes(record)) == (b"", "SSLError:DECRYPTION_FAILED_OR_BAD_RECORD_MAC")


@pytest.mark.parametrize("suite", SUITES)
def test_connections_sharing_the_contexts_keep_their_keys(suite: str, path: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The contexts are one per suite and direction for the process: each record must be under its own key."""
    peers = [Peer("freed", suite, tmp_path / str(i), monkeypatch) for i in range(3) if (tmp_path / str(i)).mkdir()
             is None]
    for i in range(30):
        peer = peers[i * 7 % 3]
        message = f"record {i}".encode()
        assert peer.server.deliver(peer.send.seal(23, message)) == (message, "want-read")
        peer.server.obj.write(message[::-1])
        assert peer.recv.open_all(peer.server.take()) == [(23, message[::-1])]


def test_more_connections_than_slots_with_key_updates_and_closes(path: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """70 connections on 64 slots per direction: keys share slots, move to the next key, and go with their
    connection while the others carry on; every record is still under its own key."""
    rng = random.Random(70)
    peers = {}
    for i in range(70):
        (tmp_path / str(i)).mkdir()
        peers[i] = Peer("freed", "TLS_AES_128_GCM_SHA256", tmp_path / str(i), monkeypatch)
    for step in range(400):
        i = rng.choice(sorted(peers))
        peer = peers[i]
        message = f"{i}:{step}".encode()
        wire = peer.send.seal(23, message)
        if step % 13 == 0:  # the client moves to its next key, and asks us to move too
            wire += peer.send.seal(22, b"\x18\x00\x00\x01\x01")
            peer.send.update()
        assert peer.server.deliver(wire) == (message, "want-read")
        peer.server.obj.write(message)
        records = peer.recv.open_all(peer.server.take())
        assert (23, message) in records
        if step % 29 == 0:  # a connection goes (its keys with it), a new one comes
            del peers[i], peer
            n = 70 + step
            (tmp_path / str(n)).mkdir()
            peers[n] = Peer("freed", "TLS_AES_128_GCM_SHA256", tmp_path / str(n), monkeypatch)


def test_the_path_may_change_between_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _engine is not None
    with aead_direct(True):
        peer = Peer("freed", "TLS_AES_128_GCM_SHA256", tmp_path, monkeypatch)
        for i in range(8):
            _engine._set_aead_direct(i % 3 != 0)
            message = bytes([i]) * (i * 100)
            assert peer.server.deliver(peer.send.seal(23, message)) == (message, "want-read")
            peer.server.obj.write(message)
            assert peer.recv.open_all(peer.server.take()) == ([(23, message)] if message else [])


@pytest.mark.parametrize("name", ["key_update", "key_update_in_pieces", "padding", "bad_record_mac", "data",
                                  "close_notify_then_data", "fatal_alert"])
def test_scripts_give_the_same_on_either_path(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    for direct in (True, False):
        with aead_direct(direct):
            for kind in KINDS[1:]:
                seen[direct, kind] = Peer(kind, "TLS_CHACHA20_POLY1305_SHA256", tmp_path, monkeypatch).run(
                    SCRIPTS[name])
    assert seen[True, "freed"] == seen[False, "freed"], seen
    assert seen[True, "kept"] == seen[False, "kept"], seen


def test_doctor_says_which_path_records_take() -> None:
    from uringws import _compiled

    assert _engine is not None
    direct = _engine._aead_direct_available()
    assert direct is True  # OpenSSL 3's default provider: AES-256-GCM has one implementation with every function
    in_use, reason = _compiled.status()["tls._engine"]
    assert in_use and "the AEAD provider called directly" in reason, reason
