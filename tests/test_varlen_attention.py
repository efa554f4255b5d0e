"""``hrsam::varlen_attention``: reference vs the dense definition, autograd, export, backends."""

from __future__ import annotations

import logging

import pytest
import torch

from hrsam.ops import available_backends, use_backend, varlen_attention
from hrsam.ops.varlen_attention.reference import dense_block_diagonal_attention, varlen_attention_reference

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_problem(
    n: int = 5, heads: int = 3, dim: int = 16, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0
) -> tuple:
    """Segments of different query and key lengths (KV-only padding makes keys longer)."""
    g = torch.Generator().manual_seed(seed)
    len_q = torch.randint(1, 20, (n,), generator=g)
    len_k = len_q + torch.randint(0, 12, (n,), generator=g)
    cu_q = torch.cat([torch.zeros(1, dtype=torch.long), len_q.cumsum(0)]).to(torch.int32)
    cu_k = torch.cat([torch.zeros(1, dtype=torch.long), len_k.cumsum(0)]).to(torch.int32)
    q = torch.randn(int(len_q.sum()), heads, dim, generator=g, dtype=torch.float64)
    k = torch.randn(int(len_k.sum()), heads, dim, generator=g, dtype=torch.float64)
    v = torch.randn(int(len_k.sum()), heads, dim, generator=g, dtype=torch.float64)
    move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return move(q), move(k), move(v), cu_q.to(device), cu_k.to(device), int(len_q.max()), int(len_k.max())


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)]
)
def test_reference_matches_dense_masked_attention(dtype: torch.dtype, tol: float) -> None:
    """Tolerances: max abs error vs the float64 dense definition on the same (rounded) inputs."""
    q, k, v, cu_q, cu_k, mq, mk = random_problem(dtype=dtype)
    out = varlen_attention(q, k, v, cu_q, cu_k, mq, mk)
    assert out.dtype == dtype and out.shape == q.shape
    ref = dense_block_diagonal_attention(q, k, v, cu_q, cu_k, q.shape[-1] ** -0.5)
    assert (out.double() - ref).abs().max() < tol


def test_single_segment_is_plain_attention() -> None:
    q, k, v = (torch.randn(7, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 7], dtype=torch.int32)
    expected = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
    torch.testing.assert_close(varlen_attention(q, k, v, cu, cu, 7, 7), expected)


def test_gradcheck_through_the_custom_op() -> None:
    q, k, v, cu_q, cu_k, mq, mk = random_problem(n=3, heads=2, dim=4, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: varlen_attention(a, b, c, cu_q, cu_k, mq, mk), inputs)


def test_export_keeps_one_custom_node() -> None:
    q, k, v, cu_q, cu_k, mq, mk = random_problem()

    class Wrapper(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return varlen_attention(q, k, v, cu_q, cu_k, mq, mk)

    program = torch.export.export(Wrapper(), (q, k, v))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count("hrsam.varlen_attention.default") == 1
    torch.testing.assert_close(program.module()(q, k, v), Wrapper()(q, k, v))


def test_backend_override_falls_back_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    q, k, v, cu_q, cu_k, mq, mk = random_problem()
    assert available_backends("varlen_attention") == ["torch", "triton", "xformers", "reference"]
    assert available_backends("varlen_attention", q, k, v) == ["reference"]
    with caplog.at_level(logging.WARNING, logger="hrsam.ops"), use_backend("varlen_attention", "torch"):
        out = varlen_attention(q, k, v, cu_q, cu_k, mq, mk)
    assert "cannot run these inputs" in caplog.text
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, cu_q, cu_k, mq, mk, 16**-0.5))
    with use_backend("varlen_attention", "nonsense"), pytest.raises(ValueError, match="unknown backend"):
        varlen_attention(q, k, v, cu_q, cu_k, mq, mk)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: {**a, "q": a["q"][0]}, "must be \\[T, H, D\\]"),
        (lambda a: {**a, "k": a["k"][:, :1]}, "disagree"),
        (lambda a: {**a, "v": a["v"].double()}, "share dtype"),
        (lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"].long()}, "int32"),
        (lambda a: {**a, "cu_seqlens_k": a["cu_seqlens_k"][:-1]}, "different segment counts"),
        (lambda a: {**a, "cu_seqlens_q": a["cu_seqlens_q"] + 1}, "rise from 0"),
        (lambda a: {**a, "max_seqlen_q": 1}, "longer"),
    ],
)
def test_bad_inputs_are_named(mutate, match: str) -> None:  # noqa: ANN001
    q, k, v, cu_q, cu_k, mq, mk = random_problem()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=mq, max_seqlen_k=mk)
    with pytest.raises(ValueError, match=match):
        varlen_attention(**mutate(args))


GPU_TOLERANCES = {torch.float32: 2e-4, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("backend", ["torch", "xformers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backend_matches_reference(backend: str, dtype: torch.dtype) -> None:
    """A full-size HRSAM layer (2048 input: 128x128 tokens, shifted windows with KV-only padding).

    Tolerance: max abs error vs the float32 reference on the same rounded inputs; fp32 2e-4
    (kernels may use TF32-free fp32 FMA ordering), bf16 2e-2, fp16 4e-3.
    """
    from hrsam.modeling.window_plan import shifted_window_plan

    if backend not in available_backends("varlen_attention", torch.empty(1, 1, 64, device="cuda", dtype=dtype)):
        pytest.skip(f"backend {backend} cannot run on this machine")
    plan = shifted_window_plan(128, 128, 16, kv_padding=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(plan.q_index.numel(), 12, 64, device="cuda", generator=g).to(dtype)
    k = torch.randn(plan.kv_index.numel(), 12, 64, device="cuda", generator=g).to(dtype)
    v = torch.randn(plan.kv_index.numel(), 12, 64, device="cuda", generator=g).to(dtype)
    cu_q, cu_k = plan.cu_seqlens_q.cuda(), plan.cu_seqlens_k.cuda()
    args = (cu_q, cu_k, plan.max_seqlen_q, plan.max_seqlen_k)
    with use_backend("varlen_attention", backend):
        out = varlen_attention(q, k, v, *args)
    ref = varlen_attention_reference(q.float(), k.float(), v.float(), *args, 0.125)
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max().item() < GPU_TOLERANCES[dtype]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backend_takes_row_strided_key_value_views(dtype: torch.dtype) -> None:
    """Flash Swin passes k and v as halves of the gathered kv rows (row stride 2C): same output as copies.

    The torch backend hands such views to the kernels without a copy; the result must be bitwise the
    one of contiguous inputs (same kernel, same arithmetic, only the addressing differs).
    """
    if "torch" not in available_backends("varlen_attention", torch.empty(1, 1, 64, device="cuda", dtype=dtype)):
        pytest.skip("torch backend cannot run on this machine")
    q, _, _, cu_q, cu_k, max_q, max_k = random_problem(n=7, heads=4, dim=32, dtype=dtype, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(1)
    kv = torch.randn(int(cu_k[-1]), 2 * 4 * 32, device="cuda", generator=g).to(dtype)
    k, v = kv.view(-1, 2, 4, 32).unbind(1)
    assert not k.is_contiguous() and not v.is_contiguous()
    args = (cu_q, cu_k, max_q, max_k)
    with use_backend("varlen_attention", "torch"):
        strided = varlen_attention(q, k, v, *args)
        copied = varlen_attention(q, k.contiguous(), v.contiguous(), *args)
    assert torch.equal(strided, copied)
