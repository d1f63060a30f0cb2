/* Compiled TLS engine: one OpenSSL SSL per connection over BIOs of our own (docs/design.md §9).
 *
 * Why: the stdlib's SSLObject sits on two ssl.MemoryBIO, OpenSSL's BIO_s_mem, whose writes grow the buffer with
 * BUF_MEM_grow_clean (zero-fill, then copy) and whose reads copy again: per MiB echoed about 2 MiB of memset and
 * 4 MiB of memcpy. Here OpenSSL reads received ciphertext in place from the caller's buffer (only a trailing
 * partial record is copied, into a plain malloc'd buffer without zero-fill), and OpenSSL's records are written straight into one growing bytes object that is handed to the send
 * queue as it is (no copy out).
 *
 * The SSL is made from the SSL_CTX of the caller's ssl.SSLContext, read from CPython's private PySSLContext layout
 * (SSL_CTX *ctx is the first field after PyObject_HEAD in 3.11-3.13). uringws/tls/engine.py decides per connection
 * whether this engine may be used (layout and library checks, callbacks of _ssl that would read the SSL's app
 * data as their own socket object, ...) and otherwise keeps the stdlib path.
 *
 * Types (each method mirrors the same-named method of ssl.SSLObject / ssl.MemoryBIO and raises the same ssl
 * exception classes):
 *   Engine(context, server_side)  do_handshake, read, write, pending, unwrap, and the connection queries;
 *                                 read_all(buffer) and .more: every decrypted byte available, in one call
 *   Engine.incoming               an object with write(data) and .pending, like the incoming MemoryBIO, and
 *                                 lend(data) / keep() to have OpenSSL read received bytes in place
 *   Engine.outgoing               an object with read() and .pending, like the outgoing MemoryBIO
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>
#include <stdint.h>
#include <time.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/opensslv.h>

#include "../_fastattr.h"
#include "_tls13.h"

/* ssl.SSLError and friends, taken from the ssl module at import so isinstance() checks match the stdlib's. */
static PyObject *SSLError, *SSLZeroReturnError, *SSLWantReadError, *SSLWantWriteError, *SSLSyscallError,
    *SSLEOFError, *SSLCertVerificationError;
static PyTypeObject *SSLContextType;  /* _ssl._SSLContext */
static BIO_METHOD *engine_bio_method;

/* ssl.SSL_ERROR_* values, the first argument of CPython's SSLError. */
enum { PY_SSL_ERROR_SSL = 1, PY_SSL_ERROR_WANT_READ = 2, PY_SSL_ERROR_WANT_WRITE = 3,
       PY_SSL_ERROR_WANT_X509_LOOKUP = 4, PY_SSL_ERROR_SYSCALL = 5, PY_SSL_ERROR_ZERO_RETURN = 6,
       PY_SSL_ERROR_WANT_CONNECT = 7, PY_SSL_ERROR_EOF = 8, PY_SSL_ERROR_INVALID_ERROR_CODE = 10 };

/* The head of CPython's PySSLContext (Modules/_ssl.c, 3.11-3.13). */
typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} CtxHead;

/* Extra room reserved per TLS record of a write: header, explicit IV, MAC or tag, padding (CBC with SHA-384
 * needs 5 + 16 + 48 + 256); reserving it up front means the output never grows (and moves) mid-write. */
#define RECORD_SLACK 512
#define RECORD_PLAINTEXT 16384
/* read_all(): unread bytes of an incomplete record above this are read into OpenSSL's record buffer (one copy)
 * rather than left for incoming.keep() to copy aside and a later read to copy again. */
#define ABSORB_PARTIAL 2048

typedef struct Engine {
    PyObject_HEAD
    SSL *ssl;
    PyObject *context;     /* the ssl.SSLContext: keeps its SSL_CTX alive while we use it */
    /* Received ciphertext not yet read by OpenSSL: in_buf[in_pos:in_len]. Freed once drained, so an idle
     * connection holds none. */
    char *in_buf;
    size_t in_pos, in_len, in_cap;
    /* Received bytes lent by the caller for the duration of one call (incoming.lend ... incoming.keep): OpenSSL
     * reads them in place, after in_buf's; keep() copies what is left into in_buf and lets go of the buffer. */
    Py_buffer lent;
    size_t lent_pos;
    int lending;
    /* Produced ciphertext: the first out_len bytes of out, a bytes object of out_cap bytes only we hold. */
    PyObject *out;
    Py_ssize_t out_len, out_cap;
    int server_side;
    int failed;            /* a BIO callback failed to allocate: report MemoryError */
    /* read_all(): whether the caller must call it again before waiting for more input (the buffer filled up,
     * or the records after the data returned were a close_notify or an error, see error_pending). */
    char more;
    /* An error that read_all() met after decrypting data: the data is returned first, the error is raised by
     * the next read_all() or read(). Never dropped: a connection left waiting on it would hang. */
    PyObject *error_pending;
    /* Kept record buffers (see keep_touch): whether this SSL began in SSL_MODE_RELEASE_BUFFERS, whether it keeps
     * its buffers now, its operations in the current window, and its place in the least-recently-used list. */
    char can_keep, kept;
    unsigned keep_ops;
    uint64_t keep_window, keep_last;
    unsigned long keep_thread;
    struct Engine *keep_prev, *keep_next;
    /* TLS 1.3 record protection of our own (_tls13.h), only for an engine made with record_keys=True: the
     * captured traffic secrets, and each direction's protection once asked for. */
    Tls13Secrets *secrets;
    Tls13Dir *rec_read, *rec_write;
    /* Own writes (a TLS 1.3 server once its handshake is done): application data is sealed here with rec_write.
     * OpenSSL still writes what only it knows to write (alerts, close_notify, a KeyUpdate); its records are
     * sealed under its own write sequence, which stopped when ours took over, and are sealed again with ours
     * (translate_records). shadow_w is OpenSSL's write protection, made when first needed, at shadow_seq. */
    char own_w, own_allowed;
    uint64_t shadow_seq;
    Tls13Dir *shadow_w;
    /* Own reads (from the same moment): whole application records are opened here with rec_read, straight into
     * the caller's buffer. Any other record (an alert, close_notify, a KeyUpdate), one that does not open, and one
     * larger than the room left, goes to OpenSSL as `feed`, sealed again for its read protection (shadow_r, made
     * when first needed, at shadow_r_seq), which sees nothing else; so every error and alert is still OpenSSL's. */
    char own_r;
    uint64_t shadow_r_seq;
    Tls13Dir *shadow_r;
    unsigned char *feed;
    size_t feed_len, feed_pos;
    /* The SSL freed (see gone_start): ssl is NULL, `gone` answers the queries and keeps the state OpenSSL kept
     * (shutdown, a fatal error), and the engine itself does what OpenSSL still did after the handshake: alerts,
     * close_notify, KeyUpdate. held: plaintext of a record larger than the room a read had, delivered first. */
    char free_ssl;
    /* The peer's handshake messages after the handshake, as a stream (one may span records): hs_len header bytes
     * of the current one so far (0-4; 5: its body, hs_left bytes of which are still to come). */
    unsigned char hs[4], hs_len;
    size_t hs_left;
    struct Gone *gone;
    unsigned char *held;
    size_t held_len, held_pos;
} Engine;

/* What a freed SSL still answers for (cipher(), version(), getpeercert(), ...), and its state. */
typedef struct Gone {
    const SSL_CIPHER *cipher;         /* OpenSSL's static cipher table: lives as long as the library */
    X509 *peer;                       /* the client's certificate, if it sent one (a reference) */
    SSL_SESSION *session;             /* only when sessions are cached (stateful): removed on a fatal error */
    int verify_mode;
    char reused;
    char shutdown;                    /* SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN, as SSL_get_shutdown */
    char dead;                        /* a fatal error, sent or received: nothing more is read or written */
    unsigned char warn_alert;         /* the last warning-level alert received, as OpenSSL's s3.warn_alert */
    unsigned char alerts;             /* warning alerts in a row (OpenSSL allows 4) */
    unsigned char alpn_len, fin_len;
    unsigned short n_shared;
    const SSL_CIPHER **shared;        /* into bytes: the server's ciphers the client offered too */
    unsigned char *alpn, *fin;        /* into bytes: the ALPN protocol, the tls-unique Finished */
    unsigned char bytes[];
} Gone;

static inline int
eng_shutdown(Engine *s)
{
    return s->gone != NULL ? s->gone->shutdown : SSL_get_shutdown(s->ssl);
}

static inline size_t
eng_pending(Engine *s)
{
    return s->gone != NULL ? s->held_len - s->held_pos : (size_t)SSL_pending(s->ssl);
}

static Tls13Secrets *
engine_secrets(const SSL *ssl)
{
    BIO *b = SSL_get_rbio(ssl);
    if (b == NULL || BIO_method_type(b) != engine_bio_type)
        return NULL;
    Engine *e = BIO_get_data(b);
    return e == NULL ? NULL : e->secrets;
}

/* -- Kept record buffers ------------------------------------------------------------------------------------
 *
 * CPython's SSLContext sets SSL_MODE_RELEASE_BUFFERS, and an SSL inherits it: OpenSSL frees the 17 KiB read buffer
 * after each record it has read and the write buffer after each write, and allocates them again for the next
 * one. That keeps an idle connection small, but a busy one pays a malloc and a free of 17 KiB per record each
 * way: 1,300 of a ping-pong message's ~30,000 instructions (benchmarks/instructions.py). So a connection that
 * made KEEP_MIN_OPS reads or writes (read_all() calls, write() calls) within KEEP_WINDOW_NS after its handshake
 * keeps its buffers: the mode is cleared on its SSL. At most KEEP_MAX connections of the process keep buffers at
 * once (about 34 KiB each), in a list ordered by last use; the least recently used one goes back to the mode,
 * and gives its buffers back (SSL_free_buffers), once it has been idle for KEEP_WINDOW_NS, which is checked at
 * every read or write of a connection that keeps buffers or is counting towards it. A process whose connections
 * all stop holds at most KEEP_MAX pairs until the next operation of any of its connections. Only the thread that
 * kept a connection's buffers gives them back (an SSL is only ever used by its loop's thread; the list itself is
 * under the GIL). */
#define KEEP_MAX 64
#define KEEP_MIN_OPS 8
#define KEEP_WINDOW_NS 1000000000ULL

static Engine *keep_head, *keep_tail;  /* least recently used first */
static int keep_count;

static uint64_t
keep_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void
keep_unlink(Engine *e)
{
    if (e->keep_prev != NULL)
        e->keep_prev->keep_next = e->keep_next;
    else
        keep_head = e->keep_next;
    if (e->keep_next != NULL)
        e->keep_next->keep_prev = e->keep_prev;
    else
        keep_tail = e->keep_prev;
    e->keep_prev = e->keep_next = NULL;
}

static void
keep_append(Engine *e)
{
    e->keep_prev = keep_tail;
    e->keep_next = NULL;
    if (keep_tail != NULL)
        keep_tail->keep_next = e;
    else
        keep_head = e;
    keep_tail = e;
}

/* Back to SSL_MODE_RELEASE_BUFFERS. SSL_free_buffers() keeps a buffer that still holds part of a record; OpenSSL
 * frees it itself once that is done, the mode being set again. */
static void
keep_release(Engine *e)
{
    keep_unlink(e);
    keep_count--;
    e->kept = 0;
    e->keep_ops = 0;
    if (e->out_len == 0) {  /* the output buffer out_take() kept for the next write */
        Py_CLEAR(e->out);
        e->out_cap = 0;
    }
    SSL_set_mode(e->ssl, SSL_MODE_RELEASE_BUFFERS);
    (void)SSL_free_buffers(e->ssl);
}

/* A read_all() or write() on e: the bookkeeping above. */
static void
keep_touch(Engine *e)
{
    if (!e->can_keep)
        return;
    uint64_t now = keep_clock();
    Engine *oldest = keep_head;
    if (oldest != NULL && oldest != e && now - oldest->keep_last > KEEP_WINDOW_NS
        && oldest->keep_thread == PyThread_get_thread_ident())
        keep_release(oldest);
    if (e->own_r && e->own_w)  /* own records: OpenSSL's record buffers stay unused, none to keep */
        return;
    e->keep_last = now;
    if (e->kept) {
        if (e != keep_tail) {
            keep_unlink(e);
            keep_append(e);
        }
        return;
    }
    if (now - e->keep_window > KEEP_WINDOW_NS) {
        e->keep_window = now;
        e->keep_ops = 0;
    }
    if (++e->keep_ops < KEEP_MIN_OPS || keep_count >= KEEP_MAX || !SSL_is_init_finished(e->ssl))
        return;
    SSL_clear_mode(e->ssl, SSL_MODE_RELEASE_BUFFERS);
    e->kept = 1;
    e->keep_thread = PyThread_get_thread_ident();
    keep_append(e);
    keep_count++;
}

typedef struct {
    PyObject_HEAD
    Engine *engine;
} EngineBIO;

static PyTypeObject EngineType, IncomingType, OutgoingType;

/* -- output buffer ------------------------------------------------------------------------------------------- */

static int
out_reserve(Engine *self, Py_ssize_t more)
{
    Py_ssize_t need = self->out_len + more;
    if (need <= self->out_cap)
        return 0;
    Py_ssize_t cap = self->out_cap * 2;
    if (cap < need)
        cap = need;
    if (cap < 4096)
        cap = 4096;
    if (self->out == NULL) {
        self->out = PyBytes_FromStringAndSize(NULL, cap);  /* not zero-filled */
        if (self->out == NULL)
            return -1;
    }
    else if (_PyBytes_Resize(&self->out, cap) < 0) {
        self->out_len = self->out_cap = 0;  /* _PyBytes_Resize freed it and set out to NULL */
        return -1;
    }
    self->out_cap = cap;
    return 0;
}

/* -- BIOs ---------------------------------------------------------------------------------------------------- */

static int translate_records(Engine *self, const unsigned char *data, size_t n);

static int
bio_write(BIO *bio, const char *data, int n)
{
    Engine *self = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (n <= 0)
        return 0;
    if (self->own_w) {
        if (translate_records(self, (const unsigned char *)data, (size_t)n) < 0) {
            PyErr_Clear();
            self->failed = 1;
            return -1;
        }
        return n;
    }
    if (out_reserve(self, n) < 0) {
        PyErr_Clear();
        self->failed = 1;
        return -1;
    }
    memcpy(PyBytes_AS_STRING(self->out) + self->out_len, data, (size_t)n);
    self->out_len += n;
    return n;
}

static int
bio_read(BIO *bio, char *data, int n)
{
    Engine *self = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (n <= 0) {
        BIO_set_retry_read(bio);
        return -1;
    }
    if (self->feed != NULL) {  /* own reads: OpenSSL sees this record and nothing else */
        size_t left = self->feed_len - self->feed_pos, take = (size_t)n < left ? (size_t)n : left;
        if (take == 0) {
            BIO_set_retry_read(bio);
            return -1;
        }
        memcpy(data, self->feed + self->feed_pos, take);
        self->feed_pos += take;
        return (int)take;
    }
    size_t avail = self->in_len - self->in_pos;
    if (avail > 0) {
        size_t take = (size_t)n < avail ? (size_t)n : avail;
        memcpy(data, self->in_buf + self->in_pos, take);
        self->in_pos += take;
        if (self->in_pos == self->in_len) {
            free(self->in_buf);
            self->in_buf = NULL;
            self->in_pos = self->in_len = self->in_cap = 0;
        }
        return (int)take;
    }
    if (self->lending && self->lent_pos < (size_t)self->lent.len) {
        size_t left = (size_t)self->lent.len - self->lent_pos;
        size_t take = (size_t)n < left ? (size_t)n : left;
        memcpy(data, (const char *)self->lent.buf + self->lent_pos, take);
        self->lent_pos += take;
        return (int)take;
    }
    /* Never EOF: more may arrive (TCP EOF is judged by the protocol, as with a MemoryBIO). */
    BIO_set_retry_read(bio);
    return -1;
}

static size_t
in_pending(Engine *self)
{
    return self->in_len - self->in_pos + (self->lending ? (size_t)self->lent.len - self->lent_pos : 0);
}

static long
bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    Engine *self = BIO_get_data(bio);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return self != NULL ? (long)in_pending(self) : 0;
    case BIO_CTRL_WPENDING:
        return 0;
    default:
        return 0;
    }
}

static int
bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static int
bio_destroy(BIO *bio)
{
    BIO_set_data(bio, NULL);
    return 1;
}

/* -- errors -------------------------------------------------------------------------------------------------- */

static const char *
lib_name(unsigned long e, char *buf, size_t size)
{
    switch (ERR_GET_LIB(e)) {
    case ERR_LIB_SSL: return "SSL";
    case ERR_LIB_X509: return "X509";
    case ERR_LIB_EVP: return "EVP";
    case ERR_LIB_PEM: return "PEM";
    case ERR_LIB_ASN1: return "ASN1";
    case ERR_LIB_SYS: return "SYS";
    case ERR_LIB_PROV: return "PROV";
    default: {
        const char *s = ERR_lib_error_string(e);
        if (s == NULL)
            return NULL;
        snprintf(buf, size, "%s", s);
        return buf;
    }
    }
}

