"""What every registered environment shares: gymnasium's own checks, and one attempt bookkeeping.

Each task allows ``verify_iter`` answers; every step's info carries ``attempt`` and
``attempts_left``; the answer that spends the last attempt adds "attempts_exhausted" (and the
task's penalty: -1 in GeneralPoints, none elsewhere) and ends the episode as ``terminated``.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from services.envs import ENV_ENTRY_POINTS
from services.envs.base import SftrlEnv

SMALL = {  # options that keep the rendering cheap; everything else is the default
    "sftrl/GeneralPoints-v0": {},
    "sftrl/VIRL-v0": {},
    "sftrl/VisualQA-v0": {"mode": "text"},
}
PENALTY = {"sftrl/GeneralPoints-v0": -1.0, "sftrl/VIRL-v0": 0.0, "sftrl/VisualQA-v0": 0.0}


def _env(env_id: str, **options: Any) -> SftrlEnv:
    env = gym.make(env_id, **SMALL[env_id], **options).unwrapped
    assert isinstance(env, SftrlEnv)
    return env


def test_every_registered_environment_is_covered():
    assert set(SMALL) == set(ENV_ENTRY_POINTS) == set(PENALTY)


@pytest.mark.parametrize("env_id", sorted(ENV_ENTRY_POINTS))
@pytest.mark.parametrize("verify_iter", [1, 3])
def test_gymnasium_check_env_passes(env_id: str, verify_iter: int) -> None:
    """With a single attempt too: a failed last answer is a terminal state, not a truncation."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(_env(env_id, verify_iter=verify_iter), skip_render_check=True)


@pytest.mark.parametrize("env_id", sorted(ENV_ENTRY_POINTS))
def test_attempts_are_counted_alike(env_id: str) -> None:
    env = _env(env_id, verify_iter=3)
    rng = np.random.default_rng(0)
    env.reset(seed=11)
    for number in (1, 2, 3):
        wrong = env.wrong_answer(rng)
        _, reward, terminated, truncated, info = env.step(wrong)
        assert (info["attempt"], info["attempts_left"]) == (number, 3 - number)
        assert not truncated
        last = number == 3
        assert terminated == last and ("attempts_exhausted" in info["errors"]) == last
        assert not info["success"] and np.isfinite(reward)
    with pytest.raises(RuntimeError):
        env.step(env.expert_answer())


@pytest.mark.parametrize("env_id", sorted(ENV_ENTRY_POINTS))
def test_the_last_attempt_carries_the_task_penalty(env_id: str) -> None:
    """The same wrong answer scores ``PENALTY`` lower when it spends the last attempt."""
    rng = np.random.default_rng(0)
    single, double = _env(env_id, verify_iter=1), _env(env_id, verify_iter=2)
    single.reset(seed=5)
    double.reset(seed=5)
    wrong = single.wrong_answer(rng)
    _, last_reward, terminated, _, info = single.step(wrong)
    _, first_reward, still_on, _, _ = double.step(wrong)
    assert terminated and not still_on and "attempts_exhausted" in info["errors"]
    assert last_reward - first_reward == pytest.approx(PENALTY[env_id])


@pytest.mark.parametrize("env_id", sorted(ENV_ENTRY_POINTS))
def test_a_right_answer_after_a_wrong_one_succeeds(env_id: str) -> None:
    env = _env(env_id, verify_iter=2)
    env.reset(seed=3)
    _, _, terminated, _, info = env.step(env.wrong_answer(np.random.default_rng(0)))
    assert not terminated and info["attempts_left"] == 1
    total_steps = 0
    while True:  # V-IRL routes take several right answers
        _, _, terminated, truncated, info = env.step(env.expert_answer())
        total_steps += 1
        assert not truncated and "attempts_exhausted" not in info["errors"]
        if terminated:
            break
        assert total_steps < 100
    assert info["success"]
