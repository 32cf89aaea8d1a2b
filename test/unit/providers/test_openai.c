/* test_openai.c - OpenAI chat-completions scan/rewrite/usage helpers,
 * checked against the provider wire fixtures with jansson as the oracle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/buf.h"
#include "providers/jscan.h"
#include "providers/openai.h"

#define FIX TG_FIXTURES "/providers/"
#define JFLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)

static const char *const request_fixtures[] = {
    "openai/chat_completion_request.json",
    "openai/chat_stream_request.json",
    "openai/chat_completion_tool_call_request.json",
    "openai/chat_stream_tool_call_request.json",
    "openrouter/chat_completion_request.json",
    "openrouter/chat_completion_tool_call_request.json",
    "openrouter/chat_stream_request.json",
    "openrouter/chat_stream_midstream_error_request.json",
    "fireworks/chat_completion_request.json",
};
#define N_REQUEST_FIXTURES (sizeof(request_fixtures) / sizeof(request_fixtures[0]))

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    assert_true(sz >= 0);
    rewind(f);
    char *p = malloc((size_t)sz + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)sz, f), (size_t)sz);
    p[sz] = '\0';
    fclose(f);
    *len = (size_t)sz;
    return p;
}

static char *read_fixture(const char *rel, size_t *len)
{
    char path[1024];
    assert_true(snprintf(path, sizeof(path), "%s%s", FIX, rel) < (int)sizeof(path));
    return read_file(path, len);
}

static json_t *load(const char *p, size_t n)
{
    json_error_t jerr;
    json_t *j = json_loadb(p, n, JFLAGS, &jerr);
    if (!j)
        fail_msg("jansson: %s at %d: %.*s", jerr.text, jerr.position, (int)(n > 200 ? 200 : n), p);
    return j;
}

static int64_t int_or(json_t *j, int64_t dflt)
{
    return json_is_integer(j) ? (int64_t)json_integer_value(j) : dflt;
}

/* ---- openai_req_scan ------------------------------------------------ */

/* Everything openai_req_scan() reports agrees with jansson's reading. */
static void check_scan_against_jansson(const char *body, size_t n, const openai_req_info *info)
{
    json_t *j = load(body, n);
    json_t *model = json_object_get(j, "model");
    assert_true(json_is_string(model));
    assert_int_equal(info->model_len, json_string_length(model));
    assert_string_equal(info->model, json_string_value(model));
    assert_true(jscan_str_eq(&info->model_val, info->model, info->model_len));
    assert_int_equal(info->stream, json_is_true(json_object_get(j, "stream")));
    json_t *so = json_object_get(j, "stream_options");
    assert_int_equal(info->include_usage, json_is_true(json_object_get(so, "include_usage")));
    if (so) {
        assert_int_not_equal(info->stream_options_val.type, JSCAN_NONE);
        json_t *span = load(info->stream_options_val.p, info->stream_options_val.n);
        assert_true(json_equal(span, so));
        json_decref(span);
    } else {
        assert_int_equal(info->stream_options_val.type, JSCAN_NONE);
    }
    assert_true(info->max_tokens == int_or(json_object_get(j, "max_tokens"), -1));
    assert_true(info->max_completion_tokens ==
                int_or(json_object_get(j, "max_completion_tokens"), -1));
    assert_true(info->n == int_or(json_object_get(j, "n"), 1));
    size_t len;
    assert_int_equal(jscan_arr_len(&info->messages_val, &len), 0);
    assert_int_equal(len, json_array_size(json_object_get(j, "messages")));
    assert_true(len > 0);
    assert_ptr_equal(info->root.p, strchr(body, '{'));
    json_decref(j);
}

