"""Summarize an Autobahn testsuite report index and optionally gate on the counts.

Reads the ``index.json`` that ``wstest`` writes next to its HTML reports, prints, for each agent, how many cases
ended in each behavior (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED, ...) and the ids of the cases that
did not pass, grouped by section. With threshold options it exits 1 when a count is out of bounds, so CI can
gate on it; without them it only prints (exit 0).

    python conformance/summarize.py reports/autobahn/server/uringws/index.json --max-failed 0 --min-ok 500
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Order in which behaviors are printed; anything else wstest reports is printed after these.
BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
# Behaviors that count as passing. wstest's HTML report shows NO_CLOSE as its own non-failing column too.
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL", "NO_CLOSE"})


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key for ids like '6.4.3' so that 9.10 comes after 9.9."""
    return tuple(int(part) if part.isdigit() else 0 for part in case_id.split("."))


@dataclass
class AgentSummary:
    """Counts and notable case ids for one agent."""

    agent: str
    counts: Counter[str] = field(default_factory=Counter)
    close_counts: Counter[str] = field(default_factory=Counter)
    cases: dict[str, list[str]] = field(default_factory=dict)
    unclean: list[str] = field(default_factory=list)
    total: int = 0

    @property
    def failed(self) -> list[str]:
        """Ids of every case whose behavior is not a passing one (FAILED and anything unknown)."""
        return sorted(
            (c for behavior, ids in self.cases.items() if behavior not in PASSING | {"UNIMPLEMENTED"} for c in ids),
            key=case_key,
        )


def summarize(index: dict[str, dict[str, dict[str, Any]]], agent: str) -> AgentSummary:
    """Count behaviors of one agent's cases in a parsed index.json."""
    summary = AgentSummary(agent)
    for case_id, result in index[agent].items():
        behavior = str(result.get("behavior", "MISSING"))
        behavior_close = str(result.get("behaviorClose", "MISSING"))
        summary.total += 1
        summary.counts[behavior] += 1
        summary.close_counts[behavior_close] += 1
        summary.cases.setdefault(behavior, []).append(case_id)
        if behavior_close == "UNCLEAN":
            summary.unclean.append(case_id)
    for ids in summary.cases.values():
        ids.sort(key=case_key)
    summary.unclean.sort(key=case_key)
    return summary


def group_by_section(case_ids: list[str]) -> dict[str, list[str]]:
    """Group ids by their first two components ('6.4.3' -> '6.4') for a readable listing."""
    groups: dict[str, list[str]] = {}
    for case_id in case_ids:
        groups.setdefault(".".join(case_id.split(".")[:2]), []).append(case_id)
    return groups


def case_detail(report_dir: str, agent_cases: dict[str, Any], case_id: str) -> str:
    """The one-line reasons wstest gave for a case, read from its per-case JSON report."""
    name = agent_cases[case_id].get("reportfile")
    if not name:
        return ""
    try:
        with open(os.path.join(report_dir, name)) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return "(report file missing)"
    # wstest's "result" text is generic ("Did not receive message within 100 seconds" also when the peer
    # closed at once), so the close code and reason the peer sent are printed too: they usually name the cause.
    remote = f"peer closed {report.get('remoteCloseCode')} {report.get('remoteCloseReason') or ''}".rstrip()
    return (
        f"{report.get('result', '')} | close: {report.get('resultClose', '')} ({report.get('behaviorClose', '')})"
        f" | {remote} | {report.get('duration', '?')} ms"
    )


def read_timing(report_dir: str) -> dict[str, str]:
    """The key=value lines run.sh writes to timing.txt (empty when the index came from elsewhere)."""
    try:
        with open(os.path.join(report_dir, "timing.txt")) as f:
            return dict(line.strip().partition("=")[::2] for line in f if "=" in line)
    except OSError:
        return {}


def describe_timing(timing: dict[str, str]) -> str:
    """' in 201.3 s (CPU: wstest 150.2 s, peer 40.1 s; load 1.2 0.9 0.8)', or '' without timing."""
    if "elapsed_seconds" not in timing:
        return ""
    text = f" in {timing['elapsed_seconds']} s"
    if "wstest_cpu_seconds" in timing:
        text += f" (CPU: wstest {timing['wstest_cpu_seconds']} s, peer {timing.get('peer_cpu_seconds', '?')} s"
        text += f"; load {timing.get('loadavg', '?')})"
    return text


