"""The registry of compiled pieces, URINGWS_PURE=1, doctor's listing, and an install with no compiler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uringws import _compiled

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("URINGWS_PURE", "URINGWS_NO_SPEEDUPS")}
    env.update(extra)
    return env


def _doctor_json(env: dict[str, str], cwd: Path = ROOT) -> dict[str, object]:
    # cwd matters: ``python -m`` puts it first on sys.path.
    proc = subprocess.run(
        [sys.executable, "-m", "uringws", "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def _built(module: str) -> bool:
    code = f"import importlib, sys\ntry:\n importlib.import_module({module!r})\nexcept ImportError:\n sys.exit(3)"
    return subprocess.run([sys.executable, "-c", code], env=_env(), timeout=60).returncode == 0


def test_registry_lists_every_piece() -> None:
    assert set(_compiled.status()) == {"ws._speedups", "tls._engine", "ring._ringc"}


def test_pure_switches_every_piece_off() -> None:
    report = _doctor_json(_env(URINGWS_PURE="1"))
    compiled = report["compiled"]
    assert isinstance(compiled, dict)
    assert set(compiled) == {"ws._speedups", "tls._engine", "ring._ringc"}
    assert not any(compiled.values())
    assert report["speedups"] is False
    code = ("from uringws.ws import frames; from uringws.tls import engine; from uringws.ring import fast; "
            "print(frames.apply_mask is frames.apply_mask_py, engine.available(), fast.RING_CLASS.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_env(URINGWS_PURE="1"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "Ring"]


def test_doctor_reports_what_is_built() -> None:
    report = _doctor_json(_env())
    compiled = report["compiled"]
    assert isinstance(compiled, dict)
    assert compiled["ws._speedups"] is _built("uringws.ws._speedups")
    assert compiled["tls._engine"] is _built("uringws.tls._engine")
    assert compiled["ring._ringc"] is _built("uringws.ring._ringc")
    text = subprocess.run([sys.executable, "-m", "uringws", "doctor"], capture_output=True, text=True, timeout=120,
                          env=_env(URINGWS_PURE="1"))
    assert text.returncode == 0, text.stderr
    assert "Compiled    ws._speedups: not in use (switched off by URINGWS_PURE=1)" in text.stdout
    assert "Compiled    tls._engine: not in use (switched off by URINGWS_PURE=1)" in text.stdout
    assert "Compiled    ring._ringc: not in use (switched off by URINGWS_PURE=1)" in text.stdout


def _new_setuptools() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.mark.skipif(not _new_setuptools(), reason="building needs setuptools>=77 (pyproject's build requirement)")
@pytest.mark.parametrize("broken", ["compiler", "openssl-headers"])
def test_builds_and_runs_pure_without_compiler_or_openssl_headers(tmp_path: Path, broken: str) -> None:
    """setup.py's extensions are optional: a failed compile leaves a working pure package."""
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            "*.so", ".git", ".venv*", "__pycache__", "artifacts", "site", ".hypothesis", "*.egg-info", "build"
        ),
    )
    if broken == "compiler":
        cc = "false"
    else:  # a compiler that cannot find OpenSSL's headers: only the extensions that include them fail
        wrapper = tmp_path / "cc-no-openssl"
        wrapper.write_text(
            '#!/bin/sh\nfor a in "$@"; do case "$a" in *_engine.c) '
            'echo "fatal error: openssl/ssl.h: No such file or directory" >&2; exit 1;; esac; done\n'
            'exec cc "$@"\n'
        )
        wrapper.chmod(0o755)
        cc = str(wrapper)
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(CC=cc, LDSHARED=f"{cc} -shared"),
    )
    assert build.returncode == 0, build.stdout + build.stderr
    built = sorted(p.name.split(".")[0] for p in (tree / "uringws").rglob("*.so"))
    assert built == ([] if broken == "compiler" else ["_ringc", "_speedups"])
    env = _env(PYTHONPATH=str(tree))
    report = _doctor_json(env, cwd=tree)
    assert report["compiled"] == {"ws._speedups": broken != "compiler", "tls._engine": False,
                                  "ring._ringc": broken != "compiler"}
    echo = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/tls/test_echo.py"],
                          cwd=tree, capture_output=True, text=True, timeout=600, env=env)
    assert echo.returncode == 0, echo.stdout[-3000:] + echo.stderr[-3000:]


def test_doctor_says_which_mask_loop_runs() -> None:
    if not _built("uringws.ws._speedups"):
        pytest.skip("uringws.ws._speedups was not built")
    base = {k: v for k, v in _env().items() if k != "URINGWS_NO_AVX2"}
    for env, loop in (
        (base, "AVX2" if _cpu_has_avx2() else "portable"),
        ({**base, "URINGWS_NO_AVX2": "1"}, "portable"),
    ):
        text = subprocess.run(
            [sys.executable, "-m", "uringws", "doctor"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
        )
        assert text.returncode == 0, text.stderr
        assert f"ws._speedups: in use (mask ({loop} loop)" in text.stdout, text.stdout


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False
