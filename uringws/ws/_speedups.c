/* Optional compiled twin of uringws.ws.frames.apply_mask_py (RFC 6455 §5.3 masking).
 *
 * Profiling showed the pure-Python mask at ~2.6 ns/B for 1 MiB messages, most of the server's CPU for large
 * echoes over TLS. This module XORs 8 bytes at a time instead, or 32 with AVX2 when the CPU has it (checked
 * at import; URINGWS_NO_AVX2=1 keeps the portable loop, see AVX2 below). It is optional: setup.py builds it with
 * optional=True and frames.py falls back to the pure version when it is missing or URINGWS_NO_SPEEDUPS=1.
 *
 * Contract (kept identical to the pure version, and tested against it):
 *   apply_mask(data, mask) -> bytes
 *   data: any bytes-like object (non-contiguous buffers are copied to a contiguous one first);
 *   mask: a bytes-like object of exactly 4 bytes, else ValueError("mask must be 4 bytes");
 *   anything that is not bytes-like raises TypeError.
 *
 * A second function, parse_messages, is the twin of frames.parse_messages_py: it consumes a run of complete,
 * whole, small data messages (the common case under load) in one call, see its comment below. The type
 * FrameBuffer, twin of frames.FrameBufferPy, gathers and unmasks a large frame's payload as it arrives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "../_fastattr.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

/* Below this size releasing and re-taking the GIL costs more than the XOR itself (about 10 µs of work). */
#define RELEASE_GIL_THRESHOLD (128 * 1024)

static const char MASK_LENGTH_ERROR[] = "mask must be 4 bytes";

/* XOR src with the repeated 4-byte mask into dst. memcpy keeps the word loads and stores legal at any
 * alignment (memoryview slices start at odd offsets); compilers turn them into plain unaligned moves. */
static void
xor_mask_portable(const unsigned char *src, unsigned char *dst, Py_ssize_t n, const unsigned char *mask)
{
    unsigned char m8[8];
    uint64_t m64;
    Py_ssize_t i = 0;

    /* Byte order independent: the word holds the mask bytes in memory order, like the data words. */
    memcpy(m8, mask, 4);
    memcpy(m8 + 4, mask, 4);
    memcpy(&m64, m8, 8);

    /* Four independent words per iteration so the loads and stores overlap. */
    for (; i + 32 <= n; i += 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, src + i, 8);
        memcpy(&w1, src + i + 8, 8);
        memcpy(&w2, src + i + 16, 8);
        memcpy(&w3, src + i + 24, 8);
        w0 ^= m64;
        w1 ^= m64;
        w2 ^= m64;
        w3 ^= m64;
        memcpy(dst + i, &w0, 8);
        memcpy(dst + i + 8, &w1, 8);
        memcpy(dst + i + 16, &w2, 8);
        memcpy(dst + i + 24, &w3, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= m64;
        memcpy(dst + i, &w, 8);
    }
    /* i is a multiple of 8 here, so i & 3 is still the payload offset modulo 4. */
    for (; i < n; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

/* Whether xor_mask uses the AVX2 loop: decided once at import (module_exec) from the CPU, unless the
 * environment variable URINGWS_NO_AVX2=1 forces the portable loop (the tests compare both). */
static int use_avx2 = 0;

#ifdef HAVE_AVX2_PATH
/* The same XOR, 32 bytes per instruction. Compiled for AVX2 whatever the build flags say (target attribute)
 * and only ever called after __builtin_cpu_supports("avx2"). Eight vectors per iteration, each loaded, XORed and
 * stored before the next is loaded: src and dst may be the same buffer (unmasking in place), and in this order the
 * compiler folds each load into its XOR (two instructions per 32 bytes; loading four before storing any took
 * four: 123k instructions per MiB against 78k). i stays a multiple of 32, hence of 4: the tail continues with the
 * mask in phase. */
#define XOR32(k) _mm256_storeu_si256((__m256i *)(dst + i + (k)), \
                                     _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + i + (k))), m))
__attribute__((target("avx2"))) static void
xor_mask_avx2(const unsigned char *src, unsigned char *dst, Py_ssize_t n, const unsigned char *mask)
{
    uint32_t m32;
    Py_ssize_t i = 0;
    memcpy(&m32, mask, 4);
    const __m256i m = _mm256_set1_epi32((int)m32);
    for (; i + 256 <= n; i += 256) {
        XOR32(0); XOR32(32); XOR32(64); XOR32(96); XOR32(128); XOR32(160); XOR32(192); XOR32(224);
    }
    for (; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(v, m));
    }
    if (i < n) {
        xor_mask_portable(src + i, dst + i, n - i, mask);
    }
}
#undef XOR32
#endif

/* XOR src with the repeated 4-byte mask (mask[0] applies to src[0]) into dst, by the fastest loop available.
 * Below 64 bytes the portable loop wins: no vector setup. */
static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n, const unsigned char *mask)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx2 && n >= 64) {
        xor_mask_avx2(src, dst, n, mask);
        return;
    }
#endif
    xor_mask_portable(src, dst, n, mask);
}

/* Fill *view from obj. A non-contiguous buffer (a strided memoryview) is copied into a bytes object first,
 * as the pure version does; *owner then holds that copy and must be released by the caller. */
static int
get_contiguous(PyObject *obj, Py_buffer *view, PyObject **owner)
{
    *owner = NULL;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) {
        return 0;
    }
    /* Not a buffer at all: PyObject_GetBuffer has already raised TypeError. */
    if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
        return -1;
    }
    PyErr_Clear();
    *owner = PyBytes_FromObject(obj);
    if (*owner == NULL) {
        return -1;
    }
    if (PyObject_GetBuffer(*owner, view, PyBUF_SIMPLE) < 0) {
        Py_CLEAR(*owner);
        return -1;
    }
    return 0;
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[2] = {"data", "mask"};
    PyObject *argv[2] = {NULL, NULL};
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    Py_buffer data, mask;
    PyObject *data_owner = NULL, *mask_owner = NULL, *out = NULL;
    (void)module;

    /* Same calling convention as the pure function: (data, mask), positionally or by keyword. */
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "apply_mask() takes 2 positional arguments but %zd were given", nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        argv[i] = args[i];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int slot = -1;
        for (int j = 0; j < 2; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                slot = j;
            }
        }
        if (slot < 0) {
            PyErr_Format(PyExc_TypeError, "apply_mask() got an unexpected keyword argument '%U'", key);
            return NULL;
        }
        if (argv[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "apply_mask() got multiple values for argument '%s'", names[slot]);
            return NULL;
        }
        argv[slot] = args[nargs + k];
    }
    if (argv[0] == NULL || argv[1] == NULL) {
        PyErr_Format(PyExc_TypeError, "apply_mask() missing required argument '%s'",
                     argv[0] == NULL ? names[0] : names[1]);
        return NULL;
    }

    if (get_contiguous(argv[0], &data, &data_owner) < 0) {
        return NULL;
    }
    if (get_contiguous(argv[1], &mask, &mask_owner) < 0) {
        goto release_data;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, MASK_LENGTH_ERROR);
        goto release_mask;
    }
    /* Written straight into a fresh bytes object: one pass over the payload, no intermediate copy. */
    out = PyBytes_FromStringAndSize(NULL, data.len);
    if (out == NULL) {
        goto release_mask;
    }
    if (data.len >= RELEASE_GIL_THRESHOLD) {
        /* Safe without the GIL: the exported buffers cannot be resized or freed while held, and `out` is
         * not visible to any other thread yet. */
        Py_BEGIN_ALLOW_THREADS
        xor_mask(data.buf, (unsigned char *)PyBytes_AS_STRING(out), data.len, mask.buf);
        Py_END_ALLOW_THREADS
    }
    else {
        xor_mask(data.buf, (unsigned char *)PyBytes_AS_STRING(out), data.len, mask.buf);
    }

release_mask:
    PyBuffer_Release(&mask);
    Py_XDECREF(mask_owner);
release_data:
    PyBuffer_Release(&data);
    Py_XDECREF(data_owner);
    return out;
}

/* parse_messages()'s loop over buf[pos:n]: the position it stopped at, or -1 with an exception set. Each payload
 * goes to sink(payload), or with `collect` is appended to the list sink. */
static Py_ssize_t
parse_run(const unsigned char *buf, const Py_ssize_t n, Py_ssize_t pos, int masked, Py_ssize_t limit,
          PyObject *sink, int collect)
{
    const unsigned char mbit = masked ? 0x80 : 0;

    while (n - pos >= 2) {
        const unsigned char b0 = buf[pos];
        const unsigned char b1 = buf[pos + 1];
        Py_ssize_t length, start, end;
        if ((b0 != 0x81 && b0 != 0x82) || (b1 & 0x80) != mbit) {
            break;
        }
        length = b1 & 0x7F;
        start = pos + 2;
        if (length == 127) {
            if (limit < 65536 || n - pos < 10) {
                break;
            }
            uint64_t wide = 0;
            for (int k = 2; k < 10; k++) {
                wide = (wide << 8) | buf[pos + k];
            }
            /* Compared as unsigned 64-bit before any arithmetic: a length with its top bit set (a protocol
             * error) or of more than 4 GiB on any build is above any limit a Py_ssize_t can hold, or stops at
             * the completeness check below; the general parser reports it. */
            if (wide > (uint64_t)limit || wide <= 127) {
                break;  /* (a non-minimal encoding of <= 127 is left to the general parser, as in the pure twin) */
            }
            length = (Py_ssize_t)wide;
            start = pos + 10;
        }
        else if (length == 126) {
            if (n - pos < 4) {
                break;
            }
            length = ((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3];
            start = pos + 4;
        }
        if (length > limit) {
            break;
        }
        /* Incomplete frame; written as a difference so that no sum can overflow whatever the length. */
        if (length > n - start - (masked ? 4 : 0)) {
            break;
        }
        end = start + (masked ? 4 : 0) + length;
        if (end > n) {
            break;
        }
        PyObject *payload = PyBytes_FromStringAndSize(NULL, length);
        if (payload == NULL) {
            return -1;
        }
        if (masked) {
            xor_mask(buf + start + 4, (unsigned char *)PyBytes_AS_STRING(payload), length, buf + start);
        }
        else {
            memcpy(PyBytes_AS_STRING(payload), buf + start, (size_t)length);
        }
        if (b0 == 0x81) {
            PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), length, "strict");
            Py_DECREF(payload);
            if (text == NULL) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    PyErr_Clear();
                    break;  /* the general parser fails the connection with 1007 */
                }
                return -1;
            }
            payload = text;
        }
        if (collect) {
            int r = PyList_Append(sink, payload);
            Py_DECREF(payload);
            if (r < 0) {
                return -1;
            }
        }
        else {
            PyObject *res = PyObject_CallOneArg(sink, payload);
            Py_DECREF(payload);
            if (res == NULL) {
                return -1;
            }
            Py_DECREF(res);
        }
        pos = end;
    }
    return pos;
}

