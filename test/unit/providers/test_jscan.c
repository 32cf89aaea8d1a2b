/* test_jscan.c - the zero-allocation JSON scanner, checked against jansson.
 *
 * Every .json fixture of the provider wire fixtures is validated and
 * walked with the iterators, and the walk must equal jansson's DOM. Every
 * proper prefix of every fixture must be rejected. A table of invalid and
 * valid documents pins down the grammar (both jscan and jansson must give
 * the same verdict). The fuzz corpus is replayed through the fuzz driver,
 * which is compiled into this test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "daemon/base/buf.h"
#include "providers/jscan.h"

/* The fuzz driver: LLVMFuzzerTestOneInput() replays the corpus below. */
#include "test/fuzz/fuzz_jscan.c"

#define JFLAGS (JSON_DECODE_ANY | JSON_ALLOW_NUL)

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long sz = ftell(f);
    assert_true(sz >= 0);
    rewind(f);
    char *p = malloc((size_t)sz + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)sz, f), (size_t)sz);
    p[sz] = '\0';
    fclose(f);
    *len = (size_t)sz;
    return p;
}

typedef void (*file_fn)(const char *path, const char *data, size_t len, void *ud);

/* Calls fn for every regular file under dir whose name ends in suffix
 * ("" for all); returns how many. */
static size_t walk_dir(const char *dir, const char *suffix, file_fn fn, void *ud)
{
    size_t count = 0, sl = strlen(suffix);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char path[4096];
        struct stat st;
        assert_true(snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) < (int)sizeof(path));
        assert_int_equal(stat(path, &st), 0);
        if (S_ISDIR(st.st_mode)) {
            count += walk_dir(path, suffix, fn, ud);
            continue;
        }
        size_t nl = strlen(de->d_name);
        if (!S_ISREG(st.st_mode) || nl < sl || strcmp(de->d_name + nl - sl, suffix) != 0)
            continue;
        size_t len;
        char *data = read_file(path, &len);
        fn(path, data, len, ud);
        free(data);
        count++;
    }
    closedir(d);
    return count;
}

/* The jscan value v and the jansson value j are the same JSON. */
static void assert_same(const jscan_val *v, json_t *j)
{
    jscan_iter it;
    jscan_val k, x;
    size_t count = 0, len;
    int rc;

    switch (v->type) {
    case JSCAN_OBJECT:
        assert_true(json_is_object(j));
        assert_int_equal(jscan_iter_init(&it, v), 0);
        while ((rc = jscan_obj_next(&it, &k, &x)) == 0) {
            assert_int_equal(k.type, JSCAN_STRING);
            char *key = malloc(k.n);
            assert_non_null(key);
            assert_int_equal(jscan_str_decode(&k, key, k.n, &len), 0);
            json_t *c = json_object_getn(j, key, len);
            if (!c)
                fail_msg("member \"%s\" not in jansson's object", key);
            assert_same(&x, c);
            /* the lookup by name finds the same span as the iteration */
            if (!memchr(key, '\0', len)) {
                jscan_val y;
                assert_int_equal(jscan_val_get(v, key, &y), 0);
                assert_ptr_equal(y.p, x.p);
                assert_int_equal(y.n, x.n);
            }
            free(key);
            count++;
        }
        assert_int_equal(rc, -ENOENT);
        assert_int_equal(count, json_object_size(j));
        assert_int_equal(jscan_is_empty(v), count == 0);
        break;
    case JSCAN_ARRAY:
        assert_true(json_is_array(j));
        assert_int_equal(jscan_iter_init(&it, v), 0);
        while ((rc = jscan_arr_next(&it, &x)) == 0) {
            json_t *c = json_array_get(j, count++);
            assert_non_null(c);
            assert_same(&x, c);
        }
        assert_int_equal(rc, -ENOENT);
        assert_int_equal(count, json_array_size(j));
        assert_int_equal(jscan_arr_len(v, &len), 0);
        assert_int_equal(len, count);
        assert_int_equal(jscan_is_empty(v), count == 0);
        break;
    case JSCAN_STRING: {
        assert_true(json_is_string(j));
        /* decoding never grows a string, so n - 1 bytes always suffice */
        char *s = malloc(v->n - 1);
        assert_non_null(s);
        assert_int_equal(jscan_str_decode(v, s, v->n - 1, &len), 0);
        assert_int_equal(len, json_string_length(j));
        assert_memory_equal(s, json_string_value(j), len);
        assert_int_equal(s[len], '\0');
        assert_true(jscan_str_eq(v, json_string_value(j), len));
        if (len > 0)
            assert_false(jscan_str_eq(v, json_string_value(j), len - 1));
        free(s);
        break;
    }
    case JSCAN_NUMBER: {
        int64_t x64;
        if (json_is_integer(j)) {
            assert_int_equal(jscan_int64(v, &x64), 0);
            assert_true(x64 == json_integer_value(j));
        } else {
            assert_true(json_is_real(j));
            assert_int_equal(jscan_int64(v, &x64), -EINVAL);
            char num[128];
            assert_true(v->n < sizeof(num));
            memcpy(num, v->p, v->n);
            num[v->n] = '\0';
            assert_true(strtod(num, NULL) == json_real_value(j));
        }
        break;
    }
    case JSCAN_TRUE:
    case JSCAN_FALSE: {
        bool b;
        assert_int_equal(jscan_bool(v, &b), 0);
        assert_true(json_is_boolean(j));
        assert_int_equal(b, json_is_true(j));
        break;
    }
    case JSCAN_NULL:
        assert_true(json_is_null(j));
        break;
    default:
        fail_msg("bad type %d", (int)v->type);
    }
}

