"""Evaluations a study takes from an earlier arm instead of playing them again: which ones qualify (the
same weights, evaluated the same way) and that a merge sweep writes a known end point without playing
it. That such a reuse gives the same numbers as playing again was measured on real runs: a combinations
study's linear merges at ratio 0 and 1 matched the SFT and RL arms' final evaluations in all 20
success, adherence and per-field figures, for each of 3 seeds."""

from __future__ import annotations

import json
from pathlib import Path

from deploy.studies.merge_sweep import MergeSweepConfig, run_sweep
from deploy.studies.recipe import load_study
from deploy.studies.reuse import final_evaluation
from deploy.studies.runner import StudyRunner

SUITES = ["id", "ood_rule", "fake_rule"]


def _eval_record(step: int, success: float) -> dict:
    record = {"kind": "eval", "stage": "s", "stage_step": step, "global_step": step, "flops": 1e9 * step}
    for suite in SUITES:
        record |= {f"success/{suite}": success, f"episodes/{suite}": 256, f"field/{suite}/numbers": 1.0,
                   f"pass@4/{suite}": 0.9}  # fmt: skip
    return record | {"success/other": 0.1, "eval_s": 45.0}


def _arm(folder: Path, steps: list[int], success: float) -> str:
    folder.mkdir(parents=True)
    lines = [json.dumps({"kind": "stage_start", "stage": "s", "global_step": 0})]
    lines += [json.dumps(_eval_record(step, success)) for step in steps]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "checkpoints" / f"step-{steps[-1]:06d}")


def test_the_final_evaluation_of_the_final_checkpoint_and_its_suites_only(tmp_path):
    checkpoint = _arm(tmp_path / "sft", [40, 80, 120], 0.5)
    found = final_evaluation(tmp_path / "sft", checkpoint, SUITES)
    assert found == {f"{k}/{s}" + t: v for s in SUITES
                     for k, t, v in (("success", "", 0.5), ("episodes", "", 256), ("field", "/numbers", 1.0))}  # fmt: skip
    assert final_evaluation(tmp_path / "sft", checkpoint, ["id"]) == {
        "success/id": 0.5, "episodes/id": 256, "field/id/numbers": 1.0}  # fmt: skip
    # the last evaluation is of another step than the checkpoint, or a suite is missing: nothing to take
    assert final_evaluation(tmp_path / "sft", checkpoint.replace("000120", "000100"), SUITES) is None
    assert final_evaluation(tmp_path / "sft", checkpoint, ["id", "ood_visual"]) is None
    assert final_evaluation(tmp_path / "none", checkpoint, SUITES) is None


def _runner(tmp_path: Path, overrides: list[str] | None = None) -> StudyRunner:
    runner = StudyRunner(load_study("combinations", "tiny", overrides or []), tmp_path)
    seed_dir = runner.seed_dir(0)
    runner.outputs = {
        "init": str(tmp_path / "init"),
        "sft": _arm(seed_dir / "sft", [40, 80, 120], 0.5),
        "rl": _arm(seed_dir / "rl", [3, 6, 9], 0.4),
    }
    return runner


def _sweep(runner: StudyRunner):
    from deploy.studies.recipe import arm_config

    arm = next(a for a in runner.study.arms if a.kind == "merge_sweep")
    return arm, arm_config(runner.study, arm, runner._resolve)


def test_a_sweep_takes_its_end_points_from_the_arms_that_made_them(tmp_path):
    runner = _runner(tmp_path)
    arm, config = _sweep(runner)
    assert list(config.suites) == ["id"]  # one of the suites the arms evaluated, defined as theirs
    known = runner._sweep_end_points(arm, config)
    assert sorted(known) == [0.0, 1.0]
    assert known[0.0]["success/id"] == 0.5 and known[0.0]["evaluated_by"] == "sft"
    assert known[1.0]["success/id"] == 0.4 and known[1.0]["evaluated_by"] == "rl"
    assert "success/ood_rule" not in known[1.0]  # only the sweep's own suites
    merge = next(i for i, a in enumerate(runner.study.arms) if a.kind == "merge_sweep")
    slerp = _runner(tmp_path / "slerp", [f"arms.{merge}.config.method=slerp"])
    assert sorted(slerp._sweep_end_points(*_sweep(slerp))) == [0.0, 1.0]  # bitwise its models too
    # evaluated otherwise than its arms (fewer episodes, greedy vs sampled, another precision, a suite
    # defined otherwise), TIES below density 1 (its end points are trimmed task vectors) or without
    # the end ratios: every ratio is played
    at = f"arms.{merge}.config"
    for overrides in ([f"{at}.episodes=8"], [f"{at}.sampling.temperature=1.0"], [f"{at}.engine.dtype=bfloat16"],
                      [f"{at}.suites.id.verify_iter=1"], [f"{at}.method=ties", f"{at}.base=@init"],
                      [f"{at}.ratios=[0.5]"]):  # fmt: skip
        runner = _runner(tmp_path / "_".join(overrides).replace("/", "_"), overrides)
        assert runner._sweep_end_points(*_sweep(runner)) == {}, overrides


def test_a_sweep_writes_known_rows_without_merging_or_playing_them(tmp_path):
    # neither model exists: merging or starting an engine would fail, so the rows can only be the known ones
    config = MergeSweepConfig(models=[str(tmp_path / "a"), str(tmp_path / "b")], ratios=[1.0, 0.0],
                              suites={"id": {}})  # fmt: skip
    known = {0.0: {"success/id": 0.5, "episodes/id": 256, "evaluated_by": "sft"},
             1.0: {"success/id": 0.25, "episodes/id": 256, "evaluated_by": "rl"}}  # fmt: skip
    seen = []
    result = run_sweep(config, tmp_path / "sweep", on_row=seen.append, known=known)
    assert result["rows"] == seen == [{"ratio": 0.0, **known[0.0]}, {"ratio": 1.0, **known[1.0]}]
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"] == result["rows"]
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
