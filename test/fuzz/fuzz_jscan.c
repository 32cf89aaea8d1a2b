/* fuzz_jscan.c - libFuzzer driver for providers/jscan.c and the OpenAI
 * request scan built on it.
 *
 * For every input: jscan_validate() and jansson must agree on validity
 * (jansson additionally refuses numbers outside int64/double, "\u0000" in
 * object keys, and counts a scalar as one nesting level, so those
 * refusals are tolerated; it also loses a NUL byte right after a number
 * or literal, which is tolerated the other way round); the
 * accessors must stay in bounds on any bytes; on valid input a walk with
 * the jscan iterators must match jansson's DOM, and openai_req_scan() +
 * openai_req_rewrite() must produce a body that scans again with the new
 * model and include_usage set. Any disagreement calls abort().
 *
 * Build (see the report in the commit that added it):
 *   clang -g -O1 -fsanitize=fuzzer,address -I. test/fuzz/fuzz_jscan.c \
 *     providers/jscan.c providers/openai.c daemon/base/buf.c -ljansson
 * Corpus: test/fuzz/corpus/jscan/ (replayed by test/unit/providers/test_jscan.c). */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/jscan.h"
#include "providers/openai.h"

#define FUZZ_DEPTH 2048    /* jansson's JSON_PARSER_MAX_DEPTH */
#define FUZZ_WALK_DEPTH 64 /* recursion bound for the walks below */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless rc is 0 or one of the two documented errors. */
static void fuzz_rc(int rc, int e1, int e2)
{
    if (rc != 0 && rc != e1 && rc != e2)
        abort();
}

/* Exercises the accessors on arbitrary (possibly invalid) bytes. */
static void fuzz_walk_any(const jscan_val *v, unsigned depth)
{
    char tmp[64];
    size_t len;
    int64_t i64;
    bool b;
    jscan_iter it;
    jscan_val k, x;

    switch (v->type) {
    case JSCAN_OBJECT:
        if (depth >= FUZZ_WALK_DEPTH || jscan_iter_init(&it, v))
            return;
        while (jscan_obj_next(&it, &k, &x) == 0) {
            fuzz_rc(jscan_str_decode(&k, tmp, sizeof(tmp), &len), -E2BIG, -EINVAL);
            (void)jscan_str_eq(&k, "model", 5);
            fuzz_walk_any(&x, depth + 1);
        }
        fuzz_rc(jscan_val_get(v, "usage", &x), -ENOENT, -EINVAL);
        break;
    case JSCAN_ARRAY:
        if (depth >= FUZZ_WALK_DEPTH || jscan_iter_init(&it, v))
            return;
        while (jscan_arr_next(&it, &x) == 0)
            fuzz_walk_any(&x, depth + 1);
        fuzz_rc(jscan_arr_len(v, &len), -EINVAL, -EINVAL);
        break;
    case JSCAN_STRING:
        fuzz_rc(jscan_str_decode(v, tmp, sizeof(tmp), &len), -E2BIG, -EINVAL);
        (void)jscan_str_eq(v, "stop", 4);
        break;
    case JSCAN_NUMBER:
        fuzz_rc(jscan_int64(v, &i64), -ERANGE, -EINVAL);
        break;
    default:
        fuzz_rc(jscan_bool(v, &b), -EINVAL, -EINVAL);
        break;
    }
    (void)jscan_is_empty(v);
}

