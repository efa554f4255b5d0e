// Single-pass selective scan forward: every (channel d, state n) recurrence runs in one lane.
//
// Compiled at run time by NVRTC (benchmarks/single_pass_scan/kernel.py) with these macros:
//   IN_KIND   0 float32, 1 float16, 2 bfloat16: u, delta and the output (everything else float32)
//   NSTATE    N, a power of two <= 32: a channel group is N lanes, lane n holds state n
//   TILE      time steps per tile, a multiple of 4 and of N
//   NWARPS    warps per block (they share the B/C tile in shared memory)
//   PREFETCH  tiles ahead at which u and delta are prefetched into L2 (0: off)
//
// Why this shape. The scan costs dim * N * L exponentials, one per state and step. The chunked
// Triton kernel exponentiates twice (chunk states, then outputs), so it cannot beat 2x that bound.
// Here each recurrence runs from t = 0 to L in one lane, so each exponential is computed once;
// batch 1 x dim 768 x N 32 gives 768 warps, at most two per warp scheduler of an H100/H200.
//
// Status: a measured experiment. On the H200 at L = 49152 it takes 1.11 ms per float32 call
// against 1.27 ms for the chunked Triton kernel (3.9x the exponential bound), but it loses for
// bfloat16; docs/BENCHMARKS.md has the numbers, the profile and why 2x is out of its reach.
//
// Three costs shape the rest:
// - B_t and C_t are the same for every channel: the block copies each tile once into shared
//   memory with cp.async (from a [batch, L, N, 2] copy, one 256-byte line per step), and a lane
//   reads one 8-byte (B, C) pair per step.
// - The read-out y_t[d] = sum_n C_t[n] h_t[d, n] sums across the N lanes. Per step that would be
//   5 dependent shuffles; instead a lane keeps its TILE products of a tile in registers and the
//   group reduces them once per tile with a reduce-scatter (lane g ends up with the complete
//   outputs of steps g * OWNED + i, OWNED = TILE / N): TILE - OWNED shuffle pairs in all.
// - With one or two warps per scheduler nothing hides latency but the warp's own instruction
//   stream, and the compiler does not interleave the phases of a tile on its own (it kept the
//   butterfly, the softplus and the scan one after the other). So the interleaving is written
//   out: step j of tile k's scan also does shuffle pair j of tile k - 1's reduce-scatter, each
//   round of which is then many steps behind the round it depends on; dt and dt * u of tile k
//   (prepared during tile k - 1 by the lanes that own those outputs: one softplus per channel
//   and step, not per state) are read into registers before anything else; u and delta are
//   loaded RING - 1 tiles ahead. One block barrier per tile orders the shared buffers.
//
// Contract (the launcher guarantees it): u, delta, out [batch, dim, L] contiguous; A [dim, N]
// contiguous; BC [batch, (tiles + 1) * TILE, N, 2] float32 with (B, C) interleaved per step and
// zeros past L (one spare tile, so staging tile k + 1 never needs a bounds check).

#if IN_KIND == 0
typedef float in_t;
#else
typedef unsigned short in_t;
#endif

#define FULL_MASK 0xffffffffu
#define LOG2E 1.4426950408889634f
#define GROUPS (32 / NSTATE)              // channel groups (= channels) per warp
#define OWNED (TILE / NSTATE)             // outputs a lane owns per tile
#define PAIRS (TILE - OWNED)              // shuffle pairs of one tile's reduce-scatter
#define BC_WORDS (TILE * NSTATE / 2)      // 16-byte words of one B/C tile
#define THREADS (NWARPS * 32)
#define STAGE_WORDS ((BC_WORDS + THREADS - 1) / THREADS)  // per thread and tile
#define RING 4  // u/delta register slots: loads run RING - 1 tiles ahead of their use

static_assert(TILE % NSTATE == 0 && TILE % 4 == 0, "TILE must be a multiple of 4 and of N");

__device__ __forceinline__ float to_float(in_t x) {
#if IN_KIND == 0
    return x;
#elif IN_KIND == 1
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
#else
    return __uint_as_float(((unsigned int)x) << 16);
#endif
}

