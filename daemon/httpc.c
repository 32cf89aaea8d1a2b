/* httpc.c - outbound HTTP/1.1 calls over pooled plain/TLS connections.
 *
 * Objects and who frees them:
 *   httpc_pool  - one per loop; freed by httpc_pool_close() once no call and
 *                 no connection is left (pool__maybe_free).
 *   hc_target   - one per (host, port, tls, verify, ca_file, proxy host,
 *                 port and credentials); lives as long as the pool. Holds
 *                 the idle list (LIFO), the waiters (FIFO), the last TLS
 *                 session and, through a proxy, the CONNECT request.
 *   hc_conn     - one TCP connection; owns uv_tcp_t + idle timer, freed in
 *                 their close callbacks (conn__on_handle_close).
 *   hc_call     - one request; begins with upstream_call; owns a timer (all
 *                 its deadlines, deferred failures and resume kicks) and is
 *                 freed in that timer's close callback.
 *
 * Callbacks to the caller run only from libuv callbacks (read, write,
 * connect, timer, DNS), never from httpc_call_start() or the upstream ops:
 * failures found synchronously there are deferred through the call's timer
 * (call__fail_later) and a resume() pumps buffered bytes from the timer.
 *
 * Through a proxy, a connection goes RESOLVING -> CONNECTING (both to the
 * proxy) -> PROXY (CONNECT written, its answer read from the still plain
 * transport) and then on exactly as a direct one from its TCP connect
 * (conn__stream_ready). */
#include "daemon/httpc.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>
#include <mbedtls/base64.h>

#include "crypto/crypto.h"
#include "daemon/base/log.h"
#include "daemon/dns.h"
#include "daemon/tls.h"

#define HC_READ_CHUNK (64u * 1024u)  /* socket read size */
#define HC_WRITE_BATCH (64u * 1024u) /* request bytes encoded before a flush */
#define HC_DEFAULT_IDLE_MS 60000u    /* idle_timeout_ms 0 */
#define HC_MAX_INTERIM 16u           /* 1xx responses accepted before the final one */
#define HC_CONNECT_MAX 4096u         /* the CONNECT request we send */
#define HC_REASON_MAX 81u            /* a proxy's reason phrase quoted in an error, with the NUL */
#define HC_B64_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* A circular doubly linked list with a sentinel. */
typedef struct hc_link {
    struct hc_link *prev, *next; /* neighbours; self when unlinked */
} hc_link;

static void link_init(hc_link *l)
{
    l->prev = l->next = l;
}
static bool link_empty(const hc_link *l)
{
    return l->next == l;
}
static void link_remove(hc_link *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    link_init(n);
}
static void link_push_front(hc_link *head, hc_link *n)
{
    n->prev = head;
    n->next = head->next;
    head->next->prev = n;
    head->next = n;
}
static void link_push_back(hc_link *head, hc_link *n)
{
    n->next = head;
    n->prev = head->prev;
    head->prev->next = n;
    head->prev = n;
}

typedef struct hc_target hc_target;
typedef struct hc_conn hc_conn;
typedef struct hc_call hc_call;

struct httpc_pool {
    uv_loop_t *loop;    /* the loop everything runs on */
    dns_cache *dns;     /* name cache shared by all targets */
    hc_target *targets; /* all targets seen */
    bool closing;       /* httpc_pool_close() called */
    unsigned ncalls;    /* calls not freed yet */
    unsigned nconns;    /* connections not freed yet */
    unsigned next_id;   /* connection numbers for log lines */
    httpc_stats st;     /* counters */
};

struct hc_target {
    hc_target *next;     /* pool->targets */
    httpc_pool *pool;    /* owner */
    char *host;          /* DNS name or literal; SNI */
    uint16_t port;       /* TCP port */
    bool tls;            /* TLS on top */
    bool verify;         /* certificate verification (tls only) */
    char *ca_file;       /* extra CA file (tls only), NULL = none */
    unsigned max_conns;  /* slot limit, 0 = none */
    unsigned idle_ms;    /* idle pooled connection lifetime */
    char *proxy_host;    /* HTTP proxy the connections CONNECT through, NULL = direct */
    uint16_t proxy_port; /* its port (proxy only) */
    char *proxy_auth;    /* Basic credentials, base64 (proxy only), NULL = none */
    buf connect;         /* the CONNECT request head, built once (proxy only) */
    tls_config *tlscfg;  /* shared TLS config (a reference), tls only */
    tls_session session; /* last TLS session, offered to new connections */
    hc_link idle;        /* idle connections, most recently used first */
    hc_link waiters;     /* calls waiting for a slot, oldest first */
    unsigned nconns;     /* connections holding a slot (all but CLOSING) */
    char ctx[300];       /* log context: "upstream host:port" */
};

enum hc_conn_state {
    CONN_RESOLVING,  /* waiting on the DNS cache (dnsq) */
    CONN_CONNECTING, /* uv_tcp_connect running on addrs[addr_idx] */
    CONN_PROXY,      /* CONNECT sent to the proxy; reading its answer */
    CONN_HANDSHAKE,  /* TLS handshake running */
    CONN_ACTIVE,     /* carrying call */
    CONN_IDLE,       /* on target->idle; idle timer running; reading only to notice a close */
    CONN_CLOSING,    /* uv_close issued; freed when the handles are closed */
};

struct hc_conn {
    uv_tcp_t tcp;                                 /* the socket */
    uv_timer_t idle_timer;                        /* closes the connection when idle too long */
    uv_connect_t creq;                            /* the running connect */
    uv_write_t wreq;                              /* the running write of wbuf */
    hc_target *target;                            /* where it goes */
    enum hc_conn_state state;                     /* see above */
    hc_call *call;                                /* the call it carries, NULL when idle */
    hc_link idle_link;                            /* in target->idle */
    tls_conn tio;                                 /* plain or TLS transport */
    buf wbuf;                                     /* bytes in the running uv_write */
    bool writing;                                 /* wreq in flight */
    bool reading;                                 /* uv_read_start active */
    bool eof;                                     /* the socket read side ended (EOF or error) */
    bool tcp_closing;                             /* tcp closing to retry the next address */
    int rerr;                                     /* read error when eof (0 = clean EOF) */
    int handles;                                  /* handles not closed yet */
    unsigned id;                                  /* number for log lines */
    unsigned ncalls;                              /* calls begun on it (> 1: reused) */
    dns_query *dnsq;                              /* running DNS query (RESOLVING) */
    size_t naddrs, addr_idx;                      /* addresses and the one being tried */
    struct sockaddr_storage addrs[DNS_MAX_ADDRS]; /* resolved addresses with the port */
};

enum hc_call_state {
    CALL_WAIT_SLOT,  /* on target->waiters */
    CALL_CONNECTING, /* conn is being resolved/connected/handshaken for it */
    CALL_EXCHANGE,   /* request being written / response being read on conn */
    CALL_DONE,       /* ended (on_done ran or aborted); freed when the timer closed */
};

/* One response header as offsets into call->hdr (the buffer may move). */
typedef struct hc_hdr {
    size_t noff, nlen; /* name */
    size_t voff, vlen; /* value */
} hc_hdr;

