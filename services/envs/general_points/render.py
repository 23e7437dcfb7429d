"""Card pictures drawn by the project: four cards side by side on a green table.

Proportions follow the original task (square picture, table #35654d, cards 5:7). Suit glyphs are
drawn as shapes, not font characters, so the picture is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.envs.general_points.cards import Card

TABLE_GREEN = (0x35, 0x65, 0x4D)
SUIT_COLOURS = {
    "spades": (20, 20, 20),
    "clubs": (20, 20, 20),
    "hearts": (200, 20, 30),
    "diamonds": (200, 20, 30),
}


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, size))


def _draw_suit(draw: ImageDraw.ImageDraw, suit: str, cx: float, cy: float, r: float, colour: tuple) -> None:
    """A suit glyph of radius ``r`` centred on (cx, cy)."""
    if suit == "diamonds":
        draw.polygon([(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)], fill=colour)
    elif suit == "hearts":
        q = r * 0.52
        draw.ellipse([cx - 2 * q, cy - r, cx, cy - r + 2 * q], fill=colour)
        draw.ellipse([cx, cy - r, cx + 2 * q, cy - r + 2 * q], fill=colour)
        draw.polygon(
            [(cx - 1.97 * q, cy - r + 1.2 * q), (cx + 1.97 * q, cy - r + 1.2 * q), (cx, cy + r)], fill=colour
        )
    elif suit == "spades":
        q = r * 0.5
        draw.polygon([(cx, cy - r), (cx + 2 * q, cy + 0.2 * r), (cx - 2 * q, cy + 0.2 * r)], fill=colour)
        draw.ellipse([cx - 2 * q, cy - 0.25 * r, cx, cy - 0.25 * r + 2 * q], fill=colour)
        draw.ellipse([cx, cy - 0.25 * r, cx + 2 * q, cy - 0.25 * r + 2 * q], fill=colour)
        draw.polygon([(cx, cy + 0.3 * r), (cx + 0.4 * r, cy + r), (cx - 0.4 * r, cy + r)], fill=colour)
    else:  # clubs
        q = r * 0.42
        for dx, dy in ((0, -r + q), (-q * 1.1, -0.05 * r + q * 0.4), (q * 1.1, -0.05 * r + q * 0.4)):
            draw.ellipse([cx + dx - q, cy + dy - q, cx + dx + q, cy + dy + q], fill=colour)
        draw.polygon([(cx, cy), (cx + 0.4 * r, cy + r), (cx - 0.4 * r, cy + r)], fill=colour)


def _draw_card(draw: ImageDraw.ImageDraw, card: Card, box: tuple[float, float, float, float]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    draw.rounded_rectangle(
        box, radius=w * 0.08, fill=(250, 250, 247), outline=(60, 60, 60), width=max(1, int(w / 90))
    )
    colour = SUIT_COLOURS[card.suit]
    corner = _font(int(h * 0.13))
    draw.text((x0 + w * 0.07, y0 + h * 0.04), card.rank, fill=colour, font=corner)
    _draw_suit(draw, card.suit, x0 + w * 0.15, y0 + h * 0.23, w * 0.08, colour)
    # Large rank and suit in the middle keep the card legible when the picture is scaled down.
    big = _font(int(h * 0.34))
    draw.text((x0 + w / 2, y0 + h * 0.40), card.rank, fill=colour, font=big, anchor="mm")
    _draw_suit(draw, card.suit, x0 + w / 2, y0 + h * 0.74, w * 0.2, colour)


def render_cards(cards: Sequence[Card], size: int = 1200) -> np.ndarray:
    """The table picture as an RGB ``uint8`` array of shape (size, size, 3)."""
    image = Image.new("RGB", (size, size), TABLE_GREEN)
    draw = ImageDraw.Draw(image)
    n = len(cards)
    gap = size * 0.03
    card_w = (size - gap * (n + 1)) / n
    card_h = card_w * 7 / 5
    top = (size - card_h) / 2
    for i, card in enumerate(cards):
        x0 = gap + i * (card_w + gap)
        _draw_card(draw, card, (x0, top, x0 + card_w, top + card_h))
    return np.asarray(image, dtype=np.uint8)
