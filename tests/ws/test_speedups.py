"""The optional C mask (``uringws.ws._speedups``) against its pure-Python twin, which stays tested either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from uringws.ws import frames
from uringws.ws.frames import apply_mask_py

_speedups: ModuleType | None
try:
    from uringws.ws import _speedups
except ImportError:  # built without a compiler: only the pure twin is tested
    _speedups = None

MaskFn = Callable[[bytes | bytearray | memoryview, bytes | bytearray], bytes]
needs_c = pytest.mark.skipif(_speedups is None, reason="uringws.ws._speedups was not built")

IMPLS: list[object] = [pytest.param(apply_mask_py, id="pure")]
if _speedups is not None:
    IMPLS.append(pytest.param(_speedups.apply_mask, id="c"))


def naive_mask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def c_mask() -> MaskFn:
    assert _speedups is not None
    fn: MaskFn = _speedups.apply_mask
    return fn


# -- both implementations against the byte-by-byte definition ------------------------------------------------


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 7, 8, 9, 31, 32, 33, 4095, 4096, 4097, 70001, 131072, 131073])
def test_sizes_and_involution(fn: MaskFn, n: int) -> None:
    data, mask = os.urandom(n), os.urandom(4)
    masked = fn(data, mask)
    assert type(masked) is bytes
    assert masked == naive_mask(data, mask)
    assert fn(masked, mask) == data


@pytest.mark.parametrize("fn", IMPLS)
@given(data=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_matches_naive(fn: MaskFn, data: bytes, mask: bytes) -> None:
    assert fn(data, mask) == naive_mask(data, mask)


@pytest.mark.parametrize("fn", IMPLS)
def test_keyword_arguments(fn: Callable[..., bytes]) -> None:
    assert fn(data=b"\x00\x01\x02\x03\x04", mask=b"abcd") == naive_mask(b"\x00\x01\x02\x03\x04", b"abcd")


# -- C against pure: same bytes, same errors --------------------------------------------------------------------


@needs_c
@given(
    data=st.binary(max_size=70000) | st.integers(0, 70000).map(os.urandom),
    mask=st.binary(min_size=4, max_size=4),
    kind=st.sampled_from(["bytes", "bytearray", "memoryview", "bytearray-mask"]),
)
def test_c_matches_pure(data: bytes, mask: bytes, kind: str) -> None:
    arg: bytes | bytearray | memoryview = data
    m: bytes | bytearray = mask
    if kind == "bytearray":
        arg = bytearray(data)
    elif kind == "memoryview":
        arg = memoryview(data)
    elif kind == "bytearray-mask":
        m = bytearray(mask)
    assert c_mask()(arg, m) == apply_mask_py(arg, m)


@needs_c
@given(
    data=st.integers(0, 70000).map(os.urandom),
    start=st.integers(0, 17),
    trim=st.integers(0, 17),
    mask=st.binary(min_size=4, max_size=4),
    writable=st.booleans(),
)
def test_c_matches_pure_on_slices_at_odd_offsets(
    data: bytes, start: int, trim: int, mask: bytes, writable: bool
) -> None:
    # Slices of a receive buffer start anywhere: the C loads must be alignment-safe.
    base = bytearray(data) if writable else data
    with memoryview(base) as view:
        part = view[start : max(start, len(data) - trim)]
        assert c_mask()(part, mask) == apply_mask_py(part, mask) == naive_mask(bytes(part), mask)


@needs_c
def test_c_accepts_non_contiguous_views_like_pure() -> None:
    data = os.urandom(10001)
    with memoryview(data) as view:
        strided = view[1::3]
        assert c_mask()(strided, b"wxyz") == apply_mask_py(strided, b"wxyz") == naive_mask(bytes(strided), b"wxyz")


@needs_c
def test_c_does_not_modify_its_input() -> None:
    data = bytearray(os.urandom(200000))
    before = bytes(data)
    c_mask()(data, b"\xff\xff\xff\xff")
    assert data == before


BAD_MASKS = [b"", b"abc", b"abcde", bytearray(b"ab")]


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("n", [0, 10, 5000])
@pytest.mark.parametrize("mask", BAD_MASKS, ids=repr)
def test_wrong_mask_length_raises_value_error(fn: MaskFn, n: int, mask: bytes) -> None:
    with pytest.raises(ValueError, match=r"^mask must be 4 bytes$"):
        fn(os.urandom(n), mask)


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("mask", [b"abc", None], ids=["short-mask", "none-mask"])
def test_errors_release_the_data_buffer(fn: MaskFn, mask: bytes | None) -> None:
    # A buffer export leaked on an error path would leave the bytearray unresizable (BufferError).
    data = bytearray(b"payload")
    with pytest.raises((ValueError, TypeError)):
        fn(data, mask)  # type: ignore[arg-type]
    data.extend(b"more")
    del data[:]
    assert data == b""


@pytest.mark.parametrize("fn", IMPLS)
def test_mask_buffer_is_released(fn: MaskFn) -> None:
    mask = bytearray(b"abcd")
    assert fn(b"\x00" * 9, mask) == b"abcdabcda"
    mask.append(0x65)  # BufferError here if the call above kept the mask exported
    with pytest.raises(ValueError):
        fn(b"\x00" * 9, mask)
    mask.pop()
    assert mask == b"abcd"


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize(
    ("data", "mask"),
    [("text", b"abcd"), (None, b"abcd"), (12345, b"abcd"), (b"x" * 5000, None), (b"xyz", None)],
    ids=["str-data", "none-data", "int-data", "none-mask-large", "none-mask"],
)
def test_non_bytes_raise_type_error(fn: MaskFn, data: object, mask: object) -> None:
    with pytest.raises(TypeError):
        fn(data, mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", IMPLS)
def test_wrong_argument_count_raises_type_error(fn: Callable[..., bytes]) -> None:
    with pytest.raises(TypeError):
        fn(b"data")
    with pytest.raises(TypeError):
        fn(b"data", b"abcd", b"extra")
    with pytest.raises(TypeError):
        fn(b"data", mask=b"abcd", data=b"again")


# -- selection ----------------------------------------------------------------------------------------------------


def _selected(env: dict[str, str]) -> str:
    code = "from uringws.ws import frames; print(frames.apply_mask is frames.apply_mask_py)"
    full = {k: v for k, v in os.environ.items() if k not in ("URINGWS_NO_SPEEDUPS", "URINGWS_PURE")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=full)
    assert out.returncode == 0, out.stderr
    return "pure" if out.stdout.strip() == "True" else "c"


def test_selection_follows_build_and_environment() -> None:
    assert _selected({"URINGWS_NO_SPEEDUPS": "1"}) == "pure"
    assert _selected({}) == ("pure" if _speedups is None else "c")
    assert _selected({"URINGWS_NO_SPEEDUPS": "0"}) == ("pure" if _speedups is None else "c")


def test_protocol_uses_the_selected_mask() -> None:
    from uringws.ws import protocol

    assert protocol.apply_mask is frames.apply_mask


@pytest.mark.parametrize("disabled", [False, True])
def test_doctor_reports_speedups(disabled: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("URINGWS_NO_SPEEDUPS", "URINGWS_PURE")}
    if disabled:
        env["URINGWS_NO_SPEEDUPS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "uringws", "doctor", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["speedups"] is (_speedups is not None and not disabled)
    text = subprocess.run(
        [sys.executable, "-m", "uringws", "doctor"], capture_output=True, text=True, timeout=60, env=env
    )
    assert text.returncode == 0, text.stderr
    expected = "C mask (uringws.ws._speedups)" if _speedups is not None and not disabled else "pure Python"
    assert f"Speedups    {expected}" in text.stdout


# -- the AVX2 loop and the portable one ----------------------------------------------------------------------------

# Every length up to 300 (the vector loop's 256- and 32-byte steps and the portable tail) at every start offset
# up to 36 (unaligned loads), plus larger sizes, through apply_mask and a FrameBuffer fed in uneven chunks (the
# mask's phase carried between chunks), each checked against the pure twin; prints the loop used and a digest.
_SWEEP = r"""
import hashlib, random
from uringws.ws import _speedups, frames
rng = random.Random(1405)
data = bytes(rng.getrandbits(8) for _ in range(70000))
h = hashlib.sha256()
for mask in (b"\x00\x00\x00\x00", b"\xff\x01\x80\x7f", bytes(rng.getrandbits(8) for _ in range(4))):
    for start in range(37):
        for n in [*range(301), 511, 512, 513, 767, 768, 800, 1023, 4096, 4163, 65536 + 37]:
            part = memoryview(data)[start : start + n]
            out = _speedups.apply_mask(part, mask)
            assert out == frames.apply_mask_py(part, mask), (mask, start, n)
            h.update(out)
    for chunk in (1, 3, 31, 33, 100, 4099):
        fb = _speedups.FrameBuffer(len(data) - 5, mask)
        pos = 5
        while fb.remaining:
            pos += fb.feed(data[: pos + chunk], pos)
        out = fb.take()
        assert out == frames.apply_mask_py(data[5:], mask), (mask, chunk)
        h.update(out)
