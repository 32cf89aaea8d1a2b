/* openai.c - OpenAI chat-completions wire helpers (scan, rewrite, usage). */
#include "providers/openai.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char type_invalid_request[] = "invalid_request_error";

/* The top-level request members openai_req_scan() reads. */
enum req_key {
    K_MODEL,
    K_MESSAGES,
    K_STREAM,
    K_STREAM_OPTIONS,
    K_MAX_TOKENS,
    K_MAX_COMPLETION_TOKENS,
    K_N,
    K_COUNT
};

static const char *const req_key_names[K_COUNT] = {
    [K_MODEL] = "model",
    [K_MESSAGES] = "messages",
    [K_STREAM] = "stream",
    [K_STREAM_OPTIONS] = "stream_options",
    [K_MAX_TOKENS] = "max_tokens",
    [K_MAX_COMPLETION_TOKENS] = "max_completion_tokens",
    [K_N] = "n",
};

static int req_fail(openai_err *err, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int req_fail(openai_err *err, const char *param, const char *code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        err->status = 400;
        err->type = type_invalid_request;
        err->param = param;
        err->code = code;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* "a string", "an object", "null": for "but got ... instead". */
static const char *type_phrase(jscan_type t)
{
    switch (t) {
    case JSCAN_OBJECT:
        return "an object";
    case JSCAN_ARRAY:
        return "an array";
    case JSCAN_STRING:
        return "a string";
    case JSCAN_NUMBER:
        return "a number";
    case JSCAN_TRUE:
    case JSCAN_FALSE:
        return "a boolean";
    case JSCAN_NULL:
        return "null";
    case JSCAN_NONE:
        break;
    }
    return "nothing";
}

static int bad_type(openai_err *err, const char *param, const char *expected, jscan_type got)
{
    return req_fail(err, param, "invalid_type",
                    "Invalid type for '%s': expected %s, but got %s instead.", param, expected,
                    type_phrase(got));
}

/* An optional integer member: absent or null leaves *out alone. */
static int read_count(const jscan_val *v, const char *param, int64_t min, int64_t *out,
                      openai_err *err)
{
    int64_t x;
    if (v->type == JSCAN_NONE || v->type == JSCAN_NULL)
        return 0;
    if (v->type != JSCAN_NUMBER)
        return bad_type(err, param, "an integer", v->type);
    int rc = jscan_int64(v, &x);
    if (rc == -ERANGE)
        return req_fail(err, param, "invalid_value", "Invalid '%s': integer out of range.", param);
    if (rc)
        return req_fail(
            err, param, "invalid_type",
            "Invalid type for '%s': expected an integer, but got a decimal number instead.", param);
    if (x < min)
        return req_fail(err, param, "integer_below_min_value",
                        "Invalid '%s': integer below minimum value. Expected a value >= %" PRId64
                        ", but got %" PRId64 " instead.",
                        param, min, x);
    *out = x;
    return 0;
}

static int read_model(const jscan_val *v, openai_req_info *info, openai_err *err)
{
    int rc;
    if (v->type == JSCAN_NONE)
        return req_fail(err, "model", "missing_required_parameter",
                        "Missing required parameter: 'model'.");
    if (v->type != JSCAN_STRING)
        return bad_type(err, "model", "a string", v->type);
    rc = jscan_str_decode(v, info->model, sizeof(info->model), &info->model_len);
    if (rc == -E2BIG)
        return req_fail(
            err, "model", "string_above_max_length",
            "Invalid 'model': string too long. Expected a string with maximum length %d.",
            OPENAI_MODEL_MAX - 1);
    if (rc)
        return req_fail(err, "model", "invalid_value", "Invalid 'model': bad string escape.");
    if (info->model_len == 0)
        return req_fail(err, "model", "empty_string",
                        "Invalid 'model': empty string. Expected a model name.");
    if (memchr(info->model, '\0', info->model_len))
        return req_fail(err, "model", "invalid_value",
                        "Invalid 'model': the name contains a NUL character.");
    info->model_val = *v;
    return 0;
}

static int read_stream_options(const jscan_val *v, openai_req_info *info, openai_err *err)
{
    static const char param[] = "stream_options.include_usage";
    jscan_iter it;
    jscan_val k, x;
    int rc;
    if (v->type == JSCAN_NONE)
        return 0;
    if (v->type != JSCAN_NULL && v->type != JSCAN_OBJECT)
        return bad_type(err, "stream_options", "an object", v->type);
    info->stream_options_val = *v;
    if (v->type == JSCAN_NULL)
        return 0;
    rc = jscan_iter_init(&it, v);
    while (!rc && (rc = jscan_obj_next(&it, &k, &x)) == 0) {
        if (!jscan_str_eq(&k, "include_usage", 13))
            continue;
        if (info->include_usage_val.type != JSCAN_NONE)
            return req_fail(err, param, NULL,
                            "Invalid 'stream_options': 'include_usage' appears more than once.");
        info->include_usage_val = x;
    }
    if (rc != -ENOENT)
        return req_fail(err, "stream_options", NULL, "Invalid 'stream_options': malformed object.");
    x = info->include_usage_val;
    if (x.type == JSCAN_TRUE || x.type == JSCAN_FALSE)
        info->include_usage = x.type == JSCAN_TRUE;
    else if (x.type != JSCAN_NONE && x.type != JSCAN_NULL)
        return bad_type(err, param, "a boolean", x.type);
    return 0;
}

int openai_req_scan(const char *body, size_t n, openai_req_info *info, openai_err *err)
{
    jscan_val seen[K_COUNT];
    jscan_error jerr;
    jscan_iter it;
    jscan_val k, v;
    int rc;

    memset(info, 0, sizeof(*info));
    memset(seen, 0, sizeof(seen));
    info->max_tokens = -1;
    info->max_completion_tokens = -1;
    info->n = 1;

    if (jscan_parse(body, n, OPENAI_REQ_MAX_DEPTH, &info->root, &jerr))
        return req_fail(err, NULL, NULL,
                        "We could not parse the JSON body of your request: %s at byte %zu.",
                        jerr.msg, jerr.offset);
    if (info->root.type != JSCAN_OBJECT)
        return req_fail(err, NULL, "invalid_type",
                        "The request body must be a JSON object, but got %s instead.",
                        type_phrase(info->root.type));

    /* one pass over the top level; a member we act on may not repeat,
     * since upstreams keep the last copy while we would read the first */
    rc = jscan_iter_init(&it, &info->root);
    while (!rc && (rc = jscan_obj_next(&it, &k, &v)) == 0) {
        for (int i = 0; i < K_COUNT; i++) {
            if (!jscan_str_eq(&k, req_key_names[i], strlen(req_key_names[i])))
                continue;
            if (seen[i].type != JSCAN_NONE)
                return req_fail(err, req_key_names[i], NULL,
                                "Invalid request: parameter '%s' appears more than once.",
                                req_key_names[i]);
            seen[i] = v;
            break;
        }
    }
    if (rc != -ENOENT)
        return req_fail(err, NULL, NULL, "We could not parse the JSON body of your request.");

    rc = read_model(&seen[K_MODEL], info, err);
    if (rc)
        return rc;

    v = seen[K_MESSAGES];
    if (v.type == JSCAN_NONE)
        return req_fail(err, "messages", "missing_required_parameter",
                        "Missing required parameter: 'messages'.");
    if (v.type != JSCAN_ARRAY)
        return bad_type(err, "messages", "an array of objects", v.type);
    if (jscan_is_empty(&v))
        return req_fail(err, "messages", "empty_array",
                        "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                        "but got an empty array instead.");
    info->messages_val = v;

    v = seen[K_STREAM];
    if (v.type == JSCAN_TRUE || v.type == JSCAN_FALSE)
        info->stream = v.type == JSCAN_TRUE;
    else if (v.type != JSCAN_NONE && v.type != JSCAN_NULL)
        return bad_type(err, "stream", "a boolean", v.type);

    rc = read_stream_options(&seen[K_STREAM_OPTIONS], info, err);
    if (!rc)
        rc = read_count(&seen[K_MAX_TOKENS], "max_tokens", 0, &info->max_tokens, err);
    if (!rc)
        rc = read_count(&seen[K_MAX_COMPLETION_TOKENS], "max_completion_tokens", 0,
                        &info->max_completion_tokens, err);
    if (!rc)
        rc = read_count(&seen[K_N], "n", 1, &info->n, err);
    return rc;
}

/* True if span v lies inside body[0..n). */
static bool span_inside(const jscan_val *v, const char *body, size_t n)
{
    return v->p && v->p >= body && v->p <= body + n && v->n <= n - (size_t)(v->p - body);
}

/* The stream_options edit for want_usage (include_usage not yet true). */
static int splice_usage(jscan_splice *sp, const openai_req_info *info)
{
    static const char so[] = "{\"include_usage\":true}";
    switch (info->stream_options_val.type) {
    case JSCAN_NONE:
        return jscan_splice_insert_member(sp, &info->root, "stream_options", 14, so,
                                          sizeof(so) - 1);
    case JSCAN_OBJECT:
        if (info->include_usage_val.type == JSCAN_NONE)
            return jscan_splice_insert_member(sp, &info->stream_options_val, "include_usage", 13,
                                              "true", 4);
        return jscan_splice_replace(sp, &info->include_usage_val, "true", 4);
    case JSCAN_NULL:
        return jscan_splice_replace(sp, &info->stream_options_val, so, sizeof(so) - 1);
    default:
        return -EINVAL;
    }
}

int openai_req_rewrite(const char *body, size_t n, const openai_req_info *info,
                       const char *new_model, size_t new_model_len, bool want_usage, buf *out)
{
    jscan_splice sp;
    size_t start = out->len;
    bool add_usage = want_usage && !info->include_usage;
    bool usage_first;
    int rc = -EINVAL;

    if (!span_inside(&info->root, body, n) || info->root.type != JSCAN_OBJECT ||
        !span_inside(&info->model_val, body, n) || info->model_val.type != JSCAN_STRING)
        goto out_restore;
    if ((!new_model && new_model_len) || new_model_len == 0 ||
        memchr(new_model, '\0', new_model_len) || !jscan_utf8_valid(new_model, new_model_len))
        goto out_restore;
    if (info->stream_options_val.type != JSCAN_NONE &&
        !span_inside(&info->stream_options_val, body, n))
        goto out_restore;
    if (info->include_usage_val.type != JSCAN_NONE &&
        !span_inside(&info->include_usage_val, body, n))
        goto out_restore;

    /* edits go in document order: stream_options may come before model */
    usage_first = add_usage && info->stream_options_val.type != JSCAN_NONE &&
                  info->stream_options_val.p < info->model_val.p;
    jscan_splice_init(&sp, body, n, out);
    rc = 0;
    if (usage_first)
        rc = splice_usage(&sp, info);
    if (!rc)
        rc = jscan_splice_replace_str(&sp, &info->model_val, new_model, new_model_len);
    if (!rc && add_usage && !usage_first)
        rc = splice_usage(&sp, info);
    if (!rc)
        rc = jscan_splice_finish(&sp);
    if (!rc)
        return 0;

out_restore:
    out->len = start;
    if (out->data)
        out->data[start] = '\0';
    return rc;
}

/* Fills *u from a usage object (first occurrence of each member). */
static void usage_read(const jscan_val *obj, openai_usage *u)
{
    jscan_iter it;
    jscan_val k, v, c;
    bool details = false;

    u->prompt_tokens = u->completion_tokens = u->total_tokens = u->cached_tokens = -1;
    if (jscan_iter_init(&it, obj))
        return;
    while (jscan_obj_next(&it, &k, &v) == 0) {
        int64_t *dst = NULL;
        if (jscan_str_eq(&k, "prompt_tokens", 13))
            dst = &u->prompt_tokens;
        else if (jscan_str_eq(&k, "completion_tokens", 17))
            dst = &u->completion_tokens;
        else if (jscan_str_eq(&k, "total_tokens", 12))
            dst = &u->total_tokens;
        else if (!details && jscan_str_eq(&k, "prompt_tokens_details", 21)) {
            details = true;
            if (v.type == JSCAN_OBJECT && jscan_val_get(&v, "cached_tokens", &c) == 0 &&
                c.type == JSCAN_NUMBER && jscan_int64(&c, &u->cached_tokens) != 0)
                u->cached_tokens = -1;
            continue;
        }
        if (dst && *dst == -1 && v.type == JSCAN_NUMBER && jscan_int64(&v, dst) != 0)
            *dst = -1;
    }
}

static void each_text_of(const jscan_val *msg, int64_t choice, openai_text_fn fn, void *ud);

int openai_chunk_scan(const char *data, size_t n, openai_chunk_info *ci)
{
    return openai_chunk_scan_text(data, n, ci, NULL, NULL);
}

int openai_chunk_scan_text(const char *data, size_t n, openai_chunk_info *ci, openai_text_fn fn, void *ud)
{
    jscan_val root, k, v;
    jscan_iter it;
    bool seen_choices = false, seen_usage = false, seen_error = false;
    int rc;

    memset(ci, 0, sizeof(*ci));
    ci->usage.prompt_tokens = ci->usage.completion_tokens = -1;
    ci->usage.total_tokens = ci->usage.cached_tokens = -1;
    if (jscan_parse(data, n, OPENAI_RESP_MAX_DEPTH, &root, NULL) || root.type != JSCAN_OBJECT)
        return -EINVAL;
    rc = jscan_iter_init(&it, &root);
    while (!rc && (rc = jscan_obj_next(&it, &k, &v)) == 0) {
        if (!seen_choices && jscan_str_eq(&k, "choices", 7)) {
            seen_choices = true;
            if (v.type != JSCAN_ARRAY)
                continue;
            ci->has_choices = true;
            ci->choices_empty = jscan_is_empty(&v);
            jscan_iter ci_it;
            jscan_val choice, fr;
            if (jscan_iter_init(&ci_it, &v))
                return -EINVAL;
            int64_t pos = 0;
            while ((fn || ci->finish_reason.len == 0) && jscan_arr_next(&ci_it, &choice) == 0) {
                int64_t index = pos++;
                jscan_val delta = {0};
                jscan_iter mit;
                jscan_val mk, mv;
                /* one pass over the choice's members */
                if (choice.type != JSCAN_OBJECT || jscan_iter_init(&mit, &choice) != 0)
                    continue;
                while (jscan_obj_next(&mit, &mk, &mv) == 0) {
                    if (jscan_str_eq(&mk, "finish_reason", 13)) {
                        fr = mv;
                        if (ci->finish_reason.len == 0 && fr.type == JSCAN_STRING && fr.n > 2)
                            ci->finish_reason = slice_make(fr.p + 1, fr.n - 2);
                    } else if (fn && jscan_str_eq(&mk, "delta", 5)) {
                        delta = mv;
                    } else if (fn && jscan_str_eq(&mk, "index", 5)) {
                        if (jscan_int64(&mv, &index) != 0)
                            index = pos - 1;
                    }
                }
                if (fn && delta.type == JSCAN_OBJECT)
                    each_text_of(&delta, index, fn, ud);
            }
        } else if (!seen_usage && jscan_str_eq(&k, "usage", 5)) {
            seen_usage = true;
            if (v.type == JSCAN_OBJECT) {
                ci->has_usage = true;
                usage_read(&v, &ci->usage);
            }
        } else if (!seen_error && jscan_str_eq(&k, "error", 5)) {
            seen_error = true;
            if (v.type == JSCAN_OBJECT) {
                ci->has_error = true;
                ci->error = v;
            }
        }
    }
    return rc == -ENOENT ? 0 : -EINVAL;
}

bool openai_chunk_is_usage_only(const openai_chunk_info *ci)
{
    return ci->has_choices && ci->choices_empty && ci->has_usage;
}

int openai_resp_usage(const char *body, size_t n, openai_usage *u)
{
    jscan_val root, v;
    int rc;

    u->prompt_tokens = u->completion_tokens = u->total_tokens = u->cached_tokens = -1;
    if (jscan_parse(body, n, OPENAI_RESP_MAX_DEPTH, &root, NULL) || root.type != JSCAN_OBJECT)
        return -EINVAL;
    rc = jscan_val_get(&root, "usage", &v);
    if (rc)
        return rc;
    if (v.type != JSCAN_OBJECT)
        return -ENOENT;
    usage_read(&v, u);
    return 0;
}

/* Appends ,"name":"value" or ,"name":null. */
static int member_or_null(buf *out, const char *name, const char *value)
{
    int rc = buf_printf(out, ",\"%s\":", name);
    if (rc)
        return rc;
    if (!value)
        return buf_append(out, "null", 4);
    return jscan_append_string(out, value, strlen(value));
}

int openai_error_body(buf *out, const char *message, const char *type, const char *param,
                      const char *code)
{
    size_t start = out->len;
    int rc = -EINVAL;

    if (!message || !type)
        goto out_restore;
    rc = buf_append_str(out, "{\"error\":{\"message\":");
    if (!rc)
        rc = jscan_append_string(out, message, strlen(message));
    if (!rc)
        rc = member_or_null(out, "type", type);
    if (!rc)
        rc = member_or_null(out, "param", param);
    if (!rc)
        rc = member_or_null(out, "code", code);
    if (!rc)
        rc = buf_append(out, "}}", 2);
    if (!rc)
        return 0;

out_restore:
    out->len = start;
    if (out->data)
        out->data[start] = '\0';
    return rc;
}

/* ------------------------------------------------------- generated text */

static void each_tool_call(const jscan_val *fnv, int64_t choice, int64_t tool, openai_text_fn fn, void *ud)
{
    jscan_val x;
    if (jscan_val_get(fnv, "name", &x) == 0 && x.type == JSCAN_STRING)
        fn(ud, OPENAI_TEXT_TOOL_NAME, choice, tool, &x);
    if (jscan_val_get(fnv, "arguments", &x) == 0 && x.type == JSCAN_STRING)
        fn(ud, OPENAI_TEXT_TOOL_ARGS, choice, tool, &x);
}

static void each_text_of(const jscan_val *msg, int64_t choice, openai_text_fn fn, void *ud)
{
    jscan_iter it;
    jscan_val k, v;
    if (msg->type != JSCAN_OBJECT || jscan_iter_init(&it, msg) != 0)
        return;
    while (jscan_obj_next(&it, &k, &v) == 0) {
        if (jscan_str_eq(&k, "content", 7)) {
            if (v.type == JSCAN_STRING) {
                fn(ud, OPENAI_TEXT_CONTENT, choice, -1, &v);
            } else if (v.type == JSCAN_ARRAY) {
                jscan_iter pit;
                jscan_val part, t;
                if (jscan_iter_init(&pit, &v) == 0)
                    while (jscan_arr_next(&pit, &part) == 0)
                        if (jscan_val_get(&part, "text", &t) == 0 && t.type == JSCAN_STRING)
                            fn(ud, OPENAI_TEXT_CONTENT, choice, -1, &t);
            }
        } else if (jscan_str_eq(&k, "reasoning", 9) || jscan_str_eq(&k, "reasoning_content", 17)) {
            if (v.type == JSCAN_STRING)
                fn(ud, OPENAI_TEXT_REASONING, choice, -1, &v);
        } else if (jscan_str_eq(&k, "refusal", 7)) {
            if (v.type == JSCAN_STRING)
                fn(ud, OPENAI_TEXT_REFUSAL, choice, -1, &v);
        } else if (jscan_str_eq(&k, "tool_calls", 10) && v.type == JSCAN_ARRAY) {
            jscan_iter tit;
            jscan_val call, idx, fnv;
            int64_t pos = 0;
            if (jscan_iter_init(&tit, &v) != 0)
                continue;
            while (jscan_arr_next(&tit, &call) == 0) {
                int64_t tool = pos++;
                if (jscan_val_get(&call, "index", &idx) == 0 && jscan_int64(&idx, &tool) != 0)
                    tool = pos - 1;
                if (jscan_val_get(&call, "function", &fnv) == 0)
                    each_tool_call(&fnv, choice, tool, fn, ud);
            }
        } else if (jscan_str_eq(&k, "function_call", 13) && v.type == JSCAN_OBJECT) {
            each_tool_call(&v, choice, 0, fn, ud);
        }
    }
}

int openai_each_text(const char *data, size_t n, bool delta, openai_text_fn fn, void *ud)
{
    jscan_val root, choices, choice, idx, msg;
    jscan_iter it;
    if (jscan_root(data, n, &root) != 0 || root.type != JSCAN_OBJECT)
        return -EINVAL;
    if (jscan_val_get(&root, "choices", &choices) != 0 || choices.type != JSCAN_ARRAY ||
        jscan_iter_init(&it, &choices) != 0)
        return 0;
    int64_t pos = 0;
    while (jscan_arr_next(&it, &choice) == 0) {
        int64_t ci = pos++;
        if (jscan_val_get(&choice, "index", &idx) == 0 && jscan_int64(&idx, &ci) != 0)
            ci = pos - 1;
        if (jscan_val_get(&choice, delta ? "delta" : "message", &msg) == 0)
            each_text_of(&msg, ci, fn, ud);
    }
    return 0;
}
