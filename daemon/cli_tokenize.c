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
    buf in;
    buf_init(&in, (size_t)1 << 31);
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
    int rd = f ? buf_append_file(&in, f) : -errno;
    if (f && f != stdin)
        fclose(f);
    const char *text = in.data ? in.data : "";
    size_t len = in.len;
    tok_work *w = tok_work_new();
    int rc = 0;
    if (rd != 0 || !w) {
        fprintf(stderr, "tollgate tokenize: %s: %s\n", file, rd ? strerror(-rd) : "out of memory");
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
    buf_free(&in);
    tok_work_free(w);
    tok_close(e);
    return rc;
}
