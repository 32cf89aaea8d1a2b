/* http_server.c - inbound HTTP/1.1 on libuv + llhttp.
 *
 * One http_conn per TCP connection, with one timer that serves whichever
 * deadline applies to the connection's current phase (header, body, idle,
 * send stall, lingering close, deferred resume). Reads are never stopped
 * while a request is handled -- that is how a client that hangs up
 * mid-stream is noticed at once -- but bytes of pipelined requests are
 * buffered only up to a cap. */
#include "daemon/http_server.h"

#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "crypto/crypto.h"
#include "daemon/base/clock.h"
#include "daemon/base/log.h"

#define HTTP_READ_CHUNK (64 * 1024)
#define HTTP_HIGH_WATER (256 * 1024)  /* queued response bytes that pause the producer */
#define HTTP_LOW_WATER (64 * 1024)    /* ... and that resume it */
#define HTTP_PIPELINE_CAP (256 * 1024) /* buffered bytes of later requests */
#define HTTP_LINGER_MS 2000
/* While draining, how long an idle keep-alive connection still waits for a
 * request (capped by the idle timeout). Closing it at once would race with
 * a proxy that has just picked it from its pool: a POST it already sent is
 * lost (nginx does not retry it: 502). A proxy still sending here reuses it
 * within this time and gets its answer with Connection: close; one that has
 * stopped sending here never notices the close. */
#define HTTP_DRAIN_IDLE_MS 1000
#define HTTP_DRAIN_ACCEPT_MAX 1024 /* queued connections taken in when the listener closes */

enum conn_timer {
    TIMER_NONE,
    TIMER_HEADER, /* waiting for the end of the headers */
    TIMER_BODY,   /* waiting for the end of the body */
    TIMER_IDLE,   /* keep-alive, waiting for a request */
    TIMER_SEND,   /* response bytes queued and not moving */
    TIMER_LINGER, /* half-closed after an error, discarding input */
    TIMER_RESUME, /* zero-delay: parse buffered pipelined bytes */
};

struct http_server {
    uv_loop_t *loop;        /* the loop everything runs on */
    uv_tcp_t listener;      /* the listening socket */
    bool listening;         /* listener handle initialised */
    http_limits limits;     /* current limits */
    http_request_cb cb;     /* the application */
    void *ud;               /* the application's pointer */
    http_conn *conns;       /* doubly linked list of open connections */
    size_t nconns;          /* its length */
    uint64_t next_conn_id;  /* ids for log context */
    bool draining;          /* drain started */
    bool listener_closing;  /* uv_close on the listener pending */
    void (*drain_done)(void *); /* called once when draining finished */
    void *drain_ud;
    uint16_t port;          /* bound port */
};

/* While headers arrive, their bytes may move (the buffer grows), so they
 * are kept as offsets; once complete, each entry becomes slices in place. */
typedef union hdr_off {
    struct {
        size_t name_off, name_len, val_off, val_len;
    };
    http_header h;
} hdr_off;

/* A request while it is being read: its bytes live in hdr (URL + header
 * names and values) and body. */
typedef struct req_impl {
    http_req pub;          /* what the application sees; first member */
    buf hdr;               /* URL and header bytes, capped by max_header_bytes */
    buf body;              /* body bytes, capped by max_body_bytes */
    hdr_off *offs;         /* header offsets into hdr (max_headers entries) */
    size_t noffs;          /* headers seen so far */
    size_t url_len;        /* URL bytes at the start of hdr */
    bool in_value;         /* last data callback was a header value */
    bool val_at_end;       /* that value's span ended where its read did */
    bool headers_done;     /* later header callbacks are trailers: ignored */
    bool chunked_resp;     /* response uses chunked encoding */
    bool http10;           /* HTTP/1.0 request */
    bool head;             /* HEAD request: the response carries no body bytes */
} req_impl;

struct http_conn {
    uv_tcp_t tcp;          /* the client socket */
    uv_timer_t timer;      /* the one deadline of the current phase */
    http_server *srv;      /* owner */
    http_conn *prev, *next; /* server's list */
    uint64_t id;           /* for log context */
    llhttp_t parser;       /* request parser */
    const char *exec_start, *exec_end; /* the bytes of the llhttp_execute in progress */
    buf rbuf;              /* pipelined bytes not parsed yet (lazily allocated) */
    req_impl *req;         /* the request being read or answered */
    req_impl *ready;       /* a request whose message completed during execute */
    size_t pending;        /* bytes handed to uv_write and not yet written */
    enum conn_timer tstate; /* what the timer is armed for */
    int error_status;      /* an HTTP status set by a parser callback to reject */
    const char *error_msg; /* its message */
    bool parser_paused;    /* paused after a complete request */
    bool reading;          /* uv_read_start active */
    bool close_after;      /* close once the current response is written */
    bool closing;          /* uv_close called */
    bool shut;             /* write side shut down (lingering) */
    bool want_drain;       /* the producer was told to stop; call on_drain later */
    int closes;            /* close callbacks outstanding */
};

