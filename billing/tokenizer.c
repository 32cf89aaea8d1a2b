/* tokenizer.c - tiktoken-compatible BPE: data file, pre-tokenizer, merges.
 * See tokenizer.h for the contract. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "billing/tokenizer.h"
#include "billing/unicode_delta.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ file format
 *
 *   0  magic    "TGBPE1\r\n"
 *   8  u32      0x01020304 (byte-order mark: the file is little-endian)
 *  12  u32      n      rank slots
 *  16  u32      cap    hash slots (a power of two, > n)
 *  20  u32      nbytes token bytes
 *  24  u32      name_len
 *  28  u32      pat_len
 *  32  name, pattern (each padded to 4 bytes), u32 off[n + 1],
 *      u32 hash[cap] (rank + 1, 0 = empty; probe linearly from
 *      tok_hash(bytes) & (cap - 1)), token bytes (rank r is
 *      bytes[off[r] .. off[r + 1]), empty for an unused rank). */
#define TOK_MAGIC "TGBPE1\r\n"
#define TOK_BOM 0x01020304u
#define TOK_HDR 32u
#define TOK_NONE UINT32_MAX       /* no rank: not a token */
#define TOK_SHORT 128             /* pieces up to this length merge by scan */

struct tok_enc {
    const uint8_t *map;    /* the mapped file */
    size_t map_len;
    char *name;            /* NUL-terminated copies */
    char *pattern;         /* the tiktoken pattern as stored */
    uint32_t n;            /* rank slots */
    uint32_t mask;         /* hash slots - 1 */
    const uint32_t *off;   /* n + 1 offsets */
    const uint32_t *hash;  /* cap slots */
    const uint8_t *bytes;  /* token bytes */
    uint32_t byte_rank[256]; /* rank of each single byte */
    pcre2_code *re;        /* compiled pre-tokenizer */
    bool jit;              /* re is JIT-compiled */
    pcre2_code *re_fast;   /* the same without the Unicode delta, for text
                              below U+0800 (every delta code point is above:
                              TOK_UNI_DELTA_MIN); NULL: always re */
    bool jit_fast;
};

struct tok_work {
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit;
    buf san;               /* sanitized copy of invalid UTF-8 input */
    /* scratch of the heap merge (long pieces), by byte position */
    size_t cap;
    uint32_t *next, *prev, *rank;
    uint64_t *heap;
};

static void seterr(char *err, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t cap, const char *fmt, ...)
{
    if (!err || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
}

/* The hash is part of the file format: changing it needs a new magic. */
static uint64_t tok_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    return h;
}

static inline uint32_t rank_of(const tok_enc *e, const uint8_t *p, size_t n)
{
    if (n == 1)
        return e->byte_rank[p[0]];
    uint32_t i = (uint32_t)tok_hash(p, n) & e->mask;
    for (;;) {
        uint32_t v = e->hash[i];
        if (v == 0)
            return TOK_NONE;
        uint32_t r = v - 1;
        uint32_t a = e->off[r], b = e->off[r + 1];
        if (b - a == n && memcmp(e->bytes + a, p, n) == 0)
            return r;
        i = (i + 1) & e->mask;
    }
}

/* ------------------------------------------------------------- converting */

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Strict standard base64 with padding. Returns the decoded length or -1. */
static long b64decode(const char *s, size_t n, uint8_t *out)
{
    if (n == 0 || n % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)s[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64val(c)) < 0) {
                return -1;
            }
        }
        uint32_t t = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(t >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(t >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)t;
    }
    return (long)o;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static size_t pad4(size_t n) { return (n + 3) & ~(size_t)3; }

