"""``hrsam::fusion_layer_norm`` (HRSAM++'s stage output: anchor upsampling + both scales' LayerNorm).

CPU: the torch reference against ``F.interpolate`` and ``nn.LayerNorm`` in float32, the op's CPU
form equal to the encoder's former torch ops bit for bit, the checks' named errors (when the kernel
can run: ``tests/test_add_norm.py``, which shares that check), and which
form HRSAM++ traces (the kernel only inside ``engine_kernels()``: fake tensors, no GPU needed). The
Triton kernel under Triton's interpreter (subprocess): against the reference within 1e-5 in
float32 and two 16-bit steps in bfloat16 / float16 (the upsampled value is rounded to 16 bits
before its norm in both; the interpreter truncates where GPUs round, and the reductions' order
differs), through the launcher (several launch shapes, batch 2) and the ``triton_op``, and a tiny
HRSAM++ encoder through the kernel against its eager path (3e-2 relative, bf16 autocast).

GPU (marker ``gpu``): HRSAM++ 2048's shape (128 x 128 main, 32 x 32 anchor, 768 channels), bf16.
"""

from __future__ import annotations

import textwrap
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrsam.modeling.encoder import BilinearTaps
from hrsam.ops import fusion_norm as fusion_module
from hrsam.ops.fusion_norm import fusion_layer_norm, fusion_layer_norm_reference
from hrsam.ops.lowering import engine_kernels
from tests.fresh_python import run_python

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_case(main=(6, 10), anchor=(4, 3), channels=40, batch=1, seed=0, device="cpu") -> dict:  # noqa: ANN001
    """Tokens [batch, main + anchor rows, channels], the anchor-to-main taps and a random affine norm."""
    generator = torch.Generator().manual_seed(seed)
    length = main[0] * main[1] + anchor[0] * anchor[1]
    taps = BilinearTaps.build(anchor, main, torch.device("cpu"))
    norm = nn.LayerNorm(channels, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(channels, generator=generator))
    x = torch.randn(batch, length, channels, generator=generator) * 2.0 + 0.5
    return {
        "x": x.to(device),
        "main": main,
        "rows": tuple(t.to(device) for t in taps.rows),
        "cols": tuple(t.to(device) for t in taps.cols),
        "anchor": anchor,
        "norm": norm.to(device),
    }


def reference_of(case: dict) -> torch.Tensor:
    norm = case["norm"]
    return fusion_layer_norm_reference(
        case["x"], case["main"], case["rows"], case["cols"], case["anchor"], norm.weight, norm.bias, norm.eps
    )


