/* Polynomial-evaluation universal hash over GF(2^128) = GF(2)[x]/(x^128 + x^7 + x^2 + x + 1).
 *
 * h_k(m) = sum_i m_i k^(L-i+1) over the 128-bit blocks m_1..m_L of the message followed by a
 * block holding its length in bits (Horner: y = (y + m_i) k).  For messages of at most L
 * blocks, two different messages collide, or differ by any fixed value, with probability at most
 * L / 2^128 over a uniform key: an epsilon-almost-XOR-universal family (Wegman and Carter 1981;
 * the GHASH construction).  Used for key verification and, with one-time-pad encrypted tags,
 * for Wegman-Carter authentication.  Blocks are 16 bytes, each half little-endian, coefficient
 * of x^j at bit j: an internal convention both ends share. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include "clmul.h"

typedef uint64_t u64;
typedef struct {
    u64 lo, hi;
} g128;

static inline u64 ld64(const uint8_t *p) {
    u64 v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline void st64(uint8_t *p, u64 v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static g128 gmul_soft(g128 a, g128 b) {
    u64 l0, h0, l1, h1, l2, h2, l3, h3;
    clmul_soft(a.lo, b.lo, &l0, &h0);
    clmul_soft(a.lo, b.hi, &l1, &h1);
    clmul_soft(a.hi, b.lo, &l2, &h2);
    clmul_soft(a.hi, b.hi, &l3, &h3);
    u64 p0 = l0, p1 = h0 ^ l1 ^ l2, p2 = h1 ^ h2 ^ l3, p3 = h3, tl, th;
    clmul_soft(p3, 0x87, &tl, &th); /* x^192 = x^64 * x^128 = x^64 (x^7 + x^2 + x + 1) */
    p1 ^= tl;
    p2 ^= th;
    clmul_soft(p2, 0x87, &tl, &th);
    p0 ^= tl;
    p1 ^= th;
    return (g128){p0, p1};
}

#ifdef SDQKD_X86
/* The 256-bit product A*B, unreduced, added into (lo, mid, hi): lo + mid x^64 + hi x^128. */
__attribute__((target("pclmul,sse4.1"))) static inline void mul_add(__m128i A, __m128i B, __m128i *lo,
                                                                     __m128i *mid, __m128i *hi) {
    *lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(A, B, 0x00));
    *hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(A, B, 0x11));
    *mid = _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(A, B, 0x10), _mm_clmulepi64_si128(A, B, 0x01)));
}

/* lo + mid x^64 + hi x^128 reduced modulo the field polynomial: x^128 = x^7 + x^2 + x + 1 (0x87). */
__attribute__((target("pclmul,sse4.1"))) static inline g128 reduce(__m128i lo, __m128i mid, __m128i hi) {
    u64 p0 = (u64)_mm_cvtsi128_si64(lo), p1 = (u64)_mm_extract_epi64(lo, 1) ^ (u64)_mm_cvtsi128_si64(mid);
    u64 p2 = (u64)_mm_cvtsi128_si64(hi) ^ (u64)_mm_extract_epi64(mid, 1), p3 = (u64)_mm_extract_epi64(hi, 1);
    const __m128i R = _mm_set_epi64x(0, 0x87);
    __m128i t = _mm_clmulepi64_si128(_mm_set_epi64x(0, (long long)p3), R, 0x00);
    p1 ^= (u64)_mm_cvtsi128_si64(t);
    p2 ^= (u64)_mm_extract_epi64(t, 1);
    t = _mm_clmulepi64_si128(_mm_set_epi64x(0, (long long)p2), R, 0x00);
    p0 ^= (u64)_mm_cvtsi128_si64(t);
    p1 ^= (u64)_mm_extract_epi64(t, 1);
    return (g128){p0, p1};
}

static inline __m128i g2m(g128 a) { return _mm_set_epi64x((long long)a.hi, (long long)a.lo); }

__attribute__((target("pclmul,sse4.1"))) static g128 gmul_clmul(g128 a, g128 b) {
    __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
    mul_add(g2m(a), g2m(b), &lo, &mid, &hi);
    return reduce(lo, mid, hi);
}

/* Horner over `full` whole blocks, four at a time: y' = (y + m1) k^4 + m2 k^3 + m3 k^2 + m4 k,
 * the same polynomial as one block at a time, with one reduction per four blocks and the four
 * products independent (one block at a time waits on each multiplication's latency). Blocks
 * load as they are stored: x86 is little-endian, as the blocks' halves are. */
__attribute__((target("pclmul,sse4.1"))) static g128 horner_clmul(g128 y, g128 k, const uint8_t *buf, u64 full) {
    u64 i = 0;
    if (full >= 8) {
        g128 k2 = gmul_clmul(k, k), k3 = gmul_clmul(k2, k), k4 = gmul_clmul(k3, k);
        __m128i K1 = g2m(k), K2 = g2m(k2), K3 = g2m(k3), K4 = g2m(k4), Y = g2m(y);
        for (; i + 4 <= full; i += 4) {
            const uint8_t *p = buf + 16 * i;
            __m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
            mul_add(_mm_xor_si128(Y, _mm_loadu_si128((const __m128i *)p)), K4, &lo, &mid, &hi);
            mul_add(_mm_loadu_si128((const __m128i *)(p + 16)), K3, &lo, &mid, &hi);
            mul_add(_mm_loadu_si128((const __m128i *)(p + 32)), K2, &lo, &mid, &hi);
            mul_add(_mm_loadu_si128((const __m128i *)(p + 48)), K1, &lo, &mid, &hi);
            y = reduce(lo, mid, hi);
            Y = g2m(y);
        }
    }
    for (; i < full; i++) {
        y.lo ^= ld64(buf + 16 * i);
        y.hi ^= ld64(buf + 16 * i + 8);
        y = gmul_clmul(y, k);
    }
    return y;
}
#endif

