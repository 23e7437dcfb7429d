"""Loader of route files in the published V-IRL format (``route_infos.json`` of the V-IRL code).

A file is a JSON list of routes, or the original dump ``[routes, count]``. Each route holds::

    start_place    {"name", "geocode": [lat, lng], "relocated_geocode"?: [lat, lng], ...}
    dest_place     the same kind of place
    init_heading   degrees the agent faces at the start (default 0, north)
    route_results  {"geocode_list": [[lat, lng], ...],        one per milestone; the last one
                                                                is where the destination is
                    "landmark_list": [place | null, ...],       one per milestone but the last
                    "distance_list"?: [metres, ...], ...}
    milestone_info optional text of one block per milestone, as the original writes it:
                   {"intersection_idx": "1", "landmarks": "X is on your left",
                    "distance": "120 meters", "human_heading": "0",
                    "to_next_intersection_heading": "177 (south)",}
    instruction    optional free text (kept for reference; instructions are rebuilt from the data)
    route_id, city optional (not in the original files)

Other keys (Google place fields, polylines, timings) are ignored. Milestone k's block gives the
heading walked *to* milestone k and the place seen there relative to that heading; without the
block, both come from the geocodes. Milestones before the last are intersections; as in the
original, two interpolated waypoints are put on every stretch longer than 5 m.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from services.envs.virl.headings import bearing, side_of
from services.envs.virl.routes import LegPlan, PointPlan, Route, build_route
from sftrl.config import ConfigError, format_validation_error
from sftrl.files import read_bounded

INTERPOLATED_POINTS = 2
_M_PER_DEG_LAT = 110_540.0
_M_PER_DEG_LNG = 111_320.0


def _coerce_geocode(value: Any) -> Any:
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        lat = lowered.get("lat", lowered.get("latitude"))
        lng = lowered.get("lng", lowered.get("lon", lowered.get("longitude")))
        if lat is None or lng is None:
            raise ValueError("a geocode object needs 'lat' and 'lng'")
        value = (lat, lng)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError("a geocode is [latitude, longitude]")
    lat, lng = value
    if isinstance(lat, bool) or isinstance(lng, bool):
        raise ValueError("a geocode holds numbers")
    lat, lng = float(lat), float(lng)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        raise ValueError(f"geocode ({lat}, {lng}) is out of range")
    return (lat, lng)


Geocode = Annotated[tuple[float, float], BeforeValidator(_coerce_geocode)]


class _Published(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the original files carry many unused fields


class PublishedPlace(_Published):
    name: str = Field(min_length=1, max_length=200)
    geocode: Geocode
    relocated_geocode: Geocode | None = None

    @property
    def position(self) -> tuple[float, float]:
        """Where the agent stands for this place: the street-view position when one is known."""
        return self.relocated_geocode or self.geocode


class PublishedRouteResults(_Published):
    geocode_list: list[Geocode] = Field(min_length=1, max_length=1000)
    landmark_list: list[PublishedPlace | None] = Field(default_factory=list)
    distance_list: list[float] | None = None


class PublishedRoute(_Published):
    start_place: PublishedPlace
    dest_place: PublishedPlace
    route_results: PublishedRouteResults
    init_heading: float = Field(0.0, allow_inf_nan=False)
    instruction: str | None = None
    milestone_info: str | None = None
    route_id: str | None = Field(None, max_length=200)
    city: str | None = Field(None, max_length=100)

    @model_validator(mode="after")
    def _check_lengths(self) -> PublishedRoute:
        n = len(self.route_results.geocode_list)
        if len(self.route_results.landmark_list) not in (0, n - 1, n):
            raise ValueError(
                f"route_results.landmark_list has {len(self.route_results.landmark_list)} entries; "
                f"expected {n - 1} (one per milestone before the destination)"
            )
        if self.milestone_info is not None and len(parse_milestone_info(self.milestone_info)) != n:
            raise ValueError(
                f"milestone_info has {len(parse_milestone_info(self.milestone_info))} blocks; "
                f"expected {n} (one per entry of route_results.geocode_list)"
            )
        return self


def parse_milestone_info(text: str) -> list[dict[str, str]]:
    """Split the original's milestone text into one dict per ``{...}`` block (values as text)."""
    blocks: list[dict[str, str]] = []
    for raw in text.split("}"):
        body = raw.strip().lstrip("{").strip()
        if not body:
            continue
        block: dict[str, str] = {}
        for line in body.splitlines():
            key, sep, value = line.strip().rstrip(",").partition(":")
            if sep:
                block[key.strip().strip("\"'")] = value.strip().strip("\"'")
        if block:
            blocks.append(block)
    return blocks


_HEADING = re.compile(r"^\s*(-?\d+(?:\.\d+)?)")
_EXPRESSION = re.compile(
    r"^(?:the destination\s+)?(.+?)\s+is\s+(?:on\s+)?(?:your\s+|the\s+)?(.+?)\.?$", re.IGNORECASE
)