/* parse_messages(buf, pos, masked, sink, limit=65535) -> int
 *
 * Twin of frames.parse_messages_py. Starting at buf[pos], take each complete frame that is a whole data
 * message on its own: FIN set, RSV1-3 clear, opcode text (1) or binary (2), mask bit equal to `masked`, a
 * length of at most `limit` (64-bit length fields only when limit >= 64 KiB), and the whole frame present.
 * Call sink(payload) for each, payload unmasked, as bytes (binary) or str (text, strict UTF-8). Stop at the first frame that is anything else,
 * incomplete, or text that is not valid UTF-8 (the caller's general parser then reports it), and return the
 * position of that frame (len(buf) if everything was taken). Errors raised by sink propagate. */
static PyObject *
parse_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, limit = 65535;
    int masked;
    PyObject *sink;
    (void)module;

    if (nargs != 4 && nargs != 5) {
        PyErr_Format(PyExc_TypeError, "parse_messages() takes 4 or 5 positional arguments but %zd were given",
                     nargs);
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (nargs == 5) {
        limit = PyLong_AsSsize_t(args[4]);
        if (limit == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (limit < 0) {
            PyErr_SetString(PyExc_ValueError, "limit must not be negative");
            return NULL;
        }
    }
    masked = PyObject_IsTrue(args[2]);
    if (masked < 0) {
        return NULL;
    }
    sink = args[3];
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }
    pos = parse_run(view.buf, view.len, pos, masked, limit, sink, 0);
    PyBuffer_Release(&view);
    return pos < 0 ? NULL : PyLong_FromSsize_t(pos);
}

/* FrameBuffer(length, mask) -- twin of frames.FrameBufferPy.
 *
 * Gathers the payload of one large frame as its bytes arrive, unmasking on the way, straight into the bytes
 * object that take() returns: one pass over each payload byte, instead of a receive buffer that grows (and is
 * copied as it grows), a copy out of it and an unmasking copy. The bytes object is allocated when the frame's
 * header arrives; its pages are touched only as payload arrives. It is not visible to Python code before
 * take(), which is what makes filling it in place legal.
 *
 *   FrameBuffer(length: int, mask: bytes-like of 4 bytes | None)
 *   feed(data, start=0) -> int   takes min(len(data) - start, remaining) bytes of data[start:]; returns that
 *   remaining                     payload bytes still expected
 *   take() -> bytes               the whole payload, unmasked; ValueError before it is complete; once only
 */
typedef struct {
    PyObject_HEAD
    PyObject *out;         /* the payload's bytes object, NULL after take() */
    Py_ssize_t length;
    Py_ssize_t filled;
    int masked;
    unsigned char mask[4];
} FrameBufferObject;

/* Copy n payload bytes from src into the frame's buffer where the last chunk ended, unmasking with the mask's
 * phase at that position: feed()'s work, also done by ViewSink for the runs it takes. */
static void
framebuffer_fill(FrameBufferObject *self, const unsigned char *src, Py_ssize_t n)
{
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(self->out) + self->filled;
    if (self->masked) {
        unsigned char rotated[4];
        Py_ssize_t k = self->filled & 3;
        for (int i = 0; i < 4; i++) {
            rotated[i] = self->mask[(k + i) & 3];
        }
        xor_mask(src, dst, n, rotated);
    }
    else {
        memcpy(dst, src, (size_t)n);
    }
    self->filled += n;
}

static int
framebuffer_init(FrameBufferObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"length", "mask", NULL};
    Py_ssize_t length;
    PyObject *mask_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nO:FrameBuffer", kwlist, &length, &mask_obj)) {
        return -1;
    }
    if (length < 0) {
        PyErr_SetString(PyExc_ValueError, "length must not be negative");
        return -1;
    }
    self->masked = mask_obj != Py_None;
    if (self->masked) {
        Py_buffer mask;
        if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        if (mask.len != 4) {
            PyBuffer_Release(&mask);
            PyErr_SetString(PyExc_ValueError, MASK_LENGTH_ERROR);
            return -1;
        }
        memcpy(self->mask, mask.buf, 4);
        PyBuffer_Release(&mask);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, length);
    if (out == NULL) {
        return -1;
    }
    Py_XSETREF(self->out, out);
    self->length = length;
    self->filled = 0;
    return 0;
}

static void
framebuffer_dealloc(FrameBufferObject *self)
{
    Py_XDECREF(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
framebuffer_feed(FrameBufferObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    Py_ssize_t start = 0, n;
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "feed() takes 1 or 2 positional arguments but %zd were given", nargs);
        return NULL;
    }
    if (nargs == 2) {
        start = PyLong_AsSsize_t(args[1]);
        if (start == -1 && PyErr_Occurred()) {
            return NULL;
        }
    }
    if (self->out == NULL) {
        PyErr_SetString(PyExc_ValueError, "feed() after take()");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 0 || start > data.len) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    n = data.len - start;
    if (n > self->length - self->filled) {
        n = self->length - self->filled;
    }
    framebuffer_fill(self, (const unsigned char *)data.buf + start, n);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(n);
}

static PyObject *
framebuffer_take(FrameBufferObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->out == NULL) {
        PyErr_SetString(PyExc_ValueError, "take() called twice");
        return NULL;
    }
    if (self->filled != self->length) {
        PyErr_Format(PyExc_ValueError, "frame incomplete: %zd of %zd bytes", self->filled, self->length);
        return NULL;
    }
    PyObject *out = self->out;
    self->out = NULL;
    return out;
}

static PyObject *
framebuffer_remaining(FrameBufferObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->length - self->filled);
}

