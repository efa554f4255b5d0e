/* CPU selective scan (float32), compiled at first use by cpu_backend.py.
 *
 * The recurrence of reference.py, per batch b, channel d and state n:
 *
 *     dt_t = softplus(delta_t + bias)   (or delta_t + bias)
 *     h_t  = exp(dt_t * A[n]) * h_{t-1} + dt_t * B_t[n] * u_t,   h_{-1} = 0
 *     y_t  = sum_n C_t[n] * h_t[n] + D * u_t
 *
 * Why this shape. The cost is the dim * N * L exponentials. The recurrence is sequential in t,
 * and the N states of one channel share dt_t, so the only cheap direction to vectorise is over
 * channels: LANES channels of one block sit in the SIMD lanes and every state n advances all of
 * them with one vector exp. Built with -ffast-math, glibc's math.h declares expf as a SIMD
 * function and GCC calls libmvec's vector expf for the `omp simd` loop (x86-64; elsewhere the
 * scalar expf runs, still correct). A block's state h[N][LANES] (4 KiB at N = 32) stays in L1.
 *
 * Memory access: u, delta and y are [batch, dim, L] (L contiguous) but are needed across
 * channels, so a tile of TILE steps x LANES channels is transposed into a small buffer (and y out
 * of one; the cycle scan's y is token-major, [batch, L, dim], and leaves its buffer row by row);
 * B and C [batch, N, L] are read in place: at step t the block touches B[n][t] for all
 * n, 2 N cache lines that stay hot for 16 consecutive steps.
 *
 * Work items are (batch, channel block) pairs, shared by the OpenMP threads. Lanes past the last
 * channel get A = 0, u = delta = 0 (a state that stays 0) and are never written back.
 *
 * What -ffast-math changes here: sums may be reassociated and the vector expf / log1pf are a
 * few ulp from the scalar ones (the tests bound the result); finite-math-only means NaN or Inf
 * inputs give unspecified outputs (the reference would propagate them). For finite inputs every
 * intermediate stays finite: softplus is max(x, 0) + log1p(exp(-|x|)), which never overflows,
 * and exp(dt * A) only overflows when dt * A > 88, i.e. when the true recurrence itself blows
 * up (A > 0 with dt > 0, or dt < 0 with A < 0, which the Mamba models never produce). The kernel
 * sets flush-to-zero / denormals-are-zero on its own threads for the duration of the call (the
 * decays of large dt reach the denormal range, where x86 arithmetic is ~100x slower) and
 * restores the caller's mode; each flushed value changes by less than 1.2e-38.
 */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#define HAVE_MXCSR 1
#endif

/* GCC's -march=native on AVX-512 CPUs still prefers 256-bit vectors; this loop is bound by the
 * vector expf, and the 512-bit one (_ZGVeN16v_expf) was 10-15% faster than the 256-bit one per
 * hrsam_tiny Cycle-scan call on the development CPU (docs/BENCHMARKS.md). */
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif

/* Channels per block: two 512-bit vectors per state. Each vector expf is a function call that
 * spills the live registers; with two calls per state the spills, the loop control and the B/C
 * broadcasts are shared, which measured 12-20% faster than 16 lanes (docs/BENCHMARKS.md). */
#define LANES 32
#define TILE 64
#define ALIGN 64

typedef struct {
    const float *u, *delta, *A, *B, *C, *D, *bias;
    float *y;
    int64_t batch, dim, dstate, seqlen;
    int softplus;
    const float *weights; /* cycle scan only: [dim, repeats] copy weights, else NULL */
    int64_t repeats;
    int token_major; /* y is [batch, L, dim] (the cycle scan's), else [batch, dim, L] like u */
} scan_args;

typedef struct {
    float *h;   /* [dstate][LANES] state */
    float *a;   /* [dstate][LANES] A, transposed */
    float *dt;  /* [TILE][LANES] dt */
    float *dtu; /* [TILE][LANES] dt * u */
    float *yt;  /* [TILE][LANES] y (without the D u term) */
    float *ut;  /* [TILE][LANES] u */
} workspace;

