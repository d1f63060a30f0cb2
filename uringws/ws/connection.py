"""The asyncio front-end of a WebSocket connection, shared by ``uringws.server`` and ``uringws.client``.

The only module of ``uringws.ws`` that imports asyncio. It is an ``asyncio.Protocol`` (not streams), so that
every frame goes straight from the sans-I/O core to ``transport.write`` on any asyncio event loop, and flow
control is the transport's: ``pause_writing``/``resume_writing`` make ``send`` wait while more than
``write_limit_high`` bytes are buffered; more than ``max_queue`` unread messages pause reading.

Fairness: reading from a peer also pauses while our write buffer for it is above ``write_limit_high`` (a peer
that does not read its pongs or echoes cannot make us buffer them without bound: TCP pushes back on it), and a
peer's input is parsed `TURN_FRAMES` frames at a time (on the parser's general path), the rest waiting for a later
event-loop turn with reading paused (one flooding peer cannot hold the loop for the others).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias, cast

from ..loop.compat import get_running_loop_or_none as _get_running_loop_or_none
from ..tls.protocol import TLSTransport
from .budget import BUDGET_MIN, MemoryBudget
from .config import WSConfig
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidState,
)
from .frames import Anext as _CAnext
from .frames import Dispatch as _CDispatch
from .frames import Send as _CSend
from .frames import SendNowait as _CSendNowait
from .frames import ViewSink as _ViewSink
from .frames import serialize_header
from .handshake import (
    ClientHandshake,
    Negotiated,
    Request,
    Response,
    ServerHandshake,
    serialize_response,
)
from .protocol import (
    _BINARY,
    _BINARY_HEADERS,
    _CLOSED,
    _JOIN_LIMIT,
    _NO_LIMIT,
    _OPEN,
    Close,
    Fragment,
    Message,
    Ping,
    Pong,
    Protocol,
    Side,
    State,
)

__all__ = ["Connection", "Data", "LoggerLike", "ProcessRequest", "ProcessResponse"]

_Future = asyncio.Future

#: A ``logging.Logger`` or ``LoggerAdapter`` (to add context, e.g. a request id), as websockets' ``logger=``.
LoggerLike: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"

#: Frames parsed on the frame parser's general path (control frames, large or fragmented frames) before the rest
#: of what arrived waits for a later event-loop turn with reading paused: one TLS delivery of 256 KiB of 6-byte
#: pings is 43,000 frames (~0.1 s of parsing and answering), which would delay every other connection.
TURN_FRAMES = 1024

#: Longest time messages received just before a protocol error are left for the application to answer
#: before the connection is failed (it fails at once when the application calls recv() again).
PENDING_FAILURE_DELAY = 1.0

Data = str | bytes

# Connection._streaming: no recv_streaming(); one waits for its message to start or is in it; one was left in the
# middle of a message (the rest of it cannot be told from the next message: the connection cannot be read).
_IDLE, _ACTIVE, _ABANDONED = 0, 1, 2
_PENDING = object()  # Connection._handshake_result while the opening handshake goes on

# Connection._messages until the first message arrives: an empty deque costs about 760 bytes (its first block of
# 64 slots), and an idle connection never needs one. Falsy and of length 0 like an empty deque; nothing appends to
# it (Connection._queue() and Connection._first_message() replace it with a real deque first).
_NO_MESSAGES = cast("collections.deque[Any]", ())
#: ``process_request(connection, request)``: return None to continue the WebSocket handshake, or a Response /
#: (status, headers, body) tuple to answer plain HTTP instead (e.g. a health check or a 404).
HTTPAnswer = Response | tuple[int, Iterable[tuple[str, str]], bytes | str]
ProcessRequest = Callable[["Connection", Request], "HTTPAnswer | Awaitable[HTTPAnswer | None] | None"]
#: ``process_response(connection, request, response)``: change ``response`` in place (e.g. add headers) and
#: return None, or return another Response to send instead (a non-101 one refuses the upgrade).
ProcessResponse = Callable[["Connection", Request, Response], "Response | Awaitable[Response | None] | None"]


def _without_tracebacks(exc: BaseException) -> BaseException:
    """``exc`` with the tracebacks of it and its causes dropped, for an exception kept in a connection's future.

    Their frames (the parser's caller, the transport's callbacks, ``_run_server``) hold the connection: a cycle
    that only the cycle collector would free, so the closed connection's memory would wait for it.
    """
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        link.__traceback__ = None
        chain.append(link)
        link = link.__cause__ or link.__context__
    return exc


def _frame_whole(proto: Protocol, message: str | bytes | bytearray | memoryview, text: bool | None) -> None:
    """A whole message into the protocol's output, as send() and send_nowait() take it: str as text (``text=False``:
    as binary, UTF-8), bytes-like as binary (``text=True``: as text, unchecked)."""
    if isinstance(message, str):
        if text is False:
            proto.send_binary(message.encode("utf-8"))
        else:
            proto.send_text(message)
    elif text:
        proto.send_text(bytes(message))
    else:
        proto.send_binary(message)


class _PyDispatch:
    """What a dispatch() puts where a waiting recv() keeps its future (``Connection._recv_waiter``): the receive
    side's wake-up (``waiter.done()``, ``waiter.set_result(None)``) delivers the queued messages to the callback.
    The pure twin of the compiled ``_speedups.Dispatch``."""

    __slots__ = ("callback", "conn", "finished")

    def __init__(self, conn: Connection, callback: Callable[[Data], object], finished: asyncio.Future[None]) -> None:
        self.conn = conn
        self.callback = callback
        self.finished = finished  # set by a failing callback; cancelled when dispatch() ends

    def done(self) -> bool:
        return False  # always "waiting": every wake-up delivers

    def set_result(self, _: object) -> None:
        self.conn._deliver(self)


_Dispatch: Any = _CDispatch if _CDispatch is not None else _PyDispatch


class Connection(asyncio.Protocol):
    """One WebSocket connection: ``recv``/``send``/``ping``/``close`` and ``async for message in ws``."""

    # Slots for the connection's own state (an instance dict of this many attributes costs about 1.5 KiB per
    # connection); __dict__ stays, so applications can still hang their own attributes on a connection.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_abort_handle",
        "_assembled",
        "_budget",
        "_budget_held",
        "_client_hs",
        "_close_initiator",
        "_drain_waiters",
        "_handler",
        "_handshake_done",
        "_handshake_result",
        "_id",
        "_keepalive_task",
        "_lingering",
        "_lost_exc",
        "_main_task",
        "_max_queue",
        "_messages",
        "_on_lost",
        "_open_deadline",
        "_pending_failure_handle",
        "_pings",
        "_process_request",
        "_process_response",
        "_read_paused_for_turn",
        "_read_paused_for_writes",
        "_reading_paused",
        "_recv_waiter",
        "_request_ready",
        "_send_lock",
        "_server_hs",
        "_sndbuf",
        "_streaming",
        "_write_if_open",
        "_write_paused",
        "_written",
        "config",
        "latency",
        "local_address",
        "logger",
        "loop",
        "lost",
        "proto",
        "remote_address",
        "request",
        "response",
        "side",
        "subprotocol",
        "transport",
    )

    def __init__(
        self,
        side: Side,
        config: WSConfig,
        *,
        server_handshake: ServerHandshake | None = None,
        client_handshake: ClientHandshake | None = None,
        handler: Callable[[Connection], Awaitable[Any]] | None = None,
        process_request: ProcessRequest | None = None,
        process_response: ProcessResponse | None = None,
        on_lost: Callable[[Connection], None] | None = None,
        sndbuf: int | None = None,
        logger: LoggerLike | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.side = side
        self._budget = budget  # the server's memory budget for received messages (uringws.ws.budget)
        self._budget_held = 0  # output bytes counted on it while a send()/drain() waits (_drain, _release_held)
        #: Where this connection logs: handshake failures, handler errors, and at DEBUG how it closed.
        if logger is None:
            logger = logging.getLogger("uringws.server" if side is Side.SERVER else "uringws.client")
        self.logger: LoggerLike = logger
        self._close_initiator: str | None = None  # "us" or "the peer": who sent the first close frame
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.proto: Protocol | None = None  # the sans-I/O core, once the handshake succeeded
        #: The handshake request (received on a server, sent by a client) and response.
        self.request: Request | None = None
        self.response: Response | None = None
        self.subprotocol: str | None = None
        self.remote_address: Any = None
        self.local_address: Any = None
        self._server_hs = server_handshake
        self._client_hs = client_handshake
        self._handler = handler
        self._process_request = process_request
        self._process_response = process_response
        self._on_lost = on_lost
        self._sndbuf = sndbuf

        # Whole messages, and while the parser streams fragments (recv_streaming()), Fragment events, in order.
        # _NO_MESSAGES (empty, shared) until the first one arrives: see _queue().
        self._messages: collections.deque[Data | Fragment] = _NO_MESSAGES
        self._assembled: list[Data] = []  # fragments recv() took of a message not complete yet
        self._streaming = _IDLE  # what recv_streaming() is doing (it sets the parser's fragment mode)
        self._max_queue = config.max_queue  # read per received batch; the config is frozen
        self._recv_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False  # max_queue messages wait unread
        self._write_paused = False
        self._written = 0  # bytes handed to transport.write() once open (keepalive measures progress with it)
        # Over uringws's TLS: its "write unless is_closing()" in one call (set by connection_made), else None. Given
        # two buffers (a frame header and a large payload), it writes both, in order.
        self._write_if_open: Callable[..., None] | None = None
        self._read_paused_for_writes = False  # reading paused while our write buffer is above the high-water mark
        self._read_paused_for_turn = False  # reading paused until the next turn: the frame budget ran out
        self._drain_waiters: list[asyncio.Future[None]] | None = None  # made by the first wait for a drain
        self._send_lock = asyncio.Lock()
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] | None = None  # made by the first ping
        #: Round-trip time in seconds of the last ping answered (ours or the keepalive's); 0.0 before any.
        self.latency = 0.0
        self._id: uuid.UUID | None = None
        # The server's handshake request, from _server_handshake_data to _run_server (a server connection only;
        # dropped once open: self.request keeps the request).
        self._request_ready: asyncio.Future[Request] | None = (
            None if server_handshake is None else self.loop.create_future()
        )
        # How the opening handshake ended: _PENDING, None (open) or the exception; handshake_done is made on first
        # use (the client's connect() waits on it, a server connection seldom has anyone asking).
        self._handshake_result: BaseException | object | None = _PENDING
        self._handshake_done: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._lingering = False  # a rejected head: reading only to discard until the peer closes
        self._main_task: asyncio.Task[None] | None = None
        self._abort_handle: asyncio.TimerHandle | None = None
        self._lost_exc: BaseException | None = None
        self._pending_failure_handle: asyncio.TimerHandle | None = None
        # A server makes its Connection right after accept: open_timeout counts from there and covers the TLS
        # handshake (the server gives TLS the same timeout) as well as the HTTP upgrade, as websockets does.
        timeout = config.open_timeout
        self._open_deadline = None if timeout is None else self.loop.time() + timeout

    # -- public API --------------------------------------------------------------------------------------

    @property
    def handshake_done(self) -> asyncio.Future[None]:
        """A future done once the opening handshake succeeded, or with its exception when it failed."""
        waiter = self._handshake_done
        if waiter is None:
            waiter = self._handshake_done = self.loop.create_future()
            result = self._handshake_result
            if result is None:
                waiter.set_result(None)
            elif result is not _PENDING:
                assert isinstance(result, BaseException)
                waiter.set_exception(result)
                waiter.exception()  # mark retrieved, as the failure was when nobody had asked yet
        return waiter

    def _settle_handshake(self, exc: BaseException | None) -> None:
        """Record how the opening handshake ended (None: it succeeded), once; resolve handshake_done if made."""
        if self._handshake_result is not _PENDING:
            return
        self._handshake_result = exc
        waiter = self._handshake_done
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    @property
    def state(self) -> State:
        if self.proto is not None:
            return self.proto.state
        return State.CLOSED if self.lost.done() else State.CONNECTING

    @property
    def close_code(self) -> int | None:
        """The peer's close code (1005: none given, 1006: no close frame); None while open."""
        if self.proto is None:
            return 1006 if self.lost.done() else None
        if self.proto.close_rcvd is None and self.proto.state is not _CLOSED:
            return None
        return self.proto.close_code

    @property
    def close_reason(self) -> str | None:
        code = self.close_code
        return None if code is None else (self.proto.close_reason if self.proto is not None else "")

    @property
    def id(self) -> uuid.UUID:
        """A random UUID (version 4) identifying this connection in logs, as websockets' ``id``."""
        if self._id is None:
            self._id = uuid.uuid4()  # made on first use: most connections never ask
        return self._id

    @property
    def path(self) -> str:
        """The request path without the query string."""
        return "" if self.request is None else self.request.path.partition("?")[0]

    def respond(self, status: int, headers: Iterable[tuple[str, str]] | str = (), body: bytes | str = b"") -> Response:
        """A plain HTTP response for ``process_request`` to return instead of upgrading (server side).

        ``ws.respond(404, "Not found\\n")`` (a str second, as websockets' ``respond(status, text)``) is a
        text/plain body; ``ws.respond(status, headers, body)`` sets headers too.
        """
        if self._server_hs is None:
            raise InvalidState("respond() is for server connections during process_request")
        if isinstance(headers, str):
            if body:
                raise TypeError("respond(status, text) takes no body; use respond(status, headers, body)")
            return self._server_hs.reject(status, headers)
        return self._server_hs.reject(status, body, headers)

    async def recv(self) -> Data:
        """The next message (str for text, bytes for binary). Raises ConnectionClosed once closed."""
        messages = self._messages
        if messages and not self._reading_paused and not self._streaming:
            message = messages.popleft()  # the common case under load: nothing to wait for, nothing to resume
            if type(message) is not Fragment:
                if self.proto.held:  # type: ignore[union-attr]
                    self.proto.release_message(message)  # type: ignore[union-attr]
                return message  # type: ignore[return-value]
            messages.appendleft(message)
        if self._streaming:
            raise ConcurrencyError(self._streaming_busy())
        while True:
            item = await self._next_item()
            if type(item) is not Fragment:
                return item  # type: ignore[return-value]
            # Parsed as fragments for a recv_streaming() that was cancelled before its first one: assemble. Kept
            # on the connection, so a cancelled recv() loses nothing and the next one goes on.
            fragment = item
            self._assembled.append(fragment.data)
            if fragment.fin:
                parts, self._assembled = self._assembled, []
                self._fragments_off()
                return "".join(parts) if fragment.text else b"".join(parts)  # type: ignore[arg-type]

    async def recv_streaming(self) -> AsyncIterator[Data]:
        """The next message fragment by fragment, as they arrive: ``async for fragment in ws.recv_streaming()``.

        Text fragments are str (a character split between frames goes to the fragment that completes it), binary
        ones bytes; ``max_size`` bounds the whole message. A message that was complete before the call is
        yielded whole. Consume the iterator to the end: leaving it in the middle of a message (break, or
        cancelled after a fragment) makes later reads raise ConcurrencyError (a RuntimeError), as in
        websockets; cancelled before the first fragment, nothing is lost. Raises ConnectionClosed as recv()
        does.
        """
        if self._streaming or self._recv_waiter is not None:
            raise ConcurrencyError(self._streaming_busy())
        self._streaming = _ACTIVE
        started = finished = False
        try:
            while self._assembled:  # what a cancelled recv() took of this message: its first fragments
                started = True
                yield self._assembled.pop(0)
            if not self._messages and not started:
                self._fragments_on()
            while True:
                item = await self._next_item()
                if type(item) is not Fragment:
                    finished = True
                    yield item  # type: ignore[misc]
                    return
                fragment = item
                started = True
                finished = fragment.fin
                yield fragment.data
                if finished:
                    return
        finally:
            self._streaming = _ABANDONED if started and not finished else _IDLE
            self._fragments_off()

    def _streaming_busy(self) -> str:
        if self._streaming == _ABANDONED:
            return (
                "recv_streaming() was left in the middle of a message, whose rest cannot be told from the next "
                "message: close the connection"
            )
        if self._streaming:
            return "recv_streaming() is reading a message; finish its iterator before recv()"
        return "another coroutine is already waiting in recv() or recv_streaming()"

    async def _next_item(self) -> Data | Fragment:
        """Wait for the next queued message or fragment and take it (resuming reading below max_queue)."""
        messages = self._messages
        while not messages:
            if self.proto is not None and self.proto.pending_failure is not None:
                self._fail_pending()
            if self._recv_waiter is not None:
                raise ConcurrencyError("another coroutine is already waiting in recv()")
            if self.proto is None or self.proto.state is _CLOSED or self.lost.done():
                raise self._closed_exception()
            if self.proto.close_rcvd is not None or self.proto.failure is not None:
                # Nothing more will arrive; wait for the TCP close to report the final codes.
                await asyncio.shield(self.lost)
                continue
            waiter = self.loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None
            messages = self._messages  # the first message replaces _NO_MESSAGES with a deque
        message = messages.popleft()
        if self.proto is not None and self.proto.held:
            self.proto.release_message(message)  # the application has it now: off the memory budget
        if self._reading_paused and len(messages) <= self._resume_threshold():
            self._reading_paused = False
            if (
                self.transport is not None
                and not self.transport.is_closing()
                and not self._read_paused_for_writes
                and not self._read_paused_for_turn
            ):
                self.transport.resume_reading()
        return message

    def _fragments_on(self) -> None:
        """Make the parser emit a Fragment per data frame, for recv_streaming()."""
        proto = self.proto
        if proto is None or proto.stream_fragments:
            return
        proto.stream_fragments = True
        proto._small_ok = False  # the compiled fast path assembles whole messages: off while streaming
        if proto._msg_opcode:
            # A fragmented message is half received: what the parser assembled so far is its first fragment.
            parts, proto._msg_parts = proto._msg_parts, []
            text = proto._msg_opcode == 0x1
            if parts:
                data = "".join(parts) if text else b"".join(parts)  # type: ignore[arg-type]
                self._queue().append(Fragment(data, False, text))

    def _fragments_off(self) -> None:
        """Back to whole messages once no recv_streaming() wants fragments, none are queued and the parser is
        between messages (mid-message it has handed out the first fragments: the rest must come as fragments)."""
        proto = self.proto
        if proto is None or not proto.stream_fragments or self._streaming == _ACTIVE or proto._msg_opcode:
            return
        proto.stream_fragments = False
        proto._small_ok = proto.max_size is None or proto.max_size >= 65535

    def __aiter__(self) -> AsyncIterator[Data]:
        return self

    async def __anext__(self) -> Data:
        """``async for message in ws``: the next message; the loop ends when the peer closed normally."""
        messages = self._messages
        while True:
            if messages and not self._reading_paused and not self._streaming:
                message = messages.popleft()  # same fast path as recv(), one coroutine call fewer per message
                if type(message) is not Fragment:
                    if self.proto.held:  # type: ignore[union-attr]
                        self.proto.release_message(message)  # type: ignore[union-attr]
                    return message  # type: ignore[return-value]
                messages.appendleft(message)
                break
            # Nothing queued on an open connection: wait for the next message right here. recv() ->
            # _next_item() waits the same way two coroutines deeper, and every level is entered and resumed
            # once per message. Anything else (a failure, a close, another reader, streaming, a paused read
            # to resume) takes recv(), which does all of it.
            proto = self.proto
            if (
                messages
                or self._streaming
                or self._assembled
                or self._recv_waiter is not None
                or proto is None
                or proto.pending_failure is not None
                or proto.close_rcvd is not None
                or proto.failure is not None
                or proto.state is _CLOSED
                or self.lost.done()
            ):
                break
            # loop.create_future(), without its Python frame: asyncio's Future is what it returns (asyncio's
            # loops and uvloop alike).
            waiter: asyncio.Future[None] = _Future(loop=self.loop)
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None
            messages = self._messages  # the first message replaces _NO_MESSAGES with a deque
        return await self._anext_recv()

    async def _anext_recv(self) -> Data:
        """The rest of ``__anext__()`` for everything but its common cases: ``recv()``, and the loop's end at a
        normal close (the compiled ``__anext__`` hands over to it in the same cases)."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def dispatch(self, callback: Callable[[Data], object]) -> None:
        """Hand every message to ``callback(message)`` as it arrives, until the connection closes.

        The callback-level way to read: no coroutine is resumed per message (``async for`` resumes the handler,
        and asyncio's task machinery with it, once per message), so a handler that answers from the callback
        (with :meth:`send_nowait`) runs about a fifth fewer instructions per small message. ``callback`` runs inside the
        loop's receive path: it must not block; messages already queued go first, in order. It returns (None)
        when the connection closes normally and raises ``ConnectionClosedError`` otherwise, like ``async for``;
        an exception raised by ``callback`` stops the dispatch (later messages stay queued) and is raised here.
        While it runs, ``recv()`` and ``async for`` raise ``ConcurrencyError``.
        """
        if self._recv_waiter is not None:
            raise ConcurrencyError("another coroutine is already waiting in recv() or dispatch()")
        if self._streaming or self._assembled or any(type(m) is Fragment for m in self._messages):
            raise ConcurrencyError("a message is being read with recv_streaming(); finish it before dispatch()")
        dispatcher = _Dispatch(self, callback, self.loop.create_future())
        # The wake-up of a waiting recv(), which every path of the receive side calls once messages are queued (the
        # compiled ViewSink included), delivers them instead: dispatcher.set_result() is _deliver().
        self._recv_waiter = dispatcher
        try:
            self._deliver(dispatcher)
            proto = self.proto
            if proto is not None and proto.pending_failure is not None and not self._messages:
                # What arrived before a protocol error was waiting for the application: delivered now, so the
                # connection fails now, as recv() on the empty queue would. (Later failures follow the messages
                # delivered on the same wake-up: the receive side fails them itself.)
                self._fail_pending()
            if not dispatcher.finished.done() and not self.lost.done():
                if self._reading_paused and not self._messages:
                    self._reading_paused = False  # paused at max_queue before: nothing is queued any more
                    transport = self.transport
                    if (transport is not None and not transport.is_closing() and not self._read_paused_for_writes
                            and not self._read_paused_for_turn):
                        transport.resume_reading()
                await asyncio.wait((dispatcher.finished, self.lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if self._recv_waiter is dispatcher:
                self._recv_waiter = None
            if not dispatcher.finished.done():
                dispatcher.finished.cancel()
        if not dispatcher.finished.cancelled() and dispatcher.finished.exception() is not None:
            raise dispatcher.finished.exception()
        exc = self._closed_exception()
        if not isinstance(exc, ConnectionClosedOK):
            raise exc

    def _deliver(self, dispatcher: _PyDispatch) -> None:
        """Hand the queued messages to a dispatch() callback (the pure twin of the compiled Dispatch's set_result)."""
        messages = self._messages
        proto = self.proto
        callback = dispatcher.callback
        while messages and self._recv_waiter is dispatcher:
            message = messages.popleft()
            if proto is not None and proto.held:
                proto.release_message(message)  # the application has it now: off the memory budget
            try:
                callback(message)  # type: ignore[arg-type]  # (no Fragment is queued while it runs)
            except Exception as exc:  # noqa: BLE001  (handed to dispatch(), which raises it)
                self._recv_waiter = None
                if not dispatcher.finished.done():
                    dispatcher.finished.set_exception(exc)
                return

    def send_nowait(self, message: Data | bytearray | memoryview, text: bool | None = None) -> None:
        """Send a whole message now, without waiting while the write buffer is above ``write_limit_high``.

        For code that is not a coroutine, such as a :meth:`dispatch` callback. The message is queued in full
        whatever the buffer holds (nothing is dropped); a sender that can outrun its peer should check
        :attr:`write_paused` and ``await`` :meth:`drain`. ``text`` as in :meth:`send`; fragments (iterables) need
        :meth:`send`. Raises ``ConnectionClosed`` once closed.
        """
        proto = self.proto
        if proto is not None and text is None and not self._send_lock._locked:  # type: ignore[attr-defined]
            frame: bytes | None
            # Fast paths: a whole message on a connection whose frames go out raw (a server's, uncompressed) without
            # the generic dispatch and the data_to_send() list.
            if (
                type(message) is bytes
                and proto._raw_send
                and proto.state is _OPEN
                and not proto._send_opcode
                and not proto._out
            ):
                n = len(message)
                if n < 126:
                    # proto.frame_message(message), its most common case inline: one Python call fewer per message.
                    frame = _BINARY_HEADERS[n] + message
                    proto.messages_out += 1
                elif n >= _JOIN_LIMIT and self._write_if_open is not None:
                    # A large one: the header and the payload as two buffers, the payload uncopied, as
                    # send_binary() and _flush() would write them, without their dozen Python calls.
                    header = serialize_header(_BINARY, n)
                    proto.messages_out += 1
                    self._write_if_open(header, message)  # the two, in order (TLSProtocol._write_pair_if_open)
                    self._written += len(header) + n
                    return
                else:
                    frame = proto.frame_message(message)
            else:
                frame = proto.frame_message(message)  # None: the general path below
            if frame is not None:
                write = self._write_if_open
                if write is not None:
                    # Dropped if the TLS transport is closing (counted anyway: the close is reported soon).
                    write(frame)
                    self._written += len(frame)
                else:
                    transport = self.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(frame)
                        self._written += len(frame)
                return
        if self._send_lock.locked():
            raise ConcurrencyError("a fragmented message is being sent; send_nowait() would interleave with it")
        if not isinstance(message, str | bytes | bytearray | memoryview):
            raise TypeError(f"send_nowait() sends str or bytes-like messages, not {type(message).__name__}: "
                            "use send() for fragments")
        proto = self._open_proto()
        try:
            _frame_whole(proto, message, text)
        except InvalidState:
            raise self._closed_exception() from None
        self._flush()

    @property
    def write_paused(self) -> bool:
        """Whether the write buffer is above ``write_limit_high`` (``await drain()`` waits until it is not)."""
        return self._write_paused

    async def drain(self) -> None:
        """Wait until the write buffer is below ``write_limit_low`` again (at once if it is not above the high
        mark): the wait ``send()`` does, for messages sent with :meth:`send_nowait`."""
        if self._write_paused:
            await self._drain()

    async def send(
        self,
        message: Data | bytearray | memoryview | Iterable[Data] | AsyncIterable[Data],
        text: bool | None = None,
    ) -> None:
        """Send a message: str (text), bytes-like (binary), or an (async) iterable of fragments.

        ``text``, as in websockets, forces the frame type: True sends bytes (which must be UTF-8, e.g. what a
        JSON library produced) as a text message without decoding them, False sends a str as a binary message
        (UTF-8). Waits while the transport's write buffer is above ``write_limit_high``.
        """
        # `text` is not keyword-only as in websockets (which `send(m, text=True)` does not notice): on CPython
        # 3.11 a keyword-only parameter takes the call off its specialized path, +270 instructions per send
        # under callgrind against +72 for this one.
        # _send_lock._locked is what Lock.locked() returns (asyncio's pure-Python Lock, 3.11-3.13); read directly,
        # it saves a method call per message.
        if (
            text is None
            and (type(message) is bytes or type(message) is str)
            and self.proto is not None
            and not self._send_lock._locked  # type: ignore[attr-defined]
        ):
            # A whole message: send_nowait() (compiled, _speedups.SendNowait: no Python frame), then the wait.
            self.send_nowait(message)
            if self._write_paused:
                await self._drain()
            return
        if self._send_lock.locked():
            async with self._send_lock:  # an async fragmented message is being sent: wait for its end
                await self._send(message, text)
        else:
            await self._send(message, text)

    async def _send(self, message: Any, text: bool | None = None) -> None:
        proto = self._open_proto()
        try:
            if isinstance(message, str | bytes | bytearray | memoryview):
                _frame_whole(proto, message, text)
            elif isinstance(message, dict):
                raise TypeError("cannot send a dict; encode it (e.g. json.dumps) first")
            elif isinstance(message, AsyncIterable):
                async with self._send_lock:
                    await self._send_async_fragments(message, text)
                return
            elif isinstance(message, Iterable):
                if text is None:
                    proto.send_fragments(message)
                else:
                    self._send_forced_fragments(message, text)
            else:
                raise TypeError(f"cannot send {type(message).__name__}: use str, bytes or an iterable of them")
        except InvalidState:
            raise self._closed_exception() from None
        self._flush()
        if self._write_paused:
            await self._drain()

    def _send_forced_fragments(self, fragments: Iterable[Data], text: bool) -> None:
        """Fragments of one message whose type ``send(..., text=)`` chose (the fragments may be str or bytes)."""
        iterator = iter(fragments)
        try:
            current = next(iterator)
        except StopIteration:
            raise ValueError("cannot send an empty sequence of fragments") from None
        first = True
        for following in iterator:
            self._send_fragment(current, text, first, False, forced=True)
            first = False
            current = following
        self._send_fragment(current, text, first, True, forced=True)

    async def _send_async_fragments(self, fragments: AsyncIterable[Data], forced: bool | None = None) -> None:
        iterator = fragments.__aiter__()
        try:
            current = await iterator.__anext__()
        except StopAsyncIteration:
            raise ValueError("cannot send an empty sequence of fragments") from None
        text = isinstance(current, str) if forced is None else forced
        first = True
        async for following in iterator:
            self._send_fragment(current, text, first, False, forced=forced is not None)
            first = False
            current = following
            if self._write_paused:
                await self._drain()
        self._send_fragment(current, text, first, True, forced=forced is not None)
        if self._write_paused:
            await self._drain()

    def _send_fragment(self, data: Data, text: bool, first: bool, fin: bool, forced: bool = False) -> None:
        """One frame of a fragmented message; ``forced``: ``text`` was chosen by the caller, whatever ``data`` is."""
        proto = self._open_proto()
        if forced:
            if not text and isinstance(data, str):
                data = data.encode("utf-8")
        elif isinstance(data, str) is not text:
            raise TypeError("all fragments of a message must be str, or all bytes")
        try:
            if not first:
                proto.send_continuation(data, fin)
            elif text:
                proto.send_text(data, fin)
            else:
                proto.send_binary(data, fin)  # type: ignore[arg-type]
        except InvalidState:
            raise self._closed_exception() from None
        self._flush()

    async def ping(self, data: str | bytes | bytearray | memoryview | None = None) -> Awaitable[float]:
        """Send a ping; return a future that resolves to the round-trip time in seconds when its pong arrives.

        As in websockets: ``pong_waiter = await ws.ping()`` sends it, ``latency = await pong_waiter`` waits (or
        ignore the future if you do not need to). The future raises ConnectionClosed if the connection closes
        first. A pong also acknowledges every earlier ping (RFC 6455 §5.5.3 lets a peer answer only the latest).
        ``data`` (str: UTF-8, 125 bytes at most) defaults to four random bytes; a payload still waiting for its
        pong raises ConcurrencyError (a RuntimeError).
        """
        return self._send_ping(data)

    def _send_ping(self, data: str | bytes | bytearray | memoryview | None) -> asyncio.Future[float]:
        proto = self._open_proto()
        pings = self._pings
        if pings is None:
            pings = self._pings = {}
        if data is None:
            data = os.urandom(4)
            while data in pings:
                data = os.urandom(4)
        elif isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, bytearray | memoryview):
            data = bytes(data)  # a dict key, and the pong is matched by value
        elif not isinstance(data, bytes):
            raise TypeError(f"ping data must be str or bytes-like, not {type(data).__name__}")
        if data in pings:
            raise ConcurrencyError("a ping with this payload is already waiting for its pong")
        waiter: asyncio.Future[float] = self.loop.create_future()
        proto.send_ping(data)
        pings[data] = (waiter, self.loop.time())
        self._flush()
        return waiter

    async def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong (pings are answered automatically)."""
        proto = self._open_proto()
        proto.send_pong(data.encode("utf-8") if isinstance(data, str) else data)
        self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake and wait (at most ``close_timeout``) for the TCP connection to close."""
        self._start_close(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the TCP connection is closed."""
        await asyncio.shield(self.lost)

    def _start_close(self, code: int, reason: str) -> None:
        proto = self.proto
        if proto is None:
            self._close_transport()
            return
        if proto.state is _OPEN:
            if self._close_initiator is None:
                self._close_initiator = "us"
            proto.send_close(code, reason)
            self._flush()
            if proto.close_expected:
                self._close_transport()
            else:
                self._arm_abort()  # the peer must answer within close_timeout

    # -- asyncio.Protocol --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if isinstance(transport, TLSTransport):
            self._write_if_open = transport._tls.write_if_open
        self.remote_address = transport.get_extra_info("peername")
        self.local_address = transport.get_extra_info("sockname")
        transport.set_write_buffer_limits(high=self.config.write_limit_high, low=self.config.write_limit_low)
        if self._sndbuf is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # A small kernel send buffer forces short writes (used by stress tests and demos).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._sndbuf)
        if self._client_hs is not None:
            self.request = self._client_hs.request
            transport.write(self._client_hs.data_to_send())
        else:
            self._main_task = self.loop.create_task(self._run_server())

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        if proto is not None:
            if proto.receive_data(data):
                self._process()
            elif self._messages:
                self._messages_arrived()  # only messages (already in the deque): no events, nothing to send
        elif self._server_hs is not None:
            self._server_handshake_data(data)
        elif self._client_hs is not None:
            self._client_handshake_data(data)

    @property
    def received_view(self) -> Callable[[memoryview], None]:
        """data_received() for bytes lent only for the duration of the call (uringws's TLS layer lends a view of
        its plaintext buffer, and looks this up once per connection).

        With the compiled pieces, a C object (``_speedups.ViewSink``) that does the common case, whole small
        messages between messages, without a Python frame, and calls :meth:`_received_view` for everything else;
        that method is the reference it is tested against.
        """
        if _ViewSink is not None:
            sink: Callable[[memoryview], None] = _ViewSink(self, _NO_LIMIT, BUDGET_MIN)
            return sink
        return self._received_view

    def _received_view(self, view: memoryview) -> None:
        """received_view() in Python: the frame parser copies what it keeps; the handshake gets its own bytes."""
        proto = self.proto
        if proto is None:
            self.data_received(view.tobytes())
        elif proto.receive_data(view):  # data_received(), inlined: once per received chunk
            self._process()
        elif self._messages:
            # self._messages_arrived(), its common case inline: wake recv(); at max_queue, the call pauses reading.
            waiter = self._recv_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            max_queue = self._max_queue
            if max_queue is not None and len(self._messages) >= max_queue:
                self._messages_arrived()

    def eof_received(self) -> bool | None:
        if self.proto is None and self._client_hs is not None and self._handshake_result is _PENDING:
            self._client_handshake_data(b"")
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost_exc = exc
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log_close(exc)
        if self.proto is not None:
            self.proto.receive_eof()
            if self._messages is _NO_MESSAGES:
                # The parser's sink is still self._first_message: a cycle (self -> proto -> self) that only the
                # cycle collector would free. The deque's append holds no reference back.
                self._queue()
        if self._abort_handle is not None:
            self._abort_handle.cancel()
        if self._pending_failure_handle is not None:
            self._pending_failure_handle.cancel()
        if self._request_ready is not None and not self._request_ready.done():
            self._request_ready.set_exception(ConnectionError("connection closed during the opening handshake"))
            self._request_ready.exception()  # mark retrieved
        if self._handshake_result is _PENDING:
            self._settle_handshake(ConnectionError("connection closed during the opening handshake"))
            if self._handshake_done is not None:
                self._handshake_done.exception()  # mark retrieved
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)
        closed = self._closed_exception()
        if self._pings:
            for waiter, _ in self._pings.values():
                if not waiter.done():
                    waiter.set_exception(closed)
                    waiter.exception()
            self._pings.clear()
        if self._drain_waiters:
            for drain in self._drain_waiters:
                if not drain.done():
                    drain.set_result(None)
            self._drain_waiters.clear()
        if self._budget_held:
            self._release_held()
        task = self._keepalive_task
        if task is not None:
            # Dropped, not kept: the cancelled task keeps its CancelledError, whose traceback holds the frame of
            # _keepalive() and so this connection (a cycle only the cycle collector would free).
            self._keepalive_task = None
            task.cancel()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._on_lost is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        # A peer that does not read what we send (its pongs, echoes) must not make us read more of its input:
        # while our buffer for it is above the high-water mark its bytes stay in the kernel, and TCP pushes back
        # on it, instead of its pongs piling up here without bound (a ping flood that never reads).
        transport = self.transport
        proto = self.proto
        if (
            transport is not None
            and proto is not None
            and proto.state is _OPEN
            and not self._read_paused_for_writes
            and not transport.is_closing()
        ):
            self._read_paused_for_writes = True
            if not self._reading_paused and not self._read_paused_for_turn:
                transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._budget_held:
            self._release_held()
        if self._read_paused_for_writes:
            self._read_paused_for_writes = False
            transport = self.transport
            if (
                transport is not None
                and not self._reading_paused
                and not self._read_paused_for_turn
                and not transport.is_closing()
            ):
                transport.resume_reading()
        if self._drain_waiters:
            for drain in self._drain_waiters:
                if not drain.done():
                    drain.set_result(None)
            self._drain_waiters.clear()

    # -- internals ---------------------------------------------------------------------------------------

    def _log_close(self, exc: Exception | None) -> None:
        """How the connection ended, at DEBUG: close codes and reasons both ways, who closed first, failures."""
        proto = self.proto
        peer = self.remote_address
        if proto is None:
            self.logger.debug("connection with %s closed before the WebSocket opened", peer, exc_info=exc)
            return
        rcvd, sent = proto.close_rcvd, proto.close_sent
        received = "none" if rcvd is None else f"{rcvd.code} {rcvd.reason!r}"
        sent_text = "none" if sent is None else f"{sent.code} {sent.reason!r}"
        failure = proto.failure or proto.pending_failure
        if failure is not None:
            # Our side failed it (protocol error, message too big, keepalive timeout): say why, with the error.
            self.logger.debug(
                "connection with %s failed: %s (close sent: %s, received: %s)",
                peer,
                failure,
                sent_text,
                received,
                exc_info=failure,
            )
        elif rcvd is None and sent is None:
            self.logger.debug("connection with %s lost without a closing handshake (code 1006)", peer, exc_info=exc)
        else:
            self.logger.debug(
                "connection with %s closed by %s: close received: %s, sent: %s%s",
                peer,
                self._close_initiator or "the peer",
                received,
                sent_text,
                "" if exc is None else f"; TCP: {exc!r}",
            )

    def _bytes_sent(self) -> int:
        """Bytes we wrote that have left the transport's buffers (over TLS a little less: it counts ciphertext)."""
        transport = self.transport
        return self._written - (transport.get_write_buffer_size() if transport is not None else 0)

    def _bytes_received(self) -> int:
        """WebSocket bytes the peer sent us that the frame parser has taken (a large frame's payload counts as it
        arrives)."""
        proto = self.proto
        return proto.bytes_in if proto is not None else 0

    def _resume_threshold(self) -> int:
        max_queue = self.config.max_queue
        return 0 if max_queue is None else max_queue // 4

    def _open_proto(self) -> Protocol:
        proto = self.proto
        if proto is None:
            raise InvalidState("the opening handshake is not complete")
        if proto.state is not _OPEN:
            raise self._closed_exception()
        return proto

    def _closed_exception(self) -> ConnectionClosed:
        proto = self.proto
        if proto is None:
            return ConnectionClosedError(1006, "")
        rcvd, sent = proto.close_rcvd, proto.close_sent
        sent_code = None if sent is None else sent.code
        order = None if rcvd is None or sent is None else self._close_initiator == "the peer"
        ok_codes = (1000, 1001, 1005)
        if rcvd is not None and rcvd.code in ok_codes and (sent is None or sent.code in ok_codes):
            return ConnectionClosedOK(rcvd.code, rcvd.reason, sent_code, rcvd=rcvd, sent=sent, rcvd_then_sent=order)
        if rcvd is None:
            return ConnectionClosedError(1006, "", sent_code, rcvd=rcvd, sent=sent, rcvd_then_sent=order)
        return ConnectionClosedError(rcvd.code, rcvd.reason, sent_code, rcvd=rcvd, sent=sent, rcvd_then_sent=order)

    @property
    def close_exc(self) -> ConnectionClosed:
        """The exception raised by operations on this closed connection (websockets' ``close_exc``).

        Raises InvalidState while the connection is not closed yet: the close codes are only final then.
        """
        if self.state is not State.CLOSED:
            raise InvalidState(f"close_exc is known once the connection is closed; it is {self.state.name}")
        return self._closed_exception()

    def _release_held(self) -> None:
        """Give the output bytes counted by `_drain` back to the budget (writing resumed, or the connection
        ended)."""
        assert self._budget is not None
        self._budget.release(self._budget_held)
        self._budget_held = 0

    async def _drain(self) -> None:
        if self.lost.done():
            raise self._closed_exception()
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(waiter)
        budget = self._budget
        if budget is not None and not self._budget_held and self.transport is not None:
            # The output waiting to be written is memory this connection holds (a 15 MiB echo, until its last
            # byte leaves): counted on the server's budget until it drains, so that other connections' large
            # messages are refused while it is, instead of the process growing past max_memory. Measured here,
            # once send() has handed over the whole message (pause_writing() comes in the middle of a write).
            held = self.transport.get_write_buffer_size()
            if held >= BUDGET_MIN:
                budget.hold(held)
                self._budget_held = held
        await waiter
        if self.lost.done() and (self.proto is None or self.proto.close_rcvd is None):
            raise self._closed_exception()

    def _flush(self) -> None:
        proto = self.proto
        transport = self.transport
        if proto is None or transport is None:
            return
        out = proto.data_to_send()
        if out and not transport.is_closing():
            # write() per buffer, not writelines(): CPython 3.12+'s selector writelines() never calls
            # pause_writing(), which would silently disable our flow control.
            write = transport.write
            for data in out:
                write(data)
                self._written += len(data)

    def _next_turn(self) -> None:
        """A later loop turn: refill the frame budget, parse what waits, read again once nothing does."""
        proto = self.proto
        if proto is None or self.lost.done():
            return
        proto.frame_budget = TURN_FRAMES
        if proto.receive_data(b""):
            self._process()
        elif self._messages:
            self._messages_arrived()
        if proto.input_pending and self._read_paused_for_turn:
            self.loop.call_soon(self._next_turn)  # the budget ran out once more: the rest waits another turn
        elif self._read_paused_for_turn:
            self._read_paused_for_turn = False
            transport = self.transport
            if (
                transport is not None
                and not self._reading_paused
                and not self._read_paused_for_writes
                and not transport.is_closing()
            ):
                transport.resume_reading()

    def _process(self) -> None:
        proto = self.proto
        assert proto is not None
        events = proto.events_received()
        for event in events:
            if type(event) is Message:  # not used: the core hands messages to self._first_message / the deque
                self._queue().append(event.data)
            elif type(event) is Pong:
                self._on_pong(event.payload)
            elif type(event) is Close:
                if self._close_initiator is None:
                    self._close_initiator = "the peer"
                if self.side is Side.CLIENT:
                    # The server should close TCP now; if it does not, we do after close_timeout.
                    self._arm_abort()
            elif type(event) is Fragment:
                self._queue().append(event)
            elif type(event) is Ping:
                pass  # answered by the core
        if self._messages:
            self._messages_arrived()
        if proto.stream_fragments and not self._streaming:
            self._fragments_off()  # the streamed message ended in this batch: whole messages again if we can
        if proto.pending_failure is not None:
            # Let the application read (and answer) what arrived before the error; fail once it asks for
            # more (recv() on an empty queue) or after at most PENDING_FAILURE_DELAY seconds.
            if not self._messages:
                proto.fail_pending()
            elif self._pending_failure_handle is None:
                self._pending_failure_handle = self.loop.call_later(PENDING_FAILURE_DELAY, self._fail_pending)
        self._flush()
        if proto.close_expected:
            if proto.failure is not None and self._recv_waiter is not None and not self._recv_waiter.done():
                self._recv_waiter.set_result(None)
            self._close_transport()
        elif proto.close_rcvd is not None and self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)
        if proto.input_pending and not self._read_paused_for_turn:
            # The frame budget ran out: the rest waits for a later turn, and so does the peer's next input.
            self._read_paused_for_turn = True
            transport = self.transport
            if (
                transport is not None
                and not self._reading_paused
                and not self._read_paused_for_writes
                and not transport.is_closing()
            ):
                transport.pause_reading()
            self.loop.call_soon(self._next_turn)

    def _queue(self) -> collections.deque[Data | Fragment]:
        """The message queue, made on first use (an idle connection keeps the shared empty _NO_MESSAGES)."""
        messages = self._messages
        if messages is _NO_MESSAGES:
            messages = self._messages = collections.deque()
            if self.proto is not None:
                self.proto._emit = messages.append  # later messages go straight to the deque
        return messages

    def _first_message(self, message: Data) -> None:
        """The parser's message sink until a message arrives: makes the deque, then hands the parser its append
        (the parse in progress keeps calling this for the rest of its batch: one identity check each)."""
        self._queue().append(message)

    def _messages_arrived(self) -> None:
        """Wake recv(), and pause reading once ``max_queue`` messages wait unread."""
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        max_queue = self._max_queue
        if max_queue is not None and len(self._messages) >= max_queue and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            if not self._read_paused_for_writes:
                self.transport.pause_reading()

    def _fail_pending(self) -> None:
        proto = self.proto
        if self._pending_failure_handle is not None:
            self._pending_failure_handle.cancel()
            self._pending_failure_handle = None
        if proto is not None and proto.pending_failure is not None:
            proto.fail_pending()
            self._flush()
            self._close_transport()

    def _on_pong(self, payload: bytes) -> None:
        pings = self._pings
        if pings is None or payload not in pings:
            return
        now = self.loop.time()
        while pings:
            key = next(iter(pings))
            waiter, sent_at = pings.pop(key)
            if not waiter.done():
                waiter.set_result(now - sent_at)
            if key == payload:
                self.latency = now - sent_at
                break

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None or self.lost.done():
            return
        if not transport.is_closing():
            proto = self.proto
            if (
                proto is not None
                and proto.failure is not None
                and proto.close_rcvd is None
                and (transport.can_write_eof())
            ):
                # Failing while the peer may still be sending: closing now with unread bytes in the kernel
                # makes it send RST, which can destroy our close frame at the peer before it is read. Send
                # FIN instead and keep reading (and discarding) until the peer closes, or close_timeout.
                transport.write_eof()
                self._read_to_the_end(transport)
            else:
                transport.close()  # flushes what is buffered, then closes
        self._arm_abort()

    def _read_to_the_end(self, transport: Any) -> None:
        """After our FIN: drop every reason reading was paused, so the peer's remaining bytes are read (and
        discarded) until it closes, rather than left unread for a close that would reset the connection."""
        if self._reading_paused or self._read_paused_for_writes or self._read_paused_for_turn:
            self._reading_paused = self._read_paused_for_writes = self._read_paused_for_turn = False
            transport.resume_reading()

    def _arm_abort(self) -> None:
        """Abort the TCP connection if it is still open after ``close_timeout``."""
        timeout = self.config.close_timeout
        if self._abort_handle is None and timeout is not None and not self.lost.done():
            self._abort_handle = self.loop.call_later(timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and not self.lost.done():
            self.transport.abort()

    def _fail(self, code: int, reason: str) -> None:
        if self._close_initiator is None:
            self._close_initiator = "us"
        if self.proto is not None:
            self.proto.fail(code, reason)
            self._flush()
        self._close_transport()

    def _start_open(self, negotiated: Negotiated, trailing: bytes) -> None:
        self.subprotocol = negotiated.subprotocol
        self.proto = Protocol(
            self.side,
            max_size=self.config.max_size,
            deflate=negotiated.deflate,
            defer_failure=True,
            message_sink=self._first_message,
            budget=self._budget,
        )
        self.proto.frame_budget = TURN_FRAMES
        if self.config.ping_interval is not None:
            self._keepalive_task = self.loop.create_task(self._keepalive())
        self._settle_handshake(None)
        if trailing:
            self.proto.receive_data(trailing)
            self._process()

    async def _keepalive(self) -> None:
        interval = self.config.ping_interval
        timeout = self.config.ping_timeout
        assert interval is not None
        try:
            while True:
                await asyncio.sleep(interval)
                if self.proto is None or self.proto.state is not _OPEN:
                    return
                waiter = self._send_ping(None)
                if timeout is None:
                    continue
                # Our writes of this turn leave right before the loop waits: measure progress from after that.
                await asyncio.sleep(0)
                sent, received = self._bytes_sent(), self._bytes_received()
                while True:
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), timeout)
                        break
                    except TimeoutError:
                        pass
                    # No pong yet. A peer that took more of what we queued for it within this timeout is alive:
                    # its pong may wait behind our data, or unread while our full buffer pauses reading. So is a
                    # peer that sent us more: its pong may wait behind a large frame it is still sending (a
                    # control frame cannot interrupt a frame), which a slow or lossy link can make last longer
                    # than ping_timeout.
                    now_sent, now_received = self._bytes_sent(), self._bytes_received()
                    if now_sent > sent or now_received > received:
                        sent, received = now_sent, now_received
                        continue
                    self.logger.info("keepalive ping timeout after %s s; closing %s", timeout, self.remote_address)
                    self._fail(1011, "keepalive ping timeout")
                    return
        except ConnectionClosed:
            return

    # -- server side -------------------------------------------------------------------------------------

    def _server_handshake_data(self, data: bytes) -> None:
        hs = self._server_hs
        assert hs is not None
        if self._lingering:
            return  # the rest of a rejected head: read only so that closing doesn't reset the connection
        assert self._request_ready is not None
        if self._request_ready.done():
            hs.trailing_data += data  # arrived while the request is being processed
            return
        try:
            request = hs.receive_data(data)
        except InvalidHandshake as exc:
            self._write_response(hs.reject_exception(exc))
            self._request_ready.set_exception(exc)
            self._request_ready.exception()
            self._linger_close()
            return
        if request is not None:
            self._request_ready.set_result(request)

    def _linger_close(self) -> None:
        """Close after rejecting a head the peer may still be sending (431, 414, 400).

        Closing with its bytes unread makes the kernel answer with RST, and an RST can destroy our answer at the
        peer before it is read. So send FIN after the answer and read and discard until the peer closes, for at
        most ``close_timeout``, as HTTP servers' lingering close does. Over TLS (no half-close) it just closes.
        """
        transport = self.transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self._close_transport()
            return
        self._lingering = True
        transport.write_eof()
        self._read_to_the_end(transport)
        self._arm_abort()

    def _write_response(self, response: Response) -> None:
        self.response = response
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(serialize_response(response))

    async def _run_server(self) -> None:
        hs = self._server_hs
        assert hs is not None and self._request_ready is not None
        try:
            async with asyncio.timeout_at(self._open_deadline):
                request = await self._request_ready
                self.request = request
                response: Response | None = None
                negotiated: Negotiated | None = None
                if self._process_request is not None:
                    answer = self._process_request(self, request)
                    if isinstance(answer, Awaitable):
                        answer = await answer
                    if answer is not None:
                        if not isinstance(answer, Response):
                            status, headers, body = answer
                            answer = hs.reject(status, body, headers)
                        response = answer
                if response is None:
                    try:
                        response, negotiated = hs.accept(request)
                    except InvalidHandshake as exc:
                        self.logger.info("rejected WebSocket handshake from %s: %s", self.remote_address, exc.reason)
                        response = hs.reject_exception(exc)
                if self._process_response is not None:
                    self.response = response
                    replaced = self._process_response(self, request, response)
                    if isinstance(replaced, Awaitable):
                        replaced = await replaced
                    if replaced is not None:
                        if not isinstance(replaced, Response):
                            raise TypeError(f"process_response returned {type(replaced).__name__}, not a Response")
                        response = replaced
                    if response.status == 101 and negotiated is None:
                        # No accepted upgrade behind it: the peer would believe a connection is open.
                        raise ValueError("process_response returned a 101 for a request that was not upgraded")
                self._write_response(response)
                if response.status != 101 or negotiated is None:
                    self._close_transport()
                    return
                self._start_open(negotiated, hs.trailing_data)
                hs.trailing_data = b""
                # The handshake's parser (h11 state, buffers: ~1 KiB) is not needed once open; this frame lives
                # as long as the connection, so drop both references. respond() is for process_request only.
                self._server_hs = hs = None
                self._request_ready = None  # done; its request is self.request
        except TimeoutError:
            self.logger.info("opening handshake timed out for %s", self.remote_address)
            self._abort()
            return
        except (ConnectionError, InvalidHandshake) as exc:
            # The exception stays in self._request_ready: the tracebacks of it and its causes (the parser's, and
            # this frame's since it was raised here) would keep this connection for the cycle collector.
            _without_tracebacks(exc)
            return  # already answered (bad request) or gone
        except Exception:
            # process_request / process_response raised (or returned something unusable): the client gets a 500.
            self.logger.exception("error while processing the opening handshake")
            if not self.lost.done() and self.proto is None and hs is not None:
                self._write_response(hs.reject(500, "Internal Server Error\n"))
            self._close_transport()
            return
        assert self._handler is not None
        try:
            await self._handler(self)
        except ConnectionClosed:
            pass
        except Exception:
            self.logger.exception("connection handler failed")
            if self.proto is not None and self.proto.state is _OPEN:
                self._start_close(1011, "internal error")
        else:
            if self.proto is not None and self.proto.state is _OPEN:
                self._start_close(1000, "")
        await self.wait_closed()

    # -- client side -------------------------------------------------------------------------------------

    def _client_handshake_data(self, data: bytes) -> None:
        hs = self._client_hs
        assert hs is not None
        if self._handshake_result is not _PENDING:
            return
        try:
            response = hs.receive_data(data)
            if response is None:
                if data == b"":
                    raise ConnectionError("connection closed during the opening handshake")
                return
            self.response = response
            negotiated = hs.accept(response)
        except (InvalidHandshake, ConnectionError) as exc:
            self._settle_handshake(exc)
            self._close_transport()
            return
        self._start_open(negotiated, hs.trailing_data)


