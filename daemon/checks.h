/* checks.h - active health checks of providers (providers[].health_check,
 * off unless an interval is set).
 *
 * Every interval each checked provider gets one cheap request: GET
 * <base_url>/models with its credential (free at every provider, no
 * tokens). A 2xx is up; anything else (an error status, a connect or TLS
 * failure, the timeout) is down. Each result is fed to every route on that
 * provider like an attempt of real traffic (route_table_feed): failures
 * open circuits before users meet them, and a check after the cool-down
 * is the half-open probe that closes a recovered route. The mock provider
 * is always up. Results are shown by GET /admin/providers/health. */
#ifndef TG_DAEMON_CHECKS_H
#define TG_DAEMON_CHECKS_H

#include <uv.h>

#include "daemon/base/buf.h"
#include "daemon/config.h"
#include "daemon/httpc.h"
#include "daemon/routes.h"

typedef struct checks checks;

/* Starts the checks of cfg's providers that have an interval. Results go
 * to *routes (read at each result: the caller may replace the table).
 * NULL when none is configured (or ENOMEM: logged). */
checks *checks_new(uv_loop_t *loop, httpc_pool *pool, const config *cfg, route_table **routes);

/* The checks as JSON array members (no brackets), for the health page. */
int checks_json(const checks *k, buf *out);

/* Stops the timers and aborts checks in flight; frees itself once the
 * loop has closed its handles. NULL is fine. */
void checks_close(checks *k);

#endif
