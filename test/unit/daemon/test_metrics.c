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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_and_buckets),
        cmocka_unit_test(test_labels_escaped_and_keys),
        cmocka_unit_test(test_cap_and_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
