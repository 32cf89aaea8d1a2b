/* admin.c - the admin API (see admin.h and docs/admin-api.md).
 *
 *   /admin/<resource>                  GET list, POST create
 *   /admin/<resource>/<id>             GET, PATCH, DELETE
 *   /admin/<resource>/<id>/<action>    POST (suspend, block, activate, ...)
 *
 * A resource is a table described by a field list. Requests are validated
 * in C against it (errors name the field), turned into one parameterised
 * statement, and the row comes back as JSON made by PostgreSQL
 * (row_to_json), so no DOM is built for output. SQL text is composed only
 * from the constant tables below, never from input: input travels as
 * parameters. */
#include "daemon/admin.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billing/money.h"
#include "crypto/crypto.h"
#include "crypto/fernet.h"
#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "providers/openai.h"

#define ADM_MAX_BODY (1u << 20) /* admin request bodies */
#define ADM_MAX_OUT (64u << 20) /* a response */
#define ADM_DEFAULT_LIMIT 100
#define ADM_MAX_LIMIT 500
#define ADM_SECRET_MAX 8192
#define ADM_KEY_BYTES 32 /* random bytes in a new virtual or admin key */

/* ------------------------------------------------------------ resources */

typedef enum ftype {
    FT_TEXT,     /* string, length min..max */
    FT_UUID,     /* a UUID string */
    FT_INT,      /* integer in min..max */
    FT_BOOL,     /* true/false */
    FT_OBJECT,   /* a JSON object (metadata) */
    FT_STRINGS,  /* array of strings (each 1..max), stored as text[] */
    FT_TIME,     /* RFC 3339 timestamp */
    FT_ENUM,     /* one of enums */
    FT_USD,      /* decimal USD (string or number) stored as nano in column */
    FT_DURATION, /* "1h", "30d", "1mo" */
    FT_ROUTES,   /* [{provider, model, weight, priority}] */
    FT_PROVIDER, /* a provider name of the config */
    FT_GROUP,    /* an access group name */
} ftype;

#define AF_REQUIRED 1u /* must be given at create */
#define AF_FIXED 2u    /* cannot change after create */
#define AF_NULL 4u     /* null accepted (stores NULL) */
#define AF_NOCREATE 8u /* only through update (not settable at create) */

typedef struct afield {
    const char *name;   /* JSON name */
    const char *column; /* SQL column; NULL = name */
    ftype type;
    unsigned flags;
    int64_t min, max;         /* FT_INT range; string lengths */
    const char *const *enums; /* FT_ENUM values, NULL-terminated */
} afield;

/* A fixed update reachable as POST .../<id>/<name>. */
typedef struct aaction {
    const char *name; /* "suspend" */
    const char *set;  /* SQL SET list (constants only) */
} aaction;

typedef enum rflag {
    R_KEYGEN = 1,      /* create generates a key (key_hash, key_prefix) and returns it once */
    R_SECRET = 2,      /* has an encrypted secret: "secret" in, secret_enc + secret_mask stored */
    R_OWNER_WRITE = 4, /* writes need the owner role */
    R_ACTORS = 8,      /* has created_by / updated_by */
    R_NAME_ID = 16,    /* the id in the path is the name (text), not a UUID */
    R_INT_ID = 32,     /* the id is an integer (audit log) */
} rflag;

typedef struct resource {
    const char *path;  /* "teams" */
    const char *table; /* "teams" */
    const char *noun;  /* "team" */
    const char *out;   /* SELECT list of the JSON shape */
    const afield *fields;
    size_t nfields;
    const afield *filters; /* list query parameters (column = value) */
    size_t nfilters;
    const aaction *actions;
    size_t nactions;
    const char *order;      /* ORDER BY of lists */
    const char *idcol;      /* "id" or "name" */
    int kind;               /* tn_kind to reload after a write, or -1 */
    unsigned flags;         /* rflag */
    const char *key_prefix; /* R_KEYGEN: "tg-" */
} resource;

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define TS "created_at, updated_at"

static const char *const budget_modes[] = {"consumption_usd", "consumption_tokens", "job_based",
                                           NULL};
static const char *const roles[] = {"owner", "admin", "viewer", NULL};
static const char *const levels[] = {"eco", "balanced", "precision", NULL};

