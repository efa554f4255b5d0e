"""The MLPs' fc1 + GELU as one GEMM with cuBLASLt's epilogue (``hrsam.modeling.gelu_epilogue``).

On the CPU: the fused call's wiring (ATen's CPU kernel computes the exact GELU, so it must equal
the MLP's own path), and which path a trace takes, checked on fake CUDA tensors (no GPU needed).
On the GPU: the tanh epilogue against the float32 exact reference, per half dtype.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from hrsam.modeling.encoder import MLP
from hrsam.modeling.gelu_epilogue import linear_gelu
from hrsam.ops.lowering import engine_kernels

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _mlp(dim: int = 16, hidden: int = 64, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(dim, hidden).eval()


def test_linear_gelu_equals_the_mlp_layers_on_cpu() -> None:
    """[B, T, C] inputs, float32 and bf16 autocast: the same function as fc1 then nn.GELU."""
    mlp = _mlp()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(linear_gelu(x, mlp.fc1), mlp.act(mlp.fc1(x)), atol=1e-6, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = linear_gelu(x, mlp.fc1), mlp.act(mlp.fc1(x))
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def _traced_ops(epilogue: bool, dtype: torch.dtype, device: str = "cuda") -> str:
    """The aten ops of one MLP call traced on fake tensors (fake CUDA tensors need no GPU).

    Half-precision weights and inputs stand for autocast, which CUDA-less PyTorch switches off;
    ``compute_dtype`` reads either (autocast is covered on the CPU above).
    """
    mlp = _mlp()
    with FakeTensorMode(allow_non_fake_inputs=True):
        params = {name: torch.empty(p.shape, device=device, dtype=dtype) for name, p in mlp.named_parameters()}
        x = torch.empty(2, 7, 16, device=device, dtype=dtype)

        def call(params: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(mlp, params, (x,))

        with engine_kernels() if epilogue else contextlib.nullcontext(), torch.no_grad():
            graph = make_fx(call, tracing_mode="fake")(params, x)
    return graph.code


@pytest.mark.parametrize(
    ("epilogue", "dtype", "device", "fused"),
    [
        (True, torch.bfloat16, "cuda", True),
        (True, torch.float16, "cuda", True),
        (False, torch.bfloat16, "cuda", False),
        (True, torch.float32, "cuda", False),
        (True, torch.bfloat16, "cpu", False),
    ],
    ids=["engine-bf16", "engine-fp16", "eager-bf16", "engine-fp32", "engine-cpu-bf16"],
)
def test_only_half_precision_cuda_engines_take_the_epilogue(
    epilogue: bool, dtype: torch.dtype, device: str, fused: bool
) -> None:
    """In ``engine_kernels()`` a half-precision CUDA trace has one _addmm_activation and no GELU; else exact GELU."""
    code = _traced_ops(epilogue, dtype, device)
    assert ("aten._addmm_activation" in code) is fused, code
    assert ("aten.gelu" in code) is not fused, code


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_epilogue_within_half_precision_of_the_exact_mlp(dtype: torch.dtype) -> None:
    """At ViT-B's width on the GPU, the fused MLP is as close to float32 as the exact one in ``dtype``.

    The tanh GELU differs from the exact one by at most 4.7e-4, far below the half-precision
    rounding both paths share, so both errors against float32 must be of the same size (2x bound).
    """
    mlp = _mlp(768, 3072).cuda()
    x = torch.randn(4096, 768, device="cuda")
    with torch.no_grad():
        reference = mlp(x)
        with torch.autocast("cuda", dtype=dtype):
            exact = mlp(x).float()
            with engine_kernels():
                fused = mlp(x).float()
        fused_error = (fused - reference).abs().max().item()
        exact_error = (exact - reference).abs().max().item()
        tanh_reference = mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh"))
    print(f"{dtype}: max error vs float32, fused {fused_error:.3e}, exact {exact_error:.3e}")
    assert fused_error <= 2 * exact_error
    scale = reference.abs().max().item()
    torch.testing.assert_close(fused, tanh_reference, atol=2e-2 * scale, rtol=0)
