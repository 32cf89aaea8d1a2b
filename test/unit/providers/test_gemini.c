/* test_gemini.c - the Gemini generateContent adapter (providers/gemini.c),
 * checked against the recorded Gemini fixtures: request decode and
 * encode, stream and whole-response decode, the stream and response
 * encoders (exact bytes), errors and refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/buf.h"
#include "providers/chat.h"
#include "providers/sse.h"
#include "chat_test.h"

#define FIX TG_FIXTURES "/providers/gemini/"
#define G (&chat_format_gemini)

static const char SIG_PREFIX[] = "EpwICpkIAXLI2nxlU6gsWZaZHRYkX1orzuM8vSUFwaAt1JRxEC2hJzPAcAu3PWaKz7X";

/* ------------------------------------------------------------ helpers */

static char *read_fixture(const char *rel, size_t *len) { return chat_test_read(FIX, rel, len); }

/* Decodes fixture rel into r (must succeed). */
static void decode_fixture(const char *rel, chat_request *r)
{
    size_t n;
    char *body = read_fixture(rel, &n);
    chat_error err;
    assert_int_equal(chat_request_init(r), 0);
    int rc = G->req_decode(body, n, r, &err);
    if (rc)
        fail_msg("%s: %d %s (%s)", rel, rc, err.message, err.param);
    free(body);
}

/* Decodes a literal body; returns the result, err filled. */
static int decode_str(const char *body, chat_request *r, chat_error *err)
{
    assert_int_equal(chat_request_init(r), 0);
    memset(err, 0, sizeof *err);
    return G->req_decode(body, strlen(body), r, err);
}

static void assert_str(chat_str s, const char *want)
{
    assert_non_null(s.p);
    assert_int_equal(s.len, strlen(want));
    assert_memory_equal(s.p, want, s.len);
}

/* A canonical text dump of a request, to compare two decodes. */
static void dump_req(const chat_request *r, buf *b)
{
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        assert_int_equal(buf_printf(b, "msg role=%d\n", (int)m->role), 0);
        for (size_t k = 0; k < m->nparts; k++) {
            const chat_part *p = &m->parts[k];
            assert_int_equal(buf_printf(b, " part type=%d text=%.*s mt=%.*s data=%.*s id=%.*s name=%.*s "
                                           "args=%.*s sig=%.*s\n",
                                        (int)p->type, (int)p->text.len, p->text.p ? p->text.p : "",
                                        (int)p->media_type.len, p->media_type.p ? p->media_type.p : "",
                                        (int)p->data.len, p->data.p ? p->data.p : "", (int)p->id.len,
                                        p->id.p ? p->id.p : "", (int)p->name.len, p->name.p ? p->name.p : "",
                                        (int)p->args.len, p->args.p ? p->args.p : "", (int)p->signature.len,
                                        p->signature.p ? p->signature.p : ""),
                             0);
        }
    }
    for (size_t i = 0; i < r->ntools; i++) {
        char *params = r->tools[i].parameters
                           ? json_dumps(r->tools[i].parameters, JSON_COMPACT | JSON_SORT_KEYS)
                           : NULL;
        assert_int_equal(buf_printf(b, "tool %s desc=%s params=%s\n", r->tools[i].name.p,
                                    r->tools[i].description.p ? r->tools[i].description.p : "(none)",
                                    params ? params : "(none)"),
                         0);
        free(params);
    }
    char *schema = r->response_schema ? json_dumps(r->response_schema, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    assert_int_equal(buf_printf(b, "choice=%d name=%s max=%" PRId64 " temp=%g top_p=%g top_k=%" PRId64
                                    " seed=%" PRId64 " n=%" PRId64 " pp=%g fp=%g fmt=%d schema=%s think=%" PRId64
                                    " unmapped=%s\n",
                                (int)r->tool_choice, r->tool_choice_name.p ? r->tool_choice_name.p : "",
                                r->max_tokens, r->temperature, r->top_p, r->top_k, r->seed, r->n,
                                r->presence_penalty, r->frequency_penalty, (int)r->resp_format,
                                schema ? schema : "(none)", r->thinking_budget, r->unmapped),
                     0);
    free(schema);
    for (size_t i = 0; i < r->nstop; i++)
        assert_int_equal(buf_printf(b, "stop %s\n", r->stop[i].p), 0);
}

/* Encodes r for model m (must succeed) into out. */
static void encode_ok(const chat_request *r, buf *out)
{
    chat_target t = {"gemini-2.0-flash", 16, false};
    chat_error err;
    int rc = G->req_encode(r, &t, out, &err);
    if (rc)
        fail_msg("encode: %d %s (%s)", rc, err.message, err.param);
}

/* Encoding r must be refused with a 400 naming param; returns the message. */
static void encode_refused(const chat_request *r, const char *param, const char *msg_part)
{
    chat_target t = {"gemini-2.0-flash", 16, false};
    chat_error err;
    buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(G->req_encode(r, &t, &out, &err), -EINVAL);
    assert_int_equal(out.len, 0);
    assert_int_equal(err.status, 400);
    assert_int_equal(err.kind, CHAT_ERR_INVALID_REQUEST);
    assert_string_equal(err.param, param);
    if (msg_part && !strstr(err.message, msg_part))
        fail_msg("message '%s' lacks '%s'", err.message, msg_part);
    buf_free(&out);
}

/* ------------------------------------------------------------ event log */

/* Everything the decoder emitted: a readable log plus a collected answer. */
typedef struct evlog {
    buf log;
    chat_response resp;
    int nusage;
    chat_usage first_usage;
} evlog;

static void evlog_init(evlog *l)
{
    buf_init(&l->log, 1 << 22);
    chat_response_init(&l->resp);
    l->nusage = 0;
}

static void evlog_free(evlog *l)
{
    buf_free(&l->log);
    chat_response_free(&l->resp);
}

static int log_emit(void *ud, const chat_event *ev)
{
    evlog *l = ud;
    buf *b = &l->log;
    int rc = 0;
    switch (ev->type) {
    case CHAT_EV_START:
        rc = buf_printf(b, "START id=%.*s model=%.*s\n", (int)ev->id.len, ev->id.p, (int)ev->model.len,
                        ev->model.p);
        break;
    case CHAT_EV_TEXT:
        rc = buf_printf(b, "TEXT %.*s\n", (int)ev->text.len, ev->text.p);
        break;
    case CHAT_EV_THINKING:
        rc = buf_printf(b, "THINKING %.*s\n", (int)ev->text.len, ev->text.p);
        break;
    case CHAT_EV_TOOL_START:
        rc = buf_printf(b, "TOOL_START %d id=%.*s name=%.*s sig=%zu\n", ev->tool, (int)ev->id.len, ev->id.p,
                        (int)ev->text.len, ev->text.p, ev->signature.len);
        break;
    case CHAT_EV_TOOL_ARGS:
        rc = buf_printf(b, "TOOL_ARGS %d %.*s\n", ev->tool, (int)ev->text.len, ev->text.p);
        break;
    case CHAT_EV_FINISH:
        rc = buf_printf(b, "FINISH %d %.*s\n", (int)ev->finish, (int)ev->native.len, ev->native.p);
        break;
    case CHAT_EV_USAGE:
        if (l->nusage++ == 0)
            l->first_usage = ev->usage;
        rc = buf_printf(b, "USAGE in=%" PRId64 " out=%" PRId64 " cr=%" PRId64 " cw=%" PRId64 " rs=%" PRId64 "\n",
                        ev->usage.input, ev->usage.output, ev->usage.cache_read, ev->usage.cache_write,
                        ev->usage.reasoning);
        break;
    case CHAT_EV_ERROR:
        rc = buf_printf(b, "ERROR %d kind=%d %s\n", ev->error->status, (int)ev->error->kind,
                        ev->error->message);
        break;
    case CHAT_EV_END:
        rc = buf_printf(b, "END\n");
        break;
    }
    assert_int_equal(rc, 0);
    return chat_response_collect(&l->resp, ev);
}

/* Stream-decodes n bytes fed in pieces of step bytes (0 = at once). */
static int stream_decode(const char *s, size_t n, size_t step, evlog *l)
{
    return chat_test_decode_sse(G, s, n, step, log_emit, l);
}

static void stream_decode_fixture(const char *rel, evlog *l)
{
    size_t n;
    char *s = read_fixture(rel, &n);
    evlog_init(l);
    assert_int_equal(stream_decode(s, n, 0, l), 0);
    /* Byte by byte gives the same events. */
    evlog b;
    evlog_init(&b);
    assert_int_equal(stream_decode(s, n, 1, &b), 0);
    assert_string_equal(l->log.data, b.log.data);
    evlog_free(&b);
    free(s);
}

/* ------------------------------------------------------------ request decode */

