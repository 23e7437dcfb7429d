"""The optimizer side of an update (:class:`OptimizerSteps`), and the SFT update (:class:`SFTUpdate`).

The learning-rate schedule counts updates (``sft_step`` / ``rl_step`` calls), not optimizer steps:
every optimizer step of one RL update (epochs x mini-batches) uses the same rate, as verl steps its
scheduler once per training step. The caller may name the update's point on the schedule
(``lr_step``): an interleaved step's SFT and RL updates share their loop step's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from services.learner.collectives import Collectives
from services.learner.config import OptimConfig
from services.learner.ds_config import lr_lambda
from services.learner.packing import Packer
from services.learner.rl import logits_needed_from
from services.learner.sft_data import IGNORE_INDEX, SFTExample


class OptimizerSteps:
    """The engine's optimizer steps and the schedule's position (``updates``: updates begun)."""

    def __init__(self, engine: Any, optim: OptimConfig, zero_stage: int, compute_dtype: torch.dtype):
        self.engine = engine  # the DeepSpeed engine around a PolicyModule
        self.base_lr, self.lr_factor = optim.lr, lr_lambda(optim)
        self.zero3 = zero_stage == 3
        # DeepSpeed's plain engine (no ZeRO, no bf16 optimizer wrapper) keeps no global gradient
        # norm: take it here, before the step clips
        self.manual_norm = zero_stage == 0 and compute_dtype == torch.float32
        self.updates = 0

    def start_update(self, lr_step: int | None) -> None:
        """Set this update's learning rate from the schedule at ``lr_step`` (default: the next
        update)."""
        step = self.updates if lr_step is None else lr_step
        if step < 0:
            raise ValueError(f"lr_step must be >= 0 (got {step})")
        self.updates = step + 1
        lr = self.base_lr * self.lr_factor(step)
        for group in self.engine.optimizer.param_groups:  # DeepSpeed's wrappers share the base groups
            group["lr"] = lr

    def step(self) -> tuple[float, float]:
        """Step at the accumulation boundary; returns (lr used, pre-clip global gradient norm)."""
        lr = float(self.engine.get_lr()[0])
        manual = None
        if self.manual_norm:
            params = self.engine.module.parameters()
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            manual = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        self.engine.step()
        self.clear_zero3_gradients()
        norm = self.engine.get_global_grad_norm()
        if manual is not None:
            return lr, manual
        if isinstance(norm, torch.Tensor):
            norm = float(norm)
        return lr, float(norm) if norm is not None else float("nan")

    def clear_zero3_gradients(self) -> None:
        """ZeRO-3 writes each parameter's gradient partition only when its gradient hook fires, and
        never clears the buffer: a parameter without a gradient in a step (the value head during SFT,
        a vision tower on text-only rows) would be stepped with its previous step's gradient, and
        that stale gradient would enter the global norm and clipping. Zero it after every step."""
        if self.zero3:
            buffer = getattr(self.engine.optimizer, "grad_partitions_flat_buffer", None)
            if isinstance(buffer, torch.Tensor):
                buffer.zero_()


class SFTUpdate:
    """The SFT update: token-mean cross-entropy on the assistant tokens of all ranks' rows."""

    def __init__(self, engine: Any, comm: Collectives, packer: Packer, steps: OptimizerSteps):
        self.engine, self.comm, self.packer, self.steps = engine, comm, packer, steps

    def step(self, examples: Sequence[SFTExample], lr_step: int | None = None) -> dict[str, float]:
        """One optimizer step over ``examples`` (this rank's shard); token-mean cross-entropy on the
        assistant tokens of all ranks' rows. Metrics are global (identical on every rank).
        ``lr_step``: the update's point on the learning-rate schedule (default: the next one)."""
        if not examples:
            raise ValueError("sft_step needs at least one example on every rank")
        start = time.perf_counter()
        self.steps.start_update(lr_step)
        self.engine.train()
        (total_tokens,) = self.comm.all_sum([sum(ex.num_target_tokens for ex in examples)])
        loss_sum = self.backward(examples, total_tokens, factor=1.0, boundary_at_end=True)
        lr, grad_norm = self.steps.step()
        (loss_total,) = self.comm.all_sum([loss_sum])
        return {
            "loss": loss_total / max(total_tokens, 1.0),
            "tokens": total_tokens,
            "lr": lr,
            "grad_norm": grad_norm,
            "seconds": self.comm.max_seconds(time.perf_counter() - start),
        }

    def backward(
        self, examples: Sequence[SFTExample], total_tokens: float, factor: float, boundary_at_end: bool
    ) -> float:
        """Backward of ``factor`` x the token-mean cross-entropy (mean over ``total_tokens`` of all
        ranks) of ``examples`` in micro-batches; returns this rank's summed cross-entropy."""
        chunks = self.packer.sft_chunks(examples)
        scale = self.comm.world_size / max(total_tokens, 1.0)  # DeepSpeed averages gradients over ranks
        loss_sum = 0.0
        for i, chunk in enumerate(chunks):
            weight = 1.0 if chunk else 0.0  # an empty chunk repeats a row with zero weight
            inputs, labels = self.packer.sft_inputs([examples[j] for j in chunk] or [examples[0]])
            self.engine.set_gradient_accumulation_boundary(boundary_at_end and i == len(chunks) - 1)
            # the output head runs only from the first position that predicts a target: the
            # prompt before it needs no full-vocabulary logits
            start = logits_needed_from(labels != IGNORE_INDEX)
            logits, _ = self.engine(**inputs, logits_to_keep=labels.shape[1] - start)
            ce = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, start + 1 :].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            self.engine.backward(ce * (scale * weight * factor), scale_wrt_gas=False)
            loss_sum += float(ce.detach()) * weight
        return loss_sum
