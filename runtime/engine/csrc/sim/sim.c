/* Decoy-state BB84 link simulated at the level of detection events.
 *
 * Only detected pulse slots are materialised.  Every slot is detected independently with
 * probability P = sum_k p_k Q_k (Q_k the gain of intensity class k), so the gaps between
 * detections are geometric: we draw them directly, skipping the ~99 % of slots that never
 * click, and after each click the receiver stays blind for `dead` slots (common-mode dead time).
 * Given a click, the slot's intensity class is k with probability p_k Q_k / P.
 *
 * Both ends derive their own view of the same events from the block seed with counter-based
 * hashes of (seed, slot):
 *   class and Alice's bit/basis  -> a hash stream Alice can evaluate for any announced slot;
 *   Bob's basis, click outcome, double-click bit, Eve -> channel streams only Bob's side uses.
 * Bob's view (slots as Rice-coded gaps, bases, bits) is what his detector produced; Alice's
 * view is computed from the slots Bob announces, so no photons and no shared memory. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t u64;

#include "prng.h"

typedef struct {
    hkey alice, chan, eve;
    u64 gap[4]; /* xoshiro256** state for the sequential gap stream */
} keys_t;

static void derive_keys(keys_t *K, u64 seed) {
    u64 s = seed;
    u64 v[12];
    for (int i = 0; i < 12; i++) { /* SplitMix64 sequence */
        s += GOLDEN;
        v[i] = mix64(s);
    }
    K->alice = (hkey){v[2], v[3]};
    K->chan = (hkey){v[4], v[5]};
    K->eve = (hkey){v[6], v[7]};
    memcpy(K->gap, v + 8, sizeof K->gap);
}

