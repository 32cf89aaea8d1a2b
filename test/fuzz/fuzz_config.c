/* fuzz_config.c - libFuzzer driver for the YAML config loader
 * (daemon/config.c, config_load_string).
 *
 * The input is loaded as a config file named "fuzz.yaml" with an empty
 * environment. Checked, with abort() on a violation:
 * - the result is 0 with a new config, or -EINVAL/-E2BIG/-ENOMEM with
 *   *out left alone;
 * - on failure the message is NUL-terminated inside the buffer, non-empty,
 *   starts with "fuzz.yaml" and holds no control character (no byte below
 *   0x20, no DEL; bytes >= 0x80 may be echoed from string values such as a
 *   price, so they are allowed);
 * - the loader never echoes a secret: when "sk-fuzz-secret-value" occurs
 *   in the input only as the value of a secret setting (api_key, key, url,
 *   master_key, keys, passphrase, proxy, *_secret, a header value), the
 *   message must not contain it (the driver parses the document with
 *   libyaml itself to tell; when the string, or a '$' that might build it,
 *   sits anywhere a value may be echoed, this check is skipped);
 * - on success: config_ref/config_unref balance, every exact alias is found
 *   by config_find_model, every key by its digest, each model has 1 to
 *   CONFIG_MAX_ROUTES routes on known providers, and a config compared with
 *   itself needs no restart;
 * - no crash, no leak (ASan/LSan).
 * Inputs that set secrets.passphrase are skipped: PBKDF2 with up to 10^8
 * iterations is slow by design, not a bug.
 *
 * Build: cmake -DTG_FUZZ=ON (clang) builds fuzz_config; ctest replays
 * test/fuzz/corpus/config/ with replay_fuzz_config. By hand:
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_config
 *   cp -r test/fuzz/corpus/config /tmp/cc && build-fuzz/test/fuzz_config -timeout=10 /tmp/cc */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ORIGIN "fuzz.yaml"
#define SECRET "sk-fuzz-secret-value"
#define ERR_LEN 1024

static const char *no_env(const char *name)
{
    (void)name;
    return NULL;
}

static bool has(const void *p, size_t n, const char *needle)
{
    size_t l = strlen(needle);
    return n >= l && memmem(p, n, needle, l) != NULL;
}

static bool scalar_is(const yaml_node_t *n, const char *s)
{
    size_t l = strlen(s);
    return n && n->type == YAML_SCALAR_NODE && n->data.scalar.length == l &&
           memcmp(n->data.scalar.value, s, l) == 0;
}

/* The value of a key by this name is never echoed in a message. */
static bool secret_key(const yaml_node_t *k)
{
    static const char *const names[] = {
        "api_key",    "key",   "url", "master_key", "keys", "passphrase", "proxy",
        "payment_webhook_secret", "alert_webhook_secret",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (scalar_is(k, names[i]))
            return true;
    return false;
}

/* A scalar that holds the secret, or a '$' that substitution could turn
 * into it. */
static bool suspicious(const yaml_node_t *n)
{
    if (!n || n->type != YAML_SCALAR_NODE)
        return false;
    return has(n->data.scalar.value, n->data.scalar.length, SECRET) ||
           memchr(n->data.scalar.value, '$', n->data.scalar.length) != NULL;
}

/* What the driver's own parse of the first document says. */
typedef struct scan {
    bool parsed;     /* the first document parsed */
    bool passphrase; /* some key is "passphrase" */
    bool echoable;   /* the secret (or a '$') may legitimately be echoed */
} scan;

/* One linear pass over the nodes (no recursion: aliases cannot blow it up). */
static void scan_doc(yaml_document_t *doc, scan *sc)
{
    size_t nn = (size_t)(doc->nodes.top - doc->nodes.start);
    unsigned *refs = calloc(nn + 1, sizeof(*refs)), *hdr = calloc(nn + 1, sizeof(*hdr));
    if (!refs || !hdr)
        abort();
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (root && suspicious(root))
        sc->echoable = true;
    /* references, and those as the value of a "headers" key */
    for (size_t i = 0; i < nn; i++) {
        yaml_node_t *n = doc->nodes.start + i;
        if (n->type == YAML_SEQUENCE_NODE) {
            for (yaml_node_item_t *it = n->data.sequence.items.start;
                 it < n->data.sequence.items.top; it++)
                if (*it >= 1 && (size_t)*it <= nn)
                    refs[*it]++;
        } else if (n->type == YAML_MAPPING_NODE) {
            for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
                 p < n->data.mapping.pairs.top; p++) {
                yaml_node_t *k = yaml_document_get_node(doc, p->key);
                if (p->key >= 1 && (size_t)p->key <= nn)
                    refs[p->key]++;
                if (p->value >= 1 && (size_t)p->value <= nn) {
                    refs[p->value]++;
                    if (scalar_is(k, "headers"))
                        hdr[p->value]++;
                }
                if (scalar_is(k, "passphrase"))
                    sc->passphrase = true;
            }
        }
    }
    for (size_t i = 0; i < nn; i++) {
        yaml_node_t *n = doc->nodes.start + i;
        if (n->type == YAML_SEQUENCE_NODE) {
            for (yaml_node_item_t *it = n->data.sequence.items.start;
                 it < n->data.sequence.items.top; it++)
                if (suspicious(yaml_document_get_node(doc, *it)))
                    sc->echoable = true;
        } else if (n->type == YAML_MAPPING_NODE) {
            bool headers = refs[i + 1] > 0 && hdr[i + 1] == refs[i + 1];
            for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
                 p < n->data.mapping.pairs.top; p++) {
                yaml_node_t *k = yaml_document_get_node(doc, p->key);
                yaml_node_t *v = yaml_document_get_node(doc, p->value);
                if (suspicious(k))
                    sc->echoable = true;
                if (suspicious(v) && !headers && !secret_key(k))
                    sc->echoable = true;
            }
        }
    }
    free(refs);
    free(hdr);
}

