/* Optional compiled core of uringws.ring.Ring: SQE preparation, submission and CQE dispatch in C.
 *
 * The pure ring (ring.py) drives io_uring through ctypes and struct: each operation costs several C calls made
 * from bytecode, and the io_uring_enter goes through ctypes. This type owns the mmapped SQ/CQ of a ring that
 * fast.py set up (io_uring_setup stays in Python: it runs once), prepares SQEs in place, calls io_uring_enter as
 * a raw syscall and dispatches CQEs to the callbacks by user_data, with the same contract as ring.Ring:
 *
 *   - every prep writes all 64 bytes of its SQE (a field of the slot's previous SQE never survives);
 *   - a value that does not fit the SQE raises ValueError before anything is committed;
 *   - buffers, addresses and timespecs are held (by user_data) until the operation's last CQE, one without
 *     IORING_CQE_F_MORE, so the kernel never touches freed memory;
 *   - one batch of CQEs per wait(); KeyboardInterrupt/SystemExit in a callback keeps the rest for the next wait.
 *
 * Memory ordering is explicit (not x86 ordering by accident): the SQ tail is published with a release store after
 * the SQE stores, the CQ tail is read with an acquire load before the CQEs below it, the CQ head is released with
 * a release store after those CQEs were copied out, and the SQ head (slots the kernel consumed) is read with an
 * acquire load before those slots are rewritten. These are liburing's io_uring_smp_load_acquire/store_release.
 *
 * fast.py subclasses this type (CompiledRing) for the parts that run once per ring: set-up, close with its
 * cancel-and-reap loop, __del__, __repr__. The type is not thread-safe, like ring.Ring.
 *
 * RingIndex (at the end) gives Python code the same acquire loads and release stores for an index of a ring it
 * drives itself: the provided buffer ring's tail (bufring.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "structmember.h"

#include "../_fastattr.h"
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif

/* Our own copies of the uapi layouts (include/uapi/linux/io_uring.h), so that old system headers do not matter. */
struct sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t op_flags;
    uint64_t user_data;
    uint16_t buf_group;
    uint16_t personality;
    int32_t splice_fd_in;
    uint64_t addr3;
    uint64_t pad2;
};

struct cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    struct sqring_offsets sq_off;
    struct cqring_offsets cq_off;
};

struct getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};

struct ktimespec {
    int64_t tv_sec;
    int64_t tv_nsec;
};

struct msghdr64 {
    uint64_t msg_name;
    uint32_t msg_namelen;
    uint32_t pad;
    uint64_t msg_iov;
    uint64_t msg_iovlen;
    uint64_t msg_control;
    uint64_t msg_controllen;
    int32_t msg_flags;
    int32_t pad2;
};

struct iovec64 {
    uint64_t base;
    uint64_t len;
};

_Static_assert(sizeof(struct sqe) == 64, "io_uring_sqe is 64 bytes");
_Static_assert(sizeof(struct cqe) == 16, "io_uring_cqe is 16 bytes");
_Static_assert(sizeof(struct uring_params) == 120, "io_uring_params is 120 bytes");
_Static_assert(sizeof(struct msghdr64) == 56, "msghdr is 56 bytes");

enum {
    OP_NOP = 0, OP_POLL_ADD = 6, OP_POLL_REMOVE = 7, OP_SENDMSG = 9, OP_TIMEOUT = 11, OP_ACCEPT = 13,
    OP_ASYNC_CANCEL = 14, OP_LINK_TIMEOUT = 15, OP_CONNECT = 16, OP_CLOSE = 19, OP_READ = 22, OP_SEND = 26,
    OP_RECV = 27, OP_SHUTDOWN = 34,
};
#define IOSQE_IO_LINK (1U << 2)
#define IOSQE_IO_HARDLINK (1U << 3)
#define IOSQE_BUFFER_SELECT (1U << 5)
#define LINKS (IOSQE_IO_LINK | IOSQE_IO_HARDLINK)
#define IORING_POLL_ADD_MULTI 1U
#define IORING_RECV_MULTISHOT (1U << 1)
#define IORING_ACCEPT_MULTISHOT 1U
#define IORING_CQE_F_MORE (1U << 1)
#define IORING_FEAT_SINGLE_MMAP 1U
#define IORING_FEAT_EXT_ARG (1U << 8)
#define IORING_OFF_SQ_RING 0ULL
#define IORING_OFF_CQ_RING 0x8000000ULL
#define IORING_OFF_SQES 0x10000000ULL
#define IORING_SQ_CQ_OVERFLOW (1U << 1)
#define IORING_SQ_TASKRUN (1U << 2)
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#define IORING_ENTER_GETEVENTS 1U
#define IORING_ENTER_EXT_ARG (1U << 3)
#define U32 0xFFFFFFFFULL

static PyObject *RingError;       /* uringws.ring.ring.RingError */
static PyObject *RingClosedError; /* uringws.ring.ring.RingClosedError */
static PyObject *Orphaned;        /* uringws.ring.ring._ORPHANED: buffers of ops that never completed */

/* One operation in flight. The table is open addressing with linear probing on user_data, which is sequential:
 * a slot is mostly found at its first probe; a removed slot becomes dead (a tombstone) that the next user_data
 * with the same home reuses. It replaces two dicts ({user_data: callback}, {user_data: keepalive}): no int
 * object per lookup, one probe. keep may be tagged (KEEP_EXPORT, see keep_release). */
#define TAB_DEAD UINT64_MAX
struct pslot {
    uint64_t ud; /* 0: empty (user_data starts at 1); TAB_DEAD: removed */
    PyObject *cb;
    PyObject *keep;
};

typedef struct {
    PyObject_HEAD
    int fd;
    int closed;
    int in_dispatch;
    int ext_arg;
    char leaked;
    unsigned sq_entries, cq_entries, setup_flags, features;
    unsigned sq_mask, cq_mask;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_map_size, cq_map_size, sqe_map_size;
    unsigned *sq_khead, *sq_ktail, *sq_kflags;
    unsigned *cq_khead, *cq_ktail;
    struct sqe *sqes;
    struct cqe *cqes;
    struct cqe *batch;   /* CQEs copied out of the CQ for one dispatch (cq_entries of them) */
    uint64_t sq_tail;    /* every SQE ever queued; user_data of the SQE queued at t is t + 1 */
    uint64_t submitted;  /* SQ tail already handed to the kernel (mod 2**32) */
    uint64_t limit;      /* SQ slots are free while sq_tail < limit; 0 once closed */
    uint64_t chain;      /* trailing unsubmitted SQEs of an open link chain */
    Py_ssize_t exports;  /* live buffer exports of the SQE array (_sqes) */
    struct pslot *tab;   /* operations in flight by user_data: callback and what the kernel may still touch */
    size_t tab_mask;     /* capacity - 1 (a power of two) */
    Py_ssize_t tab_count; /* live entries */
    Py_ssize_t tab_used;  /* live + dead slots */
    Py_ssize_t keep_count;
    PyObject *backlog;   /* [(user_data, res, flags)] consumed from the CQ, not dispatched yet */
    PyObject *on_callback_error;
    struct ktimespec wait_ts;
    struct getevents_arg wait_arg;
    /* Completion batching (DEFER_TASKRUN rings only): after a wait() that dispatched CQEs of two operations or
     * more, the next blocking wait asks the kernel for batch_count completions and gives up after batch_wait
     * seconds (or the caller's timeout, if shorter). 0 (the default) never waits for more than one. */
    double batch_wait;
    unsigned batch_count;
    Py_ssize_t last_dispatched; /* CQEs the last wait() dispatched, counted only when batching */
    unsigned last_sources;      /* operations (runs of one user_data) among them */
    unsigned batch_n;           /* CQEs in batch[] from the last reap */
    unsigned long long batched_waits; /* waits that asked for a batch */
} RingObject;

/* ------------------------------------------------------------------------------------------------ arguments */

/* Fast-call argument parsing: positionals, then keywords by name (the rest keep the caller's defaults). */
static int
parse(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
      Py_ssize_t min_pos, Py_ssize_t max_pos, PyObject **out)
{
    Py_ssize_t n = 0;
    while (names[n] != NULL)
        n++;
    if (nargs < min_pos || nargs > max_pos) {
        PyErr_Format(PyExc_TypeError, "%s() takes from %zd to %zd positional arguments but %zd were given", fname,
                     min_pos, max_pos, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    if (kwnames == NULL)
        return 0;
    Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t j = 0;
        for (; j < n; j++)
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0)
                break;
        if (j == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname, key);
            return -1;
        }
        if (j < nargs) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname, names[j]);
            return -1;
        }
        out[j] = args[nargs + k];
    }
    for (Py_ssize_t i = 0; i < min_pos; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

static const char *
op_name(int opcode)
{
    switch (opcode) {
    case OP_NOP: return "NOP";
    case OP_POLL_ADD: return "POLL_ADD";
    case OP_POLL_REMOVE: return "POLL_REMOVE";
    case OP_SENDMSG: return "SENDMSG";
    case OP_TIMEOUT: return "TIMEOUT";
    case OP_ACCEPT: return "ACCEPT";
    case OP_ASYNC_CANCEL: return "ASYNC_CANCEL";
    case OP_LINK_TIMEOUT: return "LINK_TIMEOUT";
    case OP_CONNECT: return "CONNECT";
    case OP_CLOSE: return "CLOSE";
    case OP_READ: return "READ";
    case OP_SEND: return "SEND";
    case OP_RECV: return "RECV";
    case OP_SHUTDOWN: return "SHUTDOWN";
    default: return NULL;
    }
}

static void
out_of_range(int opcode, const char *what)
{
    const char *name = op_name(opcode);
    if (name != NULL)
        PyErr_Format(PyExc_ValueError, "%s: an argument is out of range (%s)", name, what);
    else
        PyErr_Format(PyExc_ValueError, "%d: an argument is out of range (%s)", opcode, what);
}

/* An int argument in [lo, hi] (signed) or ValueError naming the operation; obj NULL means dflt. */
static int
arg_i64(PyObject *obj, long long dflt, long long lo, long long hi, int opcode, const char *what, long long *out)
{
    if (obj == NULL) {
        *out = dflt;
        return 0;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        out_of_range(opcode, what);
        return -1;
    }
    *out = v;
    return 0;
}

/* An unsigned 64-bit argument (addresses, offsets, user_data). */
static int
arg_u64(PyObject *obj, int opcode, const char *what, uint64_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not '%.100s'", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        out_of_range(opcode, what);
        return -1;
    }
    *out = v;
    return 0;
}

/* A keepalive is a strong reference, or (tagged in its low bit) a bytearray we hold a buffer export of: the
 * export is what stops a resize from moving the memory, and a bytearray's export needs no memoryview around it
 * (two allocations less per RECV into a bytearray). keep_release() ends either kind. */
#define KEEP_EXPORT ((uintptr_t)1)

static inline PyObject *
keep_obj(PyObject *k)
{
    return (PyObject *)((uintptr_t)k & ~KEEP_EXPORT);
}

static void
keep_release(PyObject *k)
{
    if (k == NULL)
        return;
    if ((uintptr_t)k & KEEP_EXPORT) {
        Py_buffer view;
        memset(&view, 0, sizeof view);
        view.obj = keep_obj(k); /* bytearray's releasebuffer reads only obj; PyBuffer_Release drops our reference */
        PyBuffer_Release(&view);
    }
    else {
        Py_DECREF(k);
    }
}

/* (address, length, keepalive) of a contiguous buffer, like _sys.buffer_address(); the keepalive may be tagged
 * (KEEP_EXPORT) when tagged_ok. */
