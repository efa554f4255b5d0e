"""The compiled engines' attention: our Triton kernel as ``hrsam::varlen_attention_triton``.

CPU: which op a trace reaches (the Triton op only inside ``engine_kernels()`` for 16-bit CUDA
inputs: fake CUDA tensors, no GPU needed; float32, CPU tensors and eager traces keep
``hrsam::varlen_attention``), and the op's result under Triton's interpreter against the
reference at a KV-padded window layout (float16 2e-3, bfloat16 1.6e-2, the kernel's tolerances
in ``tests/test_varlen_attention_triton.py``). The kernel itself is tested there, on the GPU too;
the engines' parity with it is ``benchmarks/compiled.py``'s and the GPU tests of
``tests/test_compiled.py`` / ``tests/test_aoti.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import textwrap
from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from hrsam.modeling.window_plan import window_plan
from hrsam.ops import varlen_attention
from hrsam.ops.lowering import engine_kernels
from tests.fresh_python import run_python

# The package's name is shadowed by the function it exports (hrsam.ops.varlen_attention).
attention_module = importlib.import_module("hrsam.ops.varlen_attention")


def _traced(engine: bool, dtype: torch.dtype, device: str) -> str:
    """Code of one varlen_attention call traced on fake tensors."""
    plan = window_plan(((8, 8),), 4, 2, True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        q = torch.empty(plan.num_tokens, 2, 16, device=device, dtype=dtype)
        kv = torch.empty(plan.kv_index.numel(), 2, 16, device=device, dtype=dtype)
        cu_q, cu_k = (torch.empty_like(t, device=device) for t in (plan.cu_seqlens_q, plan.cu_seqlens_k))

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return varlen_attention(q, k, v, cu_q, cu_k, plan.max_seqlen_q, plan.max_seqlen_k)

        with engine_kernels() if engine else contextlib.nullcontext(), torch.no_grad():
            return make_fx(call, tracing_mode="fake")(q, kv, kv.clone()).code


@pytest.mark.parametrize(
    ("engine", "dtype", "device", "ours"),
    [
        (True, torch.bfloat16, "cuda", True),
        (True, torch.float16, "cuda", True),
        (False, torch.bfloat16, "cuda", False),
        (True, torch.float32, "cuda", False),
        (True, torch.bfloat16, "cpu", False),
    ],
    ids=["engine-bf16", "engine-fp16", "eager-bf16", "engine-fp32", "engine-cpu"],
)
def test_only_16_bit_cuda_engines_trace_our_kernel(engine: bool, dtype: torch.dtype, device: str, ours: bool) -> None:
    pytest.importorskip("triton")
    from hrsam.ops.varlen_attention import triton_kernel

    attention_module.triton_attention_op()  # registering needs Triton, not a GPU
    with mock.patch.object(attention_module, "_ENGINE_KERNEL", triton_kernel):
        with mock.patch.object(attention_module, "_check_offsets"):  # reads values: eager CPU calls only
            code = _traced(engine, dtype, device)
    assert ("hrsam.varlen_attention_triton" in code) is ours, code
    assert ("hrsam.varlen_attention.default" in code) is not ours, code


def test_why_an_engine_keeps_pytorchs_kernel() -> None:
    q = torch.zeros(4, 2, 16, dtype=torch.bfloat16)
    assert "CUDA tensors, got cpu" in attention_module.engine_attention_unsupported(q, q)
    with FakeTensorMode():
        fake = torch.empty(4, 2, 16, device="cuda", dtype=torch.float32)
        assert "keeps PyTorch's kernel" in attention_module.engine_attention_unsupported(fake, fake)
        fake = torch.empty(4, 2, 16, device="cuda", dtype=torch.bfloat16)
        with mock.patch.object(attention_module, "_ENGINE_KERNEL", None):
            assert "needs Triton" in attention_module.engine_attention_unsupported(fake, fake)


_INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from hrsam.modeling.window_plan import window_plan
    from hrsam.ops.varlen_attention import triton_attention_op
    from hrsam.ops.varlen_attention.reference import varlen_attention_reference
    from tests.test_varlen_attention_triton import _interpret_bf16_dots_as_float32

    _interpret_bf16_dots_as_float32()  # as the kernel's own interpreter tests do (see there)
    op = triton_attention_op()
    plan = window_plan(((10, 12),), 4, 2, True)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(plan.num_tokens, 2, 16, generator=generator)
    k, v = (torch.randn(plan.kv_index.numel(), 2, 16, generator=generator) for _ in range(2))
    args = (plan.cu_seqlens_q, plan.cu_seqlens_k, plan.max_seqlen_q, plan.max_seqlen_k, 0.25)
    for dtype, tolerance in ((torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)):
        rounded = [t.to(dtype) for t in (q, k, v)]
        want = varlen_attention_reference(*[t.double() for t in rounded], *args)
        got = op(*rounded, *args)
        assert got.dtype == dtype and got.shape == want.shape, (got.dtype, got.shape)
        error = (got.double() - want).abs().max().item()
        assert error < tolerance, (dtype, error)
        print(f"{dtype}: {error:.1e}")
    print("engine attention ok")
    """
)


def test_engine_op_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    stdout = run_python(["-c", _INTERPRETER_SCRIPT], TRITON_INTERPRET="1")
    assert "engine attention ok" in stdout, stdout
