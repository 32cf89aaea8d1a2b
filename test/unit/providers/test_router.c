/* test_router.c - route plans of a model alias (providers/router.c): the
 * four strategies, eligibility (capabilities, context, local limits), the
 * circuit breaker and why a plan is empty. Pure bookkeeping: every time
 * is passed in (ns, monotonic), so the tests drive the clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "providers/router.h"

#define MS 1000000ull
#define S 1000000000ull
#define T0 (6000 * S) /* an arbitrary start of the monotonic clock, on a minute boundary */
#define COOLDOWN (10 * S)

static const rt_need small = {1000, 1000, 0};

/* A route that serves anything: weight 1, priority 0, price 1/1. */
static rt_route_spec spec(const char *label)
{
    rt_route_spec s;
    memset(&s, 0, sizeof s);
    s.label = label;
    s.weight = 1;
    s.price_in = 1;
    s.price_out = 1;
    s.caps = RT_CAP_TOOLS | RT_CAP_IMAGES | RT_CAP_JSON;
    return s;
}

/* The plan as a string of labels' first letters ("" when empty). */
static const char *plan_str(rt_group *g, const rt_route_spec *specs, const rt_need *need,
                            uint64_t now, rt_why *why)
{
    static char out[RT_MAX_ROUTES + 1];
    uint32_t order[RT_MAX_ROUTES];
    rt_why w = 0;
    size_t n = rt_plan(g, need, now, order, RT_MAX_ROUTES, &w);
    for (size_t i = 0; i < n; i++)
        out[i] = specs[order[i]].label[0];
    out[n] = '\0';
    if (why)
        *why = w;
    return out;
}

/* One attempt on route i, started and ended at now. */
static void attempt(rt_group *g, uint32_t i, rt_outcome o, uint64_t total, uint64_t now)
{
    rt_attempt a;
    rt_attempt_start(g, i, 100, now, &a);
    rt_attempt_end(g, &a, o, 0, total, 100, now);
}

/* A call: plan, then one attempt on the first route ending o after
 * total ns. Returns the route tried, or -1 when the plan was empty. */
static int call(rt_group *g, uint64_t now, rt_outcome o, uint64_t total)
{
    uint32_t order[RT_MAX_ROUTES];
    rt_why why;
    if (rt_plan(g, &small, now, order, RT_MAX_ROUTES, &why) == 0)
        return -1;
    attempt(g, order[0], o, total, now);
    return (int)order[0];
}

static rt_circuit circuit(rt_group *g, uint32_t i, uint64_t now)
{
    rt_route_stats st;
    rt_route_stats_get(g, i, now, &st);
    return st.circuit;
}

/* ------------------------------------------------------------ names, creation */

static void test_strategy_parse(void **state)
{
    (void)state;
    const char *names[] = {"priority", "weighted", "least-latency", "lowest-cost"};
    for (int i = 0; i < 4; i++) {
        rt_strategy s = (rt_strategy)99;
        assert_int_equal(rt_strategy_parse(names[i], &s), 0);
        assert_int_equal(s, i);
        assert_string_equal(rt_strategy_name(s), names[i]);
    }
    const char *bad[] = {"", "Priority", "least_latency", "weighted ", "lowest", "cost"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rt_strategy s = RT_WEIGHTED;
        assert_int_equal(rt_strategy_parse(bad[i], &s), -EINVAL);
        assert_int_equal(s, RT_WEIGHTED); /* untouched */
    }
    assert_string_equal(rt_strategy_name((rt_strategy)7), "?");
    assert_string_equal(rt_circuit_name(RT_CLOSED), "closed");
    assert_string_equal(rt_circuit_name(RT_OPEN), "open");
    assert_string_equal(rt_circuit_name(RT_HALF_OPEN), "half-open");
    assert_string_not_equal(rt_why_name(RT_NONE_FITS), rt_why_name(RT_NONE_OPEN));
    assert_string_not_equal(rt_why_name(RT_NONE_OPEN), rt_why_name(RT_NONE_LIMITED));
}

