/*
 * The CPython glue the native modules share: the one-thread-at-a-time check every method starts with, the
 * constructors' fd and vnet header checks, the running counters added into a core.stats.Stats, and a module's
 * creation (its type, its API version).
 * Header-only (static inline functions), so each extension stays one translation unit built by setup.py.
 */
#ifndef USBNETD_PYGLUE_H
#define USBNETD_PYGLUE_H

#include <Python.h>

/* A method may run: __init__ ran, and no other thread is inside one (`busy` is set around GIL-free work). */
static inline int glue_check_idle(int ready, int busy, const char *type)
{
    if (!ready) {
        PyErr_Format(PyExc_RuntimeError, "%s.__init__ was not called", type);
        return -1;
    }
    if (busy) {
        PyErr_Format(PyExc_RuntimeError, "%s is in use by another thread", type);
        return -1;
    }
    return 0;
}

/* The fd and vnet header length every constructor takes: fd >= 0, vnet_hdr_len 0 or `vnet_len` (a struct
 * virtio_net_hdr without num_buffers). -1 with ValueError. */
static inline int glue_check_fd_vnet(int fd, int vnet, int vnet_len)
{
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "fd must be >= 0");
        return -1;
    }
    if (vnet != 0 && vnet != vnet_len) {
        PyErr_Format(PyExc_ValueError, "vnet_hdr_len must be 0 or %d", vnet_len);
        return -1;
    }
    return 0;
}

/* Add what each counter gained since the last call (now[i] - reported[i]) to the attribute names[i] of
 * `stats`, and remember it as reported. names: interned at module init (glue_intern). -1 with an exception. */
static inline int glue_add_counters(PyObject *stats, PyObject *const *names, const unsigned long long *now,
                             unsigned long long *reported, int n)
{
    for (int i = 0; i < n; i++) {
        unsigned long long delta = now[i] - reported[i];
        if (!delta)
            continue;
        PyObject *cur = PyObject_GetAttr(stats, names[i]);
        if (!cur)
            return -1;
        PyObject *d = PyLong_FromUnsignedLongLong(delta);
        PyObject *sum = d ? PyNumber_Add(cur, d) : NULL;
        Py_DECREF(cur);
        Py_XDECREF(d);
        if (!sum)
            return -1;
        int r = PyObject_SetAttr(stats, names[i], sum);
        Py_DECREF(sum);
        if (r < 0)
            return -1;
        reported[i] = now[i];
    }
    return 0;
}

/* Intern the counter names once (module init). -1 with an exception. */
static inline int glue_intern(PyObject **names, const char *const *strs, int n)
{
    for (int i = 0; i < n; i++)
        if (!names[i] && !(names[i] = PyUnicode_InternFromString(strs[i])))
            return -1;
    return 0;
}

/* The module with its one type under `type_name` and API_VERSION = `api`; NULL with an exception. */
static inline PyObject *glue_module(PyModuleDef *def, PyTypeObject *type, const char *type_name, int api)
{
    if (PyType_Ready(type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(def);
    if (!m)
        return NULL;
    Py_INCREF(type);
    if (PyModule_AddObject(m, type_name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "API_VERSION", api) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

static inline void glue_hooks_release(PyObject *capsule)
{
    Py_XDECREF((PyObject *)PyCapsule_GetContext(capsule));
}

/* A capsule named `name` pointing at `hooks` (a struct inside `owner`), which keeps `owner` alive. */
static inline PyObject *glue_hooks_capsule(void *hooks, const char *name, PyObject *owner)
{
    PyObject *cap = PyCapsule_New(hooks, name, glue_hooks_release);
    if (!cap)
        return NULL;
    if (PyCapsule_SetContext(cap, Py_NewRef(owner)) < 0) {
        Py_DECREF(owner);
        Py_DECREF(cap);
        return NULL;
    }
    return cap;
}

#endif