struct hc_call {
    upstream_call base;           /* first: the upstream contract */
    httpc_pool *pool;             /* owner */
    hc_target *target;            /* where it goes */
    hc_conn *conn;                /* CONNECTING/EXCHANGE: its connection */
    enum hc_call_state state;     /* see above */
    hc_link wait_link;            /* in target->waiters (WAIT_SLOT) */
    const upstream_callbacks *cb; /* the caller's callbacks */
    void *ud;                     /* their argument */
    uv_buf_t *req;                /* copy of the request descriptors (bytes are the caller's) */
    unsigned nreq;                /* number of descriptors */
    unsigned req_idx;             /* next descriptor to hand to the transport */
    size_t req_off;               /* offset in it */
    httpc_timeouts to;            /* timeouts */
    uv_timer_t timer;             /* the nearest deadline, deferred failure or kick */
    uint64_t total_deadline;      /* uv_now() ms, 0 = none */
    uint64_t phase_deadline;      /* uv_now() ms, 0 = none */
    uint32_t phase_ms;            /* length of the current phase timeout */
    const char *phase_err;        /* error when phase_deadline passes */
    const char *fail;             /* deferred failure to deliver from the timer */
    bool kick;                    /* pump the connection from the timer (after resume) */
    bool paused;                  /* upstream_pause() in force */
    bool aborted;                 /* no more callbacks (abort, or on_head/on_body said stop) */
    bool retried;                 /* the keep-alive race retry was used */
    bool head_only;               /* HEAD request: the response has no body */
    bool req_sent;                /* every request byte went to the socket */
    bool early;                   /* answer bytes came before the request went: no reuse */
    bool status_seen;             /* the status line arrived */
    bool head_done;               /* on_head delivered */
    bool interim;                 /* the response being parsed is a 1xx */
    bool in_field;                /* parser inside a header name */
    bool msg_complete;            /* the final response ended */
    bool parser_paused;           /* llhttp stopped with HPE_PAUSED (needs llhttp_resume) */
    const char *perr;             /* error decided inside a parser callback */
    unsigned ninterim;            /* 1xx responses skipped */
    uint64_t rx;                  /* response bytes parsed on the current connection */
    uint64_t body_bytes;          /* body bytes delivered */
    llhttp_t parser;              /* response parser */
    buf hdr;                      /* status text + header names and values (capped) */
    hc_hdr *hdrs;                 /* header offsets, HTTPC_MAX_HEADERS entries when used */
    size_t nhdrs;                 /* headers so far */

    char detail[HTTPC_ERROR_DETAIL_MAX]; /* httpc_call_error_detail(), "" = none */
};

static void conn__close(hc_conn *conn);
static void conn__send(hc_conn *conn);
static void conn__pump(hc_conn *conn);
static void conn__new(hc_target *t, hc_call *call);
static void conn__attach(hc_conn *conn, hc_call *call);
static void target__dispatch(hc_target *t);
static void call__finish(hc_call *call, const char *err);
static void call__detail(hc_call *call, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void call__begin_exchange(hc_call *call);
static void pool__maybe_free(httpc_pool *pool);

/* Where a connection's TCP goes: the proxy when there is one. */
static const char *target__dial_host(const hc_target *t)
{
    return t->proxy_host ? t->proxy_host : t->host;
}
static uint16_t target__dial_port(const hc_target *t)
{
    return t->proxy_host ? t->proxy_port : t->port;
}

/* A connection through a proxy whose tunnel is not open yet. */
static bool conn__at_proxy(const hc_conn *conn)
{
    return conn->target->proxy_host &&
           (conn->state == CONN_RESOLVING || conn->state == CONN_CONNECTING ||
            conn->state == CONN_PROXY);
}

/* Records why the call fails (httpc_call_error_detail) and logs it. */
static void call__detail(hc_call *call, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->detail, sizeof(call->detail), fmt, ap);
    va_end(ap);
    log_warn(call->target->ctx, "%s", call->detail);
}

/* Logs why a connection could not be made; at a proxy it also becomes
 * the error detail of the call waiting for it. */
__attribute__((format(printf, 2, 3))) static void conn__connect_failed(hc_conn *conn,
                                                                       const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (conn->target->proxy_host && conn->call)
        call__detail(conn->call, "proxy error: %s", msg);
    else
        log_warn(conn->target->ctx, "%s", msg);
}

/* ---- call timer: deadlines, deferred failures, kicks ---- */

static void call__on_timer(uv_timer_t *t);

static void call__arm(hc_call *call)
{
    if (call->state == CALL_DONE)
        return;
    uint64_t now = uv_now(call->pool->loop);
    uint64_t next = 0;
    if (call->fail || call->kick)
        next = now;
    if (call->total_deadline && (!next || call->total_deadline < next))
        next = call->total_deadline;
    if (call->phase_deadline && (!next || call->phase_deadline < next))
        next = call->phase_deadline;
    if (!next) {
        uv_timer_stop(&call->timer);
        return;
    }
    uv_timer_start(&call->timer, call__on_timer, next > now ? next - now : 0, 0);
}

/* Starts a phase timeout of ms (0 = none) ending with err. */
static void call__phase(hc_call *call, uint32_t ms, const char *err)
{
    call->phase_ms = ms;
    call->phase_err = err;
    call->phase_deadline = ms ? uv_now(call->pool->loop) + ms : 0;
    call__arm(call);
}

/* Ends the call with err from the timer, outside the current stack. */
static void call__fail_later(hc_call *call, const char *err)
{
    if (!call->fail)
        call->fail = err;
    call__arm(call);
}

static void call__on_timer(uv_timer_t *t)
{
    hc_call *call = t->data;
    if (call->state == CALL_DONE)
        return;
    if (call->fail) {
        call__finish(call, call->fail);
        return;
    }
    uint64_t now = uv_now(call->pool->loop);
    if (call->total_deadline && now >= call->total_deadline) {
        log_warn(call->target->ctx, "call exceeded its total time of %" PRIu32 " ms",
                 call->to.total_ms);
        call__finish(call, upstream_err_timeout_total);
        return;
    }
    if (call->phase_deadline && now >= call->phase_deadline) {
        const hc_target *tg = call->target;
        if (call->conn && conn__at_proxy(call->conn))
            call__detail(call, "proxy error: %s %s:%u timed out (%" PRIu32 " ms)",
                         call->conn->state == CONN_PROXY ? "CONNECT through" : "connecting to",
                         tg->proxy_host, (unsigned)tg->proxy_port, call->phase_ms);
        else
            log_warn(tg->ctx, "%s (%" PRIu32 " ms)", call->phase_err, call->phase_ms);
        call__finish(call, call->phase_err);
        return;
    }
    if (call->kick) {
        call->kick = false;
        if (call->conn)
            conn__pump(call->conn);
    }
    call__arm(call);
}

/* ---- call end ---- */

static void call__drop_head(hc_call *call)
{
    buf_free(&call->hdr);
    free(call->hdrs);
    call->hdrs = NULL;
    call->nhdrs = 0;
}

static void call__on_close(uv_handle_t *h)
{
    hc_call *call = h->data;
    httpc_pool *pool = call->pool;
    call__drop_head(call);
    free(call->req);
    free(call);
    pool->ncalls--;
    pool__maybe_free(pool);
}

/* The one way a call ends. A connection still attached is closed (the
 * success path releases it to the pool before). on_done runs unless the
 * call was aborted. */
static void call__finish(hc_call *call, const char *err)
{
    if (call->state == CALL_DONE)
        return;
    httpc_pool *pool = call->pool;
    if (call->state == CALL_WAIT_SLOT)
        link_remove(&call->wait_link);
    call->state = CALL_DONE;
    pool->st.calls_active--;
    uv_timer_stop(&call->timer);
    hc_conn *conn = call->conn;
    if (conn) {
        conn->call = NULL;
        call->conn = NULL;
        conn__close(conn);
    }
    call__drop_head(call);
    if (!call->aborted) {
        if (err)
            log_debug(call->target->ctx, "call failed: %s", err);
        call->cb->on_done(&call->base, err, call->ud);
    }
    uv_close((uv_handle_t *)&call->timer, call__on_close);
}

/* The connection broke (EOF, reset, write error) before the response ended:
 * retry once on a fresh connection when it was a reused one and nothing of
 * the response arrived (the keep-alive race), else fail with reset. */
static void call__conn_lost(hc_call *call, int uverr)
{
    hc_conn *conn = call->conn;
    if (call->rx == 0 && conn->ncalls > 1 && !call->retried) {
        log_info(call->target->ctx,
                 "reused connection %u closed before the response (%s); "
                 "retrying on a fresh connection",
                 conn->id, uverr ? uv_strerror(uverr) : "EOF");
        call->retried = true;
        call->pool->st.retries++;
        conn->call = NULL;
        call->conn = NULL;
        conn__new(call->target, call); /* takes a slot before the old one is given back */
        conn__close(conn);
        return;
    }
    log_warn(call->target->ctx, "connection %u: %s after %" PRIu64 " response bytes%s", conn->id,
             uverr ? uv_strerror(uverr) : "closed by the server", call->rx,
             call->req_sent ? "" : " (request not fully sent)");
    call__finish(call, upstream_err_reset);
}

/* ---- response parsing (llhttp callbacks; parser->data is the call) ---- */

static int hc__stop(hc_call *call, const char *err)
{
    call->perr = err;
    return HPE_USER;
}