def _milestone_heading(block: dict[str, str], where: str) -> float | None:
    raw = block.get("to_next_intersection_heading")
    if raw is None:
        return None
    match = _HEADING.match(raw)
    if match is None:
        raise ConfigError(f"{where}: to_next_intersection_heading {raw!r} does not start with degrees")
    return float(match.group(1))


def _expression(block: dict[str, str]) -> tuple[str, str | None] | None:
    """(name, "left"/"right"/None) from "X is on your left"; None for "No landmark nearby"."""
    raw = block.get("landmarks", "").strip()
    if not raw or raw.lower().startswith("no landmark"):
        return None
    match = _EXPRESSION.match(raw)
    if match is None:
        return raw, None
    relation = match.group(2).lower()
    side = "left" if "left" in relation else "right" if "right" in relation else None
    return match.group(1).strip(), side


class _Projector:
    """Equirectangular metres around the route's start (routes span a few km at most)."""

    def __init__(self, origin: tuple[float, float]):
        self.lat0, self.lng0 = origin
        self.k_lng = _M_PER_DEG_LNG * math.cos(math.radians(self.lat0))

    def __call__(self, geocode: tuple[float, float]) -> tuple[float, float]:
        return (geocode[1] - self.lng0) * self.k_lng, (geocode[0] - self.lat0) * _M_PER_DEG_LAT


def to_route(route: PublishedRoute, route_id: str, city: str) -> Route:
    """Turn one published route into the environment's rail of waypoints."""
    project = _Projector(route.start_place.position)
    points = [project(route.start_place.position)] + [project(g) for g in route.route_results.geocode_list]
    blocks = parse_milestone_info(route.milestone_info) if route.milestone_info else []
    marks = list(route.route_results.landmark_list)
    legs: list[LegPlan] = []
    n = len(points) - 1
    for k in range(n):
        where = f"route {route_id}, milestone {k + 1}"
        p, q = points[k], points[k + 1]
        length = math.hypot(q[0] - p[0], q[1] - p[1])
        heading = _milestone_heading(blocks[k], where) if blocks else None
        if heading is None:
            if length < 1.0:
                raise ConfigError(f"{where}: no heading given and the milestone is where the previous one is")
            heading = bearing(q[0] - p[0], q[1] - p[1])
        is_last = k == n - 1
        place = route.dest_place if is_last else (marks[k] if k < len(marks) else None)
        named = _expression(blocks[k]) if blocks else None
        if named is None and place is not None and (not blocks or is_last):
            named = (place.name, None)
        landmark: tuple[str, str] | None = None
        if named is not None:
            name, side = named
            if side is None and place is not None and place.name == name:
                gx, gy = project(place.geocode)
                side = side_of(heading, gx - q[0], gy - q[1])
            landmark = (name, side) if side else None
        left = (landmark[0],) if landmark and landmark[1] == "left" else ()
        right = (landmark[0],) if landmark and landmark[1] == "right" else ()
        inner = INTERPOLATED_POINTS if length > 5.0 else 0
        pts = [PointPlan((p[0] + (q[0] - p[0]) * t / (inner + 1), p[1] + (q[1] - p[1]) * t / (inner + 1)))
               for t in range(1, inner + 1)]  # fmt: skip
        pts.append(PointPlan(q, at_intersection=not is_last, left=left, right=right))
        legs.append(LegPlan(heading, tuple(pts), landmark, 0))
    return build_route(route_id, city, route.start_place.name, route.dest_place.name,
                       route.init_heading, PointPlan(points[0]), legs)  # fmt: skip


def load_published_routes(path: str | Path, city: str) -> tuple[Route, ...]:
    """Read and convert a route file; every problem becomes a :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        text = read_bounded(path, "V-IRL route file").decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read V-IRL route file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"V-IRL route file {path} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} (line {exc.lineno})"
        raise ConfigError(f"V-IRL route file {path} is not valid JSON: {where}") from None
    except RecursionError:
        raise ConfigError(f"V-IRL route file {path} is nested too deeply") from None
    if isinstance(data, list) and len(data) == 2 and isinstance(data[0], list) and isinstance(data[1], int):
        data = data[0]  # the original dump: [routes, number of destinations tried]
    if not isinstance(data, list):
        kind = type(data).__name__
        raise ConfigError(f"V-IRL route file {path} must hold a JSON list of routes, got {kind}")
    if not data:
        raise ConfigError(f"V-IRL route file {path} holds no routes")
    routes: list[Route] = []
    for i, raw in enumerate(data):
        try:
            parsed = PublishedRoute.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source=f"route {i} in {path}")) from None
        route_id = parsed.route_id or f"{path.stem}-{i:03d}"
        routes.append(to_route(parsed, route_id, parsed.city or city))
    return tuple(routes)
