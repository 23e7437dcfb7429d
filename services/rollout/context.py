"""What a model supports, read from its ``config.json`` before any engine starts: the engine's
default context (the model's own), and a message naming the problem when the model does not exist
or is asked for more context than it has.

vLLM would find both out too, but only after it started, with a validation dump (and inside a Ray
actor, wrapped in another); checking here makes a user's mistake one line, at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from services.rollout.config import EngineConfig
from sftrl.config import ConfigError
from sftrl.models import CATALOG, resolve_model

# the keys vLLM reads a model's length from (vllm.transformers_utils.model_arch_config_convertor), the
# smallest present wins; ``model_max_length`` (Command-R) overrides them
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")  # fmt: skip
TEXT_SECTIONS = ("text_config", "language_config", "llm_config")  # a VLM's language model
# vLLM scales the length by a RoPE ``factor`` except for these types (already scaled, or not a factor)
UNSCALED_ROPE = ("default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
DEFAULT_LENGTH = 2048  # vLLM's assumption when a config names no length


@dataclass(frozen=True)
class ModelContext:
    """``model`` (as named) has ``tokens`` positions, read from ``source`` in its config.json."""

    model: str
    path: str
    tokens: int
    source: str


def _unknown_model(name: str, why: str) -> ConfigError:
    names = ", ".join(CATALOG)
    return ConfigError(
        f"unknown model {name!r}: not a prepared model or a model folder, and {why}\n"
        f"prepare one with `sftrl models prepare NAME` ({names}; see `sftrl models list`), or give a model folder"
    )


@lru_cache(maxsize=64)
def _hub_config(repo: str) -> str:
    """The text of hub model ``repo``'s config.json (the local HF cache first); ConfigError if the
    hub has no such model or cannot be asked."""
    from huggingface_hub import hf_hub_download, model_info

    try:
        return Path(hf_hub_download(repo, "config.json", local_files_only=True)).read_text(encoding="utf-8")
    except Exception:  # not cached (or not a valid repo id): ask the hub below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise _unknown_model(
            repo, "the Hugging Face hub is switched off here (HF_HUB_OFFLINE) and its cache has none"
        )
    try:
        model_info(repo, timeout=10)  # one request, no retries: fails at once without a network
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403, 404) or type(exc).__name__ in (
            "RepositoryNotFoundError",
            "HFValidationError",
        ):
            raise _unknown_model(repo, "the Hugging Face hub has no model of that name") from None
        raise _unknown_model(repo, "the Hugging Face hub cannot be reached to look it up") from None
    try:
        return Path(hf_hub_download(repo, "config.json")).read_text(encoding="utf-8")
    except Exception as exc:
        raise ConfigError(
            f"model {repo!r} on the Hugging Face hub has no readable config.json ({exc})"
        ) from None


def read_model_config(model: str) -> tuple[str, dict[str, Any]]:
    """``model``'s resolved path (a folder, or a hub id) and its config.json, or a ConfigError that
    says what is wrong (not prepared, not a model folder, unknown) and what to do."""
    try:
        path = resolve_model(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    folder = Path(path)
    if folder.is_dir():
        text = (folder / "config.json").read_text(encoding="utf-8")
    else:
        text = _hub_config(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"the config.json of model {model!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"the config.json of model {model!r} is not a JSON object")
    return path, data


def _rope_factor(section: dict[str, Any]) -> float:
    rope = section.get("rope_scaling") or section.get("rope_parameters")
    if not isinstance(rope, dict) or "gemma3" in str(section.get("model_type", "")):
        return 1.0
    # transformers 5 may keep one RoPE setting per layer type
    settings = [rope] if not all(isinstance(v, dict) for v in rope.values()) else list(rope.values())
    factor = 1.0
    for rp in settings:
        kind = rp.get("rope_type", rp.get("type", "default"))
        if kind not in UNSCALED_ROPE and isinstance(rp.get("factor"), (int, float)):
            factor = float(rp["factor"])
    return factor


def context_of(config: dict[str, Any]) -> tuple[int, str]:
    """Positions of the model of ``config`` (a config.json) as vLLM derives them, and which key said so."""
    section, prefix = config, ""
    for name in TEXT_SECTIONS:
        if isinstance(config.get(name), dict):
            section, prefix = config[name], f"{name}."
            break
    found = [(int(section[k]), k) for k in LENGTH_KEYS
             if isinstance(section.get(k), (int, float)) and not isinstance(section.get(k), bool) and section[k] > 0]  # fmt: skip
    if isinstance(section.get("model_max_length"), int) and section["model_max_length"] > 0:
        length, key = section["model_max_length"], "model_max_length"
    elif found:
        length, key = min(found)
    else:
        return DEFAULT_LENGTH, "no length in its config.json: vLLM's default"
    return int(length * _rope_factor(section)), prefix + key


def model_context(model: str) -> ModelContext:
    path, config = read_model_config(model)
    tokens, source = context_of(config)
    return ModelContext(model=model, path=path, tokens=tokens, source=source)


def _shown(model: str) -> str:
    """How to name ``model`` in a message: a prepared model's folder (the trainer hands engines the
    resolved path) by its name, anything else as given."""
    from sftrl.models import models_dir

    path = Path(model)
    return path.name if path.is_absolute() and path.parent == models_dir() else model


def fit_engine(engine: EngineConfig, max_tokens: int | None = None) -> EngineConfig:
    """``engine`` with its context made explicit: ``max_model_len`` unset takes the model's own; a value
    beyond it, or answers of ``max_tokens`` that leave no room for a prompt, are a ConfigError naming
    both numbers. The model is checked to exist on the way (a ConfigError saying how to get it)."""
    ctx = model_context(engine.model)
    name = _shown(engine.model)
    too_long = engine.max_model_len is not None and engine.max_model_len > ctx.tokens
    if too_long and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") != "1":  # vLLM's own way to insist
        raise ConfigError(
            f"max_model_len {engine.max_model_len} is longer than the context of model {name!r} "
            f"({ctx.tokens} tokens, {ctx.source} in its config.json)\n"
            f"leave max_model_len unset to use the model's own, or set it to at most {ctx.tokens}"
        )
    length = engine.max_model_len or ctx.tokens
    if max_tokens is not None and max_tokens >= length:
        raise ConfigError(
            f"answers of up to {max_tokens} tokens leave no room for a prompt in the {length}-token context "
            f"of model {name!r}\nask for fewer tokens (--max-tokens / sampling.max_tokens below {length})"
        )
    if engine.max_model_len == length:
        return engine
    return engine.model_copy(update={"max_model_len": length})
