"""Triton kernel of ``hrsam::gather_rope``: gather rows into window order and rotate them, one pass.

One program covers ``block_rows`` output rows of ``heads_per_program`` heads (``GatherRopeConfig``).
It loads each row's source index once, reads each head's columns of that source row as one
contiguous run (the row offsets are multiples of 16 elements in the model, so the loads vectorize),
rotates channel pairs in registers (``tl.split`` / ``tl.join``, no second load of the partner
channel) and writes the output row. Heads at or past ``rope_width`` are copied. Inductor's code
for the same gather + RoPE (an indirect load per element and a partner load per element) ran at
1.3-2 TB/s on the H200 (docs/BENCHMARKS.md, thirteenth session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@dataclass(frozen=True)
class GatherRopeConfig:
    """Launch shape: ``block_rows`` output rows x ``heads_per_program`` heads per program, ``num_warps`` warps.

    More heads per program load each row index and each row's RoPE tables once for all of them
    (the tables are re-read per head otherwise). ``default_config`` picks what the model runs;
    ``benchmarks/gather_rope.py --sweep`` times the others.
    """

    block_rows: int = 32
    heads_per_program: int = 1
    num_warps: int = 4

    def check(self, heads: int, rope_heads: int) -> None:
        """Refuse shapes the kernel cannot tile: a program's heads must all be rotated or all copied."""
        for name in ("block_rows", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"GatherRopeConfig.{name} must be a power of two, got {value}")
        per_program = self.heads_per_program
        if per_program < 1 or heads % per_program or rope_heads % per_program:
            raise ValueError(f"heads_per_program {per_program} must divide {heads} heads and {rope_heads} rotated")


def default_config(heads: int, rope_heads: int) -> GatherRopeConfig:
    """32 rows x 2 heads per program, 4 warps: the fastest of the sweep at HRSAM ViT-B 2048's shapes
    (docs/BENCHMARKS.md, fourteenth session; within 5% of it: 16 x 2 and 32 x 1); one head per
    program where the heads do not pair up (the tiny models' 3 heads)."""
    pairs = heads % 2 == 0 and rope_heads % 2 == 0
    return GatherRopeConfig(heads_per_program=2 if pairs else 1)


@triton.jit
def _head_rows(src_rows, extra_rows, in_src, live, columns, HAS_EXTRA: tl.constexpr):
    """One head's columns of each output row's source row (src's, or extra's past src's rows)."""
    x = tl.load(src_rows + columns[None, :], mask=(live & in_src)[:, None], other=0.0)
    if HAS_EXTRA:
        padding = tl.load(extra_rows + columns[None, :], mask=(live & ~in_src)[:, None], other=0.0)
        x = tl.where(in_src[:, None], x, padding)
    return x


@triton.jit
def gather_rope_kernel(
    src,
    extra,
    index,
    cos,
    sin,
    out,
    rows,
    src_rows,
    src_stride,
    col,
    extra_stride,
    WIDTH: tl.constexpr,
    ROPE_WIDTH: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HAS_EXTRA: tl.constexpr,
    BLOCK: tl.constexpr,
    HEADS: tl.constexpr,
):
    first = tl.program_id(1) * HEADS
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < rows
    source = tl.load(index + r, mask=live, other=0).to(tl.int64)
    in_src = source < src_rows
    src_row = src + source[:, None] * src_stride + col  # each output row's source row, column 0
    extra_row = extra + tl.where(in_src, 0, source - src_rows)[:, None] * extra_stride
    d = tl.arange(0, HEAD_DIM)
    r64 = r.to(tl.int64)
    if first * HEAD_DIM < ROPE_WIDTH:  # the launcher never mixes rotated and copied heads in a program
        table = r64[:, None] * HEAD_DIM + d[None, :]
        c = tl.load(cos + table, mask=live[:, None], other=0.0)
        s = tl.load(sin + table, mask=live[:, None], other=0.0)
        for j in tl.static_range(HEADS):
            columns = (first + j) * HEAD_DIM + d
            x = _head_rows(src_row, extra_row, in_src, live, columns, HAS_EXTRA)
            xf = x.to(tl.float32)
            even, odd = tl.split(tl.reshape(xf, [BLOCK, HEAD_DIM // 2, 2]))
            rotated = tl.reshape(tl.join(odd, -even), [BLOCK, HEAD_DIM])  # (a, b) -> (b, -a)
            y = (xf * c + rotated * s).to(out.dtype.element_ty)
            tl.store(out + r64[:, None] * WIDTH + columns[None, :], y, mask=live[:, None])
    else:
        for j in tl.static_range(HEADS):
            columns = (first + j) * HEAD_DIM + d
            x = _head_rows(src_row, extra_row, in_src, live, columns, HAS_EXTRA)
            tl.store(out + r64[:, None] * WIDTH + columns[None, :], x, mask=live[:, None])


def gather_rope_triton(
    src: Tensor,
    extra: Tensor | None,
    index: Tensor,
    cos: Tensor,
    sin: Tensor,
    col: int,
    width: int,
    rope_width: int,
    config: GatherRopeConfig | None = None,
    wrap_triton: Callable = lambda kernel: kernel,
) -> Tensor:
    """``gather_rope``'s result [rows, width] from the kernel; inputs already validated by the caller.

    Only tensors, ints and a ``wrap_triton`` launch: usable inside ``torch.library.triton_op``.
    ``config`` None takes ``default_config``.
    """
    rows, head_dim = index.shape[0], cos.shape[1]
    heads, rope_heads = width // head_dim, rope_width // head_dim
    config = config or default_config(heads, rope_heads)
    config.check(heads, rope_heads)
    out = torch.empty((rows, width), dtype=src.dtype, device=src.device)
    if rows == 0:
        return out
    has_extra = extra is not None
    grid = (triton.cdiv(rows, config.block_rows), width // head_dim // config.heads_per_program)
    wrap_triton(gather_rope_kernel)[grid](
        src, extra if has_extra else src, index, cos, sin, out,
        rows, src.shape[0], src.stride(0), col, extra.stride(0) if has_extra else 0,
        WIDTH=width, ROPE_WIDTH=rope_width, HEAD_DIM=head_dim, HAS_EXTRA=has_extra, BLOCK=config.block_rows,
        HEADS=config.heads_per_program, num_warps=config.num_warps,
    )  # fmt: skip
    return out
