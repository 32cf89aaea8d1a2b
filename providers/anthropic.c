/* anthropic.c - the Anthropic Messages wire format (see chat.h).
 *
 * Maps POST /v1/messages requests, Message responses, their SSE streams
 * and error bodies to the normalized chat model and back. Parsing uses
 * jansson (duplicates rejected, NUL allowed in strings: every decoded
 * string is handled with its length); whole bodies are built as jansson
 * trees, stream events are written straight into the output buffer.
 *
 * Request decode (a caller speaking Anthropic):
 *   mapped:    model, messages, system, max_tokens (required), stop_sequences,
 *              temperature, top_p, top_k, stream, tools, tool_choice,
 *              metadata.user_id, thinking (enabled: budget_tokens; disabled)
 *   ignored:   service_tier, top-level cache_control (automatic caching),
 *              metadata's other members, cache_control's ttl, text block
 *              citations, members of tools other than name, description,
 *              input_schema, cache_control, strict, type (they do not
 *              change the answer or have no place in the model)
 *   unmapped:  mcp_servers, container, context_management, any other
 *              top-level member, server tools (tools[i].type other than
 *              "custom"), block types other than text, image, tool_use,
 *              tool_result and thinking (named "messages[i].content[j]
 *              (TYPE)"), images by file id, images inside tool results,
 *              thinking types other than enabled and disabled.
 *
 * Answer decode: see stream_dec_feed() below; input usage is
 * input_tokens + cache_creation_input_tokens + cache_read_input_tokens.
 *
 * Upstream request encode: refuses r->unmapped, n > 1, frequency_penalty,
 * presence_penalty, seed and a response_format other than text; drops the
 * OpenAI image detail, message names and tool strict flags. */
#include "providers/chat.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/jscan.h"

/* max_tokens sent upstream when the caller gave none (Anthropic requires one). */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 4096
#define ANTHROPIC_VERSION "2023-06-01"
#define ANTH_JFLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)
#define ANTH_MAX_TOOLS 1024               /* tool_use blocks in one answer */
#define ANTH_DUMP_MAX ((size_t)256 << 20) /* cap on a re-serialized JSON value */
#define ANTH_SIG_MAX ((size_t)16 << 20)   /* cap on a signature taken out of an id */
#define ANTH_STOPSEQ_MAX 256              /* stop_sequence kept by the encoder */

/* Fills err for a 400 naming param; the expression is -EINVAL. */
#define ANTH_FAIL(err, param, ...) (chat_error_invalid((err), (param), __VA_ARGS__), -EINVAL)

/* ------------------------------------------------------------ small helpers */

/* Member k of o, NULL when absent or JSON null. */
static json_t *anth_get(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

/* The bytes of a JSON string (empty slice for anything else). */
static slice anth_sl(const json_t *s)
{
    if (!json_is_string(s))
        return slice_make("", 0);
    return slice_make(json_string_value(s), json_string_length(s));
}

/* s is a JSON string equal to lit. */
static bool anth_str_is(const json_t *s, const char *lit)
{
    return json_is_string(s) && slice_eq(anth_sl(s), lit);
}

/* s starts with lit. */
static bool anth_slice_prefix(slice s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len >= n && memcmp(s.p, lit, n) == 0;
}

/* a + b for non-negative counts, saturating instead of overflowing. */
static int64_t anth_add(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}



/* Appends the compact JSON text of v to a new arena string. */
static int anth_dump_str(chat_request *r, const json_t *v, chat_str *out)
{
    buf b;
    buf_init(&b, ANTH_DUMP_MAX);
    int rc = chat_json_dump(&b, v);
    if (!rc)
        rc = chat_strdup(r, b.data ? b.data : "", b.len, out);
    buf_free(&b);
    return rc;
}

/* A zeroed event of a type, usage unset. */
static chat_event anth_ev(chat_ev_type type)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = type;
    chat_usage_unset(&ev.usage);
    return ev;
}

/* ------------------------------------------------------------ usage, finish, error types */

/* Anthropic's usage numbers as sent: input_tokens excludes the cache. */
typedef struct anth_usage {
    int64_t in;  /* input_tokens, -1 unknown */
    int64_t cw;  /* cache_creation_input_tokens */
    int64_t cr;  /* cache_read_input_tokens */
    int64_t out; /* output_tokens */
} anth_usage;

/* Every number unknown. */
static void anth_usage_unset(anth_usage *u)
{
    u->in = u->cw = u->cr = u->out = -1;
}

/* o[k] into *dst when it is a count (a non-negative integer). */
static void anth_usage_num(const json_t *o, const char *k, int64_t *dst)
{
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v) && json_integer_value(v) >= 0)
        *dst = (int64_t)json_integer_value(v);
}

/* Merges the numbers present in a usage object over u. */
static void anth_usage_read(anth_usage *u, const json_t *o)
{
    if (!json_is_object(o))
        return;
    anth_usage_num(o, "input_tokens", &u->in);
    anth_usage_num(o, "cache_creation_input_tokens", &u->cw);
    anth_usage_num(o, "cache_read_input_tokens", &u->cr);
    anth_usage_num(o, "output_tokens", &u->out);
}

/* The normalized usage: input counts the cache reads and writes too. */
static chat_usage anth_usage_norm(const anth_usage *u)
{
    chat_usage c;
    chat_usage_unset(&c);
    if (u->in >= 0 || u->cw >= 0 || u->cr >= 0) {
        c.input =
            anth_add(anth_add(u->in > 0 ? u->in : 0, u->cw > 0 ? u->cw : 0), u->cr > 0 ? u->cr : 0);
    }
    c.cache_read = u->cr;
    c.cache_write = u->cw;
    c.output = u->out;
    return c;
}

/* input_tokens in Anthropic terms (cache excluded) from a normalized usage. */
static int64_t anth_input_tokens(const chat_usage *u)
{
    if (u->input < 0)
        return 0;
    int64_t n = u->input;
    if (u->cache_read > 0)
        n -= u->cache_read < n ? u->cache_read : n;
    if (u->cache_write > 0)
        n -= u->cache_write < n ? u->cache_write : n;
    return n;
}

/* stop_reason -> finish (model_context_window_exceeded counts as LENGTH). */
static chat_finish anth_finish_of(slice s)
{
    if (slice_eq(s, "end_turn"))
        return CHAT_FINISH_STOP;
    if (slice_eq(s, "stop_sequence"))
        return CHAT_FINISH_STOP_SEQUENCE;
    if (slice_eq(s, "max_tokens") || slice_eq(s, "model_context_window_exceeded"))
        return CHAT_FINISH_LENGTH;
    if (slice_eq(s, "tool_use"))
        return CHAT_FINISH_TOOL_CALLS;
    if (slice_eq(s, "refusal"))
        return CHAT_FINISH_CONTENT_FILTER;
    if (slice_eq(s, "pause_turn"))
        return CHAT_FINISH_PAUSE;
    return CHAT_FINISH_OTHER;
}

/* stop_reason for a finish; tool_use whenever tool calls were sent (Gemini
 * says STOP for a functionCall). */
static const char *anth_stop_reason(chat_finish f, bool tools)
{
    if (tools)
        return "tool_use";
    switch (f) {
    case CHAT_FINISH_STOP_SEQUENCE:
        return "stop_sequence";
    case CHAT_FINISH_LENGTH:
        return "max_tokens";
    case CHAT_FINISH_TOOL_CALLS:
        return "tool_use";
    case CHAT_FINISH_CONTENT_FILTER:
        return "refusal";
    case CHAT_FINISH_PAUSE:
        return "pause_turn";
    default:
        return "end_turn";
    }
}

/* Error kinds and their Anthropic type and HTTP status (README §6). */
static const struct {
    chat_err_kind kind;
    const char *type;
    int status;
} anth_err_types[] = {
    {CHAT_ERR_INVALID_REQUEST, "invalid_request_error", 400},
    {CHAT_ERR_AUTH, "authentication_error", 401},
    {CHAT_ERR_BILLING, "billing_error", 402},
    {CHAT_ERR_PERMISSION, "permission_error", 403},
    {CHAT_ERR_NOT_FOUND, "not_found_error", 404},
    {CHAT_ERR_TOO_LARGE, "request_too_large", 413},
    {CHAT_ERR_RATE_LIMIT, "rate_limit_error", 429},
    {CHAT_ERR_SERVER, "api_error", 500},
    {CHAT_ERR_OVERLOADED, "overloaded_error", 529},
    {CHAT_ERR_TIMEOUT, "timeout_error", 504},
};
#define ANTH_NERR_TYPES (sizeof anth_err_types / sizeof anth_err_types[0])

/* Index in anth_err_types of a kind (SERVER for an unknown one). */
static size_t anth_err_of_kind(chat_err_kind k)
{
    for (size_t i = 0; i < ANTH_NERR_TYPES; i++)
        if (anth_err_types[i].kind == k)
            return i;
    return 7; /* api_error */
}

/* Index in anth_err_types of a type name, or -1. */
static int anth_err_of_type(slice type)
{
    for (size_t i = 0; i < ANTH_NERR_TYPES; i++)
        if (slice_eq(type, anth_err_types[i].type))
            return (int)i;
    return -1;
}

/* Fills e from a parsed body; false when it has no error shape
 * ({"error":{"type","message"}} or {"error":"message"}). */
static bool anth_err_from_json(const json_t *root, int status, chat_error *e)
{
    json_t *eo = json_object_get(root, "error");
    slice msg, type = slice_make("", 0);
    if (json_is_object(eo)) {
        json_t *m = json_object_get(eo, "message");
        if (!json_is_string(m))
            return false;
        msg = anth_sl(m);
        type = anth_sl(json_object_get(eo, "type"));
    } else if (json_is_string(eo)) {
        msg = anth_sl(eo);
    } else {
        return false;
    }
    int t = anth_err_of_type(type);
    e->status = status;
    e->kind = t >= 0 ? anth_err_types[t].kind : chat_err_kind_of_status(status);
    chat_text_copy(e->type, sizeof e->type, type.p, type.len);
    chat_text_copy(e->message, sizeof e->message, msg.p, msg.len);
    return true;
}

/* ------------------------------------------------------------ request decode */

typedef struct anth_dec {
    chat_request *r;
    chat_error *err;
    char path[64]; /* scratch for member names */
} anth_dec;

static const char *anth_path(anth_dec *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Formats a member name into d->path. */
static const char *anth_path(anth_dec *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->path, sizeof d->path, fmt, ap);
    va_end(ap);
    return d->path;
}

/* Copies a required string member; 400 naming it when absent or not a string. */
static int anth_req_str(anth_dec *d, const json_t *o, const char *k, const char *param,
                        chat_str *out)
{
    json_t *v = anth_get(o, k);
    if (!json_is_string(v))
        return ANTH_FAIL(d->err, param, "%s: %s", param,
                         v ? "Input should be a valid string" : "Field required");
    return chat_strdup(d->r, json_string_value(v), json_string_length(v), out);
}