static int hc__on_message_begin(llhttp_t *p)
{
    hc_call *call = p->data;
    buf_reset(&call->hdr);
    call->nhdrs = 0;
    call->in_field = false;
    return 0;
}

static int hc__on_status(llhttp_t *p, const char *at, size_t n)
{
    hc_call *call = p->data;
    if (buf_append(&call->hdr, at, n) != 0)
        return hc__stop(call, upstream_err_too_big);
    return 0;
}

static int hc__on_status_complete(llhttp_t *p)
{
    hc_call *call = p->data;
    if (!call->status_seen) {
        call->status_seen = true;
        call__phase(call, call->paused ? 0 : call->to.idle_ms, upstream_err_timeout_idle);
    }
    return 0;
}

static int hc__on_header_field(llhttp_t *p, const char *at, size_t n)
{
    hc_call *call = p->data;
    if (call->head_done)
        return 0; /* trailers: not kept */
    if (!call->in_field) {
        if (call->nhdrs >= HTTPC_MAX_HEADERS)
            return hc__stop(call, upstream_err_too_big);
        if (!call->hdrs && !(call->hdrs = calloc(HTTPC_MAX_HEADERS, sizeof(hc_hdr))))
            return hc__stop(call, upstream_err_too_big);
        call->hdrs[call->nhdrs++] = (hc_hdr){call->hdr.len, 0, 0, 0};
        call->in_field = true;
    }
    if (buf_append(&call->hdr, at, n) != 0)
        return hc__stop(call, upstream_err_too_big);
    call->hdrs[call->nhdrs - 1].nlen += n;
    return 0;
}

static int hc__on_header_field_complete(llhttp_t *p)
{
    hc_call *call = p->data;
    call->in_field = false;
    return 0;
}

static int hc__on_header_value(llhttp_t *p, const char *at, size_t n)
{
    hc_call *call = p->data;
    if (call->head_done || call->nhdrs == 0)
        return 0;
    hc_hdr *h = &call->hdrs[call->nhdrs - 1];
    if (h->vlen == 0)
        h->voff = call->hdr.len;
    if (buf_append(&call->hdr, at, n) != 0)
        return hc__stop(call, upstream_err_too_big);
    h->vlen += n;
    return 0;
}

static bool hc__ows(char c)
{
    return c == ' ' || c == '\t';
}

static int hc__on_headers_complete(llhttp_t *p)
{
    hc_call *call = p->data;
    int status = llhttp_get_status_code(p);
    if (status == 101) {
        log_warn(call->target->ctx, "unexpected 101 Switching Protocols");
        return hc__stop(call, upstream_err_protocol);
    }
    if (status >= 100 && status < 200) {
        if (++call->ninterim > HC_MAX_INTERIM) {
            log_warn(call->target->ctx, "more than %u interim responses", HC_MAX_INTERIM);
            return hc__stop(call, upstream_err_protocol);
        }
        call->interim = true;
        return 1; /* no body; parse the next response */
    }
    upstream_header *hs = NULL;
    if (call->nhdrs) {
        hs = calloc(call->nhdrs, sizeof(*hs));
        if (!hs)
            return hc__stop(call, upstream_err_too_big);
    }
    for (size_t i = 0; i < call->nhdrs; i++) {
        const hc_hdr *h = &call->hdrs[i];
        const char *v = call->hdr.data + h->voff;
        size_t vlen = h->vlen;
        while (vlen && hc__ows(*v)) {
            v++;
            vlen--;
        }
        while (vlen && hc__ows(v[vlen - 1]))
            vlen--;
        hs[i].name = slice_make(call->hdr.data + h->noff, h->nlen);
        hs[i].value = slice_make(vlen ? v : "", vlen);
    }
    call->head_done = true;
    int rc = call->cb->on_head(&call->base, status, hs, call->nhdrs, call->ud);
    free(hs);
    call__drop_head(call);
    if (call->state == CALL_DONE)
        return hc__stop(call, NULL); /* aborted inside on_head */
    if (rc != 0) {
        call->aborted = true;
        return hc__stop(call, NULL);
    }
    if (call->paused)
        return HPE_PAUSED;
    return call->head_only ? 1 : 0;
}

static int hc__on_body(llhttp_t *p, const char *at, size_t n)
{
    hc_call *call = p->data;
    call->body_bytes += n;
    int rc = call->cb->on_body(&call->base, at, n, call->ud);
    if (call->state == CALL_DONE)
        return hc__stop(call, NULL);
    if (rc != 0) {
        call->aborted = true;
        return hc__stop(call, NULL);
    }
    return call->paused ? HPE_PAUSED : 0;
}

static int hc__on_message_complete(llhttp_t *p)
{
    hc_call *call = p->data;
    if (call->interim) {
        call->interim = false;
        return 0;
    }
    call->msg_complete = true;
    return HPE_PAUSED; /* stop here: what follows is not this call's */
}

static const llhttp_settings_t hc__settings = {
    .on_message_begin = hc__on_message_begin,
    .on_status = hc__on_status,
    .on_status_complete = hc__on_status_complete,
    .on_header_field = hc__on_header_field,
    .on_header_field_complete = hc__on_header_field_complete,
    .on_header_value = hc__on_header_value,
    .on_headers_complete = hc__on_headers_complete,
    .on_body = hc__on_body,
    .on_message_complete = hc__on_message_complete,
};

/* ---- connections ---- */

static void conn__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void conn__on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    hc_conn *conn = h->data;
    char *p;
    size_t n;
    if (tls_conn_in_space(&conn->tio, HC_READ_CHUNK, &p, &n) != 0) {
        *b = uv_buf_init(NULL, 0); /* read_cb gets UV_ENOBUFS */
        return;
    }
    *b = uv_buf_init(p, (unsigned)(n < HC_READ_CHUNK ? n : HC_READ_CHUNK));
}

static void conn__update_reading(hc_conn *conn)
{
    bool want = false;
    switch (conn->state) {
    case CONN_PROXY:
    case CONN_HANDSHAKE:
    case CONN_IDLE:
        want = true;
        break;
    case CONN_ACTIVE:
        want = !(conn->call && conn->call->paused);
        break;
    default:
        break;
    }
    if (conn->eof)
        want = false;
    if (want && !conn->reading) {
        int rc = uv_read_start((uv_stream_t *)&conn->tcp, conn__on_alloc, conn__on_read);
        if (rc == 0) {
            conn->reading = true;
        } else {
            conn->eof = true;
            conn->rerr = rc;
        }
    } else if (!want && conn->reading) {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        conn->reading = false;
    }
}

static void conn__on_handle_close(uv_handle_t *h)
{
    hc_conn *conn = h->data;
    if (--conn->handles > 0)
        return;
    httpc_pool *pool = conn->target->pool;
    tls_conn_free(&conn->tio);
    buf_free(&conn->wbuf);
    free(conn);
    pool->nconns--;
    pool__maybe_free(pool);
}

/* Closes a connection for good (never pooled again) and gives its slot to
 * a waiting call. Any call on it must have been detached by the caller. */
static void conn__close(hc_conn *conn)
{
    if (conn->state == CONN_CLOSING)
        return;
    hc_target *t = conn->target;
    httpc_pool *pool = t->pool;
    if (conn->state == CONN_IDLE) {
        link_remove(&conn->idle_link);
        pool->st.conns_idle--;
    }
    if (conn->dnsq) {
        dns_cancel(conn->dnsq);
        conn->dnsq = NULL;
    }
    if (conn->call) {
        conn->call->conn = NULL;
        conn->call = NULL;
    }
    conn->state = CONN_CLOSING;
    t->nconns--;
    pool->st.conns_open--;
    log_debug(t->ctx, "connection %u closed after %u calls", conn->id, conn->ncalls);
    if (!conn->tcp_closing)
        uv_close((uv_handle_t *)&conn->tcp, conn__on_handle_close);
    uv_close((uv_handle_t *)&conn->idle_timer, conn__on_handle_close);
    target__dispatch(t);
}

static void conn__on_idle_timeout(uv_timer_t *h)
{
    hc_conn *conn = h->data;
    conn->target->pool->st.idle_closed++;
    log_debug(conn->target->ctx, "idle connection %u timed out", conn->id);
    conn__close(conn);
}

