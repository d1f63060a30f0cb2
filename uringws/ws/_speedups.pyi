"""Types of the optional C extension built from _speedups.c (see frames.apply_mask_py,
frames.parse_messages_py and frames.FrameBufferPy, its pure twins)."""

from collections.abc import Awaitable, Callable, Generator
from typing import Any

AVX2: bool  # whether masking uses the AVX2 loop (the CPU has it and URINGWS_NO_AVX2=1 is not set)

def apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes: ...
def parse_messages(
    buf: bytes | bytearray | memoryview,
    pos: int,
    masked: bool,
    sink: Callable[[str | bytes], object],
    limit: int = 65535,
) -> int: ...

class FrameBuffer:
    remaining: int
    def __init__(self, length: int, mask: bytes | bytearray | memoryview | None) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview, start: int = 0) -> int: ...
    def take(self) -> bytes: ...

class ViewSink:
    """Connection.received_view's common case in C (see uringws/ws/connection.py)."""
    def __init__(self, connection: object, no_limit: int, budget_min: int) -> None: ...
    def __call__(self, view: memoryview) -> None: ...

class Anext:
    """``Connection.__anext__``'s common cases in C (a method descriptor)."""
    def __init__(
        self,
        anext_py: Callable[[Any], Awaitable[Any]],
        recv_tail: Callable[[Any], Awaitable[Any]],
        fragment_type: type,
        closed_state: object,
        future_type: type,
        get_running_loop: Callable[[], object],
    ) -> None: ...
    def __call__(self, connection: Any) -> StepAwait: ...

class Send:
    """``Connection.send``'s common case in C (a method descriptor)."""
    def __init__(self, send_py: Callable[..., Awaitable[None]]) -> None: ...
    def __call__(self, connection: Any, message: Any, text: bool | None = None) -> Awaitable[None]: ...

class StepAwait:
    """What the compiled ``__anext__`` and ``send`` return: an awaitable with a coroutine's send, throw and close."""
    def __await__(self) -> Generator[Any, None, Any]: ...
    def send(self, value: object) -> Any: ...
    def throw(self, exc: BaseException | type[BaseException], value: object = ..., tb: object = ...) -> Any: ...
    def close(self) -> None: ...
