/* ledger.c - the usage ledger: spool-ahead, batch shipping, replay (see
 * ledger.h).
 *
 * State of the spool, as a list of segments oldest first:
 *
 *   [closed, replay] ... [closed, replay]  [open]
 *
 * The open segment takes every write. In live mode its durable batches
 * are also kept in memory and shipped from there (no disk read); a
 * segment whose every byte was acknowledged is deleted when it closes. A
 * failed shipment turns shipping off ("replay mode"): the open segment is
 * closed and marked for replay, batches in memory are dropped (they are
 * on disk), and later writes are not shipped live. The replayer reads the
 * marked segments from disk oldest first and ships them in order; when
 * none is left and the open segment holds nothing unshipped, live
 * shipping resumes (if it does hold some, it is closed and replayed too).
 *
 * Writes go through uv_fs (the libuv thread pool): write, then fsync,
 * then the batch counts as durable. One write is in flight at a time, so
 * the file is append-only and in order. */
#include "billing/ledger.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "providers/jscan.h"

#define LEDGER_READ_CHUNK (1u << 20) /* replay read size */
#define LEDGER_MAX_LINE (1u << 20)   /* a row longer than this is corrupt */
#define LEDGER_SEG_SUFFIX ".jsonl"
#define LEDGER_REJECTED "rejected.jsonl"

typedef struct segment {
    uint64_t seq;
    char path[4096];
    uv_file fd;          /* the open segment's descriptor; -1 when closed */
    uint64_t bytes;      /* durable bytes */
    uint64_t acked;      /* bytes acknowledged live */
    uint64_t replay_off; /* replay: bytes acknowledged from the start */
    uint64_t reject_off; /* replay: corrupt lines before it are in rejected.jsonl already */
    bool closed;
    bool replay;           /* must be (re)shipped from disk */
    bool remove;           /* replayed whole: unlink once no live batch of it is in flight */
    unsigned inflight;     /* live batches of it in shipments */
    uint64_t t_unacked_ns; /* when it first held unacknowledged bytes; 0 none */
    struct segment *next;
} segment;

/* Rows as JSON lines. */
typedef struct batch {
    buf data; /* rows, each followed by '\n' */
    size_t rows;
    segment *seg;  /* where it was written */
    uint64_t t_ns; /* when it became durable */
    struct batch *next;
} batch;

/* One shipment to the sink (live batches, or a replay slice). */
typedef struct shipment {
    ledger *l;
    buf json; /* "[row,row,...]" */
    size_t rows;
    batch *batches; /* live: the batches it carries (freed when acked) */
    segment *seg;   /* replay: the segment, and the bytes it covers */
    uint64_t replay_end;
    bool single; /* a one-row retry after a data error */
    buf line;    /* single: the row, for the rejected file */
} shipment;

struct ledger {
    uv_loop_t *loop;
    ledger_options o;
    char dir[4000];
    char instance[128];
    int lock_fd;
    ledger_sink_fn sink;
    void *sink_ud;
    uv_timer_t spool_timer, ship_timer, retry_timer;
    bool closing;
    buf cur; /* rows not yet written */
    size_t cur_rows;
    batch *writing; /* the write in flight */
    uv_fs_t wreq, freq;
    segment *segs; /* oldest first; the last is the open one */
    uint64_t next_seq;
    bool write_failed; /* the spool cannot be written: not accepting */
    /* live shipping */
    bool live; /* ship durable batches from memory */
    batch *queue, **queue_tail;
    size_t queue_rows;
    unsigned ships; /* shipments in flight */
    /* replay */
    segment *rseg;  /* being replayed */
    bool rbusy;     /* a replay read or shipment in flight */
    buf rbuf;       /* bytes read, not yet shipped */
    uint64_t rread; /* file offset read up to */
    uv_fs_t rreq;
    char *rchunk;
    bool failing; /* the last shipment failed: wait for retry_timer */
    /* drain */
    void (*drained)(void *);
    void *drained_ud;
    ledger_stats st;
    /* rows appended from other threads (workers): taken into cur on the
     * owner's loop before every write */
    uv_thread_t owner;
    uv_mutex_t in_lock;
    buf inbox;
    size_t in_rows;
    int accepting_pub; /* ledger_accepting() as last seen on the owner (atomic) */
};

static void replay_step(ledger *l);
static void retry_timer_cb(uv_timer_t *t);
static void sync_write_cur(ledger *l);
static void seg_maybe_gone(ledger *l, segment *s);
static void go_replay(ledger *l);

/* ------------------------------------------------------------ rows */

/* ,"name": (the first member without the comma); no printf: a row is
 * written for every call. */
static int json_name(buf *b, const char *name, bool comma)
{
    int rc = comma ? buf_append(b, ",\"", 2) : buf_append(b, "\"", 1);
    if (!rc)
        rc = buf_append_str(b, name);
    return rc ? rc : buf_append(b, "\":", 2);
}

static int json_str_or_null(buf *b, const char *name, const char *v, bool comma)
{
    int rc = json_name(b, name, comma);
    if (rc)
        return rc;
    if (!v)
        return buf_append(b, "null", 4);
    rc = buf_append(b, "\"", 1);
    if (!rc)
        rc = buf_append_json_escaped(b, v, strlen(v));
    if (!rc)
        rc = buf_append(b, "\"", 1);
    return rc;
}

static int json_i64_or_null(buf *b, const char *name, int64_t v, bool present)
{
    int rc = json_name(b, name, true);
    if (rc)
        return rc;
    return present ? buf_append_i64(b, v) : buf_append(b, "null", 4);
}

/* "YYYY-MM-DDTHH:MM:SS" of secs, kept per thread for the second it was
 * last asked for (rows of one second share it). */
static const char *utc_second(time_t secs)
{
    static __thread time_t last = (time_t)-1;
    static __thread char text[32];
    if (secs != last) {
        struct tm tm;
        gmtime_r(&secs, &tm);
        strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &tm);
        last = secs;
    }
    return text;
}

