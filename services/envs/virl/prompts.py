"""Prompt text of V-IRL: the first user turn, the turns after each answer, and the observation.

Every style shares the same blocks for the action space, the scoring rules and the answer format,
so only the framing differs; ``diverse`` draws one of several paraphrases per episode.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.envs.virl.headings import COMPASS, RELATIVE, ActionSpace
from services.envs.virl.routes import Waypoint
from services.verifier.virl import ANSWER_KEYS  # noqa: F401  (the keys the verifier reads)

INTERSECTION_YES = "You are at an intersection."
INTERSECTION_NO = "You are not at an intersection."

ANSWER_FORMAT = (
    "Reply with exactly one JSON object:\n"
    '{"current observation": "<what you observe now, ending with \''
    + INTERSECTION_YES
    + "' or '"
    + INTERSECTION_NO
    + "'>\", "
    '"current instruction": "<the sentence of the route instructions you are carrying out now>", '
    '"action": "<one action from the action space>"}'
)
# Short: it comes back every turn of a ~16-turn episode, and the first prompt gave the format.
FORMAT_REMINDER = "Answer with the same JSON keys."


def action_space_text(space: ActionSpace) -> str:
    if space == "absolute":
        choices, meaning = ", ".join(COMPASS), "the compass direction to face"
    else:
        choices, meaning = ", ".join(RELATIVE), "a turn of 90 degrees (left, right) or 45 degrees (slightly)"
    return (
        '- "forward()": walk on to the next point ahead.\n'
        f'- "turn_direction(x)": turn, then walk on to the next point; x is {meaning}, one of: {choices}.\n'
        '- "stop()": you are at the destination; end the walk.'
    )


def rules_text(verify_iter: int) -> str:
    return (
        "A correct action earns +1 and takes you to the next point. A wrong action costs -1, and a "
        "wrong statement about whether you are at an intersection costs -1.5. You have "
        f"{verify_iter} attempt{'s' if verify_iter != 1 else ''} at every point; if they all fail, "
        "the navigation ends as a failure."
    )


def _names(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def describe(waypoint: Waypoint) -> str:
    """The true observation at a waypoint, in the words the expert answers with."""
    parts = []
    for side, names in (("left", waypoint.left), ("right", waypoint.right)):
        if names:
            parts.append(f"{_names(names)} {'is' if len(names) == 1 else 'are'} on your {side}")
    seen = "; ".join(parts) + "." if parts else "No landmarks nearby."
    return f"{seen} {INTERSECTION_YES if waypoint.at_intersection else INTERSECTION_NO}"


VIEWS_TEXT = (
    "The image shows four street views around you: front (top left), right (top right), "
    "back (bottom left) and left (bottom right)."
)


def observation_text(waypoint: Waypoint, image_mode: bool) -> str:
    return VIEWS_TEXT if image_mode else describe(waypoint)


def numbered(instructions: Sequence[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(instructions, 1))


_DEFAULT = """You are walking through the streets of {city}, from {start} to {destination}.
Follow the route instructions one step at a time: at every point, answer with one action.

[Route instructions]
{instructions}

[Action space]
{action_space}

[Rules]
{rules}

[Answer format]
{answer_format}

[Current observation]
{observation}"""

_COMPACT = """Walk through {city} from {start} to {destination}; one action per turn.
Route:
{instructions}
Actions:
{action_space}
{rules}
{answer_format}
Observation: {observation}"""

_DIVERSE = [
    """Navigation task in {city}. Your goal is to get from {start} to {destination}.
Follow these directions:
{instructions}

Possible actions:
{action_space}

Scoring: {rules}

{answer_format}

What you observe right now: {observation}""",
    """Imagine you are a pedestrian in {city}, standing at {start}.
Someone gave you directions to {destination}:
{instructions}

Each reply must pick one of these actions:
{action_space}

How answers are judged: {rules}

{answer_format}

Current observation: {observation}""",
    """You are a street-navigation agent. City: {city}. Start: {start}. Destination: {destination}.

Directions:
{instructions}

Action space:
{action_space}

{rules}

Output format. {answer_format}

Observation: {observation}""",
    """Follow the directions below to walk from {start} to {destination} in {city}, one action per reply.

Allowed actions:
{action_space}

Directions to follow:
{instructions}

{rules}

{answer_format}

Here is what you see: {observation}""",
]

TEMPLATES: dict[str, object] = {"default": _DEFAULT, "compact": _COMPACT, "diverse": _DIVERSE}


def first_prompt(template: str, *, city: str, start: str, destination: str, instructions: Sequence[str],
                 space: ActionSpace, verify_iter: int, observation: str) -> str:  # fmt: skip
    return template.format(
        city=city,
        start=start,
        destination=destination,
        instructions=numbered(instructions),
        action_space=action_space_text(space),
        rules=rules_text(verify_iter),
        answer_format=ANSWER_FORMAT,
        observation=observation,
    )


def after_correct(action: str, index: int, total: int, observation: str) -> str:
    return (
        f"Correct: {action}. You are now at point {index + 1} of {total}.\n"
        f"Current observation: {observation}\n{FORMAT_REMINDER}"
    )


def after_wrong(feedback: str, attempts_left: int, observation: str) -> str:
    plural = "s" if attempts_left != 1 else ""
    return (
        f"{feedback} You have {attempts_left} attempt{plural} left at this point.\n"
        f"Current observation: {observation}\n{FORMAT_REMINDER}"
    )


def finished(destination: str) -> str:
    return f"Correct: stop(). You have reached {destination}; the navigation is complete."


def failed(feedback: str) -> str:
    return f"{feedback} No attempts are left at this point; the navigation has failed."
