"""One data-parallel learner rank: an HF policy (plus value head) inside a DeepSpeed engine.

A plain class: tests and single-process runs use it directly (world size 1), ``LearnerGroup`` runs
``world_size`` of them as Ray actors. Every public method that touches the model is collective:
all ranks call it together, with their own shard of the rows.

Step semantics:

- ``sft_step``: one optimizer step over the given rows; the loss is the mean cross-entropy over
  every assistant token of the step on all ranks (each micro-batch's summed loss is divided by the
  global token count, so accumulation gives that mean exactly, whatever the micro-batch sizes).
- ``rl_step``: old log-probs (and values, reference log-probs) are recomputed by the learner, then
  ``rl.epochs`` passes; each pass shuffles the rows and takes ``config.rl_mini_batches`` optimizer
  steps (default 1: one step per epoch over all rows, accumulated over micro-batches).
- All ranks run the same number of forward/backward passes (ZeRO-2/3 communicate on every one):
  a rank with fewer rows pads with zero-weight repeats of one of its rows.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.learner.batch import RLBatch
from services.learner.config import LearnerConfig, RLConfig
from services.learner.ds_config import deepspeed_config, lr_lambda
from services.learner.sft_data import IGNORE_INDEX, SFTExample, load_tokenizer_or_processor
from services.learner.value_head import ValueHead, save_value_head
from sftrl import checkpoint as ckpt
from sftrl.hardware import resolve_precision
from sftrl.models import resolve_model
from sftrl.threads import apply_cpu_threads, cpu_threads

log = logging.getLogger(__name__)
SHM_PREFIX = "deepspeed_allreduce_buffer"


class PolicyModule(nn.Module):
    """What the engine trains: the HF policy and, for PPO, its value head (one optimizer for both)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> logits [B, T, V] (of the last ``logits_to_keep`` positions when > 0), values [B, T] (None
        without a value head)."""
        extra: dict[str, Any] = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        if pixel_values is not None:
            extra["pixel_values"] = pixel_values
            if pixel_attention_mask is not None:
                extra["pixel_attention_mask"] = pixel_attention_mask
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=self.value_head is not None,
            **extra,
        )
        values = self.value_head(out.hidden_states[-1]) if self.value_head is not None else None
        return out.logits, values


def _checkpoint_naming(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as ``save_pretrained`` writes it (transformers 5): tied aliases dropped (by
    storage, so this runs on the live tensors) and weight renamings reverted."""
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # older transformers: nothing is renamed; tied copies are harmless
        pass
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    return state


def _is_processor(obj: Any) -> bool:
    return hasattr(obj, "image_processor") and hasattr(obj, "tokenizer")


