"""The Cycle-scan's weighted scan of a repeated sequence, on the untiled sequence (Triton, CUDA).

``hrsam.ops.selective_scan.cycle`` defines it and says why L steps suffice: the weighted sum of
the R copies' states is the ordinary scan of u' = W u from S_in = sum_k w_k H_k, with
H_k = h_L (1 + P_L + ... + P_L^(k-1)) from copy 0's final state h_L and total decay P_L. Here the
passes are chunked over L as ``triton_kernel``'s (same chunk plan, A, B and C layouts):

1. ``_cycle_state_kernel`` for every chunk, the last one included (its final state is part of
   h_L): the chunk's final state from a zero state and its sum of dt;
2. ``_cycle_carry_kernel``: the scan over chunk summaries, then each chunk's weighted entering
   state S_in[c] = W H_0(c) + P(c) * h_L * G with G = sum_k w_k (1 + ... + P_L^(k-1)), where
   H_0(c) and P(c) are copy 0's state and decay product entering chunk c (S_in[0] = h_L * G);
3. ``_cycle_output_kernel``: the scan of u' = W u from S_in[c], writing y (W is applied as u is
   loaded: no scaled copy of u).

Passes 1 and 3 step through their chunk one step at a time (``_cycle_steps``): each step's u and
delta are [BLOCK_D] vectors read through their own strides, one channel per lane, the lane that
holds that channel's N states. So u and delta are read in place in any layout and dtype (the
model passes its projections' token-major bf16 outputs as transposed views: no transposing or
converting copies), and no step is picked out of a loaded tile with cross-lane work as in
``triton_kernel``'s tile kernels. Fast only on channel-contiguous inputs like those views: on a
contiguous [batch, dim, L] the lanes of one step are L elements apart, and the passes measured
1.4-1.5x slower than the tile kernels on the H200 (docs/BENCHMARKS.md). y is float32 (the state
dtype) and stored token-major (``reference.token_major_empty``).

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
    DEFAULT_CONFIG,
    ScanConfig,
    _direct,
    _program_operands,
    _scan_chunk_summaries,
    _softplus,
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
    offs_c = tl.arange(0, NC)
    offs_nd = tl.program_id(0) * BLOCK_ND + tl.arange(0, BLOCK_ND)
    pid_b = tl.program_id(1).to(tl.int64)
    decay, carried, _, mask_nd = _scan_chunk_summaries(
        states_ptr, dtsum_ptr, A_ptr, pid_b * n_chunks + offs_c, offs_c, offs_nd, dim, dstate, n_chunks
    )
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


@triton.jit
def _before_stop(mask, t, stop):
    """``mask`` & (t < stop), the comparison made per element: a scalar comparison combined with a
    vector mask comes out int32 under Triton's interpreter (the tests' way of running these kernels
    without a GPU)."""
    return mask & (mask.to(tl.int32) * 0 + t < stop)


@triton.jit
def _cycle_load(u_t, delta_t, b_t, c_t, t, stop, offs_n, mask_n, mask_d, MASKED: tl.constexpr, OUTPUT: tl.constexpr):
    """Step t's operands at the given pointers: u, delta [BLOCK_D] (their dtype), B_t, C_t [BLOCK_N].

    MASKED: nothing is read at or past ``stop`` (u = delta = B = C = 0).
    """
    if MASKED:
        mask = _before_stop(mask_d, t, stop)
        mask_bc = _before_stop(mask_n, t, stop)
    else:
        mask = mask_d
        mask_bc = mask_n
    u = tl.load(u_t, mask=mask, other=0.0)
    delta = tl.load(delta_t, mask=mask, other=0.0)
    B = tl.load(b_t, mask=mask_bc, other=0.0)
    if OUTPUT:
        C = tl.load(c_t, mask=mask_bc, other=0.0)
    else:
        C = B  # not read
    return u, delta, B, C


@triton.jit
def _cycle_update(
    h, dt_sum, A2, u, delta, B, C, t, stop, out_t, bias, Dv, scale, mask_d,
    MASKED: tl.constexpr, SOFTPLUS: tl.constexpr, OUTPUT: tl.constexpr,
):  # fmt: skip
    """Step t from the operands ``_cycle_load`` read: h, dt_sum and (OUTPUT) y_t, stored at ``out_t``.

    MASKED: a step at or past ``stop`` gets dt = 0 (and B = 0 from the load), which leaves h and
    dt_sum unchanged, and stores nothing.
    """
    u = u.to(tl.float32)
    dt = delta.to(tl.float32) + bias
    if SOFTPLUS:
        dt = _softplus(dt)
    if MASKED:
        live = _before_stop(mask_d, t, stop)
        dt = tl.where(live, dt, 0.0)
    else:
        live = mask_d
    if OUTPUT:
        u = u * scale  # u' = W u
    dt_sum += dt
    h = tl.exp2(A2 * dt[None, :]) * h + B[:, None] * (dt * u)[None, :]
    if OUTPUT:
        y = tl.sum(h * C[:, None], axis=0) + Dv * u
        tl.store(out_t, y, mask=live)
    return h, dt_sum


@triton.jit
def _cycle_tile(
    h, dt_sum, A2, t0, stop, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C,
    stride_ut, stride_deltat, stride_bt, stride_ot, bias, Dv, scale, offs_n, mask_n, mask_d,
    STEPS: tl.constexpr, MASKED: tl.constexpr, PREFETCH: tl.constexpr, SOFTPLUS: tl.constexpr,
    OUTPUT: tl.constexpr,
):  # fmt: skip
    """Steps t0 .. t0 + STEPS - 1 of ``_cycle_steps``, unrolled; returns the advanced pointers and
    (PREFETCH) step t0 + STEPS's operands, the next tile's first (else u, delta, B, C pass through)."""
    for i in tl.static_range(STEPS):
        if PREFETCH:
            u_i, delta_i, B_i, C_i = u, delta, B, C
            u_t += stride_ut
            delta_t += stride_deltat
            b_t += stride_bt
            c_t += stride_bt
            # Only the tile's last step can look past ``stop`` (unless the whole tile is masked).
            u, delta, B, C = _cycle_load(
                u_t, delta_t, b_t, c_t, t0 + i + 1, stop, offs_n, mask_n, mask_d, MASKED or i == STEPS - 1, OUTPUT
            )
        else:
            u_i, delta_i, B_i, C_i = _cycle_load(
                u_t, delta_t, b_t, c_t, t0 + i, stop, offs_n, mask_n, mask_d, MASKED, OUTPUT
            )
            u_t += stride_ut
            delta_t += stride_deltat
            b_t += stride_bt
            c_t += stride_bt
        h, dt_sum = _cycle_update(
            h, dt_sum, A2, u_i, delta_i, B_i, C_i, t0 + i, stop, out_t, bias, Dv, scale, mask_d, MASKED, SOFTPLUS,
            OUTPUT,
        )  # fmt: skip
        out_t += stride_ot
    return h, dt_sum, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C


@triton.jit
def _step_ptrs(ptr, pid_b, offs_d64, t, stride_b, stride_d, stride_t):
    """[BLOCK_D] pointers to step t of batch row pid_b, channels offs_d64 (64-bit offsets)."""
    return ptr + pid_b * stride_b + offs_d64 * stride_d + t.to(tl.int64) * stride_t


@triton.jit
def _cycle_steps(
    h, dt_sum, A2, start, stop, pid_b, offs_d,
    u_ptr, delta_ptr, B_ptr, C_ptr, out_ptr,
    stride_ub, stride_ud, stride_ut, stride_deltab, stride_deltad, stride_deltat,
    stride_bb, stride_bt, stride_bn, stride_ob, stride_od, stride_ot,
    bias, Dv, scale, offs_n, mask_n, mask_d,
    STEPS: tl.constexpr, PREFETCH: tl.constexpr, SOFTPLUS: tl.constexpr, OUTPUT: tl.constexpr,
):  # fmt: skip
    """Advance the [BLOCK_N, BLOCK_D] float32 state h over steps [start, stop), one step at a time.

    Step t reads u[b, d, t] and delta[b, d, t] for the program's channels as [BLOCK_D] vectors
    through their own (batch, channel, step) strides, so any layout and dtype works: the model's
    token-major 16-bit projections in place (channel stride 1: one contiguous row per warp and
    step) as well as contiguous [batch, dim, L] float32. Each value lands in the lane that owns its
    channel, the lane that holds that channel's N states, so nothing moves between lanes (the tile
    kernels of ``triton_kernel`` load [BLOCK_D, STEPS] tiles and pick each step out with masked sums
    and a layout conversion). B_t and C_t are [BLOCK_N] rows of the [batch, L, N] float32 copies,
    broadcast to the lanes through shared memory (a barrier per step). The steps are unrolled STEPS
    at a time (``tl.static_range``) inside a runtime loop over tiles; the last, partial tile is
    masked. The pointers advance by their step strides (64-bit: no offset can overflow).

    PREFETCH: step t + 1's operands are loaded before step t is computed. The compiler moves no load
    across the per-step barrier, so without it every step waits for its own loads (offline sm_90:
    more registers with it, docs/BENCHMARKS.md).
    OUTPUT: scan u' = ``scale`` * u (W per channel) and store y_t = sum_n C_t h + Dv u' as a float32
    [BLOCK_D] vector at out + b stride_ob + d stride_od + t stride_ot. Returns (h, dt_sum).
    """
    offs_d64 = offs_d.to(tl.int64)
    u_t = _step_ptrs(u_ptr, pid_b, offs_d64, start, stride_ub, stride_ud, stride_ut)
    delta_t = _step_ptrs(delta_ptr, pid_b, offs_d64, start, stride_deltab, stride_deltad, stride_deltat)
    out_t = _step_ptrs(out_ptr, pid_b, offs_d64, start, stride_ob, stride_od, stride_ot)
    start64 = start.to(tl.int64)
    bc = pid_b * stride_bb + start64 * stride_bt + offs_n * stride_bn
    b_t = B_ptr + bc
    c_t = C_ptr + bc
    if PREFETCH:
        u, delta, B, C = _cycle_load(u_t, delta_t, b_t, c_t, start, stop, offs_n, mask_n, mask_d, True, OUTPUT)
    else:  # placeholders, loaded step by step
        u, delta, B, C = bias, bias, A2, A2
    full_stop = start + ((stop - start) // STEPS) * STEPS
    for t0 in range(start, full_stop, STEPS):
        h, dt_sum, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C = _cycle_tile(
            h, dt_sum, A2, t0, stop, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C,
            stride_ut, stride_deltat, stride_bt, stride_ot, bias, Dv, scale, offs_n, mask_n, mask_d,
            STEPS, False, PREFETCH, SOFTPLUS, OUTPUT,
        )  # fmt: skip
    if full_stop < stop:
        # y's pointer for the tail from out_ptr, not from the loop: torch's analysis of which
        # arguments a user kernel writes (AOTInductor packages) follows a loop's results back to every
        # value the loop carries, and would report u, delta, B and C as written (tests/test_kernel_writes.py).
        out_t = _step_ptrs(out_ptr, pid_b, offs_d64, full_stop, stride_ob, stride_od, stride_ot)
        h, dt_sum, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C = _cycle_tile(
            h, dt_sum, A2, full_stop, stop, u_t, delta_t, b_t, c_t, out_t, u, delta, B, C,
            stride_ut, stride_deltat, stride_bt, stride_ot, bias, Dv, scale, offs_n, mask_n, mask_d,
            STEPS, True, PREFETCH, SOFTPLUS, OUTPUT,
        )  # fmt: skip
    return h, dt_sum


# The channel strides of u, delta and y are runtime values (not specialised), as A's row stride:
# known to be 1 (the token-major views), they would let Triton give a lane several contiguous
# channels of the [BLOCK_D] vectors, which the per-lane state would then be converted to, step by
# step. (With BLOCK_D = 32 lanes a warp it keeps one channel per lane either way: offline sm_90
# compile with the strides specialised, the same registers and instructions, no shuffles.)
@triton.jit(do_not_specialize=["stride_ud", "stride_deltad", "stride_an", "stride_srow", "stride_sn"])
def _cycle_state_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, states_ptr, dtsum_ptr,
    dim, seqlen, dstate, chunk_len, n_chunks,
    stride_ub, stride_ud, stride_ut, stride_deltab, stride_deltad, stride_deltat,
    stride_an, stride_bb, stride_bt, stride_bn, stride_srow, stride_sn,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, SOFTPLUS: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Pass 1: copy 0's final state of chunk c from a zero state, and the chunk's sum of dt (every
    chunk, the last one included: its final state is part of h_L)."""
    pid_c = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n, mask_d, A2, bias = _program_operands(
        A_ptr, bias_ptr, offs_n, offs_d, dim, dstate, stride_an, EVEN_D, EVEN_N
    )
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    start = pid_c * chunk_len
    stop = tl.minimum(start + chunk_len, seqlen)
    h, dt_sum = _cycle_steps(
        h, tl.zeros_like(bias), A2, start, stop, pid_b, offs_d, u_ptr, delta_ptr, B_ptr, B_ptr, u_ptr,
        stride_ub, stride_ud, stride_ut, stride_deltab, stride_deltad, stride_deltat,
        stride_bb, stride_bt, stride_bn, 0, 0, 0, bias, bias, bias, offs_n, mask_n, mask_d,
        STEPS, PREFETCH, SOFTPLUS, False,
    )  # fmt: skip
    row = pid_b * n_chunks + pid_c
    state_ptrs = states_ptr + row * stride_srow + offs_n[:, None] * stride_sn + offs_d[None, :]
    tl.store(state_ptrs, h, mask=(offs_n < dstate)[:, None] & (offs_d < dim)[None, :])
    tl.store(dtsum_ptr + row * dim + offs_d, dt_sum, mask=offs_d < dim)


