"""Object and background appearance: crops of the bundled photographs and procedural patterns.

Objects are filled with a texture that often resembles the background (a crop of another
photograph, a pattern in similar colours), so that the outline, not a colour contrast, tells an
object from its surroundings. All functions return float32 RGB in [0, 255] of the requested size.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND_DIR = Path(__file__).with_name("assets") / "backgrounds"


@functools.cache
def photographs() -> tuple[np.ndarray, ...]:
    """The bundled photographs (``hrsam/data/assets/backgrounds``) as uint8 RGB arrays, read once."""
    files = sorted(BACKGROUND_DIR.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no photographs in {BACKGROUND_DIR}: the package data is incomplete")
    return tuple(np.asarray(Image.open(path).convert("RGB")) for path in files)


def photo_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random crop of a random photograph (random scale and flip), resized to height x width."""
    photo = photographs()[int(rng.integers(len(photographs())))]
    ph, pw = photo.shape[:2]
    aspect = width / height
    crop_h = int(rng.uniform(0.3, 1.0) * min(ph, pw / aspect))
    crop_w = max(1, min(pw, int(crop_h * aspect)))
    crop_h = max(1, crop_h)
    top, left = int(rng.integers(0, ph - crop_h + 1)), int(rng.integers(0, pw - crop_w + 1))
    crop = Image.fromarray(photo[top : top + crop_h, left : left + crop_w])
    crop = crop.resize((width, height), Image.BILINEAR)
    array = np.asarray(crop, dtype=np.float32)
    return array[:, ::-1] if rng.random() < 0.5 else array


def colour_jitter(rng: np.random.Generator, rgb: np.ndarray, strength: float = 0.3) -> np.ndarray:
    """Random per-channel gain, brightness offset and contrast, clipped to [0, 255]."""
    gains = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    mean = rgb.mean()
    contrast = rng.uniform(1 - strength, 1 + strength)
    offset = rng.uniform(-40, 40) * strength
    out = (rgb - mean) * np.float32(contrast) + (mean * gains + offset).astype(np.float32)
    return np.clip(out, 0, 255, out=out)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid bicubically upsampled."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0


def pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Two random colours mixed by stripes, a checkerboard or smooth noise."""
    first, second = _random_colour(rng), _random_colour(rng)
    kind = rng.integers(3)
    if kind == 0:
        angle, period = rng.uniform(0, math.pi), rng.uniform(4, 40)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        weight = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
    elif kind == 1:
        period = int(rng.integers(4, 40))
        y, x = np.mgrid[0:height, 0:width]
        weight = (((x // period) + (y // period)) % 2).astype(np.float32)
    else:
        weight = smooth_noise(rng, height, width, int(rng.integers(3, 24)))
    return first * weight[..., None] + second * (1 - weight[..., None])


def shading(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear light gradient in [0.6, 1.2] (multiplicative), for a little depth."""
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(height, width)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    low = rng.uniform(0.6, 0.9)
    return (low + ramp * rng.uniform(0.1, 1.2 - low))[..., None]


def object_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An object's fill: a photo crop, a pattern or a solid colour with noise, with shading."""
    choice = rng.random()
    if choice < 0.5:
        texture = colour_jitter(rng, photo_crop(rng, height, width), 0.5)
    elif choice < 0.85:
        texture = pattern(rng, height, width)
    else:
        texture = _random_colour(rng) * np.ones((height, width, 1), np.float32)
        texture = texture + rng.normal(0, 8, (height, width, 1)).astype(np.float32)
    return np.clip(texture * shading(rng, height, width), 0, 255)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A scene background: a jittered photo crop, sometimes blended with a pattern."""
    base = colour_jitter(rng, photo_crop(rng, height, width), 0.3)
    if rng.random() < 0.3:
        mix = rng.uniform(0.2, 0.6)
        base = (1 - mix) * base + mix * pattern(rng, height, width)
    return base
