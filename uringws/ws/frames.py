"""RFC 6455 frames as plain functions: header parsing (incremental), serialization, masking, close payloads.

Nothing here keeps state. ``apply_mask`` is a plain function on purpose: a compiled twin could replace it at
import time without touching its callers.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from .. import _compiled
from .exceptions import InvalidUTF8, PayloadTooBig, ProtocolError

__all__ = [
    "CONTROL_OPCODES",
    "DATA_OPCODES",
    "MAX_CONTROL_PAYLOAD",
    "Frame",
    "FrameBuffer",
    "FrameBufferPy",
    "FrameHeader",
    "Opcode",
    "apply_mask",
    "apply_mask_py",
    "is_valid_close_code",
    "parse_close",
    "parse_frame",
    "parse_header",
    "parse_messages",
    "parse_messages_py",
    "serialize_close",
    "serialize_frame",
    "serialize_header",
]


class Opcode(enum.IntEnum):
    """Frame opcodes of RFC 6455 §5.2; 3-7 and 11-15 are reserved and rejected with 1002."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


DATA_OPCODES = frozenset((0x0, 0x1, 0x2))
CONTROL_OPCODES = frozenset((0x8, 0x9, 0xA))
_KNOWN_OPCODES = DATA_OPCODES | CONTROL_OPCODES
MAX_CONTROL_PAYLOAD = 125


class Frame(NamedTuple):
    """One frame, payload already unmasked. A NamedTuple because creating one is cheap on the hot path."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False


class FrameHeader(NamedTuple):
    """A parsed frame header: the payload starts at ``header_end`` and is ``length`` bytes long."""

    fin: bool
    rsv1: bool
    opcode: int
    mask: bytes | None
    length: int
    header_end: int


# -- masking ---------------------------------------------------------------------------------------------------

# One 256-byte translation table per mask byte value: XOR of a whole strided lane in one C call.
_XOR_TABLES: list[bytes] = [bytes(i ^ k for i in range(256)) for k in range(256)]
# Below this size one big-int XOR is faster; above it, four strided translate() calls win (measured:
# 64 B 0.6 µs vs 2.4 µs; 64 KiB 240 µs vs 125 µs on this machine).
_TRANSLATE_THRESHOLD = 4096


def apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3); masking and unmasking are the same."""
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    if type(mask) is not bytes:
        mask = bytes(mask)  # a memoryview cannot be repeated with *
    n = len(data)
    if n < _TRANSLATE_THRESHOLD:
        if n == 0:
            return b""
        key = int.from_bytes(mask * ((n >> 2) + 1), "little") & ((1 << (n << 3)) - 1)
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")
    src = data if type(data) is bytes else bytes(data)
    out = bytearray(n)
    tables = _XOR_TABLES
    out[0::4] = src[0::4].translate(tables[mask[0]])
    out[1::4] = src[1::4].translate(tables[mask[1]])
    out[2::4] = src[2::4].translate(tables[mask[2]])
    out[3::4] = src[3::4].translate(tables[mask[3]])
    return bytes(out)


# -- parsing ---------------------------------------------------------------------------------------------------


