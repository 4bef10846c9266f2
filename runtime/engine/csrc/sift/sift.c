/* Bit-buffer kernels for sifting and sampling: compaction of packed bits by a mask
 * (PEXT when the CPU has BMI2), Bernoulli sample masks from a public seed, per-basis and
 * per-intensity tallies, and 2-bit packing of intensity classes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "sim/prng.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#include "bitorder.h"

typedef uint64_t u64;

/* 64 bits [64w, 64w + 64) of a packed MSB-first buffer as an LSB-first word (bit i at i). */
static inline u64 load_block(const uint8_t *buf, size_t nbytes, size_t w) {
    u64 v = 0;
    size_t off = 8 * w;
    if (off + 8 <= nbytes) {
        for (int i = 7; i >= 0; i--) v = (v << 8) | buf[off + i];
    } else {
        for (int i = 7; i >= 0; i--) v = (v << 8) | (off + i < nbytes ? buf[off + i] : 0);
    }
    return rev_bits_in_bytes(v);
}
static inline void store_block(uint8_t *buf, size_t nbytes, size_t w, u64 v) {
    v = rev_bits_in_bytes(v);
    for (int i = 0; i < 8 && 8 * w + i < nbytes; i++) buf[8 * w + i] = (uint8_t)(v >> (8 * i));
}

static u64 pext_soft(u64 v, u64 m) {
    u64 r = 0, bit = 1;
    while (m) {
        u64 t = m & (0 - m);
        if (v & t) r |= bit;
        bit <<= 1;
        m ^= t;
    }
    return r;
}
#ifdef HAVE_X86
__attribute__((target("bmi2"))) static u64 pext_bmi2(u64 v, u64 m) { return _pext_u64(v, m); }
#endif
static u64 (*pext)(u64, u64) = pext_soft;

static int check_bits(const char *what, Py_ssize_t nbits, Py_ssize_t len) {
    if (nbits < 0 || nbits > len * 8) {
        PyErr_Format(PyExc_ValueError, "%s: n_bits=%zd outside a buffer of %zd bits", what, nbits, len * 8);
        return -1;
    }
    return 0;
}

/* compact(buf, mask, n_bits, keep=1) -> (bytes, count): the bits of buf whose mask bit == keep */
static PyObject *py_compact(PyObject *self, PyObject *args) {
    Py_buffer b, m;
    Py_ssize_t n;
    int keep = 1;
    if (!PyArg_ParseTuple(args, "y*y*n|p", &b, &m, &n, &keep)) return NULL;
    PyObject *res = NULL;
    if (check_bits("compact buffer", n, b.len) || check_bits("compact mask", n, m.len)) goto out;
    size_t nw = ((size_t)n + 63) / 64, nbytes = ((size_t)n + 7) / 8;
    u64 *o = calloc(nw + 1, sizeof(u64));
    if (!o) {
        PyErr_NoMemory();
        goto out;
    }
    size_t cnt = 0;
    Py_BEGIN_ALLOW_THREADS for (size_t w = 0; w < nw; w++) {
        u64 mk = load_block(m.buf, nbytes, w);
        if (!keep) mk = ~mk;
        if (w == nw - 1 && (n & 63)) mk &= (1ULL << (n & 63)) - 1;
        u64 e = pext(load_block(b.buf, nbytes, w), mk);
        int c = __builtin_popcountll(mk);
        size_t ow = cnt >> 6, ob = cnt & 63;
        o[ow] |= e << ob;
        if (ob && ob + (size_t)c > 64) o[ow + 1] |= e >> (64 - ob);
        cnt += (size_t)c;
    }
    Py_END_ALLOW_THREADS size_t ob = (cnt + 7) / 8;
    PyObject *bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)ob);
    if (bytes) {
        uint8_t *p = (uint8_t *)PyBytes_AS_STRING(bytes);
        for (size_t w = 0; w * 8 < ob; w++) store_block(p, ob, w, o[w]);
        res = Py_BuildValue("(Nn)", bytes, (Py_ssize_t)cnt);
    }
    free(o);
out:
    PyBuffer_Release(&b);
    PyBuffer_Release(&m);
    return res;
}

