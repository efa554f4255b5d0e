"""The encoder MLPs' first layer and GELU as one cuBLASLt GEMM, for the compiled engines on CUDA.

Why: Inductor calls cuBLAS for the GEMM and then a Triton kernel for bias + GELU, which reads and
writes the [tokens, 4 x dim] hidden state once more (100 MB per block at a 2048 input). On the
H200 at HRSAM 2048's shape (16,384 x 768 -> 3,072, bf16) that pair took 0.244 ms per block
against 0.159 ms for one GEMM with cuBLASLt's bias + GELU epilogue (``aten._addmm_activation``),
and 0.141 ms for the GEMM with bias alone (docs/BENCHMARKS.md, "GELU in the GEMM's epilogue");
in the compiled encoder it took HRSAM 2048 from 10.84 to 10.31 ms (thirteenth session).
Inductor keeps ``_addmm_activation`` as an extern call and AOTInductor has a C shim for it, so
both engines can use it.

The epilogue's GELU is the tanh form on CUDA; the model's is the exact (erf) one. They differ by
at most 4.7e-4 (at x = 2.7, where the output's rounding step is 1.6e-2 in bf16 and 2e-3 in fp16),
so the fused form is used only where the GEMM runs in half precision (autocast or half inputs)
and only inside ``hrsam.ops.lowering.engine_kernels()``, which the compiled runner and the
AOTInductor export put around their traces. Eager calls, ONNX export and float32 engines keep
the exact GELU.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrsam.ops.lowering import engine_kernels_active

HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a linear layer runs in for ``x``: autocast's where it is on for x's device, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def wants_epilogue(x: Tensor) -> bool:
    """True inside ``engine_kernels()`` for a half-precision GEMM on CUDA (read at trace time)."""
    return engine_kernels_active() and x.is_cuda and compute_dtype(x) in HALF_DTYPES


def linear_gelu(x: Tensor, fc: nn.Linear) -> Tensor:
    """GELU(fc(x)) as one ``aten._addmm_activation`` call, in ``compute_dtype(x)``.

    Autocast does not cast ``_addmm_activation``'s operands, so they are cast here (in a frozen or
    constant-folded engine the weight casts run once). The GELU is the tanh form on CUDA and the
    exact one on the CPU (ATen's kernels).
    """
    dtype = compute_dtype(x)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    hidden = torch._addmm_activation(fc.bias.to(dtype), flat, fc.weight.to(dtype).t(), use_gelu=True)
    return hidden.reshape(*x.shape[:-1], hidden.shape[-1])
