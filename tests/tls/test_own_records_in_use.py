"""A TLS 1.3 server engine seals and opens its application records itself; OpenSSL keeps everything else.

Once the handshake is done, ``write()`` seals records with the engine's protection (``_tls13.h``) instead of
``SSL_write``. OpenSSL still writes what only it knows to (alerts, close_notify, KeyUpdate): those records carry
its write sequence number, which stopped when ours took over, so the engine opens them and seals them again with
its own. Reads open whole application records straight into the caller's buffer; any other record, one that does
not open and one too large for the room left go to OpenSSL, sealed again for its read state, so that its errors
and alerts are what they were. A stdlib client (OpenSSL's record layer) and ``openssl s_client`` must read
everything, in order, through tickets, key updates both ways, close_notify, fatal alerts, replays and tampering.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import pytest

from uringws.tls import engine as engine_mod

from .test_engine_parity import CA, Client, Server, client_ctx, handshake, server_ctx

pytestmark = pytest.mark.skipif(
    not engine_mod.available() or not engine_mod.OWN_RECORDS, reason="compiled TLS engine or own records not in use"
)


@pytest.fixture(autouse=True, params=["ssl-freed", "ssl-kept"])
def free_ssl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test twice: with the SSL freed after the handshake (the default; the engine then does what OpenSSL did
    after it, tests/tls/test_ssl_freed.py), and with it kept (URINGWS_FREE_SSL=0), where OpenSSL still handles
    every record that is not application data, as described above."""
    freed: bool = request.param == "ssl-freed"
    monkeypatch.setattr(engine_mod, "FREE_SSL", freed)
    return freed


def pair(tickets: int | None = None, version: str = "TLSv1_3") -> tuple[Client, Server]:
    sctx = server_ctx(version)
    if tickets is not None:
        sctx.num_tickets = tickets
    client, server = Client(client_ctx()), Server("compiled", sctx)
    assert handshake(client, server) is None
    return client, server


def engine(server: Server) -> Any:
    return server.obj._engine


def client_reads(client: Client, data: bytes) -> bytes:
    client.incoming.write(data)
    got = bytearray()
    while True:
        try:
            chunk = client.obj.read(1 << 17)
        except ssl.SSLWantReadError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


@pytest.mark.parametrize("tickets", [None, 0, 1, 5])
def test_our_records_follow_openssls_tickets_in_sequence(tickets: int | None) -> None:
    client, server = pair(tickets)
    assert engine(server)._own_writes()
    messages = [b"a", b"b" * 100, b"c" * 16384, b"d" * 40000]
    for m in messages:
        server.obj.write(m)
    assert client_reads(client, server.take()) == b"".join(messages)
    client.obj.write(b"the client still writes")
    assert server.deliver(client.outgoing.read()) == (b"the client still writes", "want-read")


def test_a_resumed_session_writes_one_ticket_and_we_follow_it() -> None:
    sctx, cctx = server_ctx(), client_ctx()
    first, server = Client(cctx), Server("compiled", sctx)
    assert handshake(first, server) is None
    session = first.obj.session
    assert session is not None
    again, server = Client(cctx, session=session), Server("compiled", sctx)
    assert handshake(again, server) is None
    assert again.obj.session_reused and engine(server)._own_writes()
    server.obj.write(b"resumed")
    assert client_reads(again, server.take()) == b"resumed"


def test_close_notify_after_our_records_is_sealed_in_sequence() -> None:
    client, server = pair()
    server.obj.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        server.obj.unwrap()
    client.incoming.write(server.take())
    assert client.obj.read(100) == b"last words"
    assert client.obj.read(100) == b""  # close_notify (not SSLWantReadError, not bad_record_mac)


