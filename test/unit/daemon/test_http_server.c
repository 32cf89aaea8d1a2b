/* test_http_server.c - the inbound HTTP/1.1 server (daemon/http_server.c)
 * on a libuv loop, driven by raw TCP clients on the same loop.
 *
 * The clients send exact bytes (whole, or dribbled a few bytes at a time)
 * and the tests check the bytes that come back with a strict response
 * parser. The application side is a small router: /echo answers the
 * request as JSON, /late answers from a timer, /hold never answers, /stream
 * produces a chunked body with backpressure, /frames writes fixed chunks,
 * /big answers with a large whole body. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>
#include <llhttp.h>
#include <uv.h>

#include "daemon/base/buf.h"
#include "daemon/http_server.h"

#define CLIENT_KEEP (48u << 20) /* response bytes a client keeps */
#define RUN_GUARD_MS 5000       /* no wait in a test may take longer */
#define MAX_CLIENTS 16
#define RESP_MAXH 32
#define RESP_MAXCHUNKS 64
#define MAX_RESPS 16

/* ------------------------------------------------------------ byte helpers */

/* Position-dependent filler: a lost, doubled or moved byte shows. Only hex
 * digits, so "\r\n" never occurs inside. */
static char pattern_at(size_t i) { return "0123456789abcdef"[(i ^ (i >> 7) ^ (i >> 15)) & 15]; }

static void pattern_fill(char *p, size_t off, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pattern_at(off + i);
}

static bool pattern_check(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pattern_at(i))
            return false;
    return true;
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void fnv_hex(const char *p, size_t n, char out[17])
{
    snprintf(out, 17, "%016llx", (unsigned long long)fnv1a(p, n));
}

static bool is_hex_id(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (size_t i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

/* ------------------------------------------------------------ the app */

typedef struct job job;

typedef struct app {
    uv_loop_t *loop;
    int requests;          /* requests handed over */
    int aborts;            /* on_abort calls */
    int double_aborts;     /* on_abort on a request already aborted */
    int drains;            /* on_drain calls */
    int drains_unexpected; /* on_drain while the producer was not waiting */
    int late_calls;        /* callbacks for a request after its abort or end */
    int write_ones;        /* http_stream_write returned 1 */
    int write_errs;        /* a response function failed */
    int stream_ends;       /* http_stream_end calls */
    job *jobs;             /* requests the app holds */
    job *held;             /* the last /hold request still held */
    char log[2048];        /* "+path" when handed over, "=path" when answered */
    char last_id[65];      /* request_id of the last request */
} app;

enum job_kind { JOB_LATE, JOB_STREAM, JOB_HOLD };

struct job {
    app *a;            /* owner */
    http_req *req;     /* NULL once answered or aborted */
    uv_timer_t timer;  /* late answer or stream pacing */
    enum job_kind kind;
    size_t chunk;      /* stream: bytes per write */
    size_t total;      /* stream: bytes in all */
    size_t sent;       /* stream: bytes written */
    uint32_t interval; /* stream: ms between writes, 0 = as fast as allowed */
    char *data;        /* stream: one chunk */
    bool waiting;      /* stopped after a 1 from http_stream_write */
    bool aborted;      /* on_abort came */
    bool closing;      /* timer closing; freed in its close callback */
    job *next;         /* app's list */
};

static void app_log(app *a, char mark, const http_req *req)
{
    size_t l = strlen(a->log);
    snprintf(a->log + l, sizeof(a->log) - l, "%c%.*s%s%.*s ", mark, (int)req->path.len,
             req->path.p, req->query.len ? "?" : "", (int)req->query.len, req->query.p);
}

static unsigned long query_num(slice q, const char *key, unsigned long def)
{
    char tmp[256];
    if (q.len >= sizeof(tmp))
        return def;
    memcpy(tmp, q.p, q.len);
    tmp[q.len] = '\0';
    size_t kl = strlen(key);
    for (char *s = tmp; s && *s;) {
        if (strncmp(s, key, kl) == 0 && s[kl] == '=') {
            char *end;
            errno = 0;
            unsigned long v = strtoul(s + kl + 1, &end, 10);
            if (errno || end == s + kl + 1 || (*end != '&' && *end != '\0'))
                return def;
            return v;
        }
        s = strchr(s, '&');
        if (s)
            s++;
    }
    return def;
}

/* Answers with the request as JSON. */
static void app_echo(app *a, http_req *req)
{
    json_t *hs = json_array();
    for (size_t i = 0; i < req->nheaders; i++)
        json_array_append_new(hs, json_pack("[s%s%]", req->headers[i].name.p,
                                            req->headers[i].name.len, req->headers[i].value.p,
                                            req->headers[i].value.len));
    char fnv[17];
    fnv_hex(req->body.p, req->body.len, fnv);
    json_t *o = json_pack("{s:s, s:s%, s:s%, s:I, s:s, s:s, s:o}", "method",
                          llhttp_method_name((llhttp_method_t)req->method), "path", req->path.p,
                          req->path.len, "query", req->query.p, req->query.len, "body_len",
                          (json_int_t)req->body.len, "body_fnv", fnv, "request_id",
                          req->request_id, "headers", hs);
    if (o && req->body.len <= 4096)
        json_object_set_new(o, "body", json_stringn(req->body.p, req->body.len));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    app_log(a, '=', req);
    int rc = s ? http_respond(req, 200, "application/json", "X-App: echo\r\n", s, strlen(s))
               : http_respond(req, 500, "text/plain", NULL, "no json", 7);
    if (rc != 0)
        a->write_errs++;
    free(s);
    json_decref(o);
}

static void job_closed_cb(uv_handle_t *h)
{
    job *j = h->data;
    for (job **pp = &j->a->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    free(j->data);
    free(j);
}

static void job_done(job *j)
{
    if (j->closing)
        return;
    j->closing = true;
    if (j->a->held == j)
        j->a->held = NULL;
    uv_close((uv_handle_t *)&j->timer, job_closed_cb);
}

static void app_on_abort(http_req *req, void *ud)
{
    job *j = ud;
    (void)req;
    j->a->aborts++;
    if (j->aborted)
        j->a->double_aborts++;
    j->aborted = true;
    j->req = NULL;
    job_done(j);
}

/* Writes the stream: one chunk (one) or until backpressure; ends it when
 * all is written. */
static void job_pump(job *j, bool one)
{
    app *a = j->a;
    while (j->sent < j->total) {
        size_t n = j->total - j->sent < j->chunk ? j->total - j->sent : j->chunk;
        pattern_fill(j->data, j->sent, n);
        int rc = http_stream_write(j->req, j->data, n);
        if (rc < 0) {
            a->write_errs++;
            uv_timer_stop(&j->timer); /* on_abort follows */
            return;
        }
        j->sent += n;
        if (rc == 1) {
            a->write_ones++;
            j->waiting = true;
            return;
        }
        if (one)
            return;
    }
    a->stream_ends++;
    if (http_stream_end(j->req) != 0)
        a->write_errs++;
    j->req = NULL;
    job_done(j);
}

static void app_on_drain(http_req *req, void *ud)
{
    job *j = ud;
    (void)req;
    j->a->drains++;
    if (j->aborted || j->closing || !j->req)
        j->a->late_calls++;
    if (!j->waiting)
        j->a->drains_unexpected++;
    j->waiting = false;
    if (j->interval == 0)
        job_pump(j, false);
}

static void job_tick(uv_timer_t *t)
{
    job *j = t->data;
    if (j->aborted || !j->req) {
        j->a->late_calls++;
        return;
    }
    if (j->kind == JOB_LATE) {
        app_echo(j->a, j->req);
        j->req = NULL;
        job_done(j);
        return;
    }
    if (!j->waiting)
        job_pump(j, true);
}

static job *job_new(app *a, http_req *req, enum job_kind kind)
{
    job *j = calloc(1, sizeof(*j));
    assert_non_null(j);
    j->a = a;
    j->req = req;
    j->kind = kind;
    assert_int_equal(uv_timer_init(a->loop, &j->timer), 0);
    j->timer.data = j;
    j->next = a->jobs;
    a->jobs = j;
    req->app = j;
    req->on_abort = app_on_abort;
    req->on_drain = app_on_drain;
    return j;
}

/* Fixed chunks, with a zero-length write and data that looks like framing. */
static void app_frames(app *a, http_req *req)
{
    static char zs[300];
    memset(zs, 'z', sizeof(zs));
    int rc = http_stream_start(req, 200, "text/plain", "X-Frames: yes\r\n");
    if (rc == 0)
        rc = http_stream_write(req, "hello", 5);
    if (rc == 0)
        rc = http_stream_write(req, "", 0);
    if (rc == 0)
        rc = http_stream_write(req, "x", 1);
    if (rc == 0)
        rc = http_stream_write(req, zs, sizeof(zs));
    if (rc == 0)
        rc = http_stream_write(req, "\r\n0\r\n\r\n", 7);
    if (rc == 0) {
        a->stream_ends++;
        rc = http_stream_end(req);
    }
    if (rc != 0)
        a->write_errs++;
}

static void app_on_request(http_req *req, void *ud)
{
    app *a = ud;
    a->requests++;
    memcpy(a->last_id, req->request_id, sizeof(a->last_id));
    app_log(a, '+', req);
    if (slice_eq(req->path, "/echo")) {
        app_echo(a, req);
    } else if (slice_eq(req->path, "/late")) {
        job *j = job_new(a, req, JOB_LATE);
        uv_timer_start(&j->timer, job_tick, query_num(req->query, "ms", 50), 0);
    } else if (slice_eq(req->path, "/hold")) {
        a->held = job_new(a, req, JOB_HOLD);
    } else if (slice_eq(req->path, "/stream")) {
        job *j = job_new(a, req, JOB_STREAM);
        j->chunk = query_num(req->query, "chunk", 1024);
        j->total = j->chunk * query_num(req->query, "n", 4);
        j->interval = (uint32_t)query_num(req->query, "ms", 0);
        j->data = malloc(j->chunk ? j->chunk : 1);
        assert_non_null(j->data);
        if (http_stream_start(req, 200, "text/event-stream", NULL) != 0) {
            a->write_errs++;
            j->req = NULL; /* on_abort follows */
            return;
        }
        if (j->interval)
            uv_timer_start(&j->timer, job_tick, j->interval, j->interval);
        else
            job_pump(j, false);
    } else if (slice_eq(req->path, "/frames")) {
        app_frames(a, req);
    } else if (slice_eq(req->path, "/big")) {
        size_t n = query_num(req->query, "n", 1024);
        char *body = malloc(n ? n : 1);
        assert_non_null(body);
        pattern_fill(body, 0, n);
        if (http_respond(req, 200, "application/octet-stream", NULL, body, n) != 0)
            a->write_errs++;
        free(body);
    } else {
        if (http_respond(req, 404, "text/plain", NULL, "not found", 9) != 0)
            a->write_errs++;
    }
}

/* ------------------------------------------------------------ env + client */

typedef struct client client;

typedef struct env {
    uv_loop_t loop;               /* everything runs here */
    http_server *srv;             /* the server under test */
    app a;                        /* its application */
    uv_timer_t guard;             /* bounds every wait */
    bool guard_fired;             /* the current wait ran out */
    client *clients[MAX_CLIENTS]; /* closed at the end */
    size_t nclients;
    int drain_done;               /* drain completion callbacks */
} env;

struct client {
    uv_tcp_t tcp;         /* the connection */
    uv_connect_t creq;    /* connect request */
    uv_timer_t timer;     /* dribble pacing */
    env *e;               /* owner */
    buf in;               /* bytes received */
    int connect_status;   /* 1 while connecting, then 0 or -errno */
    bool reading;         /* read started */
    bool eof;             /* the server closed its side */
    int read_err;         /* a read error other than EOF */
    bool ended;           /* eof or read error */
    uint64_t t_end;       /* uv_now when it ended */
    int write_errs;       /* failed writes */
    int closes;           /* close callbacks outstanding */
    bool closing;         /* uv_close called */
    bool closed;          /* all handles closed */
    char *drib;           /* bytes to dribble */
    size_t drib_len, drib_off, drib_piece;
};

static void guard_cb(uv_timer_t *t)
{
    env *e = t->data;
    e->guard_fired = true;
}

typedef bool (*pred_fn)(void *ctx);

/* Runs the loop until pred holds or ms passed. Returns pred. */
static bool run_until(env *e, pred_fn pred, void *ctx, uint64_t ms)
{
    e->guard_fired = false;
    uv_timer_start(&e->guard, guard_cb, ms, 0);
    while (!pred(ctx) && !e->guard_fired)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_timer_stop(&e->guard);
    return pred(ctx);
}

static bool pred_never(void *ctx)
{
    (void)ctx;
    return false;
}

static void run_for(env *e, uint64_t ms) { (void)run_until(e, pred_never, NULL, ms); }

typedef struct int_ge {
    const int *p;
    int v;
} int_ge;

static bool pred_int_ge(void *ctx)
{
    int_ge *w = ctx;
    return *w->p >= w->v;
}

static void run_int_ge(env *e, const int *p, int v)
{
    int_ge w = {p, v};
    assert_true(run_until(e, pred_int_ge, &w, RUN_GUARD_MS));
}

static void env_init(env *e, const http_limits *lim)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->a.loop = &e->loop;
    e->srv = http_server_new(&e->loop, lim, app_on_request, &e->a);
    assert_non_null(e->srv);
    assert_int_equal(http_server_listen(e->srv, "127.0.0.1", 0), 0);
    assert_true(http_server_port(e->srv) != 0);
    assert_int_equal(uv_timer_init(&e->loop, &e->guard), 0);
    e->guard.data = e;
}

static void client_closed_cb(uv_handle_t *h)
{
    client *c = h->data;
    if (--c->closes == 0)
        c->closed = true;
}

static void client_close(client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closes = 2;
    uv_close((uv_handle_t *)&c->tcp, client_closed_cb);
    uv_close((uv_handle_t *)&c->timer, client_closed_cb);
}

/* Hangs up with a reset instead of a FIN. */
static void client_reset(client *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->closes = 2;
    assert_int_equal(uv_tcp_close_reset(&c->tcp, client_closed_cb), 0);
    uv_close((uv_handle_t *)&c->timer, client_closed_cb);
}

/* Closes everything, runs the loop dry and checks nothing is left. */
static void env_done(env *e)
{
    for (size_t i = 0; i < e->nclients; i++)
        client_close(e->clients[i]);
    http_server_close_all(e->srv);
    uv_close((uv_handle_t *)&e->guard, NULL);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_null(e->a.jobs);
    assert_int_equal(http_server_nconns(e->srv), 0);
    assert_int_equal(e->a.double_aborts, 0);
    assert_int_equal(e->a.late_calls, 0);
    http_server_free(e->srv);
    for (size_t i = 0; i < e->nclients; i++) {
        assert_true(e->clients[i]->closed);
        buf_free(&e->clients[i]->in);
        free(e->clients[i]->drib);
    }
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

static void client_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char slab[64 * 1024];
    (void)h;
    (void)hint;
    b->base = slab;
    b->len = sizeof(slab);
}

static void client_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    client *c = st->data;
    if (n > 0) {
        assert_int_equal(buf_append(&c->in, b->base, (size_t)n), 0);
        return;
    }
    if (n == 0)
        return;
    if (n == UV_EOF)
        c->eof = true;
    else
        c->read_err = (int)n;
    c->ended = true;
    c->t_end = uv_now(&c->e->loop);
    client_close(c); /* as any client does when the server hangs up */
}

static void client_start_read(client *c)
{
    if (c->reading || c->closing)
        return;
    c->reading = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc_cb, client_read_cb), 0);
}

