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


def _ring_loop() -> asyncio.AbstractEventLoop:
    """uringws's public loop (TLSEventLoop over io_uring); the ring backend only, never the epoll fallback."""
    import uringws
    from uringws.ring import probe

    if not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    loop = uringws.new_event_loop()
    assert loop.backend == "io_uring", loop
    return loop


@pytest.fixture(params=["selector", "ring"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Which loop ``run`` uses: the stdlib selector loop or the io_uring loop, both with uringws TLS."""
    return str(request.param)


@pytest.fixture
def run(loop_kind: str) -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """Run a coroutine on a fresh loop of ``loop_kind`` (no pytest-asyncio needed).

    Every test written against ``run`` thus also runs on the ring loop: same TLS layer, the ring's transports.
    """
    from .tlshelpers import TLSSelectorEventLoop

    factory: Callable[[], asyncio.AbstractEventLoop] = TLSSelectorEventLoop if loop_kind == "selector" else _ring_loop
    runner = asyncio.Runner(loop_factory=factory, debug=False)

    def _run(coro: Coroutine[Any, Any, T]) -> T:
        return runner.run(coro)

    try:
        yield _run
    finally:
        runner.close()