/* Copies an optional string member (absent or null leaves out alone). */
static int anth_opt_str(anth_dec *d, const json_t *o, const char *k, const char *param,
                        chat_str *out)
{
    json_t *v = anth_get(o, k);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return ANTH_FAIL(d->err, param, "%s: Input should be a valid string", param);
    return chat_strdup(d->r, json_string_value(v), json_string_length(v), out);
}

/* A cache_control member: true when present (an object). */
static int anth_cache(anth_dec *d, const json_t *o, const char *where, bool *cache)
{
    json_t *v = anth_get(o, "cache_control");
    if (!v)
        return 0;
    if (!json_is_object(v))
        return ANTH_FAIL(d->err, anth_path(d, "%s.cache_control", where),
                         "%s.cache_control: Input should be a valid dictionary", where);
    *cache = true;
    return 0;
}

/* A call id as sent (maybe carrying a signature, see chat_tool_id_encode). */
static int anth_dec_id(anth_dec *d, slice in, chat_str *id, chat_str *sig)
{
    buf sb;
    slice bare;
    buf_init(&sb, ANTH_SIG_MAX);
    int rc = chat_tool_id_decode(in, &bare, &sb);
    if (!rc)
        rc = chat_strdup(d->r, bare.p, bare.len, id);
    if (!rc && sig && sb.len)
        rc = chat_strdup(d->r, sb.data, sb.len, sig);
    buf_free(&sb);
    return rc;
}

/* The name of the tool call with this id among msgs[0..upto), or absent. */
static chat_str anth_call_name(const chat_request *r, size_t upto, chat_str id)
{
    for (size_t i = upto; i-- > 0;) {
        const chat_msg *m = &r->msgs[i];
        if (m->role != CHAT_ROLE_ASSISTANT)
            continue;
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            if (p->type == CHAT_PART_TOOL_CALL && p->id.len == id.len &&
                (id.len == 0 || memcmp(p->id.p, id.p, id.len) == 0))
                return p->name;
        }
    }
    return (chat_str){NULL, 0};
}

/* A tool_result block of messages[i].content[j] into the TOOL message ti. */
static int anth_dec_tool_result(anth_dec *d, size_t ti, size_t i, size_t j, const json_t *blk)
{
    char where[64];
    snprintf(where, sizeof where, "messages[%zu].content[%zu]", i, j);
    json_t *idv = anth_get(blk, "tool_use_id");
    if (!json_is_string(idv))
        return ANTH_FAIL(d->err, anth_path(d, "%s.tool_use_id", where),
                         "%s.tool_use_id: Field required", where);
    chat_part *p = chat_msg_add_part(d->r, &d->r->msgs[ti], CHAT_PART_TOOL_RESULT);
    if (!p)
        return -ENOMEM;
    int rc = anth_dec_id(d, anth_sl(idv), &p->id, NULL);
    if (rc)
        return rc;
    p->name = anth_call_name(d->r, ti, p->id);
    json_t *ie = anth_get(blk, "is_error");
    if (ie && !json_is_boolean(ie))
        return ANTH_FAIL(d->err, anth_path(d, "%s.is_error", where),
                         "%s.is_error: Input should be a valid boolean", where);
    p->is_error = json_is_true(ie);
    if ((rc = anth_cache(d, blk, where, &p->cache)))
        return rc;
    json_t *c = anth_get(blk, "content");
    if (!c)
        return chat_strdup(d->r, "", 0, &p->text);
    if (json_is_string(c))
        return chat_strdup(d->r, json_string_value(c), json_string_length(c), &p->text);
    if (!json_is_array(c))
        return ANTH_FAIL(d->err, anth_path(d, "%s.content", where),
                         "%s.content: Input should be a valid string or list", where);
    /* Text blocks joined with "\n"; anything else cannot be carried. */
    buf t;
    buf_init(&t, ANTH_DUMP_MAX);
    size_t k;
    json_t *b;
    bool first = true;
    rc = 0;
    json_array_foreach (c, k, b) {
        json_t *type = json_object_get(b, "type");
        if (!json_is_object(b) || !json_is_string(type)) {
            rc = ANTH_FAIL(d->err, anth_path(d, "%s.content[%zu]", where, k),
                           "%s.content[%zu]: Input should be a content block", where, k);
            break;
        }
        if (!anth_str_is(type, "text")) {
            chat_set_unmapped(d->r, anth_path(d, "%s.content", where));
            continue;
        }
        json_t *tx = json_object_get(b, "text");
        if (!json_is_string(tx)) {
            rc = ANTH_FAIL(d->err, anth_path(d, "%s.content[%zu].text", where, k),
                           "%s.content[%zu].text: Field required", where, k);
            break;
        }
        if ((!first && buf_append(&t, "\n", 1)) || buf_append_slice(&t, anth_sl(tx))) {
            rc = -E2BIG;
            break;
        }
        first = false;
    }
    if (!rc)
        rc = chat_strdup(d->r, t.data ? t.data : "", t.len, &p->text);
    buf_free(&t);
    return rc;
}

/* An image block's source into part p (or unmapped for a file source). */
static int anth_dec_image(anth_dec *d, size_t mi, const char *where, const json_t *blk)
{
    json_t *src = anth_get(blk, "source");
    if (!json_is_object(src))
        return ANTH_FAIL(d->err, anth_path(d, "%s.source", where), "%s.source: Field required",
                         where);
    json_t *st = json_object_get(src, "type");
    int rc;
    chat_part *p;
    if (anth_str_is(st, "base64")) {
        if (!(p = chat_msg_add_part(d->r, &d->r->msgs[mi], CHAT_PART_IMAGE)))
            return -ENOMEM;
        if ((rc = anth_req_str(d, src, "media_type", anth_path(d, "%s.source.media_type", where),
                               &p->media_type)) ||
            (rc = anth_req_str(d, src, "data", anth_path(d, "%s.source.data", where), &p->data)))
            return rc;
    } else if (anth_str_is(st, "url")) {
        if (!(p = chat_msg_add_part(d->r, &d->r->msgs[mi], CHAT_PART_IMAGE)))
            return -ENOMEM;
        if ((rc = anth_req_str(d, src, "url", anth_path(d, "%s.source.url", where), &p->url)))
            return rc;
    } else if (json_is_string(st)) {
        chat_set_unmapped(d->r, anth_path(d, "%s.source", where));
        return 0;
    } else {
        return ANTH_FAIL(d->err, anth_path(d, "%s.source.type", where),
                         "%s.source.type: Field required", where);
    }
    return anth_cache(d, blk, where, &p->cache);
}

/* One block (not a tool_result) of messages[i].content[j] into message mi. */
static int anth_dec_block(anth_dec *d, size_t mi, size_t i, size_t j, const json_t *blk,
                          bool assistant)
{
    char where[64];
    snprintf(where, sizeof where, "messages[%zu].content[%zu]", i, j);
    json_t *type = json_object_get(blk, "type");
    chat_msg *m = &d->r->msgs[mi];
    chat_part *p;
    int rc;
    if (anth_str_is(type, "text")) {
        if (!(p = chat_msg_add_part(d->r, m, CHAT_PART_TEXT)))
            return -ENOMEM;
        if ((rc = anth_req_str(d, blk, "text", anth_path(d, "%s.text", where), &p->text)))
            return rc;
        return anth_cache(d, blk, where, &p->cache);
    }
    if (anth_str_is(type, "image"))
        return anth_dec_image(d, mi, where, blk);
    if (anth_str_is(type, "tool_use")) {
        if (!assistant)
            return ANTH_FAIL(d->err, anth_path(d, "%s.type", where),
                             "%s: tool_use blocks are only allowed in assistant messages", where);
        json_t *idv = anth_get(blk, "id");
        json_t *input = anth_get(blk, "input");
        if (!json_is_string(idv))
            return ANTH_FAIL(d->err, anth_path(d, "%s.id", where), "%s.id: Field required", where);
        if (input && !json_is_object(input))
            return ANTH_FAIL(d->err, anth_path(d, "%s.input", where),
                             "%s.input: Input should be a valid dictionary", where);
        if (!(p = chat_msg_add_part(d->r, m, CHAT_PART_TOOL_CALL)))
            return -ENOMEM;
        if ((rc = anth_dec_id(d, anth_sl(idv), &p->id, &p->signature)) ||
            (rc = anth_req_str(d, blk, "name", anth_path(d, "%s.name", where), &p->name)))
            return rc;
        if (input)
            rc = anth_dump_str(d->r, input, &p->args);
        else
            rc = chat_strdup(d->r, "{}", 2, &p->args);
        if (rc)
            return rc;
        return anth_cache(d, blk, where, &p->cache);
    }
    if (anth_str_is(type, "thinking")) {
        if (!assistant)
            return ANTH_FAIL(d->err, anth_path(d, "%s.type", where),
                             "%s: thinking blocks are only allowed in assistant messages", where);
        if (!(p = chat_msg_add_part(d->r, m, CHAT_PART_THINKING)))
            return -ENOMEM;
        if ((rc = anth_req_str(d, blk, "thinking", anth_path(d, "%s.thinking", where), &p->text)))
            return rc;
        return anth_opt_str(d, blk, "signature", anth_path(d, "%s.signature", where),
                            &p->signature);
    }
    if (anth_str_is(type, "tool_result"))
        return ANTH_FAIL(d->err, anth_path(d, "%s.type", where),
                         "%s: tool_result blocks are only allowed in user messages", where);
    /* redacted_thinking, document, search_result, server tool blocks... */
    slice ts = anth_sl(type);
    chat_set_unmapped(d->r,
                      anth_path(d, "%s (%.*s)", where, (int)(ts.len > 30 ? 30 : ts.len), ts.p));
    return 0;
}

/* messages[i]. */
static int anth_dec_message(anth_dec *d, size_t i, const json_t *jm)
{
    chat_request *r = d->r;
    if (!json_is_object(jm))
        return ANTH_FAIL(d->err, anth_path(d, "messages[%zu]", i),
                         "messages[%zu]: Input should be a valid dictionary", i);
    json_t *role = json_object_get(jm, "role");
    bool assistant = anth_str_is(role, "assistant");
    if (!assistant && !anth_str_is(role, "user"))
        return ANTH_FAIL(d->err, anth_path(d, "messages[%zu].role", i),
                         "messages[%zu].role: Input should be 'user' or 'assistant'", i);
    json_t *c = anth_get(jm, "content");
    chat_role mrole = assistant ? CHAT_ROLE_ASSISTANT : CHAT_ROLE_USER;
    if (json_is_string(c)) {
        chat_msg *m = chat_add_msg(r, mrole);
        chat_part *p = m ? chat_msg_add_part(r, m, CHAT_PART_TEXT) : NULL;
        if (!p)
            return -ENOMEM;
        return chat_strdup(r, json_string_value(c), json_string_length(c), &p->text);
    }
    if (!json_is_array(c))
        return ANTH_FAIL(d->err, anth_path(d, "messages[%zu].content", i),
                         "messages[%zu].content: Input should be a valid string or list", i);
    size_t j, nresults = 0, nother = 0;
    json_t *b;
    json_array_foreach (c, j, b) {
        if (!json_is_object(b) || !json_is_string(json_object_get(b, "type")))
            return ANTH_FAIL(d->err, anth_path(d, "messages[%zu].content[%zu]", i, j),
                             "messages[%zu].content[%zu]: Input should be a content block "
                             "with a type",
                             i, j);
        if (!assistant && anth_str_is(json_object_get(b, "type"), "tool_result"))
            nresults++;
        else
            nother++;
    }
    int rc;
    if (nresults) {
        /* Tool results first, in a TOOL message of their own. */
        size_t ti = r->nmsgs;
        if (!chat_add_msg(r, CHAT_ROLE_TOOL))
            return -ENOMEM;
        json_array_foreach (c, j, b) {
            if (anth_str_is(json_object_get(b, "type"), "tool_result") &&
                (rc = anth_dec_tool_result(d, ti, i, j, b)))
                return rc;
        }
    }
    if (nother || !nresults) {
        size_t mi = r->nmsgs;
        if (!chat_add_msg(r, mrole))
            return -ENOMEM;
        json_array_foreach (c, j, b) {
            if (!assistant && anth_str_is(json_object_get(b, "type"), "tool_result"))
                continue;
            if ((rc = anth_dec_block(d, mi, i, j, b, assistant)))
                return rc;
        }
    }
    return 0;
}

