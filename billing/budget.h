/* budget.h - one instance's share of a budget: a lease, spent from in
 * memory (DESIGN.md §6, docs/billing.md).
 *
 * The database grants this instance a lease (tollgate_lease(), migration
 * 0004): an amount of the budget it may spend without asking again. A
 * call is admitted when its worst-case price fits in what the lease has
 * left (lease - reserved - settled); its worst case is reserved until it
 * ends, then replaced by its actual price (settled). Settled spend is
 * reported at the next renewal, which also sets the lease for what comes
 * next: the in-flight reservations plus a slice sized to the spend rate
 * (about two seconds of spend, never under a few calls' worst case), so a
 * busy budget renews a few times a second at most and an idle one gives
 * its lease back.
 *
 * Pure bookkeeping: no I/O, no clock of its own (times are passed in, ns
 * monotonic), one loop per object. daemon/leases.c drives it. */
#ifndef TG_BILLING_BUDGET_H
#define TG_BILLING_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct budget_share {
    /* what the database said at the last renewal */
    bool known;                 /* a renewal has answered (else: never asked yet) */
    bool exists;                /* the owner has a budget (false: unlimited) */
    char lease_id[37];          /* "" when no lease is held */
    int64_t lease;              /* the amount granted (covers reserved + settled + the rest) */
    int64_t max, spent, leased; /* the budget's totals (for messages and headers) */
    int64_t reset_at_us;        /* 0 = never */
    uint64_t expires_ns;        /* when the lease lapses if not renewed (0: no lease) */
    uint64_t renewed_ns;        /* when the last renewal answered */
    /* this instance since then */
    int64_t reserved;  /* worst cases of admitted calls in flight */
    int64_t settled;   /* actual prices of calls ended, not yet reported */
    int64_t reporting; /* settled amount carried by the renewal in flight */
    bool renewing;     /* a renewal is in flight */
    bool resize;       /* the first answer came (a small first ask): size the slice now */
    bool uncertain;    /* the last renewal failed: the database may hold a lease whose
                          answer was lost; the drain asks again */
    /* sizing */
    double rate;        /* EWMA of spend, nano-USD per second */
    uint64_t rate_ns;   /* last rate update */
    double demand;      /* EWMA of worst cases admitted, nano-USD per second: long calls
                           (streams) hold their worst case long before they settle */
    uint64_t demand_ns; /* last demand update */
    int64_t last_worst; /* the latest admitted worst case */
    uint64_t used_ns;   /* last admission (idle detection) */
} budget_share;

/* What the lease has left for new calls (may be negative after a lease
 * shrank under calls in flight). */
int64_t budget_available(const budget_share *b);

/* Admits a call of worst-case price `worst` if it fits: reserves it and
 * returns true. A call of worst case 0 (nothing to charge) is always
 * admitted and reserves nothing. */
bool budget_admit(budget_share *b, int64_t worst, uint64_t now_ns);

/* The call ended: its reservation `worst` goes, its actual `price` (>= 0)
 * is settled. */
void budget_settle(budget_share *b, int64_t worst, int64_t price, uint64_t now_ns);

/* Should a renewal be sent now? (none in flight and: never asked, the
 * lease runs low, it lapses within renew_before_ns, or it is idle and can
 * be returned). */
bool budget_should_renew(const budget_share *b, uint64_t now_ns, uint64_t ttl_ns);

/* The amount to ask for: reserved in flight + a slice for what comes
 * next; 0 when idle past idle_ns (the lease goes back). */
int64_t budget_want(const budget_share *b, uint64_t now_ns, uint64_t idle_ns);

/* A renewal asking for `want` is sent: it carries the settled amount
 * (reported). Until it answers, calls are admitted only as far as they
 * fit in `want` (the lease shrinks at once when want is smaller). */
void budget_renew_sent(budget_share *b, int64_t want);

/* Its answer. exists false: the owner has no budget. granted is the new
 * lease; the amount reported is now in the database's spent. */
void budget_renewed(budget_share *b, bool exists, const char *lease_id, int64_t granted,
                    int64_t max, int64_t spent, int64_t leased, int64_t reset_at_us,
                    uint64_t now_ns, uint64_t ttl_ns);

/* The renewal failed (database unreachable): the report goes back to
 * settled, to be sent again. */
void budget_renew_failed(budget_share *b);

#endif
