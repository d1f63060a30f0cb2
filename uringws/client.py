"""WebSocket client on any asyncio event loop: ``async with connect("wss://host/path") as ws``.

``async for ws in connect(uri)`` reconnects with exponential backoff after transient failures.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from .ws.config import WSConfig
from .ws.connection import Connection, LoggerLike
from .ws.exceptions import InvalidStatus, ProxyError, SecurityError
from .ws.handshake import WSURI, ClientHandshake, parse_uri
from .ws.options import make_config, split_options
from .ws.protocol import Side

__all__ = ["ClientConnection", "backoff", "connect", "retry_transient"]


ClientConnection = Connection


class _Unset:
    """The type of a keyword argument's default that means "not given" (None means something)."""


_UNSET = _Unset()

#: Reconnection delays of ``async for ws in connect(uri)``: the first attempt after a failure waits a random
#: fraction of BACKOFF_INITIAL (so that many clients cut off at once do not come back at once), then
#: BACKOFF_MIN growing by BACKOFF_FACTOR up to BACKOFF_MAX, in seconds.
BACKOFF_INITIAL = 5.0
BACKOFF_MIN = 3.1
BACKOFF_MAX = 90.0
BACKOFF_FACTOR = 1.618

#: Redirects (301, 302, 303, 307, 308) followed during one opening handshake before giving up.
MAX_REDIRECTS = 10
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


def backoff(
    initial: float = BACKOFF_INITIAL,
    minimum: float = BACKOFF_MIN,
    maximum: float = BACKOFF_MAX,
    factor: float = BACKOFF_FACTOR,
) -> Iterator[float]:
    """The delays before successive reconnection attempts (an endless iterator)."""
    yield random.random() * initial
    delay = minimum
    while delay < maximum:
        yield delay
        delay *= factor
    while True:
        yield maximum


def retry_transient(exc: Exception) -> Exception | None:
    """Default ``process_exception`` of the reconnecting client: None to retry, or the exception to raise.

    Retried: the server unreachable or the connection lost (OSError, EOFError), a timeout, and an HTTP 500, 502,
    503 or 504 answer to the handshake (a server restarting behind a proxy). Anything else (a 4xx, a bad URI, a
    TLS certificate error, a protocol error) would fail the same way again, so it is raised.
    """
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return exc
    if isinstance(exc, OSError | EOFError | TimeoutError):
        return None
    if isinstance(exc, InvalidStatus) and exc.status in (500, 502, 503, 504):
        return None
    return exc


