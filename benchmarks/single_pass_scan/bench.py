"""Correctness and latency of the single-pass CUDA scan experiment against the Triton kernel.

First it checks the kernel against the float64 chunked reference on awkward shapes (L not a
multiple of the tile, dim not a multiple of the block, N 4..32, batch > 1, softplus on and off,
all three input dtypes; tolerances as in tests/test_selective_scan.py: max|y - y_ref| relative to
max|y_ref| of 1e-4 fp32, 2e-3 fp16, 1.6e-2 bf16) and stops if one fails. Then it times the
Triton kernel and a sweep of the experiment's configurations at the issue's sizes (batch 1,
dim 768, N 32, L 3 x 4096 and 3 x 16384), median of CUDA-event timings after warm-up, and prints
each time as a multiple of the exponential bound.

Run on the GPU machine: ``PYTHONPATH=. python benchmarks/single_pass_scan/bench.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import triton

from benchmarks.common import cuda_median_ms, environment
from benchmarks.selective_scan import make_inputs, sfu_ex2_rate
from benchmarks.single_pass_scan.kernel import CudaScanConfig, selective_scan_cuda, unsupported_reason
from hrsam.ops.selective_scan.reference import selective_scan_chunked
from hrsam.ops.selective_scan.triton_kernel import selective_scan_triton

TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SHAPES = [(2, 37, 32, 1000), (1, 40, 16, 777), (2, 19, 8, 64), (1, 5, 4, 33), (1, 7, 32, 3), (3, 64, 32, 4096)]
SWEEP = [CudaScanConfig(32, warps, 8) for warps in (1, 2, 4, 8)] + [CudaScanConfig(64, 2, 8), CudaScanConfig(32, 4, 0)]


def random_inputs(batch: int, dim: int, dstate: int, seqlen: int, dtype: torch.dtype) -> tuple:
    """Inputs whose recurrence stays bounded with softplus on or off (positive dt, A < 0)."""
    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", generator=gen)

    A = -torch.rand(dim, dstate, device="cuda", generator=gen) * 4 - 0.1
    delta = (randn(batch, dim, seqlen) * 0.1).abs()
    return (
        randn(batch, dim, seqlen).to(dtype),
        delta.to(dtype),
        A,
        randn(batch, dstate, seqlen).to(dtype),
        randn(batch, dstate, seqlen).to(dtype),
        randn(dim),
        randn(dim).abs() * 0.1,
    )


def check_against_reference(
    scan: Callable[..., torch.Tensor],
    configs: Sequence[object],
    supported: Callable[[tuple, object], bool] = lambda inputs, config: True,
) -> bool:
    """``scan(*inputs, softplus, config=c)`` for every config on every shape, dtype and softplus
    setting that ``supported`` allows; prints failures. Shared by the scan experiments' benches.

    The inputs and their float64 reference are made once per case and shared by all configurations.
    """
    ok = True
    for shape in SHAPES:
        for dtype in TOLERANCE:
            inputs = random_inputs(*shape, dtype)
            case_configs = [c for c in configs if supported(inputs, c)]
            for softplus in (True, False):
                ref = selective_scan_chunked(*[t.double() for t in inputs], softplus)
                for config in case_configs:
                    y = scan(*inputs, softplus, config=config)
                    err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
                    if not err <= TOLERANCE[dtype]:
                        ok = False
                        print(f"FAIL {config} shape={shape} {dtype} softplus={softplus}: {err:.2e}")
    return ok


def main() -> None:
    print(environment(), f"triton {triton.__version__}")
    def supported(inputs: tuple, config: CudaScanConfig) -> bool:
        return unsupported_reason(inputs[0], inputs[2].shape[1], config) is None

    if not check_against_reference(selective_scan_cuda, SWEEP, supported):
        sys.exit("single-pass kernel disagrees with the reference")
    print("correct on all shapes, dtypes and configurations")
    ex2_per_s, _, _ = sfu_ex2_rate()
    print("| L | dtype | kernel | ms | x exp bound |\n|---|---|---|---|---|")
    for seqlen in (3 * 4096, 3 * 16384):
        bound_ms = 768 * 32 * seqlen / ex2_per_s * 1e3
        for dtype_name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            inputs = make_inputs(768, 32, seqlen, 1, dtype)
            rows = [("triton (chunked)", lambda x=inputs: selective_scan_triton(*x, True))]
            rows += [(str(c), lambda c=c, x=inputs: selective_scan_cuda(*x, True, config=c)) for c in SWEEP]
            for name, fn in rows:
                ms = cuda_median_ms(fn, warmup=10, iters=50)
                print(f"| {seqlen} | {dtype_name} | {name} | {ms:.3f} | {ms / bound_ms:.2f} |")


if __name__ == "__main__":
    main()
