"""The standard click simulator of interactive-segmentation evaluation (docs/MODEL.md, evaluation protocol).

Given the ground truth and the current prediction, the next click goes to the pixel farthest
from the boundary of the larger error region: the L2 distance transform of the false negatives
and of the false positives is taken at full resolution, with the image border counted as
boundary (the error maps are padded by one background pixel); pixels already clicked are
excluded; a positive click goes to the false-negative maximum when its distance is larger,
otherwise a negative click to the false-positive maximum. Ties in position go to the first
pixel in raster order. The first click (empty prediction) is thus positive, at the object's
innermost point. When no error pixel is left there is no next click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Click:
    """One click: pixel (x, y) of the image and whether it marks the object (positive)."""

    x: int
    y: int
    positive: bool


def distance_to_boundary(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of every region pixel to the nearest non-region pixel or the border.

    Computed on the region's bounding box grown by one pixel (all outside the region, or beyond
    the border): the nearest outside pixel of any region pixel is never farther than that ring,
    so the result is exact, and late clicks (small error regions) cost little at 4K.
    """
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError:
        raise ImportError("the click simulator needs scipy: pip install scipy (part of the train extra)") from None
    distance = np.zeros(region.shape, dtype=np.float64)
    rows, columns = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    if rows.size == 0:
        return distance
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    distance[box] = distance_transform_edt(np.pad(region[box], 1, constant_values=False))[1:-1, 1:-1]
    return distance


def next_click(gt: np.ndarray, pred: np.ndarray, clicked: np.ndarray | None = None) -> Click | None:
    """The next simulated click for prediction ``pred`` of ground truth ``gt`` (both H x W bool).

    ``clicked``: H x W bool of pixels clicked before (excluded). None when no error is left.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    false_negative = distance_to_boundary(gt & ~pred)
    false_positive = distance_to_boundary(~gt & pred)
    if clicked is not None:
        false_negative[clicked] = 0
        false_positive[clicked] = 0
    fn_max, fp_max = float(false_negative.max()), float(false_positive.max())
    if fn_max == 0 and fp_max == 0:
        return None
    positive = fn_max > fp_max
    y, x = np.unravel_index(int(np.argmax(false_negative if positive else false_positive)), gt.shape)
    return Click(int(x), int(y), positive)
