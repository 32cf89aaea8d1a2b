/* httpc_testserver.c - a scriptable HTTP/1.1 server (plain TCP, or TLS with
 * mbedtls in server mode) that runs on the test's own libuv loop.
 *
 * Included by test_httpc.c and test_tls.c (#include this file). The test
 * gives a handler that is called for every complete request; the handler
 * queues steps on the connection (send bytes, wait, stream a generated
 * body with backpressure, close, reset) that run in order. The server
 * counts connections, requests, TLS handshakes and resumed sessions. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include <llhttp.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/x509_crt.h>

#include "daemon/base/buf.h"

#define TS_BODY_KEEP (4u << 20) /* request body bytes kept for the test to look at */

typedef struct ts_server ts_server;
typedef struct ts_conn ts_conn;

/* Server-side TLS: one config for all connections. */
typedef struct ts_tls {
    mbedtls_ssl_config conf; /* server config */
    mbedtls_x509_crt cert;   /* server certificate */
    mbedtls_pk_context key;  /* its key */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_cache_context cache; /* session cache (resumption by id) */
    unsigned cache_hits;             /* sessions resumed from the cache */
} ts_tls;

/* A memory BIO for an mbedtls context (in: bytes to read, out: written). */
typedef struct ts_bio {
    buf in;     /* received, not yet read by mbedtls */
    size_t off; /* consumed prefix of in */
    buf out;    /* produced by mbedtls, to send */
} ts_bio;

/* What the handler learns about a request. */
typedef struct ts_request {
    unsigned conn_id;        /* connection number on the server (1-based) */
    unsigned index;          /* request number on that connection (1-based) */
    unsigned seq;            /* request number on the server (1-based) */
    char method[16];         /* e.g. "POST" */
    char url[256];           /* request target */
    size_t body_len;         /* body bytes received (de-chunked) */
    const char *body;        /* the first TS_BODY_KEEP of them */
    char content_length[32]; /* the Content-Length header, "" if none */
} ts_request;

typedef void (*ts_handler)(ts_conn *c, const ts_request *r, void *ud);

/* Counters the tests assert on. */
typedef struct ts_stats {
    unsigned accepted;         /* connections accepted */
    unsigned open;             /* connections open now */
    unsigned max_open;         /* most connections open at once */
    unsigned closed_by_client; /* connections the client closed (EOF/reset) */
    unsigned requests;         /* complete requests */
    unsigned handshakes;       /* TLS handshakes completed */
    unsigned resumed;          /* of which resumed from the session cache */
    unsigned tls_failed;       /* TLS handshakes that failed (client alert or EOF) */
    uint64_t bytes_sent;       /* response bytes queued (plaintext) */
} ts_stats;

ts_server *ts_start(uv_loop_t *loop, const char *cert, const char *key, ts_handler h, void *ud);
void ts_set_session_cache(ts_server *s, bool on);
void ts_set_mute(ts_server *s, bool on);
uint16_t ts_port(const ts_server *s);
const ts_stats *ts_get_stats(const ts_server *s);
void ts_stop(ts_server *s);
void ts_send(ts_conn *c, const char *p, size_t n);
void ts_send_str(ts_conn *c, const char *s);
void ts_send_pieces(ts_conn *c, const char *s, size_t piece, unsigned delay_ms);
void ts_delay(ts_conn *c, unsigned ms);
void ts_pattern(ts_conn *c, size_t n);
void ts_close(ts_conn *c);
void ts_reset(ts_conn *c);
unsigned ts_conn_id(const ts_conn *c);
uint8_t ts_pattern_byte(uint64_t i);
int ts_tls_init(ts_tls *t, const char *cert, const char *key);
void ts_tls_free(ts_tls *t);
void ts_bio_init(ts_bio *b);
void ts_bio_free(ts_bio *b);
void ts_bio_attach(ts_bio *b, mbedtls_ssl_context *ssl);
uint16_t ts_free_port(uv_loop_t *loop);

/* The byte at offset i of a generated body. */
uint8_t ts_pattern_byte(uint64_t i)
{
    return (uint8_t)((i * 7u) ^ (i >> 11));
}

