"""What every part of the GPU check shares: the repository's paths, the log line, the JSON result
and a device-drained clock. Standard library only at import: torch loads when a clock first syncs."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "deploy" / "shipped" / "gp-base"


def log(message: str) -> None:
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


class Result:
    """The JSON result, rewritten after every phase (a run cut short still leaves what it had)."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def save(self) -> None:
        self.data["seconds_total"] = round(self.elapsed(), 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")  # replaced whole: never a torn file
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def fail(self, phase: str, exc: BaseException) -> None:
        self.data["errors"].append({
            "phase": phase, "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=12)[-4000:],
        })  # fmt: skip
        print(f"[gpu_check] {phase} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


class Clock:
    """Wall time of a call, with the device drained before and after (CUDA runs asynchronously)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        return out, time.perf_counter() - t0
