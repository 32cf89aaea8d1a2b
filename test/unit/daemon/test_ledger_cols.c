/* test_ledger_cols.c - ledger rows as array literals, and what is left
 * to the JSON statement. (That the database reads both the same way is in
 * test_pg.c, test_ledger_cols_match_json.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "billing/ledger.h"
#include "daemon/ledger_cols.h"

static int col_index(const char *name)
{
    for (int i = 0; i < LEDGER_NCOLS; i++)
        if (strcmp(ledger_col_names[i], name) == 0)
            return i;
    fail_msg("no column %s", name);
    return -1;
}

static const char *col(const ledger_cols *c, const char *name)
{
    return c->col[col_index(name)].data;
}

/* Rows written by the ledger itself, the common case. */
static void test_rows_of_the_ledger(void **state)
{
    (void)state;
    ledger_row r = {
        .id = "0123456789abcdef0123456789abcdef",
        .request_id = "req \"1\" \\ {a,b}",
        .at_us = 1764000000123456,
        .key_id = "11c43a96-8b3c-4f9a-a4bf-aceb48af367c",
        .key_alias = "NULL",
        .team_id = "3f98fc94-b548-404e-8b30-0a01f0c40ba2",
        .org_id = "6ea28ceb-596a-4d20-8a9d-cf64cca77113",
        .requested_model = "gpt-4o-mini",
        .provider = "openai",
        .provider_model = "gpt-4o-mini-2024-07-18",
        .status = 200,
        .upstream_status = 200,
        .prompt_tokens = 12,
        .completion_tokens = 16,
        .usage_source = "provider",
        .cost_nano = 1234,
        .price_nano = -1,
        .latency_us = 321,
        .ttft_us = -1,
        .attempts = 1,
    };
    buf j;
    buf_init(&j, 1 << 20);
    assert_int_equal(buf_append_str(&j, "["), 0);
    assert_int_equal(ledger_row_json(&r, "gw-1", &j), 0);
    assert_int_equal(buf_append_str(&j, ","), 0);
    r.id = "ffffffffffffffffffffffffffffffff";
    r.request_id = "";
    r.key_id = NULL;
    r.key_alias = "ünï ✓\n";
    r.stream = true;
    r.status = 502;
    r.upstream_status = 0;
    r.error = "upstream: connection refused";
    r.ttft_us = 9;
    r.credit_leased = true;
    assert_int_equal(ledger_row_json(&r, "gw-1", &j), 0);
    assert_int_equal(buf_append_str(&j, "]"), 0);

    ledger_cols c;
    ledger_cols_init(&c);
    assert_int_equal(ledger_cols_fill(&c, j.data, j.len), 0);
    assert_int_equal(c.rows, 2);
    assert_string_equal(col(&c, "id"),
                        "{\"0123456789abcdef0123456789abcdef\","
                        "\"ffffffffffffffffffffffffffffffff\"}");
    /* quotes and backslashes escaped, braces and commas inside quotes */
    assert_string_equal(col(&c, "request_id"), "{\"req \\\"1\\\" \\\\ {a,b}\",\"\"}");
    assert_string_equal(col(&c, "at"),
                        "{\"2025-11-24T16:00:00.123456Z\",\"2025-11-24T16:00:00.123456Z\"}");
    /* the text NULL stays text (quoted); JSON escapes decoded */
    assert_string_equal(col(&c, "key_alias"), "{\"NULL\",\"ünï ✓\n\"}");
    assert_string_equal(col(&c, "key_id"), "{\"11c43a96-8b3c-4f9a-a4bf-aceb48af367c\",NULL}");
    assert_string_equal(col(&c, "job_id"), "{NULL,NULL}");
    assert_string_equal(col(&c, "stream"), "{false,true}");
    assert_string_equal(col(&c, "status"), "{200,502}");
    assert_string_equal(col(&c, "upstream_status"), "{200,NULL}");
    assert_string_equal(col(&c, "price_nano"), "{NULL,NULL}");
    assert_string_equal(col(&c, "ttft_us"), "{NULL,9}");
    assert_string_equal(col(&c, "error"), "{NULL,\"upstream: connection refused\"}");
    assert_string_equal(col(&c, "attempts"), "{1,1}");
    assert_string_equal(col(&c, "endpoint"), "{\"chat\",\"chat\"}");
    assert_string_equal(col(&c, "credit_leased"), "{false,true}");

    /* the same buffers serve the next batch */
    const char one[] = "[{\"id\":\"x\",\"at\":\"2025-01-01T00:00:00Z\"}]";
    assert_int_equal(ledger_cols_fill(&c, one, strlen(one)), 0);
    assert_int_equal(c.rows, 1);
    assert_string_equal(col(&c, "id"), "{\"x\"}");
    assert_string_equal(col(&c, "request_id"), "{NULL}");
    ledger_cols_free(&c);
    buf_free(&j);
}