/* ---- TLS pieces ---- */

static int ts__cache_get(void *data, mbedtls_ssl_session *session)
{
    ts_tls *t = (ts_tls *)((char *)data - offsetof(ts_tls, cache));
    int rc = mbedtls_ssl_cache_get(data, session);
    if (rc == 0)
        t->cache_hits++;
    return rc;
}

int ts_tls_init(ts_tls *t, const char *cert, const char *key)
{
    static const char pers[] = "tollgate test server";
    memset(t, 0, sizeof(*t));
    mbedtls_ssl_config_init(&t->conf);
    mbedtls_x509_crt_init(&t->cert);
    mbedtls_pk_init(&t->key);
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->drbg);
    mbedtls_ssl_cache_init(&t->cache);
    if (mbedtls_ctr_drbg_seed(&t->drbg, mbedtls_entropy_func, &t->entropy,
                              (const unsigned char *)pers, sizeof(pers) - 1) != 0)
        return -1;
    if (mbedtls_x509_crt_parse_file(&t->cert, cert) != 0)
        return -1;
    if (mbedtls_pk_parse_keyfile(&t->key, key, NULL) != 0)
        return -1;
    if (mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        return -1;
    mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &t->drbg);
    if (mbedtls_ssl_conf_own_cert(&t->conf, &t->cert, &t->key) != 0)
        return -1;
    mbedtls_ssl_conf_session_cache(&t->conf, &t->cache, ts__cache_get, mbedtls_ssl_cache_set);
    return 0;
}

void ts_tls_free(ts_tls *t)
{
    mbedtls_ssl_config_free(&t->conf);
    mbedtls_x509_crt_free(&t->cert);
    mbedtls_pk_free(&t->key);
    mbedtls_ssl_cache_free(&t->cache);
    mbedtls_ctr_drbg_free(&t->drbg);
    mbedtls_entropy_free(&t->entropy);
}

static int ts__bio_send(void *ctx, const unsigned char *p, size_t n)
{
    ts_bio *b = ctx;
    if (buf_append(&b->out, p, n) != 0)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    return (int)n;
}

static int ts__bio_recv(void *ctx, unsigned char *p, size_t n)
{
    ts_bio *b = ctx;
    size_t avail = b->in.len - b->off;
    if (avail == 0)
        return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > avail)
        n = avail;
    memcpy(p, b->in.data + b->off, n);
    b->off += n;
    if (b->off == b->in.len) {
        buf_reset(&b->in);
        b->off = 0;
    }
    return (int)n;
}

void ts_bio_init(ts_bio *b)
{
    buf_init(&b->in, 32u << 20);
    buf_init(&b->out, 32u << 20);
    b->off = 0;
}

void ts_bio_free(ts_bio *b)
{
    buf_free(&b->in);
    buf_free(&b->out);
}

void ts_bio_attach(ts_bio *b, mbedtls_ssl_context *ssl)
{
    mbedtls_ssl_set_bio(ssl, b, ts__bio_send, ts__bio_recv, NULL);
}

/* ---- the server ---- */

enum ts_step_kind { STEP_SEND, STEP_DELAY, STEP_PATTERN, STEP_CLOSE, STEP_RESET };

typedef struct ts_step {
    struct ts_step *next;   /* queue order */
    enum ts_step_kind kind; /* what to do */
    char *data;             /* SEND: bytes (owned) */
    size_t len;             /* SEND: length; PATTERN: bytes left */
    uint64_t off;           /* PATTERN: offset of the next byte */
    unsigned ms;            /* DELAY */
} ts_step;

