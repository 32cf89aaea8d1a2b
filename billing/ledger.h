/* ledger.h - the usage ledger: one row per call, written behind the
 * request, never lost, never counted twice.
 *
 * Every settled call becomes a row (ledger_append). Rows are written
 * ahead to an append-only spool on local disk, then shipped to the
 * database in batches:
 *
 *   append -> open batch --(spool_interval)--> write + fsync to the open
 *   segment (uv_fs, off the loop) --> durable --> shipped to the sink
 *   (the daemon's multi-row INSERT ... ON CONFLICT DO NOTHING) --> done
 *
 * The spool is a directory of segments <seq>.jsonl (one JSON object per
 * line, a row each). A segment is deleted once it is closed and every row
 * in it reached the database. When the sink fails (database down), the
 * open segment is closed and queued for replay, new rows keep going to
 * disk only, and the queued segments are replayed oldest first, whole,
 * once the sink answers again; then shipping goes live again. A replay
 * may send rows the database already has: the unique request id makes
 * that harmless. At start every segment left in the directory (a crash,
 * a SIGKILL, a database that never came back) is replayed the same way.
 *
 * Without a database (DB-less mode) the spool is the ledger: segments are
 * never deleted, and ledger_scan() reads them back (budgets are rebuilt
 * from it at start).
 *
 * Bounds: the backlog (bytes on disk not yet in the database) is capped by
 * spool_max_bytes; above it ledger_accepting() turns false and the
 * gateway refuses new calls with 503 rather than serve them unmetered.
 * A crash can lose at most the rows of the last spool_interval (default
 * 10 ms) that were not yet written.
 *
 * One ledger per process, on one loop (the first worker's); it owns its
 * spool directory, locked with flock so two processes cannot share one.
 * ledger_append and ledger_accepting may be called from other threads
 * (the other workers): their rows wait in an inbox under a lock and join
 * the open batch on the owner's loop before each write; everything else
 * runs on the owner's loop only. */
#ifndef TG_BILLING_LEDGER_H
#define TG_BILLING_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/base/buf.h"

#define LEDGER_MUSTCHECK __attribute__((warn_unused_result))

/* One settled call. Strings are borrowed for the duration of
 * ledger_append (it copies what it keeps); NULL writes SQL NULL. */
typedef struct ledger_row {
    const char *id;         /* the gateway's call id: unique, the idempotency key */
    const char *request_id; /* x-request-id (the client's or generated) */
    int64_t at_us;          /* the call's start, microseconds since the epoch */
    const char *key_id;     /* database key id; NULL for a config key */
    const char *key_alias;  /* never NULL */
    const char *team_id, *org_id, *job_id;
    const char *endpoint;        /* "chat", "messages", "completions", "embeddings" */
    const char *requested_model; /* the alias the caller asked for */
    const char *provider, *provider_model;
    bool stream;
    int status;          /* HTTP status sent to the client */
    int upstream_status; /* 0 = none */
    int64_t prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens;
    const char *usage_source; /* "provider", "estimated", "none" */
    int64_t cost_nano;        /* provider cost; < 0 unknown */
    int64_t price_nano;       /* customer price (0 for BYOK); < 0 unknown */
    const char *credential;   /* "config", "org", "team_byok", "key_byok" */
    int64_t latency_us;
    int64_t ttft_us;   /* < 0: no first byte */
    int attempts;      /* upstream attempts (retries and fallbacks); 0: none was made */
    const char *error; /* why it failed, or NULL */
    /* the call's credits were reported to its team's credit lease (a
     * consumption-mode team with enforced credits): the ledger's charge
     * of it then comes out of that budget's reported spend. Not a column
     * of calls; rows spooled without it count as reported. */
    bool credit_leased;
} ledger_row;

/* Appends r as one JSON object (no newline) with the column names of the
 * calls table, plus "instance" and "credit_leased". 0, -E2BIG, -ENOMEM. */
