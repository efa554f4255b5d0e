// Single-pass selective scan forward: every (channel d, state n) recurrence runs in one lane.
//
// Compiled at run time by NVRTC (benchmarks/single_pass_scan/kernel.py) with these macros:
//   IN_KIND   0 float32, 1 float16, 2 bfloat16: u, delta and the output (everything else float32)
//   NSTATE    N, a power of two <= 32: a channel group is N lanes, lane n holds state n
//   CPL       channels per lane (1 or 2): one B/C read serves CPL channels
//   TILE      time steps per tile, a multiple of 4 with CPL * TILE a multiple of N
//   NWARPS    warps per block (they share the B/C tile in shared memory)
//   PREFETCH  tiles ahead at which u and delta are prefetched into L2 (0: off)
//
// Why this shape. The scan costs dim * N * L exponentials, one per state and step. The chunked
// Triton kernel exponentiates twice (chunk states, then outputs), so it cannot beat 2x that bound.
// Here each recurrence runs from t = 0 to L in one lane, so each exponential is computed once;
// batch 1 x dim 768 x N 32 gives 768 warps with CPL 1 (at most two per warp scheduler of an
// H100/H200) or 384 with CPL 2 (one per scheduler).
//
// Status: a measured experiment, slower than the chunked Triton kernel on the H200 (1.3-1.4 ms
// against 1.09 ms at L = 49152 float32); docs/BENCHMARKS.md has the numbers and the profile.
//
// Three costs shape the rest:
// - B_t and C_t are the same for every channel: the block stages each tile once in shared
//   memory (from a [batch, L, N, 2] copy, one 256-byte line per step), and a lane reads one
//   8-byte (B, C) pair per step for its CPL channels.
// - The read-out y_t[d] = sum_n C_t[n] h_t[d, n] sums across the N lanes. Per step that would be
//   5 shuffles; instead a lane keeps its CPL * TILE products of a tile in registers and the group
//   reduces them once per tile (a reduce-scatter: lane g ends up with the complete outputs of its
//   OWNED = CPL * TILE / N slots g * OWNED + i, slot = c * TILE + j for channel c and step j).
// - One warp per scheduler hides no latency, so the tile loop is software-pipelined by hand:
//   iteration k prepares tile k + 1 (dt = softplus(delta + bias) and dt * u, computed once per
//   channel and step by the lane that owns the slot), stages B/C of tile k + 1, scans tile k and
//   reduces and writes tile k - 1. The three streams are independent, so the compiler interleaves
//   them; one block barrier per tile orders the shared buffers (two of each).
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
#define GROUPS (32 / NSTATE)              // channel groups per warp
#define WARP_CHANNELS (GROUPS * CPL)      // channels per warp
#define VALUES (CPL * TILE)               // products a lane holds per tile
#define OWNED (VALUES / NSTATE)           // outputs a lane owns per tile
#define BC_WORDS (TILE * NSTATE / 2)      // 16-byte words of one B/C tile
#define THREADS (NWARPS * 32)
#define STAGE_WORDS ((BC_WORDS + THREADS - 1) / THREADS)  // per thread and tile
#define RING 4  // u/delta register slots: loads run RING - 1 tiles ahead of their use

static_assert(VALUES % NSTATE == 0, "CPL * TILE must be a multiple of N");
static_assert(TILE % 4 == 0, "TILE must be a multiple of 4");

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

// Reduce-scatter over the COUNT values of each lane of an N-lane group: afterwards lane g holds
// in v[0 .. COUNT / N) the group sums of the slots g * COUNT / N + i. Each round pairs lanes
// MASK apart; a lane keeps the half whose slots it will own and sends the other half.
template <int COUNT, int MASK>
__device__ __forceinline__ void reduce_scatter(float (&v)[VALUES], int g) {
    if constexpr (MASK > 0) {
        const unsigned int upper = (g & MASK) ? 0xffffffffu : 0u;
#pragma unroll
        for (int i = 0; i < COUNT / 2; ++i) {
            const float send = select_bits(upper, v[i], v[i + COUNT / 2]);
            const float keep = select_bits(upper, v[i + COUNT / 2], v[i]);
            v[i] = keep + __shfl_xor_sync(FULL_MASK, send, MASK);
        }
        reduce_scatter<COUNT / 2, MASK / 2>(v, g);
    }
}

struct Shared {
    float4 bc[2][BC_WORDS];                        // (B, C) of tile k, [step][n][2], two buffers
    float dt[2][NWARPS][WARP_CHANNELS][TILE];      // dt per buffer, warp, channel and step
    float du[2][NWARPS][WARP_CHANNELS][TILE];      // dt * u
};

struct Params {
    const in_t* __restrict__ u;
    const in_t* __restrict__ delta;
    const float4* __restrict__ bc;  // this batch row's B/C tiles
    in_t* __restrict__ out;
    long long ud_base;              // offset of this batch row in u / delta / out
    int seqlen;
    int softplus_on;
};