struct ts_conn {
    ts_server *srv;          /* owner */
    ts_conn *next;           /* srv->conns */
    uv_tcp_t tcp;            /* socket */
    uv_timer_t timer;        /* DELAY steps */
    uv_write_t wreq;         /* the running write */
    uv_shutdown_t sreq;      /* graceful close */
    unsigned id;             /* 1-based accept number */
    unsigned nreq;           /* requests seen on it */
    int handles;             /* open handles */
    bool closing;            /* uv_close issued */
    bool busy;               /* a step is running (write or delay) */
    bool tls;                /* TLS connection */
    bool hs_done;            /* TLS handshake finished */
    bool notified;           /* TLS close_notify queued */
    mbedtls_ssl_context ssl; /* TLS state */
    ts_bio bio;              /* its memory BIO (plain: bio.out is the write buffer) */
    buf wbuf;                /* bytes in the running write */
    ts_step *head, *tail;    /* script */
    llhttp_t parser;         /* request parser */
    ts_request req;          /* request being parsed */
    buf body;                /* its body (first TS_BODY_KEEP bytes) */
    bool in_cl;              /* parsing the Content-Length header */
    char field[32];          /* header name being parsed (truncated) */
    size_t field_len;        /* its length */
};

struct ts_server {
    uv_loop_t *loop;    /* the test loop */
    uv_tcp_t listener;  /* 127.0.0.1:port */
    uint16_t port;      /* bound port */
    ts_handler handler; /* called per request */
    void *ud;           /* its argument */
    bool use_tls;       /* TLS server */
    ts_tls tls;         /* TLS config when use_tls */
    ts_conn *conns;     /* open connections */
    int handles;        /* listener + connection handles open */
    bool stopping;      /* ts_stop called */
    bool mute;          /* accept connections but never read or answer */
    ts_stats st;        /* counters */
};

static void ts__run(ts_conn *c);
static void ts__conn_close(ts_conn *c, bool reset);

static void ts__maybe_free(ts_server *s)
{
    if (s->stopping && s->handles == 0) {
        if (s->use_tls)
            ts_tls_free(&s->tls);
        free(s);
    }
}

static void ts__free_steps(ts_conn *c)
{
    while (c->head) {
        ts_step *n = c->head->next;
        free(c->head->data);
        free(c->head);
        c->head = n;
    }
    c->tail = NULL;
}

static void ts__on_conn_handle_close(uv_handle_t *h)
{
    ts_conn *c = h->data;
    ts_server *s = c->srv;
    s->handles--;
    if (--c->handles > 0)
        return;
    for (ts_conn **pp = &s->conns; *pp; pp = &(*pp)->next) {
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    }
    if (c->tls)
        mbedtls_ssl_free(&c->ssl);
    ts_bio_free(&c->bio);
    buf_free(&c->wbuf);
    buf_free(&c->body);
    ts__free_steps(c);
    free(c);
    ts__maybe_free(s);
}

static void ts__conn_close(ts_conn *c, bool reset)
{
    if (c->closing)
        return;
    c->closing = true;
    c->srv->st.open--;
    if (reset)
        uv_tcp_close_reset(&c->tcp, ts__on_conn_handle_close);
    else
        uv_close((uv_handle_t *)&c->tcp, ts__on_conn_handle_close);
    uv_close((uv_handle_t *)&c->timer, ts__on_conn_handle_close);
}

static void ts__on_write(uv_write_t *req, int status)
{
    ts_conn *c = req->data;
    buf_reset(&c->wbuf);
    c->busy = false;
    if (c->closing)
        return;
    if (status < 0) {
        ts__conn_close(c, false);
        return;
    }
    ts__run(c);
}

/* Writes whatever is in bio.out; the step goes on in ts__on_write. */
static bool ts__flush(ts_conn *c)
{
    if (c->bio.out.len == 0)
        return false;
    buf tmp = c->wbuf;
    c->wbuf = c->bio.out;
    c->bio.out = tmp;
    buf_reset(&c->bio.out);
    uv_buf_t b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, ts__on_write) != 0) {
        ts__conn_close(c, false);
        return false;
    }
    c->busy = true;
    return true;
}

/* Queues plaintext for sending (encrypted for TLS). */
static void ts__put(ts_conn *c, const char *p, size_t n)
{
    c->srv->st.bytes_sent += n;
    if (!c->tls) {
        if (buf_append(&c->bio.out, p, n) != 0)
            abort();
        return;
    }
    while (n > 0) {
        int r = mbedtls_ssl_write(&c->ssl, (const unsigned char *)p, n);
        if (r <= 0)
            abort(); /* the memory BIO never blocks */
        p += r;
        n -= (size_t)r;
    }
}

