/* chat.c - the normalized chat model: request arena, answer collector,
 * shared helpers for the adapters (see chat.h). */
#include "providers/chat.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"

#define CHAT_ARENA_BLOCK ((size_t)16 * 1024)
#define CHAT_RESP_MAX ((size_t)64 * 1024 * 1024) /* cap on a collected text */
#define CHAT_MAX_CALLS 1024                      /* tool calls in one answer */

/* ------------------------------------------------------------ errors */

void chat_error_invalid(chat_error *e, const char *param, const char *fmt, ...)
{
    memset(e, 0, sizeof *e);
    e->status = 400;
    e->kind = CHAT_ERR_INVALID_REQUEST;
    e->retry_after_ms = -1;
    snprintf(e->type, sizeof e->type, "invalid_request_error");
    if (param)
        snprintf(e->param, sizeof e->param, "%s", param);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

chat_err_kind chat_err_kind_of_status(int status)
{
    switch (status) {
    case 400: case 422: return CHAT_ERR_INVALID_REQUEST;
    case 401: return CHAT_ERR_AUTH;
    case 402: return CHAT_ERR_BILLING;
    case 403: return CHAT_ERR_PERMISSION;
    case 404: return CHAT_ERR_NOT_FOUND;
    case 413: return CHAT_ERR_TOO_LARGE;
    case 429: return CHAT_ERR_RATE_LIMIT;
    case 503: case 529: return CHAT_ERR_OVERLOADED;
    case 504: case 408: return CHAT_ERR_TIMEOUT;
    default: return status >= 500 ? CHAT_ERR_SERVER : CHAT_ERR_INVALID_REQUEST;
    }
}

/* ------------------------------------------------------------ arena */

typedef struct chat_block {
    struct chat_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
} chat_block;

struct chat_arena {
    chat_block *head;  /* current block (first in the chain) */
    json_t **refs;     /* JSON values to release */
    size_t nrefs, caprefs;
};

int chat_request_init(chat_request *r)
{
    memset(r, 0, sizeof *r);
    r->arena = calloc(1, sizeof *r->arena);
    if (!r->arena)
        return -ENOMEM;
    r->parallel_tool_calls = -1;
    r->max_tokens = r->top_k = r->seed = r->n = r->thinking_budget = -1;
    r->temperature = r->top_p = r->frequency_penalty = r->presence_penalty = NAN;
    return 0;
}

void chat_request_free(chat_request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->ntools; i++)
        json_decref(r->tools[i].parameters);
    json_decref(r->response_schema);
    if (r->arena) {
        chat_block *b = r->arena->head;
        while (b) {
            chat_block *n = b->next;
            free(b);
            b = n;
        }
        free(r->arena);
    }
    memset(r, 0, sizeof *r);
}

void *chat_alloc(chat_request *r, size_t n)
{
    chat_arena *a = r->arena;
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > CHAT_ARENA_BLOCK ? n : CHAT_ARENA_BLOCK;
        chat_block *b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    void *p = a->head->mem + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

int chat_strdup(chat_request *r, const char *p, size_t n, chat_str *out)
{
    char *d = chat_alloc(r, n + 1);
    if (!d)
        return -ENOMEM;
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    out->p = d;
    out->len = n;
    return 0;
}

/* Grows an arena array of elem-sized items to hold *n + 1 (doubling;
 * the old copy stays in the arena until the request is freed). */
static void *grow(chat_request *r, void *arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return arr;
    size_t nc = *cap ? *cap * 2 : 4;
    void *na = chat_alloc(r, nc * elem);
    if (!na)
        return NULL;
    if (n)
        memcpy(na, arr, n * elem);
    *cap = nc;
    return na;
}

/* Capacities live beside the arrays, in the arena header's slack: kept
 * simple by storing them in a side table keyed by array address would
 * cost more than this: capacities are always the next power of two >= 4
 * of the count, so they are recomputed. */
static size_t cap_of(size_t n)
{
    if (n == 0)
        return 0;
    size_t c = 4;
    while (c < n)
        c *= 2;
    return c;
}

chat_msg *chat_add_msg(chat_request *r, chat_role role)
{
    size_t cap = cap_of(r->nmsgs);
    chat_msg *m = grow(r, r->msgs, &cap, r->nmsgs, sizeof *m);
    if (!m)
        return NULL;
    r->msgs = m;
    chat_msg *x = &m[r->nmsgs++];
    memset(x, 0, sizeof *x);
    x->role = role;
    return x;
}

chat_part *chat_msg_add_part(chat_request *r, chat_msg *m, chat_part_type type)
{
    size_t cap = cap_of(m->nparts);
    chat_part *p = grow(r, m->parts, &cap, m->nparts, sizeof *p);
    if (!p)
        return NULL;
    m->parts = p;
    chat_part *x = &p[m->nparts++];
    memset(x, 0, sizeof *x);
    x->type = type;
    return x;
}

chat_tool *chat_add_tool(chat_request *r)
{
    size_t cap = cap_of(r->ntools);
    chat_tool *t = grow(r, r->tools, &cap, r->ntools, sizeof *t);
    if (!t)
        return NULL;
    r->tools = t;
    chat_tool *x = &t[r->ntools++];
    memset(x, 0, sizeof *x);
    return x;
}

int chat_add_stop(chat_request *r, const char *p, size_t n)
{
    size_t cap = cap_of(r->nstop);
    chat_str *s = grow(r, r->stop, &cap, r->nstop, sizeof *s);
    if (!s)
        return -ENOMEM;
    r->stop = s;
    if (chat_strdup(r, p, n, &s[r->nstop]) != 0)
        return -ENOMEM;
    r->nstop++;
    return 0;
}

void chat_set_unmapped(chat_request *r, const char *name)
{
    if (!r->unmapped[0])
        snprintf(r->unmapped, sizeof r->unmapped, "%s", name);
}

/* ------------------------------------------------------------ answers */

void chat_usage_unset(chat_usage *u)
{
    u->input = u->output = u->cache_read = u->cache_write = u->reasoning = -1;
}

void chat_response_init(chat_response *r)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->id, 1024);
    buf_init(&r->model, 1024);
    buf_init(&r->text, CHAT_RESP_MAX);
    buf_init(&r->thinking, CHAT_RESP_MAX);
    buf_init(&r->thinking_sig, CHAT_RESP_MAX);
    chat_usage_unset(&r->usage);
}

