/* test_config.c - YAML configuration: values, errors, lookups, lifecycle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "daemon/base/log.h"
#include "daemon/config.h"
#include "providers/chat.h"

/* ------------------------------------------------------- fake environment */

/* NAME, VALUE pairs, NULL-terminated; what fake_getenv sees. */
static const char *const *fake_env;

static const char *fake_getenv(const char *name)
{
    for (const char *const *e = fake_env; e && e[0]; e += 2)
        if (strcmp(e[0], name) == 0)
            return e[1];
    return NULL;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *data;
    long n;
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    data = malloc((size_t)n + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    data[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return data;
}

/* Loads yaml (origin "t.yaml") with fake_env; fails the test on error. */
static config *load_ok(const char *yaml)
{
    char err[512];
    config *cfg = NULL;
    int rc = config_load_string(yaml, strlen(yaml), "t.yaml", fake_getenv, &cfg, err, sizeof(err));
    if (rc != 0)
        fail_msg("load failed (%d): %s\n--- yaml:\n%s", rc, err, yaml);
    assert_non_null(cfg);
    return cfg;
}

/* Loads yaml and expects -EINVAL with every needle in the message. */
static void expect_error(const char *yaml, const char *n1, const char *n2, const char *n3)
{
    char err[512];
    config *cfg = (config *)(uintptr_t)0x1; /* must stay untouched on failure */
    int rc = config_load_string(yaml, strlen(yaml), "t.yaml", fake_getenv, &cfg, err, sizeof(err));
    if (rc != -EINVAL)
        fail_msg("expected -EINVAL, got %d (%s)\n--- yaml:\n%s", rc, rc ? err : "ok", yaml);
    assert_ptr_equal(cfg, (config *)(uintptr_t)0x1);
    const char *needles[] = {n1, n2, n3};
    for (size_t i = 0; i < 3; i++)
        if (needles[i] && !strstr(err, needles[i]))
            fail_msg("error \"%s\" lacks \"%s\"\n--- yaml:\n%s", err, needles[i], yaml);
}

static const uint8_t *sha(const char *s)
{
    static uint8_t d[CRYPTO_SHA256_LEN];
    crypto_sha256(s, strlen(s), d);
    return d;
}

/* ------------------------------------------------------------ the files */

static void test_example_file(void **state)
{
    (void)state;
    static const char *const env[] = {"OPENAI_API_KEY", "sk-test-openai", NULL};
    char path[512], err[512];
    size_t len;
    config *cfg = NULL;
    slice pm;

    fake_env = env;
    snprintf(path, sizeof(path), "%s/examples/tollgate.yaml", TG_SOURCE_DIR);
    char *yaml = read_file(path, &len);
    int rc = config_load_string(yaml, len, path, fake_getenv, &cfg, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    free(yaml);

    assert_string_equal(cfg->origin, path);
    assert_string_equal(cfg->listen.text, "127.0.0.1:8080");
    assert_string_equal(cfg->listen.host, "127.0.0.1");
    assert_int_equal(cfg->listen.port, 8080);
    assert_false(cfg->listen.ipv6);
    assert_int_equal(cfg->workers, 0); /* one per core */
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_true(cfg->log_access);
    assert_int_equal(cfg->max_body_bytes, 4194304);
    assert_int_equal(cfg->max_header_bytes, 16384);
    assert_int_equal(cfg->max_headers, 100);
    assert_int_equal(cfg->header_timeout_ms, 10000);
    assert_int_equal(cfg->body_timeout_ms, 30000);
    assert_int_equal(cfg->idle_timeout_ms, 60000);
    assert_int_equal(cfg->drain_timeout_ms, 30000);

    assert_int_equal(cfg->nproviders, 4);
    const config_provider *oa = config_find_provider(cfg, "openai");
    assert_ptr_equal(oa, &cfg->providers[0]);
    assert_int_equal(oa->type, CONFIG_PROVIDER_OPENAI);
    assert_string_equal(oa->base_url, "https://api.openai.com/v1");
    assert_true(oa->url.tls);
    assert_string_equal(oa->url.host, "api.openai.com");
    assert_int_equal(oa->url.port, 443);
    assert_string_equal(oa->url.path, "/v1");
    assert_string_equal(oa->api_key, "sk-test-openai");
    assert_int_equal(oa->timeouts.connect_ms, 5000);
    assert_int_equal(oa->timeouts.tls_ms, 5000);
    assert_int_equal(oa->timeouts.first_byte_ms, 90000);
    assert_int_equal(oa->timeouts.idle_ms, 60000);
    assert_int_equal(oa->timeouts.total_ms, 600000);
    assert_int_equal(oa->pool_max_connections, 128);
    assert_int_equal(oa->pool_idle_timeout_ms, 30000);
    assert_true(oa->tls_verify);
    assert_null(oa->ca_file);

    const config_provider *orr = config_find_provider(cfg, "openrouter");
    assert_non_null(orr);
    assert_null(orr->api_key); /* ${OPENROUTER_API_KEY:-} is empty */
    assert_string_equal(orr->url.host, "openrouter.ai");
    assert_string_equal(orr->url.path, "/api/v1");
    assert_int_equal(orr->nheaders, 2);
    assert_string_equal(orr->headers[0].name, "HTTP-Referer");
    assert_string_equal(orr->headers[0].value, "https://example.com");
    assert_string_equal(orr->headers[1].name, "X-Title");
    assert_string_equal(orr->headers[1].value, "tollgate example");
    assert_int_equal(orr->timeouts.first_byte_ms, 120000); /* defaults */
    assert_int_equal(orr->pool_max_connections, 256);

    const config_provider *loc = config_find_provider(cfg, "local");
    assert_non_null(loc);
    assert_int_equal(loc->type, CONFIG_PROVIDER_OPENAI_COMPATIBLE);
    assert_false(loc->url.tls);
    assert_string_equal(loc->url.host, "127.0.0.1");
    assert_int_equal(loc->url.port, 8000);
    assert_string_equal(loc->url.authority, "127.0.0.1:8000");
    assert_string_equal(loc->url.path, "/v1");

    const config_provider *mk = config_find_provider(cfg, "mock");
    assert_non_null(mk);
    assert_int_equal(mk->type, CONFIG_PROVIDER_MOCK);
    assert_null(mk->base_url);
    assert_int_equal(mk->mock.latency_ms, 20);
    assert_int_equal(mk->mock.tokens_per_sec, 200);
    assert_int_equal(mk->mock.default_tokens, 16);
    assert_int_equal(mk->mock.chunk_tokens, 1);
    assert_int_equal(mk->mock.fail_status, 0);
    assert_int_equal(mk->mock.fail_every, 0);
    assert_null(config_find_provider(cfg, "nope"));

    assert_int_equal(cfg->nmodels, 5);
    const config_model *m = config_find_model(cfg, "gpt-4o", 6, &pm);
    assert_non_null(m);
    assert_ptr_equal(m->provider, oa);
    assert_true(slice_eq(pm, "gpt-4o-2024-08-06"));
    m = config_find_model(cfg, "gpt-4o-mini", 11, &pm);
    assert_non_null(m);
    assert_true(slice_eq(pm, "gpt-4o-mini")); /* model defaults to the alias */
    m = config_find_model(cfg, "openrouter/anthropic/claude-3.5-sonnet", 38, &pm);
    assert_non_null(m);
    assert_ptr_equal(m->provider, orr);
    assert_true(slice_eq(pm, "anthropic/claude-3.5-sonnet"));

    assert_int_equal(cfg->nkeys, 2);
    const char *demo = "tg-demo-0123456789abcdef";
    const config_key *k = config_find_key(cfg, demo, strlen(demo));
    assert_ptr_equal(k, &cfg->keys[0]);
    assert_string_equal(k->alias, "demo");
    assert_int_equal(k->rpm, 600);
    assert_int_equal(k->nmodels, 3);
    assert_true(config_key_allows(k, "gpt-4o-mini", 11));
    assert_false(config_key_allows(k, "gpt-4o", 6));
    assert_true(config_key_allows(k, "openrouter/x/y", 14));
    const char *ci = "tg-ci-0123456789abcdef0123";
    k = config_find_key(cfg, ci, strlen(ci));
    assert_ptr_equal(k, &cfg->keys[1]);
    assert_string_equal(k->alias, "ci");
    assert_null(k->models);
    assert_int_equal(k->rpm, 0);
    assert_true(config_key_allows(k, "anything", 8));
    assert_false(config__contains_bytes(cfg, demo, strlen(demo)));
    config_unref(cfg);
}

static void test_full_file(void **state)
{
    (void)state;
    static const char *const env[] = {
        "FW_KEY",      "fw-secret", "SECRET_KEY", "tg-full-secret-key-000000000001",
        "TG_TESTDATA", TG_TESTDATA, NULL,
    };
    char path[512], ca[512], err[512];
    size_t len;
    config *cfg = NULL;
    slice pm;

    fake_env = env;
    snprintf(path, sizeof(path), "%s/config/full.yaml", TG_TESTDATA);
    snprintf(ca, sizeof(ca), "%s/tls/ca.crt", TG_TESTDATA);
    char *yaml = read_file(path, &len);
    int rc = config_load_string(yaml, len, "full.yaml", fake_getenv, &cfg, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    free(yaml);

    assert_string_equal(cfg->listen.text, "[::1]:9090");
    assert_string_equal(cfg->listen.host, "::1");
    assert_int_equal(cfg->listen.port, 9090);
    assert_true(cfg->listen.ipv6);
    assert_int_equal(cfg->workers, 4);
    assert_int_equal(cfg->log_level, LOG_DEBUG);
    assert_false(cfg->log_access);
    assert_int_equal(cfg->max_body_bytes, 512 * 1024);
    assert_int_equal(cfg->max_header_bytes, 8192);
    assert_int_equal(cfg->max_headers, 50);
    assert_int_equal(cfg->header_timeout_ms, 250);
    assert_int_equal(cfg->body_timeout_ms, 120000);
    assert_int_equal(cfg->idle_timeout_ms, 1500);
    assert_int_equal(cfg->drain_timeout_ms, 3600000);

    assert_int_equal(cfg->nproviders, 4);
    const config_provider *fw = &cfg->providers[0];
    assert_string_equal(fw->name, "fw");
    assert_int_equal(fw->type, CONFIG_PROVIDER_FIREWORKS);
    assert_string_equal(fw->base_url, "https://api.fireworks.ai/inference/v1");
    assert_string_equal(fw->url.host, "api.fireworks.ai");
    assert_string_equal(fw->url.authority, "api.fireworks.ai");
    assert_string_equal(fw->url.path, "/inference/v1");
    assert_string_equal(fw->api_key, "fw-secret");
    assert_int_equal(fw->nheaders, 2);
    assert_string_equal(fw->headers[0].value, "core");
    assert_string_equal(fw->headers[1].value, "${NOT_A_VAR}");
    assert_string_equal(fw->ca_file, ca);
    assert_false(fw->tls_verify);
    assert_int_equal(fw->timeouts.connect_ms, 1000);
    assert_int_equal(fw->timeouts.tls_ms, 2000);
    assert_int_equal(fw->timeouts.first_byte_ms, 3000);
    assert_int_equal(fw->timeouts.idle_ms, 4000);
    assert_int_equal(fw->timeouts.total_ms, 5000);
    assert_int_equal(fw->pool_max_connections, 8);
    assert_int_equal(fw->pool_idle_timeout_ms, 7000);

    const config_provider *v = &cfg->providers[1];
    assert_string_equal(v->name, "vllm_1");
    assert_true(v->url.tls);
    assert_true(v->url.ipv6);
    assert_string_equal(v->url.host, "fd00::1");
    assert_int_equal(v->url.port, 8443);
    assert_string_equal(v->url.authority, "[fd00::1]:8443");
    assert_string_equal(v->url.path, "/openai/v1");
    assert_null(v->api_key);
    assert_int_equal(v->nheaders, 0);

    const config_provider *hf = &cfg->providers[2];
    assert_int_equal(hf->type, CONFIG_PROVIDER_HUGGINGFACE);
    assert_string_equal(hf->url.host, "router.huggingface.co");

    const config_provider *mf = &cfg->providers[3];
    assert_int_equal(mf->type, CONFIG_PROVIDER_MOCK);
    assert_int_equal(mf->mock.latency_ms, 5);
    assert_int_equal(mf->mock.tokens_per_sec, 100);
    assert_int_equal(mf->mock.default_tokens, 32);
    assert_int_equal(mf->mock.chunk_tokens, 4);
    assert_int_equal(mf->mock.fail_status, 503);
    assert_int_equal(mf->mock.fail_every, 3);
    assert_int_equal(mf->mock.cut_after_chunks, 2);

    const config_model *m = config_find_model(cfg, "llama", 5, &pm);
    assert_non_null(m);
    assert_ptr_equal(m->provider, fw);
    assert_true(slice_eq(pm, "accounts/fireworks/models/llama-v3p1-8b-instruct"));
    m = config_find_model(cfg, "flaky", 5, NULL);
    assert_ptr_equal(m->provider, mf);

    const char *sk = "tg-full-secret-key-000000000001";
    const config_key *k = config_find_key(cfg, sk, strlen(sk));
    assert_non_null(k);
    assert_string_equal(k->alias, "team-a");
    assert_int_equal(k->rpm, 60);
    assert_true(config_key_allows(k, "llama", 5));
    assert_true(config_key_allows(k, "fw/accounts/x", 13));
    assert_false(config_key_allows(k, "local", 5));
    k = config_find_key(cfg, "tg-ci-0123456789abcdef0123", 26); /* upper-case hex accepted */
    assert_non_null(k);
    assert_string_equal(k->alias, "ci.bot");
    assert_false(config__contains_bytes(cfg, sk, strlen(sk)));
    config_unref(cfg);
}

static void test_defaults_and_empty(void **state)
{
    (void)state;
    fake_env = NULL;
    const char *docs[] = {"", "# nothing but a comment\n", "~\n", "---\n...\n"};
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        config *cfg = load_ok(docs[i]);
        assert_string_equal(cfg->listen.host, "127.0.0.1");
        assert_int_equal(cfg->listen.port, 8080);
        assert_int_equal(cfg->workers, 0);
        assert_int_equal(cfg->log_level, LOG_INFO);
        assert_true(cfg->log_access);
        assert_string_equal(cfg->log_file, "stdout");
        assert_string_equal(cfg->log_access_file, "stdout");
        assert_false(cfg->metrics_key_labels);
        assert_int_equal(cfg->max_body_bytes, 4u << 20);
        assert_int_equal(cfg->max_header_bytes, 16384);
        assert_int_equal(cfg->max_headers, 100);
        assert_int_equal(cfg->header_timeout_ms, 10000);
        assert_int_equal(cfg->drain_timeout_ms, 30000);
        assert_int_equal(cfg->nproviders, 0);
        assert_int_equal(cfg->nmodels, 0);
        assert_int_equal(cfg->nkeys, 0);
        assert_null(config_find_model(cfg, "x", 1, NULL));
        assert_null(config_find_key(cfg, "tg-demo-0123456789abcdef", 24));
        config_unref(cfg);
    }
    /* provider defaults */
    config *cfg = load_ok("providers: [{name: o, type: openai}, {name: m, type: mock}]\n");
    const config_provider *p = &cfg->providers[0];
    assert_true(p->tls_verify);
    assert_null(p->api_key);
    assert_null(p->ca_file);
    assert_int_equal(p->timeouts.connect_ms, 10000);
    assert_int_equal(p->timeouts.tls_ms, 10000);
    assert_int_equal(p->timeouts.first_byte_ms, 120000);
    assert_int_equal(p->timeouts.idle_ms, 60000);
    assert_int_equal(p->timeouts.total_ms, 600000);
    assert_int_equal(p->pool_max_connections, 256);
    assert_int_equal(p->pool_idle_timeout_ms, 60000);
    p = &cfg->providers[1];
    assert_int_equal(p->mock.latency_ms, 0);
    assert_int_equal(p->mock.tokens_per_sec, 0);
    assert_int_equal(p->mock.default_tokens, 16);
    assert_int_equal(p->mock.chunk_tokens, 1);
    assert_int_equal(p->mock.fail_status, 0);
    assert_int_equal(p->mock.fail_every, 0);
    assert_int_equal(p->mock.cut_after_chunks, 0);
    config_unref(cfg);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[512], err[512];
    config *cfg = NULL;

    snprintf(path, sizeof(path), "%s/config/minimal.yaml", TG_TESTDATA);
    assert_int_equal(config_load_file(path, &cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg->origin, path);
    assert_non_null(config_find_key(cfg, "tg-minimal-key-0123456789", 25));
    assert_non_null(config_find_model(cfg, "mock-1", 6, NULL));
    config_unref(cfg);

    cfg = NULL;
    snprintf(path, sizeof(path), "%s/config/unknown_key.yaml", TG_TESTDATA);
    assert_int_equal(config_load_file(path, &cfg, err, sizeof(err)), -EINVAL);
    assert_null(cfg);
    char want[600];
    snprintf(want, sizeof(want), "%s:5: providers[0].timeout: unknown key", path);
    assert_non_null(strstr(err, want));
    assert_non_null(strstr(err, "timeouts")); /* the list of valid keys */

    snprintf(path, sizeof(path), "%s/config/does-not-exist.yaml", TG_TESTDATA);
    assert_int_equal(config_load_file(path, &cfg, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
    assert_int_equal(config_load_file(TG_TESTDATA, &cfg, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    assert_null(cfg);
}

/* ----------------------------------------------------------- the errors */

static void test_errors_top_level(void **state)
{
    (void)state;
    fake_env = NULL;
    expect_error("listen: 127.0.0.1:8080\nlistn: x\n", "t.yaml:2: listn: unknown key",
                 "expected one of: listen, workers, log, metrics, limits, timeouts, tokenizer_dir, prices_file, database, secrets, admin, ledger, instance_id, billing, budgets, proxy, routing, providers", NULL);
    expect_error("log:\n  level: info\n  colour: true\n", "t.yaml:3: log.colour: unknown key",
                 "level, access", NULL);
    expect_error("timeouts.header: 5s\n", "t.yaml:1:", "unknown key", NULL);
    expect_error("workers: 2\nworkers: 3\n", "t.yaml:2: workers: duplicate key",
                 "first given on line 1", NULL);
    expect_error("workers: abc\n", "t.yaml:1: workers: not a whole number", "\"abc\"", NULL);
    expect_error("workers: -1\n", "workers: not a whole number", NULL, NULL);
    expect_error("workers: 257\n", "t.yaml:1: workers: must be from 0 to 256", NULL, NULL);
    expect_error("limits:\n  max_body_bytes: 0\n",
                 "t.yaml:2: limits.max_body_bytes:", "must be from 1 to", NULL);
    expect_error("limits:\n  max_headers: 0\n", "t.yaml:2: limits.max_headers: must be from 1",
                 NULL, NULL);
    expect_error("limits: {max_header_bytes: 4XB}\n",
                 "t.yaml:1: limits.max_header_bytes:", "not a size", "\"4XB\"");
    expect_error("limits: {max_body_bytes: 99999999999999999999999}\n", "not a size", NULL, NULL);
    expect_error("limits: {max_body_bytes: 17179869184GiB}\n", "not a size", NULL, NULL);
    expect_error("timeouts:\n  idle: 10 seconds\n", "t.yaml:2: timeouts.idle: not a duration",
                 "10 seconds", NULL);
    expect_error("timeouts: {drain: 0ms}\n", "timeouts.drain: must be from 1ms", NULL, NULL);
    expect_error("timeouts: {drain: 2000h}\n", "timeouts.drain: must be from", NULL, NULL);
    expect_error("log: {level: verbose}\n", "t.yaml:1: log.level: must be one of error, warn", NULL,
                 NULL);
    expect_error("log: {access: maybe}\n", "log.access: must be true or false", NULL, NULL);
    expect_error("log: [a, b]\n", "t.yaml:1: log: expected a mapping", "found a list", NULL);
    expect_error("workers: [1]\n", "workers: expected a single value, found a list", NULL, NULL);
    expect_error("listen: 8080\n", "t.yaml:1: listen: port is missing", NULL, NULL);
    expect_error("listen: \"::1:8080\"\n", "listen: IPv6 addresses need brackets", NULL, NULL);
    expect_error("listen: \"[::1:8080\"\n", "listen: IPv6 address without closing", NULL, NULL);
    expect_error("listen: \"[zz::1]:8080\"\n", "listen: bad IPv6 address", NULL, NULL);
    expect_error("listen: \"1.2.3.4:99999\"\n", "listen: port must be", NULL, NULL);
    expect_error("listen: \":8080\"\n", "listen: host is missing", NULL, NULL);
    expect_error("- a\n- b\n", "t.yaml:1: expected a mapping", NULL, NULL);
    expect_error("just a string\n", "t.yaml:1: expected a mapping", NULL, NULL);
    expect_error("? [a]\n: b\n", "keys must be plain names", NULL, NULL);
    expect_error("listen: \"x\n", "t.yaml:", "YAML syntax error", NULL);
    expect_error("workers: 1\n  bad: indent\n", "t.yaml:2: YAML syntax error", NULL, NULL);
    expect_error("workers: 1\n---\nworkers: 2\n", "t.yaml:3: only one YAML document", NULL, NULL);
    expect_error("providers: {name: x}\n", "t.yaml:1: providers: expected a list of providers",
                 NULL, NULL);
}

static void test_errors_providers(void **state)
{
    (void)state;
    fake_env = NULL;
    expect_error("providers:\n  - name: a\n    type: openai\n  - name: a\n    type: together\n",
                 "t.yaml:4: providers[1].name: duplicate provider name \"a\"", "first on line 2",
                 NULL);
    expect_error("providers:\n  - name: Open AI\n    type: openai\n",
                 "t.yaml:2: providers[0].name: may contain only a-z, 0-9", NULL, NULL);
    expect_error("providers:\n  - name: a\n",
                 "t.yaml:2: providers[0].type: required key is "
                 "missing",
                 NULL, NULL);
    expect_error("providers:\n  - type: mock\n", "providers[0].name: required key is missing", NULL,
                 NULL);
    expect_error("providers:\n  - {name: \"\", type: mock}\n",
                 "providers[0].name: must not be "
                 "empty",
                 NULL, NULL);
    expect_error("providers:\n  - {name: a, type: claude}\n",
                 "t.yaml:2: providers[0].type: must be one of openai, fireworks", "claude",
                 NULL);
    expect_error("providers:\n  - {name: a, type: mock, mock: {format: cohere}}\n",
                 "providers[0].mock.format: must be one of openai, anthropic, gemini", "cohere",
                 NULL);
    expect_error("providers:\n  - name: a\n    type: openai_compatible\n",
                 "t.yaml:2: providers[0].base_url: required for type openai_compatible", NULL,
                 NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    base_url: ftp://x/v1\n",
                 "t.yaml:4: providers[0].base_url: must start with https:// or http://", NULL,
                 NULL);
    expect_error("providers:\n  - {name: a, type: openai, base_url: \"https://u:p@h/v1\"}\n",
                 "providers[0].base_url: must not contain credentials", NULL, NULL);
    expect_error("providers:\n  - {name: a, type: openai, base_url: \"https://h/v1?x=1\"}\n",
                 "base_url: must not contain a query", NULL, NULL);
    expect_error("providers:\n  - {name: a, type: openai, base_url: \"https://h:0/v1\"}\n",
                 "base_url: port must be a number from 1", NULL, NULL);
    expect_error("providers:\n  - {name: a, type: openai, base_url: \"https:///v1\"}\n",
                 "base_url: host is missing", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    mock:\n      latency: 5ms\n",
                 "t.yaml:4: providers[0].mock: mock settings are only for type mock",
                 "this is openai", NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    base_url: https://x/v1\n",
                 "t.yaml:4: providers[0].base_url: not used by type mock", NULL, NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    mock: {fail_every: 2}\n",
                 "t.yaml:4: providers[0].mock.fail_every: needs mock.fail_status", NULL, NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    mock: {fail_status: 500}\n",
                 "providers[0].mock.fail_status: has no effect without mock.fail_every", NULL,
                 NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    mock: {fail_status: 200, "
                 "fail_every: 1}\n",
                 "providers[0].mock.fail_status: must be 0 (never) or an HTTP error status", NULL,
                 NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    mock: {chunk_tokens: 0}\n",
                 "providers[0].mock.chunk_tokens: must be from 1", NULL, NULL);
    expect_error("providers:\n  - name: m\n    type: mock\n    mock: {speed: 1}\n",
                 "t.yaml:4: providers[0].mock.speed: unknown key", "latency, tokens_per_sec", NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    timeouts: {connect: 1x}\n",
                 "t.yaml:4: providers[0].timeouts.connect: not a duration", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    pool: {max_connections: 0}\n",
                 "providers[0].pool.max_connections: must be from 1", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    tls_verify: perhaps\n",
                 "t.yaml:4: providers[0].tls_verify: must be true or false", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    ca_file: /nonexistent/ca.pem\n",
                 "t.yaml:4: providers[0].ca_file: cannot read \"/nonexistent/ca.pem\"", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    headers:\n      X-A: \"a\\r\\nB: "
                 "c\"\n",
                 "t.yaml:5: providers[0].headers.X-A: value must not contain CR, LF", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    headers: {Host: x}\n",
                 "providers[0].headers.Host: set by tollgate itself", NULL, NULL);
    expect_error("providers:\n  - {name: a, type: openai, api_key: k, headers: {authorization: "
                 "x}}\n",
                 "providers[0].headers.authorization: conflicts with api_key", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    headers: {\"Bad Name\": x}\n",
                 "providers[0].headers.Bad Name: bad header name", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    headers: {X-A: 1, x-a: 2}\n",
                 "providers[0].headers.x-a: header given twice", NULL, NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    headers: [X-A]\n",
                 "providers[0].headers: expected a mapping of header names", NULL, NULL);
}

static void test_errors_models_and_keys(void **state)
{
    (void)state;
    static const char base[] = "providers:\n  - {name: m, type: mock}\n"; /* lines 1-2 */
    char y[1024];
    fake_env = NULL;

#define WITH(rest) (snprintf(y, sizeof(y), "%s%s", base, rest), y)
    expect_error(WITH("models:\n  - {name: a, provider: nope}\n"),
                 "t.yaml:4: models[0].provider: unknown provider \"nope\"", NULL, NULL);
    expect_error(WITH("models:\n  - {name: a, provider: m}\n  - {name: b, provider: m}\n"
                      "  - {name: a, provider: m}\n"),
                 "t.yaml:6: models[2].name: duplicate model alias \"a\"", "first on line 4", NULL);
    expect_error(WITH("models:\n  - {name: \"w/*\", provider: m}\n  - {name: \"w/*\", provider: "
                      "m}\n"),
                 "t.yaml:5: models[1].name: duplicate model alias \"w/*\"", NULL, NULL);
    expect_error(WITH("models:\n  - {name: \"w/*\", provider: m, model: x}\n"),
                 "t.yaml:4: models[0].model: not allowed on a wildcard alias", NULL, NULL);
    expect_error(WITH("models:\n  - {name: \"a*b\", provider: m}\n"),
                 "models[0].name: '*' is allowed only at the end", NULL, NULL);
    expect_error(WITH("models:\n  - {name: \"a b\", provider: m}\n"),
                 "models[0].name: may contain only printable ASCII", NULL, NULL);
    expect_error(WITH("models:\n  - {provider: m}\n"), "t.yaml:4: models[0].name: required key",
                 NULL, NULL);
    expect_error(WITH("models:\n  - {name: a, provider: m, route: x}\n"),
                 "t.yaml:4: models[0].route: unknown key", "name, provider, model", NULL);

    expect_error(WITH("keys:\n  - {key: short-key, alias: a}\n"),
                 "t.yaml:4: keys[0].key: shorter than 20 characters", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: \"has a space in the key 000\", alias: a}\n"),
                 "keys[0].key: must be printable ASCII without spaces", NULL, NULL);
    expect_error(WITH("keys:\n  - {key_sha256: abc123, alias: a}\n"),
                 "t.yaml:4: keys[0].key_sha256: must be 64 hex digits", NULL, NULL);
    expect_error(WITH("keys:\n  - {key_sha256: "
                      "zz51207004b1d8fb81c60764bf36e75cf7a0ebfeda21f77eedc142a8a2a9477f, alias: "
                      "a}\n"),
                 "keys[0].key_sha256: must be 64 hex digits", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-ci-0123456789abcdef0123, alias: a}\n"
                      "  - key_sha256: "
                      "f851207004b1d8fb81c60764bf36e75cf7a0ebfeda21f77eedc142a8a2a9477f\n"
                      "    alias: b\n"),
                 "t.yaml:5: keys[1]: same key as keys[0] (alias \"a\", line 4)", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, alias: a}\n"
                      "  - {key: tg-two-0123456789abcdef, alias: a}\n"),
                 "t.yaml:5: keys[1].alias: duplicate alias \"a\"", "first on line 4", NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, key_sha256: "
                      "f851207004b1d8fb81c60764bf36e75cf7a0ebfeda21f77eedc142a8a2a9477f, alias: "
                      "a}\n"),
                 "keys[0].key_sha256: give either key or key_sha256, not both", NULL, NULL);
    expect_error(WITH("keys:\n  - {alias: a}\n"), "t.yaml:4: keys[0].key: required key is missing",
                 NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef}\n"),
                 "keys[0].alias: required key is missing", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, alias: \"a b\"}\n"),
                 "keys[0].alias: may contain only letters", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, alias: a, rpm: lots}\n"),
                 "keys[0].rpm: not a whole number", NULL, NULL);
    expect_error(WITH("models:\n  - {name: mock-1, provider: m}\nkeys:\n  - key: "
                      "tg-one-0123456789abcdef\n    alias: a\n    models: [mock-1, mock-2]\n"),
                 "t.yaml:8: keys[0].models[1]: \"mock-2\" matches no model alias", NULL, NULL);
    expect_error(WITH("models:\n  - {name: mock-1, provider: m}\nkeys:\n  - key: "
                      "tg-one-0123456789abcdef\n    alias: a\n    models: [\"gpt-*\"]\n"),
                 "keys[0].models[0]: \"gpt-*\" matches no model alias", NULL, NULL);
    expect_error(WITH("models:\n  - {name: mock-1, provider: m}\nkeys:\n  - key: "
                      "tg-one-0123456789abcdef\n    alias: a\n    models: []\n"),
                 "t.yaml:8: keys[0].models: an empty list allows no model", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, alias: a, models: mock-1}\n"),
                 "keys[0].models: expected a list of model aliases", NULL, NULL);
    expect_error(WITH("keys:\n  - {key: tg-one-0123456789abcdef, alias: a, secret: x}\n"),
                 "t.yaml:4: keys[0].secret: unknown key", "alias, rpm, max_budget, budget_duration, level, key, key_sha256, models",
                 NULL);
#undef WITH
}

