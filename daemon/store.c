/* store.c - the tenancy cache filled from PostgreSQL (see store.h).
 *
 * Loads run one kind after another, each in pages of STORE_PAGE rows
 * ordered by id ("WHERE id > $last"), so a large table never arrives as
 * one giant result and never holds the loop for long. A page is parsed
 * row by row into cache entries (billing/tenants.h).
 *
 * Races between a full load and notifications are settled by versions
 * (updated_at): a page row older than the cached entry is ignored. A row
 * deleted while a load is running is remembered as a tombstone until the
 * load ends, so a page fetched just before the delete cannot bring it
 * back. */
#include "daemon/store.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crypto/fernet.h"
#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "daemon/ledger_cols.h"
#include "daemon/migrate.h"

#define STORE_PAGE 2000
#define STORE_CHANNEL "tollgate_cache"
#define STORE_RETRY_MS 1000
#define STORE_MAX_TOMBS 4096
#define STORE_ZERO_ID "00000000-0000-0000-0000-000000000000"

/* SELECT list per kind; every one starts with id and ends with the
 * version (updated_at in microseconds). */
#define VERSION_COL "(extract(epoch from updated_at) * 1000000)::bigint"
static const char *const kind_select[TN_NKINDS] = {
    [TN_TEAM] =
        "SELECT t.id, t.org_id, t.name, t.status, t.budget_mode, t.tokens_per_credit, "
        "(extract(epoch from t.updated_at) * 1000000)::bigint, t.max_budget_nano, "
        "o.max_budget_nano, t.rpm, t.tpm, t.credit_limit_nano, t.power_level "
        "FROM teams t JOIN organizations o ON o.id = t.org_id",
    [TN_KEY] = "SELECT id, encode(key_hash, 'hex'), key_prefix, alias, team_id, "
               "array_to_json(models)::text, array_to_json(access_groups)::text, rpm, tpm, "
               "max_budget_nano, budget_duration, "
               "(extract(epoch from expires_at) * 1000000)::bigint, blocked, " VERSION_COL
               ", power_level FROM virtual_keys",
    [TN_ALIAS] = "SELECT id, name, routes::text, access_group, price_input_nano, "
                 "price_output_nano, price_cached_nano, " VERSION_COL
                 ", markup_bps FROM model_aliases",
    [TN_CRED] = "SELECT id, org_id, provider, secret_enc, active, " VERSION_COL
                " FROM provider_credentials",
    [TN_BYOK] =
        "SELECT id, team_id, key_id, provider, secret_enc, true, " VERSION_COL " FROM byok_keys",
    [TN_ADMIN] =
        "SELECT id, encode(key_hash, 'hex'), name, role, blocked, " VERSION_COL " FROM admin_keys",
    [TN_PRICE] = "SELECT id, provider, model, input_nano, output_nano, cached_input_nano, "
                 "cache_write_nano, " VERSION_COL " FROM price_overrides",
};

/* Per kind: a page of the full load and a single row. Filled at first use
 * (the text is composed from kind_select). */
typedef struct kind_sql {
    char page[1024];
    char row[1024];
    pg_stmt page_stmt;
    pg_stmt row_stmt;
} kind_sql;

static kind_sql store_sql[TN_NKINDS];
static const char *const stmt_names[TN_NKINDS][2] = {
    [TN_TEAM] = {"tg_page_teams", "tg_row_teams"},
    [TN_KEY] = {"tg_page_keys", "tg_row_keys"},
    [TN_ALIAS] = {"tg_page_aliases", "tg_row_aliases"},
    [TN_CRED] = {"tg_page_creds", "tg_row_creds"},
    [TN_BYOK] = {"tg_page_byok", "tg_row_byok"},
    [TN_ADMIN] = {"tg_page_admins", "tg_row_admins"},
    [TN_PRICE] = {"tg_page_prices", "tg_row_prices"},
};

static void store_sql_fill(void)
{
    for (int k = 0; k < TN_NKINDS; k++) {
        kind_sql *q = &store_sql[k];
        const char *id = k == TN_TEAM ? "t.id" : "id"; /* teams join their org */
        snprintf(q->page, sizeof(q->page), "%s WHERE %s > $1::uuid%s ORDER BY %s LIMIT %d",
                 kind_select[k], id, k == TN_CRED ? " AND active" : "", id, STORE_PAGE);
        snprintf(q->row, sizeof(q->row), "%s WHERE %s = $1::uuid", kind_select[k], id);
        q->page_stmt = (pg_stmt){stmt_names[k][0], q->page, 1};
        q->row_stmt = (pg_stmt){stmt_names[k][1], q->row, 1};
    }
}

/* Once per process (every worker's store reads the same texts). */
static void store_sql_init(void)
{
    static uv_once_t once = UV_ONCE_INIT;
    uv_once(&once, store_sql_fill);
}

typedef struct row_req row_req;

/* The ledger's insert: a batch of rows into calls, and exactly the
 * rows inserted (not those a replay sent twice) into usage_daily. */
#define LEDGER_COLS                                                                                \
    "id, at, request_id, instance, key_id, key_alias, team_id, org_id, job_id, endpoint, "         \
    "requested_model, provider, provider_model, stream, status, upstream_status, prompt_tokens, "  \
    "completion_tokens, cached_tokens, cache_write_tokens, usage_source, cost_nano, price_nano, "  \
    "credential, latency_us, ttft_us, error"
