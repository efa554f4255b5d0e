"""``add_layer_norm``: a residual add (optionally gathering the added rows) and the LayerNorm after it.

Every transformer block of the encoder adds its attention's output to the residual stream and
normalises the sum for its MLP; the attention's output comes in window order and is put back in
raster order by a row gather (``FlashSwinAttention.window_rows``); each block's output is read
first by the next LayerNorm too. Written as torch ops (``reference.add_layer_norm_reference``, the
eager and exported form) Inductor fuses them, but inside the whole HRSAM 2048 encoder on the H200
most of its fusions looped over each 768-wide row in pieces, 0.042-0.048 ms a launch where a
persistent sibling took 0.020. Alone, Inductor's fusion of one add + norm is as fast as this
kernel (0.032 ms); in the encoder, one kernel per add + norm took the compiled graph from 9.43 to
9.12 ms (docs/BENCHMARKS.md, eighteenth session). The Triton kernel (``triton_kernel``) holds
whole rows in registers.

The compiled engines use it (``hrsam.ops.lowering.engine_kernels``, CUDA, 16-bit) through
``hrsam::add_layer_norm_triton``, a ``torch.library.triton_op``: ``torch.compile`` calls the
kernel from its generated code and an AOTInductor package compiles it in. It is registered at
import (Dynamo cannot trace a registration). Eager calls, ONNX export, float32 and CPU engines keep
the torch ops.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from hrsam.ops.add_norm.reference import add_layer_norm_reference
from hrsam.ops.lowering import engine_kernels_active, half_kernel_unsupported, register_engine_op

__all__ = ["add_layer_norm", "add_layer_norm_reference", "kernel_unsupported", "triton_add_layer_norm_op"]

@functools.cache
def triton_add_layer_norm_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::add_layer_norm_triton`` (once; Triton is optional on CPU installs)."""
    from torch.library import triton_op, wrap_triton

    from hrsam.ops.add_norm.triton_kernel import add_layer_norm_triton

    @triton_op("hrsam::add_layer_norm_triton", mutates_args=())
    def op(
        x: Tensor, delta: Tensor, index: Tensor | None, weight: Tensor, bias: Tensor, eps: float
    ) -> tuple[Tensor, Tensor]:
        # Dense rows: a package bakes the traced row strides into the launch, and Inductor keeps a
        # contiguous input's strides (it guarantees only the stride order otherwise).
        x, delta = x.contiguous(), delta.contiguous()
        return add_layer_norm_triton(x, delta, index, weight, bias, eps, wrap_triton=wrap_triton)

    return op


_OP = register_engine_op(triton_add_layer_norm_op)


def kernel_unsupported(x: Tensor) -> str | None:
    """Why the kernel cannot take ``x`` (None when it can): attribute reads only, safe in traces."""
    return half_kernel_unsupported(x, _OP)


def _check(x: Tensor, delta: Tensor, index: Tensor | None, norm: nn.LayerNorm) -> None:
    """Shape / dtype / device checks that name the problem before the kernel sees the inputs."""
    rows = x.shape[0]
    if x.dim() != 2 or delta.dim() != 2 or delta.shape[1] != x.shape[1]:
        shapes = f"{tuple(x.shape)} / {tuple(delta.shape)}"
        raise ValueError(f"add_layer_norm: x and delta must be [rows, width], got {shapes}")
    if index is None and delta.shape[0] != rows:
        raise ValueError(f"add_layer_norm: without an index delta needs x's {rows} rows, got {delta.shape[0]}")
    bad_index = index is not None and (index.dim() != 1 or index.shape[0] != rows)
    if index is not None and (bad_index or index.dtype not in (torch.int32, torch.int64)):
        got = f"{index.dtype} {tuple(index.shape)}"
        raise ValueError(f"add_layer_norm: index must be 1-D int32/int64 with x's {rows} rows, got {got}")
    if norm.normalized_shape != (x.shape[1],) or norm.weight is None or norm.bias is None:
        raise ValueError(f"add_layer_norm: the norm must be an affine LayerNorm over {x.shape[1]}, got {norm}")
    if any(t.device != x.device for t in (delta, norm.weight) + (() if index is None else (index,))):
        raise ValueError("add_layer_norm: all tensors must be on x's device")


def add_layer_norm(x: Tensor, delta: Tensor, index: Tensor | None, norm: nn.LayerNorm) -> tuple[Tensor, Tensor]:
    """(x + delta[index], norm(x + delta[index])); delta's rows as they are when ``index`` is None.

    Inside ``engine_kernels()`` on CUDA in 16-bit (``kernel_unsupported``) one Triton kernel computes
    both, the norm in float32 and returned in x's dtype (the next GEMM's: the engines run
    16-bit activations). Elsewhere the torch ops, exactly the model's eager form: the sum, then
    ``norm`` (float32 under autocast). Indices are not range-checked on the device (that would need
    a sync): they come from a ``WindowPlan``.
    """
    _check(x, delta, index, norm)
    if engine_kernels_active() and kernel_unsupported(x) is None and delta.dtype == x.dtype:
        return _OP(x, delta, index, norm.weight, norm.bias, norm.eps)
    total = x + (delta if index is None else delta.index_select(0, index))
    return total, norm(total)