def print_summary(summary: AgentSummary, details: dict[str, str], timing: str) -> None:
    """Human-readable report for one agent."""
    print(f"agent {summary.agent}: {summary.total} cases{timing}")
    names = list(BEHAVIORS) + sorted(set(summary.counts) - set(BEHAVIORS))
    print("  " + "  ".join(f"{name}={summary.counts.get(name, 0)}" for name in names))
    close = "  ".join(f"{name}={count}" for name, count in sorted(summary.close_counts.items()))
    print(f"  closing behavior: {close}")
    for behavior in names:
        if behavior in ("OK", "UNIMPLEMENTED") or not summary.cases.get(behavior):
            continue
        print(f"  {behavior}:")
        for section, ids in group_by_section(summary.cases[behavior]).items():
            print(f"    {section}: {' '.join(ids)}")
            for case_id in ids:
                if case_id in details:
                    print(f"      {case_id}: {details[case_id]}")
    if summary.cases.get("UNIMPLEMENTED"):
        sections = sorted({c.split(".")[0] for c in summary.cases["UNIMPLEMENTED"]}, key=int)
        print(f"  UNIMPLEMENTED sections: {', '.join(sections)}")
    if summary.unclean:
        print(f"  unclean close: {' '.join(summary.unclean)}")


def check_gates(summary: AgentSummary, args: argparse.Namespace) -> list[str]:
    """Messages for every threshold the counts violate (empty when all are met)."""
    problems: list[str] = []
    failed = len(summary.failed)
    limits = (
        ("OK", summary.counts["OK"], args.min_ok, None),
        ("FAILED", failed, None, args.max_failed),
        ("NON-STRICT", summary.counts["NON-STRICT"], None, args.max_non_strict),
        ("UNIMPLEMENTED", summary.counts["UNIMPLEMENTED"], None, args.max_unimplemented),
        ("unclean closes", len(summary.unclean), None, args.max_unclean),
    )
    for name, count, minimum, maximum in limits:
        if minimum is not None and count < minimum:
            problems.append(f"{summary.agent}: {name} = {count}, expected at least {minimum}")
        if maximum is not None and count > maximum:
            problems.append(f"{summary.agent}: {name} = {count}, expected at most {maximum}")
    if args.allow_failed is not None:
        allowed = [p.strip() for p in args.allow_failed.split(",") if p.strip()]
        unexpected = [c for c in summary.failed if not any(fnmatch.fnmatchcase(c, p) for p in allowed)]
        if unexpected:
            problems.append(f"{summary.agent}: failures not in --allow-failed: {' '.join(unexpected)}")
    return problems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line: index path, agent filter, output options, thresholds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", help="index.json written by wstest, or the directory that holds it")
    parser.add_argument("--agent", help="only this agent (default: every agent in the index)")
    parser.add_argument("--details", action="store_true", help="print wstest's reason for each non-OK case")
    parser.add_argument("--json", action="store_true", help="print counts and failing ids as JSON instead")
    gates = parser.add_argument_group("gates (exit 1 when violated; none by default)")
    gates.add_argument("--min-ok", type=int, help="at least this many OK cases")
    gates.add_argument("--max-failed", type=int, help="at most this many failing cases (FAILED or unknown)")
    gates.add_argument("--max-non-strict", type=int, help="at most this many NON-STRICT cases")
    gates.add_argument("--max-unimplemented", type=int, help="at most this many UNIMPLEMENTED cases")
    gates.add_argument("--max-unclean", type=int, help="at most this many cases with an unclean close")
    gates.add_argument(
        "--allow-failed", metavar="PATTERNS", help="comma-separated ids/patterns that may fail; any other fails"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the summary; return 1 if a gate failed, 2 if the index is unusable."""
    args = parse_args(argv)
    path = os.path.join(args.index, "index.json") if os.path.isdir(args.index) else args.index
    try:
        with open(path) as f:
            index = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"summarize.py: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    agents = [args.agent] if args.agent else sorted(index)
    missing = [a for a in agents if a not in index]
    if missing or not agents:
        print(f"summarize.py: agent(s) {missing or '(none)'} not in {path}; found {sorted(index)}", file=sys.stderr)
        return 2
    report_dir = os.path.dirname(os.path.abspath(path))
    timing = read_timing(report_dir)

    problems: list[str] = []
    output: dict[str, Any] = {}
    for agent in agents:
        summary = summarize(index, agent)
        problems += check_gates(summary, args)
        if args.json:
            output[agent] = {
                "total": summary.total,
                "counts": dict(summary.counts),
                "close_counts": dict(summary.close_counts),
                "failed": summary.failed,
                "non_strict": summary.cases.get("NON-STRICT", []),
                "unclean": summary.unclean,
                "timing": timing,
            }
            continue
        details: dict[str, str] = {}
        if args.details:
            for behavior, ids in summary.cases.items():
                if behavior not in ("OK", "UNIMPLEMENTED"):
                    details.update({c: case_detail(report_dir, index[agent], c) for c in ids})
        print_summary(summary, details, describe_timing(timing))
    if args.json:
        print(json.dumps(output, indent=2))
    for problem in problems:
        print(f"GATE FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
