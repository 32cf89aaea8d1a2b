/* fuzz_ledger_cols.c - libFuzzer driver for daemon/ledger_cols.c: ledger
 * batches (a JSON array of row objects, as the spool holds them) turned
 * into one PostgreSQL array literal per column.
 *
 * The input bytes are the batch. When ledger_cols_fill() takes it (0),
 * every column literal is parsed back with PostgreSQL's array-literal rules
 * (the subset the converter writes: "{" elements "}", an element NULL, a
 * bare number or boolean, or a double-quoted string with backslash
 * escapes) and must hold exactly one
 * element per row, equal to what jansson reads from the same batch: NULL
 * for an absent or null member, the string's bytes, the integer, true or
 * false. Anything else calls abort(). A refusal (-EINVAL) needs no check:
 * the batch then goes to the database as JSON. */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/ledger_cols.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next element of an array literal at *p: NULL (is_null) or the
 * unescaped text into out. Returns false on a malformed literal. */
static bool next_elem(const char **p, const char *end, bool *is_null, bool *quoted, char *out,
                      size_t cap, size_t *len)
{
    const char *s = *p;
    *len = 0;
    *quoted = false;
    if (end - s >= 4 && memcmp(s, "NULL", 4) == 0) {
        *is_null = true;
        *p = s + 4;
        return true;
    }
    *is_null = false;
    if (s < end && *s != '"') { /* a number or boolean, unquoted */
        while (s < end && *s != ',') {
            if (*s == '"' || *s == '\\' || *s == '{' || *s == '}' || *s == ' ' || *len >= cap)
                return false;
            out[(*len)++] = *s++;
        }
        *p = s;
        return *len > 0;
    }
    if (s >= end)
        return false;
    *quoted = true;
    for (s++; s < end && *s != '"'; s++) {
        if (*s == '\\') {
            if (++s >= end)
                return false;
        }
        if (*len >= cap)
            return false;
        out[(*len)++] = *s;
    }
    if (s >= end)
        return false;
    *p = s + 1;
    return true;
}

/* The element expected for member v (NULL when absent or null). */
static bool expect(json_t *v, bool *is_null, char *out, size_t cap, size_t *len)
{
    *is_null = !v || json_is_null(v);
    *len = 0;
    if (*is_null)
        return true;
    if (json_is_string(v)) {
        *len = json_string_length(v);
        if (*len > cap)
            return false;
        memcpy(out, json_string_value(v), *len);
    } else if (json_is_integer(v)) {
        *len = (size_t)snprintf(out, cap, "%lld", (long long)json_integer_value(v));
    } else if (json_is_true(v)) {
        memcpy(out, "true", *len = 4);
    } else if (json_is_false(v)) {
        memcpy(out, "false", *len = 5);
    } else {
        return false; /* a real, object or array: the converter must have refused */
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ledger_cols c;
    ledger_cols_init(&c);
    int rc = ledger_cols_fill(&c, (const char *)data, size);
    if (rc != 0) {
        if (rc != -EINVAL)
            abort();
        ledger_cols_free(&c);
        return 0;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    /* jansson refuses a few inputs jscan takes (numbers beyond double,
     * "\u0000" in a key): nothing to compare then */
    if (root) {
        if (!json_is_array(root) || json_array_size(root) != c.rows)
            abort();
        size_t cap = size + 32;
        char *got = malloc(cap), *want = malloc(cap);
        if (!got || !want)
            abort();
        for (int col = 0; col < LEDGER_NCOLS; col++) {
            const char *p = c.col[col].data, *end = p + c.col[col].len;
            if (c.col[col].len < 2 || *p != '{' || end[-1] != '}')
                abort();
            p++;
            end--;
            for (size_t r = 0; r < c.rows; r++) {
                if (r && (p >= end || *p++ != ','))
                    abort();
                bool gnull, wnull, quoted;
                size_t glen, wlen;
                if (!next_elem(&p, end, &gnull, &quoted, got, cap, &glen))
                    abort();
                json_t *row = json_array_get(root, r);
                if (!json_is_object(row) ||
                    !expect(json_object_get(row, ledger_col_names[col]), &wnull, want, cap, &wlen))
                    abort();
                if (gnull != wnull)
                    abort();
                if (gnull)
                    continue;
                /* strings quoted, so no text reads as NULL or a number */
                if (quoted != json_is_string(json_object_get(row, ledger_col_names[col])))
                    abort();
                if (json_is_integer(json_object_get(row, ledger_col_names[col]))) {
                    got[glen] = '\0'; /* "-0" and the like: compare the values */
                    if (strtoll(got, NULL, 10) !=
                        json_integer_value(json_object_get(row, ledger_col_names[col])))
                        abort();
                } else if (glen != wlen || memcmp(got, want, glen) != 0) {
                    abort();
                }
            }
            if (p != end)
                abort();
        }
        free(got);
        free(want);
        json_decref(root);
    }
    ledger_cols_free(&c);
    return 0;
}
