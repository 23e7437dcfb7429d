"""The verdict every verifier returns: a pure, typed value (no model, no environment state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of checking one answer against one task.

    ``errors`` holds machine-readable error kinds (stable strings, e.g. ``"illegal_formula"``);
    ``feedback`` is the human-readable text a model sees in its next turn.
    ``details`` carries task-specific facts (parsed cards, claimed action, ...), JSON-serialisable.
    """

    reward: float
    success: bool
    feedback: str
    errors: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
