/* fuzz_tokenizer.c - libFuzzer driver for billing/tokenizer.c and the
 * streaming meter in billing/meter.c.
 *
 * The first input byte is a selector: bit 0 picks the encoding (o200k_base
 * or cl100k_base, whichever is loaded when only one is), bits 1..7 seed
 * the split of the text into deltas. The rest of the input is the text
 * (inputs over 64 KiB are skipped). For every text, any disagreement
 * calls abort():
 *
 *  - UTF-8 helpers (need no data): tok_utf8_sanitize and
 *    tok_utf8_sanitize_to agree (final true and false, and *held); the
 *    result is valid UTF-8, keeps the valid prefix byte for byte, is the
 *    input itself when the input is valid, and the non-final result plus
 *    the final sanitizing of the held tail is the final result; sanitizing
 *    in deltas with a carry (as the meter does) gives the one-shot result.
 *  - The meter without an encoding counts ceil(bytes / 4), flags the
 *    estimate, and meter_break does not change the count.
 *  - With an encoding: tok_count equals the number of ids tok_encode
 *    emits and the count of the sanitized text; tok_decode(ids) is the
 *    sanitized text (the input itself when it is valid UTF-8); tok_pieces
 *    over the sanitized text cuts it into adjacent, non-empty pieces on
 *    character boundaries whose tok_encode_piece counts add up to
 *    tok_count; an id without bytes decodes to -EINVAL.
 *  - The meter fed the text in deltas of 1..17 bytes counts exactly
 *    tok_count when no pre-tokenizer piece is longer than
 *    METER_HOLD_MAX - 4 bytes, else within len / 2048 + 2 (meter.h: long
 *    pieces are counted in slices); meter_break at the end leaves
 *    meter_count unchanged. (Two adjacent long pieces that fill the hold
 *    buffer together once made the meter cut the second: corpus files
 *    two_long_pieces and long_word_invalid_middle.)
 *  - meter_prompt_openai runs (with and without an encoding) on texts
 *    that jscan_validate accepts; a body with a "messages" array counts
 *    at least the 3 tokens that prime the reply.
 *
 * Without tokenizer data (none found by tok_default_dir()) only the
 * checks that need none run. Everything allocated per input is freed;
 * the encodings and the tok_work live for the process.
 *
 *   cmake -DTG_FUZZ=ON -DTG_SANITIZE=ON (clang) builds ./test/fuzz_tokenizer;
 *   replay_fuzz_tokenizer replays test/fuzz/corpus/tokenizer/ (ctest
 *   fuzz_replay_tokenizer). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/meter.h"
#include "billing/tokenizer.h"
#include "providers/jscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_STRICT_METER
#define FUZZ_STRICT_METER 1
#endif

#define FUZZ_MAX_INPUT (64u * 1024u)
#define FUZZ_DELTA_MAX 17

static tok_set set;
static tok_work *work;
static bool ready;

/* abort() naming the failed check (libFuzzer and the replay show it) */
#define must(ok) fuzz_must((ok), #ok, __LINE__)
static void fuzz_must(bool ok, const char *what, int line)
{
    if (ok)
        return;
    fprintf(stderr, "fuzz_tokenizer.c:%d: check failed: %s\n", line, what);
    abort();
}

static void fuzz_init(void)
{
    char err[700];
    (void)tok_set_load(&set, NULL, err, sizeof err); /* 0 loaded is fine */
    work = tok_work_new();
    must(work != NULL);
    ready = true;
}

