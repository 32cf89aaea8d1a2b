/* test_tls.c - the TLS transport on memory BIOs against an mbedtls server,
 * and the HTTP client over TLS against the scripted server on the loop
 * (test/data/tls: a CA, a localhost certificate, a wrong-host one and a
 * self-signed one). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "test/unit/daemon/httpc_testserver.c"
#include "test/unit/daemon/httpc_testclient.c"

#include "daemon/tls.h"

#define CA TG_TESTDATA "/tls/ca.crt"
#define CERT(name) TG_TESTDATA "/tls/" name ".crt"
#define KEY(name) TG_TESTDATA "/tls/" name ".key"

/* ---- the transport alone: tls_conn <-> mbedtls server in memory ---- */

typedef struct mem_pair {
    tls_conn cli;            /* the transport under test */
    mbedtls_ssl_context srv; /* the server end */
    ts_bio sbio;             /* its memory BIO */
} mem_pair;

static void pair_init(mem_pair *p, ts_tls *st, tls_config *cfg, const char *host,
                      const tls_session *resume)
{
    assert_int_equal(tls_conn_init_tls(&p->cli, cfg, host, resume, "test"), 0);
    mbedtls_ssl_init(&p->srv);
    assert_int_equal(mbedtls_ssl_setup(&p->srv, &st->conf), 0);
    ts_bio_init(&p->sbio);
    ts_bio_attach(&p->sbio, &p->srv);
}

static void pair_free(mem_pair *p)
{
    tls_conn_free(&p->cli);
    mbedtls_ssl_free(&p->srv);
    ts_bio_free(&p->sbio);
}

/* Carries the bytes each side produced to the other. */
static void pair_move(mem_pair *p)
{
    assert_int_equal(buf_append(&p->sbio.in, p->cli.out.data, p->cli.out.len), 0);
    buf_reset(&p->cli.out);
    if (p->sbio.out.len) {
        char *dst;
        size_t n;
        assert_int_equal(tls_conn_in_space(&p->cli, p->sbio.out.len, &dst, &n), 0);
        assert_true(n >= p->sbio.out.len);
        memcpy(dst, p->sbio.out.data, p->sbio.out.len);
        tls_conn_in_commit(&p->cli, p->sbio.out.len);
        buf_reset(&p->sbio.out);
    }
}

static bool srv_wants(int rc)
{
    return rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE;
}

static tls_result pair_handshake(mem_pair *p, int *srv_rc)
{
    tls_result r = TLS_AGAIN;
    int s = MBEDTLS_ERR_SSL_WANT_READ;
    for (int i = 0; i < 50 && (r == TLS_AGAIN || srv_wants(s)); i++) {
        if (r == TLS_AGAIN)
            r = tls_handshake(&p->cli);
        pair_move(p);
        if (r == TLS_ERROR)
            break;
        if (srv_wants(s))
            s = mbedtls_ssl_handshake(&p->srv);
        pair_move(p);
    }
    *srv_rc = s;
    return r;
}

static void test_transport_handshake_and_data(void **state)
{
    ts_tls st;
    assert_int_equal(ts_tls_init(&st, CERT("server"), KEY("server")), 0);
    tls_config *cfg;
    assert_int_equal(tls_config_acquire(CA, true, &cfg), 0);
    mem_pair p;
    pair_init(&p, &st, cfg, "localhost", NULL);
    slice s;
    assert_int_equal(tls_peek(&p.cli, &s), TLS_AGAIN); /* nothing before the handshake */
    int srv;
    assert_int_equal(pair_handshake(&p, &srv), TLS_OK);
    assert_int_equal(srv, 0);
    assert_false(p.cli.resumed);
    assert_false(p.cli.offered);
    assert_string_equal(mbedtls_ssl_get_version(&p.cli.ssl), "TLSv1.2");
    assert_string_equal(mbedtls_ssl_get_alpn_protocol(&p.cli.ssl) ?: "-", "-"); /* server: none */

    size_t done = 0;
    assert_int_equal(tls_write(&p.cli, "ping", 4, &done), TLS_OK);
    assert_int_equal(done, 4);
    pair_move(&p);
    char got[16];
    assert_int_equal(mbedtls_ssl_read(&p.srv, (unsigned char *)got, sizeof(got)), 4);
    assert_memory_equal(got, "ping", 4);

    assert_int_equal(mbedtls_ssl_write(&p.srv, (const unsigned char *)"pong!", 5), 5);
    pair_move(&p);
    assert_true(tls_pending(&p.cli));
    assert_int_equal(tls_peek(&p.cli, &s), TLS_OK);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.p, "pong!", 5);
    tls_consume(&p.cli, 2);
    assert_int_equal(tls_peek(&p.cli, &s), TLS_OK); /* the rest, again */
    assert_int_equal(s.len, 3);
    assert_memory_equal(s.p, "ng!", 3);
    tls_consume(&p.cli, 3);
    assert_int_equal(tls_peek(&p.cli, &s), TLS_AGAIN);
    assert_false(tls_pending(&p.cli));

    assert_int_equal(mbedtls_ssl_close_notify(&p.srv), 0);
    pair_move(&p);
    assert_int_equal(tls_peek(&p.cli, &s), TLS_OK); /* clean end of stream */
    assert_int_equal(s.len, 0);

    tls_conn_drop_buffers(&p.cli);
    assert_null(p.cli.in.data);
    assert_null(p.cli.dec.data);
    pair_free(&p);
    tls_config_release(cfg);
    ts_tls_free(&st);
}

