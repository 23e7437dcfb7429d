"""Data mixing (paper 2): one SFT dataset made of an RL model's own successful episodes, taking an SFT
model's episode only for the tasks the RL model failed (and skipping tasks both failed).

``sftrl data mix`` writes the set as a chat JSONL file (images as PNG files beside it), which an SFT
stage then trains on (``stages[i].data.path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from services.envs.demonstrations import Demonstration, DemonstrationWriter
from services.rollout.config import EngineConfig, SamplingConfig
from services.rollout.group import episode_specs
from sftrl.config import EnvSpec, StrictModel
from sftrl.trajectory import Trajectory

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout


class DataMixConfig(StrictModel):
    rl_model: str = Field(description="the RL-trained model whose successful episodes make the set")
    sft_model: str = Field(description="the SFT model that fills in where the RL model failed")
    env: EnvSpec = EnvSpec()
    tasks: int = Field(256, ge=1)
    samples: int = Field(1, ge=1, description="attempts per task and model; the first success is kept")
    seed: int = 30_000
    sampling: SamplingConfig = SamplingConfig(temperature=1.0, max_tokens=256)
    engine: EngineConfig = EngineConfig()
    out: str = "data/mixed.jsonl"


def demonstration_from(traj: Trajectory, source: str) -> Demonstration:
    """A played episode as a demonstration: its messages, each user turn with the image it added."""
    images: list[np.ndarray | None] = []
    decoded = traj.decoded_images() if traj.images else []
    user_turn, shown = 0, 0
    for message in traj.messages:
        image = None
        if message["role"] == "user" and user_turn < len(traj.turns):
            count = traj.turns[user_turn].num_images
            if count > shown:
                image, shown = np.asarray(decoded[count - 1]), count
            user_turn += 1
        images.append(image)
    meta = {"seed": traj.seed, "source": source, "success": traj.success, "reward": traj.total_reward}
    return Demonstration(f"{source}-{traj.episode_id}", list(traj.messages), images, meta)


def _successes(trajectories: list[Trajectory]) -> dict[int, Trajectory]:
    """The first successful episode of each task (by env seed)."""
    won: dict[int, Trajectory] = {}
    for traj in trajectories:
        if traj.success:
            won.setdefault(traj.seed, traj)
    return won


def mix_datasets(
    config: DataMixConfig,
    make_rollout: Callable[[str], Rollout] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Play the tasks with the RL model, then the failed ones with the SFT model; write the mixed set.

    Returns counts per source and the path. ``make_rollout(model)`` builds a rollout worker (default:
    an in-process vLLM engine with ``config.engine`` settings); each model's engine is shut down before
    the next starts, so the two never share the machine's memory."""
    from services.envs import resolve_options

    options = resolve_options(config.env.id, config.env.options)
    from services.rollout.worker import RolloutWorker

    make = make_rollout or (lambda model: RolloutWorker.on_model(model, config.engine))

    def play(model: str, seeds: list[int]) -> dict[int, Trajectory]:
        specs = [
            spec
            for s in seeds
            for spec in episode_specs(config.env.id, options, 1, seed=s, samples_per_task=config.samples)
        ]
        rollout = make(model)
        try:
            return _successes(rollout.play(specs, config.sampling))
        finally:
            rollout.shutdown()

    seeds = list(range(config.seed, config.seed + config.tasks))
    if on_progress:
        on_progress(f"RL model {config.rl_model} on {len(seeds)} tasks")
    from_rl = play(config.rl_model, seeds)
    failed = [s for s in seeds if s not in from_rl]
    if on_progress:
        on_progress(f"SFT model {config.sft_model} on the {len(failed)} tasks the RL model failed")
    from_sft = play(config.sft_model, failed) if failed else {}
    out = Path(config.out)
    with DemonstrationWriter(None, out, out.parent / f"{out.stem}_images") as writer:
        for seed in seeds:
            if seed in from_rl:
                writer.add(demonstration_from(from_rl[seed], "rl"))
            elif seed in from_sft:
                writer.add(demonstration_from(from_sft[seed], "sft"))
    return {"path": str(out), "tasks": len(seeds), "from_rl": len(from_rl), "from_sft": len(from_sft),
            "skipped": len(seeds) - len(from_rl) - len(from_sft), "own": config.rl_model == config.sft_model}  # fmt: skip


def recipe_counts(counts: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """An arm's ``counts.json`` with ``own`` set where its recipe names one model for both rounds
    (counts written before they said so)."""
    same = bool(config.get("rl_model")) and config.get("rl_model") == config.get("sft_model")
    return counts | {"own": True} if same else counts


def mixed_counts(counts: list[dict[str, Any]]) -> str:
    """Where a data-mixing arm's demonstrations came from, summed over its seeds (``counts.json``s)."""
    c = {k: sum(x[k] for x in counts) for k in ("from_rl", "from_sft", "skipped", "tasks")}
    if all(x.get("own") for x in counts):  # one model twice: a second round on the tasks it failed
        return (f"{c['from_rl'] + c['from_sft']} of the model's own successful episodes ({c['from_rl']} in its "
                f"first samples, {c['from_sft']} in a second round on the tasks it failed), {c['skipped']} of "
                f"{c['tasks']} tasks without one.")  # fmt: skip
    return (f"{c['from_rl']} episodes from the RL model, {c['from_sft']} from the SFT model, "
            f"{c['skipped']} of {c['tasks']} tasks failed by both.")  # fmt: skip
