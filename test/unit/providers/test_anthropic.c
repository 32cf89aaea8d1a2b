/* test_anthropic.c - the Anthropic Messages adapter (providers/anthropic.c):
 * request decode/encode, stream and whole-answer decode/encode, errors,
 * checked against the recorded fixtures with exact values. */
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
#include "providers/jscan.h"
#include "providers/sse.h"
#include "chat_test.h"

#define FIX TG_FIXTURES "/providers/anthropic/"
#define F (&chat_format_anthropic)
#define BIG ((size_t)16 << 20)

/* ------------------------------------------------------------ helpers */

static char *read_fixture(const char *name, size_t *len) { return chat_test_read(FIX, name, len); }

static json_t *load(const char *p, size_t n)
{
    json_error_t jerr;
    json_t *j = json_loadb(p, n, JSON_DECODE_ANY, &jerr);
    if (!j)
        fail_msg("jansson: %s: %.*s", jerr.text, (int)(n > 300 ? 300 : n), p);
    return j;
}

static void assert_cs(chat_str s, const char *want)
{
    if (!want) {
        assert_null(s.p);
        return;
    }
    assert_non_null(s.p);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

static void assert_buf(const buf *b, const char *want)
{
    assert_int_equal(b->len, strlen(want));
    if (b->len)
        assert_memory_equal(b->data, want, b->len);
}

/* Decodes a fixture request; the caller frees r. */
static void decode_fixture(const char *name, chat_request *r)
{
    size_t n;
    char *body = read_fixture(name, &n);
    chat_error err;
    assert_int_equal(chat_request_init(r), 0);
    int rc = F->req_decode(body, n, r, &err);
    if (rc)
        fail_msg("%s: %d %s (%s)", name, rc, err.message, err.param);
    free(body);
}

/* Decodes a literal body; returns the code and leaves err filled. */
static int decode_str(const char *body, chat_request *r, chat_error *err)
{
    assert_int_equal(chat_request_init(r), 0);
    memset(err, 0, sizeof *err);
    return F->req_decode(body, strlen(body), r, err);
}

/* Encodes r for the upstream into a parsed JSON tree (the test owns it). */
static json_t *encode_json(const chat_request *r, const char *model, bool stream)
{
    buf out;
    buf_init(&out, BIG);
    chat_target t = {model, strlen(model), stream};
    chat_error err;
    int rc = F->req_encode(r, &t, &out, &err);
    if (rc)
        fail_msg("req_encode: %d %s", rc, err.message);
    json_t *j = load(out.data, out.len);
    buf_free(&out);
    return j;
}

static void assert_json_eq(const json_t *got, const char *want)
{
    json_t *w = load(want, strlen(want));
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        char *x = json_dumps(w, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        print_error("got  %s\nwant %s\n", g, x);
        free(g);
        free(x);
        json_decref(w);
        fail();
    }
    json_decref(w);
}

static void assert_str_eq_cs(chat_str a, chat_str b)
{
    assert_true((a.p == NULL) == (b.p == NULL));
    assert_int_equal(a.len, b.len);
    if (a.len)
        assert_memory_equal(a.p, b.p, a.len);
}

static void assert_num_eq(double a, double b)
{
    if (isnan(a))
        assert_true(isnan(b));
    else
        assert_true(a == b);
}

/* Everything a request carries is equal in a and b. */
static void assert_req_equal(const chat_request *a, const chat_request *b)
{
    assert_str_eq_cs(a->model, b->model);
    assert_int_equal(a->stream, b->stream);
    assert_int_equal(a->nmsgs, b->nmsgs);
    for (size_t i = 0; i < a->nmsgs; i++) {
        const chat_msg *x = &a->msgs[i], *y = &b->msgs[i];
        assert_int_equal(x->role, y->role);
        assert_int_equal(x->nparts, y->nparts);
        for (size_t k = 0; k < x->nparts; k++) {
            const chat_part *p = &x->parts[k], *q = &y->parts[k];
            assert_int_equal(p->type, q->type);
            assert_str_eq_cs(p->text, q->text);
            assert_str_eq_cs(p->media_type, q->media_type);
            assert_str_eq_cs(p->data, q->data);
            assert_str_eq_cs(p->url, q->url);
            assert_str_eq_cs(p->id, q->id);
            assert_str_eq_cs(p->name, q->name);
            assert_str_eq_cs(p->args, q->args);
            assert_str_eq_cs(p->signature, q->signature);
            assert_int_equal(p->is_error, q->is_error);
            assert_int_equal(p->cache, q->cache);
        }
    }
    assert_int_equal(a->ntools, b->ntools);
    for (size_t i = 0; i < a->ntools; i++) {
        assert_str_eq_cs(a->tools[i].name, b->tools[i].name);
        assert_str_eq_cs(a->tools[i].description, b->tools[i].description);
        assert_true(json_equal(a->tools[i].parameters, b->tools[i].parameters) ||
                    (!a->tools[i].parameters && !b->tools[i].parameters));
        assert_int_equal(a->tools[i].cache, b->tools[i].cache);
    }
    assert_int_equal(a->tool_choice, b->tool_choice);
    assert_str_eq_cs(a->tool_choice_name, b->tool_choice_name);
    assert_int_equal(a->parallel_tool_calls, b->parallel_tool_calls);
    assert_int_equal(a->max_tokens, b->max_tokens);
    assert_num_eq(a->temperature, b->temperature);
    assert_num_eq(a->top_p, b->top_p);
    assert_int_equal(a->top_k, b->top_k);
    assert_int_equal(a->nstop, b->nstop);
    for (size_t i = 0; i < a->nstop; i++)
        assert_str_eq_cs(a->stop[i], b->stop[i]);
    assert_str_eq_cs(a->user, b->user);
    assert_int_equal(a->thinking_budget, b->thinking_budget);
    assert_int_equal(a->cache_system, b->cache_system);
    assert_string_equal(a->unmapped, b->unmapped);
}

/* Adds a part with text (or id/name/args per type) for hand-built requests. */
static chat_part *add_part(chat_request *r, size_t mi, chat_part_type type, const char *text)
{
    chat_part *p = chat_msg_add_part(r, &r->msgs[mi], type);
    assert_non_null(p);
    if (text)
        assert_int_equal(chat_strdup(r, text, strlen(text), &p->text), 0);
    return p;
}

static void set_str(chat_request *r, chat_str *s, const char *v)
{
    assert_int_equal(chat_strdup(r, v, strlen(v), s), 0);
}

static size_t add_msg(chat_request *r, chat_role role)
{
    assert_non_null(chat_add_msg(r, role));
    return r->nmsgs - 1;
}

/* ------------------------------------------------------------ event recorder */

#define REC_MAX 64
#define REC_STR 512

typedef struct rec_ev {
    chat_ev_type type;
    int choice, tool;
    char text[REC_STR], id[REC_STR], model[REC_STR], sig[REC_STR], native[64], stopseq[64];
    chat_finish finish;
    chat_usage usage;
    chat_error error;
} rec_ev;

typedef struct rec {
    rec_ev ev[REC_MAX];
    int n;
} rec;

static void cp(char *dst, size_t cap, slice s)
{
    assert_true(s.len < cap);
    if (s.len)
        memcpy(dst, s.p, s.len);
    dst[s.len] = '\0';
}

static int rec_emit(void *ud, const chat_event *ev)
{
    rec *r = ud;
    assert_true(r->n < REC_MAX);
    rec_ev *e = &r->ev[r->n++];
    memset(e, 0, sizeof *e);
    e->type = ev->type;
    e->choice = ev->choice;
    e->tool = ev->tool;
    cp(e->text, sizeof e->text, ev->text);
    cp(e->id, sizeof e->id, ev->id);
    cp(e->model, sizeof e->model, ev->model);
    cp(e->sig, sizeof e->sig, ev->signature);
    cp(e->native, sizeof e->native, ev->native);
    cp(e->stopseq, sizeof e->stopseq, ev->stop_sequence);
    e->finish = ev->finish;
    e->usage = ev->usage;
    if (ev->error)
        e->error = *ev->error;
    return 0;
}

static void assert_usage(chat_usage u, int64_t in, int64_t out, int64_t cr, int64_t cw)
{
    assert_int_equal(u.input, in);
    assert_int_equal(u.output, out);
    assert_int_equal(u.cache_read, cr);
    assert_int_equal(u.cache_write, cw);
}

/* Feeds SSE bytes to the decoder in chunks of step bytes (0 = all at
 * once). Returns the first non-zero feed result (or finish's). */
static int decode_sse(const char *p, size_t n, size_t step, chat_emit_fn emit, void *ud)
{
    return chat_test_decode_sse(F, p, n, step, emit, ud);
}

static void decode_sse_fixture(const char *name, rec *r)
{
    size_t n;
    char *p = read_fixture(name, &n);
    memset(r, 0, sizeof *r);
    assert_int_equal(decode_sse(p, n, 0, rec_emit, r), 0);
    /* Byte by byte gives the same events. */
    rec *r2 = calloc(1, sizeof *r2);
    assert_non_null(r2);
    assert_int_equal(decode_sse(p, n, 1, rec_emit, r2), 0);
    assert_int_equal(r->n, r2->n);
    assert_memory_equal(r->ev, r2->ev, sizeof(rec_ev) * (size_t)r->n);
    free(r2);
    free(p);
}

/* ------------------------------------------------------------ request decode */

static void test_decode_messages_request(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_request.json", &r);
    assert_cs(r.model, "claude-3-opus-latest");
    assert_int_equal(r.max_tokens, 4096);
    assert_false(r.stream);
    assert_int_equal(r.nmsgs, 2);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_int_equal(r.msgs[0].nparts, 1);
    assert_cs(r.msgs[0].parts[0].text, "You are a helpful assistant.\n\n");
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_USER);
    assert_int_equal(r.msgs[1].nparts, 1);
    assert_int_equal(r.msgs[1].parts[0].type, CHAT_PART_TEXT);
    assert_cs(r.msgs[1].parts[0].text, "What is the capital of France?");
    assert_false(r.msgs[1].parts[0].cache);
    assert_true(isnan(r.temperature));
    assert_int_equal(r.top_k, -1);
    assert_int_equal(r.ntools, 0);
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_UNSET);
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);
}