static const afield org_fields[] = {
    {"name", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"max_budget", "max_budget_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"budget_duration", NULL, FT_DURATION, AF_NULL, 0, 0, NULL},
    {"metadata", NULL, FT_OBJECT, 0, 0, 0, NULL},
};

static const afield team_fields[] = {
    {"org_id", NULL, FT_UUID, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
    {"name", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"budget_mode", NULL, FT_ENUM, 0, 0, 0, budget_modes},
    {"tokens_per_credit", NULL, FT_INT, 0, 1, INT64_C(1000000000000), NULL},
    {"credit_limit", "credit_limit_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"power_level", NULL, FT_ENUM, AF_NULL, 0, 0, levels},
    {"rpm", NULL, FT_INT, AF_NULL, 0, 1000000000, NULL},
    {"tpm", NULL, FT_INT, AF_NULL, 0, INT64_C(1000000000000), NULL},
    {"max_budget", "max_budget_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"budget_duration", NULL, FT_DURATION, AF_NULL, 0, 0, NULL},
    {"metadata", NULL, FT_OBJECT, 0, 0, 0, NULL},
};
static const afield team_filters[] = {
    {"org_id", NULL, FT_UUID, 0, 0, 0, NULL},
    {"status", NULL, FT_ENUM, 0, 0, 0, (const char *const[]){"active", "suspended", NULL}},
};
static const aaction team_actions[] = {
    {"suspend", "status = 'suspended'"},
    {"resume", "status = 'active'"},
};

static const afield key_fields[] = {
    {"team_id", NULL, FT_UUID, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
    {"alias", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"models", NULL, FT_STRINGS, 0, 1, 256, NULL},
    {"access_groups", NULL, FT_STRINGS, 0, 1, 100, NULL},
    {"rpm", NULL, FT_INT, AF_NULL, 0, 1000000000, NULL},
    {"tpm", NULL, FT_INT, AF_NULL, 0, INT64_C(1000000000000), NULL},
    {"max_budget", "max_budget_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"budget_duration", NULL, FT_DURATION, AF_NULL, 0, 0, NULL},
    {"expires_at", NULL, FT_TIME, AF_NULL, 0, 0, NULL},
    {"blocked", NULL, FT_BOOL, 0, 0, 0, NULL},
    {"power_level", NULL, FT_ENUM, AF_NULL, 0, 0, levels},
    {"metadata", NULL, FT_OBJECT, 0, 0, 0, NULL},
};
static const afield key_filters[] = {
    {"team_id", NULL, FT_UUID, 0, 0, 0, NULL},
    {"blocked", NULL, FT_BOOL, 0, 0, 0, NULL},
};
static const aaction key_actions[] = {
    {"block", "blocked = true"},
    {"unblock", "blocked = false"},
};

static const afield alias_fields[] = {
    {"name", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"routes", NULL, FT_ROUTES, AF_REQUIRED, 1, 16, NULL},
    {"access_group", NULL, FT_GROUP, AF_NULL, 0, 0, NULL},
    {"price_input", "price_input_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"price_output", "price_output_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"price_cached_input", "price_cached_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"markup_bps", NULL, FT_INT, AF_NULL, 0, 1000000, NULL},
};
static const afield alias_filters[] = {
    {"access_group", NULL, FT_GROUP, 0, 0, 0, NULL},
};

static const afield price_fields[] = {
    {"provider", NULL, FT_TEXT, AF_REQUIRED | AF_FIXED, 1, 64, NULL},
    {"model", NULL, FT_TEXT, AF_REQUIRED | AF_FIXED, 1, 256, NULL},
    {"input", "input_nano", FT_USD, AF_REQUIRED, 0, 0, NULL},
    {"output", "output_nano", FT_USD, AF_REQUIRED, 0, 0, NULL},
    {"cached_input", "cached_input_nano", FT_USD, AF_NULL, 0, 0, NULL},
    {"cache_write", "cache_write_nano", FT_USD, AF_NULL, 0, 0, NULL},
};
static const afield price_filters[] = {
    {"provider", NULL, FT_TEXT, 0, 1, 64, NULL},
    {"model", NULL, FT_TEXT, 0, 1, 256, NULL},
};

static const afield group_fields[] = {
    {"name", NULL, FT_GROUP, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
    {"description", NULL, FT_TEXT, 0, 0, 1000, NULL},
};

static const afield cred_fields[] = {
    {"org_id", NULL, FT_UUID, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
    {"provider", NULL, FT_PROVIDER, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
    {"name", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"active", NULL, FT_BOOL, AF_FIXED, 0, 0, NULL},
};
static const afield cred_filters[] = {
    {"org_id", NULL, FT_UUID, 0, 0, 0, NULL},
    {"provider", NULL, FT_TEXT, 0, 1, 100, NULL},
    {"active", NULL, FT_BOOL, 0, 0, 0, NULL},
};
static const aaction cred_actions[] = {
    {"deactivate", "active = false"},
    /* "activate" is its own statement: it switches the org's active one */
};

static const afield byok_fields[] = {
    {"team_id", NULL, FT_UUID, AF_FIXED | AF_NULL, 0, 0, NULL},
    {"key_id", NULL, FT_UUID, AF_FIXED | AF_NULL, 0, 0, NULL},
    {"provider", NULL, FT_PROVIDER, AF_REQUIRED | AF_FIXED, 0, 0, NULL},
};
static const afield byok_filters[] = {
    {"team_id", NULL, FT_UUID, 0, 0, 0, NULL},
    {"key_id", NULL, FT_UUID, 0, 0, 0, NULL},
    {"provider", NULL, FT_TEXT, 0, 1, 100, NULL},
};

static const afield admin_fields[] = {
    {"name", NULL, FT_TEXT, AF_REQUIRED, 1, 200, NULL},
    {"role", NULL, FT_ENUM, AF_REQUIRED, 0, 0, roles},
    {"blocked", NULL, FT_BOOL, AF_NOCREATE, 0, 0, NULL},
};
static const afield admin_filters[] = {
    {"role", NULL, FT_ENUM, 0, 0, 0, roles},
};

static const afield audit_filters[] = {
    {"entity", NULL, FT_TEXT, 0, 1, 100, NULL},
    {"entity_id", NULL, FT_TEXT, 0, 1, 100, NULL},
    {"actor", NULL, FT_TEXT, 0, 1, 300, NULL},
    {"action", NULL, FT_TEXT, 0, 1, 100, NULL},
};

static const resource resources[] = {
    {"organizations", "organizations", "organization",
     "id, name, tollgate_usd(max_budget_nano) AS max_budget, budget_duration, metadata, " TS,
     org_fields, N(org_fields), NULL, 0, NULL, 0, "created_at, id", "id", -1, 0, NULL},
    {"teams", "teams", "team",
     "id, org_id, name, status, budget_mode, tokens_per_credit, "
     "tollgate_usd(credit_balance_nano) AS credit_balance, tollgate_usd(credit_limit_nano) AS "
     "credit_limit, tollgate_usd(max_budget_nano) AS "
     "max_budget, budget_duration, rpm, tpm, power_level, metadata, " TS,
     team_fields, N(team_fields), team_filters, N(team_filters), team_actions, N(team_actions),
     "created_at, id", "id", TN_TEAM, 0, NULL},
    {"keys", "virtual_keys", "key",
     "id, key_prefix, alias, team_id, models, access_groups, rpm, tpm, "
     "tollgate_usd(max_budget_nano) AS max_budget, budget_duration, budget_reset_at, expires_at, "
     "blocked, power_level, metadata, " TS,
     key_fields, N(key_fields), key_filters, N(key_filters), key_actions, N(key_actions),
     "created_at, id", "id", TN_KEY, R_KEYGEN, "tg-"},
    {"model-aliases", "model_aliases", "model alias",
     "id, name, routes, access_group, tollgate_usd(price_input_nano) AS price_input, "
     "tollgate_usd(price_output_nano) AS price_output, "
     "tollgate_usd(price_cached_nano) AS price_cached_input, markup_bps, " TS,
     alias_fields, N(alias_fields), alias_filters, N(alias_filters), NULL, 0, "name", "id",
     TN_ALIAS, 0, NULL},
    {"prices", "price_overrides", "price",
     "id, provider, model, tollgate_usd(input_nano) AS input, tollgate_usd(output_nano) AS output, "
     "tollgate_usd(cached_input_nano) AS cached_input, tollgate_usd(cache_write_nano) AS "
     "cache_write, created_by, updated_by, " TS,
     price_fields, N(price_fields), price_filters, N(price_filters), NULL, 0, "provider, model",
     "id", TN_PRICE, R_ACTORS, NULL},
    {"access-groups", "access_groups", "access group", "name, description, " TS, group_fields,
     N(group_fields), NULL, 0, NULL, 0, "name", "name", -1, R_NAME_ID, NULL},
    {"credentials", "provider_credentials", "credential",
     "id, org_id, provider, name, secret_mask, active, created_by, updated_by, " TS, cred_fields,
     N(cred_fields), cred_filters, N(cred_filters), cred_actions, N(cred_actions), "created_at, id",
     "id", TN_CRED, R_SECRET | R_ACTORS, NULL},
    {"byok", "byok_keys", "BYOK key",
     "id, team_id, key_id, provider, secret_mask, created_by, updated_by, " TS, byok_fields,
     N(byok_fields), byok_filters, N(byok_filters), NULL, 0, "created_at, id", "id", TN_BYOK,
     R_SECRET | R_ACTORS, NULL},
    {"admin-keys", "admin_keys", "admin key",
     "id, key_prefix, name, role, blocked, created_by, " TS, admin_fields, N(admin_fields),
     admin_filters, N(admin_filters), NULL, 0, "created_at, id", "id", TN_ADMIN,
     R_KEYGEN | R_OWNER_WRITE, "tga-"},
    {"audit-log", "audit_log", "audit entry",
     "id, at, actor, action, entity, entity_id, before, after", NULL, 0, audit_filters,
     N(audit_filters), NULL, 0, "id DESC", "id", -1, R_INT_ID, NULL},
};

/* Constraint names PostgreSQL reports, and what they mean to a caller. */
static const struct {
    const char *name;   /* constraint */
    const char *param;  /* field to name */
    const char *insert; /* message on insert/update */
    const char *remove; /* message on delete (foreign keys), NULL = insert's */
} constraints[] = {
    {"organizations_name_key", "name", "an organization with this name already exists", NULL},
    {"teams_org_id_name_key", "name", "a team with this name already exists in the organization",
     NULL},
    {"teams_org_id_fkey", "org_id", "no such organization",
     "the organization still has teams; delete them first"},
    {"access_groups_pkey", "name", "an access group with this name already exists", NULL},
    {"model_aliases_name_key", "name", "a model alias with this name already exists", NULL},
    {"model_aliases_access_group_fkey", "access_group", "no such access group", NULL},
    {"model_aliases_markup_or_price", "markup_bps",
     "give either a price or a markup over the provider's cost, not both", NULL},
    {"price_overrides_provider_model_key", "model",
     "a price for this provider and model already exists (update it)", NULL},
    {"price_overrides_provider_check", "provider",
     "a provider is named in lowercase letters, digits, '-' and '_' (the catalog's name, such as "
     "openai, or a config provider's name)", NULL},
    {"virtual_keys_team_id_alias_key", "alias", "a key with this alias already exists in the team",
     NULL},
    {"virtual_keys_team_id_fkey", "team_id", "no such team", NULL},
    {"provider_credentials_org_id_provider_name_key", "name",
     "a credential with this name already exists for this organization and provider", NULL},
    {"provider_credentials_org_id_fkey", "org_id", "no such organization", NULL},
    {"provider_credentials_one_active", "active",
     "another credential is already active for this organization and provider; activate this one "
     "with POST /admin/credentials/{id}/activate to switch",
     NULL},
    {"byok_keys_team", "provider", "the team already has a BYOK key for this provider", NULL},
    {"byok_keys_key", "provider", "the key already has a BYOK key for this provider", NULL},
    {"byok_keys_team_id_fkey", "team_id", "no such team", NULL},
    {"byok_keys_key_id_fkey", "key_id", "no such key", NULL},
    {"byok_keys_check", "team_id", "give exactly one of team_id and key_id", NULL},
    {"admin_keys_name_key", "name", "an admin key with this name already exists", NULL},
    {"credit_transactions_kind_reference_key", "reference",
     "a transaction of this kind with this reference already exists", NULL},
    {"credit_transactions_team_id_fkey", "team_id", "no such team", NULL},
};

/* ------------------------------------------------------------ a request */

enum op { OP_LIST, OP_GET, OP_CREATE, OP_UPDATE, OP_DELETE, OP_ACTION, OP_ACTIVATE };

typedef struct actx {
    http_req *req; /* NULL once the client went away */
    store *st;
    const config *cfg; /* own reference */
    const resource *res;
    enum op op;
    char actor[256]; /* "master" or "admin:<name>" */
    tn_role role;
    pg_query *q;         /* the statement in flight */
    bool reloading;      /* waiting for store_reload */
    int pending;         /* store_reload calls not done yet */
    int status;          /* success status: 200 or 201 */
    int limit, offset;   /* OP_LIST */
    bool single;         /* OP_LIST answered as one object (credentials/active) */
    bool include_secret; /* OP_GET of a credential by its owner */
    char newkey[96];     /* R_KEYGEN: the plaintext key, wiped after the answer */
    buf out;             /* the answer, built before a reload */
} actx;

static void adm_log(http_req *req, int status, const char *actor)
{
    buf b;
    buf_init(&b, 4096);
    int rc = buf_printf(&b, "{\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"", req->request_id,
                        llhttp_method_name(req->method));
    if (!rc)
        rc = buf_append_json_escaped(&b, req->path.p, req->path.len > 256 ? 256 : req->path.len);
    if (!rc)
        rc = buf_append_str(&b, "\",\"admin\":");
    if (!rc && actor) {
        rc = buf_append_str(&b, "\"");
        if (!rc)
            rc = buf_append_json_escaped(&b, actor, strlen(actor));
        if (!rc)
            rc = buf_append_str(&b, "\"");
    } else if (!rc) {
        rc = buf_append_str(&b, "null");
    }
    if (!rc)
        rc = buf_printf(&b, ",\"status\":%d,\"latency_ms\":%.3f}", status,
                        (double)(clock_mono_ns() - req->t_start_ns) / 1e6);
    if (!rc)
        log_access(b.data, b.len);
    buf_free(&b);
}

static const char *type_of_status(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 409:
        return "conflict_error";
    case 503:
        return "unavailable_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

static void __attribute__((format(printf, 6, 7)))
adm_error(http_req *req, const char *actor, int status, const char *code, const char *param,
          const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    buf b;
    buf_init(&b, 4096);
    adm_log(req, status, actor);
    if (openai_error_body(&b, msg, type_of_status(status), param, code) != 0) {
        buf_free(&b);
        http_respond(req, 500, "text/plain", NULL, "internal error\n", 15);
        return;
    }
    http_respond(req, status, "application/json", status == 503 ? "retry-after: 1\r\n" : NULL,
                 b.data, b.len);
    buf_free(&b);
}

static void actx_free(actx *c)
{
    explicit_bzero(c->newkey, sizeof(c->newkey));
    if (c->out.data)
        explicit_bzero(c->out.data, c->out.len);
    buf_free(&c->out);
    config_unref(c->cfg);
    free(c);
}

static void on_abort(http_req *req, void *ud)
{
    (void)ud;
    actx *c = req->app;
    c->req = NULL;
    if (c->q) {
        pg_cancel(c->q);
        c->q = NULL;
    }
    if (!c->reloading)
        actx_free(c);
    /* else reload_done frees it */
}

static void finish(actx *c)
{
    http_req *req = c->req;
    req->app = NULL;
    req->on_abort = NULL;
    adm_log(req, c->status, c->actor);
    http_respond(req, c->status, "application/json", NULL, c->out.data ? c->out.data : "{}",
                 c->out.data ? c->out.len : 2);
    actx_free(c);
}

static void fail(actx *c, int status, const char *code, const char *param, const char *msg)
{
    http_req *req = c->req;
    req->app = NULL;
    req->on_abort = NULL;
    adm_error(req, c->actor, status, code, param, "%s", msg);
    actx_free(c);
}

/* ------------------------------------------------------------ parameters */

typedef struct params {
    char *v[PG_MAX_PARAMS];
    int n;
} params;

static int param_add(params *p, const char *s, size_t n)
{
    if (p->n >= PG_MAX_PARAMS)
        return -E2BIG;
    if (!s) {
        p->v[p->n++] = NULL;
        return p->n;
    }
    char *d = malloc(n + 1);
    if (!d)
        return -ENOMEM;
    memcpy(d, s, n);
    d[n] = '\0';
    p->v[p->n++] = d;
    return p->n;
}

static int param_str(params *p, const char *s)
{
    return param_add(p, s, s ? strlen(s) : 0);
}

static void params_free(params *p)
{
    for (int i = 0; i < p->n; i++) {
        if (p->v[i]) {
            explicit_bzero(p->v[i], strlen(p->v[i]));
            free(p->v[i]);
        }
    }
    p->n = 0;
}

/* ------------------------------------------------------------ validation */

/* A validation failure: the field and why. */
typedef struct verr {
    char param[64];
    char msg[300];
} verr;

static int __attribute__((format(printf, 3, 4)))
bad(verr *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    snprintf(e->param, sizeof(e->param), "%s", param);
    int n = snprintf(e->msg, sizeof(e->msg), "%s: ", param);
    va_start(ap, fmt);
    vsnprintf(e->msg + n, sizeof(e->msg) - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* Characters (code points) of valid UTF-8 (jansson checked it): the bytes
 * that do not continue a sequence. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static bool utf8_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

static bool is_group_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 100 || !isalnum((unsigned char)s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
            return false;
    return true;
}

static bool is_duration(const char *s)
{
    size_t i = 0;
    while (isdigit((unsigned char)s[i]))
        i++;
    if (i == 0 || i > 6 || (s[0] == '0'))
        return false;
    return strcmp(s + i, "s") == 0 || strcmp(s + i, "m") == 0 || strcmp(s + i, "h") == 0 ||
           strcmp(s + i, "d") == 0 || strcmp(s + i, "mo") == 0;
}

/* RFC 3339: 2026-01-31T12:00:00Z, with optional fraction and offset. */
static bool is_time(const char *s)
{
    static const char pat[] = "dddd-dd-ddTdd:dd:dd";
    size_t i;
    for (i = 0; pat[i]; i++) {
        if (pat[i] == 'd'   ? !isdigit((unsigned char)s[i])
            : pat[i] == 'T' ? (s[i] != 'T' && s[i] != 't' && s[i] != ' ')
                            : s[i] != pat[i])
            return false;
    }
    if (s[i] == '.') {
        i++;
        if (!isdigit((unsigned char)s[i]))
            return false;
        while (isdigit((unsigned char)s[i]))
            i++;
    }
    if (s[i] == 'Z' || s[i] == 'z')
        return s[i + 1] == '\0';
    if ((s[i] == '+' || s[i] == '-') && isdigit((unsigned char)s[i + 1]) &&
        isdigit((unsigned char)s[i + 2]) && s[i + 3] == ':' && isdigit((unsigned char)s[i + 4]) &&
        isdigit((unsigned char)s[i + 5]))
        return s[i + 6] == '\0';
    return false;
}

static bool enum_ok(const char *const *vals, const char *s)
{
    for (size_t i = 0; vals[i]; i++)
        if (strcmp(vals[i], s) == 0)
            return true;
    return false;
}

static void enum_list(const char *const *vals, char *out, size_t n)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; vals[i] && o < n; i++)
        o += (size_t)snprintf(out + o, n - o, "%s%s", i ? ", " : "", vals[i]);
}

static bool provider_known(const config *cfg, const char *name)
{
    return config_find_provider(cfg, name) != NULL;
}

/* A string value's checks (also query parameters): into *text (owned by
 * the caller when *alloc). */
static int check_text(const config *cfg, const afield *f, const char *s, verr *e)
{
    size_t n = strlen(s);
    char list[200];
    switch (f->type) {
    case FT_TEXT:
        if ((int64_t)utf8_chars(s, n) < f->min || (f->max && (int64_t)utf8_chars(s, n) > f->max))
            return bad(e, f->name, "must be %lld to %lld characters", (long long)f->min,
                       (long long)f->max);
        if (!utf8_printable(s, n))
            return bad(e, f->name, "must not contain control characters");
        return 0;
    case FT_UUID:
        return is_uuid(s) ? 0 : bad(e, f->name, "must be a UUID");
    case FT_ENUM:
        enum_list(f->enums, list, sizeof(list));
        return enum_ok(f->enums, s) ? 0 : bad(e, f->name, "must be one of: %s", list);
    case FT_DURATION:
        return is_duration(s)
                   ? 0
                   : bad(e, f->name, "must be a duration like 30s, 15m, 1h, 7d, 30d or 1mo");
    case FT_TIME:
        return is_time(s)
                   ? 0
                   : bad(e, f->name, "must be an RFC 3339 time such as 2027-01-31T00:00:00Z");
    case FT_PROVIDER:
        return provider_known(cfg, s)
                   ? 0
                   : bad(e, f->name, "no provider called '%.100s' in the configuration", s);
    case FT_GROUP:
        return is_group_name(s) ? 0
                                : bad(e, f->name,
                                      "must be 1 to 100 letters, digits, '.', '_' or '-', "
                                      "starting with a letter or digit");
    case FT_BOOL:
        return strcmp(s, "true") == 0 || strcmp(s, "false") == 0
                   ? 0
                   : bad(e, f->name, "must be true or false");
    default:
        return bad(e, f->name, "cannot be given here");
    }
}

/* Validated routes, normalised to [{"provider","model","weight","priority"}]. */
static int routes_text(const config *cfg, const afield *f, json_t *v, char **out, verr *e)
{
    size_t i;
    json_t *r;
    if (!json_is_array(v) || json_array_size(v) < 1 || (int64_t)json_array_size(v) > f->max)
        return bad(e, f->name, "must be an array of 1 to %lld routes", (long long)f->max);
    json_t *norm = json_array();
    if (!norm)
        return -ENOMEM;
    json_array_foreach(v, i, r)
    {
        char p[64];
        snprintf(p, sizeof(p), "%s[%zu]", f->name, i);
        const char *prov = json_string_value(json_object_get(r, "provider"));
        const char *model = json_string_value(json_object_get(r, "model"));
        json_t *w = json_object_get(r, "weight"), *pr = json_object_get(r, "priority");
        const char *k;
        json_t *x;
        int rc = 0;
        if (!json_is_object(r))
            rc = bad(e, p, "must be an object with provider and model");
        else if (!prov)
            rc = bad(e, p, "provider is required");
        else if (!provider_known(cfg, prov))
            rc = bad(e, p, "no provider called '%.100s' in the configuration", prov);
        else if (!model || !*model || strlen(model) > 256 || !utf8_printable(model, strlen(model)))
            rc = bad(e, p, "model must be a string of 1 to 256 characters");
        else if (w && (!json_is_integer(w) || json_integer_value(w) < 1 ||
                       json_integer_value(w) > 1000000))
            rc = bad(e, p, "weight must be an integer from 1 to 1000000");
        else if (pr && (!json_is_integer(pr) || json_integer_value(pr) < -1000000 ||
                        json_integer_value(pr) > 1000000))
            rc = bad(e, p, "priority must be an integer from -1000000 to 1000000");
        json_object_foreach(r, k, x)
        {
            if (!rc && strcmp(k, "provider") && strcmp(k, "model") && strcmp(k, "weight") &&
                strcmp(k, "priority"))
                rc = bad(e, p, "unknown field '%.60s'", k);
        }
        if (rc) {
            json_decref(norm);
            return rc;
        }
        json_array_append_new(norm,
                              json_pack("{s:s,s:s,s:I,s:I}", "provider", prov, "model", model,
                                        "weight", (json_int_t)(w ? json_integer_value(w) : 1),
                                        "priority", (json_int_t)(pr ? json_integer_value(pr) : 0)));
    }
    *out = json_dumps(norm, JSON_COMPACT);
    json_decref(norm);
    return *out ? 0 : -ENOMEM;
}

/* One body field into its SQL parameter text: *val (malloc'd, NULL = SQL
 * NULL) and the SQL expression around $n in expr. */
static int field_value(const config *cfg, const afield *f, json_t *v, char **val, const char **cast,
                       verr *e)
{
    char num[32];
    *val = NULL;
    *cast = "";
    if (json_is_null(v)) {
        if (!(f->flags & AF_NULL))
            return bad(e, f->name, "must not be null");
        switch (f->type) {
        case FT_INT:
            *cast = "::bigint";
            break;
        case FT_USD:
            *cast = "::bigint";
            break;
        case FT_TIME:
            *cast = "::timestamptz";
            break;
        case FT_UUID:
            *cast = "::uuid";
            break;
        default:
            break;
        }
        return 0;
    }
    switch (f->type) {
    case FT_INT:
        if (!json_is_integer(v) || json_integer_value(v) < f->min || json_integer_value(v) > f->max)
            return bad(e, f->name, "must be an integer from %lld to %lld", (long long)f->min,
                       (long long)f->max);
        snprintf(num, sizeof(num), "%lld", (long long)json_integer_value(v));
        *cast = "::bigint";
        break;
    case FT_BOOL:
        if (!json_is_boolean(v))
            return bad(e, f->name, "must be true or false");
        snprintf(num, sizeof(num), "%s", json_is_true(v) ? "true" : "false");
        *cast = "::boolean";
        break;
    case FT_USD: {
        int64_t nano;
        const char *s;
        size_t n;
        char tmp[64];
        if (json_is_string(v)) {
            s = json_string_value(v);
            n = json_string_length(v);
        } else if (json_is_integer(v)) {
            n = (size_t)snprintf(tmp, sizeof(tmp), "%lld", (long long)json_integer_value(v));
            s = tmp;
        } else {
            return bad(e, f->name, "must be a decimal USD amount as a string, e.g. \"12.50\"");
        }
        int rc = money_parse(s, n, &nano);
        if (rc != 0 || nano < 0)
            return bad(e, f->name, "must be a non-negative USD amount with at most 9 decimals");
        snprintf(num, sizeof(num), "%lld", (long long)nano);
        *cast = "::bigint";
        break;
    }
    case FT_OBJECT:
        if (!json_is_object(v))
            return bad(e, f->name, "must be a JSON object");
        *val = json_dumps(v, JSON_COMPACT);
        *cast = "::jsonb";
        return *val ? 0 : -ENOMEM;
    case FT_STRINGS: {
        size_t i;
        json_t *x;
        if (!json_is_array(v) || json_array_size(v) > 1000)
            return bad(e, f->name, "must be an array of at most 1000 strings");
        json_array_foreach(v, i, x)
        {
            if (!json_is_string(x) || json_string_length(x) < (size_t)f->min ||
                json_string_length(x) > (size_t)f->max ||
                !utf8_printable(json_string_value(x), json_string_length(x)))
                return bad(e, f->name, "entry %zu must be a string of %lld to %lld characters", i,
                           (long long)f->min, (long long)f->max);
        }
        *val = json_dumps(v, JSON_COMPACT);
        *cast = "S"; /* text[] from a JSON array, see expr_of */
        return *val ? 0 : -ENOMEM;
    }
    case FT_ROUTES:
        *cast = "::jsonb";
        return routes_text(cfg, f, v, val, e);
    default: {
        if (!json_is_string(v))
            return bad(e, f->name, "must be a string");
        int rc = check_text(cfg, f, json_string_value(v), e);
        if (rc)
            return rc;
        *val = strdup(json_string_value(v));
        *cast = f->type == FT_UUID ? "::uuid" : f->type == FT_TIME ? "::timestamptz" : "";
        return *val ? 0 : -ENOMEM;
    }
    }
    *val = strdup(num);
    return *val ? 0 : -ENOMEM;
}

/* The SQL for parameter $n with cast (see field_value). */
static int expr_of(buf *b, int n, const char *cast)
{
    if (strcmp(cast, "S") == 0)
        return buf_printf(b, "ARRAY(SELECT jsonb_array_elements_text($%d::jsonb))", n);
    return buf_printf(b, "$%d%s", n, cast);
}

/* A body field as the next parameter, and its SQL expression appended
 * to expr. 0, -EINVAL (e names the field), or another error. */
static int field_param(actx *c, const afield *f, json_t *v, params *p, buf *expr, verr *e)
{
    char *val = NULL;
    const char *cast;
    int rc = field_value(c->cfg, f, v, &val, &cast, e);
    if (rc)
        return rc;
    int n = param_str(p, val);
    if (val) {
        explicit_bzero(val, strlen(val));
        free(val);
    }
    return n < 0 ? n : expr_of(expr, n, cast);
}

static const char *col_of(const afield *f)
{
    return f->column ? f->column : f->name;
}

static const afield *field_find(const afield *fs, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fs[i].name, name) == 0)
            return &fs[i];
    return NULL;
}

/* ------------------------------------------------------------ secrets and keys */

/* "sk-...wxyz": enough for a human to tell secrets apart, nothing more.
 * Whole characters (3 and 4 of them), never part of a UTF-8 sequence:
 * the column is text. cap >= 32. */
static void secret_mask(const char *s, size_t n, char *out, size_t cap)
{
    if (utf8_chars(s, n) >= 12) {
        size_t head = 0, tail = n;
        for (int k = 0; k < 3; k++) /* past 3 characters */
            for (head++; head < n && ((unsigned char)s[head] & 0xC0) == 0x80; head++)
                ;
        for (int k = 0; k < 4; k++) /* back over 4 characters */
            for (tail--; tail > 0 && ((unsigned char)s[tail] & 0xC0) == 0x80; tail--)
                ;
        snprintf(out, cap, "%.*s...%.*s", (int)head, s, (int)(n - tail), s + tail);
    } else {
        snprintf(out, cap, "...");
    }
}

/* Encrypts the body's "secret" into params: secret_enc and secret_mask
 * values appended (their $ numbers in *enc_n). */
static int secret_params(actx *c, json_t *body, params *p, int *enc_n, verr *e)
{
    json_t *v = json_object_get(body, "secret");
    if (!json_is_string(v) || json_string_length(v) < 1 || json_string_length(v) > ADM_SECRET_MAX)
        return bad(e, "secret", "must be a string of 1 to %d characters", ADM_SECRET_MAX);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (!utf8_printable(s, n))
        return bad(e, "secret", "must not contain control characters");
    if (c->cfg->secrets.n == 0)
        return bad(e, "secret", "no encryption key is configured (secrets.keys)");
    buf tok;
    buf_init(&tok, 64 * 1024);
    int rc = fernet_encrypt(&c->cfg->secrets, s, n, (uint64_t)time(NULL), &tok);
    if (rc == 0) {
        char mask[48]; /* 7 characters of up to 4 bytes and "..." */
        secret_mask(s, n, mask, sizeof(mask));
        rc = param_add(p, tok.data, tok.len);
        if (rc > 0) {
            *enc_n = rc;
            rc = param_str(p, mask);
        }
        rc = rc > 0 ? 0 : rc;
    }
    buf_free(&tok);
    return rc;
}

/* A new key: prefix + 43 chars of URL-safe base64 of 32 random bytes. Its
 * SHA-256 (hex) and visible prefix become parameters. */
static int keygen_params(actx *c, params *p, int *hash_n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t rnd[ADM_KEY_BYTES + 1] = {0};
    uint8_t d[CRYPTO_SHA256_LEN];
    char hex[CRYPTO_SHA256_HEX_LEN + 1], vis[32];
    size_t o = strlen(c->res->key_prefix);
    int rc = crypto_random(rnd, ADM_KEY_BYTES);
    if (rc)
        return rc;
    memcpy(c->newkey, c->res->key_prefix, o);
    for (size_t i = 0; i < ADM_KEY_BYTES; i += 3) {
        uint32_t v = (uint32_t)rnd[i] << 16 | (uint32_t)rnd[i + 1] << 8 |
                     (i + 2 < ADM_KEY_BYTES ? rnd[i + 2] : 0);
        size_t chars = i + 2 < ADM_KEY_BYTES ? 4 : 3; /* 32 bytes: 10 groups of 4, then 3 */
        for (size_t k = 0; k < chars; k++)
            c->newkey[o++] = b64[(v >> (18 - 6 * k)) & 63];
    }
    c->newkey[o] = '\0';
    explicit_bzero(rnd, sizeof(rnd));
    crypto_sha256(c->newkey, o, d);
    crypto_hex(d, sizeof(d), hex);
    snprintf(vis, sizeof(vis), "%.*s", (int)strlen(c->res->key_prefix) + 8, c->newkey);
    rc = param_str(p, hex);
    if (rc > 0) {
        *hash_n = rc;
        rc = param_str(p, vis);
    }
    return rc > 0 ? 0 : rc;
}

/* ------------------------------------------------------------ results */

static void reload_done(void *ud, bool ok)
{
    actx *c = ud;
    (void)ok;
    if (--c->pending > 0)
        return;
    c->reloading = false;
    if (!c->req) {
        actx_free(c);
        return;
    }
    finish(c);
}

/* Splices "key" (the new plaintext key) or "secret" into a JSON object
 * text as its first member. */
static int splice_member(buf *out, const char *json, const char *name, const char *val, size_t n)
{
    int rc = buf_append_str(out, "{\"");
    if (!rc)
        rc = buf_append_str(out, name);
    if (!rc)
        rc = buf_append_str(out, "\":\"");
    if (!rc)
        rc = buf_append_json_escaped(out, val, n);
    if (!rc)
        rc = buf_append_str(out, strcmp(json, "{}") == 0 ? "\"" : "\",");
    if (!rc)
        rc = buf_append_str(out, json + 1);
    return rc;
}

/* Maps a failed statement to an answer. */
static void fail_pg(actx *c, const pg_error *err)
{
    char msg[400];
    if (err->kind != PG_ERR_SERVER) {
        snprintf(msg, sizeof(msg), "database unavailable: %s", err->message);
        fail(c, 503, "database_unavailable", NULL, msg);
        return;
    }
    /* the constraint is one of the quoted names: the first for unique and
     * exclusion violations, the second for foreign keys ('... on table
     * "teams" violates foreign key constraint "teams_org_id_fkey"') */
    const char *q1 = strchr(err->message, '"');
    const char *q2 = q1 ? strchr(q1 + 1, '"') : NULL;
    bool fk = strcmp(err->sqlstate, "23503") == 0;
    for (; q1 && q2 && strncmp(err->sqlstate, "23", 2) == 0;
         q1 = strchr(q2 + 1, '"'), q2 = q1 ? strchr(q1 + 1, '"') : NULL) {
        for (size_t i = 0; i < N(constraints); i++) {
            if (strlen(constraints[i].name) != (size_t)(q2 - q1 - 1) ||
                memcmp(constraints[i].name, q1 + 1, (size_t)(q2 - q1 - 1)) != 0)
                continue;
            bool removing = c->op == OP_DELETE;
            const char *m =
                removing && constraints[i].remove ? constraints[i].remove : constraints[i].insert;
            int status = strcmp(err->sqlstate, "23505") == 0 ||
                                 strcmp(err->sqlstate, "23P01") == 0 || removing
                             ? 409
                         : fk ? 400
                              : 400;
            snprintf(msg, sizeof(msg), "%s", m);
            fail(c, status, status == 409 ? "conflict" : "invalid_field",
                 removing ? NULL : constraints[i].param, msg);
            return;
        }
    }
    if (strncmp(err->sqlstate, "22", 2) == 0 || strncmp(err->sqlstate, "23", 2) == 0) {
        snprintf(msg, sizeof(msg), "invalid value: %s", err->message);
        fail(c, 400, "invalid_value", NULL, msg);
        return;
    }
    log_error(NULL, "admin %s %s: database error %s: %s", c->res->path,
              c->op == OP_LIST ? "list" : "request", err->sqlstate, err->message);
    fail(c, 500, "database_error", NULL, "the database refused the statement; see the log");
}

static void on_result(void *ud, const PGresult *res, const pg_error *err)
{
    actx *c = ud;
    c->q = NULL;
    if (err) {
        fail_pg(c, err);
        return;
    }
    int n = PQntuples(res);
    int rc = 0;
    buf_init(&c->out, ADM_MAX_OUT);
    if (c->op == OP_LIST && !c->single) {
        int shown = n > c->limit ? c->limit : n;
        rc = buf_append_str(&c->out, "{\"object\":\"list\",\"data\":[");
        for (int i = 0; !rc && i < shown; i++) {
            if (i)
                rc = buf_append_str(&c->out, ",");
            if (!rc)
                rc = buf_append_str(&c->out, pg_value(res, i, 0));
        }
        if (!rc && n > c->limit)
            rc = buf_printf(&c->out, "],\"has_more\":true,\"next_offset\":%d}", c->offset + shown);
        else if (!rc)
            rc = buf_append_str(&c->out, "],\"has_more\":false,\"next_offset\":null}");
        if (rc) {
            fail(c, 500, "too_large", NULL, "the answer is too large; use a smaller limit");
            return;
        }
        finish(c);
        return;
    }
    if (n == 0) {
        char msg[200];
        snprintf(msg, sizeof(msg), "no such %s", c->res->noun);
        fail(c, 404, "not_found", NULL, msg);
        return;
    }
    const char *row = pg_value(res, 0, 0);
    if (c->op == OP_DELETE) {
        rc = buf_append_str(&c->out, "{\"id\":\"");
        if (!rc)
            rc = buf_append_json_escaped(&c->out, row, strlen(row));
        if (!rc)
            rc = buf_append_str(&c->out, "\",\"deleted\":true}");
    } else if (c->op == OP_CREATE && c->newkey[0]) {
        rc = splice_member(&c->out, row, "key", c->newkey, strlen(c->newkey));
    } else if (c->include_secret) {
        buf plain;
        const char *tok = pg_value(res, 0, 1);
        buf_init(&plain, 64 * 1024);
        rc = tok ? fernet_decrypt(&c->cfg->secrets, tok, strlen(tok), (uint64_t)time(NULL), 0,
                                  &plain)
                 : -EINVAL;
        if (rc == 0)
            rc = splice_member(&c->out, row, "secret", plain.data ? plain.data : "", plain.len);
        else
            log_error(NULL, "credential secret does not decrypt with secrets.keys");
        if (plain.data)
            explicit_bzero(plain.data, plain.len);
        buf_free(&plain);
        if (rc) {
            fail(c, 500, "secret_unreadable", NULL,
                 "the stored secret does not decrypt with the configured secrets.keys");
            return;
        }
    } else {
        rc = buf_append_str(&c->out, row);
    }
    if (rc) {
        fail(c, 500, "internal", NULL, "out of memory");
        return;
    }
    /* a write: make this instance's cache agree before answering */
    const char *id = pg_value(res, 0, PQnfields(res) - 1);
    if (c->op != OP_LIST && c->op != OP_GET && c->res->kind >= 0 && id && strlen(id) == TN_ID_LEN &&
        store_reload(c->st, (tn_kind)c->res->kind, id, reload_done, c) == 0)
        c->pending++;
    /* a deleted access group: the aliases it was cleared from (their ids,
     * comma-separated, in the middle column; see do_delete) */
    const char *aliases = c->op == OP_DELETE && PQnfields(res) == 3 ? pg_value(res, 0, 1) : NULL;
    for (const char *a = aliases; a && strlen(a) >= TN_ID_LEN;
         a += TN_ID_LEN + (a[TN_ID_LEN] == ',')) {
        char one[TN_ID_LEN + 1];
        memcpy(one, a, TN_ID_LEN);
        one[TN_ID_LEN] = '\0';
        if (store_reload(c->st, TN_ALIAS, one, reload_done, c) == 0)
            c->pending++;
    }
    c->reloading = c->pending > 0;
    if (c->reloading)
        return;
    finish(c);
}

/* ------------------------------------------------------------ statements */

static void run(actx *c, const buf *sql, params *p)
{
    c->q =
        pg_send(store_pool(c->st), NULL, sql->data, p->n, (const char *const *)p->v, on_result, c);
    params_free(p);
    if (!c->q)
        fail(c, 503, "database_unavailable", NULL,
             "database unavailable: too many queued statements");
}

/* Runs a statement built with result rc (0, or -EINVAL with e naming the
 * field, or another error), or answers why it could not be built; frees
 * sql either way. */
static void run_built(actx *c, int rc, buf *sql, params *p, int status, const verr *e)
{
    if (rc == -EINVAL && e) {
        params_free(p);
        fail(c, 400, "invalid_field", e->param, e->msg);
    } else if (rc) {
        params_free(p);
        fail(c, 500, "internal", NULL, "could not build the statement");
    } else {
        c->status = status;
        run(c, sql, p);
    }
    buf_free(sql);
}

/* "to_jsonb(x) - 'secret_enc' - 'key_hash'": audit images without secrets. */
#define MASKED(x) "to_jsonb(" x ") - 'secret_enc' - 'key_hash'"

/* ", aud AS (INSERT INTO audit_log ...)": the audit row of a write, from
 * the CTEs old (the row before) and/or new (after). */
static int audit_cte(buf *b, const resource *r, const char *action, bool has_old, bool has_new)
{
    const char *from = has_old && has_new ? "old JOIN new USING (" : has_new ? "new" : "old";
    int rc = buf_printf(b,
                        ", aud AS (INSERT INTO audit_log (actor, action, entity, entity_id, "
                        "before, after) SELECT $1, '%s', '%s', %s.%s::text, %s, %s FROM %s",
                        action, r->table, has_new ? "new" : "old", r->idcol,
                        has_old ? MASKED("old") : "NULL", has_new ? MASKED("new") : "NULL", from);
    if (!rc && has_old && has_new)
        rc = buf_printf(b, "%s)", r->idcol);
    if (!rc)
        rc = buf_append_str(b, ")");
    return rc;
}

/* The final SELECT: the row's JSON and its id (last column). */
static int select_out(buf *b, const resource *r, const char *from)
{
    return buf_printf(b, " SELECT row_to_json(o)::text, o.%s::text FROM (SELECT %s FROM %s) o",
                      r->idcol, r->out, from);
}

static const char *idcast(const resource *r)
{
    return r->flags & R_NAME_ID ? "" : r->flags & R_INT_ID ? "::bigint" : "::uuid";
}

static bool id_ok(const resource *r, const char *id)
{
    if (r->flags & R_NAME_ID)
        return true;
    if (r->flags & R_INT_ID) {
        size_t n = strlen(id);
        if (n == 0 || n > 18)
            return false;
        for (size_t i = 0; i < n; i++)
            if (!isdigit((unsigned char)id[i]))
                return false;
        return true;
    }
    return is_uuid(id);
}

static void do_create(actx *c, json_t *body)
{
    const resource *r = c->res;
    params p = {0};
    verr e = {0};
    buf sql, vals;
    int rc = 0, enc_n = 0, hash_n = 0;
    const char *k;
    json_t *v;

    buf_init(&sql, 64 * 1024);
    buf_init(&vals, 64 * 1024);
    param_str(&p, c->actor);
    json_object_foreach(body, k, v)
    {
        if (field_find(r->fields, r->nfields, k))
            continue;
        if ((r->flags & R_SECRET) && strcmp(k, "secret") == 0)
            continue;
        rc = bad(&e, k, "unknown field");
        goto out;
    }
    rc = buf_printf(&sql, "WITH new AS (INSERT INTO %s (", r->table);
    bool first = true;
    for (size_t i = 0; !rc && i < r->nfields; i++) {
        const afield *f = &r->fields[i];
        v = json_object_get(body, f->name);
        if (!v) {
            if (f->flags & AF_REQUIRED) {
                rc = bad(&e, f->name, "is required");
                goto out;
            }
            continue;
        }
        if (f->flags & AF_NOCREATE) {
            rc = bad(&e, f->name, "cannot be set at creation");
            goto out;
        }
        rc = buf_printf(&sql, "%s%s", first ? "" : ", ", col_of(f));
        if (!rc)
            rc = buf_append_str(&vals, first ? "" : ", ");
        if (!rc)
            rc = field_param(c, f, v, &p, &vals, &e);
        first = false;
    }
    if (!rc && strcmp(r->path, "byok") == 0) {
        json_t *t = json_object_get(body, "team_id"), *kk = json_object_get(body, "key_id");
        if ((!t || json_is_null(t)) == (!kk || json_is_null(kk))) {
            rc = bad(&e, "team_id", "give exactly one of team_id and key_id");
            goto out;
        }
    }
    if (!rc && strcmp(r->path, "model-aliases") == 0) {
        const char *nm = json_string_value(json_object_get(body, "name"));
        slice pm;
        const config_model *cm = nm ? config_find_model(c->cfg, nm, strlen(nm), &pm) : NULL;
        if (cm) {
            rc = bad(&e, "name", "the configuration already has a model alias '%.100s'", nm);
            goto out;
        }
    }
    if (!rc && (r->flags & R_SECRET)) {
        rc = secret_params(c, body, &p, &enc_n, &e);
        if (!rc)
            rc = buf_printf(&sql, "%ssecret_enc, secret_mask", first ? "" : ", ");
        if (!rc)
            rc = buf_printf(&vals, "%s$%d, $%d", first ? "" : ", ", enc_n, enc_n + 1);
        first = false;
    }
    if (!rc && (r->flags & R_ACTORS)) {
        rc = buf_printf(&sql, "%screated_by, updated_by", first ? "" : ", ");
        if (!rc)
            rc = buf_printf(&vals, "%s$1, $1", first ? "" : ", ");
        first = false;
    }
    if (!rc && (r->flags & R_KEYGEN)) {
        rc = keygen_params(c, &p, &hash_n);
        if (!rc)
            rc = buf_printf(&sql, "%skey_hash, key_prefix", first ? "" : ", ");
        if (!rc)
            rc = buf_printf(&vals, "%sdecode($%d, 'hex'), $%d", first ? "" : ", ", hash_n,
                            hash_n + 1);
        if (!rc && strcmp(r->path, "admin-keys") == 0)
            rc = buf_append_str(&sql, ", created_by");
        if (!rc && strcmp(r->path, "admin-keys") == 0)
            rc = buf_append_str(&vals, ", $1");
        first = false;
    }
    if (rc)
        goto out;
    rc = buf_printf(&sql, ") VALUES (%s) RETURNING *)", vals.data ? vals.data : "");
    if (!rc)
        rc = audit_cte(&sql, r, "create", false, true);
    if (!rc)
        rc = select_out(&sql, r, "new");
out:
    buf_free(&vals);
    run_built(c, rc, &sql, &p, 201, &e);
}

/* UPDATE of the row id: set is the SET list (from the body or an action). */
static void do_update(actx *c, const char *id, const char *action, const char *set_const,
                      json_t *body)
{
    const resource *r = c->res;
    params p = {0};
    verr e = {0};
    buf sql, set;
    int rc = 0, enc_n = 0;
    const char *k;
    json_t *v;

    buf_init(&sql, 64 * 1024);
    buf_init(&set, 64 * 1024);
    param_str(&p, c->actor);
    param_str(&p, id);
    if (set_const) {
        rc = buf_append_str(&set, set_const);
    } else {
        bool any = false;
        json_object_foreach(body, k, v)
        {
            const afield *f = field_find(r->fields, r->nfields, k);
            if (!f && (r->flags & R_SECRET) && strcmp(k, "secret") == 0)
                continue;
            if (!f) {
                rc = bad(&e, k, "unknown field");
                goto out;
            }
            if (f->flags & AF_FIXED) {
                rc = bad(&e, k, "cannot be changed%s",
                         strcmp(k, "active") == 0 ? " here; use .../activate or .../deactivate"
                                                  : "");
                goto out;
            }
            rc = buf_printf(&set, "%s%s = ", any ? ", " : "", col_of(f));
            if (!rc)
                rc = field_param(c, f, v, &p, &set, &e);
            if (rc)
                goto out;
            any = true;
        }
        if (strcmp(r->path, "model-aliases") == 0) {
            /* as at create: the config's aliases win, so a database alias
             * may not be renamed to one of them */
            const char *nm = json_string_value(json_object_get(body, "name"));
            slice pm;
            if (nm && config_find_model(c->cfg, nm, strlen(nm), &pm)) {
                rc = bad(&e, "name", "the configuration already has a model alias '%.100s'", nm);
                goto out;
            }
        }
        if ((r->flags & R_SECRET) && json_object_get(body, "secret")) {
            rc = secret_params(c, body, &p, &enc_n, &e);
            if (!rc)
                rc = buf_printf(&set, "%ssecret_enc = $%d, secret_mask = $%d", any ? ", " : "",
                                enc_n, enc_n + 1);
            if (rc)
                goto out;
            any = true;
        }
        if (!any) {
            rc = bad(&e, "body", "names no field to change");
            goto out;
        }
    }
    if (!rc && (r->flags & R_ACTORS))
        rc = buf_append_str(&set, ", updated_by = $1");
    if (!rc)
        rc = buf_printf(&sql,
                        "WITH old AS (SELECT * FROM %s WHERE %s = $2%s FOR UPDATE), "
                        "new AS (UPDATE %s t SET %s, updated_at = now() FROM old WHERE t.%s = "
                        "old.%s RETURNING t.*)",
                        r->table, r->idcol, idcast(r), r->table, set.data, r->idcol, r->idcol);
    if (!rc)
        rc = audit_cte(&sql, r, action, true, true);
    if (!rc)
        rc = select_out(&sql, r, "new");
out:
    buf_free(&set);
    run_built(c, rc, &sql, &p, 200, &e);
}

/* POST /admin/credentials/{id}/activate: this one becomes the org's active
 * credential for its provider and the previous one (if any) inactive, in
 * one statement (the exclusion constraint is checked at commit). */
static void do_activate(actx *c, const char *id)
{
    const resource *r = c->res;
    params p = {0};
    buf sql;
    int rc;
    buf_init(&sql, 16 * 1024);
    param_str(&p, c->actor);
    param_str(&p, id);
    rc = buf_printf(&sql,
                    "WITH target AS (SELECT org_id, provider FROM provider_credentials WHERE id = "
                    "$2::uuid), "
                    "old AS (SELECT c.* FROM provider_credentials c JOIN target t ON c.org_id = "
                    "t.org_id AND c.provider = t.provider WHERE c.active OR c.id = $2::uuid FOR "
                    "UPDATE OF c), "
                    "upd AS (UPDATE provider_credentials c SET active = (c.id = $2::uuid), "
                    "updated_by = $1, updated_at = now() FROM old WHERE c.id = old.id RETURNING "
                    "c.*), "
                    "aud AS (INSERT INTO audit_log (actor, action, entity, entity_id, before, "
                    "after) SELECT $1, CASE WHEN upd.id = $2::uuid THEN 'activate' ELSE "
                    "'deactivate' END, 'provider_credentials', upd.id::text, " MASKED(
                        "old") ", "
                               "to_jsonb(upd) - 'secret_enc' FROM old JOIN upd USING (id)), "
                               "new AS (SELECT * FROM upd WHERE id = $2::uuid)");
    if (!rc)
        rc = select_out(&sql, r, "new");
    run_built(c, rc, &sql, &p, 200, NULL);
}

static void do_delete(actx *c, const char *id)
{
    const resource *r = c->res;
    params p = {0};
    buf sql;
    int rc;
    buf_init(&sql, 16 * 1024);
    param_str(&p, c->actor);
    param_str(&p, id);
    bool group = strcmp(r->table, "access_groups") == 0;
    /* an access group's aliases lose it in the same statement (rather than
     * by the foreign key's ON DELETE SET NULL after it), so that their ids
     * come back and this instance reloads them before answering */
    rc = buf_printf(&sql, "WITH %sold AS (DELETE FROM %s WHERE %s = $2%s RETURNING *)",
                    group ? "cleared AS (UPDATE model_aliases SET access_group = NULL, updated_at "
                            "= now() WHERE access_group = $2 RETURNING id), "
                          : "",
                    r->table, r->idcol, idcast(r));
    if (!rc)
        rc = audit_cte(&sql, r, "delete", true, false);
    if (!rc)
        rc = buf_printf(&sql, " SELECT old.%s::text, %s, old.%s::text FROM old", r->idcol,
                        group ? "(SELECT string_agg(id::text, ',') FROM cleared)" : "NULL",
                        r->idcol);
    run_built(c, rc, &sql, &p, 200, NULL);
}

static void do_get(actx *c, const char *id)
{
    const resource *r = c->res;
    params p = {0};
    buf sql;
    int rc;
    buf_init(&sql, 16 * 1024);
    if (c->include_secret) {
        param_str(&p, c->actor);
        param_str(&p, id);
        rc = buf_printf(&sql,
                        "WITH x AS (SELECT * FROM %s WHERE id = $2::uuid), "
                        "aud AS (INSERT INTO audit_log (actor, action, entity, entity_id) SELECT "
                        "$1, 'read_secret', '%s', x.id::text FROM x) "
                        "SELECT row_to_json(o)::text, x.secret_enc, x.id::text FROM (SELECT %s "
                        "FROM x) o, x",
                        r->table, r->table, r->out);
    } else {
        param_str(&p, id);
        rc = buf_printf(&sql,
                        "SELECT row_to_json(o)::text FROM (SELECT %s FROM %s WHERE %s = $1%s) o",
                        r->out, r->table, r->idcol, idcast(r));
    }
    run_built(c, rc, &sql, &p, 200, NULL);
}

/* ------------------------------------------------------------ query strings */

static int hexval(char ch)
{
    return ch >= '0' && ch <= '9'   ? ch - '0'
           : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
           : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                    : -1;
}

/* Percent-decodes s[0..n) into out (cap bytes). -1 on a bad escape, a NUL
 * byte or overflow. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(s[i + 1]);
            int lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            ch = (char)(hi << 4 | lo);
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (ch == '\0' || o + 1 >= cap)
            return -1;
        out[o++] = ch;
    }
    out[o] = '\0';
    return 0;
}

/* Calls fn(name, value) for each name=value of the query string. A non-zero
 * return of fn stops and is returned. */
static int query_each(slice q, int (*fn)(void *ud, const char *name, const char *value), void *ud)
{
    size_t i = 0;
    while (i < q.len) {
        size_t j = i;
        while (j < q.len && q.p[j] != '&')
            j++;
        const char *eq = memchr(q.p + i, '=', j - i);
        char name[64], value[512];
        size_t nl = eq ? (size_t)(eq - (q.p + i)) : j - i;
        if (nl) {
            if (pct_decode(q.p + i, nl, name, sizeof(name)) != 0 ||
                pct_decode(eq ? eq + 1 : "", eq ? (size_t)(q.p + j - eq - 1) : 0, value,
                           sizeof(value)) != 0)
                return -EINVAL;
            int rc = fn(ud, name, value);
            if (rc)
                return rc;
        }
        i = j + 1;
    }
    return 0;
}

typedef struct listq {
    actx *c;
    const config *cfg;
    params *p;
    buf *where;
    verr *e;
    int nfilters;
} listq;

static int list_param(void *ud, const char *name, const char *value)
{
    listq *l = ud;
    actx *c = l->c;
    const resource *r = c->res;
    if (strcmp(name, "limit") == 0 || strcmp(name, "offset") == 0) {
        char *end;
        long v = strtol(value, &end, 10);
        bool lim = name[0] == 'l';
        if (!*value || *end || v < (lim ? 1 : 0) || v > (lim ? ADM_MAX_LIMIT : 100000000))
            return bad(l->e, name,
                       lim ? "must be an integer from 1 to %d" : "must be an integer from 0 to %d",
                       lim ? ADM_MAX_LIMIT : 100000000);
        *(lim ? &c->limit : &c->offset) = (int)v;
        return 0;
    }
    const afield *f = field_find(r->filters, r->nfilters, name);
    if (!f)
        return bad(l->e, name, "unknown query parameter");
    int rc = check_text(l->cfg, f, value, l->e);
    if (rc)
        return rc;
    int n = param_str(l->p, value);
    if (n < 0)
        return n;
    return buf_printf(l->where, "%s%s = $%d%s", l->nfilters++ ? " AND " : " WHERE ", col_of(f), n,
                      f->type == FT_UUID   ? "::uuid"
                      : f->type == FT_BOOL ? "::boolean"
                                           : "");
}

/* fixed: a WHERE clause of constants and $1 = fixed_val (a UUID), or NULL. */
static void do_list(actx *c, slice query, const char *fixed, const char *fixed_val)
{
    const resource *r = c->res;
    params p = {0};
    verr e = {0};
    buf sql, where;
    int rc;
    listq l = {.c = c, .cfg = c->cfg, .p = &p, .where = &where, .e = &e};

    buf_init(&sql, 16 * 1024);
    buf_init(&where, 16 * 1024);
    c->limit = ADM_DEFAULT_LIMIT;
    rc = buf_append_str(&where, "");
    if (!rc && fixed) {
        if (fixed_val && param_str(&p, fixed_val) < 0)
            rc = -ENOMEM;
        if (!rc)
            rc = buf_printf(&where, " WHERE %s", fixed);
        l.nfilters = 1;
    }
    if (!rc)
        rc = query_each(query, list_param, &l);
    if (rc == -EINVAL && !e.param[0])
        bad(&e, "query", "is not a valid query string");
    if (!rc)
        rc = buf_printf(&sql,
                        "SELECT row_to_json(o)::text FROM (SELECT %s FROM %s%s ORDER BY %s LIMIT "
                        "%d OFFSET %d) o",
                        r->out, r->table, where.data ? where.data : "", r->order, c->limit + 1,
                        c->offset);
    buf_free(&where);
    if (rc) {
        params_free(&p);
        buf_free(&sql);
        if (rc == -EINVAL)
            fail(c, 400, "invalid_query", e.param, e.msg);
        else
            fail(c, 500, "internal", NULL, "could not build the statement");
        return;
    }
    c->status = 200;
    run(c, &sql, &p);
    buf_free(&sql);
}

/* ------------------------------------------------------------ routing */

/* Who is calling: the master key (owner) or an admin key. */
static bool admin_auth(store *st, const config *cfg, http_req *req, char *actor, size_t cap,
                       tn_role *role)
{
    slice a = http_req_header(req, "authorization"), k = {NULL, 0};
    uint8_t d[CRYPTO_SHA256_LEN];
    if (a.len > 7 && strncasecmp(a.p, "bearer ", 7) == 0) {
        k.p = a.p + 7;
        k.len = a.len - 7;
        while (k.len && *k.p == ' ') {
            k.p++;
            k.len--;
        }
    } else {
        k = http_req_header(req, "x-api-key");
    }
    if (!k.len)
        return false;
    crypto_sha256(k.p, k.len, d);
    if (cfg->has_master_key && crypto_equal(d, cfg->master_key_sha256, CRYPTO_SHA256_LEN)) {
        snprintf(actor, cap, "master");
        *role = TN_ROLE_OWNER;
        return true;
    }
    const tn_admin *ak = st ? tenants_admin(store_tenants(st), d) : NULL;
    if (!ak || ak->blocked)
        return false;
    snprintf(actor, cap, "admin:%s", ak->name);
    *role = ak->role;
    return true;
}

static const char *role_name(tn_role r)
{
    return r == TN_ROLE_OWNER ? "owner" : r == TN_ROLE_ADMIN ? "admin" : "viewer";
}

/* Splits "/admin/a/b/c" into up to 3 segments (decoded, checked). */
static int split_path(slice path, char seg[3][128], int *nseg)
{
    size_t i = 7; /* after "/admin/" */
    *nseg = 0;
    while (i < path.len && *nseg < 4) {
        size_t j = i;
        while (j < path.len && path.p[j] != '/')
            j++;
        if (j == i) /* empty segment, e.g. a trailing slash */
            return j == path.len ? 0 : -1;
        if (*nseg == 3 || pct_decode(path.p + i, j - i, seg[*nseg], sizeof(seg[0])) != 0)
            return -1;
        (*nseg)++;
        i = j + 1;
    }
    return 0;
}

static bool query_has(slice q, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i + n + 1 <= q.len; i++)
        if ((i == 0 || q.p[i - 1] == '&') && memcmp(q.p + i, name, n) == 0 && q.p[i + n] == '=')
            return true;
    return false;
}

static bool query_flag(slice q, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i + n + 5 <= q.len; i++)
        if ((i == 0 || q.p[i - 1] == '&') && memcmp(q.p + i, name, n) == 0 &&
            memcmp(q.p + i + n, "=true", 5) == 0 && (i + n + 5 == q.len || q.p[i + n + 5] == '&'))
            return true;
    return false;
}

/* ------------------------------------------------------------ credits */

/* credit_transactions as the API shows them. */
static const resource credits_res = {"credits", "credit_transactions",
                                     "team",    NULL,
                                     NULL,      0,
                                     NULL,      0,
                                     NULL,      0,
                                     "id DESC", "id",
                                     -1,        R_INT_ID,
                                     NULL};

#define CREDIT_OUT                                                                                 \
    "json_build_object('id', t.id, 'team_id', t.team_id, 'amount', tollgate_usd(t.amount_nano), "  \
    "'kind', t.kind, 'reference', t.reference, 'actor', t.actor, 'note', t.note, 'at', t.at"

static actx *actx_new(store *st, const config *cfg, http_req *req, const resource *r, enum op op,
                      const char *actor, tn_role role)
{
    actx *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->req = req;
    c->st = st;
    c->cfg = config_ref(cfg);
    c->res = r;
    c->op = op;
    c->role = role;
    snprintf(c->actor, sizeof(c->actor), "%s", actor);
    buf_init(&c->out, ADM_MAX_OUT);
    req->app = c;
    req->on_abort = on_abort;
    return c;
}

/* GET /admin/teams/{id}/credits: the team's transactions, newest first
 * (viewer). POST: a top-up, adjustment or refund {"amount": "10.00",
 * "kind", "note"?, "reference"?} (admin); answers the transaction and the
 * new balance. Each change is its own row: the balance is their sum. */
static void team_credits(store *st, const config *cfg, http_req *req, const char *team,
                         const char *actor, tn_role role)
{
    params p = {0};
    buf sql;
    json_t *body = NULL;
    bool post = req->method == HTTP_POST;
    if (!post && req->method != HTTP_GET) {
        adm_error(req, actor, 405, "method_not_allowed", NULL, "Use GET or POST.");
        return;
    }
    if (!is_uuid(team)) {
        adm_error(req, actor, 404, "not_found", NULL, "no such team");
        return;
    }
    if (post && role < TN_ROLE_ADMIN) {
        adm_error(req, actor, 403, "forbidden", NULL, "This needs the admin role (this key is %s).",
                  role_name(role));
        return;
    }
    buf_init(&sql, 16 * 1024);
    if (!post) {
        actx *c = actx_new(st, cfg, req, &credits_res, OP_LIST, actor, role);
        if (!c) {
            adm_error(req, actor, 500, "internal", NULL, "out of memory");
            goto out;
        }
        c->limit = ADM_DEFAULT_LIMIT;
        param_str(&p, team);
        if (buf_printf(&sql,
                       "SELECT (" CREDIT_OUT ", 'balance', tollgate_usd(tm.credit_balance_nano)))"
                       "::text FROM teams tm LEFT JOIN LATERAL (SELECT * FROM credit_transactions "
                       "WHERE team_id = tm.id ORDER BY id DESC LIMIT %d) t ON true WHERE tm.id = "
                       "$1::uuid AND t.id IS NOT NULL",
                       c->limit + 1) != 0) {
            params_free(&p);
            fail(c, 500, "internal", NULL, "out of memory");
            goto out;
        }
        c->status = 200;
        run(c, &sql, &p);
        goto out;
    }
    json_error_t je;
    body = json_loadb(req->body.p, req->body.len, JSON_REJECT_DUPLICATES, &je);
    const char *kind = json_string_value(json_object_get(body, "kind"));
    json_t *amount = json_object_get(body, "amount"), *note = json_object_get(body, "note"),
           *ref = json_object_get(body, "reference");
    int64_t nano = 0;
    const char *k;
    json_t *v;
    if (!json_is_object(body)) {
        adm_error(req, actor, 400, "invalid_json", NULL, "The body must be a JSON object.");
        goto out;
    }
    json_object_foreach(body, k, v)
    {
        if (strcmp(k, "kind") && strcmp(k, "amount") && strcmp(k, "note") &&
            strcmp(k, "reference")) {
            adm_error(req, actor, 400, "invalid_field", k, "%.60s: unknown field", k);
            goto out;
        }
    }
    if (!kind || (strcmp(kind, "topup") && strcmp(kind, "adjustment") && strcmp(kind, "refund"))) {
        adm_error(req, actor, 400, "invalid_field", "kind",
                  "kind: must be one of: topup, adjustment, refund");
        goto out;
    }
    if (!json_is_string(amount) ||
        money_parse(json_string_value(amount), json_string_length(amount), &nano) != 0 ||
        nano == 0 || (strcmp(kind, "adjustment") != 0 && nano < 0)) {
        adm_error(req, actor, 400, "invalid_field", "amount",
                  "amount: a decimal string of credits, e.g. \"25.00\" (negative only for an "
                  "adjustment; never 0)");
        goto out;
    }
    /* lengths in characters (jansson refuses \u0000 without JSON_ALLOW_NUL) */
    bool note_bad = note && (!json_is_string(note) ||
                             utf8_chars(json_string_value(note), json_string_length(note)) > 1000);
    bool ref_bad = ref && (!json_is_string(ref) || json_string_length(ref) < 1 ||
                           utf8_chars(json_string_value(ref), json_string_length(ref)) > 200);
    if (note_bad || ref_bad) {
        adm_error(req, actor, 400, "invalid_field", note_bad ? "note" : "reference",
                  "note: a string of at most 1000 characters; reference: 1 to 200 characters");
        goto out;
    }
    actx *c = actx_new(st, cfg, req, &credits_res, OP_CREATE, actor, role);
    if (!c) {
        adm_error(req, actor, 500, "internal", NULL, "out of memory");
        goto out;
    }
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)nano);
    param_str(&p, actor);
    param_str(&p, team);
    param_str(&p, num);
    param_str(&p, kind);
    param_str(&p, ref ? json_string_value(ref) : NULL);
    param_str(&p, note ? json_string_value(note) : NULL);
    /* the team's row is locked first, so the balance answered is the one
     * this transaction makes (a concurrent change is either before or after
     * it); no such team: no row (404) */
    if (buf_append_str(&sql, "WITH tm AS (SELECT id, credit_balance_nano FROM teams WHERE id = "
                             "$2::uuid FOR NO KEY UPDATE), t AS (INSERT INTO credit_transactions "
                             "(team_id, amount_nano, kind, reference, actor, note) SELECT tm.id, "
                             "$3::bigint, $4, $5, $1, $6 FROM tm RETURNING *), aud AS (INSERT INTO "
                             "audit_log (actor, action, entity, entity_id, after) SELECT $1, "
                             "'credit_' || t.kind, 'credit_transactions', t.id::text, to_jsonb(t) "
                             "FROM t) SELECT (" CREDIT_OUT ", 'balance', "
                             "tollgate_usd(tm.credit_balance_nano + t.amount_nano)))::text, "
                             "t.id::text FROM t JOIN tm ON tm.id = t.team_id") != 0) {
        params_free(&p);
        fail(c, 500, "internal", NULL, "out of memory");
        goto out;
    }
    c->status = 201;
    run(c, &sql, &p);
out:
    json_decref(body);
    buf_free(&sql);
}

/* ------------------------------------------------------------ usage */

/* Grouping dimensions of the usage report: the query word, the column of
 * usage_daily, the same of calls, and the name in the answer. */
static const struct {
    const char *word, *daily, *calls, *name;
} usage_dims[] = {
    {"day", "day", "(at AT TIME ZONE 'UTC')::date", "day"},
    {"model", "requested_model", "requested_model", "model"},
    {"provider", "provider", "provider", "provider"},
    {"org", "org_id", "org_id", "org_id"},
    {"team", "team_id", "team_id", "team_id"},
    {"key", "key_alias", "key_alias", "key_alias"},
    {"job", "job_id", "job_id", "job_id"},
    /* "key" is a key's id and alias: aliases are unique per team only, and
     * config keys have no id */
    {"key", "key_id", "key_id", "key_id"},
};

typedef struct usageq {
    char from[16], to[16];
    unsigned dims; /* bit i: usage_dims[i] */
    char team[40], org[40], key[40], job[40];
    verr *e;
    bool for_key; /* /v1/usage: org and team filters and dimensions are not offered */
} usageq;

/* YYYY-MM-DD, a day that exists (PostgreSQL would refuse 2026-02-30 with
 * an error that names no parameter) */
static bool is_date(const char *s)
{
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (strlen(s) != 10 || s[4] != '-' || s[7] != '-')
        return false;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && !isdigit((unsigned char)s[i]))
            return false;
    int y = atoi(s), m = atoi(s + 5), d = atoi(s + 8);
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return y >= 1 && m >= 1 && m <= 12 && d >= 1 && d <= mdays[m - 1] && (m != 2 || d < 29 || leap);
}

static int usage_param(void *ud, const char *name, const char *value)
{
    usageq *u = ud;
    if (strcmp(name, "from") == 0 || strcmp(name, "to") == 0) {
        if (!is_date(value))
            return bad(u->e, name, "must be a date YYYY-MM-DD (UTC)");
        snprintf(name[0] == 'f' ? u->from : u->to, sizeof(u->from), "%s", value);
        return 0;
    }
    if (strcmp(name, "group_by") == 0) {
        char buf2[512];
        snprintf(buf2, sizeof(buf2), "%s", value);
        for (char *tok = strtok(buf2, ","); tok; tok = strtok(NULL, ",")) {
            unsigned found = 0;
            for (size_t i = 0; i < N(usage_dims); i++)
                if (strcmp(usage_dims[i].word, tok) == 0)
                    found |= 1u << i;
            if (!found || (u->for_key && (found & (1u << 3 | 1u << 4))))
                return bad(u->e, "group_by",
                           "'%.40s' is not one of: day, model, provider%s, key, job", tok,
                           u->for_key ? "" : ", org, team");
            u->dims |= found;
        }
        return 0;
    }
    char *dst = strcmp(name, "team_id") == 0 && !u->for_key  ? u->team
                : strcmp(name, "org_id") == 0 && !u->for_key ? u->org
                : strcmp(name, "job_id") == 0                ? u->job
                                                             : NULL;
    if (!dst)
        return bad(u->e, name, "unknown query parameter");
    if (!is_uuid(value))
        return bad(u->e, name, "must be a UUID");
    memcpy(dst, value, 36); /* a UUID: 36 characters */
    dst[36] = '\0';
    return 0;
}

/* Sums from the daily rollup and latency percentiles from the calls, per
 * group, for a date range: one statement. */
static int usage_sql(const usageq *u, buf *sql, params *p, const char *key_id, const char *alias)
{
    buf g, gc, on, where, wherec;
    int rc;
    buf_init(&g, 1024);
    buf_init(&gc, 1024);
    buf_init(&on, 1024);
    buf_init(&where, 1024);
    buf_init(&wherec, 1024);
    rc = buf_append_str(&g, "") || buf_append_str(&gc, "") || buf_append_str(&on, "true");
    for (size_t i = 0; !rc && i < N(usage_dims); i++) {
        if (!(u->dims & (1u << i)))
            continue;
        rc = buf_printf(&g, "%s%s AS %s", g.len ? ", " : "", usage_dims[i].daily,
                        usage_dims[i].name);
        if (!rc)
            rc = buf_printf(&gc, "%s%s AS %s", gc.len ? ", " : "", usage_dims[i].calls,
                            usage_dims[i].name);
        if (!rc)
            rc = buf_printf(&on, " AND s.%s IS NOT DISTINCT FROM p.%s", usage_dims[i].name,
                            usage_dims[i].name);
    }
    int n1 = param_str(p, u->from), n2 = param_str(p, u->to);
    if (!rc)
        rc = buf_printf(&where, "day >= $%d::date AND day <= $%d::date", n1, n2);
    if (!rc)
        rc = buf_printf(&wherec,
                        "at >= ($%d::date)::timestamp AT TIME ZONE 'UTC' AND at < ($%d::date + 1)"
                        "::timestamp AT TIME ZONE 'UTC'",
                        n1, n2);
    struct {
        const char *v, *col;
    } f[] = {{u->team, "team_id"}, {u->org, "org_id"}, {u->job, "job_id"}, {key_id, "key_id"}};
    for (size_t i = 0; !rc && i < sizeof(f) / sizeof(f[0]); i++) {
        if (!f[i].v || !f[i].v[0])
            continue;
        int n = param_str(p, f[i].v);
        rc = buf_printf(&where, " AND %s = $%d::uuid", f[i].col, n);
        if (!rc)
            rc = buf_printf(&wherec, " AND %s = $%d::uuid", f[i].col, n);
    }
    if (!rc && alias) { /* a config key: its rows by alias, without a key id */
        int n = param_str(p, alias);
        rc = buf_printf(&where, " AND key_id IS NULL AND key_alias = $%d", n);
        if (!rc)
            rc = buf_printf(&wherec, " AND key_id IS NULL AND key_alias = $%d", n);
    }
    bool grouped = g.len > 0;
    char gb[64] = "";
    for (size_t i = 0, k = 0; i < N(usage_dims); i++)
        if (u->dims & (1u << i)) {
            size_t o = strlen(gb);
            snprintf(gb + o, sizeof(gb) - o, "%s%zu", k ? ", " : "", k + 1);
            k++;
        }
    if (!rc)
        rc = buf_printf(
            sql,
            "WITH s AS (SELECT %s%ssum(requests) AS requests, sum(errors) AS errors, "
            "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
            "sum(cached_tokens) AS cached_tokens, sum(cost_nano)::bigint AS cost_nano, "
            "sum(price_nano)::bigint AS price_nano, sum(latency_us_sum)::bigint AS "
            "latency_us_total "
            "FROM usage_daily WHERE %s%s%s), "
            "p AS (SELECT %s%spercentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us) AS p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_us) AS p95, "
            "percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) AS p99, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_us) AS ttft50 "
            "FROM calls WHERE %s%s%s) "
            "SELECT json_build_object('object', 'usage', 'from', $%d::date, 'to', $%d::date, "
            "'data', coalesce(json_agg(json_strip_nulls(to_json(x))), '[]'))::text FROM (SELECT "
            "s.*, tollgate_usd(s.cost_nano) AS cost, tollgate_usd(s.price_nano) AS price, "
            "tollgate_usd(s.price_nano - s.cost_nano) AS margin, "
            "round((s.latency_us_total::numeric / "
            "nullif(s.requests, 0)) / 1000, 3) AS avg_latency_ms, round(p.p50::numeric / 1000, 3) "
            "AS p50_latency_ms, round(p.p95::numeric / 1000, 3) AS p95_latency_ms, "
            "round(p.p99::numeric / 1000, 3) AS p99_latency_ms, round(p.ttft50::numeric / 1000, 3) "
            "AS p50_ttft_ms FROM s LEFT JOIN p ON %s WHERE s.requests IS NOT NULL) x",
            g.data, grouped ? ", " : "", where.data, grouped ? " GROUP BY " : "", gb, gc.data,
            grouped ? ", " : "", wherec.data, grouped ? " GROUP BY " : "", gb, n1, n2, on.data);
    buf_free(&g);
    buf_free(&gc);
    buf_free(&on);
    buf_free(&where);
    buf_free(&wherec);
    return rc;
}

static const resource usage_res = {"usage", "usage_daily", "usage", NULL, NULL, 0,   NULL, 0, NULL,
                                   0,       "day",         "day",   -1,   0,    NULL};

/* GET /admin/usage and GET /v1/usage (key_id or alias set: that key only). */
static void usage_run(store *st, const config *cfg, http_req *req, const char *actor, tn_role role,
                      const char *key_id, const char *alias)
{
    usageq u;
    verr e = {0};
    params p = {0};
    buf sql;
    memset(&u, 0, sizeof(u));
    u.e = &e;
    u.for_key = key_id || alias;
    if (req->method != HTTP_GET) {
        adm_error(req, actor, 405, "method_not_allowed", NULL, "Use GET.");
        return;
    }
    /* default: the last 30 days, today included (UTC) */
    time_t now = time(NULL), then = now - 29 * 86400;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(u.to, sizeof(u.to), "%Y-%m-%d", &tm);
    gmtime_r(&then, &tm);
    strftime(u.from, sizeof(u.from), "%Y-%m-%d", &tm);
    int rc = query_each(req->query, usage_param, &u);
    if (rc) {
        adm_error(req, actor, 400, "invalid_query", e.param[0] ? e.param : NULL, "%s",
                  e.msg[0] ? e.msg : "not a valid query string");
        return;
    }
    if (strcmp(u.from, u.to) > 0) {
        adm_error(req, actor, 400, "invalid_query", "from", "from: after to");
        return;
    }
    buf_init(&sql, 64 * 1024);
    if (usage_sql(&u, &sql, &p, key_id, key_id ? NULL : alias) != 0) {
        params_free(&p);
        buf_free(&sql);
        adm_error(req, actor, 500, "internal", NULL, "out of memory");
        return;
    }
    actx *c = actx_new(st, cfg, req, &usage_res, OP_GET, actor, role);
    if (!c) {
        params_free(&p);
        buf_free(&sql);
        adm_error(req, actor, 500, "internal", NULL, "out of memory");
        return;
    }
    c->status = 200;
    run(c, &sql, &p);
    buf_free(&sql);
}

void admin_key_usage(store *st, const config *cfg, http_req *req, const char *key_id,
                     const char *alias)
{
    if (!st) {
        adm_error(req, alias, 503, "no_database", NULL,
                  "Usage needs a database (database.url); without one the spool holds it.");
        return;
    }
    usage_run(st, cfg, req, alias ? alias : "key", TN_ROLE_VIEWER, key_id, alias);
}

/* ------------------------------------------------------------ payments */

typedef struct payctx {
    http_req *req;
    pg_query *q;
    bool duplicate_check;
} payctx;

static void pay_abort(http_req *req, void *ud)
{
    (void)ud;
    payctx *pc = req->app;
    if (pc->q)
        pg_cancel(pc->q);
    free(pc);
}

static void pay_done(void *ud, const PGresult *res, const pg_error *err)
{
    payctx *pc = ud;
    http_req *req = pc->req;
    req->app = NULL;
    req->on_abort = NULL;
    free(pc);
    if (err) {
        bool fk = err->kind == PG_ERR_SERVER && strcmp(err->sqlstate, "23503") == 0;
        if (fk)
            adm_error(req, "webhook", 404, "not_found", "team_id", "team_id: no such team");
        else
            adm_error(req, "webhook", 503, "database_unavailable", NULL,
                      "database unavailable; the payment provider should retry");
        return;
    }
    const char *row = PQntuples(res) == 1 ? pg_value(res, 0, 0) : NULL;
    adm_log(req, 200, "webhook");
    if (row)
        http_respond(req, 200, "application/json", NULL, row, strlen(row));
    else
        http_respond(req, 200, "application/json", NULL, "{\"credited\":false,\"duplicate\":true}",
                     35);
}

void admin_payment_webhook(store *st, const config *cfg, http_req *req)
{
    slice sig = http_req_header(req, "x-tollgate-signature");
    uint8_t mac[CRYPTO_SHA256_LEN], got[CRYPTO_SHA256_LEN];
    json_t *body = NULL;
    if (!st || !cfg->has_payment_secret) {
        adm_error(req, "webhook", 404, "not_configured", NULL,
                  "The payment webhook is not configured (billing.payment_webhook_secret and a "
                  "database).");
        return;
    }
    if (req->method != HTTP_POST) {
        adm_error(req, "webhook", 405, "method_not_allowed", NULL, "Use POST.");
        return;
    }
    /* x-tollgate-signature: sha256=<hex of HMAC-SHA256(secret, raw body)> */
    if (sig.len != 7 + CRYPTO_SHA256_HEX_LEN || memcmp(sig.p, "sha256=", 7) != 0 ||
        crypto_unhex(sig.p + 7, CRYPTO_SHA256_HEX_LEN, got, sizeof(got)) != 0 ||
        crypto_hmac_sha256(cfg->payment_secret, cfg->payment_secret_len, req->body.p, req->body.len,
                           mac) != 0 ||
        !crypto_equal(mac, got, sizeof(mac))) {
        adm_error(req, "webhook", 401, "invalid_signature", NULL,
                  "x-tollgate-signature must be sha256=<hex HMAC-SHA256 of the body with the "
                  "shared secret>.");
        return;
    }
    json_error_t je;
    body = json_loadb(req->body.p, req->body.len, JSON_REJECT_DUPLICATES, &je);
    const char *pid = json_string_value(json_object_get(body, "payment_id"));
    const char *team = json_string_value(json_object_get(body, "team_id"));
    json_t *amount = json_object_get(body, "amount");
    int64_t nano = 0;
    if (!json_is_object(body) || !pid || !*pid || strlen(pid) > 200) {
        adm_error(req, "webhook", 400, "invalid_field", "payment_id",
                  "payment_id: required, 1 to 200 characters");
        goto out;
    }
    if (!team || !is_uuid(team)) {
        adm_error(req, "webhook", 400, "invalid_field", "team_id", "team_id: must be a UUID");
        goto out;
    }
    if (!json_is_string(amount) ||
        money_parse(json_string_value(amount), json_string_length(amount), &nano) != 0 ||
        nano <= 0) {
        adm_error(req, "webhook", 400, "invalid_field", "amount",
                  "amount: a positive decimal string of credits, e.g. \"25.00\"");
        goto out;
    }
    payctx *pc = calloc(1, sizeof(*pc));
    if (!pc) {
        adm_error(req, "webhook", 500, "internal", NULL, "out of memory");
        goto out;
    }
    char num[32];
    snprintf(num, sizeof(num), "%lld", (long long)nano);
    const char *vals[3] = {team, num, pid};
    pc->req = req;
    req->app = pc;
    req->on_abort = pay_abort;
    /* credited once per payment id: (kind, reference) is unique */
    pc->q = pg_send(store_pool(st), NULL,
                    "WITH tm AS (SELECT id, credit_balance_nano FROM teams WHERE id = $1::uuid "
                    "FOR NO KEY UPDATE), t AS (INSERT INTO credit_transactions (team_id, "
                    "amount_nano, kind, reference, actor, note) VALUES ($1::uuid, $2::bigint, "
                    "'payment', $3, "
                    "'webhook', 'payment webhook') ON CONFLICT (kind, reference) DO NOTHING "
                    "RETURNING *) SELECT json_build_object('credited', true, 'transaction_id', "
                    "t.id, 'team_id', t.team_id, 'amount', tollgate_usd(t.amount_nano), "
                    "'balance', tollgate_usd(tm.credit_balance_nano + t.amount_nano))::text FROM "
                    "t JOIN tm ON tm.id = t.team_id",
                    3, vals, pay_done, pc);
    if (!pc->q) {
        req->app = NULL;
        req->on_abort = NULL;
        free(pc);
        adm_error(req, "webhook", 503, "database_unavailable", NULL, "database unavailable");
    }
out:
    json_decref(body);
}

bool admin_authorized(store *st, const config *cfg, http_req *req)
{
    char actor[256];
    tn_role role;
    return admin_auth(st, cfg, req, actor, sizeof(actor), &role);
}

void admin_handle(store *st, const config *cfg, http_req *req)
{
    char seg[3][128];
    int nseg = 0;
    char actor[256] = "";
    tn_role role = TN_ROLE_VIEWER;
    const resource *r = NULL;
    json_t *body = NULL;
    int m = req->method;

    if (!st) {
        adm_error(req, NULL, 503, "no_database", NULL,
                  "the admin API needs a database: set database.url (and run 'tollgate migrate')");
        return;
    }
    if (!tenants_loaded(store_tenants(st)) && !cfg->has_master_key) {
        adm_error(req, NULL, 503, "not_ready", NULL, "the key store is not loaded yet (%s)",
                  store_status(st));
        return;
    }
    if (!admin_auth(st, cfg, req, actor, sizeof(actor), &role)) {
        adm_error(req, NULL, 401, "invalid_admin_key", NULL, "%s",
                  http_req_header(req, "authorization").len || http_req_header(req, "x-api-key").len
                      ? "Incorrect admin key."
                      : "The admin API needs the master key or an admin key as 'Authorization: "
                        "Bearer KEY'.");
        return;
    }
    if (split_path(req->path, seg, &nseg) != 0 || nseg == 0) {
        adm_error(req, actor, 404, "unknown_url", NULL, "Unknown admin URL.");
        return;
    }
    if (nseg == 1 && strcmp(seg[0], "usage") == 0) {
        usage_run(st, cfg, req, actor, role, NULL, NULL);
        return;
    }
    if (nseg == 3 && strcmp(seg[0], "teams") == 0 && strcmp(seg[2], "credits") == 0) {
        team_credits(st, cfg, req, seg[1], actor, role);
        return;
    }
    /* /admin/organizations/{id}/credentials reads as credentials?org_id= */
    bool org_creds =
        nseg == 3 && strcmp(seg[0], "organizations") == 0 && strcmp(seg[2], "credentials") == 0;
    bool active_cred =
        nseg == 2 && strcmp(seg[0], "credentials") == 0 && strcmp(seg[1], "active") == 0;
    for (size_t i = 0; i < N(resources); i++)
        if (strcmp(resources[i].path, org_creds ? "credentials" : seg[0]) == 0)
            r = &resources[i];
    if (!r) {
        adm_error(req, actor, 404, "unknown_url", NULL, "Unknown admin resource '%s'.", seg[0]);
        return;
    }
    const aaction *act = NULL;
    bool activate = false;
    if (nseg == 3 && !org_creds) {
        for (size_t i = 0; i < r->nactions; i++)
            if (strcmp(r->actions[i].name, seg[2]) == 0)
                act = &r->actions[i];
        activate = r->kind == TN_CRED && strcmp(seg[2], "activate") == 0;
        if (!act && !activate) {
            adm_error(req, actor, 404, "unknown_url", NULL, "Unknown action '%s' on %s.", seg[2],
                      r->path);
            return;
        }
    }
    /* methods */
    enum op op;
    const char *allow;
    if (nseg == 1 || org_creds || active_cred) {
        op = m == HTTP_GET ? OP_LIST : OP_CREATE;
        allow = org_creds || active_cred || !r->fields ? "GET" : "GET, POST";
        if (m != HTTP_GET && (m != HTTP_POST || org_creds || active_cred || !r->fields))
            goto bad_method;
    } else if (nseg == 2) {
        op = m == HTTP_GET ? OP_GET : m == HTTP_PATCH ? OP_UPDATE : OP_DELETE;
        allow = r->fields ? "GET, PATCH, DELETE" : "GET";
        if (m != HTTP_GET && (!r->fields || (m != HTTP_PATCH && m != HTTP_DELETE)))
            goto bad_method;
    } else {
        op = activate ? OP_ACTIVATE : OP_ACTION;
        allow = "POST";
        if (m != HTTP_POST)
            goto bad_method;
    }
    const char *id = nseg >= 2 ? seg[1] : NULL;
    if (id && !active_cred && !id_ok(r, id)) {
        adm_error(req, actor, 404, "not_found", NULL, "no such %s ('%s' is not an id)", r->noun,
                  id);
        return;
    }
    /* roles */
    bool write = op != OP_LIST && op != OP_GET;
    bool secret = op == OP_GET && (r->flags & R_SECRET) && r->kind == TN_CRED &&
                  query_flag(req->query, "include_secret");
    tn_role need = secret || (write && (r->flags & R_OWNER_WRITE)) ? TN_ROLE_OWNER
                   : write                                         ? TN_ROLE_ADMIN
                                                                   : TN_ROLE_VIEWER;
    if (role < need) {
        adm_error(req, actor, 403, "forbidden", NULL, "This needs the %s role (this key is %s).",
                  role_name(need), role_name(role));
        return;
    }
    if (op == OP_CREATE || op == OP_UPDATE) {
        json_error_t je;
        if (req->body.len > ADM_MAX_BODY) {
            adm_error(req, actor, 413, "too_large", NULL, "The body is larger than %u bytes.",
                      ADM_MAX_BODY);
            return;
        }
        body = json_loadb(req->body.p, req->body.len, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(body)) {
            json_decref(body);
            adm_error(req, actor, 400, "invalid_json", NULL, "The body must be a JSON object (%s).",
                      body ? "not an object" : "malformed JSON");
            return;
        }
    }
    actx *c = calloc(1, sizeof(*c));
    if (!c) {
        json_decref(body);
        adm_error(req, actor, 500, "internal", NULL, "out of memory");
        return;
    }
    c->req = req;
    c->st = st;
    c->cfg = config_ref(cfg);
    c->res = r;
    c->op = op;
    c->role = role;
    c->include_secret = secret;
    snprintf(c->actor, sizeof(c->actor), "%s", actor);
    buf_init(&c->out, ADM_MAX_OUT);
    req->app = c;
    req->on_abort = on_abort;
    switch (op) {
    case OP_LIST:
        if (active_cred) {
            /* the org's active credential for a provider: one object or 404 */
            if (!query_has(req->query, "org_id") || !query_has(req->query, "provider")) {
                fail(c, 400, "invalid_query",
                     query_has(req->query, "org_id") ? "provider" : "org_id",
                     "GET /admin/credentials/active needs org_id and provider");
                break;
            }
            c->single = true;
            do_list(c, req->query, "active", NULL);
        } else {
            do_list(c, req->query, org_creds ? "org_id = $1::uuid" : NULL,
                    org_creds ? seg[1] : NULL);
        }
        break;
    case OP_GET:
        do_get(c, id);
        break;
    case OP_CREATE:
        do_create(c, body);
        break;
    case OP_UPDATE:
        do_update(c, id, "update", NULL, body);
        break;
    case OP_DELETE:
        do_delete(c, id);
        break;
    case OP_ACTION:
        do_update(c, id, act->name, act->set, NULL);
        break;
    case OP_ACTIVATE:
        do_activate(c, id);
        break;
    }
    json_decref(body);
    return;

bad_method : {
    char hdr[80];
    snprintf(hdr, sizeof(hdr), "Allow: %s\r\n", allow);
    adm_log(req, 405, actor);
    buf b;
    buf_init(&b, 1024);
    if (openai_error_body(&b, "Method not allowed here.", "invalid_request_error", NULL,
                          "method_not_allowed") == 0)
        http_respond(req, 405, "application/json", hdr, b.data, b.len);
    else
        http_respond(req, 500, "text/plain", NULL, "internal error\n", 15);
    buf_free(&b);
}
}
