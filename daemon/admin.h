/* admin.h - the admin API (/admin/...): organizations, teams, virtual
 * keys, model aliases, access groups, provider credentials, BYOK keys,
 * admin keys and the audit log, in PostgreSQL.
 *
 * Every resource is one row of a table: its fields, their types and which
 * may change are declared in admin.c, and the same few generic handlers
 * (list, get, create, update, delete, actions such as suspend or
 * activate) serve them all. Each write is one SQL statement that also
 * appends its audit_log row (before and after, secrets masked), so a
 * change and its audit entry commit together. After a write the handler
 * reloads the row into this instance's cache before answering; the other
 * instances get it through NOTIFY (daemon/store.h).
 *
 * Authentication: the master key (admin.master_key, role owner) or an
 * admin key (admin_keys, cached) as "Authorization: Bearer ...". Roles:
 * viewer reads, admin writes, owner also manages admin keys and may read a
 * credential's secret (include_secret=true, audited). The reference is
 * docs/admin-api.md. */
#ifndef TG_DAEMON_ADMIN_H
#define TG_DAEMON_ADMIN_H

#include "daemon/config.h"
#include "daemon/http_server.h"
#include "daemon/store.h"

/* Answers req (a path under /admin). st is NULL in DB-less mode (every
 * admin call is then a 503 that says the admin API needs a database). cfg
 * is the current config (the handler takes its own reference). */
void admin_handle(store *st, const config *cfg, http_req *req);

/* Does req carry the master key or an admin key (any role)? st may be
 * NULL (DB-less: the master key only). For admin pages the gateway
 * answers itself (GET /admin/providers/health). */
bool admin_authorized(store *st, const config *cfg, http_req *req);

/* GET /v1/usage: the calling key's own usage (key_id for a database key,
 * else its alias for a config key), the same report as GET /admin/usage
 * without the org and team dimensions. */
void admin_key_usage(store *st, const config *cfg, http_req *req, const char *key_id,
                     const char *alias);

/* POST /webhooks/payments: a payment provider credits a team. The body
 * {"payment_id", "team_id", "amount": "25.00"} must carry
 * x-tollgate-signature: sha256=<hex HMAC-SHA256(billing.payment_webhook_secret,
 * raw body)>. Credited once per payment_id (a replay answers
 * {"credited": false, "duplicate": true}); 401 on a bad signature. */
void admin_payment_webhook(store *st, const config *cfg, http_req *req);

#endif