static void client_connect_cb(uv_connect_t *cr, int status)
{
    client *c = cr->data;
    c->connect_status = status;
}

static bool pred_connected(void *ctx)
{
    client *c = ctx;
    return c->connect_status != 1;
}

/* Connects to the server; reads only if read. Returns the connect status. */
static int client_connect(env *e, client *c, bool read)
{
    memset(c, 0, sizeof(*c));
    assert_true(e->nclients < MAX_CLIENTS);
    e->clients[e->nclients++] = c;
    c->e = e;
    buf_init(&c->in, CLIENT_KEEP);
    assert_int_equal(uv_tcp_init(&e->loop, &c->tcp), 0);
    assert_int_equal(uv_timer_init(&e->loop, &c->timer), 0);
    c->tcp.data = c;
    c->timer.data = c;
    c->creq.data = c;
    c->connect_status = 1;
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", http_server_port(e->srv), &sa), 0);
    assert_int_equal(
        uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&sa, client_connect_cb), 0);
    assert_true(run_until(e, pred_connected, c, RUN_GUARD_MS));
    if (c->connect_status == 0 && read)
        client_start_read(c);
    return c->connect_status;
}

static void client_open(env *e, client *c) { assert_int_equal(client_connect(e, c, true), 0); }

typedef struct cwrite {
    uv_write_t w; /* libuv request; first */
    client *c;    /* owner */
    char data[];  /* the bytes */
} cwrite;

static void cwrite_cb(uv_write_t *w, int status)
{
    cwrite *cw = (cwrite *)w;
    if (status < 0)
        cw->c->write_errs++;
    free(cw);
}

static void client_send(client *c, const void *p, size_t n)
{
    cwrite *cw = malloc(sizeof(*cw) + n);
    assert_non_null(cw);
    cw->c = c;
    memcpy(cw->data, p, n);
    uv_buf_t b = uv_buf_init(cw->data, (unsigned)n);
    if (uv_write(&cw->w, (uv_stream_t *)&c->tcp, &b, 1, cwrite_cb) != 0) {
        c->write_errs++;
        free(cw);
    }
}

static void client_send_str(client *c, const char *s) { client_send(c, s, strlen(s)); }