static inline u64 rotl(u64 x, int k) { return (x << k) | (x >> (64 - k)); }
static inline u64 xoshiro(u64 *s) {
    u64 r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* ---- link parameters --------------------------------------------------------------------- */

static u64 prob_threshold(double p) { /* P[hash < thr] = p */
    if (!(p > 0)) return 0;
    if (p >= 1) return UINT64_MAX;
    return (u64)ldexp(p, 64);
}

/* P[(h >> 11) < thr] = p for 53 random bits: the same test as (h >> 11) * 2^-53 < p, in integers */
static u64 prob_threshold53(double p) {
    if (!(p > 0)) return 0;
    if (p >= 1) return 1ULL << 53;
    return (u64)ceil(ldexp(p, 53));
}

typedef struct {
    u64 seed, n_pulses, dead;
    double p_det;
    u64 cls0, cls1;  /* class thresholds on the hash's top 62 bits: class 0 below cls0, 1 below cls1 */
    u64 perr[3];     /* error thresholds (53-bit) per class */
    u64 eve;         /* intercept-resend threshold (53-bit); 0: no eavesdropper */
} link_t;

static void set_classes(link_t *L, double c0, double c1) {
    L->cls0 = prob_threshold(c0) >> 2;
    L->cls1 = prob_threshold(c1) >> 2;
}

/* One hash gives Alice's bit (bit 0), basis (bit 1) and, from the other 62 bits, the class
 * (branch-free: cls0 <= cls1). */
static inline int class_of(const link_t *L, u64 a) { return (int)((a >> 2) >= L->cls0) + (int)((a >> 2) >= L->cls1); }

/* Bob's bit for a click at `slot` given Alice's hash a and the channel hash c, without branches
 * on random data (a basis mismatch is a coin flip, so a branch would mispredict half the time):
 * wrong basis -> random bit; else Eve (if any, on her fraction of pulses, in the other basis)
 * randomises it; else Alice's bit, flipped with the class's error probability. */
static inline int bob_bit(const keys_t *K, const link_t *L, u64 slot, u64 a, u64 c, int cls) {
    u64 random = ((a >> 1) ^ c) & 1; /* Alice's basis (bit 1) differs from Bob's (bit 0) */
    if (L->eve) {
        u64 v = hsh(K->eve, slot);
        random |= (u64)((v >> 11) < L->eve) & ((v ^ a) >> 1 & 1);
    }
    int err = (c >> 11) < L->perr[cls];
    int faithful = (int)(a & 1) ^ err;
    int rnd = (int)(c >> 1 & 1);
    return faithful ^ ((faithful ^ rnd) & (int)random); /* a select the compiler cannot turn into a branch */
}

/* ---- the sequential gap stream --------------------------------------------------------------- */

/* ln(x) for x in [2^-52, 1], relative error < 1e-13: x = z 2^k with z in [sqrt(1/2), sqrt(2)) (the
 * split of musl's log, in unsigned arithmetic), ln z = 2 atanh(s), s = (z - 1) / (z + 1), |s| < 0.172,
 * by its odd series to s^17. Integer and floating-point operations only, no branches and no libm, so
 * that a batch of them vectorises (glibc's log was a quarter of the simulator's time). */
static inline double log_unit(double x) {
    const u64 off = 0x3FE6A09E667F3BCDULL, bias = 0x400ULL << 52; /* bits of sqrt(1/2); keeps k >= 0 */
    u64 ix;
    memcpy(&ix, &x, sizeof ix);
    u64 t = ix - off + bias;
    u64 iz = ix - ((t & 0xFFF0000000000000ULL) - bias); /* x / 2^k */
    u64 kbits = (t >> 52) | 0x4330000000000000ULL;      /* 2^52 + k + 0x400 */
    double z, kd;
    memcpy(&z, &iz, sizeof z);
    memcpy(&kd, &kbits, sizeof kd);
    double k = kd - (0x1.0p52 + 1024.0);
    double s = (z - 1.0) / (z + 1.0), s2 = s * s;
    double p = 1.0 / 17;
    p = p * s2 + 1.0 / 15;
    p = p * s2 + 1.0 / 13;
    p = p * s2 + 1.0 / 11;
    p = p * s2 + 1.0 / 9;
    p = p * s2 + 1.0 / 7;
    p = p * s2 + 1.0 / 5;
    p = p * s2 + 1.0 / 3;
    return k * 0x1.62e42fefa3800p-1 + (k * 0x1.ef35793c76730p-45 + 2.0 * s * (1.0 + s2 * p));
}

#define GAP_BATCH 64
/* The next GAP_BATCH geometric gaps (as doubles, >= 0, not yet floored) of click probability P:
 * inverse transform floor(ln u / ln(1 - P)) with u = 2 - [1, 2) in (0, 1] from xoshiro's top 52 bits. */
static void fill_gaps(u64 *state, double inv, double *out) {
    u64 r[GAP_BATCH];
    for (int i = 0; i < GAP_BATCH; i++) r[i] = xoshiro(state);
    for (int i = 0; i < GAP_BATCH; i++) {
        u64 b = (r[i] >> 12) | 0x3FF0000000000000ULL;
        double d;
        memcpy(&d, &b, sizeof d);
        out[i] = log_unit(2.0 - d) * inv;
    }
}

/* Iterate over detections: calls visit(ctx, slot) in increasing slot order. */
typedef int (*visit_fn)(void *ctx, u64 slot);
/* always inlined, so each caller gets its own loop with `visit` inlined too */
static inline __attribute__((always_inline)) int walk(keys_t *K, const link_t *L, visit_fn visit, void *ctx) {
    if (!(L->p_det > 0) || L->n_pulses == 0) return 0;
    double inv = L->p_det >= 1 ? 0.0 : 1.0 / log1p(-L->p_det);
    double gaps[GAP_BATCH];
    int used = GAP_BATCH;
    u64 next = 0; /* first slot at which the detector is armed */
    while (next < L->n_pulses) {
        if (used == GAP_BATCH) {
            fill_gaps(K->gap, inv, gaps);
            used = 0;
        }
        double g = gaps[used++]; /* >= 0: the floor below is the truncation */
        if (g >= (double)(L->n_pulses - next)) break;
        u64 slot = next + (u64)g;
        int rc = visit(ctx, slot);
        if (rc) return rc;
        if (L->n_pulses - slot <= 1 + L->dead) break;
        next = slot + 1 + L->dead;
    }
    return 0;
}

/* ---- growable packed bit writer (MSB first, whole 64-bit words) ------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap, nbytes; /* bytes written */
    u64 acc;            /* pending bits, MSB-aligned */
    int nacc;           /* 0..63 */
} bitbuf;