static PyMethodDef framebuffer_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))framebuffer_feed, METH_FASTCALL,
     "feed(data, start=0) -> int\n\nTake up to `remaining` bytes of data[start:]; return how many were taken."},
    {"take", (PyCFunction)framebuffer_take, METH_NOARGS, "take() -> bytes\n\nThe complete payload, unmasked."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef framebuffer_getset[] = {
    {"remaining", (getter)framebuffer_remaining, NULL, "payload bytes still expected", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrameBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.FrameBuffer",
    .tp_basicsize = sizeof(FrameBufferObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameBuffer(length, mask)\n\nGathers and unmasks one large frame's payload as it arrives.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)framebuffer_init,
    .tp_dealloc = (destructor)framebuffer_dealloc,
    .tp_methods = framebuffer_methods,
    .tp_getset = framebuffer_getset,
};

/* ViewSink(connection, no_limit, budget_min) -- the compiled twin of Connection.received_view (connection.py).
 *
 * What uringws's TLS layer calls with each run of decrypted bytes (a view lent for the call). Its common case,
 * a WebSocket connection between messages that receives only whole unfragmented, uncompressed text or binary
 * messages, is done here without the Python frames of Connection.received_view and Protocol.receive_data: the
 * frames are parsed (parse_run), every message goes to the parser's sink, the counters move as receive_data moves
 * them, and the waiting recv() is woken as Connection.received_view wakes it. All or nothing: when anything in the
 * bytes is not such a message, or the parser is in any other state, nothing is delivered here and the Python
 * Connection._received_view takes the whole view (the reference, and what URINGWS_PURE=1 runs). Attributes are
 * read and written on the Python objects: they keep the only copy of the state. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *conn;
    Py_ssize_t no_limit, budget_min;
} ViewSinkObject;

enum { V_PROTO, V_RECEIVED_VIEW, V_DISCARD_INPUT, V_INPUT_PENDING, V_BUF, V_HDR, V_SMALL_OK, V_MSG_OPCODE,
       V_FRAME_BUDGET, V_EXPECT_MASKED, V_MAX_SIZE, V_BUDGET, V_EMIT, V_MESSAGES_IN, V_BYTES_IN, V_EVENTS, V_OUT,
       V_PROCESS, V_MESSAGES, V_RECV_WAITER, V_DONE, V_SET_RESULT, V_MAX_QUEUE, V_MESSAGES_ARRIVED, V_GATHER,
       V_HDR_END, V_STREAM_FRAGMENTS, V_RESERVED, V_DEFLATE, V_MSG_SIZE, V_MSG_WIRE, V_COUNT };
static const char *const view_names[V_COUNT] = {
    "proto", "_received_view", "_discard_input", "input_pending", "_buf", "_hdr", "_small_ok", "_msg_opcode",
    "frame_budget", "_expect_masked", "max_size", "budget", "_emit", "messages_in", "bytes_in", "_events", "_out",
    "_process", "_messages", "_recv_waiter", "done", "set_result", "_max_queue", "_messages_arrived", "_gather",
    "_hdr_end", "stream_fragments", "_reserved", "deflate", "_msg_size", "_msg_wire",
};
static PyObject *view_str[V_COUNT];
/* Where the fields of Connections and of their Protocols are (both kinds of type share this cache). */
static FastAttrsCache view_cache;

static PyObject *ViewSink_vectorcall(ViewSinkObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
ViewSink_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *conn;
    Py_ssize_t no_limit, budget_min;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "ViewSink() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "Onn:ViewSink", &conn, &no_limit, &budget_min)) {
        return NULL;
    }
    ViewSinkObject *self = PyObject_GC_New(ViewSinkObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)ViewSink_vectorcall;
    self->conn = Py_NewRef(conn);
    self->no_limit = no_limit;
    self->budget_min = budget_min;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
ViewSink_traverse(ViewSinkObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->conn);
    return 0;
}

static int
ViewSink_clear(ViewSinkObject *self)
{
    Py_CLEAR(self->conn);
    return 0;
}

static void
ViewSink_dealloc(ViewSinkObject *self)
{
    PyObject_GC_UnTrack(self);
    ViewSink_clear(self);
    PyObject_GC_Del(self);
}

/* The truth of an attribute: 1, 0, or -1 with an exception set. */
static int
attr_true(FastAttrs *fa, PyObject *obj, int name)
{
    return fa_true(fa, obj, view_str, name);
}

static int
attr_is_none(FastAttrs *fa, PyObject *obj, int name)
{
    PyObject *v = fa_get(fa, obj, view_str, name);
    if (v == NULL) {
        return -1;
    }
    int r = v == Py_None;
    Py_DECREF(v);
    return r;
}

/* obj.name += n */
static int
attr_add(FastAttrs *fa, PyObject *obj, int name, Py_ssize_t n)
{
    PyObject *v = fa_get(fa, obj, view_str, name);
    if (v == NULL) {
        return -1;
    }
    PyObject *d = PyLong_FromSsize_t(n);
    if (d == NULL) {
        Py_DECREF(v);
        return -1;
    }
    PyObject *sum = PyNumber_Add(v, d);
    Py_DECREF(v);
    Py_DECREF(d);
    if (sum == NULL) {
        return -1;
    }
    int r = fa_set(fa, obj, view_str, name, sum);
    Py_DECREF(sum);
    return r;
}

/* receive_data's ending when it delivered `delivered` messages of n bytes and left nothing pending: its return value
 * into *wants. 0, or -1 with an exception set. */
static int
receive_ending(FastAttrs *fa, PyObject *proto, Py_ssize_t delivered, Py_ssize_t n, int *wants)
{
    int r;
    if ((delivered && attr_add(fa, proto, V_MESSAGES_IN, delivered) < 0) || attr_add(fa, proto, V_BYTES_IN, n) < 0) {
        return -1;
    }
    if ((r = attr_true(fa, proto, V_EVENTS)) == 0) {
        r = attr_true(fa, proto, V_OUT);
    }
    if (r < 0) {
        return -1;
    }
    *wants = r;
    return 0;
}

/* Protocol.receive_data(view) with a large frame's payload being gathered (a FrameBuffer in _gather) when the view
 * holds only more of that payload: fed to the FrameBuffer; when it completes the frame, a whole binary message
 * (FIN, not compressed, not streamed as fragments, no budget reservation) goes to the sink as _on_data gives it. A
 * view that runs past the frame's end, or a frame that ends otherwise, is not taken (receive_data's general path
 * does it). 1 done, 0 not taken (nothing was done), -1 error. */
static int
receive_gather(FastAttrs *fa, PyObject *proto, PyObject *hdr, PyObject *data, int *wants)
{
    int r;
    PyObject *gather = fa_get(fa, proto, view_str, V_GATHER);
    if (gather == NULL) {
        return -1;
    }
    if (Py_TYPE(gather) != &FrameBufferType || !PyTuple_Check(hdr) || PyTuple_GET_SIZE(hdr) != 6) {
        Py_DECREF(gather);
        return 0;
    }
    FrameBufferObject *fb = (FrameBufferObject *)gather;
    Py_buffer view;
    if (fb->out == NULL || PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();  /* (a view that is not one contiguous run of bytes: receive_data copies it first) */
        Py_DECREF(gather);
        return 0;
    }
    Py_ssize_t n = view.len, remaining = fb->length - fb->filled;
    int completes = n == remaining;
    if (n == 0 || n > remaining) {
        goto not_taken;
    }
    if (completes) {
        /* _on_data's fast path, binary: FIN, not RSV1, opcode 2, not stream_fragments, nothing reserved */
        if (PyTuple_GET_ITEM(hdr, 0) != Py_True || PyTuple_GET_ITEM(hdr, 1) != Py_False) {
            goto not_taken;
        }
        long opcode = PyLong_AsLong(PyTuple_GET_ITEM(hdr, 2));
        if (opcode != 2) {
            if (opcode == -1 && PyErr_Occurred()) {
                goto error;
            }
            goto not_taken;
        }
        if ((r = attr_true(fa, proto, V_STREAM_FRAGMENTS)) != 0 || (r = attr_true(fa, proto, V_RESERVED)) != 0) {
            if (r < 0) {
                goto error;
            }
            goto not_taken;
        }
    }
    framebuffer_fill(fb, (const unsigned char *)view.buf, n);  /* pending.feed(buf, 0) */
    PyBuffer_Release(&view);
    Py_ssize_t delivered = 0;
    if (!completes) {
        /* the frame continues: `if pos and self._hdr is not None: self._hdr_end -= pos` */
        PyObject *end = fa_get(fa, proto, view_str, V_HDR_END);
        if (end == NULL) {
            Py_DECREF(gather);
            return -1;
        }
        Py_ssize_t e = PyLong_AsSsize_t(end);
        Py_DECREF(end);
        if ((e == -1 && PyErr_Occurred()) || fa_set_ssize(fa, proto, view_str, V_HDR_END, e - n) < 0) {
            Py_DECREF(gather);
            return -1;
        }
    }
    else {
        /* self._gather = None; self._hdr = None; self._on_data(hdr, pending.take()) */
        PyObject *payload = fb->out;
        fb->out = NULL;
        if (fa_set(fa, proto, view_str, V_GATHER, Py_None) < 0 || fa_set(fa, proto, view_str, V_HDR, Py_None) < 0) {
            Py_DECREF(payload);
            Py_DECREF(gather);
            return -1;
        }
        PyObject *emit = fa_get(fa, proto, view_str, V_EMIT);
        PyObject *res = emit == NULL ? NULL : PyObject_CallOneArg(emit, payload);
        Py_XDECREF(emit);
        Py_DECREF(payload);
        if (res == NULL) {
            Py_DECREF(gather);
            return -1;
        }
        Py_DECREF(res);
        delivered = 1;
        if ((r = attr_true(fa, proto, V_DISCARD_INPUT)) != 0) {
            /* The sink failed the connection: receive_data's ending for a discarding parser. */
            PyObject *empty = r < 0 ? NULL : PyByteArray_FromStringAndSize(NULL, 0);
            r = empty == NULL || receive_ending(fa, proto, delivered, n, wants) < 0
                || fa_set(fa, proto, view_str, V_BUF, empty) < 0;
            Py_XDECREF(empty);
            Py_DECREF(gather);
            *wants = 1;
            return r ? -1 : 1;
        }
    }
    Py_DECREF(gather);
    return receive_ending(fa, proto, delivered, n, wants) < 0 ? -1 : 1;
not_taken:
    PyBuffer_Release(&view);
    Py_DECREF(gather);
    return 0;
error:
    PyBuffer_Release(&view);
    Py_DECREF(gather);
    return -1;
}

/* What starting a gather needs, from protocol.py (configure_gather): its FrameHeader type and its _GATHER_MIN and
 * _GATHER_MAX. Set once at import; until then the Python twin starts every gather. */
static PyObject *frame_header_type;
static Py_ssize_t gather_min, gather_max;

static PyObject *
configure_gather(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *type;
    Py_ssize_t lo, hi;
    if (!PyArg_ParseTuple(args, "O!nn:configure_gather", &PyType_Type, &type, &lo, &hi)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)type, &PyTuple_Type) || lo < 1 || hi < lo) {
        PyErr_SetString(PyExc_ValueError, "configure_gather(FrameHeader, gather_min, gather_max)");
        return NULL;
    }
    Py_XSETREF(frame_header_type, Py_NewRef(type));
    gather_min = lo;
    gather_max = hi;
    Py_RETURN_NONE;
}

/* The frame at buf[pos:n] when receive_data would start gathering it: a whole (FIN) uncompressed binary frame,
 * masked as expected, of gather_min..gather_max bytes and at most `limit`, whose header is complete in the run and
 * whose payload continues past it. Its length into *length, its header's size into *hlen: 1, else 0. Anything
 * else (a control frame, text, a fragment, RSV bits, a frame too large) is left to receive_data. */
static int
gather_header(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos, int masked, Py_ssize_t limit,
              Py_ssize_t *length, Py_ssize_t *hlen)
{
    if (frame_header_type == NULL || n - pos < 2 || buf[pos] != 0x82 || ((buf[pos + 1] & 0x80) != 0) != masked) {
        return 0;
    }
    Py_ssize_t len7 = buf[pos + 1] & 0x7F, h;
    uint64_t len;
    if (len7 == 126) {
        h = 4;
        if (n - pos < h) {
            return 0;
        }
        len = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
    }
    else if (len7 == 127) {
        h = 10;
        if (n - pos < h) {
            return 0;
        }
        len = 0;
        for (int i = 0; i < 8; i++) {
            len = (len << 8) | buf[pos + 2 + i];
        }
    }
    else {
        return 0;  /* below gather_min */
    }
    h += masked ? 4 : 0;
    if (n - pos < h || len < (uint64_t)gather_min || len > (uint64_t)gather_max || len > (uint64_t)limit
        || (uint64_t)(n - pos - h) >= len) {
        return 0;
    }
    *length = (Py_ssize_t)len;
    *hlen = h;
    return 1;
}

/* Protocol.receive_data(view)'s common cases: 1 done (*wants set to its return value), 0 not taken (nothing was
 * done), -1 error. */
