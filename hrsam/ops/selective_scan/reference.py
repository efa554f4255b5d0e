"""Pure-torch selective scan: a naive loop for tests and a chunked formulation for real sizes.

Both compute Mamba's selective scan (layout of docs/EXPORT.md)::

    dt_t  = softplus(delta_t + delta_bias)            (or delta_t + delta_bias)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (per channel d and state n, h_{-1} = 0)
    y_t   = sum_n C_t[n] * h_t[n] + D * u_t

with u, delta, y: [batch, dim, L]; A: [dim, N]; B, C: [batch, N, L]; D, delta_bias: [dim].
The state is carried in float32 (float64 when u is float64, which the tests use).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Elements of one chunk's [batch, dim, N, T] working tensors on a GPU. The doubling scan keeps a
# few of these alive, so this bounds the reference's extra memory (~64 MiB each in float32).
_GPU_CHUNK_ELEMENTS = 1 << 24
# On CPUs short chunks win: the working set stays in cache (measured: T=64 is ~3x faster than
# T=512 for dim=768, N=32, L=3072 on 2 cores).
_CPU_CHUNK = 64


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the state and of the arithmetic: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def token_major_empty(u: torch.Tensor) -> torch.Tensor:
    """An uninitialised y of u's shape [batch, dim, L] in the state dtype (``compute_dtype``: float32
    for 16-bit u too) stored token-major: the transpose of a contiguous [batch, L, dim], what
    ``hrsam::cycle_scan`` returns. Its consumer, the Cycle-scan's LayerNorm over channels, then reads
    rows; over the channel-major y it was a strided reduction that Inductor loops over
    (docs/BENCHMARKS.md). The kernels write their float32 results directly: a 16-bit y would only be
    converted back by that LayerNorm, which runs in float32."""
    batch, dim, length = u.shape
    return torch.empty(batch, length, dim, dtype=compute_dtype(u.dtype), device=u.device).transpose(1, 2)


def _discretise(
    u: torch.Tensor,
    delta: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return dt = (softplus)(delta + bias) and dt * u, both [batch, dim, L] in ``dtype``."""
    dt = delta.to(dtype) + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return dt, dt * u.to(dtype)


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
) -> torch.Tensor:
    """Step-by-step recurrence, the ground truth of the tests (use float64 inputs, short L)."""
    dtype = compute_dtype(u.dtype)
    dt, dtu = _discretise(u, delta, delta_bias, delta_softplus, dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=dtype)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(dt[:, :, t, None] * A) * h + dtu[:, :, t, None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D.to(dtype)[:, None] * u.to(dtype)
    return y.to(u.dtype)


def _scan_chunk(
    dt: torch.Tensor,
    dtu: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    h0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scan one chunk of T steps from state ``h0`` [batch, dim, N]; return (y [b, d, T], h_T).

    The recurrence h_t = a_t h_{t-1} + x_t is an affine map per step; a Hillis-Steele doubling
    scan composes those maps in log2(T) vectorised steps. Only decays a <= 1 are ever multiplied
    (no exp of cumulative-sum differences), so nothing can overflow however long the sequence.
    """
    a = torch.exp(dt[:, :, None, :] * A[None, :, :, None])  # [b, d, N, T]
    x = dtu[:, :, None, :] * B[:, None, :, :]
    steps = a.shape[-1]
    shift = 1
    while shift < steps:
        x = x + a * F.pad(x[..., :-shift], (shift, 0))
        a = a * F.pad(a[..., :-shift], (shift, 0), value=1.0)
        shift *= 2
    h = a * h0[..., None] + x
    y = torch.einsum("bdnt,bnt->bdt", h, C)
    return y, h[..., -1]


def chunk_length(batch: int, dim: int, dstate: int, seqlen: int, device: torch.device) -> int:
    """Steps per chunk: a power of two, short on CPUs, sized by _GPU_CHUNK_ELEMENTS on GPUs."""
    if device.type == "cpu":
        length = _CPU_CHUNK
    else:
        target = max(1, _GPU_CHUNK_ELEMENTS // max(1, batch * dim * dstate))
        length = 1 << (target.bit_length() - 1)
    return max(1, min(length, 1 << max(0, (seqlen - 1).bit_length())))


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    chunk: int | None = None,
) -> torch.Tensor:
    """Chunked parallel selective scan: a doubling scan inside chunks, a loop over chunks.

    Differentiable by autograd. When gradients are being recorded each chunk is checkpointed,
    so the backward keeps one chunk's intermediates at a time (memory O(batch*dim*L), not
    O(batch*dim*N*L)) at the price of recomputing the chunk; this is the operator's fallback
    backward when mamba-ssm is not installed.
    """
    dtype = compute_dtype(u.dtype)
    batch, dim, seqlen = u.shape
    dt, dtu = _discretise(u, delta, delta_bias, delta_softplus, dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    step = chunk or chunk_length(batch, dim, A.shape[1], seqlen, u.device)
    recording = torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)
    )
    h = u.new_zeros(batch, dim, A.shape[1], dtype=dtype)
    ys = []
    for start in range(0, seqlen, step):
        part = slice(start, start + step)
        args = (dt[..., part], dtu[..., part], A, B[..., part], C[..., part], h)
        if recording:
            y, h = checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y, h = _scan_chunk(*args)
        ys.append(y)
    y = torch.cat(ys, dim=-1) + D.to(dtype)[:, None] * u.to(dtype)
    return y.to(u.dtype)
