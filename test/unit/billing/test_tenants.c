/* test_tenants.c - the tenancy cache: entries of every kind, lookups by id
 * and by lookup key, versions, generations and sweeps, references held by
 * requests, growth, and the key's model allow-list. Entries are built as
 * daemon/store.c builds them: tn_new(kind, extra) with the strings and
 * arrays copied into the extra bytes. Run under -DTG_SANITIZE=ON, a leak,
 * use after free or double free of an entry fails the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/tenants.h"
#include "crypto/crypto.h"

/* ------------------------------------------------------------ building */

typedef struct bump {
    char *p;
    size_t left;
} bump;

static const char *bump_str(bump *b, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    assert_true(n <= b->left);
    char *d = memcpy(b->p, s, n);
    b->p += n;
    b->left -= n;
    return d;
}

static void *bump_array(bump *b, size_t n, size_t size)
{
    size_t pad = (size_t)(-(uintptr_t)b->p & 7);
    assert_true(pad + n * size <= b->left);
    void *d = b->p + pad;
    b->p += pad + n * size;
    b->left -= pad + n * size;
    return d;
}

static size_t strs_size(const char *const *v, size_t n)
{
    size_t s = 8 + n * sizeof(char *);
    for (size_t i = 0; i < n; i++)
        s += strlen(v[i]) + 1;
    return s;
}

