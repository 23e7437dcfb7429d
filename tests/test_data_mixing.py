"""Data mixing: the RL model's successes, the SFT model's only where the RL model failed."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from deploy.studies.data_mixing import DataMixConfig, demonstration_from, mix_datasets
from services.learner.sft_data import load_demonstrations
from sftrl.trajectory import Trajectory, Turn

GP = "sftrl/GeneralPoints-v0"
OPTIONS = {"prompt_style": "compact", "verify_iter": 2}


class EnvExpertRollout:
    """Plays the real environment, answering as its expert on ``solves`` and wrongly elsewhere: it
    decides which tasks each 'model' solves, which is what the selection under test depends on. The
    vLLM path of the same code runs in test_data_mix_command_on_the_real_stack."""

    def __init__(self, solves: set[int]):
        self.solves, self.asked, self.closed = solves, [], False

    def play(self, specs, sampling):
        out = []
        rng = np.random.default_rng(0)
        for spec in specs:
            self.asked.append(spec.seed)
            env = gym.make(spec.env_id, **spec.env_options)
            obs, _ = env.reset(seed=spec.seed)
            messages, turns = [{"role": "user", "content": obs["text"]}], []
            expert = env.unwrapped
            while True:
                answer = expert.expert_answer() if spec.seed in self.solves else expert.wrong_answer(rng)
                obs, reward, term, trunc, info = env.step(answer)
                turns.append(Turn(prompt_ids=[1], response_ids=[2], response_logprobs=[-1.0], response_text=answer,
                                  reward=float(reward), terminated=term, truncated=trunc))  # fmt: skip
                messages.append({"role": "assistant", "content": answer})
                if term or trunc:
                    break
                messages.append({"role": "user", "content": obs["text"]})
            out.append(Trajectory(episode_id=spec.episode_id, group_id=spec.group_id, env_id=spec.env_id,
                                  env_options=spec.env_options, seed=spec.seed, turns=turns, messages=messages,
                                  success=bool(info.get("success"))))  # fmt: skip
        return out

    def shutdown(self):
        self.closed = True


def test_sft_outputs_only_where_rl_failed(tmp_path: Path) -> None:
    rollouts = {"rl": EnvExpertRollout({100, 101}), "sft": EnvExpertRollout({101, 102})}
    config = DataMixConfig(rl_model="rl", sft_model="sft", env={"id": GP, "options": OPTIONS}, tasks=4, seed=100,
                           out=str(tmp_path / "mixed.jsonl"))  # fmt: skip
    counts = mix_datasets(config, make_rollout=rollouts.__getitem__)
    assert counts == {
        "path": str(tmp_path / "mixed.jsonl"),
        "tasks": 4,
        "from_rl": 2,
        "from_sft": 1,
        "skipped": 1,
        "own": False,  # two models; one model twice is rejection-sampling data (its own successes)
    }
    assert rollouts["sft"].asked == [102, 103]  # the SFT model only plays what the RL model failed
    assert rollouts["rl"].closed and rollouts["sft"].closed
    demos = load_demonstrations(tmp_path / "mixed.jsonl")
    assert [d.id for d in demos] == [
        "rl-GeneralPoints-v0-s100-0", "rl-GeneralPoints-v0-s101-0", "sft-GeneralPoints-v0-s102-0"
    ]  # fmt: skip
    env = gym.make(GP, **OPTIONS)
    for demo, seed in zip(demos, (100, 101, 102), strict=True):
        assert demo.messages[0]["content"] == env.reset(seed=seed)[0]["text"]
        assert demo.messages[-1]["role"] == "assistant"


def test_image_episodes_keep_their_images(tmp_path: Path) -> None:
    from PIL import Image

    def b64(color: int) -> str:
        import base64
        import io

        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (color, 0, 0)).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    turn = {
        "prompt_ids": [1],
        "response_ids": [2],
        "response_logprobs": [-1.0],
        "response_text": "x",
        "reward": 0.0,
    }
    traj = Trajectory(
        episode_id="e", group_id="g", env_id=GP, seed=1, success=True, images=[b64(10), b64(200)],
        turns=[Turn(**turn, num_images=1), Turn(**turn, num_images=1), Turn(**turn, num_images=2)],
        messages=[{"role": r, "content": str(i)} for i, r in enumerate(["user", "assistant"] * 3)],
    )  # fmt: skip
    demo = demonstration_from(traj, "rl")
    assert [None if im is None else int(im[0, 0, 0]) for im in demo.images] == [
        10,
        None,
        None,
        None,
        200,
        None,
    ]


@pytest.mark.slow
def test_data_mix_command_on_the_real_stack(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from deploy.cli import main

    sft = shutil.copytree(tiny_model, tmp_path / "sft-model")
    out = tmp_path / "mixed.jsonl"
    args = ["data", "mix", "--rl-model", str(tiny_model), "--sft-model", str(sft), "--env", GP, "--tasks", "4",
            "--samples", "2", "--max-tokens", "16", "--out", str(out), "--prompt-style", "compact"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "episodes from the RL model" in result.output and out.exists()
    kept = load_demonstrations(out) if out.read_text().strip() else []
    assert all(d.id.startswith(("rl-", "sft-")) for d in kept)
    numbers = [int(w) for w in result.output.split() if w.isdigit()]
    assert (
        sum(numbers[-3:]) == 4 and len(kept) == numbers[-3] + numbers[-2]
    )  # rl + sft kept, the rest skipped