int ledger_row_json(const ledger_row *r, const char *instance, buf *out) LEDGER_MUSTCHECK;

/* The database side, given by the daemon. sink() starts shipping rows
 * (a JSON array text of len bytes, n rows) and later calls done(token, 0)
 * when the database has them, or done(token, <0) when it could not (the
 * ledger then spools and replays). done(token, -EINVAL) says the database
 * refused the data itself: the rows go again one by one, and a row refused
 * alone (-EINVAL again) is kept in <spool_dir>/rejected.jsonl; a one-row
 * retry failing otherwise goes back to the spool. It may return <0 at once
 * instead (nothing shipped, done never called). At most batch_rows rows
 * go in one call. */
typedef void (*ledger_done_fn)(void *token, int status);
typedef int (*ledger_sink_fn)(void *sink_ud, const char *json, size_t len, size_t n,
                              ledger_done_fn done, void *token);

typedef struct ledger_options {
    const char *spool_dir;      /* created if missing (0700) */
    const char *instance;       /* written into every row */
    uint32_t spool_interval_ms; /* write + fsync the open batch this often; default 10 */
    uint32_t batch_rows;        /* ship at most this many rows per statement; default 500 */
    uint32_t ship_interval_ms;  /* ship when the oldest durable row is this old; default 200 */
    uint64_t segment_bytes;     /* close a segment past this size; default 64 MiB */
    uint64_t spool_max_bytes;   /* backlog that stops new calls; default 1 GiB */
    uint32_t retry_ms;          /* wait after a failed shipment; default 1000 */
} ledger_options;

typedef struct ledger_stats {
    uint64_t rows;           /* appended */
    uint64_t rows_durable;   /* written and fsync'd */
    uint64_t rows_shipped;   /* acknowledged by the sink */
    uint64_t batches_failed; /* shipments the sink refused or failed */
    uint64_t replayed_rows;  /* rows sent again from the spool */
    uint64_t backlog_bytes;  /* spool bytes not yet acknowledged */
    uint32_t segments;       /* segment files on disk */
    double oldest_backlog_s; /* age of the oldest unshipped byte, 0 when none */
    bool accepting;          /* ledger_accepting() */
    bool replaying;          /* segments are being replayed */
} ledger_stats;

typedef struct ledger ledger;

/* Opens (creates) the spool directory, takes its lock, lists leftover
 * segments for replay, and starts the timers. sink NULL: DB-less (the
 * spool is the ledger). NULL with a reason in err. */
ledger *ledger_new(uv_loop_t *loop, const ledger_options *opt, ledger_sink_fn sink, void *sink_ud,
                   char *err, size_t errlen);

/* Queues one row (from any thread). 0, or -ENOSPC when the backlog is
 * over its bound (the row is still kept: it was served), -ENOMEM. */
int ledger_append(ledger *l, const ledger_row *r);

/* False while the backlog is over spool_max_bytes or the spool cannot be
 * written: the gateway refuses new calls with 503 then. */
bool ledger_accepting(const ledger *l);

/* The sink may work again (the database is back): retry now instead of
 * waiting retry_ms. */
void ledger_kick(ledger *l);

/* Drain for shutdown: writes what is open, ships everything it can, and
 * calls done(ud) when nothing is left in memory or in flight (what the
 * database did not take stays in the spool for the next start). */
void ledger_drain(ledger *l, void (*done)(void *ud), void *ud);

void ledger_stats_get(const ledger *l, ledger_stats *out);

/* Stops timers and closes files (a final synchronous write of the open
 * batch, so a SIGTERM without drain loses nothing); run the loop, then
 * ledger_free. */
void ledger_close(ledger *l);
void ledger_free(ledger *l);

/* Reads every row of every segment in dir, oldest first, calling fn with
 * each line (a JSON object, no newline). A torn last line (a crash mid
 * write) is skipped. Blocking: for start-up only. 0 or -errno. */
int ledger_scan(const char *dir, int (*fn)(void *ud, const char *line, size_t len), void *ud);

#endif