static size_t round_up(size_t bytes) { return (bytes + ALIGN - 1) / ALIGN * ALIGN; }

/* One allocation per thread, cut into aligned arrays; returns NULL when out of memory. */
static void *workspace_alloc(workspace *w, int64_t dstate) {
    size_t state = round_up(sizeof(float) * (size_t)dstate * LANES);
    size_t tile = round_up(sizeof(float) * TILE * LANES);
    char *base = aligned_alloc(ALIGN, 2 * state + 4 * tile);
    if (base == NULL) return NULL;
    w->h = (float *)base;
    w->a = (float *)(base + state);
    w->dt = (float *)(base + 2 * state);
    w->dtu = (float *)(base + 2 * state + tile);
    w->yt = (float *)(base + 2 * state + 2 * tile);
    w->ut = (float *)(base + 2 * state + 3 * tile);
    return base;
}

/* softplus(x) without overflow for any finite x: max(x, 0) + log1p(exp(-|x|)). */
static inline float softplus(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

/* Load steps [t0, t0 + steps) of channels [d0, d0 + width) into w->ut / w->dt / w->dtu, u times
 * scale[c] when scale is not NULL. */
static void load_tile(const scan_args *s, const workspace *w, int64_t b, int64_t d0, int width, int64_t t0,
                      int steps, const float *scale) {
    float *restrict ut = w->ut, *restrict dt = w->dt, *restrict dtu = w->dtu;
    memset(ut, 0, sizeof(float) * TILE * LANES);
    memset(dt, 0, sizeof(float) * TILE * LANES);
    for (int c = 0; c < width; c++) {
        const float *urow = s->u + ((b * s->dim) + d0 + c) * s->seqlen + t0;
        const float *drow = s->delta + ((b * s->dim) + d0 + c) * s->seqlen + t0;
        float bias = s->bias[d0 + c], factor = scale != NULL ? scale[c] : 1.0f;
        for (int t = 0; t < steps; t++) {
            ut[t * LANES + c] = urow[t] * factor;
            dt[t * LANES + c] = drow[t] + bias;
        }
    }
    if (s->softplus) {
#pragma omp simd
        for (int i = 0; i < TILE * LANES; i++) dt[i] = softplus(dt[i]);
    }
#pragma omp simd
    for (int i = 0; i < TILE * LANES; i++) dtu[i] = dt[i] * ut[i];
}

/* Advance the block's state over one tile; w->yt[t][c] = sum_n C_t[n] h_t[n]. */
static void scan_tile(const scan_args *s, const workspace *w, int64_t b, int64_t t0, int steps) {
    const int64_t N = s->dstate, L = s->seqlen;
    const float *restrict Bb = s->B + b * N * L + t0;
    const float *restrict Cb = s->C + b * N * L + t0;
    const float *restrict a = w->a;
    float *restrict h = w->h;
    for (int t = 0; t < steps; t++) {
        const float *restrict dt = w->dt + t * LANES;
        const float *restrict dtu = w->dtu + t * LANES;
        float acc[LANES] __attribute__((aligned(ALIGN))) = {0};
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[n * L + t], cn = Cb[n * L + t];
            float *restrict hn = h + n * LANES;
            const float *restrict an = a + n * LANES;
#pragma omp simd aligned(hn, an : ALIGN)
            for (int c = 0; c < LANES; c++) {
                float next = expf(dt[c] * an[c]) * hn[c] + dtu[c] * bn;
                hn[c] = next;
                acc[c] += cn * next;
            }
        }
        memcpy(w->yt + t * LANES, acc, sizeof(acc));
    }
}