static int
receive_messages(ViewSinkObject *self, PyObject *proto, PyObject *data, int *wants)
{
    int r;
    FastAttrs *fa = fa_lookup(&view_cache, Py_TYPE(proto), view_str, V_COUNT);
    if ((r = attr_true(fa, proto, V_DISCARD_INPUT)) != 0 || (r = attr_true(fa, proto, V_INPUT_PENDING)) != 0
        || (r = attr_true(fa, proto, V_BUF)) != 0) {
        return r < 0 ? -1 : 0;
    }
    PyObject *hdr = fa_get(fa, proto, view_str, V_HDR);
    if (hdr == NULL) {
        return -1;
    }
    if (hdr != Py_None) {
        r = receive_gather(fa, proto, hdr, data, wants);
        Py_DECREF(hdr);
        return r;
    }
    Py_DECREF(hdr);
    /* The parser between messages, with nothing carried over: the only state parse_run's messages leave as is. */
    if ((r = attr_true(fa, proto, V_SMALL_OK)) != 1 || (r = attr_true(fa, proto, V_MSG_OPCODE)) != 0) {
        return r < 0 ? -1 : 0;
    }
    /* The fairness budget of frames per read: a run of whole messages does not spend it, but an exhausted one
     * stops the parse before the run. */
    PyObject *fb = fa_get(fa, proto, view_str, V_FRAME_BUDGET);
    if (fb == NULL) {
        return -1;
    }
    Py_ssize_t frames_left = fb == Py_None ? 1 : PyLong_AsSsize_t(fb);
    Py_DECREF(fb);
    if (frames_left <= 0) {
        return frames_left == -1 && PyErr_Occurred() ? -1 : 0;
    }
    int masked = attr_true(fa, proto, V_EXPECT_MASKED);
    if (masked < 0) {
        return -1;
    }
    Py_ssize_t limit = self->no_limit;
    PyObject *v = fa_get(fa, proto, view_str, V_MAX_SIZE);
    if (v == NULL) {
        return -1;
    }
    if (v != Py_None) {
        limit = PyLong_AsSsize_t(v);
    }
    Py_DECREF(v);
    if (limit == -1 && PyErr_Occurred()) {
        return -1;
    }
    if ((r = attr_is_none(fa, proto, V_BUDGET)) < 0) {
        return -1;
    }
    int may_gather = r;  /* with a memory budget, a gather reserves its share: the Python twin starts it */
    if (!r && limit >= self->budget_min) {
        limit = self->budget_min - 1;
    }
    if (may_gather && (r = attr_is_none(fa, proto, V_DEFLATE)) != 1) {
        if (r < 0) {
            return -1;
        }
        may_gather = 0;
    }
    if (limit < 0) {
        return 0;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    PyObject *messages = PyList_New(0);
    if (messages == NULL) {
        PyBuffer_Release(&view);
        return -1;
    }
    Py_ssize_t n = view.len;
    Py_ssize_t pos = n ? parse_run(view.buf, n, 0, masked, limit, messages, 1) : 0;
    /* After the whole messages, the start of a large frame that continues in later runs: gathered from here. */
    Py_ssize_t length, hlen, hdr_end = 0;
    FrameBufferObject *gfb = NULL;
    PyObject *ghdr = NULL;
    if (pos >= 0 && pos < n && may_gather && gather_header(view.buf, n, pos, masked, limit, &length, &hlen)) {
        const unsigned char *b = (const unsigned char *)view.buf + pos;
        PyObject *mask = masked ? PyBytes_FromStringAndSize((const char *)b + hlen - 4, 4) : Py_NewRef(Py_None);
        PyObject *items = mask == NULL ? NULL
                          : Py_BuildValue("(OOiOnn)", Py_True, Py_False, 2, mask, length, pos + hlen);
        PyObject *args = items == NULL ? NULL : PyTuple_Pack(1, items);
        ghdr = args == NULL ? NULL : PyTuple_Type.tp_new((PyTypeObject *)frame_header_type, args, NULL);
        Py_XDECREF(args);
        Py_XDECREF(items);
        Py_XDECREF(mask);
        gfb = ghdr == NULL ? NULL : (FrameBufferObject *)PyType_GenericNew(&FrameBufferType, NULL, NULL);
        PyObject *out = gfb == NULL ? NULL : PyBytes_FromStringAndSize(NULL, length);
        if (out == NULL) {
            Py_XDECREF(gfb);
            Py_XDECREF(ghdr);
            PyBuffer_Release(&view);
            Py_DECREF(messages);
            return -1;
        }
        /* FrameBuffer(length, mask).feed(buf, header_end) */
        gfb->out = out;
        gfb->length = length;
        gfb->filled = 0;
        gfb->masked = masked;
        if (masked) {
            memcpy(gfb->mask, b + hlen - 4, 4);
        }
        framebuffer_fill(gfb, b + hlen, n - pos - hlen);
        hdr_end = pos + hlen;
        pos = n;
    }
    PyBuffer_Release(&view);
    if (pos != n || n == 0) {  /* anything else in the bytes (or an error): the Python twin takes it all */
        Py_DECREF(messages);
        return pos < 0 ? -1 : 0;
    }
    PyObject *emit = fa_get(fa, proto, view_str, V_EMIT);
    if (emit == NULL) {
        Py_DECREF(messages);
        Py_XDECREF(gfb);
        Py_XDECREF(ghdr);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *res = PyObject_CallOneArg(emit, PyList_GET_ITEM(messages, i));
        if (res == NULL) {
            Py_DECREF(emit);
            Py_DECREF(messages);
            Py_XDECREF(gfb);
            Py_XDECREF(ghdr);
            return -1;
        }
        Py_DECREF(res);
    }
    Py_DECREF(emit);
    Py_ssize_t delivered = PyList_GET_SIZE(messages) > 0;  /* (receive_data counts a run of messages as one) */
    Py_DECREF(messages);
    if (gfb != NULL) {
        /* The gather started: _hdr, _hdr_end (header_end, less the n bytes consumed), _check_sequence's reset of
         * the message's sizes, _gather, and the frame that parse_header counted against the budget. */
        PyObject *left = fa_get(fa, proto, view_str, V_FRAME_BUDGET);
        int ok = left != NULL;
        if (ok && left != Py_None) {
            Py_ssize_t v = PyLong_AsSsize_t(left);
            ok = !(v == -1 && PyErr_Occurred()) && fa_set_ssize(fa, proto, view_str, V_FRAME_BUDGET, v - 1) == 0;
        }
        Py_XDECREF(left);
        ok = ok && fa_set(fa, proto, view_str, V_HDR, ghdr) == 0
             && fa_set_ssize(fa, proto, view_str, V_HDR_END, hdr_end - n) == 0
             && fa_set_ssize(fa, proto, view_str, V_MSG_SIZE, 0) == 0
             && fa_set_ssize(fa, proto, view_str, V_MSG_WIRE, 0) == 0
             && fa_set(fa, proto, view_str, V_GATHER, (PyObject *)gfb) == 0;
        Py_DECREF(ghdr);
        Py_DECREF(gfb);
        if (!ok) {
            return -1;
        }
    }
    /* receive_data's ending: n bytes in, nothing pending. */
    return receive_ending(fa, proto, delivered, n, wants) < 0 ? -1 : 1;
}

static PyObject *
ViewSink_vectorcall(ViewSinkObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "ViewSink(view) takes one positional argument");
        return NULL;
    }
    PyObject *conn = self->conn;
    if (conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "ViewSink cleared");
        return NULL;
    }
    FastAttrs *cfa = fa_lookup(&view_cache, Py_TYPE(conn), view_str, V_COUNT);
    PyObject *proto = fa_get(cfa, conn, view_str, V_PROTO);
    if (proto == NULL) {
        return NULL;
    }
    int wants = 0, r = 0;
    if (proto != Py_None) {
        r = receive_messages(self, proto, args[0], &wants);
    }
    Py_DECREF(proto);
    if (r < 0) {
        return NULL;
    }
    if (r == 0) {
        return PyObject_CallMethodOneArg(conn, view_str[V_RECEIVED_VIEW], args[0]);
    }
    /* Connection.received_view's ending. (The lookup again: the call above may have resolved another type in the
     * entry.) */
    cfa = fa_lookup(&view_cache, Py_TYPE(conn), view_str, V_COUNT);
    if (wants) {
        return PyObject_CallMethodNoArgs(conn, view_str[V_PROCESS]);
    }
    PyObject *messages = fa_get(cfa, conn, view_str, V_MESSAGES);
    if (messages == NULL) {
        return NULL;
    }
    int any = PyObject_IsTrue(messages);
    if (any <= 0) {
        Py_DECREF(messages);
        if (any < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *waiter = fa_get(cfa, conn, view_str, V_RECV_WAITER);
    if (waiter == NULL) {
        Py_DECREF(messages);
        return NULL;
    }
    if (waiter != Py_None) {
        PyObject *done = PyObject_CallMethodNoArgs(waiter, view_str[V_DONE]);
        int is_done = done == NULL ? -1 : PyObject_IsTrue(done);
        Py_XDECREF(done);
        PyObject *res = is_done == 0 ? PyObject_CallMethodOneArg(waiter, view_str[V_SET_RESULT], Py_None) : NULL;
        if (is_done < 0 || (is_done == 0 && res == NULL)) {
            Py_DECREF(waiter);
            Py_DECREF(messages);
            return NULL;
        }
        Py_XDECREF(res);
    }
    Py_DECREF(waiter);
    PyObject *max_queue = fa_get(cfa, conn, view_str, V_MAX_QUEUE);
    if (max_queue == NULL) {
        Py_DECREF(messages);
        return NULL;
    }
    int full = 0;
    if (max_queue != Py_None) {
        Py_ssize_t mq = PyLong_AsSsize_t(max_queue), len = PyObject_Length(messages);
        if ((mq == -1 || len == -1) && PyErr_Occurred()) {
            full = -1;
        }
        else {
            full = len >= mq;
        }
    }
    Py_DECREF(max_queue);
    Py_DECREF(messages);
    if (full < 0) {
        return NULL;
    }
    if (full) {
        return PyObject_CallMethodNoArgs(conn, view_str[V_MESSAGES_ARRIVED]);
    }
    Py_RETURN_NONE;
}

static PyTypeObject ViewSinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.ViewSink",
    .tp_basicsize = sizeof(ViewSinkObject),
    .tp_dealloc = (destructor)ViewSink_dealloc,
    .tp_vectorcall_offset = offsetof(ViewSinkObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "ViewSink(connection, no_limit, budget_min): Connection.received_view's common case in C.",
    .tp_traverse = (traverseproc)ViewSink_traverse,
    .tp_clear = (inquiry)ViewSink_clear,
    .tp_new = ViewSink_new,
};

/* -- Dispatch: Connection.dispatch()'s delivery ----------------------------------------------------------- */

/* Dispatch(connection, callback, finished)
 *
 * The compiled twin of connection._PyDispatch: what Connection.dispatch() puts where a waiting recv() keeps its
 * future (Connection._recv_waiter), so that the receive side's wake-up (done(), then set_result(None): the ViewSink
 * above and every Python path) hands the queued messages to callback. set_result() is Connection._deliver() for its
 * common case: messages popped from the deque and passed to the callback in order, while this object is still the
 * connection's waiter. A callback's Exception ends
 * the dispatch: the waiter is cleared and the exception set on `finished`, which dispatch() raises. A message that
 * holds a share of the memory budget (proto.held) hands the rest to _deliver(), the Python method. */
typedef struct {
    PyObject_HEAD
    PyObject *conn, *callback, *finished;
} DispatchObject;

enum { D_HELD, D_DELIVER, D_SET_EXCEPTION, D_COUNT };
static const char *const dispatch_names[D_COUNT] = {"held", "_deliver", "set_exception"};
static PyObject *dispatch_str[D_COUNT];
/* Where the Protocol's field `held` is. */
static FastAttrsCache dispatch_cache;
static PyObject *deque_type_ws, *deque_popleft_ws;

static PyObject *
Dispatch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *conn, *callback, *finished;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Dispatch() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO:Dispatch", &conn, &callback, &finished)) {
        return NULL;
    }
    DispatchObject *self = PyObject_GC_New(DispatchObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->conn = Py_NewRef(conn);
    self->callback = Py_NewRef(callback);
    self->finished = Py_NewRef(finished);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Dispatch_traverse(DispatchObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->conn);
    Py_VISIT(self->callback);
    Py_VISIT(self->finished);
    return 0;
}

static int
Dispatch_clear(DispatchObject *self)
{
    Py_CLEAR(self->conn);
    Py_CLEAR(self->callback);
    Py_CLEAR(self->finished);
    return 0;
}

