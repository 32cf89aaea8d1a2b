/* pg.c - a pool of non-blocking libpq connections on one libuv loop.
 *
 * Connections. Each one (the query connections and the pg_listen one) is a
 * small state machine, enum conn_state:
 *
 *   WAIT --timer--> RESOLVING --dns--> CONNECTING --PQconnectPoll OK--+
 *    ^                                                                |
 *    |        query connection:   IDLE <--> BUSY  <-------------------+
 *    |        listen connection:  LISTEN_SENT --> IDLE (listening) <-+
 *    +--- a failed attempt, a lost connection, an expired deadline
 *
 * A new pool starts in WAIT with a zero delay. A failed attempt or a lost
 * connection goes back to WAIT for a delay drawn uniformly from
 * [backoff_min, min(backoff_max, backoff_min * 2^(n+1))], n = consecutive
 * failed attempts: full jitter, so that connections that all broke at
 * once do not reconnect in lockstep; once one of them gets through, the
 * others (the listener above all) try again at once. One uv_timer per
 * connection serves
 * the deadline of whatever state it is in: the backoff delay, the connect
 * timeout (DNS included: libpq's connect_timeout only works in its
 * blocking calls), or the client-side query deadline.
 *
 * Sockets. libpq owns the socket; a uv_poll_t (struct pg_watch) watches
 * it. While connecting, PQconnectPoll may close its socket and open
 * another (the next address, an SSL retry), and the new socket often gets
 * the same descriptor number. epoll registers open files, not numbers: a
 * watch left running across such a switch watches nothing, or libuv
 * aborts on EPOLL_CTL_MOD. So while connecting the watch is stopped
 * (EPOLL_CTL_DEL while the old socket still exists) before every
 * PQconnectPoll and started after it: on the same number that adds
 * whatever socket has it now; on another number the old watch is closed
 * and a new one made. A uv_poll_t cannot be initialised twice, so watches
 * are allocated and freed in their close callback. Once connected the
 * socket never changes; when libpq closes it on an error, the watch is
 * closed before anything else on the loop thread can open a descriptor.
 *
 * Queries. One FIFO queue; pool__dispatch hands its head to an IDLE
 * connection. A BUSY connection runs one query in one or two steps
 * (PQsendPrepare the first time a pg_stmt runs on that connection, then
 * the execution), each bounded by statement_timeout_ms + 1 s. Results are
 * drained until PQgetResult returns NULL; the first error wins, else the
 * last result is kept. At most PG_WORK_PER_WAKEUP results or notifications
 * are handled per wake-up of one connection; the rest continue from the
 * pool's idle handle on the next loop turn.
 *
 * Callbacks. Query outcomes are never reported from inside the I/O code:
 * they go on pool->done and the pool's idle handle delivers them on the
 * next loop turn, so a callback may call anything here (pg_pool_close
 * included) without pulling a connection from under the code reading it.
 * Notifications are reported from the listener's read handler, which
 * checks its state again after each one. pg_pool_close fails queued and
 * running queries with PG_ERR_CLOSED through the same deferred path: the
 * callbacks run on the next loop turn, from the idle handle, which is
 * closed only after they all ran. */
#include "daemon/pg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/log.h"
#include "daemon/base/qlist.h"
#include "daemon/dns.h"

#define PG_DEF_APPNAME "tollgate"
#define PG_DEF_SIZE 4
#define PG_DEF_CONNECT_TIMEOUT_MS 5000
#define PG_DEF_STATEMENT_TIMEOUT_MS 5000
#define PG_DEF_QUEUE_TIMEOUT_MS 5000
#define PG_DEF_MAX_QUEUE 10000
#define PG_DEF_BACKOFF_MIN_MS 100
#define PG_DEF_BACKOFF_MAX_MS 5000

#define PG_DEADLINE_GRACE_MS 1000 /* client deadline = statement_timeout + this */
#define PG_WORK_PER_WAKEUP 64     /* results or notifications per wake-up of one connection */
#define PG_MAX_STMTS 256          /* prepared statements tracked per connection */
#define PG_MSG_MAX 256            /* error messages (one line) */
#define PG_CHANNEL_MAX 63         /* NAMEDATALEN - 1 */
#define PG_MAX_KEYWORDS 64        /* conninfo keywords handed to libpq (it knows ~45) */
#define PG_DNS_TTL_MS 30000       /* answers of the pool's own resolver */
#define PG_DNS_ENTRIES 4          /* the pool resolves one name */

typedef struct pg_conn pg_conn;

/* An intrusive FIFO of queries. */
typedef struct pg_qlist {
    pg_query *head, *tail; /* first and last */
    uint32_t n;            /* length */
} pg_qlist;

enum q_state {
    Q_QUEUED,     /* on pool->queue, waiting for an idle connection */
    Q_RUNNING,    /* conn->q: being prepared or executed */
    Q_DONE,       /* on pool->done: outcome filled in, callback pending */
    Q_DELIVERING, /* its callback is running */
};

/* One query and its copies of the text and the parameters, in one
 * allocation freed when the callback returns (or at pg_cancel). */
struct pg_query {
    pg_query *prev, *next;   /* links in *list */
    pg_qlist *list;          /* pool->queue or pool->done, else NULL */
    enum q_state state;      /* see above */
    pg_cb cb;                /* NULL once cancelled */
    void *ud;                /* cb's argument */
    uint64_t queued_at;      /* uv_now() at pg_send, for queue_timeout_ms */
    const pg_stmt *stmt;     /* the statement, or NULL for sql */
    const char *sql;         /* the text (copied; NULL with stmt) */
    int nparams;             /* parameters */
    const char **values;     /* nparams copies; NULL entries are SQL NULL */
    PGresult *res;           /* Q_DONE: the result for cb, or NULL on error */
    pg_errkind kind;         /* Q_DONE without res: the error */
    char sqlstate[6];        /* PG_ERR_SERVER: five characters, else "" */
    char msg[PG_MSG_MAX];    /* the error message, one line */
};

enum conn_state {
    CONN_WAIT,        /* down; timer runs until the next attempt */
    CONN_RESOLVING,   /* dnsq running; timer = connect deadline */
    CONN_CONNECTING,  /* PQconnectPoll handshake; timer = connect deadline */
    CONN_LISTEN_SENT, /* listener: LISTEN sent; timer = query deadline */
    CONN_IDLE,        /* up: no query (listener: listening); watched for reads */
    CONN_BUSY,        /* running q; timer = query deadline */
    CONN_CLOSED,      /* the pool is closing; nothing left but the timer's close */
};

enum conn_step {
    STEP_PREPARE, /* PQsendPrepare of q->stmt sent */
    STEP_EXEC,    /* the query itself sent */
};

/* The poll handle on one libpq socket; see "Sockets" above. */
typedef struct pg_watch {
    uv_poll_t poll; /* on fd; data = this watch */
    pg_pool *pool;  /* counts the handle */
    pg_conn *conn;  /* owner; NULL once closing */
    int fd;         /* the descriptor it was initialised on */
    int events;     /* UV_READABLE/UV_WRITABLE it is started for; 0 = stopped */
} pg_watch;