typedef struct wreq {
    uv_write_t req;     /* libuv request */
    http_conn *conn;    /* owner */
    size_t len;         /* bytes in data */
    char data[];        /* the bytes */
} wreq;

static void conn_close(http_conn *c);
static void conn_process(http_conn *c);
static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);
static void timer_cb(uv_timer_t *t);
static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b);
static void conn_close_graceful(http_conn *c);

/* ---------------------------------------------------------------- utils */

const char *http_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 529: return "Overloaded";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* "Sun, 06 Nov 1994 08:49:37 GMT", cached per second. */
static const char *http_date(void)
{
    static _Thread_local char cached[40];
    static _Thread_local time_t cached_at;
    time_t now = time(NULL);
    if (now != cached_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(cached, sizeof(cached), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached_at = now;
    }
    return cached;
}

slice http_req_header(const http_req *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (slice_eq_nocase(req->headers[i].name, name))
            return req->headers[i].value;
    return (slice){NULL, 0};
}

/* The wait for the next request on an idle connection: ms, cut to
 * HTTP_DRAIN_IDLE_MS while draining. */
static uint32_t conn_idle_ms(const http_conn *c, uint32_t ms)
{
    return c->srv->draining && ms > HTTP_DRAIN_IDLE_MS ? HTTP_DRAIN_IDLE_MS : ms;
}

static void timer_arm(http_conn *c, enum conn_timer st, uint32_t ms)
{
    c->tstate = st;
    if (st == TIMER_NONE) {
        uv_timer_stop(&c->timer);
        return;
    }
    uv_timer_start(&c->timer, timer_cb, ms, 0);
}

/* ---------------------------------------------------------------- writes */

static void write_cb(uv_write_t *w, int status)
{
    wreq *wr = (wreq *)w;
    http_conn *c = wr->conn;
    c->pending -= wr->len;
    free(wr);
    if (c->closing)
        return;
    if (status < 0) {
        log_debug(NULL, "conn %llu write failed: %s", (unsigned long long)c->id,
                  uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->tstate == TIMER_SEND) {
        if (c->pending == 0)
            timer_arm(c, TIMER_NONE, 0);
        else
            timer_arm(c, TIMER_SEND, c->srv->limits.send_timeout_ms);
    }
    if (c->pending == 0 && c->close_after && !c->req) {
        conn_close_graceful(c);
        return;
    }
    if (c->pending == 0 && !c->req && !c->shut &&
        (c->tstate == TIMER_NONE || c->tstate == TIMER_SEND))
        timer_arm(c, TIMER_IDLE, conn_idle_ms(c, c->srv->limits.idle_timeout_ms));
    if (c->want_drain && c->pending <= HTTP_LOW_WATER && c->req &&
        c->req->pub.state == REQ_STREAMING) {
        c->want_drain = false;
        if (c->req->pub.on_drain)
            c->req->pub.on_drain(&c->req->pub, c->req->pub.app);
    }
}

/* Writes bufs in order: straight to the socket when nothing is queued,
 * the rest copied into one write request. 0 or -errno. */
static int conn_write(http_conn *c, const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (c->closing)
        return -EPIPE;
    size_t done = 0;
    if (c->pending == 0) {
        int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (w >= 0)
            done = (size_t)w;
        else if (w != UV_EAGAIN)
            return w;
        if (done == total)
            return 0;
    }
    size_t rest = total - done;
    wreq *wr = malloc(sizeof(*wr) + rest);
    if (!wr)
        return -ENOMEM;
    wr->conn = c;
    wr->len = rest;
    size_t skip = done, off = 0;
    for (unsigned i = 0; i < n; i++) {
        const char *p = bufs[i].base;
        size_t l = bufs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        p += skip;
        l -= skip;
        skip = 0;
        memcpy(wr->data + off, p, l);
        off += l;
    }
    uv_buf_t ub = uv_buf_init(wr->data, (unsigned)rest);
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &ub, 1, write_cb);
    if (rc < 0) {
        free(wr);
        return rc;
    }
    c->pending += rest;
    if (c->tstate == TIMER_NONE && c->srv->limits.send_timeout_ms)
        timer_arm(c, TIMER_SEND, c->srv->limits.send_timeout_ms);
    return 0;
}

/* ---------------------------------------------------------------- requests */

static void req_free(req_impl *r)
{
    if (!r)
        return;
    buf_free(&r->hdr);
    buf_free(&r->body);
    free(r->offs);
    free(r);
}

static req_impl *req_new(http_conn *c)
{
    const http_limits *lim = &c->srv->limits;
    req_impl *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->offs = calloc(lim->max_headers ? lim->max_headers : 1, sizeof(hdr_off));
    if (!r->offs) {
        free(r);
        return NULL;
    }
    buf_init(&r->hdr, lim->max_header_bytes);
    buf_init(&r->body, lim->max_body_bytes);
    r->pub.conn = c;
    r->pub.state = REQ_READING;
    r->pub.t_start_ns = clock_mono_ns();
    return r;
}

/* Builds the response head into out. */
static int head_build(buf *out, req_impl *r, int status, const char *ctype, const char *headers,
                      size_t content_length, bool chunked, bool close)
{
    int rc = buf_printf(out, "HTTP/1.1 %d %s\r\nDate: %s\r\n", status, http_status_text(status),
                        http_date());
    if (!rc && ctype)
        rc = buf_printf(out, "Content-Type: %s\r\n", ctype);
    if (!rc && chunked)
        rc = buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    else if (!rc)
        rc = buf_printf(out, "Content-Length: %zu\r\n", content_length);
    if (!rc && r->pub.request_id[0])
        rc = buf_printf(out, "x-request-id: %s\r\n", r->pub.request_id);
    if (!rc && close)
        rc = buf_append_str(out, "Connection: close\r\n");
    else if (!rc && r->http10)
        rc = buf_append_str(out, "Connection: keep-alive\r\n");
    if (!rc && headers)
        rc = buf_append_str(out, headers);
    if (!rc)
        rc = buf_append(out, "\r\n", 2);
    return rc;
}

/* The request is answered: recycle it, then either close or go on with the
 * next request on the connection. */
static void req_finish(http_conn *c)
{
    req_impl *r = c->req;
    r->pub.state = REQ_DONE;
    c->req = NULL;
    req_free(r);
    /* Close only after a response that said so. One that promised
     * keep-alive (sent before a drain began) leaves the connection open:
     * the client may be sending its next request on it right now; that one
     * is answered with Connection: close (conn_should_close), and an idle
     * wait is short while draining (conn_idle_ms). */
    if (c->close_after) {
        if (c->pending == 0)
            conn_close_graceful(c);
        return;
    }
    /* go on with buffered pipelined bytes from the loop, not from inside
     * the application's call */
    llhttp_resume(&c->parser);
    c->parser_paused = false;
    if (c->rbuf.len > 0)
        timer_arm(c, TIMER_RESUME, 0);
    else if (c->pending > 0) /* the idle wait starts when the response is out */
        timer_arm(c, c->srv->limits.send_timeout_ms ? TIMER_SEND : TIMER_NONE,
                  c->srv->limits.send_timeout_ms);
    else
        timer_arm(c, TIMER_IDLE, conn_idle_ms(c, c->srv->limits.idle_timeout_ms));
    if (!c->reading && !c->closing) {
        c->reading = true;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read_cb);
    }
}

