/* mock.c - the built-in mock provider (see mock.h).
 *
 * The answer.  Words are drawn from a fixed vocabulary of common English
 * words, each written with a leading space (" the", " model"), so that each
 * word is one token for the OpenAI tokenizers.  Word i is
 * vocab[splitmix64(seed + (i + 1) * golden) % 64], where seed is the FNV-1a
 * hash of the messages (role and text content).  The answer therefore
 * depends only on the messages: the same messages give the same text in
 * both the streamed and the plain form, and a shorter max_tokens gives a
 * prefix of a longer one.
 *
 * Length: max_tokens (or max_completion_tokens) when the request sets a
 * positive integer, else opts->default_tokens (16 when 0); both capped at
 * MOCK_MAX_TOKENS.  finish_reason is "length" when the request's max
 * decided the length, else "stop".
 *
 * Usage: completion_tokens = the number of words; prompt_tokens is the
 * estimate 3 + sum over messages of (4 + ceil(text bytes / 4)), where the
 * text bytes are those of a string content or of the {type: text} parts of
 * an array content; total_tokens is their sum.
 *
 * Delivery.  Everything runs from a pump called by the call's idle handle
 * (work due now: the next loop turn) or timer (latency, pacing).  A turn
 * delivers at most MOCK_BATCH bytes (plus one chunk) so a long answer never
 * monopolises the loop.  Stream chunks are assembled from a per-call
 * preformatted prefix into one reused output buffer: no allocation per
 * chunk once the buffer has grown to a batch.
 *
 * Message contents are never logged. */
#include "providers/mock.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/base/buf.h"
#include "daemon/base/clock.h"
#include "daemon/base/log.h"
#include "providers/chat.h"

#define MOCK_MAX_TOKENS 65536u         /* hard cap on the answer length in words */
#define MOCK_DEFAULT_TOKENS 16u        /* length when neither request nor options set one */
#define MOCK_BATCH ((size_t)64 * 1024) /* bytes delivered per loop turn (plus one chunk) */
#define MOCK_WORD_MAX 8u               /* longest vocabulary word, leading space included */
#define MOCK_SLACK 1024u               /* fixed JSON around the variable parts */

typedef struct mock_word {
    const char *s;   /* the word with its leading space */
    unsigned char n; /* its length */
} mock_word;

/* clang-format off */
#define W(lit) {lit, (unsigned char)(sizeof(lit) - 1)}
static const mock_word mock_vocab[64] = {
    W(" the"),    W(" of"),     W(" and"),    W(" to"),     W(" in"),     W(" is"),
    W(" that"),   W(" for"),    W(" it"),     W(" with"),   W(" as"),     W(" on"),
    W(" be"),     W(" at"),     W(" by"),     W(" this"),   W(" from"),   W(" are"),
    W(" or"),     W(" an"),     W(" was"),    W(" but"),    W(" not"),    W(" have"),
    W(" all"),    W(" can"),    W(" will"),   W(" one"),    W(" more"),   W(" time"),
    W(" new"),    W(" data"),   W(" use"),    W(" system"), W(" way"),    W(" work"),
    W(" each"),   W(" long"),   W(" small"),  W(" first"),  W(" light"),  W(" water"),
    W(" world"),  W(" day"),    W(" part"),   W(" place"),  W(" right"),  W(" good"),
    W(" number"), W(" people"), W(" point"),  W(" state"),  W(" simple"), W(" clear"),
    W(" open"),   W(" fast"),   W(" local"),  W(" answer"), W(" model"),  W(" test"),
    W(" value"),  W(" line"),   W(" word"),   W(" just"),
};
#undef W
/* clang-format on */

/* Fixed pieces of a stream chunk; see mock__start_stream for the layout. */
static const char CH_OPEN[] = "[{\"index\":0,\"delta\":";
static const char CONTENT_OPEN[] = "{\"content\":\"";
static const char CONTENT_CLOSE[] = "\"},\"logprobs\":null,\"finish_reason\":null}]";
static const char ROLE_DELTA[] =
    "{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]";
static const char TAIL_USAGE_NULL[] = ",\"usage\":null}\n\n";
static const char TAIL_PLAIN[] = "}\n\n";
static const char DONE_EVENT[] = "data: [DONE]\n\n";

#define LIT_LEN(a) (sizeof(a) - 1)

typedef enum mock_phase {
    MOCK_WAIT_HEAD, /* before on_head: latency running (timer) or head due (idle) */
    MOCK_BODY,      /* on_head delivered; body being emitted */
} mock_phase;

