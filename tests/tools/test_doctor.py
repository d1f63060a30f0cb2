"""``uringws doctor`` reports the system and the backend choice, readable and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from uringws.ring import probe as probe_mod
from uringws.tools import doctor


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "uringws", *args], capture_output=True, text=True, timeout=60,
                          env=full_env)


def test_doctor_json_matches_availability() -> None:
    proc = run_cli("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    avail = probe_mod.availability()
    assert report["io_uring_usable"] == avail.usable
    assert report["backend"] in ("io_uring", "epoll")
    if avail.usable:
        assert report["backend"] == "io_uring"
        assert "SEND" in report["probe"]["ops"] and "RECV" in report["probe"]["ops"]
        assert report["missing_required_ops"] == []


def test_doctor_text_names_backend_and_reason() -> None:
    proc = run_cli("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "Backend" in proc.stdout and "Kernel" in proc.stdout
    assert probe_mod.availability().reason in proc.stdout


def test_doctor_honours_forced_epoll() -> None:
    proc = run_cli("doctor", "--json", env={"URINGWS_BACKEND": "epoll"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["backend"] == "epoll"
    assert "URINGWS_BACKEND" in report["backend_reason"]


def test_doctor_reports_missing_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    if not probe_mod.availability():
        pytest.skip("io_uring not usable here")
    real = probe_mod.probe()
    assert real is not None
    crippled = probe_mod.Probe(real.kernel, frozenset(real.ops - {26}), real.features, real.setup_flags, {})
    monkeypatch.setattr(doctor, "probe", lambda: crippled)
    report = doctor.inspect()
    assert report["backend"] == "epoll"
    assert "SEND" in report["backend_reason"]


def test_cli_without_command_prints_help() -> None:
    proc = run_cli()
    assert proc.returncode == 2
    assert "doctor" in proc.stdout


def test_doctor_shows_epoll_off_x86_64(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """On aarch64 (faked) doctor says why io_uring is refused and that epoll is used, as text and JSON."""
    monkeypatch.delenv("URINGWS_BACKEND", raising=False)
    monkeypatch.setattr(probe_mod.platform, "machine", lambda: "aarch64")
    probe_mod.availability.cache_clear()
    probe_mod.probe.cache_clear()
    try:
        assert doctor.main(as_json=True) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["machine"] == "aarch64"
        assert report["io_uring_usable"] is False and report["backend"] == "epoll"
        assert "x86-64" in report["backend_reason"] and "aarch64" in report["backend_reason"]
        assert "probe" not in report
        assert doctor.main() == 0
        text = capsys.readouterr().out
        assert "Kernel" in text and "(aarch64)" in text
        backend_line = next(line for line in text.splitlines() if line.startswith("Backend"))
        assert "epoll" in backend_line and "x86-64" in backend_line
        assert "NOT usable" in text
    finally:
        probe_mod.availability.cache_clear()
        probe_mod.probe.cache_clear()
