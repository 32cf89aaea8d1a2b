/* keys_bench.c - the request path's cost of finding the caller's key.
 *
 * What authenticate() in daemon/gateway.c does for each request, timed in
 * a loop over a realistic cache: one SHA-256 of the presented key (46
 * characters, the size of a database key), a probe of the config's keys,
 * and for a database key a probe of the tenancy cache plus its team, with
 * the references a call takes and drops. Rows:
 *
 *   sha256            the digest alone
 *   config key hit    sha256 + config probe (DB-less mode)
 *   db key hit        sha256 + config miss + cache hit + team + ref/unref
 *   unknown key       sha256 + config miss + cache miss
 *
 * Usage: tg-bench-keys [NKEYS] [ITERATIONS]   (100000, 2000000)
 * Prints ns per lookup, the median of 5 runs of ITERATIONS each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/tenants.h"
#include "crypto/crypto.h"
#include "daemon/base/buf.h"
#include "daemon/base/clock.h"
#include "daemon/config.h"

#define RUNS 5
#define NPRESENT 1024 /* distinct presented keys cycled through */

static void make_key(char out[47], unsigned i, char tag)
{
    snprintf(out, 47, "tg-%c%041u%c", tag, i, 'x');
}

static void id_of(tn_id *id, unsigned i, unsigned kind)
{
    snprintf(id->s, sizeof(id->s), "%08x-0000-4000-8000-%012x", kind, i);
}

static tenants *fill(unsigned nkeys, unsigned nteams)
{
    tenants *c = tenants_new();
    for (unsigned t = 0; t < nteams; t++) {
        tn_entry *e = tn_new(TN_TEAM, 8);
        tn_team *tm = (tn_team *)e;
        id_of(&e->id, t, 1);
        id_of(&tm->org_id, t, 2);
        tm->name = strcpy(tn_extra(e), "team");
        tenants_put(c, e, 1);
    }
    for (unsigned i = 0; i < nkeys; i++) {
        char k[47];
        tn_entry *e = tn_new(TN_KEY, 16);
        tn_key *key = (tn_key *)e;
        make_key(k, i, 'd');
        id_of(&e->id, i, 3);
        crypto_sha256(k, strlen(k), key->sha256);
        key->alias = strcpy(tn_extra(e), "alias");
        id_of(&key->team_id, i % nteams, 1);
        tenants_put(c, e, 1);
    }
    return c;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum row { ROW_SHA, ROW_CONFIG, ROW_DB, ROW_UNKNOWN, NROWS };
static const char *const row_names[NROWS] = {"sha256", "config key hit", "db key hit",
                                             "unknown key"};

static volatile uintptr_t sink;

static double run_row(enum row r, const config *cfg, tenants *c, char (*present)[47],
                      unsigned iters)
{
    uint8_t d[CRYPTO_SHA256_LEN];
    uint64_t t0 = clock_mono_ns();
    for (unsigned i = 0; i < iters; i++) {
        const char *k = present[i % NPRESENT];
        crypto_sha256(k, 46, d);
        if (r == ROW_SHA) {
            sink += d[0];
            continue;
        }
        const config_key *ck = config_find_key_digest(cfg, d);
        if (ck) {
            sink += (uintptr_t)ck;
            continue;
        }
        const tn_key *key = tenants_key(c, d);
        if (key) {
            const tn_team *team = tenants_team(c, key->team_id.s);
            tn_ref((tn_entry *)key);
            tn_ref((tn_entry *)team);
            sink += (uintptr_t)team + key->rpm;
            tn_unref((tn_entry *)team);
            tn_unref((tn_entry *)key);
        } else {
            sink += 1;
        }
    }
    return (double)(clock_mono_ns() - t0) / iters;
}

int main(int argc, char **argv)
{
    unsigned nkeys = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 100000;
    unsigned iters = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 2000000;
    if (nkeys < NPRESENT || iters < 1000) {
        fprintf(stderr, "usage: tg-bench-keys [NKEYS >= %d] [ITERATIONS >= 1000]\n", NPRESENT);
        return 2;
    }
    /* a config with 16 keys, like a small DB-less deployment */
    buf y;
    buf_init(&y, 1 << 20);
    int rc = buf_append_str(&y, "providers:\n  - {name: mock, type: mock}\nmodels:\n"
                                "  - {name: m, provider: mock}\nkeys:\n");
    for (unsigned i = 0; i < 16 && rc == 0; i++) {
        char k[47];
        make_key(k, i, 'c');
        rc = buf_printf(&y, "  - {key: \"%s\", alias: c%u}\n", k, i);
    }
    config *cfg = NULL;
    char err[256];
    if (rc || config_load_string(y.data, y.len, "<bench>", NULL, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "config: %s\n", rc ? "out of memory" : err);
        return 1;
    }
    buf_free(&y);
    uint64_t tf = clock_mono_ns();
    tenants *c = fill(nkeys, nkeys / 10 + 1);
    double fill_ms = (double)(clock_mono_ns() - tf) / 1e6;

    static char present[NROWS][NPRESENT][47];
    for (unsigned i = 0; i < NPRESENT; i++) {
        make_key(present[ROW_SHA][i], i, 'c');
        make_key(present[ROW_CONFIG][i], i % 16, 'c');
        make_key(present[ROW_DB][i], (unsigned)((i * 2654435761u) % nkeys), 'd');
        make_key(present[ROW_UNKNOWN][i], i, 'u');
    }
    printf("key lookup on the request path: %u database keys cached (loaded in %.0f ms), "
           "16 config keys, %u lookups per run, median of %d runs\n\n",
           nkeys, fill_ms, iters, RUNS);
    printf("| %-16s | %10s |\n|---|---:|\n", "lookup", "ns/lookup");
    for (int r = 0; r < NROWS; r++) {
        double t[RUNS];
        run_row((enum row)r, cfg, c, present[r], iters / 10); /* warm-up */
        for (int k = 0; k < RUNS; k++)
            t[k] = run_row((enum row)r, cfg, c, present[r], iters);
        qsort(t, RUNS, sizeof(t[0]), cmp_double);
        printf("| %-16s | %10.1f |\n", row_names[r], t[RUNS / 2]);
    }
    tenants_stats st;
    tenants_stats_get(c, &st);
    if (st.entries[TN_KEY] != nkeys) {
        fprintf(stderr, "cache holds %zu keys, expected %u\n", st.entries[TN_KEY], nkeys);
        return 1;
    }
    tenants_free(c);
    config_unref(cfg);
    return 0;
}
