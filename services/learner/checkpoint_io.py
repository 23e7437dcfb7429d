"""The learner's weights out: whole policy weights for a push, and atomic checkpoints with exact resume.

A checkpoint holds the HF files (what vLLM and ``from_pretrained`` read), DeepSpeed's optimizer
shards of every rank, the value head and every rank's RNG states; its format and atomic commit are
:mod:`sftrl.checkpoint`'s.
"""

from __future__ import annotations

import base64
import logging
import random
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.learner.collectives import Collectives
from services.learner.policy import checkpoint_naming
from services.learner.safe_state import read_state_safely
from services.learner.sft_update import OptimizerSteps
from services.learner.value_head import save_value_head
from sftrl import checkpoint as ckpt

log = logging.getLogger(__name__)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "generator": base64.b64encode(generator.get_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return state


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    generator.set_state(_bytes_tensor(state["generator"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_bytes_tensor(state["cuda"]))


class CheckpointIO:
    """Weights out and checkpoints in and out. A checkpoint records ``model_path``, ``precision``
    and ``zero_stage``; it holds the engine's state, the schedule's position (``steps``) and every
    rank's RNG states, ``generator`` included."""

    def __init__(
        self,
        engine: Any,
        comm: Collectives,
        steps: OptimizerSteps,
        processor: Any,
        generator: torch.Generator,
        model_path: str,
        precision: str,
        zero_stage: int,
    ):
        self.engine, self.comm, self.steps = engine, comm, steps
        self.processor, self.generator = processor, generator
        self.model_path, self.precision, self.zero_stage = model_path, precision, zero_stage

    def _gathered(self, params: list[nn.Parameter]) -> Any:
        if self.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _full_state(
        self, module: nn.Module, dtype: torch.dtype | None, checkpoint_format: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """``module.state_dict()`` with every tensor whole (gathered under ZeRO-3), on rank 0 only.

        With ``checkpoint_format`` (HF models) it is what ``save_pretrained`` writes: tied copies
        removed and transformers' load-time renamings reverted to the checkpoint's names.
        """
        with self._gathered(list(module.parameters())):
            if self.comm.rank != 0:
                return None
            state = module.state_dict()
            if checkpoint_format:
                state = checkpoint_naming(module, state)
            out = {}
            for key, value in state.items():
                value = value.detach()
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
                out[key] = value.to("cpu", copy=True).contiguous()
            return out

    def policy_state_dict(self, dtype: str | None = "bfloat16") -> dict[str, torch.Tensor] | None:
        """Full policy weights in HF checkpoint naming (what vLLM's ``reload_weights(...,
        is_checkpoint_format=True)`` and ``from_pretrained`` read; no value-head keys, tied copies
        left out), on rank 0; None on the other ranks. ``dtype=None`` keeps the training dtype."""
        return self._full_state(
            self.engine.module.policy, getattr(torch, dtype) if dtype else None, checkpoint_format=True
        )

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a complete checkpoint at ``path`` (collective: every rank writes its DeepSpeed
        shards, rank 0 the HF files); atomic: see :mod:`sftrl.checkpoint`."""
        final = Path(path)
        tmp = Path(self.comm.broadcast_object(str(ckpt.temp_path(final)) if self.comm.rank == 0 else None))
        if self.comm.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.comm.barrier()
        try:
            self.engine.save_checkpoint(str(tmp / ckpt.DEEPSPEED_DIR), tag="state", save_latest=False)
            policy = self.policy_state_dict(dtype=None)
            head = self.engine.module.value_head
            head_state = self._full_state(head, None) if head is not None else None
            rng = self.comm.gather_object(_rng_state(self.generator))
            if self.comm.rank == 0:
                assert policy is not None
                # already in checkpoint naming: no second renaming pass
                self.engine.module.policy.save_pretrained(tmp, state_dict=policy, save_original_format=False)
                self.processor.save_pretrained(tmp)
                if head is not None and head_state is not None:
                    save_value_head(head_state, head.config(), tmp / ckpt.VALUE_HEAD_DIR)
                ckpt.write_trainer_state(tmp, {
                    "extra": extra or {}, "rng": rng, "world_size": self.comm.world_size,
                    "zero_stage": self.zero_stage, "precision": self.precision,
                    "model": self.model_path, "value_head": head is not None,
                    "optimizer_steps": int(self.engine.global_steps), "updates": self.steps.updates,
                })  # fmt: skip
                ckpt.commit(tmp, final)
        except BaseException:
            if self.comm.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.comm.barrier()

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, schedule position and this rank's RNG states; returns ``extra``."""
        folder = Path(path)
        state = ckpt.read_trainer_state(folder)  # verifies the hashes first: a clear ValueError
        if state.get("value_head") != (self.engine.module.value_head is not None):
            raise ValueError(
                f"checkpoint {folder} was saved {'with' if state.get('value_head') else 'without'} a value head; "
                "this learner differs"
            )
        read_state_safely(self.engine)
        load_path, _ = self.engine.load_checkpoint(
            str(folder / ckpt.DEEPSPEED_DIR),
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=False,  # the schedule is a function of ``updates``
        )
        if load_path is None:
            raise ValueError(f"checkpoint {folder} is incomplete/corrupt: DeepSpeed found no state in it")
        self.steps.clear_zero3_gradients()
        self.steps.updates = int(state.get("updates", state.get("optimizer_steps", 0)))
        rng = state.get("rng") or []
        if len(rng) == self.comm.world_size:
            _set_rng_state(rng[self.comm.rank], self.generator)
        else:
            log.warning(
                "checkpoint %s was written by %d ranks, this run has %d: RNG states not restored",
                folder, len(rng), self.comm.world_size,
            )  # fmt: skip
        self.comm.barrier()
        return state.get("extra", {})
