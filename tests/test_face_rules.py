"""Face-card rules as data: parsed, stated in every prompt style, drawn with rules held out, and used by
the verifier and the expert; the fake-rule control; the command line takes them."""

from __future__ import annotations

import json
import re

import gymnasium as gym
import numpy as np
import pytest
from click.testing import CliRunner

import services.envs  # noqa: F401
from deploy.cli import main
from services.verifier.face_rules import canonical_rule, draw_face_values, parse_face_rule, rule_text
from services.verifier.general_points import card_value
from sftrl.config import ConfigError

GP = "sftrl/GeneralPoints-v0"
STYLES = ("default", "compact", "diverse")
FACE = {"J": 0, "Q": 1, "K": 2}


@pytest.mark.parametrize(
    ("spelling", "values"),
    [
        ("as_10", (10, 10, 10)),
        ("as_11_12_13", (11, 12, 13)),
        ("4,7,2", (4, 7, 2)),
        (" J=4, Q=7, K=2 ", (4, 7, 2)),
        ("j=1,q=13,k=1", (1, 13, 1)),
        ([5, 5, 5], (5, 5, 5)),
        ("random", None),
    ],
)
def test_rule_spellings(spelling, values):
    assert parse_face_rule(spelling) == values


@pytest.mark.parametrize(
    "bad", ["14,1,1", "0,2,3", "1,2", "as_12", "J=4;Q=7;K=2", "1" * 100, [1, 2], [1, 2, 3.5], True]
)
def test_bad_rules_are_clear_errors(bad):
    with pytest.raises(ValueError, match="face-card"):
        parse_face_rule(bad)


def test_one_spelling_per_rule():
    assert canonical_rule("J=10,Q=10,K=10") == "as_10"
    assert canonical_rule([11, 12, 13]) == "as_11_12_13"
    assert canonical_rule("J=4,Q=7,K=2") == "4,7,2"
    assert rule_text((10, 10, 10)) == "J, Q and K each count as 10"
    assert rule_text((4, 7, 2)) == "J counts as 4, Q as 7 and K as 2"


def test_card_values_under_any_rule():
    assert [card_value(n, "4,7,2") for n in ("A", "7", "10", "J", "Q", "K")] == [1, 7, 10, 4, 7, 2]
    assert card_value("K", (11, 12, 13)) == 13
    with pytest.raises(ValueError, match="fixed rule"):
        card_value("K", "random")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("rule", ["as_10", "as_11_12_13", "4,7,2", "random"])
def test_every_rule_is_stated_in_every_style_and_used_by_verifier_and_expert(style, rule):
    env = gym.make(GP, face_cards=rule, prompt_style=style)
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        values = tuple(info["face_values"])
        assert rule_text(values) in obs["text"]
        if rule != "random":
            assert values == parse_face_rule(rule)
        assert info["numbers"] == [card_value(c, values) for c in info["cards"]]
        if rule != "as_10":  # a rule other than the training one always matters for the hand
            assert set(info["cards"]) & set(FACE)
        answer = env.unwrapped.expert_answer()
        assert json.loads(answer)["number"] == info["numbers"]
        _, reward, terminated, _, step_info = env.step(answer)
        assert terminated and reward == 5.0
        assert step_info["fields"]["numbers"] and step_info["fields"]["formula_correct"]


def test_random_rules_stay_in_range_and_never_draw_a_held_out_rule():
    held = ["as_10", "as_11_12_13", "2,2,2", "3,2,2"]
    env = gym.make(GP, face_cards="random", face_range=[2, 3], face_held_out=held)
    seen = set()
    for seed in range(300):
        _, info = env.reset(seed=seed)
        seen.add(info["rule"])
        assert all(2 <= v <= 3 for v in info["face_values"])
    assert seen == {"2,3,2", "2,2,3", "2,3,3", "3,3,2", "3,2,3", "3,3,3"}  # every rule but the held-out ones
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="held out"):
        draw_face_values(rng, 10, 10, held_out=[(10, 10, 10)])


def test_a_share_of_random_rules_with_equal_values():
    held = ["as_10", "as_11_12_13"]
    plain = gym.make(GP, face_cards="random", face_held_out=held)
    mixed = gym.make(GP, face_cards="random", face_held_out=held, face_equal_share=0.5)
    equal = [len(set(mixed.reset(seed=s)[1]["face_values"])) == 1 for s in range(400)]
    assert 0.4 < sum(equal) / len(equal) < 0.6
    drawn = [tuple(mixed.reset(seed=s)[1]["face_values"]) for s in range(400)]
    assert (10, 10, 10) not in drawn  # held-out rules stay out of the equal draws too
    # share 0 leaves the random stream as it was (a base made before the option keeps its data)
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert [draw_face_values(rng_a, 1, 13, []) for _ in range(20)] == [
        draw_face_values(rng_b, 1, 13, [], equal_share=0.0) for _ in range(20)
    ]
    assert len({plain.reset(seed=s)[1]["rule"] for s in range(50)}) > 40


def test_fake_rule_control_states_one_rule_and_scores_another():
    env = gym.make(GP, face_cards="as_11_12_13", scored_face_cards="as_10")
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        assert rule_text((11, 12, 13)) in obs["text"]  # the prompt states the OOD rule
        assert info["numbers"] == [
            card_value(c, "as_10") for c in info["cards"]
        ]  # scored by the training rule
        assert set(info["cards"]) & set(FACE)
    # A model that ignores the prompt and applies the training rule wins; one that follows it does not.
    _, info = env.reset(seed=3)
    training = [card_value(c, "as_10") for c in info["cards"]]
    ignoring = json.dumps(
        {"cards": info["cards"], "number": training, "formula": info["solutions"][0] + "=24"}
    )
    _, reward, terminated, _, step_info = env.step(ignoring)
    assert terminated and reward == 5.0
    assert step_info["fields"]["numbers"] is False and step_info["fields"]["numbers_training_rule"] is True


def test_invalid_rule_options_name_the_option():
    with pytest.raises(ConfigError, match="face_cards"):
        gym.make(GP, face_cards="as_12")
    with pytest.raises(ConfigError, match="face_range"):
        gym.make(GP, face_cards="random", face_range=[9, 3])
    with pytest.raises(ConfigError, match="fixed"):
        gym.make(GP, face_cards="random", scored_face_cards="as_10")
    with pytest.raises(ConfigError, match="only face_cards"):
        gym.make(GP, training_face_cards="random")


def test_command_line_takes_rules(tmp_path):
    out = tmp_path / "gp.json"
    result = CliRunner().invoke(main, [
        "data", "sft", "--env", GP, "--episodes", "20", "--out", str(out),
        "--face-cards", "random", "--face-range", "[1,9]", "--prompt-style", "compact",
    ], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    rules = {r["meta"]["rule"] for r in records}
    assert len(rules) > 10 and "as_10" not in rules and "as_11_12_13" not in rules
    for record in records:
        values = parse_face_rule(record["meta"]["rule"])
        assert all(1 <= v <= 9 for v in values) and rule_text(values) in record["conversations"][0]["value"]
    played = CliRunner().invoke(main, ["env", "play", GP, "--face-cards", "J=4,Q=7,K=2"], input=":quit\n")
    shown = re.sub(r"[│\s]+", " ", played.output)  # the prompt is drawn in a wrapped panel
    assert played.exit_code == 0 and "J counts as 4, Q as 7 and K as 2" in shown
