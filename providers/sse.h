/* sse.h - incremental Server-Sent Events parser and writer.
 *
 * Every streamed provider response (OpenAI, Anthropic, Gemini, OpenRouter,
 * Fireworks) passes through sse_parser: the relay forwards an event's raw
 * bytes unchanged or hands its fields to a translator.
 *
 * Parsing follows the WHATWG EventSource rules: lines end in LF, CRLF or a
 * lone CR; a UTF-8 BOM at the very start of the stream is skipped; lines
 * starting with ':' are comments; `name:value` drops one space after the
 * colon; a line without a colon is a field with an empty value; the fields
 * event, data (lines joined with "\n"), id and retry are kept, others are
 * ignored; a blank line ends the block. Unlike a browser, every block is
 * reported, also those without data (comment-only keep-alives such as
 * OpenRouter's ": OPENROUTER PROCESSING"), so a relay can forward them.
 *
 * Raw bytes: each event carries the exact bytes of its block, from the byte
 * after the previous block up to and including its blank line. The raw
 * slices of all events followed by sse_parser_tail() reproduce the input.
 *
 * Memory: a block that lies inside one fed chunk while nothing is buffered
 * is reported in place (no copy). Only a block split across feeds is copied
 * into an internal buffer, and only data of two or more lines is joined
 * into a second buffer; both are capped at max_event_bytes.
 *
 * CRLF split across feeds: when a block's blank line ends in CR as the very
 * last byte fed, the parser cannot yet tell CR from CRLF, so it holds the
 * block until the next byte arrives (or sse_parser_finish()); this keeps
 * the LF inside the raw bytes of the block it belongs to. */
#ifndef TG_PROVIDERS_SSE_H
#define TG_PROVIDERS_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"

#define SSE_MUSTCHECK __attribute__((warn_unused_result))

/* sse_parser_finish(): the stream ended inside a block (not dispatched). */
#define SSE_UNTERMINATED 1

/* One block of the stream. All slices are valid only during the callback. */
typedef struct sse_event {
    slice event;   /* last `event` field value; empty when none (browsers say "message") */
    slice data;    /* data lines joined with "\n", no trailing "\n"; empty when none */
    bool has_data; /* at least one data line was present (data may still be empty) */
    slice id;      /* last `id` field value of this block (one holding NUL is ignored) */
    bool has_id;   /* an `id` field was present (an empty one resets last-event-id) */
    int64_t retry; /* last valid `retry` value (digits only) in ms, or -1 when none */
    slice raw;     /* exact bytes of the block including its terminating blank line */
} sse_event;

/* Called once per block, in stream order, from inside sse_parser_feed() or
 * sse_parser_finish(). The event and every byte it points to belong to the
 * parser (or the caller's fed chunk) and are valid only until the callback
 * returns: copy what must outlive it. Return 0 to continue, or non-zero to
 * stop: the feed (or finish) returns that value at once, the rest of the
 * chunk is dropped, and the parser is dead from then on (every later call
 * returns the same value); it stays safe to sse_parser_free(). The callback
 * must not call feed, finish or free on the same parser. */
typedef int (*sse_event_cb)(const sse_event *ev, void *ud);

/* Parser state; embed it and treat the fields as private. */
typedef struct sse_parser {
    sse_event_cb cb;    /* receives each complete block */
    void *ud;           /* passed to cb */
    size_t max;         /* max_event_bytes: cap on one block's raw size */
    buf block;          /* bytes of a block split across feeds (cap max) */
    buf join;           /* data of two or more lines joined with "\n" (cap max) */
    size_t line_start;  /* offset in block of the current unterminated line */
    size_t ev_off;      /* `event` value: offset from the block start */
    size_t ev_len;      /* `event` value length */
    size_t id_off;      /* `id` value: offset from the block start */
    size_t id_len;      /* `id` value length */
    size_t data_off;    /* first data line: offset from the block start */
    size_t data_len;    /* first data line length */
    size_t ndata;       /* data lines seen in this block; >= 2 means data is in join */
    int64_t retry;      /* last valid retry of this block, or -1 */
    bool has_id;        /* an id field was seen in this block */
    bool at_start;      /* no line processed yet: a leading UTF-8 BOM is skipped */
    bool cr_pending;    /* the last byte fed was a CR ending a line: a leading LF belongs to it */
    bool held;          /* block is complete but its final CR may still get its LF */
    bool finished;      /* sse_parser_finish() was called */
    int rc;             /* sticky error or callback stop value, 0 while alive */
} sse_parser;

/* Sets up a parser whose blocks may be up to max_event_bytes of raw bytes.
 * Allocates nothing. 0, or -EINVAL when cb is NULL or the cap is 0. */
int sse_parser_init(sse_parser *p, size_t max_event_bytes, sse_event_cb cb, void *ud) SSE_MUSTCHECK;
/* Releases the buffers; the parser must be initialised again to be reused. */
void sse_parser_free(sse_parser *p);
/* Parses the next len bytes of the stream, split anywhere, calling cb for
 * each block they complete. 0; -E2BIG when a block exceeds max_event_bytes;
 * -ENOMEM; -EINVAL after finish; or the callback's non-zero value. Any
 * non-zero result leaves the parser dead (see sse_event_cb). */
int sse_parser_feed(sse_parser *p, const char *data, size_t len) SSE_MUSTCHECK;
/* Ends the stream: dispatches a held CR-terminated block, then returns 0,
 * or SSE_UNTERMINATED when bytes of an unterminated block remain. That tail
 * is NOT dispatched (WHATWG discards it); sse_parser_tail() still shows it.
 * Negative or callback values as for feed. */
int sse_parser_finish(sse_parser *p) SSE_MUSTCHECK;
/* Bytes fed but not yet part of a dispatched event's raw (an unterminated
 * or held block). Valid until the next feed, finish or free. */
slice sse_parser_tail(const sse_parser *p);

/* Appends one event: `event: NAME\n` when event is not NULL, then one
 * `data: LINE\n` per line of data (split at LF, CRLF or CR, since SSE
 * cannot carry a CR: a parser returns the lines joined with LF; NULL data
 * counts as ""), then the blank line. Nothing is appended on error. 0;
 * -EINVAL when event holds CR or LF; -E2BIG over the cap of out; -ENOMEM. */
int sse_write_event(buf *out, const char *event, size_t event_len, const char *data,
                    size_t data_len) SSE_MUSTCHECK;
/* Appends a comment-only block (`: TEXT\n` per line of text, then the
 * blank line), e.g. a keep-alive. Nothing is appended on error. 0, -E2BIG,
 * -ENOMEM. */
int sse_write_comment(buf *out, const char *text, size_t len) SSE_MUSTCHECK;
/* Appends the OpenAI end-of-stream event `data: [DONE]\n\n`. 0, -E2BIG,
 * -ENOMEM. */
int sse_write_done(buf *out) SSE_MUSTCHECK;

#endif