/* rows spooled before migration 0008 have no attempts: one */
#define LEDGER_INSERT_COLS LEDGER_COLS ", attempts"
#define LEDGER_SELECT_COLS LEDGER_COLS ", coalesce(attempts, 1)"
/* The rows: one array per column, or for a batch those cannot carry
 * exactly, the JSON array (daemon/ledger_cols.h). */
#define LEDGER_FROM_COLS "WITH r AS (SELECT * FROM " LEDGER_COLS_UNNEST "), "
#define LEDGER_FROM_JSON "WITH r AS (SELECT * FROM " LEDGER_JSON_RECORDSET("$1") "), "
/* Then the calls, their daily rollup, and the credits: teams in a
 * consumption mode pay from their credits for the batch's newly inserted
 * calls, per team (BYOK calls are never charged), and what the instances
 * reported of it to their credit leases is now in the balance (migration
 * 0006): only the calls admitted against a credit lease were reported
 * (credit_leased; not those an instance admitted before it knew the team's
 * credits were enforced), so only theirs comes out of the reported spend. */
#define LEDGER_WRITE                                                                               \
    "ins AS (INSERT INTO calls (" LEDGER_INSERT_COLS ") SELECT " LEDGER_SELECT_COLS " FROM r "     \
    "ON CONFLICT (id, at) DO NOTHING RETURNING *), "                                               \
    "roll AS (INSERT INTO usage_daily AS u (day, org_id, team_id, key_id, key_alias, job_id, "     \
    "requested_model, provider, requests, errors, prompt_tokens, completion_tokens, "              \
    "cached_tokens, cost_nano, price_nano, latency_us_sum) "                                       \
    "SELECT (at AT TIME ZONE 'UTC')::date, org_id, team_id, key_id, key_alias, job_id, "           \
    "requested_model, provider, count(*), count(*) FILTER (WHERE status >= 400), "                 \
    "sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), "                             \
    "coalesce(sum(cost_nano), 0), coalesce(sum(price_nano), 0), sum(latency_us) "                  \
    "FROM ins GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 "                                                    \
    "ON CONFLICT (day, org_id, team_id, key_id, key_alias, job_id, requested_model, provider) "    \
    "DO UPDATE SET requests = u.requests + excluded.requests, errors = u.errors + "                \
    "excluded.errors, prompt_tokens = u.prompt_tokens + excluded.prompt_tokens, "                  \
    "completion_tokens = u.completion_tokens + excluded.completion_tokens, cached_tokens = "       \
    "u.cached_tokens + excluded.cached_tokens, cost_nano = u.cost_nano + excluded.cost_nano, "     \
    "price_nano = u.price_nano + excluded.price_nano, latency_us_sum = u.latency_us_sum + "        \
    "excluded.latency_us_sum), "                                                                   \
    "insl AS (SELECT i.*, NOT EXISTS (SELECT 1 FROM r WHERE r.id = i.id AND r.at = i.at AND "      \
    "r.credit_leased IS FALSE) AS leased FROM ins i), "                                            \
    "chgs AS (SELECT i.team_id, count(*) AS calls, CASE WHEN t.budget_mode = "                     \
    "'consumption_usd' THEN coalesce(sum(i.price_nano), 0)::bigint ELSE ceil(sum("                 \
    "i.prompt_tokens + i.completion_tokens)::numeric * 1000000000 / "                              \
    "t.tokens_per_credit)::bigint END AS amount, CASE WHEN t.budget_mode = 'consumption_usd' "     \
    "THEN coalesce(sum(i.price_nano) FILTER (WHERE i.leased), 0)::bigint ELSE coalesce(ceil("      \
    "sum(i.prompt_tokens + i.completion_tokens) FILTER (WHERE i.leased)::numeric * 1000000000 "    \
    "/ t.tokens_per_credit), 0)::bigint END AS reported FROM insl i JOIN teams t ON "              \
    "t.id = i.team_id WHERE t.budget_mode IN ('consumption_usd', 'consumption_tokens') AND "       \
    "i.credential NOT LIKE '%byok' GROUP BY i.team_id, t.budget_mode, t.tokens_per_credit), "      \
    "chg AS (INSERT INTO credit_transactions (team_id, amount_nano, kind, actor, note) "           \
    "SELECT team_id, -amount, 'usage', 'gateway', calls || ' calls' FROM chgs "                    \
    "WHERE amount <> 0 ORDER BY team_id), "                                                        \
    "rep AS (UPDATE budgets b SET spent_nano = b.spent_nano - c.reported FROM chgs c "             \
    "WHERE b.scope = 'credit' AND b.scope_id = c.team_id AND c.reported <> 0) "                    \
    "SELECT count(*) FROM ins"
static const pg_stmt ledger_insert_cols = {"tg_ledger_insert_cols", LEDGER_FROM_COLS LEDGER_WRITE,
                                           LEDGER_NCOLS};
static const pg_stmt ledger_insert_json = {"tg_ledger_insert", LEDGER_FROM_JSON LEDGER_WRITE, 1};

