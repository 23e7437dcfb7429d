"""Reasoning before the answer: the GeneralPoints expert writes out its search in <think></think> at a
chosen length, the prompt asks for it, and the verifier reads only the answer after it."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner

import services.envs  # noqa: F401  (registers the environments)
from deploy.cli import main
from services.envs.general_points.reasoning import CANDIDATES, REQUEST
from services.verifier.answer_text import THINK_CLOSE, THINK_OPEN, answer_after_reasoning, extract_json_object
from services.verifier.formula import parse_formula
from services.verifier.general_points import verify_general_points
from services.verifier.gp_fields import answer_fields

GP = "sftrl/GeneralPoints-v0"


def _alone(answer: str) -> str:
    return answer.rsplit(THINK_CLOSE, 1)[-1]


@pytest.mark.parametrize("length", ["none", "short", "long"])
def test_an_answer_after_its_reasoning_scores_as_the_answer_alone(length: str) -> None:
    env = gym.make(GP, reasoning=length, face_cards="random")
    rng = np.random.default_rng(0)
    for seed in range(40):
        env.reset(seed=seed)
        expert = env.unwrapped
        task = expert.current_task()
        for answer in (expert.expert_answer(), expert.wrong_answer(rng)):
            assert answer.startswith(THINK_OPEN) == (length != "none")
            with_it, alone = verify_general_points(task, answer), verify_general_points(task, _alone(answer))
            assert (with_it.reward, with_it.success, with_it.errors) == (
                alone.reward,
                alone.success,
                alone.errors,
            )
            assert answer_fields(task, answer) == answer_fields(task, _alone(answer))
        assert verify_general_points(task, expert.expert_answer()).success


def test_the_reasoning_tries_true_near_misses_then_the_answers_formula() -> None:
    env = gym.make(GP, reasoning="long", face_cards="random")
    for seed in range(40):
        env.reset(seed=seed)
        task = env.unwrapped.current_task()
        answer = env.unwrapped.expert_answer()
        thought = answer[len(THINK_OPEN) : answer.index(THINK_CLOSE)]
        stated = " ".join(map(str, task.stated_numbers))
        assert thought.startswith(f"cards {' '.join(task.cards)}: number {stated}. ")
        steps = re.findall(r"(\S+)=(-?\d+(?:/\d+)?) (no|yes)\.", thought)
        assert [verdict for *_, verdict in steps] == ["no"] * CANDIDATES["long"] + ["yes"]
        misses = []
        for formula, shown, _ in steps[:-1]:
            parsed = parse_formula(formula)
            assert sorted(parsed.numbers) == sorted(task.numbers)  # every card once
            assert str(parsed.value) == shown and parsed.value != task.target  # its value, and a miss
            misses.append(abs(parsed.value - task.target))
        assert misses == sorted(misses, reverse=True)  # closing in on the target
        assert f"{steps[-1][0]}={steps[-1][1]}" == json.loads(_alone(answer))["formula"]
        again = env.unwrapped.expert_answer()
        assert again == answer  # the same hand, the same reasoning
        # a revision's wrong first attempt reasons alike and ends in its own (wrong) formula, never
        # listed among the misses before it
        wrong = env.unwrapped.wrong_answer(np.random.default_rng(seed))
        tried = re.findall(r"(\S+)=(-?\d+(?:/\d+)?) (no|yes)\.", wrong[: wrong.index(THINK_CLOSE)])
        formula = json.loads(_alone(wrong))["formula"].rsplit("=", 1)[0]
        assert tried[-1][0] == formula and tried[-1][2] == "yes"
        assert formula not in [t[0] for t in tried[:-1]]


def test_the_verifier_reads_only_what_follows_the_reasoning() -> None:
    env = gym.make(GP)
    env.reset(seed=1)
    task = env.unwrapped.current_task()
    right = env.unwrapped.expert_answer()
    wrong = env.unwrapped.wrong_answer(np.random.default_rng(0))
    # a right answer inside the reasoning is not the answer; the one after it is
    assert not verify_general_points(task, f"{THINK_OPEN}{right}{THINK_CLOSE}{wrong}").success
    assert verify_general_points(task, f"{THINK_OPEN}{wrong}{THINK_CLOSE} {right}").success
    assert verify_general_points(task, f"{THINK_OPEN}a{THINK_CLOSE}b{THINK_CLOSE}{right}").success
    unclosed = f"{THINK_OPEN}let me try {right}"
    obj, why = extract_json_object(unclosed)
    assert obj is None and "never ends" in why and answer_after_reasoning(unclosed) is None
    assert not verify_general_points(task, unclosed).success
    assert answer_after_reasoning(right) == right  # no reasoning: the whole text


def test_the_prompt_asks_for_reasoning_only_when_set() -> None:
    for length in ("short", "long"):
        obs, _ = gym.make(GP, reasoning=length, prompt_style="compact").reset(seed=2)
        assert obs["text"].endswith("\n" + REQUEST)
    obs, _ = gym.make(GP, prompt_style="compact").reset(seed=2)
    assert THINK_OPEN not in obs["text"]


def test_data_sft_writes_reasoning_demonstrations_and_refuses_it_where_it_means_nothing(tmp_path) -> None:
    out = tmp_path / "long.jsonl"
    result = CliRunner().invoke(main, ["data", "sft", "--env", GP, "--episodes", "12", "--out", str(out),
                                       "--format", "chat", "--reasoning", "long"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert all(a.startswith(THINK_OPEN) and THINK_CLOSE in a for a in answers)
        assert row["messages"][0]["content"].endswith(REQUEST)
    assert "reasoning: long" in (tmp_path / "long.resolved_config.yaml").read_text()
    bad = CliRunner().invoke(main, ["data", "sft", "--env", "sftrl/VIRL-v0", "--episodes", "2",
                                    "--out", str(tmp_path / "v.jsonl"), "--reasoning", "long"])  # fmt: skip
    assert bad.exit_code == 2 and "reasoning" in bad.output and "Traceback" not in bad.output
