/* test_tokenizer.c - the BPE tokenizer: data files, merges, UTF-8, models.
 * Exactness against tiktoken itself is the integration test
 * tokenizer.test.mjs (the npm package is the oracle); here: the parts a
 * hand-made vocabulary can pin down, corrupt files, and the real data's
 * known answers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "billing/meter.h"
#include "billing/tokenizer.h"

static char tmpdir[256];

/* base64 of one byte string */
static void b64(const unsigned char *p, size_t n, buf *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {t[v >> 18 & 63], t[v >> 12 & 63], i + 1 < n ? t[v >> 6 & 63] : '=', i + 2 < n ? t[v & 63] : '='};
        assert_int_equal(buf_append(out, q, 4), 0);
    }
}

/* A toy encoding: the 256 bytes, then merges in rank order. */
static void toy_json(buf *j, const char *const *merges, size_t nm, const char *pat)
{
    buf_init(j, 1 << 20);
    assert_int_equal(buf_append_str(j, "{\"pat_str\":\""), 0);
    assert_int_equal(buf_append_json_escaped(j, pat, strlen(pat)), 0);
    assert_int_equal(buf_append_str(j, "\",\"special_tokens\":{},\"bpe_ranks\":\"! 0"), 0);
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        assert_int_equal(buf_append_str(j, " "), 0);
        b64(&c, 1, j);
    }
    for (size_t i = 0; i < nm; i++) {
        assert_int_equal(buf_append_str(j, " "), 0);
        b64((const unsigned char *)merges[i], strlen(merges[i]), j);
    }
    assert_int_equal(buf_append_str(j, "\"}"), 0);
}

static tok_enc *toy(const char *const *merges, size_t nm, const char *name)
{
    buf j;
    toy_json(&j, merges, nm, "\\s+|\\S+");
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/%s.tgbpe", tmpdir, name);
    int rc = tok_convert_tiktoken_json(name, j.data, j.len, path, err, sizeof err);
    buf_free(&j);
    if (rc != 0)
        fail_msg("convert: %s", err);
    tok_enc *e = tok_open(path, err, sizeof err);
    if (!e)
        fail_msg("open: %s", err);
    return e;
}

struct idv {
    uint32_t ids[64];
    size_t n;
};

static void collect(void *ud, uint32_t id)
{
    struct idv *v = ud;
    if (v->n < 64)
        v->ids[v->n++] = id;
}

static size_t enc_ids(const tok_enc *e, tok_work *w, const char *s, struct idv *v)
{
    v->n = 0;
    return tok_encode(e, w, s, strlen(s), collect, v);
}

/* Merges apply lowest rank first, leftmost on ties, and a whole piece that
 * is a token is that token. */
static void test_toy_merges(void **state)
{
    (void)state;
    /* ranks: 256 "ab", 257 "bc", 258 "abc", 259 "aa", 260 "aaaa" */
    static const char *const m[] = {"ab", "bc", "abc", "aa", "aaaa"};
    tok_enc *e = toy(m, 5, "toy");
    tok_work *w = tok_work_new();
    struct idv v;
    assert_int_equal(tok_vocab_size(e), 261);
    assert_string_equal(tok_name(e), "toy");
    /* "abc": ab (256) merges first, then ab+c = abc (258): one token */
    assert_int_equal(enc_ids(e, w, "abc", &v), 1);
    assert_int_equal(v.ids[0], 258);
    /* "bcab": bc(257) vs ab(256): ab first -> [b c ab] then bc -> [bc ab] */
    assert_int_equal(enc_ids(e, w, "bcab", &v), 2);
    assert_int_equal(v.ids[0], 257);
    assert_int_equal(v.ids[1], 256);
    /* "aaa": aa at 0 and 1 tie: leftmost -> [aa, a] */
    assert_int_equal(enc_ids(e, w, "aaa", &v), 2);
    assert_int_equal(v.ids[0], 259);
    assert_int_equal(v.ids[1], 'a');
    /* "aaaaa" -> aa aa a -> aaaa a */
    assert_int_equal(enc_ids(e, w, "aaaaa", &v), 2);
    assert_int_equal(v.ids[0], 260);
    assert_int_equal(v.ids[1], 'a');
    /* pieces: "ab  ab" -> "ab", "  ", "ab" */
    assert_int_equal(enc_ids(e, w, "ab  ab", &v), 4);
    assert_int_equal(v.ids[0], 256);
    assert_int_equal(v.ids[1], ' ');
    assert_int_equal(v.ids[2], ' ');
    assert_int_equal(v.ids[3], 256);
    /* decode round trip */
    buf out;
    buf_init(&out, 1024);
    assert_int_equal(tok_decode(e, v.ids, v.n, &out), 0);
    assert_string_equal(out.data, "ab  ab");
    uint32_t bad = 9999;
    assert_int_equal(tok_decode(e, &bad, 1, &out), -EINVAL);
    buf_free(&out);
    tok_work_free(w);
    tok_close(e);
}

/* Pieces longer than the scan limit take the heap merge: same answers as
 * the scan gives on the same text split into a short piece. */
