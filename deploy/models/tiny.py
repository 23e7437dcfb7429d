"""``tiny``: a small causal LM made here from a seed, with the tasks' tokenizer.

Sized for tests and quick runs on two CPU cores, and shaped so that vLLM's CPU attention backend
takes it: head_dim 32 (the CPU backend supports only 32, 64, 80, 96, 112, 128, 160, ... ).
Two KV heads for four query heads, so grouped-query attention is exercised as in real models.
8192 positions: whole V-IRL episodes with revisions reach ~3.6k tokens with this tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftrl.models.prepare import BuildResult, PrepareOptions, Report

HIDDEN = 128
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32
LAYERS = 4
INTERMEDIATE = 384
MAX_POSITIONS = 8192


def tiny_config(arch: str, vocab_size: int, special_ids: dict[str, int]) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=False, initializer_range=0.02,
        rms_norm_eps=1e-6, bos_token_id=special_ids["bos"], eos_token_id=special_ids["eos"],
        pad_token_id=special_ids["pad"], dtype="float32",
    )  # fmt: skip
    if arch == "llama":
        return LlamaConfig(head_dim=HEAD_DIM, **common)
    if arch == "qwen2":
        return Qwen2Config(**common)  # Qwen2 derives head_dim = hidden / heads = 32
    raise ValueError(f"unknown architecture {arch!r}; choose llama or qwen2")


def seeded_model(config: Any, seed: int) -> Any:
    """Random weights that depend only on ``seed`` (CPU RNG, the library's own initialisation)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def special_ids(tokenizer: Any) -> dict[str, int]:
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
    }


def set_generation_config(model: Any, ids: dict[str, int]) -> None:
    """Saved as generation_config.json: vLLM and ``generate`` stop at ``<|im_end|>``."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )


def build_tiny(out_dir: Path, options: PrepareOptions, report: Report) -> BuildResult:
    from deploy.models.task_tokenizer import task_tokenizer

    report("training the tokenizer on the tasks' text")
    tokenizer = task_tokenizer()
    ids = special_ids(tokenizer)
    report(f"initialising a {options.arch} model (seed {options.seed})")
    config = tiny_config(options.arch, len(tokenizer), ids)
    model = seeded_model(config, options.seed)
    report("saving")
    set_generation_config(model, ids)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return BuildResult(
        source=f"made here: random {options.arch} weights from seed {options.seed}, tokenizer trained on the tasks' text",
        parameters=sum(p.numel() for p in model.parameters()),
        architecture=type(model).__name__,
        dtype="float32",
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
    )
