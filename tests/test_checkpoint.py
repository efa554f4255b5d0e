"""Checkpoints: our safetensors round trip, and the authors' key mapping on synthetic state dicts.

The authors' files cannot be downloaded here, so ``authors_state_dict`` writes out their key names
and shapes as read from their repository (models/backbones/hrsam.py, hrsam_plusplus.py,
models/necks/sam_prompt.py, models/decode_heads/sam_decoder.py; configs/hrsam/*.py for the
``backbone.`` / ``neck.`` / ``decode_head.`` prefixes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hrsam.checkpoint import (
    load_authors_checkpoint,
    load_checkpoint,
    map_authors_state_dict,
    read_config,
    save_checkpoint,
)
from hrsam.modeling.configs import ModelConfig, get_config
from hrsam.modeling.interactive import build_model


def _authors_backbone_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HRSAMViT / HRSAMPlusPlusViT parameter names and shapes (their module tree)."""
    enc = config.encoder
    c, n, out = enc.embed_dim, enc.state_dim, enc.out_dim
    hidden = int(c * enc.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (c, 3, 16, 16),
        "patch_embed.proj.bias": (c,),
        "pos_embed": (1, 14 * 14 + 1, c),
    }
    for i in range(enc.depth):
        block = {
            "norm1.weight": (c,), "norm1.bias": (c,),
            "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,),
            "attn.proj.weight": (c, c), "attn.proj.bias": (c,),
            "attn.padding": (1, c),
            "norm2.weight": (c,), "norm2.bias": (c,),
            "mlp.fc1.weight": (hidden, c), "mlp.fc1.bias": (hidden,),
            "mlp.fc2.weight": (c, hidden), "mlp.fc2.bias": (c,),
        }  # fmt: skip
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    mamba = {
        "in_norm.weight": (c,), "in_norm.bias": (c,),
        "in_proj.0.weight": (2 * c, c), "in_proj.0.bias": (2 * c,),
        "ssm_proj.weight": (c + 2 * n, c), "ssm_proj.bias": (c + 2 * n,),
        "ssm_proj_bias": (c,), "As_log": (c, n), "Ds": (c,), "gamma": (c, enc.scan_repeats, 1),
        "out_norm.weight": (c,), "out_norm.bias": (c,),
        "out_proj.weight": (c, c), "out_proj.bias": (c,),
    }  # fmt: skip
    scans = ["ss_mamba_blocks", "ms_mamba_blocks"] if enc.multi_scale else ["mamba_blocks"]
    scales = 2 if enc.multi_scale else 1
    for stage in range(len(enc.stage_ends)):
        for scan in scans:
            shapes.update({f"{scan}.{stage}.{k}": v for k, v in mamba.items()})
        if enc.multi_scale:
            shapes.update({f"multi_scale_fusion.{stage}.0.weight": (c,), f"multi_scale_fusion.{stage}.0.bias": (c,)})
        shapes[f"lateral_convs.{stage}.0.weight"] = (out, scales * c)
        shapes[f"lateral_convs.{stage}.1.weight"] = (out,)
        shapes[f"lateral_convs.{stage}.1.bias"] = (out,)
    shapes.update({"out_conv.0.weight": (out, 1, 3, 3), "out_conv.2.weight": (out,), "out_conv.2.bias": (out,)})
    return shapes


def _authors_prompt_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """Their SAMPromptEncoder (embed 256, mask_in_dim 16): renamed from SAM's PromptEncoder."""
    shapes = {
        "pos_embed_layer.positional_encoding_gaussian_matrix": (2, 128),
        "not_a_point_embed.weight": (1, 256),
        "no_mask_embed.weight": (1, 256),
        "mask_downscaling.0.weight": (4, 1, 2, 2), "mask_downscaling.0.bias": (4,),
        "mask_downscaling.1.weight": (4,), "mask_downscaling.1.bias": (4,),
        "mask_downscaling.3.weight": (16, 4, 2, 2), "mask_downscaling.3.bias": (16,),
        "mask_downscaling.4.weight": (16,), "mask_downscaling.4.bias": (16,),
        "mask_downscaling.6.weight": (256, 16, 1, 1), "mask_downscaling.6.bias": (256,),
    }  # fmt: skip
    shapes.update({f"point_embeds.{i}.weight": (1, 256) for i in range(4)})
    return shapes


