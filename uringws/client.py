"""WebSocket client on any asyncio event loop: ``async with connect("wss://host/path") as ws``."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Generator, Iterable, Sequence
from typing import Any

from .ws.config import WSConfig
from .ws.connection import Connection
from .ws.handshake import ClientHandshake, parse_uri
from .ws.options import make_config, split_options
from .ws.protocol import Side

__all__ = ["ClientConnection", "connect"]

ClientConnection = Connection


class connect:
    """Open a WebSocket connection: ``ws = await connect(uri)`` or ``async with connect(uri) as ws``.

    Keyword arguments named like ``WSConfig`` fields (``max_size``, ``ping_interval``, ``open_timeout``...)
    set those limits; the rest go to ``loop.create_connection`` (e.g. ``sock``, ``local_addr``).
    ``ssl``: an SSLContext for wss:// (default: ``ssl.create_default_context()``). ``host``/``port``
    override where to connect while keeping the URI's Host header. ``compression``: "deflate" (default),
    a ``DeflateConfig`` or None.
    """

    def __init__(
        self,
        uri: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        subprotocols: Sequence[str] | None = None,
        compression: Any = "deflate",
        origin: str | None = None,
        additional_headers: Iterable[tuple[str, str]] = (),
        user_agent: str | None = "uringws",
        config: WSConfig | None = None,
        host: str | None = None,
        port: int | None = None,
        server_hostname: str | None = None,
        **kwargs: Any,
    ) -> None:
        ws_options, rest = split_options(kwargs)
        self.uri = parse_uri(uri)
        self.config = make_config(config, compression, ws_options)
        if self.uri.secure and ssl is None:
            ssl = ssl_module.create_default_context()
        if not self.uri.secure and ssl is not None:
            raise ValueError("ssl given for a ws:// URI; use wss://")
        self.ssl = ssl
        self.subprotocols = subprotocols
        self.origin = origin
        self.additional_headers = list(additional_headers)
        self.user_agent = user_agent
        self.host = host or self.uri.host
        self.port = port or self.uri.port
        self.server_hostname = server_hostname
        self.create_connection_kwargs = rest
        self.connection: Connection | None = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        handshake = ClientHandshake(
            self.uri,
            self.config,
            subprotocols=self.subprotocols,
            origin=self.origin,
            extra_headers=self.additional_headers,
            user_agent=self.user_agent,
        )
        kwargs = dict(self.create_connection_kwargs)
        if self.ssl is not None:
            kwargs["server_hostname"] = self.server_hostname or self.uri.host
        conn: Connection | None = None
        try:
            async with asyncio.timeout(self.config.open_timeout):
                if "sock" in kwargs:
                    _, conn = await loop.create_connection(
                        lambda: Connection(Side.CLIENT, self.config, client_handshake=handshake),
                        ssl=self.ssl,
                        **kwargs,
                    )
                else:
                    _, conn = await loop.create_connection(
                        lambda: Connection(Side.CLIENT, self.config, client_handshake=handshake),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        **kwargs,
                    )
                await conn.handshake_done
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        self.connection = conn
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()
