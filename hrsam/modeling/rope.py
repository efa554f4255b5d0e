"""2D axial rotary position embedding (EVA-02 style, as the authors use it).

The head dimension is split in two halves: the first rotates with the y coordinate, the second
with x. Inside each half, channel pairs (2i, 2i+1) share frequency ``theta ** (-4i / head_dim)``.
Positions are canvas coordinates times 0.5 (the authors' ``pt_seq_len / ft_seq_len`` for a 224
pre-training size), independent of the input resolution.

The authors' rotation is ``x * cos + r(x) * sin`` with ``r(x)[2i] = x[2i+1]`` and
``r(x)[2i+1] = -x[2i]``: a rotation by minus the angle compared with EVA-02. It is still a
rotary embedding (scores depend only on position differences); we keep their sign so that their
checkpoints give identical results. The rotation itself (``apply_rope``) lives with the op that
fuses it into the attention inputs' gather (``hrsam.ops.gather_rope``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hrsam.ops.gather_rope.reference import apply_rope, rotate_pairs

__all__ = ["apply_rope", "rope_tables", "rotate_pairs"]

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
