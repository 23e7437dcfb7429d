"""sftrl rollout (vLLM, multi-turn, shared prefixes) against a plain transformers ``generate`` loop
playing the same multi-turn episodes, plus the in-place weight-update time.

    python -m bench.rollout [--models tiny smollm2-135m] [--batches 16 64 256] [--eager] [--quick]

Each side runs in its own process (vLLM changes torch's thread settings in the process that hosts
it). Both play the same GeneralPoints text episodes (same seeds, same prompts, same sampling
settings, same number of attempts); tokens/s and episodes/s are compared as ratios, since these
machines are shared and noisy. Each side runs at its own faster dtype on this machine, probed the
same way (16 one-attempt episodes of 32 tokens at bf16 and at fp32), so the ratio compares best with
best; the result records the probes. Where the CPU only emulates bf16, transformers runs float32
unprobed (its bf16 matmuls there would make the probe take hours), and the result says why.

The episodes are the paper's sequential revision: its prompt and up to 5 attempts (verify_iter = 5),
each attempt's feedback a new user turn; answers are capped at 64 tokens (the paper allows 512, which
this CPU-only machine cannot afford at batch 256 for transformers). vLLM's prefix cache is cleared
before every timed run, so only the reuse within an episode's turns (and of the instructions shared
by a batch) counts, never a previous run's prompts. A second, short case (2 attempts, the compact
prompt, batch 64) shows how the ratio shrinks when conversations have fewer turns to share. gp-base,
the few-million-parameter model of the studies, plays the studies' episodes (compact prompt, 5
attempts), where vLLM's per-step overhead dominates.
Targets: sftrl at least 6x transformers at batch 64 with SmolLM2-135M; at least 1.5x with gp-base.
Writes bench/results/<cpu kind>/rollout.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.machine import write_result
from sftrl.hardware import bf16_support, describe_precision, normalize_precision

ENV_ID = "sftrl/GeneralPoints-v0"
TARGET_RATIO = 6.0
BASE_TARGET_RATIO = 1.5
STYLE_OF = {"gp-base": "compact"}  # gp-base only ever saw the compact prompt
PROBE = {"batch": 16, "turns": 1, "max_tokens": 32}
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


PAPER_ATTEMPTS = 5  # verify_iter of paper 1's GeneralPoints runs
SHORT_CASE = {"turns": 2, "style": "compact", "batch": 64}
WARMUP_SEED = 90_000  # warm-up episodes share no task (and so no cached prompt) with the timed ones


def check_models(names: list[str]) -> None:
    """Exit at once, with the command that prepares it, when a model is not usable."""
    from services.rollout.context import model_context
    from sftrl.config import ConfigError

    for name in names:
        try:
            model_context(name)
        except ConfigError as exc:
            sys.exit(f"bench.rollout: {exc}")


def _specs(batch: int, turns: int, style: str, seed: int = 1000) -> list[Any]:
    from services.rollout.group import episode_specs

    return episode_specs(ENV_ID, {"prompt_style": style, "verify_iter": turns}, batch, seed=seed)


# -- sftrl side -------------------------------------------------------------------------------------


def run_sftrl(
    model: str,
    batches: list[int],
    max_tokens: int,
    turns: int,
    style: str,
    eager: bool = False,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from services.rollout.config import RolloutConfig
    from services.rollout.context import model_context
    from services.rollout.worker import RolloutWorker
    from sftrl.models import resolve_model

    kv = 8 if max(batches) > 64 else 3  # SmolLM2 at batch 256 x 5 attempts holds ~5 GB of KV cache
    config = RolloutConfig.model_validate({
        "engine": {"model": model, "dtype": dtype, "max_model_len": min(4096, model_context(model).tokens),
                   "kv_cache_gib": kv, "enforce_eager": eager},
        "sampling": {"temperature": 1.0, "max_tokens": max_tokens, "seed": 0},
    })  # fmt: skip
    t0 = time.perf_counter()
    worker = RolloutWorker(config)
    startup = time.perf_counter() - t0
    worker.play(_specs(4, turns, style, seed=WARMUP_SEED))
    rows = []
    for batch in batches:
        specs = _specs(batch, turns, style)
        worker.engine.clear_caches()  # the previous run played the first of these episodes
        t0 = time.perf_counter()
        trajs = worker.play(specs)
        dt = time.perf_counter() - t0
        tokens = sum(t.num_generated_tokens for t in trajs)
        rows.append({
            "batch": batch, "seconds": round(dt, 2), "generated_tokens": tokens,
            "tokens_per_s": round(tokens / dt, 1), "episodes_per_s": round(batch / dt, 3),
            "turns": sum(len(t.turns) for t in trajs), "success_rate": sum(t.success for t in trajs) / batch,
        })  # fmt: skip
        print(f"  sftrl {model} batch {batch}: {tokens / dt:,.0f} tok/s", file=sys.stderr, flush=True)
    weights_file = os.path.join(resolve_model(model), "model.safetensors")
    state = load_file(weights_file)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        worker.update_weights({k: v.to(getattr(torch, dtype)) for k, v in state.items()})
        times.append(time.perf_counter() - t0)
    worker.shutdown()
    return {
        "dtype": dtype, "engine_startup_s": round(startup, 2), "enforce_eager": eager, "runs": rows,
        "weight_update": {"bytes": nbytes, "seconds_median": round(sorted(times)[1], 4),
                          "seconds": [round(t, 4) for t in times],
                          "gb_per_s": round(nbytes / sorted(times)[1] / 1e9, 3)},
    }  # fmt: skip


def probe_reason(probe: dict[str, float]) -> str:
    """Why a side runs at its dtype, from its probe's tokens/s by dtype (both sides say it alike)."""
    return "the faster in a probe here: " + ", ".join(f"{v:.1f} tokens/s in {k}" for k, v in probe.items())


