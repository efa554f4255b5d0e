"""The Triton backend of ``hrsam::varlen_attention`` against the reference.

CPU: the kernel runs under Triton's interpreter (in one subprocess: the interpreter must be on
before the kernel is decorated) at small shapes: random segments with separate query and key
lengths, empty query segments, an empty key segment, one segment, and the KV-padded window
layouts of small grids, each in float32, float16 and bfloat16, into an output poisoned with NaN
(so a row the kernel never writes fails). Also on the CPU: the launch description the TensorRT
plugin compiles from (argument order, constexprs, an offline sm_90 compile), input checks, and
the backend registration.

GPU (marker ``gpu``): the full 2048 layouts (128 x 128 tokens, window 16, plain and shifted, KV
padding) and the HRSAM++ multi-scale layout with 12 heads x 64, fresh random inputs, against
the reference computed in float64 from the same rounded inputs; the kernel inside a
``torch.library.triton_op`` under ``torch.compile``.

Tolerances: max |out - ref| on randn inputs (outputs below ~1 in magnitude). float16 2e-3 and
bfloat16 1.6e-2 (output rounding, 2**-11 and 2**-8 relative, and P rounded to the input dtype
before P @ V, with headroom); float32: tf32x3 (default) 5e-5, ieee 2e-5, tf32 5e-3 (10-bit
mantissa operands). The interpreter computes every float32 dot exactly, so CPU float32 uses 1e-5.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch

from hrsam.modeling.window_plan import window_plan
from hrsam.ops import available_backends, use_backend, varlen_attention
from hrsam.ops.varlen_attention.reference import varlen_attention_reference
from tests.fresh_python import run_python

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
GPU_TOLERANCES = {
    (torch.float32, "tf32x3"): 5e-5,
    (torch.float32, "ieee"): 2e-5,
    (torch.float32, "tf32"): 5e-3,
    (torch.float16, None): 2e-3,
    (torch.bfloat16, None): 1.6e-2,
}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def random_inputs(
    cu_q: torch.Tensor, cu_k: torch.Tensor, heads: int, dim: int, dtype: torch.dtype, device: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v drawn in float32 on ``device`` and rounded to ``dtype``."""
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = ((int(cu_q[-1]), heads, dim), (int(cu_k[-1]), heads, dim), (int(cu_k[-1]), heads, dim))
    return tuple(torch.randn(s, generator=g, device=device).to(dtype) for s in shapes)


def max_error(
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    heads: int,
    dim: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    **options: object,
) -> float:
    """Run the Triton launcher into a NaN-poisoned output; max |out - float64 reference|.

    Fails if any output row is left unwritten (NaN) or the launcher does not return ``out``.
    """
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    cu_q, cu_k = cu_q.to(device), cu_k.to(device)
    q, k, v = random_inputs(cu_q, cu_k, heads, dim, dtype, device, seed)
    lengths_q, lengths_k = cu_q.diff(), cu_k.diff()
    sizes = (int(lengths_q.max()), int(lengths_k.max()), dim**-0.5)
    out = torch.full_like(q, float("nan"))
    result = varlen_attention_triton(q, k, v, cu_q, cu_k, *sizes, out=out, **options)
    assert result is out and out.dtype == dtype
    assert bool(torch.isfinite(out).all()), "rows left unwritten"
    ref = varlen_attention_reference(q.double(), k.double(), v.double(), cu_q, cu_k, *sizes)
    return (out.double() - ref).abs().max().item() if out.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# CPU: the kernel under Triton's interpreter (run in a subprocess by ``interpreter_results``).


def _check_all_dtypes(cu_q: torch.Tensor, cu_k: torch.Tensor, heads: int, dim: int, **options: object) -> None:
    for dtype in DTYPES:
        err = max_error(cu_q, cu_k, heads, dim, dtype, **options)
        assert err < CPU_TOLERANCES[dtype], (str(dtype), err)


