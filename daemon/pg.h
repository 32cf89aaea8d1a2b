/* pg.h - PostgreSQL on the loop: a pool of non-blocking libpq connections.
 *
 * Every libpq call the pool makes is one of the asynchronous ones
 * (PQconnectStart/PQconnectPoll, PQsendQueryParams/PQsendPrepare/
 * PQsendQueryPrepared, PQsendQuery for text without parameters, PQflush,
 * PQconsumeInput, PQisBusy, PQgetResult),
 * driven by a uv_poll_t on PQsocket(). Host names are resolved with the
 * loop's resolver (daemon/dns.h) and handed to libpq as hostaddr, so
 * PQconnectStart never calls getaddrinfo on the loop.
 *
 * Queries wait in one FIFO queue and go to the first idle connection, one
 * query per connection at a time. A connection that fails (server gone,
 * reset, timeout) fails the query it was running with a clear error and
 * reconnects with exponential backoff and jitter; the pool recovers by
 * itself when the server is back. Queries queued while no connection is up
 * wait up to queue_timeout_ms, then fail.
 *
 * Sessions run with TimeZone=UTC unless the conninfo's options set one.
 * Every query gets a server-side statement_timeout (set at connect) and a
 * client-side deadline a little later: a server that stops answering (a
 * network partition) costs the query, not the loop.
 *
 * Prepared statements are declared once as static pg_stmt objects and are
 * prepared lazily, per connection, on first use (and again after a
 * reconnect).
 *
 * Notifications: pg_listen() keeps one extra connection that LISTENs on a
 * channel and reports every NOTIFY, and a "resync" (payload NULL) after
 * each (re)connect -- notifications sent while it was down are lost, so
 * the listener must reload what it caches.
 *
 * Callbacks always run from the loop, never from inside the call that
 * submitted the query. One pool belongs to one loop (one worker). */
#ifndef TG_DAEMON_PG_H
#define TG_DAEMON_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define PG_MUSTCHECK __attribute__((warn_unused_result))

/* Most parameters of one query. */
#define PG_MAX_PARAMS 64

typedef struct pg_pool pg_pool;
typedef struct pg_query pg_query;
typedef struct dns_cache dns_cache;

/* A prepared statement, declared once (static storage) and used by
 * pointer: static const pg_stmt find_key = {"tg_find_key", "SELECT ...
 * WHERE key_hash = $1", 1}. The pool prepares it on each connection the
 * first time it runs there. name must be unique among statements. */
typedef struct pg_stmt {
    const char *name; /* server-side statement name */
    const char *sql;  /* text with $1..$n */
    int nparams;      /* number of parameters */
} pg_stmt;

/* Pool settings; copied by pg_pool_new. Zero fields take the defaults. */
typedef struct pg_options {
    const char *conninfo;          /* libpq conninfo string or postgres:// URI */
    const char *application_name;  /* reported in pg_stat_activity; default "tollgate" */
    uint32_t size;                 /* query connections; default 4 */
    uint32_t connect_timeout_ms;   /* one connection attempt (DNS, TCP, TLS, auth); 5000 */
    uint32_t statement_timeout_ms; /* server statement_timeout; client gives up 1 s later; 5000 */
    uint32_t queue_timeout_ms;     /* longest wait in the queue for a connection; 5000 */
    uint32_t max_queue;            /* queued queries before pg_send() refuses; 10000 */
    uint32_t backoff_min_ms;       /* first reconnect delay; 100 */
    uint32_t backoff_max_ms;       /* largest reconnect delay; 5000 */
} pg_options;

/* Why a query failed. */
typedef enum pg_errkind {
    PG_ERR_SERVER = 1, /* the server answered with an error (sqlstate says which) */
    PG_ERR_CONNECTION, /* the connection broke, or no connection came up in time */
    PG_ERR_TIMEOUT,    /* no answer before the deadline (the connection was dropped) */
    PG_ERR_CLOSED,     /* the pool is closing */
} pg_errkind;

typedef struct pg_error {
    pg_errkind kind;     /* class of failure */
    const char *sqlstate; /* five characters for PG_ERR_SERVER ("23505"), else "" */
    const char *message; /* one line, no trailing newline; never contains parameters */
} pg_error;

