"""Which TLS engine a connection gets: the compiled one (``uringws/tls/_engine.c``) or the stdlib's.

Placeholder until the compiled engine lands: every connection uses ``ssl.SSLObject`` over two ``MemoryBIO``.
"""

from __future__ import annotations

from .. import _compiled

if _compiled.PURE:
    _compiled.register("tls._engine", False, "switched off by URINGWS_PURE=1")
else:
    _compiled.register("tls._engine", False, "not built")


def available() -> bool:
    """Whether the compiled TLS engine can be used at all in this process."""
    return False
