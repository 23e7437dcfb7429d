"""The RL math of the learner: log-probs, advantages and losses, as pure torch functions.

Rows are turns (see :mod:`services.learner.batch`). Four objectives (``RLConfig.algorithm``):

- ``ppo`` (paper 1): one action per turn whose log-prob is the token-weighted sum
  :func:`sequence_logprob`; a value head read at the last prompt token; GAE over the turns of an
  episode; clipped ratio per row.
- ``ppo_token``: the same advantages, but ratios and clipping per response token (token-mean).
- ``grpo`` / ``rloo``: no critic; the episode return against its group (mean/std, or leave-one-out
  mean), broadcast to every turn, then token-level clipping as ``ppo_token``.

Every variant adds ``kl_coef`` x the k3 estimator of KL to the reference policy (when the batch
carries ``ref_logprobs``) and ``-entropy_coef`` x the mean entropy (when given); with the defaults
(``kl_coef = entropy_coef = 0``) ``ppo`` is exactly paper 1's objective.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from services.learner.batch import RLBatch
from services.learner.config import RLConfig

LOG_RATIO_LIMIT = 20.0  # exp() of a log-ratio is clamped to e^+-20: finite, and far outside any clip
_CHUNK_ELEMENTS = 1 << 25  # logits elements (float32: 128 MB) processed at once


def _row_chunks(batch_size: int, per_row: int) -> Iterator[slice]:
    rows = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    for start in range(0, batch_size, rows):
        yield slice(start, min(start + rows, batch_size))


def token_logprobs(logits: Tensor, input_ids: Tensor) -> Tensor:
    """[B, T, V], [B, T] -> [B, T] float32: ``out[:, t] = log p(input_ids[:, t] | tokens < t)``, read
    from ``logits[:, t - 1]``; ``out[:, 0] = 0``.

    ``gather - logsumexp`` in float32, a chunk of rows at a time: no full log-softmax is kept, and
    the float32 copy of half-precision logits exists for one chunk at a time in the forward pass.
    """
    b, t, v = logits.shape
    out = logits.new_zeros((b, t), dtype=torch.float32)
    if t < 2 or b == 0:
        return out
    targets = input_ids[:, 1:].unsqueeze(-1)
    parts = []
    for rows in _row_chunks(b, (t - 1) * v):
        x = logits[rows, :-1].float()
        parts.append(x.gather(-1, targets[rows]).squeeze(-1) - torch.logsumexp(x, dim=-1))
    return torch.cat([out[:, :1], torch.cat(parts, dim=0)], dim=1)


def logits_needed_from(action_mask: Tensor) -> int:
    """The first position whose logits a log-prob of a model-produced token needs (token t is scored
    by ``logits[:, t - 1]``): the policy's output head runs only from there on. Prompts are often
    most of a row, and the head's full-vocabulary logits and their log-softmax are a large share of
    a small model's work."""
    cols = action_mask.bool().any(dim=0).nonzero()
    if not cols.numel():
        return max(action_mask.shape[1] - 1, 0)
    return max(int(cols.min()) - 1, 0)


def widen(tail: Tensor, width: int) -> Tensor:
    """[B, K] values of the last K positions -> [B, width], zeros in front."""
    return F.pad(tail, (width - tail.shape[1], 0))


def entropy_from_logits(logits: Tensor) -> Tensor:
    """[B, T, V] -> [B, T] float32 entropy of the next-token distribution, aligned like
    :func:`token_logprobs` (position t uses ``logits[:, t - 1]``; position 0 is 0)."""
    b, t, v = logits.shape
    out = logits.new_zeros((b, t), dtype=torch.float32)
    if t < 2 or b == 0:
        return out
    parts = []
    for rows in _row_chunks(b, (t - 1) * v):
        x = logits[rows, :-1].float()
        lse = torch.logsumexp(x, dim=-1, keepdim=True)
        probs = torch.exp(x - lse)
        parts.append(lse.squeeze(-1) - (probs * x).sum(-1))
    return torch.cat([out[:, :1], torch.cat(parts, dim=0)], dim=1)


def sequence_logprob(token_lp: Tensor, batch: RLBatch) -> Tensor:
    """[B] paper 1's action log-prob: sum over response positions of ``token_weights * token_lp``
    (reasoning tokens x ``reasoning_weight``, answer tokens x 1)."""
    w = (batch.token_weights * batch.action_mask).to(token_lp.device, torch.float32)
    return torch.where(w != 0, token_lp.float() * w, torch.zeros_like(w)).sum(dim=-1)


# -- advantages -----------------------------------------------------------------------------------


def _episodes(batch: RLBatch) -> list[list[int]]:
    """Rows of each episode, ordered by turn index (episodes in order of first appearance)."""
    episodes: dict[str, list[int]] = {}
    for i, ep in enumerate(batch.episode_ids):
        episodes.setdefault(ep, []).append(i)
    return [sorted(rows, key=lambda i: batch.turn_index[i]) for rows in episodes.values()]


