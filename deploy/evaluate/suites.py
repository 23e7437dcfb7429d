"""Evaluation suites: the same environment under ID and OOD variants, played by the rollout actors.

The one way a suite is played: the training loop's evaluations (:func:`evaluate`, every suite of a
run), ``sftrl evaluate`` and the endpoint (:func:`deploy.evaluate.checkpoint.run_evaluation`, one suite)
all take a suite's episodes from :func:`suite_specs`, so the same seed gives the same episodes
everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploy.evaluate.metrics import suite_metrics
from services.rollout.config import SamplingConfig
from services.rollout.env_pool import EpisodeSpec
from services.rollout.group import episode_specs
from sftrl.trajectory import Trajectory

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout

__all__ = ["evaluate", "play_suite", "suite_metrics", "suite_specs"]


def suite_specs(
    name: str, env_id: str, options: dict[str, Any], episodes: int, seed: int, samples: int = 1
) -> list[EpisodeSpec]:
    """The episodes of one suite (``samples`` per task, for pass@k); ids carry the suite name
    (sampling seeds derive from episode ids)."""
    specs = episode_specs(env_id, options, episodes, seed=seed, samples_per_task=samples)
    return [
        EpisodeSpec(f"eval-{name}-{s.episode_id}", s.env_id, s.env_options, s.seed, s.group_id) for s in specs
    ]


def play_suite(
    rollout: Rollout,
    name: str,
    env_id: str,
    options: dict[str, Any],
    episodes: int,
    seed: int,
    sampling: SamplingConfig,
    samples: int = 1,
    chunk: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """Play ``episodes`` tasks of suite ``name`` (``samples`` times each). With ``chunk``, in chunks
    of that many episodes, calling ``on_progress(episodes played)`` after each; chunking never
    changes the episodes (their seeds come from their ids)."""
    specs = suite_specs(name, env_id, options, episodes, seed, samples)
    return play_in_chunks(rollout, specs, sampling, chunk, on_progress)


def play_in_chunks(
    rollout: Rollout,
    specs: list[EpisodeSpec],
    sampling: SamplingConfig,
    chunk: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """``rollout.play(specs)``, ``chunk`` episodes at a time (all at once without), calling
    ``on_progress(episodes played)`` after each chunk."""
    step = chunk or len(specs) or 1
    played: list[Trajectory] = []
    for start in range(0, len(specs), step):
        played.extend(rollout.play(specs[start : start + step], sampling))
        if on_progress is not None:
            on_progress(len(played))
    return played


def evaluate(
    rollout: Rollout,
    env_id: str,
    base_options: dict[str, Any],
    suites: dict[str, dict[str, Any]],
    episodes: int,
    seed: int,
    sampling: SamplingConfig,
    pass_k: int = 0,
    pass_k_temperature: float = 1.0,
) -> tuple[dict[str, float], dict[str, list[Trajectory]]]:
    """Play every suite once; returns flat metrics ``{"success/id": ..., ...}`` and the trajectories.

    With ``pass_k`` > 1, each suite's tasks are also played ``pass_k`` times at
    ``pass_k_temperature`` and ``pass@1 .. pass@k/<suite>`` join the metrics. The suites go to the
    engines in one call (one per sampling), so no suite waits on the last episodes of another
    (3 suites x 256 episodes: 7-8% faster than one call per suite, on a 2-core CPU)."""
    metrics: dict[str, float] = {}
    options = {name: {**base_options, **overrides} for name, overrides in suites.items()}
    greedy = {name: suite_specs(name, env_id, opts, episodes, seed) for name, opts in options.items()}
    played = _play_together(rollout, greedy, sampling)
    for name, trajs in played.items():
        metrics.update(_named(suite_metrics(trajs), name))
    if pass_k > 1:
        hot = sampling.model_copy(update={"temperature": pass_k_temperature})
        specs = {
            name: suite_specs(f"{name}-pass", env_id, opts, episodes, seed, pass_k)
            for name, opts in options.items()
        }
        for name, sampled in _play_together(rollout, specs, hot).items():
            found = suite_metrics(sampled)
            metrics.update(_named({k: v for k, v in found.items() if k.startswith("pass@")}, name))
    return metrics, played


def _play_together(
    rollout: Rollout, specs: dict[str, list[EpisodeSpec]], sampling: SamplingConfig
) -> dict[str, list[Trajectory]]:
    """Every suite's episodes in one ``rollout.play`` call (its result follows the specs' order)."""
    played = rollout.play([s for suite in specs.values() for s in suite], sampling)
    out: dict[str, list[Trajectory]] = {}
    start = 0
    for name, suite in specs.items():
        out[name] = played[start : start + len(suite)]
        start += len(suite)
    return out


def _named(found: dict[str, float], suite: str) -> dict[str, float]:
    """``success`` -> ``success/<suite>``, ``field/numbers`` -> ``field/<suite>/numbers``."""
    out = {}
    for key, value in found.items():
        head, _, tail = key.partition("/")
        out[f"{head}/{suite}" + (f"/{tail}" if tail else "")] = value
    return out