/* Writes the transport output: at once when the socket takes it all, the
 * rest through uv_write after swapping wbuf with the transport output. A
 * finished uv_write costs an epoll_ctl on the next loop turn (libuv
 * re-arms the watcher when it drops POLLOUT), one syscall per upstream
 * request, so the direct write comes first. true when nothing is left to
 * write. */
static void conn__on_write(uv_write_t *req, int status);
static bool conn__flush(hc_conn *conn)
{
    if (conn->state == CONN_CLOSING)
        return false;
    if (conn->writing)
        return false;
    if (conn->tio.out.len == 0)
        return true;
    uv_buf_t b = uv_buf_init(conn->tio.out.data, (unsigned)conn->tio.out.len);
    int n = uv_try_write((uv_stream_t *)&conn->tcp, &b, 1);
    if (n > 0) {
        buf_consume(&conn->tio.out, (size_t)n);
        if (conn->tio.out.len == 0)
            return true;
    } /* else EAGAIN, or an error uv_write reports the usual way */
    buf tmp = conn->wbuf;
    conn->wbuf = conn->tio.out;
    conn->tio.out = tmp;
    buf_reset(&conn->tio.out);
    b = uv_buf_init(conn->wbuf.data, (unsigned)conn->wbuf.len);
    int rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, &b, 1, conn__on_write);
    if (rc != 0) {
        log_error(conn->target->ctx, "connection %u: write not started: %s", conn->id,
                  uv_strerror(rc));
        buf_reset(&conn->wbuf);
        if (conn->call && conn->state == CONN_PROXY) {
            call__detail(conn->call, "proxy error: CONNECT not sent: %s", uv_strerror(rc));
            call__fail_later(conn->call, upstream_err_connect);
        } else if (conn->call) {
            call__fail_later(conn->call,
                             conn->state == CONN_HANDSHAKE ? upstream_err_tls : upstream_err_reset);
        }
        return false;
    }
    conn->writing = true;
    return false;
}

static void conn__on_write(uv_write_t *req, int status)
{
    hc_conn *conn = req->data;
    conn->writing = false;
    buf_reset(&conn->wbuf);
    if (conn->state == CONN_CLOSING)
        return;
    hc_call *call = conn->call;
    if (status < 0) {
        if (conn->state == CONN_PROXY && call) {
            call__detail(call, "proxy error: CONNECT not sent: %s", uv_strerror(status));
            call__finish(call, upstream_err_connect);
            return;
        }
        if (conn->state == CONN_HANDSHAKE && call) {
            log_warn(conn->target->ctx, "connection %u: write failed during the TLS handshake: %s",
                     conn->id, uv_strerror(status));
            call__finish(call, upstream_err_tls);
            return;
        }
        if (conn->state == CONN_ACTIVE && call) {
            if (call->rx == 0) {
                call__conn_lost(call, status);
                return;
            }
            /* the response is under way: keep reading it, the connection
             * will not be reused (req_sent stays false) */
            log_debug(conn->target->ctx, "connection %u: write failed mid-response: %s", conn->id,
                      uv_strerror(status));
            call->req_idx = call->nreq;
            return;
        }
        conn__close(conn);
        return;
    }
    if (conn->state == CONN_ACTIVE && call)
        conn__send(conn);
    else
        conn__flush(conn);
}

/* Encodes request bytes into the transport (a batch at a time) and flushes. */
static void conn__send(hc_conn *conn)
{
    hc_call *call = conn->call;
    bool progress = false, step;
    do { /* a batch at a time, as long as the socket takes each at once */
        step = false;
        while (call->req_idx < call->nreq && conn->tio.out.len < HC_WRITE_BATCH) {
            const uv_buf_t *b = &call->req[call->req_idx];
            if (call->req_off >= b->len) {
                call->req_idx++;
                call->req_off = 0;
                continue;
            }
            /* the same (p, n) again after AGAIN, as mbedtls requires */
            size_t n = b->len - call->req_off, done = 0;
            if (n > HC_WRITE_BATCH)
                n = HC_WRITE_BATCH;
            tls_result r = tls_write(&conn->tio, b->base + call->req_off, n, &done);
            if (r == TLS_AGAIN)
                break;
            if (r == TLS_ERROR) {
                call__fail_later(call, upstream_err_reset);
                return;
            }
            call->req_off += done;
            progress = step = true;
        }
    } while (conn__flush(conn) && step && call->req_idx < call->nreq);
    if (call->fail || call->req_sent)
        return;
    if (call->req_idx == call->nreq && conn->tio.out.len == 0 && !conn->writing) {
        call->req_sent = true;
        if (!call->status_seen)
            call__phase(call, call->to.first_byte_ms, upstream_err_timeout_first_byte);
    } else if (progress && !call->status_seen) {
        /* the server keeps taking the request: restart the stall timer */
        call__phase(call, call->to.first_byte_ms, upstream_err_timeout_first_byte);
    }
}

/* The final response ended: pool or close the connection, then on_done. */
static void call__complete(hc_call *call)
{
    hc_conn *conn = call->conn;
    httpc_pool *pool = call->pool;
    hc_target *t = call->target;
    bool keep = llhttp_should_keep_alive(&call->parser) && call->req_sent && !call->early &&
                !conn->eof && !tls_pending(&conn->tio) && !pool->closing;
    conn->call = NULL;
    call->conn = NULL;
    if (!keep) {
        conn__close(conn);
    } else if (!link_empty(&t->waiters)) {
        hc_call *w = container_of(t->waiters.next, hc_call, wait_link);
        link_remove(&w->wait_link);
        conn__attach(conn, w);
    } else {
        tls_conn_drop_buffers(&conn->tio); /* idle connections hold no I/O buffer */
        if (!conn->writing)
            buf_free(&conn->wbuf);
        conn->state = CONN_IDLE;
        link_push_front(&t->idle, &conn->idle_link);
        pool->st.conns_idle++;
        uv_timer_start(&conn->idle_timer, conn__on_idle_timeout, t->idle_ms, 0);
        conn__update_reading(conn);
    }
    log_debug(t->ctx, "response complete, %" PRIu64 " body bytes, connection %s", call->body_bytes,
              keep ? "kept" : "closed");
    call__finish(call, NULL);
}

/* Feeds plaintext to the parser; returns the bytes it took. */
static size_t call__parse(hc_call *call, const char *p, size_t n)
{
    if (call->parser_paused) {
        llhttp_resume(&call->parser);
        call->parser_paused = false;
    }
    llhttp_errno_t e = llhttp_execute(&call->parser, p, n);
    if (e == HPE_OK)
        return n;
    const char *pos = llhttp_get_error_pos(&call->parser);
    size_t used = pos && pos >= p && pos <= p + n ? (size_t)(pos - p) : n;
    if (e == HPE_PAUSED) {
        call->parser_paused = true;
        return used;
    }
    if (!call->perr && !call->aborted && call->state != CALL_DONE) {
        log_warn(call->target->ctx, "invalid HTTP response: %s (%s)", llhttp_errno_name(e),
                 llhttp_get_error_reason(&call->parser));
        call->perr = upstream_err_protocol;
    }
    return used;
}

/* The stream ended (TCP EOF, read error, TLS close_notify) with everything
 * before it parsed. */
static void conn__on_stream_end(hc_conn *conn)
{
    hc_call *call = conn->call;
    conn->eof = true;
    conn__update_reading(conn);
    if (call->rx > 0 && !call->msg_complete && call->state == CALL_EXCHANGE) {
        if (call->parser_paused) {
            llhttp_resume(&call->parser);
            call->parser_paused = false;
        }
        /* a body read until close ends here; anything else was cut short */
        llhttp_finish(&call->parser);
        if (call->state == CALL_DONE)
            return;
        if (call->msg_complete) {
            call__complete(call);
            return;
        }
        if (call->perr || call->aborted) {
            call__finish(call, call->perr);
            return;
        }
    }
    call__conn_lost(call, conn->rerr);
}

/* Delivers what the transport has for the active call, as far as the call
 * allows (pause, end, abort). */