static int bb_reserve(bitbuf *b, size_t extra) { /* room for `extra` more bytes + a word */
    if (b->nbytes + extra + 16 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->nbytes + extra + 16) cap *= 2;
    uint8_t *nb = realloc(b->buf, cap);
    if (!nb) return -1;
    b->buf = nb;
    b->cap = cap;
    return 0;
}
static inline void store_be64(uint8_t *p, u64 w) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    memcpy(p, &w, sizeof w);
}
/* Appends the n low bits of v (1 <= n <= 64, v < 2^n); the caller reserved 8 bytes. */
static inline void bb_put(bitbuf *b, u64 v, int n) {
    int room = 64 - b->nacc;
    if (n < room) {
        b->acc |= v << (room - n);
        b->nacc += n;
        return;
    }
    store_be64(b->buf + b->nbytes, b->acc | (v >> (n - room)));
    b->nbytes += 8;
    b->nacc = n - room;
    b->acc = b->nacc ? v << (64 - b->nacc) : 0;
}
static size_t bb_finish(bitbuf *b) { /* flush the pending bits zero-padded to a byte; bytes */
    if (bb_reserve(b, 8)) return (size_t)-1;
    for (int i = 0; i < b->nacc; i += 8) b->buf[b->nbytes++] = (uint8_t)(b->acc >> (56 - i));
    b->nacc = 0;
    return b->nbytes;
}

/* Rice code of g: floor(g / 2^k) ones, a zero, then the k low bits. */
static int rice_put(bitbuf *b, u64 g, int k) {
    u64 q = g >> k;
    if (bb_reserve(b, q / 8 + 24)) return -1;
    if (q + 1 + (u64)k <= 64) { /* the usual case: one write */
        u64 low = k ? g & ((1ULL << k) - 1) : 0;
        u64 ones = q ? ((1ULL << q) - 1) << (k + 1) : 0; /* q <= 63 - k here */
        bb_put(b, ones | low, (int)q + 1 + k);
        return 0;
    }
    for (; q >= 32; q -= 32) bb_put(b, 0xFFFFFFFFULL, 32);
    bb_put(b, ((1ULL << q) - 1) << 1, (int)q + 1);
    if (k > 32) {
        bb_put(b, (g >> 32) & ((1ULL << (k - 32)) - 1), k - 32);
        bb_put(b, g & 0xFFFFFFFFULL, 32);
    } else if (k) {
        bb_put(b, g & ((1ULL << k) - 1), k);
    }
    return 0;
}

typedef struct {
    const uint8_t *buf;
    size_t nbits, pos;
} bitreader;

