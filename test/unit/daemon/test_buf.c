/* test_buf.c - the capped buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>

#include "daemon/base/buf.h"

static void test_cap_is_enforced(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 10);
    assert_null(b.data);
    assert_int_equal(buf_append(&b, "0123456789", 10), 0);
    assert_int_equal(buf_append(&b, "x", 1), -E2BIG);
    assert_int_equal(b.len, 10);
    buf_consume(&b, 4);
    assert_string_equal(b.data, "456789");
    assert_int_equal(buf_printf(&b, "%d", 1234), 0);
    assert_string_equal(b.data, "4567891234");
    assert_int_equal(buf_printf(&b, "%d", 1), -E2BIG);
    buf_free(&b);
}

static void test_json_escape(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    assert_int_equal(buf_append_json_escaped(&b, "a\"b\\c\n\x01z", 8), 0);
    assert_string_equal(b.data, "a\\\"b\\\\c\\n\\u0001z");
    buf_free(&b);
}

static void test_numbers(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 1024);
    char want[128];
    static const int64_t iv[] = {0, 7, -7, 10, 1234567890123, INT64_MAX, INT64_MIN, -1};
    for (size_t i = 0; i < sizeof(iv) / sizeof(iv[0]); i++) {
        buf_reset(&b);
        assert_int_equal(buf_append_i64(&b, iv[i]), 0);
        snprintf(want, sizeof want, "%lld", (long long)iv[i]);
        assert_string_equal(b.data, want);
    }
    buf_reset(&b);
    assert_int_equal(buf_append_u64(&b, UINT64_MAX), 0);
    assert_string_equal(b.data, "18446744073709551615");
    static const struct {
        int64_t v;
        unsigned dec;
        const char *s;
    } fx[] = {
        {1234567, 3, "1234.567"}, {-1500, 3, "-1.500"}, {5, 3, "0.005"},  {-5, 1, "-0.5"},
        {0, 3, "0.000"},          {42, 0, "42"},        {INT64_MIN, 9, "-9223372036.854775808"},
    };
    for (size_t i = 0; i < sizeof(fx) / sizeof(fx[0]); i++) {
        buf_reset(&b);
        assert_int_equal(buf_append_fixed(&b, fx[i].v, fx[i].dec), 0);
        assert_string_equal(b.data, fx[i].s);
    }
    assert_int_equal(buf_append_fixed(&b, 1, 10), -EINVAL);
    buf small;
    buf_init(&small, 3);
    assert_int_equal(buf_append_i64(&small, -1000), -E2BIG);
    buf_free(&small);
    buf_free(&b);
}

static void test_nocase(void **state)
{
    (void)state;
    assert_true(slice_eq_nocase(SLICE_LIT("Content-Length"), "content-length"));
    assert_false(slice_eq_nocase(SLICE_LIT("Content-Lengt"), "content-length"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cap_is_enforced),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_nocase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