static int
buffer_address(PyObject *obj, int writable, uint64_t *addr, uint64_t *len, PyObject **keep, int tagged_ok)
{
    if (tagged_ok && PyByteArray_CheckExact(obj)) {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
            return -1;
        *len = (uint64_t)view.len;
        *addr = view.len ? (uint64_t)(uintptr_t)view.buf : 0;
        *keep = (PyObject *)((uintptr_t)view.obj | KEEP_EXPORT); /* view.obj: our reference, and the export */
        return 0;
    }
    if (!writable && PyBytes_CheckExact(obj)) {
        *addr = (uint64_t)(uintptr_t)PyBytes_AS_STRING(obj);
        *len = (uint64_t)PyBytes_GET_SIZE(obj);
        Py_INCREF(obj);
        *keep = obj;
        return 0;
    }
    if (!PyObject_CheckBuffer(obj)) {
        PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not '%.100s'", Py_TYPE(obj)->tp_name);
        return -1;
    }
    /* Our own memoryview exports the buffer for as long as we hold it: a bytearray cannot be resized (moved)
     * and a memoryview cannot be released under the kernel's feet. */
    PyObject *view = PyMemoryView_FromObject(obj);
    if (view == NULL)
        return -1;
    Py_buffer *b = PyMemoryView_GET_BUFFER(view);
    if (writable && b->readonly) {
        PyErr_Format(PyExc_TypeError, "a writable buffer is required, not a read-only '%.100s'",
                     Py_TYPE(obj)->tp_name);
        Py_DECREF(view);
        return -1;
    }
    if (!PyBuffer_IsContiguous(b, 'C')) {
        PyErr_SetString(PyExc_BufferError, "the buffer must be C-contiguous");
        Py_DECREF(view);
        return -1;
    }
    *len = (uint64_t)b->len;
    *addr = b->len ? (uint64_t)(uintptr_t)b->buf : 0;
    *keep = view;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ enter */

static int drain_cq_to_backlog(RingObject *self);

/* io_uring_enter, with the Python ring's error handling. Returns the SQEs consumed, or -1 with an exception. */
static long
ring_enter(RingObject *self, unsigned to_submit, unsigned min_complete, unsigned flags, int block, void *arg,
           size_t argsz)
{
    if (to_submit) {
        /* The release store: every SQE store above happens before the kernel can see the new tail. */
        __atomic_store_n(self->sq_ktail, (unsigned)((self->submitted + to_submit) & U32), __ATOMIC_RELEASE);
    }
    int busy = 0;
    for (;;) {
        long ret;
        int err = 0;
        if (block) {
            Py_BEGIN_ALLOW_THREADS
            ret = syscall(__NR_io_uring_enter, self->fd, to_submit, min_complete, flags, arg, argsz);
            if (ret < 0)
                err = errno;
            Py_END_ALLOW_THREADS
        }
        else {
            ret = syscall(__NR_io_uring_enter, self->fd, to_submit, min_complete, flags, arg, argsz);
            if (ret < 0)
                err = errno;
        }
        if (ret >= 0) {
            if (to_submit && !self->closed) {
                /* Without SUBMIT_ALL the kernel may stop early at an SQE it could not even prepare; the rest
                 * stays below the kernel's tail and goes with the next enter. */
                self->submitted = (self->submitted + (uint64_t)ret) & U32;
                uint64_t tail = self->sq_tail;
                unsigned khead = __atomic_load_n(self->sq_khead, __ATOMIC_ACQUIRE);
                self->limit = tail + self->sq_entries - ((tail - khead) & U32);
                if (self->chain) {
                    uint64_t unsub = (self->sq_tail - self->submitted) & U32;
                    if (self->chain > unsub)
                        self->chain = unsub;
                }
            }
            return ret;
        }
        if (err == EINTR) {
            if (to_submit)
                continue;
            return 0;
        }
        if (err == EAGAIN || err == EBUSY) {
            /* The CQ is full (overflow backlog) or the kernel is short of memory: make room by moving CQEs
             * into our backlog, then try again, for a bounded time. */
            int moved = drain_cq_to_backlog(self);
            if (moved < 0)
                return -1;
            if (moved && min_complete) {
                /* A waiting enter now has completions to dispatch: the retry must not wait for one more (which
                 * may never come) while those sit in the backlog. It only submits, and GETEVENTS still flushes
                 * the kernel's overflow list into the CQ. */
                if (!to_submit)
                    return 0;
                min_complete = 0;
                flags = IORING_ENTER_GETEVENTS;
                arg = NULL;
                argsz = 0;
                block = 0;
            }
            if (!moved) {
                if (++busy > 2000) {
                    PyErr_Format(PyExc_OSError, "io_uring_enter: %s for more than a second", strerror(err));
                    return -1;
                }
                Py_BEGIN_ALLOW_THREADS
                usleep(500);
                Py_END_ALLOW_THREADS
            }
            continue;
        }
        if (err == ETIME)
            return 0;
        PyObject *margs = Py_BuildValue("(is)", err, "");
        if (margs != NULL) {
            PyObject *msg = PyUnicode_FromFormat("io_uring_enter: %s", strerror(err));
            if (msg != NULL) {
                PyTuple_SetItem(margs, 1, msg); /* steals msg */
                PyErr_SetObject(PyExc_OSError, margs);
            }
            Py_DECREF(margs);
        }
        return -1;
    }
}

/* ------------------------------------------------------------------------------------------------ in flight */

static Py_ssize_t
tab_find(RingObject *self, uint64_t ud)
{
    if (self->tab == NULL || ud == 0 || ud == TAB_DEAD)
        return -1;
    size_t i = (size_t)ud & self->tab_mask;
    for (;;) {
        uint64_t u = self->tab[i].ud;
        if (u == ud)
            return (Py_ssize_t)i;
        if (u == 0)
            return -1;
        i = (i + 1) & self->tab_mask; /* past other entries and tombstones */
    }
}

/* Insert a user_data that is not in the table (user_data are never reused): the first empty or dead slot. */
static void
tab_put(RingObject *self, uint64_t ud, PyObject *cb, PyObject *keep)
{
    size_t i = (size_t)ud & self->tab_mask;
    uint64_t u;
    while ((u = self->tab[i].ud) != 0 && u != TAB_DEAD)
        i = (i + 1) & self->tab_mask;
    if (u == 0)
        self->tab_used++;
    self->tab[i].ud = ud;
    self->tab[i].cb = cb;
    self->tab[i].keep = keep;
}

/* Room for one more entry: live + dead slots stay under 3/4 of the table (so that every probe meets an empty
 * slot), else the table is rebuilt without its dead slots, twice as large if it is more than half live. */
static int
tab_reserve(RingObject *self)
{
    size_t cap = self->tab == NULL ? 0 : self->tab_mask + 1;
    if ((size_t)(self->tab_used + 1) * 4 <= cap * 3)
        return 0;
    size_t ncap = cap ? cap : 256;
    while ((size_t)(self->tab_count + 1) * 2 > ncap)
        ncap *= 2;
    struct pslot *old = self->tab;
    struct pslot *ntab = PyMem_Calloc(ncap, sizeof *ntab);
    if (ntab == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->tab = ntab;
    self->tab_mask = ncap - 1;
    self->tab_used = 0;
    for (size_t i = 0; i < cap; i++)
        if (old[i].ud != 0 && old[i].ud != TAB_DEAD)
            tab_put(self, old[i].ud, old[i].cb, old[i].keep);
    PyMem_Free(old);
    return 0;
}

/* Take slot i out (its references go to the caller). A dead slot keeps the probe runs of others intact; when
 * the next slot is empty, no run goes through this one and it can be empty again. */
static void
tab_remove(RingObject *self, size_t i)
{
    struct pslot *t = self->tab;
    if (t[i].keep != NULL)
        self->keep_count--;
    self->tab_count--;
    if (t[(i + 1) & self->tab_mask].ud == 0) {
        t[i].ud = 0;
        self->tab_used--;
    }
    else {
        t[i].ud = TAB_DEAD;
    }
    t[i].cb = NULL;
    t[i].keep = NULL;
}

static int orphan_object(PyObject *obj);

/* Drop every entry: keepalives go to the orphan list (the kernel may still use them), callbacks are released. */
static int
tab_clear(RingObject *self, int orphan)
{
    int r = 0;
    if (self->tab == NULL)
        return 0;
    for (size_t i = 0; i <= self->tab_mask; i++) {
        struct pslot *sl = &self->tab[i];
        if (sl->ud == 0 || sl->ud == TAB_DEAD)
            continue;
        PyObject *keep = sl->keep;
        sl->ud = 0;
        sl->keep = NULL;
        if (keep != NULL && orphan) {
            /* The kernel may still use it: the orphan list keeps it (and an export stays, so it cannot move). */
            if (orphan_object(keep_obj(keep)) < 0)
                r = -1;
            Py_DECREF(keep_obj(keep));
        }
        else {
            keep_release(keep);
        }
        Py_CLEAR(sl->cb);
    }
    memset(self->tab, 0, (self->tab_mask + 1) * sizeof *self->tab);
    self->tab_count = 0;
    self->tab_used = 0;
    self->keep_count = 0;
    return r;
}

/* ------------------------------------------------------------------------------------------------ SQEs */

static inline uint64_t
unsubmitted(RingObject *self)
{
    return (self->sq_tail - self->submitted) & U32;
}

/* Queued SQEs that may go to the kernel: all but the trailing SQEs of a link chain still open (its last SQE has
 * IOSQE_IO_LINK). The kernel ends a chain at the end of each submission, so an open chain goes only once closed. */
static inline uint64_t
ready(RingObject *self)
{
    uint64_t n = unsubmitted(self);
    return n > self->chain ? n - self->chain : 0;
}

/* No free SQ slot: hand the kernel everything but an unfinished link chain (chains must stay whole). */
static int
make_room(RingObject *self)
{
    if (self->closed) {
        PyErr_SetString(RingClosedError, "the ring is closed");
        return -1;
    }
    uint64_t n = unsubmitted(self);
    if (n <= self->chain) {
        PyErr_Format(RingError, "a link chain of %llu SQEs fills the whole SQ (%u entries)",
                     (unsigned long long)self->chain, self->sq_entries);
        return -1;
    }
    if (ring_enter(self, (unsigned)(n - self->chain), 0, 0, 0, NULL, 0) < 0)
        return -1;
    if (self->sq_tail >= self->limit) {
        PyErr_SetString(RingError, "the kernel did not consume any SQE from a full SQ");
        return -1;
    }
    return 0;
}

/* The free slot for the next SQE (zeroed: every prep writes all 64 bytes), or NULL with an exception. */
static inline struct sqe *
claim(RingObject *self)
{
    if (self->sq_tail >= self->limit && make_room(self) < 0)
        return NULL;
    struct sqe *s = &self->sqes[self->sq_tail & self->sq_mask];
    memset(s, 0, sizeof *s);
    return s;
}

/* Commit the SQE written into the claimed slot: pending/keep entries, then the tail. Steals keep. */
static PyObject *
commit(RingObject *self, struct sqe *s, PyObject *callback, PyObject *keep)
{
    uint64_t ud = self->sq_tail + 1;
    s->user_data = ud;
    PyObject *key = PyLong_FromUnsignedLongLong(ud);
    if (key == NULL || tab_reserve(self) < 0) {
        Py_XDECREF(key);
        keep_release(keep);
        return NULL;
    }
    Py_INCREF(callback);
    tab_put(self, ud, callback, keep); /* keep: stolen */
    self->tab_count++;
    if (keep != NULL)
        self->keep_count++;
    self->sq_tail = ud;
    uint8_t f = s->flags;
    if (f & LINKS)
        self->chain++;
    else
        self->chain = 0;
    return key;
}

static int
check_open(RingObject *self)
{
    if (self->closed) {
        PyErr_SetString(RingClosedError, "the ring is closed");
        return -1;
    }
    return 0;
}

/* The generic prep: all fields given, checked against their SQE widths. Steals keep. */
static PyObject *
prep(RingObject *self, int opcode, long long sqe_flags, long long ioprio, long long fd, uint64_t off, uint64_t addr,
     long long len, long long op_flags, PyObject *callback, PyObject *keep)
{
    const char *bad = NULL;
    if (sqe_flags < 0 || sqe_flags > 0xFF)
        bad = "sqe_flags";
    else if (ioprio < 0 || ioprio > 0xFFFF)
        bad = "ioprio";
    else if (fd < INT32_MIN || fd > INT32_MAX)
        bad = "fd";
    else if (len < 0 || (unsigned long long)len > U32)
        bad = "len";
    else if (op_flags < 0 || (unsigned long long)op_flags > U32)
        bad = "flags";
    if (bad != NULL) {
        out_of_range(opcode, bad);
        keep_release(keep);
        return NULL;
    }
    struct sqe *s = claim(self);
    if (s == NULL) {
        keep_release(keep);
        return NULL;
    }
    s->opcode = (uint8_t)opcode;
    s->flags = (uint8_t)sqe_flags;
    s->ioprio = (uint16_t)ioprio;
    s->fd = (int32_t)fd;
    s->off = off;
    s->addr = addr;
    s->len = (uint32_t)len;
    s->op_flags = (uint32_t)op_flags;
    return commit(self, s, callback, keep);
}

#define FLAGS_ARG(obj, name, out) arg_i64((obj), 0, LLONG_MIN, LLONG_MAX, opcode, (name), (out))

static PyObject *
Ring_nop(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 1 && kwnames == NULL) {
        struct sqe *s = claim(self);
        if (s == NULL)
            return NULL;
        s->opcode = OP_NOP;
        s->fd = -1;
        return commit(self, s, args[0], NULL);
    }
    static const char *const names[] = {"callback", "sqe_flags", NULL};
    PyObject *a[2] = {NULL, NULL};
    const int opcode = OP_NOP;
    long long sqe_flags;
    if (parse("nop", args, nargs, kwnames, names, 1, 1, a) < 0 || FLAGS_ARG(a[1], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    return prep(self, OP_NOP, sqe_flags, 0, -1, 0, 0, 0, 0, a[0], NULL);
}

/* send/recv/read: (fd, buffer, callback, *, flags|offset, sqe_flags). */
static PyObject *
buffer_op(RingObject *self, int opcode, int writable, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const send_names[] = {"fd", "data", "callback", "flags", "sqe_flags", NULL};
    static const char *const recv_names[] = {"fd", "buf", "callback", "flags", "sqe_flags", NULL};
    static const char *const read_names[] = {"fd", "buf", "callback", "offset", "sqe_flags", NULL};
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    const char *fname = opcode == OP_SEND ? "send" : opcode == OP_RECV ? "recv" : "read";
    if (nargs == 3 && kwnames == NULL) {
        a[0] = args[0];
        a[1] = args[1];
        a[2] = args[2];
    }
    else if (parse(fname, args, nargs, kwnames,
                   opcode == OP_SEND ? send_names : opcode == OP_RECV ? recv_names : read_names, 3, 3, a) < 0) {
        return NULL;
    }
    long long fd, sqe_flags, flags = 0;
    uint64_t off = 0;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 ||
        FLAGS_ARG(a[4], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    if (opcode == OP_READ) {
        long long o;
        if (arg_i64(a[3], -1, LLONG_MIN, LLONG_MAX, opcode, "offset", &o) < 0)
            return NULL;
        off = (uint64_t)o;
    }
    else if (FLAGS_ARG(a[3], "flags", &flags) < 0) {
        return NULL;
    }
    uint64_t addr, len;
    PyObject *keep;
    if (buffer_address(a[1], writable, &addr, &len, &keep, 1) < 0)
        return NULL;
    return prep(self, opcode, sqe_flags, 0, fd, off, addr, len > U32 ? -1 : (long long)len, flags, a[2], keep);
}

static PyObject *
Ring_send(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return buffer_op(self, OP_SEND, 0, args, nargs, kwnames);
}

static PyObject *
Ring_recv(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return buffer_op(self, OP_RECV, 1, args, nargs, kwnames);
}

static PyObject *
Ring_read(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return buffer_op(self, OP_READ, 1, args, nargs, kwnames);
}

static PyObject *
Ring_poll_add(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "events", "callback", "multishot", "sqe_flags", NULL};
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    const int opcode = OP_POLL_ADD;
    if (nargs == 3 && kwnames == NULL) {
        a[0] = args[0];
        a[1] = args[1];
        a[2] = args[2];
    }
    else if (parse("poll_add", args, nargs, kwnames, names, 3, 3, a) < 0) {
        return NULL;
    }
    long long fd, sqe_flags;
    int multishot = 0;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 ||
        FLAGS_ARG(a[4], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    if (a[3] != NULL && (multishot = PyObject_IsTrue(a[3])) < 0)
        return NULL;
    if (!PyLong_Check(a[1])) {
        PyErr_Format(PyExc_TypeError, "events must be an int, not '%.100s'", Py_TYPE(a[1])->tp_name);
        return NULL;
    }
    unsigned long events = PyLong_AsUnsignedLongMask(a[1]) & U32; /* like the pure ring: events & 0xFFFFFFFF */
    if (events == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return prep(self, opcode, sqe_flags, 0, fd, 0, 0, multishot ? IORING_POLL_ADD_MULTI : 0, (long long)events,
                a[2], NULL);
}

static PyObject *
Ring_recv_select(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "bgid", "callback", "multishot", "flags", "sqe_flags", NULL};
    PyObject *a[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
    const int opcode = OP_RECV;
    long long fd, bgid, flags, sqe_flags;
    int multishot = 1;
    if (parse("recv_select", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    if (a[3] != NULL && (multishot = PyObject_IsTrue(a[3])) < 0)
        return NULL;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 || FLAGS_ARG(a[4], "flags", &flags) < 0 ||
        FLAGS_ARG(a[5], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    int overflow = 0;
    bgid = PyLong_AsLongLongAndOverflow(a[1], &overflow);
    if (bgid == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || bgid < 0 || bgid > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "bgid must fit in 16 bits");
        return NULL;
    }
    if (sqe_flags >= 0 && sqe_flags <= 0xFF)
        sqe_flags |= IOSQE_BUFFER_SELECT;
    uint64_t tail = self->sq_tail;
    PyObject *ud = prep(self, opcode, sqe_flags, multishot ? IORING_RECV_MULTISHOT : 0, fd, 0, 0, 0, flags, a[2],
                        NULL);
    if (ud != NULL)
        self->sqes[tail & self->sq_mask].buf_group = (uint16_t)bgid; /* not handed over before the next enter */
    return ud;
}

static PyObject *
Ring_sendmsg(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "buffers", "callback", "flags", "sqe_flags", NULL};
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    const int opcode = OP_SENDMSG;
    long long fd, flags, sqe_flags;
    if (parse("sendmsg", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 || FLAGS_ARG(a[3], "flags", &flags) < 0 ||
        FLAGS_ARG(a[4], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(a[1], "sendmsg() needs a sequence of buffers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count == 0) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "sendmsg() needs at least one buffer");
        return NULL;
    }
    /* keep = (blob, keepalive of each buffer); the blob holds the msghdr and the iovec array (8-aligned). */
    PyObject *keep = PyTuple_New(count + 1);
    PyObject *blob = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(sizeof(struct msghdr64) +
                                                                  count * sizeof(struct iovec64)));
    if (keep == NULL || blob == NULL) {
        Py_XDECREF(keep);
        Py_XDECREF(blob);
        Py_DECREF(seq);
        return NULL;
    }
    PyTuple_SET_ITEM(keep, 0, blob);
    struct msghdr64 *msg = (struct msghdr64 *)PyBytes_AS_STRING(blob);
    struct iovec64 *iov = (struct iovec64 *)(msg + 1);
    memset(msg, 0, sizeof *msg);
    for (Py_ssize_t i = 0; i < count; i++) {
        uint64_t addr, len;
        PyObject *k;
        if (buffer_address(PySequence_Fast_GET_ITEM(seq, i), 0, &addr, &len, &k, 0) < 0) {
            Py_DECREF(keep);
            Py_DECREF(seq);
            return NULL;
        }
        iov[i].base = addr;
        iov[i].len = len;
        PyTuple_SET_ITEM(keep, i + 1, k);
    }
    Py_DECREF(seq);
    msg->msg_iov = (uint64_t)(uintptr_t)iov;
    msg->msg_iovlen = (uint64_t)count;
    return prep(self, opcode, sqe_flags, 0, fd, 0, (uint64_t)(uintptr_t)msg, 1, flags, a[2], keep);
}

static PyObject *
Ring_accept(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "callback", "multishot", "flags", "sqe_flags", NULL};
    PyObject *a[5] = {NULL, NULL, NULL, NULL, NULL};
    const int opcode = OP_ACCEPT;
    long long fd, flags, sqe_flags;
    int multishot = 0;
    if (parse("accept", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    if (a[2] != NULL && (multishot = PyObject_IsTrue(a[2])) < 0)
        return NULL;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 ||
        arg_i64(a[3], SOCK_CLOEXEC, LLONG_MIN, LLONG_MAX, opcode, "flags", &flags) < 0 ||
        FLAGS_ARG(a[4], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    return prep(self, opcode, sqe_flags, multishot ? IORING_ACCEPT_MULTISHOT : 0, fd, 0, 0, 0, flags, a[1], NULL);
}

static PyObject *
Ring_connect(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "address", "callback", "sqe_flags", NULL};
    PyObject *a[4] = {NULL, NULL, NULL, NULL};
    const int opcode = OP_CONNECT;
    long long fd, sqe_flags;
    if (parse("connect", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    if (!PyBytes_Check(a[1])) {
        PyErr_SetString(PyExc_TypeError, "connect() needs an encoded sockaddr (bytes); use uringws.ring.sockaddr()");
        return NULL;
    }
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 ||
        FLAGS_ARG(a[3], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    Py_INCREF(a[1]);
    return prep(self, opcode, sqe_flags, 0, fd, (uint64_t)PyBytes_GET_SIZE(a[1]),
                (uint64_t)(uintptr_t)PyBytes_AS_STRING(a[1]), 0, 0, a[2], a[1]);
}

/* shutdown(fd, how, cb) and close_fd(fd, cb). */
static PyObject *
Ring_shutdown(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "how", "callback", "sqe_flags", NULL};
    PyObject *a[4] = {NULL, NULL, NULL, NULL};
    const int opcode = OP_SHUTDOWN;
    long long fd, how, sqe_flags;
    if (parse("shutdown", args, nargs, kwnames, names, 3, 3, a) < 0)
        return NULL;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 || FLAGS_ARG(a[1], "how", &how) < 0 ||
        FLAGS_ARG(a[3], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    return prep(self, opcode, sqe_flags, 0, fd, 0, 0, how, 0, a[2], NULL);
}

static PyObject *
Ring_close_fd(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"fd", "callback", "sqe_flags", NULL};
    PyObject *a[3] = {NULL, NULL, NULL};
    const int opcode = OP_CLOSE;
    long long fd, sqe_flags;
    if (parse("close_fd", args, nargs, kwnames, names, 2, 2, a) < 0)
        return NULL;
    if (arg_i64(a[0], 0, INT32_MIN, INT32_MAX, opcode, "fd", &fd) < 0 ||
        FLAGS_ARG(a[2], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    return prep(self, opcode, sqe_flags, 0, fd, 0, 0, 0, 0, a[1], NULL);
}

/* poll_remove(target, callback=None) and cancel(target, callback=None, *, cancel_flags=0). */
static PyObject *
target_op(RingObject *self, int opcode, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const rm_names[] = {"target", "callback", "sqe_flags", NULL};
    static const char *const cancel_names[] = {"target", "callback", "cancel_flags", "sqe_flags", NULL};
    PyObject *a[4] = {NULL, NULL, NULL, NULL};
    long long sqe_flags, cancel_flags = 0;
    uint64_t target;
    if (opcode == OP_POLL_REMOVE) {
        if (parse("poll_remove", args, nargs, kwnames, rm_names, 1, 2, a) < 0 ||
            FLAGS_ARG(a[2], "sqe_flags", &sqe_flags) < 0)
            return NULL;
    }
    else if (parse("cancel", args, nargs, kwnames, cancel_names, 1, 2, a) < 0 ||
             FLAGS_ARG(a[2], "cancel_flags", &cancel_flags) < 0 || FLAGS_ARG(a[3], "sqe_flags", &sqe_flags) < 0) {
        return NULL;
    }
    if (arg_u64(a[0], opcode, "target", &target) < 0)
        return NULL;
    return prep(self, opcode, sqe_flags, 0, -1, 0, target, 0, cancel_flags, a[1] ? a[1] : Py_None, NULL);
}

static PyObject *
Ring_poll_remove(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return target_op(self, OP_POLL_REMOVE, args, nargs, kwnames);
}

static PyObject *
Ring_cancel(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    return target_op(self, OP_ASYNC_CANCEL, args, nargs, kwnames);
}

/* A __kernel_timespec in a fresh bytes object (the op's keepalive). */
static PyObject *
timespec_bytes(PyObject *seconds_obj, struct ktimespec **out)
{
    double seconds = PyFloat_AsDouble(seconds_obj);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(seconds >= 0))
        seconds = 0.0;
    if (seconds > 9.2e18)
        seconds = 9.2e18;
    PyObject *b = PyBytes_FromStringAndSize(NULL, sizeof(struct ktimespec));
    if (b == NULL)
        return NULL;
    struct ktimespec *ts = (struct ktimespec *)PyBytes_AS_STRING(b);
    ts->tv_sec = (int64_t)seconds;
    ts->tv_nsec = (int64_t)((seconds - (double)ts->tv_sec) * 1e9);
    *out = ts;
    return b;
}

static PyObject *
Ring_timeout(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"seconds", "callback", "count", "sqe_flags", NULL};
    PyObject *a[4] = {NULL, NULL, NULL, NULL};
    const int opcode = OP_TIMEOUT;
    long long count, sqe_flags;
    struct ktimespec *ts;
    if (parse("timeout", args, nargs, kwnames, names, 2, 2, a) < 0 ||
        arg_i64(a[2], 0, 0, LLONG_MAX, opcode, "count", &count) < 0 || FLAGS_ARG(a[3], "sqe_flags", &sqe_flags) < 0)
        return NULL;
    PyObject *keep = timespec_bytes(a[0], &ts);
    if (keep == NULL)
        return NULL;
    return prep(self, opcode, sqe_flags, 0, -1, (uint64_t)count, (uint64_t)(uintptr_t)ts, 1, 0, a[1], keep);
}

static PyObject *
Ring_link_timeout(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"seconds", "callback", NULL};
    PyObject *a[2] = {NULL, NULL};
    struct ktimespec *ts;
    if (parse("link_timeout", args, nargs, kwnames, names, 1, 2, a) < 0)
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    if (self->chain == 0 || unsubmitted(self) == 0) {
        PyErr_SetString(RingError, "link_timeout() must directly follow an operation prepared with IOSQE_IO_LINK");
        return NULL;
    }
    PyObject *keep = timespec_bytes(a[0], &ts);
    if (keep == NULL)
        return NULL;
    return prep(self, OP_LINK_TIMEOUT, 0, 0, -1, 0, (uint64_t)(uintptr_t)ts, 1, 0, a[1] ? a[1] : Py_None, keep);
}

/* _prep(opcode, sqe_flags, ioprio, fd, off, addr, length, op_flags, callback, keep): any SQE (tests, rare ops). */
static PyObject *
Ring__prep(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "_prep() takes 10 arguments");
        return NULL;
    }
    long long v[8];
    uint64_t off, addr;
    static const char *const what[] = {"opcode", "sqe_flags", "ioprio", "fd", "off", "addr", "len", "op_flags"};
    for (int i = 0; i < 8; i++) {
        if (i == 4 || i == 5)
            continue;
        if (arg_i64(args[i], 0, LLONG_MIN, LLONG_MAX, -1, what[i], &v[i]) < 0)
            return NULL;
    }
    if (v[0] < 0 || v[0] > 0xFF) {
        out_of_range((int)v[0], "opcode");
        return NULL;
    }
    if (arg_u64(args[4], (int)v[0], "off", &off) < 0 || arg_u64(args[5], (int)v[0], "addr", &addr) < 0)
        return NULL;
    PyObject *keep = args[9] == Py_None ? NULL : args[9];
    Py_XINCREF(keep);
    return prep(self, (int)v[0], v[1], v[2], v[3], off, addr, v[6], v[7], args[8], keep);
}

/* ------------------------------------------------------------------------------------------------ CQEs */

/* Copy every CQE now in the CQ into self->batch and release their slots. Returns how many. */
static unsigned
reap(RingObject *self)
{
    unsigned head = *self->cq_khead; /* only we write it */
    unsigned tail = __atomic_load_n(self->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned n = tail - head;
    if (n > self->cq_entries)
        n = self->cq_entries; /* cannot happen with a sane kernel; never read past the batch */
    for (unsigned i = 0; i < n; i++)
        self->batch[i] = self->cqes[(head + i) & self->cq_mask];
    self->batch_n = n;
    /* The release store: the copies above are complete before the kernel may reuse these slots. */
    __atomic_store_n(self->cq_khead, head + n, __ATOMIC_RELEASE);
    return n;
}

static PyObject *
cqe_tuple(const struct cqe *c)
{
    return Py_BuildValue("(KiI)", (unsigned long long)c->user_data, (int)c->res, (unsigned)c->flags);
}

/* Append batch[from:n] to the backlog (at its end, or at its start when they come before it). */
static int
batch_to_backlog(RingObject *self, unsigned from, unsigned n, int at_start)
{
    if (from >= n)
        return 0;
    PyObject *lst = PyList_New(n - from);
    if (lst == NULL)
        return -1;
    for (unsigned i = from; i < n; i++) {
        PyObject *t = cqe_tuple(&self->batch[i]);
        if (t == NULL) {
            Py_DECREF(lst);
            return -1;
        }
        PyList_SET_ITEM(lst, i - from, t);
    }
    Py_ssize_t at = at_start ? 0 : PyList_GET_SIZE(self->backlog);
    int r = PyList_SetSlice(self->backlog, at, at, lst);
    Py_DECREF(lst);
    return r;
}

static int
drain_cq_to_backlog(RingObject *self)
{
    if (self->cq_map == NULL)
        return 0;
    /* Not through self->batch: dispatch() may be iterating over it (a callback's submit got EAGAIN/EBUSY). */
    unsigned head = *self->cq_khead;
    unsigned tail = __atomic_load_n(self->cq_ktail, __ATOMIC_ACQUIRE);
    unsigned n = tail - head;
    if (n > self->cq_entries)
        n = self->cq_entries;
    for (unsigned i = 0; i < n; i++) {
        PyObject *t = cqe_tuple(&self->cqes[(head + i) & self->cq_mask]);
        if (t == NULL || PyList_Append(self->backlog, t) < 0) {
            Py_XDECREF(t);
            __atomic_store_n(self->cq_khead, head + i, __ATOMIC_RELEASE);
            return -1;
        }
        Py_DECREF(t);
    }
    __atomic_store_n(self->cq_khead, head + n, __ATOMIC_RELEASE);
    return n != 0;
}

/* ------------------------------------------------------------------------------------------------ RecvHook */

/* RecvHook(transport, bufring): the completion callback of a RingSocketTransport's multishot RECV when this ring
 * core is in use -- RingSocketTransport._on_recv's hot path in C (uringws/loop/transports.py keeps the Python
 * method as its pure twin; the two must stay equivalent). deliver() calls it without making int objects.
 *
 * The hot path (res > 0, a buffered protocol or no IORING_CQE_F_SOCK_NONEMPTY, not closing, not paused, nothing
 * held) takes the bytes from the provided buffer ring as BufferRing.take() does (an incremental ring's buffer
 * continues at bufring.offsets[bid]), hands them to protocol.data_received(bytes) (the buffer recycled first) or
 * to the BufferedProtocol's received_view(view) / transport._feed_buffered(view) (a view released right after
 * the call, the buffer recycled then), routes a protocol's exception to transport._fatal_error() with the same
 * messages (SystemExit and KeyboardInterrupt propagate), and re-arms at the end of the multishot. Everything else
 * goes to transport._on_recv_slow(res, flags).
 *
 * The transport's state is read where it lives, on every call (nothing is copied that could go stale): the
 * slots of its class, read at their offsets when they are plain __slots__ members (looked up once per hook, as
 * generic attribute lookup would find them), else by getattr. The buffer ring's fixed parts (its offsets list,
 * its two mmaps, buffer size, mask) are taken once: BufferRing never replaces them. Its tail counter stays
 * bufring._tail, shared with the Python recycle(); the ring's tail itself is published with a release store after
 * the entry, as RingIndex does. */

enum { A_BUFFERED, A_CLOSING, A_PAUSED, A_HELD, A_VIEW_SINK, A_PROTOCOL, A_READ_EOF, A_READ_STATS, A_COUNT };
static const char *const hook_attr_names[A_COUNT] = {
    "_buffered", "_closing", "_paused", "_held", "_view_sink", "_protocol", "_read_eof", "_read_stats",
};
static PyObject *hook_attr_str[A_COUNT];
static PyObject *s_on_recv_slow, *s_feed_buffered, *s_fatal_error, *s_recv_ended, *s_arm_read, *s_data_received,
    *s_release, *s_tail, *s_restarts, *s_msg_data_received, *s_msg_received_view;

#define CQE_F_BUFFER 1U
#define CQE_F_SOCK_NONEMPTY (1U << 2)
#define CQE_F_BUF_MORE (1U << 4)
#define CQE_BUFFER_SHIFT 16

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *transport;
    PyObject *bufring;
    PyObject *offsets; /* bufring.offsets: a list, one int per buffer id */
    PyObject *mm;      /* bufring.mm: the buffers */
    PyObject *ring_mm; /* bufring._ring_mm: the entries, with the tail in entry 0's resv */
    Py_ssize_t size;   /* bufring.size */
    uint64_t mask;     /* bufring._mask */
    FastAttrs *fa;     /* where the transport's fields are (set per call, from hook_cache) */
} RecvHookObject;

static FastAttrsCache hook_cache;

static PyTypeObject RecvHookType;

/* A new reference to the transport's attribute i (NULL with an exception set). */
static PyObject *
hook_attr(RecvHookObject *h, int i)
{
    return fa_get(h->fa, h->transport, hook_attr_str, i);
}

/* The truth of attribute i: 1, 0, or -1 with an exception set. */
static int
hook_flag(RecvHookObject *h, int i)
{
    return fa_true(h->fa, h->transport, hook_attr_str, i);
}

/* Give buffer bid back to the kernel: BufferRing.recycle(bid) (data_addr: where the buffers are mapped). */
static int
hook_recycle(RecvHookObject *h, Py_ssize_t bid, char *data_addr)
{
    PyObject *t = PyObject_GetAttr(h->bufring, s_tail);
    if (t == NULL)
        return -1;
    unsigned long long tail = PyLong_AsUnsignedLongLong(t);
    Py_DECREF(t);
    if (tail == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    Py_buffer rb;
    if (PyObject_GetBuffer(h->ring_mm, &rb, PyBUF_WRITABLE) < 0)
        return -1;
    size_t off = (size_t)((tail & h->mask) << 4);
    if (off + 16 > (size_t)rb.len) {
        PyBuffer_Release(&rb);
        PyErr_SetString(PyExc_ValueError, "RecvHook: buffer ring entry out of its mapping");
        return -1;
    }
    /* struct io_uring_buf {u64 addr; u32 len; u16 bid; u16 resv}: resv of entry 0 is the tail, never written here */
    char *e = (char *)rb.buf + off;
    uint64_t addr = (uint64_t)(uintptr_t)data_addr + (uint64_t)bid * (uint64_t)h->size;
    uint32_t len = (uint32_t)h->size;
    uint16_t b = (uint16_t)bid;
    memcpy(e, &addr, 8);
    memcpy(e + 8, &len, 4);
    memcpy(e + 12, &b, 2);
    PyObject *nt = PyLong_FromUnsignedLongLong(tail + 1);
    if (nt == NULL || PyObject_SetAttr(h->bufring, s_tail, nt) < 0) {
        Py_XDECREF(nt);
        PyBuffer_Release(&rb);
        return -1;
    }
    Py_DECREF(nt);
    __atomic_store_n((uint16_t *)((char *)rb.buf + 14), (uint16_t)((tail + 1) & 0xFFFF), __ATOMIC_RELEASE);
    PyBuffer_Release(&rb);
    return 0;
}

/* With a protocol's exception set: SystemExit/KeyboardInterrupt stay set (-1); anything else goes to
 * transport._fatal_error(exc, message) (0, or -1 if that raised), as `except BaseException as exc` does. */
static int transport_route(PyObject *transport, PyObject *message);

static int
hook_route(RecvHookObject *h, PyObject *message)
{
    return transport_route(h->transport, message);
}

/* hook_route for any transport (TransportWrite's send failures too). */
static int
transport_route(PyObject *transport, PyObject *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyErr_NormalizeException(&et, &ev, &tb);
    if (ev == NULL) {
        Py_XDECREF(et);
        Py_XDECREF(tb);
        PyErr_SetString(PyExc_SystemError, "uringws: a transport's exception without a value");
        return -1;
    }
    if (tb != NULL)
        PyException_SetTraceback(ev, tb);
    Py_XDECREF(et);
    Py_XDECREF(tb);
    PyObject *prev = PyErr_GetHandledException(); /* as inside the except block: what it raises chains to ev */
    PyErr_SetHandledException(ev);
    PyObject *r = PyObject_CallMethodObjArgs(transport, s_fatal_error, ev, message, NULL);
    PyErr_SetHandledException(prev);
    Py_XDECREF(prev);
    Py_DECREF(ev);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The end of the multishot on the hot path: _recv_ended(), then re-arm while reading. */
static int
hook_ended(RecvHookObject *h)
{
    PyObject *r = PyObject_CallMethodNoArgs(h->transport, s_recv_ended);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    int c = hook_flag(h, A_CLOSING);
    if (c != 0)
        return c < 0 ? -1 : 0;
    c = hook_flag(h, A_PAUSED);
    if (c != 0)
        return c < 0 ? -1 : 0;
    c = hook_flag(h, A_READ_EOF);
    if (c != 0)
        return c < 0 ? -1 : 0;
    PyObject *stats = hook_attr(h, A_READ_STATS);
    if (stats == NULL)
        return -1;
    PyObject *n = PyObject_GetAttr(stats, s_restarts);
    PyObject *one = PyLong_FromLong(1); /* a cached small int */
    PyObject *n1 = n == NULL || one == NULL ? NULL : PyNumber_Add(n, one);
    Py_XDECREF(one);
    Py_XDECREF(n);
    int bad = n1 == NULL || PyObject_SetAttr(stats, s_restarts, n1) < 0;
    Py_XDECREF(n1);
    Py_DECREF(stats);
    if (bad)
        return -1;
    r = PyObject_CallMethodNoArgs(h->transport, s_arm_read);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The data of a hot-path CQE: 0, or -1 with an exception set. */
static int
hook_hot(RecvHookObject *h, int32_t res, uint32_t flags, int buffered)
{
    Py_ssize_t bid = (Py_ssize_t)(flags >> CQE_BUFFER_SHIFT);
    PyObject *offsets = h->offsets;
    if (!PyList_Check(offsets) || bid >= PyList_GET_SIZE(offsets)) {
        PyErr_SetString(PyExc_IndexError, "RecvHook: buffer id out of the buffer ring");
        return -1;
    }
    Py_ssize_t start = PyLong_AsSsize_t(PyList_GET_ITEM(offsets, bid));
    if (start == -1 && PyErr_Occurred())
        return -1;
    if (flags & CQE_F_BUF_MORE) {
        PyObject *v = PyLong_FromSsize_t(start + res);
        if (v == NULL)
            return -1;
        PyList_SetItem(offsets, bid, v); /* steals v */
    }
    else if (start) {
        PyList_SetItem(offsets, bid, PyLong_FromLong(0)); /* a small int: cannot fail */
    }
    if (start < 0 || start > h->size - res) {
        PyErr_SetString(PyExc_ValueError, "RecvHook: received bytes out of their buffer");
        return -1;
    }
    start += bid * h->size;
    Py_buffer data;
    if (PyObject_GetBuffer(h->mm, &data, PyBUF_SIMPLE) < 0)
        return -1;
    if (start + res > data.len) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "RecvHook: received bytes out of the buffer ring's mapping");
        return -1;
    }
    char *base = (char *)data.buf;
    int recycle = !(flags & CQE_F_BUF_MORE);
    if (!buffered) {
        PyObject *bytes = PyBytes_FromStringAndSize(base + start, res); /* one copy, straight into bytes */
        PyBuffer_Release(&data);
        if (bytes == NULL)
            return -1;
        if (recycle && hook_recycle(h, bid, base) < 0) {
            Py_DECREF(bytes);
            return -1;
        }
        PyObject *protocol = hook_attr(h, A_PROTOCOL);
        PyObject *r = protocol == NULL ? NULL : PyObject_CallMethodOneArg(protocol, s_data_received, bytes);
        Py_XDECREF(protocol);
        Py_DECREF(bytes);
        if (r == NULL)
            return hook_route(h, s_msg_data_received);
        Py_DECREF(r);
        return 0;
    }
    /* A view of the ring's buffer, valid during the call only: released right after it (a traceback that keeps
     * it must not pin the loop's mmap), then the buffer goes back unless the kernel still fills it. */
    Py_buffer sub;
    PyBuffer_FillInfo(&sub, NULL, base + start, res, data.readonly, PyBUF_FULL_RO);
    PyObject *view = PyMemoryView_FromBuffer(&sub);
    if (view == NULL) {
        PyBuffer_Release(&data);
        return -1;
    }
    int rc = 0;
    PyObject *sink = hook_attr(h, A_VIEW_SINK);
    if (sink == NULL) {
        rc = -1;
    }
    else if (sink == Py_None) {
        PyObject *r = PyObject_CallMethodOneArg(h->transport, s_feed_buffered, view);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
    else {
        PyObject *r = PyObject_CallOneArg(sink, view);
        if (r == NULL)
            rc = hook_route(h, s_msg_received_view);
        Py_XDECREF(r);
    }
    Py_XDECREF(sink);
    /* finally: view.release(), then the recycle; an exception of theirs replaces the pending one (chained) */
    PyObject *et = NULL, *ev = NULL, *tb = NULL;
    if (rc < 0)
        PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallMethodNoArgs(view, s_release);
    Py_DECREF(view);
    int frc = r == NULL ? -1 : 0;
    Py_XDECREF(r);
    PyBuffer_Release(&data);
    if (frc == 0 && recycle)
        frc = hook_recycle(h, bid, base);
    if (frc < 0) {
        if (rc < 0) {
            PyErr_NormalizeException(&et, &ev, &tb);
            PyObject *nt, *nv, *ntb;
            PyErr_Fetch(&nt, &nv, &ntb);
            PyErr_NormalizeException(&nt, &nv, &ntb);
            if (nv != NULL && ev != NULL) {
                if (tb != NULL)
                    PyException_SetTraceback(ev, tb);
                PyException_SetContext(nv, ev); /* steals ev */
                ev = NULL;
            }
            PyErr_Restore(nt, nv, ntb);
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        }
        return -1;
    }
    if (rc < 0)
        PyErr_Restore(et, ev, tb);
    return rc;
}

/* One CQE of the RECV: 0, or -1 with an exception set (the ring's dispatch routes it like a callback's). */
static int
hook_run(RecvHookObject *h, int32_t res, uint32_t flags)
{
    if (h->transport == NULL) {
        PyErr_SetString(PyExc_ValueError, "RecvHook was cleared");
        return -1;
    }
    h->fa = fa_lookup(&hook_cache, Py_TYPE(h->transport), hook_attr_str, A_COUNT);
    if (res > 0) {
        int buffered = hook_flag(h, A_BUFFERED);
        if (buffered < 0)
            return -1;
        int hot = buffered || !(flags & CQE_F_SOCK_NONEMPTY);
        if (hot) {
            int v = hook_flag(h, A_CLOSING);
            if (v == 0)
                v = hook_flag(h, A_PAUSED);
            if (v == 0)
                v = hook_flag(h, A_HELD);
            if (v < 0)
                return -1;
            hot = !v;
        }
        if (hot) {
            if (hook_hot(h, res, flags, buffered) < 0)
                return -1;
            if (!(flags & IORING_CQE_F_MORE))
                return hook_ended(h);
            return 0;
        }
    }
    PyObject *a = PyLong_FromLong(res);
    PyObject *b = PyLong_FromUnsignedLong(flags);
    PyObject *r = NULL;
    if (a != NULL && b != NULL)
        r = PyObject_CallMethodObjArgs(h->transport, s_on_recv_slow, a, b, NULL);
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
RecvHook_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "RecvHook takes (res, flags)");
        return NULL;
    }
    long res = PyLong_AsLong(args[0]);
    if (res == -1 && PyErr_Occurred())
        return NULL;
    unsigned long flags = PyLong_AsUnsignedLong(args[1]);
    if (flags == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (res < INT32_MIN || res > INT32_MAX || flags > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_OverflowError, "RecvHook: res or flags out of a CQE's range");
        return NULL;
    }
    if (hook_run((RecvHookObject *)self, (int32_t)res, (uint32_t)flags) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
RecvHook_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"transport", "bufring", NULL};
    PyObject *transport, *bufring;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:RecvHook", kwlist, &transport, &bufring))
        return NULL;
    RecvHookObject *h = (RecvHookObject *)type->tp_alloc(type, 0);
    if (h == NULL)
        return NULL;
    h->vectorcall = RecvHook_vectorcall;
    Py_INCREF(transport);
    h->transport = transport;
    Py_INCREF(bufring);
    h->bufring = bufring;
    h->offsets = PyObject_GetAttrString(bufring, "offsets");
    h->mm = h->offsets == NULL ? NULL : PyObject_GetAttrString(bufring, "mm");
    h->ring_mm = h->mm == NULL ? NULL : PyObject_GetAttrString(bufring, "_ring_mm");
    if (h->ring_mm == NULL)
        goto fail;
    if (!PyList_Check(h->offsets)) {
        PyErr_SetString(PyExc_TypeError, "RecvHook: bufring.offsets must be a list");
        goto fail;
    }
    PyObject *v = PyObject_GetAttrString(bufring, "size");
    if (v == NULL)
        goto fail;
    h->size = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    if (h->size == -1 && PyErr_Occurred())
        goto fail;
    v = PyObject_GetAttrString(bufring, "_mask");
    if (v == NULL)
        goto fail;
    h->mask = PyLong_AsUnsignedLongLong(v);
    Py_DECREF(v);
    if (h->mask == (uint64_t)-1 && PyErr_Occurred())
        goto fail;
    if (h->size < 1 || h->size > 0xFFFFFFFFLL || h->mask > 0x7FFF) {
        PyErr_SetString(PyExc_ValueError, "RecvHook: not a buffer ring's size and mask");
        goto fail;
    }
    h->fa = fa_lookup(&hook_cache, Py_TYPE(transport), hook_attr_str, A_COUNT);
    return (PyObject *)h;
fail:
    Py_DECREF(h);
    return NULL;
}

static int
RecvHook_traverse(RecvHookObject *h, visitproc visit, void *arg)
{
    Py_VISIT(h->transport);
    Py_VISIT(h->bufring);
    Py_VISIT(h->offsets);
    Py_VISIT(h->mm);
    Py_VISIT(h->ring_mm);
    return 0;
}

static int
RecvHook_clear(RecvHookObject *h)
{
    Py_CLEAR(h->transport);
    Py_CLEAR(h->bufring);
    Py_CLEAR(h->offsets);
    Py_CLEAR(h->mm);
    Py_CLEAR(h->ring_mm);
    return 0;
}

static void
RecvHook_dealloc(RecvHookObject *h)
{
    PyObject_GC_UnTrack(h);
    RecvHook_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *
RecvHook_get_transport(RecvHookObject *h, void *c)
{
    PyObject *t = h->transport != NULL ? h->transport : Py_None;
    Py_INCREF(t);
    return t;
}

static PyObject *
RecvHook_get_direct(RecvHookObject *h, void *c)
{
    /* which of the transport's attributes are read at their slot offsets (tests: none must be missed) */
    PyObject *out = PyTuple_New(A_COUNT);
    if (out == NULL)
        return NULL;
    FastAttrs *fa = fa_lookup(&hook_cache, Py_TYPE(h->transport), hook_attr_str, A_COUNT);
    for (int i = 0; i < A_COUNT; i++) {
        PyObject *b = fa->offsets[i] >= 0 ? Py_True : Py_False;
        Py_INCREF(b);
        PyTuple_SET_ITEM(out, i, b);
    }
    return out;
}

static PyGetSetDef RecvHook_getset[] = {
    {"transport", (getter)RecvHook_get_transport, NULL, "the RingSocketTransport it reads for", NULL},
    {"_direct", (getter)RecvHook_get_direct, NULL, "per attribute read: at its slot offset (True) or by getattr",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RecvHookType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.RecvHook",
    .tp_basicsize = sizeof(RecvHookObject),
    .tp_dealloc = (destructor)RecvHook_dealloc,
    .tp_vectorcall_offset = offsetof(RecvHookObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RecvHook(transport, bufring): RingSocketTransport._on_recv in C, called as hook(res, flags).",
    .tp_traverse = (traverseproc)RecvHook_traverse,
    .tp_clear = (inquiry)RecvHook_clear,
    .tp_getset = RecvHook_getset,
    .tp_new = RecvHook_new,
};

/* -- CallSoon: the event loop's call_soon(), its lean path ---------------------------------------------------- */

/* CallSoon(loop, handle_type, call_soon)
 *
 * The compiled twin of EventLoop.call_soon (uringws/loop/events.py) outside debug mode: a Handle made with
 * Handle.__new__ and every slot Handle.__init__ sets (compat.HANDLE_SLOTS), appended to loop._ready. The loop
 * installs it as its instance's call_soon, so asyncio's C Future and Task schedule their callbacks (a task's
 * wake-up, once per message) without a Python frame. In debug mode, on a closed loop, or for a keyword other than
 * context, it calls call_soon, the Python method, which takes asyncio's own path there. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *loop;
    PyObject *handle_type;
    PyObject *call_soon;  /* EventLoop.call_soon, the function */
} CallSoonObject;

enum { H_CALLBACK, H_ARGS, H_CANCELLED, H_LOOP, H_SOURCE_TRACEBACK, H_REPR, H_CONTEXT, H_COUNT };
static const char *const handle_names[H_COUNT] = {
    "_callback", "_args", "_cancelled", "_loop", "_source_traceback", "_repr", "_context",
};
static PyObject *handle_str[H_COUNT];
static FastAttrsCache handle_cache;
static PyObject *s_debug, *s_closed, *s_ready, *s_append, *s_context;
/* The loop's fields, slots of EventLoop (uringws/loop/events.py), and the selector's, of RingSelector: read in
 * place (FastAttr1) rather than by PyObject_GetAttr, a dozen times per iteration. */
static FastAttr1 c_debug, c_closed, c_ready, c_scheduled, c_cancelled_count, c_hook_selector, c_in_before_wait,
    c_stopping, c_stock_time, c_clock_resolution, c_before_wait, c_dirty, c_ready_sel, c_ring, c_when, c_scheduled_flag;
/* collections.deque's append and popleft, contextvars.Context.run: called as the method descriptors they are, on
 * objects of exactly those types, without a method lookup per call (NULL until the first RunOnce or CallSoon). */
static PyObject *deque_type, *deque_append, *deque_popleft, *context_run;
static int fast_methods_init(void);
static PyObject *CallSoon_vectorcall(CallSoonObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
CallSoon_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *loop, *handle_type, *call_soon;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "CallSoon() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!O:CallSoon", &loop, &PyType_Type, &handle_type, &call_soon))
        return NULL;
    if (fast_methods_init() < 0)
        return NULL;
    CallSoonObject *self = PyObject_GC_New(CallSoonObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)CallSoon_vectorcall;
    self->loop = Py_NewRef(loop);
    self->handle_type = Py_NewRef(handle_type);
    self->call_soon = Py_NewRef(call_soon);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
CallSoon_traverse(CallSoonObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->handle_type);
    Py_VISIT(self->call_soon);
    return 0;
}

static int
CallSoon_clear(CallSoonObject *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->handle_type);
    Py_CLEAR(self->call_soon);
    return 0;
}

static void
CallSoon_dealloc(CallSoonObject *self)
{
    PyObject_GC_UnTrack(self);
    CallSoon_clear(self);
    PyObject_GC_Del(self);
}

/* ready.append(h): 0, or -1 with an exception set */
static int
ready_append(PyObject *ready, PyObject *h)
{
    PyObject *res = Py_TYPE(ready) == (PyTypeObject *)deque_type
                        ? PyObject_Vectorcall(deque_append, (PyObject *[]){ready, h}, 2, NULL)
                        : PyObject_CallMethodOneArg(ready, s_append, h);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

/* The method descriptors above, found once. */
static int
fast_methods_init(void)
{
    if (deque_type != NULL)
        return 0;
    PyObject *collections = PyImport_ImportModule("collections");
    PyObject *dq = collections == NULL ? NULL : PyObject_GetAttrString(collections, "deque");
    Py_XDECREF(collections);
    if (dq == NULL)
        return -1;
    PyObject *append = PyObject_GetAttrString(dq, "append"), *popleft = PyObject_GetAttrString(dq, "popleft");
    PyObject *run = PyObject_GetAttrString((PyObject *)&PyContext_Type, "run");
    if (append == NULL || popleft == NULL || run == NULL) {
        Py_DECREF(dq);
        Py_XDECREF(append);
        Py_XDECREF(popleft);
        Py_XDECREF(run);
        return -1;
    }
    deque_append = append;
    deque_popleft = popleft;
    context_run = run;
    deque_type = dq;
    return 0;
}

/* call_soon(callback, *args, context=None) by the Python method: loop.call_soon is this object. */
static PyObject *
callsoon_python(CallSoonObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    PyObject **all = PyMem_Malloc((size_t)(nargs + nkw + 1) * sizeof(PyObject *));
    if (all == NULL)
        return PyErr_NoMemory();
    all[0] = self->loop;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        all[i + 1] = args[i];
    PyObject *res = PyObject_Vectorcall(self->call_soon, all, (size_t)(nargs + 1), kwnames);
    PyMem_Free(all);
    return res;
}

static PyObject *
CallSoon_vectorcall(CallSoonObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *context = NULL;
    if (self->loop == NULL) {
        PyErr_SetString(PyExc_ValueError, "CallSoon was cleared");
        return NULL;
    }
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, 0);  /* asyncio's Future passes the interned "context" itself */
        if (PyTuple_GET_SIZE(kwnames) != 1 || (kw != s_context && PyUnicode_Compare(kw, s_context) != 0))
            return callsoon_python(self, args, nargsf, kwnames);
        context = args[nargs];
    }
    int debug = fa1_true(&c_debug, self->loop, s_debug);
    int closed = debug ? 0 : fa1_true(&c_closed, self->loop, s_closed);
    if (debug < 0 || closed < 0)
        return NULL;
    if (nargs < 1 || debug || closed)
        return callsoon_python(self, args, nargsf, kwnames);
    PyTypeObject *ht = (PyTypeObject *)self->handle_type;
    PyObject *empty = PyTuple_New(0);
    PyObject *h = empty == NULL ? NULL : ht->tp_new(ht, empty, NULL);
    Py_XDECREF(empty);
    if (h == NULL)
        return NULL;
    FastAttrs *fa = fa_lookup(&handle_cache, ht, handle_str, H_COUNT);
    PyObject *ctx = context == NULL || context == Py_None ? PyContext_CopyCurrent() : Py_NewRef(context);
    PyObject *cbargs = PyTuple_New(nargs - 1);
    if (ctx == NULL || cbargs == NULL)
        goto error;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(cbargs, i - 1, Py_NewRef(args[i]));
    if (fa_set(fa, h, handle_str, H_CONTEXT, ctx) < 0 || fa_set(fa, h, handle_str, H_LOOP, self->loop) < 0
        || fa_set(fa, h, handle_str, H_CALLBACK, args[0]) < 0 || fa_set(fa, h, handle_str, H_ARGS, cbargs) < 0
        || fa_set(fa, h, handle_str, H_CANCELLED, Py_False) < 0 || fa_set(fa, h, handle_str, H_REPR, Py_None) < 0
        || fa_set(fa, h, handle_str, H_SOURCE_TRACEBACK, Py_None) < 0)
        goto error;
    Py_CLEAR(ctx);
    Py_CLEAR(cbargs);
    PyObject *ready = fa1_get(&c_ready, self->loop, s_ready);
    if (ready == NULL)
        goto error;
    int appended = ready_append(ready, h);
    Py_DECREF(ready);
    if (appended < 0)
        goto error;
    return h;
error:
    Py_XDECREF(ctx);
    Py_XDECREF(cbargs);
    Py_DECREF(h);
    return NULL;
}

static PyTypeObject CallSoonType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.CallSoon",
    .tp_basicsize = sizeof(CallSoonObject),
    .tp_dealloc = (destructor)CallSoon_dealloc,
    .tp_vectorcall_offset = offsetof(CallSoonObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "CallSoon(loop, handle_type, call_soon): EventLoop.call_soon outside debug mode, in C.",
    .tp_traverse = (traverseproc)CallSoon_traverse,
    .tp_clear = (inquiry)CallSoon_clear,
    .tp_new = CallSoon_new,
};

static int
callsoon_init_strings(void)
{
    for (int i = 0; i < H_COUNT; i++) {
        if ((handle_str[i] = PyUnicode_InternFromString(handle_names[i])) == NULL)
            return -1;
    }
    if ((s_debug = PyUnicode_InternFromString("_debug")) == NULL
        || (s_closed = PyUnicode_InternFromString("_closed")) == NULL
        || (s_ready = PyUnicode_InternFromString("_ready")) == NULL
        || (s_append = PyUnicode_InternFromString("append")) == NULL
        || (s_context = PyUnicode_InternFromString("context")) == NULL)
        return -1;
    return 0;
}

/* -- RunOnce: the event loop's iteration, its lean path -------------------------------------------------------- */

/* RunOnce(loop, run_once, handle_type, timer_handle_type, heappop, time_module, min_scheduled, cancelled_fraction,
 *         max_timeout)
 *
 * The compiled twin of EventLoop._run_once (uringws/loop/events.py), installed as the loop instance's _run_once:
 * asyncio's run_forever() calls it once per iteration. The same algorithm, in the same order: cancelled timers
 * dropped from the heap's head, the selector's before_wait hooks, the timeout, the ring's wait (or select()), due
 * timers moved to the ready queue, and only the callbacks ready at that point run, each in its context, a failure
 * reported by _callback_failed. In debug mode, and when most of a large heap is cancelled (asyncio rebuilds it), it
 * calls run_once, the Python method, for the whole iteration. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *loop, *run_once, *handle_type, *timer_handle_type, *heappop, *time_module;
    Py_ssize_t min_scheduled;
    double cancelled_fraction, max_timeout;
} RunOnceObject;

static PyObject *s_scheduled, *s_timer_cancelled_count, *s_hook_selector, *s_before_wait, *s_in_before_wait,
    *s_stopping, *s_when, *s_dirty, *s_ready_sel, *s_ring, *s_wait, *s_take_ready, *s_process_events, *s_selector,
    *s_select, *s_clock_resolution, *s_popleft, *s_run, *s_callback_failed, *s_scheduled_flag,
    *s_stock_time, *s_time, *s_monotonic, *s_run_method;

static PyObject *one_long;
static PyObject *RunOnce_vectorcall(RunOnceObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
RunOnce_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *loop, *run_once, *handle_type, *timer_handle_type, *heappop, *time_module;
    Py_ssize_t min_scheduled;
    double fraction, max_timeout;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "RunOnce() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOO!O!OOndd:RunOnce", &loop, &run_once, &PyType_Type, &handle_type, &PyType_Type,
                          &timer_handle_type, &heappop, &time_module, &min_scheduled, &fraction, &max_timeout))
        return NULL;
    if (fast_methods_init() < 0)
        return NULL;
    RunOnceObject *self = PyObject_GC_New(RunOnceObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)RunOnce_vectorcall;
    self->loop = Py_NewRef(loop);
    self->run_once = Py_NewRef(run_once);
    self->handle_type = Py_NewRef(handle_type);
    self->timer_handle_type = Py_NewRef(timer_handle_type);
    self->heappop = Py_NewRef(heappop);
    self->time_module = Py_NewRef(time_module);
    self->min_scheduled = min_scheduled;
    self->cancelled_fraction = fraction;
    self->max_timeout = max_timeout;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
RunOnce_traverse(RunOnceObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->run_once);
    Py_VISIT(self->handle_type);
    Py_VISIT(self->timer_handle_type);
    Py_VISIT(self->heappop);
    Py_VISIT(self->time_module);
    return 0;
}

static int
RunOnce_clear(RunOnceObject *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->run_once);
    Py_CLEAR(self->handle_type);
    Py_CLEAR(self->timer_handle_type);
    Py_CLEAR(self->heappop);
    Py_CLEAR(self->time_module);
    return 0;
}

static void
RunOnce_dealloc(RunOnceObject *self)
{
    PyObject_GC_UnTrack(self);
    RunOnce_clear(self);
    PyObject_GC_Del(self);
}

/* obj.name as a double: 0, -1 with an exception */
static int
attr_double(FastAttr1 *c, PyObject *obj, PyObject *name, double *out)
{
    PyObject *v = fa1_get(c, obj, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* The loop's clock: time.monotonic() (looked up per call) unless a subclass has a time() of its own. */
static int
loop_now(RunOnceObject *self, double *now)
{
    int stock = fa1_true(&c_stock_time, self->loop, s_stock_time);
    if (stock < 0)
        return -1;
    PyObject *t = stock ? PyObject_CallMethodNoArgs(self->time_module, s_monotonic)
                        : PyObject_CallMethodNoArgs(self->loop, s_time);
    if (t == NULL)
        return -1;
    *now = PyFloat_AsDouble(t);
    Py_DECREF(t);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* scheduled[0]._cancelled (the handle held while its attribute is read): 1, 0, -1 with an exception */
static int
head_cancelled(PyObject *scheduled)
{
    PyObject *head = Py_NewRef(PyList_GET_ITEM(scheduled, 0));
    int r = fa_true(fa_lookup(&handle_cache, Py_TYPE(head), handle_str, H_COUNT), head, handle_str, H_CANCELLED);
    Py_DECREF(head);
    return r;
}

/* scheduled[0]._when, likewise: 0, -1 with an exception */
static int
head_when(PyObject *scheduled, double *when)
{
    PyObject *head = Py_NewRef(PyList_GET_ITEM(scheduled, 0));
    int r = attr_double(&c_when, head, s_when, when);
    Py_DECREF(head);
    return r;
}

/* heappop(scheduled) with its _scheduled set to False: a new reference, or NULL */
static PyObject *
pop_timer(RunOnceObject *self, PyObject *scheduled)
{
    PyObject *h = PyObject_CallOneArg(self->heappop, scheduled);
    if (h != NULL && fa1_set(&c_scheduled_flag, h, s_scheduled_flag, Py_False) < 0)
        Py_CLEAR(h);
    return h;
}

/* Run one ready handle as the Python loop does: 0, or -1 to propagate (SystemExit, KeyboardInterrupt, or a
 * failure of the reporting itself). */
static int
run_handle(RunOnceObject *self, PyObject *handle)
{
    PyObject *res;
    PyTypeObject *t = Py_TYPE(handle);
    if ((PyObject *)t != self->handle_type && (PyObject *)t != self->timer_handle_type) {
        res = PyObject_CallMethodNoArgs(handle, s_run);
        Py_XDECREF(res);
        return res == NULL ? -1 : 0;
    }
    FastAttrs *fa = fa_lookup(&handle_cache, t, handle_str, H_COUNT);
    PyObject *ctx = fa_get(fa, handle, handle_str, H_CONTEXT);
    PyObject *cb = ctx == NULL ? NULL : fa_get(fa, handle, handle_str, H_CALLBACK);
    PyObject *cbargs = cb == NULL ? NULL : fa_get(fa, handle, handle_str, H_ARGS);
    if (cbargs == NULL) {
        Py_XDECREF(ctx);
        Py_XDECREF(cb);
        return -1;
    }
    if (!PyTuple_Check(cbargs)) {
        PyErr_SetString(PyExc_TypeError, "handle._args is not a tuple");
        res = NULL;
    }
    else {
        /* handle._context.run(handle._callback, *handle._args) */
        Py_ssize_t n = PyTuple_GET_SIZE(cbargs);
        PyObject *small[8], **all = n + 2 <= 8 ? small : PyMem_Malloc((size_t)(n + 2) * sizeof(PyObject *));
        if (all == NULL) {
            res = PyErr_NoMemory();
        }
        else {
            all[0] = ctx;
            all[1] = cb;
            for (Py_ssize_t i = 0; i < n; i++)
                all[i + 2] = PyTuple_GET_ITEM(cbargs, i);
            res = Py_IS_TYPE(ctx, &PyContext_Type)
                      ? PyObject_Vectorcall(context_run, all, (size_t)(n + 2), NULL)
                      : PyObject_VectorcallMethod(s_run_method, all, (size_t)(n + 2) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                  NULL);
            if (all != small)
                PyMem_Free(all);
        }
    }
    Py_DECREF(ctx);
    Py_DECREF(cb);
    Py_DECREF(cbargs);
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL)
        return -1;
    res = PyObject_CallMethodObjArgs(self->loop, s_callback_failed, handle, value, NULL);
    Py_DECREF(value);
    Py_XDECREF(res);
    return res == NULL ? -1 : 0;
}

static PyObject *
RunOnce_vectorcall(RunOnceObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 0 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "_run_once() takes no arguments");
        return NULL;
    }
    if (self->loop == NULL) {
        PyErr_SetString(PyExc_ValueError, "RunOnce was cleared");
        return NULL;
    }
    PyObject *loop = self->loop, *scheduled = NULL, *ready = NULL, *selector = NULL, *res;
    int debug = fa1_true(&c_debug, loop, s_debug);
    if (debug < 0)
        return NULL;
    if (debug)
        return PyObject_CallOneArg(self->run_once, loop);
    if ((scheduled = fa1_get(&c_scheduled, loop, s_scheduled)) == NULL)
        return NULL;
    if (!PyList_CheckExact(scheduled)) {
        Py_DECREF(scheduled);
        return PyObject_CallOneArg(self->run_once, loop);
    }
    Py_ssize_t sched_count = PyList_GET_SIZE(scheduled);
    if (sched_count > self->min_scheduled) {
        double cancelled;
        if (attr_double(&c_cancelled_count, loop, s_timer_cancelled_count, &cancelled) < 0)
            goto error;
        if (cancelled / (double)sched_count > self->cancelled_fraction) {  /* asyncio rebuilds the heap */
            Py_DECREF(scheduled);
            return PyObject_CallOneArg(self->run_once, loop);
        }
    }
    if ((ready = fa1_get(&c_ready, loop, s_ready)) == NULL)
        goto error;
    /* cancelled timers off the heap's head */
    while (PyList_GET_SIZE(scheduled)) {
        int c = head_cancelled(scheduled);
        if (c < 0)
            goto error;
        if (!c)
            break;
        PyObject *count = fa1_get(&c_cancelled_count, loop, s_timer_cancelled_count);
        PyObject *less = count == NULL ? NULL : PyNumber_Subtract(count, one_long);
        Py_XDECREF(count);
        int ok = less != NULL && fa1_set(&c_cancelled_count, loop, s_timer_cancelled_count, less) == 0;
        Py_XDECREF(less);
        PyObject *h = ok ? pop_timer(self, scheduled) : NULL;
        if (h == NULL)
            goto error;
        Py_DECREF(h);
    }
    /* the selector's before_wait hooks, first */
    if ((selector = fa1_get(&c_hook_selector, loop, s_hook_selector)) == NULL)
        goto error;
    if (selector != Py_None) {
        PyObject *hooks = fa1_get(&c_before_wait, selector, s_before_wait);
        int any = hooks == NULL ? -1 : PyObject_IsTrue(hooks);
        if (any < 0) {
            Py_XDECREF(hooks);
            goto error;
        }
        if (any) {
            if (fa1_set(&c_in_before_wait, loop, s_in_before_wait, Py_True) < 0) {
                Py_DECREF(hooks);
                goto error;
            }
            int failed = 0;
            while (!failed) {
                any = PyObject_IsTrue(hooks);
                if (any <= 0) {
                    failed = any < 0;
                    break;
                }
                PyObject *fresh = PyList_New(0);
                if (fresh == NULL || fa1_set(&c_before_wait, selector, s_before_wait, fresh) < 0) {
                    Py_XDECREF(fresh);
                    failed = 1;
                    break;
                }
                Py_DECREF(fresh);
                PyObject *it = PyObject_GetIter(hooks);
                PyObject *hook;
                while (it != NULL && (hook = PyIter_Next(it)) != NULL) {
                    res = PyObject_CallNoArgs(hook);
                    Py_DECREF(hook);
                    if (res == NULL)
                        break;
                    Py_DECREF(res);
                }
                Py_XDECREF(it);
                if (PyErr_Occurred()) {
                    failed = 1;
                    break;
                }
                Py_DECREF(hooks);
                if ((hooks = fa1_get(&c_before_wait, selector, s_before_wait)) == NULL) {
                    failed = 1;
                    break;
                }
            }
            Py_XDECREF(hooks);
            /* finally: in_before_wait = False (keeping a hook's exception) */
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            int reset = fa1_set(&c_in_before_wait, loop, s_in_before_wait, Py_False);
            if (et != NULL) {
                if (reset < 0)
                    PyErr_Clear();
                PyErr_Restore(et, ev, etb);
                goto error;
            }
            if (reset < 0 || failed)
                goto error;
        }
        else {
            Py_DECREF(hooks);
        }
    }
    /* the timeout */
    PyObject *timeout;
    int stopping = fa1_true(&c_stopping, loop, s_stopping);
    if (stopping < 0)
        goto error;
    Py_ssize_t nready = PyObject_Length(ready);
    if (nready < 0)
        goto error;
    if (nready || stopping) {
        timeout = PyLong_FromLong(0);
    }
    else if (PyList_GET_SIZE(scheduled)) {
        double when, now;
        if (head_when(scheduled, &when) < 0 || loop_now(self, &now) < 0)
            goto error;
        double t = when - now;
        if (t > self->max_timeout)
            t = self->max_timeout;
        else if (t < 0)
            t = 0;
        timeout = t == 0 ? PyLong_FromLong(0) : PyFloat_FromDouble(t);
    }
    else {
        timeout = Py_NewRef(Py_None);
    }
    if (timeout == NULL)
        goto error;
    /* the wait */
    int lean = 0;
    if (selector != Py_None) {
        int dirty = fa1_true(&c_dirty, selector, s_dirty);
        int sready = dirty ? 0 : fa1_true(&c_ready_sel, selector, s_ready_sel);
        if (dirty < 0 || sready < 0) {
            Py_DECREF(timeout);
            goto error;
        }
        lean = !dirty && !sready;
    }
    if (lean) {
        PyObject *ring = fa1_get(&c_ring, selector, s_ring);
        res = ring == NULL ? NULL : PyObject_CallMethodOneArg(ring, s_wait, timeout);
        Py_XDECREF(ring);
        Py_DECREF(timeout);
        if (res == NULL)
            goto error;
        Py_DECREF(res);
        int sready = fa1_true(&c_ready_sel, selector, s_ready_sel);
        if (sready < 0)
            goto error;
        if (sready) {
            PyObject *events = PyObject_CallMethodNoArgs(selector, s_take_ready);
            res = events == NULL ? NULL : PyObject_CallMethodOneArg(loop, s_process_events, events);
            Py_XDECREF(events);
            if (res == NULL)
                goto error;
            Py_DECREF(res);
        }
    }
    else {
        PyObject *sel = PyObject_GetAttr(loop, s_selector);
        PyObject *events = sel == NULL ? NULL : PyObject_CallMethodOneArg(sel, s_select, timeout);
        Py_XDECREF(sel);
        Py_DECREF(timeout);
        if (events == NULL)
            goto error;
        int any = PyObject_IsTrue(events);
        res = any > 0 ? PyObject_CallMethodOneArg(loop, s_process_events, events) : NULL;
        Py_DECREF(events);
        if (any < 0 || (any > 0 && res == NULL))
            goto error;
        Py_XDECREF(res);
    }
    /* due timers to the ready queue */
    if (PyList_GET_SIZE(scheduled)) {
        double now, resolution;
        if (loop_now(self, &now) < 0 || attr_double(&c_clock_resolution, loop, s_clock_resolution, &resolution) < 0)
            goto error;
        double end_time = now + resolution;
        while (PyList_GET_SIZE(scheduled)) {
            double when;
            if (head_when(scheduled, &when) < 0)
                goto error;
            if (when >= end_time)
                break;
            PyObject *h = pop_timer(self, scheduled);
            int appended = h == NULL ? -1 : ready_append(ready, h);
            Py_XDECREF(h);
            if (appended < 0)
                goto error;
        }
    }
    /* only what is ready now runs */
    nready = PyObject_Length(ready);
    if (nready < 0)
        goto error;
    for (Py_ssize_t i = 0; i < nready; i++) {
        PyObject *handle = Py_TYPE(ready) == (PyTypeObject *)deque_type
                               ? PyObject_Vectorcall(deque_popleft, &ready, 1, NULL)
                               : PyObject_CallMethodNoArgs(ready, s_popleft);
        if (handle == NULL)
            goto error;
        int c = fa_true(fa_lookup(&handle_cache, Py_TYPE(handle), handle_str, H_COUNT), handle, handle_str,
                        H_CANCELLED);
        if (c == 0 && run_handle(self, handle) < 0)
            c = -1;
        Py_DECREF(handle);
        if (c < 0)
            goto error;
    }
    Py_DECREF(scheduled);
    Py_DECREF(ready);
    Py_DECREF(selector);
    Py_RETURN_NONE;
error:
    Py_XDECREF(scheduled);
    Py_XDECREF(ready);
    Py_XDECREF(selector);
    return NULL;
}

static PyTypeObject RunOnceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.RunOnce",
    .tp_basicsize = sizeof(RunOnceObject),
    .tp_dealloc = (destructor)RunOnce_dealloc,
    .tp_vectorcall_offset = offsetof(RunOnceObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RunOnce(loop, run_once, handle_type, timer_handle_type, heappop, time_module, min_scheduled, "
              "cancelled_fraction, max_timeout): EventLoop._run_once outside debug mode, in C.",
    .tp_traverse = (traverseproc)RunOnce_traverse,
    .tp_clear = (inquiry)RunOnce_clear,
    .tp_new = RunOnce_new,
};

static int
runonce_init_strings(void)
{
#define S(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    S(s_scheduled, "_scheduled");
    S(s_timer_cancelled_count, "_timer_cancelled_count");
    S(s_hook_selector, "_hook_selector");
    S(s_before_wait, "before_wait");
    S(s_in_before_wait, "in_before_wait");
    S(s_stopping, "_stopping");
    S(s_when, "_when");
    S(s_dirty, "_dirty");
    S(s_ready_sel, "_ready");
    S(s_ring, "ring");
    S(s_wait, "wait");
    S(s_take_ready, "take_ready");
    S(s_process_events, "_process_events");
    S(s_selector, "_selector");
    S(s_select, "select");
    S(s_clock_resolution, "_clock_resolution");
    S(s_popleft, "popleft");
    S(s_run, "_run");
    S(s_callback_failed, "_callback_failed");
    S(s_scheduled_flag, "_scheduled");
    S(s_stock_time, "_stock_time");
    S(s_time, "time");
    S(s_monotonic, "monotonic");
    S(s_run_method, "run");
#undef S
    if ((one_long = PyLong_FromLong(1)) == NULL)
        return -1;
    return 0;
}

/* -- TransportWrite: RingSocketTransport.write, its direct send ---------------------------------------------- */

/* TransportWrite(transport_type, write, defer_below, flags)
 *
 * The compiled twin of RingSocketTransport.write (uringws/loop/transports.py), set as the class's `write`: a method
 * descriptor, so `transport.write(data)` and PyObject_CallMethod(transport, "write", data) call it with the
 * transport and the data and no bound method. It does write()'s direct send, the case of every TLS layer's records
 * (written from a before-wait hook) and of every large write: bytes, nothing queued or in flight, the transport open,
 * direct sends on. One send(2) with `flags` (MSG_DONTWAIT | MSG_NOSIGNAL); all of it taken, it counts the direct
 * send and returns. A short send goes on in transport._write_rest(data, n), as write() goes on; a failure goes to
 * transport._fatal_error(exc, message) (EAGAIN/EINTR are a short send of 0 bytes, as in write()). Anything else (not
 * bytes, an instance of a subclass, a write to defer, a queue, a closed transport) calls `write`, the Python
 * function, for the whole call. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *transport_type;
    PyObject *write;  /* RingSocketTransport.write, the Python function */
    Py_ssize_t defer_below;
    int flags;
} TransportWriteObject;

enum {
    T_EOF, T_CONN_LOST, T_QUEUE, T_DIRECT_SEND, T_SEND_STATE, T_LOOP, T_SOCK, T_SOCK_FD, T_STATS, T_FLUSH_SCHEDULED,
    T_SELECTOR, T_RELEASE_WANTED, T_CLOSING, T_FLUSH, T_COUNT
};
static const char *const write_attr_names[T_COUNT] = {
    "_eof", "_conn_lost", "_queue", "_direct_send", "_send_state", "_loop", "_sock", "_sock_fd", "_stats",
    "_flush_scheduled", "_selector", "_release_wanted", "_closing", "_flush",
};
static PyObject *write_attr_str[T_COUNT];
static FastAttrsCache write_cache;
enum { Q_CLOSED, Q_BUFFERED, Q_INFLIGHT, Q_CHUNKS, Q_HIGH, Q_PAUSED, Q_OFFSET, Q_COUNT };
static const char *const queue_attr_names[Q_COUNT] = {
    "_closed", "_buffered", "_inflight", "_chunks", "_high", "_paused", "_offset",
};
static PyObject *queue_attr_str[Q_COUNT];
static FastAttrsCache queue_cache;
enum { S_DIRECT_SENDS, S_MAX_QUEUED, S_COUNT };
static const char *const stats_attr_names[S_COUNT] = {"direct_sends", "max_queued"};
static PyObject *stats_attr_str[S_COUNT];
static FastAttrsCache stats_cache;
static FastAttr1 c_sel_closing, c_before_wait;
static PyObject *s_write_rest, *s_write_error_message, *s_flush_rest, *s_sel_closing, *s_before_wait_list;

static PyObject *TransportWrite_vectorcall(TransportWriteObject *self, PyObject *const *args, size_t nargsf,
                                           PyObject *kwnames);

static PyObject *
TransportWrite_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *transport_type, *write;
    Py_ssize_t defer_below;
    int flags;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "TransportWrite() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!Oni:TransportWrite", &PyType_Type, &transport_type, &write, &defer_below, &flags))
        return NULL;
    TransportWriteObject *self = PyObject_GC_New(TransportWriteObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)TransportWrite_vectorcall;
    self->transport_type = (PyTypeObject *)Py_NewRef(transport_type);
    self->write = Py_NewRef(write);
    self->defer_below = defer_below;
    self->flags = flags;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
TransportWrite_traverse(TransportWriteObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transport_type);
    Py_VISIT(self->write);
    return 0;
}

static int
TransportWrite_clear(TransportWriteObject *self)
{
    Py_CLEAR(self->transport_type);
    Py_CLEAR(self->write);
    return 0;
}

static void
TransportWrite_dealloc(TransportWriteObject *self)
{
    PyObject_GC_UnTrack(self);
    TransportWrite_clear(self);
    PyObject_GC_Del(self);
}

/* transport.write, looked up on an instance: bound, as a function would be. */
static PyObject *
TransportWrite_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(self);
    return PyMethod_New(self, obj);
}

/* What write() does with bytes of length len (the checks of write() before its send(2) or its queue.write()):
 * W_DIRECT, the direct send; W_QUEUE, append to the queue and schedule the flush; W_PYTHON, anything else (a write
 * after write_eof() or after the connection was lost, a closed queue, no socket): the Python function; -1, an
 * exception. *queue_out: the transport's queue (a new reference) for W_DIRECT and W_QUEUE. */
enum { W_PYTHON, W_DIRECT, W_QUEUE };
static int
write_route(TransportWriteObject *self, FastAttrs *fa, PyObject *t, Py_ssize_t len, PyObject **queue_out)
{
    *queue_out = NULL;
    int r = fa_true(fa, t, write_attr_str, T_EOF);
    if (r != 0)
        return r < 0 ? -1 : W_PYTHON;
    Py_ssize_t lost, state;
    if (fa_ssize(fa, t, write_attr_str, T_CONN_LOST, &lost) < 0)
        return -1;
    if (lost)
        return W_PYTHON;
    PyObject *queue = fa_get(fa, t, write_attr_str, T_QUEUE);
    if (queue == NULL)
        return -1;
    FastAttrs *qa = fa_lookup(&queue_cache, Py_TYPE(queue), queue_attr_str, Q_COUNT);
    Py_ssize_t buffered = 0;
    PyObject *inflight = NULL;
    int route = W_QUEUE;
    if ((r = fa_true(qa, queue, queue_attr_str, Q_CLOSED)) != 0) {
        route = r < 0 ? -1 : W_PYTHON;
        goto done;
    }
    if ((r = fa_true(fa, t, write_attr_str, T_DIRECT_SEND)) <= 0) {
        route = r < 0 ? -1 : W_QUEUE;
        goto done;
    }
    if (fa_ssize(fa, t, write_attr_str, T_SEND_STATE, &state) < 0 || fa_ssize(qa, queue, queue_attr_str, Q_BUFFERED,
                                                                              &buffered) < 0) {
        route = -1;
        goto done;
    }
    if (state != 0 || buffered != 0)  /* a send in flight or bytes queued: behind them */
        goto done;
    if ((inflight = fa_get(qa, queue, queue_attr_str, Q_INFLIGHT)) == NULL) {
        route = -1;
        goto done;
    }
    r = inflight == Py_None;
    Py_DECREF(inflight);
    if (!r)
        goto done;
    if (len < self->defer_below) {  /* a short write goes now only from a before-wait hook */
        PyObject *loop = fa_get(fa, t, write_attr_str, T_LOOP);
        if (loop == NULL) {
            route = -1;
            goto done;
        }
        r = fa1_true(&c_in_before_wait, loop, s_in_before_wait);
        Py_DECREF(loop);
        if (r <= 0) {
            route = r < 0 ? -1 : W_QUEUE;
            goto done;
        }
    }
    PyObject *sock = fa_get(fa, t, write_attr_str, T_SOCK);
    if (sock == NULL) {
        route = -1;
        goto done;
    }
    route = sock != Py_None ? W_DIRECT : W_PYTHON;
    Py_DECREF(sock);
done:
    if (route == W_DIRECT || route == W_QUEUE)
        *queue_out = queue;
    else
        Py_DECREF(queue);
    return route;
}

/* send(2) of len bytes at buf with flags, as the transports' direct sends do it: a long copy into the kernel (64 KiB
 * and more) lets other threads run, as socket.send() does. Returns send()'s result, its errno in *err. */
static Py_ssize_t
direct_send(int fd, const char *buf, Py_ssize_t len, int flags, int *err)
{
    Py_ssize_t n;
    if (len >= 65536) {
        Py_BEGIN_ALLOW_THREADS
        n = send(fd, buf, (size_t)len, flags);
        *err = errno;
        Py_END_ALLOW_THREADS
    }
    else {
        n = send(fd, buf, (size_t)len, flags);
        *err = errno;
    }
    return n;
}

/* transport._stats.direct_sends += 1 (and max_queued = queued, if larger, when queued >= 0): 0, or -1. */
static int
count_direct_send(FastAttrs *fa, PyObject *t, Py_ssize_t queued)
{
    PyObject *stats = fa_get(fa, t, write_attr_str, T_STATS);
    if (stats == NULL)
        return -1;
    FastAttrs *sa = fa_lookup(&stats_cache, Py_TYPE(stats), stats_attr_str, S_COUNT);
    Py_ssize_t count, most = 0;
    int r = fa_ssize(sa, stats, stats_attr_str, S_DIRECT_SENDS, &count);
    if (r == 0)
        r = fa_set_ssize(sa, stats, stats_attr_str, S_DIRECT_SENDS, count + 1);
    if (r == 0 && queued >= 0 && (r = fa_ssize(sa, stats, stats_attr_str, S_MAX_QUEUED, &most)) == 0 && queued > most)
        r = fa_set_ssize(sa, stats, stats_attr_str, S_MAX_QUEUED, queued);
    Py_DECREF(stats);
    return r;
}

/* write()'s queueing of bytes, as `queue.write(data)` then the flush's scheduling do it: the data appended to the
 * queue's chunks, and transport._flush put on the selector's before-wait hooks unless it is there or a send is in
 * flight. A write that would take the queue over its high-water mark calls `write` (the Python function: it pauses
 * the protocol). Returns None, or NULL with an exception set. */
static PyObject *
write_queue(TransportWriteObject *self, FastAttrs *fa, PyObject *t, PyObject *queue, PyObject *const *args,
            size_t nargsf)
{
    PyObject *data = args[1];
    Py_ssize_t len = PyBytes_GET_SIZE(data), buffered, high, state;
    FastAttrs *qa = fa_lookup(&queue_cache, Py_TYPE(queue), queue_attr_str, Q_COUNT);
    if (fa_ssize(qa, queue, queue_attr_str, Q_BUFFERED, &buffered) < 0
        || fa_ssize(qa, queue, queue_attr_str, Q_HIGH, &high) < 0)
        return NULL;
    if (buffered + len > high)
        return PyObject_Vectorcall(self->write, args, nargsf, NULL);
    PyObject *chunks = fa_get(qa, queue, queue_attr_str, Q_CHUNKS);
    if (chunks == NULL)
        return NULL;
    int r = PyList_CheckExact(chunks) ? PyList_Append(chunks, data) : -2;
    Py_DECREF(chunks);
    if (r == -2)
        return PyObject_Vectorcall(self->write, args, nargsf, NULL);
    if (r < 0 || fa_set_ssize(qa, queue, queue_attr_str, Q_BUFFERED, buffered + len) < 0)
        return NULL;
    if (fa_ssize(fa, t, write_attr_str, T_SEND_STATE, &state) < 0)
        return NULL;
    if (state != 0)
        Py_RETURN_NONE;  /* the send in flight's completion sends the rest */
    if ((r = fa_true(fa, t, write_attr_str, T_FLUSH_SCHEDULED)) != 0)
        return r < 0 ? NULL : Py_NewRef(Py_None);
    if (fa_set(fa, t, write_attr_str, T_FLUSH_SCHEDULED, Py_True) < 0)
        return NULL;
    PyObject *selector = fa_get(fa, t, write_attr_str, T_SELECTOR);
    if (selector == NULL)
        return NULL;
    PyObject *hooks = fa1_get(&c_before_wait, selector, s_before_wait_list);
    Py_DECREF(selector);
    if (hooks == NULL)
        return NULL;
    PyObject *flush = fa_get(fa, t, write_attr_str, T_FLUSH);  /* bound: the hook is called with no arguments */
    if (flush == NULL) {
        Py_DECREF(hooks);
        return NULL;
    }
    if (PyList_CheckExact(hooks)) {
        r = PyList_Append(hooks, flush);
    }
    else {
        PyObject *res = PyObject_CallMethod(hooks, "append", "O", flush);
        r = res == NULL ? -1 : 0;
        Py_XDECREF(res);
    }
    Py_DECREF(flush);
    Py_DECREF(hooks);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
TransportWrite_vectorcall(TransportWriteObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->write == NULL) {
        PyErr_SetString(PyExc_ValueError, "TransportWrite was cleared");
        return NULL;
    }
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || Py_TYPE(args[0]) != self->transport_type
        || !PyBytes_CheckExact(args[1]) || PyBytes_GET_SIZE(args[1]) == 0)
        return PyObject_Vectorcall(self->write, args, nargsf, kwnames);
    PyObject *t = args[0], *data = args[1], *queue;
    Py_ssize_t len = PyBytes_GET_SIZE(data), fd;
    FastAttrs *fa = fa_lookup(&write_cache, self->transport_type, write_attr_str, T_COUNT);
    int route = write_route(self, fa, t, len, &queue);
    if (route < 0)
        return NULL;
    if (route == W_PYTHON)
        return PyObject_Vectorcall(self->write, args, nargsf, kwnames);
    if (route == W_QUEUE) {
        PyObject *r = write_queue(self, fa, t, queue, args, nargsf);
        Py_DECREF(queue);
        return r;
    }
    Py_DECREF(queue);
    if (fa_ssize(fa, t, write_attr_str, T_SOCK_FD, &fd) < 0)
        return NULL;
    Py_ssize_t n;
    int err = 0;
    n = direct_send((int)fd, PyBytes_AS_STRING(data), len, self->flags, &err);
    if (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        /* write()'s `except BaseException as exc: self._fatal_error(exc, ...)`, with the OSError send() raised */
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        if (transport_route(t, s_write_error_message) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (n < 0)
        n = 0;
    if (n < len) {
        PyObject *sent = PyLong_FromSsize_t(n);
        if (sent == NULL)
            return NULL;
        PyObject *r = PyObject_CallMethodObjArgs(t, s_write_rest, data, sent, NULL);
        Py_DECREF(sent);
        return r;
    }
    if (count_direct_send(fa, t, -1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyTypeObject TransportWriteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.TransportWrite",
    .tp_basicsize = sizeof(TransportWriteObject),
    .tp_dealloc = (destructor)TransportWrite_dealloc,
    .tp_vectorcall_offset = offsetof(TransportWriteObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = TransportWrite_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "TransportWrite(transport_type, write, defer_below, flags): RingSocketTransport.write's direct send, "
              "in C (a method descriptor).",
    .tp_traverse = (traverseproc)TransportWrite_traverse,
    .tp_clear = (inquiry)TransportWrite_clear,
    .tp_new = TransportWrite_new,
};

/* -- TransportFlush: RingSocketTransport._flush, its direct send ---------------------------------------------- */

/* TransportFlush(transport_type, flush, flags)
 *
 * The compiled twin of RingSocketTransport._flush (the before-wait hook that sends what write() queued), set as the
 * class's `_flush`, a method descriptor like TransportWrite. It does the common case: direct sends on, nothing in
 * flight, the transport and the selector open, the queue unpaused with one bytes chunk (an echo's reply, one
 * message) and nothing of it sent yet. One send(2) with `flags`; all of it taken, the chunk leaves the queue and the
 * direct send is counted, as the Python function does after queue.next_send() and queue.completed(n). A short send
 * (EAGAIN/EINTR: 0 bytes) goes on in transport._flush_rest(n), a failure in transport._fatal_error(exc, message).
 * Anything else calls `flush`, the Python function. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *transport_type;
    PyObject *flush;  /* RingSocketTransport._flush, the Python function */
    int flags;
} TransportFlushObject;

static PyObject *TransportFlush_vectorcall(TransportFlushObject *self, PyObject *const *args, size_t nargsf,
                                           PyObject *kwnames);

static PyObject *
TransportFlush_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *transport_type, *flush;
    int flags;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "TransportFlush() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O!Oi:TransportFlush", &PyType_Type, &transport_type, &flush, &flags))
        return NULL;
    TransportFlushObject *self = PyObject_GC_New(TransportFlushObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)TransportFlush_vectorcall;
    self->transport_type = (PyTypeObject *)Py_NewRef(transport_type);
    self->flush = Py_NewRef(flush);
    self->flags = flags;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
TransportFlush_traverse(TransportFlushObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->transport_type);
    Py_VISIT(self->flush);
    return 0;
}

static int
TransportFlush_clear(TransportFlushObject *self)
{
    Py_CLEAR(self->transport_type);
    Py_CLEAR(self->flush);
    return 0;
}

static void
TransportFlush_dealloc(TransportFlushObject *self)
{
    PyObject_GC_UnTrack(self);
    TransportFlush_clear(self);
    PyObject_GC_Del(self);
}

/* The one bytes chunk the common case sends (a new reference, its queue's chunks list in *chunks_out), NULL with no
 * exception where the Python function must run, or NULL with an exception set. */
static PyObject *
flush_chunk(FastAttrs *fa, PyObject *t, PyObject **chunks_out)
{
    *chunks_out = NULL;
    Py_ssize_t state, v;
    int r;
    if (fa_ssize(fa, t, write_attr_str, T_SEND_STATE, &state) < 0)
        return NULL;
    if (state != 0)
        return NULL;
    static const int off_flags[] = {T_RELEASE_WANTED, T_CLOSING, T_EOF};
    for (size_t i = 0; i < sizeof(off_flags) / sizeof(off_flags[0]); i++) {
        if ((r = fa_true(fa, t, write_attr_str, off_flags[i])) != 0)
            return NULL;  /* r < 0: the exception stays set */
    }
    if ((r = fa_true(fa, t, write_attr_str, T_DIRECT_SEND)) <= 0)
        return NULL;
    PyObject *selector = fa_get(fa, t, write_attr_str, T_SELECTOR);
    if (selector == NULL)
        return NULL;
    r = fa1_true(&c_sel_closing, selector, s_sel_closing);
    Py_DECREF(selector);
    if (r != 0)
        return NULL;
    PyObject *queue = fa_get(fa, t, write_attr_str, T_QUEUE);
    if (queue == NULL)
        return NULL;
    FastAttrs *qa = fa_lookup(&queue_cache, Py_TYPE(queue), queue_attr_str, Q_COUNT);
    PyObject *chunks = NULL, *chunk = NULL, *inflight = NULL;
    if (fa_true(qa, queue, queue_attr_str, Q_CLOSED) != 0 || fa_true(qa, queue, queue_attr_str, Q_PAUSED) != 0)
        goto out;
    if (fa_ssize(qa, queue, queue_attr_str, Q_OFFSET, &v) < 0 || v != 0)
        goto out;
    if ((inflight = fa_get(qa, queue, queue_attr_str, Q_INFLIGHT)) == NULL || inflight != Py_None)
        goto out;
    if ((chunks = fa_get(qa, queue, queue_attr_str, Q_CHUNKS)) == NULL)
        goto out;
    if (!PyList_CheckExact(chunks) || PyList_GET_SIZE(chunks) != 1 || !PyBytes_CheckExact(PyList_GET_ITEM(chunks, 0)))
        goto out;
    chunk = PyList_GET_ITEM(chunks, 0);
    if (fa_ssize(qa, queue, queue_attr_str, Q_BUFFERED, &v) < 0 || v != PyBytes_GET_SIZE(chunk) || v == 0) {
        chunk = NULL;
        goto out;
    }
    Py_INCREF(chunk);
    *chunks_out = chunks;
    chunks = NULL;
out:
    Py_XDECREF(inflight);
    Py_XDECREF(chunks);
    Py_DECREF(queue);
    return chunk;
}

static PyObject *
TransportFlush_vectorcall(TransportFlushObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (self->flush == NULL) {
        PyErr_SetString(PyExc_ValueError, "TransportFlush was cleared");
        return NULL;
    }
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames)) || Py_TYPE(args[0]) != self->transport_type)
        return PyObject_Vectorcall(self->flush, args, nargsf, kwnames);
    PyObject *t = args[0], *chunks;
    FastAttrs *fa = fa_lookup(&write_cache, self->transport_type, write_attr_str, T_COUNT);
    PyObject *chunk = flush_chunk(fa, t, &chunks);
    if (chunk == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_Vectorcall(self->flush, args, nargsf, kwnames);
    }
    PyObject *result = NULL;
    Py_ssize_t fd, len = PyBytes_GET_SIZE(chunk), n;
    int err = 0;
    if (fa_set(fa, t, write_attr_str, T_FLUSH_SCHEDULED, Py_False) < 0
        || fa_ssize(fa, t, write_attr_str, T_SOCK_FD, &fd) < 0)
        goto out;
    n = direct_send((int)fd, PyBytes_AS_STRING(chunk), len, self->flags, &err);
    if (n == len) {
        /* queue.next_send() + queue.completed(n) for all of the one chunk, and the count _flush keeps */
        PyObject *queue = fa_get(fa, t, write_attr_str, T_QUEUE);
        if (queue == NULL)
            goto out;
        FastAttrs *qa = fa_lookup(&queue_cache, Py_TYPE(queue), queue_attr_str, Q_COUNT);
        int r = PyList_SetSlice(chunks, 0, 1, NULL);
        if (r == 0)
            r = fa_set_ssize(qa, queue, queue_attr_str, Q_BUFFERED, 0);
        Py_DECREF(queue);
        if (r < 0 || count_direct_send(fa, t, len) < 0)
            goto out;
        result = Py_NewRef(Py_None);
        goto out;
    }
    if (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        if (transport_route(t, s_write_error_message) == 0)
            result = Py_NewRef(Py_None);
        goto out;
    }
    PyObject *sent = PyLong_FromSsize_t(n < 0 ? 0 : n);
    if (sent != NULL) {
        result = PyObject_CallMethodOneArg(t, s_flush_rest, sent);
        Py_DECREF(sent);
    }