static void dribble_cb(uv_timer_t *t)
{
    client *c = t->data;
    size_t k = c->drib_len - c->drib_off;
    if (k > c->drib_piece)
        k = c->drib_piece;
    client_send(c, c->drib + c->drib_off, k);
    c->drib_off += k;
    if (c->drib_off == c->drib_len)
        uv_timer_stop(t);
}

/* Sends s a few bytes at a time, 1 ms apart, so the server sees many reads. */
static void client_dribble(client *c, const char *s, size_t piece)
{
    free(c->drib);
    c->drib_len = strlen(s);
    c->drib = malloc(c->drib_len);
    assert_non_null(c->drib);
    memcpy(c->drib, s, c->drib_len);
    c->drib_off = 0;
    c->drib_piece = piece;
    uv_timer_start(&c->timer, dribble_cb, 1, 1);
}

static bool pred_dribbled(void *ctx)
{
    client *c = ctx;
    return c->drib_off == c->drib_len;
}

static bool pred_ended(void *ctx)
{
    client *c = ctx;
    return c->ended;
}

static void run_ended(env *e, client *c) { assert_true(run_until(e, pred_ended, c, RUN_GUARD_MS)); }

/* ------------------------------------------------------------ responses */

typedef struct resp {
    int status;
    char reason[64];
    size_t nh;
    char name[RESP_MAXH][64];
    char value[RESP_MAXH][512];
    bool chunked;
    size_t nchunks;
    size_t chunk_len[RESP_MAXCHUNKS]; /* the first RESP_MAXCHUNKS chunk sizes */
    buf body;                         /* de-chunked */
    size_t raw_len;                   /* bytes of the whole response */
} resp;

static const char *resp_header(const resp *r, const char *name)
{
    for (size_t i = 0; i < r->nh; i++)
        if (strcasecmp(r->name[i], name) == 0)
            return r->value[i];
    return NULL;
}

static size_t resp_header_count(const resp *r, const char *name)
{
    size_t k = 0;
    for (size_t i = 0; i < r->nh; i++)
        k += strcasecmp(r->name[i], name) == 0;
    return k;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Parses one response at p strictly as this server writes them. 1 = whole
 * response (r->raw_len its length), 0 = incomplete, -1 = malformed. */
static int resp_parse_one(const char *p, size_t n, bool head, resp *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->body, CLIENT_KEEP);
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end)
        return 0;
    size_t hlen = (size_t)(end - p) + 4;
    const char *eol = memmem(p, hlen, "\r\n", 2);
    size_t sl = (size_t)(eol - p);
    if (sl < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[12] != ' ')
        return -1;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        r->status = r->status * 10 + (p[i] - '0');
    }
    if (sl - 13 >= sizeof(r->reason))
        return -1;
    memcpy(r->reason, p + 13, sl - 13);
    for (const char *q = eol + 2; q < end + 2;) {
        const char *le = memmem(q, (size_t)(p + hlen - q), "\r\n", 2);
        const char *colon = memchr(q, ':', (size_t)(le - q));
        if (!colon || colon + 1 >= le || colon[1] != ' ' || r->nh == RESP_MAXH)
            return -1;
        size_t nl = (size_t)(colon - q), vl = (size_t)(le - colon - 2);
        if (nl == 0 || nl >= sizeof(r->name[0]) || vl >= sizeof(r->value[0]))
            return -1;
        memcpy(r->name[r->nh], q, nl);
        memcpy(r->value[r->nh], colon + 2, vl);
        r->nh++;
        q = le + 2;
    }
    size_t off = hlen;
    if (r->status < 200 || head) {
        r->raw_len = off;
        return 1;
    }
    const char *te = resp_header(r, "transfer-encoding"), *cl = resp_header(r, "content-length");
    if ((te && cl) || resp_header_count(r, "content-length") > 1)
        return -1;
    if (te) {
        if (strcmp(te, "chunked") != 0)
            return -1;
        r->chunked = true;
        for (;;) {
            const char *le = memmem(p + off, n - off, "\r\n", 2);
            if (!le)
                return 0;
            size_t digits = (size_t)(le - (p + off)), size = 0;
            if (digits == 0 || digits > 15)
                return -1;
            for (size_t i = 0; i < digits; i++) {
                int v = hexval(p[off + i]);
                if (v < 0)
                    return -1;
                size = size * 16 + (size_t)v;
            }
            off += digits + 2;
            if (size == 0) {
                if (n - off < 2)
                    return 0;
                if (memcmp(p + off, "\r\n", 2) != 0)
                    return -1;
                off += 2;
                break;
            }
            if (n - off < size + 2)
                return 0;
            if (memcmp(p + off + size, "\r\n", 2) != 0)
                return -1;
            if (r->nchunks < RESP_MAXCHUNKS)
                r->chunk_len[r->nchunks] = size;
            r->nchunks++;
            if (buf_append(&r->body, p + off, size) != 0)
                return -1;
            off += size + 2;
        }
    } else if (cl) {
        char *e;
        errno = 0;
        unsigned long long len = strtoull(cl, &e, 10);
        if (errno || *e || e == cl)
            return -1;
        if (n - off < len)
            return 0;
        if (buf_append(&r->body, p + off, (size_t)len) != 0)
            return -1;
        off += (size_t)len;
    } else {
        return -1; /* this server always frames its responses */
    }
    r->raw_len = off;
    return 1;
}

typedef struct resp_list {
    resp *r;     /* parsed responses */
    size_t n;    /* how many */
    size_t used; /* bytes they took */
    bool bad;    /* malformed bytes follow */
} resp_list;

static void resps_free(resp_list *l)
{
    for (size_t i = 0; i < MAX_RESPS; i++)
        buf_free(&l->r[i].body);
    free(l->r);
    memset(l, 0, sizeof(*l));
}

/* Parses all whole responses the client got; bit i of head_mask marks the
 * i-th as an answer to HEAD (no body). */
static void resps_get(const client *c, unsigned head_mask, resp_list *l)
{
    memset(l, 0, sizeof(*l));
    l->r = calloc(MAX_RESPS, sizeof(resp));
    assert_non_null(l->r);
    while (c->in.data && l->n < MAX_RESPS) {
        resp *r = &l->r[l->n];
        int rc = resp_parse_one(c->in.data + l->used, c->in.len - l->used,
                                (head_mask >> l->n) & 1u, r);
        if (rc <= 0) {
            buf_free(&r->body);
            l->bad = rc < 0;
            break;
        }
        l->used += r->raw_len;
        l->n++;
    }
}

static size_t client_nfinal(const client *c)
{
    resp_list l;
    resps_get(c, 0, &l);
    size_t k = 0;
    for (size_t i = 0; i < l.n; i++)
        k += l.r[i].status >= 200;
    resps_free(&l);
    return k;
}

typedef struct want_final {
    client *c;
    size_t n;
} want_final;

static bool pred_final(void *ctx)
{
    want_final *w = ctx;
    return w->c->ended || client_nfinal(w->c) >= w->n;
}

/* Runs until the client has n final responses (or the server hung up). */
static void run_final(env *e, client *c, size_t n)
{
    want_final w = {c, n};
    assert_true(run_until(e, pred_final, &w, RUN_GUARD_MS));
}

static bool pred_has_bytes(void *ctx)
{
    client *c = ctx;
    return c->ended || c->in.len > 0;
}

static json_t *resp_json(const resp *r)
{
    json_error_t err;
    json_t *j = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &err);
    if (!j)
        fail_msg("response body is not JSON: %s (%.*s)", err.text, (int)r->body.len,
                 r->body.data ? r->body.data : "");
    return j;
}

static const char *jstr(json_t *j, const char *key)
{
    const char *s = json_string_value(json_object_get(j, key));
    assert_non_null(s);
    return s;
}

/* Every response from this server: Date, framing, a request id. */
static void assert_common_headers(const resp *r)
{
    assert_int_equal(resp_header_count(r, "date"), 1);
    assert_int_equal(resp_header_count(r, "x-request-id"), 1);
    assert_int_equal(resp_header_count(r, "connection") <= 1, 1);
}

/* A server-made error: status line, OpenAI error shape, Connection: close. */
static void assert_error_resp(const resp *r, int status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_string_equal(r->reason, http_status_text(status));
    assert_common_headers(r);
    assert_true(is_hex_id(resp_header(r, "x-request-id")));
    assert_string_equal(resp_header(r, "content-type"), "application/json");
    assert_string_equal(resp_header(r, "connection"), "close");
    json_t *j = resp_json(r);
    json_t *er = json_object_get(j, "error");
    assert_true(json_is_object(er));
    assert_int_equal(json_object_size(j), 1);
    assert_int_equal(json_object_size(er), 4);
    assert_true(strlen(jstr(er, "message")) > 0);
    assert_string_equal(jstr(er, "type"), "invalid_request_error");
    assert_true(json_is_null(json_object_get(er, "param")));
    json_t *jc = json_object_get(er, "code");
    if (code)
        assert_string_equal(json_string_value(jc), code);
    else
        assert_true(json_is_null(jc) || json_is_string(jc));
    json_decref(j);
}

/* Sends raw bytes on a new connection and expects exactly one server-made
 * error followed by the server hanging up; the app never sees a request. */
