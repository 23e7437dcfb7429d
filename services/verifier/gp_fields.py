"""Per-field scores of one GeneralPoints answer: which parts a model got right, not only whether it won.

Episode success hides what a model learned: a model can read the stated rule (its "number" field
follows it) and still miss the arithmetic, or ignore the prompt and apply the rule it was trained
on. These fields tell the two apart. A pure function of (task, answer), like the verifier.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.verifier.answer_text import extract_json_object, get_str_field
from services.verifier.formula import FormulaError, illegal_characters, parse_formula
from services.verifier.general_points import GPTask, normalise_card_name

MAX_LIST = 16  # longer "cards"/"number" lists are not read
COLOURS = {"spades": "black", "clubs": "black", "hearts": "red", "diamonds": "red"}


def _number_list(obj: dict[str, Any]) -> list[int] | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    raw = lowered.get("number", lowered.get("numbers"))
    if not isinstance(raw, list) or len(raw) > MAX_LIST:
        return None
    out: list[int] = []
    for item in raw:
        if isinstance(item, bool):
            return None
        if isinstance(item, int):
            out.append(item)
        elif isinstance(item, str) and item.strip().isdigit() and len(item.strip()) <= 4:
            out.append(int(item.strip()))
        else:
            return None
    return out


def _card_list(obj: dict[str, Any]) -> list[str] | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    raw = lowered.get("cards")
    if not isinstance(raw, list) or len(raw) > MAX_LIST:
        return None
    names = [normalise_card_name(item) for item in raw]
    return None if any(n is None for n in names) else [str(n) for n in names]


def _same(a: list[int] | list[str] | None, b: tuple[Any, ...] | None) -> bool:
    return a is not None and b is not None and Counter(a) == Counter(b)


def _cards_by_colour(task: GPTask) -> dict[str, list[str]]:
    """The hand's cards by suit colour (colours the hand has; none when its suits are unknown)."""
    if len(task.suits) != len(task.cards):
        return {}
    found: dict[str, list[str]] = {}
    for card, suit in zip(task.cards, task.suits, strict=True):
        found.setdefault(COLOURS.get(suit, suit), []).append(card)
    return found


def cards_named(task: GPTask, answer: object) -> int:
    """How many of the hand's cards the answer's "cards" field names (each card once; 0 unreadable)."""
    obj, _ = extract_json_object(answer)
    named = _card_list(obj) if obj is not None else None
    return 0 if named is None else sum((Counter(named) & Counter(task.cards)).values())


def answer_fields(task: GPTask, answer: object) -> dict[str, bool | None]:
    """Which fields of ``answer`` are right; ``None`` where a field does not apply to the task.

    - ``cards``: the "cards" field names the hand's cards
    - ``numbers``: the "number" field holds the hand's numbers under the rule the prompt states
    - ``numbers_training_rule``: it holds them under the training rule instead (only on hands where
      the two rules give different numbers; else ``None``)
    - ``formula_wellformed``: the formula parses completely, with allowed characters only
    - ``formula_correct``: it uses each scored number once and reaches the target
    - ``cards_black`` / ``cards_red``: the "cards" field names every card of that suit colour in the
      hand (``None`` where the hand has none, or its suits are unknown). Answers name ranks only, so
      in a hand holding a rank in both colours one name counts for either colour
    """
    stated = task.stated_numbers or task.numbers
    differs = task.training_numbers is not None and Counter(task.training_numbers) != Counter(stated)
    fields: dict[str, bool | None] = {
        "cards": False,
        "numbers": False,
        "numbers_training_rule": False if differs else None,
        "formula_wellformed": False,
        "formula_correct": False,
    }
    by_colour = _cards_by_colour(task)
    if by_colour:  # suits known: both colours, None for one the hand lacks
        fields.update(
            {f"cards_{colour}": False if colour in by_colour else None for colour in ("black", "red")}
        )
    obj, _ = extract_json_object(answer)
    if obj is None:
        return fields
    numbers = _number_list(obj)
    named = _card_list(obj)
    fields["cards"] = _same(named, task.cards)
    for colour, cards in by_colour.items():
        fields[f"cards_{colour}"] = named is not None and not Counter(cards) - Counter(named)
    fields["numbers"] = _same(numbers, stated)
    if differs:
        fields["numbers_training_rule"] = _same(numbers, task.training_numbers)
    formula = get_str_field(obj, "formula")
    if formula is None:
        return fields
    formula = formula.split("=", 1)[0]
    if illegal_characters(formula):
        return fields
    try:
        parsed = parse_formula(formula)
    except FormulaError:
        return fields
    fields["formula_wellformed"] = True
    fields["formula_correct"] = (
        Counter(parsed.numbers) == Counter(task.numbers)
        and parsed.value is not None
        and parsed.value == task.target
    )
    return fields
