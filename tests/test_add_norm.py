"""``hrsam::add_layer_norm`` (a residual add with a row gather and the LayerNorm after it) against its definition.

CPU: the torch reference against a float64 row-by-row evaluation, the checks' named errors, the
CPU form equal to the block's former two steps, and which form a transformer block traces (the
kernel only inside ``engine_kernels()`` in 16-bit: fake tensors, no GPU needed). The Triton kernel
under Triton's interpreter (subprocess): the sum bit-equal to the reference's in float32 and
float16 (both round the same float32 sum; the interpreter truncates to bfloat16, so there within
one step, the GPU test checks equality), the norm of the kernel's sum within 1e-5 in float32 and
one 16-bit step in bfloat16 / float16 (only the reductions' order differs), through the launcher
(several launch shapes) and the ``triton_op``, and an encoder block through the kernel against
its eager path (2e-2 relative, bf16 autocast: the norm's output is rounded once either way).

GPU (marker ``gpu``): HRSAM 2048's shape (16,384 rows of 768) in bfloat16, kernel against reference.
"""

from __future__ import annotations

import contextlib
import textwrap
from unittest import mock

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from hrsam.ops import add_norm as add_norm_module
from hrsam.ops import fusion_norm as fusion_norm_module
from hrsam.ops.add_norm import add_layer_norm, add_layer_norm_reference
from hrsam.ops.lowering import engine_kernels
from tests.fresh_python import run_python

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_case(rows: int = 37, width: int = 48, gather: bool = True, seed: int = 0, device: str = "cpu") -> dict:
    """Residual x [rows, width], delta with a few extra rows, a permutation-like index, affine weights."""
    generator = torch.Generator().manual_seed(seed)
    delta_rows = rows + 5 if gather else rows
    case = {
        "x": torch.randn(rows, width, generator=generator) * 3.0 + 1.0,
        "delta": torch.randn(delta_rows, width, generator=generator),
        "index": torch.randperm(delta_rows, generator=generator)[:rows] if gather else None,
        "weight": torch.rand(width, generator=generator) + 0.5,
        "bias": torch.randn(width, generator=generator),
    }
    return {name: None if t is None else t.to(device) for name, t in case.items()}


def norm_of(case: dict, eps: float = 1e-6) -> nn.LayerNorm:
    norm = nn.LayerNorm(case["x"].shape[1], eps=eps).to(case["x"].device)
    with torch.no_grad():
        norm.weight.copy_(case["weight"])
        norm.bias.copy_(case["bias"])
    return norm


def by_rows(x, delta, index, weight, bias, eps: float) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """The definition one row at a time in float64."""
    totals, normed = [], []
    for i in range(x.shape[0]):
        source = i if index is None else int(index[i])
        total = x[i].double() + delta[source].double()
        mean = total.mean()
        variance = ((total - mean) ** 2).mean()
        totals.append(total)
        normed.append((total - mean) / torch.sqrt(variance + eps) * weight.double() + bias.double())
    return torch.stack(totals), torch.stack(normed)


@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "aligned"])
def test_reference_matches_the_row_by_row_definition(gather: bool) -> None:
    case = make_case(gather=gather)
    total, normed = add_layer_norm_reference(**case, eps=1e-6)
    want_total, want_normed = by_rows(**case, eps=1e-6)
    assert total.dtype == normed.dtype == torch.float32
    torch.testing.assert_close(total.double(), want_total, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(normed.double(), want_normed, atol=1e-5, rtol=1e-5)


def test_cpu_form_is_the_blocks_former_two_steps() -> None:
    """Outside the engines: x + delta[index], then the module norm (float32 under autocast), bit for bit."""
    case = make_case()
    norm = norm_of(case)
    total, normed = add_layer_norm(case["x"], case["delta"], case["index"], norm)
    want = case["x"] + case["delta"].index_select(0, case["index"])
    assert torch.equal(total, want) and torch.equal(normed, norm(want))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, delta = case["x"].bfloat16(), case["delta"].bfloat16()
        total, normed = add_layer_norm(x, delta, case["index"], norm)
        want = x + delta.index_select(0, case["index"])
        assert torch.equal(total, want) and torch.equal(normed, norm(want))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(x=c["x"][:, :10]), "x and delta must be"),
        (lambda c: c.update(index=None), "without an index"),
        (lambda c: c.update(index=c["index"].float()), "int32/int64"),
        (lambda c: c.update(index=c["index"][:-1]), "with x's 37 rows"),
    ],
    ids=["width", "rows", "float-index", "index-rows"],
)
def test_bad_inputs_are_named(change, message: str) -> None:  # noqa: ANN001
    case = make_case()
    norm = norm_of(case)
    change(case)
    with pytest.raises(ValueError, match=message):
        add_layer_norm(case["x"], case["delta"], case["index"], norm)


