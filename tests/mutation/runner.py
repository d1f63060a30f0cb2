"""A small mutation tester: apply one mutation at a time to a copy of the tree, run its tests, report.

Why our own and not mutmut or cosmic-ray: the tests need real sockets, io_uring and a compiled extension, and
the hot paths have inlined duplicates, so generated mutants would be mostly noise. Each mutation here is written
by hand (``mutations.py``): an exact source snippet, its replacement, and the tests that must kill it.

For each mutation the runner copies ``uringws/``, ``tests/`` and ``pyproject.toml`` to a temporary directory,
replaces the snippet (which must occur exactly once), rebuilds the C extension if the mutation is in a ``.c``
file (all of them for a ``.h``), and runs pytest on the mutation's tests with ``PYTHONPATH`` pointing at the copy.
Outcomes:

* killed: the tests failed; timeout: they did not finish in time (counted as killed, reported apart);
* survived: the tests passed (fine only if the mutation says why it is ``equivalent``);
* stale / ambiguous: the snippet occurs zero / several times (the code changed: update the list);
* error: the mutant could not be built, or pytest did not run the tests (bad selection, collection error).

Before any mutant, the unmutated copy runs every selection once (the baseline): a failing baseline would make
every mutant look killed, so it stops the run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .mutations import MUTATIONS, Mutation

ROOT = Path(__file__).resolve().parents[2]
_COPIED = ("uringws", "tests", "pyproject.toml")
_IGNORE = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache", "*.pyc")
# Deterministic runs: the same examples every time, so a mutant is killed or not for the same reason each run.
PYTEST_ARGS = ("-q", "-x", "-p", "no:cacheprovider", "--hypothesis-seed=0", "-o", "addopts=", "-m", "not slow")
# Each selection passes in about 5 s on a quiet 2-core machine (1-2 s when a mutant is killed, -x): 60 s leaves a
# wide margin for a loaded one, while a mutant that hangs its tests costs a minute, not two.
DEFAULT_TIMEOUT = 60.0


@dataclass
class Result:
    mutation: Mutation
    status: str  # killed | timeout | survived | equivalent | stale | ambiguous | error
    seconds: float = 0.0
    line: int = 0
    detail: str = ""

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout")


def locate(mutation: Mutation, root: Path = ROOT) -> tuple[str, int]:
    """(status, line): "ok" with the snippet's line, or "stale" / "ambiguous" / "missing-file"."""
    path = root / mutation.file
    if not path.is_file():
        return "missing-file", 0
    text = path.read_text()
    count = text.count(mutation.snippet)
    if count == 0:
        return "stale", 0
    if count > 1:
        return "ambiguous", 0
    return "ok", text[: text.index(mutation.snippet)].count("\n") + 1


def check(mutations: Sequence[Mutation], root: Path = ROOT) -> list[str]:
    """Problems with the list itself: snippets not found once, duplicate ids, no-op or test-less mutations."""
    problems: list[str] = []
    seen: set[str] = set()
    for m in mutations:
        if m.id in seen:
            problems.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        status, _ = locate(m, root)
        if status != "ok":
            problems.append(f"{m.id}: {status} snippet in {m.file}: {m.snippet!r}")
        if m.snippet == m.replacement:
            problems.append(f"{m.id}: the replacement equals the snippet")
        if not m.tests:
            problems.append(f"{m.id}: no tests to run")
    return problems


def copy_tree(dest: Path, root: Path = ROOT) -> None:
    for name in _COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=_IGNORE, symlinks=True)
        else:
            shutil.copy2(src, dest / name)


#: the C pieces, as in setup.py
C_PIECES = ("uringws/ws/_speedups.c", "uringws/tls/_engine.c", "uringws/ring/_ringc.c")

#: the libraries each compiled piece links, as in setup.py
_LIBRARIES = {"_engine": ("-lssl", "-lcrypto")}


