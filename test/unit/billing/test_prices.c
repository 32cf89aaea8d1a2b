/* test_prices.c - the price catalog: billing/prices.json against the
 * fixture's README §8 table and litellm subset, lookups, costs, and bad
 * catalogs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "billing/money.h"
#include "billing/prices.h"

#define CATALOG TG_SOURCE_DIR "/billing/prices.json"
#define LITELLM TG_FIXTURES "/providers/prices_litellm_subset.json"

static price_table *load_shipped(void)
{
    char err[256] = "";
    price_table *t = prices_load_file(CATALOG, err, sizeof err);
    if (!t)
        fail_msg("%s", err);
    return t;
}

static int64_t usd(const char *s)
{
    int64_t v = 0;
    if (money_parse(s, strlen(s), &v) != 0)
        fail_msg("bad test amount %s", s);
    return v;
}

/* README §8, verbatim: NULL where the table says "–". */
static const struct row {
    const char *provider, *model;
    const char *input, *output, *cache_read, *cache_write, *cache_write_1h;
} readme_rows[] = {
    {"openai", "gpt-4o", "2.50", "10.00", "1.25", NULL, NULL},
    {"openai", "gpt-4o-mini", "0.15", "0.60", "0.075", NULL, NULL},
    {"openai", "gpt-4.1", "2.00", "8.00", "0.50", NULL, NULL},
    {"openai", "gpt-4.1-mini", "0.40", "1.60", "0.10", NULL, NULL},
    {"openai", "gpt-5", "1.25", "10.00", "0.125", NULL, NULL},
    {"openai", "gpt-5-mini", "0.25", "2.00", "0.025", NULL, NULL},
    {"openai", "o3", "2.00", "8.00", "0.50", NULL, NULL},
    {"openai", "text-embedding-3-small", "0.02", "0", NULL, NULL, NULL},
    {"anthropic", "claude-sonnet-4-5", "3.00", "15.00", "0.30", "3.75", "6.00"},
    {"anthropic", "claude-opus-4-1", "15.00", "75.00", "1.50", "18.75", "30.00"},
    {"anthropic", "claude-haiku-4-5", "1.00", "5.00", "0.10", "1.25", "2.00"},
    {"gemini", "gemini-2.5-pro", "1.25", "10.00", "0.125", NULL, NULL},
    {"gemini", "gemini-2.5-flash", "0.30", "2.50", "0.03", NULL, NULL},
    {"gemini", "gemini-2.0-flash", "0.10", "0.40", "0.025", NULL, NULL},
    {"fireworks", "accounts/fireworks/models/deepseek-v3p1", "0.56", "1.68", NULL, NULL, NULL},
    {"fireworks", "accounts/fireworks/models/gpt-oss-120b", "0.15", "0.60", "0.015", NULL, NULL},
    {"openrouter", "anthropic/claude-sonnet-4.5", "3.00", "15.00", "0.30", "3.75", NULL},
    {"openrouter", "openai/gpt-4o", "2.50", "10.00", NULL, NULL, NULL},
};
#define NROWS (sizeof readme_rows / sizeof readme_rows[0])

static void test_readme_table(void **state)
{
    (void)state;
    price_table *t = load_shipped();
    assert_int_equal(prices_count(t), NROWS);
    for (size_t i = 0; i < NROWS; i++) {
        const struct row *r = &readme_rows[i];
        const price_entry *p = prices_find(t, r->provider, r->model);
        if (!p)
            fail_msg("%s/%s missing", r->provider, r->model);
        assert_string_equal(p->provider, r->provider);
        assert_string_equal(p->model, r->model);
        assert_int_equal(p->input, usd(r->input));
        assert_int_equal(p->output, usd(r->output));
        assert_int_equal(p->cached_input, usd(r->cache_read ? r->cache_read : r->input));
        assert_int_equal(!!(p->given & PRICE_GIVEN_CACHED_INPUT), r->cache_read != NULL);
        assert_int_equal(p->cache_write, usd(r->cache_write ? r->cache_write : r->input));
        assert_int_equal(!!(p->given & PRICE_GIVEN_CACHE_WRITE), r->cache_write != NULL);
        assert_int_equal(p->cache_write_1h,
                         r->cache_write_1h ? usd(r->cache_write_1h) : p->cache_write);
        assert_int_equal(!!(p->given & PRICE_GIVEN_CACHE_WRITE_1H), r->cache_write_1h != NULL);
        assert_string_equal(p->mode, strstr(r->model, "embedding") ? "embedding" : "chat");
    }
    /* the stated examples, as integers */
    const price_entry *p = prices_find(t, "openai", "gpt-4o");
    assert_int_equal(p->input, 2500000000);
    p = prices_find(t, "openai", "gpt-4o-mini");
    assert_int_equal(p->cached_input, 75000000);
    prices_free(t);
}

