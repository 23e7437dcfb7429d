"""Several rollout actors sharing the work, placed with a Ray placement group.

Episodes are handed out in small chunks from a queue, so a fast actor takes more and progress can
be reported as chunks finish. When an actor dies, it is replaced in its bundle, given the weights
of the current policy, and its unfinished chunk is played again.
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from services.rollout.config import RolloutConfig, SamplingConfig
from services.rollout.env_pool import EpisodeSpec
from services.rollout.worker import RolloutWorker
from sftrl.ray_setup import ActorBundles
from sftrl.trajectory import Trajectory


def episode_specs(
    env_id: str, env_options: dict[str, Any], num_tasks: int, seed: int = 0, samples_per_task: int = 1
) -> list[EpisodeSpec]:
    """``num_tasks`` tasks (env seeds ``seed..``), each played ``samples_per_task`` times."""
    specs = []
    for t in range(num_tasks):
        group = f"{env_id.split('/')[-1]}-s{seed + t}"
        for k in range(samples_per_task):
            specs.append(EpisodeSpec(f"{group}-{k}", env_id, dict(env_options), seed + t, group))
    return specs


def spread_chunks(specs: Sequence[EpisodeSpec], chunk_size: int, actors: int) -> list[list[EpisodeSpec]]:
    """``specs`` in order, cut into chunks of at most ``chunk_size`` and small enough that every
    actor gets one (a chunk is what a replaced actor plays again)."""
    step = max(1, min(chunk_size, math.ceil(len(specs) / max(1, actors))))
    return [list(specs[i : i + step]) for i in range(0, len(specs), step)]


class RolloutGroup:
    def __init__(self, config: RolloutConfig, chunk_size: int = 16, wait: bool = True):
        """Start ``config.num_actors`` actors. ``wait=False`` returns while their engines are still
        being built (so a caller can start a learner meanwhile); the first call that needs them, or
        :meth:`wait_ready`, waits, and raises an engine's construction error."""
        import ray

        self._ray = ray
        self.config = config
        self.chunk_size = chunk_size
        self.bundles = ActorBundles(config.num_actors, config.cpus_per_actor, config.gpus_per_actor)
        self._actor_cls = ray.remote(RolloutWorker)
        self.actors = [self._spawn(i) for i in range(config.num_actors)]
        self.restarts = 0
        self.last_error = ""
        self._weights_ref: Any = None
        self._version = 0
        self._starting = [a.ping.remote() for a in self.actors]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Block until every actor's engine is built."""
        starting, self._starting = self._starting, []
        if starting:
            self._ray.get(starting)

    def _spawn(self, index: int) -> Any:
        return self._actor_cls.options(
            num_cpus=self.config.cpus_per_actor,
            num_gpus=self.config.gpus_per_actor,
            scheduling_strategy=self.bundles.strategy(index),
            name=f"sftrl-rollout-{index}-{uuid.uuid4().hex[:6]}",
        ).remote(self.config)

    def _replace(self, index: int) -> None:
        if self.restarts >= self.config.max_actor_restarts:
            raise RuntimeError(
                f"rollout actors died {self.restarts} times; giving up (max_actor_restarts). Last error: {self.last_error}"
            )
        self.restarts += 1
        try:
            self._ray.kill(self.actors[index], no_restart=True)
        except Exception:  # already gone
            pass
        actor = self._spawn(index)
        if self._weights_ref is not None:  # a fresh engine starts from the checkpoint: bring it up to date
            self._ray.get(actor.update_weights.remote(self._weights_ref, self._version))
        self.actors[index] = actor

    def play(
        self,
        specs: Sequence[EpisodeSpec],
        sampling: SamplingConfig | None = None,
        on_chunk: Callable[[list[Trajectory]], None] | None = None,
    ) -> list[Trajectory]:
        """Play every spec; order of the result follows ``specs``. The specs are spread evenly over
        the actors, in chunks of at most ``chunk_size``."""
        ray = self._ray
        self.wait_ready()
        queue = deque(spread_chunks(specs, self.chunk_size, len(self.actors)))
        running: dict[Any, tuple[int, list[EpisodeSpec]]] = {}
        results: dict[str, Trajectory] = {}
        idle = list(range(len(self.actors)))
        while queue or running:
            while queue and idle:
                index = idle.pop()
                chunk = queue.popleft()
                running[self.actors[index].play.remote(chunk, sampling)] = (index, chunk)
            ready, _ = ray.wait(list(running), num_returns=1)
            index, chunk = running.pop(ready[0])
            try:
                trajectories = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                self.last_error = str(exc)[:2000]
                self._replace(index)
                queue.appendleft(chunk)  # re-run the unfinished episodes on the new actor
                idle.append(index)
                continue
            for traj in trajectories:
                results[traj.episode_id] = traj
            if on_chunk is not None:
                on_chunk(trajectories)
            idle.append(index)
        return [results[s.episode_id] for s in specs]

    def update_weights(self, weights: Any, version: int | None = None) -> int:
        """Send one copy of ``weights`` through the object store to every actor. An actor that died
        (before or during the push) is replaced, and its replacement loads these weights."""
        ray = self._ray
        self.wait_ready()
        self._version = version if version is not None else self._version + 1
        self._weights_ref = ray.put(weights) if not isinstance(weights, ray.ObjectRef) else weights
        pushes = [a.update_weights.remote(self._weights_ref, self._version) for a in self.actors]
        for index, push in enumerate(pushes):
            try:
                ray.get(push)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                self.last_error = str(exc)[:2000]
                self._replace(index)
        return self._version

    def policy_versions(self) -> list[int]:
        """The policy version each actor's engine holds now."""
        self.wait_ready()
        return self._ray.get([a.policy_version.remote() for a in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.bundles.remove()
