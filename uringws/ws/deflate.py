"""permessage-deflate (RFC 7692): parameter negotiation and per-message compression with raw zlib streams.

Decompression is bounded: ``decompress`` asks zlib for at most ``max_length + 1`` bytes, so a deflate bomb
is refused (PayloadTooBig, close code 1009) after producing ``max_length`` bytes, never allocating more.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

from .config import DeflateConfig
from .exceptions import NegotiationError, PayloadTooBig, ProtocolError

__all__ = [
    "EXTENSION_NAME",
    "DeflateParams",
    "PerMessageDeflate",
    "client_accept",
    "client_offer",
    "parse_extensions",
    "serialize_extensions",
    "server_accept",
]

EXTENSION_NAME = "permessage-deflate"
_TAIL = b"\x00\x00\xff\xff"
_PARAM_NAMES = frozenset(
    ("server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits")
)

ExtensionParams = list[tuple[str, str | None]]
Extension = tuple[str, ExtensionParams]


class DeflateParams(NamedTuple):
    """The agreed parameters of permessage-deflate (None window bits = 15)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None


# -- Sec-WebSocket-Extensions header syntax (RFC 6455 §9.1) ----------------------------------------------------

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _split_quoted(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted:
        raise NegotiationError("unterminated quoted string in Sec-WebSocket-Extensions")
    parts.append("".join(current))
    return parts


def _is_token(text: str) -> bool:
    return bool(text) and all(ch in _TOKEN_CHARS for ch in text)


def parse_extensions(values: list[str]) -> list[Extension]:
    """Parse Sec-WebSocket-Extensions header values into [(name, [(param, value or None), ...]), ...]."""
    result: list[Extension] = []
    for value in values:
        for item in _split_quoted(value, ","):
            item = item.strip()
            if not item:
                continue  # RFC 7230 #rule allows empty list elements
            pieces = _split_quoted(item, ";")
            name = pieces[0].strip()
            if not _is_token(name):
                raise NegotiationError(f"invalid extension name {name!r}")
            params: ExtensionParams = []
            for piece in pieces[1:]:
                key, eq, raw = piece.partition("=")
                key = key.strip()
                if not _is_token(key):
                    raise NegotiationError(f"invalid extension parameter {piece.strip()!r}")
                param: str | None = None
                if eq:
                    raw = raw.strip()
                    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                        raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
                    if not _is_token(raw):
                        raise NegotiationError(f"invalid value for extension parameter {key!r}")
                    param = raw
                params.append((key, param))
            result.append((name, params))
    return result


def serialize_extensions(extensions: list[Extension]) -> str:
    """Build a Sec-WebSocket-Extensions header value."""
    items = []
    for name, params in extensions:
        items.append("; ".join([name] + [k if v is None else f"{k}={v}" for k, v in params]))
    return ", ".join(items)


# -- negotiation -----------------------------------------------------------------------------------------------


def _window_bits(name: str, value: str | None) -> int:
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        raise NegotiationError(f"invalid {name} value {value!r} (must be 8..15)")
    return int(value)


def _validate(params: ExtensionParams, *, is_offer: bool) -> dict[str, str | None]:
    """Check names, duplicates and value syntax; return {name: raw value}."""
    seen: dict[str, str | None] = {}
    for key, value in params:
        if key not in _PARAM_NAMES:
            raise NegotiationError(f"unknown permessage-deflate parameter {key!r}")
        if key in seen:
            raise NegotiationError(f"duplicate permessage-deflate parameter {key!r}")
        if key.endswith("context_takeover"):
            if value is not None:
                raise NegotiationError(f"{key} takes no value")
        elif key == "client_max_window_bits" and value is None:
            if not is_offer:
                raise NegotiationError("client_max_window_bits needs a value in a response")
        else:
            _window_bits(key, value)
        seen[key] = value
    return seen


def client_offer(config: DeflateConfig) -> Extension:
    """The permessage-deflate offer a client sends for ``config``."""
    params: ExtensionParams = []
    if config.server_no_context_takeover:
        params.append(("server_no_context_takeover", None))
    if config.client_no_context_takeover:
        params.append(("client_no_context_takeover", None))
    if config.server_max_window_bits is not None:
        params.append(("server_max_window_bits", str(config.server_max_window_bits)))
    # Always offer client_max_window_bits: valueless, it tells the server we can honour a limit it picks.
    cmwb = config.client_max_window_bits
    params.append(("client_max_window_bits", None if cmwb is None else str(cmwb)))
    return (EXTENSION_NAME, params)


def _accept_one(params: ExtensionParams, config: DeflateConfig) -> tuple[Extension, DeflateParams]:
    offer = _validate(params, is_offer=True)
    snct = "server_no_context_takeover" in offer or config.server_no_context_takeover
    cnct = "client_no_context_takeover" in offer or config.client_no_context_takeover
    smwb: int | None = None
    if "server_max_window_bits" in offer:
        smwb = int(offer["server_max_window_bits"])  # type: ignore[arg-type]
        if config.server_max_window_bits is not None:
            smwb = min(smwb, config.server_max_window_bits)
    elif config.server_max_window_bits is not None:
        smwb = config.server_max_window_bits
    cmwb: int | None = None
    if "client_max_window_bits" in offer:
        raw = offer["client_max_window_bits"]
        cmwb = None if raw is None else int(raw)
        if config.client_max_window_bits is not None:
            cmwb = config.client_max_window_bits if cmwb is None else min(cmwb, config.client_max_window_bits)
    # Not offered: the client may use 15 bits; we cannot ask for less, and inflating with 15 is always safe.
    response: ExtensionParams = []
    if snct:
        response.append(("server_no_context_takeover", None))
    if cnct:
        response.append(("client_no_context_takeover", None))
    if smwb is not None:
        response.append(("server_max_window_bits", str(smwb)))
    if cmwb is not None:
        response.append(("client_max_window_bits", str(cmwb)))
    return (EXTENSION_NAME, response), DeflateParams(snct, cnct, smwb, cmwb)


def server_accept(offers: list[Extension], config: DeflateConfig) -> tuple[Extension, DeflateParams] | None:
    """Pick the first acceptable permessage-deflate offer; None if there is none (no compression).

    Offers with unknown, duplicate or invalid parameters are declined (RFC 7692 §5), not fatal: a later
    offer in the same header may still be accepted.
    """
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            return _accept_one(params, config)
        except NegotiationError:
            continue
    return None


def client_accept(extensions: list[Extension], config: DeflateConfig | None) -> DeflateParams | None:
    """Validate the server's Sec-WebSocket-Extensions response against what we offered."""
    if not extensions:
        return None
    if config is None:
        raise NegotiationError("server accepted an extension that was not offered")
    if len(extensions) > 1:
        raise NegotiationError("server accepted more than one extension")
    name, params = extensions[0]
    if name != EXTENSION_NAME:
        raise NegotiationError(f"server accepted an unknown extension {name!r}")
    resp = _validate(params, is_offer=False)
    snct = "server_no_context_takeover" in resp
    if config.server_no_context_takeover and not snct:
        raise NegotiationError("server declined server_no_context_takeover")
    smwb = int(resp["server_max_window_bits"]) if "server_max_window_bits" in resp else None  # type: ignore[arg-type]
    if config.server_max_window_bits is not None and (smwb is None or smwb > config.server_max_window_bits):
        raise NegotiationError("server_max_window_bits in the response is larger than offered")
    cmwb = int(resp["client_max_window_bits"]) if "client_max_window_bits" in resp else None  # type: ignore[arg-type]
    if cmwb is not None and config.client_max_window_bits is not None and cmwb > config.client_max_window_bits:
        raise NegotiationError("client_max_window_bits in the response is larger than offered")
    if cmwb is None:
        cmwb = config.client_max_window_bits
    cnct = "client_no_context_takeover" in resp or config.client_no_context_takeover
    return DeflateParams(snct, cnct, smwb, cmwb)


# -- compression -----------------------------------------------------------------------------------------------


class PerMessageDeflate:
    """Compressor and decompressor of one connection, from one side's point of view."""

    __slots__ = (
        "_compressor",
        "_decompressor",
        "_level",
        "_local_wbits",
        "_mem_level",
        "_remote_wbits",
        "is_server",
        "local_no_context_takeover",
        "params",
        "remote_no_context_takeover",
    )

    def __init__(self, params: DeflateParams, is_server: bool, mem_level: int = 8, compress_level: int = 6) -> None:
        self.params = params
        self.is_server = is_server
        if is_server:
            local_nct, remote_nct = params.server_no_context_takeover, params.client_no_context_takeover
            local_bits, remote_bits = params.server_max_window_bits, params.client_max_window_bits
        else:
            local_nct, remote_nct = params.client_no_context_takeover, params.server_no_context_takeover
            local_bits, remote_bits = params.client_max_window_bits, params.server_max_window_bits
        self.local_no_context_takeover = local_nct
        self.remote_no_context_takeover = remote_nct
        # zlib refuses an 8-bit window for raw deflate; 9 never emits distances beyond 250, so it is safe.
        self._local_wbits = -max(local_bits or 15, 9)
        self._remote_wbits = -max(remote_bits or 15, 9)
        self._level = compress_level
        self._mem_level = mem_level
        self._compressor = self._new_compressor()
        self._decompressor = zlib.decompressobj(self._remote_wbits)

    def _new_compressor(self) -> zlib._Compress:
        return zlib.compressobj(self._level, zlib.DEFLATED, self._local_wbits, self._mem_level)

    def compress(self, data: bytes | bytearray | memoryview, fin: bool = True) -> bytes:
        """Compress one frame's payload; on the last frame of a message strip the 00 00 ff ff tail."""
        c = self._compressor
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            if out.endswith(_TAIL):
                out = out[:-4]
            if self.local_no_context_takeover:
                self._compressor = self._new_compressor()
        return out

    def compress_standalone(self, data: bytes | bytearray | memoryview) -> bytes:
        """Compress a whole message with a fresh context, leaving ours untouched.

        Valid on the wire only when our side has no context takeover; then the result is identical for
        every connection with the same settings, so a broadcast can compress once (see ``settings_key``).
        """
        c = self._new_compressor()
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        return out[:-4] if out.endswith(_TAIL) else out

    @property
    def settings_key(self) -> tuple[int, int, int]:
        """Connections with equal keys (and no context takeover) produce identical compressed messages."""
        return (self._local_wbits, self._level, self._mem_level)

    def decompress(self, data: bytes, fin: bool, max_length: int | None) -> bytes:
        """Inflate one frame's payload, producing at most ``max_length`` bytes (None: unlimited).

        Raises PayloadTooBig (1009) once the output would exceed ``max_length``, and ProtocolError (1007,
        as other stacks do) on corrupt deflate data.
        """
        d = self._decompressor
        try:
            if max_length is None:
                out = d.decompress(data)
                if fin:
                    out += d.decompress(_TAIL)
            else:
                out = d.decompress(data, max_length + 1)
                if len(out) > max_length:
                    raise PayloadTooBig(f"decompressed message exceeds the size limit of {max_length} bytes")
                if fin:
                    rest = max_length - len(out)
                    more = d.decompress(_TAIL, rest + 1)
                    if len(more) > rest:
                        raise PayloadTooBig(f"decompressed message exceeds the size limit of {max_length} bytes")
                    out += more
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}", 1007) from None
        if fin and (self.remote_no_context_takeover or d.eof):
            # A finished stream (BFINAL) cannot take more input; the peer started a new one.
            self._decompressor = zlib.decompressobj(self._remote_wbits)
        return out

    def reset_decompressor(self) -> None:
        """Drop the inflate context (after an aborted message)."""
        self._decompressor = zlib.decompressobj(self._remote_wbits)
