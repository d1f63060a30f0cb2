"""Fixtures for the TLS layer tests: a throw-away CA (trustme) and contexts for TLS 1.2 and 1.3."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import trustme

T = TypeVar("T")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1", "example.test")


@pytest.fixture(params=["TLSv1_2", "TLSv1_3"])
def version(request: pytest.FixtureRequest) -> ssl.TLSVersion:
    return getattr(ssl.TLSVersion, request.param)


@pytest.fixture
def server_ctx(server_cert: trustme.LeafCert, version: ssl.TLSVersion) -> ssl.SSLContext:
    """Server context pinned to one protocol version, so each test runs once per version."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(ctx)
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def run() -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """Run a coroutine on a fresh stdlib selector loop (no pytest-asyncio needed)."""
    from .tlshelpers import TLSSelectorEventLoop

    runner = asyncio.Runner(loop_factory=TLSSelectorEventLoop, debug=False)

    def _run(coro: Coroutine[Any, Any, T]) -> T:
        return runner.run(coro)

    try:
        yield _run
    finally:
        runner.close()
