"""``fusion_layer_norm``'s definition in plain torch (any device, any dtype): HRSAM++'s stage output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# One axis of a bilinear resize: per output position the lower and upper source index (int64) and the
# upper weight (float32); built once per size by ``hrsam.modeling.encoder.BilinearTaps``.
AxisTaps = tuple[Tensor, Tensor, Tensor]


def upsample_rows(grid: Tensor, rows: AxisTaps, cols: AxisTaps) -> Tensor:
    """Bilinear resize (align_corners=False) of a channels-last grid [B, h, w, C] by per-axis taps.

    Two linear blends in float32 (rows, then columns: ``F.interpolate``'s arithmetic), result in
    ``grid``'s dtype. Gathering whole rows of channels keeps every access contiguous.
    """
    (h0, h1, wh), (w0, w1, ww) = rows, cols
    values = grid.float()
    top, bottom = values[:, h0], values[:, h1]
    blended = top + (bottom - top) * wh[:, None, None]
    left, right = blended[:, :, w0], blended[:, :, w1]
    return (left + (right - left) * ww[:, None]).to(grid.dtype)


def scale_grids(
    x: Tensor, main: tuple[int, int], rows: AxisTaps, cols: AxisTaps, anchor: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(main grid [B, h, w, C], anchor grid upsampled to it [B, h, w, C]) from x [B, h * w + ha * wa, C]."""
    h, w = main
    return x[:, : h * w].unflatten(1, main), upsample_rows(x[:, h * w :].unflatten(1, anchor), rows, cols)


def fusion_layer_norm_reference(
    x: Tensor, main: tuple[int, int], rows: AxisTaps, cols: AxisTaps, anchor: tuple[int, int],
    weight: Tensor, bias: Tensor, eps: float,
) -> Tensor:  # fmt: skip
    """[B, h, w, 2C] in x's dtype: LayerNorm (float32) of the main tokens next to that of the anchor
    tokens upsampled to the main grid. x [B, h * w + ha * wa, C] holds each image's main then anchor
    tokens in raster order; ``rows`` / ``cols`` resize ha x wa to h x w."""
    channels = x.shape[-1]
    main_grid, anchor_grid = scale_grids(x, main, rows, cols, anchor)

    def norm(t: Tensor) -> Tensor:
        return F.layer_norm(t.float(), (channels,), weight.float(), bias.float(), eps)

    return torch.cat([norm(main_grid), norm(anchor_grid)], dim=-1).to(x.dtype)
