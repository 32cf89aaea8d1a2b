/* jobs.c - jobs (see jobs.h). */
#include "daemon/jobs.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "providers/openai.h"

#define JOBS_MAX_CACHED 65536
#define JOBS_SLOTS 4096

typedef struct job_ent {
    char id[37];
    char team_id[37]; /* "" for a config key's job */
    char key_alias[201];
    bool running;
    struct job_ent *next;
} job_ent;

struct jobs {
    store *st;
    job_ent *slot[JOBS_SLOTS];
    size_t n;
};

/* ------------------------------------------------------------ the cache */

static size_t job_slot(const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)(h % JOBS_SLOTS);
}

/* A job id as the cache keys it: lower case, as PostgreSQL prints a uuid
 * (and NOTIFY names it), whatever case the client wrote. */
static void id_lower(char dst[37], const char *id)
{
    size_t i = 0;
    for (; i < 36 && id[i]; i++)
        dst[i] = (char)tolower((unsigned char)id[i]);
    dst[i] = '\0';
}

static job_ent *job_find(jobs *j, const char *id)
{
    for (job_ent *e = j->slot[job_slot(id)]; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

static void cache_clear(jobs *j)
{
    for (size_t i = 0; i < JOBS_SLOTS; i++) {
        for (job_ent *e = j->slot[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
        j->slot[i] = NULL;
    }
    j->n = 0;
}

static void job_put(jobs *j, const char *id_in, const char *team_id, const char *alias,
                    bool running)
{
    char id[37];
    id_lower(id, id_in);
    job_ent *e = job_find(j, id);
    if (!e) {
        if (j->n >= JOBS_MAX_CACHED)
            cache_clear(j); /* rare; lookups refill what is in use */
        if (!(e = calloc(1, sizeof(*e))))
            return;
        memcpy(e->id, id, sizeof(e->id));
        size_t s = job_slot(id);
        e->next = j->slot[s];
        j->slot[s] = e;
        j->n++;
    }
    snprintf(e->team_id, sizeof(e->team_id), "%s", team_id ? team_id : "");
    snprintf(e->key_alias, sizeof(e->key_alias), "%s", alias ? alias : "");
    e->running = running;
}

void jobs_forget(jobs *j, const char *id_in)
{
    char id[37];
    id_lower(id, id_in);
    job_ent **pp = &j->slot[job_slot(id)];
    for (; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->id, id) == 0) {
            job_ent *e = *pp;
            *pp = e->next;
            free(e);
            j->n--;
            return;
        }
    }
}

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23 ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return true;
}

static bool owns(const job_ent *e, const job_owner *who)
{
    if (who->team_id)
        return strcmp(e->team_id, who->team_id) == 0;
    return !e->team_id[0] && strcmp(e->key_alias, who->key_alias) == 0;
}

int jobs_check(jobs *j, const job_owner *who, const char *job_id)
{
    if (!is_uuid(job_id))
        return -EINVAL;
    char id[37];
    id_lower(id, job_id);
    const job_ent *e = job_find(j, id);
    if (!e)
        return -ENOENT;
    if (!owns(e, who))
        return -EPERM;
    return e->running ? 0 : -EALREADY;
}

/* SELECT of a job's owner and status: cached by lookups. */
static const pg_stmt job_owner_stmt = {
    "tg_job_owner", "SELECT team_id::text, key_alias, status FROM jobs WHERE id = $1::uuid", 1};

typedef struct lookup {
    jobs *j;
    char id[37];
    void (*done)(void *, int);
    void *ud;
} lookup;

static void lookup_done(void *ud, const PGresult *res, const pg_error *err)
{
    lookup *lk = ud;
    int found = err ? -1 : 0;
    if (!err && PQntuples(res) == 1) {
        const char *st = pg_value(res, 0, 2);
        job_put(lk->j, lk->id, pg_value(res, 0, 0), pg_value(res, 0, 1),
                st && strcmp(st, "running") == 0);
        found = 1;
    } else if (err) {
        log_warn(NULL, "job %s: lookup failed: %s", lk->id, err->message);
    }
    lk->done(lk->ud, found);
    free(lk);
}

int jobs_lookup(jobs *j, const char *job_id, void (*done)(void *ud, int found), void *ud,
                pg_query **q)
{
    if (!j->st)
        return -ESHUTDOWN;
    lookup *lk = calloc(1, sizeof(*lk));
    if (!lk)
        return -ENOMEM;
    lk->j = j;
    id_lower(lk->id, job_id);
    lk->done = done;
    lk->ud = ud;
    const char *params[1] = {lk->id};
    pg_query *pq = pg_send(store_pool(j->st), &job_owner_stmt, NULL, 1, params, lookup_done, lk);
    if (!pq) {
        free(lk);
        return -ENOMEM;
    }
    if (q)
        *q = pq;
    return 0;
}

/* ------------------------------------------------------------ requests */

typedef enum jop { J_CREATE, J_GET, J_END, J_USAGE } jop;

typedef struct jreq {
    jobs *j;
    http_req *req; /* NULL once the client left */
    pg_query *q;
    jop op;
    char id[37];
    char team_id[37];
    char key_alias[201];
    bool has_team;
    char status[16]; /* J_END: completed or failed */
} jreq;

static void __attribute__((format(printf, 4, 5)))
jerr(http_req *req, int status, const char *code, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    buf b;
    buf_init(&b, 4096);
    const char *type = status == 402   ? "insufficient_quota"
                       : status == 404 ? "not_found_error"
                       : status == 409 ? "conflict_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    if (openai_error_body(&b, msg, type, NULL, code) == 0)
        http_respond(req, status, "application/json", status == 503 ? "retry-after: 1\r\n" : NULL,
                     b.data, b.len);
    else
        http_respond(req, 500, "text/plain", NULL, "internal error\n", 15);
    buf_free(&b);
}

static void jreq_detach(jreq *r)
{
    if (r->req) {
        r->req->app = NULL;
        r->req->on_abort = NULL;
    }
}

static void jreq_abort(http_req *req, void *ud)
{
    (void)ud;
    jreq *r = req->app;
    if (r->q)
        pg_cancel(r->q);
    free(r);
}

static bool jreq_owner_ok(const jreq *r, const char *team_id, const char *alias)
{
    if (r->has_team)
        return team_id && strcmp(team_id, r->team_id) == 0;
    return !team_id && alias && strcmp(alias, r->key_alias) == 0;
}

/* The summary of one job: a JSON object, then its owner. */
#define JOB_SUMMARY                                                                                \
    "SELECT json_build_object('id', j.id, 'object', 'job', 'type', j.type, 'status', j.status, "   \
    "'team_id', j.team_id, 'metadata', j.metadata, 'created_at', j.created_at, 'ended_at', "       \
    "j.ended_at, 'duration_ms', (extract(epoch from coalesce(j.ended_at, now()) - j.created_at) "  \
    "* 1000)::bigint, 'calls', c.calls, 'prompt_tokens', c.p, 'completion_tokens', c.o, "          \
    "'cached_tokens', c.k, 'cost', tollgate_usd(c.cost), 'price', tollgate_usd(c.price), "         \
    "'margin', tollgate_usd(c.price - c.cost), 'credits_charged', tollgate_usd(coalesce((SELECT "  \
    "-sum(amount_nano) FROM credit_transactions WHERE kind = 'job' AND reference = j.id::text), "  \
    "0)::bigint))::text, j.team_id::text, j.key_alias FROM jobs j, LATERAL (SELECT count(*) AS "   \
    "calls, "                                                                                      \
    "coalesce(sum(prompt_tokens), 0) AS p, coalesce(sum(completion_tokens), 0) AS o, "             \
    "coalesce(sum(cached_tokens), 0) AS k, coalesce(sum(cost_nano), 0)::bigint AS cost, "          \
    "coalesce(sum(price_nano), 0)::bigint AS price FROM calls WHERE job_id = j.id AND at >= "      \
    "j.created_at - interval '1 hour') c WHERE j.id = $1::uuid"

static void send_summary(jreq *r);

static void on_result(void *ud, const PGresult *res, const pg_error *err)
{
    jreq *r = ud;
    http_req *req = r->req;
    r->q = NULL;
    jreq_detach(r);
    if (err) {
        if (err->kind == PG_ERR_SERVER) {
            log_error(NULL, "jobs: the database refused a statement: %s (%s)", err->message,
                      err->sqlstate);
            jerr(req, 500, "database_error", "the database refused the statement; see the log");
        } else {
            jerr(req, 503, "database_unavailable", "database unavailable: %s", err->message);
        }
        free(r);
        return;
    }
    int n = PQntuples(res);
    switch (r->op) {
    case J_CREATE: {
        if (n != 1) {
            jerr(req, 402, "credits_exhausted",
                 "Out of credits for this team: a job costs 1 credit and the balance is below "
                 "it. Add credits to continue.");
            break;
        }
        const char *row = pg_value(res, 0, 0);
        job_put(r->j, pg_value(res, 0, 1), r->has_team ? r->team_id : NULL, r->key_alias, true);
        http_respond(req, 201, "application/json", NULL, row, strlen(row));
        break;
    }
    case J_GET:
        if (n != 1 || !jreq_owner_ok(r, pg_value(res, 0, 1), pg_value(res, 0, 2))) {
            jerr(req, 404, "job_not_found", "No such job: %s.", r->id);
        } else {
            const char *row = pg_value(res, 0, 0);
            http_respond(req, 200, "application/json", NULL, row, strlen(row));
        }
        break;
    case J_END: {
        /* columns: status before, team_id, key_alias, ended now (0/1) */
        if (n != 1 || !jreq_owner_ok(r, pg_value(res, 0, 1), pg_value(res, 0, 2))) {
            jerr(req, 404, "job_not_found", "No such job: %s.", r->id);
            break;
        }
        if (strcmp(pg_value(res, 0, 3), "0") == 0) {
            jerr(req, 409, "job_not_running", "The job %s is already %s.", r->id,
                 pg_value(res, 0, 0));
            break;
        }
        job_put(r->j, r->id, r->has_team ? r->team_id : NULL, r->key_alias, false);
        /* answer with the summary */
        r->op = J_GET;
        r->req = req;
        req->app = r;
        req->on_abort = jreq_abort;
        send_summary(r);
        return;
    }
    case J_USAGE: {
        const char *row = n == 1 ? pg_value(res, 0, 0) : NULL;
        if (!row)
            jerr(req, 500, "internal", "no usage");
        else
            http_respond(req, 200, "application/json", NULL, row, strlen(row));
        break;
    }
    }
    free(r);
}

static void run(jreq *r, const char *sql, const pg_stmt *stmt, int n, const char *const *params)
{
    r->req->app = r;
    r->req->on_abort = jreq_abort;
    r->q = pg_send(store_pool(r->j->st), stmt, sql, n, params, on_result, r);
    if (!r->q) {
        jreq_detach(r);
        jerr(r->req, 503, "database_unavailable",
             "database unavailable: too many queued statements");
        free(r);
    }
}

static const pg_stmt summary_stmt = {"tg_job_summary", JOB_SUMMARY, 1};

static void send_summary(jreq *r)
{
    const char *params[1] = {r->id};
    run(r, NULL, &summary_stmt, 1, params);
}

/* Characters of a valid UTF-8 string (jansson checked it): what
 * PostgreSQL's length() counts. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static void do_create(jreq *r, http_req *req, const job_owner *who)
{
    json_error_t je;
    json_t *body = req->body.len ? json_loadb(req->body.p, req->body.len, 0, &je) : json_object();
    const char *type = json_string_value(json_object_get(body, "type"));
    json_t *meta = json_object_get(body, "metadata");
    const char *k;
    json_t *v;
    char *meta_text = NULL;
    if (!json_is_object(body)) {
        jerr(req, 400, "invalid_json", "The body must be a JSON object.");
        goto out;
    }
    json_object_foreach(body, k, v)
    {
        if (strcmp(k, "type") != 0 && strcmp(k, "metadata") != 0) {
            jerr(req, 400, "invalid_field", "%.60s: unknown field (a job takes type and metadata)",
                 k);
            goto out;
        }
    }
    size_t type_chars = type ? utf8_chars(type, strlen(type)) : 0;
    if (type_chars < 1 || type_chars > 200) {
        jerr(req, 400, "invalid_field", "type: required, a string of 1 to 200 characters");
        goto out;
    }
    if (meta && !json_is_object(meta)) {
        jerr(req, 400, "invalid_field", "metadata: must be a JSON object");
        goto out;
    }
    meta_text = meta ? json_dumps(meta, JSON_COMPACT) : strdup("{}");
    if (!meta_text) {
        jerr(req, 500, "internal", "out of memory");
        goto out;
    }
    const char *params[5] = {who->team_id, who->key_id, who->key_alias, type, meta_text};
    run(r,
        /* a team paying per job (job_based) starts one only while its
         * credits cover it */
        "WITH j AS (INSERT INTO jobs (team_id, key_id, key_alias, type, metadata) SELECT "
        "$1::uuid, $2::uuid, $3, $4, $5::jsonb WHERE NOT EXISTS (SELECT 1 FROM teams t WHERE "
        "t.id = $1::uuid AND t.budget_mode = 'job_based' AND t.credit_balance_nano + "
        "t.credit_limit_nano < 1000000000) RETURNING *) SELECT json_build_object('id', j.id, "
        "'object', 'job', 'type', j.type, 'status', j.status, 'team_id', j.team_id, 'metadata', "
        "j.metadata, 'created_at', j.created_at)::text, j.id::text FROM j",
        NULL, 5, params);
    r = NULL;
