"""``sftrl study --skip ARM``: an arm left out of one run, never one that a kept arm needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from deploy.studies.recipe import arms_left_out, load_study
from deploy.studies.report import write_report
from deploy.studies.runner import StudyRunner
from sftrl.config import ConfigError

RECIPE = """
title: two arms
base: {extends: gp_text}
arms:
  - {name: a, label: A}
  - {name: b, label: B}
questions:
  - {text: "Does A beat B?", a: a, b: b}
"""


def test_an_arm_that_a_kept_arm_needs_cannot_be_left_out() -> None:
    combinations = load_study("combinations")
    assert arms_left_out(combinations, ["sft-reasoning-more"]) == {"sft-reasoning-more"}
    assert arms_left_out(combinations, []) == frozenset()
    with pytest.raises(ConfigError, match="--skip sft: arm two-stage starts from or chooses among it"):
        arms_left_out(combinations, ["sft"])  # two-stage continues the SFT arm's checkpoint (@sft)
    with pytest.raises(ConfigError, match="arm best-merge starts from or chooses among it"):
        arms_left_out(combinations, ["merge-ties"])  # a pick's candidates
    with pytest.raises(ConfigError, match="no such arm in combinations; arms: init, sft"):
        arms_left_out(combinations, ["nope"])
    frontier = load_study("frontier")
    assert arms_left_out(frontier, ["grpo-1", "grpo-2", "grpo-3"]) == {"grpo-1", "grpo-2", "grpo-3"}
    with pytest.raises(ConfigError, match="arm rft-1 starts from"):
        arms_left_out(frontier, ["own-data"])  # the RFT arms' data
    everything_but_init = [a.name for a in frontier.arms if a.name != "init"]
    with pytest.raises(ConfigError, match="the frontier starts from"):
        arms_left_out(frontier, [*everything_but_init, "init"])


def test_a_left_out_arm_is_passed_by_and_its_question_not_answered(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SFTRL_MODELS_DIR", str(tmp_path / "models"))  # gp-base: a copy of the shipped one
    recipe = tmp_path / "two.yaml"
    recipe.write_text(RECIPE)
    study = load_study(str(recipe))
    runner = StudyRunner(study, tmp_path / "runs", skip=arms_left_out(study, ["b"]))
    arm = runner.seed_dir(0) / "a"  # done earlier: the runner takes its output from the marker
    arm.mkdir(parents=True)
    record = {
        "kind": "eval",
        "stage": "s",
        "global_step": 3,
        "flops": 1e9,
        "success/id": 0.5,
        "episodes/id": 16,
    }
    (arm / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (arm / "DONE").write_text(json.dumps({"output": str(arm / "checkpoints" / "step-000003")}))
    folder = runner.run()  # would train b, for minutes, were it not left out
    assert not (runner.seed_dir(0) / "b").exists()
    report = write_report([folder], tmp_path / "report").read_text()
    assert "Does A beat B? Not answered: arm b has no runs." in report


def test_the_command_refuses_a_bad_skip_in_a_line(tmp_path: Path) -> None:
    from deploy.cli import main

    result = CliRunner().invoke(
        main, ["study", "combinations", "--skip", "sft", "--output-dir", str(tmp_path)]
    )
    assert result.exit_code != 0 and not (tmp_path / "combinations-tiny").exists()
    said = " ".join(result.output.split())
    assert "--skip sft: arm two-stage starts from or chooses among it" in said and "Traceback" not in said