static void test_group_new_limits(void **state)
{
    (void)state;
    rt_route_spec r[RT_MAX_ROUTES + 1];
    for (int i = 0; i <= RT_MAX_ROUTES; i++)
        r[i] = spec("r");
    assert_null(rt_group_new(r, 0, RT_PRIORITY, NULL));
    assert_null(rt_group_new(r, RT_MAX_ROUTES + 1, RT_PRIORITY, NULL));
    assert_null(rt_group_new(r, 1, (rt_strategy)4, NULL));
    rt_group *g = rt_group_new(r, RT_MAX_ROUTES, RT_PRIORITY, NULL);
    assert_non_null(g);
    uint32_t order[RT_MAX_ROUTES];
    rt_why why;
    assert_int_equal(rt_plan(g, &small, T0, order, RT_MAX_ROUTES, &why), RT_MAX_ROUTES);
    /* a short order[] gets the best entries only */
    assert_int_equal(rt_plan(g, &small, T0, order, 3, &why), 3);
    assert_int_equal(order[0], 0);
    assert_int_equal(order[2], 2);
    rt_group_free(g);
}

/* ------------------------------------------------------------ priority */

static void test_priority_order_and_fallbacks(void **state)
{
    (void)state;
    rt_route_spec r[4] = {spec("a"), spec("b"), spec("c"), spec("d")};
    r[0].priority = 2;
    r[1].priority = 1;
    r[2].priority = 1;
    r[3].priority = -1;
    rt_group *g = rt_group_new(r, 4, RT_PRIORITY, NULL);
    /* lowest first, b before c (config order) */
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "dbca");
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "dbca"); /* stable */
    /* d's circuit opens: the fallbacks move up in the same order */
    for (int i = 0; i < 5; i++)
        attempt(g, 3, RT_FAIL, MS, T0);
    assert_string_equal(plan_str(g, r, &small, T0 + S, NULL), "bca");
    rt_group_free(g);
}

/* ------------------------------------------------------------ weighted */

static void test_weighted_shares(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("a"), spec("b"), spec("c")};
    r[0].weight = 5;
    r[1].weight = 3;
    r[2].weight = 2;
    r[0].priority = 1; /* fallbacks: by priority (b, c), then a */
    rt_group *g = rt_group_new(r, 3, RT_WEIGHTED, NULL);
    int count[3] = {0};
    uint64_t now = T0;
    for (int i = 0; i < 10000; i++, now += MS) {
        const char *p = plan_str(g, r, &small, now, NULL);
        int first = p[0] - 'a';
        count[first]++;
        /* the rest of the plan is the other routes by priority */
        const char *want = first == 0 ? "abc" : first == 1 ? "bca" : "cba";
        assert_string_equal(p, want);
        attempt(g, (uint32_t)first, RT_OK, 100 * MS, now);
    }
    const double share[3] = {0.5, 0.3, 0.2};
    for (int i = 0; i < 3; i++) {
        double want = share[i] * 10000;
        assert_true(count[i] >= want * 0.95 && count[i] <= want * 1.05);
    }
    rt_group_free(g);
}

static void test_weighted_smooth_sequence(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("a"), spec("b"), spec("c")};
    r[0].weight = 5;
    rt_group *g = rt_group_new(r, 3, RT_WEIGHTED, NULL);
    char seq[15];
    for (int i = 0; i < 14; i++)
        seq[i] = plan_str(g, r, &small, T0, NULL)[0];
    seq[14] = '\0';
    /* nginx's sequence for 5:1:1, and it repeats */
    assert_string_equal(seq, "aabacaaaabacaa");
    rt_group_free(g);
}

