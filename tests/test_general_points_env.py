"""GeneralPoints as a gymnasium environment: dealing, rules, revision, image mode, registration."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import services.envs  # noqa: F401
from sftrl.config import ConfigError

GP = "sftrl/GeneralPoints-v0"


def test_reset_is_deterministic_and_deals_a_solvable_hand():
    env = gym.make(GP)
    obs1, info1 = env.reset(seed=7)
    obs2, info2 = env.reset(seed=7)
    assert obs1["text"] == obs2["text"] and info1["cards"] == info2["cards"]
    assert obs1["image"] is None
    assert len(info1["cards"]) == 4 and info1["solutions"]
    for name in info1["cards"]:
        assert (
            name in obs1["text"] or {"A": "Ace", "J": "Jack", "Q": "Queen", "K": "King"}[name] in obs1["text"]
        )


def test_ood_rule_always_deals_a_face_card_and_values_them_11_12_13():
    env = gym.make(GP, face_cards="as_11_12_13")
    for seed in range(200):
        _, info = env.reset(seed=seed)
        assert {"J", "Q", "K"} & set(info["cards"])
        for name, value in zip(info["cards"], info["numbers"]):
            assert value == {"J": 11, "Q": 12, "K": 13}.get(name, value)


@pytest.mark.parametrize(
    ("suits", "allowed"), [("black", {"spades", "clubs"}), ("red", {"hearts", "diamonds"})]
)
def test_suit_variants(suits, allowed):
    env = gym.make(GP, suits=suits)
    for seed in range(50):
        _, info = env.reset(seed=seed)
        assert set(info["suits"]) <= allowed


def test_chosen_hand_and_bad_hands():
    env = gym.make(GP)
    _, info = env.reset(seed=0, options={"cards": ["3", "3", "8", "8"]})
    assert info["numbers"] == [3, 3, 8, 8] and info["solutions"] == ["8/(3-8/3)"]
    with pytest.raises(ValueError, match="cannot make 24"):
        env.reset(options={"cards": ["A", "A", "A", "A"]})
    with pytest.raises(ValueError, match="unknown card"):
        env.reset(options={"cards": ["3", "3", "8", "Z"]})
    with pytest.raises(ValueError, match="4 card names"):
        env.reset(options={"cards": "3388"})


def test_sequential_revision_feedback_and_exhaustion():
    env = gym.make(GP, verify_iter=3)
    env.reset(seed=0, options={"cards": ["3", "3", "8", "8"]})
    obs, r, term, trunc, info = env.step('{"formula": "3+3+8+8=24"}')
    assert (r, term, trunc) == (-1.0, False, False)
    assert "22" in info["feedback"] and info["feedback"] in obs["text"] and "2 attempts left" in obs["text"]
    env.step("no json")
    obs, r, term, trunc, info = env.step('{"formula": "3*8"}')
    assert term and not trunc and not info["success"]  # running out of attempts is a terminal failure
    assert r == -2.0 - 1.0  # unused numbers, plus running out of attempts
    assert info["errors"] == ("numbers_unused", "attempts_exhausted")
    with pytest.raises(RuntimeError):
        env.step("{}")


def test_success_ends_the_episode_early():
    env = gym.make(GP)
    env.reset(seed=0, options={"cards": ["3", "3", "8", "8"]})
    _, r, term, trunc, info = env.step('{"formula": "8/(3-8/3)=24"}')
    assert (r, term, trunc, info["success"]) == (5.0, True, False, True)


def test_image_mode_renders_cards_and_checks_recognition():
    env = gym.make(GP, mode="image", image_size=240, suits="red")
    obs, info = env.reset(seed=3)
    image = obs["image"]
    assert image.shape == (240, 240, 3) and image.dtype == np.uint8
    assert tuple(image[2, 2]) == (0x35, 0x65, 0x4D)  # the green table
    reds = (image[..., 0] > 150) & (image[..., 1] < 80)
    assert reds.sum() > 50  # red suit glyphs are drawn
    assert "image" in obs["text"] and info["cards"][0] not in obs["text"].split("such as")[0].split()
    _, r, *_rest, step_info = env.step('{"cards": ["A", "A", "A", "A"], "formula": "1"}')
    assert r == -1.5 and step_info["recognized_correctly"] is False
    _, r, *_rest, step_info = env.step("I see four cards")  # unreadable: it recognised nothing
    assert tuple(step_info["errors"]) == ("malformed_answer",) and step_info["recognized_correctly"] is False
    right_cards = {"cards": list(env.unwrapped.current_task().cards), "formula": "1+"}
    _, r, *_rest, step_info = env.step(json.dumps(right_cards))  # cards right, formula wrong
    assert "malformed_answer" not in step_info["errors"] and step_info["recognized_correctly"] is True
    _, r, term, _, step_info = env.step(env.unwrapped.expert_answer())
    assert term and r == 5.0 and step_info["recognized_correctly"] is True


def test_visual_variants_differ_only_in_suit_colour():
    black = gym.make(GP, mode="image", image_size=200, suits="black")
    red = gym.make(GP, mode="image", image_size=200, suits="red")
    img_b = black.reset(seed=1, options={"cards": ["3", "3", "8", "8"]})[0]["image"]
    img_r = red.reset(seed=1, options={"cards": ["3", "3", "8", "8"]})[0]["image"]
    assert not ((img_b[..., 0] > 150) & (img_b[..., 1] < 80)).any()
    assert ((img_r[..., 0] > 150) & (img_r[..., 1] < 80)).any()


@pytest.mark.parametrize("style", ["default", "compact", "diverse"])
def test_prompt_styles_keep_rules_and_format(style):
    env = gym.make(GP, prompt_style=style, face_cards="as_11_12_13")
    texts = set()
    for seed in range(30):
        obs, _ = env.reset(seed=seed)
        text = obs["text"]
        assert '"formula"' in text and '"cards"' in text and "24" in text
        assert "11" in text and "13" in text
        texts.add(text.split("\n")[0])
    if style == "diverse":
        assert len(texts) >= 3
    else:
        assert len(texts) == 1


def test_expert_and_wrong_answers():
    env = gym.make(GP, face_cards="as_11_12_13")
    rng = np.random.default_rng(0)
    for seed in range(100):
        env.reset(seed=seed)
        wrong = env.unwrapped.wrong_answer(rng)
        _, r, term, _, info = env.step(wrong)
        assert r == -1.0 and not term and info["errors"] == ("wrong_value",)
        _, r, term, _, _ = env.step(env.unwrapped.expert_answer())
        assert r == 5.0 and term


def test_invalid_options_are_clear_errors():
    with pytest.raises(ConfigError, match="face_cards"):
        gym.make(GP, face_cards="as_20")
    with pytest.raises(ConfigError, match="verify_iter"):
        gym.make(GP, verify_iter=0)
    with pytest.raises(ConfigError, match="colour"):
        gym.make(GP, colour="blue")


@pytest.mark.parametrize("mode", ["text", "image"])
def test_gymnasium_env_checker(mode):
    check_env(gym.make(GP, mode=mode, image_size=64).unwrapped, skip_render_check=True)


def test_render_modes():
    env = gym.make(GP, render_mode="rgb_array", image_size=100)
    env.reset(seed=0)
    assert env.render().shape == (100, 100, 3)
    env = gym.make(GP, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs["text"]