typedef struct mock_call {
    upstream_call base;           /* must be first: upstream_call* <-> mock_call* */
    uv_timer_t timer;             /* latency and pacing waits */
    uv_idle_t idle;               /* runs the pump on the next loop turn */
    int open_handles;             /* handles not yet closed; memory freed at 0 */
    const upstream_callbacks *cb; /* the caller's callbacks */
    void *ud;                     /* the caller's user data */
    mock_phase phase;             /* where the call is */
    bool paused;                  /* upstream_pause() in force */
    bool done;                    /* on_done is running or has run */
    bool released;                /* handles are closing: no callback may run */
    bool stream;                  /* SSE answer (else one JSON body) */
    bool include_usage;           /* stream_options.include_usage */
    bool role_sent;               /* stream: the role chunk went out */
    int status;                   /* HTTP status for on_head */
    uint64_t head_due_ns;         /* uv_hrtime() at which on_head may run */
    uint64_t seed;                /* hash of the messages: picks the words */
    uint32_t n_words;             /* answer length in words (completion_tokens) */
    uint32_t chunk_tokens;        /* words per content chunk */
    uint32_t total_chunks;        /* content chunks in the whole answer */
    uint32_t chunks_sent;         /* content chunks delivered so far */
    uint32_t cut_after;           /* cut the stream after this many chunks; 0 = never */
    uint64_t prompt_tokens;       /* the prompt estimate (see top of file) */
    const char *finish_reason;    /* "stop" or "length" */
    uint64_t interval_ns;         /* time between content chunks; 0 = unpaced */
    uint64_t pace_t0_ns;          /* pacing origin (head or last resume) */
    uint32_t pace_base;           /* chunks_sent at pace_t0_ns */
    buf pre;                      /* stream: chunk head, CH_OPEN, CONTENT_OPEN */
    size_t head_len;              /* bytes of pre up to and including "choices": */
    buf out;                      /* plain: the whole body; stream: the batch */
    size_t out_off;               /* plain: bytes of out already delivered */
    char clen[24];                /* content-length value (plain bodies) */
    upstream_header hdrs[2];      /* response headers for on_head */
    size_t nhdrs;                 /* headers in use */
    const chat_format *fmt;       /* non-OpenAI format spoken (encoders), NULL = OpenAI */
    chat_stream *enc;             /* fmt's stream encoder */
    chat_request req;             /* fmt: the decoded request (the encoder echoes it) */
    buf words;                    /* fmt: scratch for one chunk's words */
    char id[40];                  /* fmt: the response id */
} mock_call;

/* --- the answer ---------------------------------------------------------- */

static uint64_t mock__fnv(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static inline const mock_word *mock__word(uint64_t seed, uint32_t i)
{
    uint64_t z = seed + ((uint64_t)i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return &mock_vocab[z & 63u];
}

/* Reserves n bytes at the end of b and returns where to write them, or
 * NULL (-E2BIG / -ENOMEM in *rc). Finish with mock__commit. */
static char *mock__room(buf *b, size_t n, int *rc)
{
    *rc = buf_reserve(b, n);
    return *rc ? NULL : b->data + b->len;
}

static void mock__commit(buf *b, char *end)
{
    b->len = (size_t)(end - b->data);
    b->data[b->len] = '\0';
}

/* Appends words [from, from + n) of the answer. */
static int mock__append_words(buf *b, uint64_t seed, uint32_t from, uint32_t n)
{
    int rc;
    char *w = mock__room(b, (size_t)n * MOCK_WORD_MAX, &rc);
    if (!w)
        return rc;
    for (uint32_t i = from; i < from + n; i++) {
        const mock_word *mw = mock__word(seed, i);
        memcpy(w, mw->s, mw->n);
        w += mw->n;
    }
    mock__commit(b, w);
    return 0;
}

/* Hashes one text and adds its bytes to *bytes. */
static uint64_t mock__text(uint64_t h, const json_t *s, uint64_t *bytes)
{
    size_t n = json_string_length(s);
    *bytes += n;
    return mock__fnv(h, json_string_value(s), n);
}

/* Hashes the messages into *seed and estimates the prompt tokens. */
static void mock__read_messages(const json_t *msgs, uint64_t *seed, uint64_t *prompt)
{
    uint64_t h = 0xcbf29ce484222325ull, tokens = 3;
    size_t i, j;
    const json_t *m, *part;

    if (!json_is_array(msgs))
        goto out;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m))
            continue;
        uint64_t bytes = 0;
        const json_t *role = json_object_get(m, "role");
        const json_t *content = json_object_get(m, "content");
        if (json_is_string(role))
            h = mock__fnv(h, json_string_value(role), json_string_length(role));
        h = mock__fnv(h, "\x1f", 1);
        if (json_is_string(content)) {
            h = mock__text(h, content, &bytes);
        } else if (json_is_array(content)) {
            json_array_foreach(content, j, part)
            {
                const json_t *type = json_object_get(part, "type");
                const json_t *text = json_object_get(part, "text");
                if (json_is_string(type) && strcmp(json_string_value(type), "text") == 0 &&
                    json_is_string(text))
                    h = mock__text(h, text, &bytes);
            }
        }
        h = mock__fnv(h, "\x1e", 1);
        tokens += 4 + (bytes + 3) / 4;
    }