static void test_scan_fixtures(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_REQUEST_FIXTURES; i++) {
        size_t n;
        char *body = read_fixture(request_fixtures[i], &n);
        openai_req_info info;
        openai_err err;
        if (openai_req_scan(body, n, &info, &err) != 0)
            fail_msg("%s: %s", request_fixtures[i], err.message);
        check_scan_against_jansson(body, n, &info);
        free(body);
    }

    /* and a few values written out, as the fixtures show them */
    size_t n;
    openai_req_info info;
    openai_err err;
    char *body = read_fixture("openai/chat_completion_request.json", &n);
    assert_int_equal(openai_req_scan(body, n, &info, &err), 0);
    assert_string_equal(info.model, "gpt-4o");
    assert_false(info.stream);
    assert_false(info.include_usage);
    assert_int_equal(info.stream_options_val.type, JSCAN_NONE);
    assert_true(info.max_tokens == -1 && info.max_completion_tokens == -1 && info.n == 1);
    assert_int_equal(info.model_val.n, 8);
    assert_memory_equal(info.model_val.p, "\"gpt-4o\"", 8);
    free(body);

    body = read_fixture("openai/chat_stream_request.json", &n);
    assert_int_equal(openai_req_scan(body, n, &info, &err), 0);
    assert_string_equal(info.model, "gpt-4o-mini");
    assert_true(info.stream);
    assert_true(info.include_usage);
    assert_int_equal(info.stream_options_val.type, JSCAN_OBJECT);
    assert_int_equal(info.include_usage_val.type, JSCAN_TRUE);
    free(body);

    body = read_fixture("openrouter/chat_stream_midstream_error_request.json", &n);
    assert_int_equal(openai_req_scan(body, n, &info, &err), 0);
    assert_string_equal(info.model, "minimax/minimax-m2:free");
    assert_true(info.max_completion_tokens == 10);
    assert_true(info.max_tokens == -1);
    free(body);

    body = read_fixture("fireworks/chat_completion_request.json", &n);
    assert_int_equal(openai_req_scan(body, n, &info, &err), 0);
    assert_string_equal(info.model, "accounts/fireworks/models/llama-v3p1-8b-instruct");
    free(body);
}

static void test_scan_edge_values(void **state)
{
    (void)state;
    openai_req_info info;
    openai_err err;
    static const char nulls[] = "{\"model\":\"a\",\"messages\":[{}],\"stream\":null,"
                                "\"stream_options\":null,\"max_tokens\":null,\"n\":null,"
                                "\"max_completion_tokens\":null}";
    assert_int_equal(openai_req_scan(nulls, sizeof(nulls) - 1, &info, &err), 0);
    assert_false(info.stream);
    assert_false(info.include_usage);
    assert_int_equal(info.stream_options_val.type, JSCAN_NULL);
    assert_true(info.max_tokens == -1 && info.max_completion_tokens == -1 && info.n == 1);

    static const char esc[] = " {\"mod\\u0065l\":\"gpt\\u002d4o\",\"messages\":[1],\"stream\":true,"
                              "\"stream_options\":{\"include_usage\":false},\"max_tokens\":0,"
                              "\"n\":3,\"max_completion_tokens\":9007199254740993} ";
    assert_int_equal(openai_req_scan(esc, sizeof(esc) - 1, &info, &err), 0);
    assert_string_equal(info.model, "gpt-4o");
    assert_true(info.stream);
    assert_false(info.include_usage);
    assert_int_equal(info.include_usage_val.type, JSCAN_FALSE);
    assert_true(info.max_tokens == 0 && info.n == 3);
    assert_true(info.max_completion_tokens == 9007199254740993LL);

    /* the longest model name that fits, and one byte more */
    char body[600];
    char name[300];
    memset(name, 'm', sizeof(name));
    int len = snprintf(body, sizeof(body), "{\"model\":\"%.*s\",\"messages\":[{}]}",
                       OPENAI_MODEL_MAX - 1, name);
    assert_int_equal(openai_req_scan(body, (size_t)len, &info, &err), 0);
    assert_int_equal(info.model_len, OPENAI_MODEL_MAX - 1);
    len = snprintf(body, sizeof(body), "{\"model\":\"%.*s\",\"messages\":[{}]}", OPENAI_MODEL_MAX,
                   name);
    assert_int_equal(openai_req_scan(body, (size_t)len, &info, &err), -EINVAL);
    assert_string_equal(err.param, "model");
    assert_string_equal(err.code, "string_above_max_length");
}

struct err_case {
    const char *body;
    const char *param; /* expected err.param, NULL for none */
    const char *code;  /* expected err.code, NULL for none */
    const char *text;  /* a substring of err.message */
};

