/* Counter-based hashing shared by the simulator and the sampling code: h(key, i) is a pure
 * function of its arguments, so both ends of a link can evaluate it for any index. */
#ifndef SDQKD_PRNG_H
#define SDQKD_PRNG_H
#include <stdint.h>

static inline uint64_t mix64(uint64_t z) { /* SplitMix64 finaliser (Stafford variant 13) */
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
#define GOLDEN 0x9E3779B97F4A7C15ULL

/* Output i of the SplitMix64 stream keyed by k.a (SplitMix64 passes BigCrush), whitened with
 * k.b; streams with different keys are far-apart offsets of the same sequence. */
typedef struct {
    uint64_t a, b;
} hkey;
static inline uint64_t hsh(hkey k, uint64_t i) { return mix64(i * GOLDEN + k.a) ^ k.b; }

#endif