static void expect_rejected(env *e, const char *raw, size_t rawlen, int status, const char *code)
{
    client *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    client_open(e, c);
    int before = e->a.requests;
    client_send(c, raw, rawlen);
    run_ended(e, c);
    assert_true(c->eof);
    resp_list l;
    resps_get(c, 0, &l);
    if (l.n != 1 || l.used != c->in.len)
        fail_msg("expected one %d response for %.40s..., got %zu (%zu of %zu bytes): %.200s",
                 status, raw, l.n, l.used, c->in.len, c->in.data ? c->in.data : "");
    if (l.r[0].status != status)
        fail_msg("expected %d for \"%.60s\", got %d", status, raw, l.r[0].status);
    assert_error_resp(&l.r[0], status, code);
    assert_int_equal(e->a.requests, before);
    resps_free(&l);
    /* the client memory is released after env_done closed it */
}

static http_limits limits_default(void)
{
    return (http_limits){
        .max_header_bytes = 8192,
        .max_headers = 32,
        .max_body_bytes = 1u << 20,
        .header_timeout_ms = 2000,
        .body_timeout_ms = 2000,
        .idle_timeout_ms = 2000,
        .send_timeout_ms = 5000,
    };
}

static void env_done_free_clients(env *e)
{
    client *owned[MAX_CLIENTS];
    size_t n = e->nclients;
    memcpy(owned, e->clients, sizeof(owned));
    env_done(e);
    for (size_t i = 0; i < n; i++)
        free(owned[i]);
}

/* ------------------------------------------------------------ basics */

static void assert_echo_header(json_t *echo, size_t i, const char *name, const char *value)
{
    json_t *h = json_array_get(json_object_get(echo, "headers"), i);
    assert_non_null(h);
    assert_string_equal(json_string_value(json_array_get(h, 0)), name);
    assert_string_equal(json_string_value(json_array_get(h, 1)), value);
}

static void test_get_and_post_keep_alive(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);

    client_send_str(&c, "GET /echo?a=1&b=2 HTTP/1.1\r\nHost: example\r\n"
                        "X-Custom: hello world\r\n\r\n");
    run_final(&e, &c, 1);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    const resp *r = &l.r[0];
    assert_memory_equal(c.in.data, "HTTP/1.1 200 OK\r\n", 17);
    assert_common_headers(r);
    assert_null(resp_header(r, "connection")); /* HTTP/1.1 keep-alive is the default */
    assert_string_equal(resp_header(r, "content-type"), "application/json");
    assert_string_equal(resp_header(r, "x-app"), "echo");
    json_t *j = resp_json(r);
    assert_string_equal(jstr(j, "method"), "GET");
    assert_string_equal(jstr(j, "path"), "/echo");
    assert_string_equal(jstr(j, "query"), "a=1&b=2");
    assert_string_equal(jstr(j, "body"), "");
    assert_int_equal(json_array_size(json_object_get(j, "headers")), 2);
    assert_echo_header(j, 0, "Host", "example");
    assert_echo_header(j, 1, "X-Custom", "hello world");
    assert_true(is_hex_id(jstr(j, "request_id")));
    assert_string_equal(jstr(j, "request_id"), resp_header(r, "x-request-id"));
    char first_id[65];
    snprintf(first_id, sizeof(first_id), "%s", jstr(j, "request_id"));
    json_decref(j);
    resps_free(&l);

    /* same connection, a POST with a body */
    client_send_str(&c, "POST /echo HTTP/1.1\r\nHost: example\r\nContent-Type: text/plain\r\n"
                        "Content-Length: 11\r\n\r\nhello there");
    run_final(&e, &c, 2);
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    r = &l.r[1];
    assert_int_equal(r->status, 200);
    assert_null(resp_header(r, "connection"));
    j = resp_json(r);
    assert_string_equal(jstr(j, "method"), "POST");
    assert_string_equal(jstr(j, "path"), "/echo");
    assert_string_equal(jstr(j, "query"), "");
    assert_string_equal(jstr(j, "body"), "hello there");
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), 11);
    assert_echo_header(j, 2, "Content-Length", "11");
    assert_true(is_hex_id(jstr(j, "request_id")));
    assert_string_not_equal(jstr(j, "request_id"), first_id);
    json_decref(j);
    resps_free(&l);

    assert_false(c.ended);
    assert_int_equal(http_server_nconns(e.srv), 1);
    assert_int_equal(e.a.requests, 2);
    assert_int_equal(e.a.aborts, 0);
    assert_int_equal(e.a.write_errs, 0);
    env_done(&e);
}

static void test_http10_closes_after_response(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /echo HTTP/1.0\r\nHost: x\r\n\r\n");
    run_ended(&e, &c);
    assert_true(c.eof);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    assert_int_equal(l.r[0].status, 200);
    assert_string_equal(resp_header(&l.r[0], "connection"), "close");
    resps_free(&l);

    /* HTTP/1.0 asking for keep-alive gets it, and a second request works */
    client c2;
    client_open(&e, &c2);
    client_send_str(&c2, "GET /echo?n=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    run_final(&e, &c2, 1);
    client_send_str(&c2, "GET /echo?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    run_final(&e, &c2, 2);
    resps_get(&c2, 0, &l);
    assert_int_equal(l.n, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(l.r[i].status, 200);
        assert_string_equal(resp_header(&l.r[i], "connection"), "keep-alive");
    }
    assert_false(c2.ended);
    resps_free(&l);
    assert_int_equal(e.a.requests, 3);
    env_done(&e);
}

static void test_connection_close_honored(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    /* a request pipelined after "Connection: close" is never processed */
    client_send_str(&c, "GET /echo?i=1 HTTP/1.1\r\nConnection: close\r\n\r\n"
                        "GET /echo?i=2 HTTP/1.1\r\n\r\n");
    run_ended(&e, &c);
    assert_true(c.eof);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    assert_int_equal(l.r[0].status, 200);
    assert_string_equal(resp_header(&l.r[0], "connection"), "close");
    resps_free(&l);
    run_for(&e, 20);
    assert_int_equal(e.a.requests, 1);
    assert_string_equal(e.a.log, "+/echo?i=1 =/echo?i=1 ");
    env_done(&e);
}

static void test_head_response_has_no_body(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    /* HEAD then GET on one connection: the answer to HEAD must carry no
     * body bytes, or the client reads them as the next response */
    client_send_str(&c, "HEAD /echo HTTP/1.1\r\n\r\nGET /echo?i=2 HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.requests, 2);
    run_for(&e, 30);
    resp_list l;
    resps_get(&c, 1u, &l);
    assert_true(l.n >= 1);
    assert_int_equal(l.r[0].status, 200);
    assert_non_null(resp_header(&l.r[0], "content-length"));
    assert_true(c.in.len >= l.r[0].raw_len + 17);
    assert_memory_equal(c.in.data + l.r[0].raw_len, "HTTP/1.1 200 OK\r\n", 17);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    resps_free(&l);
    env_done(&e);
}

static void test_empty_and_padded_header_values(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /echo HTTP/1.1\r\nX-Empty:\r\nX-Next: v\r\nX-Pad: \t padded \t \r\n"
                        "X-Last:\r\n\r\n");
    run_final(&e, &c, 1);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    json_t *j = resp_json(&l.r[0]);
    assert_int_equal(json_array_size(json_object_get(j, "headers")), 4);
    assert_echo_header(j, 0, "X-Empty", "");
    assert_echo_header(j, 1, "X-Next", "v");
    assert_echo_header(j, 2, "X-Pad", "padded");
    assert_echo_header(j, 3, "X-Last", "");
    json_decref(j);
    resps_free(&l);
    env_done(&e);
}

static void test_request_split_across_reads(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    /* 3 bytes a millisecond: URL, names and values arrive in pieces */
    client_dribble(&c, "POST /echo?q=split HTTP/1.1\r\nHost: dribble.example\r\n"
                       "X-Long-Header-Name: a value with several words\r\nX-B: 1\r\n"
                       "Content-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz",
                   3);
    run_final(&e, &c, 1);
    assert_true(pred_dribbled(&c));
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    json_t *j = resp_json(&l.r[0]);
    assert_string_equal(jstr(j, "path"), "/echo");
    assert_string_equal(jstr(j, "query"), "q=split");
    assert_string_equal(jstr(j, "body"), "abcdefghijklmnopqrstuvwxyz");
    assert_int_equal(json_array_size(json_object_get(j, "headers")), 4);
    assert_echo_header(j, 0, "Host", "dribble.example");
    assert_echo_header(j, 1, "X-Long-Header-Name", "a value with several words");
    assert_echo_header(j, 2, "X-B", "1");
    assert_echo_header(j, 3, "Content-Length", "26");
    json_decref(j);
    resps_free(&l);
    env_done(&e);
}

/* ------------------------------------------------------------ pipelining */

static void check_pipelined(bool first_late)
{
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    char req[512];
    snprintf(req, sizeof(req),
             "GET %s HTTP/1.1\r\nHost: p\r\n\r\n"
             "POST /echo?i=2 HTTP/1.1\r\nContent-Length: 3\r\n\r\ntwo"
             "GET /echo?i=3 HTTP/1.1\r\nHost: p\r\n\r\n",
             first_late ? "/late?ms=60" : "/echo?i=1");
    client_send_str(&c, req); /* one write */
    run_final(&e, &c, 3);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.used, c.in.len);
    const char *want_q[3] = {first_late ? "ms=60" : "i=1", "i=2", "i=3"};
    const char *want_body[3] = {"", "two", ""};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(l.r[i].status, 200);
        json_t *j = resp_json(&l.r[i]);
        assert_string_equal(jstr(j, "query"), want_q[i]);
        assert_string_equal(jstr(j, "body"), want_body[i]);
        json_decref(j);
    }
    resps_free(&l);
    /* the second request reached the app only after the first was answered */
    if (first_late)
        assert_string_equal(e.a.log, "+/late?ms=60 =/late?ms=60 +/echo?i=2 =/echo?i=2 "
                                     "+/echo?i=3 =/echo?i=3 ");
    else
        assert_string_equal(e.a.log, "+/echo?i=1 =/echo?i=1 +/echo?i=2 =/echo?i=2 "
                                     "+/echo?i=3 =/echo?i=3 ");
    assert_false(c.ended);
    assert_int_equal(http_server_nconns(e.srv), 1);
    env_done(&e);
}