struct pg_conn {
    pg_pool *pool;             /* owner */
    enum conn_state state;     /* see above */
    bool listener;             /* the pg_listen connection */
    char ctx[24];              /* log context: "pg conn 2", "pg listen" */
    PGconn *pg;                /* libpq connection, NULL in WAIT/RESOLVING/CLOSED */
    pg_watch *watch;           /* the socket's watch, or NULL */
    uv_timer_t timer;          /* backoff / connect deadline / query deadline */
    dns_query *dnsq;           /* RESOLVING: the lookup */
    unsigned failures;         /* consecutive failed attempts (backoff exponent) */
    pg_query *q;               /* BUSY: the query */
    enum conn_step step;       /* BUSY: what was sent last */
    bool flushing;             /* PQflush returned 1: wait for writable */
    bool resume;               /* hit PG_WORK_PER_WAKEUP: continue from the idle handle */
    PGresult *last;            /* BUSY: last result of the step so far */
    PGresult *error;           /* BUSY: first error result of the step */
    const pg_stmt **prepared;  /* statements prepared on this connection */
    unsigned nprepared;        /* used entries of prepared */
    unsigned capprepared;      /* allocated entries of prepared */
    char fatal[PG_MSG_MAX];    /* the server's FATAL notice: why it is hanging up */
};

struct pg_pool {
    uv_loop_t *loop;            /* the loop everything runs on */
    dns_cache *dns;             /* resolver (NULL when the host needs none) */
    bool own_dns;               /* dns was made here: closed with the pool */
    pg_options opt;             /* settings with defaults filled in (conninfo: NULL) */
    PQconninfoOption *ci;       /* the parsed conninfo; kw/val point into it */
    const char *kw[PG_MAX_KEYWORDS];  /* keywords for every attempt ... */
    const char *val[PG_MAX_KEYWORDS]; /* ... and their values */
    int nkw;                    /* used entries; room is left for host and hostaddr */
    char *host;                 /* the host name to resolve, or NULL */
    char *env_host;             /* PGHOST, when the conninfo names no host */
    char *options;              /* "-c TimeZone=UTC " + user options + " -c statement_timeout=N" */
    char *appname;              /* application_name */
    pg_conn *conns;             /* opt.size query connections */
    pg_conn *listener;          /* the pg_listen connection, or NULL */
    char channel[PG_CHANNEL_MAX + 1]; /* its channel */
    pg_notify_cb notify_cb;     /* its callback */
    void *notify_ud;            /* notify_cb's argument */
    pg_qlist queue;             /* queries waiting for a connection, oldest first */
    pg_qlist done;              /* outcomes waiting for delivery */
    uv_timer_t queue_timer;     /* fires when the oldest queued query expires */
    uv_idle_t idle;             /* delivers done, resumes capped connections */
    unsigned handles;           /* handles not yet through their close callback */
    bool closing;               /* pg_pool_close called */
    bool idle_closing;          /* uv_close(&idle) issued: the last step of closing */
    uint64_t rng;               /* xorshift state for the jitter */
    bool announced;             /* the first connection was logged */
    bool trouble;               /* failures were logged since the last success */
    uint64_t log_next;          /* uv_now() before which failures are only counted */
    unsigned log_skipped;       /* failures not logged since the last line */
    char last_error[PG_MSG_MAX]; /* last connection failure, "" after a success */
    pg_stats st;                /* counters (gauges are computed) */
};

static void conn__on_timer(uv_timer_t *t);
static void conn__on_poll(uv_poll_t *h, int status, int events);
static void conn__on_input(pg_conn *c, bool read);
static void conn__set_idle(pg_conn *c);
static void conn__send_exec(pg_conn *c);
static bool conn__flush(pg_conn *c);
static void pool__dispatch(pg_pool *p);
static void pool__on_idle(uv_idle_t *h);

/* ---- small helpers ---- */

QLIST_FUNCS(q, pg_qlist, pg_query)

/* Ends out at o. next is the first byte left out: when it continues a
 * UTF-8 sequence, the part of that sequence already copied goes too. */
static void pg__end(char *out, size_t o, char next)
{
    if (((unsigned char)next & 0xC0) == 0x80) {
        while (o > 0 && ((unsigned char)out[o - 1] & 0xC0) == 0x80)
            o--;
        if (o > 0)
            o--; /* the lead byte */
    }
    out[o] = '\0';
}

/* The first line of in (libpq messages continue on tab-indented lines),
 * tabs as spaces, no trailing blanks. */
static void pg__line(char *out, size_t n, const char *in)
{
    size_t o = 0;
    if (n == 0)
        return;
    if (!in)
        in = "";
    for (; *in && *in != '\n' && *in != '\r' && o + 1 < n; in++)
        out[o++] = *in == '\t' ? ' ' : *in;
    pg__end(out, o, *in);
    o = strlen(out);
    while (o > 0 && out[o - 1] == ' ')
        out[--o] = '\0';
}

/* Appends s to out[*o..n) as far as it fits. */
static void pg__append(char *out, size_t n, size_t *o, const char *s)
{
    while (*s && *o + 1 < n)
        out[(*o)++] = *s++;
}

/* The primary message of a server error on one line, with the query's
 * parameter values cut out: the server quotes offending input verbatim
 * ('invalid input syntax for type integer: "..."'). A quoted value is cut
 * whatever its length; unquoted ones only from 8 bytes on (a shorter one
 * would match ordinary words by chance). */
static void pg__redact(char *out, size_t n, const char *msg, const pg_query *q)
{
    size_t lens[PG_MAX_PARAMS];
    size_t o = 0;
    for (int i = 0; i < q->nparams; i++)
        lens[i] = q->values[i] ? strlen(q->values[i]) : 0;
    const char *s = msg;
    while (*s && *s != '\n' && *s != '\r' && o + 1 < n) {
        size_t skip = 0;
        bool quoted = false;
        for (int i = 0; i < q->nparams && skip == 0; i++) {
            const char *v = q->values[i];
            size_t len = lens[i];
            if (len == 0)
                continue;
            if (*s == '"' && strncmp(s + 1, v, len) == 0 && s[len + 1] == '"') {
                skip = len + 2;
                quoted = true;
            } else if (len >= 8 && strncmp(s, v, len) == 0) {
                skip = len;
            }
        }
        if (skip) {
            pg__append(out, n, &o, quoted ? "\"...\"" : "...");
            s += skip;
            continue;
        }
        out[o++] = *s == '\t' ? ' ' : *s;
        s++;
    }
    pg__end(out, o, *s);
}

/* libpq's conninfo parse errors quote pieces of the conninfo, which may be
 * the password ('invalid percent-encoded token: "..."'). Quoted text is
 * kept only in the two messages where libpq quotes a keyword. */
static void pg__conninfo_error(char *out, size_t n, const char *msg)
{
    bool keep = strncmp(msg, "invalid connection option", 25) == 0 ||
                strncmp(msg, "invalid URI query parameter", 27) == 0;
    char line[PG_MSG_MAX];
    size_t o = 0;
    bool in_quote = false;
    pg__line(line, sizeof(line), msg);
    pg__append(out, n, &o, "invalid conninfo: ");
    for (const char *s = line; *s && o + 1 < n; s++) {
        if (*s == '"' && !keep) {
            pg__append(out, n, &o, in_quote ? "\"" : "\"...");
            in_quote = !in_quote;
        } else if (!in_quote || keep) {
            out[o++] = *s;
        }
    }
    if (in_quote)
        pg__append(out, n, &o, "\"");
    pg__end(out, o, '\0');
}

