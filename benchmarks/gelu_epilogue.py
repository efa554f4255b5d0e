"""The encoder MLP's fc1 + GELU on the GPU: Inductor's GEMM + Triton bias/GELU kernel vs one cuBLASLt GEMM.

Why: at a 2048 input the compiled encoder spent ~0.85 ms in 12 bias + GELU kernels that read and
write the [16,384, 3,072] hidden state once more; cuBLASLt can apply bias and (tanh) GELU in the
GEMM's epilogue (``torch._addmm_activation``), which the engines now use (``gelu_epilogue``). This
times, at one MLP's shape, in bf16, each replayed from a CUDA graph and called from Python (the
script's first run timed only the latter, which carries Python's dispatch for the compiled forms):

* Inductor, exact GELU (what the compiled runner did before ``gelu_epilogue``),
* Inductor, tanh GELU (is the approximation itself faster in Triton?),
* ``torch._addmm_activation(use_gelu=True)``: the fused epilogue,
* the GEMM with bias alone: the floor any fusion can reach,

plus each form's max error against float32 with the exact GELU.

    PYTHONPATH=. python benchmarks/gelu_epilogue.py [--tokens 16384] [--dim 768] [--hidden 3072]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import cuda_graph_median_ms, cuda_median_ms, environment, markdown_table


def gelu_forms(weight: Tensor, bias: Tensor) -> dict[str, Callable[[Tensor], Tensor]]:
    """The three ways of computing GELU(x W^T + b), by name."""
    return {
        "Inductor, exact GELU": torch.compile(lambda x: F.gelu(F.linear(x, weight, bias))),
        "Inductor, tanh GELU": torch.compile(lambda x: F.gelu(F.linear(x, weight, bias), approximate="tanh")),
        "cuBLASLt bias + GELU epilogue": lambda x: torch._addmm_activation(bias, x, weight.t(), use_gelu=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384, help="rows (16,384 tokens at a 2048 input)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    torch.manual_seed(0)
    x = torch.randn(args.tokens, args.dim, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(args.hidden, args.dim, device="cuda", dtype=torch.bfloat16) / args.dim**0.5
    bias = torch.randn(args.hidden, device="cuda", dtype=torch.bfloat16) / 10
    reference = F.gelu(F.linear(x.float(), weight.float(), bias.float()))
    rows = []
    with torch.no_grad():
        forms = gelu_forms(weight, bias) | {"GEMM + bias only (floor, no GELU)": lambda x: F.linear(x, weight, bias)}
        for name, fn in forms.items():
            graph = cuda_graph_median_ms(lambda fn=fn: fn(x), iters=args.iters)
            called = cuda_median_ms(lambda fn=fn: fn(x), iters=args.iters)
            error = "-" if name.startswith("GEMM") else f"{(fn(x).float() - reference).abs().max().item():.2e}"
            rows.append([name, f"{graph:.4f}", f"{called:.4f}", error])
    print(f"- {environment()}")
    print(f"- one MLP fc1 ({args.tokens} x {args.dim} -> {args.hidden}, bf16), median of {args.iters}, CUDA events\n")
    header = ["form", "ms per call (CUDA graph)", "ms called from Python", "max error vs float32 exact GELU"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
