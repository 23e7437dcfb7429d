"""Typed settings of the learner: DeepSpeed, optimisation, and the RL objectives."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sftrl.config import StrictModel
from sftrl.hardware import normalize_precision


class OptimConfig(StrictModel):
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = 1e-8
    scheduler: Literal["constant", "cosine"] = "cosine"  # paper 1: cosine decay
    warmup_steps: int = Field(0, ge=0)
    total_steps: int = Field(100, ge=1, description="updates (training-loop steps) the schedule spans")
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # auto: torch's AdamW on CPU (no C++ op build), DeepSpeed's FusedAdam on CUDA
    implementation: Literal["auto", "torch", "fused"] = "auto"


class LearnerConfig(StrictModel):
    """One data-parallel group of learner actors, each owning a DeepSpeed engine."""

    model: str = "tiny"  # prepared name, folder or hub id (resolved with sftrl.models.resolve_model)
    device: Literal["cpu", "cuda"] = "cpu"
    world_size: int = Field(1, ge=1, description="data-parallel learner processes (gloo on CPU, NCCL on GPU)")
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="auto: bfloat16 where the hardware computes it natively (AVX-512 BF16, AMX, GPUs), else "
        "float32 (sftrl.hardware.resolve_precision); the old spellings fp32 / bf16 are read as these",
    )
    micro_batch_size: int = Field(
        8,
        ge=1,
        description="sequences per forward/backward on one rank (RL: the turns of an episode share one)",
    )
    micro_batch_tokens: int | None = Field(
        None,
        ge=1,
        description="also cap each micro-batch at this many padded tokens (rows x its longest row), rows "
        "grouped by length: short rows stop padding to long ones (none: micro_batch_size rows alone)",
    )
    gradient_checkpointing: bool = False
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    threads: int | None = Field(
        None, ge=1, description="CPU threads per rank; default: the node's cores / ranks"
    )
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    collective_timeout_s: float = Field(
        600, gt=0, description="a collective waiting this long on a rank fails (a backstop: the group "
        "notices a dead rank at once)"
    )  # fmt: skip
    rl_mini_batches: int = Field(
        1,
        ge=1,
        description="optimizer steps per RL epoch: each epoch's shuffled rows are split into this many",
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _one_vocabulary(cls, value: object) -> object:
        """``fp32`` / ``bf16`` (older configs) become ``float32`` / ``bfloat16``."""
        return normalize_precision(value) if isinstance(value, str) else value


class RLConfig(StrictModel):
    """The RL objective. ``ppo`` follows paper 1 (turn-level actions, value head, GAE over turns);
    ``ppo_token`` is token-level PPO with a KL penalty to a frozen reference (as OpenRLHF/verl);
    ``grpo`` and ``rloo`` use group baselines over ``samples_per_task`` samples of one task."""

    algorithm: Literal["ppo", "ppo_token", "grpo", "rloo"] = "ppo"
    clip: float = Field(0.1, gt=0, description="ratio clip (paper 1: 0.1)")
    epochs: int = Field(4, ge=1, description="passes over each batch (paper 1: 4)")
    gamma: float = Field(0.9, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    value_coef: float = Field(0.5, ge=0)
    value_clip: float | None = Field(
        None,
        ge=0,
        description="value clipping around the old values (None: same as clip, as paper 1's code; 0: off)",
    )
    reasoning_weight: float = Field(
        0.5, ge=0, description="paper 1: weight of the reasoning tokens' log-prob"
    )
    kl_coef: float = Field(0.0, ge=0, description="KL penalty to the reference policy (0: no reference)")
    entropy_coef: float = Field(0.0, ge=0)
    normalize_advantages: bool = True
    recompute_logprobs: bool | None = Field(
        None,
        description="score the batch with the current policy before the update (old log-probs). None: "
        "only when needed, i.e. not for a single pass (1 epoch, 1 mini-batch) of a method without a critic, "
        "where the training forward's own log-probs are the old ones (as TRL with num_iterations=1)",
    )
    answer_keys: tuple[str, ...] = ("formula", "action", "answer")  # JSON keys whose value is "the answer"
