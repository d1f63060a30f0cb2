"""TLS 1.3 record protection of our own (``uringws/tls/_tls13.h``) against OpenSSL's records.

An engine made with ``record_keys=True`` captures its connection's application traffic secrets (OpenSSL's key log
callback); from them it derives each direction's key and IV (RFC 8446 §7) and seals and opens records itself
(§5.2). A stdlib client (OpenSSL's record layer) must read what we seal, and we must open what it writes, byte
for byte, in order; tampering is caught; no secrets are captured where the engine was not asked to or cannot.
These engines are made with ``own_writes=False``, so that the tests drive both directions by hand; connections
seal their own application data (``test_own_writes.py``; docs/design.md §9, "An own record layer").
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from typing import Any

import pytest

from uringws.tls import engine as engine_mod

from .test_engine_parity import CA, Client, Server, client_ctx, handshake, server_ctx

pytestmark = pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")

APP, ALERT = 23, 21


class KeyedServer(Server):
    """The compiled server engine, asked to capture its traffic secrets."""

    def __init__(self, ctx: ssl.SSLContext, record_keys: bool = True) -> None:
        self.kind = "compiled"
        assert engine_mod._engine is not None
        self.engine = engine_mod._engine.Engine(ctx, True, record_keys=record_keys, own_writes=False)
        self.incoming, self.outgoing = self.engine.incoming, self.engine.outgoing
        self.obj = engine_mod.CompiledSSLObject(self.engine)


def no_tickets(ctx: ssl.SSLContext) -> ssl.SSLContext:
    # OpenSSL would write its tickets with the server's application key (records 0 and 1): with none, the first
    # record we seal is record 0, as the client expects.
    ctx.num_tickets = 0
    return ctx


def keyed_pair(version: str = "TLSv1_3") -> tuple[Client, KeyedServer]:
    client, server = Client(client_ctx()), KeyedServer(no_tickets(server_ctx(version)))
    assert handshake(client, server) is None
    return client, server


def test_the_client_reads_what_we_seal_and_we_open_what_it_writes() -> None:
    client, server = keyed_pair()
    assert server.engine._record_keys()
    for i, size in enumerate([1, 64, 1000, 16384, 0, 5]):
        message = bytes([i + 1]) * size
        if size:  # (OpenSSL writes no record for an empty write)
            client.obj.write(message)
            assert server.engine._open(client.outgoing.read()) == (APP, message)
        client.incoming.write(server.engine._seal(APP, message))
        got = b""
        while len(got) < size:
            got += client.obj.read(16384)
        assert got == message
        if not size:
            with pytest.raises(ssl.SSLWantReadError):
                client.obj.read(1)  # an empty record delivers nothing, and nothing is left


def test_a_tampered_record_is_refused_both_ways() -> None:
    client, server = keyed_pair()
    client.obj.write(b"hello")
    record = bytearray(client.outgoing.read())
    record[-1] ^= 1  # the tag
    with pytest.raises(ssl.SSLError, match="bad record mac"):
        server.engine._open(bytes(record))
    sealed = bytearray(server.engine._seal(APP, b"hello"))
    sealed[7] ^= 1  # the ciphertext
    client.incoming.write(bytes(sealed))
    with pytest.raises(ssl.SSLError):
        client.obj.read(100)


def test_sequence_numbers_advance_per_record() -> None:
    """A record opened out of turn does not open: the nonce carries the sequence number."""
    client, server = keyed_pair()
    client.obj.write(b"first")
    client.outgoing.read()  # record 0, never opened
    client.obj.write(b"second")
    second = client.outgoing.read()
    with pytest.raises(ssl.SSLError, match="bad record mac"):
        server.engine._open(second)


def test_an_alert_we_seal_is_the_clients_close_notify() -> None:
    client, server = keyed_pair()
    client.incoming.write(server.engine._seal(APP, b"last"))
    client.incoming.write(server.engine._seal(ALERT, b"\x01\x00"))  # warning, close_notify
    assert client.obj.read(100) == b"last"
    assert client.obj.read(100) == b""  # SSLObject's answer to close_notify


def test_the_clients_close_notify_opens_as_an_alert() -> None:
    client, server = keyed_pair()
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    assert server.engine._open(client.outgoing.read()) == (ALERT, b"\x01\x00")


def test_no_secrets_unless_asked_for_or_on_tls_1_2() -> None:
    client, server = Client(client_ctx()), KeyedServer(no_tickets(server_ctx()), record_keys=False)
    assert handshake(client, server) is None
    assert not server.engine._record_keys()
    with pytest.raises(ValueError, match="no traffic secrets"):
        server.engine._seal(APP, b"x")
    client, server = keyed_pair("TLSv1_2")
    assert not server.engine._record_keys()


def test_other_connections_of_the_context_and_its_key_log_file_are_unaffected(tmp_path: Any) -> None:
    """Our key log callback, once on an SSL_CTX, ignores the stdlib's connections on it; a keylog_filename set
    later replaces it (CPython's own callback), and such a context no longer gets the engine at all."""
    ctx = no_tickets(server_ctx())
    client, server = Client(client_ctx()), KeyedServer(ctx)
    assert handshake(client, server) is None and server.engine._record_keys()
    client, stdlib = Client(client_ctx()), Server("pure", ctx)
    assert handshake(client, stdlib) is None
    client.obj.write(b"through OpenSSL")
    assert stdlib.deliver(client.outgoing.read()) == (b"through OpenSSL", "want-read")
    ctx.keylog_filename = str(tmp_path / "keys.log")
    client, stdlib = Client(client_ctx()), Server("pure", ctx)
    assert handshake(client, stdlib) is None
    assert "SERVER_TRAFFIC_SECRET_0" in (tmp_path / "keys.log").read_text()
    assert engine_mod.unsupported(ctx, True, None) == "keylog_filename"


def _read_record(sock: socket.socket) -> bytes:
    head = b""
    while len(head) < 5:
        more = sock.recv(5 - len(head))
        assert more, "the peer closed"
        head += more
    size = int.from_bytes(head[3:5], "big")
    body = b""
    while len(body) < size:
        more = sock.recv(size - len(body))
        assert more, "the peer closed"
        body += more
    return head + body


def _engine_handshake(sock: socket.socket, server: KeyedServer) -> None:
    """Drive the engine's handshake over a blocking socket, one record at a time: the client's first application
    record may come in the same segment as its Finished, and must stay for _open, not go to OpenSSL."""
    while True:
        try:
            server.obj.do_handshake()
            sock.sendall(server.take())
            return
        except ssl.SSLWantReadError:
            sock.sendall(server.take())
            server.feed(_read_record(sock))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
def test_each_tls_1_3_suite_against_openssl_s_client(suite: str, tmp_path: Any) -> None:
    ctx = no_tickets(server_ctx())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ca = tmp_path / "ca.pem"
    CA.cert_pem.write_to_path(str(ca))
    result: dict[str, Any] = {}

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            server = KeyedServer(ctx)
            _engine_handshake(sock, server)
            result["cipher"] = server.engine.cipher()[0]
            # s_client sends its stdin line as one record; we answer with one record of our own, then close_notify.
            result["got"] = server.engine._open(_read_record(sock))
            sock.sendall(server.engine._seal(APP, b"pong from our own record layer\n"))
            sock.sendall(server.engine._seal(ALERT, b"\x01\x00"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-tls1_3",
            "-ciphersuites",
            suite,
            "-CAfile",
            str(ca),
            "-servername",
            "localhost",
            "-verify_return_error",
            "-quiet",
        ],
        input=b"ping\n",
        capture_output=True,
        timeout=30,
        env={**os.environ, "OPENSSL_CONF": "/dev/null"},
    )
    thread.join(10)
    listener.close()
    assert result.get("cipher") == suite, (result, proc.stderr[-500:])
    assert result["got"] == (APP, b"ping\n")
    assert b"pong from our own record layer" in proc.stdout, proc.stderr[-500:]
