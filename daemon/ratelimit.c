/* ratelimit.c - per-minute limits across instances (see ratelimit.h). */
#include "daemon/ratelimit.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"

#define RATE_SLOTS 4096
#define RATE_SLICE_DIV 50 /* a slice is a fiftieth of the limit (or the need) */

struct rate_entry {
    char scope[8];
    char id[37];
    bool tokens;
    int64_t limit;
    int64_t left;          /* of the slice, in this window */
    int64_t window_end_us; /* wall clock; 0 = no window yet */
    bool spent;            /* the database had nothing left this window */
    bool renewing;
    rate_entry *next;
};

struct rate_wait {
    ratelimits *rl;
    rate_entry *e[RATE_MAX_REFS];
    int64_t need[RATE_MAX_REFS];
    size_t n;
    rate_claim *claim;
    void (*cb)(void *, int, const rate_refusal *);
    void *ud;
    uint64_t deadline_ns;
    rate_wait *next;
};

struct ratelimits {
    store *store;
    uint64_t wait_ns;
    rate_entry *slot[RATE_SLOTS];
    rate_wait *waits;
    uv_timer_t tick;
    bool closing;
};

static const pg_stmt rate_stmt = {
    "tg_rate",
    "SELECT granted, used, (extract(epoch from window_end) * 1000000)::bigint "
    "FROM tollgate_rate($1, $2::uuid, $3, $4::bigint, $5::bigint)",
    5,
};

static void retry_waits(ratelimits *rl);

static size_t slot_of(const char *scope, const char *id, bool tokens)
{
    uint64_t h = tokens ? 7 : 3;
    for (const char *p = scope; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)(h % RATE_SLOTS);
}

static rate_entry *entry_get(ratelimits *rl, const rate_ref *r)
{
    size_t s = slot_of(r->scope, r->id, r->tokens);
    for (rate_entry *e = rl->slot[s]; e; e = e->next)
        if (e->tokens == r->tokens && strcmp(e->id, r->id) == 0 &&
            strcmp(e->scope, r->scope) == 0) {
            e->limit = r->limit; /* follows the cache */
            return e;
        }
    rate_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    snprintf(e->scope, sizeof(e->scope), "%s", r->scope);
    snprintf(e->id, sizeof(e->id), "%s", r->id);
    e->tokens = r->tokens;
    e->limit = r->limit;
    e->next = rl->slot[s];
    rl->slot[s] = e;
    return e;
}

/* A new minute: what was held of the last one is gone. */
static void roll(rate_entry *e, int64_t now_us)
{
    if (e->window_end_us && now_us >= e->window_end_us) {
        e->left = 0;
        e->spent = false;
        e->window_end_us = 0;
    }
}

typedef struct rate_req {
    ratelimits *rl;
    rate_entry *e;
} rate_req;

static void rate_done(void *ud, const PGresult *res, const pg_error *err)
{
    rate_req *rr = ud;
    rate_entry *e = rr->e;
    ratelimits *rl = rr->rl;
    free(rr);
    e->renewing = false;
    if (err) {
        if (err->kind != PG_ERR_CLOSED)
            log_warn(NULL, "rate limit %s %s: slice request failed: %s", e->scope, e->id,
                     err->message);
    } else if (PQntuples(res) == 1) {
        int64_t granted = strtoll(pg_value(res, 0, 0), NULL, 10);
        int64_t used = strtoll(pg_value(res, 0, 1), NULL, 10);
        int64_t end = strtoll(pg_value(res, 0, 2), NULL, 10);
        if (e->window_end_us != end) { /* a new window: the old slice is void */
            e->left = 0;
            e->spent = false;
        }
        e->window_end_us = end;
        e->left += granted;
        e->spent = used >= e->limit;
    }
    if (!rl->closing)
        retry_waits(rl);
}

static bool ask(ratelimits *rl, rate_entry *e, int64_t need)
{
    if (e->renewing)
        return true;
    if (rl->closing)
        return false;
    int64_t want = e->limit / RATE_SLICE_DIV;
    if (want < need - e->left)
        want = need - e->left;
    if (want < 1)
        want = 1;
    char lim[24], w[24];
    snprintf(lim, sizeof(lim), "%" PRId64, e->limit);
    snprintf(w, sizeof(w), "%" PRId64, want);
    const char *params[5] = {e->scope, e->id, e->tokens ? "tpm" : "rpm", lim, w};
    rate_req *rr = malloc(sizeof(*rr));
    if (!rr)
        return false;
    rr->rl = rl;
    rr->e = e;
    if (!pg_send(store_pool(rl->store), &rate_stmt, NULL, 5, params, rate_done, rr)) {
        free(rr);
        return false;
    }
    e->renewing = true;
    return true;
}

static void refusal_of(const rate_entry *e, int64_t now_us, bool unavailable, rate_refusal *r)
{
    snprintf(r->scope, sizeof(r->scope), "%s", e->scope);
    r->tokens = e->tokens;
    r->limit = e->limit;
    r->unavailable = unavailable;
    r->reset_s = e->window_end_us > now_us ? (double)(e->window_end_us - now_us) / 1e6 : 0;
}

