"""Turn trajectories into padded tensors for the RL learner, and split them across ranks.

A row of an :class:`RLBatch` is one TURN: the turn's whole prompt (the conversation so far, as the
engine saw it) followed by the tokens the model sampled. Only response positions are ever trained on
(``action_mask``). Episodes with several turns (sequential revision, V-IRL) keep one row per turn;
``episode_ids`` and ``turn_index`` tie them back together for GAE over turns. The learner, though, runs
one forward per episode, not per turn (:mod:`services.learner.sharing`).

Choices worth knowing:

- **Left truncation.** With ``max_len``, a longer row loses tokens from the LEFT of its prompt: the
  response and the tail of the prompt (the latest feedback and the generation prompt) are kept, and
  ``value_index`` moves with them. A response that alone does not leave room for one prompt token is
  an error rather than a silently cut action.
- **Paper-1 token weights** (``algorithm == "ppo"``). The action log-prob is
  ``reasoning_weight * (reasoning tokens) + (answer tokens)``. The answer is the value of the first key
  of ``cfg.answer_keys`` (in that priority order, case-insensitive) found in the first JSON object of
  the response (else anywhere in the text, for a truncated object); its span includes the quotes of
  a string value. Characters are mapped to tokens through decoded prefix lengths of the response ids
  (see :func:`answer_token_range`). When no answer is found the WHOLE response gets weight 1.0: a
  malformed answer is then pushed by the full advantage (usually a negative one) instead of only half
  of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from services.learner.config import RLConfig
from services.verifier.answer_text import answer_after_reasoning, find_json_object
from sftrl.trajectory import Trajectory

_ROW_TENSORS = ("input_ids", "attention_mask", "action_mask", "token_weights", "rollout_logprobs")
_OPTIONAL_ROW_TENSORS = ("old_logprobs", "ref_logprobs")
_VECTORS = ("value_index", "rewards", "dones")
_OPTIONAL_VECTORS = ("old_values", "advantages", "returns")
_LISTS = ("episode_ids", "group_ids", "turn_index")


@dataclass
class RLBatch:
    input_ids: torch.Tensor  # [B, T] long: prompt_ids + response_ids per turn, right-padded with pad_id
    attention_mask: torch.Tensor  # [B, T] long
    action_mask: torch.Tensor  # [B, T] float: 1.0 on response (sampled) tokens
    token_weights: torch.Tensor  # [B, T] float: paper-1 weights on response tokens, 0 elsewhere
    value_index: torch.Tensor  # [B] long: position of the last prompt token
    rewards: torch.Tensor  # [B] float: the turn's reward
    dones: torch.Tensor  # [B] float: 1.0 on the last turn of its episode
    rollout_logprobs: torch.Tensor  # [B, T] float: vLLM's sampling log-probs on response positions
    episode_ids: list[str]
    group_ids: list[str]
    turn_index: list[int]
    images: list[list[Any]] | None = None  # per row, the conversation's images (VLM), else None
    old_logprobs: torch.Tensor | None = None  # [B, T] recomputed by the learner before the update
    ref_logprobs: torch.Tensor | None = None  # [B, T] reference policy, when kl_coef > 0
    old_values: torch.Tensor | None = None  # [B]
    advantages: torch.Tensor | None = None  # [B] turn-level advantage
    returns: torch.Tensor | None = None  # [B]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> torch.Tensor:
        """[B] non-padding tokens per row."""
        return self.attention_mask.sum(dim=1)

    def select(self, index: Sequence[int] | torch.Tensor) -> RLBatch:
        """The rows ``index`` (in that order), every field alike; padding columns that no selected row
        needs any more are trimmed."""
        if isinstance(index, torch.Tensor):
            idx = index.to(device="cpu", dtype=torch.long).reshape(-1)
        else:
            idx = torch.as_tensor(list(index), dtype=torch.long).reshape(-1)
        rows = idx.tolist()
        dev = self.input_ids.device
        tidx = idx.to(dev)
        mask = self.attention_mask.index_select(0, tidx)
        used = (mask != 0).any(dim=0).nonzero()  # right padding: keep up to the last used column
        width = int(used.max()) + 1 if used.numel() else 0
        out: dict[str, Any] = {}
        for name in _ROW_TENSORS + _OPTIONAL_ROW_TENSORS:
            value = getattr(self, name)
            out[name] = None if value is None else value.index_select(0, tidx.to(value.device))[:, :width]
        for name in _VECTORS + _OPTIONAL_VECTORS:
            value = getattr(self, name)
            out[name] = None if value is None else value.index_select(0, tidx.to(value.device))
        for name in _LISTS:
            values = getattr(self, name)
            out[name] = [values[i] for i in rows]
        out["images"] = None if self.images is None else [self.images[i] for i in rows]
        return RLBatch(**out)

    def to(self, device: torch.device | str) -> RLBatch:
        """A copy whose tensors live on ``device`` (lists and images are shared)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = value.to(device) if isinstance(value, torch.Tensor) else value
        return RLBatch(**moved)


