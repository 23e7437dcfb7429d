"""One forward pass for all the turns of an episode.

Rows are turns, and a multi-turn conversation is token-in, token-out: turn k+1's prompt is turn k's
prompt and sampled response followed by the feedback. So the row of an episode's last turn holds each
earlier turn's row as a prefix, and a causal model gives a position the same logits whatever follows
it: one forward of the longest row scores every turn of the episode. Rows whose prompt was cut from
the left (``max_len``), or that are not prefixes for any other reason, keep their own forward.

Micro-batches are therefore made of whole episodes, filled up to ``capacity`` forwarded rows (and,
optionally, a budget of padded tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from services.learner.batch import RLBatch


def prefix_hosts(batch: RLBatch) -> list[int]:
    """For each row, the row whose forward also scores it: the longest row of the same episode whose
    tokens (and images) start with this row's; the row itself when there is none. Hosts are their own
    hosts (a row covering a host covers what the host covers, and is longer)."""
    lengths = batch.num_tokens.tolist()
    by_episode: dict[str, list[int]] = {}
    for i, episode in enumerate(batch.episode_ids):
        by_episode.setdefault(episode, []).append(i)
    hosts = list(range(len(batch)))
    for rows in by_episode.values():
        if len(rows) < 2:
            continue
        candidates = sorted(rows, key=lambda r: (-lengths[r], r))
        for i in rows:
            for h in candidates:
                if lengths[h] < lengths[i]:
                    break
                if h == i or _covers(batch, h, i, lengths[i]):
                    hosts[i] = h
                    break
    return hosts


def _covers(batch: RLBatch, host: int, row: int, length: int) -> bool:
    if batch.images is not None and len(batch.images[row] or ()) > len(batch.images[host] or ()):
        return False
    return torch.equal(batch.input_ids[host, :length], batch.input_ids[row, :length])


def spread(
    values: torch.Tensor, hosts: Sequence[int], forwarded: Sequence[int], attention_mask: torch.Tensor
) -> torch.Tensor:
    """[U, T] per-position values of the forwarded rows -> [B, T] for every row, zero past each row's
    end (its host's later tokens are not its own). Differentiable: a host's positions collect the
    gradients of every row they score."""
    at = {row: k for k, row in enumerate(forwarded)}
    index = torch.tensor([at[h] for h in hosts], dtype=torch.long, device=values.device)
    mask = attention_mask.to(values.device, values.dtype)
    return values.index_select(0, index)[:, : mask.shape[1]] * mask


def pack_episodes(
    units: Sequence[Sequence[int]],
    hosts: Sequence[int],
    capacity: int,
    lengths: Sequence[int] | None = None,
    token_budget: int | None = None,
) -> list[list[int]]:
    """Whole episodes (``units``, in order) packed into micro-batches of at most ``capacity`` forwarded
    rows each and, with ``token_budget`` (and the rows' ``lengths``), at most that many padded tokens
    (forwarded rows x the longest of them) unless one episode alone needs more. An episode that alone
    needs more than ``capacity`` rows (turns that share no forward) is split into chunks of
    ``capacity`` rows."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    if token_budget is not None and (token_budget < 1 or lengths is None):
        raise ValueError("a token budget needs the rows' lengths and must be >= 1")
    out: list[list[int]] = []
    current: list[int] = []
    load, width = 0, 0
    for unit in units:
        forwarded_rows = {hosts[i] for i in unit}
        cost = len(forwarded_rows)
        unit_width = max(lengths[h] for h in forwarded_rows) if lengths is not None else 0
        if cost > capacity:
            if current:
                out.append(current)
                current, load, width = [], 0, 0
            out.extend(list(unit[s : s + capacity]) for s in range(0, len(unit), capacity))
            continue
        over_budget = token_budget is not None and (load + cost) * max(width, unit_width) > token_budget
        if current and (load + cost > capacity or over_budget):
            out.append(current)
            current, load, width = [], 0, 0
        current.extend(unit)
        load += cost
        width = max(width, unit_width)
    if current:
        out.append(current)
    return out


def forwarded(batch: RLBatch) -> tuple[int, int]:
    """(rows, tokens) that one pass over ``batch`` runs through the model."""
    hosts = set(prefix_hosts(batch))
    tokens = batch.num_tokens
    return len(hosts), sum(int(tokens[h]) for h in hosts)
