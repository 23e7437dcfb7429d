"""The registry of question generators, one per kind, all deterministic given their RNG."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from services.envs.visual_qa.arithmetic import generate_arithmetic
from services.envs.visual_qa.bar_chart import generate_bar_chart
from services.envs.visual_qa.counting import generate_counting
from services.envs.visual_qa.geometry import generate_geometry
from services.envs.visual_qa.questions import Draft, GenSpec

GeneratorKind = Literal["counting", "bar_chart", "geometry", "arithmetic"]
Generator = Callable[[np.random.Generator, GenSpec], Draft]

GENERATORS: dict[GeneratorKind, Generator] = {
    "counting": generate_counting,
    "bar_chart": generate_bar_chart,
    "geometry": generate_geometry,
    "arithmetic": generate_arithmetic,
}
GENERATOR_KINDS: tuple[GeneratorKind, ...] = tuple(GENERATORS)


def generate(kind: str, seed: int, spec: GenSpec) -> Draft:
    """The question of ``kind`` for ``seed``: same seed and spec give the same question."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(GENERATOR_KINDS)}")
    if not 1 <= spec.difficulty <= 5:
        raise ValueError(f"difficulty must be 1..5, got {spec.difficulty}")
    return GENERATORS[kind](np.random.default_rng(seed), spec)  # type: ignore[index]  # checked above
