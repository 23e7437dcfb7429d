"""Property tests of the formula parser: exact values, bounded input, only FormulaError escapes."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.verifier.formula import MAX_DEPTH, FormulaError, parse_formula

# Expression trees as (text, value-or-None-for-division-by-zero).
leaf = st.integers(0, 999).map(lambda n: (str(n), Fraction(n)))


def combine(children):
    def build(args):
        (lt, lv), op, (rt, rv) = args
        if lv is None or rv is None:
            value = None
        elif op == "/":
            value = None if rv == 0 else lv / rv
        else:
            value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}[op]
        return f"({lt}{op}{rt})", value

    return st.tuples(children, st.sampled_from("+-*/"), children).map(build)


trees = st.recursive(leaf, combine, max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(trees, st.integers(0, 3))
def test_value_is_exact(tree, spaces):
    text, value = tree
    parsed = parse_formula(text.replace("(", "(" + " " * spaces))
    assert parsed.value == value
    assert (parsed.eval_error is None) == (value is not None)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_raises_only_formula_error(text):
    try:
        parse_formula(text)
    except FormulaError:
        pass


def test_precedence_and_rationals():
    assert parse_formula("8/(3-8/3)").value == 24
    assert parse_formula("1+2*3").value == 7
    assert parse_formula("(1+2)*3").value == 9
    assert parse_formula("7-3-2").value == 2
    assert parse_formula("8/4/2").value == 1


@pytest.mark.parametrize(
    "text",
    ["(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "1+" * 200 + "1", "1" * 7, "9" * 300],
)
def test_bounds(text):
    with pytest.raises(FormulaError):
        parse_formula(text)