static void test_weighted_zero_weight_is_fallback_only(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[1].weight = 0;
    rt_group *g = rt_group_new(r, 2, RT_WEIGHTED, NULL);
    for (int i = 0; i < 20; i++)
        assert_string_equal(plan_str(g, r, &small, T0, NULL), "ab");
    for (int i = 0; i < 5; i++)
        attempt(g, 0, RT_FAIL, MS, T0);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "b");
    rt_group_free(g);
    /* no route has a weight: the first is by priority */
    r[0].weight = 0;
    r[0].priority = 1;
    g = rt_group_new(r, 2, RT_WEIGHTED, NULL);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "ba");
    rt_group_free(g);
}

static void test_weighted_open_circuit_shifts_share(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("a"), spec("b"), spec("c")};
    r[0].weight = 5;
    r[1].weight = 3;
    r[2].weight = 2;
    rt_group *g = rt_group_new(r, 3, RT_WEIGHTED, NULL);
    uint64_t now = T0;
    for (int i = 0; i < 5; i++)
        attempt(g, 2, RT_FAIL, MS, now);
    assert_int_equal(circuit(g, 2, now), RT_OPEN);

    /* c's share goes to a and b, 5:3 */
    int count[3] = {0};
    for (int i = 0; i < 800; i++) {
        const char *p = plan_str(g, r, &small, now, NULL);
        assert_null(strchr(p, 'c')); /* not even as a fallback */
        count[p[0] - 'a']++;
        attempt(g, (uint32_t)(p[0] - 'a'), RT_OK, 100 * MS, now);
    }
    assert_int_equal(count[2], 0);
    assert_true(count[0] >= 475 && count[0] <= 525);
    assert_true(count[1] >= 285 && count[1] <= 315);

    /* after the cooldown c takes part again; its first pick is the probe */
    now += COOLDOWN;
    int plans = 0;
    while (call(g, now, RT_OK, 100 * MS) != 2)
        assert_true(++plans < 10);
    assert_int_equal(circuit(g, 2, now), RT_CLOSED);
    memset(count, 0, sizeof count);
    for (int i = 0; i < 1000; i++) {
        int k = call(g, now, RT_OK, 100 * MS);
        assert_true(k >= 0);
        count[k]++;
    }
    assert_true(count[2] >= 190 && count[2] <= 210);
    assert_true(count[0] >= 475 && count[0] <= 525);
    rt_group_free(g);
}

/* ------------------------------------------------------------ least latency */

/* A call that takes lat[route] on whichever route the plan puts first. */
static uint32_t timed_call(rt_group *g, const uint64_t *lat, uint64_t now)
{
    uint32_t order[RT_MAX_ROUTES];
    rt_why why;
    assert_true(rt_plan(g, &small, now, order, RT_MAX_ROUTES, &why) > 0);
    attempt(g, order[0], RT_OK, lat[order[0]], now);
    return order[0];
}

static void test_least_latency_shifts_and_recovers(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("a"), spec("b"), spec("c")};
    rt_group *g = rt_group_new(r, 3, RT_LEAST_LATENCY, NULL);
    uint64_t lat[3] = {100 * MS, 100 * MS, 100 * MS};
    uint64_t now = T0;
    /* unmeasured routes first, so each one gets measured */
    for (uint32_t i = 0; i < 3; i++, now += MS)
        assert_int_equal(timed_call(g, lat, now), i);
    for (int i = 0; i < 50; i++, now += MS)
        timed_call(g, lat, now);

    /* a turns slow: within 10 plans it is no longer first */
    lat[0] = 1000 * MS;
    int plans = 0;
    for (; timed_call(g, lat, now) == 0; now += MS)
        assert_true(++plans <= 10);
    /* and afterwards it is first only on exploration, but still measured */
    int slow = 0;
    for (int i = 0; i < 200; i++, now += MS)
        slow += timed_call(g, lat, now) == 0;
    assert_true(slow >= 1);
    assert_true(slow <= 200 / RT_EXPLORE_EVERY + 1);

    /* a recovers (faster than b and c): its exploration samples bring it
     * back, within a bounded number of plans */
    lat[0] = 50 * MS;
    plans = 0;
    for (int run = 0; run < 10; now += MS) {
        run = timed_call(g, lat, now) == 0 ? run + 1 : 0;
        assert_true(++plans < 1000);
    }
    rt_group_free(g);
}

