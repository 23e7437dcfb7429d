"""Pick arms: per seed the best of earlier arms or merges by success on one suite; a training arm's
levels are taken as played, a merge is made again (mergekit, real weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deploy.studies.pick import Candidate, best, sweep_candidates
from deploy.studies.recipe import load_study
from deploy.studies.report import write_report
from deploy.studies.runner import StudyRunner
from sftrl.config import ConfigError, write_resolved_config

RECIPE = """
title: picks
base: {extends: gp_text}
levels: {model: "@a", items: 4, samples: 2}
arms:
  - {name: a, label: A}
  - {name: b, label: B}
  - {name: m, kind: merge_sweep, config: {method: linear, models: ["@a", "@b"], ratios: [0, 0.25, 0.5, 1]}}
  - {name: single, label: better single, kind: pick, config: {among: [a, b]}}
  - {name: merged, label: best merge, kind: pick, config: {among: [m]}}
questions:
  - {text: "Does the best merge beat the better single method on L5?", a: merged, b: single, metric: accuracy,
     suite: L5}
"""


def test_the_best_candidate_wins_and_the_first_of_equals() -> None:
    sweep = {"rows": [{"ratio": r, "success/id": v} for r, v in ((0.0, 0.9), (0.25, 0.4), (0.5, 0.6),
                                                                 (0.75, 0.6), (1.0, 0.95))]}  # fmt: skip
    found = sweep_candidates("m", sweep, "id", interior_only=True)
    assert [c.ratio for c in found] == [0.25, 0.5, 0.75]  # the end points are the models, not merges
    assert best(found) == Candidate("m", 0.5, 0.6)
    assert best(sweep_candidates("m", sweep, "id", interior_only=False)).ratio == 1.0
    with pytest.raises(ValueError, match="nothing to pick"):
        best([])


def test_a_pick_must_name_earlier_training_or_sweep_arms(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("among: [a, b]", "among: [a, merged]"))
    with pytest.raises(ConfigError, match="name earlier training or merge-sweep arms"):
        load_study(str(bad))
    bad.write_text(RECIPE.replace("metric: accuracy,\n     suite: L5", "metric: accuracy, suite: id"))
    with pytest.raises(ConfigError, match="suite must be L1..L5 or all"):
        load_study(str(bad))


def _trained(seed_dir: Path, name: str, model: Path, success: float, l5: float) -> Path:
    """A finished training arm: its final checkpoint (a copy of ``model``), final evaluation, levels."""
    ckpt = seed_dir / name / "checkpoints" / "step-000003"
    shutil.copytree(model, ckpt)
    record = {"kind": "eval", "stage": "s", "global_step": 3, "flops": 1e9, "success/id": success,
              "episodes/id": 16}  # fmt: skip
    (seed_dir / name / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    levels = {"accuracy": l5, "accuracy/L5": l5, "items/L5": 20}
    (seed_dir / name / "levels.json").write_text(json.dumps(levels))
    (seed_dir / name / "DONE").write_text(json.dumps({"output": str(ckpt)}))
    return ckpt


def test_picks_take_a_training_arms_levels_and_make_the_chosen_merge_again(tiny_model: Path, tmp_path: Path):
    recipe = tmp_path / "picks.yaml"
    recipe.write_text(RECIPE)
    study = load_study(str(recipe))
    runner = StudyRunner(study, tmp_path / "runs")
    seed_dir = runner.seed_dir(0)
    a = _trained(seed_dir, "a", tiny_model, success=0.5, l5=0.25)
    b_model = tmp_path / "b-model"
    shutil.copytree(tiny_model, b_model)
    weights = load_file(b_model / "model.safetensors")
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in weights.items()}, b_model / "model.safetensors",
              metadata={"format": "pt"})  # fmt: skip
    b = _trained(seed_dir, "b", b_model, success=0.75, l5=0.5)
    rows = [{"ratio": r, "success/id": v} for r, v in ((0.0, 0.5), (0.25, 0.8), (0.5, 0.7), (1.0, 0.75))]
    (seed_dir / "m").mkdir()
    sweep_config = {"method": "linear", "suites": {"id": {}}, "models": [str(a), str(b)]}
    (seed_dir / "m" / "sweep.json").write_text(json.dumps({"config": sweep_config, "rows": rows}))
    (seed_dir / "m" / "DONE").write_text(json.dumps({"output": str(seed_dir / "m" / "sweep.json")}))
    for arm in runner.study.arms[:3]:
        runner._run_arm(arm, seed_dir / arm.name)  # done earlier: outputs from their markers
    runner._run_arm(runner.study.arms[3], seed_dir / "single")
    picked = json.loads((seed_dir / "single" / "picked.json").read_text())
    assert (picked["arm"], picked["ratio"], picked["value"]) == ("b", None, 0.75)
    assert json.loads((seed_dir / "single" / "levels.json").read_text())["accuracy/L5"] == 0.5  # as played
    assert json.loads((seed_dir / "single" / "DONE").read_text())["output"] == str(b)
    runner.study = runner.study.model_copy(
        update={"levels": None}
    )  # the merge's levels would be played in vLLM: the e2e study covers that path
    runner._run_arm(runner.study.arms[4], seed_dir / "merged")
    picked = json.loads((seed_dir / "merged" / "picked.json").read_text())
    assert picked["picked"] == "m at ratio 0.25" and [c["value"] for c in picked["candidates"]] == [0.8, 0.7]
    made = load_file(seed_dir / "merged" / "model" / "model.safetensors")
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(made[key], 0.75 * wa[key] + 0.25 * wb[key])
    # the report says what each pick chose
    (seed_dir / "merged" / "levels.json").write_text(
        json.dumps({"accuracy": 0.4, "accuracy/L5": 0.4, "items/L5": 20})
    )
    write_resolved_config(study, runner.dir, "study.yaml")  # what a study's run writes first
    text = write_report([runner.dir], tmp_path / "report").read_text()
    assert (
        "- best merge picked, by success on its suite's evaluation: seed 0: m at ratio 0.25 (80.0% on id)."
        in text
    )
    assert (
        "Accuracy on L5, best merge minus better single (1 seed; bootstrap over seeds and episodes)" in text
    )
