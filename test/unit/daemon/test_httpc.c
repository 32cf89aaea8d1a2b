/* test_httpc.c - the outbound HTTP client over plain TCP, through an HTTP
 * CONNECT proxy (plain and TLS), and the DNS cache, against a scripted
 * server and proxy on the same loop; the NO_PROXY and proxy URL helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/unit/daemon/httpc_testserver.c"
#include "test/unit/daemon/httpc_testclient.c"
#include "test/unit/daemon/httpc_testproxy.c"

#include "daemon/dns.h"

#define CERT(name) TG_TESTDATA "/tls/" name ".crt"
#define KEY(name) TG_TESTDATA "/tls/" name ".key"

/* ---- bodies and framing ---- */

static void test_get_content_length(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    c.probe = "x-test";
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_int_equal(c.dones, 1);
    assert_null(c.err);
    assert_int_equal(c.heads, 1);
    assert_int_equal(c.status, 200);
    assert_int_equal(c.nhdrs, 2);
    assert_string_equal(c.probe_value, "some value");
    tc_assert_body(&c, "hello world");
    assert_int_equal(c.late, 0);
    assert_int_equal(e.sst.requests, 1);
    assert_int_equal(e.st.conns_opened, 1);
    assert_int_equal(e.st.conns_idle, 1); /* kept for reuse until the pool closed */
    tc_call_free(&c);
}

static void test_post_is_sent_whole(void **state)
{
    static const char body[] = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\","
                               "\"content\":\"hi\"}]}";
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    c.probe = "x-request-cl";
    tc_start(&c, "/echo", body);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.status, 201);
    tc_assert_body(&c, body);
    char cl[24];
    snprintf(cl, sizeof(cl), "%zu", strlen(body));
    assert_string_equal(c.probe_value, cl);
    tc_call_free(&c);
}

static void test_large_post(void **state)
{
    /* bigger than a write batch and than the socket buffer: written in parts */
    size_t n = 3u << 20;
    char *body = malloc(n + 1);
    assert_non_null(body);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + i % 26);
    body[n] = '\0';
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    c.probe = "x-request-cl";
    tc_start(&c, "/echo", body);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.body_len, n);
    assert_memory_equal(c.body.data, body, TC_BODY_KEEP);
    free(body);
    tc_call_free(&c);
}

static void test_chunked_in_odd_pieces(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    tc_start(&c, "/chunked", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.status, 200);
    tc_assert_body(&c, "hello worldabcdefghijklmnopqrstuvwxyz");
    assert_true(c.bodies >= 4);           /* delivered as it came, not gathered */
    assert_int_equal(e.st.conns_idle, 1); /* trailers read, connection reusable */
    tc_call_free(&c);
}

