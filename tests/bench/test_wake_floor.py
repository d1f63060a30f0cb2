"""benchmarks/wake_floor.py: the C echo servers echo, every mode is measured, the medians are what the runs say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from uringws.ring.probe import kernel_version

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "wake_floor.py"

pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"),
    pytest.mark.skipif(kernel_version()[:2] < (6, 1), reason="the io_uring modes need Linux 6.1"),
]


def test_every_mode_echoes_and_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "2", "--seconds", "0.3", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report["medians"]) == {"epoll", "uring", "uring-defer"}
    for mode, runs in report["runs"].items():
        assert len(runs) == 2
        for run in runs:
            # a round trip is 100 bytes each way through the server: it cannot cost nothing, nor a millisecond
            assert 0.5 < run["server_cpu_us_per_rt"] < 1000, (mode, run)
            assert run["round_trips_per_s"] > 100, (mode, run)
        cpu = sorted(r["server_cpu_us_per_rt"] for r in runs)
        assert report["medians"][mode] == pytest.approx((cpu[0] + cpu[1]) / 2)
    for mode in report["medians"]:
        assert mode in proc.stdout


def test_an_unknown_mode_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--modes", "epoll,kqueue", "--rounds", "1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "kqueue" in proc.stderr
