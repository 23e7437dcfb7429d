"""SFT+RL combinations inside an RL stage (paper 2): the progressive weight schedule, and the split of
a step's tasks into those that get SFT (no sample succeeded) and those that get RL (interleaved)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from deploy.train.config import SFTMix
from sftrl.trajectory import Trajectory


def sft_weight(mix: SFTMix, step: int, stage_steps: int) -> float:
    """The SFT term's weight at ``step`` (0-based) of a progressive stage: ``weight_start`` at step 0,
    ``weight_end`` from ``decay_steps`` on, linear or cosine in between."""
    horizon = mix.decay_steps or stage_steps
    progress = min(max(step, 0) / horizon, 1.0)
    if mix.schedule == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return mix.weight_start + (mix.weight_end - mix.weight_start) * progress


def pass_rates(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Success rate per task (group of samples of one task)."""
    wins: dict[str, list[bool]] = defaultdict(list)
    for traj in trajectories:
        wins[traj.group_id].append(bool(traj.success))
    return {group: sum(v) / len(v) for group, v in wins.items()}


def split_by_pass_rate(trajectories: Sequence[Trajectory]) -> tuple[list[Trajectory], list[Trajectory]]:
    """(one trajectory per task that no sample solved, every trajectory of the other tasks)."""
    rates = pass_rates(trajectories)
    failed: dict[str, Trajectory] = {}
    rest: list[Trajectory] = []
    for traj in trajectories:
        if rates[traj.group_id] == 0.0:
            failed.setdefault(traj.group_id, traj)
        else:
            rest.append(traj)
    return list(failed.values()), rest