// Everything a lane keeps across tiles.
struct Lane {
    int g;                 // state index n
    int warp;
    int tid;
    int slot0;             // first channel slot of this lane's group within its warp
    float A2[CPL];         // A[d, n] * log2(e)
    float h[CPL];          // the states
    int own_ch[OWNED];     // channel of each owned slot (-1: past dim)
    int own_slot[OWNED];   // its channel slot within the warp
    int own_step[OWNED];   // its step within the tile
    float bias[OWNED];
    float Dskip[OWNED];
    in_t next_u[RING][OWNED];      // u and delta of the owned slots, RING - 1 tiles ahead
    in_t next_delta[RING][OWNED];
    float4 stage[STAGE_WORDS];  // this thread's share of the next B/C tile to stage
};

__device__ __forceinline__ void load_inputs(Lane& lane, const Params& p, int tile, int r) {
    const int t0 = tile * TILE;
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int t = t0 + lane.own_step[i];
        const bool ok = lane.own_ch[i] >= 0 && t < p.seqlen;
        const long long at = p.ud_base + (long long)lane.own_ch[i] * p.seqlen + t;
        lane.next_u[r][i] = ok ? __ldg(p.u + at) : (in_t)0;
        lane.next_delta[r][i] = ok ? __ldg(p.delta + at) : (in_t)0;
#if PREFETCH > 0
        if (ok && t + PREFETCH * TILE < p.seqlen) {
            prefetch_l2(p.u + at + PREFETCH * TILE);
            prefetch_l2(p.delta + at + PREFETCH * TILE);
        }
#endif
    }
}

__device__ __forceinline__ void load_stage(Lane& lane, const Params& p, int tile) {
#pragma unroll
    for (int w = 0; w < STAGE_WORDS; ++w) {
        const int word = lane.tid + w * THREADS;
        if (BC_WORDS % THREADS == 0 || word < BC_WORDS) lane.stage[w] = __ldg(p.bc + (long long)tile * BC_WORDS + word);
    }
}

__device__ __forceinline__ void store_stage(const Lane& lane, Shared& sh, int buf) {
#pragma unroll
    for (int w = 0; w < STAGE_WORDS; ++w) {
        const int word = lane.tid + w * THREADS;
        if (BC_WORDS % THREADS == 0 || word < BC_WORDS) sh.bc[buf][word] = lane.stage[w];
    }
}

// dt and dt * u of this lane's owned slots of tile `tile`, into buffer `buf`; keeps u for the
// D skip term of the output.
__device__ __forceinline__ void prepare(const Lane& lane, const Params& p, Shared& sh, int buf, int tile, int r,
                                        float (&u_keep)[OWNED]) {
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        float dt = to_float(lane.next_delta[r][i]) + lane.bias[i];
        if (p.softplus_on) dt = softplus(dt);
        const bool ok = lane.own_ch[i] >= 0 && tile * TILE + lane.own_step[i] < p.seqlen;
        dt = ok ? dt : 0.0f;  // dt = 0 leaves the state unchanged past L
        u_keep[i] = to_float(lane.next_u[r][i]);
        sh.dt[buf][lane.warp][lane.own_slot[i]][lane.own_step[i]] = dt;
        sh.du[buf][lane.warp][lane.own_slot[i]][lane.own_step[i]] = dt * u_keep[i];
    }
}

// Advance the states through one tile from buffer `buf`; prod[c * TILE + j] = C_j h_j[c].
__device__ __forceinline__ void advance(Lane& lane, const Shared& sh, int buf, float (&prod)[VALUES]) {
    const float2* bc = reinterpret_cast<const float2*>(sh.bc[buf]);
#pragma unroll
    for (int j4 = 0; j4 < TILE; j4 += 4) {
        float dts[CPL][4], dus[CPL][4];
#pragma unroll
        for (int c = 0; c < CPL; ++c) {
            const float4 a = *reinterpret_cast<const float4*>(&sh.dt[buf][lane.warp][lane.slot0 + c][j4]);
            const float4 b = *reinterpret_cast<const float4*>(&sh.du[buf][lane.warp][lane.slot0 + c][j4]);
            dts[c][0] = a.x; dts[c][1] = a.y; dts[c][2] = a.z; dts[c][3] = a.w;
            dus[c][0] = b.x; dus[c][1] = b.y; dus[c][2] = b.z; dus[c][3] = b.w;
        }
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
            const float2 v = bc[(j4 + jj) * NSTATE + lane.g];
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                lane.h[c] = fmaf(fast_exp2(dts[c][jj] * lane.A2[c]), lane.h[c], dus[c][jj] * v.x);
                prod[c * TILE + j4 + jj] = v.y * lane.h[c];
            }
        }
    }
}

