"""One RL (GRPO) training step of sftrl against TRL's GRPOTrainer: same model, task, batch,
generation length, learning rate and number of policy epochs.

    python -m bench.train_step [--model smollm2-135m] [--prompts 8] [--group 4] [--max-tokens 96]
                               [--precision auto|float32|bfloat16] [--quick]

sftrl: Ray with one vLLM rollout actor and one DeepSpeed learner (world size 1); a step is
:class:`deploy.train.rl_step.RLStep` (play -> batch -> ``LearnerGroup.rl_step`` -> weight push), the same
object the training loop runs, and its compute is counted by the same ``FlopsCounter``. TRL: ``GRPOTrainer`` with generation through
transformers (``use_vllm=False``; TRL's vLLM path needs CUDA). Both play GeneralPoints text
(single attempt, compact prompt) from the same task seeds and score with ``verify_general_points``.
Each side runs 3 steps in its own process (vLLM changes torch's thread settings in its process);
step 1 is warm-up, steps 2 and 3 are timed. The measure is samples (prompt x generation) per second
of whole step time; targets: sftrl at least 3x TRL, and sftrl's learner at least 35% of the matmul
peak of the dtype it runs at. The driver measures the machine's matmul peak (fp32 and bf16) first;
with ``--precision auto`` (the default) both sides run at the dtype with the higher peak (sftrl's
rollout engine too), so the ratio compares best with best.
Writes bench/results/<cpu kind>/train_step.json (train_step_<precision>.json when a precision is
forced; not for --quick).
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
from sftrl.hardware import describe_precision, normalize_precision, resolve_precision

ENV_ID = "sftrl/GeneralPoints-v0"
TARGET_RATIO = 3.0
PEAK_FRACTION_TARGET = 0.35
SEED = 5000  # GeneralPoints task seeds of step s: SEED + s * prompts .. + prompts - 1
STEPS = 3
TIMED = (2, 3)  # 1-based steps that are timed (step 1 is warm-up)
SHORT_NAME = {"float32": "fp32", "bfloat16": "bf16"}  # result files keep their names


def check_model(name: str) -> None:
    """Exit at once, with the command that prepares it, when ``name`` is not a usable model: the
    benchmark would otherwise fail minutes in, inside a Ray actor."""
    from services.rollout.context import model_context
    from sftrl.config import ConfigError

    try:
        model_context(name)
    except ConfigError as exc:
        sys.exit(f"bench.train_step: {exc}")


def _env_options(style: str) -> dict[str, Any]:
    from services.envs import resolve_options

    return resolve_options(ENV_ID, {"prompt_style": style, "verify_iter": 1, "mode": "text"})


def _specs(step: int, prompts: int, group: int, style: str) -> list[Any]:
    from services.rollout.group import episode_specs

    specs = episode_specs(
        ENV_ID, _env_options(style), prompts, seed=SEED + step * prompts, samples_per_task=group
    )
    # group ids unique per step, as Trainer._rl_specs makes them
    return [
        type(s)(f"{step}-{s.episode_id}", s.env_id, s.env_options, s.seed, f"{step}-{s.group_id}")
        for s in specs
    ]


def _tasks(steps: int, prompts: int, style: str) -> list[dict[str, Any]]:
    """The same tasks as ``_specs`` (one row per task, step-major): observation text and hand."""
    import gymnasium as gym

    import services.envs  # noqa: F401

    rows = []
    env = gym.make(ENV_ID, **_env_options(style))
    for step in range(steps):
        for t in range(prompts):
            obs, _ = env.reset(seed=SEED + step * prompts + t)
            task = env.unwrapped.current_task()
            rows.append({"text": obs["text"], "cards": list(task.cards), "numbers": list(task.numbers),
                         "target": task.target})  # fmt: skip
    env.close()
    return rows


def _summary(steps: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    timed = [s for s in steps if s["step"] in TIMED]
    secs = sum(s["step_s"] for s in timed)
    out: dict[str, Any] = {
        "timed_steps": list(TIMED),
        "step_s_mean": round(secs / len(timed), 3),
        "samples_per_s": round(samples * len(timed) / secs, 4),
    }
    gen = [s.get("generated_tokens") for s in timed]
    if all(g is not None for g in gen):
        out["generated_tokens_per_s_of_step"] = round(sum(gen) / secs, 2)
    for phase in ("rollout_s", "learn_s", "push_s"):
        vals = [s[phase] for s in timed if s.get(phase) is not None]
        if vals:
            out[f"{phase}_mean"] = round(sum(vals) / len(vals), 3)
    roll = [
        (s["generated_tokens"], s["rollout_s"])
        for s in timed
        if s.get("rollout_s") and s.get("generated_tokens")
    ]
    if roll:
        out["generated_tokens_per_s_of_rollout"] = round(sum(a for a, _ in roll) / sum(b for _, b in roll), 2)
    return out


# -- sftrl side -------------------------------------------------------------------------------------


def run_sftrl(args: argparse.Namespace) -> dict[str, Any]:
    from deploy.evaluate.suites import suite_metrics
    from deploy.train.rl_step import RLStep
    from services.learner.config import LearnerConfig, OptimConfig, RLConfig
    from services.learner.group import LearnerGroup
    from services.rollout.config import RolloutConfig, SamplingConfig
    from services.rollout.group import RolloutGroup
    from sftrl.models import resolve_model
    from sftrl.ray_setup import init_ray

    cores = os.cpu_count() or 2
    init_ray(num_cpus=2 * cores)  # logical CPUs: each actor gets all cores (they never run at once)
    path = resolve_model(args.model)
    t0 = time.perf_counter()
    rollout_cfg = RolloutConfig.model_validate({
        "engine": {"model": path, "dtype": args.precision, "max_model_len": 2048, "kv_cache_gib": 1},
        "sampling": {"temperature": 1.0, "top_p": 1.0, "max_tokens": args.max_tokens, "seed": 0},
        "num_actors": 1, "cpus_per_actor": cores,
    })  # fmt: skip
    rollout = RolloutGroup(rollout_cfg, chunk_size=args.prompts * args.group)
    rl = RLConfig(algorithm="grpo", epochs=1, clip=0.2, kl_coef=0.0)
    learner_cfg = LearnerConfig(
        model=path, world_size=1, precision=args.precision, cpus_per_actor=cores,
        micro_batch_size=args.micro_batch, seed=0,
        optim=OptimConfig(lr=args.lr, scheduler="constant", total_steps=STEPS),
    )  # fmt: skip
    learner = LearnerGroup(learner_cfg, rl=rl)
    startup = time.perf_counter() - t0
    rl_step = RLStep(rollout, learner, rl, _tokenizer(path), 2048, args.precision)
    params = rl_step.flops.params
    sampling: SamplingConfig = rollout_cfg.sampling
    steps = []
    try:
        for step in range(STEPS):
            t0 = time.perf_counter()  # the training loop's RL step: play, batch, update, push
            trajs, out, rollout_s = rl_step(
                _specs(step, args.prompts, args.group, args.style), sampling, step + 1
            )
            step_s = time.perf_counter() - t0
            learn_s, push_s = out.learn_s, out.push_s
            stats = suite_metrics(trajs)
            steps.append({
                "step": step + 1, "step_s": round(step_s, 3), "rollout_s": round(rollout_s, 3),
                "learn_s": round(learn_s, 3), "push_s": round(push_s, 3),
                "generated_tokens": out.generated_tokens, "trained_tokens": out.trained_tokens,
                "batch_shape": list(out.batch_shape), "learner_flops": out.learner_flops,
                "learner_gflop_per_s": round(out.learner_flops / learn_s / 1e9, 2),
                "mean_reward": round(float(stats["reward"]), 4), "loss": out.metrics.get("loss"),
            })  # fmt: skip
            print(f"  sftrl step {step + 1}: {step_s:.1f} s (rollout {rollout_s:.1f}, learn {learn_s:.1f}, "
                  f"push {push_s:.2f})", file=sys.stderr, flush=True)  # fmt: skip
    finally:
        learner.shutdown()
        rollout.shutdown()
    timed = [s for s in steps if s["step"] in TIMED]
    summary = _summary(steps, args.prompts * args.group)
    summary["learner_gflop_per_s"] = round(
        sum(s["learner_flops"] for s in timed) / sum(s["learn_s"] for s in timed) / 1e9, 2
    )
    return {
        "engine": {"dtype": args.precision, "max_model_len": 2048, "chunked_prefill": "default (off on CPU)",
                   "kv_cache_gib": 1, "actors": 1},
        "learner": {"precision": args.precision, "world_size": 1, "zero_stage": 0,
                    "micro_batch_size": args.micro_batch, "cpus_per_actor": cores, "ray_num_cpus": 2 * cores,
                    "gradient_checkpointing": False},
        "rl": rl.model_dump(mode="json"), "params": params, "startup_s": round(startup, 2),
        "steps": steps, **summary,
    }  # fmt: skip


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# -- TRL side ---------------------------------------------------------------------------------------


def _trl_task(args: argparse.Namespace) -> tuple[Any, Any, list[int], list[float]]:
    """TRL's dataset of the benchmark's tasks, its reward function (the project's verifier), and the
    lists the reward function fills per step: generated tokens, mean reward."""
    from datasets import Dataset

    from services.verifier.general_points import GPTask, verify_general_points

    rows = _tasks(STEPS, args.prompts, args.style)
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["text"]}], "cards": r["cards"], "numbers": r["numbers"],
         "target": r["target"]}
        for r in rows
    ])  # fmt: skip
    gen_tokens: list[int] = []
    rewards: list[float] = []

    def gp_reward(prompts: list[Any], completions: list[Any], cards: list[Any], numbers: list[Any],
                  target: list[Any], completion_ids: list[list[int]] | None = None, **_: Any) -> list[float]:  # fmt: skip
        out = []
        for i, comp in enumerate(completions):
            text = comp[-1]["content"] if isinstance(comp, list) else str(comp)
            task = GPTask(tuple(cards[i]), tuple(int(n) for n in numbers[i]), int(target[i]))
            out.append(float(verify_general_points(task, text).reward))
        if completion_ids is not None:
            gen_tokens.append(sum(len(c) for c in completion_ids))
        rewards.append(sum(out) / max(len(out), 1))
        return out

    return data, gp_reward, gen_tokens, rewards


def _grpo_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """GRPOConfig's settings matching sftrl's side (batch, generation, learning rate, one epoch)."""
    return {
        "output_dir": os.path.join(os.environ.get("TMPDIR", "/tmp"), "sftrl-bench-trl"),
        "use_cpu": True, "per_device_train_batch_size": args.prompts * args.group,
        "gradient_accumulation_steps": 1, "num_generations": args.group,
        "max_completion_length": args.max_tokens, "learning_rate": args.lr, "lr_scheduler_type": "constant",
        "max_steps": STEPS, "logging_steps": 1, "report_to": [], "save_strategy": "no", "temperature": 1.0,
        "top_p": 1.0, "beta": 0.0, "num_iterations": 1, "epsilon": 0.2, "shuffle_dataset": False,
        "bf16": args.precision == "bfloat16", "gradient_checkpointing": False, "seed": 0,
        "dataloader_num_workers": 0, "disable_tqdm": True,
    }  # fmt: skip


def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    import dataclasses

    import torch
    import trl
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from sftrl.models import resolve_model

    torch.manual_seed(0)
    path = resolve_model(args.model)
    data, gp_reward, gen_tokens, rewards = _trl_task(args)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    kwargs = _grpo_kwargs(args)
    dropped = sorted(k for k in kwargs if k not in fields)
    config = GRPOConfig(**{k: v for k, v in kwargs.items() if k in fields})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: float = 0.0
            self.steps: list[dict[str, Any]] = []

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            dt = time.perf_counter() - self.begin
            self.steps.append({"step": state.global_step, "step_s": round(dt, 3)})
            print(f"  trl step {state.global_step}: {dt:.1f} s", file=sys.stderr, flush=True)

    timer = Timer()
    t0 = time.perf_counter()
    trainer = GRPOTrainer(
        model=model, reward_funcs=gp_reward, args=config, train_dataset=data, callbacks=[timer]
    )
    startup = time.perf_counter() - t0
    gen_times: list[float] = []
    original = trainer._generate_and_score_completions

    def timed_generate(*a: Any, **kw: Any) -> Any:  # generation + reward + advantages (TRL's rollout phase)
        t = time.perf_counter()
        out = original(*a, **kw)
        gen_times.append(time.perf_counter() - t)
        return out

    trainer._generate_and_score_completions = timed_generate
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    for i, s in enumerate(timer.steps):
        if i < len(gen_tokens):
            s["generated_tokens"] = gen_tokens[i]
            s["mean_reward"] = round(rewards[i], 4)
        if i < len(gen_times):
            s["rollout_s"] = round(gen_times[i], 3)
            s["learn_s"] = round(s["step_s"] - gen_times[i], 3)
        if i < len(logs):
            s["loss"] = logs[i].get("loss")
    return {
        "trl_version": trl.__version__, "precision": args.precision, "threads": torch.get_num_threads(),
        "generation": "transformers generate (use_vllm=False)",
        "config": {k: v for k, v in kwargs.items() if k in fields}, "config_fields_missing": dropped,
        "old_logprob_recompute": "none (TRL skips it when steps_per_generation == gradient_accumulation_steps "
                                 "and num_iterations == 1)",
        "startup_s": round(startup, 2), "steps": timer.steps, **_summary(timer.steps, args.prompts * args.group),
    }  # fmt: skip


# -- driver ----------------------------------------------------------------------------------------------


def matmul_peak(n: int = 2048, reps: int = 5) -> dict[str, float]:
    """Best-of GFLOP/s of an n x n matmul on all cores, fp32 and bf16."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t0)
        out[str(dtype).removeprefix("torch.")] = round(2 * n**3 / best / 1e9, 1)
    return out


def _child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.train_step", "--child", side, "--model", args.model,
           "--prompts", str(args.prompts), "--group", str(args.group), "--max-tokens", str(args.max_tokens),
           "--lr", str(args.lr), "--precision", args.precision, "--micro-batch", str(args.micro_batch),
           "--style", args.style]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    sys.stderr.write("".join(line + "\n" for line in proc.stderr.splitlines() if line.startswith("  ")))
    if proc.returncode != 0:
        raise RuntimeError(f"{side} benchmark failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=8, help="B: tasks per step")
    parser.add_argument("--group", type=int, default=4, help="G: samples per task (GRPO group)")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16", "fp32", "bf16"],
                        help="both sides; auto: the dtype with the higher measured matmul peak (fp32/bf16: "
                             "float32/bfloat16)")  # fmt: skip
    parser.add_argument("--micro-batch", type=int, default=8, help="sftrl learner micro-batch rows")
    parser.add_argument("--style", default="compact", choices=["default", "compact"])
    parser.add_argument("--sides", nargs="+", default=["sftrl", "trl"], choices=["sftrl", "trl"])
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 prompts x 2 samples, 16 tokens")
    parser.add_argument("--child", choices=["sftrl", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = normalize_precision(args.precision)
    if args.quick:
        args.model, args.prompts, args.group, args.max_tokens = "tiny", 4, 2, 16
    if args.child:
        fn = run_sftrl if args.child == "sftrl" else run_trl
        print(json.dumps(fn(args)))
        return
    check_model(args.model)  # before minutes of work: the model must be prepared
    peak = matmul_peak()
    print(f"matmul peak GFLOP/s: {peak}", file=sys.stderr)
    forced = args.precision != "auto"
    if not forced:
        args.precision = "bfloat16" if peak["bfloat16"] > peak["float32"] else "float32"
        reason = (f"auto: the faster matmul here, {peak['bfloat16']} GFLOP/s in bfloat16 against "
                  f"{peak['float32']} in float32")  # fmt: skip
    else:
        args.precision, reason = resolve_precision(args.precision, "cpu")
    print(f"{describe_precision(args.precision, reason)}, for both sides", file=sys.stderr)
    sides = {side: _child(side, args) for side in args.sides}
    ours, theirs = sides.get("sftrl"), sides.get("trl")
    ratio = round(ours["samples_per_s"] / theirs["samples_per_s"], 3) if ours and theirs else None
    peak_key = args.precision
    if ours:
        ours["learner_fraction_of_peak"] = round(ours["learner_gflop_per_s"] / peak[peak_key], 3)
    fraction = ours and ours["learner_fraction_of_peak"]
    payload = {
        "benchmark": "train_step", "env": ENV_ID, "model": args.model,
        "settings": {"prompts_per_step": args.prompts, "samples_per_prompt": args.group,
                     "samples_per_step": args.prompts * args.group, "max_new_tokens": args.max_tokens,
                     "temperature": 1.0, "top_p": 1.0, "lr": args.lr, "policy_epochs": 1, "kl_coef": 0.0,
                     "clip": 0.2, "prompt_style": args.style, "verify_iter": 1, "task_seed_start": SEED,
                     "steps": STEPS, "timed_steps": list(TIMED), "learner_precision": args.precision,
                     "precision_chosen_by": "forced" if forced else "the higher measured matmul peak",
                     "precision_reason": reason,
                     "dtype": {"sftrl_learner": args.precision, "sftrl_rollout": args.precision,
                               "trl": args.precision}},
        "matmul_peak_gflop_per_s": peak,
        "flops_formula": "deploy.train.rl_step.FlopsCounter.rl_update: (6 x params x trained tokens, + 2 x params x "
                         "trained tokens when the learner made a no-grad scoring pass) / learn seconds; "
                         "trained tokens = batch.attention_mask.sum()",
        "sftrl": ours, "trl": theirs,
        "target": {"metric": "samples/s, sftrl over TRL", "ratio": TARGET_RATIO, "measured": ratio,
                   "met": bool(ratio is not None and ratio >= TARGET_RATIO)},
        "target_learner_peak": {"metric": "sftrl learner GFLOP/s over the matmul peak of its dtype",
                                "fraction": PEAK_FRACTION_TARGET, "measured": fraction,
                                "met": bool(fraction and fraction >= PEAK_FRACTION_TARGET)},
    }  # fmt: skip
    print(f"\n{'':24}{'sftrl':>12}{'TRL':>12}")
    for key, label in (("step_s_mean", "step s"), ("samples_per_s", "samples/s"),
                       ("rollout_s_mean", "rollout s"), ("learn_s_mean", "learn s"), ("push_s_mean", "push s"),
                       ("generated_tokens_per_s_of_rollout", "gen tokens/s (rollout)")):  # fmt: skip
        row = [f"{(s or {}).get(key, '-')!s:>12}" for s in (ours, theirs)]
        print(f"{label:24}{''.join(row)}")
    if ours:
        print(f"sftrl learner {ours['learner_gflop_per_s']} GFLOP/s = {ours['learner_fraction_of_peak']:.1%} "
              f"of the {peak_key} matmul peak ({peak[peak_key]} GFLOP/s)")  # fmt: skip
    print(
        f"samples/s ratio sftrl/TRL: {ratio} (target {TARGET_RATIO}: {'met' if payload['target']['met'] else 'not met'})"
    )
    if not args.quick:
        name = f"train_step_{SHORT_NAME[args.precision]}" if forced else "train_step"  # the files' names stay
        print(f"wrote {write_result(name, payload)}")


if __name__ == "__main__":
    main()
