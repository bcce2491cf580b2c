/* The exact change's per-token sums for low-rank directions, fused (compo/kernels/cpu.py
   builds it with directions.c; compo/directions/products.py fused_sums calls it). For
   directions p and tokens n in [n0, n1), with e[p, n, v] = sum_k u[p, n, k] * a[p, k, v] (never stored):
     spread[p, n]    = sum_v probs[n, v] * expm1(e[p, n, v])   (float64 over blocks)
     at_target[p, n] = e[p, n, targets[n]]                       (float32)
   Blocks of BLOCK output rows outermost, then directions (the block's rows of the
   direction's factors are copied into one contiguous buffer, in L1), then groups of TOKENS
   tokens (each factor vector is loaded once for the group; the block's probs stay in L2):
   probs is read from memory once per call and e is never stored, so the pass is
   compute-bound. Every operation has one rounding in a fixed order: e and the polynomial
   are chains of fused multiply-adds (fmaf's bits on any instruction set), a block's sum is
   WIDTH float32 lanes of fused p * expm1(e) sums, added in lane order into float64, blocks
   in order. So the bits do not depend on how the tokens are split between threads, and the
   vector path and the scalar path (any length, libm beyond BOUND) agree bit for bit. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLOCK 256 /* output rows per block (fixed: it sets the summation order) */
#define WIDTH 16  /* rows computed together; also the float32 lanes of a block's sum */
#define TOKENS 8  /* tokens computed together (speed only, not in the bits) */
/* expm1(x) = x + x^2 q(x), q the Taylor series to x^5 (degree 7 in all): for |x| <= BOUND
   the truncation is below |x|^7 / 8! relative to |x|, < 2e-9 relative to expm1(x) (0.02
   float32 ulp), so the float32 result is within float32 rounding of the exact value;
   larger |x| (rare: logit changes are ~0.03) go to libm's expm1. */
#define BOUND 0.25f
#define Q5 (1.0f / 5040.0f)
#define Q4 (1.0f / 720.0f)
#define Q3 (1.0f / 120.0f)
#define Q2 (1.0f / 24.0f)
#define Q1 (1.0f / 6.0f)
#define Q0 0.5f

/* GCC / Clang vector extensions: element-wise IEEE operations, no FMA contraction
   (-ffp-contract=off): every fused multiply-add is an explicit fma16 / fmaf. */
typedef float floats __attribute__((vector_size(WIDTH * sizeof(float))));
typedef int32_t ints __attribute__((vector_size(WIDTH * sizeof(int32_t))));

/* x * y + z rounded once per lane: fmaf's bits, one instruction where the CPU has it. */
static inline floats fma16(floats x, floats y, floats z) {
#if defined(__AVX512F__)
    return (floats)_mm512_fmadd_ps((__m512)x, (__m512)y, (__m512)z);
#else
    floats out;
    for (int j = 0; j < WIDTH; j++)
        out[j] = fmaf(x[j], y[j], z[j]);
    return out;
#endif
}

