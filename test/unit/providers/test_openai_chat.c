/* test_openai_chat.c - the OpenAI chat-completions chat_format
 * (providers/openai_chat.c): request decode/encode, stream and response
 * decode against the recorded fixtures, the encoders' exact bytes, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/buf.h"
#include "providers/chat.h"
#include "providers/sse.h"
#include "chat_test.h"

#define FIX TG_FIXTURES "/providers/"

static const chat_format *F = &chat_format_openai;

/* ------------------------------------------------------------ helpers */

static char *read_fixture(const char *rel, size_t *len) { return chat_test_read(FIX, rel, len); }

/* Decodes a request body; returns rc, r initialised (free it). */
static int decode(const char *body, chat_request *r, chat_error *err)
{
    assert_int_equal(chat_request_init(r), 0);
    memset(err, 0, sizeof *err);
    return F->req_decode(body, strlen(body), r, err);
}

static int decode_fixture(const char *rel, chat_request *r, chat_error *err)
{
    size_t n;
    char *body = read_fixture(rel, &n);
    assert_int_equal(chat_request_init(r), 0);
    int rc = F->req_decode(body, n, r, err);
    free(body);
    return rc;
}

static void assert_str(chat_str s, const char *want)
{
    assert_non_null(s.p);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

static void assert_buf(const buf *b, const char *want)
{
    if (b->len != strlen(want) || memcmp(b->data ? b->data : "", want, b->len) != 0)
        fail_msg("got  %.*s\nwant %s", (int)b->len, b->data ? b->data : "", want);
}

/* out with every "created":<digits> replaced by "created":0. */
static char *uncreated(const buf *b)
{
    char *s = malloc(b->len + 1);
    assert_non_null(s);
    size_t o = 0;
    for (size_t i = 0; i < b->len;) {
        static const char k[] = "\"created\":";
        if (b->len - i >= sizeof k - 1 && memcmp(b->data + i, k, sizeof k - 1) == 0) {
            memcpy(s + o, k, sizeof k - 1);
            o += sizeof k - 1;
            i += sizeof k - 1;
            s[o++] = '0';
            while (i < b->len && b->data[i] >= '0' && b->data[i] <= '9')
                i++;
            continue;
        }
        s[o++] = b->data[i++];
    }
    s[o] = '\0';
    return s;
}

static void assert_out(const buf *b, const char *want)
{
    char *got = uncreated(b);
    if (strcmp(got, want) != 0)
        fail_msg("got  %s\nwant %s", got, want);
    free(got);
}

/* Events recorded: their letters in order plus the collected answer. */
typedef struct rec {
    char kinds[4096];
    size_t n;
    chat_response resp;
    chat_error err; /* the last ERROR */
    int nerrors;
    int nfinish;
} rec;

static void rec_init(rec *r)
{
    memset(r, 0, sizeof *r);
    chat_response_init(&r->resp);
}

static int rec_emit(void *ud, const chat_event *ev)
{
    static const char letters[] = "STRCAFUXE"; /* START TEXT thinking(R) tool(C) Args ... */
    rec *r = ud;
    if (r->n + 1 < sizeof r->kinds)
        r->kinds[r->n++] = letters[ev->type];
    r->kinds[r->n] = '\0';
    if (ev->type == CHAT_EV_ERROR) {
        r->err = *ev->error;
        r->nerrors++;
    }
    if (ev->type == CHAT_EV_FINISH)
        r->nfinish++;
    return chat_response_collect(&r->resp, ev);
}

/* The run-length-free kinds: consecutive duplicates squeezed. */
static void squeeze(const rec *r, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < r->n && o + 1 < cap; i++)
        if (o == 0 || out[o - 1] != r->kinds[i])
            out[o++] = r->kinds[i];
    out[o] = '\0';
}

/* Parses an SSE body through the decoder; returns the first error or finish's rc. */
static int decode_stream(const char *body, size_t n, rec *r)
{
    return chat_test_decode_sse(F, body, n, 0, rec_emit, r);
}

static int decode_stream_fixture(const char *rel, rec *r)
{
    size_t n;
    char *body = read_fixture(rel, &n);
    int rc = decode_stream(body, n, r);
    free(body);
    return rc;
}

/* The jscan fast path for plain content chunks gives what the DOM path
 * gives, and hands everything else (escaped keys, duplicates, tool calls,
 * a finish, usage) to the DOM path. */
static void test_decode_stream_fast_path(void **state)
{
    (void)state;
    static const char body[] =
        "data: {\"id\":\"c1\",\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"
        /* fast: escapes decoded, NUL kept */
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\n\\u00e9\\u0000b\"},\"finish_reason\":null,\"logprobs\":null}],\"usage\":null,\"obfuscation\":\"x\"}\n\n"
        /* an escaped key: the DOM path reads it as content */
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"c\\u006fntent\":\"C\"}}]}\n\n"
        /* reasoning is not for the fast path */
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"R\",\"content\":\"D\"}}]}\n\n"
        /* a duplicate key: the DOM path refuses the chunk */
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\",\"content\":\"y\"}}]}\n\n";
    rec r;
    rec_init(&r);
    assert_int_equal(decode_stream(body, sizeof body - 1, &r), -EINVAL);
    assert_string_equal(r.kinds, "STTRT");
    static const char want[] = "a\n\xc3\xa9\0bCD";
    assert_int_equal(r.resp.text.len, sizeof want - 1);
    assert_memory_equal(r.resp.text.data, want, sizeof want - 1);
    assert_int_equal(r.resp.thinking.len, 1);
    chat_response_free(&r.resp);
}

static int stop_at_text(void *ud, const chat_event *ev)
{
    (void)ud;
    return ev->type == CHAT_EV_TEXT ? 7 : 0;
}

/* A callback's stop value comes back from the fast path too. */
static void test_decode_stream_fast_path_stop(void **state)
{
    (void)state;
    static const char first[] = "{\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}";
    static const char text[] = "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}";
    chat_stream *s = F->stream_dec_new();
    sse_event ev;
    memset(&ev, 0, sizeof ev);
    ev.has_data = true;
    ev.data = slice_make(first, sizeof first - 1);
    assert_int_equal(F->stream_dec_feed(s, &ev, stop_at_text, NULL), 0);
    ev.data = slice_make(text, sizeof text - 1);
    assert_int_equal(F->stream_dec_feed(s, &ev, stop_at_text, NULL), 7);
    F->stream_free(s);
}

/* ------------------------------------------------------------ request decode */

static void test_decode_chat_completion_request(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(decode_fixture("openai/chat_completion_request.json", &r, &err), 0);
    assert_str(r.model, "gpt-4o");
    assert_false(r.stream);
    assert_int_equal(r.nmsgs, 2);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM); /* "developer" */
    assert_int_equal(r.msgs[0].nparts, 1);
    assert_int_equal(r.msgs[0].parts[0].type, CHAT_PART_TEXT);
    assert_str(r.msgs[0].parts[0].text, "You are a helpful assistant.");
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_USER);
    assert_str(r.msgs[1].parts[0].text, "Hello!");
    assert_string_equal(r.unmapped, "");
    assert_true(r.max_tokens == -1 && r.n == -1 && r.seed == -1 && r.top_k == -1);
    assert_true(isnan(r.temperature) && isnan(r.top_p));
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_UNSET);
    assert_int_equal(r.parallel_tool_calls, -1);
    chat_request_free(&r);
}

static void test_decode_tool_call_request(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(decode_fixture("openai/chat_completion_tool_call_request.json", &r, &err), 0);
    assert_int_equal(r.ntools, 1);
    assert_str(r.tools[0].name, "get_current_weather");
    assert_str(r.tools[0].description, "Get the current weather in a given location");
    assert_false(r.tools[0].strict);
    assert_true(json_is_object(r.tools[0].parameters));
    json_t *req = json_object_get(r.tools[0].parameters, "required");
    assert_string_equal(json_string_value(json_array_get(req, 0)), "location");
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_AUTO);
    assert_str(r.msgs[0].parts[0].text, "What is the weather like in Boston today?");
    chat_request_free(&r);
}

static void test_decode_stream_request(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(decode_fixture("openai/chat_stream_request.json", &r, &err), 0);
    assert_str(r.model, "gpt-4o-mini");
    assert_true(r.stream);
    assert_true(r.include_usage);
    assert_int_equal(r.nmsgs, 3);
    const chat_msg *a = &r.msgs[1];
    assert_int_equal(a->role, CHAT_ROLE_ASSISTANT);
    assert_int_equal(a->nparts, 1); /* content null: only the call */
    assert_int_equal(a->parts[0].type, CHAT_PART_TOOL_CALL);
    assert_str(a->parts[0].id, "call_ZR5UUuTt3pf61kjwAJIYdVMj");
    assert_str(a->parts[0].name, "get_capital");
    assert_str(a->parts[0].args, "{\"country\":\"UK\"}");
    assert_null(a->parts[0].signature.p);
    const chat_msg *t = &r.msgs[2];
    assert_int_equal(t->role, CHAT_ROLE_TOOL);
    assert_int_equal(t->nparts, 1);
    assert_int_equal(t->parts[0].type, CHAT_PART_TOOL_RESULT);
    assert_str(t->parts[0].id, "call_ZR5UUuTt3pf61kjwAJIYdVMj");
    assert_str(t->parts[0].name, "get_capital"); /* looked up from the call */
    assert_str(t->parts[0].text, "London");
    assert_int_equal(r.ntools, 1);
    assert_true(r.tools[0].strict);
    assert_str(r.tools[0].description, "");
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);
}

