"""Written-out search before a GeneralPoints answer: a long chain of thought in miniature.

The expert states the number each card counts as under the stated rule, tries formulas that miss the
target (each with its exact value, so why it fails is plain), then writes its answer's formula; the
JSON answer follows the closing tag, and the verifier reads only what follows it
(:func:`services.verifier.answer_text.answer_after_reasoning`). In a revision demonstration the wrong
first attempt reasons the same way and ends in its wrong formula, claimed to reach the target: the
honest arithmetic slip the environment's feedback then corrects. The tried formulas depend on the hand
alone, so a demonstration is the same however often it is written.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np

from services.verifier.answer_text import THINK_CLOSE, THINK_OPEN
from services.verifier.general_points import GPTask
from services.verifier.points_solver import random_formula

Reasoning = Literal["none", "short", "long"]
CANDIDATES: dict[str, int] = {"none": 0, "short": 2, "long": 6}  # formulas tried before the answer
REQUEST = f"Reason in {THINK_OPEN}{THINK_CLOSE} first: try formulas, then answer."


def _shown(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def near_misses(task: GPTask, count: int, besides: str = "") -> list[tuple[str, Fraction]]:
    """``count`` distinct formulas over the hand's numbers that miss the target, with their values,
    the farthest from the target first; never ``besides`` (the answer's own formula)."""
    rng = np.random.default_rng([*task.numbers, task.target])
    found: dict[str, Fraction] = {}
    for _ in range(64 * count):
        if len(found) == count:
            break
        drawn = random_formula(task.numbers, rng)
        if drawn is not None and drawn[1] != task.target and drawn[0] != besides:
            found.setdefault(*drawn)
    # farthest first: the search closes in on the target, as a person's would
    return sorted(found.items(), key=lambda item: -abs(item[1] - task.target))


def reasoning_text(task: GPTask, formula: str, length: str) -> str:
    """The reasoning block that ends in ``formula`` (the one the answer gives, right or, in a revision
    demonstration's first attempt, wrong); "" for ``none``."""
    count = CANDIDATES[length]
    if count == 0:
        return ""
    stated = task.stated_numbers or task.numbers
    lines = [f"cards {' '.join(task.cards)}: number {' '.join(map(str, stated))}."]
    lines += [f"{tried}={_shown(value)} no." for tried, value in near_misses(task, count, formula)]
    lines.append(f"{formula}={task.target} yes.")
    return THINK_OPEN + " ".join(lines) + THINK_CLOSE