static void test_req_generate_content(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("generate_content_request.json", &r);
    assert_int_equal(r.model.len, 0);
    assert_false(r.stream);
    assert_int_equal(r.nmsgs, 2);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_int_equal(r.msgs[0].nparts, 1);
    assert_str(r.msgs[0].parts[0].text, "You are a helpful assistant.");
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_USER);
    assert_int_equal(r.msgs[1].parts[0].type, CHAT_PART_TEXT);
    assert_str(r.msgs[1].parts[0].text, "What is the capital of France?");
    assert_string_equal(r.unmapped, "");
    assert_int_equal(r.max_tokens, -1);
    assert_true(isnan(r.temperature));
    assert_int_equal(r.ntools, 0);
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_UNSET);
    chat_request_free(&r);

    decode_fixture("stream_generate_content_system_instruction_request.json", &r);
    assert_int_equal(r.nmsgs, 2);
    assert_str(r.msgs[0].parts[0].text, "You are a helpful chatbot.");
    assert_true(r.temperature == 0.0);
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);

    decode_fixture("stream_generate_content_request.json", &r);
    assert_int_equal(r.nmsgs, 1);
    assert_str(r.msgs[0].parts[0].text, "Count from 1 to 30, one number per line, digits only.");
    assert_string_equal(r.unmapped, ""); /* responseModalities ["TEXT"] is ignored */
    chat_request_free(&r);
}

static void test_req_function_call(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("function_call_request.json", &r);
    assert_int_equal(r.ntools, 2);
    assert_str(r.tools[0].name, "get_user_country");
    assert_str(r.tools[0].description, "");
    assert_str(r.tools[1].name, "final_result");
    assert_str(r.tools[1].description, "The final response which ends this conversation");
    /* OpenAPI-subset types become JSON Schema types. */
    char *p = json_dumps(r.tools[1].parameters, JSON_COMPACT);
    assert_string_equal(p, "{\"properties\":{\"city\":{\"type\":\"string\"},\"country\":{\"type\":\"string\"}},"
                           "\"required\":[\"city\",\"country\"],\"type\":\"object\"}");
    free(p);
    /* ANY with two allowed names: some tool, and a subset the model cannot hold. */
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_REQUIRED);
    assert_string_equal(r.unmapped, "toolConfig.functionCallingConfig.allowedFunctionNames");
    encode_refused(&r, "toolConfig.functionCallingConfig.allowedFunctionNames", "cannot be translated to Gemini");
    chat_request_free(&r);

    /* ANY with exactly one name is NAMED. */
    chat_error err;
    assert_int_equal(decode_str("{\"contents\":[{\"parts\":[{\"text\":\"hi\"}]}],"
                                "\"tools\":[{\"functionDeclarations\":[{\"name\":\"f\"}]}],"
                                "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\","
                                "\"allowedFunctionNames\":[\"f\"]}}}",
                                &r, &err),
                     0);
    assert_int_equal(r.tool_choice, CHAT_TOOL_CHOICE_NAMED);
    assert_str(r.tool_choice_name, "f");
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_USER); /* role absent = user */
    assert_null(r.tools[0].parameters);
    assert_null(r.tools[0].description.p);
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);

    static const struct {
        const char *mode;
        chat_tool_choice want;
    } modes[] = {{"AUTO", CHAT_TOOL_CHOICE_AUTO},
                 {"NONE", CHAT_TOOL_CHOICE_NONE},
                 {"VALIDATED", CHAT_TOOL_CHOICE_AUTO},
                 {"ANY", CHAT_TOOL_CHOICE_REQUIRED}};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"contents\":[],\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"%s\"}}}", modes[i].mode);
        assert_int_equal(decode_str(body, &r, &err), 0);
        assert_int_equal(r.tool_choice, modes[i].want);
        chat_request_free(&r);
    }
}

static void test_req_function_response(void **state)
{
    (void)state;
    chat_request r;
    decode_fixture("function_response_request.json", &r);
    assert_int_equal(r.nmsgs, 3);
    assert_int_equal(r.msgs[0].role, CHAT_ROLE_USER);
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_ASSISTANT);
    const chat_part *c = &r.msgs[1].parts[0];
    assert_int_equal(c->type, CHAT_PART_TOOL_CALL);
    assert_str(c->id, "pyd_ai_3fa5644dae1d4aad997ae39c70006fbd");
    assert_str(c->name, "get_user_country");
    assert_str(c->args, "{}");
    assert_null(c->signature.p);
    assert_int_equal(r.msgs[2].role, CHAT_ROLE_TOOL);
    assert_int_equal(r.msgs[2].nparts, 1);
    const chat_part *t = &r.msgs[2].parts[0];
    assert_int_equal(t->type, CHAT_PART_TOOL_RESULT);
    assert_str(t->id, "pyd_ai_3fa5644dae1d4aad997ae39c70006fbd");
    assert_str(t->name, "get_user_country");
    assert_str(t->text, "{\"return_value\":\"Mexico\"}");
    chat_request_free(&r);

    decode_fixture("stream_after_function_response_request.json", &r);
    assert_int_equal(r.nmsgs, 3);
    c = &r.msgs[1].parts[0];
    assert_str(c->name, "get_country");
    assert_non_null(c->signature.p);
    assert_int_equal(c->signature.len, 1408);
    assert_memory_equal(c->signature.p, "EpwICpkIAXLI2nxlU6gsWZaZHRYkX1orzuM8vSUFwaAt1JRxEC2hJzPAcAu3PWaKz7X-",
                        68);
    assert_int_equal(r.ntools, 1);
    /* parameters_json_schema (snake_case spelling) is kept as is. */
    char *p = json_dumps(r.tools[0].parameters, JSON_COMPACT);
    assert_string_equal(p, "{\"additionalProperties\":false,\"properties\":{},\"type\":\"object\"}");
    free(p);
    assert_string_equal(r.unmapped, "");
    chat_request_free(&r);

    /* No id: the latest earlier call with that name answers; {"result": s} is s;
     * the user's other parts follow in a USER message. */
    chat_error err;
    assert_int_equal(
        decode_str("{\"contents\":["
                   "{\"role\":\"user\",\"parts\":[{\"text\":\"go\"}]},"
                   "{\"role\":\"model\",\"parts\":[{\"thought\":true,\"text\":\"hmm\"},"
                   "{\"functionCall\":{\"name\":\"f\",\"id\":\"c1\",\"args\":{\"x\":1}}},"
                   "{\"functionCall\":{\"name\":\"f\",\"id\":\"c2\"}},{\"functionCall\":{\"name\":\"g\"}}]},"
                   "{\"role\":\"user\",\"parts\":[{\"text\":\"and then\"},"
                   "{\"functionResponse\":{\"name\":\"f\",\"response\":{\"result\":\"ok\"}}},"
                   "{\"function_response\":{\"name\":\"g\",\"response\":{\"result\":\"a\",\"b\":2}}},"
                   "{\"functionResponse\":{\"name\":\"h\",\"response\":{}}}]}]}",
                   &r, &err),
        0);
    assert_int_equal(r.nmsgs, 4);
    assert_int_equal(r.msgs[1].role, CHAT_ROLE_ASSISTANT);
    assert_int_equal(r.msgs[1].nparts, 4);
    assert_int_equal(r.msgs[1].parts[0].type, CHAT_PART_THINKING);
    assert_str(r.msgs[1].parts[0].text, "hmm");
    assert_str(r.msgs[1].parts[1].args, "{\"x\":1}");
    assert_str(r.msgs[1].parts[2].args, "{}");
    assert_str(r.msgs[1].parts[3].id, "");
    assert_int_equal(r.msgs[2].role, CHAT_ROLE_TOOL);
    assert_int_equal(r.msgs[2].nparts, 3);
    assert_str(r.msgs[2].parts[0].id, "c2");
    assert_str(r.msgs[2].parts[0].text, "ok");
    assert_str(r.msgs[2].parts[1].name, "g");
    assert_str(r.msgs[2].parts[1].id, "");
    assert_str(r.msgs[2].parts[1].text, "{\"result\":\"a\",\"b\":2}");
    assert_null(r.msgs[2].parts[2].id.p);
    assert_int_equal(r.msgs[3].role, CHAT_ROLE_USER);
    assert_str(r.msgs[3].parts[0].text, "and then");
    chat_request_free(&r);
}

