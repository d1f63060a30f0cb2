"""max_header_bytes against a real server (ws://) and a real client: heads over the limit get 431 (a request line
over it 414) whether they arrive in one read or in pieces, on the stdlib loop and on uringws's own."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trustme

from uringws.client import connect
from uringws.ring.probe import availability
from uringws.server import serve
from uringws.ws.config import WSConfig
from uringws.ws.connection import Connection
from uringws.ws.exceptions import InvalidHandshake

LIMIT = WSConfig().max_header_bytes
BASE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
LOOPS = ["asyncio", pytest.param("io_uring", marks=pytest.mark.skipif(
    not availability(), reason=f"io_uring unusable here: {availability().reason}"))]


def head_of_size(size: int) -> bytes:
    """A valid upgrade request whose head is exactly ``size`` bytes (request line through the empty line)."""
    pad = size - len(BASE) - len(b"X-Pad: \r\n\r\n")
    raw = BASE + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"
    assert len(raw) == size
    return raw


def run_on(loop_name: str, coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = None
    if loop_name != "asyncio":
        from uringws import new_event_loop

        factory = functools.partial(new_event_loop, backend=loop_name)

    async def bounded() -> None:
        async with asyncio.timeout(30):
            await coro_fn()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bounded())


async def echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


def status_for_blocking(port: int, raw: bytes, pieces: int, ctx: ssl.SSLContext | None = None) -> int:
    """Send ``raw`` (in one write, or in ``pieces`` writes with a pause between) and return the answer's status.

    A plain blocking socket, not asyncio streams: when the server answers and closes before it has read the
    whole head, our writes fail, and a stream transport would then drop what the socket had already received.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        sock = plain if ctx is None else ctx.wrap_socket(plain, server_hostname="127.0.0.1")
        step = -(-len(raw) // pieces)
        try:
            for i in range(0, len(raw), step):
                sock.sendall(raw[i:i + step])
                if pieces > 1:
                    time.sleep(0.01)
        except OSError:
            pass  # the server answered and closed before reading everything: its answer is still queued here
        answer = b""
        try:
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass  # the reset that follows the answer when the server closed with our bytes unread
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


async def status_for(port: int, raw: bytes, pieces: int, ctx: ssl.SSLContext | None = None) -> int:
    return await asyncio.to_thread(status_for_blocking, port, raw, pieces, ctx)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_server_enforces_the_head_limit_however_the_head_arrives(loop_name: str) -> None:
    cases = [(LIMIT - 1, 101), (LIMIT, 101), (LIMIT + 1, 431), (17 * 1024, 431), (64 * 1024, 431),
             (100 * 1024, 431)]

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0) as server:
            got = []
            for size, _ in cases:
                for pieces in (1, 3):
                    got.append((size, pieces, await status_for(server.port_bound, head_of_size(size), pieces)))
            line = b"GET /" + b"a" * (20 * 1024) + b" HTTP/1.1\r\n" + BASE.split(b"\r\n", 1)[1] + b"\r\n"
            for pieces in (1, 3):
                got.append((len(line), pieces, await status_for(server.port_bound, line, pieces)))
            expected = [(size, pieces, status) for size, status in cases for pieces in (1, 3)]
            expected += [(len(line), pieces, 414) for pieces in (1, 3)]
            assert got == expected

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_client_enforces_the_response_head_limit(loop_name: str) -> None:
    """connect() refuses a 101 whose head is over the limit, even when it arrives in one read."""

    async def main() -> None:
        from uringws.ws.handshake import ServerHandshake, serialize_response

        async def big_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hs = ServerHandshake()
            request = None
            while request is None:
                request = hs.receive_data(await reader.read(4096))
            response = hs.accept(request)[0]
            response.headers.add("X-Pad", "p" * (LIMIT + 100))
            writer.write(serialize_response(response))
            await writer.drain()
            await reader.read()  # until the client gives up
            writer.close()

        srv = await asyncio.start_server(big_answer, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises(InvalidHandshake, match="response head too large"):
                await connect(f"ws://127.0.0.1:{port}/", open_timeout=10)
        finally:
            srv.close()

    run_on(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_server_enforces_the_head_limit_over_tls(loop_name: str) -> None:
    """The same limit when the head comes through TLS (uringws's own TLS layer on the io_uring loop)."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    cases = [(LIMIT, 101), (LIMIT + 1, 431), (64 * 1024, 431)]

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server:
            got = [await status_for(server.port_bound, head_of_size(size), 1, client_ctx) for size, _ in cases]
            assert got == [status for _, status in cases]

    run_on(loop_name, main)


def rejected_head_then_eof(port: int, size: int) -> tuple[bytes, bool]:
    """Send a ``size``-byte head in one sendall, then read to the end: (answer, whether the server reset us)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the answer stays queued at us meanwhile
        sock.sendall(head_of_size(size))  # raises if the server reset the connection while we were sending
        time.sleep(0.2)  # let a reset, if one comes, arrive before we read
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            return answer, True
        return answer, False


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_rejected_head_is_answered_and_closed_without_a_reset(loop_name: str) -> None:
    # The server rejects a 4 MiB head after reading its first 16 KiB. Closing with the rest unread would make the
    # kernel send RST, which can destroy the 431 at the client before it is read (and fails the client's send):
    # the server must send FIN after the answer and read what is still coming until the client closes.
    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0) as server:
            answer, reset = await asyncio.to_thread(rejected_head_then_eof, server.port_bound, 4 * 1024 * 1024)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
            assert not reset

    run_on(loop_name, main)