/* Raise `type(code, "[LIB: REASON] text (_engine.c:line)")` with .library and .reason, as CPython's _ssl does. */
static void
raise_ssl(PyObject *type, int code, const char *text, unsigned long e, int line, Engine *self)
{
    char libbuf[64], reasonbuf[128];
    const char *lib = NULL;
    const char *reason = NULL;
    if (e != 0) {
        lib = lib_name(e, libbuf, sizeof libbuf);
        const char *r = ERR_reason_error_string(e);
        if (r != NULL) {
            /* OpenSSL's reason strings are its mnemonics in lower case with spaces: "wrong version number". */
            size_t i = 0;
            for (; r[i] && i + 1 < sizeof reasonbuf; i++)
                reasonbuf[i] = r[i] == ' ' ? '_' : (char)(r[i] >= 'a' && r[i] <= 'z' ? r[i] - 32 : r[i]);
            reasonbuf[i] = 0;
            reason = reasonbuf;
            if (text == NULL)
                text = r;
        }
    }
    if (text == NULL)
        text = "unknown error";
    PyObject *msg;
    long verify_code = 0;
    const char *verify_message = NULL;
    if (type == SSLCertVerificationError && self != NULL) {
        verify_code = SSL_get_verify_result(self->ssl);
        verify_message = X509_verify_cert_error_string(verify_code);
    }
    if (lib && reason && verify_message)
        msg = PyUnicode_FromFormat("[%s: %s] %s: %s (_engine.c:%d)", lib, reason, text, verify_message, line);
    else if (lib && reason)
        msg = PyUnicode_FromFormat("[%s: %s] %s (_engine.c:%d)", lib, reason, text, line);
    else
        msg = PyUnicode_FromFormat("%s (_engine.c:%d)", text, line);
    ERR_clear_error();
    if (msg == NULL)
        return;
    PyObject *exc = PyObject_CallFunction(type, "iO", code, msg);
    Py_DECREF(msg);
    if (exc == NULL)
        return;
    PyObject *vlib = lib ? PyUnicode_FromString(lib) : Py_NewRef(Py_None);
    PyObject *vreason = reason ? PyUnicode_FromString(reason) : Py_NewRef(Py_None);
    if (vlib == NULL || vreason == NULL || PyObject_SetAttrString(exc, "library", vlib) < 0
        || PyObject_SetAttrString(exc, "reason", vreason) < 0) {
        Py_XDECREF(vlib);
        Py_XDECREF(vreason);
        Py_DECREF(exc);
        return;
    }
    Py_DECREF(vlib);
    Py_DECREF(vreason);
    if (verify_message != NULL) {
        PyObject *c = PyLong_FromLong(verify_code);
        PyObject *m = PyUnicode_FromString(verify_message);
        if (c == NULL || m == NULL || PyObject_SetAttrString(exc, "verify_code", c) < 0
            || PyObject_SetAttrString(exc, "verify_message", m) < 0) {
            Py_XDECREF(c);
            Py_XDECREF(m);
            Py_DECREF(exc);
            return;
        }
        Py_DECREF(c);
        Py_DECREF(m);
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
}

/* Turn a failed SSL_* call into the exception the stdlib raises for it (PySSL_SetError in Modules/_ssl.c). */
static PyObject *
ssl_error(Engine *self, int ret, int line)
{
    if (self->failed) {
        self->failed = 0;
        ERR_clear_error();
        return PyErr_NoMemory();
    }
    int err = SSL_get_error(self->ssl, ret);
    unsigned long e = ERR_peek_last_error();
    switch (err) {
    case SSL_ERROR_ZERO_RETURN:
        raise_ssl(SSLZeroReturnError, PY_SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed (EOF)", 0,
                  line, self);
        break;
    case SSL_ERROR_WANT_READ:
        raise_ssl(SSLWantReadError, PY_SSL_ERROR_WANT_READ, "The operation did not complete (read)", 0, line,
                  self);
        break;
    case SSL_ERROR_WANT_WRITE:
        raise_ssl(SSLWantWriteError, PY_SSL_ERROR_WANT_WRITE, "The operation did not complete (write)", 0, line,
                  self);
        break;
    case SSL_ERROR_WANT_X509_LOOKUP:
        raise_ssl(SSLError, PY_SSL_ERROR_WANT_X509_LOOKUP, "The operation did not complete (X509 lookup)", 0,
                  line, self);
        break;
    case SSL_ERROR_WANT_CONNECT:
        raise_ssl(SSLError, PY_SSL_ERROR_WANT_CONNECT, "The operation did not complete (connect)", 0, line,
                  self);
        break;
    case SSL_ERROR_SYSCALL:
        if (e == 0)
            raise_ssl(SSLEOFError, PY_SSL_ERROR_EOF, "EOF occurred in violation of protocol", 0, line, self);
        else
            raise_ssl(SSLSyscallError, PY_SSL_ERROR_SYSCALL, NULL, e, line, self);
        break;
    case SSL_ERROR_SSL:
        if (e == 0)
            raise_ssl(SSLError, PY_SSL_ERROR_SSL, "A failure in the SSL library occurred", 0, line, self);
        else if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
            raise_ssl(SSLCertVerificationError, PY_SSL_ERROR_SSL, NULL, e, line, self);
        else
            raise_ssl(SSLError, PY_SSL_ERROR_SSL, NULL, e, line, self);
        break;
    default:
        raise_ssl(SSLError, PY_SSL_ERROR_INVALID_ERROR_CODE, "Invalid error code", 0, line, self);
    }
    return NULL;
}

/* Move the exception being raised into self->error_pending (without its traceback). */
static void
stash_error(Engine *self)
{
    PyObject *exc;
#if PY_VERSION_HEX >= 0x030C0000
    exc = PyErr_GetRaisedException();
#else
    PyObject *type, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
#endif
    if (exc != NULL)
        PyException_SetTraceback(exc, Py_None);
    Py_XSETREF(self->error_pending, exc);
}

/* The exception being raised, taken (with its traceback), or NULL; and back. PyErr_GetRaisedException is 3.12+. */
static PyObject *
fetch_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(value, tb);
        Py_DECREF(tb);
    }
    Py_DECREF(type);
    return value;
#endif
}

static void
restore_exc(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* Raise the stashed error, if any: returns -1 then (and the engine no longer holds it), else 0. */
static int
raise_pending(Engine *self)
{
    PyObject *exc = self->error_pending;
    if (exc == NULL)
        return 0;
    self->error_pending = NULL;
    self->more = 0;
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
#endif
    return -1;
}

/* -- Engine -------------------------------------------------------------------------------------------------- */

static SSL_CTX *
context_ctx(PyObject *context)
{
    if (!PyObject_TypeCheck(context, SSLContextType)) {
        PyErr_Format(PyExc_TypeError, "context must be an ssl.SSLContext, not %.100s", Py_TYPE(context)->tp_name);
        return NULL;
    }
    SSL_CTX *ctx = ((CtxHead *)context)->ctx;
    if (ctx == NULL) {
        PyErr_SetString(PyExc_ValueError, "this ssl.SSLContext has no SSL_CTX");
        return NULL;
    }
    return ctx;
}

static PyObject *
Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"context", "server_side", "record_keys", "own_writes", "free_ssl", NULL};
    PyObject *context;
    int server_side, record_keys = 0, own_writes = 1, free_ssl = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Op|$ppp:Engine", kwlist, &context, &server_side, &record_keys,
                                     &own_writes, &free_ssl))
        return NULL;
    SSL_CTX *ctx = context_ctx(context);
    if (ctx == NULL)
        return NULL;
    Engine *self = (Engine *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->context = Py_NewRef(context);
    self->server_side = server_side;
    self->own_allowed = (char)own_writes;
    self->free_ssl = (char)free_ssl;
    self->ssl = SSL_new(ctx);
    if (self->ssl == NULL) {
        Py_DECREF(self);
        raise_ssl(SSLError, PY_SSL_ERROR_SSL, "SSL_new failed", ERR_peek_last_error(), __LINE__, NULL);
        return NULL;
    }
    /* One BIO both ways (reads take from in_buf/lent, writes append to out): a second one would cost every
     * connection another BIO and its lock, about 200 bytes kept for its lifetime. SSL_set_bio takes the
     * extra reference itself when rbio == wbio, and SSL_free drops both. */
    BIO *bio = BIO_new(engine_bio_method);
    if (bio == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    BIO_set_data(bio, self);
    SSL_set_bio(self->ssl, bio, bio);
    if (record_keys && tls13_keylog_install(ctx) == 0 && (self->secrets = PyMem_Calloc(1, sizeof(Tls13Secrets))) == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    /* As CPython's newPySSLSocket: writes may be retried from another buffer (our backlog joins parts). */
    SSL_set_mode(self->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    self->can_keep = (SSL_get_mode(self->ssl) & SSL_MODE_RELEASE_BUFFERS) != 0;
    if (server_side)
        SSL_set_accept_state(self->ssl);
    else
        SSL_set_connect_state(self->ssl);
    return (PyObject *)self;
}

static void
Engine_dealloc(Engine *self)
{
    if (self->kept) {
        keep_unlink(self);
        keep_count--;
    }
    if (self->ssl != NULL)
        SSL_free(self->ssl);  /* frees the BIO */
    if (self->secrets != NULL) {
        OPENSSL_cleanse(self->secrets, sizeof *self->secrets);
        PyMem_Free(self->secrets);
    }
    tls13_dir_free(self->rec_read);
    tls13_dir_free(self->rec_write);
    tls13_dir_free(self->shadow_w);
    tls13_dir_free(self->shadow_r);
    free(self->feed);
    free(self->held);
    if (self->gone != NULL) {
        X509_free(self->gone->peer);
        if (self->gone->session != NULL && !(self->gone->shutdown & SSL_SENT_SHUTDOWN)) {
            /* As SSL_free: a cached session whose connection was not shut down is not resumed. */
            SSL_CTX *ctx = self->context != NULL ? ((CtxHead *)self->context)->ctx : NULL;
            if (ctx != NULL)
                SSL_CTX_remove_session(ctx, self->gone->session);
        }
        SSL_SESSION_free(self->gone->session);
        PyMem_Free(self->gone);
    }
    if (self->lending)
        PyBuffer_Release(&self->lent);
    free(self->in_buf);
    Py_XDECREF(self->out);
    Py_XDECREF(self->error_pending);
    Py_XDECREF(self->context);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Tls13Dir *engine_rec(Engine *self, int write);
static void gone_start(Engine *self);

/* A TLS 1.3 server's handshake just completed in a call that wrote out[from:]: those records are its session
 * tickets, the only records OpenSSL protects with the application traffic secret before we take over, so their
 * count is its write sequence number. Own writes start there unless something we do not do was negotiated. */
static void
own_records_start(Engine *self, Py_ssize_t from)
{
    if (self->own_w || !self->own_allowed || !self->server_side || self->secrets == NULL || self->secrets->have != 3
        || SSL_version(self->ssl) != TLS1_3_VERSION
        || SSL_SESSION_get_max_fragment_length(SSL_get_session(self->ssl)) != TLSEXT_max_fragment_length_DISABLED)
        return;
    uint64_t records = 0;
    const unsigned char *p = (const unsigned char *)(self->out != NULL ? PyBytes_AS_STRING(self->out) : "");
    Py_ssize_t i = from;
    while (i + 5 <= self->out_len) {
        if (p[i] != 23)
            return;  /* not a protected record: not what we know this call to write */
        i += 5 + ((Py_ssize_t)p[i + 3] << 8 | p[i + 4]);
        records++;
    }
    if (i != self->out_len)
        return;
    Tls13Dir *w = engine_rec(self, 1), *r = w == NULL ? NULL : engine_rec(self, 0);
    if (r == NULL) {
        PyErr_Clear();  /* a suite we do not protect: OpenSSL writes, as without record_keys */
        return;
    }
    w->seq = self->shadow_seq = records;
    self->own_w = 1;
    /* OpenSSL reads record by record (no read-ahead): it has read nothing under the client's application key. */
    r->seq = self->shadow_r_seq = 0;
    self->own_r = 1;
    OPENSSL_cleanse(self->secrets, sizeof *self->secrets);  /* rec_write has the one we use */
    PyMem_Free(self->secrets);
    self->secrets = NULL;
    gone_start(self);
}

/* -- The SSL freed ------------------------------------------------------------------------------------------
 *
 * Once own records run both ways, OpenSSL's SSL only still does the rare things: alerts, close_notify and
 * KeyUpdate, and the queries. It is the largest part of an idle connection's memory (its struct alone is 7.6 KB;
 * with the cipher contexts, session, key shares, transcript hashes and lists it keeps, about 14 KiB), so it is
 * freed as soon as the handshake is done, when OpenSSL holds nothing of the connection's (no input, no pending
 * KeyUpdate, no shutdown), and the engine does the rest itself (RFC 8446 §4.6.3, §6): it seals close_notify,
 * KeyUpdate and fatal alerts with its write protection, and opens the peer's, raising the errors OpenSSL raises
 * for them (same library, reason and alert). What the queries answer is kept in a Gone, about 100-300 bytes. */

/* Seal one record of ours of content type `type`: 0, or -1 with a Python exception. */
static int
gone_send(Engine *self, int type, const unsigned char *data, size_t n)
{
    if (out_reserve(self, (Py_ssize_t)n + 5 + 1 + TLS13_TAG) < 0)
        return -1;
    if (tls13_seal(self->rec_write, type, data, n, (unsigned char *)PyBytes_AS_STRING(self->out) + self->out_len) < 0) {
        raise_ssl(SSLError, PY_SSL_ERROR_SSL, "sealing a record failed", 0, __LINE__, NULL);
        return -1;
    }
    self->out_len += (Py_ssize_t)n + 5 + 1 + TLS13_TAG;
    return 0;
}

/* Raise OpenSSL's error `reason` (ERR_LIB_SSL), as ssl_error() would have for SSL_ERROR_SSL. */
static void
gone_raise(Engine *self, int reason, int line)
{
    raise_ssl(SSLError, PY_SSL_ERROR_SSL, NULL, ERR_PACK(ERR_LIB_SSL, 0, reason), line, self);
}

/* What OpenSSL answers any read or write with once the connection is over (a fatal error either way, or the
 * peer's close_notify): SSL_ERROR_ZERO_RETURN if the peer closed with no warning alert, else SSL_ERROR_SYSCALL
 * with nothing in the error queue, which is SSLEOFError. */
static void
gone_after(Engine *self, int line)
{
    Gone *g = self->gone;
    if ((g->shutdown & SSL_RECEIVED_SHUTDOWN) && g->warn_alert == SSL_AD_CLOSE_NOTIFY)
        raise_ssl(SSLZeroReturnError, PY_SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed (EOF)", 0, line,
                  self);
    else
        raise_ssl(SSLEOFError, PY_SSL_ERROR_EOF, "EOF occurred in violation of protocol", 0, line, self);
}

/* A fatal error: send `alert` (none if negative, as for one received), end the connection, raise `reason`. -1. */
static int
gone_fatal(Engine *self, int alert, int reason, int line)
{
    Gone *g = self->gone;
    if (alert >= 0 && !g->dead) {
        const unsigned char a[2] = {2, (unsigned char)alert};  /* fatal */
        if (gone_send(self, 21, a, 2) < 0)
            return -1;
    }
    g->dead = 1;
    if (g->session != NULL) {  /* as OpenSSL: a session that ended in a fatal error is not resumed */
        SSL_CTX *ctx = context_ctx(self->context);
        if (ctx != NULL)
            SSL_CTX_remove_session(ctx, g->session);
        PyErr_Clear();
    }
    gone_raise(self, reason, line);
    return -1;
}

/* A record of the peer's other than application data (its content: p, m bytes). 0: read on; 1: close_notify;
 * -1: an error (raised; a fatal alert queued for the peer where OpenSSL sends one). Each check and its alert is
 * OpenSSL 3.0's for the same record (tests/tls/test_ssl_freed.py holds them to it). */
static int
gone_control(Engine *self, int type, const unsigned char *p, size_t m)
{
    Gone *g = self->gone;
    if ((type == 21 || type == 22) && m == 0)
        return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_BAD_LENGTH, __LINE__);
    if (type == 21) {
        if (self->hs_len)
            return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA, __LINE__);
        if (m != 2)
            return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_INVALID_ALERT, __LINE__);
        if (p[0] == SSL3_AL_WARNING || p[1] == SSL_AD_USER_CANCELLED) {
            g->warn_alert = p[1];
            if (++g->alerts == 5)
                return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_TOO_MANY_WARN_ALERTS, __LINE__);
        }
        if (p[1] == SSL_AD_USER_CANCELLED)
            return 0;  /* ignored in TLS 1.3, as OpenSSL does */
        g->shutdown |= SSL_RECEIVED_SHUTDOWN;
        if (p[1] == SSL_AD_CLOSE_NOTIFY)
            return 1;
        return gone_fatal(self, -1, SSL_AD_REASON_OFFSET + p[1], __LINE__);  /* any other alert is fatal */
    }
    if (type != 22)
        return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_BAD_RECORD_TYPE, __LINE__);
    /* Handshake messages: after the handshake a client may only send KeyUpdate (no post-handshake authentication
     * was asked for), which ends its record (RFC 8446 §5.1); one may come in pieces over several records. */
    size_t j = 0;
    while (j < m) {
        while (self->hs_len < 4 && j < m)
            self->hs[self->hs_len++] = p[j++];
        if (self->hs_len < 4)
            break;
        if (self->hs_len == 4) {  /* the header is complete */
            if (self->hs[0] != SSL3_MT_KEY_UPDATE)
                return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_UNEXPECTED_MESSAGE, __LINE__);
            size_t len = (size_t)self->hs[1] << 16 | (size_t)self->hs[2] << 8 | self->hs[3];
            if (len > 1)
                return gone_fatal(self, SSL_AD_ILLEGAL_PARAMETER, SSL_R_EXCESSIVE_MESSAGE_SIZE, __LINE__);
            if (len == 0)
                return gone_fatal(self, SSL_AD_DECODE_ERROR, SSL_R_BAD_KEY_UPDATE, __LINE__);
            self->hs_len = 5;
            if (j == m)
                break;
        }
        int requested = p[j++];
        self->hs_len = 0;
        if (requested > 1)
            return gone_fatal(self, SSL_AD_ILLEGAL_PARAMETER, SSL_R_BAD_KEY_UPDATE, __LINE__);
        if (j != m)
            return gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_NOT_ON_RECORD_BOUNDARY, __LINE__);
        if (tls13_dir_update(self->rec_read) < 0)
            return gone_fatal(self, SSL_AD_INTERNAL_ERROR, ERR_R_INTERNAL_ERROR, __LINE__);
        if (requested && !(g->shutdown & SSL_SENT_SHUTDOWN)) {
            /* Answered at once, under the old key, before anything else we write (RFC 8446 §4.6.3). */
            static const unsigned char answer[5] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0};
            if (gone_send(self, 22, answer, 5) < 0)
                return -1;
            if (tls13_dir_update(self->rec_write) < 0)
                return gone_fatal(self, SSL_AD_INTERNAL_ERROR, ERR_R_INTERNAL_ERROR, __LINE__);
        }
    }
    g->alerts = 0;
    return 0;
}

