/* Cascade core: parameters, fast permutations, parity pyramids, Bob/Alice state machines, wire format.
 *
 * Design notes (why it is fast):
 *  - Pass p >= 1 uses a structured pseudo-random permutation: the key is viewed as R rows of 64 bits;
 *    rows are shuffled (sigma), each row is rotated by a random amount (rho), the 64x64 tiles are
 *    transposed and the 64 columns are read in a random order (pi). Bits of one row always land in
 *    different columns; bits of different rows land in the same column with probability 1/64, so
 *    pair statistics match a uniform permutation, while applying it costs O(n/64) word operations.
 *  - Each party keeps, per pass, the permuted key plus a "parity pyramid" (level l+1 holds the parity
 *    of every word of level l): any range parity costs O(levels), a bit flip costs O(levels).
 *  - Bob batches every parity question of one round into one message; Alice answers statelessly
 *    apart from a round counter, decoding QCHUNK questions and prefetching the words they read
 *    before answering them (the words are scattered over megabytes: a link runs several blocks'
 *    Cascade side by side, whose pyramids do not all fit in the cache).
 *
 * Wire format (varint = unsigned LEB128, every message ends with a 4-byte little-endian checksum):
 *   request: C5 51 varint(round) [round 0: u32 parameter digest] varint(#sections)
 *            {varint(pass) varint(first block) varint(count)}* varint(#queries)
 *            {varint(zigzag delta of pass<<32|start) varint(length)}*
 *   reply:   C5 52 varint(round) varint(#parities) parities packed MSB-first */
#include "cascade_core.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC 0xC5
#define T_REQ 0x51
#define T_REP 0x52
#define MAXLEV 8
#define QCHUNK 32 /* Alice: range queries decoded (and their words prefetched) before they are answered */

/* ------------------------------------------------------------------ small helpers */

static inline unsigned par64(uint64_t x) { return (unsigned)__builtin_parityll(x); }
static inline uint64_t rotr64(uint64_t w, unsigned r) { return (w >> r) | (w << ((64 - r) & 63)); }

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct { uint64_t s[4]; } rng_t; /* xoshiro256** */

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t rng_next(rng_t *r) {
    uint64_t *s = r->s, res = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rotl64(s[3], 45);
    return res;
}
static void rng_seed(rng_t *r, uint64_t seed, uint64_t stream) {
    uint64_t x = seed ^ (stream * 0xD1B54A32D192ED03ULL) ^ 0xCA5CADE5EEDULL;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}
/* Unbiased integer in [0, range), Lemire's method; platform independent. */
static uint32_t rng_below(rng_t *r, uint32_t range) {
    uint64_t m = (rng_next(r) >> 32) * (uint64_t)range;
    uint32_t lo = (uint32_t)m;
    if (lo < range) {
        uint32_t t = (uint32_t)(-range) % range;
        while (lo < t) {
            m = (rng_next(r) >> 32) * (uint64_t)range;
            lo = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

/* Non-cryptographic integrity check (catches corruption/desync, not attacks: the channel is authenticated
 * elsewhere). Each 8-byte step is a bijection of the state, so any single-word change alters it. */
static uint32_t checksum(const uint8_t *p, size_t n) {
    uint64_t h = 0x243F6A8885A308D3ULL ^ (uint64_t)n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int j = 7; j >= 0; j--) w = (w << 8) | p[i + j];
        h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    for (size_t j = n; j > i; j--) w = (w << 8) | p[j - 1];
    h = (h ^ w) * 0x9E3779B97F4A7C15ULL;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return (uint32_t)h;
}

/* ------------------------------------------------------------------ growable byte buffer + varints */

typedef struct { uint8_t *p; size_t len, cap; int oom; } buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->oom || b->len + extra <= b->cap) return;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra) nc *= 2;
    uint8_t *q = realloc(b->p, nc);
    if (!q) { b->oom = 1; return; }
    b->p = q;
    b->cap = nc;
}
static void buf_byte(buf_t *b, uint8_t v) {
    buf_reserve(b, 1);
    if (!b->oom) b->p[b->len++] = v;
}
static void buf_varint(buf_t *b, uint64_t v) {
    buf_reserve(b, 10);
    if (b->oom) return;
    while (v >= 0x80) { b->p[b->len++] = (uint8_t)(v | 0x80); v >>= 7; }
    b->p[b->len++] = (uint8_t)v;
}
static void buf_u32le(buf_t *b, uint32_t v) {
    for (int i = 0; i < 4; i++) buf_byte(b, (uint8_t)(v >> (8 * i)));
}
static void buf_seal(buf_t *b) { buf_u32le(b, checksum(b->p, b->len)); }

typedef struct { const uint8_t *p; size_t len, pos; } rd_t;

