"""One test per reward kind of the GeneralPoints table (paper 1), plus feedback and robustness."""

from __future__ import annotations

import json

import pytest

from services.verifier.general_points import (
    GPTask,
    card_value,
    normalise_card_name,
    verify_general_points,
)

TASK = GPTask(cards=("3", "3", "8", "8"), numbers=(3, 3, 8, 8), target=24)
IMAGE_TASK = GPTask(cards=("A", "5", "J", "K"), numbers=(1, 5, 11, 13), target=24, check_recognition=True)


def answer(formula: object, cards: object = None) -> str:
    payload: dict[str, object] = {"formula": formula}
    if cards is not None:
        payload["cards"] = cards
    return json.dumps(payload)


def test_correct_solution_is_plus_five_and_exact():
    v = verify_general_points(TASK, answer("8/(3-8/3)=24"))
    assert (v.reward, v.success, v.errors) == (5.0, True, ())


def test_answer_wrapped_in_prose_and_code_fence_is_read():
    text = 'Sure!\n```json\n{"cards": ["3","3","8","8"], "number": [3,3,8,8], "formula": "8 / (3 - 8 / 3) = 24"}\n```'
    assert verify_general_points(TASK, text).success


def test_unfinished_prefix_of_a_solution_is_plus_one():
    v = verify_general_points(TASK, answer("8/(3-8"))
    assert (v.reward, v.errors) == (1.0, ("incomplete_formula",))
    assert "not finished" in v.feedback


def test_unfinished_formula_that_starts_no_solution_is_malformed():
    v = verify_general_points(TASK, answer("8+8+"))
    assert (v.reward, v.errors) == (-3.0, ("malformed_formula",))


def test_valid_numbers_wrong_value_is_minus_one():
    v = verify_general_points(TASK, answer("3+3+8+8=24"))
    assert (v.reward, v.errors) == (-1.0, ("wrong_value",))
    assert "22" in v.feedback


def test_division_by_zero_is_a_wrong_value_not_a_crash():
    v = verify_general_points(TASK, answer("8/(3-3)*8"))
    assert (v.reward, v.errors) == (-1.0, ("wrong_value",))
    assert "zero" in v.feedback


@pytest.mark.parametrize(
    ("formula", "reward", "errors"),
    [
        ("(3+3)*(8-4)", -4.0, ("numbers_not_on_cards", "numbers_unused")),  # a 4 in place of an 8
        ("3*8", -2.0, ("numbers_unused",)),
        ("3*8+3-3+8-8+8", -2.0, ("numbers_overused",)),
        ("3*8*1", -4.0, ("numbers_not_on_cards", "numbers_unused")),
        ("3*3*3+8+8-8-1", -4.0, ("numbers_not_on_cards", "numbers_overused")),
        ("3*3*3+8-1", -6.0, ("numbers_not_on_cards", "numbers_overused", "numbers_unused")),
    ],
)
def test_number_faults_are_minus_two_per_kind(formula, reward, errors):
    v = verify_general_points(TASK, answer(formula))
    assert (v.reward, v.errors) == (reward, errors)
    assert not v.success


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("not json at all", "malformed_answer"),
        ("[1, 2, 3]", "malformed_answer"),
        ('{"cards": ["3"]}', "missing_formula"),
        ('{"formula": ["3+3"]}', "missing_formula"),
        ('{"formula": "3^3+8-8"}', "illegal_characters"),
        ("{\"formula\": \"__import__('os').system('ls')\"}", "illegal_characters"),
        ('{"formula": "3**3"}', "malformed_formula"),
        ('{"formula": "-3+3*8+3"}', "malformed_formula"),
        ('{"formula": ""}', "malformed_formula"),
        ('{"formula": "(3+3))*8"}', "malformed_formula"),
    ],
)
def test_format_faults_are_minus_three(text, kind):
    v = verify_general_points(TASK, text)
    assert (v.reward, v.errors) == (-3.0, (kind,))
    assert v.feedback


def test_wrong_recognition_is_checked_first_and_is_minus_one_and_a_half():
    v = verify_general_points(IMAGE_TASK, answer("(13-11)*(5+1)*2", cards=["A", "5", "J", "Q"]))
    assert (v.reward, v.errors) == (-1.5, ("wrong_recognition",))
    missing = verify_general_points(IMAGE_TASK, answer("13+11"))
    assert missing.errors == ("wrong_recognition",)


def test_recognition_accepts_spelled_names_in_any_order():
    v = verify_general_points(
        IMAGE_TASK, answer("13+11*(5-1)/4", cards=["king", "Jack of hearts", "5", "ace"])
    )
    assert "wrong_recognition" not in v.errors


def test_card_values_under_both_rules():
    assert [card_value(n, "as_10") for n in ("A", "10", "J", "Q", "K")] == [1, 10, 10, 10, 10]
    assert [card_value(n, "as_11_12_13") for n in ("A", "10", "J", "Q", "K")] == [1, 10, 11, 12, 13]
    assert normalise_card_name("Queen of spades") == "Q"
    assert normalise_card_name(True) is None


def test_operator_aliases_are_accepted():
    assert verify_general_points(TASK, answer("8÷(3−8÷3)")).success