static void test_decode_prompt_cache_request(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_prompt_cache_request.json", &r);
    assert_cs(r.model, "claude-sonnet-4-5");
    assert_int_equal(r.max_tokens, 4096);
    assert_int_equal(r.nmsgs, 4);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_cs(r.msgs[0].parts[0].text, "You are a helpful assistant.");
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_USER);
    assert_true(r.msgs[1].parts[0].text.len > 3000);
    assert_true(memcmp(r.msgs[1].parts[0].text.p, "Please explain what Python is", 29) == 0);
    assert_int_equal(r.msgs[2].role, CHAT_ROLE_ASSISTANT);
    assert_true(memcmp(r.msgs[2].parts[0].text.p, "# What is Python?\n\n", 19) == 0);
    assert_int_equal(r.msgs[3].role, CHAT_ROLE_USER);
    assert_cs(r.msgs[3].parts[0].text, "Can you summarize that in one sentence?");
    /* Top-level cache_control (automatic caching) is ignored. */
    assert_false(r.cache_system);
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);
}

static void test_decode_stream_request(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_stream_request.json", &r);
    assert_cs(r.model, "claude-sonnet-4-5");
    assert_true(r.stream);
    assert_int_equal(r.max_tokens, 32000);
    assert_int_equal(r.nmsgs, 1);
    assert_cs(r.msgs[0].parts[0].text, "What is 1+1? Answer with just the number.");
    chat_request_free(&r);
}

static void test_decode_tool_use_request(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_tool_use_request.json", &r);
    assert_int_equal(r.ntools, 2);
    assert_cs(r.tools[0].name, "get_user_country");
    assert_cs(r.tools[0].description, "");
    assert_non_null(r.tools[0].parameters);
    assert_json_eq(r.tools[0].parameters,
                   "{\"additionalProperties\":false,\"properties\":{},\"type\":\"object\"}");
    assert_cs(r.tools[1].name, "final_result");
    assert_cs(r.tools[1].description, "The final response which ends this conversation");
    assert_string_equal(json_string_value(json_object_get(r.tools[1].parameters, "title")),
                        "CityLocation");
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_REQUIRED);
    assert_int_equal(r.parallel_tool_calls, -1);
    assert_int_equal(r.nmsgs, 1);
    chat_request_free(&r);
}

static void test_decode_tool_result_request(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_tool_result_request.json", &r);
    assert_int_equal(r.nmsgs, 3);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_USER);
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_ASSISTANT);
    assert_int_equal(r.msgs[1].nparts, 1);
    const chat_part *c = &r.msgs[1].parts[0];
    assert_int_equal(c->type, CHAT_PART_TOOL_CALL);
    assert_cs(c->id, "toolu_01X9wcHKKAZD9tBC711xipPa");
    assert_cs(c->name, "get_user_country");
    assert_cs(c->args, "{}");
    assert_cs(c->signature, NULL);
    /* The user message holding only a tool_result becomes a TOOL message. */
    assert_int_equal(r.msgs[2].role, CHAT_ROLE_TOOL);
    assert_int_equal(r.msgs[2].nparts, 1);
    const chat_part *t = &r.msgs[2].parts[0];
    assert_int_equal(t->type, CHAT_PART_TOOL_RESULT);
    assert_cs(t->id, "toolu_01X9wcHKKAZD9tBC711xipPa");
    assert_cs(t->name, "get_user_country"); /* looked up from the call */
    assert_cs(t->text, "Mexico");
    assert_false(t->is_error);
    chat_request_free(&r);
}

static const char RICH[] =
    "{\"model\":\"claude-opus-4-1\",\"max_tokens\":2048,"
    "\"system\":[{\"type\":\"text\",\"text\":\"Be brief.\"},"
    "{\"type\":\"text\",\"text\":\"Cache me.\",\"cache_control\":{\"type\":\"ephemeral\"}}],"
    "\"messages\":["
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Look\",\"cache_control\":{"
    "\"type\":\"ephemeral\"}},"
    "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/"
    "png\",\"data\":\"iVBORw0KGgo=\"}},"
    "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://example.com/a.jpg\"}}]},"
    "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"Hmm.\","
    "\"signature\":\"c2ln\"},"
    "{\"type\":\"text\",\"text\":\"Checking.\"},"
    "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{\"city\":"
    "\"Paris\",\"n\":[1,2]}},"
    "{\"type\":\"tool_use\",\"id\":\"toolu_2\",\"name\":\"get_time\",\"input\":{}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Also this\"},"
    "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\",\"content\":[{\"type\":\"text\","
    "\"text\":\"sunny\"},"
    "{\"type\":\"text\",\"text\":\"20C\"}]},"
    "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\",\"content\":\"clock "
    "broke\",\"is_error\":true}]},"
    "{\"role\":\"assistant\",\"content\":\"Done.\"}],"
    "\"stop_sequences\":[\"END\",\"STOP\"],\"temperature\":0.7,\"top_p\":0.9,\"top_k\":40,"
    "\"stream\":true,"
    "\"tools\":[{\"name\":\"get_weather\",\"description\":\"Weather\",\"input_schema\":{\"type\":"
    "\"object\"},"
    "\"cache_control\":{\"type\":\"ephemeral\"}},{\"type\":\"custom\",\"name\":\"get_time\","
    "\"input_schema\":{\"type\":\"object\"}}],"
    "\"tool_choice\":{\"type\":\"tool\",\"name\":\"get_weather\",\"disable_parallel_tool_use\":"
    "true},"
    "\"metadata\":{\"user_id\":\"user-42\",\"other\":1},"
    "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":1024},"
    "\"service_tier\":\"auto\"}";

static void test_decode_rich(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(decode_str(RICH, &r, &err), 0);
    assert_cs(r.model, "claude-opus-4-1");
    assert_int_equal(r.max_tokens, 2048);
    assert_true(r.stream);
    assert_true(r.cache_system);
    assert_int_equal(r.nmsgs, 6);
    /* system */
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_int_equal(r.msgs[0].nparts, 2);
    assert_cs(r.msgs[0].parts[0].text, "Be brief.");
    assert_false(r.msgs[0].parts[0].cache);
    assert_cs(r.msgs[0].parts[1].text, "Cache me.");
    assert_true(r.msgs[0].parts[1].cache);
    /* user with images */
    const chat_msg *u = &r.msgs[1];
    assert_int_equal(u->role, CHAT_ROLE_USER);
    assert_int_equal(u->nparts, 3);
    assert_true(u->parts[0].cache);
    assert_int_equal(u->parts[1].type, CHAT_PART_IMAGE);
    assert_cs(u->parts[1].media_type, "image/png");
    assert_cs(u->parts[1].data, "iVBORw0KGgo=");
    assert_cs(u->parts[1].url, NULL);
    assert_int_equal(u->parts[2].type, CHAT_PART_IMAGE);
    assert_cs(u->parts[2].url, "https://example.com/a.jpg");
    assert_cs(u->parts[2].data, NULL);
    /* assistant: thinking, text, two calls */
    const chat_msg *a = &r.msgs[2];
    assert_int_equal(a->role, CHAT_ROLE_ASSISTANT);
    assert_int_equal(a->nparts, 4);
    assert_int_equal(a->parts[0].type, CHAT_PART_THINKING);
    assert_cs(a->parts[0].text, "Hmm.");
    assert_cs(a->parts[0].signature, "c2ln");
    assert_cs(a->parts[1].text, "Checking.");
    assert_int_equal(a->parts[2].type, CHAT_PART_TOOL_CALL);
    assert_cs(a->parts[2].args, "{\"city\":\"Paris\",\"n\":[1,2]}");
    assert_cs(a->parts[3].args, "{}");
    /* user with results: TOOL message first, then the rest */
    const chat_msg *t = &r.msgs[3];
    assert_int_equal(t->role, CHAT_ROLE_TOOL);
    assert_int_equal(t->nparts, 2);
    assert_cs(t->parts[0].id, "toolu_1");
    assert_cs(t->parts[0].name, "get_weather");
    assert_cs(t->parts[0].text, "sunny\n20C");
    assert_false(t->parts[0].is_error);
    assert_cs(t->parts[1].id, "toolu_2");
    assert_cs(t->parts[1].name, "get_time");
    assert_cs(t->parts[1].text, "clock broke");
    assert_true(t->parts[1].is_error);
    assert_int_equal(r.msgs[4].role, CHAT_ROLE_USER);
    assert_int_equal(r.msgs[4].nparts, 1);
    assert_cs(r.msgs[4].parts[0].text, "Also this");
    assert_int_equal(r.msgs[5].role, CHAT_ROLE_ASSISTANT);
    assert_cs(r.msgs[5].parts[0].text, "Done.");
    /* knobs */
    assert_int_equal(r.nstop, 2);
    assert_cs(r.stop[0], "END");
    assert_cs(r.stop[1], "STOP");
    assert_true(r.temperature == 0.7);
    assert_true(r.top_p == 0.9);
    assert_int_equal(r.top_k, 40);
    assert_int_equal(r.ntools, 2);
    assert_true(r.tools[0].cache);
    assert_false(r.tools[1].cache);
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_NAMED);
    assert_cs(r.tool_choice_name, "get_weather");
    assert_int_equal(r.parallel_tool_calls, 0);
    assert_cs(r.user, "user-42");
    assert_int_equal(r.thinking_budget, 1024);
    assert_string_equal(r.unmapped, ""); /* service_tier, metadata.other ignored */
    chat_request_free(&r);
}

static void test_decode_signature_in_id(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    const char *body = "{\"model\":\"m\",\"max_tokens\":5,\"messages\":["
                       "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"call_"
                       "9_tgsig_QUJD-_8\","
                       "\"name\":\"f\",\"input\":{}}]},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":"
                       "\"call_9_tgsig_QUJD-_8\"}]}]}";
    assert_int_equal(decode_str(body, &r, &err), 0);
    assert_cs(r.msgs[0].parts[0].id, "call_9");
    assert_cs(r.msgs[0].parts[0].signature, "QUJD+/8=");
    assert_cs(r.msgs[1].parts[0].id, "call_9");
    assert_cs(r.msgs[1].parts[0].name, "f");
    assert_cs(r.msgs[1].parts[0].text, "");
    chat_request_free(&r);
}

typedef struct unmapped_case {
    const char *body_tail; /* members after model/max_tokens/messages */
    const char *content;   /* the user content (JSON) */
    const char *want;
} unmapped_case;

