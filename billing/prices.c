/* prices.c - loading the price catalog and pricing one call. */
#include "billing/prices.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "billing/money.h"

struct price_table {
    price_entry *v; /* sorted by (provider, model), strings strdup'ed */
    size_t n;       /* entries in v */
};

#define PRICES__UNIT "USD per 1M tokens"

/* The price fields of an entry: JSON key, where it goes, which bit. */
static const struct prices__field {
    const char *key;   /* key in the catalog entry */
    size_t off;        /* offsetof the int64_t in price_entry */
    unsigned given;    /* PRICE_GIVEN_* bit, 0 for required fields */
} prices__fields[] = {
    {"input", offsetof(price_entry, input), 0},
    {"output", offsetof(price_entry, output), 0},
    {"cached_input", offsetof(price_entry, cached_input), PRICE_GIVEN_CACHED_INPUT},
    {"cache_write", offsetof(price_entry, cache_write), PRICE_GIVEN_CACHE_WRITE},
    {"cache_write_1h", offsetof(price_entry, cache_write_1h), PRICE_GIVEN_CACHE_WRITE_1H},
    {"input_above_200k", offsetof(price_entry, input_above_200k), PRICE_GIVEN_INPUT_ABOVE_200K},
    {"output_above_200k", offsetof(price_entry, output_above_200k),
     PRICE_GIVEN_OUTPUT_ABOVE_200K},
};
#define PRICES__NFIELDS (sizeof prices__fields / sizeof prices__fields[0])

static void __attribute__((format(printf, 3, 4)))
prices__err(char *err, size_t errcap, const char *fmt, ...)
{
    if (!err || errcap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

static int64_t *prices__slot(price_entry *e, size_t off)
{
    return (int64_t *)(void *)((char *)e + off);
}

/* A non-empty JSON string without embedded NULs, or NULL. */
static const char *prices__str(const json_t *v)
{
    if (!json_is_string(v))
        return NULL;
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    return n > 0 && strlen(s) == n ? s : NULL;
}

static int prices__cmp_key(const char *prov, const char *model, size_t mlen,
                           const price_entry *e)
{
    int c = strcmp(prov, e->provider);
    if (c)
        return c;
    size_t elen = strlen(e->model);
    c = memcmp(model, e->model, mlen < elen ? mlen : elen);
    if (c)
        return c;
    return mlen < elen ? -1 : mlen > elen;
}

static int prices__cmp_entry(const void *a, const void *b)
{
    const price_entry *x = a, *y = b;
    return prices__cmp_key(x->provider, x->model, strlen(x->model), y);
}

static void prices__free_entries(price_entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)v[i].provider);
        free((char *)v[i].model);
    }
    free(v);
}

