/* test_sse.c - the SSE parser and writer, against every recorded provider
 * stream split at every possible point, and against hand-made edge cases. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "providers/sse.h"

#define MAX_EVENT (1u << 20)

/* ---- recording events ---- */

typedef struct rec_event {
    char *event, *data, *id, *raw; /* NUL-terminated copies */
    size_t event_len, data_len, id_len, raw_len;
    bool has_data, has_id;
    int64_t retry;
    bool in_place;  /* raw and data pointed into the fed chunk */
} rec_event;

typedef struct recorder {
    rec_event *ev;
    size_t n, cap;
    const char *chunk;   /* the chunk being fed, to tell zero-copy events */
    size_t chunk_len;
    int stop_at;         /* return stop_rc from the stop_at-th event (1-based); 0 never */
    int stop_rc;
} recorder;

static char *dup_bytes(slice s)
{
    char *p = malloc(s.len + 1);
    assert_non_null(p);
    if (s.len)
        memcpy(p, s.p, s.len);
    p[s.len] = '\0';
    return p;
}

static bool inside(const char *p, size_t n, const char *chunk, size_t chunk_len)
{
    uintptr_t a = (uintptr_t)p, c = (uintptr_t)chunk;
    return chunk && a >= c && a + n <= c + chunk_len;
}

static int record_cb(const sse_event *e, void *ud)
{
    recorder *r = ud;
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->ev = realloc(r->ev, r->cap * sizeof(*r->ev));
        assert_non_null(r->ev);
    }
    rec_event *x = &r->ev[r->n++];
    x->event = dup_bytes(e->event);
    x->event_len = e->event.len;
    x->data = dup_bytes(e->data);
    x->data_len = e->data.len;
    x->id = dup_bytes(e->id);
    x->id_len = e->id.len;
    x->raw = dup_bytes(e->raw);
    x->raw_len = e->raw.len;
    x->has_data = e->has_data;
    x->has_id = e->has_id;
    x->retry = e->retry;
    x->in_place = inside(e->raw.p, e->raw.len, r->chunk, r->chunk_len) &&
                  (e->data.len == 0 || inside(e->data.p, e->data.len, r->chunk, r->chunk_len));
    if (r->stop_at && (int)r->n == r->stop_at)
        return r->stop_rc;
    return 0;
}

static void recorder_free(recorder *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->ev[i].event);
        free(r->ev[i].data);
        free(r->ev[i].id);
        free(r->ev[i].raw);
    }
    free(r->ev);
    memset(r, 0, sizeof(*r));
}

static int feed(sse_parser *p, recorder *r, const char *d, size_t n)
{
    r->chunk = d;
    r->chunk_len = n;
    int rc = sse_parser_feed(p, d, n);
    r->chunk = NULL;
    r->chunk_len = 0;
    return rc;
}

/* Parses s in one feed into r; returns the finish() result. */
static int parse_all(recorder *r, const char *s, size_t n)
{
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, MAX_EVENT, record_cb, r), 0);
    assert_int_equal(feed(&p, r, s, n), 0);
    int rc = sse_parser_finish(&p);
    sse_parser_free(&p);
    return rc;
}

static void assert_bytes(const char *got, size_t got_len, const char *want, size_t want_len)
{
    assert_int_equal(got_len, want_len);
    if (want_len)
        assert_memory_equal(got, want, want_len);
}
#define assert_rec_str(field, lit) assert_bytes(field, field##_len, lit, sizeof(lit) - 1)

/* ---- fixtures ---- */

typedef struct file_list {
    char **path;
    size_t n, cap;
} file_list;

static void find_sse(file_list *fl, const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        int w = snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        assert_true(w > 0 && (size_t)w < sizeof(path));
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        if (S_ISDIR(st.st_mode)) {
            find_sse(fl, path);
            continue;
        }
        size_t l = strlen(de->d_name);
        if (!S_ISREG(st.st_mode) || l < 4 || strcmp(de->d_name + l - 4, ".sse") != 0)
            continue;
        if (fl->n == fl->cap) {
            fl->cap = fl->cap ? fl->cap * 2 : 16;
            fl->path = realloc(fl->path, fl->cap * sizeof(*fl->path));
            assert_non_null(fl->path);
        }
        fl->path[fl->n] = strdup(path);
        assert_non_null(fl->path[fl->n]);
        fl->n++;
    }
    closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return s;
}