static void test_toy_long_piece(void **state)
{
    (void)state;
    static const char *const m[] = {"ab", "bc", "abc", "aa", "aaaa"};
    tok_enc *e = toy(m, 5, "toylong");
    tok_work *w = tok_work_new();
    char s[1001];
    /* 1000 x "a": aaaa x 250 */
    memset(s, 'a', 1000);
    s[1000] = '\0';
    assert_int_equal(tok_count(e, w, s, 1000), 250);
    memset(s, 'a', 999);
    s[999] = '\0';
    struct idv v;
    v.n = 0;
    assert_int_equal(tok_encode(e, w, s, 999, collect, &v), 251); /* 249 aaaa + aa + a */
    assert_int_equal(v.ids[0], 260);
    /* (abc) x 300: every abc is one token */
    for (int i = 0; i < 300; i++)
        memcpy(s + 3 * i, "abc", 3);
    assert_int_equal(tok_count(e, w, s, 900), 300);
    /* "b" + (ca x 200) + "b": b c a b ...: bc first? ab has the lower rank:
     * "cab" -> c ab; the heap must pick ab everywhere before bc */
    s[0] = 'b';
    for (int i = 0; i < 200; i++)
        memcpy(s + 1 + 2 * i, "ca", 2);
    s[401] = 'b';
    size_t short_n = tok_count(e, w, "bcacab", 6); /* b c a c ab -> bc a c ab */
    assert_int_equal(short_n, 4);
    /* long: b c (a c)*199 a b -> bc, (a, c)*..., ab */
    assert_int_equal(tok_count(e, w, s, 402), 1 + 199 * 2 + 1);
    tok_work_free(w);
    tok_close(e);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)len);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return p;
}

/* Every corruption the loader can see is refused with a message. */
static void test_corrupt_files(void **state)
{
    (void)state;
    static const char *const m[] = {"ab"};
    tok_close(toy(m, 1, "good"));
    char good[300], bad[300], err[256];
    snprintf(good, sizeof good, "%s/good.tgbpe", tmpdir);
    snprintf(bad, sizeof bad, "%s/bad.tgbpe", tmpdir);
    size_t n;
    char *d = read_file(good, &n);
    struct {
        size_t at;
        uint8_t val;
        const char *want;
    } cases[] = {
        {0, 'X', "bad magic"},
        {12, 0xff, "sizes"},          /* n */
        {16, 0x03, "sizes"},          /* cap not a power of two */
        {24, 0, "sizes"},             /* name length 0 */
        {32 + 4 + 8, 0xff, "offsets"}, /* off[0] (after "good" and the pattern "\s+|\S+") */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *c = malloc(n);
        memcpy(c, d, n);
        c[cases[i].at] = (char)cases[i].val;
        write_file(bad, c, n);
        free(c);
        err[0] = '\0';
        assert_null(tok_open(bad, err, sizeof err));
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].want);
    }
    /* truncated */
    write_file(bad, d, n - 1);
    assert_null(tok_open(bad, err, sizeof err));
    assert_non_null(strstr(err, "sizes"));
    write_file(bad, d, 10);
    assert_null(tok_open(bad, err, sizeof err));
    /* missing */
    assert_null(tok_open_dir(tmpdir, "nonexistent", err, sizeof err));
    assert_non_null(strstr(err, "No such file"));
    free(d);
    /* bad JSON inputs of the converter */
    const char *jsons[] = {
        "{}", "[1]", "{\"pat_str\":\"x\",\"bpe_ranks\":\"QQ==\"}",
        "{\"pat_str\":\"x\",\"bpe_ranks\":\"! 0 QQ== Q\"}", "{\"pat_str\":\"x\",\"bpe_ranks\":\"! 0 QQ== QQ==\"}",
        "{\"pat_str\":\"x\",\"bpe_ranks\":\"! zz\"}",
    };
    for (size_t i = 0; i < sizeof jsons / sizeof jsons[0]; i++) {
        err[0] = '\0';
        assert_int_equal(tok_convert_tiktoken_json("x", jsons[i], strlen(jsons[i]), bad, err, sizeof err), -1);
        assert_true(err[0] != '\0');
    }
}