# -- answer spans (paper 1's token weights) -------------------------------------------------------

_DECODER = json.JSONDecoder()


def _first_json_object(text: str) -> tuple[int, int] | None:
    """(start, end) of the answer's JSON object in ``text``, as the verifiers read it: the first after
    any reasoning in ``<think></think>`` (an object inside the reasoning is not the answer)."""
    answer = answer_after_reasoning(text)
    if answer is None:
        return None
    offset = len(text) - len(answer)
    found = find_json_object(answer)
    return None if found is None else (offset + found[1], offset + found[2])


def _value_end(text: str, pos: int) -> int:
    """End of the JSON value starting at ``pos``; tolerant of a truncated or malformed value."""
    try:
        _, end = _DECODER.raw_decode(text, pos)
        return end
    except (ValueError, RecursionError):
        pass
    if text[pos] == '"':
        i = pos + 1
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            if text[i] == '"':
                return i + 1
            if text[i] == "\n":
                return i
            i += 1
        return len(text)
    m = re.compile(r"[^,}\]\n]*").match(text, pos)
    return m.end() if m else pos


def find_answer_span(text: str, keys: Sequence[str]) -> tuple[int, int] | None:
    """Character span [start, end) of the answer value in ``text``, or None.

    The first key of ``keys`` that occurs (case-insensitively, as ``"key":``) wins; it is looked up
    inside the answer's JSON object (the first after any ``<think></think>`` reasoning), else anywhere
    after the reasoning (a truncated object). String values keep their quotes.
    """
    bounds = _first_json_object(text)
    regions = [bounds] if bounds is not None else []
    answer = answer_after_reasoning(text)  # a truncated object is looked for after any reasoning
    regions.append((0 if answer is None else len(text) - len(answer), len(text)))
    for key in keys:
        pattern = re.compile(r'"' + re.escape(key) + r'"\s*:\s*', re.IGNORECASE)
        for lo, hi in regions:
            m = pattern.search(text, lo, hi)
            if m is None or m.end() >= len(text):
                continue
            start = m.end()
            end = _value_end(text, start)
            while end > start and text[end - 1].isspace():
                end -= 1
            if end > start:
                return start, end
    return None


