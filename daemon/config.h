/* config.h - the daemon's configuration: a YAML file loaded into an
 * immutable, reference-counted config object.
 *
 * Loading touches no global state (it does not even set the log level), so
 * a SIGHUP reload can build a new config beside the running one, reject it
 * with a precise message ("tollgate.yaml:12: providers[0].timeouts.connect:
 * bad duration ...") and keep the old one. A loaded config never changes:
 * the daemon swaps its pointer, and requests in flight keep the object
 * they started with through config_ref()/config_unref() (atomic, so worker
 * threads may share one object).
 *
 * The file format, every key, its default and whether a reload may change
 * it are in docs/configuration.md; the scalar settings are one table in
 * config.c. Virtual keys are kept only as SHA-256 digests: a plaintext key
 * in the file is hashed while loading and never stored. */
#ifndef TG_DAEMON_CONFIG_H
#define TG_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto/crypto.h"
#include "providers/router.h"
#include "crypto/fernet.h"
#include "daemon/base/buf.h"
#include "providers/mock.h"

#define CONFIG_MUSTCHECK __attribute__((warn_unused_result))

/* Largest config file or string accepted (bytes). */
#define CONFIG_MAX_INPUT_BYTES (16u * 1024 * 1024)
/* Buffer size that always holds the plaintext demo key of config_default(). */
#define CONFIG_DEMO_KEY_MAX 257
/* Shortest accepted plaintext virtual key (characters). */
#define CONFIG_KEY_MIN_LEN 20
/* The system CA bundle every TLS provider trusts; ca_file adds to it. */
#define CONFIG_SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* Environment lookup used for ${VAR} substitution: returns the value or
 * NULL when unset (libc getenv() fits; tests inject their own). */
typedef const char *(*config_getenv_fn)(const char *name);

/* Provider presets (providers[].type). */
typedef enum config_provider_type {
    CONFIG_PROVIDER_OPENAI = 0,        /* api.openai.com */
    CONFIG_PROVIDER_FIREWORKS,         /* api.fireworks.ai, OpenAI wire format */
    CONFIG_PROVIDER_OPENROUTER,        /* openrouter.ai, OpenAI wire format */
    CONFIG_PROVIDER_TOGETHER,          /* api.together.xyz, OpenAI wire format */
    CONFIG_PROVIDER_HUGGINGFACE,       /* router.huggingface.co, OpenAI wire format */
    CONFIG_PROVIDER_ANTHROPIC,         /* api.anthropic.com, Messages API */
    CONFIG_PROVIDER_GEMINI,            /* generativelanguage.googleapis.com, generateContent */
    CONFIG_PROVIDER_OPENAI_COMPATIBLE, /* any OpenAI-compatible base_url (vLLM, Ollama, ...) */
    CONFIG_PROVIDER_MOCK,              /* the built-in mock provider (providers/mock.h) */
} config_provider_type;

/* The address to listen on (config key "listen"). */
typedef struct config_listen {
    const char *text; /* as written after ${VAR} substitution: "127.0.0.1:8080", "[::1]:8080" */
    const char *host; /* IPv4 literal, IPv6 literal (no brackets) or host name */
    uint16_t port;    /* TCP port; 0 = let the kernel pick one */
    bool ipv6;        /* host is an IPv6 literal */
} config_listen;

/* A provider's base_url, parsed once at load. */
typedef struct config_url {
    bool tls;              /* scheme is https */
    const char *host;      /* host name or IP literal, IPv6 without brackets (connect, SNI) */
    uint16_t port;         /* explicit port, else 443 for https and 80 for http */
    bool ipv6;             /* host is an IPv6 literal */
    const char *authority; /* Host header value: "[::1]:8443"; the port only when not default */
    const char *path;      /* base path without trailing slash: "/v1", or "" */
} config_url;

/* One extra header sent upstream (providers[].headers). */
typedef struct config_header {
    const char *name;  /* header name, an HTTP token */
    const char *value; /* value; never contains CR, LF or NUL */
} config_header;

/* Upstream timeouts of one provider, in milliseconds. */
typedef struct config_provider_timeouts {
    uint32_t connect_ms;    /* TCP connect */
    uint32_t tls_ms;        /* TLS handshake */
    uint32_t first_byte_ms; /* request sent -> first response byte */
    uint32_t idle_ms;       /* longest silence between two body chunks */
    uint32_t total_ms;      /* whole call */
} config_provider_timeouts;