static void test_scan_errors(void **state)
{
    (void)state;
    static const struct err_case cases[] = {
        {"", NULL, NULL, "unexpected end of input at byte 0"},
        {"{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\"}]", NULL, NULL,
         "could not parse the JSON body of your request: unexpected end of input at byte 46"},
        {"{\"model\":\"gpt-4o\",\"messages\":[1,]}", NULL, NULL, "unexpected character at byte 32"},
        {"{\"model\":\"gpt-4o\",\"messages\":[\"\xff\"]}", NULL, NULL,
         "invalid UTF-8 in string at byte 31"},
        {"{\"model\":\"a\",\"messages\":[1]} {}", NULL, NULL, "trailing characters"},
        {"[]", NULL, "invalid_type", "must be a JSON object, but got an array"},
        {"\"model\"", NULL, "invalid_type", "but got a string"},
        {"{\"messages\":[{}]}", "model", "missing_required_parameter", "'model'"},
        {"{\"model\":5,\"messages\":[{}]}", "model", "invalid_type",
         "Invalid type for 'model': expected a string, but got a number instead."},
        {"{\"model\":null,\"messages\":[{}]}", "model", "invalid_type", "got null"},
        {"{\"model\":\"\",\"messages\":[{}]}", "model", "empty_string", "empty string"},
        {"{\"model\":\"a\\u0000b\",\"messages\":[{}]}", "model", "invalid_value", "NUL"},
        {"{\"model\":\"a\",\"model\":\"b\",\"messages\":[{}]}", "model", NULL, "more than once"},
        {"{\"model\":\"a\",\"mod\\u0065l\":\"b\",\"messages\":[{}]}", "model", NULL,
         "more than once"},
        {"{\"model\":\"a\"}", "messages", "missing_required_parameter", "'messages'"},
        {"{\"model\":\"a\",\"messages\":{}}", "messages", "invalid_type", "but got an object"},
        {"{\"model\":\"a\",\"messages\":\"hi\"}", "messages", "invalid_type", "expected an array"},
        {"{\"model\":\"a\",\"messages\":[]}", "messages", "empty_array", "empty array"},
        {"{\"model\":\"a\",\"messages\":[ \n ]}", "messages", "empty_array", "empty array"},
        {"{\"model\":\"a\",\"messages\":[1],\"messages\":[2]}", "messages", NULL, "more than once"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream\":\"yes\"}", "stream", "invalid_type",
         "expected a boolean, but got a string"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream\":1}", "stream", "invalid_type", "a number"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream\":false,\"stream\":true}", "stream", NULL,
         "more than once"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream_options\":\"x\"}", "stream_options",
         "invalid_type", "expected an object"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream_options\":[]}", "stream_options",
         "invalid_type", "an array"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream_options\":{\"include_usage\":1}}",
         "stream_options.include_usage", "invalid_type", "expected a boolean"},
        {"{\"model\":\"a\",\"messages\":[1],\"stream_options\":{\"include_usage\":true,"
         "\"include_usage\":false}}",
         "stream_options.include_usage", NULL, "more than once"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_tokens\":\"5\"}", "max_tokens", "invalid_type",
         "expected an integer, but got a string"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_tokens\":-1}", "max_tokens",
         "integer_below_min_value", "got -1 instead"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_tokens\":1.5}", "max_tokens", "invalid_type",
         "decimal"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_tokens\":1e2}", "max_tokens", "invalid_type",
         "decimal"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_tokens\":99999999999999999999}", "max_tokens",
         "invalid_value", "out of range"},
        {"{\"model\":\"a\",\"messages\":[1],\"max_completion_tokens\":-5}", "max_completion_tokens",
         "integer_below_min_value", ">= 0"},
        {"{\"model\":\"a\",\"messages\":[1],\"n\":0}", "n", "integer_below_min_value", ">= 1"},
        {"{\"model\":\"a\",\"messages\":[1],\"n\":\"2\"}", "n", "invalid_type", "an integer"},
        {"{\"model\":\"a\",\"messages\":[1],\"n\":1,\"n\":5}", "n", NULL, "more than once"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        openai_req_info info;
        openai_err err;
        memset(&err, 0x55, sizeof(err));
        if (openai_req_scan(cases[i].body, strlen(cases[i].body), &info, &err) != -EINVAL)
            fail_msg("case %zu accepted", i);
        assert_int_equal(err.status, 400);
        assert_string_equal(err.type, "invalid_request_error");
        if (cases[i].param)
            assert_string_equal(err.param, cases[i].param);
        else
            assert_null(err.param);
        if (cases[i].code)
            assert_string_equal(err.code, cases[i].code);
        else
            assert_null(err.code);
        if (!strstr(err.message, cases[i].text))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, cases[i].text);
        if (cases[i].param && strcmp(cases[i].param, "stream_options.include_usage") != 0 &&
            !strstr(err.message, cases[i].param))
            fail_msg("case %zu: message \"%s\" does not name %s", i, err.message, cases[i].param);
    }
}

