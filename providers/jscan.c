/* jscan.c - zero-allocation JSON validation, lookup, decoding and splicing.
 *
 * The validator is a single iterative pass (no recursion, so a depth bomb
 * costs one bit per level, not a stack frame). String bodies, which are
 * most of a chat request, are scanned eight bytes at a time: a word with
 * no quote, backslash, control byte or non-ASCII byte is skipped whole.
 * The accessors skip values with memchr() over string bodies and bracket
 * counting over containers; they trust a prior jscan_validate() for
 * grammar, but every read is bounded by the lengths they are given. */
#include "providers/jscan.h"

#include <errno.h>
#include <string.h>

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero iff some byte of x is zero / below b (b <= 128); exact as a
 * yes/no answer, which is all the fast paths need. */
#define WORD_HAS_ZERO(x) (((x)-ONES) & ~(x)&HIGHS)
#define WORD_HAS_LESS(x, b) (((x)-ONES * (b)) & ~(x)&HIGHS)

static const char err_eof[] = "unexpected end of input";
static const char err_char[] = "unexpected character";
static const char err_unterminated[] = "unterminated string";
static const char err_escape[] = "invalid escape";
static const char err_uescape[] = "invalid \\u escape";
static const char err_surrogate[] = "unpaired surrogate in \\u escape";
static const char err_utf8[] = "invalid UTF-8 in string";
static const char err_ctrl[] = "control character in string";
static const char err_number[] = "invalid number";
static const char err_leading_zero[] = "leading zero in number";
static const char err_literal[] = "invalid literal";
static const char err_depth[] = "nesting too deep";
static const char err_key[] = "expected string key";
static const char err_colon[] = "expected ':'";
static const char err_obj_sep[] = "expected ',' or '}'";
static const char err_arr_sep[] = "expected ',' or ']'";
static const char err_trailing[] = "trailing characters after JSON value";

static inline bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static inline size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && is_ws((unsigned char)p[i]))
        i++;
    return i;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at p[0..4) into *cp; index of the first bad digit or -1. */
static int hex4(const unsigned char *p, unsigned *cp)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0)
            return k;
        v = (v << 4) | (unsigned)h;
    }
    *cp = v;
    return -1;
}

/* Length of the UTF-8 sequence at s[0..avail) (first byte >= 0x80):
 * 2..4 when well-formed, 0 when invalid, -1 when it is a valid start cut
 * off by the end of the input. */
static int utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    for (int k = 1; k < len; k++) {
        if ((size_t)k >= avail)
            return -1;
        unsigned char b = s[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return 0;
    }
    return len;
}

bool jscan_utf8_valid(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & HIGHS)) {
                i += 8;
                continue;
            }
        }
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = utf8_seq(s + i, n - i);
        if (l <= 0)
            return false;
        i += (size_t)l;
    }
    return true;
}

/* ---- validation ---------------------------------------------------- */

static int fail(jscan_error *err, size_t off, const char *msg)
{
    if (err) {
        err->offset = off;
        err->msg = msg;
    }
    return -EINVAL;
}

/* Validates the string whose opening quote is at p[*pos]; on success *pos
 * is just past the closing quote. */
