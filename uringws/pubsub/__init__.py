"""Pub/sub hub for WebSocket connections across processes and machines: ``Hub`` over a pluggable backend.

::

    from uringws.pubsub import Hub, RedisBackend

    async with Hub(RedisBackend("redis://127.0.0.1:6379/0")) as hub:
        async def handler(ws):
            await hub.join(ws, "lobby")            # left automatically when ws closes
            async for message in ws:
                await hub.publish("lobby", message)

The default backend is in-process; ``RedisBackend`` (``pip install 'uringws[redis]'``) reaches other nodes.
Guarantees and outage behaviour: docs/pubsub.md.
"""

from .backend import Backend, BackendUnavailable, Deliver, MemoryBackend, MemoryBroker, PubSubError
from .hub import DEFAULT_SUBSCRIBER_QUEUE, Hub, MessageTooBig, Subscription
from .redisbackend import RedisBackend

__all__ = [
    "DEFAULT_SUBSCRIBER_QUEUE",
    "Backend",
    "BackendUnavailable",
    "Deliver",
    "Hub",
    "MemoryBackend",
    "MemoryBroker",
    "MessageTooBig",
    "PubSubError",
    "RedisBackend",
    "Subscription",
]