out:
    free(r);
    free(meta_text);
    json_decref(body);
}

static void do_end(jreq *r, const char *status)
{
    snprintf(r->status, sizeof(r->status), "%s", status);
    const char *params[4] = {r->id, r->status, r->has_team ? r->team_id : NULL, r->key_alias};
    /* one statement: end it if it is the caller's and running, and in
     * job_based teams charge one credit for a completed job (once: the
     * (kind, reference) key) */
    run(r,
        "WITH cur AS (SELECT * FROM jobs WHERE id = $1::uuid), "
        "ended AS (UPDATE jobs SET status = $2, ended_at = now(), updated_at = now() "
        "WHERE id = $1::uuid AND status = 'running' AND (team_id = $3::uuid OR ($3::uuid IS NULL "
        "AND team_id IS NULL AND key_alias = $4)) RETURNING *), "
        "charge AS (INSERT INTO credit_transactions (team_id, amount_nano, kind, reference, actor, "
        "note) SELECT e.team_id, -1000000000, 'job', e.id::text, 'gateway', 'job completed' FROM "
        "ended e JOIN teams t ON t.id = e.team_id WHERE e.status = 'completed' AND t.budget_mode "
        "= 'job_based' ON CONFLICT (kind, reference) DO NOTHING RETURNING 1) "
        "SELECT cur.status, cur.team_id::text, cur.key_alias, (SELECT count(*) FROM ended)::text, "
        "(SELECT count(*) FROM charge)::text FROM cur",
        NULL, 4, params);
}

