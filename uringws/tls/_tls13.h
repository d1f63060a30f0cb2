/* TLS 1.3 record protection of our own (RFC 8446 §5.2, §7.1-7.3), included by _engine.c.
 *
 * OpenSSL's record layer costs about 7,200 instructions to write a 70-byte record and 5,600 to read one
 * (SSL_write_ex / SSL_read_ex under callgrind, ping-pong); the same AEAD work through EVP directly costs about
 * 3,300 and 3,100, and can read from and write to the caller's buffers (OpenSSL copies every byte into and out of
 * its record buffers: four copies per byte echoed). A TLS 1.3 server engine protects its application records
 * with this once OpenSSL has done the handshake (docs/design.md §9, "An own TLS 1.3 record layer"; the switch and
 * what stays OpenSSL's are in _engine.c): the traffic secrets, the key schedule from them (and a KeyUpdate's next
 * generation), and sealing and opening a record.
 *
 * The secrets come from OpenSSL's key log callback (the only way OpenSSL 3.0 gives out TLS 1.3 traffic secrets):
 * installed on the SSL_CTX when no other is there (CPython installs its own only for keylog_filename, and such a
 * context never gets this engine), it keeps the two application traffic secrets of an engine's SSL that asked
 * for them and ignores every other SSL of that SSL_CTX. */

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>

#define TLS13_MAX_SECRET 48
#define TLS13_TAG 16
#define TLS13_NONCE 12
#define TLS13_MAX_CIPHERTEXT (16384 + 256)  /* RFC 8446 §5.2: TLSInnerPlaintext + expansion */

/* An engine's captured application traffic secrets: [0] the client's, [1] the server's (generation 0). */
typedef struct {
    unsigned char secret[2][TLS13_MAX_SECRET];
    unsigned char len[2];
    unsigned char have;  /* bit 0: the client's, bit 1: the server's */
} Tls13Secrets;

/* One direction's record protection: the AEAD context with its key, the static IV and the sequence number. */
typedef struct {
    uint64_t id;                               /* this key's number: which key a shared context holds */
    unsigned char key[32];
    unsigned char iv[TLS13_NONCE];
    uint64_t seq;
    int enc;
    const EVP_MD *md;                          /* the suite's hash, for HKDF */
    unsigned char secret[TLS13_MAX_SECRET];    /* the current traffic secret, for a KeyUpdate */
    unsigned char slen;
    unsigned char key_len;
    unsigned char suite;                       /* 0, 1, 2: TLS_AES_128_GCM_SHA256, ..._256_..., ChaCha20 */
} Tls13Dir;

/* The AEAD contexts, one per suite and direction for the whole process, keyed for one Tls13Dir at a time: a
 * context of its own would cost each connection about 1.3 KiB of OpenSSL's memory for as long as it lives, idle
 * or not, while setting a key is cheap next to a record (and is skipped while one connection does all the
 * writing). Only called with the GIL held. */
static EVP_CIPHER *tls13_ciphers[3];  /* fetched once: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 */
static EVP_CIPHER_CTX *tls13_shared[3][2];
static uint64_t tls13_shared_id[3][2];
static uint64_t tls13_next_id = 1;

static EVP_CIPHER_CTX *
tls13_ctx(Tls13Dir *d)
{
    EVP_CIPHER_CTX **c = &tls13_shared[d->suite][d->enc];
    uint64_t *id = &tls13_shared_id[d->suite][d->enc];
    if (*c == NULL) {
        if ((*c = EVP_CIPHER_CTX_new()) == NULL)
            return NULL;
        if (EVP_CipherInit_ex(*c, tls13_ciphers[d->suite], NULL, NULL, NULL, d->enc) != 1) {
            EVP_CIPHER_CTX_free(*c);
            *c = NULL;
            return NULL;
        }
        *id = 0;
    }
    if (*id != d->id) {
        if (EVP_CipherInit_ex(*c, NULL, NULL, d->key, NULL, d->enc) != 1) {
            *id = 0;
            return NULL;
        }
        *id = d->id;
    }
    return *c;
}

static int engine_bio_type;  /* set at module init: BIO_method_type() of the engine's BIO */

static int
hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static Tls13Secrets *engine_secrets(const SSL *ssl);

/* SSL_CTX key log callback: "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>" and the server's, in hex. */
static void
tls13_keylog(const SSL *ssl, const char *line)
{
    Tls13Secrets *s = engine_secrets(ssl);
    if (s == NULL)
        return;
    static const char client[] = "CLIENT_TRAFFIC_SECRET_0 ", server[] = "SERVER_TRAFFIC_SECRET_0 ";
    int which;
    if (strncmp(line, client, sizeof client - 1) == 0)
        which = 0;
    else if (strncmp(line, server, sizeof server - 1) == 0)
        which = 1;
    else
        return;
    const char *p = strchr(line + sizeof client - 1, ' ');  /* past the client random */
    if (p == NULL)
        return;
    p++;
    size_t n = strlen(p);
    if (n == 0 || n % 2 || n / 2 > TLS13_MAX_SECRET)
        return;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hex_digit(p[2 * i]), lo = hex_digit(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return;
        s->secret[which][i] = (unsigned char)(hi << 4 | lo);
    }
    s->len[which] = (unsigned char)(n / 2);
    s->have |= (unsigned char)(1 << which);
}