def parse_messages_py(
    buf: bytes | bytearray | memoryview,
    pos: int,
    masked: bool,
    sink: Callable[[str | bytes], object],
    limit: int = 65535,
) -> int:
    """Deliver a run of whole data messages at ``buf[pos:]`` to ``sink``; return where the run stops.

    Takes each complete frame that is a message on its own: FIN set, RSV bits clear, opcode text or binary,
    the mask bit equal to ``masked``, a length of at most ``limit`` (the caller's size limit; frames with a
    64-bit length field are taken only when ``limit`` is 64 KiB or more). ``sink`` gets the unmasked payload as
    bytes (binary) or str (text, strict UTF-8). Stops at the first frame that is anything else, longer than
    ``limit`` (a 64-bit length with its top bit set always is), incomplete, or text that is not valid UTF-8, and
    returns its position: the caller's general parser (``parse_header``) takes it from there and reports any
    error. A shortcut only; it checks nothing that the general path would not.
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    n = len(buf)
    mbit = 0x80 if masked else 0
    while n - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if (b0 != 0x82 and b0 != 0x81) or (b1 & 0x80) != mbit:
            break
        length = b1 & 0x7F
        start = pos + 2
        if length == 127 and limit >= 65536 and n - pos >= 10:
            length = _unpack_Q(buf, pos + 2)[0]
            # Above the limit (a set top bit, a protocol error, always is), or a non-minimal encoding of a
            # length of at most 127: the general path takes it (and reports any error).
            if length > limit or length <= 127:
                break
            start = pos + 10
        if length == 127:
            break
        if length == 126:
            if n - pos < 4:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            start = pos + 4
        if length > limit:
            break
        if masked:
            end = start + 4 + length
            if end > n:
                break
            payload = apply_mask(buf[start + 4 : end], buf[start : start + 4])
        else:
            end = start + length
            if end > n:
                break
            payload = bytes(buf[start:end])
        if b0 == 0x81:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                break
            sink(text)
        else:
            sink(payload)
        pos = end
    return pos


class FrameBufferPy:
    """Gathers the payload of one large frame as its bytes arrive and unmasks it once complete.

    The receive path uses it for a frame whose payload spans several reads: each read's bytes go straight
    into it, so they are not first appended to the parser's general buffer. ``feed(data, start)`` takes up
    to ``remaining`` bytes of ``data[start:]`` and returns how many; ``take()`` returns the whole payload,
    unmasked, once ``remaining`` is 0 (ValueError before, and a second time). The compiled twin
    (``_speedups.FrameBuffer``) unmasks as it copies, into the bytes object that ``take()`` returns.
    """

    __slots__ = ("_buf", "_mask", "remaining")

    def __init__(self, length: int, mask: bytes | None) -> None:
        if length < 0:
            raise ValueError("length must not be negative")
        if mask is not None and len(mask) != 4:
            raise ValueError("mask must be 4 bytes")
        self._buf: bytearray | None = bytearray()  # None once taken
        self._mask = mask
        self.remaining = length

    def feed(self, data: bytes | bytearray | memoryview, start: int = 0) -> int:
        buf = self._buf
        if buf is None:
            raise ValueError("feed() after take()")
        if not 0 <= start <= len(data):
            raise ValueError("start out of range")
        n = min(len(data) - start, self.remaining)
        with memoryview(data) as view:
            buf += view[start : start + n]
        self.remaining -= n
        return n

    def take(self) -> bytes:
        buf = self._buf
        if buf is None:
            raise ValueError("take() called twice")
        if self.remaining:
            raise ValueError(f"frame incomplete: {self.remaining} bytes missing")
        self._buf = None
        return bytes(buf) if self._mask is None else apply_mask(buf, self._mask)


# The optional C twins (uringws/ws/_speedups.c) when they were built; URINGWS_PURE=1 (or the older
# URINGWS_NO_SPEEDUPS=1) forces the pure ones.
apply_mask = apply_mask_py
parse_messages = parse_messages_py
FrameBuffer: type[FrameBufferPy] = FrameBufferPy
#: The C twin of ``Connection.received_view``'s common case (``Connection.received_view`` returns one), or None.
ViewSink: Any = None
#: The C twin of ``connection._PyDispatch`` (what ``Connection.dispatch()`` puts in place of a recv() waiter), or None.
Dispatch: Any = None
#: The C twin of ``Connection.send_nowait``'s common case (a method descriptor the class takes), or None.
SendNowait: Any = None
#: The C twin of ``Connection.__anext__``'s common cases (a method descriptor the class takes), or None.
Anext: Any = None
#: The C twin of ``Connection.send``'s common case (a method descriptor the class takes), or None.
Send: Any = None
#: ``configure_gather(FrameHeader, gather_min, gather_max)``: lets ViewSink start gathering large frames (set by
#: protocol.py, which owns those limits), or None.
configure_gather: Any = None
if _compiled.PURE:
    _compiled.register("ws._speedups", False, "switched off by URINGWS_PURE=1")
elif os.environ.get("URINGWS_NO_SPEEDUPS", "") not in ("", "0"):
    _compiled.register("ws._speedups", False, "switched off by URINGWS_NO_SPEEDUPS=1")
else:
    try:
        from . import _speedups
    except ImportError as exc:  # not built (no compiler at install time): the pure twins serve
        _compiled.register("ws._speedups", False, f"not built ({exc}); reinstall with a C compiler")
    else:
        apply_mask = _speedups.apply_mask
        # An extension built from an older _speedups.c lacks it, or its limit argument: keep the pure one then.
        parse_messages = getattr(_speedups, "parse_messages", parse_messages_py)
        try:
            parse_messages(b"", 0, True, print, 0)
        except TypeError:
            parse_messages = parse_messages_py
        FrameBuffer = getattr(_speedups, "FrameBuffer", FrameBufferPy)
        ViewSink = getattr(_speedups, "ViewSink", None)
        Dispatch = getattr(_speedups, "Dispatch", None)
        SendNowait = getattr(_speedups, "SendNowait", None)
        Anext = getattr(_speedups, "Anext", None)
        Send = getattr(_speedups, "Send", None)
        configure_gather = getattr(_speedups, "configure_gather", None)
        _loop = "AVX2" if getattr(_speedups, "AVX2", False) else "portable"
        _compiled.register(
            "ws._speedups", True,
            f"mask ({_loop} loop), frame parser, frame buffer, send and async-for steps in C",
        )

_unpack_H = struct.Struct("!H").unpack_from
_unpack_Q = struct.Struct("!Q").unpack_from


def parse_header(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    *,
    masked: bool,
    allow_rsv1: bool = False,
    max_length: int | None = None,
) -> FrameHeader | None:
    """Parse the frame header at ``buf[pos:]``; None if more bytes are needed.

    ``masked``: whether frames must be masked (True on the server side, where unmasked frames are a protocol
    error; False on the client side, where masked frames are). ``allow_rsv1``: permessage-deflate was
    negotiated. ``max_length``: payload lengths above it raise PayloadTooBig before the payload is buffered.
    Raises ProtocolError (1002) for reserved opcodes/bits, fragmented or oversized control frames, a 64-bit
    length with its top bit set, or the wrong masking. Non-minimal length encodings are accepted.
    """
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    opcode = b0 & 0x0F
    if b0 & 0x30:
        raise ProtocolError("reserved bits RSV2/RSV3 must be 0")
    rsv1 = bool(b0 & 0x40)
    if rsv1 and not allow_rsv1:
        raise ProtocolError("reserved bit RSV1 set but no extension negotiated it")
    if opcode not in _KNOWN_OPCODES:
        raise ProtocolError(f"reserved opcode {opcode:#x}")
    fin = bool(b0 & 0x80)
    if opcode >= 0x8:
        if not fin:
            raise ProtocolError("fragmented control frame")
        if rsv1:
            raise ProtocolError("RSV1 set on a control frame")
    if bool(b1 & 0x80) is not masked:
        raise ProtocolError("client frames must be masked" if masked else "server frames must not be masked")
    length = b1 & 0x7F
    end = pos + 2
    if length >= 126:
        if opcode >= 0x8:
            raise ProtocolError("control frame payload longer than 125 bytes")
        if length == 126:
            if avail < 4:
                return None
            length = _unpack_H(buf, end)[0]
            end += 2
        else:
            if avail < 10:
                return None
            length = _unpack_Q(buf, end)[0]
            if length >> 63:
                raise ProtocolError("64-bit payload length with the most significant bit set")
            end += 8
    if max_length is not None and length > max_length and opcode < 0x8:
        raise PayloadTooBig(f"frame of {length} bytes exceeds the size limit of {max_length} bytes")
    if masked:
        if len(buf) < end + 4:
            return None
        mask: bytes | None = bytes(buf[end : end + 4])
        end += 4
    else:
        mask = None
    return FrameHeader(fin, rsv1, opcode, mask, length, end)


def parse_frame(
    buf: bytes | bytearray,
    pos: int = 0,
    *,
    masked: bool,
    allow_rsv1: bool = False,
    max_length: int | None = None,
) -> tuple[Frame, int] | None:
    """Parse one complete frame at ``buf[pos:]``: (frame, position after it), or None if incomplete."""
    header = parse_header(buf, pos, masked=masked, allow_rsv1=allow_rsv1, max_length=max_length)
    if header is None:
        return None
    start = header.header_end
    end = start + header.length
    if len(buf) < end:
        return None
    payload = bytes(buf[start:end])
    if header.mask is not None:
        payload = apply_mask(payload, header.mask)
    return Frame(header.opcode, payload, header.fin, header.rsv1), end


# -- serialization ---------------------------------------------------------------------------------------------

_pack_BB = struct.Struct("!BB").pack
_pack_BBH = struct.Struct("!BBH").pack
_pack_BBQ = struct.Struct("!BBQ").pack


def serialize_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False, masked: bool = False) -> bytes:
    """The 2-10 byte header (without the mask key) of a frame, with the shortest length encoding."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    mbit = 0x80 if masked else 0
    if length < 126:
        return _pack_BB(b0, mbit | length)
    if length < 65536:
        return _pack_BBH(b0, mbit | 126, length)
    return _pack_BBQ(b0, mbit | 127, length)


def serialize_frame(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Serialize one frame; ``mask`` (4 random bytes) is given by clients and None on servers."""
    if mask is None:
        return serialize_header(opcode, len(payload), fin, rsv1) + payload
    return serialize_header(opcode, len(payload), fin, rsv1, True) + mask + apply_mask(payload, mask)


# -- close frames ----------------------------------------------------------------------------------------------


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (RFC 6455 §7.4, IANA registry)."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close frame payload into (code, reason); an empty payload means 1005 (no status)."""
    n = len(payload)
    if n == 0:
        return 1005, ""
    if n == 1:
        raise ProtocolError("close frame payload of 1 byte")
    code = _unpack_H(payload)[0]
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUTF8("invalid UTF-8 in close reason") from None
    return code, reason


def serialize_close(code: int | None, reason: str = "") -> bytes:
    """Encode a close payload; ``code`` None (or 1005) sends an empty payload and requires an empty reason."""
    if code is None or code == 1005:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)")
    data = reason.encode("utf-8")
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        raise ValueError("close reason longer than 123 bytes")
    return _pack_H(code) + data


_pack_H = struct.Struct("!H").pack
