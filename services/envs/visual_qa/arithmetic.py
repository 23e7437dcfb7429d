"""Word problems whose numbers must be read off a small picture (price tags, a box, cookies, a
shaded shape); the text says what to compute, the picture holds the inputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from services.envs.visual_qa.drawing import COLOURS, INK, canvas, text_centered
from services.envs.visual_qa.questions import Draft, GenSpec

NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Max", "Ivy", "Noah")
ITEMS = ("pencil", "eraser", "ruler", "notebook", "marker", "sticker", "ball", "comic")
PRICE_RANGE = {1: (1, 5), 2: (1, 9), 3: (2, 15), 4: (2, 20), 5: (5, 30)}
Parts = tuple[str, str, Fraction, list[Fraction], str]  # question, scene, answer, wrongs, solution


def _plural(word: str, count: int) -> str:
    return word if count == 1 else word + "s"


def _shopping(
    rng: np.random.Generator, spec: GenSpec
) -> tuple[Parts, Callable[[], Image.Image], dict[str, Any]]:
    n_items = 2 if spec.difficulty <= 2 else 3
    items = [str(x) for x in rng.choice(ITEMS, n_items, replace=False)]
    low, high = PRICE_RANGE[spec.difficulty]
    prices = [int(p) for p in rng.integers(low, high + 1, size=n_items)]
    most = 1 if spec.difficulty == 1 else 3 if spec.difficulty == 2 else 4
    quantities = [int(q) for q in rng.integers(1, most + 1, size=n_items)]
    name = str(rng.choice(NAMES))
    total = sum(p * q for p, q in zip(prices, quantities, strict=True))
    bought = " and ".join(f"{q} {_plural(item, q)}" for item, q in zip(items, quantities, strict=True))
    tags = ", ".join(f"{item} ${p}" for item, p in zip(items, prices, strict=True))
    scene = f"The picture shows price tags: {tags}."
    sums = " + ".join(f"{q} x {p}" for p, q in zip(prices, quantities, strict=True))
    wrongs = [sum(prices), total + prices[0], total - prices[-1], total + 1, total - 1]
    if spec.difficulty >= 4 and rng.integers(2):
        note = next(n for n in (10, 20, 50, 100, 200, 500) if n > total)  # total <= 3 * 4 * 30
        answer = note - total
        question = f"{name} buys {bought} at the prices shown and pays with a ${note} note. How many dollars of change does {name} get?"
        solution = f"The cost is {sums} = {total}, so the change is {note} - {total} = {answer}."
        wrongs += [total, note - sum(prices), answer + prices[0]]
    else:
        answer = total
        question = f"{name} buys {bought} at the prices shown. How many dollars does {name} spend?"
        solution = f"The cost is {sums} = {total}."

    def draw() -> Image.Image:
        image, d = canvas(spec.size)
        s = spec.size
        tag_w, tag_h = s * 0.27, s * 0.2
        gap = (s - n_items * tag_w) / (n_items + 1)
        for i, (item, price) in enumerate(zip(items, prices, strict=True)):
            x0 = gap + i * (tag_w + gap)
            y0 = s * 0.4 - tag_h / 2 + (i % 2) * s * 0.12
            d.rounded_rectangle(
                (x0, y0, x0 + tag_w, y0 + tag_h), radius=s * 0.03, fill=(255, 244, 200), outline=INK, width=2
            )
            d.ellipse(
                (x0 + s * 0.015, y0 + s * 0.015, x0 + s * 0.04, y0 + s * 0.04), outline=INK, width=2
            )  # string hole
            text_centered(d, (x0 + tag_w / 2, y0 + tag_h * 0.35), item, max(9, s // 30))
            text_centered(d, (x0 + tag_w / 2, y0 + tag_h * 0.7), f"${price}", max(11, s // 20))
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution), draw, {}


def _dot_grid(
    d: ImageDraw.ImageDraw, box: tuple[float, float, float, float], count: int, colour: tuple[int, int, int]
) -> None:
    """``count`` dots in a near-square grid inside ``box``."""
    x0, y0, x1, y1 = box
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell = min((x1 - x0) / cols, (y1 - y0) / rows)
    ox = x0 + ((x1 - x0) - cols * cell) / 2
    oy = y0 + ((y1 - y0) - rows * cell) / 2
    r = cell * 0.35
    for i in range(count):
        row, col = divmod(i, cols)
        cx, cy = ox + (col + 0.5) * cell, oy + (row + 0.5) * cell
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour, outline=INK, width=1)


def _groups(
    rng: np.random.Generator, spec: GenSpec
) -> tuple[Parts, Callable[[], Image.Image], dict[str, Any]]:
    per_box = int(rng.integers(2, 4 + 2 * spec.difficulty))
    boxes = int(rng.integers(2, 2 + 2 * spec.difficulty))
    colour = str(rng.choice(["red", "blue", "green", "purple"]))
    answer = per_box * boxes
    question = f"Every box holds as many marbles as the box in the picture. How many marbles are there in {boxes} such boxes?"
    scene = f"The picture shows one open box holding {per_box} {colour} marbles."
    solution = f"The box holds {per_box} marbles, so {boxes} boxes hold {boxes} x {per_box} = {answer}."
    wrongs = [per_box + boxes, per_box * (boxes + 1), per_box * (boxes - 1), (per_box + 1) * boxes]

    def draw() -> Image.Image:
        image, d = canvas(spec.size)
        s = spec.size
        d.rectangle((s * 0.15, s * 0.2, s * 0.85, s * 0.85), fill=(210, 170, 120), outline=INK, width=3)
        d.polygon(
            [(s * 0.15, s * 0.2), (s * 0.3, s * 0.08), (s * 0.7, s * 0.08), (s * 0.85, s * 0.2)],
            fill=(190, 150, 100),
            outline=INK,
        )
        _dot_grid(d, (s * 0.2, s * 0.25, s * 0.8, s * 0.8), per_box, COLOURS[colour])
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution), draw, {}


def _sharing(
    rng: np.random.Generator, spec: GenSpec
) -> tuple[Parts, Callable[[], Image.Image], dict[str, Any]]:
    children = int(rng.integers(2, 3 + spec.difficulty))
    each = int(rng.integers(2, 3 + spec.difficulty))
    total = children * each
    answer = each
    question = f"The cookies in the picture are shared equally among {children} children. How many cookies does each child get?"
    scene = f"The picture shows {total} cookies."
    solution = f"There are {total} cookies, and {total} / {children} = {each}."
    wrongs = [total - children, total, each + 1, each - 1, children]

    def draw() -> Image.Image:
        image, d = canvas(spec.size)
        s = spec.size
        _dot_grid(d, (s * 0.06, s * 0.06, s * 0.94, s * 0.94), total, (200, 150, 80))
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution), draw, {}


def _shaded_fraction(
    rng: np.random.Generator, spec: GenSpec
) -> tuple[Parts, Callable[[], Image.Image], dict[str, Any]]:
    parts = int(rng.integers(3, 5 + 2 * spec.difficulty))
    shaded = int(rng.integers(1, parts))
    as_pie = bool(rng.integers(2))
    cells = sorted(int(i) for i in rng.permutation(parts)[:shaded])  # which parts of a bar are shaded
    answer = Fraction(shaded, parts)
    question = "What fraction of the shape is shaded? Give the answer as a fraction."
    shape_words = "a circle cut into" if as_pie else "a bar cut into"
    scene = f"The picture shows {shape_words} {parts} equal parts, {shaded} of which are shaded."
    solution = f"{shaded} of the {parts} equal parts are shaded, which is {shaded}/{parts}."
    if answer.denominator != parts:
        solution += f" In lowest terms that is {answer.numerator}/{answer.denominator}."
    wrongs = [Fraction(parts - shaded, parts), Fraction(shaded, parts + 1), Fraction(shaded + 1, parts)]
    if parts - shaded != 0:
        wrongs.append(Fraction(shaded, parts - shaded))

    def draw() -> Image.Image:
        image, d = canvas(spec.size)
        s = spec.size
        fill = COLOURS["blue"]
        if as_pie:
            box = (s * 0.12, s * 0.12, s * 0.88, s * 0.88)
            for i in range(parts):
                start, end = -90 + 360 * i / parts, -90 + 360 * (i + 1) / parts
                d.pieslice(
                    box, start, end, fill=fill if i < shaded else (255, 255, 255), outline=INK, width=2
                )
        else:
            x0, x1, y0, y1 = s * 0.06, s * 0.94, s * 0.38, s * 0.62
            width = (x1 - x0) / parts
            for i in range(parts):
                colour = fill if i in cells else (255, 255, 255)
                d.rectangle((x0 + i * width, y0, x0 + (i + 1) * width, y1), fill=colour, outline=INK, width=2)
        return image

    return (question, scene, answer, wrongs, solution), draw, {"fraction_form": True, "tolerance": 1e-3}


def generate_arithmetic(rng: np.random.Generator, spec: GenSpec) -> Draft:
    makers = [_shopping, _groups, _sharing] + ([_shaded_fraction] if spec.difficulty >= 3 else [])
    maker = makers[int(rng.integers(len(makers)))]
    (question, scene, answer, wrongs, solution), draw, extra = maker(rng, spec)
    return Draft(
        kind="arithmetic",
        difficulty=spec.difficulty,
        question=question,
        scene=scene,
        answer=answer,
        distractors=tuple(wrongs),
        solution=solution,
        image=draw() if spec.draw else None,
        step=Fraction(1, answer.denominator) if answer.denominator > 1 else Fraction(1),
        **extra,
    )
