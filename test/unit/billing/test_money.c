/* test_money.c - exact decimal parsing, formatting and token costs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "billing/money.h"

static int parse(const char *s, int64_t *out) { return money_parse(s, strlen(s), out); }

static void expect_nano(const char *s, int64_t want)
{
    int64_t v = -12345;
    int rc = parse(s, &v);
    if (rc != 0 || v != want)
        fail_msg("money_parse(\"%s\") = %d, %lld; want %lld", s, rc, (long long)v,
                 (long long)want);
}

static void expect_err(const char *s, int want)
{
    int64_t v = -12345;
    int rc = parse(s, &v);
    if (rc != want)
        fail_msg("money_parse(\"%s\") = %d (value %lld); want %d", s, rc, (long long)v, want);
    assert_int_equal(v, -12345); /* untouched on error */
}

static void test_parse_plain(void **state)
{
    (void)state;
    expect_nano("0", 0);
    expect_nano("-0", 0);
    expect_nano("0.0", 0);
    expect_nano("10", 10 * MONEY_NANO_PER_USD);
    expect_nano("2.50", 2500000000);
    expect_nano("0.075", 75000000);
    expect_nano("-0.5", -500000000);
    expect_nano("0.000000001", 1);
    expect_nano("-0.000000001", -1);
    expect_nano("1.000000000000", MONEY_NANO_PER_USD); /* zeros past nano are fine */
    expect_nano("9223372036.854775807", INT64_MAX);
    expect_nano("-9223372036.854775807", -INT64_MAX);
}

static void test_parse_exponent(void **state)
{
    (void)state;
    expect_nano("1e-05", 10000);
    expect_nano("2.5e-06", 2500);
    expect_nano("1.25E-7", 125);
    expect_nano("1e-9", 1);
    expect_nano("1E+2", 100 * MONEY_NANO_PER_USD);
    expect_nano("1e2", 100 * MONEY_NANO_PER_USD);
    expect_nano("0e999999999999", 0); /* zero mantissa: any exponent */
    expect_nano("0.0e-999", 0);
    expect_nano("1000e-12", 1);
    expect_nano("0.25e1", 2500000000);
}

static void test_parse_errors(void **state)
{
    (void)state;
    expect_err("", -EINVAL);
    expect_err("-", -EINVAL);
    expect_err("abc", -EINVAL);
    expect_err("1.", -EINVAL);
    expect_err(".5", -EINVAL);
    expect_err("+1", -EINVAL);
    expect_err("01", -EINVAL);
    expect_err("1e", -EINVAL);
    expect_err("1e+", -EINVAL);
    expect_err("1.5x", -EINVAL);
    expect_err(" 1", -EINVAL);
    expect_err("1 ", -EINVAL);
    expect_err("--1", -EINVAL);
    expect_err("inf", -EINVAL);
    expect_err("nan", -EINVAL);
    expect_err("1,5", -EINVAL);
    /* sub-nano amounts */
    expect_err("0.0000000001", -EDOM);
    expect_err("1.0000000001", -EDOM);
    expect_err("1e-10", -EDOM);
    expect_err("1.5e-9", -EDOM);
    expect_err("1500e-12", -EDOM);
    expect_err("1e-99999999999999999999", -EDOM);
    /* overflow */
    expect_err("9223372036.854775808", -ERANGE);
    expect_err("-9223372036.854775808", -ERANGE);
    expect_err("10000000000", -ERANGE);
    expect_err("1e10", -ERANGE);
    expect_err("1e99999999999999999999", -ERANGE);
    expect_err("99999999999999999999999999", -ERANGE);

    /* the length is honoured: no NUL needed, nothing past n is read */
    int64_t v = 0;
    assert_int_equal(money_parse("2.509", 4, &v), 0);
    assert_int_equal(v, 2500000000);
    assert_int_equal(money_parse("", 0, &v), -EINVAL);
}

