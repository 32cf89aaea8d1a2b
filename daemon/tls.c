/* tls.c - plain and TLS transports on memory BIOs, shared client configs. */
#include "daemon/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl_internal.h>
#include <mbedtls/x509_crt.h>

#include "daemon/base/log.h"

struct tls_config {
    tls_config *next;        /* tls__configs list */
    char *ca_file;           /* extra CA file, NULL = system bundle only */
    bool verify;             /* MBEDTLS_SSL_VERIFY_REQUIRED, else NONE */
    unsigned refs;           /* tls_config_acquire() references */
    mbedtls_ssl_config conf; /* the client config */
    mbedtls_x509_crt ca;     /* trusted roots */
};

/* Process-wide state, guarded by tls__lock. The DRBG is seeded once and
 * never freed (it owns no heap memory); mbedtls_ctr_drbg_random() locks its
 * own mutex, so loops on several threads may share it. */
static pthread_mutex_t tls__lock = PTHREAD_MUTEX_INITIALIZER;
static tls_config *tls__configs;
static bool tls__seeded;
static mbedtls_entropy_context tls__entropy;
static mbedtls_ctr_drbg_context tls__drbg;
static const char *tls__alpn[] = {"http/1.1", NULL};

static void tls__strerror(int rc, char *dst, size_t n)
{
    mbedtls_strerror(rc, dst, n);
}

static int tls__seed(void)
{
    static const char pers[] = "tollgate tls client";
    if (tls__seeded)
        return 0;
    mbedtls_entropy_init(&tls__entropy);
    mbedtls_ctr_drbg_init(&tls__drbg);
    int rc = mbedtls_ctr_drbg_seed(&tls__drbg, mbedtls_entropy_func, &tls__entropy,
                                   (const unsigned char *)pers, sizeof(pers) - 1);
    if (rc != 0) {
        char e[128];
        tls__strerror(rc, e, sizeof(e));
        log_error("tls", "seeding the random generator failed: %s", e);
        mbedtls_ctr_drbg_free(&tls__drbg);
        mbedtls_entropy_free(&tls__entropy);
        return -EIO;
    }
    tls__seeded = true;
    return 0;
}