class connect:
    """Open a WebSocket connection: ``ws = await connect(uri)`` or ``async with connect(uri) as ws``.

    Keyword arguments named like ``WSConfig`` fields (``max_size``, ``ping_interval``, ``open_timeout``...)
    set those limits; the rest go to ``loop.create_connection`` (e.g. ``sock``, ``local_addr``).
    ``ssl``: an SSLContext for wss:// (default: ``ssl.create_default_context()``). ``host``/``port``
    override where to connect while keeping the URI's Host header. ``compression``: "deflate" (default),
    a ``DeflateConfig`` or None. A redirect (3xx with a Location) is followed, at most ``max_redirects`` times,
    never from wss:// to ws:// (:class:`SecurityError`); after one to another host or port, ``host``/``port``
    no longer apply.

    ``proxy``: True (default) takes the proxy from the environment as websockets does (``HTTPS_PROXY`` for
    wss://, ``HTTP_PROXY`` for ws://, else ``ALL_PROXY``; hosts in ``NO_PROXY`` go direct); a URL
    (``http://``, ``socks5://``, ``socks5h://`` (DNS at the proxy), ``socks4://``, ``socks4a://``, with
    ``user:password@`` if the proxy wants it) uses that proxy; None connects directly. A proxy that refuses
    raises :class:`ProxyError`; one that cannot be reached, OSError.

    ``additional_headers``: (name, value) pairs, a dict or a ``Headers``. ``user_agent`` (or websockets' name,
    ``user_agent_header``): the User-Agent header, None for none.

    ``logger``: a Logger or LoggerAdapter for the connection (default ``logging.getLogger("uringws.client")``);
    how it closed is logged at DEBUG.

    ``async for ws in connect(uri):`` connects again and again: after a failure to connect it waits (see
    :func:`backoff`) and retries while ``process_exception(exc)`` returns None (default:
    :func:`retry_transient`), and raises what it returns otherwise; ``reconnect_delays()`` makes the delays
    (default :func:`backoff`; called again after each successful connection). Each connection is closed when the
    loop body moves on; a body that gets ``ConnectionClosed`` should ``continue`` to reconnect.
    """

    def __init__(
        self,
        uri: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        subprotocols: Sequence[str] | None = None,
        compression: Any = "deflate",
        origin: str | None = None,
        additional_headers: Iterable[tuple[str, str]] | Mapping[str, str] | None = (),
        user_agent: str | None = "uringws",
        user_agent_header: str | _Unset | None = _UNSET,
        config: WSConfig | None = None,
        host: str | None = None,
        port: int | None = None,
        server_hostname: str | None = None,
        process_exception: Callable[[Exception], Exception | None] = retry_transient,
        reconnect_delays: Callable[[], Iterator[float]] | None = None,
        max_redirects: int = MAX_REDIRECTS,
        proxy: str | Literal[True] | None = True,
        logger: LoggerLike | None = None,
        **kwargs: Any,
    ) -> None:
        ws_options, rest = split_options(kwargs)
        self.uri = parse_uri(uri)
        self._uri_text = uri
        self.config = make_config(config, compression, ws_options)
        if self.uri.secure and ssl is None:
            ssl = ssl_module.create_default_context()
        if not self.uri.secure and ssl is not None:
            raise ValueError("ssl given for a ws:// URI; use wss://")
        self.ssl = ssl
        self.subprotocols = subprotocols
        self.origin = origin
        if additional_headers is None:
            additional_headers = ()
        elif isinstance(additional_headers, Mapping):
            additional_headers = additional_headers.items()  # iterating a dict gives its keys alone
        self.additional_headers = list(additional_headers)
        self.user_agent = user_agent if isinstance(user_agent_header, _Unset) else user_agent_header
        self.host = host or self.uri.host
        self.port = port or self.uri.port
        self.server_hostname = server_hostname
        self.create_connection_kwargs = rest
        self.process_exception = process_exception
        self.reconnect_delays = reconnect_delays
        self.max_redirects = max_redirects
        self.proxy = proxy
        #: The connection's logger (``logger=``; default ``logging.getLogger("uringws.client")``).
        self.logger: LoggerLike = logger if logger is not None else logging.getLogger("uringws.client")
        self.connection: Connection | None = None

    async def _connect(self) -> Connection:
        uri, host, port, ssl, server_hostname = self.uri, self.host, self.port, self.ssl, self.server_hostname
        for _ in range(self.max_redirects + 1):
            try:
                conn = await self._open(uri, host, port, ssl, server_hostname)
            except InvalidStatus as exc:
                target = _redirect_target(uri, exc)
                if target is None or "sock" in self.create_connection_kwargs:
                    raise
                if (target.secure, target.host, target.port) != (uri.secure, uri.host, uri.port):
                    host, port, server_hostname = target.host, target.port, None
                if target.secure and ssl is None:
                    ssl = ssl_module.create_default_context()
                uri = target
                continue
            self.connection = conn
            return conn
        raise SecurityError(
            f"more than {self.max_redirects} redirects; the last one was to {uri.host_header}{uri.path}"
        )

    async def _open(
        self, uri: WSURI, host: str, port: int, ssl: ssl_module.SSLContext | None, server_hostname: str | None
    ) -> Connection:
        loop = asyncio.get_running_loop()
        handshake = ClientHandshake(
            uri,
            self.config,
            subprotocols=self.subprotocols,
            origin=self.origin,
            extra_headers=self.additional_headers,
            user_agent=self.user_agent,
        )
        kwargs = dict(self.create_connection_kwargs)
        if ssl is not None:
            kwargs["server_hostname"] = server_hostname or uri.host
        conn: Connection | None = None
        proxy = None if "sock" in kwargs else proxy_for(uri, self.proxy)
        try:
            async with asyncio.timeout(self.config.open_timeout):
                if proxy is not None:
                    kwargs["sock"] = await _through_proxy(proxy, host, port, self.config.open_timeout)

                def make() -> Connection:
                    return Connection(Side.CLIENT, self.config, client_handshake=handshake, logger=self.logger)

                if "sock" in kwargs:
                    _, conn = await loop.create_connection(make, ssl=ssl, **kwargs)
                else:
                    _, conn = await loop.create_connection(
                        make,
                        host,
                        port,
                        ssl=ssl,
                        **kwargs,
                    )
                await conn.handshake_done
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def __aiter__(self) -> AsyncIterator[Connection]:
        delays: Iterator[float] | None = None
        while True:
            try:
                conn = await self._connect()
            except Exception as exc:  # process_exception decides what is fatal
                fatal = self.process_exception(exc)
                if fatal is not None:
                    if fatal is exc:
                        raise
                    raise fatal from exc
                if delays is None:
                    # The module's backoff looked up now, not bound at definition: tests replace it.
                    delays = (self.reconnect_delays or backoff)()
                delay = next(delays)
                self.logger.info("connecting to %s failed (%s); retrying in %.1f s", self._uri_text, exc, delay)
                await asyncio.sleep(delay)
                continue
            delays = None  # connected: the next failure starts the backoff afresh
            try:
                yield conn
            finally:
                await conn.close()