static void test_decode_unmapped(void **state)
{
    (void)state;
    static const unmapped_case cases[] = {
        {",\"mcp_servers\":[]", "\"hi\"", "mcp_servers"},
        {",\"container\":\"c\"", "\"hi\"", "container"},
        {",\"context_management\":{}", "\"hi\"", "context_management"},
        {",\"frobnicate\":1", "\"hi\"", "frobnicate"},
        {",\"tools\":[{\"type\":\"web_search_20250305\",\"name\":\"web_search\"}]", "\"hi\"",
         "tools[0].type"},
        {",\"thinking\":{\"type\":\"adaptive\"}", "\"hi\"", "thinking.type"},
        {"", "[{\"type\":\"document\",\"source\":{}}]", "messages[0].content[0] (document)"},
        {"", "[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"search_result\"}]",
         "messages[0].content[1] (search_result)"},
        {"", "[{\"type\":\"image\",\"source\":{\"type\":\"file\",\"file_id\":\"f\"}}]",
         "messages[0].content[0].source"},
        {"",
         "[{\"type\":\"tool_result\",\"tool_use_id\":\"t\",\"content\":[{\"type\":\"image\","
         "\"source\":{\"type\":\"url\",\"url\":\"https://x\"}}]}]",
         "messages[0].content[0].content"},
        /* ignored: no effect on the answer */
        {",\"service_tier\":\"auto\",\"cache_control\":{\"type\":\"ephemeral\"},"
         "\"metadata\":{\"x\":1},\"thinking\":{\"type\":\"disabled\"}",
         "\"hi\"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[1024];
        snprintf(body, sizeof body,
                 "{\"model\":\"m\",\"max_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":%"
                 "s}]%s}",
                 cases[i].content, cases[i].body_tail);
        chat_request r;
        chat_error err;
        assert_int_equal(decode_str(body, &r, &err), 0);
        assert_string_equal(r.unmapped, cases[i].want);
        /* Sending it on to Anthropic from another format is refused. */
        if (cases[i].want[0]) {
            buf out;
            buf_init(&out, BIG);
            chat_target t = {"m", 1, false};
            assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
            assert_int_equal(err.status, 400);
            assert_string_equal(err.param, cases[i].want);
            assert_non_null(strstr(err.message, "cannot be translated to Anthropic"));
            assert_int_equal(out.len, 0);
            buf_free(&out);
        }
        chat_request_free(&r);
    }
}

typedef struct invalid_case {
    const char *body;
    const char *param; /* NULL: none */
} invalid_case;

static void test_decode_invalid(void **state)
{
    (void)state;
    static const invalid_case cases[] = {
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "max_tokens"},
        {"{\"max_tokens\":1,\"messages\":[]}", "model"},
        {"{\"model\":\"m\",\"max_tokens\":1}", "messages"},
        {"{\"model\":\"m\",\"max_tokens\":0,\"messages\":[]}", "max_tokens"},
        {"{\"model\":\"m\",\"max_tokens\":1.5,\"messages\":[]}", "max_tokens"},
        {"{\"model\":7,\"max_tokens\":1,\"messages\":[]}", "model"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]"
         "}",
         "messages[0].role"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":5}]}",
         "messages[0].content"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{"
         "\"text\":\"x\"}]}]}",
         "messages[0].content[0]"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":"
         "[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"b\",\"input\":{}}]}]}",
         "messages[0].content[0].type"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"assistant\",\"content\":"
         "[{\"type\":\"tool_use\",\"id\":\"a\",\"name\":\"b\",\"input\":[]}]}]}",
         "messages[0].content[0].input"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":"
         "[{\"type\":\"text\",\"text\":3}]}]}",
         "messages[0].content[0].text"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"temperature\":\"hot\"}",
         "temperature"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"stop_sequences\":[1]}",
         "stop_sequences[0]"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"tool_choice\":{\"type\":\"tool\"}}",
         "tool_choice.name"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"tool_choice\":{\"type\":\"maybe\"}}",
         "tool_choice.type"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"system\":[{\"type\":\"image\"}]}",
         "system[0].type"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"thinking\":{\"type\":\"enabled\"}}",
         "thinking.budget_tokens"},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[],\"tools\":[{\"description\":\"x\"}]}",
         "tools[0].name"},
        {"{\"model\":\"m\",\"model\":\"n\",\"max_tokens\":1,\"messages\":[]}",
         NULL}, /* duplicate */
        {"{\"model\":\"m\",", NULL},
        {"[1,2]", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_request r;
        chat_error err;
        int rc = decode_str(cases[i].body, &r, &err);
        if (rc != -EINVAL)
            fail_msg("case %zu: rc %d", i, rc);
        assert_int_equal(err.status, 400);
        assert_int_equal(err.kind, CHAT_ERR_INVALID_REQUEST);
        assert_string_equal(err.type, "invalid_request_error");
        assert_string_equal(err.param, cases[i].param ? cases[i].param : "");
        assert_true(err.message[0] != '\0');
        chat_request_free(&r);
    }
}

/* ------------------------------------------------------------ request encode */

/* decode -> encode -> decode gives the same request. */
static void roundtrip(const char *body, size_t n)
{
    chat_request a, b;
    chat_error err;
    assert_int_equal(chat_request_init(&a), 0);
    assert_int_equal(F->req_decode(body, n, &a, &err), 0);
    buf out;
    buf_init(&out, BIG);
    chat_target t = {a.model.p, a.model.len, a.stream};
    assert_int_equal(F->req_encode(&a, &t, &out, &err), 0);
    assert_int_equal(chat_request_init(&b), 0);
    int rc = F->req_decode(out.data, out.len, &b, &err);
    if (rc)
        fail_msg("re-decode: %s (%s)\n%s", err.message, err.param, out.data);
    assert_req_equal(&a, &b);
    buf_free(&out);
    chat_request_free(&a);
    chat_request_free(&b);
}

static void test_roundtrip_fixtures(void **state)
{
    (void)state;
    static const char *const names[] = {
        "messages_request.json",
        "messages_prompt_cache_request.json",
        "messages_stream_request.json",
        "messages_tool_use_request.json",
        "messages_tool_result_request.json",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n;
        char *body = read_fixture(names[i], &n);
        roundtrip(body, n);
        free(body);
    }
    roundtrip(RICH, strlen(RICH));
}

static void test_encode_fixture_shape(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("messages_tool_result_request.json", &r);
    json_t *j = encode_json(&r, "claude-sonnet-4-5-20250929", false);
    assert_json_eq(
        j, "{\"model\":\"claude-sonnet-4-5-20250929\",\"max_tokens\":4096,\"messages\":["
           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is the largest city "
           "in the user country?\"}]},"
           "{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_"
           "01X9wcHKKAZD9tBC711xipPa\","
           "\"name\":\"get_user_country\",\"input\":{}}]},"
           "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_"
           "01X9wcHKKAZD9tBC711xipPa\","
           "\"content\":\"Mexico\"}]}],"
           "\"tools\":[{\"name\":\"get_user_country\",\"description\":\"\",\"input_schema\":"
           "{\"additionalProperties\":false,\"properties\":{},\"type\":\"object\"}},"
           "{\"name\":\"final_result\",\"description\":\"The final response which ends this "
           "conversation\","
           "\"input_schema\":{\"properties\":{\"city\":{\"type\":\"string\"},\"country\":{\"type\":"
           "\"string\"}},"
           "\"required\":[\"city\",\"country\"],\"title\":\"CityLocation\",\"type\":\"object\"}}],"
           "\"tool_choice\":{\"type\":\"any\"}}");
    json_decref(j);
    chat_request_free(&r);
}

