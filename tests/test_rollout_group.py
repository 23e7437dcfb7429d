"""Rollout actors over Ray: several actors in a placement group, environment actors,
weights pushed through the object store, and a killed actor replaced with its episodes re-run."""

from __future__ import annotations

import pytest
import ray
from safetensors.torch import load_file

from services.rollout.config import RolloutConfig
from services.rollout.group import RolloutGroup, episode_specs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    # Logical CPUs above the 2 physical ones: two rollout bundles plus small environment actors.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.fault
def test_actors_share_work_push_weights_and_survive_a_death(local_ray, tiny_model):
    config = RolloutConfig.model_validate({
        "engine": {"model": str(tiny_model), "dtype": "float32", "max_model_len": 2048},
        "sampling": {"temperature": 1.0, "max_tokens": 12, "seed": 0},
        "num_actors": 2, "cpus_per_actor": 1, "env_actors": 1, "max_actor_restarts": 2,
    })  # fmt: skip
    group = RolloutGroup(config, chunk_size=2)
    try:
        specs = episode_specs(
            "sftrl/GeneralPoints-v0", {"prompt_style": "compact", "verify_iter": 2}, 8, seed=0
        )
        killed = []

        def kill_once(chunk):
            if not killed:  # kill the other actor while it is (or is about to be) playing a chunk
                victim = group.actors[1]
                ray.kill(victim, no_restart=True)
                killed.append(victim)

        trajs = group.play(specs, on_chunk=kill_once)
        assert [t.episode_id for t in trajs] == [s.episode_id for s in specs]
        assert all(t.turns and t.turns[-1].done for t in trajs)
        assert group.restarts == 1 and group.actors[1] is not killed[0]

        weights = load_file(str(tiny_model / "model.safetensors"))
        assert group.update_weights(weights, version=5) == 5
        trajs = group.play(specs[:4])
        assert {t.turns[0].policy_version for t in trajs} == {5}
        # an actor that died between batches is replaced by the next push, and holds its weights
        ray.kill(group.actors[0], no_restart=True)
        assert group.update_weights(weights, version=6) == 6
        assert group.restarts == 2 and group.policy_versions() == [6, 6]
    finally:
        group.shutdown()
