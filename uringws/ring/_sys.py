"""The three io_uring system calls through ctypes, and addresses of Python buffers.

Two flavours of ``io_uring_enter``: one that keeps the GIL (submitting, or peeking without waiting, where
releasing and re-taking the GIL costs more than the call) and one that releases it (a blocking wait, so other
threads run and can wake the loop).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
from typing import Any

from .io_uring import NR_io_uring_enter, NR_io_uring_register, NR_io_uring_setup

_libc = ctypes.CDLL(None, use_errno=True)
_syscall_addr = ctypes.cast(_libc.syscall, ctypes.c_void_p).value

_c_long, _c_int, _c_uint, _c_void_p, _c_size_t = (
    ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t,
)


def _proto(*argtypes: Any, release_gil: bool) -> Any:
    flags = ctypes._FUNCFLAG_CDECL | ctypes._FUNCFLAG_USE_ERRNO  # type: ignore[attr-defined]
    if not release_gil:
        flags |= ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]

    body: dict[str, Any] = {"_restype_": _c_long, "_flags_": flags}
    if argtypes:
        body["_argtypes_"] = argtypes  # read by ctypes when the class is created, not later
    fn_type = type("_Fn", (ctypes._CFuncPtr,), body)  # type: ignore[attr-defined]
    return fn_type(_syscall_addr)


_setup = _proto(_c_long, _c_uint, _c_void_p, release_gil=False)
# io_uring_enter runs once per loop iteration, so it has no argtypes: converting seven arguments through
# argtypes' from_param costs more than the system call (~2 µs measured). Without them ctypes passes a Python int
# as a C int, whose register's upper half is not guaranteed. That is harmless for fd, to_submit, min_complete and
# flags (the kernel declares them 32-bit and truncates); the syscall number (read as a long by syscall(3)), the
# argument pointer and its size are full 64-bit values, so they are passed as ctypes objects.
_enter_nogil = _proto(release_gil=True)
_enter_gil = _proto(release_gil=False)
_NR_ENTER = _c_long(NR_io_uring_enter)
_SIZES: dict[int, Any] = {}
#: The raw callables and their fixed arguments, for `Ring`'s per-iteration enter: it calls
#: ``fn(NR_ENTER, fd, to_submit, min_complete, flags, arg, argsz)`` itself with ctypes objects it built once
#: (``arg``: None or a c_void_p, ``argsz``: a c_size_t), which saves the wrapper below (~0.3 µs a call), and
#: reads ``get_errno()`` only when the result is negative.
enter_gil = _enter_gil
enter_nogil = _enter_nogil
NR_ENTER = _NR_ENTER
SIZE_0 = _c_size_t(0)
_register = _proto(_c_long, _c_int, _c_uint, _c_void_p, _c_uint, release_gil=False)

_get_errno = get_errno = ctypes.get_errno


def io_uring_setup(entries: int, params_addr: int) -> int:
    """Create a ring; returns its fd or raises OSError with the kernel's errno."""
    fd = _setup(NR_io_uring_setup, entries, params_addr)
    if fd < 0:
        e = _get_errno()
        raise OSError(e, f"io_uring_setup: {os.strerror(e)}")
    return int(fd)


def io_uring_enter(fd: int, to_submit: int, min_complete: int, flags: int, arg: int, argsz: int,
                   *, block: bool) -> int:
    """Returns the number of SQEs consumed, or ``-errno`` (no exception: the callers handle every errno)."""
    fn = _enter_nogil if block else _enter_gil
    size = _SIZES.get(argsz)
    if size is None:
        size = _SIZES[argsz] = _c_size_t(argsz)
    ret = fn(_NR_ENTER, fd, to_submit, min_complete, flags, _c_void_p(arg) if arg else None, size)
    if ret < 0:
        return -_get_errno()
    return int(ret)


def io_uring_register(fd: int, opcode: int, arg: int, nr_args: int) -> int:
    ret = _register(NR_io_uring_register, fd, opcode, arg, nr_args)
    if ret < 0:
        e = _get_errno()
        raise OSError(e, f"io_uring_register({opcode}): {os.strerror(e)}")
    return int(ret)


# --- buffer addresses ----------------------------------------------------------------------------------------------
class Py_buffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int]
_PyObject_GetBuffer.restype = ctypes.c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [ctypes.POINTER(Py_buffer)]
_PyBuffer_Release.restype = None

PyBUF_SIMPLE = 0
PyBUF_WRITABLE = 1


