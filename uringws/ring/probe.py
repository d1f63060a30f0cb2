"""Can io_uring be used here, and what does this kernel support?

:func:`availability` answers the first question with a reason a person can act on (CPU architecture, sysctl,
seccomp, kernel version, locked-memory limit); :func:`probe` answers the second (opcodes from
IORING_REGISTER_PROBE, feature bits, and the fast paths gated on kernel version).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import grp
import os
import platform
import re
import resource
from dataclasses import dataclass, field
from typing import Any

from . import _sys
from .io_uring import (
    FEAT_NAMES,
    IO_URING_OP_SUPPORTED,
    IORING_REGISTER_PROBE,
    OP_NAMES,
    PROBE_OPS,
    SETUP_FLAG_NAMES,
    io_uring_params,
    io_uring_probe,
)

#: the kernel we design for (Ubuntu 22.04); older kernels get the epoll backend
MIN_KERNEL = (5, 15)

#: ``platform.machine()`` names of x86-64, the only CPU whose memory order (TSO) makes the ring's unfenced
#: head/tail accesses safe (see "Memory ordering" in uringws.ring.ring); everything else gets the epoll backend
X86_64_MACHINES = frozenset({"x86_64", "amd64"})

# Fast paths that REGISTER_PROBE cannot see (same opcode, new flag): gated on the kernel version that added them.
_VERSION_GATED = {
    "multishot_accept": (5, 19),
    "multishot_poll": (5, 13),
    "multishot_recv": (6, 0),
    "provided_buffer_ring": (5, 19),
    "incremental_buffers": (6, 12),  # IOU_PBUF_RING_INC
    "send_zc": (6, 0),
    "send_bundle": (6, 10),
    "cancel_any": (5, 19),
    "completion_batching": (6, 1),  # IORING_SETUP_DEFER_TASKRUN: EventLoop(batch_wait=...)
}


def kernel_version(release: str | None = None) -> tuple[int, int, int]:
    release = release or platform.release()
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


@dataclass(frozen=True)
class Availability:
    usable: bool
    reason: str
    kernel: str
    sysctl_io_uring_disabled: int | None = None

    def __bool__(self) -> bool:
        return self.usable


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _in_group(gid: int) -> bool:
    return os.getegid() == gid or gid in os.getgroups()


def cpu_refusal(machine: str | None = None) -> str | None:
    """Why the ring cannot run on this CPU, or None where it can (x86-64 with a 64-bit Python)."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in X86_64_MACHINES:
        return (f"the io_uring backend runs only on x86-64, not {machine or 'an unknown CPU'}: its pure-Python ring "
                "relies on x86-64's memory order and cannot issue the barriers other CPUs need; uringws runs on "
                "epoll here")
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return "the io_uring backend needs a 64-bit Python (this one is 32-bit)"
    return None


@functools.lru_cache(maxsize=1)
def availability() -> Availability:
    """Try to create a tiny ring, and explain a failure; ValueError if URINGWS_BACKEND names no backend."""
    release = platform.release()
    kv = kernel_version(release)
    disabled = _read_int("/proc/sys/kernel/io_uring_disabled")
    env = os.environ.get("URINGWS_BACKEND", "").strip().lower()
    if env not in ("", "auto", "epoll"):  # a typo would otherwise silently mean auto
        raise ValueError(f"URINGWS_BACKEND={os.environ['URINGWS_BACKEND']!r} is not a backend: set it to epoll "
                         "to force the epoll backend, or unset it (or auto) to use io_uring where usable")
    if env == "epoll":
        return Availability(False, "URINGWS_BACKEND=epoll asks for the epoll backend", release, disabled)
    if platform.system() != "Linux":
        return Availability(False, f"io_uring is Linux-only (this is {platform.system()})", release, disabled)
    cpu = cpu_refusal()
    if cpu is not None:
        return Availability(False, cpu, release, disabled)
    if kv[:2] < MIN_KERNEL:
        return Availability(False, f"kernel {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}, the oldest "
                            "uringws drives io_uring on", release, disabled)
    params = io_uring_params()
    try:
        fd = _sys.io_uring_setup(4, ctypes.addressof(params))
    except OSError as exc:
        return Availability(False, _explain_setup_error(exc.errno or 0, disabled), release, disabled)
    os.close(fd)
    return Availability(True, "io_uring_setup() works", release, disabled)


