"""loop.sendfile() over TLS transports, compared with the stdlib loop and its own TLS (asyncio.sslproto).

TLS cannot use the kernel's sendfile, so asyncio reads the file and writes it through the transport (its
fallback); ours must accept that fallback and give the same results: same bytes on the wire, same count
returned, same file position afterwards, and an error (not a hang) when the peer goes away mid-way.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import uringws
from uringws.ring import probe
from uringws.tls.loopmixin import TLSSelectorEventLoop

FILE_SIZE = 300_000  # several fallback blocks (16 KiB) and TLS records, not a multiple of either

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stdlib": asyncio.SelectorEventLoop,  # asyncio's own TLS: the reference
    "selector": TLSSelectorEventLoop,
    "ring": uringws.new_event_loop,
}


def _run(kind: str, coro: Any) -> Any:
    if kind == "ring" and not probe.availability().usable:
        pytest.skip(f"io_uring unusable: {probe.availability().reason}")
    with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
        if kind == "ring":
            assert runner.get_loop().backend == "io_uring"  # type: ignore[attr-defined]
        return runner.run(asyncio.wait_for(coro, 30))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(FILE_SIZE)
    path = tmp_path_factory.mktemp("sendfile") / "blob"
    path.write_bytes(data)
    return path, data


async def _send(
    path: Path, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, offset: int, count: int | None
) -> tuple[bytes, int, int, bool]:
    """Server: write b"pre", sendfile(offset, count), write b"post", close. Returns what the client read, the
    count sendfile returned, the file position after it, and whether the transport is a TLS one."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, int, bool]] = loop.create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with path.open("rb") as f:
                writer.write(b"pre")
                n = await loop.sendfile(writer.transport, f, offset, count)
                writer.write(b"post")
                pos = f.tell()
            await writer.drain()
            writer.close()
            done.set_result((n, pos, writer.get_extra_info("ssl_object") is not None))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done.set_exception(exc)

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    got = await reader.read()
    n, pos, tls = await done
    writer.close()
    server.close()
    await server.wait_closed()
    return got, n, pos, tls


@pytest.mark.parametrize(
    ("offset", "count"),
    [(0, None), (0, 1000), (12_345, None), (12_345, 100_000), (FILE_SIZE - 10, 1000), (FILE_SIZE, None)],
    ids=["whole", "head", "from-offset", "middle", "past-end", "at-end"],
)
@pytest.mark.parametrize("kind", ["selector", "ring"])
def test_sendfile_fallback_matches_stdlib(
    kind: str,
    offset: int,
    count: int | None,
    data_file: tuple[Path, bytes],
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
) -> None:
    path, data = data_file
    ours = _run(kind, _send(path, server_ctx, client_ctx, offset, count))
    ref = _run("stdlib", _send(path, server_ctx, client_ctx, offset, count))
    end = FILE_SIZE if count is None else min(FILE_SIZE, offset + count)
    assert ours[3] and ref[3]
    assert ours[0] == ref[0] == b"pre" + data[offset:end] + b"post"
    assert ours[1:] == ref[1:] == (end - offset, end if end > offset else offset, True)


async def _peer_goes_away(path: Path, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> BaseException:
    """The client reads a little, then aborts: the server's sendfile() must fail, not hang or claim success."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException] = loop.create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with path.open("rb") as f:
            try:
                for _ in range(200):  # ~60 MB in all: far more than the socket buffers hold
                    f.seek(0)
                    await loop.sendfile(writer.transport, f)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                done.set_result(exc)
                return
        done.set_exception(AssertionError("sendfile() kept succeeding after the peer had gone"))

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
    await reader.readexactly(100_000)
    writer.transport.abort()
    exc = await done
    server.close()
    await server.wait_closed()
    return exc


@pytest.mark.parametrize("kind", ["selector", "ring"])
def test_sendfile_peer_closes_midway(
    kind: str, data_file: tuple[Path, bytes], server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    ours = _run(kind, _peer_goes_away(data_file[0], server_ctx, client_ctx))
    ref = _run("stdlib", _peer_goes_away(data_file[0], server_ctx, client_ctx))
    assert isinstance(ref, ConnectionError), repr(ref)
    assert isinstance(ours, ConnectionError), repr(ours)


@pytest.mark.parametrize("kind", ["stdlib", "selector", "ring"])
def test_sendfile_without_fallback_is_refused(
    kind: str, data_file: tuple[Path, bytes], server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """TLS has no native path: fallback=False raises asyncio's RuntimeError, the connection stays usable."""

    async def main() -> tuple[str, bytes]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with data_file[0].open("rb") as f:
                try:
                    await loop.sendfile(writer.transport, f, fallback=False)
                except RuntimeError as exc:
                    done.set_result(str(exc))
                else:
                    done.set_result("no error")
            writer.write(b"still here")
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        got = await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()
        return await done, got

    msg, got = _run(kind, main())
    assert msg.startswith("fallback is disabled and native sendfile is not supported"), msg
    assert got == b"still here"
