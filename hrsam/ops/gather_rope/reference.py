"""The rotary embedding's rotation and ``gather_rope``'s definition, in plain torch (any device)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotate_pairs(x: Tensor) -> Tensor:
    """The authors' pair rotation: (a, b) -> (b, -a) on channel pairs of the last dimension."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([pairs[..., 1], -pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [T, H, D] with tables [T, D]; computed in float32, returned in x's dtype."""
    xf = x.float()
    out = xf * cos[:, None, :] + rotate_pairs(xf) * sin[:, None, :]
    return out.to(x.dtype)


def gather_rope_reference(
    src: Tensor,
    extra: Tensor | None,
    index: Tensor,
    cos: Tensor,
    sin: Tensor,
    col: int,
    width: int,
    rope_width: int,
) -> Tensor:
    """Rows ``index`` of ``src[:, col:col + width]`` (``extra``'s rows after src's); first ``rope_width`` rotated."""
    rows = src[:, col : col + width]
    if extra is not None:
        rows = torch.cat([rows, extra.to(rows.dtype)])
    out = rows.index_select(0, index)
    if rope_width == 0:
        return out
    head_dim = cos.shape[1]
    rotated = apply_rope(out[:, :rope_width].unflatten(1, (-1, head_dim)), cos, sin).flatten(1)
    return torch.cat([rotated, out[:, rope_width:]], dim=1) if rope_width < width else rotated