/* Top-level system: a string or text blocks, as one leading SYSTEM message. */
static int anth_dec_system(anth_dec *d, const json_t *sys)
{
    chat_request *r = d->r;
    if (!sys)
        return 0;
    if (json_is_string(sys)) {
        if (json_string_length(sys) == 0)
            return 0;
        chat_msg *m = chat_add_msg(r, CHAT_ROLE_SYSTEM);
        chat_part *p = m ? chat_msg_add_part(r, m, CHAT_PART_TEXT) : NULL;
        if (!p)
            return -ENOMEM;
        return chat_strdup(r, json_string_value(sys), json_string_length(sys), &p->text);
    }
    if (!json_is_array(sys))
        return ANTH_FAIL(d->err, "system", "system: Input should be a valid string or list");
    if (json_array_size(sys) == 0)
        return 0;
    size_t mi = r->nmsgs, k;
    json_t *b;
    if (!chat_add_msg(r, CHAT_ROLE_SYSTEM))
        return -ENOMEM;
    json_array_foreach (sys, k, b) {
        char where[32];
        snprintf(where, sizeof where, "system[%zu]", k);
        if (!json_is_object(b) || !anth_str_is(json_object_get(b, "type"), "text"))
            return ANTH_FAIL(d->err, anth_path(d, "%s.type", where),
                             "%s.type: only text blocks are allowed in system", where);
        chat_part *p = chat_msg_add_part(r, &r->msgs[mi], CHAT_PART_TEXT);
        if (!p)
            return -ENOMEM;
        int rc = anth_req_str(d, b, "text", anth_path(d, "%s.text", where), &p->text);
        if (!rc)
            rc = anth_cache(d, b, where, &p->cache);
        if (rc)
            return rc;
        if (p->cache)
            r->cache_system = true;
    }
    return 0;
}

/* tools[]: custom tools; server tools are unmapped. */
static int anth_dec_tools(anth_dec *d, const json_t *tools)
{
    if (!tools)
        return 0;
    if (!json_is_array(tools))
        return ANTH_FAIL(d->err, "tools", "tools: Input should be a valid list");
    size_t i;
    json_t *t;
    json_array_foreach (tools, i, t) {
        char where[32];
        snprintf(where, sizeof where, "tools[%zu]", i);
        if (!json_is_object(t))
            return ANTH_FAIL(d->err, where, "%s: Input should be a valid dictionary", where);
        json_t *type = anth_get(t, "type");
        if (type && !anth_str_is(type, "custom")) {
            chat_set_unmapped(d->r, anth_path(d, "%s.type", where));
            continue;
        }
        chat_tool *ct = chat_add_tool(d->r);
        if (!ct)
            return -ENOMEM;
        int rc;
        if ((rc = anth_req_str(d, t, "name", anth_path(d, "%s.name", where), &ct->name)) ||
            (rc = anth_opt_str(d, t, "description", anth_path(d, "%s.description", where),
                               &ct->description)) ||
            (rc = anth_cache(d, t, where, &ct->cache)))
            return rc;
        json_t *schema = anth_get(t, "input_schema");
        if (schema && !json_is_object(schema))
            return ANTH_FAIL(d->err, anth_path(d, "%s.input_schema", where),
                             "%s.input_schema: Input should be a valid dictionary", where);
        ct->parameters = json_incref(schema);
        json_t *strict = anth_get(t, "strict");
        if (strict && !json_is_boolean(strict))
            return ANTH_FAIL(d->err, anth_path(d, "%s.strict", where),
                             "%s.strict: Input should be a valid boolean", where);
        ct->strict = json_is_true(strict);
    }
    return 0;
}

