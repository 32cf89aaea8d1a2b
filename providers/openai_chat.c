/* openai_chat.c - the OpenAI chat-completions wire format as a chat_format
 * (providers/chat.h), for translation. The same shape is spoken by every
 * OpenAI-compatible upstream (Fireworks, OpenRouter, Together, any base
 * URL), so the decoders also accept their extensions: `reasoning` deltas,
 * usage on the finish chunk or on a chunk with a non-empty `choices`,
 * numeric error codes, an `error` inside a stream.
 *
 * Passthrough (caller and upstream both speak OpenAI) does not come here:
 * see providers/openai.h. Everything is parsed with jansson
 * (JSON_REJECT_DUPLICATES, NUL allowed inside strings, lengths always
 * used), and every body is built with buf + chat_json_str so the member
 * order is the one OpenAI sends.
 *
 * Request members ignored on decode (they do not change the answer and
 * have no place in the model): store, metadata, service_tier,
 * prompt_cache_key, prompt_cache_retention, safety_identifier, OpenRouter's
 * `usage` ({"include": true}: cost accounting only), stream_options other
 * than include_usage, response_format.json_schema.strict/description, an
 * assistant message's refusal/reasoning_content/reasoning/annotations and
 * any other unknown member of a message or part. Members that change the
 * answer and cannot be mapped are recorded with chat_set_unmapped(): see
 * oc_dec_top_unmapped().
 *
 * Stream decoding: FINISH is emitted once per choice (OpenRouter repeats
 * finish_reason on later chunks); usage is read from any chunk that has
 * it (OpenAI's choices:[] chunk, OpenRouter's empty-delta chunk,
 * Fireworks' finish chunk); END only for data: [DONE] (a body that ends
 * without it was cut). Stream encoding: the chunks of openai/chat_stream.sse
 * (a role chunk first, "usage":null on each chunk when the caller asked
 * for usage, the choices:[] usage chunk, [DONE]); an ERROR event writes
 * the in-stream error and ends the stream like stream_error_encode. */
#include "providers/chat.h"
#include "providers/jscan.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* jansson flags: duplicates are an error (upstreams keep the last copy,
 * we would read the first), \u0000 is allowed (lengths are used). */
#define OC_JFLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY)
#define OC_FAST_MAX_DEPTH 256 /* nesting the jscan fast path accepts (jansson: 2048) */
#define OC_PARAM_MAX 64               /* = sizeof chat_error.param */
#define OC_SIG_MAX ((size_t)1 << 20)  /* a signature carried in a tool call id */
#define OC_ID_MAX ((size_t)64 * 1024) /* one generated or re-encoded call id */
#define OC_IDS_MAX ((size_t)64 << 20) /* all call ids of one request */
#define OC_MAX_CHOICES 128            /* OpenAI's limit on n */
#define OC_MAX_TOOLS 4096             /* tool call fragments indexes in one stream */

#define OC_TRY(x)                                                                                  \
    do {                                                                                           \
        if ((rc = (x)) != 0)                                                                       \
            goto out;                                                                              \
    } while (0)

static const char type_invalid[] = "invalid_request_error";

/* ================================================================ text utilities */



/* s equals the C string lit exactly (length-aware: a NUL inside s never matches). */
static bool oc_eq(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n == l && memcmp(p, lit, l) == 0;
}

/* A JSON string value equals lit. */
static bool oc_jeq(const json_t *v, const char *lit)
{
    return json_is_string(v) && oc_eq(json_string_value(v), json_string_length(v), lit);
}

/* A JSON string as a slice; empty for anything else. */
static slice oc_jslice(const json_t *v)
{
    if (!json_is_string(v))
        return slice_make("", 0);
    return slice_make(json_string_value(v), json_string_length(v));
}

/* Member k of object o unless absent or null. */
static json_t *oc_get(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

/* A non-negative token count, -1 when absent or not a count. */
static int64_t oc_count(const json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (json_is_integer(v))
        return json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= 0 && d < 9007199254740992.0 && d == (double)(int64_t)d)
            return (int64_t)d;
    }
    return -1;
}

/* Takes back what was appended to out since start (on error). */
static void oc_truncate(buf *out, size_t start)
{
    if (out->len > start) {
        out->len = start;
        out->data[start] = '\0';
    }
}

/* Appends a literal; the buf_* helpers below return -E2BIG on failure. */
static int oc_put(buf *out, const char *lit)
{
    return buf_append_str(out, lit) ? -E2BIG : 0;
}

/* A slice as a JSON string. */
static int oc_put_slice(buf *out, slice s)
{
    return chat_json_str(out, s.p, s.len);
}

/* An arena string as a JSON string ("" when absent). */
static int oc_put_cstr(buf *out, chat_str s)
{
    return chat_json_str(out, s.p, s.p ? s.len : 0);
}

/* The shortest decimal text that reads back as d (a sampling knob). */
static int oc_put_double(buf *out, double d)
{
    char tmp[40];
    if (!isfinite(d))
        return -EINVAL;
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    return buf_append_str(out, tmp) ? -E2BIG : 0;
}

/* ================================================================ errors */

static void oc_pathf(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Formats a parameter path ("messages[1].content") into dst
 * (OC_PARAM_MAX bytes; a longer one is cut, it is ASCII). */
static void oc_pathf(char *dst, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, OC_PARAM_MAX, fmt, ap);
    va_end(ap);
}

/* "a string", "an object", ...: for "but got ... instead". */
static const char *oc_type_phrase(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a decimal number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "nothing";
}