static void test_read_until_close(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    tc_start(&c, "/eof", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    tc_assert_body(&c, "until close");
    assert_int_equal(e.st.conns_idle, 0);
    assert_int_equal(e.st.conns_open, 0);
    tc_call_free(&c);
}

static void test_interim_responses_skipped(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    c.probe = "link";
    tc_start(&c, "/interim", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.heads, 1);
    assert_int_equal(c.status, 200);
    assert_string_equal(c.probe_value, "\x01"); /* 103's headers are not the response's */
    tc_assert_body(&c, "ok");
    tc_call_free(&c);
}

static void test_keepalive_reuse(void **state)
{
    tc_env e;
    seq_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    run_seq(&e, &s, 5, "/ka");
    assert_int_equal(e.sst.accepted, 1); /* one connection for all five */
    assert_int_equal(e.sst.requests, 5);
    assert_int_equal(e.st.conns_opened, 1);
    assert_int_equal(e.st.conns_reused, 4);
}

static void test_head_request_has_no_body(void **state)
{
    tc_env e;
    seq_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    s.raw = "HEAD /head HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    run_seq(&e, &s, 3, "/ka");
    assert_int_equal(s.calls[1].body_len, 0);
    assert_int_equal(e.sst.accepted, 1); /* framing right: the connection stayed usable */
    assert_int_equal(e.sst.requests, 3);
}

static void test_connection_close_not_reused(void **state)
{
    tc_env e;
    seq_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    run_seq(&e, &s, 2, "/close");
    assert_int_equal(e.sst.accepted, 2);
    assert_int_equal(e.st.conns_reused, 0);

    tc_env_init(&e, NULL, NULL, tc_script_handler);
    run_seq(&e, &s, 2, "/http10"); /* HTTP/1.0 without keep-alive */
    assert_int_equal(e.sst.accepted, 2);
    assert_int_equal(e.st.conns_reused, 0);
}

static void test_pool_limit(void **state)
{
    tc_env e;
    tc_call c[4];
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.tgt.max_connections = 3;
    for (int i = 0; i < 4; i++) {
        tc_call_init(&e, &c[i]);
        tc_start(&c[i], "/slow", NULL);
    }
    httpc_stats st;
    httpc_pool_stats(e.pool, &st);
    assert_int_equal(st.queued, 1);
    assert_int_equal(st.conns_open, 3);
    tc_env_run(&e);
    for (int i = 0; i < 4; i++) {
        assert_null(c[i].err);
        assert_int_equal(c[i].status, 200);
        tc_call_free(&c[i]);
    }
    assert_int_equal(e.sst.accepted, 3);
    assert_int_equal(e.sst.max_open, 3);
    assert_int_equal(e.st.conns_reused, 1); /* the waiter got a released connection */
    /* the fourth waited for a free connection: it ended last */
    for (int i = 0; i < 3; i++)
        assert_true(c[3].t_end >= c[i].t_end);
}

/* ---- closed and broken connections ---- */

static void test_idle_connection_closed_by_server(void **state)
{
    tc_env e;
    later_state s;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    run_later(&e, &s, "/idle-close", "/ka");
    assert_int_equal(s.mid.idle_closed, 1); /* noticed while idle ... */
    assert_int_equal(s.mid.conns_idle, 0);  /* ... and dropped */
    assert_int_equal(s.mid.conns_open, 0);
    assert_null(s.second.err);
    assert_int_equal(s.second.status, 200);
    assert_int_equal(e.sst.accepted, 2);
    assert_int_equal(e.st.retries, 0); /* never reused, so no retry needed */
    assert_int_equal(e.st.conns_reused, 0);
}

static void race_next(tc_call *c)
{
    seq_state *s = c->env->test;
    tc_start(&s->calls[1], "/race", NULL);
}

static void test_keepalive_race_is_retried(void **state)
{
    tc_env e;
    seq_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.test = &s;
    tc_call_init(&e, &s.calls[0]);
    tc_call_init(&e, &s.calls[1]);
    s.calls[0].on_end = race_next;
    tc_start(&s.calls[0], "/race", NULL);
    tc_env_run(&e);
    assert_null(s.calls[0].err);
    assert_null(s.calls[1].err); /* transparent */
    assert_int_equal(s.calls[1].status, 200);
    assert_int_equal(s.calls[1].heads, 1);
    assert_int_equal(e.st.retries, 1);
    assert_int_equal(e.st.conns_reused, 1);
    assert_int_equal(e.sst.accepted, 2);
    assert_int_equal(e.sst.requests, 3);
    tc_call_free(&s.calls[0]);
    tc_call_free(&s.calls[1]);
}

static void test_fresh_connection_closed_is_reset(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    tc_call_init(&e, &c);
    tc_start(&c, "/drop", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_reset);
    assert_int_equal(c.heads, 0);
    assert_int_equal(e.st.retries, 0); /* a fresh connection is not retried */
    assert_int_equal(e.sst.accepted, 1);
    tc_call_free(&c);
}

static void test_reset_mid_body(void **state)
{
    const char *paths[] = {"/reset-mid", "/close-mid"};
    for (int i = 0; i < 2; i++) {
        tc_env e;
        tc_call c;
        tc_env_init(&e, NULL, NULL, tc_script_handler);
        tc_call_init(&e, &c);
        tc_start(&c, paths[i], NULL);
        tc_env_run(&e);
        assert_ptr_equal(c.err, upstream_err_reset);
        assert_int_equal(c.status, 200);
        assert_int_equal(c.body_len, 100);
        assert_int_equal(e.st.retries, 0);
        tc_call_free(&c);
    }
}

static void test_connect_refused(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, NULL);
    e.tgt.port = ts_free_port(&e.loop);
    assert_true(e.tgt.port != 0);
    tc_call_init(&e, &c);
    tc_start(&c, "/", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_connect);
    assert_true(upstream_err_before_response(c.err));
    assert_int_equal(c.heads, 0);
    assert_int_equal(e.st.conns_opened, 0);
    tc_call_free(&c);
}

static void test_dns_failure(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, NULL);
    e.tgt.host = "no-such-provider.invalid";
    e.tgt.port = 443;
    tc_call_init(&e, &c);
    tc_start(&c, "/", NULL);
    assert_int_equal(c.dones, 0); /* never from inside httpc_call_start */
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_dns);
    assert_int_equal(c.dones, 1);
    assert_int_equal(e.st.dns_lookups, 0); /* RFC 6761: answered without the resolver */
    tc_call_free(&c);
}

static void test_protocol_errors(void **state)
{
    const char *paths[] = {"/bighdr", "/manyhdr", "/garbage"};
    const char *errs[] = {upstream_err_too_big, upstream_err_too_big, upstream_err_protocol};
    for (int i = 0; i < 3; i++) {
        tc_env e;
        tc_call c;
        tc_env_init(&e, NULL, NULL, tc_script_handler);
        tc_call_init(&e, &c);
        tc_start(&c, paths[i], NULL);
        tc_env_run(&e);
        assert_ptr_equal(c.err, errs[i]);
        assert_int_equal(c.heads, 0);
        assert_int_equal(e.st.conns_open, 0);
        tc_call_free(&c);
    }
}

