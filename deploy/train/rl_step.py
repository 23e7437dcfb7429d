"""One RL step, callable: play episodes, build the batch, update the learner, push the weights.

The training loop (:class:`deploy.train.loop.Trainer`) and the benchmark (``bench/train_step.py``) both
run RL through :class:`RLStep`, so what is timed is what trains, and the compute of a step is
counted in one place (:class:`FlopsCounter`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.learner.batch import RLBatch
    from services.learner.config import RLConfig
    from services.learner.group import LearnerGroup
    from services.learner.sft_data import SFTExample
    from services.rollout.config import SamplingConfig
    from services.rollout.env_pool import EpisodeSpec
    from services.rollout.group import RolloutGroup
    from sftrl.trajectory import Trajectory


@dataclass(frozen=True)
class FlopsCounter:
    """Training compute by the usual estimate: 2 x parameters per token of a forward pass, 6 x per
    token trained (forward + backward); parameters of the policy only."""

    params: int

    def sft(self, tokens: float, passes: int = 1) -> float:
        """SFT on ``tokens`` (every token of the rows), ``passes`` times."""
        return 6.0 * passes * self.params * tokens

    def generation(self, tokens: float) -> float:
        """Sampling ``tokens`` (one forward each, the KV cache holding the rest)."""
        return 2.0 * self.params * tokens

    def rl_update(self, trained: float, epochs: int, scoring_passes: float) -> float:
        """An RL update: ``scoring_passes`` no-grad forwards (the old policy's log-probs) and
        ``epochs`` training passes over the batch's ``trained`` tokens. The caller counts every turn's
        row whole, as if scored alone: the cost of the per-turn formulation, which keeps compute
        comparable across versions and implementations; the learner runs fewer tokens when an
        episode's turns share one forward (its ``forwarded_tokens`` metric)."""
        return (6.0 * epochs + 2.0 * scoring_passes) * self.params * trained


@dataclass
class StepOutcome:
    """What one RL step did: its learner metrics, times, token counts and compute."""

    metrics: dict[str, float] = field(default_factory=dict)
    learn_s: float = 0.0
    push_s: float = 0.0
    flops: float = 0.0  # everything: generation, scoring, updates (and SFT rows in the objective)
    learner_flops: float = 0.0  # the RL update's share: what the learner computed on the batch
    generated_tokens: int = 0
    trained_tokens: int = 0
    batch_shape: tuple[int, ...] = ()


class RLStep:
    """The RL step of one stage: ``rollout`` plays, ``learner`` updates (with ``rl``), and the
    rollout engines receive the new weights in ``push_dtype``."""

    def __init__(
        self,
        rollout: RolloutGroup,
        learner: LearnerGroup,
        rl: RLConfig,
        tokenizer: Any,
        max_len: int | None,
        push_dtype: str,
        flops: FlopsCounter | None = None,
    ):
        """``flops``: the counter of ``learner``'s parameters, when the caller has one already (asking
        the learner is a round trip to its rank 0)."""
        self.rollout, self.learner, self.rl = rollout, learner, rl
        self.tokenizer, self.max_len, self.push_dtype = tokenizer, max_len, push_dtype
        self.flops = flops or FlopsCounter(int(learner.flops_per_token() / 6))

    def play(self, specs: Sequence[EpisodeSpec], sampling: SamplingConfig) -> list[Trajectory]:
        return self.rollout.play(specs, sampling)

    def batch(self, trajectories: Sequence[Trajectory]) -> RLBatch:
        """The learner's rows of ``trajectories`` (one per turn), with the images their prompts show."""
        from services.learner.batch import build_rl_batch

        batch = build_rl_batch(
            trajectories, self.tokenizer, self.rl, self.tokenizer.pad_token_id, max_len=self.max_len
        )
        attach_images(batch, trajectories)
        return batch

    def learn(
        self,
        trajectories: Sequence[Trajectory],
        lr_step: int | None = None,
        sft: Sequence[SFTExample] | None = None,
        sft_weight: float = 0.0,
        generated_by: Sequence[Trajectory] | None = None,
    ) -> StepOutcome:
        """Update on ``trajectories`` (with SFT rows in the same objective when ``sft`` is given).

        ``generated_by``: the episodes whose generation this step paid for, when more were played
        than are trained on (default: ``trajectories``)."""
        t0 = time.perf_counter()
        batch = self.batch(trajectories)
        if sft:
            metrics = self.learner.rl_step(batch, sft=sft, sft_weight=sft_weight, lr_step=lr_step)
        else:
            metrics = self.learner.rl_step(batch, lr_step=lr_step)
        played = trajectories if generated_by is None else generated_by
        generated = sum(len(t.flatten()[0]) for t in played)
        trained = int(batch.attention_mask.sum())
        update = self.flops.rl_update(trained, self.rl.epochs, metrics.get("scoring_passes", 1.0))
        flops = self.flops.generation(generated) + update
        if sft:
            flops += self.flops.sft(sum(len(r.input_ids) for r in sft), passes=self.rl.epochs)
        return StepOutcome(
            metrics=dict(metrics), learn_s=time.perf_counter() - t0, flops=flops, learner_flops=update,
            generated_tokens=sum(t.num_generated_tokens for t in played), trained_tokens=trained,
            batch_shape=tuple(batch.input_ids.shape),
        )  # fmt: skip

    def push(self, version: int) -> float:
        """The learner's weights into every rollout engine, in place; returns the seconds it took."""
        return push_weights(self.learner, self.rollout, self.push_dtype, version)

    def __call__(
        self, specs: Sequence[EpisodeSpec], sampling: SamplingConfig, version: int, lr_step: int | None = None
    ) -> tuple[list[Trajectory], StepOutcome, float]:
        """Play ``specs``, update on them, push the weights as ``version``: (episodes, outcome, rollout
        seconds)."""
        t0 = time.perf_counter()
        trajectories = self.play(specs, sampling)
        rollout_s = time.perf_counter() - t0
        outcome = self.learn(trajectories, lr_step=lr_step)
        outcome.push_s = self.push(version)
        return trajectories, outcome, rollout_s


def push_weights(learner: LearnerGroup, rollout: RolloutGroup, dtype: str, version: int) -> float:
    """``learner``'s weights (in ``dtype``) into every engine of ``rollout``, in place, tagged
    ``version``; returns the seconds it took. Rank 0 sends them to the actors, not via the driver."""
    t0 = time.perf_counter()
    rollout.update_weights(learner.policy_state_dict(dtype, as_ref=True), version=version)
    return time.perf_counter() - t0


def push_dtype(engine_dtype: str) -> str:
    """The dtype weights travel in: the engine's own when it computes in float32, else bfloat16."""
    return "float32" if engine_dtype == "float32" else "bfloat16"


def attach_images(batch: RLBatch, trajectories: Sequence[Trajectory]) -> None:
    """Give each row the images its prompt shows (vision-language policies); text rows stay None."""
    if not any(t.images for t in trajectories):
        return
    by_id = {t.episode_id: t for t in trajectories}
    batch.images = [
        by_id[eid].decoded_images(by_id[eid].turns[turn].num_images)
        for eid, turn in zip(batch.episode_ids, batch.turn_index, strict=True)
    ]