static void test_transport_session_resumption(void **state)
{
    ts_tls st;
    assert_int_equal(ts_tls_init(&st, CERT("server"), KEY("server")), 0);
    tls_config *cfg;
    assert_int_equal(tls_config_acquire(CA, true, &cfg), 0);
    tls_session sess;
    tls_session_init(&sess);
    int srv;

    mem_pair p;
    pair_init(&p, &st, cfg, "localhost", &sess); /* nothing saved yet: nothing offered */
    assert_false(p.cli.offered);
    assert_int_equal(pair_handshake(&p, &srv), TLS_OK);
    assert_false(p.cli.resumed);
    tls_conn_save_session(&p.cli, &sess);
    assert_true(sess.valid);
    pair_free(&p);

    pair_init(&p, &st, cfg, "localhost", &sess);
    assert_true(p.cli.offered);
    assert_int_equal(pair_handshake(&p, &srv), TLS_OK);
    assert_int_equal(srv, 0);
    assert_true(p.cli.resumed);
    assert_int_equal(st.cache_hits, 1);
    pair_free(&p);

    /* a server that forgot the session: full handshake, reported as such */
    mbedtls_ssl_conf_session_cache(&st.conf, NULL, NULL, NULL);
    pair_init(&p, &st, cfg, "localhost", &sess);
    assert_true(p.cli.offered);
    assert_int_equal(pair_handshake(&p, &srv), TLS_OK);
    assert_false(p.cli.resumed);
    assert_int_equal(st.cache_hits, 1);
    pair_free(&p);

    tls_session_free(&sess);
    tls_config_release(cfg);
    ts_tls_free(&st);
}

static void expect_verify_failure(const char *cert, const char *key, const char *host,
                                  const char *ca)
{
    ts_tls st;
    assert_int_equal(ts_tls_init(&st, cert, key), 0);
    tls_config *cfg;
    assert_int_equal(tls_config_acquire(ca, true, &cfg), 0);
    mem_pair p;
    pair_init(&p, &st, cfg, host, NULL);
    int srv;
    assert_int_equal(pair_handshake(&p, &srv), TLS_ERROR);
    assert_true(p.cli.verify_failed);
    assert_true(mbedtls_ssl_get_verify_result(&p.cli.ssl) != 0);
    pair_free(&p);
    tls_config_release(cfg);
    ts_tls_free(&st);
}

static void test_transport_rejects_bad_certificates(void **state)
{
    expect_verify_failure(CERT("wronghost"), KEY("wronghost"), "localhost", CA);
    expect_verify_failure(CERT("selfsigned"), KEY("selfsigned"), "localhost", CA);
    expect_verify_failure(CERT("server"), KEY("server"), "api.example.com", CA);
    /* the system bundle alone does not trust the test CA */
    expect_verify_failure(CERT("server"), KEY("server"), "localhost", NULL);
}

static void test_transport_verify_off(void **state)
{
    ts_tls st;
    assert_int_equal(ts_tls_init(&st, CERT("selfsigned"), KEY("selfsigned")), 0);
    tls_config *cfg;
    assert_int_equal(tls_config_acquire(NULL, false, &cfg), 0);
    mem_pair p;
    pair_init(&p, &st, cfg, "wrong.example", NULL);
    int srv;
    assert_int_equal(pair_handshake(&p, &srv), TLS_OK);
    assert_false(p.cli.verify_failed);
    pair_free(&p);
    tls_config_release(cfg);
    ts_tls_free(&st);
}

