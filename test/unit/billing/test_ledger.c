/* test_ledger.c - the usage ledger on a real libuv loop, against a fake
 * sink the tests control (succeed, fail with -EIO, refuse data with
 * -EINVAL, refuse at once, answer late). The sink keeps the rows it
 * acknowledged by id, so delivery can be checked row by row: none lost,
 * none unknown, and (where nothing failed) none twice. Spools live in
 * mkdtemp directories removed at the end of each test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "billing/ledger.h"
#include "daemon/base/log.h"

/* ------------------------------------------------------------ temp dirs */

static void mkspool(char *dir, size_t cap)
{
    snprintf(dir, cap, "/tmp/tgled.XXXXXX");
    assert_non_null(mkdtemp(dir));
}

/* Removes dir and the files in it (the spool is flat). */
static void rmspool(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static bool is_segment_name(const char *n)
{
    if (strlen(n) != 22 || strcmp(n + 16, ".jsonl") != 0)
        return false;
    for (int i = 0; i < 16; i++)
        if (!strchr("0123456789abcdef", n[i]))
            return false;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The segment file names of dir, sorted (oldest first); *n of them. */
static char **segment_files(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    char **v = NULL;
    *n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!is_segment_name(de->d_name))
            continue;
        v = realloc(v, (*n + 1) * sizeof(*v));
        assert_non_null(v);
        v[(*n)++] = strdup(de->d_name);
    }
    closedir(d);
    if (*n)
        qsort(v, *n, sizeof(*v), cmp_str);
    return v;
}

static void free_names(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static size_t count_segment_files(const char *dir)
{
    size_t n;
    char **v = segment_files(dir, &n);
    free_names(v, n);
    return n;
}

/* The whole file (NUL-terminated), or NULL if it does not exist. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)sz + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)sz, f), (size_t)sz);
    p[sz] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)sz;
    return p;
}

static void spit(const char *path, const char *data)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, strlen(data), f), strlen(data));
    assert_int_equal(fclose(f), 0);
}

/* All the lines of every segment of dir, oldest first, as one string
 * array (torn tails included, marked by a missing '\n' in *torn). */
typedef struct lines {
    char **v;
    size_t n;
    size_t torn; /* lines without a newline */
} lines;

static void read_segments(const char *dir, lines *out)
{
    memset(out, 0, sizeof(*out));
    size_t nf;
    char **files = segment_files(dir, &nf);
    for (size_t i = 0; i < nf; i++) {
        char p[4200];
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        size_t len;
        char *data = slurp(p, &len);
        assert_non_null(data);
        size_t s = 0;
        while (s < len) {
            char *nl = memchr(data + s, '\n', len - s);
            size_t e = nl ? (size_t)(nl - data) : len;
            if (!nl)
                out->torn++;
            out->v = realloc(out->v, (out->n + 1) * sizeof(*out->v));
            out->v[out->n++] = strndup(data + s, e - s);
            s = e + 1;
        }
        free(data);
    }
    free_names(files, nf);
}

static void free_lines(lines *l)
{
    free_names(l->v, l->n);
    memset(l, 0, sizeof(*l));
}

/* ------------------------------------------------------------ rows */

/* A row with every field set; id names it. */
static ledger_row row_full(const char *id)
{
    ledger_row r = {
        .id = id,
        .request_id = "req-1",
        .at_us = INT64_C(1700000000123456),
        .key_id = "11111111-1111-1111-1111-111111111111",
        .key_alias = "alias",
        .team_id = "22222222-2222-2222-2222-222222222222",
        .org_id = "33333333-3333-3333-3333-333333333333",
        .job_id = "44444444-4444-4444-4444-444444444444",
        .endpoint = "messages",
        .requested_model = "mock-1",
        .provider = "mock",
        .provider_model = "mock-model",
        .stream = true,
        .status = 200,
        .upstream_status = 201,
        .prompt_tokens = 11,
        .completion_tokens = 22,
        .cached_tokens = 3,
        .cache_write_tokens = 4,
        .usage_source = "provider",
        .cost_nano = 1234,
        .price_nano = 0,
        .credential = "team_byok",
        .latency_us = 5555,
        .ttft_us = 0,
        .error = "upstream said \"no\"",
        .attempts = 3,
    };
    return r;
}

/* A minimal row: every optional field absent. */
static ledger_row row_min(const char *id)
{
    ledger_row r = {
        .id = id,
        .at_us = INT64_C(1700000000000001),
        .status = 200,
        .cost_nano = -1,
        .price_nano = -1,
        .ttft_us = -1,
        .latency_us = 1,
    };
    return r;
}

static json_t *parse_obj(const char *p, size_t n)
{
    json_error_t je;
    json_t *v = json_loadb(p, n, 0, &je);
    if (!v)
        fail_msg("not JSON (%s): %.*s", je.text, (int)n, p);
    assert_true(json_is_object(v));
    return v;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        fail_msg("\"%s\" is not a string", k);
    return json_string_value(v);
}

static json_int_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", k);
    return json_integer_value(v);
}

static void assert_jnull(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_null(v))
        fail_msg("\"%s\" is not null", k);
}

static const char *const COLUMNS[] = {
    "id",
    "at",
    "request_id",
    "instance",
    "key_id",
    "key_alias",
    "team_id",
    "org_id",
    "job_id",
    "endpoint",
    "requested_model",
    "provider",
    "provider_model",
    "stream",
    "status",
    "upstream_status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "usage_source",
    "cost_nano",
    "price_nano",
    "credential",
    "latency_us",
    "ttft_us",
    "attempts",
    "error",
    "credit_leased",
};

/* The keys are exactly the columns of the calls table (+ instance and
 * credit_leased). */
static void assert_columns(json_t *o)
{
    size_t n = sizeof(COLUMNS) / sizeof(COLUMNS[0]);
    assert_int_equal(json_object_size(o), n);
    for (size_t i = 0; i < n; i++)
        if (!json_object_get(o, COLUMNS[i]))
            fail_msg("column \"%s\" missing", COLUMNS[i]);
}

/* ------------------------------------------------------------ the fake sink */

typedef struct fake fake;

typedef struct sink_call {
    uv_timer_t t;
    fake *f;
    ledger_done_fn done;
    void *token;
    int status;
    json_t *rows; /* kept on success */
} sink_call;