static void test_decode_other_providers(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;

    /* usage {include: true}: cost accounting only, ignored */
    assert_int_equal(decode_fixture("openrouter/chat_completion_request.json", &r, &err), 0);
    assert_string_equal(r.unmapped, "");
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_str(r.msgs[0].parts[0].text, "Be helpful.");
    assert_str(r.model, "openai/gpt-5-mini");
    assert_false(r.stream);
    chat_request_free(&r);

    /* reasoning {enabled: true} changes the answer: unmapped */
    assert_int_equal(decode_fixture("openrouter/chat_stream_request.json", &r, &err), 0);
    assert_string_equal(r.unmapped, "reasoning");
    chat_request_free(&r);

    assert_int_equal(
        decode_fixture("openrouter/chat_stream_midstream_error_request.json", &r, &err), 0);
    assert_true(r.max_tokens == 10);
    assert_true(r.include_usage);
    chat_request_free(&r);

    assert_int_equal(decode_fixture("openrouter/chat_completion_tool_call_request.json", &r, &err),
                     0);
    assert_str(r.tools[0].name, "divide");
    assert_str(r.tools[0].description, "Divide two numbers.");
    chat_request_free(&r);

    assert_int_equal(decode_fixture("fireworks/chat_completion_request.json", &r, &err), 0);
    assert_str(r.model, "accounts/fireworks/models/llama-v3p1-8b-instruct");
    assert_str(r.msgs[1].parts[0].text, "Say this is a test");
    chat_request_free(&r);

    assert_int_equal(decode_fixture("openai/chat_stream_tool_call_request.json", &r, &err), 0);
    assert_int_equal(r.nmsgs, 1);
    chat_request_free(&r);
}

static void test_decode_fields(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(
        decode(
            "{\"model\":\"m\",\"messages\":["
            "{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":"
            "\"text\",\"text\":\"b\"}]},"
            "{\"role\":\"user\",\"name\":\"bob\",\"content\":[{\"type\":\"text\",\"text\":\"see\"},"
            "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
            "png;base64,iVBORw0=\",\"detail\":\"low\"}},"
            "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://x.test/a.jpg\"}}]},"
            "{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null,\"tool_calls\":["
            "{\"id\":\"fc_1_tgsig_c2lnbmF0dXJl\",\"type\":\"function\",\"function\":{\"name\":"
            "\"f\",\"arguments\":\"{}\"}},"
            "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":"
            "\"\"}}]},"
            "{\"role\":\"tool\",\"tool_call_id\":\"fc_1_tgsig_c2lnbmF0dXJl\",\"content\":[{"
            "\"type\":\"text\",\"text\":\"x\"},{\"type\":\"text\",\"text\":\"y\"}]},"
            "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":\"z\\u0000w\"},"
            "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"no\"},{\"type\":"
            "\"refusal\",\"refusal\":\"pe\"}]}],"
            "\"max_tokens\":5,\"max_completion_tokens\":7,\"temperature\":0.7,\"top_p\":1,"
            "\"frequency_penalty\":-0.5,\"presence_penalty\":0.25,\"seed\":42,\"n\":2,\"stop\":["
            "\"x\",\"y\"],"
            "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"f\"}},\"parallel_tool_"
            "calls\":false,"
            "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"out\","
            "\"strict\":true,\"schema\":{\"type\":\"object\"}}},"
            "\"user\":\"u-1\",\"store\":true,\"metadata\":{\"a\":\"b\"},\"service_tier\":\"auto\","
            "\"prompt_cache_key\":\"k\",\"safety_identifier\":\"s\",\"logprobs\":false,\"logit_"
            "bias\":{},"
            "\"modalities\":[\"text\"],\"stream_options\":{\"include_usage\":false,\"include_"
            "obfuscation\":false}}",
            &r, &err),
        0);
    assert_string_equal(r.unmapped, "");
    assert_int_equal(r.nmsgs, 6);
    assert_int_equal(r.msgs[0].nparts, 2);
    assert_str(r.msgs[0].parts[1].text, "b");
    const chat_msg *u = &r.msgs[1];
    assert_str(u->name, "bob");
    assert_int_equal(u->nparts, 3);
    assert_int_equal(u->parts[1].type, CHAT_PART_IMAGE);
    assert_str(u->parts[1].media_type, "image/png");
    assert_str(u->parts[1].data, "iVBORw0=");
    assert_str(u->parts[1].detail, "low");
    assert_null(u->parts[1].url.p);
    assert_str(u->parts[2].url, "https://x.test/a.jpg");
    assert_null(u->parts[2].data.p);
    const chat_msg *a = &r.msgs[2];
    assert_int_equal(a->nparts, 2); /* "" next to tool calls is no text */
    assert_str(a->parts[0].id, "fc_1");
    assert_str(a->parts[0].signature, "c2lnbmF0dXJl");
    assert_str(a->parts[1].args, "");
    assert_int_equal(r.msgs[3].role, CHAT_ROLE_TOOL);
    assert_str(r.msgs[3].parts[0].id, "fc_1");
    assert_str(r.msgs[3].parts[0].name, "f");
    assert_str(r.msgs[3].parts[0].text, "x\ny");
    assert_str(r.msgs[4].parts[0].name, "g");
    assert_int_equal(r.msgs[4].parts[0].text.len, 3); /* NUL kept */
    assert_memory_equal(r.msgs[4].parts[0].text.p, "z\0w", 3);
    assert_int_equal(r.msgs[5].nparts, 2);
    assert_str(r.msgs[5].parts[1].text, "pe");
    assert_true(r.max_tokens == 7); /* max_completion_tokens wins */
    assert_true(r.temperature == 0.7 && r.top_p == 1.0);
    assert_true(r.frequency_penalty == -0.5 && r.presence_penalty == 0.25);
    assert_true(r.seed == 42 && r.n == 2);
    assert_int_equal(r.nstop, 2);
    assert_str(r.stop[1], "y");
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_NAMED);
    assert_str(r.tool_choice_name, "f");
    assert_int_equal(r.parallel_tool_calls, 0);
    assert_int_equal(r.resp_format, CHAT_RESP_JSON_SCHEMA);
    assert_str(r.response_schema_name, "out");
    assert_string_equal(json_string_value(json_object_get(r.response_schema, "type")), "object");
    assert_str(r.user, "u-1");
    assert_false(r.include_usage);
    chat_request_free(&r);

    /* stop as a string, tool_choice strings, json_object */
    assert_int_equal(
        decode("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
               "\"stop\":\"END\",\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_"
               "object\"}}",
               &r, &err),
        0);
    assert_int_equal(r.nstop, 1);
    assert_str(r.stop[0], "END");
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_REQUIRED);
    assert_int_equal(r.resp_format, CHAT_RESP_JSON_OBJECT);
    chat_request_free(&r);
}