static void check_fixture(const char *path, const char *data, size_t len, void *ud)
{
    jscan_error err = {0, NULL};
    json_error_t jerr;
    jscan_val root;
    (void)ud;

    if (jscan_validate(data, len, 64, &err) != 0)
        fail_msg("%s rejected: %s at %zu", path, err.msg, err.offset);
    json_t *j = json_loadb(data, len, JFLAGS, &jerr);
    if (!j)
        fail_msg("%s: jansson: %s", path, jerr.text);
    assert_int_equal(jscan_root(data, len, &root), 0);
    assert_same(&root, j);
    json_decref(j);
    /* jscan_parse finds the same value in its single pass */
    jscan_val parsed;
    assert_int_equal(jscan_parse(data, len, 64, &parsed, &err), 0);
    assert_ptr_equal(parsed.p, root.p);
    assert_int_equal(parsed.n, root.n);
    assert_int_equal(parsed.type, root.type);

    /* every proper prefix that cuts the value short is refused, with the
     * error at or before the cut */
    size_t end = (size_t)(root.p - data) + root.n;
    for (size_t cut = 0; cut < end; cut++) {
        err.msg = NULL;
        if (jscan_validate(data, cut, 64, &err) != -EINVAL)
            fail_msg("%s: prefix of %zu bytes accepted", path, cut);
        assert_non_null(err.msg);
        assert_true(err.offset <= cut);
    }
    /* and so is a byte of garbage after it */
    char *more = malloc(len + 1);
    assert_non_null(more);
    memcpy(more, data, len);
    more[len] = 'x';
    assert_int_equal(jscan_validate(more, len + 1, 64, &err), -EINVAL);
    assert_int_equal(err.offset, len);
    assert_string_equal(err.msg, "trailing characters after JSON value");
    free(more);
}

static void test_fixtures_match_jansson(void **state)
{
    (void)state;
    size_t n = walk_dir(TG_FIXTURES "/providers", ".json", check_fixture, NULL);
    assert_true(n >= 40);
}

struct bad_case {
    const char *s;   /* the document */
    size_t len;      /* 0: strlen(s) */
    size_t off;      /* expected error offset */
    const char *msg; /* expected error text */
};

