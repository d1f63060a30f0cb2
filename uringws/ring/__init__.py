"""io_uring in pure Python: ctypes system calls, mmap'ed rings, a feature probe.

See :class:`Ring` for the operations; :func:`availability` tells whether (and why not) io_uring can be used.
"""

from ._sys import buffer_address, sockaddr
from .ring import Callback, Ring, RingClosedError, RingError

__all__ = ["Callback", "Ring", "RingClosedError", "RingError", "buffer_address", "sockaddr"]
