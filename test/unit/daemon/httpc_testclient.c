/* httpc_testclient.c - the client side of the httpc loop tests: a test
 * environment (loop, test server, pool, watchdog) and recording upstream
 * callbacks. Included by test_httpc.c and test_tls.c after cmocka.h and
 * httpc_testserver.c. */
#include "daemon/httpc.h"

#define TC_BODY_KEEP (1u << 20) /* body bytes kept for comparison */

typedef struct tc_env tc_env;
typedef struct tc_call tc_call;

/* One call and everything its callbacks saw. */
struct tc_call {
    tc_env *env;                                /* owner */
    upstream_call *call;                        /* the running call (until it ended) */
    int status;                                 /* on_head status */
    unsigned heads;                             /* on_head calls */
    unsigned bodies;                            /* on_body calls */
    unsigned dones;                             /* on_done calls */
    unsigned late;                              /* callbacks after on_done or abort: must stay 0 */
    bool ended;                                 /* on_done ran or the test aborted the call */
    const char *err;                            /* on_done error */
    char detail[HTTPC_ERROR_DETAIL_MAX];        /* httpc_call_error_detail() in on_done */
    buf body;                                   /* body bytes (first TC_BODY_KEEP) */
    uint64_t body_len;                          /* all body bytes */
    bool check_pattern;                         /* compare the body with ts_pattern_byte() */
    uint64_t pattern_bad;                       /* bytes that did not match */
    const char *probe;                          /* header name to capture */
    char probe_value[256];                      /* its trimmed value, "\x01" when absent */
    size_t nhdrs;                               /* headers in on_head */
    int head_ret;                               /* on_head returns this */
    int body_ret;                               /* on_body returns this */
    bool abort_in_body;                         /* upstream_abort() inside the first on_body */
    void (*on_body_hook)(tc_call *c, size_t n); /* test hook after each on_body */
    void (*on_end)(tc_call *c);                 /* test hook in on_done */
    char reqbuf[1024];                          /* request head */
    uv_buf_t req[2];                            /* request buffers: head, body */
    uint64_t t_start, t_end;                    /* uv_now() at start and on_done */
};

struct tc_env {
    uv_loop_t loop;       /* the test loop */
    ts_server *srv;       /* test server (may be NULL) */
    httpc_pool *pool;     /* client */
    httpc_target tgt;     /* target used by tc_start */
    httpc_timeouts to;    /* timeouts used by tc_start */
    uv_timer_t watchdog;  /* fails a stuck test */
    unsigned outstanding; /* calls without on_done */
    bool auto_finish;     /* tc_finish() when outstanding drops to 0 */
    bool finished;        /* tc_finish() ran */
    httpc_stats st;       /* pool counters at tc_finish */
    ts_stats sst;         /* server counters at tc_finish */
    void *test;           /* test-specific state */

    void (*on_finish)(void *ud); /* test hook in tc_finish: stop what the test started */
    void *on_finish_ud;          /* its argument */
};

static void tc_finish(tc_env *e);

/* Aborts the call as the gateway would when its client goes away. */
static void tc_abort(tc_call *c)
{
    tc_env *e = c->env;
    c->ended = true;
    upstream_abort(c->call);
    c->call = NULL;
    if (--e->outstanding == 0 && e->auto_finish)
        tc_finish(e);
}

static int tc__on_head(upstream_call *call, int status, const upstream_header *h, size_t n,
                       void *ud)
{
    tc_call *c = ud;
    if (c->ended)
        c->late++;
    c->heads++;
    c->status = status;
    c->nhdrs = n;
    if (c->probe) {
        snprintf(c->probe_value, sizeof(c->probe_value), "\x01");
        for (size_t i = 0; i < n; i++)
            if (slice_eq_nocase(h[i].name, c->probe))
                snprintf(c->probe_value, sizeof(c->probe_value), "%.*s", (int)h[i].value.len,
                         h[i].value.p);
    }
    return c->head_ret;
}

