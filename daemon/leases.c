/* leases.c - budget leases on the loop (see leases.h). */
#include "daemon/leases.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"

#define LEASES_SLOTS 4096
#define LEASES_TICK_MS 25
#define LEASES_DRAIN_RETRY_NS (10ull * 1000000000) /* a drain's failed renewals retried this long */
#define LEASES_IDLE_NS (10ull * 1000000000)    /* give a lease back after 10 s unused */
#define LEASES_RECHECK_NS (10ull * 1000000000) /* "no budget" is asked again after 10 s */
#define LEASES_STALE_NS (1000ull * 1000000)    /* a refusal older than 1 s is checked again */
#define LEASES_RESET_RETRY_NS                                                                      \
    (50ull * 1000000) /* a period past its reset: asked at most every 50 ms */

struct lease_entry {
    char scope[8];
    char id[37];
    budget_share b;
    bool credit;       /* scope "credit": counts credits, not nano-USD */
    bool config;       /* scope "config": renewed with its maximum and duration */
    int64_t cfg_max;
    char cfg_duration[16];
    bool active;       /* on the active list */
    int64_t wait_need; /* worst cases of the calls waiting on it: a renewal asks for them all */
    lease_entry *next; /* hash chain */
    lease_entry *next_active;
};

struct lease_wait {
    leases *ls;
    lease_entry *e[LEASES_MAX_REFS];
    size_t n;
    int64_t worst, worst_credits;
    lease_claim *claim;
    void (*cb)(void *, int, const lease_refusal *);
    void *ud;
    uint64_t deadline_ns;
    uint64_t asked_ns; /* when its renewals were asked for */
    lease_wait *next;
};

struct leases {
    uv_loop_t *loop;
    store *store;
    char instance[128];
    uint64_t ttl_ns;
    uint32_t ttl_ms;
    uint64_t wait_ns;
    lease_entry *slot[LEASES_SLOTS];
    lease_entry *active;
    lease_wait *waits;
    uv_timer_t tick;
    bool closing;
    bool draining;     /* leases_drain() called: every lease goes back */
    uint64_t drain_ns; /* when */
    unsigned inflight; /* renewals in flight */
    unsigned soft_pct; /* the soft threshold (percent of the maximum), 0 = none */
    leases_alert_fn alert;
    void *alert_ud;
    void (*drained)(void *);
    void *drained_ud;
    leases_stats st;
};

static const pg_stmt lease_stmt = {
    "tg_lease",
    "SELECT lease_id::text, granted, max_nano, spent_nano, leased_nano, "
    "coalesce((extract(epoch from reset_at) * 1000000)::bigint, 0), soft_crossed "
    "FROM tollgate_lease($1, $2::uuid, $3, $4::uuid, $5::bigint, $6::bigint, $7::integer, "
    "$8::integer)",
    8,
};

static const pg_stmt lease_config_stmt = {
    "tg_lease_config",
    "SELECT lease_id::text, granted, max_nano, spent_nano, leased_nano, "
    "coalesce((extract(epoch from reset_at) * 1000000)::bigint, 0), soft_crossed "
    "FROM tollgate_lease_config($1::uuid, $2::bigint, $3, $4, $5::uuid, $6::bigint, "
    "$7::bigint, $8::integer, $9::integer)",
    9,
};

static void retry_waits(leases *ls);
static void drain_entry(leases *ls, lease_entry *e);

/* ------------------------------------------------------------ entries */

static size_t slot_of(const char *scope, const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = scope; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return (size_t)(h % LEASES_SLOTS);
}

static lease_entry *entry_get(leases *ls, const char *scope, const char *id)
{
    size_t s = slot_of(scope, id);
    for (lease_entry *e = ls->slot[s]; e; e = e->next)
        if (strcmp(e->id, id) == 0 && strcmp(e->scope, scope) == 0)
            return e;
    lease_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    snprintf(e->scope, sizeof(e->scope), "%s", scope);
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->credit = strcmp(scope, "credit") == 0;
    e->config = strcmp(scope, "config") == 0;
    e->next = ls->slot[s];
    ls->slot[s] = e;
    ls->st.budgets++;
    return e;
}

static void activate(leases *ls, lease_entry *e)
{
    if (e->active)
        return;
    e->active = true;
    e->next_active = ls->active;
    ls->active = e;
}

/* ------------------------------------------------------------ renewals */