def build_extension(tree: Path, file: str = "uringws/ws/_speedups.c") -> None:
    """Compile one of the C pieces (``file``, relative to the tree) in place, as setup.py's build would (raises
    CalledProcessError)."""
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    cc = os.environ.get("CC", sysconfig.get_config_var("CC") or "cc").split()
    source = tree / file
    name = source.stem
    for old in source.parent.glob(f"{name}*.so"):
        old.unlink()  # never test the unmutated build by mistake
    subprocess.run(
        [
            *cc,
            "-shared",
            "-fPIC",
            "-O2",
            f"-I{include}",
            str(source),
            "-o",
            str(source.with_name(f"{name}{suffix}")),
            *_LIBRARIES.get(name, ()),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def run_pytest(tree: Path, tests: Iterable[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run pytest in ``tree`` on ``tests``; (returncode or None on timeout, the output's tail)."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests],
        cwd=tree,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the tests' children too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out[-3000:]
    return proc.returncode, out[-3000:]


def run_one(mutation: Mutation, timeout: float, root: Path = ROOT, keep: bool = False) -> Result:
    status, line = locate(mutation, root)
    if status != "ok":
        return Result(mutation, "stale" if status == "missing-file" else status, line=line)
    start = time.monotonic()
    tree = Path(tempfile.mkdtemp(prefix=f"uringws-mut-{mutation.id}-"))
    try:
        copy_tree(tree, root)
        target = tree / mutation.file
        target.write_text(target.read_text().replace(mutation.snippet, mutation.replacement, 1))
        if mutation.file.endswith((".c", ".h")):
            try:
                # a header is included by every C piece: all of them are rebuilt
                for file in (mutation.file,) if mutation.file.endswith(".c") else C_PIECES:
                    build_extension(tree, file)
            except subprocess.CalledProcessError as exc:
                return Result(mutation, "error", time.monotonic() - start, line, f"build failed:\n{exc.stderr}")
        rc, out = run_pytest(tree, mutation.tests, dict(mutation.env), timeout)
    finally:
        if not keep:
            shutil.rmtree(tree, ignore_errors=True)
    seconds = time.monotonic() - start
    if rc is None:
        return Result(mutation, "timeout", seconds, line, out)
    if rc == 0:
        return Result(mutation, "equivalent" if mutation.equivalent else "survived", seconds, line, out)
    if rc == 1:
        return Result(mutation, "killed", seconds, line, _first_failure(out))
    # 2 interrupted (e.g. a collection error), 3 internal error, 4 usage error, 5 no tests collected
    return Result(mutation, "error", seconds, line, f"pytest exit status {rc}:\n{out}")


def _first_failure(out: str) -> str:
    match = re.search(r"^(FAILED|ERROR) .*$", out, re.MULTILINE)
    return match.group(0) if match else ""


def baseline(mutations: Sequence[Mutation], timeout: float, root: Path = ROOT) -> list[str]:
    """Run every selection on the unmutated tree, one pytest run per environment; the failures, if any."""
    groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for m in mutations:
        tests = groups.setdefault(tuple(sorted(m.env.items())), [])
        tests.extend(t for t in m.tests if t not in tests)
    failures = []
    tree = Path(tempfile.mkdtemp(prefix="uringws-mut-baseline-"))
    try:
        copy_tree(tree, root)
        for env, tests in groups.items():
            rc, out = run_pytest(tree, tests, dict(env), timeout * 4)
            if rc != 0:
                failures.append(f"baseline with env {dict(env)} failed (status {rc}):\n{out}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return failures


def run_all(
    mutations: Sequence[Mutation],
    jobs: int,
    timeout: float,
    root: Path = ROOT,
    keep: bool = False,
    progress: bool = False,
) -> list[Result]:
    results: list[Result] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, m, timeout, root, keep) for m in mutations]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            if progress:
                print(f"  {result.mutation.id:<10} {result.status:<10} {result.seconds:6.1f} s", file=sys.stderr)
            results.append(result)
    order = {m.id: i for i, m in enumerate(mutations)}
    results.sort(key=lambda r: order[r.mutation.id])
    return results


def kill_rate(results: Sequence[Result]) -> tuple[int, int]:
    """(killed, total) over the mutations not marked equivalent."""
    counted = [r for r in results if not r.mutation.equivalent]
    return sum(r.killed for r in counted), len(counted)


def table(results: Sequence[Result]) -> str:
    rows = [f"{'id':<10} {'where':<32} {'result':<10} {'secs':>6}  description"]
    for r in results:
        where = f"{r.mutation.file.removeprefix('uringws/')}:{r.line}"
        rows.append(f"{r.mutation.id:<10} {where:<32} {r.status:<10} {r.seconds:6.1f}  {r.mutation.description}")
    killed, total = kill_rate(results)
    timeouts = sum(r.status == "timeout" for r in results)
    equivalent = [r for r in results if r.mutation.equivalent]
    rows.append("")
    rows.append(
        f"killed {killed}/{total} ({100 * killed / total if total else 100:.1f} %, {timeouts} by timeout); "
        f"{len(equivalent)} marked equivalent"
    )
    for r in results:
        if r.status == "survived":
            rows.append(f"SURVIVED {r.mutation.id}: {r.mutation.description}")
        elif r.mutation.equivalent and r.killed:
            rows.append(f"KILLED BUT MARKED EQUIVALENT {r.mutation.id}: {r.detail}")
        elif r.status in ("stale", "ambiguous", "error"):
            rows.append(f"{r.status.upper()} {r.mutation.id}: {r.mutation.snippet!r} in {r.mutation.file}\n{r.detail}")
    for r in equivalent:
        rows.append(f"equivalent {r.mutation.id} ({r.status}): {r.mutation.equivalent}")
    return "\n".join(rows)


def failed(results: Sequence[Result]) -> list[Result]:
    """Results that make the run fail: survivors not explained, broken entries, equivalents that were killed."""
    return [
        r
        for r in results
        if r.status in ("survived", "stale", "ambiguous", "error") or (r.mutation.equivalent and r.killed)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="run only these mutation ids (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="mutants run at once")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per mutant; a timeout counts as killed"
    )
    parser.add_argument("--check", action="store_true", help="only check that every snippet occurs exactly once")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of every selection")
    parser.add_argument("--keep", action="store_true", help="keep each mutant's tree (printed paths in /tmp)")
    args = parser.parse_args(argv)

    mutations = list(MUTATIONS)
    if args.ids:
        unknown = set(args.ids) - {m.id for m in mutations}
        if unknown:
            parser.error(f"unknown mutation ids: {', '.join(sorted(unknown))}")
        mutations = [m for m in mutations if m.id in args.ids]
    if args.list:
        for m in mutations:
            print(f"{m.id:<10} {m.file:<28} {m.description}")
        return 0
    problems = check(mutations)
    if problems:
        print("The mutation list is out of date with the code:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    if args.check:
        print(f"all {len(mutations)} snippets found exactly once")
        return 0
    if not args.no_baseline:
        print(f"baseline: the {len(mutations)} mutations' tests on the unmutated tree ...", file=sys.stderr)
        failures = baseline(mutations, args.timeout)
        if failures:
            print(*failures, sep="\n", file=sys.stderr)
            print("the tests fail without any mutation: fix that first", file=sys.stderr)
            return 1
    start = time.monotonic()
    results = run_all(mutations, args.jobs, args.timeout, keep=args.keep, progress=True)
    print(table(results))
    print(f"({len(results)} mutants in {time.monotonic() - start:.0f} s with {args.jobs} jobs)")
    return 1 if failed(results) else 0
