/* chat_test.h - helpers shared by the adapter tests (test_openai_chat.c,
 * test_anthropic.c, test_gemini.c). Include after <cmocka.h>. */
#ifndef TG_TEST_CHAT_TEST_H
#define TG_TEST_CHAT_TEST_H

#include <stdio.h>
#include <stdlib.h>

#include "providers/chat.h"
#include "providers/sse.h"

/* The bytes of file dir + rel, NUL-terminated (free them); fails the test
 * when it cannot be read. */
static inline char *chat_test_read(const char *dir, const char *rel, size_t *len)
{
    char path[1024];
    assert_true(snprintf(path, sizeof(path), "%s%s", dir, rel) < (int)sizeof(path));
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

typedef struct chat_test_run {
    const chat_format *f;
    chat_stream *s;
    chat_emit_fn emit;
    void *ud;
} chat_test_run;

static inline int chat_test__on_sse(const sse_event *ev, void *ud)
{
    chat_test_run *r = ud;
    return r->f->stream_dec_feed(r->s, ev, r->emit, r->ud);
}

/* Runs n bytes of an SSE body through f's stream decoder, fed in pieces of
 * step bytes (0 = at once), then finishes it: the first non-zero result. */
static inline int chat_test_decode_sse(const chat_format *f, const char *p, size_t n, size_t step,
                                       chat_emit_fn emit, void *ud)
{
    chat_test_run r = {f, f->stream_dec_new(), emit, ud};
    sse_parser sp;
    assert_non_null(r.s);
    assert_int_equal(sse_parser_init(&sp, 1 << 20, chat_test__on_sse, &r), 0);
    int rc = 0;
    for (size_t pos = 0; pos < n && !rc;) {
        size_t k = step && n - pos > step ? step : n - pos;
        rc = sse_parser_feed(&sp, p + pos, k);
        pos += k;
    }
    if (!rc)
        rc = sse_parser_finish(&sp);
    if (!rc)
        rc = f->stream_dec_finish(r.s, emit, ud);
    sse_parser_free(&sp);
    f->stream_free(r.s);
    return rc;
}

#endif