/* A request as another format's decoder would leave it. */
static void test_encode_from_model(void **state)
{
    (void)state;
    chat_request r;
    assert_int_equal(chat_request_init(&r), 0);
    set_str(&r, &r.model, "gpt-4o");
    size_t m0 = add_msg(&r, CHAT_ROLE_SYSTEM);
    add_part(&r, m0, CHAT_PART_TEXT, "You are terse.");
    size_t m1 = add_msg(&r, CHAT_ROLE_USER);
    add_part(&r, m1, CHAT_PART_TEXT, "Weather in Paris? See");
    chat_part *img = add_part(&r, m1, CHAT_PART_IMAGE, NULL);
    set_str(&r, &img->media_type, "image/jpeg");
    set_str(&r, &img->data, "/9j/4AAQ");
    set_str(&r, &img->detail, "high"); /* dropped */
    img = add_part(&r, m1, CHAT_PART_IMAGE, NULL);
    set_str(&r, &img->url, "https://example.com/x.png");
    size_t m2 = add_msg(&r, CHAT_ROLE_ASSISTANT);
    add_part(&r, m2, CHAT_PART_THINKING, "unsigned reasoning"); /* dropped */
    add_part(&r, m2, CHAT_PART_TEXT, "");                       /* dropped: empty */
    chat_part *c = add_part(&r, m2, CHAT_PART_TOOL_CALL, NULL);
    set_str(&r, &c->id, "call_1");
    set_str(&r, &c->name, "get_weather");
    set_str(&r, &c->args, "{\"city\":\"Paris\"}");
    c = add_part(&r, m2, CHAT_PART_TOOL_CALL, NULL);
    set_str(&r, &c->id, "call_2");
    set_str(&r, &c->name, "get_time");
    set_str(&r, &c->signature, "c2ln+/8=");
    set_str(&r, &c->args, "");
    size_t m3 = add_msg(&r, CHAT_ROLE_TOOL);
    chat_part *t = add_part(&r, m3, CHAT_PART_TOOL_RESULT, "sunny");
    set_str(&r, &t->id, "call_1");
    size_t m4 = add_msg(&r, CHAT_ROLE_TOOL);
    t = add_part(&r, m4, CHAT_PART_TOOL_RESULT, "noon");
    set_str(&r, &t->id, "call_2");
    t->is_error = true;
    size_t m5 = add_msg(&r, CHAT_ROLE_USER);
    add_part(&r, m5, CHAT_PART_TEXT, "Thanks");
    size_t m6 = add_msg(&r, CHAT_ROLE_SYSTEM); /* a late system message joins "system" */
    add_part(&r, m6, CHAT_PART_TEXT, "Answer in French.");
    r.cache_system = true;
    size_t m7 = add_msg(&r, CHAT_ROLE_ASSISTANT);
    chat_part *th = add_part(&r, m7, CHAT_PART_THINKING, "signed");
    set_str(&r, &th->signature, "EqQB");
    add_part(&r, m7, CHAT_PART_TEXT, "Voila");
    chat_tool *tool = chat_add_tool(&r);
    assert_non_null(tool);
    set_str(&r, &tool->name, "get_weather");
    tool->parameters = json_pack("{s:s}", "type", "object");
    tool->strict = true; /* dropped */
    tool = chat_add_tool(&r);
    set_str(&r, &tool->name, "get_time");
    set_str(&r, &tool->description, "Time");
    r.tool_choice = CHAT_TOOL_CHOICE_UNSET;
    r.parallel_tool_calls = 0;
    assert_int_equal(chat_add_stop(&r, "\n\n", 2), 0);
    r.temperature = 0.5;
    r.top_p = 1;
    set_str(&r, &r.user, "u-1");
    r.thinking_budget = 2048;

    json_t *j = encode_json(&r, "claude-sonnet-4-5", true);
    assert_json_eq(
        j,
        "{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":4096,"
        "\"system\":[{\"type\":\"text\",\"text\":\"You are terse.\"},"
        "{\"type\":\"text\",\"text\":\"Answer in "
        "French.\",\"cache_control\":{\"type\":\"ephemeral\"}}],"
        "\"messages\":["
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Weather in Paris? See\"},"
        "{\"type\":\"image\",\"source\":{\"type\":\"base64\",\"media_type\":\"image/"
        "jpeg\",\"data\":\"/9j/4AAQ\"}},"
        "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":\"https://example.com/"
        "x.png\"}}]},"
        "{\"role\":\"assistant\",\"content\":["
        "{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"get_weather\",\"input\":{\"city\":"
        "\"Paris\"}},"
        "{\"type\":\"tool_use\",\"id\":\"call_2_tgsig_c2ln-_8\",\"name\":\"get_time\",\"input\":{}}"
        "]},"
        "{\"role\":\"user\",\"content\":["
        "{\"type\":\"tool_result\",\"tool_use_id\":\"call_1\",\"content\":\"sunny\"},"
        "{\"type\":\"tool_result\",\"tool_use_id\":\"call_2_tgsig_c2ln-_8\",\"content\":\"noon\","
        "\"is_error\":true},"
        "{\"type\":\"text\",\"text\":\"Thanks\"}]},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"signed\","
        "\"signature\":\"EqQB\"},"
        "{\"type\":\"text\",\"text\":\"Voila\"}]}],"
        "\"stop_sequences\":[\"\\n\\n\"],\"temperature\":0.5,\"top_p\":1.0,"
        "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}},"
        "{\"name\":\"get_time\",\"description\":\"Time\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"auto\",\"disable_parallel_tool_use\":true},"
        "\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":2048},"
        "\"metadata\":{\"user_id\":\"u-1\"},\"stream\":true}");
    json_decref(j);

    /* tool_choice mappings */
    static const struct {
        chat_tool_choice tc;
        int parallel;
        const char *want;
    } tcs[] = {
        {CHAT_TOOL_CHOICE_REQUIRED, -1, "{\"type\":\"any\"}"},
        {CHAT_TOOL_CHOICE_REQUIRED, 0, "{\"type\":\"any\",\"disable_parallel_tool_use\":true}"},
        {CHAT_TOOL_CHOICE_NAMED, -1, "{\"type\":\"tool\",\"name\":\"get_time\"}"},
        {CHAT_TOOL_CHOICE_NONE, 0, "{\"type\":\"none\"}"},
        {CHAT_TOOL_CHOICE_AUTO, 1, "{\"type\":\"auto\"}"},
    };
    set_str(&r, &r.tool_choice_name, "get_time");
    for (size_t i = 0; i < sizeof tcs / sizeof tcs[0]; i++) {
        r.tool_choice = tcs[i].tc;
        r.parallel_tool_calls = tcs[i].parallel;
        j = encode_json(&r, "m", false);
        assert_json_eq(json_object_get(j, "tool_choice"), tcs[i].want);
        assert_null(json_object_get(j, "stream"));
        json_decref(j);
    }
    /* max_tokens: given, and the default raised above a large thinking budget */
    r.max_tokens = 100;
    j = encode_json(&r, "m", false);
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 100);
    json_decref(j);
    r.max_tokens = -1;
    r.thinking_budget = 10000;
    j = encode_json(&r, "m", false);
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 14096);
    json_decref(j);
    r.thinking_budget = 0;
    j = encode_json(&r, "m", false);
    assert_int_equal(json_integer_value(json_object_get(j, "max_tokens")), 4096);
    assert_json_eq(json_object_get(j, "thinking"), "{\"type\":\"disabled\"}");
    json_decref(j);
    chat_request_free(&r);
}

static void test_encode_refusals(void **state)
{
    (void)state;
    static const char *const params[] = {"n",    "frequency_penalty", "presence_penalty",
                                         "seed", "response_format",   "response_format"};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        chat_request r;
        assert_int_equal(chat_request_init(&r), 0);
        size_t m = add_msg(&r, CHAT_ROLE_USER);
        add_part(&r, m, CHAT_PART_TEXT, "hi");
        switch (i) {
        case 0:
            r.n = 2;
            break;
        case 1:
            r.frequency_penalty = 0.5;
            break;
        case 2:
            r.presence_penalty = 0;
            break;
        case 3:
            r.seed = 7;
            break;
        case 4:
            r.resp_format = CHAT_RESP_JSON_OBJECT;
            break;
        case 5:
            r.resp_format = CHAT_RESP_JSON_SCHEMA;
            break;
        }
        buf out;
        buf_init(&out, BIG);
        chat_error err;
        chat_target t = {"m", 1, false};
        assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
        assert_int_equal(err.status, 400);
        assert_string_equal(err.param, params[i]);
        assert_non_null(strstr(err.message, params[i]));
        assert_int_equal(out.len, 0);
        /* n = 1 is fine */
        if (i == 0) {
            r.n = 1;
            assert_int_equal(F->req_encode(&r, &t, &out, &err), 0);
        }
        buf_free(&out);
        chat_request_free(&r);
    }
    /* Tool arguments that are not a JSON object name the message. */
    chat_request r;
    assert_int_equal(chat_request_init(&r), 0);
    size_t m = add_msg(&r, CHAT_ROLE_USER);
    add_part(&r, m, CHAT_PART_TEXT, "hi");
    m = add_msg(&r, CHAT_ROLE_ASSISTANT);
    chat_part *c = add_part(&r, m, CHAT_PART_TOOL_CALL, NULL);
    set_str(&r, &c->id, "call_1");
    set_str(&r, &c->name, "f");
    set_str(&r, &c->args, "[1,2]");
    buf out;
    buf_init(&out, BIG);
    chat_error err;
    chat_target t = {"m", 1, false};
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_string_equal(err.param, "messages[1]");
    set_str(&r, &c->args, "{\"a\":");
    assert_int_equal(F->req_encode(&r, &t, &out, &err), -EINVAL);
    assert_string_equal(err.param, "messages[1]");
    assert_int_equal(out.len, 0);
    buf_free(&out);
    chat_request_free(&r);
}

static void test_path_and_headers(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 4096);
    chat_target t = {"claude", 6, true};
    assert_int_equal(F->req_path(&t, &out), 0);
    assert_buf(&out, "/messages");
    buf_reset(&out);
    assert_int_equal(F->req_auth_headers("sk-ant-123", &out), 0);
    assert_buf(&out, "x-api-key: sk-ant-123\r\nanthropic-version: 2023-06-01\r\n");
    buf_reset(&out);
    assert_int_equal(F->req_auth_headers(NULL, &out), 0);
    assert_buf(&out, "anthropic-version: 2023-06-01\r\n");
    buf_free(&out);
    assert_string_equal(F->name, "anthropic");
    assert_int_equal(F->id, CHAT_FMT_ANTHROPIC);
}

/* ------------------------------------------------------------ stream decode */

static void test_stream_decode_basic(void **state)
{
    (void)state;
    rec *r = calloc(1, sizeof *r);
    decode_sse_fixture("messages_stream.sse", r);
    assert_int_equal(r->n, 5);
    assert_int_equal(r->ev[0].type, CHAT_EV_START);
    assert_string_equal(r->ev[0].id, "msg_018E1hg8GoVTGEKQY3ovMcSJ");
    assert_string_equal(r->ev[0].model, "claude-sonnet-4-5-20250929");
    assert_usage(r->ev[0].usage, 20, 1, 0, 0);
    assert_int_equal(r->ev[1].type, CHAT_EV_TEXT);
    assert_string_equal(r->ev[1].text, "2");
    assert_int_equal(r->ev[2].type, CHAT_EV_FINISH);
    assert_int_equal(r->ev[2].finish, CHAT_FINISH_STOP);
    assert_string_equal(r->ev[2].native, "end_turn");
    assert_string_equal(r->ev[2].stopseq, "");
    assert_int_equal(r->ev[3].type, CHAT_EV_USAGE);
    assert_usage(r->ev[3].usage, 20, 5, 0, 0);
    assert_int_equal(r->ev[4].type, CHAT_EV_END);
    free(r);
}

static void test_stream_decode_sdk_basic(void **state)
{
    (void)state;
    rec *r = calloc(1, sizeof *r);
    decode_sse_fixture("messages_stream_sdk_basic.sse", r);
    static const chat_ev_type want[] = {CHAT_EV_START,  CHAT_EV_TEXT,  CHAT_EV_TEXT, CHAT_EV_TEXT,
                                        CHAT_EV_FINISH, CHAT_EV_USAGE, CHAT_EV_END};
    assert_int_equal(r->n, 7);
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->ev[i].type, want[i]);
    assert_string_equal(r->ev[0].id, "msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK");
    assert_string_equal(r->ev[0].model, "claude-3-opus-latest");
    assert_usage(r->ev[0].usage, 11, 1, -1, -1);
    assert_string_equal(r->ev[1].text, "Hello");
    assert_string_equal(r->ev[2].text, " there");
    assert_string_equal(r->ev[3].text, "!");
    assert_int_equal(r->ev[4].finish, CHAT_FINISH_STOP);
    /* message_delta gives output only: input stays message_start's */
    assert_usage(r->ev[5].usage, 11, 6, -1, -1);
    free(r);
}

