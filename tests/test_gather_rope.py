"""``hrsam::gather_rope`` (the attention inputs' gather + RoPE in one pass) against its definition.

CPU: the torch reference against a float64 row-by-row evaluation of the formula (rows of src and
the extra rows, the rotation on the first ``rope_width`` columns only), the checks' named errors,
and which form a Flash Swin layer traces (the kernel only inside ``engine_kernels()`` on CUDA:
fake CUDA tensors, no GPU needed). The Triton kernel under Triton's interpreter (subprocess):
float32 within 1e-6 of the reference and bfloat16 within one bf16 step (both round the same
float32 value; only the order of the multiply-adds may differ), through the launcher and through
the ``triton_op``, and a Flash Swin layer through the kernel equal to its eager path (1e-6).

GPU (marker ``gpu``): HRSAM 2048's shapes (16,384 rows of a 2,304-wide qkv, head dim 64) in
bfloat16 and float32, kernel against reference.
"""

from __future__ import annotations

import collections
import contextlib
import re
import textwrap
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from hrsam import ops  # noqa: F401  (registers the hrsam:: operators)
from hrsam.modeling import flash_swin
from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention
from hrsam.modeling.window_plan import window_plan
from hrsam.ops import gather_rope as gather_rope_module
from hrsam.ops.gather_rope import gather_rope, gather_rope_reference
from hrsam.ops.lowering import engine_kernels
from tests.fresh_python import run_python

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def make_case(
    tokens: int = 45, dim: int = 48, head_dim: int = 16, extra_rows: int = 1, seed: int = 0, device: str = "cpu"
) -> dict:
    """qkv-like src [tokens, 3 dim], extra rows [extra_rows, 2 dim], an index with extra slots, tables."""
    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(tokens, 3 * dim, generator=generator)
    extra = torch.randn(extra_rows, 2 * dim, generator=generator) if extra_rows else None
    index = torch.randint(0, tokens + extra_rows, (tokens + 7,), generator=generator)
    angles = torch.rand(index.numel(), head_dim, generator=generator) * 6.0
    case = {"src": src, "extra": extra, "index": index, "cos": angles.cos(), "sin": angles.sin()}
    return {name: None if t is None else t.to(device) for name, t in case.items()}


def by_rows(src, extra, index, cos, sin, col: int, width: int, rope_width: int) -> torch.Tensor:  # noqa: ANN001
    """The definition, one output row at a time in float64: out[i] = R(i) row(index[i])."""
    rows = []
    for i, source in enumerate(index.tolist()):
        row = src[source, col : col + width] if source < src.shape[0] else extra[source - src.shape[0]]
        row = row.double().clone()
        for start in range(0, rope_width, cos.shape[1]):
            for j in range(0, cos.shape[1], 2):
                a, b = row[start + j].item(), row[start + j + 1].item()
                c0, s0 = cos[i, j].double().item(), sin[i, j].double().item()
                c1, s1 = cos[i, j + 1].double().item(), sin[i, j + 1].double().item()
                row[start + j], row[start + j + 1] = a * c0 + b * s0, b * c1 - a * s1
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize(
    ("col", "width", "rope_width", "with_extra"),
    [(0, 48, 48, False), (48, 96, 48, True), (48, 96, 96, True), (48, 96, 0, True), (16, 32, 16, False)],
    ids=["queries", "keys-values", "all-rotated", "copy-only", "inner-columns"],
)
def test_reference_matches_the_row_by_row_definition(col: int, width: int, rope_width: int, with_extra: bool) -> None:
    case = make_case(extra_rows=1 if with_extra else 0)
    if not with_extra:
        case["index"] = case["index"].clamp(max=case["src"].shape[0] - 1)
    got = gather_rope_reference(**case, col=col, width=width, rope_width=rope_width)
    want = by_rows(**case, col=col, width=width, rope_width=rope_width)
    assert got.shape == (case["index"].numel(), width) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_gather_rope_runs_the_reference_on_cpu() -> None:
    case = make_case()
    assert gather_rope_module.kernel_unsupported(case["src"]) is not None
    got = gather_rope(**case, col=48, width=96, rope_width=48)
    torch.testing.assert_close(got, gather_rope_reference(**case, col=48, width=96, rope_width=48), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(src=c["src"][:, ::2]), "contiguous rows"),
        (lambda c: c.update(index=c["index"].float()), "int32/int64"),
        (lambda c: c.update(cos=c["cos"][:-1]), "cos / sin must be"),
        (lambda c: c.update(cos=c["cos"].double(), sin=c["sin"].double()), "float32"),
        (lambda c: c.update(extra=c["extra"][:, :10]), "extra must be"),
        (lambda c: c.update(extra=c["extra"].half()), "dtype"),
    ],
    ids=["strided-src", "float-index", "table-rows", "table-dtype", "extra-width", "extra-dtype"],
)
def test_bad_inputs_are_named(change, message: str) -> None:  # noqa: ANN001
    case = make_case()
    change(case)
    with pytest.raises(ValueError, match=message):
        gather_rope(**case, col=48, width=96, rope_width=48)