int tok_convert_tiktoken_json(const char *name, const char *json, size_t len,
                              const char *out_path, char *err, size_t errcap)
{
    int rc = -1;
    uint32_t *off = NULL, *hash = NULL;
    uint8_t *bytes = NULL, *hdr = NULL;
    char *tmp = NULL;
    FILE *f = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) {
        seterr(err, errcap, "encoder JSON: %s (line %d)", jerr.text, jerr.line);
        return -1;
    }
    const char *pat = json_string_value(json_object_get(root, "pat_str"));
    json_t *jr = json_object_get(root, "bpe_ranks");
    const char *ranks = json_string_value(jr);
    if (!pat || !ranks) {
        seterr(err, errcap, "encoder JSON: needs string fields pat_str and bpe_ranks");
        goto out;
    }
    size_t rlen = json_string_length(jr);
    /* Ranks and bytes: every token is at most rlen * 3 / 4 bytes in total. */
    size_t max_tokens = rlen / 2 + 1;
    off = calloc(max_tokens + 1, sizeof *off);
    bytes = malloc(rlen / 4 * 3 + 4);
    if (!off || !bytes) {
        seterr(err, errcap, "out of memory");
        goto out;
    }
    /* "! <rank>" sets the next rank; other words are base64 tokens. */
    uint32_t next = 0, n = 0;
    size_t nbytes = 0;
    bool want_rank = false, have_start = false;
    for (size_t i = 0; i < rlen;) {
        while (i < rlen && (ranks[i] == ' ' || ranks[i] == '\n'))
            i++;
        size_t j = i;
        while (j < rlen && ranks[j] != ' ' && ranks[j] != '\n')
            j++;
        if (j == i)
            break;
        if (want_rank) {
            char *end;
            errno = 0;
            unsigned long r = strtoul(ranks + i, &end, 10);
            if (end != ranks + j || errno || r < next || r >= max_tokens) {
                seterr(err, errcap, "bpe_ranks: bad rank '%.*s'", (int)(j - i), ranks + i);
                goto out;
            }
            for (; next < r; next++) /* unused ranks have no bytes */
                off[next + 1] = (uint32_t)nbytes;
            want_rank = false;
            have_start = true;
        } else if (j - i == 1 && ranks[i] == '!') {
            want_rank = true;
        } else {
            if (!have_start) {
                seterr(err, errcap, "bpe_ranks: does not start with '! <rank>'");
                goto out;
            }
            long d = b64decode(ranks + i, j - i, bytes + nbytes);
            if (d <= 0 || next >= max_tokens) {
                seterr(err, errcap, "bpe_ranks: bad token '%.*s' at rank %u", (int)(j - i), ranks + i, next);
                goto out;
            }
            nbytes += (size_t)d;
            off[next + 1] = (uint32_t)nbytes;
            next++;
        }
        i = j;
    }
    n = next;
    if (n < 256 || want_rank) {
        seterr(err, errcap, "bpe_ranks: %u tokens, expected at least 256", n);
        goto out;
    }
    uint32_t cap = 1;
    while (cap < 2 * n)
        cap <<= 1;
    hash = calloc(cap, sizeof *hash);
    if (!hash) {
        seterr(err, errcap, "out of memory");
        goto out;
    }
    for (uint32_t r = 0; r < n; r++) {
        uint32_t a = off[r], b = off[r + 1];
        if (a == b)
            continue;
        uint32_t h = (uint32_t)tok_hash(bytes + a, b - a) & (cap - 1);
        while (hash[h]) {
            uint32_t o = hash[h] - 1;
            if (off[o + 1] - off[o] == b - a && memcmp(bytes + off[o], bytes + a, b - a) == 0) {
                seterr(err, errcap, "bpe_ranks: ranks %u and %u have the same bytes", o, r);
                goto out;
            }
            h = (h + 1) & (cap - 1);
        }
        hash[h] = r + 1;
    }
    size_t name_len = strlen(name), pat_len = strlen(pat);
    hdr = calloc(1, TOK_HDR + pad4(name_len) + pad4(pat_len));
    if (!hdr) {
        seterr(err, errcap, "out of memory");
        goto out;
    }
    memcpy(hdr, TOK_MAGIC, 8);
    put32(hdr + 8, TOK_BOM);
    put32(hdr + 12, n);
    put32(hdr + 16, cap);
    put32(hdr + 20, (uint32_t)nbytes);
    put32(hdr + 24, (uint32_t)name_len);
    put32(hdr + 28, (uint32_t)pat_len);
    memcpy(hdr + TOK_HDR, name, name_len);
    memcpy(hdr + TOK_HDR + pad4(name_len), pat, pat_len);
    /* The arrays go out as little-endian u32: convert in place. */
    for (uint32_t r = 0; r <= n; r++)
        put32((uint8_t *)&off[r], off[r]);
    for (uint32_t h = 0; h < cap; h++)
        put32((uint8_t *)&hash[h], hash[h]);

    size_t plen = strlen(out_path);
    tmp = malloc(plen + 16);
    if (!tmp) {
        seterr(err, errcap, "out of memory");
        goto out;
    }
    snprintf(tmp, plen + 16, "%s.tmp%ld", out_path, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        seterr(err, errcap, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fwrite(hdr, 1, TOK_HDR + pad4(name_len) + pad4(pat_len), f) == 0 ||
        fwrite(off, sizeof *off, (size_t)n + 1, f) != (size_t)n + 1 ||
        fwrite(hash, sizeof *hash, cap, f) != cap ||
        fwrite(bytes, 1, nbytes, f) != nbytes) {
        seterr(err, errcap, "%s: write failed", tmp);
        goto out;
    }
    if (fclose(f) != 0) {
        f = NULL;
        seterr(err, errcap, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    f = NULL;
    if (rename(tmp, out_path) != 0) {
        seterr(err, errcap, "%s: %s", out_path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (f)
        fclose(f);
    if (rc != 0 && tmp)
        unlink(tmp);
    free(tmp);
    free(hdr);
    free(hash);
    free(bytes);
    free(off);
    json_decref(root);
    return rc;
}

/* ---------------------------------------------------------------- loading */

/* White_Space as the Rust regex crate (and so tiktoken) defines \s. PCRE2's
 * \s under UCP lacks U+0085, so the pattern's \s and \S are spelled out. */
#define TOK_WS "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* Rewrites tiktoken's pattern for PCRE2: \s -> [WS] (or WS inside a
 * class), \S -> [^WS]. \S inside a class is refused (not expressible as a
 * range list; no tiktoken encoding uses it). \p{X} for X in
 * unicode_delta.h -> [\p{X}DELTA] (\p{X}DELTA inside a class), \P{X} ->
 * [^\p{X}DELTA], so PCRE2's older Unicode tables classify as tiktoken's do;
 * \P{X} inside a class is refused like \S. */
static char *pcre2_pattern(const char *pat, bool with_delta, char *err, size_t errcap)
{
    static const struct {
        const char *name, *delta;
    } uni[] = {
        {"L", TOK_UNI_DELTA_L},   {"Lu", TOK_UNI_DELTA_Lu}, {"Ll", TOK_UNI_DELTA_Ll},
        {"Lt", TOK_UNI_DELTA_Lt}, {"Lm", TOK_UNI_DELTA_Lm}, {"Lo", TOK_UNI_DELTA_Lo},
        {"M", TOK_UNI_DELTA_M},   {"N", TOK_UNI_DELTA_N},
    };
    size_t item = sizeof(TOK_WS);
    for (size_t k = 0; k < sizeof uni / sizeof uni[0]; k++)
        if (strlen(uni[k].delta) + 8 > item)
            item = strlen(uni[k].delta) + 8;
    size_t n = strlen(pat);
    size_t cap = n + 1;
    for (size_t i = 0; i + 1 < n; i++)
        if (pat[i] == '\\')
            cap += item + 4;
    char *out = malloc(cap);
    if (!out) {
        seterr(err, errcap, "out of memory");
        return NULL;
    }
    size_t o = 0;
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = pat[i];
        if (c == '\\' && i + 1 < n) {
            char d = pat[i + 1];
            i++;
            if (d == 's') {
                o += (size_t)sprintf(out + o, in_class ? "%s" : "[%s]", TOK_WS);
            } else if (d == 'S') {
                if (in_class) {
                    free(out);
                    seterr(err, errcap, "pattern: \\S inside a character class is not supported");
                    return NULL;
                }
                o += (size_t)sprintf(out + o, "[^%s]", TOK_WS);
            } else if (d == 'p' || d == 'P') {
                /* \p{X} or \pX; the name starts at pat[i + 1] */
                const char *name = pat + i + 1;
                size_t len = 1, skip = 1;
                if (i + 1 < n && *name == '{') {
                    const char *end = memchr(name, '}', n - i - 1);
                    len = end ? (size_t)(end - name) - 1 : 0;
                    skip = len + 2;
                    name++;
                }
                size_t k = 0;
                while (k < sizeof uni / sizeof uni[0] &&
                       (len == 0 || strlen(uni[k].name) != len || memcmp(uni[k].name, name, len) != 0))
                    k++;
                if (k == sizeof uni / sizeof uni[0]) { /* not ours: as is */
                    out[o++] = c;
                    out[o++] = d;
                } else if (in_class && d == 'P') {
                    free(out);
                    seterr(err, errcap, "pattern: \\P inside a character class is not supported");
                    return NULL;
                } else {
                    if (!in_class) {
                        out[o++] = '[';
                        if (d == 'P')
                            out[o++] = '^';
                    }
                    o += (size_t)sprintf(out + o, "\\p{%s}%s", uni[k].name, with_delta ? uni[k].delta : "");
                    if (!in_class)
                        out[o++] = ']';
                    i += skip;
                }
            } else {
                out[o++] = c;
                out[o++] = d;
            }
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = true;
            out[o++] = c;
            if (i + 1 < n && pat[i + 1] == '^')
                out[o++] = pat[++i];
            if (i + 1 < n && pat[i + 1] == ']') /* a literal ] first */
                out[o++] = pat[++i];
            continue;
        }
        if (c == ']' && in_class)
            in_class = false;
        out[o++] = c;
    }
    out[o] = '\0';
    return out;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void tok_close(tok_enc *e)
{
    if (!e)
        return;
    if (e->re)
        pcre2_code_free(e->re);
    if (e->re_fast)
        pcre2_code_free(e->re_fast);
    if (e->map)
        munmap((void *)e->map, e->map_len);
    free(e->name);
    free(e->pattern);
    free(e);
}

tok_enc *tok_open(const char *path, char *err, size_t errcap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errcap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < (off_t)TOK_HDR) {
        close(fd);
        seterr(err, errcap, "%s: not a tokenizer data file (too short)", path);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        seterr(err, errcap, "%s: mmap: %s", path, strerror(errno));
        return NULL;
    }
    tok_enc *e = calloc(1, sizeof *e);
    if (!e) {
        munmap(m, len);
        seterr(err, errcap, "out of memory");
        return NULL;
    }
    e->map = m;
    e->map_len = len;
    const uint8_t *p = m;
    if (memcmp(p, TOK_MAGIC, 8) != 0 || get32(p + 8) != TOK_BOM) {
        seterr(err, errcap, "%s: not a tokenizer data file (bad magic)", path);
        goto fail;
    }
    /* The arrays are read in place as host u32: little-endian only. */
    if (*(const uint32_t *)(const void *)(p + 8) != TOK_BOM) {
        seterr(err, errcap, "%s: big-endian hosts are not supported", path);
        goto fail;
    }
    uint64_t n = get32(p + 12), cap = get32(p + 16), nbytes = get32(p + 20);
    uint64_t name_len = get32(p + 24), pat_len = get32(p + 28);
    uint64_t need = TOK_HDR + pad4(name_len) + pad4(pat_len) + (n + 1) * 4 + cap * 4 + nbytes;
    if (n < 256 || cap <= n || (cap & (cap - 1)) != 0 || name_len == 0 || name_len > 64 ||
        pat_len == 0 || pat_len > 4096 || need != len) {
        seterr(err, errcap, "%s: corrupt tokenizer data (sizes)", path);
        goto fail;
    }
    e->name = strndup((const char *)p + TOK_HDR, name_len);
    e->pattern = strndup((const char *)p + TOK_HDR + pad4(name_len), pat_len);
    if (!e->name || !e->pattern) {
        seterr(err, errcap, "out of memory");
        goto fail;
    }
    e->n = (uint32_t)n;
    e->mask = (uint32_t)cap - 1;
    e->off = (const uint32_t *)(const void *)(p + TOK_HDR + pad4(name_len) + pad4(pat_len));
    e->hash = e->off + n + 1;
    e->bytes = (const uint8_t *)(e->hash + cap);
    /* Validate everything the lookups will trust. */
    if (e->off[0] != 0 || e->off[n] != nbytes) {
        seterr(err, errcap, "%s: corrupt tokenizer data (offsets)", path);
        goto fail;
    }
    for (uint32_t r = 0; r < n; r++)
        if (e->off[r + 1] < e->off[r]) {
            seterr(err, errcap, "%s: corrupt tokenizer data (offset %u)", path, r);
            goto fail;
        }
    uint32_t used = 0;
    for (uint32_t h = 0; h < cap; h++) {
        uint32_t v = e->hash[h];
        if (v == 0)
            continue;
        if (v > n || e->off[v] == e->off[v - 1]) {
            seterr(err, errcap, "%s: corrupt tokenizer data (hash slot %u)", path, h);
            goto fail;
        }
        used++;
    }
    if (used >= cap) {
        seterr(err, errcap, "%s: corrupt tokenizer data (full hash)", path);
        goto fail;
    }
    for (int b = 0; b < 256; b++) {
        e->byte_rank[b] = TOK_NONE;
        uint8_t c = (uint8_t)b;
        uint32_t i = (uint32_t)tok_hash(&c, 1) & e->mask;
        for (uint32_t v; (v = e->hash[i]) != 0; i = (i + 1) & e->mask) {
            if (e->off[v] - e->off[v - 1] == 1 && e->bytes[e->off[v - 1]] == c) {
                e->byte_rank[b] = v - 1;
                break;
            }
        }
        if (e->byte_rank[b] == TOK_NONE) {
            seterr(err, errcap, "%s: byte 0x%02x has no token", path, b);
            goto fail;
        }
    }
    for (int fast = 0; fast < 2; fast++) {
        char *pat = pcre2_pattern(e->pattern, !fast, err, errcap);
        if (!pat)
            goto fail;
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ec, &eo, NULL);
        free(pat);
        if (!re) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof msg);
            seterr(err, errcap, "%s: pattern does not compile at %zu: %s", path, (size_t)eo, (char *)msg);
            goto fail;
        }
        if (fast) {
            e->re_fast = re;
            e->jit_fast = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
        } else {
            e->re = re;
        }
    }
    e->jit = pcre2_jit_compile(e->re, PCRE2_JIT_COMPLETE) == 0;
    return e;