def _explain_setup_error(err: int, disabled: int | None) -> str:
    if disabled == 2:
        return "io_uring is disabled for everyone by sysctl kernel.io_uring_disabled=2"
    if disabled == 1 and err == errno.EPERM:
        gid = _read_int("/proc/sys/kernel/io_uring_group")
        if gid is None or gid < 0:
            # io_uring_group=-1 (the default): only CAP_SYS_ADMIN may create rings.
            return ("io_uring is limited to privileged processes (CAP_SYS_ADMIN) by sysctl "
                    "kernel.io_uring_disabled=1; set kernel.io_uring_group to a group this process is in")
        name = str(gid)
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            pass
        if not _in_group(gid):
            return (f"io_uring is limited to group {name} by sysctl kernel.io_uring_disabled=1 "
                    "and this process is not in it")
    if err == errno.ENOSYS:
        return ("io_uring_setup() is not implemented: a kernel built without CONFIG_IO_URING, or a seccomp "
                "filter (containers' default profiles) that blocks it")
    if err == errno.EPERM:
        return ("io_uring_setup() is not permitted: a seccomp filter or an LSM policy forbids io_uring "
                "(common in containers)")
    if err == errno.ENOMEM:
        soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        return (f"io_uring_setup() failed with ENOMEM: on kernels before 5.12 the rings count against "
                f"RLIMIT_MEMLOCK (now {soft} bytes); raise it with ulimit -l")
    return f"io_uring_setup() failed: {os.strerror(err)} (errno {err})"


@dataclass(frozen=True)
class Probe:
    kernel: tuple[int, int, int]
    ops: frozenset[int]
    features: int
    setup_flags: int
    fast_paths: dict[str, bool] = field(default_factory=dict)

    def supports(self, op: int) -> bool:
        return op in self.ops

    @property
    def op_names(self) -> list[str]:
        return [OP_NAMES.get(op, str(op)) for op in sorted(self.ops)]

    @property
    def feature_names(self) -> list[str]:
        return [name for bit, name in sorted(FEAT_NAMES.items()) if self.features & bit]

    @property
    def setup_flag_names(self) -> list[str]:
        return [name for bit, name in sorted(SETUP_FLAG_NAMES.items()) if self.setup_flags & bit]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel": ".".join(map(str, self.kernel)),
            "ops": self.op_names,
            "features": self.feature_names,
            "setup_flags": self.setup_flag_names,
            "fast_paths": dict(self.fast_paths),
        }


def probe_ring(ring: Any) -> Probe:
    """Ask a live ring which opcodes this kernel supports (IORING_REGISTER_PROBE, 5.6+)."""
    buf = io_uring_probe()
    ops: set[int] = set()
    try:
        _sys.io_uring_register(ring.fd, IORING_REGISTER_PROBE, ctypes.addressof(buf), PROBE_OPS)
        for i in range(min(buf.ops_len, PROBE_OPS)):
            if buf.ops[i].flags & IO_URING_OP_SUPPORTED:
                ops.add(buf.ops[i].op)
    except OSError:
        pass
    kv = kernel_version()
    fast = {name: kv[:2] >= need for name, need in _VERSION_GATED.items()}
    return Probe(kv, frozenset(ops), ring.features, ring.setup_flags, fast)


@functools.lru_cache(maxsize=1)
def probe() -> Probe | None:
    """Probe with a short-lived ring; None when io_uring is unusable (see :func:`availability`)."""
    if not availability():
        return None
    from .ring import Ring

    with Ring(4) as ring:
        return probe_ring(ring)
