"""What the CPU computes natively: timings and the right precision depend on it.

The machines this runs on differ from session to session (an Intel Xeon with AMX, an AMD EPYC with
AVX-512 BF16, an AMD EPYC with AVX2 only, where bf16 is emulated and several times slower than
float32), so results record the CPU and precision follows it.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def cpu_model() -> str:
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The flags among :data:`FLAGS_OF_INTEREST` this CPU has."""
    flags = _cpuinfo()[1]
    return [f for f in FLAGS_OF_INTEREST if f in flags]


def native_bf16() -> bool:
    """bf16 matmuls in hardware (AVX-512 BF16 or AMX); elsewhere PyTorch emulates them, far slower."""
    flags = _cpuinfo()[1]
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_facts() -> dict[str, Any]:
    import os

    return {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(), "native_bf16": native_bf16()}