out:
    Py_DECREF(chunk);
    Py_DECREF(chunks);
    return result;
}

static PyTypeObject TransportFlushType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.TransportFlush",
    .tp_basicsize = sizeof(TransportFlushObject),
    .tp_dealloc = (destructor)TransportFlush_dealloc,
    .tp_vectorcall_offset = offsetof(TransportFlushObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = TransportWrite_get,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "TransportFlush(transport_type, flush, flags): RingSocketTransport._flush's direct send of one queued "
              "chunk, in C (a method descriptor).",
    .tp_traverse = (traverseproc)TransportFlush_traverse,
    .tp_clear = (inquiry)TransportFlush_clear,
    .tp_new = TransportFlush_new,
};

static int
transportwrite_init_strings(void)
{
    for (int i = 0; i < T_COUNT; i++) {
        if ((write_attr_str[i] = PyUnicode_InternFromString(write_attr_names[i])) == NULL)
            return -1;
    }
    for (int i = 0; i < Q_COUNT; i++) {
        if ((queue_attr_str[i] = PyUnicode_InternFromString(queue_attr_names[i])) == NULL)
            return -1;
    }
#define S(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    for (int i = 0; i < S_COUNT; i++) {
        if ((stats_attr_str[i] = PyUnicode_InternFromString(stats_attr_names[i])) == NULL)
            return -1;
    }
    S(s_write_rest, "_write_rest");
    S(s_flush_rest, "_flush_rest");
    S(s_sel_closing, "closing");
    S(s_before_wait_list, "before_wait");
    S(s_write_error_message, "Fatal write error on socket transport");