static void ts__on_delay(uv_timer_t *t)
{
    ts_conn *c = t->data;
    c->busy = false;
    ts__run(c);
}

static void ts__on_shutdown(uv_shutdown_t *req, int status)
{
    ts_conn *c = req->data;
    ts__conn_close(c, false);
}

static void ts__pop(ts_conn *c)
{
    ts_step *st = c->head;
    c->head = st->next;
    if (!c->head)
        c->tail = NULL;
    free(st->data);
    free(st);
}

/* Runs script steps until one has to wait. */
static void ts__run(ts_conn *c)
{
    while (!c->busy && !c->closing && c->head) {
        ts_step *st = c->head;
        switch (st->kind) {
        case STEP_SEND:
            ts__put(c, st->data, st->len);
            ts__pop(c);
            ts__flush(c);
            break;
        case STEP_DELAY:
            c->busy = true;
            uv_timer_start(&c->timer, ts__on_delay, st->ms, 0);
            ts__pop(c);
            break;
        case STEP_PATTERN: {
            char chunk[16384];
            size_t n = st->len < sizeof(chunk) ? st->len : sizeof(chunk);
            for (size_t i = 0; i < n; i++)
                chunk[i] = (char)ts_pattern_byte(st->off + i);
            ts__put(c, chunk, n);
            st->off += n;
            st->len -= n;
            if (st->len == 0)
                ts__pop(c);
            ts__flush(c);
            break;
        }
        case STEP_CLOSE:
            if (c->tls && c->hs_done && !c->notified) {
                c->notified = true;
                mbedtls_ssl_close_notify(&c->ssl);
                if (ts__flush(c))
                    return; /* this step runs again after the write */
            }
            ts__pop(c);
            ts__free_steps(c);
            c->sreq.data = c;
            if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, ts__on_shutdown) != 0)
                ts__conn_close(c, false);
            c->busy = true;
            return;
        case STEP_RESET:
            ts__pop(c);
            ts__free_steps(c);
            ts__conn_close(c, true);
            return;
        }
    }
    if (!c->busy && !c->closing && c->bio.out.len)
        ts__flush(c); /* e.g. TLS handshake records */
}

static ts_step *ts__step(ts_conn *c, enum ts_step_kind kind)
{
    ts_step *st = calloc(1, sizeof(*st));
    if (!st)
        abort();
    st->kind = kind;
    if (c->tail)
        c->tail->next = st;
    else
        c->head = st;
    c->tail = st;
    return st;
}

void ts_send(ts_conn *c, const char *p, size_t n)
{
    ts_step *st = ts__step(c, STEP_SEND);
    st->data = malloc(n ? n : 1);
    if (!st->data)
        abort();
    memcpy(st->data, p, n);
    st->len = n;
    ts__run(c);
}

void ts_send_str(ts_conn *c, const char *s)
{
    ts_send(c, s, strlen(s));
}

/* Sends s in pieces of `piece` bytes with a pause between them. */
void ts_send_pieces(ts_conn *c, const char *s, size_t piece, unsigned delay_ms)
{
    size_t n = strlen(s);
    for (size_t off = 0; off < n; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        ts_send(c, s + off, k);
        if (off + k < n)
            ts_delay(c, delay_ms);
    }
}

void ts_delay(ts_conn *c, unsigned ms)
{
    ts__step(c, STEP_DELAY)->ms = ms;
    ts__run(c);
}

void ts_pattern(ts_conn *c, size_t n)
{
    ts__step(c, STEP_PATTERN)->len = n;
    ts__run(c);
}

void ts_close(ts_conn *c)
{
    ts__step(c, STEP_CLOSE);
    ts__run(c);
}

void ts_reset(ts_conn *c)
{
    ts__step(c, STEP_RESET);
    ts__run(c);
}

unsigned ts_conn_id(const ts_conn *c)
{
    return c->id;
}

/* ---- request parsing ---- */

static int ts__on_message_begin(llhttp_t *p)
{
    ts_conn *c = p->data;
    memset(&c->req, 0, sizeof(c->req));
    buf_reset(&c->body);
    return 0;
}