struct fake {
    uv_loop_t *loop;
    int fail;          /* 0: acknowledge; <0: done(token, fail) */
    bool refuse_now;   /* return -EAGAIN at once (nothing shipped) */
    uint32_t delay_ms; /* answer this much later (0: next loop turn) */
    const char *bad;   /* rows whose id starts with this are data errors (-EINVAL) */
    int singles_eio;   /* fail this many one-row shipments of good rows with -EIO */
    int first_eio;     /* fail this many shipments (the next ones) with -EIO */
    /* what happened */
    int calls, refused, failed, einval, pending;
    size_t max_rows;   /* the largest shipment */
    size_t rows_acked; /* rows in acknowledged shipments (duplicates included) */
    char **ids;        /* distinct ids acknowledged, in order of first arrival */
    int *counts;       /* times each arrived */
    size_t nids;
};

static ssize_t fake_find(const fake *f, const char *id)
{
    for (size_t i = f->nids; i-- > 0;)
        if (strcmp(f->ids[i], id) == 0)
            return (ssize_t)i;
    return -1;
}

static int fake_count(const fake *f, const char *id)
{
    ssize_t i = fake_find(f, id);
    return i < 0 ? 0 : f->counts[i];
}

static void fake_keep(fake *f, const char *id)
{
    ssize_t i = fake_find(f, id);
    if (i >= 0) {
        f->counts[i]++;
        return;
    }
    f->ids = realloc(f->ids, (f->nids + 1) * sizeof(*f->ids));
    f->counts = realloc(f->counts, (f->nids + 1) * sizeof(*f->counts));
    assert_non_null(f->ids);
    assert_non_null(f->counts);
    f->ids[f->nids] = strdup(id);
    f->counts[f->nids++] = 1;
}

static void fake_free(fake *f)
{
    free_names(f->ids, f->nids);
    free(f->counts);
    memset(f, 0, sizeof(*f));
}

static void sink_call_closed(uv_handle_t *h)
{
    sink_call *c = h->data;
    json_decref(c->rows);
    free(c);
}

static void sink_call_fire(uv_timer_t *t)
{
    sink_call *c = t->data;
    fake *f = c->f;
    f->pending--;
    if (c->status == 0) {
        size_t i;
        json_t *r;
        json_array_foreach(c->rows, i, r) fake_keep(f, jstr(r, "id"));
        f->rows_acked += json_array_size(c->rows);
    }
    uv_close((uv_handle_t *)&c->t, sink_call_closed);
    c->done(c->token, c->status);
}

static int fake_sink(void *ud, const char *json, size_t len, size_t n, ledger_done_fn done,
                     void *token)
{
    fake *f = ud;
    f->calls++;
    /* the daemon hands json to libpq as a C string: it must end there */
    assert_int_equal(strlen(json), len);
    json_error_t je;
    json_t *rows = json_loadb(json, len, 0, &je);
    if (!rows)
        fail_msg("the sink got no JSON (%s): %.200s", je.text, json);
    assert_true(json_is_array(rows));
    assert_int_equal(json_array_size(rows), n);
    assert_true(n > 0);
    if (n > f->max_rows)
        f->max_rows = n;
    if (f->refuse_now) {
        f->refused++;
        json_decref(rows);
        return -EAGAIN;
    }
    int status = f->fail;
    if (status == 0 && f->first_eio > 0) {
        f->first_eio--;
        status = -EIO;
    }
    if (status == 0 && f->bad) {
        size_t i;
        json_t *r;
        json_array_foreach(rows, i, r)
        {
            assert_columns(r);
            if (strncmp(jstr(r, "id"), f->bad, strlen(f->bad)) == 0)
                status = -EINVAL;
        }
    }
    if (status == 0 && n == 1 && f->singles_eio > 0) {
        f->singles_eio--;
        status = -EIO;
    }
    if (status == -EINVAL)
        f->einval++;
    else if (status < 0)
        f->failed++;
    sink_call *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->f = f;
    c->done = done;
    c->token = token;
    c->status = status;
    c->rows = rows;
    uv_timer_init(f->loop, &c->t);
    c->t.data = c;
    uv_timer_start(&c->t, sink_call_fire, f->delay_ms, 0);
    f->pending++;
    return 0;
}

/* ------------------------------------------------------------ the loop */

typedef struct env {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(UV_RUN_ONCE) returning, to check conditions */
    char dir[64];    /* the spool */
    fake sink;
    ledger *l;
    /* ids appended, in order */
    char **ids;
    size_t nids;
    int appended_enospc; /* ledger_append said -ENOSPC */
} env;

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

/* On the heap: a failed assertion leaves the test by longjmp with writes
 * of the thread pool still pointing into it; leaked then, never reused. */
static env *env_new(void)
{
    env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, tick_cb, 2, 2);
    mkspool(e->dir, sizeof(e->dir));
    e->sink.loop = &e->loop;
    return e;
}

static ledger_options opts_of(env *e)
{
    ledger_options o;
    memset(&o, 0, sizeof(o));
    o.spool_dir = e->dir;
    o.instance = "inst-\"1\"";
    o.spool_interval_ms = 2;
    o.ship_interval_ms = 10;
    o.retry_ms = 30;
    return o;
}

static ledger *env_ledger(env *e, const ledger_options *o, bool db)
{
    char err[512] = "";
    ledger *l = ledger_new(&e->loop, o, db ? fake_sink : NULL, &e->sink, err, sizeof(err));
    if (!l)
        fail_msg("ledger_new: %s", err);
    return l;
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
    (void)e;
    (void)arg;
    return false;
}

static void env_sleep(env *e, uint64_t ms)
{
    env_run_until(e, pred_never, NULL, ms);
}

/* Closes the ledger (if any), runs the loop dry, frees it. */
static void env_close_ledger(env *e)
{
    if (!e->l)
        return;
    ledger_close(e->l);
    /* without the tick the loop runs until every write, read and sink
     * answer of the ledger is over */
    uv_timer_stop(&e->tick);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(e->sink.pending, 0);
    uv_timer_start(&e->tick, tick_cb, 2, 2);
    ledger_free(e->l);
    e->l = NULL;
}

