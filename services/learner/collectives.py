"""The learner ranks' process group and the few collectives the updates need.

:func:`join_process_group` sets the group up once per process; :class:`Collectives` is what the
other parts call. Every collective is a no-op shortcut at world size 1, so single-process runs and
tests need no group. On CPU the group is gloo, on CUDA NCCL (the tensors go to ``device``
accordingly).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from services.learner.rendezvous import meeting_point

SHM_PREFIX = "deepspeed_allreduce_buffer"


def join_process_group(
    rank: int, world_size: int, master_addr: str, master_port: int, device: str, timeout_s: float
) -> Path | None:
    """Join (or, a second worker in one process, reuse) the ranks' group; ``device`` is "cpu" or
    "cuda"; how the ranks meet: :func:`~services.learner.rendezvous.meeting_point`. Returns this
    rank's shared-memory file of DeepSpeed's CPU allreduce, already unlinked (None when there was
    none)."""
    os.environ.update({
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": "0",
        "LOCAL_SIZE": "1", "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
    })  # fmt: skip
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():  # a second worker in one process (tests): reuse the group
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"this process already belongs to a process group of {dist.get_world_size()} ranks"
            )
        return None
    if device == "cuda":
        torch.cuda.set_device(0)  # Ray shows each actor only its own GPU
    # DeepSpeed caches its communication backend and the groups it cloned in module globals. If the
    # process group was destroyed since (an in-process vLLM engine does so on shutdown: tests, notebooks),
    # those point at groups torch no longer knows: drop them so DeepSpeed wraps the new group.
    import deepspeed.comm.comm as ds_comm
    from deepspeed.utils import groups as ds_groups

    ds_comm.cdb = None
    for name in ("_WORLD_GROUP", "_DATA_PARALLEL_GROUP"):
        if hasattr(ds_groups, name):
            setattr(ds_groups, name, None)
    method = meeting_point(world_size, master_addr, master_port, device, timedelta(seconds=timeout_s))
    deepspeed.init_distributed(
        dist_backend="nccl" if device == "cuda" else "gloo",
        auto_mpi_discovery=False,
        verbose=False,
        timeout=timedelta(seconds=timeout_s),
        init_method=method,
        rank=rank,
        world_size=world_size,
    )
    # DeepSpeed's CPU shared-memory allreduce maps one /dev/shm file per rank at start-up. Once
    # every rank has mapped its peers' files (after this barrier) the names are no longer needed:
    # unlink our own now, so nothing is left behind even if this process is killed.
    dist.barrier()
    shm = Path("/dev/shm") / f"{SHM_PREFIX}_{os.getuid()}_{master_addr}_{master_port}_{rank}"
    if not shm.exists():
        return None
    remove_file(shm)
    return shm


def remove_file(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


class Collectives:
    """This rank's place in the group and the collectives over it (tensors on ``device``: gloo takes
    CPU tensors, NCCL CUDA ones)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, shm_file: Path | None = None):
        self.rank, self.world_size, self.device = rank, world_size, device
        self.shm_file = shm_file  # unlinked at start-up already; close() makes sure

    def close(self) -> None:
        remove_file(self.shm_file)

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def all_max(self, value: int) -> int:
        if self.world_size == 1:
            return int(value)
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.long, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def max_seconds(self, seconds: float) -> float:
        if self.world_size == 1:
            return seconds
        return max(self.all_gather_floats(seconds))

    def all_gather_floats(self, value: float) -> list[float]:
        import torch.distributed as dist

        out = [torch.zeros(1, dtype=torch.float64, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=self.device))
        return [float(t.item()) for t in out]

    def broadcast_object(self, value: Any) -> Any:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out