static bool conn_should_close(http_conn *c, req_impl *r)
{
    (void)r;
    return c->close_after || c->srv->draining || !llhttp_should_keep_alive(&c->parser);
}

int http_respond(http_req *req, int status, const char *content_type, const char *headers,
                 const char *body, size_t len)
{
    req_impl *r = (req_impl *)req;
    http_conn *c = req->conn;
    if (conn_should_close(c, r))
        c->close_after = true;
    char small[1024];
    buf head = {small, 0, sizeof(small) - 1, sizeof(small) - 1};
    small[0] = '\0';
    int rc = head_build(&head, r, status, content_type, headers, len, false, c->close_after);
    buf big;
    buf_init(&big, 64 * 1024);
    if (rc == -E2BIG) {
        rc = head_build(&big, r, status, content_type, headers, len, false, c->close_after);
        head = big;
    }
    if (rc == 0) {
        uv_buf_t bufs[2] = {uv_buf_init(head.data, (unsigned)head.len),
                            uv_buf_init((char *)(uintptr_t)body, (unsigned)len)};
        rc = conn_write(c, bufs, len && !r->head ? 2 : 1);
    }
    buf_free(&big);
    if (rc < 0) {
        req->state = REQ_DONE; /* no abort callback: the application is answering */
        c->req = NULL;
        req_free(r);
        conn_close(c);
        return rc;
    }
    req_finish(c);
    return 0;
}