/* Secrets are never quoted back, even when the value is wrong. */
static void test_errors_hide_secrets(void **state)
{
    (void)state;
    char err[512];
    config *cfg = NULL;
    const char *y = "keys:\n  - {key: tg-secret-1234, alias: a}\n";
    fake_env = NULL;
    assert_int_equal(config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "shorter than"));
    assert_null(strstr(err, "tg-secret-1234"));
    y = "providers:\n  - {name: a, type: openai, api_key: \"sk-\\x01secret\"}\n";
    assert_int_equal(config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "providers[0].api_key: must not contain control characters"));
    assert_null(strstr(err, "secret"));
    assert_null(cfg);
}

/* Aliases work where the structure fits; a list of many references to
 * one node is capped instead of walked without end. */
static void test_aliases(void **state)
{
    (void)state;
    fake_env = NULL;
    config *cfg = load_ok("providers:\n  - &p {name: m, type: mock}\n"
                          "models:\n  - {name: a, provider: m}\n  - {name: b, provider: m}\n"
                          "keys:\n  - {key: tg-one-0123456789abcdef, alias: a, models: &l "
                          "[a, b]}\n  - {key: tg-two-0123456789abcdef, alias: b, models: *l}\n");
    assert_int_equal(cfg->keys[1].nmodels, 2);
    assert_ptr_equal(cfg->keys[1].models, cfg->keys[0].models); /* read once, shared */
    assert_true(config_key_allows(&cfg->keys[1], "b", 1));
    config_unref(cfg);

    size_t cap = 200000, o;
    char *y = malloc(cap);
    assert_non_null(y);
    o = (size_t)snprintf(y, cap,
                         "providers: [{name: p, type: mock}]\n"
                         "models: [&m {name: a, provider: p}");
    for (int i = 0; i < 30000; i++) {
        memcpy(y + o, ", *m", 4);
        o += 4;
    }
    memcpy(y + o, "]\n", 3);
    expect_error(y, "t.yaml:2: models[", "document too complex", NULL);
    free(y);
}

