/* checks.c - active health checks of providers (see checks.h). */
#include "daemon/checks.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "daemon/version.h"
#include "providers/chat.h"

typedef struct check {
    struct checks *owner;
    const config_provider *p;
    uv_timer_t timer;
    upstream_call *up; /* in flight */
    buf head;          /* its request */
    int status;        /* of the answer in flight */
    uint64_t started_ns;
    /* the last result */
    bool known, up_now;
    int64_t at_us;
    double latency_ms;
    char error[160];
    uint64_t ok, failed;
} check;

struct checks {
    const config *cfg; /* own reference */
    httpc_pool *pool;
    route_table **routes;
    check *v;
    size_t n;
    size_t open_handles;
    bool closing;
};

static void check_result(check *c, bool ok, const char *why)
{
    uint64_t now = clock_mono_ns();
    bool was_up = !c->known || c->up_now;
    if (was_up && !ok)
        log_warn(NULL, "health check of provider '%s' failed: %s", c->p->name, why);
    else if (!was_up && ok)
        log_info(NULL, "health check of provider '%s' passes again", c->p->name);
    c->known = true;
    c->up_now = ok;
    c->at_us = clock_wall_us();
    c->latency_ms = (double)(now - c->started_ns) / 1e6;
    snprintf(c->error, sizeof c->error, "%s", ok ? "" : why);
    if (ok)
        c->ok++;
    else
        c->failed++;
    route_table_feed(*c->owner->routes, c->p, ok ? RT_OK : RT_FAIL, now - c->started_ns, why);
}

static int on_head(upstream_call *up, int status, const upstream_header *h, size_t n, void *ud)
{
    (void)up;
    (void)h;
    (void)n;
    ((check *)ud)->status = status;
    return 0;
}

static int on_body(upstream_call *up, const char *p, size_t n, void *ud)
{
    (void)up;
    (void)p;
    (void)n;
    (void)ud;
    return 0; /* the list itself is not needed */
}

static void on_done(upstream_call *up, const char *err, void *ud)
{
    check *c = ud;
    (void)up;
    c->up = NULL;
    char why[64];
    if (err) {
        check_result(c, false, err);
    } else {
        snprintf(why, sizeof why, "HTTP %d", c->status);
        check_result(c, c->status >= 200 && c->status < 300, why);
    }
}

static const upstream_callbacks check_callbacks = {
    .on_head = on_head,
    .on_body = on_body,
    .on_done = on_done,
};

static void check_start(check *c)
{
    const config_provider *p = c->p;
    c->started_ns = clock_mono_ns();
    c->status = 0;
    if (p->type == CONFIG_PROVIDER_MOCK) {
        check_result(c, true, NULL);
        return;
    }
    const chat_format *f = chat_format_get((chat_format_id)config_provider_format(p));
    buf_reset(&c->head);
    int rc = buf_printf(&c->head,
                        "GET %s/models HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\n"
                        "User-Agent: tollgate/%s (health check)\r\n",
                        p->url.path, p->url.authority, tg_version);
    if (!rc)
        rc = f->req_auth_headers(p->api_key, &c->head);
    for (size_t i = 0; !rc && i < p->nheaders; i++)
        rc = buf_printf(&c->head, "%s: %s\r\n", p->headers[i].name, p->headers[i].value);
    if (!rc)
        rc = buf_append(&c->head, "\r\n", 2);
    if (rc) {
        check_result(c, false, "could not build the request");
        return;
    }
    httpc_target t = route_target(p);
    uint32_t to = p->check_timeout_ms;
    httpc_timeouts tos = {to, to, to, to, to};
    uv_buf_t b = uv_buf_init(c->head.data, (unsigned)c->head.len);
    if (httpc_call_start(c->owner->pool, &t, &tos, &b, 1, &check_callbacks, c, &c->up) != 0) {
        c->up = NULL;
        check_result(c, false, "could not start the request");
    }
}

static void on_tick(uv_timer_t *t)
{
    check *c = t->data;
    if (!c->up && !c->owner->closing)
        check_start(c);
}

checks *checks_new(uv_loop_t *loop, httpc_pool *pool, const config *cfg, route_table **routes)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->nproviders; i++)
        n += cfg->providers[i].check_interval_ms > 0;
    if (!n)
        return NULL;
    checks *k = calloc(1, sizeof(*k));
    if (!k || !(k->v = calloc(n, sizeof(*k->v)))) {
        free(k);
        log_error(NULL, "health checks: out of memory; none will run");
        return NULL;
    }
    k->cfg = config_ref(cfg);
    k->pool = pool;
    k->routes = routes;
    for (size_t i = 0; i < cfg->nproviders; i++) {
        const config_provider *p = &cfg->providers[i];
        if (!p->check_interval_ms)
            continue;
        check *c = &k->v[k->n++];
        c->owner = k;
        c->p = p;
        buf_init(&c->head, 64 * 1024);
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        k->open_handles++;
        /* the first check soon after start, then every interval */
        uv_timer_start(&c->timer, on_tick, 100, p->check_interval_ms);
    }
    return k;
}

int checks_json(const checks *k, buf *out)
{
    int rc = 0;
    for (size_t i = 0; k && i < k->n && !rc; i++) {
        const check *c = &k->v[i];
        rc = buf_printf(out,
                        "%s{\"provider\":\"%s\",\"state\":\"%s\",\"interval_ms\":%u,\"ok\":%" PRIu64
                        ",\"failed\":%" PRIu64 ",\"last_at_us\":%" PRId64
                        ",\"latency_ms\":%.1f,\"last_error\":",
                        i ? "," : "", c->p->name, !c->known ? "unknown" : c->up_now ? "up" : "down",
                        c->p->check_interval_ms, c->ok, c->failed, c->at_us, c->latency_ms);
        if (!rc && c->error[0]) {
            rc = buf_append_str(out, "\"");
            if (!rc)
                rc = buf_append_json_escaped(out, c->error, strlen(c->error));
            if (!rc)
                rc = buf_append_str(out, "\"}");
        } else if (!rc) {
            rc = buf_append_str(out, "null}");
        }
    }
    return rc;
}

static void on_closed(uv_handle_t *h)
{
    check *c = h->data;
    checks *k = c->owner;
    if (--k->open_handles > 0)
        return;
    for (size_t i = 0; i < k->n; i++)
        buf_free(&k->v[i].head);
    config_unref(k->cfg);
    free(k->v);
    free(k);
}

void checks_close(checks *k)
{
    if (!k || k->closing)
        return;
    k->closing = true;
    for (size_t i = 0; i < k->n; i++) {
        check *c = &k->v[i];
        if (c->up) {
            upstream_abort(c->up);
            c->up = NULL;
        }
        uv_close((uv_handle_t *)&c->timer, on_closed);
    }
}
