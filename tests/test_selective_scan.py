"""hrsam::selective_scan: reference formulations, the custom op, its backward, the Triton kernel.

CPU tests compare the chunked reference and the operator with the naive float64 recurrence, check
gradients with gradcheck, export the op, and run the Triton kernels under Triton's interpreter
(in a subprocess: the interpreter must be switched on before triton is imported).

GPU tests (marker ``gpu``) run the Triton kernels at full size against the reference computed in
float64 from the same inputs. Tolerances, as max|y - y_ref| <= tol * max|y_ref| elementwise plus
tol relative: float32 1e-4 (the kernel's fp32 state and ex2.approx), float16 2e-3 and bfloat16
1.6e-2 (the output rounding: 2^-11 and 2^-8 relative, with headroom).
"""

from __future__ import annotations

import logging
import textwrap

import pytest
import torch

from hrsam.ops import use_backend
from hrsam.ops.selective_scan import mamba_backend, selective_scan, selective_scan_op
from hrsam.ops.selective_scan.reference import selective_scan_chunked, selective_scan_sequential
from tests.fresh_python import run_python


def make_inputs(
    batch: int,
    dim: int,
    dstate: int,
    seqlen: int,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    positive_dt: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Random scan inputs with Mamba-like magnitudes: A < 0, dt of order 0.01..1.

    ``positive_dt`` keeps delta + delta_bias > 0 for delta_softplus=False (a negative dt with
    A < 0 makes the recurrence grow without bound, which no implementation should be asked).
    """
    g = torch.Generator().manual_seed(seed)
    state = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    u = randn(batch, dim, seqlen)
    delta = randn(batch, dim, seqlen) * 0.5
    bias = randn(dim) * 0.3
    if positive_dt:
        delta, bias = delta.abs() * 0.2, bias.abs() * 0.1
    A = -torch.exp(torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 2.0 - 1.0)
    B, C = randn(batch, dstate, seqlen), randn(batch, dstate, seqlen)
    D = randn(dim)
    moved = [t.to(device=device, dtype=dtype) for t in (u, delta)]
    moved += [A.to(device=device, dtype=state)]
    moved += [t.to(device=device, dtype=dtype) for t in (B, C)]
    moved += [t.to(device=device, dtype=state) for t in (D, bias)]
    return tuple(moved)


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize(("batch", "dim", "dstate", "seqlen", "chunk"), [
    (2, 5, 7, 37, None), (2, 5, 7, 37, 8), (1, 3, 4, 1, None), (3, 4, 16, 100, 32),
])
def test_chunked_reference_matches_sequential(softplus, batch, dim, dstate, seqlen, chunk):
    x = make_inputs(batch, dim, dstate, seqlen, positive_dt=not softplus)
    expected = selective_scan_sequential(*x, softplus)
    got = selective_scan_chunked(*x, softplus, chunk=chunk)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_chunked_reference_is_stable_over_long_sequences():
    """Strong decays over thousands of steps: nothing overflows, and the float32 path agrees."""
    x = make_inputs(1, 8, 16, 6000)
    x = (x[0], x[1] + 3.0, *x[2:])  # dt around 3: cumulative log-decay far below -1e4
    expected = selective_scan_sequential(*x, True)
    got64 = selective_scan_chunked(*x, True)
    got32 = selective_scan_chunked(*[t.float() for t in x], True)
    assert torch.isfinite(got32).all()
    torch.testing.assert_close(got64, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got32.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("softplus", [True, False])
def test_operator_on_cpu_matches_sequential(softplus):
    x = make_inputs(2, 6, 5, 29, positive_dt=not softplus)
    torch.testing.assert_close(selective_scan(*x, delta_softplus=softplus), selective_scan_sequential(*x, softplus))


def test_operator_defaults_fill_zero_d_and_bias():
    u, delta, A, B, C, _, _ = make_inputs(1, 4, 3, 11)
    zeros = torch.zeros(4, dtype=torch.float64)
    expected = selective_scan_sequential(u, delta, A, B, C, zeros, zeros, True)
    torch.testing.assert_close(selective_scan(u, delta, A, B, C), expected)


def test_operator_keeps_input_dtype_and_float32_state():
    x = make_inputs(1, 4, 3, 17, dtype=torch.bfloat16)
    y = selective_scan(*x)
    assert y.dtype == torch.bfloat16
    expected = selective_scan_sequential(*[t.double() for t in x], True)
    torch.testing.assert_close(y.double(), expected, rtol=1.6e-2, atol=1.6e-2)


@pytest.mark.parametrize("softplus", [True, False])
def test_gradcheck_through_the_operator(softplus):
    x = [t.clone().requires_grad_() for t in make_inputs(2, 3, 2, 6, positive_dt=not softplus, seed=1)]

    def run(*args: torch.Tensor) -> torch.Tensor:
        return selective_scan_op(*args, softplus)

    assert torch.autograd.gradcheck(run, tuple(x), eps=1e-6, atol=1e-6)


def test_backward_only_computes_requested_gradients():
    u, delta, A, B, C, D, bias = make_inputs(1, 3, 2, 9)
    u.requires_grad_()
    selective_scan(u, delta, A, B, C, D, bias).sum().backward()
    assert u.grad is not None and A.grad is None and B.grad is None


def test_forced_backend_that_cannot_run_falls_back_with_a_log(caplog):
    x = make_inputs(1, 4, 3, 10)
    with caplog.at_level(logging.WARNING, logger="hrsam.ops"), use_backend("selective_scan", "triton"):
        y = selective_scan(*x)
    torch.testing.assert_close(y, selective_scan_sequential(*x, True))
    assert "cannot run these inputs" in caplog.text


def test_unknown_backend_from_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("HRSAM_SELECTIVE_SCAN_BACKEND", "nonexistent")
    with pytest.raises(ValueError, match="unknown backend"):
        selective_scan(*make_inputs(1, 2, 2, 3))


def test_mamba_probe_reports_instead_of_failing():
    reason = mamba_backend.unavailable_reason()
    assert reason is None or "mamba-ssm" in reason


@pytest.mark.parametrize(("change", "message"), [
    (lambda x: {0: x[0][0]}, "u must be"),
    (lambda x: {1: x[1][..., :-1]}, "delta shape"),
    (lambda x: {2: x[2][:-1]}, "A must be"),
    (lambda x: {3: x[3][:, :-1]}, "B must be"),
    (lambda x: {4: x[4][..., :-1]}, "C must be"),
    (lambda x: {5: x[5][:-1]}, "D must be"),
    (lambda x: {6: x[6][None]}, "delta_bias must be"),
    (lambda x: {1: x[1].float()}, "delta dtype"),
    (lambda x: {2: x[2].float()}, "A must be torch.float64"),
    (lambda x: {0: x[0].int(), 1: x[1].int(), 3: x[3].int(), 4: x[4].int()}, "u dtype"),
    (lambda x: {3: x[3].to("meta")}, "B is on meta"),
])
def test_validation_names_the_problem(change, message):
    x = list(make_inputs(2, 4, 3, 8))
    for index, value in change(x).items():
        x[index] = value
    with pytest.raises(ValueError, match=message):
        selective_scan(*x)


class _ScanModule(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.A = torch.nn.Parameter(-torch.rand(4, 3) - 0.5)

    def forward(self, u: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        return selective_scan(u, u, self.A, B, B)


def test_export_keeps_the_operator_as_one_node():
    module = _ScanModule()
    u, B = torch.randn(1, 4, 12), torch.randn(1, 3, 12)
    exported = torch.export.export(module, (u, B))
    targets = [node.target for node in exported.graph.nodes if node.op == "call_function"]
    assert torch.ops.hrsam.selective_scan.default in targets
    torch.testing.assert_close(exported.module()(u, B), module(u, B))


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.ops.selective_scan.reference import selective_scan_chunked
    from hrsam.ops.selective_scan.triton_kernel import ScanConfig, selective_scan_triton
    from tests.test_selective_scan import make_inputs

    # dim 40 = one full and one partial block of 32, N = 7 (padded to 8), L = 150 = 3 chunks of
    # 64 (chunk carries) with a tail shorter than one tile; float32 and bfloat16 tiles.
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)):
        for softplus in (True, False):
            x = make_inputs(1, 40, 7, 150, dtype=dtype, positive_dt=not softplus)
            y = selective_scan_triton(*x, softplus, config=ScanConfig(block_d=32, num_warps=1, warps_per_sm=64))
            ref = selective_scan_chunked(*[t.double() for t in x], softplus)
            err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
            assert y.dtype == dtype and err < tol, (dtype, softplus, err)
    print("interpreter ok")
    """
)