static inline u64 peek64(const bitreader *r) { /* 64 bits from pos, zeros past the end */
    size_t byte = r->pos >> 3, nb = (r->nbits + 7) >> 3;
    int sh = (int)(r->pos & 7);
    u64 w = 0;
    if (byte + 9 <= nb) { /* fast path: one unaligned load */
        memcpy(&w, r->buf + byte, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        w = __builtin_bswap64(w);
#endif
        return sh ? (w << sh) | ((u64)r->buf[byte + 8] >> (8 - sh)) : w;
    }
    for (int i = 0; i < 8; i++) w = (w << 8) | (byte + i < nb ? r->buf[byte + i] : 0);
    w <<= sh;
    if (sh && byte + 8 < nb) w |= (u64)r->buf[byte + 8] >> (8 - sh);
    return w;
}

/* Returns 0 and the value, or -1 if the code runs past the end. */
static int rice_get(bitreader *r, int k, u64 *out) {
    u64 w = r->pos < r->nbits ? peek64(r) : ~0ULL;
    int ones = w == ~0ULL ? 64 : __builtin_clzll(~w);
    if (ones + 1 + k <= 64) { /* the usual case: unary part, its zero and the k bits in one word */
        size_t len = (size_t)ones + 1 + (size_t)k;
        if (r->pos + len > r->nbits) return -1;
        r->pos += len;
        *out = ((u64)ones << k) | (k ? (w << (ones + 1)) >> (64 - k) : 0);
        return 0;
    }
    u64 q = 0;
    for (;;) { /* unary part, up to 57 ones per peek */
        if (r->pos >= r->nbits) return -1;
        w = peek64(r);
        ones = w == ~0ULL ? 64 : __builtin_clzll(~w);
        if (ones > 56) ones = 56;
        if (ones < 56 || (~w >> (63 - 56)) & 1) { /* the terminating zero is within reach */
            if (r->pos + (size_t)ones + 1 > r->nbits) return -1;
            q += (u64)ones;
            r->pos += (size_t)ones + 1;
            break;
        }
        q += 56;
        r->pos += 56;
        if (q > (UINT64_MAX >> 2)) return -1;
    }
    if (r->pos + (size_t)k > r->nbits) return -1;
    u64 v = k ? peek64(r) >> (64 - k) : 0;
    r->pos += (size_t)k;
    if (k && q > (UINT64_MAX >> k)) return -1;
    *out = (q << k) | v;
    return 0;
}

/* Rice parameter for geometric gaps of mean (1-P)/P. */
static int rice_k_for(double p_det) {
    if (!(p_det > 0) || p_det >= 1) return 0;
    double mean = (1 - p_det) / p_det * 0.6931471805599453;
    int k = 0;
    while (k < 62 && ldexp(1.0, k + 1) <= mean) k++;
    return k;
}

/* ---- argument parsing shared by the entry points ------------------------------------------ */

static int parse_link(PyObject *args, link_t *L, int with_eve) {
    unsigned long long seed, n, dead;
    double p, c0, c1, e0, e1, e2, eve = 0;
    if (!PyArg_ParseTuple(args, with_eve ? "KKdK(dd)(ddd)d" : "KKdK(dd)(ddd)", &seed, &n, &p, &dead, &c0, &c1, &e0,
                          &e1, &e2, &eve))
        return -1;
    double vals[] = {p, c0, c1, e0, e1, e2, eve};
    for (int i = 0; i < 7; i++)
        if (!isfinite(vals[i]) || vals[i] < 0 || vals[i] > 1) {
            PyErr_SetString(PyExc_ValueError, "link probabilities must be finite and in [0, 1]");
            return -1;
        }
    if (c1 < c0) {
        PyErr_SetString(PyExc_ValueError, "class cumulative probabilities must be non-decreasing");
        return -1;
    }
    *L = (link_t){.seed = seed,
                  .n_pulses = n,
                  .dead = dead,
                  .p_det = p,
                  .perr = {prob_threshold53(e0), prob_threshold53(e1), prob_threshold53(e2)},
                  .eve = prob_threshold53(eve)};
    set_classes(L, c0, c1);
    return 0;
}

/* ---- Bob: detect --------------------------------------------------------------------------- */

typedef struct {
    keys_t *K;
    const link_t *L;
    bitbuf code, bases, bits;
    u64 base_acc, bit_acc; /* the current 64 detections' bases and bits, MSB first */
    u64 prev_end;          /* first armed slot after the previous click */
    int k;
    u64 n;
} detect_ctx;

static int detect_visit(void *vctx, u64 slot) {
    detect_ctx *c = vctx;
    const link_t *L = c->L;
    u64 a = hsh(c->K->alice, slot), ch = hsh(c->K->chan, slot);
    if (rice_put(&c->code, slot - c->prev_end, c->k)) return -1;
    c->base_acc = c->base_acc << 1 | (ch & 1);
    c->bit_acc = c->bit_acc << 1 | (u64)bob_bit(c->K, L, slot, a, ch, class_of(L, a));
    if ((++c->n & 63) == 0) { /* a whole word of bases and bits */
        if (bb_reserve(&c->bases, 8) || bb_reserve(&c->bits, 8)) return -1;
        bb_put(&c->bases, c->base_acc, 64);
        bb_put(&c->bits, c->bit_acc, 64);
    }
    c->prev_end = slot + 1 + L->dead;
    return 0;
}

/* detect(seed, n_pulses, p_det, dead, (c0, c1), (e0, e1, e2), eve)
 *   -> (n_det, rice_k, code, bases, bits): Bob's view of the block. */
static PyObject *py_detect(PyObject *self, PyObject *args) {
    link_t L;
    if (parse_link(args, &L, 1)) return NULL;
    keys_t K;
    derive_keys(&K, L.seed);
    detect_ctx c = {.K = &K, .L = &L, .k = rice_k_for(L.p_det)};
    /* sized for the expected clicks, so the buffers rarely grow */
    double expect = L.p_det * (double)L.n_pulses * 1.01 + 4096;
    int rc = bb_reserve(&c.code, (size_t)(expect * (c.k + 2.5) / 8)) || bb_reserve(&c.bases, (size_t)(expect / 8)) ||
             bb_reserve(&c.bits, (size_t)(expect / 8));
    if (!rc) {
        Py_BEGIN_ALLOW_THREADS rc = walk(&K, &L, detect_visit, &c);
        Py_END_ALLOW_THREADS
    }
    int tail = (int)(c.n & 63);
    if (!rc && tail && !bb_reserve(&c.bases, 8) && !bb_reserve(&c.bits, 8)) {
        u64 mask = (1ULL << tail) - 1;
        bb_put(&c.bases, c.base_acc & mask, tail);
        bb_put(&c.bits, c.bit_acc & mask, tail);
    }
    PyObject *res = NULL;
    size_t ncode = bb_finish(&c.code), nbase = bb_finish(&c.bases), nbit = bb_finish(&c.bits);
    if (rc || ncode == (size_t)-1 || nbase == (size_t)-1 || nbit == (size_t)-1) {
        PyErr_NoMemory();
    } else {
        res = Py_BuildValue("(Kiy#y#y#)", (unsigned long long)c.n, c.k, (const char *)c.code.buf, (Py_ssize_t)ncode,
                            (const char *)c.bases.buf, (Py_ssize_t)nbase, (const char *)c.bits.buf, (Py_ssize_t)nbit);
    }
    free(c.code.buf);
    free(c.bases.buf);
    free(c.bits.buf);
    return res;
}

/* ---- statistics only ------------------------------------------------------------------------ */

typedef struct {
    keys_t *K;
    const link_t *L;
    u64 det[3], matched[3], err[3], n;
} tally_ctx;

static int tally_visit(void *vctx, u64 slot) {
    tally_ctx *c = vctx;
    u64 a = hsh(c->K->alice, slot), ch = hsh(c->K->chan, slot);
    int cls = class_of(c->L, a);
    c->det[cls]++;
    if (!(((a >> 1) ^ ch) & 1)) { /* bases match */
        c->matched[cls]++;
        c->err[cls] += (u64)((int)(a & 1) != bob_bit(c->K, c->L, slot, a, ch, cls));
    }
    c->n++;
    return 0;
}

/* tally(...) -> (det[3], matched[3], errors[3], live_pulses): per-class counts without
 * materialising events; live pulses exclude the dead slots after each click. */
static PyObject *py_tally(PyObject *self, PyObject *args) {
    link_t L;
    if (parse_link(args, &L, 1)) return NULL;
    keys_t K;
    derive_keys(&K, L.seed);
    tally_ctx c = {.K = &K, .L = &L};
    Py_BEGIN_ALLOW_THREADS walk(&K, &L, tally_visit, &c);
    Py_END_ALLOW_THREADS double deadfrac = (double)c.n * (double)L.dead;
    unsigned long long live = deadfrac >= (double)L.n_pulses ? 0 : L.n_pulses - c.n * L.dead;
    typedef unsigned long long ull;
    return Py_BuildValue("((KKK)(KKK)(KKK)K)", (ull)c.det[0], (ull)c.det[1], (ull)c.det[2], (ull)c.matched[0],
                         (ull)c.matched[1], (ull)c.matched[2], (ull)c.err[0], (ull)c.err[1], (ull)c.err[2], live);
}

/* ---- Alice: her view of the announced slots -------------------------------------------------- */

static int decode_slots(const uint8_t *code, size_t nbits, u64 n_det, int k, u64 dead, u64 n_pulses, u64 *out,
                        void (*each)(void *, u64, u64), void *ctx) {
    bitreader r = {code, nbits, 0};
    u64 next = 0;
    for (u64 i = 0; i < n_det; i++) {
        u64 g;
        if (rice_get(&r, k, &g)) return -1;
        if (next >= n_pulses || g >= n_pulses - next) return -2;
        u64 slot = next + g;
        if (out) out[i] = slot;
        if (each) each(ctx, i, slot);
        next = slot + 1 + dead;
    }
    return 0;
}

typedef struct {
    keys_t *K;
    const link_t *L;
    uint8_t *bits, *bases, *cls;
    u64 bit_acc, base_acc; /* the current 64 detections, MSB first */
} alice_ctx;

static void alice_each(void *vctx, u64 i, u64 slot) {
    alice_ctx *c = vctx;
    u64 a = hsh(c->K->alice, slot);
    c->bit_acc = c->bit_acc << 1 | (a & 1);
    c->base_acc = c->base_acc << 1 | (a >> 1 & 1);
    c->cls[i] = (uint8_t)class_of(c->L, a);
    if ((i & 63) == 63) { /* a whole word: both outputs hold at least i + 1 bits, so 8 bytes fit */
        store_be64(c->bits + (i >> 3) - 7, c->bit_acc);
        store_be64(c->bases + (i >> 3) - 7, c->base_acc);
    }
}

static void flush_tail(uint8_t *out, u64 n_det, u64 acc) { /* the last n_det % 64 bits, MSB first */
    int tail = (int)(n_det & 63);
    if (!tail) return;
    acc <<= 64 - tail;
    for (int j = 0; j < tail; j += 8) out[((n_det - (u64)tail) >> 3) + (u64)(j >> 3)] = (uint8_t)(acc >> (56 - j));
}

static int parse_view(PyObject *args, link_t *L, unsigned long long *n_det, int *k, Py_buffer *code) {
    unsigned long long seed, n, dead;
    double c0, c1;
    if (!PyArg_ParseTuple(args, "KKK(dd)Kiy*", &seed, &n, &dead, &c0, &c1, n_det, k, code)) return -1;
    if (!isfinite(c0) || !isfinite(c1) || c0 < 0 || c1 > 1 || c1 < c0) {
        PyBuffer_Release(code);
        PyErr_SetString(PyExc_ValueError, "class cumulative probabilities must satisfy 0 <= c0 <= c1 <= 1");
        return -1;
    }
    if (*k < 0 || *k > 62) {
        PyBuffer_Release(code);
        PyErr_Format(PyExc_ValueError, "Rice parameter %d outside [0, 62]", *k);
        return -1;
    }
    if (*n_det > n || *n_det > (unsigned long long)code->len * 8) {
        PyBuffer_Release(code);
        PyErr_Format(PyExc_ValueError, "n_det=%llu impossible for %llu pulses and a %zd-byte code", *n_det, n,
                     code->len);
        return -1;
    }
    *L = (link_t){.seed = seed, .n_pulses = n, .dead = dead};
    set_classes(L, c0, c1);
    return 0;
}

static PyObject *decode_error(int rc) {
    PyErr_SetString(PyExc_ValueError, rc == -1 ? "slot code truncated or malformed"
                                               : "slot code points past the end of the block");
    return NULL;
}

/* alice(seed, n_pulses, dead, (c0, c1), n_det, rice_k, code) -> (bits, bases, classes) */
static PyObject *py_alice(PyObject *self, PyObject *args) {
    link_t L;
    unsigned long long n_det;
    int k;
    Py_buffer code;
    if (parse_view(args, &L, &n_det, &k, &code)) return NULL;
    keys_t K;
    derive_keys(&K, L.seed);
    size_t nb = (size_t)((n_det + 7) / 8);
    PyObject *bits = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nb);
    PyObject *bases = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)nb);
    PyObject *cls = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n_det);
    PyObject *res = NULL;
    if (bits && bases && cls) {
        alice_ctx c = {&K, &L, (uint8_t *)PyBytes_AS_STRING(bits), (uint8_t *)PyBytes_AS_STRING(bases),
                       (uint8_t *)PyBytes_AS_STRING(cls), 0, 0};
        memset(c.bits, 0, nb);
        memset(c.bases, 0, nb);
        int rc;
        Py_BEGIN_ALLOW_THREADS rc =
            decode_slots(code.buf, (size_t)code.len * 8, n_det, k, L.dead, L.n_pulses, NULL, alice_each, &c);
        Py_END_ALLOW_THREADS if (rc) decode_error(rc);
        else {
            flush_tail(c.bits, n_det, c.bit_acc);
            flush_tail(c.bases, n_det, c.base_acc);
            res = PyTuple_Pack(3, bits, bases, cls);
        }
    }
    Py_XDECREF(bits);
    Py_XDECREF(bases);
    Py_XDECREF(cls);
    PyBuffer_Release(&code);
    return res;
}