static int oc_fail(chat_error *err, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A 400 naming param with OpenAI's error code; returns -EINVAL. */
static int oc_fail(chat_error *err, const char *param, const char *code, const char *fmt, ...)
{
    char msg[sizeof err->message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    chat_error_invalid(err, param, "%s", msg);
    if (code)
        snprintf(err->code, sizeof err->code, "%s", code);
    return -EINVAL;
}

/* "Invalid type for 'param': expected X, but got Y instead." */
static int oc_bad_type(chat_error *err, const char *param, const char *expected, const json_t *got)
{
    return oc_fail(err, param, "invalid_type",
                   "Invalid type for '%s': expected %s, but got %s instead.", param, expected,
                   oc_type_phrase(got));
}

/* "Missing required parameter: 'param'." */
static int oc_missing(chat_error *err, const char *param)
{
    return oc_fail(err, param, "missing_required_parameter", "Missing required parameter: '%s'.",
                   param);
}

/* A value the caller sent, safe to quote in a message (short, printable). */
static const char *oc_quote(char *tmp, size_t cap, const json_t *v)
{
    slice s = oc_jslice(v);
    size_t n = chat_text_copy(tmp, cap, s.p, s.len > 48 ? 48 : s.len);
    (void)n;
    return tmp;
}

/* "Invalid value: 'v'. Supported values are: ..." */
static int oc_bad_value(chat_error *err, const char *param, const json_t *v, const char *supported)
{
    char q[64];
    return oc_fail(err, param, "invalid_value", "Invalid value: '%s'. Supported values are: %s.",
                   oc_quote(q, sizeof q, v), supported);
}

/* Records a member that cannot be mapped, its name made printable ASCII. */
static void oc_unmapped(chat_request *r, const char *name, size_t n)
{
    char tmp[OC_PARAM_MAX];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof tmp; i++) {
        unsigned char c = (unsigned char)name[i];
        tmp[o++] = (c >= 0x20 && c < 0x7F) ? (char)c : '?';
    }
    tmp[o] = '\0';
    chat_set_unmapped(r, tmp);
}

/* ================================================================ request decode */

/* Copies a JSON string (NULs included) into the arena. */
static int oc_strdup_j(chat_request *r, const json_t *v, chat_str *out)
{
    return chat_strdup(r, json_string_value(v), json_string_length(v), out);
}

/* An optional string member: absent/null leaves *out, else it must be a string. */
static int oc_opt_str(chat_request *r, const json_t *o, const char *k, const char *param,
                      chat_str *out, chat_error *err)
{
    json_t *v = oc_get(o, k);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return oc_bad_type(err, param, "a string", v);
    return oc_strdup_j(r, v, out);
}

/* An optional boolean: absent/null gives -1, else 0 or 1. */
static int oc_opt_bool(const json_t *o, const char *k, int *out, chat_error *err)
{
    json_t *v = oc_get(o, k);
    *out = -1;
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return oc_bad_type(err, k, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

/* An optional integer in [min, max]; absent/null leaves *out. */
static int oc_opt_int(const json_t *o, const char *k, int64_t min, int64_t max, int64_t *out,
                      chat_error *err)
{
    json_t *v = oc_get(o, k);
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return oc_bad_type(err, k, "an integer", v);
    int64_t x = (int64_t)json_integer_value(v);
    if (x < min)
        return oc_fail(err, k, "integer_below_min_value",
                       "Invalid '%s': integer below minimum value. Expected a value >= %" PRId64
                       ", but got %" PRId64 " instead.",
                       k, min, x);
    if (x > max)
        return oc_fail(err, k, "integer_above_max_value",
                       "Invalid '%s': integer above maximum value. Expected a value <= %" PRId64
                       ", but got %" PRId64 " instead.",
                       k, max, x);
    *out = x;
    return 0;
}

/* An optional number in [min, max]; absent/null leaves *out (NAN). */
static int oc_opt_num(const json_t *o, const char *k, double min, double max, double *out,
                      chat_error *err)
{
    json_t *v = oc_get(o, k);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return oc_bad_type(err, k, "a number", v);
    double x = json_number_value(v);
    if (!isfinite(x) || x < min)
        return oc_fail(err, k, "decimal_below_min_value",
                       "Invalid '%s': decimal below minimum value. Expected a value >= %g, but "
                       "got %g instead.",
                       k, min, x);
    if (x > max)
        return oc_fail(err, k, "decimal_above_max_value",
                       "Invalid '%s': decimal above maximum value. Expected a value <= %g, but "
                       "got %g instead.",
                       k, max, x);
    *out = x;
    return 0;
}

/* Splits a tool call id made by chat_tool_id_encode into id and
 * signature (either may be left absent). */
static int oc_dec_call_id(chat_request *r, const json_t *v, chat_str *id, chat_str *sig)
{
    buf b;
    slice s;
    int rc;
    buf_init(&b, OC_SIG_MAX);
    rc = chat_tool_id_decode(oc_jslice(v), &s, &b);
    if (!rc)
        rc = chat_strdup(r, s.p, s.len, id);
    if (!rc && b.len && sig)
        rc = chat_strdup(r, b.data, b.len, sig);
    buf_free(&b);
    return rc == -E2BIG ? -EINVAL : rc;
}

/* The text parts of a content array (system, tool, assistant): each
 * "text" part (and, for an assistant, a "refusal" part) goes to fn. */
typedef int (*oc_text_fn)(chat_request *r, void *ud, const json_t *text);

/* Walks a content array of text (and refusal) parts, naming param on errors. */
static int oc_dec_text_parts(chat_request *r, const json_t *arr, const char *param, bool refusal,
                             oc_text_fn fn, void *ud, chat_error *err)
{
    char p[OC_PARAM_MAX];
    int rc;
    if (json_array_size(arr) == 0)
        return oc_fail(err, param, "empty_array",
                       "Invalid '%s': empty array. Expected an array with minimum length 1, but "
                       "got an empty array instead.",
                       param);
    for (size_t j = 0; j < json_array_size(arr); j++) {
        json_t *part = json_array_get(arr, j);
        oc_pathf(p, "%s[%zu]", param, j);
        if (!json_is_object(part))
            return oc_bad_type(err, p, "an object", part);
        json_t *type = json_object_get(part, "type");
        oc_pathf(p, "%s[%zu].type", param, j);
        if (!type)
            return oc_missing(err, p);
        if (!json_is_string(type))
            return oc_bad_type(err, p, "a string", type);
        const char *member = oc_jeq(type, "text")                 ? "text"
                             : refusal && oc_jeq(type, "refusal") ? "refusal"
                                                                  : NULL;
        if (!member)
            return oc_bad_value(err, p, type, refusal ? "'text' and 'refusal'" : "'text'");
        json_t *t = json_object_get(part, member);
        oc_pathf(p, "%s[%zu].%s", param, j, member);
        if (!t)
            return oc_missing(err, p);
        if (!json_is_string(t))
            return oc_bad_type(err, p, "a string", t);
        if ((rc = fn(r, ud, t)))
            return rc;
    }
    return 0;
}

/* oc_text_fn: one TEXT part per text. */
static int oc_text_to_part(chat_request *r, void *ud, const json_t *text)
{
    chat_part *pt = chat_msg_add_part(r, ud, CHAT_PART_TEXT);
    if (!pt)
        return -ENOMEM;
    return oc_strdup_j(r, text, &pt->text);
}

/* Text joined with "\n" into a buf (tool results). */
static int oc_text_join(chat_request *r, void *ud, const json_t *text)
{
    buf *b = ud;
    if (b->len && buf_append(b, "\n", 1))
        return -E2BIG;
    return buf_append_slice(b, oc_jslice(text)) ? -E2BIG : 0;
}

/* Content of a system/developer message: string or text parts. */
static int oc_dec_system(chat_request *r, const json_t *m, const char *mp, chat_msg *msg,
                         chat_error *err)
{
    char p[OC_PARAM_MAX];
    json_t *c = json_object_get(m, "content");
    oc_pathf(p, "%s.content", mp);
    if (!c)
        return oc_missing(err, p);
    if (json_is_string(c))
        return oc_text_to_part(r, msg, c);
    if (json_is_array(c))
        return oc_dec_text_parts(r, c, p, false, oc_text_to_part, msg, err);
    return oc_bad_type(err, p, "one of a string or array of objects", c);
}

/* An image_url part: a base64 data URL or an http(s) URL. */
static int oc_dec_image(chat_request *r, const json_t *part, const char *pp, chat_msg *msg,
                        chat_error *err)
{
    char p[OC_PARAM_MAX];
    json_t *iu = json_object_get(part, "image_url"), *url, *detail = NULL;
    oc_pathf(p, "%s.image_url", pp);
    if (!iu)
        return oc_missing(err, p);
    if (json_is_string(iu)) {
        url = iu; /* lenient: some clients send the URL itself */
    } else if (json_is_object(iu)) {
        url = json_object_get(iu, "url");
        detail = oc_get(iu, "detail");
        oc_pathf(p, "%s.image_url.url", pp);
        if (!url)
            return oc_missing(err, p);
        if (!json_is_string(url))
            return oc_bad_type(err, p, "a string", url);
        if (detail && !json_is_string(detail)) {
            oc_pathf(p, "%s.image_url.detail", pp);
            return oc_bad_type(err, p, "a string", detail);
        }
    } else {
        return oc_bad_type(err, p, "an object", iu);
    }
    oc_pathf(p, "%s.image_url.url", pp);
    chat_part *pt = chat_msg_add_part(r, msg, CHAT_PART_IMAGE);
    if (!pt)
        return -ENOMEM;
    const char *u = json_string_value(url);
    size_t n = json_string_length(url);
    int rc = 0;
    if (n >= 5 && memcmp(u, "data:", 5) == 0) {
        static const char b64[] = ";base64,";
        const char *mark = NULL;
        for (size_t i = 5; i + sizeof b64 - 1 <= n; i++) {
            if (memcmp(u + i, b64, sizeof b64 - 1) == 0) {
                mark = u + i;
                break;
            }
        }
        if (!mark)
            return oc_fail(err, p, "invalid_value",
                           "Invalid '%s': expected a base64-encoded data URL or an http(s) URL.",
                           p);
        /* the media type ends at its first parameter (";charset=..." is dropped) */
        const char *mt = u + 5;
        const char *semi = memchr(mt, ';', (size_t)(mark - mt) + 1);
        const char *data = mark + sizeof b64 - 1;
        rc = chat_strdup(r, mt, (size_t)(semi - mt), &pt->media_type);
        if (!rc)
            rc = chat_strdup(r, data, n - (size_t)(data - u), &pt->data);
    } else if ((n >= 7 && strncasecmp(u, "http://", 7) == 0) ||
               (n >= 8 && strncasecmp(u, "https://", 8) == 0)) {
        rc = chat_strdup(r, u, n, &pt->url);
    } else {
        return oc_fail(err, p, "invalid_value",
                       "Invalid '%s': expected a base64-encoded data URL or an http(s) URL.", p);
    }
    if (!rc && detail)
        rc = oc_strdup_j(r, detail, &pt->detail);
    return rc;
}

/* Content of a user message: string or parts (text, image_url; the
 * other known part types are unmapped). */
static int oc_dec_user(chat_request *r, const json_t *m, const char *mp, chat_msg *msg,
                       chat_error *err)
{
    char p[OC_PARAM_MAX], pp[OC_PARAM_MAX];
    int rc;
    json_t *c = json_object_get(m, "content");
    oc_pathf(p, "%s.content", mp);
    if (!c)
        return oc_missing(err, p);
    if (json_is_string(c))
        return oc_text_to_part(r, msg, c);
    if (!json_is_array(c))
        return oc_bad_type(err, p, "one of a string or array of objects", c);
    if (json_array_size(c) == 0)
        return oc_fail(err, p, "empty_array",
                       "Invalid '%s': empty array. Expected an array with minimum length 1, but "
                       "got an empty array instead.",
                       p);
    for (size_t j = 0; j < json_array_size(c); j++) {
        json_t *part = json_array_get(c, j);
        oc_pathf(pp, "%s[%zu]", p, j);
        if (!json_is_object(part))
            return oc_bad_type(err, pp, "an object", part);
        json_t *type = json_object_get(part, "type");
        char tp[OC_PARAM_MAX];
        oc_pathf(tp, "%s.type", pp);
        if (!type)
            return oc_missing(err, tp);
        if (!json_is_string(type))
            return oc_bad_type(err, tp, "a string", type);
        if (oc_jeq(type, "text")) {
            json_t *t = json_object_get(part, "text");
            oc_pathf(tp, "%s.text", pp);
            if (!t)
                return oc_missing(err, tp);
            if (!json_is_string(t))
                return oc_bad_type(err, tp, "a string", t);
            if ((rc = oc_text_to_part(r, msg, t)))
                return rc;
        } else if (oc_jeq(type, "image_url")) {
            if ((rc = oc_dec_image(r, part, pp, msg, err)))
                return rc;
        } else if (oc_jeq(type, "input_audio") || oc_jeq(type, "file") || oc_jeq(type, "audio")) {
            char name[OC_PARAM_MAX];
            oc_pathf(name, "%s.%s", pp, json_string_value(type));
            oc_unmapped(r, name, strlen(name));
        } else {
            return oc_bad_value(
                err, tp, type,
                "'text', 'image_url', 'input_audio', 'refusal', 'audio', and 'file'");
        }
    }
    return 0;
}

/* An assistant message: content (string, parts, null) and tool_calls. */
static int oc_dec_assistant(chat_request *r, const json_t *m, const char *mp, chat_msg *msg,
                            chat_error *err)
{
    char p[OC_PARAM_MAX], pp[OC_PARAM_MAX];
    int rc;
    json_t *c = json_object_get(m, "content");
    json_t *calls = oc_get(m, "tool_calls");
    bool other = false; /* function_call or audio: the turn is not empty */

    oc_pathf(p, "%s.function_call", mp);
    if (oc_get(m, "function_call")) {
        oc_unmapped(r, p, strlen(p));
        other = true;
    }
    oc_pathf(p, "%s.audio", mp);
    if (oc_get(m, "audio")) {
        oc_unmapped(r, p, strlen(p));
        other = true;
    }
    oc_pathf(p, "%s.content", mp);
    if (json_is_string(c)) {
        /* "" next to tool calls is what SDKs send for "no text": no part */
        if ((json_string_length(c) || !calls) && (rc = oc_text_to_part(r, msg, c)))
            return rc;
    } else if (json_is_array(c)) {
        if ((rc = oc_dec_text_parts(r, c, p, true, oc_text_to_part, msg, err)))
            return rc;
    } else if (c && !json_is_null(c)) {
        return oc_bad_type(err, p, "one of a string or array of objects", c);
    } else if (!calls && !other) {
        return c ? oc_fail(err, p, "invalid_value",
                           "Invalid value for '%s': expected a string, got null.", p)
                 : oc_missing(err, p);
    }
    if (!calls)
        return 0;
    oc_pathf(p, "%s.tool_calls", mp);
    if (!json_is_array(calls))
        return oc_bad_type(err, p, "an array", calls);
    for (size_t j = 0; j < json_array_size(calls); j++) {
        json_t *tc = json_array_get(calls, j);
        oc_pathf(pp, "%s[%zu]", p, j);
        if (!json_is_object(tc))
            return oc_bad_type(err, pp, "an object", tc);
        json_t *type = json_object_get(tc, "type"), *id = json_object_get(tc, "id");
        json_t *fn = json_object_get(tc, "function");
        char q[OC_PARAM_MAX];
        oc_pathf(q, "%s.type", pp);
        if (type && !json_is_string(type))
            return oc_bad_type(err, q, "a string", type);
        if (type && oc_jeq(type, "custom")) {
            oc_unmapped(r, q, strlen(q));
            continue;
        }
        if (type && !oc_jeq(type, "function"))
            return oc_bad_value(err, q, type, "'function' and 'custom'");
        oc_pathf(q, "%s.id", pp);
        if (!id)
            return oc_missing(err, q);
        if (!json_is_string(id))
            return oc_bad_type(err, q, "a string", id);
        oc_pathf(q, "%s.function", pp);
        if (!fn)
            return oc_missing(err, q);
        if (!json_is_object(fn))
            return oc_bad_type(err, q, "an object", fn);
        json_t *name = json_object_get(fn, "name"), *args = oc_get(fn, "arguments");
        oc_pathf(q, "%s.function.name", pp);
        if (!name)
            return oc_missing(err, q);
        if (!json_is_string(name))
            return oc_bad_type(err, q, "a string", name);
        oc_pathf(q, "%s.function.arguments", pp);
        if (args && !json_is_string(args))
            return oc_bad_type(err, q, "a string", args);
        chat_part *pt = chat_msg_add_part(r, msg, CHAT_PART_TOOL_CALL);
        if (!pt)
            return -ENOMEM;
        if ((rc = oc_dec_call_id(r, id, &pt->id, &pt->signature)) ||
            (rc = oc_strdup_j(r, name, &pt->name)))
            return rc == -EINVAL
                       ? oc_fail(err, pp, "invalid_value", "Invalid '%s': id too long.", pp)
                       : rc;
        if (args && (rc = oc_strdup_j(r, args, &pt->args)))
            return rc;
        if (!args && (rc = chat_strdup(r, "", 0, &pt->args)))
            return rc;
    }
    return 0;
}

/* The function name of the latest earlier tool call with this id. */
static chat_str oc_call_name(const chat_request *r, chat_str id)
{
    for (size_t i = r->nmsgs; i-- > 0;) {
        const chat_msg *m = &r->msgs[i];
        if (m->role != CHAT_ROLE_ASSISTANT)
            continue;
        for (size_t j = 0; j < m->nparts; j++) {
            const chat_part *pt = &m->parts[j];
            if (pt->type == CHAT_PART_TOOL_CALL && pt->id.len == id.len &&
                (id.len == 0 || memcmp(pt->id.p, id.p, id.len) == 0))
                return pt->name;
        }
    }
    return (chat_str){NULL, 0};
}

/* A tool message: one TOOL_RESULT in a CHAT_ROLE_TOOL message. */
static int oc_dec_tool(chat_request *r, const json_t *m, const char *mp, chat_error *err)
{
    char p[OC_PARAM_MAX];
    int rc;
    json_t *id = json_object_get(m, "tool_call_id"), *c = json_object_get(m, "content");
    oc_pathf(p, "%s.tool_call_id", mp);
    if (!id)
        return oc_missing(err, p);
    if (!json_is_string(id))
        return oc_bad_type(err, p, "a string", id);
    oc_pathf(p, "%s.content", mp);
    if (!c)
        return oc_missing(err, p);
    if (!json_is_string(c) && !json_is_array(c))
        return oc_bad_type(err, p, "one of a string or array of objects", c);

    chat_msg *msg = chat_add_msg(r, CHAT_ROLE_TOOL);
    chat_part *pt = msg ? chat_msg_add_part(r, msg, CHAT_PART_TOOL_RESULT) : NULL;
    if (!pt)
        return -ENOMEM;
    if ((rc = oc_dec_call_id(r, id, &pt->id, NULL)))
        return rc == -EINVAL ? oc_fail(err, mp, "invalid_value", "Invalid '%s': id too long.", mp)
                             : rc;
    pt->name = oc_call_name(r, pt->id);
    if (json_is_string(c))
        return oc_strdup_j(r, c, &pt->text);
    buf b;
    buf_init(&b, (size_t)1 << 30);
    rc = oc_dec_text_parts(r, c, p, false, oc_text_join, &b, err);
    if (!rc)
        rc = chat_strdup(r, b.data ? b.data : "", b.len, &pt->text);
    buf_free(&b);
    return rc;
}

/* The messages array, in order (system/developer, user, assistant, tool). */
static int oc_dec_messages(chat_request *r, const json_t *msgs, chat_error *err)
{
    char mp[OC_PARAM_MAX], p[OC_PARAM_MAX];
    int rc;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i);
        oc_pathf(mp, "messages[%zu]", i);
        if (!json_is_object(m))
            return oc_bad_type(err, mp, "an object", m);
        json_t *role = json_object_get(m, "role");
        oc_pathf(p, "%s.role", mp);
        if (!role)
            return oc_missing(err, p);
        if (!json_is_string(role))
            return oc_bad_type(err, p, "a string", role);
        chat_msg *msg = NULL;
        if (oc_jeq(role, "system") || oc_jeq(role, "developer")) {
            if (!(msg = chat_add_msg(r, CHAT_ROLE_SYSTEM)))
                return -ENOMEM;
            rc = oc_dec_system(r, m, mp, msg, err);
        } else if (oc_jeq(role, "user")) {
            if (!(msg = chat_add_msg(r, CHAT_ROLE_USER)))
                return -ENOMEM;
            rc = oc_dec_user(r, m, mp, msg, err);
        } else if (oc_jeq(role, "assistant")) {
            if (!(msg = chat_add_msg(r, CHAT_ROLE_ASSISTANT)))
                return -ENOMEM;
            rc = oc_dec_assistant(r, m, mp, msg, err);
        } else if (oc_jeq(role, "tool")) {
            rc = oc_dec_tool(r, m, mp, err);
        } else if (oc_jeq(role, "function")) {
            oc_unmapped(r, p, strlen(p));
            rc = 0;
        } else {
            return oc_bad_value(
                err, p, role, "'system', 'assistant', 'user', 'function', 'tool', and 'developer'");
        }
        if (rc)
            return rc;
        oc_pathf(p, "%s.name", mp);
        if (msg && (rc = oc_opt_str(r, m, "name", p, &msg->name, err)))
            return rc;
    }
    return 0;
}

/* tools[]: functions; other tool types are unmapped. */
static int oc_dec_tools(chat_request *r, const json_t *tools, chat_error *err)
{
    char p[OC_PARAM_MAX];
    int rc;
    if (!json_is_array(tools))
        return oc_bad_type(err, "tools", "an array", tools);
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *t = json_array_get(tools, i);
        oc_pathf(p, "tools[%zu]", i);
        if (!json_is_object(t))
            return oc_bad_type(err, p, "an object", t);
        json_t *type = json_object_get(t, "type");
        oc_pathf(p, "tools[%zu].type", i);
        if (!type)
            return oc_missing(err, p);
        if (!json_is_string(type))
            return oc_bad_type(err, p, "a string", type);
        if (!oc_jeq(type, "function")) {
            oc_unmapped(r, p, strlen(p));
            continue;
        }
        json_t *fn = json_object_get(t, "function");
        oc_pathf(p, "tools[%zu].function", i);
        if (!fn)
            return oc_missing(err, p);
        if (!json_is_object(fn))
            return oc_bad_type(err, p, "an object", fn);
        chat_tool *tool = chat_add_tool(r);
        if (!tool)
            return -ENOMEM;
        json_t *name = json_object_get(fn, "name"), *params = oc_get(fn, "parameters");
        json_t *strict = oc_get(fn, "strict");
        oc_pathf(p, "tools[%zu].function.name", i);
        if (!name)
            return oc_missing(err, p);
        if (!json_is_string(name))
            return oc_bad_type(err, p, "a string", name);
        if ((rc = oc_strdup_j(r, name, &tool->name)))
            return rc;
        oc_pathf(p, "tools[%zu].function.description", i);
        if ((rc = oc_opt_str(r, fn, "description", p, &tool->description, err)))
            return rc;
        oc_pathf(p, "tools[%zu].function.parameters", i);
        if (params && !json_is_object(params))
            return oc_bad_type(err, p, "an object", params);
        tool->parameters = json_incref(params);
        oc_pathf(p, "tools[%zu].function.strict", i);
        if (strict && !json_is_boolean(strict))
            return oc_bad_type(err, p, "a boolean", strict);
        tool->strict = json_is_true(strict);
    }
    return 0;
}