static void test_pipelined_in_order(void **state)
{
    (void)state;
    check_pipelined(false);
}

static void test_pipelined_first_answered_late(void **state)
{
    (void)state;
    check_pipelined(true);
}

static void test_pipelined_large_body_while_held(void **state)
{
    (void)state;
    /* while the first request is answered late, the client keeps sending a
     * second one whose body is larger than the pipelining buffer: nothing
     * of it may be lost */
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    size_t n = 600 * 1024;
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "GET /late?ms=150 HTTP/1.1\r\n\r\n"
                      "POST /echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n",
                      n);
    char *all = malloc((size_t)hl + n);
    assert_non_null(all);
    memcpy(all, head, (size_t)hl);
    pattern_fill(all + hl, 0, n);
    char fnv[17];
    fnv_hex(all + hl, n, fnv);
    client_send(&c, all, (size_t)hl + n);
    free(all);
    run_final(&e, &c, 2);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.r[0].status, 200);
    assert_int_equal(l.r[1].status, 200);
    json_t *j = resp_json(&l.r[1]);
    assert_int_equal(json_integer_value(json_object_get(j, "body_len")), (json_int_t)n);
    assert_string_equal(jstr(j, "body_fnv"), fnv);
    json_decref(j);
    resps_free(&l);
    assert_int_equal(c.write_errs, 0);
    env_done(&e);
}

/* ------------------------------------------------------------ bodies */

static void test_chunked_request_body(void **state)
{
    (void)state;
    static const char req[] = "POST /echo HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "3\r\nabc\r\n"
                              "1;ext=1\r\nd\r\n"
                              "A;foo=\"bar\";baz\r\n0123456789\r\n"
                              "11\r\nseventeen-bytes!!\r\n"
                              "0\r\nX-Trailer: t\r\n\r\n";
    static const char want[] = "abcd0123456789seventeen-bytes!!";
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, req);
    run_final(&e, &c, 1);
    /* the same again in 2-byte pieces on the same connection */
    client_dribble(&c, req, 2);
    run_final(&e, &c, 2);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(l.r[i].status, 200);
        json_t *j = resp_json(&l.r[i]);
        assert_string_equal(jstr(j, "body"), want);
        assert_int_equal(json_integer_value(json_object_get(j, "body_len")), strlen(want));
        /* the trailer is not a header */
        json_t *hs = json_object_get(j, "headers");
        assert_int_equal(json_array_size(hs), 2);
        assert_echo_header(j, 1, "Transfer-Encoding", "chunked");
        json_decref(j);
    }
    resps_free(&l);
    assert_false(c.ended);
    env_done(&e);
}

