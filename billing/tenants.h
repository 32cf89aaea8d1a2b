/* tenants.h - the tenancy cache: virtual keys, teams, model aliases,
 * provider credentials, BYOK keys and admin keys, served from memory on
 * the request path.
 *
 * The cache knows no SQL. daemon/store.c fills it from PostgreSQL (a full
 * load at start and on every refresh, one row at a time on NOTIFY) and the
 * request path reads it: one hash lookup per question, no allocation, no
 * I/O. A worker (loop) owns its cache; nothing here is thread-safe.
 *
 * Entries are reference-counted. A request that keeps an entry across
 * callbacks (the caller's key and team for the whole call) takes a
 * reference; replacing or removing the entry in the cache never frees what
 * a request still holds. Entries are immutable once put: an update is a
 * new entry that replaces the old one.
 *
 * Every put carries the row's version (updated_at in microseconds): a put
 * older than the entry already cached is ignored, so a slow full-load page
 * cannot undo a newer NOTIFY reload. A full load marks what it saw with a
 * generation; tenants_sweep() then drops what the database no longer has.
 *
 * Secrets (credentials, BYOK) are kept decrypted here, because every call
 * needs them; they are wiped when their entry is freed. */
#ifndef TG_BILLING_TENANTS_H
#define TG_BILLING_TENANTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "billing/prices.h"
#include "crypto/crypto.h"

#define TENANTS_MUSTCHECK __attribute__((warn_unused_result))

/* A UUID in its 36-character text form, plus NUL. */
#define TN_ID_LEN 36
typedef struct tn_id {
    char s[TN_ID_LEN + 1];
} tn_id;

/* The kinds of entries (also the table names notifications carry). */
typedef enum tn_kind {
    TN_TEAM = 0, /* teams */
    TN_KEY,      /* virtual_keys */
    TN_ALIAS,    /* model_aliases */
    TN_CRED,     /* provider_credentials (active ones only) */
    TN_BYOK,     /* byok_keys */
    TN_ADMIN,    /* admin_keys */
    TN_PRICE,    /* price_overrides */
    TN_NKINDS
} tn_kind;

/* Table name of a kind ("virtual_keys"), and back (-1 when unknown). */
const char *tn_kind_table(tn_kind k);
int tn_kind_from_table(const char *s, size_t n);

typedef enum tn_budget_mode {
    TN_BUDGET_USD = 0, /* consumption_usd */
    TN_BUDGET_TOKENS,  /* consumption_tokens */
    TN_BUDGET_JOBS,    /* job_based */
} tn_budget_mode;

/* Common head of every entry. */
typedef struct tn_entry {
    unsigned refs;    /* owners: the cache (while cached) and requests */
    tn_kind kind;     /* which struct this heads */
    tn_id id;         /* row id */
    int64_t version;  /* updated_at in microseconds since the epoch */
    uint64_t gen;     /* full-load generation that last saw it */
    struct tn_entry *next_id; /* private: id hash chain */
    struct tn_entry *next2;   /* private: second index chain (digest, name, scope) */
    bool cached;      /* private: still in the cache's indexes */
} tn_entry;

typedef struct tn_team {
    tn_entry e;
    tn_id org_id;
    const char *name;
    bool suspended;               /* status = 'suspended': its keys are refused */
    tn_budget_mode budget_mode;
    int64_t tokens_per_credit;
    int64_t max_budget_nano;     /* the team's budget; -1 = none */
    int64_t org_max_budget_nano; /* its organization's; -1 = none */
    uint32_t rpm;                /* the team's requests per minute; 0 = unlimited */
    uint64_t tpm;                /* its tokens per minute; 0 = unlimited */
    int64_t credit_limit_nano;   /* how far below 0 its credits may go; -1 = not enforced */
    uint8_t power_level;         /* its keys' "auto" (a config_level); 0 = none */
} tn_team;

typedef struct tn_key {
    tn_entry e;
    uint8_t sha256[CRYPTO_SHA256_LEN]; /* digest of the key; the plaintext is never known */
    const char *alias;                 /* for logs and usage rows */
    const char *prefix;                /* visible prefix "tg-AbCd12" */
    tn_id team_id;
    const char *const *models; /* allowed aliases ('*' at the end: a prefix); none = see groups */
    size_t nmodels;
    const char *const *groups; /* allowed access groups */
    size_t ngroups;
    uint32_t rpm;              /* 0 = unlimited */
    uint64_t tpm;              /* 0 = unlimited */
    int64_t max_budget_nano;   /* -1 = none */
    const char *budget_duration; /* "30d", "1mo" or NULL */
    int64_t expires_us;        /* 0 = never; else microseconds since the epoch */
    uint8_t power_level;       /* what "auto" means (a config_level); 0 = its team's */
    bool blocked;
} tn_key;

typedef struct tn_route {
    const char *provider; /* a provider name of the config */
    const char *model;    /* the provider's model name */
    uint32_t weight;      /* >= 1 */
    int32_t priority;     /* lower first */
} tn_route;

