/* money.c - exact decimal <-> int64 nano-USD, and the cost of tokens. */
#include "billing/money.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>

/* Exponents beyond this are clamped while reading; any non-zero mantissa
 * is then far out of range either way. */
#define MONEY__EXP_CLAMP INT64_C(1000000000)

static bool money__digit(char c) { return c >= '0' && c <= '9'; }

int money_parse_scaled(const char *s, size_t n, int exp10, int64_t *out)
{
    if (!s || !out || exp10 < -30 || exp10 > 30)
        return -EINVAL;

    size_t i = 0;
    bool neg = false;
    if (i < n && s[i] == '-') {
        neg = true;
        i++;
    }

    /* Integer part: one or more digits, no leading zero unless alone. */
    size_t i0 = i;
    while (i < n && money__digit(s[i]))
        i++;
    size_t ilen = i - i0;
    if (ilen == 0 || (s[i0] == '0' && ilen > 1))
        return -EINVAL;

    /* Fraction: '.' then one or more digits. */
    size_t f0 = i, flen = 0;
    if (i < n && s[i] == '.') {
        f0 = ++i;
        while (i < n && money__digit(s[i]))
            i++;
        flen = i - f0;
        if (flen == 0)
            return -EINVAL;
    }

    /* Exponent: e/E, optional sign, one or more digits. */
    int64_t ev = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = false;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            eneg = s[i] == '-';
            i++;
        }
        size_t e0 = i;
        while (i < n && money__digit(s[i])) {
            if (ev < MONEY__EXP_CLAMP)
                ev = ev * 10 + (s[i] - '0');
            i++;
        }
        if (i == e0)
            return -EINVAL;
        if (eneg)
            ev = -ev;
    }
    if (i != n)
        return -EINVAL;

    /* The mantissa digits are the integer digits followed by the fraction
     * digits; find the first and last non-zero one. */
    size_t len = ilen + flen;
#define MONEY__DIGIT_AT(k) ((k) < ilen ? s[i0 + (k)] : s[f0 + (k) - ilen])
    size_t a = 0;
    while (a < len && MONEY__DIGIT_AT(a) == '0')
        a++;
    if (a == len) {
        *out = 0;
        return 0;
    }
    size_t b = len - 1;
    while (MONEY__DIGIT_AT(b) == '0')
        b--;

    /* value = digits[a..b] * 10^e nano-USD */
    int64_t e = (int64_t)(len - 1 - b) - (int64_t)flen + ev + exp10 + 9;
    int64_t c = (int64_t)(b - a + 1);
    if (e < 0)
        return -EDOM;
    if (c + e > 19) /* >= 10^19 > INT64_MAX */
        return -ERANGE;
    uint64_t v = 0; /* at most 19 digits: fits */
    for (size_t k = a; k <= b; k++)
        v = v * 10 + (uint64_t)(MONEY__DIGIT_AT(k) - '0');
#undef MONEY__DIGIT_AT
    for (int64_t k = 0; k < e; k++)
        v *= 10; /* c + e <= 19 digits: fits uint64 */
    if (v > (uint64_t)INT64_MAX)
        return -ERANGE;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

int money_parse(const char *s, size_t n, int64_t *out)
{
    return money_parse_scaled(s, n, 0, out);
}

int money_cost_checked(int64_t tokens, int64_t nano_per_million, int64_t *out)
{
    __extension__ typedef __int128 i128;
    i128 p = (i128)tokens * nano_per_million; /* |p| < 2^126: exact */
    i128 q = p / MONEY_PRICE_TOKENS;           /* truncates toward zero */
    i128 r = p % MONEY_PRICE_TOKENS;           /* same sign as p */
    if (2 * r >= MONEY_PRICE_TOKENS)
        q++;
    else if (2 * r <= -MONEY_PRICE_TOKENS)
        q--;
    if (q > INT64_MAX || q < INT64_MIN)
        return -ERANGE;
    *out = (int64_t)q;
    return 0;
}

int64_t money_cost(int64_t tokens, int64_t nano_per_million)
{
    int64_t v;
    if (money_cost_checked(tokens, nano_per_million, &v) == 0)
        return v;
    return (tokens < 0) != (nano_per_million < 0) ? INT64_MIN : INT64_MAX;
}

size_t money_format(int64_t nano, char *buf, size_t cap)
{
    bool neg = nano < 0;
    uint64_t m = neg ? (uint64_t)0 - (uint64_t)nano : (uint64_t)nano;
    uint64_t ip = m / (uint64_t)MONEY_NANO_PER_USD;
    uint32_t fp = (uint32_t)(m % (uint64_t)MONEY_NANO_PER_USD);

    char frac[10];
    for (int k = 8; k >= 0; k--) {
        frac[k] = (char)('0' + fp % 10);
        fp /= 10;
    }
    int nd = 9;
    while (nd > 2 && frac[nd - 1] == '0')
        nd--;

    /* composed by hand: no printf on the per-call path */
    char tmp[MONEY_FMT_MAX], idig[20];
    size_t need = 0, ni = 0;
    do {
        idig[ni++] = (char)('0' + ip % 10);
        ip /= 10;
    } while (ip);
    if (neg)
        tmp[need++] = '-';
    while (ni)
        tmp[need++] = idig[--ni];
    tmp[need++] = '.';
    for (int k = 0; k < nd; k++)
        tmp[need++] = frac[k];
    if (cap > 0) {
        size_t k = need < cap - 1 ? need : cap - 1;
        for (size_t j = 0; j < k; j++)
            buf[j] = tmp[j];
        buf[k] = '\0';
    }
    return need;
}
