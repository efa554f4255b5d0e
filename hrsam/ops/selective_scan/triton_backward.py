"""Triton backward of the selective scan: the gradients that training needs, chunked like the forward.

Why it exists. Without mamba-ssm the backward used to run autograd through the chunked torch
reference: thousands of small launches per scan and a log-depth doubling scan over
[batch, dim, N, T] tensors, the largest cost of a training step. This computes all seven
gradients in five launches with the forward's layout (one channel per lane, its N states in
registers) and the forward's parallelism over sequence chunks.

The math, per channel d and state n (dt after softplus, a_t = exp(dt_t A), x_t = dt_t u_t)::

    h_t = a_t h_{t-1} + B_t x_t          y_t = sum_n C_t h_t + D u_t
    g_t = dy_t C_t + a_{t+1} g_{t+1}     (dL/dh_t, a reverse recurrence with the same decays)
    dC_t = sum_d dy_t h_t   dB_t = sum_d g_t x_t   du_t = dt_t sum_n g_t B_t + D dy_t
    ddt_t = sum_n g_t (A a_t h_{t-1} + B_t u_t)    dA = sum_t g_t a_t h_{t-1} dt_t

Both recurrences are affine with the same per-chunk total decay exp(A sum dt), so chunks run in
parallel in both directions:

1. the forward's passes 1-2 (``triton_kernel``) give the true state entering every chunk;
2. ``_chunk_grad_state_kernel`` runs the reverse recurrence of every chunk but the first from a
   zero gradient and stores what leaves its start; the forward's carry kernel, fed the chunks in
   reverse order, turns those into the true gradient entering every chunk from its end;
3. ``_chunk_backward_kernel``: each chunk replays its forward once to store the state entering
   each sub-block of SUB steps, then walks the sub-blocks backwards: replay SUB steps into a
   scratch buffer of states (h_{t-1} must be read in reverse order, and dividing by a_t to run the
   state backwards would blow up as a_t -> 0), then the reverse step above.

The cross-channel sums (dB, dC) reduce over the lanes of one program and are written per channel
block, then summed over blocks by torch; dA, dD and d(delta_bias) are written per chunk and summed
likewise. Everything is float32 inside; du and ddelta come back in u's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hrsam.ops.selective_scan.triton_kernel import (
    ScanConfig,
    _chunk_carry_kernel,
    _chunk_state_kernel,
    _sm_count,
    _softplus,
    plan_chunks,
)

# log2(e) as a compile-time constant (Triton kernels may read only constexpr globals).
LOG2E = tl.constexpr(1.4426950408889634)
# Steps replayed into the scratch buffer at a time: chunk lengths are multiples of 64, so this
# divides them; 64 states of [N, BLOCK_D] float32 per program (256 KiB at N = 32) stay in L2.
SUB = 64
# Backward programs hold several [N] state vectors per lane (state, gradient carry, dA, decays),
# so fewer resident warps per SM than the forward; chunks are planned for this many (a first
# choice, not swept: docs/BENCHMARKS.md has the figures it gives).
BACKWARD_CONFIG = ScanConfig(block_d=32, num_warps=1, warps_per_sm=16, steps=8)


@triton.jit
def _step_tile(u_ptr, delta_ptr, row, t0, bias, mask_d, seqlen, STEPS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """[BLOCK_D, STEPS] tiles from step t0: dt (0 past seqlen or past dim), u, delta + bias, offsets, mask."""
    t = t0 + tl.arange(0, STEPS)
    tile = row[:, None] + t[None, :]
    mask = mask_d[:, None] & (t < seqlen)[None, :]
    u = tl.load(u_ptr + tile, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(delta_ptr + tile, mask=mask, other=0.0).to(tl.float32) + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(z)
    else:
        dt = z
    dt = tl.where(mask, dt, 0.0)
    return dt, u, z, tile, mask


@triton.jit
def _pick(tile, offs_t, i):
    """Column i of a [rows, STEPS] tile (i is a compile-time constant: a register choice)."""
    return tl.sum(tl.where((offs_t == i)[None, :], tile, 0.0), axis=1)


@triton.jit
def _channel_block(A_ptr, bias_ptr, pid_b, dim, seqlen, dstate, stride_an,
                   BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's channels (grid axis 1) and states: offsets, masks, A * log2(e), bias, row bases."""
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A2 = tl.load(A_ptr + offs_n[:, None] * stride_an + offs_d[None, :], mask=mask_nd, other=0.0) * LOG2E
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    row = pid_b * dim * seqlen + offs_d.to(tl.int64) * seqlen
    return offs_d, offs_n, mask_d, mask_n, mask_nd, A2, bias, row