/* Fills *e from the catalog entry o (prices[idx]). 0, or -1 with err. */
static int prices__load_entry(const json_t *o, size_t idx, price_entry *e, char *err,
                              size_t errcap)
{
    if (!json_is_object(o)) {
        prices__err(err, errcap, "prices[%zu]: not an object", idx);
        return -1;
    }
    const char *prov = prices__str(json_object_get(o, "provider"));
    const char *model = prices__str(json_object_get(o, "model"));
    if (!prov || !model) {
        prices__err(err, errcap, "prices[%zu]: \"%s\" missing or not a non-empty string", idx,
                    prov ? "model" : "provider");
        return -1;
    }

    unsigned seen = 0; /* bit i: prices__fields[i] present */
    e->mode = "chat";
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) {
        if (!strcmp(key, "provider") || !strcmp(key, "model"))
            continue;
        if (!strcmp(key, "mode")) {
            const char *m = json_string_value(v);
            if (m && !strcmp(m, "chat")) {
                e->mode = "chat";
            } else if (m && !strcmp(m, "embedding")) {
                e->mode = "embedding";
            } else {
                prices__err(err, errcap,
                            "prices[%zu] (%s/%s): \"mode\" must be \"chat\" or \"embedding\"",
                            idx, prov, model);
                return -1;
            }
            continue;
        }
        size_t f = 0;
        while (f < PRICES__NFIELDS && strcmp(key, prices__fields[f].key))
            f++;
        if (f == PRICES__NFIELDS) {
            prices__err(err, errcap, "prices[%zu] (%s/%s): unknown field \"%s\"", idx, prov,
                        model, key);
            return -1;
        }
        if (!json_is_string(v)) {
            prices__err(err, errcap,
                        "prices[%zu] (%s/%s): \"%s\" must be a decimal string%s", idx, prov,
                        model, key, json_is_number(v) ? ", not a number" : "");
            return -1;
        }
        const char *s = json_string_value(v);
        int64_t nano;
        int rc = money_parse(s, json_string_length(v), &nano);
        if (rc == 0 && nano < 0)
            rc = -ERANGE;
        if (rc) {
            prices__err(err, errcap, "prices[%zu] (%s/%s): \"%s\": \"%s\" is %s", idx, prov,
                        model, key, s,
                        rc == -EDOM     ? "finer than 1 nano-USD"
                        : rc == -ERANGE ? "negative or out of range"
                                        : "not a decimal amount");
            return -1;
        }
        *prices__slot(e, prices__fields[f].off) = nano;
        e->given |= prices__fields[f].given;
        seen |= 1u << f;
    }
    for (size_t f = 0; f < PRICES__NFIELDS; f++) {
        if (!prices__fields[f].given && !(seen & (1u << f))) {
            prices__err(err, errcap, "prices[%zu] (%s/%s): missing \"%s\"", idx, prov, model,
                        prices__fields[f].key);
            return -1;
        }
    }
    if (!(e->given & PRICE_GIVEN_CACHED_INPUT))
        e->cached_input = e->input;
    if (!(e->given & PRICE_GIVEN_CACHE_WRITE))
        e->cache_write = e->input;
    if (!(e->given & PRICE_GIVEN_CACHE_WRITE_1H))
        e->cache_write_1h = e->cache_write;
    if (!(e->given & PRICE_GIVEN_INPUT_ABOVE_200K))
        e->input_above_200k = e->input;
    if (!(e->given & PRICE_GIVEN_OUTPUT_ABOVE_200K))
        e->output_above_200k = e->output;
    e->index = (unsigned)idx;

    e->provider = strdup(prov);
    e->model = strdup(model);
    if (!e->provider || !e->model) {
        prices__err(err, errcap, "prices[%zu] (%s/%s): out of memory", idx, prov, model);
        return -1;
    }
    return 0;
}

/* Checks the top-level keys; returns the "prices" array or NULL with err. */
static const json_t *prices__check_top(const json_t *root, char *err, size_t errcap)
{
    if (!json_is_object(root)) {
        prices__err(err, errcap, "catalog is not a JSON object");
        return NULL;
    }
    const json_t *arr = NULL;
    bool unit = false;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)root, key, v) {
        if (!strcmp(key, "unit")) {
            const char *u = json_string_value(v);
            if (!u || strcmp(u, PRICES__UNIT)) {
                prices__err(err, errcap, "\"unit\" must be \"%s\"", PRICES__UNIT);
                return NULL;
            }
            unit = true;
        } else if (!strcmp(key, "version")) {
            if (!json_is_integer(v) || json_integer_value(v) != 1) {
                prices__err(err, errcap, "\"version\" must be 1");
                return NULL;
            }
        } else if (!strcmp(key, "source")) {
            if (!json_is_string(v)) {
                prices__err(err, errcap, "\"source\" must be a string");
                return NULL;
            }
        } else if (!strcmp(key, "prices")) {
            if (!json_is_array(v)) {
                prices__err(err, errcap, "\"prices\" must be an array");
                return NULL;
            }
            arr = v;
        } else {
            prices__err(err, errcap, "unknown top-level key \"%s\"", key);
            return NULL;
        }
    }
    if (!unit) {
        prices__err(err, errcap, "missing \"unit\": \"%s\"", PRICES__UNIT);
        return NULL;
    }
    if (!arr)
        prices__err(err, errcap, "missing \"prices\" array");
    return arr;
}