static void env_close(env *e)
{
    env_close_ledger(e);
    uv_close((uv_handle_t *)&e->tick, NULL);
    assert_int_equal(uv_run(&e->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    fake_free(&e->sink);
    free_names(e->ids, e->nids);
    rmspool(e->dir);
    free(e);
}

static ledger_stats stats(env *e)
{
    ledger_stats st;
    ledger_stats_get(e->l, &st);
    return st;
}

/* Appends row i ("<prefix><i>") and remembers its id. */
static int env_append(env *e, const char *prefix, size_t i)
{
    char id[64];
    snprintf(id, sizeof(id), "%s%zu", prefix, i);
    ledger_row r = (i % 2) ? row_full(id) : row_min(id);
    r.prompt_tokens = (int64_t)i;
    int rc = ledger_append(e->l, &r);
    if (rc == -ENOSPC)
        e->appended_enospc++;
    else
        assert_int_equal(rc, 0);
    e->ids = realloc(e->ids, (e->nids + 1) * sizeof(*e->ids));
    e->ids[e->nids++] = strdup(id);
    return rc;
}

static bool pred_durable(env *e, void *arg)
{
    return stats(e).rows_durable >= *(uint64_t *)arg;
}

/* Every appended id reached the sink at least once. */
static bool pred_all_arrived(env *e, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < e->nids; i++)
        if (!fake_count(&e->sink, e->ids[i]))
            return false;
    return true;
}

/* Everything arrived and nothing is left in the spool or in flight. */
static bool pred_settled(env *e, void *arg)
{
    ledger_stats st = stats(e);
    return pred_all_arrived(e, arg) && st.backlog_bytes == 0 && !st.replaying && !e->sink.pending;
}

/* What is wrong when a wait timed out. */
static void env_dump(env *e)
{
    ledger_stats st = stats(e);
    size_t missing = 0;
    for (size_t i = 0; i < e->nids; i++)
        if (!fake_count(&e->sink, e->ids[i])) {
            if (missing++ < 5)
                fprintf(stderr, "missing: %s\n", e->ids[i]);
        }
    fprintf(stderr,
            "rows %" PRIu64 " durable %" PRIu64 " shipped %" PRIu64 " failed %" PRIu64
            " replayed %" PRIu64 " backlog %" PRIu64 " segments %u replaying %d accepting %d; "
            "missing %zu of %zu; sink calls %d pending %d files %zu\n",
            st.rows, st.rows_durable, st.rows_shipped, st.batches_failed, st.replayed_rows,
            st.backlog_bytes, st.segments, st.replaying, st.accepting, missing, e->nids,
            e->sink.calls, e->sink.pending, count_segment_files(e->dir));
}

static void env_settle(env *e, uint64_t ms)
{
    if (!env_run_until(e, pred_settled, NULL, ms)) {
        env_dump(e);
        fail_msg("the ledger did not settle within %" PRIu64 " ms", ms);
    }
}

/* The sink holds exactly the appended ids, each at least once (and
 * exactly once when once). */
static void assert_delivered(env *e, bool once)
{
    for (size_t i = 0; i < e->nids; i++) {
        int c = fake_count(&e->sink, e->ids[i]);
        if (c < 1 || (once && c != 1))
            fail_msg("row %s arrived %d times", e->ids[i], c);
    }
    for (size_t i = 0; i < e->sink.nids; i++) {
        bool known = false;
        for (size_t j = 0; j < e->nids && !known; j++)
            known = strcmp(e->sink.ids[i], e->ids[j]) == 0;
        if (!known)
            fail_msg("the sink got a row never appended: %s", e->sink.ids[i]);
    }
    assert_int_equal(e->sink.nids, e->nids);
}

/* ------------------------------------------------------------ appender */

/* Appends `per` rows every `every_ms` until `total`. */
typedef struct appender {
    uv_timer_t t;
    env *e;
    const char *prefix;
    size_t next, total, per;
} appender;

static void appender_cb(uv_timer_t *t)
{
    appender *a = t->data;
    for (size_t k = 0; k < a->per && a->next < a->total; k++)
        env_append(a->e, a->prefix, a->next++);
    if (a->next >= a->total)
        uv_timer_stop(t);
}

static void appender_start(appender *a, env *e, const char *prefix, size_t total, size_t per,
                           uint64_t every_ms)
{
    memset(a, 0, sizeof(*a));
    a->e = e;
    a->prefix = prefix;
    a->total = total;
    a->per = per;
    uv_timer_init(&e->loop, &a->t);
    a->t.data = a;
    uv_timer_start(&a->t, appender_cb, every_ms, every_ms);
}

static bool pred_appended(env *e, void *arg)
{
    (void)e;
    appender *a = arg;
    return a->next >= a->total;
}

static bool pred_appended_at_least(env *e, void *arg)
{
    (void)e;
    void **v = arg;
    return ((appender *)v[0])->next >= *(size_t *)v[1];
}

/* ------------------------------------------------------------ tests: rows */

static void test_row_json_fields(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1 << 16);
    ledger_row r = row_full("call-1");
    assert_int_equal(ledger_row_json(&r, "inst-a", &b), 0);
    assert_null(memchr(b.data, '\n', b.len));
    json_t *o = parse_obj(b.data, b.len);
    assert_columns(o);
    assert_string_equal(jstr(o, "id"), "call-1");
    assert_string_equal(jstr(o, "request_id"), "req-1");
    assert_string_equal(jstr(o, "at"), "2023-11-14T22:13:20.123456Z");
    assert_string_equal(jstr(o, "instance"), "inst-a");
    assert_string_equal(jstr(o, "key_id"), "11111111-1111-1111-1111-111111111111");
    assert_string_equal(jstr(o, "key_alias"), "alias");
    assert_string_equal(jstr(o, "team_id"), "22222222-2222-2222-2222-222222222222");
    assert_string_equal(jstr(o, "org_id"), "33333333-3333-3333-3333-333333333333");
    assert_string_equal(jstr(o, "job_id"), "44444444-4444-4444-4444-444444444444");
    assert_string_equal(jstr(o, "endpoint"), "messages");
    assert_string_equal(jstr(o, "requested_model"), "mock-1");
    assert_string_equal(jstr(o, "provider"), "mock");
    assert_string_equal(jstr(o, "provider_model"), "mock-model");
    assert_true(json_is_true(json_object_get(o, "stream")));
    assert_int_equal(jint(o, "status"), 200);
    assert_int_equal(jint(o, "upstream_status"), 201);
    assert_int_equal(jint(o, "prompt_tokens"), 11);
    assert_int_equal(jint(o, "completion_tokens"), 22);
    assert_int_equal(jint(o, "cached_tokens"), 3);
    assert_int_equal(jint(o, "cache_write_tokens"), 4);
    assert_string_equal(jstr(o, "usage_source"), "provider");
    assert_int_equal(jint(o, "cost_nano"), 1234);
    assert_int_equal(jint(o, "price_nano"), 0); /* BYOK: 0, not unknown */
    assert_string_equal(jstr(o, "credential"), "team_byok");
    assert_int_equal(jint(o, "latency_us"), 5555);
    assert_int_equal(jint(o, "ttft_us"), 0); /* a first byte at once is not "none" */
    assert_string_equal(jstr(o, "error"), "upstream said \"no\"");
    assert_int_equal(jint(o, "attempts"), 3);
    json_decref(o);

    /* absent fields: SQL NULL where the column is nullable, the documented
     * defaults where it is not */
    buf_reset(&b);
    r = row_min("call-2");
    assert_int_equal(ledger_row_json(&r, "inst-a", &b), 0);
    o = parse_obj(b.data, b.len);
    assert_columns(o);
    assert_string_equal(jstr(o, "id"), "call-2");
    assert_string_equal(jstr(o, "request_id"), "");
    assert_string_equal(jstr(o, "at"), "2023-11-14T22:13:20.000001Z");
    assert_jnull(o, "key_id");
    assert_string_equal(jstr(o, "key_alias"), "");
    assert_jnull(o, "team_id");
    assert_jnull(o, "org_id");
    assert_jnull(o, "job_id");
    assert_string_equal(jstr(o, "endpoint"), "chat");
    assert_string_equal(jstr(o, "requested_model"), "");
    assert_string_equal(jstr(o, "provider"), "");
    assert_string_equal(jstr(o, "provider_model"), "");
    assert_true(json_is_false(json_object_get(o, "stream")));
    assert_jnull(o, "upstream_status");
    assert_int_equal(jint(o, "prompt_tokens"), 0);
    assert_string_equal(jstr(o, "usage_source"), "none");
    assert_jnull(o, "cost_nano");
    assert_jnull(o, "price_nano");
    assert_string_equal(jstr(o, "credential"), "config");
    assert_jnull(o, "ttft_us");
    assert_jnull(o, "error");
    json_decref(o);
    buf_free(&b);
}

