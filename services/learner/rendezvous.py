"""Where the learner ranks meet to form their process group, and which interface they talk on.

Ranks that share a node meet through a file in a private folder and talk over the loopback
interface, so nothing of the learner listens beyond loopback (torch's TCP rendezvous listens on every
interface, whatever address it is given, and has no authentication). Ranks on several nodes meet at
rank 0's node address and a free port: that store is open to the cluster's network, which must be
closed to others (docs/security.md).
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sftrl.ports import is_loopback


def rendezvous_dir() -> Path:
    """``$TMPDIR/sftrl-rendezvous-<uid>``, mode 0700; refused if another user owns it or can write it."""
    path = Path(tempfile.gettempdir()) / f"sftrl-rendezvous-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} must be a folder of this user with mode 0700: remove it and start again"
        )
    return path


def fresh_rendezvous(one_node: bool) -> tuple[str, int]:
    """The address and port the ranks will meet at (run where rank 0 runs). One node: loopback and
    the key of a rendezvous file that does not exist yet (never a stale one of a killed run).
    Several: this node's address and a port free on it now."""
    if one_node:
        folder = rendezvous_dir()
        sweep_old_files(folder)
        while True:
            key = secrets.randbelow(2**31 - 2**16) + 2**16
            if not (folder / str(key)).exists():
                return "127.0.0.1", key
    import ray

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = probe.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def meeting_point(
    world_size: int, master_addr: str, master_port: int, device: str, timeout: timedelta
) -> str | None:
    """Make ready for ``deepspeed.init_distributed`` and return its ``init_method``. A single rank
    meets nobody: its group is made here, on an in-memory store. Ranks on one node: the rendezvous
    file keyed by ``master_port``. Across nodes: None (TCP at ``MASTER_ADDR:MASTER_PORT``)."""
    if world_size == 1:
        import torch.distributed as dist

        talk_on_loopback(device)
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        return None
    if not is_loopback(master_addr):  # a loopback master address means every rank is on this node
        return None
    talk_on_loopback(device)
    return f"file://{rendezvous_dir() / str(master_port)}"


def sweep_old_files(folder: Path, max_age_s: float = 7 * 86400) -> None:
    """Remove rendezvous files untouched for ``max_age_s``: those of killed runs (a group reads its
    file only while it forms, so a week-old one serves nobody)."""
    cutoff = time.time() - max_age_s
    for path in folder.iterdir():
        try:
            if path.lstat().st_mtime < cutoff:
                path.unlink()
        except FileNotFoundError:
            pass


def loopback_interface() -> str:
    """The name of the interface that carries 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    raise RuntimeError("this machine has no interface with the address 127.0.0.1")


def talk_on_loopback(device: str) -> None:
    """Make gloo (CPU) or NCCL (CUDA) open their connections on the loopback interface only."""
    name = loopback_interface()
    os.environ["GLOO_SOCKET_IFNAME"] = name
    if device == "cuda":
        os.environ["NCCL_SOCKET_IFNAME"] = name
