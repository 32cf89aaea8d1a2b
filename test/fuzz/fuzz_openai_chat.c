/* fuzz_openai_chat.c - libFuzzer driver for the OpenAI chat_format
 * (providers/openai_chat.c).
 *
 * The first byte picks the mode:
 *   0  req_decode, then req_encode + req_path for every format (JSON or a
 *      400); ours must decode again to the same encoding;
 *   1  resp_decode into chat_response_collect, then resp_encode (JSON that
 *      decodes again);
 *   2  the next byte holds options (bit 0 include_usage, the rest a chunk
 *      size), the rest is an SSE body split by an sse_parser into
 *      stream_dec_feed, whose events feed our stream encoder; every data
 *      payload the encoder writes must be JSON or [DONE];
 *   3  the next two bytes are an HTTP status, the rest an error body:
 *      error_decode, then error_encode (valid UTF-8, JSON, 4xx/5xx).
 * Anything else aborts (ASan/UBSan report it).
 *
 *   CC=clang cmake -B build-fuzz -DTG_FUZZ=ON && cmake --build build-fuzz --target fuzz_openai_chat
 *   ./build-fuzz/test/fuzz_openai_chat test/fuzz/corpus/openai_chat */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/chat.h"
#include "providers/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUT_MAX ((size_t)8 << 20)

static const chat_format *const F = &chat_format_openai;

static void must(bool ok)
{
    if (!ok)
        abort();
}

/* n bytes at p are valid UTF-8 (a NUL counts as invalid in a C string). */
static bool utf8_ok(const char *p, size_t n)
{
    json_t *j = json_stringn(p, n);
    bool ok = j != NULL && memchr(p, '\0', n) == NULL;
    json_decref(j);
    return ok;
}

static bool is_json(const char *p, size_t n)
{
    json_t *j = json_loadb(p, n, JSON_ALLOW_NUL, NULL);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

static bool has_call_without_id(const chat_request *r)
{
    for (size_t i = 0; i < r->nmsgs; i++)
        for (size_t j = 0; j < r->msgs[i].nparts; j++)
            if (r->msgs[i].parts[j].type == CHAT_PART_TOOL_CALL && r->msgs[i].parts[j].id.len == 0)
                return true;
    return false;
}

/* ---- mode 0: request */

static void fuzz_request(const char *p, size_t n)
{
    chat_request r;
    chat_error err;
    buf out, again, path;
    must(chat_request_init(&r) == 0);
    buf_init(&out, OUT_MAX);
    buf_init(&again, OUT_MAX);
    buf_init(&path, 4096);
    int rc = F->req_decode(p, n, &r, &err);
    if (rc) {
        must(rc == -EINVAL && err.status == 400 && utf8_ok(err.message, strlen(err.message)));
        goto out;
    }
    chat_target t = {"fuzz-model", 10, (n & 1) != 0};
    rc = F->req_encode(&r, &t, &out, &err);
    must(F->req_path(&t, &path) == 0);
    if (rc) {
        must((rc == -EINVAL && err.status == 400) || rc == -E2BIG);
        must(out.len == 0);
        goto out;
    }
    must(is_json(out.data, out.len));
    /* every other format encodes it too, or refuses it with a 400 */
    const chat_format *const others[] = {chat_format_get(CHAT_FMT_ANTHROPIC),
                                         chat_format_get(CHAT_FMT_GEMINI)};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        const chat_format *g = others[i];
        buf other;
        if (g == F)
            continue;
        buf_init(&other, OUT_MAX);
        int orc = g->req_encode(&r, &t, &other, &err);
        must(orc == 0 || orc == -E2BIG || (orc == -EINVAL && err.status == 400));
        must(orc != 0 || is_json(other.data, other.len));
        buf_reset(&other);
        must(g->req_path(&t, &other) == 0);
        buf_free(&other);
    }
    /* what we send decodes, and encodes the same way again */
    chat_request r2;
    must(chat_request_init(&r2) == 0);
    rc = F->req_decode(out.data, out.len, &r2, &err);
    must(rc == 0);
    must(F->req_encode(&r2, &t, &again, &err) == 0);
    if (!has_call_without_id(&r))
        must(again.len == out.len && memcmp(again.data, out.data, out.len) == 0);
    chat_request_free(&r2);
out:
    chat_request_free(&r);
    buf_free(&out);
    buf_free(&again);
    buf_free(&path);
}

/* ---- mode 1: whole response */

