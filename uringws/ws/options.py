"""Turn the keyword arguments of ``serve``/``connect`` into a ``WSConfig`` (shared by server and client)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import DEFAULT_CONFIG, DeflateConfig, WSConfig

__all__ = ["WS_OPTION_NAMES", "make_config", "split_options"]

WS_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(WSConfig)) - {"compression"}


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into WSConfig fields and the rest (for create_server/create_connection)."""
    ws = {k: v for k, v in kwargs.items() if k in WS_OPTION_NAMES}
    rest = {k: v for k, v in kwargs.items() if k not in WS_OPTION_NAMES and k != "write_limit"}
    if "write_limit" in kwargs:
        # websockets-style: an int (high water; low = high // 4) or a (high, low) pair.
        limit = kwargs["write_limit"]
        high, low = (limit, limit // 4) if isinstance(limit, int) else limit
        ws["write_limit_high"], ws["write_limit_low"] = high, low
    return ws, rest


def make_config(config: WSConfig | None, compression: Any, ws_options: dict[str, Any]) -> WSConfig:
    """``compression``: "deflate" (default settings), a DeflateConfig, None (off), or ... (keep config's)."""
    base = config or DEFAULT_CONFIG
    changes = dict(ws_options)
    if compression is not ...:
        if compression == "deflate":
            changes["compression"] = base.compression or DeflateConfig()
        elif compression is None or isinstance(compression, DeflateConfig):
            changes["compression"] = compression
        else:
            raise ValueError(f"compression must be 'deflate', a DeflateConfig or None, not {compression!r}")
    return base.with_options(**changes) if changes else base