# -- transformers side ------------------------------------------------------------------------------


def _hf_play(model: Any, tok: Any, specs: list[Any], max_tokens: int) -> tuple[int, int]:
    """Plain multi-turn loop: every turn re-encodes each live conversation and calls generate."""
    import gymnasium as gym
    import torch

    import services.envs  # noqa: F401

    envs, convs = {}, {}
    for s in specs:
        env = gym.make(s.env_id, **s.env_options)
        obs, _ = env.reset(seed=s.seed)
        envs[s.episode_id] = env
        convs[s.episode_id] = [{"role": "user", "content": obs["text"]}]
    live, tokens, turns = [s.episode_id for s in specs], 0, 0
    while live:
        texts = [tok.apply_chat_template(convs[e], tokenize=False, add_generation_prompt=True) for e in live]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
        new = out[:, batch["input_ids"].shape[1] :]
        still = []
        for e, row in zip(live, new, strict=True):
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id) + 1]
            tokens += len(ids)
            turns += 1
            answer = tok.decode(ids, skip_special_tokens=True)
            obs, _, term, trunc, _ = envs[e].step(answer)
            convs[e].append({"role": "assistant", "content": answer})
            if not (term or trunc):
                convs[e].append({"role": "user", "content": obs["text"]})
                still.append(e)
        live = still
    return tokens, turns


def run_hf(model_name: str, batches: list[int], max_tokens: int, turns: int, style: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftrl.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    probe = {}
    # Pick transformers' faster dtype on this machine. Where bf16 is only emulated, PyTorch's bf16
    # matmuls run ~0.3 GFLOP/s (AVX2-only EPYC), so a probe of SmolLM2's prompts would take hours.
    native, emulated = bf16_support("cpu")
    for dtype in (torch.bfloat16, torch.float32) if native else (torch.float32,):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        _hf_play(model, tok, _specs(2, 1, style, seed=WARMUP_SEED), 8)
        t0 = time.perf_counter()
        n, _ = _hf_play(
            model, tok, _specs(PROBE["batch"], PROBE["turns"], style, seed=WARMUP_SEED), PROBE["max_tokens"]
        )
        probe[str(dtype).removeprefix("torch.")] = n / (time.perf_counter() - t0)
    best = max(probe, key=probe.get)
    reason = probe_reason(probe) if native else emulated
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, best)).eval()
    rows = []
    for batch in batches:
        t0 = time.perf_counter()
        tokens, n_turns = _hf_play(model, tok, _specs(batch, turns, style), max_tokens)
        dt = time.perf_counter() - t0
        rows.append({"batch": batch, "seconds": round(dt, 2), "generated_tokens": tokens,
                     "tokens_per_s": round(tokens / dt, 1), "episodes_per_s": round(batch / dt, 3), "turns": n_turns})  # fmt: skip
        print(
            f"  transformers {model_name} batch {batch}: {tokens / dt:,.0f} tok/s",
            file=sys.stderr,
            flush=True,
        )
    return {"dtype": best, "dtype_probe_tokens_per_s": {k: round(v, 1) for k, v in probe.items()},
            "dtype_reason": reason, "threads": torch.get_num_threads(), "runs": rows}  # fmt: skip


# -- driver ----------------------------------------------------------------------------------------------