def _pad_stack(rows: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """[n, *dims] tensors of differing trailing sizes -> one tensor, padded at the end of each dim."""
    shape = [max(r.shape[d] for r in rows) for d in range(rows[0].dim())]
    out = rows[0].new_full((sum(r.shape[0] for r in rows), *shape[1:]), value)
    at = 0
    for r in rows:
        index = (slice(at, at + r.shape[0]), *(slice(0, s) for s in r.shape[1:]))
        out[index] = r
        at += r.shape[0]
    return out


def _image_inputs(
    pixels: Sequence[torch.Tensor | None], masks: Sequence[torch.Tensor | None]
) -> dict[str, Any]:
    """Per-row images ([n_i, 3, H, W]) -> one ``[1, sum n_i, 3, H, W]`` batch: the model scatters
    image features into the image tokens in row-major order, so concatenation keeps rows aligned."""
    present = [(p, m) for p, m in zip(pixels, masks) if p is not None and p.shape[0] > 0]
    if not present:
        return {}
    values = _pad_stack([p for p, _ in present], 0.0).unsqueeze(0)
    result: dict[str, Any] = {"pixel_values": values}
    if all(m is not None for _, m in present):
        result["pixel_attention_mask"] = _pad_stack([m.long() for _, m in present], 0).bool().unsqueeze(0)
    return result


def length_grouped(
    order: torch.Tensor, lengths: torch.Tensor, micro_batch_size: int, mini_batches: list[list[int]]
) -> torch.Tensor:
    """``order`` with the rows of each mini-batch sorted longest first. Micro-batch ``i`` is the slice
    ``i * micro_batch_size`` onwards of ``order``; ``mini_batches`` lists the (contiguous) micro-batch
    indices of each mini-batch. Every row stays in its mini-batch."""
    n = len(order)
    pieces = []
    for group in mini_batches:
        piece = order[group[0] * micro_batch_size : min((group[-1] + 1) * micro_batch_size, n)]
        pieces.append(piece[torch.argsort(lengths[piece], descending=True, stable=True)])
    return torch.cat(pieces)


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


class LearnerWorker:
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
        self.is_vision = _is_processor(self.processor)
        self.tokenizer = self.processor.tokenizer if self.is_vision else self.processor
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.compute_dtype = torch.bfloat16 if config.precision == "bf16" else torch.float32

        policy = self._load_policy(torch.float32)
        if config.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        head = ValueHead(policy.config.get_text_config().hidden_size) if value_head else None
        self.reference: nn.Module | None = None
        if reference:
            self.reference = (
                self._load_policy(self.compute_dtype).to(self.device).eval().requires_grad_(False)
            )
        module = PolicyModule(policy, head)
        self.ds_config = deepspeed_config(config, world_size)
        self.engine, *_ = deepspeed.initialize(
            model=module,
            model_parameters=[p for p in module.parameters() if p.requires_grad],
            config=self.ds_config,
            dist_init_required=False,
        )
        # The learning-rate schedule counts updates (sft_step / rl_step calls), not optimizer steps:
        # every optimizer step of one RL update (epochs x mini-batches) uses the same rate, as verl
        # steps its scheduler once per training step. The caller may name the update's point on the
        # schedule (``lr_step``): an interleaved step's SFT and RL updates share their loop step's.
        self.lr_factor = lr_lambda(config.optim)
        self.updates = 0

    # -- set-up --------------------------------------------------------------------------------

    def _init_distributed(self, master_addr: str, master_port: int) -> None:
        os.environ.update({
            "RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0",
            "LOCAL_SIZE": "1", "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
        })  # fmt: skip
        if self.config.device == "cpu":
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed
        import torch.distributed as dist

        if dist.is_initialized():  # a second worker in one process (tests): reuse the group
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
                raise RuntimeError(
                    f"this process already belongs to a process group of {dist.get_world_size()} ranks"
                )
            return
        if self.config.device == "cuda":
            torch.cuda.set_device(0)  # Ray shows each actor only its own GPU
        # DeepSpeed caches its communication backend and the groups it cloned in module globals. If the
        # process group was destroyed since (an in-process vLLM engine does so on shutdown: tests, notebooks),
        # those point at groups torch no longer knows: drop them so DeepSpeed wraps the new group.
        import deepspeed.comm.comm as ds_comm
        from deepspeed.utils import groups as ds_groups

        ds_comm.cdb = None
        for name in ("_WORLD_GROUP", "_DATA_PARALLEL_GROUP"):
            if hasattr(ds_groups, name):
                setattr(ds_groups, name, None)
        deepspeed.init_distributed(
            dist_backend="nccl" if self.config.device == "cuda" else "gloo",
            auto_mpi_discovery=False,
            verbose=False,
        )
        # DeepSpeed's CPU shared-memory allreduce maps one /dev/shm file per rank at start-up. Once
        # every rank has mapped its peers' files (after this barrier) the names are no longer needed:
        # unlink our own now, so nothing is left behind even if this process is killed.
        dist.barrier()
        shm = Path("/dev/shm") / f"{SHM_PREFIX}_{os.getuid()}_{master_addr}_{master_port}_{self.rank}"
        if shm.exists():
            self._shm_file = shm
            self._remove_shm()

    def _remove_shm(self) -> None:
        if self._shm_file is not None:
            try:
                self._shm_file.unlink()
            except FileNotFoundError:
                pass

    @staticmethod
    def _seed(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)

    def _load_policy(self, dtype: torch.dtype) -> nn.Module:
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        cls = AutoModelForImageTextToText if self.is_vision else AutoModelForCausalLM
        try:
            model = cls.from_pretrained(self.model_path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load {self.model_path} as a {cls.__name__}: {exc}") from exc
        model.config.use_cache = False
        return model

    @property
    def module(self) -> PolicyModule:
        return self.engine.module

    @property
    def zero3(self) -> bool:
        return self.config.zero_stage == 3

    def ping(self) -> int:
        return self.rank

    # -- collectives ---------------------------------------------------------------------------

    def _all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def _all_max(self, value: int) -> int:
        if self.world_size == 1:
            return int(value)
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.long, device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    @property
    def _comm_device(self) -> torch.device:
        return self.device  # gloo: cpu tensors; nccl: cuda tensors

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # -- batches -------------------------------------------------------------------------------

    def _sft_inputs(self, rows: Sequence[SFTExample]) -> tuple[dict[str, Any], torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r)
            ids[i, :n], labels[i, :n], mask[i, :n] = r.input_ids, r.labels, 1
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        inputs.update(_image_inputs([r.pixel_values for r in rows], [r.pixel_attention_mask for r in rows]))
        return self._to_device(inputs), labels.to(self.device)

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in inputs.items():
            value = value.to(self.device)
            if key == "pixel_values":
                value = value.to(self.compute_dtype)
            out[key] = value
        return out

    def _rl_inputs(self, batch: RLBatch, cache: dict[int, tuple[Any, Any]] | None = None) -> dict[str, Any]:
        inputs: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.images is not None and any(batch.images):
            if not self.is_vision:
                raise ValueError("the batch has images but the model takes text only")
            pixels, masks = [], []
            for images in batch.images:
                key = id(images)
                if cache is None or key not in cache:
                    value = self._process_images(images)
                    if cache is not None:
                        cache[key] = value
                else:
                    value = cache[key]
                pixels.append(value[0])
                masks.append(value[1])
            inputs.update(_image_inputs(pixels, masks))
        return self._to_device(inputs)

    def _process_images(self, images: Sequence[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not images:
            return None, None
        from PIL import Image

        pil = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
        out = self.processor.image_processor(images=[[im.convert("RGB") for im in pil]], return_tensors="pt")
        pv = out["pixel_values"]
        pv = pv.reshape(-1, *pv.shape[-3:])
        pam = out.get("pixel_attention_mask")
        return pv, (pam.reshape(-1, *pam.shape[-2:]) if pam is not None else None)

    @staticmethod
    def _split(n: int, parts: int) -> list[list[int]]:
        """``range(n)`` in ``parts`` contiguous, nearly equal chunks (some empty when n < parts)."""
        return [c.tolist() for c in np.array_split(np.arange(n), parts)]

    # -- SFT -----------------------------------------------------------------------------------

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
        n_micro = self._all_max(math.ceil(len(examples) / self.config.micro_batch_size))
        chunks = self._split(len(examples), n_micro)
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

    def _max_seconds(self, seconds: float) -> float:
        if self.world_size == 1:
            return seconds
        return max(self._all_gather_floats(seconds))

    def _all_gather_floats(self, value: float) -> list[float]:
        import torch.distributed as dist

        out = [torch.zeros(1, dtype=torch.float64, device=self._comm_device) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self._comm_device))
        return [float(t.item()) for t in out]

    # -- RL ------------------------------------------------------------------------------------

    def _mini_batches(self, micro_batches: int) -> list[list[int]]:
        """The micro-batch indices of each optimizer step of an RL epoch: ``config.rl_mini_batches``
        contiguous, nearly equal groups (fewer when there are fewer micro-batches)."""
        return self._split(micro_batches, min(self.config.rl_mini_batches, micro_batches))

    def _micro_batches(
        self, batch: RLBatch, order: torch.Tensor | None = None, group_by_length: bool = False
    ) -> list[tuple[RLBatch, float]]:
        """(micro-batch, weight) in ``order`` (default: row order), padded to the same count on all
        ranks with weight-0 repeats.

        ``group_by_length``: the rows of each mini-batch (``_mini_batches``) are ordered longest
        first. A mini-batch keeps the same rows, hence the same update, but rows of similar length share
        a micro-batch and pad far less (turns of a multi-turn episode differ in length several times
        over)."""
        n = len(batch)
        mbs = self.config.micro_batch_size
        count = self._all_max(math.ceil(n / mbs))
        idx = order if order is not None else torch.arange(n)
        if group_by_length and n:
            idx = length_grouped(idx, batch.num_tokens, mbs, self._mini_batches(count))
        real = [(batch.select(idx[s : s + mbs]), 1.0) for s in range(0, n, mbs)]
        if len(real) < count:
            if n == 0:
                raise ValueError(
                    "an empty shard cannot take part in a step: give every rank at least one episode"
                )
            filler = batch.select(idx[:1])
            real += [(filler, 0.0)] * (count - len(real))
        return real

    def _forward_rl(
        self, mb: RLBatch, cache: dict[int, Any] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> logits of the positions from ``logits_needed_from`` on [B, K, V], token log-probs [B, T]
        (0 where no logits were computed: prompt tokens), values [B, T] or None."""
        from services.learner.rl import logits_needed_from, token_logprobs, widen

        inputs = self._rl_inputs(mb, cache)
        width = inputs["input_ids"].shape[1]
        start = logits_needed_from(mb.action_mask)
        logits, values = self.engine(**inputs, logits_to_keep=width - start)
        return logits, widen(token_logprobs(logits, inputs["input_ids"][:, start:]), width), values

    @torch.no_grad()
    def _score(
        self, batch: RLBatch, cache: dict[int, Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """No-grad token log-probs [B, T] and values at ``value_index`` [B] (None without a head)."""
        self.engine.eval()
        lps, vals = [], []
        for mb, weight in self._micro_batches(batch):
            _, lp, values = self._forward_rl(mb, cache)
            if weight == 0.0:
                continue
            lps.append(F.pad(lp.float().cpu(), (0, batch.input_ids.shape[1] - lp.shape[1])))
            if values is not None:
                vals.append(values.float().cpu().gather(1, mb.value_index.view(-1, 1).cpu()).squeeze(1))
        width = batch.input_ids.shape[1]
        lp_all = torch.cat(lps) if lps else torch.zeros((0, width))
        return lp_all, (torch.cat(vals) if vals else None)

    @torch.no_grad()
    def _reference_logprobs(self, batch: RLBatch, cache: dict[int, Any]) -> torch.Tensor:
        from services.learner.rl import logits_needed_from, token_logprobs, widen

        assert self.reference is not None
        out = []
        mbs = self.config.micro_batch_size
        for s in range(0, len(batch), mbs):
            mb = batch.select(range(s, min(s + mbs, len(batch))))
            inputs = self._rl_inputs(mb, cache)
            width = inputs["input_ids"].shape[1]
            start = logits_needed_from(mb.action_mask)
            logits = self.reference(**inputs, use_cache=False, logits_to_keep=width - start).logits
            lp = widen(token_logprobs(logits, inputs["input_ids"][:, start:]), width).float().cpu()
            out.append(F.pad(lp, (0, batch.input_ids.shape[1] - lp.shape[1])))
        return torch.cat(out) if out else torch.zeros_like(batch.rollout_logprobs)

    def forward_logprobs(self, batch: RLBatch) -> torch.Tensor:
        """[B, T] token log-probs of the current policy (no grad; position t scores input_ids[t])."""
        return self._score(batch)[0]

    def _whiten(self, batch: RLBatch, rl: RLConfig) -> None:
        """Normalise advantages over the rows of ALL ranks (as one batch would be)."""
        adv = batch.advantages
        assert adv is not None
        n, s1, s2 = self._all_sum([adv.numel(), float(adv.double().sum()), float((adv.double() ** 2).sum())])
        if n < 2:
            return
        mean = s1 / n
        std = math.sqrt(max(s2 / n - mean * mean, 0.0))
        batch.advantages = (adv - mean) / (std + 1e-8)

    def rl_step(
        self,
        batch: RLBatch,
        sft: Sequence[SFTExample] | None = None,
        sft_weight: float = 0.0,
        lr_step: int | None = None,
    ) -> dict[str, float]:
        """Recompute old log-probs/values/reference, compute advantages, then ``rl.epochs`` passes
        of ``config.rl_mini_batches`` optimizer steps each. Metrics are averaged over micro-batches
        (weighted by response tokens, rows for ``ppo``) and ranks, identical on every rank.

        With ``sft`` rows, every optimizer step minimises one objective,
        ``(1 - sft_weight) * RL loss + sft_weight * token-mean cross-entropy on the rows``
        (the progressive SFT+RL combination). ``lr_step``: as in :meth:`sft_step`; every optimizer
        step of this update uses the same learning rate."""
        from services.learner.rl import (
            compute_advantages,
            entropy_from_logits,
            policy_loss,
            value_loss,
            widen,
        )

        if self.rl is None:
            raise ValueError("this learner was made without an RLConfig")
        if sft is not None and not sft:
            raise ValueError("rl_step with SFT rows needs at least one row on every rank")
        if not 0.0 <= sft_weight <= 1.0:
            raise ValueError(f"sft_weight must lie in [0, 1] (got {sft_weight})")
        rl = self.rl
        self._start_update(lr_step)
        rl_factor = 1.0 - sft_weight if sft else 1.0
        sft_tokens = self._all_sum([sum(ex.num_target_tokens for ex in sft)])[0] if sft else 0.0
        sft_loss_sum = 0.0
        start = time.perf_counter()
        batch = batch.to("cpu")
        cache: dict[int, Any] = {}
        # (a) the policy before the update: log-probs, values, reference. A single pass of a critic-free
        # method updates the very policy that would score the batch: its training forward gives them.
        single_pass = rl.epochs == 1 and self.config.rl_mini_batches == 1 and self.module.value_head is None
        reuse_forward = single_pass if rl.recompute_logprobs is None else not rl.recompute_logprobs
        if reuse_forward and not single_pass:
            raise ValueError("recompute_logprobs=false needs 1 epoch, 1 mini-batch and no value head")
        if reuse_forward:
            batch.old_logprobs, old_values = None, None
        else:
            batch.old_logprobs, old_values = self._score(batch, cache)
        batch.old_values = None
        if rl.kl_coef > 0 and self.reference is not None:
            batch.ref_logprobs = self._reference_logprobs(batch, cache)
        # (b) advantages; whitening over all ranks' rows (grpo is normalised per group already)
        global_norm = rl.normalize_advantages and rl.algorithm != "grpo"
        local_rl = rl.model_copy(update={"normalize_advantages": False}) if global_norm else rl
        if len(batch):
            compute_advantages(batch, local_rl, values=old_values)
        else:
            batch.advantages = torch.zeros(0)
        raw_advantage_sum = float(batch.advantages.sum())
        if global_norm:
            self._whiten(batch, rl)
        # (c) epochs of clipped updates
        self.engine.train()
        turn_level = rl.algorithm == "ppo"
        sums: dict[str, float] = {}
        weight_total = 0.0
        steps, grad_norms, lr = 0, [], 0.0
        for _ in range(rl.epochs):
            order = torch.randperm(len(batch), generator=self.generator)
            micro = self._micro_batches(batch, order, group_by_length=True)
            groups = self._mini_batches(len(micro))
            for group in groups:
                real = [micro[i][0] for i in group if micro[i][1] > 0]
                tokens, rows = self._all_sum([
                    sum(float(mb.action_mask.sum()) for mb in real), sum(len(mb) for mb in real)
                ])  # fmt: skip
                per_rank_tokens = max(tokens, 1.0) / self.world_size
                per_rank_rows = max(rows, 1.0) / self.world_size
                for k, i in enumerate(group):
                    mb, weight = micro[i]
                    self.engine.set_gradient_accumulation_boundary(not sft and k == len(group) - 1)
                    logits, lp, values = self._forward_rl(mb, cache)
                    ent = widen(entropy_from_logits(logits), lp.shape[1]) if rl.entropy_coef > 0 else None
                    if ent is None:
                        with torch.no_grad():
                            ent_metric = widen(entropy_from_logits(logits.detach()), lp.shape[1])
                    else:
                        ent_metric = ent
                    if reuse_forward:
                        mb.old_logprobs = lp.detach().float().cpu()
                    p_loss, metrics = policy_loss(lp, mb.to(self.device), rl, ent_metric)
                    mb_tokens = float(mb.action_mask.sum())
                    # policy_loss is a mean over this micro-batch (rows for ppo, tokens otherwise):
                    # rescale it to its share of the mini-batch's mean over all ranks.
                    share = len(mb) / per_rank_rows if turn_level else mb_tokens / per_rank_tokens
                    loss = p_loss * share
                    if values is not None:
                        v = values.gather(1, mb.value_index.to(values.device).view(-1, 1)).squeeze(1)
                        v_loss, v_metrics = value_loss(v, mb.to(self.device), rl)
                        loss = loss + v_loss * (len(mb) / per_rank_rows)
                        metrics.update(v_metrics)
                    self.engine.backward(loss * (weight * rl_factor), scale_wrt_gas=False)
                    if weight > 0:
                        w = float(len(mb)) if turn_level else mb_tokens
                        for key, value in metrics.items():
                            sums[key] = sums.get(key, 0.0) + w * float(value)
                        weight_total += w
                if sft:
                    sft_loss_sum += self._sft_backward(sft, sft_tokens, sft_weight, boundary_at_end=True)
                lr, norm = self._optimizer_step()
                grad_norms.append(norm)
                steps += 1
        result = self._average_metrics(sums, weight_total)
        tokens_total, rows_total = self._all_sum([float(batch.action_mask.sum()), float(len(batch))])
        result.update({
            "lr": lr, "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0, "optimizer_steps": steps,
            "tokens": tokens_total, "rows": rows_total,
            "advantage_mean": self._all_sum([raw_advantage_sum])[0] / max(rows_total, 1.0),
            "scoring_passes": 0.0 if reuse_forward else 1.0,  # no-grad forwards before the update
        })  # fmt: skip
        if sft:
            result.update({
                "sft_loss": self._all_sum([sft_loss_sum])[0] / max(sft_tokens * max(steps, 1), 1.0),
                "sft_weight": sft_weight, "sft_tokens": sft_tokens,
            })  # fmt: skip
        result["seconds"] = self._max_seconds(time.perf_counter() - start)
        return result

    def _average_metrics(self, sums: dict[str, float], weight: float) -> dict[str, float]:
        if self.world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, (sums, weight))
        else:
            gathered = [(sums, weight)]
        total: dict[str, float] = {}
        for part, _ in gathered:
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
        w = sum(part_w for _, part_w in gathered)
        return {key: value / w for key, value in sorted(total.items())} if w > 0 else {}

    # -- weights -------------------------------------------------------------------------------

    def _gathered(self, params: list[nn.Parameter]) -> Any:
        from contextlib import nullcontext

        if not self.zero3:
            return nullcontext()
        return self._deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def _full_state(
        self, module: nn.Module, dtype: torch.dtype | None, checkpoint_format: bool = False
    ) -> dict[str, torch.Tensor] | None:
        """``module.state_dict()`` with every tensor whole (gathered under ZeRO-3), on rank 0 only.

        With ``checkpoint_format`` (HF models) it is what ``save_pretrained`` writes: tied copies
        removed and transformers' load-time renamings reverted to the checkpoint's names.
        """
        with self._gathered(list(module.parameters())):
            if self.rank != 0:
                return None
            state = module.state_dict()
            if checkpoint_format:
                state = _checkpoint_naming(module, state)
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
            self.module.policy, getattr(torch, dtype) if dtype else None, checkpoint_format=True
        )

    def flops_per_token(self, training: bool = True) -> float:
        """Compute estimate per token: 6 x parameters when trained (forward + backward), 2 x when
        only scored (forward). Parameters of the policy (value head and reference not counted)."""
        n = sum(getattr(p, "ds_numel", p.numel()) for p in self.module.policy.parameters())
        return float((6 if training else 2) * n)

    # -- checkpoints ---------------------------------------------------------------------------

    def _broadcast_object(self, value: Any) -> Any:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _gather_object(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a complete checkpoint at ``path`` (collective: every rank writes its DeepSpeed
        shards, rank 0 the HF files); atomic: see :mod:`sftrl.checkpoint`."""
        final = Path(path)
        tmp = Path(self._broadcast_object(str(ckpt.temp_path(final)) if self.rank == 0 else None))
        if self.rank == 0:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        try:
            self.engine.save_checkpoint(str(tmp / ckpt.DEEPSPEED_DIR), tag="state", save_latest=False)
            policy = self.policy_state_dict(dtype=None)
            head = self.module.value_head
            head_state = self._full_state(head, None) if head is not None else None
            rng = self._gather_object(_rng_state(self.generator))
            if self.rank == 0:
                assert policy is not None
                # already in checkpoint naming: no second renaming pass
                self.module.policy.save_pretrained(tmp, state_dict=policy, save_original_format=False)
                self.processor.save_pretrained(tmp)
                if head is not None and head_state is not None:
                    save_value_head(head_state, head.config(), tmp / ckpt.VALUE_HEAD_DIR)
                ckpt.write_trainer_state(tmp, {
                    "extra": extra or {}, "rng": rng, "world_size": self.world_size,
                    "zero_stage": self.config.zero_stage, "precision": self.config.precision,
                    "model": self.model_path, "value_head": head is not None,
                    "optimizer_steps": int(self.engine.global_steps), "updates": self.updates,
                })  # fmt: skip
                ckpt.commit(tmp, final)
        except BaseException:
            if self.rank == 0:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._barrier()

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, schedule position and this rank's RNG states; returns ``extra``."""
        folder = Path(path)
        state = ckpt.read_trainer_state(folder)  # verifies the hashes first: a clear ValueError
        if state.get("value_head") != (self.module.value_head is not None):
            raise ValueError(
                f"checkpoint {folder} was saved {'with' if state.get('value_head') else 'without'} a value head; "
                "this learner differs"
            )
        load_path, _ = self.engine.load_checkpoint(
            str(folder / ckpt.DEEPSPEED_DIR),
            tag="state",
            load_optimizer_states=True,
            load_lr_scheduler_states=False,  # the schedule is a function of ``updates``
        )
        if load_path is None:
            raise ValueError(f"checkpoint {folder} is incomplete/corrupt: DeepSpeed found no state in it")
        self._clear_zero3_gradients()
        self.updates = int(state.get("updates", state.get("optimizer_steps", 0)))
        rng = state.get("rng") or []
        if len(rng) == self.world_size:
            _set_rng_state(rng[self.rank], self.generator)
        else:
            log.warning(
                "checkpoint %s was written by %d ranks, this run has %d: RNG states not restored",
                folder, len(rng), self.world_size,
            )  # fmt: skip
        self._barrier()
        return state.get("extra", {})

    def shutdown(self) -> None:
        """Release the engine (and the process group when this worker made one for several ranks)."""
        self._remove_shm()
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            try:
                engine.destroy()
            except Exception:  # best effort on the way out
                pass
        self.engine = None
