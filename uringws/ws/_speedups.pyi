"""Types of the optional C extension built from _speedups.c (see frames.apply_mask_py,
frames.parse_messages_py and frames.FrameBufferPy, its pure twins)."""

from collections.abc import Callable

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