static const char *const *bump_strs(bump *b, const char *const *v, size_t n)
{
    const char **out = bump_array(b, n, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        out[i] = bump_str(b, v[i]);
    return out;
}

static void set_id(tn_id *id, const char *s)
{
    assert_true(strlen(s) <= TN_ID_LEN);
    snprintf(id->s, sizeof id->s, "%s", s);
}

/* The digest of key number n ("tg-key-n"). */
static void digest(uint8_t out[CRYPTO_SHA256_LEN], unsigned n)
{
    char s[32];
    int len = snprintf(s, sizeof s, "tg-key-%u", n);
    crypto_sha256(s, (size_t)len, out);
}

static tn_entry *mk_team(const char *id, const char *org, const char *name, int64_t ver)
{
    size_t extra = strlen(name) + 1;
    tn_entry *e = tn_new(TN_TEAM, extra);
    assert_non_null(e);
    tn_team *t = (tn_team *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    set_id(&t->org_id, org);
    t->name = bump_str(&b, name);
    t->budget_mode = TN_BUDGET_TOKENS;
    t->tokens_per_credit = 10000;
    e->version = ver;
    return e;
}

static tn_entry *mk_key_lists(const char *id, const uint8_t sha[CRYPTO_SHA256_LEN],
                              const char *alias, int64_t ver, const char *const *models,
                              size_t nmodels, const char *const *groups, size_t ngroups)
{
    const char *prefix = "tg-AbCd12";
    size_t extra = strlen(prefix) + strlen(alias) + strlen("30d") + 3 + strs_size(models, nmodels) +
                   strs_size(groups, ngroups);
    tn_entry *e = tn_new(TN_KEY, extra);
    assert_non_null(e);
    tn_key *k = (tn_key *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    memcpy(k->sha256, sha, CRYPTO_SHA256_LEN);
    k->prefix = bump_str(&b, prefix);
    k->alias = bump_str(&b, alias);
    k->budget_duration = bump_str(&b, "30d");
    set_id(&k->team_id, "team-1");
    k->models = bump_strs(&b, models, nmodels);
    k->nmodels = nmodels;
    k->groups = bump_strs(&b, groups, ngroups);
    k->ngroups = ngroups;
    k->rpm = 60;
    k->max_budget_nano = -1;
    e->version = ver;
    return e;
}

static tn_entry *mk_key(const char *id, unsigned seed, int64_t ver)
{
    uint8_t sha[CRYPTO_SHA256_LEN];
    digest(sha, seed);
    return mk_key_lists(id, sha, id, ver, NULL, 0, NULL, 0);
}

static tn_entry *mk_alias(const char *id, const char *name, const char *group, int64_t ver)
{
    const char *prov = "openai", *model = "gpt-4o-2024-08-06";
    size_t extra = strlen(name) + (group ? strlen(group) : 0) + 2 + 8 + 1 * sizeof(tn_route) +
                   strlen(prov) + strlen(model) + 2;
    tn_entry *e = tn_new(TN_ALIAS, extra);
    assert_non_null(e);
    tn_alias *a = (tn_alias *)e;
    bump b = {tn_extra(e), extra};
    tn_route *rv = bump_array(&b, 1, sizeof(tn_route));
    set_id(&e->id, id);
    a->name = bump_str(&b, name);
    a->access_group = bump_str(&b, group);
    rv[0].provider = bump_str(&b, prov);
    rv[0].model = bump_str(&b, model);
    rv[0].weight = 1;
    a->routes = rv;
    a->nroutes = 1;
    a->price_input_nano = -1;
    a->price_output_nano = -1;
    a->price_cached_nano = -1;
    e->version = ver;
    return e;
}

static tn_entry *mk_secret(tn_kind kind, const char *id, const char *scope, bool scope_is_key,
                           const char *provider, const char *secret, int64_t ver)
{
    size_t slen = strlen(secret);
    size_t extra = strlen(provider) + 1 + slen + 1;
    tn_entry *e = tn_new(kind, extra);
    assert_non_null(e);
    tn_secret *s = (tn_secret *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    set_id(&s->scope_id, scope);
    s->scope_is_key = scope_is_key;
    s->provider = bump_str(&b, provider);
    s->secret = bump_str(&b, secret);
    s->secret_len = slen;
    e->version = ver;
    return e;
}

static tn_entry *mk_cred(const char *id, const char *org, const char *provider, const char *secret,
                         int64_t ver)
{
    return mk_secret(TN_CRED, id, org, false, provider, secret, ver);
}

static tn_entry *mk_admin(const char *id, unsigned seed, const char *name, int64_t ver)
{
    size_t extra = strlen(name) + 1;
    tn_entry *e = tn_new(TN_ADMIN, extra);
    assert_non_null(e);
    tn_admin *a = (tn_admin *)e;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    digest(a->sha256, seed);
    a->name = bump_str(&b, name);
    a->role = TN_ROLE_OWNER;
    e->version = ver;
    return e;
}

static tn_entry *mk_price(const char *id, const char *provider, const char *model, int64_t in,
                          int64_t ver)
{
    size_t extra = strlen(provider) + strlen(model) + 2;
    tn_entry *e = tn_new(TN_PRICE, extra);
    assert_non_null(e);
    price_entry *pe = &((tn_price *)e)->price;
    bump b = {tn_extra(e), extra};
    set_id(&e->id, id);
    pe->provider = bump_str(&b, provider);
    pe->model = bump_str(&b, model);
    pe->input = in;
    pe->output = 2 * in;
    e->version = ver;
    return e;
}

static void put_ok(tenants *c, tn_entry *e, uint64_t gen)
{
    assert_int_equal(tenants_put(c, e, gen), 0);
}

static const tn_key *key_by_seed(tenants *c, unsigned seed)
{
    uint8_t sha[CRYPTO_SHA256_LEN];
    digest(sha, seed);
    return tenants_key(c, sha);
}

static const tn_alias *alias_by_name(tenants *c, const char *name)
{
    return tenants_alias(c, name, strlen(name));
}

static tenants_stats stats(const tenants *c)
{
    tenants_stats st;
    tenants_stats_get(c, &st);
    return st;
}

/* UUID-looking id number n. */
static void uuid(char out[TN_ID_LEN + 1], unsigned n)
{
    snprintf(out, TN_ID_LEN + 1, "%08x-0000-4000-8000-%012x", n * 2654435761u, n);
    assert_int_equal(strlen(out), TN_ID_LEN);
}

/* ------------------------------------------------------------ tests */

static void test_kind_tables(void **state)
{
    (void)state;
    static const char *const want[TN_NKINDS] = {
        "teams", "virtual_keys", "model_aliases", "provider_credentials", "byok_keys", "admin_keys", "price_overrides",
    };
    for (int k = 0; k < TN_NKINDS; k++) {
        assert_string_equal(tn_kind_table((tn_kind)k), want[k]);
        assert_int_equal(tn_kind_from_table(want[k], strlen(want[k])), k);
    }
    assert_string_equal(tn_kind_table(TN_NKINDS), "?");
    assert_string_equal(tn_kind_table((tn_kind)-1), "?");
    assert_int_equal(tn_kind_from_table("users", 5), -1);
    assert_int_equal(tn_kind_from_table("", 0), -1);
    assert_int_equal(tn_kind_from_table("team", 4), -1);             /* a prefix */
    assert_int_equal(tn_kind_from_table("teamsx", 6), -1);           /* longer */
    assert_int_equal(tn_kind_from_table("TEAMS", 5), -1);            /* case matters */
    assert_int_equal(tn_kind_from_table("byok_keys,x", 9), TN_BYOK); /* length-bounded */
}

static void test_new_extra_refs(void **state)
{
    (void)state;
    static const size_t sizes[TN_NKINDS] = {
        sizeof(tn_team),   sizeof(tn_key),    sizeof(tn_alias),
        sizeof(tn_secret), sizeof(tn_secret), sizeof(tn_admin),
    };
    for (int k = 0; k < TN_NKINDS; k++) {
        tn_entry *e = tn_new((tn_kind)k, 100);
        assert_non_null(e);
        assert_int_equal(e->refs, 1);
        assert_int_equal(e->kind, k);
        assert_int_equal(e->version, 0);
        assert_int_equal(e->gen, 0);
        assert_false(e->cached);
        assert_string_equal(e->id.s, "");
        char *x = tn_extra(e);
        assert_true(x >= (char *)e + sizes[k]); /* past the kind's struct */
        assert_int_equal((uintptr_t)x % 8, 0);
        for (size_t i = 0; i < 100; i++)
            assert_int_equal(x[i], 0); /* zeroed, and all 100 bytes are ours (ASan) */
        memset(x, 0xa5, 100);
        assert_ptr_equal(tn_ref(e), e);
        assert_int_equal(e->refs, 2);
        tn_unref(e);
        assert_int_equal(e->refs, 1);
        tn_unref(e);
    }
    tn_entry *k = tn_new(TN_KEY, 0);
    assert_non_null(k);
    tn_unref(k);
    assert_null(tn_new(TN_NKINDS, 0));
    assert_null(tn_new((tn_kind)-1, 0));
    assert_null(tn_ref(NULL));
    tn_unref(NULL);
}

static void test_put_get_every_kind(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    assert_non_null(c);
    tn_entry *team = mk_team("team-1", "org-1", "Research", 100);
    tn_entry *key = mk_key("key-1", 1, 101);
    tn_entry *alias = mk_alias("alias-1", "gpt-4o", "premium", 102);
    tn_entry *cred = mk_cred("cred-1", "org-1", "openai", "sk-org-secret", 103);
    tn_entry *byok = mk_secret(TN_BYOK, "byok-1", "team-1", false, "anthropic", "sk-ant", 104);
    tn_entry *admin = mk_admin("admin-1", 2, "root", 105);
    tn_entry *price = mk_price("price-1", "openai", "gpt-4o", 2500000000, 106);
    tn_entry *all[TN_NKINDS] = {team, key, alias, cred, byok, admin, price};
    for (int k = 0; k < TN_NKINDS; k++)
        put_ok(c, all[k], 7);

    for (int k = 0; k < TN_NKINDS; k++) {
        const tn_entry *e = tenants_get(c, (tn_kind)k, all[k]->id.s);
        assert_ptr_equal(e, all[k]);
        assert_int_equal(e->kind, k);
        assert_int_equal(e->gen, 7);
        assert_int_equal(e->version, 100 + k);
        assert_true(e->cached);
        assert_int_equal(e->refs, 1); /* the cache's own */
        /* the same id under another kind is not there */
        assert_null(tenants_get(c, (tn_kind)((k + 1) % TN_NKINDS), all[k]->id.s));
    }
    assert_null(tenants_get(c, TN_KEY, "key-2"));
    assert_null(tenants_get(c, TN_KEY, "key-"));
    assert_null(tenants_get(c, TN_NKINDS, "key-1"));

    const tn_team *t = tenants_team(c, "team-1");
    assert_ptr_equal(t, team);
    assert_string_equal(t->name, "Research");
    assert_string_equal(t->org_id.s, "org-1");
    assert_int_equal(t->budget_mode, TN_BUDGET_TOKENS);

    const tn_key *k = key_by_seed(c, 1);
    assert_ptr_equal(k, key);
    assert_string_equal(k->alias, "key-1");
    assert_string_equal(k->prefix, "tg-AbCd12");
    assert_string_equal(k->budget_duration, "30d");
    assert_string_equal(k->team_id.s, "team-1");

    const tn_alias *a = alias_by_name(c, "gpt-4o");
    assert_ptr_equal(a, alias);
    assert_string_equal(a->access_group, "premium");
    assert_int_equal(a->nroutes, 1);
    assert_string_equal(a->routes[0].provider, "openai");
    assert_string_equal(a->routes[0].model, "gpt-4o-2024-08-06");

    const tn_secret *s = tenants_cred(c, "org-1", "openai");
    assert_ptr_equal(s, cred);
    assert_int_equal(s->secret_len, strlen("sk-org-secret"));
    assert_memory_equal(s->secret, "sk-org-secret", s->secret_len);

    s = tenants_byok(c, false, "team-1", "anthropic");
    assert_ptr_equal(s, byok);
    assert_memory_equal(s->secret, "sk-ant", 6);

    uint8_t sha[CRYPTO_SHA256_LEN];
    digest(sha, 2);
    const tn_admin *ad = tenants_admin(c, sha);
    assert_ptr_equal(ad, admin);
    assert_string_equal(ad->name, "root");
    assert_int_equal(ad->role, TN_ROLE_OWNER);

    const tn_price *pr = tenants_price(c, "openai", "gpt-4o");
    assert_ptr_equal(pr, price);
    assert_int_equal(pr->price.input, 2500000000);
    assert_null(tenants_price(c, "openai", "gpt-4o-mini"));
    assert_null(tenants_price(c, "openaigpt-4o", ""));  /* the parts are kept apart */
    assert_null(tenants_price(c, "anthropic", "gpt-4o"));

    tenants_stats st = stats(c);
    for (int i = 0; i < TN_NKINDS; i++)
        assert_int_equal(st.entries[i], 1);
    assert_int_equal(st.puts, TN_NKINDS);
    assert_int_equal(st.dels, 0);
    assert_int_equal(st.stale, 0);
    tenants_free(c);
}

static void test_digest_lookups(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    uint8_t kd[CRYPTO_SHA256_LEN], ad[CRYPTO_SHA256_LEN], x[CRYPTO_SHA256_LEN];
    digest(kd, 10);
    digest(ad, 20);
    assert_null(tenants_key(c, kd)); /* empty cache */
    assert_null(tenants_admin(c, ad));
    put_ok(c, mk_key_lists("key-10", kd, "k", 1, NULL, 0, NULL, 0), 1);
    put_ok(c, mk_admin("admin-20", 20, "ops", 1), 1);

    assert_non_null(tenants_key(c, kd));
    assert_non_null(tenants_admin(c, ad));
    /* the kinds have separate indexes */
    assert_null(tenants_key(c, ad));
    assert_null(tenants_admin(c, kd));

    /* every single-bit change of either digest misses */
    for (size_t bit = 0; bit < CRYPTO_SHA256_LEN * 8; bit++) {
        memcpy(x, kd, sizeof x);
        x[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        if (tenants_key(c, x))
            fail_msg("key digest with bit %zu flipped still found", bit);
        memcpy(x, ad, sizeof x);
        x[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        if (tenants_admin(c, x))
            fail_msg("admin digest with bit %zu flipped still found", bit);
    }
    tenants_stats st = stats(c);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 4 + 2 * 256);

    tenants_free(c);
}

static void test_team_lookup(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    assert_null(tenants_team(c, "team-1"));
    put_ok(c, mk_team("team-1", "org-1", "one", 1), 1);
    put_ok(c, mk_team("team-2", "org-1", "two", 1), 1);
    put_ok(c, mk_team("team-10", "org-2", "ten", 1), 1);
    assert_string_equal(tenants_team(c, "team-1")->name, "one");
    assert_string_equal(tenants_team(c, "team-2")->name, "two");
    assert_string_equal(tenants_team(c, "team-10")->name, "ten");
    assert_null(tenants_team(c, "team-"));
    assert_null(tenants_team(c, "team-100"));
    assert_null(tenants_team(c, "team-3"));
    assert_null(tenants_team(c, ""));
    assert_null(tenants_team(c, "org-1"));
    /* a key with the same id string is not a team */
    put_ok(c, mk_key("team-3", 3, 1), 1);
    assert_null(tenants_team(c, "team-3"));
    tenants_free(c);
}

static void test_alias_exact_length(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    assert_null(alias_by_name(c, "gpt-4"));
    put_ok(c, mk_alias("a-1", "gpt-4", NULL, 1), 1);
    assert_null(alias_by_name(c, "gpt"));
    assert_null(alias_by_name(c, "gpt-"));
    assert_null(alias_by_name(c, "gpt-4o"));
    assert_null(alias_by_name(c, "GPT-4"));
    assert_null(alias_by_name(c, ""));
    const tn_alias *a = alias_by_name(c, "gpt-4");
    assert_non_null(a);
    assert_null(a->access_group);
    /* the name is length-bounded, not NUL-terminated (a slice of a body) */
    assert_ptr_equal(tenants_alias(c, "gpt-4o-mini", 5), a);
    assert_ptr_equal(tenants_alias(c, "\"model\":\"gpt-4\"" + 9, 5), a);
    assert_null(tenants_alias(c, "gpt-4", 3));

    put_ok(c, mk_alias("a-2", "gpt", "cheap", 1), 1);
    put_ok(c, mk_alias("a-3", "gpt-4o", NULL, 1), 1);
    assert_string_equal(alias_by_name(c, "gpt")->e.id.s, "a-2");
    assert_string_equal(alias_by_name(c, "gpt-4")->e.id.s, "a-1");
    assert_string_equal(alias_by_name(c, "gpt-4o")->e.id.s, "a-3");
    assert_string_equal(tenants_alias(c, "gpt-4", 3)->e.id.s, "a-2");
    assert_null(alias_by_name(c, "gp"));
    /* an alias name does not answer the id index and vice versa */
    assert_null(alias_by_name(c, "a-1"));
    assert_null(tenants_get(c, TN_ALIAS, "gpt"));
    tenants_free(c);
}

/* Many names in a small table share chains: no proper prefix (or
 * extension) of a cached name finds anything, whatever its chain holds. */
static void test_alias_prefixes_miss(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    char id[16], name[64];
    enum { N = 60 };
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "al-%d", i);
        snprintf(name, sizeof name, "vendor-%d/model-large-latest", i);
        put_ok(c, mk_alias(id, name, NULL, 1), 1);
    }
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "vendor-%d/model-large-latest", i);
        size_t len = strlen(name);
        snprintf(id, sizeof id, "al-%d", i);
        const tn_alias *a = tenants_alias(c, name, len);
        if (!a || strcmp(a->e.id.s, id) != 0)
            fail_msg("%s not found", name);
        for (size_t n = 0; n < len; n++)
            if ((a = tenants_alias(c, name, n)) != NULL)
                fail_msg("\"%.*s\" found %s", (int)n, name, a->name);
        memcpy(name + len, "-x", 3);
        if ((a = tenants_alias(c, name, len + 2)) != NULL)
            fail_msg("\"%s\" found %s", name, a->name);
    }
    /* the same for composed keys: org+provider prefixes */
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "cr-%d", i);
        snprintf(name, sizeof name, "org-%d", i);
        put_ok(c, mk_cred(id, name, "openai-compatible", "s", 1), 1);
    }
    for (int i = 0; i < N; i++) {
        static const char prov[] = "openai-compatible";
        char p[sizeof prov];
        snprintf(name, sizeof name, "org-%d", i);
        assert_non_null(tenants_cred(c, name, prov));
        for (size_t n = 0; n + 1 < sizeof prov; n++) {
            memcpy(p, prov, n);
            p[n] = '\0';
            if (tenants_cred(c, name, p))
                fail_msg("cred %s/%s found", name, p);
        }
        if (i >= 10) { /* org-1 is a prefix of org-12: each finds its own */
            name[strlen(name) - 1] = '\0';
            const tn_secret *s = tenants_cred(c, name, prov);
            if (!s || strcmp(s->scope_id.s, name) != 0)
                fail_msg("cred %s/%s found %s", name, prov, s ? s->scope_id.s : "nothing");
        }
    }
    tenants_free(c);
}