/* After the handshake, if OpenSSL holds nothing: keep what the queries answer, free the SSL. */
static void
gone_start(Engine *self)
{
    SSL *ssl = self->ssl;
    if (!self->free_ssl || !self->own_w || !self->own_r || self->failed || self->feed != NULL
        || SSL_get_shutdown(ssl) != 0 || SSL_has_pending(ssl) || SSL_pending(ssl) != 0
        || SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE || (SSL_get_verify_mode(ssl) & SSL_VERIFY_POST_HANDSHAKE)
        || SSL_get_max_early_data(ssl) != 0)
        return;
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    STACK_OF(SSL_CIPHER) *server = SSL_get_ciphers(ssl), *client = SSL_get_client_ciphers(ssl);
    int n_shared = 0;
    if (server != NULL && client != NULL)
        for (int i = 0; i < sk_SSL_CIPHER_num(server); i++)
            n_shared += sk_SSL_CIPHER_find(client, sk_SSL_CIPHER_value(server, i)) >= 0;
    const unsigned char *alpn = NULL;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    unsigned char fin[EVP_MAX_MD_SIZE];
    size_t fin_len = (SSL_session_reused(ssl) ^ !self->server_side) ? SSL_get_finished(ssl, fin, sizeof fin)
                                                                     : SSL_get_peer_finished(ssl, fin, sizeof fin);
    if (fin_len > sizeof fin || alpn_len > 255)
        return;
    Gone *g = PyMem_Calloc(1, sizeof *g + (size_t)n_shared * sizeof(SSL_CIPHER *) + alpn_len + fin_len);
    if (g == NULL)
        return;  /* (not freeing it is always right) */
    g->shared = (const SSL_CIPHER **)g->bytes;
    g->alpn = g->bytes + (size_t)n_shared * sizeof(SSL_CIPHER *);
    g->fin = g->alpn + alpn_len;
    if (server != NULL && client != NULL) {
        for (int i = 0; i < sk_SSL_CIPHER_num(server); i++)
            if (sk_SSL_CIPHER_find(client, sk_SSL_CIPHER_value(server, i)) >= 0)
                g->shared[g->n_shared++] = sk_SSL_CIPHER_value(server, i);
    }
    else
        g->n_shared = 0xffff;  /* None, as OpenSSL answered */
    if (alpn_len)
        memcpy(g->alpn, alpn, alpn_len);
    g->alpn_len = (unsigned char)alpn_len;
    memcpy(g->fin, fin, fin_len);
    g->fin_len = (unsigned char)fin_len;
    g->cipher = SSL_get_current_cipher(ssl);
    g->peer = SSL_get1_peer_certificate(ssl);
    g->verify_mode = SSL_get_verify_mode(ssl);
    g->reused = (char)SSL_session_reused(ssl);
    if ((SSL_CTX_get_session_cache_mode(ctx) & SSL_SESS_CACHE_SERVER) && (SSL_get_options(ssl) & SSL_OP_NO_TICKET))
        g->session = SSL_get1_session(ssl);  /* cached: kept so that a fatal error can still remove it */
    if (self->kept) {
        keep_unlink(self);
        keep_count--;
        self->kept = 0;
    }
    /* A completed handshake: freeing it must not drop its session from the cache (OpenSSL drops the sessions of
     * connections freed without a shutdown). */
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl);  /* and the BIO */
    self->ssl = NULL;
    self->gone = g;
    ERR_clear_error();
}

static PyObject *
Engine_do_handshake(Engine *self, PyObject *Py_UNUSED(ignored))
{
    if (self->gone != NULL)
        Py_RETURN_NONE;
    Py_ssize_t before = self->out != NULL ? self->out_len : 0;
    int ret = SSL_do_handshake(self->ssl);
    if (ret == 1 && self->secrets != NULL && !self->own_w)
        own_records_start(self, before);
    if (ret == 1)
        Py_RETURN_NONE;
    return ssl_error(self, ret, __LINE__);
}

/* read(len, buffer=None): decrypted bytes into buffer (returns the count) or as bytes; 0 / b"" at close_notify
 * (SSLZeroReturnError once our own close_notify went too), like SSLObject.read. */
static Py_ssize_t read_into(Engine *self, char *buf, size_t cap, Py_ssize_t partial);

/* read(len, buffer) on an engine with own reads: read_all's loop, with read()'s answers (SSLWantReadError when
 * nothing is there, 0 or b"" at the peer's close_notify). */
static PyObject *
own_read_call(Engine *self, Py_ssize_t len, PyObject *buffer)
{
    Py_buffer view;
    PyObject *bytes = NULL;
    char *dst;
    if (buffer != Py_None) {
        if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0)
            return NULL;
        if (len <= 0 || len > view.len)
            len = view.len;
        dst = view.buf;
    }
    else {
        if (len < 0) {
            PyErr_SetString(PyExc_ValueError, "size should not be negative");
            return NULL;
        }
        if ((bytes = PyBytes_FromStringAndSize(NULL, len)) == NULL)
            return NULL;
        dst = PyBytes_AS_STRING(bytes);
    }
    Py_ssize_t got = len == 0 ? 0 : read_into(self, dst, (size_t)len, -1);
    if (buffer != Py_None)
        PyBuffer_Release(&view);
    if (got == 0 && len > 0)
        raise_ssl(SSLWantReadError, PY_SSL_ERROR_WANT_READ, "The operation did not complete (read)", 0, __LINE__,
                  self), got = -1;
    if (got < 0) {
        Py_XDECREF(bytes);
        if (!PyErr_ExceptionMatches(SSLZeroReturnError) || eng_shutdown(self) != SSL_RECEIVED_SHUTDOWN)
            return NULL;
        PyErr_Clear();
        return buffer != Py_None ? PyLong_FromLong(0) : PyBytes_FromStringAndSize(NULL, 0);
    }
    if (buffer != Py_None)
        return PyLong_FromSsize_t(got);
    if (got != len && _PyBytes_Resize(&bytes, got) < 0)
        return NULL;
    return bytes;
}

static PyObject *
Engine_read(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "read(len, buffer=None)");
        return NULL;
    }
    if (raise_pending(self) < 0)
        return NULL;
    Py_ssize_t len = PyLong_AsSsize_t(args[0]);
    if (len == -1 && PyErr_Occurred())
        return NULL;
    if (self->own_r)
        return own_read_call(self, len, nargs == 2 ? args[1] : Py_None);
    size_t n = 0;
    int ret;
    if (nargs == 2 && args[1] != Py_None) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0)
            return NULL;
        if (len <= 0 || len > view.len)
            len = view.len;
        ret = SSL_read_ex(self->ssl, view.buf, (size_t)len, &n);
        PyBuffer_Release(&view);
        if (ret > 0)
            return PyLong_FromSize_t(n);
    }
    else {
        if (len < 0) {
            PyErr_SetString(PyExc_ValueError, "size should not be negative");
            return NULL;
        }
        PyObject *bytes = PyBytes_FromStringAndSize(NULL, len);
        if (bytes == NULL)
            return NULL;
        ret = SSL_read_ex(self->ssl, PyBytes_AS_STRING(bytes), (size_t)len, &n);
        if (ret > 0) {
            if ((Py_ssize_t)n != len && _PyBytes_Resize(&bytes, (Py_ssize_t)n) < 0)
                return NULL;
            return bytes;
        }
        Py_DECREF(bytes);
        if (SSL_get_error(self->ssl, ret) == SSL_ERROR_ZERO_RETURN
            && SSL_get_shutdown(self->ssl) == SSL_RECEIVED_SHUTDOWN) {
            ERR_clear_error();
            return PyBytes_FromStringAndSize(NULL, 0);
        }
        return ssl_error(self, ret, __LINE__);
    }
    if (SSL_get_error(self->ssl, ret) == SSL_ERROR_ZERO_RETURN
        && SSL_get_shutdown(self->ssl) == SSL_RECEIVED_SHUTDOWN) {
        ERR_clear_error();
        return PyLong_FromLong(0);
    }
    return ssl_error(self, ret, __LINE__);
}

static int in_append(Engine *e, const char *data, size_t n);

enum { OWN_WANT, OWN_FULL, OWN_SSL };

/* Own reads may go on: OpenSSL holds no decrypted bytes, has no record of ours to read, has seen no close_notify
 * and no fatal error. */
static inline int
own_read_ok(Engine *self)
{
    return self->own_r && self->feed == NULL && !(SSL_get_shutdown(self->ssl) & SSL_RECEIVED_SHUTDOWN)
           && SSL_pending(self->ssl) == 0 && SSL_is_init_finished(self->ssl);
}

/* Hand one record to OpenSSL as self->feed (taking ownership of f, len bytes). */
static void
own_feed_set(Engine *self, unsigned char *f, size_t len)
{
    self->feed = f;
    self->feed_len = len;
    self->feed_pos = 0;
}

/* n bytes of content type `type`, sealed for OpenSSL's read protection. 0, or -1 with a Python exception. */
static int
own_feed_sealed(Engine *self, int type, const unsigned char *plain, size_t n)
{
    if (self->shadow_r == NULL) {
        self->shadow_r = tls13_dir_new(self->ssl, self->rec_read->secret, self->rec_read->slen, 1);
        if (self->shadow_r == NULL)
            return -1;
        self->shadow_r->seq = self->shadow_r_seq;
    }
    unsigned char *f = malloc(5 + n + 1 + TLS13_TAG);
    if (f == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (tls13_seal(self->shadow_r, type, plain, n, f) < 0) {
        free(f);
        PyErr_SetString(SSLError, "sealing a record for OpenSSL failed");
        return -1;
    }
    own_feed_set(self, f, 5 + n + 1 + TLS13_TAG);
    return 0;
}

/* A record that did not open (len >= 22 bytes): OpenSSL gets one of the same length that it must refuse
 * (bad_record_mac) whatever its sequence number: zeros sealed for it, with the tag spoiled. (Spoiling the record
 * as received would not do: a record tampered by that very bit, or replayed at OpenSSL's stale sequence number,
 * would open.) 0, or -1 with a Python exception. */
static int
own_feed_spoiled(Engine *self, size_t len)
{
    static const unsigned char zeros[TLS13_MAX_CIPHERTEXT];
    if (own_feed_sealed(self, 23, zeros, len - 5 - 1 - TLS13_TAG) < 0)
        return -1;
    self->feed[self->feed_len - 1] ^= 1;
    return 0;
}

/* A record of `need` bytes read from in_buf (from_in) or the lent buffer. */
static inline void
own_consume(Engine *self, int from_in, size_t need)
{
    if (from_in) {
        self->in_pos += need;
        if (self->in_pos == self->in_len) {
            free(self->in_buf);
            self->in_buf = NULL;
            self->in_pos = self->in_len = self->in_cap = 0;
        }
    }
    else
        self->lent_pos += need;
}

/* Whether the peer's handshake messages in this record complete a KeyUpdate (they may span records). */
static int
hs_key_update(Engine *self, const unsigned char *p, size_t m)
{
    int done = 0;
    size_t j = 0;
    while (j < m) {
        while (self->hs_len < 4 && j < m)
            self->hs[self->hs_len++] = p[j++];
        if (self->hs_len < 4)
            break;
        if (self->hs_len == 4) {
            self->hs_left = (size_t)self->hs[1] << 16 | (size_t)self->hs[2] << 8 | self->hs[3];
            self->hs_len = 5;
        }
        size_t k = m - j < self->hs_left ? m - j : self->hs_left;
        j += k;
        self->hs_left -= k;
        if (self->hs_left == 0) {
            done |= self->hs[0] == SSL3_MT_KEY_UPDATE;
            self->hs_len = 0;
        }
    }
    return done;
}

/* Open whole application records from the received bytes (in_buf, then the lent buffer) into buf, as many as fit;
 * *n: the bytes delivered. OWN_WANT: no whole record is left; OWN_FULL: the next one must wait for the next call
 * (no room, or it is not ours to open while data is delivered first); OWN_SSL: OpenSSL reads next (a record is in
 * self->feed, or own reads ended at a malformed header, which OpenSSL then refuses); -1: a Python exception. */
static int
own_read(Engine *self, char *buf, size_t cap, size_t *n)
{
    unsigned char plain[TLS13_MAX_CIPHERTEXT];
    size_t got = 0;
    *n = 0;
    for (;;) {
        const unsigned char *p;
        size_t avail;
        int from_in = self->in_len > self->in_pos;
        size_t lent_left = self->lending ? (size_t)self->lent.len - self->lent_pos : 0;
        if (from_in) {
            p = (const unsigned char *)self->in_buf + self->in_pos;
            avail = self->in_len - self->in_pos;
        }
        else if (lent_left > 0) {
            p = (const unsigned char *)self->lent.buf + self->lent_pos;
            avail = lent_left;
        }
        else
            break;
        size_t need = avail < 5 ? 5 : 5 + ((size_t)p[3] << 8 | p[4]);
        if (avail >= 5 && (p[0] != 23 || p[1] != 3 || p[2] != 3 || need - 5 < 1 + TLS13_TAG
                           || need - 5 > TLS13_MAX_CIPHERTEXT)) {
            if (got > 0) {
                *n = got;
                return OWN_FULL;
            }
            if (self->gone != NULL)  /* refused as OpenSSL refuses it (ssl3_get_record) */
                return p[1] != 3 || p[2] != 3 ? gone_fatal(self, SSL_AD_DECODE_ERROR, SSL_R_WRONG_VERSION_NUMBER, __LINE__)
                       : p[0] != 23 ? gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_BAD_RECORD_TYPE, __LINE__)
                       : need - 5 > TLS13_MAX_CIPHERTEXT
                           ? gone_fatal(self, SSL_AD_RECORD_OVERFLOW, SSL_R_ENCRYPTED_LENGTH_TOO_LONG, __LINE__)
                           : gone_fatal(self, SSL_AD_BAD_RECORD_MAC, SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, __LINE__);
            self->own_r = 0;  /* OpenSSL reads it and refuses it (wrong type, version or length) */
            return OWN_SSL;
        }
        if (avail < need) {
            if (!from_in || lent_left == 0)
                break;
            /* The record began in in_buf (kept from an earlier receive) and goes on in the lent buffer. */
            size_t take = need - avail < lent_left ? need - avail : lent_left;
            if (in_append(self, (const char *)self->lent.buf + self->lent_pos, take) < 0)
                goto error;
            self->lent_pos += take;
            continue;
        }
        size_t room = need - 5 - TLS13_TAG;  /* the content, its type and any padding */
        int fits = room <= cap - got;
        if (!fits && got > 0) {
            *n = got;
            return OWN_FULL;
        }
        unsigned char *dst = fits ? (unsigned char *)buf + got : plain;
        int type = 0;
        Py_ssize_t m = tls13_open(self->rec_read, p, need, dst, &type);
        if (m < 0 && got > 0) {
            self->rec_read->seq--;  /* deliver what came before; the next call hands this one to OpenSSL */
            *n = got;
            return OWN_FULL;
        }
        if (self->gone != NULL) {
            own_consume(self, from_in, need);
            if (m < 0) {
                gone_fatal(self, m == -3 ? SSL_AD_UNEXPECTED_MESSAGE : SSL_AD_BAD_RECORD_MAC,
                           m == -3 ? SSL_R_BAD_RECORD_TYPE : SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, __LINE__);
                goto error;
            }
            if (m > RECORD_PLAINTEXT) {
                gone_fatal(self, SSL_AD_RECORD_OVERFLOW, SSL_R_DATA_LENGTH_TOO_LONG, __LINE__);
                goto error;
            }
            if (type != 23) {
                int r = gone_control(self, type, dst, (size_t)m);
                if (r < 0)
                    goto error;
                if (r > 0) {
                    *n = got;
                    return OWN_SSL;  /* close_notify */
                }
                continue;
            }
            if (self->hs_len) {  /* in the middle of a handshake message */
                gone_fatal(self, SSL_AD_UNEXPECTED_MESSAGE, SSL_R_UNEXPECTED_RECORD, __LINE__);
                goto error;
            }
            self->gone->alerts = 0;  /* (application data after our close_notify is still read, as SSL_read does) */
            if (!fits && (size_t)m <= cap - got) {  /* only the padding did not fit */
                memcpy(buf + got, plain, (size_t)m);
                OPENSSL_cleanse(plain, (size_t)m);
            }
            else if (!fits) {  /* (got is 0 here) what does not fit waits in `held` for the next read */
                size_t rest = (size_t)m - (cap - got);
                unsigned char *h = malloc(rest);
                if (h == NULL) {
                    PyErr_NoMemory();
                    goto error;
                }
                memcpy(buf + got, plain, cap - got);
                memcpy(h, plain + (cap - got), rest);
                self->held = h;
                self->held_len = rest;
                self->held_pos = 0;
                OPENSSL_cleanse(plain, (size_t)m);
                *n = cap;
                return OWN_FULL;
            }
            got += (size_t)m;
            if (got == cap) {
                *n = got;
                return OWN_FULL;
            }
            continue;
        }
        int fed = 0;
        if (m < 0)
            fed = own_feed_spoiled(self, need);
        else if (type != 23 || !fits || m > RECORD_PLAINTEXT) {  /* (too long: OpenSSL's record_overflow) */
            if (dst != plain)
                memcpy(plain, dst, (size_t)m);
            fed = own_feed_sealed(self, type, plain, (size_t)m);
        }
        if (fed < 0)
            goto error;
        own_consume(self, from_in, need);
        if (self->feed != NULL) {
            if (m >= 0 && type == 22 && hs_key_update(self, plain, (size_t)m)
                && (tls13_dir_update(self->rec_read) < 0 || tls13_dir_update(self->shadow_r) < 0)) {
                PyErr_SetString(SSLError, "KeyUpdate: the next read key could not be made");
                goto error;
            }
            *n = got;
            return OWN_SSL;
        }
        got += (size_t)m;  /* (after our close_notify too: TLS 1.3 closes each direction alone, SSL_read reads on) */
        if (got == cap) {
            *n = got;
            return OWN_FULL;
        }
    }
    *n = got;
    return OWN_WANT;
error:
    *n = got;
    return -1;
}

