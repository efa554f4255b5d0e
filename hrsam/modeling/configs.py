"""Named model configurations.

``hrsam_vit_b`` / ``hrsampp_vit_b`` are the published sizes (the authors' ``configs/hrsam/*.py``:
ViT-B, window 16, d_state 32, 3 scan repeats, stages ending at blocks 2/5/8/11, 256-d output,
512 anchor for HRSAM++). ``hrsam_tiny`` / ``hrsampp_tiny`` keep the exact structure with a narrow
trunk (192 channels, 3 heads of 64) so tests and the CPU demo run in seconds. The prompt encoder and
mask decoder are SAM's at every size, so SAM / authors' decoder weights always fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The patch size of every HRSAM model (SAM's): input sizes must be multiples of it.
PATCH_SIZE = 16
# SAM's pixel normalisation (RGB, 0..255), applied by the predictor and recorded in export sidecars.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class EncoderConfig:
    """Hyper-parameters of the HRSAM / HRSAM++ image encoder.

    ``anchor_size`` None builds HRSAM; an int builds HRSAM++ with that square anchor image (512
    in the paper). ``pretrain_grid`` is the 14 x 14 MAE position-embedding grid that is resized to
    every token grid.
    """

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = PATCH_SIZE
    window: int = 16
    stage_ends: tuple[int, ...] = (2, 5, 8, 11)
    state_dim: int = 32
    scan_repeats: int = 3
    out_dim: int = 256
    pretrain_grid: int = 14
    anchor_size: int | None = None

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 4:
            raise ValueError(
                f"embed_dim {self.embed_dim} must split into {self.num_heads} heads whose size is a "
                "multiple of 4 (2D RoPE)"
            )
        if not self.stage_ends or any(not 0 <= i < self.depth for i in self.stage_ends):
            raise ValueError(f"stage_ends {self.stage_ends} must be block indices below depth {self.depth}")
        if self.anchor_size is not None and self.anchor_size % self.patch_size:
            raise ValueError(f"anchor_size {self.anchor_size} must be a multiple of {self.patch_size}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def multi_scale(self) -> bool:
        return self.anchor_size is not None


@dataclass(frozen=True)
class DecoderConfig:
    """SAM's prompt encoder / mask decoder sizes (identical for every published SAM and HRSAM).

    ``base_input_size`` is the input size SAM's dense positional encoding was trained for (1024,
    a 64 x 64 embedding); larger embeddings interpolate it (docs/MODEL.md, "Decoder").
    """

    prompt_dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    base_input_size: int = 1024


@dataclass(frozen=True)
class ModelConfig:
    """A full interactive model: encoder plus SAM's prompt encoder and mask decoder."""

    name: str
    encoder: EncoderConfig
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        if self.encoder.out_dim != self.decoder.prompt_dim:
            raise ValueError(
                f"encoder out_dim {self.encoder.out_dim} != decoder prompt_dim {self.decoder.prompt_dim}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict`` (JSON turns tuples into lists; restore them)."""
        encoder = dict(data["encoder"])
        encoder["stage_ends"] = tuple(encoder["stage_ends"])
        return cls(
            name=data["name"],
            encoder=EncoderConfig(**encoder),
            decoder=DecoderConfig(**data.get("decoder", {})),
        )


_TINY = {"embed_dim": 192, "num_heads": 3}

CONFIGS: dict[str, ModelConfig] = {
    "hrsam_vit_b": ModelConfig("hrsam_vit_b", EncoderConfig()),
    "hrsampp_vit_b": ModelConfig("hrsampp_vit_b", EncoderConfig(anchor_size=512)),
    "hrsam_tiny": ModelConfig("hrsam_tiny", EncoderConfig(**_TINY)),
    "hrsampp_tiny": ModelConfig("hrsampp_tiny", EncoderConfig(**_TINY, anchor_size=512)),
}


def get_config(name: str) -> ModelConfig:
    """The named configuration; the error lists the known names."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None
