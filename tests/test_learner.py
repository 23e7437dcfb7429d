"""The DeepSpeed learner on the real stack (DeepSpeed on CPU with gloo, Ray actors, vLLM): SFT data,
SFT and RL steps, ZeRO stages, data parallelism, and weights reaching a running vLLM engine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from services.envs.demonstrations import DemonstrationWriter, generate_demonstrations
from services.learner.config import LearnerConfig, RLConfig
from services.learner.sft_data import (
    IGNORE_INDEX,
    SFTExample,
    load_demonstrations,
    tokenize_sft,
)
from sftrl.models.processor import load_tokenizer_or_processor
from sftrl.ports import free_loopback_port
from sftrl.trajectory import Trajectory, Turn
from tests.listeners import beyond_loopback, listening_sockets

REPO = Path(__file__).resolve().parents[1]
GP = "sftrl/GeneralPoints-v0"


def write_demos(folder: Path, episodes: int, **options) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    llava, chat = folder / "gp.json", folder / "gp.jsonl"
    with DemonstrationWriter(llava, chat, folder / "images") as writer:
        for demo in generate_demonstrations(
            GP, {"prompt_style": "compact", "verify_iter": 2, **options}, episodes
        ):
            writer.add(demo)
    return llava, chat


def learner_config(model: Path, **overrides) -> LearnerConfig:
    data = {
        # fp32 unless a test asks: these tests check the learner's arithmetic, the same on every CPU kind
        "model": str(model), "micro_batch_size": 4, "seed": 0, "precision": "fp32",
        "optim": {"lr": 3e-3, "scheduler": "constant", "total_steps": 100, "max_grad_norm": 1.0},
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return LearnerConfig.model_validate(data)


def make_worker(model: Path, rl: RLConfig | None = None, **kwargs):
    from services.learner.worker import LearnerWorker

    flags = {k: kwargs.pop(k) for k in ("value_head", "reference") if k in kwargs}
    return LearnerWorker(
        learner_config(model, **kwargs), rl, 0, 1, "127.0.0.1", free_loopback_port(), **flags
    )


@pytest.fixture(scope="module")
def gp_text_demos(tmp_path_factory) -> tuple[Path, Path]:
    return write_demos(tmp_path_factory.mktemp("gp-text"), 48)


@pytest.fixture(scope="module")
def gp_examples(gp_text_demos, tiny_model) -> list[SFTExample]:
    tok = load_tokenizer_or_processor(str(tiny_model))
    return tokenize_sft(load_demonstrations(gp_text_demos[0]), tok, max_len=1024)


def batches(examples: list[SFTExample], size: int, steps: int) -> list[list[SFTExample]]:
    return [[examples[(s * size + i) % len(examples)] for i in range(size)] for s in range(steps)]


# -- SFT data ---------------------------------------------------------------------------------------


def test_labels_cover_exactly_the_assistant_tokens(gp_text_demos, tiny_model):
    tok = load_tokenizer_or_processor(str(tiny_model))
    llava, chat = gp_text_demos
    from_llava = load_demonstrations(llava)
    from_chat = load_demonstrations(chat)
    assert [c.messages for c in from_llava] == [c.messages for c in from_chat]
    examples = tokenize_sft(from_llava, tok, max_len=1024)
    assert len(examples) == len(from_llava)
    revisions = 0
    for conv, ex in zip(from_llava, examples):
        assistant = [m["content"] for m in conv.messages if m["role"] == "assistant"]
        revisions += len(assistant) > 1
        labelled = ex.labels[ex.labels != IGNORE_INDEX]
        assert tok.decode(labelled) == "".join(a + tok.eos_token for a in assistant)
        # the labelled positions are exactly the tokens, not a shifted copy
        assert torch.equal(ex.input_ids[ex.labels != IGNORE_INDEX], labelled)
        # each assistant turn is one contiguous run of labels
        runs = torch.diff((ex.labels != IGNORE_INDEX).int()).eq(1).sum().item()
        assert runs == len(assistant)
    assert revisions > 0  # multi-turn revision episodes are in the data
    assert tokenize_sft(from_chat, tok, max_len=1024)[0].input_ids.tolist() == examples[0].input_ids.tolist()


def test_long_rows_are_dropped_or_cut(gp_text_demos, tiny_model):
    tok = load_tokenizer_or_processor(str(tiny_model))
    convs = load_demonstrations(gp_text_demos[1])[:6]
    full = tokenize_sft(convs, tok, max_len=4096)
    limit = sorted(len(e) for e in full)[3]
    kept = tokenize_sft(convs, tok, max_len=limit)
    assert len(kept) == sum(len(e) <= limit for e in full)
    cut = tokenize_sft(convs, tok, max_len=limit, overflow="truncate")
    assert all(len(e) <= limit for e in cut) and len(cut) >= len(kept)
    with pytest.raises(ValueError, match="more than max_len"):
        tokenize_sft(convs, tok, max_len=limit, overflow="error")
    shortest = min(len(e) for e in full)
    with pytest.raises(
        ValueError, match=f"no demonstration fits in max_len 8 tokens .the shortest has {shortest}"
    ):
        tokenize_sft(iter(convs), tok, max_len=8)  # any iterable (the trainer passes a progress bar's)


def test_malformed_demonstration_files_are_clear_errors(tmp_path):
    bad_json = tmp_path / "a.json"
    bad_json.write_text('[{"id": "x", "conversations": [}]')
    with pytest.raises(ValueError, match=r"a\.json: not valid JSON"):
        load_demonstrations(bad_json)
    roles = tmp_path / "b.json"
    roles.write_text(json.dumps([{"id": "e1", "conversations": [{"from": "robot", "value": "hi"}]}]))
    with pytest.raises(ValueError, match=r"b\.json: record 0 \(id e1\), turn 0: 'from' must be human or gpt"):
        load_demonstrations(roles)
    markers = tmp_path / "c.json"
    markers.write_text(json.dumps([{"id": "e2", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}]))  # fmt: skip
    with pytest.raises(ValueError, match=r"c\.json: record 0 \(id e2\): 1 <image> markers but 0 image paths"):
        load_demonstrations(markers)
    missing = tmp_path / "d.jsonl"
    missing.write_text(json.dumps({"id": "e3", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "nope.png"}}]},
        {"role": "assistant", "content": "a"}]}) + "\n")  # fmt: skip
    with pytest.raises(
        ValueError, match=r"d\.jsonl: line 1 \(id e3\), message 0: image file .*nope\.png does not exist"
    ):
        load_demonstrations(missing)
    broken_line = tmp_path / "e.jsonl"
    broken_line.write_text('{"id": "ok", "messages": [{"role": "assistant", "content": "a"}]}\n{oops\n')
    with pytest.raises(ValueError, match=r"e\.jsonl: line 2: not valid JSON"):
        load_demonstrations(broken_line)
    no_answer = tmp_path / "f.jsonl"
    no_answer.write_text(json.dumps({"id": "q", "messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(ValueError, match="no assistant turn"):
        load_demonstrations(no_answer)


def test_lr_schedule_warms_up_and_decays_to_the_floor():
    from services.learner.config import OptimConfig
    from services.learner.ds_config import lr_lambda

    f = lr_lambda(OptimConfig(warmup_steps=4, total_steps=14, min_lr_ratio=0.1))
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == pytest.approx(1.0) and f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    assert lr_lambda(OptimConfig(scheduler="constant", warmup_steps=1))(50) == 1.0


# -- SFT steps --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sft_lowers_the_loss_and_accumulation_is_exact(tiny_model, gp_examples):
    worker = make_worker(tiny_model)
    try:
        losses = []
        for rows in batches(gp_examples, 8, 30):
            m = worker.sft_step(rows)
            losses.append(m["loss"])
            assert m["tokens"] == sum(r.num_target_tokens for r in rows)
            assert math.isfinite(m["grad_norm"]) and m["lr"] == pytest.approx(3e-3) and m["seconds"] > 0
        assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    finally:
        worker.shutdown()
    # One step over the same 7 rows in micro-batches of 7, of 3 (+3+1), and of about two rows grouped
    # by length (a token budget): the same update. Adam with eps = 1 makes the first update ~ -lr * g
    # (sign-like otherwise), so the gradients themselves are compared: a token-mean computed per
    # micro-batch instead would differ by far more than this.
    states = []
    budget = 2 * max(len(e) for e in gp_examples[:7])
    for micro, tokens in ((7, None), (3, None), (7, budget)):
        w = make_worker(
            tiny_model, micro_batch_size=micro, micro_batch_tokens=tokens,
            optim={"lr": 1.0, "eps": 1.0, "max_grad_norm": 100.0},
        )  # fmt: skip
        try:
            w.sft_step(gp_examples[:7])
            states.append(w.policy_state_dict(dtype="float32"))
        finally:
            w.shutdown()
    original = load_file(str(tiny_model / "model.safetensors"))
    moved = max((states[0][k] - original[k]).abs().max().item() for k in original)
    worst = max((states[0][k] - other[k]).abs().max().item() for other in states[1:] for k in states[0])
    assert moved > 0.1 and worst < 1e-6, (moved, worst)


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero_stage,precision", [(1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"), (3, "bf16")]
)
def test_zero_stages_and_bf16_train(tiny_model, gp_examples, zero_stage, precision):
    worker = make_worker(
        tiny_model, zero_stage=zero_stage, precision=precision, gradient_checkpointing=zero_stage == 3
    )
    try:
        rows = gp_examples[:6]
        first = worker.sft_step(rows)
        second = worker.sft_step(rows)
        assert math.isfinite(first["loss"]) and math.isfinite(first["grad_norm"]) and first["grad_norm"] > 0
        assert second["loss"] < first["loss"]
        state = worker.policy_state_dict()
        from safetensors import safe_open

        with safe_open(str(tiny_model / "model.safetensors"), "pt") as f:
            assert set(state) == set(f.keys())
            assert all(list(state[k].shape) == f.get_slice(k).get_shape() for k in f.keys())
            params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        assert worker.flops_per_token() == 6 * params and worker.flops_per_token(training=False) == 2 * params
        assert all(v.dtype == torch.bfloat16 for v in state.values())
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_tiny_vl_sft_on_image_demonstrations(tiny_vl_model, tmp_path):
    llava, chat = write_demos(tmp_path, 8, mode="image", image_size=64)
    processor = load_tokenizer_or_processor(str(tiny_vl_model))
    convs = load_demonstrations(chat)
    assert all(c.has_images for c in convs)
    examples = tokenize_sft(convs, processor, max_len=2048)
    image_token = processor.tokenizer.convert_tokens_to_ids("<image>")
    for ex in examples:
        assert ex.pixel_values is not None and ex.pixel_values.shape[-3:] == (3, 64, 64)
        assert int((ex.input_ids == image_token).sum()) == 16 * ex.pixel_values.shape[0]
        assert not (ex.labels == image_token).any()  # images are never targets
    worker = make_worker(tiny_vl_model, micro_batch_size=3)
    try:
        assert worker.is_vision
        losses = [worker.sft_step(examples)["loss"] for _ in range(6)]
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
        state = worker.policy_state_dict()
        from safetensors import safe_open

        with safe_open(str(tiny_vl_model / "model.safetensors"), "pt") as f:
            assert set(state) == set(f.keys())
    finally:
        worker.shutdown()


# -- RL steps ---------------------------------------------------------------------------------------


def gp_trajectories(tokenizer, tasks: int = 3, samples: int = 2, fail_tasks: frozenset[int] = frozenset()):
    """Episodes played through the real environment and the rollout's token-in/token-out
    conversation code, with the expert's answers (a wrong first attempt in some; only wrong answers
    for ``fail_tasks``): real token ids, real rewards, multi-turn revision episodes."""
    from services.rollout.conversation import ChatFormatter, Conversation

    fmt = ChatFormatter(tokenizer)
    options = {"prompt_style": "compact", "verify_iter": 2}
    env = gym.make(GP, **options)
    rng = np.random.default_rng(0)
    trajectories = []
    for task in range(tasks):
        for k in range(samples):
            obs, _ = env.reset(seed=task)
            expert = env.unwrapped
            conv = Conversation.start(fmt, obs["text"])
            turns = []
            for attempt in range(2):
                wrong = task in fail_tasks or (k % 2 and attempt == 0)
                answer = expert.wrong_answer(rng) if wrong else expert.expert_answer()
                response = fmt.encode(answer) + [tokenizer.eos_token_id]
                prompt = list(conv.token_ids)
                obs, reward, terminated, truncated, info = env.step(answer)
                turns.append(Turn(prompt_ids=prompt, response_ids=response, response_logprobs=[-1.0] * len(response),
                                  response_text=answer, reward=float(reward), terminated=terminated,
                                  truncated=truncated))  # fmt: skip
                if terminated or truncated:
                    break
                conv.add_turn(response, answer, obs["text"])
            trajectories.append(Trajectory(episode_id=f"gp-{task}-{k}", group_id=f"gp-{task}", env_id=GP, env_options=options,
                                           seed=task, turns=turns, success=bool(info.get("success"))))  # fmt: skip
    env.close()
    return trajectories


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "ppo_token", "grpo", "rloo"])
def test_rl_step_each_algorithm(tiny_model, algorithm):
    from services.learner.batch import build_rl_batch

    tok = load_tokenizer_or_processor(str(tiny_model))
    trajs = gp_trajectories(tok)
    assert any(len(t.turns) == 2 for t in trajs) and len({t.total_reward for t in trajs}) > 1
    rl = RLConfig(algorithm=algorithm, epochs=1, kl_coef=0.1 if algorithm == "ppo_token" else 0.0)
    batch = build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id)
    critic = algorithm in ("ppo", "ppo_token")
    worker = make_worker(
        tiny_model, rl, micro_batch_size=3, value_head=critic, reference=algorithm == "ppo_token"
    )
    try:
        before = worker.forward_logprobs(batch)
        m = worker.rl_step(batch)
        assert all(math.isfinite(v) for v in m.values()), m
        assert m["clip_fraction"] == 0.0  # one epoch: the policy that is updated is the one that scored
        assert m["approx_kl"] < 1e-6
        assert m["optimizer_steps"] == 1 and m["rows"] == len(batch) and m["grad_norm"] > 0
        assert ("value_loss" in m) == critic
        if algorithm == "ppo_token":
            assert m["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # reference == policy before the step
        # the update moved the log-probs of the sampled tokens
        after = worker.forward_logprobs(batch)
        moved = (after - before).abs()[batch.action_mask.bool()]
        assert moved.max() > 1e-4
        if not critic:
            # and moved them the way the group advantages ask: the clipped surrogate's objective (the
            # advantage-weighted probability ratio over the sampled tokens) rose
            from services.learner.rl import compute_advantages

            scored = compute_advantages(build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id), rl)
            ratio_gain = ((after - before).exp() - 1) * batch.action_mask
            assert float((scored.advantages[:, None] * ratio_gain).sum()) > 0
        # 2 epochs x 2 mini-batches: 4 optimizer steps
        worker.rl_update.mini_batches = 2
        worker.rl = rl.model_copy(update={"epochs": 2})
        m2 = worker.rl_step(build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id))
        assert m2["optimizer_steps"] == 4 and all(math.isfinite(v) for v in m2.values())
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_turns_scored_in_their_episodes_forward_equal_their_own(tiny_model):
    """One forward of an episode's last turn scores all its turns: the log-probs and values equal those
    of each row scored alone, and a PPO step over the shared forwards runs fewer rows through the
    model."""
    from services.learner.batch import build_rl_batch

    tok = load_tokenizer_or_processor(str(tiny_model))
    trajs = gp_trajectories(tok)
    rl = RLConfig(algorithm="ppo", epochs=2)
    batch = build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id)
    worker = make_worker(tiny_model, rl, micro_batch_size=3, value_head=True)
    try:
        shared_lp, shared_values = worker.rl_update.score(batch)
        for i in range(len(batch)):
            alone_lp, alone_values = worker.rl_update.score(batch.select([i]))
            acts = batch.action_mask[
                i
            ].bool()  # prompt positions may differ: logits start at a row's first action
            assert acts.any() and torch.allclose(
                shared_lp[i][acts], alone_lp[0][acts[: alone_lp.shape[1]]], atol=1e-4
            )
            assert shared_values is not None and alone_values is not None
            assert shared_values[i] == pytest.approx(float(alone_values[0]), abs=1e-4)
        m = worker.rl_step(batch)
        assert m["forwarded_rows"] == len(trajs) < m["rows"] == len(batch)
        assert m["forwarded_tokens"] < float(batch.num_tokens.sum())
        assert m["clip_fraction"] < 0.5 and all(math.isfinite(v) for v in m.values())
    finally:
        worker.shutdown()


# -- data parallel over Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    from sftrl.ray_setup import init_ray

    ray = init_ray(num_cpus=4)  # as sftrl starts it: 2 cores, logically 4
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_group_of_two_ranks_over_ray(local_ray, tiny_model, gp_examples):
    from services.learner.batch import build_rl_batch
    from services.learner.group import LearnerGroup

    steps = 20
    data = batches(gp_examples, 8, steps)
    # reference: the same first two steps on one rank, in this process
    single = make_worker(tiny_model)
    try:
        reference = [single.sft_step(rows)["loss"] for rows in data[:2]]
    finally:
        single.shutdown()
    config = learner_config(tiny_model, world_size=2)
    rl = RLConfig(algorithm="grpo", epochs=1)
    group = LearnerGroup(config, rl)
    try:
        # the ranks met through a file and talk over loopback: nothing of theirs listens beyond it
        pids = local_ray.get([a.__ray_call__.remote(lambda _: os.getpid()) for a in group.actors])
        sockets = [s for pid in pids for s in listening_sockets(pid)]
        assert sockets and not beyond_loopback(sockets), sockets
        losses = []
        for rows in data:
            m = group.sft_step(rows)
            assert [r["loss"] for r in group.last_metrics] == [m["loss"]] * 2  # ranks agree
            assert group.last_metrics[0]["grad_norm"] == group.last_metrics[1]["grad_norm"]
            losses.append(m["loss"])
        # global token-mean loss and averaged gradients: two ranks step like one
        assert losses[0] == pytest.approx(reference[0], abs=1e-6)
        assert losses[1] == pytest.approx(reference[1], abs=1e-5)
        assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
        tok = load_tokenizer_or_processor(str(tiny_model))
        batch = build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id)
        m = group.rl_step(batch)
        assert all(math.isfinite(v) for v in m.values()) and m["clip_fraction"] == 0.0
        assert group.last_metrics[0] == group.last_metrics[1]
        state = group.policy_state_dict(dtype="float32")
        assert state is not None and "lm_head.weight" in state
    finally:
        group.shutdown()
    leftovers = list(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    assert not leftovers, leftovers


@pytest.mark.fault
@pytest.mark.slow
def test_a_dead_rank_stops_the_group_at_once(local_ray, tiny_model, gp_examples):
    """Rank 1 is killed: rank 0 would wait in the step's all-reduce until the collective timeout
    (10 min by default, 30 before); the group notices the death, stops rank 0 and says what to do."""
    import ray

    from services.learner.group import LearnerGroup, LearnerRankDied

    group = LearnerGroup(learner_config(tiny_model, world_size=2))
    try:
        rows = batches(gp_examples, 8, 1)[0]
        group.sft_step(rows)
        survivor = group.actors[0]
        ray.kill(group.actors[1], no_restart=True)
        start = time.monotonic()
        with pytest.raises(LearnerRankDied, match="rank 1 died during sft_step.*--resume auto"):
            group.sft_step(rows)
        assert time.monotonic() - start < 120 and group.actors == []
        with pytest.raises(ray.exceptions.RayActorError):  # rank 0 was stopped, not left waiting
            ray.get(survivor.ping.remote(), timeout=60)
    finally:
        group.shutdown()


@pytest.mark.slow
def test_zero3_over_two_ranks_gathers_saves_and_resumes(local_ray, tiny_model, gp_examples, tmp_path):
    from safetensors import safe_open

    from services.learner.batch import build_rl_batch
    from services.learner.group import LearnerGroup
    from sftrl.checkpoint import CheckpointManager

    rl = RLConfig(algorithm="ppo", epochs=1)
    group = LearnerGroup(learner_config(tiny_model, world_size=2, zero_stage=3), rl, value_head=True)
    try:
        data = batches(gp_examples, 8, 3)
        group.sft_step(data[0])
        state = group.policy_state_dict(dtype="float32")  # gathered from both ranks' partitions
        with safe_open(str(tiny_model / "model.safetensors"), "pt") as f:
            assert {k: list(v.shape) for k, v in state.items()} == {
                k: f.get_slice(k).get_shape() for k in f.keys()
            }
        path = CheckpointManager(tmp_path, keep=1).save(1, lambda p: group.save_checkpoint(p, {"step": 1}))
        expected = [group.sft_step(rows)["loss"] for rows in data[1:]]
        tok = load_tokenizer_or_processor(str(tiny_model))
        m = group.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id))
        assert all(math.isfinite(v) for v in m.values()) and m["clip_fraction"] == 0.0 and "value_loss" in m
        assert group.load_checkpoint(path) == {"step": 1}
        assert [group.sft_step(rows)["loss"] for rows in data[1:]] == expected
    finally:
        group.shutdown()


# -- weights into vLLM ------------------------------------------------------------------------------

_VLLM_SCRIPT = """
import json, sys
from safetensors.torch import load_file
from services.rollout.config import EngineConfig, SamplingConfig
from services.rollout.engine import PromptInput, VLLMEngine

