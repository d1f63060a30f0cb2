"""The Hub: channels of WebSocket connections and in-process subscribers, fed by a pluggable backend."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

from ..server import broadcast
from ..ws.config import DEFAULT_CONFIG
from ..ws.connection import Connection, Data
from .backend import Backend, MemoryBackend, PubSubError

__all__ = ["DEFAULT_SUBSCRIBER_QUEUE", "Hub", "MessageTooBig", "Subscription"]

logger = logging.getLogger("uringws.pubsub")

#: Messages a Subscription buffers before it drops new ones.
DEFAULT_SUBSCRIBER_QUEUE = 1000


class MessageTooBig(PubSubError, ValueError):
    """A message over the hub's max_size was published."""


class Subscription:
    """Messages of one channel for application code: ``async for message in sub``.

    Bounded: when ``maxsize`` messages are waiting, newer ones are dropped (counted in ``dropped``, logged once),
    as ``broadcast`` skips a slow connection rather than buffering without limit. Iteration ends when the hub
    closes.
    """

    __slots__ = ("_closed", "_messages", "_waiter", "channel", "dropped", "maxsize")

    def __init__(self, channel: str, maxsize: int) -> None:
        self.channel = channel
        self.maxsize = maxsize
        self.dropped = 0
        self._messages: collections.deque[Data] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _put(self, message: Data) -> None:
        if len(self._messages) >= self.maxsize:
            if not self.dropped:
                logger.warning(
                    "subscriber of %r is %d messages behind: dropping new messages until it catches up",
                    self.channel,
                    self.maxsize,
                )
            self.dropped += 1
            return
        self._messages.append(message)
        self._wake()

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Data:
        """Wait for the next message; raise PubSubError once the hub is closed and nothing is left."""
        while not self._messages:
            if self._closed:
                raise PubSubError(f"subscription to {self.channel!r} ended: the hub is closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    def __aiter__(self) -> AsyncIterator[Data]:
        return self

    async def __anext__(self) -> Data:
        try:
            return await self.get()
        except PubSubError:
            raise StopAsyncIteration from None


class Hub:
    """Publish to channels; channels reach WebSocket connections (``join``) and subscribers (``subscribe``).

    ::

        async with Hub(RedisBackend("redis://127.0.0.1:6379/0")) as hub:
            await hub.join(ws, "room")           # until leave() or the connection closes
            await hub.publish("room", "hello")   # every member on every node, once

    A message published here is delivered to this node's members at once (with ``broadcast``: one frame, slow
    connections skipped) and then handed to the backend for the other nodes. ``max_size`` (default: the
    WebSocket default, 1 MiB; None: no limit) bounds a message's size in bytes (UTF-8 for text).
    """

    def __init__(
        self,
        backend: Backend | None = None,
        *,
        max_size: int | None = DEFAULT_CONFIG.max_size,
        subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE,
    ) -> None:
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.max_size = max_size
        self.subscriber_queue = subscriber_queue
        self._members: dict[str, set[Connection]] = {}
        # Per joined connection: its channels and the callback on its `lost` future (kept to remove it again).
        self._joined: dict[Connection, tuple[set[str], Any]] = {}
        self._subscribers: dict[str, set[Subscription]] = {}
        self._backend_channels: set[str] = set()
        self._sync_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._oversize_logged: set[str] = set()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend; raises BackendUnavailable (or ValueError) if it cannot start."""
        if self._started:
            return
        await self.backend.start(self._receive)
        self._started = True

    async def close(self) -> None:
        """Stop the backend, end every subscription and forget every member (connections stay open)."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn, (_, callback) in self._joined.items():
            conn.lost.remove_done_callback(callback)
        self._joined.clear()
        self._members.clear()
        for subs in self._subscribers.values():
            for sub in subs:
                sub._close()
        self._subscribers.clear()
        await self.backend.close()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def state(self) -> str:
        """The backend's state: "new", "up", "down" (reconnecting; local delivery still works) or "closed"."""
        return self.backend.state

    @property
    def healthy(self) -> bool:
        """True while messages reach other nodes (what a /healthz should report)."""
        return self.backend.state == "up" and not self._closed

    # -- publishing --------------------------------------------------------------------------------------

    async def publish(self, channel: str, message: Data) -> None:
        """Deliver ``message`` to every member and subscriber of ``channel`` here, then on the other nodes.

        Raises MessageTooBig over ``max_size`` (nothing is delivered), TypeError for other than str/bytes, and
        BackendUnavailable if the backend is down: the message then reached this node only.
        """
        if not self._started or self._closed:
            raise PubSubError("the hub is not running: use `async with Hub(...)` or `await hub.start()` first")
        if isinstance(message, bytearray | memoryview):
            message = bytes(message)
        elif not isinstance(message, str | bytes):
            raise TypeError(f"cannot publish {type(message).__name__}: use str or bytes")
        size = self._size(message)
        if size is not None:
            raise MessageTooBig(
                f"message of {size} bytes to channel {channel!r} is over the hub's max_size of {self.max_size} "
                "bytes: send less, or raise Hub(max_size=...) (and the connections' max_size)"
            )
        self._deliver(channel, message)
        await self.backend.publish(channel, message)

    def _size(self, message: Data) -> int | None:
        """The message's size in bytes if it is over max_size, else None (text is encoded only if it may be)."""
        limit = self.max_size
        if limit is None:
            return None
        if isinstance(message, str):
            if len(message) * 4 <= limit:  # UTF-8 takes at most 4 bytes per code point
                return None
            size = len(message.encode("utf-8", "surrogatepass"))
        else:
            size = len(message)
        return size if size > limit else None

    def _receive(self, channel: str, message: Data) -> None:
        size = self._size(message)
        if size is not None:
            if channel not in self._oversize_logged:
                self._oversize_logged.add(channel)
                logger.warning(
                    "dropped a message of %d bytes from another node on channel %r: over max_size %d bytes "
                    "(logged once per channel)",
                    size,
                    channel,
                    self.max_size,
                )
            return
        self._deliver(channel, message)

    def _deliver(self, channel: str, message: Data) -> None:
        members = self._members.get(channel)
        if members:
            broadcast(members, message)
        subs = self._subscribers.get(channel)
        if subs:
            for sub in subs:
                sub._put(message)

    # -- membership --------------------------------------------------------------------------------------

    async def join(self, conn: Connection, channel: str) -> None:
        """Add a connection to a channel until ``leave`` or until it closes (a closed one joins nothing).

        Returns once the backend carries the channel to this node, or at once during an outage (it will
        carry it after reconnecting).
        """
        self._check_running()
        if conn.lost.done():
            return
        entry = self._joined.get(conn)
        if entry is None:
            callback = functools.partial(self._conn_lost, conn)
            conn.lost.add_done_callback(callback)
            entry = self._joined[conn] = (set(), callback)
        entry[0].add(channel)
        self._members.setdefault(channel, set()).add(conn)
        await self._sync(channel)

    async def leave(self, conn: Connection, channel: str) -> None:
        """Remove a connection from a channel (no error if it is not a member)."""
        entry = self._joined.get(conn)
        if entry is None or channel not in entry[0]:
            return
        entry[0].discard(channel)
        if not entry[0]:
            del self._joined[conn]
            conn.lost.remove_done_callback(entry[1])
        self._remove_member(conn, channel)
        await self._sync(channel)

    def channels_of(self, conn: Connection) -> frozenset[str]:
        """The channels a connection is a member of."""
        entry = self._joined.get(conn)
        return frozenset(entry[0]) if entry is not None else frozenset()

    def members(self, channel: str) -> frozenset[Connection]:
        """This node's connections in a channel."""
        return frozenset(self._members.get(channel, ()))

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, *, maxsize: int | None = None) -> AsyncIterator[Subscription]:
        """``async with hub.subscribe(channel) as sub: async for message in sub`` (see Subscription)."""
        self._check_running()
        sub = Subscription(channel, maxsize if maxsize is not None else self.subscriber_queue)
        self._subscribers.setdefault(channel, set()).add(sub)
        try:
            await self._sync(channel)
            yield sub
        finally:
            subs = self._subscribers.get(channel)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subscribers[channel]
            if not self._closed:
                await self._sync(channel)

    def _check_running(self) -> None:
        if not self._started or self._closed:
            raise PubSubError("the hub is not running: use `async with Hub(...)` or `await hub.start()` first")

    def _remove_member(self, conn: Connection, channel: str) -> None:
        members = self._members.get(channel)
        if members is not None:
            members.discard(conn)
            if not members:
                del self._members[channel]

    def _conn_lost(self, conn: Connection, _: object) -> None:
        entry = self._joined.pop(conn, None)
        if entry is None or self._closed:
            return
        for channel in entry[0]:
            self._remove_member(conn, channel)
            if channel not in self._members and channel not in self._subscribers:
                task = asyncio.get_running_loop().create_task(self._sync(channel))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _sync(self, channel: str) -> None:
        # The lock orders the backend's subscribe/unsubscribe calls as the membership changed, so a quick
        # leave-then-join cannot end with the backend unsubscribed from a channel that has members.
        async with self._sync_lock:
            if self._closed:
                return
            wanted = channel in self._members or channel in self._subscribers
            if wanted and channel not in self._backend_channels:
                self._backend_channels.add(channel)
                await self.backend.subscribe(channel)
            elif not wanted and channel in self._backend_channels:
                self._backend_channels.discard(channel)
                await self.backend.unsubscribe(channel)