static void test_cred_lookup(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    assert_null(tenants_cred(c, "org-a", "openai"));
    put_ok(c, mk_cred("c-1", "org-a", "openai", "sk-a-oai", 1), 1);
    put_ok(c, mk_cred("c-2", "org-a", "anthropic", "sk-a-ant", 1), 1);
    put_ok(c, mk_cred("c-3", "org-b", "openai", "sk-b-oai", 1), 1);
    /* scope and provider do not run together: "ab"+"c" is not "a"+"bc" */
    put_ok(c, mk_cred("c-4", "ab", "c", "sk-ab-c", 1), 1);
    put_ok(c, mk_cred("c-5", "a", "bc", "sk-a-bc", 1), 1);

    assert_string_equal(tenants_cred(c, "org-a", "openai")->e.id.s, "c-1");
    assert_string_equal(tenants_cred(c, "org-a", "anthropic")->e.id.s, "c-2");
    assert_string_equal(tenants_cred(c, "org-b", "openai")->e.id.s, "c-3");
    assert_string_equal(tenants_cred(c, "ab", "c")->e.id.s, "c-4");
    assert_string_equal(tenants_cred(c, "a", "bc")->e.id.s, "c-5");
    assert_null(tenants_cred(c, "org-b", "anthropic"));
    assert_null(tenants_cred(c, "org-c", "openai"));
    assert_null(tenants_cred(c, "org-a", "openai2"));
    assert_null(tenants_cred(c, "org-a", "open"));
    assert_null(tenants_cred(c, "org-", "openai"));
    assert_null(tenants_cred(c, "abc", ""));
    assert_null(tenants_cred(c, "", "abc"));
    assert_null(tenants_cred(c, "c-1", "openai")); /* the id is not the scope */

    /* a BYOK key for a team whose id equals an org's does not answer cred */
    put_ok(c, mk_secret(TN_BYOK, "b-1", "org-z", false, "openai", "sk-byok", 1), 1);
    assert_null(tenants_cred(c, "org-z", "openai"));
    assert_null(tenants_byok(c, false, "org-a", "openai"));

    /* a lookup key too long to compose misses instead of overflowing */
    char longp[400];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    assert_null(tenants_cred(c, "org-a", longp));
    assert_null(tenants_byok(c, true, "org-a", longp));
    tenants_free(c);
}

