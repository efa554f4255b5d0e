"""PromptDecoder: SAM's modules, SAM's results at 64x64, the authors' rule for larger embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hrsam.modeling.configs import DecoderConfig
from hrsam.modeling.sam_decoder import PromptDecoder, select_single_mask


@pytest.fixture(scope="module")
def decoder() -> PromptDecoder:
    torch.manual_seed(0)
    module = PromptDecoder(DecoderConfig()).eval()
    with torch.no_grad():  # SAM initialises the no-mask embedding randomly; make masks matter too
        for p in module.prompt_encoder.mask_downscaling.parameters():
            p.normal_(0, 0.2)
    return module


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clicks and SAM's padding point (0, 0) / -1, as SamPredictor sends them."""
    coords = torch.tensor([[[100.0, 200.0], [700.0, 650.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    return coords, labels


def test_uses_segment_anything_classes(decoder: PromptDecoder) -> None:
    assert type(decoder.prompt_encoder).__module__ == "segment_anything.modeling.prompt_encoder"
    assert type(decoder.mask_decoder).__module__ == "segment_anything.modeling.mask_decoder"
    assert type(decoder.mask_decoder.transformer).__module__ == "segment_anything.modeling.transformer"


def test_matches_sam_at_64x64(decoder: PromptDecoder) -> None:
    """At SAM's own size the adaptation is the identity: same result as SAM's prompt encoder path."""
    torch.manual_seed(1)
    embedding = torch.randn(1, 256, 64, 64)
    coords, labels = _points()
    mask = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        for has_mask in (0.0, 1.0):
            iou, masks = decoder(embedding, coords, labels, mask, torch.tensor([has_mask]))
            sparse, dense = decoder.prompt_encoder(
                (coords[:, :2], labels[:, :2]), None, mask if has_mask else None
            )
            ref_masks, ref_iou = decoder.mask_decoder.predict_masks(
                embedding, decoder.prompt_encoder.get_dense_pe(), sparse, dense
            )
            torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)


def test_authors_rule_at_128x128(decoder: PromptDecoder) -> None:
    """2048 input: coords normalised by 2048, 64x64 dense PE and no-mask embedding resized to 128x128,
    mask prompt at 512x512 (docs/MODEL.md, "Decoder"), computed here with SAM's own functions."""
    torch.manual_seed(2)
    embedding = torch.randn(1, 256, 128, 128)
    coords, labels = _points()
    coords = coords * 2
    prompt = decoder.prompt_encoder
    with torch.no_grad():
        iou, masks = decoder(embedding, coords, labels, torch.zeros(1, 1, 512, 512), torch.zeros(1))
        point_pe = prompt.pe_layer.forward_with_coords(coords + 0.5, (2048, 2048))
        sparse = point_pe.clone()
        sparse[labels == -1] = prompt.not_a_point_embed.weight
        sparse[labels == 0] += prompt.point_embeddings[0].weight
        sparse[labels == 1] += prompt.point_embeddings[1].weight
        dense_pe = F.interpolate(prompt.get_dense_pe(), size=(128, 128), mode="bilinear", align_corners=False)
        no_mask = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
        no_mask = F.interpolate(no_mask, size=(128, 128), mode="bilinear", align_corners=False)
        ref_masks, ref_iou = decoder.mask_decoder.predict_masks(embedding, dense_pe, sparse, no_mask)
    assert masks.shape == (1, 4, 512, 512)
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-5, rtol=1e-4)


def test_mask_prompt_is_used_when_flagged(decoder: PromptDecoder) -> None:
    embedding = torch.randn(1, 256, 32, 32)
    coords, labels = _points()
    mask = torch.randn(1, 1, 128, 128) * 5
    with torch.no_grad():
        _, without = decoder(embedding, coords / 2, labels, mask, torch.zeros(1))
        _, with_mask = decoder(embedding, coords / 2, labels, mask, torch.ones(1))
        _, zeros = decoder(embedding, coords / 2, labels, torch.zeros_like(mask), torch.zeros(1))
    torch.testing.assert_close(without, zeros)  # has_mask_input 0 ignores the mask values
    assert not torch.allclose(without, with_mask)


def test_non_square_embedding(decoder: PromptDecoder) -> None:
    with torch.no_grad():
        iou, masks = decoder(torch.randn(1, 256, 32, 48), *_points(), torch.zeros(1, 1, 128, 192), torch.zeros(1))
    assert iou.shape == (1, 4) and masks.shape == (1, 4, 128, 192)


def test_bad_shapes_are_clear_errors(decoder: PromptDecoder) -> None:
    embedding = torch.randn(1, 256, 32, 32)
    coords, labels = _points()
    with pytest.raises(ValueError, match=r"mask_input must be \[B, 1, 128, 128\]"):
        decoder(embedding, coords, labels, torch.zeros(1, 1, 256, 256), torch.zeros(1))
    with pytest.raises(ValueError, match="point_labels"):
        decoder(embedding, coords, labels[:, :2], torch.zeros(1, 1, 128, 128), torch.zeros(1))
    with pytest.raises(ValueError, match="image_embeddings"):
        decoder(embedding[0], coords, labels, torch.zeros(1, 1, 128, 128), torch.zeros(1))


def test_select_single_mask() -> None:
    iou = torch.arange(4.0).view(1, 4)
    masks = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    single_iou, single = select_single_mask(iou, masks, multimask_output=False)
    multi_iou, multi = select_single_mask(iou, masks, multimask_output=True)
    assert single_iou.tolist() == [[0.0]] and single.shape == (1, 1, 2, 2)
    assert multi_iou.tolist() == [[1.0, 2.0, 3.0]] and multi.shape == (1, 3, 2, 2)