/* ---- timeouts ---- */

static void run_timeout(const char *path, httpc_timeouts to, const char *want, uint64_t min_ms,
                        tc_call *out)
{
    tc_env e;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.to = to;
    tc_call_init(&e, out);
    tc_start(out, path, NULL);
    tc_env_run(&e);
    assert_ptr_equal(out->err, want);
    assert_int_equal(out->dones, 1);
    uint64_t took = out->t_end - out->t_start;
    assert_true(took + 5 >= min_ms);
    assert_true(took < min_ms + 2000);
    assert_int_equal(e.st.conns_open, 0);
}

static void test_timeout_first_byte(void **state)
{
    tc_call c;
    run_timeout("/never", (httpc_timeouts){.connect_ms = 1000, .first_byte_ms = 100, .idle_ms = 50},
                upstream_err_timeout_first_byte, 100, &c);
    assert_int_equal(c.heads, 0);
    tc_call_free(&c);
}

static void test_timeout_idle(void **state)
{
    tc_call c;
    run_timeout("/stall-body",
                (httpc_timeouts){.connect_ms = 1000, .first_byte_ms = 1000, .idle_ms = 100},
                upstream_err_timeout_idle, 100, &c);
    assert_int_equal(c.heads, 1);
    assert_int_equal(c.body_len, 100);
    tc_call_free(&c);
}

static void test_timeout_total(void **state)
{
    tc_call c;
    run_timeout("/trickle",
                (httpc_timeouts){
                    .connect_ms = 1000, .first_byte_ms = 1000, .idle_ms = 1000, .total_ms = 150},
                upstream_err_timeout_total, 150, &c);
    assert_int_equal(c.heads, 1);
    assert_true(c.body_len > 0 && c.body_len < 1000);
    tc_call_free(&c);
}

static void abort_first(tc_call *c)
{
    tc_call *first = c->env->test;
    tc_abort(first);
}

static void test_timeout_waiting_for_a_slot(void **state)
{
    tc_env e;
    tc_call a, b;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.tgt.max_connections = 1;
    e.test = &a;
    tc_call_init(&e, &a);
    tc_call_init(&e, &b);
    tc_start(&a, "/never", NULL); /* holds the only connection */
    e.to.connect_ms = 100;
    b.on_end = abort_first;
    tc_start(&b, "/cl", NULL);
    tc_env_run(&e);
    assert_ptr_equal(b.err, upstream_err_timeout_connect);
    assert_true(b.t_end - b.t_start + 5 >= 100);
    assert_int_equal(a.dones, 0); /* aborted: no callback at all */
    assert_int_equal(a.late, 0);
    assert_int_equal(e.sst.accepted, 1);
    assert_int_equal(e.st.queued, 1);
    tc_call_free(&a);
    tc_call_free(&b);
}

/* ---- backpressure and abort ---- */

static void test_pause_resume(void **state)
{
    tc_env e;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.to.idle_ms = 100; /* shorter than a pause: paused time is not idle time */
    run_pause_resume(&e);
}

typedef struct abort_state {
    uv_timer_t timer; /* abort, then watch for late callbacks */
    tc_call c;        /* the aborted call */
    int phase;        /* 0: abort next, 1: finish next */
} abort_state;

static void abort_fire(uv_timer_t *t)
{
    tc_env *e = t->data;
    abort_state *s = e->test;
    if (s->phase++ == 0) {
        tc_abort(&s->c);
        uv_timer_start(t, abort_fire, 100, 0);
        return;
    }
    uv_close((uv_handle_t *)t, NULL);
    tc_finish(e);
}

static void abort_hook(tc_call *c, size_t n)
{
    abort_state *s = c->env->test;
    if (c->bodies == 1)
        uv_timer_start(&s->timer, abort_fire, 30, 0);
}

static void test_abort_mid_response(void **state)
{
    tc_env e;
    abort_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.auto_finish = false;
    e.test = &s;
    uv_timer_init(&e.loop, &s.timer);
    s.timer.data = &e;
    tc_call_init(&e, &s.c);
    s.c.on_body_hook = abort_hook;
    tc_start(&s.c, "/stream", NULL);
    tc_env_run(&e);
    assert_int_equal(s.c.heads, 1);
    assert_true(s.c.body_len > 0);
    assert_int_equal(s.c.dones, 0);
    assert_int_equal(s.c.late, 0);
    assert_int_equal(e.sst.closed_by_client, 1); /* the connection was closed ... */
    assert_int_equal(e.st.conns_idle, 0);        /* ... not pooled */
    assert_int_equal(e.st.calls_active, 0);
    tc_call_free(&s.c);
}

