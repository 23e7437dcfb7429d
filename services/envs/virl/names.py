"""Shop and place names for synthetic cities: short (legible on a sign) and unique within a city."""

from __future__ import annotations

import numpy as np

_WORDS: tuple[str, ...] = (
    "Blue Door", "Red Maple", "Golden", "Silver Fox", "Corner", "Harbor", "Union", "Lucky", "Oak",
    "Willow", "Morning", "Sunset", "Iron", "Copper", "Little", "Grand", "Old Mill", "Green Leaf",
    "Northside", "Parkview", "Elm", "Cedar", "Juniper", "Pine", "River", "Bay", "Hilltop",
    "Lantern", "Anchor", "Compass", "Velvet", "Crimson", "Amber", "Jade", "Ivory", "Cobalt", "Sage",
    "Tulip", "Orchid", "Falcon", "Sparrow", "Otter", "Red Fox", "Brown Bear", "Night Owl", "Magpie",
    "Starlight", "Bluebird", "Marigold", "Thistle", "Pebble", "Saffron", "Meadow", "Windmill",
)  # fmt: skip
_SURNAMES: tuple[str, ...] = (
    "Rossi", "Nakamura", "Okafor", "Duval", "Kowalski", "Haddad", "Lindqvist", "Moreno", "Chen",
    "Patel", "Schmidt", "Ivanova", "Silva", "Novak", "Dubois", "Costa", "Murphy", "Bianchi", "Tanaka",
    "Mendes", "Larsen", "Ahmed", "Fischer", "Kaur", "Reyes", "Walsh", "Suzuki", "Nguyen",
)  # fmt: skip
_KINDS: tuple[tuple[str, str], ...] = (
    ("Coffee", "cafe"), ("Cafe", "cafe"), ("Tea House", "cafe"), ("Bank", "bank"),
    ("Savings", "bank"), ("Pharmacy", "pharmacy"), ("Bakery", "bakery"), ("Bagels", "bakery"),
    ("Books", "bookstore"), ("Deli", "deli"), ("Pizza", "restaurant"), ("Noodle Bar", "restaurant"),
    ("Diner", "restaurant"), ("Sushi", "restaurant"), ("Taqueria", "restaurant"), ("Hotel", "hotel"),
    ("Florist", "florist"), ("Gym", "gym"), ("Market", "grocery"), ("Grocery", "grocery"),
    ("Hardware", "hardware store"), ("Cinema", "cinema"), ("Laundry", "laundromat"),
    ("Tailors", "tailor"), ("Barbers", "barber"), ("Wine Bar", "bar"), ("Tavern", "bar"),
    ("Dental", "clinic"), ("Clinic", "clinic"), ("Toys", "toy store"), ("Optics", "optician"),
)  # fmt: skip
MAX_NAME_CHARS = 22


def place_names(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` distinct (name, kind) pairs drawn from ``rng``."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for _ in range(count * 50):
        if len(out) == count:
            break
        noun, kind = _KINDS[int(rng.integers(len(_KINDS)))]
        if rng.random() < 0.3:
            name = f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}'s {noun}"
        else:
            name = f"{_WORDS[int(rng.integers(len(_WORDS)))]} {noun}"
        if len(name) <= MAX_NAME_CHARS and name not in seen:
            seen.add(name)
            out.append((name, kind))
    if len(out) < count:
        raise ValueError(f"cannot make {count} distinct place names")
    return out