static void test_config_is_shared(void **state)
{
    tls_config *a, *b, *c, *d;
    assert_int_equal(tls_config_acquire(CA, true, &a), 0);
    assert_int_equal(tls_config_acquire(CA, true, &b), 0);
    assert_ptr_equal(a, b); /* built once per (ca_file, verify) */
    assert_int_equal(tls_config_acquire(CA, false, &c), 0);
    assert_ptr_not_equal(a, c);
    assert_int_equal(tls_config_acquire(NULL, true, &d), 0);
    assert_ptr_not_equal(a, d);
    tls_config_release(a);
    tls_config_release(b);
    tls_config_release(c);
    tls_config_release(d);
    tls_config *bad;
    assert_int_equal(tls_config_acquire(TG_TESTDATA "/tls/missing.crt", true, &bad), -EINVAL);
    assert_int_equal(tls_config_acquire(KEY("server"), true, &bad), -EINVAL); /* not a cert */
}

/* ---- the HTTP client over TLS ---- */

static void tls_env(tc_env *e, const char *name)
{
    char cert[512], key[512];
    snprintf(cert, sizeof(cert), TG_TESTDATA "/tls/%s.crt", name);
    snprintf(key, sizeof(key), TG_TESTDATA "/tls/%s.key", name);
    tc_env_init(e, cert, key, tc_script_handler);
    e->tgt.host = "localhost";
}

typedef struct mixed_state {
    tc_call c[3]; /* GET content-length, POST, GET chunked */
} mixed_state;

static const char mixed_body[] = "{\"model\":\"claude\",\"max_tokens\":16}";

static void mixed_next(tc_call *c)
{
    mixed_state *s = c->env->test;
    if (c == &s->c[0])
        tc_start(&s->c[1], "/echo", mixed_body);
    else if (c == &s->c[1])
        tc_start(&s->c[2], "/chunked", NULL);
}

static void test_tls_requests(void **state)
{
    tc_env e;
    mixed_state s;
    tls_env(&e, "server");
    e.test = &s;
    for (int i = 0; i < 3; i++) {
        tc_call_init(&e, &s.c[i]);
        s.c[i].on_end = mixed_next;
    }
    s.c[1].probe = "x-method";
    tc_start(&s.c[0], "/cl", NULL);
    tc_env_run(&e);
    for (int i = 0; i < 3; i++)
        assert_null(s.c[i].err);
    tc_assert_body(&s.c[0], "hello world");
    assert_int_equal(s.c[1].status, 201);
    assert_string_equal(s.c[1].probe_value, "POST");
    tc_assert_body(&s.c[1], mixed_body);
    tc_assert_body(&s.c[2], "hello worldabcdefghijklmnopqrstuvwxyz");
    assert_int_equal(e.sst.accepted, 1); /* one connection, one handshake */
    assert_int_equal(e.sst.handshakes, 1);
    assert_int_equal(e.st.tls_handshakes, 1);
    assert_int_equal(e.st.conns_reused, 2);
    for (int i = 0; i < 3; i++)
        tc_call_free(&s.c[i]);
}

static void test_tls_large_post(void **state)
{
    size_t n = 3u << 20; /* many TLS records, written a batch at a time */
    char *body = malloc(n + 1);
    assert_non_null(body);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('A' + i % 23);
    body[n] = '\0';
    tc_env e;
    tc_call c;
    tls_env(&e, "server");
    tc_call_init(&e, &c);
    tc_start(&c, "/echo", body);
    tc_env_run(&e);
    assert_null(c.err);
    assert_int_equal(c.body_len, n);
    assert_memory_equal(c.body.data, body, TC_BODY_KEEP);
    free(body);
    tc_call_free(&c);
}

static void test_tls_bad_certificates_fail(void **state)
{
    const char *names[] = {"wronghost", "selfsigned"};
    for (int i = 0; i < 2; i++) {
        tc_env e;
        tc_call c;
        tls_env(&e, names[i]);
        tc_call_init(&e, &c);
        tc_start(&c, "/cl", NULL);
        tc_env_run(&e);
        assert_ptr_equal(c.err, upstream_err_tls);
        assert_true(upstream_err_before_response(c.err));
        assert_int_equal(c.heads, 0);
        assert_int_equal(e.sst.requests, 0); /* not a byte of the request went out */
        assert_int_equal(e.sst.handshakes, 0);
        assert_int_equal(e.st.tls_handshakes, 0);
        tc_call_free(&c);
    }
}

