"""``HRSAMPredictor``: click-based segmentation with the API shape of ``segment_anything.SamPredictor``.

Pre- and post-processing follow the evaluation protocol (SPEC section 3), as the authors do it:

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
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hrsam.images import to_rgb_uint8
from hrsam.modeling.interactive import HRSAMInteractive
from hrsam.modeling.sam_decoder import select_single_mask

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PATCH = 16


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
        model: an ``HRSAMInteractive`` on the device (and dtype) to run on. It is put in eval mode.
        autocast_dtype: run encoder and decoder under ``torch.autocast`` with this dtype (e.g.
            torch.bfloat16 on CUDA); None runs in the model's own dtype.
        antialias: antialias when resizing the image (False matches the authors' evaluation).
    """

    def __init__(
        self, model: HRSAMInteractive, autocast_dtype: torch.dtype | None = None, antialias: bool = True
    ) -> None:
        self.model = model.eval()
        self.autocast_dtype = autocast_dtype
        self.antialias = antialias
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.features: Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.target_size: int | None = None

    def set_image(self, image: Any, target_size: int = 1024) -> None:
        """Encode ``image`` (H x W x 3 uint8 RGB; see ``hrsam.images`` for what else is converted).

        ``target_size``: the padded square input side S, a positive multiple of 16 (1024, 2048, ...).
        """
        if isinstance(target_size, bool) or not isinstance(target_size, int | np.integer):
            raise ValueError(f"target_size must be an int (e.g. 1024 or 2048), got {target_size!r}")
        if target_size <= 0 or target_size % PATCH:
            raise ValueError(f"target_size must be a positive multiple of {PATCH} (e.g. 1024), got {target_size}")
        rgb = to_rgb_uint8(image)
        self.reset_image()
        target_size = int(target_size)
        x = preprocess(rgb, target_size, self.device, self.antialias).to(self._input_dtype())
        with torch.inference_mode(), self._autocast():
            self.features = self.model.encode(x)
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
        self._require_image()
        coords, labels = self._prepare_points(point_coords, point_labels)
        mask, has_mask = self._prepare_mask(mask_input)
        with torch.inference_mode(), self._autocast():
            iou, low_res = self.model.decode(self.features, coords, labels, mask, has_mask)
        iou, low_res = select_single_mask(iou, low_res, multimask_output)
        logits = postprocess_logits(low_res, self.target_size, self.input_size, self.original_size)
        masks = logits if return_logits else logits > 0
        return (
            masks[0].cpu().numpy(),
            iou[0].float().cpu().numpy(),
            low_res[0].float().cpu().numpy(),
        )

    def _require_image(self) -> None:
        if self.features is None:
            raise RuntimeError("no image is set: call set_image(image) before predict()")

    def _input_dtype(self) -> torch.dtype:
        """Input dtype: the model's own (fp16 after ``.half()``), float32 under autocast."""
        if self.autocast_dtype is not None:
            return torch.float32
        return next(self.model.parameters()).dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _prepare_points(self, point_coords: Any, point_labels: Any) -> tuple[Tensor, Tensor]:
        """Validate clicks and map them to the padded input; SAM's padding point is appended."""
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
        height, width = self.original_size
        for x, y in coords:
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(
                    f"point ({x:g}, {y:g}) is outside the {width} x {height} image; coordinates are (x, y) "
                    "pixels of the original image"
                )
        new_h, new_w = self.input_size
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


def _as_float_array(value: Any, name: str) -> np.ndarray:
    """Arrays, lists and tensors as float64 numpy; a clear error for anything else."""
    if isinstance(value, Tensor):
        value = value.detach().float().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric array-like, got {type(value).__name__}: {error}") from None

