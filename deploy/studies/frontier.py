"""Frontiers in the manner of *RL's Razor* (arXiv 2509.04259): rule-OOD success against ID success.

A frontier study trains several methods from the same start, each at several learning rates, and
evaluates along training. Every evaluation is a point (ID success, rule-OOD success, KL to the start).
A method's frontier is the upper envelope of its points: for each ID success, the best rule-OOD
success any of its learning rates and steps reached. Two questions, written in the recipe:

- At the ID success every method reaches (the lowest of the methods' best), read off each frontier by
  linear interpolation, what is RL minus SFT on rule-OOD success? Per seed, then Student's t over
  the seeds' differences.
- Does KL to the start predict the rule-OOD change across all points (a line, its R^2) better than the
  method does (the share of the change's variance the methods' means explain)?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.studies.intervals import mean_interval
from deploy.studies.stats import Arm, arms_of, curve


@dataclass(frozen=True)
class Point:
    """One evaluation of one arm in one seed."""

    method: str
    arm: str
    seed: int
    id_success: float
    ood_success: float
    kl: float | None = None
    ood_change: float | None = None  # rule-OOD success minus the start's, in the same seed


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-right envelope of (x, y) points, sorted by x: each kept point has the highest y of
    all points with x at least its own (no other point is both further right and higher)."""
    kept: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not kept or y > kept[-1][1]:
            kept.append((x, y))
    return sorted(kept)