static void test_least_latency_ewma_and_ttft(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    rt_group *g = rt_group_new(r, 2, RT_LEAST_LATENCY, NULL);
    rt_attempt x;
    /* a streams: first token after 300 ms of a 5 s answer */
    rt_attempt_start(g, 0, 10, T0, &x);
    rt_attempt_end(g, &x, RT_OK, 300 * MS, 5000 * MS, 10, T0);
    /* b answers whole in 400 ms */
    attempt(g, 1, RT_OK, 400 * MS, T0);
    /* a's score is its time to first token: 300 < 400 */
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "ab");
    rt_route_stats st;
    rt_route_stats_get(g, 0, T0, &st);
    assert_true(st.ewma_ttft_ms == 300.0);
    assert_true(st.ewma_total_ms == 0.0);
    assert_int_equal(st.ttft_samples, 1);
    assert_int_equal(st.total_samples, 0);
    /* EWMA with alpha 0.25: 400 then 800 gives 500 */
    attempt(g, 1, RT_OK, 800 * MS, T0);
    rt_route_stats_get(g, 1, T0, &st);
    assert_true(st.ewma_total_ms > 499.999 && st.ewma_total_ms < 500.001);
    /* failures and neutral ends are not latency samples */
    attempt(g, 1, RT_FAIL, 60000 * MS, T0);
    attempt(g, 1, RT_NEUTRAL, 60000 * MS, T0);
    rt_route_stats_get(g, 1, T0, &st);
    assert_int_equal(st.total_samples, 2);
    assert_int_equal(st.requests, 4);
    assert_int_equal(st.failures, 1);
    rt_group_free(g);
}

/* ------------------------------------------------------------ lowest cost */

static void test_lowest_cost(void **state)
{
    (void)state;
    rt_route_spec r[4] = {spec("a"), spec("b"), spec("c"), spec("d")};
    r[0].price_in = 3000, r[0].price_out = 15000, r[0].context_tokens = 200000;
    r[1].price_in = 100, r[1].price_out = 200, r[1].context_tokens = 8000;
    r[2].price_in = -1; /* unknown */
    r[3].price_in = 2000, r[3].price_out = 10000;
    rt_group *g = rt_group_new(r, 4, RT_LOWEST_COST, NULL);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "bdac");
    /* a big prompt: b's context is too small, so it is not even a fallback */
    rt_need big = {10000, 1000, 0};
    assert_string_equal(plan_str(g, r, &big, T0, NULL), "dac");
    /* 7000 + 1000 fits exactly in 8000 */
    rt_need edge = {7000, 1000, 0};
    assert_string_equal(plan_str(g, r, &edge, T0, NULL), "bdac");
    rt_group_free(g);
}

static void test_lowest_cost_priority_ties_and_fallbacks(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("x"), spec("y"), spec("z")};
    r[0].price_in = 50, r[0].priority = 0; /* dearest, but first priority */
    r[1].price_in = 10, r[1].priority = 5; /* cheapest, ties with z */
    r[2].price_in = 10, r[2].priority = 3;
    rt_group *g = rt_group_new(r, 3, RT_LOWEST_COST, NULL);
    /* z: cheapest with the better priority; then fallbacks by priority */
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "zxy");
    rt_group_free(g);
}

