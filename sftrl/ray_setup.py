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
