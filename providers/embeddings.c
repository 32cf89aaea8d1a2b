/* embeddings.c - OpenAI embeddings to Gemini batchEmbedContents and back
 * (see embeddings.h). */
#include "providers/embeddings.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>

#define EMBED_JFLAGS (JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL)
#define EMBED_MAX_INPUTS 2048 /* OpenAI's own cap on inputs per request */

static int put_model(buf *out, const char *model, size_t n)
{
    /* "models/" + the name, as the request's own model field */
    if (n >= 7 && memcmp(model, "models/", 7) == 0) {
        model += 7;
        n -= 7;
    }
    if (buf_append_str(out, "\"model\":\"models/") || buf_append_json_escaped(out, model, n) ||
        buf_append_str(out, "\""))
        return -E2BIG;
    return 0;
}

static int put_request(buf *out, const char *model, size_t mlen, const json_t *text, int64_t dims)
{
    if (buf_append_str(out, "{") || put_model(out, model, mlen) ||
        buf_append_str(out, ",\"content\":{\"parts\":[{\"text\":") ||
        chat_json_str(out, json_string_value(text), json_string_length(text)) ||
        buf_append_str(out, "}]}"))
        return -E2BIG;
    if (dims > 0 && buf_printf(out, ",\"outputDimensionality\":%lld", (long long)dims))
        return -E2BIG;
    return buf_append_str(out, "}") ? -E2BIG : 0;
}

int embed_gemini_request(const char *body, size_t n, const char *model, size_t model_len,
                         embed_req_info *info, buf *out, chat_error *err)
{
    memset(info, 0, sizeof *info);
    json_error_t jerr;
    json_t *root = json_loadb(body, n, EMBED_JFLAGS, &jerr);
    int rc = -EINVAL;
    if (!json_is_object(root)) {
        chat_error_invalid(err, NULL, "We could not parse the JSON body of your request.");
        goto out;
    }
    const json_t *input = json_object_get(root, "input");
    const json_t *fmt = json_object_get(root, "encoding_format");
    const json_t *dims = json_object_get(root, "dimensions");
    if (fmt && !json_is_null(fmt)) {
        if (!json_is_string(fmt) || (strcmp(json_string_value(fmt), "float") != 0 &&
                                     strcmp(json_string_value(fmt), "base64") != 0)) {
            chat_error_invalid(err, "encoding_format", "encoding_format: expected 'float' or 'base64'.");
            goto out;
        }
        info->base64 = strcmp(json_string_value(fmt), "base64") == 0;
    }
    int64_t d = -1;
    if (dims && !json_is_null(dims)) {
        if (!json_is_integer(dims) || json_integer_value(dims) < 1) {
            chat_error_invalid(err, "dimensions", "dimensions: expected a positive integer.");
            goto out;
        }
        d = json_integer_value(dims);
    }
    size_t cnt = json_is_array(input) ? json_array_size(input) : 1;
    if (!json_is_string(input) && !json_is_array(input)) {
        chat_error_invalid(err, "input", "input: expected a string or an array of strings.");
        goto out;
    }
    if (cnt == 0 || cnt > EMBED_MAX_INPUTS) {
        chat_error_invalid(err, "input", "input: between 1 and %d strings.", EMBED_MAX_INPUTS);
        goto out;
    }
    if (buf_append_str(out, "{\"requests\":[")) {
        rc = -E2BIG;
        goto out;
    }
    for (size_t i = 0; i < cnt; i++) {
        const json_t *t = json_is_array(input) ? json_array_get(input, i) : input;
        if (!json_is_string(t)) {
            chat_error_invalid(err, "input",
                               "input[%zu]: Gemini embeds text; token ids cannot be translated.", i);
            goto out;
        }
        if ((i && buf_append_str(out, ",")) || put_request(out, model, model_len, t, d)) {
            rc = -E2BIG;
            goto out;
        }
    }
    rc = buf_append_str(out, "]}") ? -E2BIG : 0;
    info->ninputs = cnt;
out:
    json_decref(root);
    return rc;
}

