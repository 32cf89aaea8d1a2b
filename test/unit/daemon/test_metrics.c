/* test_metrics.c - the request counters and histograms of GET /metrics. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/metrics.h"

static char *render(const metrics *m)
{
    buf b;
    buf_init(&b, 64u << 20);
    assert_int_equal(metrics_render(m, &b), 0);
    assert_int_equal(buf_append(&b, "", 1), 0);
    char *s = strdup(b.data);
    buf_free(&b);
    return s;
}

/* The text has this exact line. */
static void has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return;
    fail_msg("no line \"%s\" in:\n%s", line, text);
}

static metrics_call call(const char *alias, int status, uint64_t dur_ns)
{
    metrics_call c = {
        .alias = alias,
        .provider = alias ? "openai" : NULL,
        .route = alias ? "openai/gpt-4o" : NULL,
        .status = status,
        .duration_ns = dur_ns,
        .cost_nano = -1,
        .price_nano = -1,
        .counted_prompt = -1,
        .reported_prompt = -1,
        .counted_completion = -1,
        .reported_completion = -1,
    };
    return c;
}

static void test_counts_and_buckets(void **state)
{
    (void)state;
    metrics *m = metrics_new(false);
    assert_non_null(m);
    metrics_call c = call("chat", 200, 7000); /* 7 us: the first bucket */
    c.upstream_ns = 2000000000ull;            /* 2 s */
    c.ttft_ns = 300000;                       /* 300 us */
    c.overhead_ns = 40000;                    /* 40 us */
    c.input = 10;
    c.output = 20;
    c.cached = 4;
    c.cost_nano = 1500000000; /* 1.5 USD */
    c.price_nano = 1800000001;
    c.counted_completion = 19;
    c.reported_completion = 20;
    metrics_request(m, &c);
    c.duration_ns = 900ull * 1000000000; /* 15 minutes: +Inf */
    c.ttft_ns = 0;                        /* none: not observed */
    metrics_request(m, &c);
    metrics_call e = call("chat", 429, 1000000);
    metrics_request(m, &e);
    metrics_call a = call(NULL, 401, 1000);
    metrics_request(m, &a);
    metrics_refused(m, METRICS_REFUSED_AUTH);
    metrics_refused(m, METRICS_REFUSED_RATE_LIMIT);
    metrics_refused(m, METRICS_REFUSED_RATE_LIMIT);

    char *t = render(m);
    has_line(t, "tollgate_requests_total{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",status=\"200\"} 2");
    has_line(t, "tollgate_requests_total{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",status=\"429\"} 1");
    has_line(t, "tollgate_requests_total{alias=\"\",provider=\"\",route=\"\",status=\"401\"} 1");
    /* cumulative buckets: 7 us in the first, 1 ms in le=0.001, 15 min only in +Inf */
    has_line(t, "tollgate_request_duration_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"0.00001\"} 1");
    has_line(t, "tollgate_request_duration_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"0.001\"} 2");
    has_line(t, "tollgate_request_duration_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"600\"} 2");
    has_line(t, "tollgate_request_duration_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"+Inf\"} 3");
    has_line(t, "tollgate_request_duration_seconds_count{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\"} 3");
    has_line(t, "tollgate_time_to_first_token_seconds_count{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\"} 1");
    has_line(t, "tollgate_time_to_first_token_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"0.00025\"} 0");
    has_line(t, "tollgate_time_to_first_token_seconds_bucket{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\",le=\"0.0005\"} 1");
    has_line(t, "tollgate_upstream_duration_seconds_sum{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\"} 4.000000000");
    has_line(t, "tollgate_gateway_overhead_seconds_bucket{le=\"0.00005\"} 2");
    has_line(t, "tollgate_gateway_overhead_seconds_count 2");
    /* tokens and money: exact decimals from nano-USD */
    has_line(t, "tollgate_tokens_total{alias=\"chat\",provider=\"openai\",route=\"openai/gpt-4o\","
                "kind=\"input\"} 20");
    has_line(t, "tollgate_tokens_total{alias=\"chat\",provider=\"openai\",route=\"openai/gpt-4o\","
                "kind=\"cached_read\"} 8");
    has_line(t, "tollgate_cost_usd_total{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\"} 3.000000000");
    has_line(t, "tollgate_price_usd_total{alias=\"chat\",provider=\"openai\","
                "route=\"openai/gpt-4o\"} 3.600000002");
    assert_null(strstr(t, "tollgate_tokens_total{alias=\"\""));
    has_line(t, "tollgate_refusals_total{reason=\"auth\"} 1");
    has_line(t, "tollgate_refusals_total{reason=\"rate_limit\"} 2");
    has_line(t, "tollgate_refusals_total{reason=\"budget\"} 0");
    has_line(t, "tollgate_meter_tokens_total{kind=\"completion\",source=\"counted\"} 38");
    has_line(t, "tollgate_meter_tokens_total{kind=\"completion\",source=\"reported\"} 40");
    has_line(t, "tollgate_meter_tokens_total{kind=\"prompt\",source=\"counted\"} 0");
    /* key labels are off: no per-key family */
    assert_null(strstr(t, "tollgate_key_"));
    free(t);
    metrics_free(m);
}

