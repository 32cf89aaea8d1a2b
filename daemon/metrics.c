/* metrics.c - the request counters and histograms behind GET /metrics. */
#define _GNU_SOURCE /* strndup */
#include "daemon/metrics.h"

#include <errno.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_SLOTS 1024
#define NLAB 3

/* Bucket upper bounds: 10 us to 10 minutes, so the gateway's own
 * microseconds and an LLM's minutes both resolve. */
static const uint64_t bucket_ns[METRICS_BUCKETS] = {
    10000ull,        25000ull,        50000ull,        100000ull,       250000ull,
    500000ull,       1000000ull,      2500000ull,      5000000ull,      10000000ull,
    25000000ull,     50000000ull,     100000000ull,    250000000ull,    500000000ull,
    1000000000ull,   2500000000ull,   5000000000ull,   10000000000ull,  30000000000ull,
    60000000000ull,  120000000000ull, 300000000000ull, 600000000000ull,
};
static const char *const bucket_le[METRICS_BUCKETS] = {
    "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
    "0.005",   "0.01",     "0.025",   "0.05",   "0.1",     "0.25",   "0.5",   "1",
    "2.5",     "5",        "10",      "30",     "60",      "120",    "300",   "600",
};

typedef struct hist {
    uint64_t n[METRICS_BUCKETS + 1]; /* per bucket (not cumulative); the last is +Inf */
    uint64_t count;
    uint64_t sum_ns;
} hist;

/* A series: its label values and, after it, the payload of its table. */
typedef struct series {
    struct series *next;  /* hash chain */
    struct series *after; /* insertion order */
    uint64_t hash;
    int status;
    const char *lab[NLAB];
} series;

typedef struct req_series {
    series s; /* alias, provider, route; status */
    uint64_t n;
} req_series;

typedef struct route_series {
    series s; /* alias, provider, route */
    int64_t tok[4]; /* input, output, cached, cache_write */
    int64_t cost, price;
    hist dur, up, ttft;
} route_series;

typedef struct key_series {
    series s; /* key, team */
    uint64_t n;
    int64_t in, out, price;
} key_series;

typedef struct table {
    series *slot[TABLE_SLOTS];
    series *first, **last;
    size_t n;
    size_t size; /* of the payload struct */
} table;

struct metrics {
    table req, route, key;
    bool key_labels;
    hist overhead;
    uint64_t refused[METRICS_REFUSED_N];
    int64_t meter[4]; /* counted prompt, reported prompt, counted completion, reported completion */
};

static const char *const refusal_names[METRICS_REFUSED_N] = {
    "auth", "budget", "credits", "budget_unavailable", "rate_limit", "ledger_full",
};

/* ------------------------------------------------------------ tables */

static void table_init(table *t, size_t size)
{
    memset(t, 0, sizeof(*t));
    t->last = &t->first;
    t->size = size;
}

static void table_free(table *t)
{
    for (series *s = t->first, *n; s; s = n) {
        n = s->after;
        free(s);
    }
    table_init(t, t->size);
}

