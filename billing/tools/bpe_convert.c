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
        FILE *f = fopen(in, "rb");
        buf json;
        buf_init(&json, (size_t)1 << 30);
        if (!f || buf_append_file(&json, f) != 0) {
            perror(in);
            return 1;
        }
        fclose(f);
        int rc = tok_convert_tiktoken_json(argv[i], json.data, json.len, out, err, sizeof err);
        buf_free(&json);
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