static int rd_varint(rd_t *r, uint64_t *v) {
    uint64_t x = 0;
    for (int sh = 0; sh < 64; sh += 7) {
        if (r->pos >= r->len) return -1;
        uint8_t c = r->p[r->pos++];
        if (sh == 63 && c > 1) return -1;
        x |= (uint64_t)(c & 0x7F) << sh;
        if (!(c & 0x80)) {
            if (c == 0 && sh) return -1; /* overlong encoding */
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* Checks framing (length, checksum, magic, type); on success r covers the body after the type byte. */
static int rd_open(rd_t *r, const uint8_t *m, size_t len, int type, char *err, size_t errlen) {
    if (!m || len < 7) {
        seterr(err, errlen, "cascade message truncated (%zu bytes)", len);
        return CS_EINVAL;
    }
    uint32_t want = (uint32_t)m[len - 4] | (uint32_t)m[len - 3] << 8 | (uint32_t)m[len - 2] << 16 |
                    (uint32_t)m[len - 1] << 24;
    if (checksum(m, len - 4) != want) {
        seterr(err, errlen, "cascade message checksum mismatch (corrupted or truncated)");
        return CS_EINVAL;
    }
    if (m[0] != MAGIC) {
        seterr(err, errlen, "not a cascade message (bad magic byte)");
        return CS_EINVAL;
    }
    if (type && m[1] != type) {
        seterr(err, errlen, "unexpected cascade message type 0x%02x (want %s)", m[1],
               type == T_REQ ? "request" : "reply");
        return CS_EINVAL;
    }
    r->p = m;
    r->len = len - 4;
    r->pos = 2;
    return CS_OK;
}

/* ------------------------------------------------------------------ parameters */

static uint32_t clampk(double k, uint32_t L) {
    if (!(k >= 1.0)) return 1;
    if (k >= (double)L) return L;
    return (uint32_t)k;
}

int cs_params_init(cs_params *prm, uint32_t n, double qber, int variant, uint64_t seed, int flags, char *err,
                   size_t errlen) {
    memset(prm, 0, sizeof *prm);
    if (n < 1 || n > CS_MAX_BITS - 64) {
        seterr(err, errlen, "n_bits=%u outside [1, %u]", n, CS_MAX_BITS - 64);
        return CS_EINVAL;
    }
    if (!(qber > 0.0 && qber < 0.5)) {
        seterr(err, errlen, "qber=%g must be finite and inside (0, 0.5)", qber);
        return CS_EINVAL;
    }
    if (variant < 0 || variant >= CS_NVARIANTS) {
        seterr(err, errlen, "unknown variant id %d", variant);
        return CS_EINVAL;
    }
    if (flags & ~CS_FLAG_MASK) {
        seterr(err, errlen, "unknown flags 0x%x", flags);
        return CS_EINVAL;
    }
    prm->n = n;
    prm->variant = variant;
    prm->flags = flags;
    prm->seed = seed;
    uint32_t rows = (n + 63) / 64;
    uint32_t Lp = (flags & CS_FLAG_RANDPERM) ? n : rows * 64;
    double kd[CS_MAXPASS];
    int np = 0;
    double half = ceil(Lp / 2.0);
    switch (variant) {
    case CS_ORIGINAL: /* Brassard-Salvail 1993 */
        np = 4;
        kd[0] = ceil(0.73 / qber);
        for (int i = 1; i < np; i++) kd[i] = 2.0 * kd[i - 1];
        break;
    case CS_OPTIMIZED: { /* Martinez-Mateo et al. 2015, Cascade opt. (8): alpha = log2(1/Q) - 1/2 */
        np = 14;
        double alpha = log2(1.0 / qber) - 0.5;
        kd[0] = ldexp(1.0, (int)ceil(alpha));
        kd[1] = ldexp(1.0, (int)ceil((alpha + 12.0) / 2.0));
        kd[2] = 4096.0;
        for (int i = 3; i < np; i++) kd[i] = half;
        break;
    }
    }
    prm->npass = np;
    prm->reuse = variant == CS_OPTIMIZED;
    prm->bpi = variant == CS_OPTIMIZED;
    if (flags & CS_FLAG_REUSE) prm->reuse = 1;
    if (flags & CS_FLAG_NOREUSE) prm->reuse = 0;
    if (flags & CS_FLAG_BPI) prm->bpi = 1;
    if (flags & CS_FLAG_NOBPI) prm->bpi = 0;
    /* Scheduling of large-block bisections (see bob_promote). "original" keeps every odd block of a round
     * in flight at once, which reproduces the published efficiencies of Brassard-Salvail; the optimised
     * variants approximate the serial smallest-block-first order that their published figures assume. */
    prm->tau = variant == CS_ORIGINAL ? -1.0 : 0.1;
    prm->qmin = 1.0;
    if ((flags & CS_FLAG_BALANCED) && variant != CS_ORIGINAL) prm->tau = 0.25; /* "original" is parallel already */
    if (flags & CS_FLAG_PARALLEL) prm->tau = -1.0;
    if (flags & CS_FLAG_SERIAL) prm->tau = 0.0;
    uint64_t d = 0x5CA5CADEULL;
    for (int p = 0; p < np; p++) {
        uint32_t L = p == 0 ? n : Lp;
        uint32_t k = clampk(kd[p], L);
        prm->L[p] = L;
        prm->k[p] = k;
        prm->nb[p] = (uint32_t)(((uint64_t)L + k - 1) / k);
        prm->kshift[p] = (k & (k - 1)) ? -1 : __builtin_ctz(k);
        prm->kinv[p] = 1.0 / (double)k;
        uint64_t x = d ^ ((uint64_t)L << 32 | k);
        d = splitmix64(&x);
    }
    uint64_t x = d ^ seed ^ ((uint64_t)n << 20) ^ ((uint64_t)variant << 8) ^ (uint64_t)(flags & CS_FLAG_RANDPERM) ^
                 ((uint64_t)prm->reuse << 16) ^ ((uint64_t)prm->bpi << 17);
    prm->digest = (uint32_t)splitmix64(&x);
    return CS_OK;
}

static inline uint32_t blk_of(const cs_params *prm, int p, uint32_t idx) {
    if (prm->kshift[p] >= 0) return idx >> prm->kshift[p];
    uint32_t k = prm->k[p], q = (uint32_t)((double)idx * prm->kinv[p]);
    while ((uint64_t)q * k > idx) q--;
    while ((uint64_t)(q + 1) * k <= idx) q++;
    return q;
}

/* ------------------------------------------------------------------ permutations */

typedef struct {
    uint32_t R;      /* rows of 64 bits */
    uint32_t *sigma; /* permuted row j <- original row sigma[j] (random mode: permuted bit i <- original sigma[i]) */
    uint32_t *sinv;  /* inverse of sigma (Bob only) */
    uint8_t *rho;    /* rotation of permuted row j */
    uint8_t pi[64], piinv[64];
    int random;
} perm_t;

static void perm_free(perm_t *P) {
    free(P->sigma);
    free(P->sinv);
    free(P->rho);
    memset(P, 0, sizeof *P);
}

static int perm_invert(perm_t *P) {
    P->sinv = malloc((size_t)P->R * sizeof(uint32_t));
    if (!P->sinv) return CS_ENOMEM;
    for (uint32_t i = 0; i < P->R; i++) P->sinv[P->sigma[i]] = i;
    return CS_OK;
}

static int perm_gen(perm_t *P, const cs_params *prm, int p, int need_inv) {
    rng_t r;
    rng_seed(&r, prm->seed, (uint64_t)p);
    P->random = (prm->flags & CS_FLAG_RANDPERM) != 0;
    uint32_t m = P->random ? prm->n : (prm->n + 63) / 64;
    P->R = m;
    P->sigma = malloc((size_t)m * sizeof(uint32_t));
    if (!P->sigma) return CS_ENOMEM;
    for (uint32_t i = 0; i < m; i++) P->sigma[i] = i;
    for (uint32_t i = m - 1; i > 0; i--) { /* Fisher-Yates */
        uint32_t j = rng_below(&r, i + 1), t = P->sigma[i];
        P->sigma[i] = P->sigma[j];
        P->sigma[j] = t;
    }
    if (!P->random) {
        P->rho = malloc(m);
        if (!P->rho) return CS_ENOMEM;
        for (uint32_t i = 0; i < m; i++) P->rho[i] = (uint8_t)(rng_next(&r) >> 58);
        for (int i = 0; i < 64; i++) P->pi[i] = (uint8_t)i;
        for (int i = 63; i > 0; i--) {
            uint32_t j = rng_below(&r, (uint32_t)i + 1);
            uint8_t t = P->pi[i];
            P->pi[i] = P->pi[j];
            P->pi[j] = t;
        }
        for (int i = 0; i < 64; i++) P->piinv[P->pi[i]] = (uint8_t)i;
    }
    return need_inv ? perm_invert(P) : CS_OK;
}

/* original bit position -> permuted index */
static inline uint32_t perm_idx(const perm_t *P, uint32_t x) {
    if (P->random) return P->sinv[x];
    uint32_t j = P->sinv[x >> 6];
    return (uint32_t)P->piinv[((x & 63) + P->rho[j]) & 63] * P->R + j;
}
/* permuted index -> original bit position (may be a padding position >= n) */
static inline uint32_t perm_orig(const perm_t *P, uint32_t i) {
    if (P->random) return P->sigma[i];
    uint32_t ci = i / P->R, j = i - ci * P->R;
    return (P->sigma[j] << 6) | (((uint32_t)P->pi[ci] - P->rho[j]) & 63);
}

/* In-place transpose of a 64x64 bit matrix, row r = A[r], column 0 = MSB (Hacker's Delight 7-3). */
static void transpose64(uint64_t A[64]) {
    uint64_t m = 0x00000000FFFFFFFFULL;
    for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = (A[k] ^ (A[k | j] >> j)) & m;
            A[k] ^= t;
            A[k | j] ^= t << j;
        }
    }
}

/* dst (zeroed, L/64 + 1 words) <- src (original order) permuted. */
static void perm_apply(const perm_t *P, const cs_params *prm, const uint64_t *src, uint64_t *dst) {
    if (P->random) {
        for (uint32_t i = 0; i < prm->n; i++) {
            uint32_t x = P->sigma[i];
            if ((src[x >> 6] >> (63 - (x & 63))) & 1) dst[i >> 6] |= 1ULL << (63 - (i & 63));
        }
        return;
    }
    uint32_t R = P->R;
    uint64_t A[64];
    for (uint32_t g = 0; g * 64 < R; g++) {
        uint32_t base = g * 64, rows = R - base < 64 ? R - base : 64;
        for (uint32_t jj = 0; jj < rows; jj++) A[jj] = rotr64(src[P->sigma[base + jj]], P->rho[base + jj]);
        for (uint32_t jj = rows; jj < 64; jj++) A[jj] = 0;
        transpose64(A);
        for (int c = 0; c < 64; c++) {
            uint64_t w = A[c];
            if (!w) continue;
            uint64_t off = (uint64_t)P->piinv[c] * R + base;
            uint64_t wi = off >> 6;
            unsigned sh = (unsigned)(off & 63);
            dst[wi] |= w >> sh;
            if (sh) dst[wi + 1] |= w << (64 - sh);
        }
    }
}

/* ------------------------------------------------------------------ parity pyramid */

typedef struct {
    uint64_t *w[MAXLEV];
    uint32_t nw[MAXLEV];
    int nlev, own0;
} pyr_t;

static void pyr_free(pyr_t *Y) {
    for (int l = Y->own0 ? 0 : 1; l < Y->nlev; l++) free(Y->w[l]);
    memset(Y, 0, sizeof *Y);
}

/* Builds levels >= 1 over level 0 (which must hold nbits bits). */
static int pyr_build(pyr_t *Y, uint64_t *lv0, uint32_t nbits, int own0) {
    Y->w[0] = lv0;
    Y->nw[0] = (nbits + 63) / 64;
    Y->nlev = 1;
    Y->own0 = own0;
    while (Y->nw[Y->nlev - 1] > 1) {
        int l = Y->nlev;
        uint32_t below = Y->nw[l - 1], nw = (below + 63) / 64;
        uint64_t *w = calloc((size_t)nw + 1, sizeof(uint64_t));
        if (!w) return CS_ENOMEM;
        const uint64_t *s = Y->w[l - 1];
        for (uint32_t i = 0; i < below; i += 64) {
            uint32_t e = below - i < 64 ? below - i : 64;
            uint64_t acc = 0;
            for (uint32_t t = 0; t < e; t++) acc = (acc << 1) | par64(s[i + t]);
            w[i >> 6] = acc << (64 - e);
        }
        Y->w[l] = w;
        Y->nw[l] = nw;
        Y->nlev++;
    }
    return CS_OK;
}

/* Parity of bits [s, e) of level 0. */
static inline unsigned pyr_par(const pyr_t *Y, uint64_t s, uint64_t e) {
    unsigned r = 0;
    int l = 0;
    while (s < e) {
        uint64_t ws = s >> 6, we = (e - 1) >> 6;
        const uint64_t *w = Y->w[l];
        uint64_t ms = ~0ULL >> (s & 63), me = ~0ULL << (63 - ((e - 1) & 63));
        if (ws == we) return r ^ par64(w[ws] & ms & me);
        r ^= par64((w[ws] & ms) ^ (w[we] & me));
        s = ws + 1;
        e = we;
        l++;
    }
    return r;
}

/* Asks for the level-0 words that pyr_par(Y, s, e) reads first (e > s). */
static inline void pyr_prefetch(const pyr_t *Y, uint64_t s, uint64_t e) {
    __builtin_prefetch(&Y->w[0][s >> 6]);
    __builtin_prefetch(&Y->w[0][(e - 1) >> 6]);
}

static inline void pyr_flip(pyr_t *Y, uint64_t i) {
    for (int l = 0; l < Y->nlev; l++) {
        Y->w[l][i >> 6] ^= 1ULL << (63 - (i & 63));
        i >>= 6;
    }
}

static uint64_t *load_key(const uint8_t *key, uint32_t n) {
    uint32_t nw = (n + 63) / 64;
    uint64_t *w = calloc((size_t)nw + 1, sizeof(uint64_t));
    if (!w) return NULL;
    uint32_t nbytes = (n + 7) / 8;
    for (uint32_t i = 0; i < nw; i++) {
        uint64_t x = 0;
        uint32_t b0 = i * 8;
        if (b0 + 8 <= nbytes) {
            for (int j = 0; j < 8; j++) x = (x << 8) | key[b0 + j];
        } else {
            for (int j = 0; j < 8; j++) x = (x << 8) | (b0 + j < nbytes ? key[b0 + j] : 0);
        }
        w[i] = x;
    }
    if (n & 63) w[nw - 1] &= ~0ULL << (64 - (n & 63)); /* bits past n are zero on both sides */
    return w;
}

/* Builds the pyramid of pass p for a key in original order. */
static int pass_build(pyr_t *Y, const perm_t *P, const cs_params *prm, int p, const uint64_t *key) {
    uint64_t *w = calloc((size_t)prm->L[p] / 64 + 2, sizeof(uint64_t));
    if (!w) return CS_ENOMEM;
    perm_apply(P, prm, key, w);
    return pyr_build(Y, w, prm->L[p], 1); /* on failure Y still owns w: pyr_free releases it */
}

/* A pass of at most FEWBLK blocks (optimized Cascade's passes 3-13: two blocks of half the key each)
 * needs its pyramid only if one of its blocks is ever bisected, which at Q <= 5 % almost never happens:
 * its block parities are computed from the key without it (few_parities), and the pyramid is built
 * on the first question that needs it. Block parities and answers are the same either way. */
#define FEWBLK 8

static int is_few(const cs_params *prm, int p) {
    return p > 0 && prm->nb[p] <= FEWBLK && !(prm->flags & CS_FLAG_RANDPERM);
}

/* The block parities of a few-block pass (is_few) straight from a key in original order: permuted
 * index ci * R + j (row j, column ci) lies in blocks >= t iff ci * R + j >= t * k = lo * R + rem, so
 * row j's bits in block t are its columns [lo_t + (j < rem_t), lo_t+1 + (j < rem_t+1)). */
static void few_parities(const perm_t *P, const cs_params *prm, int p, const uint64_t *key, uint8_t *par) {
    uint32_t R = P->R, nb = prm->nb[p], lo[FEWBLK + 1], rem[FEWBLK + 1];
    uint64_t below[65]; /* below[c]: the bits of the rotated row that go to columns < c */
    below[0] = 0;
    for (int c = 0; c < 64; c++) below[c + 1] = below[c] | 1ULL << (63 - P->pi[c]);
    for (uint32_t t = 0; t <= nb; t++) {
        uint64_t pos = (uint64_t)t * prm->k[p];
        if (pos > prm->L[p]) pos = prm->L[p];
        lo[t] = (uint32_t)(pos / R);
        rem[t] = (uint32_t)(pos % R);
    }
    uint64_t acc[FEWBLK] = {0};
    for (uint32_t j = 0; j < R; j++) {
        uint64_t w = rotr64(key[P->sigma[j]], P->rho[j]);
        uint32_t s = lo[0] + (j < rem[0]);
        for (uint32_t t = 0; t < nb; t++) {
            uint32_t e = lo[t + 1] + (j < rem[t + 1]);
            acc[t] ^= w & below[e] & ~below[s];
            s = e;
        }
    }
    for (uint32_t t = 0; t < nb; t++) par[t] = (uint8_t)par64(acc[t]);
}

/* ------------------------------------------------------------------ Alice */

struct cs_alice {
    cs_params prm;
    uint64_t *key;
    pyr_t pyr[CS_MAXPASS];
    int ready[CS_MAXPASS];
    int8_t fewpar[CS_MAXPASS][FEWBLK]; /* a few-block pass's block parities (is_few), -1: not computed */
    uint64_t round, leaked, total_blocks;
    buf_t out;
    char err[160];
};

int cs_alice_new(cs_alice **out, const uint8_t *key, size_t keylen, uint32_t n, double qber, int variant,
                 uint64_t seed, int flags, char *err, size_t errlen) {
    *out = NULL;
    cs_alice *a = calloc(1, sizeof *a);
    if (!a) return CS_ENOMEM;
    int rc = cs_params_init(&a->prm, n, qber, variant, seed, flags, err, errlen);
    if (rc == CS_OK && keylen * 8 < n) {
        seterr(err, errlen, "n_bits=%u exceeds the key buffer (%zu bits)", n, keylen * 8);
        rc = CS_EINVAL;
    }
    if (rc) {
        free(a);
        return rc;
    }
    a->key = load_key(key, n);
    if (!a->key || pyr_build(&a->pyr[0], a->key, n, 0)) {
        cs_alice_free(a);
        return CS_ENOMEM;
    }
    a->ready[0] = 1;
    memset(a->fewpar, -1, sizeof a->fewpar);
    for (int p = 0; p < a->prm.npass; p++) a->total_blocks += a->prm.nb[p];
    *out = a;
    return CS_OK;
}

void cs_alice_free(cs_alice *a) {
    if (!a) return;
    for (int p = 0; p < CS_MAXPASS; p++) pyr_free(&a->pyr[p]);
    free(a->key);
    free(a->out.p);
    free(a);
}

const char *cs_alice_error(const cs_alice *a) { return a->err; }
uint64_t cs_alice_leaked(const cs_alice *a) { return a->leaked; }

static int alice_ready(cs_alice *a, int p) {
    if (a->ready[p]) return CS_OK;
    perm_t P;
    memset(&P, 0, sizeof P);
    int rc = perm_gen(&P, &a->prm, p, 0);
    if (!rc) rc = pass_build(&a->pyr[p], &P, &a->prm, p, a->key);
    perm_free(&P);
    if (rc) {
        pyr_free(&a->pyr[p]);
        return rc;
    }
    a->ready[p] = 1;
    return CS_OK;
}

/* A few-block pass's block parities, computed once (a request may ask for them again). */
static int alice_few_parities(cs_alice *a, int p, uint8_t *par) {
    if (a->fewpar[p][0] < 0) {
        perm_t P;
        memset(&P, 0, sizeof P);
        int rc = perm_gen(&P, &a->prm, p, 0);
        if (!rc) few_parities(&P, &a->prm, p, a->key, par);
        perm_free(&P);
        if (rc) return rc;
        for (uint32_t t = 0; t < a->prm.nb[p]; t++) a->fewpar[p][t] = (int8_t)par[t];
    }
    for (uint32_t t = 0; t < a->prm.nb[p]; t++) par[t] = (uint8_t)a->fewpar[p][t];
    return CS_OK;
}

/* bit writer into out buffer */
typedef struct { buf_t *b; size_t start; uint64_t nbits; uint8_t cur; } bw_t;
static inline void bw_put(bw_t *w, unsigned bit) {
    w->cur = (uint8_t)((w->cur << 1) | (bit & 1));
    if ((++w->nbits & 7) == 0) {
        buf_byte(w->b, w->cur);
        w->cur = 0;
    }
}
static inline void bw_flush(bw_t *w) {
    if (w->nbits & 7) buf_byte(w->b, (uint8_t)(w->cur << (8 - (w->nbits & 7))));
}

#define AFAIL(...) do { seterr(a->err, sizeof a->err, __VA_ARGS__); return CS_EINVAL; } while (0)

int cs_alice_handle(cs_alice *a, const uint8_t *req, size_t qlen, const uint8_t **msg, size_t *len) {
    const cs_params *prm = &a->prm;
    rd_t r;
    int rc = rd_open(&r, req, qlen, T_REQ, a->err, sizeof a->err);
    if (rc) return rc;
    uint64_t round, v, cnt;
    if (rd_varint(&r, &round)) AFAIL("malformed cascade request (round)");
    if (round != a->round) AFAIL("cascade request for round %llu, expected %llu", (unsigned long long)round,
                                 (unsigned long long)a->round);
    if (round == 0) {
        if (r.pos + 4 > r.len) AFAIL("malformed cascade request (digest)");
        uint32_t dg = (uint32_t)r.p[r.pos] | (uint32_t)r.p[r.pos + 1] << 8 | (uint32_t)r.p[r.pos + 2] << 16 |
                      (uint32_t)r.p[r.pos + 3] << 24;
        r.pos += 4;
        if (dg != prm->digest)
            AFAIL("cascade parameter mismatch between Bob and Alice (n_bits, qber, variant or seed differ)");
    }
    /* Cap the answer size: at most every top-level block once plus one parity per request byte. */
    uint64_t budget = a->total_blocks + 8 * (uint64_t)qlen, total = 0;
    a->out.len = 0;
    a->out.oom = 0;
    buf_byte(&a->out, MAGIC);
    buf_byte(&a->out, T_REP);
    buf_varint(&a->out, round);
    buf_reserve(&a->out, 10); /* room for the count, written after the bits */
    buf_t bits = {0};
    bw_t w = {&bits, 0, 0, 0};
    /* top-level sections */
    if (rd_varint(&r, &cnt)) AFAIL("malformed cascade request (sections)");
    for (uint64_t i = 0; i < cnt; i++) {
        uint64_t p, first, count;
        if (rd_varint(&r, &p) || rd_varint(&r, &first) || rd_varint(&r, &count)) {
            free(bits.p);
            AFAIL("malformed cascade request (section %llu)", (unsigned long long)i);
        }
        if (p >= (uint64_t)prm->npass || first > prm->nb[p] || count > prm->nb[p] - first || count == 0) {
            free(bits.p);
            AFAIL("cascade request section out of range (pass %llu, blocks %llu+%llu)", (unsigned long long)p,
                  (unsigned long long)first, (unsigned long long)count);
        }
        if ((total += count) > budget) {
            free(bits.p);
            AFAIL("cascade request asks for too many parities");
        }
        if (!a->ready[p] && is_few(prm, (int)p)) { /* no pyramid unless a later query needs it */
            uint8_t par[FEWBLK];
            if ((rc = alice_few_parities(a, (int)p, par))) { free(bits.p); return rc; }
            for (uint64_t b = first; b < first + count; b++) bw_put(&w, par[b]);
            continue;
        }
        if ((rc = alice_ready(a, (int)p))) { free(bits.p); return rc; }
        const pyr_t *Y = &a->pyr[p];
        uint64_t k = prm->k[p], L = prm->L[p];
        for (uint64_t b = first; b < first + count; b++) {
            uint64_t s = b * k, e = s + k < L ? s + k : L;
            bw_put(&w, pyr_par(Y, s, e));
        }
    }
    /* range queries: global coordinate g = pass << 32 | start, zigzag delta coded, then length */
    if (rd_varint(&r, &cnt)) { free(bits.p); AFAIL("malformed cascade request (queries)"); }
    if (cnt > r.len - r.pos || (total += cnt) > budget) {
        free(bits.p);
        AFAIL("cascade request query count %llu inconsistent with its size", (unsigned long long)cnt);
    }
    /* Queries are decoded QCHUNK at a time and the words they read prefetched, then answered: their
     * words lie at random places of megabyte-sized pyramids, so answering them as decoded waits for
     * one cache miss after another (several blocks side by side on a link overflow the cache). */
    uint64_t g = 0;
    struct { const pyr_t *y; uint64_t s, e; } qb[QCHUNK];
    for (uint64_t i = 0; i < cnt;) {
        size_t m = 0;
        for (; m < QCHUNK && i < cnt; m++, i++) {
            uint64_t d, ln;
            if (rd_varint(&r, &d) || rd_varint(&r, &ln)) {
                free(bits.p);
                AFAIL("malformed cascade request (query %llu)", (unsigned long long)i);
            }
            g += (d & 1) ? ~(d >> 1) : (d >> 1);
            uint64_t p = g >> 32, s = g & 0xFFFFFFFFULL;
            if (p >= (uint64_t)prm->npass || ln == 0 || s > prm->L[p] || ln > prm->L[p] - s) {
                free(bits.p);
                AFAIL("cascade query out of range (pass %llu, start %llu, length %llu)", (unsigned long long)p,
                      (unsigned long long)s, (unsigned long long)ln);
            }
            if ((rc = alice_ready(a, (int)p))) { free(bits.p); return rc; }
            qb[m].y = &a->pyr[p];
            qb[m].s = s;
            qb[m].e = s + ln;
            pyr_prefetch(qb[m].y, s, s + ln);
        }
        for (size_t j = 0; j < m; j++) bw_put(&w, pyr_par(qb[j].y, qb[j].s, qb[j].e));
    }
    if (r.pos != r.len) { free(bits.p); AFAIL("trailing bytes in cascade request"); }
    (void)v;
    bw_flush(&w);
    buf_varint(&a->out, w.nbits);
    buf_reserve(&a->out, bits.len + 4);
    if (!a->out.oom && bits.len) {
        memcpy(a->out.p + a->out.len, bits.p, bits.len);
        a->out.len += bits.len;
    }
    int oom = bits.oom;
    free(bits.p);
    buf_seal(&a->out);
    if (a->out.oom || oom) return CS_ENOMEM;
    a->round++;
    a->leaked += w.nbits;
    *msg = a->out.p;
    *len = a->out.len;
    return CS_OK;
}

/* ------------------------------------------------------------------ Bob */

enum { F_ODD = 1, F_SCHED = 2, F_APAR = 4 }; /* per block: relative parity odd, scheduled/bisecting, Alice's parity */
enum { S_ADV = 0, S_NEEDQ = 1, S_DONE = 2 };

typedef struct {
    uint32_t s, len, blk;
    int32_t tn; /* node of the block's known-parity tree (reuse), or -1 */
    uint8_t pass, apar, state, has_q, qpar;
} bis_t;

/* Known-parity tree of a block: node = bisection sub-range; lpar = Alice's parity of its left half. */
typedef struct { int32_t child[2]; uint8_t known, lpar; } tnode_t;

typedef struct { uint32_t *v; size_t head, len, cap; } fifo_t;

struct cs_bob {
    cs_params prm;
    uint64_t *key;
    size_t keybytes;
    pyr_t pyr[CS_MAXPASS];
    perm_t perm[CS_MAXPASS];
    uint8_t *flags[CS_MAXPASS];
    int32_t *root[CS_MAXPASS];
    fifo_t fifo[CS_MAXPASS];     /* odd blocks waiting for a bisection slot */
    uint64_t inprog[CS_MAXPASS]; /* bisections in the list, per pass */
    tnode_t *tn;
    size_t ntn, captn;
    bis_t *bis;
    size_t nbis, capbis;
    uint32_t *pend;
    size_t npend, cappend;
    int cur_pass, started, done, failed, top_pending;
    int split;        /* the pass whose blocks Bob halves (balanced schedule), or -1 */
    uint32_t split_k; /* that pass's block size at Alice's end (the parameters' k) */
    uint32_t split_q; /* round 0's range queries there: the left halves of Alice's blocks that Bob halves */
    uint64_t round, leaked, uses, ncorr, steps, max_steps;
    buf_t out;
    char err[160];
};

const char *cs_bob_error(const cs_bob *b) { return b->err; }
uint64_t cs_bob_leaked(const cs_bob *b) { return b->leaked; }
uint64_t cs_bob_channel_uses(const cs_bob *b) { return b->uses; }
uint64_t cs_bob_corrections(const cs_bob *b) { return b->ncorr; }
int cs_bob_done(const cs_bob *b) { return b->done; }
int cs_bob_started(const cs_bob *b) { return b->started; }
const cs_params *cs_bob_params(const cs_bob *b) { return &b->prm; }

/* Balanced schedule, optimized variant: Bob halves the blocks of pass 1. Alice keeps the parameters'
 * sizes (and the digest is unchanged): round 0 asks her, beside her block parities, the parity of each
 * block's left half, which gives both halves'. Pass 1's blocks of 2^ceil((alpha+12)/2) bits hold several
 * errors that pass 0 left (about 5 at 1 %) and start long chains of cascading corrections; half the size
 * takes a third of serial's round trips for ~1 % more leakage (the sweep in cascade.py). */
static void bob_split(cs_bob *b) {
    cs_params *prm = &b->prm;
    b->split = -1;
    if (!(prm->flags & CS_FLAG_BALANCED) || prm->variant == CS_ORIGINAL || prm->npass < 2) return;
    uint32_t k = prm->k[1], L = prm->L[1];
    if (k < 2 || (k & 1) || L <= k / 2) return;
    b->split = 1;
    b->split_k = k;
    k /= 2;
    prm->k[1] = k;
    prm->nb[1] = (uint32_t)(((uint64_t)L + k - 1) / k);
    prm->kshift[1] = (k & (k - 1)) ? -1 : __builtin_ctz(k);
    prm->kinv[1] = 1.0 / (double)k;
    /* every block of Alice's but a last one of at most k bits has two halves */
    b->split_q = prm->nb[1] - (uint32_t)(((uint64_t)L + b->split_k - 1) / b->split_k);
}

/* How many of Alice's blocks of pass p round 0 asks (block parity inference spares the last of p >= 1). */
static uint32_t top_asked(const cs_bob *b, int p) {
    uint32_t nb = p == b->split ? b->prm.nb[p] - b->split_q : b->prm.nb[p];
    return nb - ((b->prm.bpi && p > 0) ? 1 : 0);
}

int cs_bob_new(cs_bob **out, const uint8_t *key, size_t keylen, uint32_t n, double qber, int variant, uint64_t seed,
               int flags, char *err, size_t errlen) {
    *out = NULL;
    cs_bob *b = calloc(1, sizeof *b);
    if (!b) return CS_ENOMEM;
    int rc = cs_params_init(&b->prm, n, qber, variant, seed, flags, err, errlen);
    if (rc == CS_OK && keylen * 8 < n) {
        seterr(err, errlen, "n_bits=%u exceeds the key buffer (%zu bits)", n, keylen * 8);
        rc = CS_EINVAL;
    }
    if (rc) {
        free(b);
        return rc;
    }
    bob_split(b);
    b->keybytes = (n + 7) / 8;
    b->key = load_key(key, n);
    if (!b->key || pyr_build(&b->pyr[0], b->key, n, 0)) {
        cs_bob_free(b);
        return CS_ENOMEM;
    }
    for (int p = 0; p < b->prm.npass; p++) {
        b->flags[p] = calloc(b->prm.nb[p], 1);
        if (!b->flags[p]) {
            cs_bob_free(b);
            return CS_ENOMEM;
        }
    }
    b->cur_pass = -1;
    /* Loop guard against inconsistent (forged) parities: honest runs stay far below this. */
    b->max_steps = 64ULL * ((uint64_t)n + 64) * (uint64_t)b->prm.npass;
    *out = b;
    return CS_OK;
}

void cs_bob_free(cs_bob *b) {
    if (!b) return;
    for (int p = 0; p < CS_MAXPASS; p++) {
        pyr_free(&b->pyr[p]);
        perm_free(&b->perm[p]);
        free(b->flags[p]);
        free(b->root[p]);
        free(b->fifo[p].v);
    }
    free(b->key);
    free(b->tn);
    free(b->bis);
    free(b->pend);
    free(b->out.p);
    free(b);
}

void cs_bob_corrected(const cs_bob *b, uint8_t *out, size_t outlen) {
    memset(out, 0, outlen);
    for (size_t i = 0; i < b->keybytes && i < outlen; i++) out[i] = (uint8_t)(b->key[i >> 3] >> (56 - 8 * (i & 7)));
}

#define BFAIL(...) do { seterr(b->err, sizeof b->err, __VA_ARGS__); b->failed = 1; return CS_EINVAL; } while (0)

static int32_t tn_new(cs_bob *b) {
    if (b->ntn == b->captn) {
        size_t nc = b->captn ? 2 * b->captn : 4096;
        if (nc > 0x7FFFFFFF) return -1;
        tnode_t *q = realloc(b->tn, nc * sizeof *q);
        if (!q) return -1;
        b->tn = q;
        b->captn = nc;
    }
    tnode_t *t = &b->tn[b->ntn];
    t->child[0] = t->child[1] = -1;
    t->known = t->lpar = 0;
    return (int32_t)b->ntn++;
}

/* Starts a bisection of block blk at its root. */
static int bob_activate(cs_bob *b, int p, uint32_t blk) {
    if (b->nbis == b->capbis) {
        size_t nc = b->capbis ? 2 * b->capbis : 1024;
        bis_t *q = realloc(b->bis, nc * sizeof *q);
        if (!q) return CS_ENOMEM;
        b->bis = q;
        b->capbis = nc;
    }
    int32_t tn = -1;
    if (b->prm.reuse) {
        if (!b->root[p]) {
            b->root[p] = malloc((size_t)b->prm.nb[p] * sizeof(int32_t));
            if (!b->root[p]) return CS_ENOMEM;
            memset(b->root[p], 0xFF, (size_t)b->prm.nb[p] * sizeof(int32_t));
        }
        if (b->root[p][blk] < 0 && (b->root[p][blk] = tn_new(b)) < 0) return CS_ENOMEM;
        tn = b->root[p][blk];
    }
    if (!b->pyr[p].nlev && pass_build(&b->pyr[p], &b->perm[p], &b->prm, p, b->key)) return CS_ENOMEM;
    uint32_t k = b->prm.k[p], L = b->prm.L[p], s = blk * k;
    bis_t *x = &b->bis[b->nbis++];
    x->s = s;
    x->len = L - s < k ? L - s : k;
    x->blk = blk;
    x->tn = tn;
    x->pass = (uint8_t)p;
    x->apar = (b->flags[p][blk] & F_APAR) ? 1 : 0;
    x->state = S_ADV;
    x->has_q = x->qpar = 0;
    b->flags[p][blk] |= F_SCHED;
    b->inprog[p]++;
    return CS_OK;
}

/* An odd block needs a bisection: pass 0 blocks (and every block under the parallel policy) start at
 * once; larger blocks queue for a slot so that cheaper small-block bisections can fix them first. */
static int bob_schedule(cs_bob *b, int p, uint32_t blk) {
    /* A block bisected before may be fixable from parities already known: try that at once (it is free). */
    if (p == 0 || b->prm.tau < 0 || (b->root[p] && b->root[p][blk] >= 0)) return bob_activate(b, p, blk);
    fifo_t *f = &b->fifo[p];
    if (f->head + f->len == f->cap) {
        if (f->head) {
            memmove(f->v, f->v + f->head, f->len * sizeof *f->v);
            f->head = 0;
        }
        if (f->len == f->cap) {
            size_t nc = f->cap ? 2 * f->cap : 256;
            uint32_t *q = realloc(f->v, nc * sizeof *q);
            if (!q) return CS_ENOMEM;
            f->v = q;
            f->cap = nc;
        }
    }
    f->v[f->head + f->len++] = blk;
    b->flags[p][blk] |= F_SCHED;
    return CS_OK;
}

static void bob_done(cs_bob *b, bis_t *x) {
    x->state = S_DONE;
    b->inprog[x->pass]--;
    b->flags[x->pass][x->blk] &= (uint8_t)~F_SCHED;
}

/* Bob flips bit x (original order): every processed pass sees it; blocks turning odd get scheduled. */
static int bob_correct(cs_bob *b, uint32_t x) {
    if (x >= b->prm.n || ++b->ncorr > b->prm.n) BFAIL("cascade reached an impossible state (inconsistent parities)");
    for (int p = 0; p <= b->cur_pass; p++) {
        if (p > 0 && !b->perm[p].sinv && perm_invert(&b->perm[p])) return CS_ENOMEM; /* a few-block pass's */
        uint32_t idx = p == 0 ? x : perm_idx(&b->perm[p], x);
        if (b->pyr[p].nlev) pyr_flip(&b->pyr[p], idx); /* a few-block pass's is built from the key when needed */
        uint32_t blk = blk_of(&b->prm, p, idx);
        uint8_t f = (b->flags[p][blk] ^= F_ODD);
        if ((f & (F_ODD | F_SCHED)) == F_ODD && bob_schedule(b, p, blk)) return CS_ENOMEM;
    }
    return CS_OK;
}

/* Walks bisection i down as far as known parities allow. Returns 1 if a bit was corrected, 0 if not, <0 on error. */
static int bob_advance(cs_bob *b, size_t i) {
    bis_t *x = &b->bis[i];
    int p = x->pass;
    const pyr_t *Y = &b->pyr[p];
    if (++b->steps > b->max_steps) BFAIL("cascade did not converge (inconsistent parities)");
    unsigned bp = pyr_par(Y, x->s, (uint64_t)x->s + x->len);
    if (!((bp ^ x->apar) & 1)) { /* no longer odd: a concurrent correction resolved it */
        bob_done(b, x);
        if (b->flags[p][x->blk] & F_ODD) return bob_activate(b, p, x->blk) ? CS_ENOMEM : 0; /* keeps its slot */
        return 0;
    }
    for (;;) {
        if (x->len == 1) {
            uint32_t pos = p == 0 ? x->s : perm_orig(&b->perm[p], x->s);
            bob_done(b, x);
            int rc = bob_correct(b, pos); /* may toggle this block back to odd and reschedule it */
            return rc ? rc : 1;
        }
        uint32_t left = x->len - x->len / 2;
        unsigned lp;
        if (x->has_q) {
            lp = x->qpar;
            x->has_q = 0;
        } else if (x->tn >= 0 && b->tn[x->tn].known) {
            lp = b->tn[x->tn].lpar; /* disclosed earlier: no new question */
        } else {
            x->state = S_NEEDQ;
            return 0;
        }
        if (++b->steps > b->max_steps) BFAIL("cascade did not converge (inconsistent parities)");
        unsigned bl = pyr_par(Y, x->s, (uint64_t)x->s + left), c;
        if ((bl ^ lp) & 1) {
            c = 0;
            x->len = left;
            x->apar = (uint8_t)lp;
            bp = bl;
        } else {
            c = 1;
            x->s += left;
            x->len -= left;
            x->apar ^= (uint8_t)lp;
            bp ^= bl;
        }
        if (x->tn >= 0) {
            int32_t ch = b->tn[x->tn].child[c];
            if (ch < 0 && x->len > 1) {
                if ((ch = tn_new(b)) < 0) return CS_ENOMEM;
                b->tn[x->tn].child[c] = ch;
            }
            x->tn = ch;
        }
    }
}

static int bob_start_pass(cs_bob *b, int p) {
    const cs_params *prm = &b->prm;
    uint8_t few[FEWBLK] = {0};
    if (p > 0) {
        /* a few-block pass: its inverse at its first correction (bob_correct), its pyramid at its
         * first bisection (bob_activate) */
        int lazy = is_few(prm, p);
        int rc = perm_gen(&b->perm[p], prm, p, !lazy);
        if (!rc && lazy)
            few_parities(&b->perm[p], prm, p, b->key, few);
        else if (!rc)
            rc = pass_build(&b->pyr[p], &b->perm[p], prm, p, b->key);
        if (rc) return rc;
    }
    b->cur_pass = p;
    const pyr_t *Y = &b->pyr[p];
    uint64_t k = prm->k[p], L = prm->L[p];
    for (uint32_t blk = 0; blk < prm->nb[p]; blk++) {
        uint64_t s = (uint64_t)blk * k, e = s + k < L ? s + k : L;
        unsigned par = Y->nlev ? pyr_par(Y, s, e) : few[blk];
        if (par ^ ((b->flags[p][blk] & F_APAR) ? 1 : 0)) {
            b->flags[p][blk] |= F_ODD;
            if (bob_schedule(b, p, blk)) return CS_ENOMEM;
        }
    }
    return CS_OK;
}

/* How many bisections of pass p >= 1 may be in flight while `below` bisections of smaller passes are pending. */
static uint64_t bob_quota(const cs_bob *b, int p, uint64_t below) {
    double cap = b->prm.tau * (double)b->prm.nb[p];
    if (below) return cap > (double)below ? (uint64_t)(cap - (double)below) : 0;
    return cap > b->prm.qmin ? (uint64_t)cap : (uint64_t)b->prm.qmin;
}

/* Moves queued blocks into bisection while the pass's quota allows. Sets *promoted if any started. */
static int bob_promote(cs_bob *b, int *promoted) {
    uint64_t below = b->inprog[0] + b->fifo[0].len;
    *promoted = 0;
    for (int p = 1; p <= b->cur_pass; p++) {
        uint64_t quota = bob_quota(b, p, below);
        fifo_t *f = &b->fifo[p];
        while (b->inprog[p] < quota && f->len) {
            uint32_t blk = f->v[f->head++];
            f->len--;
            if (!f->len) f->head = 0;
            if (b->flags[p][blk] & F_ODD) {
                if (bob_activate(b, p, blk)) return CS_ENOMEM;
                *promoted = 1;
            } else {
                b->flags[p][blk] &= (uint8_t)~F_SCHED; /* fixed for free while it waited */
            }
        }
        below += b->inprog[p] + f->len;
    }
    return CS_OK;
}

/* Advances everything locally until stable; then either emits the next request or finishes. */
static int bob_run(cs_bob *b, const uint8_t **msg, size_t *len) {
    for (;;) {
        int changed;
        do {
            changed = 0;
            for (size_t i = 0; i < b->nbis; i++) {
                if (b->bis[i].state == S_DONE) continue;
                int rc = bob_advance(b, i);
                if (rc < 0) return rc;
                if (rc > 0) changed = 1;
            }
            size_t j = 0; /* compact finished bisections away */
            for (size_t i = 0; i < b->nbis; i++)
                if (b->bis[i].state != S_DONE) b->bis[j++] = b->bis[i];
            b->nbis = j;
            if (!changed && b->prm.tau >= 0) {
                int rc = bob_promote(b, &changed);
                if (rc) return rc;
            }
        } while (changed);
        if (b->nbis) break;
        if (b->cur_pass + 1 >= b->prm.npass) {
            b->done = 1;
            *msg = NULL;
            *len = 0;
            return CS_OK;
        }
        int rc = bob_start_pass(b, b->cur_pass + 1);
        if (rc) return rc;
    }
    if (b->cappend < b->nbis) {
        uint32_t *q = realloc(b->pend, b->nbis * sizeof *q);
        if (!q) return CS_ENOMEM;
        b->pend = q;
        b->cappend = b->nbis;
    }
    buf_t *o = &b->out;
    o->len = 0;
    o->oom = 0;
    buf_byte(o, MAGIC);
    buf_byte(o, T_REQ);
    buf_varint(o, b->round);
    buf_varint(o, 0); /* no top-level sections after round 0 */
    /* In-flight large-block bisections also pause while smaller ones run (oldest keep their slot). */
    uint64_t quota[CS_MAXPASS], below = 0;
    for (int p = 0; p < b->prm.npass; p++) {
        quota[p] = (p == 0 || b->prm.tau < 0) ? UINT64_MAX : bob_quota(b, p, below);
        below += b->inprog[p] + b->fifo[p].len;
    }
    size_t nq = 0;
    for (size_t i = 0; i < b->nbis; i++)
        if (b->bis[i].state == S_NEEDQ && quota[b->bis[i].pass]) {
            quota[b->bis[i].pass]--;
            b->pend[nq++] = (uint32_t)i;
        }
    buf_varint(o, nq);
    uint64_t g = 0;
    for (size_t q = 0; q < nq; q++) {
        const bis_t *x = &b->bis[b->pend[q]];
        uint64_t ng = (uint64_t)x->pass << 32 | x->s;
        int64_t d = (int64_t)(ng - g);
        buf_varint(o, d >= 0 ? (uint64_t)d << 1 : ((~(uint64_t)d) << 1) | 1);
        buf_varint(o, x->len - x->len / 2);
        g = ng;
    }
    buf_seal(o);
    if (o->oom) return CS_ENOMEM;
    b->npend = nq;
    b->round++;
    b->uses++;
    *msg = o->p;
    *len = o->len;
    return CS_OK;
}

int cs_bob_start(cs_bob *b, const uint8_t **msg, size_t *len) {
    if (b->failed) BFAIL("cascade Bob is in a failed state");
    if (b->started) {
        seterr(b->err, sizeof b->err, "cascade Bob already started");
        return CS_EINVAL;
    }
    const cs_params *prm = &b->prm;
    buf_t *o = &b->out;
    o->len = 0;
    buf_byte(o, MAGIC);
    buf_byte(o, T_REQ);
    buf_varint(o, 0);
    buf_u32le(o, prm->digest);
    /* Round 0 asks every top-level block parity of every pass at once: Alice's parities do not depend on
     * Bob's progress, so this saves one round trip per pass without disclosing anything extra. */
    uint64_t nsec = 0;
    for (int p = 0; p < prm->npass; p++) nsec += top_asked(b, p) > 0;
    buf_varint(o, nsec);
    for (int p = 0; p < prm->npass; p++) {
        uint32_t cnt = top_asked(b, p);
        if (!cnt) continue;
        buf_varint(o, (uint64_t)p);
        buf_varint(o, 0);
        buf_varint(o, cnt);
    }
    uint32_t nq = b->split >= 0 ? b->split_q : 0;
    buf_varint(o, nq);
    for (uint32_t j = 0; j < nq; j++) { /* the left half of Alice's block j */
        uint64_t delta = j ? b->split_k : (uint64_t)b->split << 32; /* from the last start (0 before the first) */
        buf_varint(o, delta << 1);                                   /* zigzag of a positive delta */
        buf_varint(o, b->split_k / 2);
    }
    buf_seal(o);
    if (o->oom) return CS_ENOMEM;
    b->started = 1;
    b->top_pending = 1;
    b->round = 1;
    b->uses = 1;
    *msg = o->p;
    *len = o->len;
    return CS_OK;
}

/* Round 0's reply, split pass: Alice's block j (its parity in flags[j] so far) becomes Bob's blocks 2j
 * and 2j + 1, from the parity of its left half (reply bit `bi` + j). Descending j reads every flag
 * before it is written. */
static void bob_split_parities(cs_bob *b, const uint8_t *bits, uint64_t bi) {
    uint8_t *f = b->flags[b->split];
    for (uint32_t j = b->prm.nb[b->split] - b->split_q; j-- > 0;) {
        uint8_t whole = f[j] & F_APAR;
        if (j < b->split_q) {
            uint64_t q = bi + j;
            uint8_t left = ((bits[q >> 3] >> (7 - (q & 7))) & 1) ? F_APAR : 0;
            f[2 * j] = left;
            f[2 * j + 1] = left ^ whole;
        } else {
            f[2 * j] = whole;
        }
    }
}

int cs_bob_handle(cs_bob *b, const uint8_t *reply, size_t rlen, const uint8_t **msg, size_t *len) {
    const cs_params *prm = &b->prm;
    if (b->failed) BFAIL("cascade Bob is in a failed state");
    if (!b->started || b->done) {
        seterr(b->err, sizeof b->err, b->done ? "cascade already finished: no reply expected"
                                              : "cascade not started: call start() first");
        return CS_EINVAL;
    }
    rd_t r;
    int rc = rd_open(&r, reply, rlen, T_REP, b->err, sizeof b->err);
    if (rc) return rc;
    uint64_t round, nbits;
    if (rd_varint(&r, &round) || rd_varint(&r, &nbits)) {
        seterr(b->err, sizeof b->err, "malformed cascade reply header");
        return CS_EINVAL;
    }
    if (round + 1 != b->round) {
        seterr(b->err, sizeof b->err, "cascade reply for round %llu, expected %llu", (unsigned long long)round,
               (unsigned long long)(b->round - 1));
        return CS_EINVAL;
    }
    uint64_t want = 0;
    if (b->top_pending) {
        for (int p = 0; p < prm->npass; p++) want += top_asked(b, p);
        if (b->split >= 0) want += b->split_q;
    } else
        want = b->npend;
    if (nbits != want || r.len - r.pos != (want + 7) / 8) {
        seterr(b->err, sizeof b->err, "cascade reply carries %llu parities in %zu bytes, expected %llu",
               (unsigned long long)nbits, r.len - r.pos, (unsigned long long)want);
        return CS_EINVAL;
    }
    const uint8_t *bits = r.p + r.pos;
    /* validated: from here on the state changes */
    b->leaked += nbits;
    if (b->top_pending) {
        uint64_t bi = 0;
        unsigned total = 0;
        for (int p = 0; p < prm->npass; p++) {
            uint32_t cnt = top_asked(b, p), nb = cnt + ((prm->bpi && p > 0) ? 1 : 0); /* Alice's blocks */
            unsigned x = 0;
            for (uint32_t blk = 0; blk < cnt; blk++, bi++) {
                unsigned v = (bits[bi >> 3] >> (7 - (bi & 7))) & 1;
                x ^= v;
                if (v) b->flags[p][blk] |= F_APAR;
            }
            if (p == 0)
                total = x;
            else if (cnt < nb && (total ^ x)) /* block parity inference: all blocks XOR to the total */
                b->flags[p][nb - 1] |= F_APAR;
        }
        if (b->split >= 0) bob_split_parities(b, bits, bi);
        b->top_pending = 0;
    } else {
        for (size_t q = 0; q < b->npend; q++) {
            bis_t *x = &b->bis[b->pend[q]];
            unsigned v = (bits[q >> 3] >> (7 - (q & 7))) & 1;
            x->has_q = 1;
            x->qpar = (uint8_t)v;
            x->state = S_ADV;
            if (x->tn >= 0) {
                b->tn[x->tn].known = 1;
                b->tn[x->tn].lpar = (uint8_t)v;
            }
        }
        b->npend = 0;
    }
    rc = bob_run(b, msg, len);
    if (rc == CS_ENOMEM) b->failed = 1;
    return rc;
}

/* ------------------------------------------------------------------ inspection */

size_t cs_seal(const uint8_t *body, size_t len, uint8_t *out) {
    memcpy(out, body, len);
    uint32_t c = checksum(body, len);
    for (int i = 0; i < 4; i++) out[len + i] = (uint8_t)(c >> (8 * i));
    return len + 4;
}

int cs_inspect(const uint8_t *m, size_t len, int *kind, uint64_t *round, uint64_t *parities, char *err,
               size_t errlen) {
    rd_t r;
    int rc = rd_open(&r, m, len, 0, err, errlen);
    if (rc) return rc;
    if (m[1] != T_REQ && m[1] != T_REP) {
        seterr(err, errlen, "unknown cascade message type 0x%02x", m[1]);
        return CS_EINVAL;
    }
    *kind = m[1] == T_REQ ? 1 : 2;
    if (rd_varint(&r, round)) goto bad;
    if (*kind == 2) return rd_varint(&r, parities) ? (seterr(err, errlen, "malformed reply"), CS_EINVAL) : CS_OK;
    if (*round == 0) r.pos += 4;
    uint64_t cnt, total = 0, a, c, d;
    if (r.pos > r.len || rd_varint(&r, &cnt)) goto bad;
    for (uint64_t i = 0; i < cnt; i++) {
        if (rd_varint(&r, &a) || rd_varint(&r, &d) || rd_varint(&r, &c)) goto bad;
        total += c;
    }
    if (rd_varint(&r, &cnt) || cnt > r.len) goto bad;
    for (uint64_t i = 0; i < cnt; i++)
        if (rd_varint(&r, &a) || rd_varint(&r, &d)) goto bad;
    *parities = total + cnt;
    return CS_OK;
bad:
    seterr(err, errlen, "malformed cascade request");
    return CS_EINVAL;
}
