/* test_meter.c - the streaming meter: incremental counts equal one-shot
 * counts at every split point, the fixtures' streams cut at every event,
 * no allocation per delta, prompt counting against provider usage.
 *
 * Linked with -Wl,--wrap=malloc,realloc,calloc (test/CMakeLists.txt) so
 * the allocations of tollgate's own code can be counted. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "billing/meter.h"
#include "billing/tokenizer.h"
#include "providers/openai.h"
#include "providers/sse.h"

/* ----------------------------------------------------- allocation count */

void *__real_malloc(size_t n);
void *__real_realloc(void *p, size_t n);
void *__real_calloc(size_t n, size_t m);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__wrap_calloc(size_t n, size_t m);
static unsigned long allocs;
void *__wrap_malloc(size_t n)
{
    allocs++;
    return __real_malloc(n);
}
void *__wrap_realloc(void *p, size_t n)
{
    allocs++;
    return __real_realloc(p, n);
}
void *__wrap_calloc(size_t n, size_t m)
{
    allocs++;
    return __real_calloc(n, m);
}

/* ------------------------------------------------------------- helpers */

static tok_set toks;
static tok_work *work;

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
    p[len] = '\0';
    fclose(f);
    *n = (size_t)len;
    return p;
}

static uint32_t rng = 12345;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* Feeds text in the given cut points and returns the meter's count. */
static uint64_t fed(const tok_enc *e, const char *t, size_t n, const size_t *cuts, size_t ncuts)
{
    meter m;
    meter_init(&m, e, work);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : n;
        meter_feed(&m, t + at, to - at);
        at = to;
    }
    uint64_t c = meter_count(&m);
    meter_free(&m);
    return c;
}

#define NEED_DATA()                                                                                \
    do {                                                                                           \
        if (!toks.o200k || !toks.cl100k)                                                           \
            skip();                                                                                \
    } while (0)

/* ------------------------------------------------------------------ tests */

static bool longest_piece(void *ud, size_t off, size_t len)
{
    size_t *l = ud;
    (void)off;
    if (len > *l)
        *l = len;
    return true;
}

static uint64_t clean_slices(size_t n) { return n / (METER_HOLD_MAX / 2) + 1; }

/* Every corpus file: one cut at every byte of its first 1.5 KB, and 20
 * random delta sequences of 1..24 bytes over the whole file, in both
 * encodings: always the one-shot count. */
static void test_incremental_equals_oneshot(void **state)
{
    (void)state;
    NEED_DATA();
    DIR *d = opendir(TG_SOURCE_DIR "/test/data/tokenizer");
    assert_non_null(d);
    struct dirent *de;
    size_t files = 0, checks = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strstr(de->d_name, ".md"))
            continue;
        char path[600];
        snprintf(path, sizeof path, "%s/test/data/tokenizer/%s", TG_SOURCE_DIR, de->d_name);
        size_t n;
        char *t = read_file(path, &n);
        assert_non_null(t);
        files++;
        const tok_enc *encs[2] = {toks.o200k, toks.cl100k};
        for (int k = 0; k < 2; k++) {
            uint64_t want = tok_count(encs[k], work, t, n);
            /* a piece longer than the hold-back buffer is counted in
             * slices (meter.h): allow one token per slice there */
            size_t longest = 0;
            buf clean;
            buf_init(&clean, 1 << 24);
            size_t held;
            assert_int_equal(tok_utf8_sanitize(&clean, t, n, true, &held), 0);
            tok_pieces(encs[k], work, clean.data ? clean.data : "", clean.len, longest_piece, &longest);
            buf_free(&clean);
            uint64_t slack = longest + 4 > METER_HOLD_MAX ? clean_slices(n) : 0;
            size_t lim = n < 1536 ? n : 1536;
            uint64_t want_prefix = tok_count(encs[k], work, t, lim);
            for (size_t cut = 0; cut <= lim; cut++) {
                uint64_t got = fed(encs[k], t, lim, &cut, 1);
                if (got != want_prefix)
                    fail_msg("%s %s: cut at %zu of %zu: %" PRIu64 " != %" PRIu64, de->d_name,
                             tok_name(encs[k]), cut, lim, got, want_prefix);
                checks++;
            }
            size_t *cuts = malloc((n + 1) * sizeof *cuts);
            for (int r = 0; r < 20; r++) {
                size_t nc = 0;
                for (size_t at = 0;;) {
                    at += 1 + rnd() % 24;
                    if (at >= n)
                        break;
                    cuts[nc++] = at;
                }
                uint64_t got = fed(encs[k], t, n, cuts, nc);
                if (got > want + slack || got + slack < want)
                    fail_msg("%s %s: random deltas (seed state %u): %" PRIu64 " != %" PRIu64,
                             de->d_name, tok_name(encs[k]), rng, got, want);
                checks++;
            }
            free(cuts);
        }
        free(t);
    }
    closedir(d);
    printf("# %zu files, %zu incremental counts equal to one-shot (pieces over 4 KiB: within a token per slice)\n", files, checks);
    assert_true(files >= 10);
}