/* A walk with the iterators agrees with jansson's DOM. */
static bool fuzz_same(const jscan_val *v, json_t *j, unsigned depth)
{
    jscan_iter it;
    jscan_val k, x;
    size_t count = 0, len;
    bool ok = true;

    if (depth > FUZZ_DEPTH)
        return false;
    switch (v->type) {
    case JSCAN_OBJECT: {
        if (!json_is_object(j) || jscan_iter_init(&it, v))
            return false;
        /* count first: with duplicate keys jansson keeps only the last
         * copy, so members are only compared when there are none */
        size_t members = 0;
        while (jscan_obj_next(&it, &k, &x) == 0)
            members++;
        if (members < json_object_size(j))
            return false;
        if (members != json_object_size(j))
            return true;
        if (jscan_iter_init(&it, v))
            return false;
        int rc;
        while (ok && (rc = jscan_obj_next(&it, &k, &x)) == 0) {
            char *key = malloc(k.n);
            if (!key)
                abort();
            if (jscan_str_decode(&k, key, k.n, &len) != 0)
                ok = false;
            else {
                json_t *c = json_object_getn(j, key, len);
                ok = c && fuzz_same(&x, c, depth + 1);
            }
            free(key);
            count++;
        }
        return ok && count == members;
    }
    case JSCAN_ARRAY:
        if (!json_is_array(j) || jscan_iter_init(&it, v))
            return false;
        while (ok && jscan_arr_next(&it, &x) == 0) {
            json_t *c = json_array_get(j, count++);
            ok = c && fuzz_same(&x, c, depth + 1);
        }
        return ok && count == json_array_size(j) && jscan_arr_len(v, &len) == 0 && len == count;
    case JSCAN_STRING: {
        if (!json_is_string(j))
            return false;
        char *s = malloc(v->n);
        if (!s)
            abort();
        ok = jscan_str_decode(v, s, v->n, &len) == 0 && len == json_string_length(j) &&
             memcmp(s, json_string_value(j), len) == 0 && jscan_str_eq(v, s, len);
        free(s);
        return ok;
    }
    case JSCAN_NUMBER: {
        int64_t x64;
        int rc = jscan_int64(v, &x64);
        if (json_is_integer(j))
            return rc == 0 && x64 == json_integer_value(j);
        if (!json_is_real(j) || rc != -EINVAL || v->n >= 512)
            return false;
        char num[512];
        memcpy(num, v->p, v->n);
        num[v->n] = '\0';
        return strtod(num, NULL) == json_real_value(j);
    }
    case JSCAN_TRUE:
        return json_is_true(j);
    case JSCAN_FALSE:
        return json_is_false(j);
    case JSCAN_NULL:
        return json_is_null(j);
    case JSCAN_NONE:
        break;
    }
    return false;
}

/* A scanned request rewrites into a body that scans again as expected. */
static void fuzz_request(const char *p, size_t size)
{
    static const char model[] = "fuzz/\"m\"\\\n\xc3\xa9";
    openai_req_info info, again;
    openai_err err;
    buf out;

    if (openai_req_scan(p, size, &info, &err) != 0) {
        if (err.status != 400 || !err.type || !memchr(err.message, '\0', sizeof(err.message)))
            abort();
        return;
    }
    buf_init(&out, size + 4096);
    if (openai_req_rewrite(p, size, &info, model, sizeof(model) - 1, true, &out) != 0)
        abort();
    if (openai_req_scan(out.data, out.len, &again, &err) != 0 || !again.include_usage ||
        again.model_len != sizeof(model) - 1 || memcmp(again.model, model, again.model_len) != 0 ||
        again.stream != info.stream || again.n != info.n || again.max_tokens != info.max_tokens)
        abort();
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    jscan_error err = {0, NULL};
    json_error_t jerr;
    jscan_val root, x;
    openai_chunk_info ci;
    openai_usage u;

    int ours = jscan_validate(p, size, FUZZ_DEPTH, &err);
    if (ours != 0 && (ours != -EINVAL || !err.msg || err.offset > size))
        abort();
    json_t *j = json_loadb(p, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if ((ours == 0) != (j != NULL)) {
        enum json_error_code c = json_error_code(&jerr);
        bool jansson_stricter =
            ours == 0 && (c == json_error_numeric_overflow || c == json_error_stack_overflow ||
                          c == json_error_null_byte_in_key);
        /* jansson's lexer loses a NUL byte that directly follows a number
         * or a literal ("[1\0]", "[true\0]" load); RFC 8259 allows no NUL
         * outside strings */
        bool jansson_nul = ours != 0 && err.offset > 0 && err.offset < size &&
                           p[err.offset] == '\0' &&
                           ((p[err.offset - 1] >= '0' && p[err.offset - 1] <= '9') ||
                            p[err.offset - 1] == 'e' || p[err.offset - 1] == 'l');
        if (!jansson_stricter && !jansson_nul)
            abort();
    }

    if (jscan_root(p, size, &root) == 0)
        fuzz_walk_any(&root, 0);
    fuzz_rc(jscan_obj_get(p, size, "model", &x), -ENOENT, -EINVAL);
    fuzz_rc(jscan_path_get(p, size, "usage.prompt_tokens_details.cached_tokens", &x), -ENOENT,
            -EINVAL);

    if (ours == 0) {
        if (jscan_root(p, size, &root) != 0)
            abort();
        if (j && !fuzz_same(&root, j, 0))
            abort();
        fuzz_request(p, size);
    }
    fuzz_rc(openai_chunk_scan(p, size, &ci), -EINVAL, -EINVAL);
    fuzz_rc(openai_resp_usage(p, size, &u), -ENOENT, -EINVAL);
    json_decref(j);
    return 0;
}