/* -------------------------------------------------------- substitution */

static void test_env_substitution(void **state)
{
    (void)state;
    static const char *const env[] = {
        "PORT", "9999", "EMPTY", "", "HOST", "10.0.0.1", "KEY", "tg-env-key-0123456789abcdef",
        "W",    "3",    NULL,
    };
    fake_env = env;
    config *cfg = load_ok("listen: \"${HOST}:${PORT}\"\n"
                          "workers: ${W}\n"
                          "providers:\n"
                          "  - name: a\n"
                          "    type: openai\n"
                          "    api_key: \"${EMPTY}\"\n"
                          "    headers:\n"
                          "      X-Unset: \"${UNSET:-fallback value}\"\n"
                          "      X-Empty: \"${EMPTY:-was empty}\"\n"
                          "      X-Set: \"${PORT:-1}\"\n"
                          "      X-Lit: \"$5 and $${x} and ${PORT}$\"\n"
                          "      X-Emptydef: \"[${UNSET:-}]\"\n"
                          "keys:\n"
                          "  - {key: \"${KEY}\", alias: env}\n");
    assert_string_equal(cfg->listen.text, "10.0.0.1:9999");
    assert_int_equal(cfg->listen.port, 9999);
    assert_int_equal(cfg->workers, 3);
    const config_provider *p = &cfg->providers[0];
    assert_null(p->api_key); /* set but empty */
    assert_string_equal(p->headers[0].value, "fallback value");
    assert_string_equal(p->headers[1].value, "was empty");
    assert_string_equal(p->headers[2].value, "9999");
    assert_string_equal(p->headers[3].value, "$5 and ${x} and 9999$");
    assert_string_equal(p->headers[4].value, "[]");
    assert_non_null(config_find_key(cfg, "tg-env-key-0123456789abcdef", 27));
    config_unref(cfg);

    expect_error("listen: \"127.0.0.1:${NOPE}\"\n",
                 "t.yaml:1: listen: environment variable NOPE is not set", "${NOPE:-default}",
                 NULL);
    expect_error("providers:\n  - name: a\n    type: openai\n    api_key: ${OPENAI_API_KEY}\n",
                 "t.yaml:4: providers[0].api_key: environment variable OPENAI_API_KEY is not set",
                 NULL, NULL);
    expect_error("workers: ${1BAD}\n", "t.yaml:1: workers: bad environment variable reference",
                 NULL, NULL);
    expect_error("workers: ${}\n", "bad environment variable reference", NULL, NULL);
    {
        /* a mistyped reference is not echoed: it may hold a secret (found
         * by fuzz_config) */
        static const char y[] = "admin:\n  master_key: ${sk-secret-in-ref:-x}\n";
        config *bad = NULL;
        char err[512] = "";
        assert_int_not_equal(config_load_string(y, strlen(y), "t.yaml", fake_getenv, &bad, err,
                                                sizeof(err)),
                             0);
        assert_non_null(strstr(err, "admin.master_key: bad environment variable reference"));
        assert_null(strstr(err, "sk-secret"));
    }
    expect_error("workers: \"${W\"\n", "t.yaml:1: workers: unterminated ${", NULL, NULL);
    expect_error("workers: ${EMPTY:-x}\n", "workers: not a whole number", "\"x\"", NULL);

    /* NULL lookup: an empty environment */
    char err[256];
    config *c2 = NULL;
    const char *y = "workers: ${W}\n";
    assert_int_equal(config_load_string(y, strlen(y), "t.yaml", NULL, &c2, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "W is not set"));
    y = "workers: ${W:-2}\n";
    assert_int_equal(config_load_string(y, strlen(y), "t.yaml", NULL, &c2, err, sizeof(err)), 0);
    assert_int_equal(c2->workers, 2);
    config_unref(c2);
}