__device__ __forceinline__ in_t from_float(float f) {
#if IN_KIND == 0
    return f;
#else
    unsigned short h;
#if IN_KIND == 1
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
#endif
    return h;
#endif
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) with log1p(e) = 2 atanh(s), s = e / (2 + e) in
// [0, 1/3]: the odd series 2 (s + s^3/3 + ... + s^13/13) is exact to 2e-8 relative. Two MUFU
// operations and ~10 FMAs instead of ~35 instructions and two branches for libdevice's log1pf;
// relative error about 4e-7. torch's threshold (x > 20 -> x) is kept.
__device__ __forceinline__ float softplus(float x) {
    const float e = fast_exp2(fabsf(x) * -LOG2E);
    const float s = __fdividef(e, 2.0f + e);
    const float z = s * s;
    float q = 2.0f / 13.0f;
    q = fmaf(q, z, 2.0f / 11.0f);
    q = fmaf(q, z, 2.0f / 9.0f);
    q = fmaf(q, z, 2.0f / 7.0f);
    q = fmaf(q, z, 2.0f / 5.0f);
    q = fmaf(q, z, 2.0f / 3.0f);
    q = fmaf(q, z, 2.0f);
    return x > 20.0f ? x : fmaxf(x, 0.0f) + s * q;
}

// (m & a) | (~m & b) as one LOP3 in inline PTX. Written with ?: (or plain bit operations) the
// compiler may split the loop into an upper-lane and a lower-lane copy that run one after the
// other, with a WARPSYNC per shuffle.
__device__ __forceinline__ float select_bits(unsigned int m, float a, float b) {
    unsigned int r;
    asm("lop3.b32 %0, %1, %2, %3, 0xE4;" : "=r"(r) : "r"(__float_as_uint(a)), "r"(__float_as_uint(b)), "r"(m));
    return __uint_as_float(r);
}

// Shuffle pair `pair` (0 .. PAIRS - 1, a compile-time constant after unrolling) of the
// reduce-scatter over the TILE values of each lane of an N-lane group. Round r pairs lanes
// N >> (r + 1) apart over the first TILE >> r values: a lane keeps the half whose steps it will
// own and sends the other half. After all pairs lane g holds in v[0 .. OWNED) the group sums of
// steps g * OWNED + i. Pairs are numbered round after round, so doing them in order respects
// every dependency.
__device__ __forceinline__ void reduce_scatter_pair(int pair, float (&v)[TILE], int g) {
    int first = 0;
#pragma unroll
    for (int mask = NSTATE / 2, half = TILE / 2; mask > 0; mask /= 2, half /= 2) {
        if (pair >= first && pair < first + half) {
            const int i = pair - first;
            const unsigned int upper = (g & mask) ? 0xffffffffu : 0u;
            const float send = select_bits(upper, v[i], v[i + half]);
            const float keep = select_bits(upper, v[i + half], v[i]);
            v[i] = keep + __shfl_xor_sync(FULL_MASK, send, mask);
        }
        first += half;
    }
}

__device__ __forceinline__ unsigned int shared_address(const void* p) {
    unsigned int r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

struct Shared {
    float4 bc[2][BC_WORDS];                // (B, C) of a tile, [step][n][2], two buffers
    float dt[2][NWARPS][GROUPS][TILE];     // dt per buffer, warp, channel group and step
    float du[2][NWARPS][GROUPS][TILE];     // dt * u
};

struct Params {
    const in_t* __restrict__ u;
    const in_t* __restrict__ delta;
    const float4* __restrict__ bc;  // this batch row's B/C tiles
    in_t* __restrict__ out;
    long long row;                  // offset of this lane's channel row in u / delta / out
    int seqlen;
    int softplus_on;
    bool valid;                     // the lane's channel is < dim
};

// Everything a lane keeps across tiles.
struct Lane {
    int g;             // state index n
    int grp;           // channel group within the warp
    int warp;
    int tid;
    float A2;          // A[d, n] * log2(e)
    float h;           // the state
    float bias;
    float Dskip;
    in_t next_u[RING][OWNED];      // u and delta of the owned steps, loaded RING - 1 tiles ahead
    in_t next_delta[RING][OWNED];
};

__device__ __forceinline__ void load_inputs(Lane& lane, const Params& p, int tile, int r) {
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int t = tile * TILE + lane.g * OWNED + i;
        const bool ok = p.valid && t < p.seqlen;
        lane.next_u[r][i] = ok ? __ldg(p.u + p.row + t) : (in_t)0;
        lane.next_delta[r][i] = ok ? __ldg(p.delta + p.row + t) : (in_t)0;
#if PREFETCH > 0
        if (ok && t + PREFETCH * TILE < p.seqlen) {
            prefetch_l2(p.u + p.row + t + PREFETCH * TILE);
            prefetch_l2(p.delta + p.row + t + PREFETCH * TILE);
        }
#endif
    }
}

