"""CPU threads of a compute process.

Ray starts every worker with ``OMP_NUM_THREADS=<its num_cpus>``, usually 1, so torch in a rollout or
learner actor would use one core however many the machine has. The rollout and learner phases take
turns, so each process gets the node's cores divided among the processes of its own group instead.
"""

from __future__ import annotations

import os


def cpu_threads(requested: int | None, sharers: int = 1) -> int:
    """``requested``, else this machine's cores divided among ``sharers`` processes (at least 1)."""
    if requested:
        return requested
    return max(1, (os.cpu_count() or 1) // max(1, sharers))


def apply_cpu_threads(threads: int) -> None:
    """Set torch's intra-op threads (before vLLM starts: it freezes the setting afterwards)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
