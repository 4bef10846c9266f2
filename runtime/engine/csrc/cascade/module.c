/* CPython binding of the Cascade core: types _cascade.Bob and _cascade.Alice plus two helpers.
 * The heavy work runs with the GIL released; a busy flag rejects concurrent use of one object. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cascade_core.h"

static int raise_rc(int rc, const char *msg) {
    if (rc == CS_ENOMEM)
        PyErr_NoMemory();
    else
        PyErr_SetString(PyExc_ValueError, msg && *msg ? msg : "cascade error");
    return -1;
}

/* Common constructor arguments: (key, n_bits, qber, variant, seed, flags=0). */
typedef struct {
    Py_buffer key;
    unsigned long long n, seed;
    double qber;
    int variant, flags;
} ctor_args;

static int parse_ctor(PyObject *args, PyObject *kw, ctor_args *a) {
    static char *kwlist[] = {"key", "n_bits", "qber", "variant", "seed", "flags", NULL};
    PyObject *n_obj, *seed_obj;
    a->flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*OdiO|i", kwlist, &a->key, &n_obj, &a->qber, &a->variant,
                                     &seed_obj, &a->flags))
        return -1;
    a->n = PyLong_AsUnsignedLongLong(n_obj);
    if (PyErr_Occurred()) goto bad;
    a->seed = PyLong_AsUnsignedLongLong(seed_obj);
    if (PyErr_Occurred()) goto bad;
    if (a->n < 1 || a->n > (unsigned long long)(CS_MAX_BITS - 64)) {
        PyErr_Format(PyExc_ValueError, "n_bits=%llu outside [1, %u]", a->n, CS_MAX_BITS - 64);
        goto bad;
    }
    return 0;
bad:
    PyBuffer_Release(&a->key);
    return -1;
}

/* ------------------------------------------------------------------ Bob */

typedef struct {
    PyObject_HEAD cs_bob *b;
    int busy;
} BobObject;

static void Bob_dealloc(BobObject *self) {
    cs_bob_free(self->b);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Bob_init(BobObject *self, PyObject *args, PyObject *kw) {
    ctor_args a;
    if (parse_ctor(args, kw, &a)) return -1;
    char err[160] = "";
    cs_bob *b = NULL;
    int rc = cs_bob_new(&b, a.key.buf, (size_t)a.key.len, (uint32_t)a.n, a.qber, a.variant, a.seed, a.flags, err,
                        sizeof err);
    PyBuffer_Release(&a.key);
    if (rc) return raise_rc(rc, err);
    cs_bob_free(self->b);
    self->b = b;
    return 0;
}

static int bob_ok(BobObject *self) {
    if (!self->b) {
        PyErr_SetString(PyExc_RuntimeError, "Bob not initialised");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Bob is in use by another thread");
        return 0;
    }
    return 1;
}

static PyObject *msg_or_none(int rc, const uint8_t *msg, size_t len, const char *err) {
    if (rc) {
        raise_rc(rc, err);
        return NULL;
    }
    if (!msg) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)msg, (Py_ssize_t)len);
}

static PyObject *Bob_start(BobObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!bob_ok(self)) return NULL;
    const uint8_t *msg = NULL;
    size_t len = 0;
    int rc = cs_bob_start(self->b, &msg, &len);
    return msg_or_none(rc, msg, len, cs_bob_error(self->b));
}

static PyObject *Bob_handle(BobObject *self, PyObject *arg) {
    if (!bob_ok(self)) return NULL;
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE)) return NULL;
    const uint8_t *msg = NULL;
    size_t len = 0;
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS rc = cs_bob_handle(self->b, in.buf, (size_t)in.len, &msg, &len);
    Py_END_ALLOW_THREADS self->busy = 0;
    PyBuffer_Release(&in);
    return msg_or_none(rc, msg, len, cs_bob_error(self->b));
}

static PyObject *Bob_corrected(BobObject *self, PyObject *args) {
    Py_ssize_t outlen = -1;
    if (!PyArg_ParseTuple(args, "|n", &outlen)) return NULL;
    if (!bob_ok(self)) return NULL;
    Py_ssize_t need = (Py_ssize_t)((cs_bob_params(self->b)->n + 7) / 8);
    if (outlen < need) outlen = need;
    PyObject *out = PyBytes_FromStringAndSize(NULL, outlen);
    if (!out) return NULL;
    cs_bob_corrected(self->b, (uint8_t *)PyBytes_AS_STRING(out), (size_t)outlen);
    return out;
}

