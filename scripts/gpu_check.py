#!/usr/bin/env python3
"""A GPU check of the learner alone: world size 1, bf16, no Ray, no vLLM.

    python scripts/gpu_check.py --prepare-carry        # on a CPU machine with the project's venv:
                                                       # .cache/gpu-check/site (DeepSpeed & co.)
    python3 scripts/gpu_check.py [--out PATH]          # on the GPU machine (or scripts/gpu_check.sh)
    python scripts/gpu_check.py --device cpu --dry     # the same code paths at tiny sizes, on a CPU

Phases, each recorded in the JSON result (written after every phase, so a run cut short still
leaves what it had):

1. environment: GPU name, memory, torch / CUDA / DeepSpeed / transformers versions;
2. peak: the GPU's dense bf16 peak from a small table by name, and a measured large bf16 matmul;
3. check (the shipped ``gp-base``, 3.3M parameters, or ``--model``): ``sft_step`` on one fixed batch
   (the loss must fall), a GRPO ``rl_step`` (2 epochs: a scoring pass and 2 optimizer steps), a PPO
   ``rl_step`` on a learner with a value head, ``save_checkpoint`` then ``load_checkpoint`` after a
   further step (the policy weights and the checkpoint's HF files must equal the saved ones
   exactly), a fresh learner loading the checkpoint (same weights; its next step must match the
   original learner's: optimizer state restored);
4. bench: FLOP/s of SFT steps and of a GRPO update at realistic sizes on SmolLM2-135M when it is
   prepared (``sftrl models prepare smollm2-135m``), else on a randomly initialised model of
   SmolLM2-135M's shape (134.5M parameters, vocabulary 49152: the FLOPs are the same); compute is
   counted as the project counts it (6 x parameters per trained token, 2 x per scored token) and
   also with the attention term (12 x layers x width x sequence length per trained token).

Only the learner's public API is used (``LearnerWorker(...)``, ``sft_step``, ``rl_step``,
``save_checkpoint``, ``load_checkpoint``, ``flops_per_token``, ``policy_state_dict``, ``shutdown``),
with the project's data types (``SFTExample``, ``build_rl_batch``, ``Trajectory``).

The GPU image has no DeepSpeed (nor, perhaps, pydantic, hjson, einops); ``--prepare-carry`` copies
them (pure Python, plus pydantic-core built for the GPU's Python, fetched with ``pip download``) from
this venv into ``.cache/gpu-check/site`` (git-ignored, about 22 MiB: carry it with the working tree). At start-up
that folder is appended to ``sys.path``: what the image has itself wins. Adam is torch's (DeepSpeed's
FusedAdam would be compiled on first use, which needs nvcc); ``--adam fused`` tries it.

The parts, beside this entry (arguments, the environment and peak phases, the run's order):
``gpu_carry.py`` (the carried folder), ``gpu_workload.py`` (peak table, matmul, model shapes and
FLOPs, the rows trained on), ``gpu_phases.py`` (the check's steps and the bench), ``gpu_common.py``
(the result, the log, the clock).

Exit status 0 when every check passed, 1 otherwise (the JSON says which), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The GPU machine reaches nothing: never wait on the hub. Quieter logs.
for _key, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                     ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("PYTHONUNBUFFERED", "1")):  # fmt: skip
    os.environ.setdefault(_key, _value)
# scripts/ is no package: its sibling modules import by name, when run as a script or loaded from a test.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from gpu_carry import CARRY_DIR, prepare_carry, use_carried_site  # noqa: E402
from gpu_common import REPO, SHIPPED_MODEL, Result, log  # noqa: E402
from gpu_phases import phase_bench, phase_check  # noqa: E402
from gpu_workload import measure_matmul, table_peak  # noqa: E402

SCHEMA = 1
# Every one must pass for "ok" ("bench" too unless --bench-model none).
CHECKS = ["environment", "sft", "rl_grpo", "rl_ppo", "checkpoint_roundtrip", "resume"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- phases ----------------------------------------------------------------------------------------


def phase_environment(args: argparse.Namespace, res: Result) -> None:
    import torch

    d = res.data
    d["torch_version"] = torch.__version__
    d["cuda_version"] = torch.version.cuda
    d["python"] = platform.python_version()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available to torch")
        props = torch.cuda.get_device_properties(0)
        d["gpu_name"] = torch.cuda.get_device_name(0)
        d["gpu"] = {
            "name": d["gpu_name"], "count": torch.cuda.device_count(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }  # fmt: skip
    else:
        d["gpu_name"] = None
        d["gpu"] = None
        d["cpu"] = platform.processor() or platform.machine()
    import transformers

    d["transformers_version"] = transformers.__version__
    import deepspeed  # here to report where it came from (the image, or the carried folder)

    d["deepspeed_version"] = getattr(deepspeed, "__version__", "?")
    d["deepspeed_from"] = str(Path(deepspeed.__file__).parent)
    log(f"{d['gpu_name'] or 'cpu'}: torch {d['torch_version']} (CUDA {d['cuda_version']}), "
        f"transformers {d['transformers_version']}, deepspeed {d['deepspeed_version']} from {d['deepspeed_from']}")  # fmt: skip


def phase_peak(args: argparse.Namespace, res: Result) -> None:
    d = res.data
    dtype = args.precision
    key, tflops = table_peak(d.get("gpu_name") or "") if args.device == "cuda" else (None, None)
    sizes = [1024] if args.dry else ([8192, 16384] if args.device == "cuda" else [2048])
    runs = [measure_matmul(args.device, n, dtype, seconds=0.2 if args.dry else 1.5) for n in sizes]
    best = max(runs, key=lambda r: r["tflops"])
    d["peak"] = {
        "dtype": dtype, "table_entry": key, "table_tflops": tflops,
        "measured_matmul_tflops": best["tflops"], "matmul": runs,
        "reference_tflops": tflops or best["tflops"],
        "reference": "table" if tflops else "measured matmul",
    }  # fmt: skip
    log(f"peak {dtype}: table {tflops} TFLOP/s ({key}), measured matmul {best['tflops']} TFLOP/s")


# -- orchestration -----------------------------------------------------------------------------------


def run_environment(args: argparse.Namespace, res: Result) -> bool:
    """The environment phase; False (recorded) when it failed: nothing else can run then."""
    try:
        phase_environment(args, res)
        res.data["checks"]["environment"] = True
    except Exception as exc:  # noqa: BLE001
        res.data["checks"]["environment"] = False
        res.fail("environment", exc)
        res.save()
        return False
    res.save()
    return True


def run_peak(args: argparse.Namespace, res: Result) -> None:
    try:
        phase_peak(args, res)
    except Exception as exc:  # noqa: BLE001
        res.fail("peak", exc)
        res.data["peak"] = {"reference_tflops": float("nan"), "measured_matmul_tflops": float("nan")}
    res.save()


def run_bench(args: argparse.Namespace, res: Result, port: int, work: Path) -> None:
    """The bench, unless the checks left less than a third of --time-limit."""
    if res.elapsed() > args.time_limit * 2 / 3:
        res.data["checks"]["bench"] = False
        res.data["bench"] = {"skipped": f"{res.elapsed():.0f} s spent of --time-limit {args.time_limit:.0f}"}
        log("bench skipped: out of time")
        return
    try:
        phase_bench(args, res, port, work)
    except Exception as exc:  # noqa: BLE001 - e.g. making the bench model
        res.data["checks"]["bench"] = False
        res.fail("bench", exc)


def headline(res: Result, expected: list[str]) -> bool:
    """Copy the bench's FLOP/s and all step times to the top of the result; whether every expected
    check passed."""
    d = res.data
    b = d.get("bench", {})
    d["flops_per_s"] = {k: b[k]["flops_per_s"] for k in ("sft", "rl") if k in b}
    d["fraction_of_peak"] = {k: b[k]["fraction_of_peak"] for k in ("sft", "rl") if k in b}
    d["step_seconds"] = {
        "check_sft": d.get("sft", {}).get("step_seconds"),
        "check_grpo": d.get("rl", {}).get("grpo", {}).get("seconds"),
        "check_ppo": d.get("rl", {}).get("ppo", {}).get("seconds"),
        "bench_sft": b.get("sft", {}).get("step_seconds"), "bench_grpo": b.get("rl", {}).get("step_seconds"),
    }  # fmt: skip
    d["ok"] = all(d["checks"].get(k) is True for k in expected)
    return d["ok"]


def summary(d: dict[str, Any]) -> dict[str, Any]:
    """The result's headline fields."""
    peak = d.get("peak", {})

    def r(x: Any) -> Any:
        return float(f"{x:.4g}") if isinstance(x, float) and math.isfinite(x) else x

    return {
        "ok": d.get("ok"), "gpu_name": d.get("gpu_name"), "torch": d.get("torch_version"),
        "deepspeed": d.get("deepspeed_version"), "transformers": d.get("transformers_version"),
        "checks": d.get("checks"), "peak_table_tflops": peak.get("table_tflops"),
        "peak_measured_tflops": peak.get("measured_matmul_tflops"),
        "flops_per_s": {k: r(v) for k, v in d.get("flops_per_s", {}).items()},
        "fraction_of_peak": {k: r(v) for k, v in d.get("fraction_of_peak", {}).items()},
        "errors": [e["phase"] + ": " + e["error"][:300] for e in d.get("errors", [])],
        "seconds_total": d.get("seconds_total"),
    }  # fmt: skip


