"""Evaluation metrics on hand-made answers with known values: per-field accuracy, rule adherence, the
fake-rule control, pass@k, and V-IRL's valid actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest

import services.envs  # noqa: F401
from deploy.evaluate.metrics import pass_at_k, pass_at_k_metrics, suite_metrics
from deploy.evaluate.suites import _named
from services.verifier.general_points import GPTask, card_value
from services.verifier.gp_fields import answer_fields
from sftrl.trajectory import Trajectory, Turn

GP = "sftrl/GeneralPoints-v0"


def play(env_id: str, options: dict[str, Any], seed: int, answer: Callable[[dict[str, Any]], str],
         group: str | None = None, sample: int = 0) -> Trajectory:  # fmt: skip
    """One episode of real environment steps with hand-made answers (info as the rollout records it)."""
    env = gym.make(env_id, **options)
    _, info = env.reset(seed=seed)
    turns = []
    while True:
        text = answer(info)
        _, reward, terminated, truncated, step_info = env.step(text)
        turns.append(Turn(prompt_ids=[1], response_ids=[2], response_logprobs=[0.0], response_text=text,
                          reward=reward, terminated=terminated, truncated=truncated, info=step_info))  # fmt: skip
        info = {**info, **step_info}
        if terminated or truncated:
            break
    group = group or f"task-{seed}"
    return Trajectory(episode_id=f"{group}-{sample}", group_id=group, env_id=env_id, seed=seed, turns=turns,
                      success=bool(turns[-1].info.get("success")))  # fmt: skip


def numbers_under(rule: str) -> Callable[[dict[str, Any]], str]:
    """Answers whose number field applies ``rule``, with a formula that is always wrong."""
    return lambda info: json.dumps(
        {"cards": info["cards"], "number": [card_value(c, rule) for c in info["cards"]], "formula": "1+1=24"}
    )


def solved(info: dict[str, Any]) -> str:
    return json.dumps(
        {"cards": info["cards"], "number": info["numbers"], "formula": info["solutions"][0] + "=24"}
    )


def test_answer_fields_on_hand_made_answers():
    task = GPTask(
        ("5", "K", "2", "A"), (5, 13, 2, 1), stated_numbers=(5, 13, 2, 1), training_numbers=(5, 10, 2, 1)
    )
    right = '{"cards": ["5", "K", "2", "A"], "number": [5, 13, 2, 1], "formula": "(13-5)*(2+1)=24"}'
    assert answer_fields(task, right) == {"cards": True, "numbers": True, "numbers_training_rule": False,
                                          "formula_wellformed": True, "formula_correct": True}  # fmt: skip
    training = (
        '{"cards": ["five", "king", "2", "ace"], "number": ["5", "10", "2", "1"], "formula": "(10+2)*(1+1)"}'
    )
    assert answer_fields(task, training) == {"cards": True, "numbers": False, "numbers_training_rule": True,
                                             "formula_wellformed": True, "formula_correct": False}  # fmt: skip
    broken = '{"cards": ["5"], "number": [5, 13, 2, 1], "formula": "(13-5*(2+1)"}'
    assert answer_fields(task, broken) == {"cards": False, "numbers": True, "numbers_training_rule": False,
                                           "formula_wellformed": False, "formula_correct": False}  # fmt: skip
    assert not any(answer_fields(task, "no json here").values())
    # On the training rule itself, "follows the training rule instead" does not apply.
    id_task = GPTask(("5", "K", "2", "A"), (5, 10, 2, 1), training_numbers=(5, 10, 2, 1))
    assert answer_fields(id_task, right)["numbers_training_rule"] is None


def test_adherence_counts_first_answers_only():
    # 3 episodes follow the stated OOD rule in their first answer, 1 follows the training rule.
    trajs = [
        play(GP, {"face_cards": "as_11_12_13", "verify_iter": 2}, s, numbers_under("as_11_12_13"))
        for s in range(3)
    ]
    trajs.append(play(GP, {"face_cards": "as_11_12_13", "verify_iter": 2}, 3, numbers_under("as_10")))
    m = suite_metrics(trajs)
    assert m["adherence"] == pytest.approx(0.75) and m["field/numbers"] == pytest.approx(0.75)
    assert m["adherence_training"] == pytest.approx(0.25)
    assert (
        m["field/cards"] == 1.0 and m["field/formula_wellformed"] == 1.0 and m["field/formula_correct"] == 0.0
    )
    assert m["success"] == 0.0 and m["turns"] == 2.0


def test_fake_rule_control_rewards_ignoring_the_prompt():
    fake = {"face_cards": "as_11_12_13", "scored_face_cards": "as_10", "verify_iter": 1}

    def ignores_prompt(info: dict[str, Any]) -> str:  # applies the training rule to the cards
        return solved(info)  # info["numbers"] are the scored (training-rule) numbers

    m = suite_metrics([play(GP, fake, s, ignores_prompt) for s in range(4)])
    assert m["success"] == 1.0 and m["adherence"] == 0.0 and m["adherence_training"] == 1.0


def test_pass_at_k_known_values():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0 and pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_k_over_groups_of_real_episodes():
    options = {"verify_iter": 1}
    wrong = numbers_under("as_10")
    # task A: 1 of 4 samples solved; task B: 4 of 4; every sample of a task is the same hand.
    trajs = [play(GP, options, 0, solved if k == 0 else wrong, group="A", sample=k) for k in range(4)]
    trajs += [play(GP, options, 1, solved, group="B", sample=k) for k in range(4)]
    m = pass_at_k_metrics(trajs)
    assert m == pytest.approx({"pass@1": (0.25 + 1) / 2, "pass@2": (0.5 + 1) / 2, "pass@4": 1.0})
    assert suite_metrics(trajs)["pass@2"] == pytest.approx(0.75)
    assert pass_at_k_metrics(trajs[:1]) == {}  # one sample per task: no pass@k
    assert _named({"pass@2": 0.75, "field/numbers": 1.0}, "ood") == {
        "pass@2/ood": 0.75,
        "field/ood/numbers": 1.0,
    }


def test_virl_valid_action_is_the_analogue_of_adherence():
    env_id = "sftrl/VIRL-v0"

    def answer(action: str) -> Callable[[dict[str, Any]], str]:
        return lambda info: json.dumps(
            {
                "current observation": "You are not at an intersection.",
                "current instruction": "go",
                "action": action,
            }
        )

    # "turn_direction(left)" is a relative action: outside the absolute action space the prompt states.
    outside = suite_metrics(
        [play(env_id, {"actions": "absolute", "verify_iter": 1}, 0, answer("turn_direction(left)"))]
    )
    inside = suite_metrics(
        [play(env_id, {"actions": "relative", "verify_iter": 1}, 0, answer("turn_direction(left)"))]
    )
    assert outside["valid_action"] == 0.0 and inside["valid_action"] == 1.0


class ScriptedRollout:
    """A stand-in for the rollout actors that plays real environment episodes with a fixed policy (no
    model: this checks how ``evaluate`` asks for samples and names the metrics, not a model)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, set[str]]] = []

    def play(self, specs: list[Any], sampling: Any) -> list[Trajectory]:
        self.calls.append((len(specs), sampling.temperature, {s.group_id for s in specs}))
        out = []
        for spec in specs:
            sample = int(spec.episode_id.rsplit("-", 1)[1])
            policy = solved if sample % 2 == 0 else numbers_under("as_10")  # half the samples solve it
            out.append(play(spec.env_id, spec.env_options, spec.seed, policy, spec.group_id, sample))
        return out