fail:
    tok_close(e);
    return NULL;
}

tok_enc *tok_open_dir(const char *dir, const char *name, char *err, size_t errcap)
{
    char path[4096];
    int w = snprintf(path, sizeof path, "%s/%s.tgbpe", dir, name);
    if (w < 0 || (size_t)w >= sizeof path) {
        seterr(err, errcap, "tokenizer data path too long");
        return NULL;
    }
    return tok_open(path, err, errcap);
}

const char *tok_name(const tok_enc *e) { return e->name; }
uint32_t tok_vocab_size(const tok_enc *e) { return e->n; }

/* ------------------------------------------------------------------ work */

tok_work *tok_work_new(void)
{
    tok_work *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->md = pcre2_match_data_create(1, NULL);
    w->mctx = pcre2_match_context_create(NULL);
    w->jit = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!w->md || !w->mctx) {
        tok_work_free(w);
        return NULL;
    }
    if (w->jit)
        pcre2_jit_stack_assign(w->mctx, NULL, w->jit);
    buf_init(&w->san, (size_t)1 << 31);
    return w;
}

void tok_work_free(tok_work *w)
{
    if (!w)
        return;
    pcre2_match_data_free(w->md);
    pcre2_match_context_free(w->mctx);
    pcre2_jit_stack_free(w->jit);
    buf_free(&w->san);
    free(w->next);
    free(w->prev);
    free(w->rank);
    free(w->heap);
    free(w);
}

