"""Redis backend of the Hub (redis-py's ``redis.asyncio``): pub/sub (at-most-once) or Streams (resumable).

Each node subscribes once per channel that has local members, so Redis carries one copy of a message per node.
A message travels as ``node id (16 bytes) + kind (b"t" text, b"b" binary) + payload``: the node id lets a node
skip its own messages, which its hub has already delivered locally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import urllib.parse
from typing import Any, Literal

from ..ws.connection import Data
from .backend import Backend, BackendUnavailable, Deliver

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the optional extra is missing
    aioredis = None  # type: ignore[assignment]

__all__ = ["RedisBackend"]

logger = logging.getLogger("uringws.pubsub.redis")

_NODE_ID_LEN = 16
_TEXT, _BINARY = b"t", b"b"


class _Stale(Exception):
    """The connection stopped answering pings (a half-open TCP connection, a paused server)."""


class RedisBackend(Backend):
    """Carry a Hub's messages between nodes through Redis at ``url`` (``redis://HOST:PORT/DB``, ``rediss://``).

    ``mode="pubsub"``: PUBLISH/SUBSCRIBE, at-most-once; what is published while a node is disconnected never
    reaches it. ``mode="streams"``: XADD to a stream per channel capped at about ``stream_maxlen`` entries; each
    node reads with XREAD BLOCK from the last id it saw and resumes from it after a reconnect, so it misses
    nothing unless more than ``stream_maxlen`` messages were added meanwhile (the oldest are trimmed).

    Outages: the backend reconnects with exponential backoff from ``backoff_min`` to ``backoff_max`` seconds,
    logs once when it goes down and once when it is back; ``publish`` raises BackendUnavailable while it is down.
    ``start`` raises BackendUnavailable if Redis cannot be reached within ``connect_timeout`` or does not speak
    Redis, and ValueError for a URL that is not a Redis URL.
    """

    def __init__(
        self,
        url: str,
        *,
        mode: Literal["pubsub", "streams"] = "pubsub",
        prefix: str = "uringws:",
        stream_maxlen: int = 10_000,
        connect_timeout: float = 5.0,
        health_interval: float = 5.0,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        stream_block: float = 0.5,
        close_timeout: float = 5.0,
    ) -> None:
        if aioredis is None:
            raise ImportError("RedisBackend needs redis-py: pip install 'uringws[redis]'")
        if mode not in ("pubsub", "streams"):
            raise ValueError(f"mode must be 'pubsub' or 'streams', got {mode!r}")
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL: {url!r}; use redis://HOST:PORT/DB or rediss://HOST:PORT/DB")
        self.url = url
        self.mode = mode
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stream_block = stream_block
        self.close_timeout = close_timeout
        self.node_id = os.urandom(_NODE_ID_LEN)
        self.state = "new"
        #: Outages since start (each logged once).
        self.outages = 0
        self._deliver: Deliver | None = None
        self._client: Any = None  # commands and publishes (a pool)
        self._reader: Any = None  # streams mode: XREAD BLOCK on a connection of its own
        self._pubsub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._channels: set[str] = set()
        self._confirm: dict[bytes, list[asyncio.Future[None]]] = {}
        # Streams mode: last id seen per stream key; None until the tail is fetched (after an outage).
        self._last_ids: dict[bytes, bytes | None] = {}
        self._malformed_logged: set[str] = set()
        self._streams_changed = asyncio.Event()
        self._reader_id: int | None = None  # CLIENT ID of the streams reader's connection

    @property
    def _where(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"  # no password in logs

    def _new_client(self, role: str, **kwargs: Any) -> Any:
        # No retries inside redis-py: a retried PUBLISH whose reply was lost would deliver twice, and
        # reconnecting is this backend's job (with its own backoff and one log line per outage).
        return aioredis.Redis.from_url(
            self.url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=self.connect_timeout,
            client_name=f"uringws-{role}-{self.node_id.hex()[:12]}",  # tells nodes apart in CLIENT LIST
            **kwargs,
        )

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._client = self._new_client("node")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._client.ping()
                if self.mode == "pubsub":
                    self._pubsub = await self._connect_pubsub()
                else:
                    self._reader = await self._connect_reader()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._discard()
            raise BackendUnavailable(
                f"cannot use Redis at {self._where}: {_describe(exc)}; check the URL and that redis-server is "
                "running there"
            ) from exc
        self.state = "up"
        run = self._run_pubsub if self.mode == "pubsub" else self._run_streams
        self._task = asyncio.get_running_loop().create_task(run())

    async def close(self) -> None:
        """Stop reading and close the connections; returns within about ``close_timeout`` seconds.

        The reader task is cancelled, and it also checks ``state`` between steps, so a cancellation absorbed by
        a call it awaits (one that turns it into a connection error, say) still ends it instead of sending it
        back to reconnect forever. A task that has not ended after ``close_timeout`` is left cancelled and
        logged, rather than holding up the caller (a server's shutdown).
        """
        self.state = "closed"
        self._streams_changed.set()  # a streams reader waiting for channels wakes up and sees "closed"
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.close_timeout)
            if not done:
                task.cancel()
                logger.warning(
                    "the Redis reader task did not end within %.1f s of close(); left cancelled", self.close_timeout
                )
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            logger.warning("the Redis reader task had failed: %s", _describe(task.exception()))  # type: ignore[arg-type]
        await self._discard()
        self._release_waiters()

    async def _discard(self) -> None:
        for name in ("_pubsub", "_reader", "_client"):
            obj = getattr(self, name)
            setattr(self, name, None)
            if obj is not None:
                try:
                    await obj.aclose()
                except (RedisError, OSError):
                    pass

    def _key(self, channel: str) -> bytes:
        return (self.prefix + channel).encode("utf-8")

    def _channel(self, key: bytes) -> str:
        return key[len(self.prefix.encode("utf-8")) :].decode("utf-8", "replace")

    # -- outage handling ---------------------------------------------------------------------------------

    def _went_down(self, exc: BaseException) -> None:
        if self.state == "closed":
            return
        if self.state == "up":
            self.outages += 1
            logger.warning(
                "lost Redis at %s (%s): local delivery goes on; reconnecting in the background",
                self._where,
                _describe(exc),
            )
        self.state = "down"
        self._down_since = asyncio.get_running_loop().time()
        self._release_waiters()

    def _came_up(self) -> None:
        if self.state == "closed":
            return
        self.state = "up"
        took = asyncio.get_running_loop().time() - self._down_since
        logger.warning("Redis at %s is back after %.1f s", self._where, took)

    def _release_waiters(self) -> None:
        for waiters in self._confirm.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._confirm.clear()

    async def _reconnect(self, connect: Any) -> Any:
        """Call ``connect()`` until it succeeds, with capped exponential backoff and jitter; None once closed."""
        delay = self.backoff_min
        while self.state != "closed":
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if self.state == "closed":
                break
            try:
                async with asyncio.timeout(self.connect_timeout):
                    conn = await connect()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.debug("reconnecting to Redis at %s failed: %s", self._where, _describe(exc))
                delay = min(delay * 2, self.backoff_max)
                continue
            if self.state == "closed":  # closed while connecting: nobody will close it otherwise
                await _quiet_close(conn)
                break
            return conn
        return None

    # -- publishing --------------------------------------------------------------------------------------

    async def publish(self, channel: str, message: Data) -> None:
        if self.state != "up":
            raise BackendUnavailable(
                f"Redis at {self._where} is unreachable ({self.state}): the message reached this node only"
            )
        if isinstance(message, str):
            kind, payload = _TEXT, message.encode("utf-8", "surrogatepass")
        else:
            kind, payload = _BINARY, message
        key = self._key(channel)
        try:
            if self.mode == "pubsub":
                await self._client.publish(key, b"".join((self.node_id, kind, payload)))
            else:
                fields = {b"n": self.node_id, b"k": kind, b"d": payload}
                await self._client.xadd(key, fields, maxlen=self.stream_maxlen, approximate=True)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(
                f"publishing to Redis at {self._where} failed ({_describe(exc)}): the message reached this node only"
            ) from exc

    def _decode(self, channel: str, node: bytes, kind: bytes, payload: bytes) -> Data | None:
        if node == self.node_id:
            return None  # ours: the hub delivered it when it was published
        try:
            if kind == _TEXT:
                return payload.decode("utf-8")
            if kind == _BINARY:
                return payload
        except UnicodeDecodeError:
            pass
        if channel not in self._malformed_logged:
            self._malformed_logged.add(channel)
            logger.warning("ignored a message on %r not published by a uringws hub (logged once per channel)", channel)
        return None

    # -- pub/sub mode ------------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if self.mode == "streams":
            await self._stream_subscribe(channel)
            return
        if self.state != "up" or self._pubsub is None:
            return  # the reconnect subscribes to every channel in self._channels
        key = self._key(channel)
        fut = asyncio.get_running_loop().create_future()
        self._confirm.setdefault(key, []).append(fut)
        try:
            await self._pubsub.subscribe(key)
            async with asyncio.timeout(self.connect_timeout):
                await fut
        except (RedisError, OSError, TimeoutError):
            pass  # an outage: the reader notices, and subscribes again once reconnected

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        key = self._key(channel)
        if self.mode == "streams":
            self._last_ids.pop(key, None)
            return
        if self.state != "up" or self._pubsub is None:
            return
        try:
            await self._pubsub.unsubscribe(key)
        except (RedisError, OSError, TimeoutError):
            pass

    async def _connect_pubsub(self) -> Any:
        """A subscribed PubSub: this node's own channel (so there is always a connection to watch) and every
        channel wanted, confirmed by Redis, including channels added while this ran."""
        pubsub = self._client.pubsub()
        try:
            subscribed: set[bytes] = set()
            wanted = {self._key("__node__:" + self.node_id.hex())}
            while True:
                wanted |= {self._key(c) for c in self._channels}
                pending = wanted - subscribed
                if not pending:
                    break
                await pubsub.subscribe(*pending)
                while pending:
                    msg = await pubsub.get_message(timeout=self.connect_timeout)
                    if msg is None:
                        raise TimeoutError("Redis did not confirm SUBSCRIBE")
                    if msg["type"] == "subscribe":
                        pending.discard(msg["channel"])
                        subscribed.add(msg["channel"])
                    elif msg["type"] == "message":
                        self._on_pubsub_message(msg)
            gone = subscribed - wanted - {self._key(c) for c in self._channels}
            if gone:
                await pubsub.unsubscribe(*gone)
        except BaseException:
            await _quiet_close(pubsub)
            raise
        return pubsub

    def _on_pubsub_message(self, msg: dict[str, Any]) -> None:
        key, data = msg["channel"], msg["data"]
        channel = self._channel(key)
        if channel not in self._channels:
            return
        message = self._decode(
            channel, data[:_NODE_ID_LEN], data[_NODE_ID_LEN : _NODE_ID_LEN + 1], data[_NODE_ID_LEN + 1 :]
        )
        if message is not None and self._deliver is not None:
            self._deliver(channel, message)

    async def _run_pubsub(self) -> None:
        # Every step checks `state`: close() cancels this task, but a cancellation that a library call turns
        # into a connection error must not send a closed backend back to reconnecting.
        while self.state != "closed":
            try:
                await self._read_pubsub(self._pubsub)
            except (RedisError, OSError, TimeoutError, _Stale) as exc:
                self._went_down(exc)
            pubsub, self._pubsub = self._pubsub, None
            await _quiet_close(pubsub)
            if self.state == "closed":
                return
            self._pubsub = await self._reconnect(self._connect_pubsub)
            self._came_up()

    async def _read_pubsub(self, pubsub: Any) -> None:
        loop = asyncio.get_running_loop()
        interval = self.health_interval
        heard = loop.time()
        pinged = False
        while self.state != "closed":
            msg = await pubsub.get_message(timeout=interval)
            if msg is None:
                if pinged and loop.time() - heard > 2 * interval:
                    raise _Stale(f"no answer to PING within {2 * interval:.0f} s")
                await pubsub.ping()  # answered with a "pong" message while subscribed
                pinged = True
                continue
            heard = loop.time()
            pinged = False
            kind = msg["type"]
            if kind == "message":
                self._on_pubsub_message(msg)
            elif kind == "subscribe":
                for fut in self._confirm.pop(msg["channel"], ()):
                    if not fut.done():
                        fut.set_result(None)

    # -- streams mode ------------------------------------------------------------------------------------

    async def _stream_subscribe(self, channel: str) -> None:
        key = self._key(channel)
        self._last_ids[key] = None
        if self.state != "up":
            return  # the reader fetches the tail when it is back
        try:
            await self._fetch_tail(key)
            # Have the reader add the stream now rather than when its current XREAD BLOCK times out.
            self._streams_changed.set()
            if self._reader_id is not None:
                await self._client.client_unblock(self._reader_id)
        except (RedisError, OSError, TimeoutError):
            pass

    async def _fetch_tail(self, key: bytes) -> None:
        """Start a newly subscribed stream after its last entry: later messages are delivered, earlier not."""
        entries = await self._client.xrevrange(key, count=1)
        if key in self._last_ids and self._last_ids[key] is None:
            self._last_ids[key] = entries[0][0] if entries else b"0-0"

    async def _run_streams(self) -> None:
        # As in _run_pubsub, `state` is checked at every step, so close() ends this loop even if a cancellation
        # was absorbed; close() also sets _streams_changed to wake the wait for channels.
        block_ms = max(1, int(self.stream_block * 1000))
        while self.state != "closed":
            try:
                while self.state != "closed":
                    for key in [k for k, v in self._last_ids.items() if v is None]:
                        await self._fetch_tail(key)
                    streams = {k: v for k, v in self._last_ids.items() if v is not None}
                    if not streams:
                        await self._reader.ping()
                        self._streams_changed.clear()
                        if self.state == "closed":
                            break
                        try:
                            async with asyncio.timeout(self.health_interval):
                                await self._streams_changed.wait()
                        except TimeoutError:
                            pass
                        continue
                    # A subscribe() interrupts this with CLIENT UNBLOCK; the BLOCK timeout is the fallback bound on
                    # how long a new stream waits to be read (its start id is fixed, so it misses nothing meanwhile).
                    reply = await self._reader.xread(streams, block=block_ms, count=1000)
                    for key, entries in reply or ():
                        self._on_stream_entries(key, entries)
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_down(exc)
            reader, self._reader, self._reader_id = self._reader, None, None
            await _quiet_close(reader)
            if self.state == "closed":
                return
            self._reader = await self._reconnect(self._connect_reader)
            self._came_up()

    async def _connect_reader(self) -> Any:
        reader = self._new_client("reader", single_connection_client=True)
        try:
            self._reader_id = await reader.client_id()
        except BaseException:
            await _quiet_close(reader)
            raise
        return reader

    def _on_stream_entries(self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        channel = self._channel(key)
        for entry_id, fields in entries:
            if key not in self._last_ids:
                return  # unsubscribed meanwhile
            self._last_ids[key] = entry_id
            message = self._decode(channel, fields.get(b"n", b""), fields.get(b"k", b""), fields.get(b"d", b""))
            if message is not None and self._deliver is not None:
                self._deliver(channel, message)


async def _quiet_close(obj: Any) -> None:
    if obj is None:
        return
    try:
        await obj.aclose()
    except (RedisError, OSError, TimeoutError):
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