/* One upstream provider (providers[]). */
typedef struct config_provider {
    const char *name;             /* unique name, [a-z0-9_-]+; models refer to it */
    config_provider_type type;    /* preset */
    const char *base_url;         /* base URL as configured or from the preset; NULL for mock */
    config_url url;               /* base_url parsed; zeroed for mock */
    const char *api_key;          /* bearer credential; NULL = send none */
    const config_header *headers; /* extra upstream headers, in file order */
    size_t nheaders;              /* number of headers */
    const char *ca_file; /* extra CA bundle (PEM) added to CONFIG_SYSTEM_CA_FILE; NULL = none */
    bool tls_verify;     /* verify the chain and host name (https only) */
    config_provider_timeouts timeouts; /* upstream timeouts */
    const char *proxy_url; /* proxy: this provider's egress proxy, "direct" = none; NULL =
                              proxy.url (private: parsed into the fields below) */
    char proxy_host[256];  /* the HTTP CONNECT proxy calls go through; "" = direct */
    uint16_t proxy_port;
    char proxy_auth[512];  /* base64 user:password for Proxy-Authorization; "" = none */
    uint32_t check_interval_ms; /* health_check.interval: GET <base>/models this often; 0 = off */
    uint32_t check_timeout_ms;  /* health_check.timeout */
    uint32_t pool_max_connections;     /* cap on open upstream connections (per worker) */
    uint32_t pool_idle_timeout_ms;     /* close a pooled idle connection after this long */
    mock_options mock; /* mock behaviour; meaningful only for CONFIG_PROVIDER_MOCK */
} config_provider;

/* What a route can do (routes[].capabilities: RT_CAP_* of
 * providers/router.h); a request needing one is not sent to a route that
 * lacks it. */
#define CONFIG_CAP_ALL (RT_CAP_TOOLS | RT_CAP_IMAGES | RT_CAP_JSON)

/* One route of an alias (models[].routes[], or the alias's own provider
 * and model). */
typedef struct config_route {
    const config_provider *provider; /* where calls go */
    const char *model;               /* provider's model name; NULL for a wildcard alias */
    uint32_t weight;                 /* weighted: share of calls (default 1) */
    uint32_t priority;               /* priority: lower is tried first (default 0) */
    struct {
        bool given;     /* price.* set: this route's provider cost (else the catalog's) */
        int64_t input;  /* nano-USD per 1M prompt tokens */
        int64_t output; /* nano-USD per 1M completion tokens */
    } cost;
    uint64_t context;        /* context window in tokens; 0 = unknown (assumed to fit) */
    uint32_t caps;           /* RT_CAP_*; all when not given */
    uint32_t max_concurrent; /* attempts in flight on the route (per worker); 0 = no limit */
    uint32_t rpm;            /* the provider account's limits (per worker); 0 = no limit */
    uint64_t tpm;
} config_route;

#define CONFIG_MAX_ROUTES 16

/* Power levels (models[].level, keys[].level): groups of aliases a call
 * names as "eco", "balanced", "precision", or "auto" (the key's level). */
typedef enum config_level {
    CONFIG_LEVEL_NONE = 0,
    CONFIG_LEVEL_ECO,
    CONFIG_LEVEL_BALANCED,
    CONFIG_LEVEL_PRECISION,
    CONFIG_NLEVELS
} config_level;
const char *config_level_name(config_level l);
/* "eco", "balanced", "precision" (exactly len bytes); CONFIG_LEVEL_NONE otherwise. */
config_level config_level_parse(const char *s, size_t len);

/* One model alias (models[]). */
typedef struct config_model {
    const char *name; /* alias as written: "gpt-4o-mini", or a prefix and '*' */
    size_t len;       /* bytes of name that must match: all, or the prefix before '*' */
    bool wildcard;    /* name ends in '*': matches any longer name with that prefix */
    const config_provider *provider; /* where calls go: routes[0]'s provider */
    const char *model; /* provider's model name; NULL for a wildcard (the rest of the name) */
    const config_route *routes; /* at least one; a wildcard alias has exactly one */
    size_t nroutes;
    rt_strategy strategy;       /* how a call picks among the routes (models[].strategy) */
    config_level level;         /* models[].level: the power level it belongs to */
    struct {
        bool given;           /* price.* set: overrides the catalog */
        int64_t input;        /* nano-USD per 1M prompt tokens */
        int64_t output;       /* nano-USD per 1M completion tokens */
        int64_t cached_input; /* cache reads (default: input) */
        int64_t cache_write;  /* cache writes (default: input) */
        int32_t markup_bps;   /* without a price: cost plus this (basis points); 0 = none */
    } price;
} config_model;