/* tool_choice {type auto|any|tool|none, name, disable_parallel_tool_use}. */
static int anth_dec_tool_choice(anth_dec *d, const json_t *tc)
{
    chat_request *r = d->r;
    if (!tc)
        return 0;
    if (!json_is_object(tc))
        return ANTH_FAIL(d->err, "tool_choice", "tool_choice: Input should be a valid dictionary");
    json_t *type = json_object_get(tc, "type");
    if (anth_str_is(type, "auto")) {
        r->tool_choice = CHAT_TOOL_CHOICE_AUTO;
    } else if (anth_str_is(type, "any")) {
        r->tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
    } else if (anth_str_is(type, "none")) {
        r->tool_choice = CHAT_TOOL_CHOICE_NONE;
    } else if (anth_str_is(type, "tool")) {
        r->tool_choice = CHAT_TOOL_CHOICE_NAMED;
        int rc = anth_req_str(d, tc, "name", "tool_choice.name", &r->tool_choice_name);
        if (rc)
            return rc;
    } else {
        return ANTH_FAIL(d->err, "tool_choice.type",
                         "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
    }
    json_t *dp = anth_get(tc, "disable_parallel_tool_use");
    if (dp && !json_is_boolean(dp))
        return ANTH_FAIL(d->err, "tool_choice.disable_parallel_tool_use",
                         "tool_choice.disable_parallel_tool_use: Input should be a valid boolean");
    if (json_is_true(dp))
        r->parallel_tool_calls = 0;
    return 0;
}

/* An optional integer >= min into *out. */
static int anth_dec_int(anth_dec *d, const json_t *o, const char *k, int64_t min, int64_t *out)
{
    json_t *v = anth_get(o, k);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return ANTH_FAIL(d->err, k, "%s: Input should be a valid integer", k);
    if (json_integer_value(v) < min)
        return ANTH_FAIL(d->err, k, "%s: Input should be greater than or equal to %" PRId64, k,
                         min);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

/* An optional number into *out. */
static int anth_dec_num(anth_dec *d, const json_t *o, const char *k, double *out)
{
    json_t *v = anth_get(o, k);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return ANTH_FAIL(d->err, k, "%s: Input should be a valid number", k);
    *out = json_number_value(v);
    return 0;
}

/* max_tokens (required), sampling knobs, stream, stop_sequences,
 * metadata.user_id, thinking. */
static int anth_dec_misc(anth_dec *d, const json_t *root)
{
    chat_request *r = d->r;
    int rc;
    json_t *v;
    if (!anth_get(root, "max_tokens"))
        return ANTH_FAIL(d->err, "max_tokens", "max_tokens: Field required");
    if ((rc = anth_dec_int(d, root, "max_tokens", 1, &r->max_tokens)) ||
        (rc = anth_dec_int(d, root, "top_k", 0, &r->top_k)) ||
        (rc = anth_dec_num(d, root, "temperature", &r->temperature)) ||
        (rc = anth_dec_num(d, root, "top_p", &r->top_p)))
        return rc;
    if ((v = anth_get(root, "stream"))) {
        if (!json_is_boolean(v))
            return ANTH_FAIL(d->err, "stream", "stream: Input should be a valid boolean");
        r->stream = json_is_true(v);
    }
    if ((v = anth_get(root, "stop_sequences"))) {
        size_t k;
        json_t *s;
        if (!json_is_array(v))
            return ANTH_FAIL(d->err, "stop_sequences",
                             "stop_sequences: Input should be a valid list");
        json_array_foreach (v, k, s) {
            if (!json_is_string(s))
                return ANTH_FAIL(d->err, anth_path(d, "stop_sequences[%zu]", k),
                                 "stop_sequences[%zu]: Input should be a valid string", k);
            if ((rc = chat_add_stop(r, json_string_value(s), json_string_length(s))))
                return rc;
        }
    }
    if ((v = anth_get(root, "metadata"))) {
        if (!json_is_object(v))
            return ANTH_FAIL(d->err, "metadata", "metadata: Input should be a valid dictionary");
        if ((rc = anth_opt_str(d, v, "user_id", "metadata.user_id", &r->user)))
            return rc;
    }
    if ((v = anth_get(root, "thinking"))) {
        json_t *type = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(type))
            return ANTH_FAIL(d->err, "thinking.type", "thinking.type: Field required");
        if (anth_str_is(type, "enabled")) {
            if (!anth_get(v, "budget_tokens"))
                return ANTH_FAIL(d->err, "thinking.budget_tokens",
                                 "thinking.budget_tokens: Field required");
            if ((rc = anth_dec_int(d, v, "budget_tokens", 1, &r->thinking_budget))) {
                snprintf(d->err->param, sizeof d->err->param, "thinking.budget_tokens");
                return rc;
            }
        } else if (!anth_str_is(type, "disabled")) {
            chat_set_unmapped(r, "thinking.type");
        }
    }
    return 0;
}

/* Top-level members read above or deliberately ignored. */
static const char *const anth_known[] = {
    "model",    "messages",     "system",        "max_tokens", "stop_sequences", "temperature",
    "top_p",    "top_k",        "stream",        "tools",      "tool_choice",    "metadata",
    "thinking", "service_tier", "cache_control", /* ignored: no effect on the answer */
};

/* A request body (see the top of the file for what maps where). */
static int anth_req_decode(const char *body, size_t n, chat_request *r, chat_error *err)
{
    anth_dec d = {.r = r, .err = err};
    json_error_t jerr;
    int rc;
    json_t *root = json_loadb(body, n, ANTH_JFLAGS, &jerr);
    if (!root)
        return ANTH_FAIL(err, NULL, "The request body is not valid JSON: %s", jerr.text);
    if (!json_is_object(root)) {
        rc = ANTH_FAIL(err, NULL, "The request body must be a JSON object");
        goto out;
    }
    if ((rc = anth_req_str(&d, root, "model", "model", &r->model)))
        goto out;
    json_t *msgs = anth_get(root, "messages");
    if (!json_is_array(msgs)) {
        rc = ANTH_FAIL(err, "messages", "messages: %s",
                       msgs ? "Input should be a valid list" : "Field required");
        goto out;
    }
    if ((rc = anth_dec_system(&d, anth_get(root, "system"))))
        goto out;
    size_t i;
    json_t *m;
    json_array_foreach (msgs, i, m) {
        if ((rc = anth_dec_message(&d, i, m)))
            goto out;
    }
    if ((rc = anth_dec_misc(&d, root)) || (rc = anth_dec_tools(&d, anth_get(root, "tools"))) ||
        (rc = anth_dec_tool_choice(&d, anth_get(root, "tool_choice"))))
        goto out;
    /* mcp_servers, container, context_management and anything unknown. */
    const char *key;
    size_t klen;
    json_t *val;
    json_object_keylen_foreach (root, key, klen, val) {
        bool known = false;
        for (size_t k = 0; k < sizeof anth_known / sizeof anth_known[0]; k++)
            known = known || slice_eq(slice_make(key, klen), anth_known[k]);
        if (!known) {
            char name[sizeof r->unmapped];
            chat_text_copy(name, sizeof name, key, klen);
            chat_set_unmapped(r, name);
        }
    }
out:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------ JSON building */

/* A JSON tree under construction; the first failure sticks in rc. */
typedef struct anth_jb {
    int rc;
} anth_jb;

/* Records rc unless a failure is recorded already. */
static void anth_jfail(anth_jb *b, int rc)
{
    if (!b->rc)
        b->rc = rc;
}

/* A new object (the failure recorded when out of memory). */
static json_t *anth_jobj(anth_jb *b)
{
    json_t *o = json_object();
    if (!o)
        anth_jfail(b, -ENOMEM);
    return o;
}

/* A new array (the failure recorded when out of memory). */
static json_t *anth_jarr(anth_jb *b)
{
    json_t *a = json_array();
    if (!a)
        anth_jfail(b, -ENOMEM);
    return a;
}

/* A JSON string of p[0..n); -EINVAL sticks when the bytes are not UTF-8. */
static json_t *anth_jstr(anth_jb *b, const char *p, size_t n)
{
    json_t *s = json_stringn(p ? p : "", p ? n : 0);
    if (!s)
        anth_jfail(b, p && !jscan_utf8_valid(p, n) ? -EINVAL : -ENOMEM);
    return s;
}

/* A JSON string of a request string. */
static json_t *anth_jcs(anth_jb *b, chat_str s)
{
    return anth_jstr(b, s.p, s.len);
}

/* A JSON integer. */
static json_t *anth_jint(anth_jb *b, int64_t v)
{
    json_t *i = json_integer((json_int_t)v);
    if (!i)
        anth_jfail(b, -ENOMEM);
    return i;
}

/* o[k] = v (stolen); a NULL o or v only records the failure. */
static void anth_jset(anth_jb *b, json_t *o, const char *k, json_t *v)
{
    if (!v) {
        anth_jfail(b, -ENOMEM);
        return;
    }
    if (json_object_set_new(o, k, v))
        anth_jfail(b, -ENOMEM);
}

/* a[] += v (stolen). */
static void anth_jpush(anth_jb *b, json_t *a, json_t *v)
{
    if (!v) {
        anth_jfail(b, -ENOMEM);
        return;
    }
    if (json_array_append_new(a, v))
        anth_jfail(b, -ENOMEM);
}

/* {"type":"ephemeral"} */
static json_t *anth_jephemeral(anth_jb *b)
{
    json_t *o = anth_jobj(b);
    anth_jset(b, o, "type", json_string("ephemeral"));
    return o;
}

/* A tool call id as Anthropic gets it (signature kept inside, see
 * chat.h). An empty id is generated for a call (gen) and stays empty for
 * a result, which must not invent an id no call has. */
static json_t *anth_jcall_id(anth_jb *b, chat_str id, chat_str sig, bool gen)
{
    if (!id.len && !gen)
        return anth_jstr(b, "", 0);
    buf t;
    buf_init(&t, ANTH_DUMP_MAX);
    json_t *s = NULL;
    int rc =
        chat_tool_id_encode(&t, "toolu_", slice_make(id.p, id.len), slice_make(sig.p, sig.len));
    if (rc)
        anth_jfail(b, rc);
    else
        s = anth_jstr(b, t.data, t.len);
    buf_free(&t);
    return s;
}

/* ------------------------------------------------------------ request encode */

typedef struct anth_enc {
    const chat_request *r;
    chat_error *err;
    anth_jb jb;
    char path[32]; /* scratch for "messages[i]" */
} anth_enc;

/* "messages[mi]" in e->path. */
static const char *anth_msg_path(anth_enc *e, size_t mi)
{
    snprintf(e->path, sizeof e->path, "messages[%zu]", mi);
    return e->path;
}

/* The signature of the call a tool result answers (absent when none). */
static chat_str anth_call_sig(const chat_request *r, size_t upto, chat_str id)
{
    for (size_t i = upto; i-- > 0;) {
        const chat_msg *m = &r->msgs[i];
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            if (p->type == CHAT_PART_TOOL_CALL && p->id.len == id.len &&
                (id.len == 0 || memcmp(p->id.p, id.p, id.len) == 0))
                return p->signature;
        }
    }
    return (chat_str){NULL, 0};
}

/* One part of msgs[mi] appended to the content array (maybe nothing). */
static int anth_enc_part(anth_enc *e, size_t mi, const chat_part *p, json_t *content)
{
    anth_jb *b = &e->jb;
    json_t *blk;
    switch (p->type) {
    case CHAT_PART_TEXT:
        if (p->text.len == 0) /* Anthropic rejects empty text blocks */
            return 0;
        blk = anth_jobj(b);
        anth_jset(b, blk, "type", json_string("text"));
        anth_jset(b, blk, "text", anth_jcs(b, p->text));
        break;
    case CHAT_PART_IMAGE: {
        json_t *src = anth_jobj(b);
        if (p->data.p) {
            if (!p->media_type.len) {
                json_decref(src);
                return ANTH_FAIL(e->err, anth_msg_path(e, mi),
                                 "messages[%zu]: an image needs a media type", mi);
            }
            anth_jset(b, src, "type", json_string("base64"));
            anth_jset(b, src, "media_type", anth_jcs(b, p->media_type));
            anth_jset(b, src, "data", anth_jcs(b, p->data));
        } else if (p->url.p) {
            anth_jset(b, src, "type", json_string("url"));
            anth_jset(b, src, "url", anth_jcs(b, p->url));
        } else {
            json_decref(src);
            return ANTH_FAIL(e->err, anth_msg_path(e, mi),
                             "messages[%zu]: an image needs data or a URL", mi);
        }
        blk = anth_jobj(b);
        anth_jset(b, blk, "type", json_string("image"));
        anth_jset(b, blk, "source", src);
        break;
    }
    case CHAT_PART_TOOL_CALL: {
        json_t *input;
        if (p->args.len == 0) {
            input = anth_jobj(b);
        } else {
            input = json_loadb(p->args.p, p->args.len, ANTH_JFLAGS, NULL);
            if (!json_is_object(input)) {
                json_decref(input);
                return ANTH_FAIL(e->err, anth_msg_path(e, mi),
                                 "messages[%zu]: the arguments of tool call '%.*s' are not a "
                                 "JSON object",
                                 mi, (int)(p->name.len > 64 ? 64 : p->name.len),
                                 p->name.p ? p->name.p : "");
            }
        }
        blk = anth_jobj(b);
        anth_jset(b, blk, "type", json_string("tool_use"));
        anth_jset(b, blk, "id", anth_jcall_id(b, p->id, p->signature, true));
        anth_jset(b, blk, "name", anth_jcs(b, p->name));
        anth_jset(b, blk, "input", input);
        break;
    }
    case CHAT_PART_TOOL_RESULT:
        blk = anth_jobj(b);
        anth_jset(b, blk, "type", json_string("tool_result"));
        anth_jset(b, blk, "tool_use_id",
                  anth_jcall_id(b, p->id, anth_call_sig(e->r, mi, p->id), false));
        if (p->text.len)
            anth_jset(b, blk, "content", anth_jcs(b, p->text));
        if (p->is_error)
            anth_jset(b, blk, "is_error", json_true());
        break;
    case CHAT_PART_THINKING:
        /* Past reasoning goes back only with its signature (the API
         * rejects an unsigned thinking block). */
        if (!p->signature.len)
            return 0;
        blk = anth_jobj(b);
        anth_jset(b, blk, "type", json_string("thinking"));
        anth_jset(b, blk, "thinking", anth_jcs(b, p->text));
        anth_jset(b, blk, "signature", anth_jcs(b, p->signature));
        break;
    default:
        return 0;
    }
    if (p->cache && p->type != CHAT_PART_THINKING)
        anth_jset(b, blk, "cache_control", anth_jephemeral(b));
    anth_jpush(b, content, blk);
    return 0;
}

/* The messages array: SYSTEM messages are left out (they went to
 * "system"); TOOL messages and the user message right after them become
 * one user message with the tool_result blocks first. */
static int anth_enc_messages(anth_enc *e, json_t *arr)
{
    const chat_request *r = e->r;
    anth_jb *b = &e->jb;
    size_t i = 0;
    int rc = 0;
    while (i < r->nmsgs && !rc && !b->rc) {
        const chat_msg *m = &r->msgs[i];
        if (m->role == CHAT_ROLE_SYSTEM) {
            i++;
            continue;
        }
        json_t *msg = anth_jobj(b), *content = anth_jarr(b);
        bool assistant = m->role == CHAT_ROLE_ASSISTANT;
        anth_jset(b, msg, "role", json_string(assistant ? "assistant" : "user"));
        anth_jset(b, msg, "content", content);
        if (m->role == CHAT_ROLE_TOOL) {
            while (!rc && i < r->nmsgs && r->msgs[i].role == CHAT_ROLE_TOOL) {
                for (size_t k = 0; !rc && k < r->msgs[i].nparts; k++)
                    rc = anth_enc_part(e, i, &r->msgs[i].parts[k], content);
                i++;
            }
            if (!rc && i < r->nmsgs && r->msgs[i].role == CHAT_ROLE_USER) {
                for (size_t k = 0; !rc && k < r->msgs[i].nparts; k++)
                    rc = anth_enc_part(e, i, &r->msgs[i].parts[k], content);
                i++;
            }
        } else {
            for (size_t k = 0; !rc && k < m->nparts; k++)
                rc = anth_enc_part(e, i, &m->parts[k], content);
            i++;
        }
        anth_jpush(b, arr, msg);
    }
    return rc;
}

/* "system": every SYSTEM message's text, wherever it stands, as blocks;
 * cache_control on the last one when the system prompt is cached. */
static int anth_enc_system(anth_enc *e, json_t *root)
{
    const chat_request *r = e->r;
    anth_jb *b = &e->jb;
    json_t *sys = NULL, *last = NULL;
    bool cache = r->cache_system;
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        if (m->role != CHAT_ROLE_SYSTEM)
            continue;
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            if (p->type != CHAT_PART_TEXT) {
                json_decref(sys);
                return ANTH_FAIL(e->err, anth_msg_path(e, i),
                                 "messages[%zu]: Anthropic takes only text in the system prompt",
                                 i);
            }
            cache = cache || p->cache;
            if (!p->text.len)
                continue;
            if (!sys)
                sys = anth_jarr(b);
            last = anth_jobj(b);
            anth_jset(b, last, "type", json_string("text"));
            anth_jset(b, last, "text", anth_jcs(b, p->text));
            anth_jpush(b, sys, last);
        }
    }
    if (!sys)
        return 0;
    if (cache && last)
        anth_jset(b, last, "cache_control", anth_jephemeral(b));
    anth_jset(b, root, "system", sys);
    return 0;
}

