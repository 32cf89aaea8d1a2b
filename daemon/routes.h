/* routes.h - the routes of every model alias, with their state, on one
 * loop: what the gateway plans a call over (providers/router.h) and what
 * GET /admin/providers/health shows.
 *
 * A route_set is one alias's routes and its rt_group (strategy, circuit
 * breakers, latency averages, local limits), plus per route the last error
 * and a latency histogram for percentiles. Sets of config aliases are made
 * with the table (one per models[] entry, in file order, and one per
 * power level over the routes of its aliases); sets of database
 * aliases when first used, and again when the alias changes (its version).
 * Sets are reference-counted: a call holds its set until it ends, so a
 * reload (a new table) or a changed alias never frees state a call still
 * reports to. A reload starts every route's state afresh. */
#ifndef TG_DAEMON_ROUTES_H
#define TG_DAEMON_ROUTES_H

#include <stdbool.h>
#include <stdint.h>

#include "billing/prices.h"
#include "billing/tenants.h"
#include "daemon/base/buf.h"
#include "daemon/config.h"
#include "daemon/httpc.h"
#include "providers/router.h"

#define ROUTE_LAT_BUCKETS 24 /* latency histogram: 1 ms doubling to ~2.3 h */

typedef struct route_health {
    char last_error[160];                 /* the latest failure, "" = none */
    int64_t last_error_us;                /* when (wall clock), 0 = never */
    uint64_t lat[ROUTE_LAT_BUCKETS];      /* successful attempts by total latency */
    uint64_t lat_n;
    uint64_t retries;   /* failed attempts tried again on this route */
    uint64_t fallbacks; /* failed attempts that moved the call to another route */
} route_health;

typedef struct route_set {
    unsigned refs;
    const config *cfg;           /* own reference: routes and providers live in it */
    char alias[201];             /* the alias's name */
    bool db;                     /* a database alias */
    bool level;                  /* a power level's routes (owners says whose) */
    bool caps_matter;            /* some route lacks a capability: calls are checked for them */
    char db_id[37];              /* its id */
    int64_t version;             /* its version when built */
    const config_route *routes;  /* config: the alias's own; database: routes_own */
    config_route *routes_own;    /* database aliases: made from the row (models copied) */
    size_t n;
    rt_group *grp;
    route_health *health;        /* n entries */
    char (*labels)[320];         /* "provider/model" per route */
    const config_model **owners; /* a power level's set: the alias each route is of */
    struct route_set *next;      /* the table's list */
} route_set;

typedef struct route_table route_table;

/* A table for cfg with a set for each of its aliases (routes without a
 * price of their own are priced from the catalog prices, which may be
 * NULL, for lowest-cost); NULL on ENOMEM. */
route_table *route_table_new(const config *cfg, const price_table *prices);
/* Drops the table's references (sets held by calls live on). */
void route_table_free(route_table *t);

/* The set of config alias m (a pointer into the table's config's models),
 * with a reference for the caller; NULL if m is not one of them. */
route_set *route_table_config(route_table *t, const config_model *m);
/* The set of database alias a, built on first use or when a changed;
 * routes naming a provider the config lacks are left out (NULL when none
 * is left, or ENOMEM). A reference for the caller. */
route_set *route_table_db(route_table *t, const tn_alias *a);
/* The set of power level l: every route of the config aliases in it
 * (routing.level_strategy), with a reference; NULL when none is in it. */
route_set *route_table_level(route_table *t, config_level l);

/* Where calls to provider p go (host, TLS, pool limits, proxy). */
httpc_target route_target(const config_provider *p);

route_set *route_set_ref(route_set *s);
void route_set_unref(route_set *s);

/* An attempt on route i ended: a failure (why, at wall time now_us) or a
 * success that took total_ns. */
void route_note_failure(route_set *s, uint32_t i, const char *why, int64_t now_us);
void route_note_latency(route_set *s, uint32_t i, uint64_t total_ns);

/* A failed attempt on route i is tried again there (same) or moves on. */
void route_note_retry(route_set *s, uint32_t i, bool same);

/* For GET /metrics: per route, attempts by outcome, retries, fallbacks,
 * circuit state and attempts in flight, in the Prometheus text format
 * (HELP and TYPE lines included). */
int route_table_metrics(route_table *t, uint64_t now_ns, buf *out);

/* An active health check of provider p ended (daemon/checks.h): fed to
 * every route on p, in every set, as an attempt with outcome o. */
void route_table_feed(route_table *t, const config_provider *p, rt_outcome o, uint64_t latency_ns,
                      const char *why);

/* For GET /admin/providers/health: every route of every set in use, with
 * its circuit, last error, in-flight count, averages and p50/p90/p99, as
 * JSON array members (no brackets). */
int route_table_health_json(route_table *t, uint64_t now_ns, buf *out);

#endif
