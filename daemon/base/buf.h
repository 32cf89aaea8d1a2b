/* buf.h - a growable byte buffer with a hard cap (curl's dynbuf).
 *
 * Every growing buffer in tollgate is a struct buf with a cap given at
 * init; growing past the cap is an error return (-E2BIG), never a crash or
 * an unbounded allocation. A zeroed or freshly initialised buf owns no
 * memory until the first append (idle connections hold no I/O buffer). */
#ifndef TG_BASE_BUF_H
#define TG_BASE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define BUF_MUSTCHECK __attribute__((warn_unused_result))

/* A slice: bytes owned by someone else. */
typedef struct slice {
    const char *p; /* first byte, may be NULL when len == 0 */
    size_t len;    /* number of bytes */
} slice;

#define SLICE_LIT(s) ((slice){(s), sizeof(s) - 1})

static inline slice slice_make(const char *p, size_t len) { return (slice){p, len}; }
static inline bool slice_eq(slice a, const char *lit)
{
    size_t n = strlen(lit);
    return a.len == n && (n == 0 || memcmp(a.p, lit, n) == 0);
}
/* ASCII case-insensitive equality against a C string (header names). */
bool slice_eq_nocase(slice a, const char *lit);

typedef struct buf {
    char *data;  /* heap bytes, NUL-terminated when non-NULL; NULL until used */
    size_t len;  /* bytes in use, excluding the terminating NUL */
    size_t cap;  /* allocated bytes (excluding room for the NUL) */
    size_t max;  /* hard cap on len; appends beyond it fail with -E2BIG */
} buf;

/* Sets up an empty buffer that may hold up to max bytes. Allocates nothing. */
void buf_init(buf *b, size_t max);
/* Releases the memory; the buffer stays usable (empty, same max). */
void buf_free(buf *b);
/* Forgets the content but keeps the allocation. */
static inline void buf_reset(buf *b) { b->len = 0; if (b->data) b->data[0] = '\0'; }
/* Makes room for n more bytes. 0, -E2BIG over max, -ENOMEM. */
int buf_reserve(buf *b, size_t n) BUF_MUSTCHECK;
/* Appends n bytes. 0, -E2BIG, -ENOMEM. */
int buf_append(buf *b, const void *p, size_t n) BUF_MUSTCHECK;
static inline int BUF_MUSTCHECK buf_append_str(buf *b, const char *s) { return buf_append(b, s, strlen(s)); }
static inline int BUF_MUSTCHECK buf_append_slice(buf *b, slice s) { return buf_append(b, s.p, s.len); }
/* Appends formatted text (snprintf rules). 0, -E2BIG, -ENOMEM. */
int buf_printf(buf *b, const char *fmt, ...) BUF_MUSTCHECK __attribute__((format(printf, 2, 3)));
/* Appends v in decimal, without printf (hot paths: log lines, ledger
 * rows). 0, -E2BIG, -ENOMEM. */
int buf_append_u64(buf *b, uint64_t v) BUF_MUSTCHECK;
int buf_append_i64(buf *b, int64_t v) BUF_MUSTCHECK;
/* Appends v / 10^dec with exactly dec decimals (dec <= 9):
 * (1234567, 3) -> "1234.567", (-1500, 3) -> "-1.500". */
int buf_append_fixed(buf *b, int64_t v, unsigned dec) BUF_MUSTCHECK;
/* Appends everything f has left (up to the cap). 0, -E2BIG, -ENOMEM,
 * -EIO on a read error. */
int buf_append_file(buf *b, FILE *f) BUF_MUSTCHECK;
/* Drops the first n bytes (consumed input), moving the rest to the front. */
void buf_consume(buf *b, size_t n);
/* Appends s as the body of a JSON string (quotes not included), escaping
 * what JSON requires. 0, -E2BIG, -ENOMEM. */
int buf_append_json_escaped(buf *b, const char *s, size_t n) BUF_MUSTCHECK;

#endif
