"""``hrsam::varlen_attention``: block-diagonal attention over packed variable-length segments.

q [Tq, H, D], k / v [Tk, H, D]; segment i of q (rows ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``)
attends only to segment i of k / v. Query and key segments may differ in length (KV-only
padding). Registered with ``torch.library`` (fake kernel included) so models trace and export
with the operation as one node; ONNX export maps it to the ``hrsam::VarlenAttention`` node of
the export contract.

Backends, tried in this order unless ``use_backend("varlen_attention", name)`` or the
environment variable ``HRSAM_VARLEN_ATTENTION_BACKEND`` forces one:

* ``torch``: PyTorch's flash (fp16/bf16) / memory-efficient (fp32) varlen kernels, CUDA only;
* ``triton``: our Triton kernel (``triton_kernel.py``; CUDA, fp32/fp16/bf16, head dim 16-128),
  the kernel the TensorRT plugin compiles ahead of time;
* ``xformers``: ``BlockDiagonalMask`` with separate q/kv lengths, CUDA, when its kernels load;
* ``reference``: pure torch (padded windows + masked SDPA), any device and dtype.

Gradients: the backward recomputes the reference under autograd, whatever backend ran the
forward (memory O(windows * window_len**2), fine for training at 2048 input).
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

from hrsam.ops.backend import Backend, choose, register
from hrsam.ops.lowering import engine_kernels_active, lowering_active, register_engine_op
from hrsam.ops.replay import replay_backward
from hrsam.ops.varlen_attention.cuda import (
    torch_supports,
    torch_varlen_attention,
    xformers_supports,
    xformers_varlen_attention,
)
from hrsam.ops.varlen_attention.inductor import varlen_attention_lowered
from hrsam.ops.varlen_attention.reference import varlen_attention_reference

OP = "varlen_attention"


def _reference_supports(q: Tensor, *_: object) -> str | None:
    return None if q.dtype.is_floating_point else f"dtype {q.dtype} is not floating point"


def _triton_supports(q: Tensor, k: Tensor | None = None, v: Tensor | None = None, *_: object) -> str | None:
    """Also answers for q alone (``available_backends`` may be asked with one tensor)."""
    if q.device.type != "cuda":
        return "needs a CUDA tensor"
    try:
        from hrsam.ops.varlen_attention import triton_kernel
    except ImportError as error:  # triton is optional on CPU installs
        return f"triton is not importable ({error})"
    return triton_kernel.unsupported_reason(q, q if v is None else v)


def _run_triton(*args: object) -> Tensor:
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    return varlen_attention_triton(*args)


BACKENDS = [
    Backend("torch", torch_supports, torch_varlen_attention),
    Backend("triton", _triton_supports, _run_triton),
    Backend("xformers", xformers_supports, xformers_varlen_attention),
    Backend("reference", _reference_supports, varlen_attention_reference),
]
register(OP, BACKENDS)


@torch.library.custom_op("hrsam::varlen_attention", mutates_args=())
def _varlen_attention_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> Tensor:
    backend = choose(OP, BACKENDS, q, k, v)
    return backend.run(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)


@_varlen_attention_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale):  # noqa: ANN001
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale = inputs
    ctx.save_for_backward(q, k, v, cu_seqlens_q, cu_seqlens_k)
    ctx.sizes = (max_seqlen_q, max_seqlen_k, scale)


def _backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    q, k, v, cu_seqlens_q, cu_seqlens_k = ctx.saved_tensors
    grads = replay_backward(
        lambda *qkv: varlen_attention_reference(*qkv, cu_seqlens_q, cu_seqlens_k, *ctx.sizes),
        grad,
        (q, k, v),
        ctx.needs_input_grad[:3],
    )
    return (*grads, None, None, None, None, None)


_varlen_attention_op.register_autograd(_backward, setup_context=_setup_context)


@functools.cache
def triton_attention_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::varlen_attention_triton``, our kernel as a ``triton_op`` (once; needs Triton)."""
    from torch.library import triton_op

    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    @triton_op("hrsam::varlen_attention_triton", mutates_args=())
    def op(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cu_seqlens_q: Tensor,
        cu_seqlens_k: Tensor,
        max_seqlen_q: int,
        max_seqlen_k: int,
        scale: float,
    ) -> Tensor:
        return varlen_attention_triton(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)

    return op


