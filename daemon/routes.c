/* routes.c - the routes of every model alias, with their state (see
 * routes.h). */
#include "daemon/routes.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "daemon/metrics.h"

struct route_table {
    const config *cfg;         /* own reference */
    const price_table *prices; /* for lowest-cost without a route price; may be NULL */
    route_set **by_model;      /* a set per cfg->models[i] */
    route_set *levels[CONFIG_NLEVELS]; /* a set per power level with aliases, else NULL */
    route_set *db;             /* database aliases' sets, most recent first */
};

/* The catalog's rates of route r (its own price when given); -1 unknown. */
static void route_rates(const route_table *t, const config_route *r, int64_t *in, int64_t *out)
{
    *in = *out = -1;
    if (r->cost.given) {
        *in = r->cost.input;
        *out = r->cost.output;
        return;
    }
    const char *cp = config_provider_catalog(r->provider->type);
    const price_entry *pe = cp && t->prices && r->model ? prices_find(t->prices, cp, r->model) : NULL;
    if (pe) {
        *in = pe->input;
        *out = pe->output;
    }
}

static void set_free(route_set *s)
{
    rt_group_free(s->grp);
    if (s->routes_own && !s->level) /* database aliases' model names are copies */
        for (size_t i = 0; i < s->n; i++)
            free((char *)s->routes_own[i].model);
    free(s->routes_own);
    free(s->owners);
    free(s->health);
    free(s->labels);
    config_unref(s->cfg);
    free(s);
}

/* A set over routes[0..n) (borrowed from cfg, or owned when own). */
static route_set *set_new(const route_table *t, const char *alias, const config_route *routes,
                          config_route *own, size_t n, rt_strategy strategy)
{
    route_set *s = calloc(1, sizeof(*s));
    rt_route_spec specs[RT_MAX_ROUTES];
    if (!s || n == 0 || n > RT_MAX_ROUTES)
        goto fail;
    s->refs = 1;
    s->cfg = config_ref(t->cfg);
    snprintf(s->alias, sizeof(s->alias), "%s", alias);
    s->routes = routes;
    s->routes_own = own;
    s->n = n;
    s->health = calloc(n, sizeof(*s->health));
    s->labels = calloc(n, sizeof(*s->labels));
    if (!s->health || !s->labels)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const config_route *r = &routes[i];
        snprintf(s->labels[i], sizeof(s->labels[i]), "%s/%s", r->provider->name,
                 r->model ? r->model : "*");
        int64_t in, out;
        route_rates(t, r, &in, &out);
        s->caps_matter |= r->caps != CONFIG_CAP_ALL;
        specs[i] = (rt_route_spec){
            .label = s->labels[i],
            .weight = r->weight,
            .priority = (int32_t)r->priority,
            .price_in = in,
            .price_out = out,
            .context_tokens = r->context,
            .caps = r->caps,
            .max_concurrent = r->max_concurrent,
            .rpm = r->rpm,
            .tpm = r->tpm,
        };
    }
    const config *c = t->cfg;
    rt_breaker_opts b = {
        .failures = c->routing.failures,
        .window_ms = c->routing.window_ms,
        .min_requests = c->routing.min_requests,
        .error_pct = c->routing.error_pct,
        .cooldown_ms = c->routing.cooldown_ms,
        .probes = 1,
    };
    s->grp = rt_group_new(specs, n, strategy, &b);
    if (!s->grp)
        goto fail;
    return s;
fail:
    if (s) {
        s->routes_own = NULL; /* the caller frees what it passed */
        if (s->cfg)
            set_free(s);
        else
            free(s);
    }
    return NULL;
}

/* The set of level l over the routes of its aliases (0 when it has none). */
static int level_new(route_table *t, config_level l)
{
    size_t n = 0;
    const config *cfg = t->cfg;
    for (size_t i = 0; i < cfg->nmodels; i++)
        if (cfg->models[i].level == l)
            n += cfg->models[i].nroutes;
    if (!n)
        return 0;
    if (n > RT_MAX_ROUTES) {
        log_warn(NULL, "level %s: %zu routes, only the first %d are used", config_level_name(l),
                 n, RT_MAX_ROUTES);
        n = RT_MAX_ROUTES;
    }
    config_route *own = calloc(n, sizeof(*own));
    const config_model **owners = calloc(n, sizeof(*owners));
    size_t k = 0;
    for (size_t i = 0; own && owners && i < cfg->nmodels && k < n; i++) {
        const config_model *m = &cfg->models[i];
        for (size_t j = 0; m->level == l && j < m->nroutes && k < n; j++, k++) {
            own[k] = m->routes[j];
            owners[k] = m;
        }
    }
    route_set *s = own && owners ? set_new(t, config_level_name(l), own, NULL, n,
                                           cfg->routing.level_strategy)
                                 : NULL;
    if (!s) {
        free(own);
        free(owners);
        return -1;
    }
    s->routes_own = own; /* the copies are owned; their model strings are the config's */
    s->owners = owners;
    s->level = true;
    t->levels[l] = s;
    return 0;
}