static int v_string(const unsigned char *p, size_t n, size_t *pos, jscan_error *err)
{
    size_t i = *pos + 1;
    for (;;) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (WORD_HAS_LESS(w, 0x20) | WORD_HAS_ZERO(w ^ (ONES * '"')) |
                WORD_HAS_ZERO(w ^ (ONES * '\\')) | (w & HIGHS))
                break;
            i += 8;
        }
        if (i >= n)
            return fail(err, n, err_unterminated);
        unsigned char c = p[i];
        if (c == '"') {
            *pos = i + 1;
            return 0;
        }
        if (c < 0x20)
            return fail(err, i, err_ctrl);
        if (c < 0x80 && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80) {
            int l = utf8_seq(p + i, n - i);
            if (l < 0)
                return fail(err, n, err_unterminated);
            if (l == 0)
                return fail(err, i, err_utf8);
            i += (size_t)l;
            continue;
        }
        /* backslash */
        if (i + 1 >= n)
            return fail(err, n, err_unterminated);
        switch (p[i + 1]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            i += 2;
            continue;
        case 'u':
            break;
        default:
            return fail(err, i + 1, err_escape);
        }
        unsigned cp;
        if (n - i < 6) {
            for (size_t k = i + 2; k < n; k++)
                if (hexval(p[k]) < 0)
                    return fail(err, k, err_uescape);
            return fail(err, n, err_unterminated);
        }
        int bad = hex4(p + i + 2, &cp);
        if (bad >= 0)
            return fail(err, i + 2 + (size_t)bad, err_uescape);
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail(err, i, err_surrogate);
        if (cp < 0xD800 || cp > 0xDBFF) {
            i += 6;
            continue;
        }
        /* high surrogate: a \uDC00-\uDFFF must follow */
        if (n - i < 12) {
            /* a cut-off but so far correct pair is an early end */
            size_t k = i + 6;
            if (k < n && p[k] != '\\')
                return fail(err, i, err_surrogate);
            if (k + 1 < n && p[k + 1] != 'u')
                return fail(err, i, err_surrogate);
            for (k = i + 8; k < n; k++)
                if (hexval(p[k]) < 0)
                    return fail(err, i, err_surrogate);
            return fail(err, n, err_unterminated);
        }
        unsigned lo;
        if (p[i + 6] != '\\' || p[i + 7] != 'u' || hex4(p + i + 8, &lo) >= 0 || lo < 0xDC00 ||
            lo > 0xDFFF)
            return fail(err, i, err_surrogate);
        i += 12;
    }
}

/* Validates the number starting at p[*pos]. */
static int v_number(const unsigned char *p, size_t n, size_t *pos, jscan_error *err)
{
    size_t i = *pos;
    if (p[i] == '-')
        i++;
    if (i >= n)
        return fail(err, n, err_eof);
    if (p[i] == '0') {
        i++;
        if (i < n && is_digit(p[i]))
            return fail(err, i, err_leading_zero);
    } else if (p[i] >= '1' && p[i] <= '9') {
        while (i < n && is_digit(p[i]))
            i++;
    } else {
        return fail(err, i, err_number);
    }
    if (i < n && p[i] == '.') {
        i++;
        if (i >= n)
            return fail(err, n, err_eof);
        if (!is_digit(p[i]))
            return fail(err, i, err_number);
        while (i < n && is_digit(p[i]))
            i++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= n)
            return fail(err, n, err_eof);
        if (!is_digit(p[i]))
            return fail(err, i, err_number);
        while (i < n && is_digit(p[i]))
            i++;
    }
    *pos = i;
    return 0;
}

static int v_literal(const unsigned char *p, size_t n, size_t *pos, const char *lit, size_t len,
                     jscan_error *err)
{
    size_t i = *pos;
    for (size_t k = 0; k < len; k++) {
        if (i + k >= n)
            return fail(err, n, err_eof);
        if (p[i + k] != (unsigned char)lit[k])
            return fail(err, i + k, err_literal);
    }
    *pos = i + len;
    return 0;
}

/* Whether the innermost open container is an object. */
#define TOP_IS_OBJ() ((is_obj[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1)

static jscan_type type_of(unsigned char c)
{
    switch (c) {
    case '{':
        return JSCAN_OBJECT;
    case '[':
        return JSCAN_ARRAY;
    case '"':
        return JSCAN_STRING;
    case 't':
        return JSCAN_TRUE;
    case 'f':
        return JSCAN_FALSE;
    case 'n':
        return JSCAN_NULL;
    default:
        return JSCAN_NUMBER;
    }
}

