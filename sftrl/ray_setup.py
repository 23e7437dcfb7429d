"""Starting or joining Ray the same way from every sftrl command."""

from __future__ import annotations

import os
from typing import Any


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray on this machine.

    A local instance listens on loopback only and runs without token authentication (Ray 2.60
    enables it by default); a cluster keeps whatever authentication it was set up with.
    """
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False, **kwargs)
    return ray


class ActorBundles:
    """A placement group of ``count`` like bundles (``cpus``, ``gpus`` each), packed and ready:
    the resources of a group of actors (rollout actors, learner ranks), one actor per bundle."""

    def __init__(self, count: int, cpus: float, gpus: float = 0, timeout: float = 600):
        import ray
        from ray.util.placement_group import placement_group

        bundle: dict[str, float] = {"CPU": cpus}
        if gpus:
            bundle["GPU"] = gpus
        self.group = placement_group([dict(bundle) for _ in range(count)], strategy="PACK")
        ray.get(self.group.ready(), timeout=timeout)

    def strategy(self, index: int) -> Any:
        """The scheduling strategy that puts an actor (or task) in bundle ``index``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=index
        )

    def remove(self) -> None:
        """Give the resources back (best effort: Ray may already be shutting down)."""
        from ray.util.placement_group import remove_placement_group

        try:
            remove_placement_group(self.group)
        except Exception:
            pass