static void test_lowest_cost_no_overflow(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[0].price_in = INT64_MAX, r[0].price_out = 0;
    r[1].price_in = INT64_MAX - 1, r[1].price_out = 0;
    rt_group *g = rt_group_new(r, 2, RT_LOWEST_COST, NULL);
    /* 64-bit products would wrap (a to 1, b to 2^63 + 2) and put a first */
    rt_need huge = {(uint64_t)INT64_MAX, 0, 0};
    assert_string_equal(plan_str(g, r, &huge, T0, NULL), "ba");
    rt_need over = {UINT64_MAX, UINT64_MAX, 0}; /* prompt + output saturates */
    assert_string_equal(plan_str(g, r, &over, T0, NULL), "ba");
    rt_group_free(g);
}

/* ------------------------------------------------------------ eligibility */

static void test_capabilities_and_context(void **state)
{
    (void)state;
    rt_route_spec r[3] = {spec("a"), spec("b"), spec("c")};
    r[0].caps = RT_CAP_JSON;
    r[1].caps = RT_CAP_TOOLS | RT_CAP_JSON;
    r[2].context_tokens = 4096;
    rt_group *g = rt_group_new(r, 3, RT_PRIORITY, NULL);
    rt_need tools = {1000, 1000, RT_CAP_TOOLS};
    assert_string_equal(plan_str(g, r, &tools, T0, NULL), "bc");
    rt_need tools_json = {1000, 1000, RT_CAP_TOOLS | RT_CAP_JSON};
    assert_string_equal(plan_str(g, r, &tools_json, T0, NULL), "bc");
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "abc");
    /* the context check holds for every strategy, not only lowest-cost */
    rt_need big = {4000, 1000, RT_CAP_TOOLS};
    assert_string_equal(plan_str(g, r, &big, T0, NULL), "b");
    rt_need images = {1000, 1000, RT_CAP_IMAGES};
    assert_string_equal(plan_str(g, r, &images, T0, NULL), "c");
    rt_why why;
    rt_need none = {4000, 1000, RT_CAP_IMAGES};
    assert_string_equal(plan_str(g, r, &none, T0, &why), "");
    assert_int_equal(why, RT_NONE_FITS);
    rt_group_free(g);
}

static void test_max_concurrent(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[0].max_concurrent = 1;
    r[1].max_concurrent = 2;
    rt_group *g = rt_group_new(r, 2, RT_PRIORITY, NULL);
    rt_attempt x, y, z;
    rt_attempt_start(g, 0, 0, T0, &x);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "b");
    rt_attempt_start(g, 1, 0, T0, &y);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "b");
    rt_attempt_start(g, 1, 0, T0, &z);
    rt_why why;
    assert_string_equal(plan_str(g, r, &small, T0, &why), "");
    assert_int_equal(why, RT_NONE_LIMITED);
    rt_route_stats st;
    rt_route_stats_get(g, 1, T0, &st);
    assert_int_equal(st.in_flight, 2);
    rt_attempt_end(g, &x, RT_OK, 0, MS, 0, T0 + MS);
    assert_string_equal(plan_str(g, r, &small, T0 + MS, NULL), "a");
    rt_attempt_end(g, &y, RT_NEUTRAL, 0, MS, 0, T0 + MS);
    assert_string_equal(plan_str(g, r, &small, T0 + MS, NULL), "ab");
    rt_attempt_end(g, &z, RT_OK, 0, MS, 0, T0 + MS);
    rt_group_free(g);
}