def _child(
    side: str, args: argparse.Namespace, model: str, batches: list[int], turns: int, style: str,
    max_tokens: int | None = None, dtype: str = "bfloat16",
) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, "-m", "bench.rollout", "--child", side, "--models", model,
           "--batches", *map(str, batches), "--max-tokens", str(max_tokens or args.max_tokens),
           "--turns", str(turns), "--style", style, "--dtype", dtype, *(["--eager"] if args.eager else [])]  # fmt: skip
    env = dict(os.environ)
    if args.preload:
        env["LD_PRELOAD"] = args.preload  # the same allocator for both sides
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    sys.stderr.write("".join(line + "\n" for line in proc.stderr.splitlines() if line.startswith("  ")))
    if proc.returncode != 0:
        raise RuntimeError(f"{side} benchmark failed for {model}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(
    args: argparse.Namespace, model: str, batches: list[int], turns: int, style: str
) -> dict[str, Any]:
    """Both sides on the same episodes, each at its faster dtype; ratios per batch size."""
    probe = {}
    for dtype in ("bfloat16", "float32"):  # as transformers' side probes itself, in its own process
        run = _child(
            "sftrl", args, model, [PROBE["batch"]], PROBE["turns"], style, PROBE["max_tokens"], dtype
        )
        probe[dtype] = run["runs"][0]["tokens_per_s"]
    best = max(probe, key=probe.get)
    reason = probe_reason(probe)
    print(f"{model}: {describe_precision(best, reason)}", file=sys.stderr, flush=True)
    sftrl = _child("sftrl", args, model, batches, turns, style, dtype=best) | {
        "dtype_probe_tokens_per_s": probe,
        "dtype_reason": reason,
    }
    hf = _child("hf", args, model, batches, turns, style)
    print(
        f"{model}: transformers {describe_precision(hf['dtype'], hf['dtype_reason'])}",
        file=sys.stderr,
        flush=True,
    )
    ratios = {}
    for ours, theirs in zip(sftrl["runs"], hf["runs"], strict=True):
        ratios[str(ours["batch"])] = {
            "tokens_per_s": round(ours["tokens_per_s"] / theirs["tokens_per_s"], 2),
            "episodes_per_s": round(ours["episodes_per_s"] / theirs["episodes_per_s"], 2),
        }
    print(f"{model} ({turns} attempts, {style} prompt): sftrl / transformers tokens/s by batch: "
          + ", ".join(f"{b}: {r['tokens_per_s']}x" for b, r in ratios.items()))  # fmt: skip
    return {"attempts_per_episode": turns, "prompt_style": style, "sftrl": sftrl, "transformers": hf,
            "ratio_sftrl_over_transformers": ratios}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["gp-base", "smollm2-135m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--turns", type=int, default=PAPER_ATTEMPTS, help="attempts per episode (verify_iter; paper: 5)"
    )
    parser.add_argument("--style", default="default", choices=["default", "compact"])
    parser.add_argument("--no-short-case", action="store_true", help="skip the 2-attempt SmolLM2 case")
    parser.add_argument(
        "--quick", action="store_true", help="tiny model, batches 4 and 8, 16 tokens, 2 attempts"
    )
    parser.add_argument(
        "--eager",
        action="store_true",
        help="vLLM without torch.compile (rollout.engine.enforce_eager, the default for quick starts); "
        "the benchmark compiles by default: about 1.4x the tokens/s on CPU after a one-off compile",
    )
    parser.add_argument(
        "--preload",
        default=TCMALLOC if os.path.exists(TCMALLOC) else "",
        help="LD_PRELOAD for both sides (default: tcmalloc when installed, as vLLM-CPU advises)",
    )
    parser.add_argument("--child", choices=["sftrl", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.max_tokens, args.turns = ["gp-base"], [4, 8], 16, 2
    if args.child:
        common = (args.models[0], args.batches, args.max_tokens, args.turns, args.style)
        args.dtype = normalize_precision(args.dtype)
        result = (
            run_sftrl(*common, eager=args.eager, dtype=args.dtype)
            if args.child == "sftrl"
            else run_hf(*common)
        )
        print(json.dumps(result))
        return
    check_models(args.models)  # before minutes of work: every model must be prepared
    results = {
        m: _compare(args, m, args.batches, args.turns, STYLE_OF.get(m, args.style)) for m in args.models
    }
    short = None
    if "smollm2-135m" in args.models and not (args.quick or args.no_short_case):
        c = SHORT_CASE
        short = _compare(args, "smollm2-135m", [c["batch"]], c["turns"], c["style"])
    target = results.get("smollm2-135m", {}).get("ratio_sftrl_over_transformers", {}).get("64")
    base = results.get("gp-base", {}).get("ratio_sftrl_over_transformers", {})
    base_worst = min((r["tokens_per_s"] for r in base.values()), default=None)
    payload = {
        "benchmark": "rollout", "env": ENV_ID, "max_tokens": args.max_tokens, "attempts_per_episode": args.turns,
        "prompt_style": args.style, "sampling": {"temperature": 1.0, "top_p": 1.0}, "ld_preload": args.preload,
        "sftrl_enforce_eager": args.eager, "prefix_cache_cleared_before_each_run": True,
        "target": {"case": f"smollm2-135m batch 64, {args.turns}-attempt episodes, tokens/s ratio",
                   "ratio": TARGET_RATIO, "measured": target and target["tokens_per_s"],
                   "met": bool(target and target["tokens_per_s"] >= TARGET_RATIO)},
        "target_gp_base": {"case": f"gp-base, compact prompt, {args.turns}-attempt episodes, every batch, tokens/s ratio",
                           "ratio": BASE_TARGET_RATIO, "measured_worst": base_worst,
                           "met": bool(base_worst and base_worst >= BASE_TARGET_RATIO)},
        "results": results,
        "short_episodes_smollm2": short,
    }  # fmt: skip
    if not args.quick:
        print(f"wrote {write_result('rollout', payload)}")
    else:
        print(json.dumps(payload["results"], indent=1)[:2000])


if __name__ == "__main__":
    main()