// Sum the products of tile `tile` over the group and write the owned outputs. Called for tile -1
// too (with zeros), so the pipeline body has no branch the compiler cannot schedule across.
__device__ __forceinline__ void finish(const Lane& lane, const Params& p, int tile, float (&prod)[VALUES],
                                       const float (&u_keep)[OWNED]) {
    reduce_scatter<VALUES, NSTATE / 2>(prod, lane.g);
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int t = tile * TILE + lane.own_step[i];
        if (lane.own_ch[i] >= 0 && t >= 0 && t < p.seqlen) {
            const float y = fmaf(lane.Dskip[i], u_keep[i], prod[i]);
            p.out[p.ud_base + (long long)lane.own_ch[i] * p.seqlen + t] = from_float(y);
        }
    }
}

// Iteration k of the pipeline (PAR = k % 4 picks buffers and register slots at compile time):
// finish tile k - 1, prepare and stage tile k + 1, scan tile k, then one barrier. Only the data
// dependencies order these inside the iteration (finish reads u_keep before prepare rewrites it).
template <int PAR>
__device__ __forceinline__ void iteration(Lane& lane, const Params& p, Shared& sh, int k, int tiles,
                                          float (&prod)[2][VALUES], float (&u_keep)[2][OWNED]) {
    constexpr int B = PAR & 1;
    finish(lane, p, k - 1, prod[B ^ 1], u_keep[B ^ 1]);
    prepare(lane, p, sh, B ^ 1, k + 1, (PAR + 1) % RING, u_keep[B ^ 1]);
    load_inputs(lane, p, k + RING, (PAR + RING) % RING);
    store_stage(lane, sh, B ^ 1);
    load_stage(lane, p, k + 2 <= tiles ? k + 2 : tiles);
    advance(lane, sh, B, prod[B]);
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(THREADS) selective_scan_fwd(
    const in_t* __restrict__ u, const in_t* __restrict__ delta, const float* __restrict__ A,
    const float4* __restrict__ bc, const float* __restrict__ Dv, const float* __restrict__ bias,
    in_t* __restrict__ out, int dim, int seqlen, int tiles, int softplus_on) {
    __shared__ __align__(16) Shared sh;

    Lane lane;
    lane.tid = threadIdx.x;
    lane.warp = threadIdx.x / 32;
    const int lane_id = threadIdx.x % 32;
    lane.g = lane_id % NSTATE;
    lane.slot0 = (lane_id / NSTATE) * CPL;
    const int warp_ch0 = (blockIdx.x * NWARPS + lane.warp) * WARP_CHANNELS;
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
        const int ch = warp_ch0 + lane.slot0 + c;
        lane.A2[c] = ch < dim ? A[(long long)ch * NSTATE + lane.g] * LOG2E : 0.0f;
        lane.h[c] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < OWNED; ++i) {
        const int idx = lane.g * OWNED + i;
        const int ch = warp_ch0 + lane.slot0 + idx / TILE;
        lane.own_ch[i] = ch < dim ? ch : -1;
        lane.own_slot[i] = lane.slot0 + idx / TILE;
        lane.own_step[i] = idx % TILE;
        lane.bias[i] = ch < dim ? bias[ch] : 0.0f;
        lane.Dskip[i] = ch < dim ? Dv[ch] : 0.0f;
    }

    Params p;
    p.u = u;
    p.delta = delta;
    p.bc = bc + (long long)blockIdx.y * (tiles + 1) * BC_WORDS;
    p.out = out;
    p.ud_base = (long long)blockIdx.y * dim * seqlen;
    p.seqlen = seqlen;
    p.softplus_on = softplus_on;

    // Prologue: tile 0 prepared and staged; tiles 1 .. RING - 1's inputs and tile 1's B/C in registers.
    float prod[2][VALUES];
    float u_keep[2][OWNED];
#pragma unroll
    for (int v = 0; v < VALUES; ++v) prod[1][v] = 0.0f;
#pragma unroll
    for (int i = 0; i < OWNED; ++i) u_keep[1][i] = 0.0f;
#pragma unroll
    for (int r = 0; r < RING; ++r) load_inputs(lane, p, r, r);
    load_stage(lane, p, 0);
    prepare(lane, p, sh, 0, 0, 0, u_keep[0]);
    store_stage(lane, sh, 0);
    load_stage(lane, p, tiles > 1 ? 1 : tiles);
    __syncthreads();

    for (int k = 0;; k += RING) {
        iteration<0>(lane, p, sh, k, tiles, prod, u_keep);
        if (k + 1 == tiles) return finish(lane, p, k, prod[0], u_keep[0]);
        iteration<1>(lane, p, sh, k + 1, tiles, prod, u_keep);
        if (k + 2 == tiles) return finish(lane, p, k + 1, prod[1], u_keep[1]);
        iteration<2>(lane, p, sh, k + 2, tiles, prod, u_keep);
        if (k + 3 == tiles) return finish(lane, p, k + 2, prod[0], u_keep[0]);
        iteration<3>(lane, p, sh, k + 3, tiles, prod, u_keep);
        if (k + 4 == tiles) return finish(lane, p, k + 3, prod[1], u_keep[1]);
    }
}