static void test_req_generation_config(void **state)
{
    (void)state;
    chat_request r;
    chat_error err;
    assert_int_equal(
        decode_str("{\"contents\":[{\"parts\":[{\"text\":\"x\"},"
                   "{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"iVBORw0K\"}},"
                   "{\"fileData\":{\"mimeType\":\"image/jpeg\",\"fileUri\":\"https://example.com/a.jpg\"}}]}],"
                   "\"generationConfig\":{\"maxOutputTokens\":100,\"temperature\":0.5,\"topP\":0.9,\"topK\":40,"
                   "\"stopSequences\":[\"END\",\"STOP\"],\"candidateCount\":1,\"seed\":7,"
                   "\"presencePenalty\":0.25,\"frequency_penalty\":-0.5,"
                   "\"responseMimeType\":\"application/json\","
                   "\"responseSchema\":{\"type\":\"OBJECT\",\"properties\":{\"a\":{\"type\":\"INTEGER\","
                   "\"nullable\":true}}},"
                   "\"thinkingConfig\":{\"thinkingBudget\":1024,\"includeThoughts\":true}},"
                   "\"safetySettings\":[{\"category\":\"HARM_CATEGORY_HARASSMENT\",\"threshold\":\"BLOCK_NONE\"}],"
                   "\"labels\":{\"a\":\"b\"}}",
                   &r, &err),
        0);
    assert_int_equal(r.max_tokens, 100);
    assert_true(r.temperature == 0.5);
    assert_true(r.top_p == 0.9);
    assert_int_equal(r.top_k, 40);
    assert_int_equal(r.nstop, 2);
    assert_str(r.stop[1], "STOP");
    assert_int_equal(r.n, 1);
    assert_int_equal(r.seed, 7);
    assert_true(r.presence_penalty == 0.25);
    assert_true(r.frequency_penalty == -0.5);
    assert_int_equal(r.resp_format, CHAT_RESP_JSON_SCHEMA);
    char *s = json_dumps(r.response_schema, JSON_COMPACT);
    assert_string_equal(s, "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":[\"integer\",\"null\"]}}}");
    free(s);
    assert_int_equal(r.thinking_budget, 1024);
    assert_string_equal(r.unmapped, "");
    assert_int_equal(r.msgs[0].nparts, 3);
    assert_int_equal(r.msgs[0].parts[1].type, CHAT_PART_IMAGE);
    assert_str(r.msgs[0].parts[1].media_type, "image/png");
    assert_str(r.msgs[0].parts[1].data, "iVBORw0K");
    assert_null(r.msgs[0].parts[1].url.p);
    assert_str(r.msgs[0].parts[2].url, "https://example.com/a.jpg");
    assert_null(r.msgs[0].parts[2].data.p);
    chat_request_free(&r);

    assert_int_equal(decode_str("{\"contents\":[],\"generationConfig\":{\"responseMimeType\":\"application/json\"}}",
                                &r, &err),
                     0);
    assert_int_equal(r.resp_format, CHAT_RESP_JSON_OBJECT);
    assert_null(r.response_schema);
    chat_request_free(&r);
}

static void test_req_unmapped(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *unmapped;
    } cases[] = {
        {"{\"contents\":[{\"role\":\"model\",\"parts\":[{\"executableCode\":{\"language\":\"PYTHON\",\"code\":\"1\"}}]}]}",
         "contents[0].parts[0].executableCode"},
        {"{\"contents\":[{\"parts\":[{\"inlineData\":{\"mimeType\":\"audio/wav\",\"data\":\"AAAA\"}}]}]}",
         "contents[0].parts[0].inlineData"},
        {"{\"contents\":[],\"tools\":[{\"googleSearch\":{}}]}", "tools[0].googleSearch"},
        {"{\"contents\":[],\"tools\":[{\"functionDeclarations\":[]},{\"codeExecution\":{}}]}",
         "tools[1].codeExecution"},
        {"{\"contents\":[],\"cachedContent\":\"cachedContents/abc\"}", "cachedContent"},
        {"{\"contents\":[],\"somethingNew\":1}", "somethingNew"},
        {"{\"contents\":[],\"generationConfig\":{\"responseLogprobs\":true}}", "generationConfig.responseLogprobs"},
        {"{\"contents\":[],\"generationConfig\":{\"responseModalities\":[\"TEXT\",\"IMAGE\"]}}",
         "generationConfig.responseModalities"},
        {"{\"contents\":[],\"generationConfig\":{\"responseMimeType\":\"text/x.enum\"}}",
         "generationConfig.responseMimeType"},
        {"{\"contents\":[],\"generationConfig\":{\"thinkingConfig\":{\"thinkingLevel\":\"low\"}}}",
         "generationConfig.thinkingConfig.thinkingLevel"},
        {"{\"contents\":[],\"systemInstruction\":{\"parts\":[{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"A\"}}]}}",
         "systemInstruction.parts[0]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_request r;
        chat_error err;
        int rc = decode_str(cases[i].body, &r, &err);
        if (rc)
            fail_msg("case %zu: %d %s", i, rc, err.message);
        assert_string_equal(r.unmapped, cases[i].unmapped);
        encode_refused(&r, cases[i].unmapped, "cannot be translated to Gemini");
        chat_request_free(&r);
    }
}

static void test_req_invalid(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        const char *param;
    } cases[] = {
        {"{\"contents\":[{\"role\":\"assistant\",\"parts\":[{\"text\":\"x\"}]}]}", "contents[0].role"},
        {"{\"contents\":[{\"parts\":\"x\"}]}", "contents[0].parts"},
        {"{\"contents\":[{\"parts\":[]}]}", "contents[0].parts"},
        {"{\"contents\":[{\"parts\":[{\"text\":1}]}]}", "contents[0].parts[0].text"},
        {"{\"contents\":[{\"parts\":[{}]}]}", "contents[0].parts[0]"},
        {"{\"contents\":[{\"parts\":[{\"text\":\"a\",\"functionCall\":{\"name\":\"f\"}}]}]}", "contents[0].parts[0]"},
        {"{\"contents\":[{\"parts\":[{\"functionCall\":{\"name\":\"f\"}}]}]}", "contents[0].parts[0].functionCall"},
        {"{\"contents\":[{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":[]}}]}]}",
         "contents[0].parts[0].functionCall.args"},
        {"{\"contents\":[{\"parts\":[{\"functionResponse\":{\"name\":\"f\"}}]}]}",
         "contents[0].parts[0].functionResponse.response"},
        {"{\"contents\":[],\"generationConfig\":{\"temperature\":\"hot\"}}", "generationConfig.temperature"},
        {"{\"contents\":[],\"generationConfig\":{\"maxOutputTokens\":-5}}", "generationConfig.maxOutputTokens"},
        {"{\"contents\":[],\"generationConfig\":{\"responseSchema\":{\"type\":\"OBJECT\"}}}",
         "generationConfig.responseMimeType"},
        {"{\"contents\":[],\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"SOMETIMES\"}}}",
         "toolConfig.functionCallingConfig.mode"},
        {"{\"contents\":[],\"tools\":[{\"functionDeclarations\":[{\"description\":\"no name\"}]}]}",
         "tools[0].functionDeclarations[0].name"},
        {"{\"generationConfig\":{}}", "contents"},
        {"[1,2]", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_request r;
        chat_error err;
        assert_int_equal(decode_str(cases[i].body, &r, &err), -EINVAL);
        assert_int_equal(err.status, 400);
        if (strcmp(err.param, cases[i].param) != 0)
            fail_msg("case %zu: param '%s', want '%s' (%s)", i, err.param, cases[i].param, err.message);
        chat_request_free(&r);
    }
    /* Not JSON, duplicate keys. */
    chat_request r;
    chat_error err;
    assert_int_equal(decode_str("{\"contents\":", &r, &err), -EINVAL);
    assert_int_equal(err.status, 400);
    chat_request_free(&r);
    assert_int_equal(decode_str("{\"contents\":[],\"contents\":[]}", &r, &err), -EINVAL);
    chat_request_free(&r);
}

/* ------------------------------------------------------------ request encode */

/* Fixture -> decode -> encode -> decode gives the same request. */
static void test_req_round_trip(void **state)
{
    (void)state;
    static const char *const fixtures[] = {
        "generate_content_request.json",
        "stream_generate_content_request.json",
        "stream_generate_content_system_instruction_request.json",
        "function_response_request.json",
        "stream_function_call_request.json",
        "stream_after_function_response_request.json",
    };
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        chat_request a, b;
        buf enc, da, db;
        buf_init(&enc, 1 << 20);
        buf_init(&da, 1 << 20);
        buf_init(&db, 1 << 20);
        decode_fixture(fixtures[i], &a);
        if (a.unmapped[0]) { /* function_response_request has ANY + two names */
            a.unmapped[0] = '\0';
            a.tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
        }
        encode_ok(&a, &enc);
        assert_int_equal(chat_request_init(&b), 0);
        chat_error err;
        if (G->req_decode(enc.data, enc.len, &b, &err))
            fail_msg("%s: re-decode: %s\n%s", fixtures[i], err.message, enc.data);
        dump_req(&a, &da);
        dump_req(&b, &db);
        assert_string_equal(da.data, db.data);
        chat_request_free(&a);
        chat_request_free(&b);
        buf_free(&enc);
        buf_free(&da);
        buf_free(&db);
    }
}

/* Adds a part with text to m. */
static chat_part *add(chat_request *r, chat_msg *m, chat_part_type t, const char *text)
{
    chat_part *p = chat_msg_add_part(r, m, t);
    assert_non_null(p);
    if (text)
        assert_int_equal(chat_strdup(r, text, strlen(text), &p->text), 0);
    return p;
}

static void set(chat_request *r, chat_str *s, const char *v)
{
    assert_int_equal(chat_strdup(r, v, strlen(v), s), 0);
}