static void test_decode_unmapped(void **state)
{
    (void)state;
    static const struct {
        const char *extra; /* top-level members added */
        const char *msgs;  /* messages array */
        const char *want;
    } cases[] = {
        {",\"logprobs\":true", NULL, "logprobs"},
        {",\"top_logprobs\":3", NULL, "top_logprobs"},
        {",\"logit_bias\":{\"50256\":-100}", NULL, "logit_bias"},
        {",\"modalities\":[\"text\",\"audio\"]", NULL, "modalities"},
        {",\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}", NULL, "audio"},
        {",\"prediction\":{\"type\":\"content\",\"content\":\"x\"}", NULL, "prediction"},
        {",\"reasoning_effort\":\"high\"", NULL, "reasoning_effort"},
        {",\"verbosity\":\"low\"", NULL, "verbosity"},
        {",\"web_search_options\":{}", NULL, "web_search_options"},
        {",\"functions\":[{\"name\":\"f\"}]", NULL, "functions"},
        {",\"function_call\":\"auto\"", NULL, "function_call"},
        {",\"frobnicate\":1", NULL, "frobnicate"},
        {",\"tools\":[{\"type\":\"web_search\"}]", NULL, "tools[0].type"},
        {",\"tool_choice\":{\"type\":\"allowed_tools\",\"allowed_tools\":{}}", NULL, "tool_choice"},
        {"",
         "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
         "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"AA==\",\"format\":\"wav\"}}]}]",
         "messages[0].content[1].input_audio"},
        {"", "[{\"role\":\"user\",\"content\":[{\"type\":\"file\",\"file\":{\"file_id\":\"f\"}}]}]",
         "messages[0].content[0].file"},
        {"",
         "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"function\",\"name\":\"f\",\"content\":"
         "\"x\"}]",
         "messages[1].role"},
        {"",
         "[{\"role\":\"assistant\",\"content\":null,\"function_call\":{\"name\":\"f\","
         "\"arguments\":\"{}\"}}]",
         "messages[0].function_call"},
        /* not unmapped: defaults, nulls and ignored members */
        {",\"logprobs\":false,\"top_logprobs\":null,\"logit_bias\":{},\"modalities\":[\"text\"],"
         "\"store\":false,\"metadata\":{},\"service_tier\":\"flex\",\"prompt_cache_key\":\"a\","
         "\"prompt_cache_retention\":\"24h\",\"safety_identifier\":\"x\",\"unknown_null\":null",
         NULL, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[2048];
        snprintf(body, sizeof body, "{\"model\":\"m\",\"messages\":%s%s}",
                 cases[i].msgs ? cases[i].msgs : "[{\"role\":\"user\",\"content\":\"hi\"}]",
                 cases[i].extra);
        chat_request r;
        chat_error err;
        if (decode(body, &r, &err) != 0)
            fail_msg("%s: %s", body, err.message);
        if (strcmp(r.unmapped, cases[i].want) != 0)
            fail_msg("%s: unmapped '%s', want '%s'", body, r.unmapped, cases[i].want);
        /* and the encoder refuses it, naming it */
        if (cases[i].want[0]) {
            buf out;
            buf_init(&out, 1 << 20);
            chat_target t = {"gpt", 3, false};
            memset(&err, 0, sizeof err);
            assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
            assert_int_equal(err.status, 400);
            assert_string_equal(err.param, cases[i].want);
            assert_int_equal(out.len, 0);
            buf_free(&out);
        }
        chat_request_free(&r);
    }
}

static void test_decode_errors(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *param;
        const char *code;
        const char *message;
    } cases[] = {
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "model",
         "missing_required_parameter", "Missing required parameter: 'model'."},
        {"{\"model\":\"m\"}", "messages", "missing_required_parameter",
         "Missing required parameter: 'messages'."},
        {"{\"model\":\"m\",\"messages\":[]}", "messages", "empty_array",
         "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
         "empty array instead."},
        {"{\"model\":7,\"messages\":[]}", "model", "invalid_type",
         "Invalid type for 'model': expected a string, but got an integer instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\","
         "\"content\":5}]}",
         "messages[1].content", "invalid_type",
         "Invalid type for 'messages[1].content': expected one of a string or array of objects, "
         "but "
         "got an integer instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"wizard\",\"content\":\"a\"}]}",
         "messages[0].role", "invalid_value",
         "Invalid value: 'wizard'. Supported values are: 'system', 'assistant', 'user', "
         "'function', "
         "'tool', and 'developer'."},
        {"{\"model\":\"m\",\"messages\":[{\"content\":\"a\"}]}", "messages[0].role",
         "missing_required_parameter", "Missing required parameter: 'messages[0].role'."},
        {"{\"model\":\"m\",\"messages\":[\"hi\"]}", "messages[0]", "invalid_type",
         "Invalid type for 'messages[0]': expected an object, but got a string instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
         "\"image_url\":{\"url\":\"ftp://x/a.png\"}}]}]}",
         "messages[0].content[0].image_url.url", "invalid_value",
         "Invalid 'messages[0].content[0].image_url.url': expected a base64-encoded data URL or an "
         "http(s) URL."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"video\"}]}]}",
         "messages[0].content[0].type", "invalid_value",
         "Invalid value: 'video'. Supported values are: 'text', 'image_url', 'input_audio', "
         "'refusal', 'audio', and 'file'."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}",
         "messages[0].tool_call_id", "missing_required_parameter",
         "Missing required parameter: 'messages[0].tool_call_id'."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\"}]}", "messages[0].content",
         "missing_required_parameter", "Missing required parameter: 'messages[0].content'."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{"
         "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]}]}",
         "messages[0].tool_calls[0].id", "missing_required_parameter",
         "Missing required parameter: 'messages[0].tool_calls[0].id'."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"temperature\":3}",
         "temperature", "decimal_above_max_value",
         "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 "
         "instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"n\":0}", "n",
         "integer_below_min_value",
         "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":1."
         "5}",
         "max_tokens", "invalid_type",
         "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"stream\":"
         "\"yes\"}",
         "stream", "invalid_type",
         "Invalid type for 'stream': expected a boolean, but got a string instead."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tool_choice\":"
         "\"sometimes\"}",
         "tool_choice", "invalid_value",
         "Invalid value: 'sometimes'. Supported values are: 'none', 'auto', and 'required'."},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{"
         "\"type\":\"function\",\"function\":{}}]}",
         "tools[0].function.name", "missing_required_parameter",
         "Missing required parameter: 'tools[0].function.name'."},
        {"[1,2]", "", "invalid_type",
         "The request body must be a JSON object, but got an array instead."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_request r;
        chat_error err;
        if (decode(cases[i].body, &r, &err) != -EINVAL)
            fail_msg("accepted: %s", cases[i].body);
        assert_int_equal(err.status, 400);
        assert_int_equal(err.kind, CHAT_ERR_INVALID_REQUEST);
        assert_string_equal(err.type, "invalid_request_error");
        assert_string_equal(err.param, cases[i].param);
        assert_string_equal(err.code, cases[i].code);
        assert_string_equal(err.message, cases[i].message);
        chat_request_free(&r);
    }

    /* not JSON, and duplicate members */
    const char *bad[] = {
        "{\"model\":", "", "{\"model\":\"a\",\"model\":\"b\",\"messages\":[]}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"role\":\"user\",\"content\":\"a\"}]}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        chat_request r;
        chat_error err;
        assert_int_equal(decode(bad[i], &r, &err), -EINVAL);
        assert_int_equal(err.status, 400);
        assert_non_null(strstr(err.message, "We could not parse the JSON body of your request"));
        chat_request_free(&r);
    }
}

/* ------------------------------------------------------------ request encode */