static void test_abort_from_callbacks(void **state)
{
    for (int mode = 0; mode < 3; mode++) {
        tc_env e;
        tc_call c;
        tc_env_init(&e, NULL, NULL, tc_script_handler);
        tc_call_init(&e, &c);
        if (mode == 0)
            c.abort_in_body = true; /* upstream_abort() inside on_body */
        else if (mode == 1)
            c.body_ret = 1; /* on_body says stop */
        else
            c.head_ret = 1; /* on_head says stop */
        tc_start(&c, "/stream", NULL);
        if (mode > 0) {
            /* the call ends without on_done: finish a while later */
            e.auto_finish = false;
            tc_finish_after(&e, 200);
        }
        tc_env_run(&e);
        assert_int_equal(c.dones, 0);
        assert_int_equal(c.late, 0);
        assert_int_equal(c.heads, 1);
        assert_int_equal(c.bodies, mode == 2 ? 0 : 1);
        assert_int_equal(e.st.calls_active, 0);
        tc_call_free(&c);
    }
}

/* ---- pool life ---- */

static void close_early_done(tc_call *c)
{
    tc_env *e = c->env;
    e->finished = true;
    if (e->srv)
        e->sst = *ts_get_stats(e->srv);
    ts_stop(e->srv);
    uv_close((uv_handle_t *)&e->watchdog, NULL);
}

static void test_pool_close_lets_calls_finish(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.auto_finish = false;
    tc_call_init(&e, &c);
    c.on_end = close_early_done;
    tc_start(&c, "/slow", NULL);
    httpc_pool_close(e.pool); /* aborts nothing */
    upstream_call *extra;
    assert_int_equal(httpc_call_start(e.pool, &e.tgt, &e.to, c.req, 1, &tc_callbacks, &c, &extra),
                     -ESHUTDOWN);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.status, 200);
    tc_call_free(&c);
}

static void test_localhost_resolves_through_cache(void **state)
{
    tc_env e;
    seq_state s = {0};
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.tgt.host = "localhost";
    run_seq(&e, &s, 3, "/close"); /* three connections, three name lookups wanted */
    assert_int_equal(e.sst.accepted, 3);
    assert_int_equal(e.st.dns_lookups, 1);
}

/* ---- through an HTTP proxy ---- */

static void px_stop(void *ud)
{
    tp_stop(ud);
}

/* A test environment whose target is reached through a proxy on the loop
 * (mode, credentials required); tls: the target is the TLS server, named
 * "localhost" so that only the proxy can have resolved it. */
static void px_env_init(tc_env *e, bool tls, enum tp_mode mode, const char *want_auth,
                        tp_record *rec)
{
    if (tls)
        tc_env_init(e, CERT("server"), KEY("server"), tc_script_handler);
    else
        tc_env_init(e, NULL, NULL, tc_script_handler);
    if (tls)
        e->tgt.host = "localhost";
    tp_proxy *px = tp_start(&e->loop, mode, want_auth, rec);
    assert_non_null(px);
    e->tgt.proxy_host = "127.0.0.1";
    e->tgt.proxy_port = tp_port(px);
    e->on_finish = px_stop;
    e->on_finish_ud = px;
}

static void test_proxy_tls_request(void **state)
{
    tc_env e;
    tc_call c;
    tp_record rec;
    px_env_init(&e, true, TP_SPLICE, NULL, &rec);
    tc_call_init(&e, &c);
    c.probe = "x-test";
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.status, 200);
    tc_assert_body(&c, "hello world");
    assert_string_equal(c.probe_value, "some value");
    char want[64];
    snprintf(want, sizeof(want), "CONNECT localhost:%u HTTP/1.1", (unsigned)e.tgt.port);
    assert_int_equal(rec.connects, 1);
    assert_string_equal(rec.seen[0].line, want);
    snprintf(want, sizeof(want), "localhost:%u", (unsigned)e.tgt.port);
    assert_string_equal(rec.seen[0].host, want);
    assert_string_equal(rec.seen[0].auth, ""); /* none configured, none sent */
    assert_int_equal(rec.tunnels, 1);
    assert_int_equal(e.sst.handshakes, 1); /* TLS end to end, verified for "localhost" */
    assert_int_equal(e.st.tls_handshakes, 1);
    assert_int_equal(e.st.tunnels, 1);
    assert_int_equal(e.st.dns_lookups, 0); /* the proxy resolved the target, not we */
    tc_call_free(&c);
}

static void test_proxy_tunnel_is_pooled(void **state)
{
    tc_env e;
    seq_state s = {0};
    tp_record rec;
    px_env_init(&e, true, TP_SPLICE, NULL, &rec);
    run_seq(&e, &s, 2, "/ka");
    assert_int_equal(rec.connects, 1); /* one CONNECT for both calls */
    assert_int_equal(e.sst.accepted, 1);
    assert_int_equal(e.sst.requests, 2);
    assert_int_equal(e.sst.handshakes, 1);
    assert_int_equal(e.st.conns_opened, 1);
    assert_int_equal(e.st.conns_reused, 1);
}