static void pg__seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void pg__seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool pg__is_fatal_severity(const char *sev)
{
    return sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
}

static uint64_t pool__random(pg_pool *p)
{
    uint64_t x = p->rng; /* xorshift64: jitter needs spread, not secrecy */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p->rng = x;
    return x;
}

static uint64_t pool__backoff(pg_pool *p, unsigned failures)
{
    uint64_t lo = p->opt.backoff_min_ms, hi = p->opt.backoff_max_ms, top = lo;
    for (unsigned i = 0; i <= failures && top < hi; i++)
        top *= 2;
    if (top > hi)
        top = hi;
    return lo + pool__random(p) % (top - lo + 1);
}

/* Connection trouble is logged when it starts, then at most once per
 * backoff_max_ms with a count of what was left out: a database that is
 * down for an hour costs a line per backoff period, not one per attempt
 * per connection. */
static void pool__log_trouble(pg_pool *p, const pg_conn *c, const char *what, const char *why)
{
    uint64_t now = uv_now(p->loop);
    if (p->trouble && now < p->log_next) {
        p->log_skipped++;
        return;
    }
    if (p->log_skipped)
        log_warn(c->ctx, "%s: %s (%u more failures not logged)", what, why, p->log_skipped);
    else
        log_warn(c->ctx, "%s: %s", what, why);
    p->trouble = true;
    p->log_skipped = 0;
    p->log_next = now + p->opt.backoff_max_ms;
}

static void pool__log_connected(pg_pool *p, const pg_conn *c)
{
    if (p->trouble) {
        log_info(c->ctx, "connected to the database again");
    } else if (!p->announced) {
        log_info(c->ctx, "connected to the database");
    } else {
        log_debug(c->ctx, "connected");
    }
    p->announced = true;
    p->trouble = false;
    p->log_skipped = 0;
}

static void pool__on_handle_close(uv_handle_t *h)
{
    pg_pool *p = h->data;
    p->handles--;
}

/* ---- outcomes ---- */

static void query__free(pg_query *q)
{
    PQclear(q->res);
    free(q);
}

static void pool__kick(pg_pool *p)
{
    if (!p->idle_closing)
        uv_idle_start(&p->idle, pool__on_idle);
}

/* The query has its outcome: queue it for delivery, or drop it when it
 * was cancelled. */
static void pool__complete(pg_pool *p, pg_query *q)
{
    if (!q->cb) {
        query__free(q);
        return;
    }
    q->state = Q_DONE;
    q_push(&p->done, q);
    pool__kick(p);
}

static void pool__fail(pg_pool *p, pg_query *q, pg_errkind kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void pool__fail(pg_pool *p, pg_query *q, pg_errkind kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->msg, sizeof(q->msg), fmt, ap);
    va_end(ap);
    q->kind = kind;
    q->sqlstate[0] = '\0';
    if (q->cb)
        p->st.failed++;
    pool__complete(p, q);
}

/* ---- the socket watch ---- */

static void watch__on_close(uv_handle_t *h)
{
    pg_watch *w = h->data;
    w->pool->handles--;
    free(w);
}

/* Closes the watch; call before libpq closes the socket, or right after it
 * did (see "Sockets" at the top). */
static void conn__unwatch(pg_conn *c)
{
    pg_watch *w = c->watch;
    if (!w)
        return;
    w->conn = NULL;
    c->watch = NULL;
    uv_close((uv_handle_t *)&w->poll, watch__on_close);
}

/* Stops the watch (EPOLL_CTL_DEL now) but keeps it for the same number. */
static void conn__watch_pause(pg_conn *c)
{
    pg_watch *w = c->watch;
    if (w && w->events) {
        uv_poll_stop(&w->poll);
        w->events = 0;
    }
}

/* Watches fd for events; a watch on another descriptor is replaced. 0 or a
 * libuv error. */
static int conn__watch(pg_conn *c, int fd, int events)
{
    pg_pool *p = c->pool;
    pg_watch *w = c->watch;
    int rc = 0;
    if (fd < 0)
        return UV_EBADF;
    if (w && w->fd != fd) {
        log_debug(c->ctx, "libpq moved from socket %d to %d", w->fd, fd);
        conn__unwatch(c);
        w = NULL;
    }
    if (!w) {
        w = calloc(1, sizeof(*w));
        if (!w)
            return UV_ENOMEM;
        rc = uv_poll_init(p->loop, &w->poll, fd);
        if (rc != 0) {
            free(w); /* a failed init registers nothing */
            return rc;
        }
        w->poll.data = w;
        w->pool = p;
        w->conn = c;
        w->fd = fd;
        p->handles++;
        c->watch = w;
    }
    if (w->events == events)
        return 0;
    rc = uv_poll_start(&w->poll, events, conn__on_poll);
    if (rc == 0)
        w->events = events;
    return rc;
}

/* ---- connection life cycle ---- */

/* Why libpq gave up, for messages: the server's FATAL notice when it sent
 * one ("terminating connection due to administrator command"), else the
 * first line of libpq's error. */
static const char *conn__reason(pg_conn *c, char *buf, size_t n)
{
    if (c->fatal[0])
        return c->fatal;
    pg__line(buf, n, c->pg ? PQerrorMessage(c->pg) : "");
    if (!buf[0])
        snprintf(buf, n, "connection closed");
    return buf;
}

/* Lets go of everything libpq-side: the lookup, the watch, the socket. */
static void conn__release(pg_conn *c)
{
    if (c->dnsq) {
        dns_cancel(c->dnsq);
        c->dnsq = NULL;
    }
    conn__unwatch(c); /* before PQfinish closes the socket */
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    PQclear(c->last);
    c->last = NULL;
    PQclear(c->error);
    c->error = NULL;
    c->nprepared = 0; /* statements die with the session */
    c->flushing = false;
    c->resume = false;
    c->fatal[0] = '\0';
    uv_timer_stop(&c->timer);
}

static void conn__wait(pg_conn *c)
{
    c->state = CONN_WAIT;
    uv_timer_start(&c->timer, conn__on_timer, pool__backoff(c->pool, c->failures), 0);
}

/* An attempt failed before the connection was usable. */
static void conn__attempt_failed(pg_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void conn__attempt_failed(pg_conn *c, const char *fmt, ...)
{
    pg_pool *p = c->pool;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->last_error, sizeof(p->last_error), fmt, ap);
    va_end(ap);
    conn__release(c);
    pool__log_trouble(p, c, "could not connect to the database", p->last_error);
    c->failures++;
    conn__wait(c);
}

/* An established connection is gone (or is being dropped): the running
 * query fails with kind, and the connection starts over. */
