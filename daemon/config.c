/* config.c - YAML configuration: parse, substitute, validate, index.
 *
 * The file is loaded with libyaml's document API, then walked once. Scalar
 * settings are described by the tables below (type, field, default,
 * range, whether a reload may change them); the walker fills a struct
 * from a table, so the defaults, the parsing, the error messages and the
 * restart-only check all come from one place. Lists (providers, models,
 * keys) and maps (headers) have small hand-written handlers.
 *
 * Everything a config owns lives in one arena freed (and wiped: it holds
 * provider credentials) with the last reference. Loading writes nothing
 * outside the new object and the caller's err buffer. */
#define _GNU_SOURCE
#include "daemon/config.h"

#include "billing/money.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "daemon/base/log.h"
#include "daemon/httpc.h"
#include "providers/chat.h"

#define CFG_PATH_MAX 256           /* longest key path kept for messages */
#define CFG_VALUE_MAX 65536        /* longest scalar after ${VAR} substitution */
#define CFG_ARENA_CHUNK 16384      /* default arena chunk */
#define CFG_ARENA_MAX (512u << 20) /* hard cap on the memory of one config */
#define CFG_MAX_HEADERS 64         /* providers[].headers entries */
#define CFG_MAX_HEADER_VALUE 8192  /* bytes of one header value */
#define CFG_MAX_KEY_MODELS 1024    /* keys[].models entries */
#define CFG_KEY_MAX_LEN 256        /* longest plaintext key */
#define CFG_ENV_NAME_MAX 128       /* longest ${VAR} name */
#define CFG_ECHO_MAX 60            /* value bytes quoted back in a message */
#define CFG_MAX_SETTINGS 64        /* entries in one settings table */
#define CFG_MAX_EXTRA 3            /* non-scalar keys of one mapping */

#define CFG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------- arena */

struct config__chunk {
    struct config__chunk *next; /* the chunk allocated before this one */
    size_t size;                /* usable bytes in data */
    size_t used;                /* bytes handed out */
    max_align_t data[];         /* the memory, zeroed */
};

struct config__arena {
    struct config__chunk *head; /* newest chunk */
    size_t total;               /* bytes in all chunks, at most CFG_ARENA_MAX */
};

/* Zeroed, aligned memory for n bytes that lives as long as the arena. */
static void *arena__alloc(struct config__arena *a, size_t n)
{
    const size_t al = _Alignof(max_align_t);
    struct config__chunk *c = a->head;
    void *p;

    if (n > CFG_ARENA_MAX)
        return NULL;
    n = n == 0 ? al : (n + al - 1) & ~(al - 1);
    if (!c || c->size - c->used < n) {
        size_t sz = n > CFG_ARENA_CHUNK ? n : CFG_ARENA_CHUNK;
        if (sz > CFG_ARENA_MAX - a->total)
            return NULL;
        c = calloc(1, sizeof(*c) + sz);
        if (!c)
            return NULL;
        c->size = sz;
        c->next = a->head;
        a->head = c;
        a->total += sz;
    }
    p = (unsigned char *)c->data + c->used;
    c->used += n;
    return p;
}

static void *arena__calloc(struct config__arena *a, size_t count, size_t size)
{
    if (size != 0 && count > CFG_ARENA_MAX / size)
        return NULL;
    return arena__alloc(a, count * size);
}

static char *arena__strndup(struct config__arena *a, const char *s, size_t n)
{
    char *d = arena__alloc(a, n + 1);
    if (d && n)
        memcpy(d, s, n);
    return d;
}

/* Frees every chunk, wiping it first: provider credentials live here. */
static void arena__free(struct config__arena *a)
{
    struct config__chunk *c = a->head, *next;
    for (; c; c = next) {
        next = c->next;
        explicit_bzero(c->data, c->used);
        free(c);
    }
    a->head = NULL;
    a->total = 0;
}

/* ------------------------------------------------------ settings tables */

enum cfg__type {
    CFG_STR,      /* string without control characters; "" stores NULL */
    CFG_NAME,     /* provider name: [a-z0-9_-]+ */
    CFG_ALIAS,    /* key alias: [A-Za-z0-9_.-]+ */
    CFG_MODEL,    /* model alias: printable ASCII, no spaces, '*' only at the end */
    CFG_U32,      /* decimal integer into uint32_t */
    CFG_SIZE,     /* byte size ("4MiB", "512KiB", integer) into size_t */
    CFG_MS,       /* duration ("250ms", "10s", "2m", integer ms) into uint32_t ms */
    CFG_BOOL,     /* true/false/yes/no/on/off into bool */
    CFG_LOGLEVEL, /* error|warn|info|debug into int (enum log_level) */
    CFG_LISTEN,   /* host:port into config_listen */
    CFG_PTYPE,    /* preset name into config_provider_type */
    CFG_STATUS,   /* 0 or an HTTP error status 400..599 into int */
    CFG_FORMAT,   /* wire format name (openai|anthropic|gemini) into int (chat_format_id) */
};

#define CFG_RESTART 1u  /* a reload may not change it */
#define CFG_REQUIRED 2u /* must be given */
#define CFG_SECRET 4u   /* never quote the value back in a message */
#define CFG_MOCK 8u     /* only meaningful for providers of type mock */

/* One scalar setting: the single place that says how a key is read. */
struct cfg__setting {
    const char *key;     /* path inside its mapping, groups joined by '.' */
    enum cfg__type type; /* how the value is parsed and stored */
    size_t off;          /* offset of the field in the struct the table fills */
    const char *def;     /* default in config syntax; NULL = none (field stays zero/NULL) */
    uint64_t min, max;   /* numeric range (milliseconds, bytes), or max length of a string */
    unsigned flags;      /* CFG_RESTART, CFG_REQUIRED, CFG_SECRET, CFG_MOCK */
};

#define CFG_DAY_MS (24u * 3600 * 1000)

#define TOP(f) offsetof(config, f)
static const struct cfg__setting cfg__top[] = {
    {"listen", CFG_LISTEN, TOP(listen), "127.0.0.1:8080", 0, 0, CFG_RESTART},
    {"workers", CFG_U32, TOP(workers), "0", 0, 256, CFG_RESTART},
    {"log.level", CFG_LOGLEVEL, TOP(log_level), "info", 0, 0, 0},
    {"log.access", CFG_BOOL, TOP(log_access), "true", 0, 0, 0},
    {"log.file", CFG_STR, TOP(log_file), "stdout", 1, 1023, 0},
    {"log.access_file", CFG_STR, TOP(log_access_file), "stdout", 1, 1023, 0},
    {"metrics.key_labels", CFG_BOOL, TOP(metrics_key_labels), "false", 0, 0, 0},
    {"limits.max_body_bytes", CFG_SIZE, TOP(max_body_bytes), "4MiB", 1, 1u << 30, 0},
    {"limits.max_header_bytes", CFG_SIZE, TOP(max_header_bytes), "16KiB", 1, 1u << 20, 0},
    {"limits.max_headers", CFG_U32, TOP(max_headers), "100", 1, 10000, 0},
    {"timeouts.header", CFG_MS, TOP(header_timeout_ms), "10s", 1, CFG_DAY_MS, 0},
    {"timeouts.body", CFG_MS, TOP(body_timeout_ms), "30s", 1, CFG_DAY_MS, 0},
    {"timeouts.idle", CFG_MS, TOP(idle_timeout_ms), "60s", 1, CFG_DAY_MS, 0},
    {"timeouts.drain", CFG_MS, TOP(drain_timeout_ms), "30s", 1, CFG_DAY_MS, 0},
    {"tokenizer_dir", CFG_STR, TOP(tokenizer_dir), NULL, 0, 1024, CFG_RESTART},
    {"prices_file", CFG_STR, TOP(prices_file), NULL, 0, 4096, CFG_RESTART},
    {"database.url", CFG_STR, TOP(database.url), NULL, 0, 4096, CFG_RESTART | CFG_SECRET},
    {"database.pool_size", CFG_U32, TOP(database.pool_size), "4", 1, 256, CFG_RESTART},
    {"database.connect_timeout", CFG_MS, TOP(database.connect_timeout_ms), "5s", 100, 600000,
     CFG_RESTART},
    {"database.statement_timeout", CFG_MS, TOP(database.statement_timeout_ms), "5s", 10, 3600000,
     CFG_RESTART},
    {"database.cache_refresh", CFG_MS, TOP(database.cache_refresh_ms), "60s", 1000, CFG_DAY_MS,
     0},
    {"secrets.keys", CFG_STR, TOP(secrets_keys_text), NULL, 0, 1024, CFG_SECRET},
    {"secrets.passphrase", CFG_STR, TOP(secrets_pass_text), NULL, 0, 1024, CFG_SECRET},
    {"secrets.salt", CFG_STR, TOP(secrets_salt_text), NULL, 0, 1024, 0},
    {"secrets.iterations", CFG_U32, TOP(secrets_iterations), "600000", FERNET_PBKDF2_MIN_ITER,
     100000000, 0},
    {"admin.master_key", CFG_STR, TOP(master_key_text), NULL, 0, 256, CFG_SECRET},
    {"ledger.spool_dir", CFG_STR, TOP(ledger.spool_dir), "tollgate-spool", 0, 3000, CFG_RESTART},
    {"ledger.spool_max_bytes", CFG_SIZE, TOP(ledger.spool_max_bytes), "1GiB", 1u << 20, 1u << 30,
     0},
    {"ledger.batch_rows", CFG_U32, TOP(ledger.batch_rows), "500", 1, 10000, 0},
    {"ledger.ship_interval", CFG_MS, TOP(ledger.ship_interval_ms), "200ms", 1, 60000, 0},
    {"ledger.spool_interval", CFG_MS, TOP(ledger.spool_interval_ms), "10ms", 1, 10000, 0},
    {"instance_id", CFG_STR, TOP(instance_id), NULL, 0, 100, CFG_RESTART},
    {"billing.payment_webhook_secret", CFG_STR, TOP(payment_secret_text), NULL, 0, 255,
     CFG_SECRET},
    {"budgets.lease_ttl", CFG_MS, TOP(budgets.lease_ttl_ms), "30s", 1000, 3600000, 0},
    {"budgets.wait", CFG_MS, TOP(budgets.wait_ms), "2s", 10, 60000, 0},
    {"budgets.default_max_output", CFG_U32, TOP(budgets.default_max_output), "4096", 1, 10000000,
     0},
    {"budgets.soft_threshold", CFG_U32, TOP(budgets.soft_pct), "80", 0, 100, 0},
    {"budgets.alert_webhook", CFG_STR, TOP(budgets.alert_url_text), NULL, 0, 2048, 0},
    {"budgets.alert_webhook_secret", CFG_STR, TOP(budgets.alert_secret_text), NULL, 0, 255,
     CFG_SECRET},
    {"proxy.url", CFG_STR, TOP(proxy_url), NULL, 0, 2048, CFG_SECRET},
    {"proxy.no_proxy", CFG_STR, TOP(no_proxy), NULL, 0, 4096, 0},
    {"routing.retries.attempts", CFG_U32, TOP(routing.attempts), "2", 1, 10, 0},
    {"routing.retries.backoff", CFG_MS, TOP(routing.backoff_ms), "200ms", 1, 60000, 0},
    {"routing.retries.backoff_max", CFG_MS, TOP(routing.backoff_max_ms), "2s", 1, 600000, 0},
    {"routing.retries.max_wait", CFG_MS, TOP(routing.max_wait_ms), "10s", 0, 3600000, 0},
    {"routing.breaker.failures", CFG_U32, TOP(routing.failures), "5", 1, 1000000, 0},
    {"routing.breaker.window", CFG_MS, TOP(routing.window_ms), "30s", 1000, 3600000, 0},
    {"routing.breaker.min_requests", CFG_U32, TOP(routing.min_requests), "20", 1, 1000000, 0},
    {"routing.breaker.error_rate", CFG_U32, TOP(routing.error_pct), "50", 1, 100, 0},
    {"routing.breaker.cooldown", CFG_MS, TOP(routing.cooldown_ms), "10s", 1, 3600000, 0},
    {"routing.level_strategy", CFG_STR, TOP(routing.level_strategy_text), "lowest-cost", 0, 32, 0},
};
static const char *const cfg__top_extra[] = {"providers", "models", "keys"};

#define PRV(f) offsetof(config_provider, f)
static const struct cfg__setting cfg__provider[] = {
    {"name", CFG_NAME, PRV(name), NULL, 0, 64, CFG_REQUIRED},
    {"type", CFG_PTYPE, PRV(type), NULL, 0, 0, CFG_REQUIRED},
    {"base_url", CFG_STR, PRV(base_url), NULL, 0, 2048, 0},
    {"api_key", CFG_STR, PRV(api_key), NULL, 0, 4096, CFG_SECRET},
    {"ca_file", CFG_STR, PRV(ca_file), NULL, 0, 4096, 0},
    {"tls_verify", CFG_BOOL, PRV(tls_verify), "true", 0, 0, 0},
    {"timeouts.connect", CFG_MS, PRV(timeouts.connect_ms), "10s", 1, CFG_DAY_MS, 0},
    {"timeouts.tls", CFG_MS, PRV(timeouts.tls_ms), "10s", 1, CFG_DAY_MS, 0},
    {"timeouts.first_byte", CFG_MS, PRV(timeouts.first_byte_ms), "120s", 1, CFG_DAY_MS, 0},
    {"timeouts.idle", CFG_MS, PRV(timeouts.idle_ms), "60s", 1, CFG_DAY_MS, 0},
    {"timeouts.total", CFG_MS, PRV(timeouts.total_ms), "600s", 1, CFG_DAY_MS, 0},
    {"proxy", CFG_STR, PRV(proxy_url), NULL, 0, 2048, CFG_SECRET},
    {"health_check.interval", CFG_MS, PRV(check_interval_ms), "0ms", 0, CFG_DAY_MS, 0},
    {"health_check.timeout", CFG_MS, PRV(check_timeout_ms), "10s", 1, 600000, 0},
    {"pool.max_connections", CFG_U32, PRV(pool_max_connections), "256", 1, 65535, 0},
    {"pool.idle_timeout", CFG_MS, PRV(pool_idle_timeout_ms), "60s", 1, CFG_DAY_MS, 0},
    {"mock.latency", CFG_MS, PRV(mock.latency_ms), "0ms", 0, 3600000, CFG_MOCK},
    {"mock.tokens_per_sec", CFG_U32, PRV(mock.tokens_per_sec), "0", 0, 1000000, CFG_MOCK},
    {"mock.default_tokens", CFG_U32, PRV(mock.default_tokens), "16", 1, 1000000, CFG_MOCK},
    {"mock.chunk_tokens", CFG_U32, PRV(mock.chunk_tokens), "1", 1, 1000000, CFG_MOCK},
    {"mock.fail_status", CFG_STATUS, PRV(mock.fail_status), "0", 0, 0, CFG_MOCK},
    {"mock.fail_every", CFG_U32, PRV(mock.fail_every), "0", 0, 1000000000, CFG_MOCK},
    {"mock.cut_after_chunks", CFG_U32, PRV(mock.cut_after_chunks), "0", 0, 1000000000, CFG_MOCK},
    {"mock.format", CFG_FORMAT, PRV(mock.format), "openai", 0, 0, CFG_MOCK},
};
static const char *const cfg__provider_extra[] = {"headers"};