def test_openssls_fatal_alert_reaches_the_client_as_an_alert() -> None:
    client, server = pair()
    server.obj.write(b"before")
    assert client_reads(client, server.take()) == b"before"
    client.obj.write(b"tampered")
    record = bytearray(client.outgoing.read())
    record[-1] ^= 1
    got, how = server.deliver(bytes(record))
    assert (got, how) == (b"", "SSLError:DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    client.incoming.write(server.take())
    with pytest.raises(ssl.SSLError) as info:
        client.obj.read(100)
    # The alert itself, not a record the client cannot open (DECRYPTION_FAILED_OR_BAD_RECORD_MAC).
    assert info.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC"


@pytest.mark.parametrize("requested", [False, True])
def test_our_key_update_and_the_clients_answer(requested: bool) -> None:
    client, server = pair()
    server.obj.write(b"old keys")
    engine(server)._key_update(requested)
    server.obj.write(b"new keys")  # OpenSSL writes the KeyUpdate and this record; we seal both again
    server.obj.write(b"ours again")  # back on our own path, under the next secret
    assert client_reads(client, server.take()) == b"old keysnew keysours again"
    client.obj.write(b"from the client")  # after its KeyUpdate if one was requested
    assert server.deliver(client.outgoing.read()) == (b"from the client", "want-read")
    for _ in range(2):
        engine(server)._key_update(False)
        server.obj.write(b"again")
    with pytest.raises(ssl.SSLWantReadError):
        server.obj.unwrap()
    client.incoming.write(server.take())
    assert client.obj.read(100) == b"again"
    assert client.obj.read(100) == b"again"
    assert client.obj.read(100) == b""  # close_notify


def test_tls_1_2_and_record_keys_off_leave_writes_to_openssl() -> None:
    client, server = pair(version="TLSv1_2")
    assert not engine(server)._own_writes()
    server.obj.write(b"1.2")
    assert client_reads(client, server.take()) == b"1.2"
    assert engine_mod._engine is not None
    plain = engine_mod._engine.Engine(server_ctx(), True, record_keys=False)
    assert not plain._own_writes()


def _read_record(sock: socket.socket, timeout: float = 10) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError("no record")
        chunk = sock.recv(5 + int.from_bytes(data[3:5], "big") - len(data) if len(data) >= 5 else 5 - len(data))
        if not chunk:
            raise EOFError("peer closed")
        data += chunk
    return data


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"])
def test_s_client_requests_a_key_update_and_reads_our_answer(suite: str, tmp_path: Any) -> None:
    """s_client's "K" command sends KeyUpdate(update_requested): OpenSSL must answer with its own KeyUpdate before
    our next application data, which goes through the engine's re-sealing; s_client reads all of it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ca = tmp_path / "ca.pem"
    CA.cert_pem.write_to_path(str(ca))
    result: dict[str, Any] = {"got": b""}

    def serve() -> None:
        sock, _ = listener.accept()
        with sock:
            server = Server("compiled", server_ctx())
            while True:
                try:
                    server.obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(server.take())
                    server.feed(_read_record(sock))
            sock.sendall(server.take())
            result["own"] = engine(server)._own_writes()
            result["cipher"] = server.obj.cipher()[0]
            server.obj.write(b"before the update\n")
            sock.sendall(server.take())
            while b"ping" not in result["got"]:
                got, how = server.deliver(_read_record(sock))
                result["got"] += got
                assert how == "want-read", how
            server.obj.write(b"pong after the update\n")
            sock.sendall(server.take())
            result["sent"] = True
            time.sleep(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-ciphersuites", suite,
         "-CAfile", str(ca), "-servername", "localhost", "-verify_return_error", "-msg"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "OPENSSL_CONF": "/dev/null"},
    )
    try:
        assert proc.stdin is not None
        time.sleep(1)
        proc.stdin.write(b"K\n")
        proc.stdin.flush()
        time.sleep(0.5)
        proc.stdin.write(b"ping\n")
        proc.stdin.flush()
        thread.join(15)
        time.sleep(0.5)
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        listener.close()
    assert result.get("own") and result.get("cipher") == suite, (result, err[-500:])
    assert result["got"] == b"ping\n"
    assert b"KEYUPDATE" in err + out  # s_client asked for it
    answer = out.index(b"<<< TLS 1.3, Handshake [length 0005], KeyUpdate")  # and our server answered, first
    assert answer < out.index(b"pong after the update"), out[-1500:]
    assert b"before the update" in out and b"pong after the update" in out, (out[-500:], err[-500:])
    assert b"bad record mac" not in (err + out).lower()


def test_connections_taking_turns_on_the_shared_cipher_context() -> None:
    """One AEAD context per suite serves every connection: each write must be sealed under its own connection's
    key, whichever connection wrote last."""
    pairs = [pair() for _ in range(3)]
    for round_ in range(3):
        for i, (client, server) in enumerate(pairs):
            message = f"round {round_} connection {i}".encode() * (round_ * 2000 + 1)
            server.obj.write(message)
            assert client_reads(client, server.take()) == message


def test_reads_are_our_own_and_a_replayed_record_is_refused() -> None:
    client, server = pair()
    assert engine(server)._own_reads()
    client.obj.write(b"first")
    first = client.outgoing.read()
    client.obj.write(b"second")
    second = client.outgoing.read()
    assert server.deliver(first + second) == (b"firstsecond", "want-read")
    # The first record again, at OpenSSL's own (stale) read sequence number 0: it must not open anywhere.
    assert server.deliver(first) == (b"", "SSLError:DECRYPTION_FAILED_OR_BAD_RECORD_MAC")
    client.incoming.write(server.take())
    with pytest.raises(ssl.SSLError) as info:
        client.obj.read(100)
    assert info.value.reason == "SSLV3_ALERT_BAD_RECORD_MAC"


def test_a_record_larger_than_the_read_goes_through_openssl_in_order() -> None:
    client, server = pair()
    big = bytes(range(256)) * 64  # one 16 KiB record
    for m in (big, b"after", b"and more"):
        client.obj.write(m)
    server.feed(client.outgoing.read())
    got = bytearray()
    while True:
        try:
            got += server.obj.read(1000)  # smaller than the record: OpenSSL holds the rest
        except ssl.SSLWantReadError:
            break
    assert bytes(got) == big + b"after" + b"and more"
    assert engine(server)._own_reads()
    client.obj.write(b"own again")
    assert server.deliver(client.outgoing.read()) == (b"own again", "want-read")


def test_data_then_close_notify_in_one_delivery() -> None:
    client, server = pair()
    client.obj.write(b"goodbye")
    data = client.outgoing.read()
    with pytest.raises(ssl.SSLWantReadError):
        client.obj.unwrap()
    assert server.deliver(data + client.outgoing.read()) == (b"goodbye", "close_notify")
    assert server.obj.read(10) == b""


def test_a_record_split_at_every_byte_is_joined() -> None:
    client, server = pair()
    messages = [b"x" * 3000, b"y" * 17000, b"z"]
    for m in messages:
        client.obj.write(m)
    wire = client.outgoing.read()
    got = bytearray()
    for cut in range(0, len(wire), 997):
        data, how = server.deliver(wire[cut : cut + 997])
        got += data
        assert how == "want-read"
    assert bytes(got) == b"".join(messages)


def test_unwrap_with_unread_and_partial_records_waits_for_close_notify(free_ssl: bool) -> None:
    """OpenSSL's second SSL_shutdown reads the received bytes itself; with own reads that would decrypt under its
    stale sequence number. The engine that keeps its SSL reads them (dropping the application data) until the
    peer's close_notify; the one that freed it does what SSL_shutdown does with application data where it waits
    for close_notify: an error (tests/tls/test_ssl_freed.py compares it with OpenSSL's)."""
    client, server = pair()
    client.obj.write(b"unread")
    client.obj.write(b"half" * 100)
    wire = client.outgoing.read()
    server.feed(wire[:-50])  # one whole record and most of the next, not read
    if free_ssl:
        with pytest.raises(ssl.SSLError, match="APPLICATION_DATA_AFTER_CLOSE_NOTIFY"):
            server.obj.unwrap()
        client.incoming.write(server.take())
        assert client.obj.read(100) == b""  # our close_notify went out first
        return
    with pytest.raises(ssl.SSLWantReadError):
        server.obj.unwrap()
    client.incoming.write(server.take())
    assert client.obj.read(100) == b""  # our close_notify reached the client in sequence
    assert client.obj.unwrap() is None  # it has ours: it sends its own and is done
    server.feed(wire[-50:] + client.outgoing.read())
    assert server.obj.unwrap() is None