static void test_stream_decode_tool_use(void **state)
{
    (void)state;
    rec *r = calloc(1, sizeof *r);
    decode_sse_fixture("messages_stream_tool_use.sse", r);
    static const chat_ev_type want[] = {CHAT_EV_START,      CHAT_EV_TEXT,      CHAT_EV_TEXT,
                                        CHAT_EV_TOOL_START, CHAT_EV_TOOL_ARGS, CHAT_EV_TOOL_ARGS,
                                        CHAT_EV_TOOL_ARGS,  CHAT_EV_TOOL_ARGS, CHAT_EV_FINISH,
                                        CHAT_EV_USAGE,      CHAT_EV_END};
    assert_int_equal(r->n, 11);
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->ev[i].type, want[i]);
    assert_usage(r->ev[0].usage, 377, 1, 0, 0);
    assert_string_equal(r->ev[1].text, "I");
    assert_string_equal(r->ev[2].text, "'ll check the current weather in Paris for you.");
    assert_int_equal(r->ev[3].tool, 0);
    assert_string_equal(r->ev[3].id, "toolu_01NRLabsLyVHZPKxbKvkfSMn");
    assert_string_equal(r->ev[3].text, "get_weather");
    char args[256] = "";
    for (int i = 4; i < 8; i++) {
        assert_int_equal(r->ev[i].tool, 0);
        strncat(args, r->ev[i].text, sizeof args - strlen(args) - 1);
    }
    assert_string_equal(args, "{\"location\": \"Paris\"}");
    assert_int_equal(r->ev[8].finish, CHAT_FINISH_TOOL_CALLS);
    assert_string_equal(r->ev[8].native, "tool_use");
    assert_usage(r->ev[9].usage, 377, 65, 0, 0);
    free(r);
}

static void test_stream_decode_error_event(void **state)
{
    (void)state;
    rec *r = calloc(1, sizeof *r);
    decode_sse_fixture("messages_stream_error_event.sse", r);
    assert_int_equal(r->n, 1); /* no START made up, no END */
    assert_int_equal(r->ev[0].type, CHAT_EV_ERROR);
    assert_int_equal(r->ev[0].error.kind, CHAT_ERR_OVERLOADED);
    assert_int_equal(r->ev[0].error.status, 529);
    assert_string_equal(r->ev[0].error.type, "overloaded_error");
    assert_string_equal(r->ev[0].error.message, "Overloaded");
    free(r);
}

static void test_stream_decode_cut(void **state)
{
    (void)state;
    size_t n;
    char *p = read_fixture("messages_stream.sse", &n);
    const char *stop = strstr(p, "event: message_stop");
    assert_non_null(stop);
    rec *r = calloc(1, sizeof *r);
    assert_int_equal(decode_sse(p, (size_t)(stop - p), 0, rec_emit, r), 0);
    assert_int_equal(r->n, 4); /* START TEXT FINISH USAGE: no END */
    assert_int_equal(r->ev[3].type, CHAT_EV_USAGE);
    free(r);
    free(p);
}

static void test_stream_decode_synthetic(void **state)
{
    (void)state;
    static const char s1[] =
        "event: message_start\n"
        "data: "
        "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_x\",\"model\":\"claude-sonnet-4-5\","
        "\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":418,\"cache_read_input_"
        "tokens\":1111,"
        "\"output_tokens\":1}}}\n\n"
        ": keep-alive comment\n\n"
        "event: content_block_start\n"
        "data: "
        "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\","
        "\"thinking\":\"\"}}\n\n"
        "event: content_block_delta\n"
        "data: "
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\","
        "\"thinking\":\"Let me see\"}}\n\n"
        "event: content_block_delta\n"
        "data: "
        "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\","
        "\"signature\":\"EqQBsig\"}}\n\n"
        "event: content_block_start\n"
        "data: "
        "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\","
        "\"text\":\"Hi\"}}\n\n"
        "event: brand_new_event\n"
        "data: {\"type\":\"brand_new_event\",\"x\":1}\n\n"
        "event: content_block_start\n"
        "data: "
        "{\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"toolu_a\",\"name\":\"f\",\"input\":{}}}\n\n"
        "event: content_block_start\n"
        "data: "
        "{\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\","
        "\"id\":\"toolu_b\",\"name\":\"g\",\"input\":{}}}\n\n"
        "event: content_block_delta\n"
        "data: "
        "{\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\","
        "\"partial_json\":\"{}\"}}\n\n"
        "event: message_delta\n"
        "data: "
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"stop_sequence\",\"stop_"
        "sequence\":\"###\"},"
        "\"usage\":{\"output_tokens\":33}}\n\n"
        "event: message_stop\n"
        "data: {\"type\":\"message_stop\"}\n\n"
        "event: message_delta\n"
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\n";
    rec *r = calloc(1, sizeof *r);
    assert_int_equal(decode_sse(s1, sizeof s1 - 1, 7, rec_emit, r), 0);
    static const chat_ev_type want[] = {
        CHAT_EV_START,      CHAT_EV_THINKING,  CHAT_EV_THINKING, CHAT_EV_TEXT,  CHAT_EV_TOOL_START,
        CHAT_EV_TOOL_START, CHAT_EV_TOOL_ARGS, CHAT_EV_FINISH,   CHAT_EV_USAGE, CHAT_EV_END};
    assert_int_equal(r->n, 10);
    for (int i = 0; i < r->n; i++)
        assert_int_equal(r->ev[i].type, want[i]);
    /* prompt-cache numbers: input = 3 + 418 + 1111 */
    assert_usage(r->ev[0].usage, 1532, 1, 1111, 418);
    assert_string_equal(r->ev[1].text, "Let me see");
    assert_string_equal(r->ev[1].sig, "");
    assert_string_equal(r->ev[2].text, "");
    assert_string_equal(r->ev[2].sig, "EqQBsig");
    assert_string_equal(r->ev[3].text, "Hi");
    assert_int_equal(r->ev[4].tool, 0);
    assert_int_equal(r->ev[5].tool, 1);
    assert_string_equal(r->ev[5].id, "toolu_b");
    assert_int_equal(r->ev[6].tool, 1); /* block 3 is tool 1 */
    assert_string_equal(r->ev[6].text, "{}");
    assert_int_equal(r->ev[7].finish, CHAT_FINISH_STOP_SEQUENCE);
    assert_string_equal(r->ev[7].stopseq, "###");
    assert_usage(r->ev[8].usage, 1532, 33, 1111, 418);
    free(r);

    /* Finish reasons. */
    static const struct {
        const char *reason;
        chat_finish f;
    } fin[] = {
        {"end_turn", CHAT_FINISH_STOP},       {"max_tokens", CHAT_FINISH_LENGTH},
        {"tool_use", CHAT_FINISH_TOOL_CALLS}, {"refusal", CHAT_FINISH_CONTENT_FILTER},
        {"pause_turn", CHAT_FINISH_PAUSE},    {"model_context_window_exceeded", CHAT_FINISH_LENGTH},
        {"brand_new", CHAT_FINISH_OTHER}};
    for (size_t i = 0; i < sizeof fin / sizeof fin[0]; i++) {
        char s[512];
        snprintf(s, sizeof s,
                 "event: message_delta\ndata: "
                 "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\"},"
                 "\"usage\":{\"output_tokens\":2}}\n\n",
                 fin[i].reason);
        r = calloc(1, sizeof *r);
        assert_int_equal(decode_sse(s, strlen(s), 0, rec_emit, r), 0);
        assert_int_equal(r->n, 3); /* made-up START, FINISH, USAGE */
        assert_int_equal(r->ev[0].type, CHAT_EV_START);
        assert_string_equal(r->ev[0].id, "");
        assert_int_equal(r->ev[1].finish, fin[i].f);
        assert_string_equal(r->ev[1].native, fin[i].reason);
        assert_usage(r->ev[2].usage, -1, 2, -1, -1);
        free(r);
    }

    /* Invalid events. */
    static const char *const bad[] = {
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\n\n",
        "data: [1]\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0}\n\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = calloc(1, sizeof *r);
        assert_int_equal(decode_sse(bad[i], strlen(bad[i]), 0, rec_emit, r), -EINVAL);
        free(r);
    }
    /* Argument fragments of a server tool block are dropped. */
    static const char srv[] =
        "event: content_block_start\n"
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":"
        "\"server_tool_use\",\"id\":\"srvtoolu_1\",\"name\":\"web_search\",\"input\":{}}}\n\n"
        "event: content_block_delta\n"
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
        "\"input_json_delta\",\"partial_json\":\"{\\\"q\\\":1}\"}}\n\n";
    r = calloc(1, sizeof *r);
    assert_int_equal(decode_sse(srv, sizeof srv - 1, 0, rec_emit, r), 0);
    assert_int_equal(r->n, 1); /* START only */
    assert_int_equal(r->ev[0].type, CHAT_EV_START);
    free(r);
    /* A data error object without the event name is an error too. */
    static const char de[] =
        "data: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"boom\"}}\n\n";
    r = calloc(1, sizeof *r);
    assert_int_equal(decode_sse(de, sizeof de - 1, 0, rec_emit, r), 0);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->ev[0].error.kind, CHAT_ERR_SERVER);
    assert_int_equal(r->ev[0].error.status, 500);
    assert_string_equal(r->ev[0].error.message, "boom");
    free(r);
}

static int stop_emit(void *ud, const chat_event *ev)
{
    int *n = ud;
    (void)ev;
    return ++*n == 2 ? 42 : 0;
}

static void test_stream_decode_callback_stop(void **state)
{
    (void)state;
    size_t n;
    char *p = read_fixture("messages_stream_sdk_basic.sse", &n);
    int count = 0;
    assert_int_equal(decode_sse(p, n, 0, stop_emit, &count), 42);
    assert_int_equal(count, 2);
    free(p);
}

/* ------------------------------------------------------------ whole responses */

static void collect_fixture(const char *name, chat_response *c)
{
    size_t n;
    char *p = read_fixture(name, &n);
    chat_response_init(c);
    assert_int_equal(F->resp_decode(p, n, chat_response_collect, c), 0);
    assert_true(c->ended);
    free(p);
}

