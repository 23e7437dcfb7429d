"""The learner's RL math (services/learner/batch.py, services/learner/rl.py): pure torch, no engines."""

from __future__ import annotations

import math
import random

import pytest
import torch

import services.learner.rl as rl
from services.learner.batch import (
    RLBatch,
    answer_token_range,
    build_rl_batch,
    find_answer_span,
    shard_by_episode,
)
from services.learner.config import RLConfig
from services.learner.rl import (
    compute_advantages,
    entropy_from_logits,
    gae_advantages,
    group_advantages,
    minibatches,
    policy_loss,
    sequence_logprob,
    token_logprobs,
    value_loss,
)
from sftrl.trajectory import Trajectory, Turn

PAD = 3


# -- helpers ----------------------------------------------------------------------------------------


def make_turn(prompt_len: int, response_len: int, reward: float = 0.0, start: int = 10, **kw) -> Turn:
    return Turn(
        prompt_ids=list(range(start, start + prompt_len)),
        response_ids=list(range(start + 100, start + 100 + response_len)),
        response_logprobs=[-0.1 * (k + 1) for k in range(response_len)],
        response_text="x" * response_len,
        reward=reward,
        **kw,
    )


def make_traj(episode_id: str, group_id: str, turns: list[Turn]) -> Trajectory:
    return Trajectory(episode_id=episode_id, group_id=group_id, env_id="test", seed=0, turns=turns)


def random_trajectories(
    rng: random.Random, n_groups: int, per_group: int, max_turns: int
) -> list[Trajectory]:
    trajs = []
    for g in range(n_groups):
        for s in range(per_group):
            turns = [
                make_turn(
                    rng.randint(2, 12), rng.randint(1, 9), reward=rng.uniform(-3, 5), start=rng.randint(4, 50)
                )
                for _ in range(rng.randint(1, max_turns))
            ]
            trajs.append(make_traj(f"g{g}-s{s}", f"g{g}", turns))
    return trajs


def text_batch(trajs: list[Trajectory], algorithm: str = "grpo", **kw) -> RLBatch:
    return build_rl_batch(trajs, None, RLConfig(algorithm=algorithm), pad_id=PAD, **kw)


def row_keys(batch: RLBatch) -> list[tuple[str, int]]:
    return list(zip(batch.episode_ids, batch.turn_index))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


# -- log-probs and entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_match_a_naive_loop(dtype, monkeypatch):
    monkeypatch.setattr(rl, "_CHUNK_ELEMENTS", 50)  # several row chunks
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 11, generator=g).to(dtype)
    ids = torch.randint(0, 11, (4, 7), generator=g)
    out = token_logprobs(logits, ids)
    assert out.shape == (4, 7) and out.dtype == torch.float32
    expected = torch.zeros(4, 7)
    for b in range(4):
        for t in range(1, 7):
            expected[b, t] = torch.log_softmax(logits[b, t - 1].float(), dim=-1)[ids[b, t]]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.all(out[:, 0] == 0)


def test_token_logprobs_differentiable():
    logits = torch.randn(2, 5, 6, requires_grad=True)
    ids = torch.randint(0, 6, (2, 5))
    token_logprobs(logits, ids).sum().backward()
    assert logits.grad is not None and torch.all(logits.grad[:, -1] == 0)  # last logits predict nothing


def test_entropy_uniform_and_random(monkeypatch):
    out = entropy_from_logits(torch.zeros(2, 4, 16))
    torch.testing.assert_close(out[:, 1:], torch.full((2, 3), math.log(16)))
    assert torch.all(out[:, 0] == 0)
    monkeypatch.setattr(rl, "_CHUNK_ELEMENTS", 30)
    logits = torch.randn(3, 5, 9)
    want = torch.distributions.Categorical(logits=logits[:, :-1]).entropy()
    torch.testing.assert_close(entropy_from_logits(logits)[:, 1:], want, atol=1e-5, rtol=1e-5)


# -- build_rl_batch ---------------------------------------------------------------------------------