int ledger_row_json(const ledger_row *r, const char *instance, buf *out)
{
    int64_t secs = r->at_us / 1000000, frac = r->at_us % 1000000;
    if (frac < 0) { /* before 1970: the fraction counts up from the second below */
        secs--;
        frac += 1000000;
    }
    char us[8] = {'.'};
    for (int i = 6; i > 0; i--, frac /= 10)
        us[i] = (char)('0' + frac % 10);
    us[7] = 'Z';

    int rc = buf_append(out, "{", 1);
    if (!rc)
        rc = json_str_or_null(out, "id", r->id, false);
    if (!rc)
        rc = json_str_or_null(out, "request_id", r->request_id ? r->request_id : "", true);
    if (!rc)
        rc = json_name(out, "at", true);
    if (!rc)
        rc = buf_append(out, "\"", 1);
    if (!rc)
        rc = buf_append_str(out, utc_second((time_t)secs));
    if (!rc)
        rc = buf_append(out, us, sizeof(us));
    if (!rc)
        rc = buf_append(out, "\"", 1);
    if (!rc)
        rc = json_str_or_null(out, "instance", instance, true);
    if (!rc)
        rc = json_str_or_null(out, "key_id", r->key_id, true);
    if (!rc)
        rc = json_str_or_null(out, "key_alias", r->key_alias ? r->key_alias : "", true);
    if (!rc)
        rc = json_str_or_null(out, "team_id", r->team_id, true);
    if (!rc)
        rc = json_str_or_null(out, "org_id", r->org_id, true);
    if (!rc)
        rc = json_str_or_null(out, "job_id", r->job_id, true);
    if (!rc)
        rc = json_str_or_null(out, "endpoint", r->endpoint ? r->endpoint : "chat", true);
    if (!rc)
        rc = json_str_or_null(out, "requested_model", r->requested_model ? r->requested_model : "",
                              true);
    if (!rc)
        rc = json_str_or_null(out, "provider", r->provider ? r->provider : "", true);
    if (!rc)
        rc = json_str_or_null(out, "provider_model", r->provider_model ? r->provider_model : "",
                              true);
    if (!rc)
        rc = json_name(out, "stream", true);
    if (!rc)
        rc = r->stream ? buf_append(out, "true", 4) : buf_append(out, "false", 5);
    if (!rc)
        rc = json_i64_or_null(out, "status", r->status, true);
    if (!rc)
        rc = json_i64_or_null(out, "upstream_status", r->upstream_status, r->upstream_status > 0);
    if (!rc)
        rc = json_i64_or_null(out, "prompt_tokens", r->prompt_tokens, true);
    if (!rc)
        rc = json_i64_or_null(out, "completion_tokens", r->completion_tokens, true);
    if (!rc)
        rc = json_i64_or_null(out, "cached_tokens", r->cached_tokens, true);
    if (!rc)
        rc = json_i64_or_null(out, "cache_write_tokens", r->cache_write_tokens, true);
    if (!rc)
        rc =
            json_str_or_null(out, "usage_source", r->usage_source ? r->usage_source : "none", true);
    if (!rc)
        rc = json_i64_or_null(out, "cost_nano", r->cost_nano, r->cost_nano >= 0);
    if (!rc)
        rc = json_i64_or_null(out, "price_nano", r->price_nano, r->price_nano >= 0);
    if (!rc)
        rc = json_str_or_null(out, "credential", r->credential ? r->credential : "config", true);
    if (!rc)
        rc = json_i64_or_null(out, "latency_us", r->latency_us, true);
    if (!rc)
        rc = json_i64_or_null(out, "ttft_us", r->ttft_us, r->ttft_us >= 0);
    if (!rc)
        rc = json_i64_or_null(out, "attempts", r->attempts, true);
    if (!rc)
        rc = json_str_or_null(out, "error", r->error, true);
    if (!rc)
        rc = r->credit_leased ? buf_append_str(out, ",\"credit_leased\":true")
                              : buf_append_str(out, ",\"credit_leased\":false");
    if (!rc)
        rc = buf_append(out, "}", 1);
    return rc;
}

/* ------------------------------------------------------------ segments */

static void seg_path(const ledger *l, uint64_t seq, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%016" PRIx64 LEDGER_SEG_SUFFIX, l->dir, seq);
}

static segment *seg_open(ledger *l)
{
    segment *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->seq = l->next_seq++;
    seg_path(l, s->seq, s->path, sizeof(s->path));
    /* a metadata operation once per segment (64 MiB of rows): done on the
     * loop synchronously, like the daemon's other rare file opens */
    uv_fs_t req;
    int fd = uv_fs_open(NULL, &req, s->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0) {
        log_error(NULL, "ledger: cannot create %s: %s", s->path, uv_strerror(fd));
        free(s);
        return NULL;
    }
    s->fd = fd;
    segment **pp = &l->segs;
    while (*pp)
        pp = &(*pp)->next;
    *pp = s;
    l->st.segments++;
    return s;
}

static segment *seg_current(ledger *l)
{
    segment *s = l->segs;
    while (s && s->next)
        s = s->next;
    return s && !s->closed ? s : NULL;
}

static void seg_unlink(ledger *l, segment *s)
{
    for (segment **pp = &l->segs; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    if (s->fd >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, s->fd, NULL);
        uv_fs_req_cleanup(&req);
    }
    if (l->sink) { /* DB-less: the spool is the ledger, never deleted */
        if (unlink(s->path) != 0 && errno != ENOENT)
            log_warn(NULL, "ledger: cannot remove %s: %s", s->path, strerror(errno));
    }
    l->st.segments--;
    free(s);
}

/* Closes the open segment (it stays on disk); a new one opens at the next
 * write. A closed segment with nothing left to ship goes away. */
static void seg_close(ledger *l, segment *s)
{
    if (!s || s->closed)
        return;
    s->closed = true;
    if (s->fd >= 0) {
        uv_fs_t req;
        uv_fs_close(NULL, &req, s->fd, NULL);
        uv_fs_req_cleanup(&req);
        s->fd = -1;
    }
    if (l->sink)
        seg_maybe_gone(l, s);
}

