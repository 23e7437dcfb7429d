"""The GPU check's learner phases: the check (SFT, GRPO, checkpoint round trip, resume, PPO on the
check model) and the bench (FLOP/s of SFT steps and GRPO updates at realistic sizes). Only the
learner's public API is used; every step records into the result and its check."""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path
from typing import Any

from gpu_common import Clock, Result, log
from gpu_workload import (
    attention_flops_per_token,
    bench_model,
    model_shape,
    random_rows,
    rl_update_flops,
    sft_examples,
    text_rows,
    trajectories,
)

CHECKPOINT_EXTRA = {"step": 7, "by": "gpu_check"}


# -- the learner -------------------------------------------------------------------------------------


def make_worker(args: argparse.Namespace, model: str, port: int, rl: Any = None, value_head: bool = False,
                micro_batch_size: int = 8, lr: float = 1e-3) -> Any:  # fmt: skip
    from services.learner.config import LearnerConfig
    from services.learner.worker import LearnerWorker

    config = LearnerConfig.model_validate({
        "model": model, "device": args.device, "precision": args.precision, "zero_stage": 0,
        "micro_batch_size": micro_batch_size, "seed": 0,
        "optim": {"lr": lr, "scheduler": "constant", "total_steps": 1000, "implementation": args.adam},
    })  # fmt: skip
    return LearnerWorker(config, rl, 0, 1, "127.0.0.1", port, value_head=value_head)


def close(worker: Any) -> None:
    """Shut a learner down and free its cached GPU memory (best effort: the next phase must run)."""
    if worker is not None and hasattr(worker, "shutdown"):
        try:
            worker.shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def tokenizer_and_pad(model: str) -> tuple[Any, int]:
    """The model's text tokenizer and its pad id (eos when it has none)."""
    from sftrl.models.processor import load_tokenizer_or_processor

    tok = load_tokenizer_or_processor(model)
    tok = getattr(tok, "tokenizer", tok)
    return tok, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def global_norm_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    total = 0.0
    for k in a:
        total += float((a[k].float() - b[k].float()).pow(2).sum())
    return math.sqrt(total)


def states_equal(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, float]:
    """(bit for bit equal, largest absolute difference); inf when names, shapes or dtypes differ."""
    import torch

    if set(a) != set(b):
        return False, float("inf")
    worst = 0.0
    for k in a:
        if a[k].shape != b[k].shape or a[k].dtype != b[k].dtype:
            return False, float("inf")
        if not torch.equal(a[k], b[k]):
            worst = max(worst, float((a[k].float() - b[k].float()).abs().max()))
    return worst == 0.0, worst


def timed_rl_step(
    worker: Any, batch: Any, rl: Any, params: float, clock: Clock
) -> tuple[dict[str, Any], Any, float]:
    """(record, metrics, seconds) of one timed ``rl_step``."""
    trained = float(batch.attention_mask.sum())
    m, s = clock(worker.rl_step, batch)
    flops = rl_update_flops(rl.epochs, m, params, trained)
    record = {"seconds": round(s, 4), "rows": len(batch), "trained_tokens": trained, "flops_per_s": flops / s,
              "metrics": m}  # fmt: skip
    return record, m, s


# -- the check -----------------------------------------------------------------------------------------


def check_sft(res: Result, worker: Any, examples: list[Any], steps: int, clock: Clock) -> None:
    """SFT: the loss of one fixed batch must fall."""
    sft: dict[str, Any] = {"rows": len(examples), "tokens_per_step": sum(len(e) for e in examples),
                           "losses": [], "step_seconds": [], "grad_norms": []}  # fmt: skip
    res.data["sft"] = sft
    try:
        for _ in range(steps):
            m, s = clock(worker.sft_step, examples)
            sft["losses"].append(round(m["loss"], 5))
            sft["grad_norms"].append(round(m["grad_norm"], 5))
            sft["step_seconds"].append(round(s, 4))
        timed = sft["step_seconds"][1:] or sft["step_seconds"]  # the first step warms up
        sft["flops_per_s"] = worker.flops_per_token() * sft["tokens_per_step"] / (sum(timed) / len(timed))
        finite = all(math.isfinite(x) for x in sft["losses"] + sft["grad_norms"])
        res.data["checks"]["sft"] = bool(
            finite and sft["losses"][-1] < sft["losses"][0] and sft["grad_norms"][0] > 0
        )
        log(f"sft: loss {sft['losses'][0]} -> {sft['losses'][-1]}, step {timed[-1]:.3f} s")
    except Exception as exc:  # noqa: BLE001
        res.data["checks"]["sft"] = False
        res.fail("check.sft", exc)