/* tool_choice: "auto" | "none" | "required" | {type function, function{name}}. */
static int oc_dec_tool_choice(chat_request *r, const json_t *tc, chat_error *err)
{
    if (json_is_string(tc)) {
        if (oc_jeq(tc, "auto"))
            r->tool_choice = CHAT_TOOL_CHOICE_AUTO;
        else if (oc_jeq(tc, "none"))
            r->tool_choice = CHAT_TOOL_CHOICE_NONE;
        else if (oc_jeq(tc, "required") || oc_jeq(tc, "any")) /* "any": Fireworks' alias */
            r->tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
        else
            return oc_bad_value(err, "tool_choice", tc, "'none', 'auto', and 'required'");
        return 0;
    }
    if (!json_is_object(tc))
        return oc_bad_type(err, "tool_choice", "one of a string or object", tc);
    json_t *type = json_object_get(tc, "type");
    if (!type)
        return oc_missing(err, "tool_choice.type");
    if (!json_is_string(type))
        return oc_bad_type(err, "tool_choice.type", "a string", type);
    if (oc_jeq(type, "allowed_tools") || oc_jeq(type, "custom")) {
        chat_set_unmapped(r, "tool_choice");
        return 0;
    }
    if (!oc_jeq(type, "function"))
        return oc_bad_value(err, "tool_choice.type", type,
                            "'function', 'allowed_tools', and 'custom'");
    json_t *fn = json_object_get(tc, "function");
    if (!fn)
        return oc_missing(err, "tool_choice.function");
    if (!json_is_object(fn))
        return oc_bad_type(err, "tool_choice.function", "an object", fn);
    json_t *name = json_object_get(fn, "name");
    if (!name)
        return oc_missing(err, "tool_choice.function.name");
    if (!json_is_string(name))
        return oc_bad_type(err, "tool_choice.function.name", "a string", name);
    r->tool_choice = CHAT_TOOL_CHOICE_NAMED;
    return oc_strdup_j(r, name, &r->tool_choice_name);
}

/* response_format: text, json_object, json_schema{name, schema}. */
static int oc_dec_response_format(chat_request *r, const json_t *rf, chat_error *err)
{
    if (!json_is_object(rf))
        return oc_bad_type(err, "response_format", "an object", rf);
    json_t *type = json_object_get(rf, "type");
    if (!type)
        return oc_missing(err, "response_format.type");
    if (!json_is_string(type))
        return oc_bad_type(err, "response_format.type", "a string", type);
    if (oc_jeq(type, "text")) {
        r->resp_format = CHAT_RESP_TEXT;
        return 0;
    }
    if (oc_jeq(type, "json_object")) {
        r->resp_format = CHAT_RESP_JSON_OBJECT;
        return 0;
    }
    if (!oc_jeq(type, "json_schema"))
        return oc_bad_value(err, "response_format.type", type,
                            "'text', 'json_object', and 'json_schema'");
    json_t *js = json_object_get(rf, "json_schema");
    if (!js)
        return oc_missing(err, "response_format.json_schema");
    if (!json_is_object(js))
        return oc_bad_type(err, "response_format.json_schema", "an object", js);
    json_t *name = json_object_get(js, "name"), *schema = oc_get(js, "schema");
    if (!name)
        return oc_missing(err, "response_format.json_schema.name");
    if (!json_is_string(name))
        return oc_bad_type(err, "response_format.json_schema.name", "a string", name);
    if (schema && !json_is_object(schema))
        return oc_bad_type(err, "response_format.json_schema.schema", "an object", schema);
    r->resp_format = CHAT_RESP_JSON_SCHEMA;
    json_decref(r->response_schema);
    r->response_schema = json_incref(schema);
    return oc_strdup_j(r, name, &r->response_schema_name);
}

/* stop: a string or an array of strings. */
static int oc_dec_stop(chat_request *r, const json_t *stop, chat_error *err)
{
    char p[OC_PARAM_MAX];
    if (json_is_string(stop))
        return chat_add_stop(r, json_string_value(stop), json_string_length(stop));
    if (!json_is_array(stop))
        return oc_bad_type(err, "stop", "one of a string or array of strings", stop);
    for (size_t i = 0; i < json_array_size(stop); i++) {
        json_t *s = json_array_get(stop, i);
        oc_pathf(p, "stop[%zu]", i);
        if (!json_is_string(s))
            return oc_bad_type(err, p, "a string", s);
        if (chat_add_stop(r, json_string_value(s), json_string_length(s)))
            return -ENOMEM;
    }
    return 0;
}

/* Top-level members this decoder knows: mapped, ignored, or unmapped when set. */
static const char *const oc_known_keys[] = {
    /* mapped */
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "user",
    /* ignored: they do not change the answer */
    "store",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "usage",
    /* unmapped when set to a value that changes the answer (oc_dec_top_unmapped) */
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
    "audio",
    "prediction",
    "reasoning_effort",
    "verbosity",
    "web_search_options",
    "functions",
    "function_call",
};

/* Members with no place in the model: recorded as unmapped when they
 * would change the answer; every unknown non-null member too. */
static int oc_dec_top_unmapped(chat_request *r, const json_t *root, chat_error *err)
{
    static const char *const when_set[] = {"audio",        "prediction",         "reasoning_effort",
                                           "verbosity",    "web_search_options", "functions",
                                           "function_call"};
    json_t *v;
    if ((v = oc_get(root, "logprobs"))) {
        if (!json_is_boolean(v))
            return oc_bad_type(err, "logprobs", "a boolean", v);
        if (json_is_true(v))
            chat_set_unmapped(r, "logprobs");
    }
    if ((v = oc_get(root, "top_logprobs"))) {
        if (!json_is_integer(v))
            return oc_bad_type(err, "top_logprobs", "an integer", v);
        if (json_integer_value(v) != 0)
            chat_set_unmapped(r, "top_logprobs");
    }
    if ((v = oc_get(root, "logit_bias"))) {
        if (!json_is_object(v))
            return oc_bad_type(err, "logit_bias", "an object", v);
        if (json_object_size(v))
            chat_set_unmapped(r, "logit_bias");
    }
    if ((v = oc_get(root, "modalities"))) {
        if (!json_is_array(v))
            return oc_bad_type(err, "modalities", "an array", v);
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!oc_jeq(json_array_get(v, i), "text"))
                chat_set_unmapped(r, "modalities");
    }
    for (size_t i = 0; i < sizeof when_set / sizeof when_set[0]; i++)
        if (oc_get(root, when_set[i]))
            chat_set_unmapped(r, when_set[i]);

    for (void *it = json_object_iter((json_t *)root); it;
         it = json_object_iter_next((json_t *)root, it)) {
        const char *k = json_object_iter_key(it);
        size_t kl = json_object_iter_key_len(it);
        bool known = false;
        for (size_t i = 0; i < sizeof oc_known_keys / sizeof oc_known_keys[0] && !known; i++)
            known = oc_eq(k, kl, oc_known_keys[i]);
        if (!known && !json_is_null(json_object_iter_value(it)))
            oc_unmapped(r, k, kl);
    }
    return 0;
}

/* chat_format.req_decode: an OpenAI chat-completions request body. */
static int oc_req_decode(const char *body, size_t n, chat_request *r, chat_error *err)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, n, OC_JFLAGS, &jerr), *v;
    int64_t mct = -1, mt = -1;
    int b, rc;

    if (!root) {
        char why[128];
        chat_text_copy(why, sizeof why, jerr.text, strlen(jerr.text));
        return oc_fail(err, NULL, NULL,
                       "We could not parse the JSON body of your request: %s at byte %d. (HINT: "
                       "This likely means you aren't using your HTTP library correctly.)",
                       why, jerr.position);
    }
    if (!json_is_object(root)) {
        rc = oc_fail(err, NULL, "invalid_type",
                     "The request body must be a JSON object, but got %s instead.",
                     oc_type_phrase(root));
        goto out;
    }

    v = json_object_get(root, "model");
    if (!v) {
        rc = oc_missing(err, "model");
        goto out;
    }
    if (!json_is_string(v)) {
        rc = oc_bad_type(err, "model", "a string", v);
        goto out;
    }
    if (json_string_length(v) == 0) {
        rc = oc_fail(err, "model", "empty_string",
                     "Invalid 'model': empty string. Expected a model name.");
        goto out;
    }
    OC_TRY(oc_strdup_j(r, v, &r->model));

    v = json_object_get(root, "messages");
    if (!v) {
        rc = oc_missing(err, "messages");
        goto out;
    }
    if (!json_is_array(v)) {
        rc = oc_bad_type(err, "messages", "an array of objects", v);
        goto out;
    }
    if (json_array_size(v) == 0) {
        rc = oc_fail(err, "messages", "empty_array",
                     "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                     "but got an empty array instead.");
        goto out;
    }
    OC_TRY(oc_dec_messages(r, v, err));

    OC_TRY(oc_opt_bool(root, "stream", &b, err));
    r->stream = b == 1;
    if ((v = oc_get(root, "stream_options"))) {
        json_t *iu = oc_get(v, "include_usage");
        if (!json_is_object(v)) {
            rc = oc_bad_type(err, "stream_options", "an object", v);
            goto out;
        }
        if (iu && !json_is_boolean(iu)) {
            rc = oc_bad_type(err, "stream_options.include_usage", "a boolean", iu);
            goto out;
        }
        r->include_usage = json_is_true(iu);
    }
    OC_TRY(oc_opt_int(root, "max_completion_tokens", 1, INT64_MAX, &mct, err));
    OC_TRY(oc_opt_int(root, "max_tokens", 1, INT64_MAX, &mt, err));
    r->max_tokens = mct >= 0 ? mct : mt;
    OC_TRY(oc_opt_num(root, "temperature", 0, 2, &r->temperature, err));
    OC_TRY(oc_opt_num(root, "top_p", 0, 1, &r->top_p, err));
    OC_TRY(oc_opt_num(root, "frequency_penalty", -2, 2, &r->frequency_penalty, err));
    OC_TRY(oc_opt_num(root, "presence_penalty", -2, 2, &r->presence_penalty, err));
    OC_TRY(oc_opt_int(root, "seed", INT64_MIN, INT64_MAX, &r->seed, err));
    OC_TRY(oc_opt_int(root, "n", 1, OC_MAX_CHOICES, &r->n, err));
    if ((v = oc_get(root, "stop")))
        OC_TRY(oc_dec_stop(r, v, err));
    if ((v = oc_get(root, "tools")))
        OC_TRY(oc_dec_tools(r, v, err));
    if ((v = oc_get(root, "tool_choice")))
        OC_TRY(oc_dec_tool_choice(r, v, err));
    OC_TRY(oc_opt_bool(root, "parallel_tool_calls", &r->parallel_tool_calls, err));
    if ((v = oc_get(root, "response_format")))
        OC_TRY(oc_dec_response_format(r, v, err));
    OC_TRY(oc_opt_str(r, root, "user", "user", &r->user, err));
    OC_TRY(oc_dec_top_unmapped(r, root, err));
out:
    json_decref(root);
    return rc;
}