@pytest.mark.parametrize(("main", "anchor"), [((6, 10), (4, 3)), ((8, 8), (8, 8)), ((5, 7), (9, 11))])
def test_reference_is_interpolate_and_layer_norm(main: tuple[int, int], anchor: tuple[int, int]) -> None:
    """Up, equal and down ratios; float32 (as the reference computes): only the blends' and the
    reductions' rounding order differ (1e-5)."""
    case = make_case(main, anchor, batch=2)
    norm = case["norm"]
    h, w = main
    got = fusion_layer_norm_reference(
        case["x"], main, case["rows"], case["cols"], anchor, norm.weight, norm.bias, norm.eps
    )
    grid = case["x"][:, h * w :].unflatten(1, anchor).permute(0, 3, 1, 2)
    upsampled = F.interpolate(grid, size=main, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    main_grid = case["x"][:, : h * w].unflatten(1, main)
    want = torch.cat([norm(main_grid), norm(upsampled)], dim=-1)
    assert got.shape == (2, h, w, 2 * case["x"].shape[-1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cpu_form_is_the_encoders_former_ops() -> None:
    """Outside the engines: cat(norm(main), norm(upsampled anchor)), in the dtype autocast gives, bit for bit."""
    from hrsam.modeling.encoder import upsample_channels_last

    case = make_case(batch=2)
    (h, w), norm = case["main"], case["norm"]
    taps = BilinearTaps(case["rows"], case["cols"])
    for autocast in (False, True):
        x = case["x"].bfloat16() if autocast else case["x"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = fusion_layer_norm(x, case["main"], case["rows"], case["cols"], case["anchor"], norm)
            anchor = upsample_channels_last(x[:, h * w :].unflatten(1, case["anchor"]), taps)
            want = torch.cat([norm(x[:, : h * w].unflatten(1, (h, w))), norm(anchor)], dim=-1)
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(x=c["x"][:, :-1]), r"x must be \[batch, 6 \* 10 \+ 4 \* 3, channels\]"),
        (lambda c: c.update(x=c["x"][0]), r"x must be \[batch"),
        (lambda c: c.update(rows=c["rows"][:2]), "rows taps must be three 1-D tensors of 6"),
        (lambda c: c.update(cols=tuple(t[:-1] for t in c["cols"])), "cols taps must be three 1-D tensors of 10"),
        (lambda c: c.update(rows=(c["rows"][0].float(), *c["rows"][1:])), "rows tap indices must be int32/int64"),
        (lambda c: c.update(cols=(*c["cols"][:2], c["cols"][0])), "cols tap weights must be floating point"),
        (lambda c: c.update(norm=nn.LayerNorm(40, elementwise_affine=False)), "affine LayerNorm over 40"),
        (lambda c: c.update(norm=nn.LayerNorm(41)), "affine LayerNorm over 40"),
    ],
    ids=["length", "rank", "rows-count", "cols-size", "index-dtype", "weight-dtype", "no-affine", "norm-width"],
)
def test_bad_inputs_are_named(change, message: str) -> None:  # noqa: ANN001
    case = make_case()
    change(case)
    with pytest.raises(ValueError, match=message):
        fusion_layer_norm(**case)


@pytest.mark.parametrize(("name", "kernels"), [("hrsampp_tiny", 4), ("hrsam_tiny", 0)])
def test_each_hrsampp_stage_output_is_one_kernel(name: str, kernels: int) -> None:
    """Four stages: HRSAM++'s four stage outputs trace as the op; HRSAM has no anchor grid. Fake bf16
    tensors, no GPU."""
    pytest.importorskip("triton")
    from tests.test_add_norm import _encoder_trace

    op = fusion_module.triton_fusion_layer_norm_op()
    with mock.patch.multiple(fusion_module, _OP=op, kernel_unsupported=lambda x: None):
        with mock.patch("hrsam.ops.varlen_attention._check_offsets"):
            code = _encoder_trace(name)
    assert code.count("hrsam.fusion_layer_norm_triton.default(") == kernels, code


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.ops import fusion_norm as module
    from hrsam.ops.fusion_norm import triton_fusion_layer_norm_op
    from hrsam.ops.fusion_norm.triton_kernel import FusionNormConfig, fusion_layer_norm_triton
    from hrsam.ops.lowering import engine_kernels
    from tests.test_fusion_norm import make_case, reference_of

    op = triton_fusion_layer_norm_op()
    for main, anchor, channels in [((6, 10), (4, 3), 40), ((8, 8), (8, 8), 64), ((5, 7), (9, 11), 24)]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            case = make_case(main, anchor, channels, batch=2, seed=channels)
            case["x"] = case["x"].to(dtype)
            want = reference_of(case)
            norm = case["norm"]
            args = (case["x"], *case["rows"], *case["cols"], norm.weight, norm.bias, norm.eps, anchor[1])
            results = [("op", op(*args))]
            for block_rows in (1, 4, 16):
                config = FusionNormConfig(block_rows, num_warps=2)
                results.append((config, fusion_layer_norm_triton(*args, config=config)))
            for name, got in results:
                got = got.view(want.shape)
                assert got.dtype == dtype, (name, got.dtype)
                if dtype == torch.float32:
                    error = (got - want).abs().max().item()
                    assert error < 1e-5, (main, name, error)
                else:  # two 16-bit steps of the value (see the module docstring)
                    bits = 7 if dtype == torch.bfloat16 else 10
                    step = want.float().abs() * 2.0 ** (1 - bits) + 2e-2
                    assert bool(((got.float() - want.float()).abs() <= step).all()), (main, dtype, name)
    print("kernel ok")

    from hrsam.modeling.configs import get_config
    from hrsam.modeling.encoder import HRSAMEncoder

    torch.manual_seed(0)
    encoder = HRSAMEncoder(get_config("hrsampp_tiny").encoder).eval()
    for norm in encoder.fusion_norms:
        torch.nn.init.normal_(norm.bias)
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = encoder(images)
        module._OP = op
        module.kernel_unsupported = lambda x: None
        with engine_kernels():
            got = encoder(images)
    error = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert error < 3e-2, error
    print(f"encoder ok {error:.1e}")
    """
)


def test_kernel_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    stdout = run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")
    assert "kernel ok" in stdout and "encoder ok" in stdout, stdout


@pytest.mark.gpu
@cuda
def test_kernel_at_hrsampp_2048_shapes() -> None:
    """128 x 128 main and 32 x 32 anchor tokens of 768 channels in bfloat16, kernel against reference:
    within one bf16 step of the value plus 1e-2 (the upsampled value's rounding before its norm)."""
    case = make_case((128, 128), (32, 32), 768, device="cuda")
    case["x"] = case["x"].bfloat16()
    assert fusion_module.kernel_unsupported(case["x"]) is None
    with engine_kernels():
        got = fusion_layer_norm(**case)
    want = reference_of(case)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    step = want.float().abs() * 2.0**-7 + 1e-2
    assert bool(((got.float() - want.float()).abs() <= step).all())
