/* tenants.c - the tenancy cache (see tenants.h).
 *
 * Two chained hash indexes per kind: by id (every kind) and by the kind's
 * lookup key (the digest of a key or admin key, an alias name, org +
 * provider of a credential, scope + provider of a BYOK key). Teams have
 * only the first. A put inserts at the head of its chains, so when two
 * entries briefly share a lookup key (a credential activated while the old
 * one's deactivation is still on its way) the newest answers. */
#include "billing/tenants.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TN_MIN_SLOTS 64
#define TN_LOOKUP_MAX 336 /* bytes of a composed lookup key (provider 64 + model 256) */

typedef struct tn_index {
    tn_entry **slot; /* chains */
    size_t mask;     /* slots - 1; 0 while unallocated */
    size_t n;        /* entries */
} tn_index;

struct tenants {
    tn_index by_id[TN_NKINDS];
    tn_index by_key[TN_NKINDS];
    bool loaded;
    tenants_stats st;
};

static const char *const tn_tables[TN_NKINDS] = {
    [TN_TEAM] = "teams",          [TN_KEY] = "virtual_keys",
    [TN_ALIAS] = "model_aliases", [TN_CRED] = "provider_credentials",
    [TN_BYOK] = "byok_keys",      [TN_ADMIN] = "admin_keys",
    [TN_PRICE] = "price_overrides",
};

static const size_t tn_sizes[TN_NKINDS] = {
    [TN_TEAM] = sizeof(tn_team),   [TN_KEY] = sizeof(tn_key),     [TN_ALIAS] = sizeof(tn_alias),
    [TN_CRED] = sizeof(tn_secret), [TN_BYOK] = sizeof(tn_secret), [TN_ADMIN] = sizeof(tn_admin),
    [TN_PRICE] = sizeof(tn_price),
};

const char *tn_kind_table(tn_kind k)
{
    return (unsigned)k < TN_NKINDS ? tn_tables[k] : "?";
}

int tn_kind_from_table(const char *s, size_t n)
{
    for (int k = 0; k < TN_NKINDS; k++)
        if (strlen(tn_tables[k]) == n && memcmp(tn_tables[k], s, n) == 0)
            return k;
    return -1;
}

/* ------------------------------------------------------------ entries */

/* Each entry is one allocation: the struct, padded, then its extra bytes. */
static size_t tn_head_size(tn_kind kind)
{
    return (tn_sizes[kind] + 15) & ~(size_t)15;
}

tn_entry *tn_new(tn_kind kind, size_t extra)
{
    if ((unsigned)kind >= TN_NKINDS || extra > (64u << 20))
        return NULL;
    size_t total = tn_head_size(kind) + extra;
    tn_entry *e = calloc(1, total);
    if (!e)
        return NULL;
    e->refs = 1;
    e->kind = kind;
    return e;
}

char *tn_extra(tn_entry *e)
{
    return (char *)e + tn_head_size(e->kind);
}

tn_entry *tn_ref(tn_entry *e)
{
    if (e)
        e->refs++;
    return e;
}

static void tn_free(tn_entry *e)
{
    if (e->kind == TN_CRED || e->kind == TN_BYOK) {
        tn_secret *s = (tn_secret *)e;
        if (s->secret)
            explicit_bzero((char *)s->secret, s->secret_len);
    }
    free(e);
}

void tn_unref(tn_entry *e)
{
    if (e && --e->refs == 0)
        tn_free(e);
}

/* ------------------------------------------------------------ hashing */

static uint64_t tn_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* The lookup key of an entry for its second index, into out; its length,
 * or 0 when the kind has no second index (or the key does not fit). */
static size_t tn_compose(char *out, char tag, const char *scope, const char *provider)
{
    size_t a = strlen(scope), b = strlen(provider);
    if (2 + a + b > TN_LOOKUP_MAX)
        return 0;
    out[0] = tag;
    memcpy(out + 1, scope, a);
    out[1 + a] = '\0';
    memcpy(out + 2 + a, provider, b);
    return 2 + a + b;
}

static size_t tn_lookup_key(const tn_entry *e, char *out, const void **p)
{
    switch (e->kind) {
    case TN_KEY:
        *p = ((const tn_key *)e)->sha256;
        return CRYPTO_SHA256_LEN;
    case TN_ADMIN:
        *p = ((const tn_admin *)e)->sha256;
        return CRYPTO_SHA256_LEN;
    case TN_ALIAS:
        *p = ((const tn_alias *)e)->name;
        return strlen(((const tn_alias *)e)->name);
    case TN_CRED:
    case TN_BYOK: {
        const tn_secret *s = (const tn_secret *)e;
        *p = out;
        return tn_compose(out, e->kind == TN_BYOK && s->scope_is_key ? 'k' : 't', s->scope_id.s,
                          s->provider);
    }
    case TN_PRICE: {
        const price_entry *pe = &((const tn_price *)e)->price;
        *p = out;
        return tn_compose(out, 'p', pe->provider, pe->model);
    }
    default:
        return 0;
    }
}