/* A models[] entry as written; resolved into a config_model afterwards. */
struct ld__model {
    const char *name;     /* alias */
    const char *provider; /* provider name (or routes) */
    const char *strategy; /* priority, weighted, least-latency, lowest-cost */
    const char *level;    /* eco, balanced, precision */
    const char *model;    /* provider model name, NULL = name */
    const char *price[4]; /* price.input/output/cached_input/cache_write, decimal USD per 1M */
    const char *markup;   /* "20%": the customer price is the cost plus this */
};
#define MDL(f) offsetof(struct ld__model, f)
static const struct cfg__setting cfg__model[] = {
    {"name", CFG_MODEL, MDL(name), NULL, 0, 256, CFG_REQUIRED},
    {"provider", CFG_NAME, MDL(provider), NULL, 0, 64, 0},
    {"model", CFG_STR, MDL(model), NULL, 0, 256, 0},
    {"strategy", CFG_STR, MDL(strategy), NULL, 0, 32, 0},
    {"level", CFG_STR, MDL(level), NULL, 0, 16, 0},
    {"price.input", CFG_STR, MDL(price[0]), NULL, 0, 32, 0},
    {"price.output", CFG_STR, MDL(price[1]), NULL, 0, 32, 0},
    {"price.cached_input", CFG_STR, MDL(price[2]), NULL, 0, 32, 0},
    {"price.cache_write", CFG_STR, MDL(price[3]), NULL, 0, 32, 0},
    {"markup", CFG_STR, MDL(markup), NULL, 0, 16, 0},
};
static const char *const cfg__price_keys[4] = {"price.input", "price.output", "price.cached_input",
                                               "price.cache_write"};
static const char *const cfg__model_extra[] = {"routes"};

/* A routes[] entry as written. */
struct ld__route {
    const char *provider;
    const char *model;
    uint32_t weight, priority, max_concurrent, rpm, tpm, context;
    const char *price[2]; /* price.input / price.output: this route's provider cost */
};
#define RTE(f) offsetof(struct ld__route, f)
static const struct cfg__setting cfg__route[] = {
    {"provider", CFG_NAME, RTE(provider), NULL, 0, 64, CFG_REQUIRED},
    {"model", CFG_STR, RTE(model), NULL, 0, 256, CFG_REQUIRED},
    {"weight", CFG_U32, RTE(weight), "1", 0, 1000000, 0},
    {"priority", CFG_U32, RTE(priority), "0", 0, 1000000, 0},
    {"context", CFG_U32, RTE(context), "0", 0, 100000000, 0},
    {"max_concurrent", CFG_U32, RTE(max_concurrent), "0", 0, 1000000, 0},
    {"rpm", CFG_U32, RTE(rpm), "0", 0, 1000000000, 0},
    {"tpm", CFG_U32, RTE(tpm), "0", 0, 4000000000u, 0},
    {"price.input", CFG_STR, RTE(price[0]), NULL, 0, 32, 0},
    {"price.output", CFG_STR, RTE(price[1]), NULL, 0, 32, 0},
};
static const char *const cfg__route_extra[] = {"capabilities"};

/* A keys[] entry's scalar settings; key, key_sha256 and models are
 * handled apart (the plaintext must never be stored). */
struct ld__key {
    const char *alias;      /* unique name */
    uint32_t rpm;           /* requests per minute */
    const char *max_budget; /* decimal USD */
    const char *duration;   /* budget_duration */
    const char *level;      /* eco, balanced, precision */
};
#define KEY(f) offsetof(struct ld__key, f)
static const struct cfg__setting cfg__key[] = {
    {"alias", CFG_ALIAS, KEY(alias), NULL, 0, 64, CFG_REQUIRED},
    {"rpm", CFG_U32, KEY(rpm), "0", 0, 1000000000, 0},
    {"max_budget", CFG_STR, KEY(max_budget), NULL, 0, 32, 0},
    {"budget_duration", CFG_STR, KEY(duration), NULL, 0, 8, 0},
    {"level", CFG_STR, KEY(level), NULL, 0, 16, 0},
};
static const char *const cfg__key_extra[] = {"key", "key_sha256", "models"};

_Static_assert(CFG_ARRAY_LEN(cfg__top) <= CFG_MAX_SETTINGS, "seen is a 64-bit mask");
_Static_assert(CFG_ARRAY_LEN(cfg__provider) <= CFG_MAX_SETTINGS, "seen is a 64-bit mask");
_Static_assert(CFG_ARRAY_LEN(cfg__top_extra) <= CFG_MAX_EXTRA, "extra_key[] is too small");
_Static_assert(CFG_ARRAY_LEN(cfg__key_extra) <= CFG_MAX_EXTRA, "extra_key[] is too small");

static const struct {
    const char *name;     /* providers[].type */
    const char *base_url; /* default base_url; NULL = none */
} cfg__presets[] = {
    [CONFIG_PROVIDER_OPENAI] = {"openai", "https://api.openai.com/v1"},
    [CONFIG_PROVIDER_FIREWORKS] = {"fireworks", "https://api.fireworks.ai/inference/v1"},
    [CONFIG_PROVIDER_OPENROUTER] = {"openrouter", "https://openrouter.ai/api/v1"},
    [CONFIG_PROVIDER_TOGETHER] = {"together", "https://api.together.xyz/v1"},
    [CONFIG_PROVIDER_HUGGINGFACE] = {"huggingface", "https://router.huggingface.co/v1"},
    [CONFIG_PROVIDER_ANTHROPIC] = {"anthropic", "https://api.anthropic.com/v1"},
    [CONFIG_PROVIDER_GEMINI] = {"gemini", "https://generativelanguage.googleapis.com/v1beta"},
    [CONFIG_PROVIDER_OPENAI_COMPATIBLE] = {"openai_compatible", NULL},
    [CONFIG_PROVIDER_MOCK] = {"mock", NULL},
};

int config_provider_format(const config_provider *p)
{
    switch (p->type) {
    case CONFIG_PROVIDER_ANTHROPIC: return CHAT_FMT_ANTHROPIC;
    case CONFIG_PROVIDER_GEMINI: return CHAT_FMT_GEMINI;
    case CONFIG_PROVIDER_MOCK: return p->mock.format;
    default: return CHAT_FMT_OPENAI;
    }
}

const char *config_provider_catalog(config_provider_type t)
{
    switch (t) {
    case CONFIG_PROVIDER_OPENAI: return "openai";
    case CONFIG_PROVIDER_FIREWORKS: return "fireworks";
    case CONFIG_PROVIDER_OPENROUTER: return "openrouter";
    case CONFIG_PROVIDER_TOGETHER: return "together";
    case CONFIG_PROVIDER_HUGGINGFACE: return "huggingface";
    case CONFIG_PROVIDER_ANTHROPIC: return "anthropic";
    case CONFIG_PROVIDER_GEMINI: return "gemini";
    default: return NULL;
    }
}

const char *config_provider_type_name(config_provider_type type)
{
    if ((unsigned)type >= CFG_ARRAY_LEN(cfg__presets))
        return "?";
    return cfg__presets[type].name;
}

/* ------------------------------------------------------- value parsers */

static bool cfg__digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Leading decimal digits of s into *v; *end after them. -ERANGE on
 * overflow, -EINVAL without digits. Signs are not accepted. */
static int cfg__digits(const char *s, uint64_t *v, const char **end)
{
    uint64_t x = 0;
    const char *p = s;
    if (!cfg__digit(*p))
        return -EINVAL;
    for (; cfg__digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -ERANGE;
        x = x * 10 + d;
    }
    *v = x;
    *end = p;
    return 0;
}

/* A number followed by one of the units (multipliers); "" is a unit too. */
struct cfg__unit {
    const char *name; /* suffix */
    uint64_t mult;    /* value of one unit in base units */
};

static int cfg__with_unit(const char *s, const struct cfg__unit *u, size_t nu, uint64_t *out)
{
    uint64_t v;
    const char *p;
    int rc = cfg__digits(s, &v, &p);
    if (rc)
        return rc;
    while (*p == ' ')
        p++;
    for (size_t i = 0; i < nu; i++) {
        if (strcmp(p, u[i].name) != 0)
            continue;
        if (v > UINT64_MAX / u[i].mult)
            return -ERANGE;
        *out = v * u[i].mult;
        return 0;
    }
    return -EINVAL;
}

static const struct cfg__unit cfg__size_units[] = {
    {"", 1},      {"B", 1},     {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
    {"KB", 1000}, {"kB", 1000}, {"MB", 1000000},     {"GB", 1000000000},
};
static const struct cfg__unit cfg__ms_units[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000},
};

static bool cfg__host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || cfg__digit(c) || c == '-' ||
           c == '.' || c == '_';
}

/* Splits "host:port", "[v6]:port" (port optional unless need_port) into
 * host (copied, NUL-terminated, no brackets), *ipv6 and *port (-1 when
 * absent). Returns NULL or why it is bad. */
static const char *cfg__hostport(const char *s, size_t len, bool need_port, char *host,
                                 size_t hostsz, bool *ipv6, long *port)
{
    const char *h, *rest, *end = s + len;
    size_t hl;

    *ipv6 = false;
    *port = -1;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        unsigned char addr[16];
        if (!close)
            return "IPv6 address without closing ']'";
        h = s + 1;
        hl = (size_t)(close - h);
        rest = close + 1;
        if (hl == 0 || hl >= hostsz)
            return "bad IPv6 address";
        memcpy(host, h, hl);
        host[hl] = '\0';
        if (inet_pton(AF_INET6, host, addr) != 1)
            return "bad IPv6 address";
        *ipv6 = true;
    } else {
        const char *colon = memchr(s, ':', len);
        h = s;
        hl = colon ? (size_t)(colon - s) : len;
        rest = s + hl;
        if (colon && memchr(colon + 1, ':', (size_t)(end - colon - 1)))
            return "IPv6 addresses need brackets, as in [::1]:8080";
        if (hl == 0)
            return "host is missing";
        if (hl > 253 || hl >= hostsz)
            return "host name too long";
        for (size_t i = 0; i < hl; i++)
            if (!cfg__host_char(h[i]))
                return "bad character in host name";
        memcpy(host, h, hl);
        host[hl] = '\0';
    }
    if (rest == end) {
        if (need_port)
            return "port is missing (host:port)";
        return NULL;
    }
    if (*rest != ':')
        return "unexpected text after the host";
    rest++;
    {
        uint64_t v = 0;
        const char *pend;
        if (rest == end || (size_t)(end - rest) > 5 || cfg__digits(rest, &v, &pend) != 0 ||
            pend != end || v > 65535)
            return "port must be a number from 0 to 65535";
        *port = (long)v;
    }
    return NULL;
}

/* Returned by parsers of static reasons when an allocation failed. */
static const char cfg__enomem[] = "out of memory";

/* Parses a base URL into u (strings in the arena). Returns NULL, why it
 * is bad, or cfg__enomem. */
static const char *cfg__parse_url(struct config__arena *a, const char *s, config_url *u)
{
    const char *p, *auth_end, *path, *end = s + strlen(s);
    char host[256];
    long port;
    bool v6, tls;
    const char *why;
    uint16_t defport;
    size_t pl;
    char authority[300];
    int n;

    if (strncasecmp(s, "https://", 8) == 0) {
        tls = true;
        p = s + 8;
        defport = 443;
    } else if (strncasecmp(s, "http://", 7) == 0) {
        tls = false;
        p = s + 7;
        defport = 80;
    } else {
        return "must start with https:// or http://";
    }
    if (strpbrk(p, "?#"))
        return "must not contain a query or fragment";
    for (const char *q = p; *q; q++)
        if ((unsigned char)*q <= ' ' || (unsigned char)*q >= 0x7f)
            return "must not contain spaces or non-ASCII characters";
    auth_end = strchr(p, '/');
    if (!auth_end)
        auth_end = end;
    if (memchr(p, '@', (size_t)(auth_end - p)))
        return "must not contain credentials (user@host); use api_key or headers";
    why = cfg__hostport(p, (size_t)(auth_end - p), false, host, sizeof(host), &v6, &port);
    if (why)
        return why;
    if (port == 0)
        return "port must be a number from 1 to 65535";
    path = auth_end;
    pl = (size_t)(end - path);
    while (pl > 0 && path[pl - 1] == '/')
        pl--;
    u->tls = tls;
    u->ipv6 = v6;
    u->port = port < 0 ? defport : (uint16_t)port;
    if (u->port == defport)
        n = snprintf(authority, sizeof(authority), v6 ? "[%s]" : "%s", host);
    else
        n = snprintf(authority, sizeof(authority), v6 ? "[%s]:%u" : "%s:%u", host,
                     (unsigned)u->port);
    if (n < 0 || (size_t)n >= sizeof(authority))
        return "host name too long";
    u->host = arena__strndup(a, host, strlen(host));
    u->authority = arena__strndup(a, authority, (size_t)n);
    u->path = arena__strndup(a, path, pl);
    if (!u->host || !u->authority || !u->path)
        return cfg__enomem;
    return NULL;
}