/* ------------------------------------------------------------ the backlog */

static uint64_t backlog_bytes(const ledger *l)
{
    uint64_t b = 0;
    if (!l->sink)
        return 0;
    for (const segment *s = l->segs; s; s = s->next)
        b += s->replay ? s->bytes - s->replay_off : s->bytes - s->acked;
    return b;
}

static bool accepting_now(const ledger *l)
{
    return !l->write_failed && backlog_bytes(l) <= l->o.spool_max_bytes;
}

static bool on_owner(const ledger *l)
{
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &l->owner);
}

bool ledger_accepting(const ledger *l)
{
    if (on_owner(l))
        return accepting_now(l);
    return __atomic_load_n(&l->accepting_pub, __ATOMIC_RELAXED) != 0;
}

/* The rows other threads appended join the open batch (owner only). */
static void inbox_take(ledger *l)
{
    uv_mutex_lock(&l->in_lock);
    if (l->inbox.len) {
        if (buf_append(&l->cur, l->inbox.data, l->inbox.len) == 0) {
            l->cur_rows += l->in_rows;
            l->st.rows += l->in_rows;
            buf_reset(&l->inbox);
            l->in_rows = 0;
        } else {
            log_error(NULL, "ledger: out of memory taking %zu rows of other workers; kept for "
                            "the next write", l->in_rows);
        }
    }
    uv_mutex_unlock(&l->in_lock);
    __atomic_store_n(&l->accepting_pub, accepting_now(l) ? 1 : 0, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ shipping */

static void batch_free(batch *b)
{
    buf_free(&b->data);
    free(b);
}

static void ship_done(void *token, int status);

/* Turns JSON lines into a JSON array. */
static int lines_to_array(const char *p, size_t n, buf *out, size_t *rows)
{
    int rc = buf_append_str(out, "[");
    size_t i = 0;
    bool first = true;
    while (!rc && i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t e = nl ? (size_t)(nl - p) : n;
        if (e > i) {
            if (!first)
                rc = buf_append_str(out, ",");
            if (!rc)
                rc = buf_append(out, p + i, e - i);
            first = false;
            (*rows)++;
        }
        i = e + 1;
    }
    if (!rc)
        rc = buf_append_str(out, "]");
    return rc;
}

static int ship(ledger *l, shipment *sh)
{
    l->ships++;
    int rc = l->sink(l->sink_ud, sh->json.data, sh->json.len, sh->rows, ship_done, sh);
    if (rc < 0) {
        l->ships--;
        return rc;
    }
    return 0;
}

/* Live: ships up to batch_rows rows of the queue in one statement. */
static void ship_live(ledger *l)
{
    if (!l->live || l->failing || !l->queue || l->ships >= 2 || l->closing)
        return;
    shipment *sh = calloc(1, sizeof(*sh));
    if (!sh)
        return;
    sh->l = l;
    buf_init(&sh->json, 256u << 20);
    batch **tail = &sh->batches;
    while (l->queue && (sh->rows == 0 || sh->rows + l->queue->rows <= l->o.batch_rows)) {
        batch *b = l->queue;
        b->seg->inflight++;
        l->queue = b->next;
        l->queue_rows -= b->rows;
        b->next = NULL;
        *tail = b;
        tail = &b->next;
        sh->rows += b->rows;
    }
    if (!l->queue)
        l->queue_tail = &l->queue;
    /* live batches hold whole rows, each ending in '\n': the array is
     * their bytes with every '\n' turned into ',' (the last into ']'),
     * built in one allocation and one copy per batch */
    size_t total = 1;
    for (batch *b = sh->batches; b; b = b->next)
        total += b->data.len;
    int rc = buf_reserve(&sh->json, total + 1);
    if (!rc)
        rc = buf_append_str(&sh->json, "[");
    for (batch *b = sh->batches; !rc && b; b = b->next) {
        size_t at = sh->json.len;
        rc = buf_append(&sh->json, b->data.data, b->data.len);
        for (char *q = sh->json.data + at; !rc && q < sh->json.data + sh->json.len; q++)
            if (*q == '\n')
                *q = ',';
    }
    if (!rc && sh->json.len > 1 && sh->json.data[sh->json.len - 1] == ',')
        sh->json.data[sh->json.len - 1] = ']';
    else if (!rc)
        rc = buf_append_str(&sh->json, "]");
    if (rc || ship(l, sh) != 0) {
        /* could not even start: the rows are on disk; replay them later */
        l->st.batches_failed++;
        for (batch *b = sh->batches, *n; b; b = n) {
            n = b->next;
            b->seg->inflight--;
            b->seg->replay = true;
            batch_free(b);
        }
        buf_free(&sh->json);
        free(sh);
        go_replay(l); /* the rest of the queue too: its segments may go once replayed */
        l->failing = true;
        uv_timer_start(&l->retry_timer, retry_timer_cb, l->o.retry_ms, 0);
    }
}

/* A live shipment failed for good reasons of the database: every batch
 * of the queue and the shipment becomes replay work; shipping stops. */
static void go_replay(ledger *l)
{
    l->live = false;
    for (batch *b = l->queue, *n; b; b = n) {
        n = b->next;
        b->seg->replay = true;
        batch_free(b);
    }
    l->queue = NULL;
    l->queue_tail = &l->queue;
    l->queue_rows = 0;
    segment *cur = seg_current(l);
    if (cur)
        cur->replay = cur->replay || cur->acked < cur->bytes || l->writing;
}

/* Unlinks s if it is done with: replayed whole (remove) or closed and
 * acknowledged, and no live batch of it is still in a shipment. */
static void seg_maybe_gone(ledger *l, segment *s)
{
    if (s->inflight || s == l->rseg || (l->writing && l->writing->seg == s))
        return;
    if (s->remove || (s->closed && !s->replay && s->acked >= s->bytes))
        seg_unlink(l, s);
}

static void rejected_append(ledger *l, const char *line, size_t n)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" LEDGER_REJECTED, l->dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_error(NULL, "ledger: cannot keep a rejected row in %s: %s", path, strerror(errno));
        return;
    }
    if (write(fd, line, n) != (ssize_t)n || write(fd, "\n", 1) != 1)
        log_error(NULL, "ledger: writing %s: %s", path, strerror(errno));
    fsync(fd);
    close(fd);
}

