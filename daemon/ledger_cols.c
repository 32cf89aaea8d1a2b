/* ledger_cols.c - ledger rows as PostgreSQL array literals (see
 * ledger_cols.h).
 *
 * Array literal syntax: {e1,e2,...}; an element is NULL (unquoted) or a
 * double-quoted string in which '"' and '\' are escaped with '\'. Every
 * non-null element is quoted, so no text can turn into NULL, a nested
 * array or a delimiter. */
#include "daemon/ledger_cols.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "providers/jscan.h"

#define COL_MAX_BYTES (64u << 20) /* per column: far above ledger.batch_rows rows */

const char *const ledger_col_names[LEDGER_NCOLS] = {
    "id",
    "at",
    "request_id",
    "instance",
    "key_id",
    "key_alias",
    "team_id",
    "org_id",
    "job_id",
    "endpoint",
    "requested_model",
    "provider",
    "provider_model",
    "stream",
    "status",
    "upstream_status",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "usage_source",
    "cost_nano",
    "price_nano",
    "credential",
    "latency_us",
    "ttft_us",
    "error",
    "attempts",
    "credit_leased",
};

void ledger_cols_init(ledger_cols *c)
{
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < LEDGER_NCOLS; i++)
        buf_init(&c->col[i], COL_MAX_BYTES);
    memset(c->guess, 0xff, sizeof(c->guess));
}

void ledger_cols_free(ledger_cols *c)
{
    for (int i = 0; i < LEDGER_NCOLS; i++)
        buf_free(&c->col[i]);
}

static int col_of(ledger_cols *c, size_t member, const jscan_val *key)
{
    size_t slot = member < sizeof(c->guess) ? member : sizeof(c->guess) - 1;
    int g = c->guess[slot];
    if (g < LEDGER_NCOLS && jscan_str_eq(key, ledger_col_names[g], strlen(ledger_col_names[g])))
        return g;
    for (int i = 0; i < LEDGER_NCOLS; i++)
        if (jscan_str_eq(key, ledger_col_names[i], strlen(ledger_col_names[i]))) {
            c->guess[slot] = (unsigned char)i;
            return i;
        }
    return -1;
}

typedef struct esc_ctx {
    buf *b;
    int rc;
} esc_ctx;

/* Appends decoded string bytes, escaping '"' and '\'; a NUL cannot be
 * carried in a text parameter: -EINVAL. */
static void esc_bytes(void *ud, const char *p, size_t n)
{
    esc_ctx *e = ud;
    size_t run = 0;
    for (size_t i = 0; i < n && !e->rc; i++) {
        char ch = p[i];
        if (ch != '"' && ch != '\\' && ch != '\0')
            continue;
        if (ch == '\0') {
            e->rc = -EINVAL;
            return;
        }
        if (buf_append(e->b, p + run, i - run) || buf_append(e->b, "\\", 1))
            e->rc = -ENOMEM;
        run = i;
    }
    if (!e->rc && buf_append(e->b, p + run, n - run))
        e->rc = -ENOMEM;
}

static int put_value(buf *b, const jscan_val *v)
{
    switch (v->type) {
    case JSCAN_NULL:
        return buf_append(b, "NULL", 4) ? -ENOMEM : 0;
    case JSCAN_TRUE:
        return buf_append(b, "true", 4) ? -ENOMEM : 0;
    case JSCAN_FALSE:
        return buf_append(b, "false", 5) ? -ENOMEM : 0;
    case JSCAN_NUMBER: {
        int64_t x;
        if (jscan_int64(v, &x)) /* a fraction or exponent: let the database judge the JSON */
            return -EINVAL;
        return buf_append(b, v->p, v->n) ? -ENOMEM : 0;
    }
    case JSCAN_STRING: {
        esc_ctx e = {b, 0};
        if (buf_append(b, "\"", 1))
            return -ENOMEM;
        if (jscan_str_each(v, esc_bytes, &e))
            return -EINVAL;
        if (e.rc)
            return e.rc;
        return buf_append(b, "\"", 1) ? -ENOMEM : 0;
    }
    default: /* an object or array where a column value belongs */
        return -EINVAL;
    }
}

static int put_row(ledger_cols *c, const jscan_val *row)
{
    if (row->type != JSCAN_OBJECT)
        return -EINVAL;
    const char *sep = c->rows ? "," : "";
    size_t seplen = c->rows ? 1 : 0;
    bool seen[LEDGER_NCOLS] = {false};
    jscan_iter it;
    jscan_val k, v;
    if (jscan_iter_init(&it, row))
        return -EINVAL;
    size_t member = 0;
    int rc;
    while ((rc = jscan_obj_next(&it, &k, &v)) == 0) {
        int col = col_of(c, member++, &k);
        if (col < 0)
            continue; /* jsonb_to_recordset ignores other members too */
        if (seen[col])
            return -EINVAL; /* jsonb keeps the last: leave it to the database */
        seen[col] = true;
        if (buf_append(&c->col[col], sep, seplen))
            return -ENOMEM;
        if ((rc = put_value(&c->col[col], &v)))
            return rc;
    }
    if (rc != -ENOENT)
        return -EINVAL;
    for (int i = 0; i < LEDGER_NCOLS; i++)
        if (!seen[i] && (buf_append(&c->col[i], sep, seplen) || buf_append(&c->col[i], "NULL", 4)))
            return -ENOMEM;
    c->rows++;
    return 0;
}

int ledger_cols_fill(ledger_cols *c, const char *json, size_t len)
{
    c->rows = 0;
    for (int i = 0; i < LEDGER_NCOLS; i++) {
        buf_reset(&c->col[i]);
        if (buf_append(&c->col[i], "{", 1))
            return -ENOMEM;
    }
    jscan_val root, row;
    jscan_iter it;
    if (jscan_parse(json, len, 4, &root, NULL) || root.type != JSCAN_ARRAY ||
        jscan_iter_init(&it, &root))
        return -EINVAL;
    int rc;
    while ((rc = jscan_arr_next(&it, &row)) == 0)
        if ((rc = put_row(c, &row)))
            return rc;
    if (rc != -ENOENT)
        return -EINVAL;
    for (int i = 0; i < LEDGER_NCOLS; i++)
        if (buf_append(&c->col[i], "}", 1))
            return -ENOMEM;
    return 0;
}
