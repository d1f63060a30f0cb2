"""The loop with completion batching, ``EventLoop(batch_wait=...)``: the send path's proofs hold on it, a
WebSocket echo over TLS is intact, and the ring's thread binding (SINGLE_ISSUER) fails loudly, never silently."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from collections.abc import Callable, Iterator

import pytest
import trustme

import uringws
import uringws.loop
from uringws.ring import probe
from uringws.ring.fast import RING_CLASS
from uringws.ring.io_uring import IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER

from .echo_harness import run_echo_torture

pytestmark = pytest.mark.skipif(not probe.availability().usable, reason="io_uring unusable here")


def batching_loop(**kwargs: object) -> uringws.loop.EventLoop:
    try:
        return uringws.loop.EventLoop(batch_wait=50e-6, **kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        if "refused" in str(exc):
            pytest.skip(str(exc))
        raise


@pytest.fixture
def loop() -> Iterator[uringws.loop.EventLoop]:
    lp = batching_loop()
    yield lp
    if not lp.is_closed():
        lp.close()


def test_the_ring_is_set_up_for_it(loop: uringws.loop.EventLoop) -> None:
    ring = loop._ring
    assert ring.setup_flags & IORING_SETUP_DEFER_TASKRUN
    assert ring.setup_flags & IORING_SETUP_SINGLE_ISSUER
    assert ring.batch_wait == 50e-6
    assert ring.batch_count == 16


def test_off_by_default() -> None:
    lp = uringws.loop.EventLoop()
    try:
        assert not lp._ring.setup_flags & IORING_SETUP_DEFER_TASKRUN
        assert lp._ring.batch_wait == 0.0
    finally:
        lp.close()


def test_echo_short_writes_batched(loop: uringws.loop.EventLoop) -> None:
    """The byte-exact echo torture (tiny socket buffers, real short writes) on a batching loop."""
    results = run_echo_torture(loop, connections=20, msgs=12, max_msg=1024 * 1024, seed=11)
    assert len(results) == 20
    bad = [r for r in results if not r.ok]
    assert not bad, bad[0]
    assert loop.send_stats.short_sends >= 20, loop.send_stats
    assert loop._ring.batched_waits > 0  # the batched wait really ran


def test_websocket_echo_over_tls_batched() -> None:
    """50 connections x 8 messages in flight over TLS through uringws's server, every message back in order."""
    ca = trustme.CA()
    import ssl

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    rng = random.Random(5)
    batched: list[int] = []

    async def main() -> None:
        from uringws.client import connect
        from uringws.server import serve

        async def echo(ws: uringws.server.ServerConnection) -> None:
            await ws.dispatch(ws.send_nowait)

        async with serve(echo, "127.0.0.1", 0, ssl=server_ctx, compression=None) as server:
            url = f"wss://127.0.0.1:{server.port_bound}/"

            async def client(i: int) -> None:
                msgs = [rng.randbytes(rng.randrange(1, 3000)) for _ in range(60)]
                async with connect(url, ssl=client_ctx, compression=None) as ws:
                    got = hashlib.sha256()

                    async def reader() -> None:
                        for _ in msgs:
                            got.update(await ws.recv())

                    task = asyncio.create_task(reader())
                    for m in msgs:
                        await ws.send(m)
                    await task
                    assert got.hexdigest() == hashlib.sha256(b"".join(msgs)).hexdigest(), i

            await asyncio.gather(*(client(i) for i in range(50)))
            batched.append(asyncio.get_running_loop()._ring.batched_waits)  # type: ignore[attr-defined]

    with asyncio.Runner(loop_factory=lambda: uringws.new_event_loop(batch_wait=50e-6)) as runner:
        runner.run(asyncio.wait_for(main(), 60))
    assert batched and batched[0] > 0


def errors_in_a_thread(fn: Callable[[], object]) -> list[BaseException]:
    """Run ``fn`` in a thread of its own; what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return errors


def test_running_in_another_thread_is_refused(loop: uringws.loop.EventLoop) -> None:
    errors = errors_in_a_thread(loop.run_forever)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert "thread" in str(errors[0]) and "SINGLE_ISSUER" in str(errors[0])
    assert loop.run_until_complete(asyncio.sleep(0, "still runs here")) == "still runs here"


def test_closing_in_another_thread_is_refused(loop: uringws.loop.EventLoop) -> None:
    errors = errors_in_a_thread(loop.close)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert not loop.is_closed()
    loop.close()  # in its own thread: fine
    assert loop._ring.closed


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="io_uring backend"):
        uringws.loop.EventLoop(backend="epoll", batch_wait=50e-6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        uringws.loop.EventLoop(batch_wait=-1.0)
    made: list[object] = []

    def factory(entries: int) -> object:
        made.append(RING_CLASS(entries))
        return made[-1]

    with pytest.raises(ValueError, match="DEFER_TASKRUN"):
        uringws.loop.EventLoop(ring_factory=factory, batch_wait=50e-6)
    assert made and made[0].closed  # type: ignore[attr-defined]


def test_epoll_fallback_says_it_drops_batch_wait(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Where io_uring is unusable, new_event_loop() falls back to epoll and says batch_wait does nothing there."""
    monkeypatch.setenv("URINGWS_BACKEND", "epoll")
    probe.availability.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="uringws"):
            lp = uringws.loop.new_event_loop(batch_wait=50e-6)
        try:
            assert lp.backend == "epoll"
            assert "batch_wait has no effect" in caplog.text
        finally:
            lp.close()
    finally:
        monkeypatch.delenv("URINGWS_BACKEND")
        probe.availability.cache_clear()