/* One entry of a key's model allow-list. */
typedef struct config_pattern {
    const char *text; /* as written: "gpt-4o-mini", or a prefix and '*' */
    size_t len;       /* bytes that must match: all, or the prefix before '*' */
    bool wildcard;    /* text ends in '*' */
} config_pattern;

/* One virtual key (keys[]). */
typedef struct config_key {
    uint8_t sha256[CRYPTO_SHA256_LEN]; /* SHA-256 of the key; the plaintext is never kept */
    const char *alias;                 /* unique name for logs and usage rows */
    const config_pattern *models;      /* allowed model aliases; NULL = every model */
    size_t nmodels;                    /* entries in models (0 with models == NULL) */
    uint32_t rpm;                      /* requests per minute; 0 = unlimited */
    int64_t max_budget_nano;           /* max_budget; -1 = none */
    const char *budget_duration;       /* budget_duration ("1d", "1mo"); NULL = never resets */
    config_level level;                /* level: what "auto" means for it (none: balanced) */
    char budget_id[37]; /* with a database: the UUID of its budget (scope 'config'), derived
                           from the alias, so every instance names the same budget */
} config_key;

/* "20%", "7.5%", "0.25%" as basis points (2000, 750, 25); at most 2
 * decimals and 10000%. 0 or -1. */
int config_markup_parse(const char *s, int32_t *bps);

/* The UUID (36 characters) of the budget of the config key named alias. */
void config_key_budget_id(const char *alias, char out[37]);

struct config__arena;

/* A loaded configuration. Immutable once returned by a loader: share it
 * with config_ref(), release it with config_unref(). */
