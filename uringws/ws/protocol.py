"""The WebSocket connection state machine (RFC 6455 §5-7, RFC 7692), sans-I/O.

Feed received bytes with ``receive_data``; take parsed events with ``events_received``; take bytes to write
with ``data_to_send``; when ``close_expected`` is True, close the transport. No sockets, no asyncio, no timers:
timeouts (keepalive, closing handshake) belong to the front-end.

States::

    OPEN --send_close / close frame received / fail--> CLOSING --receive_eof--> CLOSED

(the opening handshake, state CONNECTING, is done by ``handshake.py`` before this object is created).

Errors from the peer never raise out of ``receive_data``: they fail the connection (RFC 6455 §7.1.7) by
queueing a close frame with the right code (1002 protocol error, 1007 invalid UTF-8, 1009 too big) and setting
``close_expected``; the cause is kept in ``failure``. With ``defer_failure=True``, an error that follows
messages parsed in the same ``receive_data`` call is held in ``pending_failure`` (input is discarded from
then on) until the front-end calls ``fail_pending()``, so the application can answer those messages first.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

from .budget import BUDGET_MIN, MemoryBudget
from .deflate import PerMessageDeflate
from .exceptions import InvalidState, InvalidUTF8, PayloadTooBig, ProtocolError
from .frames import (
    FrameBuffer,
    FrameBufferPy,
    FrameHeader,
    apply_mask,
    configure_gather,
    parse_close,
    parse_header,
    parse_messages,
    serialize_close,
    serialize_header,
)
from .utf8 import IncrementalUTF8Decoder

__all__ = ["Close", "Event", "Fragment", "Message", "Ping", "Pong", "Protocol", "Side", "State"]


class Side(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Message(NamedTuple):
    """A complete data message: ``str`` for text, ``bytes`` for binary."""

    data: str | bytes


class Fragment(NamedTuple):
    """One received data frame, when the protocol streams fragments instead of assembling messages."""

    data: str | bytes
    fin: bool
    text: bool


class Ping(NamedTuple):
    payload: bytes


class Pong(NamedTuple):
    payload: bytes


class Close(NamedTuple):
    """The peer's close frame (1005 = it carried no status code)."""

    code: int
    reason: str


Event = Message | Fragment | Ping | Pong | Close

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
# Payloads below this are joined with their header into one bytes object; bigger ones are handed to the
# transport as a separate buffer to avoid copying them.
_JOIN_LIMIT = 4096
# A data frame of at least _GATHER_MIN bytes (one TLS record's plaintext) that is not complete in one read is
# gathered into a FrameBuffer as it arrives. Its buffer is allocated when the header arrives (max_size bounds
# it); above _GATHER_MAX (max_size=None) frames take the general path, which grows its buffer with the data.
_NO_LIMIT = (1 << 63) - 1  # parse_messages()'s limit with max_size=None: any frame (complete in the buffer)
_GATHER_MIN = 16 * 1024
_GATHER_MAX = 64 * 1024 * 1024
if configure_gather is not None:  # the compiled received_view starts such gathers itself, with the same limits
    configure_gather(FrameHeader, _GATHER_MIN, _GATHER_MAX)
_pack_BBH = struct.Struct("!BBH").pack
# Ready-made 2-byte headers of unmasked single-frame messages of < 126 bytes, indexed by length.
_BINARY_HEADERS = [bytes((0x80 | _BINARY, n)) for n in range(126)]
_TEXT_HEADERS = [bytes((0x80 | _TEXT, n)) for n in range(126)]
# The states the hot paths test, as module globals: one dict lookup, where `State.OPEN` is two and, on CPython 3.11,
# goes through EnumType.__getattr__ (about 850 instructions per read).
_OPEN = State.OPEN
_CLOSED = State.CLOSED