static void test_row_json_escaping(void **state)
{
    (void)state;
    static const char odd[] = "q\"b\\s/n\nr\rt\tc\x01\x1f del\x7f \xc3\xa9 \xe2\x80\xa8 end";
    buf b;
    buf_init(&b, 1 << 16);
    ledger_row r = row_full("id\"\\\n");
    r.key_alias = odd;
    r.requested_model = odd;
    r.provider_model = "\x7f";
    r.error = odd;
    r.request_id = "";
    assert_int_equal(ledger_row_json(&r, "in\"st\n", &b), 0);
    /* one line: a raw newline would split the row in the spool */
    assert_null(memchr(b.data, '\n', b.len));
    assert_null(memchr(b.data, '\r', b.len));
    for (size_t i = 0; i < b.len; i++)
        assert_true((unsigned char)b.data[i] >= 0x20);
    json_t *o = parse_obj(b.data, b.len);
    assert_columns(o);
    assert_string_equal(jstr(o, "id"), "id\"\\\n");
    assert_string_equal(jstr(o, "instance"), "in\"st\n");
    assert_string_equal(jstr(o, "key_alias"), odd);
    assert_string_equal(jstr(o, "requested_model"), odd);
    assert_string_equal(jstr(o, "provider_model"), "\x7f");
    assert_string_equal(jstr(o, "error"), odd);
    assert_string_equal(jstr(o, "request_id"), "");
    json_decref(o);

    /* a buffer too small: an error, nothing half-written counts */
    buf small;
    buf_init(&small, 32);
    r = row_full("x");
    assert_int_equal(ledger_row_json(&r, "i", &small), -E2BIG);
    buf_free(&small);
    buf_free(&b);
}

/* ------------------------------------------------------------ tests: shipping */

/* Rows are written as JSON lines (fsync'd before they count as durable),
 * shipped in statements of at most batch_rows rows, each exactly once,
 * and a closed segment goes once the database has every row of it. */
static void test_durable_then_shipped_in_batches(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.delay_ms = 400; /* the first shipment is slow: look at the disk meanwhile */
    ledger_options o = opts_of(e);
    o.batch_rows = 7;
    o.segment_bytes = 2000; /* a few rows per segment */
    e->l = env_ledger(e, &o, true);
    ledger_stats st = stats(e);
    assert_int_equal(st.segments, 0);
    assert_true(st.accepting);

    /* 50 rows within one spool interval: one write, 50 rows */
    for (size_t i = 0; i < 50; i++)
        env_append(e, "a", i);
    assert_int_equal(stats(e).rows, 50);
    uint64_t want = 50;
    assert_true(env_run_until(e, pred_durable, &want, 2000));
    st = stats(e);
    assert_int_equal(st.rows_durable, 50);
    assert_true(st.backlog_bytes > 0);

    /* on disk, in order, as ledger_row_json wrote them: one segment, past
     * segment_bytes already (closed, kept until the database has it) */
    char first[4200];
    snprintf(first, sizeof(first), "%s/0000000000000001.jsonl", e->dir);
    assert_int_equal(count_segment_files(e->dir), 1);
    assert_int_equal(access(first, F_OK), 0);
    lines ls;
    read_segments(e->dir, &ls);
    assert_int_equal(ls.n, 50);
    assert_int_equal(ls.torn, 0);
    for (size_t i = 0; i < ls.n; i++) {
        buf want_line;
        buf_init(&want_line, 1 << 16);
        ledger_row r = (i % 2) ? row_full(e->ids[i]) : row_min(e->ids[i]);
        r.prompt_tokens = (int64_t)i;
        assert_int_equal(ledger_row_json(&r, "inst-\"1\"", &want_line), 0);
        assert_string_equal(ls.v[i], want_line.data);
        buf_free(&want_line);
        json_t *obj = parse_obj(ls.v[i], strlen(ls.v[i]));
        assert_string_equal(jstr(obj, "instance"), "inst-\"1\"");
        json_decref(obj);
    }
    free_lines(&ls);

    /* shipped once the slow answers came (no second send: nothing failed) */
    e->sink.delay_ms = 1;
    env_settle(e, 5000);
    assert_int_equal(e->sink.nids, 50);
    assert_int_equal(stats(e).rows_shipped, 50);

    /* more rows, a few per spool interval: the segment rotates */
    appender a;
    appender_start(&a, e, "b", 60, 3, 3);
    assert_true(env_run_until(e, pred_appended, &a, 5000));
    uv_close((uv_handle_t *)&a.t, NULL);
    env_settle(e, 5000);

    assert_delivered(e, true);
    if (e->sink.max_rows > o.batch_rows)
        fail_msg("a shipment of %zu rows (batch_rows %u)", e->sink.max_rows, o.batch_rows);
    assert_int_equal(e->sink.failed + e->sink.einval + e->sink.refused, 0);
    st = stats(e);
    assert_int_equal(st.rows, 110);
    assert_int_equal(st.rows_durable, 110);
    assert_int_equal(st.rows_shipped, 110);
    assert_int_equal(st.batches_failed, 0);
    assert_int_equal(st.replayed_rows, 0);
    assert_int_equal(st.backlog_bytes, 0);
    assert_true(st.oldest_backlog_s == 0);
    /* rotated: the closed segments went, at most the open one is left */
    assert_int_not_equal(access(first, F_OK), 0);
    assert_true(st.segments <= 1);
    assert_int_equal(count_segment_files(e->dir), st.segments);
    env_close(e);
}