/* ------------------------------------------------------------ indexes */

static tn_entry **tn_next(tn_entry *e, bool second)
{
    return second ? &e->next2 : &e->next_id;
}

static uint64_t tn_entry_hash(const tn_entry *e, bool second)
{
    if (!second)
        return tn_hash(e->id.s, strlen(e->id.s));
    char buf[TN_LOOKUP_MAX];
    const void *p = NULL;
    size_t n = tn_lookup_key(e, buf, &p);
    return tn_hash(p, n);
}

static int tn_grow(tn_index *ix, bool second)
{
    size_t slots = ix->mask ? (ix->mask + 1) * 2 : TN_MIN_SLOTS;
    tn_entry **ns = calloc(slots, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    for (size_t i = 0; ix->mask && i <= ix->mask; i++) {
        tn_entry *e = ix->slot[i], *next;
        for (; e; e = next) {
            next = *tn_next(e, second);
            size_t h = (size_t)tn_entry_hash(e, second) & (slots - 1);
            *tn_next(e, second) = ns[h];
            ns[h] = e;
        }
    }
    free(ix->slot);
    ix->slot = ns;
    ix->mask = slots - 1;
    return 0;
}

static int tn_insert(tn_index *ix, tn_entry *e, bool second)
{
    if ((!ix->mask || ix->n >= ix->mask + 1) && tn_grow(ix, second) != 0 && !ix->mask)
        return -ENOMEM; /* a failed grow of a table that has slots only costs speed */
    size_t h = (size_t)tn_entry_hash(e, second) & ix->mask;
    *tn_next(e, second) = ix->slot[h];
    ix->slot[h] = e;
    ix->n++;
    return 0;
}

static void tn_remove(tn_index *ix, tn_entry *e, bool second)
{
    if (!ix->mask)
        return;
    size_t h = (size_t)tn_entry_hash(e, second) & ix->mask;
    for (tn_entry **pp = &ix->slot[h]; *pp; pp = tn_next(*pp, second)) {
        if (*pp == e) {
            *pp = *tn_next(e, second);
            *tn_next(e, second) = NULL;
            ix->n--;
            return;
        }
    }
}

static bool tn_has_second(tn_kind k)
{
    return k != TN_TEAM;
}

static tn_entry *tn_find_id(const tenants *c, tn_kind kind, const char *id)
{
    const tn_index *ix = &c->by_id[kind];
    if (!ix->mask)
        return NULL;
    size_t n = strlen(id);
    size_t h = (size_t)tn_hash(id, n) & ix->mask;
    for (tn_entry *e = ix->slot[h]; e; e = e->next_id)
        if (strcmp(e->id.s, id) == 0)
            return e;
    return NULL;
}

/* The newest entry of kind whose lookup key is p[0..n). */
static tn_entry *tn_find_key(const tenants *c, tn_kind kind, const void *p, size_t n)
{
    const tn_index *ix = &c->by_key[kind];
    if (!ix->mask)
        return NULL;
    size_t h = (size_t)tn_hash(p, n) & ix->mask;
    for (tn_entry *e = ix->slot[h]; e; e = e->next2) {
        char buf[TN_LOOKUP_MAX];
        const void *q = NULL;
        size_t m = tn_lookup_key(e, buf, &q);
        if (m != n)
            continue;
        if (kind == TN_KEY || kind == TN_ADMIN ? crypto_equal(p, q, n) : memcmp(p, q, n) == 0)
            return e;
    }
    return NULL;
}

static void tn_detach(tenants *c, tn_entry *e)
{
    tn_remove(&c->by_id[e->kind], e, false);
    if (tn_has_second(e->kind))
        tn_remove(&c->by_key[e->kind], e, true);
    e->cached = false;
    c->st.entries[e->kind]--;
    tn_unref(e);
}

/* ------------------------------------------------------------ the cache */

tenants *tenants_new(void)
{
    return calloc(1, sizeof(tenants));
}

void tenants_free(tenants *c)
{
    if (!c)
        return;
    for (int k = 0; k < TN_NKINDS; k++) {
        tn_index *ix = &c->by_id[k];
        for (size_t i = 0; ix->mask && i <= ix->mask; i++) {
            tn_entry *e = ix->slot[i], *next;
            for (; e; e = next) {
                next = e->next_id;
                e->cached = false;
                tn_unref(e);
            }
        }
        free(ix->slot);
        free(c->by_key[k].slot);
    }
    free(c);
}

int tenants_put(tenants *c, tn_entry *e, uint64_t gen)
{
    tn_entry *old = tn_find_id(c, e->kind, e->id.s);
    if (old && old->version > e->version) {
        old->gen = gen > old->gen ? gen : old->gen; /* still present in the database */
        c->st.stale++;
        tn_unref(e);
        return 1;
    }
    if (old)
        tn_detach(c, old);
    e->gen = gen;
    if (tn_insert(&c->by_id[e->kind], e, false) != 0) {
        tn_unref(e);
        return -ENOMEM;
    }
    if (tn_has_second(e->kind) && tn_insert(&c->by_key[e->kind], e, true) != 0) {
        tn_remove(&c->by_id[e->kind], e, false);
        tn_unref(e);
        return -ENOMEM;
    }
    e->cached = true;
    c->st.entries[e->kind]++;
    c->st.puts++;
    return 0;
}

void tenants_del(tenants *c, tn_kind kind, const char *id)
{
    if ((unsigned)kind >= TN_NKINDS)
        return;
    tn_entry *e = tn_find_id(c, kind, id);
    if (e) {
        tn_detach(c, e);
        c->st.dels++;
    }
}

size_t tenants_sweep(tenants *c, tn_kind kind, uint64_t gen)
{
    tn_index *ix = &c->by_id[kind];
    size_t gone = 0;
    for (size_t i = 0; ix->mask && i <= ix->mask; i++) {
        tn_entry *e = ix->slot[i], *next;
        for (; e; e = next) {
            next = e->next_id;
            if (e->gen < gen) {
                tn_detach(c, e);
                gone++;
            }
        }
    }
    c->st.dels += gone;
    return gone;
}

void tenants_set_loaded(tenants *c, bool loaded)
{
    c->loaded = loaded;
}

bool tenants_loaded(const tenants *c)
{
    return c->loaded;
}

const tn_key *tenants_key(tenants *c, const uint8_t sha256[CRYPTO_SHA256_LEN])
{
    const tn_entry *e = tn_find_key(c, TN_KEY, sha256, CRYPTO_SHA256_LEN);
    e ? c->st.hits++ : c->st.misses++;
    return (const tn_key *)e;
}

const tn_admin *tenants_admin(tenants *c, const uint8_t sha256[CRYPTO_SHA256_LEN])
{
    const tn_entry *e = tn_find_key(c, TN_ADMIN, sha256, CRYPTO_SHA256_LEN);
    e ? c->st.hits++ : c->st.misses++;
    return (const tn_admin *)e;
}

const tn_team *tenants_team(tenants *c, const char *id)
{
    return (const tn_team *)tn_find_id(c, TN_TEAM, id);
}

const tn_alias *tenants_alias(tenants *c, const char *name, size_t len)
{
    return (const tn_alias *)tn_find_key(c, TN_ALIAS, name, len);
}

const tn_secret *tenants_cred(tenants *c, const char *org_id, const char *provider)
{
    char buf[TN_LOOKUP_MAX];
    size_t n = tn_compose(buf, 't', org_id, provider);
    return n ? (const tn_secret *)tn_find_key(c, TN_CRED, buf, n) : NULL;
}

const tn_secret *tenants_byok(tenants *c, bool scope_is_key, const char *scope_id,
                              const char *provider)
{
    char buf[TN_LOOKUP_MAX];
    size_t n = tn_compose(buf, scope_is_key ? 'k' : 't', scope_id, provider);
    return n ? (const tn_secret *)tn_find_key(c, TN_BYOK, buf, n) : NULL;
}

const tn_price *tenants_price(tenants *c, const char *provider, const char *model)
{
    char buf[TN_LOOKUP_MAX];
    size_t n = tn_compose(buf, 'p', provider, model);
    return n ? (const tn_price *)tn_find_key(c, TN_PRICE, buf, n) : NULL;
}

const tn_entry *tenants_get(tenants *c, tn_kind kind, const char *id)
{
    return (unsigned)kind < TN_NKINDS ? tn_find_id(c, kind, id) : NULL;
}

static bool tn_pattern_match(const char *pat, const char *name, size_t len)
{
    size_t pl = strlen(pat);
    if (pl && pat[pl - 1] == '*')
        return len > pl - 1 && memcmp(pat, name, pl - 1) == 0;
    return pl == len && memcmp(pat, name, len) == 0;
}

bool tn_key_allows(const tn_key *key, const char *name, size_t len, const char *access_group)
{
    if (!key->nmodels && !key->ngroups)
        return true;
    for (size_t i = 0; i < key->nmodels; i++)
        if (tn_pattern_match(key->models[i], name, len))
            return true;
    for (size_t i = 0; access_group && i < key->ngroups; i++)
        if (strcmp(key->groups[i], access_group) == 0)
            return true;
    return false;
}

void tenants_foreach(tenants *c, tn_kind kind, void (*fn)(const tn_entry *e, void *ud), void *ud)
{
    const tn_index *ix = &c->by_id[kind];
    for (size_t i = 0; ix->mask && i <= ix->mask; i++)
        for (const tn_entry *e = ix->slot[i]; e; e = e->next_id)
            fn(e, ud);
}

void tenants_stats_get(const tenants *c, tenants_stats *out)
{
    *out = c->st;
}