out:
    *seed = h;
    *prompt = tokens;
}

/* A positive integral number field (clamped to 2^32), or 0. Numbers are
 * decoded as doubles (JSON_DECODE_INT_AS_REAL) so that no valid JSON
 * integer is a parse error. */
static uint64_t mock__uint_field(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        return 0;
    double d = json_number_value(v);
    if (d >= 4294967296.0)
        return 4294967296ull; /* over any cap anyway */
    if (d < 1 || d != (double)(uint64_t)d)
        return 0; /* not a positive integer */
    return (uint64_t)d;
}

static int mock__append_usage(buf *b, const mock_call *c)
{
    return buf_printf(b,
                      "{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu32
                      ",\"total_tokens\":%" PRIu64
                      ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
                      "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
                      "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}",
                      c->prompt_tokens, c->n_words, c->prompt_tokens + c->n_words);
}

/* The whole chat.completion object into c->out. */
static int mock__build_plain(mock_call *c, const char *model, size_t model_len, int64_t created)
{
    buf *b = &c->out;
    int rc;

    buf_init(b, (size_t)c->n_words * MOCK_WORD_MAX + model_len * 6 + 2 * MOCK_SLACK);
    if ((rc = buf_reserve(b, b->max)) || /* one allocation for the whole body */
        (rc = buf_printf(b,
                         "{\"id\":\"chatcmpl-mock-%016" PRIx64
                         "\",\"object\":\"chat.completion\",\"created\":%" PRId64 ",\"model\":\"",
                         c->seed, created)) ||
        (rc = buf_append_json_escaped(b, model, model_len)) ||
        (rc = buf_append_str(b, "\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                                "\"content\":\"")) ||
        (rc = mock__append_words(b, c->seed, 0, c->n_words)) ||
        (rc = buf_printf(b,
                         "\",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,"
                         "\"finish_reason\":\"%s\"}],\"usage\":",
                         c->finish_reason)) ||
        (rc = mock__append_usage(b, c)) ||
        (rc = buf_append_str(b,
                             ",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_mock\"}")))
        return rc;
    return 0;
}

/* An OpenAI error object for the injected status into c->out. */
static int mock__build_error(mock_call *c, int status)
{
    const char *type = "invalid_request_error", *code = NULL;

    if (status == 429) {
        type = "rate_limit_error";
        code = "rate_limit_exceeded";
    } else if (status >= 500 && status <= 599) {
        type = "server_error";
    } else if (status == 401) {
        code = "invalid_api_key";
    }
    buf_init(&c->out, MOCK_SLACK);
    return buf_printf(&c->out,
                      "{\"error\":{\"message\":\"mock provider: injected failure (HTTP %d)\","
                      "\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}",
                      status, type, code ? "\"" : "", code ? code : "null", code ? "\"" : "");
}

/* The chunk head into c->pre, laid out so every chunk is cut from it:
 *   pre[0, head_len)        data: {"id":...,"system_fingerprint":"fp_mock","choices":
 *   + CH_OPEN               [{"index":0,"delta":      (role and finish chunks)
 *   + CONTENT_OPEN          {"content":"              (content chunks: all of pre) */