// Start copying B/C tile `tile` into buffer `buf` (cp.async, waited for before the barrier).
__device__ __forceinline__ void stage_bc(const Lane& lane, const Params& p, Shared& sh, int buf, int tile) {
#pragma unroll
    for (int w = 0; w < STAGE_WORDS; ++w) {
        const int word = lane.tid + w * THREADS;
        if (BC_WORDS % THREADS == 0 || word < BC_WORDS) {
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(&sh.bc[buf][word])),
                         "l"(p.bc + (long long)tile * BC_WORDS + word));
        }
    }
    asm volatile("cp.async.commit_group;");
}

__device__ __forceinline__ void wait_and_sync() {
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();
}

// dt and dt * u of this lane's owned steps of tile `tile` into buffer `buf`; returns u (for
// the D skip term of the outputs) in u_keep.
__device__ __forceinline__ void prepare(const Lane& lane, const Params& p, Shared& sh, int buf, int tile, int r,
                                        float (&u_keep)[OWNED]) {
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int j = lane.g * OWNED + i;
        float dt = to_float(lane.next_delta[r][i]) + lane.bias;
        if (p.softplus_on) dt = softplus(dt);
        dt = (p.valid && tile * TILE + j < p.seqlen) ? dt : 0.0f;  // dt = 0 leaves the state unchanged
        u_keep[i] = to_float(lane.next_u[r][i]);
        sh.dt[buf][lane.warp][lane.grp][j] = dt;
        sh.du[buf][lane.warp][lane.grp][j] = dt * u_keep[i];
    }
}

// Scan tile k from buffer `buf` into prod (prod[j] = C_j h_j), doing the reduce-scatter of the
// previous tile's products `prev` on the way.
__device__ __forceinline__ void advance(Lane& lane, const Shared& sh, int buf, const float (&dt)[TILE],
                                        const float (&du)[TILE], float (&prod)[TILE], float (&prev)[TILE]) {
    const float2* bc = reinterpret_cast<const float2*>(sh.bc[buf]);
#pragma unroll
    for (int j = 0; j < TILE; ++j) {
        const float2 v = bc[j * NSTATE + lane.g];
        lane.h = fmaf(fast_exp2(dt[j] * lane.A2), lane.h, du[j] * v.x);
        prod[j] = v.y * lane.h;
        if (j < PAIRS) reduce_scatter_pair(j, prev, lane.g);
    }
}

// Write tile `tile`'s owned outputs from the reduced products (tile -1 writes nothing).
__device__ __forceinline__ void write_out(const Lane& lane, const Params& p, int tile, const float (&sums)[TILE],
                                          const float (&u_keep)[OWNED]) {
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int t = tile * TILE + lane.g * OWNED + i;
        if (p.valid && t >= 0 && t < p.seqlen) p.out[p.row + t] = from_float(fmaf(lane.Dskip, u_keep[i], sums[i]));
    }
}

