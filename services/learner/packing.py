"""Rows to model inputs: padding, images, and the micro-batches of a step.

All ranks must run the same number of forward/backward passes (ZeRO-2/3 communicate on every one),
so a rank with fewer rows pads its step with zero-weight repeats of one of its rows. RL micro-batches
hold whole episodes, whose turns share one forward (:mod:`services.learner.sharing`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from services.learner.batch import RLBatch, row_units
from services.learner.collectives import Collectives
from services.learner.sft_data import IGNORE_INDEX, SFTExample
from services.learner.sharing import pack_episodes, prefix_hosts


def pad_stack(rows: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    """[n, *dims] tensors of differing trailing sizes -> one tensor, padded at the end of each dim."""
    shape = [max(r.shape[d] for r in rows) for d in range(rows[0].dim())]
    out = rows[0].new_full((sum(r.shape[0] for r in rows), *shape[1:]), value)
    at = 0
    for r in rows:
        index = (slice(at, at + r.shape[0]), *(slice(0, s) for s in r.shape[1:]))
        out[index] = r
        at += r.shape[0]
    return out


def image_inputs(
    pixels: Sequence[torch.Tensor | None], masks: Sequence[torch.Tensor | None]
) -> dict[str, Any]:
    """Per-row images ([n_i, 3, H, W]) -> one ``[1, sum n_i, 3, H, W]`` batch: the model scatters
    image features into the image tokens in row-major order, so concatenation keeps rows aligned."""
    present = [(p, m) for p, m in zip(pixels, masks) if p is not None and p.shape[0] > 0]
    if not present:
        return {}
    values = pad_stack([p for p, _ in present], 0.0).unsqueeze(0)
    result: dict[str, Any] = {"pixel_values": values}
    if all(m is not None for _, m in present):
        result["pixel_attention_mask"] = pad_stack([m.long() for _, m in present], 0).bool().unsqueeze(0)
    return result


def split(n: int, parts: int) -> list[list[int]]:
    """``range(n)`` in ``parts`` contiguous, nearly equal chunks (some empty when n < parts)."""
    return [c.tolist() for c in np.array_split(np.arange(n), parts)]


class Packer:
    """Rows to padded, device-ready inputs, and a step's rows to micro-batches of at most
    ``micro_batch_size`` rows (and ``micro_batch_tokens`` padded tokens, when set) that every rank
    runs as many of (``comm``)."""

    def __init__(
        self,
        processor: Any,
        is_vision: bool,
        pad_id: int,
        device: torch.device,
        compute_dtype: torch.dtype,
        comm: Collectives,
        micro_batch_size: int,
        micro_batch_tokens: int | None,
    ):
        self.processor, self.is_vision, self.pad_id = processor, is_vision, pad_id
        self.device, self.compute_dtype = device, compute_dtype  # images are fed in the compute dtype
        self.comm = comm
        self.micro_batch_size, self.micro_batch_tokens = micro_batch_size, micro_batch_tokens

    def sft_inputs(self, rows: Sequence[SFTExample]) -> tuple[dict[str, Any], torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r)
            ids[i, :n], labels[i, :n], mask[i, :n] = r.input_ids, r.labels, 1
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        inputs.update(image_inputs([r.pixel_values for r in rows], [r.pixel_attention_mask for r in rows]))
        return self._to_device(inputs), labels.to(self.device)

    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in inputs.items():
            value = value.to(self.device)
            if key == "pixel_values":
                value = value.to(self.compute_dtype)
            out[key] = value
        return out

    def rl_inputs(self, batch: RLBatch, cache: dict[int, tuple[Any, Any]] | None = None) -> dict[str, Any]:
        """``batch``'s model inputs; ``cache`` keeps each episode's processed images for the step."""
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
            inputs.update(image_inputs(pixels, masks))
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

    def sft_chunks(self, examples: Sequence[SFTExample]) -> list[list[int]]:
        """SFT micro-batches as row indices, as many on every rank (empty ones pad): contiguous chunks
        of at most ``micro_batch_size`` rows, or with ``micro_batch_tokens`` rows taken longest first
        into chunks within the budget."""
        budget = self.micro_batch_tokens
        if budget is None:
            return split(len(examples), self.comm.all_max(math.ceil(len(examples) / self.micro_batch_size)))
        order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
        rows = list(range(len(examples)))  # every row is its own forward
        chunks = pack_episodes([[i] for i in order], rows, self.micro_batch_size,
                               [len(e) for e in examples], budget)  # fmt: skip
        return chunks + [[] for _ in range(self.comm.all_max(len(chunks)) - len(chunks))]

    def micro_batches(self, batch: RLBatch) -> list[tuple[list[int], float]]:
        """The scoring pass's micro-batches, as (rows, weight): whole episodes in batch order, or longest
        first under a token budget (the order of a no-grad pass changes nothing but its padding)."""
        by_length = self.micro_batch_tokens is not None
        return self._plan(batch, [row_units(batch)], group_by_length=by_length)[0]

    def epoch_plan(
        self, batch: RLBatch, generator: torch.Generator, mini_batches: int
    ) -> list[list[tuple[list[int], float]]]:
        """One RL epoch: the episodes shuffled, split into ``mini_batches`` optimizer steps (fewer
        when no rank has that many episodes), each step's micro-batches as (rows, weight).

        Within a step, episodes are ordered longest first: the step keeps the same rows, hence the same
        update, but sequences of similar length share a micro-batch and pad far less."""
        units = row_units(batch)
        order = torch.randperm(len(units), generator=generator).tolist()
        steps = min(mini_batches, self.comm.all_max(len(units)))
        groups = [[units[order[k]] for k in part] for part in split(len(units), steps)]
        return self._plan(batch, groups, group_by_length=True)

    def _plan(
        self, batch: RLBatch, groups: list[list[list[int]]], group_by_length: bool
    ) -> list[list[tuple[list[int], float]]]:
        """Each group of episodes packed into micro-batches of at most ``micro_batch_size`` forwarded
        rows and ``micro_batch_tokens`` padded tokens
        (:func:`~services.learner.sharing.pack_episodes`), and padded to the same count on every rank
        with a weight-0 repeat of one row."""
        hosts = prefix_hosts(batch)
        lengths = batch.num_tokens.tolist()
        plan = []
        for units in groups:
            if group_by_length:
                units = sorted(units, key=lambda unit: -max(lengths[i] for i in unit))
            packed = pack_episodes(units, hosts, self.micro_batch_size, lengths, self.micro_batch_tokens)
            micro = [(rows, 1.0) for rows in packed]
            count = self.comm.all_max(len(micro))
            if len(micro) < count:
                if len(batch) == 0:
                    raise ValueError(
                        "an empty shard cannot take part in a step: give every rank at least one episode"
                    )
                filler = [units[0][0]] if units else [0]
                micro += [(filler, 0.0)] * (count - len(micro))
            plan.append(micro)
        return plan