static void conn__read_response(hc_conn *conn)
{
    hc_call *call = conn->call;
    while (call && call->state == CALL_EXCHANGE && conn->call == call && !call->paused) {
        slice s;
        tls_result r = tls_peek(&conn->tio, &s);
        conn__flush(conn); /* TLS may have produced alerts or the like */
        if (r == TLS_AGAIN) {
            if (conn->eof)
                conn__on_stream_end(conn);
            return;
        }
        if (r == TLS_ERROR) {
            log_warn(conn->target->ctx,
                     "connection %u: TLS failure after %" PRIu64 " response bytes", conn->id,
                     call->rx);
            call__finish(call, upstream_err_reset);
            return;
        }
        if (s.len == 0) { /* close_notify */
            conn__on_stream_end(conn);
            return;
        }
        size_t used = call__parse(call, s.p, s.len);
        call->rx += used;
        if (call->state == CALL_DONE)
            return; /* aborted inside a callback */
        tls_consume(&conn->tio, used);
        if (call->perr || call->aborted) {
            if (call->perr == upstream_err_too_big)
                log_warn(conn->target->ctx, "response head over %u bytes or %u headers",
                         HTTPC_MAX_HEADER_BYTES, HTTPC_MAX_HEADERS);
            call__finish(call, call->perr);
            return;
        }
        if (call->msg_complete) {
            call__complete(call);
            return;
        }
    }
}

static void conn__handshake(hc_conn *conn)
{
    hc_call *call = conn->call;
    hc_target *t = conn->target;
    tls_result r = tls_handshake(&conn->tio);
    conn__flush(conn);
    if (conn->state != CONN_HANDSHAKE || call->fail)
        return;
    if (r == TLS_AGAIN) {
        if (conn->eof) {
            log_warn(t->ctx, "connection %u closed during the TLS handshake%s%s", conn->id,
                     conn->rerr ? ": " : "", conn->rerr ? uv_strerror(conn->rerr) : "");
            tls_session_free(&t->session);
            call__finish(call, upstream_err_tls);
        }
        return;
    }
    if (r == TLS_ERROR) {
        tls_session_free(&t->session);
        call__finish(call, upstream_err_tls);
        return;
    }
    t->pool->st.tls_handshakes++;
    if (conn->tio.resumed)
        t->pool->st.tls_resumed++;
    tls_conn_save_session(&conn->tio, &t->session);
    conn->state = CONN_ACTIVE;
    call__begin_exchange(call);
    if (conn->state == CONN_ACTIVE && conn->call == call)
        conn__read_response(conn); /* application data may have come with the Finished */
}

/* Turns the plain transport into TLS, keeping the bytes it received and
 * did not consume (what a proxy sent after its answer belongs to TLS). On
 * error the transport is plain again. */
static int conn__start_tls(hc_conn *conn)
{
    hc_target *t = conn->target;
    buf early = conn->tio.in;
    size_t early_off = conn->tio.in_off;
    buf_init(&conn->tio.in, TLS_IN_MAX);
    tls_conn_free(&conn->tio);
    int rc = tls_conn_init_tls(&conn->tio, t->tlscfg, t->host, &t->session, t->ctx);
    if (rc != 0) {
        buf_free(&early);
        tls_conn_init_plain(&conn->tio, t->ctx);
        return rc;
    }
    conn->tio.in = early; /* tls_conn_init_tls() allocated no input buffer */
    conn->tio.in_off = early_off;
    return 0;
}

/* A byte stream to the target is up (TCP connected, or the proxy opened
 * the tunnel): the TLS handshake, or the exchange right away. */
static void conn__stream_ready(hc_conn *conn)
{
    hc_call *call = conn->call;
    hc_target *t = conn->target;
    if (!t->tls) {
        conn->state = CONN_ACTIVE;
        bool early = tls_pending(&conn->tio); /* a proxy sent bytes after its answer */
        call__begin_exchange(call);
        if (conn->state == CONN_ACTIVE && conn->call == call && early) {
            call->early = true; /* read before the request went, whenever it went */
            conn__read_response(conn);
        }
        return;
    }
    int rc = conn__start_tls(conn);
    if (rc != 0) {
        log_error(t->ctx, "TLS setup failed: %s", strerror(-rc));
        call__finish(call, upstream_err_tls);
        return;
    }
    conn->state = CONN_HANDSHAKE;
    call__phase(call, call->to.tls_ms, upstream_err_timeout_tls);
    conn__update_reading(conn);
    conn__handshake(conn);
}

/* TCP to the proxy is up: ask it for a tunnel to the target. The connect
 * timeout still runs. */
static void conn__proxy_start(hc_conn *conn)
{
    hc_target *t = conn->target;
    size_t done = 0;
    conn->state = CONN_PROXY;
    if (tls_write(&conn->tio, t->connect.data, t->connect.len, &done) != TLS_OK ||
        done != t->connect.len) {
        call__detail(conn->call, "proxy error: CONNECT not sent: out of memory");
        call__finish(conn->call, upstream_err_connect);
        return;
    }
    conn__update_reading(conn);
    conn__flush(conn);
}

/* Length of the head at the start of p up to and including its blank line
 * (CRLF or bare LF line ends); 0 while it has not ended. */
static size_t hc__head_len(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

static bool hc__digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Parses the status line "HTTP/1.x NNN reason" at the start of a head of
 * n bytes (which holds a line end). */
static bool hc__status_line(const char *p, size_t n, int *status, slice *reason)
{
    const char *eol = memchr(p, '\n', n);
    size_t len = eol ? (size_t)(eol - p) : n;
    if (len && p[len - 1] == '\r')
        len--;
    if (len < 12 || memcmp(p, "HTTP/1.", 7) != 0 || !hc__digit(p[7]) || p[8] != ' ' ||
        !hc__digit(p[9]) || !hc__digit(p[10]) || !hc__digit(p[11]) || (len > 12 && p[12] != ' '))
        return false;
    *status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    *reason = len > 13 ? slice_make(p + 13, len - 13) : slice_make("", 0);
    return true;
}

/* Copies s into dst[cap] as printable ASCII ('?' for anything else),
 * truncated. */
static void hc__printable(char *dst, size_t cap, slice s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        dst[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    dst[n] = '\0';
}

/* Reads the proxy's answer to CONNECT from the (still plain) transport;
 * a 2xx opens the tunnel, anything else fails the call as a connect
 * failure. */
static void conn__proxy_read(hc_conn *conn)
{
    hc_call *call = conn->call;
    slice s = {NULL, 0};
    if (tls_peek(&conn->tio, &s) != TLS_OK)
        s.len = 0;
    size_t scan = s.len < HTTPC_PROXY_MAX_HEAD ? s.len : HTTPC_PROXY_MAX_HEAD;
    size_t head = hc__head_len(s.p, scan);
    int status = 0;
    slice reason;
    if (!head) {
        if (scan == HTTPC_PROXY_MAX_HEAD)
            call__detail(call, "proxy error: answer to CONNECT over %u bytes",
                         HTTPC_PROXY_MAX_HEAD);
        else if (conn->eof)
            call__detail(call, "proxy error: %s before the answer to CONNECT ended",
                         conn->rerr ? uv_strerror(conn->rerr) : "connection closed");
        else
            return; /* more to come */
        call__finish(call, upstream_err_connect);
        return;
    }
    if (!hc__status_line(s.p, head, &status, &reason)) {
        call__detail(call, "proxy error: invalid answer to CONNECT");
        call__finish(call, upstream_err_connect);
        return;
    }
    if (status < 200 || status > 299) {
        char r[HC_REASON_MAX];
        hc__printable(r, sizeof(r), reason);
        call__detail(call, "proxy refused CONNECT: %d%s%s", status, r[0] ? " " : "", r);
        call__finish(call, upstream_err_connect);
        return;
    }
    tls_consume(&conn->tio, head);
    conn->target->pool->st.tunnels++;
    log_debug(conn->target->ctx, "connection %u: tunnel open", conn->id);
    conn__stream_ready(conn);
}

static void conn__pump(hc_conn *conn)
{
    if (conn->state == CONN_HANDSHAKE)
        conn__handshake(conn);
    else if (conn->state == CONN_ACTIVE && conn->call)
        conn__read_response(conn);
}

static void conn__on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    hc_conn *conn = s->data;
    if (conn->state == CONN_CLOSING || nread == 0)
        return;
    httpc_pool *pool = conn->target->pool;
    if (nread > 0) {
        tls_conn_in_commit(&conn->tio, (size_t)nread);
        pool->st.bytes_in += (uint64_t)nread;
    } else {
        conn->eof = true;
        conn->rerr = nread == UV_EOF ? 0 : (int)nread;
        conn__update_reading(conn);
    }
    switch (conn->state) {
    case CONN_IDLE:
        pool->st.idle_closed++;
        log_debug(conn->target->ctx, "idle connection %u %s", conn->id,
                  nread > 0 ? "got unexpected bytes" : "closed by the server");
        conn__close(conn);
        break;
    case CONN_PROXY:
        conn__proxy_read(conn);
        break;
    case CONN_HANDSHAKE:
        conn__handshake(conn);
        break;
    case CONN_ACTIVE:
        if (nread > 0 && conn->call && conn->call->status_seen && !conn->call->paused)
            call__phase(conn->call, conn->call->to.idle_ms, upstream_err_timeout_idle);
        conn__read_response(conn);
        break;
    default:
        break;
    }
}

static void conn__try_connect(hc_conn *conn);

static void conn__on_tcp_recycled(uv_handle_t *h)
{
    hc_conn *conn = h->data;
    conn->tcp_closing = false;
    if (conn->state == CONN_CLOSING) {
        conn__on_handle_close(h);
        return;
    }
    uv_tcp_init(conn->target->pool->loop, &conn->tcp);
    conn->tcp.data = conn;
    conn__try_connect(conn);
}

static void conn__on_connect(uv_connect_t *req, int status)
{
    hc_conn *conn = req->data;
    if (conn->state == CONN_CLOSING)
        return;
    hc_call *call = conn->call;
    hc_target *t = conn->target;
    if (status < 0) {
        char ip[64] = "?";
        const struct sockaddr *sa = (const struct sockaddr *)&conn->addrs[conn->addr_idx];
        if (sa->sa_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof(ip));
        else
            uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof(ip));
        if (++conn->addr_idx < conn->naddrs) {
            log_debug(t->ctx, "connect to %s failed: %s; trying the next address", ip,
                      uv_strerror(status));
            conn->tcp_closing = true;
            uv_close((uv_handle_t *)&conn->tcp, conn__on_tcp_recycled);
            return;
        }
        conn__connect_failed(conn, "connect to %s failed: %s", ip, uv_strerror(status));
        call__finish(call, upstream_err_connect);
        return;
    }
    t->pool->st.conns_opened++;
    uv_tcp_nodelay(&conn->tcp, 1);
    uv_tcp_keepalive(&conn->tcp, 1, 60);
    if (t->proxy_host)
        conn__proxy_start(conn);
    else
        conn__stream_ready(conn);
}

