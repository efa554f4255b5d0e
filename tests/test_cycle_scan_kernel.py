"""The Cycle-scan's L-step kernel (``hrsam.ops.selective_scan.cycle``) against its definition.

The definition is the tiled scan: R copies of the sequence, one scan over R L steps, the copies'
outputs weighted per channel and summed (``cycle_scan_tiled``, float64 here).

CPU: the C kernel (``cpu_scan.c``, two passes over L) in float32 within 1e-6 of the float64
definition (one and several tiles, uneven dim / N / L, R = 1, 2, 3, softplus on and off), and the
``CycleScan`` module's eager CPU output through it equal to its tiled path (5e-6). When the model
takes the kernel (``cycle_kernel_unsupported``), the errors ``cycle_scan`` raises, and that the
export check reads the right flag inside real compile / export traces. The Triton kernels
(``triton_cycle``) under Triton's interpreter (subprocess), y float32 token-major within 1e-6 of
the definition: contiguous float32 inputs on shapes with one and several chunks; the model's
layout, u, delta, B, C as transposed views of wider token-major bf16 tensors read in place, with L
a multiple of neither the tile nor the chunk and dim not of the block, against the definition on
the same bf16 values (with and without prefetching, 4 and 8 steps per tile); the same through the
``triton_op`` AOTInductor exports trace (``hrsam::cycle_scan_triton``); the module through them
(u, dt, B, C passed as views) equal to its tiled path, float32 (5e-6) and bf16 autocast (1e-2).
Which op an AOTInductor export reaches; the fake's dtype and strides against the real output; a
real sm_90 compile of the kernels (the interpreter does not type-check Triton code), the step
kernels' PTX free of shuffles. The interpreter cannot trace
a ``triton_op`` (torch.export hands its launches fake tensors), so the package's compile of the
kernels is a GPU test's (``tests/test_aoti.py``).

GPU (marker ``gpu``): HRSAM's full-size call (dim 768, N 32, L 16384 and 4096, R 3) against the
tiled Triton scan, and the HRSAM encoder's eager output with the kernel path against the tiled path.
"""

from __future__ import annotations

import textwrap
from unittest import mock

import pytest
import torch

from hrsam.modeling.cycle_scan import CycleScan
from hrsam.ops import use_backend
from hrsam.ops.lowering import aot_lowering
from hrsam.ops.selective_scan import cpu_backend, cycle
from hrsam.ops.selective_scan.cycle import cycle_kernel_unsupported, cycle_scan, cycle_scan_tiled
from hrsam.ops.selective_scan.inductor import dense_in_stride_order
from tests.fresh_python import run_python
from tests.test_compiled import traced_values
from tests.test_selective_scan import make_inputs

