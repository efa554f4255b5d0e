"""Runners: what executes the two halves of the model, behind the one predictor.

``HRSAMPredictor`` does every pre- and post-processing step and every input check; a runner only
executes the encoder (normalised padded image -> embedding) and the decoder (embedding + prompts
-> IoU predictions and low-resolution logits). Backends differ only here:

* ``EagerRunner`` (this module): the PyTorch model, optionally under autocast;
* the ``compiled`` runner (``hrsam.compiled``): the same model through torch.compile / CUDA graphs;
* ONNX Runtime, TensorRT and AOTInductor runners live in ``trt_runtime`` (they read exported
  files), and ``trt_runtime.open_predictor`` is the one place that picks a backend by name.

The I/O of ``encode`` / ``decode`` is the export contract's (``docs/EXPORT.md``): float32 inputs on
``runner.device``, outputs as tensors on ``runner.device`` in any float dtype (the predictor casts).
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

from hrsam.modeling.interactive import HRSAMInteractive


@dataclass(frozen=True)
class RunnerInfo:
    """What a runner is, in words a user (and the demo's latency panel) can show.

    ``input_size``: the fixed padded input side S an exported engine was built for, or None when
    any multiple of 16 works (eager). ``weights``: where the weights came from (a file and its
    SHA-256, or "random").
    """

    backend: str
    model: str
    device: str
    precision: str
    input_size: int | None
    weights: str

    def describe(self) -> str:
        size = "any input size" if self.input_size is None else f"input size {self.input_size}"
        return f"{self.backend} ({self.model}, {self.precision} on {self.device}, {size}; weights: {self.weights})"


class Runner(abc.ABC):
    """Executes encoder and decoder for ``HRSAMPredictor``; subclasses hold one backend each."""

    info: RunnerInfo

    @property
    def device(self) -> torch.device:
        """Where the predictor puts the runner's inputs."""
        return torch.device(self.info.device)

    @property
    def input_size(self) -> int | None:
        return self.info.input_size

    @abc.abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """[1, 3, S, S] float32 normalised, zero-padded image -> image embedding [1, 256, S/16, S/16]."""

    @abc.abstractmethod
    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Prompts -> (iou_predictions [1, 4], low_res_masks [1, 4, 4h, 4w]), all four mask outputs.

        ``point_coords`` [1, P, 2] float32 in pixels of the padded input (SAM's padding point with
        label -1 included), ``point_labels`` [1, P] float32, ``mask_input`` [1, 1, 4h, 4w] float32,
        ``has_mask_input`` [1] float32.
        """


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype_of(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name ("fp32" runs without autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


class EagerRunner(Runner):
    """The PyTorch model as it is (its device and dtype), optionally under ``torch.autocast``.

    Args:
        model: the interactive model, on the device to run on; it is put in eval mode.
        autocast_dtype: torch.bfloat16 / torch.float16 to run under autocast, None for the model's
            own dtype (float32, or half after ``model.half()``).
        weights: a description of the weights for ``info`` (``hrsam.checkpoint.load_model`` says).
    """

    def __init__(
        self, model: HRSAMInteractive, autocast_dtype: torch.dtype | None = None, weights: str = "unknown"
    ) -> None:
        self.model = model.eval()
        self.autocast_dtype = autocast_dtype
        self.weights = weights

    @property
    def info(self) -> RunnerInfo:  # read from the model each time: it may be moved after wrapping
        parameter = next(self.model.parameters())
        precision = precision_name(self.autocast_dtype or parameter.dtype)
        return RunnerInfo("eager", self.model.config.name, str(parameter.device), precision, None, self.weights)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def encode(self, images: Tensor) -> Tensor:
        if self.autocast_dtype is None:  # float32 input for autocast, else the model's own dtype
            images = images.to(next(self.model.parameters()).dtype)
        with torch.inference_mode(), self._autocast():
            return self.model.encode(images)

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        with torch.inference_mode(), self._autocast():
            return self.model.decode(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)


def precision_name(dtype: torch.dtype) -> str:
    """The short name runners report for a compute dtype ("fp32", "bf16", ...)."""
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
    return names.get(dtype, str(dtype))