def check_grpo(res: Result, worker: Any, rows: list[Any], tok: Any, pad_id: int, grpo: Any, params: float,
               clock: Clock) -> None:  # fmt: skip
    """GRPO, 2 epochs: a scoring pass and 2 optimizer steps."""
    from services.learner.batch import build_rl_batch

    try:
        batch = build_rl_batch(trajectories(rows, 4, seed=3), tok, grpo, pad_id=pad_id)
        record, m, s = timed_rl_step(worker, batch, grpo, params, clock)
        res.data["rl"]["grpo"] = record
        res.data["checks"]["rl_grpo"] = bool(
            all(math.isfinite(float(v)) for v in m.values())
            and m["optimizer_steps"] == 2
            and m["grad_norm"] > 0
        )
        log(f"grpo: {s:.3f} s, {m['optimizer_steps']} optimizer steps, grad norm {m['grad_norm']:.4f}")
    except Exception as exc:  # noqa: BLE001
        res.data["checks"]["rl_grpo"] = False
        res.fail("check.rl_grpo", exc)


def check_roundtrip(
    res: Result, worker: Any, path: Path, examples: list[Any], clock: Clock
) -> dict[str, Any]:
    """Save, take a step, load: the weights and the checkpoint's HF files must equal the saved ones
    exactly. The saved policy state, for the resume step."""
    from safetensors.torch import load_file

    ck, checks = res.data["checkpoint"], res.data["checks"]
    saved = worker.policy_state_dict(dtype=None)
    _, seconds = clock(worker.save_checkpoint, path, dict(CHECKPOINT_EXTRA))
    ck["save_seconds"] = round(seconds, 3)
    ck["bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    worker.sft_step(examples)
    ck["moved_by_a_step"] = global_norm_diff(saved, worker.policy_state_dict(dtype=None))
    extra, seconds = clock(worker.load_checkpoint, path)
    ck["load_seconds"] = round(seconds, 3)
    same, worst = states_equal(saved, worker.policy_state_dict(dtype=None))
    ck["tensors"], ck["max_abs_diff"] = len(saved), worst
    ck["extra_ok"] = extra == CHECKPOINT_EXTRA
    hf: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        hf.update(load_file(str(f)))
    hf_same, hf_worst = states_equal(saved, hf)
    ck["hf_files_match"], ck["hf_max_abs_diff"] = hf_same, hf_worst
    ck["dtype"] = str(next(iter(saved.values())).dtype)
    checks["checkpoint_roundtrip"] = bool(same and hf_same and ck["extra_ok"] and ck["moved_by_a_step"] > 0)
    log(f"checkpoint: {ck['bytes'] / 2**20:.1f} MiB, save {ck['save_seconds']:.2f} s, "
        f"load {ck['load_seconds']:.2f} s, round trip exact: {same}, HF files: {hf_same}")  # fmt: skip
    return saved


def check_resume(
    res: Result, worker: Any, fresh: Any, path: Path, saved: dict[str, Any], examples: list[Any]
) -> None:
    """A fresh learner loads the checkpoint: same weights, and its next step matches the original's."""
    ck = res.data["checkpoint"]
    fresh.load_checkpoint(path)
    fresh_same, _ = states_equal(saved, fresh.policy_state_dict(dtype=None))
    m1 = worker.sft_step(examples)
    m3 = fresh.sft_step(examples)
    after1, after3 = worker.policy_state_dict(dtype=None), fresh.policy_state_dict(dtype=None)
    step_size = global_norm_diff(saved, after1)
    resume_diff = global_norm_diff(after1, after3)
    ck["fresh_learner_same_weights"] = fresh_same
    ck["resume"] = {"loss_w1": m1["loss"], "loss_fresh": m3["loss"], "step_norm": step_size,
                    "diff_norm": resume_diff}  # fmt: skip
    # optimizer state restored: the two steps agree far better than a fresh Adam would
    res.data["checks"]["resume"] = bool(
        fresh_same
        and abs(m1["loss"] - m3["loss"]) <= 1e-3 * max(1.0, abs(m1["loss"]))
        and resume_diff <= 0.1 * step_size
    )
    log(
        f"resume: fresh learner same weights {fresh_same}, next-step diff {resume_diff:.3g} (step {step_size:.3g})"
    )


def check_ppo(args: argparse.Namespace, res: Result, port: int, micro: int, rows: list[Any], tok: Any,
              pad_id: int, params: float, clock: Clock) -> None:  # fmt: skip
    """PPO on a learner with a value head (turn-level, GAE, value loss)."""
    from services.learner.batch import build_rl_batch
    from services.learner.config import RLConfig

    worker = None
    try:
        ppo = RLConfig(algorithm="ppo", epochs=1)
        worker = make_worker(args, args.model, port, rl=ppo, value_head=True, micro_batch_size=micro)
        batch = build_rl_batch(trajectories(rows, 4, seed=4), tok, ppo, pad_id=pad_id)
        record, m, s = timed_rl_step(worker, batch, ppo, params, clock)
        res.data["rl"]["ppo"] = record
        res.data["checks"]["rl_ppo"] = bool(
            all(math.isfinite(float(v)) for v in m.values()) and "value_loss" in m and m["grad_norm"] > 0
        )
        log(f"ppo: {s:.3f} s, value loss {m.get('value_loss')}")
    except Exception as exc:  # noqa: BLE001
        res.data["checks"]["rl_ppo"] = False
        res.fail("check.rl_ppo", exc)
    finally:
        close(worker)
    res.save()


def phase_check(args: argparse.Namespace, res: Result, port: int, work: Path) -> None:
    """SFT, GRPO, the checkpoint round trip, resume and PPO on the check model (gp-base by default)."""
    from services.learner.config import RLConfig

    d, clock, model = res.data, Clock(args.device), args.model
    tok, pad_id = tokenizer_and_pad(model)
    n_rows = 4 if args.dry else 16
    micro = max(2, n_rows // 2)
    examples = sft_examples(text_rows(tok, n_rows, seed=1))
    grpo = RLConfig(algorithm="grpo", epochs=2)
    d["check_model"] = {"path": model, **model_shape(model)}
    w1 = w3 = None
    try:
        t0 = time.perf_counter()
        w1 = make_worker(args, model, port, rl=grpo, micro_batch_size=micro)
        d["check_model"]["init_seconds"] = round(time.perf_counter() - t0, 2)
        params = w1.flops_per_token() / 6
        d["check_model"]["parameters"] = int(params)
        check_sft(res, w1, examples, 3 if args.dry else 8, clock)
        res.save()
        rl_rows = text_rows(tok, 8 if args.dry else 16, seed=2)
        d["rl"] = {}
        check_grpo(res, w1, rl_rows, tok, pad_id, grpo, params, clock)
        res.save()
        d["checkpoint"] = {}
        path = work / "ckpt-check"
        try:
            saved = check_roundtrip(res, w1, path, examples, clock)
            w3 = make_worker(args, model, port, rl=grpo, micro_batch_size=micro)
            check_resume(res, w1, w3, path, saved, examples)
        except Exception as exc:  # noqa: BLE001
            d["checks"].setdefault("checkpoint_roundtrip", False)
            d["checks"]["resume"] = False
            res.fail("check.checkpoint", exc)
        finally:
            close(w3)
            shutil.rmtree(path, ignore_errors=True)
        res.save()
    finally:
        close(w1)
    check_ppo(args, res, port, micro, rl_rows, tok, pad_id, params, clock)


# -- the bench -----------------------------------------------------------------------------------------


def bench_sft(worker: Any, examples: list[Any], steps: int, warm: int, attention: float, peak: tuple[float, float],
              clock: Clock) -> dict[str, Any]:  # fmt: skip
    """SFT steps timed after ``warm`` warm-up steps; FLOP/s as 6N per token, and with ``attention``
    (FLOPs per token) added; ``peak``: (reference, measured matmul) FLOP/s."""
    ref, measured = peak
    tokens = sum(len(e) for e in examples)
    times = []
    for _ in range(steps):
        m, s = clock(worker.sft_step, examples)
        times.append(round(s, 4))
    mean = sum(times[warm:]) / len(times[warm:])
    f6 = worker.flops_per_token() * tokens / mean
    fa = (worker.flops_per_token() + attention) * tokens / mean
    log(f"bench sft: {mean:.3f} s/step, {tokens / mean:,.0f} tokens/s, {f6 / 1e12:.2f} TFLOP/s (6N) = "
        f"{f6 / ref:.1%} of peak, {fa / ref:.1%} with attention")  # fmt: skip
    return {
        "step_seconds": times, "timed_from": warm, "tokens_per_step": tokens, "tokens_per_s": tokens / mean,
        "flops_per_s": f6, "flops_per_s_with_attention": fa, "loss": m["loss"],
        "fraction_of_peak": f6 / ref, "fraction_of_peak_with_attention": fa / ref,
        "fraction_of_measured_matmul": f6 / measured,
    }  # fmt: skip


def bench_grpo(worker: Any, grpo: Any, rows: list[Any], updates: int, pad_id: int, params: float,
               peak: tuple[float, float], clock: Clock) -> dict[str, Any]:  # fmt: skip
    """GRPO updates in groups of 4, 2 epochs (a scoring pass and 2 steps), timed after the first."""
    from services.learner.batch import build_rl_batch

    ref, measured = peak
    times, flops = [], []
    for i in range(updates):
        batch = build_rl_batch(trajectories(rows, 4, seed=7 + i), None, grpo, pad_id=pad_id)
        trained = float(batch.attention_mask.sum())
        m, s = clock(worker.rl_step, batch)
        times.append(round(s, 4))
        flops.append(rl_update_flops(grpo.epochs, m, params, trained))
    timed = times[1:] or times
    f_rl = flops[-1] / (sum(timed) / len(timed))
    log(
        f"bench grpo: {sum(timed) / len(timed):.3f} s/update, {f_rl / 1e12:.2f} TFLOP/s = {f_rl / ref:.1%} of peak"
    )
    return {
        "algorithm": "grpo", "epochs": grpo.epochs, "episodes": len(rows), "step_seconds": times,
        "timed_from": 1 if len(times) > 1 else 0, "flops_per_s": f_rl, "fraction_of_peak": f_rl / ref,
        "fraction_of_measured_matmul": f_rl / measured, "scoring_passes": m.get("scoring_passes"),
    }  # fmt: skip


def phase_bench(args: argparse.Namespace, res: Result, port: int, work: Path) -> None:
    """FLOP/s of SFT steps and GRPO updates on the bench model, against the peak."""
    from services.learner.config import RLConfig

    d, clock = res.data, Clock(args.device)
    path, what = bench_model(args.bench_model, args.dry, work)
    shape = model_shape(path)
    _, pad_id = tokenizer_and_pad(path)
    seq = 64 if args.dry else args.bench_seq
    rows_per_step = 4 if args.dry else args.bench_rows
    micro = 2 if args.dry else args.bench_micro
    peak = (d["peak"]["reference_tflops"] * 1e12, d["peak"]["measured_matmul_tflops"] * 1e12)
    bench: dict[str, Any] = {"model": what, "path": path if what == "given" else Path(path).name, **shape,
                             "seq_len": seq, "rows_per_step": rows_per_step, "micro_batch_size": micro}  # fmt: skip
    d["bench"] = bench
    worker = None
    try:
        grpo = RLConfig(algorithm="grpo", epochs=2)
        worker = make_worker(args, path, port, rl=grpo, micro_batch_size=micro, lr=1e-5)
        params = worker.flops_per_token() / 6
        bench["parameters"] = int(params)
        examples = sft_examples(random_rows(shape["vocab"], rows_per_step, seq // 4, seq - seq // 4, seed=5))
        steps, warm = (2, 1) if args.dry else (6, 2)
        bench["sft"] = bench_sft(
            worker, examples, steps, warm, attention_flops_per_token(shape, seq), peak, clock
        )
        res.save()
        # prompts of a quarter of the sequence, as in the SFT rows
        rl_rows = random_rows(
            shape["vocab"], 8 if args.dry else args.bench_episodes, seq // 4, seq - seq // 4, seed=6
        )
        bench["rl"] = bench_grpo(worker, grpo, rl_rows, 1 if args.dry else 3, pad_id, params, peak, clock)
        if args.device == "cuda":
            import torch

            bench["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        d["checks"]["bench"] = all(
            math.isfinite(x) and x > 0 for x in (bench["sft"]["flops_per_s"], bench["rl"]["flops_per_s"])
        )
    except Exception as exc:  # noqa: BLE001
        d["checks"]["bench"] = False
        res.fail("bench", exc)
    finally:
        close(worker)
        if what != "given" and Path(path).is_relative_to(work):
            shutil.rmtree(path, ignore_errors=True)
    res.save()
