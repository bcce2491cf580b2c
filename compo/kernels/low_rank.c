/* The exact change's per-token sums for low-rank directions, fused (compo/kernels/cpu.py
   builds it with directions.c; compo/directions/products.py fused_sums calls it). For
   directions p and tokens n in [n0, n1), with e[p, n, v] = sum_k u[p, n, k] * a[p, k, v] (never stored):
     spread[p, n]    = sum_v probs[n, v] * expm1(e[p, n, v])   (float64)
     at_target[p, n] = e[p, n, targets[n]]                       (float32)
   Blocks of BLOCK output rows outermost, then directions (one direction's factors for the
   block stay in L1), then tokens (the block's probs stay in L2): probs is read from memory
   once per call, e is never stored, so the pass is compute-bound. Every sum runs in a fixed
   order (WIDTH interleaved float64 partial sums per block, blocks in order), so the bits
   do not depend on how the tokens are split between threads. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 256 /* output rows per block (fixed: it sets the summation order) */
#define WIDTH 16  /* rows computed together; also the interleaved float64 partial sums */
#define HALF 8
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

/* GCC / Clang vector extensions: element-wise IEEE operations, the same bits as the
   scalar code below on any instruction set (no FMA contraction: -ffp-contract=off). */
typedef float floats __attribute__((vector_size(WIDTH * sizeof(float))));
typedef float half_floats __attribute__((vector_size(HALF * sizeof(float))));
typedef double doubles __attribute__((vector_size(HALF * sizeof(double))));
typedef int32_t ints __attribute__((vector_size(WIDTH * sizeof(int32_t))));

static inline float expm1_small(float x) {
    float q = ((((Q5 * x + Q4) * x + Q3) * x + Q2) * x + Q1) * x + Q0;
    return x + (x * x) * q;
}

static inline floats load(const float *from) {
    floats out;
    memcpy(&out, from, sizeof out);
    return out;
}

/* The block's WIDTH partial sums, vectorised; 0 when some |e| > BOUND (then the caller
   takes the scalar path, which gives the same bits for every other row). */
static int block_lanes_fast(const float *u, const float *a, int64_t rank, int64_t stride,
                            const float *probs, double *lanes) {
    doubles low = {0}, high = {0};
    ints wide = {0};
    for (int64_t v = 0; v < BLOCK; v += WIDTH) {
        floats e = u[0] * load(a + v);
        for (int64_t k = 1; k < rank; k++)
            e += u[k] * load(a + k * stride + v);
        floats square = e * e;
        floats q = ((((Q5 * e + Q4) * e + Q3) * e + Q2) * e + Q1) * e + Q0;
        floats t = e + square * q;
        wide |= square > BOUND * BOUND;
        floats p = load(probs + v);
        half_floats t_lo, t_hi, p_lo, p_hi;
        memcpy(&t_lo, &t, sizeof t_lo);
        memcpy(&t_hi, (const float *)&t + HALF, sizeof t_hi);
        memcpy(&p_lo, &p, sizeof p_lo);
        memcpy(&p_hi, (const float *)&p + HALF, sizeof p_hi);
        low += __builtin_convertvector(p_lo, doubles) * __builtin_convertvector(t_lo, doubles);
        high += __builtin_convertvector(p_hi, doubles) * __builtin_convertvector(t_hi, doubles);
    }
    int any = 0;
    for (int j = 0; j < WIDTH; j++)
        any |= wide[j];
    memcpy(lanes, &low, sizeof low);
    memcpy(lanes + HALF, &high, sizeof high);
    return !any;
}

/* The same partial sums one row at a time (any length; libm's expm1 beyond BOUND). */
static void block_lanes_scalar(const float *u, const float *a, int64_t rank, int64_t stride,
                               const float *probs, int64_t length, double *lanes) {
    for (int j = 0; j < WIDTH; j++)
        lanes[j] = 0.0;
    for (int64_t v = 0; v < length; v++) {
        float e = u[0] * a[v];
        for (int64_t k = 1; k < rank; k++)
            e += u[k] * a[k * stride + v];
        float t = e * e > BOUND * BOUND ? (float)expm1((double)e) : expm1_small(e);
        lanes[v % WIDTH] += (double)probs[v] * (double)t; /* an exact product */
    }
}

/* sum_v probs[v] * expm1(e[v]) over one block of `length` rows, in a fixed order. */
static double block_spread(const float *u, const float *a, int64_t rank, int64_t stride,
                           const float *probs, int64_t length) {
    double lanes[WIDTH];
    if (length != BLOCK || !block_lanes_fast(u, a, rank, stride, probs, lanes))
        block_lanes_scalar(u, a, rank, stride, probs, length, lanes);
    double sum = 0.0;
    for (int j = 0; j < WIDTH; j++)
        sum += lanes[j];
    return sum;
}

void compo_low_rank_changes(const float *u, const float *a, const float *probs,
                            const int64_t *targets, int64_t count, int64_t tokens,
                            int64_t rank, int64_t vocab, int64_t n0, int64_t n1,
                            double *spread, float *at_target) {
    for (int64_t p = 0; p < count; p++)
        for (int64_t n = n0; n < n1; n++) {
            const float *up = u + (p * tokens + n) * rank;
            float e = 0.0f;
            for (int64_t k = 0; k < rank; k++)
                e += up[k] * a[(p * rank + k) * vocab + targets[n]];
            at_target[p * tokens + n] = e;
            spread[p * tokens + n] = 0.0;
        }
    for (int64_t start = 0; start < vocab; start += BLOCK) {
        int64_t length = vocab - start < BLOCK ? vocab - start : BLOCK;
        for (int64_t p = 0; p < count; p++)
            for (int64_t n = n0; n < n1; n++)
                spread[p * tokens + n] += block_spread(
                    u + (p * tokens + n) * rank, a + p * rank * vocab + start, rank, vocab,
                    probs + n * vocab + start, length);
    }
}