static void test_invalid_documents(void **state)
{
    (void)state;
    static const struct bad_case bad[] = {
        {"", 0, 0, "unexpected end of input"},
        {"   ", 0, 3, "unexpected end of input"},
        {"[1,]", 0, 3, "unexpected character"},
        {"{\"a\":1,}", 0, 7, "expected string key"},
        {"[1 2]", 0, 3, "expected ',' or ']'"},
        {"{\"a\" 1}", 0, 5, "expected ':'"},
        {"{\"a\":1 \"b\":2}", 0, 7, "expected ',' or '}'"},
        {"{1:2}", 0, 1, "expected string key"},
        {"{'a':1}", 0, 1, "expected string key"},
        {"[}", 0, 1, "unexpected character"},
        {"{]", 0, 1, "expected string key"},
        {"]", 0, 0, "unexpected character"},
        {"{}}", 0, 2, "trailing characters after JSON value"},
        {"[] x", 0, 3, "trailing characters after JSON value"},
        {"\xef\xbb\xbf{}", 0, 0, "unexpected character"},
        {"\"\\x\"", 0, 2, "invalid escape"},
        {"\"\\U0041\"", 0, 2, "invalid escape"},
        {"\"\\u12G4\"", 0, 5, "invalid \\u escape"},
        {"\"\\u12\"", 0, 5, "invalid \\u escape"},
        {"\"\\ud800\"", 0, 1, "unpaired surrogate in \\u escape"},
        {"\"\\udc00\"", 0, 1, "unpaired surrogate in \\u escape"},
        {"\"a\\ud800\\u0041\"", 0, 2, "unpaired surrogate in \\u escape"},
        {"\"\\ud800\\ud800\"", 0, 1, "unpaired surrogate in \\u escape"},
        {"\"\\ud800x12345\"", 0, 1, "unpaired surrogate in \\u escape"},
        {"\"\xc3\x28\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\xc0\xaf\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\xe0\x80\xaf\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\xed\xa0\x80\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\xf4\x90\x80\x80\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\xf5\x80\x80\x80\"", 0, 1, "invalid UTF-8 in string"},
        {"\"\x80\"", 0, 1, "invalid UTF-8 in string"},
        {"\"ab\xe2\x82\"", 0, 3, "invalid UTF-8 in string"},
        {"[\xc3\xa9]", 0, 1, "unexpected character"},
        {"\"a\x01\"", 0, 2, "control character in string"},
        {"\"a\tb\"", 0, 2, "control character in string"},
        {"\"a\nb\"", 0, 2, "control character in string"},
        {"\"a\0b\"", 5, 2, "control character in string"},
        {"\"abc", 0, 4, "unterminated string"},
        {"\"abc\\", 0, 5, "unterminated string"},
        {"01", 0, 1, "leading zero in number"},
        {"-01", 0, 2, "leading zero in number"},
        {"[00]", 0, 2, "leading zero in number"},
        {"1.", 0, 2, "unexpected end of input"},
        {"1.e5", 0, 2, "invalid number"},
        {".5", 0, 0, "unexpected character"},
        {"1e", 0, 2, "unexpected end of input"},
        {"1e+", 0, 3, "unexpected end of input"},
        {"[1e+]", 0, 4, "invalid number"},
        {"-", 0, 1, "unexpected end of input"},
        {"-a", 0, 1, "invalid number"},
        {"+1", 0, 0, "unexpected character"},
        {"0x10", 0, 1, "trailing characters after JSON value"},
        {"tru", 0, 3, "unexpected end of input"},
        {"trUe", 0, 2, "invalid literal"},
        {"True", 0, 0, "unexpected character"},
        {"nul", 0, 3, "unexpected end of input"},
        {"NaN", 0, 0, "unexpected character"},
        {"[Infinity]", 0, 1, "unexpected character"},
        {"[1]\0", 4, 3, "trailing characters after JSON value"},
        {"{\"a\":}", 0, 5, "unexpected character"},
        {"[\"a\",\"b\"", 0, 8, "unexpected end of input"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].s);
        jscan_error err = {999, NULL};
        json_error_t jerr;
        if (jscan_validate(bad[i].s, len, 64, &err) != -EINVAL)
            fail_msg("case %zu accepted", i);
        if (err.offset != bad[i].off || strcmp(err.msg, bad[i].msg) != 0)
            fail_msg("case %zu: got \"%s\" at %zu, want \"%s\" at %zu", i, err.msg, err.offset,
                     bad[i].msg, bad[i].off);
        json_t *j = json_loadb(bad[i].s, len, JFLAGS, &jerr);
        if (j)
            fail_msg("case %zu: jansson accepts it", i);
        /* the fuzz driver's agreement check holds on it as well */
        assert_int_equal(LLVMFuzzerTestOneInput((const uint8_t *)bad[i].s, len), 0);
    }
    /* a NULL err is allowed */
    assert_int_equal(jscan_validate("[", 1, 64, NULL), -EINVAL);
}

