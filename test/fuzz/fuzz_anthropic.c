/* fuzz_anthropic.c - libFuzzer driver for the Anthropic chat_format
 * (providers/anthropic.c).
 *
 * The first byte picks the mode (low two bits):
 *   0  req_decode, then req_encode + req_path to every format; the
 *      Anthropic body must be JSON that decodes again and encodes to the
 *      same bytes (unless a call without id made the encoder invent one);
 *   1  resp_decode into chat_response_collect, then resp_encode (JSON
 *      that decodes again to the same text and calls);
 *   2  the next byte is a chunk size (0 = one feed), the rest an SSE body
 *      split by an sse_parser into stream_dec_feed, whose events feed our
 *      stream encoder; what the encoder writes must be SSE events whose
 *      data is JSON with a "type" equal to the event name;
 *   3  the next two bytes are an HTTP status, the rest an error body:
 *      error_decode (valid UTF-8 message), then error_encode (JSON, a
 *      4xx/5xx status).
 * A broken invariant aborts (as do ASan/UBSan findings).
 *
 *   CC=clang cmake -B build-anthropic-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-anthropic-fuzz --target fuzz_anthropic
 *   ./build-anthropic-fuzz/test/fuzz_anthropic test/fuzz/corpus/anthropic */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/chat.h"
#include "providers/jscan.h"
#include "providers/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUT_MAX ((size_t)8 << 20)

static const chat_format *const F = &chat_format_anthropic;

static void must(bool ok)
{
    if (!ok)
        abort();
}

static bool is_json(const char *p, size_t n)
{
    json_t *j = json_loadb(p, n, JSON_ALLOW_NUL, NULL);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

/* A NUL-terminated message within its array, valid UTF-8. */
static bool text_ok(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    return n < cap && jscan_utf8_valid(s, n);
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

/* Our own encoding: JSON that decodes again and encodes the same. */
static void check_own_encoding(const chat_request *r, const chat_target *t, const buf *out)
{
    chat_request r2;
    chat_error err;
    buf again;
    must(is_json(out->data, out->len));
    must(chat_request_init(&r2) == 0);
    buf_init(&again, OUT_MAX);
    must(F->req_decode(out->data, out->len, &r2, &err) == 0);
    must(r2.unmapped[0] == '\0');
    int rc = F->req_encode(&r2, t, &again, &err);
    must(rc == 0 || rc == -E2BIG);
    if (rc == 0 && !has_call_without_id(r))
        must(again.len == out->len && memcmp(again.data, out->data, out->len) == 0);
    chat_request_free(&r2);
    buf_free(&again);
}

static void fuzz_request(const char *p, size_t n)
{
    chat_request r;
    chat_error err;
    must(chat_request_init(&r) == 0);
    int rc = F->req_decode(p, n, &r, &err);
    if (rc) {
        must(rc == -EINVAL && err.status == 400 && text_ok(err.message, sizeof err.message));
        goto out;
    }
    chat_target t = {"fuzz-model", 10, (n & 1) != 0};
    for (int i = 0; i < CHAT_FMT_COUNT; i++) {
        const chat_format *f = chat_format_get((chat_format_id)i);
        buf body, path;
        buf_init(&body, OUT_MAX);
        buf_init(&path, 4096);
        must(f->req_path(&t, &path) == 0);
        rc = f->req_encode(&r, &t, &body, &err);
        if (rc) {
            must((rc == -EINVAL && err.status == 400) || rc == -E2BIG);
        } else if (f == F) {
            check_own_encoding(&r, &t, &body);
        } else {
            must(is_json(body.data, body.len));
        }
        buf_free(&body);
        buf_free(&path);
    }
out:
    chat_request_free(&r);
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
    if (rc == 0 && !resp.has_error) {
        rc = F->resp_encode(&req, &resp, &out);
        must(rc == 0 || rc == -E2BIG);
        if (rc == 0) {
            must(is_json(out.data, out.len));
            must(F->resp_decode(out.data, out.len, chat_response_collect, &back) == 0);
            must(back.text.len == resp.text.len && back.ncalls == resp.ncalls && back.ended);
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

/* Each event the encoder wrote: event NAME + JSON data of type NAME. */
static int check_sse(const sse_event *ev, void *ud)
{
    (void)ud;
    must(ev->has_data && ev->event.len > 0);
    json_t *j = json_loadb(ev->data.p, ev->data.len, JSON_ALLOW_NUL, NULL);
    json_t *type = json_object_get(j, "type");
    must(json_is_string(type) && json_string_length(type) == ev->event.len &&
         memcmp(json_string_value(type), ev->event.p, ev->event.len) == 0);
    json_decref(j);
    return 0;
}

static void fuzz_stream(const char *p, size_t n)
{
    if (n < 1)
        return;
    size_t step = (unsigned char)p[0];
    p++;
    n--;
    if (step == 0)
        step = n ? n : 1;
    chat_request req;
    must(chat_request_init(&req) == 0);
    must(chat_strdup(&req, "fuzz-model", 10, &req.model) == 0);
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
    must(rc == 0 || rc == SSE_UNTERMINATED || rc == -EINVAL || rc == -E2BIG || rc == -ENOMEM);
    sse_parser_free(&sp);
    /* What the encoder wrote is well-formed, whatever happened. */
    sse_parser chk;
    must(sse_parser_init(&chk, OUT_MAX, check_sse, NULL) == 0);
    must(sse_parser_feed(&chk, pp.out.data ? pp.out.data : "", pp.out.len) == 0);
    must(sse_parser_finish(&chk) == 0);
    sse_parser_free(&chk);
    F->stream_free(pp.dec);
    F->stream_free(pp.enc);
    buf_free(&pp.out);
    chat_request_free(&req);
}

/* ---- mode 3: error body */

static void fuzz_error(const char *p, size_t n)
{
    if (n < 2)
        return;
    int status = ((unsigned char)p[0] << 8 | (unsigned char)p[1]) % 1000;
    chat_error e;
    F->error_decode(status, p + 2, n - 2, &e);
    must(e.status == status);
    must(text_ok(e.message, sizeof e.message) && text_ok(e.type, sizeof e.type));
    buf out;
    buf_init(&out, OUT_MAX);
    int code = 0;
    must(F->error_encode(&e, &out, &code) == 0);
    must(code >= 400 && code <= 599);
    must(is_json(out.data, out.len));
    chat_error back;
    F->error_decode(code, out.data, out.len, &back);
    must(back.kind == e.kind);
    buf_reset(&out);
    must(F->stream_error_encode(NULL, &e, &out) == 0);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] & 3) {
    case 0:
        fuzz_request(p, n);
        break;
    case 1:
        fuzz_response(p, n);
        break;
    case 2:
        fuzz_stream(p, n);
        break;
    default:
        fuzz_error(p, n);
        break;
    }
    return 0;
}
