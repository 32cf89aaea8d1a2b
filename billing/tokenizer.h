/* tokenizer.h - byte-pair encoding compatible with OpenAI's tiktoken.
 *
 * An encoding (o200k_base, cl100k_base) is a rank table and a
 * pre-tokenizer regex. Text is first cut into pieces by the regex (PCRE2,
 * JIT, Unicode properties); each piece is then merged bytewise by rank,
 * lowest rank first, leftmost on ties - exactly tiktoken's
 * _byte_pair_merge, so ids and counts equal tiktoken's encode_ordinary.
 * Special tokens such as "<|endoftext|>" are never recognised: they are
 * ordinary text here, as in a provider's view of a user message.
 *
 * Input is bytes. Invalid UTF-8 is read as U+FFFD with the WHATWG
 * "maximal subpart" rule (what TextDecoder, Node's Buffer.toString and a
 * JSON decoder feeding a provider do), so counts match the oracle run on
 * the decoded string.
 *
 * Rank data: the build converts the npm package `tiktoken`'s
 * encoders/<name>.json into <name>.tgbpe (tok_convert_tiktoken_json), a
 * flat little-endian file the daemon maps read-only at start: header,
 * name, pattern, offsets[n+1], hash[cap], token bytes. Loading validates
 * every offset and hash slot and allocates nothing per token.
 *
 * Threads: a tok_enc is immutable after tok_open and may be shared; a
 * tok_work (regex match data, JIT stack, merge scratch) belongs to one
 * thread. Encoding a short piece allocates nothing; scratch grows only for
 * pieces longer than any seen before and is kept. */
#ifndef TG_BILLING_TOKENIZER_H
#define TG_BILLING_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/base/buf.h"

typedef struct tok_enc tok_enc;
typedef struct tok_work tok_work;

/* Called once per token id, in order. */
typedef void (*tok_emit_fn)(void *ud, uint32_t id);

/* Converts a tiktoken encoder JSON ({"pat_str","special_tokens",
 * "bpe_ranks": "! <first rank> <base64 token> ..."}) into a .tgbpe file
 * at out_path (written to a temp name, then renamed). 0, or -1 with a
 * message in err. */
int tok_convert_tiktoken_json(const char *name, const char *json, size_t len,
                              const char *out_path, char *err, size_t errcap);

/* Maps and validates a .tgbpe file and compiles its pattern. NULL with a
 * message in err when the file is missing, corrupt or its pattern does not
 * compile. */
tok_enc *tok_open(const char *path, char *err, size_t errcap);
/* Opens <dir>/<name>.tgbpe. */
tok_enc *tok_open_dir(const char *dir, const char *name, char *err, size_t errcap);
void tok_close(tok_enc *e);

const char *tok_name(const tok_enc *e);
/* Number of rank slots (the largest rank + 1). */
uint32_t tok_vocab_size(const tok_enc *e);

tok_work *tok_work_new(void);
void tok_work_free(tok_work *w);

/* Encodes text; emit (may be NULL) sees each id. Returns the number of
 * tokens. Never fails on any input: allocation failure of the merge
 * scratch falls back to a merge that needs none. */
size_t tok_encode(const tok_enc *e, tok_work *w, const char *text, size_t len,
                  tok_emit_fn emit, void *ud);
static inline size_t tok_count(const tok_enc *e, tok_work *w, const char *text, size_t len)
{
    return tok_encode(e, w, text, len, NULL, NULL);
}

/* Cuts valid UTF-8 text into pre-tokenizer pieces: calls piece(ud, off,
 * len) for each, stopping early when it returns false. For the streaming
 * meter, which must know where pieces end. text must be valid UTF-8 (see
 * tok_utf8_sanitize). Returns false if piece stopped the walk. */
typedef bool (*tok_piece_fn)(void *ud, size_t off, size_t len);
bool tok_pieces(const tok_enc *e, tok_work *w, const char *text, size_t len,
                tok_piece_fn piece, void *ud);
/* Tokens of one piece (as cut by tok_pieces). */
size_t tok_encode_piece(const tok_enc *e, tok_work *w, const char *p, size_t len,
                        tok_emit_fn emit, void *ud);

/* Appends the bytes of ids to out. 0, -EINVAL for an id without bytes,
 * or a buf error. */
int tok_decode(const tok_enc *e, const uint32_t *ids, size_t n, buf *out);

/* UTF-8 helpers shared with the meter. */
/* Length of the longest valid UTF-8 prefix. */
size_t tok_utf8_valid_prefix(const char *s, size_t len);
/* Appends s with every maximal invalid subpart replaced by U+FFFD. When
 * final is false, an incomplete but so far valid sequence at the very end
 * is not written; its length is returned in *held (0 when final). */
int tok_utf8_sanitize(buf *out, const char *s, size_t len, bool final, size_t *held);

/* The same into out, which must hold 3 * len bytes. Returns the bytes
 * written. */
size_t tok_utf8_sanitize_to(char *out, const char *s, size_t len, bool final, size_t *held);

/* Which encoding a model uses. Sets *exact to false when the model is not
 * an OpenAI-family model and o200k_base is only an estimate of its
 * tokenizer. Matches the model name after any "provider/" prefix. */
const char *tok_encoding_for_model(const char *model, size_t len, bool *exact);

#endif
