/* fuzz_router.c - libFuzzer driver for the route planner and circuit
 * breakers (providers/router.c).
 *
 * The input is a program. Header:
 *   byte 0: n routes = 1 + (b & 7); strategy = (b >> 3) & 3; bit 5: breaker
 *           options follow (else the defaults)
 *   [breaker, 3 bytes]: failures = b0 & 7; probes = (b0 >> 3) & 3;
 *           min_requests = b0 >> 5; window_ms, cooldown_ms and error_pct
 *           from tables indexed by bits of b1 (b2 is reserved)
 *   per route, 3 bytes: r0 weight = r0 & 7, priority = (r0 >> 3) & 3,
 *           caps = r0 >> 5; r1 price_in / price_out from a table (incl.
 *           unknown and INT64_MAX), context = r1 >> 6 (incl. 0 = unknown);
 *           r2 max_concurrent = r2 & 3, rpm / tpm from small tables
 * Then ops, each [op, clock] + arguments; the clock byte moves time forward
 * (units of 1 ms, 50 ms, 1 s or 5 s times 0..63):
 *   op & 3 == 0  plan: one byte of need (prompt, output cap, caps); panic =
 *                op bit 2; cap = op bit 3 ? 1 + (op >> 4) % 8 : RT_MAX_ROUTES
 *   op & 3 == 1  start an attempt on an entry of the last plan (one byte:
 *                which entry, token estimate), at most 16 open
 *   op & 3 == 2  end an open attempt (two bytes: which one, outcome
 *                OK/FAIL/NEUTRAL, stream or not, actual tokens)
 *   op & 3 == 3  read one route's stats (one byte)
 * Checked after every op, with abort() on a violation:
 * - a plan lists distinct indexes < n, min(cap, eligible) of them, where a
 *   route is eligible when it has the capabilities, its context holds
 *   prompt + output cap, it is under max_concurrent/rpm/tpm (from its
 *   stats) and its circuit lets a call through (closed, or half-open with
 *   no probe out) -- the last ignored for a panic plan, which is made only
 *   when need.panic is set and every fitting route's circuit is shut;
 * - an empty plan says why: RT_NONE_FITS, RT_NONE_OPEN (in particular when
 *   every route is open and panic is off) or RT_NONE_LIMITED, as the
 *   eligibility above predicts;
 * - the order: fallbacks by priority, then the strategy's preference
 *   (weight, latency EWMA from the stats, cost), then config order; the
 *   first pick as documented (lowest priority; smooth weighted round robin,
 *   simulated by the driver; lowest latency except on every
 *   RT_EXPLORE_EVERY-th plan; lowest cost);
 * - an attempt started on a half-open route with no probe out is the probe;
 * - stats: in_flight equals the driver's count of open attempts, requests
 *   and failures equal the ends it made (so they never decrease), a closed
 *   circuit has no probe out;
 * - at the end every open attempt is ended and the group freed (no leak).
 *
 * Build: cmake -DTG_FUZZ=ON (clang) builds fuzz_router; ctest replays
 * test/fuzz/corpus/router/ with replay_fuzz_router. By hand:
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_router
 *   cp -r test/fuzz/corpus/router /tmp/rc && build-fuzz/test/fuzz_router -timeout=10 /tmp/rc */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

__extension__ typedef unsigned __int128 u128;

#define MAX_OPEN 16
#define MS UINT64_C(1000000)

typedef struct reader {
    const uint8_t *p;
    size_t n, i;
} reader;

static bool more(const reader *r)
{
    return r->i < r->n;
}

static uint8_t next(reader *r)
{
    return r->i < r->n ? r->p[r->i++] : 0;
}

static const int64_t prices[8] = {-1, 0, 100, 150, 2500, 10000, 600000000, INT64_MAX};
static const uint64_t contexts[4] = {0, 1000, 8000, 128000};
static const uint32_t rpms[8] = {0, 1, 2, 3, 5, 10, 100, 0};
static const uint64_t tpms[8] = {0, 50, 500, 1000, 5000, 100000, 0, 1};
static const uint64_t prompts[8] = {0, 10, 500, 2000, 7000, 100000, UINT64_C(1) << 40, UINT64_MAX};
static const uint64_t outputs[4] = {0, 100, 4096, UINT64_MAX / 2};
static const uint32_t windows[4] = {0, 1000, 5000, 60000};
static const uint32_t cooldowns[4] = {0, 500, 2000, 10000};
static const uint32_t error_pcts[8] = {0, 1, 30, 50, 99, 100, 101, 200};
static const uint64_t units[4] = {1 * MS, 50 * MS, 1000 * MS, 5000 * MS};
static const uint64_t estimates[4] = {0, 10, 300, 5000};