def result_path(given: str | None) -> Path:
    """--out, else $OUT/gpu_check.json (the device tool's folder), else .cache/gpu-check/gpu_check.json."""
    if given:
        return Path(given)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return REPO / ".cache" / "gpu-check" / "gpu_check.json"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--dry", action="store_true", help="tiny sizes (a smoke test, e.g. on a CPU)")
    p.add_argument("--out", default=None, help="JSON result (default: $OUT/gpu_check.json, else "
                   ".cache/gpu-check/gpu_check.json)")  # fmt: skip
    p.add_argument(
        "--model", default=str(SHIPPED_MODEL), help="check model folder (default: shipped gp-base)"
    )
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bfloat16 where the device computes it (a GPU from Ampere on), else float32")  # fmt: skip
    p.add_argument("--adam", choices=("torch", "fused"), default="torch",
                   help="torch's AdamW, or DeepSpeed's FusedAdam (compiled on first use: needs nvcc)")  # fmt: skip
    p.add_argument("--bench-model", default="auto",
                   help="auto (SmolLM2-135M if prepared, else its shape at random), smollm2-shape, "
                   "tiny-shape, none, or a model folder")  # fmt: skip
    p.add_argument("--bench-seq", type=int, default=1024, help="tokens per bench row")
    p.add_argument("--bench-rows", type=int, default=64, help="rows per bench SFT step")
    p.add_argument("--bench-micro", type=int, default=16, help="rows per micro-batch in the bench")
    p.add_argument("--bench-episodes", type=int, default=64, help="episodes per bench GRPO update")
    p.add_argument("--time-limit", type=float, default=480.0,
                   help="seconds: the bench is skipped when the checks leave less than a third of it")  # fmt: skip
    p.add_argument(
        "--work-dir", default=None, help="checkpoints and the bench model (default: a temp folder)"
    )
    p.add_argument("--prepare-carry", action="store_true",
                   help=f"copy the packages the GPU image lacks into {CARRY_DIR.relative_to(REPO)} and exit")  # fmt: skip
    p.add_argument("--carry-python", default="3.12", help="the GPU image's Python, for --prepare-carry")
    args = p.parse_args(argv)
    return args


