"""``evaluate(predictor, dataset)``: the click protocol (docs/MODEL.md) on any backend.

Per object: ``set_image`` once (the encoder), then up to ``max_clicks`` clicks from
``hrsam.evaluation.clicks.next_click``; every ``predict`` gets all clicks so far and the previous
click's low-resolution logits as the mask prompt, and returns the single-mask output at the
original resolution, whose IoU is recorded. When no error pixel is left the remaining clicks keep
the last IoU (no click can improve a perfect mask). Times are wall-clock seconds with CUDA
synchronised before and after each call, so they hold the whole encoder or decoder call.

The predictor is ``hrsam.predictor.HRSAMPredictor`` over any runner, so one loop measures eager
PyTorch, ONNX Runtime and TensorRT alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from hrsam.data.samples import Sample
from hrsam.evaluation.clicks import next_click
from hrsam.evaluation.metrics import THRESHOLDS, iou, summarise
from hrsam.predictor import HRSAMPredictor


@dataclass
class ObjectResult:
    """One object's run: IoU after each click, the clicks (x, y, positive) and the timings."""

    name: str
    image_size: tuple[int, int]
    ious: list[float] = field(default_factory=list)
    clicks: list[tuple[int, int, bool]] = field(default_factory=list)
    encoder_s: float = 0.0
    click_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EvaluationResult:
    """All objects of one evaluation, with what ran them."""

    objects: list[ObjectResult]
    max_clicks: int
    target_size: int
    runner: str

    def summary(self, thresholds: Sequence[float] = THRESHOLDS) -> dict:
        """Metrics (``hrsam.evaluation.metrics.summarise``) plus mean timings and 20-SPC.

        ``SPC`` is the paper's seconds per click: encoder time amortised over the clicks made
        plus the mean decoder time per click, averaged over objects.
        """
        result = summarise([o.ious for o in self.objects], self.max_clicks, thresholds)
        clicks = [o for o in self.objects if o.click_s]
        result["encoder_s"] = float(np.mean([o.encoder_s for o in self.objects]))
        result["click_s"] = float(np.mean([np.mean(o.click_s) for o in clicks])) if clicks else 0.0
        per_object = [(o.encoder_s + sum(o.click_s)) / len(o.click_s) for o in clicks]
        result["SPC"] = float(np.mean(per_object)) if clicks else 0.0
        result.update(runner=self.runner, target_size=self.target_size)
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(call: Callable[[], object], device: torch.device) -> tuple[object, float]:
    _synchronize(device)
    start = time.perf_counter()
    value = call()
    _synchronize(device)
    return value, time.perf_counter() - start


def evaluate_sample(
    predictor: HRSAMPredictor, sample: Sample, max_clicks: int, target_size: int | None
) -> ObjectResult:
    """Run the click protocol on one object."""
    device = predictor.device
    _, encoder_s = _timed(lambda: predictor.set_image(sample.image, target_size), device)
    result = ObjectResult(sample.name, tuple(sample.mask.shape), encoder_s=encoder_s)
    pred = np.zeros_like(sample.mask)
    clicked = np.zeros_like(sample.mask)
    coords: list[tuple[int, int]] = []
    labels: list[int] = []
    previous = None
    while len(result.ious) < max_clicks:
        click = next_click(sample.mask, pred, clicked)
        if click is None:
            last = result.ious[-1] if result.ious else iou(pred, sample.mask)
            result.ious += [last] * (max_clicks - len(result.ious))
            break
        clicked[click.y, click.x] = True
        coords.append((click.x, click.y))
        labels.append(int(click.positive))
        points, point_labels, prompt = np.array(coords), np.array(labels), previous
        (masks, _, low_res), click_s = _timed(
            lambda: predictor.predict(points, point_labels, mask_input=prompt),  # noqa: B023 - called at once
            device,
        )
        previous, pred = low_res, masks[0]
        result.clicks.append((click.x, click.y, click.positive))
        result.click_s.append(click_s)
        result.ious.append(iou(pred, sample.mask))
    return result


def evaluate(
    predictor: HRSAMPredictor,
    dataset: Sequence[Sample],
    *,
    max_clicks: int = 20,
    target_size: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluate ``predictor`` on the first ``limit`` (default all) objects of ``dataset``."""
    if max_clicks < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError("the evaluation data set is empty")
    size = predictor.check_target_size(target_size)
    indices = range(count)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="evaluate", unit="object")
    objects = [evaluate_sample(predictor, dataset[i], max_clicks, size) for i in indices]
    return EvaluationResult(objects, max_clicks, size, predictor.runner.info.describe())
