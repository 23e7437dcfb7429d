"""Synthetic cities and the routes through them, deterministic by (seed, city name).

A city is a lattice of streets (blocks of 100 m, a few removed) crossed by two parallel diagonal
avenues, so that routes turn by 45 degrees ("slightly left/right") as well as by 90. Named places
stand beside the streets, 10 m from the centre line; an agent sees those within 20 m.

A route starts on the street in front of one place, walks along streets without revisiting an
intersection, turns only by 45 or 90 degrees and only at real intersections (3 or more streets),
and ends on the street in front of its destination place. Route ``i`` of a city is a pure
function of (city name, seed, i); the environment draws ``i`` from its own seeded generator.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from services.envs.virl.headings import bearing, side_of, snap, wrap_delta
from services.envs.virl.names import place_names
from services.envs.virl.routes import LegPlan, PointPlan, Route, build_route

GRID = 8  # intersections per side
BLOCK = 100.0  # metres between neighbouring intersections
SIDE_OFFSET = 10.0  # a place's distance from the street's centre line
VISIBILITY = 20.0  # how far the agent sees places
POINT_SPACING = 35.0  # metres between interpolated waypoints
MAX_SIGHTINGS = 3  # places reported per side
ALLOWED_TURNS = (-90, -45, 0, 45, 90)


@dataclass(frozen=True, slots=True)
class Street:
    a: int
    b: int
    heading: float  # from a to b
    length: float


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    kind: str
    position: tuple[float, float]
    street: int
    along: float  # metres from the street's node a


@dataclass(frozen=True)
class City:
    name: str
    seed: int
    nodes: tuple[tuple[float, float], ...]
    streets: tuple[Street, ...]
    links: tuple[tuple[tuple[int, int], ...], ...]  # per node: (neighbour, street index)
    places: tuple[Place, ...]
    places_by_street: tuple[tuple[int, ...], ...]
    _cells: dict[tuple[int, int], tuple[int, ...]] = field(repr=False, compare=False)

    def degree(self, node: int) -> int:
        return len(self.links[node])

    def visible(self, x: float, y: float, heading: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Places within sight of (x, y), split by side for an agent facing ``heading``."""
        cx, cy = int(math.floor(x / VISIBILITY)), int(math.floor(y / VISIBILITY))
        found: list[tuple[float, str, str]] = []
        for ix in (cx - 1, cx, cx + 1):
            for iy in (cy - 1, cy, cy + 1):
                for idx in self._cells.get((ix, iy), ()):
                    place = self.places[idx]
                    dx, dy = place.position[0] - x, place.position[1] - y
                    dist = math.hypot(dx, dy)
                    side = side_of(heading, dx, dy) if dist <= VISIBILITY else None
                    if side is not None:
                        found.append((dist, side, place.name))
        found.sort()
        left = tuple(n for _, s, n in found if s == "left")[:MAX_SIGHTINGS]
        right = tuple(n for _, s, n in found if s == "right")[:MAX_SIGHTINGS]
        return left, right


