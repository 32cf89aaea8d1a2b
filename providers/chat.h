/* chat.h - the normalized chat model every wire format maps to and from.
 *
 * Translation between formats never goes format-to-format: each adapter
 * (providers/openai_chat.c, anthropic.c, gemini.c) maps its own wire
 * format to this model and back, and knows no other adapter. A request
 * is decoded into a chat_request and encoded for the upstream; the
 * upstream's answer, streamed or whole, is decoded into a sequence of
 * chat_event values, which the caller's format encodes as its own SSE
 * events (event by event, as bytes arrive) or, for a whole response,
 * collects into a chat_response first.
 *
 * Passthrough (caller and upstream speak the same format) does not use
 * this model for the request; see providers/openai.h.
 *
 * Memory: a chat_request owns an arena; every string and array in it
 * lives there and is released by chat_request_free() in one call. Events
 * point into the decoder's input or state and are valid only during the
 * emit callback. */
#ifndef TG_PROVIDERS_CHAT_H
#define TG_PROVIDERS_CHAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"
#include "providers/sse.h"

#define CHAT_MUSTCHECK __attribute__((warn_unused_result))

/* The wire formats tollgate speaks. */
typedef enum chat_format_id {
    CHAT_FMT_OPENAI = 0, /* OpenAI chat completions (and every OpenAI-compatible preset) */
    CHAT_FMT_ANTHROPIC,  /* Anthropic Messages API */
    CHAT_FMT_GEMINI,     /* Google Gemini generateContent */
    CHAT_FMT_COUNT,
} chat_format_id;

/* ------------------------------------------------------------ errors */

/* What kind of failure an error is, independent of the wire format. */
typedef enum chat_err_kind {
    CHAT_ERR_INVALID_REQUEST = 0, /* 400 */
    CHAT_ERR_AUTH,                /* 401 */
    CHAT_ERR_PERMISSION,          /* 403 */
    CHAT_ERR_NOT_FOUND,           /* 404 */
    CHAT_ERR_TOO_LARGE,           /* 413 */
    CHAT_ERR_RATE_LIMIT,          /* 429 */
    CHAT_ERR_SERVER,              /* 500 and other 5xx */
    CHAT_ERR_OVERLOADED,          /* Anthropic 529, Gemini 503 UNAVAILABLE: retryable */
    CHAT_ERR_TIMEOUT,             /* 504 */
    CHAT_ERR_BILLING,             /* 402: quota or credits exhausted */
} chat_err_kind;

/* An error in no particular format: a refusal of tollgate's, or a
 * provider error decoded from its body. */
typedef struct chat_error {
    int status;         /* HTTP status as received (529 stays 529 here) */
    chat_err_kind kind; /* what it means */
    char type[64];      /* the provider's own type/status string, "" when none */
    char code[64];      /* the provider's code ("rate_limit_exceeded"), "" when none */
    char param[64];     /* the offending parameter, "" when none */
    char message[512];  /* human-readable, NUL-terminated, valid UTF-8 */
    int64_t retry_after_ms; /* provider's retry hint (Gemini RetryInfo), -1 when none */
} chat_error;

