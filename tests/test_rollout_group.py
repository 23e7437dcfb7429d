"""Rollout actors over Ray: several actors in a placement group, environment actors,
weights pushed through the object store, and a killed actor replaced with its episodes re-run: killed
while playing, between batches, and while a weight push waits on it."""

from __future__ import annotations

import os
import signal
import threading
import time

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
        "num_actors": 2, "cpus_per_actor": 1, "env_actors": 1, "max_actor_restarts": 3,
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

        # killed while a push is in flight: the actor is frozen (SIGSTOP) so that the push reaches it
        # and cannot answer, then SIGKILLed; the push replaces it and the replacement holds version 7
        pid = ray.get(group.actors[1].__ray_call__.remote(lambda worker: os.getpid()))
        os.kill(pid, signal.SIGSTOP)
        pushed: list[int] = []
        push = threading.Thread(target=lambda: pushed.append(group.update_weights(weights, version=7)))
        push.start()
        time.sleep(2.0)
        assert push.is_alive() and not pushed  # waiting on the frozen actor
        os.kill(pid, signal.SIGKILL)
        push.join(timeout=300)
        assert pushed == [7] and group.restarts == 3 and group.policy_versions() == [7, 7]
        trajs = group.play(specs)
        assert [t.episode_id for t in trajs] == [s.episode_id for s in specs]  # every episode once
        assert {t.turns[0].policy_version for t in trajs} == {7}
    finally:
        group.shutdown()
