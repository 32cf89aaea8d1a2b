/* fuzz_jsplice.c - libFuzzer driver for the JSON splice/rewrite paths of
 * the gateway (providers/jscan.c splice helpers, providers/openai.c
 * rewrite, chunk text walk and error body).
 *
 * Input: byte 0 holds options (bit 0 want_usage, bits 1-3 a model name
 * from a table, bits 4-7 and byte 1 seed the edit program), byte 2 a
 * length L, the next L bytes a raw string (used as a new string value and
 * as a member key), the rest the document. Checked, abort() on a
 * violation:
 * - on any document that jscan_validate() accepts: a program of edits
 *   picked at every value in document order (jscan_splice_replace with a
 *   JSON value from a table, jscan_splice_replace_str with the raw string,
 *   jscan_splice_insert_member on objects) succeeds exactly when the edit
 *   is at or after the previous one (the driver computes the insertion
 *   point itself from the iterators), refuses with -EINVAL and writes
 *   nothing otherwise, and the result is byte for byte the copy the driver
 *   builds on its own; it validates again (and loads with jansson when
 *   the original did);
 * - jscan_append_string() always gives a valid JSON string that decodes
 *   to the raw bytes when they are valid UTF-8;
 * - the gateway's same-format passthrough (jscan_obj_get "model" +
 *   jscan_splice_replace_str + finish) gives a valid document whose
 *   "model" decodes to the new name;
 * - openai_req_scan() + openai_req_rewrite() for want_usage true and
 *   false, appending after a prefix: a model name that is empty, holds a
 *   NUL or invalid UTF-8 is refused with -EINVAL and out restored;
 *   otherwise the body scans again with the new model, the same
 *   stream/n/limits and include_usage = want_usage || before; without
 *   want_usage only the model bytes change;
 * - openai_chunk_scan_text() agrees with openai_chunk_scan(), and it and
 *   openai_each_text() report only string values inside the data, with a
 *   known kind, tool = -1 for the non-tool kinds;
 * - openai_error_body() with strings cut from the input writes JSON whose
 *   message is the input message when it is valid UTF-8.
 *
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_jsplice
 *   ./build-fuzz/test/fuzz_jsplice -dict=test/fuzz/tollgate.dict test/fuzz/corpus/jsplice */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/jscan.h"
#include "providers/openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUT_MAX ((size_t)8 << 20)
#define DEPTH OPENAI_REQ_MAX_DEPTH
#define MAX_VALS 512
#define PREFIX "prefix:"

static void must(bool ok)
{
    if (!ok)
        abort();
}