typedef struct renew_req {
    leases *ls;
    lease_entry *e;
} renew_req;

static void maybe_drained(leases *ls)
{
    if (ls->drained && ls->inflight == 0) {
        void (*done)(void *) = ls->drained;
        ls->drained = NULL;
        done(ls->drained_ud);
    }
}

static void renew_done(void *ud, const PGresult *res, const pg_error *err)
{
    renew_req *rr = ud;
    leases *ls = rr->ls;
    lease_entry *e = rr->e;
    uint64_t now = clock_mono_ns();
    free(rr);
    ls->inflight--;
    if (err) {
        ls->st.renew_failures++;
        budget_renew_failed(&e->b);
        if (err->kind != PG_ERR_CLOSED)
            log_warn(NULL, "budget %s %s: lease renewal failed: %s", e->scope, e->id, err->message);
        e->b.renewed_ns = now; /* back off a tick before asking again */
        /* the drain gives the lease back even if the database is still
         * coming back from an outage (a renewal queued during it fails
         * after the pool's queue timeout): asked again, the pool's
         * connections told to stop backing off, for a while (and never
         * past the drain deadline) rather than leave it to expire */
        if (ls->draining && err->kind != PG_ERR_CLOSED && err->kind != PG_ERR_SERVER &&
            now - ls->drain_ns < LEASES_DRAIN_RETRY_NS) {
            pg_pool_retry_now(store_pool(ls->store));
            drain_entry(ls, e);
        }
    } else {
        if (PQntuples(res) == 0) {
            budget_renewed(&e->b, false, NULL, 0, 0, 0, 0, 0, now, ls->ttl_ns);
        } else {
            budget_renewed(&e->b, true, pg_value(res, 0, 0), strtoll(pg_value(res, 0, 1), NULL, 10),
                           strtoll(pg_value(res, 0, 2), NULL, 10),
                           strtoll(pg_value(res, 0, 3), NULL, 10),
                           strtoll(pg_value(res, 0, 4), NULL, 10),
                           strtoll(pg_value(res, 0, 5), NULL, 10), now, ls->ttl_ns);
            const char *soft = pg_value(res, 0, 6);
            if (soft && soft[0] == 't' && ls->alert)
                ls->alert(ls->alert_ud, e->scope, e->id, e->b.max, e->b.spent, e->b.reset_at_us,
                          ls->soft_pct);
        }
        /* a renewal that was in flight when the drain began granted a
         * lease: it goes back too */
        if (ls->draining)
            drain_entry(ls, e);
    }
    ls->st.renewals++;
    retry_waits(ls);
    maybe_drained(ls);
}

static void renew(leases *ls, lease_entry *e, int64_t want)
{
    if (e->b.renewing || ls->closing)
        return;
    char spent[24], wantbuf[24], ttl[16], soft[8];
    if (want < 0)
        want = 0;
    budget_renew_sent(&e->b, want);
    snprintf(spent, sizeof(spent), "%" PRId64, e->b.reporting);
    snprintf(wantbuf, sizeof(wantbuf), "%" PRId64, want);
    snprintf(ttl, sizeof(ttl), "%u", ls->ttl_ms);
    snprintf(soft, sizeof(soft), "%u", ls->soft_pct);
    const char *params[8] = {
        e->scope, e->id,   ls->instance, e->b.lease_id[0] ? e->b.lease_id : NULL,
        spent,    wantbuf, ttl,          soft};
    renew_req *rr = malloc(sizeof(*rr));
    if (!rr) {
        budget_renew_failed(&e->b);
        return;
    }
    rr->ls = ls;
    rr->e = e;
    char max[24];
    snprintf(max, sizeof(max), "%" PRId64, e->cfg_max);
    const char *cparams[9] = {e->id,   max,     e->cfg_duration[0] ? e->cfg_duration : NULL,
                              params[2], params[3], spent,
                              wantbuf, ttl,     soft};
    bool sent = e->config
                    ? pg_send(store_pool(ls->store), &lease_config_stmt, NULL, 9, cparams,
                              renew_done, rr) != NULL
                    : pg_send(store_pool(ls->store), &lease_stmt, NULL, 8, params, renew_done,
                              rr) != NULL;
    if (!sent) {
        free(rr);
        budget_renew_failed(&e->b);
        return;
    }
    ls->inflight++;
    activate(ls, e);
}

/* ------------------------------------------------------------ admission */