def _case_random_segments() -> None:
    """Independent query and key lengths (keys shorter or longer, tails of every size), 2 query
    blocks per long segment with 16-row blocks; head dims 16 and 128 as well as 32."""
    from hrsam.ops.varlen_attention.triton_kernel import AttentionConfig

    g = torch.Generator().manual_seed(1)
    len_q = torch.randint(1, 40, (6,), generator=g).tolist()
    len_k = torch.randint(1, 50, (6,), generator=g).tolist()
    small = AttentionConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)
    _check_all_dtypes(cu_seqlens(len_q), cu_seqlens(len_k), 2, 32, config=small)
    _check_all_dtypes(cu_seqlens(len_q), cu_seqlens(len_k), 2, 32)  # default blocks (64/128 rows)
    for dim in (16, 128):
        err = max_error(cu_seqlens(len_q), cu_seqlens(len_k), 1, dim, torch.float32, config=small)
        assert err < CPU_TOLERANCES[torch.float32], (dim, err)


def _case_empty_query_segments() -> None:
    """Segments without queries (first, middle, last) write nothing; the others are unaffected."""
    _check_all_dtypes(cu_seqlens([0, 7, 0, 0, 33, 0]), cu_seqlens([5, 9, 1, 16, 40, 3]), 2, 32)


def _case_empty_key_segment() -> None:
    """Queries of a segment without keys get zeros, like the reference."""
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    _check_all_dtypes(cu_seqlens([5, 4]), cu_seqlens([0, 6]), 2, 16)
    cu_q, cu_k = cu_seqlens([5, 4]), cu_seqlens([0, 6])
    q, k, v = random_inputs(cu_q, cu_k, 2, 16, torch.float32, "cpu", 0)
    out = varlen_attention_triton(q, k, v, cu_q, cu_k, 5, 6, 0.25)
    assert bool((out[:5] == 0).all()) and bool((out[5:] != 0).any())


def _case_one_segment() -> None:
    """A single segment is plain attention (checked against SDPA, not only the reference)."""
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    _check_all_dtypes(cu_seqlens([37]), cu_seqlens([53]), 3, 16)
    q, k, v = random_inputs(cu_seqlens([37]), cu_seqlens([53]), 3, 16, torch.float32, "cpu", 2)
    out = varlen_attention_triton(q, k, v, cu_seqlens([37]), cu_seqlens([53]), 37, 53, 0.25)
    sdpa = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(0, 1) for t in (q, k, v)), scale=0.25)
    torch.testing.assert_close(out, sdpa.transpose(0, 1), rtol=1e-5, atol=1e-5)


def _case_window_layouts() -> None:
    """The model's layouts on small grids: plain, shifted (border windows with fewer queries),
    multi-scale, and shifted without padding; head dim 64 and the default blocks."""
    for grids, window, shift, padding in (
        (((20, 24),), 8, 0, True),
        (((20, 24),), 8, 4, True),
        (((20, 24), (8, 8)), 8, 4, True),
        (((20, 24),), 8, 4, False),
        (((24, 40),), 16, 8, True),
    ):
        plan = window_plan(grids, window, shift, padding)
        _check_all_dtypes(plan.cu_seqlens_q, plan.cu_seqlens_k, 2, 64)


INTERPRETER_CASES: dict[str, Callable[[], None]] = {
    "random_segments": _case_random_segments,
    "empty_query_segments": _case_empty_query_segments,
    "empty_key_segment": _case_empty_key_segment,
    "one_segment": _case_one_segment,
    "window_layouts": _case_window_layouts,
}