route_table *route_table_new(const config *cfg, const price_table *prices)
{
    route_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cfg = config_ref(cfg);
    t->prices = prices;
    t->by_model = calloc(cfg->nmodels ? cfg->nmodels : 1, sizeof(*t->by_model));
    if (!t->by_model) {
        route_table_free(t);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const config_model *m = &cfg->models[i];
        t->by_model[i] = set_new(t, m->name, m->routes, NULL, m->nroutes, m->strategy);
        if (!t->by_model[i]) {
            route_table_free(t);
            return NULL;
        }
    }
    for (int l = CONFIG_LEVEL_ECO; l < CONFIG_NLEVELS; l++) {
        if (level_new(t, (config_level)l) != 0) {
            route_table_free(t);
            return NULL;
        }
    }
    return t;
}

void route_table_free(route_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; t->by_model && i < t->cfg->nmodels; i++)
        if (t->by_model[i])
            route_set_unref(t->by_model[i]);
    free(t->by_model);
    for (int l = 0; l < CONFIG_NLEVELS; l++)
        route_set_unref(t->levels[l]);
    while (t->db) {
        route_set *s = t->db;
        t->db = s->next;
        route_set_unref(s);
    }
    config_unref(t->cfg);
    free(t);
}

httpc_target route_target(const config_provider *p)
{
    return (httpc_target){
        .host = p->url.host,
        .port = p->url.port,
        .tls = p->url.tls,
        .tls_verify = p->tls_verify,
        .ca_file = p->ca_file,
        .max_connections = p->pool_max_connections,
        .idle_timeout_ms = p->pool_idle_timeout_ms,
        .proxy_host = p->proxy_host[0] ? p->proxy_host : NULL,
        .proxy_port = p->proxy_port,
        .proxy_auth = p->proxy_auth[0] ? p->proxy_auth : NULL,
    };
}

route_set *route_set_ref(route_set *s)
{
    s->refs++;
    return s;
}

void route_set_unref(route_set *s)
{
    if (s && --s->refs == 0)
        set_free(s);
}

route_set *route_table_config(route_table *t, const config_model *m)
{
    if (m < t->cfg->models || m >= t->cfg->models + t->cfg->nmodels)
        return NULL;
    return route_set_ref(t->by_model[m - t->cfg->models]);
}

route_set *route_table_level(route_table *t, config_level l)
{
    return (unsigned)l < CONFIG_NLEVELS && t->levels[l] ? route_set_ref(t->levels[l]) : NULL;
}

route_set *route_table_db(route_table *t, const tn_alias *a)
{
    route_set **pp = &t->db;
    for (; *pp; pp = &(*pp)->next) {
        route_set *s = *pp;
        if (strcmp(s->db_id, a->e.id.s) != 0)
            continue;
        if (s->version == a->e.version)
            return route_set_ref(s);
        *pp = s->next; /* the alias changed: a new set replaces it */
        route_set_unref(s);
        break;
    }
    size_t n = 0;
    config_route *own = calloc(a->nroutes ? a->nroutes : 1, sizeof(*own));
    if (!own)
        return NULL;
    for (size_t i = 0; i < a->nroutes && n < RT_MAX_ROUTES; i++) {
        const config_provider *p = config_find_provider(t->cfg, a->routes[i].provider);
        if (!p)
            continue;
        own[n] = (config_route){
            .provider = p,
            .model = strdup(a->routes[i].model),
            .weight = a->routes[i].weight,
            .priority = a->routes[i].priority > 0 ? (uint32_t)a->routes[i].priority : 0,
            .caps = CONFIG_CAP_ALL,
        };
        if (!own[n].model)
            break;
        n++;
    }
    route_set *s = n ? set_new(t, a->name, own, own, n, RT_PRIORITY) : NULL;
    if (!s) {
        for (size_t i = 0; i < n; i++)
            free((char *)own[i].model);
        free(own);
        if (!n)
            log_warn(NULL, "model alias '%s': no route names a configured provider", a->name);
        return NULL;
    }
    s->db = true;
    snprintf(s->db_id, sizeof(s->db_id), "%s", a->e.id.s);
    s->version = a->e.version;
    s->next = t->db;
    t->db = s;
    return route_set_ref(s);
}

