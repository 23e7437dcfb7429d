"""The visual-QA answer checker: extraction, number forms, choices, and hostile input."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.verifier.visual_qa import QATask, extract_answer, parse_number, verify_visual_qa

NUM = QATask("n", "3/4")
INT = QATask("i", "42")
NEG = QATask("neg", "-7")
BIG = QATask("big", "1234567")
PCT = QATask("p", "45%")
APPROX = QATask("a", "1.5", tolerance=0.05)
ANGLE = QATask("ang", "60", answer_type="number")
CHOICE = QATask("c", "B", choices=("30°", "60°", "90°", "120°"), answer_type="choice")
CHOICE_BY_TEXT = QATask("ct", "60°", choices=("30°", "60°", "90°", "120°"), answer_type="choice")
WORDS = QATask("w", "B", choices=("a red circle", "a blue square", "a green star"), answer_type="choice")
LETTER_ONLY = QATask("l", "C", answer_type="choice")  # MathVerse: options live in the question text
TEXT = QATask("t", "Yes", answer_type="text")

CASES = [
    # (task, reply, success, error)
    (INT, "so the total is \\boxed{42}", True, None),
    (INT, "\\boxed{41} ... wait, \\boxed{42}", True, None),  # the last box counts
    (INT, "\\boxed{42} and later \\boxed{43}", False, "wrong_answer"),
    (INT, "$\\boxed{42}$.", True, None),
    (INT, "\\boxed{ 42 }", True, None),
    (INT, "\\boxed{x = 42}", True, None),
    (INT, "\\boxed{42 \\text{ apples}}", True, None),
    (INT, "\\boxed{42 cm}", True, None),
    (INT, "\\boxed{\\text{42}}", True, None),
    (INT, "\\boxed{42.0}", True, None),
    (INT, "\\fbox{42}", True, None),
    (INT, "The answer is 42.", True, None),
    (INT, "**Final answer:** 42", True, None),
    (INT, "Answer: 42 marbles", True, None),
    (INT, "I counted 40, then 2 more, so 42", True, None),
    (INT, "no digits here", False, "no_answer_found"),
    (INT, "", False, "no_answer_found"),
    (INT, "\\boxed{forty-two}", False, "malformed_answer"),
    (INT, "\\boxed{42", False, "malformed_answer"),
    (INT, "\\boxed{}", False, "no_answer_found"),
    (INT, "I will write the result in \\boxed{}. The answer is 42.", True, None),
    (INT, "\\boxed{42}, written as \\boxed{ }", True, None),  # an empty box is not an answer
    (INT, "\\boxed{40 + 2}", False, "malformed_answer"),  # never evaluated
    (INT, "\\boxed{__import__('os')}", False, "malformed_answer"),
    (BIG, "\\boxed{1,234,567}", True, None),
    (BIG, "\\boxed{1234568}", False, "wrong_answer"),
    (NUM, "\\boxed{\\frac{3}{4}}", True, None),
    (NUM, "\\boxed{\\dfrac{3}{4}}", True, None),
    (NUM, "\\boxed{\\tfrac{3}{4}}", True, None),
    (NUM, "\\boxed{\\frac34}", True, None),
    (NUM, "\\boxed{\\frac{6}{8}}", True, None),
    (NUM, "\\boxed{{\\frac{3}{4}}}", True, None),  # redundant outer braces
    (NUM, "\\boxed{{{3/4}}}", True, None),
    (NUM, "\\boxed{\\left(\\frac{3}{4}\\right)}", True, None),
    (NUM, "\\boxed{(3)/(4)}", False, "malformed_answer"),  # a formula, not a number
    (NUM, "\\boxed{\\frac{\\frac{3}{4}}{1}}", False, "malformed_answer"),
    (NUM, "\\boxed{3/4}", True, None),
    (NUM, "\\boxed{0.75}", True, None),
    (NUM, "\\boxed{.75}", True, None),
    (NUM, "\\boxed{75\\%}", True, None),
    (NUM, "\\boxed{75%}", True, None),
    (NUM, "\\boxed{0.7}", False, "wrong_answer"),
    (NUM, "\\boxed{\\frac{3}{0}}", False, "malformed_answer"),
    (NEG, "\\boxed{-7}", True, None),
    (NEG, "\\boxed{\u22127}", True, None),  # unicode minus
    (NEG, "\\boxed{- 7}", True, None),
    (NEG, "\\boxed{7}", False, "wrong_answer"),
    (NEG, "the value drops by -7", True, None),
    (QATask("nf", "-3/4"), "\\boxed{-\\frac{3}{4}}", True, None),
    (QATask("nf", "-3/4"), "\\boxed{\\frac{-3}{4}}", True, None),
    (PCT, "\\boxed{45\\%}", True, None),
    (PCT, "\\boxed{45}", True, None),
    (PCT, "\\boxed{0.45}", True, None),
    (PCT, "\\boxed{45 percent}", True, None),
    (PCT, "\\boxed{54\\%}", False, "wrong_answer"),
    (APPROX, "\\boxed{1.53}", True, None),
    (APPROX, "\\boxed{1.44}", False, "wrong_answer"),
    (ANGLE, "\\boxed{60^\\circ}", True, None),
    (ANGLE, "\\boxed{60^{\\circ}}", True, None),
    (ANGLE, "\\boxed{60°}", True, None),
    (ANGLE, "\\boxed{60 degrees}", True, None),
    (QATask("sci", "1500"), "\\boxed{1.5e3}", True, None),
    (CHOICE, "\\boxed{B}", True, None),
    (CHOICE, "\\boxed{(B)}", True, None),
    (CHOICE, "\\boxed{B.}", True, None),
    (CHOICE, "\\boxed{\\text{B}}", True, None),
    (CHOICE, "\\boxed{\\text{\\textbf{B}}}", True, None),
    (CHOICE, "\\boxed{b}", True, None),
    (CHOICE, "\\boxed{B. 60°}", True, None),
    (CHOICE, "\\boxed{(B) 60°}", True, None),
    (CHOICE, "B", True, None),
    (CHOICE, "(B)", True, None),
    (CHOICE, "B.", True, None),
    (CHOICE, "**B**", True, None),
    (CHOICE, "Looking at the angles...\nOption B", True, None),
    (CHOICE, "The answer is (B).", True, None),
    (CHOICE, "Answer: B", True, None),
    (CHOICE, "The correct option is B.", True, None),
    (CHOICE, "\\boxed{60°}", True, None),  # the text of the choice
    (CHOICE, "\\boxed{60}", True, None),  # its value
    (CHOICE, "so the angle must be 60 degrees", True, None),
    (CHOICE, "\\boxed{A}", False, "wrong_answer"),
    (CHOICE, "\\boxed{30°}", False, "wrong_answer"),
    (CHOICE, "\\boxed{75}", False, "wrong_answer"),
    (CHOICE, "\\boxed{E}", False, "malformed_answer"),  # no option E
    (CHOICE, "I am not sure.", False, "no_answer_found"),
    (CHOICE_BY_TEXT, "\\boxed{B}", True, None),
    (CHOICE_BY_TEXT, "\\boxed{60°}", True, None),
    (CHOICE_BY_TEXT, "\\boxed{C}", False, "wrong_answer"),
    (WORDS, "\\boxed{a blue square}", True, None),
    (WORDS, "\\boxed{A Blue Square.}", True, None),
    (WORDS, "\\boxed{a red circle}", False, "wrong_answer"),
    (LETTER_ONLY, "\\boxed{C}", True, None),
    (LETTER_ONLY, "(c)", True, None),
    (LETTER_ONLY, "\\boxed{D}", False, "wrong_answer"),
    (TEXT, "\\boxed{yes}", True, None),
    (TEXT, "\\boxed{\\text{Yes}}", True, None),
    (TEXT, "The answer is yes.", True, None),
    (TEXT, "\\boxed{No}", False, "wrong_answer"),
    (INT, 42, False, "malformed_answer"),  # not text at all
    (INT, None, False, "malformed_answer"),
]


@pytest.mark.parametrize(("task", "reply", "success", "error"), CASES)
def test_checker_cases(task: QATask, reply: str, success: bool, error: str | None) -> None:
    verdict = verify_visual_qa(task, reply)
    assert verdict.success is success, (reply, verdict)
    assert verdict.reward == (1.0 if success else 0.0)
    assert verdict.errors == (() if success else (error,)), (reply, verdict)
    assert verdict.feedback


def test_feedback_names_the_extracted_answer() -> None:
    verdict = verify_visual_qa(INT, "I think \\boxed{41}")
    assert verdict.feedback == "Your answer 41 is not correct."
    assert verdict.details["extracted_answer"] == "41"
    assert verdict.details["method"] == "boxed"


@pytest.mark.parametrize(
    ("reply", "method", "candidate"),
    [
        ("Answer: 3. So \\boxed{5}", "boxed", "5"),
        ("7 apples, so the answer is 5.\n9", "answer_phrase", "5"),
        ("I compared 30 and 60.\nB", "choice_letter", "B"),
        ("first 3 then 8", "last_number", "8"),
        ("\\boxed{\\frac{1}{2}}", "boxed", "\\frac{1}{2}"),
        ("\\boxed{{1}}", "boxed", "{1}"),
        ("nothing", "none", None),
    ],
)
def test_extraction_priority(reply: str, method: str, candidate: str | None) -> None:
    found = extract_answer(reply)
    assert (found.method, found.candidate) == (method, candidate)


HOSTILE = [
    "x" * 5_000_000,
    "9" * 200_000,
    "1" * 5000 + "/1",
    "{" * 100_000,
    "}" * 100_000,
    "\\boxed{" * 20_000,
    "\\boxed{" + "{" * 10_000 + "1" + "}" * 10_000,
    "\\boxed{" + "a" * 100_000 + "}",
    "answer is " * 50_000,
    "Answer: " + "(" * 50_000,
    "\\frac{" * 30_000,
    "1," * 100_000,
    "1e999999999",
    "\\boxed{1e999}",
    "\\boxed{9" + "0" * 10_000 + "}",
    "\x00\x01\x02\xff\ufffd\ud800",
    "\\boxed{\x00}",
    "'; DROP TABLE answers; --",
    "__import__('os').system('echo hi')",
    "\\boxed{" + "\\text{" * 5_000 + "1" + "}" * 5_000 + "}",
    "0." + "0" * 100_000 + "1",
    " " * 1_000_000,
    "\n" * 1_000_000,
    "B" * 100_000,
]


@pytest.mark.parametrize("reply", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("task", [INT, CHOICE, TEXT], ids=["number", "choice", "text"])
def test_hostile_replies_never_raise_or_hang(task: QATask, reply: str) -> None:
    # A hang guard against catastrophic regex backtracking, not a speed target (that is bench/envs.py):
    # linear-time parsing takes milliseconds, a backtracking blow-up takes hours.
    start = time.perf_counter()
    verdict = verify_visual_qa(task, reply)
    assert time.perf_counter() - start < 30.0
    assert verdict.reward == 0.0 and not verdict.success
    assert len(verdict.errors) == 1
    assert len(verdict.feedback) < 300


@given(st.text(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_any_text_gives_a_verdict(reply: str) -> None:
    for task in (INT, NUM, CHOICE, TEXT, LETTER_ONLY):
        verdict = verify_visual_qa(task, reply)
        assert verdict.reward in (0.0, 1.0)
        assert verdict.success == (verdict.reward == 1.0)


@given(
    st.text(alphabet="\\boxed{}()[]fracdt0123456789.,-/%=$ABab \n", max_size=400),
)
@settings(max_examples=300, deadline=None)
def test_latex_like_noise_gives_a_verdict(reply: str) -> None:
    verify_visual_qa(NUM, reply)
    verify_visual_qa(CHOICE, reply)


def _decimal(value: Fraction) -> str | None:
    """Exact decimal text of ``value`` when it terminates within 12 places."""
    for places in range(13):
        scaled = abs(value) * 10**places
        if scaled.denominator == 1:
            digits = str(scaled.numerator).rjust(places + 1, "0")
            text = digits if places == 0 else f"{digits[:-places]}.{digits[-places:]}"
            return ("-" if value < 0 else "") + text
    return None


fractions_strategy = st.fractions(min_value=-10_000, max_value=10_000, max_denominator=1000)


@given(fractions_strategy)
@settings(max_examples=300, deadline=None)
def test_every_spelling_of_a_fraction_is_accepted(value: Fraction) -> None:
    task = QATask("h", f"{value.numerator}/{value.denominator}")
    sign = "-" if value < 0 else ""
    p, q = abs(value.numerator), value.denominator
    spellings = [
        f"\\boxed{{{value.numerator}/{value.denominator}}}",
        f"\\boxed{{{sign}\\frac{{{p}}}{{{q}}}}}",
        f"\\boxed{{{sign}\\dfrac{{{p}}}{{{q}}}}}",
        f"\\boxed{{\\tfrac{{{value.numerator}}}{{{q}}}}}",
        f"\\boxed{{{sign}{p * 3}/{q * 3}}}",
        f"The answer is {value.numerator}/{q}.",
    ]
    decimal = _decimal(value)
    if decimal is not None:
        spellings += [f"\\boxed{{{decimal}}}", f"so it is {decimal}"]
    percent = _decimal(value * 100)
    if percent is not None:
        spellings.append(f"\\boxed{{{percent}\\%}}")
    for reply in spellings:
        verdict = verify_visual_qa(task, reply)
        assert verdict.success, (reply, verdict)


@given(fractions_strategy, fractions_strategy)
@settings(max_examples=200, deadline=None)
def test_different_fractions_are_rejected(value: Fraction, other: Fraction) -> None:
    task = QATask("h", f"{value.numerator}/{value.denominator}", tolerance=0.0, rel_tolerance=0.0)
    verdict = verify_visual_qa(task, f"\\boxed{{{other.numerator}/{other.denominator}}}")
    assert verdict.success == (value == other)


@given(st.decimals(min_value=-1e6, max_value=1e6, places=3, allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_thousands_separators(value) -> None:  # type: ignore[no-untyped-def]
    text = f"{value:,.3f}"
    parsed = parse_number(text)
    assert parsed is not None and parsed.value == Fraction(str(value)), text


def test_task_validation() -> None:
    with pytest.raises(ValueError, match="answer_type"):
        QATask("x", "1", answer_type="float")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        QATask("x", "1", tolerance=-1.0)
    with pytest.raises(ValueError, match="neither a choice letter"):
        QATask("x", "45°", choices=("30°", "60°"), answer_type="choice")
    with pytest.raises(ValueError, match="choices"):
        QATask("x", "A", choices=(), answer_type="choice")