/* Called exactly once per query not cancelled: either res (status
 * PGRES_TUPLES_OK or PGRES_COMMAND_OK; the last result of the query) or err
 * is non-NULL. Both are valid only during the call; the pool frees them. */
typedef void (*pg_cb)(void *ud, const PGresult *res, const pg_error *err);

/* A notification from pg_listen(): payload is the NOTIFY payload, or NULL
 * for a resync (the listener just (re)connected: reload everything). */
typedef void (*pg_notify_cb)(void *ud, const char *payload);

/* Counters and gauges (metrics, /health/ready, tests). */
typedef struct pg_stats {
    uint32_t up;          /* query connections connected and usable */
    uint32_t busy;        /* of those, running a query */
    uint32_t queued;      /* queries waiting for a connection */
    bool listening;       /* the pg_listen connection is up */
    uint64_t queries;     /* queries completed (success or server error) */
    uint64_t failed;      /* queries failed (any pg_errkind) */
    uint64_t connects;    /* connections established (query + listen) */
    uint64_t disconnects; /* connections lost */
} pg_stats;

/* Validates opt->conninfo (PQconninfoParse) and creates the pool; starts
 * connecting at once. NULL with a one-line reason in err (never the
 * password) when the conninfo is invalid or memory is short. dns may be
 * NULL: the pool then makes its own resolver. */
pg_pool *pg_pool_new(uv_loop_t *loop, dns_cache *dns, const pg_options *opt, char *err,
                     size_t errlen);

/* Runs sql (or stmt when non-NULL; then sql is ignored) with nparams text
 * parameters (values[i] NULL = SQL NULL; copied, so they need not outlive
 * the call). sql without parameters may hold several statements (simple
 * query protocol); cb then gets the last result, or the first error.
 * Results are in text format. Returns the query handle (valid until cb
 * runs, for pg_cancel) or NULL when refused at once: queue full, too many
 * parameters, nparams != stmt->nparams, pool closing, out of memory --
 * then cb never runs. */
pg_query *pg_send(pg_pool *p, const pg_stmt *stmt, const char *sql, int nparams,
                  const char *const *values, pg_cb cb, void *ud) PG_MUSTCHECK;

/* Withdraws a query: its callback never runs. A query already sent still
 * completes on the server; its result is discarded. */
void pg_cancel(pg_query *q);

/* Starts the notification connection, LISTENing on channel (an SQL
 * identifier, [a-z_][a-z0-9_]*, at most 63 bytes). One listener per pool.
 * cb runs from the loop. 0, -EINVAL (bad channel, pool closing),
 * -EALREADY, -ENOMEM. */
int pg_listen(pg_pool *p, const char *channel, pg_notify_cb cb, void *ud) PG_MUSTCHECK;

/* True when at least one query connection is connected and usable (an
 * idle connection is watched for reads, so a server that went away is
 * noticed without a query). /health/ready reports 503 while false. */
bool pg_pool_ready(const pg_pool *p);

/* True when the last connection attempt failed or a connection was lost,
 * and none has come up since (the database is away, as far as we know). */
bool pg_pool_trouble(const pg_pool *p);

/* Connections waiting out a reconnect backoff try again at once (a drain
 * about to give leases back and flush the ledger has no time to wait out
 * a backoff that grew while the database was away). */
void pg_pool_retry_now(pg_pool *p);

/* Copies the counters. */
void pg_pool_stats(const pg_pool *p, pg_stats *out);

/* Starts closing: queued and running queries fail with PG_ERR_CLOSED (their
 * callbacks run from the loop on its next turn, before the pool's last
 * handle closes; not from inside this call), connections and handles
 * close. Run the loop until it has no more handles, then pg_pool_free(). */
void pg_pool_close(pg_pool *p);

/* Frees a closed pool. */
void pg_pool_free(pg_pool *p);

/* Helpers for result rows (text format). */
/* The value of row r, column c, or NULL for SQL NULL. */
const char *pg_value(const PGresult *res, int r, int c);
/* Column index of name, or -1. */
int pg_column(const PGresult *res, const char *name);

#endif
