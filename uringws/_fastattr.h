/* Fast access to the __slots__ fields of the Python objects a compiled hot path reads on every call.
 *
 * The C twins on the hot path (uringws/tls/_engine.c: Receive and Send, uringws/ws/_speedups.c: ViewSink,
 * uringws/ring/_ringc.c: RecvHook) keep no copy of the state of the Python objects they stand in for: they read and write those objects' fields, a few
 * dozen times per received message. PyObject_GetAttr on a slot costs a type lookup and a descriptor call each
 * time. Here a field is found once per type (its member descriptor's offset in the object) and then read or
 * written in place, as the descriptor itself would (T_OBJECT_EX semantics: NULL means unset).
 *
 * Anything that is not a plain object slot of the exact type seen (a subclass that turns the name into a
 * property, a type never resolved, an unset slot) goes through PyObject_GetAttr / PyObject_SetAttr: the fast
 * way is only ever taken where it is equivalent. Uses PyMemberDescrObject (CPython's non-limited API, the same
 * in 3.11-3.13).
 */
#ifndef URINGWS_FASTATTR_H
#define URINGWS_FASTATTR_H

#include <Python.h>
#include <structmember.h>

#if PY_VERSION_HEX >= 0x030C0000
#define FA_T_OBJECT_EX Py_T_OBJECT_EX
#define FA_READONLY Py_READONLY
#define FA_AUDIT_READ Py_AUDIT_READ
#else
#define FA_T_OBJECT_EX T_OBJECT_EX
#define FA_READONLY READONLY
#define FA_AUDIT_READ READ_RESTRICTED
#endif

/* The fields of one type: offsets[i] for names[i], or -1 where the generic path must be used. */
typedef struct {
    PyTypeObject *type;  /* a strong reference (NULL: a free entry) */
    Py_ssize_t offsets[32];
} FastAttrs;

/* A few types' fields for one list of names, shared by every object of a C type (a per-object table would cost
 * ~260 bytes per connection, and idle connections are counted in bytes). Entries are resolved on first sight of
 * a type and kept for the life of the process; with more types than entries, the oldest is replaced. */
#define FA_TYPES 4
typedef struct {
    FastAttrs entries[FA_TYPES];
    int next;
} FastAttrsCache;

/* The offset of name's plain object slot in objects of type tp, or -1 (not a slot, or tp has its own
 * __getattribute__/__getattr__/__setattr__). Never fails. */
static inline Py_ssize_t
fa_offset(PyTypeObject *tp, PyObject *name)
{
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr) {
        return -1;
    }
    PyObject *d = PyObject_GetAttr((PyObject *)tp, name);  /* a slot's member descriptor itself */
    if (d == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    /* A plain object slot of a base of tp (not a metaclass attribute), readable and writable as is. */
    if (Py_IS_TYPE(d, &PyMemberDescr_Type) && PyType_IsSubtype(tp, PyDescr_TYPE(d))) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == FA_T_OBJECT_EX && !(m->flags & (FA_READONLY | FA_AUDIT_READ)) && m->offset > 0) {
            offset = m->offset;
        }
    }
    Py_DECREF(d);
    return offset;
}

/* Resolve the n names (n <= 32) for type tp. Never fails: unresolvable names get -1. */
static inline void
fa_resolve(FastAttrs *fa, PyTypeObject *tp, PyObject *const *names, int n)
{
    Py_XSETREF(fa->type, (PyTypeObject *)Py_NewRef(tp));
    for (int i = 0; i < n; i++) {
        fa->offsets[i] = fa_offset(tp, names[i]);
    }
}

/* The entry of cache for type tp (resolved now if it has none). */
static inline FastAttrs *
fa_lookup(FastAttrsCache *cache, PyTypeObject *tp, PyObject *const *names, int n)
{
    for (int i = 0; i < FA_TYPES; i++) {
        if (cache->entries[i].type == tp) {
            return &cache->entries[i];
        }
    }
    FastAttrs *fa = &cache->entries[cache->next];
    cache->next = (cache->next + 1) % FA_TYPES;
    fa_resolve(fa, tp, names, n);
    return fa;
}

/* obj.<names[i]>: a new reference, or NULL with an exception set. */
static inline PyObject *
fa_get(FastAttrs *fa, PyObject *obj, PyObject *const *names, int i)
{
    if (Py_TYPE(obj) == fa->type && fa->offsets[i] >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + fa->offsets[i]);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(obj, names[i]);
}

/* obj.<names[i]> = value: 0, or -1 with an exception set. */
static inline int
fa_set(FastAttrs *fa, PyObject *obj, PyObject *const *names, int i, PyObject *value)
{
    if (Py_TYPE(obj) == fa->type && fa->offsets[i] >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + fa->offsets[i]);
        PyObject *old = *slot;
        *slot = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, names[i], value);
}

/* The truth of obj.<names[i]>: 1, 0, or -1 with an exception set (True, False and None without a call). */
static inline int
fa_true(FastAttrs *fa, PyObject *obj, PyObject *const *names, int i)
{
    PyObject *v = fa_get(fa, obj, names, i);
    if (v == NULL) {
        return -1;
    }
    int r = v == Py_True ? 1 : (v == Py_False || v == Py_None) ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* obj.<names[i]> as a Py_ssize_t: 0, or -1 with an exception set. */
static inline int
fa_ssize(FastAttrs *fa, PyObject *obj, PyObject *const *names, int i, Py_ssize_t *out)
{
    PyObject *v = fa_get(fa, obj, names, i);
    if (v == NULL) {
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* obj.<names[i]> = value (an int): 0, or -1 with an exception set. */
static inline int
fa_set_ssize(FastAttrs *fa, PyObject *obj, PyObject *const *names, int i, Py_ssize_t value)
{
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL) {
        return -1;
    }
    int r = fa_set(fa, obj, names, i, v);
    Py_DECREF(v);
    return r;
}

/* One field of whichever type was seen last, for a call site that reads one name of one kind of object (the event
 * loop's fields, read once per iteration): a miss (another type) resolves again, and the generic path is taken
 * wherever the fast one would not be equivalent, as above. */
typedef struct {
    PyTypeObject *type;  /* a strong reference, or NULL */
    Py_ssize_t offset;
} FastAttr1;

/* obj.name: a new reference, or NULL with an exception set. */
static inline PyObject *
fa1_get(FastAttr1 *c, PyObject *obj, PyObject *name)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (c->type != tp) {
        Py_XSETREF(c->type, (PyTypeObject *)Py_NewRef(tp));
        c->offset = fa_offset(tp, name);
    }
    if (c->offset >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + c->offset);
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.name = value: 0, or -1 with an exception set. */
static inline int
fa1_set(FastAttr1 *c, PyObject *obj, PyObject *name, PyObject *value)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (c->type != tp) {
        Py_XSETREF(c->type, (PyTypeObject *)Py_NewRef(tp));
        c->offset = fa_offset(tp, name);
    }
    if (c->offset >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + c->offset);
        PyObject *old = *slot;
        *slot = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

/* The truth of obj.name: 1, 0, or -1 with an exception set. */
static inline int
fa1_true(FastAttr1 *c, PyObject *obj, PyObject *name)
{
    PyObject *v = fa1_get(c, obj, name);
    if (v == NULL) {
        return -1;
    }
    int r = v == Py_True ? 1 : (v == Py_False || v == Py_None) ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

#endif
