"""Image validation and conversion to the H x W x 3 uint8 RGB array the predictor expects.

Accepted (and converted):

* uint8 H x W x 3 (RGB): used as is (a non-contiguous view is copied);
* grayscale H x W or H x W x 1: replicated to three channels;
* RGBA H x W x 4: the alpha channel is dropped (colours are kept as stored, not composited);
* float images with every value in [0, 1]: scaled by 255 and rounded;
* other integer dtypes whose values are within 0..255 (e.g. int64 arrays from arithmetic);
* PIL images (any mode PIL can convert to RGB).

Refused with a ValueError that says what to do: empty images, channel-first arrays, other channel
counts, NaN / infinite values, floats outside [0, 1], integers outside 0..255, booleans.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def to_rgb_uint8(image: Any) -> np.ndarray:
    """Validate ``image`` and return it as a C-contiguous H x W x 3 uint8 RGB array."""
    if isinstance(image, Image.Image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"image must be a numpy array (H x W x 3 uint8 RGB) or a PIL image, got {type(image).__name__}"
        )
    array = _to_hwc(image)
    array = _to_uint8(array)
    return np.ascontiguousarray(_to_three_channels(array))


def _to_hwc(image: np.ndarray) -> np.ndarray:
    """Shape checks: 2D grayscale or H x W x C; empty and channel-first arrays are refused."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must be H x W or H x W x C, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty (shape {image.shape}); pass an image with at least one pixel")
    channels = image.shape[2]
    if channels not in (1, 3, 4):
        if image.shape[0] in (1, 3, 4):
            raise ValueError(
                f"image of shape {image.shape} looks channel-first; pass H x W x C, "
                "e.g. image.transpose(1, 2, 0)"
            )
        raise ValueError(f"image must have 1, 3 or 4 channels (gray, RGB, RGBA), got shape {image.shape}")
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """dtype conversion with range checks, so that no value is silently wrapped or clipped."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        raise ValueError("image is boolean (a mask?); pass an RGB image, e.g. mask.astype(np.uint8) * 255")
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values; clean it before calling set_image")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float image has values in [{low:g}, {high:g}]; float images must be in [0, 1]. "
                "For 0..255 data pass np.clip(image, 0, 255).astype(np.uint8)"
            )
        return np.rint(image * 255.0).astype(np.uint8)
    if np.issubdtype(image.dtype, np.integer):
        low, high = int(image.min()), int(image.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{image.dtype} image has values in [{low}, {high}]; only 0..255 is supported. "
                "Rescale it to 8 bits first (e.g. (image // 257).astype(np.uint8) for 16-bit)"
            )
        return image.astype(np.uint8)
    raise ValueError(f"unsupported image dtype {image.dtype}; pass uint8 RGB")


def _to_three_channels(image: np.ndarray) -> np.ndarray:
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 4:
        return image[:, :, :3]
    return image


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB (grayscale, palette and RGBA are converted).

    Every way a file can fail to be an image (a folder, not an image, truncated, unreadable, too
    large for PIL's decompression-bomb limit) is a one-line error naming the file: FileNotFoundError
    when it does not exist, ValueError otherwise.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb_uint8(image)  # decodes the pixels: truncated files fail here, not later
    except UnidentifiedImageError:
        raise ValueError(f"{path} is not an image file PIL can read (PNG, JPEG, TIFF, BMP, WebP, ...)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:  # PIL reports broken PNGs as SyntaxError
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot read image {path}: {reason}") from None
