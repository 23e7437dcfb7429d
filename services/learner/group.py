"""``world_size`` learner ranks as Ray actors in a placement group, driven as one learner.

The ranks meet through a file on one node, at rank 0's node address across nodes
(:mod:`services.learner.rendezvous`), in a process group of gloo on CPU or NCCL on CUDA.
Every call goes to all ranks at once with each rank's shard, and returns rank 0's answer:
the ranks' metrics are already averaged across ranks, so they agree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.learner.batch import RLBatch, shard_by_episode
from services.learner.config import LearnerConfig, RLConfig
from services.learner.rendezvous import fresh_rendezvous
from services.learner.sft_data import SFTExample
from services.learner.worker import LearnerWorker
from sftrl.ray_setup import ActorBundles


class LearnerRankDied(RuntimeError):
    """A learner rank's process died; the group was stopped and cannot be used again."""


def shard_rows(n: int, world_size: int) -> list[list[int]]:
    """Rows ``0..n-1`` in ``world_size`` contiguous, nearly equal, deterministic shards."""
    if n < world_size:
        raise ValueError(f"{n} rows cannot feed {world_size} learner ranks: give at least one row per rank")
    return [chunk.tolist() for chunk in np.array_split(np.arange(n), world_size)]


class LearnerGroup:
    def __init__(
        self,
        config: LearnerConfig,
        rl: RLConfig | None = None,
        value_head: bool = False,
        reference: bool = False,
    ):
        import ray

        self._ray = ray
        self.config, self.rl = config, rl
        self.last_metrics: list[dict[str, float]] = []  # every rank's metrics of the last step
        self.world_size = config.world_size
        self.bundles = ActorBundles(self.world_size, config.cpus_per_actor, config.gpus_per_actor)
        probe = ray.remote(fresh_rendezvous).options(
            num_cpus=min(0.01, config.cpus_per_actor), scheduling_strategy=self.bundles.strategy(0)
        )
        self.master_addr, self.master_port = ray.get(probe.remote(self.bundles.on_one_node()))
        actor_cls = ray.remote(LearnerWorker)
        tag = uuid.uuid4().hex[:6]
        self.actors = [
            actor_cls.options(
                num_cpus=config.cpus_per_actor,
                num_gpus=config.gpus_per_actor,
                scheduling_strategy=self.bundles.strategy(rank),
                name=f"sftrl-learner-{rank}-{tag}",
            ).remote(
                config, rl, rank, self.world_size, self.master_addr, self.master_port, value_head, reference
            )
            for rank in range(self.world_size)
        ]
        try:
            ray.get([a.ping.remote() for a in self.actors])  # construction finishes only when all joined
        except Exception:
            self.shutdown()
            raise

    def _all(self, method: str, per_rank_args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        """Call ``method`` on every rank and wait for all. A rank that dies or fails leaves the
        others blocked in a collective: the first failure stops every rank and raises at once."""
        args = per_rank_args or [()] * self.world_size
        refs = [getattr(a, method).remote(*arg) for a, arg in zip(self.actors, args)]
        pending = list(refs)
        while pending:
            done, pending = self._ray.wait(pending, num_returns=1)
            try:
                self._ray.get(done[0])
            except Exception as exc:
                rank = refs.index(done[0])
                self._stop_ranks()
                if isinstance(exc, self._ray.exceptions.RayActorError):
                    raise LearnerRankDied(
                        f"learner rank {rank} died during {method} ({type(exc).__name__}); the other ranks were "
                        "stopped. The last checkpoint is intact: continue with `sftrl train --resume auto`"
                    ) from None
                raise
        return self._ray.get(refs)

    def _stop_ranks(self) -> None:
        """Kill every rank (the survivors wait in a collective that cannot finish)."""
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []

    def sft_step(self, examples: Sequence[SFTExample], lr_step: int | None = None) -> dict[str, float]:
        """One optimizer step over ``examples``, split evenly across ranks; rank 0's metrics.
        ``lr_step``: the update's point on the learning-rate schedule (default: the next one)."""
        shards = shard_rows(len(examples), self.world_size)
        self.last_metrics = self._all("sft_step", [([examples[i] for i in rows], lr_step) for rows in shards])
        return self.last_metrics[0]

    def rl_step(
        self,
        batch: RLBatch,
        sft: Sequence[SFTExample] | None = None,
        sft_weight: float = 0.0,
        lr_step: int | None = None,
    ) -> dict[str, float]:
        """One RL update on ``batch``, sharded by episode (groups kept whole); rank 0's metrics.
        ``sft`` rows (split across ranks) join every optimizer step with weight ``sft_weight``."""
        shards = shard_by_episode(batch, self.world_size)
        if any(len(s) == 0 for s in shards):
            raise ValueError(
                f"the batch has too few episode groups ({len(set(batch.group_ids))}) for {self.world_size} ranks"
            )
        if sft is not None and len(sft) < self.world_size:
            raise ValueError(f"{len(sft)} SFT rows cannot be split across {self.world_size} ranks")
        sft_shards = (
            [[sft[i] for i in rows] for rows in shard_rows(len(sft), self.world_size)]
            if sft is not None
            else [None] * self.world_size
        )
        self.last_metrics = self._all(
            "rl_step", [(s, rows, sft_weight, lr_step) for s, rows in zip(shards, sft_shards, strict=True)]
        )
        return self.last_metrics[0]

    def forward_logprobs(self, batch: RLBatch) -> Any:
        """[B, T] token log-probs of the current policy, rows in ``batch`` order."""
        import torch

        shards = shard_by_episode(batch, self.world_size)
        parts = self._all("forward_logprobs", [(s,) for s in shards])
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        where = {(e, t): i for i, (e, t) in enumerate(zip(batch.episode_ids, batch.turn_index))}
        for shard, lp in zip(shards, parts):
            for j, key in enumerate(zip(shard.episode_ids, shard.turn_index)):
                out[where[key], : lp.shape[1]] = lp[j]
        return out

    def policy_state_dict(self, dtype: str | None = "bfloat16", as_ref: bool = False) -> Any:
        """Rank 0's full policy state dict (HF naming); with ``as_ref`` its Ray object reference,
        which ``RolloutGroup.update_weights`` takes without a copy through this process."""
        refs = [a.policy_state_dict.remote(dtype) for a in self.actors]
        self._ray.get(refs[1:])  # the other ranks only take part in gathering (ZeRO-3)
        return refs[0] if as_ref else self._ray.get(refs[0])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """All ranks write their DeepSpeed state; rank 0 the HF folder. ``path`` must be on storage
        every rank's node sees (one machine, or a shared file system)."""
        self._all("save_checkpoint", [(str(path), extra or {})] * self.world_size)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        return self._all("load_checkpoint", [(str(path),)] * self.world_size)[0]

    def flops_per_token(self, training: bool = True) -> float:
        """6 x policy parameters (training) or 2 x (forward only)."""
        return self._ray.get(self.actors[0].flops_per_token.remote(training))

    def shutdown(self) -> None:
        ray = self._ray
        for actor in getattr(self, "actors", []):
            try:
                ray.get(actor.shutdown.remote(), timeout=60)
            except Exception:  # a dead or stuck actor is killed below anyway
                pass
            try:
                ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []
        self.bundles.remove()