/* ------------------------------------------------------ presets and URLs */

static void test_presets_and_urls(void **state)
{
    (void)state;
    fake_env = NULL;
    config *cfg = load_ok(
        "providers:\n"
        "  - {name: p0, type: openai}\n"
        "  - {name: p1, type: fireworks}\n"
        "  - {name: p2, type: openrouter}\n"
        "  - {name: p3, type: together}\n"
        "  - {name: p4, type: huggingface}\n"
        "  - {name: p5, type: openai_compatible, base_url: \"http://localhost/v1\"}\n"
        "  - {name: p6, type: openai_compatible, base_url: \"https://gw.example:8443/a/b//\"}\n"
        "  - {name: p7, type: openai_compatible, base_url: \"http://[::1]:11434\"}\n"
        "  - {name: p8, type: openai_compatible, base_url: \"HTTPS://h.example:443/\"}\n"
        "  - {name: p9, type: openai, base_url: \"http://10.1.2.3:80/proxy/v1\"}\n"
        "  - {name: p10, type: openai_compatible, base_url: \"https://[2001:db8::5]/v1\"}\n");
    static const struct {
        const char *base_url, *host, *authority, *path;
        unsigned port;
        bool tls, v6;
        config_provider_type type;
    } want[] = {
        {"https://api.openai.com/v1", "api.openai.com", "api.openai.com", "/v1", 443, true, false,
         CONFIG_PROVIDER_OPENAI},
        {"https://api.fireworks.ai/inference/v1", "api.fireworks.ai", "api.fireworks.ai",
         "/inference/v1", 443, true, false, CONFIG_PROVIDER_FIREWORKS},
        {"https://openrouter.ai/api/v1", "openrouter.ai", "openrouter.ai", "/api/v1", 443, true,
         false, CONFIG_PROVIDER_OPENROUTER},
        {"https://api.together.xyz/v1", "api.together.xyz", "api.together.xyz", "/v1", 443, true,
         false, CONFIG_PROVIDER_TOGETHER},
        {"https://router.huggingface.co/v1", "router.huggingface.co", "router.huggingface.co",
         "/v1", 443, true, false, CONFIG_PROVIDER_HUGGINGFACE},
        {"http://localhost/v1", "localhost", "localhost", "/v1", 80, false, false,
         CONFIG_PROVIDER_OPENAI_COMPATIBLE},
        {"https://gw.example:8443/a/b//", "gw.example", "gw.example:8443", "/a/b", 8443, true,
         false, CONFIG_PROVIDER_OPENAI_COMPATIBLE},
        {"http://[::1]:11434", "::1", "[::1]:11434", "", 11434, false, true,
         CONFIG_PROVIDER_OPENAI_COMPATIBLE},
        {"HTTPS://h.example:443/", "h.example", "h.example", "", 443, true, false,
         CONFIG_PROVIDER_OPENAI_COMPATIBLE},
        {"http://10.1.2.3:80/proxy/v1", "10.1.2.3", "10.1.2.3", "/proxy/v1", 80, false, false,
         CONFIG_PROVIDER_OPENAI},
        {"https://[2001:db8::5]/v1", "2001:db8::5", "[2001:db8::5]", "/v1", 443, true, true,
         CONFIG_PROVIDER_OPENAI_COMPATIBLE},
    };
    assert_int_equal(cfg->nproviders, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < cfg->nproviders; i++) {
        const config_provider *p = &cfg->providers[i];
        assert_int_equal(p->type, want[i].type);
        assert_string_equal(p->base_url, want[i].base_url);
        assert_string_equal(p->url.host, want[i].host);
        assert_string_equal(p->url.authority, want[i].authority);
        assert_string_equal(p->url.path, want[i].path);
        assert_int_equal(p->url.port, want[i].port);
        assert_int_equal(p->url.tls, want[i].tls);
        assert_int_equal(p->url.ipv6, want[i].v6);
    }
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_OPENAI_COMPATIBLE),
                        "openai_compatible");
    assert_string_equal(config_provider_type_name(CONFIG_PROVIDER_MOCK), "mock");
    config_unref(cfg);
}

