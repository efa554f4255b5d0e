"""Cycle-scan module: shapes, per-scale segments, initialisation, dtypes, export, key mapping."""

from __future__ import annotations

import pytest
import torch

from hrsam.modeling.cycle_scan import AUTHOR_KEY_MAP, CycleScan
from hrsam.ops.selective_scan.reference import selective_scan_sequential


def make_module(dim: int = 16, state_dim: int = 4, repeats: int = 3, dtype: torch.dtype = torch.float32) -> CycleScan:
    torch.manual_seed(0)
    return CycleScan(dim, state_dim=state_dim, repeats=repeats).to(dtype)


def test_output_shape_and_residual():
    module = make_module()
    x = torch.randn(2, 10, 16)
    y = module(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    with torch.no_grad():
        module.out_proj.weight.zero_()
        module.out_proj.bias.zero_()
    torch.testing.assert_close(module(x), x)


def test_scan_matches_a_tiled_sequential_recurrence():
    """The module's scan: tile the sequence `repeats` times, scan once, gamma-weighted sum."""
    module = make_module(dtype=torch.float64)
    with torch.no_grad():
        module.gamma.copy_(torch.rand_like(module.gamma))
    x = torch.randn(1, 7, 16, dtype=torch.float64)
    u, z = torch.nn.functional.silu(module.in_proj(module.in_norm(x))).chunk(2, dim=-1)
    dt, B, C = module.ssm_proj(u).split([16, 4, 4], dim=-1)
    tile = lambda t: t.transpose(1, 2).repeat(1, 1, 3)  # noqa: E731
    y = selective_scan_sequential(
        tile(u), tile(dt), -module.A_log.exp(), tile(B), tile(C), module.D, module.dt_bias, True
    )
    y = (y.view(1, 16, 3, 7) * module.gamma).sum(2).transpose(1, 2)
    expected = x + module.out_proj(z * module.out_norm(y))
    torch.testing.assert_close(module(x), expected)


def test_segments_scan_each_part_alone():
    module = make_module()
    x = torch.randn(2, 12, 16)
    joint = module(x, segments=[8, 4])
    torch.testing.assert_close(joint, torch.cat([module(x[:, :8]), module(x[:, 8:])], dim=1))
    torch.testing.assert_close(module(x, segments=[12]), module(x))
    assert not torch.allclose(joint, module(x))


def test_segments_must_cover_the_sequence():
    with pytest.raises(ValueError, match="sum to 11"):
        make_module()(torch.randn(1, 12, 16), segments=[8, 3])


def test_initialisation_follows_mamba():
    dim, state_dim = 64, 8
    module = CycleScan(dim, state_dim=state_dim, dt_min=1e-3, dt_max=0.1)
    torch.testing.assert_close(module.A_log, torch.arange(1, state_dim + 1).float().log().repeat(dim, 1))
    assert torch.equal(module.D, torch.ones(dim)) and torch.equal(module.gamma, torch.ones(dim, 3, 1))
    assert module.gamma.shape == (dim, 3, 1)
    assert torch.equal(module.ssm_proj.bias, torch.zeros(dim + 2 * state_dim))
    assert module.ssm_proj.weight[:dim].abs().max() <= dim**-0.5
    dt = torch.nn.functional.softplus(module.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert module.ssm_proj.weight.shape == (dim + 2 * state_dim, dim)
    assert module.in_proj.weight.shape == (2 * dim, dim)
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_dt_bias_floor_applies():
    module = CycleScan(8, state_dim=2, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    torch.testing.assert_close(torch.nn.functional.softplus(module.dt_bias), torch.full((8,), 1e-4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_dtypes_run_and_keep_the_dtype(dtype):
    module = make_module(dtype=dtype)
    x = torch.randn(1, 9, 16, dtype=dtype)
    y = module(x)
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    if dtype == torch.bfloat16:
        reference = make_module()(x.float())
        torch.testing.assert_close(y.float(), reference, rtol=5e-2, atol=5e-2)


def test_gradients_reach_every_parameter():
    module = make_module()
    module(torch.randn(1, 6, 16), segments=[4, 2]).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())


def test_export_with_segments():
    module = make_module()
    x = torch.randn(1, 10, 16)
    exported = torch.export.export(module, (x,), kwargs={"segments": [6, 4]})
    scans = [n for n in exported.graph.nodes if n.target is torch.ops.hrsam.selective_scan.default]
    assert len(scans) == 2
    torch.testing.assert_close(exported.module()(x, segments=[6, 4]), module(x, segments=[6, 4]))


def test_author_key_map_is_a_rename_onto_our_parameters():
    module = make_module()
    ours = set(module.state_dict())
    authors = {
        "in_norm.weight", "in_norm.bias", "in_proj.0.weight", "in_proj.0.bias", "ssm_proj.weight",
        "ssm_proj.bias", "ssm_proj_bias", "As_log", "Ds", "gamma", "out_norm.weight", "out_norm.bias",
        "out_proj.weight", "out_proj.bias",
    }
    assert {AUTHOR_KEY_MAP.get(key, key) for key in authors} == ours
    assert len(ours) == len(authors)