static char *read_fixture(const char *rel, size_t *len)
{
    char path[4096];
    int w = snprintf(path, sizeof(path), "%s/providers/%s", TG_FIXTURES, rel);
    assert_true(w > 0 && (size_t)w < sizeof(path));
    return read_file(path, len);
}

/* Compares each event with the reference as it arrives, and its raw bytes
 * with the input at the running offset. */
typedef struct checker {
    const recorder *ref;
    size_t i;       /* events seen */
    const char *in; /* the whole input */
    size_t in_len;
    size_t off;     /* raw bytes seen */
} checker;

static int check_cb(const sse_event *e, void *ud)
{
    checker *c = ud;
    assert_true(c->i < c->ref->n);
    const rec_event *r = &c->ref->ev[c->i++];
    assert_bytes(e->event.p, e->event.len, r->event, r->event_len);
    assert_bytes(e->data.p, e->data.len, r->data, r->data_len);
    assert_bytes(e->id.p, e->id.len, r->id, r->id_len);
    assert_int_equal(e->has_data, r->has_data);
    assert_int_equal(e->has_id, r->has_id);
    assert_int_equal(e->retry, r->retry);
    assert_bytes(e->raw.p, e->raw.len, r->raw, r->raw_len);
    assert_true(c->off + e->raw.len <= c->in_len);
    assert_memory_equal(e->raw.p, c->in + c->off, e->raw.len);
    c->off += e->raw.len;
    return 0;
}

/* Feeds in cut into chunks at cuts[0..ncuts) (ascending) and checks the
 * events against ref. */
static void check_split(const recorder *ref, const char *in, size_t n, const size_t *cuts,
                        size_t ncuts)
{
    checker c = {ref, 0, in, n, 0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, MAX_EVENT, check_cb, &c), 0);
    size_t pos = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : n;
        /* Copy each chunk so that slices into a previous chunk would be
         * caught by ASan once it is freed. */
        char *chunk = malloc(end - pos + 1);
        assert_non_null(chunk);
        memcpy(chunk, in + pos, end - pos);
        assert_int_equal(sse_parser_feed(&p, chunk, end - pos), 0);
        free(chunk);
        pos = end;
    }
    assert_int_equal(sse_parser_finish(&p), 0);
    assert_int_equal(sse_parser_tail(&p).len, 0);
    assert_int_equal(c.i, ref->n);
    assert_int_equal(c.off, n);
    sse_parser_free(&p);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t count_prefix_lines(const char *s, size_t n, const char *prefix)
{
    size_t k = 0, pl = strlen(prefix);
    for (size_t i = 0; i + pl <= n; i++)
        if ((i == 0 || s[i - 1] == '\n') && memcmp(s + i, prefix, pl) == 0)
            k++;
    return k;
}

static void check_fixture(const char *path)
{
    size_t n;
    char *in = read_file(path, &n);
    print_message("  %s (%zu bytes)\n", path, n);
    assert_true(n > 0);

    /* Reference: the whole file in one feed. */
    recorder ref = {0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, MAX_EVENT, record_cb, &ref), 0);
    assert_int_equal(feed(&p, &ref, in, n), 0);
    assert_int_equal(sse_parser_tail(&p).len, 0);
    /* Allocation-free: no block buffered, no data joined. */
    assert_null(p.block.data);
    assert_null(p.join.data);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);

    assert_true(ref.n > 0);
    size_t off = 0, ndata = 0;
    for (size_t i = 0; i < ref.n; i++) {
        const rec_event *e = &ref.ev[i];
        assert_true(e->in_place);
        assert_true(off + e->raw_len <= n);
        assert_memory_equal(e->raw, in + off, e->raw_len);
        off += e->raw_len;
        if (!e->has_data)
            continue;
        ndata++;
        if (strcmp(e->data, "[DONE]") == 0)
            continue;
        json_error_t jerr;
        json_t *j = json_loadb(e->data, e->data_len, 0, &jerr);
        if (!j)
            print_error("%s event %zu: %s\n", path, i, jerr.text);
        assert_non_null(j);
        json_decref(j);
    }
    assert_int_equal(off, n);
    /* Every fixture event has exactly one data line (or is a comment). */
    assert_int_equal(ndata, count_prefix_lines(in, n, "data:"));

    /* Two feeds, split at every point. */
    for (size_t k = 0; k <= n; k++)
        check_split(&ref, in, n, &k, 1);

    /* Byte by byte. */
    size_t *cuts = malloc(n * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t k = 0; k + 1 < n; k++)
        cuts[k] = k + 1;
    check_split(&ref, in, n, cuts, n - 1);

    /* Seeded random multi-splits, small and large chunks. */
    uint64_t seed = 0x9E3779B97F4A7C15ull ^ n;
    for (int run = 0; run < 64; run++) {
        size_t nc = 0, pos = 0, span = run % 2 ? 7 : 300;
        for (;;) {
            pos += 1 + (size_t)(rng_next(&seed) % span);
            if (pos >= n)
                break;
            cuts[nc++] = pos;
        }
        check_split(&ref, in, n, cuts, nc);
    }
    free(cuts);
    recorder_free(&ref);
    free(in);
}