/* ------------------------------------------------------------- lookups */

/* Every string reachable from the object, for the plaintext scan. */
static bool any_string_contains(const config *cfg, const char *needle)
{
#define HAS(s) ((s) && strstr((s), needle))
    if (HAS(cfg->origin) || HAS(cfg->listen.text) || HAS(cfg->listen.host))
        return true;
    for (size_t i = 0; i < cfg->nproviders; i++) {
        const config_provider *p = &cfg->providers[i];
        if (HAS(p->name) || HAS(p->base_url) || HAS(p->api_key) || HAS(p->ca_file) ||
            HAS(p->url.host) || HAS(p->url.authority) || HAS(p->url.path))
            return true;
        for (size_t j = 0; j < p->nheaders; j++)
            if (HAS(p->headers[j].name) || HAS(p->headers[j].value))
                return true;
    }
    for (size_t i = 0; i < cfg->nmodels; i++)
        if (HAS(cfg->models[i].name) || HAS(cfg->models[i].model))
            return true;
    for (size_t i = 0; i < cfg->nkeys; i++) {
        if (HAS(cfg->keys[i].alias))
            return true;
        for (size_t j = 0; j < cfg->keys[i].nmodels; j++)
            if (HAS(cfg->keys[i].models[j].text))
                return true;
    }
    return false;
#undef HAS
}

static void test_key_lookup(void **state)
{
    (void)state;
    static const char *const env[] = {"K3", "tg-from-env-0000000000000000003", NULL};
    const char *k1 = "tg-plain-key-0123456789abcdef";
    const char *k2 = "tg-hashed-key-0123456789abcdef";
    char hex[CRYPTO_SHA256_HEX_LEN + 1], y[1024];

    fake_env = env;
    crypto_hex(sha(k2), CRYPTO_SHA256_LEN, hex);
    snprintf(y, sizeof(y),
             "keys:\n"
             "  - {key: %s, alias: one, rpm: 10}\n"
             "  - {key_sha256: %s, alias: two}\n"
             "  - {key: \"${K3}\", alias: three}\n",
             k1, hex);
    config *cfg = load_ok(y);
    explicit_bzero(y, sizeof(y)); /* the caller's copy is the caller's to wipe */

    const config_key *k = config_find_key(cfg, k1, strlen(k1));
    assert_ptr_equal(k, &cfg->keys[0]);
    assert_string_equal(k->alias, "one");
    assert_memory_equal(k->sha256, sha(k1), CRYPTO_SHA256_LEN);
    k = config_find_key(cfg, k2, strlen(k2));
    assert_ptr_equal(k, &cfg->keys[1]);
    k = config_find_key(cfg, "tg-from-env-0000000000000000003", 31);
    assert_ptr_equal(k, &cfg->keys[2]);

    /* wrong keys: different, a prefix, one byte longer, empty, the hash itself */
    assert_null(config_find_key(cfg, "tg-plain-key-0123456789abcdeF", strlen(k1)));
    assert_null(config_find_key(cfg, k1, strlen(k1) - 1));
    assert_null(config_find_key(cfg, "tg-plain-key-0123456789abcdef0", strlen(k1) + 1));
    assert_null(config_find_key(cfg, "", 0));
    assert_null(config_find_key(cfg, hex, strlen(hex)));

    /* the plaintext is nowhere: not in any string, not in any owned byte */
    const char *plain[] = {k1, "tg-from-env-0000000000000000003", "plain-key"};
    for (size_t i = 0; i < 3; i++) {
        assert_false(any_string_contains(cfg, plain[i]));
        assert_false(config__contains_bytes(cfg, plain[i], strlen(plain[i])));
    }
    /* the scan itself works: the alias and a digest are found */
    assert_true(any_string_contains(cfg, "three"));
    assert_true(config__contains_bytes(cfg, "three", 5));
    assert_true(config__contains_bytes(cfg, sha(k1), CRYPTO_SHA256_LEN));
    config_unref(cfg);

    /* many keys: the open-addressing table finds every one and only them */
    char big[64 * 1024];
    size_t o = (size_t)snprintf(big, sizeof(big), "keys:\n");
    for (int i = 0; i < 500; i++)
        o += (size_t)snprintf(big + o, sizeof(big) - o,
                              "  - {key: tg-many-%04d-0123456789abcdef, alias: k%d}\n", i, i);
    cfg = load_ok(big);
    assert_int_equal(cfg->nkeys, 500);
    for (int i = 0; i < 500; i++) {
        char key[64];
        snprintf(key, sizeof(key), "tg-many-%04d-0123456789abcdef", i);
        k = config_find_key(cfg, key, strlen(key));
        assert_ptr_equal(k, &cfg->keys[i]);
        key[8] = 'X';
        assert_null(config_find_key(cfg, key, strlen(key)));
    }
    config_unref(cfg);
}

static void test_model_resolution(void **state)
{
    (void)state;
    slice pm;
    fake_env = NULL;
    config *cfg = load_ok("providers:\n"
                          "  - {name: a, type: mock}\n"
                          "  - {name: b, type: mock}\n"
                          "  - {name: c, type: mock}\n"
                          "models:\n"
                          "  - {name: \"or/*\", provider: a}\n"
                          "  - {name: \"or/anthropic/*\", provider: b}\n"
                          "  - {name: \"or/anthropic/claude\", provider: c, model: cl-3}\n"
                          "  - {name: plain, provider: a, model: upstream-plain}\n"
                          "  - {name: \"*\", provider: c}\n"
                          "keys:\n"
                          "  - {key: tg-all-0123456789abcdef, alias: all}\n"
                          "  - key: tg-some-0123456789abcdef\n"
                          "    alias: some\n"
                          "    models: [plain, \"or/anthropic/*\", \"or/anthropic/claude\"]\n"
                          "  - key: tg-wide-0123456789abcdef\n"
                          "    alias: wide\n"
                          "    models: [\"or/*\"]\n");
    const config_provider *a = &cfg->providers[0], *b = &cfg->providers[1], *c = &cfg->providers[2];
    const config_model *m;

    /* exact beats wildcard */
    m = config_find_model(cfg, "or/anthropic/claude", 19, &pm);
    assert_ptr_equal(m->provider, c);
    assert_true(slice_eq(pm, "cl-3"));
    assert_false(m->wildcard);
    /* longest prefix wins */
    m = config_find_model(cfg, "or/anthropic/claude-opus", 24, &pm);
    assert_ptr_equal(m->provider, b);
    assert_true(m->wildcard);
    assert_string_equal(m->name, "or/anthropic/*");
    assert_true(slice_eq(pm, "claude-opus"));
    m = config_find_model(cfg, "or/meta/llama", 13, &pm);
    assert_ptr_equal(m->provider, a);
    assert_true(slice_eq(pm, "meta/llama"));
    /* the name must be longer than the prefix: "or/" falls to "*" */
    m = config_find_model(cfg, "or/", 3, &pm);
    assert_string_equal(m->name, "*");
    assert_true(slice_eq(pm, "or/"));
    /* the catch-all */
    m = config_find_model(cfg, "something-else", 14, &pm);
    assert_ptr_equal(m->provider, c);
    assert_true(slice_eq(pm, "something-else"));
    m = config_find_model(cfg, "plain", 5, &pm);
    assert_ptr_equal(m->provider, a);
    assert_true(slice_eq(pm, "upstream-plain"));
    /* lengths are honoured: "plainX" cut to 5 bytes is "plain" */
    m = config_find_model(cfg, "plainX", 5, NULL);
    assert_non_null(m);
    assert_string_equal(m->name, "plain");

    const config_key *all = config_find_key(cfg, "tg-all-0123456789abcdef", 23);
    const config_key *some = config_find_key(cfg, "tg-some-0123456789abcdef", 24);
    const config_key *wide = config_find_key(cfg, "tg-wide-0123456789abcdef", 24);
    assert_non_null(all);
    assert_non_null(some);
    assert_non_null(wide);
    assert_true(config_key_allows(all, "whatever", 8));
    assert_true(config_key_allows(some, "plain", 5));
    assert_false(config_key_allows(some, "plai", 4));
    assert_false(config_key_allows(some, "plainer", 7));
    assert_true(config_key_allows(some, "or/anthropic/claude-opus", 24));
    assert_true(config_key_allows(some, "or/anthropic/claude", 19));
    assert_false(config_key_allows(some, "or/anthropic/", 13)); /* nothing after the prefix */
    assert_false(config_key_allows(some, "or/meta/llama", 13));
    assert_false(config_key_allows(some, "something-else", 14));
    assert_true(config_key_allows(wide, "or/meta/llama", 13));
    assert_true(config_key_allows(wide, "or/anthropic/claude", 19));
    assert_false(config_key_allows(wide, "plain", 5));
    /* the wildcard alias itself (as listed by /v1/models) passes a wildcard entry */
    assert_true(config_key_allows(wide, "or/*", 4));
    config_unref(cfg);

    /* no wildcard at all: unknown names are simply not found */
    cfg = load_ok("providers: [{name: a, type: mock}]\nmodels: [{name: x, provider: a}]\n");
    assert_null(config_find_model(cfg, "y", 1, &pm));
    assert_null(config_find_model(cfg, "", 0, &pm));
    config_unref(cfg);
}

/* ------------------------------------------------------ config_default */

static bool is_generated_demo_key(const char *k)
{
    if (strlen(k) != 40 || strncmp(k, "tg-demo-", 8) != 0)
        return false;
    for (size_t i = 8; i < 40; i++)
        if (!strchr("0123456789abcdef", k[i]))
            return false;
    return true;
}

