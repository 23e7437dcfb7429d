"""What machine a benchmark ran on, recorded beside every result (these machines are shared and noisy)."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

from sftrl.hardware import cpu_facts, cpu_kind
from sftrl.provenance import git_commit

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    import torch

    return {
        **cpu_facts(),
        "kind": cpu_kind(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _mem_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<cpu kind>/<name>.json`` with the machine description included: results of
    other kinds of CPU stay beside it."""
    folder = RESULTS_DIR / cpu_kind()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2) + "\n")
    return path