/* 0 admitted; 1 some slice must grow first (asked); -1 refused (*bad). */
static int try_admit(ratelimits *rl, rate_entry **es, const int64_t *need, size_t n,
                     rate_claim *claim, size_t *bad, bool *unavailable)
{
    int64_t now_us = clock_wall_us();
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        roll(es[i], now_us);
        if (es[i]->left >= need[i])
            continue;
        if (es[i]->spent) {
            *bad = i;
            return -1;
        }
        if (!ask(rl, es[i], need[i])) {
            *bad = i;
            *unavailable = true;
            return -1;
        }
        rc = 1;
    }
    if (rc)
        return 1;
    claim->n = n;
    for (size_t i = 0; i < n; i++) {
        es[i]->left -= need[i];
        claim->e[i] = es[i];
        claim->took[i] = need[i];
    }
    return 0;
}

int ratelimits_admit(ratelimits *rl, const rate_ref *refs, size_t n, rate_claim *claim,
                     void (*cb)(void *ud, int rc, const rate_refusal *r), void *ud, rate_wait **w,
                     rate_refusal *refusal)
{
    rate_entry *es[RATE_MAX_REFS];
    int64_t need[RATE_MAX_REFS];
    size_t bad = 0;
    bool unavailable = false;
    memset(claim, 0, sizeof(*claim));
    if (n > RATE_MAX_REFS)
        n = RATE_MAX_REFS;
    for (size_t i = 0; i < n; i++) {
        if (!(es[i] = entry_get(rl, &refs[i]))) {
            memset(refusal, 0, sizeof(*refusal));
            refusal->unavailable = true;
            return -EAGAIN;
        }
        need[i] = refs[i].need < 1 ? 1 : refs[i].need;
    }
    int rc = try_admit(rl, es, need, n, claim, &bad, &unavailable);
    if (rc == 0)
        return 0;
    if (rc < 0) {
        refusal_of(es[bad], clock_wall_us(), unavailable, refusal);
        return -EAGAIN;
    }
    rate_wait *rw = calloc(1, sizeof(*rw));
    if (!rw) {
        refusal_of(es[0], clock_wall_us(), true, refusal);
        return -EAGAIN;
    }
    rw->rl = rl;
    rw->n = n;
    memcpy(rw->e, es, n * sizeof(es[0]));
    memcpy(rw->need, need, n * sizeof(need[0]));
    rw->claim = claim;
    rw->cb = cb;
    rw->ud = ud;
    rw->deadline_ns = clock_mono_ns() + rl->wait_ns;
    rw->next = rl->waits;
    rl->waits = rw;
    *w = rw;
    return 1;
}

void ratelimits_cancel(rate_wait *w)
{
    for (rate_wait **pp = &w->rl->waits; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    free(w);
}

static void retry_waits(ratelimits *rl)
{
    rate_wait **pp = &rl->waits;
    uint64_t now = clock_mono_ns();
    while (*pp) {
        rate_wait *w = *pp;
        bool pending = false;
        for (size_t i = 0; i < w->n; i++)
            pending |= w->e[i]->renewing;
        int rc = 1;
        size_t bad = 0;
        bool unavailable = false;
        rate_refusal r;
        memset(&r, 0, sizeof(r));
        if (!pending)
            rc = try_admit(rl, w->e, w->need, w->n, w->claim, &bad, &unavailable);
        if (rc == 1 && now >= w->deadline_ns) {
            rc = -1;
            unavailable = true;
        }
        if (rc == 1) {
            pp = &w->next;
            continue;
        }
        if (rc < 0)
            refusal_of(w->e[bad], clock_wall_us(), unavailable, &r);
        *pp = w->next;
        w->cb(w->ud, rc == 0 ? 0 : -EAGAIN, &r);
        free(w);
    }
}

void ratelimits_settle(ratelimits *rl, rate_claim *claim, int64_t tokens)
{
    (void)rl;
    int64_t now_us = clock_wall_us();
    for (size_t i = 0; i < claim->n; i++) {
        rate_entry *e = claim->e[i];
        roll(e, now_us);
        if (e->tokens && tokens >= 0 && e->window_end_us)
            e->left += claim->took[i] - tokens; /* the estimate back, the real count out */
    }
    claim->n = 0;
}

static void tick_cb(uv_timer_t *t)
{
    ratelimits *rl = t->data;
    if (rl->waits)
        retry_waits(rl);
}

ratelimits *ratelimits_new(uv_loop_t *loop, store *st, uint32_t wait_ms)
{
    ratelimits *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return NULL;
    rl->store = st;
    rl->wait_ns = (uint64_t)(wait_ms ? wait_ms : 2000) * 1000000;
    uv_timer_init(loop, &rl->tick);
    rl->tick.data = rl;
    uv_timer_start(&rl->tick, tick_cb, 50, 50);
    return rl;
}

void ratelimits_close(ratelimits *rl)
{
    if (rl->closing)
        return;
    rl->closing = true;
    uv_timer_stop(&rl->tick);
    uv_close((uv_handle_t *)&rl->tick, NULL);
    while (rl->waits) {
        rate_wait *w = rl->waits;
        rl->waits = w->next;
        rate_refusal r = {.unavailable = true};
        w->cb(w->ud, -EAGAIN, &r);
        free(w);
    }
}

void ratelimits_free(ratelimits *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < RATE_SLOTS; i++) {
        for (rate_entry *e = rl->slot[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    free(rl);
}
