"""The client through proxies: HTTP CONNECT and SOCKS5 (with and without credentials), from the environment or given,
over ws:// and wss://; a proxy that refuses, wrong proxy credentials, an unreachable proxy."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator

import pytest
import trustme

from uringws.client import connect, proxy_for, retry_transient
from uringws.server import Server, serve
from uringws.ws.connection import Connection
from uringws.ws.exceptions import ProxyError
from uringws.ws.handshake import parse_uri

from .test_ws_api import run


async def echo(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class SmallProxy:
    """A small HTTP CONNECT or SOCKS5 proxy: records where it was asked to go, checks credentials if given,
    refuses destinations on ports in ``forbidden``."""

    def __init__(self, kind: str, credentials: tuple[str, str] | None = None) -> None:
        self.kind = kind
        self.credentials = credentials
        self.forbidden: set[int] = set()
        self.tunnels: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, scheme: str | None = None, auth: str = "") -> str:
        return f"{scheme or self.kind}://{auth}127.0.0.1:{self.port}"

    async def __aenter__(self) -> SmallProxy:
        handle = self._http if self.kind == "http" else self._socks5
        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _tunnel(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if port in self.forbidden:
            return False
        self.tunnels.append((host, port))
        up_reader, up_writer = await asyncio.open_connection(host, port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        return True

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ")
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
            if headers.get("Proxy-Authorization") != expected:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                writer.close()
                return
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or int(port) in self.forbidden:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self._tunnel(host.strip("[]"), int(port), reader, writer)

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if self.credentials is None:
            writer.write(b"\x05\x00")
        elif 2 in methods:
            writer.write(b"\x05\x02")
            _, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            ok = (user, password) == self.credentials
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                writer.close()
                return
        else:
            writer.write(b"\x05\xff")
            writer.close()
            return
        _ver, _cmd, _rsv, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        else:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if port in self.forbidden:
            writer.write(b"\x05\x02\x00\x01" + bytes(6))  # connection not allowed by ruleset
            writer.close()
            return
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await self._tunnel(host, port, reader, writer)


@pytest.fixture
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def _servers(server_ctx: ssl.SSLContext) -> AsyncIterator[tuple[Server, Server]]:
    async with serve(echo, "127.0.0.1", 0) as plain, serve(echo, "127.0.0.1", 0, ssl=server_ctx) as secure:
        yield plain, secure


@pytest.mark.parametrize(
    ("kind", "scheme", "credentials"),
    [
        ("http", "http", None),
        ("http", "http", ("u", "p w")),
        ("socks5", "socks5", None),
        ("socks5", "socks5h", ("u", "p")),
    ],
)
@run
async def test_through_a_proxy(
    kind: str, scheme: str, credentials: tuple[str, str] | None, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    auth = "" if credentials is None else f"{credentials[0]}:{credentials[1].replace(' ', '%20')}@"
    async for plain, secure in _servers(server_ctx):
        async with SmallProxy(kind, credentials) as proxy:
            url = proxy.url(scheme, auth)
            async with connect(f"ws://localhost:{plain.port_bound}/", proxy=url) as ws:
                await ws.send("through")
                assert await ws.recv() == "through"
            async with connect(f"wss://localhost:{secure.port_bound}/", proxy=url, ssl=client_ctx) as ws:
                await ws.send(b"\x00" * 100_000)
                assert await ws.recv() == b"\x00" * 100_000
            # socks5h and HTTP CONNECT resolve the name at the proxy; socks5 sends an address.
            host = "127.0.0.1" if scheme == "socks5" else "localhost"
            assert proxy.tunnels == [(host, plain.port_bound), (host, secure.port_bound)]


@pytest.mark.parametrize("kind", ["http", "socks5"])
@run
async def test_wrong_credentials_and_forbidden_destination(kind: str) -> None:
    async with serve(echo, "127.0.0.1", 0) as server, SmallProxy(kind, ("u", "right")) as proxy:
        with pytest.raises(ProxyError, match="refused the tunnel") as info:
            await connect(f"ws://127.0.0.1:{server.port_bound}/", proxy=proxy.url(auth="u:wrong@"))
        assert retry_transient(info.value) is info.value  # not retried by the reconnecting client
        proxy.forbidden.add(server.port_bound)
        with pytest.raises(ProxyError):
            await connect(f"ws://127.0.0.1:{server.port_bound}/", proxy=proxy.url(auth="u:right@"))
        assert proxy.tunnels == []


@run
async def test_unreachable_proxy_and_bad_proxy_urls() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(OSError) as info:
        await connect("ws://127.0.0.1:9/", proxy=f"socks5://127.0.0.1:{dead}")
    assert retry_transient(info.value) is None  # a proxy that is down may come back: retried
    with pytest.raises(ProxyError, match="unsupported proxy"):
        await connect("ws://127.0.0.1:9/", proxy="ftp://127.0.0.1:21")
    with pytest.raises(ProxyError, match="no host"):
        await connect("ws://127.0.0.1:9/", proxy="http://:8080")


def test_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    ws, wss = parse_uri("ws://example.com/"), parse_uri("wss://example.com/")
    assert proxy_for(ws) is None and proxy_for(wss) is None
    monkeypatch.setenv("ALL_PROXY", "socks5h://proxy:1080")
    assert proxy_for(ws) == proxy_for(wss) == "socks5h://proxy:1080"
    monkeypatch.setenv("HTTPS_PROXY", "http://secure-proxy:3128")
    assert proxy_for(wss) == "http://secure-proxy:3128" and proxy_for(ws) == "socks5h://proxy:1080"
    assert proxy_for(wss, "socks5://given:1") == "socks5://given:1"
    assert proxy_for(wss, None) is None
    monkeypatch.setenv("NO_PROXY", "example.com,other.org")
    assert proxy_for(wss) is None and proxy_for(parse_uri("wss://third.net/")) == "http://secure-proxy:3128"


@run
async def test_environment_proxy_is_used_and_proxy_none_bypasses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async with serve(echo, "127.0.0.1", 0) as server, SmallProxy("http") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        async with connect(f"ws://localhost:{server.port_bound}/") as ws:
            await ws.send("via env")
            assert await ws.recv() == "via env"
        async with connect(f"ws://localhost:{server.port_bound}/", proxy=None) as ws:
            await ws.send("direct")
            assert await ws.recv() == "direct"
        assert proxy.tunnels == [("localhost", server.port_bound)]