static void do_usage(jreq *r, const char *team_id)
{
    if (!r->has_team || strcmp(team_id, r->team_id) != 0) {
        jreq_detach(r);
        jerr(r->req, 404, "team_not_found",
             "No such team (a key reads the usage of its own team only).");
        free(r);
        return;
    }
    const char *params[1] = {team_id};
    run(r,
        "SELECT json_build_object('object', 'team_usage', 'team_id', $1::uuid, 'requests', "
        "coalesce(sum(requests), 0), 'errors', coalesce(sum(errors), 0), 'prompt_tokens', "
        "coalesce(sum(prompt_tokens), 0), 'completion_tokens', coalesce(sum(completion_tokens), "
        "0), "
        "'cost', tollgate_usd(coalesce(sum(cost_nano), 0)::bigint), 'price', "
        "tollgate_usd(coalesce(sum(price_nano), 0)::bigint), 'margin', "
        "tollgate_usd(coalesce(sum(price_nano - cost_nano), 0)::bigint), 'credit_balance', "
        "(SELECT tollgate_usd(credit_balance_nano) FROM teams WHERE id = $1::uuid))::text FROM "
        "usage_daily WHERE team_id = $1::uuid",
        NULL, 1, params);
}

void jobs_handle(jobs *j, const job_owner *who, http_req *req, const char *rest, bool usage)
{
    if (!j->st) {
        jerr(req, 503, "no_database", "Jobs need a database (database.url).");
        return;
    }
    jreq *r = calloc(1, sizeof(*r));
    if (!r) {
        jerr(req, 500, "internal", "out of memory");
        return;
    }
    r->j = j;
    r->req = req;
    r->has_team = who->team_id != NULL;
    snprintf(r->team_id, sizeof(r->team_id), "%s", who->team_id ? who->team_id : "");
    snprintf(r->key_alias, sizeof(r->key_alias), "%s", who->key_alias ? who->key_alias : "");
    if (usage) {
        if (req->method != HTTP_GET)
            goto method;
        r->op = J_USAGE;
        do_usage(r, rest);
        return;
    }
    if (!*rest || strcmp(rest, "/create") == 0) {
        if (req->method != HTTP_POST)
            goto method;
        r->op = J_CREATE;
        do_create(r, req, who);
        return;
    }
    /* "/<id>" or "/<id>/<action>" */
    const char *id = rest + 1, *slash = strchr(id, '/');
    size_t idl = slash ? (size_t)(slash - id) : strlen(id);
    snprintf(r->id, sizeof(r->id), "%.*s", (int)(idl < 36 ? idl : 36), id);
    if (idl != 36 || !is_uuid(r->id)) {
        jerr(req, 404, "job_not_found", "No such job (not a job id).");
        free(r);
        return;
    }
    id_lower(r->id, r->id);
    if (!slash) {
        if (req->method != HTTP_GET)
            goto method;
        r->op = J_GET;
        send_summary(r);
        return;
    }
    if (strcmp(slash, "/complete") == 0 || strcmp(slash, "/fail") == 0) {
        if (req->method != HTTP_POST)
            goto method;
        r->op = J_END;
        do_end(r, slash[1] == 'c' ? "completed" : "failed");
        return;
    }
    jerr(req, 404, "unknown_url", "Unknown job action.");
    free(r);
    return;
method:
    free(r);
    jerr(req, 405, "method_not_allowed", "Method %s is not allowed here.",
         llhttp_method_name(req->method));
}

void jobs_forget_all(jobs *j)
{
    cache_clear(j);
}

jobs *jobs_new(store *st)
{
    jobs *j = calloc(1, sizeof(*j));
    if (j)
        j->st = st;
    return j;
}

void jobs_free(jobs *j)
{
    if (!j)
        return;
    cache_clear(j);
    free(j);
}
