"""The GPU check's workload: the dense peak by device name and a measured matmul, model shapes and
the FLOP count, the bench model, and the rows the learner trains on (SFT examples, trajectories)."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

from gpu_common import SHIPPED_MODEL, Clock

Row = tuple[list[int], list[int], str]  # (prompt ids, response ids, response text)

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets; the first match
# of the device name wins (MIG slices and unknown GPUs: no table peak, the measured matmul only).
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"\bGH200\b", "GH200", 989.4),
    (r"\bH200\b", "H200", 989.4),
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", 756.0),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", 835.0),
    (r"\bH100\b", "H100 SXM", 989.4),
    (r"\bH800\b", "H800", 989.4),
    (r"\bB200\b", "B200", 2250.0),
    (r"\bA100\b", "A100", 312.0),
    (r"\bA800\b", "A800", 312.0),
    (r"\bL40S\b", "L40S", 362.1),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
)

# The bench model's Llama shapes: SmolLM2-135M's (134.5M parameters), and a tiny one for --dry.
SMOLLM2_SHAPE = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152}  # fmt: skip
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 1024}  # fmt: skip

CARDS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]


def table_peak(name: str) -> tuple[str | None, float | None]:
    """(table entry, TFLOP/s) for a device name; (None, None) for MIG slices and unknown GPUs."""
    if "MIG" in name:
        return None, None
    for pattern, key, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name):
            return key, tflops
    return None, None


def measure_matmul(device: str, n: int, dtype_name: str, seconds: float = 1.0) -> dict[str, Any]:
    """TFLOP/s of an n x n matmul repeated for about ``seconds`` (after a warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    clock = Clock(device)
    for _ in range(3):
        torch.matmul(a, b)
    _, one = clock(torch.matmul, a, b)
    reps = max(3, min(200, int(seconds / max(one, 1e-6))))

    def run() -> None:
        for _ in range(reps):
            torch.matmul(a, b)

    _, total = clock(run)
    return {"n": n, "dtype": dtype_name, "reps": reps, "tflops": round(2 * n**3 * reps / total / 1e12, 3)}


def model_shape(model_path: str) -> dict[str, Any]:
    """Layers, width, heads, vocabulary and architecture from a model folder's config.json."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    return {
        "layers": text.get("num_hidden_layers"), "hidden": text.get("hidden_size"),
        "heads": text.get("num_attention_heads"), "kv_heads": text.get("num_key_value_heads"),
        "head_dim": text.get("head_dim") or (text.get("hidden_size", 0) // max(text.get("num_attention_heads", 1), 1)),
        "vocab": text.get("vocab_size"), "architecture": (cfg.get("architectures") or ["?"])[0],
    }  # fmt: skip


def attention_flops_per_token(shape: dict[str, Any], seq_len: float, training: bool = True) -> float:
    """QK^T and AV per token, not halved for the causal mask (as the PaLM MFU count): forward
    2 x 2 x layers x heads x head_dim x seq_len; training 3x that."""
    fwd = 4.0 * shape["layers"] * shape["heads"] * shape["head_dim"] * seq_len
    return 3.0 * fwd if training else fwd


def rl_update_flops(epochs: int, metrics: dict[str, Any], params: float, trained_tokens: float) -> float:
    """An RL update's compute as the trainer counts it: 6N per trained token per epoch, 2N per token
    of each scoring pass."""
    return (6.0 * epochs + 2.0 * metrics.get("scoring_passes", 0.0)) * params * trained_tokens


def bench_model(choice: str, dry: bool, work: Path) -> tuple[str, str]:
    """(path, what) for --bench-model ``choice``: SmolLM2-135M if prepared, else a random model of
    its shape (tiny when ``dry``) saved under ``work``; any other value is a model folder."""
    if choice not in ("auto", "smollm2-shape", "tiny-shape"):
        return choice, "given"
    if choice == "auto" and not dry:
        try:
            from sftrl.models.store import find_prepared

            found = find_prepared("smollm2-135m")
            if found is not None:
                return str(found.path), "smollm2-135m (prepared)"
        except Exception:  # noqa: BLE001 - not prepared: the shape below
            pass
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = choice == "tiny-shape" or (dry and choice == "auto")
    config = LlamaConfig(
        **(TINY_SHAPE if tiny else SMOLLM2_SHAPE), max_position_embeddings=2048, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=3, hidden_act="silu",
    )  # fmt: skip
    torch.manual_seed(0)
    folder = work / ("bench-tiny" if tiny else "bench-smollm2-shape")
    LlamaForCausalLM(config).save_pretrained(folder)
    for f in SHIPPED_MODEL.iterdir():  # gp-base's tokenizer: only pad/eos ids matter here
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy2(f, folder / f.name)
    return str(folder), "random tiny model (dry)" if tiny else "random model of SmolLM2-135M's shape"


def text_rows(tokenizer: Any, n: int, seed: int) -> list[Row]:
    """GeneralPoints-like (prompt ids, response ids + eos, response text) from the model's tokenizer."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    rows = []
    for _ in range(n):
        hand = [rng.choice(CARDS) for _ in range(4)]
        a, b, c, d = (rng.randint(1, 13) for _ in range(4))
        prompt = f"Cards: {', '.join(hand)}. Use each number once with + - * / to make 24. Answer in JSON."
        response = json.dumps({"cards": [a, b, c, d], "formula": f"({a}+{b})*{c}-{d}=24"})
        p = tokenizer.encode(prompt, add_special_tokens=False)
        r = tokenizer.encode(response, add_special_tokens=False) + ([eos] if eos is not None else [])
        rows.append((p, r, response))
    return rows


def random_rows(vocab: int, n: int, prompt_len: int, response_len: int, seed: int) -> list[Row]:
    """Rows of random token ids (ids under 4 left out: the special tokens)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (n, prompt_len + response_len), generator=g).tolist()
    return [(row[:prompt_len], row[prompt_len:], "") for row in ids]


def sft_examples(rows: list[Row]) -> list[Any]:
    """The project's ``SFTExample``s, the prompt tokens masked out of the loss."""
    import torch

    from services.learner.sft_data import IGNORE_INDEX, SFTExample

    out = []
    for i, (p, r, _) in enumerate(rows):
        ids = torch.tensor(p + r, dtype=torch.long)
        labels = ids.clone()
        labels[: len(p)] = IGNORE_INDEX
        out.append(SFTExample(input_ids=ids, labels=labels, id=f"row-{i}"))
    return out


def trajectories(rows: list[Row], group: int, seed: int) -> list[Any]:
    """Single-turn episodes in groups of ``group``; rewards alternate within each group (so every
    group has a non-zero group-relative advantage), the phase set by ``seed``."""
    from sftrl.trajectory import Trajectory, Turn

    out = []
    for i, (p, r, text) in enumerate(rows):
        g = i // group
        reward = float((i + seed) % 2)
        turn = Turn(prompt_ids=p, response_ids=r, response_logprobs=[-1.0] * len(r), response_text=text,
                    reward=reward, terminated=True)  # fmt: skip
        out.append(
            Trajectory(episode_id=f"ep-{i}", group_id=f"g-{g}", env_id="gpu-check", seed=g, turns=[turn])
        )
    return out
