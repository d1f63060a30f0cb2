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
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/provider.h>

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
    unsigned char slot;                        /* which of tls13_pshared's slots this key uses */
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

/* The same AEAD without EVP's bookkeeping: the functions of the provider implementation that EVP_CIPHER_fetch
 * chose, called directly (OSSL_PROVIDER_query_operation is public API). OpenSSL 3.0's EVP asks the provider for the
 * IV length at every EVP_CipherInit_ex with an IV (one get_ctx_params: eight OSSL_PARAM_locate/strcmp), that is at
 * every record; a direct call passes the length, which TLS 1.3 fixes at 12. The calls and their arguments are
 * those EVP makes (evp_enc.c: einit/dinit with the key, or with the IV; update with outsize = inl; final with
 * outsize 0; the tag through get/set_ctx_params), so the provider does the same work either way. Used when the
 * provider has exactly one implementation under the cipher's name with every function below; otherwise EVP is. */
typedef struct {
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_ctx_params;
    OSSL_FUNC_cipher_set_ctx_params_fn *set_ctx_params;
    void *provctx;
} Tls13Impl;

static Tls13Impl tls13_impl[3];         /* .newctx NULL: not found (or not looked up yet), EVP is used */

/* The provider's contexts, shared as tls13_shared's are, but in TLS13_SLOTS slots per suite and direction, which
 * keys take in turn. With one context and many connections taking turns (each read or write of the loop is another
 * connection's), the context would be keyed again at nearly every record (the AES key schedule and GCM's table,
 * about 250 instructions per message of a 64-byte echo on 50 connections); with slots, only once more than
 * TLS13_SLOTS keys are in use. A slot's context is allocated when first used and freed (its key cleansed) when its
 * key goes: at most 2 * TLS13_SLOTS contexts (about 1 KiB each) per suite in use, however many connections. */
#define TLS13_SLOTS 64
static void *tls13_pshared[3][2][TLS13_SLOTS];
static uint64_t tls13_pshared_id[3][2][TLS13_SLOTS];
static unsigned tls13_next_slot[2];
static int tls13_direct = 1;            /* 0: EVP for every record (_engine._set_aead_direct, for tests) */

/* Whether `name` is one of the colon-separated names of an OSSL_ALGORITHM (names are case-insensitive). */
static int
tls13_names_have(const char *names, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = names; *p;) {
        const char *e = strchr(p, ':');
        size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
        if (len == n && OPENSSL_strncasecmp(p, name, n) == 0)
            return 1;
        if (e == NULL)
            break;
        p = e + 1;
    }
    return 0;
}

/* Fill tls13_impl[i] from the provider of tls13_ciphers[i], if it has one implementation of `name`. */
static void
tls13_impl_find(int i, const char *name)
{
    Tls13Impl im = {0};
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(tls13_ciphers[i]);
    int no_store = 0, found = 0;
    const OSSL_ALGORITHM *algs = prov != NULL ? OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_store) : NULL;
    for (const OSSL_ALGORITHM *a = algs; a != NULL && a->algorithm_names != NULL; a++) {
        if (!tls13_names_have(a->algorithm_names, name))
            continue;
        if (found++)
            break;
        for (const OSSL_DISPATCH *f = a->implementation; f->function_id != 0; f++) {
            switch (f->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: im.newctx = OSSL_FUNC_cipher_newctx(f); break;
            case OSSL_FUNC_CIPHER_FREECTX: im.freectx = OSSL_FUNC_cipher_freectx(f); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT: im.einit = OSSL_FUNC_cipher_encrypt_init(f); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: im.dinit = OSSL_FUNC_cipher_decrypt_init(f); break;
            case OSSL_FUNC_CIPHER_UPDATE: im.update = OSSL_FUNC_cipher_update(f); break;
            case OSSL_FUNC_CIPHER_FINAL: im.final = OSSL_FUNC_cipher_final(f); break;
            case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: im.get_ctx_params = OSSL_FUNC_cipher_get_ctx_params(f); break;
            case OSSL_FUNC_CIPHER_SET_CTX_PARAMS: im.set_ctx_params = OSSL_FUNC_cipher_set_ctx_params(f); break;
            }
        }
    }
    if (algs != NULL)
        OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, algs);
    im.provctx = prov != NULL ? OSSL_PROVIDER_get0_provider_ctx(prov) : NULL;
    if (found == 1 && im.newctx && im.freectx && im.einit && im.dinit && im.update && im.final && im.get_ctx_params
        && im.set_ctx_params)
        tls13_impl[i] = im;
}

