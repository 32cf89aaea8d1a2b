/* sse.c - incremental Server-Sent Events parser and writer.
 *
 * The parser makes one pass over the bytes. Field values are remembered as
 * offsets from the start of the current block, so the same bookkeeping
 * works whether the block sits in the caller's chunk (zero copy) or in
 * p->block (split across feeds): when a chunk ends inside a block, the
 * block's bytes so far are copied into p->block and the offsets stay valid.
 * Line ends are found with memchr for LF and for CR, each result cached
 * until the scan passes it, so a chunk is searched in linear time whatever
 * mix of line endings it holds. */
#include "providers/sse.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

static const char sse__bom[3] = {'\xEF', '\xBB', '\xBF'};

/* Next LF and CR in a chunk, cached until the scan passes them. */
typedef struct sse__scan {
    const char *p; /* chunk */
    size_t n;      /* chunk length */
    size_t lf;     /* offset of the next LF at or after the last query, n if none, SIZE_MAX unknown */
    size_t cr;     /* same for CR */
} sse__scan;

/* Offset of the first CR or LF at or after from, or s->n when none. */
static inline size_t sse__eol(sse__scan *s, size_t from)
{
    if (s->lf == SIZE_MAX || s->lf < from) {
        const char *q = memchr(s->p + from, '\n', s->n - from);
        s->lf = q ? (size_t)(q - s->p) : s->n;
    }
    if (s->cr == SIZE_MAX || s->cr < from) {
        const char *q = memchr(s->p + from, '\r', s->n - from);
        s->cr = q ? (size_t)(q - s->p) : s->n;
    }
    return s->lf < s->cr ? s->lf : s->cr;
}

static void sse__reset_fields(sse_parser *p)
{
    p->ev_off = p->ev_len = 0;
    p->id_off = p->id_len = 0;
    p->data_off = p->data_len = 0;
    p->ndata = 0;
    p->retry = -1;
    p->has_id = false;
}

int sse_parser_init(sse_parser *p, size_t max_event_bytes, sse_event_cb cb, void *ud)
{
    if (!cb || max_event_bytes == 0)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->ud = ud;
    p->max = max_event_bytes;
    buf_init(&p->block, max_event_bytes);
    buf_init(&p->join, max_event_bytes);
    sse__reset_fields(p);
    p->at_start = true;
    return 0;
}

void sse_parser_free(sse_parser *p)
{
    buf_free(&p->block);
    buf_free(&p->join);
}

/* Digits only (WHATWG); anything else, or a value past INT64_MAX, is
 * ignored (-1). */
static int64_t sse__retry(const char *s, size_t n)
{
    if (n == 0)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned char)s[i] - (unsigned)'0';
        if (d > 9 || v > (INT64_MAX - (int64_t)d) / 10)
            return -1;
        v = v * 10 + (int64_t)d;
    }
    return v;
}

/* One complete line (terminator excluded) at base + off. 1 when it is the
 * blank line ending the block, 0 otherwise, negative on error. */
static int sse__line(sse_parser *p, const char *base, size_t off, size_t len)
{
    if (p->at_start) {
        p->at_start = false;
        if (len >= sizeof(sse__bom) && memcmp(base + off, sse__bom, sizeof(sse__bom)) == 0) {
            off += sizeof(sse__bom);
            len -= sizeof(sse__bom);
        }
    }
    if (len == 0)
        return 1;
    const char *s = base + off;
    if (s[0] == ':')
        return 0;
    const char *colon = memchr(s, ':', len);
    size_t nlen = colon ? (size_t)(colon - s) : len;
    size_t voff = colon ? nlen + 1 : len;
    if (voff < len && s[voff] == ' ')
        voff++;
    size_t vlen = len - voff;
    switch (nlen) {
    case 4:
        if (memcmp(s, "data", 4) != 0)
            break;
        if (p->ndata == 0) {
            p->data_off = off + voff;
            p->data_len = vlen;
        } else {
            int rc;
            if (p->ndata == 1) {
                buf_reset(&p->join);
                rc = buf_append(&p->join, base + p->data_off, p->data_len);
                if (rc)
                    return rc;
            }
            rc = buf_append(&p->join, "\n", 1);
            if (rc)
                return rc;
            rc = buf_append(&p->join, s + voff, vlen);
            if (rc)
                return rc;
        }
        p->ndata++;
        break;
    case 5:
        if (memcmp(s, "event", 5) == 0) {
            p->ev_off = off + voff;
            p->ev_len = vlen;
        } else if (memcmp(s, "retry", 5) == 0) {
            int64_t r = sse__retry(s + voff, vlen);
            if (r >= 0)
                p->retry = r;
        }
        break;
    case 2:
        if (memcmp(s, "id", 2) == 0 && !memchr(s + voff, '\0', vlen)) {
            p->id_off = off + voff;
            p->id_len = vlen;
            p->has_id = true;
        }
        break;
    default:
        break;
    }
    return 0;
}