def _engine_kernel() -> ModuleType:
    """Our kernel's module, its engine op registered (at import: Dynamo cannot trace a registration,
    nor a cached registering function)."""
    from hrsam.ops.varlen_attention import triton_kernel

    triton_attention_op()
    return triton_kernel


_ENGINE_KERNEL = register_engine_op(_engine_kernel)


def engine_attention_unsupported(q: Tensor, v: Tensor) -> str | None:
    """Why a compiled engine's trace keeps PyTorch's kernels for these inputs (None: it runs ours).

    Inside ``engine_kernels()`` 16-bit CUDA calls run our Triton kernel, traced as
    ``hrsam::varlen_attention_triton``: replayed from a CUDA graph it took 0.055 ms against 0.072
    for PyTorch's flash kernel at HRSAM 2048's layouts on the H200 (docs/BENCHMARKS.md, "Varlen
    attention kernels"); called from Python it is the slower one, so eager calls keep flash.
    float32 keeps PyTorch's memory-efficient kernel (ours is no faster in float32).
    """
    if not q.is_cuda:
        return f"our kernel runs on CUDA tensors, got {q.device.type}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"{q.dtype} keeps PyTorch's kernel"
    if _ENGINE_KERNEL is None:
        return "needs Triton, and CUDA when hrsam was imported"
    return _ENGINE_KERNEL.unsupported_reason(q, v)


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor) -> None:
    """Shape / dtype / device checks that name the problem before any kernel sees the inputs."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:2] != v.shape[:2] or q.shape[1] != k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q [Tq, H, D], k [Tk, H, D], v [Tk, H, Dv] disagree: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share dtype and device; got {q.dtype}/{k.dtype}/{v.dtype}")
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if cu.dim() != 1 or cu.dtype != torch.int32 or cu.numel() < 2:
            raise ValueError(f"{name} must be a 1-D int32 tensor of num_segments + 1 offsets")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device} but q is on {q.device}")
    if cu_q.numel() != cu_k.numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k give different segment counts: {cu_q.numel() - 1} vs {cu_k.numel() - 1}"
        )


def _check_offsets(cu: Tensor, total: int, max_len: int, name: str) -> None:
    """Content checks, only where they cost no device sync (CPU tensors, eager mode)."""
    if cu.device.type != "cpu" or torch.compiler.is_compiling():
        return
    lengths = cu.diff()
    if cu[0] != 0 or cu[-1] != total or bool((lengths < 0).any()):
        raise ValueError(f"{name} must rise from 0 to {total} (the packed length); got {cu.tolist()[:8]}...")
    if int(lengths.max()) > max_len:
        raise ValueError(f"a segment of {name} is longer ({int(lengths.max())}) than max_seqlen {max_len}")


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float | None = None,
) -> Tensor:
    """Block-diagonal attention; ``scale`` defaults to ``D ** -0.5``. Returns [Tq, H, Dv]."""
    _check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    _check_offsets(cu_seqlens_q, q.shape[0], max_seqlen_q, "cu_seqlens_q")
    _check_offsets(cu_seqlens_k, k.shape[0], max_seqlen_k, "cu_seqlens_k")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if engine_kernels_active() and engine_attention_unsupported(q, v) is None:  # compiled engines (see there)
        return torch.ops.hrsam.varlen_attention_triton(
            q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale
        )
    if lowering_active():  # traced for an AOTInductor package: code it can compile (hrsam.ops.lowering)
        return varlen_attention_lowered(
            q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale
        )
    return torch.ops.hrsam.varlen_attention(
        q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k), scale
    )