void route_note_failure(route_set *s, uint32_t i, const char *why, int64_t now_us)
{
    if (i >= s->n)
        return;
    snprintf(s->health[i].last_error, sizeof(s->health[i].last_error), "%s", why ? why : "");
    s->health[i].last_error_us = now_us;
}

void route_note_latency(route_set *s, uint32_t i, uint64_t total_ns)
{
    if (i >= s->n)
        return;
    uint64_t ms = total_ns / 1000000;
    unsigned b = 0;
    while (b + 1 < ROUTE_LAT_BUCKETS && ms >= (1ull << b))
        b++;
    s->health[i].lat[b]++;
    s->health[i].lat_n++;
}

void route_note_retry(route_set *s, uint32_t i, bool same)
{
    if (i >= s->n)
        return;
    if (same)
        s->health[i].retries++;
    else
        s->health[i].fallbacks++;
}

typedef enum { M_ATTEMPTS, M_RETRIES, M_FALLBACKS, M_CIRCUIT, M_INFLIGHT, M_N } metric;

static const struct {
    const char *name, *type, *help;
} route_metrics[M_N] = {
    {"tollgate_route_attempts_total", "counter",
     "Upstream attempts by alias, route and outcome (ok, fail, neutral)."},
    {"tollgate_route_retries_total", "counter", "Failed attempts tried again on the same route."},
    {"tollgate_route_fallbacks_total", "counter",
     "Failed attempts after which the call moved to another route."},
    {"tollgate_route_circuit_state", "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open."},
    {"tollgate_route_in_flight", "gauge", "Attempts in flight on the route."},
};

static int set_metric(const route_set *s, metric m, uint64_t now_ns, buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < s->n && !rc; i++) {
        rt_route_stats st;
        rt_route_stats_get(s->grp, (uint32_t)i, now_ns, &st);
        const route_health *h = &s->health[i];
        uint64_t v[3] = {h->lat_n, st.failures, st.requests - h->lat_n - st.failures};
        static const char *const outcome[3] = {"ok", "fail", "neutral"};
        for (int k = 0; k < (m == M_ATTEMPTS ? 3 : 1) && !rc; k++) {
            rc = buf_printf(out, "%s{alias=\"", route_metrics[m].name);
            if (!rc)
                rc = metrics_label(out, s->alias);
            if (!rc)
                rc = buf_append_str(out, "\",route=\"");
            if (!rc)
                rc = metrics_label(out, s->labels[i]);
            if (!rc && m == M_ATTEMPTS)
                rc = buf_printf(out, "\",outcome=\"%s", outcome[k]);
            uint64_t val = m == M_ATTEMPTS    ? v[k]
                           : m == M_RETRIES   ? h->retries
                           : m == M_FALLBACKS ? h->fallbacks
                           : m == M_CIRCUIT   ? (st.circuit == RT_OPEN ? 2 : st.circuit == RT_HALF_OPEN)
                                              : st.in_flight;
            if (!rc)
                rc = buf_printf(out, "\"} %" PRIu64 "\n", val);
        }
    }
    return rc;
}

int route_table_metrics(route_table *t, uint64_t now_ns, buf *out)
{
    int rc = 0;
    for (int m = 0; m < M_N && !rc; m++) {
        rc = buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", route_metrics[m].name, route_metrics[m].help,
                        route_metrics[m].name, route_metrics[m].type);
        for (size_t i = 0; !rc && i < t->cfg->nmodels; i++)
            rc = set_metric(t->by_model[i], (metric)m, now_ns, out);
        for (int l = 0; !rc && l < CONFIG_NLEVELS; l++)
            if (t->levels[l])
                rc = set_metric(t->levels[l], (metric)m, now_ns, out);
        for (const route_set *s = t->db; !rc && s; s = s->next)
            rc = set_metric(s, (metric)m, now_ns, out);
    }
    return rc;
}