// Iteration k (PAR = k % RING picks buffers and register slots at compile time): read dt/du of
// tile k, start staging B/C of tile k + 1, prepare tile k + 1, scan tile k while reducing tile
// k - 1, write tile k - 1, then wait for the copies and one barrier.
template <int PAR>
__device__ __forceinline__ void iteration(Lane& lane, const Params& p, Shared& sh, int k,
                                          float (&prod)[2][TILE], float (&u_keep)[2][OWNED]) {
    constexpr int B = PAR & 1;
    float dt[TILE], du[TILE];
#pragma unroll
    for (int j = 0; j < TILE; j += 4) {
        const float4 a = *reinterpret_cast<const float4*>(&sh.dt[B][lane.warp][lane.grp][j]);
        const float4 b = *reinterpret_cast<const float4*>(&sh.du[B][lane.warp][lane.grp][j]);
        dt[j] = a.x; dt[j + 1] = a.y; dt[j + 2] = a.z; dt[j + 3] = a.w;
        du[j] = b.x; du[j + 1] = b.y; du[j + 2] = b.z; du[j + 3] = b.w;
    }
    stage_bc(lane, p, sh, B ^ 1, k + 1);
    float u_prev[OWNED];
#pragma unroll
    for (int i = 0; i < OWNED; ++i) u_prev[i] = u_keep[B ^ 1][i];
    prepare(lane, p, sh, B ^ 1, k + 1, (PAR + 1) % RING, u_keep[B ^ 1]);
    load_inputs(lane, p, k + RING, PAR);
    advance(lane, sh, B, dt, du, prod[B], prod[B ^ 1]);
    write_out(lane, p, k - 1, prod[B ^ 1], u_prev);
    wait_and_sync();
}

// After the loop: the last tile's products (buffer B) still need their reduce-scatter.
template <int B>
__device__ __forceinline__ void finish_last(const Lane& lane, const Params& p, int tiles, float (&prod)[2][TILE],
                                            const float (&u_keep)[2][OWNED]) {
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) reduce_scatter_pair(j, prod[B], lane.g);
    write_out(lane, p, tiles - 1, prod[B], u_keep[B]);
}

extern "C" __global__ void __launch_bounds__(THREADS) selective_scan_fwd(
    const in_t* __restrict__ u, const in_t* __restrict__ delta, const float* __restrict__ A,
    const float4* __restrict__ bc, const float* __restrict__ Dv, const float* __restrict__ bias,
    in_t* __restrict__ out, int dim, int seqlen, int tiles, int softplus_on) {
    __shared__ __align__(16) Shared sh;

    Lane lane;
    lane.tid = threadIdx.x;
    lane.warp = threadIdx.x / 32;
    lane.g = (threadIdx.x % 32) % NSTATE;
    lane.grp = (threadIdx.x % 32) / NSTATE;
    const int ch = (blockIdx.x * NWARPS + lane.warp) * GROUPS + lane.grp;

    Params p;
    p.valid = ch < dim;
    p.u = u;
    p.delta = delta;
    p.bc = bc + (long long)blockIdx.y * (tiles + 1) * BC_WORDS;
    p.out = out;
    p.row = ((long long)blockIdx.y * dim + (p.valid ? ch : 0)) * seqlen;
    p.seqlen = seqlen;
    p.softplus_on = softplus_on;
    lane.A2 = p.valid ? A[(long long)ch * NSTATE + lane.g] * LOG2E : 0.0f;
    lane.h = 0.0f;
    lane.bias = p.valid ? bias[ch] : 0.0f;
    lane.Dskip = p.valid ? Dv[ch] : 0.0f;

    // Prologue: tile 0 staged and prepared, tiles 1 .. RING - 1's inputs in registers, tile -1's
    // products zero.
    float prod[2][TILE];
    float u_keep[2][OWNED];
#pragma unroll
    for (int j = 0; j < TILE; ++j) prod[1][j] = 0.0f;
#pragma unroll
    for (int r = 0; r < RING; ++r) load_inputs(lane, p, r, r);
    stage_bc(lane, p, sh, 0, 0);
    prepare(lane, p, sh, 0, 0, 0, u_keep[0]);
#pragma unroll
    for (int i = 0; i < OWNED; ++i) u_keep[1][i] = 0.0f;
    wait_and_sync();

    for (int k = 0;; k += RING) {
        iteration<0>(lane, p, sh, k, prod, u_keep);
        if (k + 1 == tiles) return finish_last<0>(lane, p, tiles, prod, u_keep);
        iteration<1>(lane, p, sh, k + 1, prod, u_keep);
        if (k + 2 == tiles) return finish_last<1>(lane, p, tiles, prod, u_keep);
        iteration<2>(lane, p, sh, k + 2, prod, u_keep);
        if (k + 3 == tiles) return finish_last<0>(lane, p, tiles, prod, u_keep);
        iteration<3>(lane, p, sh, k + 3, prod, u_keep);
        if (k + 4 == tiles) return finish_last<1>(lane, p, tiles, prod, u_keep);
    }
}