_PROXY_SCHEMES = {  # scheme -> (python-socks proxy type name, resolve names at the proxy)
    "http": ("HTTP", True),
    "socks5": ("SOCKS5", False),
    "socks5h": ("SOCKS5", True),
    "socks4": ("SOCKS4", False),
    "socks4a": ("SOCKS4", True),
}


def proxy_for(uri: WSURI, proxy: str | Literal[True] | None = True) -> str | None:
    """The proxy URL to reach ``uri`` through (None: connect directly); ``proxy`` as :class:`connect` takes it."""
    if proxy is None:
        return None
    if proxy is not True:
        return proxy
    if urllib.request.proxy_bypass(f"{uri.host}:{uri.port}") or urllib.request.proxy_bypass(uri.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get("https" if uri.secure else "http") or proxies.get("all")


async def _through_proxy(proxy_url: str, host: str, port: int, timeout: float | None) -> Any:
    """A connected socket tunnelled through the proxy to host:port (python-socks does the proxy's protocol)."""
    parsed = urllib.parse.urlsplit(proxy_url)
    kind = _PROXY_SCHEMES.get(parsed.scheme.lower())
    if kind is None:
        raise ProxyError(
            f"unsupported proxy {proxy_url!r}: use http://, socks5://, socks5h://, socks4:// or socks4a://"
        )
    try:
        from python_socks import ProxyError as SocksProxyError
        from python_socks import ProxyType
        from python_socks.async_.asyncio import Proxy
    except ImportError:  # pragma: no cover - a declared dependency; only a broken install lacks it
        raise ProxyError("connecting through a proxy needs the python-socks package") from None
    if not parsed.hostname:
        raise ProxyError(f"proxy URL {proxy_url!r} has no host")
    try:
        proxy_port = parsed.port or (1080 if parsed.scheme.startswith("socks") else 8080)
    except ValueError:
        raise ProxyError(f"proxy URL {proxy_url!r} has an invalid port") from None
    name, remote_dns = kind
    username = urllib.parse.unquote(parsed.username) if parsed.username is not None else None
    password = urllib.parse.unquote(parsed.password) if parsed.password is not None else None
    tunnel = Proxy(getattr(ProxyType, name), parsed.hostname, proxy_port, username, password, rdns=remote_dns)
    try:
        # The caller's open_timeout bounds the whole opening handshake; python-socks wants a number of its own.
        return await tunnel.connect(host, port, timeout=timeout if timeout is not None else 86400.0)
    except SocksProxyError as exc:
        raise ProxyError(f"proxy {parsed.hostname}:{proxy_port} refused the tunnel to {host}:{port}: {exc}") from exc


def _redirect_target(uri: WSURI, exc: InvalidStatus) -> WSURI | None:
    """Where a 3xx answer to the handshake points (None if it is no redirect); SecurityError for wss -> ws."""
    if exc.status not in _REDIRECTS:
        return None
    location = next((value for name, value in exc.headers if name.lower() == "location"), None)
    if location is None:
        return None
    scheme = "wss" if uri.secure else "ws"
    current = f"{scheme}://{uri.host_header}{uri.path}"
    target = urllib.parse.urljoin(current, location.strip())
    # Servers behind HTTP proxies often answer with http(s):// locations; they mean the same host and path.
    if target.startswith("https://"):
        target = "wss://" + target[len("https://") :]
    elif target.startswith("http://"):
        target = "ws://" + target[len("http://") :]
    new = parse_uri(target)
    if uri.secure and not new.secure:
        raise SecurityError(f"refusing to follow a redirect from wss:// to {target}")
    if uri.user_info is not None and new.user_info is None and (new.host, new.port) == (uri.host, uri.port):
        new = new._replace(user_info=uri.user_info)  # same server: the credentials still apply
    return new