static void refusal_of(const lease_entry *e, int status, lease_refusal *r)
{
    if (!r)
        return;
    r->status = status;
    snprintf(r->scope, sizeof(r->scope), "%s", e->scope);
    snprintf(r->id, sizeof(r->id), "%s", e->id);
    r->max = e->b.max;
    r->spent = e->b.spent;
    r->reset_at_us = e->b.reset_at_us;
}

/* Could a renewal grant e enough for one more call of `worst`? From what
 * the database said last (max - spent - the leases of others), less what
 * this instance will report and holds in flight; or the period has ended
 * since (the database starts it afresh). */
static bool could_grant(const lease_entry *e, int64_t worst, uint64_t now)
{
    const budget_share *b = &e->b;
    if (!b->known || !b->exists)
        return false;
    if (b->reset_at_us > 0 && clock_wall_us() >= b->reset_at_us &&
        now - b->renewed_ns > LEASES_RESET_RETRY_NS)
        return true;
    int64_t others = b->leased - b->lease;
    return b->max - b->spent - others - b->settled - b->reporting >= worst + b->reserved;
}

/* A call's amount in e's unit. */
static int64_t amount_in(const lease_entry *e, int64_t usd, int64_t credits)
{
    return e->credit ? credits : usd;
}

/* Tries every entry; all or nothing. 0 admitted, else the index + 1 of
 * the entry that refused. */
static size_t try_admit(lease_entry **es, size_t n, int64_t worst, int64_t wc, uint64_t now)
{
    for (size_t i = 0; i < n; i++) {
        if (!budget_admit(&es[i]->b, amount_in(es[i], worst, wc), now)) {
            for (size_t k = 0; k < i; k++)
                budget_settle(&es[k]->b, amount_in(es[k], worst, wc), 0, now);
            return i + 1;
        }
    }
    return 0;
}

static void fill_claim(lease_claim *c, lease_entry **es, size_t n, int64_t worst, int64_t wc)
{
    c->n = n;
    c->worst = worst;
    c->worst_credits = wc;
    for (size_t i = 0; i < n; i++)
        c->e[i] = es[i];
}

int leases_admit(leases *ls, const budget_ref *refs, size_t n, int64_t worst, int64_t wc,
                 lease_claim *claim, void (*cb)(void *ud, int rc, const lease_refusal *r), void *ud,
                 lease_wait **w, lease_refusal *refusal)
{
    lease_entry *es[LEASES_MAX_REFS], *short_e = NULL;
    uint64_t now = clock_mono_ns();
    bool unknown = false;
    memset(claim, 0, sizeof(*claim));
    if (n > LEASES_MAX_REFS)
        n = LEASES_MAX_REFS;
    for (size_t i = 0; i < n; i++) {
        es[i] = entry_get(ls, refs[i].scope, refs[i].id);
        if (!es[i]) {
            refusal_of(&(lease_entry){.scope = "?"}, 503, refusal);
            return -EDQUOT;
        }
        if (es[i]->config) { /* what the config says now (a reload may change it) */
            es[i]->cfg_max = refs[i].max;
            snprintf(es[i]->cfg_duration, sizeof(es[i]->cfg_duration), "%s",
                     refs[i].duration ? refs[i].duration : "");
        }
        activate(ls, es[i]);
        int64_t need = amount_in(es[i], worst, wc);
        if (!es[i]->b.known) {
            /* a call with nothing to charge (BYOK) does not wait for it */
            unknown = unknown || need > 0;
            es[i]->b.last_worst = need;
            renew(ls, es[i], budget_want(&es[i]->b, now, LEASES_IDLE_NS) + need);
        } else if (!es[i]->b.exists && now - es[i]->b.renewed_ns > LEASES_RECHECK_NS) {
            renew(ls, es[i], 0); /* has one been set meanwhile? (served unlimited till then) */
        }
    }
    if (!unknown) {
        size_t bad = try_admit(es, n, worst, wc, now);
        if (!bad) {
            fill_claim(claim, es, n, worst, wc);
            ls->st.admitted++;
            return 0;
        }
        lease_entry *e = es[bad - 1];
        int64_t need = amount_in(e, worst, wc);
        /* could a renewal grant more? (not if the budget is spent, as
         * last seen: a last answer older than LEASES_STALE_NS is asked
         * again, so a raised maximum or a top-up is seen) */
        bool hope = could_grant(e, need, now) || now - e->b.renewed_ns > LEASES_STALE_NS;
        if (!hope && !e->b.renewing) {
            ls->st.refusals++;
            refusal_of(e, 402, refusal);
            return -EDQUOT;
        }
        short_e = e;
    }
    lease_wait *lw = calloc(1, sizeof(*lw));
    if (!lw) {
        refusal_of(es[0], 503, refusal);
        return -EDQUOT;
    }
    for (size_t i = 0; i < n; i++)
        es[i]->wait_need += amount_in(es[i], worst, wc);
    /* the renewal asks for every call waiting on this budget, not only
     * this one (else each round trip admits one call more) */
    if (short_e)
        renew(ls, short_e, budget_want(&short_e->b, now, LEASES_IDLE_NS) + short_e->wait_need);
    lw->ls = ls;
    lw->n = n;
    memcpy(lw->e, es, n * sizeof(es[0]));
    lw->worst = worst;
    lw->worst_credits = wc;
    lw->claim = claim;
    lw->cb = cb;
    lw->ud = ud;
    lw->deadline_ns = now + ls->wait_ns;
    lw->asked_ns = now;
    lw->next = ls->waits;
    ls->waits = lw;
    ls->st.waits++;
    *w = lw;
    return 1;
}