static void test_valid_documents(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
    } good[] = {
        {"0", 0},
        {"-0", 0},
        {"-0.0e-0", 0},
        {"1E+2", 0},
        {"123.456e78", 0},
        {" \t\r\n[ ] \n", 0},
        {"{ }", 0},
        {"\"\"", 0},
        {"true", 0},
        {"null", 0},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 0},
        {"\"\\u0000\"", 0},
        {"\"\\ud83d\\ude00 \\uD83D\\uDE00\"", 0},
        {"\"\\uffff\\ud7ff\\ue000\"", 0},
        {"\"\xc2\x80 \xdf\xbf \xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf\"", 0},
        {"\"\xf0\x90\x80\x80 \xf4\x8f\xbf\xbf \x7f\"", 0},
        {"[[[[]]],{\"a\":{\"b\":[{}]}},[{\"c\":[]}]]", 0},
        {"{\"a\":1,\"a\":2}", 0},
        {"{\"\":\"\"}", 0},
        {"-9223372036854775808", 0},
        {"[1,-2,3.5,\"x\",true,false,null,{}]", 0},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        size_t len = good[i].len ? good[i].len : strlen(good[i].s);
        jscan_error err = {0, NULL};
        json_error_t jerr;
        if (jscan_validate(good[i].s, len, 64, &err) != 0)
            fail_msg("case %zu rejected: %s at %zu", i, err.msg, err.offset);
        json_t *j = json_loadb(good[i].s, len, JFLAGS, &jerr);
        if (!j)
            fail_msg("case %zu: jansson rejects it: %s", i, jerr.text);
        jscan_val root, parsed;
        assert_int_equal(jscan_root(good[i].s, len, &root), 0);
        assert_int_equal(jscan_parse(good[i].s, len, 64, &parsed, NULL), 0);
        assert_ptr_equal(parsed.p, root.p);
        assert_int_equal(parsed.n, root.n);
        assert_int_equal(parsed.type, root.type);
        if (strcmp(good[i].s, "{\"a\":1,\"a\":2}") != 0) /* jansson keeps the last "a" */
            assert_same(&root, j);
        json_decref(j);
        assert_int_equal(LLVMFuzzerTestOneInput((const uint8_t *)good[i].s, len), 0);
    }
}

/* depth nested containers: "[[[...]]]" or {"a":{"a":...}} alternating */
static char *nest(size_t depth, bool mixed, size_t *len)
{
    buf b;
    buf_init(&b, 16 * depth + 16);
    for (size_t i = 0; i < depth; i++)
        assert_int_equal(buf_append_str(&b, mixed && i % 2 ? "{\"a\":" : "["), 0);
    assert_int_equal(buf_append_str(&b, "1"), 0);
    for (size_t i = depth; i-- > 0;)
        assert_int_equal(buf_append_str(&b, mixed && i % 2 ? "}" : "]"), 0);
    *len = b.len;
    return b.data;
}

static void test_depth(void **state)
{
    (void)state;
    jscan_error err;
    size_t len;
    char *s;

    s = nest(64, false, &len);
    assert_int_equal(jscan_validate(s, len, 64, &err), 0);
    assert_int_equal(jscan_validate(s, len, 63, &err), -EINVAL);
    assert_int_equal(err.offset, 63);
    assert_string_equal(err.msg, "nesting too deep");
    assert_int_equal(jscan_validate("1", 1, 0, &err), 0);
    assert_int_equal(jscan_validate("[]", 2, 0, &err), -EINVAL);
    free(s);

    s = nest(65, true, &len);
    assert_int_equal(jscan_validate(s, len, 64, &err), -EINVAL);
    assert_string_equal(err.msg, "nesting too deep");
    assert_int_equal(s[err.offset + 1], '1'); /* the 65th opener */
    free(s);

    /* object/array bookkeeping across several 64-level words */
    s = nest(1000, true, &len);
    assert_int_equal(jscan_validate(s, len, 1000, &err), 0);
    json_error_t jerr;
    json_t *j = json_loadb(s, len, JFLAGS, &jerr);
    assert_non_null(j);
    json_decref(j);
    /* a closing bracket of the wrong kind deep inside is caught */
    char *mid = strchr(s, '1');
    assert_int_equal(mid[1], '}'); /* innermost level 999 is an object... */
    mid[1] = ']';                  /* ...so ']' is wrong */
    assert_int_equal(jscan_validate(s, len, 1000, &err), -EINVAL);
    assert_int_equal(err.offset, (size_t)(mid + 1 - s));
    free(s);

    /* a depth bomb stops at the limit, which is clamped to JSCAN_DEPTH_LIMIT */
    size_t bomb = 100000;
    s = malloc(bomb);
    assert_non_null(s);
    memset(s, '[', bomb);
    assert_int_equal(jscan_validate(s, bomb, 64, &err), -EINVAL);
    assert_int_equal(err.offset, 64);
    assert_string_equal(err.msg, "nesting too deep");
    assert_int_equal(jscan_validate(s, bomb, 1000000, &err), -EINVAL);
    assert_int_equal(err.offset, JSCAN_DEPTH_LIMIT);
    assert_int_equal(jscan_validate(s, JSCAN_DEPTH_LIMIT, 1000000, &err), -EINVAL);
    assert_string_equal(err.msg, "unexpected end of input");
    /* the accessors don't recurse, so a bomb costs them nothing either */
    jscan_val v;
    assert_int_equal(jscan_root(s, bomb, &v), -EINVAL);
    memset(s + bomb / 2, ']', bomb / 2);
    assert_int_equal(jscan_root(s, bomb, &v), 0);
    assert_int_equal(v.n, bomb);
    assert_int_equal(LLVMFuzzerTestOneInput((const uint8_t *)s, bomb), 0);
    free(s);
}