print(_speedups.AVX2, h.hexdigest())
"""


def _sweep(no_avx2: bool) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("URINGWS_NO_SPEEDUPS", "URINGWS_PURE", "URINGWS_NO_AVX2")}
    if no_avx2:
        env["URINGWS_NO_AVX2"] = "1"
    out = subprocess.run([sys.executable, "-c", _SWEEP], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    used, digest = out.stdout.split()
    return used, digest


@needs_c
def test_avx2_and_portable_loops_give_the_same_bytes_as_pure() -> None:
    used, digest = _sweep(no_avx2=False)
    portable_used, portable_digest = _sweep(no_avx2=True)
    assert portable_used == "False"  # URINGWS_NO_AVX2=1 forces the portable loop
    assert used == str(_cpu_has_avx2())
    assert digest == portable_digest


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


@needs_c
@given(
    data=st.integers(0, 5000).map(os.urandom),
    start=st.integers(0, 63),
    mask=st.binary(min_size=4, max_size=4),
    splits=st.lists(st.integers(1, 700), max_size=8),
)
def test_framebuffer_matches_pure_at_any_offset_and_split(
    data: bytes, start: int, mask: bytes, splits: list[int]
) -> None:
    # The active loop (AVX2 where the CPU has it) through FrameBuffer: chunks end anywhere, so the mask's phase
    # at the start of each chunk is anything.
    start = min(start, len(data))
    payload = data[start:]
    fb = frames.FrameBuffer(len(payload), mask)
    pos = start
    for size in [*splits, len(data)]:
        pos += fb.feed(data[: pos + size], pos)
    assert fb.remaining == 0
    assert fb.take() == apply_mask_py(payload, mask)
