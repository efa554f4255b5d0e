"""The encoder MLP's fc1 + GELU on the GPU: Inductor's GEMM + Triton bias/GELU kernel vs one cuBLASLt GEMM.

Why: at a 2048 input the compiled encoder spends ~1.2 ms in 12 bias + GELU kernels that read and
write the [16,384, 3,072] hidden state once more; cuBLASLt can apply bias and (tanh) GELU in the
GEMM's epilogue (``torch._addmm_activation``). This times, at one MLP's shape, in bf16:

* Inductor, exact GELU (what the compiled runner does without ``gelu_epilogue``),
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

from benchmarks.common import cuda_median_ms, environment, markdown_table


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
        for name, fn in gelu_forms(weight, bias).items():
            milliseconds = cuda_median_ms(lambda fn=fn: fn(x), iters=args.iters)
            rows.append([name, f"{milliseconds:.4f}", f"{(fn(x).float() - reference).abs().max().item():.2e}"])
        floor = cuda_median_ms(lambda: F.linear(x, weight, bias), iters=args.iters)
        rows.append(["GEMM + bias only (floor, no GELU)", f"{floor:.4f}", "-"])
    print(f"- {environment()}")
    print(f"- one MLP fc1 ({args.tokens} x {args.dim} -> {args.hidden}, bf16), median of {args.iters}, CUDA events\n")
    print(markdown_table(["form", "ms per call", "max error vs float32 exact GELU"], rows))


if __name__ == "__main__":
    main()