@triton.jit(do_not_specialize=["stride_ud", "stride_deltad", "stride_od", "stride_an", "stride_srow", "stride_sn"])
def _cycle_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, enter_ptr, total_ptr,
    dim, seqlen, dstate, chunk_len, n_chunks,
    stride_ub, stride_ud, stride_ut, stride_deltab, stride_deltad, stride_deltat,
    stride_an, stride_bb, stride_bt, stride_bn, stride_srow, stride_sn, stride_ob, stride_od, stride_ot,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, SOFTPLUS: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """Pass 3: scan chunk c of u' = W u (``total_ptr``: W [dim]) from its weighted entering state and
    write y (float32, through y's strides: token-major from the launcher). Channel strides as in
    ``_cycle_state_kernel``: unspecialised, each warp's store of one step is still one contiguous row
    of its channels."""
    pid_c = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n, mask_d, A2, bias = _program_operands(
        A_ptr, bias_ptr, offs_n, offs_d, dim, dstate, stride_an, EVEN_D, EVEN_N
    )
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    scale = tl.load(total_ptr + offs_d, mask=mask_d, other=0.0)
    row = pid_b * n_chunks + pid_c
    state_ptrs = enter_ptr + row * stride_srow + offs_n[:, None] * stride_sn + offs_d[None, :]
    h = tl.load(state_ptrs, mask=(offs_n < dstate)[:, None] & (offs_d < dim)[None, :], other=0.0)
    start = pid_c * chunk_len
    stop = tl.minimum(start + chunk_len, seqlen)
    _cycle_steps(
        h, tl.zeros_like(bias), A2, start, stop, pid_b, offs_d, u_ptr, delta_ptr, B_ptr, C_ptr, out_ptr,
        stride_ub, stride_ud, stride_ut, stride_deltab, stride_deltad, stride_deltat,
        stride_bb, stride_bt, stride_bn, stride_ob, stride_od, stride_ot, bias, Dv, scale, offs_n, mask_n, mask_d,
        STEPS, PREFETCH, SOFTPLUS, True,
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
    """y [batch, dim, L] float32 (the state dtype, whatever u's), stored token-major
    (``token_major_empty``); inputs validated (``cycle.cycle_scan``), weights [dim, R] float32.

    u and delta are read in place, any strides, float32/float16/bfloat16: the model hands the
    token-major projections' transposed views (``CycleScan._scan``), so no transposing or
    converting copy of them is made. B and C go through ``prepare_chunk_launch`` ([batch, L, N]
    float32 copies for 16-bit inputs). config None: ``DEFAULT_CONFIG`` for every dtype (the
    passes load one step's u and delta per lane, so the 16-bit tile config does not apply).
    wrap_triton: as ``triton_kernel.selective_scan_triton``'s: ``torch.library.wrap_triton`` makes
    the three launches traceable, so an AOTInductor package compiles them in
    (``hrsam.ops.selective_scan.inductor``); None launches directly.
    """
    wrap_triton = wrap_triton or _direct
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    weights = weights.float()
    config = config or DEFAULT_CONFIG
    go = prepare_chunk_launch(u, delta, A, B, C, D, delta_bias, delta_softplus, config, in_place=True)
    total = weights.sum(dim=1)  # W per channel: the output pass scans W u without a scaled copy of u
    out = token_major_empty(u)
    states = torch.empty(batch, go.n_chunks, dstate, dim, device=u.device, dtype=torch.float32)
    entering = torch.empty_like(states)
    dt_sums = torch.empty(batch, go.n_chunks, dim, device=u.device, dtype=torch.float32)
    state_strides = (states.stride(1), states.stride(2))
    wrap_triton(_cycle_state_kernel)[(go.n_chunks, go.d_blocks, batch)](
        u, delta, go.A_t, go.B_t, go.delta_bias, states, dt_sums,
        dim, seqlen, dstate, go.chunk_len, go.n_chunks, *u.stride(), *delta.stride(),
        go.A_t.stride(0), *go.b_strides, *state_strides, PREFETCH=config.prefetch, **go.flags,
    )  # fmt: skip
    nc = triton.next_power_of_2(go.n_chunks)
    block_nd = max(1, _CARRY_TILE // nc)
    wrap_triton(_cycle_carry_kernel)[(triton.cdiv(dstate * dim, block_nd), batch)](
        states, dt_sums, go.A_t, weights, entering, dim, dstate, go.n_chunks, weights.stride(0), weights.stride(1),
        NC=nc, BLOCK_ND=block_nd, REPEATS=weights.shape[1], num_warps=4,
    )  # fmt: skip
    wrap_triton(_cycle_output_kernel)[(go.n_chunks, go.d_blocks, batch)](
        u, delta, go.A_t, go.B_t, go.C_t, go.D, go.delta_bias, out, entering, total,
        dim, seqlen, dstate, go.chunk_len, go.n_chunks, *u.stride(), *delta.stride(),
        go.A_t.stride(0), *go.b_strides, *state_strides, *out.stride(), PREFETCH=config.prefetch, **go.flags,
    )  # fmt: skip
    return out
