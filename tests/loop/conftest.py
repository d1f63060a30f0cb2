"""Fixtures for the loop tests: a loop per backend, the epoll fallback selected the way users select it."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Iterator

import pytest

import uringws.loop
from uringws.ring import probe


def open_fds() -> int:
    """Open fds of this process, after collecting garbage (an unreachable socket still holds its fd)."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def ring_loop() -> Iterator[uringws.loop.EventLoop]:
    if not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    loop = uringws.loop.EventLoop()
    yield loop
    loop.close()


@pytest.fixture(params=["io_uring", "epoll"])
def backend_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[uringws.loop.EventLoop]:
    """new_event_loop() on each backend; epoll is chosen with URINGWS_BACKEND=epoll, as a user would."""
    if request.param == "epoll":
        monkeypatch.setenv("URINGWS_BACKEND", "epoll")
    else:
        monkeypatch.delenv("URINGWS_BACKEND", raising=False)
    probe.availability.cache_clear()  # lru_cached: re-read the environment
    try:
        if request.param == "io_uring" and not probe.availability().usable:
            pytest.skip(f"io_uring unusable: {probe.availability().reason}")
        loop = uringws.loop.new_event_loop()
    finally:
        probe.availability.cache_clear()
    assert loop.backend == request.param
    asyncio.set_event_loop(loop)
    yield loop
    asyncio.set_event_loop(None)
    loop.close()
    probe.availability.cache_clear()