static void conn__try_connect(hc_conn *conn)
{
    hc_call *call = conn->call;
    int rc = UV_EINVAL;
    while (conn->addr_idx < conn->naddrs) {
        rc =
            uv_tcp_connect(&conn->creq, &conn->tcp,
                           (const struct sockaddr *)&conn->addrs[conn->addr_idx], conn__on_connect);
        if (rc == 0) {
            conn->state = CONN_CONNECTING;
            return;
        }
        if (conn->addr_idx + 1 < conn->naddrs) {
            /* the handle may hold a socket of the wrong family now */
            conn->addr_idx++;
            conn->tcp_closing = true;
            uv_close((uv_handle_t *)&conn->tcp, conn__on_tcp_recycled);
            return;
        }
        break;
    }
    conn__connect_failed(conn, "connect not started: %s", uv_strerror(rc));
    call__finish(call, upstream_err_connect);
}

static void conn__on_resolved(int status, const dns_result *res, void *ud)
{
    hc_conn *conn = ud;
    conn->dnsq = NULL;
    hc_target *t = conn->target;
    if (status != 0) {
        conn__connect_failed(conn, "cannot resolve %s: %s", target__dial_host(t),
                             uv_strerror(status));
        call__finish(conn->call, upstream_err_dns);
        return;
    }
    conn->naddrs = 0;
    for (size_t i = 0; i < res->naddrs && i < DNS_MAX_ADDRS; i++) {
        struct sockaddr_storage *a = &conn->addrs[conn->naddrs++];
        *a = res->addrs[i];
        if (a->ss_family == AF_INET6)
            ((struct sockaddr_in6 *)a)->sin6_port = htons(target__dial_port(t));
        else
            ((struct sockaddr_in *)a)->sin_port = htons(target__dial_port(t));
    }
    conn->addr_idx = 0;
    conn__try_connect(conn);
}

/* Opens a fresh connection for call (which takes a slot). */
static void conn__new(hc_target *t, hc_call *call)
{
    httpc_pool *pool = t->pool;
    call->state = CALL_CONNECTING;
    call__phase(call, call->to.connect_ms, upstream_err_timeout_connect);
    hc_conn *conn = calloc(1, sizeof(*conn));
    if (!conn) {
        log_error(t->ctx, "out of memory for a connection");
        call__fail_later(call, upstream_err_connect);
        return;
    }
    conn->target = t;
    conn->id = ++pool->next_id;
    link_init(&conn->idle_link);
    tls_conn_init_plain(&conn->tio, t->ctx);
    buf_init(&conn->wbuf, TLS_OUT_MAX);
    uv_tcp_init(pool->loop, &conn->tcp);
    uv_timer_init(pool->loop, &conn->idle_timer);
    conn->tcp.data = conn;
    conn->idle_timer.data = conn;
    conn->creq.data = conn;
    conn->wreq.data = conn;
    conn->handles = 2;
    conn->state = CONN_RESOLVING;
    conn->call = call;
    call->conn = conn;
    t->nconns++;
    pool->nconns++;
    pool->st.conns_open++;
    int rc = dns_resolve(pool->dns, target__dial_host(t), conn__on_resolved, conn, &conn->dnsq);
    if (rc != 0) {
        conn->dnsq = NULL;
        conn__connect_failed(conn, "cannot resolve %s: %s", target__dial_host(t), strerror(-rc));
        call__fail_later(call, upstream_err_dns);
    }
}

/* Gives call a connection that is idle in the pool or just finished a
 * response (keep-alive), and starts the exchange on it. */
static void conn__attach(hc_conn *conn, hc_call *call)
{
    httpc_pool *pool = conn->target->pool;
    if (conn->state == CONN_IDLE) {
        link_remove(&conn->idle_link);
        pool->st.conns_idle--;
        uv_timer_stop(&conn->idle_timer);
    }
    conn->state = CONN_ACTIVE;
    conn->call = call;
    call->conn = conn;
    pool->st.conns_reused++;
    call__begin_exchange(call);
}

/* The call starts using its connection (fresh, or taken from the pool). */
static void call__begin_exchange(hc_call *call)
{
    hc_conn *conn = call->conn;
    conn->ncalls++;
    call->state = CALL_EXCHANGE;
    call->rx = 0;
    call->req_idx = 0;
    call->req_off = 0;
    call->req_sent = false;
    call->early = false;
    call->status_seen = false;
    call->msg_complete = false;
    call->parser_paused = false;
    llhttp_init(&call->parser, HTTP_RESPONSE, &hc__settings);
    call->parser.data = call;
    call__phase(call, call->to.first_byte_ms, upstream_err_timeout_first_byte);
    conn__update_reading(conn);
    conn__send(conn);
}

/* Gives waiting calls an idle connection or a free slot, oldest first. */
static void target__dispatch(hc_target *t)
{
    while (!link_empty(&t->waiters)) {
        hc_call *w = container_of(t->waiters.next, hc_call, wait_link);
        if (!link_empty(&t->idle)) {
            link_remove(&w->wait_link);
            conn__attach(container_of(t->idle.next, hc_conn, idle_link), w);
            continue;
        }
        if (t->max_conns && t->nconns >= t->max_conns)
            break;
        link_remove(&w->wait_link);
        conn__new(t, w);
    }
}

/* ---- upstream ops ---- */

static void call__pause(upstream_call *base)
{
    hc_call *call = (hc_call *)base;
    if (call->state == CALL_DONE || call->paused)
        return;
    call->paused = true;
    if (call->state == CALL_EXCHANGE) {
        conn__update_reading(call->conn);
        if (call->status_seen) /* not the server's fault while we do not read */
            call__phase(call, 0, NULL);
    }
}