#undef S
    return 0;
}

static int
recvhook_init_strings(void)
{
    for (int i = 0; i < A_COUNT; i++) {
        if ((hook_attr_str[i] = PyUnicode_InternFromString(hook_attr_names[i])) == NULL)
            return -1;
    }
#define S(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    S(s_on_recv_slow, "_on_recv_slow");
    S(s_feed_buffered, "_feed_buffered");
    S(s_fatal_error, "_fatal_error");
    S(s_recv_ended, "_recv_ended");
    S(s_arm_read, "_arm_read");
    S(s_data_received, "data_received");
    S(s_release, "release");
    S(s_tail, "_tail");
    S(s_restarts, "restarts");
    S(s_msg_data_received, "Fatal error: protocol.data_received() call failed.");
    S(s_msg_received_view, "Fatal error: protocol.received_view() call failed.");
#undef S
    return 0;
}

/* Run one completion's callback. Returns 0, or -1 when a BaseException (or a failing error hook) must stop the
 * dispatch with that exception set. */
static int
deliver(RingObject *self, uint64_t ud, int32_t res, uint32_t flags)
{
    Py_ssize_t i = tab_find(self, ud);
    if (i < 0)
        return 0; /* ours (an internal TIMEOUT) or already delivered */
    PyObject *cb = self->tab[i].cb;
    PyObject *key = NULL;
    if (flags & IORING_CQE_F_MORE) {
        Py_INCREF(cb);
    }
    else {
        PyObject *keep = self->tab[i].keep;
        tab_remove(self, (size_t)i); /* its references are ours now */
        keep_release(keep);
    }
    if (cb != Py_None) {
        PyObject *cargs[2];
        PyObject *r = NULL;
        if (Py_IS_TYPE(cb, &RecvHookType)) {
            /* a transport's RECV (RingSocketTransport._on_recv in C): no int objects, no argument parsing */
            if (hook_run((RecvHookObject *)cb, res, flags) == 0) {
                r = Py_None;
                Py_INCREF(r);
            }
            goto called;
        }
        cargs[0] = PyLong_FromLong(res);
        cargs[1] = PyLong_FromUnsignedLong(flags);
        if (cargs[0] != NULL && cargs[1] != NULL)
            r = PyObject_Vectorcall(cb, cargs, 2, NULL);
        Py_XDECREF(cargs[0]);
        Py_XDECREF(cargs[1]);
    called:
        if (r != NULL) {
            Py_DECREF(r);
        }
        else if (PyErr_ExceptionMatches(PyExc_Exception)) {
            /* One callback's bug must not stop the others. */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            if (tb != NULL && ev != NULL)
                PyException_SetTraceback(ev, tb);
            Py_XDECREF(et);
            Py_XDECREF(tb);
            PyObject *h = NULL;
            key = PyLong_FromUnsignedLongLong(ud);
            if (key == NULL) {
                Py_XDECREF(ev);
                goto fail;
            }
            if (self->on_callback_error != NULL && self->on_callback_error != Py_None)
                h = PyObject_CallFunctionObjArgs(self->on_callback_error, ev ? ev : Py_None, key, NULL);
            else
                h = PyObject_CallMethod((PyObject *)self, "_callback_failed", "OO", ev ? ev : Py_None, key);
            Py_XDECREF(ev);
            if (h == NULL)
                goto fail;
            Py_DECREF(h);
        }
        else {
            goto fail;
        }
    }
    Py_DECREF(cb);
    Py_XDECREF(key);
    return 0;
fail:
    Py_DECREF(cb);
    Py_XDECREF(key);
    return -1;
}