/* Checks a string value against the character rules of its type. */
static const char *cfg__check_chars(enum cfg__type t, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (t) {
        case CFG_NAME:
            if (!((c >= 'a' && c <= 'z') || cfg__digit((char)c) || c == '_' || c == '-'))
                return "may contain only a-z, 0-9, '_' and '-'";
            break;
        case CFG_ALIAS:
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || cfg__digit((char)c) ||
                  c == '_' || c == '-' || c == '.'))
                return "may contain only letters, digits, '_', '-' and '.'";
            break;
        case CFG_MODEL:
            if (c <= ' ' || c >= 0x7f)
                return "may contain only printable ASCII without spaces";
            if (c == '*' && i != len - 1)
                return "'*' is allowed only at the end (a wildcard alias)";
            break;
        default:
            if (c < ' ' || c == 0x7f)
                return "must not contain control characters";
            break;
        }
    }
    return NULL;
}

/* Parses s (NUL-terminated, len bytes) as setting st and stores it into
 * base. 0; -EINVAL with the reason in why; -ENOMEM. */
static int cfg__apply(struct config__arena *a, const struct cfg__setting *st, void *base,
                      const char *s, size_t len, char *why, size_t whylen)
{
    char *f = (char *)base + st->off;
    uint64_t v = 0;
    const char *end, *bad = NULL;
    int rc;

    switch (st->type) {
    case CFG_STR:
    case CFG_NAME:
    case CFG_ALIAS:
    case CFG_MODEL: {
        const char *d = NULL;
        if (len == 0 && (st->flags & CFG_REQUIRED)) {
            bad = "must not be empty";
            break;
        }
        if (st->max && len > st->max) {
            snprintf(why, whylen, "longer than %llu characters", (unsigned long long)st->max);
            return -EINVAL;
        }
        if ((bad = cfg__check_chars(st->type, s, len)) != NULL)
            break;
        if (len > 0 && !(d = arena__strndup(a, s, len)))
            return -ENOMEM;
        memcpy(f, &d, sizeof(d));
        return 0;
    }
    case CFG_U32:
    case CFG_STATUS:
        rc = cfg__digits(s, &v, &end);
        if (rc == 0 && *end != '\0')
            rc = -EINVAL;
        if (rc) {
            bad = "not a whole number";
            break;
        }
        if (st->type == CFG_STATUS) {
            int status = (int)v;
            if (v != 0 && (v < 400 || v > 599)) {
                bad = "must be 0 (never) or an HTTP error status from 400 to 599";
                break;
            }
            memcpy(f, &status, sizeof(status));
            return 0;
        }
        if (v < st->min || v > st->max) {
            snprintf(why, whylen, "must be from %llu to %llu", (unsigned long long)st->min,
                     (unsigned long long)st->max);
            return -EINVAL;
        }
        {
            uint32_t u = (uint32_t)v;
            memcpy(f, &u, sizeof(u));
        }
        return 0;
    case CFG_SIZE:
        if (cfg__with_unit(s, cfg__size_units, CFG_ARRAY_LEN(cfg__size_units), &v) != 0) {
            bad = "not a size (use bytes, or units as in 512KiB, 4MiB, 1GiB)";
            break;
        }
        if (v < st->min || v > st->max) {
            snprintf(why, whylen, "must be from %llu to %llu bytes", (unsigned long long)st->min,
                     (unsigned long long)st->max);
            return -EINVAL;
        }
        {
            size_t z = (size_t)v;
            memcpy(f, &z, sizeof(z));
        }
        return 0;
    case CFG_MS:
        if (cfg__with_unit(s, cfg__ms_units, CFG_ARRAY_LEN(cfg__ms_units), &v) != 0) {
            bad = "not a duration (use 250ms, 10s, 2m, 1h or whole milliseconds)";
            break;
        }
        if (v < st->min || v > st->max) {
            snprintf(why, whylen, "must be from %llums to %llums", (unsigned long long)st->min,
                     (unsigned long long)st->max);
            return -EINVAL;
        }
        {
            uint32_t u = (uint32_t)v;
            memcpy(f, &u, sizeof(u));
        }
        return 0;
    case CFG_BOOL: {
        bool b;
        if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
            b = true;
        else if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
            b = false;
        else {
            bad = "must be true or false";
            break;
        }
        memcpy(f, &b, sizeof(b));
        return 0;
    }
    case CFG_LOGLEVEL: {
        int lvl = log_level_parse(s);
        if (lvl < 0) {
            bad = "must be one of error, warn, info, debug";
            break;
        }
        memcpy(f, &lvl, sizeof(lvl));
        return 0;
    }
    case CFG_PTYPE:
        for (size_t i = 0; i < CFG_ARRAY_LEN(cfg__presets); i++) {
            if (strcmp(s, cfg__presets[i].name) == 0) {
                config_provider_type t = (config_provider_type)i;
                memcpy(f, &t, sizeof(t));
                return 0;
            }
        }
        bad = "must be one of openai, fireworks, openrouter, together, huggingface, "
              "anthropic, gemini, openai_compatible, mock";
        break;
    case CFG_FORMAT: {
        const chat_format *fmt = chat_format_by_name(s);
        if (!fmt) {
            bad = "must be one of openai, anthropic, gemini";
            break;
        }
        int id = (int)fmt->id;
        memcpy(f, &id, sizeof(id));
        return 0;
    }
    case CFG_LISTEN: {
        config_listen l;
        char host[256];
        long port;
        bad = cfg__hostport(s, len, true, host, sizeof(host), &l.ipv6, &port);
        if (bad)
            break;
        l.port = (uint16_t)port;
        l.text = arena__strndup(a, s, len);
        l.host = arena__strndup(a, host, strlen(host));
        if (!l.text || !l.host)
            return -ENOMEM;
        memcpy(f, &l, sizeof(l));
        return 0;
    }
    }
    snprintf(why, whylen, "%s", bad ? bad : "bad value");
    return -EINVAL;
}

/* Fills the defaults of a table into base. */
static int cfg__defaults(struct config__arena *a, const struct cfg__setting *t, size_t n,
                         void *base, char *why, size_t whylen)
{
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (!t[i].def)
            continue;
        rc = cfg__apply(a, &t[i], base, t[i].def, strlen(t[i].def), why, whylen);
        if (rc)
            return rc;
    }
    return 0;
}

static const struct cfg__setting *cfg__find(const struct cfg__setting *t, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(t[i].key, key) == 0)
            return &t[i];
    return NULL;
}

/* OR of the flags of the settings under group prefix ("timeouts"), or 0
 * when no setting lives there. */
static unsigned cfg__group(const struct cfg__setting *t, size_t n, const char *prefix, bool *found)
{
    size_t pl = strlen(prefix);
    unsigned flags = 0;
    *found = false;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(t[i].key, prefix, pl) == 0 && t[i].key[pl] == '.') {
            *found = true;
            flags |= t[i].flags;
        }
    }
    return flags;
}

/* Equality of one setting's field in two structs (restart-only check). */
static bool cfg__equal(const struct cfg__setting *st, const void *a, const void *b)
{
    const char *fa = (const char *)a + st->off, *fb = (const char *)b + st->off;
    switch (st->type) {
    case CFG_LISTEN: {
        config_listen la, lb;
        memcpy(&la, fa, sizeof(la));
        memcpy(&lb, fb, sizeof(lb));
        return la.port == lb.port && strcmp(la.host, lb.host) == 0;
    }
    case CFG_STR:
    case CFG_NAME:
    case CFG_ALIAS:
    case CFG_MODEL: {
        const char *sa, *sb;
        memcpy(&sa, fa, sizeof(sa));
        memcpy(&sb, fb, sizeof(sb));
        return (!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0);
    }
    case CFG_U32:
    case CFG_MS:
        return memcmp(fa, fb, sizeof(uint32_t)) == 0;
    case CFG_SIZE:
        return memcmp(fa, fb, sizeof(size_t)) == 0;
    case CFG_BOOL:
        return memcmp(fa, fb, sizeof(bool)) == 0;
    case CFG_LOGLEVEL:
    case CFG_STATUS:
    case CFG_FORMAT:
        return memcmp(fa, fb, sizeof(int)) == 0;
    case CFG_PTYPE:
        return memcmp(fa, fb, sizeof(config_provider_type)) == 0;
    }
    return false;
}

/* --------------------------------------------------------- hash tables */

static uint64_t cfg__hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* Slots for n entries: a power of two, at most half full. */
static size_t cfg__slots(size_t n)
{
    size_t s = 8;
    while (s < 2 * n)
        s <<= 1;
    return s;
}

/* The slot holding the model whose first e->len bytes are name[0..len),
 * or the empty slot where it would go. */
static size_t cfg__model_slot(const uint32_t *tab, size_t mask, const config_model *models,
                              const char *name, size_t len)
{
    size_t i = (size_t)cfg__hash(name, len) & mask;
    while (tab[i]) {
        const config_model *e = &models[tab[i] - 1];
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return i;
        i = (i + 1) & mask;
    }
    return i;
}

static size_t cfg__key_home(const uint8_t *digest, size_t mask)
{
    uint64_t h;
    memcpy(&h, digest, sizeof(h));
    return (size_t)h & mask;
}

/* ------------------------------------------------------------- loader */

/* The state of one load. */
struct ld {
    yaml_document_t *doc;        /* the parsed document */
    const char *origin;          /* file name for messages */
    config_getenv_fn getenv_fn;  /* ${VAR} lookup, NULL = empty environment */
    char *err;                   /* caller's message buffer */
    size_t errlen;               /* its size */
    char path[CFG_PATH_MAX];     /* key path of the node being read */
    size_t pathlen;              /* strlen(path) */
    buf tmp;                     /* the current scalar after substitution (reserved once) */
    struct config__arena *arena; /* the new config's memory */
    size_t visits, max_visits;   /* node visits; the cap stops alias fan-out */
    struct ld__memo *memo;       /* keys[].models already read, by node (aliases) */
};

/* An allow-list read once and shared by every key that aliases it. */
struct ld__memo {
    const config_pattern *p; /* the parsed list, NULL = not read yet */
    size_t n;                /* its entries */
};

/* A temporary name -> index set (duplicate checks, provider lookup). */
struct ld__names {
    uint32_t *slot;    /* index + 1, 0 = empty */
    size_t mask;       /* slots - 1 */
    const char **name; /* name of each index */
};

static int ld__names_init(struct ld__names *s, size_t n)
{
    size_t slots = cfg__slots(n);
    s->slot = calloc(slots, sizeof(*s->slot));
    s->name = calloc(n ? n : 1, sizeof(*s->name));
    s->mask = slots - 1;
    return s->slot && s->name ? 0 : -ENOMEM;
}

static void ld__names_free(struct ld__names *s)
{
    free(s->slot);
    free(s->name);
    memset(s, 0, sizeof(*s));
}

static size_t ld__names_slot(const struct ld__names *s, const char *nm)
{
    size_t i = (size_t)cfg__hash(nm, strlen(nm)) & s->mask;
    while (s->slot[i] && strcmp(s->name[s->slot[i] - 1], nm) != 0)
        i = (i + 1) & s->mask;
    return i;
}

/* Index of nm, or -1. */
static long ld__names_find(const struct ld__names *s, const char *nm)
{
    size_t i;
    if (!s->slot)
        return -1;
    i = ld__names_slot(s, nm);
    return s->slot[i] ? (long)s->slot[i] - 1 : -1;
}

/* Adds nm as index idx; returns -1, or the index already holding nm. */
static long ld__names_add(struct ld__names *s, const char *nm, size_t idx)
{
    size_t i = ld__names_slot(s, nm);
    if (s->slot[i])
        return (long)s->slot[i] - 1;
    s->slot[i] = (uint32_t)idx + 1;
    s->name[idx] = nm;
    return -1;
}

static yaml_node_t *ld__node(struct ld *ld, int id)
{
    return yaml_document_get_node(ld->doc, id);
}

static size_t ld__line(const yaml_node_t *n)
{
    return n ? n->start_mark.line + 1 : 0;
}

static const char *ld__kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a single value";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

static int __attribute__((format(printf, 3, 0)))
ld__vfail(struct ld *ld, size_t line, const char *fmt, va_list ap)
{
    int n;
    if (!ld->err || ld->errlen == 0)
        return -EINVAL;
    if (ld->pathlen)
        n = snprintf(ld->err, ld->errlen, "%s:%zu: %s: ", ld->origin, line, ld->path);
    else
        n = snprintf(ld->err, ld->errlen, "%s:%zu: ", ld->origin, line);
    if (n >= 0 && (size_t)n < ld->errlen)
        vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
    return -EINVAL;
}

/* Records "origin:LINE: path: message" (LINE of node n); returns -EINVAL. */
static int __attribute__((format(printf, 3, 4)))
ld__fail(struct ld *ld, const yaml_node_t *n, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = ld__vfail(ld, ld__line(n), fmt, ap);
    va_end(ap);
    return rc;
}

static int ld__oom(struct ld *ld)
{
    if (ld->err && ld->errlen)
        snprintf(ld->err, ld->errlen, "%s: out of memory while loading the config", ld->origin);
    return -ENOMEM;
}

/* Copies up to n bytes of s into out for a message: printable ASCII
 * only, cut at CFG_ECHO_MAX with "...". */
