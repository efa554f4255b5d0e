"""The encoder's GEMM shapes on the GPU, each alone: cuBLAS's time and kernel, per weight layout.

Why: in the compiled HRSAM 2048 encoder the GEMMs take ~4.65 ms against ~3.1 ms at the bf16 peak
(docs/BENCHMARKS.md), most of them near 60% of the peak. This asks whether the weight's layout
changes cuBLAS's choice: ``F.linear`` with the weight as stored ([N, K], what the engines run)
against the weight transposed once at load ([K, N] row-major, read as ``x @ W``), each with its
bias (and fc1 with the GELU epilogue), replayed from a CUDA graph, bf16, with the kernel cuBLAS
picked and the fraction of the peak. Both layouts are checked equal to within bf16 rounding.

    PYTHONPATH=. python benchmarks/gemm_shapes.py [--tokens 16384] [--iters 100]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.common import cuda_graph_median_ms, environment, markdown_table

BF16_PEAK_TFLOPS = 989.4  # H100/H200 SXM dense bf16
DIM = 768
# (name, K, N, GELU epilogue): the ViT-B block's and the Cycle-scan's linear layers.
SHAPES = (
    ("block qkv", DIM, 3 * DIM, False),
    ("block proj", DIM, DIM, False),
    ("block fc1 + GELU", DIM, 4 * DIM, True),
    ("block fc2", 4 * DIM, DIM, False),
    ("scan in_proj", DIM, 2 * DIM, False),
    ("scan ssm_proj", DIM, DIM + 64, False),
)


def layouts(weight: Tensor, bias: Tensor, gelu: bool) -> dict[str, Callable[[Tensor], Tensor]]:
    """The GEMM with the weight as stored ([N, K]) and transposed once ([K, N]), by name."""
    transposed = weight.t().contiguous()
    if gelu:
        return {
            "W [N, K] (stored)": lambda x: torch._addmm_activation(bias, x, weight.t(), use_gelu=True),
            "W^T [K, N] (transposed at load)": lambda x: torch._addmm_activation(bias, x, transposed, use_gelu=True),
        }
    return {
        "W [N, K] (stored)": lambda x: torch.addmm(bias, x, weight.t()),
        "W^T [K, N] (transposed at load)": lambda x: torch.addmm(bias, x, transposed),
    }


def kernel_name(fn: Callable[[], object]) -> str:
    """The GEMM kernel one call launches (the profiler's longest CUDA kernel), shortened."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in profile.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return max(kernels, key=lambda e: e.device_time).name[:64] if kernels else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="rows M (16,384 tokens at a 2048 input)")
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    torch.manual_seed(0)
    rows = []
    with torch.no_grad():
        for name, k, n, gelu in SHAPES:
            x = torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16)
            weight = (torch.randn(n, k, device="cuda") / k**0.5).bfloat16()
            bias = (torch.randn(n, device="cuda") / 10).bfloat16()
            forms = layouts(weight, bias, gelu)
            first = None
            for layout, fn in forms.items():
                out = fn(x)
                first = out if first is None else first
                equal = (out.float() - first.float()).abs().max().item() <= 1e-2 * first.float().abs().max().item()
                ms = cuda_graph_median_ms(lambda fn=fn, x=x: fn(x), iters=args.iters)
                tflops = 2 * args.tokens * k * n / ms / 1e9
                rows.append([name, f"{k} -> {n}", layout, f"{ms:.4f}", f"{tflops:.0f}",
                             f"{tflops / BF16_PEAK_TFLOPS:.0%}", "yes" if equal else "NO",
                             f"`{kernel_name(lambda fn=fn, x=x: fn(x))}`"])  # fmt: skip
    print(f"- {environment()}")
    print(f"- M = {args.tokens} rows, bf16, bias (fc1: bias + GELU epilogue), CUDA-graph median of {args.iters}\n")
    header = ["layer", "K -> N", "weight layout", "ms", "TFLOP/s", "of peak", "equal", "kernel"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
