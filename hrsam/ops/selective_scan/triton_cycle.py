"""The Cycle-scan's weighted scan of a repeated sequence, on the untiled sequence (Triton, CUDA).

``hrsam.ops.selective_scan.cycle`` defines it and says why L steps suffice: the weighted sum of
the R copies' states is the ordinary scan of u' = W u from S_in = sum_k w_k H_k, with
H_k = h_L (1 + P_L + ... + P_L^(k-1)) from copy 0's final state h_L and total decay P_L. Here the
passes are ``triton_kernel``'s chunked ones, on L:

1. ``_chunk_state_kernel`` (unchanged) for every chunk, the last one included (its final state
   is part of h_L);
2. ``_cycle_carry_kernel``: the scan over chunk summaries, then each chunk's weighted entering
   state S_in[c] = W H_0(c) + P(c) * h_L * G with G = sum_k w_k (1 + ... + P_L^(k-1)), where
   H_0(c) and P(c) are copy 0's state and decay product entering chunk c (S_in[0] = h_L * G);
3. ``_cycle_output_kernel``: ``_scan_chunk`` of u' = W u from S_in[c], writing y (W is applied
   as u is loaded: no scaled copy of u).

So the R L exponentials of each scanning pass become L (they are the scan's cost,
docs/BENCHMARKS.md). The state stays float32. Forward only: training graphs take the tiled scan,
whose backward exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from hrsam.ops.selective_scan.reference import token_major_empty
from hrsam.ops.selective_scan.triton_kernel import (
    _CARRY_TILE,
    ScanConfig,
    _chunk_state_kernel,
    _direct,
    _scan_chunk,
    _scan_chunk_summaries,
    prepare_chunk_launch,
)


@triton.jit
def _cycle_carry_kernel(
    states_ptr, dtsum_ptr, A_ptr, weights_ptr, enter_ptr,
    dim, dstate, n_chunks, stride_wd, stride_wk,
    NC: tl.constexpr, BLOCK_ND: tl.constexpr, REPEATS: tl.constexpr,
):  # fmt: skip
    """Pass 2: chunk-local final states of copy 0 -> every chunk's weighted entering state S_in.

    Flattened (n, d) axis as in ``_chunk_carry_kernel``: states and enter are [batch, n_chunks,
    N * dim], A is [N, dim], weights [dim, REPEATS] (any strides). Writes ``enter``, a separate
    buffer: row c + 1 is computed from row c, which another thread may still be reading.
    """
    decay, carried, _, _, offs_c, offs_nd, mask_nd = _scan_chunk_summaries(
        states_ptr, dtsum_ptr, A_ptr, dim, dstate, n_chunks, NC, BLOCK_ND
    )
    pid_b = tl.program_id(1).to(tl.int64)
    d = offs_nd % dim
    last = (offs_c == n_chunks - 1)[:, None]
    h_end = tl.sum(tl.where(last, carried, 0.0), axis=0)  # copy 0's final state h_L
    p_end = tl.sum(tl.where(last, decay, 0.0), axis=0)  # its total decay P_L
    total = tl.zeros([BLOCK_ND], dtype=tl.float32)  # W = sum_k w_k
    gain = tl.zeros_like(total)  # G = sum_k w_k (1 + P_L + ... + P_L^(k-1))
    geometric = tl.zeros_like(total)
    for k in tl.static_range(REPEATS):
        w_k = tl.load(weights_ptr + d * stride_wd + k * stride_wk, mask=mask_nd, other=0.0)
        gain += w_k * geometric
        total += w_k
        geometric = geometric * p_end + 1.0
    tail = h_end * gain  # the later copies' weighted states entering position 0
    entering = total[None, :] * carried + decay * tail[None, :]  # for chunk c + 1
    out_rows = pid_b * n_chunks + offs_c + 1
    tl.store(
        enter_ptr + out_rows[:, None] * (dstate * dim) + offs_nd[None, :],
        entering,
        mask=(offs_c < n_chunks - 1)[:, None] & mask_nd[None, :],
    )
    tl.store(enter_ptr + pid_b * n_chunks * (dstate * dim) + offs_nd, tail, mask=mask_nd)


@triton.jit(do_not_specialize=["stride_an", "stride_srow", "stride_sn", "stride_od"])
def _cycle_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, enter_ptr, total_ptr,
    dim, seqlen, dstate, chunk_len, n_chunks,
    stride_an, stride_bb, stride_bt, stride_bn, stride_srow, stride_sn, stride_ob, stride_od, stride_ot,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, SOFTPLUS: tl.constexpr,
):  # fmt: skip
    """Pass 3: scan chunk c of u' = W u (``total_ptr``: W [dim]) from its weighted entering state and write y.

    y's channel stride is a runtime value (not specialised): known to be 1, it could make Triton lay
    the tile out along channels for the store, as it did for channel-contiguous inputs (slower,
    docs/BENCHMARKS.md); the per-lane state layout is what makes the scan fast. Unspecialised, each
    warp's store of one step is still one contiguous row of its channels.
    """
    pid_c = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    row = pid_b * n_chunks + pid_c
    state_ptrs = enter_ptr + row * stride_srow + offs_n[:, None] * stride_sn + offs_d[None, :]
    h = tl.load(state_ptrs, mask=(offs_n < dstate)[:, None] & (offs_d < dim)[None, :], other=0.0)
    _scan_chunk(
        h, pid_c, pid_b, offs_d, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, total_ptr,
        dim, seqlen, dstate, chunk_len, stride_an, stride_bb, stride_bt, stride_bn, stride_ob, stride_od, stride_ot,
        BLOCK_N, STEPS, EVEN_D, EVEN_N, SOFTPLUS, True, True, True,
    )  # fmt: skip


def cycle_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    weights: torch.Tensor,
    delta_softplus: bool,
    config: ScanConfig | None = None,
    wrap_triton: Callable[[Any], Any] | None = None,
) -> torch.Tensor:
    """y [batch, dim, L] in u's dtype, stored token-major (``token_major_empty``); inputs validated
    (``cycle.cycle_scan``), weights [dim, R] float32.

    wrap_triton: as ``triton_kernel.selective_scan_triton``'s: ``torch.library.wrap_triton`` makes
    the three launches traceable, so an AOTInductor package compiles them in
    (``hrsam.ops.selective_scan.inductor``); None launches directly.
    """
    wrap_triton = wrap_triton or _direct
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    weights = weights.float()
    go = prepare_chunk_launch(u, delta, A, B, C, D, delta_bias, delta_softplus, config)
    total = weights.sum(dim=1)  # W per channel: the output pass scans W u without a scaled copy of u
    out = token_major_empty(go.u)
    states = torch.empty(batch, go.n_chunks, dstate, dim, device=u.device, dtype=torch.float32)
    entering = torch.empty_like(states)
    dt_sums = torch.empty(batch, go.n_chunks, dim, device=u.device, dtype=torch.float32)
    state_strides = (states.stride(1), states.stride(2))
    wrap_triton(_chunk_state_kernel)[(go.n_chunks, go.d_blocks, batch)](
        go.u, go.delta, go.A_t, go.B_t, go.D, go.delta_bias, states, dt_sums,
        dim, seqlen, dstate, go.chunk_len, go.n_chunks, go.A_t.stride(0), *go.b_strides, *state_strides, **go.flags,
    )  # fmt: skip
    nc = triton.next_power_of_2(go.n_chunks)
    block_nd = max(1, _CARRY_TILE // nc)
    wrap_triton(_cycle_carry_kernel)[(triton.cdiv(dstate * dim, block_nd), batch)](
        states, dt_sums, go.A_t, weights, entering, dim, dstate, go.n_chunks, weights.stride(0), weights.stride(1),
        NC=nc, BLOCK_ND=block_nd, REPEATS=weights.shape[1], num_warps=4,
    )  # fmt: skip
    wrap_triton(_cycle_output_kernel)[(go.n_chunks, go.d_blocks, batch)](
        go.u, go.delta, go.A_t, go.B_t, go.C_t, go.D, go.delta_bias, out, entering, total,
        dim, seqlen, dstate, go.chunk_len, go.n_chunks, go.A_t.stride(0), *go.b_strides, *state_strides, *out.stride(),
        **go.flags,
    )  # fmt: skip
    return out