/* Fills e for a 400 invalid_request naming param (may be NULL). */
void chat_error_invalid(chat_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The kind an HTTP status means (529 -> OVERLOADED, 402 -> BILLING ...). */
chat_err_kind chat_err_kind_of_status(int status);

/* ------------------------------------------------------------ request */

typedef enum chat_role {
    CHAT_ROLE_SYSTEM = 0, /* system / developer instructions */
    CHAT_ROLE_USER,
    CHAT_ROLE_ASSISTANT,
    CHAT_ROLE_TOOL,       /* results of tool calls (OpenAI role "tool") */
} chat_role;

typedef enum chat_part_type {
    CHAT_PART_TEXT = 0,    /* text */
    CHAT_PART_IMAGE,       /* image: base64 data + media type, or a URL */
    CHAT_PART_TOOL_CALL,   /* the assistant calls a tool (in an assistant message) */
    CHAT_PART_TOOL_RESULT, /* the result of a call (in a tool or user message) */
    CHAT_PART_THINKING,    /* the assistant's visible reasoning (Anthropic thinking) */
} chat_part_type;

/* A string of the request: bytes in the arena, NUL-terminated, with length. */
typedef struct chat_str {
    const char *p; /* NULL when absent */
    size_t len;
} chat_str;

typedef struct chat_part {
    chat_part_type type;
    chat_str text;       /* TEXT, THINKING: the text; TOOL_RESULT: the result's text */
    chat_str media_type; /* IMAGE with data: "image/png" ... */
    chat_str data;       /* IMAGE: base64 bytes (no data: prefix), absent for a URL */
    chat_str url;        /* IMAGE by URL (http/https), absent for data */
    chat_str detail;     /* IMAGE: OpenAI detail ("low", "high", "auto"), absent when none */
    chat_str id;         /* TOOL_CALL: call id; TOOL_RESULT: the id it answers */
    chat_str name;       /* TOOL_CALL: function name; TOOL_RESULT: function name if known */
    chat_str args;       /* TOOL_CALL: arguments as JSON text (an object) */
    chat_str signature;  /* THINKING: Anthropic signature; TOOL_CALL: Gemini thoughtSignature */
    bool is_error;       /* TOOL_RESULT: the tool failed (Anthropic is_error) */
    bool cache;          /* Anthropic cache_control ephemeral on this block */
} chat_part;

typedef struct chat_msg {
    chat_role role;
    chat_part *parts; /* in order; text parts of a string content are one TEXT part */
    size_t nparts;
    chat_str name;    /* OpenAI message name, absent when none */
} chat_msg;

typedef struct chat_tool {
    chat_str name;
    chat_str description;   /* absent when none */
    json_t *parameters;     /* JSON Schema object (own reference), NULL when none */
    bool strict;            /* OpenAI strict */
    bool cache;             /* Anthropic cache_control on the tool */
} chat_tool;

typedef enum chat_tool_choice {
    CHAT_TOOL_CHOICE_UNSET = 0, /* not given: the provider's default (auto) */
    CHAT_TOOL_CHOICE_AUTO,
    CHAT_TOOL_CHOICE_NONE,
    CHAT_TOOL_CHOICE_REQUIRED, /* some tool (OpenAI required, Anthropic any, Gemini ANY) */
    CHAT_TOOL_CHOICE_NAMED,    /* the tool in tool_choice_name */
} chat_tool_choice;

/* Response format (OpenAI response_format, Gemini responseMimeType). */
typedef enum chat_resp_format {
    CHAT_RESP_TEXT = 0,     /* default */
    CHAT_RESP_JSON_OBJECT,  /* any JSON object */
    CHAT_RESP_JSON_SCHEMA,  /* JSON matching response_schema */
} chat_resp_format;

typedef struct chat_arena chat_arena;

/* A decoded request. Numbers that were not given are -1 (integers) or
 * NAN (floats); such a field is not sent upstream. */
typedef struct chat_request {
    chat_arena *arena;       /* owns everything below */
    chat_str model;          /* as the caller wrote it */
    bool stream;             /* the caller wants a stream */
    bool include_usage;      /* OpenAI stream_options.include_usage */
    chat_msg *msgs;          /* system messages included, in order */
    size_t nmsgs;
    chat_tool *tools;
    size_t ntools;
    chat_tool_choice tool_choice;
    chat_str tool_choice_name; /* NAMED: the tool */
    int parallel_tool_calls;   /* -1 unset, 0 off, 1 on (Anthropic disable_parallel_tool_use) */
    int64_t max_tokens;        /* output cap, -1 unset */
    double temperature;        /* NAN unset (a sampling knob, not money) */
    double top_p;              /* NAN unset */
    int64_t top_k;             /* -1 unset (Anthropic, Gemini) */
    double frequency_penalty;  /* NAN unset */
    double presence_penalty;   /* NAN unset */
    int64_t seed;              /* -1 unset */
    int64_t n;                 /* choices wanted, -1 unset */
    chat_str *stop;            /* stop sequences */
    size_t nstop;
    chat_resp_format resp_format;
    json_t *response_schema;   /* JSON_SCHEMA: the schema (own reference) */
    chat_str response_schema_name; /* JSON_SCHEMA: OpenAI json_schema.name */
    chat_str user;             /* end-user id (OpenAI user, Anthropic metadata.user_id) */
    int64_t thinking_budget;   /* Anthropic thinking.budget_tokens / Gemini thinkingBudget, -1 unset */
    bool cache_system;         /* Anthropic: cache_control on the system prompt's last block */
    /* The first member the decoder could not map into this model ("" when
     * none). Passing it on to another format would drop it silently, so a
     * translating encoder refuses the request naming it. */
    char unmapped[64];
} chat_request;

/* Initialises an empty request with its arena. 0 or -ENOMEM. */
int chat_request_init(chat_request *r) CHAT_MUSTCHECK;
/* Releases the arena and the JSON references. Safe on a zeroed request. */
void chat_request_free(chat_request *r);

/* Arena allocation for decoders: n bytes, zeroed, 16-byte aligned; NULL
 * when out of memory. Lives until chat_request_free(). */
void *chat_alloc(chat_request *r, size_t n);
/* Copies n bytes into the arena as a chat_str (NUL-terminated). 0 or -ENOMEM. */
int chat_strdup(chat_request *r, const char *p, size_t n, chat_str *out) CHAT_MUSTCHECK;
/* Appends a message with room for nparts parts (nparts may grow later
 * with chat_msg_add_part). Returns it, or NULL when out of memory. */
chat_msg *chat_add_msg(chat_request *r, chat_role role);
/* Appends a zeroed part to m; NULL when out of memory. */
chat_part *chat_msg_add_part(chat_request *r, chat_msg *m, chat_part_type type);
/* Appends a zeroed tool; NULL when out of memory. */
chat_tool *chat_add_tool(chat_request *r);
/* Appends a stop sequence (copied). 0 or -ENOMEM. */
int chat_add_stop(chat_request *r, const char *p, size_t n) CHAT_MUSTCHECK;
/* Records name as unmapped unless one is recorded already. */
void chat_set_unmapped(chat_request *r, const char *name);

/* ------------------------------------------------------------ answers */

/* Why the model stopped, normalized. */
typedef enum chat_finish {
    CHAT_FINISH_NONE = 0,      /* not known (yet) */
    CHAT_FINISH_STOP,          /* natural end: OpenAI stop, Anthropic end_turn, Gemini STOP */
    CHAT_FINISH_STOP_SEQUENCE, /* a stop sequence matched (Anthropic stop_sequence) */
    CHAT_FINISH_LENGTH,        /* max tokens: length / max_tokens / MAX_TOKENS */
    CHAT_FINISH_TOOL_CALLS,    /* tool_calls / tool_use / a functionCall part */
    CHAT_FINISH_CONTENT_FILTER,/* content_filter / refusal / SAFETY ... */
    CHAT_FINISH_PAUSE,         /* Anthropic pause_turn */
    CHAT_FINISH_OTHER,         /* anything else (native value in the event) */
} chat_finish;

/* Token usage, normalized. -1 = not reported. input counts every prompt
 * token the provider billed, cache reads and writes included (for
 * Anthropic input_tokens + cache_creation + cache_read). */
typedef struct chat_usage {
    int64_t input;       /* all prompt tokens */
    int64_t output;      /* all completion tokens, reasoning included */
    int64_t cache_read;  /* part of input read from the prompt cache */
    int64_t cache_write; /* part of input written to the prompt cache */
    int64_t reasoning;   /* part of output spent thinking */
} chat_usage;

/* Sets every field to -1. */
void chat_usage_unset(chat_usage *u);

typedef enum chat_ev_type {
    CHAT_EV_START = 0, /* the answer begins: id, model (either may be empty), usage maybe */
    CHAT_EV_TEXT,      /* text delta of choice `choice` */
    CHAT_EV_THINKING,  /* reasoning delta (Anthropic thinking, OpenRouter reasoning) */
    CHAT_EV_TOOL_START,/* tool call `tool` begins: id, name */
    CHAT_EV_TOOL_ARGS, /* a fragment of tool call `tool`'s arguments (JSON text) */
    CHAT_EV_FINISH,    /* choice `choice` finished: finish, native */
    CHAT_EV_USAGE,     /* usage so far (cumulative: the latest wins) */
    CHAT_EV_ERROR,     /* an error inside a stream (after HTTP 200): error */
    CHAT_EV_END,       /* the stream is over (OpenAI [DONE], Anthropic message_stop,
                        * Gemini: end of the HTTP body) */
} chat_ev_type;

/* One normalized event. Slices are valid only during the emit callback. */
typedef struct chat_event {
    chat_ev_type type;
    int choice;         /* choice index (0 unless the caller asked for n > 1) */
    int tool;           /* TOOL_START/ARGS: tool call index within the choice, from 0 */
    slice id;           /* START: response id; TOOL_START: call id (may be empty) */
    slice model;        /* START: model that answers (may be empty) */
    slice text;         /* TEXT/THINKING/TOOL_ARGS: the fragment; TOOL_START: name */
    slice signature;    /* THINKING: signature delta; TOOL_START: Gemini thoughtSignature */
    chat_finish finish; /* FINISH */
    slice native;       /* FINISH: the provider's own reason ("end_turn"), may be empty */
    slice stop_sequence;/* FINISH with STOP_SEQUENCE: which one, may be empty */
    chat_usage usage;   /* START (input side, may be unset) and USAGE */
    const chat_error *error; /* ERROR */
} chat_event;

/* Receives events in order. Return 0 to go on, non-zero to stop: the
 * decoder returns that value at once. */
typedef int (*chat_emit_fn)(void *ud, const chat_event *ev);

/* A whole answer, collected from events (for non-stream callers). */
typedef struct chat_tool_call {
    buf id;   /* call id ("" when the provider gave none: the encoder makes one) */
    buf name;
    buf args; /* JSON text, fragments concatenated */
    buf signature; /* Gemini thoughtSignature */
} chat_tool_call;

typedef struct chat_response {
    buf id;            /* response id ("" when none) */
    buf model;         /* answering model ("" when none) */
    buf text;          /* choice 0's text */
    buf thinking;      /* choice 0's reasoning */
    buf thinking_sig;  /* Anthropic thinking signature */
    chat_tool_call *calls; /* choice 0's tool calls, by index */
    size_t ncalls;
    chat_finish finish;
    char native[48];   /* the provider's own finish reason */
    char stop_sequence[256];
    chat_usage usage;
    bool have_usage;
    bool ended;        /* END seen */
    chat_error error;  /* an in-stream error when has_error */
    bool has_error;
} chat_response;

void chat_response_init(chat_response *r);
void chat_response_free(chat_response *r);
/* chat_emit_fn that collects events into a chat_response (ud). Returns
 * -ENOMEM, -E2BIG (over caps), or -EINVAL for a choice other than 0
 * (n > 1 is refused before the call when translating). */
int chat_response_collect(void *ud, const chat_event *ev);

/* ------------------------------------------------------------ formats */

/* Per-call stream state of a format's decoder or encoder: opaque. */
typedef struct chat_stream chat_stream;

/* Where a request goes, for building the upstream request line. */
typedef struct chat_target {
    const char *model;    /* the provider's model name */
    size_t model_len;
    bool stream;          /* ask for a stream */
} chat_target;

/* One wire format: everything the gateway needs to speak it, in both
 * directions. Each adapter defines one of these and nothing else public
 * for translation. */
typedef struct chat_format {
    chat_format_id id;
    const char *name; /* "openai", "anthropic", "gemini" */

    /* Request side. */
    /* Decodes a request body of this format (a caller's, or one the mock
     * receives). 0, or -EINVAL with *err set (400 naming the member),
     * -ENOMEM. r must be chat_request_init()'ed; it is filled even on
     * error as far as decoding went (free it either way). */
    int (*req_decode)(const char *body, size_t n, chat_request *r, chat_error *err);
    /* Appends the upstream body for r to out, with model t->model and
     * streaming per t->stream (for OpenAI also include_usage). 0, -EINVAL
     * with *err set when r uses something this format cannot express
     * (r->unmapped, n > 1 to Anthropic, ...), -E2BIG, -ENOMEM. */
    int (*req_encode)(const chat_request *r, const chat_target *t, buf *out, chat_error *err);
    /* Appends the path after the provider's base path, e.g.
     * "/chat/completions", "/messages",
     * "/models/MODEL:streamGenerateContent?alt=sse". 0, -E2BIG, -ENOMEM. */
    int (*req_path)(const chat_target *t, buf *out);
    /* Appends the authentication and version header lines ("Name: value\r\n")
     * for api_key (may be NULL: only the non-secret ones). 0 or -E2BIG/-ENOMEM. */
    int (*req_auth_headers)(const char *api_key, buf *out);

    /* Answer side, decoding (the upstream's format). */
    /* A new stream decoder; NULL when out of memory. */
    chat_stream *(*stream_dec_new)(void);
    /* Decodes one SSE event into normalized events. 0, the callback's
     * non-zero value, -EINVAL for an event that is not valid in this
     * format (the stream is then cut with an error), -ENOMEM. */
    int (*stream_dec_feed)(chat_stream *s, const sse_event *ev, chat_emit_fn emit, void *ud);
    /* The upstream body ended cleanly: emits what is still owed (Gemini:
     * FINISH/USAGE/END; others END if not seen). Same returns. */
    int (*stream_dec_finish)(chat_stream *s, chat_emit_fn emit, void *ud);
    /* Decodes a whole (non-stream) 200 response into events: START, the
     * content, FINISH, USAGE, END. 0, -EINVAL, callback value, -ENOMEM. */
    int (*resp_decode)(const char *body, size_t n, chat_emit_fn emit, void *ud);
    /* Decodes an error body (any non-2xx status) into e; a body that is not
     * this format's error shape still gives e with the status's kind and a
     * message quoting the start of the body. */
    void (*error_decode)(int status, const char *body, size_t n, chat_error *e);

    /* Answer side, encoding (the caller's format). */
    /* A new stream encoder for a caller that sent req (model echoed,
     * include_usage honoured); NULL when out of memory. */
    chat_stream *(*stream_enc_new)(const chat_request *req);
    /* Appends the SSE bytes for ev to out (maybe none). 0, -E2BIG, -ENOMEM. */
    int (*stream_enc_feed)(chat_stream *s, const chat_event *ev, buf *out);
    /* Appends a whole response body for a collected answer. 0, -E2BIG, -ENOMEM. */
    int (*resp_encode)(const chat_request *req, const chat_response *r, buf *out);
    /* Appends an error body in this format and sets *status to the HTTP
     * status to answer with (OpenAI callers get 503 for OVERLOADED). */
    int (*error_encode)(const chat_error *e, buf *out, int *status);
    /* Appends an in-stream error event (after a 200 was sent). */
    int (*stream_error_encode)(chat_stream *s, const chat_error *e, buf *out);

    void (*stream_free)(chat_stream *s); /* either kind; NULL is fine */
} chat_format;

extern const chat_format chat_format_openai;    /* providers/openai_chat.c */
extern const chat_format chat_format_anthropic; /* providers/anthropic.c */
extern const chat_format chat_format_gemini;    /* providers/gemini.c */

/* The format by id, or by name ("openai" ...; NULL when unknown). */
const chat_format *chat_format_get(chat_format_id id);
const chat_format *chat_format_by_name(const char *name);

/* ------------------------------------------------------------ helpers for adapters */

/* Copies p[0..n) into dst (cap bytes, NUL-terminated) as valid UTF-8
 * for an error message or a name: tab, CR and LF become a space, other
 * control characters (NUL included) and invalid bytes '?', and the copy
 * stops before a character that does not fit whole. Returns the bytes
 * written (without the NUL). */
size_t chat_text_copy(char *dst, size_t cap, const char *p, size_t n);
/* Appends s JSON-escaped with quotes. 0 or -E2BIG/-ENOMEM. */
int chat_json_str(buf *out, const char *p, size_t n) CHAT_MUSTCHECK;
/* Appends a JSON value (compact) to out. 0 or -E2BIG/-ENOMEM/-EINVAL. */
int chat_json_dump(buf *out, const json_t *v) CHAT_MUSTCHECK;
/* Appends a generated id: prefix + 24 url-safe random characters. */
int chat_gen_id(buf *out, const char *prefix) CHAT_MUSTCHECK;
/* Tool call ids that carry a signature. A format without a place for
 * Gemini's thoughtSignature (OpenAI, Anthropic) keeps it inside the call
 * id it hands the caller, so the signature comes back with the tool
 * result: id (or a generated prefix+random one when id is empty) +
 * "_tgsig_" + the signature re-encoded as unpadded base64url (ids stay
 * within [A-Za-z0-9_-], which Anthropic requires). Without a signature
 * the id is id (or generated). 0 or -E2BIG/-ENOMEM. */
int chat_tool_id_encode(buf *out, const char *prefix, slice id, slice signature) CHAT_MUSTCHECK;
/* Splits an id made by chat_tool_id_encode back into id and signature
 * (standard padded base64, appended to sig). An id without the marker is
 * all id, sig untouched. 0 or -E2BIG/-ENOMEM. */
int chat_tool_id_decode(slice in, slice *id, buf *sig) CHAT_MUSTCHECK;
/* A finish reason's canonical name in OpenAI terms ("stop", "length",
 * "tool_calls", "content_filter"); PAUSE and OTHER map to "stop". */
const char *chat_finish_openai(chat_finish f);

#endif