/* A request as another format's decoder would build it. */
static void build_request(chat_request *r)
{
    assert_int_equal(chat_request_init(r), 0);
    set(r, &r->model, "gpt-4o");
    chat_msg *m = chat_add_msg(r, CHAT_ROLE_SYSTEM);
    add(r, m, CHAT_PART_TEXT, "Be brief.");
    m = chat_add_msg(r, CHAT_ROLE_USER);
    add(r, m, CHAT_PART_TEXT, "Weather in \"Paris\"?");
    chat_part *p = add(r, m, CHAT_PART_IMAGE, NULL);
    set(r, &p->media_type, "image/png");
    set(r, &p->data, "iVBORw0KGgo=");
    set(r, &p->detail, "low");
    m = chat_add_msg(r, CHAT_ROLE_ASSISTANT);
    p = add(r, m, CHAT_PART_THINKING, "they want weather");
    set(r, &p->signature, "anthropic-sig");
    add(r, m, CHAT_PART_TEXT, "Checking.");
    p = add(r, m, CHAT_PART_TOOL_CALL, NULL);
    set(r, &p->id, "call_1");
    set(r, &p->name, "get_weather");
    set(r, &p->args, "{\"city\": \"Paris\"}");
    set(r, &p->signature, "c2lnMQ==");
    p = add(r, m, CHAT_PART_TOOL_CALL, NULL);
    set(r, &p->id, "call_2");
    set(r, &p->name, "get_time");
    set(r, &p->args, "");
    m = chat_add_msg(r, CHAT_ROLE_TOOL);
    p = add(r, m, CHAT_PART_TOOL_RESULT, "{\"temp\":21}");
    set(r, &p->id, "call_1");
    set(r, &p->name, "get_weather");
    m = chat_add_msg(r, CHAT_ROLE_TOOL);
    p = add(r, m, CHAT_PART_TOOL_RESULT, "noon");
    set(r, &p->id, "call_2"); /* name looked up from the call */
    m = chat_add_msg(r, CHAT_ROLE_USER);
    add(r, m, CHAT_PART_TEXT, "Thanks");
    chat_tool *t = chat_add_tool(r);
    assert_non_null(t);
    set(r, &t->name, "get_weather");
    set(r, &t->description, "Weather of a city");
    t->parameters = json_pack("{s:s,s:{s:{s:s}}}", "type", "object", "properties", "city", "type", "string");
    t->strict = true;
    t = chat_add_tool(r);
    set(r, &t->name, "get_time");
    r->tool_choice = CHAT_TOOL_CHOICE_NAMED;
    set(r, &r->tool_choice_name, "get_weather");
    r->parallel_tool_calls = 0;
    r->max_tokens = 256;
    r->temperature = 0.7;
    r->top_p = 0.95;
    r->top_k = 20;
    assert_int_equal(chat_add_stop(r, "\n\n", 2), 0);
    r->seed = 42;
    r->presence_penalty = 0.1;
    r->frequency_penalty = 0.2;
    r->resp_format = CHAT_RESP_JSON_SCHEMA;
    r->response_schema = json_pack("{s:s}", "type", "object");
    r->thinking_budget = 512;
    set(r, &r->user, "user-1");
    r->cache_system = true;
}

static void test_req_encode_exact(void **state)
{
    (void)state;
    chat_request r;
    build_request(&r);
    buf out;
    buf_init(&out, 1 << 20);
    encode_ok(&r, &out);
    assert_string_equal(
        out.data,
        "{\"contents\":["
        "{\"role\":\"user\",\"parts\":[{\"text\":\"Weather in \\\"Paris\\\"?\"},"
        "{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]},"
        "{\"role\":\"model\",\"parts\":[{\"text\":\"Checking.\"},"
        "{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"},\"id\":\"call_1\"},"
        "\"thoughtSignature\":\"c2lnMQ==\"},"
        "{\"functionCall\":{\"name\":\"get_time\",\"args\":{},\"id\":\"call_2\"}}]},"
        "{\"role\":\"user\",\"parts\":["
        "{\"functionResponse\":{\"name\":\"get_weather\",\"id\":\"call_1\",\"response\":{\"temp\":21}}},"
        "{\"functionResponse\":{\"name\":\"get_time\",\"id\":\"call_2\",\"response\":{\"result\":\"noon\"}}},"
        "{\"text\":\"Thanks\"}]}],"
        "\"systemInstruction\":{\"parts\":[{\"text\":\"Be brief.\"}]},"
        "\"tools\":[{\"functionDeclarations\":["
        "{\"name\":\"get_weather\",\"description\":\"Weather of a city\","
        "\"parametersJsonSchema\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}},"
        "{\"name\":\"get_time\"}]}],"
        "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\",\"allowedFunctionNames\":[\"get_weather\"]}},"
        "\"generationConfig\":{\"maxOutputTokens\":256,\"temperature\":0.7,\"topP\":0.95,\"topK\":20,"
        "\"stopSequences\":[\"\\n\\n\"],\"seed\":42,\"presencePenalty\":0.1,\"frequencyPenalty\":0.2,"
        "\"responseMimeType\":\"application/json\",\"responseJsonSchema\":{\"type\":\"object\"},"
        "\"thinkingConfig\":{\"thinkingBudget\":512}}}");

    /* Our own decoder reads it back (thinking dropped, names found). */
    chat_request b;
    chat_error err;
    assert_int_equal(chat_request_init(&b), 0);
    assert_int_equal(G->req_decode(out.data, out.len, &b, &err), 0);
    assert_int_equal(b.nmsgs, 5);
    assert_int_equal(b.msgs[0].role, CHAT_ROLE_SYSTEM);
    assert_int_equal(b.msgs[2].role, CHAT_ROLE_ASSISTANT);
    assert_int_equal(b.msgs[2].nparts, 3);
    assert_str(b.msgs[2].parts[1].signature, "c2lnMQ==");
    assert_int_equal(b.msgs[3].role, CHAT_ROLE_TOOL);
    assert_int_equal(b.msgs[3].nparts, 2);
    assert_str(b.msgs[3].parts[1].name, "get_time");
    assert_str(b.msgs[3].parts[1].text, "noon");
    assert_int_equal(b.msgs[4].role, CHAT_ROLE_USER);
    assert_int_equal(b.tool_choice, CHAT_TOOL_CHOICE_NAMED);
    assert_int_equal(b.thinking_budget, 512);
    chat_request_free(&b);

    /* Tool choice modes and an empty config. */
    buf_free(&out);
    r.tool_choice = CHAT_TOOL_CHOICE_REQUIRED;
    size_t ntools = r.ntools;
    r.ntools = 0;
    r.nmsgs = 2;
    r.max_tokens = r.top_k = r.seed = r.thinking_budget = -1;
    r.temperature = r.top_p = r.presence_penalty = r.frequency_penalty = NAN;
    r.nstop = 0;
    r.resp_format = CHAT_RESP_TEXT;
    encode_ok(&r, &out);
    assert_string_equal(out.data, "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"Weather in \\\"Paris\\\"?\"},"
                                  "{\"inlineData\":{\"mimeType\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}}]}],"
                                  "\"systemInstruction\":{\"parts\":[{\"text\":\"Be brief.\"}]},"
                                  "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\"}}}");
    buf_free(&out);
    r.tool_choice = CHAT_TOOL_CHOICE_NONE;
    encode_ok(&r, &out);
    assert_non_null(strstr(out.data, "{\"functionCallingConfig\":{\"mode\":\"NONE\"}}"));
    buf_free(&out);
    r.tool_choice = CHAT_TOOL_CHOICE_AUTO;
    encode_ok(&r, &out);
    assert_non_null(strstr(out.data, "{\"functionCallingConfig\":{\"mode\":\"AUTO\"}}"));
    buf_free(&out);
    r.ntools = ntools; /* so that the parameters are released */
    chat_request_free(&r);
}

static void test_req_encode_refusals(void **state)
{
    (void)state;
    chat_request r;
    build_request(&r);
    r.n = 2;
    encode_refused(&r, "n", "cannot be translated to Gemini");
    r.n = 1;
    /* An image by URL. */
    chat_part *img = &r.msgs[1].parts[1];
    chat_str data = img->data;
    img->data = (chat_str){NULL, 0};
    set(&r, &img->url, "https://example.com/cat.png");
    encode_refused(&r, "messages[1].content[1]", "inline base64");
    img->data = data;
    /* Arguments that are not an object. */
    chat_part *call = &r.msgs[2].parts[2];
    set(&r, &call->args, "[1,2]");
    encode_refused(&r, "messages[2].content[2]", "not a JSON object");
    set(&r, &call->args, "{\"city\":\"Paris\"}");
    /* A tool result whose call is unknown and has no name. */
    chat_part *res = &r.msgs[4].parts[0];
    set(&r, &res->id, "call_unknown");
    encode_refused(&r, "messages[4].content[0]", "answers no known tool call");
    set(&r, &res->id, "call_2");
    /* Unmapped. */
    chat_set_unmapped(&r, "logprobs");
    encode_refused(&r, "logprobs", "parameter 'logprobs' cannot be translated to Gemini");
    chat_request_free(&r);
}

