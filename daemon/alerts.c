/* alerts.c - signed webhook alerts (see alerts.h). */
#include "daemon/alerts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "daemon/base/buf.h"
#include "daemon/base/log.h"
#include "daemon/version.h"

typedef struct alert_call {
    buf head, body;
    char event[64];
    char target[300];
    int status;
} alert_call;

static int on_head(upstream_call *call, int status, const upstream_header *h, size_t n, void *ud)
{
    alert_call *a = ud;
    (void)call;
    (void)h;
    (void)n;
    a->status = status;
    return 0;
}

static int on_body(upstream_call *call, const char *p, size_t n, void *ud)
{
    (void)call;
    (void)p;
    (void)n;
    (void)ud;
    return 0;
}

static void on_done(upstream_call *call, const char *err, void *ud)
{
    alert_call *a = ud;
    (void)call;
    if (err || a->status < 200 || a->status >= 300)
        log_warn(NULL, "alert %s to %s not delivered: %s%d", a->event, a->target,
                 err ? err : "status ", err ? 0 : a->status);
    else
        log_info(NULL, "alert %s delivered to %s (%d)", a->event, a->target, a->status);
    buf_free(&a->head);
    buf_free(&a->body);
    free(a);
}

static const upstream_callbacks alert_callbacks = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

void alerts_send(httpc_pool *pool, const config *cfg, const char *event, const char *json,
                 size_t len)
{
    const config_url *u = &cfg->budgets.alert_url;
    if (!u->host || !pool)
        return;
    alert_call *a = calloc(1, sizeof(*a));
    if (!a)
        return;
    snprintf(a->event, sizeof(a->event), "%s", event);
    snprintf(a->target, sizeof(a->target), "%s:%u", u->host, (unsigned)u->port);
    buf_init(&a->head, 8192);
    buf_init(&a->body, 1u << 20);
    int rc = buf_append(&a->body, json, len);
    if (!rc)
        rc =
            buf_printf(&a->head,
                       "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\nUser-Agent: tollgate/%s\r\nx-tollgate-event: %s\r\n",
                       u->path[0] ? u->path : "/", u->authority, len, tg_version, event);
    if (!rc && cfg->budgets.alert_secret_len) {
        uint8_t mac[CRYPTO_SHA256_LEN];
        char hex[CRYPTO_SHA256_HEX_LEN + 1];
        if (crypto_hmac_sha256(cfg->budgets.alert_secret, cfg->budgets.alert_secret_len, json, len,
                               mac) == 0) {
            crypto_hex(mac, sizeof(mac), hex);
            rc = buf_printf(&a->head, "x-tollgate-signature: sha256=%s\r\n", hex);
        }
    }
    if (!rc)
        rc = buf_append_str(&a->head, "\r\n");
    httpc_target t = {.host = u->host, .port = u->port, .tls = u->tls, .tls_verify = true};
    httpc_timeouts to = {.connect_ms = 5000,
                         .tls_ms = 5000,
                         .first_byte_ms = 5000,
                         .idle_ms = 5000,
                         .total_ms = 5000};
    uv_buf_t bufs[2] = {uv_buf_init(a->head.data, (unsigned)a->head.len),
                        uv_buf_init(a->body.data, (unsigned)a->body.len)};
    upstream_call *call = NULL;
    if (rc || httpc_call_start(pool, &t, &to, bufs, 2, &alert_callbacks, a, &call) != 0) {
        log_warn(NULL, "alert %s to %s not sent (could not start the request)", a->event,
                 a->target);
        buf_free(&a->head);
        buf_free(&a->body);
        free(a);
    }
}