static int ts__on_url(llhttp_t *p, const char *at, size_t n)
{
    ts_conn *c = p->data;
    size_t have = strlen(c->req.url);
    if (have + n < sizeof(c->req.url))
        memcpy(c->req.url + have, at, n);
    return 0;
}

static int ts__on_header_field(llhttp_t *p, const char *at, size_t n)
{
    ts_conn *c = p->data;
    if (c->field_len + n < sizeof(c->field)) {
        memcpy(c->field + c->field_len, at, n);
        c->field_len += n;
    }
    return 0;
}

static int ts__on_header_field_complete(llhttp_t *p)
{
    ts_conn *c = p->data;
    c->field[c->field_len] = '\0';
    c->in_cl = strcasecmp(c->field, "content-length") == 0;
    c->field_len = 0;
    return 0;
}

static int ts__on_header_value(llhttp_t *p, const char *at, size_t n)
{
    ts_conn *c = p->data;
    if (c->in_cl) {
        size_t have = strlen(c->req.content_length);
        if (have + n < sizeof(c->req.content_length))
            memcpy(c->req.content_length + have, at, n);
    }
    return 0;
}

static int ts__on_body(llhttp_t *p, const char *at, size_t n)
{
    ts_conn *c = p->data;
    c->req.body_len += n;
    size_t room = TS_BODY_KEEP - c->body.len;
    if (buf_append(&c->body, at, n < room ? n : room) != 0)
        return -1;
    return 0;
}

static int ts__on_message_complete(llhttp_t *p)
{
    ts_conn *c = p->data;
    ts_server *s = c->srv;
    snprintf(c->req.method, sizeof(c->req.method), "%s",
             llhttp_method_name((llhttp_method_t)llhttp_get_method(p)));
    c->req.conn_id = c->id;
    c->req.index = ++c->nreq;
    c->req.seq = ++s->st.requests;
    c->req.body = c->body.data ? c->body.data : "";
    s->handler(c, &c->req, s->ud);
    return 0;
}

static const llhttp_settings_t ts__settings = {
    .on_message_begin = ts__on_message_begin,
    .on_url = ts__on_url,
    .on_header_field = ts__on_header_field,
    .on_header_field_complete = ts__on_header_field_complete,
    .on_header_value = ts__on_header_value,
    .on_body = ts__on_body,
    .on_message_complete = ts__on_message_complete,
};

static void ts__parse(ts_conn *c, const char *p, size_t n)
{
    if (llhttp_execute(&c->parser, p, n) != HPE_OK)
        ts__conn_close(c, false);
}

static void ts__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static char scratch[65536];
    ts_conn *c = h->data;
    if (!c->tls) {
        *b = uv_buf_init(scratch, sizeof(scratch));
        return;
    }
    if (buf_reserve(&c->bio.in, 65536) != 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(c->bio.in.data + c->bio.in.len, 65536);
}

static void ts__on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    ts_conn *c = st->data;
    if (c->closing || nread == 0)
        return;
    if (nread < 0) {
        if (c->tls && !c->hs_done)
            c->srv->st.tls_failed++;
        c->srv->st.closed_by_client++;
        ts__conn_close(c, false);
        return;
    }
    if (!c->tls) {
        ts__parse(c, b->base, (size_t)nread);
        return;
    }
    c->bio.in.len += (size_t)nread;
    if (!c->hs_done) {
        int r = mbedtls_ssl_handshake(&c->ssl);
        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
            ts__run(c);
            return;
        }
        if (r != 0) {
            c->srv->st.tls_failed++;
            ts__conn_close(c, false);
            return;
        }
        c->hs_done = true;
        c->srv->st.handshakes++;
        c->srv->st.resumed = c->srv->tls.cache_hits;
        ts__run(c);
    }
    for (;;) {
        char tmp[16384];
        int r = mbedtls_ssl_read(&c->ssl, (unsigned char *)tmp, sizeof(tmp));
        if (r > 0) {
            ts__parse(c, tmp, (size_t)r);
            if (c->closing)
                return;
            continue;
        }
        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
            return;
        /* close_notify or an error: the client is gone */
        c->srv->st.closed_by_client++;
        ts__conn_close(c, false);
        return;
    }
}