static void test_expect_100_continue(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_true(run_until(&e, pred_has_bytes, &c, RUN_GUARD_MS));
    run_for(&e, 20);
    /* exactly the interim response, nothing else yet */
    assert_int_equal(c.in.len, 25);
    assert_memory_equal(c.in.data, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    assert_int_equal(e.a.requests, 0);
    client_send_str(&c, "hello");
    run_final(&e, &c, 1);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    assert_int_equal(l.r[0].status, 100);
    assert_int_equal(l.r[1].status, 200);
    json_t *j = resp_json(&l.r[1]);
    assert_string_equal(jstr(j, "body"), "hello");
    json_decref(j);
    resps_free(&l);
    env_done(&e);
}

static void test_expect_other_is_417(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    static const char r1[] = "POST /echo HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\nhello";
    expect_rejected(&e, r1, strlen(r1), 417, NULL);
    env_done_free_clients(&e);
}

/* ------------------------------------------------------------ limits */

static void test_too_many_headers(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    lim.max_headers = 8;
    env e;
    env_init(&e, &lim);
    char req[1024];
    size_t n = (size_t)snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\n");
    for (int i = 0; i < 8; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-H%d: v\r\n", i);
    /* exactly the limit passes */
    client *ok = calloc(1, sizeof(*ok));
    assert_non_null(ok);
    client_open(&e, ok);
    client_send(ok, req, n);
    client_send_str(ok, "\r\n");
    run_final(&e, ok, 1);
    resp_list l;
    resps_get(ok, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.r[0].status, 200);
    resps_free(&l);
    /* one more is 431 */
    n += (size_t)snprintf(req + n, sizeof(req) - n, "X-H8: v\r\n\r\n");
    expect_rejected(&e, req, n, 431, "request_header_fields_too_large");
    assert_int_equal(e.a.requests, 1);
    env_done_free_clients(&e);
}

static void test_header_bytes_over_max(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    lim.max_header_bytes = 1024;
    lim.max_headers = 100;
    env e;
    env_init(&e, &lim);
    char big[3000];
    memset(big, 'a', sizeof(big));
    char req[4096];
    /* one huge header value */
    int n = snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\nX-Big: %.2000s\r\n\r\n", big);
    expect_rejected(&e, req, (size_t)n, 431, "request_header_fields_too_large");
    /* one huge header name */
    n = snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\nX-%.2000s: v\r\n\r\n", big);
    expect_rejected(&e, req, (size_t)n, 431, "request_header_fields_too_large");
    /* a huge URL */
    n = snprintf(req, sizeof(req), "GET /echo?q=%.2000s HTTP/1.1\r\n\r\n", big);
    expect_rejected(&e, req, (size_t)n, 431, "request_header_fields_too_large");
    /* many small headers adding up */
    size_t k = (size_t)snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\n");
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(req + k, sizeof(req) - k, "X-Header-%02d: value-%02d\r\n", i, i);
    k += (size_t)snprintf(req + k, sizeof(req) - k, "\r\n");
    expect_rejected(&e, req, k, 431, "request_header_fields_too_large");
    /* a huge header sent without its end is refused before it completes */
    client c;
    client_open(&e, &c);
    n = snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\nX-Big: %.2000s", big);
    client_send(&c, req, (size_t)n);
    run_ended(&e, &c);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_error_resp(&l.r[0], 431, "request_header_fields_too_large");
    resps_free(&l);
    assert_int_equal(e.a.requests, 0);
    client *owned[MAX_CLIENTS];
    size_t nown = 0;
    for (size_t i = 0; i < e.nclients; i++)
        if (e.clients[i] != &c)
            owned[nown++] = e.clients[i];
    env_done(&e);
    for (size_t i = 0; i < nown; i++)
        free(owned[i]);
}

static void test_content_length_over_max(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    lim.max_body_bytes = 1024;
    env e;
    env_init(&e, &lim);
    /* only the headers are sent: the 413 comes before any body byte */
    client c;
    client_open(&e, &c);
    client_send_str(&c, "POST /echo HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
    run_ended(&e, &c);
    assert_true(c.eof);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    assert_error_resp(&l.r[0], 413, "request_too_large");
    resps_free(&l);
    /* with Expect: 100-continue the answer is the 413, never a 100 */
    client c2;
    client_open(&e, &c2);
    client_send_str(&c2, "POST /echo HTTP/1.1\r\nExpect: 100-continue\r\n"
                         "Content-Length: 99999999999\r\n\r\n");
    run_ended(&e, &c2);
    resps_get(&c2, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c2.in.len);
    assert_error_resp(&l.r[0], 413, "request_too_large");
    resps_free(&l);
    /* a client that sends a 2 MiB body anyway still gets the whole 413
     * (lingering close, no reset under its feet) */
    client c3;
    client_open(&e, &c3);
    size_t n = 2u << 20;
    char *body = malloc(n);
    assert_non_null(body);
    memset(body, 'b', n);
    client_send_str(&c3, "POST /echo HTTP/1.1\r\nContent-Length: 2097152\r\n\r\n");
    client_send(&c3, body, n);
    free(body);
    run_ended(&e, &c3);
    resps_get(&c3, 0, &l);
    assert_int_equal(l.n, 1);
    assert_error_resp(&l.r[0], 413, "request_too_large");
    resps_free(&l);
    /* exactly the limit passes */
    client c4;
    client_open(&e, &c4);
    char req[2048];
    int k = snprintf(req, sizeof(req), "POST /echo HTTP/1.1\r\nContent-Length: 1024\r\n\r\n");
    memset(req + k, 'q', 1024);
    client_send(&c4, req, (size_t)k + 1024);
    run_final(&e, &c4, 1);
    resps_get(&c4, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.r[0].status, 200);
    resps_free(&l);
    assert_int_equal(e.a.requests, 1);
    env_done(&e);
}

static void test_chunked_body_over_max(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    lim.max_body_bytes = 1024;
    env e;
    env_init(&e, &lim);
    char req[4096];
    char chunk[500];
    memset(chunk, 'c', sizeof(chunk));
    int n = snprintf(req, sizeof(req),
                     "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "1f4\r\n%.500s\r\n1f4\r\n%.500s\r\n1f4\r\n%.500s\r\n0\r\n\r\n",
                     chunk, chunk, chunk);
    expect_rejected(&e, req, (size_t)n, 413, "request_too_large");
    env_done_free_clients(&e);
}

static void test_malformed_requests_are_400(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET /echo HTTP/1.1 extra\r\n\r\n",
        "GET /echo HTTP/9.9\r\n\r\n",
        "G@T /echo HTTP/1.1\r\n\r\n",
        "GET /echo HTTP/1.1\r\nX-Ctl: a\001b\r\n\r\n",
        "GET /echo HTTP/1.1\r\nx-request-id: ab\rcd\r\n\r\n",
        "GET /echo HTTP/1.1\r\nNoColon\r\n\r\n",
        "GET /echo HTTP/1.1\r\n: novalue\r\n\r\n",
        "GET /ec ho HTTP/1.1\r\n\r\n",
        /* a field name is a token (RFC 9110 5.1): llhttp 8 lets a space
         * through, so the server has to check */
        "GET /echo HTTP/1.1\r\nBad Name: v\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding x: chunked\r\nContent-Length: 0\r\n\r\n",
        "GET /echo HTTP/1.1\r\nX(y): v\r\n\r\n",
    };
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_rejected(&e, bad[i], strlen(bad[i]), 400, "bad_request");
    env_done_free_clients(&e);
}

static void test_request_smuggling_is_400(void **state)
{
    (void)state;
    /* each carries a second request that must never reach the app */
    static const char *const bad[] = {
        "POST /echo HTTP/1.1\r\nContent-Length: 24\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 24\r\n\r\n"
        "0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 30\r\n\r\n"
        "GET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        "0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length : 0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: +0\r\n\r\nGET /echo?smuggled HTTP/1.1\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0x10\r\nGET /echo?smuggled\r\n0\r\n\r\n",
    };
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_rejected(&e, bad[i], strlen(bad[i]), 400, "bad_request");
    run_for(&e, 20);
    assert_int_equal(e.a.requests, 0);
    assert_string_equal(e.a.log, "");
    env_done_free_clients(&e);
}

/* An Upgrade (h2c, as curl --http2 sends on http://, or a websocket) is
 * not taken: the request is an ordinary HTTP/1.1 one, its body read, and
 * the connection stays HTTP/1.1 for the next request (RFC 9110 7.8); it
 * used to be answered and the next request cut with a 400 "Pause on
 * CONNECT/Upgrade". CONNECT is refused (405, close): not a forward proxy;
 * two Host headers are a 400 (RFC 9112 3.2). */
static void test_upgrade_ignored_connect_refused(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client *c = calloc(1, sizeof(*c)); /* freed with the rejected ones' */
    assert_non_null(c);
    client_open(&e, c);
    client_send_str(c, "GET /echo?a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
    run_final(&e, c, 1);
    client_send_str(c, "POST /echo?b HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                        "Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello");
    run_final(&e, c, 2);
    client_send_str(c, "GET /echo?c HTTP/1.1\r\nHost: x\r\n\r\n");
    run_final(&e, c, 3);
    resp_list l;
    resps_get(c, 0, &l);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.used, c->in.len);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(l.r[i].status, 200);
        assert_null(resp_header(&l.r[i], "connection"));
    }
    json_t *j = resp_json(&l.r[1]);
    assert_string_equal(jstr(j, "body"), "hello");
    json_decref(j);
    resps_free(&l);
    assert_false(c->ended);
    assert_int_equal(e.a.requests, 3);

    static const char connect[] = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                                  "Content-Length: 4\r\n\r\nabcdGET /echo?smuggled HTTP/1.1\r\n\r\n";
    expect_rejected(&e, connect, strlen(connect), 405, "method_not_allowed");
    static const char hosts[] = "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    expect_rejected(&e, hosts, strlen(hosts), 400, "bad_request");
    run_for(&e, 20);
    assert_int_equal(e.a.requests, 3);
    env_done_free_clients(&e);
}

static void test_obs_fold_header(void **state)
{
    (void)state;
    /* RFC 9112 5.2: a server rejects obs-fold with 400, or replaces it with
     * spaces; it never hands a value with CR/LF to the application */
    static const char req[] = "GET /echo HTTP/1.1\r\nX-Folded: first\r\n second\r\nX-After: z\r\n\r\n";
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, req);
    run_final(&e, &c, 1);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    if (l.r[0].status == 400) {
        assert_error_resp(&l.r[0], 400, "bad_request");
        assert_int_equal(e.a.requests, 0);
    } else {
        assert_int_equal(l.r[0].status, 200);
        json_t *j = resp_json(&l.r[0]);
        json_t *hs = json_object_get(j, "headers");
        assert_int_equal(json_array_size(hs), 2);
        assert_echo_header(j, 0, "X-Folded", "first second"); /* the fold became a space */
        assert_echo_header(j, 1, "X-After", "z");
        for (size_t i = 0; i < json_array_size(hs); i++) {
            const char *v = json_string_value(json_array_get(json_array_get(hs, i), 1));
            if (strpbrk(v, "\r\n"))
                fail_msg("header %zu value carries CR/LF: \"%s\"", i, v);
        }
        json_decref(j);
    }
    resps_free(&l);
    env_done(&e);
}

/* ------------------------------------------------------------ timeouts */

static http_limits limits_short(void)
{
    http_limits lim = limits_default();
    lim.header_timeout_ms = 200;
    lim.body_timeout_ms = 200;
    lim.idle_timeout_ms = 200;
    return lim;
}

/* Sends bytes that stop short of a complete request, then waits: the
 * server must answer 408 after the (short) timeout and close. */
static void expect_timeout_408(const char *partial)
{
    http_limits lim = limits_short();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    uint64_t t0 = uv_now(&e.loop);
    client_send_str(&c, partial);
    run_ended(&e, &c);
    assert_true(c.eof);
    assert_true(c.t_end - t0 >= 190);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    assert_error_resp(&l.r[0], 408, "request_timeout");
    resps_free(&l);
    assert_int_equal(e.a.requests, 0);
    env_done(&e);
}

static void test_header_timeout_408(void **state)
{
    (void)state;
    expect_timeout_408("GET /echo HTTP/1.1\r\nHost: hal");
}

static void test_body_timeout_408(void **state)
{
    (void)state;
    expect_timeout_408("POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
}

static void test_silent_connection_closed(void **state)
{
    (void)state;
    http_limits lim = limits_short();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    uint64_t t0 = uv_now(&e.loop);
    run_ended(&e, &c);
    assert_true(c.eof);
    assert_int_equal(c.read_err, 0);
    assert_int_equal(c.in.len, 0); /* no response at all */
    assert_true(c.t_end - t0 >= 190);
    env_done(&e);
}

static void test_idle_keep_alive_closed(void **state)
{
    (void)state;
    http_limits lim = limits_short();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /echo HTTP/1.1\r\n\r\n");
    run_final(&e, &c, 1);
    size_t got = c.in.len;
    uint64_t t0 = uv_now(&e.loop);
    run_ended(&e, &c);
    assert_true(c.eof);
    assert_int_equal(c.in.len, got); /* closed without another byte */
    assert_true(c.t_end - t0 >= 150);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.r[0].status, 200);
    resps_free(&l);
    env_done(&e);
}

static void test_slow_reader_gets_whole_response(void **state)
{
    (void)state;
    /* a big whole response to a client that reads late: the idle timeout
     * (the connection has no request) must not cut the response short while
     * its bytes are still queued; only the send timeout applies */
    http_limits lim = limits_short();
    lim.idle_timeout_ms = 100;
    lim.send_timeout_ms = 5000;
    env e;
    env_init(&e, &lim);
    client c;
    assert_int_equal(client_connect(&e, &c, false), 0);
    size_t n = 32u << 20;
    client_send_str(&c, "GET /big?n=33554432 HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.requests, 1);
    run_for(&e, 400); /* four idle timeouts */
    client_start_read(&c);
    run_final(&e, &c, 1);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.r[0].status, 200);
    assert_int_equal(l.r[0].body.len, n);
    assert_true(pattern_check(l.r[0].body.data, n));
    resps_free(&l);
    env_done(&e);
}

/* ------------------------------------------------------------ request ids */

static void test_request_id(void **state)
{
    (void)state;
    char id64[65], id65[66];
    for (size_t i = 0; i < 64; i++)
        id64[i] = "abcXYZ019-_.:"[i % 13];
    id64[64] = '\0';
    memcpy(id65, id64, 64);
    id65[64] = 'q';
    id65[65] = '\0';
    struct {
        const char *sent; /* x-request-id value, NULL = no header */
        bool echoed;      /* the server keeps it */
    } cases[] = {
        {"abc-123_X.y:z", true},
        {"  leading-ws", true}, /* leading whitespace is not part of it */
        {id64, true},
        {id65, false},
        {"has space", false},
        {"\"quoted\"", false},
        {"semi;colon", false},
        {"slash/ok?", false},
        {"", false},
        {NULL, false},
    };
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    char prev[65] = "";
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char req[256];
        if (cases[i].sent)
            snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\nx-request-id: %s\r\n\r\n",
                     cases[i].sent);
        else
            snprintf(req, sizeof(req), "GET /echo HTTP/1.1\r\n\r\n");
        client_send_str(&c, req);
        run_final(&e, &c, i + 1);
        resp_list l;
        resps_get(&c, 0, &l);
        assert_int_equal(l.n, i + 1);
        const resp *r = &l.r[i];
        assert_int_equal(r->status, 200);
        const char *got = resp_header(r, "x-request-id");
        assert_non_null(got);
        assert_string_equal(got, e.a.last_id);
        json_t *j = resp_json(r);
        assert_string_equal(jstr(j, "request_id"), got);
        json_decref(j);
        if (cases[i].echoed) {
            char trimmed[80];
            const char *s = cases[i].sent;
            while (*s == ' ')
                s++;
            snprintf(trimmed, sizeof(trimmed), "%s", s);
            for (size_t k = strlen(trimmed); k > 0 && trimmed[k - 1] == ' '; k--)
                trimmed[k - 1] = '\0';
            assert_string_equal(got, trimmed);
        } else {
            if (!is_hex_id(got))
                fail_msg("case %zu: \"%s\" should be replaced by a 32-hex id, got \"%s\"", i,
                         cases[i].sent ? cases[i].sent : "(none)", got);
            assert_string_not_equal(got, prev);
        }
        snprintf(prev, sizeof(prev), "%s", got);
        resps_free(&l);
    }
    env_done(&e);
}