static void fuzz_response(const char *p, size_t n)
{
    chat_response resp, back;
    chat_request req;
    buf out;
    chat_response_init(&resp);
    chat_response_init(&back);
    must(chat_request_init(&req) == 0);
    must(chat_strdup(&req, "fuzz-model", 10, &req.model) == 0);
    buf_init(&out, OUT_MAX);
    int rc = F->resp_decode(p, n, chat_response_collect, &resp);
    if (rc == 0) {
        rc = F->resp_encode(&req, &resp, &out);
        must(rc == 0 || rc == -E2BIG);
        if (rc == 0) {
            must(is_json(out.data, out.len));
            must(F->resp_decode(out.data, out.len, chat_response_collect, &back) == 0);
            must(back.text.len == resp.text.len && back.ncalls == resp.ncalls);
        }
    }
    chat_response_free(&resp);
    chat_response_free(&back);
    chat_request_free(&req);
    buf_free(&out);
}

/* ---- mode 2: stream */

typedef struct pipe {
    chat_stream *dec, *enc;
    buf out;
} pipe_t;

static int pipe_emit(void *ud, const chat_event *ev)
{
    pipe_t *pp = ud;
    int rc = F->stream_enc_feed(pp->enc, ev, &pp->out);
    must(rc == 0 || rc == -E2BIG || rc == -EINVAL);
    return rc;
}

static int pipe_sse(const sse_event *ev, void *ud)
{
    pipe_t *pp = ud;
    return F->stream_dec_feed(pp->dec, ev, pipe_emit, pp);
}

static int check_sse(const sse_event *ev, void *ud)
{
    (void)ud;
    if (!ev->has_data)
        abort(); /* the encoder writes data events only */
    if (!(ev->data.len == 6 && memcmp(ev->data.p, "[DONE]", 6) == 0))
        must(is_json(ev->data.p, ev->data.len));
    return 0;
}

static void fuzz_stream(const char *p, size_t n)
{
    if (n < 1)
        return;
    unsigned opt = (unsigned char)p[0];
    size_t step = (opt >> 1) + 1;
    p++;
    n--;
    chat_request req;
    must(chat_request_init(&req) == 0);
    must(chat_strdup(&req, "fuzz-model", 10, &req.model) == 0);
    req.include_usage = opt & 1;
    pipe_t pp = {F->stream_dec_new(), F->stream_enc_new(&req), {0}};
    must(pp.dec && pp.enc);
    buf_init(&pp.out, OUT_MAX);
    sse_parser sp;
    must(sse_parser_init(&sp, 1 << 20, pipe_sse, &pp) == 0);
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0; off += step)
        rc = sse_parser_feed(&sp, p + off, n - off < step ? n - off : step);
    if (rc == 0)
        rc = sse_parser_finish(&sp);
    if (rc == 0 || rc == SSE_UNTERMINATED)
        rc = F->stream_dec_finish(pp.dec, pipe_emit, &pp);
    if (rc == 0) {
        chat_error e;
        chat_error_invalid(&e, NULL, "the upstream stream was cut");
        rc = F->stream_error_encode(pp.enc, &e, &pp.out);
        must(rc == 0 || rc == -E2BIG);
    }
    sse_parser_free(&sp);

    /* everything written parses back */
    sse_parser chk;
    must(sse_parser_init(&chk, OUT_MAX, check_sse, NULL) == 0);
    must(sse_parser_feed(&chk, pp.out.data, pp.out.len) == 0);
    must(sse_parser_finish(&chk) == 0);
    sse_parser_free(&chk);

    F->stream_free(pp.dec);
    F->stream_free(pp.enc);
    buf_free(&pp.out);
    chat_request_free(&req);
}

/* ---- mode 3: errors */

static void fuzz_error(const char *p, size_t n)
{
    if (n < 2)
        return;
    int status = ((unsigned char)p[0] << 8 | (unsigned char)p[1]) % 600;
    chat_error e;
    buf out;
    int st = 0;
    F->error_decode(status, p + 2, n - 2, &e);
    must(e.status == status);
    must(utf8_ok(e.message, strlen(e.message)) && e.message[0]);
    must(utf8_ok(e.type, strlen(e.type)) && utf8_ok(e.code, strlen(e.code)));
    must(utf8_ok(e.param, strlen(e.param)));
    buf_init(&out, OUT_MAX);
    must(F->error_encode(&e, &out, &st) == 0);
    must(st >= 400 && st <= 599);
    must(is_json(out.data, out.len));
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0:
        fuzz_request(p, n);
        break;
    case 1:
        fuzz_response(p, n);
        break;
    case 2:
        fuzz_stream(p, n);
        break;
    case 3:
        fuzz_error(p, n);
        break;
    }
    return 0;
}