/* A word longer than the hold-back buffer is counted in slices: close to
 * exact, never crashing, and text after it is exact again. */
static void test_long_piece(void **state)
{
    (void)state;
    NEED_DATA();
    size_t n = 3 * METER_HOLD_MAX + 100;
    char *t = malloc(n);
    for (size_t i = 0; i < n; i++)
        t[i] = (char)('a' + rnd() % 26);
    uint64_t want = tok_count(toks.o200k, work, t, n);
    size_t cuts[400];
    size_t nc = 0;
    for (size_t at = 7; at < n && nc < 400; at += 37)
        cuts[nc++] = at;
    uint64_t got = fed(toks.o200k, t, n, cuts, nc);
    printf("# %zu-letter word: exact %" PRIu64 ", metered %" PRIu64 "\n", n, want, got);
    assert_true(got + 4 >= want && got <= want + 4);
    free(t);
}

/* Two adjacent pieces that fill the hold-back buffer together: the first
 * is final, the second keeps growing; the count stays exact (found by
 * fuzz_tokenizer: x*2100 then !*2100 once counted one token too many). */
static void test_two_long_pieces(void **state)
{
    (void)state;
    NEED_DATA();
    static const size_t shapes[][2] = {{2100, 2100}, {3000, 1200}, {4000, 90}, {1, 4094}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        size_t a = shapes[s][0], b = shapes[s][1], n = a + b;
        char *t = malloc(n);
        memset(t, 'x', a);
        memset(t + a, '!', b);
        uint64_t want = tok_count(toks.o200k, work, t, n);
        size_t cuts[1200];
        size_t nc = 0;
        for (size_t at = 5; at < n && nc < 1200; at += 5)
            cuts[nc++] = at;
        uint64_t got = fed(toks.o200k, t, n, cuts, nc);
        if (got != want)
            fail_msg("%zu x + %zu !: meter %" PRIu64 ", exact %" PRIu64, a, b, got, want);
        free(t);
    }
}

/* Feeding a delta allocates nothing: the hold-back buffer comes once. */
static void test_no_allocation_per_delta(void **state)
{
    (void)state;
    NEED_DATA();
    static const char *const deltas[] = {"The", " capital", " of", " the", " UK", " is", " London",
                                         ".", " 😀", "\xF0\x9F", "\x98\x80", " naïve", "  ", "x"};
    meter m;
    meter_init(&m, toks.o200k, work);
    meter_feed(&m, "warm", 4); /* the hold buffer */
    unsigned long before = allocs;
    for (int r = 0; r < 200; r++)
        for (size_t i = 0; i < sizeof deltas / sizeof deltas[0]; i++)
            meter_feed(&m, deltas[i], strlen(deltas[i]));
    uint64_t c = meter_count(&m);
    meter_break(&m);
    assert_int_equal(allocs, before);
    assert_true(c > 2000);
    meter_free(&m);
}

/* ------------------------------------------------ fixture streams */

#define MAX_SEGS 64

typedef struct stream_run {
    meter m;
    buf seg[MAX_SEGS];  /* the text, one buffer per run of the same field */
    uint64_t seg_field[MAX_SEGS];
    size_t nseg;
    buf text;           /* all text, for the byte cuts */
    int64_t usage;      /* provider completion_tokens, -1 none */
    size_t events;      /* data events so far */
    size_t stop_at;     /* stop metering after this many events (SIZE_MAX: all) */
} stream_run;

static void text_collect(void *ud, openai_text_kind kind, int64_t choice, int64_t tool, const jscan_val *s)
{
    stream_run *r = ud;
    meter_openai_text(&r->m, kind, choice, tool, s);
    char dec[4096];
    size_t len;
    assert_int_equal(jscan_str_decode(s, dec, sizeof dec, &len), 0);
    uint64_t field = r->m.field;
    if (r->nseg == 0 || r->seg_field[r->nseg - 1] != field) {
        assert_true(r->nseg < MAX_SEGS);
        buf_init(&r->seg[r->nseg], 1 << 20);
        r->seg_field[r->nseg++] = field;
    }
    assert_int_equal(buf_append(&r->seg[r->nseg - 1], dec, len), 0);
    assert_int_equal(buf_append(&r->text, dec, len), 0);
}

