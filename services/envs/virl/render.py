"""Synthetic street views for V-IRL-VL: a 2x2 grid of front, right, back and left views.

Each view is a simple perspective street drawn with PIL: sky, road, sidewalks and building
walls. What the model must recognise is drawn on purpose:

* at an intersection, the walls near the agent are missing in the front and back views (the
  cross street opens to both sides, with a zebra crossing), and the side views look down the
  cross street instead of at a wall;
* places on the left / right appear as shop signs with their names in the left / right view.

Cities differ in palette (sky, walls, road, signs) and building style (storeys, windows, roof
line), derived from the city name, so a model trained on one city meets new looks in another.
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from services.envs.virl.city import normalise_city_name
from services.envs.virl.routes import Waypoint

RGB = tuple[int, int, int]
VIEW_NAMES = ("FRONT", "RIGHT", "BACK", "LEFT")  # grid order: top left, top right, bottom left, bottom right
_CAM_HEIGHT, _ROAD_HALF, _WALL = 1.6, 6.0, 9.0  # metres


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(1.0, max(0.0, s)), min(1.0, max(0.0, v)))
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(colour: RGB, factor: float) -> RGB:
    return int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor)


def _digest_rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True, slots=True)
class CityStyle:
    sky_top: RGB
    sky_bottom: RGB
    sidewalk: RGB
    road: RGB
    marking: RGB
    walls: tuple[RGB, ...]
    window: RGB
    window_style: int  # 0 grid of panes, 1 tall strips, 2 wide bands
    roof_style: int  # 0 flat, 1 cornice band, 2 pitched
    storeys: tuple[int, int]
    sign_board: RGB
    sign_text: RGB


@lru_cache(maxsize=64)
def city_style(city: str) -> CityStyle:
    rng = _digest_rng("style", normalise_city_name(city))

    def u(lo, hi):
        return float(rng.uniform(lo, hi))

    sky_h, wall_h = u(0, 1), u(0, 1)
    board_h = u(0, 1)
    dark_board = bool(rng.integers(2))
    return CityStyle(
        sky_top=_hsv(sky_h, u(0.3, 0.8), u(0.55, 0.95)),
        sky_bottom=_hsv(sky_h + u(-0.08, 0.08), u(0.1, 0.4), u(0.8, 1.0)),
        sidewalk=_hsv(u(0, 1), u(0.0, 0.25), u(0.55, 0.8)),
        road=_hsv(u(0, 1), u(0.0, 0.2), u(0.2, 0.45)),
        marking=_hsv(u(0.1, 0.17), u(0.0, 0.9), 0.95),
        walls=tuple(_hsv(wall_h + u(-0.07, 0.07), u(0.25, 0.75), u(0.4, 0.85)) for _ in range(5)),
        window=_hsv(u(0.5, 0.7), u(0.1, 0.5), u(0.15, 0.9)),
        window_style=int(rng.integers(3)),
        roof_style=int(rng.integers(3)),
        storeys=(int(rng.integers(2, 5)), int(rng.integers(5, 12))),
        sign_board=_hsv(board_h, 0.8, 0.3) if dark_board else _hsv(board_h, 0.15, 0.97),
        sign_text=(250, 250, 250) if dark_board else (15, 15, 15),
    )


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine, no system font needed.
    return ImageFont.load_default(size=max(6, size))


class _Camera:
    def __init__(self, size: int):
        self.s, self.f, self.horizon = size, size * 0.5, size * 0.45

    def project(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.s / 2 + self.f * x / z, self.horizon + self.f * (_CAM_HEIGHT - y) / z


def _sky_and_ground(size: int, style: CityStyle) -> Image.Image:
    horizon = int(size * 0.45)
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    sky = np.array(style.sky_top) * (1 - t) + np.array(style.sky_bottom) * t
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:horizon] = sky[:, None, :].astype(np.uint8)
    arr[horizon:] = style.sidewalk
    return Image.fromarray(arr)


def _quad(cam: _Camera, x: float, y0: float, y1: float, z0: float, z1: float) -> list[tuple[float, float]]:
    """A wall patch in the plane x = const, from depth z0 to z1 and height y0 to y1."""
    return [cam.project(x, y0, z0), cam.project(x, y1, z0), cam.project(x, y1, z1), cam.project(x, y0, z1)]


def _draw_walls(draw: ImageDraw.ImageDraw, cam: _Camera, style: CityStyle, rng: np.random.Generator,
                side: float, z_start: float) -> None:  # fmt: skip
    """Buildings along one side of a receding street (side -1 left, +1 right), from z_start on."""
    x = side * _WALL
    z = z_start
    while z < 120.0:
        width = float(rng.uniform(8.0, 18.0))
        height = 3.2 * int(rng.integers(style.storeys[0], style.storeys[1] + 1))
        colour = style.walls[int(rng.integers(len(style.walls)))]
        draw.polygon(_quad(cam, x, 0.0, height, z, z + width), fill=colour)
        if style.roof_style == 1:
            draw.polygon(_quad(cam, x, height - 0.6, height, z, z + width), fill=_shade(colour, 0.6))
        elif style.roof_style == 2:
            roof = [cam.project(x, height, z), cam.project(x, height + 3.0, z + width / 2),
                    cam.project(x, height, z + width)]  # fmt: skip
            draw.polygon(roof, fill=_shade(colour, 0.7))
        if z < 60.0:
            _draw_receding_windows(draw, cam, style, x, z, width, height)
        z += width + (0.0 if rng.random() < 0.7 else float(rng.uniform(1.0, 3.0)))


def _draw_receding_windows(draw: ImageDraw.ImageDraw, cam: _Camera, style: CityStyle, x: float, z: float,
                           width: float, height: float) -> None:  # fmt: skip
    floor = 3.2
    y = floor + 0.9
    while y + 1.4 < height:
        if style.window_style == 2:
            draw.polygon(_quad(cam, x, y, y + 1.2, z + 0.5, z + width - 0.5), fill=style.window)
        else:
            step = 2.5 if style.window_style == 0 else 4.0
            wz = z + 1.0
            while wz + 1.2 < z + width:
                draw.polygon(_quad(cam, x, y, y + (1.4 if style.window_style == 0 else 2.2), wz, wz + 1.2),
                             fill=style.window)  # fmt: skip
                wz += step
        y += floor


def _street_view(size: int, style: CityStyle, rng: np.random.Generator, open_near: bool) -> Image.Image:
    """Looking along a street; with ``open_near`` the agent stands in an intersection."""
    img = _sky_and_ground(size, style)
    draw = ImageDraw.Draw(img)
    cam = _Camera(size)
    near, far = 0.5, 400.0
    road = [cam.project(-_ROAD_HALF, 0, near), cam.project(_ROAD_HALF, 0, near),
            cam.project(_ROAD_HALF, 0, far), cam.project(-_ROAD_HALF, 0, far)]  # fmt: skip
    draw.polygon(road, fill=style.road)
    z_walls = 1.0
    if open_near:
        # The cross street: road to both sides up to the far corner, then a zebra crossing.
        z_walls = _WALL + 1.0
        for x0, x1 in ((-80.0, -_ROAD_HALF), (_ROAD_HALF, 80.0)):
            draw.polygon([cam.project(x0, 0, near), cam.project(x1, 0, near), cam.project(x1, 0, _WALL),
                          cam.project(x0, 0, _WALL)], fill=style.road)  # fmt: skip
        stripe = -_ROAD_HALF + 0.4
        while stripe < _ROAD_HALF - 0.4:
            draw.polygon([cam.project(stripe, 0, 6.0), cam.project(stripe + 0.6, 0, 6.0),
                          cam.project(stripe + 0.6, 0, 8.5), cam.project(stripe, 0, 8.5)],
                         fill=(235, 235, 235))  # fmt: skip
            stripe += 1.2
    # Centre line dashes.
    z = max(1.0, z_walls)
    while z < 80.0:
        draw.polygon([cam.project(-0.12, 0, z), cam.project(0.12, 0, z), cam.project(0.12, 0, z + 2.0),
                      cam.project(-0.12, 0, z + 2.0)], fill=style.marking)  # fmt: skip
        z += 5.0
    _draw_walls(draw, cam, style, rng, -1.0, z_walls)
    _draw_walls(draw, cam, style, rng, 1.0, z_walls)
    return img


def _facade_view(size: int, style: CityStyle, rng: np.random.Generator) -> Image.Image:
    """Looking sideways at the buildings across the sidewalk."""
    img = _sky_and_ground(size, style)
    draw = ImageDraw.Draw(img)
    s = size
    draw.rectangle([0, int(s * 0.9), s, s], fill=style.road)
    x = -int(rng.integers(0, s // 4))
    while x < s:
        width = int(s * rng.uniform(0.35, 0.6))
        top = int(s * rng.uniform(0.02, 0.25))
        colour = style.walls[int(rng.integers(len(style.walls)))]
        draw.rectangle([x, top, x + width, int(s * 0.78)], fill=colour)
        if style.roof_style == 1:
            draw.rectangle([x, top, x + width, top + s // 40], fill=_shade(colour, 0.6))
        elif style.roof_style == 2:
            roof = [(x, top), (x + width // 2, max(0, top - s // 12)), (x + width, top)]
            draw.polygon(roof, fill=_shade(colour, 0.7))
        pane_w = max(2, s // 28)
        for wy in range(top + s // 30, int(s * 0.66), s // 11):
            if style.window_style == 2:
                draw.rectangle([x + s // 40, wy, x + width - s // 40, wy + s // 30], fill=style.window)
                continue
            tall = s // 20 if style.window_style == 0 else s // 12
            for wx in range(x + s // 40, x + width - pane_w, pane_w * (2 if style.window_style == 0 else 3)):
                draw.rectangle([wx, wy, wx + pane_w, wy + tall], fill=style.window)
        draw.rectangle([x + width // 3, int(s * 0.66), x + 2 * width // 3, int(s * 0.78)], fill=(40, 30, 25))
        x += width
    return img


def _draw_signs(img: Image.Image, names: tuple[str, ...], style: CityStyle) -> None:
    """Shop signs, one per visible place, large enough to read at the view size."""
    draw = ImageDraw.Draw(img)
    s = img.width
    for i, name in enumerate(names[:3]):
        size = max(8, s // 13)
        font = _font(size)
        while size > 8 and draw.textlength(name, font=font) > s * 0.86:
            size -= 1
            font = _font(size)
        text_w = draw.textlength(name, font=font)
        cy = int(s * (0.36 + 0.15 * i))
        pad = max(2, s // 64)
        x0, x1 = int((s - text_w) / 2) - pad * 2, int((s + text_w) / 2) + pad * 2
        box = [x0, cy - size // 2 - pad, x1, cy + size // 2 + pad * 2]
        draw.rectangle(box, fill=style.sign_board, outline=(20, 20, 20), width=max(1, s // 128))
        draw.text((s / 2, cy + pad // 2), name, fill=style.sign_text, font=font, anchor="mm")


def _caption(img: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(img)
    size = max(7, img.width // 18)
    font = _font(size)
    w = draw.textlength(text, font=font)
    draw.rectangle([0, 0, int(w) + size // 2, size + size // 3], fill=(0, 0, 0))
    draw.text((size // 4, size // 6), text, fill=(255, 255, 255), font=font)


def render_views(waypoint: Waypoint, city: str, image_size: int, route_id: str = "") -> np.ndarray:
    """The 2x2 grid (front, right / back, left) at a waypoint: RGB uint8, 2*image_size square."""
    style = city_style(city)
    s = image_size
    grid = Image.new("RGB", (2 * s, 2 * s))
    px, py = (round(c, 1) for c in waypoint.position)
    for i, view in enumerate(VIEW_NAMES):
        rng = _digest_rng(route_id, normalise_city_name(city), px, py, (waypoint.facing + 90 * i) % 360)
        if view in ("FRONT", "BACK"):
            img = _street_view(s, style, rng, open_near=waypoint.at_intersection)
        else:
            # At an intersection the side views look down the cross street, else at a wall.
            if waypoint.at_intersection:
                img = _street_view(s, style, rng, open_near=True)
            else:
                img = _facade_view(s, style, rng)
            _draw_signs(img, waypoint.right if view == "RIGHT" else waypoint.left, style)
        _caption(img, view)
        grid.paste(img, ((i % 2) * s, (i // 2) * s))
    return np.asarray(grid, dtype=np.uint8).copy()
