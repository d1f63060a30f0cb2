"""The compiled TLS engine against the stdlib's SSLObject: same plaintext, same errors, same answers.

Each test drives a stdlib client (SSLObject over MemoryBIOs) against a server of each kind, byte for byte,
without a loop: TLS records from the client reach the server split at arbitrary points.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.tls import engine as engine_mod
from uringws.tls.protocol import TLSProtocol

pytestmark = pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")

CA = trustme.CA()
CERT = CA.issue_cert("localhost")
CLIENT_CERT = CA.issue_cert("client@example.test")


def server_ctx(version: str = "TLSv1_3", alpn: list[str] | None = None, client_certs: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CERT.configure_cert(ctx)
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_certs:
        CA.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ctx(alpn: list[str] | None = None, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_cert:
        CLIENT_CERT.configure_cert(ctx)
    return ctx


class Server:
    """A server endpoint of either kind, with the calls TLSProtocol makes."""

    def __init__(self, kind: str, ctx: ssl.SSLContext) -> None:
        self.kind = kind
        if kind == "compiled":
            eng = engine_mod.new_engine(ctx, True, None)
            assert eng is not None, engine_mod.unsupported(ctx, True, None)
            self.incoming, self.outgoing, self.obj = eng.incoming, eng.outgoing, engine_mod.CompiledSSLObject(eng)
        else:
            self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def feed(self, data: bytes) -> None:
        self.incoming.write(data)

    def deliver(self, data: bytes, read: bool = True) -> tuple[bytes, str]:
        """Feed ``data`` and decrypt; the compiled engine reads it in place (lend/keep, as TLSProtocol does) from a
        buffer that is scribbled over right after, as the loop's receive buffers are reused."""
        if self.kind == "pure":
            self.feed(data)
            return self.read_all() if read else (b"", "want-read")
        buf = bytearray(data)
        view = memoryview(buf)
        self.incoming.lend(view)
        try:
            return self.read_all() if read else (b"", "want-read")
        finally:
            self.incoming.keep()
            view.release()  # fails if the engine still held the buffer
            buf[:] = b"\xee" * len(buf)

    def take(self) -> bytes:
        out: bytes = self.outgoing.read()
        return out

    def read_all(self) -> tuple[bytes, str]:
        """Decrypt what is buffered; returns (plaintext, how it stopped)."""
        got = bytearray()
        buf = bytearray(16384)
        while True:
            try:
                n = self.obj.read(len(buf), buf)
            except ssl.SSLWantReadError:
                return bytes(got), "want-read"
            except ssl.SSLError as exc:
                return bytes(got), f"{type(exc).__name__}:{exc.reason}"
            if not n:
                return bytes(got), "close_notify"
            got += buf[:n]