def _seed_words(name: str, seed: int, *extra: int) -> list[int]:
    """Entropy for numpy from the city name (hashlib: stable across processes, unlike hash())."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)] + list(extra)


def normalise_city_name(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", " ").split())


def display_name(name: str) -> str:
    return " ".join(part.capitalize() for part in normalise_city_name(name).split("_"))


def _connected(n_nodes: int, edges: set[tuple[int, int]]) -> bool:
    adj: list[list[int]] = [[] for _ in range(n_nodes)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    seen, queue = {0}, deque([0])
    while queue:
        for nb in adj[queue.popleft()]:
            if nb not in seen:
                seen.add(nb)
                queue.append(nb)
    return len(seen) == n_nodes


def _segment_distances(p: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    d = ends - starts
    t = np.clip(((p - starts) * d).sum(1) / (d * d).sum(1), 0.0, 1.0)
    closest = starts + t[:, None] * d
    return np.hypot(*(closest - p).T)


@lru_cache(maxsize=32)
def generate_city(name: str, seed: int = 0) -> City:
    """The city called ``name`` (normalised: "New York" and "new_york" are the same city)."""
    name = normalise_city_name(name)
    rng = np.random.default_rng(_seed_words(name, seed))

    def node_id(i, j):
        return i * GRID + j

    nodes = tuple((i * BLOCK, j * BLOCK) for i in range(GRID) for j in range(GRID))
    lattice = [(node_id(i, j), node_id(i + 1, j)) for i in range(GRID - 1) for j in range(GRID)]
    lattice += [(node_id(i, j), node_id(i, j + 1)) for i in range(GRID) for j in range(GRID - 1)]
    edges = set(lattice)
    # Remove some blocks' streets, keeping the city connected and every corner a street corner.
    degree = {n: 0 for n in range(len(nodes))}
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1
    for idx in rng.permutation(len(lattice))[: len(lattice) // 10]:
        a, b = lattice[int(idx)]
        if degree[a] > 2 and degree[b] > 2 and _connected(len(nodes), edges - {(a, b)}):
            edges.discard((a, b))
            degree[a] -= 1
            degree[b] -= 1
    # Two parallel diagonal avenues (parallel, so they never cross between intersections).
    rising = bool(rng.integers(2))
    offsets = rng.choice(np.arange(-(GRID - 3), GRID - 2), size=2, replace=False)
    while abs(int(offsets[0]) - int(offsets[1])) < 3:
        offsets = rng.choice(np.arange(-(GRID - 3), GRID - 2), size=2, replace=False)
    for c in offsets:
        for i in range(GRID - 1):
            j, j2 = (i - int(c), i - int(c) + 1) if rising else (int(c) + GRID - 1 - i, int(c) + GRID - 2 - i)
            if 0 <= j < GRID and 0 <= j2 < GRID:
                edges.add(tuple(sorted((node_id(i, j), node_id(i + 1, j2)))))  # type: ignore[arg-type]
    streets: list[Street] = []
    for a, b in sorted(edges):
        (xa, ya), (xb, yb) = nodes[a], nodes[b]
        streets.append(Street(a, b, bearing(xb - xa, yb - ya), math.hypot(xb - xa, yb - ya)))
    links: list[list[tuple[int, int]]] = [[] for _ in nodes]
    for idx, s in enumerate(streets):
        links[s.a].append((s.b, idx))
        links[s.b].append((s.a, idx))
    places = _place_landmarks(rng, nodes, streets)
    by_street: list[list[int]] = [[] for _ in streets]
    cells: dict[tuple[int, int], list[int]] = {}
    for idx, p in enumerate(places):
        by_street[p.street].append(idx)
        key = (int(math.floor(p.position[0] / VISIBILITY)), int(math.floor(p.position[1] / VISIBILITY)))
        cells.setdefault(key, []).append(idx)
    return City(
        name=name,
        seed=seed,
        nodes=nodes,
        streets=tuple(streets),
        links=tuple(tuple(sorted(x)) for x in links),
        places=tuple(places),
        places_by_street=tuple(tuple(x) for x in by_street),
        _cells={k: tuple(v) for k, v in cells.items()},
    )


def _place_landmarks(rng: np.random.Generator, nodes: tuple[tuple[float, float], ...],
                     streets: list[Street]) -> list[Place]:  # fmt: skip
    starts = np.array([nodes[s.a] for s in streets], dtype=float)
    ends = np.array([nodes[s.b] for s in streets], dtype=float)
    slots: list[tuple[tuple[float, float], int, float]] = []
    taken: list[tuple[float, float]] = []
    for idx, s in enumerate(streets):
        ux, uy = (ends[idx] - starts[idx]) / s.length
        for along in (15.0, s.length / 2, s.length - 15.0):
            for side in (1.0, -1.0):
                if rng.random() >= 0.5:
                    continue
                pos = (starts[idx][0] + ux * along - uy * side * SIDE_OFFSET,
                       starts[idx][1] + uy * along + ux * side * SIDE_OFFSET)  # fmt: skip
                dist = _segment_distances(np.array(pos), starts, ends)
                dist[idx] = np.inf
                # Not on another street, not on top of another place.
                if dist.min() < 8.0 or any(math.hypot(pos[0] - q[0], pos[1] - q[1]) < 8.0 for q in taken):
                    continue
                taken.append(pos)
                slots.append((pos, idx, along))
    names = place_names(rng, len(slots))
    return [Place(n, k, pos, street, along) for (n, k), (pos, street, along) in zip(names, slots)]


# -- routes -------------------------------------------------------------------------------------

ROUTE_POOL = 1000  # routes drawn by a plain reset(); indices from ROUTE_POOL on are never drawn


def _interpolate(p: tuple[float, float], q: tuple[float, float]) -> list[tuple[float, float]]:
    length = math.hypot(q[0] - p[0], q[1] - p[1])
    n = max(0, min(3, round(length / POINT_SPACING) - 1))
    return [(p[0] + (q[0] - p[0]) * t / (n + 1), p[1] + (q[1] - p[1]) * t / (n + 1)) for t in range(1, n + 1)]


def _street_point(city: City, place: Place) -> tuple[float, float]:
    s = city.streets[place.street]
    (xa, ya), (xb, yb) = city.nodes[s.a], city.nodes[s.b]
    t = place.along / s.length
    return xa + (xb - xa) * t, ya + (yb - ya) * t


def _heading(city: City, a: int, b: int) -> int:
    (xa, ya), (xb, yb) = city.nodes[a], city.nodes[b]
    return snap(bearing(xb - xa, yb - ya))


@lru_cache(maxsize=16384)
def generated_route(city_name: str, seed: int, index: int) -> Route:
    """Route ``index`` of a generated city (cached: episodes replay routes often)."""
    city = generate_city(city_name, seed)
    rng = np.random.default_rng(_seed_words(city.name, seed, 7919, index))
    for _ in range(200):
        route = _try_route(city, rng, f"{city.name}-{index:05d}")
        if route is not None:
            return route
    raise RuntimeError(f"could not generate route {index} in {city.name}")  # never seen in practice


def _try_route(city: City, rng: np.random.Generator, route_id: str) -> Route | None:
    start = city.places[int(rng.integers(len(city.places)))]
    street = city.streets[start.street]
    came_from, node = (street.a, street.b) if rng.random() < 0.5 else (street.b, street.a)
    heading = _heading(city, came_from, node)
    path, visited, turns = [node], {street.a, street.b}, 0
    for _ in range(int(rng.integers(2, 7))):
        nxt = _next_node(city, rng, node, heading, visited)
        if nxt is None:
            return None
        new_heading = _heading(city, node, nxt)
        turns += new_heading != heading
        heading, node = new_heading, nxt
        visited.add(nxt)
        path.append(nxt)
    # Final street: one leaving the last node, leading to an unvisited node, with a place on it.
    finals = []
    for nb, s_idx in city.links[node]:
        delta = wrap_delta(_heading(city, node, nb) - heading)
        if nb in visited or delta not in ALLOWED_TURNS or (delta and city.degree(node) < 3):
            continue
        finals += [(nb, s_idx, p) for p in city.places_by_street[s_idx] if city.places[p].name != start.name]
    if not finals:
        return None
    end_node, _, dest_idx = finals[int(rng.integers(len(finals)))]
    turns += _heading(city, node, end_node) != heading
    if turns == 0:
        return None
    destination = city.places[dest_idx]
    points = [_street_point(city, start), *(city.nodes[n] for n in path), _street_point(city, destination)]
    initial = (_heading(city, came_from, path[0]) + int(rng.choice([-90, -45, 45, 90]))) % 360
    return _plan_route(city, rng, route_id, start, destination, initial, points, path)


def _next_node(
    city: City, rng: np.random.Generator, node: int, heading: int, visited: set[int]
) -> int | None:
    options, weights = [], []
    for nb, _ in city.links[node]:
        delta = wrap_delta(_heading(city, node, nb) - heading)
        if nb in visited or delta not in ALLOWED_TURNS or (delta and city.degree(node) < 3):
            continue
        options.append(nb)
        weights.append(2.0 if delta == 0 else 1.0)
    if not options:
        return None
    w = np.array(weights) / sum(weights)
    return options[int(rng.choice(len(options), p=w))]


def _plan_route(city: City, rng: np.random.Generator, route_id: str, start: Place, destination: Place,
                initial: int, points: list[tuple[float, float]], path: list[int]) -> Route:  # fmt: skip
    """Cut the walked polyline into legs at every change of heading and look around each waypoint."""

    def plan(pos: tuple[float, float], facing: float, node: int | None) -> PointPlan:
        left, right = city.visible(pos[0], pos[1], facing)
        return PointPlan(pos, node is not None and city.degree(node) >= 3, left, right)

    headings = [snap(bearing(q[0] - p[0], q[1] - p[1])) for p, q in zip(points, points[1:])]
    nodes_at = [None, *path, None]
    legs_raw: list[tuple[int, list[PointPlan], int]] = []  # heading, points, intersections passed
    leg_points: list[PointPlan] = []
    passed = 0
    for i in range(1, len(points)):
        leg_points += [plan(p, headings[i - 1], None) for p in _interpolate(points[i - 1], points[i])]
        end = plan(points[i], headings[i - 1], nodes_at[i])
        leg_points.append(end)
        if i == len(points) - 1 or headings[i] != headings[i - 1]:
            legs_raw.append((headings[i - 1], leg_points, passed))
            leg_points, passed = [], 0
        elif end.at_intersection:
            passed += 1
    first = plan(points[0], initial, None)
    # A place named in an instruction should be seen at its milestone only, so it identifies it.
    seen_count: dict[str, int] = {}
    for pt in [first, *(p for _, pts, _ in legs_raw for p in pts)]:
        for name in pt.left + pt.right:
            seen_count[name] = seen_count.get(name, 0) + 1
    legs: list[LegPlan] = []
    for k, (heading, pts, passed) in enumerate(legs_raw):
        end = pts[-1]
        if k == len(legs_raw) - 1:
            dx, dy = destination.position[0] - end.position[0], destination.position[1] - end.position[1]
            side = side_of(heading, dx, dy)
            landmark = (destination.name, side) if side else None
        else:
            seen = [(n, "left") for n in end.left] + [(n, "right") for n in end.right]
            seen = [x for x in seen if x[0] not in (start.name, destination.name)]
            unique = [x for x in seen if seen_count[x[0]] == 1] or seen
            landmark = unique[int(rng.integers(len(unique)))] if unique else None
        legs.append(LegPlan(heading, tuple(pts), landmark, passed))
    return build_route(route_id, display_name(city.name), start.name, destination.name, initial, first, legs)