/* Ask ctx for key log lines: 0 done (ours is there), -1 another callback is installed (nothing captured). */
static int
tls13_keylog_install(SSL_CTX *ctx)
{
    SSL_CTX_keylog_cb_func cb = SSL_CTX_get_keylog_callback(ctx);
    if (cb == tls13_keylog)
        return 0;
    if (cb != NULL)
        return -1;
    SSL_CTX_set_keylog_callback(ctx, tls13_keylog);
    return 0;
}

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash's size: a single HMAC block (RFC 8446 §7.1). */
static int
hkdf_expand_label(const EVP_MD *md, const unsigned char *secret, size_t slen, const char *label, unsigned char *out,
                  size_t olen)
{
    unsigned char info[2 + 1 + 6 + 16 + 1 + 1], *p = info, t[EVP_MAX_MD_SIZE];
    unsigned int tlen = 0;
    size_t llen = strlen(label);
    int size = EVP_MD_get_size(md);
    if (llen > 16 || size <= 0 || olen > (size_t)size)
        return -1;
    *p++ = (unsigned char)(olen >> 8);
    *p++ = (unsigned char)olen;
    *p++ = (unsigned char)(6 + llen);
    memcpy(p, "tls13 ", 6);
    memcpy(p + 6, label, llen);
    p += 6 + llen;
    *p++ = 0;  /* empty context */
    *p++ = 1;  /* T(1) = HMAC(secret, info | 0x01) */
    if (HMAC(md, secret, (int)slen, info, (size_t)(p - info), t, &tlen) == NULL)
        return -1;
    memcpy(out, t, olen);
    OPENSSL_cleanse(t, sizeof t);
    return 0;
}

static void
tls13_dir_free(Tls13Dir *d)
{
    if (d == NULL)
        return;
    if (tls13_shared_id[d->suite][d->enc] == d->id)
        tls13_shared_id[d->suite][d->enc] = 0;  /* (ids are never reused; this only makes it plain) */
    OPENSSL_cleanse(d->key, sizeof d->key);
    OPENSSL_cleanse(d->iv, sizeof d->iv);
    OPENSSL_cleanse(d->secret, sizeof d->secret);
    PyMem_Free(d);
}

/* Key and IV from d->secret (RFC 8446 §7.3), sequence number 0. 0, or -1 (OpenSSL failed). */
static int
tls13_dir_key(Tls13Dir *d)
{
    int ok = hkdf_expand_label(d->md, d->secret, d->slen, "key", d->key, d->key_len) == 0
             && hkdf_expand_label(d->md, d->secret, d->slen, "iv", d->iv, TLS13_NONCE) == 0;
    d->seq = 0;
    d->id = tls13_next_id++;
    if (!ok)
        ERR_clear_error();
    return ok ? 0 : -1;
}

/* A KeyUpdate in this direction: the next generation's secret, key and IV (RFC 8446 §7.2). 0, or -1. */
static int
tls13_dir_update(Tls13Dir *d)
{
    unsigned char next[TLS13_MAX_SECRET];
    if (hkdf_expand_label(d->md, d->secret, d->slen, "traffic upd", next, d->slen) < 0)
        return -1;
    memcpy(d->secret, next, d->slen);
    OPENSSL_cleanse(next, sizeof next);
    return tls13_dir_key(d);
}

/* The record protection of one direction from its traffic secret, for the SSL's negotiated TLS 1.3 cipher suite.
 * NULL with a Python exception set if it cannot be made (not TLS 1.3, a suite we do not do, OpenSSL failing). */
