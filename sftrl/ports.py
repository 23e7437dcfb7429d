"""A TCP port free on the loopback interface now (the OS picks it; another process may take it later)."""

from __future__ import annotations

import socket


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