/* read_all(buffer, partial=0) -> int: decrypt into buffer as much as there is, by as many SSL_read calls as it
 * takes, and return the count. The Python loop this replaces made one call per TLS record. `partial` is what the
 * caller knows of the trailing incomplete record (bytes of it received): while no more than that is unread,
 * no complete record is waiting and the loop stops without the SSL_read that could only fail, unless more than
 * ABSORB_PARTIAL bytes are unread: that read moves them into OpenSSL's record buffer (negative: unknown, never
 * stop early).
 *
 * Stops when the buffer is full, when OpenSSL needs more ciphertext (the common end: a count, no exception), or
 * at a close_notify or an error. With nothing read, a close_notify raises SSLZeroReturnError and an error
 * raises it. With data read, the data is returned first and `more` is set: the caller delivers it and calls
 * again, which returns the rest, raises SSLZeroReturnError (OpenSSL repeats it) or raises the error kept in
 * error_pending. `more` is also set when the buffer filled up; after a count with `more` clear, OpenSSL has
 * consumed every complete record it was given. */
/* read_all()'s work on a plain buffer: the count, or -1 with an exception set. */
static Py_ssize_t
read_all_into(Engine *self, char *buf, size_t cap, Py_ssize_t partial)
{
    if (raise_pending(self) < 0)
        return -1;
    keep_touch(self);
    return read_into(self, buf, cap, partial);
}

/* own_read() into buf[*total:cap], its answer made read_into's: 1 when OpenSSL (or, the SSL freed, the peer's
 * close_notify) comes next and the caller goes on; else 0 with *ret what read_into returns: the count, `more` set
 * (an error after data is stashed behind it), or -1 with the exception. */
static int
own_read_step(Engine *self, char *buf, size_t cap, size_t *total, Py_ssize_t *ret)
{
    size_t n = 0;
    int r = own_read(self, buf + *total, cap - *total, &n);
    *total += n;
    if (r == OWN_SSL)
        return 1;
    if (r >= 0)
        self->more = r == OWN_FULL;
    else if (*total == 0) {
        self->more = 0;
        *ret = -1;
        return 0;
    }
    else {
        stash_error(self);
        self->more = 1;
    }
    *ret = (Py_ssize_t)*total;
    return 0;
}

/* read_into with the SSL freed: what `held` has, then own reads; a close_notify and errors as OpenSSL's. */
static Py_ssize_t
gone_read_into(Engine *self, char *buf, size_t cap)
{
    Gone *g = self->gone;
    size_t total = 0;
    if (g->dead) {
        self->more = 0;
        gone_after(self, __LINE__);
        return -1;
    }
    if (self->held != NULL) {
        size_t k = self->held_len - self->held_pos;
        if (k > cap)
            k = cap;
        memcpy(buf, self->held + self->held_pos, k);
        self->held_pos += k;
        total = k;
        if (self->held_pos == self->held_len) {
            OPENSSL_cleanse(self->held, self->held_len);
            free(self->held);
            self->held = NULL;
            self->held_len = self->held_pos = 0;
        }
        if (total == cap) {
            self->more = 1;
            return (Py_ssize_t)total;
        }
    }
    Py_ssize_t ret;
    if (!(g->shutdown & SSL_RECEIVED_SHUTDOWN) && !own_read_step(self, buf, cap, &total, &ret))
        return ret;
    if (total > 0) {  /* the close_notify is raised by the next call */
        self->more = 1;
        return (Py_ssize_t)total;
    }
    self->more = 0;
    gone_after(self, __LINE__);
    return -1;
}

/* read_all_into without the kept-buffer bookkeeping (read() does none, as before own reads). */
static Py_ssize_t
read_into(Engine *self, char *buf, size_t cap, Py_ssize_t partial)
{
    if (self->gone != NULL)
        return gone_read_into(self, buf, cap);
    size_t total = 0;
    int ret = 1;
    while (total < cap) {
        size_t n = 0;
        if (own_read_ok(self)) {
            Py_ssize_t done;
            if (!own_read_step(self, buf, cap, &total, &done))
                return done;
            if (total == cap)
                break;
        }
        ret = SSL_read_ex(self->ssl, buf + total, cap - total, &n);
        if (self->feed != NULL && self->feed_pos == self->feed_len) {
            free(self->feed);  /* OpenSSL took the record handed to it */
            self->feed = NULL;
            if (ret <= 0 && SSL_get_error(self->ssl, ret) == SSL_ERROR_WANT_READ && !self->failed) {
                ERR_clear_error();  /* a KeyUpdate, say: our own reads go on */
                continue;
            }
        }
        if (ret <= 0)
            break;
        total += n;
        /* No complete record left and nothing decrypted inside OpenSSL: another SSL_read could only fail with
         * WANT_READ, which costs as much as a small record. Unless more than ABSORB_PARTIAL bytes of the
         * incomplete record are unread: that read takes them into OpenSSL's record buffer now, where
         * incoming.keep() would copy them aside first (and the next read copy them again). */
        size_t unread = in_pending(self);
        if (partial >= 0 && unread <= (size_t)partial && unread <= ABSORB_PARTIAL && SSL_pending(self->ssl) == 0) {
            self->more = 0;
            return (Py_ssize_t)total;
        }
    }
    if (ret > 0) {  /* full (or an empty buffer) */
        self->more = cap > 0;
        return (Py_ssize_t)total;
    }
    int err = SSL_get_error(self->ssl, ret);
    if (err == SSL_ERROR_WANT_READ && !self->failed) {
        ERR_clear_error();
        self->more = 0;
        return (Py_ssize_t)total;
    }
    if (total == 0) {
        self->more = 0;
        ssl_error(self, ret, __LINE__);
        return -1;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();  /* the next call sees the close_notify again */
    }
    else {
        ssl_error(self, ret, __LINE__);
        stash_error(self);
    }
    self->more = 1;
    return (Py_ssize_t)total;
}

static PyObject *
Engine_read_all(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "read_all(buffer, partial=0)");
        return NULL;
    }
    Py_ssize_t partial = 0;  /* negative: nothing known, never stop early */
    if (nargs == 2) {
        partial = PyLong_AsSsize_t(args[1]);
        if (partial == -1 && PyErr_Occurred())
            return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
        return NULL;
    Py_ssize_t total = read_all_into(self, view.buf, (size_t)view.len, partial);
    PyBuffer_Release(&view);
    return total < 0 ? NULL : PyLong_FromSsize_t(total);
}

/* write() on len bytes at buf: 0 with the count written in *n, or -1 with the exception write() raises. */
static int
engine_write_raw(Engine *self, const void *buf, Py_ssize_t len, size_t *n)
{
    *n = 0;
    if (self->gone != NULL && (self->gone->shutdown & SSL_SENT_SHUTDOWN)) {
        gone_raise(self, SSL_R_PROTOCOL_IS_SHUTDOWN, __LINE__);  /* as SSL_write after SSL_shutdown */
        return -1;
    }
    if (self->gone != NULL && self->gone->dead) {
        gone_after(self, __LINE__);
        return -1;
    }
    if (out_reserve(self, len + (len / RECORD_PLAINTEXT + 1) * RECORD_SLACK) < 0)
        return -1;
    keep_touch(self);
    if (len > 0 && (self->gone != NULL || (self->own_w && !self->failed && SSL_get_shutdown(self->ssl) == 0 && SSL_is_init_finished(self->ssl)
        && SSL_get_key_update_type(self->ssl) == SSL_KEY_UPDATE_NONE))) {
        /* Sealed straight into the output, a record per RECORD_PLAINTEXT, as SSL_write would cut them. */
        const unsigned char *b = buf;
        Py_ssize_t off = 0;
        do {
            Py_ssize_t chunk = len - off > RECORD_PLAINTEXT ? RECORD_PLAINTEXT : len - off;
            /* (room reserved above: RECORD_SLACK per record covers the 22 bytes a sealed record adds) */
            if (tls13_seal(self->rec_write, 23, b + off, (size_t)chunk,
                           (unsigned char *)PyBytes_AS_STRING(self->out) + self->out_len) < 0) {
                raise_ssl(SSLError, PY_SSL_ERROR_SSL, "sealing a record failed", 0, __LINE__, NULL);
                return -1;
            }
            self->out_len += chunk + 5 + 1 + TLS13_TAG;
            off += chunk;
        } while (off < len);
        *n = (size_t)len;
        return 0;
    }
    if (self->gone != NULL)
        return 0;  /* nothing to write */
    int ret = SSL_write_ex(self->ssl, buf, (size_t)len, n);
    if (ret > 0)
        return 0;
    PyObject *res = ssl_error(self, ret, __LINE__);
    Py_XDECREF(res);
    return -1;
}

static PyObject *
Engine_write(Engine *self, PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t n;
    int r = engine_write_raw(self, view.buf, view.len, &n);
    PyBuffer_Release(&view);
    return r < 0 ? NULL : PyLong_FromSize_t(n);
}

static PyObject *
Engine_pending(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(eng_pending(self));
}

/* Own reads, our close_notify sent, the peer's not yet seen: read what was received as read() does until the
 * peer's close_notify has been handed to OpenSSL (or, the SSL freed, seen), dropping application data; with the
 * SSL freed, application data is an error, as it is to SSL_shutdown. 0 (nothing to wait for, or it came), or -1
 * with an exception (SSLWantReadError: not yet). */
static int
own_unwrap_wait(Engine *self)
{
    if (!self->own_r || eng_shutdown(self) != SSL_SENT_SHUTDOWN)
        return 0;
    char *scratch = PyMem_Malloc(TLS13_MAX_CIPHERTEXT);
    if (scratch == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t got = read_into(self, scratch, TLS13_MAX_CIPHERTEXT, -1);
    PyMem_Free(scratch);
    if (got > 0 && self->gone != NULL) {
        Py_CLEAR(self->error_pending);
        self->more = 0;
        return gone_fatal(self, -1, SSL_R_APPLICATION_DATA_AFTER_CLOSE_NOTIFY, __LINE__);
    }
    if (got < 0 && !PyErr_ExceptionMatches(SSLZeroReturnError))
        return -1;
    PyErr_Clear();
    if (eng_shutdown(self) & SSL_RECEIVED_SHUTDOWN)
        return 0;
    raise_ssl(SSLWantReadError, PY_SSL_ERROR_WANT_READ, "The operation did not complete (read)", 0, __LINE__, self);
    return -1;
}

/* unwrap(): send close_notify; None once the peer's arrived too, else SSLWantReadError (as SSLObject.unwrap). */
static PyObject *
Engine_unwrap(Engine *self, PyObject *Py_UNUSED(ignored))
{
    /* Own reads: OpenSSL must not read the received bytes itself (its read sequence number is stale), which
     * SSL_shutdown does once our close_notify is out. */
    if (self->gone != NULL) {
        if (self->gone->dead) {
            gone_raise(self, SSL_R_SHUTDOWN_WHILE_IN_INIT, __LINE__);  /* as SSL_shutdown after a fatal error */
            return NULL;
        }
        if (!(self->gone->shutdown & SSL_SENT_SHUTDOWN)) {
            static const unsigned char close_notify[2] = {1, SSL_AD_CLOSE_NOTIFY};  /* warning, as OpenSSL's */
            if (gone_send(self, 21, close_notify, 2) < 0)
                return NULL;
            self->gone->shutdown |= SSL_SENT_SHUTDOWN;
        }
        if (own_unwrap_wait(self) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (own_unwrap_wait(self) < 0)
        return NULL;
    int ret = SSL_shutdown(self->ssl);
    if (ret == 0 && own_unwrap_wait(self) < 0)
        return NULL;
    if (ret == 0)
        ret = SSL_shutdown(self->ssl);  /* CPython tries twice: the second waits for the peer's close_notify */
    if (ret >= 0)
        Py_RETURN_NONE;
    return ssl_error(self, ret, __LINE__);
}

static PyObject *
Engine_peer_certificate(Engine *self, PyObject *Py_UNUSED(ignored))
{
    /* DER of the peer's certificate, or None. */
    X509 *cert = self->gone != NULL ? self->gone->peer : SSL_get1_peer_certificate(self->ssl);
    if (cert != NULL && self->gone != NULL)
        X509_up_ref(cert);
    if (cert == NULL)
        Py_RETURN_NONE;
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    X509_free(cert);
    if (len < 0) {
        raise_ssl(SSLError, PY_SSL_ERROR_SSL, NULL, ERR_peek_last_error(), __LINE__, self);
        return NULL;
    }
    PyObject *res = PyBytes_FromStringAndSize((const char *)der, len);
    OPENSSL_free(der);
    return res;
}

static PyObject *
Engine_handshake_done(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->gone != NULL || SSL_is_init_finished(self->ssl));
}

static PyObject *
Engine_verify_mode(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->gone != NULL ? self->gone->verify_mode : SSL_get_verify_mode(self->ssl));
}

static PyObject *
Engine_cipher(Engine *self, PyObject *Py_UNUSED(ignored))
{
    const SSL_CIPHER *c = self->gone != NULL ? self->gone->cipher : SSL_get_current_cipher(self->ssl);
    if (c == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(ssi)", SSL_CIPHER_get_name(c), SSL_CIPHER_get_version(c), SSL_CIPHER_get_bits(c, NULL));
}

static PyObject *
Engine_version(Engine *self, PyObject *Py_UNUSED(ignored))
{
    if (self->gone != NULL)
        return PyUnicode_FromString("TLSv1.3");
    if (!SSL_is_init_finished(self->ssl))
        Py_RETURN_NONE;
    return PyUnicode_FromString(SSL_get_version(self->ssl));
}

static PyObject *
Engine_selected_alpn_protocol(Engine *self, PyObject *Py_UNUSED(ignored))
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    if (self->gone != NULL) {
        p = self->gone->alpn;
        len = self->gone->alpn_len;
    }
    else
        SSL_get0_alpn_selected(self->ssl, &p, &len);
    if (p == NULL || len == 0)
        Py_RETURN_NONE;
    return PyUnicode_FromStringAndSize((const char *)p, len);
}

static PyObject *
Engine_session_reused(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->gone != NULL ? self->gone->reused : SSL_session_reused(self->ssl));
}