def test_build_rl_batch_shapes_masks_and_flags():
    t1 = [
        make_turn(4, 3, reward=-1.0),
        make_turn(9, 2, reward=-1.0),
        make_turn(14, 5, reward=5.0, terminated=True),
    ]
    t2 = [make_turn(6, 1, reward=-3.0, truncated=True)]
    batch = text_batch([make_traj("a", "g", t1), make_traj("b", "g", t2)])
    assert len(batch) == 4
    assert batch.input_ids.shape == (4, 19) and batch.input_ids.dtype == torch.long
    assert batch.action_mask.dtype == torch.float32 and batch.token_weights.dtype == torch.float32
    for row, turn in enumerate(t1 + t2):
        p, r = len(turn.prompt_ids), len(turn.response_ids)
        assert batch.input_ids[row, : p + r].tolist() == turn.prompt_ids + turn.response_ids
        assert torch.all(batch.input_ids[row, p + r :] == PAD)
        assert batch.attention_mask[row].sum() == p + r
        assert batch.action_mask[row].sum() == r
        assert batch.action_mask[row, p : p + r].tolist() == [1.0] * r
        assert batch.token_weights[row].tolist() == batch.action_mask[row].tolist()  # non-ppo: 1.0
        assert batch.value_index[row] == p - 1
        assert batch.input_ids[row, batch.value_index[row]] == turn.prompt_ids[-1]
        torch.testing.assert_close(
            batch.rollout_logprobs[row, p : p + r], torch.tensor(turn.response_logprobs)
        )
        assert batch.rollout_logprobs[row].count_nonzero() == r
    assert batch.dones.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert batch.turn_index == [0, 1, 2, 0]
    assert batch.episode_ids == ["a", "a", "a", "b"] and batch.group_ids == ["g"] * 4
    assert batch.rewards.tolist() == [-1.0, -1.0, 5.0, -3.0]
    assert batch.images is None and batch.old_logprobs is None and batch.advantages is None


def test_build_rl_batch_truncates_prompts_on_the_left():
    turn = make_turn(10, 4)
    short = make_turn(3, 2, start=70)
    batch = text_batch([make_traj("a", "g", [turn, short])], max_len=8)
    assert batch.input_ids.shape == (2, 8)
    assert batch.input_ids[0].tolist() == turn.prompt_ids[-4:] + turn.response_ids
    assert batch.value_index[0] == 3 and batch.input_ids[0, 3] == turn.prompt_ids[-1]
    assert batch.action_mask[0].tolist() == [0.0] * 4 + [1.0] * 4
    assert batch.input_ids[1, :5].tolist() == short.prompt_ids + short.response_ids  # untouched
    with pytest.raises(ValueError, match="no room"):
        text_batch([make_traj("a", "g", [turn])], max_len=4)


def test_build_rl_batch_ppo_needs_a_tokenizer():
    with pytest.raises(ValueError, match="tokenizer"):
        build_rl_batch([make_traj("a", "g", [make_turn(2, 2)])], None, RLConfig(algorithm="ppo"), pad_id=PAD)


# -- paper-1 token weights ------------------------------------------------------------------------

GP_ANSWER = (
    "The cards are 3, 3, 8 and 8. Dividing 8 by 3 leaves 8/3; 3 - 8/3 = 1/3, and 8 / (1/3) = 24.\n"
    '{"cards": ["3", "3", "8", "8"], "number": [3, 3, 8, 8], "formula": "8/(3-8/3)=24"}'
)