struct store {
    uv_loop_t *loop;
    pg_pool *pool;
    tenants *cache;
    fernet_keyring keys; /* copy of the config's ring */
    uint32_t refresh_ms;
    store_fatal_cb fatal;
    void *fatal_ud;
    uv_timer_t timer; /* retry / refresh */
    bool closing;
    bool schema_ok; /* the version check passed */
    bool failed;    /* fatal already reported */
    /* the full load in progress */
    bool loading;
    bool load_again; /* a resync came during the load */
    tn_kind load_kind;
    tn_id load_last;
    uint64_t gen;
    pg_query *load_q;
    tn_id *tombs; /* ids deleted during the load (kind in tomb_kind) */
    tn_kind *tomb_kind;
    size_t ntombs;
    row_req *rows; /* single-row reloads in flight */
    void (*other)(void *, const char *, const char *); /* notifications of uncached tables */
    void *other_ud;
    void (*recover)(void *); /* the database answers again */
    void *recover_ud;
    bool db_failing;        /* the last ledger statement failed for want of the database */
    uint64_t partitions_ns; /* last partition upkeep (monotonic) */
    char status[512];
    store_stats st;
};

struct row_req {
    store *s;
    tn_kind kind;
    tn_id id;
    pg_query *q;
    void (*done)(void *, bool);
    void *ud;
    row_req *next, **pprev;
};

static void load_start(store *s);

/* ------------------------------------------------------------ row parsing */

static const char *val(const PGresult *r, int row, int col)
{
    return pg_value(r, row, col);
}

static int64_t val_i64(const PGresult *r, int row, int col, int64_t dflt)
{
    const char *v = val(r, row, col);
    return v ? strtoll(v, NULL, 10) : dflt;
}

static bool val_bool(const PGresult *r, int row, int col)
{
    const char *v = val(r, row, col);
    return v && v[0] == 't';
}

static void set_id(tn_id *id, const char *v)
{
    snprintf(id->s, sizeof(id->s), "%s", v ? v : "");
}

/* A bump allocator over an entry's extra bytes. */
typedef struct bump {
    char *p;
    size_t left;
} bump;

static const char *bump_str(bump *b, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    if (n > b->left)
        return NULL;
    char *d = b->p;
    memcpy(d, s, n);
    b->p += n;
    b->left -= n;
    return d;
}

static void *bump_array(bump *b, size_t n, size_t size)
{
    size_t pad = (size_t)(-(uintptr_t)b->p & 7);
    if (pad + n * size > b->left)
        return NULL;
    void *d = b->p + pad;
    b->p += pad + n * size;
    b->left -= pad + n * size;
    return d;
}

/* Bytes needed for the strings of a JSON text array, plus its pointers. */
static size_t json_strings_size(const json_t *a)
{
    size_t n = 8 + json_array_size(a) * sizeof(char *);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) n += json_is_string(v) ? json_string_length(v) + 1 : 0;
    return n;
}

static const char *const *json_strings(bump *b, const json_t *a, size_t *n)
{
    size_t i, k = 0;
    json_t *v;
    const char **out = bump_array(b, json_array_size(a), sizeof(char *));
    *n = 0;
    if (!out)
        return NULL;
    json_array_foreach(a, i, v) if (json_is_string(v)) out[k++] = bump_str(b, json_string_value(v));
    *n = k;
    return out;
}

/* A power_level column as a config_level (0: none). */
static uint8_t level_of(const char *v)
{
    return v ? (uint8_t)config_level_parse(v, strlen(v)) : 0;
}

static tn_entry *parse_team(const PGresult *r, int i)
{
    const char *name = val(r, i, 2);
    tn_entry *e = tn_new(TN_TEAM, strlen(name ? name : "") + 1);
    if (!e)
        return NULL;
    tn_team *t = (tn_team *)e;
    bump b = {tn_extra(e), strlen(name ? name : "") + 1};
    set_id(&e->id, val(r, i, 0));
    set_id(&t->org_id, val(r, i, 1));
    t->name = bump_str(&b, name ? name : "");
    t->suspended = val(r, i, 3) && strcmp(val(r, i, 3), "suspended") == 0;
    const char *mode = val(r, i, 4);
    t->budget_mode = mode && strcmp(mode, "consumption_tokens") == 0 ? TN_BUDGET_TOKENS
                     : mode && strcmp(mode, "job_based") == 0        ? TN_BUDGET_JOBS
                                                                     : TN_BUDGET_USD;
    t->tokens_per_credit = val_i64(r, i, 5, 10000);
    e->version = val_i64(r, i, 6, 0);
    t->max_budget_nano = val_i64(r, i, 7, -1);
    t->org_max_budget_nano = val_i64(r, i, 8, -1);
    t->rpm = (uint32_t)val_i64(r, i, 9, 0);
    t->tpm = (uint64_t)val_i64(r, i, 10, 0);
    t->credit_limit_nano = val_i64(r, i, 11, -1);
    t->power_level = level_of(val(r, i, 12));
    return e;
}