static PyObject *
Engine_shared_ciphers(Engine *self, PyObject *Py_UNUSED(ignored))
{
    /* As CPython 3.11+: the server's ciphers that the client offered too. */
    if (self->gone != NULL) {
        if (self->gone->n_shared == 0xffff)
            Py_RETURN_NONE;
        PyObject *res = PyList_New(self->gone->n_shared);
        for (int i = 0; res != NULL && i < self->gone->n_shared; i++) {
            const SSL_CIPHER *c = self->gone->shared[i];
            PyObject *t = Py_BuildValue("(ssi)", SSL_CIPHER_get_name(c), SSL_CIPHER_get_version(c),
                                        SSL_CIPHER_get_bits(c, NULL));
            if (t == NULL)
                Py_CLEAR(res);
            else
                PyList_SET_ITEM(res, i, t);
        }
        return res;
    }
    STACK_OF(SSL_CIPHER) *server = SSL_get_ciphers(self->ssl);
    STACK_OF(SSL_CIPHER) *client = SSL_get_client_ciphers(self->ssl);
    if (server == NULL || client == NULL)
        Py_RETURN_NONE;
    PyObject *res = PyList_New(0);
    if (res == NULL)
        return NULL;
    for (int i = 0; i < sk_SSL_CIPHER_num(server); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(server, i);
        if (sk_SSL_CIPHER_find(client, c) < 0)
            continue;
        PyObject *t = Py_BuildValue("(ssi)", SSL_CIPHER_get_name(c), SSL_CIPHER_get_version(c),
                                    SSL_CIPHER_get_bits(c, NULL));
        if (t == NULL || PyList_Append(res, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(t);
    }
    return res;
}

static PyObject *
Engine_tls_unique(Engine *self, PyObject *Py_UNUSED(ignored))
{
    char buf[EVP_MAX_MD_SIZE];
    size_t len;
    /* As CPython: the first Finished message of the handshake (RFC 5929). */
    if (self->gone != NULL) {
        if (self->gone->fin_len == 0)
            Py_RETURN_NONE;
        return PyBytes_FromStringAndSize((const char *)self->gone->fin, self->gone->fin_len);
    }
    if (SSL_session_reused(self->ssl) ^ !self->server_side)
        len = SSL_get_finished(self->ssl, buf, sizeof buf);
    else
        len = SSL_get_peer_finished(self->ssl, buf, sizeof buf);
    if (len == 0)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
}

/* The record protection of one direction (write: our own side's secret, read: the peer's), made on first use. */
static Tls13Dir *
engine_rec(Engine *self, int write)
{
    Tls13Dir **slot = write ? &self->rec_write : &self->rec_read;
    if (*slot != NULL)
        return *slot;
    int which = write == self->server_side;  /* 1: the server's secret */
    if (self->secrets == NULL || !(self->secrets->have & (1 << which))) {
        PyErr_SetString(PyExc_ValueError, "no traffic secrets captured (record_keys=False, or not TLS 1.3, or the "
                                          "SSL_CTX has another key log callback)");
        return NULL;
    }
    *slot = tls13_dir_new(self->ssl, self->secrets->secret[which], self->secrets->len[which], write);
    return *slot;
}

/* Records OpenSSL wrote after own writes began: open each with its write protection (shadow_w) and seal it again
 * with ours, in order. A KeyUpdate among them moves both to the next secret after its record, as OpenSSL moves
 * its own. 0, or -1 (not whole records, or a record that does not open: the connection cannot go on). */
static int
translate_records(Engine *self, const unsigned char *data, size_t n)
{
    unsigned char plain[TLS13_MAX_CIPHERTEXT];
    size_t i = 0;
    while (i < n) {
        if (n - i < 5)
            return -1;
        size_t rlen = 5 + ((size_t)data[i + 3] << 8 | data[i + 4]);
        if (n - i < rlen)
            return -1;
        if (data[i] != 23) {  /* not protected: as it is */
            if (out_reserve(self, (Py_ssize_t)rlen) < 0)
                return -1;
            memcpy(PyBytes_AS_STRING(self->out) + self->out_len, data + i, rlen);
            self->out_len += (Py_ssize_t)rlen;
            i += rlen;
            continue;
        }
        if (self->shadow_w == NULL) {
            self->shadow_w = tls13_dir_new(self->ssl, self->rec_write->secret, self->rec_write->slen, 0);
            if (self->shadow_w == NULL)
                return -1;
            self->shadow_w->seq = self->shadow_seq;
        }
        int type = 0;
        Py_ssize_t m = tls13_open(self->shadow_w, data + i, rlen, plain, &type);
        if (m < 0 || m > RECORD_PLAINTEXT || out_reserve(self, m + 5 + 1 + TLS13_TAG) < 0
            || tls13_seal(self->rec_write, type, plain, (size_t)m,
                          (unsigned char *)PyBytes_AS_STRING(self->out) + self->out_len) < 0)
            return -1;
        self->out_len += m + 5 + 1 + TLS13_TAG;
        i += rlen;
        if (type == 22 && tls13_has_key_update(plain, (size_t)m)
            && (tls13_dir_update(self->rec_write) < 0 || tls13_dir_update(self->shadow_w) < 0))
            return -1;
    }
    OPENSSL_cleanse(plain, sizeof plain);
    return 0;
}

/* _key_update(requested): SSL_key_update; the KeyUpdate goes out with the next write (or do_handshake). */
static PyObject *
Engine_key_update(Engine *self, PyObject *arg)
{
    int requested = PyObject_IsTrue(arg);
    if (requested < 0)
        return NULL;
    if (self->gone != NULL) {  /* sent at once, under the old key; what we write next uses the new one */
        if (self->gone->dead || (self->gone->shutdown & SSL_SENT_SHUTDOWN)) {
            gone_raise(self, SSL_R_PROTOCOL_IS_SHUTDOWN, __LINE__);
            return NULL;
        }
        const unsigned char msg[5] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, (unsigned char)requested};
        if (gone_send(self, 22, msg, 5) < 0)
            return NULL;
        if (tls13_dir_update(self->rec_write) < 0) {
            gone_fatal(self, SSL_AD_INTERNAL_ERROR, ERR_R_INTERNAL_ERROR, __LINE__);
            return NULL;
        }
        Py_RETURN_NONE;
    }
    if (SSL_key_update(self->ssl, requested ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
        return ssl_error(self, 0, __LINE__);
    Py_RETURN_NONE;
}

static PyObject *
Engine_own_writes(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->own_w);
}

static PyObject *
Engine_ssl_freed(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->gone != NULL);
}

static PyObject *
Engine_own_reads(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->own_r);
}

static PyObject *
Engine_record_keys(Engine *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->own_w || (self->secrets != NULL && self->secrets->have == 3));
}

static PyObject *
Engine_seal(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    int type;
    if (nargs != 2 || (type = PyLong_AsLong(args[0]), PyErr_Occurred()) || type < 20 || type > 255) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_seal(type, data): a content type (20-255) and bytes");
        return NULL;
    }
    Tls13Dir *d = engine_rec(self, 1);
    if (d == NULL || PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    if (data.len > RECORD_PLAINTEXT)
        PyErr_SetString(PyExc_ValueError, "more than a record's 16384 bytes");
    else if ((out = PyBytes_FromStringAndSize(NULL, 5 + data.len + 1 + TLS13_TAG)) != NULL
             && tls13_seal(d, type, data.buf, (size_t)data.len, (unsigned char *)PyBytes_AS_STRING(out)) < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, "sealing failed");
    }
    PyBuffer_Release(&data);
    return out;
}

