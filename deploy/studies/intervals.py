"""95% intervals for the figures of a study: a figure without one is not a result.

- A success rate over pooled episodes: the Wilson score interval (good at 0% and 100% and for small
  counts, where the normal approximation gives impossible bounds).
- The difference between two arms, from per-episode outcomes (:func:`paired_difference`): paired by
  seed (seed k of both arms shares its start) and by task (every arm plays the same tasks); Student's
  t, whose few degrees of freedom with 3 seeds are what keeps the coverage at 95% (a percentile
  bootstrap over 3 seeds covers far less; ``tests/test_paired_intervals.py`` simulates both).
- Records without per-episode outcomes: t on the per-seed differences (:func:`seed_difference`), or,
  with one seed or unpaired seeds, a bootstrap over seeds and episodes (:func:`bootstrap_rate_difference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    # t over a few seeds whose differences happen to be equal has zero width: that is no interval
    no_spread: bool = False

    def excludes_zero(self) -> bool:
        return not self.no_spread and (self.low > 0 or self.high < 0)

    def verdict(self, what: str) -> str:
        """One sentence on what the interval supports (``what``: "ID success of RL minus SFT")."""
        shown = f"{self.estimate:+.1%} (95% interval {self.low:+.1%} to {self.high:+.1%})"
        if self.no_spread:
            return (f"{what}: {self.estimate:+.1%}; every seed's difference is the same, so t over the seeds "
                    "has no spread and gives no interval (nothing shown).")  # fmt: skip
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


def paired_difference(
    a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]], level: float = 0.95
) -> Interval:
    """Arm ``a`` minus arm ``b`` from per-episode outcomes, paired by seed and by task.

    ``a[s]`` maps each task of seed ``s`` to its outcome (1/0 for success); seed ``s`` of both arms
    shares its start, and both arms play the same tasks. An arm with one seed and the other with
    several: that one's outcomes stand for every seed (a model both arms share, e.g. the base).

    The differences form a seeds x tasks table ``D[s, t] = a[s][t] - b[s][t]`` on the tasks every
    seed of both arms played. Its mean's variance, seed effect + task effect + noise
    (``sigma_seed^2 / S + sigma_task^2 / T + sigma^2 / (S T)``), comes from the two-way table's mean
    squares, each variance component truncated at zero; the interval is Student's t with
    Satterthwaite's degrees of freedom. With 3 seeds whose effects dominate that is about ``t`` with 2
    degrees of freedom (wide, as 3 seeds are); where seeds barely differ, the many tasks decide. A
    simulation (``tests/test_paired_intervals.py``) checks the coverage with 3 seeds and 256 tasks."""
    return table_interval(paired_table(a, b), level)


def table_interval(table: np.ndarray, level: float = 0.95) -> Interval:
    """The mean of a seeds x tasks table of paired differences (each in [-1, 1]) with its interval,
    as :func:`paired_difference` describes."""
    from scipy.stats import t as student_t

    seeds, tasks = table.shape
    if tasks < 2:
        raise ValueError("a paired interval needs at least 2 tasks played by both arms")
    mean = float(table.mean())
    rows, cols = table.mean(axis=1), table.mean(axis=0)
    ms_task = seeds * float(((cols - mean) ** 2).sum()) / (tasks - 1)
    if seeds == 1:  # one seed: the tasks (and their episodes) are all that is seen to vary
        terms = [(ms_task / tasks, tasks - 1.0)]
    else:
        resid = table - rows[:, None] - cols[None, :] + mean
        ms_err = float((resid**2).sum()) / ((seeds - 1) * (tasks - 1))
        # the seeds' spread (their effects and their episodes' noise), exact for normal seed means ...
        terms = [(float(rows.var(ddof=1)) / seeds, seeds - 1.0)]
        # ... and the draw of the tasks every seed shares: sigma_task^2 / T, at least zero
        task_part = max(0.0, ms_task - ms_err) / (seeds * tasks)
        if task_part > 0:
            dof = (ms_task - ms_err) ** 2 / (
                ms_task**2 / (tasks - 1) + ms_err**2 / ((seeds - 1) * (tasks - 1))
            )
            terms.append((task_part, dof))
    total = sum(v for v, _ in terms)
    if total <= 0:  # every seed the same difference: nothing to show a spread with
        return Interval(mean, mean, mean)
    # Satterthwaite; never below the seeds' own degrees of freedom (a task part estimated near zero
    # has few of its own, which would otherwise stretch the quantile without bound)
    dof = max(total**2 / sum(v * v / df for v, df in terms if v > 0), terms[0][1])
    half = float(student_t.ppf(0.5 + level / 2, dof)) * math.sqrt(total)
    return Interval(mean, max(-1.0, mean - half), min(1.0, mean + half))


def mean_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """The mean of one value per seed with Student's t over the seeds (at least 2)."""
    from scipy.stats import t as student_t

    if len(values) < 2:
        raise ValueError(f"need at least 2 seeds (got {len(values)})")
    x = np.asarray(values, dtype=float)
    half = float(student_t.ppf(0.5 + level / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(float(x.mean()), float(x.mean()) - half, float(x.mean()) + half)


def seed_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of ``a`` minus ``b``, one rate per seed, paired by seed: Student's t on the per-seed
    differences (``S - 1`` degrees of freedom). For records without per-episode outcomes; it leaves out
    the draw of the tasks the seeds share, so :func:`paired_difference` is wider where tasks matter."""

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need the same seeds in both arms, at least 2 (got {len(a)} and {len(b)})")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    got = mean_interval(diffs, level)
    return Interval(
        got.estimate, max(-1.0, got.low), min(1.0, got.high), no_spread=bool(np.ptp(diffs) < 1e-12)
    )


def paired_table(a: Sequence[Mapping[str, float]], b: Sequence[Mapping[str, float]]) -> np.ndarray:
    """The seeds x tasks table of ``a`` minus ``b`` (see :func:`paired_difference`), on the tasks
    every seed of both arms played, in sorted order."""
    if not a or not b:
        raise ValueError("each arm needs at least one seed")
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        raise ValueError(
            f"paired arms need the same seeds, or one arm a single one (got {len(a)} and {len(b)})"
        )
    seeds = max(len(a), len(b))
    a_rows = list(a) * seeds if len(a) == 1 else list(a)
    b_rows = list(b) * seeds if len(b) == 1 else list(b)
    common = set(a_rows[0])
    for row in a_rows + b_rows:
        common &= set(row)
    if not common:
        raise ValueError("the arms share no task: evaluate both on the same suite and seed")
    tasks = sorted(common)
    return np.array(
        [[float(ra[t]) - float(rb[t]) for t in tasks] for ra, rb in zip(a_rows, b_rows, strict=True)]
    )