static void conn__drop(pg_conn *c, pg_errkind kind, const char *why)
{
    pg_pool *p = c->pool;
    uint64_t deadline = (uint64_t)p->opt.statement_timeout_ms + PG_DEADLINE_GRACE_MS;
    char reason[PG_MSG_MAX];
    snprintf(reason, sizeof(reason), "%s", why); /* why may point into c or libpq */
    conn__release(c);
    if (c->q) {
        pg_query *q = c->q;
        c->q = NULL;
        if (kind == PG_ERR_TIMEOUT)
            pool__fail(p, q, kind, "database query timed out after %llu ms (connection reset)",
                       (unsigned long long)deadline);
        else
            pool__fail(p, q, kind, "database connection lost: %s", reason);
    }
    p->st.disconnects++;
    snprintf(p->last_error, sizeof(p->last_error), "%s", reason);
    pool__log_trouble(p, c, kind == PG_ERR_TIMEOUT ? "query timed out, connection reset"
                                                   : "database connection lost",
                      reason);
    c->failures = 0;
    conn__wait(c);
}

static void conn__drop_pq(pg_conn *c)
{
    char buf[PG_MSG_MAX];
    conn__drop(c, PG_ERR_CONNECTION, conn__reason(c, buf, sizeof(buf)));
}

/* Notices go here instead of libpq's default (stderr). A FATAL one is the
 * server explaining why it is about to hang up on an idle connection. */
static void conn__on_notice(void *arg, const PGresult *r)
{
    pg_conn *c = arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (pg__is_fatal_severity(sev) && msg) {
        pg__line(c->fatal, sizeof(c->fatal), msg);
        return;
    }
    /* the text may quote user data: only its class goes to the log */
    log_debug(c->ctx, "server %s %s", sev ? sev : "notice", code ? code : "");
}

static void conn__send_listen(pg_conn *c)
{
    pg_pool *p = c->pool;
    char sql[PG_CHANNEL_MAX + 16];
    snprintf(sql, sizeof(sql), "LISTEN \"%s\"", p->channel);
    c->state = CONN_LISTEN_SENT;
    if (!PQsendQuery(c->pg, sql)) {
        conn__drop_pq(c);
        return;
    }
    uv_timer_start(&c->timer, conn__on_timer,
                   (uint64_t)p->opt.statement_timeout_ms + PG_DEADLINE_GRACE_MS, 0);
    conn__flush(c);
}

/* One connection got through: the database is back, so the others end
 * their backoff now rather than at their own (jittered, up to
 * backoff_max_ms) time; above all the listener, whose reconnect resyncs
 * the caches the lost notifications left stale. */
static void pool__wake_waiting(pg_pool *p)
{
    for (uint32_t i = 0; i < p->opt.size; i++)
        if (p->conns[i].state == CONN_WAIT)
            uv_timer_start(&p->conns[i].timer, conn__on_timer, 0, 0);
    if (p->listener && p->listener->state == CONN_WAIT)
        uv_timer_start(&p->listener->timer, conn__on_timer, 0, 0);
}

static void conn__connected(pg_conn *c)
{
    pg_pool *p = c->pool;
    char buf[PG_MSG_MAX];
    if (PQsetnonblocking(c->pg, 1) != 0) {
        conn__attempt_failed(c, "%s", conn__reason(c, buf, sizeof(buf)));
        return;
    }
    int rc = conn__watch(c, PQsocket(c->pg), UV_READABLE);
    if (rc != 0) {
        conn__attempt_failed(c, "cannot watch the socket: %s", uv_strerror(rc));
        return;
    }
    uv_timer_stop(&c->timer);
    c->failures = 0;
    c->fatal[0] = '\0';
    p->st.connects++;
    p->last_error[0] = '\0';
    pool__log_connected(p, c);
    pool__wake_waiting(p);
    if (c->listener)
        conn__send_listen(c);
    else
        conn__set_idle(c);
}

/* One step of the handshake; the socket may change under it. */
static void conn__connect_step(pg_conn *c)
{
    char buf[PG_MSG_MAX];
    int events;
    conn__watch_pause(c);
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_OK:
        conn__connected(c);
        return;
    case PGRES_POLLING_READING:
        events = UV_READABLE;
        break;
    case PGRES_POLLING_WRITING:
        events = UV_WRITABLE;
        break;
    default:
        conn__attempt_failed(c, "%s", conn__reason(c, buf, sizeof(buf)));
        return;
    }
    int rc = conn__watch(c, PQsocket(c->pg), events);
    if (rc != 0)
        conn__attempt_failed(c, "cannot watch the socket: %s", uv_strerror(rc));
}

/* "h,h,h" and "a1,a2,a3": libpq tries the addresses in order, verifying
 * TLS against the name. 0 or -ENOMEM. */
static int pool__addr_lists(const pg_pool *p, const dns_result *res, char **hosts, char **addrs)
{
    size_t hl = strlen(p->host), n = res->naddrs, ho = 0, ao = 0;
    char *h = malloc(n * (hl + 1)), *a = malloc(n * (INET6_ADDRSTRLEN + 1));
    int rc = -ENOMEM;
    if (!h || !a)
        goto out_free;
    for (size_t i = 0; i < n; i++) {
        const struct sockaddr *sa = (const struct sockaddr *)&res->addrs[i];
        char ip[INET6_ADDRSTRLEN];
        if (sa->sa_family == AF_INET6)
            uv_ip6_name((const struct sockaddr_in6 *)sa, ip, sizeof(ip));
        else
            uv_ip4_name((const struct sockaddr_in *)sa, ip, sizeof(ip));
        if (i > 0) {
            h[ho++] = ',';
            a[ao++] = ',';
        }
        memcpy(h + ho, p->host, hl);
        ho += hl;
        memcpy(a + ao, ip, strlen(ip));
        ao += strlen(ip);
    }
    h[ho] = '\0';
    a[ao] = '\0';
    *hosts = h;
    *addrs = a;
    return 0;

out_free:
    free(h);
    free(a);
    return rc;
}

/* Starts the libpq handshake; res is the lookup of p->host, or NULL when
 * the conninfo needs none. */
static void conn__connect(pg_conn *c, const dns_result *res)
{
    pg_pool *p = c->pool;
    const char *kw[PG_MAX_KEYWORDS + 1], *val[PG_MAX_KEYWORDS + 1];
    char *hosts = NULL, *addrs = NULL;
    char buf[PG_MSG_MAX];
    int n = p->nkw;
    memcpy(kw, p->kw, sizeof(kw[0]) * (size_t)n);
    memcpy(val, p->val, sizeof(val[0]) * (size_t)n);
    if (res) {
        if (pool__addr_lists(p, res, &hosts, &addrs) != 0) {
            conn__attempt_failed(c, "out of memory");
            goto out_free;
        }
        kw[n] = "host";
        val[n++] = hosts;
        kw[n] = "hostaddr";
        val[n++] = addrs;
    }
    kw[n] = NULL;
    val[n] = NULL;
    /* expand_dbname 0: the conninfo was parsed once, in pg_pool_new */
    c->pg = PQconnectStartParams(kw, val, 0);
    if (!c->pg) {
        conn__attempt_failed(c, "out of memory");
        goto out_free;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn__attempt_failed(c, "%s", conn__reason(c, buf, sizeof(buf)));
        goto out_free;
    }
    PQsetNoticeReceiver(c->pg, conn__on_notice, c);
    c->state = CONN_CONNECTING;
    /* libpq's rule: after PQconnectStart, wait as if PQconnectPoll had
     * answered PGRES_POLLING_WRITING */
    int rc = conn__watch(c, PQsocket(c->pg), UV_WRITABLE);
    if (rc != 0)
        conn__attempt_failed(c, "cannot watch the socket: %s", uv_strerror(rc));

out_free:
    free(hosts);
    free(addrs);
}