static const char *ld__echo(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < outsz; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i == CFG_ECHO_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        out[o++] = (c >= ' ' && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
    return out;
}

/* Appends ".name" (or "name" at the root) to the path; returns the mark
 * that ld__pop() goes back to. */
static size_t ld__push(struct ld *ld, const char *name, size_t n)
{
    size_t mark = ld->pathlen;
    char e[CFG_ECHO_MAX + 8];
    ld__echo(name, n, e, sizeof(e));
    snprintf(ld->path + mark, sizeof(ld->path) - mark, "%s%s", mark ? "." : "", e);
    ld->pathlen = strlen(ld->path);
    return mark;
}

static size_t ld__push_index(struct ld *ld, size_t i)
{
    size_t mark = ld->pathlen;
    snprintf(ld->path + mark, sizeof(ld->path) - mark, "[%zu]", i);
    ld->pathlen = strlen(ld->path);
    return mark;
}

static void ld__pop(struct ld *ld, size_t mark)
{
    ld->pathlen = mark;
    ld->path[mark] = '\0';
}

/* Counts one node visit; aliases can make a small document huge. */
static int ld__visit(struct ld *ld, const yaml_node_t *n)
{
    if (++ld->visits > ld->max_visits)
        return ld__fail(ld, n, "document too complex (aliases expand too far)");
    return 0;
}

/* A plain empty, "~" or "null" scalar: the key counts as not given. */
static bool ld__is_null(const yaml_node_t *n)
{
    const char *s;
    size_t l;
    if (!n)
        return true;
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    s = (const char *)n->data.scalar.value;
    l = n->data.scalar.length;
    return l == 0 || (l == 1 && s[0] == '~') ||
           (l == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

static void ld__tmp_wipe(struct ld *ld)
{
    if (ld->tmp.data)
        explicit_bzero(ld->tmp.data, ld->tmp.len);
    buf_reset(&ld->tmp);
}

static bool ld__env_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > CFG_ENV_NAME_MAX || cfg__digit(s[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || cfg__digit(c) || c == '_'))
            return false;
    }
    return true;
}

static int ld__tmp_append(struct ld *ld, const yaml_node_t *n, const char *p, size_t len)
{
    int rc = buf_append(&ld->tmp, p, len);
    if (rc == -E2BIG)
        return ld__fail(ld, n, "value longer than %d bytes", CFG_VALUE_MAX);
    return rc == 0 ? 0 : ld__oom(ld);
}

/* Reads scalar n with ${VAR} and ${VAR:-default} substituted; "$${" is a
 * literal "${". *s (NUL-terminated, *len bytes) is valid until the next
 * call. */
static int ld__scalar(struct ld *ld, const yaml_node_t *n, const char **s, size_t *len)
{
    const char *p, *end;
    int rc;

    if (n->type != YAML_SCALAR_NODE)
        return ld__fail(ld, n, "expected a single value, found %s", ld__kind(n));
    p = (const char *)n->data.scalar.value;
    end = p + n->data.scalar.length;
    if (memchr(p, '\0', n->data.scalar.length))
        return ld__fail(ld, n, "value contains a NUL byte");
    ld__tmp_wipe(ld);
    while (p < end) {
        const char *dollar = memchr(p, '$', (size_t)(end - p));
        const char *ref, *close, *sep, *val = NULL;
        size_t namelen;
        char name[CFG_ENV_NAME_MAX + 1];

        if (!dollar) {
            rc = ld__tmp_append(ld, n, p, (size_t)(end - p));
            if (rc)
                return rc;
            break;
        }
        rc = ld__tmp_append(ld, n, p, (size_t)(dollar - p));
        if (rc)
            return rc;
        if (end - dollar >= 3 && dollar[1] == '$' && dollar[2] == '{') {
            rc = ld__tmp_append(ld, n, "${", 2);
            if (rc)
                return rc;
            p = dollar + 3;
            continue;
        }
        if (end - dollar < 2 || dollar[1] != '{') {
            rc = ld__tmp_append(ld, n, "$", 1);
            if (rc)
                return rc;
            p = dollar + 1;
            continue;
        }
        ref = dollar + 2;
        close = memchr(ref, '}', (size_t)(end - ref));
        if (!close)
            return ld__fail(ld, n, "unterminated ${ in value (write $${ for a literal ${)");
        sep = NULL;
        for (const char *q = ref; q + 1 < close; q++) {
            if (q[0] == ':' && q[1] == '-') {
                sep = q;
                break;
            }
        }
        namelen = (size_t)((sep ? sep : close) - ref);
        if (!ld__env_name_ok(ref, namelen))
            /* not echoed: a secret may sit in a mistyped reference */
            return ld__fail(ld, n,
                            "bad environment variable reference in ${...} (a name is letters, "
                            "digits and _, not starting with a digit)");
        memcpy(name, ref, namelen);
        name[namelen] = '\0';
        if (ld->getenv_fn)
            val = ld->getenv_fn(name);
        if (sep && (!val || !*val)) {
            rc = ld__tmp_append(ld, n, sep + 2, (size_t)(close - sep - 2));
        } else if (val) {
            rc = ld__tmp_append(ld, n, val, strlen(val));
        } else {
            return ld__fail(ld, n,
                            "environment variable %s is not set (write ${%s:-default} to give "
                            "a default)",
                            name, name);
        }
        if (rc)
            return rc;
        p = close + 1;
    }
    *s = ld->tmp.data ? ld->tmp.data : "";
    *len = ld->tmp.len;
    return 0;
}

/* One mapping being read against a settings table. */
struct ld__map {
    const struct cfg__setting *table;      /* scalar settings of this mapping */
    size_t n;                              /* entries in table */
    void *base;                            /* struct the table fills */
    const yaml_node_t *map;                /* the mapping node (line for "missing") */
    uint64_t seen;                         /* bit i: table[i] was given */
    yaml_node_t *node[CFG_MAX_SETTINGS];   /* value node of table[i], for later messages */
    const char *const *extra;              /* other keys accepted at the top of the mapping */
    size_t nextra;                         /* entries in extra */
    yaml_node_t *extra_key[CFG_MAX_EXTRA]; /* key node of extra[i], NULL if absent */
    yaml_node_t *extra_val[CFG_MAX_EXTRA]; /* value node of extra[i] */
    yaml_node_t *mock_key;                 /* key node of the first group of CFG_MOCK settings */
};

/* Fails with the path and line of setting key (its value if given, else
 * the mapping). */
static int __attribute__((format(printf, 4, 5)))
ld__fail_setting(struct ld *ld, const struct ld__map *m, const char *key, const char *fmt, ...)
{
    const struct cfg__setting *st = cfg__find(m->table, m->n, key);
    const yaml_node_t *at = m->map;
    va_list ap;
    int rc;

    if (st && m->node[st - m->table])
        at = m->node[st - m->table];
    ld__push(ld, key, strlen(key));
    va_start(ap, fmt);
    rc = ld__vfail(ld, ld__line(at), fmt, ap);
    va_end(ap);
    return rc;
}

/* "a, b, c": the keys allowed directly under prefix (NULL = the top). */
static void ld__expected(const struct ld__map *m, const char *prefix, char *out, size_t outsz)
{
    size_t o = 0, pl = prefix ? strlen(prefix) + 1 : 0;
    out[0] = '\0';
    for (size_t i = 0; i < m->n + (prefix ? 0 : m->nextra); i++) {
        const char *k = i < m->n ? m->table[i].key : m->extra[i - m->n];
        size_t kl;
        bool dup = false;
        if (pl && (strncmp(k, prefix, pl - 1) != 0 || k[pl - 1] != '.'))
            continue;
        k += pl;
        kl = strcspn(k, ".");
        for (size_t j = 0; j < i && !dup; j++) {
            const char *q = j < m->n ? m->table[j].key : m->extra[j - m->n];
            if (pl && (strncmp(q, prefix, pl - 1) != 0 || q[pl - 1] != '.'))
                continue;
            q += pl;
            dup = strcspn(q, ".") == kl && strncmp(q, k, kl) == 0;
        }
        if (dup)
            continue;
        int w = snprintf(out + o, outsz - o, "%s%.*s", o ? ", " : "", (int)kl, k);
        if (w < 0 || (size_t)w >= outsz - o)
            break;
        o += (size_t)w;
    }
}

static int ld__walk(struct ld *ld, const yaml_node_t *map, const char *prefix, struct ld__map *m);

/* Reads value v of setting st. */
static int ld__set(struct ld *ld, const struct cfg__setting *st, yaml_node_t *v, struct ld__map *m)
{
    const char *s;
    size_t len, idx = (size_t)(st - m->table);
    char why[160], e[CFG_ECHO_MAX + 8];
    int rc;

    if (ld__is_null(v))
        return 0;
    rc = ld__scalar(ld, v, &s, &len);
    if (rc)
        return rc;
    rc = cfg__apply(ld->arena, st, m->base, s, len, why, sizeof(why));
    if (rc == -ENOMEM)
        return ld__oom(ld);
    if (rc) {
        if (st->flags & CFG_SECRET)
            return ld__fail(ld, v, "%s", why);
        return ld__fail(ld, v, "%s (got \"%s\")", why, ld__echo(s, len, e, sizeof(e)));
    }
    m->seen |= UINT64_C(1) << idx;
    m->node[idx] = v;
    return 0;
}

/* Reads a mapping against m's table; prefix is the group being read
 * ("timeouts") or NULL at the top of the mapping. */
static int ld__walk(struct ld *ld, const yaml_node_t *map, const char *prefix, struct ld__map *m)
{
    int rc;

    if (map->type != YAML_MAPPING_NODE)
        return ld__fail(ld, map, "expected a mapping (key: value), found %s", ld__kind(map));
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *k = ld__node(ld, pr->key), *v = ld__node(ld, pr->value);
        const struct cfg__setting *st = NULL;
        const char *name;
        char full[96];
        size_t nl, mark;
        long extra = -1;
        bool group = false, plain;
        unsigned gflags = 0;

        if (!k || !v)
            return ld__fail(ld, map, "malformed mapping");
        if ((rc = ld__visit(ld, v)) != 0)
            return rc;
        if (k->type != YAML_SCALAR_NODE)
            return ld__fail(ld, k, "keys must be plain names, found %s", ld__kind(k));
        name = (const char *)k->data.scalar.value;
        nl = k->data.scalar.length;
        mark = ld__push(ld, name, nl);
        plain = nl > 0 && nl < 48 && !memchr(name, '.', nl) && !memchr(name, '\0', nl);
        if (plain) {
            if (prefix)
                snprintf(full, sizeof(full), "%s.%s", prefix, name);
            else
                snprintf(full, sizeof(full), "%s", name);
            for (size_t i = 0; !prefix && i < m->nextra; i++)
                if (strcmp(name, m->extra[i]) == 0)
                    extra = (long)i;
            if (extra < 0 && !(st = cfg__find(m->table, m->n, full)))
                gflags = cfg__group(m->table, m->n, full, &group);
        }
        if (extra < 0 && !st && !group) {
            char exp[400];
            ld__expected(m, prefix, exp, sizeof(exp));
            return ld__fail(ld, k, "unknown key (expected one of: %s)", exp);
        }
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < pr; q++) {
            yaml_node_t *qk = ld__node(ld, q->key);
            if (qk && qk->type == YAML_SCALAR_NODE && qk->data.scalar.length == nl &&
                memcmp(qk->data.scalar.value, name, nl) == 0)
                return ld__fail(ld, k, "duplicate key (first given on line %zu)", ld__line(qk));
        }
        if (extra >= 0) {
            m->extra_key[extra] = k;
            m->extra_val[extra] = v;
            rc = 0;
        } else if (st) {
            rc = ld__set(ld, st, v, m);
        } else if (ld__is_null(v)) {
            rc = 0;
        } else {
            if ((gflags & CFG_MOCK) && !m->mock_key)
                m->mock_key = k;
            rc = ld__walk(ld, v, full, m);
        }
        if (rc)
            return rc;
        ld__pop(ld, mark);
    }
    return 0;
}

/* Reads one mapping item against a table: defaults, values, required keys. */
static int ld__read_map(struct ld *ld, const yaml_node_t *item, struct ld__map *m)
{
    char why[160];
    int rc;

    rc = cfg__defaults(ld->arena, m->table, m->n, m->base, why, sizeof(why));
    if (rc == -ENOMEM)
        return ld__oom(ld);
    if (rc)
        return ld__fail(ld, item, "internal error: bad default: %s", why);
    if (!ld__is_null(item)) {
        rc = ld__walk(ld, item, NULL, m);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < m->n; i++) {
        if ((m->table[i].flags & CFG_REQUIRED) && !(m->seen & (UINT64_C(1) << i))) {
            ld__push(ld, m->table[i].key, strlen(m->table[i].key));
            return ld__fail(ld, item, "required key is missing");
        }
    }
    return 0;
}