typedef struct open_attempt {
    rt_attempt a;
    uint64_t started;
} open_attempt;

typedef struct state {
    rt_group *g;
    size_t n;
    rt_strategy s;
    rt_route_spec spec[8];
    uint64_t now;
    open_attempt open[MAX_OPEN];
    size_t nopen;
    uint32_t in_flight[8];
    uint64_t ended[8], failed[8];
    uint32_t plan[RT_MAX_ROUTES];
    size_t nplan;
    int64_t current[8];     /* smooth weighted round robin, simulated */
    uint64_t latency_plans; /* non-empty least-latency plans */
} state;

static bool fits(const rt_route_spec *s, const rt_need *need)
{
    if ((s->caps & need->caps) != need->caps)
        return false;
    uint64_t want = need->prompt_tokens + need->max_output;
    if (want < need->prompt_tokens)
        want = UINT64_MAX;
    return s->context_tokens == 0 || s->context_tokens >= want;
}

static bool lets_through(const rt_route_stats *st)
{
    return st->circuit == RT_CLOSED || (st->circuit == RT_HALF_OPEN && !st->probe_in_flight);
}

static bool limited(const rt_route_spec *s, const rt_route_stats *st)
{
    return (s->max_concurrent && st->in_flight >= s->max_concurrent) ||
           (s->rpm && st->rpm_used >= s->rpm) || (s->tpm && st->tpm_used >= s->tpm);
}

/* Lowest-cost preference; unknown prices sort last. */
static u128 cost(const rt_route_spec *s, const rt_need *need)
{
    if (s->price_in < 0 || s->price_out < 0)
        return ~(u128)0;
    return (u128)s->price_in * need->prompt_tokens + (u128)s->price_out * need->max_output;
}

/* The strategy's preference, lower first: weight, latency (routes not
 * measured yet first) or cost. */
static u128 pref(const state *st, uint32_t i, const rt_need *need, const rt_route_stats *rs)
{
    switch (st->s) {
    case RT_LOWEST_COST:
        return cost(&st->spec[i], need);
    case RT_WEIGHTED:
        return UINT32_MAX - st->spec[i].weight;
    case RT_LEAST_LATENCY:
        if (!rs[i].ttft_samples && !rs[i].total_samples)
            return 0;
        return 1 + (u128)((rs[i].ttft_samples ? rs[i].ewma_ttft_ms : rs[i].ewma_total_ms) * 1000.0);
    default:
        return 0;
    }
}

/* a before b in fallback order: priority, preference, config order. */
static bool before(const state *st, uint32_t a, uint32_t b, const rt_need *need,
                   const rt_route_stats *rs)
{
    if (st->spec[a].priority != st->spec[b].priority)
        return st->spec[a].priority < st->spec[b].priority;
    u128 pa = pref(st, a, need, rs), pb = pref(st, b, need, rs);
    if (pa != pb)
        return pa < pb;
    return a < b;
}

/* a before b as a first pick of least-latency / lowest-cost: preference,
 * then the fallback order. */
static bool better(const state *st, uint32_t a, uint32_t b, const rt_need *need,
                   const rt_route_stats *rs)
{
    u128 pa = pref(st, a, need, rs), pb = pref(st, b, need, rs);
    if (pa != pb)
        return pa < pb;
    return before(st, a, b, need, rs);
}

static void check_stats(state *st)
{
    for (uint32_t i = 0; i < st->n; i++) {
        rt_route_stats s;
        rt_route_stats_get(st->g, i, st->now, &s);
        if (s.in_flight != st->in_flight[i] || s.requests != st->ended[i] ||
            s.failures != st->failed[i])
            abort();
        if ((unsigned)s.circuit > RT_HALF_OPEN || (s.circuit == RT_CLOSED && s.probe_in_flight))
            abort();
        if (s.window_failures > s.window_requests || s.failures > s.requests)
            abort();
        if (s.opened_at_ns > st->now || (s.circuit != RT_CLOSED && s.opened_at_ns == 0))
            abort();
    }
}