static void conn__on_dns(int status, const dns_result *res, void *ud)
{
    pg_conn *c = ud;
    c->dnsq = NULL;
    if (status != 0) {
        conn__attempt_failed(c, "could not resolve host \"%s\": %s", c->pool->host,
                             uv_strerror(status));
        return;
    }
    conn__connect(c, res);
}

/* One connection attempt; the timer bounds all of it, lookup included. */
static void conn__attempt(pg_conn *c)
{
    pg_pool *p = c->pool;
    uv_timer_start(&c->timer, conn__on_timer, p->opt.connect_timeout_ms, 0);
    if (!p->host) {
        conn__connect(c, NULL);
        return;
    }
    c->state = CONN_RESOLVING;
    int rc = dns_resolve(p->dns, p->host, conn__on_dns, c, &c->dnsq);
    if (rc != 0) {
        c->dnsq = NULL;
        conn__attempt_failed(c, "could not resolve host \"%s\": %s", p->host, strerror(-rc));
    }
}

static void conn__on_timer(uv_timer_t *t)
{
    pg_conn *c = t->data;
    pg_pool *p = c->pool;
    char msg[PG_MSG_MAX];
    switch (c->state) {
    case CONN_WAIT:
        conn__attempt(c);
        break;
    case CONN_RESOLVING:
    case CONN_CONNECTING:
        conn__attempt_failed(c, "no connection within %u ms", (unsigned)p->opt.connect_timeout_ms);
        break;
    case CONN_LISTEN_SENT:
    case CONN_BUSY:
        snprintf(msg, sizeof(msg), "no answer within %llu ms",
                 (unsigned long long)p->opt.statement_timeout_ms + PG_DEADLINE_GRACE_MS);
        conn__drop(c, PG_ERR_TIMEOUT, msg);
        break;
    default:
        break;
    }
}

/* ---- queries on a connection ---- */

static bool conn__is_prepared(const pg_conn *c, const pg_stmt *s)
{
    for (unsigned i = 0; i < c->nprepared; i++)
        if (c->prepared[i] == s)
            return true;
    return false;
}

/* Room to remember one more prepared statement. Without room the
 * statement runs unnamed (PQsendQueryParams), never prepared twice. */
static bool conn__reserve_stmt(pg_conn *c)
{
    if (c->nprepared < c->capprepared)
        return true;
    if (c->capprepared >= PG_MAX_STMTS)
        return false;
    unsigned cap = c->capprepared ? c->capprepared * 2 : 8;
    const pg_stmt **n = realloc(c->prepared, cap * sizeof(*n));
    if (!n)
        return false;
    c->prepared = n;
    c->capprepared = cap;
    return true;
}

/* Pushes out what libpq buffered; false when the connection was dropped. */
static bool conn__flush(pg_conn *c)
{
    int r = PQflush(c->pg);
    if (r < 0) {
        conn__drop_pq(c);
        return false;
    }
    c->flushing = r > 0;
    int rc = conn__watch(c, PQsocket(c->pg), UV_READABLE | (c->flushing ? UV_WRITABLE : 0));
    if (rc != 0) {
        conn__drop(c, PG_ERR_CONNECTION, uv_strerror(rc));
        return false;
    }
    return true;
}

/* A step went out: arm its deadline and start writing. */
static void conn__sent(pg_conn *c)
{
    uv_timer_start(&c->timer, conn__on_timer,
                   (uint64_t)c->pool->opt.statement_timeout_ms + PG_DEADLINE_GRACE_MS, 0);
    conn__flush(c);
}

static void conn__start(pg_conn *c, pg_query *q)
{
    c->q = q;
    q->state = Q_RUNNING;
    c->state = CONN_BUSY;
    if (q->stmt && !conn__is_prepared(c, q->stmt) && conn__reserve_stmt(c)) {
        c->step = STEP_PREPARE;
        /* nParams 0: the server infers the types */
        if (!PQsendPrepare(c->pg, q->stmt->name, q->stmt->sql, 0, NULL)) {
            conn__drop_pq(c);
            return;
        }
        conn__sent(c);
        return;
    }
    conn__send_exec(c);
}

static void conn__send_exec(pg_conn *c)
{
    pg_query *q = c->q;
    int ok;
    c->step = STEP_EXEC;
    if (q->stmt && conn__is_prepared(c, q->stmt))
        ok = PQsendQueryPrepared(c->pg, q->stmt->name, q->nparams, q->values, NULL, NULL, 0);
    else if (q->stmt)
        ok = PQsendQueryParams(c->pg, q->stmt->sql, q->nparams, NULL, q->values, NULL, NULL, 0);
    else if (q->nparams == 0)
        ok = PQsendQuery(c->pg, q->sql); /* simple protocol: several statements allowed */
    else
        ok = PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, q->values, NULL, NULL, 0);
    if (!ok) {
        conn__drop_pq(c);
        return;
    }
    conn__sent(c);
}

/* The query's outcome: the first error of the step, else its last result. */
static void conn__finish_query(pg_conn *c)
{
    pg_pool *p = c->pool;
    pg_query *q = c->q;
    c->q = NULL;
    uv_timer_stop(&c->timer);
    if (c->error) {
        const char *code = PQresultErrorField(c->error, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(c->error, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", code ? code : "");
        pg__redact(q->msg, sizeof(q->msg), msg ? msg : "server error", q);
        q->kind = PG_ERR_SERVER;
        PQclear(c->error);
        c->error = NULL;
        if (q->cb) {
            p->st.queries++;
            p->st.failed++;
        }
        pool__complete(p, q);
        goto out_clear;
    }
    if (!c->last || PQresultStatus(c->last) == PGRES_EMPTY_QUERY) {
        /* an empty query string: report it as a command that did nothing */
        PQclear(c->last);
        c->last = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);
        if (!c->last) {
            pool__fail(p, q, PG_ERR_CONNECTION, "out of memory");
            goto out_clear;
        }
    }
    q->res = c->last;
    c->last = NULL;
    if (q->cb)
        p->st.queries++;
    pool__complete(p, q);

out_clear:
    PQclear(c->last);
    c->last = NULL;
}

static void conn__listen_done(pg_conn *c)
{
    pg_pool *p = c->pool;
    if (c->error) {
        char msg[PG_MSG_MAX];
        const char *m = PQresultErrorField(c->error, PG_DIAG_MESSAGE_PRIMARY);
        pg__line(msg, sizeof(msg), m ? m : "server error");
        p->st.disconnects++;
        conn__attempt_failed(c, "LISTEN failed: %s", msg);
        return;
    }
    PQclear(c->last);
    c->last = NULL;
    c->state = CONN_IDLE;
    uv_timer_stop(&c->timer);
    p->notify_cb(p->notify_ud, NULL); /* may close the pool */
}

/* PQgetResult returned NULL: the step is over. */
static void conn__step_done(pg_conn *c)
{
    if (c->state == CONN_LISTEN_SENT) {
        conn__listen_done(c);
        return;
    }
    pg_query *q = c->q;
    if (c->step == STEP_PREPARE && !c->error) {
        c->prepared[c->nprepared++] = q->stmt; /* room was reserved */
        PQclear(c->last);
        c->last = NULL;
        if (q->cb) {
            conn__send_exec(c);
            return;
        }
        /* cancelled while preparing: no need to run it */
    }
    conn__finish_query(c);
    conn__set_idle(c);
}

/* Takes one result of the running step; false when the connection was
 * dropped because of it. */
static bool conn__take_result(pg_conn *c, PGresult *r)
{
    char why[PG_MSG_MAX];
    ExecStatusType st = PQresultStatus(r);
    switch (st) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
        if (c->error) {
            PQclear(r);
        } else {
            PQclear(c->last);
            c->last = r;
        }
        return true;
    case PGRES_FATAL_ERROR: {
        const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
        const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
        /* FATAL/PANIC: the backend is ending the session; no SQLSTATE:
         * libpq made the error itself (connection closed, protocol) */
        if (pg__is_fatal_severity(sev) || !code || strlen(code) != 5 ||
            PQstatus(c->pg) == CONNECTION_BAD) {
            const char *m = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
            pg__line(why, sizeof(why), m ? m : PQresultErrorMessage(r));
            if (!why[0])
                conn__reason(c, why, sizeof(why));
            PQclear(r);
            conn__drop(c, PG_ERR_CONNECTION, why);
            return false;
        }
        if (c->error)
            PQclear(r);
        else
            c->error = r;
        return true;
    }
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
        PQclear(r);
        conn__drop(c, PG_ERR_CONNECTION, "COPY is not supported by the pool");
        return false;
    default:
        snprintf(why, sizeof(why), "unexpected result %s", PQresStatus(st));
        PQclear(r);
        conn__drop(c, PG_ERR_CONNECTION, why);
        return false;
    }
}

