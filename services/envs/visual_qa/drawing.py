"""Small PIL drawing helpers shared by the generators (PIL's bundled font only, no system fonts)."""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

Point = tuple[float, float]

# Colour names double as words in questions, so each must be unmistakable in the picture.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (40, 160, 60),
    "yellow": (240, 200, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
INK = (20, 20, 20)
GRID = (200, 200, 200)
WHITE = (255, 255, 255)


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled font at ``size`` pixels (cached: loading costs more than drawing)."""
    return ImageFont.load_default(size=max(8, int(size)))


def canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), WHITE)
    return image, ImageDraw.Draw(image)


def text_centered(
    draw: ImageDraw.ImageDraw, xy: Point, text: str, size: int, fill: tuple[int, ...] = INK
) -> None:
    if "²" in text:  # the bundled font has no superscript two: draw a small raised "2" instead
        head, _, tail = text.partition("²")
        body_w = font(size).getlength(head + tail)
        sup_w = font(int(size * 0.7)).getlength("2")
        x0 = xy[0] - (body_w + sup_w) / 2
        head_w = font(size).getlength(head)
        draw.text((x0, xy[1]), head, font=font(size), fill=fill, anchor="lm")
        draw.text((x0 + head_w, xy[1] - size * 0.25), "2", font=font(int(size * 0.7)), fill=fill, anchor="lm")
        draw.text((x0 + head_w + sup_w, xy[1]), tail, font=font(size), fill=fill, anchor="lm")
        return
    draw.text(xy, text, font=font(size), fill=fill, anchor="mm")


def shape(
    draw: ImageDraw.ImageDraw, kind: str, centre: Point, radius: float, colour: tuple[int, int, int]
) -> None:
    """Draw one filled, outlined shape of the given kind centred on ``centre``."""
    x, y = centre
    r = radius
    outline_width = max(1, int(r / 10))
    if kind == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=INK, width=outline_width)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle((x - s, y - s, x + s, y + s), fill=colour, outline=INK, width=outline_width)
    elif kind == "triangle":
        pts = [(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)]
        draw.polygon(pts, fill=colour, outline=INK, width=outline_width)
    elif kind == "diamond":
        pts = [(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)]
        draw.polygon(pts, fill=colour, outline=INK, width=outline_width)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def fit_points(points: list[Point], size: int, margin: float) -> list[Point]:
    """Scale and centre points (y up) into a ``size`` square image (y down), keeping proportions."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9)
    scale = (size - 2 * margin) / span
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return [(size / 2 + (x - cx) * scale, size / 2 - (y - cy) * scale) for x, y in points]


def toward(a: Point, b: Point, distance: float) -> Point:
    """The point ``distance`` pixels from ``a`` in the direction of ``b``."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1.0
    return a[0] + dx / length * distance, a[1] + dy / length * distance


def text_extent(text: str, size: int) -> tuple[float, float]:
    left, top, right, bottom = font(size).getbbox(text)
    return right - left, bottom - top


def outward_label(
    a: Point, b: Point, centroid: Point, gap: float, extent: tuple[float, float] = (0, 0)
) -> Point:
    """Centre for a side label: off the midpoint of ``ab`` along the normal pointing away from the
    figure, far enough that a box of ``extent`` (width, height) clears the side."""
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / length, dx / length
    if nx * (centroid[0] - mx) + ny * (centroid[1] - my) > 0:
        nx, ny = -nx, -ny
    distance = gap + abs(nx) * extent[0] / 2 + abs(ny) * extent[1] / 2
    return mx + nx * distance, my + ny * distance


def angle_label(vertex: Point, p: Point, q: Point, distance: float) -> Point:
    """A point inside the angle at ``vertex`` (between rays to ``p`` and ``q``), for its label."""
    u = toward(vertex, p, 1.0)
    v = toward(vertex, q, 1.0)
    bisector = (u[0] + v[0] - 2 * vertex[0], u[1] + v[1] - 2 * vertex[1])
    return toward(vertex, (vertex[0] + bisector[0], vertex[1] + bisector[1]), distance)
