/* budget.c - one instance's share of a budget (see budget.h). */
#include "billing/budget.h"

#include <string.h>

#define NS 1000000000.0
#define SLICE_SECONDS 2.0         /* a slice lasts about this long at the current rate */
#define SLICE_MIN_CALLS 4         /* and covers at least this many worst cases */
#define RENEW_MIN_NS 50000000     /* at most one low-water renewal per 50 ms */
#define RENEW_SPENT_NS 1000000000 /* or per second when the budget had nothing left unleased */

int64_t budget_available(const budget_share *b)
{
    return b->lease - b->reserved - b->settled - b->reporting;
}

/* An amount per second, decaying toward new observations with a ~5 s
 * time constant. */
static void ewma_add(double *v, uint64_t *at_ns, int64_t amount, uint64_t now_ns)
{
    if (!*at_ns) {
        *at_ns = now_ns;
        *v = 0;
    }
    double dt = (double)(now_ns - *at_ns) / NS;
    double keep = dt >= 5.0 ? 0.0 : 1.0 - dt / 5.0;
    *v = *v * keep + (double)amount / 5.0;
    *at_ns = now_ns;
}

bool budget_admit(budget_share *b, int64_t worst, uint64_t now_ns)
{
    if (worst <= 0)
        return true; /* nothing to charge (BYOK, unpriced): the lease is not needed */
    b->used_ns = now_ns;
    b->last_worst = worst;
    if (b->known && !b->exists)
        return true;
    if (!b->known || (b->expires_ns && now_ns >= b->expires_ns))
        return false; /* no lease, or it lapsed (the database may have reclaimed it) */
    if (worst > budget_available(b))
        return false;
    b->reserved += worst;
    ewma_add(&b->demand, &b->demand_ns, worst, now_ns);
    return true;
}

void budget_settle(budget_share *b, int64_t worst, int64_t price, uint64_t now_ns)
{
    if (b->known && !b->exists)
        return;
    b->reserved -= worst < 0 ? 0 : worst;
    if (b->reserved < 0)
        b->reserved = 0;
    if (price > 0) {
        b->settled += price;
        ewma_add(&b->rate, &b->rate_ns, price, now_ns);
    }
}

bool budget_should_renew(const budget_share *b, uint64_t now_ns, uint64_t ttl_ns)
{
    if (b->renewing)
        return false;
    if (!b->known)
        return true;
    if (!b->exists)
        return false; /* the caller rechecks on its own schedule */
    if (b->resize)
        return true; /* the first slice was one call; the budget is known now */
    if (b->settled > 0 && now_ns - b->renewed_ns > ttl_ns / 8)
        return true; /* report spend regularly */
    if (b->lease > 0 && b->expires_ns && b->expires_ns < now_ns + ttl_ns / 2)
        return true;
    int64_t low = b->lease / 4 > b->last_worst ? b->lease / 4 : b->last_worst;
    /* when the last answer left nothing unleased, asking cannot bring more
     * until another instance gives some back or the period ends: look
     * again now and then, not 20 times a second for as long as calls come */
    uint64_t gap = b->max - b->spent - b->leased > 0 ? RENEW_MIN_NS : RENEW_SPENT_NS;
    if (budget_available(b) < low && now_ns - b->renewed_ns > gap)
        return true;
    return false;
}

int64_t budget_want(const budget_share *b, uint64_t now_ns, uint64_t idle_ns)
{
    if (b->reserved == 0 && b->used_ns && now_ns - b->used_ns > idle_ns)
        return 0; /* idle: give the lease back */
    /* the spend rate, or the rate at which calls reserve their worst
     * cases if higher: calls that run long (streams) reserve long before
     * they spend, and a slice sized to spend alone would admit a few calls
     * per renewal while hundreds wait */
    double slice = (b->rate > b->demand ? b->rate : b->demand) * SLICE_SECONDS;
    double floor = (double)b->last_worst * SLICE_MIN_CALLS;
    if (slice < floor)
        slice = floor;
    /* the first ask, the budget's size unknown: one call more (a small
     * budget is not taken whole by the first instance that meets it; the
     * next renewal sizes the slice) */
    if (!b->known && slice > (double)b->last_worst)
        slice = (double)b->last_worst;
    /* never ask for more than a quarter of what is left of the budget
     * (other instances want their share), but always for one call */
    if (b->known && b->exists) {
        double left = (double)(b->max - b->spent) / 4.0;
        if (slice > left)
            slice = left;
        if (slice < (double)b->last_worst)
            slice = (double)b->last_worst;
    }
    if (slice > 9e18)
        slice = 9e18;
    return b->reserved + (int64_t)slice;
}

void budget_renew_sent(budget_share *b, int64_t want)
{
    b->renewing = true;
    b->resize = false;
    b->reporting = b->settled;
    b->settled = 0;
    /* The answer sets the lease to at most `want` (what is reserved now +
     * a slice), and the reported amount leaves it. Calls admitted while it
     * is in flight must fit in that, or this instance would hold calls
     * the database no longer counts as leased to it: so the lease shrinks
     * now, not when the answer comes. (Kept if the renewal fails: smaller
     * than what the database holds for us, which is safe.) */
    if (want < 0)
        want = 0;
    if (b->lease > want + b->reporting)
        b->lease = want + b->reporting;
}

void budget_renewed(budget_share *b, bool exists, const char *lease_id, int64_t granted,
                    int64_t max, int64_t spent, int64_t leased, int64_t reset_at_us,
                    uint64_t now_ns, uint64_t ttl_ns)
{
    b->renewing = false;
    b->uncertain = false;
    b->resize = !b->known && exists && granted > 0;
    b->known = true;
    b->exists = exists;
    b->reporting = 0;
    b->renewed_ns = now_ns;
    if (!exists) {
        b->lease = 0;
        b->lease_id[0] = '\0';
        b->expires_ns = 0;
        return;
    }
    if (lease_id)
        strncpy(b->lease_id, lease_id, sizeof(b->lease_id) - 1);
    else
        b->lease_id[0] = '\0';
    b->lease_id[sizeof(b->lease_id) - 1] = '\0';
    b->lease = granted;
    b->max = max;
    b->spent = spent;
    b->leased = leased;
    b->reset_at_us = reset_at_us;
    b->expires_ns = granted > 0 ? now_ns + ttl_ns : 0;
}

void budget_renew_failed(budget_share *b)
{
    b->renewing = false;
    b->uncertain = true; /* the database may have granted what we never heard */
    b->settled += b->reporting;
    b->reporting = 0;
}
