"""Checkpoints: our safetensors round trip, and the authors' key mapping on synthetic state dicts.

The authors' files cannot be downloaded here, so ``authors_state_dict`` writes out their key names
and shapes as read from their repository (models/backbones/hrsam.py, hrsam_plusplus.py,
models/necks/sam_prompt.py, models/decode_heads/sam_decoder.py; configs/hrsam/*.py for the
``backbone.`` / ``neck.`` / ``decode_head.`` prefixes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hrsam.checkpoint import (
    load_authors_checkpoint,
    load_checkpoint,
    load_model,
    map_authors_state_dict,
    read_config,
    save_checkpoint,
    weights_sha256,
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


# --- load_model: the one loader behind the CLI and open_predictor -----------------------------


def test_authors_checkpoint_with_rope_buffer_loads_strictly(tmp_path: Path) -> None:
    """Their backbone saves its RoPE table as a persistent buffer; it is ignored, not 'unexpected'."""
    source = authors_state_dict("hrsampp_tiny")
    source["backbone.rope.freqs"] = torch.randn(16, 16, 32)
    report = load_authors_checkpoint(build_model("hrsampp_tiny"), {"state_dict": source}, strict=True)
    assert report.complete and report.ignored == ["backbone.rope.freqs"]
    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": source}, path)
    loaded = load_model(checkpoint=path)  # no name: the config the tensors fit
    assert loaded.model.config.name == "hrsampp_tiny" and not loaded.missing and not loaded.random_weights
    assert loaded.weights.startswith(f"{path} (authors' checkpoint, sha256 ")
    torch.testing.assert_close(
        loaded.model.state_dict()["encoder.ms_scans.1.A_log"], source["backbone.ms_mamba_blocks.1.As_log"]
    )


@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_plain_state_dict_loads_exactly(name: str, tmp_path: Path) -> None:
    """torch.save(model.state_dict()): our key names, no config; the config is found from the tensors."""
    model = load_model(name, seed=3).model
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(checkpoint=path)
    assert loaded.model.config == model.config and not loaded.missing and not loaded.random_weights
    assert weights_sha256(loaded.model) == weights_sha256(model)


def test_plain_state_dict_gives_identical_outputs(tmp_path: Path) -> None:
    model = load_model("hrsam_tiny", seed=3).model
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model("hrsam_tiny", path).model
    image, coords, labels = torch.randn(1, 3, 128, 128), torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1)
    mask, has_mask = torch.zeros(1, 1, 32, 32), torch.zeros(1)
    with torch.inference_mode():
        embeddings = [m.encode(image) for m in (model, loaded)]
        pairs = zip((model, loaded), embeddings, strict=True)
        outputs = [m.decode(e, coords, labels, mask, has_mask) for m, e in pairs]
    torch.testing.assert_close(embeddings[1], embeddings[0], rtol=0, atol=0)
    for ours, theirs in zip(*outputs, strict=True):
        torch.testing.assert_close(theirs, ours, rtol=0, atol=0)


def test_partial_checkpoint_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}, path)  # SAM's names: 0 of 367 fit
    with pytest.raises(ValueError, match=r"missing 367 \[encoder\.pos_embed, .*unexpected 1 \[image_encoder"):
        load_model("hrsam_tiny", path)
    loaded = load_model("hrsam_tiny", path, allow_partial=True, seed=5)
    assert len(loaded.missing) == 367 and "367 of 367 weights left random" in loaded.weights
    assert weights_sha256(loaded.model) == weights_sha256(load_model("hrsam_tiny", seed=5).model)

    ours = load_model("hrsam_tiny").model.state_dict()
    del ours["encoder.blocks.1.attn.padding"]
    torch.save(ours, path)
    with pytest.raises(ValueError, match=r"does not cover model 'hrsam_tiny': missing 1 \[encoder.blocks.1.attn"):
        load_model(checkpoint=path)
    assert load_model(checkpoint=path, allow_partial=True).missing == ["encoder.blocks.1.attn.padding"]


def test_safetensors_config_must_match_the_name(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(load_model("hrsam_tiny").model, path)
    with pytest.raises(ValueError, match="holds model 'hrsam_tiny', not 'hrsampp_vit_b'"):
        load_model("hrsampp_vit_b", path)
    assert load_model(None, path).model.config.name == "hrsam_tiny"
    assert load_model("hrsam_tiny", path).weights.startswith(f"{path} (sha256 ")


def test_state_dict_of_another_size_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pp.pth"
    torch.save(load_model("hrsampp_tiny").model.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit model 'hrsam_tiny': 4 tensors have other shapes") as error:
        load_model("hrsam_tiny", path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def _torch_file(path: Path) -> bytes:
    torch.save({"w": torch.zeros(64)}, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda path: b"hello, not a checkpoint", "neither a torch.save zip archive nor a pickle"),
        (lambda path: _torch_file(path)[:200], "zip archive torch.save writes is truncated or corrupted"),
        (lambda path: b"\x80\x02garbage", "a pickle that cannot be read"),
        (lambda path: b"", "the file is empty"),
    ],
    ids=["text", "truncated", "bad-pickle", "empty"],
)
def test_unreadable_torch_files_are_one_line(content, reason: str, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content(path))
    with pytest.raises(ValueError, match=f"{path} is not a readable PyTorch checkpoint") as error:
        load_model(checkpoint=path)
    assert reason in str(error.value) and "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_non_tensor_objects_are_named(tmp_path: Path) -> None:
    path = tmp_path / "mmengine.pth"
    torch.save({"meta": {"epoch": np.float64(1.0)}, "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"holds Python objects besides tensors \(numpy\.") as error:
        load_model(checkpoint=path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("data", [b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b"short"])
def test_corrupt_safetensors_is_one_line(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{path} is not a readable safetensors file") as error:
        load_model(checkpoint=path)
    assert "\n" not in str(error.value)


def test_safetensors_without_our_config_is_a_state_dict(tmp_path: Path) -> None:
    model = load_model("hrsam_tiny", seed=2).model
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    assert weights_sha256(load_model(checkpoint=path).model) == weights_sha256(model)
