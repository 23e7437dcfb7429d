"""Verifiers as Ray actors: batched scoring of (task, answer) pairs away from the caller.

The functions stay pure; the actor only hosts them, so evaluation or reward computation can be
spread over a pool without the caller importing any task's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.verifier import verify
from services.verifier.types import Verdict


class VerifierWorker:
    def verify_many(self, pairs: Sequence[tuple[Any, str]]) -> list[Verdict]:
        return [verify(task, answer) for task, answer in pairs]


class VerifierPool:
    """``num_actors`` verifier actors; ``verify_many`` splits a batch evenly across them."""

    def __init__(self, num_actors: int = 1, cpus_per_actor: float = 0.25):
        import ray

        self._ray = ray
        actor_cls = ray.remote(num_cpus=cpus_per_actor)(VerifierWorker)
        self.actors = [actor_cls.remote() for _ in range(max(1, num_actors))]

    def verify_many(self, pairs: Sequence[tuple[Any, str]]) -> list[Verdict]:
        n = len(self.actors)
        chunks = [list(pairs[i::n]) for i in range(n)]
        results = self._ray.get([a.verify_many.remote(c) for a, c in zip(self.actors, chunks, strict=True)])
        out: list[Verdict] = [None] * len(pairs)  # type: ignore[list-item]
        for i, chunk in enumerate(results):
            out[i::n] = chunk
        return out