static void test_default_config(void **state)
{
    (void)state;
    char key1[CONFIG_DEMO_KEY_MAX], key2[CONFIG_DEMO_KEY_MAX], err[512];
    config *cfg = NULL, *cfg2 = NULL;
    slice pm;

    /* an empty environment: mock only, a fresh random key */
    fake_env = NULL;
    assert_int_equal(config_default(fake_getenv, &cfg, key1, sizeof(key1), err, sizeof(err)), 0);
    assert_string_equal(cfg->origin, "<default>");
    assert_string_equal(cfg->listen.text, "127.0.0.1:8080");
    /* the mock in each wire format */
    assert_int_equal(cfg->nproviders, 3);
    assert_string_equal(cfg->providers[0].name, "mock");
    assert_int_equal(cfg->providers[0].type, CONFIG_PROVIDER_MOCK);
    assert_int_equal(config_provider_format(&cfg->providers[0]), CHAT_FMT_OPENAI);
    assert_int_equal(config_provider_format(&cfg->providers[1]), CHAT_FMT_ANTHROPIC);
    assert_int_equal(config_provider_format(&cfg->providers[2]), CHAT_FMT_GEMINI);
    assert_int_equal(cfg->nmodels, 4);
    assert_string_equal(config_find_model(cfg, "mock-claude", 11, &pm)->provider->name,
                        "mock-anthropic");
    assert_string_equal(config_find_model(cfg, "mock-gemini", 11, &pm)->provider->name,
                        "mock-gemini");
    assert_ptr_equal(config_find_model(cfg, "mock-1", 6, &pm)->provider, &cfg->providers[0]);
    assert_ptr_equal(config_find_model(cfg, "gpt-4o-mini", 11, &pm)->provider, &cfg->providers[0]);
    assert_null(config_find_model(cfg, "gpt-4o", 6, &pm));
    assert_true(is_generated_demo_key(key1));
    assert_int_equal(cfg->nkeys, 1);
    const config_key *k = config_find_key(cfg, key1, strlen(key1));
    assert_non_null(k);
    assert_string_equal(k->alias, "demo");
    assert_null(k->models);
    assert_false(config__contains_bytes(cfg, key1, strlen(key1)));
    assert_false(config__contains_bytes(cfg, key1 + 8, 32));
    /* a second call makes another key */
    assert_int_equal(config_default(NULL, &cfg2, key2, sizeof(key2), err, sizeof(err)), 0);
    assert_true(is_generated_demo_key(key2));
    assert_string_not_equal(key1, key2);
    assert_null(config_find_key(cfg2, key1, strlen(key1)));
    assert_non_null(config_find_key(cfg2, key2, strlen(key2)));
    assert_null(config_restart_only_change(cfg, cfg2));
    config_unref(cfg2);
    config_unref(cfg);

    /* every provider credential, a listen override, a fixed demo key */
    static const char *const env_all[] = {
        "OPENAI_API_KEY",
        "sk-oa",
        "FIREWORKS_API_KEY",
        "fw-1",
        "OPENROUTER_API_KEY",
        "or-1",
        "TOGETHER_API_KEY",
        "tg-1",
        "ANTHROPIC_API_KEY",
        "sk-ant",
        "GEMINI_API_KEY",
        "gm-1",
        "TOLLGATE_LISTEN",
        "0.0.0.0:9000",
        "TOLLGATE_DEMO_KEY",
        "tg-my-fixed-demo-key-000000",
        NULL,
    };
    fake_env = env_all;
    cfg = NULL;
    assert_int_equal(config_default(fake_getenv, &cfg, key1, sizeof(key1), err, sizeof(err)), 0);
    assert_string_equal(cfg->listen.host, "0.0.0.0");
    assert_int_equal(cfg->listen.port, 9000);
    assert_int_equal(cfg->nproviders, 9);
    const config_provider *an = config_find_provider(cfg, "anthropic");
    assert_int_equal(an->type, CONFIG_PROVIDER_ANTHROPIC);
    assert_string_equal(an->api_key, "sk-ant");
    assert_string_equal(an->base_url, "https://api.anthropic.com/v1");
    assert_int_equal(config_provider_format(an), CHAT_FMT_ANTHROPIC);
    assert_ptr_equal(config_find_model(cfg, "claude-sonnet-4-5", 17, &pm)->provider, an);
    const config_provider *gm = config_find_provider(cfg, "gemini");
    assert_string_equal(gm->base_url, "https://generativelanguage.googleapis.com/v1beta");
    assert_int_equal(config_provider_format(gm), CHAT_FMT_GEMINI);
    assert_ptr_equal(config_find_model(cfg, "gemini-2.5-flash", 16, &pm)->provider, gm);
    const config_provider *oa = config_find_provider(cfg, "openai");
    assert_non_null(oa);
    assert_string_equal(oa->api_key, "sk-oa");
    assert_string_equal(config_find_provider(cfg, "fireworks")->api_key, "fw-1");
    assert_string_equal(config_find_provider(cfg, "openrouter")->api_key, "or-1");
    assert_string_equal(config_find_provider(cfg, "together")->api_key, "tg-1");
    const char *oa_models[] = {"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini"};
    for (size_t i = 0; i < 4; i++) {
        const config_model *m = config_find_model(cfg, oa_models[i], strlen(oa_models[i]), &pm);
        assert_non_null(m);
        assert_ptr_equal(m->provider, oa);
        assert_true(slice_eq(pm, oa_models[i]));
    }
    assert_string_equal(config_find_model(cfg, "mock-1", 6, &pm)->provider->name, "mock");
    const config_model *m = config_find_model(cfg, "fireworks/accounts/x/models/y", 29, &pm);
    assert_string_equal(m->provider->name, "fireworks");
    assert_true(slice_eq(pm, "accounts/x/models/y"));
    assert_string_equal(config_find_model(cfg, "openrouter/a/b", 14, &pm)->provider->name,
                        "openrouter");
    assert_string_equal(config_find_model(cfg, "together/m", 10, &pm)->provider->name, "together");
    assert_string_equal(key1, "tg-my-fixed-demo-key-000000");
    assert_non_null(config_find_key(cfg, key1, strlen(key1)));
    config_unref(cfg);

    /* one credential only, and an empty one counts as absent */
    static const char *const env_one[] = {"OPENROUTER_API_KEY", "or-2", "OPENAI_API_KEY", "", NULL};
    fake_env = env_one;
    cfg = NULL;
    assert_int_equal(config_default(fake_getenv, &cfg, key1, sizeof(key1), err, sizeof(err)), 0);
    assert_int_equal(cfg->nproviders, 4); /* three mocks + openrouter */
    assert_null(config_find_provider(cfg, "openai"));
    assert_string_equal(config_find_model(cfg, "gpt-4o-mini", 11, &pm)->provider->name, "mock");
    assert_string_equal(config_find_model(cfg, "openrouter/x", 12, &pm)->provider->name,
                        "openrouter");
    assert_true(is_generated_demo_key(key1));
    config_unref(cfg);

    /* a bad override is reported, not ignored */
    static const char *const env_bad[] = {"TOLLGATE_DEMO_KEY", "too-short", "TOLLGATE_LISTEN",
                                          "nohost", NULL};
    fake_env = env_bad;
    cfg = NULL;
    assert_int_equal(config_default(fake_getenv, &cfg, key1, sizeof(key1), err, sizeof(err)),
                     -EINVAL);
    assert_null(cfg);
    assert_non_null(strstr(err, "<default>:1: listen: port is missing"));
    assert_string_equal(key1, "");
    static const char *const env_short[] = {"TOLLGATE_DEMO_KEY", "too-short", NULL};
    fake_env = env_short;
    assert_int_equal(config_default(fake_getenv, &cfg, key1, sizeof(key1), err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "keys[0].key: shorter than 20"));
    /* a key that does not fit the caller's buffer */
    fake_env = NULL;
    char tiny[16];
    assert_int_equal(config_default(fake_getenv, &cfg, tiny, sizeof(tiny), err, sizeof(err)),
                     -ENOSPC);
    assert_null(cfg);
}

/* ------------------------------------------------- reload and lifecycle */

static void test_restart_only_change(void **state)
{
    (void)state;
    fake_env = NULL;
    config *a = load_ok("listen: \"127.0.0.1:8080\"\nworkers: 2\nlog: {level: info}\n");
    config *b = load_ok("listen: 127.0.0.1:8080\nworkers: 2\nlog: {level: debug}\n"
                        "limits: {max_body_bytes: 1MiB}\ntimeouts: {idle: 5s}\n"
                        "providers: [{name: m, type: mock}]\n");
    config *c = load_ok("listen: \"127.0.0.1:8081\"\nworkers: 2\n");
    config *d = load_ok("listen: \"127.0.0.1:8080\"\nworkers: 3\n");
    config *e = load_ok("listen: \"[::1]:8080\"\nworkers: 3\n");
    config *f = load_ok("workers: 2\n"); /* the default listen equals a's */

    assert_null(config_restart_only_change(a, a));
    assert_null(config_restart_only_change(a, b)); /* reloadable settings only */
    assert_null(config_restart_only_change(a, f));
    assert_string_equal(config_restart_only_change(a, c), "listen");
    assert_string_equal(config_restart_only_change(a, d), "workers");
    assert_string_equal(config_restart_only_change(a, e), "listen");
    assert_string_equal(config_restart_only_change(d, e), "listen");
    config_unref(a);
    config_unref(b);
    config_unref(c);
    config_unref(d);
    config_unref(e);
    config_unref(f);
}

/* models[].price: decimal USD per 1M tokens into nano-USD; cache rates
 * default to the input rate; bad prices name the setting. */
