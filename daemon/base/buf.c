/* buf.c - growable byte buffer with a hard cap. */
#include "daemon/base/buf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

bool slice_eq_nocase(slice a, const char *lit)
{
    size_t n = strlen(lit);
    if (a.len != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)lit[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x + 32);
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y + 32);
        if (x != y)
            return false;
    }
    return true;
}

void buf_init(buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void buf_free(buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

int buf_reserve(buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return -E2BIG;
    size_t need = b->len + n;
    if (need <= b->cap && b->data)
        return 0;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 4 ? need : ncap * 2;
    if (ncap > b->max)
        ncap = b->max > need ? b->max : need;
    char *p = realloc(b->data, ncap + 1);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = ncap;
    b->data[b->len] = '\0';
    return 0;
}

int buf_append(buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int buf_append_u64(buf *b, uint64_t v)
{
    char d[20];
    size_t i = sizeof(d);
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return buf_append(b, d + i, sizeof(d) - i);
}

int buf_append_i64(buf *b, int64_t v)
{
    if (v >= 0)
        return buf_append_u64(b, (uint64_t)v);
    int rc = buf_append(b, "-", 1);
    return rc ? rc : buf_append_u64(b, -(uint64_t)v);
}

int buf_append_fixed(buf *b, int64_t v, unsigned dec)
{
    static const uint64_t pow10[] = {1,      10,      100,      1000,      10000,
                                     100000, 1000000, 10000000, 100000000, 1000000000};
    if (dec > 9)
        return -EINVAL;
    uint64_t m = v < 0 ? -(uint64_t)v : (uint64_t)v, p = pow10[dec];
    int rc = v < 0 ? buf_append(b, "-", 1) : 0;
    if (!rc)
        rc = buf_append_u64(b, m / p);
    if (rc || dec == 0)
        return rc;
    char d[10];
    d[0] = '.';
    uint64_t f = m % p;
    for (unsigned i = dec; i > 0; i--) {
        d[i] = (char)('0' + f % 10);
        f /= 10;
    }
    return buf_append(b, d, dec + 1);
}

int buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(small))
        return buf_append(b, small, (size_t)n);
    int rc = buf_reserve(b, (size_t)n);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_consume(buf *b, size_t n)
{
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = '\0';
}

int buf_append_json_escaped(buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        int rc = buf_append(b, s + run, i - run);
        if (rc)
            return rc;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t el = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
            el = 6;
        }
        rc = buf_append(b, esc, el);
        if (rc)
            return rc;
        run = i + 1;
    }
    return buf_append(b, s + run, n - run);
}

int buf_append_file(buf *b, FILE *f)
{
    for (;;) {
        int rc = buf_reserve(b, 65536);
        if (rc)
            return rc;
        size_t r = fread(b->data + b->len, 1, b->cap - b->len, f);
        b->len += r;
        b->data[b->len] = '\0';
        if (r == 0)
            return ferror(f) ? -EIO : 0;
    }
}
