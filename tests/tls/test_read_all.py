"""``Engine.read_all``: every decrypted byte available in one call, and errors met after data never lost.

The engine-level tests need the compiled engine; the connection-level one runs on whichever engine the TLS layer
picks (the stdlib's with ``URINGWS_PURE=1``): both must close a connection whose bad record arrived behind data
that the app paused after.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uringws.tls import engine as engine_mod
from uringws.tls.protocol import TLSProtocol

from .test_engine_parity import Server, client_ctx, connect, server_ctx, split
from .test_inmemory import MemTransport, Sink, deliver

needs_engine = pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")


def drain(server: Server, size: int) -> tuple[bytes, str]:
    """Decrypt with read_all() into a buffer of ``size`` bytes, calling again while ``more`` says so."""
    eng = server.obj._engine
    got = bytearray()
    buf = bytearray(size)
    while True:
        try:
            n = eng.read_all(buf)
        except ssl.SSLZeroReturnError:
            return bytes(got), "close_notify"
        except ssl.SSLError as exc:
            return bytes(got), f"{type(exc).__name__}:{exc.reason}"
        got += buf[:n]
        if not eng.more:
            return bytes(got), "want-read"


def stream(version: str, sizes: list[int], ending: str) -> tuple[bytes, bytes, tuple[Any, Server], tuple[Any, Server]]:
    """The client's records for ``sizes`` (and the ending), with a pure and a compiled server ready for them."""
    pure = connect("pure", server_ctx(version), client_ctx())
    compiled = connect("compiled", server_ctx(version), client_ctx())
    out = []
    for client, _ in (pure, compiled):
        for i, n in enumerate(sizes):
            client.obj.write(bytes([i % 251]) * n)
        if ending == "close_notify":
            try:
                client.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
        data = client.outgoing.read()
        if ending == "corrupt":
            data = data[:-3] + bytes([data[-3] ^ 0x55]) + data[-2:]  # the last record's tag
        out.append(data)
    return out[0], out[1], pure, compiled


@needs_engine
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from(["TLSv1_2", "TLSv1_3"]),
    sizes=st.lists(st.integers(1, 40000), min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=8),
    ending=st.sampled_from(["none", "close_notify", "corrupt"]),
    size=st.sampled_from([1, 100, 16384, 16385, 256 * 1024]),
)
def test_read_all_gives_what_reads_one_record_at_a_time_give(
    version: str, sizes: list[int], cuts: list[int], ending: str, size: int
) -> None:
    """Same plaintext and the same ending (want-read, close_notify or the same error) as the stdlib's SSLObject
    read record by record, for any split of the records and any buffer size (full buffers set ``more``)."""
    pure_stream, compiled_stream, (_, pure), (_, compiled) = stream(version, sizes, ending)
    results = []
    for server, data, read in ((pure, pure_stream, Server.read_all), (compiled, compiled_stream, None)):
        got = b""
        how = "want-read"
        for piece in split(data, cuts):
            if read is not None:
                part, how = server.deliver(piece)
            else:
                server.incoming.write(piece)
                part, how = drain(server, size)
            got += part
            if how != "want-read":
                break
        results.append((got, how))
    assert results[0] == results[1]
    if ending == "none":
        assert results[1][0] == b"".join(bytes([i % 251]) * n for i, n in enumerate(sizes))


@needs_engine
@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_an_error_after_data_is_raised_by_the_next_call(version: str) -> None:
    pure_data, data, (_, pure), (_, server) = stream(version, [1000, 2000], "corrupt")
    eng = server.obj._engine
    server.incoming.write(data)
    buf = bytearray(1 << 16)
    assert eng.read_all(buf) == 1000  # the good record, then the bad one: the data comes first
    assert eng.more
    with pytest.raises(ssl.SSLError) as info:
        eng.read_all(buf)
    assert not eng.more
    # The error the bad record raised, not whatever OpenSSL says when asked to read after a fatal error.
    assert pure.deliver(pure_data) == (bytes(1000), f"SSLError:{info.value.reason}")


@needs_engine
def test_a_pending_error_is_raised_by_read_too() -> None:
    _, data, _, (_, server) = stream("TLSv1_3", [10, 20], "corrupt")
    server.incoming.write(data)
    assert server.obj._engine.read_all(bytearray(100)) == 10
    with pytest.raises(ssl.SSLError):
        server.obj.read(100)


@needs_engine
def test_close_notify_after_data_comes_on_the_next_call() -> None:
    _, data, _, (_, server) = stream("TLSv1_3", [10], "close_notify")
    eng = server.obj._engine
    server.incoming.write(data)
    buf = bytearray(100)
    assert eng.read_all(buf) == 10 and eng.more
    with pytest.raises(ssl.SSLZeroReturnError):
        eng.read_all(buf)


class PausingSink(Sink):
    """Pauses reading after the first data it gets."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.pause_reading()


@pytest.mark.parametrize("tls13", [False, True])
def test_a_bad_record_behind_data_the_app_paused_after_closes_the_connection(tls13: bool) -> None:
    """The good record and the bad one arrive together; the app pauses after the good one. By the time it has
    resumed, the error must have closed the connection: nothing more will arrive to wake a reader that skips it."""
    sctx = server_ctx("TLSv1_3" if tls13 else "TLSv1_2")
    loop = asyncio.new_event_loop()
    try:
        capp, sapp = Sink(), PausingSink()
        client = TLSProtocol(loop, capp, client_ctx(), None, False, "localhost")
        server = TLSProtocol(loop, sapp, sctx, None, True)
        ct, st_ = MemTransport(), MemTransport()
        ct.protocol = client
        client.connection_made(ct)  # type: ignore[arg-type]
        server.connection_made(st_)  # type: ignore[arg-type]
        for _ in range(100):
            if capp.transport is not None and sapp.transport is not None and not ct.buf and not st_.buf:
                break
            deliver(ct, server, 1 << 20)
            deliver(st_, client, 1 << 20)
        assert sapp.transport is not None
        capp.transport.write(b"a" * 1000)
        capp.transport.write(b"b" * 1000)  # a second record (no ring loop here: nothing is coalesced)
        data = bytes(ct.buf)
        ct.buf.clear()
        assert len(data) > 2000
        server.data_received(data[:-3] + bytes([data[-3] ^ 0x55]) + data[-2:])
        assert bytes(sapp.data) == b"a" * 1000
        # The stdlib path may close at once (it delivers the data, then raises); the compiled one waits for the app
        # to resume. Either way the connection must end up closed with the error.
        sapp.transport.resume_reading()
        loop.run_until_complete(asyncio.sleep(0))
        assert st_.closed
        assert isinstance(server._error, ssl.SSLError)
        assert bytes(sapp.data) == b"a" * 1000
    finally:
        loop.close()
