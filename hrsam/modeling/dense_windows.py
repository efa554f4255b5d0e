"""Window attention as padded dense batches: the standard-op form of Flash Swin (portable export).

Runtimes without the ``hrsam`` custom nodes (ONNX Runtime's CUDA provider, any plain ONNX
runtime) get the same attention from ordinary Gather / MatMul / Softmax nodes: every window's
queries and keys are gathered into a [windows, max_len] batch by constant indices, attended
densely (an additive bias hides missing keys), and the real query rows are gathered back in
raster order.

With KV-only padding (the model's default) every window has exactly window**2 keys, so no key is
ever missing and there is no bias at all; only query rows of border windows are padding, and
their results are never gathered back. The price is the padded work: at 1024 input, plain
windows cover exactly the 64 x 64 grid, but shifted windows compute 25 full windows (6400 query
rows) for 4096 tokens, 1.56x the attention FLOPs of the varlen call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class DenseWindows:
    """Constant indices and tables that turn a window plan into dense padded batches.

    Attributes:
        num_windows, len_q, len_k: batch shape of the padded queries [num_windows, len_q] and
            keys [num_windows, len_k].
        q_gather: int64 [num_windows * len_q]; token (raster) index of each padded query row
            (padding rows repeat a real token; their results are dropped).
        q_cos, q_sin: RoPE tables of the padded query rows.
        kv_gather: int64 [num_windows * len_k]; row of the key/value source (tokens, then the
            padding slot) of each padded key row.
        k_cos, k_sin: RoPE tables of the padded key rows.
        out_gather: int64 [num_tokens]; padded query row of every token, in raster order.
        key_bias: float32 [num_windows, 1, 1, len_k] with -inf at missing keys, or None when
            every window has all its keys.
    """

    num_windows: int
    len_q: int
    len_k: int
    q_gather: Tensor
    q_cos: Tensor
    q_sin: Tensor
    kv_gather: Tensor
    k_cos: Tensor
    k_sin: Tensor
    out_gather: Tensor
    key_bias: Tensor | None


def _padded_rows(cu_seqlens: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """For each padded slot [windows, max_len]: its packed row (clamped) and whether it is real."""
    cu = cu_seqlens.long().cpu()
    lengths = cu[1:] - cu[:-1]
    slot = torch.arange(max_len)
    valid = slot < lengths[:, None]
    rows = torch.where(valid, cu[:-1, None] + slot, torch.zeros_like(valid, dtype=torch.long))
    return rows, valid


def build_dense_windows(
    q_index: Tensor,
    q_inverse: Tensor,
    kv_index: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    rope: tuple[Tensor, Tensor, Tensor, Tensor],
) -> DenseWindows:
    """Dense form of a window plan's packed layout (built once per input size, on the CPU).

    ``rope`` holds the packed tables (q_cos, q_sin, k_cos, k_sin) of the varlen layout.
    """
    q_rows, q_valid = _padded_rows(cu_seqlens_q, max_seqlen_q)
    k_rows, k_valid = _padded_rows(cu_seqlens_k, max_seqlen_k)
    num_windows = q_rows.shape[0]
    q_cos, q_sin, k_cos, k_sin = (t.cpu() for t in rope)
    flat_q, flat_k = q_rows.flatten(), k_rows.flatten()
    padded_row = torch.arange(q_rows.numel()).view_as(q_rows)[q_valid]  # per packed (window-order) query
    key_bias = None
    if not bool(k_valid.all()):
        bias = torch.zeros(k_valid.shape, dtype=torch.float32).masked_fill(~k_valid, float("-inf"))
        key_bias = bias.view(num_windows, 1, 1, max_seqlen_k)
    return DenseWindows(
        num_windows=num_windows,
        len_q=max_seqlen_q,
        len_k=max_seqlen_k,
        q_gather=q_index.cpu()[flat_q],
        q_cos=q_cos[flat_q],
        q_sin=q_sin[flat_q],
        kv_gather=kv_index.cpu()[flat_k],
        k_cos=k_cos[flat_k],
        k_sin=k_sin[flat_k],
        out_gather=padded_row[q_inverse.cpu()],
        key_bias=key_bias,
    )


def dense_windows_to(dense: DenseWindows, device: torch.device | str) -> DenseWindows:
    """The same constants on ``device``."""
    moved = {
        name: (value.to(device) if isinstance(value, Tensor) else value)
        for name, value in vars(dense).items()
    }
    return DenseWindows(**moved)


def dense_window_attention(q: Tensor, k: Tensor, v: Tensor, dense: DenseWindows, scale: float) -> Tensor:
    """Attention of padded windows: q [W * Lq, H, D], k / v [W * Lk, H, D] -> [W * Lq, H, D].

    Scores, softmax and the weighted sum run in float32 (like the varlen kernels' accumulation)
    and the result is returned in q's dtype.
    """
    heads, dim = q.shape[1], q.shape[2]

    def windows(t: Tensor, length: int) -> Tensor:
        return t.float().view(dense.num_windows, length, heads, dim).transpose(1, 2)

    qw, kw, vw = windows(q, dense.len_q), windows(k, dense.len_k), windows(v, dense.len_k)
    scores = torch.matmul(qw, kw.transpose(-1, -2)) * scale
    if dense.key_bias is not None:
        scores = scores + dense.key_bias
    out = torch.matmul(scores.softmax(dim=-1), vw)
    return out.transpose(1, 2).reshape(-1, heads, dim).to(q.dtype)