class Protocol:
    """One WebSocket connection after the opening handshake.

    ``max_size`` bounds each assembled (and decompressed) message; None = unlimited. ``deflate`` is the
    negotiated permessage-deflate state, or None. ``stream_fragments``: emit a ``Fragment`` per data frame
    instead of one ``Message`` per message (``max_size`` still bounds the whole message).
    ``message_sink``: called with each complete message (str or bytes, in order) instead of queueing a
    ``Message`` event; a front-end passes ``deque.append`` to skip one object and one dispatch per message.
    ``budget``: a server-wide ``MemoryBudget``; a message that would take it over its limit fails the connection
    with 1009. The front-end gives each delivered message back with ``release_message`` once the application has
    it, and ``receive_eof`` gives back all the connection holds.
    """

    # Slots for the parser's state (an instance dict of this many attributes costs about 1.5 KiB per connection);
    # __dict__ stays for subclasses and tests that add attributes.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_buf",
        "_close_transport",
        "_decoder",
        "_discard_input",
        "_emit",
        "_events",
        "_expect_masked",
        "_fed",
        "_gather",
        "_hdr",
        "_hdr_end",
        "_is_client",
        "_msg_compressed",
        "_msg_opcode",
        "_msg_parts",
        "_msg_size",
        "_msg_wire",
        "_out",
        "_raw_send",
        "_reserved",
        "_send_compressed",
        "_send_opcode",
        "_small_ok",
        "_wire_limit",
        "budget",
        "bytes_in",
        "close_rcvd",
        "close_rcvd_then_sent",
        "close_sent",
        "defer_failure",
        "deflate",
        "eof_received",
        "failure",
        "frame_budget",
        "held",
        "input_pending",
        "max_size",
        "messages_in",
        "messages_out",
        "pending_failure",
        "side",
        "state",
        "stream_fragments",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_size: int | None = 1 << 20,
        deflate: PerMessageDeflate | None = None,
        stream_fragments: bool = False,
        defer_failure: bool = False,
        message_sink: Callable[[str | bytes], None] | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.side = side
        #: The server's memory budget: messages of ``BUDGET_MIN`` bytes or more reserve their bytes in it from their
        #: first frame header until ``release_message`` (the front-end's recv()); None: nothing is counted.
        self.budget = budget
        self._reserved = 0  # bytes of budget reserved for the message being received
        #: id() of each delivered message still holding budget -> its bytes.
        self.held: dict[int, int] = {}
        self.state = State.OPEN
        self.max_size = max_size
        self.deflate = deflate
        self.stream_fragments = stream_fragments
        self.defer_failure = defer_failure
        #: With ``defer_failure``: the error that ended parsing, not yet acted on (see ``fail_pending``).
        self.pending_failure: ProtocolError | None = None
        self._is_client = side is Side.CLIENT
        # Clients receive unmasked frames, servers require masked ones.
        self._expect_masked = not self._is_client
        # Compressed frames may be slightly larger than their content; bound the wire bytes of a compressed
        # message too, so a stream of frames that inflate to nothing cannot buffer without limit.
        self._wire_limit = None if max_size is None else max_size + (max_size >> 8) + 1024
        # The receive fast path handles frames of < 64 KiB whole, so it needs a size limit of at least that.
        self._small_ok = (max_size is None or max_size >= 65535) and not stream_fragments
        # frame_message() may build frames itself: unmasked (server) and uncompressed.
        self._raw_send = not self._is_client and deflate is None
        #: Frames that receive_data() may still parse on the general (Python) path -- control frames, large or
        #: fragmented ones; runs of small whole messages on the compiled path are not counted. None: no limit. At
        #: 0 it stops at the next frame boundary, keeps the rest and sets ``input_pending``; the front-end
        #: refills it (a later turn of its event loop) and calls ``receive_data(b"")`` to go on.
        self.frame_budget: int | None = None
        #: Received bytes wait unparsed because ``frame_budget`` ran out.
        self.input_pending = False
        #: Totals for metrics (``uringws.metrics`` sums them at scrape time): whole messages delivered and
        #: sent (a fragmented one counts once, at its last frame), and frame bytes received. (The front-end
        #: counts the bytes it writes: an attribute update per message is a measurable part of frame_message.)
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0

        self._buf = bytearray()
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._emit: Callable[[str | bytes], None] = self._emit_event if message_sink is None else message_sink

        # Frame being received: its header, and where its payload starts in _buf.
        self._hdr: FrameHeader | None = None
        self._hdr_end = 0
        self._fed = 0  # bytes of the current (uncompressed text) frame already validated as UTF-8
        self._gather: FrameBufferPy | None = None  # the payload of a large frame _hdr, gathered as it arrives

        # Message being received.
        self._msg_opcode = 0  # 0: no message in progress
        self._msg_compressed = False
        self._msg_size = 0
        self._msg_wire = 0
        self._msg_parts: list[bytes] | list[str] = []
        self._decoder = IncrementalUTF8Decoder()

        # Message being sent in fragments.
        self._send_opcode = 0
        self._send_compressed = False

        self._discard_input = False
        self._close_transport = False
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.failure: ProtocolError | None = None
        self.eof_received = False

    # -- results -----------------------------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """Return and forget the events parsed so far."""
        events = self._events
        self._events = []
        return events

    def data_to_send(self) -> list[bytes]:
        """Return and forget the buffers to write to the transport, in order."""
        out = self._out
        self._out = []
        return out

    @property
    def close_expected(self) -> bool:
        """True when the front-end should close the transport (after writing ``data_to_send``).

        Set after a fatal error, and on the server once the closing handshake is complete: the server closes
        the TCP connection first (RFC 6455 §7.1.1). A client waits for the server to close, with a timeout.
        """
        return self._close_transport

    @property
    def close_code(self) -> int:
        """The code from the peer's close frame; 1006 if none was received."""
        return 1006 if self.close_rcvd is None else self.close_rcvd.code

    @property
    def close_reason(self) -> str:
        return "" if self.close_rcvd is None else self.close_rcvd.reason

    @property
    def closing_handshake_done(self) -> bool:
        return self.close_rcvd is not None and self.close_sent is not None

    # -- receiving ---------------------------------------------------------------------------------------

    def _emit_event(self, data: str | bytes) -> None:
        self._events.append(Message(data))

    def receive_data(self, data: bytes | bytearray | memoryview) -> bool:
        """Parse received bytes; never raises for bad input (the connection is failed instead).

        Returns whether the front-end has anything to act on besides messages given to ``message_sink``:
        events, bytes in ``data_to_send``, a deferred failure, ``close_expected``, or ``input_pending``. False
        means that at most new messages were delivered, so a front-end may skip its event loop.
        """
        if self._discard_input:
            self.input_pending = False
            return True  # closing or failed: rare, let the front-end look at everything
        if not data and not self.input_pending:
            return bool(self._events or self._out)
        buf: bytes | bytearray | memoryview
        carried = 0  # bytes of an earlier call already counted in bytes_in
        if self._buf:
            buf = acc = self._buf
            carried = len(acc)
            acc += data
        elif type(data) is memoryview and (data.itemsize != 1 or data.ndim != 1 or not data.c_contiguous):
            buf = data.tobytes()  # count and parse in bytes, contiguous
        else:
            # Common case: nothing left over, parse straight from the received bytes without copying -- also
            # from a view lent only for this call (uringws's TLS layer): nothing below keeps a reference to it.
            buf = data
        n = len(buf)
        pos = 0
        masked = self._expect_masked
        small_ok = self._small_ok
        # The fast path takes whole frames up to the message size limit (the general path refuses longer ones);
        # with a memory budget, only messages below BUDGET_MIN, which the budget does not count.
        run_limit = _NO_LIMIT if self.max_size is None else self.max_size
        if self.budget is not None and run_limit >= BUDGET_MIN:
            run_limit = BUDGET_MIN - 1
        emit = self._emit
        delivered = 0  # messages completed in this call (they may have gone to the sink, not to _events)
        budget = self.frame_budget
        stopped = False  # by the frame budget, with bytes left
        try:
            while True:
                hdr = self._hdr
                if hdr is None:
                    if budget is not None and budget <= 0:
                        stopped = pos < n
                        break
                    # Fast path: a run of whole unfragmented, uncompressed text/binary messages, each complete in
                    # buf, in one call (compiled when built). It stops at anything else; the general path takes that.
                    if small_ok and not self._msg_opcode:
                        end = parse_messages(buf, pos, masked, emit, run_limit)
                        if end != pos:
                            pos = end
                            delivered += 1
                            if pos == n:
                                break
                    hdr = parse_header(
                        buf,
                        pos,
                        masked=self._expect_masked,
                        allow_rsv1=self.deflate is not None,
                        max_length=self._frame_limit(),
                    )
                    if hdr is None:
                        break
                    if budget is not None:
                        budget -= 1
                    self._check_sequence(hdr)
                    if self.budget is not None and hdr.opcode < 8:
                        # The payload buffer is allocated now (FrameBuffer) or grows from here (_buf).
                        self._reserve_up_to(hdr.length if self.stream_fragments else self._msg_size + hdr.length)
                    start = hdr.header_end
                    self._hdr = hdr
                    self._hdr_end = start
                    length = hdr.length
                    if start + length > n and _GATHER_MIN <= length <= _GATHER_MAX and not self._validates_text(hdr):
                        # A large frame that continues in later reads: its payload is gathered (and unmasked)
                        # as it arrives, never appended to _buf, copied out and unmasked as a whole.
                        gather = self._gather = FrameBuffer(length, hdr.mask)
                        gather.feed(buf, start)
                        pos = n
                        break
                elif (pending := self._gather) is not None:
                    pos += pending.feed(buf, pos)
                    if pending.remaining:
                        break
                    self._gather = None
                    self._hdr = None
                    if self._on_data(hdr, pending.take()):
                        delivered += 1
                    if self._discard_input or pos == n:
                        break
                    continue
                else:
                    start = self._hdr_end
                end = start + hdr.length
                if n < end:
                    # Incomplete frame: validate text as it arrives, so invalid UTF-8 fails fast.
                    if self._validates_text(hdr):
                        self._feed_partial_text(hdr, buf, start, n)
                    break
                self._hdr = None
                pos = end
                fed = self._fed
                if fed:
                    self._fed = 0
                    payload = bytes(buf[start + fed : end])
                    if hdr.mask is not None:
                        k = fed & 3
                        payload = apply_mask(payload, hdr.mask[k:] + hdr.mask[:k])
                    if self._on_text_rest(hdr, payload):
                        delivered += 1
                else:
                    if hdr.length < 65536:
                        payload = bytes(buf[start:end])
                        if hdr.mask is not None:
                            payload = apply_mask(payload, hdr.mask)
                    else:
                        # Large payload: one copy out of the buffer instead of slice + bytes().
                        with memoryview(buf) as view:
                            if hdr.mask is not None:
                                payload = apply_mask(view[start:end], hdr.mask)
                            else:
                                payload = bytes(view[start:end])
                    if hdr.opcode >= 8:
                        self._on_control(hdr.opcode, payload)
                    elif self._on_data(hdr, payload):
                        delivered += 1
                if self._discard_input:
                    break
        except ProtocolError as exc:
            # Anything delivered in this call, or events not yet taken: the application sees them first.
            if self.defer_failure and (delivered or self._events) and self.state is _OPEN:
                # Messages that arrived before the error are delivered first; the front-end lets the
                # application answer them, then calls fail_pending() (Autobahn 3.2, 4.x, 5.15 "strict").
                self.pending_failure = exc
                self._discard_input = True
            else:
                self.fail(exc.code, exc.reason, exc)
        if budget is not None:
            self.frame_budget = budget
        self.input_pending = stopped
        self.messages_in += delivered
        self.bytes_in += n - carried
        if self._discard_input:
            self._buf = bytearray()
            self._hdr = None
            self._gather = None
            if self._reserved:
                self._release_reserved()  # the message being received is dropped
            return True  # a close frame, a failure or a deferred failure: the front-end must look
        if buf is self._buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            # One copy of the rest (slicing bytes would copy it once more); a lent view must not be kept.
            self._buf = bytearray(buf[pos:] if type(buf) is memoryview else memoryview(buf)[pos:])
        if pos and self._hdr is not None:
            self._hdr_end -= pos
        return bool(self._events or self._out or stopped)

    def receive_eof(self) -> None:
        """The transport was closed or the peer sent EOF: the connection is CLOSED."""
        self.eof_received = True
        self.state = State.CLOSED
        self._discard_input = True
        self._close_transport = True
        budget = self.budget
        if budget is not None:  # the connection ended: give back everything it holds, queued messages included
            budget.release(self._reserved + sum(self.held.values()))
            self._reserved = 0
            self.held.clear()

    # -- memory budget -----------------------------------------------------------------------------------

    def _reserve_up_to(self, total: int) -> None:
        """Make the budget reservation of the message being received ``total`` bytes (never less than it is)."""
        extra = total - self._reserved
        if extra > 0 and total >= BUDGET_MIN:
            budget = self.budget
            assert budget is not None
            if not budget.reserve(extra):
                free = max(0, (budget.limit or 0) - budget.used)
                raise PayloadTooBig(
                    f"server memory budget exhausted: message needs {total} bytes, {free} of {budget.limit} free"
                )
            self._reserved = total

    def _release_reserved(self) -> None:
        assert self.budget is not None
        self.budget.release(self._reserved)
        self._reserved = 0

    def _hold(self, message: str | bytes, size: int) -> None:
        """A message was delivered: it keeps ``size`` bytes of its reservation until ``release_message``."""
        if size < BUDGET_MIN:  # also spares the id() of a cached empty or 1-byte object from standing for two
            self._release_reserved()
            return
        assert self.budget is not None
        self.budget.release(self._reserved - size)
        self._reserved = 0
        key = id(message)  # unique while the message is alive; the front-end's queue keeps it so
        self.held[key] = self.held.get(key, 0) + size

    def release_message(self, message: object) -> None:
        """The application took ``message``: give back the budget it held (none if it held none)."""
        n = self.held.pop(id(message), 0)
        if n:
            assert self.budget is not None
            self.budget.release(n)

    def _frame_limit(self) -> int | None:
        if self.max_size is None:
            return None
        in_message = self._msg_opcode != 0
        if self.deflate is not None:
            # RSV1 is not known yet; the exact check for uncompressed frames follows in _check_sequence.
            assert self._wire_limit is not None
            return self._wire_limit - self._msg_wire if in_message else self._wire_limit
        return self.max_size - self._msg_size if in_message else self.max_size

    def _msg_compressed_for(self, hdr: FrameHeader) -> bool:
        return hdr.rsv1 if hdr.opcode != _CONT else self._msg_compressed

    def _validates_text(self, hdr: FrameHeader) -> bool:
        """Whether an incomplete frame's payload is checked as UTF-8 while it arrives (uncompressed text)."""
        return (hdr.opcode == _TEXT or (hdr.opcode == _CONT and self._msg_opcode == _TEXT)) and not (
            self._msg_compressed_for(hdr)
        )

    def _check_sequence(self, hdr: FrameHeader) -> None:
        opcode = hdr.opcode
        if opcode >= 8:
            return
        if opcode == _CONT:
            if not self._msg_opcode:
                raise ProtocolError("continuation frame without a message in progress")
            if hdr.rsv1:
                raise ProtocolError("RSV1 set on a continuation frame")
            compressed = self._msg_compressed
        else:
            if self._msg_opcode:
                raise ProtocolError("new data frame while a fragmented message is in progress")
            compressed = hdr.rsv1
            self._msg_size = 0
            self._msg_wire = 0
        if self.max_size is not None and not compressed and self._msg_size + hdr.length > self.max_size:
            raise PayloadTooBig(
                f"message of at least {self._msg_size + hdr.length} bytes exceeds the size limit of "
                f"{self.max_size} bytes"
            )

    def _start_message(self, hdr: FrameHeader) -> None:
        self._msg_opcode = hdr.opcode
        self._msg_compressed = hdr.rsv1
        self._msg_size = 0
        self._msg_wire = 0
        self._msg_parts = []
        self._decoder.reset()

    def _feed_partial_text(
        self, hdr: FrameHeader, buf: bytes | bytearray | memoryview, start: int, avail_end: int
    ) -> None:
        fed = self._fed
        chunk = bytes(buf[start + fed : avail_end])
        if not chunk:
            # Nothing of the payload yet (the header came alone): no message is started, or a frame completed by
            # the next read would go through _on_data(), which does not end a message it did not start.
            return
        if hdr.opcode == _TEXT and fed == 0 and self._msg_opcode == 0:
            self._start_message(hdr)
        if hdr.mask is not None:
            k = fed & 3
            chunk = apply_mask(chunk, hdr.mask[k:] + hdr.mask[:k])
        self._fed = fed + len(chunk)
        self._msg_size += len(chunk)
        self._msg_parts.append(self._decoder.decode(chunk, False))  # type: ignore[arg-type]

    def _on_text_rest(self, hdr: FrameHeader, rest: bytes) -> bool:
        """The last bytes of an uncompressed text frame whose beginning was already validated."""
        self._msg_size += len(rest)
        parts: list[str] = self._msg_parts  # type: ignore[assignment]
        parts.append(self._decoder.decode(rest, hdr.fin))
        self._msg_wire += hdr.length
        if self.stream_fragments:
            self._msg_parts = []
            self._events.append(Fragment("".join(parts), hdr.fin, True))
            if hdr.fin:
                self._msg_opcode = 0
            if self._reserved:
                self._release_reserved()
            return False
        if hdr.fin:
            self._msg_opcode = 0
            self._msg_parts = []
            message = "".join(parts)
            self._emit(message)
            if self._reserved:
                self._hold(message, self._msg_size)
            return True
        return False

    def _on_data(self, hdr: FrameHeader, payload: bytes) -> bool:
        """Take one data frame; True when it completed a message (given to the sink or queued)."""
        opcode = hdr.opcode
        fin = hdr.fin
        if opcode != _CONT:
            # Fast path: a whole uncompressed message in one frame.
            if fin and not hdr.rsv1 and not self.stream_fragments:
                if opcode == _TEXT:
                    try:
                        decoded = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        raise InvalidUTF8() from None
                    self._emit(decoded)
                    if self._reserved:
                        self._hold(decoded, len(payload))
                else:
                    self._emit(payload)
                    if self._reserved:
                        self._hold(payload, len(payload))
                return True
            self._start_message(hdr)
        text = self._msg_opcode == _TEXT
        self._msg_wire += len(payload)
        if self._msg_compressed:
            assert self.deflate is not None
            limit = None if self.max_size is None else self.max_size - self._msg_size
            data = self.deflate.decompress(payload, fin, limit)
            if self.budget is not None:
                # The frame's payload goes, its decompressed bytes join the message.
                self._reserve_up_to(len(data) if self.stream_fragments else self._msg_size + len(data))
        else:
            data = payload
        self._msg_size += len(data)
        if self.stream_fragments:
            item: str | bytes = self._decoder.decode(data, fin) if text else data
            self._events.append(Fragment(item, fin, text))
            if fin:
                self._msg_opcode = 0
            if self._reserved:
                self._release_reserved()  # fragments are the application's once queued
            return False
        if text:
            self._msg_parts.append(self._decoder.decode(data, fin))  # type: ignore[arg-type]
        else:
            self._msg_parts.append(data)  # type: ignore[arg-type]
        if fin:
            parts = self._msg_parts
            self._msg_parts = []
            self._msg_opcode = 0
            message = "".join(parts) if text else b"".join(parts)  # type: ignore[arg-type]
            self._emit(message)
            if self._reserved:
                self._hold(message, self._msg_size)
            return True
        return False

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            self._events.append(Ping(payload))
            if self.state is _OPEN:
                self._send_frame(_PONG, payload)
        elif opcode == _PONG:
            self._events.append(Pong(payload))
        else:
            code, reason = parse_close(payload)
            close = Close(code, reason)
            self.close_rcvd = close
            self._events.append(close)
            self._discard_input = True  # nothing may follow a close frame
            if self.close_sent is None:
                self.close_rcvd_then_sent = True
                # Echo the status code (RFC 6455 §5.5.1); 1005 means "none", so echo an empty payload.
                self._send_close(None if code == 1005 else code, "")
            else:
                self.close_rcvd_then_sent = False
            self.state = State.CLOSING
            if not self._is_client:
                self._close_transport = True

    # -- sending -----------------------------------------------------------------------------------------

    def _send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> None:
        n = len(payload)
        if self._is_client:
            mask = os.urandom(4)
            self._out.append(serialize_header(opcode, n, fin, rsv1, True) + mask + apply_mask(payload, mask))
        elif n < _JOIN_LIMIT:
            self._out.append(serialize_header(opcode, n, fin, rsv1) + payload)
        else:
            self._out.append(serialize_header(opcode, n, fin, rsv1))
            self._out.append(payload)

    def _check_open(self) -> None:
        if self.state is not _OPEN:
            raise InvalidState(f"cannot send data: connection is {self.state.name}")

    def _send_data(self, opcode: int, data: bytes, fin: bool) -> None:
        if fin:
            self.messages_out += 1
        deflate = self.deflate
        if deflate is not None:
            self._send_frame(opcode, deflate.compress(data, fin), fin, opcode != _CONT)
        else:
            self._send_frame(opcode, data, fin)

    def send_text(self, data: str | bytes, fin: bool = True) -> None:
        """Send a text message, or the first frame of one when ``fin`` is False (bytes must be UTF-8)."""
        self._check_open()
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress: finish it with send_continuation")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._send_data(_TEXT, payload, fin)
        if not fin:
            self._send_opcode = _TEXT

    def send_binary(self, data: bytes | bytearray | memoryview, fin: bool = True) -> None:
        """Send a binary message, or the first frame of one when ``fin`` is False."""
        self._check_open()
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress: finish it with send_continuation")
        self._send_data(_BINARY, bytes(data), fin)
        if not fin:
            self._send_opcode = _BINARY

    def frame_message(self, data: object) -> bytes | None:
        """One whole message (bytes: binary, str: text) as the bytes of a single frame, or None.

        A shortcut for front-ends: the caller writes the result itself instead of calling ``send_binary`` /
        ``send_text`` and ``data_to_send``. None means "take the general path": the connection is not OPEN,
        frames must be masked (client) or compressed, a fragmented message is being sent, earlier output was
        not taken yet, or ``data`` is another type or at least 4 KiB long (sent as two buffers, uncopied).
        """
        if not self._raw_send or self.state is not _OPEN or self._send_opcode or self._out:
            return None
        kind = type(data)
        if kind is bytes:
            headers = _BINARY_HEADERS
            b0 = 0x80 | _BINARY
            payload: bytes = data  # type: ignore[assignment]
        elif kind is str:
            if len(data) >= _JOIN_LIMIT:  # type: ignore[arg-type]
                return None  # at least as many bytes: don't encode twice
            headers = _TEXT_HEADERS
            b0 = 0x80 | _TEXT
            payload = data.encode("utf-8")  # type: ignore[attr-defined]
        else:
            return None
        n = len(payload)
        if n < 126:
            self.messages_out += 1
            return headers[n] + payload
        if n < _JOIN_LIMIT:
            self.messages_out += 1
            return _pack_BBH(b0, 126, n) + payload
        return None

    def send_continuation(self, data: str | bytes | bytearray | memoryview, fin: bool) -> None:
        """Send the next frame of a fragmented message."""
        self._check_open()
        if not self._send_opcode:
            raise InvalidState("no fragmented message in progress")
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._send_data(_CONT, payload, fin)
        if fin:
            self._send_opcode = 0

    def send_fragments(self, fragments: Iterable[str | bytes]) -> None:
        """Send one message as one frame per fragment; all fragments must be str, or all bytes-like."""
        iterator = iter(fragments)
        try:
            current = next(iterator)
        except StopIteration:
            raise ValueError("send_fragments needs at least one fragment") from None
        text = isinstance(current, str)
        first = True
        for following in iterator:
            if isinstance(following, str) is not text:
                raise TypeError("all fragments of a message must be str, or all bytes")
            self._send_one_fragment(current, text, first, False)
            first = False
            current = following
        self._send_one_fragment(current, text, first, True)

    def _send_one_fragment(self, data: str | bytes, text: bool, first: bool, fin: bool) -> None:
        if not first:
            self.send_continuation(data, fin)
        elif text:
            self.send_text(data, fin)
        else:
            self.send_binary(data, fin)  # type: ignore[arg-type]

    @property
    def fragmenting(self) -> bool:
        """True while a fragmented message is being sent (no other data message may start)."""
        return bool(self._send_opcode)

    def send_ping(self, payload: bytes = b"") -> None:
        """Send a ping; payloads are at most 125 bytes."""
        self._check_open()
        if len(payload) > 125:
            raise ValueError("ping payload longer than 125 bytes")
        self._send_frame(_PING, bytes(payload))

    def send_pong(self, payload: bytes = b"") -> None:
        """Send an unsolicited pong (pings are answered automatically)."""
        self._check_open()
        if len(payload) > 125:
            raise ValueError("pong payload longer than 125 bytes")
        self._send_frame(_PONG, bytes(payload))

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        """Start the closing handshake; ``code`` None sends a close frame without a status code."""
        if self.close_sent is not None or self.state is State.CLOSED:
            raise InvalidState("close frame already sent")
        if self.state is State.CLOSING and self.close_rcvd is not None:
            return  # the peer's close was already answered
        self._send_close(code, reason)
        self.state = State.CLOSING

    def _send_close(self, code: int | None, reason: str) -> None:
        payload = serialize_close(code, reason)
        self._send_frame(_CLOSE, payload)
        self.close_sent = Close(1005 if code is None else code, reason)
        self.state = State.CLOSING
        if self.close_rcvd is not None and not self._is_client:
            self._close_transport = True

    def fail_pending(self) -> None:
        """Act on a deferred failure: send its close frame and ask for the transport to be closed."""
        exc = self.pending_failure
        if exc is not None:
            self.pending_failure = None
            self.fail(exc.code, exc.reason, exc)

    def fail(self, code: int, reason: str = "", exc: ProtocolError | None = None) -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame with ``code``, then close the transport.

        1006 (abnormal closure) never goes on the wire: the transport is just closed.
        """
        if self.failure is None:
            self.failure = exc if exc is not None else ProtocolError(reason or f"connection failed ({code})", code)
        if self.state is _OPEN and self.close_sent is None and code != 1006:
            # Keep the reason within the 123 bytes a close frame allows.
            data = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
            self._send_close(code, data)
        self.state = State.CLOSING if self.state is not State.CLOSED else State.CLOSED
        self._discard_input = True
        self._close_transport = True
        # Nothing more is parsed: the message being received is dropped now, its buffers and budget with it.
        self._buf = bytearray()
        self._gather = None
        self._hdr = None
        if self._reserved:
            self._release_reserved()