price_table *prices_load_json(const char *text, size_t len, char *err, size_t errcap)
{
    price_table *t = NULL;
    price_entry *v = NULL;
    size_t n = 0;

    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        prices__err(err, errcap, "line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    const json_t *arr = prices__check_top(root, err, errcap);
    if (!arr)
        goto out_put_root;

    size_t cnt = json_array_size(arr);
    v = calloc(cnt ? cnt : 1, sizeof *v);
    if (!v) {
        prices__err(err, errcap, "out of memory");
        goto out_put_root;
    }
    for (n = 0; n < cnt; n++) {
        if (prices__load_entry(json_array_get(arr, n), n, &v[n], err, errcap)) {
            n++; /* free what the failed entry did allocate */
            goto out_free_entries;
        }
    }

    qsort(v, n, sizeof *v, prices__cmp_entry);
    for (size_t i = 1; i < n; i++) {
        if (prices__cmp_entry(&v[i - 1], &v[i]) == 0) {
            const price_entry *a = &v[i - 1], *b = &v[i];
            if (a->index > b->index) {
                const price_entry *tmp = a;
                a = b;
                b = tmp;
            }
            prices__err(err, errcap, "prices[%u] (%s/%s): duplicate of prices[%u]", b->index,
                        b->provider, b->model, a->index);
            goto out_free_entries;
        }
    }

    t = malloc(sizeof *t);
    if (!t) {
        prices__err(err, errcap, "out of memory");
        goto out_free_entries;
    }
    t->v = v;
    t->n = n;
    goto out_put_root;

out_free_entries:
    prices__free_entries(v, n);
out_put_root:
    json_decref(root);
    return t;
}

price_table *prices_load_file(const char *path, char *err, size_t errcap)
{
    price_table *t = NULL;
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        prices__err(err, errcap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    text = malloc(PRICES_FILE_MAX + 1);
    if (!text) {
        prices__err(err, errcap, "%s: out of memory", path);
        goto out_close;
    }
    size_t len = fread(text, 1, PRICES_FILE_MAX + 1, f);
    if (ferror(f)) {
        prices__err(err, errcap, "%s: read error", path);
        goto out_free_text;
    }
    if (len > PRICES_FILE_MAX) {
        prices__err(err, errcap, "%s: larger than %u bytes", path, PRICES_FILE_MAX);
        goto out_free_text;
    }
    char msg[256];
    t = prices_load_json(text, len, msg, sizeof msg);
    if (!t)
        prices__err(err, errcap, "%s: %s", path, msg);

out_free_text:
    free(text);
out_close:
    fclose(f);
    return t;
}

void prices_free(price_table *t)
{
    if (!t)
        return;
    prices__free_entries(t->v, t->n);
    free(t);
}

static const price_entry *prices__search(const price_table *t, const char *provider,
                                         const char *model, size_t mlen)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = prices__cmp_key(provider, model, mlen, &t->v[mid]);
        if (c == 0)
            return &t->v[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static bool prices__digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* mm and dd point at two digits each: a plausible month and day. */
static bool prices__month_day(const char *mm, const char *dd)
{
    int m = (mm[0] - '0') * 10 + (mm[1] - '0');
    int d = (dd[0] - '0') * 10 + (dd[1] - '0');
    return m >= 1 && m <= 12 && d >= 1 && d <= 31;
}

/* Length of model without a trailing -YYYY-MM-DD / -YYYYMMDD, or n. */
static size_t prices__undated_len(const char *s, size_t n)
{
    if (n > 11) {
        const char *d = s + n - 11; /* "-YYYY-MM-DD" */
        if (d[0] == '-' && d[5] == '-' && d[8] == '-' && prices__digits(d + 1, 4) &&
            prices__digits(d + 6, 2) && prices__digits(d + 9, 2) &&
            prices__month_day(d + 6, d + 9))
            return n - 11;
    }
    if (n > 9) {
        const char *d = s + n - 9; /* "-YYYYMMDD" */
        if (d[0] == '-' && prices__digits(d + 1, 8) && prices__month_day(d + 5, d + 7))
            return n - 9;
    }
    return n;
}

const price_entry *prices_find(const price_table *t, const char *provider, const char *model)
{
    if (!t || !provider || !model)
        return NULL;
    size_t n = strlen(model);
    const price_entry *e = prices__search(t, provider, model, n);
    if (e)
        return e;
    size_t base = prices__undated_len(model, n);
    return base < n ? prices__search(t, provider, model, base) : NULL;
}

size_t prices_count(const price_table *t) { return t ? t->n : 0; }

const price_entry *prices_at(const price_table *t, size_t i)
{
    return t && i < t->n ? &t->v[i] : NULL;
}

int64_t price_cost_1h(const price_entry *p, int64_t input_tokens, int64_t cached_input_tokens,
                      int64_t cache_write_tokens, int64_t cache_write_1h_tokens,
                      int64_t output_tokens)
{
    __extension__ typedef __int128 i128;
    if (!p)
        return 0;
    int64_t in = input_tokens > 0 ? input_tokens : 0;
    int64_t cr = cached_input_tokens > 0 ? cached_input_tokens : 0;
    int64_t cw = cache_write_tokens > 0 ? cache_write_tokens : 0;
    int64_t cw1 = cache_write_1h_tokens > 0 ? cache_write_1h_tokens : 0;
    int64_t out = output_tokens > 0 ? output_tokens : 0;
    i128 rest = (i128)in - cr - cw - cw1;
    if (rest < 0)
        rest = 0;
    bool tier = in > PRICES_TIER_TOKENS;

    /* Each product is < 2^126; split it by 1e6 so the sum cannot overflow,
     * then round the exact total once. Rates are >= 0 (the loader checks). */
    const struct {
        i128 tokens;
        int64_t rate;
    } terms[] = {
        {rest, tier ? p->input_above_200k : p->input},
        {cr, p->cached_input},
        {cw, p->cache_write},
        {cw1, p->cache_write_1h},
        {out, tier ? p->output_above_200k : p->output},
    };
    i128 q = 0, r = 0;
    for (size_t i = 0; i < sizeof terms / sizeof terms[0]; i++) {
        i128 prod = terms[i].tokens * terms[i].rate;
        q += prod / MONEY_PRICE_TOKENS;
        r += prod % MONEY_PRICE_TOKENS;
    }
    q += r / MONEY_PRICE_TOKENS;
    r %= MONEY_PRICE_TOKENS;
    if (2 * r >= MONEY_PRICE_TOKENS)
        q++;
    else if (2 * r <= -MONEY_PRICE_TOKENS)
        q--;
    if (q > INT64_MAX)
        return INT64_MAX;
    if (q < INT64_MIN)
        return INT64_MIN;
    return (int64_t)q;
}

int64_t price_cost(const price_entry *p, int64_t input_tokens, int64_t cached_input_tokens,
                   int64_t cache_write_tokens, int64_t output_tokens)
{
    return price_cost_1h(p, input_tokens, cached_input_tokens, cache_write_tokens, 0,
                         output_tokens);
}

#ifndef TG_PRICES_BUILD_FILE
#define TG_PRICES_BUILD_FILE ""
#endif
#ifndef TG_INSTALL_DATADIR
#define TG_INSTALL_DATADIR "/usr/local/share"
#endif

const char *prices_default_file(void)
{
    const char *env = getenv("TOLLGATE_PRICES_FILE");
    if (env && env[0])
        return env;
    static const char *const files[] = {TG_PRICES_BUILD_FILE, TG_INSTALL_DATADIR "/tollgate/prices.json",
                                        "/usr/share/tollgate/prices.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        if (files[i][0] && access(files[i], R_OK) == 0)
            return files[i];
    return NULL;
}
