"""Echo over TLS 1.2 and 1.3: our server and client against Python's ssl on blocking sockets, and each other."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import time
from typing import Any

import pytest
import trustme

from uringws.tls.protocol import TLSProtocol

from .tlshelpers import Recorder, ThreadPeer, collecting, payload, sha, tls_client, tls_server

SIZES = [1, 64, 16384, 16385, 100_000, 1_000_000]


def _blocking_echo_client(ctx: ssl.SSLContext, port: int, data: bytes, chunk: int = 65536) -> tuple[bytes, str]:
    """Send ``data``, read the same amount back, close with close_notify; return (echoed, version)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(data)
            got = bytearray()
            while len(got) < len(data):
                part = tls.recv(chunk)
                if not part:
                    break
                got += part
            version = tls.version() or ""
            tls.unwrap()
            return bytes(got), version


def test_server_echo_vs_python_client(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """Each size goes through our server and comes back intact, on the pinned protocol version."""

    async def main() -> None:
        server, port, _ = await tls_server(server_ctx, lambda: Recorder(echo=True))
        try:
            for i, n in enumerate(SIZES):
                data = payload(n, seed=i)
                got, version = await ThreadPeer(_blocking_echo_client, client_ctx, port, data).join()
                assert sha(got) == sha(data), n
                assert (
                    version
                    == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[
                        server_ctx.maximum_version
                    ]
                )
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def _blocking_echo_server(ctx: ssl.SSLContext, lsock: socket.socket) -> int:
    """Accept one TLS connection and echo until the peer's close_notify; return bytes echoed."""
    conn, _ = lsock.accept()
    conn.settimeout(10)
    total = 0
    with ctx.wrap_socket(conn, server_side=True) as tls:
        while True:
            data = tls.recv(65536)
            if not data:
                break
            tls.sendall(data)
            total += len(data)
        tls.unwrap()
    return total


def test_client_echo_vs_python_server(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    async def main() -> None:
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]
        peer = ThreadPeer(_blocking_echo_server, server_ctx, lsock)
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        sent = bytearray()
        for i, n in enumerate(SIZES):
            data = payload(n, seed=100 + i)
            tr.write(data)
            sent += data
        got = await app.wait_bytes(len(sent))
        assert sha(got) == sha(sent)
        tr.close()  # close_notify: the Python server's recv() returns b"" and it answers with its own
        assert await asyncio.wait_for(app.lost, 10) is None
        assert await peer.join() == len(sent)
        lsock.close()

    run(main())


def test_ours_vs_ours_through_loop_api(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """create_server(ssl=)/create_connection(ssl=) on a loop whose _make_ssl_transport is ours."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Recorder(echo=True), "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        app = Recorder()
        tr, _ = await loop.create_connection(
            lambda: app, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        assert type(tr).__name__ == "TLSTransport"
        data = payload(3_000_000, seed=7)
        # Many small writes and one large one, mixed with writelines: order must hold.
        for i in range(0, 10_000, 100):
            tr.write(data[i : i + 100])
        tr.writelines([data[10_000:20_000], bytearray(data[20_000:30_000]), memoryview(data)[30_000:40_000]])
        tr.write(data[40_000:])
        got = await app.wait_bytes(len(data), timeout=30)
        assert sha(got) == sha(data)
        assert tr.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert tr.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
        assert tr.get_extra_info("sslcontext") is client_ctx
        assert tr.get_extra_info("peername")[1] == port
        assert tr.get_extra_info("cipher")[1] in ("TLSv1.2", "TLSv1.3")
        with pytest.raises(NotImplementedError):
            tr.write_eof()
        assert not tr.can_write_eof()
        tr.close()
        assert tr.is_closing()
        assert await asyncio.wait_for(app.lost, 10) is None
        server.close()
        await server.wait_closed()

    run(main())


def test_start_tls_upgrade(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A plain connection upgraded with start_tls on both ends (STARTTLS style), then echo."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        app = Recorder()  # start_tls does not call connection_made(): it already had the plain transport
        upgraded: asyncio.Future[asyncio.Transport] = loop.create_future()

        class Upgrading(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                assert data == b"STARTTLS\n"
                self.transport.write(b"GO\n")  # type: ignore[attr-defined]

                async def up() -> None:
                    tr = await loop.start_tls(
                        self.transport,  # type: ignore[arg-type]
                        app,
                        server_ctx,
                        server_side=True,
                    )
                    tr.write(b"pong" * 1000)  # type: ignore[union-attr]
                    upgraded.set_result(tr)  # type: ignore[arg-type]

                self.task = loop.create_task(up())

        server = await loop.create_server(Upgrading, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname="localhost")
        writer.write(b"ping" * 1000)
        assert await asyncio.wait_for(reader.readexactly(4000), 10) == b"pong" * 1000
        assert await app.wait_bytes(4000) == b"ping" * 1000
        tr = await upgraded
        assert type(tr).__name__ == "TLSTransport"
        assert tr.get_extra_info("ssl_object") is not None
        writer.close()
        await writer.wait_closed()
        assert await asyncio.wait_for(app.lost, 10) is None
        server.close()
        await server.wait_closed()

    run(main())


def test_large_message_slow_reader(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """16 MiB from our server to a client with a 4 KiB receive buffer reading slowly; hash-checked.

    The TCP transport's buffer fills, so short sends and pause_writing happen for real; the app must be paused
    and resumed and every byte must arrive in order.
    """
    size = 16 * 1024 * 1024
    data = payload(size, seed=16)
    apps: list[Recorder] = []

    def factory() -> Recorder:
        apps.append(Recorder())
        return apps[-1]

    def slow_client(port: int) -> str:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", port))
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"go")
            h = hashlib.sha256()
            got = 0
            reads = 0
            time.sleep(0.2)  # let the server's buffers fill before draining
            while got < size:
                part = tls.recv(4096)
                if not part:
                    break
                h.update(part)
                got += len(part)
                reads += 1
                if reads % 64 == 0:
                    time.sleep(0.001)  # a slow consumer: the server keeps hitting a full window
            return h.hexdigest()

    async def main() -> None:
        server, port, _protos = await tls_server(server_ctx, factory)
        peer = ThreadPeer(slow_client, port)
        for _ in range(200):
            if apps and apps[0].data:
                break
            await asyncio.sleep(0.01)
        app = apps[0]
        assert app.transport is not None
        app.transport.write(data)
        digest = await peer.join(timeout=60)
        assert digest == sha(data)
        assert app.paused >= 1 and app.resumed >= 1  # flow control really happened
        app.transport.close()
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_large_upload_to_server(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """16 MiB from our client into our server: the receive path across many reads, hash-checked."""
    size = 16 * 1024 * 1024
    data = payload(size, seed=17)

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        tr.write(data)
        for _ in range(3000):
            if apps and len(apps[0].data) >= size:
                break
            await asyncio.sleep(0.01)
        assert sha(apps[0].data) == sha(data)
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        assert await asyncio.wait_for(apps[0].lost, 10) is None
        assert apps[0].eof  # our close_notify reached the server app as EOF
        server.close()
        await server.wait_closed()

    run(main())


def test_alpn_and_sni(run: Any, server_cert: trustme.LeafCert, ca: trustme.CA) -> None:
    """The server sees the SNI name, both sides agree on the ALPN protocol."""
    seen: list[str | None] = []
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(sctx)
    sctx.set_alpn_protocols(["h2", "http/1.1"])
    sctx.sni_callback = lambda sslobj, name, ctx: seen.append(name)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(cctx)
    cctx.set_alpn_protocols(["http/1.1"])

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _protos = await tls_server(sctx, collecting(apps, Recorder))
        app = Recorder()
        tr, _ = await tls_client(cctx, app, port, server_hostname="example.test")
        assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        tr.write(b"x")
        await asyncio.sleep(0.05)
        assert apps[0].transport is not None
        assert apps[0].transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        assert seen == ["example.test"]
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_client_certificates(
    run: Any,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    version: ssl.TLSVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A required client certificate is verified and visible as peercert; a missing one fails cleanly."""
    caplog.set_level(logging.INFO, logger="uringws.tls")  # failed handshakes are logged at INFO
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(sctx)
    ca.configure_trust(sctx)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.maximum_version = version
    client_cert = ca.issue_cert("client@example.test")
    with_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(with_cert)
    client_cert.configure_cert(with_cert)
    without_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(without_cert)

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(sctx, collecting(apps, lambda: Recorder(echo=True)))
        app = Recorder()
        tr, _ = await tls_client(with_cert, app, port)
        tr.write(b"hello")
        assert await app.wait_bytes(5) == b"hello"
        assert apps[0].transport is not None
        assert "client@example.test" in str(apps[0].transport.get_extra_info("peercert"))
        tr.close()
        await asyncio.wait_for(app.lost, 10)

        # Without a certificate: TLS 1.2 fails in the handshake; TLS 1.3 reports the server's alert on the
        # first read after the client's handshake completed.  Either way the client sees an SSLError.
        app2 = Recorder()
        try:
            tr2, _ = await tls_client(without_cert, app2, port)
        except ssl.SSLError as exc:
            err: BaseException | None = exc
        else:
            tr2.write(b"hello")
            err = await asyncio.wait_for(app2.lost, 10)
        assert isinstance(err, ssl.SSLError), err
        assert "HANDSHAKE_FAILURE" in str(err) or "CERTIFICATE" in str(err), err
        assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in r.getMessage() for r in caplog.records)
        server.close()
        await server.wait_closed()

    run(main())


def test_session_reuse(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A client session from one connection resumes on the next (TLS 1.2 session id/ticket, 1.3 ticket)."""

    async def main() -> None:
        server, port, _ = await tls_server(server_ctx, lambda: Recorder(echo=True))
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        tr.write(b"hi")
        await app.wait_bytes(2)  # in TLS 1.3 the ticket arrives after the handshake; reading picks it up
        sslobj = tr.get_extra_info("ssl_object")
        session = sslobj.session
        assert session is not None and not sslobj.session_reused
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        app2 = Recorder()
        tr2, _ = await tls_client(client_ctx, app2, port, session=session)
        assert tr2.get_extra_info("ssl_object").session_reused
        tr2.write(b"again")
        assert await app2.wait_bytes(5) == b"again"
        tr2.close()
        await asyncio.wait_for(app2.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_buffered_app_protocol(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """An application BufferedProtocol gets plaintext decrypted straight into its own buffer."""

    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(1000)  # small on purpose: many get_buffer() rounds per record
            self.data = bytearray()
            self.lost = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint: int) -> memoryview:
            return memoryview(self.buf)

        def buffer_updated(self, nbytes: int) -> None:
            self.data += self.buf[:nbytes]

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        server, port, _ = await tls_server(server_ctx, lambda: Recorder(echo=True))
        app = Buffered()
        tr, _ = await tls_client(client_ctx, app, port)
        data = payload(200_000, seed=3)
        tr.write(data)
        for _ in range(1000):
            if len(app.data) >= len(data):
                break
            await asyncio.sleep(0.01)
        assert sha(app.data) == sha(data)
        tr.close()
        assert await asyncio.wait_for(app.lost, 10) is None
        server.close()
        await server.wait_closed()

    run(main())


def test_constructor_validation() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            TLSProtocol(loop, asyncio.Protocol(), None, server_side=True)
        with pytest.raises(ValueError):
            TLSProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), ssl_handshake_timeout=0)
        with pytest.raises(ValueError):
            TLSProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), ssl_shutdown_timeout=-1)
        p = TLSProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), server_hostname="x")
        assert p.app_transport.get_extra_info("sslcontext") is not None
        assert p.app_transport.get_write_buffer_limits() == (16384, 65536)
    finally:
        loop.close()


def test_many_concurrent_echoes_with_tiny_send_buffer(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """20 connections at once, 4 KiB SO_SNDBUF on the server (real short sends), sizes 1 B..1 MiB, hashed.

    All connections share one receive buffer and one plaintext buffer per thread; interleaving must not mix
    their bytes.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.create_server(("127.0.0.1", 0))
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by accepted sockets
        lsock.setblocking(False)
        server = await loop.create_server(
            lambda: TLSProtocol(loop, Recorder(echo=True), server_ctx, None, server_side=True), sock=lsock
        )
        port = lsock.getsockname()[1]

        async def one(i: int) -> None:
            app = Recorder()
            tr, _ = await tls_client(client_ctx, app, port)
            data = payload([1, 64, 1000, 70_000, 1_000_000][i % 5] + i, seed=1000 + i)
            for k in range(0, len(data), 50_000):
                tr.write(data[k : k + 50_000])
                await asyncio.sleep(0)
            got = await app.wait_bytes(len(data), timeout=60)
            assert sha(got) == sha(data), i
            tr.close()
            assert await asyncio.wait_for(app.lost, 10) is None

        await asyncio.gather(*(one(i) for i in range(20)))
        server.close()
        await server.wait_closed()

    run(main())
