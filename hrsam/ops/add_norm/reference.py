"""``add_layer_norm``'s definition in plain torch (any device, any dtype)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def add_layer_norm_reference(
    x: Tensor, delta: Tensor, index: Tensor | None, weight: Tensor, bias: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """(total, normed): total = x + delta[index] (delta's rows in ``index``'s order, all rows when None)
    in x's dtype, normed = LayerNorm(total) over the last dimension computed in float32, in x's dtype."""
    rows = delta if index is None else delta.index_select(0, index)
    total = x + rows
    normed = F.layer_norm(total.float(), (total.shape[-1],), weight.float(), bias.float(), eps)
    return total, normed.to(x.dtype)
