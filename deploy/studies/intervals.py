"""95% intervals for the figures of a study: a figure without one is not a result.

- A success rate over pooled episodes: the Wilson score interval (good at 0% and 100% and for small
  counts, where the normal approximation gives impossible bounds).
- The difference between two arms run with several seeds: a percentile bootstrap over seeds (each
  arm's seeds resampled with replacement, the difference of the means recomputed), so the
  seed-to-seed spread of training counts, not only the sampling of evaluation episodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self, what: str) -> str:
        """One sentence on what the interval supports (``what``: "ID success of RL minus SFT")."""
        shown = f"{self.estimate:+.1%} (95% interval {self.low:+.1%} to {self.high:+.1%})"
        if self.excludes_zero():
            side = "above" if self.low > 0 else "below"
            return f"{what}: {shown}; the interval excludes zero (the difference is {side} zero)."
        return f"{what}: {shown}; the interval does not exclude zero (no difference shown)."


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """The Wilson score interval of ``successes`` out of ``n`` episodes."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0 (got {successes} of {n})")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Mean of ``a`` minus mean of ``b`` (one value per seed and arm), with a percentile bootstrap."""
    if not a or not b:
        raise ValueError("each arm needs at least one seed")
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ma = xa[rng.integers(0, len(xa), size=(resamples, len(xa)))].mean(axis=1)
    mb = xb[rng.integers(0, len(xb), size=(resamples, len(xb)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ma - mb, [tail, 100 - tail])
    return Interval(float(xa.mean() - xb.mean()), float(low), float(high))


def bootstrap_rate_difference(
    a: Sequence[tuple[int, int]],
    b: Sequence[tuple[int, int]],
    paired: bool = False,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Success rate of arm ``a`` minus arm ``b``, each given as ``(successes, episodes)`` per seed.

    Two levels, as the runs were made: seeds are resampled with replacement (jointly when ``paired``:
    seed k of both arms shares its start, e.g. the same SFT init), then the episodes of each chosen
    seed (a binomial draw at its observed rate). With one seed this is a bootstrap over episodes; with
    many, the seed-to-seed spread dominates."""
    if not a or not b:
        raise ValueError("each arm needs at least one seed")
    if paired and len(a) != len(b):
        raise ValueError(f"paired arms need the same seeds (got {len(a)} and {len(b)})")
    rng = np.random.default_rng(seed)

    def draws(counts: Sequence[tuple[int, int]], idx: np.ndarray) -> np.ndarray:
        k, n = (np.asarray(c, dtype=np.int64) for c in zip(*counts, strict=True))
        if (n <= 0).any() or (k < 0).any() or (k > n).any():
            raise ValueError(f"need 0 <= successes <= episodes and episodes > 0 (got {list(counts)})")
        return (rng.binomial(n[idx], k[idx] / n[idx]) / n[idx]).mean(axis=1)

    ia = rng.integers(0, len(a), size=(resamples, len(a)))
    ib = ia if paired else rng.integers(0, len(b), size=(resamples, len(b)))
    diff = draws(a, ia) - draws(b, ib)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    estimate = np.mean([k / n for k, n in a]) - np.mean([k / n for k, n in b])
    return Interval(float(estimate), float(low), float(high))