/* Advance the block's state over one tile without outputs; dtsum[c] += the tile's dt. */
static void advance_tile(const scan_args *s, const workspace *w, int64_t b, int64_t t0, int steps, float *dtsum) {
    const int64_t N = s->dstate, L = s->seqlen;
    const float *restrict Bb = s->B + b * N * L + t0;
    const float *restrict a = w->a;
    float *restrict h = w->h;
    for (int t = 0; t < steps; t++) {
        const float *restrict dt = w->dt + t * LANES;
        const float *restrict dtu = w->dtu + t * LANES;
        for (int64_t n = 0; n < N; n++) {
            const float bn = Bb[n * L + t];
            float *restrict hn = h + n * LANES;
            const float *restrict an = a + n * LANES;
#pragma omp simd aligned(hn, an : ALIGN)
            for (int c = 0; c < LANES; c++) hn[c] = expf(dt[c] * an[c]) * hn[c] + dtu[c] * bn;
        }
        for (int c = 0; c < LANES; c++) dtsum[c] += dt[c];
    }
}

/* Write the tile's outputs y = yt + D u back to y, [batch, dim, L] or token-major [batch, L, dim]
 * (each step's channels contiguous: the tile buffer's rows copied straight out). */
static void store_tile(const scan_args *s, const workspace *w, int64_t b, int64_t d0, int width, int64_t t0,
                       int steps) {
    if (s->token_major) {
        for (int t = 0; t < steps; t++) {
            float *yrow = s->y + (b * s->seqlen + t0 + t) * s->dim + d0;
            for (int c = 0; c < width; c++) yrow[c] = w->yt[t * LANES + c] + s->D[d0 + c] * w->ut[t * LANES + c];
        }
        return;
    }
    for (int c = 0; c < width; c++) {
        float *yrow = s->y + ((b * s->dim) + d0 + c) * s->seqlen + t0;
        float skip = s->D[d0 + c];
        for (int t = 0; t < steps; t++) yrow[t] = w->yt[t * LANES + c] + skip * w->ut[t * LANES + c];
    }
}

/* Scan the sequence from the state in w->h, with u times scale[c] (scale NULL: u), writing y. */
static void scan_outputs(const scan_args *s, const workspace *w, int64_t b, int64_t d0, int width,
                         const float *scale) {
    for (int64_t t0 = 0; t0 < s->seqlen; t0 += TILE) {
        const int steps = (int)(s->seqlen - t0 < TILE ? s->seqlen - t0 : TILE);
        load_tile(s, w, b, d0, width, t0, steps, scale);
        scan_tile(s, w, b, t0, steps);
        store_tile(s, w, b, d0, width, t0, steps);
    }
}

/* Zero state, and the block's A transposed into the lanes; returns the block's width. */
static int start_block(const scan_args *s, const workspace *w, int64_t d0) {
    const int64_t N = s->dstate;
    const int width = (int)(s->dim - d0 < LANES ? s->dim - d0 : LANES);
    memset(w->h, 0, sizeof(float) * (size_t)N * LANES);
    memset(w->a, 0, sizeof(float) * (size_t)N * LANES);
    for (int c = 0; c < width; c++)
        for (int64_t n = 0; n < N; n++) w->a[n * LANES + c] = s->A[(d0 + c) * N + n];
    return width;
}

/* Scan one (batch, channel block) work item over the whole sequence. */
static void scan_block(const scan_args *s, const workspace *w, int64_t b, int64_t d0) {
    scan_outputs(s, w, b, d0, start_block(s, w, d0), NULL);
}

/* The Cycle-scan's weighted scan of the sequence repeated R times, in two passes over L (see
 * hrsam/ops/selective_scan/cycle.py for why it is exact): pass 1 finds copy 0's final state
 * h_L and total decay P_L = exp(A sum dt); the weighted sum of the copies' states then follows the
 * ordinary scan of W u (W = sum_k w_k) from S = h_L G, G = sum_k w_k (1 + P_L + ... + P_L^(k-1)). */