static void call_free(chat_tool_call *c)
{
    buf_free(&c->id);
    buf_free(&c->name);
    buf_free(&c->args);
    buf_free(&c->signature);
}

void chat_response_free(chat_response *r)
{
    buf_free(&r->id);
    buf_free(&r->model);
    buf_free(&r->text);
    buf_free(&r->thinking);
    buf_free(&r->thinking_sig);
    for (size_t i = 0; i < r->ncalls; i++)
        call_free(&r->calls[i]);
    free(r->calls);
    r->calls = NULL;
    r->ncalls = 0;
}

/* The call with index i, created (with every call before it) if new. */
static chat_tool_call *call_at(chat_response *r, int i)
{
    if (i < 0 || i >= CHAT_MAX_CALLS)
        return NULL;
    if ((size_t)i >= r->ncalls) {
        chat_tool_call *c = realloc(r->calls, ((size_t)i + 1) * sizeof *c);
        if (!c)
            return NULL;
        for (size_t k = r->ncalls; k <= (size_t)i; k++) {
            buf_init(&c[k].id, 1024);
            buf_init(&c[k].name, 1024);
            buf_init(&c[k].args, CHAT_RESP_MAX);
            buf_init(&c[k].signature, CHAT_RESP_MAX);
        }
        r->calls = c;
        r->ncalls = (size_t)i + 1;
    }
    return &r->calls[i];
}

/* Keeps the reported numbers of u over those in into. */
static void usage_merge(chat_usage *into, const chat_usage *u)
{
    if (u->input >= 0) into->input = u->input;
    if (u->output >= 0) into->output = u->output;
    if (u->cache_read >= 0) into->cache_read = u->cache_read;
    if (u->cache_write >= 0) into->cache_write = u->cache_write;
    if (u->reasoning >= 0) into->reasoning = u->reasoning;
}

static bool usage_any(const chat_usage *u)
{
    return u->input >= 0 || u->output >= 0 || u->cache_read >= 0 || u->cache_write >= 0 ||
           u->reasoning >= 0;
}