/* The connection broke under the application's feet: close it from the
 * loop, so on_abort never runs inside one of the application's calls. */
static void conn_close_later(http_conn *c)
{
    c->close_after = true;
    timer_arm(c, TIMER_LINGER, 0);
}

int http_stream_start(http_req *req, int status, const char *content_type, const char *headers)
{
    req_impl *r = (req_impl *)req;
    http_conn *c = req->conn;
    if (conn_should_close(c, r))
        c->close_after = true;
    buf head;
    buf_init(&head, 64 * 1024);
    int rc = head_build(&head, r, status, content_type, headers, 0, true, c->close_after);
    if (rc == 0) {
        uv_buf_t b = uv_buf_init(head.data, (unsigned)head.len);
        rc = conn_write(c, &b, 1);
    }
    buf_free(&head);
    if (rc == 0) {
        req->state = REQ_STREAMING;
        r->chunked_resp = true;
    } else {
        conn_close_later(c);
    }
    return rc;
}

int http_stream_write(http_req *req, const char *p, size_t n)
{
    http_conn *c = req->conn;
    if (n == 0 || ((req_impl *)req)->head) {
        if (c->pending <= HTTP_HIGH_WATER)
            return 0;
        c->want_drain = true; /* a 1 promises an on_drain (fuzz_http: head_stream_stall) */
        return 1;
    }
    char sz[24];
    int k = snprintf(sz, sizeof(sz), "%zx\r\n", n);
    uv_buf_t bufs[3] = {uv_buf_init(sz, (unsigned)k), uv_buf_init((char *)(uintptr_t)p, (unsigned)n),
                        uv_buf_init((char *)"\r\n", 2)};
    int rc = conn_write(c, bufs, 3);
    if (rc < 0) {
        conn_close_later(c);
        return rc;
    }
    if (c->pending > HTTP_HIGH_WATER) {
        c->want_drain = true;
        return 1;
    }
    return 0;
}

int http_stream_end(http_req *req)
{
    http_conn *c = req->conn;
    uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
    int rc = ((req_impl *)req)->head ? 0 : conn_write(c, &b, 1);
    c->want_drain = false;
    if (rc < 0) {
        req->state = REQ_DONE;
        c->req = NULL;
        req_free((req_impl *)req);
        conn_close(c);
        return rc;
    }
    req_finish(c);
    return 0;
}

size_t http_req_pending(const http_req *req) { return req->conn->pending; }

/* An error answered by the server itself (limits, timeouts, bad HTTP), in
 * the OpenAI error shape; the connection closes afterwards. */
static void conn_error(http_conn *c, int status, const char *type, const char *code,
                       const char *msg)
{
    char body[768];
    buf b = {body, 0, sizeof(body) - 1, sizeof(body) - 1};
    body[0] = '\0';
    int rc = buf_append_str(&b, "{\"error\":{\"message\":\"");
    if (!rc)
        rc = buf_append_json_escaped(&b, msg, strlen(msg));
    if (!rc)
        rc = buf_printf(&b, "\",\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}", type,
                        code ? "\"" : "", code ? code : "null", code ? "\"" : "");
    if (rc) {
        conn_close(c);
        return;
    }
    req_impl *r = c->req;
    if (!r) {
        r = req_new(c);
        if (!r) {
            conn_close(c);
            return;
        }
        c->req = r;
    }
    if (!r->pub.request_id[0])
        crypto_request_id(r->pub.request_id);
    r->pub.state = REQ_HANDLING;
    c->close_after = true;
    /* lingering close: stop the response from being lost to a reset when
     * the client is still sending */
    http_respond(&r->pub, status, "application/json", NULL, b.data, b.len);
}

/* ---------------------------------------------------------------- parser */

static int on_message_begin(llhttp_t *p)
{
    http_conn *c = p->data;
    if (!c->req) {
        c->req = req_new(c);
        if (!c->req) {
            c->error_status = 500;
            c->error_msg = "out of memory";
            return -1;
        }
    }
    timer_arm(c, TIMER_HEADER, c->srv->limits.header_timeout_ms);
    return 0;
}

