"""The GeneralPoints verifier: a pure function of (task, answer text) -> :class:`Verdict`.

Reward per attempt (paper 1; kinds are summed where several apply):

    correct solution                                         +5
    unfinished formula that is the start of a solution       +1
    valid numbers, but the value is not the target           -1
    wrong card recognition (image mode; checked first)       -1.5
    numbers not on the cards / used too often / unused       -2 for each kind
    not JSON, missing or malformed formula, illegal chars    -3

Running out of attempts (-1) is the environment's business, not the verifier's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.verifier.answer_text import extract_json_object, get_str_field
from services.verifier.face_rules import FaceValues, parse_face_rule
from services.verifier.formula import FormulaError, illegal_characters, parse_formula
from services.verifier.points_solver import is_prefix_of_solution
from services.verifier.types import Verdict

CARD_NAMES: tuple[str, ...] = ("A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K")
FaceCardRule = str  # a rule as services.verifier.face_rules reads it: "as_10", "4,7,2", ...

REWARD_CORRECT = 5.0
REWARD_PARTIAL = 1.0
REWARD_WRONG_VALUE = -1.0
REWARD_WRONG_RECOGNITION = -1.5
REWARD_NUMBER_FAULT = -2.0
REWARD_MALFORMED = -3.0
REWARD_EXHAUSTED = -1.0

_NAME_ALIASES = {
    "a": "A", "ace": "A", "1": "A",
    "j": "J", "jack": "J", "q": "Q", "queen": "Q", "k": "K", "king": "K",
    **{str(n): str(n) for n in range(2, 11)},
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "t": "10",
}  # fmt: skip


def card_value(name: str, face_cards: FaceCardRule | FaceValues) -> int:
    """The number a card counts as under a rule (A = 1, 2..10 their number, J, Q, K by the rule)."""
    index = CARD_NAMES.index(name)
    if index < 10:
        return index + 1
    values = face_cards if isinstance(face_cards, tuple) else parse_face_rule(face_cards)
    if values is None:
        raise ValueError("a card's value needs a fixed rule; 'random' is drawn per episode")
    return values[index - 10]


def normalise_card_name(raw: object) -> str | None:
    """Read a card name as a model may write it ("Q", "queen", "10 of hearts", 7); None if unknown."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        raw = str(raw)
    if not isinstance(raw, str) or len(raw) > 40:
        return None
    words = raw.strip().lower().replace("-", " ").split()
    return _NAME_ALIASES.get(words[0]) if words else None


@dataclass(frozen=True, slots=True)
class GPTask:
    """One hand of GeneralPoints as the verifier needs it."""

    cards: tuple[str, ...]
    numbers: tuple[int, ...]
    target: int = 24
    check_recognition: bool = False  # image mode: the answer's "cards" must match
    # The numbers under the rule the prompt states (differs from ``numbers`` only in the fake-rule
    # control, where answers are scored by another rule) and under the training rule.
    stated_numbers: tuple[int, ...] | None = None
    training_numbers: tuple[int, ...] | None = None
    suits: tuple[str, ...] = ()  # per card, in order (spades, clubs, hearts, diamonds); () unknown
    extra: dict[str, Any] = field(default_factory=dict, compare=False)


def _recognised_cards(obj: dict[str, Any]) -> list[str | None] | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    raw = lowered.get("cards")
    if isinstance(raw, str):
        raw = [part for part in raw.replace(";", ",").split(",") if part.strip()]
    if not isinstance(raw, list) or len(raw) > 16:
        return None
    return [normalise_card_name(item) for item in raw]


def _fmt(numbers: list[int]) -> str:
    return ", ".join(str(n) for n in numbers)


def _number_faults(cards: Sequence[int], used_numbers: Sequence[int]) -> tuple[list[str], list[str]]:
    """The kinds of number fault of a formula (each costs ``REWARD_NUMBER_FAULT``) and their notes."""
    have, used = Counter(cards), Counter(used_numbers)
    faults = (
        ("numbers_not_on_cards", "these numbers are not on the cards", sorted(n for n in used if n not in have)),
        ("numbers_overused", "these numbers are used more often than the cards allow",
         sorted(n for n in used if n in have and used[n] > have[n])),
        ("numbers_unused", "these card numbers are not used", sorted(n for n in have if used[n] < have[n])),
    )  # fmt: skip
    found = [(error, f"{note}: {_fmt(numbers)}") for error, note, numbers in faults if numbers]
    return [error for error, _ in found], [note for _, note in found]


def verify_general_points(task: GPTask, answer: object) -> Verdict:
    """Score one attempt at ``task``. Never raises, never executes ``answer``."""
    obj, why = extract_json_object(answer)
    if obj is None:
        return Verdict(
            REWARD_MALFORMED, False,
            f"Your answer could not be read: {why}. Reply with one JSON object that has the keys "
            '"cards", "number" and "formula".',
            ("malformed_answer",),
        )  # fmt: skip

    if task.check_recognition:
        seen = _recognised_cards(obj)
        if seen is None or sorted(map(str, seen)) != sorted(task.cards):
            shown = "missing" if seen is None else ", ".join(s or "?" for s in seen)
            return Verdict(
                REWARD_WRONG_RECOGNITION, False,
                f"The cards you recognised ({shown}) are not the cards in the image. Look at the cards again.",
                ("wrong_recognition",), {"recognised": seen},
            )  # fmt: skip

    formula = get_str_field(obj, "formula")
    if formula is None:
        return Verdict(
            REWARD_MALFORMED, False,
            'Your answer has no "formula" string. Put the formula, for example "(1+2)*8=24", under "formula".',
            ("missing_formula",),
        )  # fmt: skip
    formula = formula.split("=", 1)[0]

    bad = illegal_characters(formula)
    if bad:
        return Verdict(
            REWARD_MALFORMED, False,
            f"The formula contains characters that are not allowed: {' '.join(repr(c) for c in bad)}. "
            "Use only the card numbers, + - * / and parentheses.",
            ("illegal_characters",), {"illegal": bad},
        )  # fmt: skip

    try:
        parsed = parse_formula(formula)
    except FormulaError as exc:
        if exc.incomplete and is_prefix_of_solution(formula, task.numbers, task.target):
            return Verdict(
                REWARD_PARTIAL, False,
                "Your formula is the start of a correct solution, but it is not finished.",
                ("incomplete_formula",),
            )  # fmt: skip
        return Verdict(REWARD_MALFORMED, False, f"The formula is malformed: {exc}.", ("malformed_formula",))

    details = {"formula": parsed.text, "numbers_used": list(parsed.numbers)}
    errors, notes = _number_faults(task.numbers, parsed.numbers)
    if errors:
        text = "Each card number must be used exactly once; " + "; ".join(notes) + "."
        return Verdict(REWARD_NUMBER_FAULT * len(errors), False, text, tuple(errors), details)

    if parsed.value is None:
        return Verdict(
            REWARD_WRONG_VALUE, False,
            f"Your formula divides by zero, so it does not reach {task.target}.",
            ("wrong_value",), details,
        )  # fmt: skip
    if parsed.value == task.target:
        return Verdict(REWARD_CORRECT, True, f"Correct: {parsed.text} = {task.target}.", (), details)
    value = parsed.value
    shown = str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return Verdict(
        REWARD_WRONG_VALUE, False,
        f"Your formula uses the right numbers but equals {shown}, not {task.target}.",
        ("wrong_value",), {**details, "value": shown},
    )  # fmt: skip