/* The database away for a while, then back: nothing lost, the spool
 * emptied afterwards. refuse_now: the sink refuses at once (<0 return)
 * instead of failing later. */
static void outage(bool refuse_now)
{
    env *e = env_new();
    e->sink.delay_ms = 2;
    ledger_options o = opts_of(e);
    o.batch_rows = 20;
    o.segment_bytes = 8000;
    e->l = env_ledger(e, &o, true);

    appender a;
    appender_start(&a, e, "o", 600, 4, 2);
    size_t mark = 100;
    void *arg[2] = {&a, &mark};
    assert_true(env_run_until(e, pred_appended_at_least, arg, 5000));
    if (refuse_now)
        e->sink.refuse_now = true;
    else
        e->sink.fail = -EIO;
    mark = 400;
    assert_true(env_run_until(e, pred_appended_at_least, arg, 5000));
    /* down: rows keep going to disk, nothing ships */
    ledger_stats st = stats(e);
    assert_true(st.batches_failed >= 1);
    assert_true(st.backlog_bytes > 0);
    assert_true(st.accepting);
    assert_true(st.oldest_backlog_s > 0);
    size_t arrived_while_down = e->sink.nids;
    env_sleep(e, 100);
    assert_int_equal(e->sink.nids, arrived_while_down);
    assert_true(stats(e).rows_durable > 350);

    e->sink.refuse_now = false;
    e->sink.fail = 0;
    assert_true(env_run_until(e, pred_appended, &a, 5000));
    uv_close((uv_handle_t *)&a.t, NULL);
    env_settle(e, 10000);
    env_sleep(e, 50);

    assert_delivered(e, false);
    st = stats(e);
    assert_int_equal(st.rows, 600);
    assert_int_equal(st.rows_durable, 600);
    assert_int_equal(st.rows_shipped, e->sink.rows_acked);
    assert_true(st.rows_shipped >= 600);
    assert_true(st.replayed_rows > 0);
    assert_true(st.replayed_rows <= st.rows_shipped);
    assert_true(st.batches_failed >= 1);
    if (refuse_now)
        assert_true(e->sink.refused >= 1);
    else
        assert_int_equal(st.batches_failed, e->sink.failed);
    assert_int_equal(st.backlog_bytes, 0);
    assert_false(st.replaying);
    assert_true(st.accepting);
    assert_true(st.segments <= 1);
    assert_int_equal(count_segment_files(e->dir), st.segments);
    assert_true(e->sink.max_rows <= o.batch_rows);
    env_close(e);
}

static void test_outage_eio(void **state)
{
    (void)state;
    outage(false);
}

static void test_outage_refused_at_once(void **state)
{
    (void)state;
    outage(true);
}

/* ledger_kick retries at once instead of after retry_ms. */
static void test_kick(void **state)
{
    (void)state;
    env *e = env_new();
    ledger_options o = opts_of(e);
    o.retry_ms = 60000;
    e->l = env_ledger(e, &o, true);
    e->sink.fail = -EIO;
    for (size_t i = 0; i < 5; i++)
        env_append(e, "k", i);
    assert_false(env_run_until(e, pred_settled, NULL, 300));
    assert_int_equal(e->sink.nids, 0);
    assert_true(stats(e).batches_failed >= 1);
    e->sink.fail = 0;
    env_sleep(e, 100);
    assert_int_equal(e->sink.nids, 0); /* still waiting for the retry */
    ledger_kick(e->l);
    env_settle(e, 2000);
    assert_delivered(e, false);
    env_close(e);
}

/* ------------------------------------------------------------ tests: data errors */

static size_t rejected_ids(const char *dir, char ***out)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/rejected.jsonl", dir);
    *out = NULL;
    char *data = slurp(p, NULL);
    if (!data)
        return 0;
    size_t n = 0;
    for (char *s = data, *nl; *s; s = nl + 1) {
        nl = strchr(s, '\n');
        assert_non_null(nl); /* whole lines */
        *out = realloc(*out, (n + 1) * sizeof(**out));
        json_error_t je;
        json_t *o = json_loadb(s, (size_t)(nl - s), 0, &je);
        (*out)[n++] = o && json_is_object(o) && json_is_string(json_object_get(o, "id"))
                          ? strdup(json_string_value(json_object_get(o, "id")))
                          : strndup(s, (size_t)(nl - s));
        json_decref(o);
    }
    free(data);
    return n;
}

static bool pred_good_arrived(env *e, void *arg)
{
    const char *bad = arg;
    for (size_t i = 0; i < e->nids; i++)
        if (strncmp(e->ids[i], bad, strlen(bad)) != 0 && !fake_count(&e->sink, e->ids[i]))
            return false;
    return !e->sink.pending && stats(e).backlog_bytes == 0;
}

/* A shipment the database refuses for its data: the rows go again one by
 * one; the refused row ends in rejected.jsonl, the others arrive. */
static void data_error(int singles_eio)
{
    env *e = env_new();
    e->sink.delay_ms = 1;
    e->sink.bad = "bad";
    e->sink.singles_eio = singles_eio;
    ledger_options o = opts_of(e);
    o.batch_rows = 10;
    e->l = env_ledger(e, &o, true);
    for (size_t i = 0; i < 25; i++)
        env_append(e, i == 13 ? "bad" : "g", i);
    assert_true(env_run_until(e, pred_good_arrived, (void *)"bad", 5000));
    env_sleep(e, 100);

    assert_int_equal(fake_count(&e->sink, "bad13"), 0);
    for (size_t i = 0; i < e->nids; i++)
        if (strcmp(e->ids[i], "bad13") != 0 && fake_count(&e->sink, e->ids[i]) < 1)
            fail_msg("row %s did not arrive", e->ids[i]);
    assert_int_equal(e->sink.nids, 24);
    char **rej;
    size_t nrej = rejected_ids(e->dir, &rej);
    assert_int_equal(nrej, 1);
    assert_string_equal(rej[0], "bad13");
    free_names(rej, nrej);
    ledger_stats st = stats(e);
    assert_true(st.batches_failed >= 1);
    assert_int_equal(st.backlog_bytes, 0);
    assert_true(e->sink.einval >= 2); /* the batch, then the row alone */
    env_close(e);
}

static void test_data_error_rows_one_by_one(void **state)
{
    (void)state;
    data_error(0);
}

/* The database goes away while the rows of a refused batch go one by one:
 * a row that failed for want of the database (not for its data) is not
 * "refused" and must still reach the database. */
