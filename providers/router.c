/* router.c - route plans, circuit breakers, latency averages and local
 * limits of a model alias (see router.h). */
#include "providers/router.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

__extension__ typedef unsigned __int128 u128;

#define MS 1000000ull
#define MINUTE_NS (60ull * 1000000000ull)
#define PREF_UNKNOWN (~(u128)0) /* sorts after every known preference */

/* One slice of the error-rate window. */
typedef struct rt__bucket {
    uint64_t epoch;    /* now_ns / bucket_ns of the outcomes it holds */
    uint32_t requests; /* counted outcomes (RT_OK, RT_FAIL) */
    uint32_t failures; /* of which RT_FAIL */
} rt__bucket;

typedef struct rt__route {
    rt_route_spec spec;
    /* circuit breaker */
    rt_circuit circuit;          /* as last evaluated (an elapsed cooldown is applied lazily) */
    uint32_t gen;                /* bumped on every change of circuit */
    uint64_t opened_at_ns;       /* when it last opened */
    bool probe_out;              /* half-open: the probe is in flight */
    uint32_t probe_ok;           /* successful probes since it became half-open */
    uint64_t streak;             /* consecutive failures while closed */
    rt__bucket ring[RT_BUCKETS]; /* error-rate window, indexed by epoch % RT_BUCKETS */
    uint64_t requests, failures; /* attempts ended / of which RT_FAIL */
    uint32_t in_flight;          /* attempts started, not ended */
    double ttft_ms, total_ms;    /* latency EWMAs: streams' first token / whole answers */
    uint64_t ttft_n, total_n;    /* samples behind each */
    uint64_t sampled_ns;         /* last latency sample (0: never) */
    int64_t current;             /* smooth weighted round robin value */
    uint64_t minute;             /* now_ns / MINUTE_NS of req_cur and tok_cur */
    uint64_t req_cur, req_prev;  /* attempts started this minute / the one before */
    uint64_t tok_cur, tok_prev;  /* tokens counted this minute / the one before */
} rt__route;

struct rt_group {
    rt_strategy strategy;
    rt_breaker_opts b;  /* defaults filled in */
    uint64_t bucket_ns; /* width of one error-rate bucket */
    uint64_t plans;     /* least-latency plans made: every RT_EXPLORE_EVERY-th explores */
    size_t n;           /* routes */
    rt__route routes[];
};

/* A candidate of a plan with its sort keys. */
typedef struct rt__key {
    u128 pref;    /* the strategy's preference, lower first */
    int32_t prio; /* the route's priority */
    uint32_t idx; /* the route's index (config order) */
} rt__key;

/* ------------------------------------------------------------ names */

static const char *const strategy_names[] = {
    [RT_PRIORITY] = "priority",
    [RT_WEIGHTED] = "weighted",
    [RT_LEAST_LATENCY] = "least-latency",
    [RT_LOWEST_COST] = "lowest-cost",
};