def test_evaluate_adds_pass_at_k_from_sampled_episodes():
    from deploy.evaluate.suites import evaluate
    from services.rollout.config import SamplingConfig

    rollout = ScriptedRollout()
    suites = {"id": {}, "fake_rule": {"face_cards": "as_11_12_13", "scored_face_cards": "as_10"}}
    metrics, played = evaluate(rollout, GP, {"verify_iter": 1}, suites, episodes=3, seed=7,
                               sampling=SamplingConfig(temperature=0.0), pass_k=4, pass_k_temperature=0.8)  # fmt: skip
    # both suites in one call: 3 greedy episodes each, then 3 tasks x 4 samples at the pass@k temperature
    assert [(n, t, len(g)) for n, t, g in rollout.calls] == [(6, 0.0, 3), (24, 0.8, 3)]
    for suite in suites:
        assert metrics[f"pass@1/{suite}"] == pytest.approx(0.5) and metrics[f"pass@4/{suite}"] == 1.0
        assert metrics[f"pass@2/{suite}"] == pytest.approx(1 - 1 / 6)  # 2 of 4 solved: 1 - C(2,2)/C(4,2)
        assert len(played[suite]) == 3 and metrics[f"success/{suite}"] == 1.0  # greedy: sample 0 solves
    assert metrics["adherence/id"] == 1.0 and "adherence_training/id" not in metrics
    assert metrics["adherence/fake_rule"] == 0.0 and metrics["adherence_training/fake_rule"] == 1.0