static void scan_input(const uint8_t *data, size_t size, scan *sc)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    memset(sc, 0, sizeof(*sc));
    if (!yaml_parser_initialize(&parser))
        abort();
    yaml_parser_set_input_string(&parser, data, size);
    if (yaml_parser_load(&parser, &doc)) {
        sc->parsed = true;
        scan_doc(&doc, sc);
        yaml_document_delete(&doc);
    }
    yaml_parser_delete(&parser);
}

static void check_config(const config *cfg)
{
    if (config_ref(cfg) != cfg)
        abort();
    config_unref(cfg);
    if (config_restart_only_change(cfg, cfg) != NULL)
        abort();
    for (size_t i = 0; i < cfg->nmodels; i++) {
        const config_model *m = &cfg->models[i];
        if (!m->name || m->nroutes < 1 || m->nroutes > CONFIG_MAX_ROUTES || !m->routes)
            abort();
        if (m->wildcard && m->nroutes != 1)
            abort();
        for (size_t r = 0; r < m->nroutes; r++) {
            const config_provider *p = m->routes[r].provider;
            if (p < cfg->providers || p >= cfg->providers + cfg->nproviders)
                abort();
        }
        if (!m->wildcard && config_find_model(cfg, m->name, m->len, NULL) != m)
            abort();
    }
    for (size_t i = 0; i < cfg->nkeys; i++)
        if (config_find_key_digest(cfg, cfg->keys[i].sha256) != &cfg->keys[i])
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int sentinel;
    config *cfg = (config *)&sentinel;
    char err[ERR_LEN];
    scan sc;

    scan_input(data, size, &sc);
    if (sc.passphrase)
        return 0;
    memset(err, 0xAA, sizeof(err));
    int rc = config_load_string((const char *)data, size, ORIGIN, no_env, &cfg, err, sizeof(err));
    if (rc == 0) {
        if (!cfg || cfg == (config *)&sentinel)
            abort();
        check_config(cfg);
        config_unref(cfg);
        return 0;
    }
    if (rc != -EINVAL && rc != -E2BIG && rc != -ENOMEM)
        abort();
    if (cfg != (config *)&sentinel)
        abort();
    const char *end = memchr(err, '\0', sizeof(err));
    if (!end || end == err)
        abort();
    size_t len = (size_t)(end - err);
    if (len < strlen(ORIGIN) || memcmp(err, ORIGIN, strlen(ORIGIN)) != 0)
        abort();
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)err[i];
        if (c < 0x20 || c == 0x7f)
            abort();
    }
    /* A syntax error quotes nothing; a loaded document is judged above. */
    if (!sc.echoable && has(err, len, SECRET))
        abort();
    return 0;
}
