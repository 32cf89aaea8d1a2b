/* alerts.h - operator alerts as signed webhooks (budgets.alert_webhook).
 *
 * An alert is a JSON object POSTed to the configured URL through the
 * loop's HTTP client (plain or TLS), with
 *   x-tollgate-signature: sha256=<hex HMAC-SHA256(budgets.alert_webhook_secret, body)>
 * when a secret is set, and x-tollgate-event naming it. Delivery is best
 * effort: one attempt, bounded by 5 s, its outcome logged; the log line
 * that accompanies every alert is written whether or not a URL is set. */
#ifndef TG_DAEMON_ALERTS_H
#define TG_DAEMON_ALERTS_H

#include "daemon/config.h"
#include "daemon/httpc.h"

/* Posts event (a name, "budget.soft_threshold") with body json (an
 * object). Copies what it needs; cfg gives the URL and secret. */
void alerts_send(httpc_pool *pool, const config *cfg, const char *event, const char *json,
                 size_t len);

#endif
