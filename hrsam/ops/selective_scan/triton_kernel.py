"""Triton forward kernels of the selective scan (the kernels the TensorRT plugin launches).

Why this shape. At the sizes HRSAM runs (batch 1, dim 768, N 32, L up to 3 x 16384) the scan
has only dim * N = 24576 independent recurrences, and its cost is the dim * N * L exponentials
(one per state and step). A thread that owns one channel d keeps that channel's N states in
registers, so the read-out y = sum_n C[n] h[n] stays inside the thread (no shuffles) and the
per-step work is ~4 FP32 instructions plus one MUFU ex2 per state. That gives only 768 threads,
far too few for a GPU, so the sequence is cut into chunks that run in parallel:

1. ``_chunk_state_kernel``: every chunk but the last scans from a zero state and stores its
   final state and the sum of its dt (the chunk's total decay is exp(A * sum dt));
2. ``_chunk_carry_kernel``: an associative scan over the chunk summaries turns them into the
   true state entering each chunk;
3. ``_chunk_output_kernel``: every chunk scans again from its true entering state and writes y.

Chunking costs a second exponential per state and step (pass 1 and pass 3), so the kernel is
bounded by twice the exponential lower bound; in exchange all SMs are busy. With enough
batch * dim to fill the GPU the plan uses a single chunk and only pass 3 runs.

Layout contract: u, delta, out [batch, dim, L] contiguous; A [dim, N] (any strides); B, C
indexed through strides. 16-bit B/C are converted to float32 copies laid out [batch, L, N] (N/dim
of the input bytes, so cheap); float32 B/C are read in place through their [batch, N, L] strides
(forcing the [batch, L, N] copy measured no faster on the H200: 1.108 vs 1.089 ms at L = 49152,
because Triton broadcasts B_t/C_t through shared memory either way).
The state is float32 whatever the input dtype (float32, float16, bfloat16).

Only the forward is here; the backward (``triton_backward``) reuses passes 1 and 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class ScanConfig:
    """Launch parameters of the chunked scan.

    block_d: channels per program (one per thread: block_d = 32 * num_warps);
    warps_per_sm: warps the plan aims at per SM when it picks the chunk count. About 150
    registers per thread leave room for 12 resident warps per SM, so 12 is one full wave;
    more means smaller chunks (finer balance, more pass-1/pass-2 overhead);
    steps: time steps loaded per iteration, a power of two; None means one 16-byte vector of
    input per channel (4 for float32, 8 for 16-bit dtypes);
    maxnreg: register cap per thread passed to the compiler (None: the compiler's choice);
    prefetch: the Cycle-scan's step kernels only (``triton_cycle._cycle_steps``): load step t + 1's
    operands before computing step t.
    """

    block_d: int = 32
    num_warps: int = 1
    warps_per_sm: int = 48
    steps: int | None = None
    maxnreg: int | None = None
    prefetch: bool = True


# Best of the sweeps in docs/BENCHMARKS.md (H200, triton 3.6, dim 768, N 32, batch 1): one-warp
# programs of 32 channels and small chunks balance the SMs best at both sequence lengths; 8 steps
# per tile give the compiler room to hoist the next steps' loads (float32: 1.086 ms against 1.140
# with 4 at L = 49152); for 16-bit inputs a 128-register cap (a few spilled registers, 16 instead
# of 12 resident warps per SM) gives 0.94 ms against 1.07 at L = 49152.
DEFAULT_CONFIG = ScanConfig(steps=8)
DEFAULT_CONFIG_16BIT = ScanConfig(steps=8, maxnreg=128)


@triton.jit
def _softplus(x):
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(e) = 2 atanh(s), s = e / (2 + e).

    s lies in [0, 1/3], so the odd series 2 (s + s^3/3 + ... + s^13/13) is exact to 2e-8 relative:
    one MUFU ex2, one approximate division and ~10 FMA-pipe instructions per (channel, step),
    against ~50 for libdevice's log and an IEEE division (Triton's fp32 log is a software
    polynomial). Relative error about 4e-7 for x > -5, growing like |x| * 6e-8 below (the fp32
    rounding of the exponent's argument; the old formula had the same).
    """
    e = tl.exp2(tl.abs(x) * -1.4426950408889634)
    s = tl.fdiv(e, 2.0 + e, ieee_rounding=False)
    z = s * s
    p = 2.0 / 13.0
    p = p * z + 2.0 / 11.0
    p = p * z + 2.0 / 9.0
    p = p * z + 2.0 / 7.0
    p = p * z + 2.0 / 5.0
    p = p * z + 2.0 / 3.0
    p = p * z + 2.0
    return tl.maximum(x, 0.0) + s * p


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    """Compose h -> a1 h + b1 then h -> a2 h + b2 (the scan operator over chunks)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_tile(
    h,
    dt_sum,
    A2,
    t0,
    u_ptr,
    delta_ptr,
    B_ptr,
    C_ptr,
    out_ptr,
    ud_row,
    bc_base,
    bias,
    Dv,
    offs_n,
    mask_d,
    mask_n,
    seqlen,
    stride_bt,
    stride_bn,
    STEPS: tl.constexpr,
    MASK_T: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    OUTPUT: tl.constexpr,
):
    """Advance the [BLOCK_N, BLOCK_D] state by STEPS steps starting at t0.

    u/delta/y move as [BLOCK_D, STEPS] tiles (one 16-byte vector per thread); step i is picked
    out with a compile-time mask that folds to a register choice. Steps past ``seqlen``
    (MASK_T, last tile only) get dt = 0 and B = 0, which leaves h and dt_sum unchanged.
    mask_d / mask_n are all-true constants for even shapes, which Triton folds away.
    """
    offs_t = tl.arange(0, STEPS)
    t = t0 + offs_t
    tile = ud_row[:, None] + t[None, :]
    if MASK_T:
        mask_t = t < seqlen
    else:
        mask_t = offs_t < STEPS
    mask_tile = mask_d[:, None] & mask_t[None, :]
    u = tl.load(u_ptr + tile, mask=mask_tile, other=0.0).to(tl.float32)
    dt = tl.load(delta_ptr + tile, mask=mask_tile, other=0.0).to(tl.float32) + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(dt)
    if MASK_T:
        dt = tl.where(mask_t[None, :], dt, 0.0)
    dt_sum += tl.sum(dt, axis=1)
    dtu = dt * u
    y = Dv[:, None] * u
    for i in tl.static_range(STEPS):
        pick = (offs_t == i)[None, :]
        dt_i = tl.sum(tl.where(pick, dt, 0.0), axis=1)
        dtu_i = tl.sum(tl.where(pick, dtu, 0.0), axis=1)
        bc = bc_base + (t0 + i) * stride_bt + offs_n * stride_bn
        if MASK_T:
            mask_bc = mask_n & (offs_n * 0 + t0 + i < seqlen)
        else:
            mask_bc = mask_n
        B_i = tl.load(B_ptr + bc, mask=mask_bc, other=0.0).to(tl.float32)
        h = tl.exp2(A2 * dt_i[None, :]) * h + B_i[:, None] * dtu_i[None, :]
        if OUTPUT:
            C_i = tl.load(C_ptr + bc, mask=mask_bc, other=0.0).to(tl.float32)
            y_i = tl.sum(h * C_i[:, None], axis=0)
            y = tl.where(pick, y + y_i[:, None], y)
    if OUTPUT:
        tl.store(out_ptr + tile, y.to(out_ptr.dtype.element_ty), mask=mask_tile)
    return h, dt_sum


@triton.jit
def _program_operands(A_ptr, bias_ptr, offs_n, offs_d, dim, dstate, stride_an, EVEN_D: tl.constexpr,
                      EVEN_N: tl.constexpr):  # fmt: skip
    """(mask_n, mask_d, A2 = log2(e) A as [BLOCK_N, BLOCK_D], delta bias [BLOCK_D]) of a scanning
    program (this module's chunk kernels and ``triton_cycle``'s step kernels) whose state rows are
    ``offs_n`` (``tl.arange(0, BLOCK_N)``, made by the kernel: a kernel computes its store
    addresses from its own values, never from a helper's results, which torch's analysis of
    written arguments would follow back to every argument of the call; tests/test_kernel_writes.py).

    A arrives transposed, [N, dim]: d is the contiguous axis, and the row stride is a runtime
    value (not specialised) so Triton cannot prove 16-byte alignment. Both facts together make
    every Triton version lay the state out one channel per lane with all N states in that
    lane's registers (no vector width along d, no lanes along N), so the read-out
    y = sum_n C h is a per-thread sum with no shuffles. Masks known true at compile time (even
    shapes) fold away, so even shapes pay for none.
    """
    if EVEN_D:
        mask_d = offs_d >= 0
    else:
        mask_d = offs_d < dim
    if EVEN_N:
        mask_n = offs_n >= 0
    else:
        mask_n = offs_n < dstate
    a_ptrs = A_ptr + offs_n[:, None] * stride_an + offs_d[None, :]
    A2 = tl.load(a_ptrs, mask=mask_n[:, None] & mask_d[None, :], other=0.0) * 1.4426950408889634
    bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    return mask_n, mask_d, A2, bias


@triton.jit
def _scan_chunk(
    h,
    pid_c,
    pid_b,
    offs_d,
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    bias_ptr,
    out_ptr,
    dim,
    seqlen,
    dstate,
    chunk_len,
    stride_an,
    stride_bb,
    stride_bt,
    stride_bn,
    BLOCK_N: tl.constexpr,
    STEPS: tl.constexpr,
    EVEN_D: tl.constexpr,
    EVEN_N: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    OUTPUT: tl.constexpr,
):
    """Scan chunk ``pid_c`` of one batch row for BLOCK_D channels from state ``h``."""
    offs_n = tl.arange(0, BLOCK_N)
    mask_n, mask_d, A2, bias = _program_operands(
        A_ptr, bias_ptr, offs_n, offs_d, dim, dstate, stride_an, EVEN_D, EVEN_N
    )
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    ud_row = pid_b * dim * seqlen + offs_d.to(tl.int64) * seqlen
    bc_base = pid_b * stride_bb
    dt_sum = tl.zeros_like(Dv)
    start = pid_c * chunk_len
    stop = tl.minimum(start + chunk_len, seqlen)
    full_stop = start + ((stop - start) // STEPS) * STEPS
    for t0 in range(start, full_stop, STEPS):
        h, dt_sum = _scan_tile(
            h, dt_sum, A2, t0, u_ptr, delta_ptr, B_ptr, C_ptr, out_ptr, ud_row, bc_base, bias, Dv,
            offs_n, mask_d, mask_n, seqlen, stride_bt, stride_bn,
            STEPS, False, SOFTPLUS, OUTPUT,
        )
    if full_stop < stop:
        h, dt_sum = _scan_tile(
            h, dt_sum, A2, full_stop, u_ptr, delta_ptr, B_ptr, C_ptr, out_ptr, ud_row, bc_base, bias, Dv,
            offs_n, mask_d, mask_n, seqlen, stride_bt, stride_bn,
            STEPS, True, SOFTPLUS, OUTPUT,
        )
    return h, dt_sum


@triton.jit(do_not_specialize=["stride_an", "stride_srow", "stride_sn"])
def _chunk_state_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, D_ptr, bias_ptr, states_ptr, dtsum_ptr,
    dim, seqlen, dstate, chunk_len, n_prefix,
    stride_an, stride_bb, stride_bt, stride_bn, stride_srow, stride_sn,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Pass 1: final state of chunk c from a zero state, and the chunk's sum of dt."""
    pid_c = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    h, dt_sum = _scan_chunk(
        h, pid_c, pid_b, offs_d, u_ptr, delta_ptr, A_ptr, B_ptr, B_ptr, D_ptr, bias_ptr, u_ptr,
        dim, seqlen, dstate, chunk_len, stride_an, stride_bb, stride_bt, stride_bn,
        BLOCK_N, STEPS, EVEN_D, EVEN_N, SOFTPLUS, False,
    )
    row = pid_b * n_prefix + pid_c
    mask_d = offs_d < dim
    state_ptrs = states_ptr + row * stride_srow + offs_n[:, None] * stride_sn + offs_d[None, :]
    tl.store(state_ptrs, h, mask=(offs_n < dstate)[:, None] & mask_d[None, :])
    tl.store(dtsum_ptr + row * dim + offs_d, dt_sum, mask=mask_d)


@triton.jit
def _chunk_carry_kernel(
    states_ptr, dtsum_ptr, A_ptr,
    dim, dstate, n_prefix,
    NC: tl.constexpr, BLOCK_ND: tl.constexpr,
):
    """Pass 2: in place, chunk-local final states -> true final states (scan over chunks).

    Works on the flattened (n, d) axis: states are [batch, n_prefix, N * dim] and A is [N, dim].
    """
    offs_c = tl.arange(0, NC)
    offs_nd = tl.program_id(0) * BLOCK_ND + tl.arange(0, BLOCK_ND)
    rows = tl.program_id(1).to(tl.int64) * n_prefix + offs_c
    _, carried, mask, _ = _scan_chunk_summaries(
        states_ptr, dtsum_ptr, A_ptr, rows, offs_c, offs_nd, dim, dstate, n_prefix
    )
    tl.store(states_ptr + rows[:, None] * (dstate * dim) + offs_nd[None, :], carried, mask=mask)


@triton.jit
def _scan_chunk_summaries(states_ptr, dtsum_ptr, A_ptr, rows, offs_c, offs_nd, dim, dstate, n_rows):
    """The carry passes' common part: scan the program's (n, d) columns ``offs_nd`` over the chunk rows.

    Rows r < n_rows of ``states`` [batch, n_rows, N * dim] hold chunk-local final states and of
    ``dtsum`` [batch, n_rows, dim] the chunks' dt sums; ``offs_c`` = ``tl.arange(0, NC)`` and
    ``rows`` (batch row * n_rows + offs_c) are the kernel's, which stores with them (a kernel's
    store addresses come from its own values: ``_program_operands`` says why). Returns (decay,
    carried, mask, mask_nd): the decay product and state after each row, both [NC, BLOCK_ND], and
    their masks. Rows past n_rows have decay 1 and state 0: they come after the real rows and
    change nothing.
    """
    d = offs_nd % dim
    mask_nd = offs_nd < dstate * dim
    mask = (offs_c < n_rows)[:, None] & mask_nd[None, :]
    A2 = tl.load(A_ptr + offs_nd, mask=mask_nd, other=0.0) * 1.4426950408889634
    dt_sum = tl.load(dtsum_ptr + rows[:, None] * dim + d[None, :], mask=mask, other=0.0)
    decay = tl.exp2(dt_sum * A2[None, :])
    local = tl.load(states_ptr + rows[:, None] * (dstate * dim) + offs_nd[None, :], mask=mask, other=0.0)
    decay, carried = tl.associative_scan((decay, local), axis=0, combine_fn=_affine_combine)
    return decay, carried, mask, mask_nd


@triton.jit(do_not_specialize=["stride_an", "stride_srow", "stride_sn"])
def _chunk_output_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr, states_ptr,
    dim, seqlen, dstate, chunk_len, n_prefix,
    stride_an, stride_bb, stride_bt, stride_bn, stride_srow, stride_sn,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, STEPS: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_N: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Pass 3: scan chunk c from its true entering state and write y."""
    pid_c = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)
    h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    if pid_c > 0:
        row = pid_b * n_prefix + pid_c - 1
        state_ptrs = states_ptr + row * stride_srow + offs_n[:, None] * stride_sn + offs_d[None, :]
        h = tl.load(state_ptrs, mask=(offs_n < dstate)[:, None] & (offs_d < dim)[None, :], other=0.0)
    _scan_chunk(
        h, pid_c, pid_b, offs_d, u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, out_ptr,
        dim, seqlen, dstate, chunk_len, stride_an, stride_bb, stride_bt, stride_bn,
        BLOCK_N, STEPS, EVEN_D, EVEN_N, SOFTPLUS, True,
    )


# Chunk lengths are multiples of this: every tile start stays 16-byte aligned for any dtype and
# any power-of-two ``steps`` up to 64.
_CHUNK_GRANULE = 64
# Most chunks the carry pass scans in one program (its tile is NC x BLOCK_ND).
_MAX_CHUNKS = 1024
_CARRY_TILE = 4096


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (a small stand-in under the Triton interpreter)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def plan_chunks(batch: int, dim: int, seqlen: int, config: ScanConfig, sm_count: int) -> tuple[int, int]:
    """Return (chunk_len, n_chunks): enough chunks for ~warps_per_sm warps on every SM."""
    programs_per_chunk = batch * triton.cdiv(dim, config.block_d)
    programs = sm_count * config.warps_per_sm / config.num_warps
    wanted = max(1, math.ceil(programs / programs_per_chunk))
    chunk_len = triton.cdiv(triton.cdiv(seqlen, wanted), _CHUNK_GRANULE) * _CHUNK_GRANULE
    chunk_len = max(chunk_len, triton.cdiv(seqlen, _MAX_CHUNKS))
    chunk_len = triton.cdiv(chunk_len, _CHUNK_GRANULE) * _CHUNK_GRANULE
    return chunk_len, triton.cdiv(seqlen, chunk_len)


def _direct(kernel: Any) -> Any:
    return kernel


@dataclass(frozen=True)
class ChunkLaunch:
    """What a forward launcher hands the chunk kernels: operands in the kernels' layouts, grid, flags.

    Shared by ``selective_scan_triton`` and the Cycle-scan's ``cycle_scan_triton``, whose passes
    plan their chunks, B, C and A the same way (its kernels read u and delta in place: ``in_place``).
    """

    u: torch.Tensor
    delta: torch.Tensor
    A_t: torch.Tensor
    B_t: torch.Tensor
    C_t: torch.Tensor
    D: torch.Tensor
    delta_bias: torch.Tensor
    chunk_len: int
    n_chunks: int
    d_blocks: int
    flags: dict[str, Any]

    @property
    def b_strides(self) -> tuple[int, int, int]:
        return self.B_t.stride(0), self.B_t.stride(1), self.B_t.stride(2)


def prepare_chunk_launch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    config: ScanConfig | None,
    in_place: bool = False,
) -> ChunkLaunch:
    """Layouts, chunk plan and compile-time flags of a forward scan; config None picks the dtype's default.

    in_place: hand u and delta over as they are (any strides, their own dtype), for kernels that
    read them through their strides (``triton_cycle``); otherwise [batch, dim, L] contiguous, as
    the tile kernels here need.
    """
    if config is None:
        config = DEFAULT_CONFIG if u.dtype == torch.float32 else DEFAULT_CONFIG_16BIT
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    # 16-bit inputs: [batch, L, N] float32 copies, so the N values of one step are one contiguous
    # vector and the per-state dtype conversion (2 instructions per element for bf16) is paid once.
    # float32 inputs: ``to`` returns the transposed view itself (no copy); see the module docstring.
    B_t = B.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    C_t = C.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    block_n = triton.next_power_of_2(dstate)
    chunk_len, n_chunks = plan_chunks(batch, dim, seqlen, config, _sm_count(u.device))
    flags = dict(
        BLOCK_D=config.block_d, BLOCK_N=block_n, STEPS=config.steps or 16 // u.element_size(),
        EVEN_D=dim % config.block_d == 0, EVEN_N=dstate == block_n, SOFTPLUS=bool(delta_softplus),
        num_warps=config.num_warps,
    )  # fmt: skip
    if config.maxnreg is not None and u.is_cuda:
        flags["maxnreg"] = config.maxnreg
    if not in_place:
        u, delta = u.contiguous(), delta.contiguous()
    return ChunkLaunch(
        u, delta,
        A.float().t().contiguous(),  # [N, dim]: see _scan_chunk for why
        B_t, C_t, D.float().contiguous(), delta_bias.float().contiguous(),
        chunk_len, n_chunks, triton.cdiv(dim, config.block_d), flags,
    )  # fmt: skip


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    delta_bias: torch.Tensor,
    delta_softplus: bool,
    config: ScanConfig | None = None,
    wrap_triton: Callable[[Any], Any] | None = None,
) -> torch.Tensor:
    """Forward selective scan with the chunked Triton kernels; inputs already validated.

    u, delta, B, C: float32/float16/bfloat16 (one dtype); A, D, delta_bias: float32.
    config None picks DEFAULT_CONFIG (float32) or DEFAULT_CONFIG_16BIT.
    wrap_triton: applied to each kernel before its launch; ``torch.library.wrap_triton`` makes
    the launches traceable (``hrsam.ops.selective_scan.inductor``); None launches directly. The
    name matters: ``torch.library.triton_op`` finds the kernels (whose source keys the compile
    cache) by scanning the source for ``wrap_triton(kernel)`` calls.
    Returns y [batch, dim, L] in u's dtype.
    """
    wrap_triton = wrap_triton or _direct
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    go = prepare_chunk_launch(u, delta, A, B, C, D, delta_bias, delta_softplus, config)
    out = torch.empty_like(go.u)
    n_prefix = go.n_chunks - 1
    states = torch.empty(batch, max(n_prefix, 1), dstate, dim, device=u.device, dtype=torch.float32)
    state_strides = (states.stride(1), states.stride(2))
    if n_prefix > 0:
        dt_sums = torch.empty(batch, n_prefix, dim, device=u.device, dtype=torch.float32)
        wrap_triton(_chunk_state_kernel)[(n_prefix, go.d_blocks, batch)](
            go.u, go.delta, go.A_t, go.B_t, go.D, go.delta_bias, states, dt_sums,
            dim, seqlen, dstate, go.chunk_len, n_prefix, go.A_t.stride(0), *go.b_strides, *state_strides,
            **go.flags,
        )
        nc = triton.next_power_of_2(n_prefix)
        block_nd = max(1, _CARRY_TILE // nc)
        wrap_triton(_chunk_carry_kernel)[(triton.cdiv(dstate * dim, block_nd), batch)](
            states, dt_sums, go.A_t, dim, dstate, n_prefix,
            NC=nc, BLOCK_ND=block_nd, num_warps=4,
        )
    wrap_triton(_chunk_output_kernel)[(go.n_chunks, go.d_blocks, batch)](
        go.u, go.delta, go.A_t, go.B_t, go.C_t, go.D, go.delta_bias, out, states,
        dim, seqlen, dstate, go.chunk_len, n_prefix, go.A_t.stride(0), *go.b_strides, *state_strides,
        **go.flags,
    )
    return out
