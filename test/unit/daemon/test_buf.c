/* test_buf.c - the capped buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>

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
        cmocka_unit_test(test_nocase),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
