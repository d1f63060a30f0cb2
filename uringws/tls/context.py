"""SSLContext factories with sane defaults for uringws servers and clients.

Defaults: TLS 1.2 minimum (``tls13_only=True`` for 1.3 only), certificate verification and hostname
checking on for clients, no compression, no renegotiation (TLS 1.2 renegotiation is a DoS lever and useless
for WebSockets).  Both factories return an ordinary :class:`ssl.SSLContext`, so anything set here can be
changed afterwards.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

__all__ = ["client_context", "server_context"]

StrPath = str | os.PathLike[str]


def _apply_common(ctx: ssl.SSLContext, tls13_only: bool, alpn: Sequence[str] | None) -> None:
    """Protocol floor, options and ALPN shared by both sides."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if hasattr(ssl, "OP_NO_RENEGOTIATION"):
        ctx.options |= ssl.OP_NO_RENEGOTIATION
    if alpn:
        ctx.set_alpn_protocols(list(alpn))


def server_context(
    certfile: StrPath,
    keyfile: StrPath | None = None,
    *,
    password: str | bytes | None = None,
    alpn: Sequence[str] | None = ("http/1.1",),
    tls13_only: bool = False,
    client_cafile: StrPath | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """Make a server context that loads ``certfile``/``keyfile`` (PEM).

    ``client_cafile`` enables client certificates (optional unless ``require_client_cert``).
    ALPN defaults to ``http/1.1``, which is what browsers offer for WebSocket-over-HTTP/1.1.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_common(ctx, tls13_only, alpn)
    # Prefer the server's cipher order (only matters for TLS 1.2; 1.3 suites are all strong).
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(certfile, keyfile, password)
    if client_cafile is not None:
        ctx.load_verify_locations(cafile=client_cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert=True needs client_cafile to verify client certificates")
    return ctx


def client_context(
    cafile: StrPath | None = None,
    *,
    cadata: str | bytes | None = None,
    certfile: StrPath | None = None,
    keyfile: StrPath | None = None,
    alpn: Sequence[str] | None = ("http/1.1",),
    tls13_only: bool = False,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Make a client context verifying servers against ``cafile``/``cadata`` or the system store.

    ``certfile``/``keyfile`` present a client certificate.  ``check_hostname=False`` keeps chain
    verification but skips the name check (e.g. for a dev certificate reached by another name).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_common(ctx, tls13_only, alpn)
    if cafile is not None or cadata is not None:
        ctx.load_verify_locations(cafile=cafile, cadata=cadata)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = check_hostname
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx
