/* test_pg.c - the PostgreSQL pool against a real server: a throwaway
 * cluster from test/pgtmp.sh, started once for the group, paused and
 * resumed by the restart test, removed at the end. */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon/base/log.h"
#include "billing/ledger.h"
#include "daemon/dns.h"
#include "daemon/ledger_cols.h"
#include "daemon/pg.h"

/* ---- the cluster ---- */

static char g_dir[64];       /* the cluster's directory (mkdtemp) */
static char g_conninfo[256]; /* host=127.0.0.1 port=N user=postgres dbname=tollgate */
static long g_port;          /* its port */

static int pgtmp(const char *cmd)
{
    char line[512];
    snprintf(line, sizeof(line), "bash %s/test/pgtmp.sh %s %s", TG_SOURCE_DIR, cmd, g_dir);
    return system(line);
}

static int group_setup(void **state)
{
    char line[512];
    snprintf(g_dir, sizeof(g_dir), "/tmp/tgpg.XXXXXX");
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
        return -1;
    }
    /* no PostgreSQL binaries is a failure, not a skip: CI installs them */
    snprintf(line, sizeof(line), "bash %s/test/pgtmp.sh start %s", TG_SOURCE_DIR, g_dir);
    FILE *f = popen(line, "r");
    if (!f)
        goto out_fail;
    if (!fgets(g_conninfo, sizeof(g_conninfo), f))
        g_conninfo[0] = '\0';
    int rc = pclose(f);
    g_conninfo[strcspn(g_conninfo, "\n")] = '\0';
    const char *port = strstr(g_conninfo, "port=");
    if (rc != 0 || !port)
        goto out_fail;
    g_port = strtol(port + 5, NULL, 10);
    if (g_port <= 0)
        goto out_fail;
    return 0;

out_fail:
    fprintf(stderr, "test_pg: could not start PostgreSQL with test/pgtmp.sh\n");
    pgtmp("stop");
    return -1;
}

static int group_teardown(void **state)
{
    pgtmp("stop");
    return 0;
}

/* ---- a name with two addresses ---- */

/* The test binary's getaddrinfo comes before libc's for everyone in the
 * process (libuv's thread pool included). TWO_ADDR_NAME resolves to
 * 127.0.0.2, where nothing listens (the server is on 127.0.0.1 only), then
 * 127.0.0.1: libpq is refused by the first and opens a new socket for the
 * second in the middle of the handshake. Every other name goes to libc. */
#define TWO_ADDR_NAME "two-addresses.tollgate.test"

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (!real)
        return EAI_FAIL;
    if (!node || strcmp(node, TWO_ADDR_NAME) != 0)
        return real(node, service, hints, res);
    struct addrinfo h, *first = NULL, *second = NULL;
    memset(&h, 0, sizeof(h));
    h.ai_family = AF_INET;
    h.ai_socktype = SOCK_STREAM;
    h.ai_flags = AI_NUMERICHOST;
    int rc = real("127.0.0.2", service, &h, &first);
    if (rc == 0)
        rc = real("127.0.0.1", service, &h, &second);
    if (rc != 0) {
        if (first)
            freeaddrinfo(first);
        return rc;
    }
    struct addrinfo *last = first;
    while (last->ai_next)
        last = last->ai_next;
    last->ai_next = second; /* one list, freed by freeaddrinfo as libc's own */
    *res = first;
    return 0;
}

/* ---- a loop with pools ---- */

typedef struct env {
    uv_loop_t loop;
    uv_timer_t tick;  /* keeps uv_run(UV_RUN_ONCE) returning, to check conditions */
    pg_pool *pool;    /* the pool under test */
    pg_pool *admin;   /* a second pool, when a test needs one */
} env;

static void tick_cb(uv_timer_t *t)
{
}

static pg_options opts_default(void)
{
    pg_options o;
    memset(&o, 0, sizeof(o));
    o.conninfo = g_conninfo;
    o.backoff_min_ms = 50;
    o.backoff_max_ms = 400;
    return o;
}

static pg_pool *env_pool(env *e, const pg_options *o)
{
    char err[256] = "";
    pg_pool *p = pg_pool_new(&e->loop, NULL, o, err, sizeof(err));
    if (!p)
        fail_msg("pg_pool_new: %s", err);
    return p;
}

static void env_init(env *e, const pg_options *o)
{
    memset(e, 0, sizeof(*e));
    assert_int_equal(uv_loop_init(&e->loop), 0);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, tick_cb, 10, 10);
    if (o)
        e->pool = env_pool(e, o);
}

typedef bool (*pred_fn)(env *e, void *arg);

static bool env_run_until(env *e, pred_fn pred, void *arg, uint64_t ms)
{
    uv_update_time(&e->loop);
    uint64_t end = uv_now(&e->loop) + ms;
    while (!pred(e, arg)) {
        if (uv_now(&e->loop) >= end)
            return false;
        uv_run(&e->loop, UV_RUN_ONCE);
    }
    return true;
}

static bool pred_never(env *e, void *arg)
{
    return false;
}

static void env_sleep(env *e, uint64_t ms)
{
    env_run_until(e, pred_never, NULL, ms);
}

static void env_close(env *e)
{
    pg_pool_close(e->pool);
    pg_pool_close(e->admin);
    uv_close((uv_handle_t *)&e->tick, NULL);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    pg_pool_free(e->pool);
    pg_pool_free(e->admin);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* ---- one query's outcome ---- */

typedef struct call {
    int n;                /* callbacks */
    int seq;              /* position among all completions */
    bool ok;              /* res, not err */
    pg_errkind kind;      /* err->kind */
    char sqlstate[6];     /* err->sqlstate */
    char msg[256];        /* err->message */
    int ntuples;          /* rows */
    int col_c;            /* pg_column(res, "c") */
    char v[4][128];       /* row 0, "<null>" for SQL NULL */
    uint64_t at;          /* uv_now() when it ran */
    uv_loop_t *loop;      /* for at */
} call;

static int g_done; /* callbacks of all calls */

static void on_result(void *ud, const PGresult *res, const pg_error *err)
{
    call *c = ud;
    c->n++;
    c->seq = g_done++;
    c->at = c->loop ? uv_now(c->loop) : 0;
    assert_true((res == NULL) != (err == NULL));
    if (err) {
        c->ok = false;
        c->kind = err->kind;
        snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", err->sqlstate);
        snprintf(c->msg, sizeof(c->msg), "%s", err->message);
        assert_null(strchr(err->message, '\n'));
        if (err->kind == PG_ERR_SERVER)
            assert_int_equal(strlen(err->sqlstate), 5);
        else
            assert_string_equal(err->sqlstate, "");
        return;
    }
    ExecStatusType st = PQresultStatus(res);
    assert_true(st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK);
    c->ok = true;
    c->ntuples = PQntuples(res);
    c->col_c = pg_column(res, "c");
    for (int i = 0; i < 4; i++) {
        const char *v = pg_value(res, 0, i);
        snprintf(c->v[i], sizeof(c->v[i]), "%s", v ? v : "<null>");
    }
}

static bool pred_done(env *e, void *arg)
{
    return ((call *)arg)->n > 0;
}

static bool pred_count(env *e, void *arg)
{
    return g_done >= *(int *)arg;
}

static void send_on(env *e, pg_pool *p, call *c, const char *sql, int n, const char *const *vals)
{
    memset(c, 0, sizeof(*c));
    c->loop = &e->loop;
    assert_non_null(pg_send(p, NULL, sql, n, vals, on_result, c));
}

/* Runs one query on the pool and waits for it. */
static void run_on(env *e, pg_pool *p, call *c, const char *sql, int n, const char *const *vals)
{
    send_on(e, p, c, sql, n, vals);
    assert_true(env_run_until(e, pred_done, c, 15000));
    assert_int_equal(c->n, 1);
}

static void run_ok(env *e, call *c, const char *sql)
{
    run_on(e, e->pool, c, sql, 0, NULL);
    if (!c->ok)
        fail_msg("%s: %s %s", sql, c->sqlstate, c->msg);
}

static pg_stats stats_of(pg_pool *p)
{
    pg_stats st;
    pg_pool_stats(p, &st);
    return st;
}

static bool pred_ready(env *e, void *arg)
{
    return pg_pool_ready(e->pool);
}

/* arg: the number of query connections that must be up */
static bool pred_up(env *e, void *arg)
{
    return stats_of(e->pool).up == *(uint32_t *)arg;
}

/* ---- queries ---- */

static void test_params_and_results(void **state)
{
    static const char quoted[] = "it's \"quoted\" \\ back;--";
    static const char uni[] = "ünïcødé ✓ 日本語";
    const char *vals[] = {quoted, NULL, uni};
    pg_options o = opts_default();
    o.size = 2;
    env e;
    call c;
    env_init(&e, &o);
    assert_true(env_run_until(&e, pred_up, &o.size, 10000));

    run_on(&e, e.pool, &c, "select $1::text as a, $2::text as b, $3::text as c, length($3)", 3, vals);
    assert_true(c.ok);
    assert_int_equal(c.ntuples, 1);
    assert_string_equal(c.v[0], quoted);
    assert_string_equal(c.v[1], "<null>");
    assert_string_equal(c.v[2], uni);
    assert_string_equal(c.v[3], "13");
    assert_int_equal(c.col_c, 2);

    /* several statements: the last result */
    run_ok(&e, &c, "select 1 as c; select 'last' as c");
    assert_string_equal(c.v[0], "last");
    assert_int_equal(c.col_c, 0);
    /* ... but any error wins */
    run_on(&e, e.pool, &c, "select 1; select 1/0; select 3", 0, NULL);
    assert_false(c.ok);
    assert_int_equal(c.kind, PG_ERR_SERVER);
    assert_string_equal(c.sqlstate, "22012");
    assert_string_equal(c.msg, "division by zero");
    /* 200 results: more than one wake-up's share, the rest comes on the
     * next loop turn */
    static char many[200 * 20];
    size_t off = 0;
    for (int i = 1; i <= 200; i++)
        off += (size_t)snprintf(many + off, sizeof(many) - off, "select %d as c;", i);
    run_ok(&e, &c, many);
    assert_string_equal(c.v[0], "200");

    /* a command, and an empty query, give COMMAND_OK without rows */
    run_ok(&e, &c, "set search_path = public");
    assert_int_equal(c.ntuples, 0);
    run_ok(&e, &c, "");
    assert_int_equal(c.ntuples, 0);
    assert_string_equal(c.v[0], "<null>");

    /* what the pool set at connect */
    run_ok(&e, &c, "select current_setting('statement_timeout'), current_setting('application_name')");
    assert_string_equal(c.v[0], "5s");
    assert_string_equal(c.v[1], "tollgate");

    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.queries, 7);
    assert_int_equal(st.failed, 1);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.disconnects, 0);
    assert_int_equal(st.up, 2);
    assert_int_equal(st.busy, 0);
    assert_int_equal(st.queued, 0);
    env_close(&e);
}

#define MANY 500
static call g_many[MANY];