static void test_every_fixture_any_split(void **state)
{
    (void)state;
    file_list fl = {0};
    find_sse(&fl, TG_FIXTURES "/providers");
    qsort(fl.path, fl.n, sizeof(*fl.path), cmp_str);
    /* The README lists 15 streams, one of them the CRLF wire original. */
    assert_true(fl.n >= 15);
    bool saw_crlf = false;
    for (size_t i = 0; i < fl.n; i++) {
        if (strstr(fl.path[i], ".wire_crlf.sse"))
            saw_crlf = true;
        check_fixture(fl.path[i]);
        free(fl.path[i]);
    }
    assert_true(saw_crlf);
    free(fl.path);
}

/* ---- known content ---- */

static void test_anthropic_event_order(void **state)
{
    (void)state;
    static const char *const want[] = {"message_start",       "content_block_start",
                                       "ping",                "content_block_delta",
                                       "content_block_stop",  "message_delta",
                                       "message_stop"};
    size_t n;
    char *in = read_fixture("anthropic/messages_stream.sse", &n);
    recorder r = {0};
    assert_int_equal(parse_all(&r, in, n), 0);
    assert_int_equal(r.n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < r.n; i++) {
        assert_string_equal(r.ev[i].event, want[i]);
        assert_true(r.ev[i].has_data);
        /* The JSON "type" matches the event name. */
        json_t *j = json_loadb(r.ev[i].data, r.ev[i].data_len, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "type")), want[i]);
        json_decref(j);
    }
    recorder_free(&r);
    free(in);
}

static void test_anthropic_error_event(void **state)
{
    (void)state;
    size_t n;
    char *in = read_fixture("anthropic/messages_stream_error_event.sse", &n);
    recorder r = {0};
    assert_int_equal(parse_all(&r, in, n), 0);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.ev[0].event, "error");
    assert_non_null(strstr(r.ev[0].data, "overloaded_error"));
    recorder_free(&r);
    free(in);
}

static void test_openai_ends_with_done(void **state)
{
    (void)state;
    size_t n;
    char *in = read_fixture("openai/chat_stream.sse", &n);
    recorder r = {0};
    assert_int_equal(parse_all(&r, in, n), 0);
    assert_true(r.n > 2);
    for (size_t i = 0; i < r.n; i++) {
        assert_true(r.ev[i].has_data);
        assert_int_equal(r.ev[i].event_len, 0);
        assert_int_equal(strcmp(r.ev[i].data, "[DONE]") == 0, i == r.n - 1);
    }
    assert_rec_str(r.ev[r.n - 1].raw, "data: [DONE]\n\n");
    recorder_free(&r);
    free(in);
}

static void test_openrouter_comment_blocks(void **state)
{
    (void)state;
    size_t n;
    char *in = read_fixture("openrouter/chat_stream.sse", &n);
    recorder r = {0};
    assert_int_equal(parse_all(&r, in, n), 0);
    size_t comments = 0;
    for (size_t i = 0; i < r.n; i++) {
        if (r.ev[i].has_data)
            continue;
        comments++;
        assert_rec_str(r.ev[i].raw, ": OPENROUTER PROCESSING\n\n");
        assert_int_equal(r.ev[i].event_len, 0);
        assert_int_equal(r.ev[i].data_len, 0);
    }
    assert_int_equal(comments, count_prefix_lines(in, n, ": OPENROUTER PROCESSING"));
    assert_true(comments >= 2);
    assert_false(r.ev[0].has_data); /* the stream opens with keep-alives */
    assert_string_equal(r.ev[r.n - 1].data, "[DONE]");
    recorder_free(&r);
    free(in);
}

