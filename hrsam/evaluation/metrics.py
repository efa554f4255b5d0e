"""Interactive-segmentation metrics: IoU, NoC@t, mIoU after k clicks, and their summary.

A run of one object gives its IoU after clicks 1..N (N = the click budget, 20 by default). NoC@t
is the first click count whose IoU reaches t, or N when it never does (the paper's convention:
a failed object costs the whole budget). mIoU@k averages the IoU after k clicks over objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLDS = (0.85, 0.90, 0.95)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two bool masks; 1.0 when both are empty."""
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def noc(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    """Clicks needed to reach ``threshold`` (1-based), or ``max_clicks`` if never reached."""
    for k, value in enumerate(ious[:max_clicks], start=1):
        if value >= threshold:
            return k
    return max_clicks


def miou_curve(runs: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean IoU after 1..N clicks over runs of equal length N."""
    if not runs:
        raise ValueError("no evaluated objects: the data set is empty")
    return np.asarray(runs, dtype=np.float64).mean(axis=0)


def summarise(runs: Sequence[Sequence[float]], max_clicks: int, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """NoC@t and failures (NoC = budget and never reached) per threshold, the mIoU curve, mIoU@5."""
    curve = miou_curve(runs)
    summary: dict = {"objects": len(runs), "max_clicks": max_clicks}
    for threshold in thresholds:
        key = f"{round(threshold * 100)}"
        counts = [noc(run, threshold, max_clicks) for run in runs]
        summary[f"NoC@{key}"] = float(np.mean(counts))
        summary[f"NoF@{key}"] = int(sum(1 for run in runs if max(run) < threshold))
    summary["mIoU@1"] = float(curve[0])
    if len(curve) >= 5:
        summary["mIoU@5"] = float(curve[4])
    summary["mIoU_curve"] = [float(v) for v in curve]
    return summary
