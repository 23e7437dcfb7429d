"""The metrics of one evaluation suite, computed from its trajectories.

Besides episode success and reward: per-field accuracy of first answers (environments that score
fields, such as GeneralPoints' cards, numbers and formula, or V-IRL's action, action space and
intersection claim), rule adherence (first answers that follow the rule or action space the prompt
states, and those right under the training one instead), the share of valid actions (V-IRL), and
pass@k where a suite plays several samples of each task.

A *first answer* is the first attempt at a task: in GeneralPoints the episode's first answer, in
V-IRL the first of the attempts at each waypoint (an episode has many waypoints, 2 attempts each).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from math import comb
from typing import Any

from sftrl.trajectory import Trajectory, Turn

# Per environment: the field of a first answer that follows what the prompt states (``adherence``)
# and its twin, right under the training rule or action space instead (``adherence_training``).
ADHERENCE_FIELDS: dict[str, tuple[str, str]] = {
    "GeneralPoints": ("numbers", "numbers_training_rule"),  # services/verifier/gp_fields.py
    "V-IRL": ("turn_stated_space", "action_training_space"),  # services/verifier/virl.py
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one task: ``c`` of ``n`` samples succeeded (Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """``pass@k`` for k = 1, 2, 4, ... up to the samples per task, when every task has at least 2."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for traj in trajectories:
        groups[traj.group_id].append(bool(traj.success))
    if not groups:
        return {}
    n = min(len(v) for v in groups.values())
    if n < 2:
        return {}
    out: dict[str, float] = {}
    k = 1
    while k <= n:
        out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in groups.values()) / len(groups)
        k *= 2
    if f"pass@{n}" not in out:
        out[f"pass@{n}"] = sum(pass_at_k(len(v), sum(v), n) for v in groups.values()) / len(groups)
    return out


def first_answers(traj: Trajectory) -> Iterator[Turn]:
    """The turns that are a first attempt: ``attempt`` 1 (per episode in GeneralPoints, per waypoint
    in V-IRL); the episode's first turn where turns do not count attempts."""
    for i, turn in enumerate(traj.turns):
        attempt = turn.info.get("attempt")
        if attempt == 1 or (attempt is None and i == 0):
            yield turn


def field_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Per-field accuracy (``field/<name>``) and rule adherence of first answers.

    A field counts only where it applies (not None). ``adherence`` and ``adherence_training`` are
    the rates of an environment's pair in :data:`ADHERENCE_FIELDS`; ``answers`` counts the first
    answers behind them (its adherence field's denominator, which its twin shares where it applies).
    """
    right: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for traj in trajectories:
        for turn in first_answers(traj):
            fields = turn.info.get("fields")
            if not isinstance(fields, dict):
                continue
            for name, value in fields.items():
                if value is not None:
                    seen[name] += 1
                    right[name] += bool(value)
    out = {f"field/{name}": right[name] / seen[name] for name in seen}
    for stated, training in ADHERENCE_FIELDS.values():
        if stated in seen:
            out["adherence"] = right[stated] / seen[stated]
            out["answers"] = seen[stated]
        if training in seen:
            out["adherence_training"] = right[training] / seen[training]
    return out


def suite_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Episode success, mean reward, per-attempt error rates, (image modes) recognition accuracy,
    (GeneralPoints) the share of the hands' cards first answers name, (V-IRL) valid actions over every
    attempt, and the field, adherence and pass@k metrics above (``field/cards``: all four cards right;
    ``field/cards_black``, ``field/cards_red``: every card of that suit colour)."""
    n = max(1, len(trajectories))
    turns = [t for traj in trajectories for t in traj.turns]
    steps = max(1, len(turns))
    errors: Counter[str] = Counter()
    for turn in turns:
        errors.update(set(turn.info.get("errors") or ()))
    out: dict[str, float] = {
        "episodes": len(trajectories),  # the counts behind the rates: reports draw intervals from them
        "success": sum(t.success for t in trajectories) / n,
        "reward": sum(t.total_reward for t in trajectories) / n,
        "turns": steps / n,
        "response_tokens": sum(len(t.response_ids) for t in turns) / steps,
    }
    for kind, count in errors.items():
        out[f"error_rate/{kind}"] = count / steps
    recog = [t.info["recognized_correctly"] for t in turns if "recognized_correctly" in t.info]
    if recog:
        out["recognition_accuracy"] = sum(map(bool, recog)) / len(recog)
    # recognition per card: of the hands' cards, the share their first answers name (GeneralPoints)
    named = [(t.info["cards_named"], len(traj.meta.get("reset_info", {}).get("cards") or ()))
             for traj in trajectories for t in first_answers(traj) if "cards_named" in t.info]  # fmt: skip
    if named and sum(n for _, n in named):
        out["recognition_per_card"] = sum(k for k, _ in named) / sum(n for _, n in named)
    valid = [t.info["valid_action"] for t in turns if "valid_action" in t.info]
    if valid:
        out["valid_action"] = sum(map(bool, valid)) / len(valid)
    out.update(field_metrics(trajectories))
    out.update(pass_at_k_metrics(trajectories))
    return out


def episode_outcomes(trajectories: list[Trajectory]) -> dict[str, Any]:
    """Per episode, for analyses paired by task: its task (the environment seed, the same for every arm
    of a study's suite), whether it succeeded, and per field of its first answers ``[right, counted]``.

    Columns, not rows: ``{"task": [...], "success": [1, 0, ...], "fields": {"action": [[3, 4], ...]}}``."""
    names = sorted({name for traj in trajectories for turn in first_answers(traj)
                    for name, value in (turn.info.get("fields") or {}).items() if value is not None})  # fmt: skip
    fields: dict[str, list[list[int]]] = {name: [] for name in names}
    for traj in trajectories:
        right: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for turn in first_answers(traj):
            found = turn.info.get("fields")
            for name, value in found.items() if isinstance(found, dict) else ():
                if value is not None:
                    seen[name] += 1
                    right[name] += bool(value)
        for name in names:
            fields[name].append([right[name], seen[name]])
    return {
        "task": [traj.seed for traj in trajectories],
        "success": [int(bool(traj.success)) for traj in trajectories],
        "fields": fields,
    }