static void test_gemini_crlf_equals_lf(void **state)
{
    (void)state;
    size_t nl, nc;
    char *lf = read_fixture("gemini/stream_generate_content.sse", &nl);
    char *crlf = read_fixture("gemini/stream_generate_content.wire_crlf.sse", &nc);
    recorder a = {0}, b = {0};
    assert_int_equal(parse_all(&a, lf, nl), 0);
    assert_int_equal(parse_all(&b, crlf, nc), 0);
    assert_true(a.n > 1);
    assert_int_equal(a.n, b.n);
    for (size_t i = 0; i < a.n; i++) {
        assert_true(b.ev[i].has_data);
        assert_bytes(b.ev[i].data, b.ev[i].data_len, a.ev[i].data, a.ev[i].data_len);
        /* The raw bytes keep the wire's CRLF. */
        assert_true(b.ev[i].raw_len >= 4);
        assert_memory_equal(b.ev[i].raw + b.ev[i].raw_len - 4, "\r\n\r\n", 4);
        assert_memory_equal(a.ev[i].raw + a.ev[i].raw_len - 2, "\n\n", 2);
    }
    recorder_free(&a);
    recorder_free(&b);
    free(lf);
    free(crlf);
}

/* ---- edge cases ---- */

#define PARSE(r, lit) parse_all(r, lit, sizeof(lit) - 1)