class Client:
    def __init__(self, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost", session=session)


def handshake(client: Client, server: Server) -> str | None:
    """Run the handshake to its end; None, or the server's error as 'Class:REASON'."""
    for _ in range(10):
        try:
            client.obj.do_handshake()
            c_done = True
        except ssl.SSLWantReadError:
            c_done = False
        server.feed(client.outgoing.read())
        try:
            server.obj.do_handshake()
            s_done = True
        except ssl.SSLWantReadError:
            s_done = False
        except ssl.SSLError as exc:
            return f"{type(exc).__name__}:{exc.reason}"
        client.incoming.write(server.take())
        if c_done and s_done:
            # TLS 1.3: the client reads the tickets with its first read; drain them now.
            try:
                client.obj.read(1)
            except ssl.SSLWantReadError:
                pass
            return None
    raise AssertionError("handshake did not finish")


def connect(kind: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> tuple[Client, Server]:
    client, server = Client(cctx), Server(kind, sctx)
    assert handshake(client, server) is None
    return client, server


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


KINDS = ["pure", "compiled"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(["TLSv1_2", "TLSv1_3"]),
    sizes=st.lists(st.integers(1, 40000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
    ending=st.sampled_from(["none", "close_notify", "corrupt"]),
    paused=st.lists(st.booleans(), max_size=12),
)
def test_same_plaintext_and_errors_for_any_split(
    version: str, sizes: list[int], cuts: list[int], ending: str, paused: list[bool]
) -> None:
    """``paused``: pieces delivered while the app does not read (the bytes wait in the engine until later)."""
    results = []
    for kind in KINDS:
        client, server = connect(kind, server_ctx(version), client_ctx())
        messages = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        for m in messages:
            client.obj.write(m)
        if ending == "close_notify":
            try:
                client.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
        stream = client.outgoing.read()
        if ending == "corrupt":
            stream = stream[:-3] + bytes([stream[-3] ^ 0x55]) + stream[-2:]  # the last record's tag
        outcome = []
        got = b""
        pieces = split(stream, cuts)
        for i, piece in enumerate(pieces):
            read = i == len(pieces) - 1 or not (i < len(paused) and paused[i])
            data, how = server.deliver(piece, read)
            got += data
            outcome.append(how)
            if how not in ("want-read",):
                break
        results.append((got, outcome[-1]))
        if ending == "none":
            assert got == b"".join(messages)
    assert results[0] == results[1]


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_server_writes_reach_a_stdlib_client(version: str) -> None:
    for kind in KINDS:
        client, server = connect(kind, server_ctx(version, alpn=["x", "http/1.1"]), client_ctx(alpn=["http/1.1"]))
        data = bytes(range(256)) * 1000
        assert server.obj.write(data) == len(data)
        client.incoming.write(server.take())
        got = b""
        while len(got) < len(data):
            got += client.obj.read(65536)
        assert got == data
        assert server.obj.selected_alpn_protocol() == "http/1.1" == client.obj.selected_alpn_protocol()
        assert server.obj.version() == version.replace("_", ".") == client.obj.version()
        assert server.obj.cipher() == client.obj.cipher()
        assert server.obj.getpeercert() is None
        # The server's close_notify: the client sees a clean end, the server waits for the client's.
        with pytest.raises(ssl.SSLWantReadError):
            server.obj.unwrap()
        client.incoming.write(server.take())
        assert client.obj.read(10) == b"", kind  # the stdlib's clean end: close_notify received


def test_session_resumption() -> None:
    for kind in KINDS:
        sctx, cctx = server_ctx("TLSv1_3"), client_ctx()
        first, server = connect(kind, sctx, cctx)
        assert not server.obj.session_reused
        session = first.obj.session
        assert session is not None
        second, server2 = Client(cctx, session=session), Server(kind, sctx)
        assert handshake(second, server2) is None
        assert second.obj.session_reused and server2.obj.session_reused, kind


def test_client_certificates_are_verified_and_reported() -> None:
    seen = []
    for kind in KINDS:
        _client, server = connect(kind, server_ctx(client_certs=True), client_ctx(client_cert=True))
        seen.append((server.obj.getpeercert(), server.obj.getpeercert(binary_form=True)))
        # Without a certificate: the same refusal from both.
        refused = Client(client_ctx()), Server(kind, server_ctx("TLSv1_2", client_certs=True))
        seen.append(handshake(*refused))
    assert seen[0] == seen[2]
    assert seen[0][0]["subjectAltName"] == (("email", "client@example.test"),)
    assert seen[1] == seen[3] is not None


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b"\x80" * 64])
def test_same_handshake_errors(garbage: bytes) -> None:
    errors = []
    for kind in KINDS:
        server = Server(kind, server_ctx("TLSv1_2"))
        server.feed(garbage)
        try:
            server.obj.do_handshake()
        except ssl.SSLError as exc:
            errors.append((type(exc), exc.reason, exc.library, exc.args[0], len(server.take()) > 0))
    assert len(errors) == 2
    assert errors[0] == errors[1]


def test_a_second_client_hello_in_the_clear_is_refused() -> None:
    """After a TLS 1.2 handshake, a new ClientHello outside the encrypted session fails the same way on both."""
    outcomes = []
    for kind in KINDS:
        _client, server = connect(kind, server_ctx("TLSv1_2"), client_ctx())
        other = Client(client_ctx())
        with pytest.raises(ssl.SSLWantReadError):
            other.obj.do_handshake()
        server.feed(other.outgoing.read())
        outcomes.append(server.read_all())
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1].startswith("SSLError:")


def _protocol_engine(ctx: ssl.SSLContext, server_side: bool = True) -> str:
    loop = asyncio.new_event_loop()
    try:
        tls = TLSProtocol(loop, asyncio.Protocol(), ctx, server_side=server_side,
                          server_hostname=None if server_side else "localhost")
        return "compiled" if isinstance(tls._sslobj, engine_mod.CompiledSSLObject) else "pure"
    finally:
        loop.close()


def test_tls_layer_uses_the_engine_where_it_can() -> None:
    assert _protocol_engine(server_ctx()) == "compiled"
    assert _protocol_engine(server_ctx(client_certs=True)) == "compiled"
    assert _protocol_engine(client_ctx(), server_side=False) == "pure"


def test_received_view_is_the_compiled_receive_path_on_the_engine() -> None:
    """The ring transport's hook (looked up once per connection) is the C twin of data_received() on the compiled
    engine, and data_received() itself on the stdlib's: a hook that silently fell back to Python would still
    pass every functional test."""
    loop = asyncio.new_event_loop()
    try:
        server = TLSProtocol(loop, asyncio.Protocol(), server_ctx(), server_side=True)
        client = TLSProtocol(loop, asyncio.Protocol(), client_ctx(), server_side=False, server_hostname="localhost")
        assert type(server.received_view).__name__ == "Receive"
        assert type(server.received_view) is engine_mod.receive_type
        assert client.received_view == client.data_received
    finally:
        loop.close()


def _with(setting: str) -> ssl.SSLContext:
    ctx = server_ctx()
    if setting == "sni_callback":
        ctx.sni_callback = lambda *a: None
    elif setting == "msg_callback":
        ctx._msg_callback = lambda *a: None  # type: ignore[attr-defined]
    elif setting == "keylog":
        ctx.keylog_filename = "/dev/null"
    elif setting == "sslobject_class":
        ctx.sslobject_class = type("Mine", (ssl.SSLObject,), {})
    elif setting == "psk":
        if not hasattr(ctx, "set_psk_server_callback"):
            pytest.skip("PSK callbacks need Python 3.13")
        ctx.set_psk_server_callback(lambda identity: b"k" * 16)  # type: ignore[attr-defined]
    return ctx


@pytest.mark.parametrize("setting", ["sni_callback", "msg_callback", "keylog", "sslobject_class", "psk"])
def test_settings_only_the_stdlib_honours_keep_the_stdlib_path(setting: str, caplog: Any) -> None:
    ctx = _with(setting)
    assert engine_mod.unsupported(ctx, True, None) is not None
    assert _protocol_engine(ctx) == "pure"
    # And the connection works (the stdlib runs the callback).
    client, server = connect("pure", ctx, client_ctx())
    client.obj.write(b"hello")
    server.feed(client.outgoing.read())
    assert server.read_all() == (b"hello", "want-read")
