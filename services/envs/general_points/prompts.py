"""Prompt templates for GeneralPoints. Every style states the same rules and answer format."""

from __future__ import annotations

from dataclasses import dataclass

from services.verifier.face_rules import FaceValues, rule_text

FORMAT_EXAMPLE = '{"cards": ["2", "5", "J", "K"], "number": [2, 5, 10, 10], "formula": "(5-2)*10-10+4=24"}'


@dataclass(frozen=True)
class GPTemplate:
    intro: str  # the game; {target} and {face_rule}
    cards_text: str  # text mode: {cards}
    cards_image: str  # image mode
    answer: str  # the JSON answer format


_ANSWER = (
    'Reply with a single JSON object with three keys: "cards" (the four card names you see, '
    'such as "A", "7", "10", "Q"), "number" (the number each card counts as) and "formula" '
    "(your formula followed by ={target}). Use only the card numbers, + - * / and parentheses."
)

TEMPLATES: dict[str, object] = {
    "default": GPTemplate(
        intro=(
            "You are an expert card game player. You are given four playing cards. Build a formula that "
            "uses the number of every card exactly once, combined with + - * / and parentheses, whose "
            "value is exactly {target}. An ace counts as 1 and {face_rule}."
        ),
        cards_text="The cards are: {cards}.",
        cards_image="The four cards are shown in the image.",
        answer=_ANSWER,
    ),
    "compact": GPTemplate(
        intro="Make {target} from the four cards, each number once, with + - * / ( ). A=1, {face_rule}.",
        cards_text="Cards: {cards}.",
        cards_image="Cards: see image.",
        answer='Answer as JSON: {{"cards": [...], "number": [...], "formula": "...={target}"}}.',
    ),
    "diverse": [
        GPTemplate(
            intro=(
                "Let's play a numbers game with cards. Combine the values of the four cards with addition, "
                "subtraction, multiplication, division and brackets so that the result equals {target}. "
                "Every card is used once and only once. Aces are worth 1, and {face_rule}."
            ),
            cards_text="Your hand: {cards}.",
            cards_image="Your hand is in the picture.",
            answer=_ANSWER,
        ),
        GPTemplate(
            intro=(
                "Puzzle: reach the target number {target}. You hold four cards; write an arithmetic "
                "expression with + - * / and parentheses in which each card's value appears exactly once. "
                "Card values: A is 1, number cards are their number, {face_rule}."
            ),
            cards_text="Cards in hand: {cards}.",
            cards_image="Look at the image to see the cards in hand.",
            answer=_ANSWER,
        ),
        GPTemplate(
            intro=(
                "You are solving a twenty-four style card puzzle whose goal is {target}. Read the four "
                "cards, turn each into its value (ace = 1, {face_rule}), and find one expression using all "
                "four values exactly once with + - * / and parentheses that equals {target}."
            ),
            cards_text="The dealt cards: {cards}.",
            cards_image="The dealt cards appear in the image.",
            answer=_ANSWER,
        ),
        GPTemplate(
            intro=(
                "Four cards are on the table. Your job: an equation equal to {target} that uses each card "
                "value once, with only + - * / and parentheses. Remember that an ace is 1 and {face_rule}."
            ),
            cards_text="On the table: {cards}.",
            cards_image="The table is shown in the image.",
            answer=_ANSWER,
        ),
    ],
}


def build_prompt(template: GPTemplate, *, target: int, face_values: FaceValues, cards: str | None) -> str:
    """The first user turn; every style states the active face-card rule in words."""
    parts = [template.intro.format(target=target, face_rule=rule_text(face_values))]
    parts.append(template.cards_text.format(cards=cards) if cards is not None else template.cards_image)
    parts.append(template.answer.format(target=target))
    return "\n".join(parts)


def feedback_turn(feedback: str, attempts_left: int, target: int) -> str:
    plural = "s" if attempts_left != 1 else ""
    return (
        f"{feedback} You have {attempts_left} attempt{plural} left. Try again and reply with the same JSON "
        f"format, ending the formula with ={target}."
    )