/* The call no longer waits: its need leaves its budgets' wait_need. */
static void wait_done(lease_wait *w)
{
    for (size_t i = 0; i < w->n; i++) {
        lease_entry *e = w->e[i];
        e->wait_need -= amount_in(e, w->worst, w->worst_credits);
        if (e->wait_need < 0)
            e->wait_need = 0;
    }
}

void leases_cancel(lease_wait *w)
{
    leases *ls = w->ls;
    wait_done(w);
    for (lease_wait **pp = &ls->waits; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    free(w);
}

/* Re-tries the waiting calls after a renewal answered (or at a deadline). */
static void retry_waits(leases *ls)
{
    uint64_t now = clock_mono_ns();
    lease_wait **pp = &ls->waits;
    while (*pp) {
        lease_wait *w = *pp;
        bool pending = false, unknown_failed = false;
        for (size_t i = 0; i < w->n; i++) {
            if (w->e[i]->b.renewing)
                pending = true;
            else if (!w->e[i]->b.known)
                unknown_failed = true;
        }
        int rc = 1;
        lease_refusal r;
        memset(&r, 0, sizeof(r));
        if (!pending) {
            size_t bad = 0;
            if (unknown_failed) {
                for (size_t i = 0; i < w->n && !bad; i++)
                    if (!w->e[i]->b.known)
                        bad = i + 1;
            } else {
                bad = try_admit(w->e, w->n, w->worst, w->worst_credits, now);
            }
            if (!bad) {
                fill_claim(w->claim, w->e, w->n, w->worst, w->worst_credits);
                ls->st.admitted++;
                rc = 0;
            } else {
                lease_entry *e = w->e[bad - 1];
                int64_t need = amount_in(e, w->worst, w->worst_credits);
                if (e->b.known && could_grant(e, need, now)) {
                    /* the renewal answered with less than this call needs
                     * (the calls waiting with it took it) but the budget
                     * has more: ask again, still within the deadline */
                    if (now < w->deadline_ns)
                        renew(ls, e, budget_want(&e->b, now, LEASES_IDLE_NS) + e->wait_need);
                    if (!e->b.renewing) {
                        refusal_of(e, 503, &r);
                        rc = -EDQUOT;
                    }
                } else {
                    refusal_of(e, e->b.known ? 402 : 503, &r);
                    rc = -EDQUOT;
                }
            }
        } else if (now >= w->deadline_ns) {
            size_t k = 0;
            while (k + 1 < w->n && !w->e[k]->b.renewing)
                k++;
            refusal_of(w->e[k], 503, &r);
            rc = -EDQUOT;
        }
        if (rc == 1) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        wait_done(w);
        if (rc != 0)
            ls->st.refusals++;
        w->cb(w->ud, rc, &r);
        free(w);
    }
}

void leases_settle(leases *ls, lease_claim *claim, int64_t price, int64_t credits)
{
    uint64_t now = clock_mono_ns();
    for (size_t i = 0; i < claim->n; i++) {
        lease_entry *e = claim->e[i];
        int64_t actual = amount_in(e, price, credits);
        budget_settle(&e->b, amount_in(e, claim->worst, claim->worst_credits),
                      actual < 0 ? 0 : actual, now);
        activate(ls, e);
    }
    claim->n = 0;
}

int64_t leases_remaining(const lease_claim *claim)
{
    int64_t best = -1;
    for (size_t i = 0; i < claim->n; i++) {
        const budget_share *b = &claim->e[i]->b;
        if (!b->exists || claim->e[i]->credit)
            continue;
        int64_t left = b->max - b->spent - b->leased + budget_available(b);
        if (left < 0)
            left = 0;
        if (best < 0 || left < best)
            best = left;
    }
    return best;
}

/* ------------------------------------------------------------ the tick */

static void tick_cb(uv_timer_t *t)
{
    leases *ls = t->data;
    uint64_t now = clock_mono_ns();
    lease_entry **pp = &ls->active;
    while (*pp) {
        lease_entry *e = *pp;
        budget_share *b = &e->b;
        if (budget_should_renew(b, now, ls->ttl_ns))
            renew(ls, e, ls->draining ? b->reserved : budget_want(b, now, LEASES_IDLE_NS));
        bool idle =
            !b->renewing && !b->uncertain && b->lease == 0 && b->reserved == 0 && b->settled == 0;
        if (idle) { /* nothing held: off the active list */
            e->active = false;
            *pp = e->next_active;
            continue;
        }
        pp = &e->next_active;
    }
    if (ls->waits)
        retry_waits(ls);
}

/* ------------------------------------------------------------ lifecycle */

leases *leases_new(uv_loop_t *loop, store *st, const char *instance, uint32_t ttl_ms,
                   uint32_t wait_ms)
{
    leases *ls = calloc(1, sizeof(*ls));
    if (!ls)
        return NULL;
    ls->loop = loop;
    ls->store = st;
    snprintf(ls->instance, sizeof(ls->instance), "%s", instance);
    ls->ttl_ms = ttl_ms ? ttl_ms : 30000;
    ls->ttl_ns = (uint64_t)ls->ttl_ms * 1000000;
    ls->wait_ns = (uint64_t)(wait_ms ? wait_ms : 2000) * 1000000;
    uv_timer_init(loop, &ls->tick);
    ls->tick.data = ls;
    uv_timer_start(&ls->tick, tick_cb, LEASES_TICK_MS, LEASES_TICK_MS);
    return ls;
}

/* Reports what e spent and gives its lease back (keeping what calls still
 * in flight reserved: their spend would be dropped otherwise). One in
 * flight is followed by this when it answers (renew_done). */
static void drain_entry(leases *ls, lease_entry *e)
{
    budget_share *b = &e->b;
    if (!b->renewing && (b->uncertain || (b->exists && (b->lease > b->reserved || b->settled > 0))))
        renew(ls, e, b->reserved);
}

void leases_drain(leases *ls, void (*done)(void *ud), void *ud)
{
    ls->drained = done;
    ls->drained_ud = ud;
    ls->draining = true;
    ls->drain_ns = clock_mono_ns();
    for (lease_entry *e = ls->active; e; e = e->next_active)
        drain_entry(ls, e);
    maybe_drained(ls);
}

void leases_on_alert(leases *ls, unsigned soft_pct, leases_alert_fn fn, void *ud)
{
    ls->soft_pct = soft_pct > 100 ? 100 : soft_pct;
    ls->alert = fn;
    ls->alert_ud = ud;
}

void leases_stats_get(const leases *ls, leases_stats *out)
{
    *out = ls->st;
    out->leased = 0;
    for (const lease_entry *e = ls->active; e; e = e->next_active)
        out->leased += e->b.lease;
}

void leases_close(leases *ls)
{
    if (ls->closing)
        return;
    ls->closing = true;
    uv_timer_stop(&ls->tick);
    uv_close((uv_handle_t *)&ls->tick, NULL);
    /* calls still waiting are refused (their requests are being aborted) */
    while (ls->waits) {
        lease_wait *w = ls->waits;
        ls->waits = w->next;
        lease_refusal r = {.status = 503};
        w->cb(w->ud, -EDQUOT, &r);
        free(w);
    }
}

void leases_free(leases *ls)
{
    if (!ls)
        return;
    for (size_t i = 0; i < LEASES_SLOTS; i++) {
        for (lease_entry *e = ls->slot[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    free(ls);
}