static void test_tiers(void **state)
{
    (void)state;
    price_table *t = load_shipped();
    const price_entry *p = prices_find(t, "anthropic", "claude-sonnet-4-5");
    assert_int_equal(p->input_above_200k, usd("6.00"));
    assert_int_equal(p->output_above_200k, usd("22.50"));
    assert_true(p->given & PRICE_GIVEN_INPUT_ABOVE_200K);
    p = prices_find(t, "gemini", "gemini-2.5-pro");
    assert_int_equal(p->input_above_200k, usd("2.50"));
    assert_int_equal(p->output_above_200k, usd("15.00"));
    p = prices_find(t, "openrouter", "anthropic/claude-sonnet-4.5");
    assert_int_equal(p->input_above_200k, usd("6.00"));
    p = prices_find(t, "openai", "gpt-4o"); /* no tier: the base rates */
    assert_false(p->given & (PRICE_GIVEN_INPUT_ABOVE_200K | PRICE_GIVEN_OUTPUT_ABOVE_200K));
    assert_int_equal(p->input_above_200k, p->input);
    assert_int_equal(p->output_above_200k, p->output);
    prices_free(t);
}

static void test_lookup_fallbacks(void **state)
{
    (void)state;
    price_table *t = load_shipped();
    const price_entry *mini = prices_find(t, "openai", "gpt-4o-mini");
    const price_entry *o = prices_find(t, "openai", "gpt-4o");
    const price_entry *s45 = prices_find(t, "anthropic", "claude-sonnet-4-5");
    assert_non_null(mini);
    assert_non_null(o);
    assert_non_null(s45);
    assert_ptr_equal(prices_find(t, "openai", "gpt-4o-mini-2024-07-18"), mini);
    assert_ptr_equal(prices_find(t, "openai", "gpt-4o-2024-08-06"), o);
    assert_ptr_equal(prices_find(t, "anthropic", "claude-sonnet-4-5-20250929"), s45);
    assert_ptr_equal(prices_find(t, "openai", "gpt-4o-20240806"), o);

    /* not dates, or not a date suffix */
    assert_null(prices_find(t, "openai", "gpt-4o-2024-13-06"));
    assert_null(prices_find(t, "openai", "gpt-4o-2024-08-00"));
    assert_null(prices_find(t, "openai", "gpt-4o-2024-08-6"));
    assert_null(prices_find(t, "openai", "gpt-4o-2024-08-06-extra"));
    assert_null(prices_find(t, "openai", "gpt-4o2024-08-06"));
    assert_null(prices_find(t, "openai", "gpt-4o-2024080"));
    assert_null(prices_find(t, "openai", "gpt-4o-mini-2024-07-18-2024-07-18"));
    assert_null(prices_find(t, "anthropic", "-20250929"));

    /* unknown, wrong provider, prefixes, case */
    assert_null(prices_find(t, "openai", "gpt-4"));
    assert_null(prices_find(t, "openai", "gpt-4o-"));
    assert_null(prices_find(t, "openai", "gpt-4o-mini-x"));
    assert_null(prices_find(t, "openai", "GPT-4o"));
    assert_null(prices_find(t, "openai", ""));
    assert_null(prices_find(t, "azure", "gpt-4o"));
    assert_null(prices_find(t, "anthropic", "gpt-4o"));
    assert_null(prices_find(t, "openai", "no-such-model"));
    assert_null(prices_find(t, NULL, "gpt-4o"));
    assert_null(prices_find(t, "openai", NULL));
    assert_null(prices_find(NULL, "openai", "gpt-4o"));

    /* the same model under several providers */
    const price_entry *or4o = prices_find(t, "openrouter", "openai/gpt-4o");
    assert_non_null(or4o);
    assert_ptr_not_equal(or4o, o);
    assert_null(prices_find(t, "openrouter", "gpt-4o"));

    /* prices_at: every entry, sorted, each findable */
    for (size_t i = 0; i < prices_count(t); i++) {
        const price_entry *e = prices_at(t, i);
        assert_ptr_equal(prices_find(t, e->provider, e->model), e);
        if (i > 0) {
            const price_entry *d = prices_at(t, i - 1);
            int c = strcmp(d->provider, e->provider);
            assert_true(c < 0 || (c == 0 && strcmp(d->model, e->model) < 0));
        }
    }
    assert_null(prices_at(t, prices_count(t)));
    prices_free(t);
}