/* The provider's context of d's suite and direction, keyed with d's key; NULL if it cannot be made or keyed. */
static void *
tls13_pctx(Tls13Dir *d, const Tls13Impl *im)
{
    void **c = &tls13_pshared[d->suite][d->enc][d->slot];
    uint64_t *id = &tls13_pshared_id[d->suite][d->enc][d->slot];
    if (*c == NULL) {
        if ((*c = im->newctx(im->provctx)) == NULL)
            return NULL;
        *id = 0;
    }
    if (*id != d->id) {
        int ok = d->enc ? im->einit(*c, d->key, d->key_len, NULL, 0, NULL)
                        : im->dinit(*c, d->key, d->key_len, NULL, 0, NULL);
        if (ok != 1) {
            *id = 0;
            return NULL;
        }
        *id = d->id;
    }
    return *c;
}

/* d's key goes (the direction is freed, or moves to its next key): the slot that holds it is freed with it. */
static void
tls13_pctx_release(Tls13Dir *d)
{
    unsigned k = d->slot;
    void **c = &tls13_pshared[d->suite][d->enc][k];
    if (*c != NULL && tls13_pshared_id[d->suite][d->enc][k] == d->id) {
        tls13_impl[d->suite].freectx(*c);  /* (the provider cleanses the key schedule) */
        *c = NULL;
        tls13_pshared_id[d->suite][d->enc][k] = 0;
    }
}

/* Suite i's AEAD (0, 1, 2: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305), fetched on first use with the provider
 * functions that tls13_impl_find finds for it; NULL if OpenSSL has none (its error cleared). */