static int hdr_append(http_conn *c, const char *at, size_t n)
{
    if (buf_append(&c->req->hdr, at, n) != 0) {
        c->error_status = 431;
        c->error_msg = "request headers too large";
        return -1;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    http_conn *c = p->data;
    if (hdr_append(c, at, n))
        return -1;
    c->req->url_len += n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    http_conn *c = p->data;
    req_impl *r = c->req;
    if (r->headers_done)
        return 0; /* trailers are ignored */
    if (r->in_value || r->noffs == 0 || r->offs[r->noffs - 1].val_off) {
        if (r->noffs >= c->srv->limits.max_headers) {
            c->error_status = 431;
            c->error_msg = "too many request headers";
            return -1;
        }
        r->offs[r->noffs].name_off = r->hdr.len;
        r->offs[r->noffs].name_len = 0;
        r->offs[r->noffs].val_off = 0;
        r->offs[r->noffs].val_len = 0;
        r->noffs++;
        r->in_value = false;
    }
    if (hdr_append(c, at, n))
        return -1;
    r->offs[r->noffs - 1].name_len += n;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    http_conn *c = p->data;
    req_impl *r = c->req;
    if (r->headers_done)
        return 0;
    hdr_off *o = &r->offs[r->noffs - 1];
    if (!r->in_value) {
        r->in_value = true;
        o->val_off = r->hdr.len;
        o->val_len = 0;
    } else if (!(r->val_at_end && at == c->exec_start)) {
        /* a value goes on in a second span only across reads; otherwise
         * llhttp joined a folded line (obs-fold), which proxies in front
         * may read otherwise: refused (RFC 9112 5.2) */
        c->error_status = 400;
        c->error_msg = "folded header lines (obs-fold) are not accepted";
        return -1;
    }
    if (hdr_append(c, at, n))
        return -1;
    o->val_len += n;
    r->val_at_end = at + n == c->exec_end;
    return 0;
}

/* A field name is a token (RFC 9110 5.6.2); llhttp 8 lets spaces and an
 * empty name through. */
static bool hdr_name_ok(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+-.^_`|~", ch)) || ch == '\0')
            return false;
    }
    return true;
}

static void req_sanitize_id(req_impl *r)
{
    slice id = http_req_header(&r->pub, "x-request-id");
    if (id.len > 0 && id.len < sizeof(r->pub.request_id)) {
        bool ok = true;
        for (size_t i = 0; i < id.len && ok; i++) {
            char ch = id.p[i];
            ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '-' || ch == '_' || ch == '.' || ch == ':';
        }
        if (ok) {
            memcpy(r->pub.request_id, id.p, id.len);
            r->pub.request_id[id.len] = '\0';
            return;
        }
    }
    crypto_request_id(r->pub.request_id);
}

/* How many headers named name (lower case) the request has. */
static size_t header_count(const req_impl *r, const char *name)
{
    size_t n = 0, len = strlen(name);
    for (size_t i = 0; i < r->noffs; i++)
        if (r->offs[i].h.name.len == len && strncasecmp(r->offs[i].h.name.p, name, len) == 0)
            n++;
    return n;
}

static int on_headers_complete(llhttp_t *p)
{
    http_conn *c = p->data;
    req_impl *r = c->req;
    r->headers_done = true;
    /* the header bytes are final now: point the public view into them */
    for (size_t i = 0; i < r->noffs; i++) {
        hdr_off o = r->offs[i];
        if (!hdr_name_ok(r->hdr.data + o.name_off, o.name_len)) {
            c->error_status = 400;
            c->error_msg = "invalid header field name";
            return -1;
        }
        while (o.val_len > 0 && (r->hdr.data[o.val_off + o.val_len - 1] == ' ' ||
                                 r->hdr.data[o.val_off + o.val_len - 1] == '\t'))
            o.val_len--; /* trailing OWS is not part of the value (RFC 9110 5.5) */
        r->offs[i].h.name = slice_make(r->hdr.data + o.name_off, o.name_len);
        r->offs[i].h.value = slice_make(o.val_len ? r->hdr.data + o.val_off : "", o.val_len);
    }
    r->pub.headers = &r->offs[0].h;
    r->pub.nheaders = r->noffs;
    const char *url = r->hdr.data ? r->hdr.data : "";
    const char *q = memchr(url, '?', r->url_len);
    r->pub.path = slice_make(url, q ? (size_t)(q - url) : r->url_len);
    r->pub.query = q ? slice_make(q + 1, r->url_len - (size_t)(q - url) - 1) : slice_make("", 0);
    r->pub.method = p->method;
    if (p->method == HTTP_CONNECT) {
        c->error_status = 405;
        c->error_msg = "CONNECT is not supported: this is an API gateway, not a forward proxy";
        return -1;
    }
    /* An Upgrade (h2c, websocket) is not taken: the request is an ordinary
     * one with its body, and the connection stays HTTP/1.1 (RFC 9110 7.8).
     * Left set, llhttp would skip the body and stop parsing after it. */
    p->upgrade = 0;
    if (header_count(r, "host") > 1) {
        c->error_status = 400;
        c->error_msg = "more than one Host header";
        return -1;
    }
    r->http10 = p->http_major == 1 && p->http_minor == 0;
    r->head = p->method == HTTP_HEAD;
    req_sanitize_id(r);

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->limits.max_body_bytes) {
        c->error_status = 413;
        c->error_msg = "request body too large";
        return -1;
    }
    slice expect = http_req_header(&r->pub, "expect");
    if (expect.len) {
        if (!slice_eq_nocase(expect, "100-continue")) {
            c->error_status = 417;
            c->error_msg = "unsupported Expect header";
            return -1;
        }
        if (!r->http10) {
            uv_buf_t b = uv_buf_init((char *)"HTTP/1.1 100 Continue\r\n\r\n", 25);
            if (conn_write(c, &b, 1) < 0)
                return -1;
        }
    }
    timer_arm(c, TIMER_BODY, c->srv->limits.body_timeout_ms);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    http_conn *c = p->data;
    if (buf_append(&c->req->body, at, n) != 0) {
        c->error_status = 413;
        c->error_msg = "request body too large";
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    http_conn *c = p->data;
    req_impl *r = c->req;
    r->pub.body = slice_make(r->body.data ? r->body.data : "", r->body.len);
    r->pub.t_ready_ns = clock_mono_ns();
    c->ready = r;
    return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses bytes; returns how many were consumed (the rest belong to a later
 * pipelined request), or -1 when the connection was closed on an error. */
static ssize_t conn_parse(http_conn *c, const char *p, size_t n)
{
    c->exec_start = p;
    c->exec_end = p + n;
    llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
    if (e == HPE_OK)
        return (ssize_t)n;
    if (e == HPE_PAUSED) {
        c->parser_paused = true;
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos ? (size_t)(pos - p) : n;
        return (ssize_t)(used > n ? n : used);
    }
    if (c->error_status) {
        int st = c->error_status;
        const char *code = st == 413 ? "request_too_large"
                           : st == 431 ? "request_header_fields_too_large"
                           : st == 405 ? "method_not_allowed"
                           : st == 400 ? "bad_request"
                                       : NULL;
        conn_error(c, st, "invalid_request_error", code, c->error_msg);
    } else {
        char msg[256];
        snprintf(msg, sizeof(msg), "malformed HTTP request: %s", llhttp_get_error_reason(&c->parser));
        conn_error(c, 400, "invalid_request_error", "bad_request", msg);
    }
    return -1;
}

static void conn_dispatch(http_conn *c)
{
    req_impl *r = c->ready;
    c->ready = NULL;
    timer_arm(c, TIMER_NONE, 0);
    r->pub.state = REQ_HANDLING;
    c->srv->cb(&r->pub, c->srv->ud);
}

/* Parses what is buffered, dispatching at most one request. */
static void conn_process(http_conn *c)
{
    if (c->parser_paused || c->closing || c->rbuf.len == 0)
        return;
    ssize_t used = conn_parse(c, c->rbuf.data, c->rbuf.len);
    if (used < 0)
        return;
    buf_consume(&c->rbuf, (size_t)used);
    if (c->rbuf.len == 0)
        buf_free(&c->rbuf); /* idle connections hold no buffer */
    if (!c->reading && !c->parser_paused && c->rbuf.len < HTTP_PIPELINE_CAP) {
        c->reading = true;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read_cb);
    }
    if (c->ready)
        conn_dispatch(c);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static _Thread_local char slab[HTTP_READ_CHUNK];
    b->base = slab;
    b->len = sizeof(slab);
}

static void conn_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    http_conn *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* client closed or reset: a request in flight is aborted */
        conn_close(c);
        return;
    }
    if (c->shut)
        return; /* lingering: discard */
    size_t n = (size_t)nread;
    if (c->parser_paused || c->rbuf.len > 0) {
        /* a request is being answered: keep the bytes for later; the
         * buffer has room for one more read past the cap, and reading stops
         * once the cap is reached, so nothing read is ever dropped */
        if (buf_append(&c->rbuf, b->base, n) != 0) {
            conn_close(c);
            return;
        }
        if (c->rbuf.len >= HTTP_PIPELINE_CAP) {
            uv_read_stop(st);
            c->reading = false;
        }
        if (!c->parser_paused)
            conn_process(c);
        return;
    }
    ssize_t used = conn_parse(c, b->base, n);
    if (used < 0)
        return;
    if ((size_t)used < n) {
        if (buf_append(&c->rbuf, b->base + used, n - (size_t)used) != 0) {
            conn_close(c);
            return;
        }
    }
    if (c->ready)
        conn_dispatch(c);
}

static void timer_cb(uv_timer_t *t)
{
    http_conn *c = t->data;
    enum conn_timer st = c->tstate;
    c->tstate = TIMER_NONE;
    switch (st) {
    case TIMER_HEADER:
    case TIMER_BODY:
        log_debug(NULL, "conn %llu %s timeout", (unsigned long long)c->id,
                  st == TIMER_HEADER ? "header" : "body");
        conn_error(c, 408, "invalid_request_error", "request_timeout",
                   st == TIMER_HEADER ? "timed out reading the request headers"
                                      : "timed out reading the request body");
        break;
    case TIMER_IDLE:
    case TIMER_LINGER:
        conn_close(c);
        break;
    case TIMER_SEND:
        log_info(NULL, "conn %llu client stopped reading; closing", (unsigned long long)c->id);
        conn_close(c);
        break;
    case TIMER_RESUME:
        conn_process(c);
        if (!c->closing && !c->parser_paused && c->tstate == TIMER_NONE)
            timer_arm(c, c->req ? TIMER_HEADER : TIMER_IDLE,
                      c->req ? c->srv->limits.header_timeout_ms
                             : conn_idle_ms(c, c->srv->limits.idle_timeout_ms));
        break;
    case TIMER_NONE:
        break;
    }
}

/* ---------------------------------------------------------------- conns */

static void conn_closed_cb(uv_handle_t *h)
{
    http_conn *c = h->data;
    if (--c->closes > 0)
        return;
    http_server *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    buf_free(&c->rbuf);
    free(c);
    if (s->draining && s->nconns == 0 && !s->listener_closing && s->drain_done) {
        void (*done)(void *) = s->drain_done;
        s->drain_done = NULL;
        done(s->drain_ud);
    }
}

static void conn_close(http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    req_impl *r = c->req;
    c->req = NULL;
    if (r) {
        if ((r->pub.state == REQ_HANDLING || r->pub.state == REQ_STREAMING) && r->pub.on_abort)
            r->pub.on_abort(&r->pub, r->pub.app);
        req_free(r);
    }
    if (c->ready && c->ready != r)
        req_free(c->ready);
    c->ready = NULL;
    c->closes = 2;
    uv_close((uv_handle_t *)&c->tcp, conn_closed_cb);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
}

static void shutdown_cb(uv_shutdown_t *sr, int status)
{
    http_conn *c = sr->data;
    free(sr);
    if (c->closing)
        return;
    if (status < 0)
        conn_close(c);
    else
        timer_arm(c, TIMER_LINGER, HTTP_LINGER_MS);
}

/* Closes after the response: shut the write side, then read and discard
 * for a moment, so a client still sending does not get a reset that
 * destroys the response it has not read yet (lingering close). */
static void conn_close_graceful(http_conn *c)
{
    if (c->closing || c->shut)
        return;
    c->shut = true;
    buf_free(&c->rbuf);
    uv_shutdown_t *sr = malloc(sizeof(*sr));
    if (!sr || uv_shutdown(sr, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
        free(sr);
        conn_close(c);
        return;
    }
    sr->data = c;
    if (!c->reading) {
        c->reading = true;
        uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read_cb);
    }
}

/* A new connection's handles, on the server's list; its socket is not
 * attached yet. NULL when out of memory. */
static http_conn *conn_new(http_server *s)
{
    http_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->srv = s;
    c->id = ++s->next_conn_id;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    buf_init(&c->rbuf, HTTP_PIPELINE_CAP + HTTP_READ_CHUNK);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    return c;
}

/* The socket is attached: start reading the first request. */
static void conn_start(http_conn *c)
{
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    c->reading = true;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, conn_read_cb);
    /* nothing sent at all within the header timeout: close silently */
    timer_arm(c, TIMER_IDLE, conn_idle_ms(c, c->srv->limits.header_timeout_ms));
}

static void accept_cb(uv_stream_t *ls, int status)
{
    http_server *s = ls->data;
    if (status < 0) {
        log_warn(NULL, "accept failed: %s", uv_strerror(status));
        return;
    }
    http_conn *c = conn_new(s);
    if (!c)
        return;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    conn_start(c);
}

/* Takes in every connection the kernel has queued on the listener, before
 * it closes: closing a listener resets the connections still in its
 * backlog, and their clients may have sent a request already (a proxy
 * does not retry a POST it has sent: 502). They are served like the
 * others during the drain. */
static void accept_queued(http_server *s)
{
    uv_os_fd_t lfd;
    if (uv_fileno((const uv_handle_t *)&s->listener, &lfd) != 0)
        return;
    for (int i = 0; i < HTTP_DRAIN_ACCEPT_MAX; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                log_warn(NULL, "accept while draining: %s", strerror(errno));
            return;
        }
        (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
        http_conn *c = conn_new(s);
        if (!c) {
            close(fd);
            continue;
        }
        if (uv_tcp_open(&c->tcp, fd) != 0) { /* sets O_NONBLOCK */
            close(fd);
            conn_close(c);
            continue;
        }
        conn_start(c);
    }
}

/* ---------------------------------------------------------------- server */

http_server *http_server_new(uv_loop_t *loop, const http_limits *limits, http_request_cb cb,
                             void *ud)
{
    http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->limits = *limits;
    s->cb = cb;
    s->ud = ud;
    return s;
}

void http_server_set_limits(http_server *s, const http_limits *limits) { s->limits = *limits; }

static int listen_on(http_server *s, const char *host, uint16_t port, bool reuseport);

int http_server_listen(http_server *s, const char *host, uint16_t port)
{
    return listen_on(s, host, port, false);
}

int http_server_listen_reuseport(http_server *s, const char *host, uint16_t port)
{
    return listen_on(s, host, port, true);
}

/* A socket bound to ss with SO_REUSEPORT (libuv 1.44 has no flag for it),
 * so every worker's loop listens on the same port and the kernel spreads
 * the connections. The fd, or -errno. */
static int reuseport_socket(const struct sockaddr_storage *ss)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int on = 1;
    socklen_t len = ss->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                             : sizeof(struct sockaddr_in6);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        bind(fd, (const struct sockaddr *)ss, len) != 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static int listen_on(http_server *s, const char *host, uint16_t port, bool reuseport)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        /* a host name: resolved once at start, before the loop serves */
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
        if (getaddrinfo(host, NULL, &hints, &res) != 0)
            return -EADDRNOTAVAIL;
        memcpy(&ss, res->ai_addr, res->ai_addrlen);
        freeaddrinfo(res);
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons(port);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
    }
    int rc = uv_tcp_init(s->loop, &s->listener);
    if (rc)
        return rc;
    s->listening = true;
    s->listener.data = s;
    if (reuseport) {
        int fd = reuseport_socket(&ss);
        rc = fd < 0 ? fd : uv_tcp_open(&s->listener, fd);
        if (fd >= 0 && rc)
            close(fd);
    } else {
        rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0);
    }
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->listener, 1024, accept_cb);
    if (rc)
        return rc;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &len);
    s->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    return 0;
}

uint16_t http_server_port(const http_server *s) { return s->port; }
bool http_server_draining(const http_server *s) { return s->draining; }
size_t http_server_nconns(const http_server *s) { return s->nconns; }

static void listener_closed_cb(uv_handle_t *h)
{
    http_server *s = h->data;
    s->listener_closing = false;
    if (s->draining && s->nconns == 0 && s->drain_done) {
        void (*done)(void *) = s->drain_done;
        s->drain_done = NULL;
        done(s->drain_ud);
    }
}

void http_server_drain(http_server *s, void (*done)(void *), void *ud)
{
    if (s->draining)
        return;
    s->draining = true;
    s->drain_done = done;
    s->drain_ud = ud;
    if (s->listening) {
        accept_queued(s);
        s->listening = false;
        s->listener_closing = true;
        uv_close((uv_handle_t *)&s->listener, listener_closed_cb);
    }
    /* Nothing is cut: a request in flight is answered (with Connection:
     * close unless its response has begun), and an idle connection gets a
     * short last wait (conn_idle_ms), in which a request is still answered
     * with Connection: close; then it closes. */
    uint32_t idle = s->limits.idle_timeout_ms < HTTP_DRAIN_IDLE_MS ? s->limits.idle_timeout_ms
                                                                  : HTTP_DRAIN_IDLE_MS;
    for (http_conn *c = s->conns; c; c = c->next) {
        if (c->tstate == TIMER_IDLE && !c->req && c->pending == 0 &&
            uv_timer_get_due_in(&c->timer) > idle)
            timer_arm(c, TIMER_IDLE, idle);
    }
    if (s->nconns == 0 && !s->listener_closing && s->drain_done) {
        s->drain_done = NULL;
        done(ud);
    }
}

void http_server_close_all(http_server *s)
{
    if (s->listening) {
        s->listening = false;
        s->listener_closing = true;
        uv_close((uv_handle_t *)&s->listener, listener_closed_cb);
    }
    for (http_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c);
    }
}

void http_server_free(http_server *s) { free(s); }