static void test_byok_scopes(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    const char *x = "11111111-2222-4333-8444-555555555555";
    assert_null(tenants_byok(c, true, x, "openai"));
    put_ok(c, mk_secret(TN_BYOK, "b-key", x, true, "openai", "sk-key-scope", 1), 1);
    const tn_secret *s = tenants_byok(c, true, x, "openai");
    assert_non_null(s);
    assert_string_equal(s->e.id.s, "b-key");
    assert_true(s->scope_is_key);
    assert_null(tenants_byok(c, false, x, "openai")); /* key scope does not answer team scope */
    assert_null(tenants_byok(c, true, x, "anthropic"));

    put_ok(c, mk_secret(TN_BYOK, "b-team", x, false, "openai", "sk-team-scope", 1), 1);
    s = tenants_byok(c, false, x, "openai");
    assert_string_equal(s->e.id.s, "b-team");
    assert_false(s->scope_is_key);
    assert_memory_equal(s->secret, "sk-team-scope", s->secret_len);
    /* the team-scope entry, put last, does not shadow the key-scope one */
    s = tenants_byok(c, true, x, "openai");
    assert_string_equal(s->e.id.s, "b-key");
    assert_memory_equal(s->secret, "sk-key-scope", s->secret_len);
    assert_null(tenants_cred(c, x, "openai")); /* neither is a credential */

    tenants_del(c, TN_BYOK, "b-key");
    assert_null(tenants_byok(c, true, x, "openai"));
    assert_string_equal(tenants_byok(c, false, x, "openai")->e.id.s, "b-team");
    tenants_del(c, TN_BYOK, "b-team");
    assert_null(tenants_byok(c, false, x, "openai"));

    /* and the other way round: team scope first, then key scope */
    put_ok(c, mk_secret(TN_BYOK, "b-team", x, false, "openai", "t", 2), 1);
    assert_null(tenants_byok(c, true, x, "openai"));
    put_ok(c, mk_secret(TN_BYOK, "b-key", x, true, "openai", "k", 2), 1);
    assert_string_equal(tenants_byok(c, false, x, "openai")->e.id.s, "b-team");
    assert_string_equal(tenants_byok(c, true, x, "openai")->e.id.s, "b-key");
    assert_int_equal(stats(c).entries[TN_BYOK], 2);
    tenants_free(c);
}