/* The validator; when root is not NULL it also describes the value. */
static int validate(const char *text, size_t n, unsigned max_depth, jscan_val *root,
                    jscan_error *err)
{
    const unsigned char *p = (const unsigned char *)text;
    uint64_t is_obj[JSCAN_DEPTH_LIMIT / 64]; /* bit set: that level is an object */
    unsigned depth = 0;
    size_t i = 0, start;
    int rc;

    if (max_depth > JSCAN_DEPTH_LIMIT)
        max_depth = JSCAN_DEPTH_LIMIT;
    if (!p && n)
        return fail(err, 0, err_char);

    i = skip_ws(text, n, i);
    start = i;
value:
    if (i >= n)
        return fail(err, n, err_eof);
    switch (p[i]) {
    case '{':
    case '[':
        if (depth >= max_depth)
            return fail(err, i, err_depth);
        if (depth % 64 == 0)
            is_obj[depth / 64] = 0;
        if (p[i] == '{')
            is_obj[depth / 64] |= 1ULL << (depth % 64);
        else
            is_obj[depth / 64] &= ~(1ULL << (depth % 64));
        depth++;
        i = skip_ws(text, n, i + 1);
        if (i >= n)
            return fail(err, n, err_eof);
        if (TOP_IS_OBJ()) {
            if (p[i] == '}') {
                depth--;
                i++;
                goto after_value;
            }
            goto key;
        }
        if (p[i] == ']') {
            depth--;
            i++;
            goto after_value;
        }
        goto value;
    case '"':
        rc = v_string(p, n, &i, err);
        break;
    case 't':
        rc = v_literal(p, n, &i, "true", 4, err);
        break;
    case 'f':
        rc = v_literal(p, n, &i, "false", 5, err);
        break;
    case 'n':
        rc = v_literal(p, n, &i, "null", 4, err);
        break;
    default:
        if (p[i] == '-' || is_digit(p[i])) {
            rc = v_number(p, n, &i, err);
            break;
        }
        return fail(err, i, err_char);
    }
    if (rc)
        return rc;

after_value:
    if (depth == 0) {
        size_t end = i;
        i = skip_ws(text, n, i);
        if (i != n)
            return fail(err, i, err_trailing);
        if (root) {
            root->p = text + start;
            root->n = end - start;
            root->type = type_of(p[start]);
        }
        return 0;
    }
    i = skip_ws(text, n, i);
    if (i >= n)
        return fail(err, n, err_eof);
    if (TOP_IS_OBJ()) {
        if (p[i] == '}') {
            depth--;
            i++;
            goto after_value;
        }
        if (p[i] != ',')
            return fail(err, i, err_obj_sep);
        i = skip_ws(text, n, i + 1);
        goto key;
    }
    if (p[i] == ']') {
        depth--;
        i++;
        goto after_value;
    }
    if (p[i] != ',')
        return fail(err, i, err_arr_sep);
    i = skip_ws(text, n, i + 1);
    goto value;

key:
    if (i >= n)
        return fail(err, n, err_eof);
    if (p[i] != '"')
        return fail(err, i, err_key);
    rc = v_string(p, n, &i, err);
    if (rc)
        return rc;
    i = skip_ws(text, n, i);
    if (i >= n)
        return fail(err, n, err_eof);
    if (p[i] != ':')
        return fail(err, i, err_colon);
    i = skip_ws(text, n, i + 1);
    goto value;
}

int jscan_validate(const char *p, size_t n, unsigned max_depth, jscan_error *err)
{
    return validate(p, n, max_depth, NULL, err);
}

int jscan_parse(const char *p, size_t n, unsigned max_depth, jscan_val *root, jscan_error *err)
{
    return validate(p, n, max_depth, root, err);
}

/* ---- skipping (for validated input; always bounded) ----------------- */

/* p[*i] is '"': moves *i past the closing quote. */
static int skip_string(const char *p, size_t n, size_t *i)
{
    size_t start = *i, j = *i + 1;
    for (;;) {
        if (j >= n)
            return -EINVAL;
        const char *q = memchr(p + j, '"', n - j);
        if (!q)
            return -EINVAL;
        size_t k = (size_t)(q - p), bs = 0;
        while (k - bs - 1 > start && p[k - bs - 1] == '\\')
            bs++;
        j = k + 1;
        if (bs % 2 == 0) {
            *i = j;
            return 0;
        }
    }
}

/* p[*i] is '{' or '[': moves *i past the matching bracket. */
static int skip_container(const char *p, size_t n, size_t *i)
{
    char open = p[*i];
    size_t j = *i, depth = 0;
    while (j < n) {
        char c = p[j];
        if (c == '"') {
            if (skip_string(p, n, &j))
                return -EINVAL;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0) {
                if ((open == '{') != (c == '}'))
                    return -EINVAL;
                *i = j + 1;
                return 0;
            }
        }
        j++;
    }
    return -EINVAL;
}

