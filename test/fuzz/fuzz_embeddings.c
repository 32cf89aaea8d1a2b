/* fuzz_embeddings.c - libFuzzer driver for the OpenAI embeddings <->
 * Gemini batchEmbedContents adapter (providers/embeddings.c).
 *
 * The first byte picks the mode (bit 0) and options, the rest is a body:
 *   0  request: embed_gemini_request() for a model from a table (bits
 *      1-2); on success the output is JSON with one request per input
 *      string, each naming "models/<model>" and carrying the string as
 *      its text (the same string when it is valid UTF-8), and
 *      outputDimensionality when "dimensions" was given; base64 and
 *      ninputs as the body asked; on failure -EINVAL with a 400 and a
 *      valid UTF-8 message, or -E2BIG; embed_gemini_path() for the model
 *      ends in ":batchEmbedContents";
 *   1  response: embed_gemini_response() with base64 from bit 1; on
 *      success the output is an OpenAI list with one embedding per Gemini
 *      one, in order: the same numbers, or standard padded base64 of the
 *      little-endian float32 values; on failure -EINVAL or -E2BIG.
 * A broken invariant aborts (as do ASan/UBSan findings).
 *
 *   CC=clang cmake -S . -B build-fuzz -DTG_FUZZ=ON -DTG_SANITIZE=ON
 *   cmake --build build-fuzz --target fuzz_embeddings
 *   ./build-fuzz/test/fuzz_embeddings -dict=test/fuzz/tollgate.dict test/fuzz/corpus/embeddings */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "providers/embeddings.h"
#include "providers/jscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUT_MAX ((size_t)16 << 20)

static void must(bool ok)
{
    if (!ok)
        abort();
}

static const struct {
    const char *p;
    size_t n;
} models[4] = {
    {"text-embedding-004", 18},
    {"models/gemini-embedding-001", 27},
    {"a b/\"c\"", 7},
    {"models/", 7},
};

static bool str_is(const json_t *j, const char *p, size_t n)
{
    return json_is_string(j) && json_string_length(j) == n && memcmp(json_string_value(j), p, n) == 0;
}

static void fuzz_request(const char *p, size_t n, unsigned opt)
{
    const char *model = models[(opt >> 1) & 3].p;
    size_t mlen = models[(opt >> 1) & 3].n;
    embed_req_info info;
    chat_error err;
    buf out;

    buf_init(&out, OUT_MAX);
    int rc = embed_gemini_request(p, n, model, mlen, &info, &out, &err);
    if (rc == -EINVAL) {
        must(err.status == 400 && err.message[0]);
        must(jscan_utf8_valid(err.message, strlen(err.message)));
        goto out;
    }
    if (rc) {
        must(rc == -E2BIG);
        goto out;
    }
    json_t *in = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    json_t *j = json_loadb(out.data, out.len, JSON_ALLOW_NUL, NULL);
    must(json_is_object(in) && j != NULL);
    const json_t *input = json_object_get(in, "input");
    const json_t *fmt = json_object_get(in, "encoding_format");
    const json_t *dims = json_object_get(in, "dimensions");
    const json_t *reqs = json_object_get(j, "requests");
    must(info.base64 == (json_is_string(fmt) && strcmp(json_string_value(fmt), "base64") == 0));
    must(json_is_array(reqs) && json_array_size(reqs) == info.ninputs && info.ninputs > 0);
    must(json_is_array(input) ? json_array_size(input) == info.ninputs : info.ninputs == 1);
    /* the model as "models/<name>", never "models/models/" */
    char want[64] = "models/";
    size_t wl = 7;
    if (mlen >= 7 && memcmp(model, "models/", 7) == 0) {
        memcpy(want + 7, model + 7, mlen - 7);
        wl += mlen - 7;
    } else {
        memcpy(want + 7, model, mlen);
        wl += mlen;
    }
    for (size_t i = 0; i < info.ninputs; i++) {
        const json_t *r = json_array_get(reqs, i);
        const json_t *text = json_is_array(input) ? json_array_get(input, i) : input;
        const json_t *got = json_object_get(
            json_array_get(json_object_get(json_object_get(r, "content"), "parts"), 0), "text");
        must(str_is(json_object_get(r, "model"), want, wl));
        must(json_is_string(text) && json_is_string(got));
        if (jscan_utf8_valid(json_string_value(text), json_string_length(text)))
            must(json_equal(text, got));
        const json_t *od = json_object_get(r, "outputDimensionality");
        if (json_is_integer(dims))
            must(json_is_integer(od) && json_integer_value(od) == json_integer_value(dims));
        else
            must(od == NULL);
    }
    json_decref(in);
    json_decref(j);
    buf_reset(&out);
    must(embed_gemini_path(model, mlen, &out) == 0);
    must(out.len > 19 && memcmp(out.data + out.len - 19, ":batchEmbedContents", 19) == 0);
out:
    buf_free(&out);
}