/* A row of a one-by-one retry that failed for want of the database (not
 * for its data): back into the open batch, written and shipped again like
 * a new row. */
static void respool_row(ledger *l, const char *line, size_t n)
{
    size_t mark = l->cur.len;
    if (buf_append(&l->cur, line, n) != 0 || buf_append(&l->cur, "\n", 1) != 0) {
        l->cur.len = mark;
        log_error(NULL, "ledger: out of memory: a row is kept in %s/" LEDGER_REJECTED, l->dir);
        rejected_append(l, line, n);
        return;
    }
    l->cur_rows++;
    if (l->closing && !l->writing)
        sync_write_cur(l);
}

/* The database refused a shipment's data (not a connection problem):
 * ship its rows one by one; a row refused alone is kept in
 * rejected.jsonl and logged, so one bad row never blocks the ledger. */
static void split_rows(ledger *l, const char *arr, size_t n)
{
    jscan_val root, it;
    jscan_iter iter;
    if (jscan_root(arr, n, &root) != 0 || root.type != JSCAN_ARRAY ||
        jscan_iter_init(&iter, &root) != 0)
        return;
    while (jscan_arr_next(&iter, &it) == 0) {
        shipment *one = calloc(1, sizeof(*one));
        if (!one)
            break;
        one->l = l;
        one->single = true;
        one->rows = 1;
        buf_init(&one->json, LEDGER_MAX_LINE + 8);
        buf_init(&one->line, LEDGER_MAX_LINE + 8);
        if (buf_append_str(&one->json, "[") || buf_append(&one->json, it.p, it.n) ||
            buf_append_str(&one->json, "]") || buf_append(&one->line, it.p, it.n) ||
            ship(l, one) != 0) {
            respool_row(l, it.p, it.n);
            buf_free(&one->json);
            buf_free(&one->line);
            free(one);
        }
    }
}

static void maybe_drained(ledger *l);

static void ship_done(void *token, int status)
{
    shipment *sh = token;
    ledger *l = sh->l;
    l->ships--;
    if (sh->single) {
        if (status == 0) {
            l->st.rows_shipped++;
        } else if (status != -EINVAL) {
            respool_row(l, sh->line.data, sh->line.len);
        } else {
            log_error(NULL,
                      "ledger: the database refused a row (kept in %s/" LEDGER_REJECTED "): %.200s",
                      l->dir, sh->line.data ? sh->line.data : "");
            rejected_append(l, sh->line.data, sh->line.len);
        }
        buf_free(&sh->line);
    } else if (status == 0) {
        l->failing = false;
        l->st.rows_shipped += sh->rows;
        for (batch *b = sh->batches, *n; b; b = n) {
            n = b->next;
            segment *sg = b->seg;
            sg->acked += b->data.len;
            sg->inflight--;
            if (sg->acked >= sg->bytes)
                sg->t_unacked_ns = 0;
            batch_free(b);
            seg_maybe_gone(l, sg);
        }
        if (sh->seg) { /* a replay slice */
            sh->seg->replay_off = sh->replay_end;
            l->st.replayed_rows += sh->rows;
            l->rbusy = false;
        }
    } else if (status == -EINVAL) {
        /* a data error: the rows, one at a time */
        l->st.batches_failed++;
        split_rows(l, sh->json.data, sh->json.len);
        for (batch *b = sh->batches, *n; b; b = n) {
            n = b->next;
            segment *sg = b->seg;
            sg->acked += b->data.len;
            sg->inflight--;
            batch_free(b);
            seg_maybe_gone(l, sg);
        }
        if (sh->seg) {
            sh->seg->replay_off = sh->replay_end;
            l->rbusy = false;
        }
    } else {
        l->st.batches_failed++;
        if (!l->failing)
            log_warn(NULL, "ledger: shipping %zu rows failed (%s); spooling and retrying", sh->rows,
                     strerror(-status));
        l->failing = true;
        for (batch *b = sh->batches, *n; b; b = n) {
            n = b->next;
            b->seg->replay = true;
            b->seg->inflight--;
            batch_free(b);
        }
        if (sh->seg) {
            /* the slice goes again: back to the last acknowledged offset */
            l->rbusy = false;
            l->rread = sh->seg->replay_off;
            buf_reset(&l->rbuf);
        }
        go_replay(l);
        if (!l->closing)
            uv_timer_start(&l->retry_timer, retry_timer_cb, l->o.retry_ms, 0);
    }
    buf_free(&sh->json);
    free(sh);
    if (!l->closing && !l->failing) {
        replay_step(l);
        ship_live(l);
    }
    maybe_drained(l);
}

/* ------------------------------------------------------------ replay */

static segment *next_replay(ledger *l)
{
    for (segment *s = l->segs; s; s = s->next)
        if (s->closed && s->replay)
            return s;
    return NULL;
}

static void replay_read_cb(uv_fs_t *req);