static int skip_literal(const char *p, size_t n, size_t *i, const char *lit, size_t len)
{
    if (n - *i < len || memcmp(p + *i, lit, len) != 0)
        return -EINVAL;
    *i += len;
    return 0;
}

/* Skips the value at p[*pos] (no leading whitespace) and describes it. */
static int skip_value(const char *p, size_t n, size_t *pos, jscan_val *out)
{
    size_t i = *pos;
    jscan_type t;
    int rc = 0;
    if (i >= n)
        return -EINVAL;
    switch (p[i]) {
    case '"':
        t = JSCAN_STRING;
        rc = skip_string(p, n, &i);
        break;
    case '{':
        t = JSCAN_OBJECT;
        rc = skip_container(p, n, &i);
        break;
    case '[':
        t = JSCAN_ARRAY;
        rc = skip_container(p, n, &i);
        break;
    case 't':
        t = JSCAN_TRUE;
        rc = skip_literal(p, n, &i, "true", 4);
        break;
    case 'f':
        t = JSCAN_FALSE;
        rc = skip_literal(p, n, &i, "false", 5);
        break;
    case 'n':
        t = JSCAN_NULL;
        rc = skip_literal(p, n, &i, "null", 4);
        break;
    default:
        if (p[i] != '-' && !is_digit((unsigned char)p[i]))
            return -EINVAL;
        t = JSCAN_NUMBER;
        i++;
        while (i < n && (is_digit((unsigned char)p[i]) || p[i] == '.' || p[i] == 'e' ||
                         p[i] == 'E' || p[i] == '+' || p[i] == '-'))
            i++;
    }
    if (rc)
        return rc;
    out->p = p + *pos;
    out->n = i - *pos;
    out->type = t;
    *pos = i;
    return 0;
}

int jscan_root(const char *p, size_t n, jscan_val *out)
{
    if (!p)
        return -EINVAL;
    size_t i = skip_ws(p, n, 0);
    return skip_value(p, n, &i, out);
}

/* ---- iteration ------------------------------------------------------ */

int jscan_iter_init(jscan_iter *it, const jscan_val *v)
{
    if (!v->p || v->n < 2)
        return -EINVAL;
    if (!(v->type == JSCAN_OBJECT && v->p[0] == '{' && v->p[v->n - 1] == '}') &&
        !(v->type == JSCAN_ARRAY && v->p[0] == '[' && v->p[v->n - 1] == ']'))
        return -EINVAL;
    it->p = v->p;
    it->n = v->n;
    it->pos = 1;
    it->count = 0;
    return 0;
}

/* Moves to the start of the next item: 0, -ENOENT at the closing bracket. */
static int iter_advance(jscan_iter *it, size_t *at)
{
    size_t end = it->n - 1; /* the closing bracket */
    size_t i = skip_ws(it->p, end, it->pos);
    if (i >= end)
        return -ENOENT;
    if (it->count > 0) {
        if (it->p[i] != ',')
            return -EINVAL;
        i = skip_ws(it->p, end, i + 1);
        if (i >= end)
            return -EINVAL;
    }
    *at = i;
    return 0;
}

int jscan_arr_next(jscan_iter *it, jscan_val *out)
{
    size_t i;
    if (it->p[0] != '[')
        return -EINVAL;
    int rc = iter_advance(it, &i);
    if (rc)
        return rc;
    rc = skip_value(it->p, it->n - 1, &i, out);
    if (rc)
        return rc;
    it->pos = i;
    it->count++;
    return 0;
}

int jscan_obj_next(jscan_iter *it, jscan_val *key, jscan_val *val)
{
    size_t i, end = it->n - 1;
    if (it->p[0] != '{')
        return -EINVAL;
    int rc = iter_advance(it, &i);
    if (rc)
        return rc;
    if (it->p[i] != '"' || skip_value(it->p, end, &i, key))
        return -EINVAL;
    i = skip_ws(it->p, end, i);
    if (i >= end || it->p[i] != ':')
        return -EINVAL;
    i = skip_ws(it->p, end, i + 1);
    rc = skip_value(it->p, end, &i, val);
    if (rc)
        return rc;
    it->pos = i;
    it->count++;
    return 0;
}

