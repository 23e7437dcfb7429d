"""Rule-based checking of visual-QA answers (MathVista/MathVerse style): pure and total.

The model's reply is untrusted data. It is never evaluated: numbers are read by a small regex
grammar and turned into exact ``fractions.Fraction`` values, every scan is bounded in length and
brace depth, and every failure becomes a :class:`Verdict` instead of an exception.

Extraction order (the first that yields something wins): the last ``\\boxed{...}``; an
"answer is X" / "Answer: X" phrase; a lone choice letter on the last line; the last number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

from services.verifier.types import Verdict

AnswerType = Literal["choice", "number", "text"]
ANSWER_TYPES: tuple[str, ...] = ("choice", "number", "text")

# Long chain-of-thought replies put the final answer at the end, so only the tail is scanned.
MAX_SCAN_CHARS = 65536
MAX_CANDIDATE_CHARS = 512  # an extracted answer longer than this is not a final answer
MAX_NUMBER_CHARS = 48  # longer digit runs are noise (and would hit int() digit limits)
MAX_BRACE_DEPTH = 32
DEFAULT_TOLERANCE = 1e-6
DEFAULT_REL_TOLERANCE = 1e-9
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class QATask:
    """One question's expected answer.

    ``answer`` is the canonical answer: a number ("12", "3/4", "0.5", "45%"), a text, or for
    ``answer_type="choice"`` either the choice letter or the text of the correct choice.
    ``tolerance`` is absolute; ``rel_tolerance`` is relative to the expected value.
    """

    question_id: str
    answer: str
    choices: tuple[str, ...] | None = None
    answer_type: AnswerType = "number"
    tolerance: float = DEFAULT_TOLERANCE
    rel_tolerance: float = DEFAULT_REL_TOLERANCE

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be one of {ANSWER_TYPES}, got {self.answer_type!r}")
        for name in ("tolerance", "rel_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.choices is not None and not (0 < len(self.choices) <= len(LETTERS)):
            raise ValueError(f"choices must hold 1..{len(LETTERS)} entries, got {len(self.choices)}")
        if self.answer_type == "choice" and self.choices is not None and correct_choice_index(self) is None:
            raise ValueError(f"answer {self.answer!r} is neither a choice letter nor one of the choices")


@dataclass(frozen=True, slots=True)
class ParsedNumber:
    value: Fraction
    percent: bool = False


@dataclass(frozen=True, slots=True)
class Extraction:
    candidate: str | None
    method: str  # "boxed" | "answer_phrase" | "choice_letter" | "last_number" | "none"
    error: str = ""  # set when the reply is malformed (e.g. an unclosed \boxed{)


# ---------------------------------------------------------------------------------------------
# Extraction


def _find_boxed(text: str) -> Extraction | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``), matching braces with a bounded depth."""
    last = None
    for match in _BOXED.finditer(text):
        if not _EMPTY_BOX.match(text, match.end() - 1):  # "\boxed{}" echoes the instruction
            last = match
    if last is None:
        return None
    open_at = last.end() - 1
    depth = 0
    for i in range(open_at, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                return Extraction(None, "boxed", "the boxed answer is nested too deeply")
        elif ch == "}":
            depth -= 1
            if depth == 0:
                content = text[open_at + 1 : i].strip()
                if not content:  # only whitespace inside: same as an empty box
                    return None
                if len(content) > MAX_CANDIDATE_CHARS:
                    return Extraction(None, "boxed", "the boxed answer is too long")
                return Extraction(content, "boxed")
        if i - open_at > MAX_CANDIDATE_CHARS * 4:
            return Extraction(None, "boxed", "the boxed answer is too long")
    return Extraction(None, "boxed", "the last \\boxed{ is never closed")


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_EMPTY_BOX = re.compile(r"\{\s*\}")
_ANSWER_PHRASE = re.compile(
    r"(?:\banswer|\bcorrect\s+(?:option|choice))\s*(?:is\s*:?|:|=)\s*(?P<ans>[^\n]{1,200})",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# "B", "B.", "(B)", "option B"; a lower-case letter only in parentheses ("a" alone is a word).
_LONE_LETTER = re.compile(r"(?:(?i:option|choice)\s*)?(?:\(([A-Za-z])\)|([A-Z])[.:)]?)")
_NUMBER_TOKEN = re.compile(
    r"(?:(?<![\w])[-\u2212])?"
    r"(?:\\[dt]?frac\s*\{[^{}]{1,40}\}\s*\{[^{}]{1,40}\}"
    r"|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?\s*%?"
    r"|\.\d+\s*%?)"
)


def _strip_decoration(text: str) -> str:
    """Drop markdown emphasis, math delimiters and surrounding punctuation around an answer."""
    text = text.strip().strip("*_`#").strip()
    text = text.replace("$", "").replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    return text.strip().rstrip(".;,").strip().strip("*_`").strip()


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text):  # noqa: B007  (we want the final match)
        pass
    return match


def _find_answer_phrase(text: str) -> Extraction | None:
    last = _last_match(_ANSWER_PHRASE, text)
    if last is None:
        return None
    ans = last.group("ans")
    end = _SENTENCE_END.search(ans)
    if end is not None:
        ans = ans[: end.start()]
    ans = _strip_decoration(ans)
    return Extraction(ans, "answer_phrase") if ans else None


def _find_lone_letter(text: str) -> Extraction | None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    last = _strip_decoration(lines[-1])
    m = _LONE_LETTER.fullmatch(last)
    return Extraction((m.group(1) or m.group(2)).upper(), "choice_letter") if m else None


def _find_last_number(text: str) -> Extraction | None:
    last = _last_match(_NUMBER_TOKEN, text)
    if last is None:
        return None
    token = last.group(0).strip()
    if len(token) > MAX_NUMBER_CHARS:
        return Extraction(None, "last_number", "the last number is too long")
    return Extraction(token, "last_number")


def extract_answer(text: str) -> Extraction:
    """Pull the final answer out of a reply (see the module docstring for the order)."""
    text = text[-MAX_SCAN_CHARS:]
    for finder in (_find_boxed, _find_answer_phrase, _find_lone_letter, _find_last_number):
        found = finder(text)
        if found is not None:
            return found
    return Extraction(None, "none")


# ---------------------------------------------------------------------------------------------
# Normalisation and parsing (of short, already bounded candidates)

_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname|mathit)\s*\{([^{}]*)\}")
_SPACING = re.compile(r"\\(?:left|right|displaystyle|[,;:! ]|quad|qquad)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|\bdegrees?\b", re.IGNORECASE)
_NUMBER = re.compile(
    r"(?P<sign>[-+]?)\s*"
    r"(?:\\frac\s*\{\s*(?P<fn>[-+]?\s*[\d.,]{1,40})\s*\}\s*\{\s*(?P<fd>[-+]?\s*[\d.,]{1,40})\s*\}"
    r"|\\frac(?P<sn>\d)(?P<sd>\d)"
    r"|(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>(?:\d+(?:\.\d+)?|\.\d+)))?"
    r"(?:[eE](?P<exp>[-+]?\d{1,3}))?)"
    r"\s*(?P<pct>%|percent\b)?"
)


