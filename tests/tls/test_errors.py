"""Bad peers: stalled handshakes, garbage, plain HTTP, truncated records, alerts, missing close_notify.

Each must end in a clean close with a logged reason, never a hang, and never disturb other connections.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import Any

import pytest
import trustme

from uringws.tls.protocol import TLSProtocol, TLSTruncatedError

from .tlshelpers import ManualClient, Recorder, ThreadPeer, collecting, payload, sha, tls_client, tls_server


@pytest.fixture(autouse=True)
def _tls_info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Failed handshakes are logged at INFO (port scans and health checks would flood WARNING): capture them."""
    caplog.set_level(logging.INFO, "uringws.tls")


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "uringws.tls")


async def _assert_still_serving(ctx: ssl.SSLContext, port: int) -> None:
    app = Recorder()
    tr, _ = await tls_client(ctx, app, port)
    tr.write(b"still here")
    assert await app.wait_bytes(10) == b"still here"
    tr.close()
    await asyncio.wait_for(app.lost, 10)


def test_handshake_timeout_stalled_client(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that connects and says nothing is cut off after ssl_handshake_timeout; others are served."""
    caplog.set_level(logging.INFO, "uringws.tls")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server, port, _ = await tls_server(
            server_ctx, collecting(apps, lambda: Recorder(echo=True)), ssl_handshake_timeout=0.3
        )
        stalled = socket.socket()
        stalled.setblocking(False)
        await loop.sock_connect(stalled, ("127.0.0.1", port))
        await _assert_still_serving(client_ctx, port)  # served while the stalled one waits
        t0 = loop.time()
        try:
            data = await asyncio.wait_for(loop.sock_recv(stalled, 100), 5)
        except ConnectionResetError:
            data = b""
        assert data == b""
        assert 0.1 < loop.time() - t0 < 3
        assert "SSL handshake is taking longer than 0.3 seconds" in _messages(caplog)
        stalled.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_handshake_timeout_silent_server(run: Any, client_ctx: ssl.SSLContext) -> None:
    """Our client against a server that accepts and never answers: the waiter fails, no hang."""

    async def main() -> None:
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await tls_client(client_ctx, Recorder(), port, ssl_handshake_timeout=0.3)
        lsock.close()

    run(main())


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x00" * 100,
        payload(3000, seed=5),
        b"\x16\x03\x01\x00\x05hello",  # a handshake record header with a nonsense body
    ],
    ids=["plain-http", "zeros", "random", "bad-clienthello"],
)
def test_garbage_instead_of_client_hello(
    run: Any,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
    garbage: bytes,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server, port, protos = await tls_server(server_ctx, collecting(apps, lambda: Recorder(echo=True)))
        # A good connection open across the bad one keeps working.
        good = Recorder()
        tr, _ = await tls_client(client_ctx, good, port)
        bad = socket.socket()
        bad.setblocking(False)
        await loop.sock_connect(bad, ("127.0.0.1", port))
        await loop.sock_sendall(bad, garbage)
        got = bytearray()
        while True:  # the server may answer with an alert; then it must close
            try:
                data = await asyncio.wait_for(loop.sock_recv(bad, 4096), 5)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
        assert len(got) < 100 and (not got or got[0] == 0x15)  # nothing, or one alert record
        bad.close()
        assert "TLS handshake with" in _messages(caplog) and "failed" in _messages(caplog)
        assert protos[1]._app_state == 0  # the app protocol never saw the bad connection
        tr.write(b"ping")
        assert await good.wait_bytes(4) == b"ping"
        tr.close()
        await asyncio.wait_for(good.lost, 10)
        await _assert_still_serving(client_ctx, port)
        server.close()
        await server.wait_closed()

    run(main())


def test_truncated_record(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """EOF in the middle of a record is an error (TLSTruncatedError), and no partial plaintext leaks out."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        client = await ManualClient.connect(client_ctx, port)
        await client.send_raw(client.record(b"complete"))
        rec = client.record(b"truncated record" * 10)
        await client.send_raw(rec[:-10])
        client.sock.shutdown(socket.SHUT_WR)
        await client.read_until_closed()
        app = apps[0]
        exc = await asyncio.wait_for(app.lost, 10)
        assert isinstance(exc, TLSTruncatedError), exc
        assert isinstance(exc, ssl.SSLError)
        assert "10 bytes missing" in str(exc)
        assert bytes(app.data) == b"complete"
        assert not app.eof
        assert "middle of a TLS record" in _messages(caplog)
        client.sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_eof_without_close_notify_at_record_boundary(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Like asyncio: data, then eof_received(), then connection_lost(None)."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        client = await ManualClient.connect(client_ctx, port)
        await client.send_raw(client.record(b"last words"))
        client.sock.shutdown(socket.SHUT_WR)
        await client.read_until_closed()
        app = apps[0]
        assert await asyncio.wait_for(app.lost, 10) is None
        assert app.eof
        assert bytes(app.data) == b"last words"
        client.sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_unexpected_alert_after_handshake(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer sends a fatal alert (bad_record_mac) mid-connection: logged, app gets the SSLError."""

    class Greeter(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.transport.write(b"hello")  # type: ignore[union-attr]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Greeter))
        client = await ManualClient.connect(client_ctx, port)
        # In TLS 1.2 the greeting can arrive with the server's Finished and still sit in the BIO.
        if client.inc.pending:
            raw = bytearray(client.inc.read())
        else:
            raw = bytearray(await asyncio.wait_for(loop.sock_recv(client.sock, 65536), 10))
        raw[-1] ^= 1  # corrupt the last record's tag: the client's OpenSSL answers with an alert
        client.inc.write(bytes(raw))
        with pytest.raises(ssl.SSLError):
            while True:
                client.obj.read(1000)
        alert = client.out.read()
        assert alert
        await client.send_raw(alert)
        exc = await asyncio.wait_for(apps[0].lost, 10)
        assert isinstance(exc, ssl.SSLError) and "ALERT_BAD_RECORD_MAC" in str(exc), exc
        assert "ALERT_BAD_RECORD_MAC" in _messages(caplog)
        await client.read_until_closed()
        client.sock.close()
        other = Recorder()  # a new connection still gets its greeting
        tr, _ = await tls_client(client_ctx, other, port)
        assert await other.wait_bytes(5) == b"hello"
        tr.close()
        await asyncio.wait_for(other.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_alert_during_handshake_unknown_ca(
    run: Any, server_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that does not trust our certificate sends unknown_ca; the server logs that reason."""

    async def main() -> None:
        server, port, _ = await tls_server(server_ctx, Recorder)
        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        trustme.CA().configure_trust(untrusting)  # some other CA
        with pytest.raises(ssl.SSLCertVerificationError):
            await tls_client(untrusting, Recorder(), port)
        for _ in range(100):
            if "ALERT_UNKNOWN_CA" in _messages(caplog):
                break
            await asyncio.sleep(0.01)
        assert "ALERT_UNKNOWN_CA" in _messages(caplog)
        assert "certificate verify failed" in _messages(caplog)  # our client side logged its reason too
        server.close()
        await server.wait_closed()

    run(main())


def test_garbage_after_handshake(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        client = await ManualClient.connect(client_ctx, port)
        await client.send_raw(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # an application record that cannot decrypt
        exc = await asyncio.wait_for(apps[0].lost, 10)
        assert isinstance(exc, ssl.SSLError), exc
        assert "TLS error on connection" in _messages(caplog)
        answer = await client.read_until_closed()
        assert answer[:1] in (b"\x15", b"\x17")  # the server told us why (alert; encrypted in TLS 1.3)
        client.sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_close_sends_close_notify(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """close() after write(): the peer gets all data then close_notify; abort() gives it a ragged EOF."""

    class Closer(Recorder):
        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(b"bye" * 50_000)
            if data == b"close":
                self.transport.close()
            else:
                self.transport.abort()

    def peer(port: int, command: bytes) -> tuple[int, str]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            tls.sendall(command)
            total = 0
            try:
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return total, "close_notify"
                    total += len(data)
            except (ssl.SSLEOFError, ConnectionResetError) as exc:
                return total, type(exc).__name__

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Closer))
        assert await ThreadPeer(peer, port, b"close").join() == (150_000, "close_notify")
        assert await asyncio.wait_for(apps[0].lost, 10) is None
        # Negative control: the same peer check notices a missing close_notify.
        _total, how = await ThreadPeer(peer, port, b"abort").join()
        assert how in ("SSLEOFError", "ConnectionResetError")
        server.close()
        await server.wait_closed()

    run(main())


def test_shutdown_timeout(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """After close(), a peer that never answers close_notify nor closes TCP is aborted at ssl_shutdown_timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder), ssl_shutdown_timeout=0.3)
        client = await ManualClient.connect(client_ctx, port)
        await client.send_raw(client.record(b"x"))
        await apps[0].wait_bytes(1)
        assert apps[0].transport is not None
        t0 = loop.time()
        apps[0].transport.close()
        exc = await asyncio.wait_for(apps[0].lost, 5)
        assert isinstance(exc, TimeoutError), exc
        assert 0.2 < loop.time() - t0 < 3
        client.sock.close()
        server.close()
        await server.wait_closed()

    run(main())


class NaiveTransport:
    """Wraps a real transport and loses ``drop`` bytes once, ``after`` bytes into the stream.

    This is the bug of docs/design.md §1 (a short send whose remainder is never sent), put under our TLS
    layer to prove the tests see that failure class: the peer's MAC check must fail.
    """

    def __init__(self, real: asyncio.Transport, after: int = 65536, drop: int = 444) -> None:
        self.real = real
        self.after = after
        self.drop = drop
        self.written = 0
        self.dropped = False

    def write(self, data: bytes) -> None:
        start = self.written
        self.written += len(data)
        if not self.dropped and start <= self.after < self.written:
            cut = self.after - start
            data = data[:cut] + data[cut + self.drop :]
            self.dropped = True
        self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class _NaiveShim(asyncio.BufferedProtocol):
    """Gives the TLSProtocol a NaiveTransport instead of the loop's transport; forwards everything else."""

    def __init__(self, tls: TLSProtocol) -> None:
        self.tls = tls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tls.connection_made(NaiveTransport(transport))  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.tls.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.tls.buffer_updated(nbytes)

    def eof_received(self) -> bool:
        return self.tls.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tls.connection_lost(exc)

    def pause_writing(self) -> None:
        self.tls.pause_writing()

    def resume_writing(self) -> None:
        self.tls.resume_writing()


@pytest.mark.parametrize("naive", [True, False], ids=["naive-transport", "correct-transport"])
def test_naive_transport_is_caught_as_bad_record_mac(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, naive: bool
) -> None:
    """The original failure, reproduced: 444 bytes lost after 64 KiB -> the peer fails with bad record mac."""
    data = payload(1_000_000, seed=444)

    def reader(port: int) -> str:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"go")
            got = bytearray()
            try:
                while len(got) < len(data):
                    part = tls.recv(65536)
                    if not part:
                        return "eof"
                    got += part
            except ssl.SSLError as exc:
                return f"error: {exc}"
            return "ok" if sha(got) == sha(data) else "corrupt"

    class Sender(Recorder):
        def data_received(self, d: bytes) -> None:
            self.transport.write(data)  # type: ignore[union-attr]

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def make() -> asyncio.BaseProtocol:
            tls = TLSProtocol(loop, Sender(), server_ctx, None, server_side=True)
            return _NaiveShim(tls) if naive else tls

        server = await loop.create_server(make, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        result = await ThreadPeer(reader, port).join()
        if naive:
            assert result.startswith("error:") and "BAD_RECORD_MAC" in result, result
        else:
            assert result == "ok"
        server.close()
        await server.wait_closed()

    run(main())


def test_app_exception_goes_to_loop_handler(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """An exception in the app's data_received is reported to the loop's handler and the connection aborted."""

    class Broken(Recorder):
        def data_received(self, data: bytes) -> None:
            raise RuntimeError("app bug")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Broken))
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        tr.write(b"boom")
        exc = await asyncio.wait_for(apps[0].lost, 10)
        assert isinstance(exc, RuntimeError)
        assert reported and isinstance(reported[0]["exception"], RuntimeError)
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_close_right_after_large_write_delivers_everything_first(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """write(4 MiB); close() to a slow reader: every byte, then close_notify, nothing lost to the close."""
    data = payload(4 * 1024 * 1024, seed=77)

    class WriteAndClose(Recorder):
        def data_received(self, d: bytes) -> None:
            assert self.transport is not None
            self.transport.write(data)
            self.transport.close()  # plaintext still queued behind the paused TCP transport

    def slow_peer(port: int) -> tuple[str, str]:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", port))
        with client_ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
            tls.sendall(b"go")
            got = bytearray()
            time.sleep(0.2)
            try:
                while True:
                    part = tls.recv(65536)
                    if not part:
                        return sha(got), "close_notify"
                    got += part
            except (ssl.SSLError, ConnectionResetError) as exc:
                return sha(got), repr(exc)

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, WriteAndClose))
        digest, how = await ThreadPeer(slow_peer, port).join(timeout=60)
        assert how == "close_notify"
        assert digest == sha(data)
        assert await asyncio.wait_for(apps[0].lost, 10) is None
        server.close()
        await server.wait_closed()

    run(main())