@pytest.mark.parametrize(
    ("col", "width", "rope_width", "message"),
    [
        (48, 96, 40, "multiples"),
        (48, 90, 48, "multiples"),
        (48, 96, 112, "rope_width <= width"),
        (100, 96, 48, "outside"),
    ],
)
def test_bad_column_ranges_are_named(col: int, width: int, rope_width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gather_rope(**make_case(), col=col, width=width, rope_width=rope_width)


def _layer_trace(engine: bool) -> str:
    """Code of one Flash Swin layer traced on fake tensors."""
    torch.manual_seed(0)
    attention = FlashSwinAttention(32, 2).eval()
    layout = AttentionLayout.build(window_plan(((8, 8),), 4, 2, True), attention.head_dim, "cpu")
    params = dict(attention.named_parameters())

    def call(params: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(attention, params, (x, layout))

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(64, 32)
        with engine_kernels() if engine else contextlib.nullcontext(), torch.no_grad():
            return make_fx(call, tracing_mode="fake")(params, x).code


@pytest.mark.parametrize("engine", [True, False], ids=["engine", "eager"])
def test_only_engines_trace_the_kernel(engine: bool) -> None:
    """Where the kernel can run, its op replaces both index_selects and the RoPE, only inside ``engine_kernels()``.

    The kernel runs on CUDA only (next test); here it is declared available for CPU tensors to
    trace the layer without a GPU (fake CUDA tensors cannot be sliced by a CPU-only PyTorch).
    """
    pytest.importorskip("triton")
    op = gather_rope_module.triton_gather_rope_op()  # registering needs Triton, not a GPU

    def available(src: torch.Tensor) -> None:
        return None

    with mock.patch.multiple(gather_rope_module, _OP=op, kernel_unsupported=available):
        with mock.patch.object(flash_swin, "kernel_unsupported", available):
            with mock.patch("hrsam.ops.varlen_attention._check_offsets"):  # reads values: eager CPU only
                code = _layer_trace(engine)
    before_attention = code.split("varlen_attention")[0]
    assert (code.count("hrsam.gather_rope_triton") == 3) is engine, code  # q, k, v
    assert ("aten.index_select" in before_attention) is not engine, code


def test_when_the_kernel_can_run() -> None:
    src = torch.zeros(4, 8)
    assert "CUDA tensors, got cpu" in gather_rope_module.kernel_unsupported(src)
    with mock.patch.object(gather_rope_module, "_OP", None):
        assert "needs Triton" in gather_rope_module.kernel_unsupported(src.to("meta").as_subclass(_Cuda))


class _Cuda(torch.Tensor):
    """A tensor that says it is on CUDA (to reach the next check without a GPU)."""

    @property
    def is_cuda(self) -> bool:
        return True


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention
    from hrsam.modeling.window_plan import window_plan
    from hrsam.ops import gather_rope as module
    from hrsam.ops.gather_rope import gather_rope_reference, triton_gather_rope_op
    from hrsam.ops.gather_rope.triton_kernel import GatherRopeConfig, gather_rope_triton
    from hrsam.ops.lowering import engine_kernels
    from tests.test_gather_rope import make_case

    op = triton_gather_rope_op()
    # (tokens, dim, head dim, extra rows): rows not a multiple of the block, head dims 16 and 64
    for shape in [(45, 48, 16, 1), (70, 128, 64, 2), (33, 64, 32, 0)]:
        for col, width, rope_width in [(0, 1, 1), (1, 2, 1), (1, 2, 2), (1, 2, 0)]:
            tokens, dim, head_dim, extra_rows = shape
            for dtype in (torch.float32, torch.bfloat16):
                case = make_case(tokens, dim, head_dim, extra_rows, seed=col + width)
                if col == 0 or extra_rows == 0:  # queries, or keys / values without padding: src rows only
                    case["extra"], case["index"] = None, case["index"].clamp(max=tokens - 1)
                case["src"] = case["src"].to(dtype)
                if case["extra"] is not None:
                    case["extra"] = case["extra"].to(dtype)
                args = dict(col=col * dim, width=width * dim, rope_width=rope_width * dim)
                want = gather_rope_reference(**case, **args)
                results = [("op", op(**case, **args))]
                heads, rope_heads = width * dim // head_dim, rope_width * dim // head_dim
                for per_program in [n for n in (1, 2, 3) if heads % n == 0 and rope_heads % n == 0]:
                    for block_rows in (16, 64):
                        config = GatherRopeConfig(block_rows, per_program, num_warps=2)
                        results.append((config, gather_rope_triton(**case, **args, config=config)))
                for name, got in results:
                    assert got.dtype == dtype and got.shape == want.shape, (name, got.dtype, got.shape)
                    if dtype == torch.float32:
                        error = (got - want).abs().max().item()
                        assert error < 1e-6, (shape, args, name, error)
                    else:  # one bf16 step of the value at most
                        step = want.float().abs().clamp(min=1e-30) * 2.0**-7
                        assert bool(((got.float() - want.float()).abs() <= step).all()), (shape, args, name)
    print("kernel ok")

    # A Flash Swin layer through the kernel (forced on for CPU tensors) against its eager path.
    torch.manual_seed(0)
    attention = FlashSwinAttention(64, 4).eval()
    torch.nn.init.normal_(attention.padding)
    x = torch.randn(2 * 100, 64)
    layout = AttentionLayout.build(window_plan(((10, 10), (10, 10)), 4, 2, True), attention.head_dim, "cpu")
    with torch.no_grad():
        want = attention(x, layout)
        module._OP = op
        module.kernel_unsupported = lambda src: None
        with engine_kernels():
            got = attention(x, layout)
    error = ((got - want).abs().max() / want.abs().max()).item()
    assert error < 1e-6, error
    print(f"layer ok {error:.1e}")
    """
)


def test_kernel_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    stdout = run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")
    assert "kernel ok" in stdout and "layer ok" in stdout, stdout


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_at_hrsam_2048_shapes(dtype: torch.dtype) -> None:
    """16,384 query rows and 16,896 key/value slots (one padding row) of a 2,304-wide qkv, head dim 64."""
    case = make_case(tokens=16384, dim=768, head_dim=64, extra_rows=1, device="cuda")
    case["index"] = torch.cat([torch.randperm(16384), torch.full((512,), 16384)]).cuda()
    angles = torch.rand(16896, 64, device="cuda") * 6.0
    case |= {"cos": angles.cos(), "sin": angles.sin()}
    case["src"], case["extra"] = case["src"].to(dtype), case["extra"].to(dtype)
    assert gather_rope_module.kernel_unsupported(case["src"]) is None
    for col, width, rope_width in [(768, 1536, 768), (0, 768, 768)]:
        rows = case if col else dict(case, extra=None, index=case["index"][:16384], cos=angles[:16384].cos(),
                                     sin=angles[:16384].sin())  # fmt: skip
        got = gather_rope(**rows, col=col, width=width, rope_width=rope_width)
        want = gather_rope_reference(**rows, col=col, width=width, rope_width=rope_width)
        # The kernel may fuse x cos + r(x) sin into one multiply-add where PyTorch's kernels round
        # the product first: a float32 ulp of the terms (|terms| < 6 here) apart before rounding.
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
        else:
            step = want.float().abs() * 2.0**-7 + 2e-6
            assert bool(((got.float() - want.float()).abs() <= step).all())


@pytest.mark.parametrize(("rope_width", "heads"), [(768, 1), (768, 12), (0, 1)], ids=["rotated", "12-heads", "copied"])
def test_offline_sm90_compile_loads_rows_in_vectors(rope_width: int, heads: int) -> None:
    """The kernel compiles for sm_90 (the interpreter does not type-check) with 16-byte row loads.

    The integer arguments the model passes (src's row stride 2,304, column 768) are multiples of
    16, which Triton's launcher tells the compiler; with that the row reads vectorize, which is
    the point of the kernel (Inductor's gather loads element by element).
    """
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from hrsam.ops.gather_rope import triton_kernel

    if type(triton_kernel.gather_rope_kernel).__name__ != "JITFunction":
        pytest.skip("the kernel is interpreted in this process (TRITON_INTERPRET is set)")
    pointers = {"src": "*bf16", "extra": "*bf16", "index": "*i64", "cos": "*fp32", "sin": "*fp32", "out": "*bf16"}
    integers = {"rows": "i32", "src_rows": "i32", "src_stride": "i32", "col": "i32", "extra_stride": "i32"}
    constants = {
        "WIDTH": 1536,
        "ROPE_WIDTH": rope_width,
        "HEAD_DIM": 64,
        "HAS_EXTRA": True,
        "BLOCK": 32,
        "HEADS": heads,
    }
    signature = pointers | integers | {name: "constexpr" for name in constants}
    aligned = [*range(len(pointers)), 8, 9, 10]  # the pointers, src_stride, col, extra_stride
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    source = triton.compiler.ASTSource(triton_kernel.gather_rope_kernel, signature, constants, attrs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    accesses = collections.Counter(re.findall(r"\b((?:ld|st)\.global[\w.]*)", ptx))
    # Row indices are int64 (one 8-byte load each); every row and table access moves 16 bytes.
    assert set(accesses) == {"ld.global.b64", "ld.global.v4.b32", "st.global.v4.b32"}, accesses


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(block_rows=24), "block_rows must be a power of two"),
        (dict(num_warps=3), "num_warps must be a power of two"),
        (dict(heads_per_program=5), "must divide 24 heads and 12 rotated"),
        (dict(heads_per_program=0), "must divide"),
    ],
)
def test_launch_configs_that_cannot_tile_are_refused(config: dict, message: str) -> None:
    """A program's heads must all be rotated or all copied; the launcher refuses before any launch."""
    pytest.importorskip("triton")
    from hrsam.ops.gather_rope.triton_kernel import GatherRopeConfig

    with pytest.raises(ValueError, match=message):
        GatherRopeConfig(**config).check(heads=24, rope_heads=12)
    GatherRopeConfig(heads_per_program=12).check(heads=24, rope_heads=12)