/* Reports the block at base (raw_len bytes) and forgets its fields. */
static int sse__dispatch(sse_parser *p, const char *base, size_t raw_len)
{
    sse_event ev = {
        .event = slice_make(base + p->ev_off, p->ev_len),
        .data = p->ndata >= 2 ? slice_make(p->join.data, p->join.len)
                              : slice_make(base + p->data_off, p->data_len),
        .has_data = p->ndata > 0,
        .id = slice_make(base + p->id_off, p->id_len),
        .has_id = p->has_id,
        .retry = p->retry,
        .raw = slice_make(base, raw_len),
    };
    sse__reset_fields(p);
    return p->cb(&ev, p->ud);
}

/* Reports the block held in p->block and empties it. */
static int sse__dispatch_buffered(sse_parser *p)
{
    int rc = sse__dispatch(p, p->block.data, p->block.len);
    buf_reset(&p->block);
    p->line_start = 0;
    return rc;
}

/* Continues the block in p->block with the chunk d[0..n). Stops after the
 * block is dispatched (or held) and sets *used to the bytes consumed. */
static int sse__feed_buffered(sse_parser *p, const char *d, size_t n, size_t *used)
{
    size_t pos = 0;
    int rc = 0;

    if (p->cr_pending) {
        p->cr_pending = false;
        if (d[0] == '\n') {
            rc = buf_append(&p->block, "\n", 1);
            if (rc)
                goto out;
            pos = 1;
            p->line_start = p->block.len;
        }
    }
    sse__scan sc = {d, n, SIZE_MAX, SIZE_MAX};
    while (pos < n) {
        size_t t = sse__eol(&sc, pos);
        if (t == n) {
            rc = buf_append(&p->block, d + pos, n - pos);
            pos = n;
            goto out;
        }
        size_t next = t + 1;
        bool cr_end = false;
        if (d[t] == '\r') {
            if (next == n)
                cr_end = true;
            else if (d[next] == '\n')
                next++;
        }
        rc = buf_append(&p->block, d + pos, next - pos);
        if (rc)
            goto out;
        size_t line_len = p->block.len - (next - t) - p->line_start;
        rc = sse__line(p, p->block.data, p->line_start, line_len);
        if (rc < 0)
            goto out;
        p->line_start = p->block.len;
        pos = next;
        if (rc == 0) {
            p->cr_pending = cr_end;
            continue;
        }
        if (cr_end) {
            rc = 0;
            p->held = true;
            goto out;
        }
        rc = sse__dispatch_buffered(p);
        goto out;
    }
out:
    *used = pos;
    return rc;
}

/* Parses the chunk d[0..n) with nothing buffered: whole blocks are
 * reported in place; an unfinished last block is copied into p->block. */
static int sse__feed_direct(sse_parser *p, const char *d, size_t n)
{
    sse__scan sc = {d, n, SIZE_MAX, SIZE_MAX};
    size_t blk = 0; /* start of the current block */
    size_t ls = 0;  /* start of the current line */
    int rc = 0;

    for (;;) {
        size_t t = sse__eol(&sc, ls);
        if (t == n)
            break;
        size_t next = t + 1;
        bool cr_end = false;
        if (d[t] == '\r') {
            if (next == n)
                cr_end = true;
            else if (d[next] == '\n')
                next++;
        }
        rc = sse__line(p, d + blk, ls - blk, t - ls);
        if (rc < 0)
            return rc;
        ls = next;
        if (rc == 0) {
            p->cr_pending = cr_end;
            continue;
        }
        if (next - blk > p->max)
            return -E2BIG;
        if (cr_end) {
            p->held = true;
            break;
        }
        rc = sse__dispatch(p, d + blk, next - blk);
        if (rc)
            return rc;
        blk = next;
    }
    if (blk < n) {
        rc = buf_append(&p->block, d + blk, n - blk);
        if (rc)
            return rc;
        p->line_start = ls - blk;
    }
    return 0;
}