static void test_replace_newer(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    /* a key whose digest changes (a rotated key keeps its row) */
    put_ok(c, mk_key("key-1", 1, 100), 1);
    tn_entry *k2 = mk_key("key-1", 2, 200);
    put_ok(c, k2, 1);
    assert_null(key_by_seed(c, 1));
    assert_ptr_equal(key_by_seed(c, 2), k2);
    assert_ptr_equal(tenants_get(c, TN_KEY, "key-1"), k2);

    /* an alias renamed */
    put_ok(c, mk_alias("al-1", "old-name", NULL, 100), 1);
    put_ok(c, mk_alias("al-1", "new-name", NULL, 101), 1);
    assert_null(alias_by_name(c, "old-name"));
    assert_string_equal(alias_by_name(c, "new-name")->e.id.s, "al-1");

    /* a credential moved to another provider */
    put_ok(c, mk_cred("cr-1", "org-1", "openai", "s1", 100), 1);
    put_ok(c, mk_cred("cr-1", "org-1", "azure", "s2", 101), 1);
    assert_null(tenants_cred(c, "org-1", "openai"));
    assert_memory_equal(tenants_cred(c, "org-1", "azure")->secret, "s2", 2);

    /* a BYOK key moved from team scope to key scope */
    put_ok(c, mk_secret(TN_BYOK, "by-1", "scope-1", false, "openai", "s1", 100), 1);
    put_ok(c, mk_secret(TN_BYOK, "by-1", "scope-1", true, "openai", "s2", 101), 1);
    assert_null(tenants_byok(c, false, "scope-1", "openai"));
    assert_string_equal(tenants_byok(c, true, "scope-1", "openai")->e.id.s, "by-1");

    /* an admin key rotated */
    put_ok(c, mk_admin("ad-1", 50, "ops", 100), 1);
    put_ok(c, mk_admin("ad-1", 51, "ops2", 101), 1);
    uint8_t sha[CRYPTO_SHA256_LEN];
    digest(sha, 50);
    assert_null(tenants_admin(c, sha));
    digest(sha, 51);
    assert_string_equal(tenants_admin(c, sha)->name, "ops2");

    /* a team renamed */
    put_ok(c, mk_team("t-1", "org-1", "before", 100), 1);
    put_ok(c, mk_team("t-1", "org-1", "after", 101), 1);
    assert_string_equal(tenants_team(c, "t-1")->name, "after");

    /* a price moved to another model */
    put_ok(c, mk_price("pr-1", "openai", "gpt-4o", 1, 100), 1);
    put_ok(c, mk_price("pr-1", "openai", "gpt-4.1", 2, 101), 1);
    assert_null(tenants_price(c, "openai", "gpt-4o"));
    assert_int_equal(tenants_price(c, "openai", "gpt-4.1")->price.input, 2);

    tenants_stats st = stats(c);
    for (int k = 0; k < TN_NKINDS; k++)
        assert_int_equal(st.entries[k], 1);
    assert_int_equal(st.puts, 14);
    assert_int_equal(st.stale, 0);
    tenants_free(c);
}

static void test_replace_older_and_equal(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    tn_entry *k10 = mk_key("key-1", 1, 1000);
    put_ok(c, k10, 1);
    /* older: ignored, the newer stays and answers */
    assert_int_equal(tenants_put(c, mk_key("key-1", 2, 999), 1), 1);
    assert_ptr_equal(tenants_get(c, TN_KEY, "key-1"), k10);
    assert_ptr_equal(key_by_seed(c, 1), k10);
    assert_null(key_by_seed(c, 2));
    assert_int_equal(k10->refs, 1);
    tenants_stats st = stats(c);
    assert_int_equal(st.stale, 1);
    assert_int_equal(st.puts, 1);
    assert_int_equal(st.entries[TN_KEY], 1);

    assert_int_equal(tenants_put(c, mk_key("key-1", 3, INT64_MIN), 1), 1);
    assert_int_equal(stats(c).stale, 2);

    /* equal version: replaces */
    tn_entry *eq = mk_key("key-1", 4, 1000);
    assert_int_equal(tenants_put(c, eq, 1), 0);
    assert_ptr_equal(tenants_get(c, TN_KEY, "key-1"), eq);
    assert_null(key_by_seed(c, 1));
    assert_ptr_equal(key_by_seed(c, 4), eq);
    st = stats(c);
    assert_int_equal(st.stale, 2);
    assert_int_equal(st.puts, 2);
    assert_int_equal(st.entries[TN_KEY], 1);

    /* older for a kind without a second index, and for a secret */
    put_ok(c, mk_team("t-1", "o", "new", 5), 1);
    assert_int_equal(tenants_put(c, mk_team("t-1", "o", "old", 4), 1), 1);
    assert_string_equal(tenants_team(c, "t-1")->name, "new");
    put_ok(c, mk_cred("c-1", "o", "openai", "new-secret", 5), 1);
    assert_int_equal(tenants_put(c, mk_cred("c-1", "o", "openai", "old-secret", 4), 1), 1);
    assert_memory_equal(tenants_cred(c, "o", "openai")->secret, "new-secret", 10);
    assert_int_equal(stats(c).stale, 4);
    tenants_free(c);
}

static void test_del(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    /* deleting from an empty cache, of every kind, and a bad kind */
    for (int k = 0; k < TN_NKINDS; k++)
        tenants_del(c, (tn_kind)k, "nothing");
    tenants_del(c, TN_NKINDS, "nothing");
    assert_int_equal(stats(c).dels, 0);

    put_ok(c, mk_key("key-1", 1, 1), 1);
    put_ok(c, mk_key("key-2", 2, 1), 1);
    put_ok(c, mk_alias("al-1", "gpt-4o", NULL, 1), 1);
    put_ok(c, mk_cred("cr-1", "org", "openai", "s", 1), 1);
    put_ok(c, mk_team("t-1", "org", "team", 1), 1);

    tenants_del(c, TN_KEY, "key-1");
    assert_null(tenants_get(c, TN_KEY, "key-1"));
    assert_null(key_by_seed(c, 1));
    assert_non_null(key_by_seed(c, 2));
    tenants_del(c, TN_KEY, "key-1"); /* again: harmless */
    tenants_del(c, TN_KEY, "key-3"); /* unknown */
    tenants_del(c, TN_KEY, "al-1");  /* right id, wrong kind */
    assert_non_null(alias_by_name(c, "gpt-4o"));
    tenants_del(c, TN_ALIAS, "al-1");
    assert_null(alias_by_name(c, "gpt-4o"));
    assert_null(tenants_get(c, TN_ALIAS, "al-1"));
    tenants_del(c, TN_CRED, "cr-1");
    assert_null(tenants_cred(c, "org", "openai"));
    tenants_del(c, TN_TEAM, "t-1");
    assert_null(tenants_team(c, "t-1"));

    tenants_stats st = stats(c);
    assert_int_equal(st.dels, 4);
    assert_int_equal(st.entries[TN_KEY], 1);
    assert_int_equal(st.entries[TN_ALIAS], 0);
    assert_int_equal(st.entries[TN_CRED], 0);
    assert_int_equal(st.entries[TN_TEAM], 0);

    /* a deleted id can be put again, even with an older version */
    put_ok(c, mk_key("key-1", 1, 0), 2);
    assert_string_equal(key_by_seed(c, 1)->e.id.s, "key-1");
    tenants_free(c);
}

