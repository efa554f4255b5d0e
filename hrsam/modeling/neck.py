"""The encoder neck: per-stage lateral projections, summed, then a depthwise 3x3 conv and LayerNorm.

As the authors: each stage output (channels-last, [B, h, w, C_in]) goes through Linear(C_in -> 256,
no bias) + LayerNorm; the four are summed, passed through a depthwise 3x3 conv (no bias) and a
LayerNorm over channels. C_in is the trunk width (HRSAM) or twice it (HRSAM++, main and anchor
features concatenated).
"""

from __future__ import annotations

from torch import Tensor, nn


class Lateral(nn.Module):
    """Linear (no bias) + LayerNorm on channels-last features."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class Neck(nn.Module):
    """Stage features [B, h, w, C_in] x N -> image embedding [B, out_dim, h, w]."""

    def __init__(self, in_dim: int, out_dim: int, num_stages: int) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(Lateral(in_dim, out_dim) for _ in range(num_stages))
        self.conv = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, groups=out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, features: list[Tensor]) -> Tensor:
        if len(features) != len(self.laterals):
            raise ValueError(f"expected {len(self.laterals)} stage features, got {len(features)}")
        x = sum(lateral(f) for lateral, f in zip(self.laterals, features, strict=True))
        x = self.conv(x.permute(0, 3, 1, 2))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