typedef g128 (*gmul_fn)(g128, g128);
static gmul_fn gmul = gmul_soft;

static g128 horner_soft(g128 y, g128 k, const uint8_t *buf, u64 full) {
    for (u64 i = 0; i < full; i++) {
        y.lo ^= ld64(buf + 16 * i);
        y.hi ^= ld64(buf + 16 * i + 8);
        y = gmul_soft(y, k);
    }
    return y;
}

/* y after Horner's steps over `full` whole 16-byte blocks of buf: the kernel chosen with gmul */
typedef g128 (*horner_fn)(g128, g128, const uint8_t *, u64);
static horner_fn horner = horner_soft;

/* Hash the first nbits bits of buf (bits past nbits in the last byte are ignored). */
static g128 poly_hash(g128 k, const uint8_t *buf, u64 nbits) {
    g128 y = {0, 0};
    u64 nbytes = (nbits + 7) / 8, full = nbytes / 16;
    /* a partial last byte must go through the masked tail, even when it ends a 16-byte block */
    if ((nbits & 7) && nbytes % 16 == 0) full -= 1;
    u64 tail = nbytes - 16 * full;
    y = horner(y, k, buf, full);
    if (tail) {
        uint8_t last[16] = {0};
        memcpy(last, buf + 16 * full, tail);
        if (nbits & 7) last[tail - 1] &= (uint8_t)(0xFF00u >> (nbits & 7));
        y.lo ^= ld64(last);
        y.hi ^= ld64(last + 8);
        y = gmul(y, k);
    }
    y.lo ^= nbits; /* length block: distinct lengths never collide trivially */
    return gmul(y, k);
}

static PyObject *py_poly_hash(PyObject *self, PyObject *args) {
    Py_buffer key, data;
    Py_ssize_t nbits = -1;
    if (!PyArg_ParseTuple(args, "y*y*|n", &key, &data, &nbits)) return NULL;
    PyObject *res = NULL;
    if (key.len != 16) {
        PyErr_Format(PyExc_ValueError, "hash key must be 16 bytes, got %zd", key.len);
        goto out;
    }
    if (nbits == -1) nbits = data.len * 8;
    if (nbits < 0 || nbits > data.len * 8) {
        PyErr_Format(PyExc_ValueError, "n_bits=%zd outside the buffer of %zd bits", nbits, data.len * 8);
        goto out;
    }
    const uint8_t *kb = key.buf;
    g128 k = {ld64(kb), ld64(kb + 8)}, y;
    Py_BEGIN_ALLOW_THREADS y = poly_hash(k, data.buf, (u64)nbits);
    Py_END_ALLOW_THREADS uint8_t out[16];
    st64(out, y.lo);
    st64(out + 8, y.hi);
    res = PyBytes_FromStringAndSize((const char *)out, 16);
out:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return res;
}

/* gf_mul(a, b) for tests: the field multiplication itself. */
static PyObject *py_gf_mul(PyObject *self, PyObject *args) {
    Py_buffer a, b;
    if (!PyArg_ParseTuple(args, "y*y*", &a, &b)) return NULL;
    PyObject *res = NULL;
    if (a.len != 16 || b.len != 16) {
        PyErr_SetString(PyExc_ValueError, "field elements are 16 bytes");
    } else {
        const uint8_t *pa = a.buf, *pb = b.buf;
        g128 r = gmul((g128){ld64(pa), ld64(pa + 8)}, (g128){ld64(pb), ld64(pb + 8)});
        uint8_t out[16];
        st64(out, r.lo);
        st64(out + 8, r.hi);
        res = PyBytes_FromStringAndSize((const char *)out, 16);
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return res;
}

static PyObject *py_kernel(PyObject *self, PyObject *args) {
    int portable = 0;
    if (!PyArg_ParseTuple(args, "|p", &portable)) return NULL;
    gmul = gmul_soft;
    horner = horner_soft;
#ifdef SDQKD_X86
    if (!portable && __builtin_cpu_supports("pclmul")) {
        gmul = gmul_clmul;
        horner = horner_clmul;
    }
#endif
    return PyUnicode_FromString(gmul == gmul_soft ? "portable" : "pclmul");
}

static PyMethodDef methods[] = {
    {"poly_hash", py_poly_hash, METH_VARARGS, "poly_hash(key16, data, n_bits=-1) -> 16-byte tag"},
    {"gf_mul", py_gf_mul, METH_VARARGS, "gf_mul(a16, b16) -> a*b in GF(2^128)"},
    {"kernel", py_kernel, METH_VARARGS, "kernel(portable=False) -> name of the multiplier in use"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_hash",
                                    .m_doc = "GF(2^128) polynomial universal hash.", .m_size = -1,
                                    .m_methods = methods};

PyMODINIT_FUNC PyInit__hash(void) {
#ifdef SDQKD_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("pclmul")) {
        gmul = gmul_clmul;
        horner = horner_clmul;
    }
#endif
    return PyModule_Create(&module);
}
