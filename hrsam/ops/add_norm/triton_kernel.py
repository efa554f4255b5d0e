"""Triton kernel of ``hrsam::add_layer_norm``: a residual add (with a row gather) and a LayerNorm, one pass.

One program holds ``block_rows`` whole rows in registers: it loads each row's source index, the
residual row and the gathered delta row (contiguous runs of the row width, so the loads
vectorize), rounds their sum to the residual's dtype (as the separate add would), stores it,
normalises the rounded sum in float32 and stores the result. Every row is read once and written
twice, the least traffic the pair of ops allows: 3.1-3.2 TB/s of it at HRSAM 2048's shape on the
H200, about Inductor's own fusion of the pair alone (docs/BENCHMARKS.md, eighteenth session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@dataclass(frozen=True)
class AddNormConfig:
    """Launch shape: ``block_rows`` rows per program, ``num_warps`` warps (powers of two).

    ``benchmarks/add_norm.py --sweep`` times the alternatives on the GPU: at HRSAM 2048's shape on
    the H200 every shape of 1-8 rows took 0.031-0.034 ms (this default 0.032), 16 rows with few
    warps up to 0.13.
    """

    block_rows: int = 4
    num_warps: int = 4

    def check(self) -> None:
        """Refuse launch shapes Triton cannot tile."""
        for name in ("block_rows", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"AddNormConfig.{name} must be a power of two, got {value}")


DEFAULT_CONFIG = AddNormConfig()


@triton.jit
def normalise_rows(values, in_row, w, b, eps, WIDTH: tl.constexpr):
    """LayerNorm of float32 rows [BLOCK, BLOCK_WIDTH] whose columns past WIDTH are masked out (``in_row``)."""
    mean = tl.sum(values, axis=1) / WIDTH
    centred = tl.where(in_row[None, :], values - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(centred * centred, axis=1) / WIDTH + eps)
    return centred * rstd[:, None] * w[None, :] + b[None, :]


@triton.jit
def add_layer_norm_kernel(
    x,
    delta,
    index,
    weight,
    bias,
    total,
    normed,
    rows,
    x_stride,
    delta_stride,
    eps,
    WIDTH: tl.constexpr,
    BLOCK_WIDTH: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_INDEX: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < rows
    r64 = r.to(tl.int64)
    if HAS_INDEX:
        source = tl.load(index + r, mask=live, other=0).to(tl.int64)
    else:
        source = r64
    columns = tl.arange(0, BLOCK_WIDTH)
    in_row = columns < WIDTH
    mask = live[:, None] & in_row[None, :]
    residual = tl.load(x + r64[:, None] * x_stride + columns[None, :], mask=mask, other=0.0)
    update = tl.load(delta + source[:, None] * delta_stride + columns[None, :], mask=mask, other=0.0)
    summed = (residual.to(tl.float32) + update.to(tl.float32)).to(residual.dtype)
    tl.store(total + r64[:, None] * WIDTH + columns[None, :], summed, mask=mask)
    w = tl.load(weight + columns, mask=in_row, other=0.0).to(tl.float32)
    b = tl.load(bias + columns, mask=in_row, other=0.0).to(tl.float32)
    out = normalise_rows(summed.to(tl.float32), in_row, w, b, eps, WIDTH)
    tl.store(normed + r64[:, None] * WIDTH + columns[None, :], out.to(normed.dtype.element_ty), mask=mask)


def add_layer_norm_triton(
    x: Tensor,
    delta: Tensor,
    index: Tensor | None,
    weight: Tensor,
    bias: Tensor,
    eps: float,
    config: AddNormConfig | None = None,
    wrap_triton: Callable = lambda kernel: kernel,
) -> tuple[Tensor, Tensor]:
    """``add_layer_norm``'s (total, normed), both [rows, width] contiguous in x's dtype; inputs validated.

    Only tensors, numbers and a ``wrap_triton`` launch: usable inside ``torch.library.triton_op``.
    x and delta must have unit-stride rows; their row strides are passed as numbers (in a package,
    the traced ones: the caller passes dense tensors, see ``hrsam.ops.add_norm``).
    """
    config = config or DEFAULT_CONFIG
    config.check()
    rows, width = x.shape
    total = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    normed = torch.empty_like(total)
    if rows == 0:
        return total, normed
    has_index = index is not None
    wrap_triton(add_layer_norm_kernel)[(triton.cdiv(rows, config.block_rows),)](
        x, delta, index if has_index else x, weight, bias, total, normed, rows, x.stride(0), delta.stride(0), eps,
        WIDTH=width, BLOCK_WIDTH=triton.next_power_of_2(width), BLOCK=config.block_rows, HAS_INDEX=has_index,
        num_warps=config.num_warps,
    )  # fmt: skip
    return total, normed