static void test_encode_round_trip(void **state)
{
    (void)state;
    chat_request r, r2;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(decode_fixture("openai/chat_stream_request.json", &r, &err), 0);
    chat_target t = {"gpt-4o-mini-2024-07-18", 22, true};
    assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
    assert_buf(&out, "{\"model\":\"gpt-4o-mini-2024-07-18\",\"messages\":["
                     "{\"role\":\"user\",\"content\":\"What is the capital of the UK? Use the "
                     "tool, then answer.\"},"
                     "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_"
                     "ZR5UUuTt3pf61kjwAJIYdVMj\","
                     "\"type\":\"function\",\"function\":{\"name\":\"get_capital\",\"arguments\":"
                     "\"{\\\"country\\\":\\\"UK\\\"}\"}}]},"
                     "{\"role\":\"tool\",\"tool_call_id\":\"call_ZR5UUuTt3pf61kjwAJIYdVMj\","
                     "\"content\":\"London\"}],"
                     "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_capital\","
                     "\"description\":\"\","
                     "\"parameters\":{\"additionalProperties\":false,\"properties\":{\"country\":{"
                     "\"type\":\"string\"}},"
                     "\"required\":[\"country\"],\"type\":\"object\"},\"strict\":true}}],\"tool_"
                     "choice\":\"auto\"}");

    /* decoding what we sent gives the same request back */
    assert_int_equal(chat_request_init(&r2), 0);
    assert_int_equal(F->req_decode(out.data, out.len, &r2, &err), 0);
    assert_int_equal(r2.nmsgs, r.nmsgs);
    assert_str(r2.msgs[2].parts[0].name, "get_capital");
    assert_true(json_equal(r2.tools[0].parameters, r.tools[0].parameters));
    chat_request_free(&r2);
    chat_request_free(&r);

    /* every scalar, non-stream */
    buf_reset(&out);
    assert_int_equal(
        decode("{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
               "{\"role\":\"user\",\"name\":\"bob\",\"content\":\"hi\"}],"
               "\"max_completion_tokens\":100,\"temperature\":0.7,\"top_p\":0.9,\"frequency_"
               "penalty\":-0.5,"
               "\"presence_penalty\":1e-5,\"seed\":-7,\"n\":2,\"stop\":\"\\n\",\"parallel_tool_"
               "calls\":true,"
               "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
               "\"tool_choice\":\"none\",\"response_format\":{\"type\":\"json_object\"},\"user\":"
               "\"u\","
               "\"stream\":true,\"stream_options\":{\"include_usage\":false}}",
               &r, &err),
        0);
    t = (chat_target){"up", 2, false};
    assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
    assert_buf(
        &out,
        "{\"model\":\"up\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":\"hi\",\"name\":\"bob\"}],\"max_tokens\":100,"
        "\"temperature\":0.7,\"top_p\":0.9,\"frequency_penalty\":-0.5,\"presence_penalty\":1e-05,"
        "\"seed\":-7,\"n\":2,\"stop\":[\"\\n\"],\"tools\":[{\"type\":\"function\",\"function\":{"
        "\"name\":\"f\"}}],"
        "\"tool_choice\":\"none\",\"parallel_tool_calls\":true,"
        "\"response_format\":{\"type\":\"json_object\"},\"user\":\"u\"}");
    chat_request_free(&r);

    /* tool_choice and parallel_tool_calls need tools (OpenAI refuses them alone) */
    buf_reset(&out);
    assert_int_equal(
        decode("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
               "\"tool_choice\":\"required\",\"parallel_tool_calls\":false}",
               &r, &err),
        0);
    assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
    assert_buf(&out, "{\"model\":\"up\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    chat_request_free(&r);
    buf_free(&out);
}

/* A request as another format's decoder makes it (Anthropic, Gemini). */
static void test_encode_translated(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(chat_request_init(&r), 0);
    r.cache_system = true; /* ignored: OpenAI caches by itself */

    chat_msg *m = chat_add_msg(&r, CHAT_ROLE_SYSTEM);
    chat_part *p = chat_msg_add_part(&r, m, CHAT_PART_TEXT);
    assert_int_equal(chat_strdup(&r, "sys", 3, &p->text), 0);
    p->cache = true;

    m = chat_add_msg(&r, CHAT_ROLE_USER);
    p = chat_msg_add_part(&r, m, CHAT_PART_TEXT);
    assert_int_equal(chat_strdup(&r, "look", 4, &p->text), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_IMAGE);
    assert_int_equal(chat_strdup(&r, "image/jpeg", 10, &p->media_type), 0);
    assert_int_equal(chat_strdup(&r, "/9j/4A==", 8, &p->data), 0);

    m = chat_add_msg(&r, CHAT_ROLE_ASSISTANT);
    p = chat_msg_add_part(&r, m, CHAT_PART_THINKING); /* dropped */
    assert_int_equal(chat_strdup(&r, "hmm", 3, &p->text), 0);
    assert_int_equal(chat_strdup(&r, "sig", 3, &p->signature), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TEXT);
    assert_int_equal(chat_strdup(&r, "Let me ", 7, &p->text), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TEXT);
    assert_int_equal(chat_strdup(&r, "check.", 6, &p->text), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_CALL); /* Anthropic: toolu id */
    assert_int_equal(chat_strdup(&r, "toolu_01", 8, &p->id), 0);
    assert_int_equal(chat_strdup(&r, "weather", 7, &p->name), 0);
    assert_int_equal(chat_strdup(&r, "{\"city\":\"Paris\"}", 16, &p->args), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_CALL); /* Gemini: signature, no args */
    assert_int_equal(chat_strdup(&r, "fc_2", 4, &p->id), 0);
    assert_int_equal(chat_strdup(&r, "time", 4, &p->name), 0);
    assert_int_equal(chat_strdup(&r, "ab+/cw==", 8, &p->signature), 0);

    m = chat_add_msg(&r, CHAT_ROLE_TOOL);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_RESULT);
    assert_int_equal(chat_strdup(&r, "toolu_01", 8, &p->id), 0);
    assert_int_equal(chat_strdup(&r, "sunny", 5, &p->text), 0);
    p->is_error = true; /* no place in OpenAI: the text goes as it is */
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_RESULT);
    assert_int_equal(chat_strdup(&r, "fc_2", 4, &p->id), 0); /* id without the signature */
    assert_int_equal(chat_strdup(&r, "noon", 4, &p->text), 0);

    chat_tool *tool = chat_add_tool(&r);
    assert_int_equal(chat_strdup(&r, "weather", 7, &tool->name), 0);
    tool->parameters = json_pack("{s:s}", "type", "object");
    tool->cache = true;

    r.max_tokens = 1024;
    r.tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
    r.resp_format = CHAT_RESP_JSON_SCHEMA;
    r.response_schema = json_pack("{s:s}", "type", "object");

    chat_target t = {"gpt-4.1", 7, true};
    assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
    assert_buf(&out,
               "{\"model\":\"gpt-4.1\",\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},"
               "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look\"},{\"type\":"
               "\"image_url\","
               "\"image_url\":{\"url\":\"data:image/jpeg;base64,/9j/4A==\"}}]},"
               "{\"role\":\"assistant\",\"content\":\"Let me check.\",\"tool_calls\":["
               "{\"id\":\"toolu_01\",\"type\":\"function\",\"function\":{\"name\":\"weather\","
               "\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},"
               "{\"id\":\"fc_2_tgsig_ab-_cw\",\"type\":\"function\",\"function\":{\"name\":"
               "\"time\",\"arguments\":\"{}\"}}]},"
               "{\"role\":\"tool\",\"tool_call_id\":\"toolu_01\",\"content\":\"sunny\"},"
               "{\"role\":\"tool\",\"tool_call_id\":\"fc_2_tgsig_ab-_cw\",\"content\":\"noon\"}],"
               "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_tokens\":1024,"
               "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\","
               "\"parameters\":{\"type\":\"object\"}}}],"
               "\"tool_choice\":\"required\",\"response_format\":{\"type\":\"json_schema\",\"json_"
               "schema\":"
               "{\"name\":\"response\",\"schema\":{\"type\":\"object\"}}}}");

    /* decoding our own output gives the signature back on the call */
    chat_request r2;
    assert_int_equal(chat_request_init(&r2), 0);
    assert_int_equal(F->req_decode(out.data, out.len, &r2, &err), 0);
    assert_str(r2.msgs[2].parts[2].id, "fc_2");
    assert_str(r2.msgs[2].parts[2].signature, "ab+/cw==");
    assert_str(r2.msgs[4].parts[0].id, "fc_2");
    assert_str(r2.msgs[4].parts[0].name, "time");
    chat_request_free(&r2);
    chat_request_free(&r);
    buf_free(&out);
}

/* Calls without ids (Gemini) get one generated, and the results reuse it. */
static void test_encode_call_without_id(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(chat_request_init(&r), 0);
    chat_msg *m = chat_add_msg(&r, CHAT_ROLE_USER);
    chat_part *p = chat_msg_add_part(&r, m, CHAT_PART_TEXT);
    assert_int_equal(chat_strdup(&r, "hi", 2, &p->text), 0);
    m = chat_add_msg(&r, CHAT_ROLE_ASSISTANT);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_CALL);
    assert_int_equal(chat_strdup(&r, "a", 1, &p->name), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_CALL);
    assert_int_equal(chat_strdup(&r, "b", 1, &p->name), 0);
    m = chat_add_msg(&r, CHAT_ROLE_TOOL);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_RESULT);
    assert_int_equal(chat_strdup(&r, "b", 1, &p->name), 0);
    assert_int_equal(chat_strdup(&r, "B", 1, &p->text), 0);
    p = chat_msg_add_part(&r, m, CHAT_PART_TOOL_RESULT);
    assert_int_equal(chat_strdup(&r, "a", 1, &p->name), 0);
    assert_int_equal(chat_strdup(&r, "A", 1, &p->text), 0);
    chat_target t = {"m", 1, false};
    assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    assert_non_null(j);
    json_t *msgs = json_object_get(j, "messages");
    json_t *calls = json_object_get(json_array_get(msgs, 1), "tool_calls");
    const char *ida = json_string_value(json_object_get(json_array_get(calls, 0), "id"));
    const char *idb = json_string_value(json_object_get(json_array_get(calls, 1), "id"));
    assert_int_equal(strncmp(ida, "call_", 5), 0);
    assert_int_equal(strlen(ida), 5 + 24);
    assert_string_not_equal(ida, idb);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 2), "tool_call_id")),
                        idb);
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 3), "tool_call_id")),
                        ida);
    json_decref(j);
    chat_request_free(&r);
    buf_free(&out);
}

static void test_encode_refusals(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(buf_append_str(&out, "keep"), 0);
    chat_target t = {"m", 1, false};

    assert_int_equal(
        decode("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", &r, &err),
        0);
    r.top_k = 40;
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.type, "invalid_request_error");
    assert_string_equal(err.param, "top_k");
    assert_string_equal(err.message, "parameter 'top_k' cannot be translated to OpenAI");
    assert_buf(&out, "keep");
    r.top_k = -1;
    r.thinking_budget = 2048;
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_string_equal(err.param, "thinking");
    r.thinking_budget = -1;
    snprintf(r.unmapped, sizeof r.unmapped, "metadata.user_id");
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_string_equal(err.param, "metadata.user_id");
    assert_string_equal(err.message, "parameter 'metadata.user_id' cannot be translated to OpenAI");
    r.unmapped[0] = '\0';

    /* an image in an assistant message has no place in OpenAI */
    chat_part *p = chat_msg_add_part(&r, chat_add_msg(&r, CHAT_ROLE_ASSISTANT), CHAT_PART_IMAGE);
    assert_int_equal(chat_strdup(&r, "https://x/y.png", 15, &p->url), 0);
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_string_equal(err.param, "messages[1].content");
    assert_buf(&out, "keep");
    chat_request_free(&r);

    /* over the cap: -E2BIG and nothing appended */
    buf small;
    buf_init(&small, 16);
    assert_int_equal(decode("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a "
                            "long enough message\"}]}",
                            &r, &err),
                     0);
    assert_int_equal(F->req_encode(&r, &t, &small, &err), -E2BIG);
    assert_int_equal(small.len, 0);
    buf_free(&small);
    chat_request_free(&r);
    buf_free(&out);
}

static void test_path_auth(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 1024);
    chat_target t = {"gpt-4o", 6, true};
    assert_int_equal(F->req_path(&t, &out), 0);
    assert_buf(&out, "/chat/completions");
    buf_reset(&out);
    assert_int_equal(F->req_auth_headers("sk-test", &out), 0);
    assert_buf(&out, "Authorization: Bearer sk-test\r\n");
    buf_reset(&out);
    assert_int_equal(F->req_auth_headers(NULL, &out), 0);
    assert_int_equal(out.len, 0);
    assert_string_equal(F->name, "openai");
    assert_int_equal(F->id, CHAT_FMT_OPENAI);
    buf_free(&out);
}

/* ------------------------------------------------------------ stream decode */