static void call__resume(upstream_call *base)
{
    hc_call *call = (hc_call *)base;
    if (call->state == CALL_DONE || !call->paused)
        return;
    call->paused = false;
    if (call->state != CALL_EXCHANGE)
        return;
    conn__update_reading(call->conn);
    if (call->status_seen)
        call__phase(call, call->to.idle_ms, upstream_err_timeout_idle);
    call->kick = true; /* buffered bytes are delivered from the loop */
    call__arm(call);
}

static void call__abort(upstream_call *base)
{
    hc_call *call = (hc_call *)base;
    if (call->state == CALL_DONE)
        return;
    call->aborted = true;
    log_debug(call->target->ctx, "call aborted by the caller after %" PRIu64 " body bytes",
              call->body_bytes);
    call__finish(call, NULL);
}

static const upstream_ops hc__ops = {
    .pause = call__pause,
    .resume = call__resume,
    .abort = call__abort,
};

/* ---- pool and targets ---- */

static void target__free(hc_target *t)
{
    tls_session_free(&t->session);
    tls_config_release(t->tlscfg);
    free(t->host);
    free(t->ca_file);
    free(t->proxy_host);
    free(t->proxy_auth);
    buf_free(&t->connect);
    free(t);
}

static void pool__maybe_free(httpc_pool *pool)
{
    if (!pool->closing || pool->ncalls > 0 || pool->nconns > 0)
        return;
    hc_target *t = pool->targets;
    while (t) {
        hc_target *n = t->next;
        target__free(t);
        t = n;
    }
    dns_cache_close(pool->dns);
    free(pool);
}

static bool same_str(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* The proxy of a target spec, NULL for a direct one. */
static const char *spec__proxy(const httpc_target *spec)
{
    return spec->proxy_host && spec->proxy_host[0] ? spec->proxy_host : NULL;
}
static const char *spec__proxy_auth(const httpc_target *spec)
{
    return spec__proxy(spec) && spec->proxy_auth && spec->proxy_auth[0] ? spec->proxy_auth : NULL;
}

/* Text that can stand in a request head: printable ASCII, no blank. */
static bool hc__head_safe(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* A proxied spec whose names and credentials can go into the CONNECT head. */
static bool spec__proxy_valid(const httpc_target *spec)
{
    const char *auth = spec__proxy_auth(spec);
    return spec->proxy_port && hc__head_safe(spec->host) && hc__head_safe(spec->proxy_host) &&
           (!auth || strspn(auth, HC_B64_CHARS) == strlen(auth));
}

/* The CONNECT request for t: authority host:port (an IPv6 literal in
 * brackets) in the request line and Host, then the credentials. */
static int target__build_connect(hc_target *t)
{
    bool v6 = strchr(t->host, ':') && t->host[0] != '[';
    const char *lb = v6 ? "[" : "", *rb = v6 ? "]" : "";
    unsigned port = t->port;
    int rc = buf_printf(&t->connect, "CONNECT %s%s%s:%u HTTP/1.1\r\nHost: %s%s%s:%u\r\n", lb,
                        t->host, rb, port, lb, t->host, rb, port);
    if (!rc && t->proxy_auth)
        rc = buf_printf(&t->connect, "Proxy-Authorization: Basic %s\r\n", t->proxy_auth);
    if (!rc)
        rc = buf_append_str(&t->connect, "\r\n");
    return rc == -ENOMEM ? -ENOMEM : rc ? -EINVAL : 0;
}

static int target__get(httpc_pool *pool, const httpc_target *spec, hc_target **out)
{
    bool verify = spec->tls && spec->tls_verify;
    const char *ca = spec->tls ? spec->ca_file : NULL;
    const char *proxy = spec__proxy(spec), *auth = spec__proxy_auth(spec);
    uint16_t proxy_port = proxy ? spec->proxy_port : 0;
    hc_target *t;
    int rc;
    for (t = pool->targets; t; t = t->next) {
        if (t->port == spec->port && t->tls == spec->tls && t->verify == verify &&
            strcmp(t->host, spec->host) == 0 && same_str(t->ca_file, ca) &&
            same_str(t->proxy_host, proxy) && t->proxy_port == proxy_port &&
            same_str(t->proxy_auth, auth))
            goto out_found;
    }
    t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->pool = pool;
    t->port = spec->port;
    t->tls = spec->tls;
    t->verify = verify;
    t->proxy_port = proxy_port;
    link_init(&t->idle);
    link_init(&t->waiters);
    tls_session_init(&t->session);
    buf_init(&t->connect, HC_CONNECT_MAX);
    if (proxy)
        snprintf(t->ctx, sizeof(t->ctx), "upstream %s:%u via %s:%u", spec->host,
                 (unsigned)spec->port, proxy, (unsigned)proxy_port);
    else
        snprintf(t->ctx, sizeof(t->ctx), "upstream %s:%u", spec->host, (unsigned)spec->port);
    if (!(t->host = strdup(spec->host)) || (ca && !(t->ca_file = strdup(ca))) ||
        (proxy && !(t->proxy_host = strdup(proxy))) || (auth && !(t->proxy_auth = strdup(auth)))) {
        target__free(t);
        return -ENOMEM;
    }
    if (proxy && (rc = target__build_connect(t)) != 0) {
        target__free(t);
        return rc;
    }
    if (t->tls) {
        rc = tls_config_acquire(t->ca_file, t->verify, &t->tlscfg);
        if (rc != 0) {
            log_error(t->ctx, "no TLS configuration: %s", strerror(-rc));
            target__free(t);
            return rc == -ENOMEM ? -ENOMEM : -EIO;
        }
    }
    t->next = pool->targets;
    pool->targets = t;
out_found:
    t->max_conns = spec->max_connections;
    t->idle_ms = spec->idle_timeout_ms ? spec->idle_timeout_ms : HC_DEFAULT_IDLE_MS;
    *out = t;
    return 0;
}

httpc_pool *httpc_pool_new(uv_loop_t *loop)
{
    httpc_pool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return NULL;
    pool->loop = loop;
    pool->dns = dns_cache_new(loop, HTTPC_DNS_TTL_MS, HTTPC_DNS_MAX_NAMES);
    if (!pool->dns) {
        free(pool);
        return NULL;
    }
    return pool;
}

void httpc_pool_close(httpc_pool *pool)
{
    if (!pool || pool->closing)
        return;
    pool->closing = true;
    for (hc_target *t = pool->targets; t; t = t->next)
        while (!link_empty(&t->idle))
            conn__close(container_of(t->idle.next, hc_conn, idle_link));
    pool__maybe_free(pool);
}

void httpc_pool_stats(const httpc_pool *pool, httpc_stats *out)
{
    *out = pool->st;
    dns_stats ds;
    dns_cache_stats(pool->dns, &ds);
    out->dns_lookups = ds.lookups;
}

int httpc_call_start(httpc_pool *pool, const httpc_target *t, const httpc_timeouts *to,
                     const uv_buf_t *req, unsigned nreq, const upstream_callbacks *cb, void *ud,
                     upstream_call **out)
{
    if (!pool || !t || !t->host || !t->host[0] || !t->port || !req || !nreq || !cb ||
        !cb->on_head || !cb->on_body || !cb->on_done || !out)
        return -EINVAL;
    if (spec__proxy(t) && !spec__proxy_valid(t))
        return -EINVAL;
    if (pool->closing)
        return -ESHUTDOWN;
    hc_target *tg;
    int rc = target__get(pool, t, &tg);
    if (rc != 0)
        return rc;
    hc_call *call = calloc(1, sizeof(*call));
    if (!call)
        return -ENOMEM;
    call->req = malloc(nreq * sizeof(*call->req));
    if (!call->req) {
        free(call);
        return -ENOMEM;
    }
    memcpy(call->req, req, nreq * sizeof(*req));
    call->nreq = nreq;
    call->base.ops = &hc__ops;
    call->pool = pool;
    call->target = tg;
    call->cb = cb;
    call->ud = ud;
    if (to)
        call->to = *to;
    link_init(&call->wait_link);
    buf_init(&call->hdr, HTTPC_MAX_HEADER_BYTES);
    call->head_only = req[0].len >= 5 && memcmp(req[0].base, "HEAD ", 5) == 0;
    uv_timer_init(pool->loop, &call->timer);
    call->timer.data = call;
    pool->ncalls++;
    pool->st.calls++;
    pool->st.calls_active++;
    if (call->to.total_ms)
        call->total_deadline = uv_now(pool->loop) + call->to.total_ms;

    if (link_empty(&tg->waiters) && !link_empty(&tg->idle)) {
        conn__attach(container_of(tg->idle.next, hc_conn, idle_link), call);
    } else if (link_empty(&tg->waiters) && (!tg->max_conns || tg->nconns < tg->max_conns)) {
        conn__new(tg, call);
    } else {
        call->state = CALL_WAIT_SLOT;
        link_push_back(&tg->waiters, &call->wait_link);
        pool->st.queued++;
        call__phase(call, call->to.connect_ms, upstream_err_timeout_connect);
        log_debug(tg->ctx, "all %u connections busy; call waits", tg->max_conns);
    }
    *out = &call->base;
    return 0;
}

const char *httpc_call_error_detail(const upstream_call *call)
{
    return ((const hc_call *)call)->detail;
}

/* ---- NO_PROXY lists and proxy URLs ---- */

static bool hc__blank(char c)
{
    return c == ' ' || c == '\t';
}

/* The IP literal s[n] (IPv6 without brackets) as bytes; false for a name. */
static bool hc__ip(const char *s, size_t n, unsigned char addr[16], int *family)
{
    char tmp[64];
    if (n == 0 || n >= sizeof(tmp))
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(addr, 0, 16);
    if (uv_inet_pton(AF_INET, tmp, addr) == 0)
        *family = AF_INET;
    else if (uv_inet_pton(AF_INET6, tmp, addr) == 0)
        *family = AF_INET6;
    else
        return false;
    return true;
}

/* One NO_PROXY entry without the blanks around it, brackets, port and
 * leading/trailing dot. */
static slice hc__no_proxy_entry(const char *p, size_t n)
{
    while (n && hc__blank(*p)) {
        p++;
        n--;
    }
    while (n && hc__blank(p[n - 1]))
        n--;
    if (n && p[0] == '[') {
        const char *rb = memchr(p, ']', n);
        return rb ? slice_make(p + 1, (size_t)(rb - p - 1)) : slice_make(p, 0);
    }
    const char *colon = memchr(p, ':', n);
    if (colon && !memchr(colon + 1, ':', n - (size_t)(colon + 1 - p)))
        n = (size_t)(colon - p); /* name:port; more colons make a bare IPv6 literal */
    if (n && p[0] == '.') {
        p++;
        n--;
    }
    if (n && p[n - 1] == '.')
        n--;
    return slice_make(p, n);
}

bool httpc_no_proxy_match(const char *no_proxy, const char *host)
{
    if (!no_proxy || !host)
        return false;
    size_t hn = strlen(host);
    if (hn >= 2 && host[0] == '[' && host[hn - 1] == ']') {
        host++;
        hn -= 2;
    } else if (hn && host[hn - 1] == '.') {
        hn--;
    }
    if (hn == 0)
        return false;
    unsigned char haddr[16], eaddr[16];
    int hfam = 0, efam = 0;
    bool hip = hc__ip(host, hn, haddr, &hfam);
    for (const char *p = no_proxy; *p;) {
        size_t n = strcspn(p, ",");
        slice e = hc__no_proxy_entry(p, n);
        p += n + (p[n] == ',');
        if (e.len == 1 && e.p[0] == '*')
            return true;
        if (e.len == 0)
            continue;
        if (hip) {
            if (hc__ip(e.p, e.len, eaddr, &efam) && efam == hfam && memcmp(eaddr, haddr, 16) == 0)
                return true;
        } else if (e.len <= hn && strncasecmp(host + hn - e.len, e.p, e.len) == 0 &&
                   (e.len == hn || host[hn - e.len - 1] == '.')) {
            return true;
        }
    }
    return false;
}

static bool hc__alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ). */
static bool hc__scheme(const char *p, size_t n)
{
    if (n == 0 || !hc__alpha(p[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!hc__alpha(p[i]) && !hc__digit(p[i]) && !strchr("+-.", p[i]))
            return false;
    return true;
}

/* A host name of letters, digits, '-', '.' and '_'. */
static bool hc__host_name(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!hc__alpha(p[i]) && !hc__digit(p[i]) && !strchr("-._", p[i]))
            return false;
    return true;
}

/* Appends p[n] percent-decoded to dst at *len (dst has room for n more
 * bytes). -EINVAL on a bad escape or an encoded NUL. */
static int hc__pct_decode(const char *p, size_t n, char *dst, size_t *len)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            dst[(*len)++] = p[i];
            continue;
        }
        uint8_t b;
        if (i + 2 >= n || crypto_unhex(p + i + 1, 2, &b, 1) != 0 || b == 0)
            return -EINVAL;
        dst[(*len)++] = (char)b;
        i += 2;
    }
    return 0;
}

