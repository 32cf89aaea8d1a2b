/* meter.h - count the tokens of a call as its bytes pass.
 *
 * The provider's usage is the truth when it reports one. The meter exists
 * for the calls where it does not: a client that hangs up mid-stream, an
 * upstream that cuts the connection, a provider without usage. Then the
 * call is billed on the meter's count, flagged "estimated".
 *
 * Streaming: the relay feeds the meter the decoded text of each event
 * (content, tool-call arguments, reasoning). Text is cut into the
 * tokenizer's pre-tokenizer pieces as it arrives; a piece is final only
 * once two more pieces follow it (a regex piece can still grow or split
 * while text arrives: "  " + "x" is " " + " x"), so the meter holds back
 * the last two pieces and counts everything before them. Deltas are
 * batched: the pieces are cut once METER_COMMIT_AT bytes are held. The count at
 * any moment is exact for the text seen so far (test_meter checks every
 * split point against a one-shot count). Feeding a delta allocates
 * nothing: the hold-back buffer is allocated once per call. A single piece
 * longer than METER_HOLD_MAX bytes (a word of thousands of letters) is
 * counted in slices of that size, which may add a token at each cut.
 *
 * Without tokenizer data (tok_set empty) the meter estimates
 * ceil(bytes / 4) and says so (meter.estimate_only). */
#ifndef TG_BILLING_METER_H
#define TG_BILLING_METER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "billing/tokenizer.h"
#include "providers/jscan.h"
#include "providers/openai.h"

#define METER_HOLD_MAX 4096
/* Held text is cut into pieces once it reaches this many bytes (and at
 * the end): a delta costs a copy, the regex runs once per ~1 KiB. */
#define METER_COMMIT_AT 1024

/* The encodings this process loaded. */
typedef struct tok_set {
    tok_enc *o200k;   /* o200k_base, or NULL */
    tok_enc *cl100k;  /* cl100k_base, or NULL */
    char dir[1024];   /* where they came from ("" when none) */
} tok_set;

/* The directory the daemon looks in when none is configured:
 * $TOLLGATE_TOKENIZER_DIR, else the build tree's (for a binary run from
 * its build directory), else <prefix>/share/tollgate/tokenizer, else
 * /usr/share/tollgate/tokenizer - the first that holds o200k_base.tgbpe. */
const char *tok_default_dir(void);
/* Loads every known encoding found in dir (NULL: tok_default_dir()).
 * Returns the number loaded; err names what was missing or broken. */
int tok_set_load(tok_set *s, const char *dir, char *err, size_t errcap);
void tok_set_free(tok_set *s);
/* The encoding for a model; NULL when none is loaded. *exact as
 * tok_encoding_for_model, and false whenever the model's own encoding is
 * missing and another stands in. */
const tok_enc *tok_set_pick(const tok_set *s, const char *model, size_t len, bool *exact);

typedef struct meter {
    const tok_enc *enc;   /* NULL: bytes / 4 estimate */
    tok_work *work;       /* the thread's scratch (not owned) */
    uint64_t committed;   /* tokens of text that can no longer change */
    uint64_t bytes;       /* bytes fed, for the estimate */
    char *hold;           /* held-back valid UTF-8 (METER_HOLD_MAX bytes) */
    uint32_t hold_len;
    uint8_t carry[4];     /* an incomplete UTF-8 sequence at the end */
    uint8_t carry_len;
    bool oom;             /* no hold buffer: counting by estimate */
    bool hold_borrowed;   /* hold belongs to the caller (meter_init_buf) */
    uint64_t field;       /* which text is being fed (meter_field) */
    uint32_t choices;     /* messages seen in the output (choices) */
    uint32_t tool_calls;  /* tool calls seen in the output */
} meter;

void meter_init(meter *m, const tok_enc *enc, tok_work *work);
/* The same with a caller's METER_HOLD_MAX-byte buffer (nothing to
 * allocate; meter_free leaves it alone). */
void meter_init_buf(meter *m, const tok_enc *enc, tok_work *work, char *hold);
void meter_free(meter *m);
/* Feeds n more bytes of the current text. */
void meter_feed(meter *m, const char *p, size_t n);
/* Ends the current text (a new field or choice starts next): the held
 * back pieces are counted as they stand. */
void meter_break(meter *m);
/* Tokens of everything fed so far, as if the text ended here. Does not
 * change the meter. */
uint64_t meter_count(const meter *m);
/* True when the count is a bytes / 4 estimate, not a BPE count. */
static inline bool meter_estimate_only(const meter *m) { return m->enc == NULL || m->oom; }

/* Switches to another text (another choice, field or tool call): the
 * text before is ended (meter_break) when field differs from the last. */
void meter_field(meter *m, uint64_t field);

/* openai_each_text callback (ud: a meter): feeds each output string as
 * its own text and counts choices and tool calls. */
void meter_openai_text(void *ud, openai_text_kind kind, int64_t choice, int64_t tool,
                       const jscan_val *str);

/* The same for text already decoded (any wire format): p[0, n) is (a
 * fragment of) the string of output kind `kind` in choice and tool
 * (-1 for text that is not a tool call's); a TOOL_NAME counts one tool
 * call. */
void meter_text(meter *m, openai_text_kind kind, int64_t choice, int64_t tool, const char *p,
                size_t n);

/* Completion tokens the output costs, as the meter sees it: its text plus
 * the framing the model emits (METER_COMPLETION_END per message,
 * METER_TOOL_CALL_FRAMING per tool call). 0 when nothing was fed. */
uint64_t meter_completion(const meter *m);

/* jscan_str_each adapter: feeds decoded JSON string bytes to a meter. */
void meter_feed_cb(void *meter, const char *p, size_t n);

/* Prompt tokens of an OpenAI chat completions request body (validated
 * JSON), as OpenAI counts them for chat models: per message 3 tokens of
 * framing + role + content (text parts; images by their documented
 * detail cost) + name (+1), tool calls and tool results, 3 tokens priming
 * the reply, and the tool definitions by OpenAI's published counting
 * recipe. enc NULL: bytes / 4 of the same strings. */
uint64_t meter_prompt_openai(const tok_enc *enc, tok_work *w, const char *body, size_t n);

/* Framing the model emits around visible completion text: the end-of-turn
 * token of each message, and per tool call its recipient header. Added to
 * the relayed text's count when the provider does not report usage. */
#define METER_COMPLETION_END 1
#define METER_TOOL_CALL_FRAMING 4

#endif