typedef struct config {
    unsigned long refs;         /* reference count; touch only through config_ref/unref */
    const char *origin;         /* where it came from (file path, "<default>"), for messages */
    config_listen listen;       /* listen (restart-only) */
    uint32_t workers;           /* loops, one thread each; 0 = one per core (restart-only) */
    int log_level;              /* log.level: an enum log_level (daemon/base/log.h) */
    bool log_access;            /* log.access: JSON access log lines on or off */
    const char *log_file;       /* log.file: operational lines: stdout, stderr or a path */
    const char *log_access_file; /* log.access_file: access lines: stdout, stderr or a path */
    bool metrics_key_labels;    /* metrics.key_labels: per-key and team series in /metrics */
    const char *tokenizer_dir;  /* where <encoding>.tgbpe are; NULL = built-in search */
    const char *prices_file;    /* price catalog JSON; NULL = the shipped one */
    size_t max_body_bytes;      /* limits.max_body_bytes: larger request bodies get 413 */
    size_t max_header_bytes;    /* limits.max_header_bytes: total request head size */
    uint32_t max_headers;       /* limits.max_headers: header fields per request */
    uint32_t header_timeout_ms; /* timeouts.header: reading the request head */
    uint32_t body_timeout_ms;   /* timeouts.body: reading the request body */
    uint32_t idle_timeout_ms;   /* timeouts.idle: keep-alive idle */
    uint32_t drain_timeout_ms;  /* timeouts.drain: SIGTERM drain deadline */
    struct {
        const char *url;               /* database.url: libpq conninfo or URI; NULL = DB-less */
        uint32_t pool_size;            /* database.pool_size: query connections per worker */
        uint32_t connect_timeout_ms;   /* database.connect_timeout */
        uint32_t statement_timeout_ms; /* database.statement_timeout */
        uint32_t cache_refresh_ms;     /* database.cache_refresh: full cache reload (safety net) */
    } database;
    /* secrets.keys (comma-separated Fernet keys, newest first) and/or
     * secrets.passphrase + secrets.salt (+ secrets.iterations): the key
     * ring for provider credentials at rest. n == 0: none configured. The
     * text forms are wiped while loading. */
    fernet_keyring secrets;
    struct {
        const char *spool_dir;      /* ledger.spool_dir: the write-ahead spool (DB-less: the ledger) */
        size_t spool_max_bytes;     /* ledger.spool_max_bytes: backlog that stops new calls (503) */
        uint32_t batch_rows;        /* ledger.batch_rows: rows per INSERT */
        uint32_t ship_interval_ms;  /* ledger.ship_interval: longest wait before shipping */
        uint32_t spool_interval_ms; /* ledger.spool_interval: write + fsync period */
    } ledger;
    struct {
        uint32_t lease_ttl_ms;       /* budgets.lease_ttl: a lease not renewed lapses */
        uint32_t wait_ms;            /* budgets.wait: longest wait of a call for a lease */
        uint32_t default_max_output; /* budgets.default_max_output: output tokens assumed when a
                                        call sets no cap (its worst case) */
        uint32_t soft_pct;           /* budgets.soft_threshold: percent of a budget that alerts */
        const char *alert_url_text;  /* budgets.alert_webhook: where alerts are POSTed */
        config_url alert_url;        /* it, parsed; alert_url.host NULL = none */
        const char *alert_secret_text; /* private: wiped after loading */
        char alert_secret[256];      /* budgets.alert_webhook_secret: HMAC key of the alerts */
        size_t alert_secret_len;     /* 0 = alerts are not signed */
    } budgets;
    const char *proxy_url; /* proxy.url (default $https_proxy): egress proxy of providers */
    const char *no_proxy;  /* proxy.no_proxy (default $no_proxy): hosts reached directly */
    struct {
        uint32_t attempts;       /* routing.retries.attempts: tries per route before the next */
        uint32_t backoff_ms;     /* routing.retries.backoff: first retry's delay cap (doubles) */
        uint32_t backoff_max_ms; /* routing.retries.backoff_max: a delay's cap */
        uint32_t max_wait_ms;    /* routing.retries.max_wait: retries stop this long after start */
        uint32_t failures;       /* routing.breaker.failures: consecutive failures that open */
        uint32_t window_ms;      /* routing.breaker.window: the error rate's window */
        uint32_t min_requests;   /* routing.breaker.min_requests: the rate counts from this many */
        uint32_t error_pct;      /* routing.breaker.error_rate: percent of failures that opens */
        uint32_t cooldown_ms;    /* routing.breaker.cooldown: open -> half-open */
        rt_strategy level_strategy; /* routing.level_strategy: the pick within a power level */
        const char *level_strategy_text; /* private: as written */
    } routing;
    bool has_payment_secret;                 /* billing.payment_webhook_secret given */
    char payment_secret[256];                /* its bytes (HMAC key of the payment webhook) */
    size_t payment_secret_len;
    const char *payment_secret_text;         /* private: wiped after loading */
    const char *instance_id; /* instance_id: names this instance in rows and leases; NULL = kept
                                in the spool directory (made at first start) */
    bool has_master_key;                          /* admin.master_key given */
    uint8_t master_key_sha256[CRYPTO_SHA256_LEN]; /* its SHA-256; the plaintext is not kept */
    const char *secrets_keys_text;   /* private: wiped after loading */
    const char *secrets_pass_text;   /* private: wiped after loading */
    const char *secrets_salt_text;   /* private: wiped after loading */
    uint32_t secrets_iterations;     /* private: PBKDF2 iterations for the passphrase */
    const char *master_key_text;     /* private: wiped after loading */
    const config_provider *providers; /* providers in file order */
    size_t nproviders;                /* number of providers */
    const config_model *models;       /* model aliases in file order */
    size_t nmodels;                   /* number of models */
    const config_key *keys;           /* virtual keys in file order */
    size_t nkeys;                     /* number of keys */
    const uint32_t *model_index; /* private: exact aliases, open addressing, slot = index + 1 */
    size_t model_mask;           /* private: model_index size - 1 */
    const uint32_t *wild_index;  /* private: wildcard prefixes, same layout */
    size_t wild_mask;            /* private: wild_index size - 1 */
    const uint32_t *wild_lens;   /* private: distinct wildcard prefix lengths, longest first */
    size_t nwild_lens;           /* private: entries in wild_lens */
    const uint32_t *key_index;   /* private: keys by digest, open addressing, slot = index + 1 */
    size_t key_mask;             /* private: key_index size - 1 */
    struct config__arena *arena; /* private: owns every string and array above */
} config;

/* Parses a YAML document of len bytes. origin names it in error messages
 * (a path, "<default>"); getenv_fn resolves ${VAR} (NULL = an empty
 * environment). On success sets *out to a new config holding one
 * reference and returns 0. On failure leaves *out alone, writes one line
 * "origin:LINE: key.path: what is wrong" into err (never a secret), and
 * returns -EINVAL (bad config), -E2BIG (input too large) or -ENOMEM.
 * Thread-safe: no global state is read or written except via getenv_fn. */
