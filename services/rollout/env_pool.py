"""Where episodes' environments live: in the rollout process, or in a pool of Ray actors.

Both pools have the same batched interface, so the episode loop does not care which it talks to.
Environments verify answers themselves (they call the pure verifiers), so an environment actor is
also the verifier for its episodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

import services.envs  # noqa: F401  (registers the environments)


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    """Which episode to play: environment, options, seed; ``group_id`` ties samples of one task."""

    episode_id: str
    env_id: str
    env_options: dict[str, Any]
    seed: int
    group_id: str


def jsonable(value: Any) -> Any:
    """Reduce env info to JSON types for trajectories (tuples -> lists, numpy -> python)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return None  # images stay out of the info
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


StepResult = tuple[dict[str, Any], float, bool, bool, dict[str, Any]]


class EnvPool(Protocol):
    def reset_many(self, specs: Sequence[EpisodeSpec]) -> list[tuple[dict[str, Any], dict[str, Any]]]: ...
    def step_many(self, moves: Sequence[tuple[str, str]]) -> list[StepResult]: ...
    def release(self, episode_ids: Sequence[str]) -> None: ...


class LocalEnvs:
    """Environments of many episodes in this process, keyed by episode id (envs are reused)."""

    def __init__(self) -> None:
        self._free: dict[tuple[str, str], list[gym.Env]] = {}
        self._live: dict[str, tuple[tuple[str, str], gym.Env]] = {}

    def _key(self, spec: EpisodeSpec) -> tuple[str, str]:
        return spec.env_id, repr(sorted(spec.env_options.items()))

    def reset_many(self, specs: Sequence[EpisodeSpec]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        for spec in specs:
            key = self._key(spec)
            free = self._free.setdefault(key, [])
            env = free.pop() if free else gym.make(spec.env_id, **spec.env_options)
            self._live[spec.episode_id] = (key, env)
            obs, info = env.reset(seed=spec.seed)
            out.append((obs, jsonable(info)))
        return out

    def step_many(self, moves: Sequence[tuple[str, str]]) -> list[StepResult]:
        out = []
        for episode_id, action in moves:
            obs, reward, terminated, truncated, info = self._live[episode_id][1].step(action)
            out.append((obs, float(reward), bool(terminated), bool(truncated), jsonable(info)))
        return out

    def release(self, episode_ids: Sequence[str]) -> None:
        for episode_id in episode_ids:
            key, env = self._live.pop(episode_id)
            self._free.setdefault(key, []).append(env)


class RayEnvPool:
    """Environments hosted by ``num_actors`` Ray actors; episodes are spread over them."""

    def __init__(self, num_actors: int, cpus_per_actor: float = 0.25):
        import ray

        actor_cls = ray.remote(num_cpus=cpus_per_actor)(LocalEnvs)
        self._ray = ray
        self.actors = [actor_cls.remote() for _ in range(num_actors)]
        self._owner: dict[str, int] = {}
        self._next = itertools.cycle(range(num_actors))

    def _by_actor(self, keys: Sequence[str]) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self._owner[key], []).append(i)
        return groups

    def _scatter(self, method: str, keys: Sequence[str], items: Sequence[Any]) -> list[Any]:
        """Call ``method`` on each owning actor with its items; results come back in input order."""
        groups = self._by_actor(keys)
        futures = {
            a: getattr(self.actors[a], method).remote([items[i] for i in idx]) for a, idx in groups.items()
        }
        out: list[Any] = [None] * len(items)
        for a, idx in groups.items():
            for i, result in zip(idx, self._ray.get(futures[a]), strict=True):
                out[i] = result
        return out

    def reset_many(self, specs: Sequence[EpisodeSpec]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        for spec in specs:
            self._owner[spec.episode_id] = next(self._next)
        return self._scatter("reset_many", [s.episode_id for s in specs], specs)

    def step_many(self, moves: Sequence[tuple[str, str]]) -> list[StepResult]:
        return self._scatter("step_many", [m[0] for m in moves], moves)

    def release(self, episode_ids: Sequence[str]) -> None:
        groups = self._by_actor(list(episode_ids))
        refs = [self.actors[a].release.remote([episode_ids[i] for i in idx]) for a, idx in groups.items()]
        self._ray.get(refs)
        for key in episode_ids:
            self._owner.pop(key, None)