/* tools and tool_choice. */
static void anth_enc_tools(anth_enc *e, json_t *root)
{
    const chat_request *r = e->r;
    anth_jb *b = &e->jb;
    if (!r->ntools)
        return;
    json_t *arr = anth_jarr(b);
    for (size_t i = 0; i < r->ntools; i++) {
        const chat_tool *t = &r->tools[i];
        json_t *o = anth_jobj(b);
        anth_jset(b, o, "name", anth_jcs(b, t->name));
        if (t->description.p)
            anth_jset(b, o, "description", anth_jcs(b, t->description));
        if (t->parameters) {
            anth_jset(b, o, "input_schema", json_incref(t->parameters));
        } else {
            json_t *s = anth_jobj(b);
            anth_jset(b, s, "type", json_string("object"));
            anth_jset(b, o, "input_schema", s);
        }
        if (t->cache)
            anth_jset(b, o, "cache_control", anth_jephemeral(b));
        anth_jpush(b, arr, o);
    }
    anth_jset(b, root, "tools", arr);
    /* tool_choice only with tools (the API rejects it alone, and without
     * tools it changes nothing). */
    const char *type = NULL;
    switch (r->tool_choice) {
    case CHAT_TOOL_CHOICE_AUTO:
        type = "auto";
        break;
    case CHAT_TOOL_CHOICE_REQUIRED:
        type = "any";
        break;
    case CHAT_TOOL_CHOICE_NAMED:
        type = "tool";
        break;
    case CHAT_TOOL_CHOICE_NONE:
        type = "none";
        break;
    case CHAT_TOOL_CHOICE_UNSET:
        type = r->parallel_tool_calls == 0 ? "auto" : NULL;
        break;
    }
    if (!type)
        return;
    json_t *tc = anth_jobj(b);
    anth_jset(b, tc, "type", json_string(type));
    if (r->tool_choice == CHAT_TOOL_CHOICE_NAMED)
        anth_jset(b, tc, "name", anth_jcs(b, r->tool_choice_name));
    if (r->parallel_tool_calls == 0 && r->tool_choice != CHAT_TOOL_CHOICE_NONE)
        anth_jset(b, tc, "disable_parallel_tool_use", json_true());
    anth_jset(b, root, "tool_choice", tc);
}

/* Refuses what Anthropic cannot express. */
static int anth_enc_refuse(const chat_request *r, chat_error *err)
{
    if (r->unmapped[0])
        return ANTH_FAIL(err, r->unmapped, "parameter '%s' cannot be translated to Anthropic",
                         r->unmapped);
    if (r->n > 1)
        return ANTH_FAIL(err, "n",
                         "parameter 'n' cannot be translated to Anthropic "
                         "(it returns one choice)");
    if (!isnan(r->frequency_penalty))
        return ANTH_FAIL(err, "frequency_penalty",
                         "parameter 'frequency_penalty' cannot be translated to Anthropic");
    if (!isnan(r->presence_penalty))
        return ANTH_FAIL(err, "presence_penalty",
                         "parameter 'presence_penalty' cannot be translated to Anthropic");
    if (r->seed >= 0)
        return ANTH_FAIL(err, "seed", "parameter 'seed' cannot be translated to Anthropic");
    if (r->resp_format != CHAT_RESP_TEXT)
        return ANTH_FAIL(err, "response_format",
                         "parameter 'response_format' cannot be translated to Anthropic");
    return 0;
}

/* The upstream body for r (model and stream from t). */
static int anth_req_encode(const chat_request *r, const chat_target *t, buf *out, chat_error *err)
{
    anth_enc e = {.r = r, .err = err};
    anth_jb *b = &e.jb;
    int rc = anth_enc_refuse(r, err);
    if (rc)
        return rc;
    json_t *root = anth_jobj(b);
    anth_jset(b, root, "model", anth_jstr(b, t->model, t->model ? t->model_len : 0));
    /* max_tokens is required; with thinking it must exceed the budget. */
    int64_t max = r->max_tokens;
    if (max < 0) {
        max = ANTHROPIC_DEFAULT_MAX_TOKENS;
        if (r->thinking_budget >= max)
            max = anth_add(r->thinking_budget, ANTHROPIC_DEFAULT_MAX_TOKENS);
    }
    anth_jset(b, root, "max_tokens", anth_jint(b, max));
    if ((rc = anth_enc_system(&e, root)))
        goto out;
    json_t *msgs = anth_jarr(b);
    anth_jset(b, root, "messages", msgs);
    if ((rc = anth_enc_messages(&e, msgs)))
        goto out;
    if (r->nstop) {
        json_t *st = anth_jarr(b);
        for (size_t i = 0; i < r->nstop; i++)
            anth_jpush(b, st, anth_jcs(b, r->stop[i]));
        anth_jset(b, root, "stop_sequences", st);
    }
    if (isfinite(r->temperature))
        anth_jset(b, root, "temperature", json_real(r->temperature));
    if (isfinite(r->top_p))
        anth_jset(b, root, "top_p", json_real(r->top_p));
    if (r->top_k >= 0)
        anth_jset(b, root, "top_k", anth_jint(b, r->top_k));
    anth_enc_tools(&e, root);
    if (r->thinking_budget >= 0) {
        json_t *th = anth_jobj(b);
        if (r->thinking_budget == 0) { /* Gemini thinkingBudget 0: thinking off */
            anth_jset(b, th, "type", json_string("disabled"));
        } else {
            anth_jset(b, th, "type", json_string("enabled"));
            anth_jset(b, th, "budget_tokens", anth_jint(b, r->thinking_budget));
        }
        anth_jset(b, root, "thinking", th);
    }
    if (r->user.p) {
        json_t *md = anth_jobj(b);
        anth_jset(b, md, "user_id", anth_jcs(b, r->user));
        anth_jset(b, root, "metadata", md);
    }
    if (t->stream)
        anth_jset(b, root, "stream", json_true());
    if ((rc = b->rc)) {
        if (rc == -EINVAL)
            chat_error_invalid(err, NULL, "the request holds text that is not valid UTF-8");
        goto out;
    }
    rc = chat_json_dump(out, root);
out:
    json_decref(root);
    return rc;
}

/* POST path under the provider's base ("/v1"). */
static int anth_req_path(const chat_target *t, buf *out)
{
    (void)t;
    return buf_append_str(out, "/messages");
}

/* x-api-key (when given) and the API version header. */
static int anth_req_auth_headers(const char *api_key, buf *out)
{
    int rc = 0;
    if (api_key) {
        if (strpbrk(api_key, "\r\n"))
            return -EINVAL; /* would end the header line */
        if ((rc = buf_append_str(out, "x-api-key: ")) || (rc = buf_append_str(out, api_key)) ||
            (rc = buf_append_str(out, "\r\n")))
            return rc;
    }
    return buf_append_str(out, "anthropic-version: " ANTHROPIC_VERSION "\r\n");
}

/* ------------------------------------------------------------ stream state */

typedef enum anth_blk {
    ANTH_BLK_NONE = 0, /* no block open */
    ANTH_BLK_TEXT,     /* a text block */
    ANTH_BLK_THINKING, /* a thinking block */
    ANTH_BLK_TOOL,     /* a tool_use block */
} anth_blk;

/* One stream's state: a decoder (upstream speaks Anthropic) or an encoder
 * (the caller does); each uses its own half. */
struct chat_stream {
    /* decoder */
    bool started;        /* START emitted */
    bool ended;          /* message_stop seen, END emitted */
    anth_usage usage;    /* the numbers so far (message_start, then message_delta) */
    int ntools;          /* tool_use blocks seen */
    int64_t *tool_block; /* block index of each tool_use block, by tool index */
    /* encoder */
    buf model;          /* the caller's model (when START has none) */
    bool e_started;     /* message_start written */
    bool e_ended;       /* message_stop or an error written: nothing more */
    bool e_tools;       /* a tool_use block was written */
    int nblocks;        /* blocks started (the next block's index) */
    anth_blk open;      /* the open block (index nblocks - 1) */
    int open_tool;      /* tool index of the open tool_use block */
    int next_tool;      /* tools with an index below this were started */
    chat_finish finish; /* FINISH, for message_delta */
    buf stop_seq;       /* FINISH's stop sequence */
    chat_usage u;       /* START and USAGE numbers merged */
    buf text;           /* decoder: a text delta decoded by the fast path */
};

/* A fresh state for either direction; NULL when out of memory. */
static chat_stream *anth_stream_new(void)
{
    chat_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    anth_usage_unset(&s->usage);
    buf_init(&s->model, 4096);
    buf_init(&s->stop_seq, ANTH_STOPSEQ_MAX);
    buf_init(&s->text, (size_t)64 * 1024 * 1024);
    chat_usage_unset(&s->u);
    return s;
}

/* Releases a decoder or encoder (NULL is fine). */
static void anth_stream_free(chat_stream *s)
{
    if (!s)
        return;
    free(s->tool_block);
    buf_free(&s->model);
    buf_free(&s->stop_seq);
    buf_free(&s->text);
    free(s);
}

/* ------------------------------------------------------------ stream decode */

static chat_stream *anth_stream_dec_new(void)
{
    return anth_stream_new();
}

/* Emits START (with what is known) unless it was emitted. */
static int anth_dec_start(chat_stream *s, slice id, slice model, chat_emit_fn emit, void *ud)
{
    if (s->started)
        return 0;
    s->started = true;
    chat_event ev = anth_ev(CHAT_EV_START);
    ev.id = id;
    ev.model = model;
    ev.usage = anth_usage_norm(&s->usage);
    return emit(ud, &ev);
}

/* The tool index of content block `index`, or -1. */
static int anth_dec_tool_of(const chat_stream *s, const json_t *index)
{
    if (!json_is_integer(index))
        return -1;
    for (int k = s->ntools; k-- > 0;)
        if (s->tool_block[k] == (int64_t)json_integer_value(index))
            return k;
    return -1;
}

/* TEXT or THINKING with text and/or signature; nothing when both are empty. */
static int anth_dec_emit_text(chat_ev_type type, slice text, slice sig, chat_emit_fn emit, void *ud)
{
    if (!text.len && !sig.len)
        return 0;
    chat_event ev = anth_ev(type);
    ev.text = text;
    ev.signature = sig;
    return emit(ud, &ev);
}

/* A tool_use block begins (stream or whole response): TOOL_START, and
 * TOOL_ARGS when the block already has a non-empty input. */