static void test_scan_depth(void **state)
{
    (void)state;
    /* the top-level object plus 63 arrays is the limit */
    char body[300];
    openai_req_info info;
    openai_err err;
    for (int extra = 0; extra <= 1; extra++) {
        size_t depth = 63 + (size_t)extra, n = 0;
        n += (size_t)snprintf(body, sizeof(body), "{\"model\":\"a\",\"messages\":");
        memset(body + n, '[', depth);
        n += depth;
        body[n++] = '1';
        memset(body + n, ']', depth);
        n += depth;
        body[n++] = '}';
        int rc = openai_req_scan(body, n, &info, &err);
        if (!extra) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_non_null(strstr(err.message, "nesting too deep at byte 87"));
        }
    }
}

/* ---- openai_req_rewrite --------------------------------------------- */

static const char weird_model[] = "prov/\"m\"\\x\n\x01-caf\xc3\xa9";

/* out must be body with the model value replaced and, at most, the one
 * member insert inserted somewhere; nothing else may differ. */
static void assert_only_spliced(const char *body, size_t n, const openai_req_info *info,
                                const buf *out, const char *insert)
{
    buf want;
    buf_init(&want, 2 * n + 1024);
    size_t off = (size_t)(info->model_val.p - body);
    assert_int_equal(buf_append(&want, body, off), 0);
    assert_int_equal(buf_append(&want, "\"", 1), 0);
    assert_int_equal(buf_append_json_escaped(&want, weird_model, sizeof(weird_model) - 1), 0);
    assert_int_equal(buf_append(&want, "\"", 1), 0);
    off += info->model_val.n;
    assert_int_equal(buf_append(&want, body + off, n - off), 0);
    if (!insert) {
        assert_int_equal(out->len, want.len);
        assert_memory_equal(out->data, want.data, want.len);
    } else {
        const char *at = strstr(out->data, insert);
        assert_non_null(at);
        size_t pre = (size_t)(at - out->data), il = strlen(insert);
        assert_int_equal(out->len, want.len + il);
        assert_memory_equal(out->data, want.data, pre);
        assert_memory_equal(out->data + pre + il, want.data + pre, want.len - pre);
    }
    buf_free(&want);
}

static void test_rewrite_fixtures(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_REQUEST_FIXTURES; i++) {
        for (int want_usage = 0; want_usage <= 1; want_usage++) {
            size_t n;
            char *body = read_fixture(request_fixtures[i], &n);
            openai_req_info info, again;
            openai_err err;
            buf out;
            assert_int_equal(openai_req_scan(body, n, &info, &err), 0);
            buf_init(&out, 1 << 20);
            assert_int_equal(openai_req_rewrite(body, n, &info, weird_model,
                                                sizeof(weird_model) - 1, want_usage, &out),
                             0);

            json_t *orig = load(body, n), *got = load(out.data, out.len);
            /* the model changed, escaped correctly */
            json_t *m = json_object_get(got, "model");
            assert_true(json_is_string(m));
            assert_int_equal(json_string_length(m), sizeof(weird_model) - 1);
            assert_memory_equal(json_string_value(m), weird_model, sizeof(weird_model) - 1);
            /* stream_options: include_usage forced when wanted, the rest kept */
            json_t *so_o = json_object_get(orig, "stream_options");
            json_t *so_g = json_object_get(got, "stream_options");
            if (want_usage) {
                assert_true(json_is_true(json_object_get(so_g, "include_usage")));
                json_t *a = so_o ? json_deep_copy(so_o) : json_object();
                json_t *b = json_deep_copy(so_g);
                json_object_del(a, "include_usage");
                json_object_del(b, "include_usage");
                assert_true(json_equal(a, b));
                json_decref(a);
                json_decref(b);
            } else {
                assert_true(so_o ? json_equal(so_o, so_g) : so_g == NULL);
            }
            /* every other member is the same */
            json_object_del(orig, "model");
            json_object_del(got, "model");
            json_object_del(orig, "stream_options");
            json_object_del(got, "stream_options");
            assert_true(json_equal(orig, got));
            json_decref(orig);
            json_decref(got);

            /* and byte for byte, nothing else moved */
            const char *insert = NULL;
            if (want_usage && !info.include_usage) {
                assert_int_equal(info.stream_options_val.type, JSCAN_NONE); /* fixtures */
                insert = ",\"stream_options\":{\"include_usage\":true}";
            }
            assert_only_spliced(body, n, &info, &out, insert);

            /* the result is a request we accept, with the new model */
            assert_int_equal(openai_req_scan(out.data, out.len, &again, &err), 0);
            assert_int_equal(again.model_len, sizeof(weird_model) - 1);
            assert_memory_equal(again.model, weird_model, again.model_len);
            assert_int_equal(again.include_usage, want_usage || info.include_usage);
            assert_int_equal(again.stream, info.stream);
            buf_free(&out);
            free(body);
        }
    }
}

