"""Flow control, buffer sharing and record tracking of TLSProtocol."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from typing import Any

import pytest

from uringws.tls import protocol as tlsmod
from uringws.tls.protocol import TLSProtocol

from .tlshelpers import ManualClient, Recorder, collecting, payload, sha, tls_client, tls_server


def test_pause_and_resume_reading(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """While the app has paused reading it gets nothing; on resume everything arrives in order."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        tr.write(b"first")
        await asyncio.sleep(0.05)
        srv = apps[0]
        assert srv.transport is not None
        await srv.wait_bytes(5)
        srv.transport.pause_reading()
        assert not srv.transport.is_reading()
        data = payload(500_000, seed=9)
        tr.write(data)
        await asyncio.sleep(0.2)
        assert bytes(srv.data) == b"first"  # nothing delivered while paused
        srv.transport.resume_reading()
        assert srv.transport.is_reading()
        await srv.wait_bytes(5 + len(data))
        assert sha(srv.data) == sha(b"first" + data)
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_eof_while_reading_paused_is_delivered_after_resume(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Data and a TCP FIN that arrive while the app is paused reach it, in order, after resume_reading()."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        client = await ManualClient.connect(client_ctx, port)
        await client.send_raw(client.record(b"a"))
        await asyncio.sleep(0.05)
        srv = apps[0]
        await srv.wait_bytes(1)
        assert srv.transport is not None
        srv.transport.pause_reading()
        await client.send_raw(client.record(b"b" * 1000))
        client.sock.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.1)
        assert not srv.lost.done() and bytes(srv.data) == b"a"
        srv.transport.resume_reading()
        assert await asyncio.wait_for(srv.lost, 10) is None
        assert bytes(srv.data) == b"a" + b"b" * 1000
        assert srv.eof
        client.sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_write_buffer_limits_and_size(run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """Limits propagate to the TCP transport; the size counts its buffer; pause/resume reach the app."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        app = Recorder()
        tr, tls = await tls_client(client_ctx, app, port)
        tr.set_write_buffer_limits(high=10_000)
        assert tr.get_write_buffer_limits() == (2500, 10_000)
        assert tls._transport.get_write_buffer_limits() == (2500, 10_000)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=1, low=2)
        srv = apps[0] if apps else None
        await asyncio.sleep(0.05)
        srv = apps[0]
        assert srv.transport is not None
        srv.transport.pause_reading()  # the server stops reading: our writes pile up
        chunk = payload(100_000, seed=1)
        sent = 0
        while sent < 100_000_000:
            tr.write(chunk)
            sent += len(chunk)
            if app.paused:
                break
            await asyncio.sleep(0)
        assert app.paused == 1
        # Checked before the loop runs again: the kernel may take the queued rest within one iteration (loopback
        # buffers grow to megabytes), and then the size is rightly 0 again while the resume is on its way.
        assert tr.get_write_buffer_size() > 10_000
        srv.transport.resume_reading()
        await srv.wait_bytes(sent, timeout=30)
        for _ in range(100):
            if app.resumed:
                break
            await asyncio.sleep(0.01)
        assert app.resumed == 1
        assert tr.get_write_buffer_size() <= 2500
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_writes_after_close_are_dropped_with_warning(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server, port, _ = await tls_server(server_ctx, Recorder)
        app = Recorder()
        tr, _ = await tls_client(client_ctx, app, port)
        tr.close()
        for _ in range(6):
            tr.write(b"late")
        assert "TLS connection is closed" in caplog.text
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    caplog.set_level(logging.WARNING)
    run(main())


def test_mutable_buffer_written_while_paused_is_copied(
    run: Any, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A bytearray queued behind a paused transport is copied: reusing it after write() changes nothing."""

    async def main() -> None:
        apps: list[Recorder] = []
        server, port, _ = await tls_server(server_ctx, collecting(apps, Recorder))
        app = Recorder()
        tr, tls = await tls_client(client_ctx, app, port)
        await asyncio.sleep(0.05)
        tls.pause_writing()  # as if the TCP transport were full
        buf = bytearray(b"A" * 1000)
        tr.write(buf)
        buf[:] = b"B" * 1000
        assert tr.get_write_buffer_size() >= 1000
        tls.resume_writing()
        assert await apps[0].wait_bytes(1000) == b"A" * 1000
        tr.close()
        await asyncio.wait_for(app.lost, 10)
        server.close()
        await server.wait_closed()

    run(main())


def test_shared_receive_buffer_is_not_lent_twice() -> None:
    """A second get_buffer() before the first buffer_updated() gets a private buffer, not the shared one."""
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context()
        a = TLSProtocol(loop, asyncio.Protocol(), ctx, server_hostname="a")
        b = TLSProtocol(loop, asyncio.Protocol(), ctx, server_hostname="b")
        ba = a.get_buffer(-1)
        bb = b.get_buffer(-1)
        assert ba.obj is tlsmod._shared_buffers().recv.obj
        assert bb.obj is not ba.obj and len(bb) == tlsmod.PRIVATE_RECV_SIZE
        a.buffer_updated(0)
        assert b.get_buffer(-1).obj is ba.obj  # free again after buffer_updated()
    finally:
        loop.close()


def _records(sizes: list[int]) -> bytes:
    return b"".join(b"\x17\x03\x03" + n.to_bytes(2, "big") + bytes(n) for n in sizes)


@pytest.mark.parametrize("seed", range(20))
def test_record_tracking_any_split(seed: int) -> None:
    """Whatever the chunking, the tracker knows whether the stream stops at a record boundary."""
    rnd = random.Random(seed)
    stream = _records([rnd.choice([0, 1, 5, 100, 16401]) for _ in range(rnd.randint(1, 8))])
    boundaries = set()
    pos = 0
    while pos < len(stream):
        boundaries.add(pos)
        pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
    boundaries.add(len(stream))
    loop = asyncio.new_event_loop()
    try:
        p = TLSProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), server_hostname="x")
        pos = 0
        while pos < len(stream):
            step = rnd.choice([1, 2, 3, 4, 5, 7, 100, 20000])
            chunk = memoryview(stream)[pos : pos + step]
            p._track_records(chunk)
            pos += len(chunk)
            at_boundary = not p._rec_left and not p._hdr
            assert at_boundary == (pos in boundaries), (pos, p._rec_left, p._hdr)
            # _partial: how much of the trailing incomplete record has arrived (what _read() may skip on).
            assert p._partial == pos - max(b for b in boundaries if b <= pos), (pos, p._partial)
            assert p._framed
    finally:
        loop.close()