/* Deliver the backlog's CQEs (older than anything in the CQ). */
static int
deliver_backlog(RingObject *self, Py_ssize_t *total)
{
    PyObject *items = self->backlog;
    self->backlog = PyList_New(0);
    if (self->backlog == NULL) {
        self->backlog = items;
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    *total += n;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long ud;
        int res;
        unsigned flags;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "KiI", &ud, &res, &flags) ||
            deliver(self, ud, res, flags) < 0) {
            PyObject *exc_t, *exc_v, *exc_tb;
            PyErr_Fetch(&exc_t, &exc_v, &exc_tb);
            PyObject *rest = PyList_GetSlice(items, i + 1, n);
            if (rest != NULL) {
                PyList_SetSlice(self->backlog, 0, 0, rest);
                Py_DECREF(rest);
            }
            PyErr_Restore(exc_t, exc_v, exc_tb);
            Py_DECREF(items);
            return -1;
        }
    }
    Py_DECREF(items);
    return 0;
}

static PyObject *
dispatch(RingObject *self)
{
    Py_ssize_t total = 0;
    for (;;) {
        unsigned n = 0;
        unsigned head = *self->cq_khead;
        unsigned tail = __atomic_load_n(self->cq_ktail, __ATOMIC_ACQUIRE);
        int have_backlog = PyList_GET_SIZE(self->backlog) != 0;
        unsigned kflags = __atomic_load_n(self->sq_kflags, __ATOMIC_RELAXED);
        if (head != tail) {
            n = reap(self);
        }
        else if (!have_backlog) {
            if (kflags & IORING_SQ_CQ_OVERFLOW) {
                /* IORING_FEAT_NODROP kept the CQEs that did not fit; GETEVENTS flushes them into the CQ. */
                if (ring_enter(self, 0, 0, IORING_ENTER_GETEVENTS, 0, NULL, 0) < 0)
                    return NULL;
                continue;
            }
            return PyLong_FromSsize_t(total);
        }
        self->in_dispatch = 1;
        if (have_backlog) {
            /* Rare: the backlog is older than the CQ's CQEs; deliver it all as tuples, in order. */
            if (batch_to_backlog(self, 0, n, 0) < 0 || deliver_backlog(self, &total) < 0) {
                self->in_dispatch = 0;
                return NULL;
            }
        }
        else {
            total += n;
            for (unsigned i = 0; i < n; i++) {
                struct cqe *c = &self->batch[i];
                if (deliver(self, c->user_data, c->res, c->flags) < 0) {
                    /* KeyboardInterrupt/SystemExit (or an error hook that raised): the rest of this batch is
                     * consumed from the CQ already; keep it for the next wait(), delivered exactly once. */
                    PyObject *et, *ev, *tb;
                    PyErr_Fetch(&et, &ev, &tb);
                    batch_to_backlog(self, i + 1, n, 1);
                    PyErr_Restore(et, ev, tb);
                    self->in_dispatch = 0;
                    return NULL;
                }
            }
        }
        self->in_dispatch = 0;
        /* One batch per wait(): only CQEs the kernel kept on its overflow list are still taken now. */
        if (!(__atomic_load_n(self->sq_kflags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW))
            return PyLong_FromSsize_t(total);
    }
}

/* ------------------------------------------------------------------------------------------------ methods */

static PyObject *
Ring_submit(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    uint64_t n = ready(self);
    if (!n)
        return PyLong_FromLong(0);
    long r = ring_enter(self, (unsigned)n, 0, 0, 0, NULL, 0);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

/* The operations among the CQEs the last wait() dispatched: runs of one user_data in the last reap (a socket's
 * multishot RECV posting several CQEs is one), or the count itself below two. A wait for more completions pays
 * only with several operations completing: the kernel queues one wake-up item per operation, not per CQE, so
 * one busy socket alone never fills a batch. */
static unsigned
count_sources(RingObject *self)
{
    if (self->last_dispatched < 2 || self->batch_n == 0)
        return (unsigned)self->last_dispatched;
    unsigned runs = 1;
    for (unsigned i = 1; i < self->batch_n; i++)
        runs += self->batch[i].user_data != self->batch[i - 1].user_data;
    return runs;
}

static PyObject *
Ring_wait(RingObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *a[1] = {NULL};
    if ((nargs != 1 || kwnames != NULL) && parse("wait", args, nargs, kwnames, names, 0, 1, a) < 0)
        return NULL;
    if (nargs == 1 && kwnames == NULL)
        a[0] = args[0];
    if (check_open(self) < 0)
        return NULL;
    if (self->in_dispatch) {
        PyErr_SetString(RingError, "Ring.wait() called from a completion callback");
        return NULL;
    }
    int forever = a[0] == NULL || a[0] == Py_None;
    double timeout = 0.0;
    if (!forever) {
        timeout = PyFloat_AsDouble(a[0]);
        if (timeout == -1.0 && PyErr_Occurred())
            return NULL;
        if (timeout != timeout) {
            PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
            return NULL;
        }
    }
    unsigned to_submit = (unsigned)ready(self);
    unsigned head = *self->cq_khead;
    unsigned tail = __atomic_load_n(self->cq_ktail, __ATOMIC_ACQUIRE);
    long r = 0;
    if (PyList_GET_SIZE(self->backlog) || head != tail || (!forever && timeout <= 0)) {
        unsigned flags = 0;
        if (__atomic_load_n(self->sq_kflags, __ATOMIC_RELAXED) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW))
            flags = IORING_ENTER_GETEVENTS; /* run deferred task work / flush overflowed CQEs */
        if (to_submit || flags)
            r = ring_enter(self, to_submit, 0, flags, 0, NULL, 0);
    }
    else if (self->batch_wait > 0 && self->last_sources >= 2 && self->ext_arg) {
        /* Busy: wait for a batch (the kernel wakes a DEFER_TASKRUN ring's waiter only once batch_count
         * completions are pending), for batch_wait at most; on ETIME, whatever came is dispatched. */
        self->batched_waits++;
        double t = forever || timeout > self->batch_wait ? self->batch_wait : timeout;
        self->wait_ts.tv_sec = (int64_t)t;
        self->wait_ts.tv_nsec = (int64_t)((t - (double)self->wait_ts.tv_sec) * 1e9);
        self->wait_arg.ts = (uint64_t)(uintptr_t)&self->wait_ts;
        r = ring_enter(self, to_submit, self->batch_count, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, 1,
                       &self->wait_arg, sizeof self->wait_arg);
    }
    else if (forever) {
        r = ring_enter(self, to_submit, 1, IORING_ENTER_GETEVENTS, 1, NULL, 0);
    }
    else if (self->ext_arg) {
        if (timeout > 9.2e18)
            timeout = 9.2e18;
        self->wait_ts.tv_sec = (int64_t)timeout;
        self->wait_ts.tv_nsec = (int64_t)((timeout - (double)self->wait_ts.tv_sec) * 1e9);
        self->wait_arg.ts = (uint64_t)(uintptr_t)&self->wait_ts;
        r = ring_enter(self, to_submit, 1, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, 1, &self->wait_arg,
                       sizeof self->wait_arg);
    }
    else {
        /* Old kernels: a TIMEOUT that also completes as soon as one other CQE is posted. It would join (and
         * close) an open link chain, so that must be closed first. */
        if (self->chain) {
            PyErr_SetString(RingError, "wait() with a timeout on a kernel without IORING_FEAT_EXT_ARG adds a TIMEOUT "
                                       "SQE, which would join the open link chain: close the chain (an SQE without "
                                       "IOSQE_IO_LINK) first");
            return NULL;
        }
        struct ktimespec *ts;
        PyObject *keep = timespec_bytes(a[0], &ts);
        if (keep == NULL)
            return NULL;
        PyObject *t = prep(self, OP_TIMEOUT, 0, 0, -1, 1, (uint64_t)(uintptr_t)ts, 1, 0, Py_None, keep);
        if (t == NULL)
            return NULL;
        Py_DECREF(t);
        r = ring_enter(self, (unsigned)ready(self), 1, IORING_ENTER_GETEVENTS, 1, NULL, 0);
    }
    if (r < 0)
        return NULL;
    PyObject *n = dispatch(self);
    if (n != NULL && self->batch_wait > 0) {  /* nothing more per iteration while batching is off */
        self->last_dispatched = PyLong_AsSsize_t(n);
        self->last_sources = count_sources(self);
    }
    return n;
}

static PyObject *
Ring_has_feature(RingObject *self, PyObject *arg)
{
    unsigned long f = PyLong_AsUnsignedLongMask(arg);
    if (f == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong((self->features & f) != 0);
}

static PyObject *
Ring_fileno(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->fd);
}

static void
unmap_all(RingObject *self)
{
    if (self->sqe_map != NULL && self->exports == 0) {
        munmap(self->sqe_map, self->sqe_map_size);
        self->sqe_map = NULL;
        self->sqes = NULL;
    }
    if (self->cq_map != NULL && self->cq_map != self->sq_map)
        munmap(self->cq_map, self->cq_map_size);
    self->cq_map = NULL;
    if (self->sq_map != NULL)
        munmap(self->sq_map, self->sq_map_size);
    self->sq_map = NULL;
    PyMem_Free(self->batch);
    self->batch = NULL;
}

/* _attach(fd, params: bytes): map the rings of a set-up io_uring (whose fd this object owns from now on). */
static PyObject *
Ring__attach(RingObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != sizeof(struct uring_params)) {
        PyErr_SetString(PyExc_TypeError, "_attach(fd, params) needs the fd and the 120 bytes of io_uring_params");
        return NULL;
    }
    if (self->fd >= 0 || self->sq_map != NULL) {
        PyErr_SetString(RingError, "the ring is attached already");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "_attach(): not an fd");
        return NULL;
    }
    struct uring_params p;
    memcpy(&p, PyBytes_AS_STRING(args[1]), sizeof p);
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct cqe);
    int mflags = MAP_SHARED | MAP_POPULATE;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (cq_size > sq_size)
            sq_size = cq_size;
        cq_size = sq_size;
    }
    void *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, mflags, fd, IORING_OFF_SQ_RING);
    if (sq == MAP_FAILED)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->sq_map = sq;
    self->sq_map_size = sq_size;
    void *cq = sq;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP)) {
        cq = mmap(NULL, cq_size, PROT_READ | PROT_WRITE, mflags, fd, IORING_OFF_CQ_RING);
        if (cq == MAP_FAILED) {
            PyErr_SetFromErrno(PyExc_OSError);
            unmap_all(self);
            return NULL;
        }
    }
    self->cq_map = cq;
    self->cq_map_size = cq_size;
    size_t sqe_size = p.sq_entries * sizeof(struct sqe);
    void *sqes = mmap(NULL, sqe_size, PROT_READ | PROT_WRITE, mflags, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        unmap_all(self);
        return NULL;
    }
    self->sqe_map = sqes;
    self->sqe_map_size = sqe_size;
    self->batch = PyMem_Calloc(p.cq_entries, sizeof(struct cqe));
    if (self->batch == NULL) {
        unmap_all(self);
        return PyErr_NoMemory();
    }
    char *sqb = sq, *cqb = cq;
    self->sq_entries = p.sq_entries;
    self->cq_entries = p.cq_entries;
    self->setup_flags = p.flags;
    self->features = p.features;
    self->sq_mask = *(unsigned *)(sqb + p.sq_off.ring_mask);
    self->sq_khead = (unsigned *)(sqb + p.sq_off.head);
    self->sq_ktail = (unsigned *)(sqb + p.sq_off.tail);
    self->sq_kflags = (unsigned *)(sqb + p.sq_off.flags);
    unsigned *array = (unsigned *)(sqb + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++)
        array[i] = i; /* an identity map set once: never written again */
    self->cq_mask = *(unsigned *)(cqb + p.cq_off.ring_mask);
    self->cq_khead = (unsigned *)(cqb + p.cq_off.head);
    self->cq_ktail = (unsigned *)(cqb + p.cq_off.tail);
    self->cqes = (struct cqe *)(cqb + p.cq_off.cqes);
    self->sqes = sqes;
    self->sq_tail = __atomic_load_n(self->sq_ktail, __ATOMIC_RELAXED);
    self->submitted = self->sq_tail;
    self->limit = self->sq_tail + self->sq_entries;
    self->chain = 0;
    self->ext_arg = (p.features & IORING_FEAT_EXT_ARG) != 0;
    self->fd = (int)fd;
    self->closed = 0;
    Py_RETURN_NONE;
}