static Tls13Dir *
tls13_dir_new(const SSL *ssl, const unsigned char *secret, size_t slen, int enc)
{
    static const char *const names[3] = {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
    static const size_t key_lens[3] = {16, 32, 32};
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    if (c == NULL || SSL_version(ssl) != TLS1_3_VERSION) {
        PyErr_SetString(PyExc_ValueError, "no TLS 1.3 connection");
        return NULL;
    }
    unsigned id = SSL_CIPHER_get_protocol_id(c);
    if (id < 0x1301 || id > 0x1303) {
        PyErr_Format(PyExc_ValueError, "cipher suite 0x%04x is not protected here", id);
        return NULL;
    }
    int i = (int)(id - 0x1301);
    const EVP_MD *md = SSL_CIPHER_get_handshake_digest(c);
    if (tls13_ciphers[i] == NULL)
        tls13_ciphers[i] = EVP_CIPHER_fetch(NULL, names[i], NULL);
    Tls13Dir *d = PyMem_Calloc(1, sizeof *d);
    if (d == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (md == NULL || tls13_ciphers[i] == NULL || slen > TLS13_MAX_SECRET) {
        PyMem_Free(d);
        ERR_clear_error();
        PyErr_SetString(PyExc_ValueError, "cannot set up the record protection");
        return NULL;
    }
    d->enc = enc;
    d->suite = (unsigned char)i;
    d->md = md;
    d->key_len = key_lens[i];
    memcpy(d->secret, secret, slen);
    d->slen = (unsigned char)slen;
    if (tls13_dir_key(d) < 0) {
        tls13_dir_free(d);
        PyErr_SetString(PyExc_ValueError, "cannot set up the record protection");
        return NULL;
    }
    return d;
}

/* Whether a record's handshake messages include a KeyUpdate (type 24), which ends its record (RFC 8446 §5.1):
 * the direction moves to the next secret right after that record. */
static int
tls13_has_key_update(const unsigned char *msgs, size_t len)
{
    for (size_t j = 0; j + 4 <= len; j += 4 + ((size_t)msgs[j + 1] << 16 | (size_t)msgs[j + 2] << 8 | msgs[j + 3]))
        if (msgs[j] == 24)
            return 1;
    return 0;
}

/* The per-record nonce: the static IV XOR the 64-bit sequence number, left-padded (RFC 8446 §5.3); then seq++. */
static void
tls13_nonce(Tls13Dir *d, unsigned char *nonce)
{
    memcpy(nonce, d->iv, TLS13_NONCE);
    for (int i = 0; i < 8; i++)
        nonce[TLS13_NONCE - 1 - i] ^= (unsigned char)(d->seq >> (8 * i));
    d->seq++;
}

/* Seal `len` bytes of content type `type` into out: 5 + len + 1 + 16 bytes (header, ciphertext of the content
 * and its type, tag). len <= 16384. 0, or -1 (OpenSSL failed; the direction is unusable). */
static int
tls13_seal(Tls13Dir *d, int type, const unsigned char *data, size_t len, unsigned char *out)
{
    size_t clen = len + 1 + TLS13_TAG;
    unsigned char nonce[TLS13_NONCE], ctype = (unsigned char)type;
    int n;
    out[0] = 23;  /* opaque_type application_data, legacy_record_version 0x0303 */
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(clen >> 8);
    out[4] = (unsigned char)clen;
    tls13_nonce(d, nonce);
    EVP_CIPHER_CTX *c = tls13_ctx(d);
    if (c == NULL || EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, 1) != 1 || EVP_CipherUpdate(c, NULL, &n, out, 5) != 1
        || EVP_CipherUpdate(c, out + 5, &n, data, (int)len) != 1
        || EVP_CipherUpdate(c, out + 5 + len, &n, &ctype, 1) != 1
        || EVP_CipherFinal_ex(c, out + 5 + len + 1, &n) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, out + 5 + len + 1) != 1) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* Open one whole record (header included, `len` bytes) into out (room for len - 5 - 16 bytes): the content's
 * length, its type in *type. -1: not a protected record (bad header or length), -2: the tag does not match
 * (bad_record_mac), -3: no content type (an all-zero TLSInnerPlaintext: unexpected_message). */
static Py_ssize_t
tls13_open(Tls13Dir *d, const unsigned char *rec, size_t len, unsigned char *out, int *type)
{
    if (len < 5 + 1 + TLS13_TAG || rec[0] != 23 || rec[1] != 3 || rec[2] != 3)
        return -1;
    size_t clen = (size_t)rec[3] << 8 | rec[4];
    if (clen != len - 5 || clen > TLS13_MAX_CIPHERTEXT)
        return -1;
    unsigned char nonce[TLS13_NONCE];
    int n, m;
    tls13_nonce(d, nonce);
    EVP_CIPHER_CTX *c = tls13_ctx(d);
    if (c == NULL || EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, 0) != 1 || EVP_CipherUpdate(c, NULL, &n, rec, 5) != 1
        || EVP_CipherUpdate(c, out, &n, rec + 5, (int)(clen - TLS13_TAG)) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TLS13_TAG, (void *)(rec + len - TLS13_TAG)) != 1
        || EVP_CipherFinal_ex(c, out + n, &m) != 1) {
        ERR_clear_error();
        return -2;
    }
    Py_ssize_t plen = (Py_ssize_t)(clen - TLS13_TAG);
    while (plen > 0 && out[plen - 1] == 0)
        plen--;
    if (plen == 0)
        return -3;
    *type = out[plen - 1];
    return plen - 1;
}
