"""Counting: shapes of several colours and kinds scattered on a grid; count one group of them."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from services.envs.visual_qa.drawing import COLOURS, canvas, shape
from services.envs.visual_qa.questions import Draft, GenSpec

SHAPES = ("circle", "square", "triangle", "diamond")
# Per difficulty 1..5: (fewest objects, most objects, colours in play, shape kinds in play).
LEVELS = {1: (3, 6, 2, 1), 2: (5, 9, 2, 2), 3: (8, 12, 3, 2), 4: (11, 15, 4, 3), 5: (14, 20, 5, 4)}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def generate_counting(rng: np.random.Generator, spec: GenSpec) -> Draft:
    low, high, n_colours, n_shapes = LEVELS[spec.difficulty]
    n = int(rng.integers(low, high + 1))
    colours = [str(c) for c in rng.choice(list(COLOURS), n_colours, replace=False)]
    shapes = [str(s) for s in rng.choice(SHAPES, n_shapes, replace=False)]
    objects = [(colours[int(rng.integers(n_colours))], shapes[int(rng.integers(n_shapes))]) for _ in range(n)]
    grid = math.ceil(math.sqrt(n * 1.5))
    cells = sorted(int(c) for c in rng.permutation(grid * grid)[:n])  # reading order
    jitter = rng.uniform(-0.12, 0.12, size=(n, 2))

    target_colour, target_shape = objects[int(rng.integers(n))]
    by_colour = sum(c == target_colour for c, _ in objects)
    by_shape = sum(s == target_shape for _, s in objects)
    by_both = sum(o == (target_colour, target_shape) for o in objects)
    forms = (
        ["both", "colour"]
        + (["shape"] if n_shapes > 1 else [])
        + (["not_colour"] if spec.difficulty >= 4 else [])
    )
    form = forms[int(rng.integers(len(forms)))]
    if form == "both":
        answer = by_both
        question = f"How many {target_colour} {target_shape}s are in the picture?"
        solution = (
            f"Counting only the shapes that are both {target_colour} and {target_shape}s gives {answer}."
        )
    elif form == "colour":
        answer = by_colour
        question = f"How many {target_colour} shapes are in the picture, of any kind?"
        solution = f"Counting every {target_colour} shape, whatever its kind, gives {answer}."
    elif form == "shape":
        answer = by_shape
        question = f"How many {target_shape}s are in the picture, of any colour?"
        solution = f"Counting every {target_shape}, whatever its colour, gives {answer}."
    else:
        answer = n - by_colour
        question = f"How many shapes in the picture are not {target_colour}?"
        solution = f"There are {n} shapes and {by_colour} of them are {target_colour}, so {answer} are not."

    listed = ", ".join(f"{_article(c)} {c} {s}" for c, s in objects)
    scene = f"The picture shows {n} shapes, listed row by row from the top left: {listed}."
    image = None
    if spec.draw:
        image, draw = canvas(spec.size)
        cell = spec.size / grid
        for (colour, kind), index, (jx, jy) in zip(objects, cells, jitter, strict=True):
            row, col = divmod(index, grid)
            centre = ((col + 0.5 + jx) * cell, (row + 0.5 + jy) * cell)
            shape(draw, kind, centre, cell * 0.3, COLOURS[colour])
    distractors = (answer + 1, answer - 1, answer + 2, answer - 2, n, by_colour, by_shape, by_both)
    return Draft(
        kind="counting",
        difficulty=spec.difficulty,
        question=question,
        scene=scene,
        answer=Fraction(answer),
        distractors=tuple(Fraction(d) for d in distractors),
        solution=solution,
        image=image,
    )
