"""Verifiers: pure functions of (task, answer text) -> Verdict, one module per task family.

``verify`` dispatches on the task's type, so a verifier actor (or any caller) can score any task
without knowing which environment produced it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.verifier.general_points import GPTask, verify_general_points
from services.verifier.types import Verdict
from services.verifier.virl import VIRLStepTask, verify_virl
from services.verifier.visual_qa import QATask, verify_visual_qa

VERIFIERS: dict[type, Callable[[Any, object], Verdict]] = {
    GPTask: verify_general_points,
    VIRLStepTask: verify_virl,
    QATask: verify_visual_qa,
}


def verify(task: Any, answer: object) -> Verdict:
    """Score ``answer`` against ``task`` with the verifier of the task's family."""
    try:
        fn = VERIFIERS[type(task)]
    except KeyError:
        raise TypeError(f"no verifier for tasks of type {type(task).__name__}") from None
    return fn(task, answer)


__all__ = ["GPTask", "QATask", "VIRLStepTask", "Verdict", "verify"]
