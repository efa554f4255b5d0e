"""The selective scan in a form Inductor compiles, for AOTInductor packages (``hrsam.ops.lowering``).

* CUDA: ``hrsam::selective_scan_triton``, a ``torch.library.triton_op`` around the same chunked
  Triton kernels and launcher as the eager ``triton`` backend. ``torch.export`` keeps a triton_op
  as one node; AOTInductor traces into it, so the kernels become cubins inside the package and
  no Python runs them.
* other devices: the chunked torch reference with few, large chunks (the reference's GPU chunk
  rule), so the traced graph stays small; Inductor turns it into C++ loops.
* ``hrsam::cycle_scan`` on CUDA: ``hrsam::cycle_scan_triton``, the same for the Cycle-scan's
  L-step kernels (``triton_cycle``), so a package scans L steps instead of the tiled R L. Without
  it a package ran the tiled scan: at HRSAM ViT-B 1024 on the H200 its scans took 1.25 ms and
  their tiling copies ~0.5 ms, against 0.42 ms for the L-step kernels in the compiled graph.
  On other devices packages keep the tiled form (``hrsam.ops.selective_scan.cycle``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from hrsam.ops.selective_scan.reference import chunk_length, selective_scan_chunked


@functools.cache
def triton_scan_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::selective_scan_triton`` on first use (Triton is optional on CPU installs)."""
    from torch.library import triton_op, wrap_triton

    from hrsam.ops.selective_scan.triton_kernel import DEFAULT_CONFIG, selective_scan_triton

    @triton_op("hrsam::selective_scan_triton", mutates_args=())
    def scan(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor,
        delta_bias: Tensor,
        delta_softplus: bool,
    ) -> Tensor:
        # DEFAULT_CONFIG for every dtype: Inductor forwards only num_warps / num_stages of a
        # wrap_triton launch, so the 16-bit config's register cap (maxnreg) cannot be passed.
        # The Cycle-scan always scans float32, which is what DEFAULT_CONFIG is tuned for.
        return selective_scan_triton(
            u, delta, A, B, C, D, delta_bias, delta_softplus, config=DEFAULT_CONFIG, wrap_triton=wrap_triton
        )

    return scan


@functools.cache
def triton_cycle_op() -> torch._library.custom_ops.CustomOpDef:
    """Register ``hrsam::cycle_scan_triton`` on first use (Triton is optional on CPU installs)."""
    from torch.library import triton_op, wrap_triton

    from hrsam.ops.selective_scan.triton_cycle import cycle_scan_triton
    from hrsam.ops.selective_scan.triton_kernel import DEFAULT_CONFIG

    @triton_op("hrsam::cycle_scan_triton", mutates_args=())
    def scan(
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
        # DEFAULT_CONFIG for every dtype, as the launcher's own default: its step kernels load one
        # step's u and delta per lane in any dtype (the model hands its projections' bf16 views,
        # CycleScan._scan), so the 16-bit tile config and its register cap do not apply.
        u, delta = dense_in_stride_order(u), dense_in_stride_order(delta)
        return cycle_scan_triton(
            u, delta, A, B, C, D, delta_bias, weights, delta_softplus, config=DEFAULT_CONFIG, wrap_triton=wrap_triton
        )

    return scan


def dense_in_stride_order(t: Tensor) -> Tensor:
    """``t``, or a copy of it whose strides are dense in ``t``'s own stride order (same shape, values).

    Why: a launch traced through ``wrap_triton`` bakes the strides its fake inputs had into the
    package as integers, while Inductor may hand the kernel another buffer of the same values: a
    clone, where its analysis believes the kernel writes the input (it did for u and delta until the
    kernels' store addresses were fixed: ``tests/test_kernel_writes.py``), or a fresh buffer that
    keeps only the stride order (torch's constraint for a user kernel's inputs where the node does
    not record its eager inputs). A strided view such as the model's u, the first half of the
    in-projection's [batch, L, 2 dim] output seen as [batch, dim, L], then reaches the kernel with
    other strides and the kernel reads out of bounds: the H200's package of the per-step kernels
    did (an illegal memory access, docs/BENCHMARKS.md, eighteenth session). A dense tensor has one
    set of strides per order, so after this copy any buffer Inductor makes of it has the baked
    strides. Token-major views stay token-major. It costs a copy of u and delta per scan in the
    packages (not measured; the compiled runner's opaque op reads the views' strides at run time).
    """
    order = sorted(range(t.dim()), key=lambda i: t.stride(i), reverse=True)  # outermost first
    permuted = t.permute(order)
    if permuted.is_contiguous():
        return t
    inverse = sorted(range(t.dim()), key=order.__getitem__)
    return permuted.contiguous().permute(inverse)


def _triton_importable() -> bool:
    try:
        import hrsam.ops.selective_scan.triton_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def selective_scan_lowered(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    delta_bias: Tensor,
    delta_softplus: bool,
) -> Tensor:
    """``hrsam::selective_scan`` for Inductor: same inputs (validated) and result."""
    if u.is_cuda and u.dtype != torch.float64 and _triton_importable():
        return triton_scan_op()(u, delta, A, B, C, D, delta_bias, delta_softplus)
    batch, dim, seqlen = u.shape
    chunk = chunk_length(batch, dim, A.shape[1], seqlen, torch.device("cuda"))  # the large-chunk rule
    return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk=chunk)
