"""Triton kernel of ``hrsam::fusion_layer_norm``: HRSAM++'s stage output in one pass.

One program holds ``block_rows`` output rows: for each it loads the main token's row and the four
anchor rows its bilinear taps name (contiguous runs of the channel width, so the loads vectorize;
the anchor grid is small and stays in L2), blends the anchor rows in float32 as the torch form does
(rows, then columns; rounded to the input's dtype, as ``upsample_rows``), normalises both in float32
and stores them side by side. Each main row is read once and each output row written once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from hrsam.ops.add_norm.triton_kernel import AddNormConfig, normalise_rows

# The add + norm kernel's launch shape (rows per program, warps): the same one-row-per-lane-group layout.
FusionNormConfig = AddNormConfig
DEFAULT_CONFIG = FusionNormConfig()


@triton.jit
def fusion_layer_norm_kernel(
    x,
    h0,
    h1,
    wh,
    w0,
    w1,
    ww,
    weight,
    bias,
    out,
    rows,
    width,
    length,
    anchor_width,
    eps,
    WIDTH: tl.constexpr,
    BLOCK_WIDTH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    image = tl.program_id(1).to(tl.int64)
    live = r < rows
    i, j = r // width, r % width
    columns = tl.arange(0, BLOCK_WIDTH)
    in_row = columns < WIDTH
    mask = live[:, None] & in_row[None, :]
    w = tl.load(weight + columns, mask=in_row, other=0.0).to(tl.float32)
    b = tl.load(bias + columns, mask=in_row, other=0.0).to(tl.float32)
    first = image * length  # this image's first token row in x
    main = tl.load(x + (first + r.to(tl.int64))[:, None] * WIDTH + columns[None, :], mask=mask, other=0.0)
    target = out + (image * rows + r.to(tl.int64))[:, None] * (2 * WIDTH) + columns[None, :]
    tl.store(target, normalise_rows(main.to(tl.float32), in_row, w, b, eps, WIDTH).to(main.dtype), mask=mask)

    anchor = first + rows  # the anchor grid follows the main grid
    top = anchor + tl.load(h0 + i, mask=live, other=0).to(tl.int64) * anchor_width
    bottom = anchor + tl.load(h1 + i, mask=live, other=0).to(tl.int64) * anchor_width
    left = tl.load(w0 + j, mask=live, other=0).to(tl.int64)
    right = tl.load(w1 + j, mask=live, other=0).to(tl.int64)
    fy = tl.load(wh + i, mask=live, other=0.0)[:, None]
    fx = tl.load(ww + j, mask=live, other=0.0)[:, None]
    c = columns[None, :]
    top_left = tl.load(x + (top + left)[:, None] * WIDTH + c, mask=mask, other=0.0).to(tl.float32)
    top_right = tl.load(x + (top + right)[:, None] * WIDTH + c, mask=mask, other=0.0).to(tl.float32)
    bottom_left = tl.load(x + (bottom + left)[:, None] * WIDTH + c, mask=mask, other=0.0).to(tl.float32)
    bottom_right = tl.load(x + (bottom + right)[:, None] * WIDTH + c, mask=mask, other=0.0).to(tl.float32)
    blend_left = top_left + (bottom_left - top_left) * fy
    blend_right = top_right + (bottom_right - top_right) * fy
    upsampled = (blend_left + (blend_right - blend_left) * fx).to(main.dtype).to(tl.float32)
    tl.store(target + WIDTH, normalise_rows(upsampled, in_row, w, b, eps, WIDTH).to(main.dtype), mask=mask)


def fusion_layer_norm_triton(
    x: Tensor,
    h0: Tensor,
    h1: Tensor,
    wh: Tensor,
    w0: Tensor,
    w1: Tensor,
    ww: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    anchor_width: int,
    config: FusionNormConfig | None = None,
    wrap_triton: Callable = lambda kernel: kernel,
) -> Tensor:
    """``fusion_layer_norm``'s output as [B * h * w, 2C] contiguous in x's dtype; inputs validated.

    x [B, L, C] contiguous; the main grid is h x w with h = len(h0), w = len(w0), the anchor grid
    follows it in each image's rows, ``anchor_width`` wide. Only tensors, numbers and a
    ``wrap_triton`` launch: usable inside ``torch.library.triton_op``.
    """
    config = config or DEFAULT_CONFIG
    config.check()
    batch, length, channels = x.shape
    rows = h0.shape[0] * w0.shape[0]
    out = torch.empty((batch * rows, 2 * channels), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    wrap_triton(fusion_layer_norm_kernel)[(triton.cdiv(rows, config.block_rows), batch)](
        x, h0, h1, wh, w0, w1, ww, weight, bias, out, rows, w0.shape[0], length, anchor_width, eps,
        WIDTH=channels, BLOCK_WIDTH=triton.next_power_of_2(channels), BLOCK=config.block_rows,
        num_warps=config.num_warps,
    )  # fmt: skip
    return out