/* Ships the complete lines of rbuf (up to batch_rows), or reads more. */
static void replay_step(ledger *l)
{
    if (!l->sink || l->rbusy || l->failing || l->closing)
        return;
    if (!l->rseg) {
        l->rseg = next_replay(l);
        if (!l->rseg) {
            /* nothing closed is left to replay. The open segment may hold
             * rows written while shipping was off: close it (a write in
             * flight there first completes), ship live from a new segment
             * at once, and replay that one beside the live traffic, so
             * replay converges under steady load too. */
            segment *cur = seg_current(l);
            if (cur && cur->replay) {
                if (l->writing && l->writing->seg == cur)
                    return; /* write_done calls again */
                seg_close(l, cur);
                l->rseg = next_replay(l);
            }
            if (!l->live)
                log_info(NULL, "ledger: shipping live again%s",
                         l->rseg ? "; replaying the rest of the spool beside it" : "");
            l->live = true;
            if (!l->rseg) {
                l->st.replaying = false;
                return;
            }
        }
        l->st.replaying = true;
        buf_reset(&l->rbuf);
        l->rread = l->rseg->replay_off;
        log_info(NULL, "ledger: replaying %s (%" PRIu64 " bytes)", l->rseg->path,
                 l->rseg->bytes - l->rseg->replay_off);
    }
    segment *s = l->rseg;
    /* complete lines available? */
    size_t rows = 0, end = 0;
    for (size_t i = 0; i < l->rbuf.len && rows < l->o.batch_rows; i++) {
        if (l->rbuf.data[i] == '\n') {
            rows++;
            end = i + 1;
        }
    }
    bool eof = l->rread >= s->bytes;
    if (rows > 0 && (rows >= l->o.batch_rows || eof || l->rbuf.len >= LEDGER_READ_CHUNK)) {
        shipment *sh = calloc(1, sizeof(*sh));
        if (!sh)
            return;
        sh->l = l;
        sh->seg = s;
        buf_init(&sh->json, 256u << 20);
        /* only valid JSON lines go: a corrupt one is kept aside */
        buf lines;
        buf_init(&lines, 256u << 20);
        size_t i = 0;
        while (i < end) {
            const char *nl = memchr(l->rbuf.data + i, '\n', end - i);
            size_t e = (size_t)(nl - l->rbuf.data);
            jscan_error je;
            if (e > i && jscan_validate(l->rbuf.data + i, e - i, 64, &je) == 0) {
                if (buf_append(&lines, l->rbuf.data + i, e - i + 1) != 0)
                    break;
            } else if (e > i && l->rread - l->rbuf.len + i >= s->reject_off) {
                /* once: a slice that failed is read again */
                log_error(NULL, "ledger: %s: a corrupt row at offset %" PRIu64 " is set aside",
                          s->path, l->rread - l->rbuf.len + i);
                rejected_append(l, l->rbuf.data + i, e - i);
                s->reject_off = l->rread - l->rbuf.len + e + 1;
            }
            i = e + 1;
        }
        sh->replay_end = l->rread - l->rbuf.len + end;
        if (lines_to_array(lines.data ? lines.data : "", lines.len, &sh->json, &sh->rows) != 0) {
            buf_free(&lines);
            buf_free(&sh->json);
            free(sh);
            return;
        }
        buf_free(&lines);
        buf_consume(&l->rbuf, end);
        l->rbusy = true;
        if (sh->rows == 0) {
            /* nothing valid in this slice: acknowledge it at once */
            l->ships++;
            ship_done(sh, 0);
            return;
        }
        if (ship(l, sh) != 0) {
            l->st.batches_failed++;
            l->rbusy = false;
            buf_free(&sh->json);
            free(sh);
            /* the slice goes again: back to the last acknowledged offset
             * (its lines are gone from rbuf) */
            l->rread = s->replay_off;
            buf_reset(&l->rbuf);
            l->failing = true;
            uv_timer_start(&l->retry_timer, retry_timer_cb, l->o.retry_ms, 0);
        }
        return;
    }
    if (eof) {
        if (l->rbuf.len)
            log_warn(NULL,
                     "ledger: %s ends in a torn row (%zu bytes, a crash mid-write); "
                     "skipped",
                     s->path, l->rbuf.len);
        buf_reset(&l->rbuf);
        l->rseg = NULL;
        s->replay = false;
        s->replay_off = s->bytes;
        s->remove = true;
        seg_maybe_gone(l, s);
        replay_step(l);
        return;
    }
    /* read more */
    if (l->rbuf.len > LEDGER_MAX_LINE) {
        if (l->rread - l->rbuf.len >= s->reject_off) {
            log_error(NULL,
                      "ledger: %s: a line longer than %u bytes; the rest of the segment is "
                      "set aside",
                      s->path, LEDGER_MAX_LINE);
            rejected_append(l, l->rbuf.data, l->rbuf.len);
            s->reject_off = s->bytes;
        }
        buf_reset(&l->rbuf);
        l->rread = s->bytes;
        replay_step(l);
        return;
    }
    int fd = s->fd;
    if (fd < 0) {
        uv_fs_t oreq;
        fd = uv_fs_open(NULL, &oreq, s->path, O_RDONLY | O_CLOEXEC, 0, NULL);
        uv_fs_req_cleanup(&oreq);
        if (fd < 0) {
            log_error(NULL, "ledger: cannot read %s: %s", s->path, uv_strerror(fd));
            l->failing = true;
            uv_timer_start(&l->retry_timer, retry_timer_cb, l->o.retry_ms, 0);
            return;
        }
        s->fd = fd;
    }
    uv_buf_t b = uv_buf_init(l->rchunk, LEDGER_READ_CHUNK);
    l->rbusy = true;
    l->rreq.data = l;
    if (uv_fs_read(l->loop, &l->rreq, fd, &b, 1, (int64_t)l->rread, replay_read_cb) != 0)
        l->rbusy = false;
}

static void replay_read_cb(uv_fs_t *req)
{
    ledger *l = req->data;
    ssize_t n = req->result;
    uv_fs_req_cleanup(req);
    l->rbusy = false;
    if (l->closing) {
        maybe_drained(l);
        return;
    }
    segment *s = l->rseg;
    if (n < 0) {
        log_error(NULL, "ledger: reading %s: %s", s->path, uv_strerror((int)n));
        l->failing = true;
        uv_timer_start(&l->retry_timer, retry_timer_cb, l->o.retry_ms, 0);
        return;
    }
    if (n == 0) { /* shorter than we thought: treat as the end */
        s->bytes = l->rread;
    } else if (buf_append(&l->rbuf, l->rchunk, (size_t)n) != 0) {
        log_error(NULL, "ledger: out of memory replaying %s", s->path);
        return;
    }
    l->rread += (uint64_t)(n > 0 ? n : 0);
    if (s->fd >= 0 && l->rread >= s->bytes) {
        uv_fs_t creq;
        uv_fs_close(NULL, &creq, s->fd, NULL);
        uv_fs_req_cleanup(&creq);
        s->fd = -1;
    }
    replay_step(l);
}