static bool tls__same_file(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static void tls__config_destroy(tls_config *cfg)
{
    mbedtls_ssl_config_free(&cfg->conf);
    mbedtls_x509_crt_free(&cfg->ca);
    free(cfg->ca_file);
    free(cfg);
}

static int tls__config_build(const char *ca_file, bool verify, tls_config **out)
{
    int err = -ENOMEM;
    tls_config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return -ENOMEM;
    mbedtls_ssl_config_init(&cfg->conf);
    mbedtls_x509_crt_init(&cfg->ca);
    cfg->verify = verify;
    cfg->refs = 1;
    if (ca_file && !(cfg->ca_file = strdup(ca_file)))
        goto out_free;

    if (mbedtls_ssl_config_defaults(&cfg->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        goto out_free;
    mbedtls_ssl_conf_min_version(&cfg->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&cfg->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_rng(&cfg->conf, mbedtls_ctr_drbg_random, &tls__drbg);
    mbedtls_ssl_conf_session_tickets(&cfg->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    if (mbedtls_ssl_conf_alpn_protocols(&cfg->conf, tls__alpn) != 0)
        goto out_free;

    if (verify) {
        int n_ok = 0;
        int rc = mbedtls_x509_crt_parse_file(&cfg->ca, TLS_SYSTEM_CA_FILE);
        if (rc < 0) {
            char e[128];
            tls__strerror(rc, e, sizeof(e));
            log_warn("tls", "system CA bundle %s not loaded: %s", TLS_SYSTEM_CA_FILE, e);
        } else {
            n_ok = 1;
            if (rc > 0)
                log_debug("tls", "%d certificates of %s skipped (unparseable)", rc,
                          TLS_SYSTEM_CA_FILE);
        }
        if (ca_file) {
            rc = mbedtls_x509_crt_parse_file(&cfg->ca, ca_file);
            if (rc != 0) {
                char e[128];
                if (rc < 0)
                    tls__strerror(rc, e, sizeof(e));
                else
                    snprintf(e, sizeof(e), "%d certificates unparseable", rc);
                log_error("tls", "CA file %s not loaded: %s", ca_file, e);
                err = -EINVAL;
                goto out_free;
            }
            n_ok = 1;
        }
        if (!n_ok) {
            log_error("tls", "no trusted CA certificates: cannot verify servers");
            err = -EINVAL;
            goto out_free;
        }
        mbedtls_ssl_conf_ca_chain(&cfg->conf, &cfg->ca, NULL);
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        mbedtls_ssl_conf_authmode(&cfg->conf, MBEDTLS_SSL_VERIFY_NONE);
        log_warn("tls", "TLS certificate verification is off for CA set %s",
                 ca_file ? ca_file : "(system)");
    }
    *out = cfg;
    return 0;

out_free:
    tls__config_destroy(cfg);
    return err;
}

int tls_config_acquire(const char *ca_file, bool verify, tls_config **out)
{
    int err = 0;
    pthread_mutex_lock(&tls__lock);
    for (tls_config *c = tls__configs; c; c = c->next) {
        if (c->verify == verify && tls__same_file(c->ca_file, ca_file)) {
            c->refs++;
            *out = c;
            goto out_unlock;
        }
    }
    err = tls__seed();
    if (err)
        goto out_unlock;
    tls_config *cfg;
    err = tls__config_build(ca_file, verify, &cfg);
    if (err)
        goto out_unlock;
    cfg->next = tls__configs;
    tls__configs = cfg;
    *out = cfg;
out_unlock:
    pthread_mutex_unlock(&tls__lock);
    return err;
}

void tls_config_release(tls_config *cfg)
{
    if (!cfg)
        return;
    pthread_mutex_lock(&tls__lock);
    if (--cfg->refs == 0) {
        for (tls_config **pp = &tls__configs; *pp; pp = &(*pp)->next) {
            if (*pp == cfg) {
                *pp = cfg->next;
                break;
            }
        }
        tls__config_destroy(cfg);
    }
    pthread_mutex_unlock(&tls__lock);
}

/* ---- input buffer shared by both transports ---- */

int tls_conn_in_space(tls_conn *c, size_t want, char **p, size_t *len)
{
    if (c->in_off > 0) {
        buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    size_t room = c->in.max - c->in.len;
    if (room == 0)
        return -E2BIG;
    if (want > room)
        want = room;
    int rc = buf_reserve(&c->in, want);
    if (rc)
        return rc;
    size_t avail = c->in.cap - c->in.len;
    *p = c->in.data + c->in.len;
    *len = avail < room ? avail : room;
    return 0;
}

void tls_conn_in_commit(tls_conn *c, size_t n)
{
    c->in.len += n;
    c->in.data[c->in.len] = '\0';
}

static void tls__in_consume(tls_conn *c, size_t n)
{
    c->in_off += n;
    if (c->in_off >= c->in.len) {
        buf_reset(&c->in);
        c->in_off = 0;
    }
}

void tls_conn_drop_buffers(tls_conn *c)
{
    if (c->in_off >= c->in.len) {
        buf_free(&c->in);
        c->in_off = 0;
    }
    if (c->out.len == 0)
        buf_free(&c->out);
    if (c->is_tls && c->dec_off >= c->dec.len) {
        buf_free(&c->dec);
        c->dec_off = 0;
    }
}

/* ---- plain ---- */

static tls_result plain__handshake(tls_conn *c)
{
    return TLS_OK;
}

static tls_result plain__peek(tls_conn *c, slice *out)
{
    if (c->in_off >= c->in.len)
        return TLS_AGAIN;
    *out = slice_make(c->in.data + c->in_off, c->in.len - c->in_off);
    return TLS_OK;
}

static void plain__consume(tls_conn *c, size_t n)
{
    tls__in_consume(c, n);
}

static tls_result plain__write(tls_conn *c, const char *p, size_t n, size_t *done)
{
    size_t room = c->out.max - c->out.len;
    if (room == 0)
        return TLS_AGAIN;
    if (n > room)
        n = room;
    if (buf_append(&c->out, p, n) != 0) {
        log_error(c->ctx, "out of memory for %zu output bytes", n);
        return TLS_ERROR;
    }
    *done = n;
    return TLS_OK;
}

static bool plain__pending(const tls_conn *c)
{
    return c->in_off < c->in.len;
}

static const tls_io_ops plain__ops = {
    .handshake = plain__handshake,
    .peek = plain__peek,
    .consume = plain__consume,
    .write = plain__write,
    .pending = plain__pending,
};

void tls_conn_init_plain(tls_conn *c, const char *ctx)
{
    memset(c, 0, sizeof(*c));
    c->ops = &plain__ops;
    c->ctx = ctx;
    buf_init(&c->in, TLS_IN_MAX);
    buf_init(&c->out, TLS_OUT_MAX);
    buf_init(&c->dec, TLS_DEC_MAX);
}

/* ---- TLS ---- */

/* mbedtls recv BIO: drains c->in. */
static int tls__bio_recv(void *ctx, unsigned char *p, size_t n)
{
    tls_conn *c = ctx;
    size_t avail = c->in.len - c->in_off;
    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > avail)
        n = avail;
    memcpy(p, c->in.data + c->in_off, n);
    tls__in_consume(c, n);
    return (int)n;
}

/* mbedtls send BIO: appends to c->out. */
static int tls__bio_send(void *ctx, const unsigned char *p, size_t n)
{
    tls_conn *c = ctx;
    int rc = buf_append(&c->out, p, n);
    if (rc == -E2BIG)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    if (rc)
        return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    return (int)n;
}

static void tls__log_failure(tls_conn *c, const char *what, int rc)
{
    uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED ||
        (flags != 0 && flags != UINT32_MAX &&
         c->ssl.conf->authmode == MBEDTLS_SSL_VERIFY_REQUIRED)) {
        char info[512];
        int n = mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        if (n < 0)
            snprintf(info, sizeof(info), "flags 0x%08x", (unsigned)flags);
        /* one line: the library puts a newline after each reason */
        for (char *q = info; *q; q++)
            if (*q == '\n')
                *q = q[1] ? ';' : '\0';
        c->verify_failed = true;
        log_warn(c->ctx, "TLS certificate did not verify: %s", info);
        return;
    }
    char e[160];
    tls__strerror(rc, e, sizeof(e));
    log_warn(c->ctx, "TLS %s failed: %s (-0x%04x)", what, e, (unsigned)-rc);
}

static tls_result tls__handshake(tls_conn *c)
{
    while (c->ssl.state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        int rc = mbedtls_ssl_handshake_step(&c->ssl);
        /* After the ServerHello the client knows whether the server took
         * the offered session (mbedtls jumps straight to ChangeCipherSpec). */
        if (c->ssl.handshake && c->ssl.state > MBEDTLS_SSL_SERVER_HELLO)
            c->resumed = c->offered && c->ssl.handshake->resume;
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            return TLS_AGAIN;
        if (rc != 0) {
            tls__log_failure(c, "handshake", rc);
            return TLS_ERROR;
        }
    }
    if (!c->done) {
        c->done = true;
        const char *alpn = mbedtls_ssl_get_alpn_protocol(&c->ssl);
        log_debug(c->ctx, "TLS %s %s%s, alpn %s", mbedtls_ssl_get_version(&c->ssl),
                  mbedtls_ssl_get_ciphersuite(&c->ssl), c->resumed ? ", resumed" : "",
                  alpn ? alpn : "-");
    }
    return TLS_OK;
}

static tls_result tls__peek(tls_conn *c, slice *out)
{
    if (c->dec_off < c->dec.len) {
        *out = slice_make(c->dec.data + c->dec_off, c->dec.len - c->dec_off);
        return TLS_OK;
    }
    buf_reset(&c->dec);
    c->dec_off = 0;
    if (buf_reserve(&c->dec, TLS_DEC_MAX) != 0) {
        log_error(c->ctx, "out of memory for a TLS record");
        return TLS_ERROR;
    }
    int rc = mbedtls_ssl_read(&c->ssl, (unsigned char *)c->dec.data, TLS_DEC_MAX);
    if (rc > 0) {
        c->dec.len = (size_t)rc;
        c->dec.data[c->dec.len] = '\0';
        *out = slice_make(c->dec.data, c->dec.len);
        return TLS_OK;
    }
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        *out = slice_make(NULL, 0);
        return TLS_OK;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return TLS_AGAIN;
    tls__log_failure(c, "read", rc);
    return TLS_ERROR;
}

static void tls__consume(tls_conn *c, size_t n)
{
    c->dec_off += n;
    if (c->dec_off >= c->dec.len) {
        buf_reset(&c->dec);
        c->dec_off = 0;
    }
}

static tls_result tls__write(tls_conn *c, const char *p, size_t n, size_t *done)
{
    int rc = mbedtls_ssl_write(&c->ssl, (const unsigned char *)p, n);
    if (rc >= 0) {
        *done = (size_t)rc;
        return TLS_OK;
    }
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return TLS_AGAIN;
    tls__log_failure(c, "write", rc);
    return TLS_ERROR;
}

static bool tls__pending(const tls_conn *c)
{
    return c->dec_off < c->dec.len || c->in_off < c->in.len ||
           mbedtls_ssl_check_pending(&c->ssl) != 0;
}

static const tls_io_ops tls__ops = {
    .handshake = tls__handshake,
    .peek = tls__peek,
    .consume = tls__consume,
    .write = tls__write,
    .pending = tls__pending,
};

int tls_conn_init_tls(tls_conn *c, tls_config *cfg, const char *host, const tls_session *resume,
                      const char *ctx)
{
    int err = -ENOMEM;
    tls_conn_init_plain(c, ctx);
    c->ops = &tls__ops;
    c->is_tls = true;
    mbedtls_ssl_init(&c->ssl);
    if (mbedtls_ssl_setup(&c->ssl, &cfg->conf) != 0)
        goto out_free;
    int rc = mbedtls_ssl_set_hostname(&c->ssl, host);
    if (rc != 0) {
        err = rc == MBEDTLS_ERR_SSL_BAD_INPUT_DATA ? -EINVAL : -ENOMEM;
        goto out_free;
    }
    mbedtls_ssl_set_bio(&c->ssl, c, tls__bio_send, tls__bio_recv, NULL);
    if (resume && resume->valid) {
        if (mbedtls_ssl_set_session(&c->ssl, &resume->s) == 0)
            c->offered = true;
        else
            log_debug(ctx, "saved TLS session not offered");
    }
    return 0;

out_free:
    mbedtls_ssl_free(&c->ssl);
    return err;
}

void tls_conn_free(tls_conn *c)
{
    if (c->is_tls)
        mbedtls_ssl_free(&c->ssl);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->dec);
    c->in_off = c->dec_off = 0;
}

void tls_conn_save_session(tls_conn *c, tls_session *dst)
{
    if (!c->is_tls || !c->done)
        return;
    mbedtls_ssl_session s;
    mbedtls_ssl_session_init(&s);
    if (mbedtls_ssl_get_session(&c->ssl, &s) != 0) {
        mbedtls_ssl_session_free(&s);
        return;
    }
    tls_session_free(dst);
    dst->s = s; /* ownership of the session's allocations moves to dst */
    dst->valid = true;
}

void tls_session_init(tls_session *s)
{
    mbedtls_ssl_session_init(&s->s);
    s->valid = false;
}

void tls_session_free(tls_session *s)
{
    mbedtls_ssl_session_free(&s->s);
    mbedtls_ssl_session_init(&s->s);
    s->valid = false;
}