static void test_req_path_auth(void **state)
{
    (void)state;
    buf out;
    buf_init(&out, 4096);
    chat_target t = {"models/gemini-2.0-flash", 23, true};
    assert_int_equal(G->req_path(&t, &out), 0);
    assert_string_equal(out.data, "/models/gemini-2.0-flash:streamGenerateContent?alt=sse");
    buf_reset(&out);
    chat_target t2 = {"gemini-2.5-pro", 14, false};
    assert_int_equal(G->req_path(&t2, &out), 0);
    assert_string_equal(out.data, "/models/gemini-2.5-pro:generateContent");
    buf_reset(&out);
    chat_target t3 = {"a b/c?d:\xc3\xa9", 10, false};
    assert_int_equal(G->req_path(&t3, &out), 0);
    assert_string_equal(out.data, "/models/a%20b%2Fc%3Fd%3A%C3%A9:generateContent");
    buf_reset(&out);
    assert_int_equal(G->req_auth_headers("AIzaKEY", &out), 0);
    assert_string_equal(out.data, "x-goog-api-key: AIzaKEY\r\n");
    buf_reset(&out);
    assert_int_equal(G->req_auth_headers(NULL, &out), 0);
    assert_int_equal(out.len, 0);
    assert_int_equal(G->req_auth_headers("bad\r\nX: y", &out), -EINVAL);
    assert_int_equal(out.len, 0);
    buf small;
    buf_init(&small, 10);
    assert_int_equal(G->req_path(&t2, &small), -E2BIG);
    assert_int_equal(small.len, 0);
    buf_free(&small);
    buf_free(&out);
    assert_string_equal(G->name, "gemini");
    assert_int_equal(G->id, CHAT_FMT_GEMINI);
}

/* ------------------------------------------------------------ answers decode */

static void test_stream_generate_content(void **state)
{
    (void)state;
    evlog l, crlf;
    stream_decode_fixture("stream_generate_content.sse", &l);
    stream_decode_fixture("stream_generate_content.wire_crlf.sse", &crlf);
    assert_string_equal(l.log.data, crlf.log.data);
    assert_string_equal(l.log.data,
                        "START id=ru1garvBEoOiqtsP2fznmQw model=gemini-2.5-flash\n"
                        "TEXT 1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n1\n"
                        "USAGE in=18 out=66 cr=-1 cw=-1 rs=35\n"
                        "TEXT 4\n15\n16\n17\n18\n19\n20\n21\n22\n23\n24\n25\n26\n27\n28\n29\n3\n"
                        "USAGE in=18 out=114 cr=-1 cw=-1 rs=35\n"
                        "TEXT 0\n"
                        "FINISH 1 STOP\n"
                        "USAGE in=18 out=115 cr=-1 cw=-1 rs=35\n"
                        "END\n");
    /* README: 18 + 80 + 35 (thoughts) = 133 total. */
    assert_int_equal(l.resp.usage.input, 18);
    assert_int_equal(l.resp.usage.output, 80 + 35);
    assert_int_equal(l.resp.usage.reasoning, 35);
    assert_int_equal(l.resp.usage.input + l.resp.usage.output, 133);
    assert_int_equal(l.resp.finish, CHAT_FINISH_STOP);
    assert_string_equal(l.resp.text.data, "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n17\n18\n19\n20\n"
                                          "21\n22\n23\n24\n25\n26\n27\n28\n29\n30");
    assert_true(l.resp.ended);
    evlog_free(&l);
    evlog_free(&crlf);
}

static void test_stream_function_call(void **state)
{
    (void)state;
    evlog l;
    stream_decode_fixture("stream_function_call.sse", &l);
    assert_string_equal(l.log.data, "START id=QUVVadTSNJ6_qtsPvN7J8Q0 model=gemini-3-pro-preview\n"
                                    "TOOL_START 0 id= name=get_country sig=1408\n"
                                    "TOOL_ARGS 0 {}\n"
                                    "USAGE in=29 out=212 cr=-1 cw=-1 rs=202\n"
                                    "FINISH 4 STOP\n"
                                    "USAGE in=29 out=212 cr=-1 cw=-1 rs=202\n"
                                    "END\n");
    assert_int_equal(l.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_string_equal(l.resp.native, "STOP");
    assert_int_equal(l.resp.ncalls, 1);
    assert_string_equal(l.resp.calls[0].name.data, "get_country");
    assert_string_equal(l.resp.calls[0].args.data, "{}");
    assert_int_equal(l.resp.calls[0].id.len, 0);
    assert_memory_equal(l.resp.calls[0].signature.data, SIG_PREFIX, sizeof SIG_PREFIX - 1);
    assert_int_equal(l.resp.calls[0].signature.data[sizeof SIG_PREFIX - 1], '+'); /* standard base64 */
    assert_int_equal(l.resp.text.len, 0);
    evlog_free(&l);
}

static void test_stream_other_fixtures(void **state)
{
    (void)state;
    evlog l;
    stream_decode_fixture("stream_generate_content_system_instruction.sse", &l);
    /* Early chunks have no candidatesTokenCount: 0 output; prompt 15 -> 13. */
    assert_int_equal(l.nusage, 3);
    assert_int_equal(l.first_usage.input, 15);
    assert_int_equal(l.first_usage.output, 0);
    assert_int_equal(l.first_usage.reasoning, -1);
    assert_int_equal(l.resp.usage.input, 13);
    assert_int_equal(l.resp.usage.output, 8);
    assert_int_equal(l.resp.usage.reasoning, -1);
    assert_string_equal(l.resp.text.data, "The capital of France is Paris.\n");
    assert_string_equal(l.resp.id.data, "w1peaMz6INOvnvgPgYfPiQY");
    assert_string_equal(l.resp.model.data, "gemini-2.0-flash-exp");
    assert_int_equal(l.resp.finish, CHAT_FINISH_STOP);
    evlog_free(&l);

    stream_decode_fixture("stream_after_function_response.sse", &l);
    assert_string_equal(l.resp.text.data, "The capital of Mexico is Mexico City.");
    assert_int_equal(l.first_usage.input, 55);
    assert_int_equal(l.resp.usage.input, 257);
    assert_int_equal(l.resp.usage.output, 8);
    assert_int_equal(l.resp.finish, CHAT_FINISH_STOP);
    assert_int_equal(l.resp.ncalls, 0);
    evlog_free(&l);
}

static void test_stream_synthetic(void **state)
{
    (void)state;
    evlog l;
    evlog_init(&l);
    const char *s =
        ": keep-alive\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"plan\",\"thought\":true},"
        "{\"functionCall\":{\"name\":\"a\",\"args\":{\"x\":[1,2]},\"id\":\"c-1\"}},"
        "{\"functionCall\":{\"name\":\"b\"}}],\"role\":\"model\"},\"finishReason\":\"MAX_TOKENS\"}],"
        "\"usageMetadata\":{\"promptTokenCount\":10,\"toolUsePromptTokenCount\":4,\"candidatesTokenCount\":3,"
        "\"cachedContentTokenCount\":6},\"responseId\":\"r1\",\"futureField\":{}}\r\n\r\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), 0);
    assert_string_equal(l.log.data, "START id=r1 model=\n"
                                    "THINKING plan\n"
                                    "TOOL_START 0 id=c-1 name=a sig=0\n"
                                    "TOOL_ARGS 0 {\"x\":[1,2]}\n"
                                    "TOOL_START 1 id= name=b sig=0\n"
                                    "TOOL_ARGS 1 {}\n"
                                    "FINISH 3 MAX_TOKENS\n"
                                    "USAGE in=14 out=3 cr=6 cw=-1 rs=-1\n"
                                    "END\n");
    evlog_free(&l);

    static const struct {
        const char *reason;
        chat_finish want;
    } reasons[] = {
        {"STOP", CHAT_FINISH_STOP},
        {"FINISH_REASON_UNSPECIFIED", CHAT_FINISH_STOP},
        {"SAFETY", CHAT_FINISH_CONTENT_FILTER},
        {"RECITATION", CHAT_FINISH_CONTENT_FILTER},
        {"PROHIBITED_CONTENT", CHAT_FINISH_CONTENT_FILTER},
        {"SPII", CHAT_FINISH_CONTENT_FILTER},
        {"MALFORMED_FUNCTION_CALL", CHAT_FINISH_OTHER},
        {"OTHER", CHAT_FINISH_OTHER},
    };
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++) {
        char body[256];
        snprintf(body, sizeof body,
                 "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]},\"finishReason\":\"%s\"}]}\n\n",
                 reasons[i].reason);
        evlog_init(&l);
        assert_int_equal(stream_decode(body, strlen(body), 0, &l), 0);
        assert_int_equal(l.resp.finish, reasons[i].want);
        assert_string_equal(l.resp.native, reasons[i].reason);
        evlog_free(&l);
    }

    /* A blocked prompt: no candidates. */
    evlog_init(&l);
    s = "data: {\"promptFeedback\":{\"blockReason\":\"SAFETY\"},\"usageMetadata\":{\"promptTokenCount\":7,"
        "\"totalTokenCount\":7}}\n\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), 0);
    assert_string_equal(l.log.data, "START id= model=\nFINISH 5 SAFETY\nUSAGE in=7 out=0 cr=-1 cw=-1 rs=-1\nEND\n");
    evlog_free(&l);

    /* An in-stream error. */
    evlog_init(&l);
    s = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]}}]}\r\n\r\n"
        "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), 0);
    assert_string_equal(l.log.data, "START id= model=\nTEXT x\nERROR 503 kind=7 The model is overloaded.\nEND\n");
    assert_true(l.resp.has_error);
    assert_int_equal(l.resp.error.kind, CHAT_ERR_OVERLOADED);
    assert_string_equal(l.resp.error.type, "UNAVAILABLE");
    evlog_free(&l);

    /* An error chunk without a code: the status string gives it. */
    evlog_init(&l);
    s = "data: {\"error\":{\"message\":\"quota\",\"status\":\"RESOURCE_EXHAUSTED\"}}\n\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), 0);
    assert_string_equal(l.log.data, "ERROR 429 kind=5 quota\nEND\n");
    evlog_free(&l);

    /* Malformed JSON in an event. */
    evlog_init(&l);
    s = "data: {\"candidates\":[\n\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), -EINVAL);
    evlog_free(&l);
    evlog_init(&l);
    s = "data: [1]\n\n";
    assert_int_equal(stream_decode(s, strlen(s), 0, &l), -EINVAL);
    evlog_free(&l);
}