static int mock__start_stream(mock_call *c, const char *model, size_t model_len, int64_t created)
{
    buf *b = &c->pre;
    int rc;

    buf_init(b, model_len * 6 + MOCK_SLACK);
    if ((rc = buf_printf(b,
                         "data: {\"id\":\"chatcmpl-mock-%016" PRIx64
                         "\",\"object\":\"chat.completion.chunk\",\"created\":%" PRId64
                         ",\"model\":\"",
                         c->seed, created)) ||
        (rc = buf_append_json_escaped(b, model, model_len)) ||
        (rc = buf_append_str(b, "\",\"service_tier\":\"default\","
                                "\"system_fingerprint\":\"fp_mock\",\"choices\":")))
        return rc;
    c->head_len = b->len;
    if ((rc = buf_append(b, CH_OPEN, LIT_LEN(CH_OPEN))) ||
        (rc = buf_append(b, CONTENT_OPEN, LIT_LEN(CONTENT_OPEN))))
        return rc;
    /* One batch, one more chunk of any kind, and the closing events. */
    size_t chunk = b->len + (size_t)c->chunk_tokens * MOCK_WORD_MAX + LIT_LEN(CONTENT_CLOSE) +
                   LIT_LEN(TAIL_USAGE_NULL);
    size_t ends = 3 * b->len + 2 * MOCK_SLACK;
    buf_init(&c->out, MOCK_BATCH + chunk + ends);
    /* Allocate the first batch once rather than doubling up to it: for a
     * short answer this is the whole stream. A paced stream delivers about
     * one chunk a tick, so it starts small (and grows if a tick needs more). */
    size_t first =
        (size_t)(c->interval_ns && c->total_chunks > 4 ? 4 : c->total_chunks) * chunk + ends;
    return buf_reserve(&c->out, first < c->out.max ? first : c->out.max);
}

/* --- stream chunks --------------------------------------------------------- */

static const char *mock__tail(const mock_call *c, size_t *n)
{
    *n = c->include_usage ? LIT_LEN(TAIL_USAGE_NULL) : LIT_LEN(TAIL_PLAIN);
    return c->include_usage ? TAIL_USAGE_NULL : TAIL_PLAIN;
}

/* pre[0, head_len + CH_OPEN) + delta + tail. */
static int mock__append_choice_chunk(mock_call *c, const char *delta, size_t dn)
{
    size_t tn, hn = c->head_len + LIT_LEN(CH_OPEN);
    const char *tail = mock__tail(c, &tn);
    int rc;
    char *w = mock__room(&c->out, hn + dn + tn, &rc);
    if (!w)
        return rc;
    memcpy(w, c->pre.data, hn);
    memcpy(w + hn, delta, dn);
    memcpy(w + hn + dn, tail, tn);
    mock__commit(&c->out, w + hn + dn + tn);
    return 0;
}

static int mock__append_content_chunk(mock_call *c)
{
    uint32_t from = c->chunks_sent * c->chunk_tokens;
    uint32_t n = c->n_words - from < c->chunk_tokens ? c->n_words - from : c->chunk_tokens;
    size_t tn;
    const char *tail = mock__tail(c, &tn);
    int rc;
    char *w = mock__room(&c->out,
                         c->pre.len + (size_t)n * MOCK_WORD_MAX + LIT_LEN(CONTENT_CLOSE) + tn, &rc);
    if (!w)
        return rc;
    memcpy(w, c->pre.data, c->pre.len);
    w += c->pre.len;
    for (uint32_t i = from; i < from + n; i++) {
        const mock_word *mw = mock__word(c->seed, i);
        memcpy(w, mw->s, mw->n);
        w += mw->n;
    }
    memcpy(w, CONTENT_CLOSE, LIT_LEN(CONTENT_CLOSE));
    w += LIT_LEN(CONTENT_CLOSE);
    memcpy(w, tail, tn);
    mock__commit(&c->out, w + tn);
    c->chunks_sent++;
    return 0;
}

/* The finish chunk, the usage chunk when asked for, and [DONE]. */
static int mock__append_end(mock_call *c)
{
    char delta[96];
    int n = snprintf(delta, sizeof(delta), "{},\"logprobs\":null,\"finish_reason\":\"%s\"}]",
                     c->finish_reason);
    int rc = mock__append_choice_chunk(c, delta, (size_t)n);
    if (rc)
        return rc;
    if (c->include_usage) {
        if ((rc = buf_append(&c->out, c->pre.data, c->head_len)) ||
            (rc = buf_append_str(&c->out, "[],\"usage\":")) ||
            (rc = mock__append_usage(&c->out, c)) ||
            (rc = buf_append(&c->out, TAIL_PLAIN, LIT_LEN(TAIL_PLAIN))))
            return rc;
    }
    return buf_append(&c->out, DONE_EVENT, LIT_LEN(DONE_EVENT));
}

/* --- other wire formats ---------------------------------------------------
 *
 * For a provider with mock.format anthropic or gemini the same answer is
 * spoken through that format's encoders (providers/chat.h): the request is
 * decoded with its req_decode, the answer is a sequence of normalized
 * events, and the bytes are what the format's stream or response encoder
 * makes of them. The gateway then decodes them with the same format's
 * decoder, so the demo and the benchmarks run the real translation code. */

