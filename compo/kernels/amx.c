/* The low-rank update's GEMM on Intel AMX tiles (compo/kernels/cpu.py amx_add_products
   calls it; compo/directions/products.py amx_rows builds its operands):
     out[i, j] += sum_k a[k, row0 + i] * b[k, j]     for i < rows, j < n
   a: a pass's stacked A factors, bf16 [K, V] (row stride lda); b: its diag(y) B factors in
   strips of 32 columns, each [K / 2, 32, 2] (pairs of k side by side, the layout AMX reads;
   cpu.amx_strips, zero-padded to npad columns); out: float32 [rows, n]. The factors are
   bf16-exact, so every product is exact; AMX adds them in float32 in an order fixed by k
   alone. A row's value does not depend on which other rows share the call, so any split of
   the rows gives the same bits. Work goes in regions of 32 x 32 outputs (four 16 x 16
   accumulator tiles), each loaded from out once, given the whole K, and stored back; K is
   a multiple of 32 (callers pad each group of directions with zero factors, which add
   nothing). Built only where the compiler targets AMX (-march=native on such a CPU);
   elsewhere compo_amx_ready returns 0. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 16   /* rows of a tile; also float32 columns of an accumulator tile */
#define REGION 32 /* outputs a side of a region: 2 x 2 accumulator tiles */
#define KSTEP 32  /* k per tile product (16 pairs of bf16) */
#define CHUNK 256 /* rows packed at a time (speed only): their a stays in L2 */

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* Asks Linux for the tile state (once per process); 1 when AMX may be used. */
int compo_amx_ready(void) {
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static void configure(void) {
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) { /* 0-3 accumulators, 4-5 a, 6-7 b: 16 rows of 64 bytes */
        config.rows[t] = TILE;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
}

/* a[k, row0 + i] for i < rows, as tiles: at[i / 16][k / 32] is the 16 x 32 block (rows i,
   k) in 1 KB, rows beyond `rows` zero. */
static void pack_rows(const uint16_t *a, int64_t lda, int64_t k, int64_t row0, int64_t rows,
                      uint16_t *at) {
    int64_t height = (rows + REGION - 1) / REGION * REGION;
    memset(at, 0, sizeof(uint16_t) * height * k);
    for (int64_t kk = 0; kk < k; kk++) {
        uint16_t *column = at + (kk / KSTEP) * TILE * KSTEP + kk % KSTEP;
        for (int64_t i = 0; i < rows; i++)
            column[(i / TILE) * TILE * k + (i % TILE) * KSTEP] = a[kk * lda + row0 + i];
    }
}

/* One region: c (float32, row stride ldc bytes) += 32 packed rows x one column strip of b
   ([k / 2, 32 columns, 2]: its tiles are 16 pair-rows of 64 bytes, 128 bytes apart). */
static void region(const uint16_t *at, const uint16_t *strip, int64_t k, float *c,
                   int64_t ldc) {
    const uint16_t *lower = at + TILE * k; /* rows 16-31 */
    _tile_loadd(0, c, ldc);
    _tile_loadd(1, c + TILE, ldc);
    _tile_loadd(2, (char *)c + TILE * ldc, ldc);
    _tile_loadd(3, (char *)c + TILE * ldc + TILE * sizeof(float), ldc);
    for (int64_t s = 0; s < k; s += KSTEP) {
        _tile_loadd(4, at + s * TILE, KSTEP * 2);
        _tile_loadd(5, lower + s * TILE, KSTEP * 2);
        _tile_loadd(6, strip + s * REGION, REGION * 4);
        _tile_loadd(7, strip + s * REGION + TILE * 2, REGION * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ldc);
    _tile_stored(1, c + TILE, ldc);
    _tile_stored(2, (char *)c + TILE * ldc, ldc);
    _tile_stored(3, (char *)c + TILE * ldc + TILE * sizeof(float), ldc);
}

/* The regions of `height` packed rows and columns [0, n) of c (row stride n). */
static void chunk(const uint16_t *at, const uint16_t *b, int64_t k, int64_t height,
                  int64_t n, float *c) {
    float edge[REGION * REGION];
    for (int64_t j = 0; j < n; j += REGION) { /* a column strip of b stays in L1 */
        int64_t width = n - j < REGION ? n - j : REGION;
        const uint16_t *strip = b + j * k;
        for (int64_t i = 0; i < height; i += REGION) {
            int64_t rows = height - i < REGION ? height - i : REGION;
            float *corner = c + i * n + j;
            if (rows == REGION && width == REGION) {
                region(at + i * k, strip, k, corner, n * sizeof(float));
                continue;
            }
            memset(edge, 0, sizeof edge); /* a partial region: through a full-size copy */
            for (int64_t r = 0; r < rows; r++)
                memcpy(edge + r * REGION, corner + r * n, sizeof(float) * width);
            region(at + i * k, strip, k, edge, REGION * sizeof(float));
            for (int64_t r = 0; r < rows; r++)
                memcpy(corner + r * n, edge + r * REGION, sizeof(float) * width);
        }
    }
}

/* out [rows, n] += a[:k, row0 : row0 + rows]^T b, k a multiple of KSTEP. Returns 0, or -1
   when the chunk buffer cannot be allocated (out is then unchanged). */
int compo_amx_add_products(const uint16_t *a, int64_t lda, int64_t k, const uint16_t *b,
                           int64_t npad, int64_t row0, int64_t rows, int64_t n, float *out) {
    if (k % KSTEP != 0 || npad % REGION != 0 || npad < n)
        return -2;
    uint16_t *at = aligned_alloc(64, sizeof(uint16_t) * CHUNK * k);
    if (at == NULL)
        return -1;
    configure();
    for (int64_t i = 0; i < rows; i += CHUNK) {
        int64_t height = rows - i < CHUNK ? rows - i : CHUNK;
        pack_rows(a, lda, k, row0 + i, height, at);
        chunk(at, b, k, height, n, out + i * n);
    }
    _tile_release();
    free(at);
    return 0;
}

#else

int compo_amx_ready(void) { return 0; }

int compo_amx_add_products(const uint16_t *a, int64_t lda, int64_t k, const uint16_t *b,
                           int64_t npad, int64_t row0, int64_t rows, int64_t n, float *out) {
    (void)a, (void)lda, (void)k, (void)b, (void)npad, (void)row0, (void)rows, (void)n;
    (void)out;
    return -1;
}

#endif
