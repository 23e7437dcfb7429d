"""The optimizer side of an update, and the SFT update.

The learning-rate schedule counts updates (``sft_step`` / ``rl_step`` calls), not optimizer steps:
every optimizer step of one RL update (epochs x mini-batches) uses the same rate, as verl steps its
scheduler once per training step. The caller may name the update's point on the schedule
(``lr_step``): an interleaved step's SFT and RL updates share their loop step's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from services.learner.packing import Packing
from services.learner.policy import PolicyModule
from services.learner.sft_data import IGNORE_INDEX, SFTExample


class Updates(Packing):
    """Part of :class:`~services.learner.worker.LearnerWorker`: optimizer steps and the SFT update."""

    engine: Any  # the DeepSpeed engine around a PolicyModule
    lr_factor: Callable[[int], float]
    updates: int

    @property
    def module(self) -> PolicyModule:
        return self.engine.module

    @property
    def zero3(self) -> bool:
        return self.config.zero_stage == 3

    def sft_step(self, examples: Sequence[SFTExample], lr_step: int | None = None) -> dict[str, float]:
        """One optimizer step over ``examples`` (this rank's shard); token-mean cross-entropy on the
        assistant tokens of all ranks' rows. Metrics are global (identical on every rank).
        ``lr_step``: the update's point on the learning-rate schedule (default: the next one)."""
        if not examples:
            raise ValueError("sft_step needs at least one example on every rank")
        start = time.perf_counter()
        self._start_update(lr_step)
        self.engine.train()
        (total_tokens,) = self._all_sum([sum(ex.num_target_tokens for ex in examples)])
        loss_sum = self._sft_backward(examples, total_tokens, factor=1.0, boundary_at_end=True)
        lr, grad_norm = self._optimizer_step()
        (loss_total,) = self._all_sum([loss_sum])
        return {
            "loss": loss_total / max(total_tokens, 1.0),
            "tokens": total_tokens,
            "lr": lr,
            "grad_norm": grad_norm,
            "seconds": self._max_seconds(time.perf_counter() - start),
        }

    def _sft_backward(
        self, examples: Sequence[SFTExample], total_tokens: float, factor: float, boundary_at_end: bool
    ) -> float:
        """Backward of ``factor`` x the token-mean cross-entropy (mean over ``total_tokens`` of all
        ranks) of ``examples`` in micro-batches; returns this rank's summed cross-entropy."""
        chunks = self._sft_chunks(examples)
        scale = self.world_size / max(total_tokens, 1.0)  # DeepSpeed averages gradients over ranks
        loss_sum = 0.0
        for i, chunk in enumerate(chunks):
            weight = 1.0 if chunk else 0.0  # an empty chunk repeats a row with zero weight
            inputs, labels = self._sft_inputs([examples[j] for j in chunk] or [examples[0]])
            self.engine.set_gradient_accumulation_boundary(boundary_at_end and i == len(chunks) - 1)
            logits, _ = self.engine(**inputs)
            ce = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            self.engine.backward(ce * (scale * weight * factor), scale_wrt_gas=False)
            loss_sum += float(ce.detach()) * weight
        return loss_sum

    def _start_update(self, lr_step: int | None) -> None:
        """Set this update's learning rate from the schedule at ``lr_step`` (default: the next
        update)."""
        step = self.updates if lr_step is None else lr_step
        if step < 0:
            raise ValueError(f"lr_step must be >= 0 (got {step})")
        self.updates = step + 1
        lr = self.config.optim.lr * self.lr_factor(step)
        for group in self.engine.optimizer.param_groups:  # DeepSpeed's wrappers share the base groups
            group["lr"] = lr

    def _optimizer_step(self) -> tuple[float, float]:
        """Step at the accumulation boundary; returns (lr used, pre-clip global gradient norm)."""
        lr = float(self.engine.get_lr()[0])
        manual = None
        if self.config.zero_stage == 0 and self.config.precision == "fp32":
            grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
            manual = float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0
        self.engine.step()
        self._clear_zero3_gradients()
        norm = self.engine.get_global_grad_norm()
        if manual is not None:
            return lr, manual
        if isinstance(norm, torch.Tensor):
            norm = float(norm)
        return lr, float(norm) if norm is not None else float("nan")

    def _clear_zero3_gradients(self) -> None:
        """ZeRO-3 writes each parameter's gradient partition only when its gradient hook fires, and
        never clears the buffer: a parameter without a gradient in a step (the value head during SFT,
        a vision tower on text-only rows) would be stepped with its previous step's gradient, and
        that stale gradient would enter the global norm and clipping. Zero it after every step."""
        if self.zero3:
            buffer = getattr(self.engine.optimizer, "grad_partitions_flat_buffer", None)
            if isinstance(buffer, torch.Tensor):
                buffer.zero_()