static int resp_decode_fixture(const char *rel, evlog *l)
{
    size_t n;
    char *s = read_fixture(rel, &n);
    evlog_init(l);
    int rc = G->resp_decode(s, n, log_emit, l);
    free(s);
    return rc;
}

static void test_resp_decode(void **state)
{
    (void)state;
    evlog l;
    assert_int_equal(resp_decode_fixture("generate_content_response.json", &l), 0);
    assert_string_equal(l.log.data, "START id=41peaK-wOMSenvgPh-vRiAY model=gemini-2.0-flash\n"
                                    "TEXT The capital of France is Paris.\n\n"
                                    "FINISH 1 STOP\n"
                                    "USAGE in=13 out=8 cr=-1 cw=-1 rs=-1\n"
                                    "END\n");
    evlog_free(&l);

    assert_int_equal(resp_decode_fixture("function_call_response.json", &l), 0);
    assert_int_equal(l.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_int_equal(l.resp.ncalls, 1);
    assert_string_equal(l.resp.calls[0].name.data, "get_user_country");
    assert_string_equal(l.resp.calls[0].args.data, "{}");
    assert_int_equal(l.resp.usage.input, 33);
    assert_int_equal(l.resp.usage.output, 5);
    assert_string_equal(l.resp.id.data, "LlteaIDvD9m7nvgPz5Sb0Aw");
    evlog_free(&l);

    assert_int_equal(resp_decode_fixture("function_response_response.json", &l), 0);
    assert_string_equal(l.resp.calls[0].name.data, "final_result");
    assert_string_equal(l.resp.calls[0].args.data, "{\"city\":\"Mexico City\",\"country\":\"Mexico\"}");
    assert_int_equal(l.resp.finish, CHAT_FINISH_TOOL_CALLS);
    assert_int_equal(l.resp.usage.input, 47);
    assert_int_equal(l.resp.usage.output, 8);
    evlog_free(&l);

    /* streamGenerateContent without alt=sse: a JSON array of responses. */
    evlog_init(&l);
    const char *arr = "[{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"responseId\":\"x\"},"
                      "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]},\"finishReason\":\"STOP\"}],"
                      "\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":2}}]";
    assert_int_equal(G->resp_decode(arr, strlen(arr), log_emit, &l), 0);
    assert_string_equal(l.log.data, "START id=x model=\nTEXT a\nTEXT b\nFINISH 1 STOP\n"
                                    "USAGE in=2 out=2 cr=-1 cw=-1 rs=-1\nEND\n");
    evlog_free(&l);

    evlog_init(&l);
    assert_int_equal(G->resp_decode("{\"candidates\":", 14, log_emit, &l), -EINVAL);
    assert_int_equal(G->resp_decode("\"x\"", 3, log_emit, &l), -EINVAL);
    assert_int_equal(G->resp_decode("[]", 2, log_emit, &l), -EINVAL);
    evlog_free(&l);
}

/* ------------------------------------------------------------ errors */

static void error_fixture(const char *rel, int status, chat_error *e)
{
    size_t n;
    char *s = read_fixture(rel, &n);
    G->error_decode(status, s, n, e);
    free(s);
}

