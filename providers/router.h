/* router.h - which of a model alias's routes to try, in what order, and
 * what each route's health is (DESIGN.md §9).
 *
 * A model alias has routes (provider + provider model). For each call the
 * gateway asks for a plan: the eligible routes, best first. The first
 * follows the alias's strategy; the rest are the fallbacks, in priority
 * order and then by the strategy's preference. Each attempt on a route is
 * bracketed by rt_attempt_start() / rt_attempt_end(); their outcomes feed
 * the route's circuit breaker, its latency averages and its local limits.
 *
 * Strategies:
 * - priority: lowest priority value first, ties in config order.
 * - weighted: smooth weighted round robin (nginx): each plan adds every
 *   eligible route's weight to its current value, picks the largest (ties
 *   in config order) and takes the sum of those weights off the pick.
 * - least-latency: lowest EWMA (alpha RT_EWMA_ALPHA) of time to first
 *   token when the route has stream samples, else of total latency; routes
 *   not measured yet come first. Every RT_EXPLORE_EVERY-th plan of the
 *   group (a counter, not a random draw, so runs are reproducible) puts the
 *   least recently sampled eligible route first instead: a route that got
 *   slow keeps being measured at that bounded rate, and wins again once
 *   its average comes back down.
 * - lowest-cost: lowest price_in * prompt_tokens + price_out * max_output
 *   (128-bit, exact), ties by priority; routes of unknown price last.
 *
 * Eligibility, for every strategy and for fallbacks too: the route has
 * every capability asked for, its context window (when known) holds the
 * prompt plus the output cap, its circuit lets a call through, and it is
 * under its local limits (max_concurrent, rpm, tpm).
 *
 * rpm/tpm use a sliding approximation over fixed 60 s windows: the count
 * is this window's plus the previous window's scaled by the part of it
 * still inside the last 60 s (rounded up). A route is under tpm while that
 * count is below the limit (the call's own tokens need not fit: the
 * provider's 429 is the backstop). Tokens are counted from the estimate at
 * start and corrected by the actual count at the end, in the window they
 * were counted in.
 *
 * Circuit breaker, per route: CLOSED opens after `failures` consecutive
 * RT_FAIL, or when the last window_ms (a ring of RT_BUCKETS buckets, so
 * the window spans window_ms minus up to one bucket) held at least
 * min_requests counted outcomes of which at least error_pct percent
 * failed; the rate is checked after every counted outcome, a success
 * included. OPEN becomes HALF_OPEN once cooldown_ms has passed (evaluated
 * lazily when the route is looked at). In HALF_OPEN the first attempt
 * started is the probe and the route leaves plans until it ends; `probes`
 * successful probes close it (clearing the window), a failed one reopens
 * it (cooldown restarts). RT_NEUTRAL outcomes count neither way. Outcomes
 * of attempts started before the circuit last changed state are ignored
 * by the breaker (they speak of the old state).
 *
 * Latency samples come from RT_OK outcomes only: a failure's duration says
 * how it failed, not how fast the route answers.
 *
 * Pure bookkeeping: no I/O, no clock of its own (every time is passed in,
 * ns monotonic), allocation only in rt_group_new(), one loop per group (no
 * locking). Every call is O(n log n) or better in the number of routes. */
#ifndef TG_PROVIDERS_ROUTER_H
#define TG_PROVIDERS_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RT_MUSTCHECK __attribute__((warn_unused_result))

#define RT_MAX_ROUTES 32    /* routes per alias; rt_group_new() refuses more */
#define RT_EWMA_ALPHA 0.25  /* weight of a new latency sample */
#define RT_EXPLORE_EVERY 20 /* least-latency: every this many plans, explore */
#define RT_BUCKETS 30       /* breaker error-rate window, in buckets */

