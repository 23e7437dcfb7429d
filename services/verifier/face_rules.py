"""Face-card rules of GeneralPoints as data: the values J, Q and K count as.

Paper 1 names two rules: J, Q, K = 10 (the training rule) and J, Q, K = 11, 12, 13 (rule OOD). A
rule here is any triple of values, written as a name (``as_10``, ``as_11_12_13``), as explicit
values (``"4,7,2"`` or ``"J=4,Q=7,K=2"``), or ``"random"``: values drawn per episode from a range,
with named rules held out. Every rule is stated in words in the prompt, so a model can read it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

FaceValues = tuple[int, int, int]  # the values of J, Q, K

NAMED_RULES: dict[str, FaceValues] = {"as_10": (10, 10, 10), "as_11_12_13": (11, 12, 13)}
TRAINING_RULE = "as_10"  # the rule paper 1 trains on; adherence to it is measured on other rules
RANDOM = "random"
MIN_VALUE, MAX_VALUE = 1, 13  # ranks A..K: a drawn rule maps faces onto values a hand can hold
_EXPLICIT = re.compile(
    r"^\s*(?:J\s*=\s*)?(\d{1,2})\s*,\s*(?:Q\s*=\s*)?(\d{1,2})\s*,\s*(?:K\s*=\s*)?(\d{1,2})\s*$"
)
MAX_DRAWS = 10_000


def parse_face_rule(rule: object) -> FaceValues | None:
    """The values of a fixed rule; ``None`` for ``"random"``; ValueError for anything else."""
    if isinstance(rule, str):
        text = rule.strip()
        if text == RANDOM:
            return None
        if text in NAMED_RULES:
            return NAMED_RULES[text]
        if len(text) <= 40:
            match = _EXPLICIT.match(text.upper())
            if match:
                return _checked(tuple(int(g) for g in match.groups()))
    elif isinstance(rule, Sequence) and len(rule) == 3 and all(type(v) is int for v in rule):
        return _checked(tuple(rule))
    raise ValueError(
        f"a face-card rule is {', '.join(NAMED_RULES)}, {RANDOM!r}, or three values for J, Q, K such as "
        f"'4,7,2' or 'J=4,Q=7,K=2' (each {MIN_VALUE}..{MAX_VALUE}); got {str(rule)[:60]!r}"
    )


def _checked(values: tuple[int, ...]) -> FaceValues:
    if not all(MIN_VALUE <= v <= MAX_VALUE for v in values):
        raise ValueError(f"face-card values must lie in {MIN_VALUE}..{MAX_VALUE}; got {values}")
    return values[0], values[1], values[2]


def canonical_rule(rule: object) -> str:
    """One spelling per rule: a rule's name if it has one, else ``"J,Q,K"`` values, or ``random``."""
    values = parse_face_rule(rule)
    if values is None:
        return RANDOM
    for name, named in NAMED_RULES.items():
        if named == values:
            return name
    return ",".join(map(str, values))


def rule_text(values: FaceValues) -> str:
    """The rule in words, as the prompt states it."""
    j, q, k = values
    if j == q == k:
        return f"J, Q and K each count as {j}"
    return f"J counts as {j}, Q as {q} and K as {k}"


def draw_face_values(
    rng: np.random.Generator, low: int, high: int, held_out: Iterable[FaceValues], equal_share: float = 0.0
) -> FaceValues:
    """Values for J, Q, K drawn independently and uniformly from ``low..high``, never a held-out rule.

    With ``equal_share`` > 0, that share of draws gives J, Q and K one value: prompts word such rules
    differently ("J, Q and K each count as 10"), and independent draws make them rare (13 of 2,197)."""
    excluded = set(held_out)
    if (high - low + 1) ** 3 <= len(excluded):
        raise ValueError(f"every rule with values in {low}..{high} is held out")
    equal = equal_share > 0 and rng.random() < equal_share  # no draw at 0: the same stream as before
    for _ in range(MAX_DRAWS):
        if equal:
            v = int(rng.integers(low, high + 1))
            values: tuple[int, ...] = (v, v, v)
        else:
            values = tuple(int(v) for v in rng.integers(low, high + 1, size=3))
        if values not in excluded:
            return values[0], values[1], values[2]
    raise ValueError(f"no rule outside the held-out ones found in {MAX_DRAWS} draws")