int embed_gemini_path(const char *model, size_t model_len, buf *out)
{
    chat_target t = {.model = model, .model_len = model_len, .stream = false};
    size_t mark = out->len;
    int rc = chat_format_gemini.req_path(&t, out);
    static const char gen[] = ":generateContent";
    size_t gl = sizeof gen - 1;
    if (rc || out->len < mark + gl || memcmp(out->data + out->len - gl, gen, gl) != 0)
        return rc ? rc : -EINVAL;
    out->len -= gl;
    out->data[out->len] = '\0';
    return buf_append_str(out, ":batchEmbedContents") ? -E2BIG : 0;
}

static int put_base64_floats(buf *out, const json_t *values)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t nv = json_array_size(values);
    unsigned char tri[3];
    size_t k = 0;
    if (buf_append_str(out, "\""))
        return -E2BIG;
    for (size_t i = 0; i < nv; i++) {
        const json_t *v = json_array_get(values, i);
        if (!json_is_number(v))
            return -EINVAL;
        float f = (float)json_number_value(v);
        unsigned char le[4];
        uint32_t u;
        memcpy(&u, &f, 4);
        for (int b = 0; b < 4; b++)
            le[b] = (unsigned char)(u >> (8 * b));
        for (int b = 0; b < 4; b++) {
            tri[k++] = le[b];
            if (k == 3) {
                char q[4] = {b64[tri[0] >> 2], b64[(tri[0] & 3) << 4 | tri[1] >> 4],
                             b64[(tri[1] & 15) << 2 | tri[2] >> 6], b64[tri[2] & 63]};
                if (buf_append(out, q, 4))
                    return -E2BIG;
                k = 0;
            }
        }
    }
    if (k) {
        if (k == 1)
            tri[1] = 0;
        tri[2] = 0;
        char q[4] = {b64[tri[0] >> 2], b64[(tri[0] & 3) << 4 | tri[1] >> 4],
                     k == 2 ? b64[(tri[1] & 15) << 2] : '=', '='};
        if (buf_append(out, q, 4))
            return -E2BIG;
    }
    return buf_append_str(out, "\"") ? -E2BIG : 0;
}

int embed_gemini_response(const char *body, size_t n, const embed_req_info *info,
                          const char *model, size_t model_len, uint64_t prompt_tokens, buf *out)
{
    json_t *root = json_loadb(body, n, EMBED_JFLAGS, NULL);
    const json_t *embs = json_object_get(root, "embeddings");
    int rc = -EINVAL;
    if (!json_is_array(embs))
        goto out;
    rc = buf_append_str(out, "{\"object\":\"list\",\"data\":[") ? -E2BIG : 0;
    for (size_t i = 0; !rc && i < json_array_size(embs); i++) {
        const json_t *values = json_object_get(json_array_get(embs, i), "values");
        if (!json_is_array(values)) {
            rc = -EINVAL;
            break;
        }
        if (buf_printf(out, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i ? "," : "", i)) {
            rc = -E2BIG;
            break;
        }
        if (info->base64) {
            rc = put_base64_floats(out, values);
        } else {
            for (size_t k = 0; !rc && k < json_array_size(values); k++)
                if (!json_is_number(json_array_get(values, k)))
                    rc = -EINVAL;
            if (!rc)
                rc = chat_json_dump(out, values);
        }
        if (!rc && buf_append_str(out, "}"))
            rc = -E2BIG;
    }
    if (!rc && (buf_append_str(out, "],\"model\":") || chat_json_str(out, model, model_len) ||
                buf_printf(out, ",\"usage\":{\"prompt_tokens\":%llu,\"total_tokens\":%llu}}",
                           (unsigned long long)prompt_tokens, (unsigned long long)prompt_tokens)))
        rc = -E2BIG;
out:
    json_decref(root);
    return rc;
}
