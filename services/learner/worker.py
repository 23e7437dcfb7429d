"""One data-parallel learner rank: an HF policy (plus value head) inside a DeepSpeed engine.

A plain class: tests and single-process runs use it directly (world size 1), ``LearnerGroup`` runs
``world_size`` of them as Ray actors. Every public method that touches the model is collective:
all ranks call it together, with their own shard of the rows.

Step semantics:

- ``sft_step``: one optimizer step over the given rows; the loss is the mean cross-entropy over
  every assistant token of the step on all ranks (each micro-batch's summed loss is divided by the
  global token count, so accumulation gives that mean exactly, whatever the micro-batch sizes).
- ``rl_step``: old log-probs (and values, reference log-probs) are recomputed by the learner, then
  ``rl.epochs`` passes; each pass shuffles the episodes and takes ``config.rl_mini_batches`` optimizer
  steps (default 1: one step per epoch over all rows, accumulated over micro-batches).
- All ranks run the same number of forward/backward passes (ZeRO-2/3 communicate on every one):
  a rank with fewer rows pads with zero-weight repeats of one of its rows.

The worker loads the model and the engine, and holds the parts that use them, one file per concern,
each part built here from what it needs: ``comm`` (:mod:`~services.learner.collectives`: the process
group), ``packer`` (:mod:`~services.learner.packing`: rows to inputs and micro-batches), ``steps``
and ``sft`` (:mod:`~services.learner.sft_update`: optimizer steps, the SFT update), ``rl_update``
(:mod:`~services.learner.rl_update`: scoring, the RL update) and ``checkpoints``
(:mod:`~services.learner.checkpoint_io`: weights out, checkpoints).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.learner.batch import RLBatch
from services.learner.checkpoint_io import CheckpointIO
from services.learner.collectives import Collectives, join_process_group
from services.learner.config import LearnerConfig, RLConfig
from services.learner.ds_config import deepspeed_config
from services.learner.packing import Packer
from services.learner.policy import PolicyModule, load_policy
from services.learner.rl_update import RLUpdate
from services.learner.sft_data import SFTExample
from services.learner.sft_update import OptimizerSteps, SFTUpdate
from services.learner.value_head import ValueHead
from sftrl.hardware import resolve_precision
from sftrl.models import resolve_model
from sftrl.models.processor import is_processor, load_tokenizer_or_processor
from sftrl.threads import apply_cpu_threads, cpu_threads

__all__ = ["LearnerWorker", "PolicyModule"]


def compute_dtype_of(precision: str) -> torch.dtype:
    """The dtype a resolved precision (``float32`` or ``bfloat16``) computes in."""
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class LearnerWorker:
    """One learner rank (see the module's docstring)."""

    def __init__(
        self,
        config: LearnerConfig,
        rl: RLConfig | None = None,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
        value_head: bool = False,
        reference: bool = False,
    ):
        if rl is not None and rl.algorithm in ("ppo", "ppo_token") and not value_head:
            raise ValueError(f"algorithm {rl.algorithm!r} needs a value head (value_head=True)")
        precision, _ = resolve_precision(config.precision, config.device)  # auto: what this node computes
        self.config = config = config.model_copy(update={"precision": precision})
        self.rank, self.world_size = rank, world_size
        if config.device == "cpu":
            apply_cpu_threads(cpu_threads(config.threads, world_size))
        shm_file = join_process_group(
            rank, world_size, master_addr, master_port, config.device, config.collective_timeout_s
        )
        import deepspeed

        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if config.device == "cuda"
            else torch.device("cpu")
        )
        self.comm = Collectives(rank, world_size, self.device, shm_file)
        seed_everything(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + 1000003 * rank)  # RL shuffling

        self.model_path = resolve_model(config.model)
        self.processor = load_tokenizer_or_processor(self.model_path)
        self.is_vision = is_processor(self.processor)
        self.tokenizer = self.processor.tokenizer if self.is_vision else self.processor
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.compute_dtype = compute_dtype_of(config.precision)

        policy = load_policy(self.model_path, self.is_vision, torch.float32)
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head = ValueHead(policy.config.get_text_config().hidden_size) if value_head else None
        self.reference: nn.Module | None = None
        if reference:
            self.reference = (
                load_policy(self.model_path, self.is_vision, self.compute_dtype)
                .to(self.device)
                .eval()
                .requires_grad_(False)
            )
        module = PolicyModule(policy, head)
        self.ds_config = deepspeed_config(config, world_size)
        self.engine, *_ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=self.ds_config,
            dist_init_required=False,
        )
        self._build_parts(rl)

    def _build_parts(self, rl: RLConfig | None) -> None:
        """The parts that use the engine, each given what it reads (see the module's docstring)."""
        config, engine = self.config, self.engine
        self.packer = Packer(
            self.processor, self.is_vision, self.pad_id, self.device, self.compute_dtype, self.comm,
            config.micro_batch_size, config.micro_batch_tokens,
        )  # fmt: skip
        # the schedule counts updates, not optimizer steps (see services.learner.sft_update)
        self.steps = OptimizerSteps(engine, config.optim, config.zero_stage, self.compute_dtype)
        self.sft = SFTUpdate(engine, self.comm, self.packer, self.steps)
        self.rl_update = RLUpdate(
            engine, self.comm, self.packer, self.steps, self.sft, rl, config.rl_mini_batches,
            self.generator, self.reference,
        )  # fmt: skip
        self.checkpoints = CheckpointIO(
            engine, self.comm, self.steps, self.processor, self.generator, self.model_path,
            config.precision, config.zero_stage,
        )  # fmt: skip

    # -- what the parts hold -------------------------------------------------------------------

    @property
    def module(self) -> PolicyModule:
        return self.engine.module

    @property
    def rl(self) -> RLConfig | None:
        return self.rl_update.rl

    @rl.setter
    def rl(self, value: RLConfig | None) -> None:
        self.rl_update.rl = value

    @property
    def updates(self) -> int:
        """Updates begun (the learning-rate schedule's position)."""
        return self.steps.updates

    # -- the collective calls ------------------------------------------------------------------

    def sft_step(self, examples: Sequence[SFTExample], lr_step: int | None = None) -> dict[str, float]:
        """One optimizer step over this rank's ``examples``
        (:meth:`~services.learner.sft_update.SFTUpdate.step`)."""
        return self.sft.step(examples, lr_step)

    def rl_step(
        self,
        batch: RLBatch,
        sft: Sequence[SFTExample] | None = None,
        sft_weight: float = 0.0,
        lr_step: int | None = None,
    ) -> dict[str, float]:
        """One RL update on this rank's episodes, with ``sft`` rows in every optimizer step when given
        (:meth:`~services.learner.rl_update.RLUpdate.step`)."""
        return self.rl_update.step(batch, sft, sft_weight, lr_step)

    def forward_logprobs(self, batch: RLBatch) -> torch.Tensor:
        """[B, T] token log-probs of the current policy (no grad; position t scores input_ids[t])."""
        return self.rl_update.score(batch)[0]

    def policy_state_dict(self, dtype: str | None = "bfloat16") -> dict[str, torch.Tensor] | None:
        """Full policy weights in HF checkpoint naming on rank 0, None on the others
        (:meth:`~services.learner.checkpoint_io.CheckpointIO.policy_state_dict`)."""
        return self.checkpoints.policy_state_dict(dtype)

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a complete checkpoint at ``path``, atomically
        (:meth:`~services.learner.checkpoint_io.CheckpointIO.save`)."""
        self.checkpoints.save(path, extra)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint; returns its ``extra``
        (:meth:`~services.learner.checkpoint_io.CheckpointIO.load`)."""
        return self.checkpoints.load(path)

    def ping(self) -> int:
        return self.rank

    def flops_per_token(self, training: bool = True) -> float:
        """Compute estimate per token: 6 x parameters when trained (forward + backward), 2 x when
        only scored (forward). Parameters of the policy (value head and reference not counted)."""
        n = sum(getattr(p, "ds_numel", p.numel()) for p in self.module.policy.parameters())
        return float((6 if training else 2) * n)

    def shutdown(self) -> None:
        """Release the engine and this rank's shared-memory file. The process group stays: another
        worker in this process (tests) reuses it, and it ends with the process."""
        comm = getattr(self, "comm", None)
        if comm is not None:
            comm.close()
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            try:
                engine.destroy()
            except Exception:  # best effort on the way out
                pass
        # the parts hold the engine too: drop them with it, so its memory can go
        for name in ("steps", "sft", "rl_update", "checkpoints"):
            vars(self).pop(name, None)
        self.engine = None