/* ================================================================ request encode */

/* A tool call of the request with the id it is sent under. */
typedef struct oc_call {
    size_t msg; /* index of its assistant message */
    const chat_part *part;
    size_t off, len; /* its encoded id in oc_calls.ids */
    bool answered;   /* a tool result used this id already */
} oc_call;

typedef struct oc_calls {
    oc_call *v;
    size_t n;
    buf ids;
} oc_calls;

/* Encodes the id of every tool call once (a call without an id gets a
 * generated one, which its result must then reuse). */
static int oc_calls_build(const chat_request *r, oc_calls *c)
{
    size_t total = 0;
    buf_init(&c->ids, OC_IDS_MAX);
    c->v = NULL;
    c->n = 0;
    for (size_t i = 0; i < r->nmsgs; i++)
        for (size_t j = 0; j < r->msgs[i].nparts; j++)
            total += r->msgs[i].parts[j].type == CHAT_PART_TOOL_CALL;
    if (!total)
        return 0;
    c->v = calloc(total, sizeof *c->v);
    if (!c->v)
        return -ENOMEM;
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        for (size_t j = 0; j < m->nparts; j++) {
            const chat_part *pt = &m->parts[j];
            if (pt->type != CHAT_PART_TOOL_CALL)
                continue;
            oc_call *x = &c->v[c->n++];
            x->msg = i;
            x->part = pt;
            x->off = c->ids.len;
            int rc = chat_tool_id_encode(&c->ids, "call_", slice_make(pt->id.p, pt->id.len),
                                         slice_make(pt->signature.p, pt->signature.len));
            if (rc)
                return rc;
            x->len = c->ids.len - x->off;
        }
    }
    return 0;
}

/* Releases what oc_calls_build() made. */
static void oc_calls_free(oc_calls *c)
{
    free(c->v);
    buf_free(&c->ids);
}

/* Two arena strings are equal (bytes and length). */
static bool oc_str_eq(chat_str a, chat_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* The call a tool result (in message msg) answers: the latest earlier
 * call with its id; for a result without an id, the first unanswered
 * earlier call with its name (or any name when it has none). NULL when
 * none matches. */
static oc_call *oc_calls_find(oc_calls *c, const chat_part *res, size_t msg)
{
    if (res->id.len) {
        for (size_t k = c->n; k-- > 0;)
            if (c->v[k].msg < msg && oc_str_eq(c->v[k].part->id, res->id)) {
                c->v[k].answered = true;
                return &c->v[k];
            }
        return NULL;
    }
    for (size_t k = 0; k < c->n; k++) {
        oc_call *x = &c->v[k];
        if (x->msg < msg && !x->answered && x->part->id.len == 0 &&
            (!res->name.len || oc_str_eq(x->part->name, res->name))) {
            x->answered = true;
            return x;
        }
    }
    return NULL;
}

/* An image part: {type image_url, image_url{url (data URL or http), detail?}}. */
static int oc_enc_image(buf *out, const chat_part *pt)
{
    int rc;
    OC_TRY(oc_put(out, "{\"type\":\"image_url\",\"image_url\":{\"url\":"));
    if (pt->url.p) {
        OC_TRY(oc_put_cstr(out, pt->url));
    } else {
        OC_TRY(oc_put(out, "\"data:"));
        OC_TRY(buf_append_json_escaped(out, pt->media_type.p ? pt->media_type.p : "",
                                       pt->media_type.len)
                   ? -E2BIG
                   : 0);
        OC_TRY(oc_put(out, ";base64,"));
        OC_TRY(buf_append_json_escaped(out, pt->data.p ? pt->data.p : "", pt->data.len) ? -E2BIG
                                                                                        : 0);
        OC_TRY(oc_put(out, "\""));
    }
    if (pt->detail.p) {
        OC_TRY(oc_put(out, ",\"detail\":"));
        OC_TRY(oc_put_cstr(out, pt->detail));
    }
    rc = oc_put(out, "}}");
out:
    return rc;
}

/* ,"name":"..." for a message with a name. */
static int oc_enc_name(buf *out, const chat_msg *m)
{
    int rc = 0;
    if (m->name.p && ((rc = oc_put(out, ",\"name\":")) || (rc = oc_put_cstr(out, m->name))))
        return rc;
    return 0;
}

/* A system or user message; images only for a user. */
static int oc_enc_plain(buf *out, const chat_msg *m, size_t i, chat_error *err)
{
    char p[OC_PARAM_MAX];
    size_t ntext = 0, nkept = 0;
    int rc;
    bool user = m->role == CHAT_ROLE_USER;
    oc_pathf(p, "messages[%zu].content", i);
    for (size_t j = 0; j < m->nparts; j++) {
        chat_part_type t = m->parts[j].type;
        if (t == CHAT_PART_THINKING)
            continue;
        if (t != CHAT_PART_TEXT && !(user && t == CHAT_PART_IMAGE))
            return oc_fail(err, p, "invalid_value",
                           "Invalid '%s': this part cannot be translated to OpenAI (%s messages "
                           "take %s).",
                           p, user ? "user" : "system", user ? "text and images" : "text only");
        ntext += t == CHAT_PART_TEXT;
        nkept++;
    }
    OC_TRY(oc_put(out,
                  user ? "{\"role\":\"user\",\"content\":" : "{\"role\":\"system\",\"content\":"));
    if (nkept == 0) {
        OC_TRY(oc_put(out, "\"\""));
    } else if (nkept == 1 && ntext == 1) {
        for (size_t j = 0; j < m->nparts; j++)
            if (m->parts[j].type == CHAT_PART_TEXT)
                OC_TRY(oc_put_cstr(out, m->parts[j].text));
    } else {
        bool first = true;
        OC_TRY(oc_put(out, "["));
        for (size_t j = 0; j < m->nparts; j++) {
            const chat_part *pt = &m->parts[j];
            if (pt->type == CHAT_PART_THINKING)
                continue;
            if (!first)
                OC_TRY(oc_put(out, ","));
            first = false;
            if (pt->type == CHAT_PART_TEXT) {
                OC_TRY(oc_put(out, "{\"type\":\"text\",\"text\":"));
                OC_TRY(oc_put_cstr(out, pt->text));
                OC_TRY(oc_put(out, "}"));
            } else {
                OC_TRY(oc_enc_image(out, pt));
            }
        }
        OC_TRY(oc_put(out, "]"));
    }
    OC_TRY(oc_enc_name(out, m));
    rc = oc_put(out, "}");
out:
    return rc;
}

/* An assistant message: text joined, tool calls; thinking dropped. */
static int oc_enc_assistant(buf *out, const chat_msg *m, size_t i, oc_calls *calls, chat_error *err)
{
    char p[OC_PARAM_MAX];
    size_t ntext = 0, ncalls = 0;
    int rc;
    oc_pathf(p, "messages[%zu].content", i);
    for (size_t j = 0; j < m->nparts; j++) {
        chat_part_type t = m->parts[j].type;
        if (t == CHAT_PART_IMAGE || t == CHAT_PART_TOOL_RESULT)
            return oc_fail(err, p, "invalid_value",
                           "Invalid '%s': this part cannot be translated to OpenAI (assistant "
                           "messages take text and tool calls).",
                           p);
        ntext += t == CHAT_PART_TEXT;
        ncalls += t == CHAT_PART_TOOL_CALL;
    }
    OC_TRY(oc_put(out, "{\"role\":\"assistant\",\"content\":"));
    if (ntext) {
        OC_TRY(oc_put(out, "\""));
        for (size_t j = 0; j < m->nparts; j++)
            if (m->parts[j].type == CHAT_PART_TEXT &&
                buf_append_json_escaped(out, m->parts[j].text.p ? m->parts[j].text.p : "",
                                        m->parts[j].text.len)) {
                rc = -E2BIG;
                goto out;
            }
        OC_TRY(oc_put(out, "\""));
    } else {
        OC_TRY(oc_put(out, ncalls ? "null" : "\"\""));
    }
    OC_TRY(oc_enc_name(out, m));
    if (ncalls) {
        bool first = true;
        OC_TRY(oc_put(out, ",\"tool_calls\":["));
        for (size_t k = 0; k < calls->n; k++) {
            const oc_call *c = &calls->v[k];
            if (c->msg != i)
                continue;
            OC_TRY(oc_put(out, first ? "{\"id\":" : ",{\"id\":"));
            first = false;
            OC_TRY(chat_json_str(out, calls->ids.data + c->off, c->len));
            OC_TRY(oc_put(out, ",\"type\":\"function\",\"function\":{\"name\":"));
            OC_TRY(oc_put_cstr(out, c->part->name));
            OC_TRY(oc_put(out, ",\"arguments\":"));
            if (c->part->args.len)
                OC_TRY(oc_put_cstr(out, c->part->args));
            else
                OC_TRY(oc_put(out, "\"{}\""));
            OC_TRY(oc_put(out, "}}"));
        }
        OC_TRY(oc_put(out, "]"));
    }
    rc = oc_put(out, "}");
out:
    return rc;
}

/* A TOOL message: one role "tool" message per result. */
static int oc_enc_tool(buf *out, const chat_msg *m, size_t i, oc_calls *calls, bool *first,
                       chat_error *err)
{
    char p[OC_PARAM_MAX];
    int rc = 0;
    for (size_t j = 0; j < m->nparts; j++) {
        const chat_part *pt = &m->parts[j];
        if (pt->type != CHAT_PART_TOOL_RESULT) {
            oc_pathf(p, "messages[%zu].content", i);
            return oc_fail(err, p, "invalid_value",
                           "Invalid '%s': a tool message holds only tool results.", p);
        }
        const oc_call *c = oc_calls_find(calls, pt, i);
        if (!*first)
            OC_TRY(oc_put(out, ","));
        *first = false;
        OC_TRY(oc_put(out, "{\"role\":\"tool\",\"tool_call_id\":"));
        if (c) {
            OC_TRY(chat_json_str(out, calls->ids.data + c->off, c->len));
        } else {
            buf id;
            buf_init(&id, OC_ID_MAX);
            rc = chat_tool_id_encode(&id, "call_", slice_make(pt->id.p, pt->id.len),
                                     slice_make(NULL, 0));
            if (!rc)
                rc = chat_json_str(out, id.data, id.len);
            buf_free(&id);
            if (rc)
                goto out;
        }
        OC_TRY(oc_put(out, ",\"content\":"));
        OC_TRY(oc_put_cstr(out, pt->text));
        OC_TRY(oc_put(out, "}"));
    }
out:
    return rc;
}

/* ,"messages":[...] for every message of r. */
static int oc_enc_messages(const chat_request *r, buf *out, chat_error *err)
{
    oc_calls calls;
    bool first = true;
    int rc;
    OC_TRY(oc_calls_build(r, &calls));
    OC_TRY(oc_put(out, ",\"messages\":["));
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        if (m->role == CHAT_ROLE_TOOL) {
            OC_TRY(oc_enc_tool(out, m, i, &calls, &first, err));
            continue;
        }
        if (!first)
            OC_TRY(oc_put(out, ","));
        first = false;
        if (m->role == CHAT_ROLE_ASSISTANT)
            OC_TRY(oc_enc_assistant(out, m, i, &calls, err));
        else
            OC_TRY(oc_enc_plain(out, m, i, err));
    }
    rc = oc_put(out, "]");
out:
    oc_calls_free(&calls);
    return rc;
}

