"""benchmarks/capped_echo.py: each server runs under the CPU quota asked for, and the report is what the runs say."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "capped_echo.py"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a cgroup"),
    pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset"),
    pytest.mark.skipif(
        not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() and not Path("/sys/fs/cgroup/cgroup.controllers").exists(),
        reason="no cgroup cpu controller",
    ),
]


def test_the_server_is_held_to_its_quota_and_measured(tmp_path: Path) -> None:
    out = tmp_path / "capped.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--servers", "uringws-dispatch,uringws", "--quota", "0.25", "--runs", "2",
         "--warmup", "0.3", "--duration", "1", "--connections", "10", "--inflight", "4", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"uringws-dispatch", "uringws"}
    for name, runs in report["runs"].items():
        assert len(runs) == 2
        for run in runs:
            # the cgroup holds the server to a quarter of a CPU (the client alone would take it further)
            assert 15 < run["server_cpu_pct"] < 30, (name, run)
            assert 0 < run["server_cpu_us_per_msg"] < 1000 and run["messages"] > 0, (name, run)
            assert 0 < run["server_sys_share"] < 1, (name, run)
        median = statistics.median(r["server_cpu_us_per_msg"] for r in runs)
        assert f"median {median:.2f}" in proc.stdout, proc.stdout
    assert not list(Path("/sys/fs/cgroup/cpu").glob("uringws-capped-*")), "the cgroup was left behind"


def test_a_server_from_another_tree_runs_that_tree(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("capped_echo", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cert = ("c.pem", "k.pem")
    cmd, env = mod.server_command("uringws-dispatch@old", cert, {"old": str(tmp_path)})
    assert cmd[4] == str(tmp_path.resolve() / "benchmarks" / "servers" / "uringws_dispatch_server.py")
    assert env["PYTHONPATH"] == str(tmp_path.resolve())
    cmd, env = mod.server_command("uringws-dispatch", cert, {"old": str(tmp_path)})
    assert cmd[4] == str(SCRIPT.parent / "servers" / "uringws_dispatch_server.py")
    assert env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    with pytest.raises(SystemExit, match="no --tree new=PATH"):
        mod.server_command("uringws@new", cert, {"old": str(tmp_path)})
    with pytest.raises(SystemExit, match="unknown server"):
        mod.server_command("nginx", cert, {})
