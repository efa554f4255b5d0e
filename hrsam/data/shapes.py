"""Procedural object shapes: soft alpha masks with the structures that make segmentation hard.

Each generator draws one object into a canvas of the requested size (the object's bounding box)
and returns its alpha, float32 in [0, 1]. Shapes are drawn with PIL at ``SUPERSAMPLE`` x the size
and box-filtered down, so outlines have sub-pixel, antialiased boundaries; the ground-truth mask
is ``alpha >= 0.5``. The families cover what high-precision benchmarks stress: wiggly fine
boundaries (``blob``), thin protrusions (``spiky``, ``legged``), holes (``holed``, ``ring``,
``mesh``) and one-to-few pixel wide structures (``branches``). Widths of thin parts are given in
output pixels, so thin parts stay thin at any image size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2


def _canvas(height: int, width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    return image, ImageDraw.Draw(image)


def _alpha(image: Image.Image, height: int, width: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), Image.BOX), dtype=np.float32) / 255.0


def radial_outline(rng: np.random.Generator, roughness: float, vertices: int = 360) -> np.ndarray:
    """Unit-circle outline perturbed by random harmonics; [vertices, 2] (x, y) in about [-1, 1].

    Harmonic k gets amplitude ~ roughness / k, so low orders bend the shape and high orders (up to
    60) give a fine, irregular boundary.
    """
    theta = np.linspace(0.0, 2 * math.pi, vertices, endpoint=False)
    orders = np.arange(1, 61)
    amplitudes = rng.uniform(0, roughness, orders.size) / orders ** rng.uniform(0.8, 1.6)
    phases = rng.uniform(0, 2 * math.pi, orders.size)
    radius = 1.0 + (amplitudes[:, None] * np.cos(orders[:, None] * theta + phases[:, None])).sum(0)
    radius = np.clip(radius, 0.25, None)
    stretch = rng.uniform(0.6, 1.0)
    return np.stack([radius * np.cos(theta), stretch * radius * np.sin(theta)], axis=1)


def _to_canvas(points: np.ndarray, height: int, width: int, margin: float = 0.04) -> list[tuple[float, float]]:
    """Fit normalised points into the supersampled canvas, keeping the aspect of the points."""
    low, high = points.min(0), points.max(0)
    span = np.maximum(high - low, 1e-6)
    scale = min((1 - 2 * margin) * width / span[0], (1 - 2 * margin) * height / span[1]) * SUPERSAMPLE
    offset = np.array([width, height]) * SUPERSAMPLE / 2 - (low + high) / 2 * scale
    fitted = points * scale + offset
    return [(float(x), float(y)) for x, y in fitted]


def _frame(points: np.ndarray, height: int, width: int) -> list[tuple[float, float]]:
    """Map points of the fixed frame [-1, 1]^2 onto the supersampled canvas (no fitting)."""
    scale = np.array([width, height]) * SUPERSAMPLE / 2
    return [(float(x), float(y)) for x, y in (points + 1) * scale]


def blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A closed shape with a wiggly, finely detailed outline."""
    image, draw = _canvas(height, width)
    draw.polygon(_to_canvas(radial_outline(rng, rng.uniform(0.1, 0.5)), height, width), fill=255)
    return _alpha(image, height, width)


def spiky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A star: a core with 5-24 narrow spikes of random length."""
    count = int(rng.integers(5, 25))
    inner = rng.uniform(0.15, 0.5)
    theta = np.sort(rng.uniform(0, 2 * math.pi, count))
    width_angle = rng.uniform(0.02, 0.12)
    points = []
    for angle in theta:
        for offset, radius in ((-width_angle, inner), (0.0, rng.uniform(0.6, 1.0)), (width_angle, inner)):
            points.append((radius * math.cos(angle + offset), radius * math.sin(angle + offset)))
    image, draw = _canvas(height, width)
    draw.polygon(_to_canvas(np.array(points), height, width), fill=255)
    draw.ellipse(_core_box(height, width, inner * 0.9), fill=255)
    return _alpha(image, height, width)


def _core_box(height: int, width: int, fraction: float) -> tuple[float, float, float, float]:
    cx, cy = width * SUPERSAMPLE / 2, height * SUPERSAMPLE / 2
    rx, ry = fraction * width * SUPERSAMPLE * 0.46, fraction * height * SUPERSAMPLE * 0.46
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def holed(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blob with 1-4 holes cut out of its interior."""
    image, draw = _canvas(height, width)
    draw.polygon(_to_canvas(radial_outline(rng, rng.uniform(0.05, 0.25)), height, width), fill=255)
    for _ in range(int(rng.integers(1, 5))):
        size = rng.uniform(0.1, 0.3)
        cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
        hole = radial_outline(rng, 0.2) * size * np.array([width, height]) / 2 + np.array([cx, cy])
        draw.polygon([(float(x) * SUPERSAMPLE, float(y) * SUPERSAMPLE) for x, y in hole], fill=0)
    return _alpha(image, height, width)