static void test_stream_fixture_text(void **state)
{
    (void)state;
    rec r;
    char k[64];
    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openai/chat_stream.sse", &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "STFUE");
    assert_buf(&r.resp.id, "chatcmpl-Dx0Xq5Xx9rHB2ehcHZCRDsnuymUXc");
    assert_buf(&r.resp.model, "gpt-4o-mini-2024-07-18");
    assert_buf(&r.resp.text, "The capital of the UK is London.");
    assert_int_equal(r.resp.finish, CHAT_FINISH_STOP);
    assert_string_equal(r.resp.native, "stop");
    assert_true(r.resp.usage.input == 78 && r.resp.usage.output == 9);
    assert_true(r.resp.usage.cache_read == 0 && r.resp.usage.reasoning == 0);
    assert_true(r.resp.usage.cache_write == -1);
    assert_true(r.resp.ended);
    chat_response_free(&r.resp);

    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openai/chat_stream_2024_gpt4o.sse", &r), 0);
    assert_buf(&r.resp.text, "I'm unable to provide real-time weather updates. To get the current "
                             "weather in San Francisco, I recommend checking a reliable weather "
                             "website or a weather app.");
    assert_true(r.resp.usage.input == 14 && r.resp.usage.output == 30);
    assert_true(r.resp.usage.cache_read == -1 && r.resp.usage.reasoning == 0);
    assert_true(r.resp.ended);
    chat_response_free(&r.resp);
}

