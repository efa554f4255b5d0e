"""A procedural data set that needs no download: textured objects composited on real photographs.

Scene ``index`` of a ``SyntheticScenes(seed=...)`` is a pure function of (seed, index, size), so
the training stream needs no storage, resumes exactly, and a held-out set is just another seed.
Each scene pastes K objects (``hrsam.data.shapes``: fine boundaries, thin parts, holes) filled
with ``hrsam.data.textures`` onto a photograph crop; later objects occlude earlier ones and the
masks are the visible parts. Objects span 8-80% of the shorter image side, so the same generator
makes 512 px training images and 2K test images with details a few pixels wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hrsam.data.samples import Sample, Scene
from hrsam.data.shapes import SHAPE_WEIGHTS, SHAPES
from hrsam.data.textures import background, object_texture

# Seeds of the two standard streams: training and the held-out evaluation set (docs/MODEL_CARD.md).
TRAIN_SEED = 0
HELD_OUT_SEED = 20261201


@dataclass(frozen=True)
class SyntheticScenes:
    """``length`` scenes of ``height`` x ``width`` pixels with ``objects`` masks each.

    ``min_area_fraction``: a mask whose visible area is below this fraction of the image is
    emptied (it stays in ``masks`` so every scene has K masks; training skips empty ones).
    """

    length: int
    height: int = 512
    width: int = 512
    objects: int = 4
    seed: int = TRAIN_SEED
    min_area_fraction: float = 0.002

    def __post_init__(self) -> None:
        if self.length < 1 or self.objects < 1 or min(self.height, self.width) < 32:
            raise ValueError(
                f"SyntheticScenes needs length >= 1, objects >= 1 and sides >= 32, got length {self.length}, "
                f"objects {self.objects}, size {self.height} x {self.width}"
            )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(f"scene {index} out of range [0, {self.length})")
        rng = np.random.default_rng([self.seed, index, self.height, self.width])
        image = background(rng, self.height, self.width)
        masks = np.zeros((self.objects, self.height, self.width), dtype=bool)
        for k in range(self.objects):
            alpha, top, left = _place_object(rng, self.height, self.width)
            h, w = alpha.shape
            window = (slice(top, top + h), slice(left, left + w))
            texture = object_texture(rng, h, w)
            if rng.random() < 0.4:  # soft drop shadow, below the object
                _shadow(image, alpha, top, left, rng)
            image[window] = alpha[..., None] * texture + (1 - alpha[..., None]) * image[window]
            inside = alpha >= 0.5
            masks[(slice(0, k), *window)] &= ~inside
            masks[(k, *window)] = inside
        small = masks.sum(axis=(1, 2)) < self.min_area_fraction * self.height * self.width
        masks[small] = False
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0, 4))
        pixels = np.clip(image, 0, 255).round().astype(np.uint8)
        return Scene(pixels, masks, f"synthetic-{self.seed}-{index}")


def _place_object(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """Draw one object of a random family and size; return its alpha and top-left corner."""
    short = min(height, width)
    size = short * float(np.exp(rng.uniform(np.log(0.08), np.log(0.8))))
    aspect = float(np.exp(rng.uniform(-0.5, 0.5)))
    h = int(np.clip(size * aspect, 8, height))
    w = int(np.clip(size / aspect, 8, width))
    names = list(SHAPES)
    weights = np.array([SHAPE_WEIGHTS[name] for name in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    alpha = SHAPES[name](rng, h, w)
    if rng.random() < 0.5:
        alpha = alpha[:, ::-1]
    if rng.random() < 0.5:
        alpha = alpha[::-1]
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return np.ascontiguousarray(alpha), top, left


def _shadow(image: np.ndarray, alpha: np.ndarray, top: int, left: int, rng: np.random.Generator) -> None:
    """Darken the image under ``alpha`` shifted by a few pixels (in place)."""
    shift = int(rng.integers(2, 9))
    h, w = alpha.shape
    bottom, right = min(image.shape[0], top + shift + h), min(image.shape[1], left + shift + w)
    shade = alpha[: bottom - top - shift, : right - left - shift, None] * rng.uniform(0.2, 0.5)
    image[top + shift : bottom, left + shift : right] *= 1 - shade


@dataclass(frozen=True)
class SyntheticSamples:
    """An evaluation view: one object per scene, fixed by the seed.

    The object is drawn among those covering at least ``min_fraction`` of the image (benchmarks
    ask for objects one would click on, not specks), or is the largest when none does.
    """

    scenes: SyntheticScenes
    min_fraction: float = 0.01

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        scene = self.scenes[index]
        areas = scene.masks.sum(axis=(1, 2))
        if not areas.any():
            raise ValueError(f"{scene.name}: no visible object (regenerate with other sizes or seed)")
        large = np.flatnonzero(areas >= self.min_fraction * scene.masks[0].size)
        candidates = large if large.size else [int(np.argmax(areas))]
        choice = int(candidates[int(np.random.default_rng([self.scenes.seed, index, 7]).integers(len(candidates)))])
        return Sample(scene.image, scene.masks[choice], f"{scene.name}/obj{choice}")
