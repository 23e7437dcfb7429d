"""Which Redis the registry uses: ``REDIS_URL`` (a cluster's), else the machine's local server."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sftrl.registry.local_server import LocalRedis
from sftrl.registry.store import Registry


def registry_url() -> str | None:
    return os.environ.get("REDIS_URL") or None


@contextlib.contextmanager
def open_registry(url: str | None = None) -> Iterator[Registry]:
    """The registry at ``url`` or ``$REDIS_URL``; without either, a local redis-server started (or
    joined) for the duration, stopped again if nobody else uses it."""
    url = url or registry_url()
    server = None
    if url is None:
        server = LocalRedis()
        url = server.start()
    registry = Registry(url)
    try:
        yield registry
    finally:
        registry.close()
        if server is not None:
            server.release()