static size_t ld__seq_len(const yaml_node_t *seq)
{
    return (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

static yaml_node_t *ld__seq_item(struct ld *ld, const yaml_node_t *seq, size_t i)
{
    return ld__node(ld, seq->data.sequence.items.start[i]);
}

static bool cfg__tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* providers[i].headers */
static int ld__headers(struct ld *ld, config_provider *p, const yaml_node_t *map)
{
    static const char *const reserved[] = {
        "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
        "te",   "trailer",        "proxy-connection",
    };
    config_header *hv;
    size_t n, i = 0, mark = ld__push(ld, "headers", 7);
    int rc;

    if (ld__is_null(map))
        goto out;
    if (map->type != YAML_MAPPING_NODE)
        return ld__fail(ld, map, "expected a mapping of header names to values, found %s",
                        ld__kind(map));
    n = (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
    if (n > CFG_MAX_HEADERS)
        return ld__fail(ld, map, "at most %d headers", CFG_MAX_HEADERS);
    hv = arena__calloc(ld->arena, n ? n : 1, sizeof(*hv));
    if (!hv)
        return ld__oom(ld);
    for (i = 0; i < n; i++) {
        yaml_node_pair_t *pr = &map->data.mapping.pairs.start[i];
        yaml_node_t *k = ld__node(ld, pr->key), *v = ld__node(ld, pr->value);
        const char *name, *s = "";
        size_t nl, len = 0, hmark;

        if (!k || !v)
            return ld__fail(ld, map, "malformed mapping");
        if ((rc = ld__visit(ld, v)) != 0)
            return rc;
        if (k->type != YAML_SCALAR_NODE)
            return ld__fail(ld, k, "header names must be plain names, found %s", ld__kind(k));
        name = (const char *)k->data.scalar.value;
        nl = k->data.scalar.length;
        hmark = ld__push(ld, name, nl);
        if (nl == 0 || nl > 128)
            return ld__fail(ld, k, "bad header name");
        for (size_t j = 0; j < nl; j++)
            if (!cfg__tchar((unsigned char)name[j]))
                return ld__fail(ld, k, "bad header name (letters, digits and !#$%%&'*+-.^_`|~)");
        for (size_t j = 0; j < CFG_ARRAY_LEN(reserved); j++)
            if (slice_eq_nocase(slice_make(name, nl), reserved[j]))
                return ld__fail(ld, k, "set by tollgate itself; cannot be configured");
        if (p->api_key && slice_eq_nocase(slice_make(name, nl), "authorization"))
            return ld__fail(ld, k, "conflicts with api_key (sent as Authorization: Bearer)");
        for (size_t j = 0; j < i; j++)
            if (slice_eq_nocase(slice_make(name, nl), hv[j].name))
                return ld__fail(ld, k, "header given twice");
        if (!ld__is_null(v) && (rc = ld__scalar(ld, v, &s, &len)) != 0)
            return rc;
        if (len > CFG_MAX_HEADER_VALUE)
            return ld__fail(ld, v, "value longer than %d bytes", CFG_MAX_HEADER_VALUE);
        for (size_t j = 0; j < len; j++) {
            unsigned char c = (unsigned char)s[j];
            if ((c < ' ' && c != '\t') || c == 0x7f)
                return ld__fail(ld, v,
                                "value must not contain CR, LF or other control "
                                "characters");
        }
        hv[i].name = arena__strndup(ld->arena, name, nl);
        hv[i].value = arena__strndup(ld->arena, s, len);
        ld__tmp_wipe(ld);
        if (!hv[i].name || !hv[i].value)
            return ld__oom(ld);
        ld__pop(ld, hmark);
    }
    p->headers = hv;
    p->nheaders = n;
out:
    ld__pop(ld, mark);
    return 0;
}

/* One providers[] item. */
/* A proxy URL into p's proxy fields: 0 or httpc_parse_proxy_url's error. */
static int cfg__proxy_parse(config_provider *p, const char *url)
{
    return httpc_parse_proxy_url(url, p->proxy_host, sizeof(p->proxy_host), &p->proxy_port,
                                 p->proxy_auth, sizeof(p->proxy_auth));
}

static const char *cfg__proxy_why(int rc)
{
    return rc == -ENOTSUP ? "only http:// proxies are supported (CONNECT; TLS to the proxy is not)"
                          : "not a proxy URL (http://[user:password@]host[:port])";
}

/* proxy.url (else $https_proxy / $HTTPS_PROXY) for every provider that
 * names no proxy of its own, unless proxy.no_proxy (else $no_proxy /
 * $NO_PROXY) lists its host. The URL itself is never echoed (it may hold
 * a password). */
static int ld__proxies(struct ld *ld, config *cfg, const struct ld__map *m)
{
    const char *url = cfg->proxy_url, *from = "proxy.url";
    const char *np = cfg->no_proxy;
    if (!url && ld->getenv_fn) {
        from = "https_proxy (environment)";
        url = ld->getenv_fn("https_proxy");
        if (!url || !*url) {
            from = "HTTPS_PROXY (environment)";
            url = ld->getenv_fn("HTTPS_PROXY");
        }
    }
    if (!np && ld->getenv_fn) {
        np = ld->getenv_fn("no_proxy");
        if (!np || !*np)
            np = ld->getenv_fn("NO_PROXY");
    }
    if (!url || !*url)
        return 0;
    for (size_t i = 0; i < cfg->nproviders; i++) {
        config_provider *p = (config_provider *)&cfg->providers[i];
        if (p->proxy_url || p->type == CONFIG_PROVIDER_MOCK || !p->url.host ||
            (np && httpc_no_proxy_match(np, p->url.host)))
            continue;
        int rc = cfg__proxy_parse(p, url);
        if (rc && cfg->proxy_url)
            return ld__fail_setting(ld, m, "proxy.url", "%s", cfg__proxy_why(rc));
        if (rc)
            return ld__fail(ld, m->map, "%s: %s", from, cfg__proxy_why(rc));
    }
    return 0;
}

static int ld__provider(struct ld *ld, config_provider *p, const yaml_node_t *item)
{
    struct ld__map m = {
        .table = cfg__provider,
        .n = CFG_ARRAY_LEN(cfg__provider),
        .base = p,
        .map = item,
        .extra = cfg__provider_extra,
        .nextra = CFG_ARRAY_LEN(cfg__provider_extra),
    };
    int rc = ld__read_map(ld, item, &m);

    if (rc)
        return rc;
    if (m.extra_val[0] && (rc = ld__headers(ld, p, m.extra_val[0])) != 0)
        return rc;
    if (p->proxy_url && strcmp(p->proxy_url, "direct") != 0 &&
        (rc = cfg__proxy_parse(p, p->proxy_url)) != 0)
        return ld__fail_setting(ld, &m, "proxy", "%s", cfg__proxy_why(rc));
    if (p->type == CONFIG_PROVIDER_MOCK) {
        if (p->base_url)
            return ld__fail_setting(ld, &m, "base_url", "not used by type mock");
        if (p->mock.fail_every && !p->mock.fail_status)
            return ld__fail_setting(ld, &m, "mock.fail_every",
                                    "needs mock.fail_status (the HTTP status to answer)");
        if (p->mock.fail_status && !p->mock.fail_every)
            return ld__fail_setting(ld, &m, "mock.fail_status",
                                    "has no effect without mock.fail_every (1 = every call)");
    } else {
        const char *why;
        char e[CFG_ECHO_MAX + 8];
        if (m.mock_key) {
            ld__push(ld, "mock", 4);
            return ld__fail(ld, m.mock_key, "mock settings are only for type mock (this is %s)",
                            config_provider_type_name(p->type));
        }
        if (!p->base_url)
            p->base_url = cfg__presets[p->type].base_url;
        if (!p->base_url)
            return ld__fail_setting(ld, &m, "base_url", "required for type %s",
                                    config_provider_type_name(p->type));
        why = cfg__parse_url(ld->arena, p->base_url, &p->url);
        if (why == cfg__enomem)
            return ld__oom(ld);
        if (why && strchr(p->base_url, '@')) /* may hold a password: no echo */
            return ld__fail_setting(ld, &m, "base_url", "%s", why);
        if (why)
            return ld__fail_setting(ld, &m, "base_url", "%s (got \"%s\")", why,
                                    ld__echo(p->base_url, strlen(p->base_url), e, sizeof(e)));
    }
    if (p->ca_file && access(p->ca_file, R_OK) != 0) {
        char eb[128];
        const char *es = strerror_r(errno, eb, sizeof(eb));
        char e[CFG_ECHO_MAX + 8];
        return ld__fail_setting(ld, &m, "ca_file", "cannot read \"%s\": %s",
                                ld__echo(p->ca_file, strlen(p->ca_file), e, sizeof(e)), es);
    }
    return 0;
}

static int ld__providers(struct ld *ld, config *cfg, const yaml_node_t *seq,
                         struct ld__names *names)
{
    config_provider *pv;
    size_t n;
    int rc;

    if (ld__is_null(seq))
        return ld__names_init(names, 0) ? ld__oom(ld) : 0;
    if (seq->type != YAML_SEQUENCE_NODE)
        return ld__fail(ld, seq, "expected a list of providers, found %s", ld__kind(seq));
    n = ld__seq_len(seq);
    pv = arena__calloc(ld->arena, n ? n : 1, sizeof(*pv));
    if (!pv || ld__names_init(names, n))
        return ld__oom(ld);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        size_t mark = ld__push_index(ld, i);
        long prev;
        if (!item)
            return ld__fail(ld, seq, "malformed list");
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__provider(ld, &pv[i], item)) != 0)
            return rc;
        prev = ld__names_add(names, pv[i].name, i);
        if (prev >= 0) {
            ld__push(ld, "name", 4);
            return ld__fail(ld, item, "duplicate provider name \"%s\" (first on line %zu)",
                            pv[i].name, ld__line(ld__seq_item(ld, seq, (size_t)prev)));
        }
        ld__pop(ld, mark);
    }
    cfg->providers = pv;
    cfg->nproviders = n;
    return 0;
}

/* Builds the exact and wildcard alias tables; fails on a duplicate. */
static int ld__index_models(struct ld *ld, config *cfg, const yaml_node_t *seq)
{
    const config_model *mv = cfg->models;
    size_t nexact = 0, nwild = 0, nlens = 0;
    uint32_t *exact, *wild, *lens;

    for (size_t i = 0; i < cfg->nmodels; i++) {
        if (mv[i].wildcard)
            nwild++;
        else
            nexact++;
    }
    cfg->model_mask = cfg__slots(nexact) - 1;
    cfg->wild_mask = cfg__slots(nwild) - 1;
    exact = arena__calloc(ld->arena, cfg->model_mask + 1, sizeof(*exact));
    wild = arena__calloc(ld->arena, cfg->wild_mask + 1, sizeof(*wild));
    lens = arena__calloc(ld->arena, nwild ? nwild : 1, sizeof(*lens));
    if (!exact || !wild || !lens)
        return ld__oom(ld);
    for (size_t i = 0; i < cfg->nmodels; i++) {
        uint32_t *tab = mv[i].wildcard ? wild : exact;
        size_t mask = mv[i].wildcard ? cfg->wild_mask : cfg->model_mask;
        size_t slot = cfg__model_slot(tab, mask, mv, mv[i].name, mv[i].len);
        if (tab[slot]) {
            ld__push_index(ld, i);
            ld__push(ld, "name", 4);
            return ld__fail(ld, ld__seq_item(ld, seq, i),
                            "duplicate model alias \"%s\" (first on line %zu)", mv[i].name,
                            ld__line(ld__seq_item(ld, seq, tab[slot] - 1)));
        }
        tab[slot] = (uint32_t)i + 1;
        if (mv[i].wildcard) {
            size_t j = 0;
            while (j < nlens && lens[j] > mv[i].len)
                j++;
            if (j == nlens || lens[j] != mv[i].len) {
                memmove(lens + j + 1, lens + j, (nlens - j) * sizeof(*lens));
                lens[j] = (uint32_t)mv[i].len;
                nlens++;
            }
        }
    }
    cfg->model_index = exact;
    cfg->wild_index = wild;
    cfg->wild_lens = lens;
    cfg->nwild_lens = nlens;
    return 0;
}

_Static_assert(RT_CAP_TOOLS == 1 && RT_CAP_IMAGES == 2 && RT_CAP_JSON == 4,
               "ld__route_caps sets bit k for names[k]");

/* routes[i].capabilities: a list of tools, images, json. */
static int ld__route_caps(struct ld *ld, config_route *r, const yaml_node_t *seq)
{
    static const char *const names[] = {"tools", "images", "json"}; /* RT_CAP_* bits in order */
    size_t mark = ld__push(ld, "capabilities", 12);
    int rc;

    r->caps = 0;
    if (ld__is_null(seq) || seq->type != YAML_SEQUENCE_NODE)
        return ld__fail(ld, seq, "expected a list of tools, images, json");
    for (size_t i = 0; i < ld__seq_len(seq); i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        const char *v;
        size_t len, k = 0;
        if (!item)
            return ld__fail(ld, seq, "malformed list");
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__scalar(ld, item, &v, &len)) != 0)
            return rc;
        while (k < CFG_ARRAY_LEN(names) && (strlen(names[k]) != len || memcmp(names[k], v, len)))
            k++;
        if (k == CFG_ARRAY_LEN(names))
            return ld__fail(ld, item, "unknown capability (tools, images, json)");
        r->caps |= 1u << k;
    }
    ld__pop(ld, mark);
    return 0;
}

/* models[i].routes */
static int ld__routes(struct ld *ld, config *cfg, config_model *mo, const yaml_node_t *seq,
                      const struct ld__names *pnames)
{
    size_t mark = ld__push(ld, "routes", 6), n;
    int rc;

    if (ld__is_null(seq) || seq->type != YAML_SEQUENCE_NODE || (n = ld__seq_len(seq)) == 0)
        return ld__fail(ld, seq, "expected a list of at least one route");
    if (n > CONFIG_MAX_ROUTES)
        return ld__fail(ld, seq, "at most %d routes", CONFIG_MAX_ROUTES);
    config_route *rv = arena__calloc(ld->arena, n, sizeof(*rv));
    if (!rv)
        return ld__oom(ld);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        struct ld__route t = {0};
        struct ld__map m = {
            .table = cfg__route,
            .n = CFG_ARRAY_LEN(cfg__route),
            .base = &t,
            .map = item,
            .extra = cfg__route_extra,
            .nextra = CFG_ARRAY_LEN(cfg__route_extra),
        };
        size_t imark = ld__push_index(ld, i);
        if (!item)
            return ld__fail(ld, seq, "malformed list");
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__read_map(ld, item, &m)) != 0)
            return rc;
        long pi = ld__names_find(pnames, t.provider);
        if (pi < 0)
            return ld__fail_setting(ld, &m, "provider", "unknown provider \"%s\"", t.provider);
        rv[i].provider = &cfg->providers[pi];
        rv[i].model = t.model;
        rv[i].weight = t.weight;
        rv[i].priority = t.priority;
        rv[i].context = t.context;
        rv[i].max_concurrent = t.max_concurrent;
        rv[i].rpm = t.rpm;
        rv[i].tpm = t.tpm;
        rv[i].caps = CONFIG_CAP_ALL;
        if (m.extra_val[0] && (rc = ld__route_caps(ld, &rv[i], m.extra_val[0])) != 0)
            return rc;
        if (t.price[0] || t.price[1]) {
            int64_t *dst[2] = {&rv[i].cost.input, &rv[i].cost.output};
            if (!t.price[0] || !t.price[1])
                return ld__fail_setting(ld, &m, t.price[0] ? "price.output" : "price.input",
                                        "a route's price needs both input and output (decimal "
                                        "USD per 1M tokens)");
            for (int k = 0; k < 2; k++)
                if (money_parse(t.price[k], strlen(t.price[k]), dst[k]) != 0 || *dst[k] < 0)
                    return ld__fail_setting(ld, &m, cfg__price_keys[k],
                                            "not a price: \"%s\" (decimal USD per 1M tokens)",
                                            t.price[k]);
            rv[i].cost.given = true;
        }
        ld__pop(ld, imark);
    }
    mo->routes = rv;
    mo->nroutes = n;
    ld__pop(ld, mark);
    return 0;
}

