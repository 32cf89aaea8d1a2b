/* metrics.h - the request counters and histograms behind GET /metrics.
 *
 * One set per loop, updated on that loop's thread without locks or
 * atomics; a scrape sums the sets of every loop (metrics_merge into a
 * scratch set) and renders the sum (metrics_render) in the Prometheus
 * text format, base units (seconds, USD, tokens), prefix tollgate_.
 *
 * Label values are never raw client strings: an alias is one the config
 * or the database defines (a request for an unknown model counts under
 * alias=""), a provider is a configured provider's name, a route the
 * route's label, a status an HTTP status. Series are capped
 * (METRICS_MAX_SERIES per kind); past the cap they count under
 * alias="_other". Per-key labels (key alias, team) exist only when the
 * config asks for them (metrics.key_labels).
 *
 * Gauges and counters other modules keep (connections, the database
 * pool, leases, the ledger) are rendered by their owner at scrape time
 * with metrics_put(). */
#ifndef TG_DAEMON_METRICS_H
#define TG_DAEMON_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/base/buf.h"

#define METRICS_MAX_SERIES 4096
#define METRICS_BUCKETS 24 /* 10 us .. 10 min, plus +Inf */

typedef struct metrics metrics;

/* Why a request was refused before it went upstream. */
typedef enum metrics_refusal {
    METRICS_REFUSED_AUTH,               /* no or a wrong key */
    METRICS_REFUSED_BUDGET,             /* a budget is spent (402/403) */
    METRICS_REFUSED_CREDITS,            /* the team's credits are spent (402) */
    METRICS_REFUSED_BUDGET_UNAVAILABLE, /* no lease could be had (503) */
    METRICS_REFUSED_RATE_LIMIT,         /* rpm/tpm (429) */
    METRICS_REFUSED_LEDGER_FULL,        /* the spool is over its bound (503) */
    METRICS_REFUSED_N
} metrics_refusal;

/* One finished request. Strings may be NULL (= ""); times 0 = none. */
typedef struct metrics_call {
    const char *alias, *provider, *route;
    int status;
    uint64_t duration_ns; /* request start to the last byte */
    uint64_t upstream_ns; /* upstream call start to its end; 0 none */
    uint64_t ttft_ns;     /* request start to the first body byte; 0 none */
    uint64_t overhead_ns; /* inside tollgate's own code; 0 none */
    int64_t input, output, cached, cache_write; /* tokens */
    int64_t cost_nano, price_nano;              /* < 0: unknown */
    /* the meter against the provider's usage, when both are known (-1 not) */
    int64_t counted_prompt, reported_prompt, counted_completion, reported_completion;
    const char *key, *team; /* used only with key labels on */
} metrics_call;

metrics *metrics_new(bool key_labels);
void metrics_free(metrics *m);
void metrics_set_key_labels(metrics *m, bool on);

void metrics_request(metrics *m, const metrics_call *c);
void metrics_refused(metrics *m, metrics_refusal why);

/* Adds src's counts to dst. 0 or -ENOMEM. */
int metrics_merge(metrics *dst, const metrics *src);

/* Appends the families (with # HELP and # TYPE) to out. 0 or -ENOMEM. */
int metrics_render(const metrics *m, buf *out);

/* Sums the texts of n loops' scrapes (the Prometheus text format, as
 * rendered by one loop) into one: families in the order first seen, each
 * with its HELP/TYPE once and its series once, values added (integers and
 * decimals of up to 9 places exactly), except state gauges: a route's
 * circuit state shows the worst loop, tollgate_db_listening and
 * tollgate_ledger_accepting the least. 0 or -ENOMEM. */
int metrics_text_merge(const buf *texts, size_t n, buf *out);

/* One sample with its HELP/TYPE lines (help NULL: the sample only, for
 * more series of a family already introduced). labels is the inside of
 * {} already escaped, or NULL. */
int metrics_put(buf *out, const char *name, const char *type, const char *help,
                const char *labels, double v);
/* v as a label value: \\, \" and \n escaped. */
int metrics_label(buf *out, const char *v);

#endif