static void test_multiline_data(void **state)
{
    (void)state;
    recorder r = {0};
    static const char in[] = "data: a\ndata: b\ndata:\ndata: c\n\ndata: single\n\n";
    assert_int_equal(PARSE(&r, in), 0);
    assert_int_equal(r.n, 2);
    assert_rec_str(r.ev[0].data, "a\nb\n\nc");
    assert_false(r.ev[0].in_place); /* joined into the parser's buffer */
    assert_rec_str(r.ev[0].raw, "data: a\ndata: b\ndata:\ndata: c\n\n");
    assert_rec_str(r.ev[1].data, "single");
    assert_true(r.ev[1].in_place); /* a single line is not copied */
    recorder_free(&r);

    /* The join survives the block being split across feeds. */
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: one\nda", 12), 0);
    assert_int_equal(feed(&p, &r, "ta: two\nevent: e\ndata: three\n", 29), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(feed(&p, &r, "\n", 1), 0);
    assert_int_equal(r.n, 1);
    assert_rec_str(r.ev[0].data, "one\ntwo\nthree");
    assert_rec_str(r.ev[0].event, "e");
    assert_rec_str(r.ev[0].raw, "data: one\ndata: two\nevent: e\ndata: three\n\n");
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void test_line_endings(void **state)
{
    (void)state;
    recorder r = {0};
    /* Lone CR, CRLF, LF and a mix; LF CR ends a line then a blank line. */
    static const char in[] = "event: x\rdata: 1\r\rdata: 2\r\n\r\ndata: 3\n\r\ndata: 4\r\n\n"
                             "data: 5\n\r";
    assert_int_equal(PARSE(&r, in), 0);
    assert_int_equal(r.n, 5);
    assert_rec_str(r.ev[0].event, "x");
    assert_rec_str(r.ev[0].data, "1");
    assert_rec_str(r.ev[0].raw, "event: x\rdata: 1\r\r");
    assert_rec_str(r.ev[1].raw, "data: 2\r\n\r\n");
    assert_rec_str(r.ev[2].raw, "data: 3\n\r\n");
    assert_rec_str(r.ev[3].raw, "data: 4\r\n\n");
    assert_rec_str(r.ev[4].raw, "data: 5\n\r"); /* held, dispatched by finish */
    for (size_t i = 0; i < 5; i++) {
        char want[2] = {(char)('1' + i), '\0'};
        assert_string_equal(r.ev[i].data, want);
    }
    recorder_free(&r);

    /* Empty blocks are reported one by one. */
    assert_int_equal(PARSE(&r, "\n\r\n\r"), 0);
    assert_int_equal(r.n, 3);
    assert_rec_str(r.ev[0].raw, "\n");
    assert_rec_str(r.ev[1].raw, "\r\n");
    assert_rec_str(r.ev[2].raw, "\r");
    assert_false(r.ev[0].has_data);
    recorder_free(&r);
}

static void test_crlf_split_between_cr_and_lf(void **state)
{
    (void)state;
    recorder r = {0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    /* The blank line's CR is the last byte: the block waits for its LF. */
    assert_int_equal(feed(&p, &r, "data: a\r\n\r", 10), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(sse_parser_tail(&p).len, 10);
    assert_int_equal(feed(&p, &r, "\ndata: b\r", 9), 0);
    assert_int_equal(r.n, 1);
    assert_rec_str(r.ev[0].raw, "data: a\r\n\r\n");
    /* A data line ending in CR at the chunk end: its LF comes next. */
    assert_int_equal(feed(&p, &r, "\n\r", 2), 0);
    assert_int_equal(r.n, 1);
    /* Not an LF: the held block is complete as it was. */
    assert_int_equal(feed(&p, &r, "data: c\n\n", 9), 0);
    assert_int_equal(r.n, 3);
    assert_rec_str(r.ev[1].raw, "data: b\r\n\r");
    assert_rec_str(r.ev[1].data, "b");
    assert_rec_str(r.ev[2].raw, "data: c\n\n");
    assert_true(r.ev[2].in_place);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void test_bom(void **state)
{
    (void)state;
    static const char in[] = "\xEF\xBB\xBF" "data: x\n\n\xEF\xBB\xBF" "data: y\n\n";
    recorder r = {0};
    assert_int_equal(PARSE(&r, in), 0);
    assert_int_equal(r.n, 2);
    assert_true(r.ev[0].has_data);
    assert_rec_str(r.ev[0].data, "x");
    assert_rec_str(r.ev[0].raw, "\xEF\xBB\xBF" "data: x\n\n"); /* kept in raw */
    /* Only at the very start: later it is part of an unknown field name. */
    assert_false(r.ev[1].has_data);
    recorder_free(&r);

    /* Split inside the BOM, byte by byte. */
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    for (size_t i = 0; i < 12; i++)
        assert_int_equal(feed(&p, &r, in + i, 1), 0);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    assert_int_equal(r.n, 1);
    assert_rec_str(r.ev[0].data, "x");
    recorder_free(&r);

    /* A BOM alone on the first line makes it blank. */
    assert_int_equal(PARSE(&r, "\xEF\xBB\xBF\ndata: z\n\n"), 0);
    assert_int_equal(r.n, 2);
    assert_rec_str(r.ev[0].raw, "\xEF\xBB\xBF\n");
    assert_rec_str(r.ev[1].data, "z");
    recorder_free(&r);
}

static void test_fields(void **state)
{
    (void)state;
    recorder r = {0};
    static const char in[] = "data\n\n"                 /* no colon: empty value */
                             "event\ndata:x\n\n"        /* empty event; no space */
                             "data:  two spaces \n\n"   /* only one space is stripped */
                             "foo: bar\nDATA: no\ndata: kept\n\n" /* unknown fields */
                             ": just a comment\n\n"     /* comment-only block */
                             "event: a\nevent: b\ndata: d:e:f\n\n"
                             "data:\n\n";               /* empty data still counts */
    assert_int_equal(PARSE(&r, in), 0);
    assert_int_equal(r.n, 7);
    assert_true(r.ev[0].has_data);
    assert_int_equal(r.ev[0].data_len, 0);
    assert_int_equal(r.ev[1].event_len, 0);
    assert_rec_str(r.ev[1].data, "x");
    assert_rec_str(r.ev[2].data, " two spaces ");
    assert_rec_str(r.ev[3].data, "kept");
    assert_false(r.ev[4].has_data);
    assert_int_equal(r.ev[4].event_len, 0);
    assert_rec_str(r.ev[4].raw, ": just a comment\n\n");
    assert_rec_str(r.ev[5].event, "b");
    assert_rec_str(r.ev[5].data, "d:e:f");
    assert_true(r.ev[6].has_data);
    assert_int_equal(r.ev[6].data_len, 0);
    for (size_t i = 0; i < r.n; i++) {
        assert_false(r.ev[i].has_id);
        assert_int_equal(r.ev[i].retry, -1);
    }
    recorder_free(&r);
}

static void test_retry_and_id(void **state)
{
    (void)state;
    recorder r = {0};
    static const char in[] = "id: 42\nretry: 1500\ndata: a\n\n"
                             "retry: 15a\nretry:\nretry: -1\n\n"     /* invalid: ignored */
                             "retry: 99999999999999999999999\n\n"   /* overflow: ignored */
                             "retry: 7\nretry: x\nid\n\n"            /* last valid wins; empty id */
                             "id: a\0b\nid:z\n\n"                   /* NUL id ignored */
                             "id: a\0b\n\n";
    assert_int_equal(parse_all(&r, in, sizeof(in) - 1), 0);
    assert_int_equal(r.n, 6);
    assert_rec_str(r.ev[0].id, "42");
    assert_true(r.ev[0].has_id);
    assert_int_equal(r.ev[0].retry, 1500);
    assert_int_equal(r.ev[1].retry, -1);
    assert_false(r.ev[1].has_id);
    assert_int_equal(r.ev[2].retry, -1);
    assert_int_equal(r.ev[3].retry, 7);
    assert_true(r.ev[3].has_id);
    assert_int_equal(r.ev[3].id_len, 0);
    assert_rec_str(r.ev[4].id, "z");
    assert_false(r.ev[5].has_id);
    recorder_free(&r);
}

static void test_cap_buffered(void **state)
{
    (void)state;
    recorder r = {0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 32, record_cb, &r), 0);
    /* Exactly the cap is fine, across feeds. */
    assert_int_equal(feed(&p, &r, "data: 0123456789012345678", 25), 0);
    assert_int_equal(r.n, 0);
    assert_int_equal(feed(&p, &r, "90123\n\nd", 8), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.ev[0].raw_len, 32);
    assert_false(r.ev[0].in_place);
    assert_int_equal(feed(&p, &r, "ata: 0123456789012345678901\n", 28), 0);
    assert_int_equal(feed(&p, &r, "\n", 1), 0); /* 30 bytes: fine */
    assert_int_equal(r.n, 2);
    assert_rec_str(r.ev[1].data, "0123456789012345678901");
    /* 35 bytes, split: refused as soon as the buffer would pass the cap. */
    assert_int_equal(feed(&p, &r, "data: 01234567890123456789", 26), 0);
    assert_int_equal(feed(&p, &r, "0123456789\n\n", 12), -E2BIG);
    /* Dead from now on, and nothing was allocated past the cap. */
    assert_true(p.block.cap <= 32);
    assert_int_equal(feed(&p, &r, "\n", 1), -E2BIG);
    assert_int_equal(sse_parser_finish(&p), -E2BIG);
    assert_int_equal(r.n, 2);
    sse_parser_free(&p);
    recorder_free(&r);

    /* A multi-line join over the cap is refused too. */
    assert_int_equal(sse_parser_init(&p, 16, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data:a\ndata:b\n", 14), 0);
    assert_int_equal(feed(&p, &r, "data:c\n", 7), -E2BIG);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void test_cap_zero_copy(void **state)
{
    (void)state;
    recorder r = {0};
    sse_parser p;
    /* One chunk: a small event, then one of 40 bytes over a 32-byte cap. */
    static const char in[] = "data: ok\n\ndata: 0123456789012345678901234567890\n\ndata: x\n\n";
    assert_int_equal(sse_parser_init(&p, 32, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, in, sizeof(in) - 1), -E2BIG);
    assert_int_equal(r.n, 1);
    assert_rec_str(r.ev[0].data, "ok");
    assert_true(r.ev[0].in_place);
    assert_null(p.block.data);
    sse_parser_free(&p);
    recorder_free(&r);

    /* An unterminated tail over the cap is refused when it is kept. */
    assert_int_equal(sse_parser_init(&p, 32, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, in + 10, 35), -E2BIG);
    sse_parser_free(&p);

    /* A complete block of exactly the cap passes in one chunk. */
    assert_int_equal(sse_parser_init(&p, 11, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: abc\n\n", 11), 0);
    assert_int_equal(r.n, 1);
    assert_true(r.ev[0].in_place);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void test_callback_stops(void **state)
{
    (void)state;
    recorder r = {.stop_at = 2, .stop_rc = 7};
    sse_parser p;
    static const char in[] = "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4";
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, in, sizeof(in) - 1), 7);
    assert_int_equal(r.n, 2);
    assert_int_equal(feed(&p, &r, "\n\n", 2), 7);
    assert_int_equal(sse_parser_finish(&p), 7);
    assert_int_equal(r.n, 2);
    sse_parser_free(&p);
    recorder_free(&r);

    /* Stopping from a buffered block, and from finish(). */
    r = (recorder){.stop_at = 1, .stop_rc = -ECANCELED};
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: 1\n", 8), 0);
    assert_int_equal(feed(&p, &r, "\ndata: 2\n\n", 10), -ECANCELED);
    assert_int_equal(r.n, 1);
    sse_parser_free(&p);
    recorder_free(&r);
    r = (recorder){.stop_at = 1, .stop_rc = 3};
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: 1\r\r", 9), 0);
    assert_int_equal(sse_parser_finish(&p), 3);
    assert_int_equal(r.n, 1);
    sse_parser_free(&p);
    recorder_free(&r);
}

static void test_finish_unterminated(void **state)
{
    (void)state;
    recorder r = {0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: a\n\ndata: b\n", 17), 0);
    assert_int_equal(r.n, 1);
    assert_int_equal(sse_parser_finish(&p), SSE_UNTERMINATED);
    assert_int_equal(r.n, 1); /* the tail is not dispatched */
    slice t = sse_parser_tail(&p);
    assert_bytes(t.p, t.len, "data: b\n", 8);
    assert_int_equal(sse_parser_feed(&p, "\n", 1), -EINVAL);
    assert_int_equal(sse_parser_finish(&p), -EINVAL);
    sse_parser_free(&p);
    recorder_free(&r);

    /* A line ending in CR at the very end is still unterminated. */
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: a\r", 8), 0);
    assert_int_equal(sse_parser_finish(&p), SSE_UNTERMINATED);
    assert_int_equal(r.n, 0);
    sse_parser_free(&p);

    /* Clean end, empty stream. */
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(sse_parser_feed(&p, "", 0), 0);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    assert_int_equal(sse_parser_init(&p, 64, NULL, &r), -EINVAL);
    assert_int_equal(sse_parser_init(&p, 0, record_cb, &r), -EINVAL);
}

static void test_zero_copy_vs_buffered(void **state)
{
    (void)state;
    recorder r = {0};
    sse_parser p;
    assert_int_equal(sse_parser_init(&p, 64, record_cb, &r), 0);
    assert_int_equal(feed(&p, &r, "data: 1\n\ndata: 2\n\nda", 20), 0);
    assert_int_equal(feed(&p, &r, "ta: 3\n\ndata: 4\n\n", 16), 0);
    assert_int_equal(r.n, 4);
    assert_true(r.ev[0].in_place);
    assert_true(r.ev[1].in_place);
    assert_false(r.ev[2].in_place); /* split across feeds: copied */
    assert_rec_str(r.ev[2].data, "3");
    assert_true(r.ev[3].in_place);  /* back to zero copy after it */
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
    recorder_free(&r);
}

/* ---- writer ---- */

static void test_writer_format(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 4096);
    assert_int_equal(sse_write_event(&b, "ping", 4, "{}", 2), 0);
    assert_string_equal(b.data, "event: ping\ndata: {}\n\n");
    buf_reset(&b);
    assert_int_equal(sse_write_event(&b, NULL, 0, "a\nb\r\nc\r\n", 8), 0);
    assert_string_equal(b.data, "data: a\ndata: b\ndata: c\ndata:\n\n");
    buf_reset(&b);
    assert_int_equal(sse_write_event(&b, NULL, 0, NULL, 0), 0);
    assert_string_equal(b.data, "data:\n\n");
    buf_reset(&b);
    assert_int_equal(sse_write_comment(&b, "OPENROUTER PROCESSING", 21), 0);
    assert_string_equal(b.data, ": OPENROUTER PROCESSING\n\n");
    buf_reset(&b);
    assert_int_equal(sse_write_done(&b), 0);
    assert_string_equal(b.data, "data: [DONE]\n\n");
    assert_int_equal(sse_write_event(&b, "a\nb", 3, "x", 1), -EINVAL);
    assert_string_equal(b.data, "data: [DONE]\n\n");
    buf_free(&b);

    /* Over the cap nothing is appended, for short and long event names. */
    buf_init(&b, 20);
    assert_int_equal(sse_write_event(&b, NULL, 0, "1234", 4), 0);
    size_t before = b.len;
    assert_int_equal(sse_write_event(&b, "e", 1, "123456789", 9), -E2BIG);
    assert_int_equal(b.len, before);
    char longname[100];
    memset(longname, 'n', sizeof(longname));
    assert_int_equal(sse_write_event(&b, longname, 60, "x", 1), -E2BIG);
    assert_int_equal(b.len, before);
    assert_string_equal(b.data, "data: 1234\n\n");
    buf_free(&b);
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    char longname[80];
    memset(longname, 'q', sizeof(longname));
    static const struct {
        const char *event, *data, *want;
    } ev[] = {
        {"message_start", "{\"type\":\"message_start\"}", "{\"type\":\"message_start\"}"},
        {NULL, "line1\nline2\n\nline4", "line1\nline2\n\nline4"},
        {NULL, "", ""},
        {"x", "trailing\n", "trailing\n"},
        {NULL, " leading space", " leading space"},
        {"cr", "a\r\nb\rc", "a\nb\nc"},
        {NULL, "\n", "\n"},
    };
    size_t nev = sizeof(ev) / sizeof(ev[0]);
    buf b;
    buf_init(&b, 1 << 16);
    for (size_t i = 0; i < nev; i++)
        assert_int_equal(sse_write_event(&b, ev[i].event, ev[i].event ? strlen(ev[i].event) : 0,
                                         ev[i].data, strlen(ev[i].data)),
                         0);
    assert_int_equal(sse_write_event(&b, longname, sizeof(longname), "L", 1), 0);
    assert_int_equal(sse_write_comment(&b, "keep\nalive", 10), 0);
    assert_int_equal(sse_write_done(&b), 0);

    for (size_t step = 0; step < 2; step++) {
        recorder r = {0};
        sse_parser p;
        assert_int_equal(sse_parser_init(&p, 4096, record_cb, &r), 0);
        if (step == 0) {
            assert_int_equal(feed(&p, &r, b.data, b.len), 0);
        } else {
            for (size_t i = 0; i < b.len; i++)
                assert_int_equal(feed(&p, &r, b.data + i, 1), 0);
        }
        assert_int_equal(sse_parser_finish(&p), 0);
        sse_parser_free(&p);
        assert_int_equal(r.n, nev + 3);
        for (size_t i = 0; i < nev; i++) {
            assert_true(r.ev[i].has_data);
            assert_string_equal(r.ev[i].data, ev[i].want);
            assert_string_equal(r.ev[i].event, ev[i].event ? ev[i].event : "");
        }
        assert_bytes(r.ev[nev].event, r.ev[nev].event_len, longname, sizeof(longname));
        assert_string_equal(r.ev[nev].data, "L");
        assert_false(r.ev[nev + 1].has_data);
        assert_rec_str(r.ev[nev + 1].raw, ": keep\n: alive\n\n");
        assert_string_equal(r.ev[nev + 2].data, "[DONE]");
        size_t off = 0;
        for (size_t i = 0; i < r.n; i++) {
            assert_memory_equal(r.ev[i].raw, b.data + off, r.ev[i].raw_len);
            off += r.ev[i].raw_len;
        }
        assert_int_equal(off, b.len);
        recorder_free(&r);
    }
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_fixture_any_split),
        cmocka_unit_test(test_anthropic_event_order),
        cmocka_unit_test(test_anthropic_error_event),
        cmocka_unit_test(test_openai_ends_with_done),
        cmocka_unit_test(test_openrouter_comment_blocks),
        cmocka_unit_test(test_gemini_crlf_equals_lf),
        cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_crlf_split_between_cr_and_lf),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_retry_and_id),
        cmocka_unit_test(test_cap_buffered),
        cmocka_unit_test(test_cap_zero_copy),
        cmocka_unit_test(test_callback_stops),
        cmocka_unit_test(test_finish_unterminated),
        cmocka_unit_test(test_zero_copy_vs_buffered),
        cmocka_unit_test(test_writer_format),
        cmocka_unit_test(test_writer_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