static void test_many_concurrent(void **state)
{
    static char nums[MANY][12];
    pg_options o = opts_default();
    o.size = 4;
    env e;
    env_init(&e, &o);
    g_done = 0;
    /* all queued before any connection is up */
    for (int i = 0; i < MANY; i++) {
        snprintf(nums[i], sizeof(nums[i]), "%d", i);
        const char *v[] = {nums[i]};
        /* a millisecond each: three connections must not drain the queue
         * before the fourth is up (they did, 1 run in 6 on an idle box) */
        send_on(&e, e.pool, &g_many[i], "select $1::int * 3, pg_backend_pid() from pg_sleep(0.001)",
                1, v);
    }
    assert_int_equal(stats_of(e.pool).queued, MANY);
    int want = MANY;
    assert_true(env_run_until(&e, pred_count, &want, 30000));

    int pids[8], npids = 0;
    long sumdisp = 0;
    for (int i = 0; i < MANY; i++) {
        call *c = &g_many[i];
        assert_int_equal(c->n, 1);
        assert_true(c->ok);
        char exp[16];
        snprintf(exp, sizeof(exp), "%d", i * 3);
        assert_string_equal(c->v[0], exp);
        int pid = atoi(c->v[1]);
        bool seen = false;
        for (int j = 0; j < npids; j++)
            seen = seen || pids[j] == pid;
        if (!seen) {
            assert_true(npids < 8);
            pids[npids++] = pid;
        }
        sumdisp += abs(c->seq - i);
    }
    assert_int_equal(npids, 4); /* every connection took its share */
    /* FIFO: a query is overtaken only by those running beside it while
     * it runs; one stalled backend can be overtaken by many, so only the
     * mean is bounded (LIFO or random order would average ~MANY/3) */
    assert_true(sumdisp < 8 * MANY);
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.queries, MANY);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.connects, 4);
    env_close(&e);

    /* one connection: completions in exactly the order sent */
    o.size = 1;
    env_init(&e, &o);
    g_done = 0;
    for (int i = 0; i < 50; i++) {
        const char *v[] = {nums[i]};
        send_on(&e, e.pool, &g_many[i], "select $1::int", 1, v);
    }
    want = 50;
    assert_true(env_run_until(&e, pred_count, &want, 15000));
    for (int i = 0; i < 50; i++) {
        assert_int_equal(g_many[i].seq, i);
        assert_string_equal(g_many[i].v[0], nums[i]);
    }
    env_close(&e);
}

static const pg_stmt st_double = {"tg_test_double", "select $1::int * 2 as c", 1};
static const pg_stmt st_bad = {"tg_test_bad", "select * from no_such_table where x = $1", 1};

static bool pred_two_back(env *e, void *arg)
{
    pg_stats st = stats_of(e->pool);
    return st.disconnects >= 2 && st.up == 2;
}

static void run_stmt(env *e, const pg_stmt *s, call *c, int arg)
{
    char num[12];
    snprintf(num, sizeof(num), "%d", arg);
    const char *v[] = {num};
    memset(c, 0, sizeof(*c));
    c->loop = &e->loop;
    assert_non_null(pg_send(e->pool, s, NULL, 1, v, on_result, c));
    assert_true(env_run_until(e, pred_done, c, 15000));
}

static void test_prepared_statements(void **state)
{
    static call calls[100];
    static char nums[100][12];
    pg_options o = opts_default();
    o.size = 2;
    o.application_name = "tg-test-prep";
    env e;
    call c;
    env_init(&e, &o);
    assert_true(env_run_until(&e, pred_up, &o.size, 10000));
    g_done = 0;
    for (int i = 0; i < 100; i++) {
        snprintf(nums[i], sizeof(nums[i]), "%d", i);
        const char *v[] = {nums[i]};
        calls[i].loop = &e.loop;
        assert_non_null(pg_send(e.pool, &st_double, "ignored", 1, v, on_result, &calls[i]));
    }
    int want = 100;
    assert_true(env_run_until(&e, pred_count, &want, 15000));
    for (int i = 0; i < 100; i++) {
        char exp[16];
        snprintf(exp, sizeof(exp), "%d", i * 2);
        assert_true(calls[i].ok);
        assert_string_equal(calls[i].v[0], exp);
    }
    run_ok(&e, &c, "select count(*) from pg_prepared_statements where name = 'tg_test_double'");
    assert_string_equal(c.v[0], "1");

    /* wrong parameter count: refused at once */
    const char *v2[] = {"1", "2"};
    assert_null(pg_send(e.pool, &st_double, NULL, 2, v2, on_result, &c));

    /* a statement the server rejects fails with its error, every time */
    for (int i = 0; i < 2; i++) {
        run_stmt(&e, &st_bad, &c, 1);
        assert_false(c.ok);
        assert_int_equal(c.kind, PG_ERR_SERVER);
        assert_string_equal(c.sqlstate, "42P01");
        assert_string_equal(c.msg, "relation \"no_such_table\" does not exist");
    }

    /* kill both sessions from another pool: the statements must be
     * prepared again on the new ones */
    o.size = 1;
    o.application_name = NULL;
    e.admin = env_pool(&e, &o);
    run_on(&e, e.admin, &c,
           "select count(pg_terminate_backend(pid)) from pg_stat_activity "
           "where application_name = 'tg-test-prep'", 0, NULL);
    assert_true(c.ok);
    assert_string_equal(c.v[0], "2");
    assert_true(env_run_until(&e, pred_two_back, NULL, 10000));
    for (int i = 0; i < 10; i++) {
        run_stmt(&e, &st_double, &c, 21);
        assert_true(c.ok);
        assert_string_equal(c.v[0], "42");
    }
    run_ok(&e, &c, "select count(*) from pg_prepared_statements where name = 'tg_test_double'");
    assert_string_equal(c.v[0], "1");
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.connects, 4);
    assert_int_equal(st.disconnects, 2);
    env_close(&e);
}

