/* Packed bit-buffer primitives shared by the engine (bit i = (buf[i>>3] >> (7 - (i&7))) & 1). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* parity(buf, n_bits) -> int: XOR of the first n_bits bits. */
static PyObject *bits_parity(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &b, &n)) return NULL;
    if (n < 0 || n > b.len * 8) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "n_bits=%zd outside the buffer of %zd bits", n, b.len * 8);
        return NULL;
    }
    const uint8_t *p = b.buf;
    unsigned acc = 0;
    Py_ssize_t full = n >> 3;
    for (Py_ssize_t i = 0; i < full; i++) acc ^= p[i];
    if (n & 7) acc ^= p[full] & (uint8_t)(0xFF00u >> (n & 7));
    PyBuffer_Release(&b);
    return PyLong_FromLong(__builtin_parity(acc));
}

static PyMethodDef methods[] = {
    {"parity", bits_parity, METH_VARARGS, "parity(buf, n_bits) -> 0 or 1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_bits", "Packed bit-buffer primitives.", -1, methods};

PyMODINIT_FUNC PyInit__bits(void) { return PyModule_Create(&module); }
