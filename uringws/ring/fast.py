"""`CompiledRing`: the :class:`~uringws.ring.Ring` interface over the compiled core ``_ringc`` (when it is built).

The C type prepares SQEs, calls ``io_uring_enter`` as a raw system call and dispatches CQEs with real
acquire/release barriers; this module adds what runs once per ring (set-up with the same setup-flag fallback as
`Ring`, close with its cancel-and-reap loop; the context manager and ``__del__`` come from the mixin both rings
share). `RING_CLASS` is the class the event loop uses: `CompiledRing` when the extension imports and
``URINGWS_PURE`` is unset, else the pure `Ring`.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from .. import _compiled
from .io_uring import (
    IORING_ASYNC_CANCEL_ALL,
    IORING_ASYNC_CANCEL_ANY,
)
from .probe import cpu_refusal
from .ring import Ring, RingError, _RingLifecycle, setup_ring

__all__ = [
    "RING_CLASS",
    "RING_CLASSES",
    "CallSoon",
    "CompiledRing",
    "CoreRing",
    "RecvHook",
    "RingIndex",
    "RunOnce",
    "TransportFlush",
    "TransportWrite",
    "available",
]

log = logging.getLogger("uringws.ring")

_core: Any
_reason = ""
if _compiled.PURE:
    _core, _reason = None, "switched off by URINGWS_PURE=1"
else:
    try:
        from . import _ringc as _core
    except ImportError as exc:
        _core, _reason = None, f"not built ({exc}); reinstall with a C compiler"


def available() -> bool:
    """Whether the compiled ring core is built and switched on."""
    return _core is not None


#: ``RingIndex(buffer, offset, width)``: a u16/u32 index in memory shared with the kernel whose ``[0]`` is an
#: acquire load and ``[0] = v`` a release store (None where the compiled core is off: plain memoryview stores).
RingIndex: Any = getattr(_core, "RingIndex", None)
#: The C twin of ``EventLoop.call_soon``'s lean path, or None (pure, or an older build).
CallSoon: Any = getattr(_core, "CallSoon", None)
#: The C twin of ``EventLoop._run_once``'s lean path, or None (pure, or an older build).
RunOnce: Any = getattr(_core, "RunOnce", None)
#: The C twin of ``RingSocketTransport._on_recv``, and the compiled ring type it is made for (None, None: pure).
RecvHook: Any = getattr(_core, "RecvHook", None)
TransportWrite: Any = getattr(_core, "TransportWrite", None)
TransportFlush: Any = getattr(_core, "TransportFlush", None)
CoreRing: Any = getattr(_core, "Ring", None)


if _core is not None:

    class CompiledRing(_RingLifecycle, _core.Ring):
        """One io_uring instance with the compiled hot path; the same interface and contract as `Ring`."""

        PREFERRED_SETUP_FLAGS = Ring.PREFERRED_SETUP_FLAGS

        def __init__(
            self,
            entries: int = 256,
            *,
            cq_entries: int | None = None,
            setup_flags: int | None = None,
            on_callback_error: Callable[[BaseException, int], Any] | None = None,
        ) -> None:
            if entries < 1 or entries > 32768:
                raise ValueError("entries must be between 1 and 32768")
            refusal = cpu_refusal()
            if refusal is not None:
                raise OSError(errno.ENOTSUP, refusal)
            self.on_callback_error = on_callback_error
            fd, params = setup_ring(entries, cq_entries, setup_flags, self.PREFERRED_SETUP_FLAGS)
            self.params = params
            try:
                self._attach(fd, bytes(params))
            except BaseException:
                os.close(fd)
                raise

        # -------------------------------------------------------------------------------------------- close
        def close(self, timeout: float = 2.0) -> None:
            """Cancel everything in flight, reap every CQE, unmap and close the fd (as `Ring.close`)."""
            if self.closed:
                return
            if self._in_dispatch:
                raise RingError("Ring.close() called from a completion callback")
            try:
                if self.in_flight:
                    self._cancel_all(time.monotonic() + timeout)
            finally:
                self._mark_closed()
                left = self.in_flight
                if left:
                    log.warning("io_uring: %d operations did not complete before close; their buffers are kept", left)
                self._release()

        def _cancel_all(self, deadline: float) -> None:
            """Cancel every request and reap until none is left (or the deadline passes)."""
            self._chain = 0
            self.submit()
            ours: set[int] = set()
            answer: list[int] = []
            ours.add(
                self.cancel(
                    0,
                    lambda res, _f: answer.append(res),
                    cancel_flags=IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL,
                )
            )
            self.submit()
            done: set[int] = set(ours)
            while self.in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.wait(min(left, 0.05))
                pending = self._pending  # a copy: the C core keeps its table to itself
                # Kernels before 5.19 reject CANCEL_ANY (-EINVAL); callbacks may also have queued new requests.
                if answer and (answer[0] < 0 or len(pending) > len(ours)):
                    for ud in [u for u in pending if u not in done]:
                        done.add(ud)
                        c = self.cancel(ud, None)
                        ours.add(c)
                        done.add(c)
                    self.submit()
                ours.intersection_update(pending)

        def _callback_failed(self, exc: BaseException, ud: int) -> None:
            log.exception("io_uring completion callback failed (user_data=%d)", ud, exc_info=exc)

        def __repr__(self) -> str:
            state = "closed" if self.closed else f"fd={self.fd} sq={self.sq_entries} in_flight={self.in_flight}"
            return f"<CompiledRing {state}>"

    RING_CLASS: type = CompiledRing
    RING_CLASSES: tuple[type, ...] = (Ring, CompiledRing)
    _compiled.register("ring._ringc", True, "SQE preparation, io_uring_enter, CQE dispatch, the RECV callback in C")
else:
    RING_CLASS = Ring
    RING_CLASSES = (Ring,)
    _compiled.register("ring._ringc", False, _reason)