static void test_proxy_auth(void **state)
{
    /* the URL's escapes are decoded before the credentials are encoded */
    static const char *const users[] = {NULL, "user:wrong", "us%65r:p%61ss"};
    static const char *const sent[] = {"", "Basic dXNlcjp3cm9uZw==", "Basic dXNlcjpwYXNz"};
    for (int i = 0; i < 3; i++) {
        tc_env e;
        tc_call c;
        tp_record rec;
        char url[128], host[64], auth[64];
        uint16_t port = 0;
        px_env_init(&e, false, TP_SPLICE, "Basic dXNlcjpwYXNz", &rec);
        if (users[i]) {
            snprintf(url, sizeof(url), "http://%s@127.0.0.1:%u", users[i],
                     (unsigned)e.tgt.proxy_port);
            assert_int_equal(
                httpc_parse_proxy_url(url, host, sizeof(host), &port, auth, sizeof(auth)), 0);
            assert_string_equal(host, "127.0.0.1");
            assert_int_equal(port, e.tgt.proxy_port);
            e.tgt.proxy_auth = auth;
        }
        tc_call_init(&e, &c);
        tc_start(&c, "/cl", NULL);
        tc_env_run(&e);
        assert_int_equal(rec.connects, 1);
        assert_string_equal(rec.seen[0].auth, sent[i]);
        if (i < 2) {
            assert_ptr_equal(c.err, upstream_err_connect); /* as a connect failure */
            assert_true(upstream_err_before_response(c.err));
            assert_string_equal(c.detail, "proxy refused CONNECT: 407 Proxy Authentication "
                                          "Required");
            assert_int_equal(c.heads, 0);
            assert_int_equal(e.sst.accepted, 0); /* the target never heard of it */
            assert_int_equal(e.st.conns_open, 0);
        } else {
            assert_null(c.err);
            assert_int_equal(c.status, 200);
            tc_assert_body(&c, "hello world");
            assert_int_equal(e.sst.accepted, 1);
        }
        tc_call_free(&c);
    }
}

static void test_proxy_down(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, tc_script_handler);
    e.tgt.proxy_host = "127.0.0.1";
    e.tgt.proxy_port = ts_free_port(&e.loop);
    assert_true(e.tgt.proxy_port != 0);
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_connect);
    assert_true(upstream_err_before_response(c.err));
    assert_true(c.t_end - c.t_start < 1000); /* refused: not the 3 s connect timeout */
    assert_non_null(strstr(c.detail, "proxy error: connect to 127.0.0.1 failed: "));
    assert_int_equal(e.sst.accepted, 0);
    assert_int_equal(e.st.conns_opened, 0);
    tc_call_free(&c);
}

static void test_proxy_never_answers(void **state)
{
    tc_env e;
    tc_call c;
    tp_record rec;
    px_env_init(&e, false, TP_MUTE, NULL, &rec);
    e.tgt.host = "::1"; /* never reached; shows the authority form of IPv6 */
    e.tgt.port = 443;
    e.to.connect_ms = 200;
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_timeout_connect);
    assert_true(c.t_end - c.t_start + 5 >= 200);
    assert_true(c.t_end - c.t_start < 2000);
    char want[96];
    snprintf(want, sizeof(want), "proxy error: CONNECT through 127.0.0.1:%u timed out (200 ms)",
             (unsigned)e.tgt.proxy_port);
    assert_string_equal(c.detail, want);
    assert_int_equal(rec.connects, 1);
    assert_string_equal(rec.seen[0].line, "CONNECT [::1]:443 HTTP/1.1");
    assert_string_equal(rec.seen[0].host, "[::1]:443");
    assert_int_equal(e.st.conns_open, 0);
    tc_call_free(&c);
}

static void test_proxy_tls_timeout_after_tunnel(void **state)
{
    tc_env e;
    tc_call c;
    tp_record rec;
    px_env_init(&e, true, TP_SPLICE, NULL, &rec);
    ts_set_mute(e.srv, true); /* the target takes the connection, never the handshake */
    e.to.connect_ms = 3000;
    e.to.tls_ms = 200;
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_timeout_tls); /* the tunnel ended the connect phase */
    assert_true(c.t_end - c.t_start + 5 >= 200);
    assert_true(c.t_end - c.t_start < 2000);
    assert_string_equal(c.detail, ""); /* not the proxy's fault */
    assert_int_equal(e.st.tunnels, 1);
    tc_call_free(&c);
}

