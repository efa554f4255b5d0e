"""Flash Swin attention (paper section 3.3) with KV-only padding (section 3.4).

Window attention with plain or shifted windows is computed as: qkv projection of the real
tokens, gather queries into window order and keys/values into (padded) window order, 2D RoPE at
each slot's canvas position, ONE ``hrsam::varlen_attention`` call, inverse gather, projection.
No cyclic roll and no O(N^2) mask. The compiled engines on CUDA do the gathers and the RoPE in one
Triton kernel (``hrsam.ops.gather_rope``, inside ``hrsam.ops.lowering.engine_kernels()``).

Padding modes (what border windows' missing slots hold):

* ``"token"`` (default, the authors' variant): one learnable token (1, C) per layer, appended
  after the block's LayerNorm and projected by ``qkv``, so padded slots hold ``K = W_k p + b_k``,
  ``V = W_v p + b_v`` with RoPE at the slot's position. Needed to load the authors' weights.
* ``"kv"``: the paper's literal form, one learnable key and value vector (1, 2C) after the
  projection (RoPE applied to the key at the slot's position as well).
* ``"none"``: border windows are simply shorter (variable-length windows). When both grid sides
  are multiples of the window k, this is exactly traditional Swin attention (plain windows for
  shift 0; cyclic shift by s plus Swin's attention mask otherwise): tests/test_flash_swin.py
  checks every output token against tests/swin_reference.py for s = 0 and s = k/2 (the model's
  shift), fp32, 1e-5. On other grids it is not official Swin: Swin zero-pads the token grid
  bottom/right to multiples of k before partitioning, and those zero tokens stay visible as keys
  (K = b_k, V = b_v from the qkv bias) to the real tokens of the windows that hold them; here
  those windows hold only real tokens, so the windows touching the bottom/right border differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from hrsam.modeling.dense_windows import (
    DenseWindows,
    build_dense_windows,
    dense_window_attention,
    dense_windows_to,
)
from hrsam.modeling.rope import apply_rope, rope_tables
from hrsam.modeling.window_plan import WindowPlan
from hrsam.ops.gather_rope import gather_rope, kernel_unsupported
from hrsam.ops.lowering import engine_kernels_active
from hrsam.ops.varlen_attention import varlen_attention

PaddingMode = Literal["token", "kv", "none"]


@dataclass(frozen=True, eq=False)
class AttentionLayout:
    """A window plan moved to a device, with its RoPE tables: what one attention layer consumes.

    Built once per input size; every tensor here becomes a constant of an exported graph.
    ``dense`` (portable export only) holds the same layout as padded dense batches.
    """

    plan: WindowPlan
    q_index: Tensor
    q_inverse: Tensor
    kv_index: Tensor
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor
    dense: DenseWindows | None = None

    @classmethod
    def build(
        cls,
        plan: WindowPlan,
        head_dim: int,
        device: torch.device | str,
        rope_theta: float = 10000.0,
        dense: bool = False,
    ) -> AttentionLayout:
        """Move ``plan`` to ``device`` with its RoPE tables; ``dense`` adds the padded-batch form."""
        q_cos, q_sin = rope_tables(plan.q_coords, head_dim, rope_theta)
        k_cos, k_sin = rope_tables(plan.kv_coords, head_dim, rope_theta)
        tensors = {
            "q_index": plan.q_index,
            "q_inverse": plan.q_inverse,
            "kv_index": plan.kv_index,
            "cu_seqlens_q": plan.cu_seqlens_q,
            "cu_seqlens_k": plan.cu_seqlens_k,
            "q_cos": q_cos,
            "q_sin": q_sin,
            "k_cos": k_cos,
            "k_sin": k_sin,
        }
        windows = None
        if dense:
            windows = build_dense_windows(
                plan.q_index, plan.q_inverse, plan.kv_index, plan.cu_seqlens_q, plan.cu_seqlens_k,
                plan.max_seqlen_q, plan.max_seqlen_k, (q_cos, q_sin, k_cos, k_sin),
            )
            windows = dense_windows_to(windows, device)
        return cls(plan=plan, dense=windows, **{name: t.to(device) for name, t in tensors.items()})


def _kv_rows(qkv: Tensor, pad: Tensor | None, dim: int) -> Tensor:
    """Key/value rows [T (+1), 2C]: the tokens' then, with padding, the padding slot's row."""
    kv = qkv[:, dim:]
    return kv if pad is None else torch.cat([kv, pad], dim=0)


class FlashSwinAttention(nn.Module):
    """Multi-head window attention over a packed token sequence, driven by an AttentionLayout."""

    def __init__(self, dim: int, num_heads: int, padding: PaddingMode = "token") -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if padding not in ("token", "kv", "none"):
            raise ValueError(f"padding must be 'token', 'kv' or 'none', got {padding!r}")
        self.dim, self.num_heads, self.padding_mode = dim, num_heads, padding
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if padding == "token":
            self.padding = nn.Parameter(torch.zeros(1, dim))
        elif padding == "kv":
            self.padding_kv = nn.Parameter(torch.zeros(1, 2 * dim))

    def _padding_kv(self) -> Tensor | None:
        """Key/value row of the padding slot, or None without padding."""
        if self.padding_mode == "token":
            return self.qkv(self.padding)[:, self.dim :]
        if self.padding_mode == "kv":
            return self.padding_kv
        return None

    def forward(self, x: Tensor, layout: AttentionLayout) -> Tensor:
        """x [T, C] (tokens of all images and grids, raster order) -> [T, C]."""
        rows, order = self.window_rows(x, layout)
        return rows if order is None else rows.index_select(0, order)

    def window_rows(self, x: Tensor, layout: AttentionLayout) -> tuple[Tensor, Tensor | None]:
        """The projected outputs in window order and the gather that puts them in raster order.

        ``forward`` is ``rows.index_select(0, order)``. Projecting before restoring the order gives
        the same result (rows are independent) and leaves the gather to whoever consumes the rows:
        ``Block`` fuses it into the residual add and the next LayerNorm (``hrsam.ops.add_norm``).
        The portable form (dense windows) returns rows in raster order and None: it gathers before
        projecting, so its exported graph projects no padded rows.
        """
        plan = layout.plan
        if x.dim() != 2 or x.shape[0] != plan.num_tokens or x.shape[1] != self.dim:
            raise ValueError(f"expected tokens [{plan.num_tokens}, {self.dim}] for this layout, got {tuple(x.shape)}")
        if plan.kv_padding != (self.padding_mode != "none"):
            raise ValueError(f"layout built with kv_padding={plan.kv_padding} for padding mode {self.padding_mode!r}")
        c, h, d = self.dim, self.num_heads, self.head_dim
        dense = layout.dense
        qkv = self.qkv(x)
        pad = self._padding_kv()
        pad = None if pad is None else pad.to(qkv.dtype)
        if dense is not None:  # portable form: padded dense windows, standard ops only
            q = apply_rope(qkv[:, :c].index_select(0, dense.q_gather).view(-1, h, d), dense.q_cos, dense.q_sin)
            k, v = _kv_rows(qkv, pad, c).index_select(0, dense.kv_gather).view(-1, 2, h, d).unbind(1)
            out = dense_window_attention(q, apply_rope(k, dense.k_cos, dense.k_sin), v, dense, d**-0.5)
            return self.proj(out.reshape(-1, c).index_select(0, dense.out_gather)), None
        # Compiled engines on CUDA; elsewhere the model's own form (gather_rope's reference would
        # also run, but copies v, which the form below keeps as a view of the gathered rows).
        if engine_kernels_active() and kernel_unsupported(qkv) is None:
            # Three contiguous outputs: the engines' Triton attention reads unit-stride rows only.
            k_pad, v_pad = (None, None) if pad is None else (pad[:, :c], pad[:, c:])
            q = gather_rope(qkv, None, layout.q_index, layout.q_cos, layout.q_sin, 0, c, c).view(-1, h, d)
            k = gather_rope(qkv, k_pad, layout.kv_index, layout.k_cos, layout.k_sin, c, c, c).view(-1, h, d)
            v = gather_rope(qkv, v_pad, layout.kv_index, layout.k_cos, layout.k_sin, 2 * c, c, 0).view(-1, h, d)
        else:
            q = qkv[:, :c].index_select(0, layout.q_index).view(-1, h, d)
            k, v = _kv_rows(qkv, pad, c).index_select(0, layout.kv_index).view(-1, 2, h, d).unbind(1)
            q = apply_rope(q, layout.q_cos, layout.q_sin)
            k = apply_rope(k, layout.k_cos, layout.k_sin)
        out = varlen_attention(
            q, k, v, layout.cu_seqlens_q, layout.cu_seqlens_k, plan.max_seqlen_q, plan.max_seqlen_k, d**-0.5
        )
        return self.proj(out.reshape(-1, c)), layout.q_inverse
