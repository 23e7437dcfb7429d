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

The class is assembled from one file per concern, each a base of the next:
``collectives`` (process group) <- ``packing`` (rows to inputs) <- ``sft_update`` (optimizer steps,
SFT) <- ``rl_update`` (the RL update's phases) and ``checkpoint_io`` (weights out, checkpoints).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.learner.checkpoint_io import CheckpointIO
from services.learner.config import LearnerConfig, RLConfig
from services.learner.ds_config import deepspeed_config, lr_lambda
from services.learner.policy import PolicyModule, load_policy
from services.learner.rl_update import RLUpdates
from services.learner.value_head import ValueHead
from sftrl.hardware import resolve_precision
from sftrl.models import resolve_model
from sftrl.models.processor import is_processor, load_tokenizer_or_processor
from sftrl.threads import apply_cpu_threads, cpu_threads

__all__ = ["LearnerWorker", "PolicyModule"]


class LearnerWorker(RLUpdates, CheckpointIO):
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
        self.config, self.rl = config.model_copy(update={"precision": precision}), rl
        config = self.config
        self.rank, self.world_size = rank, world_size
        if config.device == "cpu":
            apply_cpu_threads(cpu_threads(config.threads, world_size))
        self._shm_file: Path | None = None
        self._init_distributed(master_addr, master_port)
        import deepspeed

        self._deepspeed = deepspeed
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if config.device == "cuda"
            else torch.device("cpu")
        )
        self._seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed + 1000003 * rank)  # RL shuffling

        self.model_path = resolve_model(config.model)
        self.processor = load_tokenizer_or_processor(self.model_path)
        self.is_vision = is_processor(self.processor)
        self.tokenizer = self.processor.tokenizer if self.is_vision else self.processor
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.compute_dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32

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
        # the schedule counts updates, not optimizer steps (see services.learner.sft_update)
        self.lr_factor = lr_lambda(config.optim)
        self.updates = 0

    # -- set-up --------------------------------------------------------------------------------

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

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
        self._remove_shm()
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            try:
                engine.destroy()
            except Exception:  # best effort on the way out
                pass
        self.engine = None