static int
orphan_object(PyObject *obj)
{
    return Orphaned != NULL ? PyList_Append(Orphaned, obj) : 0;
}

/* _mark_closed(): refuse every later operation (they raise RingClosedError); the fd stays open. */
static PyObject *
Ring__mark_closed(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    self->limit = 0;
    Py_RETURN_NONE;
}

/* _release(): orphan what the kernel may still touch, drop the tables, unmap and close the fd. */
static PyObject *
Ring__release(RingObject *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    self->limit = 0;
    Py_ssize_t n_pending = self->tab_count;
    self->leaked = n_pending != 0;
    /* Leaking memory is better than letting the kernel write into freed memory. */
    if (tab_clear(self, 1) < 0)
        return NULL;
    PyList_SetSlice(self->backlog, 0, PyList_GET_SIZE(self->backlog), NULL);
    int busy = self->exports != 0;
    unmap_all(self);
    if (self->fd >= 0) {
        close(self->fd);
        self->fd = -1;
    }
    if (busy) {
        PyErr_SetString(PyExc_BufferError, "the SQE array is still exported (a live _sqes view); it stays mapped");
        return NULL;
    }
    return PyLong_FromSsize_t(n_pending);
}

/* ------------------------------------------------------------------------------------------------ getters */

static PyObject *
Ring_get_closed(RingObject *self, void *c)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
Ring_get_in_flight(RingObject *self, void *c)
{
    return PyLong_FromSsize_t(self->tab_count);
}