static inline floats splat(float x) {
    return (floats){x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
}

static inline floats load(const float *from) {
    floats out;
    memcpy(&out, from, sizeof out);
    return out;
}

static inline float expm1_small(float x) {
    float q = fmaf(fmaf(fmaf(fmaf(fmaf(Q5, x, Q4), x, Q3), x, Q2), x, Q1), x, Q0);
    return fmaf(x * x, q, x);
}

static inline floats expm1_small16(floats x) {
    floats q = fma16(fma16(fma16(fma16(fma16(splat(Q5), x, splat(Q4)), x, splat(Q3)), x,
                                       splat(Q2)), x, splat(Q1)), x, splat(Q0));
    return fma16(x * x, q, x);
}

/* e for one token and output row: u[0] a[0], then fused u[k] a[k * stride] in k order. */
static inline float change(const float *u, const float *a, int64_t rank, int64_t stride) {
    float e = u[0] * a[0];
    for (int64_t k = 1; k < rank; k++)
        e = fmaf(u[k], a[k * stride], e);
    return e;
}

/* The lanes of `count` <= TOKENS tokens over one whole block (rows of a packed
   [rank, BLOCK]; a short group repeats its last token); 0 when some |e| > BOUND (then the
   caller takes the scalar path for the group). */
static int group_lanes(const float *u, const float *packed, int64_t rank, const float *probs,
                       int64_t vocab, int count, floats lanes[TOKENS]) {
    const float *us[TOKENS], *ps[TOKENS];
    for (int t = 0; t < TOKENS; t++) {
        int token = t < count ? t : count - 1;
        us[t] = u + token * rank;
        ps[t] = probs + token * vocab;
        lanes[t] = splat(0.0f);
    }
    ints wide = {0};
    for (int64_t v = 0; v < BLOCK; v += WIDTH) {
        floats e[TOKENS];
        floats first = load(packed + v);
        for (int t = 0; t < TOKENS; t++)
            e[t] = splat(us[t][0]) * first;
        for (int64_t k = 1; k < rank; k++) {
            floats a = load(packed + k * BLOCK + v);
            for (int t = 0; t < TOKENS; t++)
                e[t] = fma16(splat(us[t][k]), a, e[t]);
        }
        for (int t = 0; t < TOKENS; t++) {
            wide |= e[t] * e[t] > BOUND * BOUND;
            lanes[t] = fma16(load(ps[t] + v), expm1_small16(e[t]), lanes[t]);
        }
    }
    for (int j = 0; j < WIDTH; j++)
        if (wide[j])
            return 0;
    return 1;
}

/* The same lanes one row at a time, for one token (any length; libm's expm1 beyond BOUND). */
static void scalar_lanes(const float *u, const float *packed, int64_t rank, const float *probs,
                         int64_t length, float *lanes) {
    for (int j = 0; j < WIDTH; j++)
        lanes[j] = 0.0f;
    for (int64_t v = 0; v < length; v++) {
        float e = change(u, packed + v, rank, BLOCK);
        float t = e * e > BOUND * BOUND ? (float)expm1((double)e) : expm1_small(e);
        lanes[v % WIDTH] = fmaf(probs[v], t, lanes[v % WIDTH]);
    }
}

/* Adds one block's sums of `group` tokens from n into spread (float64, lanes in order). */
static void block_sums(const float *u, const float *packed, int64_t rank, const float *probs,
                       int64_t vocab, int64_t length, int group, double *spread) {
    floats lanes[TOKENS];
    int fast = length == BLOCK && group_lanes(u, packed, rank, probs, vocab, group, lanes);
    for (int t = 0; t < group; t++) {
        float scalar[WIDTH];
        if (!fast)
            scalar_lanes(u + t * rank, packed, rank, probs + t * vocab, length, scalar);
        double sum = 0.0;
        for (int j = 0; j < WIDTH; j++)
            sum += fast ? lanes[t][j] : scalar[j];
        spread[t] += sum;
    }
}

/* Returns 0, or -1 when the block buffer cannot be allocated (nothing is then written). */
int compo_low_rank_changes(const float *u, const float *a, const float *probs,
                           const int64_t *targets, int64_t count, int64_t tokens,
                           int64_t rank, int64_t vocab, int64_t n0, int64_t n1,
                           double *spread, float *at_target) {
    float *packed = malloc(sizeof(float) * rank * BLOCK);
    if (packed == NULL)
        return -1;
    for (int64_t p = 0; p < count; p++)
        for (int64_t n = n0; n < n1; n++) {
            at_target[p * tokens + n] = change(u + (p * tokens + n) * rank,
                                               a + p * rank * vocab + targets[n], rank, vocab);
            spread[p * tokens + n] = 0.0;
        }
    for (int64_t start = 0; start < vocab; start += BLOCK) {
        int64_t length = vocab - start < BLOCK ? vocab - start : BLOCK;
        for (int64_t p = 0; p < count; p++) {
            for (int64_t k = 0; k < rank; k++)
                memcpy(packed + k * BLOCK, a + (p * rank + k) * vocab + start,
                       sizeof(float) * length);
            for (int64_t n = n0; n < n1; n += TOKENS) {
                int group = n1 - n < TOKENS ? (int)(n1 - n) : TOKENS;
                block_sums(u + (p * tokens + n) * rank, packed, rank, probs + n * vocab + start,
                           vocab, length, group, spread + p * tokens + n);
            }
        }
    }
    free(packed);
    return 0;
}
