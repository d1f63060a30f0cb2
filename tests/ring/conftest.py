"""Shared fixtures for the io_uring layer: a ring per test, socket helpers, a bounded reap loop."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from uringws.ring import Ring
from uringws.ring.fast import RING_CLASSES
from uringws.ring.probe import availability


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip (with the reason) every test that needs a ring where io_uring is unusable."""
    avail = availability()
    if avail:
        return
    skip = pytest.mark.skip(reason=f"io_uring unusable here: {avail.reason}")
    for item in items:
        if "needs_no_ring" not in item.keywords and "tests/ring" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(params=RING_CLASSES, ids=lambda cls: "compiled" if cls is not Ring else "pure")
def ring_cls(request: pytest.FixtureRequest) -> type[Ring]:
    """Each ring class there is: the pure `Ring`, and `CompiledRing` where it is built (and not URINGWS_PURE=1)."""
    cls: type[Ring] = request.param
    return cls


@pytest.fixture
def ring(ring_cls: type[Ring]) -> Iterator[Ring]:
    r = ring_cls(64)
    try:
        yield r
    finally:
        r.close()


def submit(ring: Any, method: str, *args: Any, **kw: Any) -> tuple[int, list[tuple[int, int]]]:
    """Call ``ring.<method>(*args, callback, **kw)`` and return (user_data, list that receives (res, flags))."""
    got: list[tuple[int, int]] = []
    ud = getattr(ring, method)(*args, lambda res, flags: got.append((res, flags)), **kw)
    return ud, got


def reap_until(ring: Any, pred: Callable[[], bool], timeout: float = 5.0) -> None:
    """wait() until ``pred()`` holds; fail (never hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("timed out waiting for completions")
        ring.wait(min(left, 0.05))


def tcp_pair(family: int = socket.AF_INET, *, sndbuf: int | None = None,
             rcvbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (client, server); buffer sizes are set before connecting."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as lsock:
        lsock.bind((host, 0))
        lsock.listen(1)
        c = socket.socket(family, socket.SOCK_STREAM)
        if sndbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        c.connect(lsock.getsockname())
        s, _ = lsock.accept()
    return c, s


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_no_ring: runs even where io_uring is unusable (mocked kernel)")