static void test_proxy_bad_answers(void **state)
{
    static const enum tp_mode modes[] = {TP_GARBAGE, TP_HANGUP, TP_BIGHEAD};
    static const char *const details[] = {
        "proxy error: invalid answer to CONNECT",
        "proxy error: connection closed before the answer to CONNECT ended",
        "proxy error: answer to CONNECT over 8192 bytes",
    };
    for (int i = 0; i < 3; i++) {
        tc_env e;
        tc_call c;
        tp_record rec;
        px_env_init(&e, true, modes[i], NULL, &rec);
        tc_call_init(&e, &c);
        tc_start(&c, "/cl", NULL);
        tc_env_run(&e);
        assert_ptr_equal(c.err, upstream_err_connect);
        assert_string_equal(c.detail, details[i]);
        assert_int_equal(c.heads, 0);
        assert_int_equal(e.st.tunnels, 0);
        assert_int_equal(e.st.conns_open, 0);
        tc_call_free(&c);
    }
}

static void test_proxy_bytes_after_answer_kept(void **state)
{
    tc_env e;
    tc_call c;
    tp_record rec;
    px_env_init(&e, false, TP_EARLY, NULL, &rec);
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.status, 200);
    tc_assert_body(&c, "early"); /* came in the proxy's write of its 200 */
    assert_int_equal(e.st.tunnels, 1);
    assert_int_equal(e.st.conns_idle, 0); /* answered before it was asked: not reused */
    tc_call_free(&c);
}

/* calls[i] goes through the proxy when i is odd, directly when even. */
static void apart_next(tc_call *c)
{
    tc_env *e = c->env;
    seq_state *s = e->test;
    if (s->next < s->n) {
        e->tgt.proxy_host = s->next % 2 ? "127.0.0.1" : NULL;
        tc_start(&s->calls[s->next++], "/ka", NULL);
    }
}

static void test_proxy_and_direct_pools_apart(void **state)
{
    tc_env e;
    seq_state s = {.n = 4, .next = 1};
    tp_record rec;
    px_env_init(&e, false, TP_SPLICE, NULL, &rec);
    e.test = &s;
    for (int i = 0; i < 4; i++) {
        tc_call_init(&e, &s.calls[i]);
        s.calls[i].on_end = apart_next;
    }
    e.tgt.proxy_host = NULL;
    tc_start(&s.calls[0], "/ka", NULL);
    tc_env_run(&e);
    for (int i = 0; i < 4; i++) {
        assert_null(s.calls[i].err);
        tc_assert_body(&s.calls[i], "hello world");
        tc_call_free(&s.calls[i]);
    }
    assert_int_equal(rec.connects, 1);   /* the second proxied call reused the tunnel */
    assert_int_equal(e.sst.accepted, 2); /* one direct connection, one from the proxy */
    assert_int_equal(e.st.conns_opened, 2);
    assert_int_equal(e.st.conns_reused, 2);
    assert_int_equal(e.st.conns_idle, 2);
}

static void test_proxy_target_checked(void **state)
{
    tc_env e;
    tc_call c;
    tc_env_init(&e, NULL, NULL, NULL);
    tc_call_init(&e, &c);
    c.req[0] = uv_buf_init((char *)"GET / HTTP/1.1\r\n\r\n", 18);
    upstream_call *up;
    httpc_target bad[3];
    for (int i = 0; i < 3; i++) {
        bad[i] = e.tgt;
        bad[i].port = 443;
        bad[i].proxy_host = "127.0.0.1";
        bad[i].proxy_port = 3128;
    }
    bad[0].proxy_port = 0;
    bad[1].host = "api.example\r\nX-Evil: 1";
    bad[2].proxy_auth = "dXNlcjpwYXNz\r\nX-Evil: 1";
    for (int i = 0; i < 3; i++)
        assert_int_equal(httpc_call_start(e.pool, &bad[i], &e.to, c.req, 1, &tc_callbacks, &c, &up),
                         -EINVAL);
    tc_finish(&e);
    tc_env_run(&e);
    tc_call_free(&c);
}