def value_at(frontier: Sequence[tuple[float, float]], x: float) -> float | None:
    """The frontier's y at ``x``: the best y reached at an x of at least ``x``, interpolated linearly
    between the frontier's points; None when the frontier never reaches ``x``."""
    if not frontier or x > frontier[-1][0]:
        return None
    if x <= frontier[0][0]:
        return frontier[0][1]
    for (x0, y0), (x1, y1) in zip(frontier, frontier[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None  # unreachable: x lies within the frontier's range


def common_id(frontiers: dict[str, Sequence[tuple[float, float]]]) -> float:
    """The highest ID success every method's frontier reaches."""
    reached = [f[-1][0] for f in frontiers.values() if f]
    if len(reached) != len(frontiers) or not reached:
        raise ValueError("every method needs at least one point")
    return min(reached)


def line_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """Least squares ``y = slope * x + intercept``: (slope, intercept, R^2)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(xs) < 3 or float(np.ptp(xs)) == 0:
        raise ValueError("a line needs at least 3 points with different x")
    slope, intercept = np.polyfit(xs, ys, 1)
    total = float(((ys - ys.mean()) ** 2).sum())
    resid = float(((ys - (slope * xs + intercept)) ** 2).sum())
    return float(slope), float(intercept), (1.0 - resid / total) if total > 0 else 1.0


def method_r2(groups: dict[str, Sequence[float]]) -> float:
    """The share of the variance of all values that the groups' means explain (one-way ANOVA R^2)."""
    values = np.concatenate([np.asarray(v, dtype=float) for v in groups.values() if len(v)])
    total = float(((values - values.mean()) ** 2).sum())
    if total == 0:
        return 1.0
    within = sum(float(((np.asarray(v) - np.mean(v)) ** 2).sum()) for v in groups.values() if len(v))
    return 1.0 - within / total


def frontiers_of(points: Sequence[Point]) -> dict[str, list[tuple[float, float]]]:
    """Each method's frontier over its points (of every seed given)."""
    methods: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        methods.setdefault(p.method, []).append((p.id_success, p.ood_success))
    return {m: pareto_frontier(pts) for m, pts in methods.items()}


def matched_differences(points: Sequence[Point], a: str, b: str) -> tuple[float, list[float]]:
    """Per seed, method ``a`` minus method ``b`` on rule-OOD success at the ID success both methods
    reach in every seed (the lowest of the per-seed common IDs); that ID and the differences."""
    seeds = sorted({p.seed for p in points})
    per_seed = {s: frontiers_of([p for p in points if p.seed == s and p.method in (a, b)]) for s in seeds}
    if any(set(f) != {a, b} for f in per_seed.values()):
        raise ValueError(f"every seed needs points of both {a} and {b}")
    x = min(common_id(f) for f in per_seed.values())
    diffs = []
    for f in per_seed.values():
        ya, yb = value_at(f[a], x), value_at(f[b], x)
        assert ya is not None and yb is not None  # x is reached by both in every seed
        diffs.append(ya - yb)
    return x, diffs


# -- in a report ---------------------------------------------------------------------------------------


def frontier_points(spec: dict[str, Any], arms: list[Arm], study: str | None) -> list[Point]:
    """Every evaluation of the spec's method arms, per seed; an arm's first point (the start, before
    any step of its own) has KL 0. The rule-OOD change is against the start arm's final evaluation in
    the same seed."""
    by_name = arms_of(arms, study)
    ident, ood = f"success/{spec.get('id_suite', 'id')}", f"success/{spec.get('ood_suite', 'ood_rule')}"
    start = by_name.get(spec["start"])
    start_ood = (
        {} if start is None else {s: f.get(ood) for s, f in zip(start.seeds, start.finals, strict=True)}
    )
    points = []
    for method, names in spec["methods"].items():
        for arm in (by_name[n] for n in names if n in by_name):
            for run in arm.runs:
                seed = run.get("seed", 0)
                for e in run.get("evals") or []:
                    x, y = e.get(ident), e.get(ood)
                    if not isinstance(x, int | float) or not isinstance(y, int | float):
                        continue
                    kl = 0.0 if e.get("global_step") == 0 else e.get("kl/start")
                    base = start_ood.get(seed)
                    points.append(Point(method, arm.name, seed, x, y, kl if isinstance(kl, int | float) else None,
                                        y - base if isinstance(base, int | float) else None))  # fmt: skip
    return points


Curve = list[tuple[float, float, Any]]  # (GFLOPs, rate, interval) per evaluation, pooled over seeds


def pooled_curves(
    spec: dict[str, Any], arms: list[Arm], study: str | None
) -> dict[str, list[tuple[Curve, Curve]]]:
    """Each method's arms as (ID curve, rule-OOD curve) pairs, their evaluations pooled over seeds."""
    by_name = arms_of(arms, study)
    ident, ood = spec.get("id_suite", "id"), spec.get("ood_suite", "ood_rule")
    out: dict[str, list[tuple[Curve, Curve]]] = {}
    for method, names in spec["methods"].items():
        pairs = [
            (curve(a, "success", ident), curve(a, "success", ood))
            for a in (by_name[n] for n in names if n in by_name)
        ]
        out[method] = [(xs, ys) for xs, ys in pairs if xs and len(xs) == len(ys)]
    return out


def pooled_frontiers(curves: dict[str, list[tuple[Curve, Curve]]]) -> dict[str, list[tuple[float, float]]]:
    """Each method's frontier over its pooled evaluations (what the figure draws: the envelope of
    every seed's points would follow the luckiest seed)."""
    return {
        method: pareto_frontier([(x[1], y[1]) for xs, ys in pairs for x, y in zip(xs, ys, strict=True)])
        for method, pairs in curves.items()
    }


def frontier_section(spec: dict[str, Any], arms: list[Arm], study: str | None,
                     out: Path) -> tuple[list[str], list[tuple[str, str]], dict[str, Any]]:  # fmt: skip
    """The report's frontier section: its figures, the two answers in words, and their numbers."""
    from deploy.studies import figures

    points = frontier_points(spec, arms, study)
    if not points:
        return [], [], {}
    a, b = spec["compare"]
    lines = ["## Frontiers: rule-OOD success against ID success", "",
             "Every evaluation of every learning rate is a point; a method's frontier is the best rule-OOD "
             "success it reached at each ID success or above (`deploy/studies/frontier.py`). The figure draws it "
             "over the evaluations pooled over seeds; the matched difference reads each seed's own.", ""]  # fmt: skip
    numbers: dict[str, Any] = {}
    try:
        x, diffs = matched_differences(points, a, b)
    except ValueError as exc:
        lines.append(f"- {a} minus {b} at matched ID success: not answered ({exc}).")
    else:
        numbers["matched"] = {"id_success": x, "per_seed": diffs}
        seeds = f"{len(diffs)} seeds; t over the seeds" if len(diffs) > 1 else "1 seed"
        what = f"Rule-OOD success at ID success {x:.1%}, {a} minus {b} ({seeds})"
        if len(diffs) > 1:
            found = mean_interval(diffs)
            numbers["matched"]["interval"] = vars(found)
            lines.append(f"- {found.verdict(what)}")
        else:
            lines.append(f"- {what}: {diffs[0]:+.1%} (one seed: no interval).")
    with_kl = [p for p in points if p.kl is not None and p.ood_change is not None]
    fit = None
    if len({p.kl for p in with_kl}) >= 3:
        fit = line_fit([p.kl for p in with_kl], [p.ood_change for p in with_kl])  # type: ignore[misc]
        groups: dict[str, list[float]] = {}
        for p in with_kl:
            groups.setdefault(p.method, []).append(p.ood_change)  # type: ignore[arg-type]
        by_method = method_r2(groups)
        numbers["kl"] = {"slope": fit[0], "intercept": fit[1], "r2": fit[2], "method_r2": by_method,
                         "points": len(with_kl)}  # fmt: skip
        better = "better than" if fit[2] > by_method else "no better than"
        lines.append(f"- KL to the start predicts the rule-OOD change across {len(with_kl)} points {better} the "
                     f"method does: R^2 {fit[2]:.2f} for the line (slope {fit[0]:+.3f} per nat per token) "
                     f"against {by_method:.2f} for the methods' means.")  # fmt: skip
    lines.append("")
    curves = pooled_curves(spec, arms, study)
    drawn = [("Rule-OOD success against ID success, one frontier per method (95% intervals)",
              figures.frontier_plot(spec, curves, pooled_frontiers(curves), out, "frontier.png"))]  # fmt: skip
    if fit is not None:
        drawn.append(
            (
                "Rule-OOD change against KL to the start, every point",
                figures.kl_scatter(with_kl, fit, out, "kl_vs_ood.png"),
            )
        )
    return lines, drawn, numbers