/* {user_data: callback} (which == 0) or {user_data: keepalive} (which == 1): a snapshot. */
static PyObject *
tab_snapshot(RingObject *self, int which)
{
    PyObject *d = PyDict_New();
    if (d == NULL || self->tab == NULL)
        return d;
    for (size_t i = 0; i <= self->tab_mask; i++) {
        struct pslot *sl = &self->tab[i];
        PyObject *v = which ? keep_obj(sl->keep) : sl->cb;
        if (sl->ud == 0 || sl->ud == TAB_DEAD || v == NULL)
            continue;
        PyObject *k = PyLong_FromUnsignedLongLong(sl->ud);
        if (k == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(k);
    }
    return d;
}

static PyObject *
Ring_get_pending(RingObject *self, void *c)
{
    return tab_snapshot(self, 0);
}

static PyObject *
Ring_get_keep(RingObject *self, void *c)
{
    return tab_snapshot(self, 1);
}

static PyObject *
Ring_get_unsubmitted(RingObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(unsubmitted(self));
}

static PyObject *
Ring_get_sq_tail(RingObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->sq_tail);
}

static PyObject *
Ring_get_chain(RingObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->chain);
}

static int
Ring_set_chain(RingObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _chain");
        return -1;
    }
    unsigned long long n = PyLong_AsUnsignedLongLong(v);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    self->chain = n;
    return 0;
}

static PyObject *
Ring_get_batch_wait(RingObject *self, void *c)
{
    return PyFloat_FromDouble(self->batch_wait);
}