static bool work_reserve(tok_work *w, size_t n)
{
    if (n <= w->cap)
        return true;
    size_t c = w->cap ? w->cap : 1024;
    while (c < n)
        c *= 2;
    uint32_t *a = realloc(w->next, c * sizeof *a);
    if (a) w->next = a;
    uint32_t *b = realloc(w->prev, c * sizeof *b);
    if (b) w->prev = b;
    uint32_t *r = realloc(w->rank, c * sizeof *r);
    if (r) w->rank = r;
    uint64_t *h = realloc(w->heap, 2 * c * sizeof *h);
    if (h) w->heap = h;
    if (!a || !b || !r || !h)
        return false;
    w->cap = c;
    return true;
}

/* ------------------------------------------------------------------ merge */

static inline void emit_span(const tok_enc *e, const uint8_t *p, size_t a, size_t b,
                             tok_emit_fn emit, void *ud)
{
    if (emit)
        emit(ud, rank_of(e, p + a, b - a));
}

/* tiktoken's _byte_pair_merge, verbatim in behaviour: parts[i] is the
 * start of a part and the rank of merging it with the next part. */
static size_t merge_scan(const tok_enc *e, const uint8_t *p, size_t n, tok_emit_fn emit, void *ud)
{
    uint32_t start[TOK_SHORT + 2], rank[TOK_SHORT + 2];
    size_t np = 0;
    uint32_t min_r = TOK_NONE;
    size_t min_i = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t r = rank_of(e, p + i, 2);
        if (r < min_r) {
            min_r = r;
            min_i = i;
        }
        start[np] = (uint32_t)i;
        rank[np++] = r;
    }
    start[np] = (uint32_t)(n - 1);
    rank[np++] = TOK_NONE;
    start[np] = (uint32_t)n;
    rank[np++] = TOK_NONE;
    while (min_r != TOK_NONE) {
        size_t i = min_i;
        if (i > 0)
            rank[i - 1] = i + 2 < np ? rank_of(e, p + start[i - 1], start[i + 2] - start[i - 1]) : TOK_NONE;
        rank[i] = i + 3 < np ? rank_of(e, p + start[i], start[i + 3] - start[i]) : TOK_NONE;
        memmove(start + i + 1, start + i + 2, (np - i - 2) * sizeof *start);
        memmove(rank + i + 1, rank + i + 2, (np - i - 2) * sizeof *rank);
        np--;
        min_r = TOK_NONE;
        for (size_t k = 0; k + 1 < np; k++)
            if (rank[k] < min_r) {
                min_r = rank[k];
                min_i = k;
            }
    }
    if (emit)
        for (size_t k = 0; k + 1 < np; k++)
            emit_span(e, p, start[k], start[k + 1], emit, ud);
    return np - 1;
}