/* ------------------------------------------------------------ streaming */

static void test_stream_framing(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /frames HTTP/1.1\r\n\r\nGET /echo?after HTTP/1.1\r\n\r\n");
    run_final(&e, &c, 2);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    const resp *r = &l.r[0];
    assert_int_equal(r->status, 200);
    assert_common_headers(r);
    assert_string_equal(resp_header(r, "transfer-encoding"), "chunked");
    assert_null(resp_header(r, "content-length"));
    assert_string_equal(resp_header(r, "content-type"), "text/plain");
    assert_string_equal(resp_header(r, "x-frames"), "yes");
    assert_true(r->chunked);
    assert_int_equal(r->nchunks, 4); /* the empty write made no chunk */
    assert_int_equal(r->chunk_len[0], 5);
    assert_int_equal(r->chunk_len[1], 1);
    assert_int_equal(r->chunk_len[2], 300);
    assert_int_equal(r->chunk_len[3], 7);
    assert_int_equal(r->body.len, 313);
    assert_memory_equal(r->body.data, "hellox", 6);
    for (size_t i = 6; i < 306; i++)
        assert_int_equal(r->body.data[i], 'z');
    assert_memory_equal(r->body.data + 306, "\r\n0\r\n\r\n", 7);
    /* the exact framing bytes of the first chunks */
    const char *b = memmem(c.in.data, c.in.len, "\r\n\r\n", 4);
    assert_non_null(b);
    assert_memory_equal(b + 4, "5\r\nhello\r\n1\r\nx\r\n12c\r\n", 21);
    /* the next request on the connection went on normally */
    json_t *j = resp_json(&l.r[1]);
    assert_string_equal(jstr(j, "query"), "after");
    json_decref(j);
    resps_free(&l);
    assert_int_equal(e.a.stream_ends, 1);
    assert_int_equal(e.a.write_errs, 0);
    env_done(&e);
}

static bool pred_stream_done(void *ctx)
{
    client *c = ctx;
    return c->ended ||
           (c->in.len >= 5 && memcmp(c->in.data + c->in.len - 5, "0\r\n\r\n", 5) == 0);
}

static void test_stream_backpressure(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    assert_int_equal(client_connect(&e, &c, false), 0);
    size_t total = 16u << 20;
    client_send_str(&c, "GET /stream?n=256&chunk=65536 HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.write_ones, 1);
    /* the producer stopped; with the client not reading nothing moves */
    assert_int_equal(e.a.drains, 0);
    assert_int_equal(e.a.stream_ends, 0);
    assert_non_null(e.a.jobs);
    assert_true(e.a.jobs->waiting);
    assert_true(e.a.jobs->sent < total);
    run_for(&e, 100);
    assert_int_equal(e.a.drains, 0);
    assert_int_equal(e.a.write_ones, 1);
    /* reading resumes: on_drain fires and the producer finishes */
    client_start_read(&c);
    assert_true(run_until(&e, pred_stream_done, &c, 4 * RUN_GUARD_MS));
    assert_false(c.ended);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, c.in.len);
    assert_int_equal(l.r[0].status, 200);
    assert_true(l.r[0].chunked);
    assert_int_equal(l.r[0].nchunks, 256);
    assert_int_equal(l.r[0].body.len, total);
    assert_true(pattern_check(l.r[0].body.data, total));
    resps_free(&l);
    assert_true(e.a.drains >= 1);
    assert_int_equal(e.a.drains, e.a.write_ones);
    assert_int_equal(e.a.drains_unexpected, 0);
    assert_int_equal(e.a.stream_ends, 1);
    assert_int_equal(e.a.aborts, 0);
    assert_int_equal(e.a.write_errs, 0);
    env_done(&e);
}

static void test_send_timeout_aborts_stalled_stream(void **state)
{
    (void)state;
    /* a client that never reads: the send timeout closes the connection and
     * the application hears about it through on_abort */
    http_limits lim = limits_default();
    lim.send_timeout_ms = 300;
    env e;
    env_init(&e, &lim);
    client c;
    assert_int_equal(client_connect(&e, &c, false), 0);
    /* t0 before the request: the send timer cannot be armed earlier, so
     * the abort is never less than 300 ms after t0, however slow the
     * machine (t0 taken after the first write raced with a loaded CI) */
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    client_send_str(&c, "GET /stream?n=256&chunk=65536 HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.write_ones, 1);
    assert_int_equal(e.a.aborts, 0);
    run_int_ge(&e, &e.a.aborts, 1);
    assert_true(uv_now(&e.loop) - t0 >= 300);
    run_for(&e, 20);
    assert_int_equal(e.a.aborts, 1);
    assert_int_equal(e.a.drains, 0);
    assert_int_equal(e.a.stream_ends, 0);
    assert_null(e.a.jobs);
    assert_int_equal(http_server_nconns(e.srv), 0);
    env_done(&e);
}

static bool pred_some_stream(void *ctx)
{
    client *c = ctx;
    return c->ended || c->in.len > 2000;
}

static void check_disconnect_mid_stream(bool reset)
{
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /stream?n=100000&chunk=100&ms=2 HTTP/1.1\r\n\r\n");
    assert_true(run_until(&e, pred_some_stream, &c, RUN_GUARD_MS));
    assert_false(c.ended);
    assert_int_equal(e.a.aborts, 0);
    if (reset)
        client_reset(&c);
    else
        client_close(&c);
    run_int_ge(&e, &e.a.aborts, 1);
    run_for(&e, 50);
    assert_int_equal(e.a.aborts, 1);
    assert_int_equal(e.a.stream_ends, 0);
    assert_null(e.a.jobs); /* the app let go of the request */
    assert_int_equal(http_server_nconns(e.srv), 0);
    env_done(&e);
}

static void test_disconnect_mid_stream(void **state)
{
    (void)state;
    check_disconnect_mid_stream(false);
}

static void test_reset_mid_stream(void **state)
{
    (void)state;
    check_disconnect_mid_stream(true);
}

static void test_disconnect_while_held(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "POST /hold HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    run_int_ge(&e, &e.a.requests, 1);
    assert_non_null(e.a.held);
    run_for(&e, 20);
    assert_int_equal(e.a.aborts, 0);
    client_close(&c);
    run_int_ge(&e, &e.a.aborts, 1);
    run_for(&e, 20);
    assert_int_equal(e.a.aborts, 1);
    assert_null(e.a.held);
    assert_int_equal(http_server_nconns(e.srv), 0);
    env_done(&e);
}

static void test_close_all_aborts_held(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /hold HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.requests, 1);
    http_server_close_all(e.srv);
    assert_int_equal(e.a.aborts, 1); /* at once, from close_all */
    run_ended(&e, &c);
    assert_int_equal(c.in.len, 0);
    env_done(&e);
}