static void test_labels_escaped_and_keys(void **state)
{
    (void)state;
    metrics *m = metrics_new(true);
    metrics_call c = call("a\"b\\c\nd", 200, 1000);
    c.key = "k1";
    c.team = "team \"x\"";
    c.input = 3;
    c.output = 4;
    c.price_nano = 5;
    metrics_request(m, &c);
    metrics_call n = call("plain", 200, 1000); /* no key: no key series */
    metrics_request(m, &n);
    char *t = render(m);
    has_line(t, "tollgate_requests_total{alias=\"a\\\"b\\\\c\\nd\",provider=\"openai\","
                "route=\"openai/gpt-4o\",status=\"200\"} 1");
    has_line(t, "tollgate_key_requests_total{key=\"k1\",team=\"team \\\"x\\\"\"} 1");
    has_line(t, "tollgate_key_tokens_total{key=\"k1\",team=\"team \\\"x\\\"\",kind=\"output\"} 4");
    has_line(t, "tollgate_key_price_usd_total{key=\"k1\",team=\"team \\\"x\\\"\"} 0.000000005");
    free(t);
    metrics_free(m);
}

static void test_cap_and_merge(void **state)
{
    (void)state;
    metrics *a = metrics_new(false), *b = metrics_new(false);
    char alias[32];
    for (int i = 0; i < METRICS_MAX_SERIES + 50; i++) {
        snprintf(alias, sizeof alias, "alias-%d", i);
        metrics_call c = call(alias, 200, 1000);
        metrics_request(a, &c);
    }
    metrics_call c = call("alias-1", 200, 1000);
    metrics_request(b, &c);
    metrics_request(b, &c);
    metrics_refused(b, METRICS_REFUSED_BUDGET);
    metrics *sum = metrics_new(false);
    assert_int_equal(metrics_merge(sum, a), 0);
    assert_int_equal(metrics_merge(sum, b), 0);
    char *t = render(sum);
    has_line(t, "tollgate_requests_total{alias=\"alias-1\",provider=\"openai\","
                "route=\"openai/gpt-4o\",status=\"200\"} 3");
    /* past the cap: one overflow series holds the rest */
    has_line(t, "tollgate_requests_total{alias=\"_other\",provider=\"\",route=\"\","
                "status=\"0\"} 50");
    assert_null(strstr(t, "alias=\"alias-4100\""));
    has_line(t, "tollgate_refusals_total{reason=\"budget\"} 1");
    free(t);
    metrics_free(a);
    metrics_free(b);
    metrics_free(sum);
}

/* Two loops' scrapes merged into the process's: amounts summed exactly
 * (integers, money to the nano, histogram sums), each family's HELP/TYPE
 * and each series once, a series only one loop has kept, states by their
 * worst/least, and a merge of one text is that text. */