def ring(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An annulus (sometimes open, like a letter C) with a band of 3-25% of its size."""
    image, draw = _canvas(height, width)
    band = rng.uniform(0.03, 0.25) * min(height, width) * SUPERSAMPLE
    box = (band / 2, band / 2, width * SUPERSAMPLE - band / 2, height * SUPERSAMPLE - band / 2)
    if rng.random() < 0.4:
        start = rng.uniform(0, 360)
        draw.arc(box, start, start + rng.uniform(200, 330), fill=255, width=max(1, int(band)))
    else:
        draw.ellipse(box, outline=255, width=max(1, int(band)))
    return _alpha(image, height, width)


def mesh(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A frame crossed by bars: a grid of rectangular holes, bars 2-8 output pixels wide."""
    image, draw = _canvas(height, width)
    bar = rng.uniform(2, 8) * SUPERSAMPLE
    w, h = width * SUPERSAMPLE, height * SUPERSAMPLE
    for position in np.linspace(bar / 2, w - bar / 2, int(rng.integers(2, 9))):
        draw.line([(position, 0), (position, h)], fill=255, width=int(bar))
    for position in np.linspace(bar / 2, h - bar / 2, int(rng.integers(2, 9))):
        draw.line([(0, position), (w, position)], fill=255, width=int(bar))
    return _alpha(image, height, width)


def branches(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A branching, twig-like structure of lines 1-6 output pixels wide, thinner at every fork."""
    image, draw = _canvas(height, width)
    w, h = width * SUPERSAMPLE, height * SUPERSAMPLE
    start = (w / 2, h * 0.98)
    stack = [(start, -math.pi / 2, min(w, h) * 0.35, rng.uniform(2.5, 6.0) * SUPERSAMPLE, 0)]
    while stack:
        (x, y), angle, length, line_width, depth = stack.pop()
        end = (x + length * math.cos(angle), y + length * math.sin(angle))
        draw.line([(x, y), end], fill=255, width=max(1, int(line_width)))
        if depth < 4:
            for _ in range(int(rng.integers(2, 4))):
                turn = angle + rng.uniform(-0.9, 0.9)
                stack.append((end, turn, length * rng.uniform(0.5, 0.8), line_width * 0.7, depth + 1))
    return _alpha(image, height, width)


def legged(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A blob body with thin legs or antennae (1.5-5 output pixels wide) reaching the box edges."""
    image, draw = _canvas(height, width)
    draw.polygon(_frame(radial_outline(rng, 0.15) * 0.45, height, width), fill=255)
    cx, cy = width * SUPERSAMPLE / 2, height * SUPERSAMPLE / 2
    for _ in range(int(rng.integers(2, 9))):
        angle = rng.uniform(0, 2 * math.pi)
        knee = rng.uniform(0.5, 0.8)
        line_width = max(1, int(rng.uniform(1.5, 5) * SUPERSAMPLE))
        middle = (cx + knee * cx * math.cos(angle), cy + knee * cy * math.sin(angle))
        bend = angle + rng.uniform(-0.7, 0.7)
        end = (middle[0] + 0.3 * cx * math.cos(bend), middle[1] + 0.3 * cy * math.sin(bend))
        draw.line([(cx, cy), middle, end], fill=255, width=line_width, joint="curve")
    return _alpha(image, height, width)


SHAPES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "blob": blob,
    "spiky": spiky,
    "holed": holed,
    "ring": ring,
    "mesh": mesh,
    "branches": branches,
    "legged": legged,
}
# How often each family is drawn: compact shapes dominate, as in natural images.
SHAPE_WEIGHTS = {"blob": 3.0, "spiky": 1.0, "holed": 1.5, "ring": 1.0, "mesh": 0.7, "branches": 0.8, "legged": 1.2}
