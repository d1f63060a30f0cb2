"""Cross-worker backend of the Hub: the workers of one ``uringws serve --workers N`` reach each other through
their supervisor, with no external service.

Each worker holds one end of a unix socketpair whose other end the supervisor holds (``uringws.workers``). A
worker sends the supervisor its subscriptions and publishes; the supervisor copies each publish to every *other*
worker subscribed to the channel, in the order it read them. One ordered stream per worker and one reader in
the supervisor give: exactly once per worker, in publish order per publisher, while every worker is alive.

Frame: ``!IcH`` header (length of what follows the header, kind, channel length), the UTF-8 channel, the
payload. Kinds: ``R`` ready (worker -> supervisor), ``S``/``U`` subscribe/unsubscribe a channel, ``P`` a publish
whose payload is ``b"t"`` (text) or ``b"b"`` (binary) + the message. The supervisor answers each ``S`` with an
empty ``S``, so ``Hub.join`` returns once other workers' publishes reach this one.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from collections.abc import Callable

from ..ws.connection import Data
from .backend import Backend, BackendUnavailable, Deliver

__all__ = [
    "HEADER",
    "PUBLISH",
    "READY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "FrameReader",
    "SupervisorLink",
    "WorkersBackend",
    "encode",
]


HEADER = struct.Struct("!IcH")
READY, SUBSCRIBE, UNSUBSCRIBE, PUBLISH = b"R", b"S", b"U", b"P"
_TEXT, _BINARY = b"t", b"b"


def encode(kind: bytes, channel: str = "", payload: bytes = b"") -> bytes:
    name = channel.encode("utf-8", "surrogatepass")
    return HEADER.pack(len(name) + len(payload), kind, len(name)) + name + payload


class FrameReader:
    """Splits a byte stream into ``(kind, channel, payload, raw frame)``, whatever the chunking."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, str, bytes, bytes]]:
        self._buf += data
        frames = []
        buf = self._buf
        start = 0
        while len(buf) - start >= HEADER.size:
            length, kind, name_len = HEADER.unpack_from(buf, start)
            end = start + HEADER.size + length
            if len(buf) < end:
                break
            body = start + HEADER.size
            channel = bytes(buf[body : body + name_len]).decode("utf-8", "surrogatepass")
            frames.append((kind, channel, bytes(buf[body + name_len : end]), bytes(buf[start:end])))
            start = end
        if start:
            del buf[:start]
        return frames


class SupervisorLink(asyncio.Protocol):
    """A worker's end of its socketpair with the supervisor; ``lost`` is done when the supervisor is gone."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_publish: Callable[[str, Data], None] | None = None
        self._reader = FrameReader()
        self._acks: collections.deque[asyncio.Future[None]] = collections.deque()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, fd: int) -> SupervisorLink:
        sock = socket.socket(fileno=fd)
        _, link = await asyncio.get_running_loop().create_connection(cls, sock=sock)
        return link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for kind, channel, payload, _ in self._reader.feed(data):
            if kind == SUBSCRIBE:  # the supervisor's acknowledgement, in the order the subscribes were sent
                if self._acks:
                    ack = self._acks.popleft()
                    if not ack.done():
                        ack.set_result(None)
                continue
            if kind != PUBLISH or self.on_publish is None:
                continue
            if payload[:1] == _TEXT:
                self.on_publish(channel, payload[1:].decode("utf-8", "surrogatepass"))
            else:
                self.on_publish(channel, payload[1:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for ack in self._acks:
            if not ack.done():
                ack.set_result(None)
        self._acks.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, frame: bytes) -> bool:
        """Queue a frame for the supervisor; False if the link is gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(frame)
        return True

    async def subscribe(self, channel: str) -> None:
        """Tell the supervisor; return once it has acknowledged (from then on, publishes reach us)."""
        if self.send(encode(SUBSCRIBE, channel)):
            ack = asyncio.get_running_loop().create_future()
            self._acks.append(ack)
            await ack

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class WorkersBackend(Backend):
    """Carry a Hub's messages to the other workers of this ``uringws serve --workers N`` (see the module doc).

    ``publish`` never waits: the frame is queued on the socketpair. ``state`` is "up" while the supervisor is
    there and "closed" after ``close()`` or once the supervisor is gone (the worker is then shutting down).
    """

    def __init__(self, link: SupervisorLink) -> None:
        self.link = link
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        if self.link.lost.done():
            raise BackendUnavailable("the supervisor of this worker is gone: nothing can reach the other workers")
        self._deliver = deliver
        self.link.on_publish = deliver
        self.state = "up"
        self.link.lost.add_done_callback(self._link_lost)

    def _link_lost(self, _: object) -> None:
        if self.state == "up":
            self.state = "down"

    async def close(self) -> None:
        self.link.on_publish = None
        self.state = "closed"

    async def subscribe(self, channel: str) -> None:
        await self.link.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.link.send(encode(UNSUBSCRIBE, channel))

    async def publish(self, channel: str, message: Data) -> None:
        if isinstance(message, str):
            payload = _TEXT + message.encode("utf-8", "surrogatepass")
        else:
            payload = _BINARY + bytes(message)
        if not self.link.send(encode(PUBLISH, channel, payload)):
            raise BackendUnavailable("the supervisor of this worker is gone: the message reached this worker only")
