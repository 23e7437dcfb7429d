"""The RL update, in its three phases: the old policy's scores, advantages, clipped epochs.

:meth:`RLUpdate.step` (the learner's ``rl_step``) recomputes the old log-probs (and values,
reference log-probs) on the learner, computes advantages, then runs ``rl.epochs`` passes; each pass
shuffles the episodes and takes ``config.rl_mini_batches`` optimizer steps (default 1: one step per
epoch over all rows, accumulated over micro-batches of whole episodes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.learner.batch import RLBatch
from services.learner.collectives import Collectives
from services.learner.config import RLConfig
from services.learner.packing import Packer
from services.learner.sft_data import SFTExample
from services.learner.sft_update import OptimizerSteps, SFTUpdate
from services.learner.sharing import forwarded

_ModelCall = Callable[[dict[str, Any], int], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class _SharedForward:
    """One forward of a micro-batch's longest row per episode (see ``RLUpdate._forward_shared``)."""

    logprobs: torch.Tensor  # [run rows, T]
    values: torch.Tensor | None  # [run rows, T]
    logits: torch.Tensor  # [run rows, T - start, V]
    width: int
    back: Callable[[torch.Tensor | None], torch.Tensor | None]


@dataclass
class _EpochTotals:
    """What the optimizer steps of one update add up (this rank's share)."""

    sums: dict[str, float] = field(default_factory=dict)  # metric x weight
    weight: float = 0.0
    steps: int = 0
    grad_norms: list[float] = field(default_factory=list)
    lr: float = 0.0
    sft_loss_sum: float = 0.0