def _unwrap(text: str) -> str:
    for _ in range(4):  # \text{\textbf{x}} needs two passes; more is hostile nesting
        new = _WRAPPERS.sub(r"\1", text)
        if new == text:
            break
        text = new
    return text


def _clean(text: str) -> str:
    text = _unwrap(text)
    text = _SPACING.sub(" ", text)
    text = text.replace("\\%", "%").replace("\u2212", "-").replace("\\$", "").replace("$", "")
    return re.sub(r"\\[dt]frac", r"\\frac", text).strip()


def _to_fraction(token: str) -> Fraction | None:
    token = token.replace(",", "").replace(" ", "")
    if not token or len(token) > MAX_NUMBER_CHARS:
        return None
    try:
        return Fraction(token)  # sanitized digits, sign and '.' only: no evaluation
    except (ValueError, ZeroDivisionError):
        return None


def _unwrap_brackets(text: str) -> str:
    """Drop balanced outer ``{...}`` / ``(...)`` layers: ``{3/4}`` and ``(3/4)`` mean 3/4."""
    for _ in range(4):
        text = text.strip()
        if len(text) < 2 or (text[0], text[-1]) not in (("{", "}"), ("(", ")")):
            return text
        depth = 0
        for ch in text[1:-1]:
            depth += {"{": 1, "(": 1, "}": -1, ")": -1}.get(ch, 0)
            if depth < 0:  # "(1)(2)": the outer pair does not enclose everything
                return text
        text = text[1:-1]
    return text


