"""Evaluations a study arm may take from an earlier training arm instead of playing them again.

An evaluation is greedy or seeded, over fixed tasks, so the same weights evaluated the same way (env,
suites, episodes, task seed, sampling, engine precision) give the same numbers. Two cases use that:
an arm continuing another arm's final checkpoint starts where that arm's final evaluation ended, and
a merge sweep's end points (ratio 0 and 1) are its two models unchanged (linear, SLERP, TIES at density 1). And seeds never change
the evaluation, so an arm that starts from the same model in every seed (not another arm's output)
has its start evaluated once, by seed 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.train.metrics import read_metrics
from sftrl.checkpoint import step_of
from sftrl.config import EnvSpec

# the evaluation settings that decide its numbers (pass@k only adds metrics of its own)
_DECIDING = ("episodes", "seed", "sampling", "suites")


def evaluated_alike(
    theirs: Any, evaluation: Any, env: EnvSpec, dtype: str, some_suites: bool = False
) -> bool:
    """Whether training config ``theirs`` evaluates as ``evaluation`` does (an EvalConfig or a
    MergeSweepConfig: both hold episodes, seed, sampling and suites), in ``env`` on an engine of
    precision ``dtype``; with ``some_suites``, ``evaluation``'s suites need only be among theirs."""
    ours, their_suites = evaluation.suites, theirs.eval.suites
    suites = ours == their_suites or (some_suites and all(their_suites.get(n) == o for n, o in ours.items()))
    return (
        suites
        and all(getattr(theirs.eval, k) == getattr(evaluation, k) for k in _DECIDING if k != "suites")
        and theirs.env == env
        and theirs.rollout.engine.dtype == dtype
    )


def trained_alike(theirs: Any, own: Any) -> bool:
    """Whether two training configs evaluate a model the same way, pass@k included (a start one of
    them evaluated serves the other)."""
    return evaluated_alike(theirs, own.eval, own.env, own.rollout.engine.dtype) and all(
        getattr(theirs.eval, k) == getattr(own.eval, k) for k in ("pass_k", "pass_k_temperature")
    )


def start_played_in(first_arm_dir: Path, evaluation: Any) -> bool:
    """Whether the finished arm at ``first_arm_dir`` (the same arm in seed 0) evaluated its starting
    model, before any training, as ``evaluation`` (its EvalConfig) would: true only for greedy or
    seeded sampling, whose numbers a later seed would repeat."""
    sampling = evaluation.sampling
    if not evaluation.at_start or (sampling.temperature > 0 and sampling.seed is None):
        return False
    if not (first_arm_dir / "DONE").is_file():
        return False
    evals = [r for r in read_metrics(first_arm_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    return bool(evals) and evals[0].get("global_step") == 0 and not evals[0].get("flops")


def final_evaluation(arm_dir: Path, checkpoint: str, suites: list[str]) -> dict[str, float] | None:
    """The suites' metrics of a training arm's last evaluation, when it evaluated ``checkpoint`` (the
    arm's final one): ``{"success/id": ..., "field/id/numbers": ...}``; None when it did not."""
    evals = [r for r in read_metrics(arm_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    if not evals or evals[-1].get("global_step") != step_of(Path(checkpoint)):
        return None
    last = evals[-1]
    found = {
        key: value
        for key, value in last.items()
        if key.count("/") >= 1 and key.split("/")[1] in suites and not key.startswith("pass@")
    }
    return found if all(f"success/{s}" in found for s in suites) else None