static void test_obj_get(void **state)
{
    (void)state;
    static const char doc[] =
        " {\"nested\":{\"model\":\"inner\"},\"list\":[\"model\",{\"model\":1}],"
        "\"mod\\u0065l\":\"first\",\"model\":\"second\",\"caf\\u00e9\":true,"
        "\"k\\\"q\":null, \"\\ud83d\\ude00\" : [] } ";
    jscan_val v;
    char out[64];
    size_t len;

    assert_int_equal(jscan_validate(doc, sizeof(doc) - 1, 64, NULL), 0);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "model", &v), 0);
    assert_int_equal(v.type, JSCAN_STRING);
    assert_int_equal(jscan_str_decode(&v, out, sizeof(out), &len), 0);
    assert_string_equal(out, "first");
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "caf\xc3\xa9", &v), 0);
    assert_int_equal(v.type, JSCAN_TRUE);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "k\"q", &v), 0);
    assert_int_equal(v.type, JSCAN_NULL);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "\xf0\x9f\x98\x80", &v), 0);
    assert_int_equal(v.type, JSCAN_ARRAY);
    assert_int_equal(v.n, 2);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "list", &v), 0);
    assert_int_equal(jscan_arr_len(&v, &len), 0);
    assert_int_equal(len, 2);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "mode", &v), -ENOENT);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "modell", &v), -ENOENT);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "", &v), -ENOENT);
    assert_int_equal(jscan_path_get(doc, sizeof(doc) - 1, "nested.model", &v), 0);
    assert_true(jscan_str_eq(&v, "inner", 5));
    assert_int_equal(jscan_path_get(doc, sizeof(doc) - 1, "nested.model.x", &v), -ENOENT);
    assert_int_equal(jscan_path_get(doc, sizeof(doc) - 1, "nested.nope", &v), -ENOENT);
    assert_int_equal(jscan_path_get(doc, sizeof(doc) - 1, "list.model", &v), -ENOENT);

    /* not an object, or broken */
    assert_int_equal(jscan_obj_get("[1]", 3, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("{\"a\":1", 6, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("{\"a\" 1}", 7, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("{\"b\":1 \"a\":2}", 13, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("{\"a\":[}", 7, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("{\"a\":\"x}", 8, "a", &v), -EINVAL);
    assert_int_equal(jscan_obj_get("", 0, "a", &v), -EINVAL);
    assert_int_equal(jscan_path_get("[]", 2, "a", &v), -EINVAL);
}

static void test_cached_tokens_path(void **state)
{
    (void)state;
    size_t len;
    char *body = read_file(
        TG_FIXTURES "/providers/openai/chat_completion_response_cached_tokens.json", &len);
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JFLAGS, &jerr);
    assert_non_null(j);
    json_t *want = json_object_get(
        json_object_get(json_object_get(j, "usage"), "prompt_tokens_details"), "cached_tokens");
    assert_true(json_is_integer(want));
    jscan_val v;
    int64_t got;
    assert_int_equal(jscan_path_get(body, len, "usage.prompt_tokens_details.cached_tokens", &v), 0);
    assert_int_equal(jscan_int64(&v, &got), 0);
    assert_true(got == json_integer_value(want));
    assert_true(got == 4012); /* the README quotes this value */
    assert_int_equal(jscan_path_get(body, len, "usage.prompt_tokens_details.nope", &v), -ENOENT);
    json_decref(j);
    free(body);
}

static jscan_val val_of(const char *s)
{
    jscan_val v;
    assert_int_equal(jscan_root(s, strlen(s), &v), 0);
    return v;
}

static void test_decoders(void **state)
{
    (void)state;
    char out[16];
    size_t len;
    int64_t x;
    bool b;
    jscan_val v;

    v = val_of("\"a\\u00e9\\ud83d\\ude00\\n\\/\"");
    assert_int_equal(jscan_str_decode(&v, out, sizeof(out), &len), 0);
    assert_int_equal(len, 9);
    assert_memory_equal(out, "a\xc3\xa9\xf0\x9f\x98\x80\n/", 9);
    assert_true(jscan_str_eq(&v, "a\xc3\xa9\xf0\x9f\x98\x80\n/", 9));
    assert_false(jscan_str_eq(&v, "a\xc3\xa9\xf0\x9f\x98\x80\n/x", 10));
    assert_false(jscan_str_eq(&v, "a\xc3\xa9\xf0\x9f\x98\x80\n", 8));
    assert_int_equal(jscan_str_decode(&v, out, 10, &len), 0);
    assert_int_equal(jscan_str_decode(&v, out, 9, &len), -E2BIG);
    assert_int_equal(jscan_str_decode(&v, out, 3, &len), -E2BIG);
    v = val_of("\"abcdef\"");
    assert_int_equal(jscan_str_decode(&v, out, 6, &len), -E2BIG);
    assert_int_equal(jscan_str_decode(&v, out, 0, &len), -E2BIG);
    v = val_of("\"\"");
    assert_int_equal(jscan_str_decode(&v, out, 1, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(jscan_str_decode(&v, out, 0, &len), -E2BIG);
    v = val_of("\"a\\u0000b\"");
    assert_int_equal(jscan_str_decode(&v, out, sizeof(out), &len), 0);
    assert_int_equal(len, 3);
    assert_memory_equal(out, "a\0b", 3);
    assert_true(jscan_str_eq(&v, "a\0b", 3));
    assert_false(jscan_str_eq(&v, "a", 1));
    /* decoders refuse what the validator would: a lone surrogate */
    v = val_of("\"\\ud800\"");
    assert_int_equal(jscan_str_decode(&v, out, sizeof(out), &len), -EINVAL);
    assert_int_equal(jscan_str_decode(&(jscan_val){"12", 2, JSCAN_NUMBER}, out, 16, &len), -EINVAL);

    static const struct {
        const char *s;
        int rc;
        int64_t want;
    } ints[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"42", 0, 42},
        {"-17", 0, -17},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", -ERANGE, 0},
        {"-9223372036854775809", -ERANGE, 0},
        {"99999999999999999999999", -ERANGE, 0},
        {"1.5", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
        {"10.0", -EINVAL, 0},
        {"-", -EINVAL, 0},
        {"99999999999999999999999.5", -EINVAL, 0},
        {"-99999999999999999999999e1", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        v = (jscan_val){ints[i].s, strlen(ints[i].s), JSCAN_NUMBER};
        x = 12345;
        assert_int_equal(jscan_int64(&v, &x), ints[i].rc);
        if (ints[i].rc == 0)
            assert_true(x == ints[i].want);
    }
    v = val_of("\"1\"");
    assert_int_equal(jscan_int64(&v, &x), -EINVAL);

    v = val_of("true");
    assert_int_equal(jscan_bool(&v, &b), 0);
    assert_true(b);
    v = val_of("false");
    assert_int_equal(jscan_bool(&v, &b), 0);
    assert_false(b);
    v = val_of("null");
    assert_int_equal(jscan_bool(&v, &b), -EINVAL);
    assert_string_equal(jscan_type_name(JSCAN_FALSE), "boolean");
    assert_string_equal(jscan_type_name(JSCAN_ARRAY), "array");

    buf q;
    buf_init(&q, 64);
    assert_int_equal(jscan_append_string(&q, NULL, 0), 0);
    assert_int_equal(jscan_append_string(&q, "a\"\xff", 3), 0);
    assert_string_equal(q.data, "\"\"\"a\\\"\\ufffd\"");
    buf_free(&q);

    assert_true(jscan_utf8_valid("plain ascii text, long enough", 29));
    assert_true(jscan_utf8_valid("\xf0\x9f\x98\x80\xc3\xa9", 6));
    assert_false(jscan_utf8_valid("abcdefgh\xc3", 9));
    assert_false(jscan_utf8_valid("\xed\xa0\x80", 3));
}

static void test_iterators(void **state)
{
    (void)state;
    static const char doc[] = "[ 1 , \"two\" ,{\"k\" : [3]}, [] ,null ]";
    jscan_val v, e, k;
    jscan_iter it;
    static const jscan_type want[] = {JSCAN_NUMBER, JSCAN_STRING, JSCAN_OBJECT, JSCAN_ARRAY,
                                      JSCAN_NULL};
    size_t i = 0;
    int rc;

    v = val_of(doc);
    assert_int_equal(v.n, sizeof(doc) - 1);
    assert_int_equal(jscan_iter_init(&it, &v), 0);
    while ((rc = jscan_arr_next(&it, &e)) == 0) {
        assert_true(i < 5);
        assert_int_equal(e.type, want[i]);
        i++;
    }
    assert_int_equal(rc, -ENOENT);
    assert_int_equal(i, 5);
    assert_int_equal(jscan_arr_next(&it, &e), -ENOENT); /* stays at the end */
    /* an array iterator can't be used for members and vice versa */
    assert_int_equal(jscan_obj_next(&it, &k, &e), -EINVAL);
    v = val_of("{\"a\":1}");
    assert_int_equal(jscan_iter_init(&it, &v), 0);
    assert_int_equal(jscan_arr_next(&it, &e), -EINVAL);
    v = val_of("\"str\"");
    assert_int_equal(jscan_iter_init(&it, &v), -EINVAL);
    assert_int_equal(jscan_arr_len(&v, &i), -EINVAL);
    /* a broken container stops the walk with -EINVAL, not a crash */
    v = (jscan_val){"[1,,2]", 6, JSCAN_ARRAY};
    assert_int_equal(jscan_iter_init(&it, &v), 0);
    assert_int_equal(jscan_arr_next(&it, &e), 0);
    assert_int_equal(jscan_arr_next(&it, &e), -EINVAL);
    v = (jscan_val){"[1,]", 4, JSCAN_ARRAY};
    assert_int_equal(jscan_arr_len(&v, &i), -EINVAL);
    assert_true(jscan_is_empty(&(jscan_val){"[ \n]", 4, JSCAN_ARRAY}));
    assert_false(jscan_is_empty(&(jscan_val){"[0]", 3, JSCAN_ARRAY}));
}

static void splice_check(const char *doc, const char *path, const char *want_json, const char *want)
{
    /* inserts "x": 1 into the object at path ("" = root), or replaces the
     * value at path with [true] when want_json is NULL */
    buf out;
    jscan_splice sp;
    jscan_val v;
    size_t n = strlen(doc);
    buf_init(&out, 1024);
    jscan_splice_init(&sp, doc, n, &out);
    if (*path)
        assert_int_equal(jscan_path_get(doc, n, path, &v), 0);
    else
        assert_int_equal(jscan_root(doc, n, &v), 0);
    if (want_json)
        assert_int_equal(jscan_splice_insert_member(&sp, &v, "x", 1, want_json, strlen(want_json)),
                         0);
    else
        assert_int_equal(jscan_splice_replace(&sp, &v, "[true]", 6), 0);
    assert_int_equal(jscan_splice_finish(&sp), 0);
    assert_string_equal(out.data, want);
    assert_int_equal(jscan_validate(out.data, out.len, 64, NULL), 0);
    buf_free(&out);
}

static void test_splice(void **state)
{
    (void)state;
    splice_check("{}", "", "1", "{\"x\":1}");
    splice_check("{ }", "", "1", "{\"x\":1 }");
    splice_check(" {\n} ", "", "1", " {\"x\":1\n} ");
    splice_check("{\"a\":1}", "", "1", "{\"a\":1,\"x\":1}");
    splice_check("{\n  \"a\": {}\n}\n", "", "{\"y\":2}", "{\n  \"a\": {},\"x\":{\"y\":2}\n}\n");
    splice_check("{\"a\":{},\"b\":2}", "a", "1", "{\"a\":{\"x\":1},\"b\":2}");
    splice_check("{\"a\":{\"c\":[1]} ,\"b\":2}", "a", "1", "{\"a\":{\"c\":[1],\"x\":1} ,\"b\":2}");
    splice_check("{\"a\":\"}\",\"b\":{\"c\":\"{\"}}", "b", "null",
                 "{\"a\":\"}\",\"b\":{\"c\":\"{\",\"x\":null}}");
    splice_check("{\"a\":1,\"b\":2}", "a", NULL, "{\"a\":[true],\"b\":2}");
    splice_check("{\"a\":1,\"b\":\"\\\"\"}", "b", NULL, "{\"a\":1,\"b\":[true]}");

    /* several edits in order, then a string replacement with escaping */
    static const char doc[] = "{\"m\":\"old\",\"o\":{\"k\":false},\"z\":0}";
    buf out;
    jscan_splice sp;
    jscan_val m, o, k, z;
    buf_init(&out, 1024);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "m", &m), 0);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "o", &o), 0);
    assert_int_equal(jscan_path_get(doc, sizeof(doc) - 1, "o.k", &k), 0);
    assert_int_equal(jscan_obj_get(doc, sizeof(doc) - 1, "z", &z), 0);
    jscan_splice_init(&sp, doc, sizeof(doc) - 1, &out);
    assert_int_equal(jscan_splice_replace_str(&sp, &m, "n\"e\\w\n\x01\xff", 8), 0);
    assert_int_equal(jscan_splice_replace(&sp, &k, "true", 4), 0);
    /* o starts before the last edit, but its insertion point does not */
    assert_int_equal(jscan_splice_insert_member(&sp, &o, "q", 1, "1", 1), 0);
    /* out of order, or not in the document at all */
    assert_int_equal(jscan_splice_replace(&sp, &m, "1", 1), -EINVAL);
    assert_int_equal(jscan_splice_replace(&sp, &(jscan_val){"1", 1, JSCAN_NUMBER}, "2", 1),
                     -EINVAL);
    assert_int_equal(jscan_splice_replace(&sp, &z, "1", 1), 0);
    assert_int_equal(jscan_splice_insert_member(&sp, &o, "r", 1, "1", 1), -EINVAL);
    assert_int_equal(jscan_splice_finish(&sp), 0);
    assert_string_equal(out.data,
                        "{\"m\":\"n\\\"e\\\\w\\n\\u0001\\ufffd\",\"o\":{\"k\":true,\"q\":1},"
                        "\"z\":1}");
    json_error_t jerr;
    json_t *j = json_loadb(out.data, out.len, JFLAGS, &jerr);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "m")), "n\"e\\w\n\x01\xef\xbf\xbd");
    json_decref(j);

    /* the buffer's cap is respected */
    buf small;
    buf_init(&small, 10);
    jscan_splice_init(&sp, doc, sizeof(doc) - 1, &small);
    assert_int_equal(jscan_splice_replace(&sp, &z, "1", 1), -E2BIG);
    buf_free(&small);
    buf_free(&out);
}

static void replay_one(const char *path, const char *data, size_t len, void *ud)
{
    (void)path;
    (void)ud;
    assert_int_equal(LLVMFuzzerTestOneInput((const uint8_t *)data, len), 0);
}

static void test_fuzz_corpus_replay(void **state)
{
    (void)state;
    size_t n = walk_dir(TG_SOURCE_DIR "/test/fuzz/corpus/jscan", "", replay_one, NULL);
    assert_true(n >= 40);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures_match_jansson),
        cmocka_unit_test(test_invalid_documents),
        cmocka_unit_test(test_valid_documents),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_obj_get),
        cmocka_unit_test(test_cached_tokens_path),
        cmocka_unit_test(test_decoders),
        cmocka_unit_test(test_iterators),
        cmocka_unit_test(test_splice),
        cmocka_unit_test(test_fuzz_corpus_replay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
