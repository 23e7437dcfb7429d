"""All solutions of the points game: combine 4 numbers with + - * / and parentheses to a target.

Sub-results (every value of every sub-multiset of up to three numbers) are memoised; a whole hand
is then solved goal-first: for each split and each value on the left, only the right operand each
operator needs is looked up. A cold hand costs well under a millisecond, a seen one a dict lookup. Arithmetic is exact
(:class:`fractions.Fraction`): 8/(3-8/3) is exactly 24.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from functools import lru_cache
from typing import Any

# Operator precedence of an expression's top node; atoms bind tightest.
_ATOM, _ADD, _MUL = 3, 1, 2

Expr = tuple[str, int]  # (text, precedence of its top operator)


def _wrap(expr: Expr, need: bool) -> str:
    return f"({expr[0]})" if need else expr[0]


def _combine(left: Expr, right: Expr, op: str) -> Expr:
    """Write ``left op right`` with the parentheses the precedence rules require, and no more."""
    if op == "+":
        return f"{left[0]}+{right[0]}", _ADD
    if op == "-":
        return f"{left[0]}-{_wrap(right, right[1] == _ADD)}", _ADD
    if op == "*":
        return f"{_wrap(left, left[1] == _ADD)}*{_wrap(right, right[1] == _ADD)}", _MUL
    return f"{_wrap(left, left[1] == _ADD)}/{_wrap(right, right[1] != _ATOM)}", _MUL


def _splits(numbers: tuple[int, ...]) -> Iterable[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Ordered splits of a sorted multiset into two non-empty sorted parts, each pair once."""
    n = len(numbers)
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for mask in range(1, (1 << n) - 1):
        left = tuple(numbers[i] for i in range(n) if mask >> i & 1)
        right = tuple(numbers[i] for i in range(n) if not mask >> i & 1)
        if (left, right) not in seen:
            seen.add((left, right))
            yield left, right


def _apply(a: Fraction, b: Fraction, op: str) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


@lru_cache(maxsize=8192)
def _values(numbers: tuple[int, ...]) -> dict[Fraction, tuple[Expr, ...]]:
    """Every value reachable from the multiset ``numbers`` (sorted), with the expressions giving it."""
    if len(numbers) == 1:
        return {Fraction(numbers[0]): ((str(numbers[0]), _ATOM),)}
    table: dict[Fraction, dict[str, Expr]] = {}
    for left, right in _splits(numbers):
        lvals, rvals = _values(left), _values(right)
        for a, aexprs in lvals.items():
            for b, bexprs in rvals.items():
                for op in "+-*/":
                    value = _apply(a, b, op)
                    if value is None:
                        continue
                    bucket = table.setdefault(value, {})
                    for ae in aexprs:
                        for be in bexprs:
                            expr = _combine(ae, be, op)
                            bucket.setdefault(expr[0], expr)
    return {v: tuple(exprs.values()) for v, exprs in table.items()}


@lru_cache(maxsize=16384)
def _reachable(numbers: tuple[int, ...]) -> frozenset[Fraction]:
    """Values reachable from ``numbers`` (sorted) without building strings."""
    if len(numbers) == 1:
        return frozenset((Fraction(numbers[0]),))
    out: set[Fraction] = set()
    for left, right in _splits(numbers):
        for a in _reachable(left):
            for b in _reachable(right):
                out.add(a + b)
                out.add(a - b)
                out.add(a * b)
                if b:
                    out.add(a / b)
    return frozenset(out)


def _partners(a: Fraction, target: Fraction) -> Iterable[tuple[str, Fraction]]:
    """For each operator, the right operand b with ``a op b == target`` (when one exists)."""
    yield "+", target - a
    yield "-", a - target
    if a != 0:
        yield "*", target / a
    if target != 0:
        yield "/", a / target