static void rewrite_case(const char *body, bool want_usage, const char *want)
{
    openai_req_info info;
    openai_err err;
    buf out;
    size_t n = strlen(body);
    if (openai_req_scan(body, n, &info, &err) != 0)
        fail_msg("%s: %s", body, err.message);
    buf_init(&out, 4096);
    assert_int_equal(openai_req_rewrite(body, n, &info, "B", 1, want_usage, &out), 0);
    assert_string_equal(out.data, want);
    buf_free(&out);
}

static void test_rewrite_cases(void **state)
{
    (void)state;
    rewrite_case("{\"model\":\"a\",\"messages\":[1],\"stream\":true,\"stream_options\":null}", true,
                 "{\"model\":\"B\",\"messages\":[1],\"stream\":true,"
                 "\"stream_options\":{\"include_usage\":true}}");
    rewrite_case("{\"model\":\"a\",\"messages\":[1],\"stream\":true,\"stream_options\":null}",
                 false,
                 "{\"model\":\"B\",\"messages\":[1],\"stream\":true,\"stream_options\":null}");
    rewrite_case("{\"stream_options\":{\"include_usage\":false,\"x\":1},\"model\":\"a\","
                 "\"messages\":[1]}",
                 true,
                 "{\"stream_options\":{\"include_usage\":true,\"x\":1},\"model\":\"B\","
                 "\"messages\":[1]}");
    rewrite_case("{\"stream_options\":{\"x\":[1]} ,\"model\":\"a\",\"messages\":[1]}", true,
                 "{\"stream_options\":{\"x\":[1],\"include_usage\":true} ,\"model\":\"B\","
                 "\"messages\":[1]}");
    rewrite_case("{\"model\":\"a\",\"stream_options\":{ },\"messages\":[1]}", true,
                 "{\"model\":\"B\",\"stream_options\":{\"include_usage\":true },\"messages\":[1]}");
    rewrite_case("{\"model\":\"a\",\"messages\":[1],\"stream_options\":{\"include_usage\":null}}",
                 true,
                 "{\"model\":\"B\",\"messages\":[1],\"stream_options\":{\"include_usage\":true}}");
    rewrite_case("{\"model\":\"a\",\"messages\":[1],\"stream_options\":{\"include_usage\":true}}",
                 true,
                 "{\"model\":\"B\",\"messages\":[1],\"stream_options\":{\"include_usage\":true}}");
    rewrite_case("{\"model\":\"a\",\"messages\":[1]}", true,
                 "{\"model\":\"B\",\"messages\":[1],\"stream_options\":{\"include_usage\":true}}");
    rewrite_case("\n {\"mod\\u0065l\" : \"a\" ,\"messages\":[\"}\"] }\n", true,
                 "\n {\"mod\\u0065l\" : \"B\" ,\"messages\":[\"}\"],"
                 "\"stream_options\":{\"include_usage\":true} }\n");
    rewrite_case("{\"messages\":[1],\"model\":\"a\\\"b\"}", false,
                 "{\"messages\":[1],\"model\":\"B\"}");
}

static void test_rewrite_errors(void **state)
{
    (void)state;
    static const char body[] = "{\"model\":\"a\",\"messages\":[1]}";
    static const char other[] = "{\"model\":\"a\",\"messages\":[1]}";
    openai_req_info info;
    openai_err err;
    buf out;
    assert_int_equal(openai_req_scan(body, sizeof(body) - 1, &info, &err), 0);
    buf_init(&out, 64);
    assert_int_equal(buf_append_str(&out, "kept"), 0);
    /* a model name that is not UTF-8, empty, or holds a NUL */
    assert_int_equal(openai_req_rewrite(body, sizeof(body) - 1, &info, "a\xff", 2, true, &out),
                     -EINVAL);
    assert_int_equal(openai_req_rewrite(body, sizeof(body) - 1, &info, "", 0, true, &out), -EINVAL);
    assert_int_equal(openai_req_rewrite(body, sizeof(body) - 1, &info, "a\0b", 3, true, &out),
                     -EINVAL);
    /* info that belongs to other bytes */
    assert_int_equal(openai_req_rewrite(other, sizeof(other) - 1, &info, "b", 1, true, &out),
                     -EINVAL);
    /* the cap: the output would not fit; what was in out stays */
    assert_int_equal(openai_req_rewrite(body, sizeof(body) - 1, &info, "b", 1, true, &out), -E2BIG);
    assert_int_equal(out.len, 4);
    assert_string_equal(out.data, "kept");
    assert_int_equal(openai_req_rewrite(body, sizeof(body) - 1, &info, "b", 1, false, &out), 0);
    assert_string_equal(out.data, "kept{\"model\":\"b\",\"messages\":[1]}");
    buf_free(&out);
}

