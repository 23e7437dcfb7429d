"""The environments are usable by RLlib: registered with ray.tune and built inside a Ray worker."""

from __future__ import annotations

import pytest
import ray
from ray.tune.registry import ENV_CREATOR, _global_registry

from services.envs import ENV_ENTRY_POINTS, register_with_ray


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_register_env_and_build_in_a_worker(local_ray):
    assert set(register_with_ray()) == set(ENV_ENTRY_POINTS)

    @ray.remote
    def play(env_id: str, config: dict) -> tuple[str, float]:
        # What an RLlib env runner does: look the creator up in the tune registry, then build it.
        creator = _global_registry.get(ENV_CREATOR, env_id)
        env = creator(config)
        obs, info = env.reset(seed=0)
        expert = env.unwrapped.expert_answer()
        _, reward, *_ = env.step(expert)
        return obs["text"], float(reward)

    text, reward = ray.get(play.remote("sftrl/GeneralPoints-v0", {"face_cards": "as_11_12_13"}))
    assert "11" in text and reward == 5.0
    text, reward = ray.get(play.remote("sftrl/VIRL-v0", {"actions": "relative"}))
    assert text and reward == 1.0