static void test_refs_survive(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    tn_entry *old = mk_key("key-1", 1, 1);
    put_ok(c, old, 1);
    /* a request holds the caller's key */
    const tn_key *k = key_by_seed(c, 1);
    assert_ptr_equal(tn_ref((tn_entry *)&k->e), old);
    assert_int_equal(old->refs, 2);

    /* replaced: the cache lets go, the request keeps a whole entry */
    tn_entry *nw = mk_key("key-1", 2, 2);
    put_ok(c, nw, 1);
    assert_false(old->cached);
    assert_int_equal(old->refs, 1);
    assert_string_equal(((tn_key *)old)->alias, "key-1");
    assert_string_equal(((tn_key *)old)->prefix, "tg-AbCd12");

    /* the new entry is held too, then deleted */
    tn_ref(nw);
    tenants_del(c, TN_KEY, "key-1");
    assert_false(nw->cached);
    assert_int_equal(nw->refs, 1);

    /* a third, still cached when the cache is freed */
    tn_entry *third = mk_team("team-1", "org", "kept", 1);
    put_ok(c, third, 1);
    tn_ref(third);
    assert_int_equal(third->refs, 2);
    tenants_free(c);
    assert_false(third->cached);
    assert_int_equal(third->refs, 1);
    assert_string_equal(((tn_team *)third)->name, "kept");
    assert_string_equal(((tn_key *)old)->budget_duration, "30d");
    uint8_t sha[CRYPTO_SHA256_LEN];
    digest(sha, 2);
    assert_memory_equal(((tn_key *)nw)->sha256, sha, CRYPTO_SHA256_LEN);

    /* the last unrefs free them (ASan: no leak, no double free) */
    tn_unref(old);
    tn_unref(nw);
    tn_unref(third);
}

static void test_refs_several_holders(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    tn_entry *e = mk_alias("al-1", "gpt-4o", NULL, 1);
    put_ok(c, e, 1);
    tn_ref(e);
    tn_ref(e);
    assert_int_equal(e->refs, 3);
    tenants_del(c, TN_ALIAS, "al-1");
    assert_int_equal(e->refs, 2);
    tn_unref(e);
    assert_string_equal(((tn_alias *)e)->name, "gpt-4o");
    tn_unref(e);
    tenants_free(c);
}

static void test_secrets_until_last_unref(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    tn_entry *cred = mk_cred("c-1", "org-1", "openai", "sk-live-0123456789", 1);
    tn_entry *byok = mk_secret(TN_BYOK, "b-1", "key-1", true, "openai", "sk-byok-abc", 1);
    put_ok(c, cred, 1);
    put_ok(c, byok, 1);
    const tn_secret *s = tenants_cred(c, "org-1", "openai");
    tn_ref((tn_entry *)&s->e);
    s = tenants_byok(c, true, "key-1", "openai");
    tn_ref((tn_entry *)&s->e);

    /* the cred replaced (rotated), the BYOK key deleted */
    put_ok(c, mk_cred("c-1", "org-1", "openai", "sk-live-rotated", 2), 1);
    tenants_del(c, TN_BYOK, "b-1");
    const tn_secret *sc = (const tn_secret *)cred, *sb = (const tn_secret *)byok;
    assert_int_equal(sc->secret_len, strlen("sk-live-0123456789"));
    assert_memory_equal(sc->secret, "sk-live-0123456789", sc->secret_len);
    assert_memory_equal(sb->secret, "sk-byok-abc", sb->secret_len);
    assert_memory_equal(tenants_cred(c, "org-1", "openai")->secret, "sk-live-rotated", 15);

    tenants_free(c);
    assert_memory_equal(sc->secret, "sk-live-0123456789", sc->secret_len);
    assert_memory_equal(sb->secret, "sk-byok-abc", sb->secret_len);
    assert_string_equal(sc->provider, "openai");

    /* an extra reference dropped early does not wipe it */
    tn_ref(cred);
    tn_unref(cred);
    assert_memory_equal(sc->secret, "sk-live-0123456789", sc->secret_len);
    tn_unref(cred);
    tn_unref(byok);

    /* a secret-less entry (NULL secret) frees fine */
    tn_entry *empty = tn_new(TN_CRED, 0);
    assert_non_null(empty);
    tn_unref(empty);
}

static void test_sweep_generations(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    char id[16];
    assert_int_equal(tenants_sweep(c, TN_TEAM, 1), 0); /* empty */
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "team-%d", i);
        put_ok(c, mk_team(id, "org", id, 10), 1);
        snprintf(id, sizeof id, "key-%d", i);
        put_ok(c, mk_key(id, (unsigned)i, 10), 1);
    }
    assert_int_equal(tenants_sweep(c, TN_TEAM, 1), 0); /* all current */

    /* full load gen 2 of teams: the even ones at the same version, team-1
     * with a stale row (ignored, but the database still has it), team-3
     * newer */
    for (int i = 0; i < 10; i += 2) {
        snprintf(id, sizeof id, "team-%d", i);
        put_ok(c, mk_team(id, "org", "reloaded", 10), 2);
    }
    assert_int_equal(tenants_put(c, mk_team("team-1", "org", "stale", 9), 2), 1);
    assert_int_equal(tenants_get(c, TN_TEAM, "team-1")->gen, 2);
    assert_string_equal(tenants_team(c, "team-1")->name, "team-1");
    put_ok(c, mk_team("team-3", "org", "newer", 11), 2);
    /* a stale put of an older generation never lowers the gen */
    assert_int_equal(tenants_put(c, mk_team("team-1", "org", "stale", 8), 1), 1);
    assert_int_equal(tenants_get(c, TN_TEAM, "team-1")->gen, 2);

    uint64_t dels0 = stats(c).dels;
    assert_int_equal(tenants_sweep(c, TN_TEAM, 2), 3); /* teams 5, 7, 9 */
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "team-%d", i);
        bool want = i % 2 == 0 || i == 1 || i == 3;
        if ((tenants_team(c, id) != NULL) != want)
            fail_msg("%s: %s after the sweep", id, want ? "gone" : "still there");
    }
    tenants_stats st = stats(c);
    assert_int_equal(st.entries[TN_TEAM], 7);
    assert_int_equal(st.entries[TN_KEY], 10); /* another kind: untouched */
    assert_int_equal(st.dels, dels0 + 3);
    assert_int_equal(tenants_sweep(c, TN_TEAM, 2), 0); /* again: nothing */

    /* keys: gen 3 re-puts key-4 only */
    put_ok(c, mk_key("key-4", 4, 10), 3);
    assert_int_equal(tenants_sweep(c, TN_KEY, 3), 9);
    for (unsigned i = 0; i < 10; i++)
        assert_true((key_by_seed(c, i) != NULL) == (i == 4));
    assert_int_equal(stats(c).entries[TN_KEY], 1);
    /* sweeping with an older gen removes nothing */
    assert_int_equal(tenants_sweep(c, TN_KEY, 2), 0);
    assert_int_equal(tenants_sweep(c, TN_ADMIN, 99), 0);
    tenants_free(c);
}