static int anth_dec_tool_start(chat_stream *s, const json_t *cb, int64_t index, chat_emit_fn emit,
                               void *ud)
{
    if (s->ntools >= ANTH_MAX_TOOLS)
        return -EINVAL;
    int64_t *tb = realloc(s->tool_block, ((size_t)s->ntools + 1) * sizeof *tb);
    if (!tb)
        return -ENOMEM;
    s->tool_block = tb;
    tb[s->ntools] = index;
    chat_event ev = anth_ev(CHAT_EV_TOOL_START);
    ev.tool = s->ntools++;
    ev.id = anth_sl(json_object_get(cb, "id"));
    ev.text = anth_sl(json_object_get(cb, "name"));
    int rc = emit(ud, &ev);
    json_t *input = json_object_get(cb, "input");
    if (rc || !json_is_object(input) || (index >= 0 && json_object_size(input) == 0))
        return rc;
    /* Whole responses (index -1) always give the arguments; a stream's
     * empty {} is the placeholder its deltas fill. */
    buf a;
    buf_init(&a, ANTH_DUMP_MAX);
    rc = chat_json_dump(&a, input);
    if (!rc) {
        chat_event ev2 = anth_ev(CHAT_EV_TOOL_ARGS);
        ev2.tool = ev.tool;
        ev2.text = slice_make(a.data, a.len);
        rc = emit(ud, &ev2);
    }
    buf_free(&a);
    return rc;
}

/* content_block_start: text, thinking or tool_use; other kinds say nothing. */
static int anth_dec_block_start(chat_stream *s, const json_t *root, chat_emit_fn emit, void *ud)
{
    json_t *cb = json_object_get(root, "content_block");
    json_t *index = json_object_get(root, "index");
    if (!json_is_object(cb))
        return -EINVAL;
    json_t *type = json_object_get(cb, "type");
    if (anth_str_is(type, "text"))
        return anth_dec_emit_text(CHAT_EV_TEXT, anth_sl(json_object_get(cb, "text")),
                                  slice_make("", 0), emit, ud);
    if (anth_str_is(type, "thinking"))
        return anth_dec_emit_text(CHAT_EV_THINKING, anth_sl(json_object_get(cb, "thinking")),
                                  anth_sl(json_object_get(cb, "signature")), emit, ud);
    if (anth_str_is(type, "tool_use")) {
        if (!json_is_integer(index) || json_integer_value(index) < 0)
            return -EINVAL;
        return anth_dec_tool_start(s, cb, (int64_t)json_integer_value(index), emit, ud);
    }
    return 0; /* redacted_thinking, server tool blocks...: nothing to say */
}

/* content_block_delta: text, thinking, signature or tool argument fragments. */
static int anth_dec_block_delta(chat_stream *s, const json_t *root, chat_emit_fn emit, void *ud)
{
    json_t *d = json_object_get(root, "delta");
    if (!json_is_object(d))
        return -EINVAL;
    json_t *type = json_object_get(d, "type");
    slice none = slice_make("", 0);
    if (anth_str_is(type, "text_delta"))
        return anth_dec_emit_text(CHAT_EV_TEXT, anth_sl(json_object_get(d, "text")), none, emit,
                                  ud);
    if (anth_str_is(type, "thinking_delta"))
        return anth_dec_emit_text(CHAT_EV_THINKING, anth_sl(json_object_get(d, "thinking")), none,
                                  emit, ud);
    if (anth_str_is(type, "signature_delta"))
        return anth_dec_emit_text(CHAT_EV_THINKING, none, anth_sl(json_object_get(d, "signature")),
                                  emit, ud);
    if (anth_str_is(type, "input_json_delta")) {
        /* Fragments of a block that is not a tool_use (server_tool_use,
         * mcp_tool_use: nothing we pass on) are dropped. */
        int tool = anth_dec_tool_of(s, json_object_get(root, "index"));
        if (tool < 0)
            return 0;
        slice frag = anth_sl(json_object_get(d, "partial_json"));
        if (!frag.len)
            return 0;
        chat_event ev = anth_ev(CHAT_EV_TOOL_ARGS);
        ev.tool = tool;
        ev.text = frag;
        return emit(ud, &ev);
    }
    return 0; /* citations_delta and future kinds */
}

/* message_delta: FINISH when it has a stop_reason, then the cumulative USAGE. */
static int anth_dec_message_delta(chat_stream *s, const json_t *root, chat_emit_fn emit, void *ud)
{
    json_t *d = json_object_get(root, "delta");
    json_t *usage = json_object_get(root, "usage");
    json_t *reason = json_object_get(d, "stop_reason");
    int rc;
    if (json_is_string(reason)) {
        chat_event ev = anth_ev(CHAT_EV_FINISH);
        ev.native = anth_sl(reason);
        ev.finish = anth_finish_of(ev.native);
        ev.stop_sequence = anth_sl(json_object_get(d, "stop_sequence"));
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    if (!json_is_object(usage))
        return 0;
    /* Newer streams repeat input_tokens and the cache fields here, older
     * ones give output_tokens only: merge over message_start's. */
    anth_usage_read(&s->usage, usage);
    chat_event ev = anth_ev(CHAT_EV_USAGE);
    ev.usage = anth_usage_norm(&s->usage);
    return emit(ud, &ev);
}

/* An error object (in-stream event or body) as an ERROR event. The
 * status is the one the error type stands for (the HTTP status was 200). */
static int anth_dec_error(const json_t *root, chat_emit_fn emit, void *ud)
{
    chat_error e;
    memset(&e, 0, sizeof e);
    e.retry_after_ms = -1;
    int t = anth_err_of_type(anth_sl(json_object_get(json_object_get(root, "error"), "type")));
    int status = t >= 0 ? anth_err_types[t].status : 500;
    if (!anth_err_from_json(root, status, &e)) {
        e.status = status;
        e.kind = chat_err_kind_of_status(status);
        snprintf(e.message, sizeof e.message, "the upstream stream reported an error");
    }
    chat_event ev = anth_ev(CHAT_EV_ERROR);
    ev.error = &e;
    return emit(ud, &ev);
}

/* One SSE event of an Anthropic stream:
 *   message_start        -> START (id, model, input-side usage)
 *   content_block_start  -> TEXT (non-empty text), THINKING, TOOL_START
 *   content_block_delta  -> TEXT, TOOL_ARGS, THINKING (text or signature)
 *   message_delta        -> FINISH, USAGE (cumulative)
 *   message_stop         -> END
 *   error (event name or data type) -> ERROR
 * ping, content_block_stop and unknown types are ignored; so is anything
 * after message_stop. START is made up (empty id) if content comes first. */
/* True when key k is the literal lit, written without escapes. */
static bool anth_key(const jscan_val *k, const char *lit, size_t n)
{
    return !memchr(k->p, '\\', k->n) && jscan_str_eq(k, lit, n);
}

/* The fast path for the event that makes up almost all of an answer, a
 * text_delta after message_start: read with jscan (no DOM), the same TEXT
 * event as the DOM path. True when handled, with the result (0, the
 * callback's value, -E2BIG) in *rc; false: not that event (the DOM path
 * decides, errors included). */
static bool anth_dec_fast(chat_stream *s, const sse_event *ev, chat_emit_fn emit, void *ud, int *rc)
{
    jscan_val root, key, val, delta = {0}, text = {0};
    jscan_error je;
    jscan_iter it;
    size_t len;
    int ntype = 0, ndelta = 0, dtype = 0, ntext = 0;
    if (!s->started || !slice_eq(ev->event, "content_block_delta") ||
        jscan_parse(ev->data.p, ev->data.len, 64, &root, &je) != 0 || root.type != JSCAN_OBJECT ||
        jscan_iter_init(&it, &root) != 0)
        return false;
    while (jscan_obj_next(&it, &key, &val) == 0) {
        if (memchr(key.p, '\\', key.n))
            return false;
        if (jscan_str_eq(&key, "type", 4)) {
            if (ntype++ || !jscan_str_eq(&val, "content_block_delta", 19))
                return false;
        } else if (jscan_str_eq(&key, "delta", 5)) {
            if (ndelta++)
                return false;
            delta = val;
        }
    }
    if (ntype != 1 || delta.type != JSCAN_OBJECT || jscan_iter_init(&it, &delta) != 0)
        return false;
    while (jscan_obj_next(&it, &key, &val) == 0) {
        if (anth_key(&key, "type", 4)) {
            if (dtype++ || !jscan_str_eq(&val, "text_delta", 10))
                return false;
        } else if (anth_key(&key, "text", 4)) {
            if (ntext++ || val.type != JSCAN_STRING)
                return false;
            text = val;
        } else if (memchr(key.p, '\\', key.n)) {
            return false;
        }
    }
    if (dtype != 1 || ntext != 1)
        return false;
    buf_reset(&s->text);
    if (buf_reserve(&s->text, text.n) != 0) {
        *rc = -E2BIG;
        return true;
    }
    if (jscan_str_decode(&text, s->text.data, text.n, &len) != 0)
        return false;
    *rc = anth_dec_emit_text(CHAT_EV_TEXT, slice_make(s->text.data, len), slice_make("", 0), emit, ud);
    return true;
}

static int anth_stream_dec_feed(chat_stream *s, const sse_event *ev, chat_emit_fn emit, void *ud)
{
    if (s->ended || !ev->has_data || ev->data.len == 0)
        return 0;
    int frc;
    if (anth_dec_fast(s, ev, emit, ud, &frc))
        return frc;
    json_t *root = json_loadb(ev->data.p, ev->data.len, ANTH_JFLAGS, NULL);
    json_t *type = json_object_get(root, "type");
    slice none = slice_make("", 0);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = -EINVAL;
        goto out;
    }
    if (slice_eq(ev->event, "error") || anth_str_is(type, "error")) {
        rc = anth_dec_error(root, emit, ud);
        goto out;
    }
    if (anth_str_is(type, "message_start")) {
        json_t *msg = json_object_get(root, "message");
        if (!json_is_object(msg)) {
            rc = -EINVAL;
            goto out;
        }
        anth_usage_read(&s->usage, json_object_get(msg, "usage"));
        rc = anth_dec_start(s, anth_sl(json_object_get(msg, "id")),
                            anth_sl(json_object_get(msg, "model")), emit, ud);
        goto out;
    }
    bool content = anth_str_is(type, "content_block_start") ||
                   anth_str_is(type, "content_block_delta") || anth_str_is(type, "message_delta") ||
                   anth_str_is(type, "message_stop");
    if (!content)
        goto out; /* ping, content_block_stop, future types */
    if ((rc = anth_dec_start(s, none, none, emit, ud)))
        goto out;
    if (anth_str_is(type, "content_block_start")) {
        rc = anth_dec_block_start(s, root, emit, ud);
    } else if (anth_str_is(type, "content_block_delta")) {
        rc = anth_dec_block_delta(s, root, emit, ud);
    } else if (anth_str_is(type, "message_delta")) {
        rc = anth_dec_message_delta(s, root, emit, ud);
    } else {
        s->ended = true;
        chat_event e = anth_ev(CHAT_EV_END);
        rc = emit(ud, &e);
    }
out:
    json_decref(root);
    return rc;
}

/* The body ended. An Anthropic stream ends with message_stop, which
 * already gave END; a body that ends without it was cut (the connection
 * closed early), so nothing is emitted: the gateway sees no END and
 * reports the cut instead of passing a truncated answer off as whole. */
static int anth_stream_dec_finish(chat_stream *s, chat_emit_fn emit, void *ud)
{
    (void)s;
    (void)emit;
    (void)ud;
    return 0;
}

