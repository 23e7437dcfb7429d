"""Evaluation suites: the same environment under ID and OOD variants, played by the rollout actors."""

from __future__ import annotations

from collections import Counter
from typing import Any

from services.rollout.config import SamplingConfig
from services.rollout.env_pool import EpisodeSpec
from services.rollout.group import episode_specs
from sftrl.trajectory import Trajectory


def suite_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Episode success, mean reward, per-attempt error rates and (image modes) recognition accuracy."""
    n = max(1, len(trajectories))
    turns = [t for traj in trajectories for t in traj.turns]
    steps = max(1, len(turns))
    errors: Counter[str] = Counter()
    for turn in turns:
        errors.update(set(turn.info.get("errors") or ()))
    out: dict[str, float] = {
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
    return out


def suite_specs(
    name: str, env_id: str, options: dict[str, Any], episodes: int, seed: int
) -> list[EpisodeSpec]:
    """The episodes of one suite; ids carry the suite name (sampling seeds derive from episode ids)."""
    specs = episode_specs(env_id, options, episodes, seed=seed)
    return [
        EpisodeSpec(f"eval-{name}-{s.episode_id}", s.env_id, s.env_options, s.seed, s.group_id) for s in specs
    ]


def evaluate(
    rollout: Any,
    env_id: str,
    base_options: dict[str, Any],
    suites: dict[str, dict[str, Any]],
    episodes: int,
    seed: int,
    sampling: SamplingConfig,
) -> tuple[dict[str, float], dict[str, list[Trajectory]]]:
    """Play every suite once; returns flat metrics ``{"success/id": ..., ...}`` and the trajectories."""
    metrics: dict[str, float] = {}
    played: dict[str, list[Trajectory]] = {}
    for name, overrides in suites.items():
        specs = suite_specs(name, env_id, {**base_options, **overrides}, episodes, seed)
        trajs = rollout.play(specs, sampling)
        played[name] = trajs
        for key, value in suite_metrics(trajs).items():
            head, _, tail = key.partition("/")
            metrics[f"{head}/{name}" + (f"/{tail}" if tail else "")] = value
    return metrics, played