int rt_strategy_parse(const char *s, rt_strategy *out)
{
    for (size_t i = 0; i < sizeof strategy_names / sizeof strategy_names[0]; i++) {
        if (strcmp(s, strategy_names[i]) == 0) {
            *out = (rt_strategy)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *rt_strategy_name(rt_strategy s)
{
    return (unsigned)s <= RT_LOWEST_COST ? strategy_names[s] : "?";
}

const char *rt_circuit_name(rt_circuit c)
{
    switch (c) {
    case RT_CLOSED:
        return "closed";
    case RT_OPEN:
        return "open";
    case RT_HALF_OPEN:
        return "half-open";
    }
    return "?";
}

const char *rt_why_name(rt_why w)
{
    switch (w) {
    case RT_NONE_FITS:
        return "no route has the capabilities or the context window";
    case RT_NONE_OPEN:
        return "every route's circuit is open";
    case RT_NONE_LIMITED:
        return "every route is at its concurrency or rate limit";
    case RT_PANIC:
        return "every route's circuit is open: tried anyway";
    }
    return "?";
}

/* ------------------------------------------------------------ group */

static uint32_t or_default(uint32_t v, uint32_t d)
{
    return v ? v : d;
}

static rt_breaker_opts breaker_opts(const rt_breaker_opts *b)
{
    rt_breaker_opts o = {0};
    if (b)
        o = *b;
    o.failures = or_default(o.failures, 5);
    o.window_ms = or_default(o.window_ms, 30000);
    o.min_requests = or_default(o.min_requests, 20);
    o.error_pct = or_default(o.error_pct, 50);
    o.cooldown_ms = or_default(o.cooldown_ms, 10000);
    o.probes = or_default(o.probes, 1);
    return o;
}

rt_group *rt_group_new(const rt_route_spec *routes, size_t n, rt_strategy s,
                       const rt_breaker_opts *b)
{
    if (!routes || n == 0 || n > RT_MAX_ROUTES || (unsigned)s > RT_LOWEST_COST)
        return NULL;
    rt_group *g = calloc(1, sizeof *g + n * sizeof g->routes[0]);
    if (!g)
        return NULL;
    g->strategy = s;
    g->b = breaker_opts(b);
    g->bucket_ns = ((uint64_t)g->b.window_ms * MS + RT_BUCKETS - 1) / RT_BUCKETS;
    g->n = n;
    for (size_t i = 0; i < n; i++)
        g->routes[i].spec = routes[i]; /* calloc: every circuit starts RT_CLOSED */
    return g;
}

void rt_group_free(rt_group *g)
{
    free(g);
}

/* ------------------------------------------------------------ breaker */

/* The circuit as of now: an open one whose cooldown passed is half-open. */
static rt_circuit circuit_at(const rt_group *g, const rt__route *r, uint64_t now)
{
    if (r->circuit == RT_OPEN && now >= r->opened_at_ns + (uint64_t)g->b.cooldown_ms * MS)
        return RT_HALF_OPEN;
    return r->circuit;
}

static void set_circuit(rt__route *r, rt_circuit c, uint64_t now)
{
    r->circuit = c;
    r->gen++; /* attempts started before this no longer speak for the route */
    r->probe_out = false;
    r->probe_ok = 0;
    if (c == RT_OPEN)
        r->opened_at_ns = now;
    if (c == RT_CLOSED) { /* a recovered route starts with a clean record */
        r->streak = 0;
        memset(r->ring, 0, sizeof r->ring);
    }
}

static void tick(const rt_group *g, rt__route *r, uint64_t now)
{
    if (circuit_at(g, r, now) != r->circuit)
        set_circuit(r, RT_HALF_OPEN, now);
}

static void window_sum(const rt_group *g, const rt__route *r, uint64_t now, uint64_t *requests,
                       uint64_t *failures)
{
    uint64_t e = now / g->bucket_ns;
    *requests = *failures = 0;
    for (size_t i = 0; i < RT_BUCKETS; i++) {
        const rt__bucket *k = &r->ring[i];
        if (k->epoch <= e && e - k->epoch < RT_BUCKETS) {
            *requests += k->requests;
            *failures += k->failures;
        }
    }
}

/* A counted outcome while closed: may open the circuit. */
static void breaker_count(rt_group *g, rt__route *r, rt_outcome o, uint64_t now)
{
    uint64_t e = now / g->bucket_ns;
    rt__bucket *k = &r->ring[e % RT_BUCKETS];
    if (k->epoch != e) { /* the slot held an older bucket: reuse it */
        k->epoch = e;
        k->requests = k->failures = 0;
    }
    k->requests++;
    if (o == RT_FAIL) {
        k->failures++;
        r->streak++;
    } else {
        r->streak = 0;
    }
    uint64_t requests, failures;
    window_sum(g, r, now, &requests, &failures);
    bool rate =
        requests >= g->b.min_requests && failures * 100 >= (uint64_t)g->b.error_pct * requests;
    if (r->streak >= g->b.failures || rate)
        set_circuit(r, RT_OPEN, now);
}

/* The half-open probe ended. */
static void breaker_probe(rt_group *g, rt__route *r, rt_outcome o, uint64_t now)
{
    r->probe_out = false; /* a neutral end lets the next plan send another */
    if (o == RT_FAIL)
        set_circuit(r, RT_OPEN, now);
    else if (o == RT_OK && ++r->probe_ok >= g->b.probes)
        set_circuit(r, RT_CLOSED, now);
}

static void breaker_end(rt_group *g, rt__route *r, const rt_attempt *a, rt_outcome o, uint64_t now)
{
    if (a->gen != r->gen)
        return; /* started under a state the circuit has left */
    if (r->circuit == RT_CLOSED && o != RT_NEUTRAL)
        breaker_count(g, r, o, now);
    else if (r->circuit == RT_HALF_OPEN && a->probe)
        breaker_probe(g, r, o, now);
}

/* ------------------------------------------------------------ limits */

/* This minute's count plus the previous minute's, scaled by the part of
 * it still inside the last 60 s (rounded up, so a full window does not
 * read as room a nanosecond later). */
static uint64_t sliding(uint64_t prev, uint64_t cur, uint64_t now)
{
    uint64_t left = MINUTE_NS - now % MINUTE_NS;
    return cur + (uint64_t)(((u128)prev * left + MINUTE_NS - 1) / MINUTE_NS);
}

static void usage(const rt__route *r, uint64_t now, uint64_t *requests, uint64_t *tokens)
{
    uint64_t m = now / MINUTE_NS;
    *requests = *tokens = 0;
    if (m <= r->minute) {
        *requests = sliding(r->req_prev, r->req_cur, now);
        *tokens = sliding(r->tok_prev, r->tok_cur, now);
    } else if (m == r->minute + 1) {
        *requests = sliding(r->req_cur, 0, now);
        *tokens = sliding(r->tok_cur, 0, now);
    }
}

static void roll(rt__route *r, uint64_t now)
{
    uint64_t m = now / MINUTE_NS;
    if (m <= r->minute)
        return;
    r->req_prev = m == r->minute + 1 ? r->req_cur : 0;
    r->tok_prev = m == r->minute + 1 ? r->tok_cur : 0;
    r->req_cur = r->tok_cur = 0;
    r->minute = m;
}

static bool limited(const rt__route *r, uint64_t now)
{
    const rt_route_spec *s = &r->spec;
    if (s->max_concurrent && r->in_flight >= s->max_concurrent)
        return true;
    uint64_t requests, tokens;
    usage(r, now, &requests, &tokens);
    return (s->rpm && requests >= s->rpm) || (s->tpm && tokens >= s->tpm);
}

/* The tokens counted at the start are replaced by the actual count, in
 * the window they were counted in (dropped once it left the last 60 s). */
static void correct_tokens(rt__route *r, const rt_attempt *a, uint64_t actual, uint64_t now)
{
    roll(r, now);
    uint64_t *w;
    if (a->minute == r->minute)
        w = &r->tok_cur;
    else if (a->minute + 1 == r->minute)
        w = &r->tok_prev;
    else
        return;
    *w = (*w > a->tokens ? *w - a->tokens : 0) + actual;
}

/* ------------------------------------------------------------ plans */

static bool fits(const rt_route_spec *s, const rt_need *need)
{
    if ((s->caps & need->caps) != need->caps)
        return false;
    uint64_t want = need->prompt_tokens + need->max_output;
    if (want < need->prompt_tokens)
        want = UINT64_MAX;
    return !s->context_tokens || s->context_tokens >= want;
}

static bool lets_through(const rt__route *r)
{
    return r->circuit == RT_CLOSED || (r->circuit == RT_HALF_OPEN && !r->probe_out);
}

static bool measured(const rt__route *r)
{
    return r->ttft_n || r->total_n;
}

static u128 preference(const rt_group *g, const rt__route *r, const rt_need *need)
{
    const rt_route_spec *s = &r->spec;
    switch (g->strategy) {
    case RT_WEIGHTED:
        return UINT32_MAX - s->weight;
    case RT_LEAST_LATENCY: /* unmeasured first, then by score in µs */
        if (!measured(r))
            return 0;
        return 1 + (u128)((r->ttft_n ? r->ttft_ms : r->total_ms) * 1000.0);
    case RT_LOWEST_COST: /* each product < 2^127: the sum cannot wrap */
        if (s->price_in < 0 || s->price_out < 0)
            return PREF_UNKNOWN;
        return (u128)s->price_in * need->prompt_tokens + (u128)s->price_out * need->max_output;
    case RT_PRIORITY:
        break;
    }
    return 0;
}

/* The eligible routes, in config order; when there are none, *why says
 * which check left none. */
static size_t candidates(rt_group *g, const rt_need *need, uint64_t now, rt__key *k, rt_why *why)
{
    size_t fit = 0, through = 0, n = 0;
    for (size_t i = 0; i < g->n; i++) {
        rt__route *r = &g->routes[i];
        tick(g, r, now);
        if (!fits(&r->spec, need))
            continue;
        fit++;
        if (!lets_through(r))
            continue;
        through++;
        if (limited(r, now))
            continue;
        k[n++] = (rt__key){preference(g, r, need), r->spec.priority, (uint32_t)i};
    }
    if (n == 0 && fit && !through && need->panic) {
        /* every route that fits is open: all of them, circuits ignored */
        for (size_t i = 0; i < g->n; i++) {
            rt__route *r = &g->routes[i];
            if (fits(&r->spec, need) && !limited(r, now))
                k[n++] = (rt__key){preference(g, r, need), r->spec.priority, (uint32_t)i};
        }
        if (n) {
            *why = RT_PANIC;
            return n;
        }
        *why = RT_NONE_LIMITED;
        return 0;
    }
    if (n == 0)
        *why = !fit ? RT_NONE_FITS : !through ? RT_NONE_OPEN : RT_NONE_LIMITED;
    return n;
}

/* Fallback order: priority, then the strategy's preference, then config. */
static int by_priority(const rt__key *a, const rt__key *b)
{
    if (a->prio != b->prio)
        return a->prio < b->prio ? -1 : 1;
    if (a->pref != b->pref)
        return a->pref < b->pref ? -1 : 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

/* First-pick order of least-latency and lowest-cost: preference first. */
static int by_preference(const rt__key *a, const rt__key *b)
{
    if (a->pref != b->pref)
        return a->pref < b->pref ? -1 : 1;
    return by_priority(a, b);
}

static int qsort_by_priority(const void *a, const void *b)
{
    return by_priority(a, b);
}

static size_t best_of(const rt__key *k, size_t n, int (*cmp)(const rt__key *, const rt__key *))
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (cmp(&k[i], &k[best]) < 0)
            best = i;
    return best;
}

/* nginx's smooth weighted round robin over the candidates of weight > 0;
 * n when there are none. Ties go to the first in config order. */
static size_t swrr(rt_group *g, const rt__key *k, size_t n)
{
    int64_t total = 0;
    size_t best = n;
    for (size_t i = 0; i < n; i++) {
        rt__route *r = &g->routes[k[i].idx];
        if (!r->spec.weight)
            continue;
        r->current += r->spec.weight;
        total += r->spec.weight;
        if (best == n || r->current > g->routes[k[best].idx].current)
            best = i;
    }
    if (best < n)
        g->routes[k[best].idx].current -= total;
    return best;
}

static size_t least_recently_sampled(const rt_group *g, const rt__key *k, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++) {
        uint64_t a = g->routes[k[i].idx].sampled_ns, b = g->routes[k[best].idx].sampled_ns;
        if (a < b || (a == b && by_priority(&k[i], &k[best]) < 0))
            best = i;
    }
    return best;
}

/* The candidate the strategy puts first. */
static size_t pick(rt_group *g, const rt__key *k, size_t n)
{
    switch (g->strategy) {
    case RT_WEIGHTED: {
        size_t i = swrr(g, k, n);
        return i < n ? i : best_of(k, n, by_priority);
    }
    case RT_LEAST_LATENCY:
        if (++g->plans % RT_EXPLORE_EVERY == 0)
            return least_recently_sampled(g, k, n);
        return best_of(k, n, by_preference);
    case RT_LOWEST_COST:
        return best_of(k, n, by_preference);
    case RT_PRIORITY:
        break;
    }
    return best_of(k, n, by_priority);
}

size_t rt_plan(rt_group *g, const rt_need *need, uint64_t now_ns, uint32_t *order, size_t cap,
               rt_why *why)
{
    rt__key k[RT_MAX_ROUTES];
    size_t n = candidates(g, need, now_ns, k, why);
    if (n == 0)
        return 0;
    size_t first = pick(g, k, n);
    rt__key t = k[0];
    k[0] = k[first];
    k[first] = t;
    qsort(k + 1, n - 1, sizeof k[0], qsort_by_priority);
    if (n > cap)
        n = cap;
    for (size_t i = 0; i < n; i++)
        order[i] = k[i].idx;
    return n;
}

/* ------------------------------------------------------------ attempts */

void rt_attempt_start(rt_group *g, uint32_t i, uint64_t tokens_estimate, uint64_t now_ns,
                      rt_attempt *a)
{
    rt__route *r = &g->routes[i];
    tick(g, r, now_ns);
    roll(r, now_ns);
    r->in_flight++;
    r->req_cur++;
    r->tok_cur += tokens_estimate;
    a->route = i;
    a->gen = r->gen;
    a->tokens = tokens_estimate;
    a->minute = r->minute;
    a->probe = r->circuit == RT_HALF_OPEN && !r->probe_out;
    if (a->probe)
        r->probe_out = true;
}

static double ewma(double avg, uint64_t samples, uint64_t ns)
{
    double ms = (double)ns / (double)MS;
    return samples ? avg + RT_EWMA_ALPHA * (ms - avg) : ms;
}

static void sample(rt__route *r, uint64_t ttft_ns, uint64_t total_ns, uint64_t now)
{
    if (ttft_ns)
        r->ttft_ms = ewma(r->ttft_ms, r->ttft_n++, ttft_ns);
    else
        r->total_ms = ewma(r->total_ms, r->total_n++, total_ns);
    r->sampled_ns = now;
}

void rt_attempt_end(rt_group *g, const rt_attempt *a, rt_outcome o, uint64_t ttft_ns,
                    uint64_t total_ns, uint64_t tokens_actual, uint64_t now_ns)
{
    rt__route *r = &g->routes[a->route];
    if (r->in_flight)
        r->in_flight--;
    r->requests++;
    if (o == RT_FAIL)
        r->failures++;
    correct_tokens(r, a, tokens_actual, now_ns);
    if (o == RT_OK)
        sample(r, ttft_ns, total_ns, now_ns);
    breaker_end(g, r, a, o, now_ns);
}

/* ------------------------------------------------------------ stats */

void rt_route_stats_get(const rt_group *g, uint32_t i, uint64_t now_ns, rt_route_stats *out)
{
    const rt__route *r = &g->routes[i];
    memset(out, 0, sizeof *out);
    out->circuit = circuit_at(g, r, now_ns);
    out->opened_at_ns = r->opened_at_ns;
    out->probe_in_flight = r->probe_out;
    out->in_flight = r->in_flight;
    out->ewma_ttft_ms = r->ttft_ms;
    out->ewma_total_ms = r->total_ms;
    out->ttft_samples = r->ttft_n;
    out->total_samples = r->total_n;
    out->requests = r->requests;
    out->failures = r->failures;
    out->consecutive_failures = r->streak;
    window_sum(g, r, now_ns, &out->window_requests, &out->window_failures);
    usage(r, now_ns, &out->rpm_used, &out->tpm_used);
}