static void test_cost(void **state)
{
    (void)state;
    price_table *t = load_shipped();
    const price_entry *mini = prices_find(t, "openai", "gpt-4o-mini");
    /* 1000 prompt tokens, 400 of them cached, 100 out:
     * 600*0.15 + 400*0.075 + 100*0.60 = 180 USD per 1M = 180000 nano */
    assert_int_equal(price_cost(mini, 1000, 400, 0, 100), 180000);
    assert_int_equal(price_cost(mini, 9, 0, 0, 0), 1350);
    assert_int_equal(price_cost(mini, 0, 0, 0, 9), 5400);
    assert_int_equal(price_cost(mini, 1, 1, 0, 0), 75);
    /* no cache write price: written tokens cost the input rate */
    assert_int_equal(price_cost(mini, 100, 0, 100, 0), price_cost(mini, 100, 0, 0, 0));

    const price_entry *s = prices_find(t, "anthropic", "claude-sonnet-4-5");
    /* 1000 total = 500 fresh + 200 read + 300 written; 50 out:
     * 500*3 + 200*0.30 + 300*3.75 + 50*15 = 3435 USD per 1M */
    assert_int_equal(price_cost(s, 1000, 200, 300, 50), 3435000);
    /* 1 hour writes: 100 tokens at 6.00 */
    assert_int_equal(price_cost_1h(s, 100, 0, 0, 100, 0), 600000);
    assert_int_equal(price_cost_1h(s, 1000, 200, 300, 0, 50), 3435000);

    /* over 200k prompt tokens: the tier rates for input and output */
    assert_int_equal(price_cost(s, 200000, 0, 0, 10), 200000 * 3000 + 10 * 15000);
    assert_int_equal(price_cost(s, 200001, 0, 0, 10), 200001 * 6000 + 10 * 22500);
    /* cache reads keep their rate in the tier */
    assert_int_equal(price_cost(s, 200001, 200001, 0, 0), 200001 * 300);
    const price_entry *g = prices_find(t, "gemini", "gemini-2.5-pro");
    assert_int_equal(price_cost(g, 300000, 0, 0, 1000), 300000 * 2500 + 1000 * 15000);

    /* odd counts: negative as 0, cached beyond input leaves nothing uncached */
    assert_int_equal(price_cost(mini, -5, 0, 0, -1), 0);
    assert_int_equal(price_cost(mini, 10, 20, 0, 0), 20 * 75);
    assert_int_equal(price_cost(NULL, 10, 0, 0, 0), 0);
    prices_free(t);
}

static void test_cost_rounds_once(void **state)
{
    (void)state;
    /* 1 input and 1 output at 0.0005 USD per 1M: 0.5 + 0.5 = 1 nano
     * exactly; rounding each term would say 2. */
    price_entry p = {.provider = "x", .model = "y", .input = 500000, .output = 500000,
                     .cached_input = 500000, .cache_write = 500000, .cache_write_1h = 500000,
                     .input_above_200k = 500000, .output_above_200k = 500000};
    assert_int_equal(price_cost(&p, 1, 0, 0, 1), 1);
    assert_int_equal(price_cost(&p, 1, 0, 0, 0), 1); /* half rounds up */
    p.input = 499999;
    assert_int_equal(price_cost(&p, 1, 0, 0, 0), 0);
    p.input = 333333;
    p.output = 333333;
    p.cached_input = 333334;
    /* 333333 + 333334 + 333333 = 1 000 000 -> exactly 1 nano */
    assert_int_equal(price_cost(&p, 2, 1, 0, 1), 1);

    /* huge counts saturate instead of wrapping */
    p.input = INT64_MAX;
    p.output = INT64_MAX;
    assert_int_equal(price_cost(&p, INT64_MAX, 0, 0, INT64_MAX), INT64_MAX);
}

/* --- bad catalogs ------------------------------------------------------ */

static void expect_bad(const char *json, const char *want)
{
    char err[256] = "";
    price_table *t = prices_load_json(json, strlen(json), err, sizeof err);
    if (t) {
        prices_free(t);
        fail_msg("loaded: %s", json);
    }
    if (!strstr(err, want))
        fail_msg("error \"%s\" does not say \"%s\"", err, want);
}

#define HEAD "{\"unit\": \"USD per 1M tokens\", \"prices\": ["
#define E_OK "{\"provider\": \"openai\", \"model\": \"gpt-4o\", \"input\": \"2.50\", \"output\": \"10.00\"}"