def parse_number(text: str) -> ParsedNumber | None:
    """Read one number (integer, decimal, a/b, \\frac, percent, with units after it) or ``None``."""
    if len(text) > MAX_CANDIDATE_CHARS:
        return None
    text = _DEGREES.sub(" ", _clean(text))
    if "=" in text:  # "x = 5": the value is on the right
        text = text.rsplit("=", 1)[1]
    text = _unwrap_brackets(text)
    m = _NUMBER.match(text)
    if m is None:
        return None
    rest = text[m.end() :].strip()
    if rest and (rest[0].isdigit() or rest[0] in "+-*/^=.,{}\\"):
        return None  # "3 + 4", "1,5", "12, 13": not a single number
    if m.group("fn") is not None:
        num, den = _to_fraction(m.group("fn")), _to_fraction(m.group("fd"))
    elif m.group("sn") is not None:
        num, den = Fraction(int(m.group("sn"))), Fraction(int(m.group("sd")))
    else:
        num = _to_fraction(m.group("num"))
        den = _to_fraction(m.group("den")) if m.group("den") else Fraction(1)
        if num is not None and m.group("exp"):
            num *= Fraction(10) ** int(m.group("exp"))
    if num is None or den is None or den == 0:
        return None
    value = num / den
    if m.group("sign") == "-":
        value = -value
    return ParsedNumber(value, percent=m.group("pct") is not None)


def normalize_text(text: str) -> str:
    """Case-, space- and punctuation-insensitive form of a short text answer."""
    text = _clean(text).casefold()
    text = re.sub(r"\s+", "", text)
    return text.strip(".,;:!?\"'()[]{}*_`")


def _close(got: Fraction, want: Fraction, task: QATask) -> bool:
    limit = Fraction(task.tolerance) + Fraction(task.rel_tolerance) * abs(want)
    return abs(got - want) <= limit


def numbers_match(got: ParsedNumber, want: ParsedNumber, task: QATask) -> bool:
    """Equal within tolerance; a percent on one side only also matches its value / 100."""
    if _close(got.value, want.value, task):
        return True
    if got.percent != want.percent:
        scaled_got = got.value / 100 if got.percent else got.value
        scaled_want = want.value / 100 if want.percent else want.value
        return _close(scaled_got, scaled_want, task)
    return False


# ---------------------------------------------------------------------------------------------
# Choices

_LETTER_ONLY = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_LETTER_PREFIX = re.compile(r"\(?([A-Z])\)?[.:)]\s+\S|\(([A-Z])\)\s*\S")


def correct_choice_index(task: QATask) -> int | None:
    """Index of the correct choice: ``answer`` is a letter in range or the text of a choice."""
    if not task.choices:
        return None
    answer = task.answer.strip()
    texts = [normalize_text(c) for c in task.choices]
    if normalize_text(answer) in texts and not (len(answer) == 1 and answer.upper() in LETTERS):
        return texts.index(normalize_text(answer))
    m = _LETTER_ONLY.fullmatch(answer)
    if m is not None and LETTERS.index(m.group(1).upper()) < len(task.choices):
        return LETTERS.index(m.group(1).upper())
    if normalize_text(answer) in texts:
        return texts.index(normalize_text(answer))
    return None