static int b64v(char c)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *q = c ? strchr(b64, c) : NULL;
    return q ? (int)(q - b64) : -1;
}

/* Standard padded base64 of 4 bytes per value, each the float32 of it. */
static void check_base64(const json_t *s, const json_t *values)
{
    must(json_is_string(s));
    const char *p = json_string_value(s);
    size_t n = json_string_length(s), nv = json_array_size(values);
    size_t bytes = 4 * nv;
    must(n == (bytes + 2) / 3 * 4);
    unsigned char *raw = malloc(bytes + 3);
    must(raw != NULL);
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++)
            v[j] = p[i + j] == '=' && i + 4 == n && j >= 2 ? 0 : b64v(p[i + j]);
        must(v[0] >= 0 && v[1] >= 0 && v[2] >= 0 && v[3] >= 0);
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        raw[k++] = (unsigned char)(x >> 16);
        raw[k++] = (unsigned char)(x >> 8);
        raw[k++] = (unsigned char)x;
    }
    must(k >= bytes);
    for (size_t i = 0; i < nv; i++) {
        uint32_t u = 0;
        for (int b = 0; b < 4; b++)
            u |= (uint32_t)raw[4 * i + b] << (8 * b);
        float want = (float)json_number_value(json_array_get(values, i)), got;
        memcpy(&got, &u, 4);
        must(memcmp(&want, &got, 4) == 0);
    }
    free(raw);
}

static void fuzz_response(const char *p, size_t n, unsigned opt)
{
    embed_req_info info = {.base64 = (opt >> 1) & 1, .ninputs = 1};
    uint64_t tokens = (uint64_t)opt * 977;
    buf out;

    buf_init(&out, OUT_MAX);
    int rc = embed_gemini_response(p, n, &info, "m\"x", 3, tokens, &out);
    if (rc) {
        must(rc == -EINVAL || rc == -E2BIG);
        goto out;
    }
    json_t *in = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    json_t *j = json_loadb(out.data, out.len, JSON_ALLOW_NUL, NULL);
    must(in != NULL && j != NULL);
    const json_t *embs = json_object_get(in, "embeddings");
    const json_t *list = json_object_get(j, "data");
    must(json_is_array(embs) && json_is_array(list) && json_array_size(list) == json_array_size(embs));
    must(str_is(json_object_get(j, "model"), "m\"x", 3));
    must(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")) ==
         (json_int_t)tokens);
    for (size_t i = 0; i < json_array_size(embs); i++) {
        const json_t *values = json_object_get(json_array_get(embs, i), "values");
        const json_t *e = json_array_get(list, i);
        must(json_integer_value(json_object_get(e, "index")) == (json_int_t)i);
        const json_t *emb = json_object_get(e, "embedding");
        if (info.base64) {
            check_base64(emb, values);
        } else {
            must(json_is_array(emb) && json_array_size(emb) == json_array_size(values));
            for (size_t k = 0; k < json_array_size(values); k++) {
                double a = json_number_value(json_array_get(values, k));
                double b = json_number_value(json_array_get(emb, k));
                must(json_is_number(json_array_get(emb, k)) && (a == b || (isnan(a) && isnan(b))));
            }
        }
    }
    json_decref(in);
    json_decref(j);
out:
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] & 1)
        fuzz_response(p, n, data[0]);
    else
        fuzz_request(p, n, data[0]);
    return 0;
}