static void test_errors_decode(void **state)
{
    (void)state;
    chat_error e;
    error_fixture("error_400_api_key_invalid.json", 400, &e);
    assert_int_equal(e.status, 400);
    assert_int_equal(e.kind, CHAT_ERR_AUTH);
    assert_string_equal(e.type, "INVALID_ARGUMENT");
    assert_string_equal(e.code, "API_KEY_INVALID");
    assert_string_equal(e.message, "API key not valid. Please pass a valid API key.");
    assert_int_equal(e.retry_after_ms, -1);

    /* The same inside a JSON array (streaming method without alt=sse). */
    size_t n;
    char *s = read_fixture("error_400_api_key_invalid.json", &n);
    char *wrapped = malloc(n + 3);
    assert_non_null(wrapped);
    wrapped[0] = '[';
    memcpy(wrapped + 1, s, n);
    wrapped[n + 1] = ']';
    G->error_decode(400, wrapped, n + 2, &e);
    assert_int_equal(e.kind, CHAT_ERR_AUTH);
    assert_string_equal(e.message, "API key not valid. Please pass a valid API key.");
    free(wrapped);
    free(s);

    error_fixture("error_404_not_found.json", 404, &e);
    assert_int_equal(e.kind, CHAT_ERR_NOT_FOUND);
    assert_string_equal(e.type, "NOT_FOUND");
    assert_string_equal(e.code, "");
    assert_true(strncmp(e.message, "models/gemini-3.6-flahs is not found for API version v1beta", 59) == 0);

    error_fixture("error_429_resource_exhausted.json", 429, &e);
    assert_int_equal(e.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(e.type, "RESOURCE_EXHAUSTED");
    assert_int_equal(e.retry_after_ms, 36000);
    assert_true(strncmp(e.message, "You exceeded your current quota", 31) == 0);
    assert_true(strlen(e.message) < sizeof e.message);

    const char *b503 = "{\"error\":{\"code\":503,\"message\":\"overloaded\",\"status\":\"UNAVAILABLE\","
                       "\"details\":[{\"@type\":\"type.googleapis.com/google.rpc.RetryInfo\",\"retryDelay\":\"1.5s\"}]}}";
    G->error_decode(503, b503, strlen(b503), &e);
    assert_int_equal(e.kind, CHAT_ERR_OVERLOADED);
    assert_int_equal(e.retry_after_ms, 1500);
    const char *b504 = "{\"error\":{\"code\":504,\"message\":\"slow\",\"status\":\"DEADLINE_EXCEEDED\"}}";
    G->error_decode(504, b504, strlen(b504), &e);
    assert_int_equal(e.kind, CHAT_ERR_TIMEOUT);
    const char *b500 = "{\"error\":{\"code\":500,\"message\":\"oops\",\"status\":\"INTERNAL\"}}";
    G->error_decode(500, b500, strlen(b500), &e);
    assert_int_equal(e.kind, CHAT_ERR_SERVER);
    const char *b403 = "{\"error\":{\"code\":403,\"message\":\"no\",\"status\":\"PERMISSION_DENIED\"}}";
    G->error_decode(403, b403, strlen(b403), &e);
    assert_int_equal(e.kind, CHAT_ERR_PERMISSION);
    const char *b401 = "{\"error\":{\"code\":401,\"message\":\"who\",\"status\":\"UNAUTHENTICATED\"}}";
    G->error_decode(401, b401, strlen(b401), &e);
    assert_int_equal(e.kind, CHAT_ERR_AUTH);

    /* Not a Gemini body: the status's kind and the start of the body. */
    G->error_decode(502, "upstream connect error\x01\xff", 24, &e);
    assert_int_equal(e.status, 502);
    assert_int_equal(e.kind, CHAT_ERR_SERVER);
    assert_string_equal(e.message, "HTTP 502: upstream connect error??");
    G->error_decode(429, "", 0, &e);
    assert_int_equal(e.kind, CHAT_ERR_RATE_LIMIT);
    assert_string_equal(e.message, "HTTP 429");
    assert_int_equal(e.retry_after_ms, -1);
    /* A huge message is cut on a character boundary. */
    buf big;
    buf_init(&big, 1 << 20);
    assert_int_equal(buf_append_str(&big, "{\"error\":{\"code\":400,\"message\":\""), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(buf_append_str(&big, "\xc3\xa9"), 0);
    assert_int_equal(buf_append_str(&big, "\",\"status\":\"INVALID_ARGUMENT\"}}"), 0);
    G->error_decode(400, big.data, big.len, &e);
    assert_int_equal(strlen(e.message), 510);
    assert_int_equal(e.kind, CHAT_ERR_INVALID_REQUEST);
    buf_free(&big);
}

static void test_errors_encode(void **state)
{
    (void)state;
    static const struct {
        chat_err_kind kind;
        int code;
        const char *status;
    } cases[] = {
        {CHAT_ERR_INVALID_REQUEST, 400, "INVALID_ARGUMENT"},
        {CHAT_ERR_AUTH, 401, "UNAUTHENTICATED"},
        {CHAT_ERR_PERMISSION, 403, "PERMISSION_DENIED"},
        {CHAT_ERR_NOT_FOUND, 404, "NOT_FOUND"},
        {CHAT_ERR_TOO_LARGE, 400, "INVALID_ARGUMENT"},
        {CHAT_ERR_RATE_LIMIT, 429, "RESOURCE_EXHAUSTED"},
        {CHAT_ERR_SERVER, 500, "INTERNAL"},
        {CHAT_ERR_OVERLOADED, 503, "UNAVAILABLE"},
        {CHAT_ERR_TIMEOUT, 504, "DEADLINE_EXCEEDED"},
        {CHAT_ERR_BILLING, 403, "PERMISSION_DENIED"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_error e, d;
        memset(&e, 0, sizeof e);
        e.kind = cases[i].kind;
        e.retry_after_ms = -1;
        snprintf(e.message, sizeof e.message, "m \"%zu\"", i);
        buf out;
        buf_init(&out, 4096);
        int status = 0;
        assert_int_equal(G->error_encode(&e, &out, &status), 0);
        assert_int_equal(status, cases[i].code);
        char want[256];
        snprintf(want, sizeof want, "{\"error\":{\"code\":%d,\"message\":\"m \\\"%zu\\\"\",\"status\":\"%s\"}}",
                 cases[i].code, i, cases[i].status);
        assert_string_equal(out.data, want);
        G->error_decode(status, out.data, out.len, &d);
        if (cases[i].kind != CHAT_ERR_TOO_LARGE && cases[i].kind != CHAT_ERR_BILLING)
            assert_int_equal(d.kind, cases[i].kind);
        assert_string_equal(d.message, e.message);
        buf_free(&out);
    }
    /* Rate limit with a retry hint. */
    chat_error e, d;
    memset(&e, 0, sizeof e);
    e.kind = CHAT_ERR_RATE_LIMIT;
    e.retry_after_ms = 36500;
    buf out;
    buf_init(&out, 4096);
    int status;
    assert_int_equal(G->error_encode(&e, &out, &status), 0);
    assert_string_equal(out.data, "{\"error\":{\"code\":429,\"message\":\"RESOURCE_EXHAUSTED\",\"status\":"
                                  "\"RESOURCE_EXHAUSTED\",\"details\":[{\"@type\":\"type.googleapis.com/"
                                  "google.rpc.RetryInfo\",\"retryDelay\":\"36.500s\"}]}}");
    G->error_decode(status, out.data, out.len, &d);
    assert_int_equal(d.retry_after_ms, 36500);
    buf_free(&out);
    /* In-stream error. */
    chat_stream *s = G->stream_enc_new(NULL);
    assert_non_null(s);
    e.kind = CHAT_ERR_OVERLOADED;
    snprintf(e.message, sizeof e.message, "busy");
    assert_int_equal(G->stream_error_encode(s, &e, &out), 0);
    assert_string_equal(out.data, "data: {\"error\":{\"code\":503,\"message\":\"busy\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n");
    /* The stream is over after it. */
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = CHAT_EV_END;
    size_t len = out.len;
    assert_int_equal(G->stream_enc_feed(s, &ev, &out), 0);
    assert_int_equal(out.len, len);
    G->stream_free(s);
    buf_free(&out);
}

/* ------------------------------------------------------------ answers encode */

static chat_event mkev(chat_ev_type t)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = t;
    chat_usage_unset(&ev.usage);
    return ev;
}

static void feed(chat_stream *s, chat_event ev, buf *out)
{
    assert_int_equal(G->stream_enc_feed(s, &ev, out), 0);
}

static void test_stream_encode_exact(void **state)
{
    (void)state;
    chat_request req;
    assert_int_equal(chat_request_init(&req), 0);
    chat_stream *s = G->stream_enc_new(&req);
    assert_non_null(s);
    buf out;
    buf_init(&out, 1 << 20);
    chat_event ev = mkev(CHAT_EV_START);
    ev.id = SLICE_LIT("resp-1");
    ev.model = SLICE_LIT("gemini-2.5-flash");
    ev.usage.input = 10;
    feed(s, ev, &out);
    assert_int_equal(out.len, 0);
    ev = mkev(CHAT_EV_THINKING);
    ev.text = SLICE_LIT("hmm");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("Hi \"there\"\n");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 0;
    ev.id = SLICE_LIT("call_1");
    ev.text = SLICE_LIT("get_a");
    ev.signature = SLICE_LIT("c2ln+/==");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_TOOL_ARGS);
    ev.text = SLICE_LIT("{\"a\": ");
    feed(s, ev, &out);
    ev.text = SLICE_LIT("1}");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_TOOL_START);
    ev.tool = 1;
    ev.text = SLICE_LIT("get_b");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_FINISH);
    ev.finish = CHAT_FINISH_TOOL_CALLS;
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_USAGE);
    ev.usage.input = 10;
    ev.usage.output = 20;
    ev.usage.reasoning = 5;
    ev.usage.cache_read = 3;
    feed(s, ev, &out);
    feed(s, mkev(CHAT_EV_END), &out);
    static const char want[] =
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"hmm\",\"thought\":true}],\"role\":\"model\"},"
        "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"totalTokenCount\":10},"
        "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"resp-1\"}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi \\\"there\\\"\\n\"}],\"role\":\"model\"},"
        "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"totalTokenCount\":10},"
        "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"resp-1\"}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_a\",\"args\":{\"a\":1},"
        "\"id\":\"call_1\"},\"thoughtSignature\":\"c2ln+/==\"}],\"role\":\"model\"},"
        "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"totalTokenCount\":10},"
        "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"resp-1\"}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"get_b\",\"args\":{}}}],"
        "\"role\":\"model\"},"
        "\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,\"totalTokenCount\":10},"
        "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"resp-1\"}\r\n\r\n"
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},"
        "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":10,"
        "\"candidatesTokenCount\":15,\"totalTokenCount\":30,\"cachedContentTokenCount\":3,"
        "\"thoughtsTokenCount\":5},"
        "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"resp-1\"}\r\n\r\n";
    assert_string_equal(out.data, want);
    /* Anything after END is ignored. */
    feed(s, mkev(CHAT_EV_END), &out);
    assert_int_equal(out.len, sizeof want - 1);
    G->stream_free(s);

    /* Our decoder reads the bytes back. */
    evlog l;
    evlog_init(&l);
    assert_int_equal(stream_decode(out.data, out.len, 7, &l), 0);
    assert_string_equal(l.log.data, "START id=resp-1 model=gemini-2.5-flash\n"
                                    "THINKING hmm\n"
                                    "USAGE in=10 out=0 cr=-1 cw=-1 rs=-1\n"
                                    "TEXT Hi \"there\"\n\n"
                                    "USAGE in=10 out=0 cr=-1 cw=-1 rs=-1\n"
                                    "TOOL_START 0 id=call_1 name=get_a sig=8\n"
                                    "TOOL_ARGS 0 {\"a\":1}\n"
                                    "USAGE in=10 out=0 cr=-1 cw=-1 rs=-1\n"
                                    "TOOL_START 1 id= name=get_b sig=0\n"
                                    "TOOL_ARGS 1 {}\n"
                                    "USAGE in=10 out=0 cr=-1 cw=-1 rs=-1\n"
                                    "FINISH 4 STOP\n"
                                    "USAGE in=10 out=20 cr=3 cw=-1 rs=5\n"
                                    "END\n");
    evlog_free(&l);
    buf_free(&out);

    /* No START, no usage: generated id, request model, LENGTH -> MAX_TOKENS. */
    set(&req, &req.model, "gemini-x");
    s = G->stream_enc_new(&req);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("a");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_FINISH);
    ev.finish = CHAT_FINISH_LENGTH;
    feed(s, ev, &out);
    feed(s, mkev(CHAT_EV_END), &out);
    G->stream_free(s);
    const char *p = strstr(out.data, "\"responseId\":\""), *q;
    assert_non_null(p);
    while ((q = strstr(p + 1, "\"responseId\":\"")) != NULL) /* the last chunk's */
        p = q;
    assert_int_equal(strlen(p), strlen("\"responseId\":\"") + 24 + strlen("\"}\r\n\r\n"));
    assert_non_null(strstr(out.data, "\"finishReason\":\"MAX_TOKENS\",\"index\":0}],\"modelVersion\":\"gemini-x\""));
    evlog_init(&l);
    assert_int_equal(stream_decode(out.data, out.len, 0, &l), 0);
    assert_int_equal(l.resp.finish, CHAT_FINISH_LENGTH);
    assert_string_equal(l.resp.text.data, "a");
    assert_string_equal(l.resp.model.data, "gemini-x");
    evlog_free(&l);
    buf_free(&out);

    /* A second candidate (a caller that asked candidateCount 2). */
    s = G->stream_enc_new(NULL);
    ev = mkev(CHAT_EV_START);
    ev.id = SLICE_LIT("r");
    feed(s, ev, &out);
    ev = mkev(CHAT_EV_TEXT);
    ev.choice = 1;
    ev.text = SLICE_LIT("b");
    feed(s, ev, &out);
    G->stream_free(s);
    assert_string_equal(out.data, "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}],"
                                  "\"role\":\"model\"},\"index\":1}],\"responseId\":\"r\"}\r\n\r\n");
    buf_free(&out);

    /* A full buffer: -E2BIG and nothing half-written. */
    buf small;
    buf_init(&small, 40);
    s = G->stream_enc_new(NULL);
    ev = mkev(CHAT_EV_TEXT);
    ev.text = SLICE_LIT("a long enough text to overflow");
    assert_int_equal(G->stream_enc_feed(s, &ev, &small), -E2BIG);
    assert_int_equal(small.len, 0);
    G->stream_free(s);
    buf_free(&small);
    chat_request_free(&req);
}

