"""Per-episode outcomes through a report: logged after each evaluation, carried to outcomes.json beside
report.json with the commit and CPU that made them, and the questions' intervals paired by seed and
task from them (runs without them fall back, and say so)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy.studies.intervals import paired_difference, seed_difference
from deploy.studies.outcomes import OUTCOMES_FILE
from deploy.studies.report import write_report

TASKS = list(range(100, 164))  # 64 tasks, the environment seeds every arm plays
QUESTION = {"text": "Does RL keep the new rule better than SFT?", "a": "rl", "b": "sft", "suite": "ood_rule"}


def _arm_run(folder: Path, wins: dict[str, list[int]], episodes: bool) -> None:
    """A finished arm as the trainer writes it: a start and a final evaluation, each followed by its
    ``episodes`` record when ``episodes``; ``wins``: suite -> success per task of the final one."""
    folder.mkdir(parents=True)
    lines = []
    for step, final in ((0, None), (10, wins)):
        suites = final or {s: [0] * len(TASKS) for s in wins}
        record = {"kind": "eval", "stage": "s", "stage_step": step, "global_step": step, "flops": step * 1e9}
        for suite, won in suites.items():
            record |= {f"success/{suite}": sum(won) / len(won), f"episodes/{suite}": len(won)}
        lines.append(record)
        if episodes:
            outcomes = {s: {"task": TASKS, "success": won, "fields": {}} for s, won in suites.items()}
            lines.append({"kind": "episodes", "stage": "s", "global_step": step, "commit": "abc1234",
                          "cpu": "AMD EPYC", "cpu_kind": "amd-epyc-avx512-bf16", "suites": outcomes})  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (folder / "DONE").write_text("{}")


def _study(root: Path, wins: dict[str, list[list[int]]], episodes: bool = True) -> Path:
    """A 3-seed study of arms ``rl`` and ``sft``; ``wins``: arm -> per seed, success per task (ood_rule)."""
    arms = [{"name": name, "label": name.upper(), "kind": "train"} for name in wins]
    root.mkdir(parents=True)
    (root / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "seeds": 3, "arms": arms,
                                                 "questions": [QUESTION]}))  # fmt: skip
    for name, per_seed in wins.items():
        for seed, won in enumerate(per_seed):
            _arm_run(root / f"seed-{seed}" / name, {"ood_rule": won}, episodes)
    return root


def _wins(rng: np.random.Generator, rate: float) -> list[int]:
    return [int(x) for x in rng.random(len(TASKS)) < rate]


def test_outcomes_round_trip_and_answers_are_paired_by_seed_and_task(tmp_path):
    rng = np.random.default_rng(0)
    wins = {"rl": [_wins(rng, 0.6) for _ in range(3)], "sft": [_wins(rng, 0.3) for _ in range(3)]}
    study = _study(tmp_path / "study", wins)
    text = write_report([study], tmp_path / "out").read_text()
    saved = json.loads((tmp_path / "out" / OUTCOMES_FILE).read_text())["runs"]
    assert len(saved) == 6
    for row in saved:  # the final evaluation's outcomes, as logged, with what made them
        assert row["suites"]["ood_rule"] == {
            "task": TASKS,
            "success": wins[row["arm"]][row["seed"]],
            "fields": {},
        }
        assert (row["global_step"], row["commit"], row["cpu_kind"]) == (10, "abc1234", "amd-epyc-avx512-bf16")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not any("outcomes" in e for r in report["runs"] for e in r["evals"])  # kept beside, not inside
    want = paired_difference(
        [dict(zip(TASKS, w)) for w in wins["rl"]], [dict(zip(TASKS, w)) for w in wins["sft"]]
    )
    got = report["answers"][0]["difference"]
    assert (got["estimate"], got["low"], got["high"]) == pytest.approx((want.estimate, want.low, want.high))
    assert "(3 seeds; paired by seed and task)" in text


def test_tasks_are_paired_by_their_id_not_by_their_order(tmp_path):
    # RL wins exactly the tasks SFT wins in every seed, but lists them in reverse: no difference at all
    rng = np.random.default_rng(2)
    same = [_wins(rng, 0.5) for _ in range(3)]
    study = _study(tmp_path / "study", {"rl": same, "sft": same})
    for seed in range(3):
        path = study / f"seed-{seed}" / "rl" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        found = records[-1]["suites"]["ood_rule"]
        found["task"], found["success"] = found["task"][::-1], found["success"][::-1]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report([study], tmp_path / "out")
    got = json.loads((tmp_path / "out" / "report.json").read_text())["answers"][0]["difference"]
    assert (got["estimate"], got["low"], got["high"]) == (0.0, 0.0, 0.0)


def test_runs_without_outcomes_fall_back_to_t_over_the_seeds(tmp_path):
    rng = np.random.default_rng(1)
    wins = {"rl": [_wins(rng, 0.6) for _ in range(3)], "sft": [_wins(rng, 0.3) for _ in range(3)]}
    text = write_report([_study(tmp_path / "study", wins, episodes=False)], tmp_path / "out").read_text()
    assert "(3 seeds; t over the seeds' differences)" in text
    assert not (tmp_path / "out" / OUTCOMES_FILE).exists()
    rates = {arm: [sum(w) / len(w) for w in per_seed] for arm, per_seed in wins.items()}
    want = seed_difference(rates["rl"], rates["sft"])
    got = json.loads((tmp_path / "out" / "report.json").read_text())["answers"][0]["difference"]
    assert (got["low"], got["high"]) == pytest.approx((want.low, want.high))


def test_the_report_gives_kl_from_the_start_with_t_over_the_seeds(tmp_path):
    rng = np.random.default_rng(3)
    study = _study(
        tmp_path / "study", {"rl": [_wins(rng, 0.5) for _ in range(3)], "sft": [_wins(rng, 0.5)] * 3}
    )
    kl = {"rl": [0.01, 0.02, 0.03], "sft": [0.3, 0.5, 0.4]}
    for arm, values in kl.items():
        for seed, value in enumerate(values):
            path = study / f"seed-{seed}" / arm / "metrics.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines()]
            records[-2] |= {"kl/start": value, "kl_low/start": value - 0.01, "kl_high/start": value + 0.01}
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report([study], tmp_path / "out").read_text()
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t(2) x sd 0.1 / sqrt(3) for SFT's 0.3, 0.5, 0.4
    assert "## KL from the start" in text and "| run | start |" in text
    assert f"| SFT | 0.400 ({0.4 - half:.3f} to {0.4 + half:.3f}) |" in text


def test_questions_per_level_take_t_over_the_seeds_and_the_report_says_how_levels_were_filled(tmp_path):
    rng = np.random.default_rng(5)
    study = _study(
        tmp_path / "study", {"rl": [_wins(rng, 0.5) for _ in range(3)], "sft": [_wins(rng, 0.5)] * 3}
    )
    spec = json.loads((study / "study.yaml").read_text())
    spec["questions"] = [{"text": "Does SFT beat RL on the hardest items?", "a": "sft", "b": "rl",
                          "metric": "accuracy", "suite": "L5"}]  # fmt: skip
    (study / "study.yaml").write_text(json.dumps(spec))
    l5 = {"sft": [40, 44, 38], "rl": [30, 29, 33]}  # of 64 L5 items per seed
    for seed in range(3):
        fill = {"per_level": 64, "drawn": 900 + seed, "episodes": 16 * (900 + seed), "seconds": 600.0,
                "drawn_levels": {"L1": 500, "L2": 200, "L3": 64, "L4": 70, "L5": 66 + seed},
                "kept": {f"L{k}": 64 for k in range(1, 6)}, "short": []}  # fmt: skip
        (study / f"seed-{seed}" / "levels-fill.json").write_text(json.dumps(fill))
        (study / f"seed-{seed}" / "levels-spec.json").write_text(json.dumps({"options": {"verify_iter": 2}}))
        for arm, wins in l5.items():
            levels = {"accuracy": 0.5, "accuracy/L5": wins[seed] / 64, "items/L5": 64,
                      "accuracy/L1": 0.9, "items/L1": 64}  # fmt: skip
            (study / f"seed-{seed}" / arm / "levels.json").write_text(json.dumps(levels))
    text = write_report([study], tmp_path / "out").read_text()
    want = seed_difference([w / 64 for w in l5["sft"]], [w / 64 for w in l5["rl"]])
    got = json.loads((tmp_path / "out" / "report.json").read_text())["answers"][0]["difference"]
    assert (got["estimate"], got["low"], got["high"]) == pytest.approx((want.estimate, want.low, want.high))
    assert "Accuracy on L5, SFT minus RL (3 seeds; t over the seeds' differences)" in text
    assert "- seed 1: 901 items drawn and tagged (L1 500 L2 200 L3 64 L4 70 L5 67), 14416 episodes" in text
    assert "with verify_iter=2 over the suite's environment options." in text
    assert (tmp_path / "out" / "levels.png").stat().st_size > 1000


def test_first_answer_questions_read_the_first_answers_formula_with_t_over_the_seeds(tmp_path):
    rng = np.random.default_rng(7)
    study = _study(
        tmp_path / "study", {"rl": [_wins(rng, 0.5) for _ in range(3)], "sft": [_wins(rng, 0.5)] * 3}
    )
    spec = json.loads((study / "study.yaml").read_text())
    spec["questions"] = [
        {"text": "First answers?", "a": "rl", "b": "sft", "metric": "first_answer", "suite": "ood_rule"}
    ]
    (study / "study.yaml").write_text(json.dumps(spec))
    right = {"rl": [20, 22, 25], "sft": [10, 12, 9]}  # of 64 first answers per seed
    for arm, per_seed in right.items():
        for seed, k in enumerate(per_seed):
            path = study / f"seed-{seed}" / arm / "metrics.jsonl"
            records = [json.loads(line) for line in path.read_text().splitlines()]
            records[-2] |= {"field/ood_rule/formula_correct": k / 64, "answers/ood_rule": 64}
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
    text = write_report([study], tmp_path / "out").read_text()
    want = seed_difference([k / 64 for k in right["rl"]], [k / 64 for k in right["sft"]])
    got = json.loads((tmp_path / "out" / "report.json").read_text())["answers"][0]["difference"]
    assert (got["estimate"], got["low"], got["high"]) == pytest.approx((want.estimate, want.low, want.high))
    assert "First-answer success on ood_rule, RL minus SFT (3 seeds; t over the seeds' differences)" in text