static void test_model_prices(void **state)
{
    (void)state;
    static const char base[] = "providers:\n  - {name: p, type: mock}\nmodels:\n";
    char y[1024];
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"0.15\", output: \"0.60\"}}\n"
             "  - {name: b, provider: p, price: {input: \"3\", output: \"15.00\", cached_input: \"0.30\", cache_write: \"3.75\"}}\n"
             "  - {name: c, provider: p}\n", base);
    config *cfg = load_ok(y);
    const config_model *a = config_find_model(cfg, "a", 1, NULL);
    const config_model *b = config_find_model(cfg, "b", 1, NULL);
    const config_model *c = config_find_model(cfg, "c", 1, NULL);
    assert_true(a->price.given);
    assert_int_equal(a->price.input, 150000000);
    assert_int_equal(a->price.output, 600000000);
    assert_int_equal(a->price.cached_input, 150000000);
    assert_int_equal(a->price.cache_write, 150000000);
    assert_int_equal(b->price.input, 3000000000);
    assert_int_equal(b->price.output, 15000000000);
    assert_int_equal(b->price.cached_input, 300000000);
    assert_int_equal(b->price.cache_write, 3750000000);
    assert_false(c->price.given);
    config_unref(cfg);
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"0.15\"}}\n", base);
    expect_error(y, "t.yaml:", "price.output", "needs both input and output");
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"1.5e\", output: \"1\"}}\n", base);
    expect_error(y, "price.input", "not a price", "1.5e");
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"-1\", output: \"1\"}}\n", base);
    expect_error(y, "price.input", "not a price", NULL);
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"0.0000000001\", output: \"1\"}}\n", base);
    expect_error(y, "price.input", "at most 9 decimals", NULL);
    snprintf(y, sizeof y, "%s  - {name: a, provider: p, price: {input: \"1\", output: \"1\", cahced_input: \"1\"}}\n", base);
    expect_error(y, "cahced_input", "unknown key", NULL);

    /* a markup over the provider's cost instead of a price */
    snprintf(y, sizeof y, "%s  - {name: m, provider: p, markup: \"20%%\"}\n", base);
    cfg = load_ok(y);
    const config_model *m = config_find_model(cfg, "m", 1, NULL);
    assert_false(m->price.given);
    assert_int_equal(m->price.markup_bps, 2000);
    config_unref(cfg);
    snprintf(y, sizeof y,
             "%s  - {name: m, provider: p, markup: \"5%%\", price: {input: \"1\", output: \"1\"}}\n",
             base);
    expect_error(y, "markup", "either a price or a markup", NULL);
    snprintf(y, sizeof y, "%s  - {name: m, provider: p, markup: \"20\"}\n", base);
    expect_error(y, "markup", "not a markup", "\"20\"");
}

static void test_model_routes(void **state)
{
    (void)state;
    static const char base[] = "providers:\n  - {name: p, type: mock}\n  - {name: q, type: mock}\n"
                               "models:\n";
    char y[2048];
    snprintf(y, sizeof y,
             "%s  - name: chat\n    strategy: weighted\n    routes:\n"
             "      - {provider: p, model: small, weight: 3, context: 8000, capabilities: [tools]}\n"
             "      - {provider: q, model: big, priority: 1, max_concurrent: 10, rpm: 600, tpm: "
             "100000, price: {input: \"1.00\", output: \"4.00\"}}\n"
             "  - {name: one, provider: q}\n",
             base);
    config *cfg = load_ok(y);
    const config_model *m = config_find_model(cfg, "chat", 4, NULL);
    assert_non_null(m);
    assert_int_equal(m->strategy, RT_WEIGHTED);
    assert_int_equal(m->nroutes, 2);
    assert_ptr_equal(m->provider, m->routes[0].provider); /* the first route's */
    assert_string_equal(m->model, "small");
    assert_string_equal(m->routes[0].provider->name, "p");
    assert_int_equal(m->routes[0].weight, 3);
    assert_int_equal(m->routes[0].context, 8000);
    assert_int_equal(m->routes[0].caps, RT_CAP_TOOLS);
    assert_false(m->routes[0].cost.given);
    assert_string_equal(m->routes[1].provider->name, "q");
    assert_string_equal(m->routes[1].model, "big");
    assert_int_equal(m->routes[1].weight, 1);
    assert_int_equal(m->routes[1].priority, 1);
    assert_int_equal(m->routes[1].max_concurrent, 10);
    assert_int_equal(m->routes[1].rpm, 600);
    assert_int_equal(m->routes[1].tpm, 100000);
    assert_int_equal(m->routes[1].caps, CONFIG_CAP_ALL);
    assert_true(m->routes[1].cost.given);
    assert_int_equal(m->routes[1].cost.output, 4000000000);
    const config_model *one = config_find_model(cfg, "one", 3, NULL);
    assert_int_equal(one->strategy, RT_PRIORITY);
    assert_int_equal(one->nroutes, 1);
    assert_string_equal(one->routes[0].model, "one");
    assert_int_equal(one->routes[0].caps, CONFIG_CAP_ALL);
    config_unref(cfg);

    snprintf(y, sizeof y, "%s  - {name: c, provider: p, routes: [{provider: q, model: m}]}\n", base);
    expect_error(y, "provider", "either provider (and model) or routes", NULL);
    snprintf(y, sizeof y, "%s  - {name: c}\n", base);
    expect_error(y, "provider", "give provider or routes", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, routes: []}\n", base);
    expect_error(y, "routes", "at least one route", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, routes: [{provider: z, model: m}]}\n", base);
    expect_error(y, "routes[0].provider", "unknown provider", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, routes: [{provider: p}]}\n", base);
    expect_error(y, "routes[0].model", "required key is missing", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, routes: [{provider: p, model: m, capabilities: [fly]}]}\n",
             base);
    expect_error(y, "capabilities", "unknown capability", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, strategy: fastest, provider: p}\n", base);
    expect_error(y, "strategy", "least-latency", NULL);
    snprintf(y, sizeof y, "%s  - {name: \"c/*\", routes: [{provider: p, model: m}]}\n", base);
    expect_error(y, "routes", "wildcard", NULL);
    snprintf(y, sizeof y, "%s  - {name: c, routes: [{provider: p, model: m, price: {input: \"1\"}}]}\n",
             base);
    expect_error(y, "price.output", "needs both", NULL);

    /* power levels */
    snprintf(y, sizeof y,
             "routing: {level_strategy: weighted}\n%s  - {name: e, provider: p, level: eco}\n"
             "keys:\n  - {key: tg-level-key-0123456789abcdef, alias: k, level: precision}\n",
             base);
    cfg = load_ok(y);
    assert_int_equal(config_find_model(cfg, "e", 1, NULL)->level, CONFIG_LEVEL_ECO);
    assert_int_equal(cfg->keys[0].level, CONFIG_LEVEL_PRECISION);
    assert_int_equal(cfg->routing.level_strategy, RT_WEIGHTED);
    config_unref(cfg);
    snprintf(y, sizeof y, "%s  - {name: e, provider: p, level: cheap}\n", base);
    expect_error(y, "level", "eco, balanced, precision", NULL);
    snprintf(y, sizeof y, "%s  - {name: \"e/*\", provider: p, level: eco}\n", base);
    expect_error(y, "level", "wildcard", NULL);
    snprintf(y, sizeof y, "routing: {level_strategy: random}\n%s  - {name: e, provider: p}\n", base);
    expect_error(y, "routing.level_strategy", "lowest-cost", NULL);
    assert_string_equal(config_level_name(CONFIG_LEVEL_BALANCED), "balanced");
    assert_int_equal(config_level_parse("ecology", 3), CONFIG_LEVEL_ECO);
    assert_int_equal(config_level_parse("ecology", 7), CONFIG_LEVEL_NONE);
}

static void test_proxies(void **state)
{
    (void)state;
    static const char provs[] =
        "providers:\n"
        "  - {name: a, type: openai, api_key: k}\n"
        "  - {name: b, type: openai_compatible, base_url: \"https://llm.internal.example/v1\"}\n"
        "  - {name: c, type: anthropic, api_key: k, proxy: \"http://u%40x:p%3Aw@10.0.0.9:3128\"}\n"
        "  - {name: d, type: gemini, api_key: k, proxy: direct}\n"
        "  - {name: m, type: mock}\n";
    char y[2048];
    /* from the environment, with no_proxy */
    static const char *const env[] = {"https_proxy", "http://proxy.corp:8080", "NO_PROXY",
                                      ".internal.example, localhost", NULL};
    fake_env = env;
    config *cfg = load_ok(provs);
    const config_provider *a = config_find_provider(cfg, "a"), *b = config_find_provider(cfg, "b"),
                          *c = config_find_provider(cfg, "c"), *d = config_find_provider(cfg, "d"),
                          *m = config_find_provider(cfg, "m");
    assert_string_equal(a->proxy_host, "proxy.corp");
    assert_int_equal(a->proxy_port, 8080);
    assert_string_equal(a->proxy_auth, "");
    assert_string_equal(b->proxy_host, ""); /* no_proxy */
    assert_string_equal(c->proxy_host, "10.0.0.9");
    assert_int_equal(c->proxy_port, 3128);
    assert_string_equal(c->proxy_auth, "dUB4OnA6dw=="); /* base64 "u@x:p:w" */
    assert_string_equal(d->proxy_host, "");             /* direct */
    assert_string_equal(m->proxy_host, "");
    config_unref(cfg);
    /* proxy.url wins over the environment */
    snprintf(y, sizeof y, "proxy: {url: \"http://other:1\", no_proxy: \"api.openai.com\"}\n%s", provs);
    cfg = load_ok(y);
    assert_string_equal(config_find_provider(cfg, "a")->proxy_host, "");
    assert_string_equal(config_find_provider(cfg, "b")->proxy_host, "other");
    config_unref(cfg);
    fake_env = NULL;
    /* errors never echo the URL (a password may be in it) */
    snprintf(y, sizeof y,
             "providers:\n  - {name: a, type: openai, api_key: k, proxy: \"https://s3cret@p:1\"}\n");
    expect_error(y, "proxy", "only http:// proxies", NULL);
    snprintf(y, sizeof y, "proxy: {url: \"http://s3cret@:x\"}\nproviders:\n  - {name: a, type: openai}\n");
    expect_error(y, "proxy.url", "not a proxy URL", NULL);
    static const char *const bad_env[] = {"HTTPS_PROXY", "ftp://s3cret@p", NULL};
    fake_env = bad_env;
    expect_error("providers:\n  - {name: a, type: openai}\n", "HTTPS_PROXY (environment)",
                 "only http://", NULL);
    fake_env = NULL;
}

