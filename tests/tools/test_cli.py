"""The ``uringws`` command's own surface: ``--version`` and user errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uringws", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    """A user error: exit status 2 and exactly one line on stderr (no traceback), starting with ``prefix``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def test_version_prints_installed_metadata() -> None:
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"uringws {metadata.version('uringws')}\n"
