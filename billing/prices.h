/* prices.h - the model price catalog: what one call costs at list price.
 *
 * A catalog is loaded once from JSON (billing/prices.json ships with
 * tollgate) and is immutable afterwards: lookups allocate nothing, take
 * O(log n) (sorted array + binary search) and may run from any thread. The
 * owner frees it when no call can hold one of its entries any more.
 *
 * Catalog format (all prices decimal strings in USD per 1M tokens; JSON
 * numbers are rejected, because reading them would go through a double):
 *
 *   { "unit": "USD per 1M tokens",          required, exactly this
 *     "version": 1,                          optional, must be 1
 *     "source": "...",                       optional free text
 *     "prices": [
 *       { "provider": "openai",              required, non-empty
 *         "model": "gpt-4o",                 required, as the provider's API spells it
 *         "mode": "chat",                    optional, "chat" or "embedding"
 *         "input": "2.50",                   required
 *         "output": "10.00",                 required
 *         "cached_input": "1.25",            optional: cache read
 *         "cache_write": "3.75",             optional: cache write, 5 minute TTL
 *         "cache_write_1h": "6.00",          optional: cache write, 1 hour TTL
 *         "input_above_200k": "6.00",        optional: input rate when the prompt
 *         "output_above_200k": "22.50" } ] } optional:  is over 200k tokens
 *
 * Unknown keys, negative or sub-nano prices, and a repeated provider+model
 * are errors that name the entry. */
#ifndef TG_BILLING_PRICES_H
#define TG_BILLING_PRICES_H

#include <stddef.h>
#include <stdint.h>

#define PRICES_MUSTCHECK __attribute__((warn_unused_result))

/* Prompts with more input tokens than this use the *_above_200k rates. */
#define PRICES_TIER_TOKENS INT64_C(200000)
/* prices_load_file refuses files larger than this. */
#define PRICES_FILE_MAX (16u << 20)

/* Which optional prices the catalog gave explicitly (price_entry.given). */
enum price_given {
    PRICE_GIVEN_CACHED_INPUT = 1 << 0,
    PRICE_GIVEN_CACHE_WRITE = 1 << 1,
    PRICE_GIVEN_CACHE_WRITE_1H = 1 << 2,
    PRICE_GIVEN_INPUT_ABOVE_200K = 1 << 3,
    PRICE_GIVEN_OUTPUT_ABOVE_200K = 1 << 4,
};

/* One model's list price. Every rate is nano-USD per 1M tokens and always
 * usable: an optional price the catalog omits holds the rate that applies
 * instead (see each field), and `given` says which were explicit. */
typedef struct price_entry {
    const char *provider;      /* "openai", "anthropic", "gemini", "fireworks", "openrouter" */
    const char *model;         /* model id as the provider's API spells it */
    const char *mode;          /* "chat" or "embedding"; "chat" when omitted */
    int64_t input;             /* uncached prompt tokens */
    int64_t output;            /* completion tokens (reasoning included) */
    int64_t cached_input;      /* prompt tokens read from cache; omitted: = input */
    int64_t cache_write;       /* prompt tokens written to a 5 min cache; omitted: = input */
    int64_t cache_write_1h;    /* the same for a 1 hour cache; omitted: = cache_write */
    int64_t input_above_200k;  /* input rate for prompts over 200k; omitted: = input */
    int64_t output_above_200k; /* output rate for prompts over 200k; omitted: = output */
    unsigned given;            /* PRICE_GIVEN_* bits */
    unsigned index;            /* position in the catalog's "prices" array (messages) */
} price_entry;

/* A loaded catalog; owns its entries and strings. */
typedef struct price_table price_table;

/* Parses a catalog from text[0..len). NULL with a one-line message in err
 * (naming the entry, e.g. "prices[3] (openai/gpt-4o): \"input\" must be a
 * decimal string, not a number") on any error. */
price_table *prices_load_json(const char *text, size_t len, char *err,
                              size_t errcap) PRICES_MUSTCHECK;
/* Reads and parses the file at path; messages are prefixed with the path. */
price_table *prices_load_file(const char *path, char *err, size_t errcap) PRICES_MUSTCHECK;
/* Frees the catalog and every entry in it. NULL is fine. */
void prices_free(price_table *t);
/* The shipped catalog: $TOLLGATE_PRICES_FILE, else the source tree's
 * billing/prices.json (a binary run from its build tree), else
 * <prefix>/share/tollgate/prices.json, else /usr/share/tollgate/prices.json
 * - the first that exists; NULL when none does. */
const char *prices_default_file(void);

/* The price of provider's model, or NULL. An exact match wins; otherwise a
 * model id ending in a date, -YYYY-MM-DD or -YYYYMMDD, falls back to the id
 * without it ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini",
 * "claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5"). Case-sensitive;
 * allocates nothing. */
const price_entry *prices_find(const price_table *t, const char *provider, const char *model);

/* Number of entries, and the i-th in (provider, model) byte order. */
size_t prices_count(const price_table *t);
const price_entry *prices_at(const price_table *t, size_t i);

/* The list-price cost, in nano-USD, of one call. input_tokens is the WHOLE
 * prompt, including the cached_input_tokens read from cache and the
 * cache_write_tokens written to it (Anthropic's three counts must be summed
 * by the caller); the rest is billed at the input rate. When the prompt is
 * over PRICES_TIER_TOKENS, input and output use the *_above_200k rates
 * (cache rates have no tier in the catalog and stay). The four products
 * are summed exactly and rounded once, half-up, to the nano. Negative
 * counts count as 0; cached + write above input_tokens leaves 0 uncached.
 * Saturates at INT64_MAX. Every cache write here is billed at the
 * 5 minute rate; price_cost_1h also takes 1 hour writes. */
int64_t price_cost(const price_entry *p, int64_t input_tokens, int64_t cached_input_tokens,
                   int64_t cache_write_tokens, int64_t output_tokens);

/* As price_cost, with cache_write_1h_tokens (also part of input_tokens)
 * written to a 1 hour cache. */
int64_t price_cost_1h(const price_entry *p, int64_t input_tokens, int64_t cached_input_tokens,
                      int64_t cache_write_tokens, int64_t cache_write_1h_tokens,
                      int64_t output_tokens);

#endif