static void test_no_proxy_match(void **state)
{
    static const struct {
        const char *no_proxy, *host;
        bool want;
    } cases[] = {
        {NULL, "example.com", false},
        {"", "example.com", false},
        {"*", "anything.example", true},
        {"foo.org, *", "x.org", true},
        {"example.com", "example.com", true},
        {"example.com", "a.example.com", true},
        {"example.com", "a.b.example.com", true},
        {"example.com", "badexample.com", false},
        {"example.com", "example.com.evil.org", false},
        {".example.com", "example.com", true},
        {".example.com", "a.example.com", true},
        {".example.com", "badexample.com", false},
        {"a.example.com", "example.com", false},
        {"EXAMPLE.com", "Api.Example.COM", true},
        {" foo.org ,\texample.com ", "a.example.com", true},
        {"foo.org,bar.org", "example.com", false},
        {",, ,", "example.com", false},
        {"example.com:443", "a.example.com", true}, /* the port is ignored */
        {"example.com.", "example.com", true},
        {"example.com", "example.com.", true},
        {"example.com", "", false},
        {"10.0.0.1", "10.0.0.1", true},
        {"10.0.0.1", "10.0.0.12", false},
        {"0.0.1", "10.0.0.1", false},      /* IP hosts never match by suffix */
        {"10.0.0.0/8", "10.1.2.3", false}, /* no CIDR */
        {"10.0.0.1:8080", "10.0.0.1", true},
        {"::1", "::1", true},
        {"[::1]", "::1", true},
        {"::1", "[::1]", true},
        {"[::1]:8080", "[0:0::1]", true},
        {"::2", "::1", false},
        {"localhost,127.0.0.1,::1", "127.0.0.1", true},
        {"localhost,127.0.0.1,::1", "localhost", true},
        {"localhost,127.0.0.1,::1", "api.openai.com", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (httpc_no_proxy_match(cases[i].no_proxy, cases[i].host) != cases[i].want)
            fail_msg("no_proxy \"%s\", host \"%s\": want %d",
                     cases[i].no_proxy ? cases[i].no_proxy : "(null)", cases[i].host,
                     cases[i].want);
    }
}

static void test_parse_proxy_url(void **state)
{
    static const struct {
        const char *url;
        int rc;
        const char *host;
        uint16_t port;
        const char *auth;
    } cases[] = {
        {"http://proxy.corp:3128", 0, "proxy.corp", 3128, ""},
        {"http://proxy.corp", 0, "proxy.corp", 80, ""},
        {"HTTP://proxy.corp:8080/", 0, "proxy.corp", 8080, ""},
        {"proxy.corp:3128", 0, "proxy.corp", 3128, ""},
        {"http://10.1.2.3:3128", 0, "10.1.2.3", 3128, ""},
        {"http://[::1]:3128", 0, "::1", 3128, ""},
        {"http://[2001:db8::7]", 0, "2001:db8::7", 80, ""},
        {"http://user:pass@proxy:3128", 0, "proxy", 3128, "dXNlcjpwYXNz"},
        {"http://us%65r:p%40ss%3Aword@proxy", 0, "proxy", 80, "dXNlcjpwQHNzOndvcmQ="},
        {"http://user@proxy", 0, "proxy", 80, "dXNlcjo="},
        {"http://user:p@ss@[::1]:3128", 0, "::1", 3128, "dXNlcjpwQHNz"},
        {"https://proxy:443", -ENOTSUP, NULL, 0, NULL},
        {"HTTPS://proxy", -ENOTSUP, NULL, 0, NULL},
        {"socks5://proxy:1080", -ENOTSUP, NULL, 0, NULL},
        {"", -EINVAL, NULL, 0, NULL},
        {"http://", -EINVAL, NULL, 0, NULL},
        {"://proxy", -EINVAL, NULL, 0, NULL},
        {"1http://proxy", -EINVAL, NULL, 0, NULL},
        {"http://:3128", -EINVAL, NULL, 0, NULL},
        {"http://user:pass@", -EINVAL, NULL, 0, NULL},
        {"http://proxy:", -EINVAL, NULL, 0, NULL},
        {"http://proxy:0", -EINVAL, NULL, 0, NULL},
        {"http://proxy:65536", -EINVAL, NULL, 0, NULL},
        {"http://proxy:12ab", -EINVAL, NULL, 0, NULL},
        {"http://proxy:3128:1", -EINVAL, NULL, 0, NULL},
        {"http://pro xy", -EINVAL, NULL, 0, NULL},
        {"not a url at all", -EINVAL, NULL, 0, NULL},
        {"http://[::1:3128", -EINVAL, NULL, 0, NULL},
        {"http://[::1]x", -EINVAL, NULL, 0, NULL},
        {"http://[10.0.0.1]:80", -EINVAL, NULL, 0, NULL},
        {"http://proxy/path", -EINVAL, NULL, 0, NULL},
        {"http://proxy?x=1", -EINVAL, NULL, 0, NULL},
        {"http://u:%zz@proxy", -EINVAL, NULL, 0, NULL},
        {"http://u:%4@proxy", -EINVAL, NULL, 0, NULL},
        {"http://u:%00@proxy", -EINVAL, NULL, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char host[64] = "x", auth[64] = "x";
        uint16_t port = 1;
        int rc = httpc_parse_proxy_url(cases[i].url, host, sizeof(host), &port, auth, sizeof(auth));
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc %d, want %d", cases[i].url, rc, cases[i].rc);
        if (rc != 0)
            continue;
        if (strcmp(host, cases[i].host) != 0 || port != cases[i].port ||
            strcmp(auth, cases[i].auth) != 0)
            fail_msg("\"%s\": got %s %u \"%s\"", cases[i].url, host, (unsigned)port, auth);
    }
    char small[4], auth[64], host[64];
    uint16_t port;
    assert_int_equal(
        httpc_parse_proxy_url("http://proxy.corp", small, sizeof(small), &port, auth, sizeof(auth)),
        -ENOSPC);
    assert_int_equal(httpc_parse_proxy_url("http://user:pass@proxy", host, sizeof(host), &port,
                                           small, sizeof(small)),
                     -ENOSPC);
}

/* ---- the DNS cache alone ---- */

typedef struct dns_probe {
    int calls;  /* callbacks */
    int status; /* last status */
    size_t n;   /* addresses */
    int family; /* of the first */
} dns_probe;

static void dns_probe_cb(int status, const dns_result *res, void *ud)
{
    dns_probe *p = ud;
    p->calls++;
    p->status = status;
    p->n = res ? res->naddrs : 0;
    p->family = res && res->naddrs ? res->addrs[0].ss_family : 0;
}

static void test_dns_cache(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    dns_cache *d = dns_cache_new(&loop, 30000, 4);
    assert_non_null(d);
    dns_probe a = {0}, b = {0}, c = {0}, lit = {0}, inv = {0}, gone = {0};
    dns_query *q;
    assert_int_equal(dns_resolve(d, "localhost", dns_probe_cb, &a, NULL), 0);
    assert_int_equal(dns_resolve(d, "LOCALHOST", dns_probe_cb, &b, NULL), 0);
    assert_int_equal(dns_resolve(d, "localhost", dns_probe_cb, &gone, &q), 0);
    dns_cancel(q);
    assert_int_equal(dns_resolve(d, "127.0.0.1", dns_probe_cb, &lit, NULL), 0);
    assert_int_equal(dns_resolve(d, "x.invalid.", dns_probe_cb, &inv, NULL), 0);
    assert_int_equal(a.calls + b.calls + lit.calls + inv.calls, 0); /* never synchronous */
    uv_run(&loop, UV_RUN_DEFAULT);
    dns_stats st;
    dns_cache_stats(d, &st);
    assert_int_equal(st.lookups, 1); /* one getaddrinfo for both */
    assert_int_equal(st.shared, 2);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, 0);
    assert_true(a.n >= 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(gone.calls, 0);
    assert_int_equal(lit.status, 0);
    assert_int_equal(lit.family, AF_INET);
    assert_int_equal(inv.status, UV_EAI_NONAME);

    assert_int_equal(dns_resolve(d, "localhost", dns_probe_cb, &c, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    dns_cache_stats(d, &st);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.status, 0);
    assert_int_equal(st.lookups, 1); /* the second lookup came from the cache */
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.entries, 1);

    dns_cache_close(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_dns_ttl_expiry(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    dns_cache *d = dns_cache_new(&loop, 1, 4); /* 1 ms */
    dns_probe a = {0}, b = {0};
    assert_int_equal(dns_resolve(d, "localhost", dns_probe_cb, &a, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_sleep(5);
    uv_update_time(&loop);
    assert_int_equal(dns_resolve(d, "localhost", dns_probe_cb, &b, NULL), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    dns_stats st;
    dns_cache_stats(d, &st);
    assert_int_equal(st.lookups, 2);
    assert_int_equal(b.status, 0);
    dns_cache_close(d);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_content_length),
        cmocka_unit_test(test_post_is_sent_whole),
        cmocka_unit_test(test_large_post),
        cmocka_unit_test(test_chunked_in_odd_pieces),
        cmocka_unit_test(test_read_until_close),
        cmocka_unit_test(test_interim_responses_skipped),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_head_request_has_no_body),
        cmocka_unit_test(test_connection_close_not_reused),
        cmocka_unit_test(test_pool_limit),
        cmocka_unit_test(test_idle_connection_closed_by_server),
        cmocka_unit_test(test_keepalive_race_is_retried),
        cmocka_unit_test(test_fresh_connection_closed_is_reset),
        cmocka_unit_test(test_reset_mid_body),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_dns_failure),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_timeout_first_byte),
        cmocka_unit_test(test_timeout_idle),
        cmocka_unit_test(test_timeout_total),
        cmocka_unit_test(test_timeout_waiting_for_a_slot),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_abort_mid_response),
        cmocka_unit_test(test_abort_from_callbacks),
        cmocka_unit_test(test_pool_close_lets_calls_finish),
        cmocka_unit_test(test_localhost_resolves_through_cache),
        cmocka_unit_test(test_proxy_tls_request),
        cmocka_unit_test(test_proxy_tunnel_is_pooled),
        cmocka_unit_test(test_proxy_auth),
        cmocka_unit_test(test_proxy_down),
        cmocka_unit_test(test_proxy_never_answers),
        cmocka_unit_test(test_proxy_tls_timeout_after_tunnel),
        cmocka_unit_test(test_proxy_bad_answers),
        cmocka_unit_test(test_proxy_bytes_after_answer_kept),
        cmocka_unit_test(test_proxy_and_direct_pools_apart),
        cmocka_unit_test(test_proxy_target_checked),
        cmocka_unit_test(test_no_proxy_match),
        cmocka_unit_test(test_parse_proxy_url),
        cmocka_unit_test(test_dns_cache),
        cmocka_unit_test(test_dns_ttl_expiry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
