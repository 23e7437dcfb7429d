"""What plays episodes, as every caller sees it: a :class:`~services.rollout.worker.RolloutWorker`
(one vLLM engine in this process) or a :class:`~services.rollout.group.RolloutGroup` (Ray actors).

Evaluation, difficulty tagging, data mixing and the endpoint take a :class:`Rollout` and never care
which; ``RolloutWorker.on_model(model, engine)`` is the one way to make an in-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from services.rollout.config import SamplingConfig
from services.rollout.env_pool import EpisodeSpec
from sftrl.trajectory import Trajectory


@runtime_checkable
class Rollout(Protocol):
    def play(self, specs: Sequence[EpisodeSpec], sampling: SamplingConfig | None = None) -> list[Trajectory]:
        """Play every episode of ``specs`` to its end; trajectories in the order of ``specs``."""
        ...

    def shutdown(self) -> None:
        """Release the engines."""
        ...
