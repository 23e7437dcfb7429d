"""The DeepSpeed config dict and the learning-rate schedule, both derived from :class:`LearnerConfig`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from services.learner.config import LearnerConfig, OptimConfig


def use_torch_adam(config: LearnerConfig) -> bool:
    """``optim.implementation``: ``auto`` is torch's AdamW on CPU (no C++ op build, identical maths)
    and DeepSpeed's FusedAdam on CUDA."""
    impl = config.optim.implementation
    return impl == "torch" or (impl == "auto" and config.device == "cpu")


def deepspeed_config(config: LearnerConfig, world_size: int) -> dict[str, Any]:
    """The engine's config.

    Gradient accumulation is driven by the worker: one optimizer step per ``sft_step`` (per RL
    mini-batch), however many micro-batches it takes, with ``set_gradient_accumulation_boundary``
    and losses scaled by the worker to an exact token mean. DeepSpeed's own accumulation count is
    therefore 1 (it would otherwise divide every gradient by it).
    """
    optim = config.optim
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.micro_batch_size * world_size,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": config.precision == "bfloat16"},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": optim.lr,
                "betas": list(optim.betas),
                "eps": optim.eps,
                "weight_decay": optim.weight_decay,
                **({"torch_adam": True} if use_torch_adam(config) else {}),
            },
        },
        "steps_per_print": 1 << 30,  # metrics are the caller's to log
        "wall_clock_breakdown": False,
    }


def lr_lambda(optim: OptimConfig) -> Callable[[int], float]:
    """Multiplier of ``optim.lr`` at update ``step`` (0-based): linear warmup from
    1/(warmup+1) to 1 over ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio`` at
    ``total_steps`` (held there afterwards)."""
    warmup, total, floor = optim.warmup_steps, optim.total_steps, optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if optim.scheduler == "constant":
            return 1.0
        span = max(total - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
