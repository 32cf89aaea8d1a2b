/* bpe_convert.c - build step: tiktoken encoder JSON -> .tgbpe.
 *
 *   tg-bpe-convert ENCODERS_DIR OUT_DIR NAME...
 *
 * Reads ENCODERS_DIR/NAME.json (the npm package tiktoken's encoders/) and
 * writes OUT_DIR/NAME.tgbpe, then opens the result with the daemon's own
 * loader and checks a round trip, so a bad file fails the build. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing/tokenizer.h"

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *data = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *d = realloc(data, cap);
            if (!d) {
                free(data);
                fclose(f);
                return NULL;
            }
            data = d;
        }
        size_t r = fread(data + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    *len = n;
    return data;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: tg-bpe-convert ENCODERS_DIR OUT_DIR NAME...\n");
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        char in[4096], out[4096], err[256];
        snprintf(in, sizeof in, "%s/%s.json", argv[1], argv[i]);
        snprintf(out, sizeof out, "%s/%s.tgbpe", argv[2], argv[i]);
        size_t len;
        char *json = slurp(in, &len);
        if (!json) {
            perror(in);
            return 1;
        }
        int rc = tok_convert_tiktoken_json(argv[i], json, len, out, err, sizeof err);
        free(json);
        if (rc != 0) {
            fprintf(stderr, "%s: %s\n", in, err);
            return 1;
        }
        tok_enc *e = tok_open(out, err, sizeof err);
        tok_work *w = tok_work_new();
        if (!e || !w) {
            fprintf(stderr, "%s: %s\n", out, e ? "out of memory" : err);
            return 1;
        }
        static const char probe[] = "Hello, world! 123 tokens\n";
        size_t n = tok_count(e, w, probe, sizeof probe - 1);
        if (n == 0 || n >= sizeof probe) {
            fprintf(stderr, "%s: probe encodes to %zu tokens\n", out, n);
            return 1;
        }
        printf("%s: %u ranks\n", out, tok_vocab_size(e));
        tok_work_free(w);
        tok_close(e);
    }
    return 0;
}
