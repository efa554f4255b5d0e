"""Block-diagonal attention in a form Inductor compiles, for AOTInductor packages (``hrsam.ops.lowering``).

* CUDA (fp16 / bf16 / fp32, head dim a multiple of 8 up to 256): the eager ``torch`` backend's
  calls themselves, ``aten::_flash_attention_forward`` / ``aten::_efficient_attention_forward``
  with cu_seqlens. Inductor keeps them as extern kernels (the same kernels as eager) and
  AOTInductor calls them through its C shims, so a package needs no Python to run them.
* otherwise: the pure-torch reference (padded windows + masked SDPA, static shapes), which
  Inductor compiles like any other torch code.
"""

from __future__ import annotations

from torch import Tensor

from hrsam.ops.varlen_attention.cuda import torch_supports, torch_varlen_attention
from hrsam.ops.varlen_attention.reference import varlen_attention_reference


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
    implementation = torch_varlen_attention if torch_supports(q) is None else varlen_attention_reference
    return implementation(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