/* ------------------------------------------------------------ writing */

static void queue_push(ledger *l, batch *b)
{
    *l->queue_tail = b;
    l->queue_tail = &b->next;
    l->queue_rows += b->rows;
}

/* Queues a durable batch for live shipping in pieces of at most
 * batch_rows rows: one write may hold more rows than a statement may
 * carry (ledger.h: batch_rows). Out of memory, the rest goes whole. */
static void queue_live(ledger *l, batch *b)
{
    size_t off = 0;
    while (b->rows > l->o.batch_rows) {
        size_t end = off;
        for (uint32_t k = 0; k < l->o.batch_rows; k++) { /* b->rows newlines follow off */
            const char *nl = memchr(b->data.data + end, '\n', b->data.len - end);
            end = (size_t)(nl - b->data.data) + 1;
        }
        batch *p = calloc(1, sizeof(*p));
        if (p)
            buf_init(&p->data, b->data.max);
        if (!p || buf_append(&p->data, b->data.data + off, end - off) != 0) {
            free(p);
            break;
        }
        p->rows = l->o.batch_rows;
        p->seg = b->seg;
        p->t_ns = b->t_ns;
        b->rows -= p->rows;
        queue_push(l, p);
        off = end;
    }
    if (off)
        buf_consume(&b->data, off);
    queue_push(l, b);
}

static void write_done(ledger *l, int status)
{
    batch *b = l->writing;
    l->writing = NULL;
    if (status < 0) {
        if (!l->write_failed)
            log_error(NULL,
                      "ledger: cannot write the spool %s: %s; refusing new calls until it "
                      "works",
                      b->seg->path, uv_strerror(status));
        l->write_failed = true;
        /* keep the rows: put them back in front of what came since */
        buf tmp = l->cur;
        l->cur = b->data;
        if (tmp.len && buf_append(&l->cur, tmp.data, tmp.len) != 0)
            log_error(NULL, "ledger: out of memory: %zu rows lost", l->cur_rows);
        l->cur_rows += b->rows;
        buf_free(&tmp);
        free(b);
        return;
    }
    l->write_failed = false;
    segment *s = b->seg;
    s->bytes += b->data.len;
    if (!s->t_unacked_ns && l->sink)
        s->t_unacked_ns = clock_mono_ns();
    l->st.rows_durable += b->rows;
    b->t_ns = clock_mono_ns();
    if (l->sink && l->live && !s->replay) {
        queue_live(l, b);
        if (l->queue_rows > 8 * (size_t)l->o.batch_rows && l->ships >= 2) {
            /* the database is slower than the traffic (or about to fail):
             * memory holds no more; what is queued is on disk, replayed */
            log_warn(NULL, "ledger: %zu rows waiting to ship; continuing from the spool",
                     l->queue_rows);
            go_replay(l);
        } else if (l->queue_rows >= l->o.batch_rows) {
            ship_live(l);
        }
    } else {
        if (l->sink)
            s->replay = true;
        batch_free(b);
    }
    if (s->bytes >= l->o.segment_bytes)
        seg_close(l, s);
    if (l->closing)
        sync_write_cur(l); /* rows that came during the last write of a shutdown */
    if (l->sink && !l->live)
        replay_step(l);
    maybe_drained(l);
}

/* Shutdown only: writes the open batch with plain write(2) + fdatasync. */
static void sync_write_cur(ledger *l)
{
    inbox_take(l);
    if (!l->cur.len)
        return;
    segment *s = seg_current(l);
    if (!s)
        s = seg_open(l);
    if (s && write(s->fd, l->cur.data, l->cur.len) == (ssize_t)l->cur.len &&
        fdatasync(s->fd) == 0) {
        s->bytes += l->cur.len;
        if (l->sink)
            s->replay = true; /* shipped at the next start */
        l->st.rows_durable += l->cur_rows;
        buf_reset(&l->cur);
        l->cur_rows = 0;
    } else {
        log_error(NULL, "ledger: %zu rows could not be written at shutdown: %s", l->cur_rows,
                  strerror(errno));
    }
}

static void fsync_cb(uv_fs_t *req)
{
    ledger *l = req->data;
    int r = (int)req->result;
    uv_fs_req_cleanup(req);
    write_done(l, r);
}

static void write_cb(uv_fs_t *req)
{
    ledger *l = req->data;
    ssize_t r = req->result;
    uv_fs_req_cleanup(req);
    batch *b = l->writing;
    if (r < 0 || (size_t)r != b->data.len) {
        write_done(l, r < 0 ? (int)r : UV_EIO);
        return;
    }
    l->freq.data = l;
    if (uv_fs_fdatasync(l->loop, &l->freq, b->seg->fd, fsync_cb) != 0)
        write_done(l, UV_EIO);
}

/* Writes the open batch (if any and no write is in flight). */
static void spool_write(ledger *l)
{
    inbox_take(l);
    if (l->writing || !l->cur.len)
        return;
    segment *s = seg_current(l);
    if (!s && !(s = seg_open(l))) {
        l->write_failed = true;
        return;
    }
    batch *b = calloc(1, sizeof(*b));
    if (!b)
        return;
    b->data = l->cur;
    b->rows = l->cur_rows;
    b->seg = s;
    buf_init(&l->cur, 64u << 20);
    l->cur_rows = 0;
    l->writing = b;
    l->wreq.data = l;
    uv_buf_t ub = uv_buf_init(b->data.data, (unsigned)b->data.len);
    if (uv_fs_write(l->loop, &l->wreq, s->fd, &ub, 1, -1, write_cb) != 0)
        write_done(l, UV_EIO);
}

/* ------------------------------------------------------------ timers */