static PyObject *Bob_get_leaked(BobObject *self, void *c) {
    return self->b ? PyLong_FromUnsignedLongLong(cs_bob_leaked(self->b)) : PyLong_FromLong(0);
}
static PyObject *Bob_get_uses(BobObject *self, void *c) {
    return self->b ? PyLong_FromUnsignedLongLong(cs_bob_channel_uses(self->b)) : PyLong_FromLong(0);
}
static PyObject *Bob_get_corr(BobObject *self, void *c) {
    return self->b ? PyLong_FromUnsignedLongLong(cs_bob_corrections(self->b)) : PyLong_FromLong(0);
}
static PyObject *Bob_get_done(BobObject *self, void *c) { return PyBool_FromLong(self->b && cs_bob_done(self->b)); }

static PyMethodDef Bob_methods[] = {
    {"start", (PyCFunction)Bob_start, METH_NOARGS, "start() -> bytes: first request"},
    {"handle", (PyCFunction)Bob_handle, METH_O, "handle(reply) -> bytes | None"},
    {"corrected", (PyCFunction)Bob_corrected, METH_VARARGS, "corrected([length]) -> bytes"},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef Bob_getset[] = {
    {"leaked_bits", (getter)Bob_get_leaked, NULL, "parity bits received from Alice", NULL},
    {"channel_uses", (getter)Bob_get_uses, NULL, "request/reply round trips", NULL},
    {"corrections", (getter)Bob_get_corr, NULL, "bits Bob flipped", NULL},
    {"done", (getter)Bob_get_done, NULL, "protocol finished", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "runtime.engine._cascade.Bob",
    .tp_basicsize = sizeof(BobObject),
    .tp_dealloc = (destructor)Bob_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Bob(key, n_bits, qber, variant, seed, flags=0): Cascade side holding the noisy key.",
    .tp_methods = Bob_methods,
    .tp_getset = Bob_getset,
    .tp_init = (initproc)Bob_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ Alice */

typedef struct {
    PyObject_HEAD cs_alice *a;
    int busy;
} AliceObject;

static void Alice_dealloc(AliceObject *self) {
    cs_alice_free(self->a);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Alice_init(AliceObject *self, PyObject *args, PyObject *kw) {
    ctor_args a;
    if (parse_ctor(args, kw, &a)) return -1;
    char err[160] = "";
    cs_alice *al = NULL;
    int rc = cs_alice_new(&al, a.key.buf, (size_t)a.key.len, (uint32_t)a.n, a.qber, a.variant, a.seed, a.flags, err,
                          sizeof err);
    PyBuffer_Release(&a.key);
    if (rc) return raise_rc(rc, err);
    cs_alice_free(self->a);
    self->a = al;
    return 0;
}

static PyObject *Alice_handle(AliceObject *self, PyObject *arg) {
    if (!self->a) {
        PyErr_SetString(PyExc_RuntimeError, "Alice not initialised");
        return NULL;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Alice is in use by another thread");
        return NULL;
    }
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE)) return NULL;
    const uint8_t *msg = NULL;
    size_t len = 0;
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS rc = cs_alice_handle(self->a, in.buf, (size_t)in.len, &msg, &len);
    Py_END_ALLOW_THREADS self->busy = 0;
    PyBuffer_Release(&in);
    return msg_or_none(rc, msg, len, cs_alice_error(self->a));
}

static PyObject *Alice_get_leaked(AliceObject *self, void *c) {
    return self->a ? PyLong_FromUnsignedLongLong(cs_alice_leaked(self->a)) : PyLong_FromLong(0);
}

static PyMethodDef Alice_methods[] = {
    {"handle", (PyCFunction)Alice_handle, METH_O, "handle(request) -> bytes"},
    {NULL, NULL, 0, NULL},
};
static PyGetSetDef Alice_getset[] = {
    {"leaked_bits", (getter)Alice_get_leaked, NULL, "parity bits sent to Bob", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject AliceType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "runtime.engine._cascade.Alice",
    .tp_basicsize = sizeof(AliceObject),
    .tp_dealloc = (destructor)Alice_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Alice(key, n_bits, qber, variant, seed, flags=0): Cascade side answering parity requests.",
    .tp_methods = Alice_methods,
    .tp_getset = Alice_getset,
    .tp_init = (initproc)Alice_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ module functions */

static PyObject *mod_params(PyObject *self, PyObject *args) {
    unsigned long long n;
    double qber;
    int variant, flags = 0;
    if (!PyArg_ParseTuple(args, "Kdi|i", &n, &qber, &variant, &flags)) return NULL;
    if (n < 1 || n > (unsigned long long)(CS_MAX_BITS - 64)) {
        PyErr_Format(PyExc_ValueError, "n_bits=%llu outside [1, %u]", n, CS_MAX_BITS - 64);
        return NULL;
    }
    cs_params prm;
    char err[160] = "";
    int rc = cs_params_init(&prm, (uint32_t)n, qber, variant, 0, flags, err, sizeof err);
    if (rc) {
        raise_rc(rc, err);
        return NULL;
    }
    PyObject *ks = PyList_New(prm.npass), *nbs = PyList_New(prm.npass);
    if (!ks || !nbs) goto fail;
    for (int p = 0; p < prm.npass; p++) {
        PyList_SET_ITEM(ks, p, PyLong_FromUnsignedLong(prm.k[p]));
        PyList_SET_ITEM(nbs, p, PyLong_FromUnsignedLong(prm.nb[p]));
    }
    PyObject *d = Py_BuildValue("{s:i,s:N,s:N,s:O,s:O}", "passes", prm.npass, "block_sizes", ks, "blocks", nbs,
                                "reuse", prm.reuse ? Py_True : Py_False, "bpi", prm.bpi ? Py_True : Py_False);
    return d;
fail:
    Py_XDECREF(ks);
    Py_XDECREF(nbs);
    return NULL;
}

static PyObject *mod_inspect(PyObject *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE)) return NULL;
    int kind = 0;
    uint64_t round = 0, par = 0;
    char err[160] = "";
    int rc = cs_inspect(in.buf, (size_t)in.len, &kind, &round, &par, err, sizeof err);
    PyBuffer_Release(&in);
    if (rc) {
        raise_rc(rc, err);
        return NULL;
    }
    return Py_BuildValue("(sKK)", kind == 1 ? "request" : "reply", (unsigned long long)round,
                         (unsigned long long)par);
}

/* pump(bob, alice, first_request): relays the opaque messages between the two state machines until Bob
 * finishes, with the GIL released. Same machines and same bytes as over the network, minus the Python hop. */
static PyObject *mod_pump(PyObject *self, PyObject *args) {
    BobObject *bo;
    AliceObject *ao;
    Py_buffer first;
    if (!PyArg_ParseTuple(args, "O!O!y*", &BobType, &bo, &AliceType, &ao, &first)) return NULL;
    if (!bob_ok(bo) || !ao->a || ao->busy) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "Alice not initialised or in use");
        PyBuffer_Release(&first);
        return NULL;
    }
    int rc = CS_OK, side = 0;
    bo->busy = ao->busy = 1;
    Py_BEGIN_ALLOW_THREADS const uint8_t *msg = first.buf, *rep;
    size_t len = (size_t)first.len, rlen;
    while (msg) {
        if ((rc = cs_alice_handle(ao->a, msg, len, &rep, &rlen))) {
            side = 1;
            break;
        }
        if ((rc = cs_bob_handle(bo->b, rep, rlen, &msg, &len))) break;
    }
    Py_END_ALLOW_THREADS bo->busy = ao->busy = 0;
    PyBuffer_Release(&first);
    if (rc) {
        raise_rc(rc, side ? cs_alice_error(ao->a) : cs_bob_error(bo->b));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_seal(PyObject *self, PyObject *arg) {
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE)) return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, in.len + 4);
    if (out) cs_seal(in.buf, (size_t)in.len, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&in);
    return out;
}