static void op_plan(state *st, uint8_t op, reader *r)
{
    uint8_t b = next(r);
    rt_need need = {
        .prompt_tokens = prompts[b & 7],
        .max_output = outputs[(b >> 3) & 3],
        .caps = (uint32_t)(b >> 5),
        .panic = (op & 4) != 0,
    };
    size_t cap = (op & 8) ? 1 + (size_t)((op >> 4) % 8) : RT_MAX_ROUTES;

    /* what the plan should be, from the routes' state before it */
    rt_route_stats rs[8];
    bool fit[8], through[8], lim[8], cand[8];
    size_t nfit = 0, nthrough = 0, neligible = 0, npanic = 0, nopen = 0;
    for (uint32_t i = 0; i < st->n; i++) {
        rt_route_stats_get(st->g, i, st->now, &rs[i]);
        fit[i] = fits(&st->spec[i], &need);
        through[i] = lets_through(&rs[i]);
        lim[i] = limited(&st->spec[i], &rs[i]);
        nfit += fit[i];
        nthrough += fit[i] && through[i];
        neligible += fit[i] && through[i] && !lim[i];
        npanic += fit[i] && !lim[i];
        nopen += !through[i];
    }
    bool panic = neligible == 0 && nfit && !nthrough && need.panic;
    size_t want = panic ? npanic : neligible;
    for (uint32_t i = 0; i < st->n; i++)
        cand[i] = fit[i] && !lim[i] && (panic || through[i]);

    /* the first pick of weighted: smooth weighted round robin, simulated */
    int64_t total = 0;
    int best = -1;
    if (st->s == RT_WEIGHTED && want) {
        for (uint32_t i = 0; i < st->n; i++) {
            if (!cand[i] || !st->spec[i].weight)
                continue;
            st->current[i] += st->spec[i].weight;
            total += st->spec[i].weight;
            if (best < 0 || st->current[i] > st->current[best])
                best = (int)i;
        }
        if (best >= 0)
            st->current[best] -= total;
    }
    bool explore = false;
    if (st->s == RT_LEAST_LATENCY && want)
        explore = ++st->latency_plans % RT_EXPLORE_EVERY == 0;

    uint32_t order[RT_MAX_ROUTES];
    rt_why why = 0;
    size_t k = rt_plan(st->g, &need, st->now, order, cap, &why);

    if (k != (want < cap ? want : cap) || k > st->n)
        abort();
    if (k == 0) {
        rt_why expect = !nfit                         ? RT_NONE_FITS
                        : (!nthrough && !need.panic) ? RT_NONE_OPEN
                                                      : RT_NONE_LIMITED;
        if (why != expect)
            abort();
        /* every route open and no panic: an empty plan, because of the circuits */
        if (nopen == st->n && !need.panic && nfit && why != RT_NONE_OPEN)
            abort();
    } else if ((why == RT_PANIC) != panic) {
        abort();
    }
    if (nopen == st->n && !need.panic && k != 0)
        abort();

    bool seen[8] = {false};
    for (size_t j = 0; j < k; j++) {
        uint32_t i = order[j];
        if (i >= st->n || seen[i])
            abort();
        seen[i] = true;
        if (!fit[i] || lim[i])
            abort();
        if (!panic && !through[i])
            abort();
    }
    /* fallbacks in order; when cut by cap, none left out goes before them */
    for (size_t j = 2; j < k; j++)
        if (!before(st, order[j - 1], order[j], &need, rs))
            abort();
    if (k >= 2 && k < want)
        for (uint32_t i = 0; i < st->n; i++)
            if (cand[i] && !seen[i] && before(st, i, order[k - 1], &need, rs))
                abort();
    /* the first pick */
    if (k) {
        uint32_t f = order[0];
        if (st->s == RT_WEIGHTED && best >= 0 && f != (uint32_t)best)
            abort();
        for (uint32_t i = 0; i < st->n; i++) {
            if (!cand[i] || i == f)
                continue;
            switch (st->s) {
            case RT_PRIORITY:
                if (before(st, i, f, &need, rs))
                    abort();
                break;
            case RT_WEIGHTED:
                if (best < 0 && before(st, i, f, &need, rs))
                    abort();
                break;
            case RT_LEAST_LATENCY:
                if (!explore && better(st, i, f, &need, rs))
                    abort();
                break;
            case RT_LOWEST_COST:
                if (better(st, i, f, &need, rs))
                    abort();
                break;
            }
        }
    }
    memcpy(st->plan, order, k * sizeof(order[0]));
    st->nplan = k;
}