static uint64_t hash_of(const char *const lab[NLAB], int status)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(unsigned)status;
    for (int i = 0; i < NLAB; i++) {
        for (const char *p = lab[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull; /* "ab","c" differs from "a","bc" */
    }
    return h;
}

static series *table_find(const table *t, const char *const lab[NLAB], int status, uint64_t h)
{
    for (series *s = t->slot[h % TABLE_SLOTS]; s; s = s->next)
        if (s->hash == h && s->status == status && strcmp(s->lab[0], lab[0]) == 0 &&
            strcmp(s->lab[1], lab[1]) == 0 && strcmp(s->lab[2], lab[2]) == 0)
            return s;
    return NULL;
}

static series *table_add(table *t, const char *const lab[NLAB], int status, uint64_t h)
{
    size_t len[NLAB], total = t->size;
    for (int i = 0; i < NLAB; i++) {
        len[i] = strlen(lab[i]) + 1;
        total += len[i];
    }
    series *s = calloc(1, total);
    if (!s)
        return NULL;
    char *p = (char *)s + t->size;
    for (int i = 0; i < NLAB; i++) {
        memcpy(p, lab[i], len[i]);
        s->lab[i] = p;
        p += len[i];
    }
    s->hash = h;
    s->status = status;
    s->next = t->slot[h % TABLE_SLOTS];
    t->slot[h % TABLE_SLOTS] = s;
    *t->last = s;
    t->last = &s->after;
    t->n++;
    return s;
}

/* The series of these labels, made when new; past the cap, the overflow
 * series. NULL only when out of memory. */
static series *table_get(table *t, const char *a, const char *b, const char *c, int status)
{
    const char *lab[NLAB] = {a ? a : "", b ? b : "", c ? c : ""};
    uint64_t h = hash_of(lab, status);
    series *s = table_find(t, lab, status, h);
    if (s)
        return s;
    if (t->n >= METRICS_MAX_SERIES) {
        const char *other[NLAB] = {"_other", "", ""};
        h = hash_of(other, 0);
        s = table_find(t, other, 0, h);
        return s ? s : table_add(t, other, 0, h);
    }
    return table_add(t, lab, status, h);
}

/* ------------------------------------------------------------ counting */

static void hist_add(hist *h, uint64_t ns)
{
    unsigned i = 0;
    while (i < METRICS_BUCKETS && ns > bucket_ns[i])
        i++;
    h->n[i]++;
    h->count++;
    h->sum_ns += ns;
}

static void hist_merge(hist *d, const hist *s)
{
    for (unsigned i = 0; i <= METRICS_BUCKETS; i++)
        d->n[i] += s->n[i];
    d->count += s->count;
    d->sum_ns += s->sum_ns;
}

metrics *metrics_new(bool key_labels)
{
    metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    table_init(&m->req, sizeof(req_series));
    table_init(&m->route, sizeof(route_series));
    table_init(&m->key, sizeof(key_series));
    m->key_labels = key_labels;
    return m;
}

void metrics_free(metrics *m)
{
    if (!m)
        return;
    table_free(&m->req);
    table_free(&m->route);
    table_free(&m->key);
    free(m);
}

void metrics_set_key_labels(metrics *m, bool on) { m->key_labels = on; }

static int64_t nonneg(int64_t v) { return v > 0 ? v : 0; }

void metrics_request(metrics *m, const metrics_call *c)
{
    req_series *r = (req_series *)table_get(&m->req, c->alias, c->provider, c->route, c->status);
    if (r)
        r->n++;
    route_series *rt = (route_series *)table_get(&m->route, c->alias, c->provider, c->route, 0);
    if (rt) {
        rt->tok[0] += nonneg(c->input);
        rt->tok[1] += nonneg(c->output);
        rt->tok[2] += nonneg(c->cached);
        rt->tok[3] += nonneg(c->cache_write);
        rt->cost += nonneg(c->cost_nano);
        rt->price += nonneg(c->price_nano);
        hist_add(&rt->dur, c->duration_ns);
        if (c->upstream_ns)
            hist_add(&rt->up, c->upstream_ns);
        if (c->ttft_ns)
            hist_add(&rt->ttft, c->ttft_ns);
    }
    if (c->overhead_ns)
        hist_add(&m->overhead, c->overhead_ns);
    if (c->counted_prompt >= 0 && c->reported_prompt >= 0) {
        m->meter[0] += c->counted_prompt;
        m->meter[1] += c->reported_prompt;
    }
    if (c->counted_completion >= 0 && c->reported_completion >= 0) {
        m->meter[2] += c->counted_completion;
        m->meter[3] += c->reported_completion;
    }
    if (m->key_labels && c->key && c->key[0]) {
        key_series *k = (key_series *)table_get(&m->key, c->key, c->team, NULL, 0);
        if (k) {
            k->n++;
            k->in += nonneg(c->input);
            k->out += nonneg(c->output);
            k->price += nonneg(c->price_nano);
        }
    }
}

void metrics_refused(metrics *m, metrics_refusal why)
{
    if ((unsigned)why < METRICS_REFUSED_N)
        m->refused[why]++;
}

int metrics_merge(metrics *dst, const metrics *src)
{
    for (const series *s = src->req.first; s; s = s->after) {
        req_series *d = (req_series *)table_get(&dst->req, s->lab[0], s->lab[1], s->lab[2],
                                                s->status);
        if (!d)
            return -ENOMEM;
        d->n += ((const req_series *)s)->n;
    }
    for (const series *s = src->route.first; s; s = s->after) {
        const route_series *f = (const route_series *)s;
        route_series *d = (route_series *)table_get(&dst->route, s->lab[0], s->lab[1], s->lab[2], 0);
        if (!d)
            return -ENOMEM;
        for (int i = 0; i < 4; i++)
            d->tok[i] += f->tok[i];
        d->cost += f->cost;
        d->price += f->price;
        hist_merge(&d->dur, &f->dur);
        hist_merge(&d->up, &f->up);
        hist_merge(&d->ttft, &f->ttft);
    }
    for (const series *s = src->key.first; s; s = s->after) {
        const key_series *f = (const key_series *)s;
        key_series *d = (key_series *)table_get(&dst->key, s->lab[0], s->lab[1], NULL, 0);
        if (!d)
            return -ENOMEM;
        d->n += f->n;
        d->in += f->in;
        d->out += f->out;
        d->price += f->price;
    }
    dst->key_labels = dst->key_labels || src->key_labels;
    hist_merge(&dst->overhead, &src->overhead);
    for (int i = 0; i < METRICS_REFUSED_N; i++)
        dst->refused[i] += src->refused[i];
    for (int i = 0; i < 4; i++)
        dst->meter[i] += src->meter[i];
    return 0;
}

/* ------------------------------------------------------------ rendering */

int metrics_label(buf *out, const char *v)
{
    int rc = 0;
    for (const char *p = v; *p && !rc; p++) {
        if (*p == '\\' || *p == '"')
            rc = buf_printf(out, "\\%c", *p);
        else if (*p == '\n')
            rc = buf_append_str(out, "\\n");
        else
            rc = buf_append(out, p, 1);
    }
    return rc;
}

static int head(buf *out, const char *name, const char *type, const char *help)
{
    return buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int metrics_put(buf *out, const char *name, const char *type, const char *help,
                const char *labels, double v)
{
    int rc = help ? head(out, name, type, help) : 0;
    if (!rc)
        rc = buf_printf(out, "%s%s%s%s %.17g\n", name, labels ? "{" : "", labels ? labels : "",
                        labels ? "}" : "", v);
    return rc;
}

/* name{k="v",...extra} with s's label values under names */
static int series_open(buf *out, const char *name, const char *suffix, const series *s,
                       const char *const names[], int n)
{
    int rc = buf_printf(out, "%s%s{", name, suffix);
    for (int i = 0; i < n && !rc; i++) {
        rc = buf_printf(out, "%s%s=\"", i ? "," : "", names[i]);
        if (!rc)
            rc = metrics_label(out, s->lab[i]);
        if (!rc)
            rc = buf_append(out, "\"", 1);
    }
    return rc;
}

static const char *const route_names[] = {"alias", "provider", "route"};
static const char *const key_names[] = {"key", "team"};

static int render_hist(buf *out, const char *name, const char *help, const table *t, size_t off)
{
    int rc = head(out, name, "histogram", help);
    for (const series *s = t->first; s && !rc; s = s->after) {
        const hist *h = (const hist *)((const char *)s + off);
        if (!h->count)
            continue;
        uint64_t cum = 0;
        for (unsigned i = 0; i <= METRICS_BUCKETS && !rc; i++) {
            cum += h->n[i];
            rc = series_open(out, name, "_bucket", s, route_names, 3);
            if (!rc)
                rc = buf_printf(out, ",le=\"%s\"} %" PRIu64 "\n",
                                i < METRICS_BUCKETS ? bucket_le[i] : "+Inf", cum);
        }
        if (!rc)
            rc = series_open(out, name, "_sum", s, route_names, 3);
        if (!rc)
            rc = buf_printf(out, "} %.9f\n", (double)h->sum_ns / 1e9);
        if (!rc)
            rc = series_open(out, name, "_count", s, route_names, 3);
        if (!rc)
            rc = buf_printf(out, "} %" PRIu64 "\n", h->count);
    }
    return rc;
}

/* The overhead histogram: no labels. */
static int render_overhead(buf *out, const hist *h)
{
    const char *name = "tollgate_gateway_overhead_seconds";
    int rc = head(out, name, "histogram",
                  "Time a proxied call spent in tollgate's own code (parsing, translation, "
                  "metering), upstream and client waits excluded.");
    uint64_t cum = 0;
    for (unsigned i = 0; i <= METRICS_BUCKETS && !rc; i++) {
        cum += h->n[i];
        rc = buf_printf(out, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", name,
                        i < METRICS_BUCKETS ? bucket_le[i] : "+Inf", cum);
    }
    if (!rc)
        rc = buf_printf(out, "%s_sum %.9f\n%s_count %" PRIu64 "\n", name,
                        (double)h->sum_ns / 1e9, name, h->count);
    return rc;
}

/* A counter family over the route table: one value per series. */
static int render_route_counter(buf *out, const char *name, const char *help, const table *t,
                                int what)
{
    int rc = head(out, name, "counter", help);
    for (const series *s = t->first; s && !rc; s = s->after) {
        const route_series *r = (const route_series *)s;
        if (!s->lab[0][0])
            continue; /* not a model call: no tokens, no money */
        if (what == 0) { /* tokens, by kind */
            static const char *const kinds[4] = {"input", "output", "cached_read", "cache_write"};
            for (int k = 0; k < 4 && !rc; k++) {
                if (!r->tok[k] && k >= 2)
                    continue;
                rc = series_open(out, name, "", s, route_names, 3);
                if (!rc)
                    rc = buf_printf(out, ",kind=\"%s\"} %" PRId64 "\n", kinds[k], r->tok[k]);
            }
            continue;
        }
        int64_t v = what == 1 ? r->cost : r->price;
        rc = series_open(out, name, "", s, route_names, 3);
        if (!rc)
            rc = buf_printf(out, "} %" PRId64 ".%09" PRId64 "\n", v / 1000000000,
                            v % 1000000000);
    }
    return rc;
}

int metrics_render(const metrics *m, buf *out)
{
    int rc = head(out, "tollgate_requests_total", "counter",
                  "Requests answered, by model alias, provider, route and HTTP status (alias \"\": "
                  "not a model call, or an unknown model).");
    for (const series *s = m->req.first; s && !rc; s = s->after) {
        rc = series_open(out, "tollgate_requests_total", "", s, route_names, 3);
        if (!rc)
            rc = buf_printf(out, ",status=\"%d\"} %" PRIu64 "\n", s->status,
                            ((const req_series *)s)->n);
    }
    if (!rc)
        rc = render_hist(out, "tollgate_request_duration_seconds",
                         "Request duration, from its first byte to the last byte answered.",
                         &m->route, offsetof(route_series, dur));
    if (!rc)
        rc = render_hist(out, "tollgate_upstream_duration_seconds",
                         "Upstream call duration, from the connection to the answer's end "
                         "(the attempt that answered).",
                         &m->route, offsetof(route_series, up));
    if (!rc)
        rc = render_hist(out, "tollgate_time_to_first_token_seconds",
                         "From the request to the first byte of the answer's body.", &m->route,
                         offsetof(route_series, ttft));
    if (!rc)
        rc = render_overhead(out, &m->overhead);
    if (!rc)
        rc = render_route_counter(out, "tollgate_tokens_total",
                                  "Tokens by kind: input, output, cached_read (input served from "
                                  "the provider's cache), cache_write.",
                                  &m->route, 0);
    if (!rc)
        rc = render_route_counter(out, "tollgate_cost_usd_total",
                                  "What the providers charge for the calls (USD).", &m->route, 1);
    if (!rc)
        rc = render_route_counter(out, "tollgate_price_usd_total",
                                  "What the callers are charged for the calls (USD).", &m->route,
                                  2);
    if (!rc)
        rc = head(out, "tollgate_refusals_total", "counter",
                  "Requests refused before going upstream, by reason.");
    for (int i = 0; i < METRICS_REFUSED_N && !rc; i++)
        rc = buf_printf(out, "tollgate_refusals_total{reason=\"%s\"} %" PRIu64 "\n",
                        refusal_names[i], m->refused[i]);
    if (!rc)
        rc = head(out, "tollgate_meter_tokens_total", "counter",
                  "Tokens of calls where both the stream meter and the provider's usage are "
                  "known: counted by tollgate's tokenizer and reported by the provider; the "
                  "difference is the meter's drift.");
    static const char *const meter_lab[4] = {
        "kind=\"prompt\",source=\"counted\"", "kind=\"prompt\",source=\"reported\"",
        "kind=\"completion\",source=\"counted\"", "kind=\"completion\",source=\"reported\""};
    for (int i = 0; i < 4 && !rc; i++)
        rc = buf_printf(out, "tollgate_meter_tokens_total{%s} %" PRId64 "\n", meter_lab[i],
                        m->meter[i]);
    if (!rc && m->key_labels) {
        rc = head(out, "tollgate_key_requests_total", "counter",
                  "Model calls by virtual key alias and team (metrics.key_labels).");
        for (const series *s = m->key.first; s && !rc; s = s->after) {
            rc = series_open(out, "tollgate_key_requests_total", "", s, key_names, 2);
            if (!rc)
                rc = buf_printf(out, "} %" PRIu64 "\n", ((const key_series *)s)->n);
        }
        if (!rc)
            rc = head(out, "tollgate_key_tokens_total", "counter",
                      "Tokens by virtual key alias, team and kind (metrics.key_labels).");
        for (const series *s = m->key.first; s && !rc; s = s->after) {
            const key_series *k = (const key_series *)s;
            rc = series_open(out, "tollgate_key_tokens_total", "", s, key_names, 2);
            if (!rc)
                rc = buf_printf(out, ",kind=\"input\"} %" PRId64 "\n", k->in);
            if (!rc)
                rc = series_open(out, "tollgate_key_tokens_total", "", s, key_names, 2);
            if (!rc)
                rc = buf_printf(out, ",kind=\"output\"} %" PRId64 "\n", k->out);
        }
        if (!rc)
            rc = head(out, "tollgate_key_price_usd_total", "counter",
                      "What each virtual key was charged (USD; metrics.key_labels).");
        for (const series *s = m->key.first; s && !rc; s = s->after) {
            int64_t v = ((const key_series *)s)->price;
            rc = series_open(out, "tollgate_key_price_usd_total", "", s, key_names, 2);
            if (!rc)
                rc = buf_printf(out, "} %" PRId64 ".%09" PRId64 "\n", v / 1000000000,
                                v % 1000000000);
        }
    }
    return rc;
}

/* ------------------------------------------------------------ text merge */

/* A value of one sample line, kept exact where the text is: an integer,
 * a decimal of at most 9 fractional digits (nano units: money, seconds),
 * else a double. Mixed kinds fall back to the widest. */
enum { V_INT, V_FIX, V_DBL };

typedef struct mg_sample {
    char *key;     /* the series: everything before the value */
    size_t keylen;
    uint64_t hash;
    int kind;
    int frac;      /* fractional digits shown (V_FIX) */
    int64_t i;     /* V_INT: the value; V_FIX: nano units */
    double d;      /* the value as a double (always kept) */
    size_t next_in_family;
    bool has_next;
} mg_sample;

typedef struct mg_family {
    char *name;
    char *head; /* its # HELP and # TYPE lines */
    int op;     /* 0 sum, 1 max, 2 min */
    size_t first, last;
    bool any;
} mg_family;

typedef struct mg {
    mg_family *fam;
    size_t nfam, capfam;
    mg_sample *s;
    size_t ns, caps;
    size_t *slot; /* open addressing, index + 1 */
    size_t nslot;
} mg;

/* Families whose samples are states, not amounts: the process shows the
 * worst (a circuit open on any loop) or the least (listening on every
 * loop) rather than a sum. */
static int family_op(const char *name, size_t n)
{
    static const struct {
        const char *name;
        int op;
    } ops[] = {{"tollgate_route_circuit_state", 1},
               {"tollgate_build_info", 1},
               {"tollgate_db_listening", 2},
               {"tollgate_ledger_accepting", 2}};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (strlen(ops[i].name) == n && memcmp(ops[i].name, name, n) == 0)
            return ops[i].op;
    return 0;
}

static uint64_t mg_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

/* Parses v (n bytes) into kind/i/frac and d. */
static void mg_value(const char *v, size_t n, int *kind, int64_t *iv, int *frac, double *d)
{
    char tmp[64];
    size_t k = n < sizeof(tmp) - 1 ? n : sizeof(tmp) - 1;
    memcpy(tmp, v, k);
    tmp[k] = '\0';
    *d = strtod(tmp, NULL);
    *kind = V_DBL;
    size_t p = tmp[0] == '-' ? 1 : 0, ip = 0, fp = 0;
    int64_t whole = 0, part = 0;
    while (p < k && tmp[p] >= '0' && tmp[p] <= '9' && ip < 19) {
        whole = whole * 10 + (tmp[p++] - '0');
        ip++;
    }
    if (ip == 0 || ip > 18)
        return;
    if (p == k) {
        *kind = V_INT;
        *iv = tmp[0] == '-' ? -whole : whole;
        *frac = 0;
        return;
    }
    if (tmp[p] != '.' || ip > 9)
        return;
    p++;
    while (p < k && tmp[p] >= '0' && tmp[p] <= '9' && fp < 10) {
        part = part * 10 + (tmp[p++] - '0');
        fp++;
    }
    if (p != k || fp == 0 || fp > 9)
        return;
    for (size_t z = fp; z < 9; z++)
        part *= 10;
    *kind = V_FIX;
    *frac = (int)fp;
    *iv = (whole * 1000000000 + part) * (tmp[0] == '-' ? -1 : 1);
}

static int mg_grow_slots(mg *m)
{
    size_t n = m->nslot ? m->nslot * 2 : 1024;
    size_t *slot = calloc(n, sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    for (size_t i = 0; i < m->ns; i++) {
        size_t j = m->s[i].hash & (n - 1);
        while (slot[j])
            j = (j + 1) & (n - 1);
        slot[j] = i + 1;
    }
    free(m->slot);
    m->slot = slot;
    m->nslot = n;
    return 0;
}

static mg_family *mg_family_get(mg *m, const char *name, size_t n)
{
    for (size_t i = m->nfam; i-- > 0;)
        if (strlen(m->fam[i].name) == n && memcmp(m->fam[i].name, name, n) == 0)
            return &m->fam[i];
    if (m->nfam == m->capfam) {
        size_t c = m->capfam ? m->capfam * 2 : 64;
        mg_family *f = realloc(m->fam, c * sizeof(*f));
        if (!f)
            return NULL;
        m->fam = f;
        m->capfam = c;
    }
    mg_family *f = &m->fam[m->nfam];
    memset(f, 0, sizeof(*f));
    f->name = strndup(name, n);
    f->head = strdup("");
    if (!f->name || !f->head) {
        free(f->name);
        free(f->head);
        return NULL;
    }
    f->op = family_op(name, n);
    m->nfam++;
    return f;
}

/* One "# HELP" / "# TYPE" line: kept once for its family. */
static int mg_head(mg *m, const char *line, size_t n, size_t *cur)
{
    const char *name = line + 7, *end = line + n;
    const char *sp = memchr(name, ' ', (size_t)(end - name));
    if (!sp)
        sp = end;
    mg_family *f = mg_family_get(m, name, (size_t)(sp - name));
    if (!f)
        return -ENOMEM;
    *cur = (size_t)(f - m->fam);
    bool help = memcmp(line, "# HELP ", 7) == 0;
    if (strstr(f->head, help ? "# HELP " : "# TYPE "))
        return 0; /* already had one from another loop */
    size_t hl = strlen(f->head);
    char *h = realloc(f->head, hl + n + 2);
    if (!h)
        return -ENOMEM;
    memcpy(h + hl, line, n);
    h[hl + n] = '\n';
    h[hl + n + 1] = '\0';
    f->head = h;
    return 0;
}

static int mg_sample_add(mg *m, size_t fam, const char *line, size_t n)
{
    const char *sp = NULL;
    for (size_t i = n; i-- > 0;)
        if (line[i] == ' ') {
            sp = line + i;
            break;
        }
    if (!sp)
        return 0; /* not a sample line */
    size_t kl = (size_t)(sp - line);
    int kind, frac = 0;
    int64_t iv = 0;
    double d;
    mg_value(sp + 1, n - kl - 1, &kind, &iv, &frac, &d);
    if ((m->ns + 1) * 2 > m->nslot && mg_grow_slots(m) != 0)
        return -ENOMEM;
    uint64_t h = mg_hash(line, kl);
    size_t j = h & (m->nslot - 1);
    while (m->slot[j]) {
        mg_sample *s = &m->s[m->slot[j] - 1];
        if (s->hash == h && s->keylen == kl && memcmp(s->key, line, kl) == 0) {
            int op = m->fam[fam].op;
            if (s->kind == V_INT && kind == V_FIX) {
                s->i *= 1000000000;
                s->kind = V_FIX;
            } else if (s->kind == V_FIX && kind == V_INT) {
                iv *= 1000000000;
                kind = V_FIX;
            }
            if (kind == V_DBL || s->kind == V_DBL)
                s->kind = V_DBL;
            if (frac > s->frac)
                s->frac = frac;
            if (op == 0) {
                s->i += iv;
                s->d += d;
            } else if ((op == 1) == (d > s->d)) {
                s->i = iv;
                s->d = d;
            }
            return 0;
        }
        j = (j + 1) & (m->nslot - 1);
    }
    if (m->ns == m->caps) {
        size_t c = m->caps ? m->caps * 2 : 256;
        mg_sample *ns = realloc(m->s, c * sizeof(*ns));
        if (!ns)
            return -ENOMEM;
        m->s = ns;
        m->caps = c;
    }
    mg_sample *s = &m->s[m->ns];
    memset(s, 0, sizeof(*s));
    s->key = strndup(line, kl);
    if (!s->key)
        return -ENOMEM;
    s->keylen = kl;
    s->hash = h;
    s->kind = kind;
    s->frac = frac;
    s->i = iv;
    s->d = d;
    m->slot[j] = m->ns + 1;
    mg_family *f = &m->fam[fam];
    if (f->any) {
        m->s[f->last].next_in_family = m->ns;
        m->s[f->last].has_next = true;
    } else {
        f->first = m->ns;
        f->any = true;
    }
    f->last = m->ns;
    m->ns++;
    return 0;
}

static int mg_put(const mg_sample *s, buf *out)
{
    int rc = buf_append(out, s->key, s->keylen);
    if (rc)
        return rc;
    if (s->kind == V_INT)
        return buf_printf(out, " %" PRId64 "\n", s->i);
    if (s->kind == V_FIX) {
        int64_t a = s->i < 0 ? -s->i : s->i;
        char frac[16];
        snprintf(frac, sizeof frac, "%09" PRId64, a % 1000000000);
        frac[s->frac] = '\0';
        return buf_printf(out, " %s%" PRId64 ".%s\n", s->i < 0 ? "-" : "", a / 1000000000, frac);
    }
    return buf_printf(out, " %.17g\n", s->d);
}

int metrics_text_merge(const buf *texts, size_t n, buf *out)
{
    mg m = {0};
    int rc = 0;
    for (size_t t = 0; t < n && !rc; t++) {
        const char *p = texts[t].data, *end = p + texts[t].len;
        size_t cur = SIZE_MAX;
        while (p && p < end && !rc) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
            if (len > 7 && (memcmp(p, "# HELP ", 7) == 0 || memcmp(p, "# TYPE ", 7) == 0))
                rc = mg_head(&m, p, len, &cur);
            else if (len && p[0] != '#') {
                if (cur == SIZE_MAX) { /* a sample before any HELP/TYPE: its own family */
                    size_t nl2 = strcspn(p, "{ ");
                    mg_family *f = mg_family_get(&m, p, nl2 < len ? nl2 : len);
                    if (!f)
                        rc = -ENOMEM;
                    else
                        cur = (size_t)(f - m.fam);
                }
                if (!rc)
                    rc = mg_sample_add(&m, cur, p, len);
            }
            p = nl ? nl + 1 : end;
        }
    }
    for (size_t f = 0; f < m.nfam && !rc; f++) {
        rc = buf_append_str(out, m.fam[f].head);
        for (size_t i = m.fam[f].first; m.fam[f].any && !rc;) {
            rc = mg_put(&m.s[i], out);
            if (!m.s[i].has_next)
                break;
            i = m.s[i].next_in_family;
        }
    }
    for (size_t f = 0; f < m.nfam; f++) {
        free(m.fam[f].name);
        free(m.fam[f].head);
    }
    for (size_t i = 0; i < m.ns; i++)
        free(m.s[i].key);
    free(m.fam);
    free(m.s);
    free(m.slot);
    return rc;
}