static void test_server_errors(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    env e;
    call c;
    env_init(&e, &o);

    /* 22P02; the server quotes the value, the pool cuts it out */
    const char *secret[] = {"sekrit-value-x"};
    run_on(&e, e.pool, &c, "select $1::int", 1, secret);
    assert_false(c.ok);
    assert_int_equal(c.kind, PG_ERR_SERVER);
    assert_string_equal(c.sqlstate, "22P02");
    assert_string_equal(c.msg, "invalid input syntax for type integer: \"...\"");

    /* 23505 */
    run_ok(&e, &c, "drop table if exists tg_uniq; create table tg_uniq (k text primary key)");
    const char *k[] = {"a"};
    run_on(&e, e.pool, &c, "insert into tg_uniq values ($1)", 1, k);
    assert_true(c.ok);
    run_on(&e, e.pool, &c, "insert into tg_uniq values ($1)", 1, k);
    assert_false(c.ok);
    assert_int_equal(c.kind, PG_ERR_SERVER);
    assert_string_equal(c.sqlstate, "23505");
    assert_string_equal(c.msg, "duplicate key value violates unique constraint \"tg_uniq_pkey\"");

    /* 42601 */
    run_on(&e, e.pool, &c, "selec 1", 0, NULL);
    assert_int_equal(c.kind, PG_ERR_SERVER);
    assert_string_equal(c.sqlstate, "42601");

    /* the connection survived all of it */
    run_ok(&e, &c, "select 'still here'");
    assert_string_equal(c.v[0], "still here");
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.disconnects, 0);
    assert_int_equal(st.failed, 3);
    run_ok(&e, &c, "drop table tg_uniq");
    env_close(&e);
}

static void test_statement_timeout(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    o.statement_timeout_ms = 300;
    env e;
    call c;
    env_init(&e, &o);
    run_ok(&e, &c, "show statement_timeout");
    assert_string_equal(c.v[0], "300ms");

    /* the server's statement_timeout */
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    run_on(&e, e.pool, &c, "select pg_sleep(3)", 0, NULL);
    assert_int_equal(c.kind, PG_ERR_SERVER);
    assert_string_equal(c.sqlstate, "57014");
    assert_string_equal(c.msg, "canceling statement due to statement timeout");
    assert_true(c.at - t0 < 2000);
    run_ok(&e, &c, "select 1");

    /* a server that does not answer: the client deadline (300 + 1000 ms)
     * drops the connection */
    run_ok(&e, &c, "set statement_timeout = 0");
    uv_update_time(&e.loop);
    t0 = uv_now(&e.loop);
    run_on(&e, e.pool, &c, "select pg_sleep(5)", 0, NULL);
    assert_false(c.ok);
    assert_int_equal(c.kind, PG_ERR_TIMEOUT);
    assert_string_equal(c.msg, "database query timed out after 1300 ms (connection reset)");
    assert_true(c.at - t0 >= 1290);
    assert_true(c.at - t0 < 3000);
    assert_int_equal(stats_of(e.pool).disconnects, 1);

    /* a new connection, with the pool's settings again */
    run_ok(&e, &c, "show statement_timeout");
    assert_string_equal(c.v[0], "300ms");
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.connects, 2);
    assert_int_equal(st.disconnects, 1);
    env_close(&e);
}

static bool pred_busy(env *e, void *arg)
{
    return stats_of(e->pool).busy == 1;
}

static void test_cancel(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    env e;
    call a, b, c, x;
    env_init(&e, &o);
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));

    /* withdrawn while queued (nothing is connected yet) */
    pg_query *qa = pg_send(e.pool, NULL, "select 'a'", 0, NULL, on_result, &a);
    assert_non_null(qa);
    pg_cancel(qa);
    assert_int_equal(stats_of(e.pool).queued, 0);
    run_ok(&e, &x, "select 'x'");

    /* withdrawn while running: the result is dropped when it comes */
    pg_query *qb = pg_send(e.pool, NULL, "select pg_sleep(0.3), 'b'", 0, NULL, on_result, &b);
    assert_non_null(qb);
    assert_int_equal(stats_of(e.pool).busy, 1); /* sent at once: a connection was idle */
    env_sleep(&e, 50);
    pg_cancel(qb);
    run_ok(&e, &c, "select 'c'"); /* waits for b's answer on the one connection */
    assert_string_equal(c.v[0], "c");
    env_sleep(&e, 100);
    assert_int_equal(a.n, 0);
    assert_int_equal(b.n, 0);
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.queries, 2);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.up, 1);
    env_close(&e);
}

static void test_cancel_queued_behind_running(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    env e;
    call r, q, f;
    env_init(&e, &o);
    assert_true(env_run_until(&e, pred_ready, NULL, 10000));
    send_on(&e, e.pool, &r, "select pg_sleep(0.2), 'r'", 0, NULL);
    memset(&q, 0, sizeof(q));
    pg_query *qq = pg_send(e.pool, NULL, "select 'q'", 0, NULL, on_result, &q);
    assert_non_null(qq);
    send_on(&e, e.pool, &f, "select 'f'", 0, NULL);
    pg_cancel(qq);
    assert_true(env_run_until(&e, pred_done, &f, 10000));
    assert_true(r.ok);
    assert_string_equal(r.v[1], "r");
    assert_true(f.ok);
    assert_string_equal(f.v[0], "f");
    assert_true(r.seq < f.seq);
    assert_int_equal(q.n, 0);
    env_close(&e);
}

/* ---- server going away and coming back ---- */

