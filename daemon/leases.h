/* leases.h - budget leases on the loop: one budget_share (billing/budget.h)
 * per budget this instance has met, renewed through tollgate_lease()
 * (migration 0004) in the background, so admission is a memory operation.
 *
 * A call names up to three budgets (its key's, its team's, its org's) and
 * its worst-case price. leases_admit() reserves it in all of them at once
 * or in none. A budget met for the first time (or whose lease is spent
 * while more may be granted) makes the call wait for one renewal, bounded
 * by wait_ms; if the database cannot be reached for a budget that has no
 * lease, the call is refused (fail closed: a budget is never exceeded).
 * When the call ends, leases_settle() replaces the reservation by the
 * actual price; the spend is reported at the next renewal.
 *
 * A fourth, scope "credit", is a team's credit balance (consumption
 * modes, migration 0006): it counts billionths of a credit, not nano-USD,
 * so calls give their worst case and actual amount in both units. Scope
 * "config" is the budget of a key of the config file, shared by the
 * instances on one database (migration 0006). */
#ifndef TG_DAEMON_LEASES_H
#define TG_DAEMON_LEASES_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "billing/budget.h"
#include "daemon/store.h"

#define LEASES_MAX_REFS 4

typedef struct leases leases;
typedef struct lease_entry lease_entry;
typedef struct lease_wait lease_wait;

/* A budget's owner. */
typedef struct budget_ref {
    const char *scope; /* "key", "team", "org", "credit" (the team's credits), "config" */
    const char *id;    /* UUID */
    /* scope "config" (a key of the config file): the budget the config
     * gives it, made or updated in the database at each renewal */
    int64_t max;
    const char *duration; /* NULL: never resets */
} budget_ref;

/* What an admitted call holds until it settles. */
typedef struct lease_claim {
    lease_entry *e[LEASES_MAX_REFS];
    size_t n;
    int64_t worst, worst_credits;
} lease_claim;

/* Why a call was refused: the first budget that could not cover it. */
typedef struct lease_refusal {
    int status; /* 402 budget exhausted, 503 budgets unavailable */
    char scope[8]; /* "credit": out of credits; max is the balance then */
    char id[37];
    int64_t max, spent;  /* its totals (nano-USD) */
    int64_t reset_at_us; /* 0 = never */
} lease_refusal;

typedef struct leases_stats {
    uint64_t renewals, renew_failures, waits, refusals, admitted;
    uint32_t budgets; /* budgets known */
    int64_t leased;   /* sum of leases held */
} leases_stats;

leases *leases_new(uv_loop_t *loop, store *st, const char *instance, uint32_t ttl_ms,
                   uint32_t wait_ms);

/* Admits a call of worst-case price worst (nano-USD; worst_credits in
 * the credit budget) against refs. 0: admitted,
 * claim filled. 1: waiting; cb(ud, rc, refusal) runs later from the loop
 * with rc 0 (admitted, claim filled) or -EDQUOT (refused, see refusal);
 * *w may be cancelled. -EDQUOT: refused now (refusal filled). */
int leases_admit(leases *ls, const budget_ref *refs, size_t n, int64_t worst, int64_t worst_credits,
                 lease_claim *claim, void (*cb)(void *ud, int rc, const lease_refusal *r), void *ud,
                 lease_wait **w, lease_refusal *refusal);
void leases_cancel(lease_wait *w);

/* The call ended with this actual price (nano-USD, >= 0) and charge in
 * credits (billionths, >= 0). */
void leases_settle(leases *ls, lease_claim *claim, int64_t price, int64_t credits);

/* The smallest remaining amount (max - spent - leases of others, as last
 * seen) over the claimed budgets (not credits), for a response header;
 * -1 if none. */
int64_t leases_remaining(const lease_claim *claim);

/* Shutdown: report spend and return every lease; done(ud) when answered
 * (or failed). */
void leases_drain(leases *ls, void (*done)(void *ud), void *ud);

/* A budget passed soft_pct percent of its maximum: called once per budget
 * and period across all instances (the database decides who reports). */
typedef void (*leases_alert_fn)(void *ud, const char *scope, const char *id, int64_t max,
                                int64_t spent, int64_t reset_at_us, unsigned pct);
void leases_on_alert(leases *ls, unsigned soft_pct, leases_alert_fn fn, void *ud);

void leases_stats_get(const leases *ls, leases_stats *out);
void leases_close(leases *ls);
void leases_free(leases *ls);

#endif