/* WHATWG replacement of invalid UTF-8: what TextDecoder produces. */
static void test_utf8_sanitize(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"abc", 3, "abc"},
        {"\x80", 1, "\xEF\xBF\xBD"},
        {"\xC0\x80", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},         /* overlong: C0 never starts */
        {"\xE0\x80\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* E0 needs A0..BF */
        {"\xED\xA0\x80", 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* surrogate */
        {"\xE2\x82", 2, "\xEF\xBF\xBD"},                    /* truncated: one U+FFFD */
        {"\xE2\x82x", 3, "\xEF\xBF\xBDx"},
        {"\xF0\x9F\x98", 3, "\xEF\xBF\xBD"},
        {"\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"},
        {"\xF4\x90\x80\x80", 4, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
        {"\xF5", 1, "\xEF\xBF\xBD"},
        {"\xFF\xFE", 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"a\xC3", 2, "a\xEF\xBF\xBD"},
        {"\xC3\xA9\xC3", 3, "\xC3\xA9\xEF\xBF\xBD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf out;
        buf_init(&out, 1024);
        size_t held;
        assert_int_equal(tok_utf8_sanitize(&out, cases[i].in, cases[i].n, true, &held), 0);
        assert_int_equal(held, 0);
        if (out.len != strlen(cases[i].out) || memcmp(out.data, cases[i].out, out.len) != 0)
            fail_msg("case %zu: got %zu bytes", i, out.len);
        buf_free(&out);
        char fixed[64];
        size_t w = tok_utf8_sanitize_to(fixed, cases[i].in, cases[i].n, true, &held);
        assert_int_equal(w, strlen(cases[i].out));
        assert_memory_equal(fixed, cases[i].out, w);
    }
    /* not final: a valid prefix at the end is held back, not replaced */
    buf out;
    buf_init(&out, 64);
    size_t held;
    assert_int_equal(tok_utf8_sanitize(&out, "ab\xF0\x9F", 4, false, &held), 0);
    assert_int_equal(held, 2);
    assert_string_equal(out.data, "ab");
    buf_free(&out);
    assert_int_equal(tok_utf8_valid_prefix("abc\xC3\xA9\x80", 6), 5);
}

static void test_model_map(void **state)
{
    (void)state;
    static const struct {
        const char *model, *enc;
        bool exact;
    } cases[] = {
        {"gpt-4o", "o200k_base", true},         {"gpt-4o-mini-2024-07-18", "o200k_base", true},
        {"gpt-4.1-nano", "o200k_base", true},   {"gpt-5", "o200k_base", true},
        {"gpt-5-mini", "o200k_base", true},     {"o1", "o200k_base", true},
        {"o3-mini", "o200k_base", true},        {"o4-mini-2025-04-16", "o200k_base", true},
        {"openai/gpt-4o", "o200k_base", true},  {"gpt-4", "cl100k_base", true},
        {"gpt-4-turbo", "cl100k_base", true},   {"gpt-3.5-turbo-0125", "cl100k_base", true},
        {"text-embedding-3-small", "cl100k_base", true},
        {"accounts/fireworks/models/gpt-oss-120b", "o200k_base", true},
        {"claude-sonnet-4-5", "o200k_base", false}, {"gemini-2.5-flash", "o200k_base", false},
        {"o1x", "o200k_base", false},           {"olmo-7b", "o200k_base", false},
        {"gpt-4o", "o200k_base", true},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool exact = !cases[i].exact;
        const char *e = tok_encoding_for_model(cases[i].model, strlen(cases[i].model), &exact);
        if (strcmp(e, cases[i].enc) != 0 || exact != cases[i].exact)
            fail_msg("%s: %s %d", cases[i].model, e, exact);
    }
}

/* The real encodings, when the build made them (npm available). */
static tok_set real;

static void test_real_known_answers(void **state)
{
    (void)state;
    if (!real.o200k || !real.cl100k)
        skip();
    tok_work *w = tok_work_new();
    struct idv v;
    /* tiktoken: enc.encode_ordinary("hello world") */
    assert_int_equal(enc_ids(real.o200k, w, "hello world", &v), 2);
    assert_int_equal(v.ids[0], 24912);
    assert_int_equal(v.ids[1], 2375);
    assert_int_equal(enc_ids(real.cl100k, w, "hello world", &v), 2);
    assert_int_equal(v.ids[0], 15339);
    assert_int_equal(v.ids[1], 1917);
    /* special-token text is ordinary text */
    assert_true(tok_count(real.o200k, w, "<|endoftext|>", 13) > 1);
    /* U+0085 is whitespace to tiktoken (Rust \s), not to PCRE2's \s */
    assert_int_equal(tok_count(real.o200k, w, "a\xC2\x85\xC2\x85", 5),
                     tok_count(real.o200k, w, "a", 1) + tok_count(real.o200k, w, "\xC2\x85\xC2\x85", 4));
    /* decode(encode(x)) == x */
    static const char text[] = "Grüße, 世界! 👨‍👩‍👧 x = 12345;\n\tif (a) { return 'b'; }  \r\n";
    struct idv all;
    all.n = 0;
    tok_encode(real.o200k, w, text, sizeof text - 1, collect, &all);
    buf out;
    buf_init(&out, 4096);
    assert_int_equal(tok_decode(real.o200k, all.ids, all.n, &out), 0);
    assert_int_equal(out.len, sizeof text - 1);
    assert_memory_equal(out.data, text, out.len);
    buf_free(&out);
    tok_work_free(w);
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tg-tok-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    char err[512];
    if (tok_set_load(&real, NULL, err, sizeof err) < 2)
        fprintf(stdout, "# no tokenizer data (%s): real-data tests skip\n", err);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tok_set_free(&real);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_toy_merges),   cmocka_unit_test(test_toy_long_piece),
        cmocka_unit_test(test_corrupt_files), cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_model_map),    cmocka_unit_test(test_real_known_answers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