static int ld__models(struct ld *ld, config *cfg, const yaml_node_t *seq,
                      const struct ld__names *pnames)
{
    config_model *mv;
    size_t n = 0;
    int rc;

    if (!ld__is_null(seq) && seq->type != YAML_SEQUENCE_NODE)
        return ld__fail(ld, seq, "expected a list of models, found %s", ld__kind(seq));
    if (!ld__is_null(seq))
        n = ld__seq_len(seq);
    mv = arena__calloc(ld->arena, n ? n : 1, sizeof(*mv));
    if (!mv)
        return ld__oom(ld);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        struct ld__model t = {0};
        struct ld__map m = {
            .table = cfg__model,
            .n = CFG_ARRAY_LEN(cfg__model),
            .base = &t,
            .map = item,
            .extra = cfg__model_extra,
            .nextra = CFG_ARRAY_LEN(cfg__model_extra),
        };
        size_t mark = ld__push_index(ld, i), nl;
        long pi;

        if (!item)
            return ld__fail(ld, seq, "malformed list");
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__read_map(ld, item, &m)) != 0)
            return rc;
        nl = strlen(t.name);
        mv[i].name = t.name;
        mv[i].wildcard = t.name[nl - 1] == '*';
        mv[i].len = mv[i].wildcard ? nl - 1 : nl;
        if (mv[i].wildcard && t.model)
            return ld__fail_setting(ld, &m, "model",
                                    "not allowed on a wildcard alias: the provider model is "
                                    "the rest of the name after \"%.*s\"",
                                    (int)mv[i].len, t.name);
        mv[i].model = mv[i].wildcard ? NULL : t.model ? t.model : t.name;
        if (t.price[0] || t.price[1] || t.price[2] || t.price[3]) {
            int64_t *dst[4] = {&mv[i].price.input, &mv[i].price.output, &mv[i].price.cached_input,
                               &mv[i].price.cache_write};
            if (!t.price[0] || !t.price[1])
                return ld__fail_setting(ld, &m, t.price[0] ? "price.output" : "price.input",
                                        "a model's price needs both input and output (decimal "
                                        "USD per 1M tokens, e.g. \"0.15\")");
            for (int k = 0; k < 4; k++) {
                const char *ps = t.price[k] ? t.price[k] : t.price[0]; /* cache: input rate */
                if (money_parse(ps, strlen(ps), dst[k]) != 0 || *dst[k] < 0)
                    return ld__fail_setting(ld, &m, cfg__price_keys[k],
                                            "not a price: \"%s\" (decimal USD per 1M tokens, "
                                            "at most 9 decimals, e.g. \"2.50\")", ps);
            }
            mv[i].price.given = true;
        }
        if (t.markup && mv[i].price.given)
            return ld__fail_setting(ld, &m, "markup",
                                    "give either a price or a markup over the provider's cost, "
                                    "not both");
        if (t.markup && config_markup_parse(t.markup, &mv[i].price.markup_bps) != 0)
            return ld__fail_setting(ld, &m, "markup",
                                    "not a markup: \"%s\" (a percentage with at most 2 decimals, "
                                    "e.g. \"20%%\" or \"7.5%%\")", t.markup);
        if (t.level && !(mv[i].level = config_level_parse(t.level, strlen(t.level))))
            return ld__fail_setting(ld, &m, "level", "one of eco, balanced, precision");
        if (t.level && mv[i].wildcard)
            return ld__fail_setting(ld, &m, "level", "a wildcard alias cannot be in a level");
        if (t.strategy && rt_strategy_parse(t.strategy, &mv[i].strategy) != 0)
            return ld__fail_setting(ld, &m, "strategy",
                                    "one of priority, weighted, least-latency, lowest-cost");
        if (m.extra_val[0]) {
            if (t.provider || t.model)
                return ld__fail_setting(ld, &m, t.provider ? "provider" : "model",
                                        "give either provider (and model) or routes, not both");
            if (mv[i].wildcard)
                return ld__fail(ld, m.extra_key[0],
                                "a wildcard alias has one provider: routes are not allowed");
            if ((rc = ld__routes(ld, cfg, &mv[i], m.extra_val[0], pnames)) != 0)
                return rc;
        } else {
            if (!t.provider) {
                ld__push(ld, "provider", 8);
                return ld__fail(ld, item, "required key is missing (give provider or routes)");
            }
            pi = ld__names_find(pnames, t.provider);
            if (pi < 0)
                return ld__fail_setting(ld, &m, "provider", "unknown provider \"%s\"",
                                        t.provider);
            config_route *r = arena__calloc(ld->arena, 1, sizeof(*r));
            if (!r)
                return ld__oom(ld);
            r->provider = &cfg->providers[pi];
            r->model = mv[i].model;
            r->weight = 1;
            r->caps = CONFIG_CAP_ALL;
            mv[i].routes = r;
            mv[i].nroutes = 1;
        }
        mv[i].provider = mv[i].routes[0].provider;
        if (!mv[i].wildcard)
            mv[i].model = mv[i].routes[0].model;
        ld__pop(ld, mark);
    }
    cfg->models = mv;
    cfg->nmodels = n;
    return ld__index_models(ld, cfg, seq);
}

/* Whether the allow-list wildcard prefix p[0..n) can match some alias. */
static bool ld__prefix_covers(const config *cfg, const char *p, size_t n)
{
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const config_model *mo = &cfg->models[i];
        if (mo->wildcard && mo->len <= n && memcmp(mo->name, p, mo->len) == 0)
            return true; /* entry "a/b/" + '*' under alias "a/" + '*' */
        if ((mo->wildcard ? mo->len >= n : mo->len > n) && memcmp(mo->name, p, n) == 0)
            return true; /* entry "gpt-" + '*' over alias "gpt-4o" */
    }
    return false;
}

/* keys[i].models */
static int ld__key_models(struct ld *ld, const config *cfg, config_key *k, const yaml_node_t *seq)
{
    config_pattern *pv;
    size_t n, mark = ld__push(ld, "models", 6);
    struct ld__memo *memo = NULL;
    int rc;

    if (ld__is_null(seq))
        goto out;
    if (seq->type != YAML_SEQUENCE_NODE)
        return ld__fail(ld, seq, "expected a list of model aliases, found %s", ld__kind(seq));
    if (ld->memo) {
        memo = &ld->memo[seq - ld->doc->nodes.start];
        if (memo->p) {
            k->models = memo->p;
            k->nmodels = memo->n;
            goto out;
        }
    }
    n = ld__seq_len(seq);
    if (n == 0)
        return ld__fail(ld, seq,
                        "an empty list allows no model; leave models out to allow "
                        "every model");
    if (n > CFG_MAX_KEY_MODELS)
        return ld__fail(ld, seq, "at most %d entries", CFG_MAX_KEY_MODELS);
    pv = arena__calloc(ld->arena, n, sizeof(*pv));
    if (!pv)
        return ld__oom(ld);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        size_t imark = ld__push_index(ld, i), len;
        const char *s, *why;
        char e[CFG_ECHO_MAX + 8];

        if (!item)
            return ld__fail(ld, seq, "malformed list");
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__scalar(ld, item, &s, &len)) != 0)
            return rc;
        if (len == 0 || len > 256)
            return ld__fail(ld, item, "model alias must have 1 to 256 characters");
        if ((why = cfg__check_chars(CFG_MODEL, s, len)) != NULL)
            return ld__fail(ld, item, "%s (got \"%s\")", why, ld__echo(s, len, e, sizeof(e)));
        pv[i].wildcard = s[len - 1] == '*';
        pv[i].len = pv[i].wildcard ? len - 1 : len;
        if (pv[i].wildcard ? !ld__prefix_covers(cfg, s, pv[i].len)
                           : !config_find_model(cfg, s, len, NULL))
            return ld__fail(ld, item, "\"%s\" matches no model alias in models",
                            ld__echo(s, len, e, sizeof(e)));
        if (!(pv[i].text = arena__strndup(ld->arena, s, len)))
            return ld__oom(ld);
        ld__pop(ld, imark);
    }
    k->models = pv;
    k->nmodels = n;
    if (memo) {
        memo->p = pv;
        memo->n = n;
    }
out:
    ld__pop(ld, mark);
    return 0;
}

/* Wipes the bytes of a scalar node (a plaintext key) in the document. */
static void ld__wipe_node(yaml_node_t *n)
{
    if (n && n->type == YAML_SCALAR_NODE)
        explicit_bzero(n->data.scalar.value, n->data.scalar.length);
}

/* keys[i].key or keys[i].key_sha256 into k->sha256. */
static const char *const cfg__levels[CONFIG_NLEVELS] = {"", "eco", "balanced", "precision"};

const char *config_level_name(config_level l)
{
    return (unsigned)l < CONFIG_NLEVELS ? cfg__levels[l] : "";
}

config_level config_level_parse(const char *s, size_t len)
{
    for (int l = 1; l < CONFIG_NLEVELS; l++)
        if (strlen(cfg__levels[l]) == len && memcmp(cfg__levels[l], s, len) == 0)
            return (config_level)l;
    return CONFIG_LEVEL_NONE;
}

int config_markup_parse(const char *s, int32_t *bps)
{
    int64_t v = 0;
    int decimals = -1;
    const char *p = s;
    for (; *p && *p != '%'; p++) {
        if (*p == '.' && decimals < 0) {
            decimals = 0;
            continue;
        }
        if (*p < '0' || *p > '9' || decimals >= 2 || v > 100000000)
            return -1;
        v = v * 10 + (*p - '0');
        if (decimals >= 0)
            decimals++;
    }
    if (p == s || *p != '%' || p[1] || decimals == 0 || (p == s + 1 && decimals >= 0))
        return -1;
    for (int k = decimals < 0 ? 0 : decimals; k < 2; k++)
        v *= 10;
    if (v > 1000000)
        return -1;
    *bps = (int32_t)v;
    return 0;
}

/* The UUID of a config key's budget: SHA-256 of a prefix and the
 * alias's digest, shaped as a version 8 (custom) UUID. */
void config_key_budget_id(const char *alias, char out[37])
{
    static const char prefix[] = "tollgate config key budget\n";
    uint8_t in[sizeof(prefix) - 1 + CRYPTO_SHA256_LEN], d[CRYPTO_SHA256_LEN];
    memcpy(in, prefix, sizeof(prefix) - 1);
    crypto_sha256(alias, strlen(alias), in + sizeof(prefix) - 1);
    crypto_sha256(in, sizeof(in), d);
    d[6] = (uint8_t)((d[6] & 0x0f) | 0x80); /* version 8 */
    d[8] = (uint8_t)((d[8] & 0x3f) | 0x80); /* variant 10 */
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[d[i] >> 4];
        out[o++] = hex[d[i] & 15];
    }
    out[o] = '\0';
}

static int ld__key_digest(struct ld *ld, config_key *k, yaml_node_t *plain, yaml_node_t *hex)
{
    const char *s;
    size_t len, mark;
    int rc;

    if (plain) {
        mark = ld__push(ld, "key", 3);
        rc = ld__scalar(ld, plain, &s, &len);
        if (rc)
            return rc;
        if (len < CONFIG_KEY_MIN_LEN)
            rc = ld__fail(ld, plain, "shorter than %d characters (use at least 128 random bits)",
                          CONFIG_KEY_MIN_LEN);
        else if (len > CFG_KEY_MAX_LEN)
            rc = ld__fail(ld, plain, "longer than %d characters", CFG_KEY_MAX_LEN);
        for (size_t i = 0; rc == 0 && i < len; i++)
            if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f)
                rc = ld__fail(ld, plain, "must be printable ASCII without spaces");
        if (rc == 0)
            crypto_sha256(s, len, k->sha256);
        ld__tmp_wipe(ld);
        ld__wipe_node(plain);
        if (rc)
            return rc;
        ld__pop(ld, mark);
        return 0;
    }
    mark = ld__push(ld, "key_sha256", 10);
    rc = ld__scalar(ld, hex, &s, &len);
    if (rc)
        return rc;
    if (crypto_unhex(s, len, k->sha256, CRYPTO_SHA256_LEN) != 0)
        return ld__fail(ld, hex,
                        "must be 64 hex digits (the SHA-256 of the key, as printed by "
                        "sha256sum)");
    ld__pop(ld, mark);
    return 0;
}