static int tc__on_body(upstream_call *call, const char *p, size_t n, void *ud)
{
    tc_call *c = ud;
    if (c->ended)
        c->late++;
    c->bodies++;
    if (c->check_pattern) {
        for (size_t i = 0; i < n; i++)
            if ((uint8_t)p[i] != ts_pattern_byte(c->body_len + i))
                c->pattern_bad++;
    } else {
        size_t room = TC_BODY_KEEP - c->body.len;
        assert_int_equal(buf_append(&c->body, p, n < room ? n : room), 0);
    }
    c->body_len += n;
    if (c->abort_in_body) {
        tc_abort(c);
        return 0;
    }
    if (c->on_body_hook)
        c->on_body_hook(c, n);
    return c->body_ret;
}

static void tc__on_done(upstream_call *call, const char *err, void *ud)
{
    tc_call *c = ud;
    tc_env *e = c->env;
    if (c->ended)
        c->late++;
    c->dones++;
    c->ended = true;
    c->err = err;
    snprintf(c->detail, sizeof(c->detail), "%s", httpc_call_error_detail(call));
    c->call = NULL;
    c->t_end = uv_now(&e->loop);
    if (c->on_end)
        c->on_end(c);
    if (--e->outstanding == 0 && e->auto_finish)
        tc_finish(e);
}

static const upstream_callbacks tc_callbacks = {
    .on_head = tc__on_head,
    .on_body = tc__on_body,
    .on_done = tc__on_done,
};

static void tc__on_watchdog(uv_timer_t *t)
{
    (void)t;
    fail_msg("test did not finish in time");
}

/* Sets up a loop, a test server (cert NULL: plain; handler NULL: none) and
 * a pool; the target points at the server over 127.0.0.1. */
static void tc_env_init(tc_env *e, const char *cert, const char *key, ts_handler h)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    if (h) {
        e->srv = ts_start(&e->loop, cert, key, h, e);
        assert_non_null(e->srv);
        e->tgt.port = ts_port(e->srv);
    }
    e->pool = httpc_pool_new(&e->loop);
    assert_non_null(e->pool);
    e->tgt.host = "127.0.0.1";
    e->tgt.tls = cert != NULL;
    e->tgt.tls_verify = true;
    e->tgt.ca_file = TG_TESTDATA "/tls/ca.crt";
    e->tgt.max_connections = 8;
    e->tgt.idle_timeout_ms = 10000;
    e->to = (httpc_timeouts){
        .connect_ms = 3000, .tls_ms = 3000, .first_byte_ms = 3000, .idle_ms = 3000, .total_ms = 0};
    e->auto_finish = true;
    uv_timer_init(&e->loop, &e->watchdog);
    uv_timer_start(&e->watchdog, tc__on_watchdog, 30000, 0);
}

/* Snapshots the counters, then closes the pool, the server and the watchdog. */
static void tc_finish(tc_env *e)
{
    if (e->finished)
        return;
    e->finished = true;
    httpc_pool_stats(e->pool, &e->st);
    if (e->srv)
        e->sst = *ts_get_stats(e->srv);
    httpc_pool_close(e->pool);
    ts_stop(e->srv);
    if (e->on_finish)
        e->on_finish(e->on_finish_ud);
    uv_close((uv_handle_t *)&e->watchdog, NULL);
}