static tn_entry *parse_key(const PGresult *r, int i)
{
    json_t *models = json_loads(val(r, i, 5) ? val(r, i, 5) : "[]", 0, NULL);
    json_t *groups = json_loads(val(r, i, 6) ? val(r, i, 6) : "[]", 0, NULL);
    tn_entry *e = NULL;
    const char *hex = val(r, i, 1), *prefix = val(r, i, 2), *alias = val(r, i, 3),
               *dur = val(r, i, 10);

    if (!json_is_array(models) || !json_is_array(groups) || !hex || !prefix || !alias)
        goto out;
    size_t extra = strlen(prefix) + strlen(alias) + (dur ? strlen(dur) : 0) + 3 +
                   json_strings_size(models) + json_strings_size(groups);
    if (!(e = tn_new(TN_KEY, extra)))
        goto out;
    tn_key *k = (tn_key *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, val(r, i, 0));
    if (crypto_unhex(hex, strlen(hex), k->sha256, CRYPTO_SHA256_LEN) != 0) {
        tn_unref(e);
        e = NULL;
        goto out;
    }
    k->prefix = bump_str(&b, prefix);
    k->alias = bump_str(&b, alias);
    k->budget_duration = bump_str(&b, dur);
    set_id(&k->team_id, val(r, i, 4));
    k->models = json_strings(&b, models, &k->nmodels);
    k->groups = json_strings(&b, groups, &k->ngroups);
    k->rpm = (uint32_t)val_i64(r, i, 7, 0);
    k->tpm = (uint64_t)val_i64(r, i, 8, 0);
    k->max_budget_nano = val_i64(r, i, 9, -1);
    k->expires_us = val_i64(r, i, 11, 0);
    k->blocked = val_bool(r, i, 12);
    e->version = val_i64(r, i, 13, 0);
    k->power_level = level_of(val(r, i, 14));
out:
    json_decref(models);
    json_decref(groups);
    return e;
}

static int route_cmp(const void *a, const void *b)
{
    const tn_route *x = a, *y = b;
    return (x->priority > y->priority) - (x->priority < y->priority);
}

static tn_entry *parse_alias(const PGresult *r, int i)
{
    json_t *routes = json_loads(val(r, i, 2) ? val(r, i, 2) : "", 0, NULL);
    const char *name = val(r, i, 1), *group = val(r, i, 3);
    tn_entry *e = NULL;
    size_t extra, n = json_array_size(routes), j;
    json_t *rt;

    if (!name || !json_is_array(routes) || n == 0)
        goto out;
    extra = strlen(name) + (group ? strlen(group) : 0) + 2 + 8 + n * sizeof(tn_route);
    json_array_foreach(routes, j, rt)
    {
        const char *p = json_string_value(json_object_get(rt, "provider"));
        const char *m = json_string_value(json_object_get(rt, "model"));
        if (!p || !m)
            goto out;
        extra += strlen(p) + strlen(m) + 2;
    }
    if (!(e = tn_new(TN_ALIAS, extra)))
        goto out;
    tn_alias *a = (tn_alias *)e;
    bump b = {tn_extra(e), extra};
    tn_route *rv = bump_array(&b, n, sizeof(tn_route));
    set_id(&e->id, val(r, i, 0));
    a->name = bump_str(&b, name);
    a->access_group = bump_str(&b, group);
    json_array_foreach(routes, j, rt)
    {
        json_t *w = json_object_get(rt, "weight"), *pr = json_object_get(rt, "priority");
        rv[j].provider = bump_str(&b, json_string_value(json_object_get(rt, "provider")));
        rv[j].model = bump_str(&b, json_string_value(json_object_get(rt, "model")));
        rv[j].weight =
            json_is_integer(w) && json_integer_value(w) > 0 ? (uint32_t)json_integer_value(w) : 1;
        rv[j].priority = json_is_integer(pr) ? (int32_t)json_integer_value(pr) : 0;
    }
    qsort(rv, n, sizeof(*rv), route_cmp);
    a->routes = rv;
    a->nroutes = n;
    a->price_input_nano = val_i64(r, i, 4, -1);
    a->price_output_nano = val_i64(r, i, 5, -1);
    a->price_cached_nano = val_i64(r, i, 6, -1);
    e->version = val_i64(r, i, 7, 0);
    a->markup_bps = (int32_t)val_i64(r, i, 8, -1);
out:
    json_decref(routes);
    return e;
}

/* provider_credentials and byok_keys rows: decrypts the secret. NULL (and
 * *skip) for an inactive credential; NULL alone when it cannot decrypt. */