/* The same merges in O(n log n) for long pieces: a list of parts indexed
 * by start byte, and a min-heap of (rank << 32 | start) - the same order
 * as the scan's "lowest rank, then leftmost". Entries whose part has
 * merged away or whose rank changed are stale and skipped; a part's
 * pair only ever grows, so its rank never returns to an old value. */
static void heap_push(uint64_t *h, size_t *len, uint64_t v)
{
    size_t i = (*len)++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (h[up] <= v)
            break;
        h[i] = h[up];
        i = up;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *len)
{
    uint64_t top = h[0], v = h[--(*len)];
    size_t i = 0, n = *len;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    if (n > 0)
        h[i] = v;
    return top;
}

static size_t merge_heap(const tok_enc *e, tok_work *w, const uint8_t *p, size_t n,
                         tok_emit_fn emit, void *ud)
{
    uint32_t *next = w->next, *prev = w->prev, *rank = w->rank;
    uint64_t *heap = w->heap;
    size_t hl = 0;
    const uint32_t end = (uint32_t)n;
    /* pair rank of part i: bytes from i to the end of its next part */
#define PAIR(i) (next[i] < end ? rank_of(e, p + (i), (next[next[i]] < end ? next[next[i]] : end) - (i)) : TOK_NONE)
    for (uint32_t i = 0; i < end; i++) {
        next[i] = i + 1;
        prev[i] = i == 0 ? TOK_NONE : i - 1;
    }
    for (uint32_t i = 0; i < end; i++) {
        rank[i] = i + 1 < end ? rank_of(e, p + i, 2) : TOK_NONE;
        if (rank[i] != TOK_NONE)
            heap_push(heap, &hl, (uint64_t)rank[i] << 32 | i);
    }
    size_t parts = n;
    while (hl > 0) {
        uint64_t top = heap_pop(heap, &hl);
        uint32_t i = (uint32_t)top, r = (uint32_t)(top >> 32);
        if (rank[i] != r || r == TOK_NONE)
            continue; /* stale */
        uint32_t j = next[i];
        next[i] = next[j];
        if (next[j] < end)
            prev[next[j]] = i;
        rank[j] = TOK_NONE; /* j is gone: its entries are stale */
        parts--;
        rank[i] = PAIR(i);
        if (rank[i] != TOK_NONE)
            heap_push(heap, &hl, (uint64_t)rank[i] << 32 | i);
        if (prev[i] != TOK_NONE) {
            uint32_t q = prev[i];
            rank[q] = PAIR(q);
            if (rank[q] != TOK_NONE)
                heap_push(heap, &hl, (uint64_t)rank[q] << 32 | q);
        }
    }
#undef PAIR
    if (emit)
        for (uint32_t i = 0; i < end; i = next[i])
            emit_span(e, p, i, next[i], emit, ud);
    return parts;
}