/* The upper bound (ms) of the bucket holding quantile q; -1 without samples. */
static int64_t lat_quantile(const route_health *h, double q)
{
    if (!h->lat_n)
        return -1;
    uint64_t want = (uint64_t)(q * (double)h->lat_n + 0.999999), seen = 0;
    for (unsigned b = 0; b < ROUTE_LAT_BUCKETS; b++) {
        seen += h->lat[b];
        if (seen >= want && seen)
            return (int64_t)1 << b;
    }
    return (int64_t)1 << (ROUTE_LAT_BUCKETS - 1);
}

static int set_json(const route_set *s, uint64_t now_ns, bool *first, buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < s->n && !rc; i++) {
        rt_route_stats st;
        rt_route_stats_get(s->grp, (uint32_t)i, now_ns, &st);
        const route_health *h = &s->health[i];
        rc = buf_append_str(out, *first ? "{\"alias\":\"" : ",{\"alias\":\"");
        *first = false;
        if (!rc)
            rc = buf_append_json_escaped(out, s->alias, strlen(s->alias));
        if (!rc)
            rc = buf_append_str(out, "\",\"route\":\"");
        if (!rc)
            rc = buf_append_json_escaped(out, s->labels[i], strlen(s->labels[i]));
        if (!rc)
            rc = buf_printf(out,
                            "\",\"source\":\"%s\",\"circuit\":\"%s\",\"in_flight\":%u,"
                            "\"requests\":%" PRIu64 ",\"failures\":%" PRIu64
                            ",\"consecutive_failures\":%" PRIu64 ",\"ewma_ttft_ms\":%.1f,"
                            "\"ewma_total_ms\":%.1f,\"latency_ms\":{\"p50\":%" PRId64
                            ",\"p90\":%" PRId64 ",\"p99\":%" PRId64 "},\"last_error\":",
                            s->db ? "database" : s->level ? "level" : "config",
                            rt_circuit_name(st.circuit),
                            st.in_flight, st.requests, st.failures, st.consecutive_failures,
                            st.ewma_ttft_ms, st.ewma_total_ms, lat_quantile(h, 0.5),
                            lat_quantile(h, 0.9), lat_quantile(h, 0.99));
        if (!rc && h->last_error[0]) {
            rc = buf_append_str(out, "{\"message\":\"");
            if (!rc)
                rc = buf_append_json_escaped(out, h->last_error, strlen(h->last_error));
            if (!rc)
                rc = buf_printf(out, "\",\"at_us\":%" PRId64 "}}", h->last_error_us);
        } else if (!rc) {
            rc = buf_append_str(out, "null}");
        }
    }
    return rc;
}

static void set_feed(route_set *s, const config_provider *p, rt_outcome o, uint64_t latency_ns,
                     const char *why)
{
    uint64_t now = clock_mono_ns();
    for (size_t i = 0; s && i < s->n; i++) {
        if (s->routes[i].provider != p)
            continue;
        rt_attempt a;
        rt_attempt_start(s->grp, (uint32_t)i, 0, now - latency_ns, &a);
        rt_attempt_end(s->grp, &a, o, 0, latency_ns, 0, now);
        if (o == RT_FAIL)
            route_note_failure(s, (uint32_t)i, why, clock_wall_us());
    }
}

void route_table_feed(route_table *t, const config_provider *p, rt_outcome o, uint64_t latency_ns,
                      const char *why)
{
    for (size_t i = 0; i < t->cfg->nmodels; i++)
        set_feed(t->by_model[i], p, o, latency_ns, why);
    for (int l = 0; l < CONFIG_NLEVELS; l++)
        set_feed(t->levels[l], p, o, latency_ns, why);
    for (route_set *s = t->db; s; s = s->next)
        set_feed(s, p, o, latency_ns, why);
}

int route_table_health_json(route_table *t, uint64_t now_ns, buf *out)
{
    bool first = true;
    int rc = 0;
    for (size_t i = 0; !rc && i < t->cfg->nmodels; i++)
        rc = set_json(t->by_model[i], now_ns, &first, out);
    for (int l = 0; !rc && l < CONFIG_NLEVELS; l++)
        if (t->levels[l])
            rc = set_json(t->levels[l], now_ns, &first, out);
    for (const route_set *s = t->db; !rc && s; s = s->next)
        rc = set_json(s, now_ns, &first, out);
    return rc;
}