static void ts__on_connection(uv_stream_t *l, int status)
{
    ts_server *s = l->data;
    if (status < 0 || s->stopping)
        return;
    ts_conn *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c->wreq.data = c;
    c->handles = 2;
    s->handles += 2;
    c->next = s->conns;
    s->conns = c;
    ts_bio_init(&c->bio);
    buf_init(&c->wbuf, 32u << 20);
    buf_init(&c->body, TS_BODY_KEEP);
    llhttp_init(&c->parser, HTTP_REQUEST, &ts__settings);
    c->parser.data = c;
    c->id = ++s->st.accepted;
    if (++s->st.open > s->st.max_open)
        s->st.max_open = s->st.open;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        ts__conn_close(c, false);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1); /* each step leaves at once (a reset must not eat it) */
    if (s->use_tls) {
        c->tls = true;
        mbedtls_ssl_init(&c->ssl);
        if (mbedtls_ssl_setup(&c->ssl, &s->tls.conf) != 0)
            abort();
        ts_bio_attach(&c->bio, &c->ssl);
    }
    if (!s->mute)
        uv_read_start((uv_stream_t *)&c->tcp, ts__alloc, ts__on_read);
}

/* Accepted connections are left alone: nothing is read or answered. */
void ts_set_mute(ts_server *s, bool on)
{
    s->mute = on;
}

static void ts__on_listener_close(uv_handle_t *h)
{
    ts_server *s = h->data;
    s->handles--;
    ts__maybe_free(s);
}

/* Starts a server on 127.0.0.1 (a free port). cert/key NULL: plain TCP. */
ts_server *ts_start(uv_loop_t *loop, const char *cert, const char *key, ts_handler h, void *ud)
{
    ts_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->handler = h;
    s->ud = ud;
    if (cert) {
        s->use_tls = true;
        if (ts_tls_init(&s->tls, cert, key) != 0) {
            ts_tls_free(&s->tls);
            free(s);
            return NULL;
        }
    }
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->handles = 1;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    if (uv_tcp_bind(&s->listener, (const struct sockaddr *)&a, 0) != 0 ||
        uv_listen((uv_stream_t *)&s->listener, 128, ts__on_connection) != 0 ||
        uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) != 0) {
        s->stopping = true;
        uv_close((uv_handle_t *)&s->listener, ts__on_listener_close);
        return NULL;
    }
    s->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return s;
}

/* Turns the TLS session cache off (offered sessions are then refused). */
void ts_set_session_cache(ts_server *s, bool on)
{
    mbedtls_ssl_conf_session_cache(&s->tls.conf, on ? &s->tls.cache : NULL,
                                   on ? ts__cache_get : NULL, on ? mbedtls_ssl_cache_set : NULL);
}

uint16_t ts_port(const ts_server *s)
{
    return s->port;
}

const ts_stats *ts_get_stats(const ts_server *s)
{
    return &s->st;
}

/* Closes the listener and every connection; frees itself afterwards. */
void ts_stop(ts_server *s)
{
    if (!s || s->stopping)
        return;
    s->stopping = true;
    for (ts_conn *c = s->conns; c; c = c->next)
        ts__conn_close(c, false);
    uv_close((uv_handle_t *)&s->listener, ts__on_listener_close);
}

static void ts__on_probe_close(uv_handle_t *h)
{
    (void)h;
}

/* A TCP port on 127.0.0.1 that nothing listens on (bound, then released). */
uint16_t ts_free_port(uv_loop_t *loop)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_init(loop, &t);
    uv_ip4_addr("127.0.0.1", 0, &a);
    uint16_t port = 0;
    if (uv_tcp_bind(&t, (const struct sockaddr *)&a, 0) == 0 &&
        uv_tcp_getsockname(&t, (struct sockaddr *)&bound, &blen) == 0)
        port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_close((uv_handle_t *)&t, ts__on_probe_close);
    uv_run(loop, UV_RUN_NOWAIT);
    return port;
}
