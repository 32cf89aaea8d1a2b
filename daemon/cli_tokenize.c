/* cli_tokenize.c - `tollgate tokenize`: the meter's tokenizer on a file.
 * Operators use it to check a count; the oracle test and the benchmark
 * use it to compare with tiktoken. */
#include "daemon/cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billing/meter.h"
#include "billing/tokenizer.h"

static void usage(void)
{
    fprintf(stderr, "usage: tollgate tokenize [--encoding o200k_base|cl100k_base] [--data-dir DIR]\n"
                    "                         [--count] [--bench N] FILE|-\n");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f)
        return NULL;
    char *data = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 65536;
            char *d = realloc(data, cap);
            if (!d) {
                free(data);
                data = NULL;
                break;
            }
            data = d;
        }
        size_t r = fread(data + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    if (f != stdin)
        fclose(f);
    *len = n;
    return data;
}

struct ids {
    FILE *out;
    size_t n;
};

static void print_id(void *ud, uint32_t id)
{
    struct ids *s = ud;
    fprintf(s->out, s->n++ ? " %u" : "%u", id);
}

int cli_tokenize(int argc, char **argv)
{
    const char *encoding = "o200k_base", *dir = NULL, *file = NULL;
    bool count = false;
    long bench = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--encoding") == 0 && i + 1 < argc)
            encoding = argv[++i];
        else if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--count") == 0)
            count = true;
        else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
            char *end;
            bench = strtol(argv[++i], &end, 10);
            if (*end || bench < 1) {
                usage();
                return 1;
            }
        } else if (!file && (argv[i][0] != '-' || strcmp(argv[i], "-") == 0))
            file = argv[i];
        else {
            fprintf(stderr, "tollgate tokenize: unknown argument '%s'\n", argv[i]);
            usage();
            return 1;
        }
    }
    if (!file) {
        usage();
        return 1;
    }
    if (strcmp(encoding, "o200k_base") != 0 && strcmp(encoding, "cl100k_base") != 0) {
        fprintf(stderr, "tollgate tokenize: unknown encoding '%s' (o200k_base, cl100k_base)\n", encoding);
        return 1;
    }
    char err[512];
    tok_enc *e = tok_open_dir(dir ? dir : tok_default_dir(), encoding, err, sizeof err);
    if (!e) {
        fprintf(stderr, "tollgate tokenize: no tokenizer data: %s\n", err);
        return 2;
    }
    size_t len = 0;
    char *text = slurp(file, &len);
    tok_work *w = tok_work_new();
    int rc = 0;
    if (!text || !w) {
        fprintf(stderr, "tollgate tokenize: %s: %s\n", file, text ? "out of memory" : strerror(errno));
        rc = 1;
    } else if (bench > 0) {
        struct timespec a, b;
        size_t tokens = tok_count(e, w, text, len); /* warm-up and the count */
        clock_gettime(CLOCK_MONOTONIC, &a);
        size_t total = 0;
        for (long k = 0; k < bench; k++)
            total += tok_count(e, w, text, len);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
        printf("tokens=%zu passes=%ld seconds=%.6f tokens_per_sec=%.0f\n", tokens, bench, s,
               s > 0 ? (double)total / s : 0.0);
    } else if (count) {
        printf("%zu\n", tok_count(e, w, text, len));
    } else {
        struct ids s = {stdout, 0};
        tok_encode(e, w, text, len, print_id, &s);
        putchar('\n');
    }
    if (fflush(stdout) != 0)
        rc = 1;
    free(text);
    tok_work_free(w);
    tok_close(e);
    return rc;
}