static void test_tls_verify_off_accepts_selfsigned(void **state)
{
    tc_env e;
    tc_call c;
    tls_env(&e, "selfsigned");
    e.tgt.tls_verify = false;
    e.tgt.ca_file = NULL;
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_null(c.err);
    tc_assert_body(&c, "hello world");
    tc_call_free(&c);
}

static void test_tls_session_resumption(void **state)
{
    for (int cache = 1; cache >= 0; cache--) {
        tc_env e;
        seq_state s = {0};
        tls_env(&e, "server");
        ts_set_session_cache(e.srv, cache);
        run_seq(&e, &s, 3, "/close"); /* three connections */
        assert_int_equal(e.sst.accepted, 3);
        assert_int_equal(e.sst.handshakes, 3);
        assert_int_equal(e.sst.resumed, cache ? 2 : 0); /* server's count ... */
        assert_int_equal(e.st.tls_handshakes, 3);
        assert_int_equal(e.st.tls_resumed, cache ? 2 : 0); /* ... and the client's agree */
    }
}

static void test_tls_handshake_timeout(void **state)
{
    tc_env e;
    tc_call c;
    tls_env(&e, "server");
    ts_set_mute(e.srv, true); /* accepts, never answers the ClientHello */
    e.to.tls_ms = 100;
    tc_call_init(&e, &c);
    tc_start(&c, "/cl", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_timeout_tls);
    assert_true(c.t_end - c.t_start + 5 >= 100);
    assert_int_equal(e.st.conns_opened, 1);
    tc_call_free(&c);
}

static void test_tls_idle_connection_closed_by_server(void **state)
{
    tc_env e;
    later_state s;
    tls_env(&e, "server");
    run_later(&e, &s, "/idle-close", "/ka"); /* close_notify, then FIN while idle */
    assert_int_equal(s.mid.idle_closed, 1);
    assert_int_equal(s.mid.conns_open, 0);
    assert_null(s.second.err);
    assert_int_equal(e.st.retries, 0);
    assert_int_equal(e.sst.accepted, 2);
    assert_int_equal(e.st.tls_resumed, 1); /* the new connection resumed */
}

static void race_second(tc_call *c)
{
    seq_state *s = c->env->test;
    tc_start(&s->calls[1], "/race", NULL);
}

static void test_tls_keepalive_race_is_retried(void **state)
{
    tc_env e;
    seq_state s = {0};
    tls_env(&e, "server");
    e.test = &s;
    tc_call_init(&e, &s.calls[0]);
    tc_call_init(&e, &s.calls[1]);
    s.calls[0].on_end = race_second;
    tc_start(&s.calls[0], "/race", NULL);
    tc_env_run(&e);
    assert_null(s.calls[1].err);
    assert_int_equal(s.calls[1].status, 200);
    assert_int_equal(e.st.retries, 1);
    assert_int_equal(e.sst.accepted, 2);
    tc_call_free(&s.calls[0]);
    tc_call_free(&s.calls[1]);
}

static void test_tls_reset_mid_body(void **state)
{
    tc_env e;
    tc_call c;
    tls_env(&e, "server");
    tc_call_init(&e, &c);
    tc_start(&c, "/reset-mid", NULL);
    tc_env_run(&e);
    assert_ptr_equal(c.err, upstream_err_reset);
    assert_int_equal(c.body_len, 100);
    tc_call_free(&c);
}

static void test_tls_pause_resume(void **state)
{
    tc_env e;
    tls_env(&e, "server");
    e.to.idle_ms = 100;
    run_pause_resume(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transport_handshake_and_data),
        cmocka_unit_test(test_transport_session_resumption),
        cmocka_unit_test(test_transport_rejects_bad_certificates),
        cmocka_unit_test(test_transport_verify_off),
        cmocka_unit_test(test_config_is_shared),
        cmocka_unit_test(test_tls_requests),
        cmocka_unit_test(test_tls_large_post),
        cmocka_unit_test(test_tls_bad_certificates_fail),
        cmocka_unit_test(test_tls_verify_off_accepts_selfsigned),
        cmocka_unit_test(test_tls_session_resumption),
        cmocka_unit_test(test_tls_handshake_timeout),
        cmocka_unit_test(test_tls_idle_connection_closed_by_server),
        cmocka_unit_test(test_tls_keepalive_race_is_retried),
        cmocka_unit_test(test_tls_reset_mid_body),
        cmocka_unit_test(test_tls_pause_resume),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
