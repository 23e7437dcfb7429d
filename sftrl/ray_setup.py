"""Starting or joining Ray the same way from every sftrl command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sftrl.home import secret_file, sftrl_home

# Ray's switch between a local-only instance on loopback (0) and one other nodes can join (1)
RAY_CLUSTER_SETTING = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> Any:
    """Join ``address`` (or ``RAY_ADDRESS``) if given, else start a local Ray on this machine.

    A local instance takes 127.0.0.1 as its node address, so every Ray listener binds to loopback
    (:func:`keep_local_ray_on_loopback`), and it still requires a token of every caller (Ray's token
    authentication), for the other users of this machine. The token is :func:`local_ray_token_path`
    unless ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` name another; ``RAY_AUTH_MODE=disabled`` opts out. A cluster keeps
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
        keep_local_ray_on_loopback()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False, **kwargs)
    return ray


def keep_local_ray_on_loopback() -> None:
    """Make the local Ray this process starts take 127.0.0.1 as its node address, as Ray does on
    macOS and Windows: its own setting ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (unless the
    environment already set it), which the Ray processes started from here inherit. Ray reads it
    once, at import, so a process that imported ray already gets the value set on its constants."""
    os.environ.setdefault(RAY_CLUSTER_SETTING, "0")
    if "ray._private.ray_constants" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(RAY_CLUSTER_SETTING, True)


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

    def on_one_node(self) -> bool:
        """Whether every bundle sits on one node."""
        from ray.util.placement_group import placement_group_table

        return len(set(placement_group_table(self.group)["bundles_to_node_id"].values())) == 1

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
