"""Property tests: the solver against an independent brute force, and its solutions re-checked."""

from __future__ import annotations

import itertools
from collections import Counter
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from services.verifier.formula import parse_formula
from services.verifier.points_solver import is_prefix_of_solution, is_solvable, solve

numbers4 = st.lists(st.integers(1, 13), min_size=4, max_size=4)
targets = st.integers(1, 60)


def brute_force_values(nums: list[int]) -> set[Fraction]:
    """All values of all expression trees, by repeatedly combining two of the remaining values."""
    out: set[Fraction] = set()

    def rec(vals: list[Fraction]) -> None:
        if len(vals) == 1:
            out.add(vals[0])
            return
        for i, j in itertools.permutations(range(len(vals)), 2):
            rest = [v for k, v in enumerate(vals) if k not in (i, j)]
            a, b = vals[i], vals[j]
            for r in (a + b, a - b, a * b, a / b if b else None):
                if r is not None:
                    rec([*rest, r])

    rec([Fraction(n) for n in nums])
    return out


@settings(max_examples=60, deadline=None)
@given(numbers4, targets)
def test_solvable_agrees_with_brute_force(nums, target):
    assert is_solvable(nums, target) == (Fraction(target) in brute_force_values(nums))


@settings(max_examples=200, deadline=None)
@given(numbers4, targets)
def test_every_solution_uses_each_number_once_and_hits_the_target(nums, target):
    solutions = solve(nums, target)
    assert bool(solutions) == is_solvable(nums, target)
    for formula in solutions:
        parsed = parse_formula(formula)
        assert Counter(parsed.numbers) == Counter(nums)
        assert parsed.value == target
        assert is_prefix_of_solution(formula[: len(formula) // 2 + 1], nums, target)


def test_known_hands():
    assert solve([3, 3, 8, 8]) == ("8/(3-8/3)",)
    assert not is_solvable([1, 1, 1, 1])
    assert is_solvable([11, 12, 13, 1], 24)
    solvable = sum(is_solvable(c) for c in itertools.combinations_with_replacement(range(1, 14), 4))
    assert solvable == 1362  # the well-known count of solvable 24-game hands with cards 1..13


def test_solution_order_does_not_depend_on_card_order():
    assert solve([8, 3, 8, 3]) == solve([3, 8, 3, 8])