static EVP_CIPHER *
tls13_cipher(int i)
{
    static const char *const names[3] = {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
    if (tls13_ciphers[i] == NULL) {
        tls13_ciphers[i] = EVP_CIPHER_fetch(NULL, names[i], NULL);
        if (tls13_ciphers[i] == NULL)
            ERR_clear_error();
        else
            tls13_impl_find(i, names[i]);
    }
    return tls13_ciphers[i];
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
    tls13_pctx_release(d);
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
    if (d->id)
        tls13_pctx_release(d);  /* a KeyUpdate: the previous key goes */
    d->id = tls13_next_id++;
    d->slot = (unsigned char)(tls13_next_slot[d->enc]++ % TLS13_SLOTS);  /* in turn: 64 keys apart in time */
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
    EVP_CIPHER *cipher = tls13_cipher(i);
    Tls13Dir *d = PyMem_Calloc(1, sizeof *d);
    if (d == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (md == NULL || cipher == NULL || slen > TLS13_MAX_SECRET) {
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

/* Encrypt a record's content and type (header at out, ciphertext at out + 5, then the tag) through the provider
 * directly (tls13_impl) or through EVP: 1 done, 0 OpenSSL failed. */
static int
tls13_seal_direct(Tls13Dir *d, const Tls13Impl *im, const unsigned char *nonce, const unsigned char *data,
                  size_t len, const unsigned char *ctype, unsigned char *out)
{
    void *p = tls13_pctx(d, im);
    unsigned char *ct = out + 5, *tag = ct + len + 1;
    size_t n;
    OSSL_PARAM get[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TLS13_TAG),
                         OSSL_PARAM_construct_end()};
    return p != NULL && im->einit(p, NULL, 0, nonce, TLS13_NONCE, NULL) == 1 && im->update(p, NULL, &n, 5, out, 5) == 1
           && (len == 0 || im->update(p, ct, &n, len, data, len) == 1) && im->update(p, ct + len, &n, 1, ctype, 1) == 1
           && im->final(p, tag, &n, 0) == 1 && im->get_ctx_params(p, get) == 1;
}

static int
tls13_seal_evp(Tls13Dir *d, const unsigned char *nonce, const unsigned char *data, size_t len,
               const unsigned char *ctype, unsigned char *out)
{
    EVP_CIPHER_CTX *c = tls13_ctx(d);
    int n;
    return c != NULL && EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, 1) == 1 && EVP_CipherUpdate(c, NULL, &n, out, 5) == 1
           && EVP_CipherUpdate(c, out + 5, &n, data, (int)len) == 1
           && EVP_CipherUpdate(c, out + 5 + len, &n, ctype, 1) == 1 && EVP_CipherFinal_ex(c, out + 5 + len + 1, &n) == 1
           && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, out + 5 + len + 1) == 1;
}

/* Seal `len` bytes of content type `type` into out: 5 + len + 1 + 16 bytes (header, ciphertext of the content
 * and its type, tag). len <= 16384. 0, or -1 (OpenSSL failed; the direction is unusable). */
static int
tls13_seal(Tls13Dir *d, int type, const unsigned char *data, size_t len, unsigned char *out)
{
    size_t clen = len + 1 + TLS13_TAG;
    unsigned char nonce[TLS13_NONCE], ctype = (unsigned char)type;
    out[0] = 23;  /* opaque_type application_data, legacy_record_version 0x0303 */
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(clen >> 8);
    out[4] = (unsigned char)clen;
    tls13_nonce(d, nonce);
    const Tls13Impl *im = &tls13_impl[d->suite];
    if (!(tls13_direct && im->newctx != NULL ? tls13_seal_direct(d, im, nonce, data, len, &ctype, out)
                                             : tls13_seal_evp(d, nonce, data, len, &ctype, out))) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* Decrypt a whole record's ciphertext (clen bytes from rec + 5, the tag included) into out, as above: 1 done, 0 the
 * tag does not match (or OpenSSL failed). */
static int
tls13_open_direct(Tls13Dir *d, const Tls13Impl *im, const unsigned char *nonce, const unsigned char *rec,
                  size_t clen, unsigned char *out)
{
    void *p = tls13_pctx(d, im);
    size_t plen = clen - TLS13_TAG, n, m;
    OSSL_PARAM set[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, (void *)(rec + 5 + plen),
                                                           TLS13_TAG),
                         OSSL_PARAM_construct_end()};
    return p != NULL && im->dinit(p, NULL, 0, nonce, TLS13_NONCE, NULL) == 1 && im->update(p, NULL, &n, 5, rec, 5) == 1
           && im->update(p, out, &n, plen, rec + 5, plen) == 1 && im->set_ctx_params(p, set) == 1
           && im->final(p, out + n, &m, 0) == 1;
}

static int
tls13_open_evp(Tls13Dir *d, const unsigned char *nonce, const unsigned char *rec, size_t clen, unsigned char *out)
{
    EVP_CIPHER_CTX *c = tls13_ctx(d);
    int n, m;
    return c != NULL && EVP_CipherInit_ex(c, NULL, NULL, NULL, nonce, 0) == 1 && EVP_CipherUpdate(c, NULL, &n, rec, 5) == 1
           && EVP_CipherUpdate(c, out, &n, rec + 5, (int)(clen - TLS13_TAG)) == 1
           && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TLS13_TAG, (void *)(rec + 5 + clen - TLS13_TAG)) == 1
           && EVP_CipherFinal_ex(c, out + n, &m) == 1;
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
    tls13_nonce(d, nonce);
    const Tls13Impl *im = &tls13_impl[d->suite];
    if (!(tls13_direct && im->newctx != NULL ? tls13_open_direct(d, im, nonce, rec, clen, out)
                                             : tls13_open_evp(d, nonce, rec, clen, out))) {
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