static void
Dispatch_dealloc(DispatchObject *self)
{
    PyObject_GC_UnTrack(self);
    Dispatch_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
Dispatch_done(DispatchObject *self, PyObject *Py_UNUSED(ignored))
{
    Py_RETURN_FALSE;  /* always "waiting": every wake-up delivers */
}

/* The callback raised: 0 if it was an Exception (handed to `finished`, the waiter cleared), -1 to propagate. */
static int
dispatch_failed(DispatchObject *self, FastAttrs *cfa)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (tb != NULL && ev != NULL) {
        PyException_SetTraceback(ev, tb);
    }
    Py_XDECREF(et);
    Py_XDECREF(tb);
    if (ev == NULL) {
        PyErr_SetString(PyExc_SystemError, "Dispatch: an exception without a value");
        return -1;
    }
    int r = fa_set(cfa, self->conn, view_str, V_RECV_WAITER, Py_None);
    PyObject *done = r < 0 ? NULL : PyObject_CallMethodNoArgs(self->finished, view_str[V_DONE]);
    int is_done = done == NULL ? -1 : PyObject_IsTrue(done);
    Py_XDECREF(done);
    PyObject *res = is_done == 0 ? PyObject_CallMethodOneArg(self->finished, dispatch_str[D_SET_EXCEPTION], ev)
                                 : NULL;
    Py_DECREF(ev);
    if (is_done < 0 || (is_done == 0 && res == NULL)) {
        return -1;
    }
    Py_XDECREF(res);
    return 0;
}

static PyObject *
Dispatch_set_result(DispatchObject *self, PyObject *Py_UNUSED(value))
{
    PyObject *conn = self->conn;
    if (conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "Dispatch cleared");
        return NULL;
    }
    FastAttrs *cfa = fa_lookup(&view_cache, Py_TYPE(conn), view_str, V_COUNT);
    PyObject *messages = fa_get(cfa, conn, view_str, V_MESSAGES);
    PyObject *proto = messages == NULL ? NULL : fa_get(cfa, conn, view_str, V_PROTO);
    if (proto == NULL) {
        Py_XDECREF(messages);
        return NULL;
    }
    PyObject *res = NULL;
    if (!Py_IS_TYPE(messages, (PyTypeObject *)deque_type_ws) || proto == Py_None) {
        res = PyObject_CallMethodOneArg(conn, dispatch_str[D_DELIVER], (PyObject *)self);
        goto done;
    }
    FastAttrs *pfa = fa_lookup(&dispatch_cache, Py_TYPE(proto), dispatch_str, D_COUNT);
    for (;;) {
        PyObject *waiter = fa_get(cfa, conn, view_str, V_RECV_WAITER);
        if (waiter == NULL) {
            goto done;
        }
        Py_DECREF(waiter);
        if (waiter != (PyObject *)self) {
            res = Py_NewRef(Py_None);  /* a callback ended the dispatch, or it ended */
            goto done;
        }
        Py_ssize_t n = PyObject_Length(messages);
        if (n < 0) {
            goto done;
        }
        if (n == 0) {
            break;
        }
        int held = fa_true(pfa, proto, dispatch_str, D_HELD);
        if (held < 0) {
            goto done;
        }
        if (held) {  /* budget shares to release: the Python method */
            res = PyObject_CallMethodOneArg(conn, dispatch_str[D_DELIVER], (PyObject *)self);
            goto done;
        }
        PyObject *message = PyObject_Vectorcall(deque_popleft_ws, &messages, 1, NULL);
        if (message == NULL) {
            goto done;
        }
        PyObject *r = PyObject_CallOneArg(self->callback, message);
        Py_DECREF(message);
        if (r == NULL) {
            cfa = fa_lookup(&view_cache, Py_TYPE(conn), view_str, V_COUNT);
            if (dispatch_failed(self, cfa) == 0) {
                res = Py_NewRef(Py_None);
            }
            goto done;
        }
        Py_DECREF(r);
        /* the callback may have run anything: the entries again */
        cfa = fa_lookup(&view_cache, Py_TYPE(conn), view_str, V_COUNT);
        pfa = fa_lookup(&dispatch_cache, Py_TYPE(proto), dispatch_str, D_COUNT);
    }
    res = Py_NewRef(Py_None);
done:
    Py_DECREF(messages);
    Py_DECREF(proto);
    return res;
}

static PyMethodDef Dispatch_methods[] = {
    {"done", (PyCFunction)Dispatch_done, METH_NOARGS, "False: a dispatch is always waiting for messages."},
    {"set_result", (PyCFunction)Dispatch_set_result, METH_O,
     "set_result(value): deliver the queued messages to the callback (Connection._deliver's common case)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Dispatch_members[] = {
    {"conn", T_OBJECT, offsetof(DispatchObject, conn), READONLY, NULL},
    {"callback", T_OBJECT, offsetof(DispatchObject, callback), READONLY, NULL},
    {"finished", T_OBJECT, offsetof(DispatchObject, finished), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DispatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.Dispatch",
    .tp_basicsize = sizeof(DispatchObject),
    .tp_dealloc = (destructor)Dispatch_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Dispatch(connection, callback, finished): Connection.dispatch()'s delivery in C.",
    .tp_traverse = (traverseproc)Dispatch_traverse,
    .tp_clear = (inquiry)Dispatch_clear,
    .tp_methods = Dispatch_methods,
    .tp_members = Dispatch_members,
    .tp_new = Dispatch_new,
};

static int
dispatch_init(PyObject *module)
{
    for (int i = 0; i < D_COUNT; i++) {
        if ((dispatch_str[i] = PyUnicode_InternFromString(dispatch_names[i])) == NULL) {
            return -1;
        }
    }
    PyObject *collections = PyImport_ImportModule("collections");
    deque_type_ws = collections == NULL ? NULL : PyObject_GetAttrString(collections, "deque");
    Py_XDECREF(collections);
    deque_popleft_ws = deque_type_ws == NULL ? NULL : PyObject_GetAttrString(deque_type_ws, "popleft");
    if (deque_popleft_ws == NULL) {
        return -1;
    }
    if (PyType_Ready(&DispatchType) < 0 || PyModule_AddObjectRef(module, "Dispatch", (PyObject *)&DispatchType) < 0) {
        return -1;
    }
    return 0;
}

/* -- SendNowait: Connection.send_nowait's common case -------------------------------------------------------- */

/* SendNowait(send_nowait, open_state, join_limit)
 *
 * The compiled twin of Connection.send_nowait (uringws/ws/connection.py), set as the class's `send_nowait`: a method
 * descriptor, so ws.send_nowait(message) makes no bound method. Its common case: a bytes message on an open
 * connection whose frames go out unmasked and uncompressed (proto._raw_send), no fragmented message in progress,
 * nothing left in the protocol's output, and a TLS layer's write_if_open to write through. Below join_limit bytes,
 * the frame (header and payload) is one write; from join_limit, the header and the uncopied payload are written as
 * a pair, as the Python method does. messages_out and _written count the same. Anything else calls `send_nowait`,
 * the Python function. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send_nowait, *open_state;
    Py_ssize_t join_limit;
} SendNowaitObject;

enum { N_PROTO, N_RAW_SEND, N_STATE, N_SEND_OPCODE, N_OUT, N_SEND_LOCK, N_LOCKED, N_WRITE_IF_OPEN, N_WRITTEN,
       N_MESSAGES_OUT, N_COUNT };
static const char *const nowait_names[N_COUNT] = {
    "proto", "_raw_send", "state", "_send_opcode", "_out", "_send_lock", "_locked", "_write_if_open", "_written",
    "messages_out",
};
static PyObject *nowait_str[N_COUNT];
/* Where the fields of Connections and of their Protocols are. */
static FastAttrsCache nowait_cache;

static PyObject *SendNowait_vectorcall(SendNowaitObject *self, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames);

static PyObject *
SendNowait_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *send_nowait, *open_state;
    Py_ssize_t join_limit;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "SendNowait() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOn:SendNowait", &send_nowait, &open_state, &join_limit)) {
        return NULL;
    }
    if (join_limit < 126 || join_limit > 65536) {
        PyErr_SetString(PyExc_ValueError, "SendNowait: join_limit must be between 126 and 65536");
        return NULL;
    }
    SendNowaitObject *self = PyObject_GC_New(SendNowaitObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)SendNowait_vectorcall;
    self->send_nowait = Py_NewRef(send_nowait);
    self->open_state = Py_NewRef(open_state);
    self->join_limit = join_limit;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
SendNowait_traverse(SendNowaitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->send_nowait);
    Py_VISIT(self->open_state);
    return 0;
}

static int
SendNowait_clear(SendNowaitObject *self)
{
    Py_CLEAR(self->send_nowait);
    Py_CLEAR(self->open_state);
    return 0;
}

