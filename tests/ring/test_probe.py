"""Feature probe on this kernel, and the availability explanations (kernel refusals mocked)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from uringws.loop import events, new_event_loop
from uringws.ring import Ring, bufring
from uringws.ring import probe as probe_mod
from uringws.ring.io_uring import (
    IORING_FEAT_NODROP,
    IORING_OP_ACCEPT,
    IORING_OP_ASYNC_CANCEL,
    IORING_OP_CONNECT,
    IORING_OP_LINK_TIMEOUT,
    IORING_OP_NOP,
    IORING_OP_POLL_ADD,
    IORING_OP_RECV,
    IORING_OP_SEND,
    IORING_OP_SENDMSG,
    IORING_OP_SHUTDOWN,
    IORING_OP_TIMEOUT,
)
from uringws.ring.probe import Availability, _explain_setup_error, availability, kernel_version, probe


@pytest.fixture
def fresh_availability(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """availability() is cached per process; clear it around tests that fake the kernel."""
    monkeypatch.delenv("URINGWS_BACKEND", raising=False)
    availability.cache_clear()
    probe.cache_clear()
    yield
    availability.cache_clear()
    probe.cache_clear()


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, err: int | None, sysctl: dict[str, int | None],
                 release: str = "6.8.0-generic") -> None:
    def setup(entries: int, params_addr: int) -> int:
        if err is None:
            return os.open("/dev/null", os.O_RDONLY)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(probe_mod._sys, "io_uring_setup", setup)
    monkeypatch.setattr(probe_mod, "_read_int", lambda path: sysctl.get(os.path.basename(path)))
    monkeypatch.setattr(probe_mod.platform, "release", lambda: release)
    monkeypatch.setattr(probe_mod.platform, "system", lambda: "Linux")


def test_probe_lists_the_ops_uringws_uses() -> None:
    p = probe()
    assert p is not None
    for op in (IORING_OP_NOP, IORING_OP_SEND, IORING_OP_RECV, IORING_OP_SENDMSG, IORING_OP_ACCEPT,
               IORING_OP_CONNECT, IORING_OP_POLL_ADD, IORING_OP_TIMEOUT, IORING_OP_LINK_TIMEOUT,
               IORING_OP_ASYNC_CANCEL, IORING_OP_SHUTDOWN):
        assert p.supports(op), op
    assert "SEND" in p.op_names and "RECV" in p.op_names
    assert p.features & IORING_FEAT_NODROP and "NODROP" in p.feature_names
    d = p.as_dict()
    assert d["kernel"] == ".".join(map(str, kernel_version()))
    assert d["fast_paths"]["multishot_poll"] is (kernel_version()[:2] >= (5, 13))
    assert d["fast_paths"]["completion_batching"] is (kernel_version()[:2] >= (6, 1))
    assert "CQSIZE" in p.setup_flag_names


def test_real_availability() -> None:
    a = availability()
    assert a.usable and bool(a) and "works" in a.reason


@pytest.mark.parametrize("release,expected", [
    ("6.18.44-fc-v669", (6, 18, 44)), ("5.15.0-91-generic", (5, 15, 0)), ("6.1", (6, 1, 0)), ("garbage", (0, 0, 0)),
])
def test_kernel_version(release: str, expected: tuple[int, int, int]) -> None:
    assert kernel_version(release) == expected


@pytest.mark.needs_no_ring
@pytest.mark.parametrize("err,words", [
    (errno.EPERM, ["not permitted", "seccomp"]),
    (errno.ENOSYS, ["not implemented", "CONFIG_IO_URING", "seccomp"]),
    (errno.ENOMEM, ["ENOMEM", "RLIMIT_MEMLOCK", "ulimit -l"]),
    (errno.EINVAL, ["failed", f"errno {errno.EINVAL}"]),
])
def test_availability_explains_setup_errors(monkeypatch: pytest.MonkeyPatch, fresh_availability: None,
                                            err: int, words: list[str]) -> None:
    _fake_kernel(monkeypatch, err, {"io_uring_disabled": 0})
    a = availability()
    assert not a.usable and not a
    for w in words:
        assert w in a.reason
    assert a.sysctl_io_uring_disabled == 0


@pytest.mark.needs_no_ring
def test_availability_sysctl_disabled_for_everyone(monkeypatch: pytest.MonkeyPatch,
                                                   fresh_availability: None) -> None:
    _fake_kernel(monkeypatch, errno.EPERM, {"io_uring_disabled": 2})
    a = availability()
    assert not a and "kernel.io_uring_disabled=2" in a.reason and a.sysctl_io_uring_disabled == 2


@pytest.mark.needs_no_ring
def test_availability_sysctl_limited_to_a_group(monkeypatch: pytest.MonkeyPatch, fresh_availability: None) -> None:
    _fake_kernel(monkeypatch, errno.EPERM, {"io_uring_disabled": 1, "io_uring_group": 4242})
    monkeypatch.setattr(probe_mod, "_in_group", lambda gid: False)
    a = availability()
    assert not a and "kernel.io_uring_disabled=1" in a.reason and "4242" in a.reason
    # In the group yet still refused: the errno's own explanation.
    monkeypatch.setattr(probe_mod, "_in_group", lambda gid: True)
    assert "not permitted" in _explain_setup_error(errno.EPERM, 1)


@pytest.mark.needs_no_ring
def test_availability_sysctl_privileged_only(monkeypatch: pytest.MonkeyPatch, fresh_availability: None) -> None:
    _fake_kernel(monkeypatch, errno.EPERM, {"io_uring_disabled": 1, "io_uring_group": -1})
    a = availability()
    assert not a and "CAP_SYS_ADMIN" in a.reason and "io_uring_group" in a.reason
    # Another errno under the same sysctl is not blamed on it.
    assert "ENOMEM" in _explain_setup_error(errno.ENOMEM, 1)


@pytest.mark.needs_no_ring
def test_availability_old_kernel_and_env_override(monkeypatch: pytest.MonkeyPatch,
                                                  fresh_availability: None) -> None:
    _fake_kernel(monkeypatch, None, {}, release="5.10.0-28-amd64")
    a = availability()
    assert not a and "older than 5.15" in a.reason
    availability.cache_clear()
    _fake_kernel(monkeypatch, None, {}, release="6.8.0")
    assert availability()  # the fake setup succeeded (and its fd was closed)
    availability.cache_clear()
    monkeypatch.setenv("URINGWS_BACKEND", "epoll")
    a = availability()
    assert not a and "URINGWS_BACKEND=epoll" in a.reason
    assert probe() is None


def test_availability_is_a_frozen_dataclass() -> None:
    a = Availability(False, "x", "k")
    with pytest.raises(AttributeError):
        a.usable = True  # type: ignore[misc]


@pytest.mark.needs_no_ring
@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le", "riscv64", "s390x", "i686", ""])
def test_availability_refuses_cpus_other_than_x86_64(monkeypatch: pytest.MonkeyPatch, fresh_availability: None,
                                                     machine: str) -> None:
    """The ring's unfenced head/tail accesses are only safe under x86-64's TSO: elsewhere, epoll."""
    _fake_kernel(monkeypatch, None, {})  # a kernel that would let us create rings
    monkeypatch.setattr(probe_mod.platform, "machine", lambda: machine)
    a = availability()
    assert not a and "x86-64" in a.reason and "epoll" in a.reason
    assert (machine or "unknown CPU") in a.reason
    assert probe() is None
    assert not bufring.supported()
    with pytest.raises(OSError, match="x86-64") as exc:
        Ring(4)
    assert exc.value.errno == errno.ENOTSUP
    monkeypatch.setattr(events, "_fallback_logged", False)
    loop = new_event_loop()
    try:
        assert loop.backend == "epoll" and loop.ring is None
    finally:
        loop.close()


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_availability_accepts_x86_64(monkeypatch: pytest.MonkeyPatch, fresh_availability: None,
                                     machine: str) -> None:
    monkeypatch.setattr(probe_mod.platform, "machine", lambda: machine)
    assert probe_mod.cpu_refusal() is None
    assert availability()
