"""The turns of an episode share one forward: which rows host which, how episodes fill micro-batches,
and how a host's outputs are spread back to its rows (pure functions; the learner's use of them is
tested against per-row scoring in tests/test_learner.py)."""

from __future__ import annotations

import pytest
import torch

from services.learner.batch import build_rl_batch, row_units
from services.learner.config import RLConfig
from services.learner.sharing import forwarded, pack_episodes, prefix_hosts, spread
from sftrl.trajectory import Trajectory, Turn

GRPO = RLConfig(algorithm="grpo")


def turn(prompt: list[int], response: list[int], reward: float = 0.0) -> Turn:
    return Turn(prompt_ids=prompt, response_ids=response, response_logprobs=[0.0] * len(response),
                response_text="", reward=reward)  # fmt: skip


def episode(name: str, turns: int, start: int = 10, feedback: int = 2) -> Trajectory:
    """A token-in, token-out conversation: each prompt is the previous prompt + response + feedback."""
    prompt, played = [start, start + 1, start + 2], []
    for k in range(turns):
        response = [100 + k, 101 + k]
        played.append(turn(list(prompt), response, reward=float(k)))
        prompt = prompt + response + [50 + k] * feedback
    return Trajectory(episode_id=name, group_id=name, env_id="x", seed=0, turns=played)


def test_an_episode_is_hosted_by_its_last_turn():
    batch = build_rl_batch(
        [episode("a", 3), episode("b", 1), episode("c", 2, start=20)], None, GRPO, pad_id=0
    )
    assert batch.episode_ids == ["a", "a", "a", "b", "c", "c"]
    assert prefix_hosts(batch) == [2, 2, 2, 3, 5, 5]
    assert forwarded(batch) == (3, int(batch.num_tokens[[2, 3, 5]].sum()))


def test_rows_that_are_not_prefixes_keep_their_own_forward():
    cut = episode("a", 3)
    cut.turns[2].prompt_ids = cut.turns[2].prompt_ids[2:]  # as max_len cuts a prompt from the left
    other = episode("b", 2)
    other.turns[1].prompt_ids[0] = 99  # a prompt that does not continue the previous turn
    batch = build_rl_batch([cut, other], None, GRPO, pad_id=0)
    assert prefix_hosts(batch) == [1, 1, 2, 3, 4]  # a's turn 0 lies in turn 1; turn 2 and b alone


def test_images_must_be_a_prefix_too():
    batch = build_rl_batch([episode("a", 2)], None, GRPO, pad_id=0)
    batch.images = [["img0", "img1"], ["img0"]]  # the earlier turn shows more pictures: no sharing
    assert prefix_hosts(batch) == [0, 1]
    batch.images = [["img0"], ["img0", "img1"]]
    assert prefix_hosts(batch) == [1, 1]


def test_identical_rows_share_one_host():
    trajectory = episode("a", 1)
    trajectory.turns.append(trajectory.turns[0].model_copy())
    batch = build_rl_batch([trajectory], None, GRPO, pad_id=0)
    assert prefix_hosts(batch) == [0, 0]


def test_episodes_fill_micro_batches_by_forwarded_rows():
    batch = build_rl_batch([episode("a", 3), episode("b", 1), episode("c", 2), episode("d", 4)], None, GRPO,
                           pad_id=0)  # fmt: skip
    units, hosts = row_units(batch), prefix_hosts(batch)
    assert units == [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]]
    assert pack_episodes(units, hosts, 2) == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert pack_episodes(units, hosts, 1) == [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]]
    # an episode whose turns share nothing is cut into chunks of `capacity` rows
    unshared = list(range(len(batch)))
    assert pack_episodes(units, unshared, 2) == [[0, 1], [2], [3], [4, 5], [6, 7], [8, 9]]
    with pytest.raises(ValueError, match="capacity"):
        pack_episodes(units, hosts, 0)


def test_a_token_budget_caps_padded_tokens_per_micro_batch():
    """Under a budget a micro-batch holds forwarded rows x its longest row <= the budget: rows that
    come longest first share a micro-batch with rows of their own length, not the short ones'."""
    units, hosts, lengths = [[0], [1], [2], [3]], [0, 1, 2, 3], [100, 90, 50, 40]
    assert pack_episodes(units, hosts, 8) == [[0, 1, 2, 3]]
    assert pack_episodes(units, hosts, 8, lengths, 200) == [[0, 1], [2, 3]]
    assert pack_episodes(units, hosts, 1, lengths, 10_000) == [[0], [1], [2], [3]]  # rows still cap
    # an episode is costed by its forwarded rows and its longest one; alone over the budget, it stays whole
    assert pack_episodes([[0, 1], [2], [3]], [1, 1, 2, 3], 8, [60, 300, 50, 40], 200) == [[0, 1], [2, 3]]
    for budget, given in ((0, lengths), (100, None)):
        with pytest.raises(ValueError, match="token budget"):
            pack_episodes(units, hosts, 8, given, budget)


def test_spread_gives_each_row_its_hosts_positions_and_gradients():
    batch = build_rl_batch([episode("a", 2)], None, GRPO, pad_id=0)
    hosts = prefix_hosts(batch)
    width = batch.input_ids.shape[1]
    host_values = torch.arange(1.0, width + 1).reshape(1, width).requires_grad_()
    out = spread(host_values, hosts, [1], batch.attention_mask)
    first = int(batch.num_tokens[0])
    assert out[1].tolist() == host_values[0].tolist()
    assert out[0, :first].tolist() == host_values[0, :first].tolist()
    assert out[0, first:].abs().sum() == 0  # past the row's end: not its tokens
    out.sum().backward()
    expected = torch.ones(width)
    expected[:first] += 1  # the shared positions collect the gradients of both rows
    assert host_values.grad is not None and host_values.grad[0].tolist() == expected.tolist()
