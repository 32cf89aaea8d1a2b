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

/* Creates the gateway on loop with cfg (takes its own reference). */
gateway *gateway_new(uv_loop_t *loop, const config *cfg);
/* cb(ud, msg) runs when the gateway cannot go on (the database has the
 * wrong schema version): the daemon should stop with msg. */
void gateway_on_fatal(gateway *gw, void (*cb)(void *ud, const char *msg), void *ud);
/* Listens on cfg->listen. 0 or -errno (-EINVAL: the setup in gateway_new
 * failed, already logged). */
int gateway_start(gateway *gw) __attribute__((warn_unused_result));
/* The port actually bound. */
uint16_t gateway_port(const gateway *gw);
/* Swaps in a new configuration for requests that start afterwards; in
 * flight ones finish with the config they started with. Settings that need
 * a restart are kept and reported with a log line. Takes its own ref. */
void gateway_reload(gateway *gw, const config *cfg);
/* Graceful stop: /health/ready turns 503, the listener closes, requests
 * and streams in flight finish; done(ud) runs when the last connection
 * closed. */
void gateway_drain(gateway *gw, void (*done)(void *), void *ud);
/* Stops everything now: aborts in-flight requests, closes connections and
 * idle upstream connections. Run the loop afterwards so handles close. */
void gateway_close(gateway *gw);
/* Frees the gateway once its handles are closed. */
void gateway_free(gateway *gw);
/* Requests in flight (handed to the application and not finished). */
uint64_t gateway_inflight(const gateway *gw);

#endif
