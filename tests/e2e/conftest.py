"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import ssl

import pytest
import trustme


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for localhost and 127.0.0.1 from a fresh test CA, and a client context
    that trusts that CA (a module's own ``tls`` fixture, where it needs another, takes precedence)."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx
