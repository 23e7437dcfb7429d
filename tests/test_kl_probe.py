"""KL to the start: the estimator on hand-made distributions with a known KL, and the reference a run
keeps (round trip; a damaged file is refused with a message). Runs measuring it are in test_train."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deploy.train.kl_probe import REFERENCE_FILE, START_LOGPROBS, kl_per_token, load_reference, save_reference
from sftrl.trajectory import Trajectory, Turn


def test_forward_kl_per_token_of_two_known_distributions():
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.4, 0.4, 0.2])
    truth = float((p * np.log(p / q)).sum())  # KL(p || q) = 0.1838 nats
    rng = np.random.default_rng(0)
    # 400 answers of 10 tokens each, every token drawn from the start p
    tokens = rng.choice(3, size=(400, 10), p=p)
    start, now = np.log(p)[tokens].tolist(), np.log(q)[tokens].tolist()
    kl, low, high, count = kl_per_token(start, now)
    assert count == 4000 and low < truth < high and kl == pytest.approx(truth, abs=0.03)
    assert high - low < 0.1
    # the same distribution: zero, exactly
    assert kl_per_token(start, start)[:3] == (0.0, 0.0, 0.0)
    # answers of different lengths weigh by their tokens: (0 + 3 * 1) / 4 tokens
    assert kl_per_token([[0.0], [0.0, 0.0, 0.0]], [[0.0], [-1.0, -1.0, -1.0]])[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="same answers"):
        kl_per_token([[0.0]], [])


def _answer(i: int, tokens: int) -> Trajectory:
    turn = Turn(prompt_ids=[1, 2, 3], response_ids=list(range(10, 10 + tokens)),
                response_logprobs=[-0.5] * tokens, response_text="x", reward=0.0)  # fmt: skip
    return Trajectory(
        episode_id=f"kl-{i}", group_id=f"g{i}", env_id="sftrl/GeneralPoints-v0", seed=i, turns=[turn]
    )


def test_the_reference_round_trips_and_a_damaged_one_is_refused(tmp_path):
    samples = [_answer(i, 2 + i) for i in range(3)]
    scores = [[-math.log(2)] * (2 + i) for i in range(3)]
    written = save_reference(tmp_path, samples, scores)
    back = load_reference(tmp_path)
    assert written == back  # what the run measures against is what a resume reads
    assert back is not None and [t.turns[0].info[START_LOGPROBS] for t in back] == scores
    assert [t.turns[0].response_ids for t in back] == [t.turns[0].response_ids for t in samples]
    assert load_reference(tmp_path / "elsewhere") is None  # a run that never kept one
    lines = (tmp_path / REFERENCE_FILE).read_text().splitlines()
    (tmp_path / REFERENCE_FILE).write_text(lines[0].replace(START_LOGPROBS, "other") + "\n")
    with pytest.raises(ValueError, match="carries no start log-probs"):
        load_reference(tmp_path)
    (tmp_path / REFERENCE_FILE).write_text("{not json\n")
    with pytest.raises(ValueError, match="not a valid trajectory"):
        load_reference(tmp_path)
