"""SFT+RL combinations (paper 2): the progressive schedule, the interleaved split, and both strategies in a
real run (vLLM, DeepSpeed, Ray, the tiny model)."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import pytest

from deploy.train.combination import pass_rates, sft_weight, split_by_pass_rate
from deploy.train.config import SFTMix
from deploy.train.data import rows_for_step
from sftrl.trajectory import Trajectory


@pytest.mark.parametrize(
    ("schedule", "decay", "step", "expected"),
    [
        ("linear", None, 0, 1.0), ("linear", None, 5, 0.5), ("linear", None, 10, 0.0), ("linear", None, 30, 0.0),
        ("linear", 4, 2, 0.5), ("linear", 4, 7, 0.0),
        ("cosine", None, 5, 0.5), ("cosine", 4, 1, 0.5 + 0.5 * math.cos(math.pi / 4)), ("cosine", 4, 4, 0.0),
    ],
)  # fmt: skip
def test_progressive_weight_follows_the_schedule(schedule, decay, step, expected):
    mix = SFTMix(strategy="progressive", schedule=schedule, decay_steps=decay)
    assert sft_weight(mix, step, stage_steps=10) == pytest.approx(expected)
    up = SFTMix(strategy="progressive", weight_start=0.2, weight_end=0.6, schedule=schedule)
    assert sft_weight(up, 0, 10) == pytest.approx(0.2) and sft_weight(up, 10, 10) == pytest.approx(0.6)


def _traj(group: str, seed: int, k: int, success: bool) -> Trajectory:
    return Trajectory(episode_id=f"{group}-{k}", group_id=group, env_id="sftrl/GeneralPoints-v0", seed=seed,
                      success=success)  # fmt: skip


def test_interleaved_split_sends_only_zero_pass_tasks_to_sft():
    trajs = [_traj("a", 1, 0, False), _traj("a", 1, 1, False), _traj("b", 2, 0, True), _traj("b", 2, 1, False),
             _traj("c", 3, 0, False), _traj("c", 3, 1, False), _traj("d", 4, 0, True), _traj("d", 4, 1, True)]  # fmt: skip
    assert pass_rates(trajs) == {"a": 0.0, "b": 0.5, "c": 0.0, "d": 1.0}
    failed, rest = split_by_pass_rate(trajs)
    assert [t.seed for t in failed] == [1, 3]  # one demonstration per task, not per sample
    assert {t.group_id for t in rest} == {"b", "d"} and len(rest) == 4


def test_progressive_rows_are_a_function_of_the_step():
    pool = list(range(10))
    steps = [rows_for_step(pool, 4, seed=3, step=s) for s in range(5)]
    assert steps[1] == rows_for_step(pool, 4, seed=3, step=1)  # resume-safe
    flat = [x for rows in steps for x in rows]
    assert sorted(flat[:10]) == pool and sorted(flat[10:20]) == pool  # every row once per epoch
    assert all(len(rows) == 4 for rows in steps)


@pytest.mark.slow
def test_interleaved_and_progressive_stages_in_one_run(tiny_model, tmp_path, monkeypatch):
    from deploy.train.config import load_train_config
    from deploy.train.loop import Trainer
    from deploy.train.metrics import read_metrics
    from services.learner.sft_data import load_demonstrations
    from sftrl.trajectory import read_trajectories

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(Path(tiny_model).parent))
    rl = "max_len: 768, rl: {algorithm: grpo, epochs: 1}, optim: {lr: 1.0e-4, scheduler: constant}"
    stages = (
        f"stages=[{{kind: rl, name: inter, steps: 2, tasks_per_step: 8, samples_per_task: 4, {rl},"
        "  mix: {strategy: interleaved, max_len: 768}},"
        f" {{kind: rl, name: prog, steps: 2, tasks_per_step: 4, samples_per_task: 2, {rl},"
        "  mix: {strategy: progressive, rows_per_step: 8, max_len: 768, data: {episodes: 64}}}]"
    )
    config = load_train_config(None, [
        "model=tiny", f"output_dir={tmp_path}", "run_name=combo", stages, "env.options.prompt_style=compact",
        "env.options.verify_iter=5", "eval.episodes=8", "eval.every=100", "eval.sampling.max_tokens=64",
        "rollout.sampling.max_tokens=64", "rollout.sampling.temperature=1.0", "rollout.engine.dtype=float32",
        "rollout.engine.max_model_len=1536", "tensorboard=false", "learner.micro_batch_size=32", "learner.precision=fp32",
        "save_trajectories=true", "checkpoint.every=100", "registry.enabled=false",
    ])  # fmt: skip
    trainer = Trainer(config)
    trainer.run()
    records = read_metrics(trainer.run_dir / "metrics.jsonl")
    train = {r["stage"]: [] for r in records if r["kind"] == "train"}
    for r in records:
        if r["kind"] == "train":
            train[r["stage"]].append(r)
    assert [len(train[s]) for s in ("inter", "prog")] == [2, 2]
    assert trainer.final_policy_version == [4]

    for r in train["inter"]:
        step = r["stage_step"]
        trajs = read_trajectories(trainer.run_dir / "trajectories" / f"inter-step-{step:06d}.jsonl")
        zero = sorted({t.seed for t in trajs} - {t.seed for t in trajs if t.success})
        assert r["sft_task_seeds"] == zero and r["sft_tasks"] + r["rl_tasks"] == 8
        demos = trainer.run_dir / "data" / "interleaved" / f"inter-step-{step:06d}.jsonl"
        if zero:  # SFT on exactly the zero-pass tasks: their expert demonstrations, same prompts
            conversations = load_demonstrations(demos)
            assert len(conversations) == len(zero) and math.isfinite(r["sft_loss"])
            prompts = {t.seed: t.messages[0]["content"] for t in trajs}
            firsts = [c.messages[0]["content"] for c in conversations]
            firsts = [f if isinstance(f, str) else "".join(p.get("text", "") for p in f) for f in firsts]
            assert firsts == [prompts[s] for s in zero]
        else:
            assert not demos.exists() and "sft_loss" not in r
        assert ("rl_skipped" in r) == (r["rl_tasks"] == 0)
        if r["rl_tasks"]:
            assert r["rows"] > 0 and math.isfinite(r["policy_loss"])

    assert [r["sft_weight"] for r in train["prog"]] == [1.0, 0.5]  # linear decay over the stage's 2 steps
    assert all(math.isfinite(r["sft_loss"]) and math.isfinite(r["policy_loss"]) for r in train["prog"])


@pytest.mark.slow
def test_interleaved_step_trains_sft_on_failed_tasks_and_rl_on_the_rest(tiny_model, tmp_path):
    """Both branches of an interleaved step with a real DeepSpeed learner, on real GeneralPoints episodes
    where tasks 1 and 3 were failed by every sample and tasks 0 and 2 were solved."""
    from deploy.train.config import load_train_config
    from deploy.train.loop import Trainer
    from deploy.train.rl_step import RLStep
    from services.learner.batch import build_rl_batch
    from services.learner.sft_data import load_demonstrations
    from sftrl.models.processor import load_tokenizer_or_processor
    from tests.test_learner import gp_trajectories, make_worker

    tok = load_tokenizer_or_processor(str(tiny_model))
    trajs = gp_trajectories(tok, tasks=4, samples=2, fail_tasks=frozenset({1, 3}))
    assert {t.seed for t in trajs if not t.success} == {1, 3} and {t.seed for t in trajs if t.success} == {
        0,
        2,
    }
    stage = ("stages=[{kind: rl, name: inter, steps: 1, tasks_per_step: 4, samples_per_task: 2, max_len: 768,"
             " rl: {algorithm: grpo, epochs: 1}, mix: {strategy: interleaved, max_len: 768}}]")  # fmt: skip
    config = load_train_config(None, [f"model={tiny_model}", f"output_dir={tmp_path}", "run_name=inter", stage,
                                      "env.options.prompt_style=compact", "env.options.verify_iter=2",
                                      "tensorboard=false", "registry.enabled=false"])  # fmt: skip
    trainer = Trainer(config)
    trainer.learner = make_worker(tiny_model, config.stages[0].rl, micro_batch_size=4)
    # the step's update only: the episodes are given, so no rollout group plays or receives weights
    rl_step = RLStep(None, trainer.learner, config.stages[0].rl, tok, 768, "float32")  # type: ignore[arg-type]
    trainer.counter = rl_step.flops
    try:
        before = trainer.learner.forward_logprobs(
            build_rl_batch(trajs, tok, config.stages[0].rl, tok.pad_token_id)
        )
        m = trainer._learn(rl_step, config.stages[0], 0, 0, trajs, None)
    finally:
        trainer.learner.shutdown()
        trainer.metrics.close()
    assert m["sft_task_seeds"] == [1, 3] and m["sft_tasks"] == 2 and m["rl_tasks"] == 2
    assert math.isfinite(m["sft_loss"]) and m["sft_tokens"] > 0
    expected_rows = len(build_rl_batch([t for t in trajs if t.seed in (0, 2)], tok, config.stages[0].rl,
                                       tok.pad_token_id))  # fmt: skip
    assert m["rows"] == expected_rows and "rl_skipped" not in m and before.shape[0] > m["rows"]
    demos = load_demonstrations(tmp_path / "inter" / "data" / "interleaved" / "inter-step-000001.jsonl")
    env = gym.make("sftrl/GeneralPoints-v0", prompt_style="compact", verify_iter=2)
    prompts = [env.reset(seed=seed)[0]["text"] for seed in (1, 3)]
    assert [d.messages[0]["content"] for d in demos] == prompts  # the failed tasks' own prompts
    assert trainer.flops > 0
