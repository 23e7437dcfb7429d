"""The question records the environment serves, and how a generated draft becomes one.

A generator returns a :class:`Draft` (exact answer value, plausible wrong values, a one-line
solution). :func:`finalize` turns it into a :class:`Problem` in free-form or multiple-choice form;
benchmark rows become a :class:`Problem` too, so the environment handles both alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from PIL import Image

from services.verifier.visual_qa import LETTERS, QATask, verify_visual_qa

Value = Fraction | str
N_CHOICES = 4


@dataclass(frozen=True)
class Draft:
    """What a generator produces: numbers drawn once and used for picture, text and answer alike."""

    kind: str
    difficulty: int
    question: str
    scene: str  # the picture in words (text mode)
    answer: Value
    distractors: tuple[Value, ...]  # plausible wrong values, best first
    solution: str  # one or two sentences of reasoning, without the final answer
    image: Image.Image | None
    unit: str = ""  # appended to numbers in choices ("°", " cm")
    step: Fraction = Fraction(1)  # spacing of filler distractors
    text_options: tuple[str, ...] = ()  # the pool of choices for a text answer
    tolerance: float = 1e-6
    fraction_form: bool = False  # write non-integer answers as p/q rather than decimals


@dataclass(frozen=True)
class GenSpec:
    """How to generate: the difficulty knob, picture size, and what kinds of answer may be asked."""

    difficulty: int
    size: int
    draw: bool  # False in text mode: same numbers, no picture
    allow_text: bool  # a text answer (e.g. a bar's name) only works as multiple choice


@dataclass(frozen=True)
class Problem:
    """One served question, generated or from a benchmark file."""

    question_id: str
    kind: str
    difficulty: int | None
    question: str
    scene: str | None
    choices: tuple[str, ...] | None
    answer: str  # canonical: the choice letter, or the free-form answer text
    task: QATask
    solution: str
    wrong_pool: tuple[str, ...]  # wrong answers in the same form as ``answer``
    image: Image.Image | None = field(default=None, compare=False)


def format_number(value: Fraction, fraction_form: bool = False) -> str:
    """Integers as integers, short terminating decimals as decimals, otherwise ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    if not fraction_form:
        for digits in range(1, 5):
            scaled = abs(value) * 10**digits
            if scaled.denominator == 1:  # exact decimal, built from integers (no float rounding)
                text = str(scaled.numerator).rjust(digits + 1, "0")
                return f"{'-' if value < 0 else ''}{text[:-digits]}.{text[-digits:]}"
    return f"{value.numerator}/{value.denominator}"


def format_value(value: Value, unit: str = "", fraction_form: bool = False) -> str:
    return value if isinstance(value, str) else format_number(value, fraction_form) + unit


def _numeric_wrongs(draft: Draft, count: int, rng: np.random.Generator) -> list[Fraction]:
    """Distinct wrong values: the draft's plausible ones first, then answer +- k * step."""
    answer = draft.answer
    assert isinstance(answer, Fraction)
    tol = Fraction(draft.tolerance)
    picked: list[Fraction] = []

    def usable(v: Fraction) -> bool:
        return (
            isinstance(v, Fraction)
            and abs(v - answer) > tol
            and all(abs(v - p) > tol for p in picked)
            and (v >= 0 or answer < 0)
        )

    plausible = [v for v in draft.distractors if isinstance(v, Fraction)]
    for i in rng.permutation(len(plausible)) if plausible else []:
        if len(picked) < count and usable(plausible[int(i)]):
            picked.append(plausible[int(i)])
    k = 1
    while len(picked) < count:
        for v in (answer + k * draft.step, answer - k * draft.step):
            if len(picked) < count and usable(v):
                picked.append(v)
        k += 1
    return picked


def finalize(draft: Draft, multiple_choice: bool, rng: np.random.Generator, question_id: str) -> Problem:
    """Free-form or multiple-choice form of a draft; choices are distinct and hold the answer once."""
    is_text = isinstance(draft.answer, str)
    draft_solution = draft.solution[:1].upper() + draft.solution[1:]
    if is_text and not multiple_choice:
        raise ValueError("text answers are served as multiple choice only")
    if not multiple_choice:
        answer = format_value(draft.answer, fraction_form=draft.fraction_form)
        wrongs = tuple(
            format_value(v, fraction_form=draft.fraction_form) for v in _numeric_wrongs(draft, N_CHOICES, rng)
        )
        task = QATask(question_id, answer, None, "number", tolerance=draft.tolerance)
        return Problem(
            question_id,
            draft.kind,
            draft.difficulty,
            draft.question,
            draft.scene,
            None,
            answer,
            task,
            draft_solution,
            wrongs,
            draft.image,
        )
    if is_text:
        others = [o for o in draft.text_options if o != draft.answer]
        order = rng.permutation(len(others))[: N_CHOICES - 1]
        options = [str(draft.answer)] + [others[int(i)] for i in order]
    else:
        values = [draft.answer, *_numeric_wrongs(draft, N_CHOICES - 1, rng)]
        options = [format_value(v, draft.unit, draft.fraction_form) for v in values]
    order = rng.permutation(len(options))
    choices = tuple(options[int(i)] for i in order)
    correct = int(np.flatnonzero(order == 0)[0])
    letter = LETTERS[correct]
    task = QATask(question_id, letter, choices, "choice", tolerance=draft.tolerance)
    solution = f"{draft_solution} That is option {letter}."
    wrongs = tuple(LETTERS[i] for i in range(len(choices)) if i != correct)
    return Problem(
        question_id,
        draft.kind,
        draft.difficulty,
        draft.question,
        draft.scene,
        choices,
        letter,
        task,
        solution,
        wrongs,
        draft.image,
    )


def boxed(answer: str) -> str:
    return f"\\boxed{{{answer}}}"


def is_wrong(problem: Problem, reply: str) -> bool:
    return not verify_visual_qa(problem.task, reply).success
