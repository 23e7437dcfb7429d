"""Evaluation metrics on hand-made answers with known values: per-field accuracy, rule adherence, the
fake-rule control, pass@k, and V-IRL's per-point fields (action, action space, intersection claim,
the training-space control) and valid actions."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest

import services.envs  # noqa: F401
from deploy.evaluate.metrics import episode_outcomes, pass_at_k, pass_at_k_metrics, suite_metrics
from deploy.evaluate.suites import _named
from services.envs.virl.city import generated_route
from services.envs.virl.env import CITY_SEED
from services.envs.virl.routes import Route
from services.verifier.general_points import GPTask, card_value
from services.verifier.gp_fields import answer_fields, cards_named
from services.verifier.virl import VIRLStepTask, allowed_actions, verify_virl
from services.verifier.virl import answer_fields as virl_fields
from sftrl.trajectory import Trajectory, Turn

GP = "sftrl/GeneralPoints-v0"
VIRL = "sftrl/VIRL-v0"


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


def test_recognition_per_card_and_per_suit_colour_on_hand_made_answers():
    task = GPTask(("K", "3", "J", "9"), (10, 3, 10, 9), suits=("hearts", "spades", "diamonds", "clubs"))
    answer = lambda cards: json.dumps({"cards": cards, "number": [10, 3, 10, 9], "formula": "1+1=24"})  # noqa: E731
    right = answer(["K", "3", "J", "9"])
    one_black_wrong = answer(["K", "4", "J", "9"])
    reds_swapped = answer(["J", "3", "K", "9"])  # the same cards in another order: still all named
    cases = [(right, True, True, True, 4), (one_black_wrong, False, False, True, 3),
             (reds_swapped, True, True, True, 4), ("no json", False, False, False, 0),
             (answer(["Q", "Q", "Q", "Q"]), False, False, False, 0)]  # fmt: skip
    for text, cards, black, red, named in cases:
        fields = answer_fields(task, text)
        assert (fields["cards"], fields["cards_black"], fields["cards_red"]) == (cards, black, red), text
        assert cards_named(task, text) == named, text
    black_hand = GPTask(("2", "3", "4", "5"), (2, 3, 4, 5), suits=("spades",) * 4)
    assert answer_fields(black_hand, right)["cards_red"] is None and "cards_red" in answer_fields(
        black_hand, right
    )
    assert "cards_black" not in answer_fields(GPTask(("2",), (2,)), right)  # suits unknown: no colour fields

    # through real image episodes: first answers name 4, 3 and 0 of their hands' 4 cards
    def naming(k: int) -> Callable[[dict[str, Any]], str]:
        return lambda info: json.dumps(
            {"cards": info["cards"][:k] + ["Q"] * (4 - k), "number": [], "formula": "1=24"}
        )

    trajs = []
    for seed, k in ((0, 4), (1, 3), (2, 0)):
        env = gym.make(GP, mode="image", image_size=64, suits="mixed", verify_iter=1)
        _, info = env.reset(seed=seed)
        traj = play(
            GP, {"mode": "image", "image_size": 64, "suits": "mixed", "verify_iter": 1}, seed, naming(k)
        )
        traj.meta["reset_info"] = info
        trajs.append(traj)
    m = suite_metrics(trajs)
    assert m["recognition_per_card"] == pytest.approx(7 / 12)
    assert m["field/cards"] == pytest.approx(1 / 3)
    colours = [t.turns[0].info["fields"] for t in trajs]
    assert all(f.get("cards_black") is not None or f.get("cards_red") is not None for f in colours)


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


def virl_answer(action: str, at_intersection: bool) -> str:
    claim = "You are at an intersection." if at_intersection else "You are not at an intersection."
    return json.dumps({"current observation": claim, "current instruction": "go", "action": action})


def virl_episode(points: list[tuple[VIRLStepTask, list[str]]]) -> Trajectory:
    """A hand-made V-IRL episode: at each point, its task and the answers given there (the last one
    right, as the environment moves on only after a right answer); infos as the environment writes."""
    turns = []
    for task, answers in points:
        for k, text in enumerate(answers, 1):
            verdict = verify_virl(task, text)
            valid = verdict.details.get("action") in allowed_actions(task.action_space)
            info = {"attempt": k, "errors": list(verdict.errors), "fields": virl_fields(task, text),
                    "valid_action": valid}  # fmt: skip
            turns.append(Turn(prompt_ids=[1], response_ids=[2], response_logprobs=[0.0], response_text=text,
                              reward=verdict.reward, info=info))  # fmt: skip
    return Trajectory(episode_id="e-0", group_id="e", env_id=VIRL, seed=0, turns=turns, success=True)


def absolute_route() -> list[VIRLStepTask]:
    """Walk on, turn to face east at an intersection, walk on, stop at the destination (ID prompt)."""
    return [VIRLStepTask("forward()", "absolute", False), VIRLStepTask("turn_direction(east)", "absolute", True),
            VIRLStepTask("forward()", "absolute", False), VIRLStepTask("stop()", "absolute", False)]  # fmt: skip


def test_virl_first_answers_at_each_point_give_action_accuracy_and_intersection_claims():
    walk, turn, walk2, stop = absolute_route()
    episode = virl_episode([
        (walk, [virl_answer("forward()", False)]),
        # the first answer turns with a relative word (outside the stated absolute space); the second is right
        (turn, [virl_answer("turn_direction(left)", True), virl_answer("turn_direction(east)", True)]),
        (walk2, [virl_answer("forward()", True)]),  # right action, wrong intersection claim
        (stop, [virl_answer("stop()", False)]),
    ])  # fmt: skip
    m = suite_metrics([episode])
    assert m["field/action"] == 0.75 and m["field/intersection"] == 0.75 and m["field/action_valid"] == 0.75
    assert m["valid_action"] == 0.8  # over every attempt: 4 of 5
    assert m["adherence"] == 0.0 and m["answers"] == 1  # the one turn point: not in the stated space
    assert "adherence_training" not in m and "field/action_training_space" not in m  # ID: no control
    assert m["turns"] == 5.0 and m["success"] == 1.0


def test_per_episode_outcomes_keep_each_task_its_success_and_first_answer_fields():
    walk, turn, walk2, stop = absolute_route()
    episode = virl_episode([
        (walk, [virl_answer("forward()", False)]),
        (turn, [virl_answer("turn_direction(left)", True), virl_answer("turn_direction(east)", True)]),
        (walk2, [virl_answer("forward()", True)]),
        (stop, [virl_answer("stop()", False)]),
    ])  # fmt: skip
    failed = episode.model_copy(update={"seed": 9, "success": False, "turns": episode.turns[:1]})
    got = episode_outcomes([episode, failed])
    assert got["task"] == [0, 9] and got["success"] == [1, 0]
    # first answers only (the second attempt at the turn is not one): 3 of 4 actions right, then 1 of 1
    assert got["fields"]["action"] == [[3, 4], [1, 1]] and got["fields"]["intersection"] == [[3, 4], [1, 1]]
    assert got["fields"]["turn_stated_space"] == [[0, 1], [0, 0]]  # a field that did not apply: counted 0
    # the pooled field accuracy of suite_metrics is the same counts summed
    assert suite_metrics([episode, failed])["field/action"] == (3 + 1) / (4 + 1)


def test_virl_training_space_control_on_relative_prompts():
    # rule OOD: the same route with relative actions stated; the route turns right (east), then left (north)
    tasks = [VIRLStepTask("turn_direction(right)", "relative", True, training_action="turn_direction(east)"),
             VIRLStepTask("forward()", "relative", False),
             VIRLStepTask("turn_direction(left)", "relative", True, training_action="turn_direction(north)"),
             VIRLStepTask("stop()", "relative", False)]  # fmt: skip
    trained_space = ["turn_direction(east)", "forward()", "turn_direction(north)", "stop()"]
    stated_space = [t.expected_action for t in tasks]

    def episode(first: list[str]) -> Trajectory:  # first answers as given, then the expert's where wrong
        answers = [[a] if a == t.expected_action else [a, t.expected_action] for a, t in zip(first, tasks)]
        return virl_episode(
            [(t, [virl_answer(x, t.at_intersection) for x in a]) for t, a in zip(tasks, answers)]
        )

    ignores = suite_metrics([episode(trained_space)])
    assert ignores["adherence"] == 0.0 and ignores["adherence_training"] == 1.0 and ignores["answers"] == 2
    assert ignores["field/action"] == 0.5 and ignores["field/action_valid"] == 0.5
    reads = suite_metrics([episode(stated_space)])
    assert reads["adherence"] == 1.0 and reads["adherence_training"] == 0.0 and reads["field/action"] == 1.0
    both = suite_metrics([episode(trained_space), episode(stated_space)])
    assert both["adherence"] == 0.5 and both["adherence_training"] == 0.5 and both["answers"] == 4


def test_virl_fields_from_real_episodes_with_relative_actions():
    """Real environment steps under relative actions, with a policy that answers each point first in
    the training (absolute) space and then as stated: it reaches the goal, never follows the stated
    space at a turn on its first answer, and is right under the training space at every turn."""
    routes: dict[int, Route] = {}

    def policy(info: dict[str, Any]) -> str:
        route = routes.setdefault(
            info["route_index"], generated_route("new_york", CITY_SEED, info["route_index"])
        )
        point = route.waypoints[info["waypoint_index"]]
        fresh = info["attempts_left"] == 2  # the first of the 2 attempts at this point
        return virl_answer(point.absolute_action if fresh else point.relative_action, point.at_intersection)

    trajs = [play(VIRL, {"actions": "relative"}, seed, policy) for seed in range(3)]
    by_id = {route.route_id: route for route in routes.values()}
    points = [w for t in trajs for w in by_id[t.turns[0].info["route_id"]].waypoints]
    turns_due = sum(w.relative_action.startswith("turn_direction") for w in points)
    m = suite_metrics(trajs)
    assert m["success"] == 1.0 and turns_due > 0 and m["answers"] == turns_due
    assert m["adherence"] == 0.0 and m["adherence_training"] == 1.0 and m["field/intersection"] == 1.0
    assert m["field/action"] == pytest.approx(1 - turns_due / len(points))
    assert m["valid_action"] == pytest.approx(len(points) / (len(points) + turns_due))  # every attempt


def test_report_shows_each_environments_adherence_fields_where_they_exist():
    from deploy.studies.report import _adherence_table
    from deploy.studies.stats import Arm

    def arm(final: dict[str, float]) -> Arm:
        return Arm("k", "a", "A", "train", runs=[{"final": final}])

    gp = {"adherence/ood": 0.5, "answers/ood": 4, "field/ood/numbers": 0.5, "field/ood/formula_correct": 0.25}
    text = "\n".join(_adherence_table([arm(gp)], ["ood"]))
    assert "First answers: numbers that follow the rule the prompt states / the training rule instead" in text
    assert "| run | adherence (ood) | formula correct (ood) |" in text and "action right" not in text
    virl = {"adherence/ood": 0.0, "answers/ood": 2, "adherence_training/ood": 1.0,
            "field/ood/turn_stated_space": 0.0, "field/ood/action": 0.5, "field/ood/intersection": 1.0}  # fmt: skip
    text = "\n".join(_adherence_table([arm(virl)], ["ood"]))
    assert "| run | adherence (ood) | action right (ood) | intersection claim right (ood) |" in text
    assert "formula" not in text and "V-IRL, the first attempt at each point" in text
    assert "| A | 0.0% (0.0%–65.8%) / 100.0% (34.2%–100.0%) | 50.0% | 100.0% |" in text
    assert _adherence_table([arm({"success/ood": 1.0})], ["ood"]) == []  # no adherence: no table


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
