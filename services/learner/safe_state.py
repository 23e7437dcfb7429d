"""DeepSpeed's optimizer state read without unpickling code.

DeepSpeed loads its shards with ``torch.load(weights_only=False)``: a checkpoint on a shared volume
could then run code in the learner on resume, and its ``COMPLETE`` hashes sit beside it, so whoever
rewrites a shard can rewrite them too. The learner hands DeepSpeed this loader instead: tensors,
containers and the few DeepSpeed types its state holds, nothing else. (DeepSpeed's universal
checkpoints, which it reads with its own ``torch.load`` calls, are never written or read here.)
"""

from __future__ import annotations

from typing import Any

import torch


def deepspeed_types() -> list[Any]:
    """The classes DeepSpeed writes into its ZeRO state besides tensors and containers."""
    from deepspeed.runtime.fp16.loss_scaler import (
        DynamicLossScaler,
        LossScaleConfig,
        LossScaleProfile,
        LossScaler,
    )
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [DynamicLossScaler, LossScaleConfig, LossScaleProfile, LossScaler, ZeroStageEnum, fragment_address]


def load_state(path: str, map_location: Any = None) -> Any:
    """``torch.load`` with ``weights_only=True``, DeepSpeed's own state types allowed."""
    with torch.serialization.safe_globals(deepspeed_types()):
        return torch.load(path, map_location=map_location, weights_only=True)


def read_state_safely(engine: Any) -> None:
    """Make ``engine.load_checkpoint`` read its shards with :func:`load_state`."""
    engine.checkpoint_engine.load = load_state
