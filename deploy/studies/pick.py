"""Pick arms: per seed, the best of several earlier arms by success on one suite, played on the
study's tagged items.

A candidate is a training arm's final checkpoint, or one merge of a sweep arm (its ratios strictly
between 0 and 1 by default: the end points are the models merged, not merges). "The best merge minus
the better single method" is then a question between two pick arms. The choice is made on the sweep's
and the arms' own evaluation (the ID suite's tasks) and the pick arms are compared on the tagged
items, other tasks, so the choice does not flatter the comparison with its own noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from sftrl.config import StrictModel
from sftrl.files import write_atomic

PICKED_FILE = "picked.json"


class PickConfig(StrictModel):
    among: list[str] = Field(min_length=1, description="earlier training or merge-sweep arms (names)")
    suite: str = Field("id", description="the suite whose success chooses")
    interior_only: bool = Field(True, description="merges at ratios strictly between 0 and 1 only")


@dataclass(frozen=True)
class Candidate:
    arm: str
    ratio: float | None  # a merge's ratio; None: a training arm's final checkpoint
    value: float  # success on the choosing suite

    def describe(self) -> str:
        return self.arm if self.ratio is None else f"{self.arm} at ratio {self.ratio:g}"


def sweep_candidates(arm: str, sweep: dict[str, Any], suite: str, interior_only: bool) -> list[Candidate]:
    """The merges of one sweep (its ``sweep.json``) with their success on ``suite``."""
    found = []
    for row in sweep.get("rows", []):
        ratio, value = row.get("ratio"), row.get(f"success/{suite}")
        if not isinstance(ratio, int | float) or not isinstance(value, int | float):
            continue
        if interior_only and not 0.0 < ratio < 1.0:
            continue
        found.append(Candidate(arm, float(ratio), float(value)))
    return found


def best(candidates: list[Candidate]) -> Candidate:
    """The highest success; on a tie, the first listed (the recipe's order, then the sweep's)."""
    if not candidates:
        raise ValueError("nothing to pick from: no candidate has success on the choosing suite")
    return max(candidates, key=lambda c: c.value)  # max keeps the first of equals


def write_picked(folder: Path, choice: Candidate, candidates: list[Candidate], suite: str) -> None:
    record = {"picked": choice.describe(), "arm": choice.arm, "ratio": choice.ratio, "value": choice.value,
              "suite": suite, "candidates": [{"name": c.describe(), "value": c.value} for c in candidates]}  # fmt: skip
    write_atomic(folder / PICKED_FILE, json.dumps(record, indent=1))
