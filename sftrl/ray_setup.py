"""Starting or joining Ray the same way from every sftrl command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sftrl.home import secret_file, sftrl_home


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray on this machine.

    A local instance requires a token of every caller (Ray's token authentication): Ray 2.60 listens
    on every interface whatever node address it is given, so the token is what keeps other machines
    out. The token is :func:`local_ray_token_path` unless ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH`` name another; ``RAY_AUTH_MODE=disabled`` opts out. A cluster keeps
    whatever authentication it was set up with.
    """
    import ray

    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        use_local_token()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False, **kwargs)
    return ray


def local_ray_token_path() -> Path:
    """``$SFTRL_HOME/ray-token``: the token of local Ray instances, made once (random, mode 0600)."""
    path = sftrl_home() / "ray-token"
    secret_file(path)
    return path


def use_local_token() -> None:
    """Turn Ray's token authentication on for this process and the Ray processes it starts, with the
    machine's sftrl token, unless the environment already chose a mode or a token."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(local_ray_token_path()))
    if "ray._raylet" in sys.modules:
        # Ray reads its auth settings once, at import; a process that imported ray already refreshes
        # them the way Ray does when it turns token auth on by itself.
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


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