_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import types

    import torch
    from hrsam.modeling import cycle_scan as cycle_scan_module
    from hrsam.modeling.cycle_scan import CycleScan
    from hrsam.ops.selective_scan import cycle, triton_cycle
    from hrsam.ops.selective_scan.cycle import cycle_scan_tiled
    from hrsam.ops.selective_scan.triton_kernel import ScanConfig
    from tests.test_selective_scan import make_inputs

    def relative(got, want):
        return ((got.double() - want).abs().max() / want.abs().max()).item()

    def token_major(got):
        return got.dtype == torch.float32 and got.transpose(1, 2).is_contiguous()

    # (a) contiguous float32 [batch, dim, L] (batch, dim, N, L): several chunks with uneven
    # everything; batch 2; one chunk only.
    for case in [(1, 40, 7, 150), (2, 64, 32, 333), (1, 32, 16, 64)]:
        for repeats, softplus in [(1, True), (2, False), (3, True)]:
            inputs = make_inputs(*case, torch.float32, positive_dt=not softplus, seed=repeats)
            weights = torch.randn(case[1], repeats, generator=torch.Generator().manual_seed(repeats))
            want = cycle_scan_tiled(*[t.double() for t in inputs], weights.double(), softplus)
            got = triton_cycle.cycle_scan_triton(*inputs, weights, softplus)
            error = relative(got, want)
            assert error < 1e-6 and token_major(got), (case, repeats, softplus, error)
            print(f"{case} R={repeats} softplus={softplus}: {error:.1e}")

    # (b) the model's layout: u, delta, B, C as [batch, k, L] transposed views of wider token-major
    # bf16 tensors (channel stride 1), read in place. L = 333 is a multiple of neither the tile
    # (steps) nor the chunk length (64 here), dim = 40 not of BLOCK_D. The definition runs on the
    # same bf16 values in float64, so only the kernel's float32 arithmetic differs.
    batch, dim, dstate, length = 2, 40, 16, 333
    u, delta, A, B, C, D, bias = make_inputs(batch, dim, dstate, length, torch.float32, seed=7)
    xz = torch.randn(batch, length, 2 * dim + 3, dtype=torch.bfloat16)  # u = its first dim channels
    ssm = torch.randn(batch, length, dim + 2 * dstate, dtype=torch.bfloat16)  # [dt, B, C]
    xz[..., :dim] = u.transpose(1, 2)
    ssm[..., :dim] = delta.transpose(1, 2)
    ssm[..., dim : dim + dstate] = B.transpose(1, 2)
    ssm[..., dim + dstate :] = C.transpose(1, 2)
    views = (xz[..., :dim], ssm[..., :dim], ssm[..., dim : dim + dstate], ssm[..., dim + dstate :])
    u, delta, B, C = (t.transpose(1, 2) for t in views)
    assert u.stride(1) == 1 and delta.stride(1) == 1 and not u.is_contiguous()
    weights = torch.randn(dim, 3, generator=torch.Generator().manual_seed(7))
    want = cycle_scan_tiled(*[t.double() for t in (u, delta, A, B, C, D, bias)], weights.double(), True)
    for config in [None, ScanConfig(steps=8, prefetch=False), ScanConfig(steps=4)]:
        got = triton_cycle.cycle_scan_triton(u, delta, A, B, C, D, bias, weights, True, config=config)
        error = relative(got, want)
        assert error < 1e-6 and token_major(got), (config, error)
        print(f"bfloat16 token-major views, {config}: {error:.1e}")
    # float32 views of the same kind, one chunk shorter than a tile
    u32, delta32 = (t.float().transpose(1, 2).contiguous().transpose(1, 2) for t in (u, delta))
    B32, C32 = (t.float() for t in (B, C))
    for cut in (5, length):
        args = (u32[..., :cut], delta32[..., :cut], A, B32[..., :cut], C32[..., :cut], D, bias, weights, True)
        want = cycle_scan_tiled(*[t.double() if torch.is_tensor(t) else t for t in args])
        error = relative(triton_cycle.cycle_scan_triton(*args), want)
        assert error < 1e-6, (cut, error)
        print(f"float32 token-major views, L={cut}: {error:.1e}")

    # The triton_op an AOTInductor export traces (its launches through wrap_triton): same result.
    from hrsam.ops.selective_scan.inductor import triton_cycle_op

    inputs = make_inputs(2, 64, 32, 333, torch.float32, seed=3)
    weights = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    want = cycle_scan_tiled(*[t.double() for t in inputs], weights.double(), True)
    error = relative(triton_cycle_op()(*inputs, weights, True), want)
    assert error < 1e-6, error
    assert torch.ops.hrsam.cycle_scan_triton.default is not None
    print(f"triton_op: {error:.1e}")

    # The module: its kernel path (forced on, as on a GPU, u, dt, B, C passed as views) against
    # its tiled path, in float32 and in bf16 autocast (the projections' outputs bf16).
    torch.manual_seed(0)
    module = CycleScan(48, state_dim=8).eval()
    torch.nn.init.normal_(module.gamma, mean=1.0, std=0.5)
    x = torch.randn(2, 150, 48)
    # CPU tensors reach the op's CPU branch: point it at the Triton launcher instead.
    cycle.cpu_backend = types.SimpleNamespace(cycle_forward=triton_cycle.cycle_scan_triton)
    passed = []
    scan = cycle.cycle_scan
    cycle.cycle_scan = lambda *args, **kwargs: passed.append(args[:5]) or scan(*args, **kwargs)
    cycle_scan_module.kernel_reads_views = lambda u: True
    for autocast, tolerance in [(False, 5e-6), (True, 1e-2)]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            unsupported = cycle.cycle_kernel_unsupported
            cycle._DISABLED = True
            want = module(x)  # the tiled path
            cycle._DISABLED = False
            cycle.cycle_kernel_unsupported = lambda *tensors: None
            got = module(x)
            cycle.cycle_kernel_unsupported = unsupported
        error = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
        assert error < tolerance, (autocast, error)
        u_in, dt_in, _, B_in, _ = passed.pop()
        assert u_in.dtype == (torch.bfloat16 if autocast else torch.float32), u_in.dtype
        assert u_in.stride(1) == 1 and dt_in.stride(1) == 1 and B_in.stride(1) == 1  # views, no copies
        print(f"module, autocast={autocast}: {error:.1e}")
    print("cycle ok")
    """
)


def test_kernel_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    stdout = run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")
    assert "cycle ok" in stdout, stdout


def test_when_the_model_takes_the_kernel() -> None:
    u, *rest = make_inputs(1, 8, 4, 20, torch.float32)
    weights = torch.ones(8, 3)
    cpu_reason = cpu_backend.unavailable_reason()  # None where the C kernel builds (CI has gcc)
    assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    assert "float64" in cycle_kernel_unsupported(u.double(), *rest, weights)
    with aot_lowering():  # a CPU package keeps the tiled scan
        assert "AOTInductor package for this device" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(torch.compiler, "_is_exporting_flag", True):
        assert "export" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        assert "torch.compile trace keeps the tiled op" in cycle_kernel_unsupported(u, *rest, weights)
    with mock.patch.object(cycle, "_DISABLED", True):
        assert "HRSAM_CYCLE_SCAN_KERNEL=0" in cycle_kernel_unsupported(u, *rest, weights)
    with use_backend("selective_scan", "reference"):
        assert "forced to 'reference'" in cycle_kernel_unsupported(u, *rest, weights)
    with use_backend("selective_scan", "cpu"):
        assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    weights.requires_grad_(True)
    assert "gradients" in cycle_kernel_unsupported(u, *rest, weights)
    with torch.no_grad():
        assert cycle_kernel_unsupported(u, *rest, weights) == cpu_reason
    meta = [t.to("meta") for t in (u, *rest, weights.detach())]
    assert "no L-step kernel for meta tensors" in cycle_kernel_unsupported(*meta)
    with mock.patch.object(torch.Tensor, "is_cuda", property(lambda self: True)):
        with mock.patch.object(cycle, "_KERNELS", None):
            assert "needs Triton" in cycle_kernel_unsupported(u, *rest, weights.detach())
        with mock.patch.object(cycle, "_KERNELS", object()):
            assert cycle_kernel_unsupported(u, *rest, weights.detach()) is None
            with aot_lowering():  # a CUDA package compiles the L-step kernels in
                assert cycle_kernel_unsupported(u, *rest, weights.detach()) is None
        with mock.patch.object(cycle, "_KERNELS", None), aot_lowering():
            assert "needs Triton" in cycle_kernel_unsupported(u, *rest, weights.detach())


def test_an_aoti_export_traces_the_kernels_triton_op() -> None:
    """Under ``aot_lowering()`` a CUDA call goes to ``hrsam::cycle_scan_triton`` (kernels an AOTInductor
    package compiles in), elsewhere to the opaque ``hrsam::cycle_scan``. Both faked: no GPU here."""
    inputs = make_inputs(1, 8, 4, 20, torch.float32)
    weights = torch.ones(8, 3)
    calls = []
    lowered = mock.Mock(side_effect=lambda *args: calls.append("lowered") or args[0])
    opaque = mock.Mock(side_effect=lambda *args: calls.append("opaque") or args[0])
    with (
        mock.patch.object(torch.Tensor, "is_cuda", property(lambda self: True)),
        mock.patch.object(cycle, "_KERNELS", object()),
        mock.patch.object(cycle, "triton_cycle_op", lambda: lowered),
        mock.patch.object(cycle, "cycle_scan_op", opaque),
        torch.no_grad(),
    ):
        with aot_lowering():
            cycle_scan(*inputs, weights)
        cycle_scan(*inputs, weights)
    assert calls == ["lowered", "opaque"]
    assert lowered.call_args.args[-2] is weights and lowered.call_args.args[-1] is True


def test_the_packaged_kernels_get_dense_inputs() -> None:
    """What the ``triton_op`` hands its launches: u and delta dense in their own stride order.

    A package bakes the traced strides into the launches and Inductor keeps only a stride order
    for a user kernel's input, so a strided view (the model's u: half of the in-projection's rows)
    could reach the kernel re-laid out; the H200's first package of the per-step kernels read out of
    bounds that way. Dense tensors have one set of strides per order.
    """
    xz = torch.randn(2, 20, 16)
    u = xz[:, :, :8].transpose(1, 2)  # [batch, dim, L], channel stride 1, token stride 16
    dense = dense_in_stride_order(u)
    assert torch.equal(dense, u) and dense.stride() == (160, 1, 8)
    token_major = torch.randn(2, 20, 8).transpose(1, 2)
    channel_major = torch.randn(2, 8, 20)
    assert dense_in_stride_order(token_major) is token_major and dense_in_stride_order(channel_major) is channel_major


def test_cycle_scan_names_bad_inputs() -> None:
    inputs = make_inputs(1, 8, 4, 20, torch.float32)
    with pytest.raises(ValueError, match=r"weights must be \[dim=8, R >= 1\]"):
        cycle_scan(*inputs, torch.ones(8))
    with pytest.raises(ValueError, match="weights must be torch.float32"):
        cycle_scan(*inputs, torch.ones(8, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must be"):
        cycle_scan(inputs[0][0], *inputs[1:], torch.ones(8, 3))
    with pytest.raises(ValueError, match="the L-step kernel cannot run: float64"):
        cycle_scan(*make_inputs(1, 8, 4, 20), torch.ones(8, 3, dtype=torch.float64))


@pytest.mark.skipif(cpu_backend.unavailable_reason() is not None, reason="the C kernel does not build here")
def test_cpu_kernel_against_the_definition() -> None:
    """The C kernel's two passes over L (float32) against the float64 tiled definition, and the
    module's eager CPU output with the kernel against its tiled path."""
    for case in [(1, 40, 7, 150), (2, 64, 32, 333), (1, 33, 32, 1000)]:
        for repeats, softplus in [(1, True), (2, False), (3, True)]:
            inputs = make_inputs(*case, torch.float32, positive_dt=not softplus, seed=repeats)
            weights = torch.randn(case[1], repeats, generator=torch.Generator().manual_seed(repeats))
            want = cycle_scan_tiled(*[t.double() for t in inputs], weights.double(), softplus)
            got = cycle_scan(*inputs, weights, softplus)
            error = ((got.double() - want).abs().max() / want.abs().max()).item()
            assert error < 1e-6, (case, repeats, softplus, error)
            assert got.transpose(1, 2).is_contiguous()  # token-major, as the fake says
    torch.manual_seed(0)
    module = CycleScan(48, state_dim=8).eval()
    torch.nn.init.normal_(module.gamma, mean=1.0, std=0.5)
    x = torch.randn(2, 150, 48)
    with torch.no_grad(), mock.patch.object(cycle, "cycle_scan", wraps=cycle.cycle_scan) as kernel:
        got = module(x)
        assert kernel.called
        u_in, dt_in = kernel.call_args.args[:2]
        assert u_in.is_contiguous() and dt_in.is_contiguous()  # laid out along L: the kernels copy nothing
        with mock.patch.object(cycle, "_DISABLED", True):
            want = module(x)
    assert ((got - want).abs().max() / want.abs().max()).item() < 5e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_op_returns_the_layout_its_fake_promises(dtype: torch.dtype) -> None:
    """torch.compile and AOTInductor trust the fake's dtype and strides (float32 token-major y, also
    for 16-bit inputs); ``opcheck`` compares them with the CPU kernel's real output, among its other
    checks of the registration."""
    inputs = make_inputs(1, 40, 7, 150, dtype, seed=1)
    weights = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    if cpu_backend.unavailable_reason() is None:
        y = torch.ops.hrsam.cycle_scan.default(*inputs, weights, True)
        assert y.dtype == torch.float32 and y.transpose(1, 2).is_contiguous()
    results = torch.library.opcheck(torch.ops.hrsam.cycle_scan.default, (*inputs, weights, True))
    assert set(results.values()) == {"SUCCESS"}, results