typedef enum rt_strategy {
    RT_PRIORITY,      /* "priority": lowest priority value first */
    RT_WEIGHTED,      /* "weighted": smooth weighted round robin */
    RT_LEAST_LATENCY, /* "least-latency": lowest latency EWMA, with exploration */
    RT_LOWEST_COST,   /* "lowest-cost": lowest price for this call */
} rt_strategy;

/* Parses a strategy's config name into *out: 0, or -EINVAL (out untouched). */
int rt_strategy_parse(const char *s, rt_strategy *out) RT_MUSTCHECK;

/* The config name of a strategy ("?" for a value outside the enum). */
const char *rt_strategy_name(rt_strategy s);

/* Capabilities a call needs and a route offers (rt_route_spec.caps). */
enum {
    RT_CAP_TOOLS = 1,  /* tool / function calling */
    RT_CAP_IMAGES = 2, /* image inputs */
    RT_CAP_JSON = 4,   /* response_format json */
};

/* One route, from the config; copied by rt_group_new(). */
typedef struct rt_route_spec {
    const char *label;       /* "provider/model" for logs and metrics; borrowed: must outlive
                                the group */
    uint32_t weight;         /* weighted: share of first picks; 0 = never picked by weight,
                                still a fallback */
    int32_t priority;        /* lower is tried first in priority order; ties keep config order */
    int64_t price_in;        /* nano-USD per 1M prompt tokens; < 0 unknown */
    int64_t price_out;       /* nano-USD per 1M output tokens; < 0 unknown */
    uint64_t context_tokens; /* context window; 0 = unknown (assumed to fit) */
    uint32_t caps;           /* RT_CAP_* the route supports */
    uint32_t max_concurrent; /* attempts in flight on this route (this loop); 0 = unlimited */
    uint32_t rpm;            /* requests per minute allowed to this loop; 0 = unlimited */
    uint64_t tpm;            /* tokens per minute allowed to this loop; 0 = unlimited */
} rt_route_spec;

/* Circuit breaker settings, shared by an alias's routes. A field left 0
 * takes its default (error_pct above 100 turns the error-rate path off). */
typedef struct rt_breaker_opts {
    uint32_t failures;     /* open after this many consecutive failures (5) */
    uint32_t window_ms;    /* error-rate window (30000) */
    uint32_t min_requests; /* the rate counts only with this many outcomes in the window (20) */
    uint32_t error_pct;    /* open when failures * 100 / outcomes in the window >= this (50) */
    uint32_t cooldown_ms;  /* open -> half-open after this (10000) */
    uint32_t probes;       /* successful half-open probes that close it (1) */
} rt_breaker_opts;

/* One alias's routes and their state. */
typedef struct rt_group rt_group;

/* A group over routes[0..n) (1 <= n <= RT_MAX_ROUTES; specs copied, labels
 * borrowed) with strategy s; b NULL takes every default. NULL when n or s
 * is out of range or memory ran out. */
rt_group *rt_group_new(const rt_route_spec *routes, size_t n, rt_strategy s,
                       const rt_breaker_opts *b);
/* Frees the group (NULL is fine); attempts still out must not be ended after. */
void rt_group_free(rt_group *g);

/* What a call needs from a route. */
typedef struct rt_need {
    uint64_t prompt_tokens; /* estimated prompt size */
    uint64_t max_output;    /* output cap asked for (or the default cap) */
    uint32_t caps;          /* RT_CAP_* the call uses */
    bool panic;             /* when every route that fits has its circuit open: plan them
                               anyway, circuits ignored (*why = RT_PANIC), so that a breaker
                               never refuses what the providers might still serve */
} rt_need;

/* Why a plan is empty. */
typedef enum rt_why {
    RT_NONE_FITS = 1, /* no route has the capabilities or the context window */
    RT_NONE_OPEN,     /* every route that fits has its circuit open (or its probe out) */
    RT_NONE_LIMITED,  /* every such route is at max_concurrent, rpm or tpm */
    RT_PANIC,         /* (a plan, not empty) every route that fits is open: need->panic
                         planned them anyway */
} rt_why;

