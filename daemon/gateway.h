/* gateway.h - the request path on one loop.
 *
 * A gateway owns one loop's share of the process: the inbound server, the
 * upstream connection pool, the per-key rate limiters and the current
 * configuration. For each request it routes, authenticates the virtual
 * key, checks the model and the rate limit, builds the upstream request
 * (rewriting the model alias and asking for usage), relays the answer as it
 * arrives while reading usage from it, and writes one access-log line.
 *
 *   accept -> parse -> route -> key -> scan body -> model -> access
 *     -> rate limit -> upstream (TLS pool or mock) -> relay (SSE aware)
 *     -> access log
 */
#ifndef TG_DAEMON_GATEWAY_H
#define TG_DAEMON_GATEWAY_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "daemon/config.h"

typedef struct gateway gateway;

/* What the workers of one process share (workers: N, one loop and one
 * gateway each, in their own threads): the ledger (the first worker's),
 * the config keys' rate buckets and budgets (under a lock), the tokenizer
 * data and the price catalog (read once). Everything else is per worker:
 * the listener (SO_REUSEPORT), upstream pools, database connections,
 * leases (as instance "<id>/w<n>"), routes and metrics. /metrics and
 * /health/ready answer for the whole process. */
typedef struct gateway_group gateway_group;

gateway_group *gateway_group_new(unsigned nworkers);
/* After every gateway of the group is freed. */
void gateway_group_free(gateway_group *g);

/* Creates worker `index` of grp on loop with cfg (takes its own
 * reference). Worker 0 first: it opens the ledger the others use. */
gateway *gateway_new(uv_loop_t *loop, const config *cfg, gateway_group *grp, unsigned index);
/* cb(ud, msg) runs when the gateway cannot go on (the database has the
 * wrong schema version): the daemon should stop with msg. */
void gateway_on_fatal(gateway *gw, void (*cb)(void *ud, const char *msg), void *ud);
/* Listens on cfg->listen's host and `port` (with several workers through
 * SO_REUSEPORT: the first may take port 0, the others pass the port it
 * got). 0 or -errno (-EINVAL: the setup in gateway_new failed, already
 * logged). */
int gateway_start(gateway *gw, uint16_t port) __attribute__((warn_unused_result));
/* The port actually bound. */
uint16_t gateway_port(const gateway *gw);
/* Swaps in a new configuration for requests that start afterwards; in
 * flight ones finish with the config they started with. Settings that need
 * a restart are kept and reported with a log line. Takes its own ref. */
void gateway_reload(gateway *gw, const config *cfg);
/* Graceful stop: /health/ready turns 503, the listener closes, requests
 * and streams in flight finish, leases go back; done(ud) runs then (the
 * first worker's after the ledger is drained too, which waits for every
 * worker's drain). */
void gateway_drain(gateway *gw, void (*done)(void *), void *ud);
/* Stops everything now: aborts in-flight requests, closes connections and
 * idle upstream connections. Run the loop afterwards so handles close. */
void gateway_close(gateway *gw);
/* Frees the gateway once its handles are closed. */
void gateway_free(gateway *gw);
/* From another thread: gateway_reload / gateway_drain (done runs on gw's
 * loop) / gateway_close, run on gw's loop soon after. */
void gateway_post_reload(gateway *gw, const config *cfg);
void gateway_post_drain(gateway *gw, void (*done)(void *), void *ud);
void gateway_post_close(gateway *gw);
/* Requests in flight (handed to the application and not finished). */
uint64_t gateway_inflight(const gateway *gw);

#endif