/* ---- stream chunks -------------------------------------------------- */

struct event {
    char *data; /* the joined data lines, NUL-terminated (owned) */
    size_t len;
};

/* Splits an SSE body into its data payloads, skipping comments and [DONE];
 * returns the number of events, and *done counts the [DONE] markers. */
static size_t sse_events(const char *sse, struct event *ev, size_t max, size_t *done)
{
    size_t count = 0;
    *done = 0;
    const char *p = sse;
    while (*p) {
        const char *end = strstr(p, "\n\n");
        size_t blen = end ? (size_t)(end - p) : strlen(p);
        buf data;
        bool any = false;
        buf_init(&data, 1 << 20);
        for (const char *line = p; line < p + blen;) {
            const char *nl = memchr(line, '\n', (size_t)(p + blen - line));
            size_t ll = nl ? (size_t)(nl - line) : (size_t)(p + blen - line);
            if (ll >= 5 && memcmp(line, "data:", 5) == 0) {
                size_t skip = (ll > 5 && line[5] == ' ') ? 6 : 5;
                if (any)
                    assert_int_equal(buf_append(&data, "\n", 1), 0);
                assert_int_equal(buf_append(&data, line + skip, ll - skip), 0);
                any = true;
            }
            line += ll + 1;
        }
        if (any && data.len == 6 && memcmp(data.data, "[DONE]", 6) == 0) {
            (*done)++;
            buf_free(&data);
        } else if (any) {
            assert_true(count < max);
            ev[count].data = data.data;
            ev[count].len = data.len;
            count++;
        } else {
            buf_free(&data);
        }
        p += blen;
        while (*p == '\n')
            p++;
    }
    return count;
}

/* openai_chunk_scan() agrees with jansson on one event. */
static void check_chunk_against_jansson(const struct event *e, const openai_chunk_info *ci)
{
    json_t *j = load(e->data, e->len);
    json_t *choices = json_object_get(j, "choices");
    json_t *usage = json_object_get(j, "usage");
    assert_int_equal(ci->has_choices, json_is_array(choices));
    assert_int_equal(ci->choices_empty, json_is_array(choices) && json_array_size(choices) == 0);
    assert_int_equal(ci->has_usage, json_is_object(usage));
    assert_true(ci->usage.prompt_tokens == int_or(json_object_get(usage, "prompt_tokens"), -1));
    assert_true(ci->usage.completion_tokens ==
                int_or(json_object_get(usage, "completion_tokens"), -1));
    assert_true(ci->usage.total_tokens == int_or(json_object_get(usage, "total_tokens"), -1));
    assert_true(
        ci->usage.cached_tokens ==
        int_or(json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens"),
               -1));
    assert_int_equal(ci->has_error, json_is_object(json_object_get(j, "error")));
    const char *fr = NULL;
    for (size_t i = 0; !fr && i < json_array_size(choices); i++)
        fr = json_string_value(json_object_get(json_array_get(choices, i), "finish_reason"));
    if (fr) {
        assert_int_equal(ci->finish_reason.len, strlen(fr));
        assert_memory_equal(ci->finish_reason.p, fr, strlen(fr));
    } else {
        assert_int_equal(ci->finish_reason.len, 0);
    }
    json_decref(j);
}

struct stream_expect {
    const char *file;
    bool openai; /* OpenAI's own stream: the last chunk is usage-only */
    int64_t prompt, completion, total, cached; /* usage of the usage-carrying chunk */
    const char *finish;                        /* the finish_reason that appears */
    bool error_last;                           /* the last chunk carries a mid-stream error */
};