/* One keys[] item. */
static int ld__key(struct ld *ld, const config *cfg, config_key *k, const yaml_node_t *item)
{
    struct ld__key t = {0};
    struct ld__map m = {
        .table = cfg__key,
        .n = CFG_ARRAY_LEN(cfg__key),
        .base = &t,
        .map = item,
        .extra = cfg__key_extra,
        .nextra = CFG_ARRAY_LEN(cfg__key_extra),
    };
    yaml_node_t *plain, *hex;
    int rc = ld__read_map(ld, item, &m);

    plain = ld__is_null(m.extra_val[0]) ? NULL : m.extra_val[0];
    hex = ld__is_null(m.extra_val[1]) ? NULL : m.extra_val[1];
    if (rc)
        goto out;
    if (plain && hex) {
        ld__push(ld, "key_sha256", 10);
        rc = ld__fail(ld, m.extra_key[1], "give either key or key_sha256, not both");
        goto out;
    }
    if (!plain && !hex) {
        ld__push(ld, "key", 3);
        rc = ld__fail(ld, item, "required key is missing (give key or key_sha256)");
        goto out;
    }
    rc = ld__key_digest(ld, k, plain, hex);
    if (rc)
        goto out;
    k->alias = t.alias;
    k->rpm = t.rpm;
    k->max_budget_nano = -1;
    if (t.max_budget && (money_parse(t.max_budget, strlen(t.max_budget), &k->max_budget_nano) != 0 ||
                         k->max_budget_nano < 0)) {
        rc = ld__fail_setting(ld, &m, "max_budget",
                              "not an amount: \"%s\" (decimal USD, e.g. \"25.00\")", t.max_budget);
        goto out;
    }
    if (t.duration && !config_duration_ok(t.duration)) {
        rc = ld__fail_setting(ld, &m, "budget_duration",
                              "must be a duration like 30s, 15m, 1h, 7d, 30d or 1mo");
        goto out;
    }
    if (t.duration && !t.max_budget) {
        rc = ld__fail_setting(ld, &m, "budget_duration", "given without max_budget");
        goto out;
    }
    k->budget_duration = t.duration;
    if (t.level && !(k->level = config_level_parse(t.level, strlen(t.level)))) {
        rc = ld__fail_setting(ld, &m, "level", "one of eco, balanced, precision");
        goto out;
    }
    config_key_budget_id(k->alias, k->budget_id);
    rc = ld__key_models(ld, cfg, k, m.extra_val[2]);
out:
    ld__wipe_node(plain); /* even when the item failed before reading it */
    return rc;
}

static int ld__keys(struct ld *ld, config *cfg, const yaml_node_t *seq)
{
    struct ld__names aliases = {0};
    config_key *kv;
    uint32_t *tab;
    size_t n = 0;
    int rc = 0;

    if (!ld__is_null(seq) && seq->type != YAML_SEQUENCE_NODE)
        return ld__fail(ld, seq, "expected a list of keys, found %s", ld__kind(seq));
    if (!ld__is_null(seq))
        n = ld__seq_len(seq);
    kv = arena__calloc(ld->arena, n ? n : 1, sizeof(*kv));
    cfg->key_mask = cfg__slots(n) - 1;
    tab = arena__calloc(ld->arena, cfg->key_mask + 1, sizeof(*tab));
    if (!kv || !tab || ld__names_init(&aliases, n)) {
        rc = ld__oom(ld);
        goto out_free;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = ld__seq_item(ld, seq, i);
        size_t mark = ld__push_index(ld, i), slot;
        long prev;

        if (!item) {
            rc = ld__fail(ld, seq, "malformed list");
            goto out_free;
        }
        if ((rc = ld__visit(ld, item)) != 0 || (rc = ld__key(ld, cfg, &kv[i], item)) != 0)
            goto out_free;
        prev = ld__names_add(&aliases, kv[i].alias, i);
        if (prev >= 0) {
            ld__push(ld, "alias", 5);
            rc = ld__fail(ld, item, "duplicate alias \"%s\" (first on line %zu)", kv[i].alias,
                          ld__line(ld__seq_item(ld, seq, (size_t)prev)));
            goto out_free;
        }
        slot = cfg__key_home(kv[i].sha256, cfg->key_mask);
        for (; tab[slot]; slot = (slot + 1) & cfg->key_mask) {
            size_t j = tab[slot] - 1;
            if (crypto_equal(kv[j].sha256, kv[i].sha256, CRYPTO_SHA256_LEN)) {
                rc = ld__fail(ld, item, "same key as keys[%zu] (alias \"%s\", line %zu)", j,
                              kv[j].alias, ld__line(ld__seq_item(ld, seq, j)));
                goto out_free;
            }
        }
        tab[slot] = (uint32_t)i + 1;
        ld__pop(ld, mark);
    }
    cfg->keys = kv;
    cfg->nkeys = n;
    cfg->key_index = tab;
out_free:
    ld__names_free(&aliases);
    return rc;
}

/* The whole document (root may be NULL: an empty file). */
/* Wipes and forgets a secret's text form kept in the arena. */
static void ld__forget(const char **text)
{
    if (*text)
        explicit_bzero((char *)*text, strlen(*text));
    *text = NULL;
}

/* secrets.* into cfg->secrets, admin.master_key into its digest; the text
 * forms are wiped whatever happens. */
static int ld__secrets(struct ld *ld, config *cfg, const struct ld__map *m)
{
    const char *s = cfg->secrets_keys_text;
    int rc = 0;

    while (s && *s && rc == 0) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        uint8_t key[FERNET_KEY_LEN];
        while (n && (*s == ' ' || *s == '\t'))
            s++, n--;
        while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n && fernet_key_decode(s, n, key) != 0)
            rc = ld__fail_setting(ld, m, "secrets.keys",
                                  "key %zu is not a key made by 'tollgate keygen' (44 characters "
                                  "of URL-safe base64)",
                                  cfg->secrets.n + 1);
        else if (n && fernet_keyring_add(&cfg->secrets, key) != 0)
            rc = ld__fail_setting(ld, m, "secrets.keys", "more than %d keys", FERNET_MAX_KEYS);
        explicit_bzero(key, sizeof(key));
        s = e ? e + 1 : NULL;
    }
    if (rc == 0 && cfg->secrets_pass_text) {
        uint8_t key[FERNET_KEY_LEN];
        const char *salt = cfg->secrets_salt_text;
        if (!salt || strlen(salt) < FERNET_SALT_MIN_LEN)
            rc = ld__fail_setting(ld, m, "secrets.salt",
                                  "a passphrase needs a salt of at least %d characters (random, "
                                  "kept with the config; changing it changes the key)",
                                  FERNET_SALT_MIN_LEN);
        else if (fernet_key_derive(cfg->secrets_pass_text, strlen(cfg->secrets_pass_text),
                                   (const uint8_t *)salt, strlen(salt), cfg->secrets_iterations,
                                   key) != 0)
            rc = ld__fail_setting(ld, m, "secrets.passphrase", "cannot derive a key from it");
        else if (fernet_keyring_add(&cfg->secrets, key) != 0)
            rc = ld__fail_setting(ld, m, "secrets.passphrase", "more than %d keys",
                                  FERNET_MAX_KEYS);
        explicit_bzero(key, sizeof(key));
    } else if (rc == 0 && cfg->secrets_salt_text) {
        rc = ld__fail_setting(ld, m, "secrets.salt", "given without secrets.passphrase");
    }
    if (rc == 0 && cfg->master_key_text) {
        if (strlen(cfg->master_key_text) < CONFIG_KEY_MIN_LEN)
            rc = ld__fail_setting(ld, m, "admin.master_key",
                                  "shorter than %d characters (use at least 128 random bits)",
                                  CONFIG_KEY_MIN_LEN);
        else {
            crypto_sha256(cfg->master_key_text, strlen(cfg->master_key_text),
                          cfg->master_key_sha256);
            cfg->has_master_key = true;
        }
    }
    if (rc == 0 && cfg->payment_secret_text) {
        size_t n = strlen(cfg->payment_secret_text);
        if (n < 16)
            rc = ld__fail_setting(ld, m, "billing.payment_webhook_secret",
                                  "shorter than 16 characters");
        else {
            memcpy(cfg->payment_secret, cfg->payment_secret_text, n);
            cfg->payment_secret_len = n;
            cfg->has_payment_secret = true;
        }
    }
    if (rc == 0 && cfg->budgets.alert_url_text) {
        const char *why = cfg__parse_url(ld->arena, cfg->budgets.alert_url_text,
                                         &cfg->budgets.alert_url);
        if (why)
            rc = ld__fail_setting(ld, m, "budgets.alert_webhook", "%s", why);
    }
    if (rc == 0 && cfg->budgets.alert_secret_text) {
        size_t n = strlen(cfg->budgets.alert_secret_text);
        if (n < 16)
            rc = ld__fail_setting(ld, m, "budgets.alert_webhook_secret",
                                  "shorter than 16 characters");
        memcpy(cfg->budgets.alert_secret, cfg->budgets.alert_secret_text, n < 255 ? n : 255);
        cfg->budgets.alert_secret_len = rc == 0 ? n : 0;
    }
    ld__forget(&cfg->budgets.alert_secret_text);
    ld__forget(&cfg->payment_secret_text);
    ld__forget(&cfg->secrets_keys_text);
    ld__forget(&cfg->secrets_pass_text);
    ld__forget(&cfg->master_key_text);
    if (rc)
        fernet_keyring_wipe(&cfg->secrets);
    return rc;
}

static int ld__config(struct ld *ld, config *cfg, const yaml_node_t *root)
{
    struct ld__map m = {
        .table = cfg__top,
        .n = CFG_ARRAY_LEN(cfg__top),
        .base = cfg,
        .map = root,
        .extra = cfg__top_extra,
        .nextra = CFG_ARRAY_LEN(cfg__top_extra),
    };
    struct ld__names pnames = {0};
    size_t mark;
    int rc;

    if (root && (rc = ld__visit(ld, root)) != 0)
        return rc;
    rc = ld__read_map(ld, root, &m);
    if (rc == 0)
        rc = ld__secrets(ld, cfg, &m);
    if (rc)
        return rc;
    mark = ld__push(ld, "providers", 9);
    rc = ld__providers(ld, cfg, m.extra_val[0], &pnames);
    ld__pop(ld, mark);
    if (rc || (rc = ld__proxies(ld, cfg, &m)) != 0)
        goto out;
    if (rt_strategy_parse(cfg->routing.level_strategy_text, &cfg->routing.level_strategy) != 0) {
        rc = ld__fail_setting(ld, &m, "routing.level_strategy",
                              "one of priority, weighted, least-latency, lowest-cost");
        goto out;
    }
    mark = ld__push(ld, "models", 6);
    rc = ld__models(ld, cfg, m.extra_val[1], &pnames);
    ld__pop(ld, mark);
    if (rc)
        goto out;
    mark = ld__push(ld, "keys", 4);
    rc = ld__keys(ld, cfg, m.extra_val[2]);
    ld__pop(ld, mark);
out:
    ld__names_free(&pnames);
    return rc;
}

static int cfg__syntax_error(yaml_parser_t *parser, const char *origin, char *err, size_t errlen)
{
    if (parser->error == YAML_MEMORY_ERROR) {
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory while parsing", origin);
        return -ENOMEM;
    }
    if (!err || !errlen)
        return -EINVAL;
    if (parser->context)
        snprintf(err, errlen, "%s:%zu: YAML syntax error: %s (%s that started on line %zu)", origin,
                 parser->problem_mark.line + 1, parser->problem ? parser->problem : "bad input",
                 parser->context, parser->context_mark.line + 1);
    else
        snprintf(err, errlen, "%s:%zu: YAML syntax error: %s", origin,
                 parser->problem_mark.line + 1, parser->problem ? parser->problem : "bad input");
    return -EINVAL;
}

/* Wipes every scalar of a document (credentials, keys) before it is freed. */
static void cfg__wipe_document(yaml_document_t *doc)
{
    for (yaml_node_t *n = doc->nodes.start; n && n < doc->nodes.top; n++)
        ld__wipe_node(n);
}

/* Wipes libyaml's input buffers: they hold the text being parsed. */
static void cfg__wipe_parser(yaml_parser_t *parser)
{
    if (parser->raw_buffer.start)
        explicit_bzero(parser->raw_buffer.start,
                       (size_t)(parser->raw_buffer.end - parser->raw_buffer.start));
    if (parser->buffer.start)
        explicit_bzero(parser->buffer.start, (size_t)(parser->buffer.end - parser->buffer.start));
}

static void cfg__free(config *cfg)
{
    struct config__arena *a = cfg->arena;
    if (a) {
        arena__free(a);
        free(a);
    }
    explicit_bzero(cfg, sizeof(*cfg));
    free(cfg);
}

int config_load_string(const char *yaml, size_t len, const char *origin, config_getenv_fn getenv_fn,
                       config **out, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    struct ld ld;
    config *cfg;
    int rc;

    if (!origin)
        origin = "<string>";
    if (err && errlen)
        err[0] = '\0';
    if (len > CONFIG_MAX_INPUT_BYTES) {
        if (err && errlen)
            snprintf(err, errlen, "%s: larger than %u bytes", origin, CONFIG_MAX_INPUT_BYTES);
        return -E2BIG;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg || !(cfg->arena = calloc(1, sizeof(*cfg->arena)))) {
        free(cfg);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", origin);
        return -ENOMEM;
    }
    cfg->refs = 1;
    memset(&ld, 0, sizeof(ld));
    ld.origin = origin;
    ld.getenv_fn = getenv_fn;
    ld.err = err;
    ld.errlen = errlen;
    ld.arena = cfg->arena;
    buf_init(&ld.tmp, CFG_VALUE_MAX);
    /* reserved once, so a secret is never left behind by a realloc */
    if (buf_reserve(&ld.tmp, CFG_VALUE_MAX) != 0 || !yaml_parser_initialize(&parser)) {
        buf_free(&ld.tmp);
        cfg__free(cfg);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", origin);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = cfg__syntax_error(&parser, origin, err, errlen);
        goto out_parser;
    }
    if (!yaml_parser_load(&parser, &extra)) {
        rc = cfg__syntax_error(&parser, origin, err, errlen);
        goto out_doc;
    }
    if (yaml_document_get_root_node(&extra)) {
        size_t line = ld__line(yaml_document_get_root_node(&extra));
        cfg__wipe_document(&extra);
        yaml_document_delete(&extra);
        if (err && errlen)
            snprintf(err, errlen, "%s:%zu: only one YAML document is allowed", origin, line);
        rc = -EINVAL;
        goto out_doc;
    }
    yaml_document_delete(&extra);
    ld.doc = &doc;
    /* without aliases every node is visited about once; with them a list
     * of N references to one mapping is N walks, so cap the total */
    ld.max_visits = 128 * (size_t)(doc.nodes.top - doc.nodes.start) + 65536;
    ld.memo = calloc((size_t)(doc.nodes.top - doc.nodes.start) + 1, sizeof(*ld.memo));
    if (!ld.memo) {
        rc = ld__oom(&ld);
        goto out_doc;
    }
    cfg->origin = arena__strndup(cfg->arena, origin, strlen(origin));
    rc = cfg->origin ? ld__config(&ld, cfg, yaml_document_get_root_node(&doc)) : ld__oom(&ld);
out_doc:
    free(ld.memo);
    cfg__wipe_document(&doc);
    yaml_document_delete(&doc);
out_parser:
    cfg__wipe_parser(&parser);
    yaml_parser_delete(&parser);
    ld__tmp_wipe(&ld);
    buf_free(&ld.tmp);
    if (rc) {
        cfg__free(cfg);
        return rc;
    }
    *out = cfg;
    return 0;
}