/* ------------------------------------------------------------ drain */

static void drain_done_cb(void *ud)
{
    env *e = ud;
    e->drain_done++;
}

static void test_drain(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client idle, busy;
    client_open(&e, &idle);
    client_send_str(&idle, "GET /echo HTTP/1.1\r\n\r\n");
    run_final(&e, &idle, 1);
    size_t idle_got = idle.in.len;
    client_open(&e, &busy);
    client_send_str(&busy, "GET /hold HTTP/1.1\r\n\r\n");
    run_int_ge(&e, &e.a.requests, 2);
    assert_int_equal(http_server_nconns(e.srv), 2);

    uint64_t t_drain = uv_now(&e.loop);
    http_server_drain(e.srv, drain_done_cb, &e);
    assert_true(http_server_draining(e.srv));
    /* the idle one is not cut at once (its client may be sending on it
     * right now), but after min(idle timeout 2 s, 1 s), silently */
    run_for(&e, 100);
    assert_false(idle.ended);
    run_ended(&e, &idle);
    assert_true(idle.eof);
    assert_int_equal(idle.in.len, idle_got);
    assert_true(idle.t_end - t_drain >= 900);
    assert_true(idle.t_end - t_drain < 1900);
    assert_false(busy.ended);
    assert_int_equal(busy.in.len, 0);
    assert_int_equal(e.a.aborts, 0);
    assert_int_equal(e.drain_done, 0);
    assert_int_equal(http_server_nconns(e.srv), 1);

    /* new connections are refused */
    client late;
    assert_true(client_connect(&e, &late, true) < 0);

    /* the in-flight request is answered with Connection: close, then closed */
    assert_non_null(e.a.held);
    http_req *req = e.a.held->req;
    job_done(e.a.held);
    req->on_abort = NULL;
    req->on_drain = NULL;
    app_echo(&e.a, req);
    run_ended(&e, &busy);
    assert_true(busy.eof);
    resp_list l;
    resps_get(&busy, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.used, busy.in.len);
    assert_int_equal(l.r[0].status, 200);
    assert_string_equal(resp_header(&l.r[0], "connection"), "close");
    resps_free(&l);
    run_int_ge(&e, &e.drain_done, 1);
    run_for(&e, 20);
    assert_int_equal(e.drain_done, 1);
    assert_int_equal(http_server_nconns(e.srv), 0);
    assert_int_equal(e.a.aborts, 0);
    env_done(&e);
}

/* A proxy that picks an idle pooled connection just as the drain starts
 * sends its request on it: the request is answered (Connection: close),
 * not lost to a close that crossed it. */
static void test_drain_answers_on_idle_connection(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /echo HTTP/1.1\r\n\r\n");
    run_final(&e, &c, 1);
    http_server_drain(e.srv, drain_done_cb, &e);
    run_for(&e, 50);
    assert_false(c.ended);
    client_send_str(&c, "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    run_ended(&e, &c);
    assert_true(c.eof);
    assert_int_equal(c.write_errs, 0);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    assert_null(resp_header(&l.r[0], "connection")); /* keep-alive */
    assert_int_equal(l.r[1].status, 200);
    assert_string_equal(resp_header(&l.r[1], "connection"), "close");
    resps_free(&l);
    assert_int_equal(e.a.requests, 2);
    run_int_ge(&e, &e.drain_done, 1);
    assert_int_equal(http_server_nconns(e.srv), 0);
    env_done(&e);
}

/* A response that began before the drain promised keep-alive: the
 * connection stays open after it (the client may reuse it at once), and
 * the next request is answered with Connection: close. */
static void test_drain_keeps_promised_keep_alive(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    client c;
    client_open(&e, &c);
    client_send_str(&c, "GET /stream?chunk=10&n=5&ms=40 HTTP/1.1\r\n\r\n");
    assert_true(run_until(&e, pred_has_bytes, &c, RUN_GUARD_MS));
    http_server_drain(e.srv, drain_done_cb, &e);
    run_int_ge(&e, &e.a.stream_ends, 1);
    run_final(&e, &c, 1);
    run_for(&e, 100);
    assert_false(c.ended);
    client_send_str(&c, "GET /echo HTTP/1.1\r\n\r\n");
    run_ended(&e, &c);
    assert_true(c.eof);
    resp_list l;
    resps_get(&c, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.used, c.in.len);
    assert_true(l.r[0].chunked);
    assert_int_equal(l.r[0].body.len, 50);
    assert_null(resp_header(&l.r[0], "connection"));
    assert_int_equal(l.r[1].status, 200);
    assert_string_equal(resp_header(&l.r[1], "connection"), "close");
    resps_free(&l);
    run_int_ge(&e, &e.drain_done, 1);
    assert_int_equal(e.a.aborts, 0);
    env_done(&e);
}

/* A connection the kernel completed but the loop had not accepted yet
 * when the drain began (its request already sent): taken in and
 * answered, not reset by the listener's close. */
static void test_drain_takes_in_queued_connections(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", http_server_port(e.srv), &sa), 0);
    /* the loop does not run: the connection waits in the backlog */
    assert_int_equal(connect(fd, (const struct sockaddr *)&sa, sizeof(sa)), 0);
    const char *rq = "POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
    assert_int_equal(send(fd, rq, strlen(rq), 0), (ssize_t)strlen(rq));
    http_server_drain(e.srv, drain_done_cb, &e);
    buf got;
    buf_init(&got, 1 << 20);
    int err = 0;
    bool eof = false;
    for (int i = 0; i < 250 && !eof && !err; i++) {
        run_for(&e, 20);
        for (;;) {
            char tmp[4096];
            ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
            if (n > 0) {
                assert_int_equal(buf_append(&got, tmp, (size_t)n), 0);
                continue;
            }
            if (n == 0)
                eof = true;
            else if (errno != EAGAIN)
                err = errno;
            break;
        }
    }
    assert_int_equal(err, 0); /* not reset */
    assert_true(eof);
    resp r;
    assert_int_equal(resp_parse_one(got.data, got.len, false, &r), 1);
    assert_int_equal(r.raw_len, got.len);
    assert_int_equal(r.status, 200);
    assert_string_equal(resp_header(&r, "connection"), "close");
    buf_free(&r.body);
    buf_free(&got);
    assert_int_equal(e.a.requests, 1);
    close(fd);
    run_int_ge(&e, &e.drain_done, 1);
    env_done(&e);
}

static void test_drain_without_connections(void **state)
{
    (void)state;
    http_limits lim = limits_default();
    env e;
    env_init(&e, &lim);
    http_server_drain(e.srv, drain_done_cb, &e);
    http_server_drain(e.srv, drain_done_cb, &e); /* a second call changes nothing */
    run_int_ge(&e, &e.drain_done, 1);
    run_for(&e, 20);
    assert_int_equal(e.drain_done, 1);
    env_done(&e);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the daemon does */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_and_post_keep_alive),
        cmocka_unit_test(test_http10_closes_after_response),
        cmocka_unit_test(test_connection_close_honored),
        cmocka_unit_test(test_head_response_has_no_body),
        cmocka_unit_test(test_empty_and_padded_header_values),
        cmocka_unit_test(test_request_split_across_reads),
        cmocka_unit_test(test_pipelined_in_order),
        cmocka_unit_test(test_pipelined_first_answered_late),
        cmocka_unit_test(test_pipelined_large_body_while_held),
        cmocka_unit_test(test_chunked_request_body),
        cmocka_unit_test(test_expect_100_continue),
        cmocka_unit_test(test_expect_other_is_417),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_header_bytes_over_max),
        cmocka_unit_test(test_content_length_over_max),
        cmocka_unit_test(test_chunked_body_over_max),
        cmocka_unit_test(test_malformed_requests_are_400),
        cmocka_unit_test(test_request_smuggling_is_400),
        cmocka_unit_test(test_upgrade_ignored_connect_refused),
        cmocka_unit_test(test_obs_fold_header),
        cmocka_unit_test(test_header_timeout_408),
        cmocka_unit_test(test_body_timeout_408),
        cmocka_unit_test(test_silent_connection_closed),
        cmocka_unit_test(test_idle_keep_alive_closed),
        cmocka_unit_test(test_slow_reader_gets_whole_response),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_stream_framing),
        cmocka_unit_test(test_stream_backpressure),
        cmocka_unit_test(test_send_timeout_aborts_stalled_stream),
        cmocka_unit_test(test_disconnect_mid_stream),
        cmocka_unit_test(test_reset_mid_stream),
        cmocka_unit_test(test_disconnect_while_held),
        cmocka_unit_test(test_close_all_aborts_held),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_drain_answers_on_idle_connection),
        cmocka_unit_test(test_drain_keeps_promised_keep_alive),
        cmocka_unit_test(test_drain_takes_in_queued_connections),
        cmocka_unit_test(test_drain_without_connections),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
