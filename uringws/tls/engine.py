"""Which TLS engine a connection gets: the compiled one (``uringws/tls/_engine.c``) or the stdlib's.

The compiled engine drives OpenSSL directly, with BIOs of its own, from the ``SSL_CTX`` of the caller's
``ssl.SSLContext`` (docs/design.md §9).  :func:`unsupported` says why a connection cannot use it; that connection
then gets ``ssl.SSLObject`` over two ``MemoryBIO`` (logged once per reason, at debug).  ``URINGWS_PURE=1`` switches
it off for the process, as does ``URINGWS_TLS_ENGINE=0`` for this engine alone.

On a TLS 1.3 connection the engine seals application data itself once the handshake is done (``_tls13.h``), and
OpenSSL keeps everything else; ``URINGWS_OWN_RECORDS=0`` leaves all records to OpenSSL. A TLS 1.3 server
connection then frees its OpenSSL ``SSL`` (most of its memory) right after the handshake, and the engine also
does the alerts, close_notify and KeyUpdate that OpenSSL did; ``URINGWS_FREE_SSL=0`` keeps the ``SSL``.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import tempfile
from types import ModuleType
from typing import Any

from .. import _compiled

__all__ = ["CompiledSSLObject", "available", "receive_type", "scan_records", "send_type", "unsupported"]

logger = logging.getLogger("uringws.tls")

_engine: ModuleType | None = None
# Whether engines capture their traffic secrets, so that a TLS 1.3 server seals its own application data.
OWN_RECORDS = os.environ.get("URINGWS_OWN_RECORDS", "1") != "0"
# Whether such a server frees its SSL after the handshake (own records both ways; docs/tls.md).
FREE_SSL = os.environ.get("URINGWS_FREE_SSL", "1") != "0"
_reason = ""
# Offsets (in the context object) of the 3.13 PSK callbacks, which ssl.SSLContext does not expose.
_psk_offsets: tuple[int, ...] = ()


def _psk_probe(mod: Any) -> tuple[int, ...] | None:
    """Find where a context keeps its PSK callbacks (3.13+), on probe contexts; None if not found reliably."""
    offsets = []
    for setter in ("set_psk_server_callback", "set_psk_client_callback"):
        found = set()
        for _ in range(2):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if "server" in setter else ssl.PROTOCOL_TLS_CLIENT)

            def callback(*args: Any) -> Any:
                return None

            getattr(ctx, setter)(callback)
            found.add(mod.field_offset(ctx, callback))
        if len(found) != 1 or -1 in found:
            return None
        offsets.append(found.pop())
    return tuple(offsets)


def _load() -> None:
    global _engine, _reason, _psk_offsets
    if _compiled.PURE:
        _reason = "switched off by URINGWS_PURE=1"
        return
    if os.environ.get("URINGWS_TLS_ENGINE", "1") == "0":
        _reason = "switched off by URINGWS_TLS_ENGINE=0"
        return
    if not (3, 11) <= sys.version_info[:2] <= (3, 13):
        major, minor = sys.version_info[:2]
        _reason = f"Python {major}.{minor}: the SSLContext layout is only known for 3.11-3.13"
        return
    try:
        from . import _engine as mod  # type: ignore[attr-defined]
    except ImportError as exc:
        _reason = f"not built ({exc}); reinstall with a C compiler and OpenSSL's headers (libssl-dev)"
        return
    if not mod.OPENSSL_VERSION_NUMBER == mod.LOADED_OPENSSL_VERSION_NUMBER == ssl.OPENSSL_VERSION_NUMBER:
        _reason = (
            f"OpenSSL mismatch: built against {mod.OPENSSL_VERSION_NUMBER:#x}, loaded "
            f"{mod.LOADED_OPENSSL_VERSION_NUMBER:#x}, Python's ssl uses {ssl.OPENSSL_VERSION_NUMBER:#x}; "
            "rebuild uringws against the OpenSSL Python uses"
        )
        return
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.options |= ssl.OP_NO_TICKET
    if not mod.context_matches(probe, probe.options, probe.verify_mode):
        _reason = "the SSL_CTX read from ssl.SSLContext does not match it (unknown CPython layout)"
        return
    if hasattr(ssl.SSLContext, "set_psk_server_callback"):
        offsets = _psk_probe(mod)
        if offsets is None:
            _reason = "cannot locate the PSK callbacks inside ssl.SSLContext (unknown CPython layout)"
            return
        _psk_offsets = offsets
    _engine = mod


_load()
_compiled.register(
    "tls._engine",
    _engine is not None,
    _reason
    or (
        "TLS through OpenSSL with our own BIOs; TLS 1.3 application records sealed and opened here"
        + (" (the AEAD provider called directly)" if _engine is not None and _engine._aead_direct_available()
           else " (the AEAD through EVP)")
        + ("; the SSL freed after a TLS 1.3 server's handshake" if FREE_SSL else " (SSL kept: URINGWS_FREE_SSL=0)")
        if OWN_RECORDS
        else "TLS records through OpenSSL with our own BIOs (own TLS 1.3 records off: URINGWS_OWN_RECORDS=0)"
    ),
)

#: The C twin of ``TLSProtocol._track_records`` (TLS record boundaries of a received chunk), or None where the
#: engine is not in use; it serves connections on either engine.
scan_records: Any = None if _engine is None else getattr(_engine, "scan_records", None)
#: The C twin of ``TLSProtocol.data_received``'s common case (``TLSProtocol.received_view``), or None.
receive_type: Any = None if _engine is None else getattr(_engine, "Receive", None)
#: The C twin of ``TLSProtocol._write_if_open`` and ``_flush_pending``'s common cases (``write_if_open``), or None.
send_type: Any = None if _engine is None else getattr(_engine, "Send", None)

_logged: set[str] = set()


def available() -> bool:
    """Whether the compiled TLS engine can be used at all in this process."""
    return _engine is not None


def unsupported(context: ssl.SSLContext, server_side: bool, session: ssl.SSLSession | None) -> str | None:
    """Why a connection on ``context`` cannot use the compiled engine (None: it can)."""
    if _engine is None:
        return _reason
    if not server_side:
        return "client side (the engine serves server connections only)"
    if session is not None:
        return "a session to resume"
    if context.sslobject_class is not ssl.SSLObject:
        return "a custom sslobject_class"
    # CPython's callbacks for these read the SSL's app data as their own socket object: a foreign SSL would crash.
    if context.sni_callback is not None:
        return "an sni_callback"
    if getattr(context, "_msg_callback", None) is not None:
        return "a message callback (_msg_callback)"
    if context.keylog_filename:
        return "keylog_filename"
    if any(_engine.field_is_set(context, off) for off in _psk_offsets):
        return "a PSK callback"
    if context.post_handshake_auth:
        return "post_handshake_auth"
    if not _engine.context_matches(context, context.options, context.verify_mode):
        return "the SSL_CTX read from this SSLContext does not match it"
    return None


def new_engine(context: ssl.SSLContext, server_side: bool, session: ssl.SSLSession | None) -> Any:
    """A compiled engine for this connection, or None (the caller uses the stdlib's SSLObject)."""
    why = unsupported(context, server_side, session)
    if why is not None:
        if why not in _logged:
            _logged.add(why)
            logger.debug("TLS connection on the stdlib's ssl (not the compiled engine): %s", why)
        return None
    assert _engine is not None
    return _engine.Engine(context, server_side, record_keys=OWN_RECORDS, free_ssl=FREE_SSL)


class CompiledSSLObject(ssl.SSLObject):
    """What ``get_extra_info("ssl_object")`` returns for a connection on the compiled engine: the queries of
    ``ssl.SSLObject`` (a server-side one), answered by OpenSSL for this connection. A subclass, so that code
    checking ``isinstance(obj, ssl.SSLObject)`` sees what it sees on asyncio's loop."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Any) -> None:  # not SSLObject.__init__, which refuses direct construction
        self._engine = engine

    @property
    def context(self) -> ssl.SSLContext:  # type: ignore[override]
        ctx: ssl.SSLContext = self._engine.context
        return ctx

    @property
    def server_side(self) -> bool:
        return bool(self._engine.server_side)

    @property
    def server_hostname(self) -> str | None:
        return None

    @property
    def session(self) -> None:  # type: ignore[override]
        """Always None: a server has no session to hand to a later connection (clients use the stdlib engine)."""
        return None

    @property
    def session_reused(self) -> bool:
        return bool(self._engine.session_reused())

    def do_handshake(self) -> None:
        self._engine.do_handshake()

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        return self._engine.read(len, buffer)

    def write(self, data: Any) -> int:
        n: int = self._engine.write(data)
        return n

    def pending(self) -> int:
        n: int = self._engine.pending()
        return n

    def unwrap(self) -> None:
        self._engine.unwrap()

    def getpeercert(self, binary_form: bool = False) -> Any:
        """As ``SSLObject.getpeercert``; the dict form is decoded by the stdlib's own decoder."""
        if not self._engine.handshake_done():
            raise ValueError("handshake not done yet")
        der = self._engine.peer_certificate()
        if der is None or binary_form:
            return der
        if not self._engine.verify_mode():
            return {}
        return _decode_cert(der)

    def cipher(self) -> tuple[str, str, int] | None:
        c: tuple[str, str, int] | None = self._engine.cipher()
        return c

    def shared_ciphers(self) -> list[tuple[str, str, int]] | None:
        c: list[tuple[str, str, int]] | None = self._engine.shared_ciphers()
        return c

    def compression(self) -> None:
        return None  # OpenSSL 3 has no TLS compression (CPython's answer there too)

    def version(self) -> str | None:
        v: str | None = self._engine.version()
        return v

    def selected_alpn_protocol(self) -> str | None:
        p: str | None = self._engine.selected_alpn_protocol()
        return p

    def selected_npn_protocol(self) -> None:
        return None

    def get_channel_binding(self, cb_type: str = "tls-unique") -> bytes | None:
        if cb_type != "tls-unique":
            raise ValueError(f"{cb_type!r} channel binding type not implemented")
        b: bytes | None = self._engine.tls_unique()
        return b

    def verify_client_post_handshake(self) -> None:
        raise ssl.SSLError("post-handshake authentication is not enabled (contexts with it use the stdlib engine)")


def _decode_cert(der: bytes) -> dict[str, Any]:
    """The dict ``getpeercert()`` returns, by CPython's own decoder (it reads a PEM file)."""
    import _ssl

    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(ssl.DER_cert_to_PEM_cert(der))
        cert: dict[str, Any] = _ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        return cert
    finally:
        os.unlink(path)