/* A whole Message: START, its blocks in order, FINISH, USAGE, END. */
static int anth_resp_decode(const char *body, size_t n, chat_emit_fn emit, void *ud)
{
    json_t *root = json_loadb(body, n, ANTH_JFLAGS, NULL);
    chat_stream *s = NULL;
    int rc = 0;
    if (!json_is_object(root)) {
        rc = -EINVAL;
        goto out;
    }
    if (anth_str_is(json_object_get(root, "type"), "error")) {
        rc = anth_dec_error(root, emit, ud);
        goto out;
    }
    json_t *content = json_object_get(root, "content");
    json_t *usage = json_object_get(root, "usage");
    if (content && !json_is_array(content) && !json_is_null(content)) {
        rc = -EINVAL;
        goto out;
    }
    if (!(s = anth_stream_new())) {
        rc = -ENOMEM;
        goto out;
    }
    anth_usage_read(&s->usage, usage);
    if ((rc = anth_dec_start(s, anth_sl(json_object_get(root, "id")),
                             anth_sl(json_object_get(root, "model")), emit, ud)))
        goto out;
    size_t i;
    json_t *b;
    json_array_foreach (content, i, b) {
        json_t *type = json_object_get(b, "type");
        if (!json_is_object(b)) {
            rc = -EINVAL;
            goto out;
        }
        if (anth_str_is(type, "text"))
            rc = anth_dec_emit_text(CHAT_EV_TEXT, anth_sl(json_object_get(b, "text")),
                                    slice_make("", 0), emit, ud);
        else if (anth_str_is(type, "thinking"))
            rc = anth_dec_emit_text(CHAT_EV_THINKING, anth_sl(json_object_get(b, "thinking")),
                                    anth_sl(json_object_get(b, "signature")), emit, ud);
        else if (anth_str_is(type, "tool_use"))
            rc = anth_dec_tool_start(s, b, -1, emit, ud);
        if (rc)
            goto out;
    }
    json_t *reason = json_object_get(root, "stop_reason");
    if (json_is_string(reason)) {
        chat_event ev = anth_ev(CHAT_EV_FINISH);
        ev.native = anth_sl(reason);
        ev.finish = anth_finish_of(ev.native);
        ev.stop_sequence = anth_sl(json_object_get(root, "stop_sequence"));
        if ((rc = emit(ud, &ev)))
            goto out;
    }
    if (json_is_object(usage)) {
        chat_event ev = anth_ev(CHAT_EV_USAGE);
        ev.usage = anth_usage_norm(&s->usage);
        if ((rc = emit(ud, &ev)))
            goto out;
    }
    chat_event end = anth_ev(CHAT_EV_END);
    rc = emit(ud, &end);
out:
    anth_stream_free(s);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------ errors */

#define ANTH_ERR_PARSE_MAX ((size_t)1 << 20) /* bigger bodies are only quoted */

static void anth_error_decode(int status, const char *body, size_t n, chat_error *e)
{
    memset(e, 0, sizeof *e);
    e->status = status;
    e->kind = chat_err_kind_of_status(status);
    e->retry_after_ms = -1;
    if (n && body && n <= ANTH_ERR_PARSE_MAX) {
        json_t *root = json_loadb(body, n, ANTH_JFLAGS, NULL);
        bool ok = json_is_object(root) && anth_err_from_json(root, status, e);
        json_decref(root);
        if (ok)
            return;
    }
    if (!n || !body) {
        snprintf(e->message, sizeof e->message, "HTTP %d with an empty body", status);
        return;
    }
    int k = snprintf(e->message, sizeof e->message, "HTTP %d: ", status);
    if (k < 0 || (size_t)k >= sizeof e->message)
        return;
    chat_text_copy(e->message + k, sizeof e->message - (size_t)k, body, n > 400 ? 400 : n);
}

/* A writer into a buf; the first failure sticks in rc. */
typedef struct anth_wr {
    buf *b;
    int rc;
} anth_wr;

/* Appends a C string. */
static void anth_w(anth_wr *w, const char *s)
{
    if (!w->rc)
        w->rc = buf_append_str(w->b, s);
}

/* Appends a JSON string of p[0..n). */
static void anth_wj(anth_wr *w, const char *p, size_t n)
{
    if (!w->rc)
        w->rc = chat_json_str(w->b, p, n);
}

/* Appends a decimal integer. */
static void anth_wi(anth_wr *w, int64_t v)
{
    if (!w->rc)
        w->rc = buf_printf(w->b, "%" PRId64, v);
}

/* {"type":"error","error":{"type":T,"message":M}}; the message names the
 * parameter first when the error has one. */
static void anth_w_error(anth_wr *w, const chat_error *e, size_t t)
{
    char msg[sizeof e->param + sizeof e->message + 2];
    size_t plen = strnlen(e->param, sizeof e->param);
    size_t mlen = strnlen(e->message, sizeof e->message);
    int k = 0;
    if (plen &&
        !(mlen > plen && memcmp(e->message, e->param, plen) == 0 && e->message[plen] == ':'))
        k = snprintf(msg, sizeof msg, "%.*s: ", (int)plen, e->param);
    if (k < 0)
        k = 0;
    chat_text_copy(msg + k, sizeof msg - (size_t)k, e->message, mlen);
    anth_w(w, "{\"type\":\"error\",\"error\":{\"type\":");
    anth_wj(w, anth_err_types[t].type, strlen(anth_err_types[t].type));
    anth_w(w, ",\"message\":");
    anth_wj(w, msg, strlen(msg));
    anth_w(w, "}}");
}

/* An error body; *status from the kind (README §6), 529 for OVERLOADED. */
static int anth_error_encode(const chat_error *e, buf *out, int *status)
{
    size_t t = anth_err_of_kind(e->kind);
    size_t mark = out->len;
    anth_wr w = {out, 0};
    *status = anth_err_types[t].status;
    anth_w_error(&w, e, t);
    if (w.rc) {
        out->len = mark;
        if (out->data)
            out->data[mark] = '\0';
    }
    return w.rc;
}

/* `event: error` after a 200; the encoder writes nothing after it. */
static int anth_stream_error_encode(chat_stream *s, const chat_error *e, buf *out)
{
    size_t mark = out->len;
    anth_wr w = {out, 0};
    anth_w(&w, "event: error\ndata: ");
    anth_w_error(&w, e, anth_err_of_kind(e->kind));
    anth_w(&w, "\n\n");
    if (w.rc) {
        out->len = mark;
        if (out->data)
            out->data[mark] = '\0';
    } else if (s) {
        s->e_ended = true; /* the stream is over */
    }
    return w.rc;
}

/* ------------------------------------------------------------ stream encode */

static chat_stream *anth_stream_enc_new(const chat_request *req)
{
    chat_stream *s = anth_stream_new();
    if (s && req && req->model.len && buf_append(&s->model, req->model.p, req->model.len)) {
        anth_stream_free(s);
        return NULL;
    }
    return s;
}

/* `event: NAME` and the start of the data line. */
static void anth_w_event(anth_wr *w, const char *name)
{
    anth_w(w, "event: ");
    anth_w(w, name);
    anth_w(w, "\ndata: ");
}

/* The usage members of message_start / message_delta / a Message. */
static void anth_w_usage(anth_wr *w, const chat_usage *u, bool input_always, int64_t output)
{
    anth_w(w, "{");
    bool comma = false;
    if (input_always || u->input >= 0) {
        anth_w(w, "\"input_tokens\":");
        anth_wi(w, anth_input_tokens(u));
        comma = true;
    }
    if (u->cache_write >= 0) {
        anth_w(w, comma ? ",\"cache_creation_input_tokens\":" : "\"cache_creation_input_tokens\":");
        anth_wi(w, u->cache_write);
        comma = true;
    }
    if (u->cache_read >= 0) {
        anth_w(w, comma ? ",\"cache_read_input_tokens\":" : "\"cache_read_input_tokens\":");
        anth_wi(w, u->cache_read);
        comma = true;
    }
    anth_w(w, comma ? ",\"output_tokens\":" : "\"output_tokens\":");
    anth_wi(w, output);
    anth_w(w, "}");
}

/* Keeps the reported numbers of u over s->u. */
static void anth_enc_usage_merge(chat_stream *s, const chat_usage *u)
{
    if (u->input >= 0)
        s->u.input = u->input;
    if (u->output >= 0)
        s->u.output = u->output;
    if (u->cache_read >= 0)
        s->u.cache_read = u->cache_read;
    if (u->cache_write >= 0)
        s->u.cache_write = u->cache_write;
    if (u->reasoning >= 0)
        s->u.reasoning = u->reasoning;
}

/* message_start, once. ev is the START event or NULL (content came first). */
static void anth_enc_start(chat_stream *s, anth_wr *w, const chat_event *ev)
{
    if (s->e_started)
        return;
    s->e_started = true;
    anth_w_event(w, "message_start");
    anth_w(w, "{\"type\":\"message_start\",\"message\":{\"id\":");
    if (ev && anth_slice_prefix(ev->id, "msg_")) {
        anth_wj(w, ev->id.p, ev->id.len);
    } else {
        anth_w(w, "\"");
        if (!w->rc)
            w->rc = chat_gen_id(w->b, "msg_");
        anth_w(w, "\"");
    }
    anth_w(w, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    if (ev && ev->model.len)
        anth_wj(w, ev->model.p, ev->model.len);
    else
        anth_wj(w, s->model.data, s->model.len);
    anth_w(w, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":");
    anth_w_usage(w, &s->u, true, 0);
    anth_w(w, "}}\n\n");
}

/* content_block_stop for the open block, if any. */
static void anth_enc_close(chat_stream *s, anth_wr *w)
{
    if (s->open == ANTH_BLK_NONE)
        return;
    s->open = ANTH_BLK_NONE;
    anth_w_event(w, "content_block_stop");
    anth_w(w, "{\"type\":\"content_block_stop\",\"index\":");
    anth_wi(w, s->nblocks - 1);
    anth_w(w, "}\n\n");
}

/* content_block_start: the caller writes the block JSON and then calls
 * anth_enc_open_end(). */
static void anth_enc_open(chat_stream *s, anth_wr *w, anth_blk kind)
{
    anth_enc_close(s, w);
    s->open = kind;
    anth_w_event(w, "content_block_start");
    anth_w(w, "{\"type\":\"content_block_start\",\"index\":");
    anth_wi(w, s->nblocks++);
    anth_w(w, ",\"content_block\":");
}

/* Ends a content_block_start event. */
static void anth_enc_open_end(anth_wr *w)
{
    anth_w(w, "}\n\n");
}

/* content_block_delta of the open block; the caller writes the delta
 * object's members after "type", then "}}\n\n" via anth_enc_delta_end(). */
static void anth_enc_delta(chat_stream *s, anth_wr *w, const char *type)
{
    anth_w_event(w, "content_block_delta");
    anth_w(w, "{\"type\":\"content_block_delta\",\"index\":");
    anth_wi(w, s->nblocks - 1);
    anth_w(w, ",\"delta\":{\"type\":\"");
    anth_w(w, type);
    anth_w(w, "\",");
}

/* Ends a content_block_delta event. */
static void anth_enc_delta_end(anth_wr *w)
{
    anth_w(w, "}}\n\n");
}

/* THINKING: a thinking block with thinking_delta and signature_delta. */
static void anth_enc_thinking(chat_stream *s, anth_wr *w, const chat_event *ev)
{
    if (!ev->text.len && !ev->signature.len)
        return;
    if (s->open != ANTH_BLK_THINKING) {
        anth_enc_open(s, w, ANTH_BLK_THINKING);
        anth_w(w, "{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}");
        anth_enc_open_end(w);
    }
    if (ev->text.len) {
        anth_enc_delta(s, w, "thinking_delta");
        anth_w(w, "\"thinking\":");
        anth_wj(w, ev->text.p, ev->text.len);
        anth_enc_delta_end(w);
    }
    if (ev->signature.len) {
        anth_enc_delta(s, w, "signature_delta");
        anth_w(w, "\"signature\":");
        anth_wj(w, ev->signature.p, ev->signature.len);
        anth_enc_delta_end(w);
    }
}

/* TOOL_START: closes the open block and starts a tool_use block. */
static int anth_enc_tool_start(chat_stream *s, anth_wr *w, const chat_event *ev)
{
    if (s->open == ANTH_BLK_TOOL && ev->tool == s->open_tool)
        return 0; /* the same call announced again */
    if (ev->tool < s->next_tool || ev->tool < 0)
        return -EINVAL; /* a tool block once closed cannot be reopened */
    anth_enc_open(s, w, ANTH_BLK_TOOL);
    s->open_tool = ev->tool;
    s->next_tool = ev->tool + 1;
    s->e_tools = true;
    anth_w(w, "{\"type\":\"tool_use\",\"id\":");
    buf id;
    buf_init(&id, ANTH_DUMP_MAX);
    if (!w->rc && (w->rc = chat_tool_id_encode(&id, "toolu_", ev->id, ev->signature)) == 0)
        anth_wj(w, id.data, id.len);
    buf_free(&id);
    anth_w(w, ",\"name\":");
    anth_wj(w, ev->text.p, ev->text.len);
    anth_w(w, ",\"input\":{}}");
    anth_enc_open_end(w);
    return 0;
}

/* The end: close the open block, message_delta (stop reason, usage), message_stop. */
static void anth_enc_end(chat_stream *s, anth_wr *w)
{
    anth_enc_start(s, w, NULL);
    anth_enc_close(s, w);
    anth_w_event(w, "message_delta");
    anth_w(w, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"");
    anth_w(w, anth_stop_reason(s->finish, s->e_tools));
    anth_w(w, "\",\"stop_sequence\":");
    if (s->finish == CHAT_FINISH_STOP_SEQUENCE && s->stop_seq.len && !s->e_tools)
        anth_wj(w, s->stop_seq.data, s->stop_seq.len);
    else
        anth_w(w, "null");
    anth_w(w, "},\"usage\":");
    anth_w_usage(w, &s->u, false, s->u.output >= 0 ? s->u.output : 0);
    anth_w(w, "}\n\n");
    anth_w_event(w, "message_stop");
    anth_w(w, "{\"type\":\"message_stop\"}\n\n");
    s->e_ended = true;
}

/* One event into the caller's Anthropic stream. Content before START gets
 * a message_start with a generated id. Events of choices other than 0
 * (Anthropic has one) and everything after the end are dropped. A
 * fragment for a tool whose block was closed is -EINVAL: Anthropic blocks
 * cannot interleave. Nothing is appended when an error is returned. */
static int anth_stream_enc_feed(chat_stream *s, const chat_event *ev, buf *out)
{
    if (s->e_ended || ev->choice != 0)
        return 0;
    size_t mark = out->len;
    anth_wr w = {out, 0};
    int rc = 0;
    switch (ev->type) {
    case CHAT_EV_START:
        anth_enc_usage_merge(s, &ev->usage);
        anth_enc_start(s, &w, ev);
        break;
    case CHAT_EV_TEXT:
        if (!ev->text.len)
            break;
        anth_enc_start(s, &w, NULL);
        if (s->open != ANTH_BLK_TEXT) {
            anth_enc_open(s, &w, ANTH_BLK_TEXT);
            anth_w(&w, "{\"type\":\"text\",\"text\":\"\"}");
            anth_enc_open_end(&w);
        }
        anth_enc_delta(s, &w, "text_delta");
        anth_w(&w, "\"text\":");
        anth_wj(&w, ev->text.p, ev->text.len);
        anth_enc_delta_end(&w);
        break;
    case CHAT_EV_THINKING:
        anth_enc_start(s, &w, NULL);
        anth_enc_thinking(s, &w, ev);
        break;
    case CHAT_EV_TOOL_START:
        anth_enc_start(s, &w, NULL);
        rc = anth_enc_tool_start(s, &w, ev);
        break;
    case CHAT_EV_TOOL_ARGS:
        if (!ev->text.len)
            break;
        if (s->open != ANTH_BLK_TOOL || ev->tool != s->open_tool) {
            rc = -EINVAL;
            break;
        }
        anth_enc_delta(s, &w, "input_json_delta");
        anth_w(&w, "\"partial_json\":");
        anth_wj(&w, ev->text.p, ev->text.len);
        anth_enc_delta_end(&w);
        break;
    case CHAT_EV_FINISH:
        s->finish = ev->finish;
        buf_reset(&s->stop_seq);
        if (ev->stop_sequence.len &&
            buf_append(&s->stop_seq, ev->stop_sequence.p,
                       ev->stop_sequence.len > ANTH_STOPSEQ_MAX ? ANTH_STOPSEQ_MAX
                                                                : ev->stop_sequence.len))
            rc = -ENOMEM;
        break;
    case CHAT_EV_USAGE:
        anth_enc_usage_merge(s, &ev->usage);
        break;
    case CHAT_EV_ERROR:
        if (ev->error)
            rc = anth_stream_error_encode(s, ev->error, out);
        break;
    case CHAT_EV_END:
        anth_enc_end(s, &w);
        break;
    }
    if (!rc)
        rc = w.rc;
    if (rc) {
        out->len = mark;
        if (out->data)
            out->data[mark] = '\0';
    }
    return rc;
}

/* ------------------------------------------------------------ whole response encode */

/* A Message: content thinking, text (left out when empty and there are
 * tool calls), tool_use blocks; usage input_tokens without the cache. */
static int anth_resp_encode(const chat_request *req, const chat_response *r, buf *out)
{
    anth_jb jb = {0};
    anth_jb *b = &jb;
    json_t *root = anth_jobj(b), *content = anth_jarr(b);
    int rc;
    slice id = slice_make(r->id.data, r->id.len);
    if (anth_slice_prefix(id, "msg_")) {
        anth_jset(b, root, "id", anth_jstr(b, id.p, id.len));
    } else {
        buf g;
        buf_init(&g, 64);
        if ((rc = chat_gen_id(&g, "msg_")))
            anth_jfail(b, rc);
        else
            anth_jset(b, root, "id", anth_jstr(b, g.data, g.len));
        buf_free(&g);
    }
    anth_jset(b, root, "type", json_string("message"));
    anth_jset(b, root, "role", json_string("assistant"));
    if (r->model.len)
        anth_jset(b, root, "model", anth_jstr(b, r->model.data, r->model.len));
    else
        anth_jset(b, root, "model",
                  anth_jstr(b, req ? req->model.p : "", req ? req->model.len : 0));
    anth_jset(b, root, "content", content);
    if (r->thinking.len || r->thinking_sig.len) {
        json_t *o = anth_jobj(b);
        anth_jset(b, o, "type", json_string("thinking"));
        anth_jset(b, o, "thinking", anth_jstr(b, r->thinking.data, r->thinking.len));
        anth_jset(b, o, "signature", anth_jstr(b, r->thinking_sig.data, r->thinking_sig.len));
        anth_jpush(b, content, o);
    }
    if (r->text.len || !r->ncalls) {
        json_t *o = anth_jobj(b);
        anth_jset(b, o, "type", json_string("text"));
        anth_jset(b, o, "text", anth_jstr(b, r->text.data, r->text.len));
        anth_jpush(b, content, o);
    }
    for (size_t i = 0; i < r->ncalls; i++) {
        const chat_tool_call *c = &r->calls[i];
        json_t *o = anth_jobj(b);
        anth_jset(b, o, "type", json_string("tool_use"));
        anth_jset(b, o, "id",
                  anth_jcall_id(b, (chat_str){c->id.data, c->id.len},
                                (chat_str){c->signature.data, c->signature.len}, true));
        anth_jset(b, o, "name", anth_jstr(b, c->name.data, c->name.len));
        /* Arguments that are not a JSON object (cut by max_tokens) give
         * {}, as Anthropic itself answers for a cut tool call. */
        json_t *input =
            c->args.len ? json_loadb(c->args.data, c->args.len, ANTH_JFLAGS, NULL) : NULL;
        if (!json_is_object(input)) {
            json_decref(input);
            input = anth_jobj(b);
        }
        anth_jset(b, o, "input", input);
        anth_jpush(b, content, o);
    }
    const char *reason = anth_stop_reason(r->finish, r->ncalls > 0);
    anth_jset(b, root, "stop_reason", json_string(reason));
    if (r->finish == CHAT_FINISH_STOP_SEQUENCE && r->stop_sequence[0] && !r->ncalls)
        anth_jset(
            b, root, "stop_sequence",
            anth_jstr(b, r->stop_sequence, strnlen(r->stop_sequence, sizeof r->stop_sequence)));
    else
        anth_jset(b, root, "stop_sequence", json_null());
    json_t *u = anth_jobj(b);
    anth_jset(b, u, "input_tokens", anth_jint(b, anth_input_tokens(&r->usage)));
    if (r->usage.cache_write >= 0)
        anth_jset(b, u, "cache_creation_input_tokens", anth_jint(b, r->usage.cache_write));
    if (r->usage.cache_read >= 0)
        anth_jset(b, u, "cache_read_input_tokens", anth_jint(b, r->usage.cache_read));
    anth_jset(b, u, "output_tokens", anth_jint(b, r->usage.output >= 0 ? r->usage.output : 0));
    anth_jset(b, root, "usage", u);
    rc = b->rc ? b->rc : chat_json_dump(out, root);
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------ the format */

const chat_format chat_format_anthropic = {
    .id = CHAT_FMT_ANTHROPIC,
    .name = "anthropic",
    .req_decode = anth_req_decode,
    .req_encode = anth_req_encode,
    .req_path = anth_req_path,
    .req_auth_headers = anth_req_auth_headers,
    .stream_dec_new = anth_stream_dec_new,
    .stream_dec_feed = anth_stream_dec_feed,
    .stream_dec_finish = anth_stream_dec_finish,
    .resp_decode = anth_resp_decode,
    .error_decode = anth_error_decode,
    .stream_enc_new = anth_stream_enc_new,
    .stream_enc_feed = anth_stream_enc_feed,
    .resp_encode = anth_resp_encode,
    .error_encode = anth_error_encode,
    .stream_error_encode = anth_stream_error_encode,
    .stream_free = anth_stream_free,
};
