"""Bar charts: read a bar, compare bars, or combine their values.

Values always sit on a labelled grid value (or carry a printed label at easy levels), so the
exact answer can be read from the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from PIL import Image

from services.envs.visual_qa.drawing import COLOURS, GRID, INK, canvas, font, text_centered
from services.envs.visual_qa.questions import Draft, GenSpec

THEMES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Books read last month", "books", ("Ann", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo")),
    (
        "Fruit sold today",
        "pieces of fruit",
        ("apple", "pear", "plum", "fig", "kiwi", "lime", "mango", "peach"),
    ),
    (
        "Goals this season",
        "goals",
        ("Lions", "Hawks", "Bears", "Owls", "Foxes", "Wolves", "Sharks", "Eagles"),
    ),
)


@dataclass(frozen=True)
class Level:
    bars: int
    step: int  # values are multiples of this
    top: int  # axis maximum
    tick: int  # labelled grid spacing
    printed: bool  # each bar carries its value


LEVELS = {
    1: Level(3, 1, 10, 2, True),
    2: Level(4, 1, 20, 5, True),
    3: Level(5, 10, 100, 10, False),
    4: Level(6, 5, 50, 5, False),
    5: Level(7, 5, 100, 10, False),
}


def _draw_chart(
    size: int, title: str, labels: list[str], values: list[int], level: Level, colour: str
) -> Image.Image:
    image, draw = canvas(size)
    small = max(9, size // 32)
    left, right, top, bottom = size * 0.14, size * 0.97, size * 0.13, size * 0.86
    text_centered(draw, (size / 2, size * 0.06), title, max(10, size // 26))

    def y_of(v: float) -> float:
        return bottom - v / level.top * (bottom - top)

    for v in range(0, level.top + 1, level.tick):
        draw.line((left, y_of(v), right, y_of(v)), fill=GRID, width=1)
        draw.text((left - 4, y_of(v)), str(v), font=font(small), fill=INK, anchor="rm")
    draw.line((left, top, left, bottom), fill=INK, width=2)
    draw.line((left, bottom, right, bottom), fill=INK, width=2)
    slot = (right - left) / len(values)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x0, x1 = left + slot * (i + 0.2), left + slot * (i + 0.8)
        draw.rectangle((x0, y_of(value), x1, bottom), fill=COLOURS[colour], outline=INK)
        text_centered(draw, ((x0 + x1) / 2, bottom + small), label, small)
        if level.printed:
            text_centered(draw, ((x0 + x1) / 2, y_of(value) - small * 0.8), str(value), small)
    return image


def generate_bar_chart(rng: np.random.Generator, spec: GenSpec) -> Draft:
    level = LEVELS[spec.difficulty]
    title, noun, names = THEMES[int(rng.integers(len(THEMES)))]
    labels = [str(x) for x in rng.choice(names, level.bars, replace=False)]
    pool = np.arange(level.step, level.top + 1, level.step)
    values = [int(v) for v in rng.choice(pool, level.bars, replace=False)]  # distinct: "largest" is unique
    colour = str(rng.choice(["blue", "green", "orange", "purple"]))
    a, b = (int(i) for i in rng.choice(level.bars, 2, replace=False))
    if values[a] < values[b]:
        a, b = b, a
    total = sum(values)

    forms = ["value"] + (["difference", "sum"] if spec.difficulty >= 2 else [])
    forms += ["total"] if spec.difficulty >= 3 else []
    forms += ["largest", "smallest"] if spec.allow_text else []
    form = forms[int(rng.integers(len(forms)))]
    others = [v for i, v in enumerate(values) if i not in (a, b)]
    text_options: tuple[str, ...] = ()
    answer: Fraction | str
    if form == "value":
        answer = Fraction(values[a])
        question = f"In the bar chart, what is the value for {labels[a]}?"
        solution = f"The bar for {labels[a]} reaches {values[a]}."
        distractors = [Fraction(v) for v in values if v != values[a]]
    elif form == "difference":
        answer = Fraction(values[a] - values[b])
        question = f"In the bar chart, how many more {noun} does {labels[a]} have than {labels[b]}?"
        solution = f"{labels[a]} has {values[a]} and {labels[b]} has {values[b]}; {values[a]} - {values[b]} = {answer}."
        distractors = [Fraction(values[a] + values[b]), Fraction(values[a]), Fraction(values[b])]
    elif form == "sum":
        answer = Fraction(values[a] + values[b])
        question = f"In the bar chart, how many {noun} do {labels[a]} and {labels[b]} have together?"
        solution = f"{labels[a]} has {values[a]} and {labels[b]} has {values[b]}; {values[a]} + {values[b]} = {answer}."
        distractors = [Fraction(values[a] - values[b])] + [Fraction(values[a] + v) for v in others[:2]]
    elif form == "total":
        answer = Fraction(total)
        question = "In the bar chart, what is the total of all the bars?"
        solution = " + ".join(map(str, values)) + f" = {total}."
        distractors = [Fraction(total - v) for v in values[:3]] + [Fraction(total + level.step)]
    else:
        pick = max if form == "largest" else min
        index = values.index(pick(values))
        answer = labels[index]
        question = f"In the bar chart, which bar has the {form} value?"
        solution = (
            f"The {'tallest' if form == 'largest' else 'shortest'} bar is {labels[index]} at {values[index]}."
        )
        distractors = []
        text_options = tuple(labels)

    listed = ", ".join(f"{label} {value}" for label, value in zip(labels, values, strict=True))
    scene = f'A bar chart titled "{title}" has one bar per name with these values: {listed}.'
    image = _draw_chart(spec.size, title, labels, values, level, colour) if spec.draw else None
    return Draft(
        kind="bar_chart",
        difficulty=spec.difficulty,
        question=question,
        scene=scene,
        answer=answer,
        distractors=tuple(distractors),
        solution=solution,
        image=image,
        step=Fraction(level.step),
        text_options=text_options,
    )