static void test_rpm_sliding_window(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[0].rpm = 2;
    r[1].rpm = 2;
    rt_group *g = rt_group_new(r, 2, RT_PRIORITY, NULL);
    attempt(g, 0, RT_OK, MS, T0);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "ab");
    attempt(g, 0, RT_OK, MS, T0 + S);
    assert_string_equal(plan_str(g, r, &small, T0 + S, NULL), "b");
    attempt(g, 1, RT_OK, MS, T0 + S);
    attempt(g, 1, RT_OK, MS, T0 + S);
    rt_why why;
    assert_string_equal(plan_str(g, r, &small, T0 + 2 * S, &why), "");
    assert_int_equal(why, RT_NONE_LIMITED);
    /* the next minute still sees the previous one, scaled by what of it
     * lies in the last 60 s (rounded up) */
    assert_string_equal(plan_str(g, r, &small, T0 + 60 * S, NULL), "");
    assert_string_equal(plan_str(g, r, &small, T0 + 61 * S, NULL), "");
    rt_route_stats st;
    rt_route_stats_get(g, 0, T0 + 90 * S, &st);
    assert_int_equal(st.rpm_used, 1);
    assert_string_equal(plan_str(g, r, &small, T0 + 90 * S, NULL), "ab");
    rt_route_stats_get(g, 0, T0 + 120 * S, &st);
    assert_int_equal(st.rpm_used, 0);
    rt_group_free(g);
}

static void test_tpm_estimate_then_actual(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[0].tpm = 1000;
    rt_group *g = rt_group_new(r, 2, RT_PRIORITY, NULL);
    rt_attempt x;
    rt_attempt_start(g, 0, 1000, T0, &x);
    assert_string_equal(plan_str(g, r, &small, T0, NULL), "b");
    /* it used 300: the estimate is replaced */
    rt_attempt_end(g, &x, RT_OK, 0, MS, 300, T0 + S);
    assert_string_equal(plan_str(g, r, &small, T0 + S, NULL), "ab");
    rt_route_stats st;
    rt_route_stats_get(g, 0, T0 + S, &st);
    assert_int_equal(st.tpm_used, 300);
    /* started this minute, ended in the next: corrected where counted */
    rt_attempt_start(g, 0, 800, T0 + 50 * S, &x);
    assert_string_equal(plan_str(g, r, &small, T0 + 50 * S, NULL), "b");
    rt_attempt_end(g, &x, RT_OK, 0, MS, 100, T0 + 70 * S);
    rt_route_stats_get(g, 0, T0 + 90 * S, &st);
    assert_int_equal(st.tpm_used, 200); /* (300 + 100) * 30 / 60 */
    /* an end after its window left the last minute changes nothing */
    rt_attempt_start(g, 0, 500, T0 + 130 * S, &x);
    rt_attempt_end(g, &x, RT_OK, 0, MS, 5000, T0 + 250 * S);
    rt_route_stats_get(g, 0, T0 + 250 * S, &st);
    assert_int_equal(st.tpm_used, 0);
    rt_group_free(g);
}

/* ------------------------------------------------------------ breaker */

static void test_breaker_consecutive_failures(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[1].priority = 1;
    rt_group *g = rt_group_new(r, 2, RT_PRIORITY, NULL);
    uint64_t now = T0;
    /* a success breaks the run; neutral ends count neither way */
    for (int i = 0; i < 4; i++)
        attempt(g, 0, RT_FAIL, MS, now);
    attempt(g, 0, RT_OK, MS, now);
    for (int i = 0; i < 4; i++)
        attempt(g, 0, RT_FAIL, MS, now);
    attempt(g, 0, RT_NEUTRAL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "ab");
    /* attempts started now, ending after the circuit opened / closed again */
    rt_attempt stale, older;
    rt_attempt_start(g, 0, 0, now, &stale);
    rt_attempt_start(g, 0, 0, now, &older);
    attempt(g, 0, RT_FAIL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_OPEN);
    rt_route_stats st;
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.opened_at_ns, now);
    assert_int_equal(st.consecutive_failures, 5);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "b");
    assert_string_equal(plan_str(g, r, &small, now + COOLDOWN - 1, NULL), "b");

    /* cooldown passed: half-open, exactly one probe */
    now += COOLDOWN;
    assert_int_equal(circuit(g, 0, now), RT_HALF_OPEN);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "ab");
    rt_attempt probe;
    rt_attempt_start(g, 0, 0, now, &probe);
    assert_true(probe.probe);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "b");
    /* the stale attempt is not the probe: its failure changes nothing */
    rt_attempt_end(g, &stale, RT_FAIL, 0, MS, 0, now);
    assert_int_equal(circuit(g, 0, now), RT_HALF_OPEN);
    /* the probe fails: open again, cooldown restarts */
    rt_attempt_end(g, &probe, RT_FAIL, 0, MS, 0, now + S);
    assert_int_equal(circuit(g, 0, now + S), RT_OPEN);
    rt_route_stats_get(g, 0, now + S, &st);
    assert_int_equal(st.opened_at_ns, now + S);
    assert_string_equal(plan_str(g, r, &small, now + COOLDOWN, NULL), "b");

    /* the next probe succeeds: closed, back in the plan */
    now += S + COOLDOWN;
    assert_string_equal(plan_str(g, r, &small, now, NULL), "ab");
    rt_attempt_start(g, 0, 0, now, &probe);
    assert_true(probe.probe);
    rt_attempt_end(g, &probe, RT_OK, 0, MS, 0, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.consecutive_failures, 0);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "ab");
    /* a failure from before the circuit opened does not count now */
    rt_attempt_end(g, &older, RT_FAIL, 0, MS, 0, now);
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.consecutive_failures, 0);
    assert_int_equal(st.window_requests, 0);
    assert_int_equal(st.failures, 12); /* but it is in the totals */
    rt_group_free(g);
}