def _interpret_bf16_dots_as_float32() -> None:
    """Make the interpreter's dot see bfloat16 operands as float32 values.

    Triton's interpreter stores bfloat16 as uint16 bit patterns and (bfloat16 being documented as
    unsupported there) its dot multiplies those patterns. On the GPU, bf16 tensor cores form exact
    products in float32, which converting the operands to float32 reproduces.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_dot

    def as_float32(handle: interpreter.TensorHandle) -> interpreter.TensorHandle:
        if handle.dtype != tl.bfloat16:
            return handle
        return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)

    def create_dot(self: object, a: interpreter.TensorHandle, b: interpreter.TensorHandle, *rest: object) -> object:
        return original(self, as_float32(a), as_float32(b), *rest)

    interpreter.InterpreterBuilder.create_dot = create_dot


def run_interpreter_cases() -> dict[str, str]:
    """Every interpreter case by name: "ok" or the failure (called in the subprocess)."""
    _interpret_bf16_dots_as_float32()
    results = {}
    for name, case in INTERPRETER_CASES.items():
        try:
            case()
            results[name] = "ok"
        except Exception as error:  # reported per case by the parent test
            results[name] = f"{type(error).__name__}: {error}"
    return results


@pytest.fixture(scope="module")
def interpreter_results() -> dict[str, str]:
    pytest.importorskip("triton")
    script = (
        "import json, tests.test_varlen_attention_triton as t; print('RESULTS', json.dumps(t.run_interpreter_cases()))"
    )
    stdout = run_python(["-c", script], TRITON_INTERPRET="1")
    line = next(line for line in stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(INTERPRETER_CASES))
def test_kernel_under_the_interpreter(interpreter_results: dict[str, str], case: str) -> None:
    assert interpreter_results[case] == "ok"


# ---------------------------------------------------------------------------------------------
# CPU: launch description, input checks, registration (no kernel launch).


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dtype": torch.float64}, "float32, float16 or bfloat16"),
        ({"head_dim": 48}, "head dim"),
        ({"num_heads": 0}, "num_heads"),
        ({"precision": "fp64"}, "precision"),
        ({"config_block": 24}, "power of two"),
    ],
)
def test_describe_launch_names_bad_input(kwargs: dict, match: str) -> None:
    pytest.importorskip("triton")
    from hrsam.ops.varlen_attention.triton_kernel import AttentionConfig, describe_launch

    args = {"dtype": torch.float16, "num_heads": 12, "head_dim": 64, "scale": 0.125}
    kwargs = dict(kwargs)  # the parametrized dict is shared between runs
    if "config_block" in kwargs:
        args["config"] = AttentionConfig(kwargs.pop("config_block"), 64, 4, 2)
    with pytest.raises(ValueError, match=match):
        describe_launch(**{**args, **kwargs})


def test_launch_description_matches_the_kernel() -> None:
    """The signature lists every kernel parameter in order; the AOT-relevant facts hold."""
    pytest.importorskip("triton")
    from hrsam.ops.varlen_attention.triton_kernel import ARGUMENTS, describe_launch

    launch = describe_launch(torch.bfloat16, 12, 64, 0.125)
    signature = launch.signature()
    assert list(signature) == list(launch.kernel.arg_names)
    assert list(signature)[: len(ARGUMENTS)] == list(ARGUMENTS)
    assert [signature[a] for a in ARGUMENTS] == ["*bf16"] * 3 + ["*i32"] * 2 + ["*bf16"]
    assert {n for n, t in signature.items() if t == "constexpr"} == set(launch.constexprs())
    assert launch.precision == "tf32" and describe_launch(torch.float32, 3, 64, 0.125).precision == "tf32x3"
    assert launch.grid(81, 256) == (math.ceil(256 / launch.config.block_m), 81 * 12, 1)
    assert sorted(launch.attrs()) == [(0,), (1,), (2,), (5,)]


def test_offline_sm90_compile_of_the_launch_description() -> None:
    """What a TensorRT aot_impl does: compile for sm_90 from the description alone (no GPU)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from hrsam.ops.varlen_attention.triton_kernel import describe_launch

    launch = describe_launch(torch.float16, 12, 64, 0.125)
    if type(launch.kernel).__name__ != "JITFunction":
        pytest.skip("the kernel is interpreted in this process (TRITON_INTERPRET is set)")
    source = triton.compiler.ASTSource(launch.kernel, launch.signature(), launch.constexprs(), launch.attrs())
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    entry = ptx[ptx.index(".entry") : ptx.index(")", ptx.index(".entry"))]
    assert entry.count(".param .u64") >= 6  # the six pointers (Triton may append scratch pointers)
    assert f".reqntid {launch.num_warps * 32}" in ptx
    assert "wgmma" in ptx  # sm_90 tensor-core dots, not an FMA fallback
    assert compiled.metadata.global_scratch_size == 0