/* compact_bytes(arr, mask, n, keep=1) -> bytes: arr[i] for every i < n whose mask bit == keep */
static PyObject *py_compact_bytes(PyObject *self, PyObject *args) {
    Py_buffer a, m;
    Py_ssize_t n;
    int keep = 1;
    if (!PyArg_ParseTuple(args, "y*y*n|p", &a, &m, &n, &keep)) return NULL;
    PyObject *res = NULL;
    if (n < 0 || n > a.len) {
        PyErr_Format(PyExc_ValueError, "compact_bytes: n=%zd outside an array of %zd", n, a.len);
        goto out;
    }
    if (check_bits("compact_bytes mask", n, m.len)) goto out;
    uint8_t *o = malloc((size_t)n + 1);
    if (!o) {
        PyErr_NoMemory();
        goto out;
    }
    const uint8_t *src = a.buf;
    size_t cnt = 0, nw = ((size_t)n + 63) / 64, nbytes = ((size_t)n + 7) / 8;
    for (size_t w = 0; w < nw; w++) { /* walk the set bits of each 64-bit mask block */
        u64 mk = load_block(m.buf, nbytes, w);
        if (!keep) mk = ~mk;
        if (w == nw - 1 && (n & 63)) mk &= (1ULL << (n & 63)) - 1;
        if (mk == ~0ULL) {
            memcpy(o + cnt, src + 64 * w, 64);
            cnt += 64;
            continue;
        }
        while (mk) {
            o[cnt++] = src[64 * w + (size_t)__builtin_ctzll(mk)];
            mk &= mk - 1;
        }
    }
    res = PyBytes_FromStringAndSize((const char *)o, (Py_ssize_t)cnt);
    free(o);
out:
    PyBuffer_Release(&a);
    PyBuffer_Release(&m);
    return res;
}

/* bernoulli(seed16, n, p) -> packed mask with each bit set independently with probability p */
static PyObject *py_bernoulli(PyObject *self, PyObject *args) {
    Py_buffer sd;
    Py_ssize_t n;
    double p;
    if (!PyArg_ParseTuple(args, "y*nd", &sd, &n, &p)) return NULL;
    PyObject *res = NULL;
    if (sd.len != 16) {
        PyErr_Format(PyExc_ValueError, "sample seed must be 16 bytes, got %zd", sd.len);
    } else if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "n must be >= 0");
    } else if (!(p >= 0 && p <= 1)) {
        PyErr_SetString(PyExc_ValueError, "sample probability must be in [0, 1]");
    } else {
        const uint8_t *s = sd.buf;
        hkey k = {0, 0};
        for (int i = 7; i >= 0; i--) {
            k.a = (k.a << 8) | s[i];
            k.b = (k.b << 8) | s[8 + i];
        }
        res = PyBytes_FromStringAndSize(NULL, (n + 7) / 8);
        if (res) {
            uint8_t *o = (uint8_t *)PyBytes_AS_STRING(res);
            memset(o, 0, (size_t)(n + 7) / 8);
            u64 thr = p >= 1 ? UINT64_MAX : (u64)ldexp(p, 64);
            int all = p >= 1;
            for (Py_ssize_t i = 0; i < n; i++)
                if (all || hsh(k, (u64)i) < thr) o[i >> 3] |= (uint8_t)(0x80u >> (i & 7));
        }
    }
    PyBuffer_Release(&sd);
    return res;
}

/* tally(bases, classes, n, diff=None) -> (counts, errors), each a 6-tuple indexed
 * basis * 3 + class; errors counts positions where diff has a 1 bit. */
