"""``HRSAMPredictor``: click-based segmentation with the API shape of ``segment_anything.SamPredictor``.

Pre- and post-processing follow the evaluation protocol (docs/MODEL.md, "Evaluation protocol"), as the authors do it:

* the longest image side is resized to the target size S (bilinear on a float tensor, with
  antialiasing by default; new side ``int(scale * side + 0.5)``), pixels are normalised with SAM's
  mean / std and the image is zero-padded bottom/right to S x S after normalisation. The authors'
  evaluation resized with torchvision 0.15's tensor ``resize(antialias=None)``, i.e. without
  antialiasing; ``HRSAMPredictor(..., antialias=False)`` reproduces that;
* point coordinates are scaled by the same per-axis factors;
* low-resolution logits (4 x the embedding size) are upsampled to S x S, cropped to the resized
  region and resized to the original image size; the mask is ``logits > 0``.

``predict`` returns masks at the original resolution, their scores and the low-resolution logits;
one row of those logits, fed back as ``mask_input``, is the mask prompt of the next click.

The predictor is the only place with pre/post-processing and input checks. What runs the encoder
and decoder is a ``hrsam.runner.Runner``: the eager PyTorch model, or (through
``trt_runtime.open_predictor``) ONNX Runtime, TensorRT, compiled or AOTInductor engines.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hrsam.images import to_rgb_uint8
from hrsam.modeling.configs import PATCH_SIZE, PIXEL_MEAN, PIXEL_STD
from hrsam.modeling.interactive import HRSAMInteractive
from hrsam.modeling.sam_decoder import select_single_mask
from hrsam.runner import EagerRunner, Runner

DEFAULT_TARGET_SIZE = 1024


def resized_size(height: int, width: int, target_size: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``target_size`` (the authors' and SAM's rounding)."""
    scale = float(target_size) / max(height, width)
    return int(scale * height + 0.5), int(scale * width + 0.5)


def preprocess(image: np.ndarray, target_size: int, device: torch.device, antialias: bool = True) -> Tensor:
    """H x W x 3 uint8 RGB -> [1, 3, S, S] float32: resized, normalised, zero-padded bottom/right."""
    new_h, new_w = resized_size(image.shape[0], image.shape[1], target_size)
    if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. from PIL)
        image = image.copy()
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).unsqueeze(0).float()
    if (new_h, new_w) != tuple(image.shape[:2]):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    mean = torch.tensor(PIXEL_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, target_size - new_w, 0, target_size - new_h))