static PyObject *
Engine_open(Engine *self, PyObject *arg)
{
    Py_buffer rec;
    Tls13Dir *d = engine_rec(self, 0);
    if (d == NULL || PyObject_GetBuffer(arg, &rec, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, rec.len > 5 + TLS13_TAG ? rec.len - 5 - TLS13_TAG : 0), *res = NULL;
    int type = 0;
    if (out != NULL) {
        Py_ssize_t n = tls13_open(d, rec.buf, (size_t)rec.len, (unsigned char *)PyBytes_AS_STRING(out), &type);
        if (n < 0)
            PyErr_SetString(SSLError, n == -1 ? "not a TLS 1.3 protected record" : n == -2 ? "bad record mac"
                                                                                        : "no content type");
        else if (_PyBytes_Resize(&out, n) == 0)
            res = Py_BuildValue("iO", type, out);
    }
    Py_XDECREF(out);
    PyBuffer_Release(&rec);
    return res;
}

static PyMethodDef Engine_methods[] = {
    {"do_handshake", (PyCFunction)Engine_do_handshake, METH_NOARGS, "SSL_do_handshake, as SSLObject's."},
    {"_key_update", (PyCFunction)Engine_key_update, METH_O,
     "_key_update(requested): send a KeyUpdate with the next write (SSL_key_update; TLS 1.3)."},
    {"_ssl_freed", (PyCFunction)Engine_ssl_freed, METH_NOARGS,
     "Whether the SSL was freed after the handshake (own records both ways; see free_ssl)."},
    {"_own_reads", (PyCFunction)Engine_own_reads, METH_NOARGS,
     "Whether whole application records are opened by the engine itself (until a malformed header)."},
    {"_own_writes", (PyCFunction)Engine_own_writes, METH_NOARGS,
     "Whether application data is sealed by the engine itself (a TLS 1.3 server with record_keys=True)."},
    {"read", (PyCFunction)(void (*)(void))Engine_read, METH_FASTCALL, "read(len, buffer=None), as SSLObject's."},
    {"read_all", (PyCFunction)(void (*)(void))Engine_read_all, METH_FASTCALL,
     "read_all(buffer, partial=0) -> int: decrypt all that is available into buffer; see `more`."},
    {"write", (PyCFunction)Engine_write, METH_O, "write(data) -> count, as SSLObject's."},
    {"pending", (PyCFunction)Engine_pending, METH_NOARGS, "Decrypted bytes buffered inside OpenSSL."},
    {"unwrap", (PyCFunction)Engine_unwrap, METH_NOARGS, "Send close_notify, as SSLObject.unwrap."},
    {"peer_certificate", (PyCFunction)Engine_peer_certificate, METH_NOARGS, "The peer's certificate (DER) or None."},
    {"handshake_done", (PyCFunction)Engine_handshake_done, METH_NOARGS, "Whether the handshake completed."},
    {"verify_mode", (PyCFunction)Engine_verify_mode, METH_NOARGS, "SSL_get_verify_mode."},
    {"cipher", (PyCFunction)Engine_cipher, METH_NOARGS, "(name, protocol, secret bits) or None."},
    {"version", (PyCFunction)Engine_version, METH_NOARGS, "Protocol version once the handshake is done."},
    {"selected_alpn_protocol", (PyCFunction)Engine_selected_alpn_protocol, METH_NOARGS, "ALPN result or None."},
    {"session_reused", (PyCFunction)Engine_session_reused, METH_NOARGS, "Whether a session was resumed."},
    {"shared_ciphers", (PyCFunction)Engine_shared_ciphers, METH_NOARGS, "Ciphers both sides offer."},
    {"tls_unique", (PyCFunction)Engine_tls_unique, METH_NOARGS, "tls-unique channel binding or None."},
    {"_record_keys", (PyCFunction)Engine_record_keys, METH_NOARGS,
     "Whether both TLS 1.3 application traffic secrets were captured (record_keys=True; own writes began)."},
    {"_seal", (PyCFunction)(void (*)(void))Engine_seal, METH_FASTCALL,
     "_seal(type, data) -> the next TLS 1.3 record we would send, protected with our own record layer."},
    {"_open", (PyCFunction)Engine_open, METH_O,
     "_open(record) -> (content type, plaintext): the peer's next TLS 1.3 record, opened with our own record layer."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Engine_get_incoming(Engine *self, void *Py_UNUSED(closure))
{
    EngineBIO *b = PyObject_New(EngineBIO, &IncomingType);
    if (b != NULL)
        b->engine = (Engine *)Py_NewRef(self);
    return (PyObject *)b;
}

static PyObject *
Engine_get_outgoing(Engine *self, void *Py_UNUSED(closure))
{
    EngineBIO *b = PyObject_New(EngineBIO, &OutgoingType);
    if (b != NULL)
        b->engine = (Engine *)Py_NewRef(self);
    return (PyObject *)b;
}

static PyGetSetDef Engine_getset[] = {
    {"incoming", (getter)Engine_get_incoming, NULL, "A new view of the receive side (write, pending).", NULL},
    {"outgoing", (getter)Engine_get_outgoing, NULL, "A new view of the send side (read, pending).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Engine_members[] = {
    {"server_side", T_INT, offsetof(Engine, server_side), READONLY, "True on the server side."},
    {"context", T_OBJECT, offsetof(Engine, context), READONLY, "The ssl.SSLContext."},
    {"buffers_kept", T_BOOL, offsetof(Engine, kept), READONLY,
     "Whether this busy connection keeps OpenSSL's record buffers between records (see the module's notes)."},
    {"more", T_BOOL, offsetof(Engine, more), READONLY,
     "After read_all(): call it again before waiting for input (buffer full, close_notify or error next)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.tls._engine.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(context, server_side, *, record_keys=False, own_writes=True): one TLS connection over OpenSSL "
              "with uringws's own BIOs. record_keys: capture the TLS 1.3 traffic secrets; own_writes (with them, "
              "on a server): seal application data here once the handshake is done.",
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
    .tp_members = Engine_members,
    .tp_new = Engine_new,
};

/* -- the two BIO views --------------------------------------------------------------------------------------- */

static void
EngineBIO_dealloc(EngineBIO *self)
{
    Py_DECREF(self->engine);
    PyObject_Free(self);
}

static int
in_append(Engine *e, const char *data, size_t n)
{
    if (n == 0)
        return 0;
    if (e->in_pos > 0 && e->in_len + n > e->in_cap) {
        memmove(e->in_buf, e->in_buf + e->in_pos, e->in_len - e->in_pos);
        e->in_len -= e->in_pos;
        e->in_pos = 0;
    }
    if (e->in_len + n > e->in_cap) {
        size_t cap = e->in_cap * 2;
        if (cap < e->in_len + n)
            cap = e->in_len + n;
        char *buf = realloc(e->in_buf, cap);
        if (buf == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        e->in_buf = buf;
        e->in_cap = cap;
    }
    memcpy(e->in_buf + e->in_len, data, n);
    e->in_len += n;
    return 0;
}

/* Copy the unread rest of a lent buffer into in_buf and release it. */
static int
in_keep(Engine *e)
{
    if (!e->lending)
        return 0;
    int ret = in_append(e, (const char *)e->lent.buf + e->lent_pos, (size_t)e->lent.len - e->lent_pos);
    e->lending = 0;
    e->lent_pos = 0;
    PyBuffer_Release(&e->lent);
    return ret;
}

/* incoming.write(data): append received ciphertext (one copy, no zero-fill); returns its length. */
static PyObject *
Incoming_write(EngineBIO *self, PyObject *data)
{
    Engine *e = self->engine;
    Py_buffer view;
    if (in_keep(e) < 0)
        return NULL;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int ret = in_append(e, view.buf, (size_t)view.len);
    Py_ssize_t n = view.len;
    PyBuffer_Release(&view);
    if (ret < 0)
        return NULL;
    return PyLong_FromSsize_t(n);
}

/* incoming.lend(data): let OpenSSL read data in place until keep(), which the caller must call before data's
 * buffer may change or be released (in a finally:). */
static PyObject *
Incoming_lend(EngineBIO *self, PyObject *data)
{
    Engine *e = self->engine;
    if (in_keep(e) < 0)
        return NULL;
    if (PyObject_GetBuffer(data, &e->lent, PyBUF_SIMPLE) < 0)
        return NULL;
    e->lent_pos = 0;
    e->lending = 1;
    Py_RETURN_NONE;
}

static PyObject *
Incoming_keep(EngineBIO *self, PyObject *Py_UNUSED(ignored))
{
    if (in_keep(self->engine) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Incoming_pending(EngineBIO *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSize_t(in_pending(self->engine));
}

/* All ciphertext produced so far, as one bytes object (the buffer itself, trimmed): outgoing.read(). A small
 * output of a connection that keeps its record buffers (keep_touch) is copied out instead, and the buffer kept for
 * the next write: a ping-pong message's 100 bytes cost a 4 KiB malloc, a realloc and a free otherwise, about
 * 800 instructions, where the copy is a small object from Python's allocator. */
#define OUT_COPY_MAX 448
#define OUT_KEEP_CAP 32768  /* a larger buffer (a write that stopped early) is handed over, not kept */

static PyObject *
out_take(Engine *e)
{
    if (e->out == NULL || e->out_len == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (e->kept && e->out_len <= OUT_COPY_MAX && e->out_cap <= OUT_KEEP_CAP) {
        PyObject *copy = PyBytes_FromStringAndSize(PyBytes_AS_STRING(e->out), e->out_len);
        if (copy != NULL)
            e->out_len = 0;
        return copy;
    }
    PyObject *res = e->out;
    Py_ssize_t len = e->out_len;
    e->out = NULL;
    e->out_len = e->out_cap = 0;
    if (len != PyBytes_GET_SIZE(res) && _PyBytes_Resize(&res, len) < 0)
        return NULL;
    return res;
}

/* outgoing.read(): all ciphertext produced so far, as one bytes object (the buffer itself, trimmed). */
static PyObject *
Outgoing_read(EngineBIO *self, PyObject *const *args, Py_ssize_t nargs)
{
    Engine *e = self->engine;
    (void)args;
    if (nargs != 0) {
        PyErr_SetString(PyExc_TypeError, "read() takes no arguments here: it returns everything pending");
        return NULL;
    }
    return out_take(e);
}

static PyObject *
Outgoing_pending(EngineBIO *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->engine->out_len);
}

static PyMethodDef Incoming_methods[] = {
    {"write", (PyCFunction)Incoming_write, METH_O, "Append received ciphertext."},
    {"lend", (PyCFunction)Incoming_lend, METH_O, "Read received ciphertext in place until keep()."},
    {"keep", (PyCFunction)Incoming_keep, METH_NOARGS, "Copy what is left of the lent bytes, let go of them."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Incoming_getset[] = {
    {"pending", (getter)Incoming_pending, NULL, "Received bytes OpenSSL has not read yet.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Outgoing_methods[] = {
    {"read", (PyCFunction)(void (*)(void))Outgoing_read, METH_FASTCALL, "Take all produced ciphertext."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Outgoing_getset[] = {
    {"pending", (getter)Outgoing_pending, NULL, "Ciphertext produced and not taken yet.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject IncomingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.tls._engine.Incoming",
    .tp_basicsize = sizeof(EngineBIO),
    .tp_dealloc = (destructor)EngineBIO_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The receive side of an Engine, used like the incoming ssl.MemoryBIO.",
    .tp_methods = Incoming_methods,
    .tp_getset = Incoming_getset,
};

static PyTypeObject OutgoingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.tls._engine.Outgoing",
    .tp_basicsize = sizeof(EngineBIO),
    .tp_dealloc = (destructor)EngineBIO_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The send side of an Engine, used like the outgoing ssl.MemoryBIO.",
    .tp_methods = Outgoing_methods,
    .tp_getset = Outgoing_getset,
};

/* -- module functions ---------------------------------------------------------------------------------------- */

/* context_matches(context, options, verify_mode): whether the SSL_CTX read from the context's private layout is
 * the one behind it, judged by what the stdlib reports for it. */
static PyObject *
context_matches(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *context;
    unsigned long long options;
    int verify_mode;
    if (!PyArg_ParseTuple(args, "OKi:context_matches", &context, &options, &verify_mode))
        return NULL;
    SSL_CTX *ctx = context_ctx(context);
    if (ctx == NULL)
        return NULL;
    int mode = SSL_CTX_get_verify_mode(ctx);
    int py_mode = mode == SSL_VERIFY_NONE ? 0 : (mode & SSL_VERIFY_FAIL_IF_NO_PEER_CERT ? 2 : 1);
    return PyBool_FromLong((unsigned long long)SSL_CTX_get_options(ctx) == options && py_mode == verify_mode);
}

/* field_offset(obj, target): the offset of a pointer to target inside obj's fixed-size part, or -1. Used to find
 * where a context keeps a callback the stdlib does not expose (the 3.13 PSK callbacks), on a probe context. */
static PyObject *
field_offset(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *obj, *target;
    if (!PyArg_ParseTuple(args, "OO:field_offset", &obj, &target))
        return NULL;
    Py_ssize_t size = Py_TYPE(obj)->tp_basicsize;
    for (Py_ssize_t off = sizeof(PyObject); off + (Py_ssize_t)sizeof(void *) <= size; off += sizeof(void *)) {
        void *p;
        memcpy(&p, (char *)obj + off, sizeof p);
        if (p == (void *)target)
            return PyLong_FromSsize_t(off);
    }
    return PyLong_FromLong(-1);
}

/* field_is_set(context, offset): whether the pointer at offset (found by field_offset) is non-NULL. */
static PyObject *
field_is_set(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *obj;
    Py_ssize_t off;
    if (!PyArg_ParseTuple(args, "On:field_is_set", &obj, &off))
        return NULL;
    if (!PyObject_TypeCheck(obj, SSLContextType) || off < (Py_ssize_t)sizeof(PyObject)
        || off + (Py_ssize_t)sizeof(void *) > Py_TYPE(obj)->tp_basicsize) {
        PyErr_SetString(PyExc_ValueError, "offset outside the context object");
        return NULL;
    }
    void *p;
    memcpy(&p, (char *)obj + off, sizeof p);
    return PyBool_FromLong(p != NULL && p != (void *)Py_None);
}

/* Follow TLS record boundaries (5-byte headers) across a received chunk: the loop of scan_records() and of
 * Receive. left: body bytes of the current record still expected before data; partial: bytes of the trailing
 * incomplete record received so far; hdr[:*hlen]: a header cut short by the previous chunk (< 5 bytes). Returns
 * 0 when a header is not one OpenSSL accepts (type 20-24, body length <= max_body), else 1. */
static int
scan_chunk(const unsigned char *data, Py_ssize_t n, Py_ssize_t *left_p, Py_ssize_t *partial_p, unsigned char *hdr,
           Py_ssize_t *hlen_p, Py_ssize_t max_body)
{
    Py_ssize_t left = *left_p, partial = *partial_p, hlen = *hlen_p;
    int framed = 1;
    if (left >= n) {  /* the whole chunk is inside one record body */
        left -= n;
        partial = left == 0 ? 0 : partial + n;
    }
    else {
        /* i may run past n by up to a record body: the sums stay far below PY_SSIZE_T_MAX. */
        Py_ssize_t i = left, length = 0;
        while (i < n) {
            int ctype;
            if (hlen > 0 || n - i < 5) {
                Py_ssize_t take = 5 - hlen < n - i ? 5 - hlen : n - i;
                memcpy(hdr + hlen, data + i, (size_t)take);
                hlen += take;
                i += take;
                if (hlen < 5)
                    break;
                ctype = hdr[0];
                length = ((Py_ssize_t)hdr[3] << 8) | hdr[4];
                hlen = 0;
            }
            else {
                ctype = data[i];
                length = ((Py_ssize_t)data[i + 3] << 8) | data[i + 4];
                i += 5;
            }
            if (ctype < 20 || ctype > 24 || length > max_body)
                framed = 0;
            i += length;
        }
        if (i > n) {
            left = i - n;
            partial = 5 + length - (i - n);
        }
        else {
            left = 0;
            partial = hlen;
        }
    }
    *left_p = left;
    *partial_p = partial;
    *hlen_p = hlen;
    return framed;
}

/* scan_records(data, rec_left, partial, hdr, max_body) -> (rec_left, partial, hdr, framed)
 *
 * Twin of TLSProtocol._track_records (uringws/tls/protocol.py): follow TLS record boundaries across a received
 * chunk (scan_chunk). framed is False when a header is not one OpenSSL accepts. The loop the Python twin runs
 * once per record runs here in C: a 1 MiB message is 64 records. */
static PyObject *
scan_records(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_records(data, rec_left, partial, hdr, max_body)");
        return NULL;
    }
    Py_ssize_t left = PyLong_AsSsize_t(args[1]);
    if (left == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t partial = PyLong_AsSsize_t(args[2]);
    if (partial == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t max_body = PyLong_AsSsize_t(args[4]);
    if (max_body == -1 && PyErr_Occurred())
        return NULL;
    if (left < 0 || partial < 0) {
        PyErr_SetString(PyExc_ValueError, "rec_left and partial must not be negative");
        return NULL;
    }
    Py_buffer hview;
    if (PyObject_GetBuffer(args[3], &hview, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned char hdr[5];
    Py_ssize_t hlen = hview.len;
    if (hlen > 4) {
        PyBuffer_Release(&hview);
        PyErr_SetString(PyExc_ValueError, "hdr must be shorter than 5 bytes");
        return NULL;
    }
    memcpy(hdr, hview.buf, (size_t)hlen);
    PyBuffer_Release(&hview);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int framed = scan_chunk(view.buf, view.len, &left, &partial, hdr, &hlen, max_body);
    PyBuffer_Release(&view);
    return Py_BuildValue("(nny#O)", left, partial, (const char *)hdr, hlen, framed ? Py_True : Py_False);
}

/* -- Receive: a TLS connection's receive path in one C call --------------------------------------------------- */

/* Receive(tls, engine, wrapped, max_body, plain)
 *
 * The compiled twin of TLSProtocol.data_received() on this engine, its common case: what the ring transport calls
 * with each received chunk (TLSProtocol.received_view returns one). For a connection in the WRAPPED state whose
 * application takes lent views (received_view), it does what data_received() and _read() do, without their two
 * Python frames: record tracking, lending the chunk to OpenSSL, read_all() into the thread's shared plaintext
 * buffer, handing each decrypted run to the application's received_view(), and _read()'s ending (flush a
 * KeyUpdate answer, close_notify, a write backlog), with _read()'s error handling. Every other state, and
 * applications that take bytes or buffers, go to the Python data_received(), which stays the reference. The
 * TLSProtocol's fields are read and written as attributes: there is one copy of the state, the Python one. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *tls;          /* the TLSProtocol */
    Engine *engine;
    PyObject *plain_obj;    /* the thread's shared plaintext buffer (a writable memoryview) */
    char *plain_buf;        /* its memory, during a call (the buffer export is the call's own) */
    long wrapped;           /* the value of protocol._WRAPPED */
    Py_ssize_t max_body;
    FastAttrs *fa;          /* where the TLSProtocol's fields are (set per call, from receive_cache) */
} ReceiveObject;

enum { S_STATE, S_APP_READ_PAUSED, S_APP_BUFFERED, S_APP_VIEW, S_REC_LEFT, S_PARTIAL, S_HDR, S_FRAMED, S_BACKLOG,
       S_TCP_PAUSED, S_FLUSH_SCHEDULED, S_DATA_RECEIVED, S_FLUSH, S_DRAIN_BACKLOG, S_ON_CLOSE_NOTIFY, S_TLS_ERROR,
       S_FATAL, S_RELEASE, S_COUNT };
static const char *const receive_names[S_COUNT] = {
    "_state", "_app_read_paused", "_app_buffered", "_app_view", "_rec_left", "_partial", "_hdr", "_framed",
    "_backlog", "_tcp_paused", "_flush_scheduled", "data_received", "_flush", "_drain_backlog", "_on_close_notify",
    "_tls_error", "_fatal", "release",
};
static PyObject *receive_str[S_COUNT];
static FastAttrsCache receive_cache;
static PyObject *fatal_message;  /* _read()'s message for an exception raised by the application */

static PyTypeObject ReceiveType;

static PyObject *Receive_vectorcall(ReceiveObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
Receive_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *tls, *engine, *plain;
    long wrapped;
    Py_ssize_t max_body;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Receive() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!lnO:Receive", &tls, &EngineType, &engine, &wrapped, &max_body, &plain))
        return NULL;
    ReceiveObject *self = PyObject_GC_New(ReceiveObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)Receive_vectorcall;
    self->tls = Py_NewRef(tls);
    self->engine = (Engine *)Py_NewRef(engine);
    self->wrapped = wrapped;
    self->max_body = max_body;
    self->fa = NULL;
    self->plain_buf = NULL;
    if (!PyMemoryView_Check(plain)) {
        self->plain_obj = NULL;
        Py_DECREF(self);
        PyErr_SetString(PyExc_TypeError, "Receive(): plain must be a memoryview");
        return NULL;
    }
    self->plain_obj = Py_NewRef(plain);
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Receive_traverse(ReceiveObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tls);
    Py_VISIT(self->engine);
    Py_VISIT(self->plain_obj);
    return 0;
}

static int
Receive_clear(ReceiveObject *self)
{
    Py_CLEAR(self->tls);
    Py_CLEAR(self->engine);
    Py_CLEAR(self->plain_obj);
    return 0;
}

static void
Receive_dealloc(ReceiveObject *self)
{
    PyObject_GC_UnTrack(self);
    Receive_clear(self);
    PyObject_GC_Del(self);
}

/* A field of the TLSProtocol as a C value: -1 with an exception set on failure. */
static int
get_ssize(ReceiveObject *self, int name, Py_ssize_t *out)
{
    return fa_ssize(self->fa, self->tls, receive_str, name, out);
}

static int
get_bool(ReceiveObject *self, int name)
{
    return fa_true(self->fa, self->tls, receive_str, name);
}

static int
set_ssize(ReceiveObject *self, int name, Py_ssize_t value)
{
    return fa_set_ssize(self->fa, self->tls, receive_str, name, value);
}

/* Whether the connection is reading application data into a received_view() app: 1 yes (*app_view set, a new
 * reference), 0 no, -1 error. */
static int
receive_fast(ReceiveObject *self, PyObject **app_view)
{
    PyObject *tls = self->tls;
    Py_ssize_t state;
    int r;
    if (get_ssize(self, S_STATE, &state) < 0)
        return -1;
    if (state != self->wrapped)
        return 0;
    if ((r = get_bool(self, S_APP_READ_PAUSED)) != 0)
        return r < 0 ? -1 : 0;
    if ((r = get_bool(self, S_APP_BUFFERED)) != 0)
        return r < 0 ? -1 : 0;
    PyObject *view = fa_get(self->fa, tls, receive_str, S_APP_VIEW);
    if (view == NULL)
        return -1;
    if (view == Py_None) {
        Py_DECREF(view);
        return 0;
    }
    *app_view = view;
    return 1;
}

/* Still reading after a delivery: state WRAPPED and not paused. */
static int
still_reading(ReceiveObject *self)
{
    Py_ssize_t state;
    if (get_ssize(self, S_STATE, &state) < 0)
        return -1;
    if (state != self->wrapped)
        return 0;
    int r = get_bool(self, S_APP_READ_PAUSED);
    return r < 0 ? -1 : !r;
}

/* Track the records of a received chunk in the TLSProtocol's fields (its data_received()'s first part). */
static int
receive_track(ReceiveObject *self, const unsigned char *data, Py_ssize_t n)
{
    PyObject *tls = self->tls;
    Py_ssize_t left, partial;
    if (get_ssize(self, S_REC_LEFT, &left) < 0 || get_ssize(self, S_PARTIAL, &partial) < 0)
        return -1;
    PyObject *hobj = fa_get(self->fa, tls, receive_str, S_HDR);
    if (hobj == NULL)
        return -1;
    if (!PyBytes_Check(hobj) || PyBytes_GET_SIZE(hobj) > 4 || left < 0 || partial < 0) {
        Py_DECREF(hobj);
        PyErr_SetString(PyExc_SystemError, "TLSProtocol record tracking state out of range");
        return -1;
    }
    unsigned char hdr[5];
    Py_ssize_t hlen = PyBytes_GET_SIZE(hobj), old_hlen = hlen;
    memcpy(hdr, PyBytes_AS_STRING(hobj), (size_t)hlen);
    Py_DECREF(hobj);
    int framed = scan_chunk(data, n, &left, &partial, hdr, &hlen, self->max_body);
    if (set_ssize(self, S_REC_LEFT, left) < 0 || set_ssize(self, S_PARTIAL, partial) < 0)
        return -1;
    if (hlen || old_hlen) {
        PyObject *h = PyBytes_FromStringAndSize((const char *)hdr, hlen);
        if (h == NULL)
            return -1;
        int r = fa_set(self->fa, tls, receive_str, S_HDR, h);
        Py_DECREF(h);
        if (r < 0)
            return -1;
    }
    if (!framed && fa_set(self->fa, tls, receive_str, S_FRAMED, Py_False) < 0)
        return -1;
    return 0;
}

/* Hand plain[:n] to the app's received_view(); the view is released after the call (as TLSProtocol._lend), so a
 * view the app kept by mistake fails loudly instead of showing bytes of a later record. */
static int
receive_deliver(ReceiveObject *self, PyObject *app_view, Py_ssize_t n)
{
    PyObject *part = PyMemoryView_FromMemory(self->plain_buf, n, PyBUF_WRITE);
    if (part == NULL)
        return -1;
    PyObject *res = PyObject_CallOneArg(app_view, part);
    int ok = res != NULL;
    Py_XDECREF(res);
    if (Py_REFCNT(part) > 1) {  /* kept: release it now (a derived view still exported makes this raise) */
        PyObject *exc = ok ? NULL : fetch_exc();
        PyObject *r = PyObject_CallMethodNoArgs(part, receive_str[S_RELEASE]);
        if (r == NULL)
            ok = 0;
        Py_XDECREF(r);
        if (exc != NULL) {
            if (r == NULL)
                Py_XDECREF(fetch_exc());
            restore_exc(exc);
        }
    }
    Py_DECREF(part);
    return ok ? 0 : -1;
}

/* _read()'s except clauses for an exception raised while reading: 1 a close_notify (go on to the ending), 0
 * handled (by _tls_error or _fatal: stop), -1 not handled (propagate). */
static int
receive_exception(ReceiveObject *self)
{
    if (PyErr_ExceptionMatches(SSLZeroReturnError)) {
        PyErr_Clear();
        return 1;
    }
    int is_ssl = PyErr_ExceptionMatches(SSLError);
    if (!is_ssl && !PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *exc = fetch_exc();
    PyObject *r = is_ssl ? PyObject_CallMethodOneArg(self->tls, receive_str[S_TLS_ERROR], exc)
                         : PyObject_CallMethodObjArgs(self->tls, receive_str[S_FATAL], exc, fatal_message, NULL);
    Py_DECREF(exc);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
call_method0(PyObject *obj, int name)
{
    return PyObject_CallMethodNoArgs(obj, receive_str[name]);
}

/* _read()'s ending: an answer OpenSSL produced (a KeyUpdate's), then the close_notify, or a write backlog that
 * waited for the read. */
static int
receive_ending(ReceiveObject *self, int got_close_notify)
{
    PyObject *tls = self->tls, *r;
    if (self->engine->out_len) {
        if ((r = call_method0(tls, S_FLUSH)) == NULL)
            return -1;
        Py_DECREF(r);
    }
    Py_ssize_t state;
    if (get_ssize(self, S_STATE, &state) < 0)
        return -1;
    if (got_close_notify) {
        if (state != self->wrapped)
            return 0;
        if ((r = call_method0(tls, S_ON_CLOSE_NOTIFY)) == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    int b = get_bool(self, S_BACKLOG);
    if (b <= 0)
        return b;
    int t = get_bool(self, S_TCP_PAUSED);
    if (t != 0)
        return t < 0 ? -1 : 0;
    int f = get_bool(self, S_FLUSH_SCHEDULED);
    if (f != 0)
        return f < 0 ? -1 : 0;
    if (state != self->wrapped)
        return 0;
    if ((r = call_method0(tls, S_DRAIN_BACKLOG)) == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *
Receive_vectorcall(ReceiveObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Receive(data) takes one positional argument");
        return NULL;
    }
    if (self->tls == NULL) {
        PyErr_SetString(PyExc_ValueError, "Receive object cleared");
        return NULL;
    }
    PyObject *data = args[0];
    PyObject *app_view = NULL;
    self->fa = fa_lookup(&receive_cache, Py_TYPE(self->tls), receive_str, S_COUNT);
    int fast = receive_fast(self, &app_view);
    if (fast < 0)
        return NULL;
    if (!fast)
        return PyObject_CallMethodOneArg(self->tls, receive_str[S_DATA_RECEIVED], data);
    Py_buffer plain;
    if (PyObject_GetBuffer(self->plain_obj, &plain, PyBUF_WRITABLE) < 0) {
        Py_DECREF(app_view);
        return NULL;
    }
    self->plain_buf = plain.buf;
    Engine *e = self->engine;
    /* Lent to OpenSSL (incoming.lend): in_keep() copies what it has not read and releases the buffer. */
    if (in_keep(e) < 0) {
        PyBuffer_Release(&plain);
        Py_DECREF(app_view);
        return NULL;
    }
    if (PyObject_GetBuffer(data, &e->lent, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&plain);
        Py_DECREF(app_view);
        return NULL;
    }
    e->lent_pos = 0;
    e->lending = 1;
    int ok = 0;
    if (receive_track(self, e->lent.buf, e->lent.len) < 0)
        goto done;
    /* _read(), the compiled engine's branch. */
    Py_ssize_t partial;
    int framed = get_bool(self, S_FRAMED);
    if (framed < 0 || get_ssize(self, S_PARTIAL, &partial) < 0)
        goto done;
    if (!framed)
        partial = 0;
    if (e->more)
        partial = -1;  /* the engine still has something to say: never skip this read */
    if ((Py_ssize_t)in_pending(e) <= partial && eng_pending(e) == 0) {
        ok = 1;
        goto done;
    }
    int got_close_notify = 0;
    for (;;) {
        Py_ssize_t n = read_all_into(e, plain.buf, (size_t)plain.len, partial);
        if (n > 0 && receive_deliver(self, app_view, n) < 0)
            n = -1;
        if (n < 0) {
            int r = receive_exception(self);
            if (r < 0)
                goto done;
            if (r == 0) {
                ok = 1;
                goto done;
            }
            got_close_notify = 1;
            break;
        }
        if (!e->more)
            break;
        int r = still_reading(self);
        if (r < 0)
            goto done;
        if (!r)
            break;
    }
    ok = receive_ending(self, got_close_notify) == 0;
done:
    PyBuffer_Release(&plain);
    Py_DECREF(app_view);
    if (in_keep(e) < 0 && ok)  /* TLSProtocol.data_received's finally: incoming.keep() */
        ok = 0;
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyTypeObject ReceiveType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.tls._engine.Receive",
    .tp_basicsize = sizeof(ReceiveObject),
    .tp_dealloc = (destructor)Receive_dealloc,
    .tp_vectorcall_offset = offsetof(ReceiveObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Receive(tls, engine, wrapped, max_body, plain): TLSProtocol.data_received's common case in C.",
    .tp_traverse = (traverseproc)Receive_traverse,
    .tp_clear = (inquiry)Receive_clear,
    .tp_new = Receive_new,
};

/* -- Send: a TLS connection's small writes, coalesced until the loop waits ------------------------------------ */

/* Send(tls, engine, wrapped, coalesce_limit, record_plaintext, write_chunk)
 *
 * The compiled twin of TLSProtocol._write_if_open (calling the object; with two arguments, _write_pair_if_open)
 * and of its before-wait hook, _flush_pending (Send.flush). The WebSocket layer sends each message through _write_if_open: while the
 * connection is WRAPPED and open, not paused by TCP, on a loop with before-wait hooks, a small write is appended to
 * the backlog and the hook is registered once per loop iteration; the hook encrypts the backlog with one SSL_write
 * (one record) and hands the records to the TCP transport. Anything else (a large write, a pause, any other state,
 * a backlog larger than a record) goes to the Python methods, which stay the reference. As Receive, it keeps no
 * state of its own: the TLSProtocol's fields are read and written in place. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *tls;
    Engine *engine;
    long wrapped;
    Py_ssize_t coalesce_limit, record_plaintext, write_chunk;
    FastAttrs *fa;  /* set per call, from send_cache */
    PyObject *hook; /* this object's flush as a bound function, made once: the before-wait hook of every write */
} SendObject;

enum { W_STATE, W_APP_CLOSING, W_TCP_PAUSED, W_SELECTOR, W_BACKLOG, W_BACKLOG_SIZE, W_FLUSH_SCHEDULED, W_HIGH,
       W_APP_WRITE_PAUSED, W_WRITE_IF_OPEN, W_APP_WRITE, W_BEFORE_WAIT, W_TRANSPORT, W_WRITE, W_DRAIN_BACKLOG,
       W_UPDATE_APP_WRITING, W_FLUSH, W_TLS_ERROR, W_APPEND, W_FLUSH_PENDING, W_QUEUE, W_SEND_CLOSE_NOTIFY,
       W_APPENDLEFT, W_COUNT };
static const char *const send_names[W_COUNT] = {
    "_state", "_app_closing", "_tcp_paused", "_selector", "_backlog", "_backlog_size", "_flush_scheduled", "_high",
    "_app_write_paused", "_write_if_open", "_app_write", "before_wait", "_transport", "write", "_drain_backlog",
    "_update_app_writing", "_flush", "_tls_error", "append", "_flush_pending", "_queue", "_send_close_notify",
    "appendleft",
};
static PyObject *send_str[W_COUNT];
static FastAttrsCache send_cache;
static PyObject *deque_type;  /* collections.deque */
static PyObject *deque_append, *deque_clear;  /* collections.deque's methods, called without a lookup */
static PyTypeObject SendType;

/* Empty backlog deques put back by Send_flush for the next write of any connection to take, instead of a new
 * deque per coalesced write and its free at the flush (about 1,000 instructions per message). Only a deque nobody
 * else references goes here; at most SPARE_MAX (an empty deque is about 760 B) per process. The GIL guards it. */
#define SPARE_MAX 64
static PyObject *spare_deques[SPARE_MAX];
static int spare_count;

/* A deque for a backlog: a spare one, or a new one. New reference. */
static PyObject *
backlog_new(void)
{
    if (spare_count > 0)
        return spare_deques[--spare_count];
    return PyObject_CallNoArgs(deque_type);
}

/* Give up our reference to a backlog deque no longer the protocol's: emptied and kept as a spare if nobody else
 * references it (the protocol's _backlog is None or another deque by now). */
static void
backlog_release(PyObject *backlog)
{
    if (Py_IS_TYPE(backlog, (PyTypeObject *)deque_type) && Py_REFCNT(backlog) == 1 && spare_count < SPARE_MAX) {
        if (PyObject_Length(backlog) > 0) {
            PyObject *res = PyObject_Vectorcall(deque_clear, &backlog, 1, NULL);
            if (res == NULL) {
                PyErr_Clear();  /* (deque.clear() cannot fail) */
                Py_DECREF(backlog);
                return;
            }
            Py_DECREF(res);
        }
        spare_deques[spare_count++] = backlog;
        return;
    }
    Py_DECREF(backlog);
}

static int
backlog_append(PyObject *backlog, PyObject *data)
{
    PyObject *res;
    if (Py_IS_TYPE(backlog, (PyTypeObject *)deque_type)) {
        PyObject *args[2] = {backlog, data};
        res = PyObject_Vectorcall(deque_append, args, 2, NULL);
    }
    else
        res = PyObject_CallMethodOneArg(backlog, send_str[W_APPEND], data);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static PyObject *Send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *
Send_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *tls, *engine;
    long wrapped;
    Py_ssize_t coalesce_limit, record_plaintext, write_chunk;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Send() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!lnnn:Send", &tls, &EngineType, &engine, &wrapped, &coalesce_limit,
                          &record_plaintext, &write_chunk))
        return NULL;
    SendObject *self = PyObject_GC_New(SendObject, type);
    if (self == NULL)
        return NULL;
    self->vectorcall = (vectorcallfunc)Send_vectorcall;
    self->tls = Py_NewRef(tls);
    self->engine = (Engine *)Py_NewRef(engine);
    self->wrapped = wrapped;
    self->coalesce_limit = coalesce_limit;
    self->record_plaintext = record_plaintext;
    self->write_chunk = write_chunk;
    self->fa = NULL;
    self->hook = NULL;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static int
Send_traverse(SendObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->tls);
    Py_VISIT(self->engine);
    Py_VISIT(self->hook);
    return 0;
}

static int
Send_clear(SendObject *self)
{
    Py_CLEAR(self->tls);
    Py_CLEAR(self->engine);
    Py_CLEAR(self->hook);
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
w_get(SendObject *self, int name)
{
    return fa_get(self->fa, self->tls, send_str, name);
}

static int
w_set(SendObject *self, int name, PyObject *value)
{
    return fa_set(self->fa, self->tls, send_str, name, value);
}

static int
w_true(SendObject *self, int name)
{
    return fa_true(self->fa, self->tls, send_str, name);
}

static int
w_ssize(SendObject *self, int name, Py_ssize_t *out)
{
    return fa_ssize(self->fa, self->tls, send_str, name, out);
}

static int
w_set_ssize(SendObject *self, int name, Py_ssize_t value)
{
    return fa_set_ssize(self->fa, self->tls, send_str, name, value);
}

static PyObject *
w_call(SendObject *self, int name, PyObject *arg)
{
    return arg == NULL ? PyObject_CallMethodNoArgs(self->tls, send_str[name])
                       : PyObject_CallMethodOneArg(self->tls, send_str[name], arg);
}

static PyObject *Send_flush(SendObject *self, PyObject *Py_UNUSED(ignored));
static PyMethodDef send_flush_def = {"flush", (PyCFunction)Send_flush, METH_NOARGS, NULL};

/* _write_if_open(data)'s common case; 1 done, 0 not taken (nothing done), 2 not taken but open (what
 * _write_if_open then does is _app_write(data)), -1 error. */
static int
send_coalesce(SendObject *self, PyObject *data, Py_ssize_t size)
{
    Py_ssize_t state;
    int r;
    if (w_ssize(self, W_STATE, &state) < 0)
        return -1;
    if (state != self->wrapped)
        return 0;
    if ((r = w_true(self, W_APP_CLOSING)) != 0 || (r = w_true(self, W_TCP_PAUSED)) != 0)
        return r < 0 ? -1 : 0;
    PyObject *selector = w_get(self, W_SELECTOR);
    if (selector == NULL)
        return -1;
    if (selector == Py_None) {
        Py_DECREF(selector);
        return 0;
    }
    Py_ssize_t high;
    PyObject *backlog = NULL;
    int scheduled = w_true(self, W_FLUSH_SCHEDULED);
    if (scheduled < 0 || w_ssize(self, W_HIGH, &high) < 0 || (backlog = w_get(self, W_BACKLOG)) == NULL)
        goto error;
    int queued = backlog == Py_None ? 0 : PyObject_IsTrue(backlog);
    if (queued < 0)
        goto error;
    Py_ssize_t total = size;
    if (queued) {
        Py_ssize_t before;
        if (w_ssize(self, W_BACKLOG_SIZE, &before) < 0)
            goto error;
        total += before;
        int paused = w_true(self, W_APP_WRITE_PAUSED);
        if (paused < 0)
            goto error;
        if (!scheduled || total >= self->coalesce_limit || total > high || paused)
            goto not_taken;
    }
    else if (size >= self->coalesce_limit || size >= high)
        goto not_taken;
    if (backlog == Py_None) {
        PyObject *d = backlog_new();
        if (d == NULL || backlog_append(d, data) < 0 || w_set(self, W_BACKLOG, d) < 0) {
            Py_XDECREF(d);
            goto error;
        }
        Py_DECREF(d);
    }
    else if (backlog_append(backlog, data) < 0)
        goto error;
    if (w_set_ssize(self, W_BACKLOG_SIZE, total) < 0)
        goto error;
    if (!scheduled) {
        /* selector.before_wait.append(<the flush hook>) */
        PyObject *hooks = PyObject_GetAttr(selector, send_str[W_BEFORE_WAIT]);
        if (hooks != NULL && self->hook == NULL)
            self->hook = PyCFunction_New(&send_flush_def, (PyObject *)self);
        PyObject *hook = hooks == NULL ? NULL : self->hook;
        int ok = hook != NULL && w_set(self, W_FLUSH_SCHEDULED, Py_True) == 0
                 && (PyList_CheckExact(hooks) ? PyList_Append(hooks, hook) : -1) == 0;
        if (hook != NULL && !ok && !PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "selector.before_wait is not a list");
        Py_XDECREF(hooks);
        if (!ok)
            goto error;
    }
    Py_DECREF(backlog);
    Py_DECREF(selector);
    return 1;
not_taken:
    Py_DECREF(backlog);
    Py_DECREF(selector);
    return 2;
error:
    Py_XDECREF(backlog);
    Py_DECREF(selector);
    return -1;
}

/* A failed SSL_write in _write_pair_if_open: what it does for SSLWantReadError (queue what is left, in order, hand
 * down what OpenSSL produced) and for SSLError (_tls_error). 0 handled, -1 error. */
static int
send_pair_failed(SendObject *self, PyObject *header, PyObject *payload)
{
    PyObject *res;
    if (PyErr_ExceptionMatches(SSLWantReadError)) {
        PyErr_Clear();
        if (header != NULL) {
            if ((res = w_call(self, W_QUEUE, header)) == NULL)
                return -1;
            Py_DECREF(res);
        }
        if ((res = w_call(self, W_QUEUE, payload)) == NULL)
            return -1;
        Py_DECREF(res);
        if ((res = w_call(self, W_FLUSH, NULL)) == NULL)
            return -1;
        Py_DECREF(res);
        res = w_call(self, W_UPDATE_APP_WRITING, NULL);
    }
    else if (PyErr_ExceptionMatches(SSLError)) {
        PyObject *exc = fetch_exc();
        res = w_call(self, W_TLS_ERROR, exc);
        Py_DECREF(exc);
    }
    else
        return -1;
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* self._transport.write(self._outgoing.read()): may call pause_writing() right away. 0, or -1 with an exception. */
static int
send_records(SendObject *self)
{
    PyObject *t = w_get(self, W_TRANSPORT);
    if (t == NULL)
        return -1;
    PyObject *records = out_take(self->engine);
    PyObject *res = records == NULL ? NULL : PyObject_CallMethodOneArg(t, send_str[W_WRITE], records);
    Py_XDECREF(records);
    Py_DECREF(t);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* _encrypt(payload) for a bytes payload: WRITE_CHUNK pieces, each handed down (the first with whatever OpenSSL
 * produced before it), while TCP does not pause us; the rest goes to the front of the backlog. 1 blocked (a TLS 1.2
 * renegotiation step), 0 not, -1 error. */
static int
send_chunks(SendObject *self, PyObject *payload)
{
    const char *p = PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload), off = 0;
    int blocked = 0, r;
    PyObject *res;
    while (off < n) {
        if ((r = w_true(self, W_TCP_PAUSED)) != 0) {
            if (r < 0)
                return -1;
            break;
        }
        Py_ssize_t end = n - off > self->write_chunk ? off + self->write_chunk : n;
        size_t written;
        if (engine_write_raw(self->engine, p + off, end - off, &written) < 0) {
            if (PyErr_ExceptionMatches(SSLWantReadError)) {  /* renegotiation step: wait for the peer, keep the rest */
                PyErr_Clear();
                if ((res = w_call(self, W_FLUSH, NULL)) == NULL)
                    return -1;
                Py_DECREF(res);
                blocked = 1;
                break;
            }
            if (PyErr_ExceptionMatches(SSLError)) {
                PyObject *exc = fetch_exc();
                res = w_call(self, W_TLS_ERROR, exc);
                Py_DECREF(exc);
                if (res == NULL)
                    return -1;
                Py_DECREF(res);
                return 0;
            }
            return -1;
        }
        off = end;
        if (send_records(self) < 0)
            return -1;
    }
    if (off < n) {
        /* the app may not reuse a bytes object, but the rest is a new one, as _immutable(mv[off:]) makes */
        PyObject *rest = PyBytes_FromStringAndSize(p + off, n - off), *backlog = NULL;
        Py_ssize_t queued;
        if (rest == NULL || (backlog = w_get(self, W_BACKLOG)) == NULL)
            goto error;
        if (backlog == Py_None) {
            Py_DECREF(backlog);
            if ((backlog = backlog_new()) == NULL || w_set(self, W_BACKLOG, backlog) < 0)
                goto error;
        }
        if ((res = PyObject_CallMethodOneArg(backlog, send_str[W_APPENDLEFT], rest)) == NULL)
            goto error;
        Py_DECREF(res);
        if (w_ssize(self, W_BACKLOG_SIZE, &queued) < 0 || w_set_ssize(self, W_BACKLOG_SIZE, queued + n - off) < 0)
            goto error;
        Py_DECREF(backlog);
        Py_DECREF(rest);
        return blocked;
    error:
        Py_XDECREF(backlog);
        Py_XDECREF(rest);
        return -1;
    }
    return blocked;
}

/* The end of _write_pair_if_open once both were encrypted (`finished`: not blocked), as _drain_backlog and
 * _app_write end: close_notify if the app closed meanwhile (from its pause_writing()), then the app's flow control.
 * 1, or -1 with an exception. */
static int
send_pair_ending(SendObject *self, int finished)
{
    Py_ssize_t state, size, high;
    PyObject *res;
    int r;
    if (finished) {
        if ((r = w_true(self, W_APP_CLOSING)) < 0)
            return -1;
        if (r) {
            if (w_ssize(self, W_STATE, &state) < 0 || (r = w_true(self, W_BACKLOG)) < 0)
                return -1;
            if (state == self->wrapped && !r) {
                if ((res = w_call(self, W_SEND_CLOSE_NOTIFY, NULL)) == NULL)
                    return -1;
                Py_DECREF(res);
            }
        }
    }
    int paused = w_true(self, W_APP_WRITE_PAUSED);
    if (paused < 0 || (r = w_true(self, W_TCP_PAUSED)) < 0 || w_ssize(self, W_BACKLOG_SIZE, &size) < 0
        || w_ssize(self, W_HIGH, &high) < 0)
        return -1;
    if (paused || r || size > high) {
        if ((res = w_call(self, W_UPDATE_APP_WRITING, NULL)) == NULL)
            return -1;
        Py_DECREF(res);
    }
    return 1;
}

/* _write_pair_if_open(header, payload)'s common case, both non-empty bytes: nothing queued, nothing paused, a
 * payload that does not fit one record with the header: the header a record of its own (as _drain_backlog would
 * write it), then the payload: up to one WRITE_CHUNK with it in one transport write, a larger one as _encrypt
 * chunks it. 1 done, 0 not taken (nothing done), -1 error. */
static int
send_pair(SendObject *self, PyObject *header, PyObject *payload)
{
    Py_ssize_t hsize = PyBytes_GET_SIZE(header), size = hsize + PyBytes_GET_SIZE(payload), state, high;
    int r;
    if (hsize >= self->coalesce_limit || size <= self->record_plaintext)
        return 0;
    if (w_ssize(self, W_STATE, &state) < 0)
        return -1;
    if (state != self->wrapped)
        return 0;
    if ((r = w_true(self, W_APP_CLOSING)) != 0 || (r = w_true(self, W_TCP_PAUSED)) != 0
        || (r = w_true(self, W_BACKLOG)) != 0)
        return r < 0 ? -1 : 0;
    PyObject *selector = w_get(self, W_SELECTOR);
    if (selector == NULL)
        return -1;
    int none = selector == Py_None;
    Py_DECREF(selector);
    if (none)
        return 0;
    if (w_ssize(self, W_HIGH, &high) < 0)
        return -1;
    if (hsize >= high)
        return 0;
    size_t written;
    if (engine_write_raw(self->engine, PyBytes_AS_STRING(header), hsize, &written) < 0)
        return send_pair_failed(self, header, payload) < 0 ? -1 : 1;
    if (size - hsize > self->write_chunk) {
        if ((r = send_chunks(self, payload)) != 0)
            return r < 0 ? -1 : send_pair_ending(self, 0);
    }
    else {
        if (engine_write_raw(self->engine, PyBytes_AS_STRING(payload), size - hsize, &written) < 0)
            return send_pair_failed(self, NULL, payload) < 0 ? -1 : 1;
        if (send_records(self) < 0)
            return -1;
    }
    return send_pair_ending(self, 1);
}

static PyObject *
Send_vectorcall(SendObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs < 1 || nargs > 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "Send(data[, payload]) takes one or two positional arguments");
        return NULL;
    }
    if (self->tls == NULL) {
        PyErr_SetString(PyExc_ValueError, "Send object cleared");
        return NULL;
    }
    PyObject *data = args[0];
    self->fa = fa_lookup(&send_cache, Py_TYPE(self->tls), send_str, W_COUNT);
    if (nargs == 2) {
        PyObject *payload = args[1];
        if (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0 && PyBytes_CheckExact(payload)
            && PyBytes_GET_SIZE(payload) > 0) {
            int r = send_pair(self, data, payload);
            if (r < 0)
                return NULL;
            if (r == 1)
                Py_RETURN_NONE;
        }
        /* Not taken: _write_if_open(header), _write_if_open(payload), as the Python method then does, each through
         * this object's own common case. */
        PyObject *res = Send_vectorcall(self, args, 1, NULL);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
        return Send_vectorcall(self, args + 1, 1, NULL);
    }
    if (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0) {
        int r = send_coalesce(self, data, PyBytes_GET_SIZE(data));
        if (r < 0)
            return NULL;
        if (r == 1)
            Py_RETURN_NONE;
        if (r == 2)  /* large, or the backlog is full or paused: _write_if_open's own answer */
            return w_call(self, W_APP_WRITE, data);
    }
    return w_call(self, W_WRITE_IF_OPEN, data);
}

/* _flush_pending()'s common case: a backlog that fits one record, on an open WRAPPED connection that TCP has not
 * paused, is joined, written with one SSL_write and handed down in one transport write; a larger backlog goes to
 * _drain_backlog(), as in the Python hook. */
static PyObject *
Send_flush(SendObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->tls == NULL) {
        PyErr_SetString(PyExc_ValueError, "Send object cleared");
        return NULL;
    }
    self->fa = fa_lookup(&send_cache, Py_TYPE(self->tls), send_str, W_COUNT);
    if (w_set(self, W_FLUSH_SCHEDULED, Py_False) < 0)
        return NULL;
    PyObject *backlog = w_get(self, W_BACKLOG), *res;
    if (backlog == NULL)
        return NULL;
    int queued = backlog == Py_None ? 0 : PyObject_IsTrue(backlog), r;
    Py_ssize_t state, size, high;
    if (queued < 0)
        goto error;
    if (queued) {
        if ((r = w_true(self, W_TCP_PAUSED)) < 0 || w_ssize(self, W_STATE, &state) < 0)
            goto error;
        queued = !r && state == self->wrapped;
    }
    if (queued) {
        int closing = w_true(self, W_APP_CLOSING);
        if (closing < 0 || w_ssize(self, W_BACKLOG_SIZE, &size) < 0)
            goto error;
        if (size <= self->record_plaintext && !closing) {
            Py_ssize_t count = PyObject_Length(backlog);
            PyObject *data = NULL;
            if (count == 1)
                data = PySequence_GetItem(backlog, 0);
            else if (count > 1) {
                PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
                data = empty == NULL ? NULL : PyObject_CallMethod(empty, "join", "O", backlog);
                Py_XDECREF(empty);
            }
            if (data == NULL)
                goto error;
            PyObject *n = Engine_write(self->engine, data);
            Py_DECREF(data);
            if (n == NULL) {
                if (PyErr_ExceptionMatches(SSLWantReadError)) {  /* a TLS 1.2 renegotiation step: the backlog waits */
                    PyErr_Clear();
                    if ((res = w_call(self, W_FLUSH, NULL)) == NULL)
                        goto error;
                    Py_DECREF(res);
                }
                else if (PyErr_ExceptionMatches(SSLError)) {
                    PyObject *exc = fetch_exc();
                    int ok = w_set(self, W_BACKLOG, Py_None) == 0 && w_set_ssize(self, W_BACKLOG_SIZE, 0) == 0
                             && (res = w_call(self, W_TLS_ERROR, exc)) != NULL;
                    Py_DECREF(exc);
                    if (!ok)
                        goto error;
                    Py_DECREF(res);
                }
                else
                    goto error;
            }
            else {
                Py_DECREF(n);
                if (w_set(self, W_BACKLOG, Py_None) < 0 || w_set_ssize(self, W_BACKLOG_SIZE, 0) < 0)
                    goto error;
                if (self->engine->out_len) {
                    PyObject *t = w_get(self, W_TRANSPORT);
                    if (t == NULL)
                        goto error;
                    if (t != Py_None) {
                        PyObject *records = out_take(self->engine);
                        res = records == NULL ? NULL : PyObject_CallMethodOneArg(t, send_str[W_WRITE], records);
                        Py_XDECREF(records);
                        if (res == NULL) {
                            Py_DECREF(t);
                            goto error;
                        }
                        Py_DECREF(res);
                    }
                    Py_DECREF(t);
                }
            }
        }
        else {
            if ((res = w_call(self, W_DRAIN_BACKLOG, NULL)) == NULL)
                goto error;
            Py_DECREF(res);
        }
        /* (otherwise _update_app_writing() has nothing to do: not paused, not above the high-water mark) */
        int paused = w_true(self, W_APP_WRITE_PAUSED);
        if (paused < 0 || (r = w_true(self, W_TCP_PAUSED)) < 0 || w_ssize(self, W_BACKLOG_SIZE, &size) < 0
            || w_ssize(self, W_HIGH, &high) < 0)
            goto error;
        if (paused || r || size > high) {
            if ((res = w_call(self, W_UPDATE_APP_WRITING, NULL)) == NULL)
                goto error;
            Py_DECREF(res);
        }
    }
    /* An empty deque is ~760 B per idle connection: none is kept (the written one becomes a spare for the next
     * write of any connection, see backlog_release) */
    PyObject *now = w_get(self, W_BACKLOG);
    if (now == NULL)
        goto error;
    if (now != Py_None) {
        int any = PyObject_IsTrue(now);
        if (any < 0 || (!any && w_set(self, W_BACKLOG, Py_None) < 0)) {
            Py_DECREF(now);
            goto error;
        }
    }
    Py_DECREF(now);
    backlog_release(backlog);  /* (None, or a deque still the protocol's, is only decref'd) */
    Py_RETURN_NONE;
error:
    Py_DECREF(backlog);
    return NULL;
}

static PyTypeObject SendType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringws.tls._engine.Send",
    .tp_basicsize = sizeof(SendObject),
    .tp_dealloc = (destructor)Send_dealloc,
    .tp_vectorcall_offset = offsetof(SendObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Send(tls, engine, wrapped, coalesce_limit, record_plaintext, write_chunk): TLSProtocol._write_if_open and its "
              "before-wait hook (flush) in C.",
    .tp_traverse = (traverseproc)Send_traverse,
    .tp_clear = (inquiry)Send_clear,
    .tp_new = Send_new,
};

static PyObject *
spare_backlogs(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(spare_count);
}

static PyObject *
kept_buffers(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(keep_count);
}

/* _set_ciphersuites(context, suites): SSL_CTX_set_ciphersuites, which ssl.SSLContext does not offer (3.11-3.13);
 * for tests that must choose a TLS 1.3 suite. */
static PyObject *
set_ciphersuites(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *context;
    const char *suites;
    if (!PyArg_ParseTuple(args, "Os:_set_ciphersuites", &context, &suites))
        return NULL;
    SSL_CTX *ctx = context_ctx(context);
    if (ctx == NULL)
        return NULL;
    if (SSL_CTX_set_ciphersuites(ctx, suites) != 1) {
        ERR_clear_error();
        PyErr_Format(PyExc_ValueError, "no TLS 1.3 cipher suite in %s", suites);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _set_aead_direct(flag): record protection through the provider's functions directly (True, the default where
 * available) or through EVP (False); returns the previous setting. Both give the same records: for tests. */
static PyObject *
set_aead_direct(PyObject *Py_UNUSED(module), PyObject *arg)
{
    int flag = PyObject_IsTrue(arg);
    if (flag < 0)
        return NULL;
    int was = tls13_direct;
    tls13_direct = flag;
    return PyBool_FromLong(was);
}

/* _aead_paths(): {suite name: "provider" or "evp"} for each suite used so far in this process. */
static PyObject *
aead_paths(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    static const char *const names[3] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                         "TLS_CHACHA20_POLY1305_SHA256"};
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < 3; i++) {
        if (tls13_ciphers[i] == NULL)
            continue;
        PyObject *v = PyUnicode_FromString(tls13_direct && tls13_impl[i].newctx != NULL ? "provider" : "evp");
        if (v == NULL || PyDict_SetItemString(d, names[i], v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* _aead_direct_available(): whether the provider of AES-256-GCM (as EVP_CIPHER_fetch finds it) can be called
 * directly, as own TLS 1.3 records then are (for uringws doctor; fetches the cipher if no record has yet). */
static PyObject *
aead_direct_available(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(tls13_cipher(1) != NULL && tls13_impl[1].newctx != NULL);
}

static PyMethodDef module_methods[] = {
    {"_aead_direct_available", aead_direct_available, METH_NOARGS,
     "_aead_direct_available() -> bool: the AEAD provider called directly (else through EVP)."},
    {"_set_aead_direct", set_aead_direct, METH_O, "_set_aead_direct(flag) -> previous: for tests."},
    {"_aead_paths", aead_paths, METH_NOARGS, "_aead_paths() -> {suite: 'provider' | 'evp'}: for tests."},
    {"_set_ciphersuites", set_ciphersuites, METH_VARARGS, "_set_ciphersuites(context, suites): for tests."},
    {"kept_buffers", kept_buffers, METH_NOARGS, "How many connections keep their record buffers now."},
    {"spare_backlogs", spare_backlogs, METH_NOARGS, "How many empty backlog deques wait for the next write."},
    {"context_matches", context_matches, METH_VARARGS, "Check the SSL_CTX read from an SSLContext."},
    {"scan_records", (PyCFunction)(void (*)(void))scan_records, METH_FASTCALL,
     "scan_records(data, rec_left, partial, hdr, max_body) -> (rec_left, partial, hdr, framed)"},
    {"field_offset", field_offset, METH_VARARGS, "Offset of a pointer to target inside obj, or -1."},
    {"field_is_set", field_is_set, METH_VARARGS, "Whether a context's pointer field is set."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "uringws.tls._engine",
    "Compiled TLS engine: OpenSSL with uringws's own BIOs (see uringws/tls/engine.py).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__engine(void)
{
    PyObject *ssl = PyImport_ImportModule("ssl");
    if (ssl == NULL)
        return NULL;
    struct { PyObject **slot; const char *name; } names[] = {
        {&SSLError, "SSLError"}, {&SSLZeroReturnError, "SSLZeroReturnError"},
        {&SSLWantReadError, "SSLWantReadError"}, {&SSLWantWriteError, "SSLWantWriteError"},
        {&SSLSyscallError, "SSLSyscallError"}, {&SSLEOFError, "SSLEOFError"},
        {&SSLCertVerificationError, "SSLCertVerificationError"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyObject_GetAttrString(ssl, names[i].name);
        if (*names[i].slot == NULL) {
            Py_DECREF(ssl);
            return NULL;
        }
    }
    Py_DECREF(ssl);
    PyObject *cssl = PyImport_ImportModule("_ssl");
    if (cssl == NULL)
        return NULL;
    SSLContextType = (PyTypeObject *)PyObject_GetAttrString(cssl, "_SSLContext");
    Py_DECREF(cssl);
    if (SSLContextType == NULL)
        return NULL;
    engine_bio_type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK;
    engine_bio_method = BIO_meth_new(engine_bio_type, "uringws engine");
    if (engine_bio_method == NULL || !BIO_meth_set_write(engine_bio_method, bio_write)
        || !BIO_meth_set_read(engine_bio_method, bio_read) || !BIO_meth_set_ctrl(engine_bio_method, bio_ctrl)
        || !BIO_meth_set_create(engine_bio_method, bio_create)
        || !BIO_meth_set_destroy(engine_bio_method, bio_destroy))
        return PyErr_NoMemory();
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&IncomingType) < 0 || PyType_Ready(&OutgoingType) < 0
        || PyType_Ready(&ReceiveType) < 0 || PyType_Ready(&SendType) < 0)
        return NULL;
    for (int i = 0; i < S_COUNT; i++) {
        if ((receive_str[i] = PyUnicode_InternFromString(receive_names[i])) == NULL)
            return NULL;
    }
    if ((fatal_message = PyUnicode_InternFromString("Fatal error in application protocol receiving TLS data")) == NULL)
        return NULL;
    for (int i = 0; i < W_COUNT; i++) {
        if ((send_str[i] = PyUnicode_InternFromString(send_names[i])) == NULL)
            return NULL;
    }
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return NULL;
    deque_type = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL)
        return NULL;
    deque_append = PyObject_GetAttrString(deque_type, "append");
    deque_clear = deque_append == NULL ? NULL : PyObject_GetAttrString(deque_type, "clear");
    if (deque_clear == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Engine", (PyObject *)&EngineType) < 0
        || PyModule_AddObjectRef(m, "Receive", (PyObject *)&ReceiveType) < 0
        || PyModule_AddObjectRef(m, "Send", (PyObject *)&SendType) < 0
        /* What we were compiled against and what is loaded now: engine.py compares both with the stdlib's. */
        || PyModule_AddObject(m, "OPENSSL_VERSION_NUMBER", PyLong_FromUnsignedLong(OPENSSL_VERSION_NUMBER)) < 0
        || PyModule_AddObject(m, "LOADED_OPENSSL_VERSION_NUMBER", PyLong_FromUnsignedLong(OpenSSL_version_num())) < 0
        || PyModule_AddIntConstant(m, "SSL_CTX_OFFSET", (long)offsetof(CtxHead, ctx)) < 0
        || PyModule_AddIntConstant(m, "KEEP_MAX", KEEP_MAX) < 0
        || PyModule_AddIntConstant(m, "SPARE_MAX", SPARE_MAX) < 0
        || PyModule_AddIntConstant(m, "KEEP_MIN_OPS", KEEP_MIN_OPS) < 0
        || PyModule_AddObject(m, "KEEP_WINDOW", PyFloat_FromDouble(KEEP_WINDOW_NS / 1e9)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
