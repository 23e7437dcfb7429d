"""Safe extraction of a JSON object from untrusted model output.

Model text is data: it is bounded in size, decoded with ``json`` only (never eval'd), and every
failure is reported as a reason string rather than an exception.
"""

from __future__ import annotations

import json
from typing import Any

MAX_ANSWER_CHARS = 8192
_DECODER = json.JSONDecoder()
# an answer may reason first, inside these tags; only what follows the last closing tag is the answer
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def answer_after_reasoning(text: str) -> str | None:
    """The answer part of ``text``: what follows the last ``</think>``; the whole text when it does
    not reason; None when it opens a reasoning block that never closes."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if text.lstrip().startswith(THINK_OPEN):
        return None
    return text


def find_json_object(text: str, max_attempts: int = 16) -> tuple[dict[str, Any], int, int] | None:
    """The first decodable JSON object in ``text`` with its (start, end) offsets, or None."""
    start = text.find("{")
    attempts = 0
    while start != -1 and attempts < max_attempts:
        attempts += 1
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            return obj, start, end
        start = text.find("{", start + 1)
    return None


def extract_json_object(text: object, max_chars: int = MAX_ANSWER_CHARS) -> tuple[dict[str, Any] | None, str]:
    """Find the first JSON object in ``text``.

    Returns ``(obj, "")`` on success, else ``(None, reason)``. Tolerates prose or code fences
    around the object, as chat models often add them; reasoning in ``<think>...</think>`` before it
    is skipped (an object inside the reasoning is never the answer).
    """
    if not isinstance(text, str):
        return None, "the answer is not text"
    if len(text) > max_chars:
        return None, f"the answer is too long ({len(text)} characters; at most {max_chars})"
    if "\x00" in text:
        return None, "the answer contains binary data"
    answer = answer_after_reasoning(text)
    if answer is None:
        return None, f"the reasoning never ends ({THINK_CLOSE} missing), so there is no answer after it"
    found = find_json_object(answer)
    if found is None:
        return None, "the answer is not a JSON object"
    return found[0], ""


def get_str_field(obj: dict[str, Any], *names: str) -> str | None:
    """Return the first present field among ``names`` (case-insensitive keys) as a string."""
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for name in names:
        if name.lower() in lowered:
            value = lowered[name.lower()]
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            return None
    return None