typedef struct listen_rec {
    int resyncs;       /* cb(ud, NULL) */
    int notes;         /* payloads */
    char last[64];     /* the last payload */
    int numbered;      /* payloads "1", "2", ... seen in order */
} listen_rec;

static void on_notify(void *ud, const char *payload)
{
    listen_rec *l = ud;
    if (!payload) {
        l->resyncs++;
        return;
    }
    l->notes++;
    snprintf(l->last, sizeof(l->last), "%s", payload);
    if (atoi(payload) == l->numbered + 1)
        l->numbered++;
}

static bool pred_numbered(env *e, void *arg)
{
    return ((listen_rec *)arg)->numbered >= 200;
}

static bool pred_listening(env *e, void *arg)
{
    listen_rec *l = arg;
    pg_stats st = stats_of(e->pool);
    return st.up == 2 && st.listening && l->resyncs >= 1;
}

static bool pred_resynced_twice(env *e, void *arg)
{
    listen_rec *l = arg;
    pg_stats st = stats_of(e->pool);
    return st.up == 2 && st.listening && l->resyncs >= 2;
}

static bool pred_notes(env *e, void *arg)
{
    listen_rec *l = arg;
    return l->notes >= 1;
}

static bool pred_not_ready(env *e, void *arg)
{
    return !pg_pool_ready(e->pool);
}

static bool pred_all_lost(env *e, void *arg)
{
    pg_stats st = stats_of(e->pool);
    return st.disconnects == 3 && !st.listening;
}

static void test_server_restart(void **state)
{
    pg_options o = opts_default();
    o.size = 2;
    o.queue_timeout_ms = 700;
    o.statement_timeout_ms = 10000;
    env e;
    call c, inflight, queued[3];
    listen_rec l;
    memset(&l, 0, sizeof(l));
    env_init(&e, &o);

    assert_int_equal(pg_listen(e.pool, "Bad-Name", on_notify, &l), -EINVAL);
    assert_int_equal(pg_listen(e.pool, "1abc", on_notify, &l), -EINVAL);
    assert_int_equal(pg_listen(e.pool, "", on_notify, &l), -EINVAL);
    assert_int_equal(pg_listen(e.pool, "tg_chan", on_notify, &l), 0);
    assert_int_equal(pg_listen(e.pool, "tg_chan", on_notify, &l), -EALREADY);
    assert_true(env_run_until(&e, pred_listening, &l, 10000));
    assert_int_equal(l.resyncs, 1);

    /* NOTIFY from a query connection reaches the listener */
    run_ok(&e, &c, "select pg_notify('tg_chan', 'hello ✓')");
    assert_true(env_run_until(&e, pred_notes, &l, 5000));
    assert_string_equal(l.last, "hello ✓");
    /* 200 in one transaction: more than one wake-up's share, in order */
    run_ok(&e, &c, "select count(pg_notify('tg_chan', g::text)) from generate_series(1, 200) g");
    assert_true(env_run_until(&e, pred_numbered, &l, 5000));
    assert_int_equal(l.notes, 201);
    assert_string_equal(l.last, "200");

    /* stop the server with a query running and one connection idle */
    send_on(&e, e.pool, &inflight, "select pg_sleep(5)", 0, NULL);
    assert_true(env_run_until(&e, pred_busy, NULL, 5000));
    env_sleep(&e, 100);
    assert_int_equal(pgtmp("pause"), 0);
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);

    assert_true(env_run_until(&e, pred_done, &inflight, 5000));
    assert_false(inflight.ok);
    assert_int_equal(inflight.kind, PG_ERR_CONNECTION);
    assert_string_equal(inflight.msg,
                        "database connection lost: terminating connection due to administrator command");
    assert_true(env_run_until(&e, pred_not_ready, NULL, 2000));
    assert_true(uv_now(&e.loop) - t0 < 2000);
    assert_true(env_run_until(&e, pred_all_lost, NULL, 2000)); /* the listener too */
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.up, 0);
    assert_false(st.listening);
    assert_int_equal(st.disconnects, 3);

    /* queries wait queue_timeout_ms for a connection, then fail */
    uv_update_time(&e.loop);
    t0 = uv_now(&e.loop);
    g_done = 0;
    for (int i = 0; i < 3; i++)
        send_on(&e, e.pool, &queued[i], "select 1", 0, NULL);
    int want = 3;
    assert_true(env_run_until(&e, pred_count, &want, 5000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(queued[i].kind, PG_ERR_CONNECTION);
        assert_non_null(strstr(queued[i].msg, "no database connection available within 700 ms: "));
        assert_non_null(strstr(queued[i].msg, "refused"));
        assert_true(queued[i].at - t0 >= 690);
        assert_true(queued[i].at - t0 < 2500);
    }

    /* back: the pool and the listener recover by themselves */
    assert_int_equal(pgtmp("resume"), 0);
    assert_true(env_run_until(&e, pred_resynced_twice, &l, 10000));
    assert_int_equal(l.resyncs, 2);
    run_ok(&e, &c, "select 42");
    assert_string_equal(c.v[0], "42");
    l.notes = 0;
    run_ok(&e, &c, "select pg_notify('tg_chan', 'again')");
    assert_true(env_run_until(&e, pred_notes, &l, 5000));
    assert_string_equal(l.last, "again");
    st = stats_of(e.pool);
    assert_int_equal(st.connects, 6);
    assert_int_equal(st.disconnects, 3);
    assert_int_equal(st.failed, 4);
    env_close(&e);
}

static bool pred_any_up(env *e, void *arg)
{
    (void)arg;
    pg_stats st = stats_of(e->pool);
    return st.up > 0 || st.listening;
}

static bool pred_three_listening(env *e, void *arg)
{
    listen_rec *l = arg;
    pg_stats st = stats_of(e->pool);
    return st.up == 3 && st.listening && l->resyncs >= 1;
}