def _decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Exact-text decoding: special tokens kept, no clean-up (prefix lengths must add up)."""
    if hasattr(tokenizer, "batch_decode"):  # transformers tokenizers
        return lambda ids: tokenizer.decode(
            ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # tokenizers.Tokenizer


def answer_token_range(
    response_ids: Sequence[int], tokenizer: Any, keys: Sequence[str]
) -> tuple[int, int] | None:
    """Token range [first, last) of the response tokens that overlap the answer's characters.

    Token ``i`` covers characters ``[L(i), L(i+1))`` where ``L(k)`` is the length of the decoded
    prefix ``response_ids[:k]``. A prefix that ends inside a multi-byte character decodes to a trailing
    replacement character; such a prefix borrows the length of the previous complete one, so the
    token that completes a character owns it. ``L`` is then non-decreasing and the boundaries are
    found by binary search: O(log n) decodes per response instead of n.
    """
    ids = list(response_ids)
    if not ids:
        return None
    decode = _decoder(tokenizer)
    text = decode(ids)
    span = find_answer_span(text, keys)
    if span is None:
        return None
    start, end = span
    cache: dict[int, int] = {0: 0, len(ids): len(text)}

    def prefix_len(k: int) -> int:
        j = k
        while j not in cache:
            decoded = decode(ids[:j])
            if decoded.endswith("\ufffd") and not text.startswith(decoded):
                j -= 1  # an incomplete character: credit it to a later token
                continue
            cache[j] = len(decoded)
        cache[k] = cache[j]
        return cache[k]

    def first_at_least(threshold: int, strict: bool) -> int:
        lo, hi = 0, len(ids)  # smallest k in [0, n] with L(k) > threshold (strict) or >= threshold
        while lo < hi:
            mid = (lo + hi) // 2
            value = prefix_len(mid)
            if value > threshold or (not strict and value == threshold):
                hi = mid
            else:
                lo = mid + 1
        return lo

    first = max(first_at_least(start, strict=True) - 1, 0)
    last = max(first_at_least(end, strict=False), first + 1)
    return first, min(last, len(ids))


# -- building a batch -----------------------------------------------------------------------------


def _fitted_prompt(prompt: list[int], response_len: int, max_len: int | None, where: str) -> list[int]:
    """The prompt, cut from the left so that prompt + response fit in ``max_len`` tokens."""
    if not prompt:
        raise ValueError(f"{where} has an empty prompt")
    if max_len is None or len(prompt) + response_len <= max_len:
        return prompt
    room = max_len - response_len
    if room < 1:
        raise ValueError(
            f"{where}: its response ({response_len} tokens) leaves no room for the prompt within max_len={max_len}"
        )
    return prompt[-room:]


def _response_weights(response: list[int], tokenizer: Any, cfg: RLConfig) -> list[float]:
    """Per-token weights of a response: 1, except paper 1's ``reasoning_weight`` on the tokens
    outside the answer value under ``ppo``."""
    if cfg.algorithm == "ppo":
        found = answer_token_range(response, tokenizer, cfg.answer_keys)
        if found is not None:
            first, last = found
            return [1.0 if first <= i < last else cfg.reasoning_weight for i in range(len(response))]
    return [1.0] * len(response)


def build_rl_batch(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    cfg: RLConfig,
    pad_id: int,
    max_len: int | None = None,
) -> RLBatch:
    """One row per turn of every trajectory (in order), right-padded to the longest row.

    ``tokenizer`` is only used for paper-1 token weights (``cfg.algorithm == "ppo"``; it may be None
    otherwise). See the module docstring for truncation and weighting.
    """
    if cfg.algorithm == "ppo" and tokenizer is None:
        raise ValueError("algorithm 'ppo' needs the tokenizer to find the answer tokens")
    rows: list[tuple[list[int], int, int]] = []  # ids, prompt length, response length
    weights: list[list[float]] = []
    logps: list[list[float]] = []
    rewards: list[float] = []
    dones: list[float] = []
    episode_ids: list[str] = []
    group_ids: list[str] = []
    turn_index: list[int] = []
    for traj in trajectories:
        for t, turn in enumerate(traj.turns):
            response = list(turn.response_ids)
            prompt = _fitted_prompt(
                list(turn.prompt_ids), len(response), max_len, f"turn {t} of episode {traj.episode_id}"
            )
            rows.append((prompt + response, len(prompt), len(response)))
            weights.append(_response_weights(response, tokenizer, cfg))
            logps.append(list(turn.response_logprobs))
            rewards.append(float(turn.reward))
            dones.append(1.0 if t == len(traj.turns) - 1 else 0.0)
            episode_ids.append(traj.episode_id)
            group_ids.append(traj.group_id)
            turn_index.append(t)

    n = len(rows)
    width = max((len(ids) for ids, _, _ in rows), default=0)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    action_mask = torch.zeros((n, width), dtype=torch.float32)
    token_weights = torch.zeros((n, width), dtype=torch.float32)
    rollout_logprobs = torch.zeros((n, width), dtype=torch.float32)
    value_index = torch.zeros(n, dtype=torch.long)
    for i, (ids, p, r) in enumerate(rows):
        input_ids[i, : p + r] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        action_mask[i, p : p + r] = 1.0
        if r:
            token_weights[i, p : p + r] = torch.tensor(weights[i], dtype=torch.float32)
            rollout_logprobs[i, p : p + r] = torch.tensor(logps[i], dtype=torch.float32)
        value_index[i] = p - 1
    return RLBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        action_mask=action_mask,
        token_weights=token_weights,
        value_index=value_index,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        dones=torch.tensor(dones, dtype=torch.float32),
        rollout_logprobs=rollout_logprobs,
        episode_ids=episode_ids,
        group_ids=group_ids,
        turn_index=turn_index,
        images=None,
    )


# -- sharding across data-parallel ranks ----------------------------------------------------------


def row_units(batch: RLBatch, keep_groups: bool = False) -> list[list[int]]:
    """Rows that must stay together: one episode, or one group (with all its episodes)."""
    key_of = batch.group_ids if keep_groups else batch.episode_ids
    # an episode spans one group, but be safe: merge keys that share an episode or a group
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for ep, key in zip(batch.episode_ids, key_of):
        a, b = find("e:" + ep), find("k:" + key)
        if a != b:
            parent[b] = a
    units: dict[str, list[int]] = {}
    for i, ep in enumerate(batch.episode_ids):
        units.setdefault(find("e:" + ep), []).append(i)
    return list(units.values())  # in order of first row


def shard_by_episode(batch: RLBatch, world_size: int, keep_groups: bool = True) -> list[RLBatch]:
    """Split rows into ``world_size`` shards, one per data-parallel rank.

    All turns of an episode stay on one shard, and with ``keep_groups`` (default; needed for
    grpo/rloo baselines, harmless for ppo where groups are single episodes) all episodes of a group
    too. Units are placed largest first on the shard with the fewest tokens so far (ties: lower
    shard), which balances token counts; rows keep their batch order within a shard. Deterministic.
    A shard may be empty when there are fewer units than ranks; the caller must still step that rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    units = row_units(batch, keep_groups)
    tokens = batch.num_tokens.tolist()
    sizes = [sum(tokens[i] for i in unit) for unit in units]
    order = sorted(range(len(units)), key=lambda u: (-sizes[u], units[u][0]))
    load = [0] * world_size
    count = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for u in order:
        shard = min(range(world_size), key=lambda s: (load[s], count[s], s))
        load[shard] += sizes[u]
        count[shard] += len(units[u])
        assigned[shard].extend(units[u])
    return [batch.select(sorted(rows)) for rows in assigned]