static void conn__resume_later(pg_conn *c)
{
    c->resume = true;
    pool__kick(c->pool);
}

/* Collects the results libpq has parsed, without blocking. */
static void conn__drain(pg_conn *c, unsigned *budget)
{
    while (c->state == CONN_BUSY || c->state == CONN_LISTEN_SENT) {
        if (PQisBusy(c->pg))
            return; /* the rest is not here yet */
        if (*budget == 0) {
            conn__resume_later(c);
            return;
        }
        (*budget)--;
        PGresult *r = PQgetResult(c->pg);
        if (!r)
            conn__step_done(c); /* may send the next step or query */
        else if (!conn__take_result(c, r))
            return;
    }
}

/* Notifications: the listener reports them, query connections (a LISTEN
 * sent through pg_send) just drop them. */
static void conn__notifies(pg_conn *c, unsigned *budget)
{
    pg_pool *p = c->pool;
    while (c->state == CONN_IDLE) {
        if (*budget == 0) {
            conn__resume_later(c);
            return;
        }
        PGnotify *n = PQnotifies(c->pg);
        if (!n)
            return;
        (*budget)--;
        if (c->listener)
            p->notify_cb(p->notify_ud, n->extra); /* may close the pool */
        PQfreemem(n);
    }
}

/* An established connection has input (read: from the socket; else left
 * over from the last wake-up). One read per wake-up, at most
 * PG_WORK_PER_WAKEUP results or notifications. */
static void conn__on_input(pg_conn *c, bool read)
{
    unsigned budget = PG_WORK_PER_WAKEUP;
    if (read && !PQconsumeInput(c->pg)) {
        conn__drop_pq(c);
        return;
    }
    if (c->flushing && !conn__flush(c))
        return;
    conn__drain(c, &budget);
    conn__notifies(c, &budget);
    /* a state change above released c->pg, so this checks a live one */
    if (c->pg && c->state != CONN_CONNECTING && PQstatus(c->pg) == CONNECTION_BAD)
        conn__drop_pq(c);
}

static void conn__on_poll(uv_poll_t *h, int status, int events)
{
    pg_watch *w = h->data;
    pg_conn *c = w->conn;
    if (!c || c->watch != w)
        return;
    if (status < 0) {
        /* libuv reports POLLERR (a pending socket error: refused, reset)
         * as UV_EBADF and stops the handle. libpq reads the error itself
         * and says what it was (and may try the next address). */
        uv_poll_stop(&w->poll);
        w->events = 0;
        if (c->state == CONN_CONNECTING) {
            conn__connect_step(c);
            return;
        }
        if (c->state == CONN_CLOSED || !c->pg)
            return;
        conn__on_input(c, true);
        if (c->watch == w && c->pg) /* libpq read no error: still broken */
            conn__drop(c, PG_ERR_CONNECTION, "socket error");
        return;
    }
    switch (c->state) {
    case CONN_CONNECTING:
        conn__connect_step(c);
        break;
    case CONN_LISTEN_SENT:
    case CONN_IDLE:
    case CONN_BUSY:
        if ((events & UV_WRITABLE) && c->flushing && !conn__flush(c))
            break;
        if (events & UV_READABLE)
            conn__on_input(c, true);
        break;
    default:
        break;
    }
}

static void conn__set_idle(pg_conn *c)
{
    c->state = CONN_IDLE;
    uv_timer_stop(&c->timer);
    if (!c->listener)
        pool__dispatch(c->pool);
}

static void conn__on_timer_close(uv_handle_t *h)
{
    pg_conn *c = h->data;
    c->pool->handles--;
}

/* Closing: the running query fails, everything is released, the timer
 * closes. */
static void conn__shutdown(pg_conn *c)
{
    if (c->q) {
        pg_query *q = c->q;
        c->q = NULL;
        pool__fail(c->pool, q, PG_ERR_CLOSED, "database pool closing");
    }
    conn__release(c);
    c->state = CONN_CLOSED;
    uv_close((uv_handle_t *)&c->timer, conn__on_timer_close);
}

static void conn__init(pg_pool *p, pg_conn *c, const char *ctx)
{
    c->pool = p;
    snprintf(c->ctx, sizeof(c->ctx), "%s", ctx);
    uv_timer_init(p->loop, &c->timer);
    c->timer.data = c;
    p->handles++;
    c->state = CONN_WAIT;
}

/* ---- the pool ---- */

static void pool__dispatch(pg_pool *p)
{
    for (uint32_t i = 0; i < p->opt.size && p->queue.head; i++) {
        pg_conn *c = &p->conns[i];
        if (c->state != CONN_IDLE)
            continue;
        pg_query *q = p->queue.head;
        q_unlink(q);
        conn__start(c, q);
    }
}

static void pool__arm_queue_timer(pg_pool *p);

static void pool__on_queue_timer(uv_timer_t *t)
{
    pg_pool *p = t->data;
    uint64_t now = uv_now(p->loop);
    /* FIFO with one timeout: the head is always the oldest */
    while (p->queue.head && p->queue.head->queued_at + p->opt.queue_timeout_ms <= now) {
        pg_query *q = p->queue.head;
        q_unlink(q);
        pool__fail(p, q, PG_ERR_CONNECTION, "no database connection available within %u ms%s%s",
                   (unsigned)p->opt.queue_timeout_ms, p->last_error[0] ? ": " : "",
                   p->last_error);
    }
    pool__arm_queue_timer(p);
}