static void test_resp_decode(void **state)
{
    (void)state;
    chat_response c;
    collect_fixture("messages_response.json", &c);
    assert_buf(&c.id, "msg_01Fg1JVgvCYUHWsxrj9GkpEv");
    assert_buf(&c.model, "claude-3-opus-20240229");
    assert_buf(&c.text, "The capital of France is Paris.");
    assert_int_equal(c.finish, CHAT_FINISH_STOP);
    assert_string_equal(c.native, "end_turn");
    assert_true(c.have_usage);
    assert_usage(c.usage, 20, 10, 0, 0);
    assert_int_equal(c.ncalls, 0);
    chat_response_free(&c);

    collect_fixture("messages_prompt_cache_response.json", &c);
    assert_usage(c.usage, 1532, 33, 1111, 418);
    assert_buf(&c.text,
               "Python is a beginner-friendly, versatile programming language widely used for "
               "web development, data science, machine learning, automation, and scientific "
               "computing.");
    chat_response_free(&c);

    collect_fixture("messages_tool_use_response.json", &c);
    assert_int_equal(c.ncalls, 1);
    assert_buf(&c.calls[0].id, "toolu_01X9wcHKKAZD9tBC711xipPa");
    assert_buf(&c.calls[0].name, "get_user_country");
    assert_buf(&c.calls[0].args, "{}");
    assert_int_equal(c.finish, CHAT_FINISH_TOOL_CALLS);
    assert_usage(c.usage, 445, 23, 0, 0);
    assert_int_equal(c.text.len, 0);
    chat_response_free(&c);

    collect_fixture("messages_tool_result_response.json", &c);
    assert_int_equal(c.ncalls, 1);
    assert_buf(&c.calls[0].id, "toolu_01LZABsgreMefH2Go8D5PQbW");
    assert_buf(&c.calls[0].name, "final_result");
    assert_buf(&c.calls[0].args, "{\"city\":\"Mexico City\",\"country\":\"Mexico\"}");
    assert_usage(c.usage, 497, 56, 0, 0);
    chat_response_free(&c);

    rec *r = calloc(1, sizeof *r);
    assert_int_equal(F->resp_decode("{\"content\":5}", 13, rec_emit, r), -EINVAL);
    assert_int_equal(F->resp_decode("nope", 4, rec_emit, r), -EINVAL);
    free(r);
}

/* Decode a fixture, encode it, compare with the fixture's members. */
static void test_resp_encode_fixtures(void **state)
{
    (void)state;
    static const char *const names[] = {
        "messages_response.json", "messages_prompt_cache_response.json",
        "messages_tool_use_response.json", "messages_tool_result_response.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        chat_response c;
        collect_fixture(names[i], &c);
        buf out;
        buf_init(&out, BIG);
        assert_int_equal(F->resp_encode(NULL, &c, &out), 0);
        json_t *got = load(out.data, out.len);
        size_t n;
        char *p = read_fixture(names[i], &n);
        json_t *want = load(p, n);
        /* The fixture minus the members tollgate does not produce. */
        json_t *wu = json_object_get(want, "usage");
        json_object_del(wu, "cache_creation");
        json_object_del(wu, "service_tier");
        json_object_del(wu, "inference_geo");
        if (!json_equal(got, want))
            fail_msg("%s: got %s", names[i], out.data);
        assert_memory_equal(out.data, "{\"id\":", 6); /* id first, as the API writes it */
        json_decref(got);
        json_decref(want);
        free(p);
        buf_free(&out);
        chat_response_free(&c);
    }
}

static void test_resp_encode_synthetic(void **state)
{
    (void)state;
    chat_request req;
    chat_error err;
    assert_int_equal(
        decode_str("{\"model\":\"claude-x\",\"max_tokens\":5,\"messages\":[]}", &req, &err), 0);
    chat_response c;
    chat_response_init(&c);
    assert_int_equal(buf_append_str(&c.id, "chatcmpl-abc"), 0);
    assert_int_equal(buf_append_str(&c.thinking, "think"), 0);
    assert_int_equal(buf_append_str(&c.thinking_sig, "SIG"), 0);
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = CHAT_EV_TOOL_START;
    ev.tool = 0;
    ev.id = SLICE_LIT("call_1");
    ev.text = SLICE_LIT("f");
    assert_int_equal(chat_response_collect(&c, &ev), 0);
    ev.type = CHAT_EV_TOOL_ARGS;
    ev.text = SLICE_LIT("{\"a\":1}");
    assert_int_equal(chat_response_collect(&c, &ev), 0);
    ev.type = CHAT_EV_TOOL_START;
    ev.tool = 1;
    ev.id = SLICE_LIT("");
    ev.text = SLICE_LIT("g");
    ev.signature = SLICE_LIT("c2ln");
    assert_int_equal(chat_response_collect(&c, &ev), 0);
    ev.type = CHAT_EV_TOOL_ARGS;
    ev.text = SLICE_LIT("{\"cut");
    assert_int_equal(chat_response_collect(&c, &ev), 0);
    c.finish = CHAT_FINISH_STOP; /* Gemini's STOP with a call: tool_use */
    c.usage.input = 100;
    c.usage.cache_read = 30;
    c.usage.output = 7;
    buf out;
    buf_init(&out, BIG);
    assert_int_equal(F->resp_encode(&req, &c, &out), 0);
    json_t *j = load(out.data, out.len);
    const char *id = json_string_value(json_object_get(j, "id"));
    assert_non_null(id);
    assert_int_equal(strlen(id), 4 + 24);
    assert_memory_equal(id, "msg_", 4);
    json_t *calls1 = json_object_get(json_array_get(json_object_get(j, "content"), 2), "id");
    const char *id1 = json_string_value(calls1);
    assert_non_null(id1);
    assert_memory_equal(id1, "toolu_", 6);
    assert_non_null(strstr(id1, "_tgsig_c2ln"));
    json_object_del(j, "id");
    json_object_del(json_array_get(json_object_get(j, "content"), 2), "id");
    assert_json_eq(
        j, "{\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\",\"content\":["
           "{\"type\":\"thinking\",\"thinking\":\"think\",\"signature\":\"SIG\"},"
           "{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"f\",\"input\":{\"a\":1}},"
           "{\"type\":\"tool_use\",\"name\":\"g\",\"input\":{}}],"
           "\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
           "\"usage\":{\"input_tokens\":70,\"cache_read_input_tokens\":30,\"output_tokens\":7}}");
    json_decref(j);
    chat_response_free(&c);

    /* A stop sequence, no usage, empty text. */
    chat_response_init(&c);
    assert_int_equal(buf_append_str(&c.id, "msg_keep"), 0);
    c.finish = CHAT_FINISH_STOP_SEQUENCE;
    snprintf(c.stop_sequence, sizeof c.stop_sequence, "###");
    buf_reset(&out);
    assert_int_equal(F->resp_encode(&req, &c, &out), 0);
    j = load(out.data, out.len);
    assert_json_eq(
        j,
        "{\"id\":\"msg_keep\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-x\","
        "\"content\":[{\"type\":\"text\",\"text\":\"\"}],\"stop_reason\":\"stop_sequence\","
        "\"stop_sequence\":\"###\",\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}");
    json_decref(j);
    static const struct {
        chat_finish f;
        const char *want;
    } fin[] = {{CHAT_FINISH_NONE, "end_turn"},          {CHAT_FINISH_STOP, "end_turn"},
               {CHAT_FINISH_LENGTH, "max_tokens"},      {CHAT_FINISH_TOOL_CALLS, "tool_use"},
               {CHAT_FINISH_CONTENT_FILTER, "refusal"}, {CHAT_FINISH_PAUSE, "pause_turn"},
               {CHAT_FINISH_OTHER, "end_turn"}};
    for (size_t i = 0; i < sizeof fin / sizeof fin[0]; i++) {
        c.finish = fin[i].f;
        buf_reset(&out);
        assert_int_equal(F->resp_encode(&req, &c, &out), 0);
        j = load(out.data, out.len);
        assert_string_equal(json_string_value(json_object_get(j, "stop_reason")), fin[i].want);
        json_decref(j);
    }
    buf_free(&out);
    chat_response_free(&c);
    chat_request_free(&req);
}

/* ------------------------------------------------------------ stream encode */

static chat_event mkev(chat_ev_type t)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = t;
    chat_usage_unset(&ev.usage);
    return ev;
}

static void feed(chat_stream *s, const chat_event *ev, buf *out)
{
    int rc = F->stream_enc_feed(s, ev, out);
    if (rc)
        fail_msg("stream_enc_feed(%d): %d", ev->type, rc);
}

/* text, two tool calls (the second with a signature), finish, usage, end. */
static void feed_synthetic(chat_stream *s, buf *out)
{
    chat_event ev = mkev(CHAT_EV_START);
    ev.id = SLICE_LIT("msg_abc");
    ev.model = SLICE_LIT("gpt-4o");
    ev.usage.input = 100;
    ev.usage.cache_read = 40;
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("Hello");
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 0;
    ev.id = SLICE_LIT("call_a");
    ev.text = SLICE_LIT("get_weather");
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_TOOL_ARGS);
    ev.tool = 0;
    ev.text = SLICE_LIT("{\"city\":");
    feed(s, &ev, out);
    ev.text = SLICE_LIT("\"Paris\"}");
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 1;
    ev.id = SLICE_LIT("call_b");
    ev.text = SLICE_LIT("get_time");
    ev.signature = SLICE_LIT("sig+/==");
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_FINISH);
    ev.finish = CHAT_FINISH_TOOL_CALLS;
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_USAGE);
    ev.usage.input = 100;
    ev.usage.output = 20;
    ev.usage.cache_read = 40;
    feed(s, &ev, out);
    ev = mkev(CHAT_EV_END);
    feed(s, &ev, out);
}

