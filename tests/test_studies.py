"""Study recipes and reports: every recipe loads at every size, the report draws what runs wrote, and the
cheapest tiny recipe runs end to end on the real stack (the others: `make studies`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.report import write_report
from deploy.study import list_recipes, load_study
from sftrl.config import ConfigError

RECIPES = [r["name"] for r in list_recipes()]
CHEAPEST = "gp-l-rule-ood"


def test_the_papers_experiments_all_have_a_recipe():
    assert set(RECIPES) == {
        "gp-l-rule-ood", "virl-l-rule-ood", "gp-vl-visual-ood", "virl-vl-visual-ood", "gp-vl-recognition",
        "rl-without-sft", "verify-iterations", "combinations", "prompt-diverse-sft", "forgetting-recovery",
    }  # fmt: skip


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_and_validates_at_every_size(recipe, size):
    study = load_study(recipe, size)  # builds every arm's typed config
    assert study.size == size and study.arms and study.title
    models = {a.config.get("model", study.base.get("model")) for a in study.arms if a.kind == "train"}
    if size == "paper":
        assert all(m.startswith(("meta-llama/", "@")) for m in models)
        assert (
            study.base["learner"]["device"] == "cuda" and study.base["rollout"]["engine"]["device"] == "cuda"
        )
    else:
        assert study.base["rollout"]["engine"]["device"] == "cpu"


def test_recipes_state_what_each_arm_does():
    combos = load_study("combinations")
    kinds = {a.name: a.kind for a in combos.arms}
    assert kinds["mix-data"] == "data_mix" and kinds["merge"] == "merge_sweep" and combos.levels is not None
    stages = {a.name: a.config.get("stages", [{}])[0] for a in combos.arms if a.kind == "train"}
    assert stages["interleaved"]["mix"]["strategy"] == "interleaved"
    assert stages["progressive"]["mix"]["strategy"] == "progressive"
    assert stages["data-mixing"]["data"]["path"] == "@mix-data"
    assert combos.arms[[a.name for a in combos.arms].index("two-stage")].config["model"] == "@sft"
    vi = load_study("verify-iterations")
    assert [a.config["stages"][0]["env"]["options"]["verify_iter"] for a in vi.arms[1:]] == [1, 3, 5, 10]
    diverse = load_study("prompt-diverse-sft").arms[1].config["stages"][0]["data"]
    assert diverse["env_options"] == {"prompt_style": "diverse"}


def test_bad_recipes_and_sizes_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown study"):
        load_study("no-such-study")
    with pytest.raises(ConfigError, match="unknown size"):
        load_study(CHEAPEST, "huge")  # type: ignore[arg-type]
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\nbase: {extends: gp_text}\narms: [{name: a, config: {stages: [{use: nope}]}}]\n")
    with pytest.raises(ConfigError, match="unknown stage 'nope'"):
        load_study(str(bad))
    bad.write_text(
        "title: x\nbase: {extends: gp_text}\narms: [{name: a, config: {learner: {zero_stage: 7}}}]\n"
    )
    with pytest.raises(ConfigError, match="zero_stage"):
        load_study(str(bad))
    bad.write_text("title: x\nbase: {extends: gp_text, eval: {episodes: $nothing}}\narms: [{name: a}]\n")
    with pytest.raises(ConfigError, match="does not define"):
        load_study(str(bad))


def _fake_run(
    folder: Path,
    points: list[tuple[float, float, float]],
    levels: dict | None = None,
    extra: dict | None = None,
) -> None:
    """A run folder as the trainer writes it: eval records (flops, success/id, success/ood_rule, ``extra``)."""
    folder.mkdir(parents=True)
    with (folder / "metrics.jsonl").open("w") as fh:
        for step, (flops, ident, ood) in enumerate(points):
            record = {"kind": "eval", "stage": "s", "stage_step": step, "global_step": step, "flops": flops,
                      "success/id": ident, "success/ood_rule": ood, "reward/id": ident * 5, **(extra or {})}  # fmt: skip
            fh.write(json.dumps(record) + "\n")
    if levels:
        (folder / "levels.json").write_text(json.dumps(levels))


def test_report_draws_curves_tables_and_levels(tmp_path):
    _fake_run(
        tmp_path / "sft",
        [(0, 0.1, 0.1), (2e9, 0.6, 0.05)],
        {"accuracy": 0.5, "accuracy/L1": 1.0, "items/L1": 2, "accuracy/L5": 0.0, "items/L5": 2},
    )
    _fake_run(tmp_path / "rl", [(0, 0.1, 0.1), (1e9, 0.4, 0.3)], extra={"recognition_accuracy/id": 0.75})
    report = write_report([tmp_path / "sft", tmp_path / "rl"], tmp_path / "out", title="t")
    text = report.read_text()
    assert "| run | id | ood_rule | reward (id) | recognition (id) | GFLOPs |" in text
    assert (
        "| sft | 60.0% | 5.0% | 3.00 | - | 2 |" in text
        and "| rl | 40.0% | 30.0% | 2.00 | 75.0% | 1 |" in text
    )
    assert "| sft | 100.0% (2) | - (0) | - (0) | - (0) | 0.0% (2) | 50.0% |" in text
    for png in ("success_vs_compute.png", "levels.png", "recognition.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000 and f"]({png})" in text
    raw = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [r["label"] for r in raw] == ["sft", "rl"] and raw[1]["final"]["success/ood_rule"] == 0.3
    with pytest.raises(ValueError, match="holds no run"):
        write_report([tmp_path / "out"], tmp_path / "again")


def test_report_of_a_study_names_merge_figures_by_arm_and_counts_mixed_data(tmp_path):
    study = tmp_path / "combo-tiny"
    arms = [{"name": "merge", "kind": "merge_sweep", "label": "merging (linear)"},
            {"name": "mix", "kind": "data_mix", "label": "data mixing (data)"}]  # fmt: skip
    (study / "merge").mkdir(parents=True)
    (study / "mix").mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "combo", "title": "t", "arms": arms}))
    rows = [{"ratio": 0.0, "success/id": 0.25}, {"ratio": 1.0, "success/id": 0.75}]
    (study / "merge" / "sweep.json").write_text(
        json.dumps({"config": {"method": "linear", "suites": {"id": {}}}, "rows": rows})
    )
    counts = {"path": "m.jsonl", "tasks": 10, "from_rl": 3, "from_sft": 2, "skipped": 5}
    (study / "mix" / "counts.json").write_text(json.dumps(counts))
    text = write_report([study], tmp_path / "out").read_text()
    assert text.startswith("# t (?)\n")  # the study's own title
    # a label with spaces and brackets would break the Markdown image link: the file takes the arm's name
    assert "](merge-merge.png)" in text and (tmp_path / "out" / "merge-merge.png").stat().st_size > 1000
    assert "| 0.00 | 25.0% |" in text and "| 1.00 | 75.0% |" in text
    assert "3 episodes from the RL model, 2 from the SFT model, 5 of 10 tasks failed by both" in text


@pytest.mark.slow
def test_cheapest_tiny_recipe_runs_end_to_end_with_its_report(tiny_model, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from sftrl.cli import main

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(Path(tiny_model).parent))
    result = CliRunner().invoke(main, ["study", CHEAPEST, "--size", "tiny", "--output-dir", str(tmp_path),
                                       "base.registry.enabled=false"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    folder = tmp_path / f"{CHEAPEST}-tiny"
    for arm in ("init", "sft", "rl"):
        assert (folder / arm / "DONE").exists() and (folder / arm / "resolved_config.yaml").exists()
    done = {arm: json.loads((folder / arm / "DONE").read_text())["output"] for arm in ("init", "sft", "rl")}
    assert Path(done["init"]).is_dir()
    import yaml

    for arm in ("sft", "rl"):  # both sides start from the init arm's checkpoint
        assert yaml.safe_load((folder / arm / "resolved_config.yaml").read_text())["model"] == done["init"]
    text = (folder / "report" / "report.md").read_text()
    for label in ("SFT init", "SFT", "RL (PPO)", "id", "ood_rule", "success_vs_compute.png"):
        assert label in text
    # a second run finds every arm done and only rewrites the report
    again = CliRunner().invoke(main, ["study", CHEAPEST, "--size", "tiny", "--output-dir", str(tmp_path),
                                      "base.registry.enabled=false"], catch_exceptions=False)  # fmt: skip
    assert again.exit_code == 0 and again.output.count("done earlier") == 3