static void
SendNowait_dealloc(SendNowaitObject *self)
{
    PyObject_GC_UnTrack(self);
    SendNowait_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
SendNowait_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

/* obj.<names[i]> += delta: 0, or -1 with an exception set */
static int
nowait_add(FastAttrs *fa, PyObject *obj, int i, Py_ssize_t delta)
{
    Py_ssize_t v;
    if (fa_ssize(fa, obj, nowait_str, i, &v) < 0) {
        return -1;
    }
    return fa_set_ssize(fa, obj, nowait_str, i, v + delta);
}

/* The common case's write_if_open, or None where it does not apply (a new reference; NULL with an exception). */
static PyObject *
nowait_writer(SendNowaitObject *self, PyObject *conn, PyObject *proto)
{
    FastAttrs *pfa = fa_lookup(&nowait_cache, Py_TYPE(proto), nowait_str, N_COUNT);
    int r = fa_true(pfa, proto, nowait_str, N_RAW_SEND);
    if (r <= 0) {
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *state = fa_get(pfa, proto, nowait_str, N_STATE);
    if (state == NULL) {
        return NULL;
    }
    Py_DECREF(state);
    if (state != self->open_state) {
        return Py_NewRef(Py_None);
    }
    if ((r = fa_true(pfa, proto, nowait_str, N_SEND_OPCODE)) != 0
        || (r = fa_true(pfa, proto, nowait_str, N_OUT)) != 0) {
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    FastAttrs *cfa = fa_lookup(&nowait_cache, Py_TYPE(conn), nowait_str, N_COUNT);
    PyObject *lock = fa_get(cfa, conn, nowait_str, N_SEND_LOCK);
    if (lock == NULL) {
        return NULL;
    }
    PyObject *locked = PyObject_GetAttr(lock, nowait_str[N_LOCKED]);  /* asyncio.Lock: no slots */
    Py_DECREF(lock);
    if (locked == NULL) {
        return NULL;
    }
    r = PyObject_IsTrue(locked);
    Py_DECREF(locked);
    if (r != 0) {
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    cfa = fa_lookup(&nowait_cache, Py_TYPE(conn), nowait_str, N_COUNT);
    return fa_get(cfa, conn, nowait_str, N_WRITE_IF_OPEN);
}

static PyObject *
SendNowait_vectorcall(SendNowaitObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->send_nowait == NULL) {
        PyErr_SetString(PyExc_ValueError, "SendNowait cleared");
        return NULL;
    }
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || !PyBytes_CheckExact(args[1])) {
        return PyObject_Vectorcall(self->send_nowait, args, nargsf, kwnames);
    }
    PyObject *conn = args[0], *message = args[1];
    FastAttrs *cfa = fa_lookup(&nowait_cache, Py_TYPE(conn), nowait_str, N_COUNT);
    PyObject *proto = fa_get(cfa, conn, nowait_str, N_PROTO);
    if (proto == NULL) {
        return NULL;
    }
    PyObject *write = proto == Py_None ? Py_NewRef(Py_None) : nowait_writer(self, conn, proto);
    if (write == NULL) {
        Py_DECREF(proto);
        return NULL;
    }
    if (write == Py_None) {
        Py_DECREF(write);
        Py_DECREF(proto);
        return PyObject_Vectorcall(self->send_nowait, args, nargsf, kwnames);
    }
    Py_ssize_t n = PyBytes_GET_SIZE(message);
    unsigned char header[10];
    Py_ssize_t hlen;
    header[0] = 0x82;  /* FIN, binary */
    if (n < 126) {
        header[1] = (unsigned char)n;
        hlen = 2;
    }
    else if (n < 65536) {
        header[1] = 126;
        header[2] = (unsigned char)(n >> 8);
        header[3] = (unsigned char)n;
        hlen = 4;
    }
    else {
        header[1] = 127;
        for (int i = 0; i < 8; i++) {
            header[2 + i] = (unsigned char)((unsigned long long)n >> (56 - 8 * i));
        }
        hlen = 10;
    }
    PyObject *res = NULL;
    FastAttrs *pfa = fa_lookup(&nowait_cache, Py_TYPE(proto), nowait_str, N_COUNT);
    if (nowait_add(pfa, proto, N_MESSAGES_OUT, 1) < 0) {
        goto done;
    }
    if (n < self->join_limit) {  /* one buffer: the frame */
        PyObject *frame = PyBytes_FromStringAndSize(NULL, hlen + n);
        if (frame == NULL) {
            goto done;
        }
        memcpy(PyBytes_AS_STRING(frame), header, (size_t)hlen);
        memcpy(PyBytes_AS_STRING(frame) + hlen, PyBytes_AS_STRING(message), (size_t)n);
        res = PyObject_CallOneArg(write, frame);
        Py_DECREF(frame);
    }
    else {  /* two: the header, the payload uncopied */
        PyObject *h = PyBytes_FromStringAndSize((const char *)header, hlen);
        if (h == NULL) {
            goto done;
        }
        PyObject *pair[2] = {h, message};
        res = PyObject_Vectorcall(write, pair, 2, NULL);
        Py_DECREF(h);
    }
    if (res != NULL) {
        cfa = fa_lookup(&nowait_cache, Py_TYPE(conn), nowait_str, N_COUNT);
        if (nowait_add(cfa, conn, N_WRITTEN, hlen + n) < 0) {
            Py_CLEAR(res);
        }
        else {
            Py_SETREF(res, Py_NewRef(Py_None));
        }
    }
done:
    Py_DECREF(write);
    Py_DECREF(proto);
    return res;
}

static PyTypeObject SendNowaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.SendNowait",
    .tp_basicsize = sizeof(SendNowaitObject),
    .tp_dealloc = (destructor)SendNowait_dealloc,
    .tp_vectorcall_offset = offsetof(SendNowaitObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = SendNowait_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "SendNowait(send_nowait, open_state, join_limit): Connection.send_nowait's common case in C (a method "
              "descriptor).",
    .tp_traverse = (traverseproc)SendNowait_traverse,
    .tp_clear = (inquiry)SendNowait_clear,
    .tp_new = SendNowait_new,
};

static int
sendnowait_init(PyObject *module)
{
    for (int i = 0; i < N_COUNT; i++) {
        if ((nowait_str[i] = PyUnicode_InternFromString(nowait_names[i])) == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&SendNowaitType) < 0
        || PyModule_AddObjectRef(module, "SendNowait", (PyObject *)&SendNowaitType) < 0) {
        return -1;
    }
    return 0;
}

/* -- Anext: `async for message in ws` without a coroutine per message ------------------------------------------ */

/* Anext(anext_py, recv_tail, fragment_type, closed_state, future_type, get_running_loop)
 *
 * The compiled twin of Connection.__anext__ (uringws/ws/connection.py), set as the class's `__anext__`: a method
 * descriptor, so `async for` calls it with the connection and no bound method. It returns a StepAwait, an
 * awaitable that runs the Python coroutine's common cases step by step: a whole message already queued is returned
 * at once; on an open connection with nothing queued, it waits on an asyncio Future set as the connection's
 * _recv_waiter (which the receive side wakes), then takes the message. Everything else (a failure, a close,
 * another reader, streaming, a paused read, a fragment) is left to `recv_tail(conn)`, the coroutine the Python
 * __anext__ ends in, to which the awaitable delegates from then on. Per message this saves the coroutine object,
 * its frame and its bytecode; the Future and the task's wake-up stay what asyncio makes them. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *anext_py, *recv_tail, *fragment_type, *closed_state, *future_type, *get_running_loop;
} AnextObject;

enum { A_MESSAGES, A_READING_PAUSED, A_STREAMING, A_ASSEMBLED, A_RECV_WAITER, A_PROTO, A_LOST, A_LOOP, A_HELD,
       A_PENDING_FAILURE, A_CLOSE_RCVD, A_FAILURE, A_STATE, A_RELEASE_MESSAGE, A_DONE, A_RESULT, A_BLOCKING,
       A_THROW, A_CLOSE, A_APPENDLEFT, A_SEND_LOCK, A_LOCKED, A_SEND_NOWAIT, A_WRITE_PAUSED, A_DRAIN, A_COUNT };
static const char *const anext_names[A_COUNT] = {
    "_messages", "_reading_paused", "_streaming", "_assembled", "_recv_waiter", "proto", "lost", "loop", "held",
    "pending_failure", "close_rcvd", "failure", "state", "release_message", "done", "result",
    "_asyncio_future_blocking", "throw", "close", "appendleft", "_send_lock", "_locked", "send_nowait",
    "_write_paused", "_drain",
};
static PyObject *anext_str[A_COUNT];
/* Where the fields of Connections and of their Protocols are. */
static FastAttrsCache anext_cache;

/* Send(send_py): Connection.send's common case in C (a method descriptor, as Anext), the twin of the Python
 * coroutine function send_py, which it returns (called) for anything but a str or bytes message without `text`.
 * For those it returns a StepAwait that, once awaited (never at the call: a coroutine made in another thread and
 * handed to the loop, as sync.py does, must not send there), does what the coroutine's fast path does: on an open
 * connection with no fragmented message being sent, send_nowait(message), then, if writing is paused, the wait
 * of _drain(), delegated to; otherwise it hands over to send_py(conn, message). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *send_py;
} SendObject;

/* The awaitable of one compiled __anext__() or send() call (`kind`): its first step runs their common case; what it
 * cannot do there it hands over to a coroutine (`tail`) and delegates to it from then on, as `await` would. */
typedef struct {
    PyObject_HEAD
    PyObject *owner;    /* the AnextObject or SendObject that made it */
    PyObject *conn;
    PyObject *message;  /* send(): the message */
    PyObject *fut;      /* __anext__(): the Future waited on (the connection's _recv_waiter) while suspended on it */
    PyObject *tail;     /* the coroutine handed over to */
    int state;          /* AW_NEW, AW_RUNNING, AW_DONE */
    int kind;           /* AW_ANEXT, AW_SEND */
} StepAwaitObject;

enum { AW_NEW, AW_RUNNING, AW_DONE };
enum { AW_ANEXT, AW_SEND };
/* anext_step()'s "hand over to recv_tail", beside PYGEN_RETURN (0), PYGEN_ERROR (-1) and PYGEN_NEXT (1) */
#define AW_TAIL 2

static PyTypeObject StepAwaitType;

/* obj.<anext_names[i]> is not None: 1, 0, or -1 with an exception set */
static int
anext_not_none(FastAttrs *fa, PyObject *obj, int i)
{
    PyObject *v = fa_get(fa, obj, anext_str, i);
    if (v == NULL) {
        return -1;
    }
    Py_DECREF(v);
    return v != Py_None;
}

/* The connection's _recv_waiter = None (the Python coroutine's `finally`): 0, or -1 with an exception set. */
static int
anext_clear_waiter(PyObject *conn)
{
    FastAttrs *cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    return fa_set(cfa, conn, anext_str, A_RECV_WAITER, Py_None);
}

/* A new Future on loop: Future() where loop is the running loop (asyncio's Future then finds it itself, and the
 * call makes no keyword dict), else Future(loop=loop). */
static PyObject *
anext_future(AnextObject *owner, PyObject *loop)
{
    PyObject *running = PyObject_CallNoArgs(owner->get_running_loop);
    if (running == NULL) {
        return NULL;
    }
    Py_DECREF(running);
    if (running == loop) {
        return PyObject_CallNoArgs(owner->future_type);
    }
    PyObject *kwargs = Py_BuildValue("{sO}", "loop", loop);
    if (kwargs == NULL) {
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *fut = empty == NULL ? NULL : PyObject_Call(owner->future_type, empty, kwargs);
    Py_XDECREF(empty);
    Py_DECREF(kwargs);
    return fut;
}

/* Connection.__anext__'s loop from its top: PYGEN_RETURN with the message in *result, PYGEN_NEXT with the Future to
 * wait on in *result (made the connection's _recv_waiter), AW_TAIL, or PYGEN_ERROR. */
static int
anext_step(StepAwaitObject *self, PyObject **result)
{
    PyObject *conn = self->conn;
    FastAttrs *cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    PyObject *messages = fa_get(cfa, conn, anext_str, A_MESSAGES);
    if (messages == NULL) {
        return PYGEN_ERROR;
    }
    int r = PyObject_IsTrue(messages);
    if (r > 0) {  /* queued: take the first, or leave it all to recv() */
        r = fa_true(cfa, conn, anext_str, A_READING_PAUSED);
        if (r == 0) {
            r = fa_true(cfa, conn, anext_str, A_STREAMING);
        }
        if (r == 0 && Py_IS_TYPE(messages, (PyTypeObject *)deque_type_ws)) {
            PyObject *message = PyObject_Vectorcall(deque_popleft_ws, &messages, 1, NULL);
            if (message == NULL) {
                Py_DECREF(messages);
                return PYGEN_ERROR;
            }
            if (Py_TYPE(message) == (PyTypeObject *)((AnextObject *)self->owner)->fragment_type) {
                /* parsed as fragments for a recv_streaming() that was cancelled: recv() assembles them */
                PyObject *res = PyObject_CallMethodOneArg(messages, anext_str[A_APPENDLEFT], message);
                Py_DECREF(message);
                Py_DECREF(messages);
                if (res == NULL) {
                    return PYGEN_ERROR;
                }
                Py_DECREF(res);
                return AW_TAIL;
            }
            Py_DECREF(messages);
            cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
            PyObject *proto = fa_get(cfa, conn, anext_str, A_PROTO);
            if (proto == NULL) {
                Py_DECREF(message);
                return PYGEN_ERROR;
            }
            FastAttrs *pfa = fa_lookup(&anext_cache, Py_TYPE(proto), anext_str, A_COUNT);
            int held = fa_true(pfa, proto, anext_str, A_HELD);
            if (held > 0) {  /* the application has it now: off the memory budget */
                PyObject *res = PyObject_CallMethodOneArg(proto, anext_str[A_RELEASE_MESSAGE], message);
                Py_XDECREF(res);
                held = res == NULL ? -1 : 0;
            }
            Py_DECREF(proto);
            if (held < 0) {
                Py_DECREF(message);
                return PYGEN_ERROR;
            }
            *result = message;
            return PYGEN_RETURN;
        }
        Py_DECREF(messages);
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    Py_DECREF(messages);
    if (r < 0) {
        return PYGEN_ERROR;
    }
    /* Nothing queued: wait here on an open connection with nothing unusual going on, else recv() */
    if ((r = fa_true(cfa, conn, anext_str, A_STREAMING)) != 0 || (r = fa_true(cfa, conn, anext_str, A_ASSEMBLED)) != 0
        || (r = anext_not_none(cfa, conn, A_RECV_WAITER)) != 0) {
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    PyObject *proto = fa_get(cfa, conn, anext_str, A_PROTO);
    if (proto == NULL) {
        return PYGEN_ERROR;
    }
    if (proto == Py_None) {
        Py_DECREF(proto);
        return AW_TAIL;
    }
    FastAttrs *pfa = fa_lookup(&anext_cache, Py_TYPE(proto), anext_str, A_COUNT);
    if ((r = anext_not_none(pfa, proto, A_PENDING_FAILURE)) == 0
        && (r = anext_not_none(pfa, proto, A_CLOSE_RCVD)) == 0
        && (r = anext_not_none(pfa, proto, A_FAILURE)) == 0) {
        PyObject *state = fa_get(pfa, proto, anext_str, A_STATE);
        r = state == NULL ? -1 : state == ((AnextObject *)self->owner)->closed_state;
        Py_XDECREF(state);
    }
    Py_DECREF(proto);
    if (r != 0) {
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    PyObject *lost = fa_get(cfa, conn, anext_str, A_LOST);
    PyObject *done = lost == NULL ? NULL : PyObject_CallMethodNoArgs(lost, anext_str[A_DONE]);
    Py_XDECREF(lost);
    r = done == NULL ? -1 : PyObject_IsTrue(done);
    Py_XDECREF(done);
    if (r != 0) {
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    PyObject *loop = fa_get(cfa, conn, anext_str, A_LOOP);
    if (loop == NULL) {
        return PYGEN_ERROR;
    }
    PyObject *fut = anext_future((AnextObject *)self->owner, loop);
    Py_DECREF(loop);
    if (fut == NULL) {
        return PYGEN_ERROR;
    }
    cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    /* `await waiter`: the Future's own __await__ marks it blocking before it yields it to the task */
    if (PyObject_SetAttr(fut, anext_str[A_BLOCKING], Py_True) < 0
        || fa_set(cfa, conn, anext_str, A_RECV_WAITER, fut) < 0) {
        Py_DECREF(fut);
        return PYGEN_ERROR;
    }
    self->fut = Py_NewRef(fut);
    *result = fut;
    return PYGEN_NEXT;
}

/* send()'s common case (Connection.send's fast path): PYGEN_RETURN (None in *result) once the message is written,
 * AW_TAIL with self->tail set to _drain() when writing is paused, AW_TAIL without a tail when it is not the common
 * case after all, or PYGEN_ERROR. */
static int
send_step(StepAwaitObject *self, PyObject **result)
{
    PyObject *conn = self->conn;
    FastAttrs *cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    int r = anext_not_none(cfa, conn, A_PROTO);
    if (r <= 0) {
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    PyObject *lock = fa_get(cfa, conn, anext_str, A_SEND_LOCK);
    PyObject *locked = lock == NULL ? NULL : PyObject_GetAttr(lock, anext_str[A_LOCKED]);  /* asyncio.Lock: no slots */
    Py_XDECREF(lock);
    r = locked == NULL ? -1 : PyObject_IsTrue(locked);
    Py_XDECREF(locked);
    if (r != 0) {
        return r < 0 ? PYGEN_ERROR : AW_TAIL;
    }
    PyObject *args[2] = {conn, self->message};
    PyObject *res = PyObject_VectorcallMethod(anext_str[A_SEND_NOWAIT], args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (res == NULL) {
        return PYGEN_ERROR;
    }
    Py_DECREF(res);
    cfa = fa_lookup(&anext_cache, Py_TYPE(conn), anext_str, A_COUNT);
    r = fa_true(cfa, conn, anext_str, A_WRITE_PAUSED);
    if (r > 0) {
        self->tail = PyObject_CallMethodNoArgs(conn, anext_str[A_DRAIN]);
        return self->tail == NULL ? PYGEN_ERROR : AW_TAIL;
    }
    if (r < 0) {
        return PYGEN_ERROR;
    }
    *result = Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

/* The coroutine to hand over to where the first step found no common case. */
static PyObject *
step_make_tail(StepAwaitObject *self)
{
    if (self->kind == AW_SEND) {
        PyObject *args[3] = {self->conn, self->message, Py_None};
        return PyObject_Vectorcall(((SendObject *)self->owner)->send_py, args, 3, NULL);
    }
    return PyObject_CallOneArg(((AnextObject *)self->owner)->recv_tail, self->conn);
}

/* Delegate to the tail coroutine: send(arg) */
static PySendResult
step_tail_send(StepAwaitObject *self, PyObject *arg, PyObject **result)
{
    PySendResult r = PyIter_Send(self->tail, arg, result);
    if (r != PYGEN_NEXT) {
        self->state = AW_DONE;
        Py_CLEAR(self->tail);
    }
    return r;
}

static PySendResult
StepAwait_am_send(StepAwaitObject *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (self->tail != NULL) {
        return step_tail_send(self, arg, result);
    }
    int r;
    if (self->state == AW_DONE) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        return PYGEN_ERROR;
    }
    if (self->state == AW_NEW) {
        if (arg != Py_None) {
            PyErr_SetString(PyExc_TypeError, "can't send non-None value to a just-started coroutine");
            return PYGEN_ERROR;
        }
        self->state = AW_RUNNING;
    }
    else if (self->fut != NULL) {  /* woken: `await waiter` returns, then its `finally` */
        PyObject *fut = self->fut;
        self->fut = NULL;
        PyObject *res = PyObject_CallMethodNoArgs(fut, anext_str[A_RESULT]);
        Py_DECREF(fut);
        if (anext_clear_waiter(self->conn) < 0) {
            Py_XDECREF(res);
            res = NULL;
        }
        if (res == NULL) {
            self->state = AW_DONE;
            return PYGEN_ERROR;
        }
        Py_DECREF(res);
    }
    r = self->kind == AW_SEND ? send_step(self, result) : anext_step(self, result);
    if (r == AW_TAIL) {
        if (self->tail == NULL) {
            self->tail = step_make_tail(self);
        }
        if (self->tail == NULL) {
            self->state = AW_DONE;
            return PYGEN_ERROR;
        }
        return step_tail_send(self, Py_None, result);
    }
    if (r != PYGEN_NEXT) {
        self->state = AW_DONE;
    }
    return (PySendResult)r;
}

/* StopIteration(value) raised, as a generator's return does */
static void
anext_set_stop(PyObject *value)
{
    if (value == Py_None) {
        PyErr_SetNone(PyExc_StopIteration);
        return;
    }
    PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

static PyObject *
anext_send_value(StepAwaitObject *self, PyObject *arg)
{
    PyObject *res;
    PySendResult r = StepAwait_am_send(self, arg, &res);
    if (r == PYGEN_RETURN) {
        anext_set_stop(res);
        Py_DECREF(res);
        return NULL;
    }
    return r == PYGEN_NEXT ? res : NULL;
}

static PyObject *
StepAwait_iternext(StepAwaitObject *self)
{
    return anext_send_value(self, Py_None);
}

static PyObject *
StepAwait_send(StepAwaitObject *self, PyObject *arg)
{
    return anext_send_value(self, arg);
}

/* Leaving the wait (throw or close): the `finally` of the Python coroutine. 0, or -1 with an exception set. */
static int
anext_leave(StepAwaitObject *self)
{
    self->state = AW_DONE;
    if (self->fut == NULL) {
        return 0;
    }
    Py_CLEAR(self->fut);
    return anext_clear_waiter(self->conn);
}

static PyObject *
StepAwait_throw(StepAwaitObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd", nargs);
        return NULL;
    }
    if (self->tail != NULL) {
        PyObject *callargs[4] = {self->tail, args[0], nargs > 1 ? args[1] : NULL, nargs > 2 ? args[2] : NULL};
        PyObject *res = PyObject_VectorcallMethod(anext_str[A_THROW], callargs,
                                                  (size_t)(nargs + 1) | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (res == NULL) {  /* the tail ended (raised, or returned: StopIteration) */
            self->state = AW_DONE;
            Py_CLEAR(self->tail);
        }
        return res;
    }
    PyObject *typ = args[0], *val = nargs > 1 ? args[1] : Py_None, *tb = nargs > 2 ? args[2] : Py_None;
    if (tb != Py_None && !PyTraceBack_Check(tb)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (!PyExceptionClass_Check(typ) && !PyExceptionInstance_Check(typ)) {
        PyErr_Format(PyExc_TypeError, "exceptions must be classes or instances deriving from BaseException, not %s",
                     Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (PyExceptionInstance_Check(typ) && val != Py_None) {
        PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
        return NULL;
    }
    if (anext_leave(self) < 0) {
        return NULL;
    }
    if (PyExceptionInstance_Check(typ)) {
        if (tb != Py_None && PyException_SetTraceback(typ, tb) < 0) {
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    }
    else {
        PyErr_SetObject(typ, val);
        if (tb != Py_None) {
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyErr_NormalizeException(&et, &ev, &etb);
            if (ev != NULL) {
                PyException_SetTraceback(ev, tb);
            }
            Py_XDECREF(etb);
            PyErr_Restore(et, ev, Py_NewRef(tb));
        }
    }
    return NULL;
}

static PyObject *
StepAwait_close(StepAwaitObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->tail != NULL) {
        PyObject *res = PyObject_CallMethodNoArgs(self->tail, anext_str[A_CLOSE]);
        self->state = AW_DONE;
        Py_CLEAR(self->tail);
        return res;
    }
    if (anext_leave(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
StepAwait_await(StepAwaitObject *self)
{
    return Py_NewRef(self);
}

/* Dropped while waiting (its task gone): the `finally` still runs, as a coroutine's finalizer does. Dropped
 * before it was awaited: the RuntimeWarning of a coroutine never awaited (a forgotten `await ws.send(...)` sends
 * nothing, as with the coroutine). */
static void
StepAwait_finalize(StepAwaitObject *self)
{
    if (self->conn == NULL || (self->fut == NULL && self->state != AW_NEW)) {  /* as StepAwait_dealloc's test */
        return;
    }
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    if (self->state == AW_NEW) {
        if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1, "coroutine 'Connection.%s' was never awaited",
                             self->kind == AW_SEND ? "send" : "__anext__") < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
    }
    else if (anext_leave(self) < 0) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    PyErr_Restore(et, ev, tb);
}

static int
StepAwait_traverse(StepAwaitObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->conn);
    Py_VISIT(self->message);
    Py_VISIT(self->fut);
    Py_VISIT(self->tail);
    return 0;
}

static int
StepAwait_clear(StepAwaitObject *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->message);
    Py_CLEAR(self->fut);
    Py_CLEAR(self->tail);
    return 0;
}

static void
StepAwait_dealloc(StepAwaitObject *self)
{
    /* The finalizer has work only when StepAwait_finalize's test says so: skipping the call otherwise saves some
     * 170 instructions per awaitable, two per message of `async for` + `await ws.send()`. */
    int busy = self->conn != NULL && (self->fut != NULL || self->state == AW_NEW);
    if (busy && PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    StepAwait_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef StepAwait_methods[] = {
    {"send", (PyCFunction)StepAwait_send, METH_O, "send(value): resume, as a coroutine's send()."},
    {"throw", (PyCFunction)(void (*)(void))StepAwait_throw, METH_FASTCALL,
     "throw(exc): raise exc where it waits (leaving the wait), as a coroutine's throw()."},
    {"close", (PyCFunction)StepAwait_close, METH_NOARGS, "close(): leave the wait, as a coroutine's close()."},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods StepAwait_as_async = {
    .am_await = (unaryfunc)StepAwait_await,
    .am_send = (sendfunc)StepAwait_am_send,
};

static PyTypeObject StepAwaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.StepAwait",
    .tp_basicsize = sizeof(StepAwaitObject),
    .tp_dealloc = (destructor)StepAwait_dealloc,
    .tp_as_async = &StepAwait_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "What the compiled Connection.__anext__ and send return: an awaitable with a coroutine's send, throw "
              "and close.",
    .tp_traverse = (traverseproc)StepAwait_traverse,
    .tp_clear = (inquiry)StepAwait_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)StepAwait_iternext,
    .tp_methods = StepAwait_methods,
    .tp_finalize = (destructor)StepAwait_finalize,
};

static PyObject *
step_await_new(PyObject *owner, PyObject *conn, PyObject *message, int kind)
{
    StepAwaitObject *aw = PyObject_GC_New(StepAwaitObject, &StepAwaitType);
    if (aw == NULL) {
        return NULL;
    }
    aw->owner = Py_NewRef(owner);
    aw->conn = Py_NewRef(conn);
    aw->message = Py_XNewRef(message);
    aw->fut = NULL;
    aw->tail = NULL;
    aw->state = AW_NEW;
    aw->kind = kind;
    PyObject_GC_Track(aw);
    return (PyObject *)aw;
}

static PyObject *Anext_vectorcall(AnextObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
Anext_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *anext_py, *recv_tail, *fragment_type, *closed_state, *future_type, *get_running_loop;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Anext() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO!OO!O:Anext", &anext_py, &recv_tail, &PyType_Type, &fragment_type,
                          &closed_state, &PyType_Type, &future_type, &get_running_loop)) {
        return NULL;
    }
    AnextObject *self = PyObject_GC_New(AnextObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)Anext_vectorcall;
    self->anext_py = Py_NewRef(anext_py);
    self->recv_tail = Py_NewRef(recv_tail);
    self->fragment_type = Py_NewRef(fragment_type);
    self->closed_state = Py_NewRef(closed_state);
    self->future_type = Py_NewRef(future_type);
    self->get_running_loop = Py_NewRef(get_running_loop);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Anext_traverse(AnextObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->anext_py);
    Py_VISIT(self->recv_tail);
    Py_VISIT(self->fragment_type);
    Py_VISIT(self->closed_state);
    Py_VISIT(self->future_type);
    Py_VISIT(self->get_running_loop);
    return 0;
}

static int
Anext_clear(AnextObject *self)
{
    Py_CLEAR(self->anext_py);
    Py_CLEAR(self->recv_tail);
    Py_CLEAR(self->fragment_type);
    Py_CLEAR(self->closed_state);
    Py_CLEAR(self->future_type);
    Py_CLEAR(self->get_running_loop);
    return 0;
}

static void
Anext_dealloc(AnextObject *self)
{
    PyObject_GC_UnTrack(self);
    Anext_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
Anext_vectorcall(AnextObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (self->anext_py == NULL) {
        PyErr_SetString(PyExc_ValueError, "Anext cleared");
        return NULL;
    }
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        return PyObject_Vectorcall(self->anext_py, args, nargsf, kwnames);  /* its TypeError */
    }
    return step_await_new((PyObject *)self, args[0], NULL, AW_ANEXT);
}

static PyTypeObject AnextType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.Anext",
    .tp_basicsize = sizeof(AnextObject),
    .tp_dealloc = (destructor)Anext_dealloc,
    .tp_vectorcall_offset = offsetof(AnextObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = SendNowait_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "Anext(anext_py, recv_tail, Fragment, closed_state, Future, get_running_loop): Connection.__anext__'s "
              "common cases in C (a method descriptor).",
    .tp_traverse = (traverseproc)Anext_traverse,
    .tp_clear = (inquiry)Anext_clear,
    .tp_new = Anext_new,
};

static PyObject *Send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
Send_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *send_py;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Send() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O:Send", &send_py)) {
        return NULL;
    }
    SendObject *self = PyObject_GC_New(SendObject, type);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)Send_vectorcall;
    self->send_py = Py_NewRef(send_py);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Send_traverse(SendObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->send_py);
    return 0;
}

static int
Send_clear(SendObject *self)
{
    Py_CLEAR(self->send_py);
    return 0;
}

static void
Send_dealloc(SendObject *self)
{
    PyObject_GC_UnTrack(self);
    Send_clear(self);
    PyObject_GC_Del(self);
}

static PyObject *
Send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (self->send_py == NULL) {
        PyErr_SetString(PyExc_ValueError, "Send cleared");
        return NULL;
    }
    /* send(conn, message), and send(conn, message, None) or send(conn, message, text=None): the common case when
     * the message is a str or bytes; anything else (the TypeError of a bad call included) is send_py's */
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int common = nargs + nkw >= 2 && nargs + nkw <= 3 && nargs >= 2
                 && (nkw == 0 || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "text") == 0)
                 && (nargs + nkw == 2 || args[2] == Py_None)
                 && (PyBytes_CheckExact(args[1]) || PyUnicode_CheckExact(args[1]));
    if (!common) {
        return PyObject_Vectorcall(self->send_py, args, nargsf, kwnames);
    }
    return step_await_new((PyObject *)self, args[0], args[1], AW_SEND);
}

static PyTypeObject SendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ws._speedups.Send",
    .tp_basicsize = sizeof(SendObject),
    .tp_dealloc = (destructor)Send_dealloc,
    .tp_vectorcall_offset = offsetof(SendObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = SendNowait_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "Send(send_py): Connection.send's common case in C (a method descriptor).",
    .tp_traverse = (traverseproc)Send_traverse,
    .tp_clear = (inquiry)Send_clear,
    .tp_new = Send_new,
};

static int
anext_init(PyObject *module)
{
    for (int i = 0; i < A_COUNT; i++) {
        if ((anext_str[i] = PyUnicode_InternFromString(anext_names[i])) == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&StepAwaitType) < 0 || PyType_Ready(&AnextType) < 0 || PyType_Ready(&SendType) < 0
        || PyModule_AddObjectRef(module, "Anext", (PyObject *)&AnextType) < 0
        || PyModule_AddObjectRef(module, "Send", (PyObject *)&SendType) < 0
        || PyModule_AddObjectRef(module, "StepAwait", (PyObject *)&StepAwaitType) < 0) {
        return -1;
    }
    return 0;
}

static int
module_exec(PyObject *module)
{
    const char *no_avx2 = getenv("URINGWS_NO_AVX2");
    use_avx2 = 0;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && !(no_avx2 != NULL && strcmp(no_avx2, "1") == 0);
#else
    (void)no_avx2;
#endif
    /* Which XOR loop is in use, for tests and `uringws doctor`. */
    if (PyModule_AddObjectRef(module, "AVX2", use_avx2 ? Py_True : Py_False) < 0) {
        return -1;
    }
    if (PyType_Ready(&FrameBufferType) < 0) {
        return -1;
    }
    Py_INCREF(&FrameBufferType);
    if (PyModule_AddObject(module, "FrameBuffer", (PyObject *)&FrameBufferType) < 0) {
        Py_DECREF(&FrameBufferType);
        return -1;
    }
    if (PyType_Ready(&ViewSinkType) < 0 || PyModule_AddObjectRef(module, "ViewSink", (PyObject *)&ViewSinkType) < 0) {
        return -1;
    }
    for (int i = 0; i < V_COUNT; i++) {
        if (view_str[i] == NULL && (view_str[i] = PyUnicode_InternFromString(view_names[i])) == NULL) {
            return -1;
        }
    }
    if (dispatch_init(module) < 0 || sendnowait_init(module) < 0 || anext_init(module) < 0) {
        return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL | METH_KEYWORDS,
     "apply_mask(data, mask) -> bytes\n\nXOR data with the 4-byte mask repeated (RFC 6455 section 5.3)."},
    {"configure_gather", (PyCFunction)configure_gather, METH_VARARGS,
     "configure_gather(FrameHeader, gather_min, gather_max)\n\nLet ViewSink start gathering large frames itself."},
    {"parse_messages", (PyCFunction)(void (*)(void))parse_messages, METH_FASTCALL,
     "parse_messages(buf, pos, masked, sink, limit=65535) -> int\n\nDeliver a run of whole data messages of at "
     "most limit bytes to sink; "
     "return the position of the first frame not taken."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_GIL_DISABLED
    /* No module state and no shared mutable data: safe on free-threaded builds. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "uringws.ws._speedups",
    .m_doc = "Optional C twins of uringws.ws.frames.apply_mask_py, parse_messages_py and FrameBufferPy.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
