"""Parity between a backend and eager PyTorch: what ``export check`` and ``export validate`` measure.

Two comparisons, both on the same image and clicks:

* tensors: the embedding (and the first click's decoder outputs) from the backend and from the
  eager model on identical inputs, through polygraphy's ``Comparator`` (max abs / rel error
  against stated tolerances);
* a click session: each backend runs its own predictor through the same clicks, feeding back
  its own low-resolution logits (as a user's session does), and the masks are compared by IoU
  per click.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, CompareFunc
from polygraphy.logger import G_LOGGER

from hrsam.predictor import HRSAMPredictor

try:  # polygraphy >= 0.53 names the simple comparison a class; older versions a factory
    from polygraphy.comparator import SimpleCompareFunc as _simple_compare
except ImportError:
    _simple_compare = CompareFunc.simple

# A 5-click session on the bundled example (hrsam/assets/example.png, 640 x 480).
DEFAULT_CLICKS = "220,260,1;460,280,0;200,210,1;300,150,1;500,100,0"


@dataclass(frozen=True)
class Tolerance:
    """Pass thresholds: element-wise |a - b| <= atol + rtol |b| on tensors, and the least mask IoU."""

    atol: float
    rtol: float
    min_iou: float


# fp32 graphs on ONNX Runtime compute the same function as eager with another summation order:
# measured errors are ~1e-5 on embeddings, so 1e-3 leaves room and still catches a wrong graph.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_iou=0.999),
    "bf16": Tolerance(atol=0.15, rtol=0.1, min_iou=0.98),
    "fp16": Tolerance(atol=0.05, rtol=0.05, min_iou=0.99),
}


class TorchRunner(BaseRunner):
    """A polygraphy runner around a PyTorch callable on any device (polygraphy's own assumes CUDA)."""

    def __init__(
        self,
        function: Callable[..., object],
        inputs: dict[str, tuple[int, ...]],
        output_names: Sequence[str],
        device: torch.device | str = "cpu",
        name: str = "pytorch",
    ) -> None:
        """``inputs``: name -> shape, in the order ``function`` takes them (float32 tensors)."""
        super().__init__(name=name, prefix="pytorch-runner")
        self.function = function
        self.inputs = dict(inputs)
        self.output_names = list(output_names)
        self.device = torch.device(device)

    def activate_impl(self) -> None:
        pass

    def get_input_metadata_impl(self) -> TensorMetadata:
        metadata = TensorMetadata()
        for name, shape in self.inputs.items():
            metadata.add(name, np.float32, shape)
        return metadata

    def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
        inputs = [torch.from_numpy(np.ascontiguousarray(feed_dict[n])).to(self.device) for n in self.inputs]
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.function(*inputs)
        self.inference_time = time.perf_counter() - start  # polygraphy reads it
        outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        return OrderedDict(
            (name, out.detach().float().cpu().numpy()) for name, out in zip(self.output_names, outputs, strict=True)
        )

    def deactivate_impl(self) -> None:
        pass


@dataclass(frozen=True)
class TensorParity:
    """One output of one comparison: the largest errors and whether they are within tolerance."""

    name: str
    max_abs: float
    max_rel: float
    passed: bool


def compare_tensors(
    runners: Sequence[BaseRunner], feed: dict[str, np.ndarray], tolerance: Tolerance
) -> list[TensorParity]:
    """Run every runner on ``feed`` and compare each output of the first runner with the others'."""
    G_LOGGER.module_severity = G_LOGGER.WARNING  # the verdicts are printed by the caller
    results = Comparator.run(list(runners), data_loader=[feed])
    accuracy = Comparator.compare_accuracy(
        results, compare_func=_simple_compare(atol=tolerance.atol, rtol=tolerance.rtol), fail_fast=False
    )
    # polygraphy < 0.53 returns one AccuracyResult (a dict), newer versions a list of them.
    per_function = [accuracy] if hasattr(accuracy, "items") else list(accuracy)
    return [
        TensorParity(name, result.max_absdiff, result.max_reldiff, bool(result))
        for function_result in per_function
        for iterations in function_result.values()
        for outputs in iterations
        for name, result in outputs.items()
    ]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def click_session(
    predictor: HRSAMPredictor, image: np.ndarray, coords: np.ndarray, labels: np.ndarray, target_size: int
) -> list[np.ndarray]:
    """Masks after each click, each click fed the previous click's low-resolution logits."""
    predictor.set_image(image, target_size=target_size)
    masks, logits = [], None
    for k in range(1, len(coords) + 1):
        mask, _, low_res = predictor.predict(coords[:k], labels[:k], mask_input=logits)
        masks.append(mask[0])
        logits = low_res
    return masks


def session_ious(
    reference: HRSAMPredictor,
    candidate: HRSAMPredictor,
    image: np.ndarray,
    coords: np.ndarray,
    labels: np.ndarray,
    target_size: int,
) -> list[float]:
    """Per-click mask IoU between two backends' independent sessions on the same clicks."""
    expected = click_session(reference, image, coords, labels, target_size)
    actual = click_session(candidate, image, coords, labels, target_size)
    return [mask_iou(a, b) for a, b in zip(expected, actual, strict=True)]
