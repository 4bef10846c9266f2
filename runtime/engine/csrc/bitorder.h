/* Bit order shared by the engine's C modules: packed buffers are MSB-first per byte (bit i of
 * a buffer is (buf[i>>3] >> (7 - (i&7))) & 1); word arithmetic wants LSB-first. */
#ifndef SDQKD_BITORDER_H
#define SDQKD_BITORDER_H
#include <stdint.h>

/* Reverse the bit order inside each byte of a 64-bit word (byte order unchanged). */
static inline uint64_t rev_bits_in_bytes(uint64_t x) {
    x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
    x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
    x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((x & 0x0F0F0F0F0F0F0F0FULL) << 4);
    return x;
}

#endif
