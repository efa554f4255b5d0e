"""``fusion_layer_norm``: HRSAM++'s stage output, the anchor tokens upsampled and both scales normalised.

At the end of each stage HRSAM++ upsamples the anchor grid's tokens bilinearly to the main grid,
applies one LayerNorm to the main and to the upsampled anchor tokens and concatenates the channels
for the neck (``HRSAMEncoder._stage_output``). Written as torch ops (``reference``, the eager and
exported form) Inductor made four kernels of it per stage in the compiled HRSAM++ 2048 encoder on the
H200 (two norm-statistics passes, a row blend and a pointwise pass recomputing the blend and writing
both halves): about 0.091 ms a stage. The Triton kernel (``triton_kernel``) does it in one pass,
reading each main row once and writing each output row once: 0.053 ms a stage there (its ~75 MB
would take ~0.025 ms at the card's bandwidth; its launch shape is not tuned yet), and the graph
0.37 ms faster with the twenty-first session's other two changes (docs/BENCHMARKS.md).

The compiled engines use it (``hrsam.ops.lowering.engine_kernels``, CUDA, 16-bit) through
``hrsam::fusion_layer_norm_triton``, a ``torch.library.triton_op`` registered at import, as
``hrsam.ops.add_norm``. Eager calls, ONNX export, float32 and CPU engines keep the torch ops.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from hrsam.ops.fusion_norm.reference import AxisTaps, fusion_layer_norm_reference, scale_grids, upsample_rows
from hrsam.ops.lowering import engine_kernels_active, half_kernel_unsupported, register_engine_op

__all__ = [
    "AxisTaps",
    "fusion_layer_norm",
    "fusion_layer_norm_reference",
    "kernel_unsupported",
    "triton_fusion_layer_norm_op",
    "upsample_rows",
]

@functools.cache
def triton_fusion_layer_norm_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::fusion_layer_norm_triton`` (once; Triton is optional on CPU installs)."""
    from torch.library import triton_op, wrap_triton

    from hrsam.ops.fusion_norm.triton_kernel import fusion_layer_norm_triton

    @triton_op("hrsam::fusion_layer_norm_triton", mutates_args=())
    def op(
        x: Tensor, h0: Tensor, h1: Tensor, wh: Tensor, w0: Tensor, w1: Tensor, ww: Tensor,
        weight: Tensor, bias: Tensor, eps: float, anchor_width: int,
    ) -> Tensor:  # fmt: skip
        # Dense inputs: a package bakes the traced strides into the launch (see hrsam.ops.add_norm).
        taps = [t.contiguous() for t in (h0, h1, wh, w0, w1, ww)]
        return fusion_layer_norm_triton(x.contiguous(), *taps, weight, bias, eps, anchor_width, wrap_triton=wrap_triton)

    return op


_OP = register_engine_op(triton_fusion_layer_norm_op)


def kernel_unsupported(x: Tensor) -> str | None:
    """Why the kernel cannot take ``x`` (None when it can): attribute reads only, safe in traces."""
    return half_kernel_unsupported(x, _OP)


def _check(x: Tensor, main: tuple[int, int], rows: AxisTaps, cols: AxisTaps, anchor: tuple[int, int],
           norm: nn.LayerNorm) -> None:  # fmt: skip
    """Shape / device checks that name the problem before the kernel sees the inputs."""
    (h, w), (ha, wa) = main, anchor
    if x.dim() != 3 or x.shape[1] != h * w + ha * wa:
        raise ValueError(
            f"fusion_layer_norm: x must be [batch, {h} * {w} + {ha} * {wa}, channels], got {tuple(x.shape)}"
        )
    for axis, taps, size in (("rows", rows, h), ("cols", cols, w)):
        if len(taps) != 3 or any(t.dim() != 1 or t.shape[0] != size for t in taps):
            raise ValueError(f"fusion_layer_norm: {axis} taps must be three 1-D tensors of {size}")
        if taps[0].dtype not in (torch.int32, torch.int64) or taps[1].dtype != taps[0].dtype:
            raise ValueError(f"fusion_layer_norm: {axis} tap indices must be int32/int64, got {taps[0].dtype}")
        if not taps[2].is_floating_point():
            raise ValueError(f"fusion_layer_norm: {axis} tap weights must be floating point, got {taps[2].dtype}")
    if norm.normalized_shape != (x.shape[2],) or norm.weight is None or norm.bias is None:
        raise ValueError(f"fusion_layer_norm: the norm must be an affine LayerNorm over {x.shape[2]}, got {norm}")
    if any(t.device != x.device for t in (*rows, *cols, norm.weight)):
        raise ValueError("fusion_layer_norm: all tensors must be on x's device")


def fusion_layer_norm(
    x: Tensor, main: tuple[int, int], rows: AxisTaps, cols: AxisTaps, anchor: tuple[int, int], norm: nn.LayerNorm
) -> Tensor:
    """[B, h, w, 2C]: ``norm`` of each image's main tokens next to ``norm`` of its anchor tokens
    bilinearly upsampled (``rows`` / ``cols`` taps) to the main grid.

    x [B, h * w + ha * wa, C]: each image's main then anchor tokens in raster order. Inside
    ``engine_kernels()`` on CUDA in 16-bit (``kernel_unsupported``) one Triton kernel, the norms in
    float32 returned in x's dtype (the neck's GEMM's). Elsewhere the torch ops, the model's eager
    form (float32 under autocast). Tap indices are not range-checked on the device (that would
    need a sync): they come from ``BilinearTaps``.
    """
    _check(x, main, rows, cols, anchor, norm)
    (h, w), batch, channels = main, x.shape[0], x.shape[2]
    if engine_kernels_active() and kernel_unsupported(x) is None:
        out = _OP(x, *rows, *cols, norm.weight, norm.bias, norm.eps, anchor[1])
        return out.view(batch, h, w, 2 * channels)
    main_grid, anchor_grid = scale_grids(x, main, rows, cols, anchor)
    return torch.cat([norm(main_grid), norm(anchor_grid)], dim=-1)
