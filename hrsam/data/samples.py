"""What datasets hand out: a ``Sample`` (one object to segment) or a ``Scene`` (an image, many objects).

Evaluation works on samples: one image, one ground-truth mask, a name for the per-image report.
Training works on scenes, so that one encoder pass supervises several objects. Both check their
arrays on creation, so a bad file fails where it is read, with its name in the message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def check_image(image: np.ndarray, name: str) -> None:
    """An H x W x 3 uint8 image, or a ValueError naming ``name``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"{name}: expected an H x W x 3 uint8 image, got {type(image).__name__} {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: the image is empty ({image.shape})")


@dataclass(frozen=True)
class Sample:
    """One object to segment: ``image`` H x W x 3 uint8 RGB, ``mask`` H x W bool (not empty)."""

    image: np.ndarray
    mask: np.ndarray
    name: str

    def __post_init__(self) -> None:
        check_image(self.image, self.name)
        if self.mask.shape != self.image.shape[:2] or self.mask.dtype != bool:
            raise ValueError(
                f"{self.name}: the mask must be a bool array of the image's size {self.image.shape[:2]}, "
                f"got {self.mask.dtype} {self.mask.shape}"
            )
        if not self.mask.any():
            raise ValueError(f"{self.name}: the mask is empty (no object pixel)")


@dataclass(frozen=True)
class Scene:
    """An image with K object masks (``masks`` K x H x W bool, K >= 1; a mask may be empty)."""

    image: np.ndarray
    masks: np.ndarray
    name: str

    def __post_init__(self) -> None:
        check_image(self.image, self.name)
        if self.masks.ndim != 3 or self.masks.shape[1:] != self.image.shape[:2] or self.masks.dtype != bool:
            raise ValueError(
                f"{self.name}: masks must be K x H x W bool with H x W = {self.image.shape[:2]}, "
                f"got {self.masks.dtype} {self.masks.shape}"
            )
        if self.masks.shape[0] == 0:
            raise ValueError(f"{self.name}: the image has no object masks")

    def samples(self, min_area: int = 1) -> list[Sample]:
        """One ``Sample`` per mask with at least ``min_area`` pixels."""
        return [
            Sample(self.image, mask, f"{self.name}/obj{k}")
            for k, mask in enumerate(self.masks)
            if int(mask.sum()) >= min_area
        ]
