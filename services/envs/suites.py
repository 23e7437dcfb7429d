"""The papers' evaluation suites by name: an environment and the options of one ID or OOD variant.

Paper 1 trains on one variant and tests on unseen rules (rule OOD) or visuals (visual OOD):
GeneralPoints counts J, Q, K as 10 in training and as 11, 12, 13 for rule OOD, and draws black
suits in training and red ones for visual OOD; V-IRL trains on absolute actions in one city, and
tests relative actions (rule OOD) and other cities (visual OOD). Paper 2 evaluates verifiable
visual QA, which ``vqa`` stands for here.
"""

from __future__ import annotations

from typing import Any

GP = "sftrl/GeneralPoints-v0"
VIRL = "sftrl/VIRL-v0"
VQA = "sftrl/VisualQA-v0"

SUITES: dict[str, tuple[str, dict[str, Any]]] = {
    "gp-l/id": (GP, {"mode": "text", "face_cards": "as_10"}),
    "gp-l/ood-rule": (GP, {"mode": "text", "face_cards": "as_11_12_13"}),
    # The fake-rule control: the prompt states the OOD rule, answers are scored by the training rule.
    "gp-l/fake-rule": (GP, {"mode": "text", "face_cards": "as_11_12_13", "scored_face_cards": "as_10"}),
    "gp-vl/id": (GP, {"mode": "image", "face_cards": "as_10", "suits": "black"}),
    "gp-vl/ood-rule": (GP, {"mode": "image", "face_cards": "as_11_12_13", "suits": "black"}),
    "gp-vl/ood-visual": (GP, {"mode": "image", "face_cards": "as_10", "suits": "red"}),
    "virl-l/id": (VIRL, {"mode": "text", "actions": "absolute"}),
    "virl-l/ood-rule": (VIRL, {"mode": "text", "actions": "relative"}),
    "virl-vl/id": (VIRL, {"mode": "image", "actions": "absolute", "city": "new_york"}),
    "virl-vl/ood-rule": (VIRL, {"mode": "image", "actions": "relative", "city": "new_york"}),
    "virl-vl/ood-visual": (VIRL, {"mode": "image", "actions": "absolute", "city": "london"}),
    "vqa/text": (VQA, {"mode": "text"}),
    "vqa/image": (VQA, {"mode": "image"}),
}


def named_suite(name: str, **overrides: Any) -> tuple[str, dict[str, Any]]:
    """The environment id and options of suite ``name`` (``overrides`` on top, e.g. verify_iter)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")
    env_id, options = SUITES[name]
    return env_id, {**options, **overrides}