size_t tok_encode_piece(const tok_enc *e, tok_work *w, const char *text, size_t n,
                        tok_emit_fn emit, void *ud)
{
    const uint8_t *p = (const uint8_t *)text;
    if (n == 0)
        return 0;
    uint32_t r = rank_of(e, p, n);
    if (r != TOK_NONE) {
        if (emit)
            emit(ud, r);
        return 1;
    }
    if (n <= TOK_SHORT)
        return merge_scan(e, p, n, emit, ud);
    if (n < UINT32_MAX && work_reserve(w, n))
        return merge_heap(e, w, p, n, emit, ud);
    /* No memory for the heap: merge in slices of TOK_SHORT bytes (counts
     * stay close; this only happens when malloc fails). */
    size_t total = 0;
    for (size_t a = 0; a < n; a += TOK_SHORT) {
        size_t b = a + TOK_SHORT < n ? a + TOK_SHORT : n;
        total += merge_scan(e, p + a, b - a, emit, ud);
    }
    return total;
}

/* ---------------------------------------------------------------- pieces */

/* re_fast is chosen for text without 3- or 4-byte sequences, i.e. below
 * U+0800: no delta code point can occur there. */
_Static_assert(TOK_UNI_DELTA_MIN >= 0x800, "re_fast needs every delta code point >= U+0800");