static void spool_timer_cb(uv_timer_t *t)
{
    spool_write(t->data);
}

static void ship_timer_cb(uv_timer_t *t)
{
    ledger *l = t->data;
    if (l->queue && clock_mono_ns() - l->queue->t_ns >= (uint64_t)l->o.ship_interval_ms * 1000000)
        ship_live(l);
    replay_step(l);
}

static void retry_timer_cb(uv_timer_t *t)
{
    ledger *l = t->data;
    l->failing = false;
    replay_step(l);
    ship_live(l);
}

/* ------------------------------------------------------------ lifecycle */

static int seq_of(const char *name, uint64_t *seq)
{
    size_t n = strlen(name), sl = strlen(LEDGER_SEG_SUFFIX);
    if (n != 16 + sl || strcmp(name + 16, LEDGER_SEG_SUFFIX) != 0)
        return -1;
    char *end;
    char hex[17];
    memcpy(hex, name, 16);
    hex[16] = '\0';
    *seq = strtoull(hex, &end, 16);
    return *end ? -1 : 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The segments in dir, sorted; *n of them (malloc'd array). */
static int list_segments(const char *dir, uint64_t **out, size_t *n)
{
    DIR *d = opendir(dir);
    size_t cap = 16;
    *n = 0;
    *out = malloc(cap * sizeof(**out));
    if (!d || !*out) {
        int e = errno;
        if (d)
            closedir(d);
        free(*out);
        *out = NULL;
        return -(e ? e : ENOMEM);
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t seq;
        if (seq_of(de->d_name, &seq) != 0)
            continue;
        if (*n == cap) {
            uint64_t *g = realloc(*out, 2 * cap * sizeof(**out));
            if (!g) {
                closedir(d);
                return -ENOMEM;
            }
            *out = g;
            cap *= 2;
        }
        (*out)[(*n)++] = seq;
    }
    closedir(d);
    qsort(*out, *n, sizeof(**out), cmp_u64);
    return 0;
}

ledger *ledger_new(uv_loop_t *loop, const ledger_options *opt, ledger_sink_fn sink, void *sink_ud,
                   char *err, size_t errlen)
{
    ledger *l = calloc(1, sizeof(*l));
    uint64_t *seqs = NULL;
    size_t nseq = 0;
    if (!l) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->loop = loop;
    l->o = *opt;
    if (!l->o.spool_interval_ms)
        l->o.spool_interval_ms = 10;
    if (!l->o.batch_rows)
        l->o.batch_rows = 500;
    if (!l->o.ship_interval_ms)
        l->o.ship_interval_ms = 200;
    if (!l->o.segment_bytes)
        l->o.segment_bytes = 64u << 20;
    if (!l->o.spool_max_bytes)
        l->o.spool_max_bytes = UINT64_C(1) << 30;
    if (!l->o.retry_ms)
        l->o.retry_ms = 1000;
    l->lock_fd = -1;
    l->sink = sink;
    l->sink_ud = sink_ud;
    l->queue_tail = &l->queue;
    l->live = sink != NULL;
    if (opt->spool_dir && strlen(opt->spool_dir) >= sizeof(l->dir)) {
        snprintf(err, errlen, "ledger: the spool directory path is longer than %zu bytes",
                 sizeof(l->dir) - 1);
        free(l);
        return NULL;
    }
    snprintf(l->dir, sizeof(l->dir), "%s", opt->spool_dir ? opt->spool_dir : "");
    snprintf(l->instance, sizeof(l->instance), "%s", opt->instance ? opt->instance : "");
    l->o.spool_dir = l->dir;
    l->o.instance = l->instance;
    buf_init(&l->cur, 64u << 20);
    buf_init(&l->inbox, 64u << 20);
    l->owner = uv_thread_self();
    l->accepting_pub = 1;
    if (uv_mutex_init(&l->in_lock) != 0) {
        free(l);
        snprintf(err, errlen, "ledger: cannot make a lock");
        return NULL;
    }
    buf_init(&l->rbuf, 2 * LEDGER_MAX_LINE + LEDGER_READ_CHUNK);
    if (!l->dir[0]) {
        snprintf(err, errlen, "ledger: no spool directory");
        goto fail;
    }
    if (mkdir(l->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "ledger: cannot create the spool directory %s: %s", l->dir,
                 strerror(errno));
        goto fail;
    }
    char lockp[4200];
    snprintf(lockp, sizeof(lockp), "%s/lock", l->dir);
    l->lock_fd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (l->lock_fd < 0 || flock(l->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen,
                 "ledger: the spool directory %s is %s (each instance and worker needs its own)",
                 l->dir, l->lock_fd < 0 ? strerror(errno) : "in use by another process");
        goto fail;
    }
    l->rchunk = malloc(LEDGER_READ_CHUNK);
    if (!l->rchunk || list_segments(l->dir, &seqs, &nseq) != 0) {
        snprintf(err, errlen, "ledger: cannot list %s: %s", l->dir, strerror(errno));
        goto fail;
    }
    for (size_t i = 0; i < nseq; i++) {
        segment *s = calloc(1, sizeof(*s));
        struct stat st;
        if (!s) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        s->seq = seqs[i];
        seg_path(l, s->seq, s->path, sizeof(s->path));
        s->fd = -1;
        s->closed = true;
        s->replay = sink != NULL;
        s->bytes = stat(s->path, &st) == 0 ? (uint64_t)st.st_size : 0;
        s->t_unacked_ns = clock_mono_ns();
        segment **pp = &l->segs;
        while (*pp)
            pp = &(*pp)->next;
        *pp = s;
        l->st.segments++;
        l->next_seq = s->seq + 1;
    }
    free(seqs);
    seqs = NULL;
    if (l->next_seq == 0)
        l->next_seq = 1;
    if (nseq && sink) {
        log_info(NULL, "ledger: %zu spool segment(s) from an earlier run in %s; replaying", nseq,
                 l->dir);
        l->live = false;
    }
    uv_timer_init(loop, &l->spool_timer);
    uv_timer_init(loop, &l->ship_timer);
    uv_timer_init(loop, &l->retry_timer);
    l->spool_timer.data = l->ship_timer.data = l->retry_timer.data = l;
    uv_timer_start(&l->spool_timer, spool_timer_cb, l->o.spool_interval_ms, l->o.spool_interval_ms);
    uv_timer_start(&l->ship_timer, ship_timer_cb, l->o.ship_interval_ms / 2 + 1,
                   l->o.ship_interval_ms / 2 + 1);
    if (sink)
        replay_step(l);
    return l;
fail:
    free(seqs);
    if (l->lock_fd >= 0)
        close(l->lock_fd);
    for (segment *s = l->segs, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    free(l->rchunk);
    buf_free(&l->cur);
    buf_free(&l->inbox);
    uv_mutex_destroy(&l->in_lock);
    buf_free(&l->rbuf);
    free(l);
    return NULL;
}

int ledger_append(ledger *l, const ledger_row *r)
{
    if (!on_owner(l)) { /* another worker's row: through the inbox */
        buf row;
        buf_init(&row, LEDGER_MAX_LINE);
        int rc = ledger_row_json(r, l->instance, &row);
        if (!rc)
            rc = buf_append(&row, "\n", 1);
        if (!rc) {
            uv_mutex_lock(&l->in_lock);
            rc = buf_append(&l->inbox, row.data, row.len);
            if (!rc)
                l->in_rows++;
            uv_mutex_unlock(&l->in_lock);
        }
        buf_free(&row);
        if (rc) {
            log_error(NULL, "ledger: cannot queue the row of call %s: %s", r->id, strerror(-rc));
            return rc;
        }
        return ledger_accepting(l) ? 0 : -ENOSPC;
    }
    size_t mark = l->cur.len;
    int rc = ledger_row_json(r, l->instance, &l->cur);
    if (!rc)
        rc = buf_append(&l->cur, "\n", 1);
    if (rc) {
        l->cur.len = mark;
        log_error(NULL, "ledger: cannot queue the row of call %s: %s", r->id, strerror(-rc));
        return rc;
    }
    l->cur_rows++;
    l->st.rows++;
    return ledger_accepting(l) ? 0 : -ENOSPC;
}

void ledger_kick(ledger *l)
{
    if (l->failing && !l->closing) {
        uv_timer_stop(&l->retry_timer);
        retry_timer_cb(&l->retry_timer);
    }
}

static void maybe_drained(ledger *l)
{
    if (!l->drained)
        return;
    if (l->cur.len && !l->writing) {
        spool_write(l);
        return;
    }
    bool idle = !l->writing && !l->cur.len && l->ships == 0 && !l->rbusy;
    bool nothing_live = !l->queue || l->failing || !l->sink;
    if (idle && nothing_live) {
        void (*done)(void *) = l->drained;
        l->drained = NULL;
        done(l->drained_ud);
    } else if (l->queue && !l->failing) {
        ship_live(l);
    }
}

void ledger_drain(ledger *l, void (*done)(void *ud), void *ud)
{
    l->drained = done;
    l->drained_ud = ud;
    inbox_take(l);
    spool_write(l);
    ship_live(l);
    maybe_drained(l);
}

void ledger_stats_get(const ledger *l, ledger_stats *out)
{
    *out = l->st;
    out->backlog_bytes = backlog_bytes(l);
    out->accepting = ledger_accepting(l);
    uint64_t oldest = 0;
    for (const segment *s = l->segs; s; s = s->next)
        if (s->t_unacked_ns && (!oldest || s->t_unacked_ns < oldest))
            oldest = s->t_unacked_ns;
    out->oldest_backlog_s = oldest ? (double)(clock_mono_ns() - oldest) / 1e9 : 0;
}

void ledger_close(ledger *l)
{
    if (l->closing)
        return;
    l->closing = true;
    uv_timer_stop(&l->spool_timer);
    uv_timer_stop(&l->ship_timer);
    uv_timer_stop(&l->retry_timer);
    uv_close((uv_handle_t *)&l->spool_timer, NULL);
    uv_close((uv_handle_t *)&l->ship_timer, NULL);
    uv_close((uv_handle_t *)&l->retry_timer, NULL);
    /* the open batch: written now, synchronously (shutdown only), so
     * rows served just before the stop are on disk for the next start; a
     * write in flight does it when it completes */
    if (!l->writing)
        sync_write_cur(l);
}

void ledger_free(ledger *l)
{
    if (!l)
        return;
    for (batch *b = l->queue, *n; b; b = n) {
        n = b->next;
        batch_free(b);
    }
    if (l->writing)
        batch_free(l->writing);
    for (segment *s = l->segs, *n; s; s = n) {
        n = s->next;
        if (s->fd >= 0)
            close(s->fd);
        /* a segment fully acknowledged goes; the rest stays for the next start */
        if (l->sink && !s->replay && s->acked == s->bytes)
            unlink(s->path);
        free(s);
    }
    if (l->lock_fd >= 0)
        close(l->lock_fd);
    free(l->rchunk);
    buf_free(&l->cur);
    buf_free(&l->inbox);
    uv_mutex_destroy(&l->in_lock);
    buf_free(&l->rbuf);
    free(l);
}

int ledger_scan(const char *dir, int (*fn)(void *ud, const char *line, size_t len), void *ud)
{
    uint64_t *seqs = NULL;
    size_t n = 0;
    int rc = list_segments(dir, &seqs, &n);
    if (rc)
        return rc;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/%016" PRIx64 LEDGER_SEG_SUFFIX, dir, seqs[i]);
        FILE *f = fopen(path, "re");
        if (!f) {
            rc = -errno;
            break;
        }
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        while (rc == 0 && (len = getline(&line, &cap, f)) > 0) {
            if (line[len - 1] != '\n')
                break; /* torn tail */
            rc = fn(ud, line, (size_t)len - 1);
        }
        free(line);
        fclose(f);
    }
    free(seqs);
    return rc;
}
