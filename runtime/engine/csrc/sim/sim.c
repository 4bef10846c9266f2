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
static inline double unit53(u64 x) { return (double)(x >> 11) * 0x1.0p-53; } /* [0, 1) */

static u64 prob_threshold(double p) { /* P[hash < thr] = p */
    if (!(p > 0)) return 0;
    if (p >= 1) return UINT64_MAX;
    return (u64)ldexp(p, 64);
}

/* ---- link parameters --------------------------------------------------------------------- */

typedef struct {
    u64 seed, n_pulses, dead;
    double p_det, perr[3], eve;
    u64 thr0, thr1; /* class thresholds: class 0 if h < thr0, 1 if h < thr1, else 2 */
} link_t;

/* One hash gives Alice's bit (bit 0), basis (bit 1) and, from the other 62 bits, the class. */
static inline int class_of(const link_t *L, u64 a) {
    u64 h = a >> 2;
    return h < (L->thr0 >> 2) ? 0 : (h < (L->thr1 >> 2) ? 1 : 2);
}

/* One detection event seen by both ends: which slot, class, Alice's bit/basis, Bob's. */
typedef struct {
    int cls, abit, abasis, bbasis, bbit;
} event_t;

static inline void make_event(const keys_t *K, const link_t *L, u64 slot, event_t *e) {
    u64 a = hsh(K->alice, slot);
    e->cls = class_of(L, a);
    e->abit = (int)(a & 1);
    e->abasis = (int)((a >> 1) & 1);
    u64 c = hsh(K->chan, slot);
    e->bbasis = (int)(c & 1);
    int rnd = (int)((c >> 1) & 1);
    if (e->bbasis != e->abasis) { /* wrong basis: the photon lands at random */
        e->bbit = rnd;
        return;
    }
    if (L->eve > 0) { /* intercept-resend: Eve's wrong basis randomises Bob's outcome */
        u64 v = hsh(K->eve, slot);
        if (unit53(v) < L->eve && (int)((v >> 1) & 1) != e->abasis) {
            e->bbit = rnd;
            return;
        }
    }
    e->bbit = e->abit ^ (unit53(c) < L->perr[e->cls]);
}