static bool pred_all_up(env *e, void *arg)
{
    listen_rec *l = arg;
    pg_stats st = stats_of(e->pool);
    return st.up == 3 && st.listening && l->resyncs >= 2;
}

/* After an outage long enough for the backoffs to grow (up to 6.4 s each,
 * jittered), the first connection that gets through wakes the others: all
 * three and the listener (whose reconnect resyncs) are up soon after it,
 * not each at its own backoff. */
static void test_recovery_wakes_all(void **state)
{
    pg_options o = opts_default();
    o.size = 3;
    o.backoff_min_ms = 100;
    o.backoff_max_ms = 30000;
    env e;
    listen_rec l;
    memset(&l, 0, sizeof(l));
    env_init(&e, &o);
    assert_int_equal(pg_listen(e.pool, "tg_wake", on_notify, &l), 0);
    assert_true(env_run_until(&e, pred_three_listening, &l, 10000));

    assert_int_equal(pgtmp("pause"), 0);
    env_sleep(&e, 4000); /* 5 or more failed attempts each */
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.up, 0);
    assert_false(st.listening);
    assert_int_equal(st.disconnects, 4);
    assert_int_equal(pgtmp("resume"), 0);

    assert_true(env_run_until(&e, pred_any_up, NULL, 15000));
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    assert_true(env_run_until(&e, pred_all_up, &l, 15000));
    uv_update_time(&e.loop);
    assert_true(uv_now(&e.loop) - t0 < 1000);
    assert_int_equal(l.resyncs, 2);
    env_close(&e);
}

/* A backoff far longer than the outage: pg_pool_retry_now ends it. */
static void test_retry_now(void **state)
{
    (void)state;
    pg_options o = opts_default();
    o.size = 2;
    o.backoff_min_ms = 60000;
    o.backoff_max_ms = 60000;
    env e;
    env_init(&e, &o);
    assert_true(env_run_until(&e, pred_any_up, NULL, 10000));

    assert_int_equal(pgtmp("pause"), 0);
    env_sleep(&e, 500);
    assert_int_equal(stats_of(e.pool).up, 0);
    assert_int_equal(pgtmp("resume"), 0);
    env_sleep(&e, 1000);
    assert_int_equal(stats_of(e.pool).up, 0); /* each waits out its minute */

    pg_pool_retry_now(e.pool);
    assert_true(env_run_until(&e, pred_any_up, NULL, 5000));
    env_close(&e);
}

/* ---- connecting ---- */

static void test_dns_localhost(void **state)
{
    char ci[256];
    env e;
    call c;
    env_init(&e, NULL);
    dns_cache *dns = dns_cache_new(&e.loop, 10000, 8);
    assert_non_null(dns);

    /* a name, resolved through the given cache */
    pg_options o = opts_default();
    o.size = 2;
    snprintf(ci, sizeof(ci), "host=localhost port=%ld user=postgres dbname=tollgate", g_port);
    o.conninfo = ci;
    char err[256];
    e.pool = pg_pool_new(&e.loop, dns, &o, err, sizeof(err));
    assert_non_null(e.pool);
    run_ok(&e, &c, "select 'by name', inet_server_addr()");
    assert_string_equal(c.v[0], "by name");
    assert_string_equal(c.v[1], "127.0.0.1");
    dns_stats ds;
    dns_cache_stats(dns, &ds);
    assert_true(ds.lookups >= 1);
    assert_true(ds.lookups + ds.hits + ds.shared >= 2);

    /* a URI, with the pool's own resolver */
    snprintf(ci, sizeof(ci), "postgresql://postgres@localhost:%ld/tollgate?application_name=tg-uri",
             g_port);
    e.admin = pg_pool_new(&e.loop, NULL, &o, err, sizeof(err));
    assert_non_null(e.admin);
    run_on(&e, e.admin, &c, "select current_setting('application_name')", 0, NULL);
    assert_true(c.ok);
    assert_string_equal(c.v[0], "tg-uri");

    dns_cache_close(dns);
    env_close(&e);
}

static void test_dns_two_addresses(void **state)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "host=" TWO_ADDR_NAME " port=%ld user=postgres dbname=tollgate",
             g_port);
    pg_options o = opts_default();
    o.conninfo = ci;
    o.size = 3;
    env e;
    call c;
    env_init(&e, &o);
    /* each connection is refused on 127.0.0.2 first: libpq's next socket
     * usually gets the same descriptor number, in the middle of the
     * handshake */
    run_ok(&e, &c, "select inet_server_addr()");
    assert_string_equal(c.v[0], "127.0.0.1");
    assert_true(env_run_until(&e, pred_up, &o.size, 5000));
    for (int i = 0; i < 20; i++) {
        run_ok(&e, &c, "select 'two'");
        assert_string_equal(c.v[0], "two");
    }
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.connects, 3);
    assert_int_equal(st.disconnects, 0);
    assert_int_equal(st.failed, 0);
    env_close(&e);
}

