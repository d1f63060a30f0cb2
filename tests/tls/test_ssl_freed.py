"""A TLS 1.3 server engine frees its OpenSSL ``SSL`` after the handshake and does OpenSSL's remaining work itself.

After the handshake, the ``SSL`` of a server connection with own records both ways only still handled alerts,
close_notify and KeyUpdate, and answered the queries; it is most of an idle connection's memory, so it is freed
(``URINGWS_FREE_SSL=0`` keeps it). These tests hold the freed engine to what OpenSSL does, with OpenSSL as the
reference twice over: the stdlib's ``SSLObject`` and the compiled engine that keeps its ``SSL``. The client's
records are sealed here, from the client's traffic secret (its key log), so that every kind of record a peer may
send after the handshake can be sent: KeyUpdate both ways, each alert, and malformed ones. The three servers must
deliver the same plaintext, stop the same way (with the same error), and send the same records back.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path
from typing import Any

import pytest

from uringws.tls import engine as engine_mod

from .test_engine_parity import Client, Server, client_ctx, handshake, server_ctx

cryptography = pytest.importorskip("cryptography")
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

pytestmark = pytest.mark.skipif(
    not engine_mod.available() or not engine_mod.OWN_RECORDS, reason="compiled TLS engine or own records not in use"
)

SUITES = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
KINDS = ["pure", "kept", "freed"]


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes([i]), hash_name).digest()
        out += block
        i += 1
    return out[:length]


class Direction:
    """One direction's TLS 1.3 record protection (RFC 8446 §5.2, §7.3), written from the RFC for the tests."""

    def __init__(self, suite: str, secret: bytes) -> None:
        self.hash = "sha384" if suite.endswith("SHA384") else "sha256"
        self.key_len = 16 if "AES_128" in suite else 32
        self.aead_type: Any = ChaCha20Poly1305 if "CHACHA20" in suite else AESGCM
        self.secret = secret
        self._keys()

    def _keys(self) -> None:
        self.aead = self.aead_type(hkdf_expand_label(self.hash, self.secret, b"key", self.key_len))
        self.iv = hkdf_expand_label(self.hash, self.secret, b"iv", 12)
        self.seq = 0

    def update(self) -> None:
        self.secret = hkdf_expand_label(self.hash, self.secret, b"traffic upd", len(self.secret))
        self._keys()

    def _nonce(self) -> bytes:
        nonce = bytes(a ^ b for a, b in zip(self.iv, self.seq.to_bytes(12, "big"), strict=True))
        self.seq += 1
        return nonce

    def seal(self, content_type: int, content: bytes, pad: int = 0) -> bytes:
        inner = content + bytes([content_type]) + bytes(pad)
        header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
        return header + self.aead.encrypt(self._nonce(), inner, header)

    def open_all(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every record in data as (content type, content); a KeyUpdate moves to the next secret after its record."""
        records = []
        while data:
            length = int.from_bytes(data[3:5], "big")
            header, body, data = data[:5], data[5 : 5 + length], data[5 + length :]
            assert header[:3] == b"\x17\x03\x03", header
            inner = self.aead.decrypt(self._nonce(), body, header).rstrip(b"\x00")
            records.append((inner[-1], inner[:-1]))
            if inner[-1] == 22 and inner[0] == 24:
                self.update()
        return records


def secrets_from(keylog: Path) -> dict[str, bytes]:
    found = {}
    for line in keylog.read_text().splitlines():
        if line.startswith("#"):
            continue
        label, _random, secret = line.split()
        found[label] = bytes.fromhex(secret)
    return found


class Peer:
    """A server of one kind and a stdlib client whose application records this test seals itself."""

    def __init__(self, kind: str, suite: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, **server: Any) -> None:
        monkeypatch.setattr(engine_mod, "FREE_SSL", kind == "freed")
        sctx = server_ctx(alpn=server.pop("alpn", None), client_certs=server.pop("client_certs", False))
        sctx.num_tickets = 0  # our first record is the server's sequence number 0, whatever the kind
        cctx = client_ctx(alpn=["x-test", "http/1.1"], client_cert=True)
        engine_mod._engine._set_ciphersuites(cctx, suite)
        keylog = tmp / f"keys-{kind}-{suite}"
        cctx.keylog_filename = str(keylog)
        self.client, self.server = Client(cctx), Server("pure" if kind == "pure" else "compiled", sctx)
        assert handshake(self.client, self.server) is None
        if kind != "pure":
            assert self.server.obj._engine._ssl_freed() is (kind == "freed")
        found = secrets_from(keylog)
        self.send = Direction(suite, found["CLIENT_TRAFFIC_SECRET_0"])
        self.recv = Direction(suite, found["SERVER_TRAFFIC_SECRET_0"])

    def run(self, script: list[tuple[Any, ...]]) -> list[Any]:
        """Send the script's records, read, write, read again; what happened, comparable across kinds."""
        wire = b""
        for step in script:
            if step[0] == "data":
                wire += self.send.seal(23, step[1])
            elif step[0] == "key_update":
                wire += self.send.seal(22, b"\x18\x00\x00\x01" + bytes([step[1]]))
                self.send.update()
            elif step[0] == "alert":
                wire += self.send.seal(21, bytes(step[1:]))
            elif step[0] == "inner":  # any content type, content and padding
                wire += self.send.seal(*step[1:])
            elif step[0] == "raw":
                wire += step[1]
            elif step[0] == "update":  # our next records under the next key (a KeyUpdate sent in pieces)
                self.send.update()
        seen: list[Any] = [self.server.deliver(wire)]
        try:
            self.server.obj.write(b"the server writes")
            seen.append("written")
        except ssl.SSLError as exc:
            seen.append(f"write: {type(exc).__name__}:{exc.reason}")
        seen.append(self.server.deliver(b""))
        try:
            seen.append(f"unwrap: {self.server.obj.unwrap()}")
        except ssl.SSLError as exc:
            seen.append(f"unwrap: {type(exc).__name__}:{exc.reason}")
        seen.append(self.recv.open_all(self.server.take()))
        return seen


def header(content_type: int, version: int, length: int) -> bytes:
    return bytes([content_type]) + version.to_bytes(2, "big") + length.to_bytes(2, "big")


SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "data": [("data", b"hello"), ("data", b""), ("data", b"x" * 16384)],
    "key_update": [("data", b"old key"), ("key_update", 0), ("data", b"new key"), ("key_update", 0), ("data", b"3")],
    "key_update_requested": [("data", b"a"), ("key_update", 1), ("data", b"b")],
    "close_notify": [("data", b"bye"), ("alert", 1, 0)],
    "close_notify_then_data": [("alert", 1, 0), ("data", b"after close_notify")],
    "user_canceled_is_ignored": [("alert", 1, 90), ("data", b"on")],
    "fatal_alert": [("data", b"before"), ("alert", 2, 40)],
    "warning_level_alert_is_fatal": [("alert", 1, 42)],
    "unknown_alert": [("alert", 2, 255)],
    "alert_too_long": [("inner", 21, b"\x02\x28\x00")],
    "empty_alert": [("inner", 21, b"")],
    "empty_handshake": [("inner", 22, b"")],
    "key_update_bad_value": [("inner", 22, b"\x18\x00\x00\x01\x02")],
    "key_update_bad_length": [("inner", 22, b"\x18\x00\x00\x02\x00\x00")],
    "key_update_empty": [("inner", 22, b"\x18\x00\x00\x00")],
    "key_update_in_pieces": [("inner", 22, b"\x18\x00"), ("inner", 22, b"\x00\x01\x01"), ("update",), ("data", b"!")],
    "key_update_header_then_its_body": [("inner", 22, b"\x18\x00\x00\x01"), ("inner", 22, b"\x00"), ("update",),
                                        ("data", b"!")],
    "key_update_header_then_data": [("inner", 22, b"\x18\x00\x00\x01"), ("data", b"?")],
    "key_update_header_then_alert": [("inner", 22, b"\x18"), ("alert", 1, 0)],
    "five_user_canceled": [("alert", 1, 90)] * 5 + [("data", b"x")],
    "user_canceled_four_data_four": [("alert", 1, 90)] * 4 + [("data", b"x")] + [("alert", 1, 90)] * 4,
    "user_canceled_four_key_update_four": [("alert", 1, 90)] * 4 + [("key_update", 0)] + [("alert", 1, 90)] * 4,
    "user_canceled_then_fatal": [("alert", 1, 90), ("alert", 2, 40)],
    "close_notify_as_fatal": [("alert", 2, 0)],
    "key_update_not_last": [("inner", 22, b"\x18\x00\x00\x01\x00\x18\x00\x00\x01\x00")],
    "new_session_ticket_from_the_client": [("inner", 22, b"\x04\x00\x00\x00")],
    "change_cipher_spec_inside": [("inner", 20, b"\x01")],
    "unknown_content_type": [("inner", 99, b"?")],
    "padding": [("inner", 23, b"padded", 100)],
    # Content that fits the 16384-byte read while its padding does not (this once raised MemoryError).
    "padding_past_the_read": [("inner", 23, b"p" * 16383, 1), ("inner", 23, b"q" * 16300, 200), ("data", b"!")],
    "full_content_padded": [("inner", 23, b"r" * 16384, 200)],
    "content_too_long": [("inner", 23, b"y" * 16385)],
    "bad_record_mac": [("data", b"ok"), ("raw", header(23, 0x0303, 40) + bytes(40))],
    "wrong_version": [("raw", header(23, 0x0301, 40) + bytes(40))],
    "plaintext_alert": [("raw", header(21, 0x0303, 2) + b"\x02\x28")],
    "too_long_ciphertext": [("raw", header(23, 0x0303, 16384 + 257) + bytes(16384 + 257))],
    "too_short_ciphertext": [("raw", header(23, 0x0303, 16) + bytes(16))],
}