def gae_advantages(batch: RLBatch, values: Tensor, cfg: RLConfig) -> tuple[Tensor, Tensor]:
    """[B] advantages and returns by GAE over the turns of each episode.

    ``delta_k = r_k + gamma * V_{k+1} * (1 - done_k) - V_k`` and
    ``A_k = delta_k + gamma * lam * (1 - done_k) * A_{k+1}``, with ``V = 0`` after the last turn
    present; returns are ``A + V``. Rows may come in any order.
    """
    vals = values.detach().float().reshape(-1).cpu().tolist()
    if len(vals) != len(batch):
        raise ValueError(f"{len(vals)} values for {len(batch)} rows")
    rewards = batch.rewards.float().cpu().tolist()
    dones = batch.dones.float().cpu().tolist()
    adv = [0.0] * len(vals)
    for rows in _episodes(batch):
        running, next_value = 0.0, 0.0
        for i in reversed(rows):
            nonterminal = 1.0 - dones[i]
            delta = rewards[i] + cfg.gamma * next_value * nonterminal - vals[i]
            running = delta + cfg.gamma * cfg.lam * nonterminal * running
            adv[i] = running
            next_value = vals[i]
    advantages = torch.tensor(adv, dtype=torch.float32, device=values.device)
    returns = advantages + torch.tensor(vals, dtype=torch.float32, device=values.device)
    return advantages, returns


def _episode_returns(batch: RLBatch) -> tuple[list[list[int]], list[float]]:
    rewards = batch.rewards.float().cpu().tolist()
    episodes = _episodes(batch)
    return episodes, [sum(rewards[i] for i in rows) for rows in episodes]


def group_advantages(batch: RLBatch, cfg: RLConfig) -> Tensor:
    """[B] group-relative advantage of each episode's return R (sum of its turns' rewards),
    broadcast to all its turns. ``grpo``: ``(R - mean) / (std + 1e-6)`` over the group (unbiased std,
    as verl); ``rloo``: ``R - mean of the other samples``. A group of one episode gets 0."""
    if cfg.algorithm not in ("grpo", "rloo"):
        raise ValueError(f"group advantages are for grpo/rloo, not {cfg.algorithm!r}")
    episodes, ep_returns = _episode_returns(batch)
    groups: dict[str, list[int]] = {}
    for e, rows in enumerate(episodes):
        groups.setdefault(batch.group_ids[rows[0]], []).append(e)
    adv = [0.0] * len(batch)
    for members in groups.values():
        n = len(members)
        if n < 2:
            continue
        rs = torch.tensor([ep_returns[e] for e in members], dtype=torch.float64)
        if cfg.algorithm == "grpo":
            scores = (rs - rs.mean()) / (rs.std() + 1e-6)
        else:
            scores = rs - (rs.sum() - rs) / (n - 1)
        for e, score in zip(members, scores.tolist()):
            for i in episodes[e]:
                adv[i] = score
    return torch.tensor(adv, dtype=torch.float32, device=batch.rewards.device)


def compute_advantages(batch: RLBatch, cfg: RLConfig, values: Tensor | None = None) -> RLBatch:
    """Fill ``batch.advantages`` and ``batch.returns`` (in place; the batch is returned).

    ``ppo`` / ``ppo_token``: GAE with ``values`` (required; also stored as ``old_values`` when the
    batch has none, for value clipping). ``grpo`` / ``rloo``: group advantages, and ``returns`` is the
    episode's return (a diagnostic: there is no critic). With ``cfg.normalize_advantages`` the
    advantages are whitened over the batch's rows, except for grpo (already normalised per group).
    """
    if cfg.algorithm in ("ppo", "ppo_token"):
        if values is None:
            raise ValueError(f"algorithm {cfg.algorithm!r} needs the value head's values for GAE")
        advantages, returns = gae_advantages(batch, values, cfg)
        if batch.old_values is None:
            batch.old_values = values.detach().float().reshape(-1).to(advantages.device)
    else:
        advantages = group_advantages(batch, cfg)
        episodes, ep_returns = _episode_returns(batch)
        ret = [0.0] * len(batch)
        for rows, r in zip(episodes, ep_returns):
            for i in rows:
                ret[i] = r
        returns = torch.tensor(ret, dtype=torch.float32, device=advantages.device)
    if cfg.normalize_advantages and cfg.algorithm != "grpo" and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std(unbiased=False) + 1e-8)
    batch.advantages = advantages
    batch.returns = returns
    return batch


# -- losses ---------------------------------------------------------------------------------------