def postprocess_logits(
    low_res: Tensor, target_size: int, input_size: tuple[int, int], original_size: tuple[int, int]
) -> Tensor:
    """[B, C, 4h, 4w] logits -> [B, C, H, W] logits at the original resolution (float32)."""
    x = F.interpolate(low_res.float(), size=(target_size, target_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, size=original_size, mode="bilinear", align_corners=False)


class HRSAMPredictor:
    """Encode an image once with ``set_image``, then segment it from clicks with ``predict``.

    Args:
        runner: a ``Runner`` (any backend), or an ``HRSAMInteractive`` model on the device (and
            dtype) to run on, which is wrapped in an ``EagerRunner``.
        autocast_dtype: for a model only: run it under ``torch.autocast`` with this dtype (e.g.
            torch.bfloat16 on CUDA); None runs in the model's own dtype.
        antialias: antialias when resizing the image (False matches the authors' evaluation).
    """

    def __init__(
        self, runner: Runner | HRSAMInteractive, autocast_dtype: torch.dtype | None = None, antialias: bool = True
    ) -> None:
        if isinstance(runner, HRSAMInteractive):
            runner = EagerRunner(runner, autocast_dtype)
        elif autocast_dtype is not None:
            raise ValueError("autocast_dtype applies to a PyTorch model; a runner has its own precision")
        if not isinstance(runner, Runner):
            raise TypeError(f"expected a Runner or an HRSAMInteractive model, got {type(runner).__name__}")
        self.runner = runner
        self.antialias = antialias
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.target_size: int | None = None

    def check_target_size(self, target_size: int | None) -> int:
        """The padded input side S to use: validated, and the runner's own size for fixed-size engines."""
        fixed = self.runner.input_size
        if target_size is None:
            return fixed or DEFAULT_TARGET_SIZE
        if isinstance(target_size, bool) or not isinstance(target_size, int | np.integer):
            raise ValueError(f"target_size must be an int (e.g. 1024 or 2048), got {target_size!r}")
        if target_size <= 0 or target_size % PATCH_SIZE:
            raise ValueError(
                f"target_size must be a positive multiple of {PATCH_SIZE} (e.g. 1024), got {target_size}"
            )
        if fixed is not None and target_size != fixed:
            raise ValueError(
                f"this {self.runner.info.backend} runner was built for input size {fixed}, not {target_size}; "
                f"use target_size={fixed} or export for {target_size}"
            )
        return int(target_size)

    def set_image(self, image: Any, target_size: int | None = None) -> None:
        """Encode ``image`` (H x W x 3 uint8 RGB; see ``hrsam.images`` for what else is converted).

        ``target_size``: the padded square input side S, a positive multiple of 16 (1024, 2048, ...);
        default: the runner's fixed size, else 1024.
        """
        target_size = self.check_target_size(target_size)
        rgb = to_rgb_uint8(image)
        self.reset_image()
        x = preprocess(rgb, target_size, self.device, self.antialias)
        self.features = self.runner.encode(x)
        self.original_size = (rgb.shape[0], rgb.shape[1])
        self.input_size = resized_size(rgb.shape[0], rgb.shape[1], target_size)
        self.target_size = target_size

    def get_image_embedding(self) -> Tensor:
        """The current image embedding [1, 256, S/16, S/16]."""
        self._require_image()
        return self.features

    def predict(
        self,
        point_coords: Any,
        point_labels: Any,
        mask_input: Any = None,
        multimask_output: bool = False,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment from clicks on the image given to ``set_image``.

        Args:
            point_coords: N x 2 (x, y) pixel coordinates in the original image, N >= 1.
            point_labels: N labels, 1 foreground and 0 background.
            mask_input: optional 1 x 4h x 4w (or 4h x 4w) low-resolution logits, typically one row of
                the previous call's third output.
            multimask_output: return SAM's three ambiguity masks instead of the single mask.
            return_logits: return logits instead of boolean masks.

        Returns:
            masks C x H x W (bool, or float32 logits), scores C (float32), low-res logits C x 4h x 4w
            (float32), with C = 3 for multimask output, else 1.
        """
        iou, low_res = self.runner.decode(self.features, *self.prompt_tensors(point_coords, point_labels, mask_input))
        iou, low_res = select_single_mask(iou, low_res, multimask_output)
        logits = postprocess_logits(low_res, self.target_size, self.input_size, self.original_size)
        masks = logits if return_logits else logits > 0
        return (  # float32 logits whatever precision the runner computed in
            masks[0].float().cpu().numpy() if return_logits else masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    def prompt_tensors(
        self, point_coords: Any, point_labels: Any, mask_input: Any = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Validated decoder inputs for the current image (what ``predict`` passes to the runner).

        Returns point_coords [1, N + 1, 2] in pixels of the padded input (SAM's padding point
        appended), point_labels [1, N + 1], mask_input [1, 1, 4h, 4w] and has_mask_input [1].
        """
        self._require_image()
        coords, labels = self._prepare_points(point_coords, point_labels)
        mask, has_mask = self._prepare_mask(mask_input)
        return coords, labels, mask, has_mask

    def _require_image(self) -> None:
        if self.features is None:
            raise RuntimeError("no image is set: call set_image(image) before predict()")

    def _prepare_points(self, point_coords: Any, point_labels: Any) -> tuple[Tensor, Tensor]:
        """Validate clicks and map them to the padded input; SAM's padding point is appended."""
        coords, labels = validate_points(point_coords, point_labels, self.original_size)
        (height, width), (new_h, new_w) = self.original_size, self.input_size
        scaled = coords * np.array([new_w / width, new_h / height])
        scaled = np.concatenate([scaled, np.zeros((1, 2))])
        labels = np.concatenate([labels, [-1.0]])
        device = self.device
        return (
            torch.as_tensor(scaled, dtype=torch.float32, device=device).unsqueeze(0),
            torch.as_tensor(labels, dtype=torch.float32, device=device).unsqueeze(0),
        )

    def _prepare_mask(self, mask_input: Any) -> tuple[Tensor, Tensor]:
        """The mask prompt [1, 1, 4h, 4w] and has_mask_input [1]; zeros and 0 when not given."""
        side = 4 * self.features.shape[-2], 4 * self.features.shape[-1]
        device = self.device
        if mask_input is None:
            return torch.zeros(1, 1, *side, device=device), torch.zeros(1, device=device)
        mask = _as_float_array(mask_input, "mask_input")
        if mask.shape[-2:] != side or mask.size != side[0] * side[1]:
            raise ValueError(
                f"mask_input must be 1 x {side[0]} x {side[1]} low-resolution logits (one row of the "
                f"previous predict()'s third output for this target size), got shape {mask.shape}"
            )
        if not np.isfinite(mask).all():
            raise ValueError("mask_input contains NaN or infinite values")
        mask_tensor = torch.as_tensor(mask, dtype=torch.float32, device=device).reshape(1, 1, *side)
        return mask_tensor, torch.ones(1, device=device)


def validate_points(point_coords: Any, point_labels: Any, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Check clicks against an (H, W) image; return N x 2 float64 (x, y) and N float64 labels.

    Public so that callers (the CLI, the demo) can check clicks before any encoder work.
    """
    coords = _as_float_array(point_coords, "point_coords")
    labels = _as_float_array(point_labels, "point_labels")
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"point_coords must be N x 2 (x, y) with N >= 1, got shape {coords.shape}")
    if labels.shape != (coords.shape[0],):
        raise ValueError(
            f"point_labels must hold one label per point: got {coords.shape[0]} points and labels of "
            f"shape {labels.shape}"
        )
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contains NaN or infinite values")
    if not np.isin(labels, (0.0, 1.0)).all():
        raise ValueError(f"point_labels must be 1 (foreground) or 0 (background), got {labels.tolist()}")
    height, width = image_size
    for x, y in coords:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(
                f"point ({x:g}, {y:g}) is outside the {width} x {height} image; coordinates are (x, y) "
                "pixels of the original image"
            )
    return coords, labels


def _as_float_array(value: Any, name: str) -> np.ndarray:
    """Arrays, lists and tensors as float64 numpy; a clear error for anything else."""
    if isinstance(value, Tensor):
        value = value.detach().float().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric array-like, got {type(value).__name__}: {error}") from None