/* A sweep that removes many entries sharing chains (more entries than the
 * table's first size) keeps every other one findable. */
static void test_sweep_many(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    char id[TN_ID_LEN + 1];
    enum { N = 3000 };
    for (unsigned i = 0; i < N; i++) {
        uuid(id, i);
        put_ok(c, mk_key(id, i, 1), 1);
    }
    for (unsigned i = 0; i < N; i += 3) {
        uuid(id, i);
        put_ok(c, mk_key(id, i, 1), 2);
    }
    assert_int_equal(tenants_sweep(c, TN_KEY, 2), N - N / 3);
    assert_int_equal(stats(c).entries[TN_KEY], N / 3);
    for (unsigned i = 0; i < N; i++) {
        uuid(id, i);
        bool want = i % 3 == 0;
        if ((key_by_seed(c, i) != NULL) != want || (tenants_get(c, TN_KEY, id) != NULL) != want)
            fail_msg("key %u: wrong presence after the sweep", i);
    }
    tenants_free(c);
}

static void test_growth(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    char id[TN_ID_LEN + 1];
    enum { N = 20000 };
    for (unsigned i = 0; i < N; i++) {
        uuid(id, i);
        put_ok(c, mk_key(id, i, 1), 1);
    }
    assert_int_equal(stats(c).entries[TN_KEY], N);
    for (unsigned i = 0; i < N; i++) {
        uuid(id, i);
        const tn_key *k = key_by_seed(c, i);
        if (!k || strcmp(k->e.id.s, id) != 0)
            fail_msg("key %u not found by digest after growth", i);
        if (tenants_get(c, TN_KEY, id) != &k->e)
            fail_msg("key %u not found by id after growth", i);
    }
    for (unsigned i = 0; i < N; i += 2) {
        uuid(id, i);
        tenants_del(c, TN_KEY, id);
    }
    tenants_stats st = stats(c);
    assert_int_equal(st.entries[TN_KEY], N / 2);
    assert_int_equal(st.dels, N / 2);
    assert_int_equal(st.puts, N);
    for (unsigned i = 0; i < N; i++) {
        uuid(id, i);
        bool want = i % 2 == 1;
        if ((key_by_seed(c, i) != NULL) != want)
            fail_msg("key %u: by digest %s", i, want ? "lost" : "still there");
        if ((tenants_get(c, TN_KEY, id) != NULL) != want)
            fail_msg("key %u: by id %s", i, want ? "lost" : "still there");
    }
    /* put back after removal: found again */
    uuid(id, 0);
    put_ok(c, mk_key(id, 0, 2), 1);
    assert_non_null(key_by_seed(c, 0));
    assert_int_equal(stats(c).entries[TN_KEY], N / 2 + 1);
    tenants_free(c);
}

static void test_cred_activation_in_flight(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    put_ok(c, mk_cred("c-old", "org-1", "openai", "sk-old", 1), 1);
    put_ok(c, mk_cred("c-new", "org-1", "openai", "sk-new", 2), 1);
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-new");
    assert_int_equal(stats(c).entries[TN_CRED], 2);
    tenants_del(c, TN_CRED, "c-new");
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-old");
    tenants_del(c, TN_CRED, "c-old");
    assert_null(tenants_cred(c, "org-1", "openai"));

    /* the order of the puts decides, not the versions or ids */
    put_ok(c, mk_cred("c-new", "org-1", "openai", "sk-new", 2), 1);
    put_ok(c, mk_cred("c-old", "org-1", "openai", "sk-old", 1), 1);
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-old");
    /* the old one's deactivation arrives: the new one answers */
    tenants_del(c, TN_CRED, "c-old");
    const tn_secret *s = tenants_cred(c, "org-1", "openai");
    assert_string_equal(s->e.id.s, "c-new");
    assert_memory_equal(s->secret, "sk-new", 6);

    /* a re-put (replacement) of the other puts it in front again */
    put_ok(c, mk_cred("c-old", "org-1", "openai", "sk-old", 1), 1);
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-old");
    put_ok(c, mk_cred("c-new", "org-1", "openai", "sk-new2", 3), 1);
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-new");
    tenants_del(c, TN_CRED, "c-new");
    assert_string_equal(tenants_cred(c, "org-1", "openai")->e.id.s, "c-old");
    tenants_free(c);
}

static bool allows(const tn_key *k, const char *name, const char *group)
{
    return tn_key_allows(k, name, strlen(name), group);
}