@triton.jit(do_not_specialize=["stride_an"])
def _chunk_grad_state_kernel(
    delta_ptr, A_ptr, C_ptr, bias_ptr, dy_ptr, rstates_ptr, dtsum_ptr,
    dim, seqlen, dstate, chunk_len, n_chunks, stride_an,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Pass 2: gradient leaving the start of chunk c = n_chunks - 1 - j from a zero carry, and its sum of dt.

    Row j of ``rstates`` / ``dtsum`` holds chunk n_chunks - 1 - j, so the forward's carry kernel
    (a scan over rows) runs the chunks from last to first.
    """
    pid_j = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_t = tl.arange(0, STEPS)
    offs_d, offs_n, mask_d, mask_n, mask_nd, A2, bias, row = _channel_block(
        A_ptr, bias_ptr, pid_b, dim, seqlen, dstate, stride_an, BLOCK_D, BLOCK_N
    )
    c_base = pid_b * seqlen * dstate
    chunk = n_chunks - 1 - pid_j
    start = chunk * chunk_len
    stop = tl.minimum(start + chunk_len, seqlen)
    n_tiles = (stop - start + STEPS - 1) // STEPS
    gh = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(0, n_tiles):
        t0 = start + (n_tiles - 1 - k) * STEPS
        # u is not needed here: delta stands in for it and the dead load is compiled away.
        dt, _u, _z, tile, mask = _step_tile(delta_ptr, delta_ptr, row, t0, bias, mask_d, seqlen, STEPS, SOFTPLUS)
        dy = tl.load(dy_ptr + tile, mask=mask, other=0.0).to(tl.float32)
        dt_sum += tl.sum(dt, axis=1)
        for k2 in tl.static_range(STEPS):
            i = STEPS - 1 - k2
            t = t0 + i
            C_i = tl.load(C_ptr + c_base + t * dstate + offs_n, mask=mask_n & (offs_n * 0 + t < seqlen), other=0.0)
            g = gh + C_i[:, None] * _pick(dy, offs_t, i)[None, :]
            gh = tl.exp2(A2 * _pick(dt, offs_t, i)[None, :]) * g
    row_j = pid_b * (n_chunks - 1) + pid_j
    tl.store(rstates_ptr + row_j * dstate * dim + offs_n[:, None] * dim + offs_d[None, :], gh, mask=mask_nd)
    tl.store(dtsum_ptr + row_j * dim + offs_d, dt_sum, mask=mask_d)


@triton.jit
def _replay(h, A2, t0, u_ptr, delta_ptr, B_ptr, row, b_base, bias, offs_n, mask_n, mask_d, seqlen,
            dstate, hbuf_ptr, slot, slot_size, STORE: tl.constexpr, STEPS: tl.constexpr,
            SOFTPLUS: tl.constexpr):
    """Advance the state by STEPS steps from t0; with STORE, save each step's entering state h_{t-1}."""
    offs_t = tl.arange(0, STEPS)
    dt, u, _z, _tile, _mask = _step_tile(u_ptr, delta_ptr, row, t0, bias, mask_d, seqlen, STEPS, SOFTPLUS)
    x = dt * u
    for i in tl.static_range(STEPS):
        t = t0 + i
        if STORE:
            tl.store(hbuf_ptr + i * slot_size + slot, h)
        B_i = tl.load(B_ptr + b_base + t * dstate + offs_n, mask=mask_n & (offs_n * 0 + t < seqlen), other=0.0)
        h = tl.exp2(A2 * _pick(dt, offs_t, i)[None, :]) * h + B_i[:, None] * _pick(x, offs_t, i)[None, :]
    return h


@triton.jit(do_not_specialize=["stride_an"])
def _chunk_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    states_ptr, rstates_ptr, sub_ptr, hbuf_ptr,
    dim, seqlen, dstate, chunk_len, n_chunks, stride_an,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr, SUB_STEPS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    """Pass 3: all gradients of chunk c from its entering state and its entering gradient."""
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d_blocks = tl.num_programs(1)
    offs_t = tl.arange(0, STEPS)
    offs_d, offs_n, mask_d, mask_n, mask_nd, A2, bias, row = _channel_block(
        A_ptr, bias_ptr, pid_b, dim, seqlen, dstate, stride_an, BLOCK_D, BLOCK_N
    )
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    bc_base = pid_b * seqlen * dstate
    state_off = offs_n[:, None] * dim + offs_d[None, :]
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if pid_c > 0:
        h = tl.load(states_ptr + (pid_b * (n_chunks - 1) + pid_c - 1) * dstate * dim + state_off,
                    mask=mask_nd, other=0.0)
    gh = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if pid_c < n_chunks - 1:
        gh = tl.load(rstates_ptr + (pid_b * (n_chunks - 1) + n_chunks - 2 - pid_c) * dstate * dim + state_off,
                     mask=mask_nd, other=0.0)
    # Per-program scratch: the state entering each sub-block, and SUB_STEPS replayed states.
    slot = offs_n[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    slot_size = BLOCK_N * BLOCK_D
    prog = (pid_b * n_chunks + pid_c) * d_blocks + pid_d
    sub_base = sub_ptr + prog * (chunk_len // SUB_STEPS) * slot_size
    hbuf_base = hbuf_ptr + prog * SUB_STEPS * slot_size
    start = pid_c * chunk_len
    stop = tl.minimum(start + chunk_len, seqlen)
    n_sub = (stop - start + SUB_STEPS - 1) // SUB_STEPS
    for s in range(0, n_sub):
        tl.store(sub_base + s * slot_size + slot, h)
        for t0 in range(start + s * SUB_STEPS, start + (s + 1) * SUB_STEPS, STEPS):
            h = _replay(h, A2, t0, u_ptr, delta_ptr, B_ptr, row, bc_base, bias, offs_n, mask_n, mask_d,
                        seqlen, dstate, hbuf_base, slot, slot_size, False, STEPS, SOFTPLUS)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbc_base = (pid_b * d_blocks + pid_d) * seqlen * dstate
    for k in range(0, n_sub):
        sub_start = start + (n_sub - 1 - k) * SUB_STEPS
        tl.debug_barrier()  # the previous sub-block's reads of hbuf are done
        h = tl.load(sub_base + (n_sub - 1 - k) * slot_size + slot)
        for t0 in range(sub_start, sub_start + SUB_STEPS, STEPS):
            h = _replay(h, A2, t0, u_ptr, delta_ptr, B_ptr, row, bc_base, bias, offs_n, mask_n, mask_d,
                        seqlen, dstate, hbuf_base + (t0 - sub_start) * slot_size, slot, slot_size, True,
                        STEPS, SOFTPLUS)
        tl.debug_barrier()  # the replayed states are visible to every lane
        for j in range(0, SUB_STEPS // STEPS):
            t0 = sub_start + SUB_STEPS - STEPS - j * STEPS
            dt, u, z, tile, mask = _step_tile(u_ptr, delta_ptr, row, t0, bias, mask_d, seqlen, STEPS, SOFTPLUS)
            dy = tl.load(dy_ptr + tile, mask=mask, other=0.0).to(tl.float32)
            x = dt * u
            ddt = tl.zeros([BLOCK_D, STEPS], dtype=tl.float32)
            du = Dv[:, None] * dy
            for k2 in tl.static_range(STEPS):
                i = STEPS - 1 - k2
                t = t0 + i
                mask_bc = mask_n & (offs_n * 0 + t < seqlen)
                B_i = tl.load(B_ptr + bc_base + t * dstate + offs_n, mask=mask_bc, other=0.0)
                C_i = tl.load(C_ptr + bc_base + t * dstate + offs_n, mask=mask_bc, other=0.0)
                dt_i = _pick(dt, offs_t, i)
                x_i = _pick(x, offs_t, i)
                dy_i = _pick(dy, offs_t, i)
                h_prev = tl.load(hbuf_base + (t0 - sub_start + i) * slot_size + slot)
                a = tl.exp2(A2 * dt_i[None, :])
                g = gh + C_i[:, None] * dy_i[None, :]
                h_cur = a * h_prev + B_i[:, None] * x_i[None, :]
                tl.store(dC_ptr + dbc_base + t * dstate + offs_n, tl.sum(h_cur * dy_i[None, :], axis=1), mask=mask_bc)
                tl.store(dB_ptr + dbc_base + t * dstate + offs_n, tl.sum(g * x_i[None, :], axis=1), mask=mask_bc)
                gB = tl.sum(g * B_i[:, None], axis=0)
                ga = g * h_prev * a
                ddt_i = tl.sum(ga * A2, axis=0) * (1.0 / LOG2E) + gB * _pick(u, offs_t, i)
                dA_acc += ga * dt_i[None, :]
                pick = (offs_t == i)[None, :]
                ddt = tl.where(pick, ddt_i[:, None], ddt)
                du = tl.where(pick, du + (gB * dt_i)[:, None], du)
                gh = g * a
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(z)
            ddt = tl.where(mask, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=1)
            dD_acc += tl.sum(dy * u, axis=1)
            tl.store(du_ptr + tile, du.to(du_ptr.dtype.element_ty), mask=mask)
            tl.store(ddelta_ptr + tile, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask)
    part = pid_b * n_chunks + pid_c
    tl.store(dA_ptr + part * dstate * dim + state_off, dA_acc, mask=mask_nd)
    tl.store(dD_ptr + part * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + part * dim + offs_d, dbias_acc, mask=mask_d)


def selective_scan_backward_triton(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    config: ScanConfig = BACKWARD_CONFIG,
) -> tuple[torch.Tensor, ...]:
    """Gradients (du, ddelta, dA, dB, dC, dD, d_delta_bias) of sum(grad_out * y); inputs validated.

    u, delta, B, C, grad_out: one of float32/float16/bfloat16; A, D, delta_bias: float32. Each
    gradient has its input's dtype and shape.
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    device = u.device
    f32 = torch.float32
    u, delta, dy = u.contiguous(), delta.contiguous(), grad_out.to(u.dtype).contiguous()
    B_t = B.transpose(1, 2).to(f32).contiguous()  # [batch, L, N]
    C_t = C.transpose(1, 2).to(f32).contiguous()
    A_t = A.float().t().contiguous()  # [N, dim]
    D, delta_bias = D.float().contiguous(), delta_bias.float().contiguous()
    block_n = triton.next_power_of_2(dstate)
    d_blocks = triton.cdiv(dim, config.block_d)
    chunk_len, n_chunks = plan_chunks(batch, dim, seqlen, config, _sm_count(device))
    n_prefix = max(n_chunks - 1, 1)
    softplus = bool(delta_softplus)
    scan_flags = dict(BLOCK_D=config.block_d, BLOCK_N=block_n, STEPS=config.steps, SOFTPLUS=softplus,
                      num_warps=config.num_warps)
    states = torch.zeros(batch, n_prefix, dstate, dim, device=device, dtype=f32)
    rstates = torch.zeros_like(states)
    if n_chunks > 1:
        _carry(states, _forward_summaries(u, delta, A_t, B_t, D, delta_bias, states, chunk_len, n_chunks,
                                          scan_flags, dim % config.block_d == 0, dstate == block_n), A_t)
        rsums = torch.empty(batch, n_chunks - 1, dim, device=device, dtype=f32)
        _chunk_grad_state_kernel[(n_chunks - 1, d_blocks, batch)](
            delta, A_t, C_t, delta_bias, dy, rstates, rsums,
            dim, seqlen, dstate, chunk_len, n_chunks, A_t.stride(0), **scan_flags,
        )
        _carry(rstates, rsums, A_t)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dA = torch.empty(batch, n_chunks, dstate, dim, device=device, dtype=f32)
    dD = torch.empty(batch, n_chunks, dim, device=device, dtype=f32)
    dbias = torch.empty_like(dD)
    dB = torch.empty(batch, d_blocks, seqlen, dstate, device=device, dtype=f32)
    dC = torch.empty_like(dB)
    programs = batch * n_chunks * d_blocks
    sub = torch.empty(programs, chunk_len // SUB, block_n, config.block_d, device=device, dtype=f32)
    hbuf = torch.empty(programs, SUB, block_n, config.block_d, device=device, dtype=f32)
    _chunk_backward_kernel[(n_chunks, d_blocks, batch)](
        u, delta, A_t, B_t, C_t, D, delta_bias, dy,
        du, ddelta, dA, dB, dC, dD, dbias,
        states, rstates, sub, hbuf,
        dim, seqlen, dstate, chunk_len, n_chunks, A_t.stride(0), SUB_STEPS=SUB, **scan_flags,
    )
    return (
        du,
        ddelta,
        dA.sum((0, 1)).t().to(A.dtype),
        dB.sum(1).transpose(1, 2).to(B.dtype),
        dC.sum(1).transpose(1, 2).to(C.dtype),
        dD.sum((0, 1)).to(D.dtype),
        dbias.sum((0, 1)).to(delta_bias.dtype),
    )


def _forward_summaries(
    u: torch.Tensor, delta: torch.Tensor, A_t: torch.Tensor, B_t: torch.Tensor, D: torch.Tensor,
    delta_bias: torch.Tensor, states: torch.Tensor, chunk_len: int, n_chunks: int, flags: dict,
    even_d: bool, even_n: bool,
) -> torch.Tensor:
    """The forward's pass 1 into ``states``: each chunk's final state from zero; returns its dt sums."""
    batch, dim, seqlen = u.shape
    dt_sums = torch.empty(batch, n_chunks - 1, dim, device=u.device, dtype=torch.float32)
    _chunk_state_kernel[(n_chunks - 1, triton.cdiv(dim, flags["BLOCK_D"]), batch)](
        u, delta, A_t, B_t, D, delta_bias, states, dt_sums,
        dim, seqlen, A_t.shape[0], chunk_len, n_chunks - 1, A_t.stride(0),
        B_t.stride(0), B_t.stride(1), B_t.stride(2), states.stride(1), states.stride(2),
        EVEN_D=even_d, EVEN_N=even_n, **flags,
    )
    return dt_sums


def _carry(states: torch.Tensor, dt_sums: torch.Tensor, A_t: torch.Tensor) -> None:
    """The forward's pass 2, in place: chunk-local summaries -> true values entering each chunk."""
    batch, rows, dstate, dim = states.shape
    nc = triton.next_power_of_2(rows)
    block_nd = max(1, 4096 // nc)
    _chunk_carry_kernel[(triton.cdiv(dstate * dim, block_nd), batch)](
        states, dt_sums, A_t, dim, dstate, rows, NC=nc, BLOCK_ND=block_nd, num_warps=4,
    )
