"""Types of the optional C extension built from _speedups.c (see frames.apply_mask_py and
frames.parse_messages_py, its pure twins)."""

from collections.abc import Callable

def apply_mask(data: bytes | bytearray | memoryview, mask: bytes | bytearray | memoryview) -> bytes: ...
def parse_messages(
    buf: bytes | bytearray | memoryview, pos: int, masked: bool, sink: Callable[[str | bytes], object]
) -> int: ...