/* base64 of "user:password", both percent-decoded, from the userinfo
 * ui[n] of a URL, into dst[cap]. */
static int hc__proxy_auth(const char *ui, size_t n, char *dst, size_t cap)
{
    const char *colon = memchr(ui, ':', n);
    size_t un = colon ? (size_t)(colon - ui) : n;
    size_t len = 0, olen = 0;
    char *creds = malloc(n + 2);
    if (!creds)
        return -ENOMEM;
    int rc = hc__pct_decode(ui, un, creds, &len);
    creds[len++] = ':';
    if (!rc && colon)
        rc = hc__pct_decode(colon + 1, n - un - 1, creds, &len);
    if (!rc &&
        mbedtls_base64_encode((unsigned char *)dst, cap, &olen, (unsigned char *)creds, len) != 0)
        rc = -ENOSPC;
    explicit_bzero(creds, n + 2); /* a password */
    free(creds);
    return rc;
}

int httpc_parse_proxy_url(const char *url, char *host, size_t hostcap, uint16_t *port,
                          char *auth_b64, size_t authcap)
{
    if (!url || !host || !hostcap || !port || !auth_b64 || !authcap)
        return -EINVAL;
    const char *p = url, *sep = strstr(url, "://");
    if (sep) {
        size_t sn = (size_t)(sep - url);
        if (!hc__scheme(url, sn))
            return -EINVAL;
        if (sn != 4 || strncasecmp(url, "http", 4) != 0)
            return -ENOTSUP; /* https:// too: no TLS to the proxy */
        p = sep + 3;
    }
    size_t an = strcspn(p, "/?#"); /* the authority; then at most a "/" */
    if (p[an] && strcmp(p + an, "/") != 0)
        return -EINVAL;
    const char *hp = p, *end = p + an;
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q; /* the last one: an unencoded '@' in a password still works */
    if (at)
        hp = at + 1;
    const char *name = hp, *name_end, *rest;
    unsigned char addr[16];
    int family = 0;
    if (hp < end && *hp == '[') {
        name = hp + 1;
        name_end = memchr(name, ']', (size_t)(end - name));
        if (!name_end || !hc__ip(name, (size_t)(name_end - name), addr, &family) ||
            family != AF_INET6)
            return -EINVAL;
        rest = name_end + 1;
    } else {
        name_end = memchr(hp, ':', (size_t)(end - hp));
        if (!name_end)
            name_end = end;
        if (!hc__host_name(name, (size_t)(name_end - name)))
            return -EINVAL;
        rest = name_end;
    }
    unsigned long pv = 80;
    if (rest < end) {
        if (*rest != ':' || end - rest < 2 || end - rest > 6)
            return -EINVAL;
        pv = 0;
        for (const char *q = rest + 1; q < end; q++) {
            if (!hc__digit(*q))
                return -EINVAL;
            pv = pv * 10 + (unsigned long)(*q - '0');
        }
        if (pv == 0 || pv > 65535)
            return -EINVAL;
    }
    size_t hn = (size_t)(name_end - name);
    if (hn >= hostcap)
        return -ENOSPC;
    int rc = at ? hc__proxy_auth(p, (size_t)(at - p), auth_b64, authcap) : 0;
    if (rc != 0)
        return rc;
    if (!at)
        auth_b64[0] = '\0';
    memcpy(host, name, hn);
    host[hn] = '\0';
    *port = (uint16_t)pv;
    return 0;
}