static bool jansson_ok(const char *p, size_t n, enum json_error_code *code)
{
    json_error_t e;
    json_t *j = json_loadb(p, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (code)
        *code = j ? json_error_unknown : json_error_code(&e);
    json_decref(j);
    return j != NULL;
}

/* A valid JSON string in out[0..n) that decodes to raw when raw is UTF-8. */
static void check_string(const char *p, size_t n, const char *raw, size_t rawlen)
{
    jscan_error je;
    jscan_val v;
    size_t len;
    must(jscan_validate(p, n, 1, &je) == 0);
    must(jscan_root(p, n, &v) == 0 && v.type == JSCAN_STRING && v.p == p && v.n == n);
    char *dec = malloc(n);
    must(dec != NULL);
    must(jscan_str_decode(&v, dec, n, &len) == 0);
    must(jscan_utf8_valid(dec, len));
    if (jscan_utf8_valid(raw, rawlen))
        must(len == rawlen && memcmp(dec, raw, len) == 0);
    free(dec);
}

/* ---------------------------------------------------------------- splice */

typedef struct vals {
    jscan_val v[MAX_VALS]; /* values in document (pre-)order */
    size_t n;
} vals;

static void collect(vals *vs, const jscan_val *v, unsigned depth)
{
    jscan_iter it;
    jscan_val k, x;
    if (vs->n >= MAX_VALS)
        return;
    vs->v[vs->n++] = *v;
    if (depth >= DEPTH || (v->type != JSCAN_OBJECT && v->type != JSCAN_ARRAY))
        return;
    must(jscan_iter_init(&it, v) == 0);
    if (v->type == JSCAN_OBJECT) {
        while (jscan_obj_next(&it, &k, &x) == 0)
            collect(vs, &x, depth + 1);
    } else {
        while (jscan_arr_next(&it, &x) == 0)
            collect(vs, &x, depth + 1);
    }
}

/* Where insert_member must write: after the last member, or after '{'. */
static size_t insert_at(const char *doc, const jscan_val *obj)
{
    jscan_iter it;
    jscan_val k, x, last = {0};
    must(jscan_iter_init(&it, obj) == 0);
    while (jscan_obj_next(&it, &k, &x) == 0)
        last = x;
    if (last.type == JSCAN_NONE)
        return (size_t)(obj->p - doc) + 1;
    return (size_t)(last.p + last.n - doc);
}

static uint32_t rnd(uint32_t *s)
{
    *s = *s * 1103515245u + 12345u;
    return *s >> 16;
}

static void fuzz_splice(const char *doc, size_t n, const char *raw, size_t rawlen, uint32_t seed)
{
    static const char *const repl[] = {
        "null", "true", "0", "-1.5e3", "\"x\"", "[]", "{}", "[1,{\"a\":[null]}]",
        "{\"include_usage\":true}",
    };
    static vals vs;
    jscan_val root;
    jscan_splice sp;
    buf out, want, tmp;
    size_t pos = 0;

    must(jscan_root(doc, n, &root) == 0);
    vs.n = 0;
    collect(&vs, &root, 0);
    buf_init(&out, OUT_MAX);
    buf_init(&want, OUT_MAX);
    buf_init(&tmp, OUT_MAX);
    jscan_splice_init(&sp, doc, n, &out);
    for (size_t i = 0; i < vs.n; i++) {
        const jscan_val *v = &vs.v[i];
        size_t off = (size_t)(v->p - doc), at = off, before = out.len;
        uint32_t r = rnd(&seed) % 8;
        int rc;
        buf_reset(&tmp);
        switch (r) {
        case 0:
        case 1: {
            const char *b = repl[rnd(&seed) % (sizeof(repl) / sizeof(repl[0]))];
            rc = jscan_splice_replace(&sp, v, b, strlen(b));
            must(buf_append_str(&tmp, b) == 0);
            break;
        }
        case 2:
            rc = jscan_splice_replace_str(&sp, v, raw, rawlen);
            must(jscan_append_string(&tmp, raw, rawlen) == 0);
            check_string(tmp.data, tmp.len, raw, rawlen);
            break;
        case 3:
            if (v->type != JSCAN_OBJECT)
                continue;
            at = insert_at(doc, v);
            rc = jscan_splice_insert_member(&sp, v, raw, rawlen, "[0]", 3);
            if (at > (size_t)(v->p - doc) + 1 && buf_append(&tmp, ",", 1) != 0)
                abort();
            must(jscan_append_string(&tmp, raw, rawlen) == 0);
            must(buf_append(&tmp, ":[0]", 4) == 0);
            break;
        default:
            continue;
        }
        if (at < pos) {
            must(rc == -EINVAL && out.len == before);
            continue;
        }
        must(rc == 0);
        must(buf_append(&want, doc + pos, at - pos) == 0);
        must(buf_append(&want, tmp.data, tmp.len) == 0);
        pos = r == 3 ? at : off + v->n;
        must(out.len == want.len && memcmp(out.data, want.data, out.len) == 0);
    }
    must(jscan_splice_finish(&sp) == 0);
    must(buf_append(&want, doc + pos, n - pos) == 0);
    must(out.len == want.len && (out.len == 0 || memcmp(out.data, want.data, out.len) == 0));
    jscan_error je;
    must(jscan_validate(out.data, out.len, DEPTH + 3, &je) == 0);
    enum json_error_code c;
    if (jansson_ok(doc, n, NULL) && !jansson_ok(out.data, out.len, &c))
        must(c == json_error_null_byte_in_key && memchr(raw, '\0', rawlen));
    buf_free(&out);
    buf_free(&want);
    buf_free(&tmp);
}

/* The gateway's passthrough for a non-OpenAI format: only "model" changes. */
static void fuzz_model_splice(const char *doc, size_t n, const char *model, size_t mlen)
{
    jscan_val mv, again;
    jscan_splice sp;
    buf out;
    size_t len;
    char dec[1024]; /* 200 raw bytes, each maybe U+FFFD */

    if (jscan_obj_get(doc, n, "model", &mv) != 0)
        return;
    buf_init(&out, OUT_MAX);
    jscan_splice_init(&sp, doc, n, &out);
    must(jscan_splice_replace_str(&sp, &mv, model, mlen) == 0);
    must(jscan_splice_finish(&sp) == 0);
    jscan_error je;
    must(jscan_validate(out.data, out.len, DEPTH, &je) == 0);
    must(jscan_obj_get(out.data, out.len, "model", &again) == 0 && again.type == JSCAN_STRING);
    must(jscan_str_decode(&again, dec, sizeof(dec), &len) == 0);
    if (jscan_utf8_valid(model, mlen))
        must(len == mlen && memcmp(dec, model, mlen) == 0);
    buf_free(&out);
}

/* ---------------------------------------------------------------- openai */

static void fuzz_rewrite(const char *doc, size_t n, const char *model, size_t mlen,
                         bool want_usage)
{
    openai_req_info info, again;
    openai_err err;
    buf out;

    if (openai_req_scan(doc, n, &info, &err) != 0)
        return;
    buf_init(&out, OUT_MAX);
    must(buf_append_str(&out, PREFIX) == 0);
    size_t pl = out.len;
    int rc = openai_req_rewrite(doc, n, &info, model, mlen, want_usage, &out);
    bool bad = mlen == 0 || memchr(model, '\0', mlen) || !jscan_utf8_valid(model, mlen);
    if (bad) {
        must(rc == -EINVAL && out.len == pl && out.data[pl] == '\0');
        goto out;
    }
    must(rc == 0 && memcmp(out.data, PREFIX, pl) == 0);
    const char *b = out.data + pl;
    size_t bl = out.len - pl;
    must(openai_req_scan(b, bl, &again, &err) == 0);
    must(again.model_len == mlen && memcmp(again.model, model, mlen) == 0);
    must(again.include_usage == (want_usage || info.include_usage));
    must(again.stream == info.stream && again.n == info.n && again.max_tokens == info.max_tokens &&
         again.max_completion_tokens == info.max_completion_tokens);
    if (!want_usage || info.include_usage) {
        /* only the model value moved: before and after it, the same bytes */
        size_t mo = (size_t)(info.model_val.p - doc), ma = (size_t)(again.model_val.p - b);
        size_t tail = n - mo - info.model_val.n;
        must(ma == mo && bl == mo + again.model_val.n + tail);
        must(memcmp(b, doc, mo) == 0 && memcmp(b + ma + again.model_val.n, doc + mo + info.model_val.n, tail) == 0);
    }
out:
    buf_free(&out);
}

typedef struct text_ctx {
    const char *p; /* the data walked */
    size_t n;
    size_t calls;
} text_ctx;

static void on_text(void *ud, openai_text_kind kind, int64_t choice, int64_t tool,
                    const jscan_val *str)
{
    text_ctx *t = ud;
    char tmp[64];
    size_t len;
    (void)choice; /* choices[].index as sent: any int64 */
    must(kind <= OPENAI_TEXT_TOOL_ARGS);
    must(kind == OPENAI_TEXT_TOOL_NAME || kind == OPENAI_TEXT_TOOL_ARGS || tool == -1);
    must(str->type == JSCAN_STRING && str->p >= t->p && str->n <= t->n &&
         (size_t)(str->p - t->p) <= t->n - str->n);
    int rc = jscan_str_decode(str, tmp, sizeof(tmp), &len);
    must(rc == 0 || rc == -E2BIG);
    t->calls++;
}

static void fuzz_text(const char *doc, size_t n, bool valid)
{
    openai_chunk_info a, b;
    text_ctx t = {doc, n, 0};
    int ra = openai_chunk_scan(doc, n, &a);
    int rb = openai_chunk_scan_text(doc, n, &b, on_text, &t);
    must(ra == rb && (ra == 0 || ra == -EINVAL));
    if (ra == 0) {
        must(a.has_choices == b.has_choices && a.choices_empty == b.choices_empty &&
             a.has_usage == b.has_usage && a.has_error == b.has_error &&
             memcmp(&a.usage, &b.usage, sizeof(a.usage)) == 0 &&
             a.finish_reason.len == b.finish_reason.len);
        must(openai_chunk_is_usage_only(&a) == openai_chunk_is_usage_only(&b));
    }
    if (!valid)
        return;
    for (int delta = 0; delta < 2; delta++) {
        text_ctx u = {doc, n, 0};
        int rc = openai_each_text(doc, n, delta, on_text, &u);
        must(rc == 0 || rc == -EINVAL);
        /* (with duplicate "delta" members the chunk scan takes the last,
         * openai_each_text the first: the counts are not compared) */
        if (ra == 0)
            must(rc == 0);
    }
}

static void fuzz_error_body(const char *raw, size_t rawlen, const char *doc, size_t n)
{
    char msg[256], typ[32], par[32];
    size_t ml = rawlen < sizeof(msg) - 1 ? rawlen : sizeof(msg) - 1;
    memcpy(msg, raw, ml);
    msg[ml] = '\0';
    size_t tl = n < sizeof(typ) - 1 ? n : sizeof(typ) - 1;
    memcpy(typ, doc, tl);
    typ[tl] = '\0';
    size_t pl = n > tl ? (n - tl < sizeof(par) - 1 ? n - tl : sizeof(par) - 1) : 0;
    memcpy(par, doc + tl, pl);
    par[pl] = '\0';
    buf out;
    buf_init(&out, OUT_MAX);
    must(openai_error_body(&out, msg, typ, pl ? par : NULL, (rawlen & 1) ? typ : NULL) == 0);
    json_t *j = json_loadb(out.data, out.len, 0, NULL);
    must(j != NULL);
    json_t *m = json_object_get(json_object_get(j, "error"), "message");
    must(json_is_string(m));
    ml = strlen(msg);
    if (jscan_utf8_valid(msg, ml))
        must(json_string_length(m) == ml && memcmp(json_string_value(m), msg, ml) == 0);
    json_decref(j);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct {
        const char *p;
        size_t n;
    } models[8] = {
        {"gpt-4o-mini", 11},
        {"fuzz/\"m\"\\\n\xc3\xa9", 13},
        {"", 0},
        {"a\0b", 3},
        {"bad\xff", 4},
        {"claude-3-5-haiku-20241022", 25},
        {"models/gemini-2.0-flash", 23},
        {"\xf0\x9f\x98\x80\x7f\x01", 6},
    };
    if (size < 3)
        return 0;
    unsigned opt = data[0];
    uint32_t seed = (uint32_t)data[0] << 8 | data[1];
    size_t rawlen = data[2];
    const char *p = (const char *)data + 3;
    size_t n = size - 3;
    if (rawlen > n)
        rawlen = n;
    const char *raw = p;
    const char *doc = p + rawlen;
    size_t dn = n - rawlen;
    const char *model = models[(opt >> 1) & 7].p;
    size_t mlen = models[(opt >> 1) & 7].n;

    buf s;
    buf_init(&s, OUT_MAX);
    must(jscan_append_string(&s, raw, rawlen) == 0);
    check_string(s.data, s.len, raw, rawlen);
    buf_free(&s);

    jscan_error je;
    bool valid = jscan_validate(doc, dn, DEPTH, &je) == 0;
    if (valid) {
        fuzz_splice(doc, dn, raw, rawlen, seed);
        if (mlen)
            fuzz_model_splice(doc, dn, model, mlen);
        fuzz_model_splice(doc, dn, raw, rawlen < 200 ? rawlen : 200);
    }
    fuzz_rewrite(doc, dn, model, mlen, opt & 1);
    fuzz_rewrite(doc, dn, raw, rawlen, !(opt & 1));
    fuzz_text(doc, dn, valid);
    fuzz_error_body(raw, rawlen, doc, dn);
    return 0;
}