static PyObject *py_tally(PyObject *self, PyObject *args) {
    Py_buffer bs, cl, df = {0};
    Py_ssize_t n;
    PyObject *dobj = Py_None;
    if (!PyArg_ParseTuple(args, "y*y*n|O", &bs, &cl, &n, &dobj)) return NULL;
    PyObject *res = NULL;
    int have_diff = dobj != Py_None;
    if (have_diff && PyObject_GetBuffer(dobj, &df, PyBUF_SIMPLE)) goto out;
    if (check_bits("tally bases", n, bs.len) || (have_diff && check_bits("tally diff", n, df.len))) goto out;
    if (n > cl.len) {
        PyErr_Format(PyExc_ValueError, "tally: %zd classes for %zd events", cl.len, n);
        goto out;
    }
    unsigned long long cnt[6] = {0}, err[6] = {0};
    const uint8_t *b = bs.buf, *c = cl.buf, *d = have_diff ? df.buf : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (c[i] > 2) {
            PyErr_Format(PyExc_ValueError, "tally: intensity class %d at %zd (valid 0..2)", c[i], i);
            goto out;
        }
        int j = ((b[i >> 3] >> (7 - (i & 7))) & 1) * 3 + c[i];
        cnt[j]++;
        if (d) err[j] += (d[i >> 3] >> (7 - (i & 7))) & 1;
    }
    res = Py_BuildValue("((KKKKKK)(KKKKKK))", cnt[0], cnt[1], cnt[2], cnt[3], cnt[4], cnt[5], err[0], err[1], err[2],
                        err[3], err[4], err[5]);
out:
    PyBuffer_Release(&bs);
    PyBuffer_Release(&cl);
    if (have_diff && df.obj) PyBuffer_Release(&df);
    return res;
}

/* pack2(classes) -> bytes (2 bits per class, MSB first); unpack2(data, n) -> bytes */
static PyObject *py_pack2(PyObject *self, PyObject *args) {
    Py_buffer c;
    if (!PyArg_ParseTuple(args, "y*", &c)) return NULL;
    PyObject *res = PyBytes_FromStringAndSize(NULL, (c.len + 3) / 4);
    if (res) {
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(res);
        const uint8_t *s = c.buf;
        memset(o, 0, (size_t)(c.len + 3) / 4);
        for (Py_ssize_t i = 0; i < c.len; i++) {
            if (s[i] > 3) {
                Py_CLEAR(res);
                PyErr_Format(PyExc_ValueError, "pack2: value %d at %zd does not fit in 2 bits", s[i], i);
                break;
            }
            o[i >> 2] |= (uint8_t)(s[i] << (6 - 2 * (i & 3)));
        }
    }
    PyBuffer_Release(&c);
    return res;
}

static PyObject *py_unpack2(PyObject *self, PyObject *args) {
    Py_buffer d;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &d, &n)) return NULL;
    PyObject *res = NULL;
    if (n < 0 || (n + 3) / 4 > d.len) {
        PyErr_Format(PyExc_ValueError, "unpack2: %zd values need %zd bytes, got %zd", n, (n + 3) / 4, d.len);
    } else {
        res = PyBytes_FromStringAndSize(NULL, n);
        if (res) {
            uint8_t *o = (uint8_t *)PyBytes_AS_STRING(res);
            const uint8_t *s = d.buf;
            for (Py_ssize_t i = 0; i < n; i++) o[i] = (s[i >> 2] >> (6 - 2 * (i & 3))) & 3;
        }
    }
    PyBuffer_Release(&d);
    return res;
}

static PyMethodDef methods[] = {
    {"compact", py_compact, METH_VARARGS, "compact(buf, mask, n_bits, keep=1) -> (bytes, count)"},
    {"compact_bytes", py_compact_bytes, METH_VARARGS, "compact_bytes(arr, mask, n, keep=1) -> bytes"},
    {"bernoulli", py_bernoulli, METH_VARARGS, "bernoulli(seed16, n, p) -> packed mask"},
    {"tally", py_tally, METH_VARARGS, "tally(bases, classes, n, diff=None) -> (counts6, errors6)"},
    {"pack2", py_pack2, METH_VARARGS, "pack2(values) -> 2-bit packed bytes"},
    {"unpack2", py_unpack2, METH_VARARGS, "unpack2(data, n) -> bytes of values"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_sift",
                                    .m_doc = "Sifting and sampling kernels on packed bits.", .m_size = -1,
                                    .m_methods = methods};

PyMODINIT_FUNC PyInit__sift(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("bmi2")) pext = pext_bmi2;
#endif
    return PyModule_Create(&module);
}