/* Hashes the messages of a decoded request like mock__read_messages. */
static void mock__read_chat(const chat_request *r, uint64_t *seed, uint64_t *prompt)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    uint64_t h = 0xcbf29ce484222325ull, tokens = 3;
    for (size_t i = 0; i < r->nmsgs; i++) {
        const chat_msg *m = &r->msgs[i];
        uint64_t bytes = 0;
        const char *role = roles[m->role];
        h = mock__fnv(h, role, strlen(role));
        h = mock__fnv(h, "\x1f", 1);
        for (size_t j = 0; j < m->nparts; j++) {
            const chat_part *p = &m->parts[j];
            if (p->type != CHAT_PART_TEXT && p->type != CHAT_PART_TOOL_RESULT)
                continue;
            bytes += p->text.len;
            h = mock__fnv(h, p->text.p ? p->text.p : "", p->text.len);
        }
        h = mock__fnv(h, "\x1e", 1);
        tokens += 4 + (bytes + 3) / 4;
    }
    *seed = h;
    *prompt = tokens;
}

static chat_finish mock__finish_of(const mock_call *c)
{
    return strcmp(c->finish_reason, "length") == 0 ? CHAT_FINISH_LENGTH : CHAT_FINISH_STOP;
}

static void mock__usage(const mock_call *c, chat_usage *u)
{
    chat_usage_unset(u);
    u->input = (int64_t)c->prompt_tokens;
    u->output = c->n_words;
    u->cache_read = 0;
    u->cache_write = 0;
}

static chat_event mock__ev(chat_ev_type type)
{
    chat_event ev;
    memset(&ev, 0, sizeof ev);
    ev.type = type;
    chat_usage_unset(&ev.usage);
    return ev;
}

static int mock__fmt_start(mock_call *c)
{
    chat_event ev = mock__ev(CHAT_EV_START);
    ev.id = slice_make(c->id, strlen(c->id));
    ev.model = slice_make(c->req.model.p ? c->req.model.p : "", c->req.model.len);
    mock__usage(c, &ev.usage);
    ev.usage.output = 0;
    return c->fmt->stream_enc_feed(c->enc, &ev, &c->out);
}

static int mock__fmt_content(mock_call *c)
{
    uint32_t from = c->chunks_sent * c->chunk_tokens;
    uint32_t n = c->n_words - from < c->chunk_tokens ? c->n_words - from : c->chunk_tokens;
    buf_reset(&c->words);
    int rc = mock__append_words(&c->words, c->seed, from, n);
    if (rc)
        return rc;
    chat_event ev = mock__ev(CHAT_EV_TEXT);
    ev.text = slice_make(c->words.data, c->words.len);
    c->chunks_sent++;
    return c->fmt->stream_enc_feed(c->enc, &ev, &c->out);
}

static int mock__fmt_end(mock_call *c)
{
    chat_event ev = mock__ev(CHAT_EV_FINISH);
    ev.finish = mock__finish_of(c);
    int rc = c->fmt->stream_enc_feed(c->enc, &ev, &c->out);
    if (rc)
        return rc;
    ev = mock__ev(CHAT_EV_USAGE);
    mock__usage(c, &ev.usage);
    if ((rc = c->fmt->stream_enc_feed(c->enc, &ev, &c->out)))
        return rc;
    ev = mock__ev(CHAT_EV_END);
    return c->fmt->stream_enc_feed(c->enc, &ev, &c->out);
}

/* The whole answer in fmt's response shape into c->out. */
static int mock__fmt_plain(mock_call *c)
{
    chat_response r;
    chat_response_init(&r);
    int rc = 0;
    if (buf_append_str(&r.id, c->id) ||
        buf_append(&r.model, c->req.model.p ? c->req.model.p : "", c->req.model.len) ||
        mock__append_words(&r.text, c->seed, 0, c->n_words))
        rc = -ENOMEM;
    r.finish = mock__finish_of(c);
    mock__usage(c, &r.usage);
    r.have_usage = true;
    r.ended = true;
    buf_init(&c->out, (size_t)c->n_words * MOCK_WORD_MAX * 2 + c->req.model.len * 6 + 2 * MOCK_SLACK);
    if (!rc)
        rc = c->fmt->resp_encode(&c->req, &r, &c->out);
    chat_response_free(&r);
    return rc;
}

