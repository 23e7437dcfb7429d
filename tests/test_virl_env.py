"""``sftrl/VIRL-v0``: synthetic cities, published routes, the rail of actions, rewards and rendering."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import services.envs  # noqa: F401  (registers the environments)
from services.envs.virl import VIRLEnv
from services.envs.virl.city import ROUTE_POOL, generate_city, generated_route
from services.envs.virl.headings import COMPASS, RELATIVE, compass_name, snap, turn_label, wrap_delta
from services.envs.virl.prompts import (
    ANSWER_FORMAT,
    ANSWER_KEYS,
    TEMPLATES,
    action_space_text,
    describe,
    rules_text,
)
from services.envs.virl.published import load_published_routes
from services.envs.virl.render import render_views
from services.verifier.virl import parse_action, read_intersection_claim
from sftrl.config import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "services" / "envs" / "data" / "virl_example_routes.json"
LABEL_DELTA = {"left": -90, "right": 90, "slightly left": -45, "slightly right": 45}


def play_expert(env: VIRLEnv, **reset_kwargs) -> tuple[float, int, dict, bool, bool]:
    _, info = env.reset(**reset_kwargs)
    total, steps = 0.0, 0
    while True:
        _, reward, terminated, truncated, info = env.step(env.expert_answer())
        total += reward
        steps += 1
        if terminated or truncated:
            return total, steps, info, terminated, truncated


# -- headings and turn labels ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "label"),
    [
        (-90, "left"), (-46, "left"), (-135, "left"), (-45, "slightly left"), (-1, "slightly left"),
        (0, None), (1, "slightly right"), (45, "slightly right"), (46, "right"), (90, "right"),
        (180, "right"), (-180, "right"), (350, "slightly left"), (270, "left"), (-270, "right"), (360, None),
    ],
)  # fmt: skip
def test_turn_label_rule(delta, label):
    assert turn_label(delta) == label


def test_headings():
    assert wrap_delta(350) == -10 and wrap_delta(-180) == 180
    assert [compass_name(h) for h in (0, 44, 46, 90, 181, 359)] == [
        "north", "northeast", "northeast", "east", "south", "north",
    ]  # fmt: skip
    assert snap(337.6) == 0 and snap(22.4) == 0 and snap(22.6) == 45


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "video"}, {"actions": "polar"}, {"verify_iter": 0}, {"city": ""}, {"city": "../etc"},
        {"image_size": 8}, {"prompt_style": "fancy"}, {"unknown": 1}, {"routes": ""},
    ],
)  # fmt: skip
def test_invalid_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        VIRLEnv(**options)


def test_defaults():
    o = VIRLEnv().options
    assert (o.mode, o.actions, o.city, o.verify_iter, o.routes, o.image_size, o.prompt_style) == (
        "text", "absolute", "new_york", 2, None, 256, "default",
    )  # fmt: skip


def test_reset_option_errors():
    env = VIRLEnv(routes=str(EXAMPLE))
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"route_index": 3})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"route": 0})
    with pytest.raises(RuntimeError):
        VIRLEnv().step("forward()")


# -- synthetic cities ----------------------------------------------------------------------------


def test_city_is_deterministic_by_seed_and_name():
    a, b = generate_city.__wrapped__("new_york", 0), generate_city.__wrapped__("New York", 0)
    assert a == b and a.places == b.places
    assert generate_city.__wrapped__("new_york", 1).places != a.places
    paris = generate_city.__wrapped__("paris", 0)
    assert {p.name for p in paris.places} != {p.name for p in a.places}
    assert generated_route.__wrapped__("new_york", 0, 5) == generated_route.__wrapped__("new_york", 0, 5)


def test_city_has_diagonal_streets_and_unique_place_names():
    city = generate_city("new_york")
    headings = {round(s.heading) % 180 for s in city.streets}
    assert {0, 90} <= headings and (45 in headings or 135 in headings)
    names = [p.name for p in city.places]
    assert len(names) == len(set(names)) > 100


def test_generated_routes_turn_by_45_or_90_degrees_with_consistent_actions():
    slight = 0
    for i in range(300):
        route = generated_route("new_york", 0, i)
        assert route.waypoints[-1].absolute_action == "stop()"
        assert route.waypoints[0].absolute_action.startswith("turn_direction(")
        for wp in route.waypoints:
            assert (wp.absolute_action == "forward()") == (wp.relative_action == "forward()")
            if wp.relative_action.startswith("turn_direction("):
                label = wp.relative_action[len("turn_direction(") : -1]
                target = wp.absolute_action[len("turn_direction(") : -1]
                assert label in RELATIVE and target in COMPASS
                assert compass_name(wp.facing + LABEL_DELTA[label]) == target
                slight += label.startswith("slightly")
    assert slight > 20  # diagonal avenues make 45-degree turns happen


def test_instruction_landmarks_are_seen_at_their_milestone():
    for i in range(100):
        route = generated_route("paris", 0, i)
        for k, wp in enumerate(route.waypoints[1:], 1):
            if not wp.absolute_action.startswith("turn_direction("):
                continue
            # The walking sentence before a turn names the place seen there, on the stated side.
            sentence = route.instructions[route.waypoints[k - 1].instruction_index]
            m = re.search(r"where (.+) is on your (left|right)\.$", sentence)
            assert wp.at_intersection
            if m:
                assert m.group(1) in (wp.left if m.group(2) == "left" else wp.right)


def test_reset_is_deterministic_by_seed():
    a, b = VIRLEnv(), VIRLEnv()
    oa, ia = a.reset(seed=7)
    ob, ib = b.reset(seed=7)
    assert oa == ob and ia == ib
    assert a.step(a.expert_answer())[0] == b.step(b.expert_answer())[0]
    assert VIRLEnv().reset(seed=8)[1]["route_id"] != ia["route_id"]
    assert VIRLEnv(city="tokyo").reset(seed=7)[0]["text"] != oa["text"]
    assert 0 <= ia["route_index"] < ROUTE_POOL


def test_reset_info_and_route_index():
    env = VIRLEnv()
    _, info = env.reset(seed=0, options={"route_index": 1234})
    assert info["route_id"] == "new_york-01234" and info["route_index"] == 1234
    for key in ("expert_action", "at_intersection", "route_id", "city", "num_waypoints"):
        assert key in info
    assert info["city"] == "New York" and info["num_waypoints"] == len(env.route.waypoints)
    assert info["expert_action"] == env.current_task().expected_action


# -- the expert and rewards ----------------------------------------------------------------------


@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_expert_solves_generated_routes(actions):
    for city in ("new_york", "san_francisco"):
        env = VIRLEnv(city=city, actions=actions)
        for i in range(150):
            total, steps, info, terminated, truncated = play_expert(env, seed=0, options={"route_index": i})
            assert terminated and not truncated and info["success"]
            assert total == steps == len(env.route.waypoints)


@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_expert_solves_every_published_example_route(actions):
    env = VIRLEnv(routes=str(EXAMPLE), actions=actions, mode="image", image_size=32)
    for i in range(env.num_routes):
        total, steps, info, terminated, _ = play_expert(env, seed=0, options={"route_index": i})
        assert terminated and info["success"] and total == steps == info["num_waypoints"]


def test_relative_and_absolute_expert_actions_on_a_known_route():
    # Example route 0: facing east at the start, then north, east, northeast, north (2 points per leg).
    walk = ["forward()", "forward()"]
    turns_abs = ["north", "east", "northeast", "north"]
    turns_rel = ["left", "right", "slightly left", "slightly left"]
    expected_abs = [a for t in turns_abs for a in [f"turn_direction({t})", *walk]] + ["stop()"]
    expected_rel = [a for t in turns_rel for a in [f"turn_direction({t})", *walk]] + ["stop()"]
    for actions, expected in (("absolute", expected_abs), ("relative", expected_rel)):
        env = VIRLEnv(routes=str(EXAMPLE), actions=actions)
        _, info = env.reset(seed=0, options={"route_index": 0})
        seen = [info["expert_action"]]
        while True:
            _, _, terminated, _, info = env.step(env.expert_answer())
            if terminated:
                break
            seen.append(info["expert_action"])
        assert seen == expected


def test_wrong_action_then_exhaustion_truncates_as_failure():
    env = VIRLEnv(verify_iter=2)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    obs, reward, terminated, truncated, info = env.step(env.wrong_answer(rng))
    assert (reward, terminated, truncated) == (-1.0, False, False)
    assert info["errors"] == ("wrong_action",) and "1 attempt left" in obs["text"]
    assert "Your action was wrong" in obs["text"] and "same JSON keys" in obs["text"]
    assert info["waypoint_index"] == 0 and not info["success"]
    obs, reward, terminated, truncated, info = env.step(env.wrong_answer(rng))
    assert (reward, terminated, truncated) == (-1.0, True, False)
    assert info["errors"] == ("wrong_action", "attempts_exhausted") and not info["success"]
    assert "failed" in obs["text"]
    with pytest.raises(RuntimeError):
        env.step(env.expert_answer())


def test_wrong_intersection_claim_costs_one_and_a_half():
    env = VIRLEnv(verify_iter=3)
    env.reset(seed=0, options={"route_index": 0})
    while not env.waypoint.at_intersection:  # walk to the first intersection
        env.step(env.expert_answer())
    wrong = json.dumps({"current observation": "You are not at an intersection.",
                        "current instruction": "x", "action": "stop()"})  # fmt: skip
    obs, reward, _, truncated, info = env.step(wrong)
    assert reward == -1.5 and not truncated
    assert info["errors"] == ("wrong_intersection_claim", "wrong_action") and info["at_intersection"]
    assert "you are at an intersection" in obs["text"] and "2 attempts left" in obs["text"]


def test_malformed_answer_costs_one_with_feedback():
    env = VIRLEnv()
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step("I would go north.")
    assert (reward, terminated, truncated) == (-1.0, False, False)
    assert info["errors"] == ("malformed_answer",) and "could not be read" in info["feedback"]
    obs, reward, terminated, truncated, info = env.step("{" * 10_000)
    assert reward == -1.0 and terminated and not truncated and "attempts_exhausted" in info["errors"]


def test_correct_action_moves_on_and_reports_progress():
    env = VIRLEnv()
    _, info = env.reset(seed=2)
    first = info["expert_action"]
    obs, reward, terminated, truncated, info = env.step(env.expert_answer())
    assert reward == 1.0 and not (terminated or truncated) and info["errors"] == ()
    assert f"Correct: {first}" in obs["text"] and f"point 2 of {info['num_waypoints']}" in obs["text"]
    assert info["waypoint_index"] == 1 and info["attempts_left"] == 2


def test_revision_after_a_wrong_answer_still_solves():
    env = VIRLEnv(actions="relative")
    env.reset(seed=4)
    env.step(env.wrong_answer(np.random.default_rng(1)))
    total = 0.0
    while True:
        _, r, terminated, truncated, info = env.step(env.expert_answer())
        total += r
        if terminated or truncated:
            break
    assert terminated and info["success"] and total == len(env.route.waypoints)


def test_wrong_answer_is_valid_json_with_a_true_claim_and_another_action():
    rng = np.random.default_rng(0)
    for actions in ("absolute", "relative"):
        env = VIRLEnv(actions=actions)
        for seed in range(20):
            env.reset(seed=seed)
            for _ in range(3):
                obj = json.loads(env.wrong_answer(rng))
                assert set(obj) == set(ANSWER_KEYS)
                action = parse_action(obj["action"])
                assert action is not None and action != env.current_task().expected_action
                assert read_intersection_claim(obj["current observation"]) == env.waypoint.at_intersection
                env.step(env.expert_answer())


def test_text_observation_states_the_truth():
    env = VIRLEnv()
    for seed in range(10):
        obs, _ = env.reset(seed=seed)
        while True:
            wp = env.waypoint
            line = describe(wp)
            assert line in obs["text"] and read_intersection_claim(line) == wp.at_intersection
            for name in wp.left + wp.right:
                assert name in line
            obs, _, terminated, truncated, _ = env.step(env.expert_answer())
            if terminated or truncated:
                break


# -- prompts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["default", "compact", "diverse"])
@pytest.mark.parametrize("actions", ["absolute", "relative"])
def test_prompt_styles_share_format_rules_and_actions(style, actions):
    texts = set()
    for seed in range(12):
        env = VIRLEnv(prompt_style=style, actions=actions, verify_iter=2)
        text = env.reset(seed=seed)[0]["text"]
        texts.add(text.split("\n")[0])
        assert ANSWER_FORMAT in text
        for key in ANSWER_KEYS:
            assert f'"{key}"' in text
        assert "-1.5" in text and "2 attempts" in text
        assert action_space_text(actions) in text and rules_text(2) in text
        for i, sentence in enumerate(env.route.instructions, 1):
            assert f"{i}. {sentence}" in text
    if style == "diverse":
        assert len(texts) >= 2
    assert len(TEMPLATES["diverse"]) >= 4  # type: ignore[arg-type]


# -- published routes ----------------------------------------------------------------------------


def test_loader_reads_the_example_file():
    routes = load_published_routes(EXAMPLE, "New York")
    assert len(routes) == 3
    a, b, c = routes
    assert (a.start, a.destination, a.city) == ("Juniper Books", "Harbor Pharmacy", "New York")
    assert "Blue Door Coffee is on your left" in a.instructions[1]
    assert "Harbor Pharmacy, on your right" in a.instructions[-1]
    assert a.waypoints[3].left == ("Blue Door Coffee",) and a.waypoints[3].at_intersection
    assert not a.waypoints[0].at_intersection and not a.waypoints[-1].at_intersection
    # Route B has no milestone text: landmarks and sides come from the geocodes.
    assert "Copper Hardware is on your left" in b.instructions[1]
    assert "Amber Tea House is on your right" in b.instructions[5]
    assert (c.route_id, c.city) == ("sf-demo-1", "San Francisco")


def test_loader_accepts_the_original_dump_pair(tmp_path):
    # The original code dumps [routes, number of destinations tried].
    path = tmp_path / "route_infos.json"
    path.write_text(json.dumps([json.loads(EXAMPLE.read_text()), 17]))
    pair, plain = load_published_routes(path, "x"), load_published_routes(EXAMPLE, "x")
    assert [(r.waypoints, r.instructions) for r in pair] == [(r.waypoints, r.instructions) for r in plain]
    assert pair[0].route_id == "route_infos-000"


def _broken(tmp_path: Path, mutate) -> Path:
    routes = json.loads(EXAMPLE.read_text())
    data = mutate(routes)
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: "[{", "not valid JSON"),
        (lambda r: {"routes": r}, "must hold a JSON list"),
        (lambda r: [], "holds no routes"),
        (lambda r: [{k: v for k, v in r[0].items() if k != "start_place"}], "route 0 in"),
        (lambda r: [r[0], {**r[1], "dest_place": {"name": "X", "geocode": [95.0, 0.0]}}], "route 1 in"),
        (
            lambda r: [{**r[0], "route_results": {**r[0]["route_results"], "landmark_list": [None]}}],
            "landmark_list has 1 entries",
        ),
        (lambda r: [{**r[0], "milestone_info": '{"landmarks": "none"}'}], "milestone_info has 1"),
        (
            lambda r: [{**r[2], "milestone_info": r[2]["milestone_info"].replace('"90 (east)', '"east')}],
            "does not start with degrees",
        ),
        (lambda r: [{**r[1], "route_results": {"geocode_list": []}}], "geocode_list"),
    ],
)
def test_loader_errors_name_the_problem(tmp_path, mutate, message):
    path = _broken(tmp_path, mutate)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_published_routes(path, "x")
    with pytest.raises(ConfigError):
        VIRLEnv(routes=str(path))


def test_loader_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read V-IRL route file"):
        VIRLEnv(routes=str(tmp_path / "nope.json"))


# -- images and rendering ----------------------------------------------------------------------


def test_image_mode_returns_the_grid():
    env = VIRLEnv(mode="image", image_size=64)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (128, 128, 3) and obs["image"].dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert "four street views" in obs["text"]
    obs2, *_ = env.step(env.expert_answer())
    assert obs2["image"].shape == (128, 128, 3) and not np.array_equal(obs["image"], obs2["image"])


def test_text_mode_has_no_image_but_renders_on_request():
    env = VIRLEnv(render_mode="rgb_array", image_size=48)
    obs, _ = env.reset(seed=0)
    assert obs["image"] is None
    frame = env.render()
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    env = VIRLEnv(render_mode="ansi")
    obs, _ = env.reset(seed=0)
    assert env.render() == obs["text"]


def test_cities_look_different_and_intersections_are_visible():
    route = generated_route("new_york", 0, 0)
    wp = route.waypoints[0]
    ny, paris = render_views(wp, "new_york", 64), render_views(wp, "paris", 64)
    assert not np.array_equal(ny, paris)
    assert np.abs(ny.astype(int).mean((0, 1)) - paris.astype(int).mean((0, 1))).sum() > 5
    crossing = next(w for w in route.waypoints if w.at_intersection)
    plain = dataclasses.replace(crossing, at_intersection=False)
    assert not np.array_equal(render_views(crossing, "new_york", 64), render_views(plain, "new_york", 64))
    assert np.array_equal(render_views(wp, "new_york", 64), render_views(wp, "New York", 64))


def test_signs_show_the_places_on_each_side():
    route = generated_route("new_york", 0, 3)
    wp = next(w for w in route.waypoints if w.left and not w.right)
    named = render_views(wp, "new_york", 128)
    unnamed = render_views(dataclasses.replace(wp, left=(), right=()), "new_york", 128)
    diff = np.any(named != unnamed, axis=2)
    assert diff[128:, 128:].any()  # the left view (bottom right) carries the sign
    assert not diff[:128, 128:].any()  # the right view is unchanged


# -- gymnasium integration and speed ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["text", "image"])
def test_gymnasium_make_and_check_env(mode):
    # check_env handles the free-text action space: it only samples and steps it once.
    env = gym.make("sftrl/VIRL-v0", mode=mode, image_size=32, actions="relative")
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=5)
    _, reward, *_ = env.step(env.unwrapped.expert_answer())
    assert reward == 1.0 and info["route_id"].startswith("new_york-")
