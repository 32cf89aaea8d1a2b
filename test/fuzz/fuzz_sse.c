/* fuzz_sse.c - libFuzzer driver for the SSE parser.
 *
 * The first input byte picks a split point, the rest is the stream. The
 * stream is parsed in one feed, in two feeds split at that point, and byte
 * by byte, each with a large and a small max_event_bytes. Every way must
 * report the same events with the same result, and when it succeeds the
 * raw bytes of the events followed by the tail must be the input itself.
 *
 *   clang -fsanitize=fuzzer,address -I. test/fuzz/fuzz_sse.c \
 *         providers/sse.c daemon/base/buf.c -o fuzz_sse
 *   ./fuzz_sse test/fuzz/corpus/sse */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define LOG_MAX (64u << 20)

/* What one way of feeding produced. */
typedef struct run {
    buf raw; /* raw bytes of all events, in order */
    buf log; /* every field of every event, length-prefixed */
} run;

static void must(int rc)
{
    if (rc)
        abort();
}

static void log_slice(buf *b, slice s)
{
    must(buf_append(b, &s.len, sizeof(s.len)));
    must(buf_append(b, s.p, s.len));
}

static int inside(slice s, slice raw)
{
    if (s.len == 0)
        return 1;
    uintptr_t a = (uintptr_t)s.p, r = (uintptr_t)raw.p;
    return a >= r && a + s.len <= r + raw.len;
}

static int on_event(const sse_event *ev, void *ud)
{
    run *r = ud;
    /* A block ends with the line break of its blank line. */
    if (ev->raw.len == 0 || (ev->raw.p[ev->raw.len - 1] != '\n' && ev->raw.p[ev->raw.len - 1] != '\r'))
        abort();
    /* Field values lie inside raw, except data joined from several lines. */
    if (!inside(ev->event, ev->raw) || !inside(ev->id, ev->raw))
        abort();
    if (!inside(ev->data, ev->raw) && !memchr(ev->data.p, '\n', ev->data.len))
        abort();
    if ((!ev->has_data && ev->data.len) || (!ev->has_id && ev->id.len))
        abort();
    must(buf_append(&r->raw, ev->raw.p, ev->raw.len));
    log_slice(&r->log, ev->event);
    log_slice(&r->log, ev->data);
    log_slice(&r->log, ev->id);
    log_slice(&r->log, ev->raw);
    char flags[2] = {(char)ev->has_data, (char)ev->has_id};
    must(buf_append(&r->log, flags, sizeof(flags)));
    must(buf_append(&r->log, &ev->retry, sizeof(ev->retry)));
    return 0;
}

/* Feeds s[0..n) cut at every multiple of step (0 = one feed) and at cut;
 * returns the first non-zero feed result, else finish()'s. */
static int parse(run *r, size_t max, const char *s, size_t n, size_t cut, size_t step)
{
    sse_parser p;
    int rc;

    buf_init(&r->raw, LOG_MAX);
    buf_init(&r->log, LOG_MAX);
    must(sse_parser_init(&p, max, on_event, r));
    size_t pos = 0;
    while (pos < n) {
        size_t end = step ? pos + step : n;
        if (pos < cut && cut < end)
            end = cut;
        if (end > n)
            end = n;
        /* A private copy, so a slice kept past its chunk is caught. */
        char *chunk = malloc(end - pos);
        if (!chunk)
            abort();
        memcpy(chunk, s + pos, end - pos);
        rc = sse_parser_feed(&p, chunk, end - pos);
        free(chunk);
        if (rc)
            goto out;
        pos = end;
    }
    rc = sse_parser_finish(&p);
    if (rc < 0)
        goto out;
    slice tail = sse_parser_tail(&p);
    if ((rc == SSE_UNTERMINATED) != (tail.len > 0))
        abort();
    must(buf_append(&r->raw, tail.p, tail.len));
    /* The invariant the relay depends on: raw of all events + tail == input. */
    if (r->raw.len != n || (n && memcmp(r->raw.data, s, n) != 0))
        abort();
out:
    sse_parser_free(&p);
    return rc;
}

static void same(const run *a, const run *b)
{
    if (a->log.len != b->log.len || (a->log.len && memcmp(a->log.data, b->log.data, a->log.len)))
        abort();
}

static void run_free(run *r)
{
    buf_free(&r->raw);
    buf_free(&r->log);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *s = (const char *)data + 1;
    size_t n = size - 1;
    size_t cut = (size_t)data[0] * n / 255;
    static const size_t caps[] = {1u << 20, 64};

    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        run whole, split, bytes;
        int rc = parse(&whole, caps[i], s, n, 0, 0);
        if (parse(&split, caps[i], s, n, cut, 0) != rc)
            abort();
        if (parse(&bytes, caps[i], s, n, 0, 1) != rc)
            abort();
        same(&whole, &split);
        same(&whole, &bytes);
        if (rc < 0 && rc != -E2BIG)
            abort();
        run_free(&whole);
        run_free(&split);
        run_free(&bytes);
    }
    return 0;
}