/* An error body in fmt's shape for the injected status into c->out. */
static int mock__fmt_error(mock_call *c, int status)
{
    chat_error e;
    memset(&e, 0, sizeof e);
    e.status = status;
    e.kind = chat_err_kind_of_status(status);
    e.retry_after_ms = -1;
    snprintf(e.message, sizeof e.message, "mock provider: injected failure (HTTP %d)", status);
    buf_init(&c->out, 4 * MOCK_SLACK);
    int ignored;
    return c->fmt->error_encode(&e, &c->out, &ignored);
}

/* --- the pump -------------------------------------------------------------- */

static void mock__on_close(uv_handle_t *h)
{
    mock_call *c = h->data;
    if (--c->open_handles > 0)
        return;
    buf_free(&c->pre);
    buf_free(&c->out);
    buf_free(&c->words);
    if (c->fmt)
        c->fmt->stream_free(c->enc);
    chat_request_free(&c->req);
    free(c);
}

/* Closes the handles; memory goes in the last close callback. */
static void mock__release(mock_call *c)
{
    if (c->released)
        return;
    c->released = true;
    uv_close((uv_handle_t *)&c->timer, mock__on_close);
    uv_close((uv_handle_t *)&c->idle, mock__on_close);
}

static void mock__finish(mock_call *c, const char *err)
{
    c->done = true;
    c->cb->on_done(&c->base, err, c->ud);
    mock__release(c);
}

static void mock__pump(mock_call *c);

static void mock__on_timer(uv_timer_t *t)
{
    mock__pump(t->data);
}

static void mock__on_idle(uv_idle_t *h)
{
    uv_idle_stop(h);
    mock__pump(h->data);
}

/* Runs the pump on the next loop turn. */
static void mock__soon(mock_call *c)
{
    uv_idle_start(&c->idle, mock__on_idle);
}

/* Runs the pump once uv_hrtime() reaches due_ns (at least 1 ms from now:
 * the timer has millisecond resolution and a 0 ms timer would spin). */
static void mock__sleep_until(mock_call *c, uint64_t due_ns, uint64_t now_ns)
{
    uint64_t ms = (due_ns - now_ns + 999999) / 1000000;
    uv_timer_start(&c->timer, mock__on_timer, ms ? ms : 1, 0);
}

/* Hands p[0, n) to on_body; false when the call was released meanwhile. */
static bool mock__deliver(mock_call *c, const char *p, size_t n)
{
    int rc = c->cb->on_body(&c->base, p, n, c->ud);
    if (c->released)
        return false;
    if (rc) {
        mock__release(c);
        return false;
    }
    return true;
}

static void mock__pump_plain(mock_call *c)
{
    size_t n = c->out.len - c->out_off;
    if (n > MOCK_BATCH)
        n = MOCK_BATCH;
    if (n) {
        size_t off = c->out_off;
        c->out_off += n;
        if (!mock__deliver(c, c->out.data + off, n))
            return;
    }
    if (c->out_off == c->out.len)
        mock__finish(c, NULL);
    else if (!c->paused)
        mock__soon(c);
}

static void mock__pump_stream(mock_call *c)
{
    uint64_t now = 0, allowed = UINT64_MAX;
    uint32_t limit = c->total_chunks;
    bool cut, finished;
    int rc = 0;

    if (c->cut_after && c->cut_after < limit)
        limit = c->cut_after;
    if (c->interval_ns) {
        now = uv_hrtime();
        allowed = c->pace_base + (now - c->pace_t0_ns) / c->interval_ns;
    }
    buf_reset(&c->out);
    if (!c->role_sent) {
        c->role_sent = true;
        rc = c->fmt ? mock__fmt_start(c) : mock__append_choice_chunk(c, ROLE_DELTA, LIT_LEN(ROLE_DELTA));
    }
    while (!rc && c->chunks_sent < limit && c->chunks_sent < allowed && c->out.len < MOCK_BATCH)
        rc = c->fmt ? mock__fmt_content(c) : mock__append_content_chunk(c);
    cut = c->cut_after && c->chunks_sent == c->cut_after;
    finished = !cut && c->chunks_sent == c->total_chunks;
    if (!rc && finished)
        rc = c->fmt ? mock__fmt_end(c) : mock__append_end(c);
    if (rc) {
        /* Cannot happen with the caps above short of ENOMEM. */
        log_error("mock", "stream buffer: %s", strerror(-rc));
        mock__finish(c, upstream_err_reset);
        return;
    }
    if (c->out.len && !mock__deliver(c, c->out.data, c->out.len))
        return;
    if (cut) {
        mock__finish(c, upstream_err_injected);
    } else if (finished) {
        mock__finish(c, NULL);
    } else if (!c->paused) {
        if (c->chunks_sent < allowed)
            mock__soon(c);
        else
            mock__sleep_until(
                c, c->pace_t0_ns + (uint64_t)(c->chunks_sent - c->pace_base + 1) * c->interval_ns,
                now);
    }
}