static void test_invalid_conninfo(void **state)
{
    static const struct {
        const char *conninfo;
        const char *want;
    } cases[] = {
        {"host=127.0.0.1 nosuchoption=1", "invalid conninfo: invalid connection option \"nosuchoption\""},
        {"postgresql://postgres:hunter2%zz@127.0.0.1/db", "invalid conninfo: invalid percent-encoded token: \"...\""},
        {"user=postgres password='hunter2", "invalid conninfo: unterminated quoted string in connection info string"},
        {"host=db1.example,db2.example", "invalid conninfo: several hosts are not supported, give one"},
        {"host=db1.example port=5432,5433", "invalid conninfo: several hosts are not supported, give one"},
    };
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        pg_options o = opts_default();
        o.conninfo = cases[i].conninfo;
        assert_null(pg_pool_new(&loop, NULL, &o, err, sizeof(err)));
        assert_string_equal(err, cases[i].want);
        assert_null(strstr(err, "hunter2"));
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

static long free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void test_unreachable_server(void **state)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%ld user=postgres dbname=tollgate", free_port());
    pg_options o = opts_default();
    o.conninfo = ci;
    o.size = 2;
    o.queue_timeout_ms = 400;
    env e;
    call c;
    env_init(&e, &o);
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    run_on(&e, e.pool, &c, "select 1", 0, NULL);
    assert_int_equal(c.kind, PG_ERR_CONNECTION);
    assert_non_null(strstr(c.msg, "no database connection available within 400 ms: connection to server at"));
    assert_non_null(strstr(c.msg, "Connection refused"));
    assert_true(c.at - t0 >= 390);
    assert_false(pg_pool_ready(e.pool));
    pg_stats st = stats_of(e.pool);
    assert_int_equal(st.connects, 0);
    assert_int_equal(st.failed, 1);
    env_close(&e);
}

static void test_connect_timeout(void **state)
{
    /* a server that accepts TCP and never says a word */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_true(lfd >= 0);
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(lfd, 16), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &len), 0);

    char ci[256];
    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d user=postgres dbname=tollgate",
             ntohs(a.sin_port));
    pg_options o = opts_default();
    o.conninfo = ci;
    o.size = 1;
    o.connect_timeout_ms = 300;
    o.queue_timeout_ms = 1000;
    env e;
    call c;
    env_init(&e, &o);
    run_on(&e, e.pool, &c, "select 1", 0, NULL);
    assert_int_equal(c.kind, PG_ERR_CONNECTION);
    assert_string_equal(c.msg, "no database connection available within 1000 ms: no connection within 300 ms");
    env_close(&e);
    close(lfd);
}

/* ---- refusing and closing ---- */

static void test_refusals(void **state)
{
    static const char *many[PG_MAX_PARAMS + 1];
    pg_options o = opts_default();
    o.max_queue = 3;
    env e;
    call c[3], x;
    env_init(&e, &o);
    for (int i = 0; i < PG_MAX_PARAMS + 1; i++)
        many[i] = "1";
    /* not connected yet: everything queues */
    for (int i = 0; i < 3; i++)
        send_on(&e, e.pool, &c[i], "select 1", 0, NULL);
    assert_null(pg_send(e.pool, NULL, "select 1", 0, NULL, on_result, &x));
    assert_int_equal(stats_of(e.pool).queued, 3);
    assert_null(pg_send(e.pool, NULL, "select 1", PG_MAX_PARAMS + 1, many, on_result, &x));
    assert_null(pg_send(e.pool, NULL, NULL, 0, NULL, on_result, &x));
    assert_null(pg_send(e.pool, NULL, "select 1", 0, NULL, NULL, &x));
    assert_null(pg_send(e.pool, NULL, "select $1", 1, NULL, on_result, &x));
    g_done = 0;
    pg_pool_close(e.pool);
    assert_int_equal(g_done, 0); /* never from inside the call */
    assert_null(pg_send(e.pool, NULL, "select 1", 0, NULL, on_result, &x));
    assert_int_equal(pg_listen(e.pool, "ch", on_notify, NULL), -EINVAL);
    env_close(&e);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].n, 1);
        assert_int_equal(c[i].kind, PG_ERR_CLOSED);
        assert_string_equal(c[i].msg, "database pool closing");
    }
}

static void test_close_with_queries(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    env e;
    call running, q[5];
    env_init(&e, &o);
    send_on(&e, e.pool, &running, "select pg_sleep(2)", 0, NULL);
    assert_true(env_run_until(&e, pred_busy, NULL, 10000));
    for (int i = 0; i < 5; i++)
        send_on(&e, e.pool, &q[i], "select 1", 0, NULL);
    g_done = 0;
    pg_pool_close(e.pool);
    assert_int_equal(g_done, 0);
    uv_update_time(&e.loop);
    uint64_t t0 = uv_now(&e.loop);
    env_close(&e); /* runs the loop to the end */
    assert_int_equal(g_done, 6);
    assert_int_equal(running.kind, PG_ERR_CLOSED);
    assert_true(running.at - t0 < 1000); /* did not wait for the sleep */
    for (int i = 0; i < 5; i++)
        assert_int_equal(q[i].kind, PG_ERR_CLOSED);
    assert_true(running.seq < q[0].seq);
}

/* A callback that closes the pool it runs on. */
static pg_pool *g_close_me;

static void on_result_close(void *ud, const PGresult *res, const pg_error *err)
{
    on_result(ud, res, err);
    pg_pool_close(g_close_me);
}

static void test_close_from_callback(void **state)
{
    pg_options o = opts_default();
    o.size = 1;
    env e;
    call first, rest[3];
    env_init(&e, &o);
    memset(&first, 0, sizeof(first));
    g_close_me = e.pool;
    assert_non_null(pg_send(e.pool, NULL, "select 'first'", 0, NULL, on_result_close, &first));
    for (int i = 0; i < 3; i++)
        send_on(&e, e.pool, &rest[i], "select pg_sleep(1)", 0, NULL);
    assert_true(env_run_until(&e, pred_done, &first, 10000));
    assert_true(first.ok);
    assert_string_equal(first.v[0], "first");
    env_close(&e);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rest[i].n, 1);
        assert_int_equal(rest[i].kind, PG_ERR_CLOSED);
    }
}