int jscan_arr_len(const jscan_val *v, size_t *len)
{
    jscan_iter it;
    jscan_val e;
    int rc;
    if (v->type != JSCAN_ARRAY)
        return -EINVAL;
    rc = jscan_iter_init(&it, v);
    if (rc)
        return rc;
    while ((rc = jscan_arr_next(&it, &e)) == 0)
        ;
    if (rc != -ENOENT)
        return rc;
    *len = it.count;
    return 0;
}

bool jscan_is_empty(const jscan_val *v)
{
    if ((v->type != JSCAN_ARRAY && v->type != JSCAN_OBJECT) || !v->p || v->n < 2)
        return false;
    return skip_ws(v->p, v->n - 1, 1) == v->n - 1;
}

/* ---- strings -------------------------------------------------------- */

static size_t utf8_put(unsigned cp, char u[4])
{
    if (cp < 0x80) {
        u[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (char)(0xF0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the escape at s[*i] == '\\' (s[0..n) is a string body) into u;
 * returns the byte count (1..4) or -EINVAL. */
static int unescape(const char *s, size_t n, size_t *i, char u[4])
{
    const unsigned char *p = (const unsigned char *)s;
    size_t j = *i;
    unsigned cp, lo;
    if (j + 1 >= n)
        return -EINVAL;
    switch (p[j + 1]) {
    case '"':
        u[0] = '"';
        break;
    case '\\':
        u[0] = '\\';
        break;
    case '/':
        u[0] = '/';
        break;
    case 'b':
        u[0] = '\b';
        break;
    case 'f':
        u[0] = '\f';
        break;
    case 'n':
        u[0] = '\n';
        break;
    case 'r':
        u[0] = '\r';
        break;
    case 't':
        u[0] = '\t';
        break;
    case 'u':
        if (n - j < 6 || hex4(p + j + 2, &cp) >= 0)
            return -EINVAL;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return -EINVAL;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (n - j < 12 || p[j + 6] != '\\' || p[j + 7] != 'u' || hex4(p + j + 8, &lo) >= 0 ||
                lo < 0xDC00 || lo > 0xDFFF)
                return -EINVAL;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            *i = j + 12;
        } else {
            *i = j + 6;
        }
        return (int)utf8_put(cp, u);
    default:
        return -EINVAL;
    }
    *i = j + 2;
    return 1;
}

static bool str_body(const jscan_val *v, const char **s, size_t *n)
{
    if (v->type != JSCAN_STRING || !v->p || v->n < 2 || v->p[0] != '"' || v->p[v->n - 1] != '"')
        return false;
    *s = v->p + 1;
    *n = v->n - 2;
    return true;
}

int jscan_str_decode(const jscan_val *v, char *out, size_t cap, size_t *len)
{
    const char *s;
    size_t n, i = 0, o = 0;
    if (!str_body(v, &s, &n))
        return -EINVAL;
    while (i < n) {
        const char *bs = memchr(s + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - (s + i)) : n - i;
        if (run >= cap || o > cap - 1 - run)
            return -E2BIG;
        memcpy(out + o, s + i, run);
        o += run;
        i += run;
        if (!bs)
            break;
        char u[4];
        int k = unescape(s, n, &i, u);
        if (k < 0)
            return k;
        if ((size_t)k >= cap || o > cap - 1 - (size_t)k)
            return -E2BIG;
        memcpy(out + o, u, (size_t)k);
        o += (size_t)k;
    }
    if (cap < 1)
        return -E2BIG;
    out[o] = '\0';
    *len = o;
    return 0;
}

int jscan_str_each(const jscan_val *v, jscan_bytes_fn fn, void *ud)
{
    const char *s;
    size_t n, i = 0;
    if (!str_body(v, &s, &n))
        return -EINVAL;
    char tmp[256];
    size_t o = 0;
    while (i < n) {
        const char *bs = memchr(s + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - (s + i)) : n - i;
        if (run > 0) {
            /* raw runs go straight through, no copy */
            if (o) {
                fn(ud, tmp, o);
                o = 0;
            }
            fn(ud, s + i, run);
            i += run;
        }
        if (!bs)
            break;
        if (o + 4 > sizeof tmp) {
            fn(ud, tmp, o);
            o = 0;
        }
        int k = unescape(s, n, &i, tmp + o);
        if (k < 0)
            return k;
        o += (size_t)k;
    }
    if (o)
        fn(ud, tmp, o);
    return 0;
}

bool jscan_str_eq(const jscan_val *v, const char *lit, size_t len)
{
    const char *s;
    size_t n, i = 0, o = 0;
    if (!str_body(v, &s, &n))
        return false;
    if (!memchr(s, '\\', n))
        return n == len && (n == 0 || memcmp(s, lit, n) == 0);
    while (i < n) {
        if (s[i] != '\\') {
            if (o >= len || s[i] != lit[o])
                return false;
            i++;
            o++;
            continue;
        }
        char u[4];
        int k = unescape(s, n, &i, u);
        if (k < 0 || (size_t)k > len - o || memcmp(u, lit + o, (size_t)k) != 0)
            return false;
        o += (size_t)k;
    }
    return o == len;
}

int jscan_append_string(buf *out, const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    size_t i = 0, run = 0;
    int rc = buf_append(out, "\"", 1);
    if (!rc && n == 0) /* p may be NULL then: no pointer arithmetic on it */
        return buf_append(out, "\"", 1);
    while (!rc && i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int l = utf8_seq(s + i, n - i);
        if (l > 0) {
            i += (size_t)l;
            continue;
        }
        rc = buf_append_json_escaped(out, p + run, i - run);
        if (!rc)
            rc = buf_append(out, "\\ufffd", 6);
        i++;
        run = i;
    }
    if (!rc)
        rc = buf_append_json_escaped(out, p + run, n - run);
    if (!rc)
        rc = buf_append(out, "\"", 1);
    return rc;
}

/* ---- lookup --------------------------------------------------------- */

int jscan_val_get(const jscan_val *obj, const char *key, jscan_val *out)
{
    jscan_iter it;
    jscan_val k, v;
    size_t klen = strlen(key);
    int rc;
    if (obj->type != JSCAN_OBJECT)
        return -EINVAL;
    rc = jscan_iter_init(&it, obj);
    if (rc)
        return rc;
    while ((rc = jscan_obj_next(&it, &k, &v)) == 0) {
        if (jscan_str_eq(&k, key, klen)) {
            *out = v;
            return 0;
        }
    }
    return rc;
}

int jscan_obj_get(const char *obj, size_t n, const char *key, jscan_val *out)
{
    jscan_val root;
    int rc = jscan_root(obj, n, &root);
    if (rc)
        return rc;
    return jscan_val_get(&root, key, out);
}

int jscan_path_get(const char *obj, size_t n, const char *path, jscan_val *out)
{
    char step[128];
    jscan_val cur;
    int rc = jscan_root(obj, n, &cur);
    if (rc)
        return rc;
    if (cur.type != JSCAN_OBJECT)
        return -EINVAL;
    for (const char *s = path;;) {
        const char *dot = strchr(s, '.');
        size_t len = dot ? (size_t)(dot - s) : strlen(s);
        if (len >= sizeof(step))
            return -ENOENT; /* no member name that long is ever looked up */
        memcpy(step, s, len);
        step[len] = '\0';
        if (cur.type != JSCAN_OBJECT)
            return -ENOENT;
        rc = jscan_val_get(&cur, step, &cur);
        if (rc)
            return rc;
        if (!dot)
            break;
        s = dot + 1;
    }
    *out = cur;
    return 0;
}

/* ---- scalars -------------------------------------------------------- */

int jscan_int64(const jscan_val *v, int64_t *out)
{
    const char *p = v->p;
    size_t n = v->n, i = 0;
    bool neg = false, over = false;
    uint64_t acc = 0, limit;
    if (v->type != JSCAN_NUMBER || !p || n == 0)
        return -EINVAL;
    if (p[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i >= n || !is_digit((unsigned char)p[i]) || (p[i] == '0' && n - i > 1))
        return -EINVAL;
    limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        if (!is_digit((unsigned char)p[i]))
            return -EINVAL; /* a fraction or exponent, even after overflow */
        unsigned d = (unsigned)(p[i] - '0');
        if (acc > (limit - d) / 10)
            over = true;
        else
            acc = acc * 10 + d;
    }
    if (over)
        return -ERANGE;
    if (neg)
        *out = acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc;
    else
        *out = (int64_t)acc;
    return 0;
}

int jscan_bool(const jscan_val *v, bool *out)
{
    if (v->type == JSCAN_TRUE)
        *out = true;
    else if (v->type == JSCAN_FALSE)
        *out = false;
    else
        return -EINVAL;
    return 0;
}

const char *jscan_type_name(jscan_type t)
{
    switch (t) {
    case JSCAN_OBJECT:
        return "object";
    case JSCAN_ARRAY:
        return "array";
    case JSCAN_STRING:
        return "string";
    case JSCAN_NUMBER:
        return "number";
    case JSCAN_TRUE:
    case JSCAN_FALSE:
        return "boolean";
    case JSCAN_NULL:
        return "null";
    case JSCAN_NONE:
        break;
    }
    return "nothing";
}

/* ---- splicing ------------------------------------------------------- */

void jscan_splice_init(jscan_splice *s, const char *doc, size_t n, buf *out)
{
    s->doc = doc;
    s->n = n;
    s->pos = 0;
    s->out = out;
}

/* True if v lies inside doc. */
static bool splice_inside(const jscan_splice *s, const jscan_val *v)
{
    return v->p && v->p >= s->doc && v->p <= s->doc + s->n &&
           v->n <= s->n - (size_t)(v->p - s->doc);
}

/* True if v lies inside doc at or after the last edit. */
static bool splice_in_order(const jscan_splice *s, const jscan_val *v)
{
    return splice_inside(s, v) && (size_t)(v->p - s->doc) >= s->pos;
}

int jscan_splice_replace(jscan_splice *s, const jscan_val *v, const char *bytes, size_t len)
{
    if (!splice_in_order(s, v))
        return -EINVAL;
    size_t off = (size_t)(v->p - s->doc);
    int rc = buf_append(s->out, s->doc + s->pos, off - s->pos);
    if (!rc)
        rc = buf_append(s->out, bytes, len);
    if (rc)
        return rc;
    s->pos = off + v->n;
    return 0;
}

int jscan_splice_replace_str(jscan_splice *s, const jscan_val *v, const char *raw, size_t len)
{
    if (!splice_in_order(s, v))
        return -EINVAL;
    size_t off = (size_t)(v->p - s->doc);
    int rc = buf_append(s->out, s->doc + s->pos, off - s->pos);
    if (!rc)
        rc = jscan_append_string(s->out, raw, len);
    if (rc)
        return rc;
    s->pos = off + v->n;
    return 0;
}

int jscan_splice_insert_member(jscan_splice *s, const jscan_val *obj, const char *key,
                               size_t keylen, const char *value_json, size_t vlen)
{
    if (!splice_inside(s, obj) || obj->type != JSCAN_OBJECT || obj->n < 2 || obj->p[0] != '{' ||
        obj->p[obj->n - 1] != '}')
        return -EINVAL;
    /* after the last non-blank byte before '}': the end of the last
     * member, or the '{' itself when the object is empty */
    size_t j = obj->n - 1;
    while (j > 1 && is_ws((unsigned char)obj->p[j - 1]))
        j--;
    bool empty = (j == 1);
    size_t at = (size_t)(obj->p - s->doc) + j;
    if (at < s->pos)
        return -EINVAL; /* the insertion point is behind the last edit */
    int rc = buf_append(s->out, s->doc + s->pos, at - s->pos);
    if (!rc && !empty)
        rc = buf_append(s->out, ",", 1);
    if (!rc)
        rc = jscan_append_string(s->out, key, keylen);
    if (!rc)
        rc = buf_append(s->out, ":", 1);
    if (!rc)
        rc = buf_append(s->out, value_json, vlen);
    if (rc)
        return rc;
    s->pos = at;
    return 0;
}

int jscan_splice_finish(jscan_splice *s)
{
    int rc = buf_append(s->out, s->doc + s->pos, s->n - s->pos);
    if (rc)
        return rc;
    s->pos = s->n;
    return 0;
}