def _choice_from_candidate(candidate: str, task: QATask) -> tuple[int | None, str]:
    """Which choice the candidate names: (index, "") or (None, error kind)."""
    choices = task.choices or ()
    candidate = _strip_decoration(_clean(candidate))
    norm = normalize_text(candidate)
    texts = [normalize_text(c) for c in choices]
    m = _LETTER_ONLY.fullmatch(candidate.strip())
    if norm in texts and m is None:
        return texts.index(norm), ""
    if m is None:
        p = _LETTER_PREFIX.match(candidate.strip())
        letter = (p.group(1) or p.group(2)) if p else None
    else:
        letter = m.group(1).upper()
    if letter is not None:
        index = LETTERS.index(letter.upper())
        if choices and index >= len(choices):
            return None, "malformed_answer"
        return index, ""
    if norm in texts:
        return texts.index(norm), ""
    got = parse_number(candidate)
    if got is not None:
        hits = [i for i, c in enumerate(choices) if (w := parse_number(c)) and numbers_match(got, w, task)]
        if len(hits) == 1:
            return hits[0], ""
    return None, "wrong_answer"


# ---------------------------------------------------------------------------------------------
# Verdict


def _echo(text: str, limit: int = 80) -> str:
    """A short, printable copy of model text for feedback messages."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(kind: str, feedback: str, extraction: Extraction, **details: object) -> Verdict:
    return Verdict(
        reward=0.0,
        success=False,
        feedback=feedback,
        errors=(kind,),
        details={"extracted_answer": extraction.candidate, "method": extraction.method, **details},
    )


def _judge(candidate: str, task: QATask) -> tuple[bool, str, dict[str, object]]:
    """(correct, error kind when not, details) for an extracted candidate."""
    if task.answer_type == "choice":
        want = correct_choice_index(task) if task.choices else None
        if task.choices is None:  # letters only (MathVerse rows keep the options in the question)
            m = _LETTER_ONLY.fullmatch(task.answer.strip())
            want = LETTERS.index(m.group(1).upper()) if m else None
        got, error = _choice_from_candidate(candidate, task)
        if got is None:
            return False, error, {}
        return got == want, "wrong_answer", {"choice": LETTERS[got]}
    if task.answer_type == "number":
        want_num = parse_number(task.answer)
        got_num = parse_number(candidate)
        if got_num is None:
            return False, "malformed_answer", {}
        if want_num is None:  # a task whose answer is not numeric cannot match a number
            return False, "wrong_answer", {}
        return numbers_match(got_num, want_num, task), "wrong_answer", {}
    got_num, want_num = parse_number(candidate), parse_number(task.answer)
    if got_num is not None and want_num is not None:
        return numbers_match(got_num, want_num, task), "wrong_answer", {}
    return normalize_text(candidate) == normalize_text(task.answer), "wrong_answer", {}


def verify_visual_qa(task: QATask, answer: object) -> Verdict:
    """Check one reply against one task; never raises for any reply (non-text is malformed)."""
    if not isinstance(answer, str):
        return _fail("malformed_answer", "The answer is not text.", Extraction(None, "none"))
    try:
        extraction = extract_answer(answer)
    except (RecursionError, MemoryError, ValueError):  # defensive: the scanners are bounded
        return _fail("malformed_answer", "The answer could not be read.", Extraction(None, "none"))
    if extraction.error:
        return _fail("malformed_answer", f"Your answer is malformed: {extraction.error}.", extraction)
    if extraction.candidate is None:
        return _fail(
            "no_answer_found",
            "No final answer was found; put it inside \\boxed{}.",
            extraction,
        )
    correct, error, details = _judge(extraction.candidate, task)
    shown = _echo(extraction.candidate)
    if correct:
        return Verdict(
            reward=1.0,
            success=True,
            feedback="Correct.",
            details={"extracted_answer": extraction.candidate, "method": extraction.method, **details},
        )
    if error == "malformed_answer":
        if task.answer_type == "choice":
            expected = (
                f"one of the options A-{LETTERS[len(task.choices) - 1]}" if task.choices else "a letter"
            )
        else:
            expected = "a number"
        return _fail(error, f"Your answer {shown} is not {expected}.", extraction, **details)
    return _fail(error, f"Your answer {shown} is not correct.", extraction, **details)
