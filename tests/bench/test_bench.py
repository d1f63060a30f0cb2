"""``uringws bench``: the harness end to end at a tiny size, and the ratio/floor arithmetic of its report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from uringws.tools import bench


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    ns = parser.parse_args([])
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def test_unknown_scenario_or_server_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(_args(scenarios="pingpong,nosuch")) == 2
    assert "nosuch" in capsys.readouterr().err
    assert bench.main(_args(servers="uringws,tornado")) == 2
    assert "tornado" in capsys.readouterr().err


def test_quick_and_full_defaults() -> None:
    pytest.importorskip("picows")
    pytest.importorskip("uvloop")
    quick = bench.make_plan(_args())
    assert [s.name for s in quick.scenarios] == bench.DEFAULT_SCENARIOS
    assert quick.rounds == 1
    full = bench.make_plan(_args(full=True))
    assert [s.name for s in full.scenarios] == bench.DEFAULT_SCENARIOS + bench.TCP_SCENARIOS
    assert full.rounds == 3
    assert next(s for s in full.scenarios if s.name == "rss").connections == 5000


def test_summary_medians_ratios_and_floor() -> None:
    """Medians over rounds, ratio = peer ÷ uringws, failed runs ignored, floor derived from the floor script."""
    sc = bench.scenarios()["echo64"]
    plan = bench.Plan([sc], ["uringws", "picows"], 3, 1.0, 0.1, Path("."), sys.executable, False)
    runs = []
    for rnd, (ours, theirs) in enumerate([(100.0, 300.0), (120.0, 200.0), (110.0, 250.0)], 1):
        runs.append({"round": rnd, "scenario": "echo64", "server": "uringws",
                     "result": {"messages_per_s": ours, "server_cpu_us_per_msg": 1e6 / ours, "client_cpu_pct": 50}})
        runs.append({"round": rnd, "scenario": "echo64", "server": "picows",
                     "result": {"messages_per_s": theirs, "server_cpu_us_per_msg": 1e6 / theirs,
                                "client_cpu_pct": 60}})
    runs.append({"round": 4, "scenario": "echo64", "server": "picows", "result": {"error": "boom"}})
    floor = {"frames": {"64": {"leg_us": 2.0, "encrypt_us": 1.0, "decrypt_us": 1.0, "leg_mb_per_s": 32.0}},
             "handshake_us": 400.0}
    summary = bench.summarize(plan, {"runs": runs, "floors": [floor]})
    assert summary["medians"]["echo64"]["uringws"]["messages_per_s"] == 110.0
    assert summary["medians"]["echo64"]["picows"]["messages_per_s"] == 250.0
    assert summary["ratios"]["echo64"]["picows"]["messages_per_s"] == pytest.approx(250 / 110)
    assert summary["floor"]["echo64"] == {"messages_per_s": 500_000.0, "server_cpu_us_per_msg": 2.0}
    header, rows = bench.table_rows(plan, summary)
    assert header == ["scenario", "metric", "uringws", "picows", "TLS floor"]
    assert rows[0][2:] == ["110", "250 (2.27×)", "500,000"]
    assert rows[2][3] == "60.0"  # client CPU: informational, no ratio


def test_harness_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two servers, two scenarios, tiny windows: a table, JSON with positive medians, a PNG."""
    for mod in ("picows", "uvloop", "websockets"):
        pytest.importorskip(mod)
    pytest.importorskip("uringws.server")
    plot = tmp_path / "ratios.png"
    out = tmp_path / "bench.json"
    args = _args(scenarios="pingpong,broadcast", servers="uringws,websockets", duration=0.3, warmup=0.1,
                 broadcast_connections=8, json_path=str(out), plot=None, progress=False)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        args.plot = str(plot)
    code = bench.main(args)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "round trips/s" in printed.out and "TLS floor" in printed.out
    doc = json.loads(out.read_text())
    for server in ("uringws", "websockets"):
        assert doc["medians"]["pingpong"][server]["messages_per_s"] > 0
        assert doc["medians"]["broadcast"][server]["deliveries_per_s"] > 0
    assert doc["ratios"]["pingpong"]["websockets"]["messages_per_s"] > 0
    assert doc["floor"]["pingpong"]["server_cpu_us_per_msg"] > 0
    assert doc["machine"]["nproc"] >= 1
    if args.plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_broadcast_window_keeps_going_with_two_workers() -> None:
    """The load client's broadcast window does not stall when the trigger's own copies arrive first.

    With two workers the trigger's worker serves it before the other members; a top-up run only on the
    trigger's deliveries found the window full then and never ran again: 0 deliveries measured.
    """
    for mod in ("picows", "uvloop"):
        pytest.importorskip(mod)
    pytest.importorskip("uringws.server")
    import subprocess

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "workers_broadcast.py"
    result = subprocess.run([sys.executable, str(script), "--workers", "2", "--connections", "40", "--inflight",
                             "4", "--duration", "0.5"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["messages"] > 0, doc