static void test_text_merge(void **state)
{
    (void)state;
    const char *a = "# HELP tollgate_build_info The running version.\n"
                    "# TYPE tollgate_build_info gauge\n"
                    "tollgate_build_info{version=\"1\"} 1\n"
                    "# HELP tollgate_requests_total Requests.\n"
                    "# TYPE tollgate_requests_total counter\n"
                    "tollgate_requests_total{alias=\"a\",status=\"200\"} 3\n"
                    "# HELP tollgate_price_usd_total Price.\n"
                    "# TYPE tollgate_price_usd_total counter\n"
                    "tollgate_price_usd_total{alias=\"a\"} 0.100000000\n"
                    "# HELP tollgate_dur_seconds Dur.\n"
                    "# TYPE tollgate_dur_seconds histogram\n"
                    "tollgate_dur_seconds_bucket{le=\"0.001\"} 2\n"
                    "tollgate_dur_seconds_sum 0.000123456\n"
                    "tollgate_dur_seconds_count 2\n"
                    "# HELP tollgate_route_circuit_state State.\n"
                    "# TYPE tollgate_route_circuit_state gauge\n"
                    "tollgate_route_circuit_state{route=\"r\"} 0\n"
                    "# HELP tollgate_db_listening L.\n"
                    "# TYPE tollgate_db_listening gauge\n"
                    "tollgate_db_listening 1\n"
                    "# HELP tollgate_lease_held_usd Held.\n"
                    "# TYPE tollgate_lease_held_usd gauge\n"
                    "tollgate_lease_held_usd 1.0000000000000001e-05\n";
    const char *b = "# HELP tollgate_build_info The running version.\n"
                    "# TYPE tollgate_build_info gauge\n"
                    "tollgate_build_info{version=\"1\"} 1\n"
                    "# HELP tollgate_requests_total Requests.\n"
                    "# TYPE tollgate_requests_total counter\n"
                    "tollgate_requests_total{alias=\"b\",status=\"200\"} 1\n"
                    "tollgate_requests_total{alias=\"a\",status=\"200\"} 4\n"
                    "# HELP tollgate_price_usd_total Price.\n"
                    "# TYPE tollgate_price_usd_total counter\n"
                    "tollgate_price_usd_total{alias=\"a\"} 0.200000000\n"
                    "# HELP tollgate_dur_seconds Dur.\n"
                    "# TYPE tollgate_dur_seconds histogram\n"
                    "tollgate_dur_seconds_bucket{le=\"0.001\"} 1\n"
                    "tollgate_dur_seconds_sum 0.000000001\n"
                    "tollgate_dur_seconds_count 1\n"
                    "# HELP tollgate_route_circuit_state State.\n"
                    "# TYPE tollgate_route_circuit_state gauge\n"
                    "tollgate_route_circuit_state{route=\"r\"} 2\n"
                    "# HELP tollgate_db_listening L.\n"
                    "# TYPE tollgate_db_listening gauge\n"
                    "tollgate_db_listening 0\n"
                    "# HELP tollgate_lease_held_usd Held.\n"
                    "# TYPE tollgate_lease_held_usd gauge\n"
                    "tollgate_lease_held_usd 2.0000000000000002e-05\n"
                    "# HELP tollgate_ledger_rows_total Rows.\n"
                    "# TYPE tollgate_ledger_rows_total counter\n"
                    "tollgate_ledger_rows_total{stage=\"appended\"} 12345678901234\n";
    buf in[2];
    buf_init(&in[0], 1 << 20);
    buf_init(&in[1], 1 << 20);
    assert_int_equal(buf_append_str(&in[0], a), 0);
    assert_int_equal(buf_append_str(&in[1], b), 0);
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(metrics_text_merge(in, 2, &out), 0);
    assert_int_equal(buf_append(&out, "", 1), 0);
    const char *t = out.data;
    has_line(t, "tollgate_build_info{version=\"1\"} 1");
    has_line(t, "tollgate_requests_total{alias=\"a\",status=\"200\"} 7");
    has_line(t, "tollgate_requests_total{alias=\"b\",status=\"200\"} 1");
    has_line(t, "tollgate_price_usd_total{alias=\"a\"} 0.300000000"); /* not 0.30000000000000004 */
    has_line(t, "tollgate_dur_seconds_bucket{le=\"0.001\"} 3");
    has_line(t, "tollgate_dur_seconds_sum 0.000123457");
    has_line(t, "tollgate_dur_seconds_count 3");
    has_line(t, "tollgate_route_circuit_state{route=\"r\"} 2");
    has_line(t, "tollgate_db_listening 0");
    has_line(t, "tollgate_lease_held_usd 3.0000000000000004e-05");
    has_line(t, "tollgate_ledger_rows_total{stage=\"appended\"} 12345678901234");
    /* each family's head once, its series together right after it */
    const char *h = strstr(t, "# TYPE tollgate_requests_total counter\n");
    assert_non_null(h);
    assert_null(strstr(h + 1, "# TYPE tollgate_requests_total"));
    const char *next = strstr(h, "# HELP tollgate_price_usd_total");
    const char *sb = strstr(h, "tollgate_requests_total{alias=\"b\"");
    assert_non_null(next);
    assert_non_null(sb);
    assert_true(sb < next);
    /* one text: unchanged */
    buf one;
    buf_init(&one, 1 << 20);
    assert_int_equal(metrics_text_merge(in, 1, &one), 0);
    assert_int_equal((int)one.len, (int)strlen(a));
    assert_memory_equal(one.data, a, one.len);
    buf_free(&one);
    buf_free(&out);
    buf_free(&in[0]);
    buf_free(&in[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_buckets),
        cmocka_unit_test(test_labels_escaped_and_keys),
        cmocka_unit_test(test_cap_and_merge),
        cmocka_unit_test(test_text_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
