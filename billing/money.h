/* money.h - money as an integer: int64 nano-USD, never a float.
 *
 * 1 USD = 1 000 000 000 nano-USD; int64 holds +-9.2 billion USD. Prices are
 * nano-USD per 1 000 000 tokens, so "0.075 USD per 1M tokens" is the
 * integer 75 000 000 and one token of it costs exactly 75 nano-USD.
 * Decimal strings appear only at the edges (catalog, API, logs): parse them
 * with money_parse*, print with money_format; both are exact and
 * round-trip. The cost of tokens is computed exactly in 128-bit and rounded
 * once to the nano, half away from zero (half-up for the non-negative
 * amounts billing deals in).
 *
 * Errors are negative errno values: -EINVAL (not a number), -ERANGE (does
 * not fit int64 nano-USD), -EDOM (finer than 1 nano-USD). */
#ifndef TG_BILLING_MONEY_H
#define TG_BILLING_MONEY_H

#include <stddef.h>
#include <stdint.h>

#define MONEY_MUSTCHECK __attribute__((warn_unused_result))

#define MONEY_NANO_PER_USD INT64_C(1000000000)   /* nano-USD in one USD */
#define MONEY_PRICE_TOKENS INT64_C(1000000)      /* prices are per this many tokens */
/* Longest money_format output plus its NUL: "-9223372036.854775807". */
#define MONEY_FMT_MAX 24

/* Parses the decimal USD amount s[0..n) into nano-USD. The grammar is a
 * JSON number (RFC 8259 §6): optional '-', integer part without leading
 * zeros, optional '.' fraction, optional e/E exponent with optional sign
 * ("2.50", "0.075", "10", "-0.5", "1e-05", "1.25E-7"). No spaces, no '+'
 * sign, no "inf"/"nan". The value must be a whole number of nano-USD
 * ("0.0000000001" is -EDOM; trailing zeros beyond 9 places are fine) and
 * its magnitude at most INT64_MAX (-ERANGE). "-0" is 0. */
int money_parse(const char *s, size_t n, int64_t *out) MONEY_MUSTCHECK;

/* money_parse of s * 10^exp10: the litellm per-token price "2.5e-06" with
 * exp10 = 6 is 2.50 USD per 1M tokens = 2 500 000 000. Same grammar and
 * errors; the scaled value must be whole nano-USD. exp10 in [-30, 30]. */
int money_parse_scaled(const char *s, size_t n, int exp10, int64_t *out) MONEY_MUSTCHECK;

/* The per-token price text s[0..n) (litellm's *_cost_per_token) as nano-USD
 * per 1M tokens. */
static inline int MONEY_MUSTCHECK money_parse_per_token_to_per_million(const char *s, size_t n,
                                                                       int64_t *out)
{
    return money_parse_scaled(s, n, 6, out);
}

/* tokens * nano_per_million / 1e6, exact, rounded once to the nano (half
 * away from zero). 0, or -ERANGE when the result does not fit int64 (*out
 * then untouched). */
int money_cost_checked(int64_t tokens, int64_t nano_per_million, int64_t *out) MONEY_MUSTCHECK;

/* The same, saturating to INT64_MAX / INT64_MIN on overflow. Overflow needs
 * a product above 9.2e24 (e.g. 9e12 tokens at 1 000 000 USD per 1M), so
 * saturation never happens for real calls; it is there so a bogus count
 * cannot wrap into a small or negative charge. */
int64_t money_cost(int64_t tokens, int64_t nano_per_million);

/* Writes nano as a canonical decimal USD string: '-' if negative, integer
 * part without leading zeros, '.', then the fraction with trailing zeros
 * trimmed but never fewer than 2 digits (at most 9): 2500000000 -> "2.50",
 * 75000000 -> "0.075", 1350 -> "0.00000135", 0 -> "0.00", -500000000 ->
 * "-0.50". The output parses back to nano with money_parse, for every
 * value but INT64_MIN (outside money_parse's symmetric range).
 * snprintf rules: returns the length of the full string (excluding NUL);
 * the output is truncated, still NUL-terminated, when that is >= cap.
 * A buffer of MONEY_FMT_MAX always suffices. */
size_t money_format(int64_t nano, char *buf, size_t cap);

#endif
