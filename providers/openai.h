/* openai.h - OpenAI chat-completions wire helpers for passthrough.
 *
 * A passthrough request is never parsed into a DOM: openai_req_scan()
 * validates the body and reads the handful of fields the gateway needs
 * (model, stream, token limits), and openai_req_rewrite() produces the
 * upstream body by splicing the provider's model name (and, for streams,
 * stream_options.include_usage) into the client's bytes. Upstream answers
 * are read the same way: openai_chunk_scan() for one SSE data payload,
 * openai_resp_usage() for a whole response. All of it is built on
 * providers/jscan.h. */
#ifndef TG_PROVIDERS_OPENAI_H
#define TG_PROVIDERS_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"
#include "providers/jscan.h"

#define OPENAI_MUSTCHECK __attribute__((warn_unused_result))

/* Nesting limit for request bodies (a chat request is rarely 10 deep). */
#define OPENAI_REQ_MAX_DEPTH 64
/* Nesting limit for upstream responses and stream chunks. */
#define OPENAI_RESP_MAX_DEPTH 256
/* Room for the decoded model name in openai_req_info, NUL included. */
#define OPENAI_MODEL_MAX 256

/* Why a request was refused, ready for openai_error_body(). */
typedef struct openai_err {
    int status;        /* HTTP status to answer with (400) */
    const char *type;  /* OpenAI error type, static ("invalid_request_error") */
    const char *param; /* offending parameter, static, or NULL */
    const char *code;  /* OpenAI error code, static ("invalid_type", ...), or NULL */
    char message[256]; /* human-readable text naming the problem */
} openai_err;

/* What openai_req_scan() read from a chat-completions request. The
 * jscan_val spans point into the scanned body and are only valid while it
 * is; a span with type JSCAN_NONE means the member is absent. */
typedef struct openai_req_info {
    char model[OPENAI_MODEL_MAX];  /* decoded model name, NUL-terminated */
    size_t model_len;              /* its length in bytes */
    bool stream;                   /* "stream": true (absent or null = false) */
    bool include_usage;            /* "stream_options": {"include_usage": true} */
    int64_t max_tokens;            /* "max_tokens", -1 when absent or null */
    int64_t max_completion_tokens; /* "max_completion_tokens", -1 when absent or null */
    int64_t n;                     /* "n", 1 when absent or null */
    jscan_val root;                /* the whole top-level object */
    jscan_val model_val;           /* the "model" string value */
    jscan_val messages_val;        /* the "messages" array (non-empty) */
    jscan_val stream_options_val;  /* the "stream_options" value (object or null), or NONE */
    jscan_val include_usage_val;   /* "stream_options"."include_usage" value, or NONE */
} openai_req_info;

/* Token counts from a usage object; -1 for each one that is absent. */
typedef struct openai_usage {
    int64_t prompt_tokens;     /* usage.prompt_tokens */
    int64_t completion_tokens; /* usage.completion_tokens */
    int64_t total_tokens;      /* usage.total_tokens */
    int64_t cached_tokens;     /* usage.prompt_tokens_details.cached_tokens */
} openai_usage;

/* What openai_chunk_scan() saw in one stream event. */
typedef struct openai_chunk_info {
    bool has_choices;    /* "choices" is an array */
    bool choices_empty;  /* "choices" is [] */
    bool has_usage;      /* "usage" is an object (not null, not absent) */
    openai_usage usage;  /* its numbers when has_usage, else all -1 */
    bool has_error;      /* a top-level "error" object (OpenRouter mid-stream error) */
    jscan_val error;     /* that object's span, or NONE */
    slice finish_reason; /* first non-null choices[].finish_reason, the bytes
                          * between the quotes (escapes not decoded); len 0
                          * when none */
} openai_chunk_info;

/* Generated text in a chunk or a response, for the token meter. */
typedef enum openai_text_kind {
    OPENAI_TEXT_CONTENT,   /* content (a string or text parts) */
    OPENAI_TEXT_REASONING, /* reasoning / reasoning_content (OpenRouter, DeepSeek-style) */
    OPENAI_TEXT_REFUSAL,   /* refusal */
    OPENAI_TEXT_TOOL_NAME, /* tool_calls[].function.name (or function_call.name) */
    OPENAI_TEXT_TOOL_ARGS, /* tool_calls[].function.arguments (or function_call.arguments) */
} openai_text_kind;

/* Called per text string: choice is choices[].index (or the position),
 * tool the tool call's index (-1 for other kinds); str is a JSCAN_STRING. */
typedef void (*openai_text_fn)(void *ud, openai_text_kind kind, int64_t choice, int64_t tool,
                               const jscan_val *str);

/* Validates a chat-completions request body (RFC 8259, depth
 * OPENAI_REQ_MAX_DEPTH, top-level object) and fills *info. Each of model,
 * messages, stream, stream_options, max_tokens, max_completion_tokens and
 * n may appear at most once. 0, or -EINVAL with *err describing a 400. */
int openai_req_scan(const char *body, size_t n, openai_req_info *info,
                    openai_err *err) OPENAI_MUSTCHECK;

/* Appends the upstream body to out: body with the model value replaced by
 * new_model (raw bytes, must be UTF-8; JSON-escaped here) and, when
 * want_usage, stream_options.include_usage forced to true (the member or
 * the whole stream_options is added if missing; other stream_options
 * members are kept). All other bytes are copied unchanged. info must come
 * from openai_req_scan() on the same body. 0, -EINVAL (bad new_model or
 * info), -E2BIG (out's cap), -ENOMEM. */
int openai_req_rewrite(const char *body, size_t n, const openai_req_info *info,
                       const char *new_model, size_t new_model_len, bool want_usage,
                       buf *out) OPENAI_MUSTCHECK;

/* Reads one stream event's data payload (a chat.completion.chunk, not
 * "[DONE]"). 0, or -EINVAL when it is not a valid JSON object. */
int openai_chunk_scan(const char *data, size_t n, openai_chunk_info *ci) OPENAI_MUSTCHECK;

/* openai_chunk_scan that, in the same pass, reports the generated text of
 * each choices[].delta to fn (see openai_each_text; fn may be NULL). */
int openai_chunk_scan_text(const char *data, size_t n, openai_chunk_info *ci, openai_text_fn fn,
                           void *ud) OPENAI_MUSTCHECK;

/* True for the extra chunk stream_options.include_usage adds: "choices"
 * is [] and "usage" is an object. Strip it for callers who did not ask. */
bool openai_chunk_is_usage_only(const openai_chunk_info *ci);

/* Reads "usage" of a whole (non-stream) response body into *u. 0,
 * -ENOENT when there is no usage object, -EINVAL when the body is not a
 * valid JSON object. */
int openai_resp_usage(const char *body, size_t n, openai_usage *u) OPENAI_MUSTCHECK;

/* Walks choices[].delta (a stream chunk, delta true) or choices[].message
 * (a whole response) and reports every generated text string, in
 * document order. data must be valid JSON (scanned before). 0, or
 * -EINVAL when it is not an object. */
int openai_each_text(const char *data, size_t n, bool delta, openai_text_fn fn, void *ud) OPENAI_MUSTCHECK;

/* Appends {"error":{"message":...,"type":...,"param":...,"code":...}};
 * param and code may be NULL (written as null). Strings are escaped, and
 * invalid UTF-8 in them becomes U+FFFD. 0, -EINVAL (message or type
 * NULL), -E2BIG, -ENOMEM. */
int openai_error_body(buf *out, const char *message, const char *type, const char *param,
                      const char *code) OPENAI_MUSTCHECK;

#endif