/* slots(n_pulses, dead, n_det, rice_k, code) -> bytes of little-endian uint64 slot numbers */
static PyObject *py_slots(PyObject *self, PyObject *args) {
    unsigned long long n, dead, n_det;
    int k;
    Py_buffer code;
    if (!PyArg_ParseTuple(args, "KKKiy*", &n, &dead, &n_det, &k, &code)) return NULL;
    PyObject *res = NULL;
    if (k < 0 || k > 62 || n_det > (unsigned long long)code.len * 8 || n_det > n) {
        PyErr_SetString(PyExc_ValueError, "slot code parameters out of range");
    } else {
        res = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n_det * 8));
        if (res) {
            int rc = decode_slots(code.buf, (size_t)code.len * 8, n_det, k, dead, n, (u64 *)PyBytes_AS_STRING(res),
                                  NULL, NULL);
            if (rc) {
                Py_CLEAR(res);
                decode_error(rc);
            }
        }
    }
    PyBuffer_Release(&code);
    return res;
}

static PyMethodDef methods[] = {
    {"detect", py_detect, METH_VARARGS, "detect(seed, n_pulses, p_det, dead, cls, perr, eve) -> Bob's view"},
    {"tally", py_tally, METH_VARARGS, "tally(seed, n_pulses, p_det, dead, cls, perr, eve) -> per-class counts"},
    {"alice", py_alice, METH_VARARGS, "alice(seed, n_pulses, dead, cls, n_det, k, code) -> Alice's view"},
    {"slots", py_slots, METH_VARARGS, "slots(n_pulses, dead, n_det, k, code) -> uint64 slot numbers"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_sim",
                                    .m_doc = "Detection-event simulation of a decoy-state BB84 link.",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__sim(void) { return PyModule_Create(&module); }