def _run_under_the_interpreter(script: str, done_line: str) -> None:
    """Run ``script`` in a fresh interpreter with Triton's interpreter on; it must print ``done_line``."""
    pytest.importorskip("triton")
    assert done_line in run_python(["-c", script], TRITON_INTERPRET="1")


def test_triton_kernel_under_the_interpreter():
    _run_under_the_interpreter(_INTERPRETER_SCRIPT, "interpreter ok")


_BACKWARD_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.ops.selective_scan.reference import selective_scan_chunked
    from hrsam.ops.selective_scan.triton_backward import selective_scan_backward_triton
    from hrsam.ops.selective_scan.triton_kernel import ScanConfig
    from tests.test_selective_scan import make_inputs

    # batch 2, dim 40 (a partial channel block), N = 7 (padded to 8), L = 150: with 64 warps per
    # interpreted "SM" the plan cuts 3 chunks of 64 (both carries run) with a tail shorter than a
    # tile. Reference: float64 autograd through the chunked reference from the same inputs.
    config = ScanConfig(block_d=32, num_warps=1, warps_per_sm=64, steps=8)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1.6e-2)):
        softplus = dtype == torch.float32
        x = make_inputs(2, 40, 7, 150, dtype=dtype, positive_dt=not softplus)
        dy = torch.randn(2, 40, 150, dtype=torch.float64).to(dtype)
        got = selective_scan_backward_triton(dy, *x, softplus, config=config)
        leaves = [t.double().requires_grad_() for t in x]
        ref = torch.autograd.grad(selective_scan_chunked(*leaves, softplus), leaves, dy.double())
        for name, g, r, t in zip("u delta A B C D bias".split(), got, ref, x):
            err = ((g.double() - r).abs().max() / r.abs().max()).item()
            assert g.dtype == t.dtype and g.shape == t.shape and err < tol, (dtype, name, err)
    print("backward ok")
    """
)


def test_triton_backward_under_the_interpreter():
    """All seven gradients of the Triton backward against float64 autograd of the reference."""
    _run_under_the_interpreter(_BACKWARD_INTERPRETER_SCRIPT, "backward ok")


_GPU_TOLERANCES = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seqlen", [3 * 4096, 3 * 16384])
@pytest.mark.parametrize("dtype", list(_GPU_TOLERANCES))
def test_triton_matches_reference_at_full_size(seqlen, dtype):
    x = make_inputs(1, 768, 32, seqlen, dtype=dtype, device="cuda")
    with use_backend("selective_scan", "triton"):
        y = selective_scan(*x)
    ref = selective_scan_chunked(*[t.double() for t in x], True)
    tol = _GPU_TOLERANCES[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.skipif(mamba_backend.unavailable_reason() is not None, reason="mamba-ssm not built")
def test_mamba_matches_reference_at_full_size():
    x = make_inputs(1, 768, 32, 3 * 4096, dtype=torch.float32, device="cuda")
    with use_backend("selective_scan", "mamba_ssm"):
        y = selective_scan(*x)
    ref = selective_scan_chunked(*[t.double() for t in x], True)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reference_backward_runs_at_full_size_on_the_gpu():
    """The fallback backward (autograd through the checkpointed chunked reference) fits in memory."""
    u, delta, A, B, C, D, bias = make_inputs(1, 768, 32, 3 * 16384, dtype=torch.float32, device="cuda")
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    selective_scan_chunked(*leaves, True).square().mean().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


# Gradient tolerances, max|g - g_ref| <= tol * max|g_ref| per gradient: float32 1e-4 (fp32 state
# and ex2.approx over sums of up to 49152 terms), 16-bit 2e-2 (du, ddelta, dB, dC are rounded to
# the input dtype; the float32 dA, dD, d_bias sum 16-bit-rounded inputs).
_GRAD_TOLERANCES = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("batch", "dim", "seqlen"), [(1, 768, 3 * 16384), (8, 192, 3 * 1024)])
@pytest.mark.parametrize("dtype", list(_GRAD_TOLERANCES))
def test_triton_backward_matches_reference_at_full_size(batch, dim, seqlen, dtype):
    """The operator's backward on CUDA (Triton) against float64 autograd of the reference.

    Sizes: ViT-B at 2048 (batch 1) and the bundled model's training step (hrsam_tiny at 512, batch 8).
    """
    x = make_inputs(batch, dim, 32, seqlen, dtype=dtype, device="cuda")
    dy = torch.randn(batch, dim, seqlen, device="cuda", dtype=torch.float64).to(dtype)
    leaves = [t.detach().requires_grad_() for t in x]
    got = torch.autograd.grad(selective_scan(*leaves), leaves, dy)
    ref_leaves = [t.detach().double().requires_grad_() for t in x]
    ref = torch.autograd.grad(selective_scan_chunked(*ref_leaves, True), ref_leaves, dy.double())
    tol = _GRAD_TOLERANCES[dtype]
    for name, g, r, t in zip("u delta A B C D bias".split(), got, ref, x, strict=True):
        assert g.dtype == t.dtype, name
        err = ((g.double() - r).abs().max() / r.abs().max()).item()
        assert err < tol, (name, err)