/* Iterate over detections: calls visit(ctx, slot) in increasing slot order. */
typedef int (*visit_fn)(void *ctx, u64 slot);
/* always inlined, so each caller gets its own loop with `visit` inlined too */
static inline __attribute__((always_inline)) int walk(keys_t *K, const link_t *L, visit_fn visit, void *ctx) {
    if (!(L->p_det > 0) || L->n_pulses == 0) return 0;
    double inv = L->p_det >= 1 ? 0.0 : 1.0 / log1p(-L->p_det);
    u64 next = 0; /* first slot at which the detector is armed */
    while (next < L->n_pulses) {
        double u = ((double)(xoshiro(K->gap) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
        double g = floor(log(u) * inv);
        if (g >= (double)(L->n_pulses - next)) break;
        u64 slot = next + (u64)g;
        int rc = visit(ctx, slot);
        if (rc) return rc;
        if (L->n_pulses - slot <= 1 + L->dead) break;
        next = slot + 1 + L->dead;
    }
    return 0;
}

/* ---- growable packed bit writers (MSB first) ---------------------------------------------- */

typedef struct {
    uint8_t *buf;
    size_t cap, nbytes; /* bytes flushed */
    u64 acc;            /* pending bits, right-aligned */
    int nacc;
} bitbuf;

static int bb_grow(bitbuf *b, size_t extra) {
    if (b->nbytes + extra + 16 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->nbytes + extra + 16) cap *= 2;
    uint8_t *nb = realloc(b->buf, cap);
    if (!nb) return -1;
    b->buf = nb;
    b->cap = cap;
    return 0;
}
static inline void bb_put(bitbuf *b, u64 v, int n) { /* n <= 56; caller reserved 8 bytes */
    b->acc = (b->acc << n) | v;
    b->nacc += n;
    while (b->nacc >= 8) {
        b->nacc -= 8;
        b->buf[b->nbytes++] = (uint8_t)(b->acc >> b->nacc);
    }
}
static size_t bb_finish(bitbuf *b) { /* pad with zeros, return bytes */
    if (bb_grow(b, 8)) return (size_t)-1;
    if (b->nacc) bb_put(b, 0, 8 - b->nacc);
    return b->nbytes;
}

/* Rice code of g: floor(g / 2^k) ones, a zero, then the k low bits. */
static int rice_put(bitbuf *b, u64 g, int k) {
    u64 q = g >> k;
    if (bb_grow(b, q / 8 + 16)) return -1;
    while (q >= 32) {
        bb_put(b, 0xFFFFFFFFULL, 32);
        q -= 32;
    }
    bb_put(b, ((1ULL << q) - 1) << 1, (int)q + 1);
    if (k > 31) {
        bb_put(b, (g >> 31) & ((1ULL << (k - 31)) - 1), k - 31);
        bb_put(b, g & 0x7FFFFFFFULL, 31);
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
    u64 q = 0;
    for (;;) { /* unary part, up to 57 ones per peek */
        if (r->pos >= r->nbits) return -1;
        u64 w = peek64(r);
        int ones = w == ~0ULL ? 64 : __builtin_clzll(~w);
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
    *L = (link_t){.seed = seed, .n_pulses = n, .dead = dead, .p_det = p, .perr = {e0, e1, e2}, .eve = eve};
    L->thr0 = prob_threshold(c0);
    L->thr1 = prob_threshold(c1);
    return 0;
}

/* ---- Bob: detect --------------------------------------------------------------------------- */

typedef struct {
    keys_t *K;
    const link_t *L;
    bitbuf code, bases, bits;
    u64 prev_end; /* first armed slot after the previous click */
    int k;
    u64 n;
} detect_ctx;

static int detect_visit(void *vctx, u64 slot) {
    detect_ctx *c = vctx;
    event_t e;
    make_event(c->K, c->L, slot, &e);
    if (rice_put(&c->code, slot - c->prev_end, c->k)) return -1;
    if (bb_grow(&c->bases, 8) || bb_grow(&c->bits, 8)) return -1;
    bb_put(&c->bases, (u64)e.bbasis, 1);
    bb_put(&c->bits, (u64)e.bbit, 1);
    c->prev_end = slot + 1 + c->L->dead;
    c->n++;
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
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = walk(&K, &L, detect_visit, &c);
    Py_END_ALLOW_THREADS PyObject *res = NULL;
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
    event_t e;
    make_event(c->K, c->L, slot, &e);
    c->det[e.cls]++;
    if (e.abasis == e.bbasis) {
        c->matched[e.cls]++;
        c->err[e.cls] += (u64)(e.abit != e.bbit);
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
} alice_ctx;

static void alice_each(void *vctx, u64 i, u64 slot) {
    alice_ctx *c = vctx;
    u64 a = hsh(c->K->alice, slot);
    if (a & 1) c->bits[i >> 3] |= (uint8_t)(0x80u >> (i & 7));
    if ((a >> 1) & 1) c->bases[i >> 3] |= (uint8_t)(0x80u >> (i & 7));
    c->cls[i] = (uint8_t)class_of(c->L, a);
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
    L->thr0 = prob_threshold(c0);
    L->thr1 = prob_threshold(c1);
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
        memset(PyBytes_AS_STRING(bits), 0, nb);
        memset(PyBytes_AS_STRING(bases), 0, nb);
        alice_ctx c = {&K, &L, (uint8_t *)PyBytes_AS_STRING(bits), (uint8_t *)PyBytes_AS_STRING(bases),
                       (uint8_t *)PyBytes_AS_STRING(cls)};
        int rc;
        Py_BEGIN_ALLOW_THREADS rc =
            decode_slots(code.buf, (size_t)code.len * 8, n_det, k, L.dead, L.n_pulses, NULL, alice_each, &c);
        Py_END_ALLOW_THREADS if (rc) decode_error(rc);
        else res = PyTuple_Pack(3, bits, bases, cls);
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
