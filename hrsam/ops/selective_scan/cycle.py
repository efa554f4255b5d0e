"""``hrsam::cycle_scan``: the Cycle-scan's scan of its R-times repeated sequence, in L steps.

Definition (``cycle_scan_tiled``): tile u, delta, B, C R times along the sequence, run the
selective scan once over R L steps, and return y = sum_k weights[:, k] * y_k, y_k the output on
copy k (positions k L + t), [batch, dim, L]. That is what ``hrsam.modeling.cycle_scan.CycleScan``
computes with gamma as the weights, and what its exported graphs keep (one ``SelectiveScan`` node
over R L steps). The op returns y in the state dtype (float32, also for 16-bit inputs) stored
token-major (``reference.token_major_empty``).

Why L steps suffice. Every copy sees the same inputs, so within a step all copies' states follow
the same affine map h -> a_t h + b_t (a_t = exp(A dt_t), b_t = B_t dt_t u_t); they differ only in
the state H_k they enter their copy with. A weighted sum of states that follow one affine map
follows it too, with the input term scaled by W = sum_k w_k:

    S[t] = sum_k w_k h_k[t]  =>  S[t] = a_t S[t-1] + W b_t,   y[t] = C_t . S[t] + W D u_t,

which is the ordinary scan of u' = W u started from S_in = sum_k w_k H_k. The entering states
come from one scan of copy 0: H_k = h_L (1 + P_L + ... + P_L^(k-1)), with h_L its final state and
P_L = exp(A sum dt) its total decay. Exact in real arithmetic; in float32 it differs from the tiled
scan by rounding (tests/test_cycle_scan_kernel.py).

Kernels: on the CPU, the C kernel's ``cycle_block`` (``cpu_scan.c``): one pass over L for h_L and
P_L (no outputs), one for y: two passes over L instead of one over R L, 2.0-2.7x faster than the
tiled scan on the development CPU (docs/BENCHMARKS.md). On CUDA, ``triton_cycle``: the chunked
Triton passes over L, a third of the tiled scan's exponentials, reading u and delta in place
(any strides, 16-bit dtypes: the model passes its projections' token-major views; inside an
AOTInductor package, dense copies of them: ``inductor.dense_in_stride_order`` says why).
``cycle_kernel_unsupported`` says when the model takes a kernel: CUDA tensors with Triton (in
torch.compile traces too: the op is opaque to Inductor; in an AOTInductor export through
``hrsam::cycle_scan_triton``, the kernels' ``triton_op`` that the package compiles in), or CPU
tensors outside torch.compile traces with the C kernel built; no gradient needed (they have no
backward), no ONNX or torch.export trace (those keep the contract's tiled form, as CPU packages
do), and no other scan backend forced in eager code (``use_backend`` /
``HRSAM_SELECTIVE_SCAN_BACKEND``); ``HRSAM_CYCLE_SCAN_KERNEL=0`` in the environment turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType

import torch
from torch import Tensor

from hrsam.ops.backend import forced_backend
from hrsam.ops.lowering import lowering_active
from hrsam.ops.selective_scan import OP, _validate, cpu_backend
from hrsam.ops.selective_scan.inductor import triton_cycle_op
from hrsam.ops.selective_scan.reference import compute_dtype, selective_scan_chunked, token_major_empty


def _load_kernels() -> ModuleType | None:
    """The Triton kernels where CUDA and Triton are present (imported once, never while tracing)."""
    if not torch.cuda.is_available():
        return None
    try:
        from hrsam.ops.selective_scan import triton_cycle
    except ImportError:  # Triton is optional
        return None
    return triton_cycle


_KERNELS = _load_kernels()
# Escape hatch (and A/B switch for benchmarks): HRSAM_CYCLE_SCAN_KERNEL=0 keeps the tiled scan.
_DISABLED = os.environ.get("HRSAM_CYCLE_SCAN_KERNEL", "1") == "0"


def cycle_scan_tiled(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    weights: Tensor,
    delta_softplus: bool,
    scan: Callable[..., Tensor] = selective_scan_chunked,
) -> Tensor:
    """The definition: ``scan`` (default the chunked reference, any device) over the tiled sequence.

    Benchmarks pass ``hrsam.ops.selective_scan.selective_scan`` to time the tiled form the model
    runs without the kernel.
    """
    batch, dim, length = u.shape
    repeats = weights.shape[1]

    def tile(t: Tensor) -> Tensor:
        return t.repeat(1, 1, repeats)

    y = scan(tile(u), tile(delta), A, tile(B), tile(C), D, delta_bias, delta_softplus)
    return (y.view(batch, dim, repeats, length) * weights[:, :, None].to(y.dtype)).sum(dim=2)


def cycle_kernel_unsupported(u: Tensor, *tensors: Tensor) -> str | None:
    """None when the L-step kernel may replace the tiled scan for these inputs, else why not.

    ``tensors``: the other inputs, checked only for ``requires_grad``. Up to the CUDA answer these
    are attribute reads only, safe while Dynamo traces the model; the C kernel runs from eager
    code only (it is built at first use, which no trace should do).
    """
    if _DISABLED:
        return "disabled by HRSAM_CYCLE_SCAN_KERNEL=0"
    if u.dtype == torch.float64:
        return "float64 inputs (the kernel keeps a float32 state)"
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, *tensors)):
        return "gradients are needed and the kernel has no backward"
    if u.is_cuda and _KERNELS is None:
        return "needs Triton, and CUDA when hrsam was imported"
    if lowering_active():  # an AOTInductor export: the kernels' traceable form, CUDA only
        return None if u.is_cuda else "an AOTInductor package for this device keeps the tiled scan's lowered form"
    if _exporting():
        return "an export keeps the contract's tiled SelectiveScan node"
    if u.is_cuda:
        return None if torch.compiler.is_compiling() else _forced_elsewhere("triton")
    if u.device.type != "cpu":
        return f"no L-step kernel for {u.device.type} tensors (the tiled scan runs)"
    if torch.compiler.is_compiling():
        return "a torch.compile trace keeps the tiled op (the C kernel runs from eager code)"
    return _forced_elsewhere("cpu") or cpu_backend.unavailable_reason()


def _forced_elsewhere(kernel_backend: str) -> str | None:
    """Why not, when the user forced the scan onto another backend than the one this kernel belongs to."""
    forced = forced_backend(OP)
    if forced is None or forced == kernel_backend:
        return None
    return f"the {OP} backend is forced to {forced!r}"


def _exporting() -> bool:
    """torch.export (torch.onnx.export's tracer) or the TorchScript ONNX exporter is tracing.

    Reads torch.export's flag itself: Dynamo up to torch 2.11 folds a call of
    ``torch.compiler.is_exporting()`` to True inside every trace, ``torch.compile``'s included
    (seen on the H200), while a module attribute is read with its value at trace time.
    """
    return bool(getattr(torch.compiler, "_is_exporting_flag", False)) or torch.onnx.is_in_onnx_export()


@torch.library.custom_op("hrsam::cycle_scan", mutates_args=())
def cycle_scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    weights: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """The registered operator (opaque to Inductor, like ``hrsam::selective_scan``); call ``cycle_scan``.

    Both kernels return float32 token-major y (``token_major_empty``), which the fake promises."""
    if not u.is_cuda:
        return cpu_backend.cycle_forward(u, delta, A, B, C, D, delta_bias, weights, delta_softplus)
    if _KERNELS is None:
        raise RuntimeError("hrsam::cycle_scan needs Triton, and CUDA when hrsam was imported")
    return _KERNELS.cycle_scan_triton(u, delta, A, B, C, D, delta_bias, weights, delta_softplus)


@cycle_scan_op.register_fake
def _cycle_scan_fake(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    weights: Tensor,
    delta_softplus: bool,
) -> Tensor:
    return token_major_empty(u)


def cycle_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    weights: Tensor,
    delta_softplus: bool = True,
) -> Tensor:
    """y [batch, dim, L] = ``cycle_scan_tiled``'s result through the L-step kernel, in the state dtype
    (float32 whatever u's dtype) and stored token-major (the transpose of a contiguous [batch, L, dim]:
    ``reference.token_major_empty`` says why).

    Inputs as ``selective_scan``'s (untiled: u, delta [batch, dim, L], B, C [batch, N, L]; any
    strides: the CUDA kernels read u and delta through theirs) plus weights [dim, R] in the state
    dtype. Raises ValueError naming the problem for bad inputs or
    where the kernel cannot run (``cycle_kernel_unsupported``).
    """
    _validate(u, delta, A, B, C, D, delta_bias)
    state = compute_dtype(u.dtype)
    if weights.dim() != 2 or weights.shape[0] != u.shape[1] or weights.shape[1] < 1:
        raise ValueError(f"cycle_scan: weights must be [dim={u.shape[1]}, R >= 1], got {tuple(weights.shape)}")
    if weights.dtype != state or weights.device != u.device:
        raise ValueError(f"cycle_scan: weights must be {state} on {u.device}, got {weights.dtype} on {weights.device}")
    reason = cycle_kernel_unsupported(u, delta, A, B, C, D, delta_bias, weights)
    if reason is not None:
        raise ValueError(f"cycle_scan: the L-step kernel cannot run: {reason}")
    if lowering_active():  # traced for an AOTInductor package: kernels it compiles in (hrsam.ops.lowering)
        return triton_cycle_op()(u, delta, A, B, C, D, delta_bias, weights, bool(delta_softplus))
    return cycle_scan_op(u, delta, A, B, C, D, delta_bias, weights, bool(delta_softplus))
