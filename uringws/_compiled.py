"""The registry of compiled pieces: which are in use, and why not where they are not.

Every compiled piece has a pure-Python twin that stays complete and tested.  Each piece registers itself here
when its module is imported (``register``); ``URINGWS_PURE=1`` switches every one of them off.  ``uringws
doctor`` prints the registry; ``status()`` imports the modules that hold compiled pieces first, so the answer
does not depend on what happened to be imported already.
"""

from __future__ import annotations

import importlib
import os

__all__ = ["PURE", "register", "status"]

# Read once at import: a piece is chosen when its module is imported, and switching later would mix the two.
PURE = os.environ.get("URINGWS_PURE", "") not in ("", "0")

# The modules whose import registers a compiled piece (kept here so status() is complete without the caller
# knowing them; this module imports nothing of uringws at import time, so any layer may register).
_OWNERS = ("uringws.ws.frames", "uringws.tls.engine", "uringws.ring.fast")

_registry: dict[str, tuple[bool, str]] = {}


def register(name: str, in_use: bool, reason: str = "") -> None:
    """Record whether compiled piece ``name`` is in use; ``reason`` says why not (or what it is) for doctor."""
    _registry[name] = (in_use, reason)


def status() -> dict[str, tuple[bool, str]]:
    """``{name: (in use?, reason)}`` for every compiled piece uringws has."""
    for owner in _OWNERS:
        importlib.import_module(owner)
    return dict(sorted(_registry.items()))