/* ,"tools":[...] when r has tools. */
static int oc_enc_tools(const chat_request *r, buf *out)
{
    int rc = 0;
    if (!r->ntools)
        return 0;
    OC_TRY(oc_put(out, ",\"tools\":["));
    for (size_t i = 0; i < r->ntools; i++) {
        const chat_tool *t = &r->tools[i];
        OC_TRY(oc_put(out, i ? ",{\"type\":\"function\",\"function\":{\"name\":"
                             : "{\"type\":\"function\",\"function\":{\"name\":"));
        OC_TRY(oc_put_cstr(out, t->name));
        if (t->description.p) {
            OC_TRY(oc_put(out, ",\"description\":"));
            OC_TRY(oc_put_cstr(out, t->description));
        }
        if (t->parameters) {
            OC_TRY(oc_put(out, ",\"parameters\":"));
            OC_TRY(chat_json_dump(out, t->parameters));
        }
        if (t->strict)
            OC_TRY(oc_put(out, ",\"strict\":true"));
        OC_TRY(oc_put(out, "}}"));
    }
    rc = oc_put(out, "]");
out:
    return rc;
}

/* ,"name":<number> for a number that is set. */
static int oc_enc_num(buf *out, const char *name, double v)
{
    int rc;
    if (isnan(v))
        return 0;
    if ((rc = buf_printf(out, ",\"%s\":", name) ? -E2BIG : 0))
        return rc;
    return oc_put_double(out, v);
}

/* ,"name":<integer> for an integer that is set (>= 0). */
static int oc_enc_int(buf *out, const char *name, int64_t v)
{
    if (v < 0)
        return 0;
    return buf_printf(out, ",\"%s\":%" PRId64, name, v) ? -E2BIG : 0;
}

/* chat_format.req_encode: the body for an OpenAI-compatible upstream. */
static int oc_req_encode(const chat_request *r, const chat_target *t, buf *out, chat_error *err)
{
    size_t start = out->len;
    int rc;

    if (r->unmapped[0]) {
        chat_error_invalid(err, r->unmapped, "parameter '%s' cannot be translated to OpenAI",
                           r->unmapped);
        return -EINVAL;
    }
    if (r->top_k >= 0) {
        chat_error_invalid(err, "top_k", "parameter 'top_k' cannot be translated to OpenAI");
        return -EINVAL;
    }
    if (r->thinking_budget >= 0) {
        chat_error_invalid(err, "thinking", "parameter 'thinking' cannot be translated to OpenAI");
        return -EINVAL;
    }

    OC_TRY(oc_put(out, "{\"model\":"));
    OC_TRY(chat_json_str(out, t->model, t->model ? t->model_len : 0));
    OC_TRY(oc_enc_messages(r, out, err));
    if (t->stream)
        OC_TRY(oc_put(out, ",\"stream\":true,\"stream_options\":{\"include_usage\":true}"));
    OC_TRY(oc_enc_int(out, "max_tokens", r->max_tokens));
    OC_TRY(oc_enc_num(out, "temperature", r->temperature));
    OC_TRY(oc_enc_num(out, "top_p", r->top_p));
    OC_TRY(oc_enc_num(out, "frequency_penalty", r->frequency_penalty));
    OC_TRY(oc_enc_num(out, "presence_penalty", r->presence_penalty));
    if (r->seed != -1)
        OC_TRY(buf_printf(out, ",\"seed\":%" PRId64, r->seed) ? -E2BIG : 0);
    OC_TRY(oc_enc_int(out, "n", r->n));
    if (r->nstop) {
        OC_TRY(oc_put(out, ",\"stop\":["));
        for (size_t i = 0; i < r->nstop; i++) {
            if (i)
                OC_TRY(oc_put(out, ","));
            OC_TRY(oc_put_cstr(out, r->stop[i]));
        }
        OC_TRY(oc_put(out, "]"));
    }
    OC_TRY(oc_enc_tools(r, out));
    /* OpenAI refuses tool_choice and parallel_tool_calls without tools
     * ("only allowed when 'tools' are specified"): they say nothing then */
    switch (r->ntools ? r->tool_choice : CHAT_TOOL_CHOICE_UNSET) {
    case CHAT_TOOL_CHOICE_UNSET:
        break;
    case CHAT_TOOL_CHOICE_AUTO:
        OC_TRY(oc_put(out, ",\"tool_choice\":\"auto\""));
        break;
    case CHAT_TOOL_CHOICE_NONE:
        OC_TRY(oc_put(out, ",\"tool_choice\":\"none\""));
        break;
    case CHAT_TOOL_CHOICE_REQUIRED:
        OC_TRY(oc_put(out, ",\"tool_choice\":\"required\""));
        break;
    case CHAT_TOOL_CHOICE_NAMED:
        OC_TRY(oc_put(out, ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":"));
        OC_TRY(oc_put_cstr(out, r->tool_choice_name));
        OC_TRY(oc_put(out, "}}"));
        break;
    }
    if (r->ntools && r->parallel_tool_calls >= 0)
        OC_TRY(oc_put(out, r->parallel_tool_calls ? ",\"parallel_tool_calls\":true"
                                                  : ",\"parallel_tool_calls\":false"));
    if (r->resp_format == CHAT_RESP_JSON_OBJECT) {
        OC_TRY(oc_put(out, ",\"response_format\":{\"type\":\"json_object\"}"));
    } else if (r->resp_format == CHAT_RESP_JSON_SCHEMA) {
        /* name is required by OpenAI; strict is not sent (the schema may
         * not meet strict mode's rules, and no other format carries it) */
        OC_TRY(oc_put(out,
                      ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":"));
        if (r->response_schema_name.len)
            OC_TRY(oc_put_cstr(out, r->response_schema_name));
        else
            OC_TRY(oc_put(out, "\"response\""));
        if (r->response_schema) {
            OC_TRY(oc_put(out, ",\"schema\":"));
            OC_TRY(chat_json_dump(out, r->response_schema));
        }
        OC_TRY(oc_put(out, "}}"));
    }
    if (r->user.p) {
        OC_TRY(oc_put(out, ",\"user\":"));
        OC_TRY(oc_put_cstr(out, r->user));
    }
    rc = oc_put(out, "}");
out:
    if (rc)
        oc_truncate(out, start);
    return rc;
}

/* chat_format.req_path: the same path for every model. */
static int oc_req_path(const chat_target *t, buf *out)
{
    return oc_put(out, "/chat/completions");
}

/* chat_format.req_auth_headers: a bearer token (nothing without a key). */
static int oc_req_auth_headers(const char *api_key, buf *out)
{
    if (!api_key)
        return 0;
    size_t start = out->len;
    int rc = buf_printf(out, "Authorization: Bearer %s\r\n", api_key) ? -E2BIG : 0;
    if (rc)
        oc_truncate(out, start);
    return rc;
}

/* ================================================================ errors (decode) */

/* Parses "try again in 1.574s" / "20ms" / "6m0s" in an OpenAI message. */
static int64_t oc_retry_hint(const char *msg)
{
    static const char mark[] = "try again in ";
    const char *p = strstr(msg, mark);
    int64_t total = 0;
    bool any = false;
    if (!p)
        return -1;
    p += sizeof mark - 1;
    while (*p >= '0' && *p <= '9') {
        int64_t whole = 0, milli = 0, scale = 100;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits++ < 9)
                whole = whole * 10 + (*p - '0');
            p++;
        }
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') {
                milli += (*p - '0') * scale;
                scale /= 10;
                p++;
            }
        }
        int64_t thousandths = whole * 1000 + milli; /* value x 1000 */
        if (p[0] == 'm' && p[1] == 's') {
            total += (thousandths + 999) / 1000;
            p += 2;
        } else if (p[0] == 's') {
            total += thousandths;
            p++;
        } else if (p[0] == 'm') {
            total += thousandths * 60;
            p++;
        } else if (p[0] == 'h') {
            total += thousandths * 3600;
            p++;
        } else {
            break;
        }
        any = true;
    }
    return any ? total : -1;
}

/* The HTTP status an in-stream error stands for (it came on a 200). */
static int oc_status_of_error(const json_t *eo)
{
    json_t *code = json_object_get(eo, "code");
    if (json_is_integer(code) && json_integer_value(code) >= 400 && json_integer_value(code) <= 599)
        return (int)json_integer_value(code);
    json_t *type = json_object_get(eo, "type");
    if (oc_jeq(type, "invalid_request_error"))
        return 400;
    if (oc_jeq(type, "tokens") || oc_jeq(type, "requests") || oc_jeq(type, "rate_limit_error") ||
        oc_jeq(type, "insufficient_quota") || oc_jeq(code, "rate_limit_exceeded"))
        return 429;
    return 500;
}

/* Fills e from an OpenAI (or OpenRouter) error object. */
static void oc_error_from(int status, const json_t *eo, chat_error *e)
{
    json_t *msg = json_object_get(eo, "message"), *type = json_object_get(eo, "type");
    json_t *code = json_object_get(eo, "code"), *param = json_object_get(eo, "param");
    memset(e, 0, sizeof *e);
    e->status = status;
    e->kind = chat_err_kind_of_status(status);
    e->retry_after_ms = -1;
    if (json_is_string(msg)) {
        chat_text_copy(e->message, sizeof e->message, json_string_value(msg),
                     json_string_length(msg));
        e->retry_after_ms = oc_retry_hint(e->message);
    }
    if (json_is_string(type))
        chat_text_copy(e->type, sizeof e->type, json_string_value(type), json_string_length(type));
    if (json_is_string(code))
        chat_text_copy(e->code, sizeof e->code, json_string_value(code), json_string_length(code));
    else if (json_is_integer(code))
        snprintf(e->code, sizeof e->code, "%" JSON_INTEGER_FORMAT, json_integer_value(code));
    if (json_is_string(param))
        chat_text_copy(e->param, sizeof e->param, json_string_value(param),
                     json_string_length(param));
    /* quota exhausted arrives as a 429 but retrying does not help */
    if (oc_jeq(code, "insufficient_quota") || oc_jeq(type, "insufficient_quota"))
        e->kind = CHAT_ERR_BILLING;
    if (!e->message[0])
        snprintf(e->message, sizeof e->message, "upstream error (HTTP %d)", status);
}

/* chat_format.error_decode: OpenAI/OpenRouter error bodies, or anything. */
static void oc_error_decode(int status, const char *body, size_t n, chat_error *e)
{
    json_t *root = n ? json_loadb(body, n, OC_JFLAGS, NULL) : NULL;
    json_t *eo = json_object_get(root, "error");
    if (json_is_object(eo)) {
        oc_error_from(status, eo, e);
    } else {
        memset(e, 0, sizeof *e);
        e->status = status;
        e->kind = chat_err_kind_of_status(status);
        e->retry_after_ms = -1;
        if (json_is_string(eo)) { /* {"error": "..."} from some compatible servers */
            chat_text_copy(e->message, sizeof e->message, json_string_value(eo),
                         json_string_length(eo));
        } else if (n == 0) {
            snprintf(e->message, sizeof e->message, "upstream returned HTTP %d with an empty body",
                     status);
        } else {
            char quote[200];
            chat_text_copy(quote, sizeof quote, body, n);
            snprintf(e->message, sizeof e->message, "upstream returned HTTP %d: %s", status, quote);
        }
    }
    json_decref(root);
}

/* ================================================================ answer decode */

/* A tool call index of the stream, mapped to ev.tool. */
typedef struct oc_tool_map {
    int choice;
    int64_t index; /* OpenAI's delta.tool_calls[].index */
    int tool;      /* ours: per choice, from 0 in order of appearance */
} oc_tool_map;

/* One choice's state, decoding or encoding. */
typedef struct oc_choice {
    int next_tool;  /* dec: the next ev.tool of this choice */
    bool finished;  /* FINISH seen (dec) / finish chunk written (enc) */
    bool role_sent; /* enc: the {"role":"assistant"} chunk was written */
    bool any_tool;  /* enc: a tool call was written */
    int open_tool;  /* enc: the last tool call started, -1 when none */
    bool open_args; /* enc: it got an arguments fragment */
} oc_choice;

enum { OC_DEC = 1, OC_ENC = 2 };