def test_the_norm_must_fit() -> None:
    case = make_case()
    with pytest.raises(ValueError, match="affine LayerNorm over 48"):
        add_layer_norm(case["x"], case["delta"], case["index"], nn.LayerNorm(48, elementwise_affine=False))


@pytest.mark.parametrize("module", [add_norm_module, fusion_norm_module], ids=["add_norm", "fusion_norm"])
def test_when_the_kernel_can_run(module) -> None:  # noqa: ANN001
    """Both 16-bit engine kernels (``hrsam.ops.lowering.half_kernel_unsupported``) name why they cannot run."""
    x = torch.zeros(4, 8)
    assert "CUDA tensors, got cpu" in module.kernel_unsupported(x)
    fake_cuda = x.to("meta").as_subclass(_Cuda)
    assert "16-bit only" in module.kernel_unsupported(fake_cuda)
    with mock.patch.object(module, "_OP", None):
        assert "needs Triton" in module.kernel_unsupported(fake_cuda.bfloat16().as_subclass(_Cuda))


class _Cuda(torch.Tensor):
    """A tensor that says it is on CUDA (to reach the next check without a GPU)."""

    @property
    def is_cuda(self) -> bool:
        return True


def _block_trace(engine: bool) -> str:
    """Code of one encoder block traced on fake bf16 tensors."""
    from hrsam.modeling.encoder import Block
    from hrsam.modeling.flash_swin import AttentionLayout
    from hrsam.modeling.window_plan import window_plan

    torch.manual_seed(0)
    block = Block(32, 2, 2.0).eval().bfloat16()
    layout = AttentionLayout.build(window_plan(((8, 8),), 4, 2, True), 16, "cpu")
    params = dict(block.named_parameters())

    def call(params: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(block, params, (x, layout))

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(64, 32, dtype=torch.bfloat16)
        with engine_kernels() if engine else contextlib.nullcontext(), torch.no_grad():
            return make_fx(call, tracing_mode="fake")(params, x).code


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "eager"])
def test_only_engines_trace_the_kernel(engine: bool) -> None:
    """In an engine the block's inverse gather, residual add and norm2 are one op; eager keeps the torch ops.

    The kernel runs on CUDA only (next tests); here it is declared available for CPU tensors to
    trace the block without a GPU (the attention keeps its torch form: its kernels are not forced).
    """
    pytest.importorskip("triton")
    op = add_norm_module.triton_add_layer_norm_op()  # registering needs Triton, not a GPU
    with mock.patch.multiple(add_norm_module, _OP=op, kernel_unsupported=lambda x: None):
        with mock.patch("hrsam.ops.varlen_attention._check_offsets"):  # reads values: eager CPU only
            code = _block_trace(engine)
    after_attention = code.split("hrsam.varlen_attention")[-1]
    assert (code.count("hrsam.add_layer_norm_triton") == 1) is engine, code
    assert (after_attention.count("aten.native_layer_norm") == 0) is engine, code
    assert ("aten.index_select" in after_attention) is not engine, code