def _bytes_data_offset() -> int | None:
    """Offset of a bytes object's data from its id(), checked rather than assumed."""
    probe = b"uringws-probe"
    addr = ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value
    if addr is None:
        return None
    off = addr - id(probe)
    other = b"another probe, longer than the first"
    if ctypes.string_at(id(other) + off, len(other)) != other:
        return None
    return off


BYTES_DATA_OFFSET = _bytes_data_offset()


def _getbuffer_address(view: memoryview, writable: bool) -> int:
    """The address through PyObject_GetBuffer: always right, but two foreign calls (a few µs)."""
    pb = Py_buffer()
    _PyObject_GetBuffer(view, ctypes.byref(pb), PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    addr = pb.buf
    _PyBuffer_Release(ctypes.byref(pb))
    return int(addr)


_from_address = ctypes.c_void_p.from_address


def _memoryview_buf_offset() -> int | None:
    """Offset of ``view.buf`` inside a memoryview object, found and checked rather than assumed.

    Reading it is one ctypes call instead of the two of PyObject_GetBuffer/PyBuffer_Release. Only the offset
    that equals the real address for every sample (several buffers, slices at several starts, read-only and
    writable) is accepted; otherwise None and buffer_address() keeps using PyObject_GetBuffer.
    """
    bases: list[Any] = [bytearray(range(256)), bytearray(4096), b"a read-only probe, long enough to slice"]
    samples = []
    for base in bases:
        for start in (0, 1, 7, 13):
            view = memoryview(base)[start:]
            samples.append((view, _getbuffer_address(view, False)))
    size = sys.getsizeof(samples[0][0])
    for off in range(16, size - 7, 8):  # past ob_refcnt and ob_type, inside the object
        if all(_from_address(id(view) + off).value == addr for view, addr in samples):
            return off
    return None


MEMORYVIEW_BUF_OFFSET = _memoryview_buf_offset()


def buffer_address(obj: Any, *, writable: bool = False) -> tuple[int, int, Any]:
    """Return ``(address, length, keepalive)`` of a contiguous buffer.

    The caller must hold ``keepalive`` until the kernel is done with the memory. For anything but ``bytes``
    the keepalive is a memoryview that we own, so the buffer cannot be resized (bytearray) or released
    under the kernel's feet.
    """
    if type(obj) is bytes and not writable and BYTES_DATA_OFFSET is not None:
        return id(obj) + BYTES_DATA_OFFSET, len(obj), obj
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(obj).__name__!r}") from None
    if writable and view.readonly:
        raise TypeError(f"a writable buffer is required, not a read-only {type(obj).__name__!r}")
    if not view.c_contiguous:
        raise BufferError("the buffer must be C-contiguous")
    nbytes = view.nbytes
    if nbytes == 0:
        return 0, 0, view
    if MEMORYVIEW_BUF_OFFSET is not None:
        # Our own view exports the buffer for as long as we hold it, so the address cannot go stale.
        return _from_address(id(view) + MEMORYVIEW_BUF_OFFSET).value, nbytes, view  # type: ignore[return-value]
    return _getbuffer_address(view, writable), nbytes, view


# --- socket addresses ----------------------------------------------------------------------------------------------
def sockaddr(family: int, address: Any) -> bytes:
    """Encode a Python socket address as a ``struct sockaddr`` for CONNECT."""
    if family == socket.AF_INET:
        host, port = address[0], address[1]
        return struct.pack("=H", family) + struct.pack(">H", port) + socket.inet_pton(family, host) + bytes(8)
    if family == socket.AF_INET6:
        host, port = address[0], address[1]
        flowinfo = address[2] if len(address) > 2 else 0
        scope_id = address[3] if len(address) > 3 else 0
        if "%" in host:
            host, _, scope = host.partition("%")
            scope_id = socket.if_nametoindex(scope) if not scope.isdigit() else int(scope)
        return (struct.pack("=H", family) + struct.pack(">HI", port, flowinfo)
                + socket.inet_pton(family, host) + struct.pack("=I", scope_id))
    if family == socket.AF_UNIX:
        path = os.fsencode(address) if isinstance(address, str) else bytes(address)
        if path and path[0] != 0:
            path += b"\0"
        if len(path) > 108:
            raise OSError(errno.ENAMETOOLONG, "AF_UNIX path too long")
        return struct.pack("=H", family) + path
    raise ValueError(f"unsupported address family {family!r}")