static void test_parse_per_token(void **state)
{
    (void)state;
    struct {
        const char *s;
        int64_t per_million;
    } cases[] = {
        {"2.5e-06", 2500000000},  {"1e-05", 10000000000},   {"1.5e-07", 150000000},
        {"7.5e-08", 75000000},    {"1.875e-05", 18750000000}, {"2.25e-05", 22500000000},
        {"1.5e-08", 15000000},    {"0.0", 0},               {"5.6e-07", 560000000},
        {"1.68e-06", 1680000000}, {"2.5e-08", 25000000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t v = -1;
        assert_int_equal(money_parse_per_token_to_per_million(cases[i].s, strlen(cases[i].s), &v),
                         0);
        if (v != cases[i].per_million)
            fail_msg("%s: %lld != %lld", cases[i].s, (long long)v,
                     (long long)cases[i].per_million);
    }
    int64_t v;
    /* 1e-16 USD per token = 1e-10 per 1M: sub-nano */
    assert_int_equal(money_parse_per_token_to_per_million("1e-16", 5, &v), -EDOM);
    assert_int_equal(money_parse_scaled("1", 1, 31, &v), -EINVAL);
    assert_int_equal(money_parse_scaled("1", 1, -9, &v), 0);
    assert_int_equal(v, 1);
}

static void expect_fmt(int64_t nano, const char *want)
{
    char b[MONEY_FMT_MAX];
    size_t n = money_format(nano, b, sizeof b);
    assert_string_equal(b, want);
    assert_int_equal(n, strlen(want));
    int64_t back = 0;
    assert_int_equal(money_parse(b, n, &back), 0);
    assert_int_equal(back, nano);
}

static void test_format(void **state)
{
    (void)state;
    expect_fmt(0, "0.00");
    expect_fmt(2500000000, "2.50");
    expect_fmt(75000000, "0.075");
    expect_fmt(10 * MONEY_NANO_PER_USD, "10.00");
    expect_fmt(1350, "0.00000135");
    expect_fmt(1, "0.000000001");
    expect_fmt(-500000000, "-0.50");
    expect_fmt(-1, "-0.000000001");
    expect_fmt(18750000000, "18.75");
    expect_fmt(INT64_MAX, "9223372036.854775807");
    expect_fmt(-INT64_MAX, "-9223372036.854775807");

    /* INT64_MIN prints, but is outside money_parse's symmetric range */
    char b[MONEY_FMT_MAX];
    assert_int_equal(money_format(INT64_MIN, b, sizeof b), 21);
    assert_string_equal(b, "-9223372036.854775808");
}

static void test_format_truncates(void **state)
{
    (void)state;
    char b[5];
    memset(b, 'x', sizeof b);
    assert_int_equal(money_format(123450000000, b, sizeof b), 6); /* "123.45" */
    assert_string_equal(b, "123.");
    assert_int_equal(money_format(1, NULL, 0), 11);
}

static void test_round_trip_sweep(void **state)
{
    (void)state;
    /* Every power of ten, its neighbours, negatives and an odd multiple. */
    int64_t p = 1;
    for (int k = 0; k <= 18; k++) {
        int64_t vals[] = {p, p - 1, p + 1, -p, -(p + 1), p / 2 * 3 + 7};
        for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
            char b[MONEY_FMT_MAX];
            size_t n = money_format(vals[i], b, sizeof b);
            assert_true(n < sizeof b);
            int64_t back = 0;
            assert_int_equal(money_parse(b, n, &back), 0);
            assert_int_equal(back, vals[i]);
        }
        if (k < 18)
            p *= 10;
    }
}

static void test_cost(void **state)
{
    (void)state;
    assert_int_equal(money_cost(9, 600000000), 5400);   /* 9 tokens at 0.60/1M */
    assert_int_equal(money_cost(1, 75000000), 75);      /* 1 token at 0.075/1M */
    assert_int_equal(money_cost(3, 150000000), 450);    /* 3 tokens at 0.15/1M */
    assert_int_equal(money_cost(0, 150000000), 0);
    assert_int_equal(money_cost(1000000, 2500000000), 2500000000);
    /* 1 token at 0.0005/1M = 0.5 nano: half rounds up */
    assert_int_equal(money_cost(1, 500000), 1);
    assert_int_equal(money_cost(1, 499999), 0);
    assert_int_equal(money_cost(1, 1500000), 2);
    assert_int_equal(money_cost(1, 2500000), 3);
    assert_int_equal(money_cost(3, 500000), 2);         /* 1.5 nano -> 2 */
    assert_int_equal(money_cost(1, 15000000), 15);      /* 0.015/1M */
    assert_int_equal(money_cost(7, 1680000000), 11760); /* 1.68/1M */
    /* negative: half away from zero, so cost(-x) == -cost(x) */
    assert_int_equal(money_cost(-1, 500000), -1);
    assert_int_equal(money_cost(-3, 500000), -2);
    assert_int_equal(money_cost(-1, 499999), 0);
    assert_int_equal(money_cost(1, -500000), -1);
    /* large but exact: 1e12 tokens at 75 USD per 1M = 75 000 000 USD */
    assert_int_equal(money_cost(1000000000000, 75 * MONEY_NANO_PER_USD),
                     75000000 * MONEY_NANO_PER_USD);
}

static void test_cost_overflow(void **state)
{
    (void)state;
    int64_t v = 42;
    assert_int_equal(money_cost_checked(INT64_MAX, INT64_MAX, &v), -ERANGE);
    assert_int_equal(v, 42);
    assert_int_equal(money_cost(INT64_MAX, INT64_MAX), INT64_MAX);
    assert_int_equal(money_cost(INT64_MIN, INT64_MAX), INT64_MIN);
    /* just fits: INT64_MAX tokens at 1 USD per 1M */
    assert_int_equal(money_cost_checked(INT64_MAX, 1000000, &v), 0);
    assert_int_equal(v, INT64_MAX);
    assert_int_equal(money_cost_checked(INT64_MAX, 1000001, &v), -ERANGE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_plain),      cmocka_unit_test(test_parse_exponent),
        cmocka_unit_test(test_parse_errors),     cmocka_unit_test(test_parse_per_token),
        cmocka_unit_test(test_format),           cmocka_unit_test(test_format_truncates),
        cmocka_unit_test(test_round_trip_sweep), cmocka_unit_test(test_cost),
        cmocka_unit_test(test_cost_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
