"""Cards, suits and dealing for GeneralPoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.verifier.face_rules import FaceValues
from services.verifier.general_points import CARD_NAMES, card_value, normalise_card_name
from services.verifier.points_solver import is_solvable

SuitSet = Literal["black", "red", "mixed"]
SUITS_BY_SET: dict[str, tuple[str, ...]] = {
    "black": ("spades", "clubs"),
    "red": ("hearts", "diamonds"),
    "mixed": ("spades", "clubs", "hearts", "diamonds"),
}
FACE_CARDS = frozenset({"J", "Q", "K"})
MAX_DEAL_TRIES = 10_000


@dataclass(frozen=True, slots=True)
class Card:
    rank: str  # one of CARD_NAMES
    suit: str  # spades, clubs, hearts, diamonds

    @property
    def label(self) -> str:
        names = {"A": "Ace", "J": "Jack", "Q": "Queen", "K": "King"}
        return f"{names.get(self.rank, self.rank)} of {self.suit}"


_DECKS: dict[str, tuple[Card, ...]] = {
    name: tuple(Card(rank, suit) for suit in suit_names for rank in CARD_NAMES)
    for name, suit_names in SUITS_BY_SET.items()
}


def deal(
    rng: np.random.Generator, face_values: FaceValues, suits: SuitSet, target: int, need_face_card: bool
) -> tuple[Card, ...]:
    """Draw 4 distinct cards from the allowed suits until the hand is solvable under ``face_values``.

    With ``need_face_card`` (every rule but the training one) every hand holds at least one face
    card, so the changed rule always matters.
    """
    deck = _DECKS[suits]
    for _ in range(MAX_DEAL_TRIES):
        picks = rng.choice(len(deck), size=4, replace=False)
        hand = tuple(deck[int(i)] for i in picks)
        if need_face_card and not any(c.rank in FACE_CARDS for c in hand):
            continue
        if is_solvable([card_value(c.rank, face_values) for c in hand], target):
            return hand
    raise ValueError(f"no solvable hand for target {target} found in {MAX_DEAL_TRIES} draws")


def hand_from_names(
    names: Sequence[object], rng: np.random.Generator, face_values: FaceValues, suits: SuitSet, target: int
) -> tuple[Card, ...]:
    """A chosen hand (suits drawn from the allowed set); ValueError when malformed or unsolvable."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) != 4:
        raise ValueError(f"a hand is a list of 4 card names such as ['3', '3', '8', '8'], got {names!r}")
    ranks = [normalise_card_name(n) for n in names]
    if any(r is None for r in ranks):
        bad = [n for n, r in zip(names, ranks) if r is None]
        raise ValueError(f"unknown card names {bad!r}; use {', '.join(CARD_NAMES)}")
    allowed = SUITS_BY_SET[suits]
    hand = tuple(Card(str(r), allowed[int(rng.integers(len(allowed)))]) for r in ranks)
    numbers = [card_value(c.rank, face_values) for c in hand]
    if not is_solvable(numbers, target):
        raise ValueError(f"the hand {[c.rank for c in hand]} (numbers {numbers}) cannot make {target}")
    return hand