static const char *cfg__getenv(const char *name)
{
    return getenv(name);
}

int config_load_file(const char *path, config **out, char *err, size_t errlen)
{
    struct stat st;
    char *data = NULL, eb[128];
    size_t n = 0;
    int fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror_r(errno, eb, sizeof(eb)));
        return rc;
    }
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", path, strerror_r(errno, eb, sizeof(eb)));
        goto out_close;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        if (err && errlen)
            snprintf(err, errlen, "%s: not a regular file", path);
        goto out_close;
    }
    if (st.st_size > (off_t)CONFIG_MAX_INPUT_BYTES) {
        rc = -E2BIG;
        if (err && errlen)
            snprintf(err, errlen, "%s: larger than %u bytes", path, CONFIG_MAX_INPUT_BYTES);
        goto out_close;
    }
    data = malloc((size_t)st.st_size + 1);
    if (!data) {
        rc = -ENOMEM;
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", path);
        goto out_close;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, data + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            if (err && errlen)
                snprintf(err, errlen, "%s: read: %s", path, strerror_r(errno, eb, sizeof(eb)));
            goto out_free;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    rc = config_load_string(data, n, path, cfg__getenv, out, err, errlen);
out_free:
    explicit_bzero(data, n);
    free(data);
out_close:
    close(fd);
    return rc;
}

/* Presets config_default() adds when their credential is in the environment. */
static const struct {
    const char *env;     /* credential variable */
    const char *name;    /* provider name and type */
    const char *aliases; /* YAML list items of its models */
} cfg__default_providers[] = {
    {"OPENAI_API_KEY", "openai",
     "  - {name: gpt-4o, provider: openai}\n"
     "  - {name: gpt-4o-mini, provider: openai}\n"
     "  - {name: gpt-4.1, provider: openai}\n"
     "  - {name: gpt-4.1-mini, provider: openai}\n"},
    {"ANTHROPIC_API_KEY", "anthropic",
     "  - {name: claude-sonnet-4-5, provider: anthropic}\n"
     "  - {name: claude-haiku-4-5, provider: anthropic}\n"
     "  - {name: claude-opus-4-1, provider: anthropic}\n"},
    {"GEMINI_API_KEY", "gemini",
     "  - {name: gemini-2.5-flash, provider: gemini}\n"
     "  - {name: gemini-2.5-pro, provider: gemini}\n"
     "  - {name: gemini-2.0-flash, provider: gemini}\n"},
    {"FIREWORKS_API_KEY", "fireworks", "  - {name: \"fireworks/*\", provider: fireworks}\n"},
    {"OPENROUTER_API_KEY", "openrouter", "  - {name: \"openrouter/*\", provider: openrouter}\n"},
    {"TOGETHER_API_KEY", "together", "  - {name: \"together/*\", provider: together}\n"},
};

/* Settings config_default() takes from the environment when set. */
static const struct {
    const char *env;   /* variable */
    const char *group; /* top-level mapping */
    const char *key;   /* key inside it */
} cfg__default_env[] = {
    {"TOLLGATE_DATABASE_URL", "database", "url"},
    {"TOLLGATE_SECRET_KEYS", "secrets", "keys"},
    {"TOLLGATE_MASTER_KEY", "admin", "master_key"},
};

static bool cfg__env_set(config_getenv_fn getenv_fn, const char *name)
{
    const char *v = getenv_fn ? getenv_fn(name) : NULL;
    return v && *v;
}

int config_default(config_getenv_fn getenv_fn, config **out, char *demo_key, size_t demo_key_size,
                   char *err, size_t errlen)
{
    bool have[CFG_ARRAY_LEN(cfg__default_providers)];
    const char *envkey = NULL;
    char gen[8 + 2 * 16 + 1];
    buf y;
    int rc = 0;

    if (err && errlen)
        err[0] = '\0';
    if (!demo_key || demo_key_size == 0)
        return -EINVAL;
    demo_key[0] = '\0';
    buf_init(&y, 16384);
    if (cfg__env_set(getenv_fn, "TOLLGATE_DEMO_KEY")) {
        envkey = getenv_fn("TOLLGATE_DEMO_KEY");
        if (strlen(envkey) >= demo_key_size) {
            if (err && errlen)
                snprintf(err, errlen, "<default>: TOLLGATE_DEMO_KEY is longer than %zu bytes",
                         demo_key_size - 1);
            return -ENOSPC;
        }
    } else {
        uint8_t rnd[16];
        if ((rc = crypto_random(rnd, sizeof(rnd))) != 0) {
            if (err && errlen)
                snprintf(err, errlen, "<default>: no random bytes for the demo key");
            return rc;
        }
        memcpy(gen, "tg-demo-", 8);
        crypto_hex(rnd, sizeof(rnd), gen + 8);
        explicit_bzero(rnd, sizeof(rnd));
        if (strlen(gen) >= demo_key_size) {
            if (err && errlen)
                snprintf(err, errlen, "<default>: demo key buffer too small");
            rc = -ENOSPC;
            goto out;
        }
    }
    rc |= buf_append_str(&y, "listen: \"${TOLLGATE_LISTEN:-127.0.0.1:8080}\"\n"
                             "providers:\n"
                             "  - {name: mock, type: mock}\n"
                             "  - {name: mock-anthropic, type: mock, mock: {format: anthropic}}\n"
                             "  - {name: mock-gemini, type: mock, mock: {format: gemini}}\n");
    for (size_t i = 0; i < CFG_ARRAY_LEN(cfg__default_env); i++)
        if (cfg__env_set(getenv_fn, cfg__default_env[i].env))
            rc |= buf_printf(&y, "%s: {%s: \"${%s}\"}\n", cfg__default_env[i].group,
                             cfg__default_env[i].key, cfg__default_env[i].env);
    for (size_t i = 0; i < CFG_ARRAY_LEN(cfg__default_providers); i++) {
        have[i] = cfg__env_set(getenv_fn, cfg__default_providers[i].env);
        if (have[i])
            rc |= buf_printf(&y, "  - {name: %s, type: %s, api_key: \"${%s}\"}\n",
                             cfg__default_providers[i].name, cfg__default_providers[i].name,
                             cfg__default_providers[i].env);
    }
    rc |= buf_append_str(&y, "models:\n  - {name: mock-1, provider: mock}\n"
                             "  - {name: mock-claude, provider: mock-anthropic}\n"
                             "  - {name: mock-gemini, provider: mock-gemini}\n");
    if (!have[0])
        rc |= buf_append_str(&y, "  - {name: gpt-4o-mini, provider: mock}\n");
    for (size_t i = 0; i < CFG_ARRAY_LEN(cfg__default_providers); i++)
        if (have[i])
            rc |= buf_append_str(&y, cfg__default_providers[i].aliases);
    if (envkey)
        rc |= buf_append_str(&y, "keys:\n  - {key: \"${TOLLGATE_DEMO_KEY}\", alias: demo}\n");
    else
        rc |= buf_printf(&y, "keys:\n  - {key: \"%s\", alias: demo}\n", gen);
    if (rc) {
        rc = -ENOMEM;
        if (err && errlen)
            snprintf(err, errlen, "<default>: out of memory");
        goto out;
    }
    rc = config_load_string(y.data, y.len, "<default>", getenv_fn, out, err, errlen);
    if (rc == 0)
        snprintf(demo_key, demo_key_size, "%s", envkey ? envkey : gen);
out:
    if (y.data)
        explicit_bzero(y.data, y.len);
    buf_free(&y);
    explicit_bzero(gen, sizeof(gen));
    return rc;
}

const config *config_ref(const config *cfg)
{
    config *c = (config *)cfg; /* refs is the one mutable field */
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void config_unref(const config *cfg)
{
    config *c = (config *)cfg;
    if (!c)
        return;
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        cfg__free(c);
}

const char *config_restart_only_change(const config *old, const config *newc)
{
    for (size_t i = 0; i < CFG_ARRAY_LEN(cfg__top); i++)
        if ((cfg__top[i].flags & CFG_RESTART) && !cfg__equal(&cfg__top[i], old, newc))
            return cfg__top[i].key;
    return NULL;
}

bool config_duration_ok(const char *s)
{
    size_t i = 0;
    while (s[i] >= '0' && s[i] <= '9')
        i++;
    if (i == 0 || i > 6 || s[0] == '0')
        return false;
    return strcmp(s + i, "s") == 0 || strcmp(s + i, "m") == 0 || strcmp(s + i, "h") == 0 ||
           strcmp(s + i, "d") == 0 || strcmp(s + i, "mo") == 0;
}

/* [start, end) of the budget period of duration d around now (seconds
 * since the epoch, UTC): fixed lengths aligned to the epoch for s/m/h/d,
 * calendar months for mo. */
void config_period(const char *d, int64_t now, int64_t *start, int64_t *end)
{
    long n = strtol(d, NULL, 10);
    const char *u = d;
    while (*u >= '0' && *u <= '9')
        u++;
    if (strcmp(u, "mo") == 0) {
        time_t t = (time_t)now;
        struct tm tm;
        gmtime_r(&t, &tm);
        int months = (tm.tm_year + 1900) * 12 + tm.tm_mon;
        int first = months - months % (int)n;
        struct tm a = {.tm_year = first / 12 - 1900, .tm_mon = first % 12, .tm_mday = 1};
        struct tm b = {.tm_year = (first + (int)n) / 12 - 1900, .tm_mon = (first + (int)n) % 12,
                       .tm_mday = 1};
        *start = (int64_t)timegm(&a);
        *end = (int64_t)timegm(&b);
        return;
    }
    int64_t len = (int64_t)n * (strcmp(u, "s") == 0   ? 1
                                : strcmp(u, "m") == 0 ? 60
                                : strcmp(u, "h") == 0 ? 3600
                                                      : 86400);
    *start = now - now % len;
    *end = *start + len;
}

const config_key *config_find_key(const config *cfg, const char *presented, size_t len)
{
    uint8_t d[CRYPTO_SHA256_LEN];

    if (!cfg->key_index)
        return NULL;
    crypto_sha256(presented, len, d);
    return config_find_key_digest(cfg, d);
}

const config_key *config_find_key_digest(const config *cfg, const uint8_t d[CRYPTO_SHA256_LEN])
{
    size_t i;

    if (!cfg->key_index)
        return NULL;
    for (i = cfg__key_home(d, cfg->key_mask); cfg->key_index[i]; i = (i + 1) & cfg->key_mask) {
        const config_key *k = &cfg->keys[cfg->key_index[i] - 1];
        if (crypto_equal(k->sha256, d, CRYPTO_SHA256_LEN))
            return k;
    }
    return NULL;
}

const config_model *config_find_model(const config *cfg, const char *name, size_t len,
                                      slice *provider_model)
{
    size_t slot;

    if (!cfg->model_index)
        return NULL;
    slot = cfg__model_slot(cfg->model_index, cfg->model_mask, cfg->models, name, len);
    if (cfg->model_index[slot]) {
        const config_model *m = &cfg->models[cfg->model_index[slot] - 1];
        if (provider_model)
            *provider_model = slice_make(m->model, strlen(m->model));
        return m;
    }
    for (size_t i = 0; i < cfg->nwild_lens; i++) {
        size_t l = cfg->wild_lens[i];
        if (l >= len)
            continue;
        slot = cfg__model_slot(cfg->wild_index, cfg->wild_mask, cfg->models, name, l);
        if (cfg->wild_index[slot]) {
            if (provider_model)
                *provider_model = slice_make(name + l, len - l);
            return &cfg->models[cfg->wild_index[slot] - 1];
        }
    }
    return NULL;
}

bool config_key_allows(const config_key *key, const char *name, size_t len)
{
    if (!key->models)
        return true;
    for (size_t i = 0; i < key->nmodels; i++) {
        const config_pattern *p = &key->models[i];
        if (p->wildcard ? len > p->len && memcmp(p->text, name, p->len) == 0
                        : len == p->len && memcmp(p->text, name, len) == 0)
            return true;
    }
    return false;
}

const config_provider *config_find_provider(const config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nproviders; i++)
        if (strcmp(cfg->providers[i].name, name) == 0)
            return &cfg->providers[i];
    return NULL;
}

/* A plain search: glibc's memmem keeps a partly uninitialised shift table
 * on its stack, which valgrind reports; this is a test helper, speed is
 * irrelevant. */
static bool contains(const void *hay, size_t hn, const void *needle, size_t n)
{
    const unsigned char *h = hay;
    for (size_t i = 0; n <= hn && i <= hn - n; i++)
        if (h[i] == *(const unsigned char *)needle && memcmp(h + i, needle, n) == 0)
            return true;
    return false;
}

bool config__contains_bytes(const config *cfg, const void *p, size_t n)
{
    if (n == 0)
        return false;
    /* the config struct itself holds only pointers and numbers (its padding
     * is uninitialised); every byte string lives in the arena */
    for (const struct config__chunk *c = cfg->arena->head; c; c = c->next)
        if (contains(c->data, c->used, p, n))
            return true;
    return false;
}