#: Connection.send_nowait, the Python function: the pure twin of the compiled one, which calls it for everything
#: but its common case (and which tests compare it with).
send_nowait_py = Connection.send_nowait
if _CSendNowait is not None:
    # send_nowait() in C for a bytes message written through the TLS layer's write_if_open (a dispatch callback's
    # answer, once per message), without a Python frame; a method descriptor, so the call makes no bound method.
    Connection.send_nowait = _CSendNowait(send_nowait_py, _OPEN, _JOIN_LIMIT)  # type: ignore[method-assign]

#: Connection.__anext__, the Python coroutine function: the pure twin of the compiled one (which tests compare it
#: with).
anext_py = Connection.__anext__
if _CAnext is not None:
    # `async for message in ws` without a coroutine per message: __anext__() returns a C awaitable that takes a queued
    # message, or waits on a Future as _recv_waiter and then takes it; everything else goes on in _anext_recv().
    Connection.__anext__ = _CAnext(  # type: ignore[method-assign]
        anext_py, Connection._anext_recv, Fragment, _CLOSED, asyncio.Future, _get_running_loop_or_none
    )

#: Connection.send, the Python coroutine function: the pure twin of the compiled one, which returns it (called) for
#: anything but a whole str or bytes message, and hands over to it where its common case does not hold.
send_py = Connection.send
if _CSend is not None:
    # `await ws.send(message)` without a coroutine: an awaitable that, once awaited, calls send_nowait() and waits in
    # _drain() only if writing is paused.
    Connection.send = _CSend(send_py)  # type: ignore[method-assign]