def test_export_detection_inside_real_traces() -> None:
    """False while torch.compile traces (Dynamo up to torch 2.11 folds ``is_exporting()`` to True
    there), True while torch.export traces, strict or not."""
    want = {"compile": False, "export strict=True": True, "export strict=False": True}
    assert traced_values(cycle._exporting) == want
    assert not cycle._exporting()


@pytest.mark.parametrize(
    ("kernel", "inputs"),
    [("_cycle_carry_kernel", "*fp32"), ("_cycle_state_kernel", "*bf16"), ("_cycle_output_kernel", "*bf16"),
     ("_cycle_state_kernel", "*fp32"), ("_cycle_output_kernel", "*fp32")],
)  # fmt: skip
def test_offline_sm90_compile(kernel: str, inputs: str) -> None:
    """A real sm_90 compile (the interpreter does not type-check Triton code) with u and delta in the
    given dtype; the step kernels' PTX has no shuffles: each step's u, delta and y stay in the lane
    that holds the channel's states (the tile kernels shuffle ~140 times)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from hrsam.ops.selective_scan import triton_cycle

    function = getattr(triton_cycle, kernel)
    if type(function).__name__ != "JITFunction":
        pytest.skip("the kernel is interpreted in this process (TRITON_INTERPRET is set)")
    if kernel == "_cycle_carry_kernel":
        constants, warps = {"NC": 256, "BLOCK_ND": 16, "REPEATS": 3}, 4
    else:
        constants = {"BLOCK_D": 32, "BLOCK_N": 32, "STEPS": 8, "EVEN_D": True, "EVEN_N": True, "SOFTPLUS": True,
                     "PREFETCH": True}  # fmt: skip
        warps = 1
    names = list(function.arg_names)
    pointers = [name for name in names if name.endswith("_ptr")]
    signature = {name: inputs if name in ("u_ptr", "delta_ptr") else "*fp32" for name in pointers}
    signature |= {name: "constexpr" if name in constants else "i32" for name in names if name not in signature}
    signature = {name: signature[name] for name in names}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in pointers}
    source = triton.compiler.ASTSource(function, signature, constants, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    ptx = compiled.asm["ptx"]
    assert "ex2.approx" in ptx
    if kernel != "_cycle_carry_kernel":
        assert "shfl" not in ptx


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("length", [4096, 16384])
def test_gpu_full_size_against_the_tiled_triton_scan(length: int) -> None:
    from hrsam.ops.selective_scan import selective_scan

    inputs = [t.cuda() for t in make_inputs(1, 768, 32, length, torch.float32)]
    weights = torch.rand(768, 3, device="cuda") + 0.5
    with torch.no_grad():
        got = cycle_scan(*inputs, weights)
        u, delta, A, B, C, D, bias = inputs
        u, delta, B, C = (t.repeat(1, 1, 3) for t in (u, delta, B, C))
        tiled = selective_scan(u, delta, A, B, C, D, bias)
        want = (tiled.view(1, 768, 3, length) * weights[:, :, None]).sum(dim=2)
    error = ((got - want).abs().max() / want.abs().max()).item()
    print(f"L={length}: {error:.1e}")
    assert error < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_encoder_kernel_path_matches_the_tiled_path() -> None:
    from hrsam.modeling.interactive import build_model

    torch.manual_seed(0)
    model = build_model("hrsam_vit_b").cuda().eval()
    image = torch.randn(1, 3, 1024, 1024, device="cuda")
    with torch.no_grad():
        got = model.encode(image)
        with mock.patch.object(cycle, "cycle_kernel_unsupported", lambda *tensors: "forced off"):
            want = model.encode(image)
    error = ((got - want).abs().max() / want.abs().max()).item()
    print(f"encoder: {error:.1e}")
    assert error < 1e-4


def test_the_lowered_op_names_its_kernels_for_inductor() -> None:
    """Inductor compiles a triton_op's kernels into a package from the list ``triton_op`` finds by
    reading the op's source (``wrap_triton(kernel)`` calls, through the launcher it calls): all
    three L-step kernels must be on it, or a package would miss one."""
    pytest.importorskip("triton")
    from torch._library import triton as library_triton

    from hrsam.ops.selective_scan.inductor import triton_cycle_op

    triton_cycle_op()
    kernels = library_triton.triton_ops_to_kernels["hrsam::cycle_scan_triton"]
    names = sorted(getattr(kernel, "fn", kernel).__name__ for kernel in kernels)
    assert names == ["_cycle_carry_kernel", "_cycle_output_kernel", "_cycle_state_kernel"]
