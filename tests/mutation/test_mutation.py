"""The mutation list stays in step with the code (fast), and the full mutation run (slow: ``-m slow``)."""

from __future__ import annotations

import pytest

from .mutations import MUTATIONS, Mutation
from .runner import DEFAULT_TIMEOUT, check, failed, run_one, table


def test_every_snippet_occurs_exactly_once() -> None:
    assert check(MUTATIONS) == []


def test_runner_reports_stale_survived_and_killed() -> None:
    """The runner itself can tell the three apart (one real mutant, one comment change, one missing snippet)."""
    tests = ("tests/ws/test_frames.py::test_invalid_close_codes",)
    frames = "uringws/ws/frames.py"
    stale = Mutation("t-stale", frames, "no such line in frames.py", "x", tests, "stale")
    harmless = Mutation("t-comment", frames, "# -- close frames --", "# -- mutated --", tests, "a comment")
    real = Mutation("t-real", frames, "1007 <= code <= 1014", "1007 <= code <= 1015", tests, "1015 allowed")
    assert [run_one(m, DEFAULT_TIMEOUT).status for m in (stale, harmless, real)] == ["stale", "survived", "killed"]


_JOBS = 2


# The project's 300 s per-test timeout cannot hold ~80 mutants: allow each its own timeout plus copying the tree.
@pytest.mark.slow
@pytest.mark.timeout(len(MUTATIONS) * (DEFAULT_TIMEOUT + 15) / _JOBS)
def test_every_mutation_is_killed_or_explained() -> None:
    from .runner import run_all

    results = run_all(MUTATIONS, jobs=_JOBS, timeout=DEFAULT_TIMEOUT)
    print(table(results))
    assert [r.mutation.id for r in failed(results)] == []
