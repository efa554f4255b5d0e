"""Which arguments torch's analysis says each of our Triton kernels writes: exactly their outputs.

Why: an AOTInductor package compiles our ``triton_op`` launches, and Inductor decides from an
analysis of each kernel's Triton IR (``torch._higher_order_ops.triton_kernel_wrap``) which
arguments it writes. An argument it wrongly reports as written is cloned before the launch
(whose baked strides may not fit the clone: the H200's first package of the per-step Cycle-scan
kernels read out of bounds) or, for a weight, returned by the package as a mutated buffer (the
next package returned the Cycle-scans' delta biases as 8 extra outputs; docs/BENCHMARKS.md,
eighteenth session). The analysis follows a stored pointer back through every argument of a call
or loop that produced it, so the kernels compute their store addresses from their own arguments.

Runs on CPU: the launchers are called with a recorder instead of ``wrap_triton`` and the analysis
compiles the kernels' IR for an sm_90 target (no GPU needed).
"""

from __future__ import annotations

import inspect
from unittest import mock

import pytest
import torch

triton = pytest.importorskip("triton")
triton_kernel_wrap = pytest.importorskip("torch._higher_order_ops.triton_kernel_wrap")


class _Recorder:
    """Stands in for ``wrap_triton``: records (kernel, arguments by name) instead of launching."""

    def __init__(self, launches: list) -> None:
        self.launches = launches

    def __call__(self, kernel):  # noqa: ANN001, ANN204
        launches = self.launches

        class _Launch:
            def __getitem__(self, grid):  # noqa: ANN001, ANN204
                def launch(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
                    named = dict(zip(kernel.arg_names, args, strict=False))
                    named |= {k: v for k, v in kwargs.items() if k in kernel.arg_names}
                    launches.append((kernel, named))

                return launch

        return _Launch()


class _Sm90:
    """The active driver's target for the analysis's IR build, on a machine without a GPU."""

    def get_current_target(self):  # noqa: ANN201
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


def _launches() -> list:
    """Every kernel launch of the launchers our ``triton_op`` s wrap, at small bf16 shapes."""
    from hrsam.ops.add_norm.triton_kernel import add_layer_norm_triton
    from hrsam.ops.fusion_norm.triton_kernel import fusion_layer_norm_triton
    from hrsam.ops.gather_rope.triton_kernel import gather_rope_triton
    from hrsam.ops.selective_scan.triton_cycle import cycle_scan_triton
    from hrsam.ops.selective_scan.triton_kernel import selective_scan_triton
    from hrsam.ops.varlen_attention import triton_kernel as attention

    launches: list = []
    record = _Recorder(launches)
    batch, dim, length, state = 1, 64, 250, 16
    xz = torch.randn(batch, length, 2 * dim).bfloat16()
    ssm = torch.randn(batch, length, dim + 2 * state).bfloat16()
    u, dt = xz[..., :dim].transpose(1, 2), ssm[..., :dim].transpose(1, 2)
    B, C = ssm[..., dim : dim + state].transpose(1, 2), ssm[..., dim + state :].transpose(1, 2)
    A, D, bias = -torch.rand(dim, state), torch.ones(dim), torch.zeros(dim)
    cycle_scan_triton(u, dt, A, B, C, D, bias, torch.ones(dim, 3), True, wrap_triton=record)
    plain = [t.float().contiguous() for t in (u, dt, B, C)]
    selective_scan_triton(plain[0], plain[1], A, plain[2], plain[3], D, bias, True, wrap_triton=record)
    qkv, pad = torch.randn(100, 3 * dim).bfloat16(), torch.randn(1, 2 * dim).bfloat16()
    tables = torch.rand(120, 16)
    gather_rope_triton(qkv, pad, torch.randint(0, 101, (120,)), tables, tables, dim, dim, dim, wrap_triton=record)
    x = torch.randn(100, dim).bfloat16()
    add_layer_norm_triton(x, x, torch.randperm(100), torch.ones(dim), bias, 1e-6, wrap_triton=record)
    tokens, taps = torch.randn(1, 12 * 8 + 4 * 4, dim).bfloat16(), torch.zeros(12, dtype=torch.int64)
    fraction = torch.rand(12)
    cols = (taps[:8], taps[:8], fraction[:8])
    fusion_layer_norm_triton(tokens, taps, taps, fraction, *cols, torch.ones(dim), bias, 1e-6, 4, wrap_triton=record)
    q, cu = torch.randn(96, 4, 16).bfloat16(), torch.tensor([0, 32, 64, 96], dtype=torch.int32)
    with mock.patch.object(attention, "wrap_triton", record):
        attention.varlen_attention_triton(q, q, q, cu, cu, 32, 32, 0.25)
    return launches


WRITES = {
    "_cycle_state_kernel": {"states_ptr", "dtsum_ptr"},
    "_cycle_carry_kernel": {"enter_ptr"},
    "_cycle_output_kernel": {"out_ptr"},
    "_chunk_state_kernel": {"states_ptr", "dtsum_ptr"},
    "_chunk_carry_kernel": {"states_ptr"},
    "_chunk_output_kernel": {"out_ptr"},
    "gather_rope_kernel": {"out"},
    "add_layer_norm_kernel": {"total", "normed"},
    "fusion_layer_norm_kernel": {"out"},
    "varlen_attention_kernel": {"out_ptr"},
}


def _written(kernel, arguments: dict) -> set[str]:  # noqa: ANN001
    """The argument names the analysis reports written (torch 2.13's API, or the older one)."""
    if hasattr(triton_kernel_wrap, "identify_accessed_tensors"):
        accesses = triton_kernel_wrap.identify_accessed_tensors(kernel, arguments, {})
        return {dep.name for dep in accesses.read_writes.writes}
    analyse = triton_kernel_wrap.identify_mutated_tensors
    extra = ({},) if len(inspect.signature(analyse).parameters) > 2 else ()
    return set(analyse(kernel, arguments, *extra))


def test_the_analysis_finds_only_the_outputs() -> None:
    launches = _launches()
    assert {kernel.fn.__name__ for kernel, _ in launches} == set(WRITES)
    driver = type(triton.runtime.driver)
    with mock.patch.object(driver, "active", property(lambda self: _Sm90())):
        for kernel, arguments in launches:
            written = _written(kernel, dict(arguments))
            assert written == WRITES[kernel.fn.__name__], (kernel.fn.__name__, written)