/* True if text has a lead byte of a code point >= U+0800. */
static bool has_3byte(const char *text, size_t len)
{
    const uint8_t *p = (const uint8_t *)text;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        /* bytes >= 0xE0 have their top three bits set */
        if ((v & (v << 1) & (v << 2) & 0x8080808080808080ull) != 0)
            return true;
    }
    for (; i < len; i++)
        if (p[i] >= 0xE0)
            return true;
    return false;
}

bool tok_pieces(const tok_enc *e, tok_work *w, const char *text, size_t len,
                tok_piece_fn piece, void *ud)
{
    PCRE2_SIZE at = 0;
    bool fast = e->re_fast && !has_3byte(text, len);
    const pcre2_code *re = fast ? e->re_fast : e->re;
    bool jit = fast ? e->jit_fast : e->jit;
    while (at < len) {
        int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)text, len, at, PCRE2_NO_UTF_CHECK, w->md, w->mctx)
                     : pcre2_match(re, (PCRE2_SPTR)text, len, at, PCRE2_NO_UTF_CHECK, w->md, w->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            return true;
        if (rc < 0) {
            /* Out of JIT stack on a pathological run: the rest is one
             * piece (the count stays close; nothing crashes). */
            return piece(ud, at, len - at);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        if (ov[1] <= ov[0]) { /* an empty match cannot happen; never loop */
            at = ov[0] + 1;
            while (at < len && ((unsigned char)text[at] & 0xC0) == 0x80)
                at++;
            continue;
        }
        if (!piece(ud, ov[0], ov[1] - ov[0]))
            return false;
        at = ov[1];
    }
    return true;
}

struct enc_ctx {
    const tok_enc *e;
    tok_work *w;
    const char *text;
    tok_emit_fn emit;
    void *ud;
    size_t count;
};

static bool enc_piece(void *ud, size_t off, size_t len)
{
    struct enc_ctx *c = ud;
    c->count += tok_encode_piece(c->e, c->w, c->text + off, len, c->emit, c->ud);
    return true;
}

size_t tok_encode(const tok_enc *e, tok_work *w, const char *text, size_t len,
                  tok_emit_fn emit, void *ud)
{
    if (tok_utf8_valid_prefix(text, len) != len) {
        buf_reset(&w->san);
        size_t held;
        if (tok_utf8_sanitize(&w->san, text, len, true, &held) == 0) {
            text = w->san.data;
            len = w->san.len;
        } else {
            /* No memory for a clean copy: count the valid prefix, then
             * every remaining byte as one token (an overestimate). */
            size_t ok = tok_utf8_valid_prefix(text, len);
            return tok_encode(e, w, text, ok, emit, ud) + (len - ok);
        }
    }
    struct enc_ctx c = {e, w, text, emit, ud, 0};
    tok_pieces(e, w, text, len, enc_piece, &c);
    return c.count;
}

