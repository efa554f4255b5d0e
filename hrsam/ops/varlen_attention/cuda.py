"""CUDA backends of ``hrsam::varlen_attention``: PyTorch's own varlen kernels and xformers.

* torch: ``aten::_flash_attention_forward`` (fp16/bf16, FlashAttention-2 with cu_seqlens) and
  ``aten::_efficient_attention_forward`` (fp32 too, the memory-efficient kernel with cu_seqlens).
  Both take separate query and key lengths, which KV-only padding needs.
* xformers: ``memory_efficient_attention`` with ``BlockDiagonalMask.from_seqlens(q, kv)``, used
  only when its CUDA kernels actually load (a version built for another torch imports but
  cannot run; we probe once with a tiny call).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_FLASH_DTYPES = (torch.float16, torch.bfloat16)
_EFFICIENT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def torch_supports(q: Tensor, *_: object) -> str | None:
    """None if PyTorch's varlen kernels can run these inputs, else why not."""
    if q.device.type != "cuda":
        return "needs a CUDA tensor"
    if q.dtype not in _EFFICIENT_DTYPES:
        return f"dtype {q.dtype} is not supported (fp16, bf16, fp32)"
    if q.shape[-1] % 8 != 0 or q.shape[-1] > 256:
        return f"head dim {q.shape[-1]} must be a multiple of 8 and at most 256"
    return None


def torch_varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> Tensor:
    """Flash kernel for half precision, memory-efficient kernel for fp32.

    Both kernels take a row stride per tensor and need only a contiguous last dimension, so the
    row-strided key/value views Flash Swin passes (halves of the gathered kv rows) go in as they are
    instead of being copied first (a copy measured at 0.43 ms per HRSAM encoder at 2048 on the H200).
    """
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    if q.dtype in _FLASH_DTYPES:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, 0.0, False, False, scale=scale
        )[0]
        return out
    out = torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
        0.0, 0, False, scale=scale,
    )[0]
    return out[0]


def _unit_last_stride(x: Tensor) -> Tensor:
    """x itself when its last dimension is contiguous and its heads are laid out densely per row."""
    if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1]:
        return x
    return x.contiguous()


@functools.lru_cache(maxsize=1)
def xformers_unavailable_reason() -> str | None:
    """Import xformers and run one tiny call on the GPU; None if that works, else the reason."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from xformers.ops import fmha

        x = torch.randn(1, 4, 1, 64, device="cuda", dtype=torch.float16)
        bias = fmha.BlockDiagonalMask.from_seqlens([2, 2], kv_seqlen=[2, 2])
        fmha.memory_efficient_attention(x, x, x, attn_bias=bias)
        torch.cuda.synchronize()
    except Exception as exc:  # any failure (import, missing kernel) means: do not use it
        return f"xformers unusable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def xformers_supports(q: Tensor, *_: object) -> str | None:
    """None if xformers' kernels load and take these inputs, else why not."""
    if q.device.type != "cuda":
        return "needs a CUDA tensor"
    if q.dtype not in _EFFICIENT_DTYPES:
        return f"dtype {q.dtype} is not supported"
    return xformers_unavailable_reason()


def xformers_varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> Tensor:
    """xformers' block-diagonal mask with separate query and key/value lengths."""
    from xformers.ops import fmha

    bias = fmha.BlockDiagonalMask.from_seqlens(
        cu_seqlens_q.diff().tolist(), kv_seqlen=cu_seqlens_k.diff().tolist()
    )
    return fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)[0]