def authors_state_dict(name: str, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A synthetic checkpoint with the authors' keys and shapes (random values)."""
    config = get_config(name)
    generator = torch.Generator().manual_seed(0)

    def tensor(shape: tuple[int, ...]) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=generator)

    state = {f"backbone.{k}": tensor(v) for k, v in _authors_backbone_shapes(config).items()}
    state.update({f"neck.{k}": tensor(v) for k, v in _authors_prompt_encoder_shapes().items()})
    # Their SAMDecoder keeps SAM's MaskDecoder names (iou_token, mask_tokens, transformer.layers.*,
    # output_upscaling.*, output_hypernetworks_mlps.*, iou_prediction_head.*).
    with torch.device("meta"):
        sam_decoder = build_model(name).decoder.mask_decoder
    state.update({f"decode_head.{k}": tensor(tuple(v.shape)) for k, v in sam_decoder.state_dict().items()})
    return state


@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_authors_checkpoint_maps_every_key(name: str) -> None:
    model = build_model(name)
    source = authors_state_dict(name)
    source["decode_head.loss_decode.0.dummy"] = torch.zeros(1)
    report = load_authors_checkpoint(model, {"meta": {}, "state_dict": source}, strict=True)
    print(f"{name}: {report}")
    assert report.complete and report.ignored == ["decode_head.loss_decode.0.dummy"]
    ours = model.state_dict()
    assert len(ours) == len(source) - 1
    torch.testing.assert_close(ours["encoder.patch_embed.weight"], source["backbone.patch_embed.proj.weight"])
    torch.testing.assert_close(ours["encoder.blocks.3.attn.padding"], source["backbone.blocks.3.attn.padding"])
    torch.testing.assert_close(ours["encoder.neck.conv.weight"], source["backbone.out_conv.0.weight"])
    torch.testing.assert_close(
        ours["decoder.prompt_encoder.point_embeddings.1.weight"], source["neck.point_embeds.1.weight"]
    )
    torch.testing.assert_close(
        ours["decoder.mask_decoder.transformer.layers.1.mlp.lin2.weight"],
        source["decode_head.transformer.layers.1.mlp.lin2.weight"],
    )
    scan = "ss_mamba_blocks" if "pp" in name else "mamba_blocks"
    loaded = {k: v for k, v in ours.items() if k.startswith("encoder.scans.2.")}
    provided = {k: v for k, v in source.items() if k.startswith(f"backbone.{scan}.2.")}
    assert len(loaded) == len(provided)
    assert sorted(float(v.sum()) for v in loaded.values()) == sorted(float(v.sum()) for v in provided.values())


@pytest.mark.parametrize("name", ["hrsam_vit_b", "hrsampp_vit_b"])
def test_published_sizes_map_exactly(name: str) -> None:
    """Full-size mapping checked on the meta device (names and shapes only)."""
    with torch.device("meta"):
        model = build_model(name)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    _, report = map_authors_state_dict(authors_state_dict(name, device="meta"), shapes)
    assert report.complete, str(report)


def test_missing_and_unexpected_keys_are_reported() -> None:
    model = build_model("hrsam_tiny")
    source = authors_state_dict("hrsam_tiny")
    del source["backbone.blocks.0.attn.padding"]
    source["backbone.cls_token"] = torch.zeros(1, 1, 192)
    report = load_authors_checkpoint(model, source)
    assert report.missing == ["encoder.blocks.0.attn.padding"]
    assert report.unexpected == ["backbone.cls_token"]
    with pytest.raises(ValueError, match="does not cover"):
        load_authors_checkpoint(model, source, strict=True)


def test_wrong_model_for_checkpoint_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="HRSAM vs HRSAM\\+\\+"):
        load_authors_checkpoint(build_model("hrsam_tiny"), authors_state_dict("hrsampp_tiny"))


@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    assert read_config(path) == model.config
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an hrsam safetensors checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_authors_checkpoint_from_file(tmp_path: Path) -> None:
    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": authors_state_dict("hrsam_tiny")}, path)
    assert load_authors_checkpoint(build_model("hrsam_tiny"), path, strict=True).complete
