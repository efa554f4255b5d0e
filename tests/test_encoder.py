"""HRSAM / HRSAM++ encoders: parameter counts, output shapes, caching, batching, shared weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hrsam.modeling.configs import get_config
from hrsam.modeling.encoder import BilinearTaps, HRSAMEncoder, upsample_channels_last

# The authors' published encoders (paper, Table 3 / docs/MODEL.md, "Encoder").
PUBLISHED = {"hrsam_vit_b": 96.4e6, "hrsampp_vit_b": 106.9e6}


def _encoder(name: str, seed: int = 0, anchor_size: int | None = None) -> HRSAMEncoder:
    """A random encoder; ``anchor_size`` shrinks HRSAM++'s anchor (same structure, faster on CPU)."""
    torch.manual_seed(seed)
    config = get_config(name).encoder
    if anchor_size is not None:
        config = dataclasses.replace(config, anchor_size=anchor_size)
    return HRSAMEncoder(config).eval()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_vit_b_parameter_count_matches_published(name: str) -> None:
    """Built on the meta device (no memory, instant). Every parameter of the authors' backbone has a
    counterpart of the same shape (see test_checkpoint), so the counts agree exactly with theirs,
    including the unused cls slot of the 14x14+1 position embedding (768 parameters)."""
    with torch.device("meta"):
        encoder = HRSAMEncoder(get_config(name).encoder)
    count = sum(p.numel() for p in encoder.parameters())
    print(f"{name}: {count:,} encoder parameters ({count / 1e6:.2f}M, published {PUBLISHED[name] / 1e6}M)")
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("name", "height", "width"),
    [
        ("hrsam_tiny", 512, 512),
        ("hrsam_tiny", 256, 384),
        ("hrsampp_tiny", 512, 512),
        pytest.param("hrsam_tiny", 1024, 1024, marks=SLOW),
        pytest.param("hrsampp_tiny", 1024, 1024, marks=SLOW),
        pytest.param("hrsampp_tiny", 320, 512, marks=SLOW),
        pytest.param("hrsam_tiny", 2048, 2048, marks=SLOW),
        pytest.param("hrsampp_tiny", 2048, 2048, marks=SLOW),
    ],
)
def test_embedding_shape(name: str, height: int, width: int) -> None:
    encoder = _encoder(name)
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, height, width))
    assert out.shape == (1, 256, height // 16, width // 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("height", "width"), [(128, 128), (256, 160), (96, 320)])
def test_hrsampp_any_size_small_anchor(height: int, width: int) -> None:
    """HRSAM++ at sizes below, above and unlike its anchor (128 here to keep the CPU test fast)."""
    encoder = _encoder("hrsampp_tiny", anchor_size=128)
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, height, width))
    assert out.shape == (1, 256, height // 16, width // 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrsam_vit_b", "hrsampp_vit_b"])
def test_vit_b_forward_shape(name: str) -> None:
    encoder = _encoder(name)
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 256, 32, 32)


def test_size_must_be_multiple_of_16() -> None:
    encoder = _encoder("hrsam_tiny")
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder(torch.randn(1, 3, 250, 256))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        encoder(torch.randn(3, 256, 256))


def test_layouts_built_once_per_size() -> None:
    encoder = _encoder("hrsam_tiny")
    with torch.no_grad():
        encoder(torch.randn(1, 3, 256, 256))
        first = encoder._layouts[(((16, 16),), 1, "cpu", False)]
        encoder(torch.randn(1, 3, 256, 256))
        assert encoder._layouts[(((16, 16),), 1, "cpu", False)] is first
        encoder(torch.randn(1, 3, 256, 320))
    assert len(encoder._layouts) == 2
    plain, shifted, anchor_taps, pos_taps = first
    assert plain.plan.shift == 0 and shifted.plan.shift == 8 and plain.plan.kv_padding
    assert anchor_taps is None  # HRSAM: no anchor grid
    assert len(pos_taps) == 1 and pos_taps[0] is not None  # 16 x 16 tokens: the 14 x 14 grid is resized