static void op_start(state *st, reader *r)
{
    uint8_t b = next(r);
    if (st->nplan == 0 || st->nopen == MAX_OPEN)
        return;
    uint32_t i = st->plan[(b & 15) % st->nplan];
    rt_route_stats s;
    rt_route_stats_get(st->g, i, st->now, &s);
    open_attempt *o = &st->open[st->nopen++];
    rt_attempt_start(st->g, i, estimates[b >> 6], st->now, &o->a);
    o->started = st->now;
    st->in_flight[i]++;
    if (o->a.route != i)
        abort();
    if (o->a.probe != (s.circuit == RT_HALF_OPEN && !s.probe_in_flight))
        abort();
    rt_route_stats_get(st->g, i, st->now, &s);
    if (o->a.probe && !(s.circuit == RT_HALF_OPEN && s.probe_in_flight))
        abort();
}

static void end_one(state *st, size_t j, rt_outcome oc, bool stream, uint64_t tokens)
{
    open_attempt o = st->open[j];
    st->open[j] = st->open[--st->nopen];
    uint64_t total = st->now - o.started;
    uint64_t ttft = stream ? total / 2 + 1 : 0;
    rt_attempt_end(st->g, &o.a, oc, ttft, total, tokens, st->now);
    st->in_flight[o.a.route]--;
    st->ended[o.a.route]++;
    if (oc == RT_FAIL)
        st->failed[o.a.route]++;
}

static void op_end(state *st, reader *r)
{
    uint8_t b1 = next(r), b2 = next(r);
    if (st->nopen == 0)
        return;
    rt_outcome oc = (b1 >> 4) % 3 == 0 ? RT_OK : (b1 >> 4) % 3 == 1 ? RT_FAIL : RT_NEUTRAL;
    end_one(st, (b1 & 15) % st->nopen, oc, b2 & 1, estimates[(b2 >> 1) & 3] * (b2 >> 3));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    reader r = {data, size, 0};
    if (size < 1)
        return 0;
    state *st = calloc(1, sizeof(*st));
    if (!st)
        abort();
    uint8_t h = next(&r);
    st->n = 1 + (h & 7);
    st->s = (rt_strategy)((h >> 3) & 3);
    rt_breaker_opts bo, *bp = NULL;
    if (h & 0x20) {
        uint8_t b0 = next(&r), b1 = next(&r), b2 = next(&r);
        bo = (rt_breaker_opts){
            .failures = b0 & 7,
            .probes = (b0 >> 3) & 3,
            .min_requests = b0 >> 5,
            .window_ms = windows[b1 & 3],
            .cooldown_ms = cooldowns[(b1 >> 2) & 3],
            .error_pct = error_pcts[(b1 >> 4) & 7],
        };
        (void)b2;
        bp = &bo;
    }
    for (size_t i = 0; i < st->n; i++) {
        uint8_t r0 = next(&r), r1 = next(&r), r2 = next(&r);
        st->spec[i] = (rt_route_spec){
            .label = "fuzz/route",
            .weight = r0 & 7,
            .priority = (r0 >> 3) & 3,
            .caps = (uint32_t)(r0 >> 5),
            .price_in = prices[r1 & 7],
            .price_out = prices[(r1 >> 3) & 7],
            .context_tokens = contexts[r1 >> 6],
            .max_concurrent = r2 & 3,
            .rpm = rpms[(r2 >> 2) & 7],
            .tpm = tpms[(r2 >> 5) & 7],
        };
    }
    st->g = rt_group_new(st->spec, st->n, st->s, bp);
    if (!st->g)
        abort();
    st->now = 1000 * MS;
    check_stats(st);
    while (more(&r)) {
        uint8_t op = next(&r), t = next(&r);
        st->now += units[t >> 6] * (t & 63);
        switch (op & 3) {
        case 0:
            op_plan(st, op, &r);
            break;
        case 1:
            op_start(st, &r);
            break;
        case 2:
            op_end(st, &r);
            break;
        default: {
            rt_route_stats s;
            rt_route_stats_get(st->g, next(&r) % st->n, st->now, &s);
            break;
        }
        }
        check_stats(st);
    }
    while (st->nopen)
        end_one(st, st->nopen - 1, RT_NEUTRAL, false, 0);
    check_stats(st);
    rt_group_free(st->g);
    free(st);
    return 0;
}