static int
Ring_set_batch_wait(RingObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete batch_wait");
        return -1;
    }
    double t = PyFloat_AsDouble(v);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    if (!(t >= 0.0 && t <= 1.0)) {
        PyErr_SetString(PyExc_ValueError, "batch_wait must be between 0 and 1 second");
        return -1;
    }
    if (t > 0.0 && !(self->setup_flags & IORING_SETUP_DEFER_TASKRUN)) {
        PyErr_SetString(PyExc_ValueError, "batch_wait needs a ring set up with IORING_SETUP_DEFER_TASKRUN "
                                          "(elsewhere every completion wakes the waiter)");
        return -1;
    }
    if (t > 0.0 && !self->ext_arg) {
        PyErr_SetString(PyExc_ValueError, "batch_wait needs IORING_FEAT_EXT_ARG (Linux 5.11)");
        return -1;
    }
    self->batch_wait = t;
    return 0;
}

static PyObject *
Ring_get_batch_count(RingObject *self, void *c)
{
    return PyLong_FromUnsignedLong(self->batch_count);
}

static int
Ring_set_batch_count(RingObject *self, PyObject *v, void *c)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete batch_count");
        return -1;
    }
    long n = PyLong_AsLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 1 || n > (long)self->cq_entries) {
        PyErr_Format(PyExc_ValueError, "batch_count must be between 1 and the CQ's %u entries", self->cq_entries);
        return -1;
    }
    self->batch_count = (unsigned)n;
    return 0;
}

static PyObject *
Ring_get_sq_kflags(RingObject *self, void *c)
{
    if (self->sq_kflags == NULL || self->sq_map == NULL)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(__atomic_load_n(self->sq_kflags, __ATOMIC_RELAXED));
}

static PyObject *
Ring_get_sqes(RingObject *self, void *c)
{
    if (self->sqes == NULL) {
        PyErr_SetString(RingClosedError, "the ring is closed");
        return NULL;
    }
    return PyMemoryView_FromObject((PyObject *)self);
}

static int
Ring_getbuffer(RingObject *self, Py_buffer *view, int flags)
{
    if (self->sqes == NULL) {
        PyErr_SetString(PyExc_BufferError, "the ring is closed");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->sqes, (Py_ssize_t)self->sqe_map_size, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
Ring_releasebuffer(RingObject *self, Py_buffer *view)
{
    self->exports--;
}

static PyBufferProcs Ring_as_buffer = {(getbufferproc)Ring_getbuffer, (releasebufferproc)Ring_releasebuffer};

/* ------------------------------------------------------------------------------------------------ type */

static PyObject *
Ring_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    RingObject *self = (RingObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->closed = 1;
    self->batch_count = 16;
    self->backlog = PyList_New(0);
    if (self->backlog == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(Py_None);
    self->on_callback_error = Py_None;
    return (PyObject *)self;
}

static int
Ring_traverse(RingObject *self, visitproc visit, void *arg)
{
    if (self->tab != NULL) {
        for (size_t i = 0; i <= self->tab_mask; i++) {
            if (self->tab[i].ud != 0 && self->tab[i].ud != TAB_DEAD) {
                Py_VISIT(self->tab[i].cb);
                Py_VISIT(keep_obj(self->tab[i].keep));
            }
        }
    }
    Py_VISIT(self->backlog);
    Py_VISIT(self->on_callback_error);
    return 0;
}

static void
orphan_keep(RingObject *self)
{
    /* Buffers the kernel may still use must outlive the ring: never free them with it. */
    if (tab_clear(self, !self->closed) < 0)
        PyErr_Clear();
}

static int
Ring_clear(RingObject *self)
{
    orphan_keep(self);
    Py_CLEAR(self->backlog);
    Py_CLEAR(self->on_callback_error);
    return 0;
}

static void
Ring_dealloc(RingObject *self)
{
    PyObject_GC_UnTrack(self);
    PyTypeObject *tp = Py_TYPE(self);
    Ring_clear(self);
    if (self->exports == 0) {
        unmap_all(self);
    }
    if (self->fd >= 0) {
        close(self->fd); /* the kernel cancels what is left when its last reference goes */
        self->fd = -1;
    }
    PyMem_Free(self->tab);
    self->tab = NULL;
    tp->tp_free((PyObject *)self); /* a subclass's dealloc drops its reference to its type itself */
}

#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef Ring_methods[] = {
    {"nop", (PyCFunction)(void (*)(void))Ring_nop, FASTKW, "NOP: completes with res 0."},
    {"send", (PyCFunction)(void (*)(void))Ring_send, FASTKW, "SEND of a bytes-like object."},
    {"recv", (PyCFunction)(void (*)(void))Ring_recv, FASTKW, "RECV into a writable buffer."},
    {"read", (PyCFunction)(void (*)(void))Ring_read, FASTKW, "READ into a writable buffer."},
    {"recv_select", (PyCFunction)(void (*)(void))Ring_recv_select, FASTKW, "RECV into a provided buffer."},
    {"sendmsg", (PyCFunction)(void (*)(void))Ring_sendmsg, FASTKW, "SENDMSG of several buffers."},
    {"accept", (PyCFunction)(void (*)(void))Ring_accept, FASTKW, "ACCEPT (optionally multishot)."},
    {"connect", (PyCFunction)(void (*)(void))Ring_connect, FASTKW, "CONNECT to an encoded sockaddr."},
    {"shutdown", (PyCFunction)(void (*)(void))Ring_shutdown, FASTKW, "SHUTDOWN of a socket."},
    {"close_fd", (PyCFunction)(void (*)(void))Ring_close_fd, FASTKW, "CLOSE an fd asynchronously."},
    {"poll_add", (PyCFunction)(void (*)(void))Ring_poll_add, FASTKW, "POLL_ADD (optionally multishot)."},
    {"poll_remove", (PyCFunction)(void (*)(void))Ring_poll_remove, FASTKW, "POLL_REMOVE by user_data."},
    {"cancel", (PyCFunction)(void (*)(void))Ring_cancel, FASTKW, "ASYNC_CANCEL by user_data."},
    {"timeout", (PyCFunction)(void (*)(void))Ring_timeout, FASTKW, "TIMEOUT after seconds or count CQEs."},
    {"link_timeout", (PyCFunction)(void (*)(void))Ring_link_timeout, FASTKW, "LINK_TIMEOUT for the linked op."},
    {"_prep", (PyCFunction)(void (*)(void))Ring__prep, METH_FASTCALL, "Any SQE, all fields given."},
    {"submit", (PyCFunction)Ring_submit, METH_NOARGS, "Hand every queued SQE to the kernel."},
    {"wait", (PyCFunction)(void (*)(void))Ring_wait, FASTKW, "Submit, wait, dispatch one batch of CQEs."},
    {"has_feature", (PyCFunction)Ring_has_feature, METH_O, "Whether the ring has IORING_FEAT_* feat."},
    {"fileno", (PyCFunction)Ring_fileno, METH_NOARGS, "The ring's fd."},
    {"_attach", (PyCFunction)(void (*)(void))Ring__attach, METH_FASTCALL, "Map the rings of a set-up fd."},
    {"_mark_closed", (PyCFunction)Ring__mark_closed, METH_NOARGS, "Refuse every later operation."},
    {"_release", (PyCFunction)Ring__release, METH_NOARGS, "Unmap and close; returns ops left in flight."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Ring_members[] = {
    {"fd", T_INT, offsetof(RingObject, fd), READONLY, "the ring's fd (-1 once closed)"},
    {"sq_entries", T_UINT, offsetof(RingObject, sq_entries), READONLY, "SQ size"},
    {"cq_entries", T_UINT, offsetof(RingObject, cq_entries), READONLY, "CQ size"},
    {"setup_flags", T_UINT, offsetof(RingObject, setup_flags), READONLY, "IORING_SETUP_* flags in effect"},
    {"features", T_UINT, offsetof(RingObject, features), READONLY, "IORING_FEAT_* flags of the kernel"},
    {"leaked", T_BOOL, offsetof(RingObject, leaked), READONLY, "some operation never completed before close"},
    {"_ext_arg", T_INT, offsetof(RingObject, ext_arg), 0, "waits use IORING_ENTER_EXT_ARG"},
    {"_sq_mask", T_UINT, offsetof(RingObject, sq_mask), READONLY, "SQ ring mask"},
    {"_in_dispatch", T_INT, offsetof(RingObject, in_dispatch), READONLY, "callbacks are running"},
    {"_last_dispatched", T_PYSSIZET, offsetof(RingObject, last_dispatched), READONLY,
     "CQEs the last wait() dispatched (counted only with batch_wait)"},
    {"_last_sources", T_UINT, offsetof(RingObject, last_sources), READONLY,
     "operations among the CQEs the last wait() dispatched (counted only with batch_wait)"},
    {"batched_waits", T_ULONGLONG, offsetof(RingObject, batched_waits), READONLY,
     "waits that asked the kernel for a batch (see batch_wait)"},
    {"_backlog", T_OBJECT, offsetof(RingObject, backlog), READONLY, "consumed, undelivered CQEs"},
    {"on_callback_error", T_OBJECT, offsetof(RingObject, on_callback_error), 0, "hook(exc, user_data) or None"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Ring_getset[] = {
    {"closed", (getter)Ring_get_closed, NULL, "the ring was closed", NULL},
    {"in_flight", (getter)Ring_get_in_flight, NULL, "operations whose final CQE was not dispatched yet", NULL},
    {"unsubmitted", (getter)Ring_get_unsubmitted, NULL, "SQEs queued but not handed to the kernel", NULL},
    {"_sq_tail", (getter)Ring_get_sq_tail, NULL, "SQEs ever queued", NULL},
    {"_pending", (getter)Ring_get_pending, NULL, "{user_data: callback} of the operations in flight (a copy)", NULL},
    {"_keep", (getter)Ring_get_keep, NULL, "{user_data: keepalive} of the operations in flight (a copy)", NULL},
    {"_chain", (getter)Ring_get_chain, (setter)Ring_set_chain, "unsubmitted SQEs of an open link chain", NULL},
    {"batch_wait", (getter)Ring_get_batch_wait, (setter)Ring_set_batch_wait,
     "seconds a busy ring's wait() may hold out for batch_count completions (0: never; DEFER_TASKRUN rings)", NULL},
    {"batch_count", (getter)Ring_get_batch_count, (setter)Ring_set_batch_count,
     "completions a batched wait() asks for", NULL},
    {"_sq_flags", (getter)Ring_get_sq_kflags, NULL, "the kernel's SQ ring flags", NULL},
    {"_sqes", (getter)Ring_get_sqes, NULL, "a writable view of the SQE array (tests)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled core of an io_uring instance (see uringws.ring.fast.CompiledRing).",
    .tp_traverse = (traverseproc)Ring_traverse,
    .tp_clear = (inquiry)Ring_clear,
    .tp_methods = Ring_methods,
    .tp_members = Ring_members,
    .tp_getset = Ring_getset,
    .tp_as_buffer = &Ring_as_buffer,
    .tp_new = Ring_new,
};

/* ------------------------------------------------------------------------------------------------ RingIndex */

/* One head or tail index in memory shared with the kernel, for the rings driven from Python (the provided
 * buffer ring's tail, bufring.py): index[0] is an acquire load, index[0] = v a release store, as liburing's
 * io_uring_smp_load_acquire/store_release. A release store orders every store this thread made before it (the
 * ring entry written by an earlier mmap slice assignment included) before the index; an acquire load orders every
 * later load after it. It holds a buffer export of the memory, so the mapping cannot be closed under it
 * (mmap.close() raises BufferError) until release(). The interface is memoryview(...).cast("H"/"I")'s, so it
 * replaces such a view where the ordering matters. */
typedef struct {
    PyObject_HEAD
    Py_buffer view;
    void *addr; /* NULL once released */
    int width;  /* 2 or 4 bytes */
} IndexObject;

static PyObject *
Index_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"buffer", "offset", "width", NULL};
    PyObject *obj;
    Py_ssize_t offset;
    int width;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oni:RingIndex", kwlist, &obj, &offset, &width))
        return NULL;
    if (width != 2 && width != 4) {
        PyErr_SetString(PyExc_ValueError, "RingIndex width must be 2 or 4 (bytes)");
        return NULL;
    }
    IndexObject *self = (IndexObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    const char *bad = NULL;
    if (offset < 0 || offset > self->view.len - width)
        bad = "RingIndex offset out of the buffer";
    else if (((uintptr_t)self->view.buf + (uintptr_t)offset) % (uintptr_t)width)
        bad = "RingIndex address not aligned to its width";
    if (bad != NULL) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, bad);
        Py_DECREF(self);
        return NULL;
    }
    self->addr = (char *)self->view.buf + offset;
    self->width = width;
    return (PyObject *)self;
}

static void
Index_dealloc(IndexObject *self)
{
    if (self->addr != NULL) {
        self->addr = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
index_alive(IndexObject *self)
{
    if (self->addr == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation forbidden on released RingIndex object");
        return -1;
    }
    return 0;
}

static int
index_check(IndexObject *self, PyObject *key)
{
    if (index_alive(self) < 0)
        return -1;
    Py_ssize_t i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i != 0 && i != -1) {
        PyErr_SetString(PyExc_IndexError, "RingIndex has one element: [0]");
        return -1;
    }
    return 0;
}

static PyObject *
Index_load(IndexObject *self)
{
    if (self->width == 2)
        return PyLong_FromUnsignedLong(__atomic_load_n((uint16_t *)self->addr, __ATOMIC_ACQUIRE));
    return PyLong_FromUnsignedLong(__atomic_load_n((uint32_t *)self->addr, __ATOMIC_ACQUIRE));
}

static int
Index_store(IndexObject *self, PyObject *value)
{
    unsigned long v = PyLong_AsUnsignedLong(value);
    if (v == (unsigned long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            v = ULONG_MAX; /* reported as out of range below */
        }
        else {
            return -1;
        }
    }
    if (v > (self->width == 2 ? 0xFFFFUL : 0xFFFFFFFFUL)) {
        PyErr_Format(PyExc_ValueError, "RingIndex value out of range for %d bytes", self->width);
        return -1;
    }
    if (self->width == 2)
        __atomic_store_n((uint16_t *)self->addr, (uint16_t)v, __ATOMIC_RELEASE);
    else
        __atomic_store_n((uint32_t *)self->addr, (uint32_t)v, __ATOMIC_RELEASE);
    return 0;
}

static PyObject *
Index_subscript(IndexObject *self, PyObject *key)
{
    if (index_check(self, key) < 0)
        return NULL;
    return Index_load(self);
}

static int
Index_ass_subscript(IndexObject *self, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "cannot delete a RingIndex element");
        return -1;
    }
    if (index_check(self, key) < 0)
        return -1;
    return Index_store(self, value);
}

static Py_ssize_t
Index_length(IndexObject *self)
{
    return 1;
}

static PyObject *
Index_load_method(IndexObject *self, PyObject *Py_UNUSED(ignored))
{
    if (index_alive(self) < 0)
        return NULL;
    return Index_load(self);
}

static PyObject *
Index_store_method(IndexObject *self, PyObject *value)
{
    if (index_alive(self) < 0 || Index_store(self, value) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Index_release(IndexObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->addr != NULL) {
        self->addr = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_RETURN_NONE;
}

static PyObject *
Index_get_released(IndexObject *self, void *c)
{
    return PyBool_FromLong(self->addr == NULL);
}

static PyMappingMethods Index_as_mapping = {
    (lenfunc)Index_length,
    (binaryfunc)Index_subscript,
    (objobjargproc)Index_ass_subscript,
};

static PyMethodDef Index_methods[] = {
    {"load", (PyCFunction)Index_load_method, METH_NOARGS, "The index, by an acquire load (as index[0])."},
    {"store", (PyCFunction)Index_store_method, METH_O, "Publish the index by a release store (as index[0] = v)."},
    {"release", (PyCFunction)Index_release, METH_NOARGS, "Drop the buffer export (the memory may be unmapped)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Index_getset[] = {
    {"released", (getter)Index_get_released, NULL, "release() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.ring._ringc.RingIndex",
    .tp_basicsize = sizeof(IndexObject),
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RingIndex(buffer, offset, width): a u16/u32 index in shared memory; [0] loads with acquire, "
              "[0] = v stores with release.",
    .tp_as_mapping = &Index_as_mapping,
    .tp_methods = Index_methods,
    .tp_getset = Index_getset,
    .tp_new = Index_new,
};

static int
module_exec(PyObject *m)
{
    PyObject *ring_mod = PyImport_ImportModule("uringws.ring.ring");
    if (ring_mod == NULL)
        return -1;
    RingError = PyObject_GetAttrString(ring_mod, "RingError");
    RingClosedError = PyObject_GetAttrString(ring_mod, "RingClosedError");
    Orphaned = PyObject_GetAttrString(ring_mod, "_ORPHANED");
    Py_DECREF(ring_mod);
    if (RingError == NULL || RingClosedError == NULL || Orphaned == NULL || !PyList_Check(Orphaned))
        return -1;
    if (recvhook_init_strings() < 0 || callsoon_init_strings() < 0 || runonce_init_strings() < 0
        || transportwrite_init_strings() < 0)
        return -1;
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&IndexType) < 0 || PyType_Ready(&RecvHookType) < 0
        || PyType_Ready(&CallSoonType) < 0 || PyType_Ready(&RunOnceType) < 0
        || PyType_Ready(&TransportWriteType) < 0
        || PyType_Ready(&TransportFlushType) < 0)
        return -1;
    if (PyModule_AddObjectRef(m, "RunOnce", (PyObject *)&RunOnceType) < 0
        || PyModule_AddObjectRef(m, "TransportWrite", (PyObject *)&TransportWriteType) < 0
        || PyModule_AddObjectRef(m, "TransportFlush", (PyObject *)&TransportFlushType) < 0
        || PyModule_AddObjectRef(m, "CallSoon", (PyObject *)&CallSoonType) < 0)
        return -1;
    Py_INCREF(&RecvHookType);
    if (PyModule_AddObject(m, "RecvHook", (PyObject *)&RecvHookType) < 0) {
        Py_DECREF(&RecvHookType);
        return -1;
    }
    Py_INCREF(&IndexType);
    if (PyModule_AddObject(m, "RingIndex", (PyObject *)&IndexType) < 0) {
        Py_DECREF(&IndexType);
        return -1;
    }
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "uringws.ring._ringc",
    .m_doc = "The compiled core of uringws.ring: SQE preparation, io_uring_enter and CQE dispatch.",
    .m_size = 0,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__ringc(void)
{
    return PyModuleDef_Init(&module_def);
}
