/* fuzz_gemini.c - libFuzzer driver for the Gemini adapter (providers/gemini.c).
 *
 * The first byte picks a mode, the rest is the payload:
 *   0  request: req_decode, then req_encode + req_path (again with the
 *      unmapped member and n cleared, to reach the encoder); what the
 *      encoder wrote must decode again;
 *   1  whole response: resp_decode into chat_response_collect, then
 *      resp_encode, whose output must decode again;
 *   2  stream: an sse_parser feeds stream_dec_feed (split at a point
 *      taken from the second byte), whose events go to a collector and
 *      to our own stream encoder; the encoder's bytes must decode again;
 *   3  error: error_decode (status from the second byte), then
 *      error_encode; every string of the chat_error must be valid UTF-8.
 *
 *   CC=clang cmake -B build-fuzz -DTG_FUZZ=ON && cmake --build build-fuzz --target fuzz_gemini
 *   ./build-fuzz/test/fuzz_gemini test/fuzz/corpus/gemini */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/chat.h"
#include "providers/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_OUT_MAX ((size_t)16 << 20)
#define G (&chat_format_gemini)

static void must(bool ok)
{
    if (!ok)
        abort();
}

/* Whether s (NUL-terminated within cap) is valid UTF-8. */
static bool valid_utf8(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == cap)
        return false;
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t len = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3
                                 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
        if (!len || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if ((u[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static void check_error(const chat_error *e)
{
    must(valid_utf8(e->message, sizeof e->message));
    must(valid_utf8(e->type, sizeof e->type));
    must(valid_utf8(e->code, sizeof e->code));
    must(valid_utf8(e->param, sizeof e->param));
}

/* Mode 0. */
static void fuzz_request(const char *s, size_t n)
{
    chat_request r, again;
    chat_error err;
    buf out;
    buf_init(&out, FUZZ_OUT_MAX);
    if (chat_request_init(&r))
        return;
    int rc = G->req_decode(s, n, &r, &err);
    if (rc == -EINVAL)
        check_error(&err);
    if (rc)
        goto out;
    /* the other formats encode it too, or refuse it with a 400 */
    for (int f = 0; f < CHAT_FMT_COUNT; f++) {
        const chat_format *g = chat_format_get((chat_format_id)f);
        chat_target ot = {"m", 1, f == CHAT_FMT_OPENAI};
        if (g == G)
            continue;
        buf_reset(&out);
        int orc = g->req_encode(&r, &ot, &out, &err);
        must(orc == 0 || orc == -E2BIG || orc == -ENOMEM || (orc == -EINVAL && err.status == 400));
    }
    for (int pass = 0; pass < 2; pass++) {
        chat_target t = {"models/gemini-2.0-flash", 23, pass == 1};
        buf_reset(&out);
        rc = G->req_encode(&r, &t, &out, &err);
        if (rc == -EINVAL) {
            check_error(&err);
            must(out.len == 0);
        }
        if (rc == 0) {
            if (chat_request_init(&again))
                goto out;
            int rc2 = G->req_decode(out.data, out.len, &again, &err);
            must(rc2 == 0 || rc2 == -ENOMEM);
            chat_request_free(&again);
        }
        buf_reset(&out);
        must(G->req_path(&t, &out) == 0);
        r.unmapped[0] = '\0';
        r.n = -1;
    }
    buf_reset(&out);
    chat_target t = {s, n > 64 ? 64 : n, true};
    rc = G->req_path(&t, &out);
    must(rc == 0);
out:
    buf_free(&out);
    chat_request_free(&r);
}

/* Mode 1. */
static void fuzz_response(const char *s, size_t n)
{
    chat_response resp;
    buf out;
    chat_response_init(&resp);
    buf_init(&out, FUZZ_OUT_MAX);
    int rc = G->resp_decode(s, n, chat_response_collect, &resp);
    if (rc == 0) {
        if (resp.has_error)
            check_error(&resp.error);
        if (G->resp_encode(NULL, &resp, &out) == 0) {
            chat_response again;
            chat_response_init(&again);
            must(G->resp_decode(out.data, out.len, chat_response_collect, &again) == 0);
            must(again.ncalls == resp.ncalls && again.ended);
            chat_response_free(&again);
        }
    }
    buf_free(&out);
    chat_response_free(&resp);
}

/* Mode 2: decoder -> collector + encoder. */
typedef struct pipe {
    chat_stream *dec, *enc;
    chat_response resp;
    buf out;
} pipe_t;

static int pipe_emit(void *ud, const chat_event *ev)
{
    pipe_t *p = ud;
    if (ev->type == CHAT_EV_ERROR)
        check_error(ev->error);
    int rc = chat_response_collect(&p->resp, ev);
    if (rc)
        return rc;
    return G->stream_enc_feed(p->enc, ev, &p->out);
}

static int pipe_sse(const sse_event *ev, void *ud)
{
    pipe_t *p = ud;
    return G->stream_dec_feed(p->dec, ev, pipe_emit, p);
}

/* Runs n bytes through the parser and decoder in two feeds cut at cut;
 * the encoder's output goes to p->out. */
static int pipe_run(pipe_t *p, const char *s, size_t n, size_t cut)
{
    sse_parser ps;
    p->dec = G->stream_dec_new();
    p->enc = G->stream_enc_new(NULL);
    chat_response_init(&p->resp);
    buf_init(&p->out, FUZZ_OUT_MAX);
    if (!p->dec || !p->enc || sse_parser_init(&ps, 1 << 20, pipe_sse, p))
        abort();
    int rc = sse_parser_feed(&ps, s, cut);
    if (!rc)
        rc = sse_parser_feed(&ps, s + cut, n - cut);
    if (!rc)
        rc = sse_parser_finish(&ps);
    if (rc >= 0) /* 0 or SSE_UNTERMINATED: the body ended */
        rc = G->stream_dec_finish(p->dec, pipe_emit, p);
    sse_parser_free(&ps);
    return rc;
}

static void pipe_free(pipe_t *p)
{
    G->stream_free(p->dec);
    G->stream_free(p->enc);
    chat_response_free(&p->resp);
    buf_free(&p->out);
}

static void fuzz_stream(const char *s, size_t n)
{
    if (n == 0)
        return;
    size_t cut = (size_t)(unsigned char)s[0] * (n - 1) / 255;
    pipe_t a;
    memset(&a, 0, sizeof a);
    pipe_run(&a, s + 1, n - 1, cut);
    /* What our encoder wrote is a valid Gemini stream. */
    pipe_t b;
    memset(&b, 0, sizeof b);
    int rc = pipe_run(&b, a.out.data ? a.out.data : "", a.out.len, a.out.len / 2);
    must(rc == 0 || rc == -ENOMEM || rc == -E2BIG);
    if (rc == 0 && !a.resp.has_error && a.resp.ended) {
        must(b.resp.ncalls == a.resp.ncalls);
        must(b.resp.text.len == a.resp.text.len);
    }
    pipe_free(&a);
    pipe_free(&b);
}

/* Mode 3. */
static void fuzz_error(const char *s, size_t n)
{
    if (n == 0)
        return;
    int status = 400 + (unsigned char)s[0] % 200;
    chat_error e, d;
    G->error_decode(status, s + 1, n - 1, &e);
    check_error(&e);
    must(e.status == status);
    buf out;
    buf_init(&out, FUZZ_OUT_MAX);
    int st = 0;
    must(G->error_encode(&e, &out, &st) == 0);
    must(st >= 400 && st <= 599);
    G->error_decode(st, out.data, out.len, &d);
    check_error(&d);
    if (e.message[0])
        must(strcmp(e.message, d.message) == 0);
    buf_reset(&out);
    chat_stream *enc = G->stream_enc_new(NULL);
    must(enc && G->stream_error_encode(enc, &e, &out) == 0);
    G->stream_free(enc);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0: fuzz_request(s, n); break;
    case 1: fuzz_response(s, n); break;
    case 2: fuzz_stream(s, n); break;
    case 3: fuzz_error(s, n); break;
    }
    return 0;
}