/* xorshift32 over the seed from the selector byte */
static uint32_t rng_next(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static uint32_t rng_seed(uint8_t sel) { return 0x9E3779B9u ^ ((uint32_t)(sel >> 1) * 2654435761u); }

static size_t delta(uint32_t *s, size_t left)
{
    size_t d = 1 + rng_next(s) % FUZZ_DELTA_MAX;
    return d < left ? d : left;
}

static bool same(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/* ------------------------------------------------------------ UTF-8 */

/* Sanitizes t in deltas with a carry of held bytes, like meter_feed. */
static void sanitize_streamed(buf *out, const char *t, size_t n, uint32_t seed)
{
    char in[FUZZ_DELTA_MAX + 4], o[3 * (FUZZ_DELTA_MAX + 4)];
    size_t carry = 0, at = 0, held;
    while (at < n) {
        size_t d = delta(&seed, n - at);
        memcpy(in + carry, t + at, d);
        at += d;
        size_t w = tok_utf8_sanitize_to(o, in, carry + d, false, &held);
        must(held <= 3 && held <= carry + d);
        must(buf_append(out, o, w) == 0);
        memmove(in, in + carry + d - held, held);
        carry = held;
    }
    size_t w = tok_utf8_sanitize_to(o, in, carry, true, &held);
    must(held == 0);
    must(buf_append(out, o, w) == 0);
}

/* Checks the UTF-8 helpers; leaves the sanitized text in san. */
static void check_utf8(const char *t, size_t n, uint32_t seed, buf *san)
{
    size_t vp = tok_utf8_valid_prefix(t, n), held = 99, held2 = 99;
    must(vp <= n);
    must(tok_utf8_sanitize(san, t, n, true, &held) == 0 && held == 0);
    const char *s = san->data ? san->data : "";
    must(san->len <= 3 * n);
    must(tok_utf8_valid_prefix(s, san->len) == san->len);
    must(san->len >= vp && (vp == 0 || memcmp(s, t, vp) == 0));
    if (vp == n)
        must(same(s, san->len, t, n));
    else
        must(san->len >= vp + 3 && memcmp(s + vp, "\xEF\xBF\xBD", 3) == 0);

    char *out = malloc(3 * n + 1);
    must(out != NULL);
    size_t w = tok_utf8_sanitize_to(out, t, n, true, &held2);
    must(held2 == 0 && same(out, w, s, san->len));

    /* final = false: the same, minus an incomplete sequence at the end */
    buf part;
    buf_init(&part, 3 * n + 16);
    must(tok_utf8_sanitize(&part, t, n, false, &held) == 0);
    w = tok_utf8_sanitize_to(out, t, n, false, &held2);
    must(held == held2 && held <= 3 && held <= n);
    must(same(out, w, part.data ? part.data : "", part.len));
    w = tok_utf8_sanitize_to(out, t + n - held, held, true, &held2);
    must(held2 == 0 && w == (held ? 3u : 0u));
    must(buf_append(&part, out, w) == 0);
    must(same(part.data ? part.data : "", part.len, s, san->len));
    buf_free(&part);
    free(out);

    buf str;
    buf_init(&str, 3 * n + 16);
    sanitize_streamed(&str, t, n, seed);
    must(same(str.data ? str.data : "", str.len, s, san->len));
    buf_free(&str);
}

/* ------------------------------------------------------------ meter */

static void feed_deltas(meter *m, const char *t, size_t n, uint32_t seed)
{
    for (size_t at = 0; at < n;) {
        size_t d = delta(&seed, n - at);
        meter_feed(m, t + at, d);
        at += d;
    }
}

/* The bytes / 4 path: no encoding, or no tok_work. */
static void check_estimate(const tok_enc *e, const char *t, size_t n, uint32_t seed)
{
    meter m;
    meter_init(&m, e, e ? NULL : work);
    feed_deltas(&m, t, n, seed);
    must(meter_estimate_only(&m));
    must(meter_count(&m) == ((uint64_t)n + 3) / 4);
    meter_break(&m);
    must(meter_count(&m) == ((uint64_t)n + 3) / 4);
    meter_free(&m);
}

/* ------------------------------------------------------- tokenizer */

typedef struct ids {
    uint32_t *v;
    size_t n, cap;
} ids;

static void on_id(void *ud, uint32_t id)
{
    ids *d = ud;
    must(d->n < d->cap); /* every token has at least one byte */
    d->v[d->n++] = id;
}

typedef struct walk {
    const tok_enc *e;
    const char *text;
    size_t end;     /* end of the last piece */
    size_t last;    /* length of the last piece */
    size_t longest; /* longest piece */
    size_t pair;    /* longest two adjacent pieces together */
    size_t tokens;  /* sum of tok_encode_piece */
} walk;

static bool on_piece(void *ud, size_t off, size_t len)
{
    walk *k = ud;
    must(off == k->end && len > 0); /* the regex matches every character */
    must(((unsigned char)k->text[off] & 0xC0) != 0x80);
    k->end = off + len;
    if (len > k->longest)
        k->longest = len;
    if (k->last + len > k->pair)
        k->pair = k->last + len;
    k->last = len;
    k->tokens += tok_encode_piece(k->e, work, k->text + off, len, NULL, NULL);
    return true;
}

static void check_bpe(const tok_enc *e, const char *t, size_t n, uint32_t seed, const buf *san)
{
    const char *s = san->data ? san->data : "";
    size_t cnt = tok_count(e, work, t, n);

    ids d = {NULL, 0, san->len + 1};
    d.v = malloc(d.cap * sizeof *d.v);
    must(d.v != NULL);
    must(tok_encode(e, work, t, n, on_id, &d) == cnt && d.n == cnt);
    must(tok_count(e, work, s, san->len) == cnt);

    buf dec;
    buf_init(&dec, 3 * n + 16);
    must(tok_decode(e, d.v, d.n, &dec) == 0);
    if (tok_utf8_valid_prefix(t, n) == n) /* valid UTF-8 round-trips byte for byte */
        must(same(dec.data ? dec.data : "", dec.len, t, n));
    must(same(dec.data ? dec.data : "", dec.len, s, san->len));
    uint32_t bad = tok_vocab_size(e);
    must(tok_decode(e, &bad, 1, &dec) == -EINVAL);
    buf_free(&dec);
    free(d.v);

    walk k = {e, s, 0, 0, 0, 0, 0};
    must(tok_pieces(e, work, s, san->len, on_piece, &k));
    must(k.end == san->len && k.tokens == cnt);

    meter m;
    meter_init(&m, e, work);
    feed_deltas(&m, t, n, seed);
    uint64_t got = meter_count(&m);
    if (!m.oom) {
        size_t hold = FUZZ_STRICT_METER ? k.longest : k.pair;
        if (hold + 4 <= METER_HOLD_MAX) {
            must(got == cnt);
        } else {
            uint64_t slack = n / 2048 + 2;
            must(got <= cnt + slack && got + slack >= cnt);
        }
    }
    meter_break(&m);
    must(meter_count(&m) == got); /* a break at the very end changes nothing */
    meter_free(&m);
}

/* ------------------------------------------------------------ entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (!ready)
        fuzz_init();
    uint8_t sel = size ? data[0] : 0;
    const char *t = size ? (const char *)data + 1 : "";
    size_t n = size ? size - 1 : 0;
    uint32_t seed = rng_seed(sel);

    buf san;
    buf_init(&san, 3 * n + 16);
    check_utf8(t, n, seed, &san);
    check_estimate(NULL, t, n, seed);

    bool exact;
    const char *name = tok_encoding_for_model(t, n, &exact);
    must(strcmp(name, "o200k_base") == 0 || strcmp(name, "cl100k_base") == 0);

    const tok_enc *e = (sel & 1) ? set.cl100k : set.o200k;
    if (!e)
        e = set.o200k ? set.o200k : set.cl100k;
    if (e) {
        check_estimate(e, t, n, seed);
        check_bpe(e, t, n, seed, &san);
        must(tok_set_pick(&set, t, n, &exact) != NULL);
    }
    buf_free(&san);

    if (n > 0 && jscan_validate(t, n, 64, NULL) == 0) {
        jscan_val root, msgs;
        uint64_t min = jscan_root(t, n, &root) == 0 && root.type == JSCAN_OBJECT &&
                               jscan_val_get(&root, "messages", &msgs) == 0 &&
                               msgs.type == JSCAN_ARRAY
                           ? 3
                           : 0;
        must(meter_prompt_openai(NULL, work, t, n) >= min);
        if (e)
            must(meter_prompt_openai(e, work, t, n) >= min);
    }
    return 0;
}
