/* mock.h - the built-in mock provider.
 *
 * Answers chat completions locally, in the OpenAI wire format, through the
 * same upstream_callbacks contract as the real HTTP client: the relay, SSE
 * parsing and metering code cannot tell the difference. Deterministic text
 * (the same request gets the same answer), correct usage, and configurable
 * latency, token rate and failure injection. It serves the demo, the tests
 * and the benchmarks. */
#ifndef TG_PROVIDERS_MOCK_H
#define TG_PROVIDERS_MOCK_H

#include <stdint.h>
#include <uv.h>

#include "providers/upstream.h"

/* Per-provider mock settings (config: providers[].mock). */
typedef struct mock_options {
    uint32_t latency_ms;       /* delay before the status line (time to first byte) */
    uint32_t tokens_per_sec;   /* stream pacing; 0 = as fast as possible */
    uint32_t default_tokens;   /* completion length when the request sets no max (default 16) */
    uint32_t chunk_tokens;     /* tokens per SSE chunk (default 1) */
    int fail_status;           /* answer this HTTP status (with an OpenAI error body); 0 = never */
    uint32_t fail_every;       /* inject fail_status on every Nth call (1 = all); 0 = never */
    uint32_t cut_after_chunks; /* stream: end with upstream_err_injected after N chunks; 0 = never */
    int format;                /* wire format spoken (chat_format_id; default openai) */
} mock_options;

/* Per-provider mutable state, owned by whoever owns the provider (one per
 * configured mock provider, zero-initialised, outliving its calls). */
typedef struct mock_state {
    uint64_t calls; /* calls started so far; call k fails when k % fail_every == 0 */
} mock_state;

/* Starts a mock call for one request body in the format opt->format
 * speaks (OpenAI: model, stream, stream_options.include_usage, max_tokens
 * / max_completion_tokens and the messages are read from it; other
 * formats: through that format's req_decode). stream: 1 or 0 when the
 * caller knows (Gemini carries it in the URL, not the body), -1 to read
 * it from the body. Callbacks are never run from inside this function,
 * only later from the loop. Returns 0 and sets *out, or a negative errno
 * (-EINVAL: body does not decode -- the caller built it, so this is a
 * bug). st counts calls for fail_every; NULL makes every call count as
 * the first. */
int mock_call_start(uv_loop_t *loop, const mock_options *opt, mock_state *st, const char *body,
                    size_t len, int stream, const upstream_callbacks *cb, void *ud,
                    upstream_call **out)
    __attribute__((warn_unused_result));

#endif