def test_launcher_checks_before_launching() -> None:
    pytest.importorskip("triton")
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    q = torch.zeros(4, 2, 16)
    cu = cu_seqlens([4])
    with pytest.raises(ValueError, match="out must be"):
        varlen_attention_triton(q, q, q, cu, cu, 4, 4, 0.25, out=torch.empty(4, 2, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match="head dim"):
        varlen_attention_triton(q, q, torch.zeros(4, 2, 32), cu, cu, 4, 4, 0.25)
    many = torch.zeros(40000, dtype=torch.int32)
    with pytest.raises(ValueError, match="exceed the grid"):
        varlen_attention_triton(q, q, q, many, many, 4, 4, 0.25)


def test_backend_is_registered_after_torch_and_skips_cpu_tensors() -> None:
    names = available_backends("varlen_attention")
    assert names.index("triton") == names.index("torch") + 1
    q = torch.zeros(4, 2, 64)
    assert "triton" not in available_backends("varlen_attention", q, q, q)


# ---------------------------------------------------------------------------------------------
# GPU: full-size layouts against the float64 reference.


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("shift", [0, 8])
@pytest.mark.parametrize("dtype,precision", list(GPU_TOLERANCES))
def test_gpu_full_2048_layout(shift: int, dtype: torch.dtype, precision: str | None) -> None:
    """HRSAM at 2048 input: 128 x 128 tokens, window 16, KV-only padding, 12 heads x 64."""
    plan = window_plan(((128, 128),), 16, shift, True)
    err = max_error(plan.cu_seqlens_q, plan.cu_seqlens_k, 12, 64, dtype, "cuda", seed=shift, precision=precision)
    assert err < GPU_TOLERANCES[(dtype, precision)]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("shift", [0, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_multiscale_layout(shift: int, dtype: torch.dtype) -> None:
    """HRSAM++ at 2048: the 128 x 128 grid and the 32 x 32 anchor grid in one call."""
    plan = window_plan(((128, 128), (32, 32)), 16, shift, True)
    precision = "tf32x3" if dtype == torch.float32 else None
    err = max_error(plan.cu_seqlens_q, plan.cu_seqlens_k, 12, 64, dtype, "cuda", seed=10 + shift, precision=precision)
    assert err < GPU_TOLERANCES[(dtype, precision)]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_irregular_segments(dtype: torch.dtype) -> None:
    """Empty query segments, an empty key segment, keys shorter than queries, tails, 3 heads."""
    cu_q, cu_k = cu_seqlens([0, 300, 17, 0, 256, 5]), cu_seqlens([7, 129, 0, 64, 256, 300])
    precision = "tf32x3" if dtype == torch.float32 else None
    assert max_error(cu_q, cu_k, 3, 64, dtype, "cuda", seed=3) < GPU_TOLERANCES[(dtype, precision)]


@pytest.mark.gpu
@cuda
def test_gpu_op_routes_to_the_triton_backend() -> None:
    """Forced through the public op (shifted 1024 layout, 3 heads): same result as the launcher."""
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    plan = window_plan(((64, 64),), 16, 8, True)
    cu_q, cu_k = plan.cu_seqlens_q.cuda(), plan.cu_seqlens_k.cuda()
    q, k, v = random_inputs(cu_q, cu_k, 3, 64, torch.float16, "cuda", 4)
    args = (cu_q, cu_k, plan.max_seqlen_q, plan.max_seqlen_k)
    assert "triton" in available_backends("varlen_attention", q, k, v)
    with use_backend("varlen_attention", "triton"):
        out = varlen_attention(q, k, v, *args)
    torch.testing.assert_close(out, varlen_attention_triton(q, k, v, *args, 0.125), rtol=0, atol=0)


@pytest.mark.gpu
@cuda
def test_gpu_launcher_inside_triton_op_under_torch_compile() -> None:
    """The launcher as the body of a ``torch.library.triton_op``, compiled with fullgraph=True."""
    from hrsam.ops.varlen_attention.triton_kernel import varlen_attention_triton

    @torch.library.triton_op("hrsam_test::varlen_attention_triton", mutates_args=())
    def attention(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
        max_q: int, max_k: int, scale: float,
    ) -> torch.Tensor:
        return varlen_attention_triton(q, k, v, cu_q, cu_k, max_q, max_k, scale)

    plan = window_plan(((64, 64),), 16, 8, True)
    cu_q, cu_k = plan.cu_seqlens_q.cuda(), plan.cu_seqlens_k.cuda()
    q, k, v = random_inputs(cu_q, cu_k, 3, 64, torch.bfloat16, "cuda", 5)

    def layer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return attention(q * 1.0, k, v, cu_q, cu_k, plan.max_seqlen_q, plan.max_seqlen_k, 0.125) + 1.0

    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), layer(q, k, v), rtol=0, atol=0)
