"""Pure-torch block-diagonal attention: the reference every fast backend is tested against.

Windows are gathered into a padded batch [num_windows, max_len, H, D], attended with a key mask
by ``scaled_dot_product_attention`` and scattered back. Memory is O(num_windows * max_len**2)
per head, not O(T**2): it runs full-size layers on the GPU too, and it is differentiable, so it
also serves as the backward of the custom op. It always computes in float32 (float64 stays
float64) and returns the query dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _padded(x: Tensor, cu_seqlens: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Gather packed [T, H, D] into [N, max_len, H, D] and the [N, max_len] validity mask."""
    cu = cu_seqlens.to(device=x.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    pos = torch.arange(max_len, device=x.device)
    valid = pos < lengths[:, None]
    index = (cu[:-1, None] + pos).clamp(max=max(x.shape[0] - 1, 0))
    return x[index], valid


def _packed_rows(cu_seqlens: Tensor, total: int, max_len: int) -> Tensor:
    """Row of each packed token in the padded [N * max_len] layout.

    An index gather instead of boolean-mask indexing keeps every shape static, so the reference
    also traces for Inductor / AOTInductor (``hrsam.ops.varlen_attention.inductor``).
    """
    cu = cu_seqlens.to(dtype=torch.long)
    token = torch.arange(total, device=cu.device)
    segment = torch.searchsorted(cu[1:], token, right=True)
    return segment * max_len + token - cu[segment]


def varlen_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
) -> Tensor:
    """Segment i of q attends only to segment i of k/v; returns [Tq, H, Dv] in q's dtype."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qp, _ = _padded(q.to(compute), cu_seqlens_q, max_seqlen_q)
    kp, valid_k = _padded(k.to(compute), cu_seqlens_k, max_seqlen_k)
    vp, _ = _padded(v.to(compute), cu_seqlens_k, max_seqlen_k)
    out = F.scaled_dot_product_attention(
        qp.transpose(1, 2),
        kp.transpose(1, 2),
        vp.transpose(1, 2),
        attn_mask=valid_k[:, None, None, :],
        scale=scale,
    )
    rows = _packed_rows(cu_seqlens_q.to(q.device), q.shape[0], max_seqlen_q)
    return out.transpose(1, 2).flatten(0, 1)[rows].to(q.dtype)


def dense_block_diagonal_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, scale: float
) -> Tensor:
    """Global attention with an O(Tq * Tk) block-diagonal mask: the definition, for tests only."""
    seg_q = torch.repeat_interleave(cu_seqlens_q.long().diff())
    seg_k = torch.repeat_interleave(cu_seqlens_k.long().diff())
    mask = seg_q[:, None] == seg_k[None, :]
    scores = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v.double())