class RLUpdate:
    """Scoring and the RL update. ``rl`` (None: the learner takes SFT steps only) and
    ``mini_batches`` (optimizer steps per epoch) are read at each step."""

    def __init__(
        self,
        engine: Any,
        comm: Collectives,
        packer: Packer,
        steps: OptimizerSteps,
        sft: SFTUpdate,
        rl: RLConfig | None,
        mini_batches: int,
        generator: torch.Generator,
        reference: nn.Module | None = None,
    ):
        self.engine, self.comm, self.packer, self.steps, self.sft = engine, comm, packer, steps, sft
        self.rl, self.mini_batches = rl, mini_batches
        self.device = packer.device
        self.generator = generator  # shuffles the episodes of each epoch
        self.reference = reference  # frozen, in the compute dtype, on every rank (kl_coef > 0)

    def _forward_rl(
        self, mb: RLBatch, cache: dict[int, Any] | None, entropy: str = "none"
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> token log-probs [B, T] (0 where no logits were computed: prompt tokens), values [B, T]
        (None without a head), and with ``entropy`` "grad" or "detached" the entropies [B, T]."""
        from services.learner.rl import entropy_from_logits, widen

        out = self._forward_shared(mb, cache, lambda inputs, keep: self.engine(**inputs, logits_to_keep=keep))
        ent = None
        if entropy == "grad":  # the bonus needs the entropy's gradient
            ent = widen(entropy_from_logits(out.logits), out.width)
        elif entropy == "detached":
            with torch.no_grad():
                ent = widen(entropy_from_logits(out.logits.detach()), out.width)
        return out.back(out.logprobs), out.back(out.values), out.back(ent)

    def _forward_shared(self, mb: RLBatch, cache: dict[int, Any] | None, call: _ModelCall) -> _SharedForward:
        """``call(inputs, logits_to_keep) -> (logits, values or None)`` on one row per episode.

        The turns of an episode are scored by one forward of its longest row
        (:mod:`services.learner.sharing`); the output head runs only from ``logits_needed_from`` on.
        The result's ``back`` spreads a [run rows, T] tensor over the micro-batch's rows."""
        from services.learner.rl import logits_needed_from, token_logprobs, widen
        from services.learner.sharing import prefix_hosts, spread

        hosts = prefix_hosts(mb)
        run_rows = sorted(set(hosts))
        fwd = mb if len(run_rows) == len(mb) else mb.select(run_rows)
        inputs = self.packer.rl_inputs(fwd, cache)
        width = inputs["input_ids"].shape[1]
        start = logits_needed_from(mb.action_mask)
        logits, values = call(inputs, width - start)
        lp = widen(token_logprobs(logits, inputs["input_ids"][:, start:]), width)

        def back(x: torch.Tensor | None) -> torch.Tensor | None:
            return x if x is None or fwd is mb else spread(x, hosts, run_rows, mb.attention_mask)

        return _SharedForward(lp, values, logits, width, back)

    @torch.no_grad()
    def score(
        self, batch: RLBatch, cache: dict[int, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """No-grad token log-probs [B, T] and values at ``value_index`` [B] (None without a head)."""
        self.engine.eval()
        width = batch.input_ids.shape[1]
        lp_all = torch.zeros((len(batch), width))
        vals_all = torch.zeros(len(batch)) if self.engine.module.value_head is not None else None
        for rows, weight in self.packer.micro_batches(batch):
            mb = batch.select(rows)
            lp, values, _ = self._forward_rl(mb, cache)
            if weight == 0.0:
                continue
            index = torch.tensor(rows, dtype=torch.long)
            lp_all[index] = F.pad(lp.float().cpu(), (0, width - lp.shape[1]))
            if values is not None and vals_all is not None:
                vals_all[index] = values.float().cpu().gather(1, mb.value_index.view(-1, 1).cpu()).squeeze(1)
        return lp_all, vals_all

    @torch.no_grad()
    def _reference_logprobs(self, batch: RLBatch, cache: dict[int, Any]) -> torch.Tensor:
        """[B, T] token log-probs of the frozen reference, scored as the policy's are: one forward per
        episode (its longest row) in the scoring pass's micro-batches. The reference is a plain
        module on every rank, so a rank runs only its own micro-batches."""
        reference = self.reference
        assert reference is not None

        def call(inputs: dict[str, Any], keep: int) -> tuple[torch.Tensor, None]:
            return reference(**inputs, use_cache=False, logits_to_keep=keep).logits, None

        width = batch.input_ids.shape[1]
        out = torch.zeros((len(batch), width))
        for rows, weight in self.packer.micro_batches(batch):
            if weight == 0.0:
                continue
            scored = self._forward_shared(batch.select(rows), cache, call)
            lp = scored.back(scored.logprobs)
            assert lp is not None
            out[torch.tensor(rows, dtype=torch.long)] = F.pad(lp.float().cpu(), (0, width - lp.shape[1]))
        return out

    def _whiten(self, batch: RLBatch, rl: RLConfig) -> None:
        """Normalise advantages over the rows of ALL ranks (as one batch would be)."""
        adv = batch.advantages
        assert adv is not None
        n, s1, s2 = self.comm.all_sum(
            [adv.numel(), float(adv.double().sum()), float((adv.double() ** 2).sum())]
        )
        if n < 2:
            return
        mean = s1 / n
        std = math.sqrt(max(s2 / n - mean * mean, 0.0))
        batch.advantages = (adv - mean) / (std + 1e-8)

    def step(
        self,
        batch: RLBatch,
        sft: Sequence[SFTExample] | None = None,
        sft_weight: float = 0.0,
        lr_step: int | None = None,
    ) -> dict[str, float]:
        """Recompute old log-probs/values/reference, compute advantages, then ``rl.epochs`` passes
        of ``mini_batches`` optimizer steps each. Metrics are averaged over micro-batches
        (weighted by response tokens, rows for ``ppo``) and ranks, identical on every rank.

        With ``sft`` rows, every optimizer step minimises one objective,
        ``(1 - sft_weight) * RL loss + sft_weight * token-mean cross-entropy on the rows``
        (the progressive SFT+RL combination). ``lr_step``: as in
        :meth:`~services.learner.sft_update.SFTUpdate.step`; every optimizer step of this update uses
        the same learning rate."""
        if self.rl is None:
            raise ValueError("this learner was made without an RLConfig")
        if sft is not None and not sft:
            raise ValueError("rl_step with SFT rows needs at least one row on every rank")
        if not 0.0 <= sft_weight <= 1.0:
            raise ValueError(f"sft_weight must lie in [0, 1] (got {sft_weight})")
        rl = self.rl
        self.steps.start_update(lr_step)
        sft_tokens = self.comm.all_sum([sum(ex.num_target_tokens for ex in sft)])[0] if sft else 0.0
        start = time.perf_counter()
        batch = batch.to("cpu")
        cache: dict[int, Any] = {}
        reuse_forward, old_values = self._old_policy(batch, rl, cache)
        raw_advantage_sum = self._advantages(batch, rl, old_values)
        totals = self._epochs(batch, rl, cache, reuse_forward, sft, sft_tokens, sft_weight)

        result = self._average_metrics(totals.sums, totals.weight)
        rows_run, tokens_run = forwarded(batch)
        tokens_total, rows_total, rows_forwarded, tokens_forwarded = self.comm.all_sum(
            [float(batch.action_mask.sum()), float(len(batch)), float(rows_run), float(tokens_run)]
        )
        result.update({
            "lr": totals.lr, "optimizer_steps": totals.steps,
            "grad_norm": float(np.mean(totals.grad_norms)) if totals.grad_norms else 0.0,
            "tokens": tokens_total, "rows": rows_total,
            "forwarded_rows": rows_forwarded, "forwarded_tokens": tokens_forwarded,  # run through the model
            "advantage_mean": self.comm.all_sum([raw_advantage_sum])[0] / max(rows_total, 1.0),
            "scoring_passes": 0.0 if reuse_forward else 1.0,  # no-grad forwards before the update
        })  # fmt: skip
        if sft:
            result.update({
                "sft_loss": self.comm.all_sum([totals.sft_loss_sum])[0] / max(sft_tokens * max(totals.steps, 1), 1.0),
                "sft_weight": sft_weight, "sft_tokens": sft_tokens,
            })  # fmt: skip
        result["seconds"] = self.comm.max_seconds(time.perf_counter() - start)
        return result

    def _old_policy(
        self, batch: RLBatch, rl: RLConfig, cache: dict[int, Any]
    ) -> tuple[bool, torch.Tensor | None]:
        """Phase (a): the policy before the update scores the batch (log-probs, values, reference).

        A single pass of a critic-free method updates the very policy that would score the batch:
        its training forward gives the old log-probs, and no scoring pass runs. Returns (whether the
        training forward is reused, the old values)."""
        single_pass = rl.epochs == 1 and self.mini_batches == 1 and self.engine.module.value_head is None
        reuse_forward = single_pass if rl.recompute_logprobs is None else not rl.recompute_logprobs
        if reuse_forward and not single_pass:
            raise ValueError("recompute_logprobs=false needs 1 epoch, 1 mini-batch and no value head")
        if reuse_forward:
            batch.old_logprobs, old_values = None, None
        else:
            batch.old_logprobs, old_values = self.score(batch, cache)
        batch.old_values = None
        if rl.kl_coef > 0 and self.reference is not None:
            batch.ref_logprobs = self._reference_logprobs(batch, cache)
        return reuse_forward, old_values

    def _advantages(self, batch: RLBatch, rl: RLConfig, old_values: torch.Tensor | None) -> float:
        """Phase (b): advantages, whitened over all ranks' rows (GRPO's are normalised per group
        already). Returns this rank's sum of the advantages before whitening."""
        from services.learner.rl import compute_advantages

        global_norm = rl.normalize_advantages and rl.algorithm != "grpo"
        local_rl = rl.model_copy(update={"normalize_advantages": False}) if global_norm else rl
        if len(batch):
            compute_advantages(batch, local_rl, values=old_values)
        else:
            batch.advantages = torch.zeros(0)
        assert batch.advantages is not None
        raw_sum = float(batch.advantages.sum())
        if global_norm:
            self._whiten(batch, rl)
        return raw_sum

    def _epochs(
        self,
        batch: RLBatch,
        rl: RLConfig,
        cache: dict[int, Any],
        reuse_forward: bool,
        sft: Sequence[SFTExample] | None,
        sft_tokens: float,
        sft_weight: float,
    ) -> _EpochTotals:
        """Phase (c): ``rl.epochs`` shuffled passes of clipped updates, one optimizer step per
        mini-batch; with SFT rows, each step also takes the weighted cross-entropy's gradient."""
        self.engine.train()
        totals = _EpochTotals()
        rl_factor = 1.0 - sft_weight if sft else 1.0
        for _ in range(rl.epochs):
            for step in self.packer.epoch_plan(batch, self.generator, self.mini_batches):
                items = [(batch.select(rows), weight) for rows, weight in step]
                self._mini_batch_backward(items, rl, cache, reuse_forward, rl_factor, not sft, totals)
                if sft:
                    totals.sft_loss_sum += self.sft.backward(
                        sft, sft_tokens, sft_weight, boundary_at_end=True
                    )
                totals.lr, norm = self.steps.step()
                totals.grad_norms.append(norm)
                totals.steps += 1
        return totals

    def _mini_batch_backward(
        self,
        items: list[tuple[RLBatch, float]],
        rl: RLConfig,
        cache: dict[int, Any],
        reuse_forward: bool,
        rl_factor: float,
        boundary_at_end: bool,
        totals: _EpochTotals,
    ) -> None:
        """Backward of one mini-batch's RL loss, micro-batch by micro-batch: each micro-batch's mean
        loss is rescaled to its share of the mini-batch's mean over all ranks."""
        real = [mb for mb, weight in items if weight > 0]
        tokens, rows = self.comm.all_sum([
            sum(float(mb.action_mask.sum()) for mb in real), sum(len(mb) for mb in real)
        ])  # fmt: skip
        per_rank_tokens = max(tokens, 1.0) / self.comm.world_size
        per_rank_rows = max(rows, 1.0) / self.comm.world_size
        turn_level = rl.algorithm == "ppo"  # its losses are means over rows, the others' over tokens
        for k, (mb, weight) in enumerate(items):
            self.engine.set_gradient_accumulation_boundary(boundary_at_end and k == len(items) - 1)
            mb_tokens = float(mb.action_mask.sum())
            share = len(mb) / per_rank_rows if turn_level else mb_tokens / per_rank_tokens
            loss, metrics = self._rl_loss(mb, rl, cache, reuse_forward, share, len(mb) / per_rank_rows)
            self.engine.backward(loss * (weight * rl_factor), scale_wrt_gas=False)
            if weight > 0:
                w = float(len(mb)) if turn_level else mb_tokens
                for key, value in metrics.items():
                    totals.sums[key] = totals.sums.get(key, 0.0) + w * float(value)
                totals.weight += w

    def _rl_loss(
        self,
        mb: RLBatch,
        rl: RLConfig,
        cache: dict[int, Any],
        reuse_forward: bool,
        policy_share: float,
        value_share: float,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """One micro-batch's policy loss x ``policy_share`` (+ value loss x ``value_share``)."""
        from services.learner.rl import policy_loss, value_loss

        lp, values, entropy = self._forward_rl(mb, cache, "grad" if rl.entropy_coef > 0 else "detached")
        if reuse_forward:
            mb.old_logprobs = lp.detach().float().cpu()
        p_loss, metrics = policy_loss(lp, mb.to(self.device), rl, entropy)
        loss = p_loss * policy_share
        if values is not None:
            v = values.gather(1, mb.value_index.to(values.device).view(-1, 1)).squeeze(1)
            v_loss, v_metrics = value_loss(v, mb.to(self.device), rl)
            loss = loss + v_loss * value_share
            metrics.update(v_metrics)
        return loss, metrics

    def _average_metrics(self, sums: dict[str, float], weight: float) -> dict[str, float]:
        """Weighted means of the metrics over every rank's micro-batches."""
        total: dict[str, float] = {}
        gathered = self.comm.gather_object((sums, weight))
        for part, _ in gathered:
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
        w = sum(part_w for _, part_w in gathered)
        return {key: value / w for key, value in sorted(total.items())} if w > 0 else {}