/* Fixture stream -> decode -> our encoder -> decode gives the same answer. */
typedef struct reenc {
    chat_stream *enc;
    buf out;
} reenc;

static int reenc_emit(void *ud, const chat_event *ev)
{
    reenc *r = ud;
    return G->stream_enc_feed(r->enc, ev, &r->out);
}

static void test_stream_reencode_fixtures(void **state)
{
    (void)state;
    static const char *const fixtures[] = {
        "stream_generate_content.sse",
        "stream_generate_content_system_instruction.sse",
        "stream_function_call.sse",
        "stream_after_function_response.sse",
    };
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        size_t n;
        char *s = read_fixture(fixtures[i], &n);
        reenc re = {G->stream_enc_new(NULL), {0}};
        buf_init(&re.out, 1 << 20);
        /* Decode the fixture, then replay its answer through the encoder. */
        evlog a, b;
        evlog_init(&a);
        assert_int_equal(stream_decode(s, n, 0, &a), 0);
        chat_event ev = mkev(CHAT_EV_START);
        ev.id = slice_make(a.resp.id.data, a.resp.id.len);
        ev.model = slice_make(a.resp.model.data, a.resp.model.len);
        assert_int_equal(reenc_emit(&re, &ev), 0);
        if (a.resp.text.len) {
            ev = mkev(CHAT_EV_TEXT);
            ev.text = slice_make(a.resp.text.data, a.resp.text.len);
            assert_int_equal(reenc_emit(&re, &ev), 0);
        }
        for (size_t k = 0; k < a.resp.ncalls; k++) {
            ev = mkev(CHAT_EV_TOOL_START);
            ev.tool = (int)k;
            ev.id = slice_make(a.resp.calls[k].id.data, a.resp.calls[k].id.len);
            ev.text = slice_make(a.resp.calls[k].name.data, a.resp.calls[k].name.len);
            ev.signature = slice_make(a.resp.calls[k].signature.data, a.resp.calls[k].signature.len);
            assert_int_equal(reenc_emit(&re, &ev), 0);
            ev = mkev(CHAT_EV_TOOL_ARGS);
            ev.tool = (int)k;
            ev.text = slice_make(a.resp.calls[k].args.data, a.resp.calls[k].args.len);
            assert_int_equal(reenc_emit(&re, &ev), 0);
        }
        ev = mkev(CHAT_EV_FINISH);
        ev.finish = a.resp.finish;
        assert_int_equal(reenc_emit(&re, &ev), 0);
        ev = mkev(CHAT_EV_USAGE);
        ev.usage = a.resp.usage;
        assert_int_equal(reenc_emit(&re, &ev), 0);
        ev = mkev(CHAT_EV_END);
        assert_int_equal(reenc_emit(&re, &ev), 0);
        evlog_init(&b);
        assert_int_equal(stream_decode(re.out.data, re.out.len, 0, &b), 0);
        assert_string_equal(b.resp.text.data ? b.resp.text.data : "", a.resp.text.data ? a.resp.text.data : "");
        assert_int_equal(b.resp.ncalls, a.resp.ncalls);
        for (size_t k = 0; k < a.resp.ncalls; k++) {
            assert_string_equal(b.resp.calls[k].name.data, a.resp.calls[k].name.data);
            assert_string_equal(b.resp.calls[k].args.data, a.resp.calls[k].args.data);
            assert_string_equal(b.resp.calls[k].signature.data, a.resp.calls[k].signature.data);
        }
        assert_int_equal(b.resp.finish, a.resp.finish);
        assert_int_equal(b.resp.usage.input, a.resp.usage.input);
        assert_int_equal(b.resp.usage.output, a.resp.usage.output);
        assert_string_equal(b.resp.id.data, a.resp.id.data);
        assert_string_equal(b.resp.model.data, a.resp.model.data);
        evlog_free(&a);
        evlog_free(&b);
        G->stream_free(re.enc);
        buf_free(&re.out);
        free(s);
    }
}

static void test_resp_encode(void **state)
{
    (void)state;
    chat_response r;
    chat_response_init(&r);
    assert_int_equal(buf_append_str(&r.id, "abc"), 0);
    assert_int_equal(buf_append_str(&r.model, "gemini-2.0-flash"), 0);
    assert_int_equal(buf_append_str(&r.text, "Paris."), 0);
    assert_int_equal(buf_append_str(&r.thinking, "easy"), 0);
    chat_event ev = mkev(CHAT_EV_TOOL_START);
    ev.id = SLICE_LIT("c1");
    ev.text = SLICE_LIT("f");
    ev.signature = SLICE_LIT("sig");
    assert_int_equal(chat_response_collect(&r, &ev), 0);
    ev = mkev(CHAT_EV_TOOL_ARGS);
    ev.text = SLICE_LIT("{\"k\":[true]}");
    assert_int_equal(chat_response_collect(&r, &ev), 0);
    r.finish = CHAT_FINISH_TOOL_CALLS;
    r.usage.input = 13;
    r.usage.output = 8;
    r.have_usage = true;
    buf out;
    buf_init(&out, 1 << 16);
    assert_int_equal(G->resp_encode(NULL, &r, &out), 0);
    assert_string_equal(out.data,
                        "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"easy\",\"thought\":true},"
                        "{\"text\":\"Paris.\"},{\"functionCall\":{\"name\":\"f\",\"args\":{\"k\":[true]},\"id\":\"c1\"},"
                        "\"thoughtSignature\":\"sig\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],"
                        "\"usageMetadata\":{\"promptTokenCount\":13,\"candidatesTokenCount\":8,\"totalTokenCount\":21},"
                        "\"modelVersion\":\"gemini-2.0-flash\",\"responseId\":\"abc\"}");
    /* And back. */
    evlog l;
    evlog_init(&l);
    assert_int_equal(G->resp_decode(out.data, out.len, log_emit, &l), 0);
    assert_string_equal(l.log.data, "START id=abc model=gemini-2.0-flash\nTHINKING easy\nTEXT Paris.\n"
                                    "TOOL_START 0 id=c1 name=f sig=3\nTOOL_ARGS 0 {\"k\":[true]}\n"
                                    "FINISH 4 STOP\nUSAGE in=13 out=8 cr=-1 cw=-1 rs=-1\nEND\n");
    evlog_free(&l);
    buf_free(&out);
    chat_response_free(&r);

    /* Fixture -> decode -> encode -> decode. */
    assert_int_equal(resp_decode_fixture("generate_content_response.json", &l), 0);
    assert_int_equal(G->resp_encode(NULL, &l.resp, &out), 0);
    assert_string_equal(out.data, "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"The capital of France is "
                                  "Paris.\\n\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}],"
                                  "\"usageMetadata\":{\"promptTokenCount\":13,\"candidatesTokenCount\":8,"
                                  "\"totalTokenCount\":21},\"modelVersion\":\"gemini-2.0-flash\","
                                  "\"responseId\":\"41peaK-wOMSenvgPh-vRiAY\"}");
    evlog_free(&l);
    buf_free(&out);

    /* Empty answer: one empty text part, generated id, request model. */
    chat_response_init(&r);
    chat_request req;
    assert_int_equal(chat_request_init(&req), 0);
    set(&req, &req.model, "m");
    r.finish = CHAT_FINISH_CONTENT_FILTER;
    assert_int_equal(G->resp_encode(&req, &r, &out), 0);
    const char *head = "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},"
                       "\"finishReason\":\"SAFETY\"}],\"modelVersion\":\"m\",\"responseId\":\"";
    assert_true(strncmp(out.data, head, strlen(head)) == 0);
    assert_int_equal(out.len, strlen(head) + 24 + 2);
    buf_free(&out);
    chat_request_free(&req);
    chat_response_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_req_generate_content),
        cmocka_unit_test(test_req_function_call),
        cmocka_unit_test(test_req_function_response),
        cmocka_unit_test(test_req_generation_config),
        cmocka_unit_test(test_req_unmapped),
        cmocka_unit_test(test_req_invalid),
        cmocka_unit_test(test_req_round_trip),
        cmocka_unit_test(test_req_encode_exact),
        cmocka_unit_test(test_req_encode_refusals),
        cmocka_unit_test(test_req_path_auth),
        cmocka_unit_test(test_stream_generate_content),
        cmocka_unit_test(test_stream_function_call),
        cmocka_unit_test(test_stream_other_fixtures),
        cmocka_unit_test(test_stream_synthetic),
        cmocka_unit_test(test_resp_decode),
        cmocka_unit_test(test_errors_decode),
        cmocka_unit_test(test_errors_encode),
        cmocka_unit_test(test_stream_encode_exact),
        cmocka_unit_test(test_stream_reencode_fixtures),
        cmocka_unit_test(test_resp_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
