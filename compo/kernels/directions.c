/* Counter-based directions, the compiled CPU path (compo/perturbation.py has the definition
   and the pure-Python reference; tests/compo/kernels/test_cpu.py checks they agree):
   element e of the direction with key k is
     TABLE[(mix64(k + (e / 4 + 1) * GOLDEN) >> (16 * (e % 4))) & 0xFFFF].
   Unsigned 64-bit arithmetic wraps modulo 2**64 in C, as the definition needs. */
#include <stdint.h>

#define GOLDEN 0x9E3779B97F4A7C15ULL /* SplitMix64 increment */
#define MIX1 0xBF58476D1CE4E5B9ULL   /* SplitMix64 finaliser multipliers */
#define MIX2 0x94D049BB133111EBULL
#define LANES 4      /* table indices per 64-bit hash */
#define LANE_BITS 16 /* bits per table index */
#define LANE_MASK 0xFFFFULL

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= MIX1;
    x ^= x >> 27;
    x *= MIX2;
    return x ^ (x >> 31);
}

static inline float element(const float *table, uint64_t key, int64_t e) {
    uint64_t bits = mix64(key + (uint64_t)(e / LANES + 1) * GOLDEN);
    return table[(bits >> (LANE_BITS * (e % LANES))) & LANE_MASK];
}

/* Elements [start, start + length) of one direction; whole words in the middle. */
static void fill_one(const float *table, uint64_t key, int64_t start, int64_t length,
                     float *out) {
    int64_t e = start, end = start + length;
    for (; e < end && e % LANES; e++)
        *out++ = element(table, key, e);
    uint64_t state = key + (uint64_t)(e / LANES + 1) * GOLDEN;
    for (; e + LANES <= end; e += LANES, state += GOLDEN, out += LANES) {
        uint64_t bits = mix64(state);
        out[0] = table[bits & LANE_MASK];
        out[1] = table[(bits >> LANE_BITS) & LANE_MASK];
        out[2] = table[(bits >> (2 * LANE_BITS)) & LANE_MASK];
        out[3] = table[bits >> (3 * LANE_BITS)];
    }
    for (; e < end; e++)
        *out++ = element(table, key, e);
}

/* out[p * length + i] = element start + i of direction keys[p], for p < count. */
void compo_fill_directions(const float *table, const uint64_t *keys, int64_t count,
                           int64_t start, int64_t length, float *out) {
    for (int64_t p = 0; p < count; p++)
        fill_one(table, keys[p], start, length, out + p * length);
}
