"""Block-diagonal attention in a form Inductor compiles (``hrsam.ops.lowering`` says when).

* CUDA, ``LOWERED_KERNEL == "triton"`` and the Triton kernel supports the inputs:
  ``hrsam::varlen_attention_triton``, a ``torch.library.triton_op`` around our Triton kernel (the
  one the TensorRT plugin compiles). Inductor traces into it, so the kernel becomes part of the
  compiled graph (and of an AOTInductor package, as a cubin).
* CUDA otherwise (fp16 / bf16 / fp32, head dim a multiple of 8 up to 256): the eager ``torch``
  backend's calls themselves, ``aten::_flash_attention_forward`` /
  ``aten::_efficient_attention_forward`` with cu_seqlens. Inductor keeps them as extern kernels
  (the same kernels as eager) and AOTInductor calls them through its C shims.
* otherwise: the pure-torch reference (padded windows + masked SDPA, static shapes), which
  Inductor compiles like any other torch code.

Either way a package needs no Python to run the attention.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hrsam.ops.varlen_attention.cuda import torch_supports, torch_varlen_attention
from hrsam.ops.varlen_attention.reference import varlen_attention_reference

# Which CUDA kernel compiled graphs call: "triton" (ours) or "torch" (PyTorch's flash /
# memory-efficient varlen kernels). benchmarks/compiled.py --lowered-attention compares them.
LOWERED_KERNEL = "torch"


@functools.cache
def triton_attention_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::varlen_attention_triton`` on first use (Triton is optional on CPU installs)."""
    from torch.library import triton_op

    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    @triton_op("hrsam::varlen_attention_triton", mutates_args=())
    def attention(
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

    return attention


def _triton_unsupported(q: Tensor, v: Tensor) -> str | None:
    if not q.is_cuda:
        return "not a CUDA tensor"
    try:
        from hrsam.ops.varlen_attention.triton_kernel import unsupported_reason
    except ImportError as error:
        return f"triton is not importable ({error})"
    return unsupported_reason(q, v)


def varlen_attention_lowered(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> Tensor:
    """``hrsam::varlen_attention`` for Inductor: same inputs (validated) and result."""
    if LOWERED_KERNEL == "triton" and _triton_unsupported(q, v) is None:
        implementation = triton_attention_op()
    elif torch_supports(q) is None:
        implementation = torch_varlen_attention
    else:
        implementation = varlen_attention_reference
    return implementation(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