static void test_breaker_probes_and_neutral_probe(void **state)
{
    (void)state;
    rt_route_spec r[1] = {spec("a")};
    rt_breaker_opts b = {.failures = 2, .cooldown_ms = 1000, .probes = 2};
    rt_group *g = rt_group_new(r, 1, RT_PRIORITY, &b);
    attempt(g, 0, RT_FAIL, MS, T0);
    attempt(g, 0, RT_FAIL, MS, T0);
    rt_why why;
    assert_string_equal(plan_str(g, r, &small, T0, &why), "");
    assert_int_equal(why, RT_NONE_OPEN);
    uint64_t now = T0 + S;
    /* a neutral probe decides nothing: another may go */
    attempt(g, 0, RT_NEUTRAL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_HALF_OPEN);
    assert_string_equal(plan_str(g, r, &small, now, NULL), "a");
    /* two successes are needed, one at a time */
    attempt(g, 0, RT_OK, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_HALF_OPEN);
    attempt(g, 0, RT_OK, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_group_free(g);
}

static void test_breaker_error_rate(void **state)
{
    (void)state;
    rt_route_spec r[1] = {spec("a")};
    rt_group *g = rt_group_new(r, 1, RT_PRIORITY, NULL);
    uint64_t now = T0;
    /* F S F S ... F: 10 of 19 failed, never two in a row, but 19 < 20 */
    for (int i = 0; i < 19; i++, now += 500 * MS)
        attempt(g, 0, i % 2 ? RT_OK : RT_FAIL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_route_stats st;
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.window_requests, 19);
    assert_int_equal(st.window_failures, 10);
    /* the 20th (a success): 10 of 20 is 50% */
    attempt(g, 0, RT_OK, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_OPEN);
    /* recovered (probe ok, inside the 30 s window): the old failures no
     * longer count, so one more failure does not reopen it */
    now += COOLDOWN;
    attempt(g, 0, RT_OK, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    attempt(g, 0, RT_FAIL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.window_requests, 1);
    rt_group_free(g);

    /* 9 of 20 (45%) stays closed */
    g = rt_group_new(r, 1, RT_PRIORITY, NULL);
    for (int i = 0; i < 20; i++, now += 500 * MS)
        attempt(g, 0, i % 2 && i < 18 ? RT_FAIL : RT_OK, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_group_free(g);

    /* outcomes older than the window do not count */
    g = rt_group_new(r, 1, RT_PRIORITY, NULL);
    for (int i = 0; i < 19; i++, now += 500 * MS)
        attempt(g, 0, i % 2 ? RT_OK : RT_FAIL, MS, now);
    now += 31 * S;
    attempt(g, 0, RT_FAIL, MS, now);
    assert_int_equal(circuit(g, 0, now), RT_CLOSED);
    rt_route_stats_get(g, 0, now, &st);
    assert_int_equal(st.window_requests, 1);
    rt_group_free(g);
}

static void test_why_open_and_limited(void **state)
{
    (void)state;
    rt_route_spec r[2] = {spec("a"), spec("b")};
    r[1].max_concurrent = 1;
    rt_group *g = rt_group_new(r, 2, RT_WEIGHTED, NULL);
    for (int i = 0; i < 5; i++)
        attempt(g, 0, RT_FAIL, MS, T0);
    for (int i = 0; i < 5; i++)
        attempt(g, 1, RT_FAIL, MS, T0);
    rt_why why;
    assert_string_equal(plan_str(g, r, &small, T0, &why), "");
    assert_int_equal(why, RT_NONE_OPEN);
    /* after the cooldown both are half-open: with both probes out, no
     * route lets a call through */
    uint64_t now = T0 + COOLDOWN;
    rt_attempt pa, pb;
    rt_attempt_start(g, 0, 0, now, &pa);
    rt_attempt_start(g, 1, 0, now, &pb);
    assert_string_equal(plan_str(g, r, &small, now, &why), "");
    assert_int_equal(why, RT_NONE_OPEN); /* probes out count as open */
    /* in panic, every route that is not at a limit goes (b has its one
     * concurrent slot taken by its probe) */
    rt_need panic = small;
    panic.panic = true;
    assert_string_equal(plan_str(g, r, &panic, now, &why), "a");
    assert_int_equal(why, RT_PANIC);
    /* a panic attempt is no probe and decides nothing */
    rt_attempt pp;
    rt_attempt_start(g, 0, 0, now, &pp);
    assert_false(pp.probe);
    rt_attempt_end(g, &pp, RT_OK, 0, MS, 0, now);
    assert_int_equal(circuit(g, 0, now), RT_HALF_OPEN);
    rt_attempt_end(g, &pb, RT_OK, 0, MS, 0, now);
    /* b closed, but its one slot is taken by a new attempt */
    rt_attempt x;
    rt_attempt_start(g, 1, 0, now, &x);
    assert_string_equal(plan_str(g, r, &small, now, &why), "");
    assert_int_equal(why, RT_NONE_LIMITED);
    rt_attempt_end(g, &x, RT_OK, 0, MS, 0, now);
    rt_attempt_end(g, &pa, RT_OK, 0, MS, 0, now);
    rt_group_free(g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strategy_parse),
        cmocka_unit_test(test_group_new_limits),
        cmocka_unit_test(test_priority_order_and_fallbacks),
        cmocka_unit_test(test_weighted_shares),
        cmocka_unit_test(test_weighted_smooth_sequence),
        cmocka_unit_test(test_weighted_zero_weight_is_fallback_only),
        cmocka_unit_test(test_weighted_open_circuit_shifts_share),
        cmocka_unit_test(test_least_latency_shifts_and_recovers),
        cmocka_unit_test(test_least_latency_ewma_and_ttft),
        cmocka_unit_test(test_lowest_cost),
        cmocka_unit_test(test_lowest_cost_priority_ties_and_fallbacks),
        cmocka_unit_test(test_lowest_cost_no_overflow),
        cmocka_unit_test(test_capabilities_and_context),
        cmocka_unit_test(test_max_concurrent),
        cmocka_unit_test(test_rpm_sliding_window),
        cmocka_unit_test(test_tpm_estimate_then_actual),
        cmocka_unit_test(test_breaker_consecutive_failures),
        cmocka_unit_test(test_breaker_probes_and_neutral_probe),
        cmocka_unit_test(test_breaker_error_rate),
        cmocka_unit_test(test_why_open_and_limited),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
