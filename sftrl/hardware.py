"""What the CPU computes natively: timings and the right precision depend on it.

The machines this runs on differ from session to session (an Intel Xeon with AMX, an AMD EPYC with
AVX-512 BF16, an AMD EPYC with AVX2 only, where bf16 is emulated and several times slower than
float32), so results record the CPU and precision follows it.
"""

from __future__ import annotations

import platform
from functools import cache, lru_cache
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


# Measured on an AMD EPYC with AVX2 only (2 cores): vLLM-CPU SmolLM2-135M rollout 42 tok/s in bf16
# against 169 in float32; PyTorch matmuls about 1 GFLOP/s in bf16 against 95 in float32.
EMULATED_BF16_COST = (
    "bf16 is emulated on this CPU (no AVX-512 BF16 or AMX): measured on an AVX2-only AMD EPYC, "
    "rollout 4x and matmuls about 100x slower than float32"
)


def bf16_support(device: str) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (for logs and resolved configs)."""
    if device == "cuda":
        import torch

        ok = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        return ok, "the GPU computes bf16" if ok else "the GPU has no bf16 (before Ampere)"
    if native_bf16():
        have = ", ".join(f for f in cpu_flags() if f in ("avx512_bf16", "amx_bf16"))
        return True, f"the CPU computes bf16 natively ({have})"
    return False, "the CPU has no AVX-512 BF16 or AMX, so bf16 would be emulated"


PRECISIONS = ("float32", "bfloat16", "float16")
# the learner's old spellings: configs written with them keep working
PRECISION_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def normalize_precision(value: str) -> str:
    """``value`` in the one vocabulary (``auto``, ``float32``, ``bfloat16``, ``float16``): the old
    spellings ``fp32`` / ``bf16`` / ``fp16`` become their long names; anything else is returned as is
    (the config's own field says which values it takes)."""
    text = value.strip().lower() if isinstance(value, str) else value
    return PRECISION_ALIASES.get(text, text)


@cache
def _warn_emulated(what: str) -> None:
    import warnings

    warnings.warn(f"{what}: {EMULATED_BF16_COST}; `auto` would pick float32 here", stacklevel=3)


def resolve_precision(requested: str, device: str) -> tuple[str, str]:
    """The precision to compute in for ``requested`` (``auto``, ``float32``, ``bfloat16``, ``float16``;
    the old ``fp32`` / ``bf16`` are read as their long names) on ``device`` (``cpu``, ``cuda``), with
    the reason, for logs and resolved configs. ``auto`` takes bfloat16 only where the hardware
    computes it natively, else float32; an explicit choice stands, and bfloat16 asked for on a CPU that
    emulates it is obeyed with a warning (once per process). The learner and the rollout engine both
    resolve here, so they agree on one machine."""
    value = normalize_precision(requested)
    if value == "auto":
        native, why = bf16_support(device)
        return ("bfloat16" if native else "float32"), f"auto: {why}"
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: use auto, {', '.join(PRECISIONS)}")
    if value == "bfloat16" and device == "cpu" and not native_bf16():
        _warn_emulated("bfloat16")
    return value, "set in the config"


def describe_precision(value: str, reason: str) -> str:
    """The one log line a command prints for its choice: ``precision: float32 (auto: ...)``."""
    return f"precision: {value} ({reason})"


def cpu_kind() -> str:
    """A short name for the kind of CPU, for file names: vendor family and its best matmul feature
    (``intel-xeon-amx``, ``amd-epyc-avx512-bf16``, ``amd-epyc-avx2``)."""
    model, flags = _cpuinfo()
    lowered = model.lower()
    family = next((name for key, name in (("xeon", "intel-xeon"), ("epyc", "amd-epyc"), ("intel", "intel"),
                                           ("amd", "amd"), ("apple", "apple")) if key in lowered), "cpu")  # fmt: skip
    feature = next((name for flag, name in (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"),
                                            ("avx512f", "avx512"), ("avx2", "avx2")) if flag in flags), "baseline")  # fmt: skip
    return f"{family}-{feature}"