static void cycle_block(const scan_args *s, const workspace *w, int64_t b, int64_t d0) {
    const int64_t N = s->dstate, R = s->repeats;
    const int width = start_block(s, w, d0);
    float total[LANES] = {0}, dtsum[LANES] = {0};
    for (int64_t t0 = 0; t0 < s->seqlen; t0 += TILE) {
        const int steps = (int)(s->seqlen - t0 < TILE ? s->seqlen - t0 : TILE);
        load_tile(s, w, b, d0, width, t0, steps, NULL);
        advance_tile(s, w, b, t0, steps, dtsum);
    }
    for (int c = 0; c < width; c++)
        for (int64_t k = 0; k < R; k++) total[c] += s->weights[(d0 + c) * R + k];
    for (int64_t n = 0; n < N; n++) {
        for (int c = 0; c < width; c++) {
            const float decay = expf(w->a[n * LANES + c] * dtsum[c]);
            float gain = 0.0f, geometric = 0.0f;
            for (int64_t k = 0; k < R; k++) {
                gain += s->weights[(d0 + c) * R + k] * geometric;
                geometric = geometric * decay + 1.0f;
            }
            w->h[n * LANES + c] *= gain;
        }
    }
    scan_outputs(s, w, b, d0, width, total);
}

/* Run block(s, w, b, d0) for every (batch, channel block) work item on `threads` OpenMP threads;
 * returns 0, or 1 when a thread could not allocate its workspace (y is then incomplete). */
static int run_blocks(const scan_args *s, void (*block)(const scan_args *, const workspace *, int64_t, int64_t),
                      int threads) {
    const int64_t blocks = (s->dim + LANES - 1) / LANES;
    const int64_t items = s->batch * blocks;
    int failed = 0;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads) if (threads > 1 && items > 1) reduction(| : failed)
    {
#ifdef HAVE_MXCSR
        const unsigned int saved_mode = _mm_getcsr();
        _mm_setcsr(saved_mode | 0x8040); /* FTZ (bit 15) and DAZ (bit 6) */
#endif
        workspace w;
        void *memory = workspace_alloc(&w, s->dstate);
        failed |= memory == NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++)
            if (memory != NULL) block(s, &w, item / blocks, item % blocks * LANES);
        free(memory);
#ifdef HAVE_MXCSR
        _mm_setcsr(saved_mode);
#endif
    }
    return failed;
}

/* Entry point (ctypes). All arrays contiguous float32: u, delta, y [batch, dim, L]; A [dim, N];
 * B, C [batch, N, L]; D, delta_bias [dim]; threads: OpenMP threads (values below 1 mean 1).
 * Returns 0, or 1 when a thread could not allocate its workspace (y is then incomplete). */
int hrsam_selective_scan_f32(const float *u, const float *delta, const float *A, const float *B, const float *C,
                             const float *D, const float *delta_bias, float *y, int64_t batch, int64_t dim,
                             int64_t dstate, int64_t seqlen, int softplus, int threads) {
    const scan_args s = {u, delta, A, B, C, D, delta_bias, y, batch, dim, dstate, seqlen, softplus, NULL, 0, 0};
    return run_blocks(&s, scan_block, threads);
}

/* Entry point (ctypes): the Cycle-scan's weighted scan of the sequence repeated `repeats` times,
 * y = sum_k weights[:, k] * (the scan of the tiled sequence's copy k), written token-major
 * ([batch, L, dim], the layout hrsam::cycle_scan returns); weights [dim, repeats]; the other
 * arrays as hrsam_selective_scan_f32's, untiled. */
int hrsam_cycle_scan_f32(const float *u, const float *delta, const float *A, const float *B, const float *C,
                         const float *D, const float *delta_bias, const float *weights, float *y, int64_t batch,
                         int64_t dim, int64_t dstate, int64_t seqlen, int64_t repeats, int softplus, int threads) {
    const scan_args s = {u, delta, A, B, C, D, delta_bias, y, batch, dim, dstate, seqlen, softplus, weights, repeats,
                         1 /* token-major y */};
    return run_blocks(&s, cycle_block, threads);
}
