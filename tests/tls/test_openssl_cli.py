"""Interop with the ``openssl`` command-line tool (s_client against our server, s_server against our client)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trustme

from .tlshelpers import Recorder, collecting, tls_client, tls_server

OPENSSL = shutil.which("openssl")
pytestmark = [
    pytest.mark.external,
    pytest.mark.skipif(OPENSSL is None, reason="openssl command-line tool not installed"),
]
FLAG = {ssl.TLSVersion.TLSv1_2: "-tls1_2", ssl.TLSVersion.TLSv1_3: "-tls1_3"}
NAME = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}


class EchoUntilEnd(Recorder):
    """Echo; close (with close_notify) once the line END arrives."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(data)
        if self.data.endswith(b"END\n"):
            self.transport.close()


def test_s_client_against_our_server(
    run: Any, server_ctx: ssl.SSLContext, ca: trustme.CA, version: ssl.TLSVersion, tmp_path: Path
) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    lines = b"".join(b"line %d %s\n" % (i, b"x" * i) for i in range(200)) + b"END\n"

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, EchoUntilEnd))
        proc = await asyncio.create_subprocess_exec(
            str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(cafile), "-verify_return_error", FLAG[version], "-quiet",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(lines), 20)
        assert proc.returncode == 0, err
        assert out == lines
        assert bytes(apps[0].data) == lines
        assert await asyncio.wait_for(apps[0].lost, 10) is None
        assert apps[0].transport is not None
        assert apps[0].transport.get_extra_info("ssl_object").version() == NAME[version]
        server.close()
        await server.wait_closed()

    run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_our_client_against_s_server(
    run: Any, server_cert: trustme.LeafCert, client_ctx: ssl.SSLContext, version: ssl.TLSVersion, tmp_path: Path
) -> None:
    """``s_server -rev`` answers each line reversed; our client checks the answers and the protocol."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))

    async def main() -> None:
        port = _free_port()
        proc = await asyncio.create_subprocess_exec(
            str(OPENSSL), "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
            "-rev", "-naccept", "1", FLAG[version],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            app = Recorder()
            for _ in range(100):  # s_server needs a moment to listen
                try:
                    tr, _ = await tls_client(client_ctx, app, port)
                    break
                except ConnectionRefusedError:
                    app = Recorder()
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("s_server did not start")
            assert tr.get_extra_info("ssl_object").version() == NAME[version]
            tr.write(b"hello openssl\n")
            assert await app.wait_bytes(14) == b"lssnepo olleh\n"
            tr.close()
            assert await asyncio.wait_for(app.lost, 10) is None
            out = await asyncio.wait_for(proc.stdout.read(), 10)  # type: ignore[union-attr]
            assert b"CONNECTION CLOSED" in out or b"DONE" in out, out
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    run(main())


@pytest.mark.parametrize("engine", ["stdlib", "compiled"])
def test_renegotiation_refused_by_both_engines(
    run: Any, ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path, engine: str, monkeypatch: Any
) -> None:
    """A TLS 1.2 s_client asks to renegotiate ('R'); our server (OP_NO_RENEGOTIATION) refuses, on either engine:
    the data before it arrives, the connection ends, and nothing after the request is taken as data."""
    from uringws.tls import engine as engine_mod
    from uringws.tls import protocol

    if engine == "compiled" and not engine_mod.available():
        pytest.skip("compiled TLS engine not in use")
    if engine == "stdlib":
        monkeypatch.setattr(protocol, "new_engine", lambda *a: None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    used: list[str] = []

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, protos = await tls_server(ctx, collecting(apps, Recorder))
        proc = await asyncio.create_subprocess_exec(
            str(OPENSSL), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            "-CAfile", str(cafile), "-tls1_2",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None
        proc.stdin.write(b"before\n")
        while not apps or len(apps[0].data) < 7:
            await asyncio.sleep(0.05)
        used.append(type(protos[0]._sslobj).__name__)
        proc.stdin.write(b"R\n")
        await proc.stdin.drain()
        await asyncio.sleep(0.5)
        proc.stdin.write(b"after\n")
        try:
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert proc.stderr is not None
        err = await asyncio.wait_for(proc.stderr.read(), 20)
        await asyncio.wait_for(proc.wait(), 20)
        assert b"RENEGOTIATING" in err  # s_client did ask
        assert b"no renegotiation" in err  # and was told no (the no_renegotiation alert)
        await asyncio.wait_for(apps[0].lost, 10)
        assert bytes(apps[0].data) == b"before\n"
        server.close()
        await server.wait_closed()

    run(main())
    assert used == ["CompiledSSLObject" if engine == "compiled" else "SSLObject"]