static void mock__pump(mock_call *c)
{
    if (c->released || c->done || c->paused)
        return;
    if (c->phase == MOCK_WAIT_HEAD) {
        if (c->head_due_ns) {
            uint64_t now = uv_hrtime();
            if (now < c->head_due_ns) {
                mock__sleep_until(c, c->head_due_ns, now);
                return;
            }
        }
        c->phase = MOCK_BODY;
        c->pace_t0_ns = uv_hrtime();
        c->pace_base = 0;
        int rc = c->cb->on_head(&c->base, c->status, c->hdrs, c->nhdrs, c->ud);
        if (c->released)
            return;
        if (rc) {
            mock__release(c);
            return;
        }
        if (c->paused)
            return;
    }
    if (c->stream)
        mock__pump_stream(c);
    else
        mock__pump_plain(c);
}

/* --- upstream_ops ---------------------------------------------------------- */

static void mock__pause(upstream_call *base)
{
    mock_call *c = (mock_call *)base;
    if (c->released || c->done)
        return;
    c->paused = true;
    uv_timer_stop(&c->timer);
    uv_idle_stop(&c->idle);
}

static void mock__resume(upstream_call *base)
{
    mock_call *c = (mock_call *)base;
    if (c->released || c->done || !c->paused)
        return;
    c->paused = false;
    /* Pacing restarts from now: the next chunk comes one interval later. */
    c->pace_t0_ns = uv_hrtime();
    c->pace_base = c->chunks_sent;
    mock__soon(c);
}

static void mock__abort(upstream_call *base)
{
    mock_call *c = (mock_call *)base;
    if (c->done)
        return;
    mock__release(c);
}

static const upstream_ops mock_ops = {
    .pause = mock__pause,
    .resume = mock__resume,
    .abort = mock__abort,
};

/* --- start ----------------------------------------------------------------- */

/* Reads what the answer depends on from an OpenAI request body into c;
 * *jreq keeps the parsed body (the model points into it) for the caller
 * to release. */
static int mock__read_openai(mock_call *c, const char *body, size_t len, json_t **jreq,
                             const char **model, size_t *model_len, uint64_t *max)
{
    json_error_t jerr;
    /* Any valid JSON object must load: strings may hold \u0000 and
     * integers may exceed long long. */
    json_t *req = json_loadb(body, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &jerr);
    *jreq = req;
    if (!json_is_object(req))
        return -EINVAL;
    const json_t *jm = json_object_get(req, "model");
    if (json_is_string(jm)) {
        *model = json_string_value(jm);
        *model_len = json_string_length(jm);
    }
    c->stream = json_is_true(json_object_get(req, "stream"));
    c->include_usage =
        c->stream &&
        json_is_true(json_object_get(json_object_get(req, "stream_options"), "include_usage"));
    mock__read_messages(json_object_get(req, "messages"), &c->seed, &c->prompt_tokens);
    *max = mock__uint_field(req, "max_completion_tokens");
    if (!*max)
        *max = mock__uint_field(req, "max_tokens");
    return 0;
}

/* Reads the same from a request in another format, with its decoder. */
static int mock__read_format(mock_call *c, int stream, const char *body, size_t len, uint64_t *max)
{
    chat_error err;
    int rc = c->fmt->req_decode(body, len, &c->req, &err);
    if (rc)
        return rc;
    c->stream = stream >= 0 ? stream != 0 : c->req.stream;
    mock__read_chat(&c->req, &c->seed, &c->prompt_tokens);
    *max = c->req.max_tokens > 0 ? (uint64_t)c->req.max_tokens : 0;
    snprintf(c->id, sizeof c->id, "mock%016" PRIx64, c->seed);
    return 0;
}

