"""A report's section on difficulty levels (paper 2): accuracy by level for every arm, with how the
levels were filled (items drawn, episodes, time) and any level left short."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.studies import figures
from deploy.studies.stats import Arm, cell, mean_value, pooled

LEVEL_KEYS = [f"L{i}" for i in range(1, 6)]


def level_section(arms: list[Arm], out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The table and figure of accuracy per level of the arms that were played on tagged items."""
    leveled = [a for a in arms if all("levels" in r for r in a.runs)]
    if not leveled:
        return [], []
    name = figures.level_lines(leveled, LEVEL_KEYS, out, "levels.png")
    lines = ["## Accuracy per level", "", *_fill_lines(leveled),
             "| run | " + " | ".join(LEVEL_KEYS) + " | all |", "|---|" + "---|" * 6]  # fmt: skip
    for arm in leveled:
        records = [r["levels"] for r in arm.runs]
        cells = [f"{cell(pooled(records, 'accuracy', k), mean_value(records, f'accuracy/{k}'))} "
                 f"n={sum(lv.get(f'items/{k}', 0) for lv in records):.0f}" for k in LEVEL_KEYS]  # fmt: skip
        lines.append(
            f"| {arm.label} | " + " | ".join(cells) + f" | {cell(None, mean_value(records, 'accuracy'))} |"
        )
    lines += ["", "n: items per level (all seeds); 95% Wilson intervals over the pooled items.", ""]
    lines += _pick_lines(leveled)
    return lines, [("Accuracy by difficulty level (L1 easiest, L5 hardest; 95% intervals)", name)]


def _fill_lines(arms: list[Arm]) -> list[str]:
    """How each seed's levels were filled, from the first arm whose runs carry it (every arm of a seed
    plays the same tagged items)."""
    fills: dict[int, dict[str, Any]] = {}
    for arm in arms:
        for run in arm.runs:
            if isinstance(run.get("level_fill"), dict):
                fills.setdefault(run.get("seed", 0), run["level_fill"])
    if not fills:
        return []
    lines = []
    for seed, fill in sorted(fills.items()):
        drawn = " ".join(f"{k} {v}" for k, v in (fill.get("drawn_levels") or {}).items())
        lines.append(f"- seed {seed}: {fill.get('drawn')} items drawn and tagged ({drawn}), "
                     f"{fill.get('episodes')} episodes in {fill.get('seconds', 0):.0f} s; "
                     f"{fill.get('per_level')} kept per level")  # fmt: skip
        short = fill.get("short") or []
        if short:
            lines[-1] += (
                f"; short: {', '.join(short)} ({', '.join(str(fill['kept'][k]) for k in short)} kept)"
            )
    head = ("Items are tagged by the start model's pass rate over its samples (paper 2's thresholds), "
            "drawn until every level holds the number asked; every arm of a seed plays the same items")  # fmt: skip
    options = {k: v for fill in fills.values() for k, v in (fill.get("options") or {}).items()}
    said = ", ".join(f"{k}={v}" for k, v in options.items())
    head += f", with {said} over the suite's environment options." if options else "."
    return [head, "", *lines, ""]


def _pick_lines(arms: list[Arm]) -> list[str]:
    """What each pick arm chose per seed, and by what success (on other tasks than the items)."""
    lines = []
    for arm in arms:
        picks = [(r.get("seed", 0), r["picked"]) for r in arm.runs if isinstance(r.get("picked"), dict)]
        if picks:
            said = "; ".join(f"seed {seed}: {p.get('picked')} ({p.get('value', 0):.1%} on {p.get('suite')})"
                             for seed, p in picks)  # fmt: skip
            lines.append(f"- {arm.label} picked, by success on its suite's evaluation: {said}.")
    return lines + [""] if lines else []
