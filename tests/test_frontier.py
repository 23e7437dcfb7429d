"""The frontier analysis on constructed points with known answers: the envelope, interpolation along
it, the ID every method reaches, matched differences per seed, and the two R^2 (KL line, method)."""

from __future__ import annotations

import json

import pytest

from deploy.studies.frontier import (
    Point,
    common_id,
    line_fit,
    matched_differences,
    method_r2,
    pareto_frontier,
    value_at,
)
from deploy.studies.report import write_report


def test_the_frontier_keeps_only_points_nothing_beats_on_both_axes():
    pts = [(0.5, 0.4), (0.6, 0.35), (0.55, 0.2), (0.7, 0.1), (0.6, 0.3), (0.4, 0.38)]
    # (0.55, 0.2) and (0.6, 0.3) are beaten by (0.6, 0.35); (0.4, 0.38) by (0.5, 0.4)
    assert pareto_frontier(pts) == [(0.5, 0.4), (0.6, 0.35), (0.7, 0.1)]
    front = pareto_frontier(pts)
    assert value_at(front, 0.65) == pytest.approx(0.225)  # halfway between (0.6, 0.35) and (0.7, 0.1)
    assert value_at(front, 0.3) == 0.4  # below its lowest ID: the best it has
    assert value_at(front, 0.71) is None  # never reached
    assert common_id({"a": front, "b": [(0.2, 0.9), (0.62, 0.5)]}) == 0.62


def test_matched_differences_per_seed():
    pts = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        pts += [Point("SFT", "sft", seed, 0.6 + shift, 0.30), Point("SFT", "sft", seed, 0.8 + shift, 0.20),
                Point("RL", "rl", seed, 0.5, 0.45), Point("RL", "rl", seed, 0.7, 0.40)]  # fmt: skip
    x, diffs = matched_differences(pts, "RL", "SFT")
    assert x == 0.7  # RL's best ID, reached by SFT in both seeds
    # seed 0: RL 0.40, SFT halfway from (0.6, 0.30) to (0.8, 0.20) = 0.25; seed 1: SFT at 0.7 on
    # (0.62, 0.30)-(0.82, 0.20) = 0.26
    assert diffs == pytest.approx([0.15, 0.14])
    with pytest.raises(ValueError, match="both RL and GRPO"):
        matched_differences(pts, "RL", "GRPO")


def test_kl_line_and_method_r2():
    slope, intercept, r2 = line_fit([0.0, 0.1, 0.2, 0.3], [0.0, -0.02, -0.04, -0.06])
    assert (slope, intercept, r2) == pytest.approx((-0.2, 0.0, 1.0))
    assert line_fit([0, 1, 2, 3], [1, -1, 1, -1])[2] == pytest.approx(0.2)
    # two methods whose means differ by 2, each spread +-1: between 4 of total 4 + 4 -> 0.5
    assert method_r2({"a": [-2, 0], "b": [0, 2]}) == pytest.approx(0.5)
    assert method_r2({"a": [1, 1], "b": [3, 3]}) == 1.0
    with pytest.raises(ValueError, match="at least 3 points"):
        line_fit([0, 0, 0], [1, 2, 3])


def _arm(folder, evals):
    folder.mkdir(parents=True)
    records = [{"kind": "eval", "stage": "s", "stage_step": i, "global_step": g, "flops": g * 1e9,
                "success/id": x, "success/ood_rule": y, "episodes/id": 100, "episodes/ood_rule": 100, **extra}
               for i, (g, x, y, extra) in enumerate(evals)]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "DONE").write_text("{}")


def test_a_frontier_study_reports_the_matched_difference_and_the_kl_line(tmp_path):
    arms = [{"name": "init", "kind": "train"}] + [
        {"name": n, "kind": "train", "config": {"model": "@init"}}
        for n in ("sft-a", "sft-b", "ppo-a", "ppo-b")
    ]
    spec = {"start": "init", "methods": {"SFT": ["sft-a", "sft-b"], "PPO": ["ppo-a", "ppo-b"]},
            "compare": ["PPO", "SFT"], "id_suite": "id", "ood_suite": "ood_rule"}  # fmt: skip
    study = tmp_path / "frontier-tiny"
    study.mkdir()
    (study / "study.yaml").write_text(json.dumps({"name": "frontier", "title": "F", "seeds": 2, "arms": arms,
                                                  "questions": [], "frontier": spec}))  # fmt: skip
    for seed in (0, 1):
        root = study / f"seed-{seed}"
        _arm(root / "init", [(0, 0.1, 0.1, {}), (5, 0.5, 0.35, {"kl/start": 1.0})])
        # PPO lies 10 points above SFT at the same ID successes; SFT moves further from the start
        _arm(root / "sft-a", [(10, 0.6, 0.30, {"kl/start": 0.2})])
        _arm(root / "sft-b", [(10, 0.8, 0.20, {"kl/start": 0.4})])
        _arm(root / "ppo-a", [(10, 0.6, 0.40, {"kl/start": 0.05})])
        _arm(root / "ppo-b", [(10, 0.8, 0.30, {"kl/start": 0.1})])
    text = write_report([study], tmp_path / "out").read_text()
    assert "## Frontiers: rule-OOD success against ID success" in text
    assert "Rule-OOD success at ID success 80.0%, PPO minus SFT (2 seeds; t over the seeds): +10.0%" in text
    found = next(a["frontier"] for a in json.loads((tmp_path / "out" / "report.json").read_text())["answers"])
    assert found["matched"]["per_seed"] == pytest.approx([0.1, 0.1])
    # each arm's start (the init's final: KL 0, no change) and its own evaluation, in both seeds
    assert found["kl"]["points"] == 16 and found["kl"]["slope"] < 0 and 0 <= found["kl"]["r2"] <= 1
    for png in ("frontier.png", "kl_vs_ood.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000 and f"]({png})" in text
    (study / "study.yaml").write_text(json.dumps({"name": "frontier", "title": "F", "seeds": 1, "arms": arms,
                                                  "questions": [], "frontier": spec}))  # fmt: skip
    text = write_report([study], tmp_path / "one").read_text()  # the first seed alone: no interval, said
    assert (
        "Rule-OOD success at ID success 80.0%, PPO minus SFT (1 seed): +10.0% (one seed: no interval)."
        in text
    )


def test_a_frontier_naming_unknown_arms_or_methods_is_refused(tmp_path):
    from deploy.studies.recipe import load_study
    from sftrl.config import ConfigError

    study = load_study("frontier", "tiny")
    assert study.frontier is not None and set(study.frontier.methods) == {"SFT", "RFT", "PPO", "GRPO"}
    assert all(len(arms) == 3 for arms in study.frontier.methods.values())
    for override, message in (("frontier.methods.SFT=[sft-1, nope]", "frontier names arms"),
                              ("frontier.compare=[PPO, DPO]", "names no method")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_study("frontier", "tiny", overrides=[override])