static tn_entry *parse_secret(store *s, tn_kind kind, const PGresult *r, int i, bool *skip)
{
    const char *id = val(r, i, 0), *provider, *token;
    tn_entry *e = NULL;
    buf plain;
    int scope_col;

    if (kind == TN_CRED) {
        provider = val(r, i, 2);
        token = val(r, i, 3);
        if (!val_bool(r, i, 4)) {
            *skip = true;
            return NULL;
        }
        scope_col = 1;
    } else {
        provider = val(r, i, 3);
        token = val(r, i, 4);
        scope_col = val(r, i, 1) ? 1 : 2;
    }
    if (!provider || !token || !val(r, i, scope_col))
        return NULL;
    buf_init(&plain, 4096);
    int rc = s->keys.n
                 ? fernet_decrypt(&s->keys, token, strlen(token), (uint64_t)time(NULL), 0, &plain)
                 : -ENOKEY;
    if (rc != 0) {
        s->st.decrypt_failures++;
        log_error(NULL,
                  "%s %s: the secret does not decrypt with the configured secrets.keys (%s); "
                  "it is not used",
                  tn_kind_table(kind), id ? id : "?",
                  rc == -ENOKEY ? "no key configured" : "wrong key or damaged token");
        goto out;
    }
    size_t extra = strlen(provider) + 1 + plain.len + 1;
    if (!(e = tn_new(kind, extra)))
        goto out;
    tn_secret *sec = (tn_secret *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    set_id(&sec->scope_id, val(r, i, scope_col));
    sec->scope_is_key = kind == TN_BYOK && scope_col == 2;
    sec->provider = bump_str(&b, provider);
    char *p = b.p;
    memcpy(p, plain.data, plain.len);
    p[plain.len] = '\0';
    sec->secret = p;
    sec->secret_len = plain.len;
    e->version = val_i64(r, i, 5 + (kind == TN_BYOK), 0);
out:
    if (plain.data)
        explicit_bzero(plain.data, plain.len);
    buf_free(&plain);
    return e;
}

static tn_entry *parse_admin(const PGresult *r, int i)
{
    const char *hex = val(r, i, 1), *name = val(r, i, 2), *role = val(r, i, 3);
    if (!hex || !name || !role)
        return NULL;
    tn_entry *e = tn_new(TN_ADMIN, strlen(name) + 1);
    if (!e)
        return NULL;
    tn_admin *a = (tn_admin *)e;
    bump b = {tn_extra(e), strlen(name) + 1};
    set_id(&e->id, val(r, i, 0));
    if (crypto_unhex(hex, strlen(hex), a->sha256, CRYPTO_SHA256_LEN) != 0) {
        tn_unref(e);
        return NULL;
    }
    a->name = bump_str(&b, name);
    a->role = strcmp(role, "owner") == 0   ? TN_ROLE_OWNER
              : strcmp(role, "admin") == 0 ? TN_ROLE_ADMIN
                                           : TN_ROLE_VIEWER;
    a->blocked = val_bool(r, i, 4);
    e->version = val_i64(r, i, 5, 0);
    return e;
}

/* A price_overrides row: a catalog entry (cache rates default to the
 * input rate, as in the shipped catalog). */
static tn_entry *parse_price(const PGresult *r, int i)
{
    const char *provider = val(r, i, 1), *model = val(r, i, 2);
    if (!provider || !model)
        return NULL;
    size_t extra = strlen(provider) + strlen(model) + 2;
    tn_entry *e = tn_new(TN_PRICE, extra);
    if (!e)
        return NULL;
    price_entry *pe = &((tn_price *)e)->price;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, val(r, i, 0));
    pe->provider = bump_str(&b, provider);
    pe->model = bump_str(&b, model);
    pe->mode = "chat";
    pe->input = val_i64(r, i, 3, 0);
    pe->output = val_i64(r, i, 4, 0);
    pe->cached_input = val_i64(r, i, 5, pe->input);
    pe->cache_write = val_i64(r, i, 6, pe->input);
    pe->cache_write_1h = pe->cache_write;
    pe->input_above_200k = pe->input;
    pe->output_above_200k = pe->output;
    e->version = val_i64(r, i, 7, 0);
    return e;
}

/* Row i of a result for kind into an entry. NULL with *skip: the row
 * means "not cached" (an inactive credential). */
static tn_entry *parse_row(store *s, tn_kind kind, const PGresult *r, int i, bool *skip)
{
    *skip = false;
    switch (kind) {
    case TN_TEAM:
        return parse_team(r, i);
    case TN_KEY:
        return parse_key(r, i);
    case TN_ALIAS:
        return parse_alias(r, i);
    case TN_CRED:
    case TN_BYOK:
        return parse_secret(s, kind, r, i, skip);
    case TN_ADMIN:
        return parse_admin(r, i);
    case TN_PRICE:
        return parse_price(r, i);
    default:
        return NULL;
    }
}

/* ------------------------------------------------------------ tombstones */

static bool tomb_has(const store *s, tn_kind kind, const char *id)
{
    for (size_t i = 0; i < s->ntombs; i++)
        if (s->tomb_kind[i] == kind && strcmp(s->tombs[i].s, id) == 0)
            return true;
    return false;
}

static void tomb_add(store *s, tn_kind kind, const char *id)
{
    if (!s->loading || s->ntombs >= STORE_MAX_TOMBS)
        return; /* past the cap the next refresh settles it */
    set_id(&s->tombs[s->ntombs], id);
    s->tomb_kind[s->ntombs++] = kind;
}

/* ------------------------------------------------------------ full load */

/* "what: detail", or what alone. */
static void set_status(store *s, const char *what, const char *detail)
{
    if (detail)
        snprintf(s->status, sizeof(s->status), "%s: %s", what, detail);
    else
        snprintf(s->status, sizeof(s->status), "%s", what);
}

static void timer_cb(uv_timer_t *t);

static void retry_later(store *s, uint32_t ms)
{
    if (!s->closing)
        uv_timer_start(&s->timer, timer_cb, ms, 0);
}

static void fatal(store *s, const char *msg)
{
    if (s->failed)
        return;
    s->failed = true;
    set_status(s, msg, NULL);
    log_error(NULL, "%s", msg);
    if (s->fatal)
        s->fatal(s->fatal_ud, msg);
}

static void page_done(void *ud, const PGresult *res, const pg_error *err);

static void page_send(store *s)
{
    const char *params[1] = {s->load_last.s};
    s->load_q = pg_send(s->pool, &store_sql[s->load_kind].page_stmt, NULL, 1, params, page_done, s);
    if (!s->load_q) {
        s->loading = false;
        retry_later(s, STORE_RETRY_MS);
    }
}

static void partitions_done(void *ud, const PGresult *res, const pg_error *err)
{
    (void)ud;
    if (err)
        log_warn(NULL, "creating the calls partitions failed: %s (retried within a day)",
                 err->message);
    else if (res && pg_value(res, 0, 0) && strcmp(pg_value(res, 0, 0), "0") != 0)
        log_info(NULL, "created %s monthly partition(s) of calls", pg_value(res, 0, 0));
}

