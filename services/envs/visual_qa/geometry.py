"""Geometry drawn to scale: angles in triangles, sides of right triangles, rectangles.

Every figure is built from the drawn numbers (law of sines for angles, Pythagorean triples for
lengths), so the picture, the description and the exact answer always agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
from PIL import Image, ImageDraw

from services.envs.visual_qa.drawing import (
    INK,
    Point,
    angle_label,
    canvas,
    fit_points,
    outward_label,
    text_centered,
    text_extent,
    toward,
)
from services.envs.visual_qa.questions import Draft, GenSpec

FILL = (225, 238, 250)
TRIPLES_BY_LEVEL = {
    1: ((3, 4, 5),),
    2: ((3, 4, 5), (6, 8, 10)),
    3: ((3, 4, 5), (5, 12, 13), (6, 8, 10)),
    4: ((5, 12, 13), (8, 15, 17), (7, 24, 25), (9, 12, 15)),
    5: ((8, 15, 17), (7, 24, 25), (20, 21, 29), (12, 35, 37), (9, 40, 41)),
}
Parts = tuple[str, str, Fraction, list[Fraction], str, str]  # question, scene, answer, wrongs, solution, unit


def _figure(size: int, points: list[Point]) -> tuple[Image.Image, ImageDraw.ImageDraw, list[Point], Point]:
    image, draw = canvas(size)
    pts = fit_points(points, size, margin=size * 0.17)
    draw.polygon(pts, fill=FILL, outline=INK, width=max(2, size // 160))
    centroid = (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
    return image, draw, pts, centroid


def _label_size(size: int) -> int:
    return max(10, size // 24)


def _side_label(draw: ImageDraw.ImageDraw, a: Point, b: Point, centroid: Point, text: str, size: int) -> None:
    label = _label_size(size)
    spot = outward_label(a, b, centroid, size * 0.02, text_extent(text, label))
    text_centered(draw, spot, text, label)


def _vertex_names(
    draw: ImageDraw.ImageDraw, pts: list[Point], centroid: Point, names: str, size: int
) -> None:
    for p, name in zip(pts, names, strict=True):
        text_centered(
            draw,
            toward(p, (2 * p[0] - centroid[0], 2 * p[1] - centroid[1]), size * 0.05),
            name,
            _label_size(size),
        )


def _triangle_angles(rng: np.random.Generator, spec: GenSpec) -> tuple[Parts, Callable[[], Image.Image]]:
    grain = {1: 10, 2: 10, 3: 5}.get(spec.difficulty, 1)
    a = grain * int(rng.integers(-(-20 // grain), 140 // grain + 1))
    b = grain * int(rng.integers(-(-20 // grain), (160 - a) // grain + 1))
    angles = [a, b, 180 - a - b]
    unknown = int(rng.integers(3))
    known = [(n, v) for i, (n, v) in enumerate(zip("ABC", angles, strict=True)) if i != unknown]
    answer = angles[unknown]
    question = "The triangle is drawn to scale. What is the size of the angle marked '?', in degrees?"
    scene = (
        f"Triangle ABC has angle {known[0][0]} = {known[0][1]}° and angle {known[1][0]} = {known[1][1]}°; "
        f"the angle at {'ABC'[unknown]} is marked '?'."
    )
    solution = (
        f"The angles of a triangle add up to 180°, so ? = 180 - {known[0][1]} - {known[1][1]} = {answer}."
    )
    k0, k1 = known[0][1], known[1][1]
    wrongs = [180 - k0, 180 - k1, k0 + k1, abs(k0 - k1), 90 - min(k0, k1), answer + 10, answer - 10]

    def draw() -> Image.Image:
        ra, rb, rc = (math.radians(x) for x in angles)
        ac = math.sin(rb) / math.sin(rc)  # law of sines with AB = 1
        image, d, pts, centroid = _figure(
            spec.size, [(0.0, 0.0), (1.0, 0.0), (ac * math.cos(ra), ac * math.sin(ra))]
        )
        _vertex_names(d, pts, centroid, "ABC", spec.size)
        for i, p in enumerate(pts):
            q, r = pts[(i + 1) % 3], pts[(i + 2) % 3]
            half = math.radians(angles[i]) / 2
            spot = angle_label(p, q, r, min(spec.size * 0.16, spec.size * 0.05 / max(math.sin(half), 0.15)))
            text_centered(d, spot, "?" if i == unknown else f"{angles[i]}°", _label_size(spec.size))
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution, "°"), draw


def _isosceles(rng: np.random.Generator, spec: GenSpec) -> tuple[Parts, Callable[[], Image.Image]]:
    grain = 10 if spec.difficulty <= 3 else 2
    apex = grain * int(rng.integers(-(-20 // grain), 140 // grain + 1))
    base = (180 - apex) // 2 if apex % 2 == 0 else None
    assert base is not None  # apex is always even, so the base angles are whole degrees
    ask_apex = spec.difficulty >= 5 and bool(rng.integers(2))
    question = "The triangle has two equal sides, marked with ticks. What is the size of the angle marked '?', in degrees?"
    if ask_apex:
        answer = apex
        scene = f"Triangle ABC has AB = AC (marked with ticks) and angle B = {base}°; angle A is marked '?'."
        solution = f"The base angles are equal, so ? = 180 - 2 * {base} = {apex}."
        wrongs = [base, 180 - base, 90 - base, 2 * base, apex + 10]
    else:
        answer = base
        scene = f"Triangle ABC has AB = AC (marked with ticks) and angle A = {apex}°; angle B is marked '?'."
        solution = f"The two base angles are equal, so ? = (180 - {apex}) / 2 = {base}."
        wrongs = [180 - apex, apex, 90 - apex, 2 * base - 10, base + 10, base - 10]

    def draw() -> Image.Image:
        height = math.tan(math.radians(base))
        image, d, pts, centroid = _figure(spec.size, [(0.0, height), (-1.0, 0.0), (1.0, 0.0)])
        _vertex_names(d, pts, centroid, "ABC", spec.size)
        for side in ((pts[0], pts[1]), (pts[0], pts[2])):  # equal-side ticks
            mid = ((side[0][0] + side[1][0]) / 2, (side[0][1] + side[1][1]) / 2)
            dx, dy = side[1][0] - side[0][0], side[1][1] - side[0][1]
            length = math.hypot(dx, dy) or 1.0
            nx, ny = -dy / length * spec.size * 0.025, dx / length * spec.size * 0.025
            d.line((mid[0] - nx, mid[1] - ny, mid[0] + nx, mid[1] + ny), fill=INK, width=2)
        labels = {0: "?" if ask_apex else f"{apex}°", 1: f"{base}°" if ask_apex else "?"}
        for i, text in labels.items():
            p, q, r = pts[i], pts[(i + 1) % 3], pts[(i + 2) % 3]
            half = math.radians(apex if i == 0 else base) / 2
            spot = angle_label(p, q, r, min(spec.size * 0.16, spec.size * 0.05 / max(math.sin(half), 0.15)))
            text_centered(d, spot, text, _label_size(spec.size))
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution, "°"), draw


def _right_triangle(rng: np.random.Generator, spec: GenSpec) -> tuple[Parts, Callable[[], Image.Image]]:
    triples = TRIPLES_BY_LEVEL[spec.difficulty]
    base_a, base_b, base_c = triples[int(rng.integers(len(triples)))]
    k = int(rng.integers(1, 4 if spec.difficulty >= 3 else 3))
    a, b, c = base_a * k, base_b * k, base_c * k
    if rng.integers(2):
        a, b = b, a
    ask_leg = spec.difficulty >= 3 and bool(rng.integers(2))
    question = "The right triangle is drawn to scale. What is the length of the side marked '?', in cm?"
    if ask_leg:
        answer = b
        scene = (
            f"A right triangle has one leg of {a} cm and a hypotenuse of {c} cm; the other leg is marked '?'."
        )
        solution = f"By Pythagoras, ? = sqrt({c}^2 - {a}^2) = sqrt({c * c - a * a}) = {b}."
        wrongs = [c - a, c + a, a, c, b + 1, b - 1]
    else:
        answer = c
        scene = f"A right triangle has legs of {a} cm and {b} cm; the hypotenuse is marked '?'."
        solution = f"By Pythagoras, ? = sqrt({a}^2 + {b}^2) = sqrt({a * a + b * b}) = {c}."
        wrongs = [a + b, abs(a - b), max(a, b) + 1, c + 1, c - 1, c + k]
    flip = bool(rng.integers(2))

    def draw() -> Image.Image:
        sx = -1.0 if flip else 1.0
        image, d, pts, centroid = _figure(spec.size, [(0.0, 0.0), (sx * a, 0.0), (0.0, float(b))])
        corner, end_a, end_b = pts
        m = spec.size * 0.04  # right-angle mark
        p1, p2 = toward(corner, end_a, m), toward(corner, end_b, m)
        d.line([p1, (p1[0] + p2[0] - corner[0], p1[1] + p2[1] - corner[1]), p2], fill=INK, width=2)
        labels = [
            (corner, end_a, f"{a} cm"),
            (corner, end_b, "?" if ask_leg else f"{b} cm"),
            (end_a, end_b, f"{c} cm" if ask_leg else "?"),
        ]
        for p, q, text in labels:
            _side_label(d, p, q, centroid, text, spec.size)
        return image

    return (question, scene, Fraction(answer), [Fraction(w) for w in wrongs], solution, " cm"), draw


def _rectangle(rng: np.random.Generator, spec: GenSpec) -> tuple[Parts, Callable[[], Image.Image]]:
    top = {1: 6, 2: 9, 3: 12, 4: 15, 5: 20}[spec.difficulty]
    w, h = (int(x) for x in rng.integers(2, top + 1, size=2))
    forms = ["area", "perimeter"] + (["side_from_area"] if spec.difficulty >= 3 else [])
    forms += ["side_from_perimeter", "diagonal"] if spec.difficulty >= 4 else []
    form = forms[int(rng.integers(len(forms)))]
    if form == "diagonal":
        triples = TRIPLES_BY_LEVEL[spec.difficulty]
        tw, th, _ = triples[int(rng.integers(len(triples)))]
        w, h = (tw, th) if rng.integers(2) else (th, tw)
    inside, side_w, side_h, diagonal = "", f"{w} cm", f"{h} cm", ""
    unit = " cm"
    if form == "area":
        answer, unit = w * h, " cm²"
        question = "What is the area of the rectangle, in cm²?"
        scene = f"A rectangle is {w} cm wide and {h} cm tall."
        solution = f"Area = width x height = {w} x {h} = {answer}."
        wrongs = [2 * (w + h), w + h, w * h + w, w * h - h]
    elif form == "perimeter":
        answer = 2 * (w + h)
        question = "What is the perimeter of the rectangle, in cm?"
        scene = f"A rectangle is {w} cm wide and {h} cm tall."
        solution = f"Perimeter = 2 x ({w} + {h}) = {answer}."
        wrongs = [w * h, w + h, 2 * w + h, w + 2 * h]
    elif form == "side_from_area":
        answer, inside, side_h = h, f"Area = {w * h} cm²", "?"
        question = (
            "The rectangle's area is written inside it. What is the length of the side marked '?', in cm?"
        )
        scene = f"A rectangle is {w} cm wide with an area of {w * h} cm²; its height is marked '?'."
        solution = f"Height = area / width = {w * h} / {w} = {h}."
        wrongs = [w * h - w, w, h + 1, h - 1, w * h // 2]
    elif form == "side_from_perimeter":
        answer, inside, side_h = h, f"Perimeter = {2 * (w + h)} cm", "?"
        question = "The rectangle's perimeter is written inside it. What is the length of the side marked '?', in cm?"
        scene = f"A rectangle is {w} cm wide with a perimeter of {2 * (w + h)} cm; its height is marked '?'."
        solution = f"Height = perimeter / 2 - width = {w + h} - {w} = {h}."
        wrongs = [2 * (w + h) - w, w + h, 2 * (w + h) - 2 * w, h + 1, h - 1]
    else:
        answer, diagonal = round(math.hypot(w, h)), "?"
        question = "The rectangle is drawn to scale. What is the length of the diagonal marked '?', in cm?"
        scene = f"A rectangle is {w} cm wide and {h} cm tall; its diagonal is marked '?'."
        solution = f"By Pythagoras, ? = sqrt({w}^2 + {h}^2) = sqrt({w * w + h * h}) = {answer}."
        wrongs = [w + h, abs(w - h) + 1, answer + 1, answer - 1, max(w, h) + 1]

    def draw() -> Image.Image:
        image, d, pts, centroid = _figure(
            spec.size, [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
        )
        size = _label_size(spec.size)
        _side_label(d, pts[0], pts[1], centroid, side_w, spec.size)
        _side_label(d, pts[1], pts[2], centroid, side_h, spec.size)
        if inside:
            text_centered(d, (centroid[0], centroid[1] + (size if diagonal else 0)), inside, max(9, size - 2))
        if diagonal:
            d.line([pts[0], pts[2]], fill=INK, width=2)
            mid = ((pts[0][0] + pts[2][0]) / 2, (pts[0][1] + pts[2][1]) / 2)
            text_centered(d, (mid[0] - size, mid[1] - size), diagonal, size)
        return image

    return (question, scene, Fraction(answer), [Fraction(x) for x in wrongs], solution, unit), draw


def generate_geometry(rng: np.random.Generator, spec: GenSpec) -> Draft:
    makers = [_triangle_angles, _rectangle] + ([_right_triangle] if spec.difficulty >= 2 else [])
    makers += [_isosceles] if spec.difficulty >= 3 else []
    maker = makers[int(rng.integers(len(makers)))]
    (question, scene, answer, wrongs, solution, unit), draw = maker(rng, spec)
    return Draft(
        kind="geometry",
        difficulty=spec.difficulty,
        question=question,
        scene=scene,
        answer=answer,
        distractors=tuple(wrongs),
        solution=solution,
        image=draw() if spec.draw else None,
        unit=unit,
        step=Fraction(10) if unit == "°" else Fraction(1),
    )
