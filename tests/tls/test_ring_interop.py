"""Interop and bad input on the io_uring loop through the public path: ``create_server(ssl=...)`` on
``uringws.new_event_loop()`` (TLSLoopMixin -> TLSProtocol -> RingSocketTransport).

The other tests in this folder already run on the ring loop too (conftest's ``run`` is parametrized over the
selector and the ring loop), but they build TLSProtocol themselves; these check the ``ssl=`` plumbing the
server API uses, with real peers (Python's ssl on blocking sockets, ``openssl s_client``) and bad ones, and that
the bytes really went through the ring's transport.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme

from uringws.loop.transports import RingSocketTransport

from .tlshelpers import ManualClient, Recorder, ThreadPeer, collecting, payload, sha

pytestmark = pytest.mark.parametrize("loop_kind", ["ring"])  # overrides conftest's loop_kind: ring only

OPENSSL = shutil.which("openssl")
FLAG = {ssl.TLSVersion.TLSv1_2: "-tls1_2", ssl.TLSVersion.TLSv1_3: "-tls1_3"}
NAME = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}


def _tls_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "uringws.tls")


class RingEcho(Recorder):
    """Echoing recorder that also remembers the stream transport under its TLS transport."""

    lower: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.lower = transport._tls._transport  # type: ignore[attr-defined]


async def _ssl_server(ctx: ssl.SSLContext, apps: list[RingEcho], **kw: Any) -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    assert getattr(loop, "backend", None) == "io_uring", loop

    def make() -> RingEcho:
        return RingEcho(echo=True)

    factory = collecting(apps, make)
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=ctx, **kw)
    return server, server.sockets[0].getsockname()[1]


def _on_ring(app: RingEcho) -> None:
    """The app's TLS transport sat on the ring's stream transport (not a stdlib selector transport)."""
    assert isinstance(app.lower, RingSocketTransport), app.lower


def _python_client(port: int, ctx: ssl.SSLContext, data: bytes) -> tuple[str, str]:
    """Blocking Python ssl client: send ``data``, read the echo, close; returns (sha of echo, TLS version)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(data)
            got = bytearray()
            while len(got) < len(data):
                part = tls.recv(65536)
                assert part, "server closed early"
                got += part
            return sha(got), str(tls.version())


def test_python_ssl_clients_via_create_server_ssl(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    """Eight blocking Python ssl clients at once, 1 byte to 3 MiB each, echoed intact on the ring loop."""

    async def main() -> None:
        apps: list[RingEcho] = []
        server, port = await _ssl_server(server_ctx, apps)
        datas = [payload(n, seed=n) for n in (1, 100, 16 * 1024, 16 * 1024 + 1, 70_000, 444_444, 1 << 20, 3 << 20)]
        peers = [ThreadPeer(_python_client, port, client_ctx, d) for d in datas]
        results = [await p.join(60) for p in peers]
        assert [r[0] for r in results] == [sha(d) for d in datas]
        assert {r[1] for r in results} == {NAME[version]}
        for app in apps:
            _on_ring(app)
        server.close()
        await server.wait_closed()

    run(main())


@pytest.mark.external
@pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed")
def test_s_client_via_create_server_ssl(
    run: Any, server_ctx: ssl.SSLContext, ca: trustme.CA, version: ssl.TLSVersion, tmp_path: Path
) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    lines = b"".join(b"line %d %s\n" % (i, b"y" * (i * 37)) for i in range(300))

    async def main() -> None:
        apps: list[RingEcho] = []
        server, port = await _ssl_server(server_ctx, apps)
        proc = await asyncio.create_subprocess_exec(
            str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(cafile), "-verify_return_error", FLAG[version], "-quiet", "-no_ign_eof",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(lines)
        await proc.stdin.drain()
        echoed = await asyncio.wait_for(proc.stdout.readexactly(len(lines)), 20)
        proc.stdin.close()  # -no_ign_eof: s_client sends close_notify and exits on stdin EOF
        await asyncio.wait_for(proc.wait(), 20)
        assert echoed == lines
        assert bytes(apps[0].data) == lines
        _on_ring(apps[0])
        assert apps[0].transport is not None
        assert apps[0].transport.get_extra_info("ssl_object").version() == NAME[version]
        assert await asyncio.wait_for(apps[0].lost, 10) is None  # a clean close, not an error
        server.close()
        await server.wait_closed()

    run(main())


async def _still_serving(port: int, ctx: ssl.SSLContext) -> None:
    result = await ThreadPeer(_python_client, port, ctx, b"still here").join(20)
    assert result[0] == sha(b"still here")


@pytest.mark.parametrize(
    "bad",
    [b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", payload(3000, seed=9), b"stall"],
    ids=["plain-http", "random-bytes", "stalled-handshake"],
)
def test_bad_peers_via_create_server_ssl(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture, bad: bytes
) -> None:
    """Garbage instead of a ClientHello, or silence: that connection closes with a logged reason, others work."""
    caplog.set_level(logging.INFO, "uringws.tls")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        apps: list[RingEcho] = []
        server, port = await _ssl_server(server_ctx, apps, ssl_handshake_timeout=0.5)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if bad != b"stall":
            await loop.sock_sendall(sock, bad)
        await _still_serving(port, client_ctx)  # served while the bad one is open
        got = bytearray()
        while True:  # nothing, or one alert record, then the close
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
        sock.close()
        assert len(got) < 100 and (not got or got[0] == 0x15), got
        log = _tls_log(caplog)
        if bad == b"stall":
            assert "SSL handshake is taking longer than 0.5 seconds" in log, log
        else:
            assert "TLS handshake with" in log and "failed" in log, log
        assert len(apps) == 2  # the two good connections; the bad one never reached the app protocol
        await _still_serving(port, client_ctx)
        server.close()
        await server.wait_closed()

    run(main())


def test_record_error_does_not_pin_the_receive_path(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that fails its MAC: logged, connection closed, and the error handed to connection_lost() carries
    no traceback. (With one, it pinned every frame of the receive path; on the ring loop's multishot-RECV path
    one of them holds a view of the loop's shared buffer ring, and loop.close() then failed with BufferError.)"""
    caplog.set_level(logging.INFO, "uringws.tls")

    async def main() -> None:
        apps: list[RingEcho] = []
        server, port = await _ssl_server(server_ctx, apps)
        client = await ManualClient.connect(client_ctx, port)
        record = bytearray(client.record(b"z" * 100))
        record[-1] ^= 0x01  # inside the AEAD tag
        await client.send_raw(bytes(record))
        await client.read_until_closed()
        client.sock.close()
        exc = await asyncio.wait_for(apps[0].lost, 10)
        assert isinstance(exc, ssl.SSLError), exc
        assert exc.reason in ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_RECORD_MAC"), exc
        assert exc.__traceback__ is None
        assert "TLS error on connection with" in _tls_log(caplog)
        await _still_serving(port, client_ctx)
        server.close()
        await server.wait_closed()

    run(main())
