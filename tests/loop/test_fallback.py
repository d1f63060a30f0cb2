"""The epoll fallback: chosen by URINGWS_BACKEND=epoll (or an unusable io_uring), same behaviour."""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import Iterator

import pytest

import uringws.loop
from uringws.loop import events
from uringws.ring import probe

from .echo_harness import run_echo_torture


@pytest.fixture
def epoll_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("URINGWS_BACKEND", "epoll")
    monkeypatch.setattr(events, "_fallback_logged", False)
    probe.availability.cache_clear()
    yield
    probe.availability.cache_clear()


def test_env_selects_epoll_and_logs_once(epoll_env: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="uringws.loop")
    loops = [uringws.loop.new_event_loop() for _ in range(2)]
    try:
        for loop in loops:
            assert loop.backend == "epoll"
            assert loop.ring is None
            assert isinstance(loop._selector, selectors.EpollSelector)
        assert caplog.text.count("using the epoll backend") == 1
        assert "URINGWS_BACKEND=epoll" in caplog.text
    finally:
        for loop in loops:
            loop.close()


def test_unusable_ring_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """io_uring reported usable but the ring cannot be created (e.g. a seccomp rule on setup): epoll."""
    monkeypatch.delenv("URINGWS_BACKEND", raising=False)
    monkeypatch.setattr(events, "availability", lambda: probe.Availability(True, "test", "x"))

    def broken(entries: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    loop = uringws.loop.new_event_loop(ring_factory=broken)
    try:
        assert loop.backend == "epoll"
    finally:
        loop.close()


def test_echo_torture_on_epoll(epoll_env: None) -> None:
    loop = uringws.loop.new_event_loop()
    try:
        assert loop.backend == "epoll"
        results = run_echo_torture(loop, connections=10, msgs=8, max_msg=512 * 1024, seed=5)
        assert len(results) == 10 and all(r.ok for r in results), [r for r in results if not r.ok][:1]
    finally:
        loop.close()


def test_asyncio_run_on_epoll(epoll_env: None) -> None:
    async def main() -> str:
        return asyncio.get_running_loop().backend  # type: ignore[attr-defined]

    with asyncio.Runner(loop_factory=uringws.loop.new_event_loop) as runner:
        assert runner.run(main()) == "epoll"


def test_loop_class_on_both_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer above composes its own subclass (e.g. TLS) and keeps the backend choice of new_event_loop()."""

    class Sub(uringws.loop.EventLoop):
        pass

    for env in ("", "epoll"):
        monkeypatch.setenv("URINGWS_BACKEND", env)
        probe.availability.cache_clear()
        loop = uringws.loop.new_event_loop(loop_class=Sub)
        try:
            assert type(loop) is Sub
            assert loop.backend == ("epoll" if env or not probe.availability().usable else "io_uring")
        finally:
            loop.close()
    probe.availability.cache_clear()
