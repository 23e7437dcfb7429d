"""The route model every V-IRL episode plays, and the one builder that turns a route plan into it.

A route is a list of *waypoints*: the start, interpolated points along the streets, the
intersections passed or turned at, and the destination. The agent is on a rail: exactly one
action is correct at each waypoint, and a correct action moves it to the next waypoint.

Action at a waypoint (one per waypoint, so an expert episode earns +1 per waypoint):

* ``stop()`` at the destination (the last waypoint);
* ``turn_direction(x)`` where the way on differs from the way the agent faces on arrival
  (at the start, the initial heading): it turns to face x *and walks on* to the next waypoint,
  as in the original environment. x is the compass name of the new heading (absolute rule) or
  the turn label of the change (relative rule, see :mod:`headings`);
* ``forward()`` otherwise (interpolated points, intersections passed straight through).

The instructions are one sentence per turn and one per stretch of walking ("First, turn
slightly right to face northeast." / "Then move forward until you reach the next intersection
where Blue Bottle Coffee is on your left."). The "current instruction" of a waypoint is the turn
sentence where it must turn, otherwise the walking sentence it is following; the destination
shares the last walking sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.envs.virl.headings import (
    FORWARD,
    STOP,
    ActionSpace,
    compass_name,
    snap,
    turn_action,
    turn_label,
)


@dataclass(frozen=True, slots=True)
class Waypoint:
    position: tuple[float, float]  # metres east and north of the route's origin
    facing: int  # compass heading (multiple of 45) the agent faces on arrival
    at_intersection: bool
    left: tuple[str, ...]  # landmark names visible on the left, nearest first
    right: tuple[str, ...]
    absolute_action: str
    relative_action: str
    instruction_index: int

    def action(self, space: ActionSpace) -> str:
        return self.absolute_action if space == "absolute" else self.relative_action


@dataclass(frozen=True, slots=True)
class Route:
    route_id: str
    city: str
    start: str  # name of the start place
    destination: str
    instructions: tuple[str, ...]
    waypoints: tuple[Waypoint, ...]


# -- plans: what generators and loaders produce --------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointPlan:
    """A waypoint before actions are known; ``left``/``right`` are relative to its arrival heading."""

    position: tuple[float, float]
    at_intersection: bool = False
    left: tuple[str, ...] = ()
    right: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LegPlan:
    """A stretch walked at one heading, from one milestone (start or turn) to the next.

    ``points`` are the waypoints after the leg's first milestone, ending with its last one.
    ``landmark`` names the last milestone in the instruction as (name, side), if any.
    """

    heading: float
    points: tuple[PointPlan, ...]
    landmark: tuple[str, str] | None = None
    passed_intersections: int = 0


def _ordinal(n: int) -> str:
    words = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh"}
    return words.get(n, f"{n}th")


def _walk_sentence(leg: LegPlan, opener: str, is_last: bool, destination: str) -> str:
    n = leg.passed_intersections
    past = f" past {n} intersection{'s' if n != 1 else ''}" if n else ""
    if is_last:
        where = f"the destination, {destination}"
        if leg.landmark is not None:
            where += f", on your {leg.landmark[1]}"
        return f"{opener}{past} until you reach {where}."
    if leg.landmark is not None:
        name, side = leg.landmark
        target = "the next intersection" if not n else "the intersection"
        return f"{opener}{past} until you reach {target} where {name} is on your {side}."
    return f"{opener} until you reach the {_ordinal(n + 1) if n else 'next'} intersection."


def build_route(
    route_id: str,
    city: str,
    start_name: str,
    destination: str,
    initial_heading: float,
    start: PointPlan,
    legs: Sequence[LegPlan],
) -> Route:
    """Assign actions and instruction sentences to a planned route (see the module docstring)."""
    if not legs or any(not leg.points for leg in legs):
        raise ValueError(f"route {route_id}: every route needs at least one leg with waypoints")
    instructions: list[str] = []
    waypoints: list[Waypoint] = []
    facing = snap(initial_heading)
    milestone = start
    for k, leg in enumerate(legs):
        heading = snap(leg.heading)
        label = turn_label(heading - facing)
        is_last = k == len(legs) - 1
        if label is not None:
            verb = "First, turn" if k == 0 else "Turn"
            instructions.append(f"{verb} {label} to face {compass_name(heading)}.")
            waypoints.append(
                _waypoint(
                    milestone,
                    facing,
                    turn_action(compass_name(heading)),
                    turn_action(label),
                    len(instructions) - 1,
                )
            )
            opener = "Then move forward"
        else:
            opener = "First, move forward" if k == 0 else "Continue forward"
        instructions.append(_walk_sentence(leg, opener, is_last, destination))
        walk = len(instructions) - 1
        if label is None:
            waypoints.append(_waypoint(milestone, facing, FORWARD, FORWARD, walk))
        for point in leg.points[:-1]:
            waypoints.append(_waypoint(point, heading, FORWARD, FORWARD, walk))
        facing, milestone = heading, leg.points[-1]
    waypoints.append(_waypoint(milestone, facing, STOP, STOP, len(instructions) - 1))
    return Route(route_id, city, start_name, destination, tuple(instructions), tuple(waypoints))


def _waypoint(point: PointPlan, facing: int, absolute: str, relative: str, instruction: int) -> Waypoint:
    return Waypoint(point.position, facing, point.at_intersection, point.left, point.right,
                    absolute, relative, instruction)  # fmt: skip