/* jsonb_to_recordset's meaning: absent and null members are NULL, other
 * members ignored, any member order. */
static void test_absent_other_and_reordered(void **state)
{
    (void)state;
    const char rows[] = "[{\"status\":200,\"id\":\"a\",\"extra\":{\"x\":[1,2]},\"error\":null},"
                        "{\"id\":\"b\",\"status\":-1,\"at\":\"t\"},"
                        "{\"error\":\"e\\u0041\\ud83d\\ude00\",\"id\":\"c\"}]";
    ledger_cols c;
    ledger_cols_init(&c);
    assert_int_equal(ledger_cols_fill(&c, rows, strlen(rows)), 0);
    assert_int_equal(c.rows, 3);
    assert_string_equal(col(&c, "id"), "{\"a\",\"b\",\"c\"}");
    assert_string_equal(col(&c, "status"), "{200,-1,NULL}");
    assert_string_equal(col(&c, "at"), "{NULL,\"t\",NULL}");
    assert_string_equal(col(&c, "error"), "{NULL,NULL,\"eA\xf0\x9f\x98\x80\"}");
    assert_string_equal(col(&c, "latency_us"), "{NULL,NULL,NULL}");
    ledger_cols_free(&c);
}

/* What the arrays cannot carry exactly is left to the JSON statement. */
static void test_left_to_json(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "[{\"id\":\"a\\u0000b\"}]",            /* NUL: no place in a text parameter */
        "[{\"id\":\"a\",\"latency_us\":1.5}]", /* not an integer */
        "[{\"id\":\"a\",\"latency_us\":1e3}]",
        "[{\"id\":\"a\",\"id\":\"b\"}]",           /* a member twice (jsonb keeps the last) */
        "[{\"id\":\"a\",\"status\":{\"x\":1}}]",   /* a container as a value */
        "[{\"id\":\"a\",\"status\":[200]}]",
        "[{\"id\":\"a\"},7]",                      /* an element that is not an object */
        "[{\"id\":\"a\"}",                         /* not JSON */
        "{\"id\":\"a\"}",                          /* not an array */
        "[{\"id\":\"a\",\"latency_us\":99999999999999999999}]", /* beyond bigint */
    };
    ledger_cols c;
    ledger_cols_init(&c);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = ledger_cols_fill(&c, bad[i], strlen(bad[i]));
        if (rc != -EINVAL)
            fail_msg("%s: %d, want -EINVAL", bad[i], rc);
    }
    /* and a good batch after a refused one starts clean */
    const char ok[] = "[{\"id\":\"a\"}]";
    assert_int_equal(ledger_cols_fill(&c, ok, strlen(ok)), 0);
    assert_string_equal(col(&c, "id"), "{\"a\"}");
    assert_int_equal(c.rows, 1);
    ledger_cols_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows_of_the_ledger),
        cmocka_unit_test(test_absent_other_and_reordered),
        cmocka_unit_test(test_left_to_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