/* Monthly partitions of calls for this month and the next three, daily. */
static void partitions_upkeep(store *s)
{
    uint64_t now = clock_mono_ns();
    if (s->partitions_ns && now - s->partitions_ns < 24ull * 3600 * 1000000000)
        return;
    if (pg_send(s->pool, NULL, "SELECT tollgate_calls_partitions(now(), 4)", 0, NULL,
                partitions_done, s))
        s->partitions_ns = now;
}

static void load_finish(store *s)
{
    partitions_upkeep(s);
    s->loading = false;
    s->ntombs = 0;
    s->st.full_loads++;
    if (!tenants_loaded(s->cache)) {
        tenants_stats ts;
        tenants_stats_get(s->cache, &ts);
        log_info(NULL,
                 "tenancy cache loaded: %zu teams, %zu keys, %zu aliases, %zu credentials, "
                 "%zu BYOK keys, %zu admin keys, %zu prices",
                 ts.entries[TN_TEAM], ts.entries[TN_KEY], ts.entries[TN_ALIAS], ts.entries[TN_CRED],
                 ts.entries[TN_BYOK], ts.entries[TN_ADMIN], ts.entries[TN_PRICE]);
    }
    tenants_set_loaded(s->cache, true);
    if (s->recover) /* the database answers: the ledger may ship its spool now */
        s->recover(s->recover_ud);
    if (s->load_again) {
        s->load_again = false;
        load_start(s);
        return;
    }
    if (!s->closing)
        uv_timer_start(&s->timer, timer_cb, s->refresh_ms, 0);
}

static void page_done(void *ud, const PGresult *res, const pg_error *err)
{
    store *s = ud;
    s->load_q = NULL;
    if (err) {
        s->loading = false;
        set_status(s, "database unreachable", err->message);
        if (err->kind != PG_ERR_CLOSED) {
            log_warn(NULL, "loading %s failed: %s; retrying", tn_kind_table(s->load_kind),
                     err->message);
            retry_later(s, STORE_RETRY_MS);
        }
        return;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        bool skip;
        const char *id = val(res, i, 0);
        if (id && tomb_has(s, s->load_kind, id))
            continue;
        tn_entry *e = parse_row(s, s->load_kind, res, i, &skip);
        if (e && tenants_put(s->cache, e, s->gen) < 0)
            log_warn(NULL, "tenancy cache: out of memory");
    }
    if (n > 0)
        set_id(&s->load_last, val(res, n - 1, 0));
    if (n == STORE_PAGE) {
        page_send(s);
        return;
    }
    size_t gone = tenants_sweep(s->cache, s->load_kind, s->gen);
    if (gone)
        log_info(NULL, "tenancy cache: %zu %s rows gone since the last load", gone,
                 tn_kind_table(s->load_kind));
    if (s->load_kind + 1 < TN_NKINDS) {
        s->load_kind++;
        set_id(&s->load_last, STORE_ZERO_ID);
        page_send(s);
        return;
    }
    s->status[0] = '\0';
    load_finish(s);
}

static void load_start(store *s)
{
    if (s->closing || s->failed || !s->schema_ok)
        return;
    if (s->loading) {
        s->load_again = true;
        return;
    }
    s->loading = true;
    s->gen++;
    s->ntombs = 0;
    s->load_kind = 0;
    set_id(&s->load_last, STORE_ZERO_ID);
    page_send(s);
}

/* ------------------------------------------------------------ schema check */

static void schema_done(void *ud, const PGresult *res, const pg_error *err)
{
    store *s = ud;
    char msg[320];
    int latest = migrations_latest();

    if (err) {
        if (err->kind == PG_ERR_SERVER && strcmp(err->sqlstate, "42P01") == 0) {
            fatal(s, "the database has no tollgate schema: run 'tollgate migrate' (with the same "
                     "database.url) first");
            return;
        }
        set_status(s, "database unreachable", err->message);
        if (err->kind != PG_ERR_CLOSED)
            retry_later(s, STORE_RETRY_MS);
        return;
    }
    int have = (int)val_i64(res, 0, 0, 0);
    if (have > latest) {
        snprintf(msg, sizeof(msg),
                 "the database schema is at version %d, newer than this tollgate knows (%d): "
                 "upgrade tollgate",
                 have, latest);
        fatal(s, msg);
        return;
    }
    if (have < latest) {
        snprintf(msg, sizeof(msg),
                 "the database schema is at version %d, this tollgate needs %d: run 'tollgate "
                 "migrate' (with the same database.url)",
                 have, latest);
        fatal(s, msg);
        return;
    }
    s->schema_ok = true;
    log_info(NULL, "database schema at version %d", have);
    load_start(s);
}

static void timer_cb(uv_timer_t *t)
{
    store *s = t->data;
    if (s->closing || s->failed)
        return;
    if (!s->schema_ok) {
        set_status(s, "checking the database schema", NULL);
        if (!pg_send(s->pool, NULL, "SELECT coalesce(max(version), 0) FROM schema_migrations", 0,
                     NULL, schema_done, s))
            uv_timer_start(&s->timer, timer_cb, STORE_RETRY_MS, 0);
        return;
    }
    load_start(s);
}

/* ------------------------------------------------------------ single rows */

static void row_unlink(row_req *rq)
{
    *rq->pprev = rq->next;
    if (rq->next)
        rq->next->pprev = rq->pprev;
}