static void test_bad_catalogs(void **state)
{
    (void)state;
    expect_bad("", "line 1");
    expect_bad("{", "line 1");
    expect_bad("[]", "not a JSON object");
    expect_bad("{\"prices\": []}", "missing \"unit\"");
    expect_bad("{\"unit\": \"USD per token\", \"prices\": []}", "\"unit\" must be");
    expect_bad("{\"unit\": \"USD per 1M tokens\"}", "missing \"prices\"");
    expect_bad("{\"unit\": \"USD per 1M tokens\", \"prices\": {}}", "must be an array");
    expect_bad("{\"unit\": \"USD per 1M tokens\", \"version\": 2, \"prices\": []}",
               "\"version\" must be 1");
    expect_bad("{\"unit\": \"USD per 1M tokens\", \"pricse\": []}", "unknown top-level key \"pricse\"");
    expect_bad(HEAD "1]}", "prices[0]: not an object");
    expect_bad(HEAD E_OK ", {\"model\": \"m\", \"input\": \"1\", \"output\": \"1\"}]}",
               "prices[1]: \"provider\" missing");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"\", \"input\": \"1\", \"output\": \"1\"}]}",
               "prices[0]: \"model\" missing or not a non-empty string");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"output\": \"1\"}]}",
               "prices[0] (openai/m): missing \"input\"");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1\"}]}",
               "prices[0] (openai/m): missing \"output\"");
    expect_bad(HEAD E_OK ", {\"provider\": \"openai\", \"model\": \"m\", \"input\": 2.5, \"output\": \"1\"}]}",
               "prices[1] (openai/m): \"input\" must be a decimal string, not a number");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1\", \"output\": \"1\", \"cached_input\": 1}]}",
               "prices[0] (openai/m): \"cached_input\" must be a decimal string, not a number");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1\", \"output\": null}]}",
               "prices[0] (openai/m): \"output\" must be a decimal string");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1,5\", \"output\": \"1\"}]}",
               "prices[0] (openai/m): \"input\": \"1,5\" is not a decimal amount");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"-1\", \"output\": \"1\"}]}",
               "prices[0] (openai/m): \"input\": \"-1\" is negative");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"0.0000000001\", \"output\": \"1\"}]}",
               "finer than 1 nano-USD");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1\", \"output\": \"1\", \"inptu\": \"1\"}]}",
               "prices[0] (openai/m): unknown field \"inptu\"");
    expect_bad(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": \"1\", \"output\": \"1\", \"mode\": \"image\"}]}",
               "prices[0] (openai/m): \"mode\" must be");
    expect_bad(HEAD E_OK ", " E_OK "]}", "prices[1] (openai/gpt-4o): duplicate of prices[0]");
    expect_bad(HEAD E_OK ", {\"provider\": \"anthropic\", \"model\": \"c\", \"input\": \"1\", \"output\": \"1\"}, " E_OK "]}",
               "prices[2] (openai/gpt-4o): duplicate of prices[0]");
    expect_bad(HEAD "{\"provider\": \"openai\", \"provider\": \"x\", \"model\": \"m\", \"input\": \"1\", \"output\": \"1\"}]}",
               "duplicate object key");

    /* the same model under two providers is fine; so is an empty list */
    char err[256];
    const char *ok = HEAD E_OK ", {\"provider\": \"azure\", \"model\": \"gpt-4o\", \"input\": \"1\", \"output\": \"1\"}]}";
    price_table *t = prices_load_json(ok, strlen(ok), err, sizeof err);
    assert_non_null(t);
    assert_int_equal(prices_count(t), 2);
    prices_free(t);
    t = prices_load_json(HEAD "]}", strlen(HEAD "]}"), err, sizeof err);
    assert_non_null(t);
    assert_int_equal(prices_count(t), 0);
    assert_null(prices_find(t, "openai", "gpt-4o"));
    prices_free(t);
    prices_free(NULL);
}

static void test_load_file_errors(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(prices_load_file("/nonexistent/prices.json", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent/prices.json: "));

    char path[] = "/tmp/tg_prices_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(HEAD "{\"provider\": \"openai\", \"model\": \"m\", \"input\": 1, \"output\": \"1\"}]}", f);
    fclose(f);
    assert_null(prices_load_file(path, err, sizeof err));
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "prices[0] (openai/m): \"input\" must be a decimal string"));
    unlink(path);
}

/* --- cross-check against the litellm fixture --------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *b = malloc(1 << 20);
    assert_non_null(b);
    *len = fread(b, 1, (1 << 20) - 1, f);
    b[*len] = '\0';
    fclose(f);
    return b;
}

/* The literal text of number field `field` inside the fixture object that
 * follows `"key": {` in raw (objects there are flat). */