static void test_data_error_then_outage(void **state)
{
    (void)state;
    data_error(3);
}

/* ------------------------------------------------------------ tests: replay at start */

static void row_line(const char *id, buf *b)
{
    ledger_row r = row_full(id);
    assert_int_equal(ledger_row_json(&r, "old", b), 0);
    assert_int_equal(buf_append(b, "\n", 1), 0);
}

static void test_leftover_segments_replayed(void **state)
{
    (void)state;
    env *e = env_new();
    char p[4200];
    buf b;
    buf_init(&b, 1 << 20);
    row_line("x1", &b);
    row_line("x2", &b);
    snprintf(p, sizeof(p), "%s/0000000000000001.jsonl", e->dir);
    spit(p, b.data);
    buf_reset(&b);
    row_line("a1", &b);
    assert_int_equal(buf_append_str(&b, "{\"id\":\"corrupt\",\"at\":\n"), 0);
    row_line("a2", &b);
    row_line("a3", &b);
    assert_int_equal(buf_append_str(&b, "{\"id\":\"torn\",\"at\":\"2023-"), 0);
    snprintf(p, sizeof(p), "%s/0000000000000003.jsonl", e->dir);
    spit(p, b.data);
    buf_free(&b);
    /* not segments: left alone */
    snprintf(p, sizeof(p), "%s/notes.txt", e->dir);
    spit(p, "{\"id\":\"nope\"}\n");

    e->sink.delay_ms = 1;
    ledger_options o = opts_of(e);
    e->l = env_ledger(e, &o, true);
    ledger_stats st = stats(e);
    assert_int_equal(st.segments, 2);
    assert_true(st.backlog_bytes > 0);
    /* a row appended meanwhile goes too */
    env_append(e, "n", 0);
    const char *want[] = {"x1", "x2", "a1", "a2", "a3"};
    for (size_t i = 0; i < 5; i++) {
        e->ids = realloc(e->ids, (e->nids + 1) * sizeof(*e->ids));
        e->ids[e->nids++] = strdup(want[i]);
    }
    env_settle(e, 5000);
    env_sleep(e, 50);
    assert_delivered(e, true);
    /* oldest first */
    ssize_t pos[5];
    for (size_t i = 0; i < 5; i++)
        pos[i] = fake_find(&e->sink, want[i]);
    for (size_t i = 1; i < 5; i++)
        assert_true(pos[i - 1] < pos[i]);
    st = stats(e);
    assert_true(st.replayed_rows >= 5);
    assert_int_equal(st.backlog_bytes, 0);
    assert_false(st.replaying);

    char **rej;
    size_t nrej = rejected_ids(e->dir, &rej);
    assert_int_equal(nrej, 1);
    assert_true(strstr(rej[0], "corrupt") != NULL);
    free_names(rej, nrej);
    /* the old segments are gone; the new one has a later number */
    snprintf(p, sizeof(p), "%s/0000000000000001.jsonl", e->dir);
    assert_int_not_equal(access(p, F_OK), 0);
    snprintf(p, sizeof(p), "%s/0000000000000003.jsonl", e->dir);
    assert_int_not_equal(access(p, F_OK), 0);
    size_t nf;
    char **files = segment_files(e->dir, &nf);
    for (size_t i = 0; i < nf; i++)
        assert_true(strcmp(files[i], "0000000000000003.jsonl") > 0);
    free_names(files, nf);
    snprintf(p, sizeof(p), "%s/notes.txt", e->dir);
    assert_int_equal(access(p, F_OK), 0);
    env_close(e);
}

/* A leftover segment replayed against a database that fails at first and
 * then refuses one row for its data: the good rows arrive, the corrupt
 * line and the refused row are each set aside once. */
static void test_leftover_replay_retried(void **state)
{
    (void)state;
    env *e = env_new();
    char p[4200];
    buf b;
    buf_init(&b, 1 << 20);
    for (int i = 0; i < 30; i++) {
        char id[16];
        snprintf(id, sizeof(id), i == 17 ? "bad%d" : "l%d", i);
        row_line(id, &b);
        if (i != 17) {
            e->ids = realloc(e->ids, (e->nids + 1) * sizeof(*e->ids));
            e->ids[e->nids++] = strdup(id);
        }
        if (i == 5)
            assert_int_equal(buf_append_str(&b, "not json at all\n"), 0);
    }
    snprintf(p, sizeof(p), "%s/00000000000000a0.jsonl", e->dir);
    spit(p, b.data);
    buf_free(&b);

    e->sink.delay_ms = 1;
    e->sink.first_eio = 3;
    e->sink.bad = "bad";
    ledger_options o = opts_of(e);
    o.batch_rows = 8;
    e->l = env_ledger(e, &o, true);
    env_settle(e, 5000);
    env_sleep(e, 100);
    assert_delivered(e, false);
    assert_int_equal(fake_count(&e->sink, "bad17"), 0);
    ledger_stats st = stats(e);
    assert_true(st.batches_failed >= 3);
    assert_int_equal(st.backlog_bytes, 0);
    assert_int_equal(count_segment_files(e->dir), st.segments);
    char **rej;
    size_t nrej = rejected_ids(e->dir, &rej);
    size_t corrupt = 0, bad = 0;
    for (size_t i = 0; i < nrej; i++) {
        corrupt += strcmp(rej[i], "not json at all") == 0;
        bad += strcmp(rej[i], "bad17") == 0;
    }
    free_names(rej, nrej);
    if (corrupt != 1 || bad != 1 || nrej != 2)
        fail_msg("rejected.jsonl: %zu lines, the corrupt one %zu times, bad17 %zu times", nrej,
                 corrupt, bad);
    env_close(e);
}

/* A database slower than the traffic: past its bound the queue in memory
 * goes to the spool and is replayed beside the live traffic; nothing is
 * lost and the spool empties. */
static void test_slow_database(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.delay_ms = 40;
    ledger_options o = opts_of(e);
    o.batch_rows = 4;
    o.segment_bytes = 6000;
    e->l = env_ledger(e, &o, true);
    appender a;
    appender_start(&a, e, "s", 500, 10, 2);
    assert_true(env_run_until(e, pred_appended, &a, 5000));
    uv_close((uv_handle_t *)&a.t, NULL);
    e->sink.delay_ms = 1;
    env_settle(e, 20000);
    assert_delivered(e, false);
    ledger_stats st = stats(e);
    assert_true(st.replayed_rows > 0); /* it did spill */
    assert_true(e->sink.max_rows <= o.batch_rows);
    assert_true(st.segments <= 1);
    assert_int_equal(count_segment_files(e->dir), st.segments);
    env_close(e);
}

