"""SFT steps of sftrl's learner against a plain PyTorch training loop: same model, rows, batches,
micro-batches, optimizer and precision.

    python -m bench.sft_step [--steps 8] [--batch 128] [--micro 32] [--precision auto] [--quick]

The model is gp-base's shape (a 3.3M-parameter Llama, a token per number) from a seed, the rows its
rule-diverse GeneralPoints episodes. sftrl: :meth:`LearnerWorker.sft_step` (DeepSpeed engine, world
size 1). Plain: ``model(**batch)``, token-mean cross-entropy over the micro-batches, ``backward``,
gradient clipping, ``torch.optim.AdamW``; bf16 through ``torch.autocast`` (sftrl: DeepSpeed bf16 with
float32 master weights). The two sides alternate step by step on the same batches, so a busy moment
of a shared machine hits both; the first step of each is warm-up. The measure is trained tokens
(rows' real tokens, no padding) per second; target: sftrl at least 0.8x the plain loop.
Writes bench/results/sft_step.json (not for --quick).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.machine import write_result

TARGET_RATIO = 0.8


def _rows(episodes: int, seed: int) -> tuple[Any, list[Any], Any]:
    from deploy.models.gp_base import GPBaseConfig, demonstrations, gp_base_tokenizer, initial_model
    from services.learner.sft_data import SFTConversation, tokenize_sft

    config = GPBaseConfig(seed=seed, episodes=episodes)
    demos = demonstrations(config)
    tokenizer = gp_base_tokenizer((m["content"] for d in demos for m in d.messages), config.vocab_size)
    rows = tokenize_sft((SFTConversation(d.episode_id, d.messages) for d in demos), tokenizer, config.max_len)
    return tokenizer, rows, initial_model(config, tokenizer)


class PlainLoop:
    """The peer: what a person writes with PyTorch alone."""

    def __init__(self, model: Any, pad_id: int, micro: int, bf16: bool, lr: float):
        import torch

        self.torch, self.model, self.pad_id, self.micro, self.bf16 = torch, model.train(), pad_id, micro, bf16
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def step(self, rows: list[Any]) -> float:
        torch = self.torch
        import torch.nn.functional as F

        targets = sum(int((r.labels[1:] != -100).sum()) for r in rows)
        total = 0.0
        for start in range(0, len(rows), self.micro):
            chunk = rows[start : start + self.micro]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)], labels[i, : len(r)], mask[i, : len(r)] = r.input_ids, r.labels, 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum",
            )  # fmt: skip
            (loss / targets).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total / targets


def run(steps: int, batch: int, micro: int, precision: str, seed: int = 0) -> dict[str, Any]:
    import copy
    import tempfile

    from services.learner.config import LearnerConfig, OptimConfig
    from services.learner.worker import LearnerWorker
    from sftrl.hardware import describe_precision, resolve_precision
    from sftrl.threads import apply_cpu_threads, cpu_threads

    precision, reason = resolve_precision(precision, "cpu")
    print(describe_precision(precision, reason), flush=True)
    apply_cpu_threads(cpu_threads(None))
    tokenizer, rows, model = _rows(episodes=max(256, (steps + 1) * batch), seed=seed)
    lr = 1e-3
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        optim = OptimConfig(
            lr=lr, betas=(0.9, 0.98), weight_decay=0.01, scheduler="constant", total_steps=steps + 1
        )
        learner = LearnerWorker(
            LearnerConfig(model=folder, micro_batch_size=micro, precision=precision, optim=optim, seed=seed),
            master_port=29_377,
        )
        plain = PlainLoop(copy.deepcopy(model), tokenizer.pad_token_id, micro, precision == "bfloat16", lr)
        times: dict[str, list[float]] = {"sftrl": [], "plain": []}
        losses: dict[str, list[float]] = {"sftrl": [], "plain": []}
        tokens: list[int] = []
        try:
            for s in range(steps + 1):
                chunk = rows[s * batch : (s + 1) * batch]
                t0 = time.perf_counter()
                out = learner.sft_step(chunk)
                t1 = time.perf_counter()
                loss = plain.step(chunk)
                t2 = time.perf_counter()
                losses["sftrl"].append(out["loss"])
                losses["plain"].append(loss)
                if s == 0:
                    continue  # warm-up
                times["sftrl"].append(t1 - t0)
                times["plain"].append(t2 - t1)
                tokens.append(sum(len(r) for r in chunk))
                print(f"step {s}: sftrl {t1 - t0:.2f} s, plain {t2 - t1:.2f} s", flush=True)
        finally:
            learner.shutdown()
    rate = {side: sum(tokens) / sum(t) for side, t in times.items()}
    return {
        "precision": precision,
        "precision_reason": reason,
        "model_parameters": sum(p.numel() for p in model.parameters()),
        "batch_rows": batch,
        "micro_batch_rows": micro,
        "timed_steps": steps,
        "row_tokens_mean": statistics.mean(len(r) for r in rows[: (steps + 1) * batch]),
        "tokens_per_s": rate,
        "seconds_per_step": {side: statistics.median(t) for side, t in times.items()},
        "loss_first_last": {side: [v[0], v[-1]] for side, v in losses.items()},
        "ratio": rate["sftrl"] / rate["plain"],
        "target_ratio": TARGET_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps (one more is warm-up)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--micro", type=int, default=32)
    parser.add_argument(
        "--precision",
        choices=["auto", "float32", "bfloat16", "fp32", "bf16"],
        default="auto",
        help="auto: bfloat16 where the CPU computes it natively, else float32 (fp32/bf16: the same)",
    )
    parser.add_argument("--quick", action="store_true", help="2 timed steps of 32 rows; nothing written")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch = 2, 32
    result = run(args.steps, args.batch, args.micro, args.precision)
    print(
        f"sftrl {result['tokens_per_s']['sftrl']:.0f} tokens/s, plain PyTorch {result['tokens_per_s']['plain']:.0f} "
        f"({result['precision']}): {result['ratio']:.2f}x (target {TARGET_RATIO}x)"
    )
    if not args.quick:
        name = "sft_step" if result["precision"] == "float32" else "sft_step_bf16"  # the files' names stay
        print(f"wrote {write_result(name, result)}")


if __name__ == "__main__":
    main()
