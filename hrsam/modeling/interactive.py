"""The full interactive model: HRSAM / HRSAM++ encoder + SAM's prompt encoder and mask decoder.

Parameter names: ``encoder.*`` (ours), ``decoder.prompt_encoder.*`` and ``decoder.mask_decoder.*``
(SAM's own names). ``encode`` and ``decode`` are the two deployable halves: the encoder runs once per
image at a fixed input size, the decoder once per click with the I/O of segment-anything's ONNX
decoder.
"""

from __future__ import annotations

from torch import Tensor, nn

from hrsam.modeling.configs import ModelConfig, get_config
from hrsam.modeling.encoder import HRSAMEncoder
from hrsam.modeling.sam_decoder import PromptDecoder


class HRSAMInteractive(nn.Module):
    """Encoder plus prompt decoder; see ``encode`` and ``decode``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = HRSAMEncoder(config.encoder)
        self.decoder = PromptDecoder(config.decoder)

    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] normalised, padded images (H, W multiples of 16) -> [B, 256, H/16, W/16]."""
        return self.encoder(images)

    def decode(
        self,
        image_embeddings: Tensor,
        point_coords: Tensor,
        point_labels: Tensor,
        mask_input: Tensor,
        has_mask_input: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """(iou_predictions [B, 4], low_res_masks [B, 4, 4h, 4w]); see ``PromptDecoder.forward``."""
        return self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)


def build_model(config: str | ModelConfig) -> HRSAMInteractive:
    """A model with freshly initialised (random) weights from a config or its name."""
    if isinstance(config, str):
        config = get_config(config)
    return HRSAMInteractive(config)
