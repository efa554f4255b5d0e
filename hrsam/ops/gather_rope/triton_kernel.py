"""Triton kernel of ``hrsam::gather_rope``: gather rows into window order and rotate them, one pass.

One program covers ``BLOCK_ROWS`` output rows of one head (``head_dim`` columns). It loads each
row's source index once, reads the head's columns of that source row as one contiguous run (the
row offsets are multiples of 16 elements in the model, so the loads vectorize), rotates channel
pairs in registers (``tl.split`` / ``tl.join``, no second load of the partner channel) and writes
the output row. Heads at or past ``rope_width`` are copied. Inductor's code for the same gather +
RoPE (an indirect load per element and a partner load per element) ran at 1.3-2 TB/s on the H200
(docs/BENCHMARKS.md, thirteenth session).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_ROWS = 32
NUM_WARPS = 4


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
):
    head = tl.program_id(1)
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < rows
    source = tl.load(index + r, mask=live, other=0).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    columns = head * HEAD_DIM + d
    in_src = source < src_rows
    x = tl.load(src + source[:, None] * src_stride + col + columns[None, :], mask=(live & in_src)[:, None], other=0.0)
    if HAS_EXTRA:
        extra_row = tl.where(in_src, 0, source - src_rows)
        padding = tl.load(
            extra + extra_row[:, None] * extra_stride + columns[None, :], mask=(live & ~in_src)[:, None], other=0.0
        )
        x = tl.where(in_src[:, None], x, padding)
    r64 = r.to(tl.int64)
    target = out + r64[:, None] * WIDTH + columns[None, :]
    if head * HEAD_DIM < ROPE_WIDTH:
        table = r64[:, None] * HEAD_DIM + d[None, :]
        c = tl.load(cos + table, mask=live[:, None], other=0.0)
        s = tl.load(sin + table, mask=live[:, None], other=0.0)
        xf = x.to(tl.float32)
        even, odd = tl.split(tl.reshape(xf, [BLOCK, HEAD_DIM // 2, 2]))
        rotated = tl.reshape(tl.join(odd, -even), [BLOCK, HEAD_DIM])  # (a, b) -> (b, -a)
        tl.store(target, (xf * c + rotated * s).to(out.dtype.element_ty), mask=live[:, None])
    else:
        tl.store(target, x, mask=live[:, None])


def gather_rope_triton(
    src: Tensor,
    extra: Tensor | None,
    index: Tensor,
    cos: Tensor,
    sin: Tensor,
    col: int,
    width: int,
    rope_width: int,
    wrap_triton: Callable = lambda kernel: kernel,
) -> Tensor:
    """``gather_rope``'s result [rows, width] from the kernel; inputs already validated by the caller.

    Only tensors, ints and a ``wrap_triton`` launch: usable inside ``torch.library.triton_op``.
    """
    rows, head_dim = index.shape[0], cos.shape[1]
    out = torch.empty((rows, width), dtype=src.dtype, device=src.device)
    if rows == 0:
        return out
    has_extra = extra is not None
    grid = (triton.cdiv(rows, BLOCK_ROWS), width // head_dim)
    wrap_triton(gather_rope_kernel)[grid](
        src, extra if has_extra else src, index, cos, sin, out,
        rows, src.shape[0], src.stride(0), col, extra.stride(0) if has_extra else 0,
        WIDTH=width, ROPE_WIDTH=rope_width, HEAD_DIM=head_dim, HAS_EXTRA=has_extra, BLOCK=BLOCK_ROWS,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out