/* Runs the loop to the end and checks that nothing was left open. */
static void tc_env_run(tc_env *e)
{
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_true(e->finished);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

static void tc_call_init(tc_env *e, tc_call *c)
{
    memset(c, 0, sizeof(*c));
    c->env = e;
    buf_init(&c->body, TC_BODY_KEEP);
}

static void tc_call_free(tc_call *c)
{
    buf_free(&c->body);
}

/* Starts a request (body NULL: GET) against e->tgt; asserts it started. */
static void tc_start(tc_call *c, const char *path, const char *body)
{
    tc_env *e = c->env;
    int n;
    if (body)
        n = snprintf(c->reqbuf, sizeof(c->reqbuf),
                     "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     path, e->tgt.host, strlen(body));
    else
        n = snprintf(c->reqbuf, sizeof(c->reqbuf), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path,
                     e->tgt.host);
    assert_true(n > 0 && (size_t)n < sizeof(c->reqbuf));
    c->req[0] = uv_buf_init(c->reqbuf, (unsigned)n);
    c->req[1] = uv_buf_init((char *)(body ? body : ""), body ? (unsigned)strlen(body) : 0);
    c->t_start = uv_now(&e->loop);
    e->outstanding++;
    assert_int_equal(httpc_call_start(e->pool, &e->tgt, &e->to, c->req, body ? 2 : 1, &tc_callbacks,
                                      c, &c->call),
                     0);
}

static void tc__free_handle(uv_handle_t *h)
{
    free(h);
}

static void tc__on_finish_timer(uv_timer_t *t)
{
    tc_env *e = t->data;
    uv_close((uv_handle_t *)t, tc__free_handle);
    tc_finish(e);
}

/* Calls tc_finish() after ms (for calls that end without on_done). */
__attribute__((unused)) static void tc_finish_after(tc_env *e, unsigned ms)
{
    uv_timer_t *t = malloc(sizeof(*t));
    assert_non_null(t);
    uv_timer_init(&e->loop, t);
    t->data = e;
    uv_timer_start(t, tc__on_finish_timer, ms, 0);
}

/* Compares the recorded body with s. */
static void tc_assert_body(const tc_call *c, const char *s)
{
    assert_int_equal(c->body_len, strlen(s));
    assert_memory_equal(c->body.data, s, strlen(s));
}

/* Starts a request whose head is given whole (no body). */
static void tc_start_raw(tc_call *c, const char *head)
{
    tc_env *e = c->env;
    snprintf(c->reqbuf, sizeof(c->reqbuf), "%s", head);
    c->req[0] = uv_buf_init(c->reqbuf, (unsigned)strlen(c->reqbuf));
    c->t_start = uv_now(&e->loop);
    e->outstanding++;
    assert_int_equal(
        httpc_call_start(e->pool, &e->tgt, &e->to, c->req, 1, &tc_callbacks, c, &c->call), 0);
}

#define TC_PATTERN_SIZE (8u << 20) /* /big */

/* The scripted server behaviour, chosen by the request path. */
static void tc_script_handler(ts_conn *c, const ts_request *r, void *ud)
{
    char tmp[512];
    if (strcmp(r->url, "/cl") == 0 || strcmp(r->url, "/ka") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Test:   some value  \r\n\r\n"
                       "hello world");
    } else if (strcmp(r->url, "/echo") == 0) {
        snprintf(tmp, sizeof(tmp),
                 "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\nX-Request-CL: %s\r\n"
                 "X-Method: %s\r\n\r\n",
                 r->body_len, r->content_length, r->method);
        ts_send_str(c, tmp);
        ts_send(c, r->body, r->body_len);
    } else if (strcmp(r->url, "/chunked") == 0) {
        ts_send_pieces(c,
                       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5;ext=1\r\nhello\r\n1\r\n \r\n0005\r\nworld\r\n"
                       "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n",
                       3, 1);
    } else if (strcmp(r->url, "/eof") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ");
        ts_delay(c, 5);
        ts_send_str(c, "close");
        ts_close(c);
    } else if (strcmp(r->url, "/interim") == 0) {
        ts_send_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
        ts_delay(c, 2);
        ts_send_str(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                       "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(r->url, "/close") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
        ts_close(c);
    } else if (strcmp(r->url, "/http10") == 0) {
        ts_send_str(c, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(r->url, "/slow") == 0) {
        ts_delay(c, 50);
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    } else if (strcmp(r->url, "/idle-close") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        ts_delay(c, 30);
        ts_close(c);
    } else if (strcmp(r->url, "/race") == 0) {
        if (r->index == 1)
            ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        else
            ts_close(c); /* a reused connection dies as the request arrives */
    } else if (strcmp(r->url, "/drop") == 0) {
        ts_close(c);
    } else if (strcmp(r->url, "/never") == 0) {
        /* no answer */
    } else if (strcmp(r->url, "/stall-body") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        memset(tmp, 'x', 100);
        ts_send(c, tmp, 100);
    } else if (strcmp(r->url, "/trickle") == 0 || strcmp(r->url, "/stream") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < 100; i++) {
            ts_send_str(c, "a\r\n0123456789\r\n");
            ts_delay(c, 20);
        }
        ts_send_str(c, "0\r\n\r\n");
    } else if (strcmp(r->url, "/reset-mid") == 0 || strcmp(r->url, "/close-mid") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        memset(tmp, 'y', 100);
        ts_send(c, tmp, 100);
        ts_delay(c, 20);
        if (r->url[1] == 'r')
            ts_reset(c);
        else
            ts_close(c);
    } else if (strcmp(r->url, "/big") == 0) {
        snprintf(tmp, sizeof(tmp), "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
                 TC_PATTERN_SIZE);
        ts_send_str(c, tmp);
        ts_pattern(c, TC_PATTERN_SIZE);
    } else if (strcmp(r->url, "/bighdr") == 0) {
        static const char pre[] = "HTTP/1.1 200 OK\r\nX-Big: ";
        static const char post[] = "\r\nContent-Length: 0\r\n\r\n";
        size_t n = 70 * 1024, k = 0;
        char *h = malloc(n + sizeof(pre) + sizeof(post));
        assert_non_null(h);
        memcpy(h, pre, sizeof(pre) - 1);
        k += sizeof(pre) - 1;
        memset(h + k, 'b', n);
        k += n;
        memcpy(h + k, post, sizeof(post) - 1);
        k += sizeof(post) - 1;
        ts_send(c, h, k);
        free(h);
    } else if (strcmp(r->url, "/manyhdr") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\n");
        for (int i = 0; i < 200; i++) {
            snprintf(tmp, sizeof(tmp), "X-H%d: %d\r\n", i, i);
            ts_send_str(c, tmp);
        }
        ts_send_str(c, "Content-Length: 0\r\n\r\n");
    } else if (strcmp(r->url, "/garbage") == 0) {
        ts_send_str(c, "HTTX/1.1 200 OK\r\n\r\n");
    } else if (strcmp(r->url, "/head") == 0) {
        ts_send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    } else {
        ts_send_str(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    }
}

/* ---- scenarios shared by the plain and TLS tests ---- */

/* n calls one after the other, each started from the previous on_done. */
typedef struct seq_state {
    tc_call calls[5]; /* in order */
    unsigned n;       /* how many to run */
    unsigned next;    /* next to start */
    const char *path; /* what each asks for */
    const char *raw;  /* or a whole request head for the odd ones */
} seq_state;

static void seq_next(tc_call *c)
{
    seq_state *s = c->env->test;
    if (s->next < s->n) {
        tc_call *n = &s->calls[s->next++];
        if (s->raw && s->next % 2 == 0)
            tc_start_raw(n, s->raw);
        else
            tc_start(n, s->path, NULL);
    }
}

static void run_seq(tc_env *e, seq_state *s, unsigned n, const char *path)
{
    s->n = n;
    s->next = 1;
    s->path = path;
    e->test = s;
    for (unsigned i = 0; i < n; i++) {
        tc_call_init(e, &s->calls[i]);
        s->calls[i].on_end = seq_next;
    }
    tc_start(&s->calls[0], path, NULL);
    tc_env_run(e);
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(s->calls[i].dones, 1);
        assert_null(s->calls[i].err);
        assert_int_equal(s->calls[i].status, 200);
        tc_call_free(&s->calls[i]);
    }
}

/* A call, a pause of 150 ms, then a second call. */
typedef struct later_state {
    uv_timer_t timer;  /* waits between the calls */
    tc_call first;     /* keep-alive call */
    tc_call second;    /* after the server closed the idle connection */
    httpc_stats mid;   /* pool counters just before the second call */
    const char *path2; /* second call's path */
} later_state;

static void later_fire(uv_timer_t *t)
{
    tc_env *e = t->data;
    later_state *s = e->test;
    httpc_pool_stats(e->pool, &s->mid);
    tc_start(&s->second, s->path2, NULL);
    e->outstanding--; /* the hold taken in later_arm */
    uv_close((uv_handle_t *)t, NULL);
}

static void later_arm(tc_call *c)
{
    later_state *s = c->env->test;
    c->env->outstanding++; /* hold: the second call is still to come */
    s->timer.data = c->env;
    uv_timer_start(&s->timer, later_fire, 150, 0);
}

static void run_later(tc_env *e, later_state *s, const char *p1, const char *p2)
{
    e->test = s;
    s->path2 = p2;
    uv_timer_init(&e->loop, &s->timer);
    tc_call_init(e, &s->first);
    tc_call_init(e, &s->second);
    s->first.on_end = later_arm;
    tc_start(&s->first, p1, NULL);
    tc_env_run(e);
    assert_null(s->first.err);
    assert_int_equal(s->second.dones, 1);
    tc_call_free(&s->first);
    tc_call_free(&s->second);
}

/* 8 MiB body, paused three times for 150 ms each. */
typedef struct pause_state {
    uv_timer_t timer;     /* paused period */
    tc_call c;            /* the 8 MiB call */
    unsigned pauses;      /* pauses done */
    uint64_t next_at;     /* body offset of the next pause */
    unsigned bodies_at;   /* on_body count at the pause */
    uint64_t bytes_in_at; /* socket bytes at the pause */
    uint64_t worst;       /* most socket bytes read while paused */
    unsigned late_bodies; /* on_body calls while paused */
} pause_state;

static void pause_fire(uv_timer_t *t)
{
    tc_env *e = t->data;
    pause_state *s = e->test;
    httpc_stats st;
    httpc_pool_stats(e->pool, &st);
    if (st.bytes_in - s->bytes_in_at > s->worst)
        s->worst = st.bytes_in - s->bytes_in_at;
    s->late_bodies += s->c.bodies - s->bodies_at;
    upstream_resume(s->c.call);
}

static void pause_hook(tc_call *c, size_t n)
{
    tc_env *e = c->env;
    pause_state *s = e->test;
    if (c->body_len < s->next_at || s->pauses >= 3)
        return;
    s->pauses++;
    s->next_at += 3u << 20;
    upstream_pause(c->call);
    upstream_pause(c->call); /* twice is harmless */
    httpc_stats st;
    httpc_pool_stats(e->pool, &st);
    s->bytes_in_at = st.bytes_in;
    s->bodies_at = c->bodies;
    uv_timer_start(&s->timer, pause_fire, 150, 0);
}

static void pause_done(tc_call *c)
{
    pause_state *s = c->env->test;
    uv_close((uv_handle_t *)&s->timer, NULL);
}

static void run_pause_resume(tc_env *e)
{
    pause_state s = {0};
    e->test = &s;
    uv_timer_init(&e->loop, &s.timer);
    s.timer.data = e;
    tc_call_init(e, &s.c);
    s.c.check_pattern = true;
    s.c.on_body_hook = pause_hook;
    s.c.on_end = pause_done;
    tc_start(&s.c, "/big", NULL);
    tc_env_run(e);
    assert_null(s.c.err);
    assert_int_equal(s.c.body_len, TC_PATTERN_SIZE);
    assert_int_equal(s.c.pattern_bad, 0);
    assert_int_equal(s.pauses, 3);
    assert_int_equal(s.late_bodies, 0);  /* nothing delivered while paused */
    assert_true(s.worst <= 64u * 1024u); /* and (next to) nothing read from the socket */
    tc_call_free(&s.c);
}