int sse_parser_feed(sse_parser *p, const char *data, size_t len)
{
    size_t pos = 0;
    int rc = 0;

    if (p->rc)
        return p->rc;
    if (p->finished)
        return -EINVAL;
    if (len == 0)
        return 0;
    if (p->held) {
        p->held = false;
        if (data[0] == '\n') {
            rc = buf_append(&p->block, "\n", 1);
            if (rc)
                goto out;
            pos = 1;
        }
        rc = sse__dispatch_buffered(p);
        if (rc)
            goto out;
    }
    if (p->block.len > 0 && pos < len) {
        size_t used = 0;
        rc = sse__feed_buffered(p, data + pos, len - pos, &used);
        if (rc)
            goto out;
        pos += used;
    }
    if (pos < len)
        rc = sse__feed_direct(p, data + pos, len - pos);
out:
    p->rc = rc;
    return rc;
}

int sse_parser_finish(sse_parser *p)
{
    int rc;

    if (p->rc)
        return p->rc;
    if (p->finished)
        return -EINVAL;
    p->finished = true;
    if (p->held) {
        p->held = false;
        rc = sse__dispatch_buffered(p);
        if (rc) {
            p->rc = rc;
            return rc;
        }
    }
    return p->block.len > 0 ? SSE_UNTERMINATED : 0;
}

slice sse_parser_tail(const sse_parser *p)
{
    return slice_make(p->block.data, p->block.len);
}

/* ---- writer ---- */

/* Length of the line at s[0..n) and of its terminator (0 at the end). */
static size_t sse__next_line(const char *s, size_t n, size_t *term)
{
    size_t i = 0;
    while (i < n && s[i] != '\n' && s[i] != '\r')
        i++;
    *term = i == n ? 0 : (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
    return i;
}

static inline char *sse__put(char *w, const void *s, size_t n)
{
    if (n)
        memcpy(w, s, n);
    return w + n;
}

/* Appends prefix + line + "\n" for every line of text (at least one; a
 * bare prefix for an empty line), then the blank line, preceded by head
 * (head_len bytes, may be 0). One reservation, so nothing is appended on
 * error. */
static int sse__write_lines(buf *out, const char *head, size_t head_len, const char *prefix,
                            const char *text, size_t len)
{
    size_t plen = strlen(prefix);
    size_t need = head_len + 1, off = 0, term;
    const char *t = text ? text : "";
    do {
        size_t l = sse__next_line(t + off, len - off, &term);
        need += plen + (l ? 1 + l : 0) + 1;
        off += l + term;
    } while (off < len || (term && off == len));
    int rc = buf_reserve(out, need);
    if (rc)
        return rc;
    char *w = sse__put(out->data + out->len, head, head_len);
    off = 0;
    do {
        size_t l = sse__next_line(t + off, len - off, &term);
        w = sse__put(w, prefix, plen);
        if (l) {
            *w++ = ' ';
            w = sse__put(w, t + off, l);
        }
        *w++ = '\n';
        off += l + term;
    } while (off < len || (term && off == len));
    *w++ = '\n';
    out->len = (size_t)(w - out->data);
    out->data[out->len] = '\0';
    return 0;
}

int sse_write_event(buf *out, const char *event, size_t event_len, const char *data, size_t data_len)
{
    char head[64];
    int rc;

    if (!event)
        return sse__write_lines(out, NULL, 0, "data:", data, data_len);
    if (memchr(event, '\n', event_len) || memchr(event, '\r', event_len))
        return -EINVAL;
    if (event_len <= sizeof(head) - 8) {
        memcpy(head, "event: ", 7);
        memcpy(head + 7, event, event_len);
        head[7 + event_len] = '\n';
        return sse__write_lines(out, head, event_len + 8, "data:", data, data_len);
    }
    /* Long event name: write the head, then roll back if the rest fails. */
    size_t mark = out->len;
    rc = buf_append(out, "event: ", 7);
    if (!rc)
        rc = buf_append(out, event, event_len);
    if (!rc)
        rc = buf_append(out, "\n", 1);
    if (!rc)
        rc = sse__write_lines(out, NULL, 0, "data:", data, data_len);
    if (rc && out->data) {
        out->len = mark;
        out->data[mark] = '\0';
    }
    return rc;
}

int sse_write_comment(buf *out, const char *text, size_t len)
{
    return sse__write_lines(out, NULL, 0, ":", text, len);
}

int sse_write_done(buf *out)
{
    return buf_append(out, "data: [DONE]\n\n", 14);
}