typedef struct tn_alias {
    tn_entry e;
    const char *name;
    const tn_route *routes; /* in priority order, at least one */
    size_t nroutes;
    const char *access_group; /* NULL = none */
    int64_t price_input_nano;  /* customer price per 1M tokens; -1 = provider cost */
    int64_t price_output_nano;
    int64_t price_cached_nano;
    int32_t markup_bps; /* customer price = cost + this many basis points; -1 = none */
} tn_alias;

/* An active provider credential (scope: org) or a BYOK key (scope: a team
 * or a key). */
typedef struct tn_secret {
    tn_entry e;
    tn_id scope_id;       /* org id (TN_CRED), team or key id (TN_BYOK) */
    bool scope_is_key;    /* TN_BYOK: scope_id is a key id, else a team id */
    const char *provider; /* config provider name */
    const char *secret;   /* decrypted; wiped on free */
    size_t secret_len;
} tn_secret;

typedef enum tn_role { TN_ROLE_VIEWER = 0, TN_ROLE_ADMIN, TN_ROLE_OWNER } tn_role;

typedef struct tn_admin {
    tn_entry e;
    uint8_t sha256[CRYPTO_SHA256_LEN];
    const char *name;
    tn_role role;
    bool blocked;
} tn_admin;

/* A price of the catalog set through the admin API (price_overrides):
 * wins over the shipped catalog's entry for the same provider and model. */
typedef struct tn_price {
    tn_entry e;
    price_entry price; /* provider and model point into the entry */
} tn_price;

typedef struct tenants tenants;

/* Counts for metrics and tests. */
typedef struct tenants_stats {
    size_t entries[TN_NKINDS]; /* cached entries per kind */
    uint64_t hits, misses;     /* key and admin lookups */
    uint64_t puts, dels, stale; /* changes applied, and puts ignored as older */
} tenants_stats;

tenants *tenants_new(void);
/* Drops the cache's references; entries held by requests live on until
 * their last tn_unref. */
void tenants_free(tenants *c);

/* Allocating entries: tn_new(kind, extra) returns a zeroed entry of the
 * kind's struct followed by extra bytes (for its strings and arrays, see
 * tn_extra) with one reference, or NULL. */
tn_entry *tn_new(tn_kind kind, size_t extra);
/* The extra bytes of an entry made by tn_new. */
char *tn_extra(tn_entry *e);
tn_entry *tn_ref(tn_entry *e);
void tn_unref(tn_entry *e);

/* Puts e (the caller's reference passes to the cache) marked with
 * generation gen. Replaces the entry with the same id unless that one has
 * a newer version (then e is dropped and 1 is returned). 0 when stored. */
int tenants_put(tenants *c, tn_entry *e, uint64_t gen);
/* Removes the entry of kind with id, if cached. */
void tenants_del(tenants *c, tn_kind kind, const char *id);
/* Removes every entry of kind whose gen is older than gen (after a full
 * load of that kind marked with gen). Returns how many went. */
size_t tenants_sweep(tenants *c, tn_kind kind, uint64_t gen);
/* True once a full load of every kind has completed (set by the loader). */
void tenants_set_loaded(tenants *c, bool loaded);
bool tenants_loaded(const tenants *c);

/* Lookups: borrowed pointers, valid until the next change to the cache
 * (take a reference to keep one longer). NULL when absent. */
const tn_key *tenants_key(tenants *c, const uint8_t sha256[CRYPTO_SHA256_LEN]);
const tn_admin *tenants_admin(tenants *c, const uint8_t sha256[CRYPTO_SHA256_LEN]);
const tn_team *tenants_team(tenants *c, const char *id);
const tn_alias *tenants_alias(tenants *c, const char *name, size_t len);
/* The org's active credential for provider. */
const tn_secret *tenants_cred(tenants *c, const char *org_id, const char *provider);
/* The BYOK secret of a key (scope_is_key) or a team for provider. */
const tn_secret *tenants_byok(tenants *c, bool scope_is_key, const char *scope_id,
                              const char *provider);
/* The admin API's price for provider's model, or NULL. */
const tn_price *tenants_price(tenants *c, const char *provider, const char *model);
/* Any entry by kind and id. */
const tn_entry *tenants_get(tenants *c, tn_kind kind, const char *id);

/* Whether key may use the alias called name (access_group: the alias's
 * group or NULL): no models and no groups allows everything; else name
 * must match an entry of models (exact, or a '*' prefix) or access_group
 * must be one of groups. */
bool tn_key_allows(const tn_key *key, const char *name, size_t len, const char *access_group);

/* Calls fn for every cached entry of kind, in no particular order; fn must
 * not change the cache. */
void tenants_foreach(tenants *c, tn_kind kind, void (*fn)(const tn_entry *e, void *ud), void *ud);

void tenants_stats_get(const tenants *c, tenants_stats *out);

#endif