/* ------------------------------------------------------------ tests: DB-less */

typedef struct scan {
    char **ids;
    size_t n;
    int stop_at; /* return 1 from the callback at this row (-1 never) */
} scan;

static int scan_cb(void *ud, const char *line, size_t len)
{
    scan *s = ud;
    assert_null(memchr(line, '\n', len));
    json_t *o = parse_obj(line, len);
    s->ids = realloc(s->ids, (s->n + 1) * sizeof(*s->ids));
    s->ids[s->n++] = strdup(jstr(o, "id"));
    json_decref(o);
    return (int)s->n == s->stop_at ? 7 : 0;
}

static void test_dbless_spool_is_the_ledger(void **state)
{
    (void)state;
    env *e = env_new();
    ledger_options o = opts_of(e);
    o.segment_bytes = 1500;
    o.spool_max_bytes = 100; /* no backlog without a database: never full */
    e->l = env_ledger(e, &o, false);
    appender a;
    appender_start(&a, e, "d", 40, 2, 3);
    assert_true(env_run_until(e, pred_appended, &a, 5000));
    uv_close((uv_handle_t *)&a.t, NULL);
    uint64_t want = 40;
    assert_true(env_run_until(e, pred_durable, &want, 2000));
    ledger_stats st = stats(e);
    assert_int_equal(st.rows_shipped, 0);
    assert_int_equal(st.backlog_bytes, 0);
    assert_true(st.accepting);
    assert_int_equal(e->appended_enospc, 0);
    assert_true(st.segments > 2);
    assert_int_equal(count_segment_files(e->dir), st.segments);
    env_close_ledger(e);
    /* kept after close */
    size_t nseg = count_segment_files(e->dir);
    assert_int_equal(nseg, st.segments);

    scan s = {.stop_at = -1};
    assert_int_equal(ledger_scan(e->dir, scan_cb, &s), 0);
    assert_int_equal(s.n, 40);
    for (size_t i = 0; i < 40; i++)
        assert_string_equal(s.ids[i], e->ids[i]);
    free_names(s.ids, s.n);

    /* a crash mid-write leaves a torn line at the end: skipped */
    size_t nf;
    char **files = segment_files(e->dir, &nf);
    char p[4200];
    snprintf(p, sizeof(p), "%s/%s", e->dir, files[nf - 1]);
    free_names(files, nf);
    FILE *f = fopen(p, "ab");
    fputs("{\"id\":\"torn\",\"at\":", f);
    fclose(f);
    memset(&s, 0, sizeof(s));
    s.stop_at = -1;
    assert_int_equal(ledger_scan(e->dir, scan_cb, &s), 0);
    assert_int_equal(s.n, 40);
    free_names(s.ids, s.n);

    /* the callback's error stops the scan and is returned */
    memset(&s, 0, sizeof(s));
    s.stop_at = 5;
    assert_int_equal(ledger_scan(e->dir, scan_cb, &s), 7);
    assert_int_equal(s.n, 5);
    free_names(s.ids, s.n);

    /* a second run on the same spool keeps the old segments (no replay)
     * and adds rows after them */
    e->l = env_ledger(e, &o, false);
    for (size_t i = 40; i < 45; i++)
        env_append(e, "d", i);
    want = 5;
    assert_true(env_run_until(e, pred_durable, &want, 2000));
    env_sleep(e, 50);
    st = stats(e);
    assert_int_equal(st.replayed_rows, 0);
    assert_false(st.replaying);
    env_close_ledger(e);
    memset(&s, 0, sizeof(s));
    s.stop_at = -1;
    assert_int_equal(ledger_scan(e->dir, scan_cb, &s), 0);
    assert_int_equal(s.n, 45);
    for (size_t i = 0; i < 45; i++)
        assert_string_equal(s.ids[i], e->ids[i]);
    free_names(s.ids, s.n);

    assert_int_equal(ledger_scan("/nonexistent/tollgate-spool", scan_cb, &s), -ENOENT);
    env_close(e);
}

/* ------------------------------------------------------------ tests: lock, bounds */

