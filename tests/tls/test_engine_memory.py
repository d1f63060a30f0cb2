"""Native memory an idle server connection keeps on the compiled TLS engine, against the stdlib's SSLObject.

Both hold one OpenSSL ``SSL`` made from the same context, so what they keep differs only by what sits around it:
the stdlib's two memory BIOs, whose buffers keep their largest size, against the engine's one BIO and its own
buffers, which it frees once drained (``in_buf``) or hands over (``out``). Measured as the growth of glibc's
in-use malloc chunks (``mallinfo2()``) per connection, after the handshake and after one 3000 B record each way
(OpenSSL 3.0, TLS 1.3: about 14.1 / 14.1 KB on the engine, 16.6 / 20.8 KB on the stdlib). An engine buffer kept
while idle shows: a drained ``in_buf`` not freed adds about 1 KB after traffic, an output buffer kept after
``outgoing.read()`` about 4 KB already after the handshake (both measured failing).
"""

from __future__ import annotations

import ctypes
import gc
import ssl
from collections.abc import Iterator

import pytest

from uringws.tls import engine as engine_mod

from .test_aead_paths import aead_direct
from .test_engine_parity import Client, Server, client_ctx, handshake, server_ctx

pytestmark = pytest.mark.skipif(not engine_mod.available(), reason="compiled TLS engine not in use")

N = 200
MESSAGE = b"m" * 3000  # one TLS record, delivered in two parts
#: Bytes per connection that traffic may leave behind on the engine (measured: within about 50 B of none).
KEPT_LIMIT = 512


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_in_use() -> int:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    fn.restype = _MallInfo2
    gc.collect()
    info = fn()
    return int(info.uordblks + info.hblkhd)


def _idle_server(kind: str, sctx: ssl.SSLContext, cctx: ssl.SSLContext, exchange: bool) -> Server:
    """A server connection after a handshake, then (exchange) one record received in two parts, the first one fed
    (the engine copies it into in_buf), the second one lent (read in place), and one record sent."""
    client, server = Client(cctx), Server(kind, sctx)
    assert handshake(client, server) is None
    if exchange:
        client.obj.write(MESSAGE)
        record = client.outgoing.read()
        cut = len(record) // 2
        server.feed(record[:cut])
        assert server.read_all() == (b"", "want-read")
        assert server.deliver(record[cut:]) == (MESSAGE, "want-read")
        server.obj.write(MESSAGE)
        client.incoming.write(server.take())
        assert client.obj.read(len(MESSAGE)) == MESSAGE
    return server


def _kept_per_connection(kind: str, version: str, exchange: bool) -> float:
    sctx, cctx = server_ctx(version), client_ctx()
    keep: list[Server | None] = [_idle_server(kind, sctx, cctx, exchange)]  # warms up one-time allocations
    keep += [None] * N  # the list's own memory, allocated before measuring
    before = _malloc_in_use()
    for i in range(N):
        keep[i + 1] = _idle_server(kind, sctx, cctx, exchange)
    return (_malloc_in_use() - before) / N


@pytest.fixture
def evp_aead() -> Iterator[None]:
    """Own records through EVP's one context per suite and direction: the provider path's shared contexts (up to
    64 per direction, about 0.8 KiB each, held while their keys live) would show here as about 500 B per connection
    of 200, which is the process's, not a connection's (the test below holds them to their bound)."""
    with aead_direct(False):
        yield


@pytest.mark.parametrize("version", ["TLSv1_3", "TLSv1_2"])
def test_an_idle_engine_keeps_no_buffer_after_traffic(version: str, evp_aead: None) -> None:
    ours = _kept_per_connection("compiled", version, exchange=False)
    ours_after = _kept_per_connection("compiled", version, exchange=True)
    stdlib = _kept_per_connection("pure", version, exchange=False)
    stdlib_after = _kept_per_connection("pure", version, exchange=True)
    report = (f"B per idle connection, after the handshake / after a {len(MESSAGE)} B record each way: "
              f"compiled {ours:.0f} / {ours_after:.0f}, stdlib {stdlib:.0f} / {stdlib_after:.0f}")
    # The measure sees a kept buffer: the stdlib's memory BIOs keep theirs (about the record's size).
    assert stdlib_after - stdlib > len(MESSAGE) / 2, report
    # The engine frees in_buf once drained and hands its output over: nothing of the record stays.
    assert ours_after - ours < KEPT_LIMIT, report
    # Nor after the handshake: its last flight is handed over, not kept (the stdlib's BIOs keep their buffers).
    assert ours < stdlib, report
    assert ours_after < stdlib_after, report


def test_the_shared_aead_contexts_are_bounded_and_go_with_their_keys() -> None:
    """The provider path keys its shared AEAD contexts in 64 slots per suite and direction: 200 connections after
    traffic hold at most 128 of them, and closing the connections frees them (their keys cleansed)."""
    assert engine_mod._engine._set_aead_direct(True) is True
    sctx, cctx = server_ctx("TLSv1_3"), client_ctx()
    warm = [_idle_server("compiled", sctx, cctx, True) for _ in range(N)]  # one-time and cached allocations
    del warm
    before = _malloc_in_use()
    direct = [_idle_server("compiled", sctx, cctx, True) for _ in range(N)]
    with_slots = _malloc_in_use() - before
    del direct
    after_close = _malloc_in_use() - before
    with aead_direct(False):
        evp = [_idle_server("compiled", sctx, cctx, True) for _ in range(N)]
        without = _malloc_in_use() - before
        del evp
    slots = with_slots - without
    report = f"{N} idle connections: {with_slots} B with the slots, {without} B on EVP, {after_close} B after closing"
    # 128 contexts of about 0.8 KiB: bounded by the slots, not by the connections.
    assert 64 * 512 < slots < 128 * 1536, report
    # Closed, the connections' keys go and so do the contexts that held them (what stays is the process's own
    # churn, which shows as much on EVP: 0-18 KB measured).
    assert after_close < slots / 4, report
