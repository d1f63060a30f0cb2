"""Every limit and default of the WebSocket layer, in one place.

The asyncio API (`uringws.server.serve`, `uringws.client.connect`) accepts each field as a keyword argument;
the sans-I/O core only reads the fields it needs. Changing a default here changes it everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DEFAULT_CONFIG", "DeflateConfig", "WSConfig"]


@dataclass(frozen=True, slots=True)
class DeflateConfig:
    """permessage-deflate (RFC 7692) preferences of one endpoint.

    ``server_max_window_bits`` / ``client_max_window_bits``: None means "no preference" (15, the maximum).
    Smaller windows cost less memory per connection (zlib uses about ``2**(wbits+2) + 2**(mem_level+9)``
    bytes per compressor) at some cost in compression ratio. 8 is accepted in negotiation but zlib cannot
    compress raw deflate with an 8-bit window, so 9 is used instead, as other stacks do; a 9-bit zlib window
    never emits distances beyond 250 bytes, so the peer's 8-bit inflater can still read it.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    #: zlib memLevel (1..9) of our compressor: 8 is zlib's default; lower is smaller and slower.
    mem_level: int = 8
    #: zlib compression level (0..9, -1 = zlib default 6).
    compress_level: int = 6

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            value = getattr(self, name)
            if value is not None and not 8 <= value <= 15:
                raise ValueError(f"{name} must be between 8 and 15, got {value!r}")
        if not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be between 1 and 9, got {self.mem_level!r}")
        if not -1 <= self.compress_level <= 9:
            raise ValueError(f"compress_level must be between -1 and 9, got {self.compress_level!r}")


@dataclass(frozen=True, slots=True)
class WSConfig:
    """Limits, timeouts and options of a WebSocket connection (server or client)."""

    #: Largest accepted message (after reassembly and decompression), bytes; None = unlimited. 1 MiB.
    max_size: int | None = 1 << 20
    #: Received messages buffered before reading from the socket is paused.
    max_queue: int | None = 16
    #: Transport write buffer high / low water marks, bytes: ``send`` waits above high until below low.
    write_limit_high: int = 64 * 1024
    write_limit_low: int = 16 * 1024
    #: Keepalive: seconds between pings; None disables keepalive pings.
    ping_interval: float | None = 20.0
    #: Keepalive: seconds to wait for the pong before closing with 1011; None waits forever. A peer that is still
    #: reading what we queued for it (more of it left our buffers within each such period) is kept while its pong
    #: waits behind that data, so a live slow reader is not cut off; so is a peer still sending us frames (its pong
    #: may wait behind a large one). One that neither reads nor sends is closed.
    ping_timeout: float | None = 20.0
    #: Seconds allowed for the opening handshake; a server counts them from accept, TLS handshake included.
    open_timeout: float | None = 10.0
    #: Seconds allowed for the closing handshake before the TCP connection is aborted.
    close_timeout: float | None = 10.0
    #: permessage-deflate settings; None turns compression off.
    compression: DeflateConfig | None = field(default_factory=DeflateConfig)
    #: Largest HTTP request/response head accepted in the opening handshake, bytes.
    max_header_bytes: int = 16 * 1024
    #: Largest number of HTTP header lines accepted in the opening handshake.
    max_header_count: int = 128

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 0:
            raise ValueError("max_size must be >= 0 or None")
        if self.max_queue is not None and self.max_queue < 1:
            raise ValueError("max_queue must be >= 1 or None")
        if not 0 <= self.write_limit_low <= self.write_limit_high:
            raise ValueError("need 0 <= write_limit_low <= write_limit_high")

    def with_options(self, **changes: Any) -> WSConfig:
        """Return a copy with some fields changed (unknown names raise TypeError)."""
        return replace(self, **changes)


DEFAULT_CONFIG = WSConfig()
