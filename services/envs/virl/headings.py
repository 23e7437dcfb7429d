"""Compass headings, turn labels and the two action vocabularies of V-IRL.

Headings are degrees clockwise from north (0 = north, 90 = east), as in the published routes.
Turn labels follow paper 1: a heading change below -45 degrees is "left", above 45 "right",
otherwise "slightly left" / "slightly right". The change is first wrapped into (-180, 180] so
that turning from 350 to 10 degrees is a 20-degree right turn, not a -340-degree left one.
"""

from __future__ import annotations

import math

# The vocabularies live with the verifier (the lower layer); re-exported here for the env.
from services.verifier.virl import COMPASS, RELATIVE, ActionSpace, allowed_actions  # noqa: F401

FORWARD, STOP = "forward()", "stop()"


def wrap_delta(delta: float) -> float:
    """Wrap a heading change into (-180, 180]."""
    wrapped = math.fmod(delta, 360.0)
    if wrapped <= -180.0:
        wrapped += 360.0
    elif wrapped > 180.0:
        wrapped -= 360.0
    return wrapped


def snap(heading: float) -> int:
    """The nearest of the 8 compass headings (0, 45, ..., 315)."""
    return int(round(heading / 45.0)) % 8 * 45


def compass_name(heading: float) -> str:
    return COMPASS[snap(heading) // 45]


def turn_label(delta: float) -> str | None:
    """Label of a heading change in degrees; None when there is no change (go straight)."""
    d = wrap_delta(delta)
    if d == 0:
        return None
    if d < -45:
        return "left"
    if d > 45:
        return "right"
    return "slightly left" if d < 0 else "slightly right"


def bearing(dx: float, dy: float) -> float:
    """Heading in degrees of the vector (dx east, dy north)."""
    return math.degrees(math.atan2(dx, dy)) % 360.0


def unit(heading: float) -> tuple[float, float]:
    rad = math.radians(heading)
    return math.sin(rad), math.cos(rad)


def side_of(heading: float, dx: float, dy: float) -> str | None:
    """ "left" or "right" of an agent facing ``heading`` for an offset (dx, dy); None if dead ahead/behind."""
    fx, fy = unit(heading)
    cross = fx * dy - fy * dx
    if abs(cross) < 1e-6 * max(1.0, math.hypot(dx, dy)):
        return None
    return "left" if cross > 0 else "right"


def turn_action(target: str) -> str:
    return f"turn_direction({target})"
