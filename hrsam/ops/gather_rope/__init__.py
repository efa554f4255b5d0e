"""``gather_rope``: the Flash Swin layer's attention inputs in one pass (gather + 2D RoPE).

Each attention layer reorders its qkv rows into window order (queries by ``q_index``, keys and
values by ``kv_index``, whose padding slots point past the tokens at the layer's padding row) and
rotates queries and keys with per-slot RoPE tables. Written as torch ops (the model's eager and
exported form, ``reference.gather_rope_reference``) Inductor turns this into kernels that load
every element through its row index and load its pair partner again: on the H200 at HRSAM 2048
they took ~0.1 ms per layer, 1.2 ms of the compiled encoder (docs/BENCHMARKS.md, thirteenth
session). The Triton kernel (``triton_kernel``) reads each source row once per head
as one contiguous run and rotates in registers.

The compiled engines use it (``hrsam.ops.lowering.engine_kernels``, CUDA only) through
``hrsam::gather_rope_triton``, a ``torch.library.triton_op``: ``torch.compile`` calls the kernel
from its generated code and an AOTInductor package compiles it in. It is registered at import
(Dynamo cannot trace a registration). Eager calls, ONNX export and CPU engines keep the torch ops.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hrsam.ops.gather_rope.reference import gather_rope_reference
from hrsam.ops.lowering import register_engine_op

__all__ = ["gather_rope", "gather_rope_reference", "kernel_unsupported", "triton_gather_rope_op"]


@functools.cache
def triton_gather_rope_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::gather_rope_triton`` (once; Triton is optional on CPU installs)."""
    from torch.library import triton_op, wrap_triton

    from hrsam.ops.gather_rope.triton_kernel import gather_rope_triton

    @triton_op("hrsam::gather_rope_triton", mutates_args=())
    def op(
        src: Tensor,
        extra: Tensor | None,
        index: Tensor,
        cos: Tensor,
        sin: Tensor,
        col: int,
        width: int,
        rope_width: int,
    ) -> Tensor:
        return gather_rope_triton(src, extra, index, cos, sin, col, width, rope_width, wrap_triton=wrap_triton)

    return op


_OP = register_engine_op(triton_gather_rope_op)


def kernel_unsupported(src: Tensor) -> str | None:
    """Why the kernel cannot take ``src`` (None when it can): attribute reads only, safe in traces."""
    if not src.is_cuda:
        return f"the kernel runs on CUDA tensors, got {src.device.type}"
    if _OP is None:
        return "needs Triton, and CUDA when hrsam was imported"
    return None


def _check(
    src: Tensor, extra: Tensor | None, index: Tensor, cos: Tensor, sin: Tensor, col: int, width: int, rope_width: int
) -> None:
    """Shape / dtype / device checks that name the problem before the kernel sees the inputs."""
    if src.dim() != 2 or src.stride(1) != 1:
        raise ValueError(f"gather_rope: src must be 2-D with contiguous rows, got shape {tuple(src.shape)}")
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"gather_rope: index must be a 1-D int32/int64 tensor, got {index.dtype} {tuple(index.shape)}")
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[0] != index.shape[0]:
        shapes = f"{tuple(cos.shape)} / {tuple(sin.shape)}"
        raise ValueError(f"gather_rope: cos / sin must be [rows={index.shape[0]}, head_dim], got {shapes}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise ValueError(f"gather_rope: cos / sin must be float32, got {cos.dtype} / {sin.dtype}")
    head_dim = cos.shape[1]
    if head_dim % 2 or width % head_dim or rope_width % head_dim or not 0 <= rope_width <= width:
        raise ValueError(
            f"gather_rope: width {width} and rope_width {rope_width} must be multiples of the even head dim "
            f"{head_dim}, rope_width <= width"
        )
    if col < 0 or col + width > src.shape[1]:
        raise ValueError(f"gather_rope: columns {col}:{col + width} are outside src's {src.shape[1]}")
    if extra is not None and (extra.dim() != 2 or extra.shape[1] != width or extra.stride(1) != 1):
        shape = tuple(extra.shape)
        raise ValueError(f"gather_rope: extra must be [rows, width={width}] with contiguous rows, got {shape}")
    tensors = (index, cos, sin) if extra is None else (extra, index, cos, sin)
    if any(t.device != src.device for t in tensors):
        raise ValueError("gather_rope: all tensors must be on src's device")
    if extra is not None and extra.dtype != src.dtype:
        raise ValueError(f"gather_rope: extra's dtype {extra.dtype} differs from src's {src.dtype}")


def gather_rope(
    src: Tensor,
    extra: Tensor | None,
    index: Tensor,
    cos: Tensor,
    sin: Tensor,
    col: int,
    width: int,
    rope_width: int,
) -> Tensor:
    """out [rows, width]: row ``index[i]`` of ``src[:, col:col + width]`` (``extra``'s rows numbered after it).

    The first ``rope_width`` columns are rotated head by head (head dim ``cos.shape[1]``) with row
    i's tables ``cos[i]`` / ``sin[i]`` in float32, the rest copied; the result has src's dtype.
    Indices are not range-checked on the device (that would need a sync): they come from a
    ``WindowPlan``. Runs the Triton kernel on CUDA (``kernel_unsupported`` says when it cannot),
    the torch reference elsewhere.
    """
    _check(src, extra, index, cos, sin, col, width, rope_width)
    if kernel_unsupported(src) is None:
        return _OP(src, extra, index, cos, sin, col, width, rope_width)
    return gather_rope_reference(src, extra, index, cos, sin, col, width, rope_width)