static void test_chunk_streams(void **state)
{
    (void)state;
    static const struct stream_expect streams[] = {
        {"openai/chat_stream.sse", true, 78, 9, 87, 0, "stop", false},
        {"openai/chat_stream_tool_call.sse", true, 53, 15, 68, 0, "tool_calls", false},
        {"openai/chat_stream_parallel_tool_calls.sse", true, 149, 60, 209, -1, "tool_calls", false},
        {"openai/chat_stream_2024_gpt4o.sse", true, 14, 30, 44, -1, "stop", false},
        {"openrouter/chat_stream.sse", false, 43, 36, 79, 0, "stop", false},
        {"openrouter/chat_stream_midstream_error.sse", false, 43, 10, 53, 0, "length", true},
    };
    for (size_t s = 0; s < sizeof(streams) / sizeof(streams[0]); s++) {
        const struct stream_expect *x = &streams[s];
        size_t n, done;
        char *sse = read_fixture(x->file, &n);
        struct event ev[256];
        size_t count = sse_events(sse, ev, 256, &done);
        assert_int_equal(done, 1);
        assert_true(count >= 2);
        size_t usage_only = 0, with_usage = 0, errors = 0, finishes = 0;
        for (size_t i = 0; i < count; i++) {
            openai_chunk_info ci;
            assert_int_equal(openai_chunk_scan(ev[i].data, ev[i].len, &ci), 0);
            check_chunk_against_jansson(&ev[i], &ci);
            bool last = (i == count - 1);
            if (openai_chunk_is_usage_only(&ci)) {
                usage_only++;
                assert_true(last);
            }
            if (ci.has_usage) {
                with_usage++;
                assert_true(last);
                assert_true(ci.usage.prompt_tokens == x->prompt);
                assert_true(ci.usage.completion_tokens == x->completion);
                assert_true(ci.usage.total_tokens == x->total);
                assert_true(ci.usage.cached_tokens == x->cached);
                /* OpenRouter's usage chunk still has a choice in it */
                assert_int_equal(ci.choices_empty, x->openai);
            }
            if (ci.has_error) {
                errors++;
                assert_true(last && x->error_last);
                assert_int_equal(ci.error.type, JSCAN_OBJECT);
                char *eo = strndup(ci.error.p, ci.error.n);
                assert_non_null(eo);
                assert_non_null(strstr(eo, "\"message\":\"Token limit reached\""));
                free(eo);
            }
            if (slice_eq(ci.finish_reason, x->finish))
                finishes++;
            else
                assert_int_equal(ci.finish_reason.len, 0);
        }
        assert_int_equal(usage_only, x->openai ? 1 : 0);
        assert_int_equal(with_usage, 1);
        assert_int_equal(errors, x->error_last ? 1 : 0);
        assert_true(finishes >= 1);
        for (size_t i = 0; i < count; i++)
            free(ev[i].data);
        free(sse);
    }
}

static void test_chunk_edges(void **state)
{
    (void)state;
    openai_chunk_info ci;
    assert_int_equal(openai_chunk_scan("[DONE]", 6, &ci), -EINVAL);
    assert_int_equal(openai_chunk_scan("[]", 2, &ci), -EINVAL);
    assert_int_equal(openai_chunk_scan("{\"choices\":[", 12, &ci), -EINVAL);
    static const char a[] = "{\"choices\":[],\"usage\":null}";
    assert_int_equal(openai_chunk_scan(a, sizeof(a) - 1, &ci), 0);
    assert_true(ci.has_choices && ci.choices_empty);
    assert_false(ci.has_usage);
    assert_false(openai_chunk_is_usage_only(&ci));
    static const char b[] = "{\"usage\":{\"prompt_tokens\":1}}";
    assert_int_equal(openai_chunk_scan(b, sizeof(b) - 1, &ci), 0);
    assert_true(ci.has_usage);
    assert_false(ci.has_choices);
    assert_false(openai_chunk_is_usage_only(&ci)); /* no choices: [] */
    assert_true(ci.usage.prompt_tokens == 1 && ci.usage.completion_tokens == -1);
    static const char c[] =
        "{\"choices\":[{\"finish_reason\":null},{\"finish_reason\":\"length\"}],"
        "\"error\":\"text\",\"usage\":{\"prompt_tokens\":2.5,"
        "\"prompt_tokens_details\":{\"cached_tokens\":7}}}";
    assert_int_equal(openai_chunk_scan(c, sizeof(c) - 1, &ci), 0);
    assert_true(slice_eq(ci.finish_reason, "length"));
    assert_false(ci.has_error); /* only an error object counts */
    assert_true(ci.usage.prompt_tokens == -1 && ci.usage.cached_tokens == 7);
}

/* ---- whole responses ------------------------------------------------ */