static void row_done(void *ud, const PGresult *res, const pg_error *err)
{
    row_req *rq = ud;
    store *s = rq->s;
    bool ok = false;

    row_unlink(rq);
    if (err) {
        if (err->kind != PG_ERR_CLOSED)
            log_warn(NULL, "reloading %s %s failed: %s (a full load follows)",
                     tn_kind_table(rq->kind), rq->id.s, err->message);
        /* The change was announced but is not in the cache: load everything
         * again soon, not only at the next refresh (up to cache_refresh
         * later, a blocked key would keep working that long). */
        if (!s->closing && err->kind != PG_ERR_CLOSED) {
            if (s->loading)
                s->load_again = true;
            else
                retry_later(s, STORE_RETRY_MS);
        }
    } else if (PQntuples(res) == 0) {
        tenants_del(s->cache, rq->kind, rq->id.s);
        tomb_add(s, rq->kind, rq->id.s);
        ok = true;
    } else {
        bool skip;
        tn_entry *e = parse_row(s, rq->kind, res, 0, &skip);
        if (e) {
            ok = tenants_put(s->cache, e, s->gen) >= 0;
        } else {
            /* inactive credential, or a row that cannot be used: not cached */
            tenants_del(s->cache, rq->kind, rq->id.s);
            tomb_add(s, rq->kind, rq->id.s);
            ok = skip;
        }
        s->st.row_reloads++;
    }
    if (rq->done)
        rq->done(rq->ud, ok);
    free(rq);
}

int store_reload(store *s, tn_kind kind, const char *id, void (*done)(void *ud, bool ok), void *ud)
{
    if (s->closing)
        return -ESHUTDOWN;
    row_req *rq = calloc(1, sizeof(*rq));
    if (!rq)
        return -ENOMEM;
    rq->s = s;
    rq->kind = kind;
    set_id(&rq->id, id);
    rq->done = done;
    rq->ud = ud;
    const char *params[1] = {rq->id.s};
    rq->q = pg_send(s->pool, &store_sql[kind].row_stmt, NULL, 1, params, row_done, rq);
    if (!rq->q) {
        free(rq);
        return -ENOMEM;
    }
    rq->next = s->rows;
    rq->pprev = &s->rows;
    if (s->rows)
        s->rows->pprev = &rq->next;
    s->rows = rq;
    return 0;
}

/* "<table>:<uuid>" from the triggers; NULL: the listener (re)connected. */
static void on_notify(void *ud, const char *payload)
{
    store *s = ud;
    if (!payload) {
        log_info(NULL, "listening for cache changes on '%s'; reloading the cache", STORE_CHANNEL);
        if (s->schema_ok)
            load_start(s);
        if (s->other) /* what other caches hold may have changed unheard */
            s->other(s->other_ud, NULL, NULL);
        return;
    }
    s->st.notifies++;
    const char *colon = strchr(payload, ':');
    if (colon && s->other && strlen(colon + 1) == TN_ID_LEN &&
        tn_kind_from_table(payload, (size_t)(colon - payload)) < 0) {
        char table[64];
        snprintf(table, sizeof(table), "%.*s", (int)(colon - payload), payload);
        s->other(s->other_ud, table, colon + 1);
        return;
    }
    int kind = colon ? tn_kind_from_table(payload, (size_t)(colon - payload)) : -1;
    if (kind < 0 || strlen(colon + 1) != TN_ID_LEN) {
        log_debug(NULL, "ignoring notification '%.80s'", payload);
        return;
    }
    if (!s->schema_ok)
        return;
    if (store_reload(s, (tn_kind)kind, colon + 1, NULL, NULL) != 0) {
        log_warn(NULL, "cannot reload %s; scheduling a full load", payload);
        load_start(s);
    }
}

/* ------------------------------------------------------------ the ledger */

typedef struct ledger_req {
    store *s;
    ledger_done_fn done;
    void *token;
    const char *json; /* the ledger's batch: valid until done is called */
    size_t len;
    int fill;         /* ledger_cols_fill's answer */
    ledger_cols cols; /* filled on the thread pool */
    uv_work_t work;
} ledger_req;

static void ledger_done(void *ud, const PGresult *res, const pg_error *err)
{
    ledger_req *lr = ud;
    store *s = lr->s;
    int status = 0;
    if (err) {
        bool data = err->kind == PG_ERR_SERVER &&
                    (strncmp(err->sqlstate, "22", 2) == 0 || strncmp(err->sqlstate, "23", 2) == 0);
        status = data ? -EINVAL : -EIO;
        if (!data)
            s->db_failing = true;
        else
            log_error(NULL, "ledger: the database refused a batch: %s (%s)", err->message,
                      err->sqlstate);
    } else {
        s->st.ledger_batches++;
        s->st.ledger_rows += (uint64_t)val_i64(res, 0, 0, 0);
        if (s->db_failing) {
            s->db_failing = false;
            if (s->recover)
                s->recover(s->recover_ud);
        }
    }
    lr->done(lr->token, status);
    free(lr);
}

/* On the thread pool: a batch of 500 rows takes about a millisecond to
 * turn into columns, which the loop's other requests should not wait for. */
static void cols_work(uv_work_t *w)
{
    ledger_req *lr = w->data;
    lr->fill = ledger_cols_fill(&lr->cols, lr->json, lr->len);
}

