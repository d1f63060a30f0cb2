"""The interface between a Hub and what carries its messages to other nodes, and the in-process backend.

A backend moves messages between hubs; it never touches a WebSocket connection. The hub tells it which channels
this node wants (``subscribe`` when the first local member or subscriber joins a channel, ``unsubscribe`` when the
last one leaves) and hands it every message published here, *after* delivering it to local members itself. The
backend hands messages from other nodes to the ``deliver`` callback given to ``start`` and must not hand back
this node's own messages (that would deliver them twice).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

from ..ws.connection import Data

__all__ = ["Backend", "BackendUnavailable", "Deliver", "MemoryBackend", "MemoryBroker", "PubSubError"]

#: ``deliver(channel, message)``: called by a backend, on the loop's thread, for each message from another node.
Deliver = Callable[[str, Data], None]


class PubSubError(Exception):
    """Base class of the hub's errors."""


class BackendUnavailable(PubSubError):
    """The backend cannot reach its service (at start, or for a publish during an outage)."""


class Backend(abc.ABC):
    """What a hub needs from a transport between nodes (in-process, Redis, or a cross-worker one later).

    Contract: ``start`` connects or raises BackendUnavailable (or ValueError for a bad configuration);
    ``subscribe``/``unsubscribe`` never raise for an outage (the backend remembers the channel set and restores
    it when it reconnects); ``publish`` raises BackendUnavailable when the message could not be handed to the
    service; ``state`` is "new", "up", "down" (reconnecting) or "closed".
    """

    state: str = "new"

    @abc.abstractmethod
    async def start(self, deliver: Deliver) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abc.abstractmethod
    async def publish(self, channel: str, message: Data) -> None:
        """Send ``message`` to the other nodes subscribed to ``channel`` (the hub has served this node)."""


class MemoryBroker:
    """Connects MemoryBackends of one process, as Redis connects nodes (useful to test several hubs)."""

    def __init__(self) -> None:
        self.channels: dict[str, set[MemoryBackend]] = {}


class MemoryBackend(Backend):
    """In-process delivery: no service, no setup. Alone, it has no other node to reach; backends sharing one
    MemoryBroker pass messages to each other synchronously, exactly once, in publish order."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self._broker = broker
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self.state = "up"

    async def close(self) -> None:
        if self._broker is not None:
            for members in self._broker.channels.values():
                members.discard(self)
        self.state = "closed"

    async def subscribe(self, channel: str) -> None:
        if self._broker is not None:
            self._broker.channels.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        if self._broker is not None:
            members = self._broker.channels.get(channel)
            if members is not None:
                members.discard(self)
                if not members:
                    del self._broker.channels[channel]

    async def publish(self, channel: str, message: Data) -> None:
        if self._broker is None:
            return
        for other in list(self._broker.channels.get(channel, ())):
            if other is not self and other._deliver is not None:
                other._deliver(channel, message)
