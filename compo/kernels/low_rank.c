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
   in order. So the bits do not depend on how the tokens are split between threads or on
   the vector width (AVX-512, AVX2 or none: tested); lanes with |e| > BOUND take libm's
   expm1; a partial last block runs over rows padded with p = 0, a = 0, whose terms add +0. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

#define BLOCK 256 /* output rows per block (fixed: it sets the summation order) */
#define WIDTH 16  /* float32 lanes of a block's sum: row v goes to lane v % WIDTH */
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

/* The machine's vector (GCC / Clang vector extensions: element-wise IEEE operations, no FMA
   contraction under -ffp-contract=off), its explicit fused multiply-add (fmaf's bits) and
   broadcast. TOKENS, the tokens computed together, fits the register file (speed only). */
#if defined(__AVX512F__)
#define LANES 16
#define TOKENS 8
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
static inline vec fused(vec x, vec y, vec z) {
    return (vec)_mm512_fmadd_ps((__m512)x, (__m512)y, (__m512)z);
}
static inline vec splat(float x) { return (vec)_mm512_set1_ps(x); }
static inline vec larger(vec x, vec y) { return (vec)_mm512_max_ps((__m512)x, (__m512)y); }
#elif defined(__FMA__) && defined(__AVX__)
#define LANES 8
#define TOKENS 4
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
static inline vec fused(vec x, vec y, vec z) {
    return (vec)_mm256_fmadd_ps((__m256)x, (__m256)y, (__m256)z);
}
static inline vec splat(float x) { return (vec)_mm256_set1_ps(x); }
static inline vec larger(vec x, vec y) { return (vec)_mm256_max_ps((__m256)x, (__m256)y); }
#else
#define LANES 4
#define TOKENS 4
typedef float vec __attribute__((vector_size(LANES * sizeof(float))));
static inline vec fused(vec x, vec y, vec z) {
    for (int j = 0; j < LANES; j++)
        z[j] = fmaf(x[j], y[j], z[j]);
    return z;
}
static inline vec splat(float x) { return (vec){x, x, x, x}; }
static inline vec larger(vec x, vec y) {
    for (int j = 0; j < LANES; j++)
        x[j] = x[j] > y[j] ? x[j] : y[j];
    return x;
}
#endif
#define PARTS (WIDTH / LANES) /* vectors per WIDTH rows */
typedef int32_t ints __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vec load(const float *from) {
    vec out;
    memcpy(&out, from, sizeof out);
    return out;
}

static inline vec expm1_small_vec(vec x) {
    vec q = fused(fused(fused(fused(fused(splat(Q5), x, splat(Q4)), x, splat(Q3)), x,
                              splat(Q2)), x, splat(Q1)), x, splat(Q0));
    return fused(x * x, q, x);
}

/* e for one token and output row: u[0] a[0], then fused u[k] a[k * stride] in k order. */
static inline float change(const float *u, const float *a, int64_t rank, int64_t stride) {
    float e = u[0] * a[0];
    for (int64_t k = 1; k < rank; k++)
        e = fmaf(u[k], a[k * stride], e);
    return e;
}

/* expm1 of each lane: the polynomial, libm's (in double) for lanes with |x| > BOUND. */
static inline vec expm1_vec(vec x) {
    vec y = expm1_small_vec(x);
    ints wide = x * x > BOUND * BOUND;
    int any = 0;
    for (int j = 0; j < LANES; j++)
        any |= wide[j];
    if (any) /* rare: logit changes are ~0.03 */
        for (int j = 0; j < LANES; j++)
            if (wide[j])
                y[j] = (float)expm1((double)x[j]);
    return y;
}

/* The lanes of `count` <= TOKENS tokens over one whole block (rows of a packed
   [rank, BLOCK]; a short group repeats its last token); lanes[t][h] holds lanes h * LANES
   onward. With `wide` 0 every lane takes the polynomial and the return value says whether
   some |e| > BOUND (the caller then runs it again with `wide` 1, where those lanes take
   libm's expm1: the same bits as if every lane had been checked the first time). */
static inline int group_lanes(const float *u, const float *packed, int64_t rank,
                              const float *probs, int64_t vocab, int count, int wide,
                              vec lanes[TOKENS][PARTS]) {
    const float *us[TOKENS], *ps[TOKENS];
    for (int t = 0; t < TOKENS; t++) {
        int token = t < count ? t : count - 1;
        us[t] = u + token * rank;
        ps[t] = probs + token * vocab;
        for (int h = 0; h < PARTS; h++)
            lanes[t][h] = splat(0.0f);
    }
    vec peak = splat(0.0f);
    for (int64_t v = 0; v < BLOCK; v += LANES) {
        int h = (int)(v % WIDTH) / LANES;
        vec e[TOKENS];
        vec first = load(packed + v);
        for (int t = 0; t < TOKENS; t++)
            e[t] = splat(us[t][0]) * first;
        for (int64_t k = 1; k < rank; k++) {
            vec a = load(packed + k * BLOCK + v);
            for (int t = 0; t < TOKENS; t++)
                e[t] = fused(splat(us[t][k]), a, e[t]);
        }
        for (int t = 0; t < TOKENS; t++) {
            vec y = wide ? expm1_vec(e[t]) : expm1_small_vec(e[t]);
            peak = larger(peak, e[t] * e[t]);
            lanes[t][h] = fused(load(ps[t] + v), y, lanes[t][h]);
        }
    }
    int beyond = 0;
    for (int j = 0; j < LANES; j++)
        beyond |= peak[j] > BOUND * BOUND;
    return beyond;
}

/* Adds one block's sums of `group` tokens from n into spread (float64, lanes in order). */
static void block_sums(const float *u, const float *packed, int64_t rank, const float *probs,
                       int64_t vocab, int64_t length, int group, double *spread) {
    vec lanes[TOKENS][PARTS];
    float padded[length < BLOCK ? TOKENS * BLOCK : 1];
    const float *rows = probs;
    int64_t stride = vocab;
    if (length < BLOCK) { /* a partial last block: its rows with p = 0 (and a = 0) beyond */
        memset(padded, 0, sizeof padded);
        for (int t = 0; t < group; t++)
            memcpy(padded + t * BLOCK, probs + t * vocab, sizeof(float) * length);
        rows = padded;
        stride = BLOCK;
    }
    if (group_lanes(u, packed, rank, rows, stride, group, 0, lanes))
        group_lanes(u, packed, rank, rows, stride, group, 1, lanes);
    for (int t = 0; t < group; t++) {
        float sums[WIDTH];
        memcpy(sums, lanes[t], sizeof sums);
        double sum = 0.0;
        for (int j = 0; j < WIDTH; j++)
            sum += sums[j];
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
            for (int64_t k = 0; k < rank; k++) { /* zeros beyond a partial block's rows */
                memcpy(packed + k * BLOCK, a + (p * rank + k) * vocab + start,
                       sizeof(float) * length);
                memset(packed + k * BLOCK + length, 0, sizeof(float) * (BLOCK - length));
            }
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
