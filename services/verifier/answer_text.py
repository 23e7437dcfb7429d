"""Safe extraction of a JSON object from untrusted model output.

Model text is data: it is bounded in size, decoded with ``json`` only (never eval'd), and every
failure is reported as a reason string rather than an exception.
"""

from __future__ import annotations

import json
from typing import Any

MAX_ANSWER_CHARS = 8192
_DECODER = json.JSONDecoder()


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
    around the object, as chat models often add them.
    """
    if not isinstance(text, str):
        return None, "the answer is not text"
    if len(text) > max_chars:
        return None, f"the answer is too long ({len(text)} characters; at most {max_chars})"
    if "\x00" in text:
        return None, "the answer contains binary data"
    found = find_json_object(text)
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
