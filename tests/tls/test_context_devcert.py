"""SSLContext factories, the development certificate, and OpenSSL's idle-buffer release mode."""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509

from uringws.tls import client_context, server_context
from uringws.tls.devcert import default_directory, ensure_devcert, fingerprint, generate

from .tlshelpers import Recorder, tls_client, tls_server


def test_generate_devcert_names_and_key() -> None:
    cert_pem, key_pem = generate()
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert b"PRIVATE KEY" in key_pem
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=300)
    assert len(fingerprint(cert_pem).split(":")) == 32


def test_ensure_devcert_caches_and_renews(tmp_path: Path) -> None:
    first = ensure_devcert(tmp_path)
    assert first.cert_path.exists() and first.key_path.exists()
    assert os.stat(first.key_path).st_mode & 0o077 == 0  # the key is private to the user
    assert ensure_devcert(tmp_path) == first  # reused, same fingerprint
    first.cert_path.write_bytes(b"garbage")  # unusable cache -> a new pair
    second = ensure_devcert(tmp_path)
    assert second.fingerprint != first.fingerprint


def test_default_directory_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "uringws"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_directory() == Path.home() / ".local" / "share" / "uringws"


def test_factories_with_devcert_end_to_end(run: Any, tmp_path: Path) -> None:
    """server_context + client_context trusting the dev certificate: handshake, ALPN, TLS 1.2 floor."""
    dev = ensure_devcert(tmp_path)
    sctx = server_context(dev.cert_path, dev.key_path)
    cctx = client_context(dev.cert_path)
    assert sctx.minimum_version == ssl.TLSVersion.TLSv1_2 == cctx.minimum_version
    assert server_context(dev.cert_path, dev.key_path, tls13_only=True).minimum_version == ssl.TLSVersion.TLSv1_3

    async def main() -> None:
        server, port, _ = await tls_server(sctx, lambda: Recorder(echo=True))
        for host in ("localhost", "127.0.0.1"):
            app = Recorder()
            tr, _ = await tls_client(cctx, app, port, server_hostname=host)
            assert tr.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            tr.write(b"ok")
            assert await app.wait_bytes(2) == b"ok"
            tr.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_tls12_client_refused_by_tls13_only_server(run: Any, tmp_path: Path) -> None:
    dev = ensure_devcert(tmp_path)
    sctx = server_context(dev.cert_path, dev.key_path, tls13_only=True)
    cctx = client_context(dev.cert_path)
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main() -> None:
        server, port, _ = await tls_server(sctx, Recorder)
        with pytest.raises(ssl.SSLError):
            await tls_client(cctx, Recorder(), port)
        server.close()
        await server.wait_closed()

    run(main())


def test_client_cert_options(ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path) -> None:
    cert, key, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert))
    server_cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    assert server_context(cert, key, client_cafile=cafile).verify_mode == ssl.CERT_OPTIONAL
    assert server_context(cert, key, client_cafile=cafile, require_client_cert=True).verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ValueError):
        server_context(cert, key, require_client_cert=True)


SSL_CTRL_MODE = 33  # openssl/ssl.h
SSL_MODE_RELEASE_BUFFERS = 0x10


def _ssl_ctx_mode(ctx: ssl.SSLContext) -> int:
    """SSL_CTX_get_mode() of a CPython SSLContext, through ctypes.

    Relies on CPython's PySSLContext layout (PyObject_HEAD then ``SSL_CTX *ctx``), stable across 3.11-3.13.
    """
    name = ctypes.util.find_library("ssl") or "libssl.so.3"
    lib = ctypes.CDLL(name)
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    return int(lib.SSL_CTX_ctrl(ptr, SSL_CTRL_MODE, 0, None))


def test_openssl_releases_idle_buffers(tmp_path: Path) -> None:
    """CPython sets SSL_MODE_RELEASE_BUFFERS on every context: OpenSSL frees record buffers while idle.

    That is why an idle connection costs no 16-34 KiB OpenSSL read/write buffers; if a future CPython
    dropped it, this test says so.
    """
    if ssl.OPENSSL_VERSION_INFO[0] < 3:
        pytest.skip("checked against OpenSSL 3 only")
    dev = ensure_devcert(tmp_path)
    for ctx in (server_context(dev.cert_path, dev.key_path), client_context(dev.cert_path)):
        mode = _ssl_ctx_mode(ctx)
        assert mode & SSL_MODE_RELEASE_BUFFERS, hex(mode)
