"""A study's figures pooled over its seeds, with 95% intervals, and the answers to its questions.

Runs come from :func:`deploy.studies.report.collect_runs`; runs of the same arm (one per seed) form an arm.
A rate is pooled over the episodes of every seed (Wilson interval); a question's difference between
two arms is bootstrapped over seeds and episodes (:func:`deploy.studies.intervals.bootstrap_rate_difference`),
paired by seed when both arms ran the same seeds (they share each seed's start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.studies.intervals import Interval, bootstrap_rate_difference, wilson

# the count each rate is a share of, as evaluation records write it
DENOMINATORS = {
    "success": "episodes",
    "adherence": "answers",
    "adherence_training": "answers",
    "accuracy": "items",
}


@dataclass
class Arm:
    """One arm of a study (or one plain run): its runs, one per seed, in seed order. ``key`` is unique
    across the studies of one report (study folder and arm name); ``name`` is the arm's own name."""

    key: str
    name: str
    label: str
    kind: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.get("seed", 0) for r in self.runs]

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [r.get("final") or {} for r in self.runs]


def group_arms(runs: list[dict[str, Any]]) -> list[Arm]:
    """Runs of the same arm of the same study (plain runs are arms of their own), in first-seen order."""
    arms: dict[str, Arm] = {}
    for run in runs:
        name = run.get("arm") or Path(run["dir"]).name
        key = f"{run['study']}/{name}" if "study" in run else run["dir"]
        arm = arms.setdefault(key, Arm(key, name, run["label"], run["kind"]))
        arm.runs.append(run)
    for arm in arms.values():
        arm.runs.sort(key=lambda r: r.get("seed", 0))
    return list(arms.values())


def counts(record: dict[str, Any], metric: str, suite: str) -> tuple[int, int] | None:
    """``(successes, n)`` behind ``metric/suite`` of one evaluation record; None when it lacks the count
    or the metric is not a rate."""
    if metric not in DENOMINATORS:
        return None
    value = record.get(f"{metric}/{suite}")
    n = record.get(f"{DENOMINATORS.get(metric, 'episodes')}/{suite}")
    if not isinstance(value, (int, float)) or not isinstance(n, (int, float)) or n <= 0:
        return None
    return round(value * n), int(n)


def pooled(records: list[dict[str, Any]], metric: str, suite: str) -> Interval | None:
    """The rate over every record's episodes with its Wilson interval (None without counts)."""
    found = [counts(r, metric, suite) for r in records]
    if not found or any(c is None for c in found):
        return None
    k = sum(c[0] for c in found if c)
    n = sum(c[1] for c in found if c)
    return wilson(k, n)


def mean_value(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def curve(arm: Arm, metric: str, suite: str) -> list[tuple[float, float, Interval | None]]:
    """The arm's i-th evaluations pooled over seeds: (mean GFLOPs, mean rate, interval or None)."""
    evals = [r.get("evals") or [] for r in arm.runs]
    points = []
    for i in range(min(len(e) for e in evals) if evals else 0):
        at = [e[i] for e in evals]
        if all(not r.get("flops") for r in at):  # nothing trained yet: every seed played the same model
            at = at[:1]
        value = mean_value(at, f"{metric}/{suite}")
        if value is None:
            continue
        gflops = (mean_value(at, "flops") or 0.0) / 1e9
        points.append((gflops, value, pooled(at, metric, suite) if metric in DENOMINATORS else None))
    return points


def difference(a: Arm, b: Arm, metric: str, suite: str) -> Interval | None:
    """``metric`` on ``suite``: arm ``a`` minus arm ``b`` over their final evaluations, bootstrapped."""
    ca = [counts(f, metric, suite) for f in a.finals]
    cb = [counts(f, metric, suite) for f in b.finals]
    if not ca or not cb or None in ca or None in cb:
        return None
    paired = a.seeds == b.seeds
    return bootstrap_rate_difference(ca, cb, paired=paired)  # type: ignore[arg-type]


def answer(question: dict[str, Any], arms: list[Arm]) -> tuple[str, Interval | None]:
    """One sentence answering a study question from its arms' final evaluations."""
    study = question.get("study")  # the study folder it came from (a report may hold several)
    by_name = {arm.name: arm for arm in arms if study is None or arm.key == f"{study}/{arm.name}"}
    metric, suite = question.get("metric", "success"), question.get("suite", "id")
    a, b = by_name.get(question["a"]), by_name.get(question["b"])
    if a is None or b is None:
        return (
            f"{question['text']} Not answered: arm {question['a'] if a is None else question['b']} has no runs.",
            None,
        )
    what = f"{metric} on {suite}, {a.label} minus {b.label}"
    found = difference(a, b, metric, suite)
    if found is None:
        return f"{question['text']} Not answered: the evaluations of {what} carry no episode counts.", None
    seeds = (f"{len(a.runs)} and {len(b.runs)} seeds" if len(a.runs) != len(b.runs)
             else f"{len(a.runs)} seed{'s' if len(a.runs) > 1 else ''}")  # fmt: skip
    return f"{question['text']} {found.verdict(what[0].upper() + what[1:] + f' ({seeds})')}", found


def cell(interval: Interval | None, value: Any = None) -> str:
    """``45.3% (41.0-49.6)``; a bare rate when there is no interval; ``-`` when nothing."""
    if interval is not None:
        return f"{interval.estimate:.1%} ({interval.low:.1%}–{interval.high:.1%})"
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"