static void test_markup_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int32_t bps; /* -1: refused */
    } cases[] = {
        {"20%", 2000}, {"7.5%", 750},   {"0.25%", 25}, {"0%", 0},     {"10000%", 1000000},
        {"100%", 10000}, {"10000.01%", -1}, {"20", -1}, {"%", -1},    {"1.234%", -1},
        {"5.%", -1},    {"-5%", -1},     {"5%%", -1},  {"1e2%", -1}, {"", -1},
        {"99999999999999999999%", -1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t v = -7;
        int rc = config_markup_parse(cases[i].in, &v);
        if (cases[i].bps < 0) {
            assert_int_equal(rc, -1);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(v, cases[i].bps);
        }
    }
}

static void test_refcount(void **state)
{
    (void)state;
    fake_env = NULL;
    config *cfg = load_ok("providers: [{name: m, type: mock, api_key: sk-secret-credential}]\n"
                          "models: [{name: x, provider: m}]\n");
    assert_int_equal(cfg->refs, 1);
    const config *r = config_ref(cfg);
    assert_ptr_equal(r, cfg);
    assert_int_equal(cfg->refs, 2);
    config_ref(cfg);
    assert_int_equal(cfg->refs, 3);
    config_unref(cfg);
    config_unref(cfg);
    assert_int_equal(cfg->refs, 1);
    /* still fully usable with one reference left */
    assert_non_null(config_find_model(cfg, "x", 1, NULL));
    config_unref(cfg); /* the last one frees it: ASan reports a leak or a use otherwise */
    config_unref(NULL);
}

/* database.*, secrets.* and admin.master_key: defaults, parsing into a
 * key ring and a digest, errors, and no plaintext kept. */
static void test_database_and_secrets(void **state)
{
    (void)state;
    static const char k1[] = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    static const char k2[] = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktISE=";
    uint8_t raw1[FERNET_KEY_LEN], raw2[FERNET_KEY_LEN];
    assert_int_equal(fernet_key_decode(k1, strlen(k1), raw1), 0);
    assert_int_equal(fernet_key_decode(k2, strlen(k2), raw2), 0);

    config *cfg = load_ok("listen: 127.0.0.1:1\n");
    assert_null(cfg->database.url);
    assert_int_equal(cfg->database.pool_size, 4);
    assert_int_equal(cfg->database.connect_timeout_ms, 5000);
    assert_int_equal(cfg->database.statement_timeout_ms, 5000);
    assert_int_equal(cfg->database.cache_refresh_ms, 60000);
    assert_int_equal(cfg->secrets.n, 0);
    assert_false(cfg->has_master_key);
    config_unref(cfg);

    char y[1024];
    snprintf(y, sizeof(y),
             "database: {url: \"postgres://u:pw-secret@db/x\", pool_size: 8, connect_timeout: 2s,"
             " statement_timeout: 250ms, cache_refresh: 5s}\n"
             "secrets: {keys: \" %s , %s \"}\n"
             "admin: {master_key: \"master-key-0123456789abcdef\"}\n",
             k1, k2);
    cfg = load_ok(y);
    assert_string_equal(cfg->database.url, "postgres://u:pw-secret@db/x");
    assert_int_equal(cfg->database.pool_size, 8);
    assert_int_equal(cfg->database.connect_timeout_ms, 2000);
    assert_int_equal(cfg->database.statement_timeout_ms, 250);
    assert_int_equal(cfg->database.cache_refresh_ms, 5000);
    assert_int_equal(cfg->secrets.n, 2);
    assert_memory_equal(cfg->secrets.keys[0], raw1, FERNET_KEY_LEN); /* order kept: first encrypts */
    assert_memory_equal(cfg->secrets.keys[1], raw2, FERNET_KEY_LEN);
    assert_true(cfg->has_master_key);
    assert_memory_equal(cfg->master_key_sha256, sha("master-key-0123456789abcdef"),
                        CRYPTO_SHA256_LEN);
    /* the text forms are gone */
    assert_null(cfg->secrets_keys_text);
    assert_null(cfg->master_key_text);
    assert_false(config__contains_bytes(cfg, "master-key-0123456789abcdef", 27));
    assert_false(config__contains_bytes(cfg, k1, strlen(k1)));
    config_unref(cfg);

    /* a passphrase adds a derived key after the listed ones */
    snprintf(y, sizeof(y),
             "secrets: {keys: \"%s\", passphrase: \"correct horse battery\","
             " salt: \"0123456789abcdef\", iterations: 100000}\n",
             k1);
    cfg = load_ok(y);
    assert_int_equal(cfg->secrets.n, 2);
    uint8_t derived[FERNET_KEY_LEN];
    assert_int_equal(fernet_key_derive("correct horse battery", 21,
                                       (const uint8_t *)"0123456789abcdef", 16, 100000, derived),
                     0);
    assert_memory_equal(cfg->secrets.keys[1], derived, FERNET_KEY_LEN);
    assert_null(cfg->secrets_pass_text);
    assert_false(config__contains_bytes(cfg, "correct horse battery", 21));
    config_unref(cfg);

    /* errors name the setting and never quote the secret */
    char err[512];
    const char *bad = "secrets: {keys: \"not-a-key-at-all\"}\n";
    config *c2 = NULL;
    assert_int_equal(config_load_string(bad, strlen(bad), "t.yaml", NULL, &c2, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "t.yaml:1: secrets.keys: key 1 is not a key made by 'tollgate keygen'"));
    assert_null(strstr(err, "not-a-key-at-all"));
    snprintf(y, sizeof(y), "secrets: {keys: \"%s,%s,%s,%s,%s,%s,%s,%s,%s\"}\n", k1, k1, k1, k1,
             k1, k1, k1, k1, k2);
    expect_error(y, "secrets.keys: more than 8 keys", NULL, NULL);
    expect_error("secrets: {passphrase: \"pw-secret-words\"}\n",
                 "secrets.salt: a passphrase needs a salt of at least 16 characters", NULL, NULL);
    expect_error("secrets: {passphrase: \"pw\", salt: short}\n", "secrets.salt", NULL, NULL);
    expect_error("secrets: {salt: \"0123456789abcdef\"}\n",
                 "secrets.salt: given without secrets.passphrase", NULL, NULL);
    expect_error("secrets: {passphrase: x, salt: \"0123456789abcdef\", iterations: 1000}\n",
                 "secrets.iterations: must be from 100000", NULL, NULL);
    expect_error("admin: {master_key: short-key}\n",
                 "admin.master_key: shorter than 20 characters", NULL, NULL);
    bad = "admin: {master_key: short-secret}\n";
    assert_int_equal(config_load_string(bad, strlen(bad), "t.yaml", NULL, &c2, err, sizeof(err)),
                     -EINVAL);
    assert_null(strstr(err, "short-secret"));
    expect_error("database: {pool_size: 0}\n", "database.pool_size: must be from 1 to 256", NULL,
                 NULL);
    expect_error("database: {cache_refresh: 10ms}\n", "database.cache_refresh", NULL, NULL);
    expect_error("database: {uri: x}\n", "database.uri: unknown key", NULL, NULL);

    /* ledger, budgets and the payment webhook secret */
    cfg = load_ok("ledger: {spool_dir: /tmp/x, spool_max_bytes: 2MiB, batch_rows: 7, "
                  "ship_interval: 50ms, spool_interval: 5ms}\n"
                  "budgets: {lease_ttl: 2s, wait: 300ms, default_max_output: 1000}\n"
                  "billing: {payment_webhook_secret: \"whsec-0123456789abcdef\"}\n"
                  "instance_id: i-1\n");
    assert_string_equal(cfg->ledger.spool_dir, "/tmp/x");
    assert_int_equal(cfg->ledger.spool_max_bytes, 2u << 20);
    assert_int_equal(cfg->ledger.batch_rows, 7);
    assert_int_equal(cfg->ledger.ship_interval_ms, 50);
    assert_int_equal(cfg->ledger.spool_interval_ms, 5);
    assert_int_equal(cfg->budgets.lease_ttl_ms, 2000);
    assert_int_equal(cfg->budgets.wait_ms, 300);
    assert_int_equal(cfg->budgets.default_max_output, 1000);
    assert_true(cfg->has_payment_secret);
    assert_int_equal(cfg->payment_secret_len, 22);
    assert_memory_equal(cfg->payment_secret, "whsec-0123456789abcdef", 22);
    assert_null(cfg->payment_secret_text);
    assert_string_equal(cfg->instance_id, "i-1");
    config_unref(cfg);
    cfg = load_ok("listen: 127.0.0.1:1\n");
    assert_string_equal(cfg->ledger.spool_dir, "tollgate-spool");
    assert_int_equal(cfg->ledger.batch_rows, 500);
    assert_int_equal(cfg->budgets.lease_ttl_ms, 30000);
    assert_false(cfg->has_payment_secret);
    config_unref(cfg);
    expect_error("billing: {payment_webhook_secret: short}\n",
                 "billing.payment_webhook_secret: shorter than 16 characters", NULL, NULL);
    expect_error("budgets: {lease_ttl: 10ms}\n", "budgets.lease_ttl", NULL, NULL);

    /* database.url needs a restart; secrets and the master key do not */
    config *a = load_ok("database: {url: \"host=a\"}\n");
    config *b = load_ok("database: {url: \"host=b\"}\n");
    assert_string_equal(config_restart_only_change(a, b), "database.url");
    config_unref(b);
    snprintf(y, sizeof(y), "database: {url: \"host=a\"}\nsecrets: {keys: \"%s\"}\n", k2);
    b = load_ok(y);
    assert_null(config_restart_only_change(a, b));
    config_unref(a);
    config_unref(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_defaults_and_empty),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_errors_top_level),
        cmocka_unit_test(test_errors_providers),
        cmocka_unit_test(test_errors_models_and_keys),
        cmocka_unit_test(test_errors_hide_secrets),
        cmocka_unit_test(test_aliases),
        cmocka_unit_test(test_env_substitution),
        cmocka_unit_test(test_presets_and_urls),
        cmocka_unit_test(test_key_lookup),
        cmocka_unit_test(test_model_resolution),
        cmocka_unit_test(test_default_config),
        cmocka_unit_test(test_restart_only_change),
        cmocka_unit_test(test_model_prices),
        cmocka_unit_test(test_markup_parse),
        cmocka_unit_test(test_model_routes),
        cmocka_unit_test(test_proxies),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_database_and_secrets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