int config_load_string(const char *yaml, size_t len, const char *origin, config_getenv_fn getenv_fn,
                       config **out, char *err, size_t errlen) CONFIG_MUSTCHECK;

/* Reads path (at most CONFIG_MAX_INPUT_BYTES) and loads it with the
 * process environment (getenv). Returns as config_load_string(), or a
 * negative errno when the file cannot be read (err names the path). The
 * file's bytes are wiped from memory after parsing. */
int config_load_file(const char *path, config **out, char *err, size_t errlen) CONFIG_MUSTCHECK;

/* The configuration used when tollgate starts without a file: listen
 * ${TOLLGATE_LISTEN:-127.0.0.1:8080}; a provider "mock" with models
 * "mock-1" and "gpt-4o-mini"; for each of OPENAI_API_KEY,
 * FIREWORKS_API_KEY, OPENROUTER_API_KEY, TOGETHER_API_KEY set in the
 * environment, that preset's provider and aliases (openai: gpt-4o,
 * gpt-4o-mini, gpt-4.1, gpt-4.1-mini; others: a wildcard "fireworks/" + '*' ...); one key
 * with alias "demo": TOLLGATE_DEMO_KEY if set, else "tg-demo-" + 32 random
 * hex chars. The plaintext key is copied into demo_key (demo_key_size >=
 * CONFIG_DEMO_KEY_MAX always suffices) so main() can print it once.
 * TOLLGATE_DATABASE_URL, TOLLGATE_SECRET_KEYS and TOLLGATE_MASTER_KEY, when
 * set, become database.url, secrets.keys and admin.master_key.
 * Built as a YAML string and loaded by config_load_string(). */
int config_default(config_getenv_fn getenv_fn, config **out, char *demo_key, size_t demo_key_size,
                   char *err, size_t errlen) CONFIG_MUSTCHECK;

/* Takes one more reference; returns cfg. */
const config *config_ref(const config *cfg);
/* Drops one reference; the last one frees the object. NULL is ignored. */
void config_unref(const config *cfg);

/* Name of the first setting that differs between two configs but cannot
 * change without a restart ("listen", "workers"), or NULL when a reload
 * may apply newc. */
const char *config_restart_only_change(const config *old, const config *newc);

/* The key whose SHA-256 digest equals that of the presented bytes, or
 * NULL. Compares digests in constant time; O(1); allocates nothing. */
const config_key *config_find_key(const config *cfg, const char *presented, size_t len);

/* Whether s is a budget duration: N followed by s, m, h, d or mo. */
bool config_duration_ok(const char *s);
/* The budget period of duration d around now (epoch seconds, UTC) as
 * [*start, *end): s/m/h/d are fixed lengths aligned to the epoch, mo are
 * calendar months. */
void config_period(const char *d, int64_t now, int64_t *start, int64_t *end);

/* The key whose digest is sha256 (constant-time compare), or NULL. */
const config_key *config_find_key_digest(const config *cfg, const uint8_t sha256[CRYPTO_SHA256_LEN]);

/* Resolves a model alias: an exact alias first, else the wildcard alias
 * with the longest matching prefix (the name must be longer than the
 * prefix). Sets *provider_model (may be NULL) to the provider's model
 * name -- the configured one, or for a wildcard the rest of name after
 * the prefix (pointing into name). NULL when nothing matches. Allocates
 * nothing. */
const config_model *config_find_model(const config *cfg, const char *name, size_t len,
                                      slice *provider_model);

/* True if key may use the model alias name (as the caller sent it): no
 * allow-list, an exact entry, or a wildcard entry whose prefix it extends. */
bool config_key_allows(const config_key *key, const char *name, size_t len);

/* The provider called name, or NULL. Linear; not for the request path. */
const config_provider *config_find_provider(const config *cfg, const char *name);

/* The preset's lower-case name ("openai", "openai_compatible", ...). */
const char *config_provider_type_name(config_provider_type type);
/* The price catalog's name of a preset ("openai", ...); NULL for
 * openai_compatible and mock. */
const char *config_provider_catalog(config_provider_type type);
/* The wire format a provider speaks (a chat_format_id of providers/chat.h):
 * the preset's, or mock.format for the mock. */
int config_provider_format(const config_provider *p);

/* Test helper: true if the n bytes at p occur anywhere in memory owned by
 * cfg (the object and its arena). Used to prove plaintext keys are gone. */
bool config__contains_bytes(const config *cfg, const void *p, size_t n);

#endif
