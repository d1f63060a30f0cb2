"""The ``uringws`` command's own surface: ``--version`` and user errors as one line with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

import uringws
from uringws.tools import torture


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


@pytest.mark.parametrize("args, prefix, words", [
    (["serve", "--port", "99999"], "uringws serve: ", "--port"),
    (["serve", "--port", "-5"], "uringws serve: ", "--port"),
    (["serve", "--max-size", "-1"], "uringws serve: ", "--max-size"),
    (["serve", "--ping-interval", "0"], "uringws serve: ", "--ping-interval"),
    (["serve", "--max-memory", "lots"], "uringws serve: ", "--max-memory"),
    (["torture", "ws://127.0.0.1:9/", "-c", "0"], "uringws torture: ", "--connections"),
    (["torture", "ws://127.0.0.1:9/", "-n", "-1"], "uringws torture: ", "--messages"),
    (["torture", "ws://127.0.0.1:9/", "--min-size", "10", "--max-size", "5"], "uringws torture: ", "--min-size"),
    (["torture", "ws://127.0.0.1:9/", "--timeout", "0"], "uringws torture: ", "--timeout"),
    (["no-such-command"], "uringws: ", "no-such-command"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], prefix: str, words: str) -> None:
    assert words in one_line_error(cli(*args), prefix)


@pytest.mark.parametrize("command", ["serve", "doctor"])
def test_unknown_backend_in_environment_is_one_line(command: str, tmp_path: Path) -> None:
    env = dict(os.environ, URINGWS_BACKEND="bogus", XDG_DATA_HOME=str(tmp_path))
    line = one_line_error(cli(command, env=env), f"uringws {command}: ")
    assert "URINGWS_BACKEND='bogus'" in line and "epoll" in line


def test_unknown_backend_in_environment_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from uringws.ring import probe

    monkeypatch.setenv("URINGWS_BACKEND", "bogus")
    probe.availability.cache_clear()
    try:
        with pytest.raises(ValueError, match="URINGWS_BACKEND='bogus'"):
            uringws.new_event_loop()
        monkeypatch.setenv("URINGWS_BACKEND", "Auto ")
        probe.availability.cache_clear()
        uringws.new_event_loop().close()
    finally:
        probe.availability.cache_clear()


@pytest.mark.parametrize("kw", [{"connections": 0}, {"messages": 0}, {"window": 0}, {"read_chunk": 0},
                                {"min_size": 10, "max_size": 5}, {"min_size": -1}, {"timeout": 0.0}])
def test_torture_config_rejects_what_cannot_run(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        torture.TortureConfig(url="ws://127.0.0.1:9/", **kw)


def test_serve_help_states_both_max_size_defaults() -> None:
    """`uringws serve` accepts 16 MiB messages, the library 1 MiB: --help says both, and both are the real ones."""
    import re

    from uringws.cli import _opt_size, build_parser
    from uringws.tools.serve import ServeOptions
    from uringws.ws.config import WSConfig

    proc = cli("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    match = re.search(r"--max-size MAX_SIZE .*?\(default (\w+),.*?serve\(\) and connect\(\) default to (\w+)\)", text)
    assert match, text
    cli_default, library_default = (_opt_size(word) for word in match.groups())
    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert cli_default == serve_parser.get_default("max_size") == ServeOptions().max_size
    assert library_default == WSConfig().max_size


def test_serve_help_states_both_max_memory_defaults() -> None:
    """`uringws serve` has a 256M memory budget, the library's serve() none: --help says both, and both are real."""
    import inspect
    import re

    from uringws.cli import _opt_size, build_parser
    from uringws.server import serve
    from uringws.tools.serve import ServeOptions

    proc = cli("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    match = re.search(r"--max-memory MAX_MEMORY .*?\(default (\w+); the library's serve\(\) defaults to (\w+)\)", text)
    assert match, text
    cli_default, library_default = (_opt_size(word) for word in match.groups())
    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    assert cli_default == serve_parser.get_default("max_memory") == ServeOptions().max_memory == 256 << 20
    assert library_default is None and inspect.signature(serve).parameters["max_memory"].default is None
    assert serve_parser.parse_args(["--max-memory", "none"]).max_memory is None
    assert serve_parser.parse_args(["--max-memory", "1G"]).max_memory == 1 << 30
