/* tls.h - the byte transport under the HTTP client: plain TCP or TLS
 * (mbedtls 2.28) behind one small ops table (pgbouncer's SBufIO).
 *
 * A tls_conn never touches a socket. Its owner puts the bytes it reads from
 * the socket into c->in (tls_conn_in_space() + tls_conn_in_commit()) and
 * writes whatever appears in c->out with uv_write. For TLS, mbedtls runs on
 * these memory BIOs: its recv callback drains c->in, its send callback
 * appends to c->out. Every op answers TLS_OK, TLS_AGAIN (mbedtls
 * WANT_READ / WANT_WRITE: feed c->in or flush c->out, then call again) or
 * TLS_ERROR (fatal for the connection; the reason is logged with c->ctx).
 *
 * Client configs are process-wide, shared per (ca_file, verify) and built
 * once: the system CA bundle plus an optional extra CA file, TLS 1.2 only,
 * ALPN http/1.1, session tickets on, one ctr_drbg seeded once for the
 * process (thread-safe: mbedtls is built with MBEDTLS_THREADING_C). SNI and
 * hostname verification use the host given to tls_conn_init_tls(); a
 * certificate that does not verify fails the handshake (with the mbedtls
 * verify reason logged) unless the config was made with verify = false. */
#ifndef TG_DAEMON_TLS_H
#define TG_DAEMON_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <mbedtls/ssl.h>

#include "daemon/base/buf.h"

#define TLS_MUSTCHECK __attribute__((warn_unused_result))

/* The system trust store read by every verifying config. */
#define TLS_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
/* Hard caps of the transport buffers (bytes). */
#define TLS_IN_MAX (256u * 1024u)  /* unconsumed socket input */
#define TLS_OUT_MAX (512u * 1024u) /* output waiting for the owner's uv_write */
#define TLS_DEC_MAX 16384u         /* one decrypted TLS record */

typedef struct tls_config tls_config;
typedef struct tls_conn tls_conn;

/* Result of every transport op. */
typedef enum tls_result {
    TLS_ERROR = -1, /* fatal for this connection; reason already logged */
    TLS_OK = 0,     /* done */
    TLS_AGAIN = 1,  /* needs more bytes in c->in, or c->out flushed, first */
} tls_result;

/* A saved TLS session to offer on the next connection to the same peer
 * (session id or ticket). Owned by whoever keeps it (the HTTP client keeps
 * one per target). */
typedef struct tls_session {
    mbedtls_ssl_session s; /* the session copied out of a finished handshake */
    bool valid;            /* s holds a session worth offering */
} tls_session;

/* The ops table: what plain TCP and TLS both implement. */
typedef struct tls_io_ops {
    /* Advances the handshake (plain: OK at once). */
    tls_result (*handshake)(tls_conn *c);
    /* Sets *out to the plaintext available now, valid until the next op on
     * c; consume() what was used. OK with out->len == 0 means the peer ended
     * the stream cleanly (TLS close_notify); AGAIN means nothing yet. */
    tls_result (*peek)(tls_conn *c, slice *out);
    /* Drops the first n bytes of what peek() returned. */
    void (*consume)(tls_conn *c, size_t n);
    /* Takes up to n plaintext bytes for sending and sets *done to how many
     * were taken (the ciphertext lands in c->out). After AGAIN, call again
     * with the same bytes once c->out was flushed. */
    tls_result (*write)(tls_conn *c, const char *p, size_t n, size_t *done);
    /* True if received bytes remain that no peek() has returned yet. */
    bool (*pending)(const tls_conn *c);
} tls_io_ops;

/* One connection's transport state; embedded in the owner's connection. */
struct tls_conn {
    const tls_io_ops *ops;   /* plain or TLS */
    buf in;                  /* socket bytes not consumed yet (ciphertext for TLS) */
    size_t in_off;           /* consumed prefix of in */
    buf out;                 /* bytes the owner must write to the socket */
    const char *ctx;         /* log context (the owner's string, outlives c) */
    bool is_tls;             /* ops is the TLS table; the fields below are used */
    bool offered;            /* TLS: a saved session was offered */
    bool resumed;            /* TLS: the handshake resumed the offered session */
    bool verify_failed;      /* TLS: the peer's certificate did not verify */
    bool done;               /* TLS: the handshake finished */
    mbedtls_ssl_context ssl; /* TLS: mbedtls state (uses the config it was made with) */
    buf dec;                 /* TLS: one decrypted record not consumed yet */
    size_t dec_off;          /* TLS: consumed prefix of dec */
};

/* Returns a reference to the shared client config for (ca_file, verify),
 * building it on first use (reads TLS_SYSTEM_CA_FILE and ca_file: blocking
 * file I/O, so acquire at startup where possible). ca_file NULL = system
 * bundle only. 0, -EINVAL (ca_file unreadable or no CA at all), -ENOMEM,
 * -EIO (random generator). */
int tls_config_acquire(const char *ca_file, bool verify, tls_config **out) TLS_MUSTCHECK;
/* Drops a reference; the config is freed with the last one. */
void tls_config_release(tls_config *cfg);

/* Sets c up as a plain TCP transport. ctx: log context, kept by pointer. */
void tls_conn_init_plain(tls_conn *c, const char *ctx);
/* Sets c up as a TLS client for host (SNI and hostname verification),
 * offering *resume when it is valid (may be NULL). cfg must outlive c.
 * 0 or -ENOMEM / -EINVAL; on error c needs no tls_conn_free(). */
int tls_conn_init_tls(tls_conn *c, tls_config *cfg, const char *host, const tls_session *resume,
                      const char *ctx) TLS_MUSTCHECK;
/* Releases everything c holds. */
void tls_conn_free(tls_conn *c);

/* Makes room in c->in for a socket read of up to want bytes: *p and *len
 * receive where to read. 0, or -E2BIG (unconsumed input at its cap), -ENOMEM. */
int tls_conn_in_space(tls_conn *c, size_t want, char **p, size_t *len) TLS_MUSTCHECK;
/* Accounts for n bytes the socket read into the space from tls_conn_in_space. */
void tls_conn_in_commit(tls_conn *c, size_t n);
/* Frees the I/O buffers that are empty (an idle connection holds none). */
void tls_conn_drop_buffers(tls_conn *c);
/* After a finished TLS handshake, copies its session into *dst (replacing
 * what dst held) so that the next connection can resume it. */
void tls_conn_save_session(tls_conn *c, tls_session *dst);

/* An empty saved session. */
void tls_session_init(tls_session *s);
/* Forgets the saved session. */
void tls_session_free(tls_session *s);

/* The ops, called through the table. */
static inline tls_result tls_handshake(tls_conn *c)
{
    return c->ops->handshake(c);
}
static inline tls_result tls_peek(tls_conn *c, slice *out)
{
    return c->ops->peek(c, out);
}
static inline void tls_consume(tls_conn *c, size_t n)
{
    c->ops->consume(c, n);
}
static inline tls_result tls_write(tls_conn *c, const char *p, size_t n, size_t *done)
{
    return c->ops->write(c, p, n, done);
}
static inline bool tls_pending(const tls_conn *c)
{
    return c->ops->pending(c);
}

#endif