int mock_call_start(uv_loop_t *loop, const mock_options *opt, mock_state *st, const char *body,
                    size_t len, int stream, const upstream_callbacks *cb, void *ud,
                    upstream_call **out)
{
    mock_call *c;
    const char *model = "mock";
    size_t model_len = 4;
    uint64_t max = 0, calls;
    json_t *jreq = NULL;
    int rc;

    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->base.ops = &mock_ops;
    c->cb = cb;
    c->ud = ud;
    c->phase = MOCK_WAIT_HEAD;
    buf_init(&c->pre, 0);
    buf_init(&c->out, 0);
    buf_init(&c->words, (size_t)MOCK_MAX_TOKENS * MOCK_WORD_MAX);
    if (opt->format != CHAT_FMT_OPENAI) {
        c->fmt = chat_format_get((chat_format_id)opt->format);
        if (!c->fmt) {
            rc = -EINVAL;
            goto out_free;
        }
        if ((rc = chat_request_init(&c->req)))
            goto out_free;
        rc = mock__read_format(c, stream, body, len, &max);
    } else {
        rc = mock__read_openai(c, body, len, &jreq, &model, &model_len, &max);
        if (!rc && stream >= 0)
            c->stream = stream != 0;
    }
    if (rc)
        goto out_free;

    if (max) {
        c->n_words = max > MOCK_MAX_TOKENS ? MOCK_MAX_TOKENS : (uint32_t)max;
        c->finish_reason = c->n_words == max ? "length" : "stop";
    } else {
        c->n_words = opt->default_tokens ? opt->default_tokens : MOCK_DEFAULT_TOKENS;
        if (c->n_words > MOCK_MAX_TOKENS)
            c->n_words = MOCK_MAX_TOKENS;
        c->finish_reason = "stop";
    }
    c->chunk_tokens = opt->chunk_tokens ? opt->chunk_tokens : 1;
    if (c->chunk_tokens > MOCK_MAX_TOKENS)
        c->chunk_tokens = MOCK_MAX_TOKENS;
    c->total_chunks = (c->n_words + c->chunk_tokens - 1) / c->chunk_tokens;
    c->cut_after = opt->cut_after_chunks;
    if (opt->tokens_per_sec)
        c->interval_ns = (uint64_t)c->chunk_tokens * 1000000000ull / opt->tokens_per_sec;
    if (opt->latency_ms)
        c->head_due_ns = uv_hrtime() + (uint64_t)opt->latency_ms * 1000000ull;

    calls = st ? ++st->calls : 1;
    c->status = 200;
    if (opt->fail_status && opt->fail_every && calls % opt->fail_every == 0) {
        log_debug("mock", "injecting HTTP %d on call %" PRIu64, opt->fail_status, calls);
        c->status = opt->fail_status;
        c->stream = false;
        rc = c->fmt ? mock__fmt_error(c, opt->fail_status) : mock__build_error(c, opt->fail_status);
    } else if (c->fmt && c->stream) {
        c->enc = c->fmt->stream_enc_new(&c->req);
        buf_init(&c->out, MOCK_BATCH + (size_t)c->chunk_tokens * MOCK_WORD_MAX * 8 +
                              c->req.model.len * 12 + 8 * MOCK_SLACK);
        rc = c->enc ? 0 : -ENOMEM;
    } else if (c->fmt) {
        rc = mock__fmt_plain(c);
    } else if (c->stream) {
        rc = mock__start_stream(c, model, model_len, clock_wall_s());
    } else {
        rc = mock__build_plain(c, model, model_len, clock_wall_s());
    }
    if (rc)
        goto out_free;

    if (c->stream) {
        c->hdrs[0] = (upstream_header){SLICE_LIT("content-type"), SLICE_LIT("text/event-stream")};
        c->nhdrs = 1;
    } else {
        int n = snprintf(c->clen, sizeof(c->clen), "%zu", c->out.len);
        c->hdrs[0] = (upstream_header){SLICE_LIT("content-type"), SLICE_LIT("application/json")};
        c->hdrs[1] = (upstream_header){SLICE_LIT("content-length"), slice_make(c->clen, (size_t)n)};
        c->nhdrs = 2;
    }

    uv_timer_init(loop, &c->timer);
    uv_idle_init(loop, &c->idle);
    c->timer.data = c;
    c->idle.data = c;
    c->open_handles = 2;
    if (opt->latency_ms)
        uv_timer_start(&c->timer, mock__on_timer, opt->latency_ms, 0);
    else
        mock__soon(c);
    *out = &c->base;
    json_decref(jreq);
    return 0;

out_free:
    json_decref(jreq);
    buf_free(&c->pre);
    buf_free(&c->out);
    buf_free(&c->words);
    if (c->fmt && c->enc)
        c->fmt->stream_free(c->enc);
    chat_request_free(&c->req);
    free(c);
    return rc;
}