static void test_stream_fixture_tools(void **state)
{
    (void)state;
    rec r;
    char k[64];
    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openai/chat_stream_tool_call.sse", &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "SCAFUE");
    assert_int_equal(r.resp.ncalls, 1);
    assert_buf(&r.resp.calls[0].id, "call_ZR5UUuTt3pf61kjwAJIYdVMj");
    assert_buf(&r.resp.calls[0].name, "get_capital");
    assert_buf(&r.resp.calls[0].args, "{\"country\":\"UK\"}");
    assert_int_equal(r.resp.text.len, 0);
    assert_int_equal(r.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_true(r.resp.usage.input == 53 && r.resp.usage.output == 15);
    chat_response_free(&r.resp);

    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openai/chat_stream_parallel_tool_calls.sse", &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "SCACAFUE");
    assert_int_equal(r.resp.ncalls, 2);
    assert_buf(&r.resp.calls[0].id, "call_JMW1whyEaYG438VE1OIflxA2");
    assert_buf(&r.resp.calls[0].name, "GetWeatherArgs");
    assert_buf(&r.resp.calls[0].args,
               "{\"city\": \"Edinburgh\", \"country\": \"GB\", \"units\": \"c\"}");
    assert_buf(&r.resp.calls[1].id, "call_DNYTawLBoN8fj3KN6qU9N1Ou");
    assert_buf(&r.resp.calls[1].name, "get_stock_price");
    assert_buf(&r.resp.calls[1].args, "{\"ticker\": \"AAPL\", \"exchange\": \"NASDAQ\"}");
    assert_int_equal(r.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_string_equal(r.resp.native, "tool_calls");
    assert_true(r.resp.usage.input == 149 && r.resp.usage.output == 60);
    assert_true(r.resp.usage.reasoning == 0 && r.resp.usage.cache_read == -1);
    chat_response_free(&r.resp);
}

static void test_stream_fixture_openrouter(void **state)
{
    (void)state;
    rec r;
    char k[64];
    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openrouter/chat_stream.sse", &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "SRTFUE");
    assert_buf(&r.resp.id, "gen-1765226419-AGrwjunAftQIAgweibL8");
    assert_buf(&r.resp.model, "anthropic/claude-sonnet-4.5");
    assert_buf(&r.resp.thinking, "This is a simple arithmetic question. 2+2 equals 4.");
    assert_buf(&r.resp.text, "2 + 2 = 4");
    assert_int_equal(r.resp.finish, CHAT_FINISH_STOP);
    assert_true(r.resp.usage.input == 43 && r.resp.usage.output == 36);
    assert_true(r.resp.usage.reasoning == 13 && r.resp.usage.cache_read == 0);
    assert_true(r.resp.ended);
    chat_response_free(&r.resp);

    /* the error chunk carries usage too; finish_reason repeats but is one FINISH */
    rec_init(&r);
    assert_int_equal(decode_stream_fixture("openrouter/chat_stream_midstream_error.sse", &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "SRFUXE");
    assert_int_equal(r.nfinish, 1);
    assert_int_equal(r.resp.finish, CHAT_FINISH_LENGTH);
    assert_buf(&r.resp.thinking, "We need to respond to a greeting. The user");
    assert_int_equal(r.nerrors, 1);
    assert_int_equal(r.err.status, 400);
    assert_int_equal(r.err.kind, CHAT_ERR_INVALID_REQUEST);
    assert_string_equal(r.err.message, "Token limit reached");
    assert_string_equal(r.err.code, "400");
    assert_true(r.resp.usage.input == 43 && r.resp.usage.output == 10 &&
                r.resp.usage.reasoning == 11);
    assert_true(r.resp.has_error);
    chat_response_free(&r.resp);
}

static int sse_of(const char *s, rec *r)
{
    return decode_stream(s, strlen(s), r);
}

static void test_stream_edges(void **state)
{
    (void)state;
    rec r;
    char k[64];

    /* Fireworks: usage on the finish chunk; no [DONE]: no END (a cut, even complete) */
    rec_init(&r);
    assert_int_equal(
        sse_of(
            "data: "
            "{\"id\":\"x\",\"model\":\"fw\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
            "\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n"
            "data: "
            "{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],"
            "\"usage\":{\"prompt_tokens\":7,\"total_tokens\":24,\"completion_tokens\":17}}\n\n",
            &r),
        0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "STFU");
    assert_false(r.resp.ended);
    assert_int_equal(r.resp.finish, CHAT_FINISH_LENGTH);
    assert_true(r.resp.usage.input == 7 && r.resp.usage.output == 17);
    chat_response_free(&r.resp);

    /* cut: no finish, no [DONE]: no END */
    rec_init(&r);
    assert_int_equal(
        sse_of(": keep-alive\n\ndata: "
               "{\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"par\"}}]}\n\n",
               &r),
        0);
    assert_string_equal(r.kinds, "ST");
    assert_false(r.resp.ended);
    chat_response_free(&r.resp);

    /* a finish without usage and no [DONE]: still a cut */
    rec_init(&r);
    assert_int_equal(
        sse_of("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
               &r),
        0);
    assert_string_equal(r.kinds, "SF");
    chat_response_free(&r.resp);

    /* a whole tool call in one chunk, other finish reasons, refusal, reasoning_content */
    rec_init(&r);
    assert_int_equal(
        sse_of("data: "
               "{\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"think\","
               "\"reasoning\":\"think\"}}]}\n\n"
               "data: {\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"no\"}}]}\n\n"
               "data: "
               "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":3,\"id\":\"c1\","
               "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}"
               "}]}}]}\n\n"
               "data: "
               "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n"
               "data: [DONE]\n\n"
               "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"after done\"}}]}\n\n",
               &r),
        0);
    assert_string_equal(r.kinds, "SRTCAFE");
    assert_buf(&r.resp.thinking, "think");
    assert_buf(&r.resp.text, "no");
    assert_buf(&r.resp.calls[0].id, "c1");
    assert_buf(&r.resp.calls[0].args, "{\"a\":1}");
    assert_int_equal(r.resp.finish, CHAT_FINISH_CONTENT_FILTER);
    chat_response_free(&r.resp);

    rec_init(&r);
    assert_int_equal(
        sse_of("data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"eos\"}]}\n\n",
               &r),
        0);
    assert_int_equal(r.resp.finish, CHAT_FINISH_OTHER);
    assert_string_equal(r.resp.native, "eos");
    chat_response_free(&r.resp);

    rec_init(&r);
    assert_int_equal(
        sse_of("data: "
               "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"function_call\"}]}\n\n",
               &r),
        0);
    assert_int_equal(r.resp.finish, CHAT_FINISH_TOOL_CALLS);
    chat_response_free(&r.resp);

    /* malformed JSON in an event, and data that is not an object */
    rec_init(&r);
    assert_int_equal(sse_of("data: {\"choices\":[\n\n", &r), -EINVAL);
    chat_response_free(&r.resp);
    rec_init(&r);
    assert_int_equal(sse_of("data: [1]\n\n", &r), -EINVAL);
    chat_response_free(&r.resp);

    /* an OpenAI in-stream server error */
    rec_init(&r);
    assert_int_equal(
        sse_of("data: {\"error\":{\"message\":\"The server had an error while processing your "
               "request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
               &r),
        0);
    assert_string_equal(r.kinds, "SX");
    assert_int_equal(r.err.status, 500);
    assert_int_equal(r.err.kind, CHAT_ERR_SERVER);
    assert_string_equal(r.err.type, "server_error");
    chat_response_free(&r.resp);
}

/* Records (choice, tool) of TOOL_START events. */
typedef struct starts {
    int choice[8], tool[8], n;
} starts;

static int starts_emit(void *ud, const chat_event *e)
{
    starts *s = ud;
    if (e->type == CHAT_EV_TOOL_START && s->n < 8) {
        s->choice[s->n] = e->choice;
        s->tool[s->n++] = e->tool;
    }
    return 0;
}

static void test_stream_choices(void **state)
{
    (void)state;
    chat_stream *s = F->stream_dec_new();
    static const char chunk[] = "{\"choices\":[{\"index\":1,\"delta\":{\"tool_calls\":[{\"index\":"
                                "0,\"id\":\"b\",\"function\":{\"name\":\"g\"}}]}},"
                                "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":5,\"id\":\"a\","
                                "\"function\":{\"name\":\"f\"}},"
                                "{\"index\":2,\"id\":\"c\",\"function\":{\"name\":\"h\"}}]}}]}";
    sse_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data = slice_make(chunk, sizeof chunk - 1);
    ev.has_data = true;
    starts st = {.n = 0};
    assert_int_equal(F->stream_dec_feed(s, &ev, starts_emit, &st), 0);
    assert_int_equal(st.n, 3);
    assert_true(st.choice[0] == 1 && st.tool[0] == 0);
    assert_true(st.choice[1] == 0 && st.tool[1] == 0);
    assert_true(st.choice[2] == 0 && st.tool[2] == 1);
    F->stream_free(s);
}

/* ------------------------------------------------------------ response decode */

static void test_resp_decode_fixtures(void **state)
{
    (void)state;
    rec r;
    size_t n;
    char k[64];
    char *body;

    rec_init(&r);
    body = read_fixture("openai/chat_completion_response.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    assert_string_equal(r.kinds, "STFUE");
    assert_buf(&r.resp.id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    assert_buf(&r.resp.model, "gpt-4o-2024-08-06");
    assert_buf(&r.resp.text, "Hello! How can I assist you today?");
    assert_int_equal(r.resp.finish, CHAT_FINISH_STOP);
    assert_true(r.resp.usage.input == 19 && r.resp.usage.output == 10);
    assert_true(r.resp.usage.cache_read == 0 && r.resp.usage.reasoning == 0);
    free(body);
    chat_response_free(&r.resp);

    rec_init(&r);
    body = read_fixture("openai/chat_completion_response_cached_tokens.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    assert_buf(&r.resp.text, "OK");
    assert_true(r.resp.usage.input == 4020 && r.resp.usage.output == 4);
    assert_true(r.resp.usage.cache_read == 4012 && r.resp.usage.cache_write == 0);
    free(body);
    chat_response_free(&r.resp);

    rec_init(&r);
    body = read_fixture("openai/chat_completion_tool_call_response.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    assert_string_equal(r.kinds, "SCAFUE");
    assert_int_equal(r.resp.text.len, 0);
    assert_buf(&r.resp.calls[0].id, "call_abc123");
    assert_buf(&r.resp.calls[0].name, "get_current_weather");
    assert_buf(&r.resp.calls[0].args, "{\n\"location\": \"Boston, MA\"\n}");
    assert_int_equal(r.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_true(r.resp.usage.input == 82 && r.resp.usage.output == 17 &&
                r.resp.usage.cache_read == -1);
    free(body);
    chat_response_free(&r.resp);

    rec_init(&r);
    body = read_fixture("openrouter/chat_completion_response.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    squeeze(&r, k, sizeof k);
    assert_string_equal(k, "SRTFUE");
    json_t *j = json_loadb(body, n, 0, NULL);
    json_t *m = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    assert_int_equal(r.resp.text.len, json_string_length(json_object_get(m, "content")));
    assert_memory_equal(r.resp.text.data, json_string_value(json_object_get(m, "content")),
                        r.resp.text.len);
    assert_int_equal(r.resp.thinking.len, json_string_length(json_object_get(m, "reasoning")));
    json_decref(j);
    assert_string_equal(r.resp.native, "stop");
    assert_true(r.resp.usage.input == 17 && r.resp.usage.output == 2177 &&
                r.resp.usage.reasoning == 960);
    free(body);
    chat_response_free(&r.resp);

    rec_init(&r);
    body = read_fixture("openrouter/chat_completion_tool_call_response.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    assert_string_equal(r.kinds, "SCAFUE");
    assert_buf(&r.resp.calls[0].id, "3sniiMddS");
    assert_buf(&r.resp.calls[0].name, "divide");
    assert_true(r.resp.usage.input == 134 && r.resp.usage.output == 43);
    free(body);
    chat_response_free(&r.resp);

    /* not a chat.completion */
    rec_init(&r);
    assert_int_equal(F->resp_decode("{\"object\":\"list\"}", 17, rec_emit, &r), -EINVAL);
    assert_int_equal(F->resp_decode("nope", 4, rec_emit, &r), -EINVAL);
    chat_response_free(&r.resp);
}

/* ------------------------------------------------------------ answer encode */

static chat_event ev_of(chat_ev_type t)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = t;
    chat_usage_unset(&ev.usage);
    return ev;
}

/* The synthetic answer: text, two tool calls (the second without
 * arguments), FINISH, USAGE, END. */
static void feed_synthetic(chat_stream *s, buf *out, chat_finish finish, bool with_finish)
{
    chat_event ev = ev_of(CHAT_EV_START);
    ev.id = SLICE_LIT("chatcmpl-abc123");
    ev.model = SLICE_LIT("gpt-4o-2024-08-06");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev = ev_of(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("Hel\"lo");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev = ev_of(CHAT_EV_TOOL_START);
    ev.tool = 0;
    ev.id = SLICE_LIT("toolu_01");
    ev.text = SLICE_LIT("weather");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev = ev_of(CHAT_EV_TOOL_ARGS);
    ev.tool = 0;
    ev.text = SLICE_LIT("{\"city\":");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev.text = SLICE_LIT("\"Paris\"}");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev = ev_of(CHAT_EV_TOOL_START);
    ev.tool = 1;
    ev.id = SLICE_LIT("fc_2");
    ev.signature = SLICE_LIT("ab+/cw==");
    ev.text = SLICE_LIT("time");
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    if (with_finish) {
        ev = ev_of(CHAT_EV_FINISH);
        ev.finish = finish;
        assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    }
    ev = ev_of(CHAT_EV_USAGE);
    ev.usage.input = 100;
    ev.usage.output = 20;
    ev.usage.cache_read = 60;
    ev.usage.reasoning = 5;
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
    ev = ev_of(CHAT_EV_END);
    assert_int_equal(F->stream_enc_feed(s, &ev, out), 0);
}

#define CHUNK                                                                                      \
    "data: "                                                                                       \
    "{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":"    \
    "\"gpt-4o-2024-08-06\",\"choices\":["
#define NOFIN ",\"logprobs\":null,\"finish_reason\":null}]"

static const char synthetic_plain[] =
    CHUNK "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}" NOFIN "}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"content\":\"Hel\\\"lo\"}" NOFIN "}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_01\",\"type\":"
          "\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]}" NOFIN
          "}\n\n" CHUNK "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{"
                        "\"arguments\":\"{\\\"city\\\":\"}}]}" NOFIN "}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":"
          "\"\\\"Paris\\\"}\"}}]}" NOFIN "}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"fc_2_tgsig_ab-_cw\","
          "\"type\":\"function\",\"function\":{\"name\":\"time\",\"arguments\":\"\"}}]}" NOFIN
          "}\n\n" CHUNK "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{"
                        "\"arguments\":\"{}\"}}]}" NOFIN "}\n\n" CHUNK
          "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n"
          "data: [DONE]\n\n";

static const char synthetic_usage[] =
    CHUNK "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}" NOFIN
          ",\"usage\":null}\n\n" CHUNK "{\"index\":0,\"delta\":{\"content\":\"Hel\\\"lo\"}" NOFIN
          ",\"usage\":null}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_01\",\"type\":"
          "\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"\"}}]}" NOFIN
          ",\"usage\":null}\n\n" CHUNK "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                                       "\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}" NOFIN
          ",\"usage\":null}\n\n" CHUNK "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
                                       "\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}" NOFIN
          ",\"usage\":null}\n\n" CHUNK
          "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"fc_2_tgsig_ab-_cw\","
          "\"type\":\"function\",\"function\":{\"name\":\"time\",\"arguments\":\"\"}}]}" NOFIN
          ",\"usage\":null}\n\n" CHUNK "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,"
                                       "\"function\":{\"arguments\":\"{}\"}}]}" NOFIN
          ",\"usage\":null}\n\n" CHUNK "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_"
                                       "reason\":\"tool_calls\"}],\"usage\":null}\n\n" CHUNK
          "],\"usage\":{\"prompt_tokens\":100,\"completion_tokens\":20,\"total_tokens\":120,"
          "\"prompt_tokens_details\":{\"cached_tokens\":60},\"completion_tokens_details\":{"
          "\"reasoning_tokens\":5}}}\n\n"
          "data: [DONE]\n\n";

static void test_stream_encode_exact(void **state)
{
    (void)state;
    chat_request req;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);

    assert_int_equal(decode("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":"
                            "\"hi\"}],\"stream\":true}",
                            &req, &err),
                     0);
    chat_stream *s = F->stream_enc_new(&req);
    assert_non_null(s);
    /* upstream said end_turn-like STOP: tool_calls wins since calls were sent */
    feed_synthetic(s, &out, CHAT_FINISH_STOP, true);
    assert_out(&out, synthetic_plain);
    /* over: nothing more, not even an error */
    size_t len = out.len;
    chat_event ev = ev_of(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("late");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    chat_error e;
    chat_error_invalid(&e, NULL, "x");
    assert_int_equal(F->stream_error_encode(s, &e, &out), 0);
    assert_int_equal(out.len, len);
    F->stream_free(s);
    chat_request_free(&req);

    buf_reset(&out);
    assert_int_equal(decode("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":"
                            "\"hi\"}],\"stream\":true,"
                            "\"stream_options\":{\"include_usage\":true}}",
                            &req, &err),
                     0);
    s = F->stream_enc_new(&req);
    feed_synthetic(s, &out, CHAT_FINISH_TOOL_CALLS, true);
    assert_out(&out, synthetic_usage);
    F->stream_free(s);

    /* END without FINISH: the finish chunk is owed, the open call gets "{}" */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    feed_synthetic(s, &out, CHAT_FINISH_NONE, false);
    assert_out(&out, synthetic_usage);
    F->stream_free(s);

    /* what we wrote decodes back to the same answer */
    rec r;
    rec_init(&r);
    assert_int_equal(decode_stream(out.data, out.len, &r), 0);
    assert_buf(&r.resp.text, "Hel\"lo");
    assert_int_equal(r.resp.ncalls, 2);
    assert_buf(&r.resp.calls[0].args, "{\"city\":\"Paris\"}");
    assert_buf(&r.resp.calls[1].id, "fc_2_tgsig_ab-_cw");
    assert_buf(&r.resp.calls[1].args, "{}");
    assert_true(r.resp.usage.input == 100 && r.resp.usage.cache_read == 60);
    assert_true(r.resp.ended);
    chat_response_free(&r.resp);
    chat_request_free(&req);
    buf_free(&out);
}

static void test_stream_encode_text(void **state)
{
    (void)state;
    chat_request req;
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(
        decode("{\"model\":\"claude-x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
               &req, &err),
        0);
    chat_stream *s = F->stream_enc_new(&req);
    /* Anthropic ids do not look like OpenAI's: a new one; no model: the request's */
    chat_event ev = ev_of(CHAT_EV_START);
    ev.id = SLICE_LIT("msg_01");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    assert_int_equal(out.len, 0);
    ev = ev_of(CHAT_EV_THINKING);
    ev.text = SLICE_LIT("hm");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    ev.text = SLICE_LIT("");
    ev.signature = SLICE_LIT("sig"); /* signature-only delta: nothing */
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    ev = ev_of(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("ok");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    ev = ev_of(CHAT_EV_FINISH);
    ev.finish = CHAT_FINISH_LENGTH;
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    ev = ev_of(CHAT_EV_END);
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    char *got = uncreated(&out);
    /* the generated id: chatcmpl- + 24 characters, the same on every chunk */
    const char *id = strstr(got, "\"id\":\"chatcmpl-");
    assert_non_null(id);
    char idbuf[64];
    snprintf(idbuf, sizeof idbuf, "%.39s", id);
    char want[4096];
#define HEAD                                                                                       \
    "data: "                                                                                       \
    "{%s\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":\"claude-x\",\"choices\":" \
    "["
    snprintf(want, sizeof want,
             HEAD "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}" NOFIN
                  "}\n\n" HEAD "{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}" NOFIN
                  "}\n\n" HEAD "{\"index\":0,\"delta\":{\"content\":\"ok\"}" NOFIN "}\n\n" HEAD
                  "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
                  "data: [DONE]\n\n",
             idbuf, idbuf, idbuf, idbuf);
#undef HEAD
    assert_string_equal(got, want);
    free(got);
    F->stream_free(s);

    /* an error mid-stream: the error event, then nothing */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    ev = ev_of(CHAT_EV_START);
    ev.id = SLICE_LIT("chatcmpl-1");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    chat_error e;
    memset(&e, 0, sizeof e);
    e.status = 529;
    e.kind = CHAT_ERR_OVERLOADED;
    snprintf(e.type, sizeof e.type, "overloaded_error");
    snprintf(e.message, sizeof e.message, "Overloaded");
    ev = ev_of(CHAT_EV_ERROR);
    ev.error = &e;
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    assert_buf(&out, "data: "
                     "{\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":"
                     "null,\"code\":\"overloaded\"}}\n\n");
    ev = ev_of(CHAT_EV_END);
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    assert_int_equal(F->stream_error_encode(s, &e, &out), 0);
    assert_buf(&out, "data: "
                     "{\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":"
                     "null,\"code\":\"overloaded\"}}\n\n");
    F->stream_free(s);

    /* stream_error_encode directly; param is null in a stream */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    chat_error_invalid(&e, "max_tokens", "too many");
    assert_int_equal(F->stream_error_encode(s, &e, &out), 0);
    assert_buf(&out,
               "data: {\"error\":{\"message\":\"too "
               "many\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n\n");
    ev = ev_of(CHAT_EV_END);
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    assert_buf(&out,
               "data: {\"error\":{\"message\":\"too "
               "many\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n\n");
    F->stream_free(s);

    /* END alone: an empty answer still has a role chunk and a finish */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    ev = ev_of(CHAT_EV_START);
    ev.id = SLICE_LIT("chatcmpl-e");
    ev.model = SLICE_LIT("up-model");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    ev = ev_of(CHAT_EV_END);
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), 0);
    assert_out(&out,
               "data: "
               "{\"id\":\"chatcmpl-e\",\"object\":\"chat.completion.chunk\",\"created\":0,"
               "\"model\":\"up-model\",\"choices\":["
               "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}" NOFIN "}\n\n"
               "data: "
               "{\"id\":\"chatcmpl-e\",\"object\":\"chat.completion.chunk\",\"created\":0,"
               "\"model\":\"up-model\",\"choices\":["
               "{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n"
               "data: [DONE]\n\n");
    F->stream_free(s);

    /* over the cap: -E2BIG, nothing half-written */
    buf small;
    buf_init(&small, 40);
    s = F->stream_enc_new(&req);
    ev = ev_of(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("x");
    assert_int_equal(F->stream_enc_feed(s, &ev, &small), -E2BIG);
    assert_int_equal(small.len, 0);
    F->stream_free(s);
    buf_free(&small);

    chat_request_free(&req);
    buf_free(&out);
}

static void test_resp_encode(void **state)
{
    (void)state;
    chat_request req;
    chat_error err;
    rec r;
    buf out;
    size_t n;
    buf_init(&out, 1 << 20);
    assert_int_equal(
        decode("{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &req,
               &err),
        0);

    rec_init(&r);
    char *body = read_fixture("openai/chat_completion_tool_call_response.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    free(body);
    assert_int_equal(F->resp_encode(&req, &r.resp, &out), 0);
    assert_out(
        &out,
        "{\"id\":\"chatcmpl-abc123\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"gpt-"
        "4o-mini\","
        "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_"
        "calls\":["
        "{\"id\":\"call_abc123\",\"type\":\"function\",\"function\":{\"name\":\"get_current_"
        "weather\","
        "\"arguments\":\"{\\n\\\"location\\\": \\\"Boston, "
        "MA\\\"\\n}\"}}],\"refusal\":null,\"annotations\":[]},"
        "\"logprobs\":null,\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":82,"
        "\"completion_tokens\":17,\"total_tokens\":99,\"prompt_tokens_details\":{\"cached_tokens\":"
        "0},"
        "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}");
    chat_response_free(&r.resp);

    /* an answer from elsewhere: thinking, a signed call without args, no model, no usage */
    chat_response a;
    chat_response_init(&a);
    assert_int_equal(buf_append_str(&a.id, "msg_01"), 0);
    assert_int_equal(buf_append_str(&a.text, "Sure."), 0);
    assert_int_equal(buf_append_str(&a.thinking, "plan"), 0);
    a.finish = CHAT_FINISH_LENGTH;
    buf_reset(&out);
    assert_int_equal(F->resp_encode(&req, &a, &out), 0);
    char *got = uncreated(&out);
    assert_int_equal(strncmp(got, "{\"id\":\"chatcmpl-", 16), 0);
    assert_string_equal(
        got + 16 + 24,
        "\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"gpt-4o\",\"choices\":[{"
        "\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"Sure.\",\"reasoning_content\":\"plan\","
        "\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":\"length\"}],"
        "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0,"
        "\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{"
        "\"reasoning_tokens\":0}}}");
    free(got);
    chat_response_free(&a);

    /* the cached-tokens answer re-encoded keeps its numbers */
    rec_init(&r);
    body = read_fixture("openai/chat_completion_response_cached_tokens.json", &n);
    assert_int_equal(F->resp_decode(body, n, rec_emit, &r), 0);
    free(body);
    buf_reset(&out);
    assert_int_equal(F->resp_encode(&req, &r.resp, &out), 0);
    assert_non_null(strstr(
        out.data, "\"usage\":{\"prompt_tokens\":4020,\"completion_tokens\":4,\"total_tokens\":4024,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":4012}"));
    chat_response_free(&r.resp);

    chat_request_free(&req);
    buf_free(&out);
}

/* ------------------------------------------------------------ errors */

static void error_fixture(const char *rel, int status, chat_error *e)
{
    size_t n;
    char *body = read_fixture(rel, &n);
    F->error_decode(status, body, n, e);
    free(body);
}

static void test_error_decode(void **state)
{
    (void)state;
    chat_error e;

    error_fixture("openai/error_401.json", 401, &e);
    assert_int_equal(e.status, 401);
    assert_int_equal(e.kind, CHAT_ERR_AUTH);
    assert_string_equal(e.type, "invalid_request_error");
    assert_string_equal(e.code, "invalid_api_key");
    assert_string_equal(e.param, "");
    assert_int_equal(strncmp(e.message, "Incorrect API key provided: sk-VKMIs***", 38), 0);
    assert_true(e.retry_after_ms == -1);

    error_fixture("openai/error_429.json", 429, &e);
    assert_int_equal(e.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(e.type, "tokens");
    assert_string_equal(e.code, "rate_limit_exceeded");
    assert_true(e.retry_after_ms == 1574); /* "Please try again in 1.574s." */

    error_fixture("openai/error_429_insufficient_quota.json", 429, &e);
    assert_int_equal(e.kind, CHAT_ERR_BILLING);
    assert_string_equal(e.code, "insufficient_quota");

    error_fixture("openai/error_404_model_not_found.json", 404, &e);
    assert_int_equal(e.kind, CHAT_ERR_NOT_FOUND);
    assert_string_equal(e.code, "model_not_found");
    assert_string_equal(e.message,
                        "The model `gpt-5.2-proo` does not exist or you do not have access to it.");

    error_fixture("openrouter/error_429_provider_rate_limited.json", 429, &e);
    assert_int_equal(e.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(e.code, "429");
    assert_string_equal(e.type, "");
    assert_string_equal(e.message, "Provider returned error");

    F->error_decode(502, "<html>Bad Gateway</html>", 24, &e);
    assert_int_equal(e.kind, CHAT_ERR_SERVER);
    assert_string_equal(e.message, "upstream returned HTTP 502: <html>Bad Gateway</html>");

    F->error_decode(503, "", 0, &e);
    assert_int_equal(e.kind, CHAT_ERR_OVERLOADED);
    assert_string_equal(e.message, "upstream returned HTTP 503 with an empty body");

    static const char str_err[] = "{\"error\":\"bad \\u0000 thing\"}";
    F->error_decode(400, str_err, sizeof str_err - 1, &e);
    assert_string_equal(e.message, "bad ? thing");

    /* invalid UTF-8 and a huge body still give a short valid message */
    char big[100000];
    memset(big, 'a', sizeof big);
    big[10] = (char)0xff;
    big[11] = (char)0xe2; /* a cut 3-byte sequence */
    big[12] = (char)0x82;
    F->error_decode(500, big, sizeof big, &e);
    assert_true(strlen(e.message) < sizeof e.message);
    assert_int_equal(strncmp(e.message, "upstream returned HTTP 500: aaaaaaaaaa???aaa", 44), 0);

    /* a message of 600 euro signs: cut on a character boundary */
    buf m;
    buf_init(&m, 1 << 20);
    assert_int_equal(buf_append_str(&m, "{\"error\":{\"message\":\""), 0);
    for (int i = 0; i < 600; i++)
        assert_int_equal(buf_append_str(&m, "\xe2\x82\xac"), 0);
    assert_int_equal(buf_append_str(&m, "\"}}"), 0);
    F->error_decode(400, m.data, m.len, &e);
    assert_int_equal(strlen(e.message), 170 * 3);
    buf_free(&m);
}

static void encode_err(const chat_error *e, int want_status, const char *want)
{
    buf out;
    int status = 0;
    buf_init(&out, 1 << 16);
    assert_int_equal(F->error_encode(e, &out, &status), 0);
    assert_int_equal(status, want_status);
    assert_buf(&out, want);
    buf_free(&out);
}

static chat_error mk_err(int status, chat_err_kind kind, const char *type, const char *code,
                         const char *msg)
{
    chat_error e;
    memset(&e, 0, sizeof e);
    e.status = status;
    e.kind = kind;
    e.retry_after_ms = -1;
    snprintf(e.type, sizeof e.type, "%s", type);
    snprintf(e.code, sizeof e.code, "%s", code);
    snprintf(e.message, sizeof e.message, "%s", msg);
    return e;
}

static void test_error_encode(void **state)
{
    (void)state;
    chat_error e;
    chat_error_invalid(&e, "top_k", "parameter 'top_k' cannot be translated to OpenAI");
    encode_err(&e, 400,
               "{\"error\":{\"message\":\"parameter 'top_k' cannot be translated to OpenAI\","
               "\"type\":\"invalid_request_error\",\"param\":\"top_k\",\"code\":null}}");

    /* OpenAI's own errors pass through with their type and code */
    error_fixture("openai/error_429.json", 429, &e);
    buf out;
    int status;
    buf_init(&out, 4096);
    assert_int_equal(F->error_encode(&e, &out, &status), 0);
    assert_int_equal(status, 429);
    assert_non_null(
        strstr(out.data, "\"type\":\"tokens\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"));
    buf_free(&out);

    /* Anthropic's, in OpenAI's words */
    e = mk_err(529, CHAT_ERR_OVERLOADED, "overloaded_error", "", "Overloaded");
    encode_err(&e, 503,
               "{\"error\":{\"message\":\"Overloaded\",\"type\":\"server_error\",\"param\":null,"
               "\"code\":\"overloaded\"}}");
    e = mk_err(429, CHAT_ERR_RATE_LIMIT, "rate_limit_error", "", "slow down");
    encode_err(
        &e, 429,
        "{\"error\":{\"message\":\"slow "
        "down\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}");
    e = mk_err(429, CHAT_ERR_RATE_LIMIT, "RESOURCE_EXHAUSTED", "", "quota");
    encode_err(&e, 429,
               "{\"error\":{\"message\":\"quota\",\"type\":\"rate_limit_error\",\"param\":null,"
               "\"code\":\"rate_limit_exceeded\"}}");
    e = mk_err(401, CHAT_ERR_AUTH, "authentication_error", "", "invalid x-api-key");
    encode_err(&e, 401,
               "{\"error\":{\"message\":\"invalid "
               "x-api-key\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_"
               "api_key\"}}");
    e = mk_err(400, CHAT_ERR_AUTH, "INVALID_ARGUMENT", "", "API key not valid.");
    encode_err(&e, 401,
               "{\"error\":{\"message\":\"API key not "
               "valid.\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_"
               "key\"}}");
    e = mk_err(403, CHAT_ERR_PERMISSION, "permission_error", "", "no");
    encode_err(&e, 403,
               "{\"error\":{\"message\":\"no\",\"type\":\"permission_error\",\"param\":null,"
               "\"code\":null}}");
    e = mk_err(404, CHAT_ERR_NOT_FOUND, "not_found_error", "", "model: claude-x");
    encode_err(&e, 404,
               "{\"error\":{\"message\":\"model: "
               "claude-x\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"model_not_"
               "found\"}}");
    e = mk_err(404, CHAT_ERR_NOT_FOUND, "NOT_FOUND", "", "no such thing");
    encode_err(&e, 404,
               "{\"error\":{\"message\":\"no such "
               "thing\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");
    e = mk_err(402, CHAT_ERR_BILLING, "billing_error", "", "credit balance too low");
    encode_err(
        &e, 429,
        "{\"error\":{\"message\":\"credit balance too "
        "low\",\"type\":\"insufficient_quota\",\"param\":null,\"code\":\"insufficient_quota\"}}");
    e = mk_err(502, CHAT_ERR_SERVER, "api_error", "", "bad gateway");
    encode_err(&e, 502,
               "{\"error\":{\"message\":\"bad "
               "gateway\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    e = mk_err(500, CHAT_ERR_SERVER, "api_error", "", "");
    encode_err(&e, 500,
               "{\"error\":{\"message\":\"upstream error (HTTP "
               "500)\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    e = mk_err(504, CHAT_ERR_TIMEOUT, "timeout_error", "", "slow");
    encode_err(&e, 504,
               "{\"error\":{\"message\":\"slow\",\"type\":\"server_error\",\"param\":null,\"code\":"
               "\"timeout\"}}");
    e = mk_err(413, CHAT_ERR_TOO_LARGE, "request_too_large", "", "big");
    encode_err(&e, 413,
               "{\"error\":{\"message\":\"big\",\"type\":\"invalid_request_error\",\"param\":null,"
               "\"code\":null}}");

    /* decode then encode round trip: the 404 fixture is unchanged */
    error_fixture("openai/error_404_model_not_found.json", 404, &e);
    encode_err(&e, 404,
               "{\"error\":{\"message\":\"The model `gpt-5.2-proo` does not exist or you do not "
               "have access to it.\","
               "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"model_not_found\"}}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_stream_fast_path),
        cmocka_unit_test(test_decode_stream_fast_path_stop),
        cmocka_unit_test(test_decode_chat_completion_request),
        cmocka_unit_test(test_decode_tool_call_request),
        cmocka_unit_test(test_decode_stream_request),
        cmocka_unit_test(test_decode_other_providers),
        cmocka_unit_test(test_decode_fields),
        cmocka_unit_test(test_decode_unmapped),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_encode_round_trip),
        cmocka_unit_test(test_encode_translated),
        cmocka_unit_test(test_encode_call_without_id),
        cmocka_unit_test(test_encode_refusals),
        cmocka_unit_test(test_path_auth),
        cmocka_unit_test(test_stream_fixture_text),
        cmocka_unit_test(test_stream_fixture_tools),
        cmocka_unit_test(test_stream_fixture_openrouter),
        cmocka_unit_test(test_stream_edges),
        cmocka_unit_test(test_stream_choices),
        cmocka_unit_test(test_resp_decode_fixtures),
        cmocka_unit_test(test_stream_encode_exact),
        cmocka_unit_test(test_stream_encode_text),
        cmocka_unit_test(test_resp_encode),
        cmocka_unit_test(test_error_decode),
        cmocka_unit_test(test_error_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