int chat_response_collect(void *ud, const chat_event *ev)
{
    chat_response *r = ud;
    if (ev->choice != 0)
        return -EINVAL;
    chat_tool_call *c;
    switch (ev->type) {
    case CHAT_EV_START:
        if (ev->id.len && !r->id.len && buf_append_slice(&r->id, ev->id))
            return -E2BIG;
        if (ev->model.len && !r->model.len && buf_append_slice(&r->model, ev->model))
            return -E2BIG;
        if (usage_any(&ev->usage)) {
            usage_merge(&r->usage, &ev->usage);
            r->have_usage = true;
        }
        return 0;
    case CHAT_EV_TEXT:
        return buf_append_slice(&r->text, ev->text) ? -E2BIG : 0;
    case CHAT_EV_THINKING:
        if (buf_append_slice(&r->thinking, ev->text) || buf_append_slice(&r->thinking_sig, ev->signature))
            return -E2BIG;
        return 0;
    case CHAT_EV_TOOL_START:
        if (!(c = call_at(r, ev->tool)))
            return -ENOMEM;
        buf_reset(&c->id);
        buf_reset(&c->name);
        buf_reset(&c->signature);
        if (buf_append_slice(&c->id, ev->id) || buf_append_slice(&c->name, ev->text) ||
            buf_append_slice(&c->signature, ev->signature))
            return -E2BIG;
        return 0;
    case CHAT_EV_TOOL_ARGS:
        if (!(c = call_at(r, ev->tool)))
            return -ENOMEM;
        return buf_append_slice(&c->args, ev->text) ? -E2BIG : 0;
    case CHAT_EV_FINISH:
        r->finish = ev->finish;
        snprintf(r->native, sizeof r->native, "%.*s", (int)ev->native.len, ev->native.p);
        snprintf(r->stop_sequence, sizeof r->stop_sequence, "%.*s", (int)ev->stop_sequence.len,
                 ev->stop_sequence.p);
        return 0;
    case CHAT_EV_USAGE:
        usage_merge(&r->usage, &ev->usage);
        r->have_usage = true;
        return 0;
    case CHAT_EV_ERROR:
        if (ev->error) {
            r->error = *ev->error;
            r->has_error = true;
        }
        return 0;
    case CHAT_EV_END:
        r->ended = true;
        return 0;
    }
    return 0;
}

/* ------------------------------------------------------------ helpers */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0x7Fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

size_t chat_text_copy(char *dst, size_t cap, const char *p, size_t n)
{
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < n;) {
        const unsigned char *u = (const unsigned char *)p + i;
        size_t l = utf8_seq(u, n - i);
        if (l == 0 || (l == 1 && (u[0] < 0x20 || u[0] == 0x7F))) {
            if (o + 1 >= cap)
                break;
            dst[o++] = l == 1 && (u[0] == '\n' || u[0] == '\t' || u[0] == '\r') ? ' ' : '?';
            i++;
            continue;
        }
        if (o + l >= cap)
            break;
        memcpy(dst + o, u, l);
        o += l;
        i += l;
    }
    dst[o] = '\0';
    return o;
}

int chat_json_str(buf *out, const char *p, size_t n)
{
    if (buf_append(out, "\"", 1) || buf_append_json_escaped(out, p ? p : "", p ? n : 0) ||
        buf_append(out, "\"", 1))
        return -E2BIG;
    return 0;
}

static int dump_cb(const char *p, size_t n, void *ud) { return buf_append(ud, p, n) ? -1 : 0; }

int chat_json_dump(buf *out, const json_t *v)
{
    if (!v)
        return -EINVAL;
    return json_dump_callback(v, dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY) ? -E2BIG : 0;
}

int chat_gen_id(buf *out, const char *prefix)
{
    char hex[33];
    crypto_request_id(hex);
    hex[24] = '\0';
    if (buf_append_str(out, prefix) || buf_append(out, hex, 24))
        return -E2BIG;
    return 0;
}

static const char SIG_MARK[] = "_tgsig_";

int chat_tool_id_encode(buf *out, const char *prefix, slice id, slice sig)
{
    int rc = id.len ? buf_append_slice(out, id) : chat_gen_id(out, prefix);
    if (rc || !sig.len)
        return rc ? -E2BIG : 0;
    if (buf_append_str(out, SIG_MARK))
        return -E2BIG;
    for (size_t i = 0; i < sig.len; i++) {
        char ch = sig.p[i];
        if (ch == '=')
            continue;
        if (ch == '+')
            ch = '-';
        else if (ch == '/')
            ch = '_';
        if (buf_append(out, &ch, 1))
            return -E2BIG;
    }
    return 0;
}

int chat_tool_id_decode(slice in, slice *id, buf *sig)
{
    const size_t ml = sizeof SIG_MARK - 1;
    *id = in;
    const char *m = NULL;
    for (size_t i = 0; i + ml <= in.len; i++) {
        if (memcmp(in.p + i, SIG_MARK, ml) == 0) {
            m = in.p + i;
            break;
        }
    }
    if (!m)
        return 0;
    id->len = (size_t)(m - in.p);
    const char *s = m + ml;
    size_t n = in.len - id->len - ml;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
        if (buf_append(sig, &ch, 1))
            return -E2BIG;
    }
    while (n % 4) {
        if (buf_append(sig, "=", 1))
            return -E2BIG;
        n++;
    }
    return 0;
}

const char *chat_finish_openai(chat_finish f)
{
    switch (f) {
    case CHAT_FINISH_LENGTH: return "length";
    case CHAT_FINISH_TOOL_CALLS: return "tool_calls";
    case CHAT_FINISH_CONTENT_FILTER: return "content_filter";
    default: return "stop";
    }
}