struct chat_stream {
    int kind;           /* OC_DEC or OC_ENC */
    oc_choice *choices; /* by choice index, grown on demand */
    size_t nchoices;
    /* decoder */
    bool started; /* START emitted */
    bool done;    /* [DONE] seen: END emitted */
    oc_tool_map *tools;
    size_t ntools, captools;
    /* encoder */
    bool include_usage; /* the caller asked for the usage chunk */
    bool over;          /* [DONE] or an error was written: nothing more */
    bool have_head;     /* head is built */
    int64_t created;    /* "created" of every chunk */
    buf model;          /* the request's model */
    buf id;             /* START's id */
    buf start_model;    /* START's model */
    buf head;           /* `data: {"id":...,"choices":[` */
    chat_usage usage;   /* latest usage seen */
    buf text;           /* decoder: a delta's content decoded by the fast path */
};

/* The state of choice i, created (with those before it) when new; NULL
 * past OC_MAX_CHOICES or out of memory. */
static oc_choice *oc_choice_at(chat_stream *s, int i)
{
    if (i < 0 || i >= OC_MAX_CHOICES)
        return NULL;
    if ((size_t)i >= s->nchoices) {
        oc_choice *c = realloc(s->choices, ((size_t)i + 1) * sizeof *c);
        if (!c)
            return NULL;
        for (size_t k = s->nchoices; k <= (size_t)i; k++) {
            memset(&c[k], 0, sizeof c[k]);
            c[k].open_tool = -1;
        }
        s->choices = c;
        s->nchoices = (size_t)i + 1;
    }
    return &s->choices[i];
}

/* chat_format.stream_free: either kind of stream. */
static void oc_stream_free(chat_stream *s)
{
    if (!s)
        return;
    free(s->choices);
    free(s->tools);
    buf_free(&s->model);
    buf_free(&s->id);
    buf_free(&s->start_model);
    buf_free(&s->head);
    buf_free(&s->text);
    free(s);
}

/* chat_format.stream_dec_new. */
static chat_stream *oc_stream_dec_new(void)
{
    chat_stream *s = calloc(1, sizeof *s);
    if (s) {
        s->kind = OC_DEC;
        buf_init(&s->text, (size_t)64 * 1024 * 1024);
    }
    return s;
}

/* A zeroed event of a type, usage unset. */
static chat_event oc_ev(chat_ev_type type, int choice)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = type;
    ev.choice = choice;
    chat_usage_unset(&ev.usage);
    return ev;
}

/* finish_reason normalized (the native value travels with it). */
static chat_finish oc_finish_of(slice f)
{
    if (slice_eq(f, "stop"))
        return CHAT_FINISH_STOP;
    if (slice_eq(f, "length"))
        return CHAT_FINISH_LENGTH;
    if (slice_eq(f, "tool_calls") || slice_eq(f, "function_call"))
        return CHAT_FINISH_TOOL_CALLS;
    if (slice_eq(f, "content_filter"))
        return CHAT_FINISH_CONTENT_FILTER;
    return CHAT_FINISH_OTHER;
}

/* A usage object normalized; absent numbers stay -1. */
static void oc_usage_read(const json_t *u, chat_usage *out)
{
    json_t *pd = json_object_get(u, "prompt_tokens_details");
    json_t *cd = json_object_get(u, "completion_tokens_details");
    chat_usage_unset(out);
    out->input = oc_count(u, "prompt_tokens");
    out->output = oc_count(u, "completion_tokens");
    out->cache_read = oc_count(pd, "cached_tokens");
    out->cache_write = oc_count(pd, "cache_write_tokens");
    out->reasoning = oc_count(cd, "reasoning_tokens");
}

/* A text-like event for a non-empty JSON string. */
static int oc_emit_text(chat_ev_type type, int choice, const json_t *v, chat_emit_fn emit, void *ud)
{
    if (!json_is_string(v) || json_string_length(v) == 0)
        return 0;
    chat_event ev = oc_ev(type, choice);
    ev.text = oc_jslice(v);
    return emit(ud, &ev);
}

/* The reasoning of a delta or message: reasoning_content, else the
 * OpenRouter/vLLM `reasoning` string (never both: some servers send both). */
static int oc_emit_reasoning(int choice, const json_t *d, chat_emit_fn emit, void *ud)
{
    json_t *rc = json_object_get(d, "reasoning_content");
    if (json_is_string(rc) && json_string_length(rc))
        return oc_emit_text(CHAT_EV_THINKING, choice, rc, emit, ud);
    return oc_emit_text(CHAT_EV_THINKING, choice, json_object_get(d, "reasoning"), emit, ud);
}

/* ev.tool for a stream's (choice, index); *fresh when first seen. */
static int oc_tool_of(chat_stream *s, int choice, int64_t index, bool *fresh)
{
    for (size_t k = 0; k < s->ntools; k++)
        if (s->tools[k].choice == choice && s->tools[k].index == index) {
            *fresh = false;
            return s->tools[k].tool;
        }
    oc_choice *c = oc_choice_at(s, choice);
    if (!c || s->ntools >= OC_MAX_TOOLS)
        return -EINVAL;
    if (s->ntools == s->captools) {
        size_t nc = s->captools ? s->captools * 2 : 8;
        oc_tool_map *t = realloc(s->tools, nc * sizeof *t);
        if (!t)
            return -ENOMEM;
        s->tools = t;
        s->captools = nc;
    }
    s->tools[s->ntools++] = (oc_tool_map){choice, index, c->next_tool};
    *fresh = true;
    return c->next_tool++;
}

/* The delta.tool_calls fragments of one chunk choice. */
static int oc_dec_tool_deltas(chat_stream *s, int choice, const json_t *calls, chat_emit_fn emit,
                              void *ud)
{
    int rc;
    for (size_t j = 0; j < json_array_size(calls); j++) {
        json_t *tc = json_array_get(calls, j), *ix = json_object_get(tc, "index");
        json_t *fn = json_object_get(tc, "function");
        if (!json_is_object(tc))
            continue;
        bool fresh;
        int tool = oc_tool_of(s, choice, json_is_integer(ix) ? json_integer_value(ix) : (int64_t)j,
                              &fresh);
        if (tool < 0)
            return tool;
        if (fresh) {
            chat_event ev = oc_ev(CHAT_EV_TOOL_START, choice);
            ev.tool = tool;
            ev.id = oc_jslice(json_object_get(tc, "id"));
            ev.text = oc_jslice(json_object_get(fn, "name"));
            if ((rc = emit(ud, &ev)))
                return rc;
        }
        json_t *args = json_object_get(fn, "arguments");
        if (json_is_string(args) && json_string_length(args)) {
            chat_event ev = oc_ev(CHAT_EV_TOOL_ARGS, choice);
            ev.tool = tool;
            ev.text = oc_jslice(args);
            if ((rc = emit(ud, &ev)))
                return rc;
        }
    }
    return 0;
}