static void pool__arm_queue_timer(pg_pool *p)
{
    if (!p->queue.head || uv_is_active((uv_handle_t *)&p->queue_timer))
        return;
    uint64_t due = p->queue.head->queued_at + p->opt.queue_timeout_ms;
    uint64_t now = uv_now(p->loop);
    uv_timer_start(&p->queue_timer, pool__on_queue_timer, due > now ? due - now : 0, 0);
}

static void pool__resume(pg_conn *c)
{
    if (!c || !c->resume)
        return;
    c->resume = false;
    if (c->pg && (c->state == CONN_IDLE || c->state == CONN_BUSY || c->state == CONN_LISTEN_SENT))
        conn__on_input(c, false);
}

static bool pool__any_resume(const pg_pool *p)
{
    for (uint32_t i = 0; i < p->opt.size; i++)
        if (p->conns[i].resume)
            return true;
    return p->listener && p->listener->resume;
}

static void pool__maybe_finish(pg_pool *p)
{
    if (p->closing && !p->idle_closing && p->done.n == 0) {
        p->idle_closing = true;
        uv_close((uv_handle_t *)&p->idle, pool__on_handle_close);
    }
}

static void pool__on_idle(uv_idle_t *h)
{
    pg_pool *p = h->data;
    for (uint32_t i = 0; i < p->opt.size && !p->closing; i++)
        pool__resume(&p->conns[i]);
    if (!p->closing)
        pool__resume(p->listener);
    /* only the outcomes queued now: callbacks may queue more */
    for (uint32_t n = p->done.n; n > 0 && p->done.head; n--) {
        pg_query *q = p->done.head;
        q_unlink(q);
        q->state = Q_DELIVERING;
        if (q->res) {
            q->cb(q->ud, q->res, NULL);
        } else {
            pg_error e = {q->kind, q->sqlstate, q->msg};
            q->cb(q->ud, NULL, &e);
        }
        query__free(q);
    }
    if (p->done.n == 0 && !pool__any_resume(p))
        uv_idle_stop(&p->idle);
    pool__maybe_finish(p);
}

/* Fills the zero fields of opt with the defaults. */
static void pool__defaults(pg_options *o)
{
    if (!o->size)
        o->size = PG_DEF_SIZE;
    if (!o->connect_timeout_ms)
        o->connect_timeout_ms = PG_DEF_CONNECT_TIMEOUT_MS;
    if (!o->statement_timeout_ms)
        o->statement_timeout_ms = PG_DEF_STATEMENT_TIMEOUT_MS;
    if (!o->queue_timeout_ms)
        o->queue_timeout_ms = PG_DEF_QUEUE_TIMEOUT_MS;
    if (!o->max_queue)
        o->max_queue = PG_DEF_MAX_QUEUE;
    if (!o->backoff_min_ms)
        o->backoff_min_ms = PG_DEF_BACKOFF_MIN_MS;
    if (!o->backoff_max_ms)
        o->backoff_max_ms = PG_DEF_BACKOFF_MAX_MS;
    if (o->backoff_max_ms < o->backoff_min_ms)
        o->backoff_max_ms = o->backoff_min_ms;
}

static bool pg__has_comma(const char *s)
{
    return s && strchr(s, ',');
}

/* Sorts the parsed conninfo into what every attempt passes as is and what
 * the pool composes: host/hostaddr (resolved here), options (plus
 * statement_timeout), application_name. 0, or -1 with err set. */
static int pool__setup_conninfo(pg_pool *p, const char *appname, char *err, size_t errlen)
{
    const char *host = NULL, *hostaddr = NULL, *port = NULL, *uopts = NULL, *uapp = NULL;
    int n = 0;
    for (PQconninfoOption *o = p->ci; o->keyword; o++) {
        if (!o->val || !o->val[0])
            continue;
        if (strcmp(o->keyword, "host") == 0) {
            host = o->val;
        } else if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddr = o->val;
        } else if (strcmp(o->keyword, "options") == 0) {
            uopts = o->val;
        } else if (strcmp(o->keyword, "application_name") == 0) {
            uapp = o->val;
        } else {
            if (strcmp(o->keyword, "port") == 0)
                port = o->val;
            if (n >= PG_MAX_KEYWORDS - 6)
                goto out_toomany;
            p->kw[n] = o->keyword;
            p->val[n++] = o->val;
        }
    }
    /* without host libpq falls back to PGHOST and would resolve a name
     * there with getaddrinfo: take it here, as if the conninfo said it */
    if (!host && !hostaddr && !getenv("PGHOSTADDR")) {
        const char *env = getenv("PGHOST");
        if (env && env[0]) {
            p->env_host = strdup(env);
            if (!p->env_host)
                goto out_nomem;
            host = p->env_host;
        }
    }
    if (pg__has_comma(host) || pg__has_comma(hostaddr) || pg__has_comma(port)) {
        pg__seterr(err, errlen, "invalid conninfo: several hosts are not supported, give one");
        return -1;
    }
    unsigned char ip[sizeof(struct in6_addr)];
    bool path = host && (host[0] == '/' || host[0] == '@');
    bool literal = host && (uv_inet_pton(AF_INET, host, ip) == 0 || uv_inet_pton(AF_INET6, host, ip) == 0);
    if (host && !hostaddr && !path && !literal) {
        p->host = strdup(host); /* a name: resolved before each attempt */
        if (!p->host)
            goto out_nomem;
    } else {
        if (literal && !hostaddr)
            hostaddr = host; /* no lookup at all, not even a numeric one */
        if (host) {
            p->kw[n] = "host";
            p->val[n++] = host;
        }
        if (hostaddr) {
            p->kw[n] = "hostaddr";
            p->val[n++] = hostaddr;
        }
    }
    size_t olen = (uopts ? strlen(uopts) : 0) + 64;
    p->options = malloc(olen);
    p->appname = strdup(appname ? appname : uapp ? uapp : PG_DEF_APPNAME);
    if (!p->options || !p->appname)
        goto out_nomem;
    /* sessions speak UTC (timestamps the admin API prints end in +00:00)
     * unless the conninfo's own options say otherwise */
    snprintf(p->options, olen, "-c TimeZone=UTC %s%s-c statement_timeout=%u", uopts ? uopts : "",
             uopts ? " " : "", (unsigned)p->opt.statement_timeout_ms);
    p->kw[n] = "options";
    p->val[n++] = p->options;
    p->kw[n] = "application_name";
    p->val[n++] = p->appname;
    p->nkw = n;
    return 0;

out_toomany:
    pg__seterr(err, errlen, "invalid conninfo: too many keywords");
    return -1;
out_nomem:
    pg__seterr(err, errlen, "out of memory");
    return -1;
}

static void pool__free_memory(pg_pool *p)
{
    if (!p)
        return;
    for (uint32_t i = 0; p->conns && i < p->opt.size; i++)
        free(p->conns[i].prepared);
    free(p->conns);
    if (p->listener)
        free(p->listener->prepared);
    free(p->listener);
    PQconninfoFree(p->ci);
    free(p->host);
    free(p->env_host);
    free(p->options);
    free(p->appname);
    free(p);
}