@pytest.mark.parametrize(("height", "width"), [(224, 224), (256, 256), (160, 288)])
def test_position_embedding_is_the_interpolated_grid(height: int, width: int) -> None:
    """The position embedding, resized channels last from taps, is the MAE grid resized by
    ``F.interpolate`` (bilinear, align_corners=False) and flattened to raster order, as the
    authors' implementation adds it; 224 x 224 is the pretraining grid itself (no resize). float32,
    tolerance 1e-6 of the largest value (the blends' rounding order)."""
    encoder = _encoder("hrsam_tiny")
    torch.nn.init.normal_(encoder.pos_embed)
    torch.nn.init.zeros_(encoder.patch_embed.weight)  # patches embed to 0: _embed is the position term
    torch.nn.init.zeros_(encoder.patch_embed.bias)
    images = torch.randn(1, 3, height, width)
    side, (h, w) = encoder.config.pretrain_grid, (height // 16, width // 16)
    grid = encoder.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    encoder.prepare(height, width)
    (plan,) = encoder._layouts.values()
    with torch.no_grad():
        got = encoder._embed(images, plan.pos_taps[0])
    want = resized.flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 * want.abs().max().item())


def test_layout_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hrsam.modeling.encoder.MAX_CACHED_LAYOUTS", 2)
    encoder = _encoder("hrsam_tiny")
    with torch.no_grad():
        for side in (32, 48, 64):
            encoder(torch.randn(1, 3, side, side))
    assert [key[0][0] for key in encoder._layouts] == [(3, 3), (4, 4)]


@pytest.mark.parametrize("name", ["hrsam_tiny", "hrsampp_tiny"])
def test_batch_equals_single_images(name: str) -> None:
    """Images packed batch-major in one sequence must not interact (windows, scans, padding slot)."""
    encoder = _encoder(name, anchor_size=64 if "pp" in name else None)
    images = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        batched = encoder(images)
        single = torch.cat([encoder(images[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single, atol=2e-4, rtol=1e-4)


def test_hrsampp_shares_trunk_weights_with_hrsam() -> None:
    """HRSAM++ adds only the multi-scale scans, the fusion norms and wider laterals: the anchor image
    goes through the same patch embedding, position embedding and blocks."""
    with torch.device("meta"):
        single = HRSAMEncoder(get_config("hrsam_tiny").encoder).state_dict()
        multi = HRSAMEncoder(get_config("hrsampp_tiny").encoder).state_dict()
    extra = {k.split(".")[0] for k in multi.keys() - single.keys()}
    assert extra == {"ms_scans", "fusion_norms"}
    assert single.keys() <= multi.keys()
    changed = {k for k in single if single[k].shape != multi[k].shape}
    assert changed == {f"neck.laterals.{i}.proj.weight" for i in range(4)}


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_patch_embedding_gemm_equals_the_convolution(height: int, width: int) -> None:
    """The encoder embeds patches with one GEMM over unfolded patches (faster on GPUs than cuDNN's
    strided convolution); it must be the checkpoint's convolution exactly, raster token order
    included. float64, so only summation order differs (tolerance 1e-12)."""
    encoder = _encoder("hrsam_tiny").double()
    images = torch.randn(2, 3, height, width, dtype=torch.float64)
    with torch.no_grad():
        expected = encoder.patch_embed(images).flatten(2).transpose(1, 2)
        got = encoder._patchify(images)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("source", "size"), [((32, 32), (128, 128)), ((5, 7), (13, 20)), ((8, 8), (8, 8)), ((20, 20), (7, 9))]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upsample_channels_last_equals_interpolate(
    source: tuple[int, int], size: tuple[int, int], dtype: torch.dtype
) -> None:
    """HRSAM++'s anchor upsampling (channels last, gathered rows) is ``F.interpolate``'s bilinear
    resize (align_corners=False) for up, down and non-integer ratios. Tolerances: float32 1e-6 of
    the largest value (the blends' rounding order); bfloat16 one rounding step of the output
    (both compute in float32 and round once)."""
    torch.manual_seed(0)
    grid = torch.randn(2, *source, 24).to(dtype)
    want = torch.nn.functional.interpolate(
        grid.permute(0, 3, 1, 2).float(), size=size, mode="bilinear", align_corners=False
    )
    want = want.permute(0, 2, 3, 1)
    got = upsample_channels_last(grid, BilinearTaps.build(source, size, grid.device))
    assert got.dtype == dtype and got.shape == want.shape
    tolerance = 1e-6 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance * want.abs().max().item())