def new_result(args: argparse.Namespace, argv: list[str] | None, carried: str) -> Result:
    res = Result(result_path(args.out), {
        "schema": SCHEMA, "ok": False, "device": args.device, "dry": args.dry, "precision": args.precision,
        "adam": args.adam, "carried_site": carried, "gpu_name": None, "torch_version": None,
        "checks": {}, "errors": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:] if argv is None else argv,
    })  # fmt: skip
    if args.dry:
        res.data["note"] = (
            "dry run: tiny sizes, the code paths only; its timings and fractions measure nothing"
        )
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.prepare_carry:
        return prepare_carry(args.carry_python)
    carried = use_carried_site()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from sftrl.hardware import resolve_precision  # the project's one choice of precision

    args.precision, reason = resolve_precision(args.precision, args.device)
    res = new_result(args, argv, carried)
    res.data["precision_reason"] = reason
    res.save()
    log(f"writing {res.path} (carried packages: {carried})")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor"))
    try:
        if not run_environment(args, res):
            print(json.dumps(summary(res.data), default=str))
            return 1
        run_peak(args, res)
        port = free_port()
        try:
            phase_check(args, res, port, work)
        except Exception as exc:  # noqa: BLE001
            res.fail("check", exc)
        res.save()
        expected = list(CHECKS)
        if args.bench_model != "none":
            expected.append("bench")
            run_bench(args, res, port, work)
        ok = headline(res, expected)
        res.save()
        failed = [k for k in expected if res.data["checks"].get(k) is not True]
        log(f"{'OK' if ok else 'FAILED: ' + ', '.join(failed)} in {res.elapsed():.1f} s -> {res.path}")
        print(json.dumps(summary(res.data), default=str))  # stdout: one line, for a log's tail
        return 0 if ok else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
