/* test_migrate.c - the migrations embedded at build time (daemon/migrate.h)
 * and the pure helpers of `tollgate migrate`. cli_migrate.c is compiled
 * into this test so its static functions can be called; the database
 * side is covered by test/integration/migrate.test.mjs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/crypto.h"
#include "daemon/migrate.h"

#include "daemon/cli_migrate.c"

/* The whole file at path, NUL-terminated; *len its size. NULL on error. */
static char *read_file(const char *path, size_t *len)
{
    char *data = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        goto out;
    if (fseek(f, 0, SEEK_END) != 0)
        goto out_close;
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out_close;
    data = malloc((size_t)n + 1);
    if (!data)
        goto out_close;
    if (fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
        goto out_close;
    }
    data[n] = '\0';
    *len = (size_t)n;
out_close:
    fclose(f);
out:
    return data;
}

static void test_table_is_ordered(void **state)
{
    (void)state;
    size_t n = 0;
    const migration *all = migrations_all(&n);
    assert_non_null(all);
    assert_true(n >= 1);
    for (size_t i = 0; i < n; i++) {
        assert_true(all[i].version > 0);
        if (i > 0)
            assert_true(all[i].version > all[i - 1].version);
        assert_non_null(all[i].name);
        assert_non_null(all[i].sql);
        assert_true(strlen(all[i].sql) > 0);
    }
    assert_int_equal(migrations_latest(), all[n - 1].version);
    assert_int_equal(all[0].version, 1);
    assert_string_equal(all[0].name, "0001_tenancy.sql");
}

static void test_names_match_versions(void **state)
{
    (void)state;
    regex_t re;
    assert_int_equal(regcomp(&re, "^[0-9]{4}_[a-z0-9_]+\\.sql$", REG_EXTENDED | REG_NOSUB), 0);
    size_t n = 0;
    const migration *all = migrations_all(&n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(regexec(&re, all[i].name, 0, NULL, 0), 0);
        char digits[5];
        memcpy(digits, all[i].name, 4);
        digits[4] = '\0';
        assert_int_equal(strtol(digits, NULL, 10), all[i].version);
    }
    regfree(&re);
}

static void test_sha256_of_sql(void **state)
{
    (void)state;
    size_t n = 0;
    const migration *all = migrations_all(&n);
    for (size_t i = 0; i < n; i++) {
        uint8_t digest[CRYPTO_SHA256_LEN];
        char hex[CRYPTO_SHA256_HEX_LEN + 1];
        crypto_sha256(all[i].sql, strlen(all[i].sql), digest);
        crypto_hex(digest, sizeof(digest), hex);
        assert_string_equal(all[i].sha256, hex);
    }
}

static void test_sql_equals_file(void **state)
{
    (void)state;
    size_t n = 0;
    const migration *all = migrations_all(&n);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/migrations/%s", TG_SOURCE_DIR, all[i].name);
        size_t len = 0;
        char *text = read_file(path, &len);
        assert_non_null(text);
        assert_int_equal(strlen(all[i].sql), len);
        assert_memory_equal(all[i].sql, text, len);
        free(text);
    }
}

static void test_locate_position(void **state)
{
    (void)state;
    int line = 0, col = 0;
    const char *ls = NULL;
    size_t ll = 0;
    const char *sql = "-- head\nCREATE TABL x (\r\n\tid int);\n";
    /* 'T' of TABL: 8 chars of line 1 + "CREATE " = character 16 */
    assert_true(locate_position(sql, 16, &line, &col, &ls, &ll));
    assert_int_equal(line, 2);
    assert_int_equal(col, 8);
    assert_int_equal(ll, strlen("CREATE TABL x ("));
    assert_memory_equal(ls, "CREATE TABL x (", ll);
    assert_true(locate_position(sql, 1, &line, &col, &ls, &ll));
    assert_int_equal(line, 1);
    assert_int_equal(col, 1);
    /* one past the end: "syntax error at end of input" */
    long chars = (long)strlen(sql);
    assert_true(locate_position(sql, chars + 1, &line, &col, &ls, &ll));
    assert_int_equal(line, 4);
    assert_int_equal(col, 1);
    assert_false(locate_position(sql, chars + 2, &line, &col, &ls, &ll));
    assert_false(locate_position(sql, 0, &line, &col, &ls, &ll));
    assert_false(locate_position(sql, -3, &line, &col, &ls, &ll));
    /* PostgreSQL counts characters, not bytes: "é" is one */
    const char *utf8 = "SELECT '\xc3\xa9\xc3\xa9' FROM\nx y z";
    assert_true(locate_position(utf8, 13, &line, &col, &ls, &ll)); /* 'F' */
    assert_int_equal(line, 1);
    assert_int_equal(col, 13);
    assert_true(locate_position(utf8, 20, &line, &col, &ls, &ll)); /* 'y' */
    assert_int_equal(line, 2);
    assert_int_equal(col, 3);
}

static void test_scrub_quoted(void **state)
{
    (void)state;
    char out[128];
    scrub_quoted("invalid percent-encoded token: \"s3cret%zz\"\n", out, sizeof(out));
    assert_string_equal(out, "invalid percent-encoded token: \"...\"\n");
    scrub_quoted("missing \"=\" after \"pw\" in connection info string", out, sizeof(out));
    assert_string_equal(out, "missing \"...\" after \"...\" in connection info string");
    scrub_quoted("unterminated \"s3cret", out, sizeof(out));
    assert_string_equal(out, "unterminated \"...\"");
    assert_null(strstr(out, "s3cret"));
    scrub_quoted("no quotes", out, 4);
    assert_string_equal(out, "");
    scrub_quoted("no quotes at all", out, 8);
    assert_true(strlen(out) < 8);
}

/* cli_migrate() on a writable copy of args (NULL-terminated). */
static int run_cli(const char *const args[])
{
    char *argv[16];
    int argc = 0;
    for (; args[argc] && argc < 15; argc++) {
        argv[argc] = strdup(args[argc]);
        assert_non_null(argv[argc]);
    }
    argv[argc] = NULL;
    int rc = cli_migrate(argc, argv);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return rc;
}

/* Exit codes of the command that need no database. */
static void test_usage_exit_codes(void **state)
{
    (void)state;
    unsetenv("TOLLGATE_DATABASE_URL");
    assert_int_equal(run_cli((const char *const[]){"migrate", NULL}), 2);
    assert_int_equal(run_cli((const char *const[]){"migrate", "--bogus", NULL}), 2);
    assert_int_equal(run_cli((const char *const[]){"migrate", "--config", "x.yaml",
                                                   "--database-url", "postgres://h/db", NULL}),
                     2);
    assert_int_equal(run_cli((const char *const[]){"migrate", "--database-url", NULL}), 2);
    assert_int_equal(run_cli((const char *const[]){"migrate", "--database-url=", NULL}), 2);
    assert_int_equal(run_cli((const char *const[]){"migrate", "--help", NULL}), 0);
    /* unparsable: fails before any connection attempt */
    assert_int_equal(
        run_cli((const char *const[]){"migrate", "--database-url", "postgres://u:pw@[::1/x", NULL}),
        1);
    assert_int_equal(
        run_cli((const char *const[]){"migrate", "--config", "/nonexistent/tollgate.yaml", NULL}),
        1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_is_ordered), cmocka_unit_test(test_names_match_versions),
        cmocka_unit_test(test_sha256_of_sql),    cmocka_unit_test(test_sql_equals_file),
        cmocka_unit_test(test_locate_position),  cmocka_unit_test(test_scrub_quoted),
        cmocka_unit_test(test_usage_exit_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
