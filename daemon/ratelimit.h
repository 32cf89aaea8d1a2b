/* ratelimit.h - requests and tokens per minute, per key and per team,
 * held across instances (migration 0005).
 *
 * For each limited key or team and kind (rpm, tpm) this instance holds a
 * slice of the current minute's allowance, taken from the database with
 * tollgate_rate(); calls are admitted from the slice in memory. A call
 * whose need the slice cannot cover waits for one more slice (bounded);
 * when the window's allowance is spent it is refused until the minute
 * ends. tpm counts the prompt estimate plus the output cap at admission
 * and is corrected by the real count when the call ends. */
#ifndef TG_DAEMON_RATELIMIT_H
#define TG_DAEMON_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/store.h"

#define RATE_MAX_REFS 4

typedef struct ratelimits ratelimits;
typedef struct rate_entry rate_entry;
typedef struct rate_wait rate_wait;

typedef struct rate_ref {
    const char *scope; /* "key" or "team" */
    const char *id;    /* UUID */
    bool tokens;       /* tpm (else rpm) */
    int64_t limit;     /* per minute, > 0 */
    int64_t need;      /* 1 for rpm; estimated tokens for tpm */
} rate_ref;

typedef struct rate_claim {
    rate_entry *e[RATE_MAX_REFS];
    int64_t took[RATE_MAX_REFS];
    size_t n;
} rate_claim;

typedef struct rate_refusal {
    char scope[8];
    bool tokens;
    int64_t limit;
    double reset_s;   /* until the window ends */
    bool unavailable; /* the database could not be asked (503) */
} rate_refusal;

ratelimits *ratelimits_new(uv_loop_t *loop, store *st, uint32_t wait_ms);

/* 0 admitted (claim filled), 1 waiting (cb later: rc 0 or -EAGAIN with the
 * refusal), -EAGAIN refused now (refusal filled). */
int ratelimits_admit(ratelimits *rl, const rate_ref *refs, size_t n, rate_claim *claim,
                     void (*cb)(void *ud, int rc, const rate_refusal *r), void *ud, rate_wait **w,
                     rate_refusal *refusal);
void ratelimits_cancel(rate_wait *w);

/* The call ended with `tokens` actually used: tpm slices are corrected. */
void ratelimits_settle(ratelimits *rl, rate_claim *claim, int64_t tokens);

void ratelimits_close(ratelimits *rl);
void ratelimits_free(ratelimits *rl);

#endif
