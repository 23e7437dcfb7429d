"""A small, bounded parser for points-game formulas: integers, + - * / and parentheses.

Model text is never executed. The grammar is

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INT | '(' expr ')'

evaluated with exact rational arithmetic. Unary signs are not part of the game and are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

MAX_FORMULA_CHARS = 256
MAX_TOKENS = 96
MAX_DEPTH = 24
MAX_DIGITS = 6
DIGITS = frozenset("0123456789")  # ASCII only: str.isdigit() also admits '²' and other scripts
ALLOWED_CHARS = DIGITS | frozenset("+-*/() ")
# Friendly spellings of the operators that models commonly emit; everything else is illegal.
_ALIASES = str.maketrans({"×": "*", "÷": "/", "−": "-", "\t": " ", "\n": " "})


class FormulaError(ValueError):
    """The formula is syntactically wrong (``incomplete`` when it ends before it should)."""

    def __init__(self, message: str, incomplete: bool = False):
        super().__init__(message)
        self.incomplete = incomplete


class FormulaEvalError(ValueError):
    """The formula is well-formed but cannot be evaluated (division by zero)."""


@dataclass(frozen=True, slots=True)
class ParsedFormula:
    text: str  # normalised, without spaces
    numbers: tuple[int, ...]  # the integer literals, in order of appearance
    value: Fraction | None  # None when it divides by zero
    eval_error: str | None = None


def normalise(formula: str) -> str:
    """Map operator aliases to ASCII and drop spaces (does not check legality)."""
    return "".join(formula.translate(_ALIASES).split())


def illegal_characters(formula: str) -> list[str]:
    """The distinct characters outside the allowed set, in order of first appearance (at most 10)."""
    seen: list[str] = []
    for ch in formula.translate(_ALIASES):
        if ch not in ALLOWED_CHARS and ch not in seen:
            seen.append(ch)
            if len(seen) == 10:
                break
    return seen


def tokenize(text: str) -> list[str]:
    """Split a normalised formula into integer and operator tokens."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in DIGITS:
            j = i
            while j < n and text[j] in DIGITS:
                j += 1
            if j - i > MAX_DIGITS:
                raise FormulaError(f"a number in the formula has more than {MAX_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        elif ch in "+-*/()":
            tokens.append(ch)
            i += 1
        else:
            raise FormulaError(f"illegal character {ch!r}")
        if len(tokens) > MAX_TOKENS:
            raise FormulaError(f"the formula is longer than {MAX_TOKENS} tokens")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []
        self.div_by_zero = False

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise FormulaError("the formula ends too early", incomplete=True)
        self.pos += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                self.div_by_zero = True
                value = Fraction(0)
            else:
                value = value / rhs
        return value

    def factor(self, depth: int) -> Fraction:
        tok = self.take()
        if tok == "(":
            if depth >= MAX_DEPTH:
                raise FormulaError(f"parentheses are nested deeper than {MAX_DEPTH}")
            value = self.expr(depth + 1)
            if self.peek() is None:
                raise FormulaError("a parenthesis is not closed", incomplete=True)
            if self.take() != ")":
                raise FormulaError("expected ')'")
            return value
        if tok[0] in DIGITS:
            self.numbers.append(int(tok))
            return Fraction(int(tok))
        if tok in "+-":
            raise FormulaError("signs before numbers are not allowed; use the card numbers as they are")
        raise FormulaError(f"unexpected {tok!r}")


def parse_formula(formula: str) -> ParsedFormula:
    """Parse and evaluate ``formula`` exactly; raises :class:`FormulaError` when malformed."""
    if len(formula) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula is longer than {MAX_FORMULA_CHARS} characters")
    text = normalise(formula)
    if not text:
        raise FormulaError("the formula is empty", incomplete=True)
    parser = _Parser(tokenize(text))
    value = parser.expr(0)
    if parser.peek() is not None:
        tok = parser.peek()
        raise FormulaError("unbalanced ')'" if tok == ")" else f"unexpected {tok!r} after a complete formula")
    if parser.div_by_zero:
        return ParsedFormula(text, tuple(parser.numbers), None, "division by zero")
    return ParsedFormula(text, tuple(parser.numbers), value)
