"""The figures of a report (PNG), each drawn with its 95% intervals where the runs carry counts.

Every function takes arms (:class:`deploy.studies.stats.Arm`, one or more seeds each), writes one file
under ``out`` and returns its name, or None when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from deploy.studies.intervals import Interval  # noqa: E402
from deploy.studies.stats import Arm, curve, pooled  # noqa: E402

DPI = 110


def _bar_errors(values: list[float], intervals: list[Interval | None]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars (none where a point lacks an interval), clamped at zero:
    a plotted mean over seeds or a bootstrap estimate may lie a little outside its interval, and
    matplotlib refuses negative lengths."""
    lows = [max(0.0, v - i.low) if i else 0.0 for v, i in zip(values, intervals, strict=True)]
    highs = [max(0.0, i.high - v) if i else 0.0 for v, i in zip(values, intervals, strict=True)]
    return [lows, highs]


def _errors(intervals: list[Interval | None], values: list[float]) -> Any:
    """Error bars for a line of points; None when any point lacks an interval."""
    if not intervals or any(i is None for i in intervals):
        return None
    return _bar_errors(values, intervals)


def _save(fig: Any, out: Path, name: str, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> str:
    fig.tight_layout(rect=rect)  # rect: the part of the figure the panels may fill
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return name


def compute_curves(arms: list[Arm], suites: list[str], metric: str, ylabel: str, out: Path, name: str) -> str:
    """``metric`` per suite against training compute, one line per arm (pooled over its seeds)."""
    fig, axes = plt.subplots(1, len(suites), figsize=(4.6 * len(suites), 3.8), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        for arm in arms:
            pts = curve(arm, metric, suite)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            yerr = _errors([p[2] for p in pts], ys) if metric != "reward" else None
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=_legend(arm))
        ax.set_title(suite)
        ax.set_xlabel("training compute (GFLOPs)")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # five-digit GFLOPs labels must not touch
        if metric != "reward":
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(ylabel)
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes[0]), key=lambda hl: len(hl[1]))
    if len(labels) > 4:  # many arms: the legend goes below the panels, off the curves
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)
        return _save(fig, out, name, rect=(0, 0.06 * ((len(labels) + 3) // 4), 1, 1))
    if labels:
        axes[0][-1].legend(handles, labels, fontsize=8)
    return _save(fig, out, name)


def _legend(arm: Arm) -> str:
    return arm.label if len(arm.runs) == 1 else f"{arm.label} ({len(arm.runs)} seeds)"


def final_bars(
    arms: list[Arm], suites: list[str], metric: str, ylabel: str, out: Path, name: str
) -> str | None:
    """The final ``metric`` of every arm per suite, as bars with their 95% intervals."""
    found = [[pooled(arm.finals, metric, s) for s in suites] for arm in arms]
    if not any(i for row in found for i in row):
        return None
    fig, ax = plt.subplots(figsize=(min(12.0, max(5.5, 0.45 * len(suites) * len(arms) + 2)), 3.8))
    width = 0.8 / len(arms)
    for j, (arm, row) in enumerate(zip(arms, found, strict=True)):
        values = [i.estimate if i else 0.0 for i in row]
        ax.bar([k + j * width for k in range(len(suites))], values, width, yerr=_bar_errors(values, row),
               capsize=3, label=_legend(arm))  # fmt: skip
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(suites))], suites)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def question_forest(answers: list[tuple[str, Interval]], out: Path, name: str) -> str | None:
    """Each question's difference between two arms with its 95% interval, against zero."""
    if not answers:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(answers) + 1.4))
    ys = list(range(len(answers)))[::-1]
    values = [a[1].estimate for a in answers]
    ax.errorbar(values, ys, xerr=_errors([a[1] for a in answers], values), fmt="o", capsize=4)
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(ys, [a[0] for a in answers], fontsize=8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("difference (95% interval)")
    return _save(fig, out, name)


def recognition_curves(arms: list[Arm], out: Path, name: str) -> str:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm in arms:
        for suite in sorted(
            {k.split("/", 1)[1] for f in arm.finals for k in f if k.startswith("recognition_accuracy/")}
        ):
            pts = curve(arm, "recognition_accuracy", suite)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{_legend(arm)} {suite}")
    ax.set_xlabel("training compute (GFLOPs)")
    ax.set_ylabel("recognition accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def level_lines(arms: list[Arm], levels: list[str], out: Path, name: str) -> str:
    """Accuracy by difficulty level, one line per arm (as paper 2 draws it), pooled over seeds, with
    Wilson intervals where items were counted; arms are offset a little along x so bars do not hide."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    shift = 0.3 / max(1, len(arms) - 1)
    for j, arm in enumerate(arms):
        records = [r["levels"] for r in arm.runs]
        found = [pooled(records, "accuracy", lv) for lv in levels]
        xs = [k + (j - (len(arms) - 1) / 2) * shift for k in range(len(levels))]
        drawn = [(x, i) for x, i in zip(xs, found, strict=True) if i is not None]
        if not drawn:
            continue
        ys = [i.estimate for _, i in drawn]
        ax.errorbar([x for x, _ in drawn], ys, yerr=_bar_errors(ys, [i for _, i in drawn]), marker="o",
                    capsize=3, label=_legend(arm))  # fmt: skip
    ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel("difficulty level (by the start model's pass rate; L5 hardest)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def merge_curve(ratios: list[float], rows: dict[str, list[Interval | None]], values: dict[str, list[float]],
                method: str, out: Path, name: str) -> str:  # fmt: skip
    """Success of merges at each ratio, one line per suite (pooled over seeds)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for suite, ys in values.items():
        ax.errorbar(ratios, ys, yerr=_errors(rows[suite], ys), marker="o", capsize=3, label=suite)
    ax.set_xlabel(f"share of the second model ({method})")
    ax.set_ylabel("episode success")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def frontier_plot(spec: dict[str, Any], curves: dict[str, list[tuple[Any, Any]]],
                  frontiers: dict[str, list[tuple[float, float]]], out: Path, name: str) -> str:  # fmt: skip
    """Rule-OOD success against ID success: each arm's evaluations pooled over seeds (95% intervals
    both ways), coloured by method, and each method's frontier over those pooled points."""
    ident, ood = spec.get("id_suite", "id"), spec.get("ood_suite", "ood_rule")
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, (method, pairs) in enumerate(curves.items()):
        colour = f"C{i}"
        for xs, ys in pairs:
            xv, yv = [p[1] for p in xs], [p[1] for p in ys]
            ax.errorbar(xv, yv, xerr=_errors([p[2] for p in xs], xv), yerr=_errors([p[2] for p in ys], yv),
                        fmt="o", color=colour, alpha=0.45, markersize=4, capsize=2)  # fmt: skip
        front = frontiers.get(method) or []
        # diamonds: a frontier of one point (one evaluation ahead of the method's others) still shows
        ax.plot([p[0] for p in front], [p[1] for p in front], "-D", color=colour, linewidth=2, markersize=7,
                label=method)  # fmt: skip
    ax.set_xlabel(f"ID success ({ident})")
    ax.set_ylabel(f"rule-OOD success ({ood})")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8)
    return _save(fig, out, name)


def kl_scatter(points: list[Any], fit: tuple[float, float, float], out: Path, name: str) -> str:
    """Each point's rule-OOD change (against the start, same seed) against its KL to the start, by
    method, with the least-squares line and its R^2."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    methods = list(dict.fromkeys(p.method for p in points))
    for i, method in enumerate(methods):
        mine = [p for p in points if p.method == method]
        ax.scatter([p.kl for p in mine], [p.ood_change for p in mine], s=14, color=f"C{i}", label=method)
    xs = sorted(p.kl for p in points)
    ax.plot([xs[0], xs[-1]], [fit[0] * xs[0] + fit[1], fit[0] * xs[-1] + fit[1]], "k--", linewidth=1,
            label=f"line, R^2 {fit[2]:.2f}")  # fmt: skip
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("KL(start || model), nats per token")
    ax.set_ylabel("rule-OOD success minus the start's")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8)
    return _save(fig, out, name)