static const char SYNTH_SSE[] =
    "event: message_start\n"
    "data: "
    "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_abc\",\"type\":\"message\",\"role\":"
    "\"assistant\","
    "\"model\":\"gpt-4o\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
    "\"usage\":{\"input_tokens\":60,\"cache_read_input_tokens\":40,\"output_tokens\":0}}}\n\n"
    "event: content_block_start\n"
    "data: "
    "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":"
    "\"\"}}\n\n"
    "event: content_block_delta\n"
    "data: "
    "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
    "\"Hello\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: content_block_start\n"
    "data: "
    "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":"
    "\"call_a\","
    "\"name\":\"get_weather\",\"input\":{}}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"{\\\"city\\\":\"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
    "\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\","
    "\"id\":\"call_b_tgsig_sig-_\",\"name\":\"get_time\",\"input\":{}}}\n\n"
    "event: content_block_stop\n"
    "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n"
    "event: message_delta\n"
    "data: "
    "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
    "\"usage\":{\"input_tokens\":60,\"cache_read_input_tokens\":40,\"output_tokens\":20}}\n\n"
    "event: message_stop\n"
    "data: {\"type\":\"message_stop\"}\n\n";

static void test_stream_encode_exact(void **state)
{
    (void)state;
    chat_stream *s = F->stream_enc_new(NULL);
    assert_non_null(s);
    buf out;
    buf_init(&out, BIG);
    feed_synthetic(s, &out);
    if (out.len != sizeof SYNTH_SSE - 1 || memcmp(out.data, SYNTH_SSE, out.len) != 0)
        fail_msg("got:\n%s", out.data);
    /* After the end nothing more is written. */
    chat_event ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("late");
    feed(s, &ev, &out);
    assert_int_equal(out.len, sizeof SYNTH_SSE - 1);
    F->stream_free(s);
    buf_free(&out);
}

static void test_stream_encode_rules(void **state)
{
    (void)state;
    chat_request req;
    chat_error err;
    assert_int_equal(
        decode_str("{\"model\":\"claude-req\",\"max_tokens\":5,\"messages\":[]}", &req, &err), 0);
    buf out;
    buf_init(&out, BIG);

    /* Content before START: a message_start with a generated id and the
     * request's model; thinking then text; Gemini-style STOP with a tool
     * call gives tool_use. */
    chat_stream *s = F->stream_enc_new(&req);
    chat_event ev = mkev(CHAT_EV_THINKING);
    ev.text = SLICE_LIT("hmm");
    feed(s, &ev, &out);
    ev = mkev(CHAT_EV_THINKING);
    ev.signature = SLICE_LIT("SIG");
    feed(s, &ev, &out);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("ok");
    feed(s, &ev, &out);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 0;
    ev.text = SLICE_LIT("f"); /* no id: generated toolu_ */
    feed(s, &ev, &out);
    ev = mkev(CHAT_EV_FINISH);
    ev.finish = CHAT_FINISH_STOP;
    feed(s, &ev, &out);
    ev = mkev(CHAT_EV_END);
    feed(s, &ev, &out);
    const char *p = out.data;
    assert_non_null(strstr(p, "\"model\":\"claude-req\""));
    assert_non_null(strstr(p, "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_"));
    assert_non_null(strstr(p, "\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}"));
    assert_non_null(strstr(p, "\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":"
                              "\"\",\"signature\":\"\"}}"));
    assert_non_null(
        strstr(p, "\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}"));
    assert_non_null(
        strstr(p, "\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"SIG\"}}"));
    assert_non_null(strstr(p, "{\"type\":\"content_block_stop\",\"index\":0}"));
    assert_non_null(strstr(p, "\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}"));
    assert_non_null(
        strstr(p, "\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_"));
    assert_non_null(strstr(p, "{\"type\":\"content_block_stop\",\"index\":2}"));
    assert_non_null(strstr(p, "\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
                              "\"usage\":{\"output_tokens\":0}}"));
    F->stream_free(s);

    /* Finish mapping, stop sequence, usage with cache numbers. */
    static const struct {
        chat_finish f;
        const char *want;
    } fin[] = {
        {CHAT_FINISH_STOP, "\"stop_reason\":\"end_turn\",\"stop_sequence\":null"},
        {CHAT_FINISH_STOP_SEQUENCE, "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"###\""},
        {CHAT_FINISH_LENGTH, "\"stop_reason\":\"max_tokens\""},
        {CHAT_FINISH_TOOL_CALLS, "\"stop_reason\":\"tool_use\""},
        {CHAT_FINISH_CONTENT_FILTER, "\"stop_reason\":\"refusal\""},
        {CHAT_FINISH_PAUSE, "\"stop_reason\":\"pause_turn\""},
        {CHAT_FINISH_OTHER, "\"stop_reason\":\"end_turn\""},
        {CHAT_FINISH_NONE, "\"stop_reason\":\"end_turn\""}};
    for (size_t i = 0; i < sizeof fin / sizeof fin[0]; i++) {
        buf_reset(&out);
        s = F->stream_enc_new(&req);
        ev = mkev(CHAT_EV_START);
        ev.id = SLICE_LIT("chatcmpl-1"); /* wrong shape: replaced */
        ev.usage.input = 1532;
        ev.usage.cache_read = 1111;
        ev.usage.cache_write = 418;
        feed(s, &ev, &out);
        ev = mkev(CHAT_EV_FINISH);
        ev.finish = fin[i].f;
        ev.stop_sequence = SLICE_LIT("###");
        feed(s, &ev, &out);
        ev = mkev(CHAT_EV_USAGE);
        ev.usage.output = 33;
        feed(s, &ev, &out);
        ev = mkev(CHAT_EV_END);
        feed(s, &ev, &out);
        assert_null(strstr(out.data, "chatcmpl-1"));
        assert_non_null(strstr(out.data,
                               "\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":418,"
                               "\"cache_read_input_tokens\":1111,\"output_tokens\":0}}}"));
        assert_non_null(strstr(out.data, fin[i].want));
        assert_non_null(strstr(out.data,
                               "\"usage\":{\"input_tokens\":3,\"cache_creation_input_tokens\":418,"
                               "\"cache_read_input_tokens\":1111,\"output_tokens\":33}}"));
        /* no content: message_start, message_delta, message_stop only */
        assert_null(strstr(out.data, "content_block"));
        F->stream_free(s);
    }

    /* Interleaved tool fragments: going back to a closed tool is -EINVAL
     * and appends nothing. */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 0;
    ev.id = SLICE_LIT("call_0");
    ev.text = SLICE_LIT("f");
    feed(s, &ev, &out);
    feed(s, &ev, &out); /* announced again: ignored */
    ev.tool = 1;
    ev.id = SLICE_LIT("call_1");
    feed(s, &ev, &out);
    size_t len = out.len;
    ev = mkev(CHAT_EV_TOOL_ARGS);
    ev.tool = 0;
    ev.text = SLICE_LIT("{}");
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), -EINVAL);
    ev.tool = 5; /* never started */
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), -EINVAL);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 0;
    assert_int_equal(F->stream_enc_feed(s, &ev, &out), -EINVAL);
    assert_int_equal(out.len, len);
    F->stream_free(s);

    /* Choices other than 0 are dropped. */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    ev = mkev(CHAT_EV_TEXT);
    ev.choice = 1;
    ev.text = SLICE_LIT("x");
    feed(s, &ev, &out);
    assert_int_equal(out.len, 0);
    F->stream_free(s);

    /* An ERROR event ends the stream with the in-stream error. */
    buf_reset(&out);
    s = F->stream_enc_new(&req);
    ev = mkev(CHAT_EV_START);
    ev.id = SLICE_LIT("msg_1");
    feed(s, &ev, &out);
    buf_reset(&out);
    chat_error e;
    memset(&e, 0, sizeof e);
    e.kind = CHAT_ERR_OVERLOADED;
    snprintf(e.message, sizeof e.message, "Overloaded");
    ev = mkev(CHAT_EV_ERROR);
    ev.error = &e;
    feed(s, &ev, &out);
    assert_buf(&out,
               "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
               "\"message\":\"Overloaded\"}}\n\n");
    len = out.len;
    ev = mkev(CHAT_EV_END);
    feed(s, &ev, &out);
    assert_int_equal(out.len, len);
    F->stream_free(s);

    /* A cap too small: -E2BIG and nothing appended. */
    buf small;
    buf_init(&small, 40);
    s = F->stream_enc_new(&req);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("hello");
    assert_int_equal(F->stream_enc_feed(s, &ev, &small), -E2BIG);
    assert_int_equal(small.len, 0);
    F->stream_free(s);
    buf_free(&small);

    buf_free(&out);
    chat_request_free(&req);
}

/* Encoded stream -> Anthropic decoder -> the same answer. */
typedef struct enc_ctx {
    chat_stream *enc;
    buf *out;
} enc_ctx;

static int enc_emit(void *ud, const chat_event *ev)
{
    enc_ctx *c = ud;
    return F->stream_enc_feed(c->enc, ev, c->out);
}

static void assert_resp_equal(const chat_response *a, const chat_response *b, bool same_ids)
{
    if (same_ids)
        assert_buf(&a->id, b->id.data ? b->id.data : "");
    assert_int_equal(a->text.len, b->text.len);
    if (a->text.len)
        assert_memory_equal(a->text.data, b->text.data, a->text.len);
    assert_int_equal(a->thinking.len, b->thinking.len);
    assert_int_equal(a->ncalls, b->ncalls);
    for (size_t i = 0; i < a->ncalls; i++) {
        assert_int_equal(a->calls[i].args.len, b->calls[i].args.len);
        if (a->calls[i].args.len)
            assert_memory_equal(a->calls[i].args.data, b->calls[i].args.data, a->calls[i].args.len);
        assert_int_equal(a->calls[i].name.len, b->calls[i].name.len);
    }
    assert_int_equal(a->finish, b->finish);
    assert_int_equal(a->usage.input, b->usage.input);
    assert_int_equal(a->usage.output, b->usage.output);
    assert_int_equal(a->usage.cache_read, b->usage.cache_read);
    assert_true(a->ended == b->ended);
}

