/* store.h - tollgate's state in PostgreSQL, kept in memory on the loop.
 *
 * A store owns one loop's database pool (daemon/pg.h) and its tenancy
 * cache (billing/tenants.h). At start it checks the schema version (a
 * database newer than this binary, or older, stops the daemon with a
 * message saying what to run), then loads every cached table in pages and
 * keeps them fresh:
 *
 *   - LISTEN tollgate_cache: the migrations' triggers send "<table>:<id>"
 *     for every change, and the store reloads that one row (or drops it);
 *   - after the listener (re)connects, and every database.cache_refresh,
 *     a full load replaces everything and sweeps out what is gone.
 *
 * So a key blocked through any instance stops working on every instance
 * within the NOTIFY latency (milliseconds), and within cache_refresh even
 * if a notification was lost. Secrets are decrypted with the config's key
 * ring as rows are loaded; a row that does not decrypt is logged (id only)
 * and left out. */
#ifndef TG_DAEMON_STORE_H
#define TG_DAEMON_STORE_H

#include <stdbool.h>
#include <uv.h>

#include "billing/ledger.h"
#include "billing/tenants.h"
#include "daemon/config.h"
#include "daemon/pg.h"

typedef struct store store;

/* Called once if the store cannot work with this database (wrong schema
 * version): msg says what to do. The daemon stops. */
typedef void (*store_fatal_cb)(void *ud, const char *msg);

/* Creates the store for cfg->database (which must have a url) and starts
 * connecting. NULL with a reason in err (bad conninfo, no memory). */
store *store_new(uv_loop_t *loop, dns_cache *dns, const config *cfg, store_fatal_cb fatal,
                 void *ud, char *err, size_t errlen);
/* A new config (SIGHUP): the key ring and the refresh period. */
void store_reconfigure(store *s, const config *cfg);

tenants *store_tenants(store *s);
pg_pool *store_pool(store *s);

/* Ready: the schema was checked, a full load has completed, and a query
 * connection is up. */
bool store_ready(const store *s);
/* True while the first load of the tenancy cache is under way and the
 * database has not failed so far (the instance has just started): a
 * request with a key the cache does not have yet may wait for it. */
bool store_loading(const store *s);
/* Why not ready, for /health/ready ("database unreachable", ...); "" when
 * ready. */
const char *store_status(const store *s);

/* Reloads one row of kind now (after an admin change, so that this
 * instance's answer and its cache agree before NOTIFY comes back);
 * done(ud, ok) runs from the loop when the cache has it. NULL done: fire
 * and forget. 0 or -ENOMEM / -ESHUTDOWN. */
int store_reload(store *s, tn_kind kind, const char *id, void (*done)(void *ud, bool ok),
                 void *ud);

/* The ledger's database side (billing/ledger.h, ledger_sink_fn; sink_ud is
 * the store): one statement inserts the rows into calls (ON CONFLICT DO
 * NOTHING: replays count once) and adds exactly the inserted ones to
 * usage_daily. done(token, -EINVAL) when the database refused the data,
 * -EIO when it could not be reached. */
int store_ledger_sink(void *store, const char *json, size_t len, size_t n, ledger_done_fn done,
                      void *token);

/* Notifications "<table>:<id>" of tables the cache does not hold (jobs)
 * go to fn; after the listener (re)connects fn(ud, NULL, NULL): forget
 * everything (a notification may have been missed). */
void store_on_notify(store *s, void (*fn)(void *ud, const char *table, const char *id), void *ud);

/* Called when the database answers again after a failure (so the ledger
 * replays its spool at once). */
void store_on_recover(store *s, void (*fn)(void *ud), void *ud);

/* Counters for metrics and tests. */
typedef struct store_stats {
    uint64_t full_loads;   /* completed full loads */
    uint64_t row_reloads;  /* single rows reloaded */
    uint64_t notifies;     /* notifications received */
    uint64_t decrypt_failures; /* secrets that did not decrypt */
    uint64_t ledger_batches;   /* ledger statements that succeeded */
    uint64_t ledger_rows;      /* rows newly inserted (replays not counted) */
} store_stats;
void store_stats_get(const store *s, store_stats *out);

/* Closes the pool and timers; run the loop, then store_free(). */
void store_close(store *s);
void store_free(store *s);

#endif