# Where the engine that keeps its SSL (URINGWS_FREE_SSL=0) is known to differ from OpenSSL alone, and why.
KEPT_DIFFERS = {
    # Own reads open application data without OpenSSL, so its count of warning alerts in a row is never reset.
    "user_canceled_four_data_four",
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_freed_ssl_does_what_openssl_does(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {
        kind: Peer(kind, "TLS_AES_128_GCM_SHA256", tmp_path, monkeypatch).run(SCRIPTS[name]) for kind in KINDS
    }
    assert seen["freed"] == seen["pure"], seen
    assert (seen["kept"] == seen["pure"]) is (name not in KEPT_DIFFERS), seen


@pytest.mark.parametrize("suite", SUITES)
def test_key_updates_both_ways_in_every_suite(suite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = [("data", b"1"), ("key_update", 1), ("data", b"2"), ("key_update", 0), ("data", b"3"), ("alert", 1, 0)]
    seen = {kind: Peer(kind, suite, tmp_path, monkeypatch).run(script) for kind in KINDS}
    assert seen["freed"] == seen["kept"] == seen["pure"], seen
    assert seen["freed"][0] == (b"123", "close_notify")
    # Our answer to the requested update, then our data under the next key.
    assert seen["freed"][4] == [(22, b"\x18\x00\x00\x01\x00"), (23, b"the server writes"), (21, b"\x01\x00")]


def test_our_own_key_update_unwrap_and_writing_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    for kind in KINDS:
        peer = Peer(kind, "TLS_AES_256_GCM_SHA384", tmp_path, monkeypatch)
        steps: list[Any] = []
        if kind != "pure":
            peer.server.obj._engine._key_update(True)
            peer.server.obj.write(b"after our update")
        try:
            peer.server.obj.unwrap()
        except ssl.SSLWantReadError:
            steps.append("unwrap: want-read")
        try:
            peer.server.obj.write(b"after our close_notify")
        except ssl.SSLError as exc:
            steps.append(f"write: {type(exc).__name__}:{exc.reason}")
        records = peer.recv.open_all(peer.server.take())
        if kind != "pure":
            assert records[:2] == [(22, b"\x18\x00\x00\x01\x01"), (23, b"after our update")]
            records = records[2:]
        steps.append(records)
        # The client's answer to our requested update, then its close_notify.
        wire = b""
        if kind != "pure":
            wire += peer.send.seal(22, b"\x18\x00\x00\x01\x00")
            peer.send.update()
        peer.server.feed(wire + peer.send.seal(21, b"\x01\x00"))
        steps.append(peer.server.obj.unwrap())
        seen[kind] = steps
    assert seen["freed"] == seen["kept"] == seen["pure"], seen
    assert seen["freed"][2] == [(21, b"\x01\x00")]


def _attempt(call: Any) -> Any:
    try:
        return call()
    except ssl.SSLError as exc:
        return f"{type(exc).__name__}:{exc.reason}"


@pytest.mark.parametrize("reader", ["read", "unwrap"])
def test_application_data_after_our_close_notify(reader: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS 1.3 closes each direction alone: after our close_notify, read() still returns what the peer sends, but
    SSL_shutdown, waiting for the peer's close_notify, takes application data as an error. (The engine that keeps
    its SSL drops such data in unwrap() instead: OpenSSL must not read under its stale sequence number.)"""
    seen = {}
    for kind in KINDS:
        peer = Peer(kind, "TLS_AES_128_GCM_SHA256", tmp_path, monkeypatch)
        obj = peer.server.obj
        steps = [_attempt(obj.unwrap)]
        peer.server.feed(peer.send.seal(23, b"late"))
        steps.append(_attempt(lambda: obj.read(100)) if reader == "read" else _attempt(obj.unwrap))
        steps.append(_attempt(lambda: obj.read(100)))
        peer.server.feed(peer.send.seal(21, b"\x01\x00"))
        steps += [_attempt(obj.unwrap), _attempt(lambda: obj.write(b"w")), peer.recv.open_all(peer.server.take())]
        seen[kind] = steps
    assert seen["freed"] == seen["pure"], seen
    if reader == "read":
        assert seen["freed"][1] == b"late" and seen["freed"][3] is None
    else:
        assert seen["freed"][1] == "SSLError:APPLICATION_DATA_AFTER_CLOSE_NOTIFY"


@pytest.mark.parametrize("requested", [0, 1])
def test_a_key_update_after_our_close_notify(requested: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After our close_notify the peer may still update its key and write: its data is read under the next key,
    and a requested update is not answered (nothing more goes out after close_notify), as OpenSSL does."""
    seen = {}
    for kind in KINDS:
        peer = Peer(kind, "TLS_AES_128_GCM_SHA256", tmp_path, monkeypatch)
        obj = peer.server.obj
        steps = [_attempt(obj.unwrap)]
        wire = peer.send.seal(22, b"\x18\x00\x00\x01" + bytes([requested]))
        peer.send.update()
        peer.server.feed(wire + peer.send.seal(23, b"after the update") + peer.send.seal(21, b"\x01\x00"))
        steps += [_attempt(lambda: obj.read(100)), _attempt(lambda: obj.read(100)), _attempt(obj.unwrap)]
        steps.append(peer.recv.open_all(peer.server.take()))
        seen[kind] = steps
    assert seen["freed"] == seen["kept"] == seen["pure"], seen
    assert seen["freed"][1] == b"after the update" and seen["freed"][4] == [(21, b"\x01\x00")]


def test_the_queries_answer_as_before_the_ssl_was_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {}
    for kind in KINDS:
        peer = Peer(kind, "TLS_CHACHA20_POLY1305_SHA256", tmp_path, monkeypatch, alpn=["x-test"], client_certs=True)
        obj = peer.server.obj
        answers[kind] = (
            obj.cipher(), obj.version(), obj.selected_alpn_protocol(), sorted(obj.shared_ciphers() or []),
            obj.getpeercert(), obj.getpeercert(binary_form=True), obj.pending(), obj.session_reused,
            len(obj.get_channel_binding() or b""),
        )
    assert answers["freed"] == answers["kept"] == answers["pure"], answers
    assert answers["freed"][2] == "x-test" and answers["freed"][4]["subject"]


def test_a_record_larger_than_the_read_is_held_and_delivered_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kind in KINDS:
        peer = Peer(kind, "TLS_AES_128_GCM_SHA256", tmp_path, monkeypatch)
        big = bytes(range(256)) * 64
        peer.server.feed(peer.send.seal(23, big) + peer.send.seal(23, b"next") + peer.send.seal(21, b"\x01\x00"))
        got = bytearray(peer.server.obj.read(1000))
        assert peer.server.obj.pending() == len(big) - 1000, kind
        while True:
            chunk = peer.server.obj.read(3000)
            if not chunk:
                break
            got += chunk
        assert bytes(got) == big + b"next", kind


@pytest.mark.parametrize("end", ["close_notify", "dropped", "fatal"])
def test_a_cached_session_resumes_unless_its_connection_failed(end: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With stateful sessions (OP_NO_TICKET: OpenSSL caches them), the freed engine keeps the session, so that a
    fatal error, or the connection's end without our close_notify, still removes it from the cache, as OpenSSL does;
    after our close_notify it resumes."""
    seen = {}
    for kind in KINDS:
        monkeypatch.setattr(engine_mod, "FREE_SSL", kind == "freed")
        sctx = server_ctx()
        sctx.options |= ssl.OP_NO_TICKET
        cctx = client_ctx()
        first, server = Client(cctx), Server("pure" if kind == "pure" else "compiled", sctx)
        assert handshake(first, server) is None
        if kind != "pure":
            assert server.obj._engine._ssl_freed() is (kind == "freed")
        session = first.obj.session
        steps: list[Any] = [server.obj.session_reused]
        if end == "fatal":
            steps.append(server.deliver(b"\x17\x03\x03\x00\x20" + bytes(32)))
        elif end == "close_notify":
            steps.append(_attempt(server.obj.unwrap))
        del server  # the connection's end
        again, server = Client(cctx, session=session), Server("pure" if kind == "pure" else "compiled", sctx)
        assert handshake(again, server) is None
        steps += [again.obj.session_reused, server.obj.session_reused]
        seen[kind] = steps
    assert seen["freed"] == seen["kept"] == seen["pure"], seen
    assert seen["freed"][-1] is (end == "close_notify")


def test_free_ssl_off_and_tls_1_2_keep_the_ssl(monkeypatch: pytest.MonkeyPatch) -> None:
    for free, version, freed in ((True, "TLSv1_3", True), (False, "TLSv1_3", False), (True, "TLSv1_2", False)):
        monkeypatch.setattr(engine_mod, "FREE_SSL", free)
        client, server = Client(client_ctx()), Server("compiled", server_ctx(version))
        assert handshake(client, server) is None
        assert server.obj._engine._ssl_freed() is freed
        client.obj.write(b"ping")
        assert server.deliver(client.outgoing.read()) == (b"ping", "want-read")