static const char *literal(const char *raw, const char *key, const char *field, size_t *n)
{
    char pat[256];
    snprintf(pat, sizeof pat, "\"%s\": {", key);
    const char *obj = strstr(raw, pat);
    if (!obj)
        fail_msg("fixture: no object %s", key);
    const char *end = strchr(obj, '}');
    snprintf(pat, sizeof pat, "\"%s\":", field);
    const char *p = strstr(obj, pat);
    if (!p || p > end)
        fail_msg("fixture: %s has no %s", key, field);
    p += strlen(pat);
    while (*p == ' ')
        p++;
    *n = strspn(p, "-+.0123456789eE");
    return p;
}

static void test_matches_litellm_fixture(void **state)
{
    (void)state;
    static const struct {
        const char *litellm;  /* litellm field (per token) */
        size_t off;           /* price_entry field (per 1M) */
        unsigned given;       /* its PRICE_GIVEN_* bit, 0 if required */
    } map[] = {
        {"input_cost_per_token", offsetof(price_entry, input), 0},
        {"output_cost_per_token", offsetof(price_entry, output), 0},
        {"cache_read_input_token_cost", offsetof(price_entry, cached_input), PRICE_GIVEN_CACHED_INPUT},
        {"cache_creation_input_token_cost", offsetof(price_entry, cache_write), PRICE_GIVEN_CACHE_WRITE},
        {"cache_creation_input_token_cost_above_1hr", offsetof(price_entry, cache_write_1h),
         PRICE_GIVEN_CACHE_WRITE_1H},
        {"input_cost_per_token_above_200k_tokens", offsetof(price_entry, input_above_200k),
         PRICE_GIVEN_INPUT_ABOVE_200K},
        {"output_cost_per_token_above_200k_tokens", offsetof(price_entry, output_above_200k),
         PRICE_GIVEN_OUTPUT_ABOVE_200K},
        /* thinking tokens are billed as output: must equal it */
        {"output_cost_per_reasoning_token", offsetof(price_entry, output), 0},
    };
    size_t nmap = sizeof map / sizeof map[0];

    size_t len;
    char *raw = slurp(LITELLM, &len);
    json_error_t jerr;
    json_t *root = json_loadb(raw, len, 0, &jerr); /* structure only: no values read */
    if (!root)
        fail_msg("fixture: %s", jerr.text);
    price_table *t = load_shipped();
    assert_int_equal(prices_count(t), json_object_size(root));

    const char *key;
    json_t *obj;
    json_object_foreach(root, key, obj) {
        const char *lp = json_string_value(json_object_get(obj, "litellm_provider"));
        assert_non_null(lp);
        const char *provider = strcmp(lp, "fireworks_ai") == 0 ? "fireworks" : lp;
        size_t lpn = strlen(lp);
        const char *model =
            strncmp(key, lp, lpn) == 0 && key[lpn] == '/' ? key + lpn + 1 : key;
        const price_entry *p = prices_find(t, provider, model);
        if (!p || strcmp(p->model, model) != 0)
            fail_msg("catalog lacks %s/%s (litellm %s)", provider, model, key);
        assert_string_equal(p->mode, json_string_value(json_object_get(obj, "mode")));

        unsigned given = 0;
        const char *field;
        json_t *v;
        json_object_foreach(obj, field, v) {
            if (!json_is_number(v))
                continue;
            size_t m = 0;
            while (m < nmap && strcmp(field, map[m].litellm))
                m++;
            if (m == nmap)
                fail_msg("%s: fixture field %s has no catalog counterpart", key, field);
            size_t n;
            const char *lit = literal(raw, key, field, &n);
            int64_t want;
            if (money_parse_per_token_to_per_million(lit, n, &want) != 0)
                fail_msg("%s.%s: cannot parse %.*s", key, field, (int)n, lit);
            int64_t got;
            memcpy(&got, (const char *)p + map[m].off, sizeof got);
            if (got != want)
                fail_msg("%s.%s = %.*s per token: catalog has %lld nano per 1M, want %lld", key,
                         field, (int)n, lit, (long long)got, (long long)want);
            given |= map[m].given;
        }
        if (p->given != given)
            fail_msg("%s: catalog gives optional prices 0x%x, fixture 0x%x", key, p->given,
                     given);
    }
    prices_free(t);
    json_decref(root);
    free(raw);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readme_table),     cmocka_unit_test(test_tiers),
        cmocka_unit_test(test_lookup_fallbacks), cmocka_unit_test(test_cost),
        cmocka_unit_test(test_cost_rounds_once), cmocka_unit_test(test_bad_catalogs),
        cmocka_unit_test(test_load_file_errors), cmocka_unit_test(test_matches_litellm_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
