"""The chunked selective scan written in Gluon, Triton's explicit-layout dialect (experiment).

Why it exists. The Triton kernel keeps one channel per thread with all N states in registers,
but Triton cannot be told that layout for the per-step B_t/C_t vectors, so it broadcasts them
through shared memory with a barrier every step (docs/BENCHMARKS.md). In Gluon the layout is
written out: h and A are [channels, N] tensors with one channel's N states in one thread, and
B_t/C_t are loaded straight into the slice of that layout that every thread holds whole (one
16-byte broadcast load per 4 states, no shared memory, no barrier). The read-out
y = sum_n C h is then an in-thread FMA chain. The plan, the carry pass and the softplus are the
Triton kernel's (``plan_chunks``, ``_chunk_carry_kernel``, ``_softplus``: a ``triton.jit`` function
called from Gluon compiles to the same SASS as a Gluon copy of it).

Two more things the Triton kernel does not do: the next tile's u and delta are loaded (and the
softplus computed) while the current tile is scanned, and ``ch`` channels per thread share one
B_t/C_t load, with a channel's states optionally spread over ``split`` lanes so the registers
stay the same (4 x 8: a quarter of the L1 traffic of the output pass).

Layout contract as in ``hrsam.ops.selective_scan.triton_kernel``; needs Gluon (triton >= 3.5)
and a CUDA device. Used only by ``benchmarks/gluon_scan/bench.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from hrsam.ops.selective_scan.triton_kernel import ScanConfig, _chunk_carry_kernel, _softplus, plan_chunks


@dataclass(frozen=True)
class GluonScanConfig:
    """Launch parameters; suffix 1 is the chunk-state pass, 3 the output pass.

    ch: channels per thread; split: lanes that share a channel, each holding N / split of its
    states (1: all N in one thread; 4 with ch 4: 4 channels x 8 states per thread, a quarter of
    the B_t/C_t loads per state-step, the read-out finished by 2 shuffles, u/dt/y moved between a
    compact and the replicated layout through shared memory once per tile);
    steps: time steps per tile (unrolled); poly: every poly-th step
    takes its exponentials from an FMA-pipe polynomial instead of the MUFU (0: never);
    maxnreg: register cap (None: the compiler's choice); warps_per_sm as in ScanConfig.
    """

    warps_per_sm: int = 48
    ch1: int = 1
    ch3: int = 1
    split1: int = 1
    split3: int = 1
    steps1: int = 8
    steps3: int = 8
    poly1: int = 0
    poly3: int = 0
    maxnreg1: int | None = None
    maxnreg3: int | None = None


@gluon.jit
def _exp2_fma(x):
    """2^x without the MUFU: x = n + f (|f| <= 1/2), degree-5 minimax 2^f, n added to the
    exponent bits; relative error 2e-7, like ex2.approx. x is clamped at -125."""
    x = gl.maximum(x, -125.0)
    j = x + 12582912.0
    f = x - (j - 12582912.0)
    p = 0.0013313331874087453 * f + 0.009675886482000351
    p = p * f + 0.05550599843263626
    p = p * f + 0.24022111296653748
    p = p * f + 0.6931470632553101
    p = p * f + 1.0000001192092896
    bits = p.to(gl.int32, bitcast=True) + (j.to(gl.int32, bitcast=True) << 23)
    return bits.to(gl.float32, bitcast=True)


@gluon.jit
def _load_tile(t0, u_ptr, delta_ptr, ud_row, bias, mask_d, seqlen, STEPS: gl.constexpr,
               SOFTPLUS: gl.constexpr, LT: gl.constexpr):
    """u and dt = softplus(delta + bias) for steps t0 .. t0 + STEPS - 1, zero past seqlen."""
    t = t0 + gl.arange(0, STEPS, layout=gl.SliceLayout(0, LT))
    mask_t = t < seqlen
    mask = mask_d[:, None] & mask_t[None, :]
    tile = ud_row[:, None] + t[None, :]
    u = gl.load(u_ptr + tile, mask=mask, other=0.0).to(gl.float32)
    dt = gl.load(delta_ptr + tile, mask=mask, other=0.0).to(gl.float32) + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    return u, gl.where(mask_t[None, :], dt, 0.0)


@gluon.jit
def _scan_steps(h, A2, u, dt, t0, B_ptr, C_ptr, out_ptr, ud_row, bc_base, Dv, offs_n, mask_d, mask_n,
                stop, stride_bt, STEPS: gl.constexpr, MASK_T: gl.constexpr, OUTPUT: gl.constexpr,
                POLY: gl.constexpr, LT: gl.constexpr, LH: gl.constexpr, LC: gl.constexpr):
    """Advance h over one tile whose u and dt (layout LT) are in registers (steps >= stop: B = 0).

    ud_row and mask_d are in the compact layout LC, where y is stored."""
    LTD: gl.constexpr = gl.SliceLayout(1, LT)
    LHD: gl.constexpr = gl.SliceLayout(1, LH)
    offs_t = gl.arange(0, STEPS, layout=gl.SliceLayout(0, LT))
    dtu = dt * u
    y = Dv[:, None] * u
    for i in gl.static_range(STEPS):
        # a compile-time mask over the in-thread step axis: folds to a register pick
        pick = (offs_t == i)[None, :]
        dt_i = gl.convert_layout(gl.sum(gl.where(pick, dt, 0.0), axis=1), LHD, assert_trivial=True)
        dtu_i = gl.convert_layout(gl.sum(gl.where(pick, dtu, 0.0), axis=1), LHD, assert_trivial=True)
        bc = bc_base + (t0 + i) * stride_bt + offs_n
        mask_bc = mask_n
        if MASK_T:
            mask_bc = mask_n & (offs_n * 0 + t0 + i < stop)
        B_i = gl.load(B_ptr + bc, mask=mask_bc, other=0.0)
        x = A2 * dt_i[:, None]
        if POLY > 0 and i % POLY == POLY - 1:
            decay = _exp2_fma(x)
        else:
            decay = gl.exp2(x)
        h = decay * h + B_i[None, :] * dtu_i[:, None]
        if OUTPUT:
            C_i = gl.load(C_ptr + bc, mask=mask_bc, other=0.0)
            y_i = gl.convert_layout(gl.sum(h * C_i[None, :], axis=1), LTD, assert_trivial=True)
            y = gl.where(pick, y + y_i[:, None], y)
    if OUTPUT:
        t = t0 + gl.arange(0, STEPS, layout=gl.SliceLayout(0, LC))
        mask = mask_d[:, None] & (t < stop)[None, :]
        y = gl.convert_layout(y, LC)
        gl.store(out_ptr + ud_row[:, None] + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
    return h


@gluon.jit
def _scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, states_ptr, dtsum_ptr,
    dim, seqlen, dstate, chunk_len, n_prefix, stride_bb, stride_bt,
    BLOCK_N: gl.constexpr, STEPS: gl.constexpr, CH: gl.constexpr, SPLIT: gl.constexpr, EVEN_D: gl.constexpr,
    EVEN_N: gl.constexpr, SOFTPLUS: gl.constexpr, OUTPUT: gl.constexpr, POLY: gl.constexpr,
):
    """OUTPUT False: pass 1 (chunk-final state from zero and the chunk's dt sum, chunks
    0 .. n_prefix - 1). OUTPUT True: pass 3 (scan every chunk from its carried state, write y).
    One warp per program; CH channels x BLOCK_N / SPLIT states per thread (see GluonScanConfig).
    LH holds the states, LT the per-step inputs as each thread needs them (replicated over the
    SPLIT lanes of a channel), LC the same tiles with every element once (loads, softplus, stores).
    """
    BLOCK_D: gl.constexpr = 32 * CH // SPLIT
    LH: gl.constexpr = gl.BlockedLayout([CH, BLOCK_N // SPLIT], [32 // SPLIT, SPLIT], [1, 1], [1, 0])
    LT: gl.constexpr = gl.BlockedLayout([CH, STEPS], [32 // SPLIT, SPLIT], [1, 1], [1, 0])
    LC: gl.constexpr = gl.BlockedLayout([BLOCK_D // 32, STEPS], [32, 1], [1, 1], [1, 0])
    pid_c = gl.program_id(0)
    pid_b = gl.program_id(2).to(gl.int64)
    d0 = gl.program_id(1) * BLOCK_D
    offs_dh = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LH))
    offs_dt = d0 + gl.arange(0, BLOCK_D, layout=gl.SliceLayout(1, LC))
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, LH))
    if EVEN_D:
        mask_dh = offs_dh >= 0
        mask_dt = offs_dt >= 0
    else:
        mask_dh = offs_dh < dim
        mask_dt = offs_dt < dim
    if EVEN_N:
        mask_n = offs_n < BLOCK_N
    else:
        mask_n = offs_n < dstate
    mask_dn = mask_dh[:, None] & mask_n[None, :]
    A2 = gl.load(A_ptr + offs_dh[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = A2 * 1.4426950408889634
    Dv = gl.load(D_ptr + offs_dt, mask=mask_dt, other=0.0)
    bias = gl.load(bias_ptr + offs_dt, mask=mask_dt, other=0.0)
    ud_row = pid_b * dim * seqlen + offs_dt.to(gl.int64) * seqlen
    bc_base = pid_b * stride_bb
    state_off = offs_n[None, :] * dim + offs_dh[:, None]
    if OUTPUT and pid_c > 0:
        row = pid_b * n_prefix + pid_c - 1
        h = gl.load(states_ptr + row * dstate * dim + state_off, mask=mask_dn, other=0.0)
    else:
        h = gl.zeros([BLOCK_D, BLOCK_N], gl.float32, LH)
    dt_sum = gl.zeros([BLOCK_D], gl.float32, gl.SliceLayout(1, LC))
    Dv = gl.convert_layout(Dv, gl.SliceLayout(1, LT))
    start = pid_c * chunk_len
    stop = gl.minimum(start + chunk_len, seqlen)
    full_stop = start + ((stop - start) // STEPS) * STEPS
    u_next, dt_next = _load_tile(start, u_ptr, delta_ptr, ud_row, bias, mask_dt, seqlen, STEPS, SOFTPLUS, LC)
    for t0 in range(start, full_stop, STEPS):
        u, dt = u_next, dt_next
        u_next, dt_next = _load_tile(t0 + STEPS, u_ptr, delta_ptr, ud_row, bias, mask_dt, seqlen, STEPS,
                                     SOFTPLUS, LC)
        if not OUTPUT:
            dt_sum += gl.sum(dt, axis=1)
        h = _scan_steps(h, A2, gl.convert_layout(u, LT), gl.convert_layout(dt, LT), t0, B_ptr, C_ptr, out_ptr,
                        ud_row, bc_base, Dv, offs_n, mask_dt, mask_n, stop, stride_bt, STEPS, False, OUTPUT, POLY,
                        LT, LH, LC)
    if full_stop < stop:
        # only the sequence's last chunk has a partial tile (chunk lengths are multiples of 64),
        # so the prefetched tile, masked at seqlen, is exactly this tile; pass 1 never sees it
        h = _scan_steps(h, A2, gl.convert_layout(u_next, LT), gl.convert_layout(dt_next, LT), full_stop, B_ptr,
                        C_ptr, out_ptr, ud_row, bc_base, Dv, offs_n, mask_dt, mask_n, stop, stride_bt, STEPS, True,
                        OUTPUT, POLY, LT, LH, LC)
    if not OUTPUT:
        row = pid_b * n_prefix + pid_c
        gl.store(states_ptr + row * dstate * dim + state_off, h, mask=mask_dn)
        gl.store(dtsum_ptr + row * dim + offs_dt, dt_sum, mask=mask_dt)


def selective_scan_gluon(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool,
    config: GluonScanConfig = GluonScanConfig(),
) -> torch.Tensor:
    """Forward scan, same arguments and result as ``selective_scan_triton``."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    u, delta = u.contiguous(), delta.contiguous()
    # [batch, L, N] float32, always a fresh contiguous copy: the kernel reads N values of a step as
    # one vector (``.to(float32, memory_format=...)`` would return a float32 input's strided view)
    B_t = B.transpose(1, 2).float().contiguous()
    C_t = C.transpose(1, 2).float().contiguous()
    A_f = A.float().contiguous()
    D, delta_bias = D.float().contiguous(), delta_bias.float().contiguous()
    out = torch.empty_like(u)
    block_n = triton.next_power_of_2(dstate)
    plan = ScanConfig(block_d=32 * config.ch3 // config.split3, num_warps=1, warps_per_sm=config.warps_per_sm)
    sms = torch.cuda.get_device_properties(u.device).multi_processor_count
    chunk_len, n_chunks = plan_chunks(batch, dim, seqlen, plan, sms)
    n_prefix = n_chunks - 1
    states = torch.empty(batch, max(n_prefix, 1), dstate, dim, device=u.device, dtype=torch.float32)
    dt_sums = torch.empty(batch, max(n_prefix, 1), dim, device=u.device, dtype=torch.float32)
    args = (u, delta, A_f, B_t, C_t, D, delta_bias, out, states, dt_sums,
            dim, seqlen, dstate, chunk_len, n_prefix, B_t.stride(0), B_t.stride(1))
    flags = dict(BLOCK_N=block_n, EVEN_N=dstate == block_n, SOFTPLUS=bool(delta_softplus), num_warps=1)

    def launch(chunks: int, ch: int, split: int, steps: int, poly: int, maxnreg: int | None, output: bool) -> None:
        extra = {} if maxnreg is None else {"maxnreg": maxnreg}
        block_d = 32 * ch // split
        grid = (chunks, triton.cdiv(dim, block_d), batch)
        _scan_kernel[grid](*args, STEPS=steps, CH=ch, SPLIT=split, EVEN_D=dim % block_d == 0, OUTPUT=output,
                           POLY=poly, **flags, **extra)

    if n_prefix > 0:
        launch(n_prefix, config.ch1, config.split1, config.steps1, config.poly1, config.maxnreg1, False)
        nc = triton.next_power_of_2(n_prefix)
        block_nd = max(1, 4096 // nc)
        A_t = A_f.t().contiguous()
        _chunk_carry_kernel[(triton.cdiv(dstate * dim, block_nd), batch)](
            states, dt_sums, A_t, dim, dstate, n_prefix, NC=nc, BLOCK_ND=block_nd, num_warps=4)
    launch(n_chunks, config.ch3, config.split3, config.steps3, config.poly3, config.maxnreg3, True)
    return out
