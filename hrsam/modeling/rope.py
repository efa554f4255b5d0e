"""2D axial rotary position embedding (EVA-02 style, as the authors use it).

The head dimension is split in two halves: the first rotates with the y coordinate, the second
with x. Inside each half, channel pairs (2i, 2i+1) share frequency ``theta ** (-4i / head_dim)``.
Positions are canvas coordinates times 0.5 (the authors' ``pt_seq_len / ft_seq_len`` for a 224
pre-training size), independent of the input resolution.

The authors' rotation is ``x * cos + r(x) * sin`` with ``r(x)[2i] = x[2i+1]`` and
``r(x)[2i+1] = -x[2i]``: a rotation by minus the angle compared with EVA-02. It is still a
rotary embedding (scores depend only on position differences); we keep their sign so that their
checkpoints give identical results.
"""

from __future__ import annotations

import torch
from torch import Tensor

POSITION_SCALE = 0.5


def rope_tables(
    coords: Tensor, head_dim: int, theta: float = 10000.0, position_scale: float = POSITION_SCALE
) -> tuple[Tensor, Tensor]:
    """cos / sin tables [T, head_dim] (float32) for canvas coordinates ``coords`` [T, 2] (y, x)."""
    if head_dim % 4 != 0:
        raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float64) / quarter)  # [head_dim / 4]
    pos = coords.to(torch.float64) * position_scale  # [T, 2]
    angles = pos[:, :, None] * freqs  # [T, 2, head_dim / 4]
    angles = angles.repeat_interleave(2, dim=-1).flatten(1)  # [T, head_dim]: y half, then x half
    return angles.cos().to(torch.float32), angles.sin().to(torch.float32)


def rotate_pairs(x: Tensor) -> Tensor:
    """The authors' pair rotation: (a, b) -> (b, -a) on channel pairs of the last dimension."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack([pairs[..., 1], -pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [T, H, D] with tables [T, D]; computed in float32, returned in x's dtype."""
    xf = x.float()
    out = xf * cos[:, None, :] + rotate_pairs(xf) * sin[:, None, :]
    return out.to(x.dtype)