/* One chat.completion.chunk (or an error chunk). */
static int oc_dec_chunk(chat_stream *s, const json_t *root, chat_emit_fn emit, void *ud)
{
    int rc;
    if (!s->started) {
        chat_event ev = oc_ev(CHAT_EV_START, 0);
        ev.id = oc_jslice(json_object_get(root, "id"));
        ev.model = oc_jslice(json_object_get(root, "model"));
        s->started = true;
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    json_t *choices = json_object_get(root, "choices");
    for (size_t i = 0; i < json_array_size(choices); i++) {
        json_t *ch = json_array_get(choices, i), *ix = json_object_get(ch, "index");
        if (!json_is_object(ch))
            continue;
        int64_t idx = json_is_integer(ix) ? json_integer_value(ix) : (int64_t)i;
        oc_choice *c = oc_choice_at(s, idx >= 0 && idx < OC_MAX_CHOICES ? (int)idx : -1);
        if (!c)
            return idx >= 0 && idx < OC_MAX_CHOICES ? -ENOMEM : -EINVAL;
        int choice = (int)idx;
        json_t *d = json_object_get(ch, "delta");
        if (json_is_object(d)) {
            json_t *calls = json_object_get(d, "tool_calls");
            if ((rc = oc_emit_reasoning(choice, d, emit, ud)) ||
                (rc =
                     oc_emit_text(CHAT_EV_TEXT, choice, json_object_get(d, "content"), emit, ud)) ||
                (rc = oc_emit_text(CHAT_EV_TEXT, choice, json_object_get(d, "refusal"), emit, ud)))
                return rc;
            if (json_is_array(calls) && (rc = oc_dec_tool_deltas(s, choice, calls, emit, ud)))
                return rc;
        }
        json_t *fr = json_object_get(ch, "finish_reason");
        /* once per choice: OpenRouter repeats it on later chunks */
        if (json_is_string(fr) && !c->finished) {
            chat_event ev = oc_ev(CHAT_EV_FINISH, choice);
            ev.native = oc_jslice(fr);
            ev.finish = oc_finish_of(ev.native);
            c->finished = true;
            if ((rc = emit(ud, &ev)))
                return rc;
        }
    }
    json_t *u = json_object_get(root, "usage");
    if (json_is_object(u)) {
        chat_event ev = oc_ev(CHAT_EV_USAGE, 0);
        oc_usage_read(u, &ev.usage);
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    json_t *eo = json_object_get(root, "error");
    if (json_is_object(eo)) {
        chat_error e;
        oc_error_from(oc_status_of_error(eo), eo, &e);
        chat_event ev = oc_ev(CHAT_EV_ERROR, 0);
        ev.error = &e;
        if ((rc = emit(ud, &ev)))
            return rc;
    }
    return 0;
}

/* True for a key that must be compared after decoding (has an escape). */
static bool oc_key_escaped(const jscan_val *k) { return memchr(k->p, '\\', k->n) != NULL; }

/* The fast path for the chunk that makes up almost all of a long answer:
 * after the first chunk, one choice with index 0, a delta of only role /
 * content (/ refusal null), no finish_reason, no usage, no error. It is
 * read with jscan (no DOM) and gives the same events as oc_dec_chunk.
 * True when handled, with the result (0, the callback's value, -E2BIG)
 * in *rc; false: not such a chunk (the DOM path decides, errors
 * included). */
static bool oc_dec_fast(chat_stream *s, const char *p, size_t n, chat_emit_fn emit, void *ud,
                        int *rc)
{
    jscan_val root, key, val, choices = {0}, ch, delta = {0}, content = {0};
    jscan_error je;
    jscan_iter it;
    size_t len;
    int seen = 0;
    if (!s->started || s->nchoices < 1 ||
        jscan_parse(p, n, OC_FAST_MAX_DEPTH, &root, &je) != 0 || root.type != JSCAN_OBJECT ||
        jscan_iter_init(&it, &root) != 0)
        return false;
    while (jscan_obj_next(&it, &key, &val) == 0) {
        if (oc_key_escaped(&key))
            return false;
        if (jscan_str_eq(&key, "choices", 7)) {
            if (seen++)
                return false;
            choices = val;
        } else if ((jscan_str_eq(&key, "usage", 5) || jscan_str_eq(&key, "error", 5)) &&
                   val.type != JSCAN_NULL) {
            return false;
        }
    }
    if (choices.type != JSCAN_ARRAY || jscan_arr_len(&choices, &len) != 0 || len != 1 ||
        jscan_iter_init(&it, &choices) != 0 || jscan_arr_next(&it, &ch) != 0 ||
        ch.type != JSCAN_OBJECT || jscan_iter_init(&it, &ch) != 0)
        return false;
    bool index0 = false;
    seen = 0;
    while (jscan_obj_next(&it, &key, &val) == 0) {
        if (oc_key_escaped(&key))
            return false;
        if (jscan_str_eq(&key, "index", 5)) {
            if (index0 || val.type != JSCAN_NUMBER || val.n != 1 || val.p[0] != '0')
                return false;
            index0 = true;
        } else if (jscan_str_eq(&key, "delta", 5)) {
            if (seen++)
                return false;
            delta = val;
        } else if (jscan_str_eq(&key, "finish_reason", 13) && val.type != JSCAN_NULL) {
            return false;
        }
    }
    if (!index0 || delta.type != JSCAN_OBJECT || jscan_iter_init(&it, &delta) != 0)
        return false;
    seen = 0;
    while (jscan_obj_next(&it, &key, &val) == 0) {
        if (oc_key_escaped(&key))
            return false;
        if (jscan_str_eq(&key, "content", 7)) {
            if (seen++ || (val.type != JSCAN_STRING && val.type != JSCAN_NULL))
                return false;
            content = val;
        } else if (jscan_str_eq(&key, "role", 4)) {
            if (val.type != JSCAN_STRING)
                return false;
        } else if (!(jscan_str_eq(&key, "refusal", 7) && val.type == JSCAN_NULL)) {
            return false; /* tool calls, reasoning, anything else */
        }
    }
    *rc = 0;
    if (content.type != JSCAN_STRING || content.n <= 2)
        return true;
    buf_reset(&s->text);
    if (buf_reserve(&s->text, content.n) != 0) {
        *rc = -E2BIG;
        return true;
    }
    if (jscan_str_decode(&content, s->text.data, content.n, &len) != 0)
        return false;
    if (len == 0)
        return true;
    chat_event ev = oc_ev(CHAT_EV_TEXT, 0);
    ev.text = slice_make(s->text.data, len);
    *rc = emit(ud, &ev);
    return true;
}

/* chat_format.stream_dec_feed: one SSE event of a chat.completion.chunk stream. */
static int oc_stream_dec_feed(chat_stream *s, const sse_event *sev, chat_emit_fn emit, void *ud)
{
    if (!s || s->kind != OC_DEC)
        return -EINVAL;
    if (!sev->has_data || sev->data.len == 0 || s->done)
        return 0; /* comments (": OPENROUTER PROCESSING"), keep-alives, after [DONE] */
    if (slice_eq(sev->data, "[DONE]")) {
        chat_event ev = oc_ev(CHAT_EV_END, 0);
        s->done = true;
        return emit(ud, &ev);
    }
    int rc;
    if (oc_dec_fast(s, sev->data.p, sev->data.len, emit, ud, &rc))
        return rc;
    json_t *root = json_loadb(sev->data.p, sev->data.len, OC_JFLAGS, NULL);
    rc = json_is_object(root) ? oc_dec_chunk(s, root, emit, ud) : -EINVAL;
    json_decref(root);
    return rc;
}

/* The body ended. END is emitted for [DONE] only: without it the stream
 * was cut (OpenAI: "no usage arrives if the stream is interrupted") and
 * the gateway decides what that means, even when a FINISH and a usage
 * were seen already (nothing is owed: returns 0 either way). */
static int oc_stream_dec_finish(chat_stream *s, chat_emit_fn emit, void *ud)
{
    (void)emit;
    (void)ud;
    if (!s || s->kind != OC_DEC)
        return -EINVAL;
    return 0;
}

/* chat_format.resp_decode: a chat.completion object into events. */
static int oc_resp_decode(const char *body, size_t n, chat_emit_fn emit, void *ud)
{
    json_t *root = json_loadb(body, n, OC_JFLAGS, NULL);
    json_t *choices = json_object_get(root, "choices"), *eo = json_object_get(root, "error");
    int rc;
    if (!json_is_object(root) || (!json_is_array(choices) && !json_is_object(eo))) {
        rc = -EINVAL;
        goto out;
    }
    chat_event ev = oc_ev(CHAT_EV_START, 0);
    ev.id = oc_jslice(json_object_get(root, "id"));
    ev.model = oc_jslice(json_object_get(root, "model"));
    OC_TRY(emit(ud, &ev));
    for (size_t i = 0; i < json_array_size(choices); i++) {
        json_t *ch = json_array_get(choices, i), *ix = json_object_get(ch, "index");
        int64_t idx = json_is_integer(ix) ? json_integer_value(ix) : (int64_t)i;
        if (!json_is_object(ch))
            continue;
        if (idx < 0 || idx >= OC_MAX_CHOICES) {
            rc = -EINVAL;
            goto out;
        }
        int choice = (int)idx, tool = 0;
        json_t *m = json_object_get(ch, "message"), *c = json_object_get(m, "content");
        OC_TRY(oc_emit_reasoning(choice, m, emit, ud));
        if (json_is_array(c)) { /* text parts, from some compatible servers */
            for (size_t j = 0; j < json_array_size(c); j++)
                OC_TRY(oc_emit_text(CHAT_EV_TEXT, choice,
                                    json_object_get(json_array_get(c, j), "text"), emit, ud));
        } else if (json_is_string(c) && json_string_length(c)) {
            OC_TRY(oc_emit_text(CHAT_EV_TEXT, choice, c, emit, ud));
        } else {
            OC_TRY(oc_emit_text(CHAT_EV_TEXT, choice, json_object_get(m, "refusal"), emit, ud));
        }
        json_t *calls = json_object_get(m, "tool_calls"),
               *legacy = json_object_get(m, "function_call");
        for (size_t j = 0; j < json_array_size(calls) + (json_is_object(legacy) ? 1 : 0); j++) {
            json_t *tc = j < json_array_size(calls) ? json_array_get(calls, j) : NULL;
            json_t *fn = tc ? json_object_get(tc, "function") : legacy;
            if (!json_is_object(fn))
                continue;
            ev = oc_ev(CHAT_EV_TOOL_START, choice);
            ev.tool = tool;
            ev.id = oc_jslice(json_object_get(tc, "id"));
            ev.text = oc_jslice(json_object_get(fn, "name"));
            OC_TRY(emit(ud, &ev));
            json_t *args = json_object_get(fn, "arguments");
            if (json_is_string(args) && json_string_length(args)) {
                ev = oc_ev(CHAT_EV_TOOL_ARGS, choice);
                ev.tool = tool;
                ev.text = oc_jslice(args);
                OC_TRY(emit(ud, &ev));
            }
            tool++;
        }
        json_t *fr = json_object_get(ch, "finish_reason");
        if (json_is_string(fr)) {
            ev = oc_ev(CHAT_EV_FINISH, choice);
            ev.native = oc_jslice(fr);
            ev.finish = oc_finish_of(ev.native);
            OC_TRY(emit(ud, &ev));
        }
    }
    json_t *u = json_object_get(root, "usage");
    if (json_is_object(u)) {
        ev = oc_ev(CHAT_EV_USAGE, 0);
        oc_usage_read(u, &ev.usage);
        OC_TRY(emit(ud, &ev));
    }
    if (json_is_object(eo)) {
        chat_error e;
        oc_error_from(oc_status_of_error(eo), eo, &e);
        ev = oc_ev(CHAT_EV_ERROR, 0);
        ev.error = &e;
        OC_TRY(emit(ud, &ev));
    }
    ev = oc_ev(CHAT_EV_END, 0);
    rc = emit(ud, &ev);
out:
    json_decref(root);
    return rc;
}

/* ================================================================ answer encode */

/* "usage":{...} with 0 for the numbers not known. */
static int oc_put_usage(buf *out, const chat_usage *u)
{
    int64_t in = u->input > 0 ? u->input : 0, o = u->output > 0 ? u->output : 0;
    return buf_printf(out,
                      "\"usage\":{\"prompt_tokens\":%" PRId64 ",\"completion_tokens\":%" PRId64
                      ",\"total_tokens\":%" PRId64
                      ",\"prompt_tokens_details\":{\"cached_tokens\":%" PRId64
                      "},\"completion_tokens_details\":{\"reasoning_tokens\":%" PRId64 "}}",
                      in, o, in + o, u->cache_read > 0 ? u->cache_read : 0,
                      u->reasoning > 0 ? u->reasoning : 0)
               ? -E2BIG
               : 0;
}

/* An id of ours: START's when it looks like OpenAI's, else a new one. */
static int oc_put_resp_id(buf *out, const char *id, size_t n)
{
    static const char pre[] = "chatcmpl-";
    bool ok = n > sizeof pre - 1 && n <= 128 && memcmp(id, pre, sizeof pre - 1) == 0;
    for (size_t i = 0; ok && i < n; i++) {
        char c = id[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '-' || c == '_';
    }
    if (ok)
        return buf_append(out, id, n) ? -E2BIG : 0;
    return chat_gen_id(out, pre);
}

/* chat_format.stream_enc_new: chunks for a caller that sent req. */
static chat_stream *oc_stream_enc_new(const chat_request *req)
{
    chat_stream *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->kind = OC_ENC;
    s->include_usage = req && req->include_usage;
    s->created = (int64_t)time(NULL);
    buf_init(&s->model, 4096);
    buf_init(&s->id, 256);
    buf_init(&s->start_model, 4096);
    buf_init(&s->head, 16384);
    chat_usage_unset(&s->usage);
    if (req && req->model.p && buf_append(&s->model, req->model.p, req->model.len)) {
        oc_stream_free(s);
        return NULL;
    }
    return s;
}

/* `data: {"id":...,"object":"chat.completion.chunk",...,"choices":[`. */
static int oc_head(chat_stream *s)
{
    int rc;
    if (s->have_head)
        return 0;
    buf_reset(&s->head);
    const buf *model = s->start_model.len ? &s->start_model : &s->model;
    OC_TRY(oc_put(&s->head, "data: {\"id\":\""));
    OC_TRY(oc_put_resp_id(&s->head, s->id.data, s->id.len));
    OC_TRY(buf_printf(&s->head,
                      "\",\"object\":\"chat.completion.chunk\",\"created\":%" PRId64 ",\"model\":",
                      s->created)
               ? -E2BIG
               : 0);
    OC_TRY(chat_json_str(&s->head, model->data, model->len));
    OC_TRY(oc_put(&s->head, ",\"choices\":["));
    s->have_head = true;
out:
    return rc;
}

/* Opens a chunk of one choice up to its delta's value. */
static int oc_chunk_open(chat_stream *s, buf *out, int choice)
{
    int rc;
    if ((rc = oc_head(s)) || (rc = buf_append(out, s->head.data, s->head.len) ? -E2BIG : 0))
        return rc;
    return buf_printf(out, "{\"index\":%d,\"delta\":", choice) ? -E2BIG : 0;
}

/* Closes a chunk opened by oc_chunk_open. */
static int oc_chunk_close(chat_stream *s, buf *out, const char *finish)
{
    int rc = buf_printf(out, ",\"logprobs\":null,\"finish_reason\":%s%s%s}]%s}\n\n",
                        finish ? "\"" : "", finish ? finish : "null", finish ? "\"" : "",
                        s->include_usage ? ",\"usage\":null" : "");
    return rc ? -E2BIG : 0;
}

/* The first chunk of a choice: {"role":"assistant","content":""}. */
static int oc_role(chat_stream *s, buf *out, oc_choice *c, int choice)
{
    int rc;
    if (c->role_sent)
        return 0;
    c->role_sent = true;
    if ((rc = oc_chunk_open(s, out, choice)) ||
        (rc = oc_put(out, "{\"role\":\"assistant\",\"content\":\"\"}")))
        return rc;
    return oc_chunk_close(s, out, NULL);
}

/* A tool call that got no arguments gets "{}" before anything else. */
static int oc_close_tool(chat_stream *s, buf *out, oc_choice *c, int choice)
{
    int rc;
    if (c->open_tool < 0 || c->open_args) {
        c->open_tool = -1;
        return 0;
    }
    int tool = c->open_tool;
    c->open_tool = -1;
    if ((rc = oc_chunk_open(s, out, choice)) ||
        (rc = buf_printf(out,
                         "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":\"{}\"}}]}",
                         tool)
                  ? -E2BIG
                  : 0))
        return rc;
    return oc_chunk_close(s, out, NULL);
}

/* The finish chunk of a choice (once). */
static int oc_finish_chunk(chat_stream *s, buf *out, oc_choice *c, int choice, chat_finish f)
{
    int rc;
    if (c->finished)
        return 0;
    if ((rc = oc_role(s, out, c, choice)) || (rc = oc_close_tool(s, out, c, choice)))
        return rc;
    c->finished = true;
    if ((rc = oc_chunk_open(s, out, choice)) || (rc = oc_put(out, "{}")))
        return rc;
    return oc_chunk_close(s, out, c->any_tool ? "tool_calls" : chat_finish_openai(f));
}

/* Keeps the reported numbers of u over those in into. */
static void oc_usage_merge(chat_usage *into, const chat_usage *u)
{
    if (u->input >= 0)
        into->input = u->input;
    if (u->output >= 0)
        into->output = u->output;
    if (u->cache_read >= 0)
        into->cache_read = u->cache_read;
    if (u->cache_write >= 0)
        into->cache_write = u->cache_write;
    if (u->reasoning >= 0)
        into->reasoning = u->reasoning;
}

/* The end: finish chunks still owed, the usage chunk, [DONE]. */
static int oc_enc_end(chat_stream *s, buf *out)
{
    int rc;
    oc_choice *c0 = oc_choice_at(s, 0);
    if (!c0)
        return -ENOMEM;
    for (size_t i = 0; i < s->nchoices; i++) {
        oc_choice *c = &s->choices[i];
        if ((c->role_sent || i == 0) && (rc = oc_finish_chunk(s, out, c, (int)i, CHAT_FINISH_STOP)))
            return rc;
    }
    if (s->include_usage) {
        if ((rc = oc_head(s)) || (rc = buf_append(out, s->head.data, s->head.len) ? -E2BIG : 0) ||
            (rc = oc_put(out, "],")) || (rc = oc_put_usage(out, &s->usage)) ||
            (rc = oc_put(out, "}\n\n")))
            return rc;
    }
    s->over = true;
    return sse_write_done(out) ? -E2BIG : 0;
}

/* The in-stream error: data: {"error":{...}}. */
static int oc_stream_error_body(const chat_error *e, buf *out);

/* chat_format.stream_enc_feed: the chunks for one event (maybe none). */
static int oc_stream_enc_feed(chat_stream *s, const chat_event *ev, buf *out)
{
    size_t start = out->len;
    int rc = 0;
    if (!s || s->kind != OC_ENC)
        return -EINVAL;
    if (s->over)
        return 0;
    oc_choice *c = NULL;
    if (ev->type != CHAT_EV_START && ev->type != CHAT_EV_USAGE && ev->type != CHAT_EV_ERROR &&
        ev->type != CHAT_EV_END && !(c = oc_choice_at(s, ev->choice)))
        return ev->choice < 0 || ev->choice >= OC_MAX_CHOICES ? -EINVAL : -ENOMEM;

    switch (ev->type) {
    case CHAT_EV_START:
        if (!s->have_head && !s->id.len && !s->start_model.len) {
            if (buf_append_slice(&s->id, ev->id) || buf_append_slice(&s->start_model, ev->model)) {
                buf_reset(&s->id);
                buf_reset(&s->start_model);
            }
        }
        oc_usage_merge(&s->usage, &ev->usage);
        break;
    case CHAT_EV_TEXT:
    case CHAT_EV_THINKING:
        if (!ev->text.len || c->finished)
            break;
        OC_TRY(oc_role(s, out, c, ev->choice));
        OC_TRY(oc_chunk_open(s, out, ev->choice));
        OC_TRY(oc_put(out, ev->type == CHAT_EV_TEXT ? "{\"content\":" : "{\"reasoning_content\":"));
        OC_TRY(oc_put_slice(out, ev->text));
        OC_TRY(oc_put(out, "}"));
        OC_TRY(oc_chunk_close(s, out, NULL));
        break;
    case CHAT_EV_TOOL_START:
        if (c->finished || ev->tool < 0)
            break;
        OC_TRY(oc_role(s, out, c, ev->choice));
        OC_TRY(oc_close_tool(s, out, c, ev->choice));
        OC_TRY(oc_chunk_open(s, out, ev->choice));
        OC_TRY(buf_printf(out, "{\"tool_calls\":[{\"index\":%d,\"id\":\"", ev->tool) ? -E2BIG : 0);
        {
            buf id;
            buf_init(&id, OC_ID_MAX);
            rc = chat_tool_id_encode(&id, "call_", ev->id, ev->signature);
            if (!rc)
                rc = buf_append_json_escaped(out, id.data ? id.data : "", id.len) ? -E2BIG : 0;
            buf_free(&id);
            if (rc)
                goto out;
        }
        OC_TRY(oc_put(out, "\",\"type\":\"function\",\"function\":{\"name\":"));
        OC_TRY(oc_put_slice(out, ev->text));
        OC_TRY(oc_put(out, ",\"arguments\":\"\"}}]}"));
        OC_TRY(oc_chunk_close(s, out, NULL));
        c->any_tool = true;
        c->open_tool = ev->tool;
        c->open_args = false;
        break;
    case CHAT_EV_TOOL_ARGS:
        if (!ev->text.len || c->finished || ev->tool < 0)
            break;
        OC_TRY(oc_role(s, out, c, ev->choice));
        OC_TRY(oc_chunk_open(s, out, ev->choice));
        OC_TRY(
            buf_printf(out, "{\"tool_calls\":[{\"index\":%d,\"function\":{\"arguments\":", ev->tool)
                ? -E2BIG
                : 0);
        OC_TRY(oc_put_slice(out, ev->text));
        OC_TRY(oc_put(out, "}}]}"));
        OC_TRY(oc_chunk_close(s, out, NULL));
        if (ev->tool == c->open_tool)
            c->open_args = true;
        break;
    case CHAT_EV_FINISH:
        OC_TRY(oc_finish_chunk(s, out, c, ev->choice, ev->finish));
        break;
    case CHAT_EV_USAGE:
        oc_usage_merge(&s->usage, &ev->usage);
        break;
    case CHAT_EV_ERROR:
        if (ev->error) {
            OC_TRY(oc_stream_error_body(ev->error, out));
            s->over = true;
        }
        break;
    case CHAT_EV_END:
        OC_TRY(oc_enc_end(s, out));
        break;
    }
out:
    if (rc)
        oc_truncate(out, start);
    return rc;
}

/* A message of a collected answer, then finish_reason and usage. */
static int oc_resp_encode(const chat_request *req, const chat_response *r, buf *out)
{
    size_t start = out->len;
    int rc;
    OC_TRY(oc_put(out, "{\"id\":\""));
    OC_TRY(oc_put_resp_id(out, r->id.data, r->id.len));
    OC_TRY(buf_printf(out, "\",\"object\":\"chat.completion\",\"created\":%" PRId64 ",\"model\":",
                      (int64_t)time(NULL))
               ? -E2BIG
               : 0);
    if (r->model.len)
        OC_TRY(chat_json_str(out, r->model.data, r->model.len));
    else
        OC_TRY(oc_put_cstr(out, req ? req->model : (chat_str){NULL, 0}));
    OC_TRY(
        oc_put(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"));
    if (r->text.len)
        OC_TRY(chat_json_str(out, r->text.data, r->text.len));
    else
        OC_TRY(oc_put(out, "null"));
    if (r->thinking.len) {
        OC_TRY(oc_put(out, ",\"reasoning_content\":"));
        OC_TRY(chat_json_str(out, r->thinking.data, r->thinking.len));
    }
    if (r->ncalls) {
        OC_TRY(oc_put(out, ",\"tool_calls\":["));
        for (size_t i = 0; i < r->ncalls; i++) {
            const chat_tool_call *tc = &r->calls[i];
            buf id;
            OC_TRY(oc_put(out, i ? ",{\"id\":" : "{\"id\":"));
            buf_init(&id, OC_ID_MAX);
            rc = chat_tool_id_encode(&id, "call_", slice_make(tc->id.data, tc->id.len),
                                     slice_make(tc->signature.data, tc->signature.len));
            if (!rc)
                rc = chat_json_str(out, id.data, id.len);
            buf_free(&id);
            if (rc)
                goto out;
            OC_TRY(oc_put(out, ",\"type\":\"function\",\"function\":{\"name\":"));
            OC_TRY(chat_json_str(out, tc->name.data, tc->name.len));
            OC_TRY(oc_put(out, ",\"arguments\":"));
            if (tc->args.len)
                OC_TRY(chat_json_str(out, tc->args.data, tc->args.len));
            else
                OC_TRY(oc_put(out, "\"{}\""));
            OC_TRY(oc_put(out, "}}"));
        }
        OC_TRY(oc_put(out, "]"));
    }
    OC_TRY(oc_put(out,
                  ",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\""));
    OC_TRY(oc_put(out, r->ncalls ? "tool_calls" : chat_finish_openai(r->finish)));
    OC_TRY(oc_put(out, "\"}],"));
    OC_TRY(oc_put_usage(out, &r->usage));
    rc = oc_put(out, "}");
out:
    if (rc)
        oc_truncate(out, start);
    return rc;
}

/* ================================================================ errors (encode) */

/* Whether an error's type is one OpenAI itself sends (then type and
 * code are passed on as they are). */
static bool oc_openai_type(const char *t)
{
    static const char *const types[] = {
        "invalid_request_error", "server_error",    "tokens", "requests",
        "insufficient_quota",    "rate_limit_error"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(t, types[i]) == 0)
            return true;
    return false;
}

/* Status, type and code an OpenAI caller gets for e. */
static void oc_error_shape(const chat_error *e, int *status, const char **type, const char **code)
{
    bool keep = oc_openai_type(e->type);
    bool same =
        chat_err_kind_of_status(e->status) == e->kind && e->status >= 400 && e->status <= 599;
    const char *given = e->code[0] ? e->code : NULL;
    switch (e->kind) {
    case CHAT_ERR_INVALID_REQUEST:
        *status = same ? e->status : 400;
        *type = type_invalid;
        *code = given;
        return;
    case CHAT_ERR_AUTH:
        *status = 401;
        *type = type_invalid;
        *code = keep && given ? given : "invalid_api_key";
        return;
    case CHAT_ERR_PERMISSION:
        *status = 403;
        *type = keep ? e->type : "permission_error";
        *code = given;
        return;
    case CHAT_ERR_NOT_FOUND:
        *status = 404;
        *type = type_invalid;
        *code = given ? given : strstr(e->message, "model") ? "model_not_found" : NULL;
        return;
    case CHAT_ERR_TOO_LARGE:
        *status = 413;
        *type = type_invalid;
        *code = given;
        return;
    case CHAT_ERR_RATE_LIMIT:
        *status = 429;
        *type = keep ? e->type : "rate_limit_error";
        *code = keep && given ? given : "rate_limit_exceeded";
        return;
    case CHAT_ERR_SERVER:
        *status = same && e->status != 501 ? e->status : 500;
        *type = "server_error";
        *code = keep ? given : NULL;
        return;
    case CHAT_ERR_OVERLOADED: /* 503: the OpenAI SDK retries it */
        *status = 503;
        *type = "server_error";
        *code = "overloaded";
        return;
    case CHAT_ERR_TIMEOUT:
        *status = same ? e->status : 504;
        *type = "server_error";
        *code = "timeout";
        return;
    case CHAT_ERR_BILLING: /* OpenAI sends quota exhaustion as a 429 */
        *status = 429;
        *type = "insufficient_quota";
        *code = "insufficient_quota";
        return;
    }
    *status = 500;
    *type = "server_error";
    *code = NULL;
}

/* {"error":{"message","type","param","code"}}; param only when with_param. */
static int oc_error_obj(const chat_error *e, bool with_param, buf *out, int *status)
{
    const char *type, *code;
    int st, rc;
    char msg[sizeof e->message];
    oc_error_shape(e, &st, &type, &code);
    if (status)
        *status = st;
    /* message must be valid UTF-8 whatever the decoder left */
    chat_text_copy(msg, sizeof msg, e->message, strnlen(e->message, sizeof e->message));
    if (!msg[0])
        snprintf(msg, sizeof msg, "upstream error (HTTP %d)", st);
    OC_TRY(oc_put(out, "{\"error\":{\"message\":"));
    OC_TRY(chat_json_str(out, msg, strlen(msg)));
    OC_TRY(oc_put(out, ",\"type\":"));
    {
        char t[sizeof e->type];
        chat_text_copy(t, sizeof t, type, strlen(type));
        OC_TRY(chat_json_str(out, t, strlen(t)));
    }
    OC_TRY(oc_put(out, ",\"param\":"));
    if (with_param && e->param[0]) {
        char p[sizeof e->param];
        chat_text_copy(p, sizeof p, e->param, strnlen(e->param, sizeof e->param));
        OC_TRY(chat_json_str(out, p, strlen(p)));
    } else {
        OC_TRY(oc_put(out, "null"));
    }
    OC_TRY(oc_put(out, ",\"code\":"));
    if (code) {
        char cd[sizeof e->code];
        chat_text_copy(cd, sizeof cd, code, strnlen(code, sizeof e->code));
        OC_TRY(chat_json_str(out, cd, strlen(cd)));
    } else {
        OC_TRY(oc_put(out, "null"));
    }
    rc = oc_put(out, "}}");
out:
    return rc;
}

/* chat_format.error_encode: an OpenAI error body and its status. */
static int oc_error_encode(const chat_error *e, buf *out, int *status)
{
    size_t start = out->len;
    int st;
    int rc = oc_error_obj(e, true, out, &st);
    if (rc)
        oc_truncate(out, start);
    else if (status)
        *status = st;
    return rc;
}

/* data: {"error":{...}} (param null), the end of a stream. */
static int oc_stream_error_body(const chat_error *e, buf *out)
{
    int rc;
    if ((rc = oc_put(out, "data: ")) || (rc = oc_error_obj(e, false, out, NULL)))
        return rc;
    return oc_put(out, "\n\n");
}

/* After it the stream is over: a later call (or an ERROR event already
 * written, or [DONE]) writes nothing more. */
static int oc_stream_error_encode(chat_stream *s, const chat_error *e, buf *out)
{
    size_t start = out->len;
    if (s && s->over)
        return 0;
    int rc = oc_stream_error_body(e, out);
    if (rc)
        oc_truncate(out, start);
    else if (s)
        s->over = true;
    return rc;
}

const chat_format chat_format_openai = {
    .id = CHAT_FMT_OPENAI,
    .name = "openai",
    .req_decode = oc_req_decode,
    .req_encode = oc_req_encode,
    .req_path = oc_req_path,
    .req_auth_headers = oc_req_auth_headers,
    .stream_dec_new = oc_stream_dec_new,
    .stream_dec_feed = oc_stream_dec_feed,
    .stream_dec_finish = oc_stream_dec_finish,
    .resp_decode = oc_resp_decode,
    .error_decode = oc_error_decode,
    .stream_enc_new = oc_stream_enc_new,
    .stream_enc_feed = oc_stream_enc_feed,
    .resp_encode = oc_resp_encode,
    .error_encode = oc_error_encode,
    .stream_error_encode = oc_stream_error_encode,
    .stream_free = oc_stream_free,
};
