"""The V-IRL verifier: action parsing, the intersection-claim rule, every reward kind, the per-field
scores of an answer (and the training-space control), robustness."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.envs.virl.prompts import INTERSECTION_NO, INTERSECTION_YES
from services.verifier.types import Verdict
from services.verifier.virl import (
    REWARD_CORRECT,
    REWARD_MALFORMED,
    REWARD_WRONG_ACTION,
    REWARD_WRONG_INTERSECTION,
    VIRLStepTask,
    allowed_actions,
    answer_fields,
    parse_action,
    read_intersection_claim,
    verify_virl,
)

AT_CROSSING = VIRLStepTask(
    expected_action="turn_direction(east)",
    action_space="absolute",
    at_intersection=True,
    landmarks_left=("Blue Door Coffee",),
    landmarks_right=(),
    instruction="Turn right to face east.",
)
MID_BLOCK = VIRLStepTask("forward()", "relative", False, (), ("Union Savings",), "Then move forward.")
# A turn under a relative prompt (rule OOD): the route turns right, to face east.
REL_TURN = VIRLStepTask("turn_direction(right)", "relative", True, training_action="turn_direction(east)")


def answer(action: str, observation: str = INTERSECTION_YES, instruction: str = "Turn right.") -> str:
    keys = ("current observation", "current instruction", "action")
    return json.dumps(dict(zip(keys, (observation, instruction, action))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("forward()", "forward()"),
        ("Forward", "forward()"),
        ("  STOP ( ) ", "stop()"),
        ("stop().", "stop()"),
        ("`forward()`", "forward()"),
        ("turn_direction(northeast)", "turn_direction(northeast)"),
        ("Turn_Direction( North East )", "turn_direction(northeast)"),
        ("turn_direction(north-west)", "turn_direction(northwest)"),
        ('turn_direction("south")', "turn_direction(south)"),
        ("turn direction(slightly_left)", "turn_direction(slightly left)"),
        ("TURN_DIRECTION(Slight Right)", "turn_direction(slightly right)"),
        ("turn_direction(left)", "turn_direction(left)"),
        ("turn_direction(up)", None),
        ("turn_direction()", None),
        ("go()", None),
        ("forward(); stop()", None),
        ("", None),
        ("turn_direction(" + "north" * 50 + ")", None),
    ],
)
def test_parse_action(text, expected):
    assert parse_action(text) == expected


@pytest.mark.parametrize(
    ("observation", "claim"),
    [
        (INTERSECTION_YES, True),
        (INTERSECTION_NO, False),
        ("Blue Door Coffee is on your left. " + INTERSECTION_YES, True),
        ("No landmarks nearby. " + INTERSECTION_NO, False),
        ("You observe an intersection", True),
        ("There are 4-way intersections.", True),
        ("Falcon Optics is on your left and you are at an intersection", True),
        ("no landmarks, at an intersection", True),
        ("There is no intersection here.", False),
        ("I don't see any intersection.", False),
        ("I am not at an intersection, but near one.", False),
        ("Still between two intersections.", False),
        ("intersection: no", False),
        ("at_intersection: true", True),
        ("The next intersection is ahead.", False),
        ("An intersection ahead; Union Savings on the right.", False),
        ("Blue Door Coffee is on your left.", False),  # no mention: not at an intersection
        ("", False),
    ],
)
def test_intersection_claim_rule(observation, claim):
    assert read_intersection_claim(observation) is claim


def test_correct_action_scores_plus_one():
    v = verify_virl(AT_CROSSING, answer("turn_direction(East)"))
    assert (v.reward, v.success, v.errors) == (REWARD_CORRECT, True, ())
    assert v.details["action"] == "turn_direction(east)" and v.details["intersection_claim_correct"]


def test_correct_action_with_a_wrong_claim_still_scores_plus_one():
    # As in the original: the action decides; the claim is recorded for perception statistics.
    v = verify_virl(AT_CROSSING, answer("turn_direction(east)", INTERSECTION_NO))
    assert v.reward == REWARD_CORRECT and v.success
    assert v.details["intersection_claim_correct"] is False


def test_wrong_action_scores_minus_one():
    v = verify_virl(AT_CROSSING, answer("forward()"))
    assert (v.reward, v.success, v.errors) == (REWARD_WRONG_ACTION, False, ("wrong_action",))
    assert "action was wrong" in v.feedback


def test_wrong_action_and_wrong_claim_scores_minus_one_and_a_half():
    v = verify_virl(AT_CROSSING, answer("forward()", INTERSECTION_NO))
    assert v.reward == REWARD_WRONG_INTERSECTION == -1.5
    assert v.errors == ("wrong_intersection_claim", "wrong_action")
    assert "you are at an intersection" in v.feedback
    v = verify_virl(MID_BLOCK, answer("stop()", INTERSECTION_YES))
    assert v.reward == -1.5 and "you are not at an intersection" in v.feedback


def test_action_of_the_other_space_is_a_wrong_action():
    v = verify_virl(MID_BLOCK, answer("turn_direction(north)", INTERSECTION_NO))
    assert v.reward == REWARD_WRONG_ACTION and v.errors == ("wrong_action",)
    assert "not in the action space" in v.feedback and "slightly left" in v.feedback


@pytest.mark.parametrize(
    "text",
    [
        "forward()",  # not JSON
        '{"current observation": "x", "current instruction": "y"}',  # no action
        '{"current instruction": "y", "action": "forward()"}',  # no observation
        '{"current observation": "x", "action": "forward()"}',  # no instruction
        answer("walk to the shop"),  # unreadable action
        '{"current observation": "x", "current instruction": "y", "action": ["forward()"]}',
        '{"current observation": {"left": []}, "current instruction": "y", "action": "forward()"}',
        "[1, 2, 3]",
    ],
)
def test_malformed_answers_count_as_a_wrong_action(text):
    v = verify_virl(MID_BLOCK, text)
    assert v.reward == REWARD_MALFORMED == -1.0
    assert v.errors == ("malformed_answer",) and not v.success
    assert "could not be read" in v.feedback and '"action"' in v.feedback


def test_answer_found_inside_prose_and_code_fences():
    text = "Sure!\n```json\n" + answer("forward()", INTERSECTION_NO) + "\n```"
    assert verify_virl(MID_BLOCK, text).success


def test_keys_are_case_insensitive():
    keys = ("Current Observation", "CURRENT INSTRUCTION", "Action")
    text = json.dumps(dict(zip(keys, (INTERSECTION_NO, "go", "forward()"))))
    assert verify_virl(MID_BLOCK, text).success


def test_prompt_phrases_are_read_as_intended():
    assert read_intersection_claim(INTERSECTION_YES) and not read_intersection_claim(INTERSECTION_NO)


def test_allowed_actions():
    assert len(allowed_actions("absolute")) == 10 and len(allowed_actions("relative")) == 6
    assert all(parse_action(a) == a for space in ("absolute", "relative") for a in allowed_actions(space))


def test_task_is_json_serialisable_and_round_trips():
    for task in (AT_CROSSING, REL_TURN):
        assert VIRLStepTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task


FIELD_NAMES = ("action", "action_valid", "intersection", "turn_stated_space", "action_training_space")


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        # relative prompt, the expert's relative turn: follows the stated space, wrong under the training one
        (REL_TURN, answer("turn_direction(right)"), (True, True, True, True, False)),
        # relative prompt answered in the training (absolute) space: the control scores it right
        (REL_TURN, answer("turn_direction(East)"), (False, False, True, False, True)),
        # a relative turn the wrong way, and a wrong claim: stated space followed, nothing else right
        (REL_TURN, answer("turn_direction(left)", INTERSECTION_NO), (False, True, False, True, False)),
        # walking on where a turn is due: a valid action, but no turn in either space
        (REL_TURN, answer("forward()"), (False, True, True, False, False)),
        (REL_TURN, "not json", (False, False, False, False, False)),
        # no turn due: the turn and training-space fields do not apply
        (MID_BLOCK, answer("forward()", INTERSECTION_NO), (True, True, True, None, None)),
        (MID_BLOCK, answer("turn_direction(north)", INTERSECTION_NO), (False, False, True, None, None)),
        # absolute prompt (the training space itself): the control does not apply
        (AT_CROSSING, answer("turn_direction(east)"), (True, True, True, True, None)),
        (AT_CROSSING, answer("turn_direction(slightly left)"), (False, False, True, False, None)),
        # an unreadable action: the answer is malformed, so its claim is not scored either
        (AT_CROSSING, answer("turn_direction(up)"), (False, False, False, False, None)),
    ],
)
def test_answer_fields_on_hand_made_answers(task, text, expected):
    assert answer_fields(task, text) == dict(zip(FIELD_NAMES, expected))


HOSTILE = [
    "", "{", "}", "{}", "null", "\x00" * 100, "A" * 5_000_000, "{" * 100_000, "[" * 50_000 + "]" * 50_000,
    '{"action": ' + "[" * 5000 + "]" * 5000 + "}", '{"action": "forward()' + ")" * 10_000 + '"}',
    '{"current observation": null, "current instruction": 3, "action": 5}', "\ud800", "💥" * 10_000,
    answer("stop()", observation="intersection not " * 2000), '{"action": {"__reduce__": "os.system"}}',
    "__import__('os').system('true')", b"\xff\xfe".decode("latin-1"),
]  # fmt: skip


def _well_formed(v: object) -> None:
    assert isinstance(v, Verdict)
    assert isinstance(v.reward, float) and math.isfinite(v.reward)
    assert isinstance(v.feedback, str) and len(v.feedback) < 2000
    assert all(isinstance(e, str) for e in v.errors)


def _consistent_fields(task: VIRLStepTask, text: object) -> None:
    """The fields agree with the verifier: ``action`` is its success, ``action_valid`` its action's space."""
    fields, verdict = answer_fields(task, text), verify_virl(task, text)
    assert fields["action"] is verdict.success
    assert fields["action_valid"] is (verdict.details.get("action") in allowed_actions(task.action_space))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_answers_never_raise(text):
    for task in (AT_CROSSING, MID_BLOCK, REL_TURN):
        _well_formed(verify_virl(task, text))
        _consistent_fields(task, text)


def test_non_text_answers_never_raise():
    for obj in (None, 5, b"forward()", ["forward()"], {"action": "forward()"}):
        v = verify_virl(MID_BLOCK, obj)  # type: ignore[arg-type]
        _well_formed(v)
        assert v.errors == ("malformed_answer",)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_never_raises(text):
    _well_formed(verify_virl(AT_CROSSING, text))
    _well_formed(verify_virl(AT_CROSSING, answer(text, observation=text)))
    _consistent_fields(REL_TURN, answer(text, observation=text))
    assert isinstance(read_intersection_claim(text), bool)