def _encoder_trace(name: str) -> str:
    """Code of a tiny encoder at 128 x 128 traced on fake bf16 tensors inside ``engine_kernels()``."""
    from hrsam.modeling.configs import get_config
    from hrsam.modeling.encoder import HRSAMEncoder

    torch.manual_seed(0)
    encoder = HRSAMEncoder(get_config(name).encoder).eval().bfloat16()
    encoder.prepare(128, 128)
    params = dict(encoder.named_parameters())

    def call(params: dict, images: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(encoder, params, (images,))

    with FakeTensorMode(allow_non_fake_inputs=True):
        images = torch.empty(1, 3, 128, 128, dtype=torch.bfloat16)
        with engine_kernels(), torch.no_grad():
            return make_fx(call, tracing_mode="fake")(params, images).code


@pytest.mark.parametrize(("name", "kernels"), [("hrsam_tiny", 23), ("hrsampp_tiny", 24)])
def test_every_residual_add_before_a_norm_is_one_kernel(name: str, kernels: int) -> None:
    """12 blocks: each block's norm2, and each block output with the norm that reads it next (the next
    block's norm1, a stage's Cycle-scan's in_norm, HRSAM++'s multi-scale scan's); only HRSAM's last
    block output has none (it goes to the neck). The remaining LayerNorms: the first block's norm1,
    the Cycle-scans' in_norm after their own residual add and out_norm, HRSAM++'s fusion norms."""
    pytest.importorskip("triton")
    op = add_norm_module.triton_add_layer_norm_op()
    with mock.patch.multiple(add_norm_module, _OP=op, kernel_unsupported=lambda x: None):
        with mock.patch("hrsam.ops.varlen_attention._check_offsets"):
            code = _encoder_trace(name)
    assert code.count("hrsam.add_layer_norm_triton") == kernels, code.count("hrsam.add_layer_norm_triton")


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.modeling.encoder import Block
    from hrsam.modeling.flash_swin import AttentionLayout
    from hrsam.modeling.window_plan import window_plan
    from hrsam.ops import add_norm as module
    from hrsam.ops.add_norm import add_layer_norm_reference, triton_add_layer_norm_op
    from hrsam.ops.add_norm.triton_kernel import AddNormConfig, add_layer_norm_triton
    from hrsam.ops.lowering import engine_kernels
    from tests.test_add_norm import make_case

    op = triton_add_layer_norm_op()
    for rows, width in [(37, 48), (64, 64), (5, 100)]:  # rows off the block, widths off a power of two
        for gather in (True, False):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                case = make_case(rows, width, gather, seed=rows + width)
                case["x"], case["delta"] = case["x"].to(dtype), case["delta"].to(dtype)
                want_total, want = add_layer_norm_reference(**case, eps=1e-5)
                results = [("op", op(**case, eps=1e-5))]
                for block_rows in (1, 4, 16):
                    config = AddNormConfig(block_rows, num_warps=2)
                    results.append((config, add_layer_norm_triton(**case, eps=1e-5, config=config)))
                for name, (total, normed) in results:
                    assert total.dtype == normed.dtype == dtype, (name, total.dtype, normed.dtype)
                    if dtype == torch.bfloat16:  # the interpreter truncates to bf16 (GPUs round to nearest)
                        step = want_total.float().abs() * 2.0**-7
                        assert bool(((total.float() - want_total.float()).abs() <= step).all()), (rows, width, name)
                        want = add_layer_norm_reference(total, total.new_zeros(()).expand_as(total), None,
                                                        case["weight"], case["bias"], 1e-5)[1]  # fmt: skip
                    else:
                        assert torch.equal(total, want_total), (rows, width, gather, dtype, name)
                    if dtype == torch.float32:
                        error = (normed - want).abs().max().item()
                        assert error < 1e-5, (rows, width, gather, name, error)
                    else:  # one 16-bit step of the value at most
                        bits = 7 if dtype == torch.bfloat16 else 10
                        step = want.float().abs() * 2.0**-bits + 1e-5
                        assert bool(((normed.float() - want.float()).abs() <= step).all()), (rows, width, name)
    print("kernel ok")

    # An encoder block through the kernel (forced on for CPU tensors) against its eager path.
    torch.manual_seed(0)
    block = Block(64, 4, 2.0).eval()
    torch.nn.init.normal_(block.attn.padding)
    torch.nn.init.normal_(block.norm2.bias)
    x = torch.randn(2 * 100, 64).bfloat16()
    layout = AttentionLayout.build(window_plan(((10, 10), (10, 10)), 4, 2, True), 16, "cpu")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = block(x, layout)
        module._OP = op
        module.kernel_unsupported = lambda x: None
        with engine_kernels():
            got = block(x, layout)
    error = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert error < 2e-2, error
    print(f"block ok {error:.1e}")

    # HRSAM++'s tiny encoder, every residual add + norm through the kernel, against its eager path.
    from hrsam.modeling.configs import get_config
    from hrsam.modeling.encoder import HRSAMEncoder

    torch.manual_seed(0)
    encoder = HRSAMEncoder(get_config("hrsampp_tiny").encoder).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with engine_kernels():
            got = encoder(images)
        module.kernel_unsupported = lambda x: "off"
        want = encoder(images)
    error = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert error < 3e-2, error
    print(f"encoder ok {error:.1e}")
    """
)


def test_kernel_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    stdout = run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")
    assert "kernel ok" in stdout and "block ok" in stdout and "encoder ok" in stdout, stdout


@pytest.mark.gpu
@cuda
def test_kernel_at_hrsam_2048_shapes() -> None:
    """16,384 rows of 768 in bfloat16, delta gathered by a permutation (the block's inverse window order)."""
    case = make_case(rows=16384, width=768, device="cuda")
    case["x"], case["delta"] = case["x"].bfloat16(), case["delta"].bfloat16()
    assert add_norm_module.kernel_unsupported(case["x"]) is None
    for index in (case["index"], None):
        delta = case["delta"] if index is not None else case["delta"][:16384]
        norm = norm_of(dict(case, delta=delta))
        with engine_kernels():
            total, normed = add_layer_norm(case["x"], delta, index, norm)
        want_total, want = add_layer_norm_reference(case["x"], delta, index, case["weight"], case["bias"], 1e-6)
        assert torch.equal(total, want_total)
        step = want.float().abs() * 2.0**-7 + 1e-5
        assert bool(((normed.float() - want.float()).abs() <= step).all())