model, weights, checkpoint, prompts = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
engine = VLLMEngine(EngineConfig(model=model, dtype="float32", max_model_len=2048))
params = engine.sampling_params(SamplingConfig(temperature=0.0, max_tokens=24))
def run():
    return [g[0].response_ids for g in engine.generate([PromptInput(p) for p in prompts], params)]
before = run()
engine.update_weights(load_file(weights))
after = run()
engine.update_weights(model)         # back to the original folder ...
restored = run()
engine.update_weights(checkpoint)    # ... then the checkpoint folder (value head beside it)
from_folder = run()
engine.shutdown()
print("RESULT" + json.dumps({"before": before, "after": after, "restored": restored, "folder": from_folder}))
"""


@pytest.mark.slow
def test_policy_weights_reach_a_running_vllm_engine(tiny_model, gp_examples, tmp_path):
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from sftrl.checkpoint import CheckpointManager

    worker = make_worker(tiny_model, value_head=True, optim={"lr": 5e-3})
    try:
        for rows in batches(gp_examples, 8, 25):
            worker.sft_step(rows)
        state = worker.policy_state_dict(dtype="float32")
        assert not any("value_head" in k for k in state)
        manager = CheckpointManager(tmp_path / "ckpt", keep=2)
        folder = manager.save(25, lambda p: worker.save_checkpoint(p, {"step": 25}))
    finally:
        worker.shutdown()
    save_file(state, str(tmp_path / "weights.safetensors"))
    tok = load_tokenizer_or_processor(str(tiny_model))
    env = gym.make(GP, prompt_style="compact")
    prompts = []
    for seed in range(4):
        obs, _ = env.reset(seed=100 + seed)
        text = tok.apply_chat_template([{"role": "user", "content": obs["text"]}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        prompts.append(tok.encode(text, add_special_tokens=False))
    trained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf = []
    for p in prompts:
        out = trained.generate(
            torch.tensor([p]), max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id
        )
        hf.append(out[0, len(p) :].tolist())
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_VLLM_SCRIPT), str(tiny_model), str(tmp_path / "weights.safetensors"),
         str(folder), json.dumps(prompts)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    got = json.loads(line[0][len("RESULT") :])
    strip = [ids[: ids.index(tok.eos_token_id) + 1] if tok.eos_token_id in ids else ids for ids in hf]
    assert got["after"] == strip  # vLLM with the pushed weights == transformers with the checkpoint
    assert got["after"] != got["before"]  # and they are not the untrained model's
    assert got["restored"] == got["before"]
    assert got["folder"] == got["after"]  # vLLM loads the checkpoint folder itself


@pytest.mark.slow
def test_tiny_vl_rl_step_uses_the_images(tiny_vl_model):
    from PIL import Image

    from services.learner.batch import build_rl_batch

    processor = load_tokenizer_or_processor(str(tiny_vl_model))
    tok = processor.tokenizer
    env = gym.make(GP, mode="image", image_size=64, prompt_style="compact", verify_iter=1)
    trajs, images = [], []
    for task in range(2):
        for k in range(2):
            obs, _ = env.reset(seed=task)
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": obs["text"]}]}
            ]
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt = processor(text=text, images=[[Image.fromarray(obs["image"])]])["input_ids"][0]
            answer = env.unwrapped.expert_answer() if k == 0 else '{"formula": "1+1"}'
            response = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
            _, reward, terminated, truncated, _ = env.step(answer)
            turn = Turn(prompt_ids=list(prompt), response_ids=response, response_logprobs=[0.0] * len(response),
                        response_text=answer, reward=float(reward), terminated=terminated, truncated=truncated)  # fmt: skip
            trajs.append(
                Trajectory(
                    episode_id=f"v-{task}-{k}", group_id=f"v-{task}", env_id=GP, seed=task, turns=[turn]
                )
            )
            images.append([obs["image"]])
    rl = RLConfig(algorithm="grpo", epochs=1)
    batch = build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id)
    batch.images = images
    worker = make_worker(tiny_vl_model, rl, micro_batch_size=3)
    try:
        with_images = worker.forward_logprobs(batch)
        other = batch.select(range(len(batch)))
        other.images = [[255 - im[0]] for im in images]  # the same prompts with inverted pictures
        changed = (worker.forward_logprobs(other) - with_images).abs()[batch.action_mask.bool()]
        assert changed.max() > 1e-6  # the pixels reach the model
        m = worker.rl_step(batch)
        assert all(math.isfinite(v) for v in m.values()) and m["clip_fraction"] == 0.0 and m["grad_norm"] > 0
    finally:
        worker.shutdown()


@pytest.mark.slow
def test_progressive_objective_mixes_sft_and_rl_losses(tiny_model, gp_examples):
    """rl_step with SFT rows minimises (1 - w) RL + w SFT in each optimizer step: at w = 1 it is an SFT
    step, at w = 0 the RL step alone (two learners from the same weights, compared after each step)."""
    from services.learner.batch import build_rl_batch

    tok = load_tokenizer_or_processor(str(tiny_model))
    rl = RLConfig(algorithm="grpo", epochs=1)
    batch = build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id)
    rows = gp_examples[:6]
    mixed, plain = (
        make_worker(tiny_model, rl, micro_batch_size=3),
        make_worker(tiny_model, rl, micro_batch_size=3),
    )

    def assert_same_weights() -> None:
        a, b = mixed.policy_state_dict("float32"), plain.policy_state_dict("float32")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6

    try:
        m = mixed.rl_step(batch, sft=rows, sft_weight=1.0)
        ref = plain.sft_step(rows)
        assert m["sft_loss"] == pytest.approx(ref["loss"], rel=1e-5) and m["sft_weight"] == 1.0
        assert_same_weights()
        m0 = mixed.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id), sft=rows,
                           sft_weight=0.0)  # fmt: skip
        plain.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id))
        assert_same_weights()
        assert math.isfinite(m0["sft_loss"])
        half = mixed.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id), sft=rows,
                             sft_weight=0.5)  # fmt: skip
        assert all(math.isfinite(v) for v in half.values()) and half["grad_norm"] > 0
        with pytest.raises(ValueError, match="sft_weight"):
            mixed.rl_step(batch, sft=rows, sft_weight=1.5)
    finally:
        mixed.shutdown()
        plain.shutdown()


@pytest.mark.slow
def test_single_pass_reuses_the_training_forward_for_old_logprobs(tiny_model):
    """One epoch, one mini-batch, no critic: skipping the scoring pass (the training forward's own
    log-probs are the old ones) gives the same update as scoring first."""
    from services.learner.batch import build_rl_batch

    tok = load_tokenizer_or_processor(str(tiny_model))
    trajs = gp_trajectories(tok)
    auto, scored = (
        RLConfig(algorithm="grpo", epochs=1),
        RLConfig(algorithm="grpo", epochs=1, recompute_logprobs=True),
    )
    a, b = (
        make_worker(tiny_model, auto, micro_batch_size=3),
        make_worker(tiny_model, scored, micro_batch_size=3),
    )
    try:
        w0 = a.policy_state_dict("float32")
        ma = a.rl_step(build_rl_batch(trajs, tok, auto, pad_id=tok.pad_token_id))
        mb = b.rl_step(build_rl_batch(trajs, tok, scored, pad_id=tok.pad_token_id))
        assert ma["policy_loss"] == pytest.approx(mb["policy_loss"], abs=1e-6)
        assert ma["clip_fraction"] == mb["clip_fraction"] == 0.0
        wa, wb = a.policy_state_dict("float32"), b.policy_state_dict("float32")
        # Equal up to float noise (eval- vs train-mode forwards). Adam's first step moves every entry by
        # about lr * sign(gradient), so on an entry whose gradient is pure noise that noise can flip a
        # whole step: compare the updates as vectors, not entry by entry.
        update = math.sqrt(sum(float(((wa[k] - w0[k]) ** 2).sum()) for k in wa))
        apart = math.sqrt(sum(float(((wa[k] - wb[k]) ** 2).sum()) for k in wa))
        assert apart < 0.01 * update, (apart, update)
        two_epochs = RLConfig(algorithm="grpo", epochs=2, recompute_logprobs=False)
        a.rl = two_epochs
        with pytest.raises(ValueError, match="recompute_logprobs=false"):
            a.rl_step(build_rl_batch(trajs, tok, two_epochs, pad_id=tok.pad_token_id))
    finally:
        a.shutdown()
        b.shutdown()


@pytest.mark.slow
def test_a_token_budget_changes_the_padding_not_the_update(tiny_model):
    """Two epochs of GRPO over multi-turn episodes in one micro-batch, and again with micro-batches
    capped at about two episodes' padded tokens (scoring pass included): the same losses and update."""
    from services.learner.batch import build_rl_batch

    tok = load_tokenizer_or_processor(str(tiny_model))
    trajs = gp_trajectories(tok)
    rl = RLConfig(algorithm="grpo", epochs=2)
    widest = max(len(t.turns[-1].prompt_ids) + len(t.turns[-1].response_ids) for t in trajs)
    one, budgeted = (
        make_worker(tiny_model, rl, micro_batch_size=32),
        make_worker(tiny_model, rl, micro_batch_size=32, micro_batch_tokens=2 * widest),
    )
    try:
        w0 = one.policy_state_dict("float32")
        ma = one.rl_step(build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id))
        mb = budgeted.rl_step(build_rl_batch(trajs, tok, rl, pad_id=tok.pad_token_id))
        assert ma["forwarded_rows"] == mb["forwarded_rows"] < ma["rows"]  # episodes still share forwards
        for key in ("policy_loss", "approx_kl", "ratio_mean", "logprob_mismatch"):
            assert ma[key] == pytest.approx(mb[key], abs=1e-6), key
        wa, wb = one.policy_state_dict("float32"), budgeted.policy_state_dict("float32")
        update = math.sqrt(sum(float(((wa[k] - w0[k]) ** 2).sum()) for k in wa))
        apart = math.sqrt(sum(float(((wa[k] - wb[k]) ** 2).sum()) for k in wa))
        assert update > 0 and apart < 1e-3 * update, (apart, update)
    finally:
        one.shutdown()
        budgeted.shutdown()