static void test_resp_usage(void **state)
{
    (void)state;
    static const char *const files[] = {
        "openai/chat_completion_response.json",
        "openai/chat_completion_response_cached_tokens.json",
        "openai/chat_completion_tool_call_response.json",
        "openrouter/chat_completion_response.json",
        "openrouter/chat_completion_tool_call_response.json",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        size_t n;
        char *body = read_fixture(files[i], &n);
        openai_usage u;
        assert_int_equal(openai_resp_usage(body, n, &u), 0);
        json_t *j = load(body, n), *usage = json_object_get(j, "usage");
        assert_true(u.prompt_tokens == int_or(json_object_get(usage, "prompt_tokens"), -1));
        assert_true(u.completion_tokens == int_or(json_object_get(usage, "completion_tokens"), -1));
        assert_true(u.total_tokens == int_or(json_object_get(usage, "total_tokens"), -1));
        assert_true(u.cached_tokens ==
                    int_or(json_object_get(json_object_get(usage, "prompt_tokens_details"),
                                           "cached_tokens"),
                           -1));
        assert_true(u.prompt_tokens > 0 && u.total_tokens >= u.prompt_tokens);
        json_decref(j);
        free(body);
    }
    size_t n;
    openai_usage u;
    char *body = read_fixture("openai/chat_completion_response_cached_tokens.json", &n);
    assert_int_equal(openai_resp_usage(body, n, &u), 0);
    assert_true(u.cached_tokens == 4012);
    free(body);

    body = read_fixture("openai/error_401.json", &n);
    assert_int_equal(openai_resp_usage(body, n, &u), -ENOENT);
    assert_true(u.prompt_tokens == -1);
    free(body);
    assert_int_equal(openai_resp_usage("{\"usage\":null}", 14, &u), -ENOENT);
    assert_int_equal(openai_resp_usage("{\"usage\":{}", 11, &u), -EINVAL);
    assert_int_equal(openai_resp_usage("nope", 4, &u), -EINVAL);
}

/* ---- error envelope ------------------------------------------------- */

static void test_error_body(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 4096);
    assert_int_equal(openai_error_body(&out, "Bad model", "invalid_request_error", "model", NULL),
                     0);
    assert_string_equal(out.data,
                        "{\"error\":{\"message\":\"Bad model\",\"type\":\"invalid_request_error\","
                        "\"param\":\"model\",\"code\":null}}");
    buf_reset(&out);

    static const char msg[] = "say \"hi\"\\\n\ttab \x01 caf\xc3\xa9 bad\xff end";
    assert_int_equal(openai_error_body(&out, msg, "server_error", NULL, "x\"y"), 0);
    json_t *j = load(out.data, out.len);
    json_t *e = json_object_get(j, "error");
    assert_int_equal(json_object_size(j), 1);
    assert_int_equal(json_object_size(e), 4);
    assert_string_equal(json_string_value(json_object_get(e, "message")),
                        "say \"hi\"\\\n\ttab \x01 caf\xc3\xa9 bad\xef\xbf\xbd end");
    assert_string_equal(json_string_value(json_object_get(e, "type")), "server_error");
    assert_true(json_is_null(json_object_get(e, "param")));
    assert_string_equal(json_string_value(json_object_get(e, "code")), "x\"y");
    json_decref(j);

    /* a scan error goes straight into the envelope */
    openai_req_info info;
    openai_err err;
    static const char body[] = "{\"model\":\"a\",\"messages\":[]}";
    assert_int_equal(openai_req_scan(body, sizeof(body) - 1, &info, &err), -EINVAL);
    buf_reset(&out);
    assert_int_equal(openai_error_body(&out, err.message, err.type, err.param, err.code), 0);
    j = load(out.data, out.len);
    e = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(e, "param")), "messages");
    assert_string_equal(json_string_value(json_object_get(e, "code")), "empty_array");
    assert_string_equal(json_string_value(json_object_get(e, "message")), err.message);
    json_decref(j);

    /* required fields, and the cap (out is left as it was) */
    buf_reset(&out);
    assert_int_equal(openai_error_body(&out, NULL, "t", NULL, NULL), -EINVAL);
    assert_int_equal(openai_error_body(&out, "m", NULL, NULL, NULL), -EINVAL);
    buf small;
    buf_init(&small, 40);
    assert_int_equal(buf_append_str(&small, "x"), 0);
    assert_int_equal(openai_error_body(&small, "a long enough message", "t", NULL, NULL), -E2BIG);
    assert_string_equal(small.data, "x");
    buf_free(&small);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_fixtures),    cmocka_unit_test(test_scan_edge_values),
        cmocka_unit_test(test_scan_errors),      cmocka_unit_test(test_scan_depth),
        cmocka_unit_test(test_rewrite_fixtures), cmocka_unit_test(test_rewrite_cases),
        cmocka_unit_test(test_rewrite_errors),   cmocka_unit_test(test_chunk_streams),
        cmocka_unit_test(test_chunk_edges),      cmocka_unit_test(test_resp_usage),
        cmocka_unit_test(test_error_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