def policy_loss(
    new_token_lp: Tensor,
    batch: RLBatch,
    cfg: RLConfig,
    entropy: Tensor | None = None,
    *,
    token_normalizer: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped surrogate (plus KL and entropy terms) and its metrics.

    ``new_token_lp`` is :func:`token_logprobs` of the current policy on ``batch.input_ids``;
    ``batch.old_logprobs`` and ``batch.advantages`` must be set. Token means (token-level surrogate,
    KL, entropy) divide by this batch's response-token count, or by ``token_normalizer`` when given:
    pass the mini-batch's token count (scaled as your gradient accumulation needs) to get an exact
    token-mean over micro-batches of unequal length.
    """
    if batch.old_logprobs is None or batch.advantages is None:
        raise ValueError("policy_loss needs batch.old_logprobs and batch.advantages")
    new = new_token_lp.float()
    device = new.device
    mask = batch.action_mask.to(device, torch.float32)
    on = mask != 0
    zeros = torch.zeros_like(new)
    old = batch.old_logprobs.to(device, torch.float32).detach()
    adv = batch.advantages.to(device, torch.float32).detach().reshape(-1)
    n_tokens = mask.sum()
    count = n_tokens.clamp_min(1.0)
    denom = count if token_normalizer is None else torch.as_tensor(float(token_normalizer), device=device)
    lo, hi = 1.0 - cfg.clip, 1.0 + cfg.clip

    if cfg.algorithm == "ppo":
        log_ratio = (sequence_logprob(new, batch) - sequence_logprob(old, batch)).clamp(
            -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT
        )
        ratio = torch.exp(log_ratio)
        surr1, surr2 = ratio * adv, ratio.clamp(lo, hi) * adv
        surr = torch.minimum(surr1, surr2)
        pg = -surr.mean() if len(batch) else surr.sum()
        clip_fraction = (surr2 < surr1).float().mean() if len(batch) else surr.sum().detach()
        ratio_mean = ratio.detach().mean() if len(batch) else ratio.sum().detach()
    else:
        log_ratio = torch.where(on, new - old, zeros).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        ratio = torch.exp(log_ratio)
        a = adv[:, None]
        surr1, surr2 = ratio * a, ratio.clamp(lo, hi) * a
        surr = torch.minimum(surr1, surr2)
        pg = -(surr * mask).sum() / denom
        clip_fraction = ((surr2 < surr1).float() * mask).sum() / count
        ratio_mean = (ratio.detach() * mask).sum() / count

    loss = pg
    with torch.no_grad():
        d_old = torch.where(on, old - new, zeros)
        approx_kl = ((torch.exp(d_old) - d_old - 1.0) * mask).sum() / count
    metrics: dict[str, float] = {
        "policy_loss": float(pg.detach()),
        "clip_fraction": float(clip_fraction),
        "approx_kl": float(approx_kl),
        "ratio_mean": float(ratio_mean),
        "advantage_mean": float(adv.mean()) if adv.numel() else 0.0,
    }
    if cfg.kl_coef > 0 and batch.ref_logprobs is not None:
        ref = batch.ref_logprobs.to(device, torch.float32).detach()
        d = torch.where(on, ref - new, zeros).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        kl = ((torch.exp(d) - d - 1.0) * mask).sum() / denom
        loss = loss + cfg.kl_coef * kl
        metrics["kl_ref"] = float(kl.detach())
    if entropy is not None:
        ent = (torch.where(on, entropy.float(), zeros) * mask).sum() / denom
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = float(ent.detach())
    if batch.rollout_logprobs is not None:
        rollout = batch.rollout_logprobs.to(device, torch.float32)
        metrics["logprob_mismatch"] = float((torch.where(on, (old - rollout).abs(), zeros)).sum() / count)
    metrics["loss"] = float(loss.detach())
    return loss, metrics


def value_loss(values: Tensor, batch: RLBatch, cfg: RLConfig) -> tuple[Tensor, dict[str, float]]:
    """``value_coef * 0.5 * mean((V - R)^2)``; with ``batch.old_values``, the clipped form
    ``max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2)`` (c = ``cfg.value_clip``, by default
    ``cfg.clip``, as paper 1's code; 0 turns clipping off)."""
    if batch.returns is None:
        raise ValueError("value_loss needs batch.returns (call compute_advantages first)")
    v = values.float().reshape(-1)
    ret = batch.returns.to(v.device, torch.float32).detach()
    err = (v - ret) ** 2
    c = cfg.clip if cfg.value_clip is None else cfg.value_clip
    clip_fraction = torch.zeros((), device=v.device)
    if batch.old_values is not None and c > 0:
        old = batch.old_values.to(v.device, torch.float32).detach()
        clipped = old + (v - old).clamp(-c, c)
        err_clipped = (clipped - ret) ** 2
        if err.numel():
            clip_fraction = (err_clipped > err).float().mean()
        err = torch.maximum(err, err_clipped)
    unscaled = 0.5 * err.mean() if err.numel() else err.sum()
    loss = cfg.value_coef * unscaled
    metrics = {
        "value_loss": float(unscaled.detach()),
        "value_clip_fraction": float(clip_fraction),
        "value_mean": float(v.detach().mean()) if v.numel() else 0.0,
        "return_mean": float(ret.mean()) if ret.numel() else 0.0,
    }
    return loss, metrics


def minibatches(batch: RLBatch, micro_batch_size: int, generator: torch.Generator) -> Iterator[RLBatch]:
    """Shuffled row subsets of at most ``micro_batch_size`` rows; every row exactly once."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    perm = torch.randperm(len(batch), generator=generator)
    for start in range(0, len(batch), micro_batch_size):
        yield batch.select(perm[start : start + micro_batch_size])