/* Short text for a why ("no route fits", ...), for error messages. */
const char *rt_why_name(rt_why w);

/* The routes to try for a call, best first: writes up to cap route
 * indexes to order[] (RT_MAX_ROUTES always suffices; cap >= 1) and
 * returns how many. 0: none can serve, *why says which check left none;
 * a panic plan (need->panic) sets *why to RT_PANIC.
 * A weighted or least-latency plan counts as a pick (it advances the
 * round robin or the exploration counter) whether or not it is used. */
size_t rt_plan(rt_group *g, const rt_need *need, uint64_t now_ns, uint32_t *order, size_t cap,
               rt_why *why);

/* One attempt on a route, filled by rt_attempt_start() and handed back
 * to rt_attempt_end(); owned by the caller (embed it in the call). */
typedef struct rt_attempt {
    uint32_t route;  /* index of the route tried */
    uint32_t gen;    /* the route's circuit state generation at the start */
    bool probe;      /* this attempt is the half-open probe */
    uint64_t tokens; /* tokens counted for tpm at the start (the estimate) */
    uint64_t minute; /* the 60 s window they were counted in */
} rt_attempt;

/* An attempt on route i (< n, an index from a plan) starts: counts it in flight,
 * for rpm, and tokens_estimate for tpm. */
void rt_attempt_start(rt_group *g, uint32_t i, uint64_t tokens_estimate, uint64_t now_ns,
                      rt_attempt *a);

/* How an attempt ended. */
typedef enum rt_outcome {
    RT_OK,      /* answered: a latency sample, a success for the breaker */
    RT_FAIL,    /* upstream or provider failure (5xx, 429, timeout, reset): counts for the
                   breaker */
    RT_NEUTRAL, /* client error (4xx other than 429), client went away: no breaker effect */
} rt_outcome;

/* The attempt a ended with outcome o. ttft_ns: time to first token of a
 * stream (0 = not a stream); total_ns: the whole attempt; tokens_actual:
 * tokens it really used (replaces the estimate for tpm). */
void rt_attempt_end(rt_group *g, const rt_attempt *a, rt_outcome o, uint64_t ttft_ns,
                    uint64_t total_ns, uint64_t tokens_actual, uint64_t now_ns);

/* Circuit state of a route. */
typedef enum rt_circuit {
    RT_CLOSED,    /* calls go through */
    RT_OPEN,      /* left out of plans until the cooldown passes */
    RT_HALF_OPEN, /* one probe at a time decides */
} rt_circuit;

/* "closed", "open", "half-open". */
const char *rt_circuit_name(rt_circuit c);

/* A route's state, for /admin/providers/health and metrics. */
typedef struct rt_route_stats {
    rt_circuit circuit;            /* as of now_ns (an elapsed cooldown shows half-open) */
    uint64_t opened_at_ns;         /* when it last opened (0 = never) */
    bool probe_in_flight;          /* half-open: the probe is out */
    uint32_t in_flight;            /* attempts started, not ended */
    double ewma_ttft_ms;           /* time to first token of streams (0 without samples) */
    double ewma_total_ms;          /* total latency of whole answers (0 without samples) */
    uint64_t ttft_samples;         /* stream samples taken */
    uint64_t total_samples;        /* whole-answer samples taken */
    uint64_t requests;             /* attempts ended, any outcome */
    uint64_t failures;             /* of which RT_FAIL */
    uint64_t consecutive_failures; /* the breaker's current run of failures while closed */
    uint64_t window_requests;      /* counted outcomes in the error-rate window */
    uint64_t window_failures;      /* of which failures */
    uint64_t rpm_used;             /* requests in the last minute (sliding estimate) */
    uint64_t tpm_used;             /* tokens in the last minute (sliding estimate) */
} rt_route_stats;

/* Fills *out with route i's state as of now_ns (changes nothing). */
void rt_route_stats_get(const rt_group *g, uint32_t i, uint64_t now_ns, rt_route_stats *out);

#endif