static void test_stream_roundtrip(void **state)
{
    (void)state;
    /* The synthetic sequence. */
    chat_stream *s = F->stream_enc_new(NULL);
    buf out;
    buf_init(&out, BIG);
    feed_synthetic(s, &out);
    F->stream_free(s);
    chat_response c;
    chat_response_init(&c);
    assert_int_equal(decode_sse(out.data, out.len, 0, chat_response_collect, &c), 0);
    assert_buf(&c.id, "msg_abc");
    assert_buf(&c.model, "gpt-4o");
    assert_buf(&c.text, "Hello");
    assert_int_equal(c.ncalls, 2);
    assert_buf(&c.calls[0].id, "call_a");
    assert_buf(&c.calls[0].args, "{\"city\":\"Paris\"}");
    assert_buf(&c.calls[1].id, "call_b_tgsig_sig-_");
    assert_buf(&c.calls[1].name, "get_time");
    assert_int_equal(c.calls[1].args.len, 0);
    assert_int_equal(c.finish, CHAT_FINISH_TOOL_CALLS);
    assert_usage(c.usage, 100, 20, 40, -1);
    assert_true(c.ended);
    chat_response_free(&c);

    /* Every fixture stream: decode -> encode -> decode. */
    static const char *const names[] = {"messages_stream.sse", "messages_stream_sdk_basic.sse",
                                        "messages_stream_tool_use.sse"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        size_t n;
        char *p = read_fixture(names[i], &n);
        chat_response a, b;
        chat_response_init(&a);
        chat_response_init(&b);
        assert_int_equal(decode_sse(p, n, 0, chat_response_collect, &a), 0);
        buf_reset(&out);
        enc_ctx ec = {F->stream_enc_new(NULL), &out};
        assert_int_equal(decode_sse(p, n, 0, enc_emit, &ec), 0);
        F->stream_free(ec.enc);
        assert_int_equal(decode_sse(out.data, out.len, 3, chat_response_collect, &b), 0);
        assert_resp_equal(&a, &b, true);
        chat_response_free(&a);
        chat_response_free(&b);
        free(p);
    }
    buf_free(&out);
}

/* ------------------------------------------------------------ errors */

static void test_error_decode_fixtures(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int status;
        chat_err_kind kind;
        const char *type, *message;
    } cases[] = {
        {"error_401_authentication_error.json", 401, CHAT_ERR_AUTH, "authentication_error",
         "invalid x-api-key"},
        {"error_404_not_found_error.json", 404, CHAT_ERR_NOT_FOUND, "not_found_error",
         "model: claude-does-not-exist"},
        {"error_429_rate_limit_error.json", 429, CHAT_ERR_RATE_LIMIT, "rate_limit_error",
         "This request would exceed your account's rate limit. Please try again later."},
        {"error_529_overloaded_error.json", 529, CHAT_ERR_OVERLOADED, "overloaded_error",
         "Overloaded"},
        /* the type wins over the status */
        {"error_529_overloaded_error.json", 500, CHAT_ERR_OVERLOADED, "overloaded_error",
         "Overloaded"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        char *p = read_fixture(cases[i].name, &n);
        chat_error e;
        F->error_decode(cases[i].status, p, n, &e);
        assert_int_equal(e.status, cases[i].status);
        assert_int_equal(e.kind, cases[i].kind);
        assert_string_equal(e.type, cases[i].type);
        assert_string_equal(e.code, "");
        assert_string_equal(e.message, cases[i].message);
        assert_int_equal(e.retry_after_ms, -1);
        free(p);
    }
}

static void test_error_decode_odd_bodies(void **state)
{
    (void)state;
    chat_error e;
    F->error_decode(502, "<html>Bad gateway</html>\n", sizeof("<html>Bad gateway</html>\n") - 1,
                    &e);
    assert_int_equal(e.kind, CHAT_ERR_SERVER);
    assert_string_equal(e.type, "");
    assert_string_equal(e.message, "HTTP 502: <html>Bad gateway</html> ");
    F->error_decode(503, "", sizeof("") - 1, &e);
    assert_int_equal(e.kind, CHAT_ERR_OVERLOADED);
    assert_string_equal(e.message, "HTTP 503 with an empty body");
    F->error_decode(400, "{\"error\":{\"type\":\"weird_error\",\"message\":\"x\"}}",
                    sizeof("{\"error\":{\"type\":\"weird_error\",\"message\":\"x\"}}") - 1, &e);
    assert_int_equal(e.kind, CHAT_ERR_INVALID_REQUEST);
    assert_string_equal(e.type, "weird_error");
    assert_string_equal(e.message, "x");
    F->error_decode(
        402, "{\"type\":\"error\",\"error\":{\"type\":\"billing_error\",\"message\":\"pay\"}}",
        sizeof("{\"type\":\"error\",\"error\":{\"type\":\"billing_error\",\"message\":\"pay\"}}") -
            1,
        &e);
    assert_int_equal(e.kind, CHAT_ERR_BILLING);
    F->error_decode(429, "{\"error\":\"slow down\"}", sizeof("{\"error\":\"slow down\"}") - 1, &e);
    assert_int_equal(e.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(e.message, "slow down");
    /* invalid UTF-8 and NUL in a non-JSON body (chat_text_copy: both become ?) */
    static const char bin[] = "\xff\xfe\x00"
                              "abc\xe2\x82";
    F->error_decode(500, bin, sizeof bin - 1, &e);
    assert_true(jscan_utf8_valid(e.message, strlen(e.message)));
    assert_string_equal(e.message, "HTTP 500: ???abc??");
    /* a huge message is cut on a character boundary */
    buf big;
    buf_init(&big, BIG);
    assert_int_equal(
        buf_append_str(&big,
                       "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\""),
        0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_append_str(&big, "\xc3\xa9"), 0); /* é */
    assert_int_equal(buf_append_str(&big, "\"}}"), 0);
    F->error_decode(500, big.data, big.len, &e);
    size_t ml = strlen(e.message);
    assert_true(ml > 400 && ml < sizeof e.message);
    assert_int_equal(ml % 2, 0);
    assert_true(jscan_utf8_valid(e.message, ml));
    /* a huge non-JSON body is quoted, not parsed */
    buf_reset(&big);
    for (int i = 0; i < 200000; i++)
        assert_int_equal(buf_append_str(&big, "0123456789"), 0);
    F->error_decode(500, big.data, big.len, &e);
    assert_true(strlen(e.message) < sizeof e.message);
    assert_memory_equal(e.message, "HTTP 500: 0123456789", 20);
    buf_free(&big);
}

static void test_error_encode(void **state)
{
    (void)state;
    static const struct {
        chat_err_kind kind;
        int status;
        const char *type;
    } cases[] = {
        {CHAT_ERR_INVALID_REQUEST, 400, "invalid_request_error"},
        {CHAT_ERR_AUTH, 401, "authentication_error"},
        {CHAT_ERR_BILLING, 402, "billing_error"},
        {CHAT_ERR_PERMISSION, 403, "permission_error"},
        {CHAT_ERR_NOT_FOUND, 404, "not_found_error"},
        {CHAT_ERR_TOO_LARGE, 413, "request_too_large"},
        {CHAT_ERR_RATE_LIMIT, 429, "rate_limit_error"},
        {CHAT_ERR_SERVER, 500, "api_error"},
        {CHAT_ERR_OVERLOADED, 529, "overloaded_error"},
        {CHAT_ERR_TIMEOUT, 504, "timeout_error"},
    };
    buf out;
    buf_init(&out, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_error e;
        memset(&e, 0, sizeof e);
        e.kind = cases[i].kind;
        e.status = 503;
        snprintf(e.message, sizeof e.message, "something \"bad\"");
        int status = 0;
        buf_reset(&out);
        assert_int_equal(F->error_encode(&e, &out, &status), 0);
        assert_int_equal(status, cases[i].status);
        char want[256];
        snprintf(want, sizeof want,
                 "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"something "
                 "\\\"bad\\\"\"}}",
                 cases[i].type);
        assert_buf(&out, want);
        /* and the decoder reads it back */
        chat_error d;
        F->error_decode(status, out.data, out.len, &d);
        assert_int_equal(d.kind, cases[i].kind);
        assert_string_equal(d.type, cases[i].type);
    }
    /* The parameter is named in the message. */
    chat_error e;
    chat_error_invalid(&e, "n", "parameter 'n' cannot be translated to Anthropic");
    int status;
    buf_reset(&out);
    assert_int_equal(F->error_encode(&e, &out, &status), 0);
    assert_int_equal(status, 400);
    assert_buf(&out, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
                     "\"message\":\"n: parameter 'n' cannot be translated to Anthropic\"}}");
    chat_error_invalid(&e, "max_tokens", "max_tokens: Field required");
    buf_reset(&out);
    assert_int_equal(F->error_encode(&e, &out, &status), 0);
    assert_buf(&out, "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
                     "\"message\":\"max_tokens: Field required\"}}");
    /* In-stream, with no stream state. */
    memset(&e, 0, sizeof e);
    e.kind = CHAT_ERR_RATE_LIMIT;
    snprintf(e.message, sizeof e.message, "slow");
    buf_reset(&out);
    assert_int_equal(F->stream_error_encode(NULL, &e, &out), 0);
    assert_buf(&out,
               "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\","
               "\"message\":\"slow\"}}\n\n");
    /* The fixture's error event decodes back to the same. */
    rec *r = calloc(1, sizeof *r);
    assert_int_equal(decode_sse(out.data, out.len, 0, rec_emit, r), 0);
    assert_int_equal(r->n, 1);
    assert_int_equal(r->ev[0].error.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(r->ev[0].error.message, "slow");
    free(r);
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_messages_request),
        cmocka_unit_test(test_decode_prompt_cache_request),
        cmocka_unit_test(test_decode_stream_request),
        cmocka_unit_test(test_decode_tool_use_request),
        cmocka_unit_test(test_decode_tool_result_request),
        cmocka_unit_test(test_decode_rich),
        cmocka_unit_test(test_decode_signature_in_id),
        cmocka_unit_test(test_decode_unmapped),
        cmocka_unit_test(test_decode_invalid),
        cmocka_unit_test(test_roundtrip_fixtures),
        cmocka_unit_test(test_encode_fixture_shape),
        cmocka_unit_test(test_encode_from_model),
        cmocka_unit_test(test_encode_refusals),
        cmocka_unit_test(test_path_and_headers),
        cmocka_unit_test(test_stream_decode_basic),
        cmocka_unit_test(test_stream_decode_sdk_basic),
        cmocka_unit_test(test_stream_decode_tool_use),
        cmocka_unit_test(test_stream_decode_error_event),
        cmocka_unit_test(test_stream_decode_cut),
        cmocka_unit_test(test_stream_decode_synthetic),
        cmocka_unit_test(test_stream_decode_callback_stop),
        cmocka_unit_test(test_resp_decode),
        cmocka_unit_test(test_resp_encode_fixtures),
        cmocka_unit_test(test_resp_encode_synthetic),
        cmocka_unit_test(test_stream_encode_exact),
        cmocka_unit_test(test_stream_encode_rules),
        cmocka_unit_test(test_stream_roundtrip),
        cmocka_unit_test(test_error_decode_fixtures),
        cmocka_unit_test(test_error_decode_odd_bodies),
        cmocka_unit_test(test_error_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
