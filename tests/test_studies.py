"""Study recipes and reports: every recipe loads at every size, the report draws what runs wrote, and the
cheapest tiny recipe runs end to end on the real stack (the others: `make studies`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.studies.intervals import wilson
from deploy.studies.recipe import arm_config, list_recipes, load_study
from deploy.studies.report import write_report
from sftrl.config import ConfigError

RECIPES = [r["name"] for r in list_recipes()]
CHEAPEST = "gp-l-rule-ood"


def test_the_papers_experiments_all_have_a_recipe():
    assert set(RECIPES) == {
        "gp-l-rule-ood", "virl-l-rule-ood", "gp-vl-visual-ood", "virl-vl-visual-ood", "gp-vl-recognition",
        "rl-without-sft", "verify-iterations", "combinations", "prompt-diverse-sft", "forgetting-recovery",
        "frontier",
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
    # arms that start their own engines (data mixing, merge sweeps) take the study's engine settings:
    # a default max_model_len beyond the model's positions stops vLLM (pick arms: the study's own)
    engine = study.base["rollout"]["engine"]
    for arm in [a for a in study.arms if a.kind not in ("train", "pick")]:
        own = arm_config(study, arm, lambda value: value).engine
        assert (own.max_model_len, own.device) == (engine["max_model_len"], engine["device"]), arm.name


def test_recipes_state_what_each_arm_does():
    combos = load_study("combinations")
    kinds = {a.name: a.kind for a in combos.arms}
    assert kinds["mix-data"] == "data_mix" and combos.levels is not None and combos.levels.per_level == 64
    assert combos.levels.options == {"verify_iter": 2}  # tagged and played with 2 attempts
    assert [kinds[f"merge-{m}"] for m in ("linear", "slerp", "ties")] == ["merge_sweep"] * 3
    assert kinds["best-single"] == kinds["best-merge"] == "pick"
    reasoning = next(a for a in combos.arms if a.name == "sft-reasoning").config
    assert reasoning["model"] == "@init" and reasoning["env"]["options"]["reasoning"] == "long"
    # trained longer, and in nothing else
    more = next(a for a in combos.arms if a.name == "sft-reasoning-more").config
    assert {**more, "stages": None, "eval": None} == {**reasoning, "stages": None, "eval": None}
    assert more["eval"] == {**reasoning["eval"], "every": more["stages"][0]["steps"]}  # start and end only
    (stage,) = more["stages"]
    assert {**stage, "steps": 0} == {**reasoning["stages"][0], "steps": 0} and stage["steps"] > 50
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
    (folder / "DONE").write_text(json.dumps({"output": str(folder)}))
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
    assert "| run | seeds | id | ood_rule | reward (id) | recognition (id) | GFLOPs |" in text
    # runs that did not count their episodes: rates without intervals
    assert (
        "| sft | 1 | 60.0% | 5.0% | 3.00 | - | 2 |" in text
        and "| rl | 1 | 40.0% | 30.0% | 2.00 | 75.0% | 1 |" in text
    )
    assert (
        "| sft | 100.0% (34.2%–100.0%) n=2 | - n=0 | - n=0 | - n=0 | 0.0% (0.0%–65.8%) n=2 | 50.0% |" in text
    )
    for png in ("success_vs_compute.png", "levels.png", "recognition.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000 and f"]({png})" in text
    raw = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
    assert [r["label"] for r in raw] == ["sft", "rl"] and raw[1]["final"]["success/ood_rule"] == 0.3
    with pytest.raises(ValueError, match="holds no run"):
        write_report([tmp_path / "out"], tmp_path / "again")


def test_report_states_the_answers_each_suite_allows(tmp_path):
    # the suites' attempts come from each run's resolved config: the environment's, a suite's own over it
    for name in ("a", "b"):
        _fake_run(tmp_path / name, [(0, 0.1, 0.1), (1e9, 0.4, 0.3)])
        suites = {"id": {}, "ood_rule": {"verify_iter": 1 if name == "a" else 2, "face_cards": "as_10"}}
        config = {"env": {"options": {"verify_iter": 5}}, "eval": {"suites": suites}}
        (tmp_path / name / "resolved_config.yaml").write_text(json.dumps(config))
    text = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out").read_text()
    assert "Episode success per suite (answers an episode allows: id 5, ood_rule 1/2): the rate" in text
    raw = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
    assert [r["attempts"] for r in raw] == [{"id": 5, "ood_rule": 1}, {"id": 5, "ood_rule": 2}]


def _seeded_study(folder: Path, finals: dict[str, list[tuple[int, int]]], questions: list[dict]) -> None:
    """A study folder of 3 seeds as StudyRunner writes it; ``finals``: arm -> (ID, OOD successes) per
    seed, each out of 256 episodes."""
    arms = [{"name": name, "label": name.upper(), "kind": "train"} for name in finals]
    (folder).mkdir(parents=True)
    (folder / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "size": "tiny", "seeds": 3,
                                                   "arms": arms, "questions": questions}))  # fmt: skip
    for name, per_seed in finals.items():
        for seed, (ident, ood) in enumerate(per_seed):
            counts = {"episodes/id": 256, "episodes/ood_rule": 256, "answers/id": 256, "adherence/id": 1.0}
            _fake_run(
                folder / f"seed-{seed}" / name, [(0, 0.1, 0.1), (1e9, ident / 256, ood / 256)], extra=counts
            )


def test_a_study_of_seeds_pools_them_and_answers_its_questions(tmp_path):
    questions = [
        {
            "text": "Does RL carry to the new rule better than SFT?",
            "a": "rl",
            "b": "sft",
            "suite": "ood_rule",
        },
        {"text": "Does SFT fit the training rule better than RL?", "a": "sft", "b": "rl", "suite": "id"},
    ]
    # OOD: RL ahead in every seed by ~25 points; ID: the two arms alike
    _seeded_study(tmp_path / "s-tiny", {"sft": [(128, 20), (120, 30), (136, 25)],
                                        "rl": [(126, 90), (124, 85), (130, 88)]}, questions)  # fmt: skip
    text = write_report([tmp_path / "s-tiny"], tmp_path / "out").read_text()
    pooled_sft = wilson(128 + 120 + 136, 768)  # the rate over every seed's episodes
    expected = f"{pooled_sft.estimate:.1%} ({pooled_sft.low:.1%}–{pooled_sft.high:.1%})"
    assert f"| SFT | 3 | {expected} |" in text and "(256 episodes per suite and seed)" in text
    assert (
        "Does RL carry to the new rule better than SFT? Success on ood_rule, RL minus SFT (3 seeds; t over the "
        "seeds' differences): +" in text
    )
    lines = [line for line in text.splitlines() if line.startswith("- Does")]
    assert "the interval excludes zero (the difference is above zero)" in lines[0]
    assert "the interval does not exclude zero (no difference shown)" in lines[1]
    for png in ("success_vs_compute.png", "final_success.png", "differences.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000 and f"]({png})" in text
    # before any training every seed plays the same model on the same tasks: 256 episodes, not 768
    from deploy.studies.report import collect_runs
    from deploy.studies.stats import curve, group_arms

    first = curve(group_arms(collect_runs([tmp_path / "s-tiny"]))[0], "success", "id")[0][2]
    assert (first.low, first.high) == (wilson(round(0.1 * 256), 256).low, wilson(round(0.1 * 256), 256).high)
    answers = json.loads((tmp_path / "out" / "report.json").read_text())["answers"]
    assert (
        answers[0]["difference"]["low"] > 0
        and answers[1]["difference"]["low"] < 0 < answers[1]["difference"]["high"]
    )
    # a question naming an arm the study lacks is refused when the recipe loads
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "title: x\nbase: {extends: gp_text}\narms: [{name: a}]\nquestions: [{text: q, a: a, b: zz}]\n"
    )
    with pytest.raises(ConfigError, match="names arm 'zz'"):
        load_study(str(bad))


def test_report_of_a_study_names_merge_figures_by_arm_and_counts_mixed_data(tmp_path):
    study = tmp_path / "combo-tiny"
    arms = [{"name": "merge", "kind": "merge_sweep", "label": "merging (linear)"},
            {"name": "mix", "kind": "data_mix", "label": "data mixing (data)"}]  # fmt: skip
    (study / "merge").mkdir(parents=True)
    (study / "mix").mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "combo", "title": "t", "arms": arms}))
    rows = [{"ratio": 0.0, "success/id": 0.25}, {"ratio": 1.0, "success/id": 0.75, "evaluated_by": "rl"}]
    (study / "merge" / "sweep.json").write_text(
        json.dumps({"config": {"method": "linear", "suites": {"id": {}}}, "rows": rows})
    )
    counts = {"path": "m.jsonl", "tasks": 10, "from_rl": 3, "from_sft": 2, "skipped": 5}
    (study / "mix" / "counts.json").write_text(json.dumps(counts))
    for arm in ("merge", "mix"):
        (study / arm / "DONE").write_text("{}")
    text = write_report([study], tmp_path / "out").read_text()
    assert text.startswith("# t (?)\n")  # the study's own title
    # a label with spaces and brackets would break the Markdown image link: the file takes the arm's name
    assert "](merge-merge.png)" in text and (tmp_path / "out" / "merge-merge.png").stat().st_size > 1000
    assert "| 0.00 | 25.0% |" in text and "| 1.00 | 75.0% |" in text
    assert "Ratio 1.00 is arm rl's final evaluation (the same weights, evaluated the same way)." in text
    assert "3 episodes from the RL model, 2 from the SFT model, 5 of 10 tasks failed by both" in text
    # one model for both (rejection-sampling SFT data): its own successes, and the second round said
    (study / "mix" / "counts.json").write_text(json.dumps(counts | {"own": True}))
    text = write_report([study], tmp_path / "own").read_text()
    assert ("5 of the model's own successful episodes (3 in its first samples, 2 in a second round on the tasks "
            "it failed), 5 of 10 tasks without one.") in text  # fmt: skip
    # counts written before they said so: the recipe's one model for both rounds says it
    (study / "mix" / "counts.json").write_text(json.dumps(counts))
    arms[1]["config"] = {"rl_model": "@init", "sft_model": "@init"}
    (study / "study.yaml").write_text(json.dumps({"name": "combo", "title": "t", "arms": arms}))
    assert "5 of the model's own successful episodes" in write_report([study], tmp_path / "old").read_text()


# the cheapest recipe at a reduced size: a few steps per arm, 8 evaluation episodes per suite
REDUCED = ["base.registry.enabled=false", "base.tensorboard=false", "base.eval.episodes=8",
           "arms.0.config.stages.0.steps=3", "arms.0.config.stages.0.data.episodes=48",
           "arms.1.config.stages.0.steps=3", "arms.1.config.stages.0.data.episodes=48",
           "arms.2.config.stages.0.steps=2", "arms.2.config.stages.0.tasks_per_step=4"]  # fmt: skip


@pytest.mark.slow
def test_cheapest_tiny_recipe_runs_two_seeds_end_to_end_and_pools_them(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from deploy.cli import main
    from deploy.train.metrics import read_metrics

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(tmp_path / "models"))  # gp-base: prepared by the study itself
    args = [
        "study",
        CHEAPEST,
        "--size",
        "tiny",
        "--seeds",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        *REDUCED,
        # difficulty levels (combinations' recipe has them): 4 items tagged by each seed's init
        *["levels.model=@init", "levels.items=4", "levels.samples=2", "levels.max_tokens=64"],
        "levels.options.verify_iter=2",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / f"{CHEAPEST}-tiny"
    import yaml

    resolved = {}
    for seed in (0, 1):
        for arm in ("init", "sft", "rl"):
            arm_dir = folder / f"seed-{seed}" / arm
            assert (arm_dir / "DONE").exists()
            resolved[seed, arm] = yaml.safe_load((arm_dir / "resolved_config.yaml").read_text())
        init = json.loads((folder / f"seed-{seed}" / "init" / "DONE").read_text())["output"]
        for arm in ("sft", "rl"):  # both sides start from this seed's init
            assert resolved[seed, arm]["model"] == init
    # seeds move the training seeds (so the demonstrations), never the evaluation tasks
    assert [resolved[s, "rl"]["seed"] for s in (0, 1)] == [0, 1]
    assert (
        resolved[0, "rl"]["rollout"]["sampling"]["seed"] != resolved[1, "rl"]["rollout"]["sampling"]["seed"]
    )
    evals = [{k: v for k, v in resolved[s, "rl"]["eval"].items() if k != "kl_references"} for s in (0, 1)]
    assert evals[0] == evals[1]
    # KL to the base: against the start samples of the same seed's init (its start is the base)
    for seed in (0, 1):
        assert resolved[seed, "rl"]["eval"]["kl_references"] == {
            "base": str(folder / f"seed-{seed}" / "init")
        }
        assert (
            "kl_references" not in resolved[seed, "init"]["eval"]
            or not resolved[seed, "init"]["eval"]["kl_references"]
        )
    # arms that start from the init's final checkpoint reuse its final evaluation as their start
    assert resolved[0, "init"]["eval"]["at_start"] and not resolved[0, "rl"]["eval"]["at_start"]
    # and seed 1's init, from the same base evaluated the same way, takes seed 0's start evaluation
    assert not resolved[1, "init"]["eval"]["at_start"]
    assert json.loads((folder / "seed-1" / "init" / "DONE").read_text())["start_evaluation"] == "seed-0"
    report_runs = json.loads((folder / "report" / "report.json").read_text())["runs"]
    starts = [r["evals"][0] for r in report_runs if r["arm"] == "init"]
    assert len(starts) == 2 and starts[0] == starts[1] and starts[0]["global_step"] == 0
    rl_evals = [r for r in read_metrics(folder / "seed-0" / "rl" / "metrics.jsonl") if r["kind"] == "eval"]
    assert rl_evals[0]["global_step"] > 0
    # every training arm played the tagged items with its own engines after its last step
    from deploy.evaluate.levels import read_tagged

    for seed in (0, 1):
        tagged = read_tagged(folder / f"seed-{seed}" / "levels.jsonl")
        assert len(tagged) == 4 and all(t.samples == 2 and t.options["verify_iter"] == 2 for t in tagged)
        for arm in ("init", "sft", "rl"):
            levels = json.loads((folder / f"seed-{seed}" / arm / "levels.json").read_text())
            assert sum(v for k, v in levels.items() if k.startswith("items/")) == 4
            assert 0.0 <= levels["accuracy"] <= 1.0
    demos = [(folder / f"seed-{s}" / "init" / "data" / "sft.jsonl").read_text() for s in (0, 1)]
    assert demos[0] != demos[1]
    # the report pools both seeds: the rate over 2 x 8 episodes, with its Wilson interval
    finals = [[r for r in read_metrics(folder / f"seed-{s}" / "init" / "metrics.jsonl") if r["kind"] == "eval"][-1]
              for s in (0, 1)]  # fmt: skip
    assert all(f["episodes/id"] == 8 for f in finals)
    pooled = wilson(sum(round(f["success/id"] * 8) for f in finals), 16)
    text = (folder / "report" / "report.md").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| run | seeds |")).split(" | ")
    row = next(line for line in lines if line.startswith("| SFT init | 2 | ")).split(" | ")
    assert row[header.index("id")] == f"{pooled.estimate:.1%} ({pooled.low:.1%}–{pooled.high:.1%})"
    # every suite (in the report's order) allows the training environment's answers per episode
    attempts = resolved[0, "init"]["env"]["options"]["verify_iter"]
    allowed = ", ".join(f"{s} {attempts}" for s in sorted(resolved[0, "init"]["eval"]["suites"]))
    assert f"(8 episodes per suite and seed; answers an episode allows: {allowed})" in text
    assert "Seeds per arm: 2." in text
    assert all(json.loads((folder / f"seed-{s}" / a / "DONE").read_text())["seconds"] > 0
               for s in (0, 1) for a in ("init", "sft", "rl"))  # fmt: skip
    assert "## Run time" in text and "| SFT init |" in text.split("## Run time")[1]
    # one verdict per question; two seeds whose differences are equal (both 0 on 8 episodes) give none
    verdicts = ("the interval excludes zero", "the interval does not exclude zero", "gives no interval")
    assert sum(text.count(v) for v in verdicts) == 5
    # every evaluation logged its episodes; the report keeps the finals' beside it and pairs by task
    records = read_metrics(folder / "seed-1" / "sft" / "metrics.jsonl")
    kinds = [r["kind"] for r in records if r["kind"] in ("eval", "episodes")]
    assert kinds == ["eval", "episodes"] * (len(kinds) // 2) and kinds
    outcomes = json.loads((folder / "report" / "outcomes.json").read_text())["runs"]
    assert sorted((r["arm"], r["seed"]) for r in outcomes) == [
        (a, s) for a in ("init", "rl", "sft") for s in (0, 1)
    ]
    assert all(len(r["suites"]["id"]["task"]) == 8 and r["cpu_kind"] for r in outcomes)
    assert [r["suites"]["id"]["task"] for r in outcomes] == [outcomes[0]["suites"]["id"]["task"]] * 6
    assert text.count("(2 seeds; paired by seed and task)") == 4  # the success questions
    rl_final = [r for r in read_metrics(folder / "seed-0" / "rl" / "metrics.jsonl") if r["kind"] == "eval"][
        -1
    ]
    assert (
        rl_final["kl_tokens/start"] > 0 and rl_final["kl_tokens/base"] > 0
    )  # KL to the init and to the base
    assert "## KL from the start" in text and "| run | base | start |" in text
    assert text.count("(2 seeds; t over the seeds' differences)") == 1  # adherence: a share of answers
    for png in ("success_vs_compute.png", "final_success.png", "differences.png", "levels.png"):
        assert f"]({png})" in text
    # a second run finds every arm done and only rewrites the report
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output.count("done earlier") == 6


def test_an_arm_that_skipped_its_start_evaluation_starts_at_its_parents_final_one(tmp_path):
    study = tmp_path / "s-tiny"
    arms = [{"name": "init", "kind": "train"}, {"name": "rl", "kind": "train", "config": {"model": "@init"}}]
    study.mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "arms": arms}))
    _fake_run(study / "init", [(0, 0.1, 0.1), (2e9, 0.4, 0.2)])
    # the rl arm evaluated only after its steps (eval.at_start false): no global step 0
    folder = study / "rl"
    folder.mkdir()
    record = {"kind": "eval", "stage": "rl", "stage_step": 3, "global_step": 3, "flops": 1e9,
              "success/id": 0.5, "success/ood_rule": 0.3}  # fmt: skip
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "DONE").write_text("{}")
    write_report([study], tmp_path / "out")
    runs = {r["arm"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["runs"]}
    start, end = runs["rl"]["evals"]
    assert (start["success/id"], start["flops"], start["global_step"], start["stage"]) == (0.4, 2e9, 0, "rl")
    assert (end["success/id"], end["flops"]) == (0.5, 3e9) and runs["rl"]["final"] == end
    assert len(runs["init"]["evals"]) == 2  # an arm that evaluated its start keeps its own


def test_a_later_seed_starts_at_the_first_seeds_evaluation_of_the_same_model(tmp_path):
    study = tmp_path / "s-tiny"
    arms = [{"name": "init", "kind": "train"}]
    study.mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "seeds": 2, "arms": arms}))
    _fake_run(study / "seed-0" / "init", [(0, 0.1, 0.2), (2e9, 0.4, 0.3)])
    _fake_run(study / "seed-1" / "init", [(2e9, 0.5, 0.35)])
    record = json.loads((study / "seed-1" / "init" / "metrics.jsonl").read_text())
    record |= {"stage_step": 20, "global_step": 20}  # eval.at_start was false: no global step 0
    (study / "seed-1" / "init" / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    marker = study / "seed-1" / "init" / "DONE"
    write_report([study], tmp_path / "plain")
    runs = json.loads((tmp_path / "plain" / "report.json").read_text())["runs"]
    assert len(runs[1]["evals"]) == 1  # no marker: the run keeps its own evaluations only
    marker.write_text(json.dumps({"output": "x", "start_evaluation": "seed-0"}))
    write_report([study], tmp_path / "out")
    runs = json.loads((tmp_path / "out" / "report.json").read_text())["runs"]
    assert [(r["seed"], len(r["evals"])) for r in runs] == [(0, 2), (1, 2)]
    start, end = runs[1]["evals"]
    assert (start["success/id"], start["flops"], start["global_step"]) == (0.1, 0, 0)
    assert end["success/id"] == 0.5 and runs[1]["final"] == end


def test_an_arm_from_the_same_model_takes_the_start_evaluation_another_arm_played(tmp_path):
    from deploy.studies.runner import StudyRunner

    study = load_study("prompt-diverse-sft", "tiny")  # two arms from the base, two from their outputs
    runner = StudyRunner(study, tmp_path)
    fixed, diverse, rl_fixed = study.arms[:3]
    own = {arm.name: arm_config(study, arm, runner._resolve) for arm in (fixed, diverse)}
    assert runner._start_played_by(diverse, own["sft-diverse"]) is None  # nothing played yet
    _fake_run(runner.seed_dir(0) / "sft-fixed", [(0, 0.1, 0.2), (2e9, 0.4, 0.3)])
    assert runner._start_played_by(fixed, own["sft-fixed"]) is None  # no arm before it in seed 0
    assert runner._start_played_by(diverse, own["sft-diverse"]) == "sft-fixed"
    other_tasks = own["sft-diverse"].eval.model_copy(update={"episodes": 8})
    assert (
        runner._start_played_by(diverse, own["sft-diverse"].model_copy(update={"eval": other_tasks})) is None
    )
    assert runner._start_played_by(rl_fixed, own["sft-fixed"]) is None  # starts from another arm's output
    runner.seed = 1  # seed 0's sft-diverse skipped its start: seed 1 takes sft-fixed's
    _fake_run(runner.seed_dir(0) / "sft-diverse", [(2e9, 0.5, 0.3)])
    assert runner._start_played_by(fixed, own["sft-fixed"]) == "sft-fixed"
    assert runner._start_played_by(diverse, own["sft-diverse"]) == "sft-fixed"
    # and the report starts sft-diverse's curve at sft-fixed's start evaluation
    trained = {
        "kind": "eval",
        "stage": "s",
        "stage_step": 9,
        "global_step": 9,
        "flops": 2e9,
        "success/id": 0.5,
    }
    (runner.seed_dir(0) / "sft-diverse" / "metrics.jsonl").write_text(json.dumps(trained) + "\n")
    (runner.seed_dir(0) / "sft-diverse" / "DONE").write_text(
        json.dumps({"output": "x", "start_evaluation": "seed-0/sft-fixed"})
    )
    arms = [{"name": a.name, "kind": "train", "config": a.config} for a in study.arms[:2]]
    (runner.dir / "study.yaml").write_text(json.dumps({"name": "p", "title": "T", "seeds": 1, "arms": arms}))
    write_report([runner.dir], tmp_path / "out")
    runs = {r["arm"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["runs"]}
    start, end = runs["sft-diverse"]["evals"]
    assert (start["success/id"], start["global_step"], end["success/id"]) == (0.1, 0, 0.5)


def test_only_a_greedy_or_seeded_start_evaluation_of_seed_0_is_taken(tmp_path):
    from deploy.studies.reuse import start_played_in
    from deploy.train.config import EvalConfig

    first = tmp_path / "seed-0" / "init"
    greedy = EvalConfig(sampling={"temperature": 0.0})
    assert not start_played_in(first, greedy)  # seed 0 has not run
    _fake_run(first, [(0, 0.1, 0.2), (2e9, 0.4, 0.3)])
    assert start_played_in(first, greedy)
    assert start_played_in(first, EvalConfig(sampling={"temperature": 1.0, "seed": 3}))
    assert not start_played_in(first, EvalConfig(sampling={"temperature": 1.0}))  # unseeded: other samples
    assert not start_played_in(first, EvalConfig(at_start=False, sampling={"temperature": 0.0}))
    trained = tmp_path / "seed-0" / "rl"
    _fake_run(trained, [(1e9, 0.1, 0.2)])  # its first evaluation came after training
    assert not start_played_in(trained, greedy)


def test_report_gives_each_arms_wall_time_per_seed_and_the_study_total(tmp_path):
    study = tmp_path / "s-tiny"
    arms = [{"name": "init", "kind": "train", "label": "SFT init"},
            {"name": "rl", "kind": "train", "label": "RL", "config": {"model": "@init"}}]  # fmt: skip
    study.mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "seeds": 2, "arms": arms}))
    for seed, times in ((0, (60.0, 240.0)), (1, (90.0, 330.0))):
        for arm, seconds in zip(("init", "rl"), times, strict=True):
            _fake_run(study / f"seed-{seed}" / arm, [(0, 0.1, 0.1), (1e9, 0.4, 0.2)])
            (study / f"seed-{seed}" / arm / "DONE").write_text(
                json.dumps({"output": "x", "seconds": seconds})
            )
    text = write_report([study], tmp_path / "out").read_text()
    assert "| SFT init | 1.2 | 2 |" in text and "| RL | 4.8 | 2 |" in text
    assert "In all 12.0 minutes (seed 0: 5.0 min, seed 1: 7.0 min)." in text
    # a study that did not record the time of every arm (made before it did) gives none
    (study / "seed-1" / "rl" / "DONE").write_text(json.dumps({"output": "x"}))
    assert "## Run time" not in write_report([study], tmp_path / "out2").read_text()


def test_arms_that_continue_an_arm_evaluated_the_same_way_skip_their_start_evaluation(tmp_path):
    from deploy.studies.runner import StudyRunner

    runner = StudyRunner(load_study("combinations", "tiny"), tmp_path)
    runner.outputs = {a.name: str(tmp_path / a.name) for a in runner.study.arms}
    skips = {a.name: runner._evaluated_by_parent(a, arm_config(runner.study, a, runner._resolve))
             for a in runner.study.arms if a.kind == "train"}  # fmt: skip
    # SFT with reasoning asks its start for reasoning: not the init's evaluation, so it plays its own
    assert skips == {"init": False, "sft": True, "rl": True, "two-stage": True, "interleaved": True,
                     "progressive": True, "data-mixing": True, "sft-reasoning": False,
                     "sft-reasoning-more": False}  # fmt: skip
    # evaluated differently from its parent (fewer episodes, another precision): it evaluates its start
    for override in ("arms.1.config.eval.episodes=8", "arms.1.config.rollout.engine.dtype=bfloat16"):
        runner = StudyRunner(load_study("combinations", "tiny", [override]), tmp_path)
        runner.outputs = {a.name: str(tmp_path / a.name) for a in runner.study.arms}
        sft = runner.study.arms[1]
        assert not runner._evaluated_by_parent(sft, arm_config(runner.study, sft, runner._resolve)), override


def test_recipes_ship_as_package_data():
    """Recipes are found beside the code (deploy/configs), and the wheel's package data carries them,
    so an installed sftrl finds them without a checkout."""
    import tomllib

    from deploy.studies.recipe import STUDIES_DIR

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "deploy"
    ]
    package = root / "deploy"
    assert STUDIES_DIR.is_relative_to(package)
    shipped = {p for pattern in globs for p in package.glob(pattern)}
    assert {p for p in (package / "configs").rglob("*.yaml")} <= shipped
    assert (root / "configs" / "quickstart.yaml").is_file()  # the checkout's configs/ still works


def test_two_studies_in_one_report_keep_their_arms_apart(tmp_path):
    q = [{"text": "RL vs SFT?", "a": "rl", "b": "sft", "suite": "ood_rule"}]
    # each study's seeds differ, so t over them has a spread (equal differences give no interval)
    _seeded_study(tmp_path / "a-tiny", {"sft": [(128, 20)] * 3, "rl": [(128, 90), (128, 80), (128, 95)]}, q)
    _seeded_study(tmp_path / "b-tiny", {"sft": [(10, 10)] * 3, "rl": [(10, 12), (10, 8), (10, 11)]}, q)
    text = write_report([tmp_path / "a-tiny", tmp_path / "b-tiny"], tmp_path / "out").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| SFT | 3 | ")]
    assert len(rows) == 2 and "| SFT | 6 | " not in text  # 3 seeds each, never pooled into 6
    sentences = [line for line in text.splitlines() if line.startswith("- RL vs SFT?")]
    assert "excludes zero (the difference is above zero)" in sentences[0]
    assert "does not exclude zero" in sentences[1]  # study b: the two arms alike


def test_a_one_seed_answer_says_one_seed(tmp_path):
    study = tmp_path / "q-tiny"
    arms = [{"name": name, "kind": "train"} for name in ("sft", "rl")]
    q = [{"text": "RL vs SFT?", "a": "rl", "b": "sft", "suite": "ood_rule"}]
    study.mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "q", "title": "T", "seeds": 1, "arms": arms,
                                                  "questions": q}))  # fmt: skip
    counts = {"episodes/id": 256, "episodes/ood_rule": 256}
    _fake_run(study / "seed-0" / "sft", [(0, 0.1, 0.1), (1e9, 0.5, 0.02)], extra=counts)
    _fake_run(study / "seed-0" / "rl", [(0, 0.1, 0.1), (1e9, 0.5, 0.3)], extra=counts)
    text = write_report([study], tmp_path / "out").read_text()
    assert "Success on ood_rule, rl minus sft (1 seed; bootstrap over seeds and episodes): +" in text


def test_a_report_of_many_arms_draws_its_curves_with_the_legend_below(tmp_path):
    runs = []
    for k in range(6):
        _fake_run(tmp_path / f"arm{k}", [(0, 0.1, 0.1), (1e9 * (k + 1), 0.1 * k, 0.05 * k)])
        runs.append(tmp_path / f"arm{k}")
    text = write_report(runs, tmp_path / "out").read_text()
    for png in ("success_vs_compute.png", "reward_vs_compute.png"):
        assert f"]({png})" in text and (tmp_path / "out" / png).stat().st_size > 1000


def test_error_bars_never_go_negative_when_a_point_lies_outside_its_interval(tmp_path):
    """A mean over seeds (or a bootstrap estimate) can fall just outside its 95% interval; the
    figure must still be drawn, with that side's bar at zero length."""
    from deploy.studies.figures import _bar_errors, question_forest
    from deploy.studies.intervals import Interval

    intervals = [Interval(0.10, 0.12, 0.20), Interval(0.50, 0.40, 0.45), None]
    lows, highs = _bar_errors([0.10, 0.50, 0.3], intervals)
    assert lows == pytest.approx([0.0, 0.10, 0.0]) and highs == pytest.approx([0.10, 0.0, 0.0])
    name = question_forest(
        [("RL minus SFT", intervals[0]), ("SFT minus init", intervals[1])], tmp_path, "q.png"
    )
    assert name == "q.png" and (tmp_path / "q.png").stat().st_size > 1000
