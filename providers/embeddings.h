/* embeddings.h - OpenAI embeddings requests to Gemini and back.
 *
 * OpenAI-format providers get /v1/embeddings bodies as they are (the model
 * spliced in by the gateway). A Gemini provider gets the request as
 * batchEmbedContents (one request per input string) and its answer comes
 * back as an OpenAI embeddings list, with float or base64 (little-endian
 * float32, what the OpenAI SDK asks for by default) vectors. */
#ifndef TG_PROVIDERS_EMBEDDINGS_H
#define TG_PROVIDERS_EMBEDDINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"
#include "providers/chat.h"

/* What embed_gemini_request read from the caller's body. */
typedef struct embed_req_info {
    bool base64;    /* encoding_format "base64" */
    size_t ninputs; /* input strings sent */
} embed_req_info;

/* Appends the batchEmbedContents body for an OpenAI embeddings request
 * body (validated JSON object) to out, for Gemini model model. 0, -EINVAL
 * with *err set (token-id inputs, bad types: a 400 naming the member),
 * -E2BIG, -ENOMEM. */
int embed_gemini_request(const char *body, size_t n, const char *model, size_t model_len,
                         embed_req_info *info, buf *out, chat_error *err)
    __attribute__((warn_unused_result));

/* Appends the path after the base path: "/models/MODEL:batchEmbedContents". */
int embed_gemini_path(const char *model, size_t model_len, buf *out)
    __attribute__((warn_unused_result));

/* Appends the OpenAI embeddings list for a Gemini batchEmbedContents
 * answer: model is echoed, usage is prompt_tokens (Gemini reports none:
 * the meter's count). 0, -EINVAL (not the expected shape), -E2BIG, -ENOMEM. */
int embed_gemini_response(const char *body, size_t n, const embed_req_info *info,
                          const char *model, size_t model_len, uint64_t prompt_tokens, buf *out)
    __attribute__((warn_unused_result));

#endif