/* One-shot count of the segments: what the meter must have counted. */
static uint64_t segs_count(const stream_run *r, const tok_enc *e)
{
    uint64_t n = 0;
    for (size_t i = 0; i < r->nseg; i++)
        n += tok_count(e, work, r->seg[i].data ? r->seg[i].data : "", r->seg[i].len);
    return n;
}

static int on_event(const sse_event *ev, void *ud)
{
    stream_run *r = ud;
    if (!ev->has_data || (ev->data.len == 6 && memcmp(ev->data.p, "[DONE]", 6) == 0))
        return 0;
    openai_chunk_info ci;
    if (openai_chunk_scan(ev->data.p, ev->data.len, &ci) != 0)
        return 0;
    if (ci.has_usage)
        r->usage = ci.usage.completion_tokens;
    if (r->events++ < r->stop_at)
        assert_int_equal(openai_each_text(ev->data.p, ev->data.len, true, text_collect, r), 0);
    return 0;
}

static size_t run_stream(const char *data, size_t n, size_t stop_at, const tok_enc *e, stream_run *r)
{
    memset(r, 0, sizeof *r);
    meter_init(&r->m, e, work);
    buf_init(&r->text, 1 << 20);
    r->usage = -1;
    r->stop_at = stop_at;
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 1 << 20, on_event, r), 0);
    assert_int_equal(sse_parser_feed(&p, data, n), 0);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    return r->events;
}

static void run_free(stream_run *r)
{
    meter_free(&r->m);
    buf_free(&r->text);
    for (size_t i = 0; i < r->nseg; i++)
        buf_free(&r->seg[i]);
}

/* The OpenAI-family stream fixtures: the meter against the provider's
 * completion_tokens (printed; the text-only ones must agree within the
 * end-of-turn token, since hidden framing is not on the wire), and cut
 * after every event: the meter's count is the count of the text relayed
 * up to the cut, plus the framing of what started. */
static void test_fixture_streams(void **state)
{
    (void)state;
    NEED_DATA();
    static const struct {
        const char *file;
        int max_diff; /* |meter - provider| allowed */
    } fx[] = {
        {"openai/chat_stream.sse", 0},
        {"openai/chat_stream_2024_gpt4o.sse", 1},
        {"openai/chat_stream_tool_call.sse", 2},
        {"openai/chat_stream_parallel_tool_calls.sse", 13},
        {"openrouter/chat_stream.sse", 13}, /* reasoning tokens the stream never shows */
    };
    int bad = 0;
    printf("# %-45s %8s %8s %6s\n", "fixture", "provider", "meter", "diff");
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) {
        char path[600];
        snprintf(path, sizeof path, "%s/providers/%s", TG_FIXTURES, fx[i].file);
        size_t n;
        char *data = read_file(path, &n);
        if (!data)
            fail_msg("missing fixture %s", path);
        stream_run r;
        size_t events = run_stream(data, n, SIZE_MAX, toks.o200k, &r);
        uint64_t got = meter_completion(&r.m);
        printf("# %-45s %8" PRId64 " %8" PRIu64 " %+6" PRId64 "\n", fx[i].file, r.usage, got,
               (int64_t)got - r.usage);
        assert_true(r.usage >= 0);
        int64_t diff = (int64_t)got - r.usage;
        if (diff < -fx[i].max_diff || diff > fx[i].max_diff)
            bad++;
        run_free(&r);
        /* cut after every event */
        for (size_t k = 0; k <= events; k++) {
            run_stream(data, n, k, toks.o200k, &r);
            uint64_t text_tokens = meter_count(&r.m);
            if (text_tokens != segs_count(&r, toks.o200k))
                fail_msg("%s cut after %zu events: meter %" PRIu64 ", one-shot %" PRIu64, fx[i].file,
                         k, text_tokens, segs_count(&r, toks.o200k));
            uint64_t est = meter_completion(&r.m);
            assert_true(est >= text_tokens);
            run_free(&r);
        }
        free(data);
    }
    assert_int_equal(bad, 0);
}

/* The content text of chat_stream.sse, cut at every byte and every event:
 * the meter counts exactly what was relayed. */
