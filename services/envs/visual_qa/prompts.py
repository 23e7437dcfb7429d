"""Prompt wording for VisualQA, in three styles.

Every template says the same thing about the answer format (a number, or a choice letter, or a
short text, inside \\boxed{}), so a style change never changes what counts as a valid reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.envs.base import PromptStyle, pick_template
from services.verifier.visual_qa import LETTERS


@dataclass(frozen=True)
class Template:
    image_intro: str
    text_intro: str  # the picture is replaced by its description
    scene_label: str
    number: str
    choice: str
    text: str


TEMPLATES: dict[str, object] = {
    "default": Template(
        image_intro="Look at the picture and answer the question about it.",
        text_intro="A picture is described in words below. Answer the question about it.",
        scene_label="Description of the picture:",
        number="Reason step by step if needed, then write the final answer as a number inside \\boxed{}, "
        "for example \\boxed{12}.",
        choice="Reason step by step if needed, then write the letter of the correct option inside \\boxed{}, "
        "for example \\boxed{B}.",
        text="Reason step by step if needed, then write the final answer inside \\boxed{}.",
    ),
    "compact": Template(
        image_intro="Answer the question about the picture.",
        text_intro="Answer the question about the described picture.",
        scene_label="Picture:",
        number="Final answer: a number in \\boxed{}, e.g. \\boxed{12}.",
        choice="Final answer: the option letter in \\boxed{}, e.g. \\boxed{B}.",
        text="Final answer in \\boxed{}.",
    ),
    "diverse": [
        Template(
            image_intro="Study the image, then solve the problem below.",
            text_intro="You cannot see the image, but it is described below. Solve the problem.",
            scene_label="What the image shows:",
            number="End with the final number inside \\boxed{}, like \\boxed{12}.",
            choice="End with the letter of your chosen option inside \\boxed{}, like \\boxed{B}.",
            text="End with your final answer inside \\boxed{}.",
        ),
        Template(
            image_intro="Here is a picture and a question about it.",
            text_intro="Here is a description of a picture and a question about it.",
            scene_label="Scene:",
            number="Show your working briefly and put the numeric answer in \\boxed{} (for instance \\boxed{12}).",
            choice="Show your working briefly and put the chosen option's letter in \\boxed{} (for instance \\boxed{B}).",
            text="Show your working briefly and put the answer in \\boxed{}.",
        ),
        Template(
            image_intro="Use the figure to answer.",
            text_intro="Use the figure, described in words, to answer.",
            scene_label="The figure:",
            number="Your reply must finish with the answer, a number, written as \\boxed{12} would be.",
            choice="Your reply must finish with the letter of one option, written as \\boxed{B} would be.",
            text="Your reply must finish with the answer written inside \\boxed{}.",
        ),
        Template(
            image_intro="Examine the picture carefully.",
            text_intro="Read this account of a picture carefully.",
            scene_label="Account of the picture:",
            number="Give the result as a number in \\boxed{} at the end, e.g. \\boxed{12}.",
            choice="Give the letter of the right option in \\boxed{} at the end, e.g. \\boxed{B}.",
            text="Give the result in \\boxed{} at the end.",
        ),
        Template(
            image_intro="A visual question follows.",
            text_intro="A visual question follows; the picture is given as text.",
            scene_label="Picture, in words:",
            number="Finish by writing the number that answers it inside \\boxed{}, such as \\boxed{12}.",
            choice="Finish by writing the matching option letter inside \\boxed{}, such as \\boxed{B}.",
            text="Finish by writing the answer inside \\boxed{}.",
        ),
    ],
}


def choose_template(style: PromptStyle, rng: np.random.Generator) -> Template:
    return pick_template(TEMPLATES, style, rng)  # type: ignore[no-any-return]


def build_prompt(
    template: Template,
    question: str,
    choices: tuple[str, ...] | None,
    answer_type: str,
    scene: str | None,
    image_mode: bool,
) -> str:
    """The first user turn: intro, the scene in words (text mode), question, options, format rule."""
    parts = []
    if image_mode:
        parts.append(template.image_intro)
    elif scene:
        parts += [template.text_intro, f"{template.scene_label} {scene}"]
    # text mode without a description (a benchmark row): the question stands alone
    body = question.strip()
    if choices:
        body += "\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    parts.append(body)
    parts.append(getattr(template, answer_type))
    return "\n\n".join(parts)


def retry_text(verdict_feedback: str, errors: tuple[str, ...], attempts_left: int) -> str:
    """The next user turn after a failed attempt."""
    if attempts_left <= 0:
        return verdict_feedback
    if "no_answer_found" in errors:
        return "No final answer was found in your reply; put it inside \\boxed{} and try again."
    if verdict_feedback.endswith("."):
        return verdict_feedback[:-1] + "; try again."
    return verdict_feedback + " Try again."