int tok_decode(const tok_enc *e, const uint32_t *ids, size_t n, buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= e->n || e->off[ids[i]] == e->off[ids[i] + 1])
            return -EINVAL;
        int rc = buf_append(out, e->bytes + e->off[ids[i]], e->off[ids[i] + 1] - e->off[ids[i]]);
        if (rc)
            return rc;
    }
    return 0;
}

/* ----------------------------------------------------------------- UTF-8 */

/* Length of the valid sequence starting at s[0] (1..4), or 0 if the bytes
 * there are invalid; *sub is then the maximal subpart to replace (>= 1),
 * or 0 when the sequence is a valid but incomplete prefix at the end. */
static size_t utf8_seq(const uint8_t *s, size_t len, size_t *sub)
{
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *sub = 1;
        return 0;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= len) {
            *sub = 0; /* valid so far, cut by the end */
            return 0;
        }
        uint8_t d = s[k];
        if (d < lo || d > hi) {
            *sub = k;
            return 0;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

size_t tok_utf8_valid_prefix(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= len) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (v & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= len)
            break;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t sub, k = utf8_seq(s + i, len - i, &sub);
        if (k == 0)
            return i;
        i += k;
    }
    return i;
}

size_t tok_utf8_sanitize_to(char *out, const char *str, size_t len, bool final, size_t *held)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0, o = 0;
    *held = 0;
    while (i < len) {
        size_t ok = tok_utf8_valid_prefix(str + i, len - i);
        memcpy(out + o, str + i, ok);
        o += ok;
        i += ok;
        if (i >= len)
            break;
        size_t sub;
        (void)utf8_seq(s + i, len - i, &sub);
        if (sub == 0) {
            if (!final) {
                *held = len - i;
                break;
            }
            sub = len - i;
        }
        memcpy(out + o, "\xEF\xBF\xBD", 3);
        o += 3;
        i += sub;
    }
    return o;
}

int tok_utf8_sanitize(buf *out, const char *str, size_t len, bool final, size_t *held)
{
    if (len > SIZE_MAX / 3)
        return -E2BIG;
    int rc = buf_reserve(out, 3 * len); /* every byte can become U+FFFD */
    if (rc)
        return rc;
    out->len += tok_utf8_sanitize_to(out->data + out->len, str, len, final, held);
    out->data[out->len] = '\0';
    return 0;
}

/* ---------------------------------------------------------------- models */

static const struct {
    const char *prefix;
    const char *enc;
} model_enc[] = {
    {"gpt-4o", "o200k_base"},  {"chatgpt-4o", "o200k_base"}, {"gpt-4.1", "o200k_base"},
    {"gpt-4.5", "o200k_base"}, {"gpt-5", "o200k_base"},      {"gpt-oss", "o200k_base"},
    {"o1", "o200k_base"},      {"o3", "o200k_base"},         {"o4", "o200k_base"},
    {"codex-mini", "o200k_base"},
    {"gpt-4", "cl100k_base"},  {"gpt-3.5", "cl100k_base"},   {"gpt-35", "cl100k_base"},
    {"text-embedding-3", "cl100k_base"}, {"text-embedding-ada-002", "cl100k_base"},
    {"davinci-002", "cl100k_base"}, {"babbage-002", "cl100k_base"},
};

const char *tok_encoding_for_model(const char *model, size_t len, bool *exact)
{
    /* "openai/gpt-4o" (OpenRouter) and "accounts/x/models/gpt-oss-120b" */
    for (size_t i = len; i > 0; i--)
        if (model[i - 1] == '/') {
            model += i;
            len -= i;
            break;
        }
    for (size_t k = 0; k < sizeof model_enc / sizeof model_enc[0]; k++) {
        size_t pl = strlen(model_enc[k].prefix);
        if (len < pl || strncasecmp(model, model_enc[k].prefix, pl) != 0)
            continue;
        char nx = len > pl ? model[pl] : '\0';
        if (nx == '\0' || nx == '-' || nx == ':' || nx == '@' || nx == '.' || nx == '_') {
            *exact = true;
            return model_enc[k].enc;
        }
    }
    *exact = false;
    return "o200k_base";
}