@pytest.mark.parametrize(
    "header",
    [b"\x80\x2e\x01\x03\x01", b"\x17\x03\x03\x48\x01", b"\x63\x03\x03\x00\x10"],
    ids=["sslv2-hello", "oversized-length", "unknown-type"],
)
def test_record_tracking_gives_up_skipping_on_a_header_tls_would_reject(header: bytes) -> None:
    """A header OpenSSL rejects (or parses otherwise) must not make _read() wait for the 'rest of the record'."""
    loop = asyncio.new_event_loop()
    try:
        p = TLSProtocol(loop, asyncio.Protocol(), ssl.create_default_context(), server_hostname="x")
        p._track_records(_records([3]))
        assert p._framed
        p._track_records(header + b"\x00" * 3)
        assert not p._framed
    finally:
        loop.close()


class _CountingSSLObject:
    """Wraps an SSLObject and counts read() calls and the SSLWantReadError they raise."""

    def __init__(self, inner: ssl.SSLObject) -> None:
        self.inner = inner
        self.reads = 0
        self.want_read = 0

    def read(self, *args: Any) -> Any:
        self.reads += 1
        try:
            return self.inner.read(*args)
        except ssl.SSLWantReadError:
            self.want_read += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("chunk", [1, 7, 100, 1000])
def test_no_read_attempt_while_only_part_of_a_record_has_arrived(chunk: int) -> None:
    """Bytes of an incomplete record cost no SSL_read (each failed one raises SSLWantReadError, ~2 us); every
    plaintext byte still arrives, at the moment its record is complete."""
    from .test_inmemory import deliver
    from .test_tls_coalesce import Pair

    p = Pair(hook=False)  # no coalescing: each client write is its own record
    try:
        capp, sapp, server, ct = p.capp, p.sapp, p.server, p.ct
        counting = _CountingSSLObject(server._sslobj)  # type: ignore[arg-type]
        server._sslobj = counting  # type: ignore[assignment]
        data = payload(100_000, seed=3)
        for i in range(0, len(data), 10_000):  # ten records of 10,000 B plaintext
            capp.transport.write(data[i : i + 10_000])
        wire = len(ct.buf)
        while ct.buf:
            deliver(ct, server, chunk)
            # Never a byte of a complete record left undelivered.
            assert not server._sslobj.pending() and (server._incoming.pending <= server._partial)  # type: ignore
        assert bytes(sapp.data) == data
        assert counting.want_read <= 10, (counting.reads, counting.want_read, wire // chunk)
    finally:
        p.close()