def _goal_pairs(
    key: tuple[int, ...], target: Fraction
) -> Iterable[tuple[tuple[int, ...], tuple[int, ...], Fraction, str, Fraction]]:
    """(left, right, a, op, b) with ``a op b == target``, found by looking up the needed partner of
    each left value instead of trying every pair (what makes a cold hand cheap)."""
    for left, right in _splits(key):
        rvals = _reachable(right)
        for a in _reachable(left):
            for op, b in _partners(a, target):
                if b in rvals and (op != "/" or b != 0):
                    yield left, right, a, op, b
        if target == 0:  # 0 * anything and 0 / nonzero: every partner works
            for a in (v for v in _reachable(left) if v == 0):
                for b in rvals:
                    yield left, right, a, "*", b
                    if b != 0:
                        yield left, right, a, "/", b


def random_formula(numbers: Iterable[int], rng: Any) -> tuple[str, Fraction] | None:
    """A formula over all of ``numbers`` in a random order and shape, with random operators, and its
    exact value; None where it divides by zero. ``rng``: a numpy Generator."""
    parts: list[tuple[Expr, Fraction]] = [((str(n), _ATOM), Fraction(n)) for n in numbers]
    while len(parts) > 1:
        i, j = (int(k) for k in rng.choice(len(parts), size=2, replace=False))
        (left, a), (right, b) = parts[i], parts[j]
        op = "+-*/"[int(rng.integers(4))]
        value = _apply(a, b, op)
        if value is None:
            return None
        parts = [p for k, p in enumerate(parts) if k not in (i, j)] + [(_combine(left, right, op), value)]
    return parts[0][0][0], parts[0][1]


def _key(numbers: Iterable[int]) -> tuple[int, ...]:
    key = tuple(sorted(int(n) for n in numbers))
    if not 1 <= len(key) <= 6:
        raise ValueError(f"the solver takes 1 to 6 numbers, got {len(key)}")
    return key


@lru_cache(maxsize=65536)
def _solvable(key: tuple[int, ...], target: Fraction) -> bool:
    if len(key) == 1:
        return key[0] == target
    return next(iter(_goal_pairs(key, target)), None) is not None


def is_solvable(numbers: Iterable[int], target: int | Fraction = 24) -> bool:
    """Whether some formula using each number exactly once reaches ``target``."""
    return _solvable(_key(numbers), Fraction(target))


@lru_cache(maxsize=32768)
def _solutions(key: tuple[int, ...], target: Fraction) -> tuple[str, ...]:
    if len(key) == 1:
        return (str(key[0]),) if key[0] == target else ()
    found: set[str] = set()
    for left, right, a, op, b in _goal_pairs(key, target):
        for ae in _values(left)[a]:
            for be in _values(right)[b]:
                found.add(_combine(ae, be, op)[0])
    return tuple(sorted(found))


def solve(numbers: Iterable[int], target: int | Fraction = 24) -> tuple[str, ...]:
    """All distinct solution formulas (minimal parentheses, no spaces), sorted; empty if none."""
    return _solutions(_key(numbers), Fraction(target))


def is_prefix_of_solution(formula: str, numbers: Iterable[int], target: int | Fraction = 24) -> bool:
    """Whether the spaceless ``formula`` starts some solution (partial credit for an unfinished one)."""
    compact = "".join(formula.split())
    if not compact:
        return False
    return any(s.startswith(compact) for s in solve(numbers, target))


def warm_cache(target: int | Fraction = 24, max_number: int = 13) -> int:
    """Solve every 4-number hand over 1..max_number once (about 2-3 s for 13), so that no later
    reset pays a cold solve. Returns the number of solvable hands. Long-running workers call it."""
    import itertools

    hands = itertools.combinations_with_replacement(range(1, max_number + 1), 4)
    return sum(is_solvable(hand, target) and bool(solve(hand, target)) for hand in hands)


def clear_cache() -> None:
    """Forget every memoised result (benchmarks use it to measure the cold path)."""
    for fn in (_values, _reachable, _solvable, _solutions):
        fn.cache_clear()