def brute_force_range(ids: list[int], tokenizer, span: tuple[int, int]) -> tuple[int, int]:
    """Tokens whose decoded characters overlap the span, from every prefix (monotone, complete chars)."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    lengths = [0]
    for k in range(1, len(ids) + 1):
        d = tokenizer.decode(ids[:k], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        lengths.append(lengths[-1] if (d.endswith("\ufffd") and not text.startswith(d)) else len(d))
    s, e = span
    hits = [i for i in range(len(ids)) if lengths[i] < e and lengths[i + 1] > s]
    return hits[0], hits[-1] + 1


def gp_turn(tokenizer, text: str, eos: bool = True) -> Turn:
    prompt = tokenizer.encode("<|im_start|>user\nMake 24.<|im_end|>\n<|im_start|>assistant\n")
    response = tokenizer.encode(text) + ([tokenizer.convert_tokens_to_ids("<|im_end|>")] if eos else [])
    return Turn(
        prompt_ids=prompt,
        response_ids=response,
        response_logprobs=[-0.5] * len(response),
        response_text=text,
        reward=5.0,
        terminated=True,
    )


def test_ppo_token_weights_find_the_formula_tokens(tokenizer):
    turn = gp_turn(tokenizer, GP_ANSWER)
    batch = build_rl_batch([make_traj("a", "g", [turn])], tokenizer, RLConfig(), pad_id=PAD)
    p = len(turn.prompt_ids)
    w = batch.token_weights[0, p : p + len(turn.response_ids)].tolist()
    assert set(w) == {0.5, 1.0}
    answer_pos = [i for i, x in enumerate(w) if x == 1.0]
    assert answer_pos == list(range(answer_pos[0], answer_pos[-1] + 1))  # one contiguous span
    answer_ids = [turn.response_ids[i] for i in answer_pos]
    decoded = tokenizer.decode(answer_ids)
    assert '"8/(3-8/3)=24"' in decoded
    assert "number" not in decoded  # tight: only tokens straddling the span's ends stick out
    assert tokenizer.decode(answer_ids[1:-1]) in '"8/(3-8/3)=24"'
    assert batch.token_weights[0, :p].sum() == 0  # never on the prompt
    assert torch.all(batch.token_weights[0, p + len(turn.response_ids) :] == 0)
    # the tokens match a brute-force mapping over every prefix
    span = find_answer_span(GP_ANSWER, ("formula",))
    assert GP_ANSWER[span[0] : span[1]] == '"8/(3-8/3)=24"'
    assert (answer_pos[0], answer_pos[-1] + 1) == brute_force_range(turn.response_ids, tokenizer, span)
    # sequence_logprob = 0.5 * reasoning + answer
    token_lp = -torch.rand(batch.input_ids.shape)
    lp = token_lp[0, p : p + len(w)]
    is_answer = torch.tensor([x == 1.0 for x in w])
    want = 0.5 * lp[~is_answer].sum() + lp[is_answer].sum()
    torch.testing.assert_close(sequence_logprob(token_lp, batch), want.reshape(1))


@pytest.mark.parametrize(
    "text, keys, expected",
    [
        (
            'I need a "formula": maybe.\n{"cards": ["A"], "formula": "(3+3)*4=24"}',
            ("formula",),
            '"(3+3)*4=24"',
        ),
        (
            '{"current observation": "a café ☕ on my left", "action": "turn_direction(northéast)"}',
            ("formula", "action"),
            '"turn_direction(northéast)"',
        ),
        ('{"Formula": "1+2+3+4=10"', ("formula",), '"1+2+3+4=10"'),  # truncated object, key case
        ('{"answer": 42}', ("formula", "action", "answer"), "42"),
        ('{"cards": ["日本", "🂡"], "formula": "8*3=24 ✓"}', ("formula",), '"8*3=24 ✓"'),
        # reasoning first: an object inside it is not the answer, whole or truncated
        (
            '<think>{"formula": "1+1=2"} no.</think>{"cards": [], "formula": "8*3=24"}',
            ("formula",),
            '"8*3=24"',
        ),
        ('<think>"formula": "1+1=2" no.</think>{"formula": "8*3=24"', ("formula",), '"8*3=24"'),
    ],
)
def test_answer_spans_with_multibyte_text(tokenizer, text, keys, expected):
    span = find_answer_span(text, keys)
    assert span is not None and text[span[0] : span[1]] == expected
    ids = tokenizer.encode(text)
    assert answer_token_range(ids, tokenizer, keys) == brute_force_range(ids, tokenizer, span)


def test_no_answer_key_means_the_whole_response_is_the_answer(tokenizer):
    turn = gp_turn(tokenizer, "I do not know how to make 24 with these cards.")
    batch = build_rl_batch([make_traj("a", "g", [turn])], tokenizer, RLConfig(), pad_id=PAD)
    assert torch.equal(batch.token_weights, batch.action_mask)
    # other algorithms: weight 1.0 on every response token whatever the text
    turn = gp_turn(tokenizer, GP_ANSWER)
    batch = build_rl_batch([make_traj("a", "g", [turn])], tokenizer, RLConfig(algorithm="grpo"), pad_id=PAD)
    assert torch.equal(batch.token_weights, batch.action_mask)


# -- advantages -----------------------------------------------------------------------------------


def test_gae_hand_computed_three_turns():
    turns = [make_turn(3, 2, -1.0), make_turn(5, 2, -1.0), make_turn(7, 2, 5.0, terminated=True)]
    batch = text_batch([make_traj("e", "g", turns)])
    order = [2, 0, 1]  # rows shuffled
    batch = batch.select(order)
    values = torch.tensor([0.5, 0.2, 1.0])[order]
    adv, ret = gae_advantages(batch, values, RLConfig(gamma=0.9, lam=0.95))
    # delta2 = 5 - 1 = 4; delta1 = -1 + .9*1 - .2 = -.3; delta0 = -1 + .9*.2 - .5 = -1.32
    a2 = 4.0
    a1 = -0.3 + 0.9 * 0.95 * a2
    a0 = -1.32 + 0.9 * 0.95 * a1
    torch.testing.assert_close(adv, torch.tensor([a0, a1, a2])[order])
    torch.testing.assert_close(ret, torch.tensor([a0 + 0.5, a1 + 0.2, a2 + 1.0])[order])


def naive_gae(rewards, values, gamma, lam):
    n = len(rewards)
    adv = []
    for k in range(n):
        total = 0.0
        for j in range(k, n):
            next_v = values[j + 1] if j + 1 < n else 0.0
            delta = rewards[j] + gamma * next_v - values[j]
            total += (gamma * lam) ** (j - k) * delta
        adv.append(total)
    return adv


def test_gae_matches_a_naive_reference_on_shuffled_mixed_episodes():
    rng = random.Random(1)
    batch = text_batch(random_trajectories(rng, 5, 3, max_turns=6))
    perm = list(range(len(batch)))
    rng.shuffle(perm)
    batch = batch.select(perm)
    values = torch.randn(len(batch), generator=torch.Generator().manual_seed(3))
    cfg = RLConfig(gamma=0.9, lam=0.95)
    adv, ret = gae_advantages(batch, values, cfg)
    for ep in set(batch.episode_ids):
        rows = sorted(
            (i for i in range(len(batch)) if batch.episode_ids[i] == ep), key=lambda i: batch.turn_index[i]
        )
        want = naive_gae([float(batch.rewards[i]) for i in rows], [float(values[i]) for i in rows], 0.9, 0.95)
        torch.testing.assert_close(adv[rows], torch.tensor(want), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, adv + values)


def test_group_advantages_grpo_rloo_and_singletons():
    rng = random.Random(2)
    trajs = random_trajectories(rng, 3, 4, max_turns=3)
    trajs.append(make_traj("alone", "solo", [make_turn(3, 3, 2.0), make_turn(4, 4, 1.0)]))
    batch = text_batch(trajs)
    returns = {t.episode_id: t.total_reward for t in trajs}
    grpo = group_advantages(batch, RLConfig(algorithm="grpo"))
    rloo = group_advantages(batch, RLConfig(algorithm="rloo"))
    for g in ("g0", "g1", "g2"):
        eps = [t.episode_id for t in trajs if t.group_id == g]
        first_row = {ep: batch.episode_ids.index(ep) for ep in eps}
        scores = torch.tensor([float(grpo[first_row[ep]]) for ep in eps])
        assert abs(float(scores.mean())) < 1e-5 and abs(float(scores.std()) - 1.0) < 1e-4
        for ep in eps:
            others = [returns[o] for o in eps if o != ep]
            assert float(rloo[first_row[ep]]) == pytest.approx(
                returns[ep] - sum(others) / len(others), abs=1e-5
            )
    for i, ep in enumerate(batch.episode_ids):  # broadcast to every turn
        first = batch.episode_ids.index(ep)
        assert grpo[i] == grpo[first] and rloo[i] == rloo[first]
    alone = [i for i, ep in enumerate(batch.episode_ids) if ep == "alone"]
    assert grpo[alone].tolist() == [0.0, 0.0] and rloo[alone].tolist() == [0.0, 0.0]


def test_compute_advantages_per_algorithm():
    rng = random.Random(4)
    trajs = random_trajectories(rng, 3, 4, max_turns=3)
    batch = compute_advantages(text_batch(trajs), RLConfig(algorithm="grpo"))
    torch.testing.assert_close(
        batch.advantages, group_advantages(batch, RLConfig(algorithm="grpo"))
    )  # not re-normalised
    assert batch.returns[0] == pytest.approx(trajs[0].total_reward)
    batch = compute_advantages(text_batch(trajs), RLConfig(algorithm="rloo"))
    assert abs(float(batch.advantages.mean())) < 1e-5 and float(
        batch.advantages.std(unbiased=False)
    ) == pytest.approx(1.0, abs=1e-4)
    values = torch.randn(len(batch))
    for algorithm in ("ppo", "ppo_token"):
        b = text_batch(trajs, algorithm="grpo")
        with pytest.raises(ValueError, match="values"):
            compute_advantages(b, RLConfig(algorithm=algorithm))
        raw, ret = gae_advantages(b, values, RLConfig())
        compute_advantages(b, RLConfig(algorithm=algorithm, normalize_advantages=False), values)
        torch.testing.assert_close(b.advantages, raw)
        torch.testing.assert_close(b.returns, ret)
        torch.testing.assert_close(b.old_values, values)


# -- losses ---------------------------------------------------------------------------------------


def loss_batch(algorithm: str, seed: int = 0) -> tuple[RLBatch, torch.Tensor]:
    """Three turns with varied prompt/response lengths, half reasoning weights, fixed advantages."""
    trajs = [
        make_traj("a", "g", [make_turn(3, 4), make_turn(5, 2, terminated=True)]),
        make_traj("b", "g", [make_turn(2, 5, terminated=True)]),
    ]
    batch = text_batch(trajs)
    batch.token_weights = (
        batch.action_mask
        * torch.tensor([0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])[: batch.action_mask.shape[1]]
    )
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch.input_ids.shape, generator=g) * batch.action_mask
    batch.old_logprobs = old
    batch.rollout_logprobs = old + 0.01 * batch.action_mask
    batch.advantages = torch.tensor([1.5, -0.5, 2.0])
    return batch, old.clone()


@pytest.mark.parametrize("algorithm", ["ppo", "ppo_token", "grpo", "rloo"])
def test_policy_loss_at_the_old_policy(algorithm):
    batch, old = loss_batch(algorithm)
    cfg = RLConfig(algorithm=algorithm)
    new = old.clone().requires_grad_(True)
    loss, metrics = policy_loss(new, batch, cfg)
    mask = batch.action_mask
    if algorithm == "ppo":
        want = -batch.advantages.mean()
    else:
        want = -(batch.advantages[:, None] * mask).sum() / mask.sum()
    torch.testing.assert_close(loss.detach(), want)
    assert metrics["clip_fraction"] == 0.0 and metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert metrics["advantage_mean"] == pytest.approx(float(batch.advantages.mean()))
    assert metrics["logprob_mismatch"] == pytest.approx(0.01, abs=1e-6)
    assert "kl_ref" not in metrics and "entropy" not in metrics
    loss.backward()
    assert torch.all(new.grad[mask == 0] == 0)  # prompts and padding get nothing
    assert torch.all(new.grad[mask == 1] != 0)
    if algorithm == "ppo":  # d loss / d lp = -A * w / B
        want_grad = -batch.advantages[:, None] * batch.token_weights / len(batch)
        torch.testing.assert_close(new.grad, want_grad)


def test_ppo_ratio_clipping_is_per_turn():
    batch, old = loss_batch("ppo")
    cfg = RLConfig(algorithm="ppo", clip=0.1)
    p = int(batch.value_index[0]) + 1
    answer = p + 2  # a weight-1.0 token of row 0 (A = 1.5 > 0)
    assert batch.token_weights[0, answer] == 1.0
    new = old.clone()
    new[0, answer] += math.log(1.5)
    new[1, int(batch.value_index[1]) + 1] += math.log(1.5)  # row 1 (A = -0.5): no clipping on this side
    new.requires_grad_(True)
    loss, metrics = policy_loss(new, batch, cfg)
    a = batch.advantages
    want = -(1.1 * a[0] + 1.5 * a[1] + a[2]) / 3
    torch.testing.assert_close(loss.detach(), want)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    assert metrics["ratio_mean"] == pytest.approx((1.5 + 1.5 + 1.0) / 3, rel=1e-5)
    loss.backward()
    assert torch.all(new.grad[0] == 0)  # the clipped row pushes nothing
    assert new.grad[1].abs().sum() > 0 and new.grad[2].abs().sum() > 0


@pytest.mark.parametrize("algorithm", ["ppo_token", "grpo", "rloo"])
def test_token_level_ratio_clipping(algorithm):
    batch, old = loss_batch(algorithm)
    mask = batch.action_mask
    new = old.clone()
    new[0] += math.log(1.5) * mask[0]  # every token of row 0 (A = 1.5 > 0): clipped at 1.1
    new[1] -= math.log(2.0) * mask[1]  # every token of row 1 (A < 0), ratio 0.5: clipped at 0.9
    new.requires_grad_(True)
    loss, metrics = policy_loss(new, batch, RLConfig(algorithm=algorithm, clip=0.1))
    a = batch.advantages
    n = mask.sum(dim=1)
    want = -(1.1 * a[0] * n[0] + 0.9 * a[1] * n[1] + a[2] * n[2]) / n.sum()
    torch.testing.assert_close(loss.detach(), want)
    assert metrics["clip_fraction"] == pytest.approx(float((n[0] + n[1]) / n.sum()))
    loss.backward()
    assert torch.all(new.grad[:2] == 0) and torch.all(new.grad[2][mask[2] == 1] != 0)


@pytest.mark.parametrize("algorithm", ["ppo", "ppo_token", "grpo"])
def test_kl_and_entropy_terms(algorithm):
    batch, old = loss_batch(algorithm)
    mask = batch.action_mask
    cfg = RLConfig(algorithm=algorithm, kl_coef=0.1, entropy_coef=0.01)
    new = old.clone()
    batch.ref_logprobs = new.clone()
    base, _ = policy_loss(new, batch, RLConfig(algorithm=algorithm))
    loss, metrics = policy_loss(new, batch, cfg)
    assert metrics["kl_ref"] == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(loss, base)
    batch.ref_logprobs = old - 0.3 * mask
    loss, metrics = policy_loss(new, batch, cfg)
    k3 = math.exp(-0.3) + 0.3 - 1
    assert metrics["kl_ref"] == pytest.approx(k3, rel=1e-5) and metrics["kl_ref"] > 0
    torch.testing.assert_close(loss, base + 0.1 * k3)
    entropy = torch.full(mask.shape, 2.0) * mask + 7.0 * (1 - mask)  # off-response values ignored
    loss_e, metrics = policy_loss(new, batch, cfg, entropy=entropy)
    assert metrics["entropy"] == pytest.approx(2.0)
    torch.testing.assert_close(loss_e, loss - 0.01 * 2.0)
    # no reference in the batch, or kl_coef 0: no KL term
    batch.ref_logprobs = None
    assert "kl_ref" not in policy_loss(new, batch, cfg)[1]


def test_token_normalizer_gives_an_exact_token_mean_over_micro_batches():
    batch, old = loss_batch("grpo")
    new = old + 0.05 * torch.randn(old.shape) * batch.action_mask
    cfg = RLConfig(algorithm="grpo", kl_coef=0.2)
    batch.ref_logprobs = old
    full, _ = policy_loss(new, batch, cfg)
    total = float(batch.action_mask.sum())
    parts = [batch.select(rows) for rows in ([0, 2], [1])]
    news = [new[[0, 2]][:, : parts[0].input_ids.shape[1]], new[[1]][:, : parts[1].input_ids.shape[1]]]
    summed = sum(policy_loss(n, b, cfg, token_normalizer=total)[0] for n, b in zip(news, parts))
    torch.testing.assert_close(summed, full)


def test_value_loss_plain_and_clipped():
    batch, _ = loss_batch("ppo")
    batch.returns = torch.tensor([1.0, 2.0, -1.0])
    values = torch.tensor([0.5, 2.5, 0.0], requires_grad=True)
    cfg = RLConfig(value_coef=0.5, clip=0.1)
    loss, metrics = value_loss(values, batch, cfg)
    plain = 0.5 * ((values.detach() - batch.returns) ** 2).mean()
    torch.testing.assert_close(loss.detach(), 0.5 * plain)
    assert metrics["value_loss"] == pytest.approx(float(plain))
    batch.old_values = torch.tensor([0.5, 2.0, -0.5])
    loss, metrics = value_loss(values, batch, cfg)
    # row 1: V moved 0.5 away from old 2.0 (= return): clipped to 2.1, err max(0.25, 0.01) = 0.25
    # row 2: clipped to -0.4, err max(1.0, 0.36) = 1.0; row 0 unchanged 0.25
    torch.testing.assert_close(loss.detach(), torch.tensor(0.5 * 0.5 * (0.25 + 0.25 + 1.0) / 3))
    assert metrics["value_clip_fraction"] == 0.0
    values2 = torch.tensor([1.5, 2.0, -0.5], requires_grad=True)  # row 0 overshoots: clipped term larger
    loss, metrics = value_loss(values2, batch, cfg)
    # row 0: unclipped (1.5-1)^2 = .25, clipped 0.6 -> (0.6-1)^2 = .16: max .25 (no clip active)
    assert metrics["value_clip_fraction"] == 0.0
    batch.old_values = torch.tensor([0.0, 2.0, -0.5])
    values3 = torch.tensor([1.0, 2.0, -0.5], requires_grad=True)  # at the return, but far from old
    loss, metrics = value_loss(values3, batch, cfg)
    assert metrics["value_clip_fraction"] == pytest.approx(1 / 3)  # (0.1 - 1)^2 > 0
    loss.backward()
    assert values3.grad[0] == 0  # the clipped branch is constant in V
    no_clip = RLConfig(value_clip=0.0)
    assert value_loss(values3, batch, no_clip)[0].item() == pytest.approx(0.5 * 0.5 * (0 + 0 + 0.25) / 3)


# -- select, shards, minibatches ----------------------------------------------------------------


def test_select_keeps_fields_consistent_and_trims_padding():
    rng = random.Random(5)
    batch = text_batch(random_trajectories(rng, 2, 3, max_turns=3))
    batch.old_logprobs = torch.randn(batch.input_ids.shape)
    batch.advantages = torch.arange(len(batch), dtype=torch.float32)
    batch.images = [[f"img{i}"] for i in range(len(batch))]
    shortest = int(batch.num_tokens.argmin())
    sub = batch.select([shortest])
    assert sub.input_ids.shape == (1, int(batch.num_tokens[shortest]))
    assert sub.old_logprobs.shape == sub.input_ids.shape and sub.ref_logprobs is None
    rows = [4, 0, 2]
    sub = batch.select(torch.tensor(rows))
    assert sub.episode_ids == [batch.episode_ids[i] for i in rows]
    assert sub.turn_index == [batch.turn_index[i] for i in rows]
    assert sub.images == [batch.images[i] for i in rows]
    assert sub.advantages.tolist() == [float(i) for i in rows]
    width = sub.input_ids.shape[1]
    assert width == int(batch.num_tokens[rows].max())
    assert torch.equal(sub.input_ids, batch.input_ids[rows, :width])
    assert torch.equal(sub.token_weights, batch.token_weights[rows, :width])
    assert len(batch.select([])) == 0
    moved = sub.to("cpu")
    assert torch.equal(moved.input_ids, sub.input_ids) and moved.episode_ids == sub.episode_ids


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shard_by_episode_keeps_episodes_and_groups_whole(world_size):
    rng = random.Random(world_size)
    trajs = random_trajectories(rng, 7, 2, max_turns=5) + random_trajectories(rng, 1, 1, max_turns=2)
    batch = text_batch(trajs)
    shards = shard_by_episode(batch, world_size)
    assert len(shards) == world_size
    seen = [key for shard in shards for key in row_keys(shard)]
    assert sorted(seen) == sorted(row_keys(batch))  # every row exactly once
    owner_ep, owner_group = {}, {}
    for s, shard in enumerate(shards):
        for ep, grp in zip(shard.episode_ids, shard.group_ids):
            assert owner_ep.setdefault(ep, s) == s
            assert owner_group.setdefault(grp, s) == s
    loads = [int(shard.num_tokens.sum()) for shard in shards]
    biggest_group = max(
        int(batch.num_tokens[[i for i, g in enumerate(batch.group_ids) if g == grp]].sum())
        for grp in set(batch.group_ids)
    )
    assert max(loads) - min(loads) <= biggest_group
    again = shard_by_episode(batch, world_size)
    assert [row_keys(s) for s in again] == [row_keys(s) for s in shards]  # deterministic
    # by episode only: finer units, groups may split but episodes never do
    for shard in shard_by_episode(batch, world_size, keep_groups=False):
        for ep in set(shard.episode_ids):
            assert shard.episode_ids.count(ep) == batch.episode_ids.count(ep)


def test_minibatches_cover_every_row_once_per_epoch():
    rng = random.Random(6)
    batch = text_batch(random_trajectories(rng, 3, 3, max_turns=3))
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(2):
        parts = list(minibatches(batch, 4, gen))
        assert all(len(p) <= 4 for p in parts) and sum(len(p) for p in parts) == len(batch)
        keys = [k for p in parts for k in row_keys(p)]
        assert sorted(keys) == sorted(row_keys(batch))
        orders.append(keys)
    assert orders[0] != orders[1]  # reshuffled each epoch
    first = [k for p in minibatches(batch, 4, torch.Generator().manual_seed(0)) for k in row_keys(p)]
    assert first == orders[0]  # same seed, same order


def test_logits_from_the_first_needed_position_give_the_same_logprobs():
    """The learner runs the output head only from the position before the first model-produced token:
    the log-probs (and entropies) of model-produced tokens are those of the full computation."""
    from services.learner.rl import entropy_from_logits, logits_needed_from, token_logprobs, widen

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 50, generator=gen)
    ids = torch.randint(0, 50, (3, 12), generator=gen)
    mask = torch.zeros(3, 12)
    mask[0, 6:9], mask[1, 4:12], mask[2, 7:8] = 1, 1, 1
    start = logits_needed_from(mask)
    assert start == 3
    on = mask.bool()
    tail_lp = widen(token_logprobs(logits[:, start:], ids[:, start:]), 12)
    torch.testing.assert_close(tail_lp[on], token_logprobs(logits, ids)[on])
    tail_ent = widen(entropy_from_logits(logits[:, start:]), 12)
    torch.testing.assert_close(tail_ent[on], entropy_from_logits(logits)[on])
    assert logits_needed_from(torch.zeros(2, 5)) == 4 and logits_needed_from(torch.ones(2, 5)) == 0
