"""``hrsam::selective_scan``: Mamba's selective scan as one custom operator.

Signature (docs/EXPORT.md): u, delta [batch, dim, L]; A [dim, N]; B, C [batch, N, L];
D, delta_bias [dim]; delta_softplus (bool) -> y [batch, dim, L] in u's dtype. The state is
float32 whatever the input dtype (float64 for float64 inputs, which only the reference runs).

Forward backends, tried in this order (force one with ``use_backend("selective_scan", name)``
or ``HRSAM_SELECTIVE_SCAN_BACKEND``):

- ``triton``: our chunked Triton kernels (CUDA; float32/float16/bfloat16), the kernels the
  TensorRT plugin launches;
- ``mamba_ssm``: mamba-ssm's ``selective_scan_fn`` when the package and its CUDA extension load;
- ``cpu``: our C kernel (``cpu_scan.c``, channels in SIMD lanes, OpenMP over channel blocks),
  compiled at first use and cached (``cpu_backend``); CPU float32/float16/bfloat16;
- ``reference``: the chunked pure-torch formulation (any device, any float dtype).

Backward, the first that can run the inputs: mamba-ssm's fused CUDA backward; our chunked Triton
backward (``triton_backward``: CUDA, float32/float16/bfloat16); otherwise autograd through the
chunked torch reference (forward recomputed chunk by chunk under checkpointing, so memory stays
O(batch * dim * L)), the only one for CPU and float64.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hrsam.ops.backend import Backend, choose, register
from hrsam.ops.lowering import lowering_active
from hrsam.ops.replay import replay_backward
from hrsam.ops.selective_scan import cpu_backend, mamba_backend
from hrsam.ops.selective_scan.inductor import selective_scan_lowered
from hrsam.ops.selective_scan.reference import compute_dtype, selective_scan_chunked

__all__ = ["selective_scan", "selective_scan_backward"]

OP = "selective_scan"
_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@functools.cache
def _triton_import_error() -> str | None:
    """None when the Triton kernels import, else why not (Triton is optional on CPU installs)."""
    try:
        import hrsam.ops.selective_scan.triton_kernel  # noqa: F401
    except ImportError as error:
        return f"triton is not importable ({error})"
    return None


def _supports_triton(u: Tensor, *_: object) -> str | None:
    if not u.is_cuda:
        return "inputs are not on a CUDA device"
    if u.dtype == torch.float64:
        return "float64 inputs (the kernel keeps a float32 state)"
    return _triton_import_error()


def _supports_mamba(u: Tensor, *_: object) -> str | None:
    if not u.is_cuda:
        return "inputs are not on a CUDA device"
    if u.dtype not in mamba_backend.SUPPORTED_DTYPES:
        return f"mamba-ssm has no {u.dtype} kernel"
    return mamba_backend.unavailable_reason()


def _supports_reference(*_: object) -> str | None:
    return None


def _run_triton(*args: object) -> Tensor:
    from hrsam.ops.selective_scan.triton_kernel import selective_scan_triton

    return selective_scan_triton(*args)


BACKENDS = [
    Backend("triton", _supports_triton, _run_triton),
    Backend("mamba_ssm", _supports_mamba, mamba_backend.forward),
    Backend("cpu", cpu_backend.supports, cpu_backend.forward),
    Backend("reference", _supports_reference, selective_scan_chunked),
]
register(OP, BACKENDS)


@torch.library.custom_op("hrsam::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """The registered operator; call ``selective_scan`` for validated inputs and defaults."""
    backend = choose(OP, BACKENDS, u, delta, A, B, C, D, delta_bias, delta_softplus)
    return backend.run(u, delta, A, B, C, D, delta_bias, delta_softplus)


@selective_scan_op.register_fake
def _selective_scan_fake(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    return torch.empty_like(u, memory_format=torch.contiguous_format)


def selective_scan_backward(
    grad_out: Tensor,
    inputs: tuple[Tensor, ...],
    delta_softplus: bool,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """Gradients of (u, delta, A, B, C, D, delta_bias) for ``needs``: mamba-ssm, Triton, else reference."""
    if _supports_mamba(*inputs) is None:
        return mamba_backend.backward(grad_out, inputs, delta_softplus, needs)
    if _supports_triton(*inputs) is None:
        from hrsam.ops.selective_scan.triton_backward import selective_scan_backward_triton

        grads = selective_scan_backward_triton(grad_out, *inputs, delta_softplus)
        return tuple(g if need else None for g, need in zip(grads, needs, strict=True))
    return replay_backward(lambda *t: selective_scan_chunked(*t, delta_softplus), grad_out, inputs, needs)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    *tensors, delta_softplus = inputs
    ctx.save_for_backward(*tensors)
    ctx.delta_softplus = delta_softplus


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
    needs = tuple(ctx.needs_input_grad[:7])
    grads = selective_scan_backward(grad_out, ctx.saved_tensors, ctx.delta_softplus, needs)
    return (*grads, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"selective_scan: {message}")


def _validate(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, delta_bias: Tensor
) -> None:
    """Shapes, dtypes and devices of docs/EXPORT.md, with a message naming what is wrong."""
    _check(u.dim() == 3, f"u must be [batch, dim, L], got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    _check(seqlen > 0, "u has an empty sequence (L = 0)")
    _check(delta.shape == u.shape, f"delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    _check(A.dim() == 2 and A.shape[0] == dim, f"A must be [dim={dim}, N], got {tuple(A.shape)}")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        want = (batch, dstate, seqlen)
        _check(tuple(t.shape) == want, f"{name} must be [batch, N, L] = {want}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        _check(tuple(t.shape) == (dim,), f"{name} must be [dim={dim}], got {tuple(t.shape)}")
    _check(u.dtype in _INPUT_DTYPES, f"u dtype {u.dtype} is not one of {_INPUT_DTYPES}")
    for name, t in (("delta", delta), ("B", B), ("C", C)):
        _check(t.dtype == u.dtype, f"{name} dtype {t.dtype} differs from u dtype {u.dtype}")
    state = compute_dtype(u.dtype)
    for name, t in (("A", A), ("D", D), ("delta_bias", delta_bias)):
        _check(t.dtype == state, f"{name} must be {state} for {u.dtype} inputs, got {t.dtype}")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        _check(t.device == u.device, f"{name} is on {t.device}, u on {u.device}")


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Selective scan y [batch, dim, L] (u's dtype); see the module docstring for the contract.

    u, delta, B, C share one dtype (float32, float16, bfloat16 or float64); A, D and
    delta_bias are float32 (float64 for float64 inputs). Missing D / delta_bias mean zeros.
    Raises ValueError naming the offending argument for a wrong shape, dtype or device.
    """
    zeros = A.new_zeros(A.shape[:1])
    D = zeros if D is None else D
    delta_bias = zeros if delta_bias is None else delta_bias
    _validate(u, delta, A, B, C, D, delta_bias)
    if lowering_active():  # traced for an AOTInductor package: code it can compile (hrsam.ops.lowering)
        return selective_scan_lowered(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
    return selective_scan_op(u, delta, A, B, C, D, delta_bias, bool(delta_softplus))