static void cols_done(uv_work_t *w, int status)
{
    ledger_req *lr = w->data;
    store *s = lr->s;
    pg_query *q = NULL;
    if (status == 0 && !s->closing) {
        if (lr->fill == 0) {
            const char *params[LEDGER_NCOLS];
            for (int i = 0; i < LEDGER_NCOLS; i++)
                params[i] = lr->cols.col[i].data;
            q = pg_send(s->pool, &ledger_insert_cols, NULL, LEDGER_NCOLS, params, ledger_done, lr);
        } else {
            /* not exactly expressible as arrays: the database reads the JSON */
            const char *params[1] = {lr->json};
            q = pg_send(s->pool, &ledger_insert_json, NULL, 1, params, ledger_done, lr);
        }
    }
    ledger_cols_free(&lr->cols); /* pg_send copied them */
    if (!q) {
        /* closing, or the pool refused at once: the ledger keeps the rows */
        ledger_done_fn done = lr->done;
        void *token = lr->token;
        free(lr);
        done(token, -EIO);
    }
}

int store_ledger_sink(void *ud, const char *json, size_t len, size_t n, ledger_done_fn done,
                      void *token)
{
    store *s = ud;
    (void)n;
    if (s->closing || !s->schema_ok)
        return -EAGAIN;
    ledger_req *lr = malloc(sizeof(*lr));
    if (!lr)
        return -ENOMEM;
    *lr = (ledger_req){.s = s, .done = done, .token = token, .json = json, .len = len};
    ledger_cols_init(&lr->cols);
    lr->work.data = lr;
    if (uv_queue_work(s->loop, &lr->work, cols_work, cols_done) != 0) {
        free(lr);
        return -EAGAIN;
    }
    return 0;
}

void store_on_notify(store *s, void (*fn)(void *ud, const char *table, const char *id), void *ud)
{
    s->other = fn;
    s->other_ud = ud;
}

void store_on_recover(store *s, void (*fn)(void *ud), void *ud)
{
    s->recover = fn;
    s->recover_ud = ud;
}

/* ------------------------------------------------------------ lifecycle */

store *store_new(uv_loop_t *loop, dns_cache *dns, const config *cfg, store_fatal_cb fatal_cb,
                 void *ud, char *err, size_t errlen)
{
    store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    store_sql_init();
    s->loop = loop;
    s->fatal = fatal_cb;
    s->fatal_ud = ud;
    s->keys = cfg->secrets;
    s->refresh_ms = cfg->database.cache_refresh_ms ? cfg->database.cache_refresh_ms : 60000;
    s->tombs = calloc(STORE_MAX_TOMBS, sizeof(*s->tombs));
    s->tomb_kind = calloc(STORE_MAX_TOMBS, sizeof(*s->tomb_kind));
    s->cache = tenants_new();
    if (!s->tombs || !s->tomb_kind || !s->cache) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    pg_options opt = {
        .conninfo = cfg->database.url,
        .size = cfg->database.pool_size,
        .connect_timeout_ms = cfg->database.connect_timeout_ms,
        .statement_timeout_ms = cfg->database.statement_timeout_ms,
        .queue_timeout_ms = cfg->database.connect_timeout_ms,
    };
    s->pool = pg_pool_new(loop, dns, &opt, err, errlen);
    if (!s->pool)
        goto fail;
    if (pg_listen(s->pool, STORE_CHANNEL, on_notify, s) != 0)
        log_error(NULL, "cannot listen for cache changes (out of memory): changes made elsewhere "
                        "arrive with the periodic refresh only");
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    set_status(s, "connecting to the database", NULL);
    uv_timer_start(&s->timer, timer_cb, 0, 0);
    return s;
fail:
    tenants_free(s->cache);
    free(s->tombs);
    free(s->tomb_kind);
    fernet_keyring_wipe(&s->keys);
    free(s);
    return NULL;
}

void store_reconfigure(store *s, const config *cfg)
{
    bool keys_changed = s->keys.n != cfg->secrets.n ||
                        memcmp(s->keys.keys, cfg->secrets.keys, sizeof(s->keys.keys)) != 0;
    fernet_keyring_wipe(&s->keys);
    s->keys = cfg->secrets;
    s->refresh_ms = cfg->database.cache_refresh_ms;
    if (keys_changed && s->schema_ok)
        load_start(s); /* secrets that failed to decrypt may open now */
}

tenants *store_tenants(store *s)
{
    return s->cache;
}

pg_pool *store_pool(store *s)
{
    return s->pool;
}

bool store_ready(const store *s)
{
    return s->schema_ok && tenants_loaded(s->cache) && pg_pool_ready(s->pool);
}

bool store_loading(const store *s)
{
    return !s->closing && !s->failed && !tenants_loaded(s->cache) && !pg_pool_trouble(s->pool);
}

const char *store_status(const store *s)
{
    if (s->failed || !s->schema_ok || !tenants_loaded(s->cache))
        return s->status[0] ? s->status : "loading the tenancy cache";
    if (!pg_pool_ready(s->pool))
        return "database unreachable";
    return "";
}

void store_stats_get(const store *s, store_stats *out)
{
    *out = s->st;
}

void store_close(store *s)
{
    if (s->closing)
        return;
    s->closing = true;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, NULL);
    pg_pool_close(s->pool); /* fails what is queued: page_done and row_done see PG_ERR_CLOSED */
}

void store_free(store *s)
{
    if (!s)
        return;
    pg_pool_free(s->pool);
    tenants_free(s->cache);
    free(s->tombs);
    free(s->tomb_kind);
    fernet_keyring_wipe(&s->keys);
    free(s);
}