static void test_close_while_connecting(void **state)
{
    char ci[256];
    snprintf(ci, sizeof(ci), "host=localhost port=%ld user=postgres dbname=tollgate", g_port);
    pg_options o = opts_default();
    o.conninfo = ci;
    for (int turns = 0; turns < 6; turns++) {
        env e;
        call c;
        env_init(&e, &o);
        send_on(&e, e.pool, &c, "select 1", 0, NULL);
        for (int i = 0; i < turns; i++)
            uv_run(&e.loop, UV_RUN_NOWAIT); /* stop at every step of the way */
        env_close(&e);
        assert_int_equal(c.n, 1);
    }
}

/* The ledger's rows read from the column arrays equal the same rows read
 * from their JSON by jsonb_to_recordset, value for value (daemon/store.c
 * sends the first and falls back to the second). */
static void test_ledger_cols_match_json(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "plain", "", "NULL", "null", "a\"b", "back\\slash", "{a,b}", " lead and trail ",
        "ünïcødé ✓ 日本語 \xf0\x9f\x98\x80", "tab\tnew\nline\r", "it's", "x\x01y\x1fz", "\\\"",
    };
    size_t nt = sizeof(texts) / sizeof(texts[0]);
    buf j;
    buf_init(&j, 1 << 20);
    assert_int_equal(buf_append_str(&j, "["), 0);
    for (size_t i = 0; i < nt; i++) {
        char id[40];
        snprintf(id, sizeof(id), "%032zx", i);
        ledger_row r = {
            .id = id,
            .request_id = texts[i],
            .at_us = 1764000000123456 + (int64_t)i,
            .key_id = i % 2 ? NULL : "11c43a96-8b3c-4f9a-a4bf-aceb48af367c",
            .key_alias = texts[(i + 1) % nt],
            .team_id = "3f98fc94-b548-404e-8b30-0a01f0c40ba2",
            .org_id = i % 3 ? "6ea28ceb-596a-4d20-8a9d-cf64cca77113" : NULL,
            .job_id = i % 4 ? NULL : "aaaaaaaa-8b3c-4f9a-a4bf-aceb48af367c",
            .requested_model = texts[(i + 2) % nt],
            .provider = texts[(i + 3) % nt],
            .provider_model = texts[(i + 4) % nt],
            .stream = i % 2,
            .status = 200 + (int)i,
            .upstream_status = i % 2 ? 0 : 502,
            .prompt_tokens = (int64_t)i * 1000000007,
            .completion_tokens = 16,
            .cached_tokens = INT64_MAX - (int64_t)i,
            .cache_write_tokens = 0,
            .usage_source = i % 2 ? "estimated" : "provider",
            .cost_nano = i % 3 ? (int64_t)i : -1,
            .price_nano = i % 5 ? INT64_MIN + 1 : -1,
            .credential = texts[(i + 5) % nt],
            .latency_us = 321,
            .ttft_us = i % 2 ? -1 : 7,
            .attempts = (int)i,
            .credit_leased = i % 3 == 1,
            .error = i % 2 ? texts[(i + 6) % nt] : NULL,
        };
        if (i)
            assert_int_equal(buf_append_str(&j, ","), 0);
        assert_int_equal(ledger_row_json(&r, texts[(i + 7) % nt], &j), 0);
    }
    /* members absent, null, unknown, and in another order */
    assert_int_equal(buf_append_str(&j, ",{\"status\":1,\"extra\":[1,{\"a\":2}],\"id\":\"z\","
                                        "\"error\":null,\"at\":\"2026-01-01T00:00:00+02:00\"}]"),
                     0);

    ledger_cols lc;
    ledger_cols_init(&lc);
    assert_int_equal(ledger_cols_fill(&lc, j.data, j.len), 0);
    assert_int_equal(lc.rows, nt + 1);
    const char *vals[LEDGER_NCOLS + 1];
    for (int i = 0; i < LEDGER_NCOLS; i++)
        vals[i] = lc.col[i].data;
    vals[LEDGER_NCOLS] = j.data;

    pg_options o = opts_default();
    env e;
    env_init(&e, &o);
    call c;
    run_on(&e, e.pool, &c,
           "WITH a AS (SELECT * FROM " LEDGER_COLS_UNNEST "), "
           "b AS (SELECT * FROM " LEDGER_JSON_RECORDSET("$30") ") "
           "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), "
           "(SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b) d), "
           "(SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a) d)",
           LEDGER_NCOLS + 1, vals);
    if (!c.ok)
        fail_msg("%s %s", c.sqlstate, c.msg);
    char want[16];
    snprintf(want, sizeof(want), "%zu", nt + 1);
    assert_string_equal(c.v[0], want);
    assert_string_equal(c.v[1], want);
    assert_string_equal(c.v[2], "0");
    assert_string_equal(c.v[3], "0");
    env_close(&e);
    ledger_cols_free(&lc);
    buf_free(&j);
}

int main(void)
{
    log_set_level(LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_conninfo),
        cmocka_unit_test(test_params_and_results),
        cmocka_unit_test(test_many_concurrent),
        cmocka_unit_test(test_prepared_statements),
        cmocka_unit_test(test_server_errors),
        cmocka_unit_test(test_statement_timeout),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_queued_behind_running),
        cmocka_unit_test(test_dns_localhost),
        cmocka_unit_test(test_dns_two_addresses),
        cmocka_unit_test(test_unreachable_server),
        cmocka_unit_test(test_connect_timeout),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_close_with_queries),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_close_while_connecting),
        cmocka_unit_test(test_server_restart),
        cmocka_unit_test(test_recovery_wakes_all),
        cmocka_unit_test(test_retry_now),
        cmocka_unit_test(test_ledger_cols_match_json),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