@pytest.mark.slow
def test_lr_schedule_counts_updates_not_optimizer_steps(tiny_model, gp_examples):
    """An RL update of 2 epochs x 2 mini-batches takes 4 optimizer steps at one learning rate; the
    schedule moves once per update, and a caller may name the point (an interleaved loop step's SFT
    and RL updates share theirs)."""
    from services.learner.batch import build_rl_batch
    from services.learner.ds_config import lr_lambda

    tok = load_tokenizer_or_processor(str(tiny_model))
    rl = RLConfig(algorithm="grpo", epochs=2)
    optim = {"lr": 1e-3, "scheduler": "cosine", "warmup_steps": 1, "total_steps": 5}
    worker = make_worker(tiny_model, rl, micro_batch_size=3, rl_mini_batches=2, optim=optim)
    factor = lr_lambda(worker.config.optim)
    try:
        first = worker.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id))
        assert first["optimizer_steps"] == 4 and first["lr"] == pytest.approx(1e-3 * factor(0))
        second = worker.rl_step(build_rl_batch(gp_trajectories(tok), tok, rl, pad_id=tok.pad_token_id))
        assert second["lr"] == pytest.approx(1e-3 * factor(1)) and factor(1) != factor(0)
        assert worker.sft_step(gp_examples[:4], lr_step=3)["lr"] == pytest.approx(1e-3 * factor(3))
        assert worker.sft_step(gp_examples[:4])["lr"] == pytest.approx(1e-3 * factor(4))
        with pytest.raises(ValueError, match="lr_step"):
            worker.sft_step(gp_examples[:4], lr_step=-1)
    finally:
        worker.shutdown()