static void test_spool_dir_locked(void **state)
{
    (void)state;
    env *e = env_new();
    ledger_options o = opts_of(e);
    e->l = env_ledger(e, &o, true);
    char err[512] = "";
    ledger *two = ledger_new(&e->loop, &o, fake_sink, &e->sink, err, sizeof(err));
    assert_null(two);
    if (!strstr(err, "in use") || !strstr(err, e->dir))
        fail_msg("unexpected message: %s", err);
    two = ledger_new(&e->loop, &o, NULL, NULL, err, sizeof(err));
    assert_null(two);
    env_close_ledger(e);
    /* free again once the first is gone */
    e->l = env_ledger(e, &o, true);
    env_close_ledger(e);

    /* no directory given, or one that cannot be made */
    o.spool_dir = NULL;
    assert_null(ledger_new(&e->loop, &o, NULL, NULL, err, sizeof(err)));
    assert_true(err[0] != '\0');
    o.spool_dir = "/nonexistent/a/b";
    assert_null(ledger_new(&e->loop, &o, NULL, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/a/b"));
    env_close(e);
}

static bool pred_not_accepting(env *e, void *arg)
{
    (void)arg;
    return !ledger_accepting(e->l);
}

static void test_spool_full(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.fail = -EIO;
    e->sink.delay_ms = 1;
    ledger_options o = opts_of(e);
    o.spool_max_bytes = 3000;
    o.retry_ms = 20;
    e->l = env_ledger(e, &o, true);
    size_t i = 0;
    while (ledger_accepting(e->l) && i < 100) {
        assert_int_equal(env_append(e, "f", i++), 0);
        uint64_t want = i;
        assert_true(env_run_until(e, pred_durable, &want, 2000));
    }
    assert_true(i < 100);
    assert_true(env_run_until(e, pred_not_accepting, NULL, 10));
    ledger_stats st = stats(e);
    assert_false(st.accepting);
    assert_true(st.backlog_bytes > o.spool_max_bytes);
    /* over the bound: refused, but kept (it was served) */
    assert_int_equal(env_append(e, "f", i++), -ENOSPC);
    assert_int_equal(e->appended_enospc, 1);
    assert_int_equal(stats(e).rows, i);
    uint64_t want = i;
    assert_true(env_run_until(e, pred_durable, &want, 2000));
    env_sleep(e, 60); /* a few retries, still failing */
    assert_false(ledger_accepting(e->l));

    /* the database back: everything arrives, accepting again */
    e->sink.fail = 0;
    env_settle(e, 5000);
    assert_true(ledger_accepting(e->l));
    assert_delivered(e, false);
    assert_int_equal(env_append(e, "f", i++), 0);
    env_settle(e, 5000);
    env_close(e);
}

/* ------------------------------------------------------------ tests: drain, close */

typedef struct drain_seen {
    int calls;
    size_t arrived;   /* distinct ids at the sink when it ran */
    uint64_t durable; /* rows_durable then */
    unsigned pending; /* sink calls in flight then */
    ledger *l;
    fake *f;
} drain_seen;

static void on_drained(void *ud)
{
    drain_seen *d = ud;
    ledger_stats st;
    ledger_stats_get(d->l, &st);
    d->calls++;
    d->arrived = d->f->nids;
    d->durable = st.rows_durable;
    d->pending = (unsigned)d->f->pending;
}

static bool pred_drained(env *e, void *arg)
{
    (void)e;
    return ((drain_seen *)arg)->calls > 0;
}

static void test_drain_ships_everything(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.delay_ms = 20;
    ledger_options o = opts_of(e);
    o.ship_interval_ms = 60000;  /* only the drain ships */
    o.spool_interval_ms = 60000; /* only the drain writes */
    o.batch_rows = 8;
    e->l = env_ledger(e, &o, true);
    for (size_t i = 0; i < 30; i++)
        env_append(e, "r", i);
    env_sleep(e, 30);
    assert_int_equal(stats(e).rows_durable, 0);
    drain_seen d = {.l = e->l, .f = &e->sink};
    ledger_drain(e->l, on_drained, &d);
    assert_true(env_run_until(e, pred_drained, &d, 5000));
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.arrived, 30);
    assert_int_equal(d.durable, 30);
    assert_int_equal(d.pending, 0);
    assert_delivered(e, true);
    assert_true(e->sink.max_rows <= 8);
    env_sleep(e, 30);
    assert_int_equal(d.calls, 1); /* once */
    env_close(e);
}

/* Draining with the database away: done once the rows are on disk; they
 * stay in the spool and the next start ships them. */
static void test_drain_db_down_then_next_start(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.fail = -EIO;
    e->sink.delay_ms = 1;
    ledger_options o = opts_of(e);
    o.spool_interval_ms = 60000;
    e->l = env_ledger(e, &o, true);
    for (size_t i = 0; i < 12; i++)
        env_append(e, "z", i);
    drain_seen d = {.l = e->l, .f = &e->sink};
    ledger_drain(e->l, on_drained, &d);
    assert_true(env_run_until(e, pred_drained, &d, 5000));
    assert_int_equal(d.durable, 12);
    assert_int_equal(e->sink.nids, 0);
    env_close_ledger(e);
    lines ls;
    read_segments(e->dir, &ls);
    assert_int_equal(ls.n, 12);
    free_lines(&ls);

    e->sink.fail = 0;
    e->l = env_ledger(e, &o, true);
    env_settle(e, 5000);
    assert_delivered(e, false);
    assert_int_equal(stats(e).replayed_rows, 12);
    env_close(e);
}

/* ledger_close with rows still in memory writes them at once; the next
 * ledger on the spool ships them. */
static void close_with_rows(bool db)
{
    env *e = env_new();
    e->sink.delay_ms = 1;
    ledger_options o = opts_of(e);
    o.spool_interval_ms = 60000;
    o.ship_interval_ms = 60000;
    e->l = env_ledger(e, &o, db);
    for (size_t i = 0; i < 9; i++)
        env_append(e, "c", i);
    env_sleep(e, 20);
    assert_int_equal(stats(e).rows_durable, 0);
    ledger_close(e->l);
    /* synchronous: on disk before the loop runs again */
    lines ls;
    read_segments(e->dir, &ls);
    assert_int_equal(ls.n, 9);
    assert_int_equal(ls.torn, 0);
    for (size_t i = 0; i < 9; i++) {
        json_t *obj = parse_obj(ls.v[i], strlen(ls.v[i]));
        assert_string_equal(jstr(obj, "id"), e->ids[i]);
        json_decref(obj);
    }
    free_lines(&ls);
    assert_int_equal(stats(e).rows_durable, 9);
    env_close_ledger(e);
    assert_int_equal(e->sink.nids, 0);

    o.ship_interval_ms = 10;
    e->l = env_ledger(e, &o, true);
    env_settle(e, 5000);
    assert_delivered(e, true);
    assert_int_equal(count_segment_files(e->dir), stats(e).segments);
    env_close(e);
}

static void test_close_writes_rows_in_memory(void **state)
{
    (void)state;
    close_with_rows(true);
}

static void test_close_writes_rows_in_memory_dbless(void **state)
{
    (void)state;
    close_with_rows(false);
}

/* Closed while rows are being written and shipped: nothing is lost, the
 * loop closes cleanly, the next start has the rest. */
static void test_close_under_load(void **state)
{
    (void)state;
    env *e = env_new();
    e->sink.delay_ms = 15;
    ledger_options o = opts_of(e);
    o.batch_rows = 5;
    o.segment_bytes = 3000;
    e->l = env_ledger(e, &o, true);
    appender a;
    appender_start(&a, e, "u", 400, 5, 1);
    size_t mark = 150;
    void *arg[2] = {&a, &mark};
    assert_true(env_run_until(e, pred_appended_at_least, arg, 5000));
    uv_close((uv_handle_t *)&a.t, NULL);
    env_close_ledger(e);
    e->l = env_ledger(e, &o, true);
    e->sink.delay_ms = 1;
    env_settle(e, 5000);
    assert_delivered(e, false);
    env_close(e);
}

int main(void)
{
    log_set_level(LOG_ERROR + (getenv("TG_LEDGER_LOG") ? 3 : 0));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_json_fields),
        cmocka_unit_test(test_row_json_escaping),
        cmocka_unit_test(test_durable_then_shipped_in_batches),
        cmocka_unit_test(test_outage_eio),
        cmocka_unit_test(test_outage_refused_at_once),
        cmocka_unit_test(test_kick),
        cmocka_unit_test(test_data_error_rows_one_by_one),
        cmocka_unit_test(test_data_error_then_outage),
        cmocka_unit_test(test_leftover_segments_replayed),
        cmocka_unit_test(test_leftover_replay_retried),
        cmocka_unit_test(test_slow_database),
        cmocka_unit_test(test_dbless_spool_is_the_ledger),
        cmocka_unit_test(test_spool_dir_locked),
        cmocka_unit_test(test_spool_full),
        cmocka_unit_test(test_drain_ships_everything),
        cmocka_unit_test(test_drain_db_down_then_next_start),
        cmocka_unit_test(test_close_writes_rows_in_memory),
        cmocka_unit_test(test_close_writes_rows_in_memory_dbless),
        cmocka_unit_test(test_close_under_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