pg_pool *pg_pool_new(uv_loop_t *loop, dns_cache *dns, const pg_options *opt, char *err,
                     size_t errlen)
{
    pg_pool *p = NULL;
    char *perr = NULL;
    PQconninfoOption *ci = PQconninfoParse(opt->conninfo ? opt->conninfo : "", &perr);
    if (!ci) {
        if (perr && err && errlen)
            pg__conninfo_error(err, errlen, perr);
        else if (!perr)
            pg__seterr(err, errlen, "out of memory");
        goto out_fail;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        pg__seterr(err, errlen, "out of memory");
        goto out_fail;
    }
    p->ci = ci;
    ci = NULL;
    p->loop = loop;
    p->opt = *opt;
    p->opt.conninfo = NULL; /* not kept: it may hold the password */
    p->opt.application_name = NULL;
    pool__defaults(&p->opt);
    if (pool__setup_conninfo(p, opt->application_name, err, errlen) != 0)
        goto out_free;
    p->conns = calloc(p->opt.size, sizeof(*p->conns));
    if (!p->conns) {
        pg__seterr(err, errlen, "out of memory");
        goto out_free;
    }
    if (p->host && !dns) {
        dns = dns_cache_new(loop, PG_DNS_TTL_MS, PG_DNS_ENTRIES);
        if (!dns) {
            pg__seterr(err, errlen, "out of memory");
            goto out_free;
        }
        p->own_dns = true;
    }
    p->dns = dns;

    /* nothing fails from here: the handles go live */
    p->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)p;
    if (!p->rng)
        p->rng = 0x9E3779B97F4A7C15ull;
    uv_idle_init(loop, &p->idle);
    p->idle.data = p;
    uv_timer_init(loop, &p->queue_timer);
    p->queue_timer.data = p;
    p->handles += 2;
    for (uint32_t i = 0; i < p->opt.size; i++) {
        char ctx[24];
        snprintf(ctx, sizeof(ctx), "pg conn %u", (unsigned)i);
        conn__init(p, &p->conns[i], ctx);
        uv_timer_start(&p->conns[i].timer, conn__on_timer, 0, 0);
    }
    return p;

out_free:
    pool__free_memory(p);
    p = NULL;
out_fail:
    PQconninfoFree(ci);
    PQfreemem(perr);
    return NULL;
}

pg_query *pg_send(pg_pool *p, const pg_stmt *stmt, const char *sql, int nparams,
                  const char *const *values, pg_cb cb, void *ud)
{
    if (!p || p->closing || !cb || nparams < 0 || nparams > PG_MAX_PARAMS ||
        (nparams > 0 && !values))
        return NULL;
    if (stmt ? (!stmt->name || !stmt->sql || stmt->nparams != nparams) : !sql)
        return NULL;
    if (p->queue.n >= p->opt.max_queue)
        return NULL;

    size_t sqllen = stmt ? 0 : strlen(sql) + 1;
    size_t size = sizeof(pg_query) + (size_t)nparams * sizeof(char *) + sqllen;
    for (int i = 0; i < nparams; i++)
        if (values[i])
            size += strlen(values[i]) + 1;
    pg_query *q = calloc(1, size);
    if (!q)
        return NULL;
    /* the pointer array right after the struct, then the strings */
    q->values = (const char **)(q + 1);
    char *s = (char *)(q->values + nparams);
    for (int i = 0; i < nparams; i++) {
        if (!values[i])
            continue;
        size_t len = strlen(values[i]) + 1;
        memcpy(s, values[i], len);
        q->values[i] = s;
        s += len;
    }
    if (!stmt) {
        memcpy(s, sql, sqllen);
        q->sql = s;
    }
    q->stmt = stmt;
    q->nparams = nparams;
    q->cb = cb;
    q->ud = ud;
    q->queued_at = uv_now(p->loop);
    q->state = Q_QUEUED;
    q_push(&p->queue, q);
    pool__dispatch(p);
    pool__arm_queue_timer(p);
    return q;
}

void pg_cancel(pg_query *q)
{
    if (!q)
        return;
    switch (q->state) {
    case Q_QUEUED:
    case Q_DONE:
        q_unlink(q);
        query__free(q);
        break;
    case Q_RUNNING:
        q->cb = NULL; /* its connection drops the outcome */
        break;
    case Q_DELIVERING:
        break;
    }
}

static bool pg__valid_channel(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > PG_CHANNEL_MAX || !((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

int pg_listen(pg_pool *p, const char *channel, pg_notify_cb cb, void *ud)
{
    if (!p || p->closing || !cb || !pg__valid_channel(channel))
        return -EINVAL;
    if (p->listener)
        return -EALREADY;
    pg_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    snprintf(p->channel, sizeof(p->channel), "%s", channel);
    p->notify_cb = cb;
    p->notify_ud = ud;
    p->listener = c;
    conn__init(p, c, "pg listen");
    c->listener = true;
    uv_timer_start(&c->timer, conn__on_timer, 0, 0);
    return 0;
}

bool pg_pool_ready(const pg_pool *p)
{
    for (uint32_t i = 0; i < p->opt.size; i++)
        if (p->conns[i].state == CONN_IDLE || p->conns[i].state == CONN_BUSY)
            return true;
    return false;
}

bool pg_pool_trouble(const pg_pool *p) { return p->last_error[0] != '\0'; }

void pg_pool_retry_now(pg_pool *p)
{
    if (p && !p->closing)
        pool__wake_waiting(p);
}

void pg_pool_stats(const pg_pool *p, pg_stats *out)
{
    *out = p->st;
    out->up = out->busy = 0;
    for (uint32_t i = 0; i < p->opt.size; i++) {
        if (p->conns[i].state == CONN_IDLE || p->conns[i].state == CONN_BUSY)
            out->up++;
        if (p->conns[i].state == CONN_BUSY)
            out->busy++;
    }
    out->queued = p->queue.n;
    out->listening = p->listener && p->listener->state == CONN_IDLE;
}

void pg_pool_close(pg_pool *p)
{
    if (!p || p->closing)
        return;
    p->closing = true;
    for (uint32_t i = 0; i < p->opt.size; i++)
        conn__shutdown(&p->conns[i]);
    if (p->listener)
        conn__shutdown(p->listener);
    while (p->queue.head) {
        pg_query *q = p->queue.head;
        q_unlink(q);
        pool__fail(p, q, PG_ERR_CLOSED, "database pool closing");
    }
    uv_close((uv_handle_t *)&p->queue_timer, pool__on_handle_close);
    if (p->own_dns)
        dns_cache_close(p->dns); /* after conn__release cancelled our lookups */
    pool__maybe_finish(p); /* else the idle handle delivers, then closes */
}

void pg_pool_free(pg_pool *p)
{
    if (!p)
        return;
    if (!p->closing || p->handles) {
        /* freeing now would leave libuv with pointers into the pool */
        log_error("pg", "pg_pool_free before the pool closed (%u handles open): leaked",
                  p->handles);
        return;
    }
    pool__free_memory(p);
}

const char *pg_value(const PGresult *res, int r, int c)
{
    if (!res || r < 0 || c < 0 || r >= PQntuples(res) || c >= PQnfields(res) ||
        PQgetisnull(res, r, c))
        return NULL;
    return PQgetvalue(res, r, c);
}

int pg_column(const PGresult *res, const char *name)
{
    return res && name ? PQfnumber(res, name) : -1;
}
