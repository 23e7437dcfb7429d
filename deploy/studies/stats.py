"""A study's figures pooled over its seeds, with 95% intervals, and the answers to its questions.

Runs come from :func:`deploy.studies.report.collect_runs`; runs of the same arm (one per seed) form an arm.
A rate is pooled over the episodes of every seed (Wilson interval). A question's difference between two
arms is paired by seed (both arms' seed k share a start) and by task (both play the same tasks) where
their final evaluations logged per-episode outcomes (:func:`deploy.studies.intervals.paired_difference`);
runs made before that fall back to t over the per-seed differences, or, with one seed or unpaired
seeds, a bootstrap over seeds and episodes. Each answer says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.studies.intervals import (
    Interval,
    bootstrap_rate_difference,
    paired_difference,
    seed_difference,
    wilson,
)

METRIC_WORDS = {"first_answer": "first-answer success", "recognition": "recognition (all four cards)"}
# question metrics that are a field of first answers (GeneralPoints): the first answer alone right
# (its formula reaches the target), and all four cards named
FIELD_METRICS = {"first_answer": "formula_correct", "recognition": "cards"}

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
    if metric in FIELD_METRICS:  # a share of first answers, read from their field
        value, n = record.get(f"field/{suite}/{FIELD_METRICS[metric]}"), record.get(f"answers/{suite}")
    elif metric in DENOMINATORS:
        value, n = record.get(f"{metric}/{suite}"), record.get(f"{DENOMINATORS[metric]}/{suite}")
    else:
        return None
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


def outcomes(record: dict[str, Any], suite: str) -> dict[Any, float] | None:
    """Task -> success of one evaluation record's episodes on ``suite``; None where it has none."""
    found = ((record.get("outcomes") or {}).get("suites") or {}).get(suite)
    tasks, success = (found.get("task"), found.get("success")) if isinstance(found, dict) else (None, None)
    if (
        not isinstance(tasks, list)
        or not isinstance(success, list)
        or len(tasks) != len(success)
        or not tasks
    ):
        return None
    return {task: float(won) for task, won in zip(tasks, success, strict=True) if isinstance(task, int | str)}


def final_records(arm: Arm, metric: str) -> list[dict[str, Any]]:
    """Per seed, the record ``metric`` is read from: accuracy per difficulty level (``suite`` L1..L5 or
    ``all``) from the arm's levels, every other metric from its final evaluation."""
    if metric == "accuracy":
        return [_with_overall(r.get("levels") or {}) for r in arm.runs]
    return arm.finals


def _with_overall(levels: dict[str, Any]) -> dict[str, Any]:
    """A levels record with its overall accuracy under the per-level keys' pattern (``accuracy/all``)."""
    n = sum(v for k, v in levels.items() if k.startswith("items/") and isinstance(v, int | float))
    if isinstance(levels.get("accuracy"), int | float) and n:
        return {**levels, "accuracy/all": levels["accuracy"], "items/all": n}
    return levels


def difference(a: Arm, b: Arm, metric: str, suite: str) -> tuple[Interval, str] | None:
    """``metric`` on ``suite``: arm ``a`` minus arm ``b`` over their final evaluations (their levels for
    ``accuracy``), and how its interval was drawn: paired by seed and task from per-episode outcomes
    (success), else t over the per-seed differences (paired seeds), else a bootstrap over seeds and
    episodes."""
    ca = [counts(f, metric, suite) for f in final_records(a, metric)]
    cb = [counts(f, metric, suite) for f in final_records(b, metric)]
    if not ca or not cb or None in ca or None in cb:
        return None
    paired = a.seeds == b.seeds
    if metric == "success" and (paired or 1 in (len(a.runs), len(b.runs))):
        oa, ob = [outcomes(f, suite) for f in a.finals], [outcomes(f, suite) for f in b.finals]
        if None not in oa and None not in ob:
            try:
                return paired_difference(oa, ob), "paired by seed and task"  # type: ignore[arg-type]
            except ValueError:  # e.g. no task in common: the arms were evaluated on different tasks
                pass
    if paired and len(a.runs) > 1:
        rates = [[k / n for k, n in c] for c in (ca, cb)]  # type: ignore[misc]
        return seed_difference(*rates), "t over the seeds' differences"
    return bootstrap_rate_difference(ca, cb, paired=paired), "bootstrap over seeds and episodes"  # type: ignore[arg-type]


def arms_of(arms: list[Arm], study: str | None) -> dict[str, Arm]:
    """The arms of one study folder by their own names (``None``: every arm, for a one-study report)."""
    return {arm.name: arm for arm in arms if study is None or arm.key == f"{study}/{arm.name}"}


def answer(question: dict[str, Any], arms: list[Arm]) -> tuple[str, Interval | None]:
    """One sentence answering a study question from its arms' final evaluations."""
    by_name = arms_of(arms, question.get("study"))  # the study folder it came from
    metric, suite = question.get("metric", "success"), question.get("suite", "id")
    a, b = by_name.get(question["a"]), by_name.get(question["b"])
    if a is None or b is None:
        return (
            f"{question['text']} Not answered: arm {question['a'] if a is None else question['b']} has no runs.",
            None,
        )
    what = f"{METRIC_WORDS.get(metric, metric)} on {suite}, {a.label} minus {b.label}"
    found = difference(a, b, metric, suite)
    if found is None:
        return f"{question['text']} Not answered: the evaluations of {what} carry no episode counts.", None
    interval, method = found
    seeds = (f"{len(a.runs)} and {len(b.runs)} seeds" if len(a.runs) != len(b.runs)
             else f"{len(a.runs)} seed{'s' if len(a.runs) > 1 else ''}")  # fmt: skip
    return (
        f"{question['text']} {interval.verdict(what[0].upper() + what[1:] + f' ({seeds}; {method})')}",
        interval,
    )


def cell(interval: Interval | None, value: Any = None) -> str:
    """``45.3% (41.0-49.6)``; a bare rate when there is no interval; ``-`` when nothing."""
    if interval is not None:
        return f"{interval.estimate:.1%} ({interval.low:.1%}–{interval.high:.1%})"
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"