static void test_key_allows(void **state)
{
    (void)state;
    uint8_t sha[CRYPTO_SHA256_LEN] = {0};
    static const char *const exact[] = {"gpt-4o"};
    static const char *const wild[] = {"gpt-*"};
    static const char *const star[] = {"*"};
    static const char *const groups[] = {"premium", "beta"};
    static const char *const mixed_models[] = {"claude-3", "gpt-*"};
    static const char *const mixed_groups[] = {"premium"};

    tn_entry *none = mk_key_lists("k0", sha, "k", 1, NULL, 0, NULL, 0);
    const tn_key *k = (const tn_key *)none;
    assert_true(allows(k, "gpt-4o", NULL));
    assert_true(allows(k, "anything", "premium"));
    assert_true(tn_key_allows(k, "", 0, NULL));

    tn_entry *e1 = mk_key_lists("k1", sha, "k", 1, exact, 1, NULL, 0);
    k = (const tn_key *)e1;
    assert_true(allows(k, "gpt-4o", NULL));
    assert_true(allows(k, "gpt-4o", "premium"));
    assert_false(allows(k, "gpt-4", NULL));
    assert_false(allows(k, "gpt-4o-mini", NULL));
    assert_false(allows(k, "GPT-4o", NULL));
    assert_false(allows(k, "", NULL));
    assert_true(tn_key_allows(k, "gpt-4o-mini", 6, NULL)); /* length-bounded name */
    assert_false(tn_key_allows(k, "gpt-4o", 5, NULL));

    tn_entry *e2 = mk_key_lists("k2", sha, "k", 1, wild, 1, NULL, 0);
    k = (const tn_key *)e2;
    assert_true(allows(k, "gpt-4o", NULL));
    assert_true(allows(k, "gpt-x", NULL));
    assert_false(allows(k, "gpt-", NULL)); /* the prefix alone is not a model */
    assert_false(allows(k, "gpt", NULL));
    assert_false(allows(k, "gp", NULL));
    assert_false(allows(k, "", NULL));
    assert_false(allows(k, "claude-3", NULL));
    assert_false(allows(k, "xgpt-4o", NULL));
    assert_false(tn_key_allows(k, "gpt-4o", 4, NULL));
    assert_true(tn_key_allows(k, "gpt-4o", 5, NULL));

    tn_entry *e3 = mk_key_lists("k3", sha, "k", 1, star, 1, NULL, 0);
    k = (const tn_key *)e3;
    assert_true(allows(k, "a", NULL));
    assert_true(allows(k, "claude-3", NULL));
    assert_false(allows(k, "", NULL));

    tn_entry *e4 = mk_key_lists("k4", sha, "k", 1, NULL, 0, groups, 2);
    k = (const tn_key *)e4;
    assert_true(allows(k, "gpt-4o", "premium"));
    assert_true(allows(k, "gpt-4o", "beta"));
    assert_false(allows(k, "gpt-4o", "prem"));
    assert_false(allows(k, "gpt-4o", "premium2"));
    assert_false(allows(k, "gpt-4o", ""));
    assert_false(allows(k, "gpt-4o", NULL));  /* an alias of no group */
    assert_false(allows(k, "premium", NULL)); /* a group name is not a model */

    tn_entry *e5 = mk_key_lists("k5", sha, "k", 1, mixed_models, 2, mixed_groups, 1);
    k = (const tn_key *)e5;
    assert_true(allows(k, "claude-3", NULL));
    assert_true(allows(k, "gpt-4o", NULL));
    assert_false(allows(k, "mistral", NULL));
    assert_true(allows(k, "mistral", "premium"));
    assert_false(allows(k, "mistral", "beta"));
    assert_false(allows(k, "claude-3-opus", NULL));

    tn_unref(none);
    tn_unref(e1);
    tn_unref(e2);
    tn_unref(e3);
    tn_unref(e4);
    tn_unref(e5);
}

typedef struct visits {
    int count[200];
    int other;
    int total;
} visits;

static void count_visit(const tn_entry *e, void *ud)
{
    visits *v = ud;
    int n = -1;
    v->total++;
    if (e->kind != TN_TEAM || sscanf(e->id.s, "team-%d", &n) != 1 || n < 0 || n >= 200) {
        v->other++;
        return;
    }
    v->count[n]++;
}

static void test_foreach(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    visits v;
    memset(&v, 0, sizeof v);
    tenants_foreach(c, TN_TEAM, count_visit, &v);
    assert_int_equal(v.total, 0);

    char id[16];
    for (int i = 0; i < 150; i++) {
        snprintf(id, sizeof id, "team-%d", i);
        put_ok(c, mk_team(id, "org", id, 1), 1);
    }
    for (unsigned i = 0; i < 40; i++) {
        snprintf(id, sizeof id, "team-%u", i); /* same ids, another kind */
        put_ok(c, mk_key(id, i, 1), 1);
    }
    put_ok(c, mk_team("team-7", "org", "replaced", 2), 1);
    tenants_del(c, TN_TEAM, "team-8");

    tenants_foreach(c, TN_TEAM, count_visit, &v);
    assert_int_equal(v.other, 0);
    assert_int_equal(v.total, 149);
    for (int i = 0; i < 200; i++) {
        int want = i < 150 && i != 8 ? 1 : 0;
        if (v.count[i] != want)
            fail_msg("team-%d visited %d times, want %d", i, v.count[i], want);
    }
    memset(&v, 0, sizeof v);
    tenants_foreach(c, TN_KEY, count_visit, &v);
    assert_int_equal(v.total, 40);
    assert_int_equal(v.other, 40);
    memset(&v, 0, sizeof v);
    tenants_foreach(c, TN_ADMIN, count_visit, &v);
    assert_int_equal(v.total, 0);
    tenants_free(c);
}

static void test_loaded(void **state)
{
    (void)state;
    tenants *c = tenants_new();
    assert_false(tenants_loaded(c));
    tenants_set_loaded(c, true);
    assert_true(tenants_loaded(c));
    put_ok(c, mk_team("t", "o", "n", 1), 1);
    assert_true(tenants_loaded(c));
    tenants_set_loaded(c, false);
    assert_false(tenants_loaded(c));
    tenants_free(c);
    tenants_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_tables),
        cmocka_unit_test(test_new_extra_refs),
        cmocka_unit_test(test_put_get_every_kind),
        cmocka_unit_test(test_digest_lookups),
        cmocka_unit_test(test_team_lookup),
        cmocka_unit_test(test_alias_exact_length),
        cmocka_unit_test(test_alias_prefixes_miss),
        cmocka_unit_test(test_cred_lookup),
        cmocka_unit_test(test_byok_scopes),
        cmocka_unit_test(test_replace_newer),
        cmocka_unit_test(test_replace_older_and_equal),
        cmocka_unit_test(test_del),
        cmocka_unit_test(test_refs_survive),
        cmocka_unit_test(test_refs_several_holders),
        cmocka_unit_test(test_secrets_until_last_unref),
        cmocka_unit_test(test_sweep_generations),
        cmocka_unit_test(test_sweep_many),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_cred_activation_in_flight),
        cmocka_unit_test(test_key_allows),
        cmocka_unit_test(test_foreach),
        cmocka_unit_test(test_loaded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