static PyMethodDef methods[] = {
    {"seal", mod_seal, METH_O, "seal(body) -> body + checksum (testing aid)"},
    {"pump", mod_pump, METH_VARARGS, "pump(bob, alice, first_request): run the exchange to completion"},
    {"params", mod_params, METH_VARARGS, "params(n_bits, qber, variant_id, flags=0) -> dict"},
    {"inspect", mod_inspect, METH_O, "inspect(message) -> (kind, round, parity_bits)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cascade", "Cascade reconciliation core (C).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cascade(void) {
    if (PyType_Ready(&BobType) < 0 || PyType_Ready(&AliceType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&BobType);
    Py_INCREF(&AliceType);
    if (PyModule_AddObject(m, "Bob", (PyObject *)&BobType) < 0 ||
        PyModule_AddObject(m, "Alice", (PyObject *)&AliceType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "ORIGINAL", CS_ORIGINAL);
    PyModule_AddIntConstant(m, "OPTIMIZED", CS_OPTIMIZED);
    PyModule_AddIntConstant(m, "FLAG_RANDPERM", CS_FLAG_RANDPERM);
    PyModule_AddIntConstant(m, "FLAG_PARALLEL", CS_FLAG_PARALLEL);
    PyModule_AddIntConstant(m, "FLAG_SERIAL", CS_FLAG_SERIAL);
    PyModule_AddIntConstant(m, "FLAG_BALANCED", CS_FLAG_BALANCED);
    PyModule_AddIntConstant(m, "FLAG_NOREUSE", CS_FLAG_NOREUSE);
    PyModule_AddIntConstant(m, "FLAG_NOBPI", CS_FLAG_NOBPI);
    PyModule_AddIntConstant(m, "FLAG_REUSE", CS_FLAG_REUSE);
    PyModule_AddIntConstant(m, "FLAG_BPI", CS_FLAG_BPI);
    return m;
}