static void test_cut_content_every_byte(void **state)
{
    (void)state;
    NEED_DATA();
    char path[600];
    snprintf(path, sizeof path, "%s/providers/openai/chat_stream_2024_gpt4o.sse", TG_FIXTURES);
    size_t n;
    char *data = read_file(path, &n);
    assert_non_null(data);
    stream_run r;
    run_stream(data, n, SIZE_MAX, toks.o200k, &r);
    const char *text = r.text.data;
    size_t len = r.text.len;
    /* all content of one choice: the relayed text is a prefix of it */
    for (size_t cut = 0; cut <= len; cut++) {
        uint64_t got = fed(toks.o200k, text, cut, NULL, 0);
        assert_int_equal(got, tok_count(toks.o200k, work, text, cut));
    }
    /* and the whole stream metered equals the one-shot count of its text */
    assert_int_equal(meter_count(&r.m), tok_count(toks.o200k, work, text, len));
    run_free(&r);
    free(data);
}

/* Prompt counting (OpenAI's chat framing) against the provider's
 * prompt_tokens for each request/response pair. Printed; the plain chat
 * requests must match exactly, requests with tools within the recipe's
 * known error. */
static void test_prompt_counts(void **state)
{
    (void)state;
    NEED_DATA();
    static const struct {
        const char *req, *resp;
        int max_diff;
    } fx[] = {
        {"openai/chat_completion_request.json", "openai/chat_completion_response.json", 0},
        {"openai/chat_stream_request.json", "openai/chat_stream.sse", 4},
        {"openai/chat_stream_tool_call_request.json", "openai/chat_stream_tool_call.sse", 4},
        {"openai/chat_completion_tool_call_request.json", "openai/chat_completion_tool_call_response.json", 4},
    };
    int bad = 0;
    printf("# %-48s %8s %8s %6s\n", "request", "provider", "meter", "diff");
    for (size_t i = 0; i < sizeof fx / sizeof fx[0]; i++) {
        char p1[600], p2[600];
        snprintf(p1, sizeof p1, "%s/providers/%s", TG_FIXTURES, fx[i].req);
        snprintf(p2, sizeof p2, "%s/providers/%s", TG_FIXTURES, fx[i].resp);
        size_t n1, n2;
        char *req = read_file(p1, &n1), *resp = read_file(p2, &n2);
        assert_non_null(req);
        assert_non_null(resp);
        int64_t want = -1;
        const char *u = strstr(resp, "\"prompt_tokens\":");
        if (u)
            want = strtoll(u + 16, NULL, 10);
        else if ((u = strstr(resp, "\"prompt_tokens\": ")) != NULL)
            want = strtoll(u + 17, NULL, 10);
        assert_true(want > 0);
        uint64_t got = meter_prompt_openai(toks.o200k, work, req, n1);
        printf("# %-48s %8" PRId64 " %8" PRIu64 " %+6" PRId64 "\n", fx[i].req, want, got,
               (int64_t)got - want);
        int64_t diff = (int64_t)got - want;
        if (diff < -fx[i].max_diff || diff > fx[i].max_diff)
            bad++;
        free(req);
        free(resp);
    }
    assert_int_equal(bad, 0);
    /* without data: a bytes/4 estimate, still > 0 */
    static const char body[] = "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}";
    assert_true(meter_prompt_openai(NULL, work, body, sizeof body - 1) > 0);
}

static void test_estimate_without_data(void **state)
{
    (void)state;
    meter m;
    meter_init(&m, NULL, work);
    meter_feed(&m, "hello world!", 12);
    assert_true(meter_estimate_only(&m));
    assert_int_equal(meter_count(&m), 3);
    meter_feed(&m, "x", 1);
    assert_int_equal(meter_count(&m), 4);
    meter_free(&m);
}

static int setup(void **state)
{
    (void)state;
    char err[512];
    if (tok_set_load(&toks, NULL, err, sizeof err) < 2)
        printf("# no tokenizer data (%s): data tests skip\n", err);
    work = tok_work_new();
    return work ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    tok_work_free(work);
    tok_set_free(&toks);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_incremental_equals_oneshot),
        cmocka_unit_test(test_long_piece),
        cmocka_unit_test(test_two_long_pieces),
        cmocka_unit_test(test_no_allocation_per_delta),
        cmocka_unit_test(test_fixture_streams),
        cmocka_unit_test(test_cut_content_every_byte),
        cmocka_unit_test(test_prompt_counts),
        cmocka_unit_test(test_estimate_without_data),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
