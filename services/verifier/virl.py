"""The V-IRL verifier: a pure function of (step task, answer text) -> :class:`Verdict`.

Reward per attempt, as in the original environment (kinds are *not* summed):

    correct action                                           +1
    wrong action, true statement about the intersection      -1
    wrong action and a wrong statement about the intersection -1.5
    malformed answer (not JSON, a key missing, no readable action)  -1

The action decides success; the intersection statement is judged only when the action is wrong
(it then explains the failure, as a perception error). Running out of attempts is the
environment's business.

The intersection statement is read from "current observation" by :func:`read_intersection_claim`:
the answer claims to be at an intersection when some mention of an intersection (also
"crossroad", "junction") is affirmative. A mention is negated by "no", "not", "n't", "without",
"never", "neither"/"nor", "away", "far", "between" among the six words before it in the same
clause, or by "no"/"false"/"none" right after it ("intersection: no"). Mentions of another
intersection ("the next intersection", "an intersection ahead") claim nothing. No affirmative
mention at all means "not at an intersection". The prompts ask for "You are at an
intersection." or "You are not at an intersection.", which this rule reads exactly.

:func:`answer_fields` scores the parts of one answer apart (action, action space, intersection
claim, and the training-space control), as :mod:`services.verifier.gp_fields` does for GeneralPoints.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from services.verifier.answer_text import extract_json_object, get_str_field
from services.verifier.types import Verdict

ActionSpace = Literal["absolute", "relative"]
TRAINING_SPACE: ActionSpace = "absolute"  # the space paper 1 trains on; relative actions are its rule OOD

REWARD_CORRECT = 1.0
REWARD_WRONG_ACTION = -1.0
REWARD_WRONG_INTERSECTION = -1.5
REWARD_MALFORMED = -1.0

COMPASS: tuple[str, ...] = (
    "north", "northeast", "east", "southeast", "south", "southwest", "west", "northwest",
)  # fmt: skip
RELATIVE: tuple[str, ...] = ("left", "right", "slightly left", "slightly right")
MAX_ACTION_CHARS = 64
MAX_OBSERVATION_CHARS = 4096
KEY_OBSERVATION, KEY_INSTRUCTION, KEY_ACTION = "current observation", "current instruction", "action"
ANSWER_KEYS = (KEY_OBSERVATION, KEY_INSTRUCTION, KEY_ACTION)
FORMAT_HINT = (
    'Reply with one JSON object with the keys "current observation", "current instruction" and "action".'
)


@dataclass(frozen=True, slots=True)
class VIRLStepTask:
    """One waypoint of a route, as the verifier needs it (all fields JSON-serialisable)."""

    expected_action: str  # canonical, e.g. "turn_direction(northeast)", "forward()", "stop()"
    action_space: ActionSpace
    at_intersection: bool
    landmarks_left: tuple[str, ...] = ()
    landmarks_right: tuple[str, ...] = ()
    instruction: str = ""
    # The expert's action in the training space where it differs from ``expected_action`` (a turn
    # under a relative prompt), else None: the fake-rule control of V-IRL scores answers against it.
    training_action: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["landmarks_left"], d["landmarks_right"] = list(self.landmarks_left), list(self.landmarks_right)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VIRLStepTask:
        return cls(
            expected_action=str(data["expected_action"]),
            action_space=data["action_space"],
            at_intersection=bool(data["at_intersection"]),
            landmarks_left=tuple(data.get("landmarks_left", ())),
            landmarks_right=tuple(data.get("landmarks_right", ())),
            instruction=str(data.get("instruction", "")),
            training_action=data.get("training_action"),
        )


def allowed_actions(space: ActionSpace) -> tuple[str, ...]:
    words = COMPASS if space == "absolute" else RELATIVE
    return ("forward()", *(f"turn_direction({w})" for w in words), "stop()")


_SIMPLE = re.compile(r"^(forward|stop)\s*(?:\(\s*\))?$")
_TURN = re.compile(r"^turn[\s_-]*direction\s*\(\s*(.*?)\s*\)$")
_COMPASS_ALIASES = {c.replace("north", "north ").replace("south", "south ").strip(): c for c in COMPASS}


def _direction(raw: str) -> str | None:
    word = " ".join(re.sub(r"[\s_\-]+", " ", raw.strip("\"'` ")).split())
    if word in COMPASS or word in RELATIVE:
        return word
    if word in _COMPASS_ALIASES:  # "north east" -> "northeast"
        return _COMPASS_ALIASES[word]
    if word in ("slight left", "slight right"):
        return "slightly " + word.split()[1]
    return None


def parse_action(text: str) -> str | None:
    """The canonical action named by ``text`` (either action space), or None if unreadable.

    Case, spacing, quotes, a trailing period, and "_"/"-"/" " between words are tolerated:
    ``"Turn_Direction( North East )"`` -> ``"turn_direction(northeast)"``. Nothing is executed.
    """
    if not isinstance(text, str) or len(text) > MAX_ACTION_CHARS:
        return None
    s = " ".join(text.strip().strip("\"'`").strip().lower().split()).rstrip(".").strip()
    m = _SIMPLE.match(s)
    if m:
        return f"{m.group(1)}()"
    m = _TURN.match(s)
    if m:
        word = _direction(m.group(1))
        return f"turn_direction({word})" if word else None
    return None


_CLAUSE_SPLIT = re.compile(r"[.;!?,\n]|\b(?:but|and|however|while|although|whereas)\b")
_MENTION = {"intersection", "intersections", "crossroad", "crossroads", "junction", "junctions"}
_NEGATION = {"no", "not", "without", "never", "neither", "nor", "none", "away", "far", "between", "nt"}
_AFTER_NEGATION = {"no", "false", "none"}
_ELSEWHERE_BEFORE = {"next", "upcoming", "previous", "last", "another", "following", "coming"}
_ELSEWHERE_AFTER = {"ahead", "behind", "later"}


def read_intersection_claim(observation: str) -> bool:
    """Whether an observation text claims to be at an intersection (rule in the module docstring)."""
    text = observation[:MAX_OBSERVATION_CHARS].lower().replace("n't", " nt").replace("n’t", " nt")
    for clause in _CLAUSE_SPLIT.split(text):
        words = re.findall(r"[a-z]+", clause)
        for i, word in enumerate(words):
            if word not in _MENTION:
                continue
            before, after = words[max(0, i - 6) : i], words[i + 1 : i + 3]
            if _ELSEWHERE_BEFORE & set(words[max(0, i - 2) : i]) or (after and after[0] in _ELSEWHERE_AFTER):
                continue
            if _NEGATION & set(before) or (after and after[0] in _AFTER_NEGATION):
                continue
            return True
    return False


def _malformed(reason: str) -> Verdict:
    return Verdict(
        reward=REWARD_MALFORMED,
        success=False,
        feedback=f"Your answer could not be read: {reason}. It counts as a wrong action. {FORMAT_HINT}",
        errors=("malformed_answer",),
        details={"action": None, "claimed_intersection": None},
    )


def _read_answer(answer: object) -> tuple[str, bool] | str:
    """(canonical action, intersection claim) of a readable answer, else why it is not readable."""
    obj, reason = extract_json_object(answer)
    if obj is None:
        return reason
    observation = get_str_field(obj, KEY_OBSERVATION, "current_observation", "observation")
    instruction = get_str_field(obj, KEY_INSTRUCTION, "current_instruction", "instruction")
    raw_action = get_str_field(obj, KEY_ACTION)
    if observation is None or instruction is None or raw_action is None:
        missing = [k for k, v in zip(ANSWER_KEYS, (observation, instruction, raw_action)) if v is None]
        return f'the key "{missing[0]}" is missing or is not text'
    action = parse_action(raw_action)
    if action is None:
        shown = raw_action[:MAX_ACTION_CHARS] + ("..." if len(raw_action) > MAX_ACTION_CHARS else "")
        return f"the action {shown!r} is not forward(), turn_direction(x) or stop()"
    return action, read_intersection_claim(observation)


def verify_virl(task: VIRLStepTask, answer: object) -> Verdict:
    """Score one answer (normally model text) at one waypoint. Never raises, whatever ``answer`` holds."""
    read = _read_answer(answer)
    if isinstance(read, str):
        return _malformed(read)
    action, claimed = read
    details: dict[str, Any] = {
        "action": action,
        "claimed_intersection": claimed,
        "intersection_claim_correct": claimed == task.at_intersection,
    }
    if action == task.expected_action:
        return Verdict(REWARD_CORRECT, True, "Correct action.", (), details)
    allowed = allowed_actions(task.action_space)
    if action not in allowed:
        why = f"{action} is not in the action space ({', '.join(allowed)})"
    else:
        why = f"{action} is not the right move at this point"
    if claimed != task.at_intersection:
        truth = "you are at an intersection" if task.at_intersection else "you are not at an intersection"
        return Verdict(
            REWARD_WRONG_INTERSECTION,
            False,
            f"Your observation was wrong: {truth}. Your action was wrong too: {why}.",
            ("wrong_intersection_claim", "wrong_action"),
            details,
        )
    return Verdict(REWARD_WRONG_ACTION, False, f"Your action was wrong: {why}.", ("wrong_action",), details)


def _is_turn(action: str | None) -> bool:
    return action is not None and action.startswith("turn_direction(")


def answer_fields(task: VIRLStepTask, answer: object) -> dict[str, bool | None]:
    """Which parts of one answer at one point are right; ``None`` where a field does not apply.

    - ``action``: the action is the expert's in the stated space (the verifier's success)
    - ``action_valid``: the action lies in the action space the prompt states
    - ``intersection``: the claim about being at an intersection is right
    - ``turn_stated_space`` (only where the expert turns): the answer turns with a direction of the
      stated space (compass names or left/right/slightly left/slightly right), right or not
    - ``action_training_space`` (only where ``task.training_action`` is set, i.e. turns under a
      relative prompt): the answer is the expert's action in the training (absolute) space, i.e.
      ``turn_direction(<compass direction the route turns to>)``. At forward/stop points the two
      spaces share the expert's action, so nothing tells them apart there. A model that ignores the
      stated space and answers as it was trained scores here.

    An answer the verifier cannot read scores False on every field that applies. Evaluation reads
    these from *first answers*: the first of the attempts (2 by default) at each point of a route.
    """
    read = _read_answer(answer)
    action, claimed = (None, None) if isinstance(read, str) else read
    in_space = action is not None and action in allowed_actions(task.action_space)
    return {
        "action": action is not None and action == task.expected_action,
        "action_valid": in_space,
        "intersection": claimed is not None and claimed == task.at_intersection,
        "turn_stated_space": in_space and _is_turn(action) if _is_turn(task.expected_action) else None,
        "action_training_space": None if task.training_action is None else action == task.training_action,
    }
